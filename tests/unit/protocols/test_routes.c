/* tests/unit/protocols/test_routes.c: the REST route table and its OpenAPI document
 * (protocols/rest.c, protocols/openapi.json), route matching, the error mapping, SSE framing,
 * gRPC-Web trailers and CORS, driven through proto_handle() with a capturing proto_stream (no
 * sockets). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocols/protocols_int.h"
#include "common/error.h"
#include "fake_call.h"
#include "scrape.h"
#include "memorypins/v1/memory_pins.pb-c.h"

/* ---- a capturing proto_stream -----------------------------------------------------------------
 */

typedef struct capture {
    proto_stream s; /* first: the ops get &s */
    int status;
    int starts;
    int64_t declared_len;
    char headers[4096]; /* "name: value\n" lines */
    char body[1 << 17];
    size_t body_len;
    bool ended;
    char trailers[1024]; /* "name: value\n" lines given to end_trailers */
} capture;

static int cap_start(proto_stream *s, int status, const rpc_header *hdrs, size_t n,
                     int64_t body_len)
{
    capture *c = (capture *)s;
    c->status = status;
    c->starts++;
    c->declared_len = body_len;
    size_t off = strlen(c->headers);
    for (size_t i = 0; i < n; i++) {
        int k = snprintf(c->headers + off, sizeof(c->headers) - off, "%s: %s\n", hdrs[i].name,
                         hdrs[i].value);
        assert_true(k > 0 && (size_t)k < sizeof(c->headers) - off);
        off += (size_t)k;
    }
    s->started = true;
    return 0;
}

static int cap_write(proto_stream *s, const void *data, size_t len)
{
    capture *c = (capture *)s;
    assert_false(c->ended);
    assert_true(c->body_len + len < sizeof(c->body));
    memcpy(c->body + c->body_len, data, len);
    c->body_len += len;
    c->body[c->body_len] = '\0';
    return 0;
}

static void cap_end(proto_stream *s)
{
    capture *c = (capture *)s;
    assert_false(c->ended);
    c->ended = true;
    s->ended = true;
}

static const proto_stream_ops cap_ops = {.start = cap_start, .write = cap_write, .end = cap_end};

static int cap_end_trailers(proto_stream *s, const rpc_header *t, size_t n)
{
    capture *c = (capture *)s;
    size_t off = 0;
    for (size_t i = 0; i < n; i++) {
        int k = snprintf(c->trailers + off, sizeof(c->trailers) - off, "%s: %s\n", t[i].name,
                         t[i].value);
        assert_true(k > 0 && (size_t)k < sizeof(c->trailers) - off);
        off += (size_t)k;
    }
    cap_end(s);
    return 0;
}

/* A stream that can end with trailers, as the HTTP/2 transport's. */
static const proto_stream_ops cap_trailer_ops = {
    .start = cap_start, .write = cap_write, .end = cap_end, .end_trailers = cap_end_trailers};

/* A new exchange for method and path with headers {name, value, ..., NULL}. */
static capture *cap_new(fake_env *env, const char *method, const char *path, const char *body,
                        const char *const *headers)
{
    capture *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    rpc_worker *w = fake_env_worker(env);
    rpc_call *call = rpc_call_new(w, NULL, NULL, NULL, 64u << 20);
    assert_non_null(call);
    size_t nh = 0;
    while (headers != NULL && headers[2 * nh] != NULL)
        nh++;
    call->headers = pins_arena_calloc(call->arena, nh + 1, sizeof(rpc_header));
    assert_non_null(call->headers);
    for (size_t i = 0; i < nh; i++)
        call->headers[i] = (rpc_header){.name = headers[2 * i], .value = headers[2 * i + 1]};
    call->nheaders = nh;
    c->s = (proto_stream){.ops = &cap_ops,
                          .call = call,
                          .worker = w,
                          .method = method,
                          .path = path,
                          .body = (const uint8_t *)body,
                          .body_len = body != NULL ? strlen(body) : 0};
    return c;
}

/* The transport lets go of the exchange, as a stream that closed. */
static void cap_free(capture *c)
{
    if (c->s.dispatched)
        rpc_call_detach(c->s.call);
    else
        rpc_call_abandon(c->s.call);
    free(c);
}

static json_t *body_json(const capture *c)
{
    json_error_t e;
    json_t *j = json_loadb(c->body, c->body_len, 0, &e);
    if (j == NULL)
        fail_msg("body is not JSON (%s): %s", e.text, c->body);
    return j;
}

/* The first entry of a 422 body's detail list (borrowed from j). */
static json_t *first_detail(json_t *j)
{
    return json_array_get(json_object_get(j, "detail"), 0);
}

/* Asserts that the detail entry d places its error at loc [where, field]. */
static void assert_loc(json_t *d, const char *where, const char *field)
{
    assert_string_equal(json_string_value(json_array_get(json_object_get(d, "loc"), 0)), where);
    assert_string_equal(json_string_value(json_array_get(json_object_get(d, "loc"), 1)), field);
}

static bool has_header(const capture *c, const char *line)
{
    return strstr(c->headers, line) != NULL;
}

static int setup(void **state)
{
    *state = fake_env_new();
    return 0;
}

static int teardown(void **state)
{
    fake_env_free(*state);
    return 0;
}

/* ---- the table and the OpenAPI document --------------------------------------------------------
 */

static json_t *openapi(void)
{
    json_error_t e;
    json_t *doc = json_loadb((const char *)proto__openapi_json, proto__openapi_json_len, 0, &e);
    if (doc == NULL)
        fail_msg("embedded openapi.json does not parse: %s (line %d)", e.text, e.line);
    return doc;
}

static void lower(const char *in, char *out, size_t n)
{
    size_t i = 0;
    for (; in[i] != '\0' && i + 1 < n; i++)
        out[i] = (char)(in[i] >= 'A' && in[i] <= 'Z' ? in[i] - 'A' + 'a' : in[i]);
    out[i] = '\0';
}

static void test_openapi_documents_every_route(void **state)
{
    json_t *doc = openapi();
    assert_string_equal(json_string_value(json_object_get(doc, "openapi")), "3.1.0");
    json_t *paths = json_object_get(doc, "paths");
    size_t n;
    const proto__route *r = proto__routes(&n);
    assert_true(n >= 14);
    for (size_t i = 0; i < n; i++) {
        char m[16];
        lower(r[i].method, m, sizeof(m));
        json_t *op = json_object_get(json_object_get(paths, r[i].pattern), m);
        if (op == NULL)
            fail_msg("openapi.json lacks %s %s", r[i].method, r[i].pattern);
        char st[8];
        snprintf(st, sizeof(st), "%d", r[i].status);
        if (json_object_get(json_object_get(op, "responses"), st) == NULL)
            fail_msg("openapi.json: %s %s lacks response %s", r[i].method, r[i].pattern, st);
    }
    json_decref(doc);
}

static void test_openapi_paths_are_routes_or_probes(void **state)
{
    static const char *const probes[] = {"/health", "/ready", "/health/ready", "/metrics"};
    json_t *doc = openapi();
    json_t *paths = json_object_get(doc, "paths");
    const char *path;
    json_t *item;
    size_t n;
    const proto__route *r = proto__routes(&n);
    json_object_foreach(paths, path, item)
    {
        const char *verb;
        json_t *op;
        json_object_foreach(item, verb, op)
        {
            bool found = false;
            for (size_t i = 0; i < n && !found; i++) {
                char m[16];
                lower(r[i].method, m, sizeof(m));
                found = strcmp(r[i].pattern, path) == 0 && strcmp(m, verb) == 0;
            }
            for (size_t i = 0; i < 4 && !found; i++)
                found = strcmp(probes[i], path) == 0 && strcmp(verb, "get") == 0;
            if (!found)
                fail_msg("openapi.json documents %s %s, which no route serves", verb, path);
        }
    }
    json_decref(doc);
}

static void test_routes_bind_fields_of_their_messages(void **state)
{
    size_t n;
    const proto__route *r = proto__routes(&n);
    for (size_t i = 0; i < n; i++) {
        if (r[i].rpc == NULL)
            continue;
        const rpc_method *m = rpc_method_find(r[i].rpc, strlen(r[i].rpc));
        if (m == NULL)
            fail_msg("route %s names unknown RPC %s", r[i].pattern, r[i].rpc);
        for (const char *const *q = r[i].query; *q != NULL; q++) {
            if (protobuf_c_message_descriptor_get_field_by_name(m->input, *q) == NULL)
                fail_msg("%s: query %s is no field of %s", r[i].pattern, *q, m->input->name);
        }
        const char *p = strchr(r[i].pattern, '{');
        if (p != NULL) {
            char name[32];
            size_t len = strcspn(p + 1, "}");
            assert_true(len < sizeof(name));
            memcpy(name, p + 1, len);
            name[len] = '\0';
            assert_non_null(protobuf_c_message_descriptor_get_field_by_name(m->input, name));
        }
        if (r[i].unwrap != NULL)
            assert_non_null(
                protobuf_c_message_descriptor_get_field_by_name(m->output, r[i].unwrap));
        assert_int_equal(r[i].sse, (m->flags & RPC_METHOD_SERVER_STREAM) != 0);
    }
}

/* ---- matching -----------------------------------------------------------------------------------
 */

static int match(const char *method, const char *path, proto__match *m)
{
    return proto__route_match(method, path, strlen(path), m);
}

static void test_match_binds_the_key_segment(void **state)
{
    proto__match m;
    assert_int_equal(match("GET", "/api/v1/memory/pins/a%20b", &m), 0);
    assert_string_equal(m.route->rpc, "/memorypins.v1.MemoryPins/GetPin");
    assert_int_equal(m.nparams, 1);
    assert_int_equal(m.params[0].name_len, 3);
    assert_memory_equal(m.params[0].name, "key", 3);
    assert_int_equal(m.params[0].value_len, 5);
    assert_memory_equal(m.params[0].value, "a%20b", 5);
    assert_int_equal(match("DELETE", "/api/v1/memory/pins/k", &m), 0);
    assert_string_equal(m.route->rpc, "/memorypins.v1.MemoryPins/DeletePin");
    assert_int_equal(match("GET", "/api/v1/memory/pins", &m), 0);
    assert_string_equal(m.route->rpc, "/memorypins.v1.MemoryPins/ListPins");
    assert_int_equal(m.nparams, 0);
}

static void test_match_prefers_the_literal_cleanup_route(void **state)
{
    proto__match m;
    assert_int_equal(match("POST", "/api/v1/memory/pins/cleanup", &m), 0);
    assert_string_equal(m.route->rpc, "/memorypins.v1.MemoryPins/CleanupExpiredPins");
    /* GET on the same path is a pin named "cleanup", as in FastAPI's ordered routing. */
    assert_int_equal(match("GET", "/api/v1/memory/pins/cleanup", &m), 0);
    assert_string_equal(m.route->rpc, "/memorypins.v1.MemoryPins/GetPin");
}

static void test_match_unknown_paths_are_not_found(void **state)
{
    proto__match m;
    assert_int_equal(match("GET", "/api/v1/memory/pinsx", &m), PINS_ENOT_FOUND);
    assert_int_equal(match("GET", "/api/v1/memory/pins/a/b", &m), PINS_ENOT_FOUND);
    assert_int_equal(match("GET", "/api/v1/memory/pins/", &m), PINS_ENOT_FOUND);
    assert_int_equal(match("GET", "/", &m), PINS_ENOT_FOUND);
    assert_int_equal(match("GET", "", &m), PINS_ENOT_FOUND);
}

static void test_match_wrong_verb_lists_allow(void **state)
{
    proto__match m;
    assert_int_equal(match("PUT", "/api/v1/memory/pins/x", &m), PINS_EMETHOD_NOT_ALLOWED);
    assert_string_equal(m.allow, "GET, DELETE");
    assert_int_equal(match("DELETE", "/api/v1/memory/pins", &m), PINS_EMETHOD_NOT_ALLOWED);
    assert_string_equal(m.allow, "POST, GET");
    assert_int_equal(match("GET", "/api/v1/rbac/audit/cleanup", &m), PINS_EMETHOD_NOT_ALLOWED);
    assert_string_equal(m.allow, "POST");
    assert_string_equal(m.route->pattern, "/api/v1/rbac/audit/cleanup");
}

static void test_url_decode_percent_plus_and_invalid(void **state)
{
    pins_arena *a = pins_arena_new(0);
    char *out;
    size_t n;
    assert_int_equal(proto__url_decode(a, "a%2Fb+c%c3%A9", 13, true, &out, &n), 0);
    assert_string_equal(out, "a/b c\xc3\xa9");
    assert_int_equal(n, 7);
    assert_int_equal(proto__url_decode(a, "a+b", 3, false, &out, &n), 0);
    assert_string_equal(out, "a+b");
    assert_int_equal(proto__url_decode(a, "a%00b", 5, false, &out, &n), 0);
    assert_int_equal(n, 3);
    out = NULL;
    assert_int_equal(proto__url_decode(a, "a%2", 3, true, &out, &n), PINS_EMALFORMED);
    assert_int_equal(proto__url_decode(a, "a%zz", 4, true, &out, &n), PINS_EMALFORMED);
    assert_null(out);
    pins_arena_free(a);
}

/* ---- the error mapping --------------------------------------------------------------------------
 */

static rpc_call *call_for(fake_env *env, const char *path)
{
    const rpc_method *m = rpc_method_find(path, strlen(path));
    assert_non_null(m);
    rpc_call *call = rpc_call_new(fake_env_worker(env), m, NULL, NULL, 1u << 20);
    assert_non_null(call);
    return call;
}

static json_t *error_json(rpc_call *call, int err, const char *msg, int *pstatus)
{
    proto__error_answer ans;
    assert_int_equal(proto__rest_error(call, err, msg, &ans), 0);
    *pstatus = ans.status;
    json_error_t e;
    json_t *j = json_loads(ans.body, 0, &e);
    if (j == NULL)
        fail_msg("error body is not JSON: %s", ans.body);
    return j;
}

/* The row of the REST route method pattern. */
static const proto__route *route_row(const char *method, const char *pattern)
{
    size_t n;
    const proto__route *r = proto__routes(&n);
    for (size_t i = 0; i < n; i++) {
        if (strcmp(r[i].method, method) == 0 && strcmp(r[i].pattern, pattern) == 0)
            return &r[i];
    }
    fail_msg("no route %s %s", method, pattern);
    return NULL;
}

/* A call as the REST transport makes it for the route method pattern. */
static rpc_call *rest_call_for(fake_env *env, const char *method, const char *pattern)
{
    const proto__route *r = route_row(method, pattern);
    rpc_call *call = call_for(env, r->rpc);
    call->origin = (rpc_origin){.route = r->pattern, .http_method = r->method};
    return call;
}

/* The 422 body of call failed on field (type NULL: the default) must be exactly
 * {"detail":[{"loc":[loc0,field],"msg":msg,"type":type}],"code":3,"message":msg}. */
static void assert_422_at(rpc_call *call, const char *field, const char *type, const char *loc0)
{
    call->field_error = (rpc_field_error){.field = field, .type = type};
    proto__error_answer ans;
    assert_int_equal(proto__rest_error(call, PINS_EINVALID_ARGUMENT, "m", &ans), 0);
    assert_int_equal(ans.status, 422);
    char want[256];
    if (field != NULL)
        snprintf(want, sizeof(want),
                 "{\"detail\":[{\"loc\":[\"%s\",\"%s\"],\"msg\":\"m\",\"type\":\"%s\"}],"
                 "\"code\":3,\"message\":\"m\"}",
                 loc0, field, type != NULL ? type : "value_error");
    else
        snprintf(want, sizeof(want),
                 "{\"detail\":[{\"loc\":[\"%s\"],\"msg\":\"m\",\"type\":\"%s\"}],"
                 "\"code\":3,\"message\":\"m\"}",
                 loc0, type != NULL ? type : "value_error");
    assert_string_equal(ans.body, want);
}

static void test_error_422_location_comes_from_the_route(void **state)
{
    /* A path placeholder, a query parameter, else the body. */
    rpc_call *call = rest_call_for(*state, "GET", "/api/v1/memory/pins/{key}");
    assert_422_at(call, "key", NULL, "path");
    assert_422_at(call, "tenant_id", NULL, "query");
    rpc_call_abandon(call);
    call = rest_call_for(*state, "DELETE", "/api/v1/memory/pins/{key}");
    assert_422_at(call, "key", NULL, "path");
    assert_422_at(call, "expected_version", "type_error.integer", "query");
    rpc_call_abandon(call);
    call = rest_call_for(*state, "POST", "/api/v1/memory/pins");
    assert_422_at(call, "tenant_id", NULL, "body");
    assert_422_at(call, "key", NULL, "body");
    assert_422_at(call, "value", "type_error.dict", "body");
    assert_422_at(call, NULL, "value_error.missing", "body");
    rpc_call_abandon(call);
    call = rest_call_for(*state, "GET", "/api/v1/memory/pins");
    assert_422_at(call, "limit", NULL, "query");
    assert_422_at(call, "page_token", NULL, "query");
    rpc_call_abandon(call);
    call = rest_call_for(*state, "POST", "/api/v1/rbac/audit/cleanup");
    assert_422_at(call, "retention_days", NULL, "query");
    rpc_call_abandon(call);
    /* A call no route made: the body. */
    call = call_for(*state, "/memorypins.v1.MemoryPins/GetPin");
    assert_422_at(call, "key", NULL, "body");
    rpc_call_abandon(call);
}

static void test_error_422_has_the_handlers_detail(void **state)
{
    rpc_call *call = rest_call_for(*state, "POST", "/api/v1/memory/pins");
    int status;
    call->field_error = (rpc_field_error){.field = "key"};
    json_t *j = error_json(call, PINS_EINVALID_ARGUMENT, "key: must not contain \"..\"", &status);
    assert_int_equal(status, 422);
    json_t *d = first_detail(j);
    assert_loc(d, "body", "key");
    assert_string_equal(json_string_value(json_object_get(d, "msg")),
                        "key: must not contain \"..\"");
    assert_string_equal(json_string_value(json_object_get(d, "type")), "value_error");
    assert_int_equal(json_integer_value(json_object_get(j, "code")), 3);
    json_decref(j);
    rpc_call_abandon(call);
}

static void test_error_shapes_of_404_409_503_504_500(void **state)
{
    rpc_call *call = call_for(*state, "/memorypins.v1.MemoryPins/GetPin");
    static const struct {
        int err, status, code;
    } cases[] = {
        {PINS_ENOT_FOUND, 404, 5}, {PINS_EALREADY_EXISTS, 409, 6},    {PINS_EABORTED, 409, 10},
        {PINS_EDISABLED, 503, 14}, {PINS_EDEADLINE_EXCEEDED, 504, 4}, {PINS_EINTERNAL, 500, 13},
        {PINS_EMALFORMED, 400, 3}, {PINS_ETOO_LARGE, 413, 8},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int status;
        json_t *j = error_json(call, cases[i].err, "Pin not found: k\n\"x\"", &status);
        assert_int_equal(status, cases[i].status);
        assert_string_equal(json_string_value(json_object_get(j, "detail")),
                            "Pin not found: k\n\"x\"");
        assert_int_equal(json_integer_value(json_object_get(j, "code")), cases[i].code);
        assert_string_equal(json_string_value(json_object_get(j, "message")),
                            "Pin not found: k\n\"x\"");
        json_decref(j);
    }
    rpc_call_abandon(call);
}

static void test_error_403_reads_the_rbac_hook(void **state)
{
    rpc_call *call = call_for(*state, "/memorypins.v1.MemoryPins/UpsertPin");
    int status;
    json_t *j = error_json(call, PINS_EUNAUTHENTICATED, "no credentials", &status);
    assert_int_equal(status, 403);
    assert_string_equal(json_string_value(json_object_get(j, "error")), "forbidden");
    assert_string_equal(json_string_value(json_object_get(j, "reason")), "no-credentials");
    assert_string_equal(json_string_value(json_object_get(j, "resource")), "memory_pin");
    assert_string_equal(json_string_value(json_object_get(j, "action")), "write");
    assert_int_equal(json_integer_value(json_object_get(j, "code")), 16);
    json_decref(j);
    /* Metadata is not read back: the reason is the typed verdict's, else the code's. */
    assert_int_equal(rpc_call_add_metadata(call, "x-rbac-reason", "tenant-not-allowed", false), 0);
    j = error_json(call, PINS_EPERMISSION_DENIED, "denied", &status);
    assert_string_equal(json_string_value(json_object_get(j, "reason")),
                        "insufficient-permissions");
    assert_int_equal(json_integer_value(json_object_get(j, "code")), 7);
    json_decref(j);
    call->deny =
        (rpc_deny){.reason = "tenant-not-allowed", .resource = "memory_pin", .action = "write"};
    j = error_json(call, PINS_EPERMISSION_DENIED, "denied", &status);
    assert_string_equal(json_string_value(json_object_get(j, "reason")), "tenant-not-allowed");
    assert_int_equal(json_integer_value(json_object_get(j, "code")), 7);
    json_decref(j);
    /* What the dispatcher's RBAC check records wins. */
    call->deny = (rpc_deny){.reason = "invalid-token", .resource = "rbac", .action = "reload"};
    j = error_json(call, PINS_EUNAUTHENTICATED, "denied", &status);
    assert_string_equal(json_string_value(json_object_get(j, "reason")), "invalid-token");
    assert_string_equal(json_string_value(json_object_get(j, "resource")), "rbac");
    assert_string_equal(json_string_value(json_object_get(j, "action")), "reload");
    json_decref(j);
    rpc_call_abandon(call);
}

static void test_error_429_and_breaker_retry_after(void **state)
{
    fake_env_config(*state)->breaker_open_seconds = 30;
    fake_env_config(*state)->rate_limit_rpm = 100;
    rpc_call *call = call_for(*state, "/memorypins.v1.MemoryPins/GetPin");
    int status;
    /* Not decided by the limiter: RATE_LIMIT_RPM and 60 s. */
    json_t *j = error_json(call, PINS_ERATE_LIMITED, "rate limit exceeded", &status);
    assert_int_equal(status, 429);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "detail"), "limit")),
                     100);
    assert_int_equal(
        json_integer_value(json_object_get(json_object_get(j, "detail"), "retry_after")), 60);
    json_decref(j);
    /* The limiter's typed numbers, as the dispatcher keeps them; metadata is not parsed back. */
    assert_int_equal(rpc_call_add_metadata(call, "retry-after", "99", false), 0);
    call->rate = (rpc_rate){.set = true, .limit = 120, .retry_after_s = 7};
    j = error_json(call, PINS_ERATE_LIMITED, "rate limit exceeded", &status);
    assert_int_equal(status, 429);
    json_t *d = json_object_get(j, "detail");
    assert_string_equal(json_string_value(json_object_get(d, "error")), "rate_limit_exceeded");
    assert_int_equal(json_integer_value(json_object_get(d, "limit")), 120);
    assert_int_equal(json_integer_value(json_object_get(d, "retry_after")), 7);
    json_decref(j);
    rpc_call_abandon(call);

    call = call_for(*state, "/memorypins.v1.MemoryPins/GetPin");
    proto__error_answer ans;
    assert_int_equal(proto__rest_error(call, PINS_EBREAKER_OPEN, NULL, &ans), 0);
    assert_int_equal(ans.status, 503);
    assert_int_equal(ans.headers.n, 1);
    assert_string_equal(ans.headers.v[0].name, "retry-after");
    assert_string_equal(ans.headers.v[0].value, "30");
    rpc_call_abandon(call);
}

/* ---- proto_handle end to end
 * -------------------------------------------------------------------- */

static void test_error_unimplemented_on_a_route_is_501(void **state)
{
    rpc_call *call = call_for(*state, "/memorypins.v1.Admin/GetStatus");
    int status;
    json_t *j = error_json(call, PINS_EUNIMPLEMENTED, "not served", &status);
    assert_int_equal(status, 501);
    assert_int_equal(json_integer_value(json_object_get(j, "code")), 12);
    json_decref(j);
    rpc_call_abandon(call);
}

static void test_handle_unknown_path_is_404_json(void **state)
{
    capture *c = cap_new(*state, "GET", "/nope?x=1", NULL, NULL);
    proto_handle(&c->s);
    assert_int_equal(c->status, 404);
    assert_true(c->ended);
    json_t *j = body_json(c);
    assert_int_equal(json_integer_value(json_object_get(j, "code")), 5);
    json_decref(j);
    cap_free(c);
}

static void test_handle_wrong_verb_is_405_with_allow(void **state)
{
    capture *c = cap_new(*state, "PATCH", "/api/v1/memory/pins/k", NULL, NULL);
    proto_handle(&c->s);
    assert_int_equal(c->status, 405);
    assert_true(has_header(c, "allow: GET, DELETE\n"));
    cap_free(c);
}

static void test_handle_serves_openapi(void **state)
{
    capture *c = cap_new(*state, "GET", "/openapi.json", NULL, NULL);
    proto_handle(&c->s);
    assert_int_equal(c->status, 200);
    assert_true(has_header(c, "content-type: application/json\n"));
    assert_int_equal(c->body_len, proto__openapi_json_len);
    cap_free(c);
}

static void test_handle_missing_pin_is_404_with_detail(void **state)
{
    capture *c = cap_new(*state, "GET", "/api/v1/memory/pins/no%20such?tenant_id=t", NULL, NULL);
    proto_handle(&c->s);
    fake_env_run(*state, 50);
    assert_true(c->s.dispatched);
    assert_int_equal(c->status, 404);
    json_t *j = body_json(c);
    assert_string_equal(json_string_value(json_object_get(j, "detail")), "Pin not found: no such");
    json_decref(j);
    cap_free(c);
}

/* /metrics answers the exposition with pins_ready as /ready's verdict at that moment: 1 while the
 * store answers, 0 while the server drains. */
static void test_metrics_scrape_reports_readiness_as_ready_would(void **state)
{
    proto_metrics_init();
    capture *c = cap_new(*state, "GET", "/metrics", NULL, NULL);
    proto_handle(&c->s);
    assert_int_equal(c->status, 200);
    assert_true(has_header(c, "content-type: text/plain; version=0.0.4; charset=utf-8\n"));
    assert_non_null(strstr(c->body, "\npins_ready 1\n"));
    assert_non_null(strstr(c->body, "# TYPE http_requests_total counter\n"));
    cap_free(c);
    c = cap_new(*state, "GET", "/ready", NULL, NULL);
    proto_handle(&c->s);
    assert_int_equal(c->status, 200);
    cap_free(c);

    rpc_server *srv = fake_env_worker(*state)->server;
    atomic_store(&srv->draining, 1);
    c = cap_new(*state, "GET", "/ready", NULL, NULL);
    proto_handle(&c->s);
    assert_int_equal(c->status, 503);
    cap_free(c);
    assert_true(scrape_value("pins_ready", -1) == 0);
    atomic_store(&srv->draining, 0);
    c = cap_new(*state, "GET", "/metrics", NULL, NULL);
    proto_handle(&c->s);
    assert_non_null(strstr(c->body, "\npins_ready 1\n"));
    cap_free(c);
}

/* A REST call is counted under protocol "rest" with its status code. */
static void test_handle_counts_rest_calls_under_their_protocol(void **state)
{
    const char *series = "rpc_requests_total{protocol=\"rest\",grpc_code=\"NOT_FOUND\"}";
    double before = scrape_value(series, 0);
    capture *c = cap_new(*state, "GET", "/api/v1/memory/pins/absent?tenant_id=t", NULL, NULL);
    proto_handle(&c->s);
    fake_env_run(*state, 50);
    assert_int_equal(c->status, 404);
    cap_free(c);
    assert_true(scrape_value(series, -1) == before + 1);
}

/* GETs target, which the mapping refuses before dispatch with a 422 whose first detail entry is at
 * ["query", field]; returns the JSON body (the caller json_decref's it). */
static json_t *query_refused(void **state, const char *target, const char *field)
{
    capture *c = cap_new(*state, "GET", target, NULL, NULL);
    proto_handle(&c->s);
    assert_false(c->s.dispatched);
    assert_int_equal(c->status, 422);
    json_t *j = body_json(c);
    assert_loc(first_detail(j), "query", field);
    cap_free(c);
    return j;
}

static void test_handle_query_type_error_is_422(void **state)
{
    json_t *j = query_refused(state, "/api/v1/memory/pins?limit=abc", "limit");
    assert_string_equal(json_string_value(json_object_get(first_detail(j), "type")),
                        "type_error.integer");
    json_decref(j);
}

static void test_handle_bad_percent_encoding_is_400(void **state)
{
    capture *c = cap_new(*state, "GET", "/api/v1/memory/pins/a%zz", NULL, NULL);
    proto_handle(&c->s);
    assert_int_equal(c->status, 400);
    json_t *j = body_json(c);
    assert_int_equal(json_integer_value(json_object_get(j, "code")), 3);
    json_decref(j);
    cap_free(c);
}

static void test_handle_missing_body_is_422_field_required(void **state)
{
    capture *c = cap_new(*state, "POST", "/api/v1/memory/pins", "", NULL);
    proto_handle(&c->s);
    assert_int_equal(c->status, 422);
    json_t *j = body_json(c);
    json_t *d = first_detail(j);
    assert_int_equal(json_array_size(json_object_get(d, "loc")), 1);
    assert_string_equal(json_string_value(json_object_get(d, "msg")), "field required");
    assert_string_equal(json_string_value(json_object_get(d, "type")), "value_error.missing");
    json_decref(j);
    cap_free(c);
}

static void test_handle_limit_zero_is_422_absent_is_not(void **state)
{
    json_decref(query_refused(state, "/api/v1/memory/audit?limit=0", "limit"));

    capture *c = cap_new(*state, "GET", "/api/v1/memory/pins?limit=1", NULL, NULL);
    proto_handle(&c->s);
    assert_true(c->s.dispatched);
    cap_free(c);
}

static void test_handle_value_that_is_not_an_object_is_422(void **state)
{
    static const char *const bodies[] = {"{\"key\":\"k\",\"value\":[1]}",
                                         "{\"key\":\"k\",\"value\":\"s\"}",
                                         "{\"value\":7,\"key\":\"k\"}"};
    for (size_t i = 0; i < sizeof(bodies) / sizeof(bodies[0]); i++) {
        capture *c = cap_new(*state, "POST", "/api/v1/memory/pins", bodies[i], NULL);
        proto_handle(&c->s);
        assert_false(c->s.dispatched);
        assert_int_equal(c->status, 422);
        json_t *j = body_json(c);
        json_t *d = first_detail(j);
        assert_string_equal(json_string_value(json_array_get(json_object_get(d, "loc"), 1)),
                            "value");
        assert_string_equal(json_string_value(json_object_get(d, "type")), "type_error.dict");
        json_decref(j);
        cap_free(c);
    }
    /* Malformed JSON after the value stays a 400. */
    capture *c = cap_new(*state, "POST", "/api/v1/memory/pins", "{\"value\":[1,}", NULL);
    proto_handle(&c->s);
    assert_int_equal(c->status, 400);
    cap_free(c);
}

static void test_handle_unknown_method_in_each_protocol(void **state)
{
    static const char *const json_ct[] = {"content-type", "application/json", NULL};
    capture *c = cap_new(*state, "POST", "/memorypins.v1.MemoryPins/Nope", "{}", json_ct);
    proto_handle(&c->s);
    assert_int_equal(c->status, 404);
    json_t *j = body_json(c);
    assert_string_equal(json_string_value(json_object_get(j, "code")), "unimplemented");
    assert_string_equal(json_string_value(json_object_get(j, "message")),
                        "unknown method /memorypins.v1.MemoryPins/Nope");
    json_decref(j);
    cap_free(c);

    static const char *const text_ct[] = {"content-type", "application/grpc-web-text", NULL};
    c = cap_new(*state, "POST", "/a.B/C", "AAAAAAA=", text_ct);
    proto_handle(&c->s);
    assert_int_equal(c->status, 200);
    assert_true(has_header(c, "content-type: application/grpc-web-text+proto\n"));
    uint8_t out[256];
    size_t n = 0;
    assert_int_equal(c->body_len % 4, 0);
    for (size_t i = 0; i < c->body_len; i += 4) {
        int k = proto__base64_quantum((const uint8_t *)c->body + i, out + n);
        assert_true(k > 0);
        n += (size_t)k;
    }
    assert_true(n > 5);
    assert_int_equal(out[0], 0x80);
    assert_memory_equal(out + 5, "grpc-status:12\r\n", 16);
    cap_free(c);

    /* Without an RPC content type or Connect header it stays the REST 404. */
    c = cap_new(*state, "POST", "/a.B/C", "{}", NULL);
    proto_handle(&c->s);
    assert_int_equal(c->status, 404);
    j = body_json(c);
    assert_int_equal(json_integer_value(json_object_get(j, "code")), 5);
    json_decref(j);
    cap_free(c);
}

/* application/grpc+json: gRPC framing, JSON messages, the status in trailers; only on a stream
 * that can send trailers. */
static void test_grpc_json_frames_and_trailers(void **state)
{
    static const char *const ct[] = {"content-type", "application/grpc+json", NULL};
    static const uint8_t req[] = {0, 0, 0, 0, 2, '{', '}'};
    capture *c = cap_new(*state, "POST", "/grpc.health.v1.Health/Check", NULL, ct);
    c->s.ops = &cap_trailer_ops;
    c->s.body = req;
    c->s.body_len = sizeof(req);
    proto_handle(&c->s);
    fake_env_run(*state, 50);
    assert_int_equal(c->status, 200);
    assert_int_equal(c->declared_len, -1);
    assert_true(has_header(c, "content-type: application/grpc+json\n"));
    assert_true(c->ended);
    assert_true(c->body_len > 5);
    assert_int_equal((uint8_t)c->body[0], 0);
    assert_int_equal(c->body_len, 5 + ((size_t)(uint8_t)c->body[3] << 8 | (uint8_t)c->body[4]));
    assert_memory_equal(c->body + 5, "{\"status\":\"SERVING\"}", 20);
    assert_string_equal(c->trailers, "grpc-status: 0\n");
    cap_free(c);

    static const uint8_t get[] = "\0\0\0\0\x0e{\"key\":\"nope\"}";
    c = cap_new(*state, "POST", "/memorypins.v1.MemoryPins/GetPin", NULL, ct);
    c->s.ops = &cap_trailer_ops;
    c->s.body = get;
    c->s.body_len = sizeof(get) - 1;
    proto_handle(&c->s);
    fake_env_run(*state, 50);
    assert_int_equal(c->status, 200);
    assert_int_equal(c->body_len, 0);
    assert_non_null(strstr(c->trailers, "grpc-status: 5\n"));
    assert_non_null(strstr(c->trailers, "grpc-message: Pin not found: nope\n"));
    cap_free(c);

    /* Without trailers (HTTP/1.1) gRPC cannot be answered: 415, as for application/grpc. */
    c = cap_new(*state, "POST", "/grpc.health.v1.Health/Check", NULL, ct);
    c->s.body = req;
    c->s.body_len = sizeof(req);
    proto_handle(&c->s);
    assert_int_equal(c->status, 415);
    cap_free(c);
}

/* What a transport refuses (a body over the limit) is answered in the request's protocol. */
static void test_reject_answers_in_each_protocols_shape(void **state)
{
    capture *c = cap_new(*state, "POST", "/api/v1/memory/pins", NULL, NULL);
    proto_reject(&c->s, PINS_ETOO_LARGE, "request body larger than MAX_REQUEST_BYTES");
    assert_int_equal(c->status, 413);
    assert_true(c->ended);
    json_t *j = body_json(c);
    assert_int_equal(json_integer_value(json_object_get(j, "code")), 8);
    assert_string_equal(json_string_value(json_object_get(j, "detail")),
                        "request body larger than MAX_REQUEST_BYTES");
    json_decref(j);
    cap_free(c);

    static const char *const connect[] = {"content-type", "application/proto", NULL};
    c = cap_new(*state, "POST", "/memorypins.v1.MemoryPins/UpsertPin", NULL, connect);
    proto_reject(&c->s, PINS_ETOO_LARGE, "request body larger than MAX_REQUEST_BYTES");
    assert_int_equal(c->status, 429);
    j = body_json(c);
    assert_string_equal(json_string_value(json_object_get(j, "code")), "resource_exhausted");
    assert_string_equal(json_string_value(json_object_get(j, "message")),
                        "request body larger than MAX_REQUEST_BYTES");
    json_decref(j);
    cap_free(c);

    static const char *const web[] = {"content-type", "application/grpc-web+proto", NULL};
    c = cap_new(*state, "POST", "/memorypins.v1.MemoryPins/UpsertPin", NULL, web);
    proto_reject(&c->s, PINS_ERESOURCE_EXHAUSTED, "busy");
    assert_int_equal(c->status, 200);
    assert_true(c->body_len > 5);
    assert_int_equal((uint8_t)c->body[0], 0x80);
    assert_non_null(strstr(c->body + 5, "grpc-status:8\r\ngrpc-message:busy\r\n"));
    cap_free(c);
}

static void test_base64_quantum_and_envelope(void **state)
{
    (void)state;
    uint8_t out[3];
    assert_int_equal(proto__base64_quantum((const uint8_t *)"TWFu", out), 3);
    assert_memory_equal(out, "Man", 3);
    assert_int_equal(proto__base64_quantum((const uint8_t *)"TWE=", out), 2);
    assert_memory_equal(out, "Ma", 2);
    assert_int_equal(proto__base64_quantum((const uint8_t *)"TQ==", out), 1);
    assert_int_equal(out[0], 'M');
    static const char *const bad[] = {"T===", "====", "TQ=a", "TW-u", "TW\nu", "T*Fu"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_int_equal(proto__base64_quantum((const uint8_t *)bad[i], out), -1);

    static const uint8_t hdr[5] = {0x80, 0, 0, 0, 2};
    char *b64 = NULL;
    size_t len = 0;
    assert_int_equal(proto__base64_envelope(hdr, "ok", 2, &b64, &len), 0);
    assert_string_equal(b64, "gAAAAAJvaw=="); /* base64 of 80 00 00 00 02 6f 6b */
    assert_int_equal(len, 12);
    free(b64);
    assert_int_equal(proto__base64_envelope(hdr, NULL, 0, &b64, &len), 0);
    assert_string_equal(b64, "gAAAAAI=");
    free(b64);
}

/* The REST ops of a server-streaming route frame SSE events, and an error after the stream
 * started becomes the last event. */
static void test_sse_events_and_the_error_event(void **state)
{
    fake_env *env = *state;
    capture *c = cap_new(env, "GET", "/api/v1/memory/pins/none", NULL, NULL);
    proto_handle(&c->s);
    fake_env_run(env, 50);
    assert_int_equal(c->status, 404);
    const rpc_call_ops *rest_ops = c->s.call->ops;
    cap_free(c);

    c = cap_new(env, "GET", "/api/v1/memory/watch", NULL, NULL);
    rpc_call *call = c->s.call;
    assert_int_equal(rpc_call_set_request_id(call, NULL), 0);
    proto__exchange *ex = proto__exchange_of(&c->s);
    proto__match m;
    assert_int_equal(match("GET", "/api/v1/memory/watch", &m), 0);
    ex->proto = PROTO__REST;
    ex->route = m.route;
    call->method = rpc_method_find(m.route->rpc, strlen(m.route->rpc));
    call->ops = rest_ops;
    call->transport = &c->s;

    Memorypins__V1__Pin pin = MEMORYPINS__V1__PIN__INIT;
    pin.tenant_id = "t";
    pin.key = "k";
    pin.version = 3;
    Memorypins__V1__WatchPinsResponse ev = MEMORYPINS__V1__WATCH_PINS_RESPONSE__INIT;
    ev.type = MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_PUT;
    ev.pin = &pin;
    assert_int_equal(rest_ops->send(call, &ev.base), 0);
    ev.type = MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_DELETE;
    assert_int_equal(rest_ops->send(call, &ev.base), 0);
    assert_int_equal(c->status, 200);
    assert_int_equal(c->declared_len, -1);
    assert_true(has_header(c, "content-type: text/event-stream\n"));
    assert_false(c->ended);
    rest_ops->finish(call, PINS_EUNAVAILABLE, "store went away");
    assert_true(c->ended);
    assert_int_equal(c->starts, 1);

    const char *p = c->body;
    assert_int_equal(strncmp(p, "event: put\ndata: {", 18), 0);
    assert_non_null(strstr(p, "\"key\":\"k\""));
    assert_non_null(strstr(p, "\"version\":3"));
    p = strstr(p, "\n\nevent: delete\ndata: {");
    assert_non_null(p);
    p = strstr(p + 2, "\n\nevent: error\ndata: {\"detail\":\"store went away\",\"code\":14,");
    assert_non_null(p);
    assert_string_equal(c->body + c->body_len - 2, "\n\n");
    call->transport = NULL;
    cap_free(c);
}

static void test_grpcweb_trailers_carry_status_message_and_metadata(void **state)
{
    rpc_call *call = call_for(*state, "/memorypins.v1.MemoryPins/GetPin");
    assert_int_equal(rpc_call_add_metadata(call, "x-init", "a", false), 0);
    assert_int_equal(rpc_call_add_metadata(call, "x-trail", "b", true), 0);
    size_t len;
    char *t = proto__grpcweb_trailers(call, PINS_ENOT_FOUND, "Pin not found: 50%", &len);
    assert_string_equal(t, "grpc-status:5\r\ngrpc-message:Pin not found: 50%25\r\nx-trail:b\r\n");
    assert_int_equal(len, strlen(t));
    t = proto__grpcweb_trailers(call, 0, NULL, &len);
    assert_string_equal(t, "grpc-status:0\r\nx-trail:b\r\n");
    rpc_call_abandon(call);
}

static void test_cors_preflight_allowed_and_denied(void **state)
{
    fake_env *env = *state;
    pins_config *cfg = fake_env_config(env);
    cfg->cors_allowed_origins = strdup("https://a.example, https://b.example");
    assert_non_null(cfg->cors_allowed_origins);
    static const char *const ok[] = {"origin", "https://b.example", "access-control-request-method",
                                     "POST", NULL};
    capture *c = cap_new(env, "OPTIONS", "/api/v1/memory/pins", NULL, ok);
    proto_handle(&c->s);
    assert_int_equal(c->status, 204);
    assert_true(has_header(c, "access-control-allow-origin: https://b.example\n"));
    assert_true(has_header(c, "access-control-allow-methods: GET, POST, DELETE, OPTIONS\n"));
    assert_true(has_header(c, "connect-timeout-ms"));
    assert_true(has_header(c, "access-control-max-age: "));
    assert_true(has_header(c, "vary: Origin\n"));
    cap_free(c);

    static const char *const bad[] = {"origin", "https://evil.example",
                                      "access-control-request-method", "POST", NULL};
    c = cap_new(env, "OPTIONS", "/api/v1/memory/pins", NULL, bad);
    proto_handle(&c->s);
    assert_int_equal(c->status, 403);
    assert_false(has_header(c, "access-control-allow-origin"));
    cap_free(c);

    static const char *const actual[] = {"origin", "https://a.example", NULL};
    c = cap_new(env, "GET", "/nope", NULL, actual);
    proto_handle(&c->s);
    assert_int_equal(c->status, 404);
    assert_true(has_header(c, "access-control-allow-origin: https://a.example\n"));
    assert_true(has_header(c, "access-control-expose-headers: grpc-status, grpc-message"));
    cap_free(c);
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_openapi_documents_every_route),
        T(test_openapi_paths_are_routes_or_probes),
        T(test_metrics_scrape_reports_readiness_as_ready_would),
        T(test_handle_counts_rest_calls_under_their_protocol),
        T(test_routes_bind_fields_of_their_messages),
        T(test_match_binds_the_key_segment),
        T(test_match_prefers_the_literal_cleanup_route),
        T(test_match_unknown_paths_are_not_found),
        T(test_match_wrong_verb_lists_allow),
        T(test_url_decode_percent_plus_and_invalid),
        T(test_error_422_has_the_handlers_detail),
        T(test_error_422_location_comes_from_the_route),
        T(test_error_shapes_of_404_409_503_504_500),
        T(test_error_403_reads_the_rbac_hook),
        T(test_error_429_and_breaker_retry_after),
        T(test_error_unimplemented_on_a_route_is_501),
        T(test_handle_unknown_path_is_404_json),
        T(test_handle_wrong_verb_is_405_with_allow),
        T(test_handle_serves_openapi),
        T(test_handle_missing_pin_is_404_with_detail),
        T(test_handle_query_type_error_is_422),
        T(test_handle_bad_percent_encoding_is_400),
        T(test_handle_missing_body_is_422_field_required),
        T(test_handle_limit_zero_is_422_absent_is_not),
        T(test_handle_value_that_is_not_an_object_is_422),
        T(test_handle_unknown_method_in_each_protocol),
        T(test_grpc_json_frames_and_trailers),
        T(test_reject_answers_in_each_protocols_shape),
        T(test_base64_quantum_and_envelope),
        T(test_sse_events_and_the_error_event),
        T(test_grpcweb_trailers_carry_status_message_and_metadata),
        T(test_cors_preflight_allowed_and_denied),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
