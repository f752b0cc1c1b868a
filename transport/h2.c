/* transport/h2.c: HTTP/2 with nghttp2: the session of one connection, its streams, and the
 * exchange ops (protocols/protocols.h) over them.
 *
 * One nghttp2_session per connection, driven the way nghttp2's libevent server drives it: input
 * goes through nghttp2_session_mem_recv() (transport__h2_recv), output through
 * nghttp2_session_mem_send() straight to the socket, or into the bufferevent when the socket is
 * full or the connection is TLS (transport__h2_send, from conn.c's flush). Handlers
 * may finish calls inside nghttp2 callbacks; output produced there is sent when
 * nghttp2_session_mem_recv() returns (nghttp2 forbids re-entering the session).
 *
 * Every stream is an exchange: on its HEADERS the protocols choose what it is
 * (proto_request_headers) and how its body is taken; this file implements the exchange's ops over
 * nghttp2 (responses that copy their headers for REST, Connect and gRPC-Web; the borrowed,
 * zero-copy ones for native gRPC), buffers and charges request bodies, and knows no protocol.
 *
 * Blast radius: a malformed message or an oversized header list resets or fails one stream;
 * framing corruption ends one connection; nothing here stops the process.
 */
#include "transport/transport_int.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <errno.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>

#include "common/timeutil.h"
#include "observability/log.h"
#include "protocols/protocols.h"

#define MAX_HEADERS        100
#define MAX_HEADER_BYTES   65536
#define STREAM_PENDING_MAX (4u << 20)
/* Bytes of frames gathered for one writev to the socket (a whole DATA frame of 16 KiB fits). */
#define H2_WBATCH (16384 + 64)

/* KIND_BUFFERED: the protocol takes the body from the stream's buffer as it grows (native gRPC);
 * KIND_HTTP: the body is collected whole, or handed over chunk by chunk (streaming). */
enum stream_kind { KIND_UNKNOWN, KIND_BUFFERED, KIND_HTTP, KIND_REJECTED };

typedef struct transport__h2_stream h2_stream;

struct transport__h2_stream {
    proto_stream bs; /* the exchange the protocols see (first member: call->transport) */
    h2_stream *prev, *next;
    transport__conn *conn;
    int32_t id;
    rpc_call *call; /* owns this struct's memory (its arena) */
    enum stream_kind kind;
    size_t header_bytes;
    size_t cap_headers;
    /* Pseudo headers and the few regular ones the transport reads. */
    const char *method;
    const char *path;
    const char *content_type;
    const char *request_id_hdr;
    int64_t begin_ns; /* HEADERS began: the request must be complete by PINS_REQUEST_TIMEOUT */
    /* Request body, malloc'd: a unary gRPC message is kept whole until END_STREAM and decoded
     * then; a client-streaming one is decoded frame by frame. */
    unsigned char *body;
    size_t body_len, body_cap;
    size_t charged;       /* of the connection's charge: body_cap and the decoded messages */
    size_t arena_charged; /* the part of charged that is the call's arena */
    size_t out_charged;   /* of the connection's charge: response bytes not yet sent */
    bool request_done;    /* END_STREAM seen */
    /* Response. */
    struct evbuffer *out;       /* pending DATA */
    struct evbuffer_iovec resv; /* write_reserve's room in out, until write_commit */
    bool headers_sent;
    bool finished; /* trailers (or END_STREAM) queued */
    bool deferred; /* the data provider returned DEFERRED */
    nghttp2_nv *trailers;
    size_t ntrailers;
    const void *resp_body; /* a whole body to send (plain HTTP answers, a unary gRPC reply) */
    size_t resp_len, resp_off;
    bool counted_rst;
    bool closed;          /* nghttp2 closed the stream; only the memory is left */
    bool streaming;       /* the protocol takes this request's body chunk by chunk */
    int64_t out_since_ns; /* output waiting since, or last taken by the peer (watch streams) */
};

static const rpc_call_ops h2_call_ops;

/* ---- helpers --------------------------------------------------------------------------------- */

/* A header with a literal name and a value that is static or lives in the call's arena: both
 * outlive the frame (the arena goes only after the stream closed), so nghttp2 copies neither. */
#define NV(n, v, vl)                                                     \
    (nghttp2_nv)                                                         \
    {                                                                    \
        (uint8_t *)(n), (uint8_t *)(v), sizeof(n) - 1, (vl),             \
            NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE \
    }

static bool streq_lit(const uint8_t *s, size_t n, const char *lit, size_t litn)
{
    return n == litn && memcmp(s, lit, n) == 0;
}

static void stream_unlink(h2_stream *st)
{
    transport__conn *c = st->conn;
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        c->streams = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    c->nstreams--;
}

/* The stream lets go of everything it holds; the call (and so the stream's memory) goes when
 * the handler is done too. */
static void stream_close(h2_stream *st)
{
    st->closed = true;
    stream_unlink(st);
    transport__conn_uncharge(st->conn, st->charged + st->out_charged);
    st->charged = st->out_charged = 0;
    free(st->body);
    st->body = NULL;
    if (st->out != NULL) {
        evbuffer_free(st->out);
        st->out = NULL;
    }
    rpc_call *call = st->call;
    st->call = NULL;
    if (st->bs.dispatched)
        rpc_call_detach(call);
    else
        rpc_call_abandon(call);
}

/* Response bytes are charged without refusal: an answer that was produced goes out. What limits
 * them is that a connection over its budget gets no new streams and no further stream output. */
static void out_charge(h2_stream *st, size_t n)
{
    transport__conn *c = st->conn;
    if (st->out_charged == 0)
        st->out_since_ns = pins_time_mono_ns();
    st->out_charged += n;
    transport__conn_charge_out(c, n);
}

/* Charges n more bytes to the stream (its body or its call's arena). */
static int stream_charge(h2_stream *st, size_t n)
{
    int rv = transport__conn_charge(st->conn, n);
    if (rv == 0)
        st->charged += n;
    return rv;
}

/* Charges what the call's arena grew by since its last charge (a decoded message). */
static int stream_charge_arena(h2_stream *st)
{
    size_t used = pins_arena_used(st->call->arena);
    if (used <= st->arena_charged)
        return 0;
    int rv = stream_charge(st, used - st->arena_charged);
    if (rv == 0)
        st->arena_charged = used;
    return rv;
}

/* Frees the request body buffer and gives its charge back. */
static void stream_body_free(h2_stream *st)
{
    size_t n = st->body_cap < st->charged ? st->body_cap : st->charged;
    transport__conn_uncharge(st->conn, n);
    st->charged -= n;
    free(st->body);
    st->body = NULL;
    st->body_len = st->body_cap = 0;
}

/* What a stream may have waiting for its reader before more output is refused: the call's own
 * bound (a watch stream's PINS_WATCH_PENDING_BYTES) or STREAM_PENDING_MAX. */
static size_t pending_max(const h2_stream *st)
{
    size_t m = st->call != NULL ? st->call->pending_max : 0;
    return m != 0 && m < STREAM_PENDING_MAX ? m : STREAM_PENDING_MAX;
}

static h2_stream *stream_get(transport__conn *c, int32_t id)
{
    return nghttp2_session_get_stream_user_data(c->h2, id);
}

/* ---- response side ----------------------------------------------------------------------------
 */

static ssize_t read_out(nghttp2_session *session, int32_t stream_id, uint8_t *buf, size_t length,
                        uint32_t *data_flags, nghttp2_data_source *source, void *user_data)
{
    h2_stream *st = source->ptr;
    size_t n = 0;
    bool empty;
    if (st->resp_body != NULL) {
        n = st->resp_len - st->resp_off;
        if (n > length)
            n = length;
        memcpy(buf, (const uint8_t *)st->resp_body + st->resp_off, n);
        st->resp_off += n;
        empty = st->resp_off == st->resp_len;
    } else if (st->out != NULL) {
        int got = evbuffer_remove(st->out, buf, length);
        if (got < 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        n = (size_t)got;
        if (n > 0)
            st->out_since_ns = pins_time_mono_ns();
        empty = evbuffer_get_length(st->out) == 0;
    } else {
        empty = true;
    }
    if (n > 0) {
        size_t k = n < st->out_charged ? n : st->out_charged;
        st->out_charged -= k;
        transport__conn_uncharge(st->conn, k);
        st->conn->out_progress_ns = pins_time_mono_ns();
    }
    if (!empty)
        return (ssize_t)n;
    if (!st->finished) {
        if (n > 0)
            return (ssize_t)n;
        st->deferred = true;
        return NGHTTP2_ERR_DEFERRED;
    }
    *data_flags |= NGHTTP2_DATA_FLAG_EOF;
    if (st->ntrailers > 0) {
        *data_flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
        if (nghttp2_submit_trailer(session, stream_id, st->trailers, st->ntrailers) != 0)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    return (ssize_t)n;
}

static void stream_output_ready(h2_stream *st)
{
    transport__conn *c = st->conn;
    if (st->deferred) {
        st->deferred = false;
        nghttp2_session_resume_data(c->h2, st->id);
    }
    if (c->in_recv)
        c->want_flush = true;
    else
        transport__conn_flush(c);
}

/* A server stream whose output was refused (its reader fell behind, or the budgets are spent),
 * or a watch whose reader took nothing for PINS_REQUEST_TIMEOUT_SECONDS, ends now: what it holds
 * for the reader is freed and the stream reset with ENHANCE_YOUR_CALM, which gRPC clients report
 * as RESOURCE_EXHAUSTED. Trailers would wait behind the DATA the reader does not take (or behind
 * a flow-control window it never opens), and the bytes with them. */
static void stream_abort(h2_stream *st)
{
    if (st->out != NULL) {
        evbuffer_free(st->out);
        st->out = NULL;
    }
    transport__conn_uncharge(st->conn, st->out_charged);
    st->out_charged = 0;
    st->finished = true;
    nghttp2_submit_rst_stream(st->conn->h2, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_ENHANCE_YOUR_CALM);
    stream_output_ready(st);
}

/* ---- the HTTP/2 exchange ops ------------------------------------------------------ */

static h2_stream *from_bs(proto_stream *bs)
{
    return (h2_stream *)bs; /* bs is the first member */
}

/* Submits the response HEADERS nva[0..n) (nghttp2 copies the array, not the borrowed strings),
 * with the data provider unless end: then this frame ends the stream. */
static int submit_headers(h2_stream *st, const nghttp2_nv *nva, size_t n, bool end)
{
    nghttp2_data_provider prd = {.source.ptr = st, .read_callback = read_out};
    if (nghttp2_submit_response(st->conn->h2, st->id, nva, n, end ? NULL : &prd) != 0)
        return PINS_EINTERNAL;
    st->headers_sent = true;
    if (end)
        st->finished = true;
    stream_output_ready(st);
    return 0;
}

/* The stream's output buffer (made on first use) when it may take more bytes: 0, PINS_ENOMEM,
 * or PINS_ERESOURCE_EXHAUSTED when the reader is behind (pending_max, the budgets). */
static int out_room(h2_stream *st)
{
    if (st->out == NULL) {
        st->out = evbuffer_new();
        if (st->out == NULL)
            return PINS_ENOMEM;
    }
    if (evbuffer_get_length(st->out) > pending_max(st) || transport__conn_over_budget(st->conn))
        return PINS_ERESOURCE_EXHAUSTED;
    return 0;
}

static int h2_resp_start(proto_stream *bs, int status, const rpc_header *hdrs, size_t nhdrs,
                         int64_t body_len)
{
    h2_stream *st = from_bs(bs);
    if (st->closed)
        return PINS_ECANCELLED;
    if (st->headers_sent)
        return PINS_EINTERNAL;
    pins_arena *a = st->call->arena;
    nghttp2_nv *nva = pins_arena_calloc(a, nhdrs + 4, sizeof(*nva));
    char *sstatus = pins_arena_printf(a, "%d", status);
    char *slen = body_len >= 0 ? pins_arena_printf(a, "%lld", (long long)body_len) : NULL;
    if (nva == NULL || sstatus == NULL || (body_len >= 0 && slen == NULL))
        return PINS_ENOMEM;
    size_t n = 0;
    const char *rid = rpc_call_request_id(st->call);
    nva[n++] = NV(":status", sstatus, strlen(sstatus));
    if (slen != NULL)
        nva[n++] = NV("content-length", slen, strlen(slen));
    if (rid[0] != '\0') {
        nva[n++] = NV("x-request-id", rid, strlen(rid));
        nva[n - 1].flags |= NGHTTP2_NV_FLAG_NO_INDEX;
    }
    for (size_t i = 0; i < nhdrs; i++) {
        const char *name = pins_arena_strdup(a, hdrs[i].name);
        const char *value = pins_arena_strdup(a, hdrs[i].value);
        if (name == NULL || value == NULL)
            return PINS_ENOMEM;
        nva[n++] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                                NGHTTP2_NV_FLAG_NONE};
    }
    int rv = submit_headers(st, nva, n, body_len == 0 || bs->head);
    if (rv == 0)
        bs->started = true;
    return rv;
}

static int h2_resp_write(proto_stream *bs, const void *data, size_t len)
{
    h2_stream *st = from_bs(bs);
    if (st->closed)
        return PINS_ECANCELLED;
    if (bs->head || st->finished || len == 0)
        return 0;
    int rv = out_room(st);
    if (rv != 0)
        return rv;
    if (evbuffer_add(st->out, data, len) != 0)
        return PINS_ENOMEM;
    out_charge(st, len);
    stream_output_ready(st);
    return 0;
}

static void h2_resp_end(proto_stream *bs)
{
    h2_stream *st = from_bs(bs);
    bs->ended = true;
    if (st->closed)
        return;
    st->finished = true;
    stream_output_ready(st);
}

/* Ends a streamed response with trailers: read_out submits them once the DATA drained. Names
 * and values are copied into the call's arena, which outlives the stream's frames. */
static int h2_resp_end_trailers(proto_stream *bs, const rpc_header *trailers, size_t n)
{
    h2_stream *st = from_bs(bs);
    bs->ended = true;
    if (st->closed)
        return PINS_ECANCELLED;
    pins_arena *a = st->call->arena;
    nghttp2_nv *nva = n > 0 ? pins_arena_calloc(a, n, sizeof(*nva)) : NULL;
    for (size_t i = 0; nva != NULL && i < n; i++) {
        char *name = pins_arena_strdup(a, trailers[i].name);
        char *value = pins_arena_strdup(a, trailers[i].value);
        if (name == NULL || value == NULL) {
            nva = NULL;
            break;
        }
        nva[i] = (nghttp2_nv){(uint8_t *)name, (uint8_t *)value, strlen(name), strlen(value),
                              NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE};
    }
    if (n > 0 && nva == NULL) {
        nghttp2_submit_rst_stream(st->conn->h2, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        stream_output_ready(st);
        return PINS_ENOMEM;
    }
    st->trailers = nva;
    st->ntrailers = n;
    st->finished = true;
    stream_output_ready(st);
    return 0;
}

/* One borrowed header for nghttp2 (names and values outlive the frames: see proto_hdr). Headers
 * that change from call to call are sent unindexed, so that they do not evict the stable entries
 * (content type, status, policy) from the peer's HPACK table; only the first one of each name on
 * a connection is indexed, so that the later ones refer to that name by index instead of spelling
 * it out (the names differ in length, which keys the connection's mask). */
static nghttp2_nv nv_of(transport__conn *c, const proto_hdr *h)
{
    uint8_t flags = NGHTTP2_NV_FLAG_NO_COPY_NAME | NGHTTP2_NV_FLAG_NO_COPY_VALUE;
    if (h->flags & PROTO_HDR_NEVER_INDEX) {
        flags |= NGHTTP2_NV_FLAG_NO_INDEX;
    } else if (h->flags & PROTO_HDR_VARIES) {
        uint32_t bit = h->namelen < 32 ? 1u << h->namelen : 0;
        if (bit == 0 || (c->varies_indexed & bit) != 0)
            flags |= NGHTTP2_NV_FLAG_NO_INDEX;
        c->varies_indexed |= bit;
    }
    return (nghttp2_nv){(uint8_t *)h->name, (uint8_t *)h->value, h->namelen, h->valuelen, flags};
}

/* :status and hdrs as nghttp2 headers, in nva (room for cap) or, past it, in the arena. */
static nghttp2_nv *nv_response(h2_stream *st, nghttp2_nv *nva, size_t cap, int status,
                               const proto_hdr *hdrs, size_t nhdrs, size_t *pn)
{
    pins_arena *a = st->call->arena;
    if (nhdrs + 1 > cap) {
        nva = pins_arena_alloc(a, (nhdrs + 1) * sizeof(*nva));
        if (nva == NULL)
            return NULL;
    }
    if (status == 200) {
        nva[0] = NV(":status", "200", 3);
    } else {
        char *v = pins_arena_printf(a, "%d", status);
        if (v == NULL)
            return NULL;
        nva[0] = NV(":status", v, strlen(v));
    }
    for (size_t i = 0; i < nhdrs; i++)
        nva[i + 1] = nv_of(st->conn, &hdrs[i]);
    *pn = nhdrs + 1;
    return nva;
}

/* Trailers for read_out to submit once the DATA drained, in the call's arena. */
static int set_trailers(h2_stream *st, const proto_hdr *t, size_t n)
{
    nghttp2_nv *tv = n > 0 ? pins_arena_alloc(st->call->arena, n * sizeof(*tv)) : NULL;
    if (n > 0 && tv == NULL)
        return PINS_ENOMEM;
    for (size_t i = 0; i < n; i++)
        tv[i] = nv_of(st->conn, &t[i]);
    st->trailers = tv;
    st->ntrailers = n;
    return 0;
}

/* The response headers, borrowed; whole: the body (NULL: none) and trailers are given too and
 * the response ends after them, else the body follows (write_reserve) and trailers_borrowed ends
 * it. */
static int borrowed_response(proto_stream *bs, int status, const proto_hdr *hdrs, size_t nhdrs,
                             const void *body, size_t body_len, const proto_hdr *trailers,
                             size_t ntrailers, bool whole)
{
    h2_stream *st = from_bs(bs);
    if (st->closed)
        return PINS_ECANCELLED;
    if (st->headers_sent)
        return PINS_EINTERNAL;
    nghttp2_nv stack[33];
    size_t n;
    nghttp2_nv *nva = nv_response(st, stack, 33, status, hdrs, nhdrs, &n);
    if (nva == NULL || set_trailers(st, trailers, ntrailers) != 0)
        return PINS_ENOMEM;
    if (body != NULL) {
        st->resp_body = body;
        st->resp_len = body_len;
        st->resp_off = 0;
        out_charge(st, body_len);
    }
    if (whole)
        st->finished = true; /* read_out ends the stream after the body and the trailers */
    return submit_headers(st, nva, n, whole && body == NULL && ntrailers == 0);
}

static int h2_respond_borrowed(proto_stream *bs, int status, const proto_hdr *hdrs, size_t nhdrs,
                               const void *body, size_t body_len, const proto_hdr *trailers,
                               size_t ntrailers)
{
    return borrowed_response(bs, status, hdrs, nhdrs, body, body_len, trailers, ntrailers, true);
}

static int h2_open_borrowed(proto_stream *bs, int status, const proto_hdr *hdrs, size_t nhdrs)
{
    return borrowed_response(bs, status, hdrs, nhdrs, NULL, 0, NULL, 0, false);
}

static int h2_write_reserve(proto_stream *bs, size_t len, void **pp)
{
    h2_stream *st = from_bs(bs);
    if (st->closed)
        return PINS_ECANCELLED;
    int rv = out_room(st);
    if (rv != 0)
        return rv;
    if (evbuffer_reserve_space(st->out, len, &st->resv, 1) < 1)
        return PINS_ENOMEM;
    *pp = st->resv.iov_base;
    return 0;
}

/* Before the response headers went out the bytes only wait: open_borrowed sends both at once. */
static int h2_write_commit(proto_stream *bs, size_t len)
{
    h2_stream *st = from_bs(bs);
    st->resv.iov_len = len;
    if (evbuffer_commit_space(st->out, &st->resv, 1) != 0)
        return PINS_ENOMEM;
    out_charge(st, len);
    if (st->headers_sent)
        stream_output_ready(st);
    return 0;
}

static int h2_trailers_borrowed(proto_stream *bs, const proto_hdr *trailers, size_t n)
{
    h2_stream *st = from_bs(bs);
    if (st->closed)
        return PINS_ECANCELLED;
    if (set_trailers(st, trailers, n) != 0)
        return PINS_ENOMEM;
    st->finished = true;
    stream_output_ready(st);
    return 0;
}

static void h2_reset(proto_stream *bs, int why)
{
    h2_stream *st = from_bs(bs);
    if (st->closed)
        return;
    if (why == PROTO_RESET_OVERLOAD) {
        stream_abort(st);
        return;
    }
    nghttp2_submit_rst_stream(st->conn->h2, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
    stream_output_ready(st);
}

static void h2_body_consume(proto_stream *bs, size_t n)
{
    h2_stream *st = from_bs(bs);
    memmove(st->body, st->body + n, st->body_len - n);
    st->body_len -= n;
    bs->body_len = st->body_len;
}

static void h2_body_release(proto_stream *bs)
{
    h2_stream *st = from_bs(bs);
    stream_body_free(st);
    bs->body = NULL;
    bs->body_len = 0;
}

static int h2_charge_arena(proto_stream *bs)
{
    return stream_charge_arena(from_bs(bs));
}

static const proto_stream_ops h2_exchange_ops = {.start = h2_resp_start,
                                                 .write = h2_resp_write,
                                                 .end = h2_resp_end,
                                                 .end_trailers = h2_resp_end_trailers,
                                                 .respond_borrowed = h2_respond_borrowed,
                                                 .open_borrowed = h2_open_borrowed,
                                                 .write_reserve = h2_write_reserve,
                                                 .write_commit = h2_write_commit,
                                                 .trailers_borrowed = h2_trailers_borrowed,
                                                 .reset = h2_reset,
                                                 .body_consume = h2_body_consume,
                                                 .body_release = h2_body_release,
                                                 .charge_arena = h2_charge_arena};

/* The call's ops until a protocol takes it over (proto_request_headers): nothing to send; a
 * failure resets the stream. */
static int h2_call_send(rpc_call *call, const ProtobufCMessage *msg)
{
    return PINS_EINTERNAL;
}

static void h2_call_finish(rpc_call *call, int err, const char *message)
{
    h2_stream *st = call->transport;
    if (st != NULL)
        h2_reset(&st->bs, PROTO_RESET_INTERNAL);
}

static const rpc_call_ops h2_call_ops = {.send = h2_call_send, .finish = h2_call_finish};

static void http_simple(h2_stream *st, int status, const char *body, const char *allow)
{
    rpc_header extra[1] = {{.name = "allow", .value = allow}};
    st->kind = KIND_REJECTED;
    st->bs.ops = &h2_exchange_ops;
    st->bs.call = st->call;
    proto_respond(&st->bs, status, "application/json", body, strlen(body), extra, allow ? 1 : 0);
}

/* Refuses a request to a method path (Connect, gRPC-Web) that no protocol has taken, in its
 * protocol's shape; its remaining body is dropped. False, doing nothing, for any other path: REST
 * keeps its own error bodies. */
static bool http_reject_rpc(h2_stream *st, int err, const char *message)
{
    if (st->path == NULL || rpc_method_find(st->path, strcspn(st->path, "?")) == NULL)
        return false;
    st->kind = KIND_REJECTED;
    proto_reject(&st->bs, err, message != NULL ? message : pins_strerror(err));
    return true;
}

/* ---- request side ------------------------------------------------------------------------------
 */

static void fill_exchange(h2_stream *st)
{
    st->bs.ops = &h2_exchange_ops;
    st->bs.call = st->call;
    st->bs.worker = st->conn->w;
    st->bs.method = st->method;
    st->bs.path = st->path;
    st->bs.content_type = st->content_type;
    st->bs.http2 = true;
    st->bs.head = strcmp(st->method, "HEAD") == 0;
}

/* HEADERS complete: the protocols decide what the stream is and how its body is taken. */
static void on_request_headers(h2_stream *st)
{
    rpc_call *call = st->call;
    if (rpc_call_set_request_id(call, st->request_id_hdr) != 0) {
        nghttp2_submit_rst_stream(st->conn->h2, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_INTERNAL_ERROR);
        return;
    }
    if (st->path == NULL || st->method == NULL) {
        nghttp2_submit_rst_stream(st->conn->h2, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_PROTOCOL_ERROR);
        st->kind = KIND_REJECTED;
        return;
    }
    fill_exchange(st);
    switch (proto_request_headers(&st->bs)) {
    case PROTO_BODY_DROP:
        if (!st->bs.answered)
            nghttp2_submit_rst_stream(st->conn->h2, NGHTTP2_FLAG_NONE, st->id,
                                      NGHTTP2_INTERNAL_ERROR);
        st->kind = KIND_REJECTED;
        break;
    case PROTO_BODY_WHOLE:
        st->kind = KIND_HTTP;
        break;
    case PROTO_BODY_STREAM:
        st->kind = KIND_HTTP;
        st->streaming = true;
        break;
    case PROTO_BODY_BUFFERED:
        st->kind = KIND_BUFFERED;
        break;
    }
}

static void on_http_request(h2_stream *st)
{
    st->kind = KIND_REJECTED; /* answered once */
    if (st->streaming) {
        proto_body_end(&st->bs);
        return;
    }
    st->bs.body = st->body;
    st->bs.body_len = st->body_len;
    proto_handle(&st->bs);
}

static void on_request_end(h2_stream *st)
{
    st->request_done = true;
    if (st->kind == KIND_HTTP) {
        on_http_request(st);
        return;
    }
    if (st->kind == KIND_BUFFERED && !st->bs.answered)
        proto_body_end(&st->bs);
}

/* ---- nghttp2 callbacks --------------------------------------------------------------------------
 */

static int on_begin_headers(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    transport__conn *c = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    if (transport__conn_over_budget(c)) {
        /* The connection (or the process) holds its budget of buffered bytes, typically answers
         * its peer does not read: no new work until they drain. REFUSED_STREAM tells the
         * client that nothing was done, so it may retry. */
        transport__metrics_buffer_refused();
        nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                                  NGHTTP2_REFUSED_STREAM);
        return 0;
    }
    rpc_call *call = rpc_call_new(c->w, NULL, &h2_call_ops, NULL, c->w->arena_limit);
    if (call == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    h2_stream *st = pins_arena_calloc(call->arena, 1, sizeof(*st));
    if (st == NULL) {
        rpc_call_abandon(call);
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    }
    call->transport = st;
    st->call = call;
    st->conn = c;
    st->id = frame->hd.stream_id;
    st->begin_ns = call->start_ns;
    st->next = c->streams;
    if (c->streams != NULL)
        c->streams->prev = st;
    c->streams = st;
    c->nstreams++;
    nghttp2_session_set_stream_user_data(session, st->id, st);
    return 0;
}

static int on_header(nghttp2_session *session, const nghttp2_frame *frame, const uint8_t *name,
                     size_t namelen, const uint8_t *value, size_t valuelen, uint8_t flags,
                     void *user_data)
{
    transport__conn *c = user_data;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    h2_stream *st = stream_get(c, frame->hd.stream_id);
    if (st == NULL || st->call == NULL)
        return 0;
    rpc_call *call = st->call;
    if (frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0; /* request trailers are ignored */
    st->header_bytes += namelen + valuelen + 32;
    if (call->nheaders >= MAX_HEADERS || st->header_bytes > MAX_HEADER_BYTES)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE; /* resets this stream only */
    if (namelen > 0 && name[0] == ':') {
        /* :scheme and :authority are not needed past nghttp2's own checks. */
        const char **slot = streq_lit(name, namelen, ":path", 5)     ? &st->path
                            : streq_lit(name, namelen, ":method", 7) ? &st->method
                                                                     : NULL;
        if (slot != NULL) {
            *slot = pins_arena_strndup(call->arena, (const char *)value, valuelen);
            if (*slot == NULL)
                return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        }
        return 0;
    }
    const char *v = pins_arena_strndup(call->arena, (const char *)value, valuelen);
    if (v == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    const char *n = pins_arena_strndup(call->arena, (const char *)name, namelen);
    if (n == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    if (call->nheaders == st->cap_headers) {
        size_t cap = st->cap_headers ? st->cap_headers * 2 : 16;
        rpc_header *nh = pins_arena_alloc(call->arena, cap * sizeof(*nh));
        if (nh == NULL)
            return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
        if (call->nheaders > 0)
            memcpy(nh, call->headers, call->nheaders * sizeof(*nh));
        call->headers = nh;
        st->cap_headers = cap;
    }
    call->headers[call->nheaders++] = (rpc_header){.name = n, .value = v};
    switch (namelen) {
    case 12:
        if (memcmp(name, "content-type", 12) == 0)
            st->content_type = v;
        else if (memcmp(name, "x-request-id", 12) == 0)
            st->request_id_hdr = v;
        break;
    default:
        break;
    }
    return 0;
}

/* A request body the stream will not hold (PINS_ETOO_LARGE: over its limit;
 * PINS_ERESOURCE_EXHAUSTED: no room in the buffer budgets), refused in its protocol's shape:
 * native gRPC and the method paths of Connect and gRPC-Web through the protocols, REST with the
 * API's error body. What still comes of the body is dropped. */
static void refuse_body(h2_stream *st, int err)
{
    static const struct {
        int err;
        int status;
        const char *message;
        const char *body;
    } rows[] = {
        {PINS_ETOO_LARGE, 413, "request body larger than MAX_REQUEST_BYTES",
         "{\"detail\":\"request body larger than MAX_REQUEST_BYTES\",\"code\":8,"
         "\"message\":\"message larger than the limit\"}"},
        {PINS_ERESOURCE_EXHAUSTED, 503, "the server holds too many request bytes; retry later",
         "{\"detail\":\"the server holds too many request bytes; retry later\",\"code\":8,"
         "\"message\":\"resource exhausted\"}"},
    };
    size_t i = err == PINS_ETOO_LARGE ? 0 : 1;
    if (st->kind == KIND_BUFFERED)
        proto_reject(&st->bs, rows[i].err, NULL);
    else if (!http_reject_rpc(st, rows[i].err, rows[i].message))
        http_simple(st, rows[i].status, rows[i].body, NULL);
    st->kind = KIND_REJECTED;
}

static int on_data_chunk(nghttp2_session *session, uint8_t flags, int32_t stream_id,
                         const uint8_t *data, size_t len, void *user_data)
{
    transport__conn *c = user_data;
    h2_stream *st = stream_get(c, stream_id);
    if (st == NULL || st->call == NULL || (st->kind != KIND_BUFFERED && st->kind != KIND_HTTP) ||
        st->bs.answered)
        return 0; /* a rejected request: its remaining body is dropped */
    if (st->streaming) {
        proto_body(&st->bs, data, len);
        return 0;
    }
    bool buffered = st->kind == KIND_BUFFERED;
    size_t max = buffered ? st->bs.body_max : (size_t)c->w->server->cfg->max_request_bytes;
    if (st->body_len + len > st->body_cap) {
        size_t cap = st->body_cap ? st->body_cap : 1024;
        while (cap < st->body_len + len)
            cap *= 2;
        if (cap > max)
            cap = max;
        if (cap < st->body_len + len) {
            refuse_body(st, PINS_ETOO_LARGE);
            return 0;
        }
        if (stream_charge(st, cap - st->body_cap) != 0) {
            refuse_body(st, PINS_ERESOURCE_EXHAUSTED);
            return 0;
        }
        unsigned char *nb = realloc(st->body, cap);
        if (nb == NULL) {
            if (buffered)
                proto_reject(&st->bs, PINS_ENOMEM, NULL);
            else
                nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, st->id,
                                          NGHTTP2_INTERNAL_ERROR);
            st->kind = KIND_REJECTED;
            return 0;
        }
        st->body = nb;
        st->body_cap = cap;
    }
    memcpy(st->body + st->body_len, data, len);
    st->body_len += len;
    st->bs.body = st->body;
    st->bs.body_len = st->body_len;
    if (buffered)
        proto_body_more(&st->bs);
    return 0;
}

static int on_frame_recv(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    transport__conn *c = user_data;
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS: {
        h2_stream *st = stream_get(c, frame->hd.stream_id);
        if (st == NULL || st->call == NULL)
            return 0;
        if (frame->headers.cat == NGHTTP2_HCAT_REQUEST)
            on_request_headers(st);
        if (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)
            on_request_end(st);
        break;
    }
    case NGHTTP2_DATA: {
        h2_stream *st = stream_get(c, frame->hd.stream_id);
        if (st != NULL && st->call != NULL && (frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
            on_request_end(st);
        break;
    }
    default:
        break;
    }
    return 0;
}

static int on_frame_send(nghttp2_session *session, const nghttp2_frame *frame, void *user_data)
{
    transport__conn *c = user_data;
    /* A rejected request still sending its body: end the stream once our answer is out
     * (RFC 9113 section 8.1: RST_STREAM NO_ERROR after a complete response). */
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        h2_stream *st = stream_get(c, frame->hd.stream_id);
        if (st != NULL && !st->request_done && !st->counted_rst) {
            st->counted_rst = true;
            nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_NO_ERROR);
        }
    }
    /* A GOAWAY with an error is nghttp2 ending the session on its own: a protocol error (grpcio
     * cancelling a call at the wrong moment sends RST_STREAM for a stream whose HEADERS it never
     * sent, a connection error by RFC 9113 section 6.4), a flood of control frames, or a peer
     * resetting streams faster than its rate limit. Counted; logged at debug level only, since
     * a peer decides how often it happens. */
    if (frame->hd.type == NGHTTP2_GOAWAY && frame->goaway.error_code != NGHTTP2_NO_ERROR) {
        char last[16];
        snprintf(last, sizeof(last), "%d", frame->goaway.last_stream_id);
        pins_log_debug("connection ended by GOAWAY", "error",
                       nghttp2_http2_strerror(frame->goaway.error_code), "last_stream_id", last,
                       NULL);
        transport__metrics_conn_closed("protocol_error");
    }
    return 0;
}

/* nghttp2's reason for a connection or stream error it detected (a peer's protocol error). */
static int on_error(nghttp2_session *session, int lib_error_code, const char *msg, size_t len,
                    void *user_data)
{
    if (pins_log_enabled(PINS_LOG_DEBUG)) {
        char detail[256];
        snprintf(detail, sizeof(detail), "%.*s", (int)(len < 200 ? len : 200), msg);
        pins_log_debug("http/2 error", "error", nghttp2_strerror(lib_error_code), "detail", detail,
                       NULL);
    }
    return 0;
}

/* A frame nghttp2 refused (it answers with RST_STREAM or GOAWAY itself). */
static int on_invalid_frame(nghttp2_session *session, const nghttp2_frame *frame,
                            int lib_error_code, void *user_data)
{
    if (pins_log_enabled(PINS_LOG_DEBUG)) {
        char type[8], sid[16];
        snprintf(type, sizeof(type), "%u", frame->hd.type);
        snprintf(sid, sizeof(sid), "%d", frame->hd.stream_id);
        pins_log_debug("http/2 frame refused", "error", nghttp2_strerror(lib_error_code),
                       "frame_type", type, "stream_id", sid, NULL);
    }
    return 0;
}

/* nghttp2 could not send a frame. For a response's HEADERS (or trailers) that means the stream
 * would never end (a header block over the limit): reset it so that the client hears the end
 * and the stream's slot is freed. */
static int on_frame_not_send(nghttp2_session *session, const nghttp2_frame *frame,
                             int lib_error_code, void *user_data)
{
    /* A stream the peer already reset or closed needs nothing more. */
    if (frame->hd.type != NGHTTP2_HEADERS || frame->hd.stream_id == 0 ||
        lib_error_code == NGHTTP2_ERR_STREAM_CLOSED ||
        lib_error_code == NGHTTP2_ERR_STREAM_CLOSING ||
        lib_error_code == NGHTTP2_ERR_SESSION_CLOSING)
        return 0;
    char code[16];
    snprintf(code, sizeof(code), "%d", lib_error_code);
    pins_log_warn("response headers could not be sent; stream reset", "error",
                  nghttp2_strerror(lib_error_code), "code", code, NULL);
    nghttp2_submit_rst_stream(session, NGHTTP2_FLAG_NONE, frame->hd.stream_id,
                              NGHTTP2_INTERNAL_ERROR);
    return 0;
}

static int on_stream_close(nghttp2_session *session, int32_t stream_id, uint32_t error_code,
                           void *user_data)
{
    transport__conn *c = user_data;
    h2_stream *st = stream_get(c, stream_id);
    if (st == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(session, stream_id, NULL);
    stream_close(st);
    return 0;
}

int transport__h2_start(transport__conn *c)
{
    nghttp2_session_callbacks *cbs;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return PINS_ENOMEM;
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, on_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_frame_not_send);
    nghttp2_session_callbacks_set_error_callback2(cbs, on_error);
    nghttp2_session_callbacks_set_on_invalid_frame_recv_callback(cbs, on_invalid_frame);
    nghttp2_option *opt;
    if (nghttp2_option_new(&opt) != 0) {
        nghttp2_session_callbacks_del(cbs);
        return PINS_ENOMEM;
    }
    nghttp2_option_set_max_send_header_block_length(opt, 65536);
    nghttp2_option_set_max_deflate_dynamic_table_size(opt, 4096);
    int rv = nghttp2_session_server_new2(&c->h2, cbs, c, opt);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_option_del(opt);
    if (rv != 0)
        return PINS_ENOMEM;
    const pins_config *cfg = c->w->server->cfg;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, (uint32_t)cfg->max_concurrent_streams},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1u << 20},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, MAX_HEADER_BYTES},
        /* RFC 9218: no RFC 7540 priority tree to maintain per stream. */
        {NGHTTP2_SETTINGS_NO_RFC7540_PRIORITIES, 1},
    };
    if (nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 4) != 0)
        return PINS_ENOMEM;
    /* A larger connection window so that several big uploads do not stall each other. */
    nghttp2_session_set_local_window_size(c->h2, NGHTTP2_FLAG_NONE, 0, 16 << 20);
    c->proto = TRANSPORT__H2;
    if (c->w->draining)
        transport_conn_drain_all(c->tw);
    return 0;
}

static void stream_timeout(h2_stream *st)
{
    transport__conn *c = st->conn;
    int secs = c->w->server->cfg->request_timeout_seconds;
    if (st->kind == KIND_BUFFERED) {
        proto_reject(
            &st->bs, PINS_EDEADLINE_EXCEEDED,
            pins_arena_printf(st->call->arena, "request not complete within %d seconds", secs));
    } else if (st->kind == KIND_HTTP && !st->streaming &&
               http_reject_rpc(st, PINS_EDEADLINE_EXCEEDED,
                               pins_arena_printf(st->call->arena,
                                                 "request not complete within %d seconds", secs))) {
        /* Connect and gRPC-Web: answered with their own deadline_exceeded. */
    } else if (st->kind == KIND_HTTP && !st->streaming) {
        /* REST: 408, the client's timeout (the error table's 504 is the server's). */
        const char *body = pins_arena_printf(st->call->arena,
                                             "{\"detail\":\"request not complete within %d "
                                             "seconds\",\"code\":4,\"message\":\"deadline "
                                             "exceeded\"}",
                                             secs);
        if (body != NULL)
            http_simple(st, 408, body, NULL);
        else
            nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
    } else {
        nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, st->id, NGHTTP2_CANCEL);
    }
    st->kind = KIND_REJECTED; /* answered once: the tick and the request's end pass it over */
}

void transport__h2_recv(transport__conn *c, struct evbuffer *in)
{
    struct evbuffer_iovec vec[8];
    while (!c->closing) {
        int nv = evbuffer_peek(in, -1, NULL, vec, 8);
        if (nv <= 0)
            break;
        size_t consumed = 0;
        for (int i = 0; i < nv && i < 8; i++) {
            ssize_t rv = nghttp2_session_mem_recv(c->h2, vec[i].iov_base, vec[i].iov_len);
            if (rv < 0) {
                c->closing = true;
                break;
            }
            consumed += (size_t)rv;
        }
        evbuffer_drain(in, consumed);
        if (nv <= 8)
            break;
    }
}

/* Frames gathered for one write to the socket. */
typedef struct wbatch {
    transport__conn *c;
    struct evbuffer *out; /* the bufferevent's output: what the socket did not take */
    size_t len;
    uint8_t buf[H2_WBATCH];
} wbatch;

/* Writes b's frames, then extra, to the socket; what it does not take (or all of it, on an
 * error, which the bufferevent then meets and reports) goes to the output buffer. Returns 0 or
 * -1 (out of memory). */
static int wbatch_write(wbatch *b, const uint8_t *extra, size_t elen)
{
    struct iovec iov[2] = {{b->buf, b->len}, {(void *)extra, elen}};
    int niov = elen > 0 ? 2 : 1;
    ssize_t n;
    do
        n = writev(b->c->plain_fd, iov, niov);
    while (n < 0 && errno == EINTR);
    size_t skip = n > 0 ? (size_t)n : 0;
    b->c->wire_sent += skip;
    b->len = 0;
    int rv = 0;
    for (int i = 0; i < niov; i++) {
        if (skip >= iov[i].iov_len) {
            skip -= iov[i].iov_len;
            continue;
        }
        rv |= evbuffer_add(b->out, (const uint8_t *)iov[i].iov_base + skip, iov[i].iov_len - skip);
        skip = 0;
    }
    return rv == 0 ? 0 : -1;
}

/* Pulls frames from nghttp2 until it has none or the output buffer reaches its high-water mark
 * (the bufferevent's write callback asks again once the socket took it).
 *
 * A plaintext connection whose output buffer is empty writes the frames straight to the socket,
 * gathered into one writev per H2_WBATCH bytes, as h2o and nghttpd do: through the buffer, each
 * answer would cost two epoll_ctl calls (the write event on and off) and a loop turn for the
 * write event, which at a steady rate of single calls is a fifth of the worker's time. Only
 * what the socket does not take is buffered, and while anything is buffered everything goes
 * behind it, in order. Over TLS the bufferevent encrypts and writes. */
int transport__h2_send(transport__conn *c)
{
    wbatch b = {.c = c, .out = bufferevent_get_output(c->bev)};
    for (;;) {
        size_t buffered = evbuffer_get_length(b.out);
        if (b.len + buffered >= TRANSPORT__OUTPUT_HIGH_WATER)
            break;
        const uint8_t *d = NULL;
        ssize_t n = nghttp2_session_mem_send(c->h2, &d);
        if (n < 0)
            return (int)n;
        if (n == 0)
            break;
        if (c->plain_fd < 0 || buffered > 0) {
            /* Behind what waits (b holds nothing then: it fills only while nothing waits). */
            if (evbuffer_add(b.out, d, (size_t)n) != 0)
                return NGHTTP2_ERR_NOMEM;
        } else if ((size_t)n <= sizeof(b.buf) - b.len) {
            memcpy(b.buf + b.len, d, (size_t)n);
            b.len += (size_t)n;
        } else if (wbatch_write(&b, d, (size_t)n) != 0) {
            return NGHTTP2_ERR_NOMEM;
        }
    }
    if (b.len > 0 && wbatch_write(&b, NULL, 0) != 0)
        return NGHTTP2_ERR_NOMEM;
    return 0;
}

bool transport__h2_want_write(const transport__conn *c)
{
    return nghttp2_session_want_write(c->h2) != 0;
}

bool transport__h2_done(const transport__conn *c)
{
    return !nghttp2_session_want_read(c->h2) && !nghttp2_session_want_write(c->h2);
}

void transport__h2_goaway(transport__conn *c)
{
    c->goaway_sent = true;
    nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE, nghttp2_session_get_last_proc_stream_id(c->h2),
                          NGHTTP2_NO_ERROR, NULL, 0);
}

void transport__h2_free(transport__conn *c)
{
    while (c->streams != NULL) {
        h2_stream *st = c->streams;
        nghttp2_session_set_stream_user_data(c->h2, st->id, NULL);
        stream_close(st);
    }
    nghttp2_session_del(c->h2);
    c->h2 = NULL;
}

bool transport__h2_tick(transport__conn *c, int64_t now, int64_t limit)
{
    bool answered = false;
    for (h2_stream *st = c->streams; st != NULL; st = st->next) {
        if (st->call != NULL && st->call->pending_max != 0 && st->out_charged > 0 &&
            now - st->out_since_ns >= limit) {
            stream_abort(st); /* a watch stream whose reader took nothing */
            answered = true;
            continue;
        }
        if (st->request_done || st->bs.dispatched || st->bs.answered || st->kind == KIND_REJECTED ||
            now - st->begin_ns < limit)
            continue;
        stream_timeout(st);
        transport__metrics_request_timeout();
        answered = true;
    }
    return answered;
}
