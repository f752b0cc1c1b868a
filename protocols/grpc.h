/* protocols/grpc.h: the gRPC wire pieces that need no HTTP/2 (protocols/grpc.c): grpc-timeout,
 * the 5-byte message prefix (shared by Connect and gRPC-Web envelopes), the percent-encoded and
 * capped grpc-message, the content types. Pure functions, safe from any thread; the fuzzer
 * (tests/fuzz/fuzz_grpc.c) and the test doubles drive them alone.
 */
#ifndef PINS_PROTOCOLS_GRPC_H
#define PINS_PROTOCOLS_GRPC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"

/* Parses a grpc-timeout value ("100m", "5S", "1n"...) into nanoseconds. Returns 0 or
 * PINS_EINVALID_ARGUMENT. */
int proto_grpc_timeout_parse(const char *value, size_t len, int64_t *pns);
/* The 5-byte prefix of a length-prefixed gRPC message (also Connect's and gRPC-Web's envelope
 * before their own flag bits are looked at). */
#define PROTO_GRPC_FRAME_HEADER 5
typedef struct proto_grpc_frame {
    bool compressed; /* flag bit 0 */
    uint32_t len;    /* the message length that follows the prefix */
} proto_grpc_frame;
/* Reads the prefix at p (avail bytes there; callers wait for PROTO_GRPC_FRAME_HEADER of them).
 * Returns 0 and *pf, or PINS_EINVALID_ARGUMENT when fewer bytes are there or a reserved flag bit
 * (any but bit 0) is set; *pf is untouched on failure. */
int proto_grpc_frame_parse(const uint8_t *p, size_t avail, proto_grpc_frame *pf);
/* The longest grpc-message sent, in bytes after percent-encoding: a longer one is cut before a
 * UTF-8 character and ends in "...". A handler's message may echo client text (an unknown service
 * name of up to the header limit); echoed whole it would make a header block that nghttp2 refuses
 * to send (64 KiB) or that clients refuse to read (grpc's default is 8 KiB of metadata). */
#define PROTO_GRPC_MESSAGE_MAX 4096
/* Percent-encodes a grpc-message (printable ASCII except '%' kept), cut to PROTO_GRPC_MESSAGE_MAX
 * encoded bytes. Returns a NUL-terminated arena string or NULL. */
char *proto_grpc_message_encode(pins_arena *a, const char *msg);
/* True when content-type names gRPC (application/grpc, application/grpc+proto, or with
 * parameters). */
bool proto_grpc_content_type(const char *value, size_t len);

#endif
