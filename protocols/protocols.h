/* protocols/protocols.h: the exchange interface between the transports (transport/: HTTP/1.1 and
 * HTTP/2) and the protocols (native gRPC, REST/JSON routes, Connect, gRPC-Web, CORS preflight,
 * /openapi.json and the probes).
 *
 * A transport turns one HTTP request into a proto_stream (an exchange): method, path (with its
 * query string), content type, headers, and its body as the protocol asks for it. Over HTTP/2 the
 * transport calls proto_request_headers() once the headers are in, and the protocols (the one
 * selector) say how to take the body; over HTTP/1.1 it calls proto_headers_or_reply() and then
 * proto_handle() with the whole body (bounded by MAX_REQUEST_BYTES; the transport answers 413
 * itself past that). The protocols answer through the stream's ops: start (status and headers),
 * write (body bytes, any number of times), end or end_trailers, and, for native gRPC over HTTP/2,
 * the borrowed zero-copy ops. They may answer at once or later (store callbacks, server streams
 * such as SSE and WatchPins).
 *
 * The exchange's memory. Each stream comes with an rpc_call (rpc/core.h) created by the
 * transport with method NULL: its arena holds the headers and everything of the exchange, and the
 * protocol reuses that call (it sets method, ops and transport, decodes the request into the
 * arena, and dispatches it). From then on the usual two-owner rule applies: the transport drops
 * its reference when the HTTP stream closes (rpc_call_detach when s->dispatched, else
 * rpc_call_abandon), the handler when it finishes the call.
 *
 * Peer gone. When the peer resets or closes before end, the transport calls its close path as
 * above; a dispatched call is then cancelled and its reply dropped. For answers a protocol makes
 * without a call (probes), it holds an extra reference (rpc_call_ref) while it waits.
 *
 * Threads: one worker; nothing is shared.
 */
#ifndef PINS_PROTOCOLS_PROTOCOLS_H
#define PINS_PROTOCOLS_PROTOCOLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc/core.h"

typedef struct proto_stream proto_stream;

/* A response header for the zero-copy ops: name and value are static or in the call's arena. */
typedef struct proto_hdr {
    const char *name; /* lower case */
    const char *value;
    size_t namelen;
    size_t valuelen;
    unsigned flags; /* PROTO_HDR_* */
} proto_hdr;
enum {
    PROTO_HDR_NEVER_INDEX = 1u << 0, /* unique per response (x-request-id): HPACK never-indexed */
    PROTO_HDR_VARIES = 1u << 1,      /* changes from call to call (rate-limit values): only the
                                        first of its name on a connection enters the peer's HPACK
                                        table, the later ones are sent without indexing */
};
enum { PROTO_RESET_INTERNAL = 1, PROTO_RESET_OVERLOAD = 2 };

/* How the transport handles a request's body, as the protocol decided on its headers. */
typedef enum proto_body_mode {
    PROTO_BODY_DROP,     /* the request was answered on its headers: the body is dropped unread */
    PROTO_BODY_WHOLE,    /* collect it (up to MAX_REQUEST_BYTES), then proto_handle */
    PROTO_BODY_STREAM,   /* proto_body for every chunk as it arrives, then proto_body_end */
    PROTO_BODY_BUFFERED, /* the transport keeps it in s->body (charged, up to s->body_max) and
                            calls proto_body_more after every chunk and proto_body_end at the end;
                            the protocol takes bytes with ops->body_consume */
} proto_body_mode;

typedef struct proto_stream_ops {
    /* Starts the response. hdrs (copied) must not include Content-Length or Transfer-Encoding:
     * body_len >= 0 sends Content-Length (HTTP/1.1) / content-length (HTTP/2); -1 streams the
     * body (chunked on HTTP/1.1, DATA frames on HTTP/2). Returns 0, PINS_ECANCELLED (peer gone),
     * PINS_ENOMEM. */
    int (*start)(proto_stream *s, int status, const rpc_header *hdrs, size_t nhdrs,
                 int64_t body_len);
    /* Appends body bytes (copied). Returns 0, PINS_ECANCELLED, PINS_ERESOURCE_EXHAUSTED (more than
     * 4 MiB waiting for a slow reader: the caller should end the response), PINS_ENOMEM. */
    int (*write)(proto_stream *s, const void *data, size_t len);
    /* Ends the response (a chunked body gets its last chunk). No call after this one. */
    void (*end)(proto_stream *s);
    /* Optional: NULL where responses have no trailers (HTTP/1.1). Ends a streamed response
     * (body_len -1) with trailers (copied) instead of end(): on HTTP/2 a HEADERS frame with
     * END_STREAM after the DATA. application/grpc+json is served only on streams that
     * have it. Returns 0, PINS_ECANCELLED (peer gone), PINS_ENOMEM; either way the response
     * has ended: no call after this one. */
    int (*end_trailers)(proto_stream *s, const rpc_header *trailers, size_t ntrailers);

    /* The zero-copy response path of native gRPC (protocols/grpc.c). Optional: NULL on HTTP/1.1,
     * which never carries native gRPC. Header names and values (proto_hdr) and a borrowed body
     * are static or live in the call's arena, which outlives the stream's frames, so the
     * transport copies none of them. */
    /* The whole response at once: :status status, hdrs, then body_len bytes of body (NULL: none)
     * and trailers (ntrailers may be 0). Without body and trailers the HEADERS frame ends the
     * stream (gRPC's Trailers-Only). Returns 0, PINS_ECANCELLED (peer gone), PINS_ENOMEM,
     * PINS_EINTERNAL (the session refused the frame). */
    int (*respond_borrowed)(proto_stream *s, int status, const proto_hdr *hdrs, size_t nhdrs,
                            const void *body, size_t body_len, const proto_hdr *trailers,
                            size_t ntrailers);
    /* Starts a streamed response (:status status and hdrs now); the body follows through
     * write_reserve/write_commit, the end through trailers_borrowed. Returns as respond_borrowed.
     */
    int (*open_borrowed)(proto_stream *s, int status, const proto_hdr *hdrs, size_t nhdrs);
    /* Room for len more body bytes of a streamed response, written in place (*pp) and then
     * committed with write_commit(s, len), no other op in between. Returns 0, PINS_ECANCELLED,
     * PINS_ERESOURCE_EXHAUSTED (the reader is behind: the call's pending_max, 4 MiB, or the
     * connection's budgets), PINS_ENOMEM. */
    int (*write_reserve)(proto_stream *s, size_t len, void **pp);
    int (*write_commit)(proto_stream *s, size_t len);
    /* Ends a streamed response with trailers (borrowed). Returns as respond_borrowed. */
    int (*trailers_borrowed)(proto_stream *s, const proto_hdr *trailers, size_t ntrailers);
    /* Ends the stream at once: what waits for the reader is dropped and the stream reset
     * (PROTO_RESET_INTERNAL: INTERNAL_ERROR; PROTO_RESET_OVERLOAD: ENHANCE_YOUR_CALM, which gRPC
     * clients report as RESOURCE_EXHAUSTED). */
    void (*reset)(proto_stream *s, int why);

    /* The request body in PROTO_BODY_BUFFERED mode (HTTP/2; NULL on HTTP/1.1). */
    /* The protocol consumed the first n bytes of s->body: they go, the rest moves up. */
    void (*body_consume)(proto_stream *s, size_t n);
    /* The protocol needs no more of the body: the buffer is freed and its charge given back. */
    void (*body_release)(proto_stream *s);
    /* Charges what the call's arena grew by since the last charge (decoded messages) to the
     * connection's buffer budgets. Returns 0 or PINS_ERESOURCE_EXHAUSTED. */
    int (*charge_arena)(proto_stream *s);
} proto_stream_ops;

struct proto_stream {
    const proto_stream_ops *ops; /* set by the transport */
    rpc_call *call;              /* the exchange's call (method NULL until a protocol sets it) */
    rpc_worker *worker;
    const char *method;       /* "GET", ... */
    const char *path;         /* origin form, with the query string */
    const char *content_type; /* the request's, or NULL */
    const uint8_t *body;
    size_t body_len;
    size_t body_max; /* PROTO_BODY_BUFFERED: the most the transport buffers (set by the protocol) */
    bool http2;
    bool answered;    /* the protocol answered before the request ended: drop what still comes */
    bool grpc;        /* native gRPC (protocols/grpc.c owns proto_data) */
    bool head;        /* HEAD request: the transport sends no body bytes */
    bool dispatched;  /* set by the protocol when it hands the call to the dispatcher */
    bool started;     /* set by the transport once start() succeeded */
    bool ended;       /* set by the transport once end() ran */
    void *proto_data; /* the protocol's per-exchange state */
};

/* The one entry of every HTTP/2 request (the selector, as h2o's process_request): once its
 * headers are in (s->method, s->path, s->content_type and the call's headers set), the protocols
 * decide what the request is (native gRPC, Connect, gRPC-Web, REST, a probe...), refuse it on its
 * headers when they can (credentials under RBAC_ENFORCE=true, an unknown gRPC method, a malformed
 * grpc-timeout), and tell the transport how to handle its body. */
proto_body_mode proto_request_headers(proto_stream *s);
/* PROTO_BODY_BUFFERED: more bytes are in s->body. */
void proto_body_more(proto_stream *s);

/* Handles one complete request. Headers are in s->call->headers (lower-case names); the body
 * (s->body) is borrowed for this call only: decode or copy what you keep. */
void proto_handle(proto_stream *s);

/* Streaming requests (HTTP/2 only). When the request headers are complete, the HTTP/2
 * transport asks proto_begin(); true means the protocol takes the body incrementally
 * (Connect streaming and gRPC-Web requests, so that bidirectional streams work): the transport
 * then calls proto_body() for every DATA chunk (borrowed for the call) and proto_body_end()
 * at END_STREAM, and never proto_handle(). false: the transport collects the body and calls
 * proto_handle(). The HTTP/1.1 transport never calls these (its requests are half-duplex). */
bool proto_begin(proto_stream *s);
/* Once a request's headers are in (s->method, s->path and the call's headers set), before its
 * body is read: under RBAC_ENFORCE=true, a request for a guarded method (a REST route or a method
 * path) whose credentials or role the headers alone refuse is answered now, in its protocol's
 * shape (REST 403, Connect's error, gRPC-Web trailers), audited without a tenant (the body that
 * names it is never read). Returns true when the request goes on; false when it was answered:
 * the transport then drops its body. */
bool proto_headers_or_reply(proto_stream *s);
void proto_body(proto_stream *s, const uint8_t *data, size_t len);
void proto_body_end(proto_stream *s);

/* Refuses a request the transport will not hand over (a body over MAX_REQUEST_BYTES:
 * PINS_ETOO_LARGE; no room in the buffer budget: PINS_ERESOURCE_EXHAUSTED) with err and message
 * in the shape of the request's protocol: a REST error body, Connect's {"code","message"} (or
 * its end-stream message), a gRPC-Web trailer frame. Headers are in s->call as for
 * proto_handle; the body is not looked at. The response has ended when this returns. */
void proto_reject(proto_stream *s, int err, const char *message);

/* Answers a plain response in one go (start, write, end). body is copied. Returns 0 or the
 * first error of the ops. */
int proto_respond(proto_stream *s, int status, const char *content_type, const char *body,
                  size_t body_len, const rpc_header *extra, size_t nextra);

/* Registers the protocol layer's metric families (http_requests_total,
 * http_request_duration_seconds, pins_ready) so that they show from the first scrape. Once per
 * process, before the workers start; calling it again does nothing. */
void proto_metrics_init(void);

#endif
