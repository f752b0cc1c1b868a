/* rpc/call.h: the call object and the method table: where the protocol layers end.
 *
 * Every transport (gRPC over HTTP/2 here; REST, Connect and gRPC-Web in protocols/) decodes a
 * request into a protobuf message, builds an rpc_call for one row of the method table and hands it
 * to the dispatcher (rpc/dispatch.h). The dispatcher runs the generic checks once (deadline,
 * authentication and RBAC, feature flag, and later rate limit, breaker) and calls the row's
 * handler.
 *
 * A handler sees only this header: the decoded request, the call's arena, metadata lookups, the
 * worker's store session, and the reply functions. It never writes trailers or HTTP itself.
 *
 * Lifetime. A call lives from dispatch until both (a) the handler finished it (rpc_call_reply,
 * rpc_call_fail or rpc_call_finish) and (b) the transport let go of it (stream closed). Either may
 * happen first: a handler may finish a call whose client already went away (the reply is dropped),
 * and a handler may finish asynchronously from a store callback. After finishing, the handler
 * must not touch the call again. Everything allocated from the call's arena dies with the call.
 *
 * Threads. A call is used only on its worker's thread.
 */
#ifndef PINS_RPC_CALL_H
#define PINS_RPC_CALL_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/arena.h"
#include "common/error.h"

typedef struct rpc_call rpc_call;
typedef struct rpc_worker rpc_worker;
struct store_session;
struct pins_config;
struct auth_decision;

/* A handler: reads rpc_call_request(call) and eventually finishes the call exactly once. */
typedef void (*rpc_handler_cb)(rpc_call *call);

/* Method flags. */
enum {
    RPC_METHOD_SERVER_STREAM = 1u << 0, /* the response is a stream of messages */
    RPC_METHOD_CLIENT_STREAM = 1u << 1, /* the request is a stream of messages */
    RPC_METHOD_MEMORY_PINS = 1u << 2,   /* feature flag, rate limiter and breaker apply */
    RPC_METHOD_UNGUARDED = 1u << 3,     /* never authenticated (health, reflection) */
    /* The method acts on every tenant or on state the tenants share (the policy, the RBAC audit
     * as a whole): a caller whose credential names its tenants is refused (auth/decide.c). */
    RPC_METHOD_ALL_TENANTS = 1u << 4,
};

/* One row of the method table. Rows are static and live for the process. */
typedef struct rpc_method {
    const char *path;    /* "/memorypins.v1.MemoryPins/GetPin" */
    const char *service; /* "memorypins.v1.MemoryPins" */
    const char *name;    /* "GetPin" */
    const ProtobufCMessageDescriptor *input;
    const ProtobufCMessageDescriptor *output;
    rpc_handler_cb handler;
    const char *resource; /* permission, e.g. "memory_pin"; NULL when unguarded */
    const char *action;   /* e.g. "read" */
    const char *op;       /* memory_pins_operations_total operation label, or NULL */
    unsigned flags;
} rpc_method;

/* For a client-streaming call: called with each further request message (borrowed for the
 * callback), and with msg NULL when the client half-closed. */
typedef void (*rpc_call_message_cb)(rpc_call *call, const ProtobufCMessage *msg, void *arg);
/* Called once when the client goes away (RST_STREAM, connection closed) or the deadline passes
 * before the handler finished; the handler must then finish the call (the reply is dropped). */
typedef void (*rpc_call_cancel_cb)(rpc_call *call, void *arg);

/* The method row of the call. */
const rpc_method *rpc_call_method(const rpc_call *call);
/* The decoded request message (owned by the call). For client-streaming methods: the first
 * message, or NULL when the client sent none before half-closing. */
const ProtobufCMessage *rpc_call_request(const rpc_call *call);
/* The call's arena. */
pins_arena *rpc_call_arena(rpc_call *call);
/* The worker the call runs on. */
rpc_worker *rpc_call_worker(rpc_call *call);
/* The worker's store session. */
struct store_session *rpc_call_store(rpc_call *call);
/* The process configuration (immutable; borrowed for the call). */
const struct pins_config *rpc_call_config(const rpc_call *call);
/* The RBAC decision that let the call in (auth/auth.h: subject, roles, the tenants the caller may
 * touch), or NULL for an unguarded method. Borrowed for the call. */
const struct auth_decision *rpc_call_auth(const rpc_call *call);
/* The tenant a request names when it names every tenant: an unset google.protobuf.StringValue
 * (CleanupExpiredPins), an empty filter of an Admin listing, or a method row marked
 * RPC_METHOD_ALL_TENANTS. */
#define RPC_TENANT_ALL "*"
/* The tenant of a MemoryPins request whose tenant_id is empty (API.md section 4). */
extern const char rpc_tenant_default[];
/* The request's tenant, resolved once by the dispatcher before RBAC, the rate limiter and the
 * handler, from the decoded request's tenant_id field (a string or a
 * google.protobuf.StringValue): the value as sent; rpc_tenant_default for an empty one on a
 * MemoryPins RPC (and for an empty StringValue); RPC_TENANT_ALL for every tenant (see above); NULL
 * when the request has no tenant_id field. Borrowed for the call (from the request, or static). */
const char *rpc_call_tenant(const rpc_call *call);
/* Seconds since the server started serving (0 without a start time). */
double rpc_call_uptime(const rpc_call *call);
/* The rate limiter's Redis, as /ready reports it: "ok", "disabled", "down (fail-open)". */
const char *rpc_call_redis_state(const rpc_call *call);
/* Request metadata (HTTP header) by lower-case name, or NULL. Borrowed for the call. When the
 * header was sent more than once this is the first value (see rpc_call_header_count). */
const char *rpc_call_header(const rpc_call *call, const char *name);
/* How many times the request carried the header of this lower-case name. */
size_t rpc_call_header_count(const rpc_call *call, const char *name);
/* The request id (x-request-id as sent, or generated). Borrowed for the call. */
const char *rpc_call_request_id(const rpc_call *call);
/* Monotonic nanoseconds when the call was dispatched. */
int64_t rpc_call_start_ns(const rpc_call *call);
/* Monotonic nanosecond deadline, or 0 when the client set none. */
int64_t rpc_call_deadline_ns(const rpc_call *call);
/* True once the client went away or the deadline passed. */
bool rpc_call_cancelled(const rpc_call *call);
/* Registers the cancellation callback (one per call; later calls replace it). */
void rpc_call_on_cancel(rpc_call *call, rpc_call_cancel_cb cb, void *arg);
/* Registers the callback for further request messages of a client-streaming call. */
void rpc_call_on_message(rpc_call *call, rpc_call_message_cb cb, void *arg);

/* Adds a response header (gRPC: initial metadata, sent with the first message or the
 * Trailers-Only answer) or, with trailer true, trailing metadata. name and value are copied.
 * Returns 0 or PINS_ENOMEM. */
int rpc_call_add_metadata(rpc_call *call, const char *name, const char *value, bool trailer);
/* One entry for rpc_call_add_metadata_static(): name (lower case) and value are NUL-terminated
 * strings of namelen and valuelen bytes. */
typedef struct rpc_call_md {
    const char *name;
    size_t namelen;
    const char *value;
    size_t valuelen;
} rpc_call_md;
/* As rpc_call_add_metadata() for the n entries of md, in order, without copying or measuring:
 * their strings are borrowed and must live as long as the call (static strings, strings in the
 * call's arena, or strings of an object that outlives every call); md itself is not kept.
 * Returns 0 or PINS_ENOMEM (nothing added). */
int rpc_call_add_metadata_static(rpc_call *call, const rpc_call_md *md, size_t n, bool trailer);

/* Sends one response message (borrowed; packed before return) of a server-streaming call.
 * Returns 0, PINS_ECANCELLED when the client is gone, PINS_ERESOURCE_EXHAUSTED when the client
 * reads too slowly (the caller should then finish the call), PINS_ENOMEM. */
int rpc_call_send(rpc_call *call, const ProtobufCMessage *msg);
/* Unary success: sends msg (borrowed) and finishes the call with OK. */
void rpc_call_reply(rpc_call *call, const ProtobufCMessage *msg);
/* As rpc_call_send() for a message already packed as the method's output type (borrowed). */
int rpc_call_send_packed(rpc_call *call, const uint8_t *msg, size_t len);
/* For a transport that needs messages unpacked: unpacks msg (call's output type) in an arena of
 * its own, passes it to send and frees it, so that a long stream (WatchPins over SSE or Connect
 * JSON) does not keep every message it sent in the call's arena. Returns send's result,
 * PINS_EINTERNAL (unreadable) or PINS_ENOMEM. */
int rpc_call_send_unpacked(rpc_call *call, const uint8_t *msg, size_t len,
                           int (*send)(rpc_call *, const ProtobufCMessage *));
/* Unary success with the response already encoded as the method's output message (bytes are
 * borrowed; copied or sent before return). Transports that need the message (JSON) decode it. */
void rpc_call_reply_packed(rpc_call *call, const uint8_t *msg, size_t len);
/* The error funnel: finishes the call with err (a PINS_E* code) and a client-visible message
 * (printf format; lower case, what was attempted and why, never database or library text).
 * fmt NULL uses the table's message. Counts and logs once. */
void rpc_call_fail(rpc_call *call, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Finishes a streaming call with OK after its messages. */
void rpc_call_finish(rpc_call *call);

/* The error funnel for a request that is wrong in one field: as rpc_call_fail(call, err,
 * "<field>: <why>") where why is fmt formatted, and the call records field (the name of a field of
 * the request message, e.g. "tenant_id"; a static or arena string) as the one at fault.
 * Transports that report fields take it from there: REST answers 422 with the field's location
 * (path, query or body, from the route that bound it). Handlers never name locations. */
void rpc_call_fail_field(rpc_call *call, int err, const char *field, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
