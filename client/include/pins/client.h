/* pins/client.h: libpins-client, the C client of pinsd (gRPC over HTTP/2, h2c or TLS).
 *
 * Two APIs over one implementation:
 *  - blocking: a pins_client owns a private event loop; every call returns when it is done.
 *    For scripts, tools and simple programs.
 *  - event-driven: a pins_conn lives on the caller's libevent base; calls start at once, run
 *    concurrently as HTTP/2 streams of one connection, and finish in a callback.
 *
 * Messages are the protobuf-c structures generated from pinsd's .proto files, installed beside
 * this header (memorypins/v1/memory_pins.pb-c.h, memorypins/v1/admin.pb-c.h,
 * grpc/health/v1/health.pb-c.h and the google/protobuf well-known types they use). Requests are
 * borrowed: build them on the stack with the generated ..._INIT macros. Responses are new: free
 * them with pins_message_free().
 *
 * Errors: every call reports a pins_status (gRPC code, message, and what pinsd sends with it:
 * request id, retry-after, trailing metadata). A bad server answer (malformed frame, lying length
 * prefix, missing trailers, undecodable message, connection dropped) is a status, never a crash
 * or an abort. Functions returning int return 0 on success and the pins_code (> 0) otherwise.
 *
 * Retries: a call on a stream the server refused, or above a GOAWAY's last stream id, was never
 * processed: it is sent again at once, whatever its method and even with no_retry, up to 10
 * times. A call whose connection could not be made (name not resolved, connect refused or timed
 * out, TLS handshake failed, connection dropped or answered with GOAWAY before its request went
 * out) was not processed either: it is retried whatever its method, but as a retry with backoff:
 * counted against options.max_retries, after the backoff below, and not at all with no_retry. A
 * server certificate that fails verification is not retried. A call that failed with UNAVAILABLE
 * (or RESOURCE_EXHAUSTED with a retry-after) is retried with exponential backoff and full jitter
 * only when its method is safe to repeat (reads; see pins_method.idempotent), at most
 * options.max_retries times in all and never past its deadline. After a GOAWAY or a dropped
 * connection, the next call opens a new connection.
 *
 * Threads: a pins_client or pins_conn, and everything started on it, belongs to one thread at a
 * time; use one per thread. Distinct clients on distinct threads share nothing. The library
 * never changes signal dispositions and never raises SIGPIPE (sends use MSG_NOSIGNAL).
 *
 * Versioning: PINS_CLIENT_VERSION_* below; pins_client_version() is the library's at run time.
 * The ABI carries the soname major version; symbols are versioned PINS_CLIENT_0.
 */
#ifndef PINS_CLIENT_H
#define PINS_CLIENT_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "grpc/health/v1/health.pb-c.h"
#include "memorypins/v1/admin.pb-c.h"
#include "memorypins/v1/memory_pins.pb-c.h"

#ifdef __cplusplus
extern "C" {
#endif

#define PINS_CLIENT_VERSION_MAJOR  0
#define PINS_CLIENT_VERSION_MINOR  1
#define PINS_CLIENT_VERSION_PATCH  0
#define PINS_CLIENT_VERSION_STRING "0.1.0"

/* "MAJOR.MINOR.PATCH" of the library linked at run time. */
const char *pins_client_version(void);

/* ---- status -------------------------------------------------------------------------------- */

/* gRPC status codes (https://grpc.github.io/grpc/core/md_doc_statuscodes.html). */
typedef enum pins_code {
    PINS_CODE_OK = 0,
    PINS_CODE_CANCELLED = 1,
    PINS_CODE_UNKNOWN = 2,
    PINS_CODE_INVALID_ARGUMENT = 3,
    PINS_CODE_DEADLINE_EXCEEDED = 4,
    PINS_CODE_NOT_FOUND = 5,
    PINS_CODE_ALREADY_EXISTS = 6,
    PINS_CODE_PERMISSION_DENIED = 7,
    PINS_CODE_RESOURCE_EXHAUSTED = 8,
    PINS_CODE_FAILED_PRECONDITION = 9,
    PINS_CODE_ABORTED = 10,
    PINS_CODE_OUT_OF_RANGE = 11,
    PINS_CODE_UNIMPLEMENTED = 12,
    PINS_CODE_INTERNAL = 13,
    PINS_CODE_UNAVAILABLE = 14,
    PINS_CODE_DATA_LOSS = 15,
    PINS_CODE_UNAUTHENTICATED = 16,
} pins_code;

/* "OK", "CANCELLED", ... ("UNKNOWN" for a code outside the table). Static storage. */
const char *pins_code_name(int code);

/* One metadata entry (an HTTP/2 header of the call). Names are lower case; a name ending in
 * "-bin" carries binary bytes (sent base64-encoded on the wire, given and returned decoded). */
typedef struct pins_metadata {
    const char *name;
    const char *value;
    size_t value_len; /* 0 with a non-NULL value: strlen(value) on input */
} pins_metadata;

/* Metadata received, owned by the pins_status or pins_metadata_list holding it. */
typedef struct pins_metadata_list {
    pins_metadata *items; /* names and values NUL-terminated (binary values too) */
    size_t count;
} pins_metadata_list;

/* The outcome of a call. Initialise with PINS_STATUS_INIT (or pins_status_init), pass to calls,
 * release with pins_status_clear(); a status may be passed to another call without clearing
 * (the previous contents are released then). */
typedef struct pins_status {
    int code;               /* pins_code; PINS_CODE_OK on success */
    char *message;          /* grpc-message (percent-decoded) or the client's own text; "" on OK */
    int http_status;        /* :status of the response, 0 when none arrived */
    bool from_server;       /* true: the server sent this status; false: the client decided it
                             * (deadline, connection failure, malformed answer, cancellation) */
    int attempts;           /* how many times the call was sent (1 + retries) */
    char *request_id;       /* x-request-id of the last attempt (sent or generated), or NULL */
    int64_t retry_after_ms; /* the server's retry-after (RESOURCE_EXHAUSTED), -1 when none */
    uint8_t *details;       /* grpc-status-details-bin (a google.rpc.Status), decoded, or NULL */
    size_t details_len;
    pins_metadata_list headers;  /* response headers (without pseudo and reserved ones) */
    pins_metadata_list trailers; /* trailing metadata (without grpc-status and grpc-message) */
} pins_status;

/* clang-format off */
#define PINS_STATUS_INIT {.code = 0, .retry_after_ms = -1}
/* clang-format on */
void pins_status_init(pins_status *st);
void pins_status_clear(pins_status *st);
/* The value of the first header or trailer named name (trailers first), or NULL. Borrowed. */
const char *pins_status_metadata(const pins_status *st, const char *name);

/* ---- options ------------------------------------------------------------------------------- */

/* Connection options. Initialise with pins_options_init(), then set what you need. Strings are
 * borrowed for the duration of pins_client_new / pins_conn_new only (the library copies them).
 * The TLS settings (ca_file, cert_file, key_file, server_name, insecure_skip_verify) on a
 * plaintext connection (an http:// address, or a bare one without tls) are refused with
 * INVALID_ARGUMENT, and so is tls with an http:// address: tokens never go out in clear text
 * while the caller asked for TLS. Tokens and the user agent must be valid header values (no
 * control character but the tab). */
typedef struct pins_options {
    const char *addr;      /* "host:port", "http://host:port" (h2c) or "https://host:port"
                            * (TLS); default "127.0.0.1:50051" */
    bool tls;              /* TLS also for a bare host:port */
    const char *ca_file;   /* PEM CA bundle to verify the server; NULL: the system's store */
    const char *cert_file; /* client certificate (PEM) for mutual TLS, with key_file */
    const char *key_file;
    const char *server_name;    /* name to verify and send as SNI; default: the host of addr */
    bool insecure_skip_verify;  /* TLS without verifying the server (testing only); default off */
    const char *machine_token;  /* sent as x-machine-token on every call, or NULL */
    const char *bearer_token;   /* sent as authorization: Bearer <token> on every call, or NULL */
    const char *user_agent;     /* default "pins-client/<version>" */
    int64_t timeout_ms;         /* default deadline of a call; 0: none (default 0): a call then
                                 * waits as long as the server takes, bounded only by TCP
                                 * keepalive noticing a vanished server (about 2 minutes). This
                                 * and the other durations are capped at 100 years */
    int64_t connect_timeout_ms; /* TCP + TLS handshake bound; default 5000 */
    int max_retries;            /* retries of a safe call; default 3; 0: none */
    int64_t backoff_initial_ms; /* first backoff; default 100 */
    int64_t backoff_max_ms;     /* backoff cap; default 5000 */
    size_t max_message_bytes;   /* largest response message accepted; default 4 MiB */
    size_t max_header_bytes;    /* largest response header block accepted; default 64 KiB */
    uint32_t max_concurrent_streams; /* pins_conn: calls in flight before queueing; default 100
                                      * (lowered to the server's SETTINGS) */
} pins_options;

void pins_options_init(pins_options *opts);

/* Per-call options. NULL means all defaults. Strings and arrays are borrowed for the call's
 * start only. */
typedef struct pins_call_options {
    int64_t timeout_ms;            /* 0: the connection's default; < 0: no deadline */
    const char *request_id;        /* x-request-id to send; NULL: one is generated */
    const pins_metadata *metadata; /* extra request metadata */
    size_t metadata_count;
    bool no_retry;         /* no retry with backoff, also after a connection that could
                            * not be made (refused streams are still sent again) */
    bool discard_response; /* unary only: the response is checked but not decoded; the
                            * callback gets NULL (load generators) */
} pins_call_options;

/* ---- methods ------------------------------------------------------------------------------- */

typedef enum pins_rpc {
    PINS_RPC_UPSERT_PIN,
    PINS_RPC_GET_PIN,
    PINS_RPC_LIST_PINS,
    PINS_RPC_DELETE_PIN,
    PINS_RPC_CLEANUP_EXPIRED_PINS,
    PINS_RPC_WATCH_PINS, /* server streaming */
    PINS_RPC_GET_RBAC_INFO,
    PINS_RPC_RELOAD_RBAC_POLICY,
    PINS_RPC_GET_RBAC_MATRIX,
    PINS_RPC_LIST_RBAC_AUDIT,
    PINS_RPC_CLEANUP_RBAC_AUDIT,
    PINS_RPC_LIST_MEMORY_AUDIT,
    PINS_RPC_GET_STATUS,
    PINS_RPC_HEALTH_CHECK,
    PINS_RPC_HEALTH_WATCH, /* server streaming */
    PINS_RPC__COUNT
} pins_rpc;

typedef struct pins_method {
    const char *path; /* "/memorypins.v1.MemoryPins/GetPin" */
    const ProtobufCMessageDescriptor *input;
    const ProtobufCMessageDescriptor *output;
    bool server_streaming;
    bool idempotent; /* safe to repeat: retried with backoff on UNAVAILABLE */
} pins_method;

/* The method of rpc, or NULL for a value outside pins_rpc. Static storage. */
const pins_method *pins_method_of(pins_rpc rpc);

/* Frees a response or event message returned by this library (NULL allowed). */
void pins_message_free(ProtobufCMessage *msg);

/* ---- JSON values --------------------------------------------------------------------------- */

/* A pin's value is a google.protobuf.Struct (a JSON object). pins_value_from_json parses a JSON
 * object (RFC 8259, UTF-8, nesting up to 64) into a new Struct, freed with
 * pins_message_free(&s->base); on bad input it returns PINS_CODE_INVALID_ARGUMENT with the reason
 * in st (st may be NULL). pins_value_to_json returns new compact JSON text (free()), or NULL when
 * out of memory or the Struct has no JSON form (NaN, invalid UTF-8). */
int pins_value_from_json(const char *json, size_t len, Google__Protobuf__Struct **pvalue,
                         pins_status *st);
char *pins_value_to_json(const Google__Protobuf__Struct *value);

/* ---- blocking API -------------------------------------------------------------------------- */

typedef struct pins_client pins_client;

/* A new client (connects at the first call). NULL on bad options (reason in st, may be NULL). */
pins_client *pins_client_new(const pins_options *opts, pins_status *st);
/* Closes the connection and frees the client. NULL allowed. */
void pins_client_free(pins_client *c);

/* Calls a unary method: req must be a message of the method's input type; on success *presp is
 * a new message of its output type (NULL with discard_response). Returns 0 or the status code;
 * st (may be NULL) gets the full status either way. */
int pins_client_call(pins_client *c, pins_rpc rpc, const ProtobufCMessage *req,
                     ProtobufCMessage **presp, const pins_call_options *copts, pins_status *st);

/* Typed wrappers of pins_client_call. */
int pins_upsert_pin(pins_client *c, const Memorypins__V1__UpsertPinRequest *req,
                    Memorypins__V1__UpsertPinResponse **presp, const pins_call_options *copts,
                    pins_status *st);
int pins_get_pin(pins_client *c, const Memorypins__V1__GetPinRequest *req,
                 Memorypins__V1__GetPinResponse **presp, const pins_call_options *copts,
                 pins_status *st);
int pins_list_pins(pins_client *c, const Memorypins__V1__ListPinsRequest *req,
                   Memorypins__V1__ListPinsResponse **presp, const pins_call_options *copts,
                   pins_status *st);
int pins_delete_pin(pins_client *c, const Memorypins__V1__DeletePinRequest *req,
                    Memorypins__V1__DeletePinResponse **presp, const pins_call_options *copts,
                    pins_status *st);
int pins_cleanup_expired_pins(pins_client *c, const Memorypins__V1__CleanupExpiredPinsRequest *req,
                              Memorypins__V1__CleanupExpiredPinsResponse **presp,
                              const pins_call_options *copts, pins_status *st);
int pins_get_rbac_info(pins_client *c, Memorypins__V1__GetRbacInfoResponse **presp,
                       const pins_call_options *copts, pins_status *st);
int pins_reload_rbac_policy(pins_client *c, Memorypins__V1__ReloadRbacPolicyResponse **presp,
                            const pins_call_options *copts, pins_status *st);
int pins_get_rbac_matrix(pins_client *c, Memorypins__V1__GetRbacMatrixResponse **presp,
                         const pins_call_options *copts, pins_status *st);
int pins_list_rbac_audit(pins_client *c, const Memorypins__V1__ListRbacAuditRequest *req,
                         Memorypins__V1__ListRbacAuditResponse **presp,
                         const pins_call_options *copts, pins_status *st);
int pins_cleanup_rbac_audit(pins_client *c, const Memorypins__V1__CleanupRbacAuditRequest *req,
                            Memorypins__V1__CleanupRbacAuditResponse **presp,
                            const pins_call_options *copts, pins_status *st);
int pins_list_memory_audit(pins_client *c, const Memorypins__V1__ListMemoryAuditRequest *req,
                           Memorypins__V1__ListMemoryAuditResponse **presp,
                           const pins_call_options *copts, pins_status *st);
int pins_get_status(pins_client *c, Memorypins__V1__GetStatusResponse **presp,
                    const pins_call_options *copts, pins_status *st);
int pins_health_check(pins_client *c, const char *service,
                      Grpc__Health__V1__HealthCheckResponse **presp, const pins_call_options *copts,
                      pins_status *st);

/* A plain HTTP/2 GET of path ("/ready", "/health", "/metrics") on the client's connection, for
 * the probes pinsd serves on every listener beside gRPC. On 0 a response arrived: its :status is
 * in *phttp_status and its body in *pbody (new, NUL-terminated, free(); at most
 * max_message_bytes, longer is RESOURCE_EXHAUSTED) with its length in *plen (may be NULL).
 * Returns the status code when no response could be had. The machine token and bearer token are
 * sent as on calls. Never retried with backoff. */
int pins_client_http_get(pins_client *c, const char *path, int *phttp_status, char **pbody,
                         size_t *plen, const pins_call_options *copts, pins_status *st);

/* Server streams, as an iterator. pins_stream_open starts rpc (a streaming method) and returns
 * the stream, or NULL (status in st) when it could not start. pins_stream_next waits for the next
 * message: returns 1 with *pmsg a new message, 0 when the stream ended with OK, or the status
 * code (> 0) when it ended otherwise; in both end cases st holds the final status. A stream's
 * deadline (copts->timeout_ms) covers its whole life. pins_stream_close cancels the stream if it
 * is still open and frees it. Streams are not retried once a message has arrived. */
typedef struct pins_stream pins_stream;
pins_stream *pins_stream_open(pins_client *c, pins_rpc rpc, const ProtobufCMessage *req,
                              const pins_call_options *copts, pins_status *st);
int pins_stream_next(pins_stream *s, ProtobufCMessage **pmsg, pins_status *st);
void pins_stream_close(pins_stream *s);

/* Typed wrappers for WatchPins. */
pins_stream *pins_watch_pins(pins_client *c, const Memorypins__V1__WatchPinsRequest *req,
                             const pins_call_options *copts, pins_status *st);
int pins_watch_next(pins_stream *s, Memorypins__V1__WatchPinsResponse **pevent, pins_status *st);

/* ---- event-driven API ---------------------------------------------------------------------- */

struct event_base;

typedef struct pins_conn pins_conn;
typedef struct pins_call pins_call;

/* A unary call's end, or a stream's end (resp NULL). resp is new (the callback owns it; free
 * with pins_message_free) and NULL on failure or with discard_response. st lives only for the
 * callback. The call is freed after the callback returns. */
typedef void (*pins_done_cb)(void *arg, ProtobufCMessage *resp, const pins_status *st);
/* One message of a server stream; msg is new (the callback owns it). */
typedef void (*pins_message_cb)(void *arg, ProtobufCMessage *msg);

/* A new connection on base (connects at the first call, reconnects after GOAWAY or a drop).
 * NULL on bad options (reason in st, may be NULL). */
pins_conn *pins_conn_new(struct event_base *base, const pins_options *opts, pins_status *st);
/* Cancels every call still running (their done callbacks run, with CANCELLED, before this
 * returns), closes the connection and frees it. NULL allowed. May be called from inside a
 * callback of this connection: the calls end at once and the memory is freed when the library
 * code that ran the callback returns (conn must not be used after the call either way). Calls
 * started from the done callbacks this runs are refused (pins_conn_start returns NULL). */
void pins_conn_free(pins_conn *conn);

/* Starts rpc with req (encoded at once: req is borrowed for this call only). on_message is for
 * streaming methods (NULL otherwise); on_done runs exactly once, never from inside
 * pins_conn_start itself. Returns the call (valid until on_done returns), or NULL when req does
 * not match the method, when out of memory, or while pins_conn_free runs (nothing is called
 * then). */
pins_call *pins_conn_start(pins_conn *conn, pins_rpc rpc, const ProtobufCMessage *req,
                           const pins_call_options *copts, pins_message_cb on_message,
                           pins_done_cb on_done, void *arg);
/* Cancels a running call: its on_done runs with CANCELLED (before this returns). */
void pins_call_cancel(pins_call *call);

/* Calls started and not yet done on conn. */
size_t pins_conn_pending(const pins_conn *conn);

#ifdef __cplusplus
}
#endif

#endif /* PINS_CLIENT_H */
