/* protocols/protocols.h: every request that is not native gRPC: REST/JSON routes, Connect,
 * gRPC-Web, CORS preflight, /openapi.json and the probes, over HTTP/1.1 (transport/h1.c) and HTTP/2
 * (transport/conn.c).
 *
 * A transport turns one HTTP request into a proto_stream: method, path (with its query string),
 * headers, and the complete request body (bounded by MAX_REQUEST_BYTES; the transport answers 413
 * itself past that). It then calls proto_handle(). The bridge answers through the stream's ops:
 * start (status and headers), write (body bytes, any number of times), end. It may answer at once
 * or later (store callbacks, server streams such as SSE).
 *
 * The exchange's memory. Each stream comes with an rpc_call (rpc/rpc_int.h) created by the
 * transport with method NULL: its arena holds the headers and everything of the exchange, and the
 * bridge reuses that call for RPC routes (it sets method, ops and transport, decodes the request
 * into the arena, and dispatches it). From then on the usual two-owner rule applies: the transport
 * drops its reference when the HTTP stream closes (rpc__call_detach when s->dispatched, else
 * rpc__call_abandon), the handler when it finishes the call.
 *
 * Peer gone. When the peer resets or closes before end, the transport calls its close path as
 * above; a dispatched call is then cancelled and its reply dropped. For answers the bridge makes
 * without a call (probes), the bridge holds an extra reference (rpc__call_ref) while it waits.
 *
 * Threads: one worker; nothing is shared.
 */
#ifndef PINS_PROTOCOLS_PROTOCOLS_H
#define PINS_PROTOCOLS_PROTOCOLS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "rpc/rpc_int.h"

typedef struct proto_stream proto_stream;

typedef struct proto_stream_ops {
    /* Starts the response. hdrs (copied) must not include Content-Length or Transfer-Encoding:
     * body_len >= 0 sends Content-Length (HTTP/1.1) / content-length (HTTP/2); -1 streams the
     * body (chunked on HTTP/1.1, DATA frames on HTTP/2). Returns 0, PINS_ECANCELLED (peer gone),
     * PINS_ENOMEM. */
    int (*start)(proto_stream *s, int status, const rpc__header *hdrs, size_t nhdrs,
                 int64_t body_len);
    /* Appends body bytes (copied). Returns 0, PINS_ECANCELLED, PINS_ERESOURCE_EXHAUSTED (more than
     * 4 MiB waiting for a slow reader: the caller should end the response), PINS_ENOMEM. */
    int (*write)(proto_stream *s, const void *data, size_t len);
    /* Ends the response (a chunked body gets its last chunk). No call after this one. */
    void (*end)(proto_stream *s);
    /* Optional: NULL where responses have no trailers (HTTP/1.1). Ends a streamed response
     * (body_len -1) with trailers (copied) instead of end(): on HTTP/2 a HEADERS frame with
     * END_STREAM after the DATA. The bridge serves application/grpc+json only on streams that
     * have it. Returns 0, PINS_ECANCELLED (peer gone), PINS_ENOMEM; either way the response
     * has ended: no call after this one. */
    int (*end_trailers)(proto_stream *s, const rpc__header *trailers, size_t ntrailers);
} proto_stream_ops;

struct proto_stream {
    const proto_stream_ops *ops; /* set by the transport */
    rpc_call *call;              /* the exchange's call (method NULL until the bridge sets it) */
    rpc_worker *worker;
    const char *method; /* "GET", ... */
    const char *path;   /* origin form, with the query string */
    const uint8_t *body;
    size_t body_len;
    bool http2;
    bool head;        /* HEAD request: the transport sends no body bytes */
    bool dispatched;  /* set by the bridge when it hands the call to the dispatcher */
    bool started;     /* set by the transport once start() succeeded */
    bool ended;       /* set by the transport once end() ran */
    void *proto_data; /* the bridge's per-exchange state */
};

/* Handles one complete request. Headers are in s->call->headers (lower-case names); the body
 * (s->body) is borrowed for this call only: decode or copy what you keep. */
void proto_handle(proto_stream *s);

/* Streaming requests (HTTP/2 only). When the request headers are complete, the HTTP/2
 * transport asks proto_begin(); true means the bridge takes the body incrementally
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

/* Refuses a request the transport will not hand to the bridge (a body over MAX_REQUEST_BYTES:
 * PINS_ETOO_LARGE; no room in the buffer budget: PINS_ERESOURCE_EXHAUSTED) with err and message
 * in the shape of the request's protocol: a REST error body, Connect's {"code","message"} (or
 * its end-stream message), a gRPC-Web trailer frame. Headers are in s->call as for
 * proto_handle; the body is not looked at. The response has ended when this returns. */
void proto_reject(proto_stream *s, int err, const char *message);

/* Answers a plain response in one go (start, write, end). body is copied. Returns 0 or the
 * first error of the ops. */
int proto_respond(proto_stream *s, int status, const char *content_type, const char *body,
                  size_t body_len, const rpc__header *extra, size_t nextra);

#endif
