/* protocols/grpc.c: native gRPC, a protocol mapping like Connect and gRPC-Web: timeouts,
 * message frames, percent-encoded status messages, content types, and the mapping of a call
 * onto an HTTP/2 exchange (request frames in, length-prefixed messages and trailers out) over the
 * exchange's zero-copy ops. */
#include "protocols/protocols_int.h"

#include <string.h>

#include "rpc/core.h"

int proto_grpc_timeout_parse(const char *value, size_t len, int64_t *pns)
{
    /* TimeoutValue: 1 to 8 ASCII digits; TimeoutUnit: H M S m u n. */
    if (len < 2 || len > 9)
        return PINS_EINVALID_ARGUMENT;
    int64_t v = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (value[i] < '0' || value[i] > '9')
            return PINS_EINVALID_ARGUMENT;
        v = v * 10 + (value[i] - '0');
    }
    int64_t mul;
    switch (value[len - 1]) {
    case 'H':
        mul = 3600LL * 1000000000LL;
        break;
    case 'M':
        mul = 60LL * 1000000000LL;
        break;
    case 'S':
        mul = 1000000000LL;
        break;
    case 'm':
        mul = 1000000LL;
        break;
    case 'u':
        mul = 1000LL;
        break;
    case 'n':
        mul = 1;
        break;
    default:
        return PINS_EINVALID_ARGUMENT;
    }
    /* 99999999 hours overflows int64 nanoseconds: anything over ~146 years is clamped there, so
     * a longer timeout never yields an earlier deadline. */
    const int64_t cap = INT64_MAX / 2;
    if (v > cap / mul)
        *pns = cap;
    else
        *pns = v * mul;
    return 0;
}

int proto_grpc_frame_parse(const uint8_t *p, size_t avail, proto_grpc_frame *pf)
{
    if (avail < PROTO_GRPC_FRAME_HEADER)
        return PINS_EINVALID_ARGUMENT;
    /* The flag byte has one defined bit (compressed); the others are reserved and a frame that
     * sets one is not a message this server can read. */
    if ((p[0] & ~1u) != 0)
        return PINS_EINVALID_ARGUMENT;
    pf->compressed = (p[0] & 1u) != 0;
    pf->len = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
    return 0;
}

static bool needs_escape(unsigned char c)
{
    return c < 0x20 || c > 0x7e || c == '%';
}

char *proto_grpc_message_encode(pins_arena *a, const char *msg)
{
    static const char hex[] = "0123456789ABCDEF";
    static const char ellipsis[] = "...";
    const size_t el = sizeof(ellipsis) - 1;
    /* n: the bytes of msg sent, enc: their encoded length. A message whose encoding passes the
     * cap keeps what fits in the cap less the ellipsis, cut before a UTF-8 lead byte. */
    size_t n = 0, enc = 0, cut_n = 0, cut_enc = 0;
    bool cut = false;
    for (; msg[n] != '\0'; n++) {
        unsigned char c = (unsigned char)msg[n];
        if ((c & 0xc0) != 0x80 && enc <= PROTO_GRPC_MESSAGE_MAX - el) {
            cut_n = n; /* a character starts here and the ellipsis still fits after enc */
            cut_enc = enc;
        }
        enc += needs_escape(c) ? 3 : 1;
        if (enc > PROTO_GRPC_MESSAGE_MAX) {
            cut = true;
            break;
        }
    }
    if (cut) {
        n = cut_n;
        enc = cut_enc + el;
    }
    char *out = pins_arena_alloc(a, enc + 1);
    if (out == NULL)
        return NULL;
    char *p = out;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (needs_escape(c)) {
            *p++ = '%';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 15];
        } else {
            *p++ = (char)c;
        }
    }
    if (cut) {
        memcpy(p, ellipsis, el);
        p += el;
    }
    *p = '\0';
    return out;
}

bool proto_grpc_content_type(const char *value, size_t len)
{
    static const char base[] = "application/grpc";
    const size_t bl = sizeof(base) - 1;
    if (len < bl || strncasecmp(value, base, bl) != 0)
        return false;
    if (len == bl)
        return true;
    /* application/grpc+proto, application/grpc;charset=..., but not application/grpc-web. */
    if (value[bl] == ';')
        return true;
    if (value[bl] == '+') {
        const char *sub = value + bl + 1;
        size_t sl = len - bl - 1;
        const char *semi = memchr(sub, ';', sl);
        if (semi != NULL)
            sl = (size_t)(semi - sub);
        return sl == 5 && strncasecmp(sub, "proto", 5) == 0;
    }
    return false;
}

/* ---- native gRPC over an HTTP/2 exchange --------------------------------------------------- */

/* The gRPC state of one exchange, in the call's arena (s->proto_data). */
typedef struct grpc_exchange {
    const char *encoding; /* grpc-encoding, looked up when a compressed message arrives */
    const uint8_t *body;  /* a unary reply, framed, in the call's arena; sent by grpc_finish */
    size_t body_len;
    unsigned nmessages;
    bool headers_sent;
    bool overrun; /* stream output was refused: the stream ends with a reset */
} grpc_exchange;

static const rpc_call_ops grpc_ops;

#define HDR(n, v, vl, f) ((proto_hdr){(n), (v), sizeof(n) - 1, (vl), (f)})

/* One metadata entry, borrowed: its strings live in the call's arena (or longer). */
static proto_hdr md_hdr(const rpc_metadata *m)
{
    return (proto_hdr){m->name, m->value, m->namelen, m->valuelen,
                       m->varies ? PROTO_HDR_VARIES : 0u};
}

/* Response headers (trailers false: content type, request id and the handler's initial
 * metadata; trailers true: the handler's trailing metadata). :status is the transport's. */
static size_t grpc_headers(rpc_call *call, proto_hdr *h, size_t cap, bool trailers)
{
    size_t n = 0;
    if (!trailers) {
        const char *rid = rpc_call_request_id(call);
        h[n++] = HDR("content-type", "application/grpc", 16, 0u);
        h[n++] = HDR("x-request-id", rid, strlen(rid), PROTO_HDR_NEVER_INDEX);
    }
    for (const rpc_metadata *m = rpc_call_metadata(call); m != NULL && n < cap; m = m->next) {
        if (m->trailer == trailers)
            h[n++] = md_hdr(m);
    }
    return n;
}

static int grpc_open_stream(proto_stream *s, grpc_exchange *g)
{
    proto_hdr h[32];
    size_t n = grpc_headers(s->call, h, 32, false);
    if (s->ops->open_borrowed(s, 200, h, n) != 0)
        return PINS_EINTERNAL;
    g->headers_sent = true;
    return 0;
}

static void frame_prefix(uint8_t *p, size_t len)
{
    p[0] = 0;
    p[1] = (uint8_t)(len >> 24);
    p[2] = (uint8_t)(len >> 16);
    p[3] = (uint8_t)(len >> 8);
    p[4] = (uint8_t)len;
}

/* Room for one framed message of len bytes: in the arena for a unary reply (sent with its
 * trailers by grpc_finish), in the stream's output otherwise. */
static int frame_reserve(rpc_call *call, size_t len, uint8_t **pp)
{
    proto_stream *s = call->transport;
    grpc_exchange *g = s->proto_data;
    if (len > UINT32_MAX - PROTO_GRPC_FRAME_HEADER)
        return PINS_ERESOURCE_EXHAUSTED;
    uint8_t *p;
    if (!(call->method->flags & RPC_METHOD_SERVER_STREAM)) {
        if (g->body != NULL)
            return PINS_EINTERNAL;
        p = pins_arena_alloc(call->arena, len + PROTO_GRPC_FRAME_HEADER);
        if (p == NULL)
            return PINS_ENOMEM;
    } else {
        void *v;
        int rv = s->ops->write_reserve(s, len + PROTO_GRPC_FRAME_HEADER, &v);
        if (rv == PINS_ERESOURCE_EXHAUSTED)
            g->overrun = true; /* grpc_finish resets the stream */
        if (rv != 0)
            return rv;
        p = v;
    }
    frame_prefix(p, len);
    *pp = p;
    return 0;
}

static int frame_commit(rpc_call *call, uint8_t *p, size_t len)
{
    proto_stream *s = call->transport;
    grpc_exchange *g = s->proto_data;
    if (!(call->method->flags & RPC_METHOD_SERVER_STREAM)) {
        g->body = p;
        g->body_len = len + PROTO_GRPC_FRAME_HEADER;
        return 0;
    }
    if (s->ops->write_commit(s, len + PROTO_GRPC_FRAME_HEADER) != 0)
        return PINS_ENOMEM;
    return g->headers_sent ? 0 : grpc_open_stream(s, g);
}

static int grpc_send(rpc_call *call, const ProtobufCMessage *msg)
{
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *p;
    int rv = frame_reserve(call, len, &p);
    if (rv != 0)
        return rv;
    protobuf_c_message_pack(msg, p + PROTO_GRPC_FRAME_HEADER);
    return frame_commit(call, p, len);
}

static int grpc_send_packed(rpc_call *call, const uint8_t *msg, size_t len)
{
    uint8_t *p;
    int rv = frame_reserve(call, len, &p);
    if (rv != 0)
        return rv;
    memcpy(p + PROTO_GRPC_FRAME_HEADER, msg, len);
    return frame_commit(call, p, len);
}

/* A watch stream was subscribed: its response headers go out now, before the first message. */
static int grpc_open(rpc_call *call)
{
    proto_stream *s = call->transport;
    grpc_exchange *g = s->proto_data;
    return g->headers_sent ? 0 : grpc_open_stream(s, g);
}

/* Trailers (or the Trailers-Only HEADERS) for status err. */
static void grpc_finish(rpc_call *call, int err, const char *message)
{
    proto_stream *s = call->transport;
    grpc_exchange *g = s->proto_data;
    pins_arena *a = call->arena;
    if (g->overrun && err != 0) {
        s->ops->reset(s, PROTO_RESET_OVERLOAD);
        return;
    }
    static const char *const codes[] = {"0", "1",  "2",  "3",  "4",  "5",  "6",  "7", "8",
                                        "9", "10", "11", "12", "13", "14", "15", "16"};
    int code = pins_error_grpc(err);
    const char *codestr = code >= 0 && code <= 16 ? codes[code] : "2";
    char *enc = message != NULL && err != 0 ? proto_grpc_message_encode(a, message) : NULL;
    /* Room for the initial headers (Trailers-Only), every metadata entry, status and message. */
    size_t cap = call->nmetadata + 4;
    proto_hdr *h = pins_arena_alloc(a, cap * sizeof(*h));
    if (h == NULL) {
        s->ops->reset(s, PROTO_RESET_INTERNAL);
        return;
    }
    bool with_body = err == 0 && !g->headers_sent && g->body != NULL;
    bool trailers_only = !g->headers_sent && !with_body;
    size_t n = 0;
    if (trailers_only)
        n = grpc_headers(call, h, cap - 2, false);
    n += grpc_headers(call, h + n, cap - 2 - n, true);
    h[n++] = HDR("grpc-status", codestr, strlen(codestr), 0u);
    if (enc != NULL)
        h[n++] = HDR("grpc-message", enc, strlen(enc), 0u);
    int rv;
    if (trailers_only) {
        g->headers_sent = true;
        rv = s->ops->respond_borrowed(s, 200, h, n, NULL, 0, NULL, 0);
    } else if (with_body) {
        proto_hdr hh[32];
        size_t nh = grpc_headers(call, hh, 32, false);
        g->headers_sent = true;
        rv = s->ops->respond_borrowed(s, 200, hh, nh, g->body, g->body_len, h, n);
    } else {
        rv = s->ops->trailers_borrowed(s, h, n);
    }
    if (rv != 0 && rv != PINS_ECANCELLED)
        s->ops->reset(s, PROTO_RESET_INTERNAL);
}

static const rpc_call_ops grpc_ops = {
    .send = grpc_send, .send_packed = grpc_send_packed, .finish = grpc_finish, .open = grpc_open};

/* An error before the call was dispatched: Trailers-Only with status err; the rest of the
 * request is dropped. */
static void grpc_refuse(proto_stream *s, int err, const char *msg, bool accept_encoding)
{
    if (accept_encoding)
        rpc_call_add_metadata(s->call, "grpc-accept-encoding", "identity", false);
    s->answered = true;
    grpc_finish(s->call, err, msg);
}

static void grpc_busy(proto_stream *s)
{
    grpc_refuse(s, PINS_ERESOURCE_EXHAUSTED, "the server holds too many request bytes; retry later",
                false);
}

proto_body_mode proto__grpc_begin(proto_stream *s)
{
    rpc_call *call = s->call;
    grpc_exchange *g = pins_arena_calloc(call->arena, 1, sizeof(*g));
    if (g == NULL)
        return PROTO_BODY_DROP; /* the transport resets the stream */
    s->proto_data = g;
    call->ops = &grpc_ops;
    call->protocol = RPC_PROTOCOL_GRPC;
    call->transport = s;
    s->body_max =
        (size_t)call->worker->server->cfg->max_request_bytes + PROTO_GRPC_FRAME_HEADER + 16384;
    if (strcmp(s->method, "POST") != 0) {
        grpc_refuse(s, PINS_EUNIMPLEMENTED, "gRPC requires POST", false);
        return PROTO_BODY_DROP;
    }
    const rpc_method *m = rpc_method_find(s->path, strlen(s->path));
    if (m == NULL) {
        grpc_refuse(s, PINS_EUNIMPLEMENTED,
                    pins_arena_printf(call->arena, "unknown method %s", s->path), false);
        return PROTO_BODY_DROP;
    }
    call->method = m;
    const char *timeout = rpc_call_header(call, "grpc-timeout");
    if (timeout != NULL) {
        int64_t ns;
        if (proto_grpc_timeout_parse(timeout, strlen(timeout), &ns) != 0) {
            grpc_refuse(s, PINS_EINVALID_ARGUMENT, "malformed grpc-timeout header", false);
            return PROTO_BODY_DROP;
        }
        call->deadline_ns = call->start_ns + ns;
    }
    /* Credentials are decided now, before a body byte is buffered or decoded. */
    if (!rpc_dispatch_early_or_reply(call)) {
        s->answered = true;
        return PROTO_BODY_DROP;
    }
    return PROTO_BODY_BUFFERED;
}

/* Consumes complete frames from the body. A unary request's one message is only checked as it
 * arrives and decoded at the end (at_end): a stream that never ends holds its raw bytes, charged
 * and bounded, and never a decoded message, which may be several times larger. A
 * client-streaming request's messages are decoded and delivered one by one. */
static void grpc_consume(proto_stream *s, bool at_end)
{
    rpc_call *call = s->call;
    grpc_exchange *g = s->proto_data;
    const rpc_method *m = call->method;
    bool streaming = (m->flags & RPC_METHOD_CLIENT_STREAM) != 0;
    int64_t max = call->worker->server->cfg->max_request_bytes;
    size_t off = 0;
    while (!s->answered && s->body_len - off >= PROTO_GRPC_FRAME_HEADER) {
        const uint8_t *p = s->body + off;
        proto_grpc_frame fr;
        if (proto_grpc_frame_parse(p, s->body_len - off, &fr) != 0) {
            grpc_refuse(s, PINS_EINVALID_ARGUMENT,
                        pins_arena_printf(call->arena,
                                          "message flags 0x%02x: only bit 0 (compressed) is "
                                          "defined",
                                          p[0]),
                        false);
            return;
        }
        uint32_t len = fr.len;
        if (fr.compressed) {
            if (g->encoding == NULL)
                g->encoding = rpc_call_header(call, "grpc-encoding");
            if (g->encoding == NULL || strcmp(g->encoding, "identity") == 0)
                grpc_refuse(s, PINS_EINTERNAL, "compressed message without a grpc-encoding", false);
            else
                grpc_refuse(s, PINS_EUNIMPLEMENTED,
                            pins_arena_printf(call->arena,
                                              "message compression %s is not supported",
                                              g->encoding),
                            true);
            return;
        }
        if ((int64_t)len > max) {
            grpc_refuse(s, PINS_ETOO_LARGE,
                        pins_arena_printf(call->arena,
                                          "request message of %u bytes exceeds the limit of "
                                          "%lld bytes",
                                          len, (long long)max),
                        false);
            return;
        }
        if (s->body_len - off - PROTO_GRPC_FRAME_HEADER < len)
            break;
        if (!streaming) {
            if (off + PROTO_GRPC_FRAME_HEADER + len < s->body_len) {
                grpc_refuse(s, PINS_EINVALID_ARGUMENT,
                            "a unary method takes exactly one request message", false);
                return;
            }
            if (!at_end)
                return;
        }
        g->nmessages++;
        ProtobufCMessage *msg;
        const char *why = NULL;
        int rv = rpc_call_decode(call, m->input, p + PROTO_GRPC_FRAME_HEADER, len, &msg, &why);
        if (rv != 0) {
            grpc_refuse(s, rv, why, false);
            return;
        }
        /* A unary message is charged once its body is released (proto__grpc_end), so that a
         * lone request is never refused for holding its body and its decoded form at once. */
        if (streaming && s->ops->charge_arena(s) != 0) {
            grpc_busy(s);
            return;
        }
        off += PROTO_GRPC_FRAME_HEADER + (size_t)len;
        if (!streaming) {
            call->request = msg;
        } else if (!s->dispatched) {
            call->request = msg;
            s->dispatched = true;
            rpc_dispatch(call);
        } else {
            rpc_call_deliver(call, msg);
        }
    }
    if (off > 0 && !s->answered)
        s->ops->body_consume(s, off);
}

void proto__grpc_more(proto_stream *s)
{
    grpc_consume(s, false);
}

void proto__grpc_end(proto_stream *s)
{
    rpc_call *call = s->call;
    grpc_consume(s, true);
    if (s->answered)
        return;
    if (s->body_len != 0) {
        grpc_refuse(s, PINS_EINVALID_ARGUMENT, "request ends inside a gRPC message frame", false);
        return;
    }
    s->ops->body_release(s);
    if (s->ops->charge_arena(s) != 0) {
        grpc_busy(s);
        return;
    }
    if (call->method->flags & RPC_METHOD_CLIENT_STREAM) {
        if (!s->dispatched) {
            s->dispatched = true;
            rpc_dispatch(call);
        }
        if (call->transport != NULL) /* the stream may have closed under the dispatch */
            rpc_call_deliver(call, NULL);
        return;
    }
    if (call->request == NULL) {
        grpc_refuse(s, PINS_EINVALID_ARGUMENT, "request message missing", false);
        return;
    }
    s->dispatched = true;
    rpc_dispatch(call);
}

void proto__grpc_reject(proto_stream *s, int err, const char *message)
{
    switch (err) {
    case PINS_ETOO_LARGE:
        grpc_refuse(s, err, message != NULL ? message : "request message exceeds the limit", false);
        break;
    case PINS_ERESOURCE_EXHAUSTED:
        if (message == NULL)
            grpc_busy(s);
        else
            grpc_refuse(s, err, message, false);
        break;
    default:
        grpc_refuse(s, err, message, false);
        break;
    }
}
