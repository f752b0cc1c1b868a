/* protocols/protocols.c: the entry point for every non-gRPC request. Order: CORS preflight, probes,
 * the REST route table (and /openapi.json), Connect and gRPC-Web on method paths, else 404.
 * Also the response helpers every answer goes through (CORS headers, http_* metrics). */
#include "protocols/protocols_int.h"

#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "common/json_str.h"
#include "common/percent.h"
#include "observability/metrics.h"
#include "common/timeutil.h"

/* ---- metrics ----------------------------------------------------------------------------------
 */

static metrics_family *http_requests;
static metrics_family *http_duration;
static pthread_once_t metrics_once = PTHREAD_ONCE_INIT;

static void metrics_init(void)
{
    static const char *const rms[] = {"route", "method", "status"};
    static const char *const rm[] = {"route", "method"};
    http_requests = metrics_counter_new("http_requests_total",
                                        "HTTP requests answered by the REST, Connect and "
                                        "gRPC-Web mappings and the probes, by route template "
                                        "and status.",
                                        rms, 3);
    http_duration = metrics_histogram_new(
        "http_request_duration_seconds",
        "Time from the request headers to the response headers, by route template.", rm, 2,
        metrics_latency_buckets, metrics_latency_nbuckets);
}

void proto_metrics_init(void)
{
    pthread_once(&metrics_once, metrics_init);
    proto__probes_metrics_init();
}

static const char *method_label(const char *m)
{
    static const char *const known[] = {"GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"};
    for (size_t i = 0; m != NULL && i < sizeof(known) / sizeof(known[0]); i++) {
        if (strcmp(m, known[i]) == 0)
            return known[i];
    }
    return "other";
}

static void count_response(proto__exchange *ex, int status)
{
    char st[12];
    snprintf(st, sizeof(st), "%d", status);
    const char *v[] = {ex->route_label, ex->method_label, st};
    double secs = (double)(pins_time_mono_ns() - ex->t0_ns) / 1e9;
    if (http_requests != NULL)
        metrics_counter_inc(http_requests, v);
    if (http_duration != NULL)
        metrics_histogram_observe(http_duration, v, secs);
}

/* ---- helpers ----------------------------------------------------------------------------------
 */

proto__exchange *proto__exchange_of(proto_stream *s)
{
    if (s->proto_data != NULL)
        return s->proto_data;
    pthread_once(&metrics_once, metrics_init);
    rpc_call *call = s->call;
    proto__exchange *ex = pins_arena_calloc(call->arena, 1, sizeof(*ex));
    if (ex == NULL)
        return NULL;
    ex->s = s;
    ex->call = call;
    ex->proto = PROTO__PLAIN;
    ex->route_label = "unmatched";
    ex->method_label = method_label(s->method);
    ex->t0_ns = call->start_ns != 0 ? call->start_ns : pins_time_mono_ns();
    ex->cors_origin = proto__cors_origin(call->worker->server->cfg, call);
    s->proto_data = ex;
    return ex;
}

int proto__hdrs_add(pins_arena *a, proto__hdrs *h, const char *name, const char *value)
{
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 8;
        rpc_header *v = pins_arena_alloc(a, cap * sizeof(*v));
        if (v == NULL)
            return PINS_ENOMEM;
        if (h->n > 0)
            memcpy(v, h->v, h->n * sizeof(*v));
        h->v = v;
        h->cap = cap;
    }
    h->v[h->n++] = (rpc_header){.name = name, .value = value};
    return 0;
}

int proto__hdrs_add_metadata(pins_arena *a, proto__hdrs *h, const rpc_call *call,
                             const char *trailer_prefix)
{
    for (const rpc_metadata *m = rpc_call_metadata(call); m != NULL; m = m->next) {
        const char *name = m->name;
        if (m->trailer && trailer_prefix != NULL) {
            name = pins_arena_printf(a, "%s%s", trailer_prefix, m->name);
            if (name == NULL)
                return PINS_ENOMEM;
        }
        int rv = proto__hdrs_add(a, h, name, m->value);
        if (rv != 0)
            return rv;
    }
    return 0;
}

int proto__json_decode_request(rpc_call *call, const ProtobufCMessageDescriptor *desc,
                               const void *json, size_t len, ProtobufCMessage **pmsg,
                               proto_json_error *perr)
{
    size_t budget = pins_arena_limit(call->arena) / PROTO__DECODE_SHARE;
    return proto_json_decode_bounded(call->arena, desc, json, len, PROTO__JSON_MAX_DEPTH, budget,
                                     pmsg, perr);
}

char *proto__json_quote(pins_arena *a, const char *s)
{
    pins_buf b;
    pins_buf_init(&b, pins_arena_limit(a)); /* never more than the call may hold */
    char *out = NULL;
    if (pins_json_str_put(&b, s, PINS_JSON_STR_NUL) == 0)
        out = pins_arena_strndup(a, pins_buf_ptr(&b), pins_buf_len(&b));
    pins_buf_free(&b);
    return out;
}

int proto__url_decode(pins_arena *a, const char *src, size_t len, bool plus_space, char **pout,
                      size_t *pout_len)
{
    return pins_percent_decode_arena(a, src, len, plus_space ? PINS_PERCENT_PLUS_SPACE : 0, pout,
                                     pout_len);
}

/* ---- responses --------------------------------------------------------------------------------
 */

int proto__start(proto__exchange *ex, int status, const rpc_header *hdrs, size_t nhdrs,
                 int64_t body_len)
{
    if (ex->done || ex->responded)
        return PINS_ECANCELLED;
    pins_arena *a = ex->call->arena;
    proto__hdrs h = {0};
    for (size_t i = 0; i < nhdrs; i++) {
        if (proto__hdrs_add(a, &h, hdrs[i].name, hdrs[i].value) != 0)
            return PINS_ENOMEM;
    }
    if (proto__cors_headers(ex, &h) != 0)
        return PINS_ENOMEM;
    ex->responded = true;
    count_response(ex, status);
    return ex->s->ops->start(ex->s, status, h.v, h.n, body_len);
}

int proto__write(proto__exchange *ex, const void *data, size_t len)
{
    if (ex->done)
        return PINS_ECANCELLED;
    return ex->s->ops->write(ex->s, data, len);
}

void proto__end(proto__exchange *ex)
{
    if (ex->done)
        return;
    ex->done = true;
    ex->s->ops->end(ex->s);
}

void proto__end_trailers(proto__exchange *ex, const rpc_header *trailers, size_t n)
{
    if (ex->done)
        return;
    ex->done = true;
    ex->s->ops->end_trailers(ex->s, trailers, n);
}

int proto__respond(proto__exchange *ex, int status, const char *content_type, const char *body,
                   size_t len, const rpc_header *extra, size_t nextra)
{
    pins_arena *a = ex->call->arena;
    proto__hdrs h = {0};
    int rv = 0;
    if (content_type != NULL)
        rv = proto__hdrs_add(a, &h, "content-type", content_type);
    for (size_t i = 0; rv == 0 && i < nextra; i++)
        rv = proto__hdrs_add(a, &h, extra[i].name, extra[i].value);
    if (rv == 0)
        rv = proto__start(ex, status, h.v, h.n, (int64_t)len);
    if (rv == 0 && len > 0)
        rv = proto__write(ex, body, len);
    proto__end(ex);
    return rv;
}

int proto_respond(proto_stream *s, int status, const char *content_type, const char *body,
                  size_t body_len, const rpc_header *extra, size_t nextra)
{
    rpc_header hdrs[16];
    size_t n = 0;
    if (content_type != NULL)
        hdrs[n++] = (rpc_header){.name = "content-type", .value = content_type};
    for (size_t i = 0; i < nextra && n < 16; i++)
        hdrs[n++] = extra[i];
    int rv = s->ops->start(s, status, hdrs, n, (int64_t)body_len);
    if (rv == 0 && body_len > 0)
        rv = s->ops->write(s, body, body_len);
    s->ops->end(s);
    return rv;
}

static void respond_json(proto__exchange *ex, int status, const char *body, const char *allow)
{
    rpc_header extra = {.name = "allow", .value = allow};
    proto__respond(ex, status, "application/json", body, strlen(body), &extra,
                   allow != NULL ? 1 : 0);
}

/* ---- probes and /openapi.json -----------------------------------------------------------------
 */

static void on_probe(const proto__http_answer *ans, void *arg)
{
    proto__exchange *ex = arg;
    rpc_call *call = ex->call;
    rpc_header allow = {.name = "allow", .value = ans->allow};
    proto__respond(ex, ans->status, ans->content_type, ans->body, ans->body_len, &allow,
                   ans->allow != NULL ? 1 : 0);
    rpc_call_unref(call); /* taken before proto__probe_handle; may free ex */
}

/* The route label of a probe path (the only paths proto__probe_handle answers), or NULL. */
static const char *probe_label(const char *path, size_t len)
{
    static const char *const probes[] = {"/health", "/ready", "/health/ready", "/metrics"};
    for (size_t i = 0; i < sizeof(probes) / sizeof(probes[0]); i++) {
        if (strlen(probes[i]) == len && memcmp(path, probes[i], len) == 0)
            return probes[i];
    }
    return NULL;
}

static void serve_openapi(proto__exchange *ex)
{
    proto__respond(ex, 200, "application/json", (const char *)proto__openapi_json,
                   proto__openapi_json_len, NULL, 0);
}

/* ---- Connect and gRPC-Web on method paths -----------------------------------------------------
 */

/* True when path[0..len) has the shape of a method path, "/<pkg>.<Service>/<Method>". */
static bool is_method_path(const char *path, size_t len)
{
    if (len < 4 || path[0] != '/')
        return false;
    const char *slash = memchr(path + 1, '/', len - 1);
    if (slash == NULL || slash == path + 1 || slash == path + len - 1)
        return false;
    size_t svc = (size_t)(slash - path - 1);
    return memchr(path + 1, '.', svc) != NULL && memchr(slash + 1, '/', len - svc - 2) == NULL;
}

/* Answers a request to a method path that is not a framed stream taken by proto_begin. */
static void serve_method_path(proto__exchange *ex, const rpc_method *m)
{
    proto_stream *s = ex->s;
    ex->route_label = m->path;
    if (strcmp(s->method, "POST") != 0) {
        proto__rpc_reject(ex, PINS_EMETHOD_NOT_ALLOWED, 405, "RPC methods take POST", "POST");
        return;
    }
    bool json = false, text = false;
    const char *ct = rpc_call_header(ex->call, "content-type");
    proto__kind proto = proto__rpc_proto(s, &json, &text);
    if (proto == PROTO__PLAIN) {
        proto__rpc_reject(ex, PINS_EUNSUPPORTED_MEDIA_TYPE, 415,
                          pins_arena_printf(ex->call->arena,
                                            "unsupported content type %s: a method takes "
                                            "application/grpc, application/grpc-web[-text], "
                                            "application/json or application/proto",
                                            ct != NULL ? ct : "(none)"),
                          NULL);
        return;
    }
    ex->proto = proto;
    ex->json = json;
    ex->text = text;
    if (proto__rpc_begin(ex, m) != 0)
        return;
    if (proto == PROTO__CONNECT) {
        proto__connect_unary(ex, s->body, s->body_len);
        return;
    }
    /* HTTP/1.1 (and HTTP/2 requests not taken by proto_begin): the whole body at once, through
     * the same envelope reader as the incremental path. */
    proto__framed_body(ex, s->body, s->body_len);
    proto__framed_end(ex);
}

/* ---- entry points -----------------------------------------------------------------------------
 */

/* The stream's exchange; NULL when it has answered already, or could not be made (answered 503
 * here). */
static proto__exchange *live_exchange(proto_stream *s)
{
    proto__exchange *ex = proto__exchange_of(s);
    if (ex == NULL) {
        proto_respond(s, 503, "application/json", "{\"detail\":\"out of memory\"}", 26, NULL, 0);
        return NULL;
    }
    return ex->done ? NULL : ex;
}

void proto_handle(proto_stream *s)
{
    rpc_call *call = s->call;
    rpc_call_ref(call); /* nothing below may free the exchange under our feet */
    if (call->request_id == NULL &&
        rpc_call_set_request_id(call, rpc_call_header(call, "x-request-id")) != 0) {
        proto_respond(s, 500, "application/json", "{\"detail\":\"out of memory\"}", 26, NULL, 0);
        goto out;
    }
    proto__exchange *ex = live_exchange(s);
    if (ex == NULL)
        goto out;
    size_t plen = strcspn(s->path, "?");
    const char *query = s->path[plen] == '?' ? s->path + plen + 1 : "";

    if (proto__cors_is_preflight(s->method, call)) {
        ex->route_label = "preflight";
        proto__cors_preflight(ex);
        goto out;
    }
    const char *probe = probe_label(s->path, plen);
    if (probe != NULL) {
        ex->route_label = probe;
        rpc_call_ref(call); /* held until the probe answered (on_probe) */
        if (proto__probe_handle(s->worker, call->arena, s->method, s->path, on_probe, ex))
            goto out;
        rpc_call_unref(call);
    }
    proto__match m;
    int rv = proto__route_match(s->method, s->path, plen, &m);
    if (rv == 0) {
        ex->route_label = m.route->pattern;
        if (m.route->rpc == NULL)
            serve_openapi(ex);
        else
            proto__rest_serve(ex, &m, query, strlen(query));
        goto out;
    }
    if (rv == PINS_EMETHOD_NOT_ALLOWED) {
        ex->route_label = m.route->pattern; /* a route of that path, for the label */
        respond_json(ex, 405,
                     "{\"detail\":\"Method Not Allowed\",\"code\":12,"
                     "\"message\":\"method not allowed\"}",
                     m.allow);
        goto out;
    }
    const rpc_method *rm = rpc_method_find(s->path, plen);
    if (rm != NULL) {
        serve_method_path(ex, rm);
        goto out;
    }
    bool json = false, text = false;
    if (is_method_path(s->path, plen) &&
        (proto__rpc_proto(s, &json, &text) != PROTO__PLAIN ||
         rpc_call_header(call, "connect-protocol-version") != NULL)) {
        /* A Connect or gRPC-Web client calling a method this server does not have: its
         * protocol's UNIMPLEMENTED, not the REST 404. */
        proto__rpc_reject(ex, PINS_EUNIMPLEMENTED, 404,
                          pins_arena_printf(call->arena, "unknown method %.*s", (int)plen, s->path),
                          NULL);
        goto out;
    }
    respond_json(ex, 404, "{\"detail\":\"Not Found\",\"code\":5,\"message\":\"no such route\"}",
                 NULL);
out:
    rpc_call_unref(call);
}

void proto_reject(proto_stream *s, int err, const char *message)
{
    if (s->grpc) {
        proto__grpc_reject(s, err, message);
        return;
    }
    rpc_call *call = s->call;
    rpc_call_ref(call);
    proto__exchange *ex = live_exchange(s);
    if (ex == NULL)
        goto out;
    size_t plen = strcspn(s->path, "?");
    const rpc_method *m = rpc_method_find(s->path, plen);
    bool json = false, text = false;
    if (m != NULL || (is_method_path(s->path, plen) &&
                      (proto__rpc_proto(s, &json, &text) != PROTO__PLAIN ||
                       rpc_call_header(call, "connect-protocol-version") != NULL))) {
        ex->route_label = m != NULL ? m->path : "unmatched";
        proto__rpc_reject(ex, err, 0, message, NULL);
        goto out;
    }
    proto__match mt;
    if (proto__route_match(s->method, s->path, plen, &mt) != PINS_ENOT_FOUND)
        ex->route_label = mt.route->pattern;
    proto__rest_fail(ex, err, message);
out:
    rpc_call_unref(call);
}

rpc_protocol proto__call_protocol(proto__kind k)
{
    switch (k) {
    case PROTO__REST:
        return RPC_PROTOCOL_REST;
    case PROTO__CONNECT:
    case PROTO__CONNECT_STREAM:
        return RPC_PROTOCOL_CONNECT;
    case PROTO__GRPC_WEB:
        return RPC_PROTOCOL_GRPC_WEB;
    case PROTO__GRPC_JSON:
        return RPC_PROTOCOL_GRPC;
    case PROTO__PLAIN:
        break;
    }
    return RPC_PROTOCOL_NONE;
}

bool proto_headers_or_reply(proto_stream *s)
{
    rpc_call *call = s->call;
    if (!call->worker->server->cfg->rbac_enforce || s->method == NULL || s->path == NULL)
        return true;
    size_t plen = strcspn(s->path, "?");
    const rpc_method *m = NULL;
    proto__match mt;
    if (proto__route_match(s->method, s->path, plen, &mt) == 0 && mt.route->rpc != NULL) {
        m = rpc_method_find(mt.route->rpc, strlen(mt.route->rpc));
        /* the audit row names the REST route */
        call->origin = (rpc_origin){.route = mt.route->pattern, .http_method = mt.route->method};
    } else if (strcmp(s->method, "POST") == 0) {
        m = rpc_method_find(s->path, plen);
    }
    if (m == NULL)
        return true; /* probes, /openapi.json, CORS, 404 and 405: answered with the request */
    if (call->request_id == NULL &&
        rpc_call_set_request_id(call, rpc_call_header(call, "x-request-id")) != 0)
        return true; /* out of memory: the request goes on and fails there */
    const rpc_method *was = call->method;
    call->method = m;
    int err = 0;
    const char *msg = NULL;
    if (rpc_dispatch_early(call, &err, &msg) != 0 || err == 0) {
        call->method = was;
        return true;
    }
    proto_reject(s, err, msg);
    return false;
}

bool proto_begin(proto_stream *s)
{
    if (s->method == NULL || strcmp(s->method, "POST") != 0)
        return false;
    const rpc_method *m = rpc_method_find(s->path, strlen(s->path));
    if (m == NULL)
        return false;
    bool json = false, text = false;
    proto__kind proto = proto__rpc_proto(s, &json, &text);
    if (proto != PROTO__CONNECT_STREAM && proto != PROTO__GRPC_WEB && proto != PROTO__GRPC_JSON)
        return false;
    rpc_call *call = s->call;
    rpc_call_ref(call);
    proto__exchange *ex = proto__exchange_of(s);
    if (ex != NULL) {
        ex->route_label = m->path;
        ex->proto = proto;
        ex->json = json;
        ex->text = text;
        proto__rpc_begin(ex, m); /* answers its own errors; the body is then ignored */
    }
    rpc_call_unref(call);
    return ex != NULL;
}

void proto_body(proto_stream *s, const uint8_t *data, size_t len)
{
    proto__exchange *ex = s->proto_data;
    if (ex == NULL || ex->done)
        return;
    rpc_call *call = s->call;
    rpc_call_ref(call);
    proto__framed_body(ex, data, len);
    rpc_call_unref(call);
}

void proto_body_end(proto_stream *s)
{
    if (s->grpc) {
        proto__grpc_end(s);
        return;
    }
    proto__exchange *ex = s->proto_data;
    if (ex == NULL || ex->done)
        return;
    rpc_call *call = s->call;
    rpc_call_ref(call);
    proto__framed_end(ex);
    rpc_call_unref(call);
}

proto_body_mode proto_request_headers(proto_stream *s)
{
    if (s->content_type != NULL &&
        proto_grpc_content_type(s->content_type, strlen(s->content_type))) {
        s->grpc = true;
        return proto__grpc_begin(s);
    }
    /* Connect and gRPC-Web share the method paths; they answer 415 for any other content type
     * there. Credentials are decided now, before a body byte is buffered. */
    if (!proto_headers_or_reply(s)) {
        s->answered = true;
        return PROTO_BODY_DROP;
    }
    return proto_begin(s) ? PROTO_BODY_STREAM : PROTO_BODY_WHOLE;
}

void proto_body_more(proto_stream *s)
{
    if (s->grpc)
        proto__grpc_more(s);
}
