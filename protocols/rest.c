/* protocols/rest.c: the REST routes of API.md section 3 on the method table's handlers.
 *
 * A declarative table says, per route, which RPC it calls, which path segments and query
 * parameters bind to which request fields, whether a JSON body is decoded, the success status
 * and the response shape. Requests are bound with the JSON codec (protocols/json.h), answers are
 * encoded in the REST shape (snake_case, every field, int64 as numbers, RFC 3339 micros), and
 * every error goes through proto__rest_error(), the one mapping to M7's status codes and bodies.
 * A server-streaming route answers text/event-stream (SSE).
 */
#include "protocols/protocols_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocols/json.h"
#include "common/utf8.h"

#define MP "/memorypins.v1.MemoryPins/"
#define AD "/memorypins.v1.Admin/"

static const char *const q_none[] = {NULL};
static const char *const q_tenant[] = {"tenant_id", NULL};
static const char *const q_list[] = {"tenant_id",       "prefix",     "limit", "offset",
                                     "include_expired", "page_token", NULL};
static const char *const q_delete[] = {"tenant_id", "expected_version", NULL};
static const char *const q_watch[] = {"tenant_id", "prefix", "since_revision", NULL};
static const char *const q_maudit[] = {"tenant_id", "key", "operation", "limit", "offset", NULL};
static const char *const q_raudit[] = {"resource", "action", "allowed", "subject", "tenant_id",
                                       "since",    "limit",  "offset",  NULL};
static const char *const q_retention[] = {"retention_days", NULL};

/* Literal routes come before the {key} routes they overlap: the first full match wins. */
static const proto__route routes[] = {
    {"POST", "/api/v1/memory/pins", MP "UpsertPin", q_none, true, 201, "pin", false},
    {"GET", "/api/v1/memory/pins", MP "ListPins", q_list, false, 200, NULL, false},
    {"POST", "/api/v1/memory/pins/cleanup", MP "CleanupExpiredPins", q_tenant, false, 200, NULL,
     false},
    {"GET", "/api/v1/memory/pins/{key}", MP "GetPin", q_tenant, false, 200, "pin", false},
    {"DELETE", "/api/v1/memory/pins/{key}", MP "DeletePin", q_delete, false, 200, NULL, false},
    {"GET", "/api/v1/memory/watch", MP "WatchPins", q_watch, false, 200, NULL, true},
    {"GET", "/api/v1/memory/audit", AD "ListMemoryAudit", q_maudit, false, 200, NULL, false},
    {"GET", "/api/v1/rbac/info", AD "GetRbacInfo", q_none, false, 200, NULL, false},
    {"POST", "/api/v1/rbac/reload", AD "ReloadRbacPolicy", q_none, false, 200, NULL, false},
    {"GET", "/api/v1/rbac/matrix", AD "GetRbacMatrix", q_none, false, 200, NULL, false},
    {"GET", "/api/v1/rbac/audit", AD "ListRbacAudit", q_raudit, false, 200, NULL, false},
    {"POST", "/api/v1/rbac/audit/cleanup", AD "CleanupRbacAudit", q_retention, false, 200, NULL,
     false},
    {"GET", "/api/v1/admin/status", AD "GetStatus", q_none, false, 200, NULL, false},
    {"GET", "/openapi.json", NULL, q_none, false, 200, NULL, false},
};

#define NROUTES (sizeof(routes) / sizeof(routes[0]))

static const rpc_call_ops rest_ops;

/* ---- matching ---------------------------------------------------------------------------------
 */

const proto__route *proto__routes(size_t *pn)
{
    *pn = NROUTES;
    return routes;
}

static bool match_pattern(const char *pat, const char *path, size_t len, proto__match *m)
{
    size_t i = 0;
    m->nparams = 0;
    while (*pat != '\0') {
        if (*pat == '{') {
            const char *close = strchr(pat, '}');
            size_t start = i;
            while (i < len && path[i] != '/')
                i++;
            if (close == NULL || i == start || m->nparams == PROTO__MAX_PARAMS)
                return false;
            m->params[m->nparams++] = (proto__param){.name = pat + 1,
                                                     .name_len = (size_t)(close - pat - 1),
                                                     .value = path + start,
                                                     .value_len = i - start};
            pat = close + 1;
            continue;
        }
        if (i >= len || path[i] != *pat)
            return false;
        i++;
        pat++;
    }
    return i == len;
}

int proto__route_match(const char *method, const char *path, size_t path_len, proto__match *m)
{
    const proto__route *partial = NULL;
    size_t alen = 0;
    m->route = NULL;
    m->allow[0] = '\0';
    for (size_t i = 0; i < NROUTES; i++) {
        proto__match t;
        if (!match_pattern(routes[i].pattern, path, path_len, &t))
            continue;
        if (strcmp(routes[i].method, method) == 0) {
            *m = t;
            m->route = &routes[i];
            m->allow[0] = '\0';
            return 0;
        }
        if (partial == NULL)
            partial = &routes[i];
        /* Allow lists each method once, in table order. */
        if (strstr(m->allow, routes[i].method) == NULL) {
            int n = snprintf(m->allow + alen, sizeof(m->allow) - alen, "%s%s", alen ? ", " : "",
                             routes[i].method);
            if (n > 0 && (size_t)n < sizeof(m->allow) - alen)
                alen += (size_t)n;
        }
    }
    if (partial == NULL)
        return PINS_ENOT_FOUND;
    m->route = partial;
    return PINS_EMETHOD_NOT_ALLOWED;
}

/* ---- error mapping ----------------------------------------------------------------------------
 */

static bool query_allowed(const proto__route *r, const char *name);

/* The route row that made call (by its origin), or NULL for a call the REST transport did not
 * make. */
static const proto__route *route_of(const rpc_call *call)
{
    for (size_t i = 0; i < NROUTES && call->origin.route != NULL; i++) {
        if (routes[i].pattern == call->origin.route && routes[i].method == call->origin.http_method)
            return &routes[i];
    }
    return NULL;
}

/* Where the route bound a request field (FastAPI's loc[0]): "path" for a placeholder of its
 * pattern ({key}), "query" for one of its query parameters, else "body". */
static const char *field_location(const rpc_call *call, const char *field)
{
    const proto__route *r = route_of(call);
    if (r == NULL || field == NULL)
        return "body";
    size_t n = strlen(field);
    for (const char *p = strchr(r->pattern, '{'); p != NULL; p = strchr(p + 1, '{')) {
        if (strncmp(p + 1, field, n) == 0 && p[1 + n] == '}')
            return "path";
    }
    return query_allowed(r, field) ? "query" : "body";
}

static const char *metadata_value(const rpc_call *call, const char *name)
{
    for (const rpc_metadata *md = rpc_call_metadata(call); md != NULL; md = md->next) {
        if (strcmp(md->name, name) == 0)
            return md->value;
    }
    return NULL;
}

int proto__rest_error(rpc_call *call, int err, const char *message, proto__error_answer *out)
{
    pins_arena *a = call->arena;
    const pins_config *cfg = call->worker->server->cfg;
    int code = pins_error_grpc(err);
    int status = pins_error_http(err);
    const char *msg = message != NULL ? message : pins_strerror(err);
    char *qmsg = proto__json_quote(a, msg);
    char *body = NULL;
    proto__hdrs h = {0};
    if (qmsg == NULL || proto__hdrs_add_metadata(a, &h, call, NULL) != 0)
        return PINS_ENOMEM;

    switch (err) {
    case PINS_EINVALID_ARGUMENT: {
        /* FastAPI's validation shape: loc is [where the route bound the field, the field], or
         * ["body"] for the request as a whole. */
        const rpc_field_error *fe = &call->field_error;
        char *q0 = proto__json_quote(a, field_location(call, fe->field));
        char *q1 = fe->field != NULL ? proto__json_quote(a, fe->field) : NULL;
        char *qt = proto__json_quote(a, fe->type != NULL ? fe->type : "value_error");
        if (q0 == NULL || qt == NULL || (fe->field != NULL && q1 == NULL))
            return PINS_ENOMEM;
        body = pins_arena_printf(a,
                                 "{\"detail\":[{\"loc\":[%s%s%s],\"msg\":%s,\"type\":%s}],"
                                 "\"code\":%d,\"message\":%s}",
                                 q0, q1 ? "," : "", q1 ? q1 : "", qmsg, qt, code, qmsg);
        break;
    }
    case PINS_EUNAUTHENTICATED:
    case PINS_EPERMISSION_DENIED: {
        /* The dispatcher records the RBAC verdict's refusal on the call (call->deny); a call
         * refused otherwise takes the method row and the code's reason. */
        const rpc_method *m = call->method;
        const char *reason = call->deny.reason;
        if (reason == NULL)
            reason = err == PINS_EUNAUTHENTICATED ? "no-credentials" : "insufficient-permissions";
        const char *res = call->deny.resource;
        if (res == NULL)
            res = m != NULL && m->resource != NULL ? m->resource : "unknown";
        const char *act = call->deny.action;
        if (act == NULL)
            act = m != NULL && m->action != NULL ? m->action : "unknown";
        char *qr = proto__json_quote(a, reason);
        char *qres = proto__json_quote(a, res);
        char *qact = proto__json_quote(a, act);
        if (qr == NULL || qres == NULL || qact == NULL)
            return PINS_ENOMEM;
        body = pins_arena_printf(a,
                                 "{\"error\":\"forbidden\",\"reason\":%s,\"resource\":%s,"
                                 "\"action\":%s,\"code\":%d,\"message\":%s}",
                                 qr, qres, qact, code, qmsg);
        break;
    }
    case PINS_ERATE_LIMITED: {
        /* The rate limiter's verdict, kept on the call by the dispatcher (its headers went out as
         * metadata too); a call refused otherwise takes RATE_LIMIT_RPM and 60 s. */
        long long limit = call->rate.set ? (long long)call->rate.limit : cfg->rate_limit_rpm;
        long long retry = call->rate.set ? (long long)call->rate.retry_after_s : 60;
        body = pins_arena_printf(a,
                                 "{\"detail\":{\"error\":\"rate_limit_exceeded\",\"limit\":%lld,"
                                 "\"retry_after\":%lld},\"code\":%d,\"message\":%s}",
                                 limit, retry, code, qmsg);
        break;
    }
    default:
        /* A known route whose RPC is not served (yet): 501, not the 404 of an unknown path. */
        if (err == PINS_EUNIMPLEMENTED && call->method != NULL)
            status = 501;
        if (err == PINS_EBREAKER_OPEN && metadata_value(call, "retry-after") == NULL) {
            char *ra = pins_arena_printf(a, "%d", cfg->breaker_open_seconds);
            if (ra == NULL || proto__hdrs_add(a, &h, "retry-after", ra) != 0)
                return PINS_ENOMEM;
        }
        body = pins_arena_printf(a, "{\"detail\":%s,\"code\":%d,\"message\":%s}", qmsg, code, qmsg);
        break;
    }
    if (body == NULL)
        return PINS_ENOMEM;
    out->status = status;
    out->body = body;
    out->headers = h;
    return 0;
}

void proto__rest_fail(proto__exchange *ex, int err, const char *message)
{
    proto__error_answer ans = {0};
    if (proto__rest_error(ex->call, err, message, &ans) != 0) {
        static const char oom[] = "{\"detail\":\"out of memory\",\"code\":8,"
                                  "\"message\":\"out of memory\"}";
        proto__respond(ex, 503, "application/json", oom, sizeof(oom) - 1, NULL, 0);
        return;
    }
    proto__respond(ex, ans.status, "application/json", ans.body, strlen(ans.body), ans.headers.v,
                   ans.headers.n);
}

/* A validation failure of field (NULL: the request as a whole) found by the bridge itself, with
 * FastAPI's error type; REST 422 at the location the route gives the field. */
static void fail_invalid(proto__exchange *ex, const char *field, const char *type, const char *msg)
{
    ex->call->field_error = (rpc_field_error){.field = field, .type = type};
    proto__rest_fail(ex, PINS_EINVALID_ARGUMENT, msg);
}

/* ---- binding ----------------------------------------------------------------------------------
 */

/* FastAPI's error type for a query or path value of field's type. */
static const char *type_error_of(const ProtobufCMessageDescriptor *desc, const char *name)
{
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(desc, name);
    if (f == NULL)
        return "value_error";
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SINT64:
        return "type_error.integer";
    case PROTOBUF_C_TYPE_BOOL:
        return "type_error.bool";
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessageDescriptor *sub = f->descriptor;
        if (strcmp(sub->name, "google.protobuf.Timestamp") == 0)
            return "type_error.datetime";
        if (strcmp(sub->name, "google.protobuf.BoolValue") == 0)
            return "type_error.bool";
        if (strcmp(sub->name, "google.protobuf.StringValue") == 0)
            return "value_error";
        return "type_error.integer"; /* the remaining wrappers here are Int32Value, Int64Value */
    }
    default:
        return "value_error";
    }
}

/* Decodes one path or query value and sets field name of msg. Answers and returns nonzero on
 * error. where is "path" or "query". */
static int bind_value(proto__exchange *ex, ProtobufCMessage *msg, const char *where,
                      const char *name, const char *raw, size_t raw_len, bool plus_space)
{
    pins_arena *a = ex->call->arena;
    char *v;
    size_t vlen;
    int rv = proto__url_decode(a, raw, raw_len, plus_space, &v, &vlen);
    if (rv == PINS_EMALFORMED) {
        char *m =
            pins_arena_printf(a, "invalid percent-encoding in the %s parameter %s", where, name);
        proto__rest_fail(ex, PINS_EMALFORMED, m);
        return rv;
    }
    if (rv != 0) {
        proto__rest_fail(ex, rv, NULL);
        return rv;
    }
    /* A NUL would silently cut the C string the handler validates: reject it here. */
    if (memchr(v, '\0', vlen) != NULL || pins_utf8_count(v, vlen) < 0) {
        char *m = pins_arena_printf(a, "%s: must be valid UTF-8 without NUL characters", name);
        fail_invalid(ex, name, NULL, m != NULL ? m : "invalid value");
        return PINS_EINVALID_ARGUMENT;
    }
    proto_json_error jerr;
    memset(&jerr, 0, sizeof(jerr));
    rv = proto_json_set_field(a, msg, name, v, vlen, &jerr);
    if (rv == PINS_EMALFORMED) {
        char *m = pins_arena_printf(a, "%s: %s", name, jerr.msg[0] ? jerr.msg : "invalid value");
        fail_invalid(ex, name, type_error_of(msg->descriptor, name),
                     m != NULL ? m : "invalid value");
        return rv;
    }
    if (rv != 0) {
        /* PINS_ENOT_FOUND: the table names a field the message lacks (tests catch it). */
        proto__rest_fail(ex, rv == PINS_ENOT_FOUND ? PINS_EINTERNAL : rv, NULL);
        return rv;
    }
    return 0;
}

/* The value of msg's int32 field name, or -1 when it has none of that type. */
static int32_t int32_field(const ProtobufCMessage *msg, const char *name)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, name);
    if (f == NULL || f->type != PROTOBUF_C_TYPE_INT32 || f->label == PROTOBUF_C_LABEL_REPEATED)
        return -1;
    return *(const int32_t *)((const char *)msg + f->offset);
}

/* True when path names a top-level field of desc that holds a google.protobuf.Struct. */
static bool is_struct_field(const ProtobufCMessageDescriptor *desc, const char *path)
{
    const ProtobufCFieldDescriptor *f = protobuf_c_message_descriptor_get_field_by_name(desc, path);
    return f != NULL && f->type == PROTOBUF_C_TYPE_MESSAGE &&
           f->label != PROTOBUF_C_LABEL_REPEATED &&
           strcmp(((const ProtobufCMessageDescriptor *)f->descriptor)->name,
                  "google.protobuf.Struct") == 0;
}

static bool query_allowed(const proto__route *r, const char *name)
{
    for (const char *const *q = r->query; *q != NULL; q++) {
        if (strcmp(*q, name) == 0)
            return true;
    }
    return false;
}

/* Binds the query string (unknown parameters are ignored, a repeated one: the last wins). */
static int bind_query(proto__exchange *ex, ProtobufCMessage *msg, const char *q, size_t len)
{
    pins_arena *a = ex->call->arena;
    size_t i = 0;
    while (i < len) {
        size_t n = 0;
        while (i + n < len && q[i + n] != '&')
            n++;
        const char *pair = q + i;
        i += n + 1;
        if (n == 0)
            continue;
        const char *eq = memchr(pair, '=', n);
        size_t klen = eq != NULL ? (size_t)(eq - pair) : n;
        char *name;
        size_t name_len;
        if (proto__url_decode(a, pair, klen, true, &name, &name_len) != 0) {
            proto__rest_fail(ex, PINS_EMALFORMED, "invalid percent-encoding in the query string");
            return PINS_EMALFORMED;
        }
        if (strlen(name) != name_len || !query_allowed(ex->route, name))
            continue;
        const char *val = eq != NULL ? eq + 1 : "";
        size_t vlen = eq != NULL ? n - klen - 1 : 0;
        int rv = bind_value(ex, msg, "query", name, val, vlen, true);
        if (rv != 0)
            return rv;
        /* proto3 reads limit 0 as "the default"; on REST an explicit limit=0 is out of the
         * range 1..1000 (API.md section 4), as FastAPI answered. */
        if (strcmp(name, "limit") == 0 && int32_field(msg, "limit") == 0) {
            fail_invalid(ex, "limit", NULL, "limit: must be between 1 and 1000");
            return PINS_EINVALID_ARGUMENT;
        }
    }
    return 0;
}

/* Decodes the JSON body into a new request message. Answers and returns nonzero on error. */
static int decode_body(proto__exchange *ex, const ProtobufCMessageDescriptor *desc,
                       ProtobufCMessage **pmsg)
{
    proto_stream *s = ex->s;
    pins_arena *a = ex->call->arena;
    size_t len = s->body_len;
    while (len > 0 && (s->body[len - 1] == ' ' || s->body[len - 1] == '\n' ||
                       s->body[len - 1] == '\r' || s->body[len - 1] == '\t'))
        len--;
    if (len == 0) {
        /* FastAPI answers a missing body of a body route with 422 "field required". */
        fail_invalid(ex, NULL, "value_error.missing", "field required");
        return PINS_EINVALID_ARGUMENT;
    }
    proto_json_error jerr;
    memset(&jerr, 0, sizeof(jerr));
    int rv = proto__json_decode_request(ex->call, desc, s->body, s->body_len, pmsg, &jerr);
    if (rv == 0)
        return 0;
    if (rv == PINS_EMALFORMED) {
        const char *m = jerr.path[0] != '\0'
                            ? pins_arena_printf(a, "%s: %s", jerr.path, jerr.msg)
                            : pins_arena_printf(a, "malformed JSON body: %s", jerr.msg);
        if (jerr.type_error && jerr.expected != NULL && is_struct_field(desc, jerr.path)) {
            /* A pin value that is an array, a string or a number: a validation error (API.md
             * section 4), with pydantic's type for a field that wants a dict. */
            char *loc1 = pins_arena_strdup(a, jerr.path);
            char *msg = pins_arena_printf(a, "%s: must be a JSON object", jerr.path);
            fail_invalid(ex, loc1, "type_error.dict", msg != NULL ? msg : "must be a JSON object");
        } else if (jerr.type_error || jerr.path[0] == '\0') {
            proto__rest_fail(ex, PINS_EMALFORMED, m);
        } else {
            char *loc1 = pins_arena_strdup(a, jerr.path);
            fail_invalid(ex, loc1, NULL, m != NULL ? m : "invalid value");
        }
        return rv;
    }
    proto__rest_fail(ex, rv, rv == PINS_ETOO_LARGE ? "request body too large to decode" : NULL);
    return rv;
}

void proto__rest_serve(proto__exchange *ex, const proto__match *m, const char *query,
                       size_t query_len)
{
    rpc_call *call = ex->call;
    pins_arena *a = call->arena;
    const proto__route *r = m->route;
    const rpc_method *method = rpc_method_find(r->rpc, strlen(r->rpc));
    ex->proto = PROTO__REST;
    ex->route = r;
    if (method == NULL) {
        proto__rest_fail(ex, PINS_EINTERNAL, NULL);
        return;
    }
    call->method = method;
    call->origin = (rpc_origin){.route = r->pattern, .http_method = r->method};
    call->protocol = RPC_PROTOCOL_REST;
    call->ops = &rest_ops;
    call->transport = ex->s;

    ProtobufCMessage *msg = NULL;
    if (r->body) {
        if (decode_body(ex, method->input, &msg) != 0)
            return;
    } else {
        msg = pins_arena_alloc(a, method->input->sizeof_message);
        if (msg == NULL) {
            proto__rest_fail(ex, PINS_ENOMEM, NULL);
            return;
        }
        method->input->message_init(msg);
    }
    for (size_t i = 0; i < m->nparams; i++) {
        char *name = pins_arena_strndup(a, m->params[i].name, m->params[i].name_len);
        if (name == NULL) {
            proto__rest_fail(ex, PINS_ENOMEM, NULL);
            return;
        }
        if (bind_value(ex, msg, "path", name, m->params[i].value, m->params[i].value_len, false))
            return;
    }
    if (bind_query(ex, msg, query, query_len) != 0)
        return;
    call->request = msg;
    ex->s->dispatched = true;
    rpc_dispatch(call);
}

/* ---- the REST transport ops -------------------------------------------------------------------
 */

static proto__exchange *exchange_of_call(rpc_call *call)
{
    proto_stream *s = call->transport;
    return s != NULL ? s->proto_data : NULL;
}

/* The SSE event name of a message, in buf: its enum field "type" without the enum's prefix, lower
 * case (EVENT_TYPE_PUT -> "put"), or "message". No allocation: a stream writes one per event. */
static const char *sse_event_name(char *buf, size_t cap, const ProtobufCMessage *msg)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, "type");
    if (f == NULL || f->type != PROTOBUF_C_TYPE_ENUM || f->label == PROTOBUF_C_LABEL_REPEATED)
        return "message";
    int v = *(const int *)((const char *)msg + f->offset);
    const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
    if (ev == NULL)
        return "message";
    const char *name = ev->name;
    const char *under = strstr(name, "TYPE_");
    if (under != NULL)
        name = under + 5;
    size_t n = strlen(name);
    if (n >= cap)
        return "message";
    for (size_t i = 0; i <= n; i++)
        buf[i] = name[i] >= 'A' && name[i] <= 'Z' ? (char)(name[i] - 'A' + 'a') : name[i];
    return buf;
}

/* The SSE id of a message: the int64 "revision" of its message field "pin" (WatchPinsResponse),
 * so that EventSource sends it back as Last-Event-ID when it reconnects; 0 for none. */
static int64_t sse_event_id(const ProtobufCMessage *msg)
{
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, "pin");
    if (f == NULL || f->type != PROTOBUF_C_TYPE_MESSAGE || f->label == PROTOBUF_C_LABEL_REPEATED)
        return 0;
    const ProtobufCMessage *pin = *(ProtobufCMessage *const *)((const char *)msg + f->offset);
    if (pin == NULL)
        return 0;
    const ProtobufCFieldDescriptor *r =
        protobuf_c_message_descriptor_get_field_by_name(pin->descriptor, "revision");
    if (r == NULL || r->type != PROTOBUF_C_TYPE_INT64 || r->label == PROTOBUF_C_LABEL_REPEATED)
        return 0;
    return *(const int64_t *)((const char *)pin + r->offset);
}

/* Starts the event stream once: on subscription (rest_open) or at the first event. */
static int sse_start(proto__exchange *ex)
{
    if (ex->responded)
        return 0;
    pins_arena *a = ex->call->arena;
    proto__hdrs h = {0};
    int rv = proto__hdrs_add(a, &h, "content-type", "text/event-stream");
    if (rv == 0)
        rv = proto__hdrs_add(a, &h, "cache-control", "no-cache");
    if (rv == 0)
        rv = proto__hdrs_add_metadata(a, &h, ex->call, NULL);
    if (rv == 0)
        rv = proto__start(ex, ex->route->status, h.v, h.n, -1);
    return rv;
}

/* Writes one event; data lines split at newlines, as SSE requires. The event goes to the
 * transport in one write, so a write refused for a slow reader never leaves half an event. */
static int sse_write(proto__exchange *ex, const char *event, int64_t id, const char *data,
                     size_t len)
{
    char head[128];
    int n = id > 0
                ? snprintf(head, sizeof(head), "id: %lld\nevent: %s\ndata: ", (long long)id, event)
                : snprintf(head, sizeof(head), "event: %s\ndata: ", event);
    if (n < 0 || (size_t)n >= sizeof(head))
        return PINS_EINTERNAL;
    pins_buf b; /* one event of a message the server encoded: the producer bounds it */
    pins_buf_init(&b, SIZE_MAX);
    int rv = pins_buf_add(&b, head, (size_t)n);
    size_t i = 0;
    while (rv == 0 && i < len) {
        const char *nl = memchr(data + i, '\n', len - i);
        size_t seg = nl != NULL ? (size_t)(nl - (data + i)) : len - i;
        rv = pins_buf_add(&b, data + i, seg);
        i += seg;
        if (rv == 0 && nl != NULL) {
            rv = pins_buf_add(&b, "\ndata: ", 7);
            i++;
        }
    }
    if (rv == 0)
        rv = pins_buf_add(&b, "\n\n", 2);
    if (rv == 0)
        rv = proto__write(ex, pins_buf_ptr(&b), pins_buf_len(&b));
    pins_buf_free(&b);
    return rv;
}

static int rest_send(rpc_call *call, const ProtobufCMessage *msg)
{
    proto__exchange *ex = exchange_of_call(call);
    if (ex == NULL || ex->done)
        return PINS_ECANCELLED;
    const proto__route *r = ex->route;
    const ProtobufCMessage *out = msg;
    if (r->unwrap != NULL) {
        const ProtobufCFieldDescriptor *f =
            protobuf_c_message_descriptor_get_field_by_name(msg->descriptor, r->unwrap);
        if (f == NULL || f->type != PROTOBUF_C_TYPE_MESSAGE)
            return PINS_EINTERNAL;
        out = *(ProtobufCMessage *const *)((const char *)msg + f->offset);
    }
    pins_buf b; /* the reply the handler built: the producer bounds it */
    pins_buf_init(&b, SIZE_MAX);
    int rv =
        out != NULL ? proto_json_encode(out, &proto_json_rest, &b) : pins_buf_add(&b, "null", 4);
    if (rv != 0)
        goto out;
    if (r->sse) {
        char name[48];
        rv = sse_start(ex);
        if (rv == 0)
            rv = sse_write(ex, sse_event_name(name, sizeof(name), msg), sse_event_id(msg),
                           pins_buf_ptr(&b), pins_buf_len(&b));
        goto out;
    }
    proto__hdrs h = {0};
    rv = proto__hdrs_add_metadata(call->arena, &h, call, NULL);
    if (rv == 0)
        rv = proto__respond(ex, r->status, "application/json", pins_buf_ptr(&b), pins_buf_len(&b),
                            h.v, h.n);
out:
    pins_buf_free(&b);
    return rv;
}

static void rest_finish(rpc_call *call, int err, const char *message)
{
    proto__exchange *ex = exchange_of_call(call);
    if (ex == NULL || ex->done)
        return;
    if (ex->route->sse && (err == 0 || ex->responded)) {
        if (err != 0) {
            /* The stream started with 200: the error becomes the last event. It may pass the
             * watch's bound (PINS_WATCH_PENDING_BYTES) that ended a slow reader; the transport's
             * own bound still holds. */
            proto__error_answer ans = {0};
            call->pending_max = 0;
            if (proto__rest_error(call, err, message, &ans) == 0)
                sse_write(ex, "error", 0, ans.body, strlen(ans.body));
        } else if (sse_start(ex) != 0) {
            proto__end(ex);
            return;
        }
        proto__end(ex);
        return;
    }
    if (err == 0) {
        /* A unary handler that finished without a reply message. */
        proto__respond(ex, ex->route->status, "application/json", "{}", 2, NULL, 0);
        return;
    }
    proto__rest_fail(ex, err, message);
}

/* The watch subscribed: the 200 and the event-stream headers go out now, not with the first
 * change, which may be long in coming. */
static int rest_open(rpc_call *call)
{
    proto__exchange *ex = exchange_of_call(call);
    if (ex == NULL || ex->done)
        return PINS_ECANCELLED;
    return ex->route->sse ? sse_start(ex) : 0;
}

/* A comment line: ignored by EventSource, it keeps proxies from closing an idle stream. */
static int rest_heartbeat(rpc_call *call)
{
    proto__exchange *ex = exchange_of_call(call);
    if (ex == NULL || ex->done)
        return PINS_ECANCELLED;
    if (!ex->route->sse || !ex->responded)
        return 0;
    return proto__write(ex, ": ping\n\n", 8);
}

static const rpc_call_ops rest_ops = {.send = rest_send,
                                      .send_packed = NULL,
                                      .finish = rest_finish,
                                      .open = rest_open,
                                      .heartbeat = rest_heartbeat};
