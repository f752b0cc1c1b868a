/* protocols/connect.c: the Connect protocol (https://connectrpc.com/docs/protocol) and the envelope
 * engine it shares with gRPC-Web (protocols/grpcweb.c).
 *
 * Connect unary: the body is the message (application/proto or application/json), the answer
 * is the message with HTTP 200, or an error JSON {"code","message"} with the HTTP status of the
 * code. Connect streaming and gRPC-Web: 5-byte envelopes both ways; the request's envelopes are
 * decoded as they arrive (the first one dispatches a client-streaming call, later ones are
 * delivered to it), and the response ends with a Connect end-stream envelope (flag 0x02, JSON)
 * or a gRPC-Web trailer frame (flag 0x80, HTTP/1-style header lines).
 */
#include "protocols/protocols_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "protocols/json.h"

#define FLAG_COMPRESSED 0x01
#define FLAG_END_STREAM 0x02 /* Connect */
#define FLAG_TRAILERS   0x80 /* gRPC-Web */

static const rpc_call_ops unary_ops;
static const rpc_call_ops framed_ops;

static proto__exchange *exchange_of_call(rpc_call *call)
{
    proto_stream *s = call->transport;
    return s != NULL ? s->proto_data : NULL;
}

/* ---- content types ----------------------------------------------------------------------------
 */

static bool media_is(const char *ct, size_t len, const char *want)
{
    return strlen(want) == len && strncasecmp(ct, want, len) == 0;
}

proto__kind proto__rpc_proto(const proto_stream *s, bool *pjson, bool *ptext)
{
    const char *ct = rpc_call_header(s->call, "content-type");
    if (ct == NULL)
        return PROTO__PLAIN;
    size_t len = strcspn(ct, ";");
    while (len > 0 && (ct[len - 1] == ' ' || ct[len - 1] == '\t'))
        len--;
    static const struct {
        const char *type;
        proto__kind proto;
        bool json;
        bool text;
    } types[] = {
        {"application/json", PROTO__CONNECT, true, false},
        {"application/proto", PROTO__CONNECT, false, false},
        {"application/connect+json", PROTO__CONNECT_STREAM, true, false},
        {"application/connect+proto", PROTO__CONNECT_STREAM, false, false},
        {"application/grpc-web", PROTO__GRPC_WEB, false, false},
        {"application/grpc-web+proto", PROTO__GRPC_WEB, false, false},
        {"application/grpc-web+json", PROTO__GRPC_WEB, true, false},
        {"application/grpc-web-text", PROTO__GRPC_WEB, false, true},
        {"application/grpc-web-text+proto", PROTO__GRPC_WEB, false, true},
        {"application/grpc+json", PROTO__GRPC_JSON, true, false},
    };
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++) {
        if (media_is(ct, len, types[i].type)) {
            if (types[i].proto == PROTO__GRPC_JSON && s->ops->end_trailers == NULL)
                return PROTO__PLAIN; /* gRPC needs trailers: HTTP/2 */
            *pjson = types[i].json;
            *ptext = types[i].text;
            return types[i].proto;
        }
    }
    return PROTO__PLAIN;
}

/* ---- Connect errors ---------------------------------------------------------------------------
 */

/* {"code":"not_found","message":"..."} for err (Connect's error JSON). */
static char *connect_error_json(pins_arena *a, int err, const char *message)
{
    int code = pins_error_grpc(err);
    const char *msg = message != NULL ? message : pins_strerror(err);
    char *q = proto__json_quote(a, msg);
    if (q == NULL)
        return NULL;
    return pins_arena_printf(a, "{\"code\":\"%s\",\"message\":%s}", pins_grpc_code_connect(code),
                             q);
}

/* The end-stream message: {"error":{...},"metadata":{"name":["value"],...}} (parts omitted when
 * empty), built in one pass and copied into the call's arena once. */
static char *connect_end_json(rpc_call *call, int err, const char *message)
{
    pins_arena *a = call->arena;
    size_t limit = pins_arena_limit(a); /* the arena holds the result: its limit bounds it */
    pins_buf b;
    pins_buf_init(&b, limit != 0 ? limit : SIZE_MAX);
    char *out = NULL;
    pins_buf_add_byte(&b, '{');
    if (err != 0) {
        char *e = connect_error_json(a, err, message);
        if (e == NULL)
            goto out;
        pins_buf_add_str(&b, "\"error\":");
        pins_buf_add_str(&b, e);
    }
    bool first = true;
    for (const rpc_metadata *m = rpc_call_metadata(call); m; m = m->next) {
        if (!m->trailer)
            continue;
        char *qn = proto__json_quote(a, m->name);
        char *qv = proto__json_quote(a, m->value);
        if (qn == NULL || qv == NULL)
            goto out;
        pins_buf_add_str(&b, first ? (err != 0 ? ",\"metadata\":{" : "\"metadata\":{") : ",");
        pins_buf_add_str(&b, qn);
        pins_buf_add(&b, ":[", 2);
        pins_buf_add_str(&b, qv);
        pins_buf_add_byte(&b, ']');
        first = false;
    }
    if (!first)
        pins_buf_add_byte(&b, '}');
    pins_buf_add_byte(&b, '}');
    if (pins_buf_error(&b) == 0) {
        out = pins_arena_alloc(a, pins_buf_len(&b) + 1);
        if (out != NULL)
            memcpy(out, pins_buf_ptr(&b), pins_buf_len(&b) + 1);
    }
out:
    pins_buf_free(&b);
    return out;
}

/* ---- unary ------------------------------------------------------------------------------------
 */

static int unary_respond(proto__exchange *ex, const void *body, size_t len)
{
    rpc_call *call = ex->call;
    proto__hdrs h = {0};
    int rv = proto__hdrs_add_metadata(call->arena, &h, call, "trailer-");
    if (rv == 0)
        rv = proto__respond(ex, 200, ex->resp_content_type, body, len, h.v, h.n);
    return rv;
}

/* Connect's unary error answer; status 0: the status Connect gives err's code. */
static void unary_error_status(proto__exchange *ex, int err, int status, const char *message,
                               const char *allow)
{
    rpc_call *call = ex->call;
    if (status == 0)
        status = pins_grpc_code_http(pins_error_grpc(err));
    char *body = connect_error_json(call->arena, err, message);
    proto__hdrs h = {0};
    if (body == NULL || proto__hdrs_add_metadata(call->arena, &h, call, "trailer-") != 0 ||
        (allow != NULL && proto__hdrs_add(call->arena, &h, "allow", allow) != 0)) {
        static const char oom[] = "{\"code\":\"resource_exhausted\",\"message\":\"out of memory\"}";
        proto__respond(ex, 429, "application/json", oom, sizeof(oom) - 1, NULL, 0);
        return;
    }
    proto__respond(ex, status, "application/json", body, strlen(body), h.v, h.n);
}

static void unary_error(proto__exchange *ex, int err, const char *message)
{
    unary_error_status(ex, err, 0, message, NULL);
}

/* A message encoded for the exchange: JSON in json, protobuf packed in a malloc'd block. */
struct encoded {
    pins_buf json;
    uint8_t *packed;
    const char *p; /* the bytes, in one or the other */
    size_t len;
};

/* Encodes msg with the exchange's codec into e; free it with encoded_free() either way. */
static int encode_message(proto__exchange *ex, const ProtobufCMessage *msg, struct encoded *e)
{
    pins_buf_init(&e->json, SIZE_MAX); /* the server produced msg: it bounds the size */
    e->packed = NULL;
    if (ex->json) {
        int rv = proto_json_encode(msg, &proto_json_canonical, &e->json);
        e->p = pins_buf_ptr(&e->json);
        e->len = pins_buf_len(&e->json);
        return rv;
    }
    size_t n = protobuf_c_message_get_packed_size(msg);
    e->packed = malloc(n > 0 ? n : 1);
    if (e->packed == NULL)
        return PINS_ENOMEM;
    e->len = protobuf_c_message_pack(msg, e->packed);
    e->p = (const char *)e->packed;
    return 0;
}

static void encoded_free(struct encoded *e)
{
    pins_buf_free(&e->json);
    free(e->packed);
}

static int unary_send(rpc_call *call, const ProtobufCMessage *msg)
{
    proto__exchange *ex = exchange_of_call(call);
    if (ex == NULL || ex->done)
        return PINS_ECANCELLED;
    struct encoded b;
    int rv = encode_message(ex, msg, &b);
    if (rv == 0)
        rv = unary_respond(ex, b.p, b.len);
    encoded_free(&b);
    return rv;
}

static int unary_send_packed(rpc_call *call, const uint8_t *p, size_t len)
{
    proto__exchange *ex = exchange_of_call(call);
    if (ex == NULL || ex->done)
        return PINS_ECANCELLED;
    if (ex->json)
        return rpc_call_send_unpacked(call, p, len, unary_send);
    return unary_respond(ex, p, len);
}

static void unary_finish(rpc_call *call, int err, const char *message)
{
    proto__exchange *ex = exchange_of_call(call);
    if (ex == NULL || ex->done)
        return;
    if (err == 0) {
        /* Finished without a reply message: the empty message. */
        unary_respond(ex, ex->json ? "{}" : "", ex->json ? 2 : 0);
        return;
    }
    unary_error(ex, err, message);
}

static const rpc_call_ops unary_ops = {
    .send = unary_send, .send_packed = unary_send_packed, .finish = unary_finish};

void proto__connect_unary(proto__exchange *ex, const uint8_t *body, size_t len)
{
    rpc_call *call = ex->call;
    const rpc_method *m = call->method;
    if (m->flags & (RPC_METHOD_SERVER_STREAM | RPC_METHOD_CLIENT_STREAM)) {
        unary_error(ex, PINS_EUNIMPLEMENTED,
                    "a streaming method takes application/connect+proto or +json");
        return;
    }
    ProtobufCMessage *msg = NULL;
    if (ex->json) {
        proto_json_error jerr;
        memset(&jerr, 0, sizeof(jerr));
        int rv = proto__json_decode_request(call, m->input, body, len, &msg, &jerr);
        if (rv != 0) {
            const char *why = rv == PINS_ETOO_LARGE   ? "request message too large to decode"
                              : rv != PINS_EMALFORMED ? NULL
                              : jerr.path[0]
                                  ? pins_arena_printf(call->arena, "%s: %s", jerr.path, jerr.msg)
                                  : pins_arena_printf(call->arena, "malformed JSON: %s", jerr.msg);
            unary_error(ex, rv == PINS_EMALFORMED ? PINS_EINVALID_ARGUMENT : rv, why);
            return;
        }
    } else {
        const char *why = NULL;
        int rv = rpc_call_decode(call, m->input, body, len, &msg, &why);
        if (rv != 0) {
            unary_error(ex, rv, why);
            return;
        }
    }
    call->request = msg;
    ex->s->dispatched = true;
    rpc_dispatch(call);
}

/* ---- framed responses (Connect streaming, gRPC-Web, gRPC with JSON) ---------------------------
 */

/* The response content type of a framed protocol. */
static const char *framed_content_type(proto__kind proto, bool json, bool text)
{
    if (proto == PROTO__GRPC_WEB)
        return proto__grpcweb_content_type(json, text);
    if (proto == PROTO__GRPC_JSON)
        return "application/grpc+json";
    return json ? "application/connect+json" : "application/connect+proto";
}

static int framed_start(proto__exchange *ex)
{
    if (ex->responded)
        return 0;
    pins_arena *a = ex->call->arena;
    proto__hdrs h = {0};
    int rv = proto__hdrs_add(a, &h, "content-type", ex->resp_content_type);
    for (const rpc_metadata *m = rpc_call_metadata(ex->call); rv == 0 && m; m = m->next) {
        if (!m->trailer)
            rv = proto__hdrs_add(a, &h, m->name, m->value);
    }
    if (rv == 0)
        rv = proto__start(ex, 200, h.v, h.n, -1);
    return rv;
}

static int write_envelope(proto__exchange *ex, uint8_t flags, const void *p, size_t len)
{
    if (len > UINT32_MAX)
        return PINS_ERESOURCE_EXHAUSTED;
    uint8_t hdr[5] = {flags, (uint8_t)(len >> 24), (uint8_t)(len >> 16), (uint8_t)(len >> 8),
                      (uint8_t)len};
    if (ex->text) {
        /* grpc-web-text: each envelope is its own padded base64 chunk, so that a client can
         * decode the body as it arrives, chunk by chunk. */
        char *b64 = NULL;
        size_t n = 0;
        int rv = proto__base64_envelope(hdr, p, len, &b64, &n);
        if (rv == 0)
            rv = proto__write(ex, b64, n);
        free(b64);
        return rv;
    }
    int rv = proto__write(ex, hdr, 5);
    if (rv == 0 && len > 0)
        rv = proto__write(ex, p, len);
    return rv;
}

static int framed_send(rpc_call *call, const ProtobufCMessage *msg)
{
    proto__exchange *ex = exchange_of_call(call);
    if (ex == NULL || ex->done)
        return PINS_ECANCELLED;
    struct encoded b;
    int rv = encode_message(ex, msg, &b);
    if (rv == 0)
        rv = framed_start(ex);
    if (rv == 0)
        rv = write_envelope(ex, 0, b.p, b.len);
    encoded_free(&b);
    return rv;
}

static int framed_send_packed(rpc_call *call, const uint8_t *p, size_t len)
{
    proto__exchange *ex = exchange_of_call(call);
    if (ex == NULL || ex->done)
        return PINS_ECANCELLED;
    if (ex->json)
        return rpc_call_send_unpacked(call, p, len, framed_send);
    int rv = framed_start(ex);
    if (rv == 0)
        rv = write_envelope(ex, 0, p, len);
    return rv;
}

/* gRPC: the status as HTTP/2 trailers (grpc-status, percent-encoded grpc-message, the call's
 * trailing metadata) after the response headers, which go out now if no message did. */
static void grpc_end_response(proto__exchange *ex, int err, const char *message)
{
    rpc_call *call = ex->call;
    pins_arena *a = call->arena;
    proto__hdrs t = {0};
    char *code = pins_arena_printf(a, "%d", pins_error_grpc(err));
    int rv = code != NULL ? proto__hdrs_add(a, &t, "grpc-status", code) : PINS_ENOMEM;
    if (rv == 0 && err != 0) {
        char *enc = proto_grpc_message_encode(a, message != NULL ? message : pins_strerror(err));
        rv = enc != NULL ? proto__hdrs_add(a, &t, "grpc-message", enc) : PINS_ENOMEM;
    }
    for (const rpc_metadata *m = rpc_call_metadata(call); rv == 0 && m; m = m->next) {
        if (m->trailer)
            rv = proto__hdrs_add(a, &t, m->name, m->value);
    }
    if (rv != 0) {
        /* No memory for the status: a bare INTERNAL still closes the call properly. */
        static const rpc_header internal = {.name = "grpc-status", .value = "13"};
        t.v = (rpc_header *)&internal;
        t.n = 1;
    }
    if (framed_start(ex) != 0) {
        proto__end(ex);
        return;
    }
    proto__end_trailers(ex, t.v, t.n);
}

/* Ends a framed response with status err: an end-stream envelope, a trailer frame, or HTTP/2
 * trailers. */
static void framed_end_response(proto__exchange *ex, int err, const char *message)
{
    if (ex->done)
        return;
    if (ex->proto == PROTO__GRPC_JSON) {
        grpc_end_response(ex, err, message);
        return;
    }
    rpc_call *call = ex->call;
    char *end;
    size_t len = 0;
    uint8_t flags;
    if (ex->proto == PROTO__GRPC_WEB) {
        end = proto__grpcweb_trailers(call, err, message, &len);
        flags = FLAG_TRAILERS;
    } else {
        end = connect_end_json(call, err, message);
        len = end != NULL ? strlen(end) : 0;
        flags = FLAG_END_STREAM;
    }
    if (framed_start(ex) == 0 && end != NULL)
        write_envelope(ex, flags, end, len);
    proto__end(ex);
}

static void framed_finish(rpc_call *call, int err, const char *message)
{
    proto__exchange *ex = exchange_of_call(call);
    if (ex != NULL)
        framed_end_response(ex, err, message);
}

static const rpc_call_ops framed_ops = {
    .send = framed_send, .send_packed = framed_send_packed, .finish = framed_finish};

/* ---- framed requests --------------------------------------------------------------------------
 */

/* A request-side error: answered at once; a dispatched call is cancelled (its handler finishes
 * it, and that late status is dropped because the response already ended). */
static void framed_fail(proto__exchange *ex, int err, const char *message)
{
    framed_end_response(ex, err, message);
    if (ex->s->dispatched)
        rpc_call_cancel(ex->call);
}

static int decode_envelope(proto__exchange *ex, const uint8_t *p, size_t len,
                           ProtobufCMessage **pmsg)
{
    rpc_call *call = ex->call;
    if (!ex->json) {
        const char *why = NULL;
        int rv = rpc_call_decode(call, call->method->input, p, len, pmsg, &why);
        if (rv != 0)
            framed_fail(ex, rv, why);
        return rv;
    }
    proto_json_error jerr;
    memset(&jerr, 0, sizeof(jerr));
    int rv = proto__json_decode_request(call, call->method->input, p, len, pmsg, &jerr);
    if (rv == PINS_EMALFORMED)
        framed_fail(ex, PINS_EINVALID_ARGUMENT,
                    pins_arena_printf(call->arena, "malformed JSON message%s%s: %s",
                                      jerr.path[0] ? " at " : "", jerr.path, jerr.msg));
    else if (rv != 0)
        framed_fail(ex, rv, rv == PINS_ETOO_LARGE ? "request message too large to decode" : NULL);
    return rv;
}

/* Appends data to the pending request bytes (arena: freed with the call, also when the peer
 * goes away mid-message). */
static int in_append(proto__exchange *ex, const uint8_t *data, size_t len)
{
    if (ex->in_len + len > ex->in_cap) {
        size_t cap = ex->in_cap ? ex->in_cap : 1024;
        while (cap < ex->in_len + len)
            cap *= 2;
        uint8_t *nb = pins_arena_alloc(ex->call->arena, cap);
        if (nb == NULL)
            return PINS_ENOMEM;
        if (ex->in_len > 0)
            memcpy(nb, ex->in, ex->in_len);
        ex->in = nb;
        ex->in_cap = cap;
    }
    memcpy(ex->in + ex->in_len, data, len);
    ex->in_len += len;
    return 0;
}

/* grpc-web-text: decodes data (base64, possibly a concatenation of padded chunks, split
 * anywhere) onto the pending request bytes. Answers and returns nonzero on error. */
static int text_append(proto__exchange *ex, const uint8_t *data, size_t len)
{
    uint8_t out[3 * 256];
    size_t n = 0;
    for (size_t i = 0; i < len; i++) {
        ex->b64[ex->nb64++] = data[i];
        if (ex->nb64 < 4)
            continue;
        ex->nb64 = 0;
        int k = proto__base64_quantum(ex->b64, out + n);
        if (k < 0) {
            framed_fail(ex, PINS_EINVALID_ARGUMENT,
                        "request body is not valid base64 (application/grpc-web-text)");
            return PINS_EINVALID_ARGUMENT;
        }
        n += (size_t)k;
        if (n > sizeof(out) - 3 || i + 1 == len) {
            if (in_append(ex, out, n) != 0) {
                framed_fail(ex, PINS_ETOO_LARGE, "request too large for the call's memory");
                return PINS_ETOO_LARGE;
            }
            n = 0;
        }
    }
    if (n > 0 && in_append(ex, out, n) != 0) {
        framed_fail(ex, PINS_ETOO_LARGE, "request too large for the call's memory");
        return PINS_ETOO_LARGE;
    }
    return 0;
}

void proto__framed_body(proto__exchange *ex, const uint8_t *data, size_t len)
{
    rpc_call *call = ex->call;
    const rpc_method *m = call->method;
    int64_t max = call->worker->server->cfg->max_request_bytes;
    if (ex->done || len == 0)
        return;
    if (ex->text) {
        if (text_append(ex, data, len) != 0)
            return;
    } else if (in_append(ex, data, len) != 0) {
        framed_fail(ex, PINS_ETOO_LARGE, "request too large for the call's memory");
        return;
    }
    size_t off = 0;
    while (!ex->done && ex->in_len - off >= 5) {
        const uint8_t *p = ex->in + off;
        uint32_t n = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
        if (p[0] & FLAG_COMPRESSED) {
            framed_fail(ex, PINS_EUNIMPLEMENTED, "message compression is not supported");
            return;
        }
        if (p[0] != 0) {
            framed_fail(ex, PINS_EINVALID_ARGUMENT, "unexpected envelope flags in a request");
            return;
        }
        if ((int64_t)n > max) {
            framed_fail(ex, PINS_ETOO_LARGE,
                        pins_arena_printf(call->arena,
                                          "request message of %u bytes exceeds the limit of "
                                          "%lld bytes",
                                          n, (long long)max));
            return;
        }
        if (ex->in_len - off - 5 < n)
            break;
        ex->nmessages++;
        if (!(m->flags & RPC_METHOD_CLIENT_STREAM) && ex->nmessages > 1) {
            framed_fail(ex, PINS_EINVALID_ARGUMENT,
                        "a unary method takes exactly one request message");
            return;
        }
        ProtobufCMessage *msg;
        if (decode_envelope(ex, p + 5, n, &msg) != 0)
            return;
        off += 5 + (size_t)n;
        if (!(m->flags & RPC_METHOD_CLIENT_STREAM)) {
            call->request = msg;
        } else if (!ex->s->dispatched) {
            call->request = msg;
            ex->s->dispatched = true;
            rpc_dispatch(call);
        } else {
            rpc_call_deliver(call, msg);
        }
    }
    if (off > 0 && !ex->done) {
        memmove(ex->in, ex->in + off, ex->in_len - off);
        ex->in_len -= off;
    }
}

void proto__framed_end(proto__exchange *ex)
{
    rpc_call *call = ex->call;
    if (ex->done)
        return;
    if (ex->nb64 != 0) {
        framed_fail(ex, PINS_EINVALID_ARGUMENT,
                    "request body ends inside a base64 quantum (application/grpc-web-text)");
        return;
    }
    if (ex->in_len != 0) {
        framed_fail(ex, PINS_EINVALID_ARGUMENT, "request ends inside a message envelope");
        return;
    }
    if (call->method->flags & RPC_METHOD_CLIENT_STREAM) {
        if (!ex->s->dispatched) {
            ex->s->dispatched = true;
            rpc_dispatch(call);
        }
        rpc_call_deliver(call, NULL);
        return;
    }
    if (ex->s->dispatched)
        return;
    if (call->request == NULL) {
        framed_fail(ex, PINS_EINVALID_ARGUMENT, "request message missing");
        return;
    }
    ex->s->dispatched = true;
    rpc_dispatch(call);
}

/* ---- set-up -----------------------------------------------------------------------------------
 */

void proto__rpc_reject(proto__exchange *ex, int err, int status, const char *message,
                       const char *allow)
{
    bool json = false, text = false;
    proto__kind proto = proto__rpc_proto(ex->s, &json, &text);
    if (strcmp(ex->s->method, "POST") == 0 && proto != PROTO__PLAIN && proto != PROTO__CONNECT) {
        ex->proto = proto;
        ex->json = json;
        ex->text = text;
        ex->resp_content_type = framed_content_type(proto, json, text);
        framed_end_response(ex, err, message);
        return;
    }
    ex->proto = PROTO__CONNECT;
    unary_error_status(ex, err, status, message, allow);
}

/* Connect-Timeout-Ms: at most 10 ASCII digits. Returns 0 and *pms, or PINS_EINVALID_ARGUMENT. */
static int parse_timeout_ms(const char *v, int64_t *pms)
{
    size_t n = strlen(v);
    if (n == 0 || n > 10)
        return PINS_EINVALID_ARGUMENT;
    int64_t ms = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return PINS_EINVALID_ARGUMENT;
        ms = ms * 10 + (v[i] - '0');
    }
    *pms = ms;
    return 0;
}

static void early_error(proto__exchange *ex, int err, const char *message)
{
    if (ex->proto == PROTO__CONNECT)
        unary_error(ex, err, message);
    else
        framed_end_response(ex, err, message);
}

int proto__rpc_begin(proto__exchange *ex, const rpc_method *m)
{
    rpc_call *call = ex->call;
    call->method = m;
    call->transport = ex->s;
    call->protocol = proto__call_protocol(ex->proto);
    if (ex->proto == PROTO__CONNECT) {
        call->ops = &unary_ops;
        ex->resp_content_type = ex->json ? "application/json" : "application/proto";
    } else {
        call->ops = &framed_ops;
        ex->resp_content_type = framed_content_type(ex->proto, ex->json, ex->text);
    }

    if (ex->proto == PROTO__GRPC_WEB || ex->proto == PROTO__GRPC_JSON) {
        const char *t = rpc_call_header(call, "grpc-timeout");
        int64_t ns;
        if (t != NULL) {
            if (proto_grpc_timeout_parse(t, strlen(t), &ns) != 0) {
                early_error(ex, PINS_EINVALID_ARGUMENT, "malformed grpc-timeout header");
                return PINS_EINVALID_ARGUMENT;
            }
            call->deadline_ns = call->start_ns + ns;
        }
        return 0;
    }
    const char *ver = rpc_call_header(call, "connect-protocol-version");
    if (ver != NULL && strcmp(ver, "1") != 0) {
        early_error(ex, PINS_EINVALID_ARGUMENT, "connect-protocol-version must be 1");
        return PINS_EINVALID_ARGUMENT;
    }
    const char *enc = rpc_call_header(
        call, ex->proto == PROTO__CONNECT ? "content-encoding" : "connect-content-encoding");
    if (enc != NULL && strcasecmp(enc, "identity") != 0) {
        early_error(ex, PINS_EUNIMPLEMENTED,
                    pins_arena_printf(call->arena, "compression %s is not supported", enc));
        return PINS_EUNIMPLEMENTED;
    }
    const char *t = rpc_call_header(call, "connect-timeout-ms");
    if (t != NULL) {
        int64_t ms;
        if (parse_timeout_ms(t, &ms) != 0) {
            early_error(ex, PINS_EINVALID_ARGUMENT, "malformed connect-timeout-ms header");
            return PINS_EINVALID_ARGUMENT;
        }
        call->deadline_ns = call->start_ns + ms * 1000000;
    }
    return 0;
}
