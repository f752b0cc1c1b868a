/* rpc/core.h: the core as the protocol mappings (protocols/) and the transports (transport/) see
 * it: the call object's fields, the transport side of a call (rpc_call_ops, new, detach,
 * deliver, references), the method table, the one entry into the core (rpc_dispatch), and the
 * worker and process structures the composition root (server/) fills.
 *
 * Handlers never include this: they see rpc/call.h. Nothing here knows a protocol: a call is
 * made by a transport, given its method and request by a protocol mapping, and answered through
 * the ops that mapping set.
 */
#ifndef PINS_RPC_CORE_H
#define PINS_RPC_CORE_H

#include <event2/event.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"
#include "common/limits.h"
#include "common/list.h"
#include "common/rand.h"
#include "rpc/call.h"

struct store;
struct store_session;
struct ratelimit;
struct ratelimit_worker;
typedef struct rpc_server rpc_server;

/* ---- call ------------------------------------------------------------------------------------ */

/* What a transport does for the calls it created. Every function runs on the call's worker. */
typedef struct rpc_call_ops {
    /* Sends one response message. Returns 0, PINS_ECANCELLED, PINS_ERESOURCE_EXHAUSTED, NOMEM. */
    int (*send)(rpc_call *call, const ProtobufCMessage *msg);
    /* Sends one response message already packed (NULL: the call decodes it and uses send). */
    int (*send_packed)(rpc_call *call, const uint8_t *msg, size_t len);
    /* Ends the response with grpc status for err (0 = OK) and message (NULL for none). */
    void (*finish)(rpc_call *call, int err, const char *message);
    /* Optional (NULL: nothing to do), for a server stream that stays open between messages
     * (WatchPins, rpc/watch.c): open sends the response headers now rather than with the first
     * message; heartbeat sends bytes that carry no message, so that proxies keep an idle stream
     * (SSE: a comment line). Return 0 or an error as send. */
    int (*open)(rpc_call *call);
    int (*heartbeat)(rpc_call *call);
} rpc_call_ops;

typedef struct rpc_header {
    const char *name; /* lower case */
    const char *value;
} rpc_header;

typedef struct rpc_metadata {
    struct rpc_metadata *next;
    const char *name; /* lower case; borrowed for the call (its arena, static, or longer-lived) */
    const char *value;
    size_t namelen;
    size_t valuelen;
    bool trailer;
    bool varies; /* the value changes from call to call (ratelimit, x-ratelimit-remaining,
                    retry-after): HTTP/2 keeps it out of the peer's HPACK table */
} rpc_metadata;

/* The request field at fault when the call failed INVALID_ARGUMENT (rpc_call_fail_field, or a
 * transport's own binding): field is a field name of the request message, NULL for the request
 * as a whole; type FastAPI's error type for the REST 422 body ("type_error.integer"...), NULL for
 * "value_error". Static strings or strings in the call's arena. */
typedef struct rpc_field_error {
    const char *field;
    const char *type;
} rpc_field_error;

/* Where a call came from: the REST route template and HTTP method when the REST transport made
 * the call, else NULL. The rbac audit row names them (else the RPC path and method); the REST
 * error mapping finds the route's row by them (the location of a field error). Static strings. */
typedef struct rpc_origin {
    const char *route;
    const char *http_method;
} rpc_origin;

/* The refusal of the RBAC verdict (auth/auth.h) that failed the call, for the REST 403 body
 * {"error":"forbidden","reason","resource","action"}: reason ("no-credentials", "invalid-token",
 * "insufficient-permissions", "tenant-not-allowed"), the row's resource and action. NULL when no
 * RBAC verdict refused the call. Static strings or strings in the call's arena. */
typedef struct rpc_deny {
    const char *reason;
    const char *resource;
    const char *action;
} rpc_deny;

/* The rate limiter's numbers (auth/ratelimit.h verdict) of a call it decided, for the REST 429
 * body {"limit", "retry_after"}; set false when the limiter did not decide the call. */
typedef struct rpc_rate {
    bool set;
    int64_t limit;         /* RATE_LIMIT_RPM */
    int64_t retry_after_s; /* refused: seconds until a token is back; else 0 */
} rpc_rate;

/* The protocol a call arrived in, set by the protocol mapping that gives the call its method
 * (protocols/), for rpc_requests_total{protocol} and rpc_request_duration_seconds{protocol}. A
 * call left at RPC_PROTOCOL_NONE (test doubles) is not counted there. gRPC with JSON messages
 * (application/grpc+json) is RPC_PROTOCOL_GRPC; Connect unary and streaming RPC_PROTOCOL_CONNECT.
 */
typedef enum rpc_protocol {
    RPC_PROTOCOL_NONE,
    RPC_PROTOCOL_GRPC,
    RPC_PROTOCOL_GRPC_WEB,
    RPC_PROTOCOL_CONNECT,
    RPC_PROTOCOL_REST,
    RPC_PROTOCOL_COUNT
} rpc_protocol;

enum {
    RPC_CALL_DISPATCHED = 1u << 0, /* the handler owns a reference */
    RPC_CALL_FINISHED = 1u << 1,   /* the response status has been sent (or dropped) */
    RPC_CALL_CANCELLED = 1u << 2,  /* client gone or deadline passed */
    RPC_CALL_DETACHED = 1u << 3,   /* the transport let go */
    RPC_CALL_SENT_MESSAGE = 1u << 4,
};

struct rpc_call {
    pins_arena *arena; /* owns this struct and everything of the call */
    const rpc_method *method;
    rpc_worker *worker;
    const rpc_call_ops *ops;
    void *transport; /* the transport's stream; NULL once detached */
    ProtobufCMessage *request;
    rpc_header *headers;
    size_t nheaders;
    const char *request_id;
    /* The request's tenant, resolved once by the dispatcher (rpc_call_tenant()): borrowed from
     * the decoded request, rpc_tenant_default, RPC_TENANT_ALL, or NULL. */
    const char *tenant;
    int64_t start_ns;
    int64_t deadline_ns;
    struct event *deadline_ev;
    rpc_metadata *metadata;
    rpc_metadata **metadata_tail; /* where the next entry goes; NULL: &metadata */
    size_t nmetadata;
    unsigned flags;
    int refs;
    int status_err; /* the error the call finished with */
    rpc_call_cancel_cb on_cancel;
    void *on_cancel_arg;
    rpc_call_message_cb on_message;
    void *on_message_arg;
    rpc_field_error field_error;
    const char *error_message; /* the client-visible message of a failed call */
    /* Response bytes a server stream may have waiting for a slow reader before send and write
     * refuse with PINS_ERESOURCE_EXHAUSTED; 0: the transport's own bound. rpc/watch.c sets it
     * (PINS_WATCH_PENDING_BYTES) for WatchPins streams. */
    size_t pending_max;
    /* Authorisation (rpc/dispatch.c, auth/auth.h): the RBAC verdict for a guarded method, in the
     * call's arena; NULL for unguarded methods and before dispatch. */
    const struct auth_decision *auth;
    rpc_origin origin;     /* set by the REST transport */
    rpc_deny deny;         /* set by the dispatcher when RBAC refused the call */
    rpc_rate rate;         /* set by the dispatcher from the rate limiter's verdict */
    rpc_protocol protocol; /* set by the protocol mapping */
};

/* A new call for method on worker, with its own arena. The transport holds the one reference.
 * headers are copied into the arena later by the transport. Returns NULL when out of memory. */
rpc_call *rpc_call_new(rpc_worker *w, const rpc_method *method, const rpc_call_ops *ops,
                       void *transport, size_t arena_limit);
/* The transport lets go of the call (stream closed). If the call was not finished, it is
 * cancelled first. Frees the call when the handler is done too. */
void rpc_call_detach(rpc_call *call);
/* Cancels the call (client gone): runs its cancel callback once. */
void rpc_call_cancel(rpc_call *call);
/* The deadline passed: cancels the call and answers DEADLINE_EXCEEDED; the handler still
 * finishes it later (that reply is dropped). */
void rpc_call_expire(rpc_call *call);
/* Delivers a further request message of a client-streaming call (NULL: half-close). */
void rpc_call_deliver(rpc_call *call, const ProtobufCMessage *msg);
/* Frees a call that was never dispatched (transport error before dispatch). */
void rpc_call_abandon(rpc_call *call);
/* An extra reference (for work pending on the call's memory), dropped by rpc_call_unref. */
void rpc_call_ref(rpc_call *call);
void rpc_call_unref(rpc_call *call);
/* Nesting the transports accept in a request: a 64-deep pin value inside UpsertPinRequest
 * needs 193 levels (common/pbwire.h). */
#define RPC_MAX_PROTO_DEPTH PINS_REQUEST_WIRE_DEPTH /* common/limits.h: 200 */
/* Checks and unpacks a request message of type desc into the call's arena. On failure *pwhy
 * gets the client-visible reason (and call->field_error names a bad string field).
 * Returns 0, PINS_EINVALID_ARGUMENT or PINS_ETOO_LARGE. */
int rpc_call_decode(rpc_call *call, const ProtobufCMessageDescriptor *desc, const uint8_t *p,
                    size_t len, ProtobufCMessage **pmsg, const char **pwhy);
/* Fills call->request_id from x-request-id or a new random id. */
int rpc_call_set_request_id(rpc_call *call, const char *sent);
/* Looks up response metadata the handler added. */
const rpc_metadata *rpc_call_metadata(const rpc_call *call);

/* ---- dispatch and method table --------------------------------------------------------------- */

/* The method row for a ":path", or NULL. */
const rpc_method *rpc_method_find(const char *path, size_t len);
/* Every row (for the REST routes, reflection and tests); *pn gets the count. */
const rpc_method *rpc_method_table(size_t *pn);
/* Runs the generic checks and the handler. The call must have its request set. */
void rpc_dispatch(rpc_call *call);
/* The checks that need only the request's headers (call->method and headers set, no request
 * yet): under RBAC_ENFORCE=true, credentials and the role's permission (auth_decide_early).
 * Transports call it before they buffer or decode a body. Returns true when the request may go
 * on; false when it was refused (the call finished with its status, audited and counted). */
bool rpc_dispatch_early_or_reply(rpc_call *call);
/* The same decision for protocols that answer in their own shape (REST, Connect, gRPC-Web): *perr
 * gets 0 when the request may go on, or the status of the refusal (*pmsg its client-visible
 * message, in the call's arena), already audited and recorded on the call (call->deny, for the REST
 * 403 body); the caller answers it. Returns 0 or PINS_ENOMEM. */
int rpc_dispatch_early(rpc_call *call, int *perr, const char **pmsg);

#define RPC_ARENA_POOL 64

/* ---- worker and process -----------------------------------------------------------------------
 */

/* One worker thread's share of the core. The composition root (server/server.c) creates it and
 * runs its event loop; the transports and protocols of the worker read base, server->cfg,
 * arena_limit and draining. */
struct rpc_worker {
    int index;
    struct event_base *base;
    rpc_server *server;
    struct store_session *store;
    bool draining;
    pins_rand rng;                       /* request ids */
    pins_list health_watches;            /* open health Watch streams (rpc/health.c) */
    struct rpc__watch_worker *watch_hub; /* WatchPins streams and their inbox (rpc/watch.c) */
    struct rpc__mcache *mcache;          /* metric cells per method (rpc/rpc_metrics.c) */
    struct rpc__pcache *pcache;          /* metric cells per protocol (rpc/rpc_metrics.c) */
    size_t arena_limit;                  /* the limit of every transport call arena */
    pins_arena *arena_pool[RPC_ARENA_POOL];
    size_t narena_pool;
    struct ratelimit_worker *ratelimit; /* auth/ratelimit.h; NULL: no rate limiting */
    struct rpc_audit *audit;            /* rpc/audit.h; NULL: no audit rows */
};

/* The process's core: configuration, store, workers. */
struct rpc_server {
    const pins_config *cfg;
    struct store *store;
    rpc_worker *workers;
    int nworkers;
    struct ratelimit *ratelimit; /* auth/ratelimit.h, process wide */
    int64_t started_unix_us;
    int64_t started_ns;
    _Atomic int draining;
};

/* ---- for the composition root (server/server.c) ----------------------------------------------
 */

/* The core's process-wide parts: its metric families and the reflection index. Returns 0 or
 * PINS_EINTERNAL (the embedded descriptor set does not load). */
int rpc_core_init(void);
void rpc_core_shutdown(void);
/* Prepares w (index, server, base and store set) for calls: its request-id generator, the call
 * arena limit, the WatchPins inbox. Returns 0 or PINS_ENOMEM. */
int rpc_worker_start(rpc_worker *w);
/* The server drains: health Watch streams hear it and WatchPins streams end. */
void rpc_worker_drain(rpc_worker *w);
/* After w's loop stopped: its inbox, metric cells and pooled arenas (not base, store, audit). */
void rpc_worker_release(rpc_worker *w);

#endif
