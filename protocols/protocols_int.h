/* protocols/protocols_int.h: what the files of protocols/ share (protocols.c, grpc.c, rest.c,
 * connect.c, grpcweb.c, cors.c). Not for the transports: they see protocols/protocols.h only.
 *
 * One exchange per proto_stream (s->proto_data), allocated in the call's arena, so it lives
 * exactly as long as the request's memory. Every response REST, Connect and gRPC-Web make goes
 * through proto__start / proto__write / proto__end, which add the CORS headers and count the
 * http_requests_total / http_request_duration_seconds metrics, so no answer escapes them.
 */
#ifndef PINS_PROTOCOLS_PROTOCOLS_INT_H
#define PINS_PROTOCOLS_PROTOCOLS_INT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "protocols/grpc.h"
#include "protocols/protocols.h"
#include "common/limits.h"
#include "protocols/json.h"

/* The protocol an exchange speaks, decided from the path, the method and the content type. */
typedef enum proto__kind {
    PROTO__PLAIN,          /* probes, /openapi.json, preflight, routing errors */
    PROTO__REST,           /* a route of the REST table (JSON, or SSE for a server stream) */
    PROTO__CONNECT,        /* Connect unary: application/json or application/proto */
    PROTO__CONNECT_STREAM, /* Connect streaming: application/connect+proto|json envelopes */
    PROTO__GRPC_WEB,       /* gRPC-Web: application/grpc-web[+proto|+json] frames, or
                               application/grpc-web-text[+proto]: the same frames in base64 */
    PROTO__GRPC_JSON,      /* gRPC with JSON messages: application/grpc+json, HTTP/2 trailers
                               (streams whose ops have end_trailers) */
} proto__kind;

/* The rpc_protocol (rpc/core.h) a call of kind k is counted under (RPC_PROTOCOL_NONE for
 * PROTO__PLAIN). */
rpc_protocol proto__call_protocol(proto__kind k);

/* At most this many {name} placeholders in one route pattern. */
#define PROTO__MAX_PARAMS 2

/* One row of the REST route table (API.md section 3). Rows are static. */
typedef struct proto__route {
    const char *method;       /* "GET", "POST", "DELETE" */
    const char *pattern;      /* "/api/v1/memory/pins/{key}": a {name} is one non-empty segment that
                                 binds to the request field of the same name */
    const char *rpc;          /* method path of the RPC, or NULL for /openapi.json */
    const char *const *query; /* NULL-terminated query parameters; each binds to the request
                                 field of the same name (proto_json_set_field) */
    bool body;                /* the JSON body is decoded into the request (required) */
    int status;               /* HTTP status on success */
    const char *unwrap;       /* answer only this field of the response ("pin"), or NULL */
    bool sse;                 /* a server stream answered as text/event-stream */
} proto__route;

/* A path parameter as it appears in the path (still percent-encoded). */
typedef struct proto__param {
    const char *name; /* static, from the pattern's placeholder */
    size_t name_len;
    const char *value;
    size_t value_len;
} proto__param;

typedef struct proto__match {
    const proto__route *route; /* the full match */
    proto__param params[PROTO__MAX_PARAMS];
    size_t nparams;
    char allow[64]; /* on PINS_EMETHOD_NOT_ALLOWED: "GET, DELETE" */
} proto__match;

/* The per-request state of REST, Connect and gRPC-Web (native gRPC keeps its own, grpc.c). */
typedef struct proto__exchange {
    proto_stream *s;
    rpc_call *call;
    proto__kind proto;
    const char *route_label;  /* http_requests_total{route}: a template, never a raw path */
    const char *method_label; /* a known HTTP method or "other" */
    const char *cors_origin;  /* the allowed Origin to echo, or NULL */
    int64_t t0_ns;
    bool responded; /* start() was called */
    bool done;      /* the response ended: nothing more is written */
    /* REST */
    const proto__route *route;
    /* Connect and gRPC-Web */
    bool json;      /* messages as proto3 JSON instead of binary protobuf */
    bool text;      /* grpc-web-text: both bodies are base64 */
    uint8_t b64[4]; /* grpc-web-text: a base64 quantum not complete yet */
    unsigned nb64;
    const char *resp_content_type; /* response content type */
    uint8_t *in;                   /* framed request bytes not yet consumed (arena) */
    size_t in_len, in_cap;
    unsigned nmessages;
} proto__exchange;

/* ---- protocols.c: responses, metrics--------------------------------------------------------- */

/* The exchange of s (created on first use in the call's arena), or NULL when out of memory. */
proto__exchange *proto__exchange_of(proto_stream *s);
/* Starts the response: status, hdrs (copied), body_len as for proto_stream_ops.start; adds the
 * CORS headers and counts the response. Returns 0 or the error of the transport. */
int proto__start(proto__exchange *ex, int status, const rpc_header *hdrs, size_t nhdrs,
                 int64_t body_len);
/* Appends body bytes. Returns 0 or the error of the transport (PINS_ECANCELLED, ...). */
int proto__write(proto__exchange *ex, const void *data, size_t len);
/* Ends the response once. The exchange may be freed by the transport inside this call unless
 * the caller holds a reference on the call. */
void proto__end(proto__exchange *ex);
/* Ends the response once with trailers (copied), through the stream's end_trailers op (the
 * caller checked it exists). As proto__end for the exchange's lifetime. */
void proto__end_trailers(proto__exchange *ex, const rpc_header *trailers, size_t n);
/* start + write + end with a content type and extra headers (copied). Returns 0 or an error. */
int proto__respond(proto__exchange *ex, int status, const char *content_type, const char *body,
                   size_t len, const rpc_header *extra, size_t nextra);

/* A growable header list in an arena. */
typedef struct proto__hdrs {
    rpc_header *v;
    size_t n, cap;
} proto__hdrs;
/* Appends name: value (both borrowed: they must outlive the list). Returns 0 or PINS_ENOMEM. */
int proto__hdrs_add(pins_arena *a, proto__hdrs *h, const char *name, const char *value);
/* Appends the call's response metadata: initial metadata as is, trailing metadata too when
 * trailer_prefix is NULL, or as "<trailer_prefix><name>" (Connect unary: "trailer-").
 * Returns 0 or PINS_ENOMEM. */
int proto__hdrs_add_metadata(pins_arena *a, proto__hdrs *h, const rpc_call *call,
                             const char *trailer_prefix);

/* Nesting accepted in a JSON request: a 64-deep pin value plus the request's own levels. */
#define PROTO__JSON_MAX_DEPTH PINS_REQUEST_JSON_DEPTH /* common/limits.h: 100 */
/* A decoded JSON request may take at most 1/PROTO__DECODE_SHARE of the call's arena limit; the
 * rest is the handler's, whose reply the protocol unpacks once more to write it as JSON (a
 * protobuf request gets half: rpc_call_decode in rpc/decode.c). */
#define PROTO__DECODE_SHARE 4

/* Decodes a JSON request message of type desc from json[0..len) into the call's arena
 * (proto_json_decode with PROTO__JSON_MAX_DEPTH). A message whose decoded form needs more than
 * the decode share of the arena, or that the arena's limit stops, is too large. json is borrowed.
 * Returns 0 and *pmsg, PINS_EMALFORMED (*perr says why), PINS_ETOO_LARGE, PINS_ENOMEM (malloc
 * failed below the limit). */
int proto__json_decode_request(rpc_call *call, const ProtobufCMessageDescriptor *desc,
                               const void *json, size_t len, ProtobufCMessage **pmsg,
                               proto_json_error *perr);

/* A JSON string literal (quotes included) for s in the arena, written by common/json_str.h's
 * pins_json_str_put (invalid UTF-8 bytes become \ufffd), or NULL when out of memory. */
char *proto__json_quote(pins_arena *a, const char *s);
/* Percent-decodes src[0..len) into a new NUL-terminated arena string; plus_space turns '+' into
 * ' ' (query strings). *pout_len gets the length (the result may hold NUL bytes). Returns 0,
 * PINS_EMALFORMED (a '%' not followed by two hex digits), PINS_ENOMEM. */
int proto__url_decode(pins_arena *a, const char *src, size_t len, bool plus_space, char **pout,
                      size_t *pout_len);

/* ---- rest.c: the route table, REST requests and the error mapping ---------------------------- */

/* The route table; *pn gets the number of rows. */
const proto__route *proto__routes(size_t *pn);
/* Matches method and path (without the query string) against the table; the first full match
 * in table order wins. Returns 0 (m->route and m->params set), PINS_EMETHOD_NOT_ALLOWED (the
 * path exists for other methods only: m->allow lists them, m->route is the first such row) or
 * PINS_ENOT_FOUND. */
int proto__route_match(const char *method, const char *path, size_t path_len, proto__match *m);
/* Serves a matched REST route: binds the request, dispatches the call, answers through the REST
 * ops. The exchange answers every error itself. */
void proto__rest_serve(proto__exchange *ex, const proto__match *m, const char *query,
                       size_t query_len);

/* The REST error answer for err and message on call (API.md section 5): the ONE place that maps
 * an error to an HTTP status, a JSON body and extra headers. The call gives the field at fault
 * (call->field_error; its 422 location comes from the route row of call->origin), the RBAC
 * refusal (call->deny, else the method row), the rate limiter's numbers (call->rate) and the
 * response metadata other layers added (see protocols/README.md, "Error mapping"). body and
 * headers live in the call's arena. Returns 0 or PINS_ENOMEM. */
typedef struct proto__error_answer {
    int status;
    const char *body;
    proto__hdrs headers; /* extra headers (Retry-After), plus the call's metadata */
} proto__error_answer;
int proto__rest_error(rpc_call *call, int err, const char *message, proto__error_answer *out);
/* Answers err as a REST error (through proto__rest_error) and ends the exchange. */
void proto__rest_fail(proto__exchange *ex, int err, const char *message);

/* ---- connect.c and grpcweb.c: Connect and gRPC-Web ------------------------------------------- */

/* Classifies a POST to a method path by its content type: returns the protocol and sets *pjson
 * and *ptext (grpc-web-text), or PROTO__PLAIN when the content type is none of Connect's,
 * gRPC-Web's, or application/grpc+json on a stream that can send trailers. */
proto__kind proto__rpc_proto(const proto_stream *s, bool *pjson, bool *ptext);
/* Prepares an exchange for method m (ops, deadline, content types). Returns 0, or an error that
 * has already been answered (the exchange is done). */
int proto__rpc_begin(proto__exchange *ex, const rpc_method *m);
/* Answers a request to a method path that cannot be served (unknown method, a method other than
 * POST, a content type of no RPC protocol) with err and message (may be NULL) in the shape of the
 * protocol its content type names: a gRPC-Web trailer frame or a Connect end-stream message
 * (HTTP 200) for a POST of theirs, else Connect's error JSON {"code","message"} with HTTP status
 * (0: Connect's status for err's code) and, when allow is not NULL, an Allow header. */
void proto__rpc_reject(proto__exchange *ex, int err, int status, const char *message,
                       const char *allow);
/* Connect unary: the whole body. */
void proto__connect_unary(proto__exchange *ex, const uint8_t *body, size_t len);
/* Framed protocols (Connect streaming, gRPC-Web): body bytes as they arrive, then the end. */
void proto__framed_body(proto__exchange *ex, const uint8_t *data, size_t len);
void proto__framed_end(proto__exchange *ex);
/* gRPC-Web: the trailer frame (flag 0x80) payload for err / message and the call's trailing
 * metadata, in the call's arena. Returns NULL when out of memory. */
char *proto__grpcweb_trailers(rpc_call *call, int err, const char *message, size_t *plen);
/* gRPC-Web: the response content type for a request content type. */
const char *proto__grpcweb_content_type(bool json, bool text);
/* grpc-web-text: decodes one quantum of 4 base64 characters (standard alphabet; the last one or
 * two may be '=' padding) into out. Returns the number of bytes (1 to 3), or -1 when q is not
 * base64. */
int proto__base64_quantum(const uint8_t q[4], uint8_t *out);
/* grpc-web-text: the padded base64 of hdr[0..5) followed by p[0..len), in a new malloc'd buffer
 * (*pout, the caller frees it; *plen characters, NUL-terminated). Returns 0 or PINS_ENOMEM. */
int proto__base64_envelope(const uint8_t hdr[5], const void *p, size_t len, char **pout,
                           size_t *plen);

/* Native gRPC over an HTTP/2 exchange (proto_request_headers calls it for a gRPC content type):
 * checks the method, grpc-timeout and credentials on the headers (refusals are answered
 * Trailers-Only) and returns PROTO_BODY_BUFFERED, or PROTO_BODY_DROP when it answered. */
proto_body_mode proto__grpc_begin(proto_stream *s);
/* More body bytes (frames are checked as they come; client-streaming messages delivered). */
void proto__grpc_more(proto_stream *s);
/* END_STREAM: decodes a unary request and dispatches it, or half-closes a client stream. */
void proto__grpc_end(proto_stream *s);
/* Refuses the request with err in gRPC's shape (Trailers-Only); message NULL: the transport's
 * reason for err (the body over the limit, the buffer budgets). */
void proto__grpc_reject(proto_stream *s, int err, const char *message);

/* ---- probes.c: /health, /ready, /metrics ----------------------------------------
 */

/* A plain HTTP answer (for /health, /ready, /metrics and unknown routes) produced for any HTTP
 * version. Body and content type live in the given arena (or are static). */
typedef struct proto__http_answer {
    int status;
    const char *content_type;
    const char *body;
    size_t body_len;
    const char *allow; /* for 405 */
} proto__http_answer;
/* Registers pins_ready (once per process; proto_metrics_init). */
void proto__probes_metrics_init(void);
/* Answers GET/HEAD of the probe paths; returns false when path is not a probe path. Completes
 * asynchronously for /ready and /metrics (both ask the store for a round trip first):
 * done(answer, arg) is called exactly once (possibly before return). */
typedef void (*proto__http_done_cb)(const proto__http_answer *answer, void *arg);
bool proto__probe_handle(rpc_worker *w, pins_arena *a, const char *method, const char *path,
                         proto__http_done_cb done, void *arg);

/* ---- cors.c ------------------------------------------------------------------------------------
 */

/* The value to send as Access-Control-Allow-Origin for the request's Origin, or NULL when the
 * request has no Origin or CORS_ALLOWED_ORIGINS does not allow it. */
const char *proto__cors_origin(const pins_config *cfg, const rpc_call *call);
/* True when the request is a CORS preflight (OPTIONS with Origin and
 * Access-Control-Request-Method). */
bool proto__cors_is_preflight(const char *method, const rpc_call *call);
/* Answers a preflight: 204 with the allow headers for an allowed origin, 403 otherwise. */
void proto__cors_preflight(proto__exchange *ex);
/* Adds the headers of an actual response to an allowed origin. Returns 0 or PINS_ENOMEM. */
int proto__cors_headers(proto__exchange *ex, proto__hdrs *h);

/* ---- the embedded OpenAPI document (generated from protocols/openapi.json at build time)
 * ---------
 */

extern const unsigned char proto__openapi_json[];
extern const size_t proto__openapi_json_len;

#endif
