/* rpc/rpc_int.h: structures shared by the files of rpc/ (and by protocols/, which adds transports).
 * Not for handlers: they see rpc/call.h only.
 */
#ifndef PINS_RPC_RPC_INT_H
#define PINS_RPC_RPC_INT_H

#include <event2/event.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"
#include "rpc/call.h"
#include "server/server.h"

struct store;
struct store_session;
struct transport__conn;
struct ratelimit;
struct ratelimit_worker;

/* ---- call ------------------------------------------------------------------------------------ */

/* What a transport does for the calls it created. Every function runs on the call's worker. */
typedef struct rpc__call_ops {
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
} rpc__call_ops;

typedef struct rpc__header {
    const char *name; /* lower case */
    const char *value;
} rpc__header;

typedef struct rpc__metadata {
    struct rpc__metadata *next;
    const char *name; /* lower case; borrowed for the call (its arena, static, or longer-lived) */
    const char *value;
    size_t namelen;
    size_t valuelen;
    bool trailer;
    bool varies; /* the value changes from call to call (ratelimit, x-ratelimit-remaining,
                    retry-after): HTTP/2 keeps it out of the peer's HPACK table */
} rpc__metadata;

/* The request field at fault when the call failed INVALID_ARGUMENT (rpc_call_fail_field, or a
 * transport's own binding): field is a field name of the request message, NULL for the request
 * as a whole; type FastAPI's error type for the REST 422 body ("type_error.integer"...), NULL for
 * "value_error". Static strings or strings in the call's arena. */
typedef struct rpc__field_error {
    const char *field;
    const char *type;
} rpc__field_error;

/* Where a call came from: the REST route template and HTTP method when the REST transport made
 * the call, else NULL. The rbac audit row names them (else the RPC path and method); the REST
 * error mapping finds the route's row by them (the location of a field error). Static strings. */
typedef struct rpc__origin {
    const char *route;
    const char *http_method;
} rpc__origin;

/* The refusal of the RBAC verdict (auth/auth.h) that failed the call, for the REST 403 body
 * {"error":"forbidden","reason","resource","action"}: reason ("no-credentials", "invalid-token",
 * "insufficient-permissions", "tenant-not-allowed"), the row's resource and action. NULL when no
 * RBAC verdict refused the call. Static strings or strings in the call's arena. */
typedef struct rpc__deny {
    const char *reason;
    const char *resource;
    const char *action;
} rpc__deny;

/* The rate limiter's numbers (auth/ratelimit.h verdict) of a call it decided, for the REST 429
 * body {"limit", "retry_after"}; set false when the limiter did not decide the call. */
typedef struct rpc__rate {
    bool set;
    int64_t limit;         /* RATE_LIMIT_RPM */
    int64_t retry_after_s; /* refused: seconds until a token is back; else 0 */
} rpc__rate;

enum {
    RPC__CALL_DISPATCHED = 1u << 0, /* the handler owns a reference */
    RPC__CALL_FINISHED = 1u << 1,   /* the response status has been sent (or dropped) */
    RPC__CALL_CANCELLED = 1u << 2,  /* client gone or deadline passed */
    RPC__CALL_DETACHED = 1u << 3,   /* the transport let go */
    RPC__CALL_SENT_MESSAGE = 1u << 4,
};

struct rpc_call {
    pins_arena *arena; /* owns this struct and everything of the call */
    const rpc_method *method;
    rpc_worker *worker;
    const rpc__call_ops *ops;
    void *transport; /* the transport's stream; NULL once detached */
    ProtobufCMessage *request;
    rpc__header *headers;
    size_t nheaders;
    const char *request_id;
    /* The request's tenant, resolved once by the dispatcher (rpc_call_tenant()): borrowed from
     * the decoded request, rpc_tenant_default, RPC_TENANT_ALL, or NULL. */
    const char *tenant;
    int64_t start_ns;
    int64_t deadline_ns;
    struct event *deadline_ev;
    rpc__metadata *metadata;
    rpc__metadata **metadata_tail; /* where the next entry goes; NULL: &metadata */
    size_t nmetadata;
    unsigned flags;
    int refs;
    int status_err; /* the error the call finished with */
    rpc_call_cancel_cb on_cancel;
    void *on_cancel_arg;
    rpc_call_message_cb on_message;
    void *on_message_arg;
    rpc__field_error field_error;
    const char *error_message; /* the client-visible message of a failed call */
    /* Response bytes a server stream may have waiting for a slow reader before send and write
     * refuse with PINS_ERESOURCE_EXHAUSTED; 0: the transport's own bound. rpc/watch.c sets it
     * (PINS_WATCH_PENDING_BYTES) for WatchPins streams. */
    size_t pending_max;
    /* Authorisation (rpc/dispatch.c, auth/auth.h): the RBAC verdict for a guarded method, in the
     * call's arena; NULL for unguarded methods and before dispatch. */
    const struct auth_decision *auth;
    rpc__origin origin; /* set by the REST transport */
    rpc__deny deny;     /* set by the dispatcher when RBAC refused the call */
    rpc__rate rate;     /* set by the dispatcher from the rate limiter's verdict */
};

/* A new call for method on worker, with its own arena. The transport holds the one reference.
 * headers are copied into the arena later by the transport. Returns NULL when out of memory. */
rpc_call *rpc__call_new(rpc_worker *w, const rpc_method *method, const rpc__call_ops *ops,
                        void *transport, size_t arena_limit);
/* The transport lets go of the call (stream closed). If the call was not finished, it is
 * cancelled first. Frees the call when the handler is done too. */
void rpc__call_detach(rpc_call *call);
/* Cancels the call (client gone): runs its cancel callback once. */
void rpc__call_cancel(rpc_call *call);
/* The deadline passed: cancels the call and answers DEADLINE_EXCEEDED; the handler still
 * finishes it later (that reply is dropped). */
void rpc__call_expire(rpc_call *call);
/* Delivers a further request message of a client-streaming call (NULL: half-close). */
void rpc__call_deliver(rpc_call *call, const ProtobufCMessage *msg);
/* Frees a call that was never dispatched (transport error before dispatch). */
void rpc__call_abandon(rpc_call *call);
/* An extra reference (for work pending on the call's memory), dropped by rpc__call_unref. */
void rpc__call_ref(rpc_call *call);
void rpc__call_unref(rpc_call *call);
/* Nesting the transports accept in a request: a 64-deep pin value inside UpsertPinRequest
 * needs 193 levels (common/pbwire.h). */
#define RPC__MAX_PROTO_DEPTH 200
/* Checks and unpacks a request message of type desc into the call's arena. On failure *pwhy
 * gets the client-visible reason (and call->field_error names a bad string field).
 * Returns 0, PINS_EINVALID_ARGUMENT or PINS_ETOO_LARGE. */
int rpc__call_decode(rpc_call *call, const ProtobufCMessageDescriptor *desc, const uint8_t *p,
                     size_t len, ProtobufCMessage **pmsg, const char **pwhy);
/* Fills call->request_id from x-request-id or a new random id. */
int rpc__call_set_request_id(rpc_call *call, const char *sent);
/* Looks up response metadata the handler added. */
const rpc__metadata *rpc__call_metadata(const rpc_call *call);

/* ---- dispatch and method table --------------------------------------------------------------- */

/* The method row for a ":path", or NULL. */
const rpc_method *rpc__method_find(const char *path, size_t len);
/* Every row (for the REST bridge, reflection and tests); *pn gets the count. */
const rpc_method *rpc__method_table(size_t *pn);
/* Runs the generic checks and the handler. The call must have its request set. */
void rpc__dispatch(rpc_call *call);
/* The checks that need only the request's headers (call->method and headers set, no request
 * yet): under RBAC_ENFORCE=true, credentials and the role's permission (auth_decide_early).
 * Transports call it before they buffer or decode a body. Returns true when the request may go
 * on; false when it was refused (the call finished with its status, audited and counted). */
bool rpc__dispatch_early_or_reply(rpc_call *call);
/* The same decision for transports that answer in their own shape (the bridge): *perr gets 0
 * when the request may go on, or the status of the refusal (*pmsg its client-visible message, in
 * the call's arena), already audited and recorded on the call (call->deny, for the REST 403
 * body); the caller answers it. Returns 0 or PINS_ENOMEM. */
int rpc__dispatch_early(rpc_call *call, int *perr, const char **pmsg);

#define RPC__ARENA_POOL 64

/* ---- worker and server ----------------------------------------------------------------------- */

struct rpc_worker {
    int index;
    struct event_base *base;
    rpc_server *server;
    struct store_session *store;
    struct transport__conn *conns; /* doubly linked list of open connections */
    size_t nconns;
    struct event *drain_ev;
    struct event *stop_ev;
    struct event *sweep_ev;
    struct evconnlistener **listeners;
    size_t nlisteners;
    struct event *accept_resume_ev; /* accepting again after running out of descriptors */
    struct event *tick_ev;          /* transport_conn_tick every RPC__TICK_MS */
    int64_t accept_paused_ns;       /* when accepting paused; 0 while it works */
    bool draining;
    uint64_t rng[2];                     /* xorshift128+ for request ids */
    struct rpc__health_watch *watch;     /* open health Watch streams */
    struct rpc__watch_worker *watch_hub; /* WatchPins streams and their inbox (rpc/watch.c) */
    struct rpc__mcache *mcache;          /* metric cells per method (rpc/rpc_metrics.c) */
    size_t arena_limit;                  /* the limit of every transport call arena */
    _Atomic int64_t buffered; /* bytes its connections hold (transport__conn_charge); written by the
                                 worker only, read by the metrics gauge */
    int64_t buffer_share;     /* its part of PINS_BUFFER_BYTES: the total over the workers */
    pins_arena *arena_pool[RPC__ARENA_POOL];
    size_t narena_pool;
    struct ratelimit_worker *ratelimit; /* auth/ratelimit.h; NULL: no rate limiting */
    struct rpc_audit *audit;            /* rpc/audit.h; NULL: no audit rows */
};

struct rpc_server {
    const pins_config *cfg;
    struct store *store;
    rpc_worker *workers;
    int nworkers;
    int *listen_fds;             /* nworkers * nlisten sockets, SO_REUSEPORT */
    void *tls_ctx;               /* SSL_CTX *, NULL without TLS */
    struct ratelimit *ratelimit; /* auth/ratelimit.h, process wide */
    int64_t started_unix_us;
    int64_t started_ns;
    _Atomic int draining;
    _Atomic int nconns; /* across workers, for PINS_MAX_CONNECTIONS */
};

/* ---- connections ------------------------------------------------------------------------------
 */

typedef struct transport__conn transport__conn;

/* For protocol modules outside this folder (transport/h1.c): the connection's bufferevent, its
 * worker, and a request to close it once the outermost callback unwinds (after the output
 * drained when after_flush is true). */
struct bufferevent *transport__conn_bev(transport__conn *c);
rpc_worker *transport__conn_worker(transport__conn *c);
void transport__conn_close(transport__conn *c, bool after_flush);

/* Accepts fd on worker w (TLS when the server has a context). Takes fd. */
void transport_conn_accept(rpc_worker *w, int fd);
/* Starts a graceful shutdown of every connection of the worker (GOAWAY, finish in-flight). */
void transport_conn_drain_all(rpc_worker *w);
/* Closes every connection of the worker now. */
void transport_conn_close_all(rpc_worker *w);
/* Runs every RPC__TICK_MS on each worker: answers requests that did not arrive within
 * PINS_REQUEST_TIMEOUT_SECONDS and closes connections whose output stalled past it. */
#define RPC__TICK_MS 250
void transport_conn_tick(rpc_worker *w);

/* ---- buffered bytes ---------------------------------------------------------------------------
 *
 * What a connection holds for its peer (request bodies, decoded request messages, response
 * output not yet sent) is charged to the connection (PINS_CONN_BUFFER_BYTES) and to the process
 * (PINS_BUFFER_BYTES, shared out evenly between the workers, which the kernel gives connections
 * evenly too). A charge that would pass either limit is refused, except the first charge
 * of a connection that holds nothing, so that one request at a time always makes progress; the
 * caller then refuses the request (RESOURCE_EXHAUSTED, HTTP 503) instead of buffering it. */

/* Charges n bytes to c and the process. Returns 0 or PINS_ERESOURCE_EXHAUSTED. */
int transport__conn_charge(transport__conn *c, size_t n);
/* Gives back n bytes charged to c. */
void transport__conn_uncharge(transport__conn *c, size_t n);

/* ---- WatchPins fan-out (rpc/watch.c) ----------------------------------------------------------
 */

typedef struct rpc__watch_worker rpc__watch_worker;
/* Creates the worker's inbox (after its base). Returns 0 or PINS_ENOMEM. */
int rpc__watch_worker_init(rpc_worker *w);
/* Finishes every WatchPins stream of the worker (drain). */
void rpc__watch_drain(rpc_worker *w);
/* Frees the inbox (after the worker stopped). */
void rpc__watch_worker_free(rpc_worker *w);

/* ---- health and probes ------------------------------------------------------------------------
 */

void rpc__health_check(rpc_call *call);
void rpc__health_watch(rpc_call *call);
/* Tells the worker's open Watch streams that the server is draining. */
void rpc__health_drain(rpc_worker *w);

/* ---- metrics of the rpc layer ------------------------------------------------------------------
 */

void rpc__metrics_init(void);
void rpc__metrics_started(rpc_worker *w, const rpc_method *m);
void rpc__metrics_handled(rpc_worker *w, const rpc_method *m, int grpc_code, double seconds);
/* The families of transport__conn_charge and of connections the server closes; s is sampled at
 * exposition time. */
void rpc__metrics_server(rpc_server *s);
void rpc__metrics_buffer_refused(rpc_worker *w);
/* reason: "idle", "output_stalled", "protocol_error" (nghttp2 sent GOAWAY with an error). */
void rpc__metrics_conn_closed(const char *reason);
void rpc__metrics_request_timeout(void);
/* Frees the worker's metric cells (after the worker stopped). */
void rpc__metrics_worker_free(rpc_worker *w);

#endif
