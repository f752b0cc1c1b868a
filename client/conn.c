/* client/conn.c: the event-driven core of libpins-client: pins_conn (connections to one server
 * on the caller's libevent base) and pins_call (one gRPC call or plain GET).
 *
 * A pins_conn holds a list of links (one TCP or TLS connection with an nghttp2 client session
 * each): the current link takes new streams; a link that got a GOAWAY or ran out of stream ids
 * drains (its streams finish) and is closed when it has none left. Calls wait in the conn's list
 * (state QUEUED) until the current link is connected and has a free stream slot
 * (max_concurrent_streams, lowered to the server's SETTINGS); then they become HTTP/2 streams
 * (ACTIVE). A call that the server provably did not process (refused stream, stream above a
 * GOAWAY's last id, HEADERS never sent, connection never made) is queued again; one that failed
 * with UNAVAILABLE (or RESOURCE_EXHAUSTED with a short retry-after) waits a backoff (BACKOFF) when
 * its method is idempotent. Every call has a deadline timer covering all of that.
 *
 * I/O: a non-blocking socket watched with two libevent events; nghttp2 is driven with mem_recv
 * and mem_send, TLS (tls.c) sits between through memory BIOs, so one byte pump serves h2c and TLS.
 * Sends use MSG_NOSIGNAL. Pending output is bounded (the pump stops pulling from nghttp2 above
 * OUT_HIGH bytes). Host names are resolved with getaddrinfo, which blocks.
 *
 * Lifetimes: a call is owned by the conn from pins_conn_start until its on_done returns; a
 * reference count keeps it alive while a callback runs on it, so a callback may cancel it. Links
 * are reference counted the same way around their event handlers; nghttp2 is never re-entered
 * from its own callbacks (they only submit, and the kick event flushes). on_done never runs
 * inside pins_conn_start: the start only queues the call and activates the kick event.
 */
#include "pins/client.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <nghttp2/nghttp2.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "client/client_int.h"
#include "client/grpc_parse.h"
#include "common/base64.h"
#include "common/buf.h"

/* Output bytes above which the pump stops asking nghttp2 for more until the socket drains. */
#define OUT_HIGH (256u << 10)
/* Immediate re-queues of one call (refused streams, GOAWAY) before it fails. */
#define MAX_TRANSPARENT 10
/* Durations (deadlines, backoffs, timeouts) are clamped to this (100 years), so that sums with
 * the monotonic clock and doublings never overflow. */
#define MAX_MS ((int64_t)100 * 365 * 24 * 3600 * 1000)
/* Reads per readable event, so that one busy link cannot starve the loop. */
#define READS_PER_EVENT 16

typedef struct h2link h2link;

typedef enum call_state { CS_QUEUED, CS_ACTIVE, CS_BACKOFF, CS_DONE } call_state;

/* How a failed attempt may be retried. */
typedef enum retry_kind {
    RETRY_NOW,         /* not processed: queue again at once (refused stream, GOAWAY) */
    RETRY_UNPROCESSED, /* not processed, connection trouble: again after a backoff */
    RETRY_STATUS,      /* processed or unknown: by the status and the method */
} retry_kind;

struct pins_call {
    pins_conn *conn;
    pins_call *prev, *next; /* conn->calls while not DONE */
    uint64_t seq;           /* order of start: a sweep touches only calls older than itself */
    int refs;
    call_state state;
    const pins_method *m; /* NULL for a GET */
    char *path;           /* the GET's path (new) */
    uint8_t *body;        /* the request: 5-byte prefix + packed message (new) */
    size_t body_len;
    size_t body_off;
    char *request_id;      /* new */
    pins_metadata_list md; /* caller metadata to send, -bin values already base64 */
    int64_t deadline;      /* monotonic ms, 0: none */
    int64_t timeout_ms;    /* for the deadline message */
    struct event *timer;   /* the deadline */
    struct event *wake;    /* backoff end, or a deferred failure */
    bool fail_on_wake;     /* st holds a failure to report from the wake event */
    int attempts;
    int retries;     /* retries after a backoff */
    int transparent; /* immediate re-queues */
    bool no_retry;
    bool discard;
    h2link *link;
    int32_t stream_id;
    bool headers_sent;
    int send_error; /* nghttp2's reason the request HEADERS could not be sent, or 0 */
    bool got_headers;
    bool got_end;   /* the server ended the stream with END_STREAM */
    bool delivered; /* a stream message went to on_message */
    client__parse parse;
    pins_buf get_body; /* the GET's body */
    char **pget_body;
    size_t *pget_len;
    ProtobufCMessage *resp;
    pins_status st;
    pins_message_cb on_message;
    pins_done_cb on_done;
    void *arg;
};

struct h2link {
    pins_conn *conn;
    h2link *next;
    int refs;
    bool dead;
    bool connecting;
    bool handshaking;
    bool ready;
    bool draining;
    bool permanent;     /* failed in a way a retry cannot fix (certificate verification) */
    bool goaway_unused; /* GOAWAY arrived before the link carried a stream */
    int fd;
    struct event *ev_read;
    struct event *ev_write;
    struct event *ev_timer;
    struct addrinfo *ai_list;
    struct addrinfo *ai_cur;
    client__tls *tls;
    nghttp2_session *h2;
    uint8_t *out;
    size_t out_len;
    size_t out_off;
    size_t out_cap;
    size_t active;  /* open streams */
    size_t started; /* streams ever submitted */
    char err[256];
};

struct pins_conn {
    struct event_base *base;
    char *host;
    char *port;
    char *authority;
    bool tls;
    char *server_name;
    char *machine_token;
    char *bearer; /* "Bearer <token>" */
    char *user_agent;
    int64_t timeout_ms;
    int64_t connect_timeout_ms;
    int64_t backoff_initial_ms;
    int64_t backoff_max_ms;
    int max_retries;
    size_t max_message;
    size_t max_header;
    uint32_t max_streams;
    client__tls_ctx *tls_ctx;
    h2link *cur;
    h2link *links;
    pins_call *calls_head;
    pins_call *calls_tail;
    size_t pending;
    uint64_t seq;      /* the next call's seq */
    bool freeing;      /* pins_conn_free is running: no new calls */
    bool in_kick;      /* on_kick is running */
    int depth;         /* handlers of this conn running (nested): pins_conn_free waits for 0 */
    bool free_pending; /* pins_conn_free was called from a callback: free at depth 0 */
    struct event *kick;
    uint64_t rng;
    uint64_t rid_prefix; /* x-request-id: 64 random bits per connection object ... */
    uint64_t rid_seq;    /* ... then a sequence number: unique without a system call per call */
};

static void schedule_kick(pins_conn *conn);
static void link_unref(h2link *l);
static void link_fail(h2link *l, bool connect_failure, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void call_unref(pins_call *call);
static void conn_destroy(pins_conn *conn);

/* Every entry from the event loop (and pins_call_cancel) brackets its work with these, so that
 * pins_conn_free called from a callback frees the conn only once the outermost handler is
 * done with it (STYLE #14: deferred free). */
static void conn_enter(pins_conn *conn)
{
    conn->depth++;
}

static void conn_leave(pins_conn *conn)
{
    if (--conn->depth == 0 && conn->free_pending)
        conn_destroy(conn);
}

/* ---- helpers ------------------------------------------------------------------------------- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t clamp_ms(int64_t ms)
{
    return ms > MAX_MS ? MAX_MS : ms;
}

static struct timeval tv_of(int64_t ms)
{
    if (ms < 0)
        ms = 0;
    struct timeval tv = {.tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000};
    return tv;
}

static uint64_t rng_next(pins_conn *conn)
{
    uint64_t x = conn->rng;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    conn->rng = x;
    return x * 0x2545F4914F6CDD1DULL;
}

static void random_bytes(pins_conn *conn, uint8_t *p, size_t n)
{
    ssize_t got = getrandom(p, n, GRND_NONBLOCK);
    if (got == (ssize_t)n)
        return;
    for (size_t i = 0; i < n; i++)
        p[i] = (uint8_t)(rng_next(conn) >> 32);
}

/* A new x-request-id: 32 hex digits, the connection's random prefix and its next sequence number
 * (ids are unique across processes by the prefix, within one connection by the number; drawing 16
 * random bytes per call cost a getrandom system call each). */
static char *new_request_id(pins_conn *conn)
{
    static const char hex[] = "0123456789abcdef";
    uint8_t r[16];
    uint64_t seq = conn->rid_seq++;
    for (size_t i = 0; i < 8; i++) {
        r[i] = (uint8_t)(conn->rid_prefix >> (56 - 8 * i));
        r[8 + i] = (uint8_t)(seq >> (56 - 8 * i));
    }
    char *id = malloc(33);
    if (id == NULL)
        return NULL;
    for (size_t i = 0; i < 16; i++) {
        id[2 * i] = hex[r[i] >> 4];
        id[2 * i + 1] = hex[r[i] & 15];
    }
    id[32] = '\0';
    return id;
}

static bool valid_md_name(const char *s)
{
    if (s == NULL || *s == '\0')
        return false;
    for (; *s != '\0'; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.'))
            return false;
    }
    return true;
}

static bool reserved_md_name(const char *s)
{
    static const char *const names[] = {"content-type",         "te",
                                        "user-agent",           "grpc-timeout",
                                        "x-request-id",         "authorization",
                                        "x-machine-token",      "grpc-encoding",
                                        "grpc-accept-encoding", "host",
                                        "connection",           "transfer-encoding"};
    for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++)
        if (strcmp(s, names[i]) == 0)
            return true;
    return false;
}

/* ---- calls: list, finish, retry ------------------------------------------------------------ */

static void call_ref(pins_call *call)
{
    call->refs++;
}

static void call_free(pins_call *call)
{
    if (call->timer != NULL)
        event_free(call->timer);
    if (call->wake != NULL)
        event_free(call->wake);
    free(call->path);
    free(call->body);
    free(call->request_id);
    client__md_clear(&call->md);
    client__parse_free(&call->parse);
    pins_buf_free(&call->get_body);
    pins_message_free(call->resp);
    pins_status_clear(&call->st);
    free(call);
}

static void call_unref(pins_call *call)
{
    if (--call->refs == 0)
        call_free(call);
}

static void list_remove(pins_conn *conn, pins_call *call)
{
    if (call->prev != NULL)
        call->prev->next = call->next;
    else
        conn->calls_head = call->next;
    if (call->next != NULL)
        call->next->prev = call->prev;
    else
        conn->calls_tail = call->prev;
    call->prev = call->next = NULL;
}

/* Detaches the call from its stream (reset with CANCEL when still open). */
static void call_detach(pins_call *call)
{
    h2link *l = call->link;
    if (l == NULL)
        return;
    if (!l->dead && l->h2 != NULL && call->stream_id > 0) {
        nghttp2_session_set_stream_user_data(l->h2, call->stream_id, NULL);
        nghttp2_submit_rst_stream(l->h2, NGHTTP2_FLAG_NONE, call->stream_id, NGHTTP2_CANCEL);
        schedule_kick(call->conn);
    }
    call->link = NULL;
    call->stream_id = 0;
}

/* Ends the call with call->st and runs on_done (exactly once). */
static void call_finish(pins_call *call)
{
    if (call->state == CS_DONE)
        return;
    pins_conn *conn = call->conn;
    call_detach(call);
    call->state = CS_DONE;
    list_remove(conn, call);
    conn->pending--;
    event_del(call->timer);
    event_del(call->wake);
    call->st.attempts = call->attempts;
    if (call->st.request_id == NULL)
        call->st.request_id = client__strdup(call->request_id);
    if (call->st.message == NULL)
        call->st.message = client__text("");
    ProtobufCMessage *resp = NULL;
    if (call->st.code == PINS_CODE_OK) {
        resp = call->resp;
        call->resp = NULL;
    }
    if (call->pget_body != NULL && call->st.code == PINS_CODE_OK) {
        size_t len = 0;
        char *b = pins_buf_take(&call->get_body, &len);
        if (b == NULL)
            b = client__strdup("");
        if (b == NULL) {
            client__status_set(&call->st, PINS_CODE_RESOURCE_EXHAUSTED, "out of memory");
        } else {
            *call->pget_body = b;
            if (call->pget_len != NULL)
                *call->pget_len = len;
        }
    }
    call->on_done(call->arg, resp, &call->st);
    call_unref(call);
}

static void call_fail(pins_call *call, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void call_fail(pins_call *call, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    client__status_vset(&call->st, code, fmt, ap);
    va_end(ap);
    call_finish(call);
}

static bool deadline_passed(const pins_call *call, int64_t delay)
{
    return call->deadline != 0 && delay >= call->deadline - now_ms();
}

/* The attempt ended with call->st; retries it or finishes the call. */
static void call_retry_or_finish(pins_call *call, retry_kind kind)
{
    pins_conn *conn = call->conn;
    call_detach(call);
    if (kind == RETRY_NOW && call->transparent < MAX_TRANSPARENT && !call->delivered &&
        !deadline_passed(call, 0)) {
        pins_message_free(call->resp);
        call->resp = NULL;
        call->transparent++;
        call->state = CS_QUEUED;
        schedule_kick(conn);
        return;
    }
    bool allowed = false;
    int64_t delay = -1;
    int code = call->st.code;
    if (kind == RETRY_UNPROCESSED || kind == RETRY_NOW) {
        allowed = true;
    } else if (call->m != NULL && call->m->idempotent) {
        if (code == PINS_CODE_UNAVAILABLE)
            allowed = true;
        else if (code == PINS_CODE_RESOURCE_EXHAUSTED && call->st.retry_after_ms >= 0 &&
                 call->st.retry_after_ms <= conn->backoff_max_ms) {
            allowed = true;
            delay = call->st.retry_after_ms;
        }
    }
    if (call->no_retry || call->delivered || call->retries >= conn->max_retries)
        allowed = false;
    if (kind != RETRY_UNPROCESSED && kind != RETRY_NOW && call->m == NULL)
        allowed = false; /* a GET is never retried with backoff */
    if (allowed && delay < 0) {
        int64_t cap = conn->backoff_initial_ms;
        for (int i = 0; i < call->retries && cap < conn->backoff_max_ms; i++)
            cap = cap > conn->backoff_max_ms / 2 ? conn->backoff_max_ms : cap * 2;
        if (cap > conn->backoff_max_ms)
            cap = conn->backoff_max_ms;
        delay = cap > 0 ? (int64_t)(rng_next(conn) % (uint64_t)(cap + 1)) : 0;
    }
    if (allowed && deadline_passed(call, delay))
        allowed = false;
    if (!allowed) {
        call_finish(call);
        return;
    }
    pins_message_free(call->resp);
    call->resp = NULL;
    call->retries++;
    call->state = CS_BACKOFF;
    struct timeval tv = tv_of(delay);
    event_add(call->wake, &tv);
}

static void on_call_deadline(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pins_call *call = arg;
    pins_conn *conn = call->conn;
    conn_enter(conn);
    call_ref(call);
    call_fail(call, PINS_CODE_DEADLINE_EXCEEDED, "deadline exceeded after %lld ms",
              (long long)call->timeout_ms);
    call_unref(call);
    conn_leave(conn);
}

static void on_call_wake(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pins_call *call = arg;
    if (call->state == CS_DONE)
        return;
    pins_conn *conn = call->conn;
    conn_enter(conn);
    call_ref(call);
    if (call->fail_on_wake) {
        call_finish(call);
    } else if (call->state == CS_BACKOFF) {
        call->state = CS_QUEUED;
        schedule_kick(call->conn);
    }
    call_unref(call);
    conn_leave(conn);
}

/* ---- the link's byte pump ------------------------------------------------------------------ */

static void link_ref(h2link *l)
{
    l->refs++;
}

static int out_add(h2link *l, const uint8_t *p, size_t n)
{
    if (l->out_off > 0 && l->out_off == l->out_len)
        l->out_off = l->out_len = 0;
    if (n > l->out_cap - l->out_len) {
        if (l->out_off > 0) {
            memmove(l->out, l->out + l->out_off, l->out_len - l->out_off);
            l->out_len -= l->out_off;
            l->out_off = 0;
        }
        if (n > l->out_cap - l->out_len) {
            size_t cap = l->out_cap == 0 ? 16384 : l->out_cap;
            while (cap - l->out_len < n)
                cap *= 2;
            uint8_t *o = realloc(l->out, cap);
            if (o == NULL)
                return -1;
            l->out = o;
            l->out_cap = cap;
        }
    }
    memcpy(l->out + l->out_len, p, n);
    l->out_len += n;
    return 0;
}

static int take_tls_output(h2link *l)
{
    uint8_t buf[16384];
    for (;;) {
        size_t n = client__tls_take(l->tls, buf, sizeof(buf));
        if (n == 0)
            return 0;
        if (out_add(l, buf, n) != 0)
            return -1;
    }
}

/* Pulls frames from nghttp2 (through TLS) and writes what the socket takes, until nghttp2 has
 * nothing more to send or the socket is full (then the write event calls again). */
static void link_flush(h2link *l)
{
    if (l->dead || l->connecting)
        return;
    bool full;
again:
    full = false;
    if (l->ready) {
        for (;;) {
            if (l->out_len - l->out_off >= OUT_HIGH) {
                full = true; /* more frames may wait: pulled again once the socket took these */
                break;
            }
            const uint8_t *d = NULL;
            ssize_t n = nghttp2_session_mem_send(l->h2, &d);
            if (n < 0) {
                link_fail(l, false, "http/2 session failed: %s", nghttp2_strerror((int)n));
                return;
            }
            if (n == 0)
                break;
            if (l->tls != NULL) {
                char err[200];
                if (client__tls_write(l->tls, d, (size_t)n, err, sizeof(err)) != 0) {
                    link_fail(l, false, "tls: %s", err);
                    return;
                }
                if (take_tls_output(l) != 0) {
                    link_fail(l, false, "out of memory");
                    return;
                }
            } else if (out_add(l, d, (size_t)n) != 0) {
                link_fail(l, false, "out of memory");
                return;
            }
        }
    } else if (l->tls != NULL && take_tls_output(l) != 0) {
        link_fail(l, false, "out of memory");
        return;
    }
    while (l->out_off < l->out_len) {
        ssize_t s = send(l->fd, l->out + l->out_off, l->out_len - l->out_off, MSG_NOSIGNAL);
        if (s > 0) {
            l->out_off += (size_t)s;
            continue;
        }
        if (s < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
            event_add(l->ev_write, NULL);
            return;
        }
        if (s < 0 && errno == EINTR)
            continue;
        link_fail(l, false, "connection to %s lost: %s", l->conn->authority, strerror(errno));
        return;
    }
    l->out_off = l->out_len = 0;
    /* The buffer filled before nghttp2 ran out of frames (a body larger than OUT_HIGH): the socket
     * took it all, so pull the rest now. Nothing else would: the peer's window may be open, with
     * no frame of its own on the way to wake the connection up. */
    if (full)
        goto again;
    event_del(l->ev_write);
    if (l->ready && !nghttp2_session_want_read(l->h2) && !nghttp2_session_want_write(l->h2))
        link_fail(l, false, "connection closed");
    else if (l->ready && l->draining && l->active == 0)
        link_fail(l, false, "connection drained");
}

/* ---- nghttp2 callbacks --------------------------------------------------------------------- */

static pins_call *stream_call(nghttp2_session *s, int32_t id)
{
    pins_call *call = nghttp2_session_get_stream_user_data(s, id);
    return call != NULL && call->state == CS_ACTIVE ? call : NULL;
}

static ssize_t read_body(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                         uint32_t *flags, nghttp2_data_source *src, void *user)
{
    (void)src;
    (void)user;
    pins_call *call = stream_call(s, id);
    if (call == NULL)
        return NGHTTP2_ERR_TEMPORAL_CALLBACK_FAILURE;
    size_t n = call->body_len - call->body_off;
    if (n > length)
        n = length;
    memcpy(buf, call->body + call->body_off, n);
    call->body_off += n;
    if (call->body_off == call->body_len)
        *flags |= NGHTTP2_DATA_FLAG_EOF;
    return (ssize_t)n;
}

static int on_msg(void *arg, const uint8_t *data, size_t len)
{
    pins_call *call = arg;
    if (call->state != CS_ACTIVE)
        return PINS_CODE_CANCELLED;
    if (!call->m->server_streaming) {
        if (call->parse.messages > 1)
            return client__parse_fail(&call->parse, PINS_CODE_INTERNAL,
                                      "more than one message in a unary response");
        if (call->discard)
            return 0;
        call->resp = protobuf_c_message_unpack(call->m->output, NULL, len, data);
        if (call->resp == NULL)
            return client__parse_fail(&call->parse, PINS_CODE_INTERNAL, "undecodable response");
        return 0;
    }
    ProtobufCMessage *msg = protobuf_c_message_unpack(call->m->output, NULL, len, data);
    if (msg == NULL)
        return client__parse_fail(&call->parse, PINS_CODE_INTERNAL, "undecodable response");
    call->delivered = true;
    if (call->on_message != NULL)
        call->on_message(call->arg, msg);
    else
        pins_message_free(msg);
    return call->state == CS_ACTIVE ? 0 : PINS_CODE_CANCELLED;
}

/* The stream's parse failed: end the call with the parser's status (the stream is reset). */
static void fail_from_parse(pins_call *call)
{
    client__parse_finish(&call->parse, &call->st);
    call->st.from_server = false;
    call_finish(call);
}

static int on_data_chunk(nghttp2_session *s, uint8_t flags, int32_t id, const uint8_t *data,
                         size_t len, void *user)
{
    (void)flags;
    (void)user;
    pins_call *call = stream_call(s, id);
    if (call == NULL)
        return 0;
    if (call->m == NULL) {
        if (pins_buf_add(&call->get_body, data, len) != 0)
            call_fail(call, PINS_CODE_RESOURCE_EXHAUSTED, "response body larger than %zu bytes",
                      call->conn->max_message);
        return 0;
    }
    call_ref(call);
    int rv = client__parse_data(&call->parse, data, len, on_msg, call);
    if (rv != 0 && call->state == CS_ACTIVE)
        fail_from_parse(call);
    call_unref(call);
    return 0;
}

static int on_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                     size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *user)
{
    (void)flags;
    (void)user;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    pins_call *call = stream_call(s, frame->hd.stream_id);
    if (call == NULL)
        return 0;
    call->got_headers = true;
    if (call->m == NULL) {
        if (nlen == 7 && memcmp(name, ":status", 7) == 0) { /* 1xx first, then the final */
            int st = 0;
            for (size_t i = 0; i < vlen && i < 4; i++)
                st = st * 10 + (value[i] - '0');
            call->parse.http_status = st;
        }
        return 0;
    }
    if (client__parse_header(&call->parse, (const char *)name, nlen, (const char *)value, vlen) !=
        0) {
        fail_from_parse(call);
        return 0;
    }
    return 0;
}

static int on_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *user)
{
    h2link *l = user;
    if ((frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
        (frame->hd.flags & NGHTTP2_FLAG_END_STREAM)) {
        pins_call *call = stream_call(s, frame->hd.stream_id);
        if (call != NULL)
            call->got_end = true;
    }
    switch (frame->hd.type) {
    case NGHTTP2_HEADERS: {
        pins_call *call = stream_call(s, frame->hd.stream_id);
        if (call != NULL && call->m != NULL && client__parse_end_block(&call->parse) != 0)
            fail_from_parse(call);
        break;
    }
    case NGHTTP2_GOAWAY:
        l->draining = true;
        if (l->conn->cur == l && l->started == 0) {
            /* Refused before any use: for the calls waiting on it this is a connection that
             * could not be made (an attempt and a backoff), failed by on_link_read once
             * nghttp2 has returned, so that a server answering every connection with GOAWAY
             * cannot make them reconnect at once without end. */
            l->goaway_unused = true;
        } else if (l->conn->cur == l) {
            l->conn->cur = NULL;
        }
        schedule_kick(l->conn);
        break;
    case NGHTTP2_SETTINGS:
        schedule_kick(l->conn);
        break;
    default:
        break;
    }
    return 0;
}

static int on_frame_send(nghttp2_session *s, const nghttp2_frame *frame, void *user)
{
    (void)user;
    if (frame->hd.type == NGHTTP2_HEADERS) {
        pins_call *call = stream_call(s, frame->hd.stream_id);
        if (call != NULL)
            call->headers_sent = true;
    }
    return 0;
}

/* nghttp2 would not send the request HEADERS (larger than the 256 KiB block it sends, say): the
 * stream is then closed as refused, but the request itself is at fault and is not retried. */
static int on_frame_not_send(nghttp2_session *s, const nghttp2_frame *frame, int lib_error,
                             void *user)
{
    (void)user;
    if (frame->hd.type != NGHTTP2_HEADERS)
        return 0;
    pins_call *call = stream_call(s, frame->hd.stream_id);
    if (call != NULL)
        call->send_error = lib_error != 0 ? lib_error : NGHTTP2_ERR_INVALID_ARGUMENT;
    return 0;
}

static int rst_code(uint32_t err, const char **pmsg)
{
    switch (err) {
    case NGHTTP2_CANCEL:
        *pmsg = "stream cancelled by the server";
        return PINS_CODE_CANCELLED;
    case NGHTTP2_REFUSED_STREAM:
        *pmsg = "stream refused by the server";
        return PINS_CODE_UNAVAILABLE;
    case NGHTTP2_ENHANCE_YOUR_CALM:
        *pmsg = "stream reset by the server: enhance your calm";
        return PINS_CODE_RESOURCE_EXHAUSTED;
    case NGHTTP2_INADEQUATE_SECURITY:
        *pmsg = "stream reset by the server: inadequate security";
        return PINS_CODE_PERMISSION_DENIED;
    default:
        *pmsg = "stream reset";
        return PINS_CODE_INTERNAL;
    }
}

static int on_stream_close(nghttp2_session *s, int32_t id, uint32_t err, void *user)
{
    h2link *l = user;
    if (l->active > 0)
        l->active--;
    schedule_kick(l->conn);
    pins_call *call = stream_call(s, id);
    if (call == NULL)
        return 0;
    nghttp2_session_set_stream_user_data(s, id, NULL);
    call->link = NULL;
    call->stream_id = 0;
    call_ref(call);
    if (!call->headers_sent && call->send_error != 0) {
        client__status_set(&call->st,
                           call->send_error == NGHTTP2_ERR_FRAME_SIZE_ERROR
                               ? PINS_CODE_RESOURCE_EXHAUSTED
                               : PINS_CODE_INVALID_ARGUMENT,
                           "request headers cannot be sent: %s (metadata larger than %u bytes?)",
                           nghttp2_strerror(call->send_error), 256u << 10);
        call_finish(call);
    } else if (!call->headers_sent || (err == NGHTTP2_REFUSED_STREAM && !call->got_headers)) {
        client__status_set(&call->st, PINS_CODE_UNAVAILABLE, "stream refused by the server");
        call_retry_or_finish(call, RETRY_NOW);
    } else if (call->m == NULL) {
        if (call->parse.http_status != 0 && err == NGHTTP2_NO_ERROR) {
            client__status_set(&call->st, PINS_CODE_OK, "%s", "");
            call->st.http_status = call->parse.http_status;
            call->st.from_server = true;
            call_finish(call);
        } else {
            const char *msg;
            int code = rst_code(err, &msg);
            client__status_set(&call->st, err == 0 ? PINS_CODE_INTERNAL : code, "%s",
                               err == 0 ? "stream ended without a response" : msg);
            call_finish(call);
        }
    } else if (call->parse.error == 0 && !call->got_end) {
        /* Only a stream the server ended with END_STREAM is complete: a reset, even after a
         * grpc-status in the headers, is the stream's end. */
        const char *msg;
        int code = rst_code(err, &msg);
        client__status_set(&call->st, code, "%s (http/2 error %u)", msg, err);
        call->st.http_status = call->parse.http_status;
        call_retry_or_finish(call, RETRY_STATUS);
    } else {
        int code = client__parse_finish(&call->parse, &call->st);
        if (code == PINS_CODE_OK && !call->m->server_streaming && call->parse.messages != 1) {
            client__status_set(&call->st, PINS_CODE_INTERNAL, "%s",
                               call->parse.messages == 0 ? "no message in a unary response"
                                                         : "more than one message in a unary "
                                                           "response");
        }
        call_retry_or_finish(call, RETRY_STATUS);
    }
    call_unref(call);
    return 0;
}

/* ---- links --------------------------------------------------------------------------------- */

static void on_link_read(evutil_socket_t fd, short what, void *arg);
static void on_link_write(evutil_socket_t fd, short what, void *arg);

static void link_free(h2link *l)
{
    pins_conn *conn = l->conn;
    for (h2link **pp = &conn->links; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == l) {
            *pp = l->next;
            break;
        }
    }
    if (l->ev_read != NULL)
        event_free(l->ev_read);
    if (l->ev_write != NULL)
        event_free(l->ev_write);
    if (l->ev_timer != NULL)
        event_free(l->ev_timer);
    if (l->fd >= 0)
        close(l->fd);
    if (l->h2 != NULL)
        nghttp2_session_del(l->h2);
    client__tls_free(l->tls);
    if (l->ai_list != NULL)
        freeaddrinfo(l->ai_list);
    free(l->out);
    free(l);
}

static void link_unref(h2link *l)
{
    if (--l->refs == 0)
        link_free(l);
}

static void link_close_fd(h2link *l)
{
    if (l->ev_read != NULL)
        event_del(l->ev_read);
    if (l->ev_write != NULL)
        event_del(l->ev_write);
    if (l->ev_timer != NULL)
        event_del(l->ev_timer);
    if (l->fd >= 0) {
        close(l->fd);
        l->fd = -1;
    }
}

/* The link is gone: every call on it (and, when it never connected, every queued call waiting
 * for it) ends its attempt. The link is freed when its last reference goes. */
static void link_fail(h2link *l, bool connect_failure, const char *fmt, ...)
{
    if (l->dead)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(l->err, sizeof(l->err), fmt, ap);
    va_end(ap);
    pins_conn *conn = l->conn;
    l->dead = true;
    bool was_cur = conn->cur == l;
    if (was_cur)
        conn->cur = NULL;
    link_close_fd(l);
    link_ref(l);
    /* Calls that callbacks start during the sweep are left to the next kick: sweeping them too
     * would fail a call that restarts itself from on_done again and again, without end. */
    uint64_t epoch = conn->seq;
again:
    for (pins_call *call = conn->calls_head; call != NULL; call = call->next) {
        if (call->seq >= epoch)
            continue;
        bool mine = call->state == CS_ACTIVE && call->link == l;
        /* A link that failed before it carried a stream failed for the calls waiting on it
         * as a connection that could not be made: they count an attempt and back off, so that
         * a server that drops every new connection cannot make them reconnect without end. */
        bool waiting = call->state == CS_QUEUED && was_cur && (connect_failure || l->started == 0);
        if (!mine && !waiting)
            continue;
        call->link = NULL;
        call->stream_id = 0;
        call_ref(call);
        if (waiting) {
            call->attempts++;
            client__status_set(&call->st, PINS_CODE_UNAVAILABLE, "%s", l->err);
            if (l->permanent)
                call_finish(call); /* the same certificate would fail the same way */
            else
                call_retry_or_finish(call, RETRY_UNPROCESSED);
        } else if (!call->headers_sent) {
            client__status_set(&call->st, PINS_CODE_UNAVAILABLE, "%s", l->err);
            call_retry_or_finish(call, RETRY_UNPROCESSED);
        } else {
            client__status_set(&call->st, PINS_CODE_UNAVAILABLE,
                               "connection closed before the response ended: %s", l->err);
            call_retry_or_finish(call, RETRY_STATUS);
        }
        call_unref(call);
        goto again;
    }
    l->active = 0;
    schedule_kick(conn); /* queued calls open a new h2link */
    link_unref(l);       /* the reference taken above */
    link_unref(l);       /* the link's own: it is no longer alive */
}

static void on_connect_timeout(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    h2link *l = arg;
    pins_conn *conn = l->conn;
    conn_enter(conn);
    link_ref(l);
    link_fail(l, true, "connect to %s timed out after %lld ms", l->conn->authority,
              (long long)l->conn->connect_timeout_ms);
    link_unref(l);
    conn_leave(conn);
}

static int session_start(h2link *l)
{
    nghttp2_session_callbacks *cbs = NULL;
    if (nghttp2_session_callbacks_new(&cbs) != 0)
        return -1;
    nghttp2_session_callbacks_set_on_header_callback(cbs, on_header);
    nghttp2_session_callbacks_set_on_data_chunk_recv_callback(cbs, on_data_chunk);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, on_frame_recv);
    nghttp2_session_callbacks_set_on_frame_send_callback(cbs, on_frame_send);
    nghttp2_session_callbacks_set_on_frame_not_send_callback(cbs, on_frame_not_send);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, on_stream_close);
    nghttp2_option *opt = NULL;
    int rv = nghttp2_option_new(&opt);
    if (rv == 0) {
        nghttp2_option_set_max_send_header_block_length(opt, 256u << 10);
        rv = nghttp2_session_client_new2(&l->h2, cbs, l, opt);
        nghttp2_option_del(opt);
    }
    nghttp2_session_callbacks_del(cbs);
    if (rv != 0)
        return -1;
    nghttp2_settings_entry iv[] = {
        {NGHTTP2_SETTINGS_ENABLE_PUSH, 0},
        {NGHTTP2_SETTINGS_INITIAL_WINDOW_SIZE, 1u << 20},
        {NGHTTP2_SETTINGS_MAX_HEADER_LIST_SIZE, (uint32_t)l->conn->max_header},
    };
    if (nghttp2_submit_settings(l->h2, NGHTTP2_FLAG_NONE, iv, sizeof(iv) / sizeof(iv[0])) != 0)
        return -1;
    nghttp2_session_set_local_window_size(l->h2, NGHTTP2_FLAG_NONE, 0, 1 << 24);
    l->ready = true;
    event_del(l->ev_timer);
    schedule_kick(l->conn);
    return 0;
}

static void link_connected(h2link *l)
{
    l->connecting = false;
    event_add(l->ev_read, NULL);
    if (l->conn->tls) {
        l->tls = client__tls_new(l->conn->tls_ctx, l->conn->server_name);
        if (l->tls == NULL) {
            link_fail(l, true, "tls: out of memory");
            return;
        }
        l->handshaking = true;
        char err[200];
        int hs = client__tls_handshake(l->tls, err, sizeof(err));
        if (hs < 0) {
            l->permanent = hs == -2;
            link_fail(l, true, "tls handshake with %s failed: %s", l->conn->authority, err);
            return;
        }
        link_flush(l);
        return;
    }
    if (session_start(l) != 0) {
        link_fail(l, true, "out of memory");
        return;
    }
    link_flush(l);
}

/* Starts a connect to l->ai_cur or a later address. Returns 0 or -1 (l->err says why). */
static int link_try_connect(h2link *l)
{
    for (; l->ai_cur != NULL; l->ai_cur = l->ai_cur->ai_next) {
        struct addrinfo *ai = l->ai_cur;
        if (l->fd >= 0) {
            event_del(l->ev_read);
            event_del(l->ev_write);
            close(l->fd);
            l->fd = -1;
        }
        int fd =
            socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            snprintf(l->err, sizeof(l->err), "socket: %s", strerror(errno));
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        /* A server host that vanished (no FIN, no RST) is noticed by TCP keepalive: probes
         * after 60 s of silence, every 10 s, 6 of them, so an idle or waiting connection
         * fails within about two minutes instead of never. */
        int idle = 60, intvl = 10, cnt = 6;
        setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
        setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
        l->fd = fd;
        if (l->ev_read != NULL)
            event_free(l->ev_read);
        if (l->ev_write != NULL)
            event_free(l->ev_write);
        l->ev_read = event_new(l->conn->base, fd, EV_READ | EV_PERSIST, on_link_read, l);
        l->ev_write = event_new(l->conn->base, fd, EV_WRITE | EV_PERSIST, on_link_write, l);
        if (l->ev_read == NULL || l->ev_write == NULL) {
            snprintf(l->err, sizeof(l->err), "out of memory");
            return -1;
        }
        int rv = connect(fd, ai->ai_addr, ai->ai_addrlen);
        if (rv == 0 || errno == EINPROGRESS) {
            l->connecting = true;
            event_add(l->ev_write, NULL);
            return 0;
        }
        snprintf(l->err, sizeof(l->err), "connect to %s: %s", l->conn->authority, strerror(errno));
    }
    return -1;
}

static h2link *link_new(pins_conn *conn, char *err, size_t errlen)
{
    h2link *l = calloc(1, sizeof(*l));
    if (l == NULL) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    l->conn = conn;
    l->fd = -1;
    l->refs = 1;
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    int rv = getaddrinfo(conn->host, conn->port, &hints, &l->ai_list);
    if (rv != 0) {
        snprintf(err, errlen, "cannot resolve %s: %s", conn->host, gai_strerror(rv));
        free(l);
        return NULL;
    }
    l->ai_cur = l->ai_list;
    l->ev_timer = evtimer_new(conn->base, on_connect_timeout, l);
    l->next = conn->links;
    conn->links = l;
    if (l->ev_timer == NULL || link_try_connect(l) != 0) {
        snprintf(err, errlen, "%s", l->ev_timer == NULL ? "out of memory" : l->err);
        l->dead = true;
        link_unref(l);
        return NULL;
    }
    if (conn->connect_timeout_ms > 0) {
        struct timeval tv = tv_of(conn->connect_timeout_ms);
        event_add(l->ev_timer, &tv);
    }
    return l;
}

static void on_link_write(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    h2link *l = arg;
    pins_conn *conn = l->conn;
    conn_enter(conn);
    link_ref(l);
    if (l->connecting) {
        int err = 0;
        socklen_t len = sizeof(err);
        if (getsockopt(l->fd, SOL_SOCKET, SO_ERROR, &err, &len) != 0)
            err = errno;
        if (err != 0) {
            snprintf(l->err, sizeof(l->err), "connect to %s: %s", l->conn->authority,
                     strerror(err));
            l->ai_cur = l->ai_cur->ai_next;
            char msg[sizeof(l->err)];
            memcpy(msg, l->err, sizeof(msg));
            if (l->ai_cur == NULL || link_try_connect(l) != 0)
                link_fail(l, true, "%s", l->ai_cur == NULL ? msg : l->err);
        } else {
            event_del(l->ev_write);
            link_connected(l);
        }
    } else {
        link_flush(l);
    }
    link_unref(l);
    conn_leave(conn);
}

/* Plaintext HTTP/2 bytes from the server. */
static int link_h2_input(h2link *l, const uint8_t *p, size_t n)
{
    ssize_t rv = nghttp2_session_mem_recv(l->h2, p, n);
    if (rv < 0) {
        link_fail(l, false, "http/2 protocol error from %s: %s", l->conn->authority,
                  nghttp2_strerror((int)rv));
        return -1;
    }
    return 0;
}

static int link_input(h2link *l, const uint8_t *p, size_t n)
{
    if (l->tls == NULL)
        return link_h2_input(l, p, n);
    char err[200];
    if (client__tls_feed(l->tls, p, n) != 0) {
        link_fail(l, false, "out of memory");
        return -1;
    }
    if (l->handshaking) {
        int hs = client__tls_handshake(l->tls, err, sizeof(err));
        if (hs < 0) {
            l->permanent = hs == -2;
            link_fail(l, true, "tls handshake with %s failed: %s", l->conn->authority, err);
            return -1;
        }
        if (hs == 0)
            return 0;
        l->handshaking = false;
        if (session_start(l) != 0) {
            link_fail(l, true, "out of memory");
            return -1;
        }
    }
    uint8_t buf[16384];
    for (;;) {
        long r = client__tls_read(l->tls, buf, sizeof(buf), err, sizeof(err));
        if (r == 0)
            return 0;
        if (r < 0) {
            link_fail(l, false, "connection to %s closed: %s", l->conn->authority, err);
            return -1;
        }
        if (link_h2_input(l, buf, (size_t)r) != 0 || l->dead)
            return -1;
    }
}

static void on_link_read(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    h2link *l = arg;
    pins_conn *conn = l->conn;
    conn_enter(conn);
    link_ref(l);
    uint8_t buf[16384];
    for (int i = 0; i < READS_PER_EVENT && !l->dead; i++) {
        ssize_t n = recv(l->fd, buf, sizeof(buf), 0);
        if (n > 0) {
            if (link_input(l, buf, (size_t)n) != 0)
                break;
            /* From the read event, a short read emptied the socket: no recv only to hear
             * EAGAIN (the event is level-triggered and comes again if more arrived meanwhile).
             * The idle link's poll (what = 0, on_kick) reads on to see an EOF behind the bytes. */
            if ((size_t)n < sizeof(buf) && (what & EV_READ))
                break;
            continue;
        }
        if (n == 0) {
            link_fail(l, l->handshaking, "connection closed by %s", l->conn->authority);
            break;
        }
        if (errno == EAGAIN || errno == EWOULDBLOCK)
            break;
        if (errno == EINTR)
            continue;
        link_fail(l, l->handshaking, "connection to %s lost: %s", l->conn->authority,
                  strerror(errno));
        break;
    }
    if (l->goaway_unused && !l->dead)
        link_fail(l, true, "%s sent GOAWAY before any stream", l->conn->authority);
    link_flush(l);
    link_unref(l);
    conn_leave(conn);
}

/* ---- submitting calls ---------------------------------------------------------------------- */

static nghttp2_nv nv(const char *name, const char *value, size_t vlen)
{
    nghttp2_nv h = {.name = (uint8_t *)name,
                    .value = (uint8_t *)value,
                    .namelen = strlen(name),
                    .valuelen = vlen,
                    .flags = NGHTTP2_NV_FLAG_NONE};
    return h;
}

/* Submits the call as a stream of l. Returns 0, 1 when l has no stream ids left, -1 on failure
 * (the call was finished). */
static int call_submit(pins_call *call, h2link *l)
{
    pins_conn *conn = call->conn;
    nghttp2_nv h[16 + CLIENT_MAX_METADATA];
    size_t n = 0;
    bool get = call->m == NULL;
    char timeout[32];
    h[n++] = nv(":method", get ? "GET" : "POST", get ? 3 : 4);
    h[n++] = nv(":scheme", conn->tls ? "https" : "http", conn->tls ? 5 : 4);
    const char *path = get ? call->path : call->m->path;
    h[n++] = nv(":path", path, strlen(path));
    h[n++] = nv(":authority", conn->authority, strlen(conn->authority));
    if (!get) {
        h[n++] = nv("content-type", "application/grpc", 16);
        h[n++] = nv("te", "trailers", 8);
    }
    h[n++] = nv("user-agent", conn->user_agent, strlen(conn->user_agent));
    if (call->deadline != 0 && !get) {
        int64_t left = call->deadline - now_ms();
        if (left < 1)
            left = 1;
        int len = left < 100000000
                      ? snprintf(timeout, sizeof(timeout), "%lldm", (long long)left)
                      : snprintf(timeout, sizeof(timeout), "%lldS",
                                 (long long)(left / 1000 < 100000000 ? left / 1000 : 99999999));
        h[n++] = nv("grpc-timeout", timeout, (size_t)len);
    }
    h[n++] = nv("x-request-id", call->request_id, strlen(call->request_id));
    if (conn->machine_token != NULL)
        h[n++] = nv("x-machine-token", conn->machine_token, strlen(conn->machine_token));
    if (conn->bearer != NULL)
        h[n++] = nv("authorization", conn->bearer, strlen(conn->bearer));
    for (size_t i = 0; i < call->md.count; i++)
        h[n++] = nv(call->md.items[i].name, call->md.items[i].value, call->md.items[i].value_len);
    for (size_t i = 0; i < n; i++)
        if (h[i].name[0] == 'x' || h[i].name[0] == 'a')
            h[i].flags |= NGHTTP2_NV_FLAG_NO_INDEX; /* tokens stay out of the HPACK table */
    nghttp2_data_provider prd = {.source = {.ptr = call}, .read_callback = read_body};
    call->body_off = 0;
    call->headers_sent = false;
    call->send_error = 0;
    call->got_headers = false;
    call->got_end = false;
    client__parse_free(&call->parse);
    client__parse_init(&call->parse, conn->max_message, conn->max_header);
    pins_buf_reset(&call->get_body);
    int32_t id = nghttp2_submit_request(l->h2, NULL, h, n, get ? NULL : &prd, call);
    if (id == NGHTTP2_ERR_STREAM_ID_NOT_AVAILABLE)
        return 1;
    if (id < 0) {
        call->attempts++;
        call_fail(call, PINS_CODE_INTERNAL, "cannot start the stream: %s", nghttp2_strerror(id));
        return -1;
    }
    call->attempts++;
    call->stream_id = id;
    call->link = l;
    call->state = CS_ACTIVE;
    l->active++;
    l->started++;
    return 0;
}

static uint32_t link_limit(const h2link *l)
{
    uint32_t remote =
        nghttp2_session_get_remote_settings(l->h2, NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS);
    uint32_t lim = l->conn->max_streams;
    return remote < lim ? remote : lim;
}

/* Queued calls become streams on the current link (opened when there is none), then every
 * link flushes. */
static void on_kick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    pins_conn *conn = arg;
    const h2link *polled = NULL;
    uint64_t epoch = conn->seq; /* calls started by callbacks of this kick wait for the next */
    /* A connection that could not be made (name not resolved, connect refused at once) is
     * tried once per kick: the other queued calls meet the same failure without another
     * (blocking) resolution each. */
    bool link_failed = false;
    char err[300] = "";
    conn->in_kick = true;
    conn_enter(conn);
again:
    for (pins_call *call = conn->calls_head; call != NULL; call = call->next) {
        if (call->state != CS_QUEUED || call->fail_on_wake || call->seq >= epoch)
            continue;
        if (conn->cur == NULL) {
            if (!link_failed)
                conn->cur = link_new(conn, err, sizeof(err));
            if (conn->cur == NULL) {
                /* Every queued call meets the same failure. */
                link_failed = true;
                call_ref(call);
                call->attempts++;
                client__status_set(&call->st, PINS_CODE_UNAVAILABLE, "%s", err);
                call_retry_or_finish(call, RETRY_UNPROCESSED);
                call_unref(call);
                goto again;
            }
        }
        h2link *l = conn->cur;
        if (l->ready && l->active == 0 && polled != l) {
            /* An idle link may have been closed by the server while nobody read it (the
             * blocking API runs the loop only during calls): read what is there first, so
             * that a GOAWAY or an EOF sends the call to a new link instead of a dead one.
             * what = 0: read until EAGAIN or EOF, past a short read (an EOF may follow). */
            polled = l;
            link_ref(l);
            on_link_read(l->fd, 0, l);
            bool gone = l->dead || l->draining;
            link_unref(l);
            if (gone)
                goto again;
        }
        if (!l->ready || l->active >= link_limit(l))
            break;
        int rv = call_submit(call, l);
        if (rv == 1) {
            l->draining = true;
            conn->cur = NULL;
            goto again;
        }
        if (rv < 0)
            goto again;
    }
    for (h2link *l = conn->links; l != NULL;) {
        h2link *next = l->next;
        if (!l->dead) {
            link_ref(l);
            link_flush(l);
            next = l->next;
            link_unref(l);
        }
        l = next;
    }
    conn->in_kick = false;
    conn_leave(conn);
}

/* The kick runs in this turn of the loop; one scheduled from inside a kick waits for the next
 * turn (a zero timer, not an activation), so that a call restarted from on_done after every
 * failure cannot keep the loop from polling and firing timers. */
static void schedule_kick(pins_conn *conn)
{
    static const struct timeval zero = {0, 0};
    if (!conn->in_kick)
        event_active(conn->kick, EV_TIMEOUT, 0);
    else if (!event_pending(conn->kick, EV_TIMEOUT, NULL))
        event_add(conn->kick, &zero);
}

/* ---- public -------------------------------------------------------------------------------- */

/* Splits addr into conn's host, port, authority and scheme. Returns 0 or -1. */
static int parse_addr(pins_conn *conn, const char *addr, bool tls, char *err, size_t errlen)
{
    conn->tls = tls;
    if (strncmp(addr, "http://", 7) == 0) {
        addr += 7;
        conn->tls = false;
    } else if (strncmp(addr, "https://", 8) == 0) {
        addr += 8;
        conn->tls = true;
    }
    size_t len = strcspn(addr, "/");
    if (len == 0 || len > 255) {
        snprintf(err, errlen, "address has no host");
        return -1;
    }
    if (memchr(addr, '@', len) != NULL) {
        /* Not echoed: what precedes the @ may be a password. */
        snprintf(err, errlen,
                 "address holds user information (user@ or user:password@), which "
                 "is not supported; give credentials as tokens");
        return -1;
    }
    char hp[256];
    memcpy(hp, addr, len);
    hp[len] = '\0';
    const char *host = hp;
    size_t hlen;
    const char *port = NULL;
    if (hp[0] == '[') {
        char *end = strchr(hp, ']');
        if (end == NULL) {
            snprintf(err, errlen, "address %s: unterminated [", hp);
            return -1;
        }
        host = hp + 1;
        hlen = (size_t)(end - host);
        if (end[1] == ':')
            port = end + 2;
        else if (end[1] != '\0') {
            snprintf(err, errlen, "address %s: junk after ]", hp);
            return -1;
        }
    } else {
        char *colon = strrchr(hp, ':');
        if (colon != NULL && strchr(hp, ':') != colon) {
            snprintf(err, errlen, "address %s: IPv6 addresses go in brackets", hp);
            return -1;
        }
        hlen = colon != NULL ? (size_t)(colon - hp) : len;
        if (colon != NULL)
            port = colon + 1;
    }
    if (hlen == 0) {
        snprintf(err, errlen, "address %s has no host", hp);
        return -1;
    }
    if (port == NULL)
        port = conn->tls ? "443" : "50051";
    char *pe = NULL;
    long pn = strtol(port, &pe, 10);
    if (*port == '\0' || *pe != '\0' || pn < 1 || pn > 65535) {
        snprintf(err, errlen, "address %s: bad port", hp);
        return -1;
    }
    conn->host = malloc(hlen + 1);
    conn->port = client__strdup(port);
    size_t alen = hlen + strlen(port) + 4;
    conn->authority = malloc(alen);
    if (conn->host == NULL || conn->port == NULL || conn->authority == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    memcpy(conn->host, host, hlen);
    conn->host[hlen] = '\0';
    bool v6 = memchr(host, ':', hlen) != NULL;
    snprintf(conn->authority, alen, v6 ? "[%s]:%s" : "%s:%s", conn->host, port);
    return 0;
}

/* A header value HTTP allows (RFC 9110 5.5): no control character but the tab. */
static bool header_value_ok(const char *s)
{
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
            return false;
    }
    return true;
}

pins_conn *pins_conn_new(struct event_base *base, const pins_options *opts, pins_status *st)
{
    pins_options defaults;
    if (opts == NULL) {
        pins_options_init(&defaults);
        opts = &defaults;
    }
    char err[300] = "";
    pins_conn *conn = calloc(1, sizeof(*conn));
    if (base == NULL || conn == NULL) {
        snprintf(err, sizeof(err), base == NULL ? "no event base" : "out of memory");
        goto fail;
    }
    conn->base = base;
    if (parse_addr(conn, opts->addr != NULL ? opts->addr : "127.0.0.1:50051", opts->tls, err,
                   sizeof(err)) != 0)
        goto fail;
    /* TLS settings on a plaintext connection would send the tokens in clear text while the
     * caller believes them protected: refuse, never ignore them. */
    if (!conn->tls &&
        (opts->tls || opts->ca_file != NULL || opts->cert_file != NULL || opts->key_file != NULL ||
         opts->server_name != NULL || opts->insecure_skip_verify)) {
        snprintf(err, sizeof(err),
                 "TLS settings given for a plaintext connection: set tls or use an https:// "
                 "address (an http:// address is always plaintext)");
        goto fail;
    }
    conn->timeout_ms = opts->timeout_ms > 0 ? clamp_ms(opts->timeout_ms) : 0;
    conn->connect_timeout_ms =
        opts->connect_timeout_ms > 0 ? clamp_ms(opts->connect_timeout_ms) : 0;
    conn->backoff_initial_ms =
        opts->backoff_initial_ms > 0 ? clamp_ms(opts->backoff_initial_ms) : 1;
    conn->backoff_max_ms = opts->backoff_max_ms >= conn->backoff_initial_ms
                               ? clamp_ms(opts->backoff_max_ms)
                               : conn->backoff_initial_ms;
    conn->max_retries = opts->max_retries > 0 ? opts->max_retries : 0;
    conn->max_message = opts->max_message_bytes > 0 ? opts->max_message_bytes : 4u << 20;
    conn->max_header = opts->max_header_bytes > 0 ? opts->max_header_bytes : 64u << 10;
    conn->max_streams = opts->max_concurrent_streams > 0 ? opts->max_concurrent_streams : 100;
    if ((opts->machine_token != NULL && !header_value_ok(opts->machine_token)) ||
        (opts->bearer_token != NULL && !header_value_ok(opts->bearer_token))) {
        snprintf(err, sizeof(err), "a token holds a control character");
        goto fail;
    }
    conn->machine_token = client__strdup(opts->machine_token);
    if (opts->bearer_token != NULL) {
        size_t n = strlen(opts->bearer_token) + 8;
        conn->bearer = malloc(n);
        if (conn->bearer != NULL)
            snprintf(conn->bearer, n, "Bearer %s", opts->bearer_token);
    }
    conn->user_agent = client__strdup(
        opts->user_agent != NULL ? opts->user_agent : "pins-client/" PINS_CLIENT_VERSION_STRING);
    conn->server_name = client__strdup(opts->server_name != NULL ? opts->server_name : conn->host);
    if (conn->user_agent == NULL || conn->server_name == NULL ||
        (opts->machine_token != NULL && conn->machine_token == NULL) ||
        (opts->bearer_token != NULL && conn->bearer == NULL) ||
        !header_value_ok(conn->user_agent)) {
        snprintf(err, sizeof(err), "out of memory or a bad user agent");
        goto fail;
    }
    if (conn->tls && client__tls_ctx_new(opts, &conn->tls_ctx, err, sizeof(err)) != 0)
        goto fail;
    conn->kick = event_new(base, -1, 0, on_kick, conn);
    if (conn->kick == NULL) {
        snprintf(err, sizeof(err), "out of memory");
        goto fail;
    }
    uint8_t seed[16];
    random_bytes(conn, seed, sizeof(seed));
    memcpy(&conn->rng, seed, 8);
    conn->rng |= 1;
    memcpy(&conn->rid_prefix, seed + 8, 8);
    if (st != NULL)
        client__status_set(st, PINS_CODE_OK, "%s", "");
    return conn;
fail:
    if (st != NULL)
        client__status_set(st, PINS_CODE_INVALID_ARGUMENT, "%s", err);
    if (conn != NULL) {
        conn->base = NULL;
        pins_conn_free(conn);
    }
    return NULL;
}

/* Cancels every call (their on_done run now); calls those callbacks start are refused. */
static void conn_cancel_all(pins_conn *conn)
{
    conn->freeing = true;
    conn->depth++; /* a pins_conn_free from these callbacks only marks the conn */
    while (conn->calls_head != NULL) {
        pins_call *call = conn->calls_head;
        call_ref(call);
        call_fail(call, PINS_CODE_CANCELLED, "connection closed by the client");
        call_unref(call);
    }
    conn->depth--;
}

void pins_conn_free(pins_conn *conn)
{
    if (conn == NULL || conn->free_pending)
        return;
    if (conn->depth > 0) {
        /* From inside a callback of this conn: the calls end now, the memory goes when the
         * handler that ran the callback returns. */
        conn->free_pending = true;
        conn_cancel_all(conn);
        return;
    }
    conn_destroy(conn);
}

static void conn_destroy(pins_conn *conn)
{
    conn->free_pending = false;
    conn_cancel_all(conn);
    while (conn->links != NULL) {
        h2link *l = conn->links;
        if (!l->dead) {
            link_fail(l, false, "connection closed by the client");
        } else {
            /* Only a link a handler still holds could be here; it cannot be, outside them. */
            conn->links = l->next;
        }
    }
    if (conn->kick != NULL)
        event_free(conn->kick);
    client__tls_ctx_free(conn->tls_ctx);
    free(conn->host);
    free(conn->port);
    free(conn->authority);
    free(conn->server_name);
    free(conn->machine_token);
    free(conn->bearer);
    free(conn->user_agent);
    free(conn);
}

size_t pins_conn_pending(const pins_conn *conn)
{
    return conn != NULL ? conn->pending : 0;
}

/* A new queued call with its deadline, request id and metadata; NULL when out of memory. A
 * failure of the options is left in call->st with fail_on_wake set. */
static pins_call *call_new(pins_conn *conn, const pins_call_options *copts, pins_done_cb on_done,
                           void *arg)
{
    pins_call *call = calloc(1, sizeof(*call));
    if (call == NULL)
        return NULL;
    call->conn = conn;
    call->seq = conn->seq++;
    call->refs = 1;
    call->on_done = on_done;
    call->arg = arg;
    pins_status_init(&call->st);
    client__parse_init(&call->parse, conn->max_message, conn->max_header);
    pins_buf_init(&call->get_body, conn->max_message);
    call->timer = evtimer_new(conn->base, on_call_deadline, call);
    call->wake = evtimer_new(conn->base, on_call_wake, call);
    int64_t timeout = conn->timeout_ms;
    if (copts != NULL && copts->timeout_ms != 0)
        timeout = copts->timeout_ms > 0 ? copts->timeout_ms : 0;
    if (timeout > MAX_MS)
        timeout = MAX_MS;
    call->timeout_ms = timeout;
    call->no_retry = copts != NULL && copts->no_retry;
    call->discard = copts != NULL && copts->discard_response;
    if (copts != NULL && copts->request_id != NULL && *copts->request_id != '\0') {
        if (header_value_ok(copts->request_id)) {
            call->request_id = client__strdup(copts->request_id);
        } else {
            /* Reported through on_done (the call keeps a generated id for its status). */
            client__status_set(&call->st, PINS_CODE_INVALID_ARGUMENT,
                               "request id holds a line break");
            call->request_id = new_request_id(conn);
        }
    } else {
        call->request_id = new_request_id(conn);
    }
    if (call->timer == NULL || call->wake == NULL || call->request_id == NULL) {
        call_free(call);
        return NULL;
    }
    size_t mdn = copts != NULL && copts->metadata != NULL ? copts->metadata_count : 0;
    if (mdn > CLIENT_MAX_METADATA)
        client__status_set(&call->st, PINS_CODE_INVALID_ARGUMENT, "more than %d metadata entries",
                           CLIENT_MAX_METADATA);
    for (size_t i = 0; i < mdn && call->st.code == 0; i++) {
        const pins_metadata *m = &copts->metadata[i];
        const char *v = m->value != NULL ? m->value : "";
        size_t vlen = m->value_len != 0 ? m->value_len : strlen(v);
        if (!valid_md_name(m->name) || reserved_md_name(m->name)) {
            client__status_set(&call->st, PINS_CODE_INVALID_ARGUMENT,
                               "metadata name \"%s\" is not allowed",
                               m->name != NULL ? m->name : "");
            break;
        }
        size_t nlen = strlen(m->name);
        int rv;
        if (nlen > 4 && strcmp(m->name + nlen - 4, "-bin") == 0) {
            char *enc = malloc(pins_base64_encoded_len(vlen, PINS_BASE64_PAD) + 1);
            if (enc == NULL) {
                call_free(call);
                return NULL;
            }
            size_t elen = pins_base64_encode(v, vlen, PINS_BASE64_PAD, enc);
            rv = client__md_add(&call->md, m->name, nlen, enc, elen);
            free(enc);
        } else {
            if (memchr(v, '\r', vlen) != NULL || memchr(v, '\n', vlen) != NULL ||
                memchr(v, '\0', vlen) != NULL) {
                client__status_set(&call->st, PINS_CODE_INVALID_ARGUMENT,
                                   "metadata %s holds a line break or NUL", m->name);
                break;
            }
            rv = client__md_add(&call->md, m->name, nlen, v, vlen);
        }
        if (rv != 0) {
            call_free(call);
            return NULL;
        }
    }
    /* Queued at the tail; the deadline runs from now. */
    call->state = CS_QUEUED;
    call->prev = conn->calls_tail;
    if (conn->calls_tail != NULL)
        conn->calls_tail->next = call;
    else
        conn->calls_head = call;
    conn->calls_tail = call;
    conn->pending++;
    if (timeout > 0) {
        call->deadline = now_ms() + timeout;
        struct timeval tv = tv_of(timeout);
        event_add(call->timer, &tv);
    }
    if (call->st.code != 0) {
        call->fail_on_wake = true;
        struct timeval tv = {0, 0};
        event_add(call->wake, &tv);
    } else {
        schedule_kick(conn);
    }
    return call;
}

pins_call *pins_conn_start(pins_conn *conn, pins_rpc rpc, const ProtobufCMessage *req,
                           const pins_call_options *copts, pins_message_cb on_message,
                           pins_done_cb on_done, void *arg)
{
    const pins_method *m = pins_method_of(rpc);
    if (conn == NULL || conn->freeing || m == NULL || req == NULL || on_done == NULL ||
        req->descriptor != m->input)
        return NULL;
    size_t n = protobuf_c_message_get_packed_size(req);
    if (n > UINT32_MAX - 5)
        return NULL;
    uint8_t *body = malloc(n + 5);
    if (body == NULL)
        return NULL;
    body[0] = 0;
    body[1] = (uint8_t)(n >> 24);
    body[2] = (uint8_t)(n >> 16);
    body[3] = (uint8_t)(n >> 8);
    body[4] = (uint8_t)n;
    protobuf_c_message_pack(req, body + 5);
    pins_call *call = call_new(conn, copts, on_done, arg);
    if (call == NULL) {
        free(body);
        return NULL;
    }
    call->m = m;
    call->body = body;
    call->body_len = n + 5;
    call->on_message = on_message;
    return call;
}

pins_call *client__conn_get(pins_conn *conn, const char *path, const pins_call_options *copts,
                            pins_done_cb on_done, void *arg, char **pbody, size_t *plen)
{
    if (conn == NULL || conn->freeing || path == NULL || path[0] != '/' || on_done == NULL ||
        !header_value_ok(path))
        return NULL;
    char *p = client__strdup(path);
    if (p == NULL)
        return NULL;
    pins_call *call = call_new(conn, copts, on_done, arg);
    if (call == NULL) {
        free(p);
        return NULL;
    }
    call->path = p;
    call->pget_body = pbody;
    call->pget_len = plen;
    return call;
}

void pins_call_cancel(pins_call *call)
{
    if (call == NULL || call->state == CS_DONE)
        return;
    pins_conn *conn = call->conn;
    conn_enter(conn);
    call_ref(call);
    call_fail(call, PINS_CODE_CANCELLED, "call cancelled by the client");
    call_unref(call);
    conn_leave(conn);
}
