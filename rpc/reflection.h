/* rpc/reflection.h: gRPC server reflection (module-internal to rpc/).
 *
 * pinsd answers grpc.reflection.v1.ServerReflection and grpc.reflection.v1alpha.ServerReflection
 * from the FileDescriptorSet embedded at build time (pins_descriptor_set: every proto we serve and
 * everything it imports), so that grpcurl and buf curl work without proto files.
 *
 * The core is transport-free: rpc__reflection_init() indexes the set once at start; the answer
 * functions turn one request into one response. The handlers (rpc/reflection_service.c) are thin
 * glue over rpc/call.h.
 *
 * What is answered:
 * - list_services: every service of the set, in file order.
 * - file_by_filename: that file and its transitive imports.
 * - file_containing_symbol: the file that defines the symbol, then its transitive imports, each
 *   file once, as the original serialized FileDescriptorProto bytes of the set. Symbols are the
 *   fully-qualified names (a leading '.' is ignored) of packages (and their parent packages),
 *   messages and enums at any nesting, enum values (in the scope of their enum's parent, as in
 *   protobuf), fields, oneofs, extensions, services and methods
 * ("memorypins.v1.MemoryPins.GetPin").
 * - file_containing_extension, all_extension_numbers_of_type: from the extensions the set
 *   declares (none today), so a known message has an empty list of extension numbers.
 * - Anything unknown: an error_response with error_code 5 (NOT_FOUND) and a message naming what was
 *   asked; a request with no query: error_code 3 (INVALID_ARGUMENT). The stream stays open.
 * Every response echoes host in valid_host and points original_request at the request.
 *
 * Lifetimes and threads. The index is built by rpc__reflection_init() before the workers start and
 * is read-only until rpc__reflection_shutdown(); answering is thread-safe in between. A response
 * lives in the caller's arena and borrows both the request and the index.
 */
#ifndef PINS_RPC_REFLECTION_H
#define PINS_RPC_REFLECTION_H

#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "grpc/reflection/v1alpha/reflection.pb-c.h"
#include "rpc/call.h"

/* Indexes the embedded descriptor set. Call once before serving; calling it again while the index
 * exists does nothing. Returns 0, PINS_EINTERNAL when the set is malformed (a file that does not
 * parse, a duplicate file name or an import missing from the set), PINS_ENOMEM. */
int rpc__reflection_init(void);
/* As rpc__reflection_init() for the serialized FileDescriptorSet set[0..len) (borrowed; it must
 * outlive the index, since answers point into it). For tests. Same returns. */
int rpc__reflection_init_from(const uint8_t *set, size_t len);
/* Frees the index. Safe to call when there is none. */
void rpc__reflection_shutdown(void);

/* Answers one v1 request. *presp gets a response allocated in a; it borrows req and the index.
 * Returns 0 (also when the answer is an error_response), PINS_EUNAVAILABLE when the index was not
 * built, PINS_ENOMEM when a is exhausted. *presp is untouched on failure. */
int rpc__reflection_answer(pins_arena *a, const Grpc__Reflection__V1__ServerReflectionRequest *req,
                           Grpc__Reflection__V1__ServerReflectionResponse **presp);
/* The same for v1alpha (same field numbers): the request is re-read as v1 and the answer re-read
 * as v1alpha, all in a, so the wire bytes of both answers are identical. Same returns. */
int rpc__reflection_answer_v1alpha(pins_arena *a,
                                   const Grpc__Reflection__V1alpha__ServerReflectionRequest *req,
                                   Grpc__Reflection__V1alpha__ServerReflectionResponse **presp);

/* Handlers of the bidirectional ServerReflectionInfo method for v1 and v1alpha: each request
 * message gets one response message; the call finishes OK when the client half-closes. Each
 * answer is built in its own short-lived arena, so a long stream does not grow the call's arena. */
void rpc__reflection_v1_handler(rpc_call *call);
void rpc__reflection_v1alpha_handler(rpc_call *call);

#endif
