/* tests/unit/client/test_conn.c: libpins-client's connection, calls and retries
 * (client/conn.c, client/blocking.c) against a fake HTTP/2 server.
 *
 * The fake server is an nghttp2 server session on a loopback listener, run by its own thread
 * and event base; each test gives it a script, a function called when a request has ended, that
 * answers with exactly the frames the test needs (split DATA frames, trailers-only, lying
 * prefixes, RST_STREAM, GOAWAY, a dropped connection). The server records what it saw (request
 * headers, RST_STREAM codes, connections, concurrent streams) under a mutex; the client runs in
 * the test's thread, through the blocking API or the event-driven one. Every wait is bounded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <dlfcn.h>
#include <netdb.h>

#include "pins/client.h"

/* The resolver, counted: this definition comes before libc's for the library linked in. Names
 * ending in ".invalid" fail at once without a DNS query. */
static int RESOLVES;

int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
                struct addrinfo **res)
{
    __atomic_add_fetch(&RESOLVES, 1, __ATOMIC_SEQ_CST);
    size_t n = node != NULL ? strlen(node) : 0;
    if (n > 8 && strcmp(node + n - 8, ".invalid") == 0)
        return EAI_NONAME;
    int (*real)(const char *, const char *, const struct addrinfo *, struct addrinfo **) =
        (int (*)(const char *, const char *, const struct addrinfo *, struct addrinfo **))dlsym(
            RTLD_NEXT, "getaddrinfo");
    return real(node, service, hints, res);
}

#define MAX_REQS  16
#define MAX_CONNS 8

typedef struct fake fake;
typedef struct fconn fconn;

/* One request stream on the server, and the answer being sent on it. */
typedef struct fstream {
    struct fstream *prev, *next; /* the connection's open streams */
    int32_t id;
    char hdrs[2048];
    size_t hlen;
    const uint8_t *data; /* response DATA bytes (borrowed from the script's static storage) */
    size_t data_len;
    size_t data_off;
    size_t chunk;          /* DATA frame size */
    const char *const *tr; /* trailers: name, value, ..., NULL; NULL: END_STREAM on DATA */
    bool close_after;      /* drop the connection once this much is sent */
    bool rst_after;        /* reset the stream (INTERNAL_ERROR) once the data is sent */
} fstream;

struct fconn {
    fake *f;
    struct bufferevent *bev;
    nghttp2_session *h2;
    int index;
    bool closing;
    bool close_when_idle;  /* close once no stream is open */
    bool ping_when_idle;   /* ... 20 ms later, after a PING (bytes before the EOF) */
    struct event *ping_ev; /* on_ping_then_close, armed when the stream closes */
    fstream *streams;      /* open streams (freed with the connection) */
};

/* Called on the server thread when request nth (0-based, over the server's life) has ended. */
typedef void (*script_fn)(fconn *c, fstream *s, int nth);

struct fake {
    struct event_base *base;
    struct evconnlistener *lis;
    struct event *stop;
    int wake[2];
    int port;
    pthread_t th;
    script_fn script;
    bool drop_on_accept;   /* close every connection at once */
    bool goaway_on_accept; /* send GOAWAY (last stream 0) right after SETTINGS */
    fstream *held;         /* a stream a script keeps unanswered (server thread only) */
    fconn *conns[MAX_CONNS];
    pthread_mutex_t mu;
    /* observations, under mu */
    int nconns;
    int nreqs;
    char reqs[MAX_REQS][2048];
    int nrst;
    uint32_t rst_code;
    int open;
    int max_open;
};

static fake F;

static int fake_get(const int *field)
{
    pthread_mutex_lock(&F.mu);
    int v = *field;
    pthread_mutex_unlock(&F.mu);
    return v;
}

/* Waits up to ms for *field to reach want. */
static int fake_wait(const int *field, int want, int ms)
{
    for (int i = 0; i < ms / 5; i++) {
        if (fake_get(field) >= want)
            break;
        usleep(5000);
    }
    return fake_get(field);
}

/* ---- the fake server ----------------------------------------------------------------------- */

static void fconn_free(fconn *c)
{
    for (int i = 0; i < MAX_CONNS; i++)
        if (F.conns[i] == c)
            F.conns[i] = NULL;
    nghttp2_session_del(c->h2);
    bufferevent_free(c->bev);
    if (c->ping_ev != NULL)
        event_free(c->ping_ev);
    while (c->streams != NULL) {
        fstream *st = c->streams;
        c->streams = st->next;
        if (F.held == st)
            F.held = NULL;
        free(st);
    }
    free(c);
}

static void fconn_flush(fconn *c)
{
    if (nghttp2_session_send(c->h2) != 0) {
        fconn_free(c);
        return;
    }
    if (c->closing && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        fconn_free(c);
}

static ssize_t s_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *u)
{
    (void)s;
    (void)flags;
    fconn *c = u;
    bufferevent_write(c->bev, data, len);
    return (ssize_t)len;
}

static int s_begin_headers(nghttp2_session *s, const nghttp2_frame *frame, void *u)
{
    fconn *c = u;
    if (frame->hd.type != NGHTTP2_HEADERS || frame->headers.cat != NGHTTP2_HCAT_REQUEST)
        return 0;
    fstream *st = calloc(1, sizeof(*st));
    assert_non_null(st);
    st->id = frame->hd.stream_id;
    st->next = c->streams;
    if (c->streams != NULL)
        c->streams->prev = st;
    c->streams = st;
    nghttp2_session_set_stream_user_data(s, st->id, st);
    pthread_mutex_lock(&F.mu);
    if (++F.open > F.max_open)
        F.max_open = F.open;
    pthread_mutex_unlock(&F.mu);
    return 0;
}

static int s_header(nghttp2_session *s, const nghttp2_frame *frame, const uint8_t *name,
                    size_t nlen, const uint8_t *value, size_t vlen, uint8_t flags, void *u)
{
    (void)flags;
    (void)u;
    fstream *st = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
    if (st == NULL)
        return 0;
    int n = snprintf(st->hdrs + st->hlen, sizeof(st->hdrs) - st->hlen, "%.*s: %.*s\n", (int)nlen,
                     (const char *)name, (int)vlen, (const char *)value);
    if (n > 0 && (size_t)n < sizeof(st->hdrs) - st->hlen)
        st->hlen += (size_t)n;
    return 0;
}

static int s_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *u)
{
    fconn *c = u;
    if (frame->hd.type == NGHTTP2_RST_STREAM) {
        pthread_mutex_lock(&F.mu);
        F.nrst++;
        F.rst_code = frame->rst_stream.error_code;
        pthread_mutex_unlock(&F.mu);
        return 0;
    }
    if ((frame->hd.type != NGHTTP2_HEADERS && frame->hd.type != NGHTTP2_DATA) ||
        !(frame->hd.flags & NGHTTP2_FLAG_END_STREAM))
        return 0;
    fstream *st = nghttp2_session_get_stream_user_data(s, frame->hd.stream_id);
    if (st == NULL)
        return 0;
    pthread_mutex_lock(&F.mu);
    int nth = F.nreqs++;
    if (nth < MAX_REQS)
        memcpy(F.reqs[nth], st->hdrs, st->hlen + 1);
    pthread_mutex_unlock(&F.mu);
    F.script(c, st, nth);
    return 0;
}

static void on_ping_then_close(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    fconn *c = arg;
    nghttp2_submit_ping(c->h2, NGHTTP2_FLAG_NONE, NULL);
    c->closing = true;
    fconn_flush(c);
}

static int s_stream_close(nghttp2_session *s, int32_t id, uint32_t err, void *u)
{
    (void)err;
    fconn *c = u;
    if (c->close_when_idle && c->ping_when_idle) {
        /* After the client has taken the answer and stopped reading. */
        static const struct timeval later = {0, 20000};
        if (c->ping_ev == NULL)
            c->ping_ev = evtimer_new(F.base, on_ping_then_close, c);
        evtimer_add(c->ping_ev, &later);
    } else if (c->close_when_idle) {
        c->closing = true;
    }
    fstream *st = nghttp2_session_get_stream_user_data(s, id);
    if (st == NULL)
        return 0;
    if (F.held == st)
        F.held = NULL;
    if (st->prev != NULL)
        st->prev->next = st->next;
    else
        c->streams = st->next;
    if (st->next != NULL)
        st->next->prev = st->prev;
    free(st);
    pthread_mutex_lock(&F.mu);
    F.open--;
    pthread_mutex_unlock(&F.mu);
    return 0;
}

static void on_fread(struct bufferevent *bev, void *arg)
{
    fconn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    uint8_t *data = evbuffer_pullup(in, -1);
    ssize_t rv = nghttp2_session_mem_recv(c->h2, data, len);
    evbuffer_drain(in, len);
    if (rv < 0) {
        fconn_free(c);
        return;
    }
    fconn_flush(c);
}

static void on_fwrite(struct bufferevent *bev, void *arg)
{
    (void)bev;
    fconn *c = arg;
    if (c->closing && evbuffer_get_length(bufferevent_get_output(c->bev)) == 0)
        fconn_free(c);
}

static void on_fevent(struct bufferevent *bev, short what, void *arg)
{
    (void)bev;
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        fconn_free(arg);
}

static void on_accept(struct evconnlistener *lis, evutil_socket_t fd, struct sockaddr *sa,
                      int salen, void *arg)
{
    (void)lis;
    (void)sa;
    (void)salen;
    (void)arg;
    pthread_mutex_lock(&F.mu);
    bool drop = F.drop_on_accept;
    if (drop)
        F.nconns++;
    pthread_mutex_unlock(&F.mu);
    if (drop) {
        close(fd);
        return;
    }
    fconn *c = calloc(1, sizeof(*c));
    assert_non_null(c);
    c->f = &F;
    c->bev = bufferevent_socket_new(F.base, fd, BEV_OPT_CLOSE_ON_FREE);
    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_send_callback(cbs, s_send);
    nghttp2_session_callbacks_set_on_begin_headers_callback(cbs, s_begin_headers);
    nghttp2_session_callbacks_set_on_header_callback(cbs, s_header);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, s_frame_recv);
    nghttp2_session_callbacks_set_on_stream_close_callback(cbs, s_stream_close);
    nghttp2_session_server_new(&c->h2, cbs, c);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_settings_entry iv[] = {{NGHTTP2_SETTINGS_MAX_CONCURRENT_STREAMS, 100}};
    nghttp2_submit_settings(c->h2, NGHTTP2_FLAG_NONE, iv, 1);
    pthread_mutex_lock(&F.mu);
    if (F.goaway_on_accept)
        nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE, 0, NGHTTP2_NO_ERROR, NULL, 0);
    c->index = F.nconns++;
    pthread_mutex_unlock(&F.mu);
    for (int i = 0; i < MAX_CONNS; i++) {
        if (F.conns[i] == NULL) {
            F.conns[i] = c;
            break;
        }
    }
    bufferevent_setcb(c->bev, on_fread, on_fwrite, on_fevent, c);
    bufferevent_enable(c->bev, EV_READ | EV_WRITE);
    fconn_flush(c);
}

static void on_stop(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    (void)arg;
    char b;
    (void)read(fd, &b, 1);
    event_base_loopbreak(F.base);
}

static void *fake_thread(void *arg)
{
    (void)arg;
    event_base_dispatch(F.base);
    return NULL;
}

static void fake_start(script_fn script)
{
    memset(&F, 0, sizeof(F));
    pthread_mutex_init(&F.mu, NULL);
    F.script = script;
    F.base = event_base_new();
    assert_non_null(F.base);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    F.lis =
        evconnlistener_new_bind(F.base, on_accept, NULL, LEV_OPT_CLOSE_ON_FREE | LEV_OPT_REUSEABLE,
                                16, (struct sockaddr *)&sin, sizeof(sin));
    assert_non_null(F.lis);
    struct sockaddr_in got;
    socklen_t gl = sizeof(got);
    getsockname(evconnlistener_get_fd(F.lis), (struct sockaddr *)&got, &gl);
    F.port = ntohs(got.sin_port);
    assert_int_equal(pipe(F.wake), 0);
    F.stop = event_new(F.base, F.wake[0], EV_READ, on_stop, NULL);
    event_add(F.stop, NULL);
    assert_int_equal(pthread_create(&F.th, NULL, fake_thread, NULL), 0);
}

static void fake_stop(void)
{
    assert_int_equal(write(F.wake[1], "x", 1), 1);
    pthread_join(F.th, NULL);
    for (int i = 0; i < MAX_CONNS; i++)
        if (F.conns[i] != NULL)
            fconn_free(F.conns[i]);
    evconnlistener_free(F.lis);
    event_free(F.stop);
    close(F.wake[0]);
    close(F.wake[1]);
    event_base_free(F.base);
    pthread_mutex_destroy(&F.mu);
}

/* ---- script helpers ------------------------------------------------------------------------ */

static ssize_t s_read_data(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length,
                           uint32_t *flags, nghttp2_data_source *src, void *u)
{
    fconn *c = u;
    fstream *st = src->ptr;
    size_t n = st->data_len - st->data_off;
    if (n > st->chunk)
        n = st->chunk;
    if (n > length)
        n = length;
    memcpy(buf, st->data + st->data_off, n);
    st->data_off += n;
    if (st->data_off == st->data_len) {
        if (st->rst_after) {
            *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
            nghttp2_submit_rst_stream(s, NGHTTP2_FLAG_NONE, id, NGHTTP2_INTERNAL_ERROR);
            return (ssize_t)n;
        }
        if (st->close_after) {
            c->closing = true;
            *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
            return (ssize_t)n;
        }
        *flags |= NGHTTP2_DATA_FLAG_EOF;
        if (st->tr != NULL) {
            nghttp2_nv nv[8];
            size_t k = 0;
            for (; st->tr[2 * k] != NULL && k < 8; k++) {
                nv[k].name = (uint8_t *)st->tr[2 * k];
                nv[k].namelen = strlen(st->tr[2 * k]);
                nv[k].value = (uint8_t *)st->tr[2 * k + 1];
                nv[k].valuelen = strlen(st->tr[2 * k + 1]);
                nv[k].flags = NGHTTP2_NV_FLAG_NONE;
            }
            *flags |= NGHTTP2_DATA_FLAG_NO_END_STREAM;
            nghttp2_submit_trailer(s, id, nv, k);
        }
    }
    return (ssize_t)n;
}

static size_t to_nv(nghttp2_nv *nv, const char *const *kv)
{
    size_t k = 0;
    for (; kv != NULL && kv[2 * k] != NULL; k++) {
        nv[k].name = (uint8_t *)kv[2 * k];
        nv[k].namelen = strlen(kv[2 * k]);
        nv[k].value = (uint8_t *)kv[2 * k + 1];
        nv[k].valuelen = strlen(kv[2 * k + 1]);
        nv[k].flags = NGHTTP2_NV_FLAG_NONE;
    }
    return k;
}

/* Answers st with headers hdrs (name, value, ..., NULL), then data in DATA frames of chunk bytes,
 * then trailers tr (NULL: END_STREAM on the last DATA frame). data NULL and tr NULL: the headers
 * end the stream (trailers-only when they hold grpc-status). */
static void answer(fconn *c, fstream *st, const char *const *hdrs, const void *data, size_t len,
                   size_t chunk, const char *const *tr)
{
    nghttp2_nv nv[16];
    size_t n = to_nv(nv, hdrs);
    st->data = data;
    st->data_len = len;
    st->chunk = chunk > 0 ? chunk : 16384;
    st->tr = tr;
    nghttp2_data_provider prd = {.source = {.ptr = st}, .read_callback = s_read_data};
    nghttp2_submit_response(c->h2, st->id, nv, n, data != NULL || tr != NULL ? &prd : NULL);
}

static const char *const OK_HDRS[] = {":status", "200", "content-type", "application/grpc", NULL};
static const char *const OK_TR[] = {"grpc-status", "0", NULL};

/* A GetPinResponse whose pin has key, framed with the 5-byte prefix, into out. */
static size_t get_resp(const char *key, uint8_t *out)
{
    Memorypins__V1__Pin pin = MEMORYPINS__V1__PIN__INIT;
    pin.key = (char *)key;
    pin.tenant_id = "t";
    Memorypins__V1__GetPinResponse r = MEMORYPINS__V1__GET_PIN_RESPONSE__INIT;
    r.pin = &pin;
    size_t n = protobuf_c_message_pack(&r.base, out + 5);
    out[0] = 0;
    out[1] = (uint8_t)(n >> 24);
    out[2] = (uint8_t)(n >> 16);
    out[3] = (uint8_t)(n >> 8);
    out[4] = (uint8_t)n;
    return n + 5;
}

static uint8_t RESP[256];
static size_t RESP_LEN;

static void script_ok(fconn *c, fstream *s, int nth)
{
    (void)nth;
    answer(c, s, OK_HDRS, RESP, RESP_LEN, 3, OK_TR);
}

/* ---- client helpers ------------------------------------------------------------------------ */

static pins_client *client(pins_options *o)
{
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", F.port);
    pins_options d;
    if (o == NULL) {
        pins_options_init(&d);
        o = &d;
    }
    o->addr = addr;
    if (o->timeout_ms == 0)
        o->timeout_ms = 5000;
    pins_status st = PINS_STATUS_INIT;
    pins_client *c = pins_client_new(o, &st);
    assert_non_null(c);
    pins_status_clear(&st);
    return c;
}

static int get_pin(pins_client *c, const pins_call_options *co, pins_status *st,
                   Memorypins__V1__GetPinResponse **presp)
{
    Memorypins__V1__GetPinRequest req = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    req.tenant_id = "t";
    req.key = "k";
    Memorypins__V1__GetPinResponse *r = NULL;
    int rv = pins_get_pin(c, &req, &r, co, st);
    if (presp != NULL)
        *presp = r;
    else if (r != NULL)
        pins_message_free(&r->base);
    return rv;
}

static int upsert(pins_client *c, const pins_call_options *co, pins_status *st)
{
    Memorypins__V1__UpsertPinRequest req = MEMORYPINS__V1__UPSERT_PIN_REQUEST__INIT;
    req.tenant_id = "t";
    req.key = "k";
    Memorypins__V1__UpsertPinResponse *r = NULL;
    int rv = pins_upsert_pin(c, &req, &r, co, st);
    if (r != NULL)
        pins_message_free(&r->base);
    return rv;
}

static int setup(void **state)
{
    (void)state;
    RESP_LEN = get_resp("k1", RESP);
    return 0;
}

/* ---- tests --------------------------------------------------------------------------------- */

static void test_conn_message_split_across_data_frames(void **state)
{
    (void)state;
    fake_start(script_ok);
    pins_client *c = client(NULL);
    pins_status st = PINS_STATUS_INIT;
    Memorypins__V1__GetPinResponse *r = NULL;
    assert_int_equal(get_pin(c, NULL, &st, &r), 0);
    assert_non_null(r);
    assert_string_equal(r->pin->key, "k1");
    assert_int_equal(st.attempts, 1);
    assert_int_equal(st.http_status, 200);
    assert_true(st.from_server);
    pins_message_free(&r->base);
    /* The same connection serves the next call. */
    assert_int_equal(get_pin(c, NULL, &st, NULL), 0);
    assert_int_equal(fake_get(&F.nconns), 1);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static uint8_t STREAM_BYTES[512];
static size_t STREAM_LEN;

static void script_stream(fconn *c, fstream *s, int nth)
{
    (void)nth;
    answer(c, s, OK_HDRS, STREAM_BYTES, STREAM_LEN, 7, OK_TR);
}

static void test_conn_stream_several_messages_and_empty(void **state)
{
    (void)state;
    /* Three events, the middle one empty (all defaults), in 7-byte DATA frames. */
    Memorypins__V1__Pin pin = MEMORYPINS__V1__PIN__INIT;
    pin.key = "w";
    Memorypins__V1__WatchPinsResponse ev = MEMORYPINS__V1__WATCH_PINS_RESPONSE__INIT;
    ev.type = MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_PUT;
    ev.pin = &pin;
    size_t off = 0;
    for (int i = 0; i < 3; i++) {
        size_t n = i == 1 ? 0 : protobuf_c_message_pack(&ev.base, STREAM_BYTES + off + 5);
        STREAM_BYTES[off] = 0;
        STREAM_BYTES[off + 1] = STREAM_BYTES[off + 2] = STREAM_BYTES[off + 3] = 0;
        STREAM_BYTES[off + 4] = (uint8_t)n;
        off += n + 5;
    }
    STREAM_LEN = off;
    fake_start(script_stream);
    pins_client *c = client(NULL);
    pins_status st = PINS_STATUS_INIT;
    Memorypins__V1__WatchPinsRequest req = MEMORYPINS__V1__WATCH_PINS_REQUEST__INIT;
    pins_stream *s = pins_watch_pins(c, &req, NULL, &st);
    assert_non_null(s);
    int keys = 0;
    for (int i = 0; i < 3; i++) {
        Memorypins__V1__WatchPinsResponse *e = NULL;
        assert_int_equal(pins_watch_next(s, &e, &st), 1);
        assert_non_null(e);
        if (e->pin != NULL && strcmp(e->pin->key, "w") == 0)
            keys++;
        pins_message_free(&e->base);
    }
    assert_int_equal(keys, 2);
    assert_int_equal(pins_watch_next(s, NULL, &st), 0);
    assert_int_equal(st.code, PINS_CODE_OK);
    assert_int_equal(pins_watch_next(s, NULL, &st), 0); /* the end stays the end */
    pins_stream_close(s);
    assert_true(strstr(F.reqs[0], ":path: /memorypins.v1.MemoryPins/WatchPins\n") != NULL);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static void script_trailers_only(fconn *c, fstream *s, int nth)
{
    (void)nth;
    static const char *const h[] = {":status",
                                    "200",
                                    "content-type",
                                    "application/grpc",
                                    "grpc-status",
                                    "5",
                                    "grpc-message",
                                    "pin%20not%20found%3A%20k",
                                    "x-request-id",
                                    "srv-1",
                                    NULL};
    answer(c, s, h, NULL, 0, 0, NULL);
}

static void test_conn_trailers_only_status_and_message(void **state)
{
    (void)state;
    fake_start(script_trailers_only);
    pins_client *c = client(NULL);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(get_pin(c, NULL, &st, NULL), PINS_CODE_NOT_FOUND);
    assert_string_equal(st.message, "pin not found: k");
    assert_true(st.from_server);
    assert_string_equal(st.request_id, "srv-1");
    assert_string_equal(pins_status_metadata(&st, "x-request-id"), "srv-1");
    assert_int_equal(st.attempts, 1); /* NOT_FOUND is never retried */
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static const char *HTTP_STATUS;

static void script_http(fconn *c, fstream *s, int nth)
{
    (void)nth;
    const char *h[] = {":status", HTTP_STATUS, "content-type", "text/plain", NULL};
    answer(c, s, h, "nope", 4, 0, NULL);
}

static void test_conn_http_status_mapping(void **state)
{
    (void)state;
    static const struct {
        const char *http;
        int code;
    } rows[] = {
        {"400", PINS_CODE_INTERNAL},          {"401", PINS_CODE_UNAUTHENTICATED},
        {"403", PINS_CODE_PERMISSION_DENIED}, {"404", PINS_CODE_UNIMPLEMENTED},
        {"429", PINS_CODE_UNAVAILABLE},       {"502", PINS_CODE_UNAVAILABLE},
        {"503", PINS_CODE_UNAVAILABLE},       {"504", PINS_CODE_UNAVAILABLE},
        {"500", PINS_CODE_UNKNOWN},
    };
    fake_start(script_http);
    pins_client *c = client(NULL);
    pins_status st = PINS_STATUS_INIT;
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        HTTP_STATUS = rows[i].http; /* read by the server thread after the request is sent */
        assert_int_equal(upsert(c, NULL, &st), rows[i].code);
        assert_int_equal(st.http_status, (int)strtol(rows[i].http, NULL, 10));
        assert_false(st.from_server);
    }
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static const char *const *TRAILERS;

static void script_trailers(fconn *c, fstream *s, int nth)
{
    (void)nth;
    answer(c, s, OK_HDRS, RESP, RESP_LEN, 0, TRAILERS);
}

static void test_conn_bad_grpc_status_is_internal(void **state)
{
    (void)state;
    static const char *const tr[] = {"grpc-status", "abc", NULL};
    TRAILERS = tr;
    fake_start(script_trailers);
    pins_client *c = client(NULL);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(get_pin(c, NULL, &st, NULL), PINS_CODE_INTERNAL);
    assert_non_null(strstr(st.message, "grpc-status"));
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static const uint8_t *BODY;
static size_t BODY_LEN;

static void script_body(fconn *c, fstream *s, int nth)
{
    (void)nth;
    answer(c, s, OK_HDRS, BODY, BODY_LEN, 0, TRAILERS);
}

static void body_case(const void *body, size_t len, const char *const *tr, size_t max_msg, int want,
                      const char *want_text, bool want_rst)
{
    BODY = body;
    BODY_LEN = len;
    TRAILERS = tr;
    fake_start(script_body);
    pins_options o;
    pins_options_init(&o);
    if (max_msg > 0)
        o.max_message_bytes = max_msg;
    pins_client *c = client(&o);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(get_pin(c, NULL, &st, NULL), want);
    assert_non_null(strstr(st.message, want_text));
    assert_false(st.from_server);
    assert_int_equal(st.attempts, 1);
    if (want_rst) {
        assert_int_equal(fake_wait(&F.nrst, 1, 2000), 1);
        assert_int_equal(F.rst_code, NGHTTP2_CANCEL);
    }
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static void test_conn_truncated_message(void **state)
{
    (void)state;
    static const uint8_t part[] = {0, 0, 0, 0, 10, 1, 2, 3};
    body_case(part, sizeof(part), OK_TR, 0, PINS_CODE_INTERNAL, "truncated message", false);
}

static void test_conn_length_prefix_over_max(void **state)
{
    (void)state;
    static const uint8_t lie[] = {0, 0x7f, 0xff, 0xff, 0xff, 1, 2, 3};
    body_case(lie, sizeof(lie), OK_TR, 1024, PINS_CODE_RESOURCE_EXHAUSTED, "larger than 1024",
              true);
}

static void test_conn_compressed_flag(void **state)
{
    (void)state;
    static const uint8_t z[] = {1, 0, 0, 0, 2, 'z', 'z'};
    body_case(z, sizeof(z), OK_TR, 0, PINS_CODE_INTERNAL, "compressed", true);
}

static void test_conn_missing_trailers(void **state)
{
    (void)state;
    body_case(RESP, RESP_LEN, NULL, 0, PINS_CODE_INTERNAL, "missing trailers", false);
}

static void test_conn_undecodable_and_two_messages(void **state)
{
    (void)state;
    static const uint8_t junk[] = {0, 0, 0, 0, 2, 0xff, 0xff};
    body_case(junk, sizeof(junk), OK_TR, 0, PINS_CODE_INTERNAL, "undecodable", true);
    static uint8_t two[512];
    memcpy(two, RESP, RESP_LEN);
    memcpy(two + RESP_LEN, RESP, RESP_LEN);
    body_case(two, 2 * RESP_LEN, OK_TR, 0, PINS_CODE_INTERNAL, "more than one message", true);
}

static void script_drop(fconn *c, fstream *s, int nth)
{
    (void)nth;
    s->close_after = true;
    answer(c, s, OK_HDRS, RESP, 4, 0, NULL); /* a part of the prefix, then the close */
}

static void test_conn_server_closes_mid_stream(void **state)
{
    (void)state;
    fake_start(script_drop);
    pins_client *c = client(NULL);
    pins_status st = PINS_STATUS_INIT;
    pins_call_options co = {.no_retry = true};
    assert_int_equal(get_pin(c, &co, &st, NULL), PINS_CODE_UNAVAILABLE);
    assert_false(st.from_server);
    assert_int_equal(st.attempts, 1);
    /* The next call opens a new connection. */
    assert_int_equal(upsert(c, NULL, &st), PINS_CODE_UNAVAILABLE);
    assert_int_equal(st.attempts, 1);
    assert_int_equal(fake_get(&F.nconns), 2);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

/* ---- event-driven helpers ------------------------------------------------------------------ */

typedef struct done_rec {
    int n;
    int code;
    int attempts;
    bool had_resp;
} done_rec;

static void on_done(void *arg, ProtobufCMessage *resp, const pins_status *st)
{
    done_rec *d = arg;
    d->n++;
    d->code = st->code;
    d->attempts = st->attempts;
    d->had_resp = resp != NULL;
    pins_message_free(resp);
}

static pins_conn *econn(struct event_base *base, pins_options *o)
{
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", F.port);
    pins_options d;
    if (o == NULL) {
        pins_options_init(&d);
        o = &d;
    }
    o->addr = addr;
    if (o->timeout_ms == 0)
        o->timeout_ms = 5000;
    pins_conn *conn = pins_conn_new(base, o, NULL);
    assert_non_null(conn);
    return conn;
}

/* Runs base until every rec has n >= 1 (bounded: 5 s). */
static void run_until_done(struct event_base *base, done_rec *recs, int count)
{
    for (int i = 0; i < 5000; i++) {
        bool all = true;
        for (int k = 0; k < count; k++)
            all = all && recs[k].n > 0;
        if (all)
            return;
        event_base_loop(base, EVLOOP_NONBLOCK);
        usleep(1000);
    }
    fail_msg("calls did not finish in time");
}

static void run_until_reqs(struct event_base *base, int want)
{
    for (int i = 0; i < 5000 && fake_get(&F.nreqs) < want; i++) {
        event_base_loop(base, EVLOOP_NONBLOCK);
        usleep(1000);
    }
    assert_true(fake_get(&F.nreqs) >= want);
}

static void script_goaway(fconn *c, fstream *s, int nth)
{
    if (nth == 0) {
        F.held = s; /* stream 1 waits for the second request */
        return;
    }
    if (nth == 1) {
        /* GOAWAY naming stream 1 as the last processed: stream 3 is refused; 1 finishes. */
        nghttp2_submit_goaway(c->h2, NGHTTP2_FLAG_NONE, F.held->id, NGHTTP2_NO_ERROR, NULL, 0);
        answer(c, F.held, OK_HDRS, RESP, RESP_LEN, 0, OK_TR);
        return;
    }
    answer(c, s, OK_HDRS, RESP, RESP_LEN, 0, OK_TR);
}

static void test_conn_goaway_retries_above_last_stream_id(void **state)
{
    (void)state;
    fake_start(script_goaway);
    struct event_base *base = event_base_new();
    pins_conn *conn = econn(base, NULL);
    Memorypins__V1__UpsertPinRequest req = MEMORYPINS__V1__UPSERT_PIN_REQUEST__INIT;
    done_rec d[2] = {{0}, {0}};
    assert_non_null(
        pins_conn_start(conn, PINS_RPC_UPSERT_PIN, &req.base, NULL, NULL, on_done, &d[0]));
    run_until_reqs(base, 1);
    assert_non_null(
        pins_conn_start(conn, PINS_RPC_UPSERT_PIN, &req.base, NULL, NULL, on_done, &d[1]));
    run_until_done(base, d, 2);
    /* Stream 1 finished on the old connection, stream 3 went again on a new one, though
     * UpsertPin is not idempotent: the server never processed it. */
    assert_int_equal(d[0].code, PINS_CODE_OK);
    assert_int_equal(d[0].attempts, 1);
    assert_int_equal(d[1].code, PINS_CODE_OK);
    assert_int_equal(d[1].attempts, 2);
    assert_int_equal(fake_get(&F.nconns), 2);
    assert_int_equal(fake_get(&F.nreqs), 3);
    assert_int_equal(pins_conn_pending(conn), 0);
    pins_conn_free(conn);
    event_base_free(base);
    fake_stop();
}

static void script_refuse_first(fconn *c, fstream *s, int nth)
{
    if (nth == 0)
        nghttp2_submit_rst_stream(c->h2, NGHTTP2_FLAG_NONE, s->id, NGHTTP2_REFUSED_STREAM);
    else
        answer(c, s, OK_HDRS, RESP, RESP_LEN, 0, OK_TR);
}

static void test_conn_refused_stream_is_retried(void **state)
{
    (void)state;
    fake_start(script_refuse_first);
    pins_client *c = client(NULL);
    pins_status st = PINS_STATUS_INIT;
    pins_call_options co = {.no_retry = true}; /* transparent retries still happen */
    assert_int_equal(upsert(c, &co, &st), 0);
    assert_int_equal(st.attempts, 2);
    assert_int_equal(fake_get(&F.nreqs), 2);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static void script_silent(fconn *c, fstream *s, int nth)
{
    (void)c;
    (void)s;
    (void)nth;
}

static void test_conn_deadline_cancels_the_stream(void **state)
{
    (void)state;
    fake_start(script_silent);
    pins_client *c = client(NULL);
    pins_status st = PINS_STATUS_INIT;
    pins_call_options co = {.timeout_ms = 300};
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    assert_int_equal(get_pin(c, &co, &st, NULL), PINS_CODE_DEADLINE_EXCEEDED);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    assert_true(ms >= 290 && ms < 2000);
    assert_false(st.from_server);
    assert_int_equal(fake_wait(&F.nrst, 1, 2000), 1);
    assert_int_equal(F.rst_code, NGHTTP2_CANCEL);
    const char *t = strstr(F.reqs[0], "grpc-timeout: ");
    assert_non_null(t);
    char *end = NULL;
    long v = strtol(t + 14, &end, 10);
    assert_true(v > 200 && v <= 300);
    assert_int_equal(*end, 'm');
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static const char *const *UNAVAIL_TR;

static void script_unavailable(fconn *c, fstream *s, int nth)
{
    (void)nth;
    answer(c, s, UNAVAIL_TR, NULL, 0, 0, NULL);
}

static void test_conn_backoff_retry_only_for_idempotent(void **state)
{
    (void)state;
    static const char *const h[] = {":status",          "200",         "content-type",
                                    "application/grpc", "grpc-status", "14",
                                    "grpc-message",     "try%20again", NULL};
    UNAVAIL_TR = h;
    fake_start(script_unavailable);
    pins_options o;
    pins_options_init(&o);
    o.max_retries = 2;
    o.backoff_initial_ms = 10;
    o.backoff_max_ms = 20;
    pins_client *c = client(&o);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(get_pin(c, NULL, &st, NULL), PINS_CODE_UNAVAILABLE);
    assert_int_equal(st.attempts, 3);
    assert_string_equal(st.message, "try again");
    assert_int_equal(fake_get(&F.nreqs), 3);
    assert_int_equal(upsert(c, NULL, &st), PINS_CODE_UNAVAILABLE);
    assert_int_equal(st.attempts, 1);
    assert_int_equal(fake_get(&F.nreqs), 4);
    pins_call_options co = {.no_retry = true};
    assert_int_equal(get_pin(c, &co, &st, NULL), PINS_CODE_UNAVAILABLE);
    assert_int_equal(st.attempts, 1);
    assert_int_equal(fake_get(&F.nreqs), 5);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static void test_conn_retry_after_resource_exhausted(void **state)
{
    (void)state;
    static const char *const soon[] = {":status",          "200",         "content-type",
                                       "application/grpc", "grpc-status", "8",
                                       "retry-after",      "0",           NULL};
    static const char *const late[] = {":status",          "200",         "content-type",
                                       "application/grpc", "grpc-status", "8",
                                       "retry-after",      "60",          NULL};
    UNAVAIL_TR = soon;
    fake_start(script_unavailable);
    pins_options o;
    pins_options_init(&o);
    o.max_retries = 1;
    pins_client *c = client(&o);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(get_pin(c, NULL, &st, NULL), PINS_CODE_RESOURCE_EXHAUSTED);
    assert_int_equal(st.attempts, 2);
    assert_int_equal(st.retry_after_ms, 0);
    UNAVAIL_TR = late; /* longer than backoff_max_ms: not waited for */
    assert_int_equal(get_pin(c, NULL, &st, NULL), PINS_CODE_RESOURCE_EXHAUSTED);
    assert_int_equal(st.attempts, 1);
    assert_int_equal(st.retry_after_ms, 60000);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static void test_conn_free_cancels_running_calls(void **state)
{
    (void)state;
    fake_start(script_silent);
    struct event_base *base = event_base_new();
    pins_conn *conn = econn(base, NULL);
    Memorypins__V1__GetPinRequest req = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    done_rec d[4] = {{0}, {0}, {0}, {0}};
    for (int i = 0; i < 3; i++)
        assert_non_null(
            pins_conn_start(conn, PINS_RPC_GET_PIN, &req.base, NULL, NULL, on_done, &d[i]));
    /* A start never runs on_done itself, not even for bad metadata. */
    pins_metadata bad = {.name = "Bad Name", .value = "v"};
    pins_call_options co = {.metadata = &bad, .metadata_count = 1};
    assert_non_null(pins_conn_start(conn, PINS_RPC_GET_PIN, &req.base, &co, NULL, on_done, &d[3]));
    assert_int_equal(d[3].n, 0);
    /* A request that is not the method's input is refused without a callback. */
    Memorypins__V1__UpsertPinRequest other = MEMORYPINS__V1__UPSERT_PIN_REQUEST__INIT;
    assert_null(pins_conn_start(conn, PINS_RPC_GET_PIN, &other.base, NULL, NULL, on_done, &d[3]));
    run_until_done(base, &d[3], 1);
    assert_int_equal(d[3].code, PINS_CODE_INVALID_ARGUMENT);
    run_until_reqs(base, 3);
    assert_int_equal(pins_conn_pending(conn), 3);
    pins_conn_free(conn);
    for (int i = 0; i < 3; i++) {
        assert_int_equal(d[i].n, 1);
        assert_int_equal(d[i].code, PINS_CODE_CANCELLED);
        assert_false(d[i].had_resp);
    }
    event_base_free(base);
    fake_stop();
}

static void script_echo(fconn *c, fstream *s, int nth)
{
    (void)nth;
    static const char *const h[] = {":status", "200", "content-type", "application/grpc", "x-echo",
                                    "yes",     NULL};
    static const char *const tr[] = {"grpc-status", "0", "x-t-bin", "AAEC", NULL};
    answer(c, s, h, RESP, RESP_LEN, 0, tr);
}

static void test_conn_metadata_and_tokens(void **state)
{
    (void)state;
    fake_start(script_echo);
    pins_options o;
    pins_options_init(&o);
    o.machine_token = "mt-1";
    o.bearer_token = "bt-2";
    o.user_agent = "test-agent/1";
    pins_client *c = client(&o);
    pins_metadata md[] = {{.name = "x-a", .value = "1"},
                          {.name = "x-b-bin", .value = "\0\1", .value_len = 2}};
    pins_call_options co = {.request_id = "rid-7", .metadata = md, .metadata_count = 2};
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(get_pin(c, &co, &st, NULL), 0);
    const char *r = F.reqs[0];
    static const char *const want[] = {
        ":method: POST\n",
        ":scheme: http\n",
        ":path: /memorypins.v1.MemoryPins/GetPin\n",
        "content-type: application/grpc\n",
        "te: trailers\n",
        "user-agent: test-agent/1\n",
        "x-request-id: rid-7\n",
        "x-machine-token: mt-1\n",
        "authorization: Bearer bt-2\n",
        "x-a: 1\n",
        "x-b-bin: AAE=\n",
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (strstr(r, want[i]) == NULL)
            fail_msg("request lacks %s in:\n%s", want[i], r);
    assert_non_null(strstr(r, "grpc-timeout: ")); /* the 5 s default deadline */
    assert_string_equal(pins_status_metadata(&st, "x-echo"), "yes");
    const char *tb = pins_status_metadata(&st, "x-t-bin");
    assert_non_null(tb);
    assert_memory_equal(tb, "\0\1\2", 3);
    assert_string_equal(st.request_id, "rid-7");
    /* A generated request id is 32 hex digits. */
    assert_int_equal(get_pin(c, NULL, &st, NULL), 0);
    assert_int_equal(strlen(st.request_id), 32);
    assert_int_equal(strspn(st.request_id, "0123456789abcdef"), 32);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static void script_probe(fconn *c, fstream *s, int nth)
{
    (void)nth;
    static const char *const h[] = {":status", "503", "content-type", "application/json", NULL};
    answer(c, s, h, "{\"ready\":false}", 15, 4, NULL);
}

static void test_conn_http_get(void **state)
{
    (void)state;
    fake_start(script_probe);
    pins_options o;
    pins_options_init(&o);
    o.machine_token = "mt-9";
    pins_client *c = client(&o);
    pins_status st = PINS_STATUS_INIT;
    int http = 0;
    char *body = NULL;
    size_t len = 0;
    assert_int_equal(pins_client_http_get(c, "/ready", &http, &body, &len, NULL, &st), 0);
    assert_int_equal(http, 503);
    assert_int_equal(len, 15);
    assert_string_equal(body, "{\"ready\":false}");
    free(body);
    assert_non_null(strstr(F.reqs[0], ":method: GET\n:scheme: http\n:path: /ready\n"));
    assert_non_null(strstr(F.reqs[0], "x-machine-token: mt-9\n"));
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static void test_conn_queue_beyond_max_concurrent_streams(void **state)
{
    (void)state;
    fake_start(script_ok);
    struct event_base *base = event_base_new();
    pins_options o;
    pins_options_init(&o);
    o.max_concurrent_streams = 1;
    pins_conn *conn = econn(base, &o);
    Memorypins__V1__GetPinRequest req = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    done_rec d[4] = {{0}, {0}, {0}, {0}};
    for (int i = 0; i < 4; i++)
        assert_non_null(
            pins_conn_start(conn, PINS_RPC_GET_PIN, &req.base, NULL, NULL, on_done, &d[i]));
    assert_int_equal(pins_conn_pending(conn), 4);
    run_until_done(base, d, 4);
    for (int i = 0; i < 4; i++) {
        assert_int_equal(d[i].code, PINS_CODE_OK);
        assert_true(d[i].had_resp);
    }
    assert_int_equal(fake_get(&F.max_open), 1);
    assert_int_equal(fake_get(&F.nconns), 1);
    pins_conn_free(conn);
    event_base_free(base);
    fake_stop();
}

static void test_conn_connect_refused(void **state)
{
    (void)state;
    /* A port nobody listens on: the listener's, after it closed. */
    fake_start(script_silent);
    int port = F.port;
    fake_stop();
    char addr[64];
    snprintf(addr, sizeof(addr), "http://127.0.0.1:%d", port);
    pins_options o;
    pins_options_init(&o);
    o.addr = addr;
    o.max_retries = 1;
    o.backoff_initial_ms = 5;
    pins_status st = PINS_STATUS_INIT;
    pins_client *c = pins_client_new(&o, &st);
    assert_non_null(c);
    assert_int_equal(upsert(c, NULL, &st), PINS_CODE_UNAVAILABLE);
    assert_false(st.from_server);
    assert_int_equal(st.attempts, 2); /* never processed: retried whatever the method */
    assert_non_null(strstr(st.message, "refused"));
    pins_status_clear(&st);
    pins_client_free(c);
    /* Bad options are refused at once. */
    o.addr = "[::1";
    assert_null(pins_client_new(&o, &st));
    assert_int_equal(st.code, PINS_CODE_INVALID_ARGUMENT);
    pins_status_clear(&st);
}

static void script_ok_then_close(fconn *c, fstream *s, int nth)
{
    (void)nth;
    c->close_when_idle = true;
    answer(c, s, OK_HDRS, RESP, RESP_LEN, 0, OK_TR);
}

/* Three upserts through a server (script) that closes each connection once it is idle, waiting
 * pause_us after each: every call goes to a new connection, in one attempt, although upserts are
 * not retried. */
static void reconnect_case(script_fn script, useconds_t pause_us)
{
    fake_start(script);
    pins_client *c = client(NULL);
    pins_status st = PINS_STATUS_INIT;
    for (int i = 0; i < 3; i++) {
        assert_int_equal(upsert(c, NULL, &st), 0);
        assert_int_equal(st.attempts, 1);
        assert_int_equal(fake_wait(&F.nconns, i + 1, 2000), i + 1);
        usleep(pause_us);
    }
    assert_int_equal(fake_get(&F.nconns), 3);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

/* The server closed the connection while the client was not reading. */
static void test_conn_reconnects_after_idle_close(void **state)
{
    (void)state;
    reconnect_case(script_ok_then_close, 50000);
}

static void script_ok_then_ping_and_close(fconn *c, fstream *s, int nth)
{
    (void)nth;
    c->close_when_idle = true;
    c->ping_when_idle = true;
    answer(c, s, OK_HDRS, RESP, RESP_LEN, 0, OK_TR);
}

/* The same with a frame between the answer and the EOF: the check of the idle link reads past
 * the frame's bytes (a short read) to the EOF, so the next call still goes to a new connection
 * instead of failing on the dead one. The PING and the close come 20 ms after the answer. */
static void test_conn_reconnects_after_a_frame_then_idle_close(void **state)
{
    (void)state;
    reconnect_case(script_ok_then_ping_and_close, 100000);
}

typedef struct cb_state {
    pins_conn *conn;
    pins_call *call;
    int messages;
    done_rec first;
    done_rec chained;
} cb_state;

static void on_chained_done(void *arg, ProtobufCMessage *resp, const pins_status *st)
{
    cb_state *s = arg;
    on_done(&s->chained, resp, st);
}

static void on_first_done(void *arg, ProtobufCMessage *resp, const pins_status *st)
{
    cb_state *s = arg;
    on_done(&s->first, resp, st);
    /* Starting a call from inside on_done is allowed. */
    Memorypins__V1__GetPinRequest req = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    assert_non_null(
        pins_conn_start(s->conn, PINS_RPC_GET_PIN, &req.base, NULL, NULL, on_chained_done, s));
}

static void on_first_message(void *arg, ProtobufCMessage *msg)
{
    cb_state *s = arg;
    s->messages++;
    pins_message_free(msg);
    /* Cancelling the call from inside its own callback: on_done runs now, the call is freed
     * after this callback unwinds, and no further message arrives. */
    pins_call_cancel(s->call);
    assert_int_equal(s->first.n, 1);
    pins_call_cancel(s->call); /* a second cancel of a finished call does nothing */
}

static void script_stream_then_ok(fconn *c, fstream *s, int nth)
{
    if (nth == 0)
        answer(c, s, OK_HDRS, STREAM_BYTES, STREAM_LEN, 0, NULL); /* no trailers: held open */
    else
        answer(c, s, OK_HDRS, RESP, RESP_LEN, 0, OK_TR);
}

static void test_conn_cancel_inside_on_message_and_start_inside_on_done(void **state)
{
    (void)state;
    /* Two events in one DATA frame. */
    Memorypins__V1__WatchPinsResponse ev = MEMORYPINS__V1__WATCH_PINS_RESPONSE__INIT;
    ev.type = MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_PUT;
    size_t n = protobuf_c_message_pack(&ev.base, STREAM_BYTES + 5);
    memset(STREAM_BYTES, 0, 5);
    STREAM_BYTES[4] = (uint8_t)n;
    memcpy(STREAM_BYTES + n + 5, STREAM_BYTES, n + 5);
    STREAM_LEN = 2 * (n + 5);
    fake_start(script_stream_then_ok);
    struct event_base *base = event_base_new();
    cb_state s = {0};
    s.conn = econn(base, NULL);
    Memorypins__V1__WatchPinsRequest req = MEMORYPINS__V1__WATCH_PINS_REQUEST__INIT;
    s.call = pins_conn_start(s.conn, PINS_RPC_WATCH_PINS, &req.base, NULL, on_first_message,
                             on_first_done, &s);
    assert_non_null(s.call);
    run_until_done(base, &s.chained, 1);
    assert_int_equal(s.messages, 1);
    assert_int_equal(s.first.n, 1);
    assert_int_equal(s.first.code, PINS_CODE_CANCELLED);
    assert_int_equal(s.chained.n, 1);
    assert_int_equal(s.chained.code, PINS_CODE_OK);
    assert_int_equal(fake_wait(&F.nrst, 1, 2000), 1);
    assert_int_equal(F.rst_code, NGHTTP2_CANCEL);
    pins_conn_free(s.conn);
    event_base_free(base);
    fake_stop();
}

static void test_conn_server_dropping_every_connection_is_bounded(void **state)
{
    (void)state;
    fake_start(script_silent);
    pthread_mutex_lock(&F.mu);
    F.drop_on_accept = true; /* before any client connects */
    pthread_mutex_unlock(&F.mu);
    pins_options o;
    pins_options_init(&o);
    o.max_retries = 2;
    o.backoff_initial_ms = 5;
    pins_client *c = client(&o);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(upsert(c, NULL, &st), PINS_CODE_UNAVAILABLE);
    assert_false(st.from_server);
    assert_true(st.attempts >= 1 && st.attempts <= 3);
    assert_true(fake_get(&F.nconns) <= 3);
    assert_int_equal(get_pin(c, NULL, &st, NULL), PINS_CODE_UNAVAILABLE);
    assert_int_equal(st.attempts, 3);
    assert_true(fake_get(&F.nconns) <= 6);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

/* ---- sweeps and callbacks ------------------------------------------------------------------ */

typedef struct restart_state {
    pins_conn *conn;
    int done;
    int refused; /* starts that returned NULL */
} restart_state;

/* Restarts its call after every end (a re-subscribing watcher), at most 1000 times. */
static void on_done_restart(void *arg, ProtobufCMessage *resp, const pins_status *st)
{
    (void)st;
    restart_state *r = arg;
    pins_message_free(resp);
    if (++r->done >= 1000)
        return;
    Grpc__Health__V1__HealthCheckRequest q = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    if (pins_conn_start(r->conn, PINS_RPC_HEALTH_CHECK, &q.base, NULL, NULL, on_done_restart, r) ==
        NULL)
        r->refused++;
}

static int closed_port(void)
{
    fake_start(script_silent);
    int port = F.port;
    fake_stop();
    return port;
}

static void test_conn_restart_from_on_done_is_not_swept_again(void **state)
{
    (void)state;
    char addr[64];
    snprintf(addr, sizeof(addr), "127.0.0.1:%d", closed_port());
    pins_options o;
    pins_options_init(&o);
    o.addr = addr;
    o.max_retries = 0;
    struct event_base *base = event_base_new();
    restart_state r = {0};
    r.conn = pins_conn_new(base, &o, NULL);
    assert_non_null(r.conn);
    Grpc__Health__V1__HealthCheckRequest q = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    assert_non_null(
        pins_conn_start(r.conn, PINS_RPC_HEALTH_CHECK, &q.base, NULL, NULL, on_done_restart, &r));
    /* Each turn of the loop fails the calls that existed when it began; the call restarted
     * from on_done waits for the next turn instead of failing again in the same sweep. */
    for (int i = 0; i < 3; i++)
        event_base_loop(base, EVLOOP_ONCE);
    assert_true(r.done >= 1);
    assert_true(r.done <= 3);
    assert_int_equal(pins_conn_pending(r.conn), 1);
    /* pins_conn_free cancels the running call and refuses the one its on_done starts. */
    int before = r.done;
    pins_conn_free(r.conn);
    assert_int_equal(r.done, before + 1);
    assert_int_equal(r.refused, 1);
    event_base_free(base);
}

typedef struct free_state {
    pins_conn *conn;
    done_rec first;
    done_rec second;
} free_state;

static void on_done_second(void *arg, ProtobufCMessage *resp, const pins_status *st)
{
    free_state *f = arg;
    on_done(&f->second, resp, st);
}

/* Frees the connection from inside the first call's on_done (run by the link's read handler). */
static void on_done_free_conn(void *arg, ProtobufCMessage *resp, const pins_status *st)
{
    free_state *f = arg;
    on_done(&f->first, resp, st);
    pins_conn_free(f->conn);
    /* The other call ended at once, with CANCELLED. */
    assert_int_equal(f->second.n, 1);
    assert_int_equal(f->second.code, PINS_CODE_CANCELLED);
}

static void script_first_ok_rest_silent(fconn *c, fstream *s, int nth)
{
    if (nth == 0)
        answer(c, s, OK_HDRS, RESP, RESP_LEN, 0, OK_TR);
}

static void test_conn_free_from_on_done(void **state)
{
    (void)state;
    fake_start(script_first_ok_rest_silent);
    struct event_base *base = event_base_new();
    free_state f = {0};
    f.conn = econn(base, NULL);
    Memorypins__V1__GetPinRequest req = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    assert_non_null(
        pins_conn_start(f.conn, PINS_RPC_GET_PIN, &req.base, NULL, NULL, on_done_free_conn, &f));
    /* Both go out in one flush, the first first: the server answers it and holds the other. */
    assert_non_null(
        pins_conn_start(f.conn, PINS_RPC_GET_PIN, &req.base, NULL, NULL, on_done_second, &f));
    /* The conn is freed when the handler that ran on_done returns (no use after free: the
     * sanitizer build checks it); the loop then has nothing of it left. */
    run_until_done(base, &f.first, 1);
    assert_int_equal(f.first.code, PINS_CODE_OK);
    assert_int_equal(f.second.n, 1);
    for (int i = 0; i < 20; i++)
        event_base_loop(base, EVLOOP_NONBLOCK);
    assert_int_equal(event_base_get_num_events(base, EVENT_BASE_COUNT_ADDED), 0);
    event_base_free(base);
    fake_stop();
}

static const char PROXY_PAGE[] = "<html><body><h1>503 Service Unavailable</h1></body></html>";

static void script_proxy_503(fconn *c, fstream *s, int nth)
{
    static const char *const hdrs[] = {":status", "503", "content-type", "text/html", NULL};
    if (nth == 0)
        answer(c, s, hdrs, PROXY_PAGE, sizeof(PROXY_PAGE) - 1, 0, NULL);
    else
        answer(c, s, OK_HDRS, RESP, RESP_LEN, 0, OK_TR);
}

static void test_conn_proxy_503_page_is_unavailable_and_retried(void **state)
{
    (void)state;
    fake_start(script_proxy_503);
    pins_options o;
    pins_options_init(&o);
    o.backoff_initial_ms = 5;
    pins_client *c = client(&o);
    pins_status st = PINS_STATUS_INIT;
    /* A read: the 503 is UNAVAILABLE (not a malformed message), retried, then answered. */
    assert_int_equal(get_pin(c, NULL, &st, NULL), 0);
    assert_int_equal(st.attempts, 2);
    assert_int_equal(fake_get(&F.nreqs), 2);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
    /* A write is not retried: the status is the 503's. */
    fake_start(script_proxy_503);
    c = client(&o);
    assert_int_equal(upsert(c, NULL, &st), PINS_CODE_UNAVAILABLE);
    assert_int_equal(st.http_status, 503);
    assert_int_equal(st.attempts, 1);
    assert_null(strstr(st.message, "flags"));
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static void test_conn_request_headers_too_large_fail_locally(void **state)
{
    (void)state;
    fake_start(script_ok);
    pins_client *c = client(NULL);
    static char big[300001];
    memset(big, 'a', sizeof(big) - 1);
    pins_metadata md = {.name = "x-big", .value = big, .value_len = sizeof(big) - 1};
    pins_call_options co = {.metadata = &md, .metadata_count = 1};
    pins_status st = PINS_STATUS_INIT;
    /* Larger than the header block nghttp2 sends: the request is at fault, not the server; it
     * is neither reported as a refused stream nor retried. */
    int rv = get_pin(c, &co, &st, NULL);
    assert_int_equal(rv, PINS_CODE_RESOURCE_EXHAUSTED);
    assert_int_equal(st.attempts, 1);
    assert_false(st.from_server);
    assert_null(strstr(st.message, "refused"));
    assert_int_equal(fake_get(&F.nreqs), 0);
    /* The connection still serves other calls. */
    assert_int_equal(get_pin(c, NULL, &st, NULL), 0);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static void test_conn_huge_timeouts_saturate(void **state)
{
    (void)state;
    fake_start(script_proxy_503);
    pins_options o;
    pins_options_init(&o);
    o.timeout_ms = INT64_MAX;
    o.backoff_initial_ms = 5;
    o.backoff_max_ms = INT64_MAX;
    o.connect_timeout_ms = INT64_MAX;
    pins_client *c = client(&o);
    pins_status st = PINS_STATUS_INIT;
    /* The deadline is far away, not "passed" by an overflow: the 503 is retried. */
    pins_call_options co = {.timeout_ms = INT64_MAX};
    assert_int_equal(get_pin(c, &co, &st, NULL), 0);
    assert_int_equal(st.attempts, 2);
    assert_non_null(strstr(F.reqs[1], "grpc-timeout: 99999999S"));
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static void script_status_then_rst(fconn *c, fstream *s, int nth)
{
    (void)nth;
    /* grpc-status 0 in the headers, an event, no END_STREAM, then a reset with an error. */
    static const char *const hdrs[] = {
        ":status", "200", "content-type", "application/grpc", "grpc-status", "0", NULL};
    s->rst_after = true;
    answer(c, s, hdrs, STREAM_BYTES, STREAM_LEN, 0, NULL);
}

static void test_conn_reset_after_grpc_status_is_an_error(void **state)
{
    (void)state;
    memset(STREAM_BYTES, 0, 5); /* one empty event */
    STREAM_LEN = 5;
    fake_start(script_status_then_rst);
    pins_client *c = client(NULL);
    pins_status st = PINS_STATUS_INIT;
    Memorypins__V1__WatchPinsRequest req = MEMORYPINS__V1__WATCH_PINS_REQUEST__INIT;
    pins_stream *s = pins_watch_pins(c, &req, NULL, &st);
    assert_non_null(s);
    Memorypins__V1__WatchPinsResponse *ev = NULL;
    assert_int_equal(pins_watch_next(s, &ev, &st), 1);
    assert_non_null(ev);
    pins_message_free(&ev->base);
    ev = NULL;
    /* A stream is OK only when it ended with END_STREAM: the reset after the status is the
     * stream's end. */
    assert_int_equal(pins_watch_next(s, &ev, &st), PINS_CODE_INTERNAL);
    assert_null(ev);
    assert_non_null(strstr(st.message, "reset"));
    pins_stream_close(s);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static void test_conn_bad_request_id_and_metadata_reach_on_done(void **state)
{
    (void)state;
    fake_start(script_ok);
    struct event_base *base = event_base_new();
    pins_conn *conn = econn(base, NULL);
    Memorypins__V1__GetPinRequest req = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    pins_metadata md = {.name = "x-note", .value = "a\r\nb"};
    pins_call_options bad_id = {.request_id = "abc\ndef"};
    pins_call_options bad_md = {.metadata = &md, .metadata_count = 1};
    done_rec d[2] = {{0}, {0}};
    /* A call is started (not NULL) and ends with INVALID_ARGUMENT through on_done. */
    assert_non_null(
        pins_conn_start(conn, PINS_RPC_GET_PIN, &req.base, &bad_id, NULL, on_done, &d[0]));
    assert_non_null(
        pins_conn_start(conn, PINS_RPC_GET_PIN, &req.base, &bad_md, NULL, on_done, &d[1]));
    run_until_done(base, d, 2);
    assert_int_equal(d[0].code, PINS_CODE_INVALID_ARGUMENT);
    assert_int_equal(d[1].code, PINS_CODE_INVALID_ARGUMENT);
    assert_int_equal(fake_get(&F.nreqs), 0);
    pins_conn_free(conn);
    event_base_free(base);
    /* The blocking API says the same, not "out of memory". */
    pins_client *c = client(NULL);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(get_pin(c, &bad_id, &st, NULL), PINS_CODE_INVALID_ARGUMENT);
    assert_non_null(strstr(st.message, "request id"));
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static void test_conn_address_with_user_information_is_refused(void **state)
{
    (void)state;
    pins_options o;
    pins_options_init(&o);
    o.addr = "https://admin:S3cret@pins.example:443";
    pins_status st = PINS_STATUS_INIT;
    assert_null(pins_client_new(&o, &st));
    assert_int_equal(st.code, PINS_CODE_INVALID_ARGUMENT);
    assert_non_null(strstr(st.message, "user information"));
    assert_null(strstr(st.message, "S3cret")); /* the secret is not echoed */
    assert_null(strstr(st.message, "admin"));
    o.addr = "user@127.0.0.1:50051";
    assert_null(pins_client_new(&o, &st));
    assert_int_equal(st.code, PINS_CODE_INVALID_ARGUMENT);
    pins_status_clear(&st);
}

/* TLS settings on a plaintext connection are refused (the tokens would go out in clear text
 * while the caller asked for TLS), and so are tokens that are not valid header values. */
static void test_conn_tls_settings_on_plaintext_and_bad_tokens_are_refused(void **state)
{
    (void)state;
    static const char secret[] = "s3cret\x01token";
    pins_status st = PINS_STATUS_INIT;
    for (int k = 0; k < 7; k++) {
        pins_options o;
        pins_options_init(&o);
        o.addr = k < 5 ? "http://127.0.0.1:50051" : "127.0.0.1:50051";
        switch (k) {
        case 0:
            o.ca_file = "/nonexistent/ca.pem";
            break;
        case 1:
            o.cert_file = "c.pem";
            o.key_file = "k.pem";
            break;
        case 2:
            o.server_name = "pins.example";
            break;
        case 3:
            o.insecure_skip_verify = true;
            break;
        case 4:
            o.tls = true;
            break; /* http:// is always plaintext */
        case 5:
            o.ca_file = "/nonexistent/ca.pem";
            break; /* bare address, tls not set */
        default:
            o.machine_token = secret;
            break;
        }
        assert_null(pins_client_new(&o, &st));
        assert_int_equal(st.code, PINS_CODE_INVALID_ARGUMENT);
        if (k < 6)
            assert_non_null(strstr(st.message, "TLS settings given for a plaintext connection"));
        else
            assert_non_null(strstr(st.message, "control character"));
        assert_null(strstr(st.message, "s3cret"));
    }
    pins_options o;
    pins_options_init(&o);
    o.bearer_token = "abc\x7f";
    assert_null(pins_client_new(&o, &st));
    assert_int_equal(st.code, PINS_CODE_INVALID_ARGUMENT);
    o.bearer_token = "abc\tdef"; /* a tab is allowed in a header value */
    pins_client *c = pins_client_new(&o, &st);
    assert_non_null(c);
    pins_client_free(c);
    pins_status_clear(&st);
}

static void script_early_hints_then_ok(fconn *c, fstream *s, int nth)
{
    (void)nth;
    static const char *const hints[] = {":status", "103", "link", "</x>; rel=preload", NULL};
    nghttp2_nv nv[4];
    size_t n = to_nv(nv, hints);
    nghttp2_submit_headers(c->h2, NGHTTP2_FLAG_NONE, s->id, NULL, nv, n, NULL);
    answer(c, s, OK_HDRS, RESP, RESP_LEN, 0, OK_TR);
}

static void test_conn_informational_response_is_skipped(void **state)
{
    (void)state;
    fake_start(script_early_hints_then_ok);
    pins_client *c = client(NULL);
    pins_status st = PINS_STATUS_INIT;
    Memorypins__V1__GetPinResponse *r = NULL;
    assert_int_equal(get_pin(c, NULL, &st, &r), 0);
    assert_non_null(r);
    assert_string_equal(r->pin->key, "k1");
    assert_int_equal(st.http_status, 200);
    assert_null(pins_status_metadata(&st, "link")); /* the 103's fields are not the response's */
    pins_message_free(&r->base);
    int http = 0;
    char *body = NULL;
    assert_int_equal(pins_client_http_get(c, "/ready", &http, &body, NULL, NULL, &st), 0);
    assert_int_equal(http, 200);
    free(body);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

#define MANY_EVENTS 5000
static uint8_t MANY_BYTES[MANY_EVENTS * 5];

static void script_many_events_then_ok(fconn *c, fstream *s, int nth)
{
    if (nth == 0)
        answer(c, s, OK_HDRS, MANY_BYTES, sizeof(MANY_BYTES), 0, NULL); /* held open */
    else
        answer(c, s, OK_HDRS, RESP, RESP_LEN, 0, OK_TR);
}

static void test_conn_blocking_stream_queue_is_bounded(void **state)
{
    (void)state;
    memset(MANY_BYTES, 0, sizeof(MANY_BYTES)); /* empty events */
    fake_start(script_many_events_then_ok);
    pins_client *c = client(NULL);
    pins_status st = PINS_STATUS_INIT;
    Memorypins__V1__WatchPinsRequest req = MEMORYPINS__V1__WATCH_PINS_REQUEST__INIT;
    pins_stream *s = pins_watch_pins(c, &req, NULL, &st);
    assert_non_null(s);
    /* Another call runs the loop while nobody reads the stream: the events queue up to the
     * bound, then the stream ends with RESOURCE_EXHAUSTED after the queued ones. */
    assert_int_equal(get_pin(c, NULL, &st, NULL), 0);
    for (int i = 0; i < 2000 && fake_get(&F.nrst) < 1; i++)
        assert_int_equal(get_pin(c, NULL, &st, NULL), 0);
    int n = 0;
    int rv = 1;
    for (int i = 0; i < MANY_EVENTS + 1 && rv == 1; i++) {
        Memorypins__V1__WatchPinsResponse *ev = NULL;
        rv = pins_watch_next(s, &ev, &st);
        if (rv == 1) {
            n++;
            pins_message_free(&ev->base);
        }
    }
    assert_int_equal(rv, PINS_CODE_RESOURCE_EXHAUSTED);
    assert_int_equal(n, 4096);
    pins_stream_close(s);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static void test_conn_name_resolved_once_per_kick(void **state)
{
    (void)state;
    pins_options o;
    pins_options_init(&o);
    o.addr = "nohost.invalid:50051";
    o.max_retries = 0;
    struct event_base *base = event_base_new();
    pins_conn *conn = pins_conn_new(base, &o, NULL);
    assert_non_null(conn);
    done_rec d[20];
    memset(d, 0, sizeof(d));
    Grpc__Health__V1__HealthCheckRequest q = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    for (int i = 0; i < 20; i++)
        assert_non_null(
            pins_conn_start(conn, PINS_RPC_HEALTH_CHECK, &q.base, NULL, NULL, on_done, &d[i]));
    int before = __atomic_load_n(&RESOLVES, __ATOMIC_SEQ_CST);
    run_until_done(base, d, 20);
    /* Twenty queued calls, one resolution: the failure is shared by the kick. */
    assert_int_equal(__atomic_load_n(&RESOLVES, __ATOMIC_SEQ_CST) - before, 1);
    for (int i = 0; i < 20; i++) {
        assert_int_equal(d[i].code, PINS_CODE_UNAVAILABLE);
        assert_int_equal(d[i].attempts, 1);
    }
    pins_conn_free(conn);
    event_base_free(base);
}

static void test_conn_socket_has_keepalive(void **state)
{
    (void)state;
    fake_start(script_ok);
    pins_client *c = client(NULL);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(get_pin(c, NULL, &st, NULL), 0);
    /* The client's socket (the one whose peer is the fake server) has keepalive on. */
    int found = 0;
    for (int fd = 3; fd < 1024; fd++) {
        struct sockaddr_in peer;
        socklen_t pl = sizeof(peer);
        if (getpeername(fd, (struct sockaddr *)&peer, &pl) != 0 || peer.sin_family != AF_INET ||
            ntohs(peer.sin_port) != F.port)
            continue;
        int on = 0;
        socklen_t ol = sizeof(on);
        assert_int_equal(getsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, &ol), 0);
        assert_true(on != 0);
        found++;
    }
    assert_int_equal(found, 1);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

static void test_conn_goaway_before_any_stream_is_bounded(void **state)
{
    (void)state;
    fake_start(script_ok);
    pthread_mutex_lock(&F.mu);
    F.goaway_on_accept = true; /* every connection says GOAWAY before it carries a stream */
    pthread_mutex_unlock(&F.mu);
    pins_options o;
    pins_options_init(&o);
    o.max_retries = 2;
    o.backoff_initial_ms = 5;
    o.timeout_ms = 3000;
    pins_client *c = client(&o);
    pins_status st = PINS_STATUS_INIT;
    /* Such a connection failed for the calls waiting on it: an attempt and a backoff each,
     * not a new connection at once without end (until the deadline). */
    assert_int_equal(get_pin(c, NULL, &st, NULL), PINS_CODE_UNAVAILABLE);
    assert_false(st.from_server);
    /* Every connection is an attempt: refused before use (counted, backed off) or carrying a
     * stream refused by the GOAWAY (sent again at once, at most 10 times). */
    assert_true(st.attempts <= 3 + 10);
    assert_true(fake_get(&F.nconns) <= st.attempts + 1);
    pins_status_clear(&st);
    pins_client_free(c);
    fake_stop();
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_conn_message_split_across_data_frames),
        cmocka_unit_test(test_conn_stream_several_messages_and_empty),
        cmocka_unit_test(test_conn_trailers_only_status_and_message),
        cmocka_unit_test(test_conn_http_status_mapping),
        cmocka_unit_test(test_conn_bad_grpc_status_is_internal),
        cmocka_unit_test(test_conn_truncated_message),
        cmocka_unit_test(test_conn_length_prefix_over_max),
        cmocka_unit_test(test_conn_compressed_flag),
        cmocka_unit_test(test_conn_missing_trailers),
        cmocka_unit_test(test_conn_undecodable_and_two_messages),
        cmocka_unit_test(test_conn_server_closes_mid_stream),
        cmocka_unit_test(test_conn_goaway_retries_above_last_stream_id),
        cmocka_unit_test(test_conn_refused_stream_is_retried),
        cmocka_unit_test(test_conn_deadline_cancels_the_stream),
        cmocka_unit_test(test_conn_backoff_retry_only_for_idempotent),
        cmocka_unit_test(test_conn_retry_after_resource_exhausted),
        cmocka_unit_test(test_conn_free_cancels_running_calls),
        cmocka_unit_test(test_conn_metadata_and_tokens),
        cmocka_unit_test(test_conn_http_get),
        cmocka_unit_test(test_conn_queue_beyond_max_concurrent_streams),
        cmocka_unit_test(test_conn_connect_refused),
        cmocka_unit_test(test_conn_reconnects_after_idle_close),
        cmocka_unit_test(test_conn_reconnects_after_a_frame_then_idle_close),
        cmocka_unit_test(test_conn_server_dropping_every_connection_is_bounded),
        cmocka_unit_test(test_conn_cancel_inside_on_message_and_start_inside_on_done),
        cmocka_unit_test(test_conn_restart_from_on_done_is_not_swept_again),
        cmocka_unit_test(test_conn_free_from_on_done),
        cmocka_unit_test(test_conn_proxy_503_page_is_unavailable_and_retried),
        cmocka_unit_test(test_conn_request_headers_too_large_fail_locally),
        cmocka_unit_test(test_conn_huge_timeouts_saturate),
        cmocka_unit_test(test_conn_reset_after_grpc_status_is_an_error),
        cmocka_unit_test(test_conn_bad_request_id_and_metadata_reach_on_done),
        cmocka_unit_test(test_conn_address_with_user_information_is_refused),
        cmocka_unit_test(test_conn_tls_settings_on_plaintext_and_bad_tokens_are_refused),
        cmocka_unit_test(test_conn_informational_response_is_skipped),
        cmocka_unit_test(test_conn_blocking_stream_queue_is_bounded),
        cmocka_unit_test(test_conn_name_resolved_once_per_kick),
        cmocka_unit_test(test_conn_socket_has_keepalive),
        cmocka_unit_test(test_conn_goaway_before_any_stream_is_bounded),
    };
    return cmocka_run_group_tests(tests, setup, NULL);
}
