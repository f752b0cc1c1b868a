/* transport/h1.c: HTTP/1.1 connections: requests from the parser (transport/h1_parse.c), answered
 * one at a time, in order, through the protocols (protocols/protocols.h).
 *
 * Each request is an exchange: an rpc_call (its arena holds the request and the exchange struct)
 * and a proto_stream whose ops write the response into the connection's bufferevent. The parser
 * stops after each complete request; the next one is parsed only once the response ended, so
 * pipelined requests are answered strictly in order and at most one exchange is alive. A response
 * that ends inside proto_handle() lets the parse loop go on at once; one that ends later (a store
 * callback, a probe) wakes the loop through resume_ev, so the loop never recurses.
 *
 * Lifetimes: the connection (socket, freeing) belongs to transport/conn.c, which calls
 * transport__h1_free() when it goes. The exchange then lets go of its call; a handler still holding
 * the call may call the ops later: the exchange lives in the call's arena and its closed flag turns
 * every op into a no-op, so nothing here is touched after free.
 *
 * Bounds: the parser bounds the request (transport/h1_parse.h); slow headers are cut after 10 s and
 * a whole request (headers and body) after PINS_REQUEST_TIMEOUT_SECONDS, with 408; the body buffer
 * is charged to the connection's and the process's budget of buffered bytes
 * (transport__conn_charge), and a request that does not fit is refused with 503; the input buffer
 * stops growing while a request is answered (read high-water mark); the next pipelined request
 * waits while more than 1 MiB of output is pending, and write() refuses past 4 MiB so that a client
 * that does not read cannot grow our memory.
 */
#include "transport/h1.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "protocols/protocols.h"
#include "transport/h1_parse.h"
#include "common/fmt.h"
#include "common/timeutil.h"

#define HEADER_TIMEOUT_SECONDS 10
#define OUTPUT_PENDING_MAX     (4u << 20) /* write() refuses past this */
#define OUTPUT_RESUME_MAX      (1u << 20) /* the next pipelined request waits past this */
#define INPUT_HIGH_WATER       (256u << 10)

typedef struct h1_exchange {
    proto_stream bs; /* first member: the ops get &bs */
    transport_h1 *h; /* NULL once closed */
    bool closed;     /* the connection let go: every op is a no-op */
    bool http10;
    bool chunked;
    bool no_body; /* HEAD, 1xx, 204, 304: no body bytes on the wire */
    bool close_after;
    int64_t remaining; /* Content-Length bytes still to write; -1 without a Content-Length */
} h1_exchange;

struct transport_h1 {
    transport__conn *conn;
    rpc_worker *w;
    transport_h1_parser p;
    struct event *header_timer; /* the request's headers, then its body, are late */
    struct event *resume_ev;    /* an answer ended outside the parse loop */
    int64_t begin_ns;           /* the request's first byte */
    size_t body_charged;        /* the parser's body buffer, charged to the connection */
    h1_exchange *ex;            /* the request being received or answered; NULL between requests */
    bool answering;             /* ex's request is with the protocols */
    bool in_process;
    bool closing; /* no further request: close once the exchange is gone */
    bool close_requested;
    bool draining;
};

static const proto_stream_ops h1_ops;
static const rpc_call_ops h1_call_ops;
static void body_uncharge(transport_h1 *h);
static void answer_refused_body(transport_h1 *h);

static const char timeout_body[] =
    "{\"detail\":\"request headers not complete within 10 seconds\",\"code\":4,"
    "\"message\":\"deadline exceeded\"}";
static const char body_timeout_fmt[] =
    "{\"detail\":\"request body not complete within %d seconds\",\"code\":4,"
    "\"message\":\"deadline exceeded\"}";
static const char nomem_body[] =
    "{\"detail\":\"out of memory\",\"code\":8,\"message\":\"out of memory\"}";

/* ---- helpers --------------------------------------------------------------------------------- */

static const struct {
    int status;
    const char *text;
} reasons[] = {
    {100, "Continue"},
    {200, "OK"},
    {201, "Created"},
    {202, "Accepted"},
    {204, "No Content"},
    {301, "Moved Permanently"},
    {302, "Found"},
    {304, "Not Modified"},
    {307, "Temporary Redirect"},
    {308, "Permanent Redirect"},
    {400, "Bad Request"},
    {401, "Unauthorized"},
    {403, "Forbidden"},
    {404, "Not Found"},
    {405, "Method Not Allowed"},
    {406, "Not Acceptable"},
    {408, "Request Timeout"},
    {409, "Conflict"},
    {410, "Gone"},
    {411, "Length Required"},
    {412, "Precondition Failed"},
    {413, "Content Too Large"},
    {414, "URI Too Long"},
    {415, "Unsupported Media Type"},
    {417, "Expectation Failed"},
    {422, "Unprocessable Content"},
    {426, "Upgrade Required"},
    {429, "Too Many Requests"},
    {431, "Request Header Fields Too Large"},
    {499, "Client Closed Request"},
    {500, "Internal Server Error"},
    {501, "Not Implemented"},
    {502, "Bad Gateway"},
    {503, "Service Unavailable"},
    {504, "Gateway Timeout"},
    {505, "HTTP Version Not Supported"},
};

static const char *reason_phrase(int status)
{
    for (size_t i = 0; i < sizeof(reasons) / sizeof(reasons[0]); i++) {
        if (reasons[i].status == status)
            return reasons[i].text;
    }
    return "";
}

static struct evbuffer *output(transport_h1 *h)
{
    return bufferevent_get_output(transport__conn_bev(h->conn));
}

/* Appends s and CRLF. Returns 0 or -1. */
static int add_line_end(struct evbuffer *b, const char *s)
{
    return evbuffer_add(b, s, strlen(s)) == 0 && evbuffer_add(b, "\r\n", 2) == 0 ? 0 : -1;
}

/* Appends "name: value" and CRLF. Returns 0 or -1. */
static int add_header(struct evbuffer *b, const char *name, const char *value)
{
    if (evbuffer_add(b, name, strlen(name)) != 0 || evbuffer_add(b, ": ", 2) != 0)
        return -1;
    return add_line_end(b, value);
}

/* The Date header's value for now (IMF-fixdate), formatted once a second per thread; "" when
 * the clock cannot be read. */
static const char *http_date(void)
{
    static _Thread_local time_t at = -1;
    static _Thread_local char text[40];
    time_t now = time(NULL);
    if (now != at) {
        struct tm tm;
        if (gmtime_r(&now, &tm) == NULL ||
            strftime(text, sizeof(text), "%a, %d %b %Y %H:%M:%S GMT", &tm) == 0)
            text[0] = '\0';
        at = now;
    }
    return text;
}

/* A response header a protocol may set: the framing headers are ours, and a name or value that
 * could break the message (CR, LF) is dropped rather than sent. */
static bool header_allowed(const rpc_header *hd)
{
    if (hd->name == NULL || hd->value == NULL || hd->name[0] == '\0')
        return false;
    if (strpbrk(hd->name, "\r\n: \t") != NULL || strpbrk(hd->value, "\r\n") != NULL)
        return false;
    return strcasecmp(hd->name, "content-length") != 0 &&
           strcasecmp(hd->name, "transfer-encoding") != 0 &&
           strcasecmp(hd->name, "connection") != 0 && strcasecmp(hd->name, "x-request-id") != 0;
}

/* message as the inside of a JSON string, in arena a (NULL when out of memory). */
static char *json_text(pins_arena *a, const char *message)
{
    size_t n = strlen(message);
    char *out = pins_arena_alloc(a, n * 6 + 1);
    if (out == NULL)
        return NULL;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)message[i];
        if (ch == '"' || ch == '\\') {
            out[o++] = '\\';
            out[o++] = (char)ch;
        } else if (ch < 0x20) {
            static const char hex[] = "0123456789abcdef";
            memcpy(out + o, "\\u00", 4);
            out[o + 4] = hex[ch >> 4];
            out[o + 5] = hex[ch & 15];
            o += 6;
        } else {
            out[o++] = (char)ch;
        }
    }
    out[o] = '\0';
    return out;
}

static h1_exchange *exchange_new(transport_h1 *h)
{
    rpc_call *call = rpc_call_new(h->w, NULL, &h1_call_ops, NULL, h->w->arena_limit);
    if (call == NULL)
        return NULL;
    h1_exchange *ex = pins_arena_calloc(call->arena, 1, sizeof(*ex));
    if (ex == NULL) {
        rpc_call_abandon(call);
        return NULL;
    }
    call->transport = ex;
    ex->bs.ops = &h1_ops;
    ex->bs.call = call;
    ex->bs.worker = h->w;
    ex->bs.method = "";
    ex->bs.path = "";
    ex->h = h;
    ex->remaining = -1;
    h->ex = ex;
    return ex;
}

/* The connection lets go of the exchange (answered, or the connection goes): the call is
 * released per protocols/protocols.h, which may free the exchange. */
static void exchange_release(transport_h1 *h)
{
    h1_exchange *ex = h->ex;
    if (ex == NULL)
        return;
    h->ex = NULL;
    h->answering = false;
    ex->closed = true;
    ex->h = NULL;
    rpc_call *call = ex->bs.call;
    if (ex->bs.dispatched)
        rpc_call_detach(call);
    else
        rpc_call_abandon(call);
}

/* Answers an error for the request being received and closes the connection afterwards. */
static void answer_error(transport_h1 *h, int status, const char *body)
{
    evtimer_del(h->header_timer);
    h->closing = true;
    if (h->ex == NULL && exchange_new(h) == NULL)
        return; /* out of memory: the connection just closes */
    h1_exchange *ex = h->ex;
    rpc_call *call = ex->bs.call;
    ex->close_after = true;
    h->answering = true;
    if (h->p.arena == call->arena) {
        call->headers = h->p.headers;
        call->nheaders = h->p.nheaders;
    }
    if (call->request_id == NULL)
        rpc_call_set_request_id(call, rpc_call_header(call, "x-request-id"));
    proto_respond(&ex->bs, status, "application/json", body, strlen(body), NULL, 0);
}

/* The exchange gets the parsed request line and headers (its headers are complete). */
static void take_request_head(transport_h1 *h)
{
    h1_exchange *ex = h->ex;
    transport_h1_parser *p = &h->p;
    rpc_call *call = ex->bs.call;
    call->headers = p->headers;
    call->nheaders = p->nheaders;
    ex->bs.method = p->method;
    ex->bs.path = p->path;
    ex->bs.http2 = false;
    ex->bs.head = p->head;
}

/* The request is complete: hand it to the protocols. */
static void dispatch(transport_h1 *h)
{
    h1_exchange *ex = h->ex;
    transport_h1_parser *p = &h->p;
    take_request_head(h);
    ex->bs.body = p->body;
    ex->bs.body_len = p->body_len;
    ex->http10 = p->http10;
    /* An Upgrade is not honoured, and llhttp parses nothing after one: close after it. */
    ex->close_after = !p->keep_alive || p->upgrade;
    if (ex->close_after)
        h->closing = true;
    h->answering = true;
    proto_handle(&ex->bs);
}

/* Feeds what is buffered to the parser until a request is complete or refused. */
static int parse_buffered(transport_h1 *h, struct evbuffer *in)
{
    while (evbuffer_get_length(in) > 0) {
        struct evbuffer_iovec v;
        if (evbuffer_peek(in, -1, NULL, &v, 1) < 1 || v.iov_len == 0)
            break;
        size_t used = 0;
        int r = transport_h1_parser_feed(&h->p, v.iov_base, v.iov_len, &used);
        evbuffer_drain(in, used);
        if (r != TRANSPORT_H1_MORE)
            return r;
    }
    return TRANSPORT_H1_MORE;
}

/* The connection's one loop: retires an answered exchange, parses and dispatches the next
 * request, and closes when nothing more will come. It may free h (through transport__conn_close) as
 * its very last step, so every caller returns right after it. */
static void process(transport_h1 *h)
{
    if (h->in_process || h->close_requested)
        return;
    h->in_process = true;
    struct bufferevent *bev = transport__conn_bev(h->conn);
    struct evbuffer *in = bufferevent_get_input(bev);
    for (;;) {
        if (h->ex != NULL && h->ex->bs.ended) {
            if (h->ex->close_after)
                h->closing = true;
            exchange_release(h);
            transport_h1_parser_next(&h->p);
            body_uncharge(h);
        }
        if (h->draining && h->ex == NULL)
            h->closing = true;
        if (h->closing || h->answering)
            break;
        if (evbuffer_get_length(bufferevent_get_output(bev)) > OUTPUT_RESUME_MAX)
            break; /* transport__h1_on_write_done resumes */
        int r = parse_buffered(h, in);
        if (h->answering)
            break; /* refused on its headers (refused_on_headers): answered already */
        if (r == TRANSPORT_H1_MORE)
            break;
        if (r == TRANSPORT_H1_REJECT && h->p.reject_err != 0 && h->ex != NULL &&
            h->p.method != NULL && h->p.path != NULL && !transport_h1_parser_in_headers(&h->p))
            answer_refused_body(h);
        else if (r == TRANSPORT_H1_REJECT)
            answer_error(h, h->p.reject_status, h->p.reject_body);
        else
            dispatch(h);
    }
    h->in_process = false;
    if (h->closing && h->ex != NULL && !h->answering)
        exchange_release(h); /* a request half received when the connection closes */
    if (h->closing && h->ex == NULL) {
        h->close_requested = true;
        evtimer_del(h->header_timer);
        transport__conn_close(h->conn, true);
    }
}

/* ---- parser hooks and events ----------------------------------------------------------------- */

static pins_arena *on_request_begin(void *owner)
{
    transport_h1 *h = owner;
    if (h->ex == NULL && exchange_new(h) == NULL)
        return NULL;
    h->begin_ns = pins_time_mono_ns();
    int secs = h->w->server->cfg->request_timeout_seconds;
    struct timeval tv = {.tv_sec = secs < HEADER_TIMEOUT_SECONDS ? secs : HEADER_TIMEOUT_SECONDS};
    evtimer_add(h->header_timer, &tv);
    return h->ex->bs.call->arena;
}

/* The request's headers are complete and it is answered before its body: the exchange gets the
 * parsed request line and headers, and the answer's head says "connection: close" (set before it
 * starts). */
static void answer_before_body(transport_h1 *h)
{
    take_request_head(h);
    h->ex->close_after = true;
    h->closing = true;
    h->answering = true;
}

/* The parser refused a request whose headers it had (its body too large, or no room in the
 * buffer budget): the answer takes the request's protocol shape (REST, Connect, gRPC-Web). */
static void answer_refused_body(transport_h1 *h)
{
    const char *path = h->p.path;
    if (rpc_method_find(path, strcspn(path, "?")) == NULL) {
        answer_error(h, h->p.reject_status, h->p.reject_body); /* REST: its own error body */
        return;
    }
    evtimer_del(h->header_timer);
    answer_before_body(h);
    proto_reject(&h->ex->bs, h->p.reject_err,
                 h->p.reject_err == PINS_ETOO_LARGE
                     ? "request body larger than MAX_REQUEST_BYTES"
                     : "the server holds too many request bytes; retry later");
}

/* Under RBAC_ENFORCE=true the headers alone may refuse the request (proto_headers_or_reply):
 * it is answered now, its body is dropped unread, and the connection closes after the answer
 * (transport/conn.c lingers so that the body still arriving cannot reset it). True when refused. */
static bool refused_on_headers(transport_h1 *h)
{
    h1_exchange *ex = h->ex;
    transport_h1_parser *p = &h->p;
    answer_before_body(h);
    if (proto_headers_or_reply(&ex->bs)) {
        ex->close_after = false;
        h->closing = false;
        h->answering = false;
        return false;
    }
    p->discard_body = true;
    evtimer_del(h->header_timer);
    return true;
}

static void on_request_headers(void *owner, bool expect_continue)
{
    transport_h1 *h = owner;
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    if (refused_on_headers(h))
        return; /* no "100 Continue": the body is not wanted */
    /* The body must follow within what is left of PINS_REQUEST_TIMEOUT_SECONDS. */
    int64_t left = (int64_t)h->w->server->cfg->request_timeout_seconds * 1000000000 -
                   (pins_time_mono_ns() - h->begin_ns);
    if (left < 0)
        left = 0;
    struct timeval tv = {.tv_sec = left / 1000000000, .tv_usec = (left % 1000000000) / 1000};
    evtimer_add(h->header_timer, &tv);
    if (expect_continue)
        evbuffer_add(output(h), cont, sizeof(cont) - 1);
}

static int on_body_grow(void *owner, size_t add)
{
    transport_h1 *h = owner;
    int rv = transport__conn_charge(h->conn, add);
    if (rv == 0)
        h->body_charged += add;
    return rv;
}

static const transport_h1_parser_hooks hooks = {
    .begin = on_request_begin, .headers_done = on_request_headers, .body_grow = on_body_grow};

/* The headers, or the body after them, did not arrive in time: 408 and close. */
static void on_header_timeout(evutil_socket_t fd, short what, void *arg)
{
    transport_h1 *h = arg;
    if (h->close_requested || h->answering || h->ex == NULL ||
        !transport_h1_parser_in_request(&h->p))
        return;
    transport__metrics_request_timeout();
    if (transport_h1_parser_in_headers(&h->p)) {
        answer_error(h, 408, timeout_body);
    } else {
        const char *body = pins_arena_printf(h->ex->bs.call->arena, body_timeout_fmt,
                                             h->w->server->cfg->request_timeout_seconds);
        answer_error(h, 408, body != NULL ? body : timeout_body);
    }
    process(h);
}

/* Gives back the charge of body buffer bytes the parser no longer holds. */
static void body_uncharge(transport_h1 *h)
{
    if (h->p.body_cap < h->body_charged) {
        transport__conn_uncharge(h->conn, h->body_charged - h->p.body_cap);
        h->body_charged = h->p.body_cap;
    }
}

static void on_resume(evutil_socket_t fd, short what, void *arg)
{
    process(arg);
}

/* ---- exchange ops ---------------------------------------------------------------------------- */

static int h1_start(proto_stream *s, int status, const rpc_header *hdrs, size_t nhdrs,
                    int64_t body_len)
{
    h1_exchange *ex = (h1_exchange *)s;
    if (ex->closed)
        return PINS_ECANCELLED;
    if (s->started)
        return PINS_EINTERNAL;
    transport_h1 *h = ex->h;
    if (h->draining || h->w->draining)
        ex->close_after = true;
    bool bodyless = (status >= 100 && status < 200) || status == 204 || status == 304;
    ex->no_body = s->head || bodyless;
    ex->chunked = false;
    ex->remaining = -1;
    if (!bodyless && body_len >= 0 && !s->head)
        ex->remaining = body_len;
    else if (!bodyless && body_len < 0 && ex->http10)
        ex->close_after = true; /* no chunked coding for HTTP/1.0: the close ends the body */
    else if (!bodyless && body_len < 0)
        ex->chunked = true;

    struct evbuffer *buf = evbuffer_new();
    if (buf == NULL)
        return PINS_ENOMEM;
    int rv = PINS_ENOMEM;
    const char *date = http_date();
    char status_line[64];
    char *p = memcpy(status_line, "HTTP/1.1 ", 9);
    p = pins_fmt_digits(p + 9, (uint64_t)status, 3);
    *p++ = ' ';
    if (evbuffer_add(buf, status_line, (size_t)(p - status_line)) != 0 ||
        add_line_end(buf, reason_phrase(status)) != 0)
        goto out;
    if (date[0] != '\0' && add_header(buf, "date", date) != 0)
        goto out;
    const char *rid = rpc_call_request_id(s->call);
    if (rid[0] != '\0' && strpbrk(rid, "\r\n") == NULL && add_header(buf, "x-request-id", rid) != 0)
        goto out;
    for (size_t i = 0; i < nhdrs; i++) {
        if (header_allowed(&hdrs[i]) && add_header(buf, hdrs[i].name, hdrs[i].value) != 0)
            goto out;
    }
    if (!bodyless && body_len >= 0) {
        char len[PINS_FMT_INT_MAX];
        pins_fmt_i64(len, body_len);
        if (add_header(buf, "content-length", len) != 0)
            goto out;
    }
    if (ex->chunked && add_header(buf, "transfer-encoding", "chunked") != 0)
        goto out;
    if (ex->close_after && add_header(buf, "connection", "close") != 0)
        goto out;
    if (!ex->close_after && ex->http10 && add_header(buf, "connection", "keep-alive") != 0)
        goto out;
    if (evbuffer_add(buf, "\r\n", 2) != 0 || evbuffer_add_buffer(output(h), buf) != 0)
        goto out;
    s->started = true;
    if (ex->close_after)
        h->closing = true;
    rv = 0;
out:
    evbuffer_free(buf);
    return rv;
}

static int h1_write(proto_stream *s, const void *data, size_t len)
{
    h1_exchange *ex = (h1_exchange *)s;
    if (ex->closed)
        return PINS_ECANCELLED;
    if (!s->started || s->ended)
        return PINS_EINTERNAL;
    if (ex->no_body || len == 0)
        return 0;
    struct evbuffer *out = output(ex->h);
    /* A watch stream has its own, smaller bound (PINS_WATCH_PENDING_BYTES). */
    size_t max = s->call->pending_max;
    if (max == 0 || max > OUTPUT_PENDING_MAX)
        max = OUTPUT_PENDING_MAX;
    if (evbuffer_get_length(out) > max)
        return PINS_ERESOURCE_EXHAUSTED;
    if (ex->remaining >= 0) {
        if ((uint64_t)len > (uint64_t)ex->remaining)
            return PINS_EINTERNAL; /* more than the Content-Length announced */
        ex->remaining -= (int64_t)len;
    }
    int rv = 0;
    if (ex->chunked && evbuffer_add_printf(out, "%zx\r\n", len) < 0)
        rv = PINS_ENOMEM;
    if (rv == 0 && evbuffer_add(out, data, len) != 0)
        rv = PINS_ENOMEM;
    if (rv == 0 && ex->chunked && evbuffer_add(out, "\r\n", 2) != 0)
        rv = PINS_ENOMEM;
    if (rv != 0)
        ex->close_after = true; /* the framing may be broken: only closing is safe */
    return rv;
}

static void h1_end(proto_stream *s)
{
    h1_exchange *ex = (h1_exchange *)s;
    if (s->ended)
        return;
    if (!ex->closed && !s->started && h1_start(s, 500, NULL, 0, 0) != 0)
        ex->close_after = true;
    s->ended = true;
    if (ex->closed)
        return;
    transport_h1 *h = ex->h;
    if (ex->chunked && !ex->no_body && evbuffer_add(output(h), "0\r\n\r\n", 5) != 0)
        ex->close_after = true;
    if (ex->remaining > 0)
        ex->close_after = true; /* a short body: only the close tells the client */
    if (ex->close_after)
        h->closing = true;
    if (!h->in_process)
        event_active(h->resume_ev, EV_TIMEOUT, 1);
}

static const proto_stream_ops h1_ops = {.start = h1_start, .write = h1_write, .end = h1_end};

/* ---- the call's ops until a protocol takes the call over ------------------------------------- */

/* No message can be sent before a protocol took the exchange. */
static int h1_call_send(rpc_call *call, const ProtobufCMessage *msg)
{
    return PINS_EINTERNAL;
}

/* An error on the exchange before a protocol took the call over: the API's JSON error. */
static void h1_call_finish(rpc_call *call, int err, const char *message)
{
    h1_exchange *ex = call->transport;
    if (ex == NULL || ex->closed || ex->bs.started || ex->bs.ended)
        return;
    if (err == 0)
        err = PINS_EINTERNAL;
    char *detail = json_text(call->arena, message != NULL ? message : pins_strerror(err));
    char *body = detail == NULL
                     ? NULL
                     : pins_arena_printf(call->arena,
                                         "{\"detail\":\"%s\",\"code\":%d,"
                                         "\"message\":\"%s\"}",
                                         detail, pins_error_grpc(err), pins_strerror(err));
    if (body == NULL)
        proto_respond(&ex->bs, 503, "application/json", nomem_body, sizeof(nomem_body) - 1, NULL,
                      0);
    else
        proto_respond(&ex->bs, pins_error_http(err), "application/json", body, strlen(body), NULL,
                      0);
}

static const rpc_call_ops h1_call_ops = {.send = h1_call_send, .finish = h1_call_finish};

/* ---- public ---------------------------------------------------------------------------------- */

transport_h1 *transport__h1_new(transport__conn *c)
{
    transport_h1 *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    h->conn = c;
    h->w = transport__conn_worker(c);
    h->header_timer = evtimer_new(h->w->base, on_header_timeout, h);
    h->resume_ev = event_new(h->w->base, -1, 0, on_resume, h);
    if (h->header_timer == NULL || h->resume_ev == NULL) {
        if (h->header_timer != NULL)
            event_free(h->header_timer);
        if (h->resume_ev != NULL)
            event_free(h->resume_ev);
        free(h);
        return NULL;
    }
    transport_h1_parser_init(&h->p, (size_t)h->w->server->cfg->max_request_bytes, &hooks, h);
    bufferevent_setwatermark(transport__conn_bev(c), EV_READ, 0, INPUT_HIGH_WATER);
    return h;
}

void transport__h1_on_read(transport_h1 *h, struct evbuffer *in)
{
    process(h);
}

void transport__h1_on_write_done(transport_h1 *h)
{
    process(h);
}

void transport__h1_drain(transport_h1 *h)
{
    h->draining = true;
    if (h->ex != NULL && h->ex->bs.started)
        h->ex->close_after = true; /* its head went out without "connection: close" */
    process(h);
}

bool transport__h1_busy(const transport_h1 *h)
{
    return h->answering || transport_h1_parser_in_headers(&h->p);
}

void transport__h1_free(transport_h1 *h)
{
    exchange_release(h);
    event_free(h->header_timer);
    event_free(h->resume_ev);
    transport_h1_parser_free(&h->p);
    body_uncharge(h);
    free(h);
}
