/* client/blocking.c: the blocking API (pins_client, the typed wrappers, pins_stream and
 * pins_client_http_get) over the event-driven core.
 *
 * A pins_client owns a private event_base and one pins_conn on it. A blocking call starts an
 * asynchronous call and runs the base one round at a time (EVLOOP_ONCE) until the call's done
 * callback has run; the callback moves the call's status out (the status handed to on_done is the
 * call's own, freed after the callback, so this file may take its contents). A pins_stream queues
 * the messages its call delivers (unbounded in count, but the server's stream is the only
 * producer and the iterator consumes them one loop round later) and runs the base until one is
 * queued or the stream ends.
 */
#include "pins/client.h"

#include <event2/event.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"

struct pins_client {
    struct event_base *base;
    pins_conn *conn;
};

typedef struct waiter {
    bool done;
    ProtobufCMessage *resp;
    pins_status st;
} waiter;

/* Messages of a blocking stream waiting for pins_stream_next. They pile up only while another
 * call of the same client runs the loop; past this many the stream ends (RESOURCE_EXHAUSTED)
 * instead of growing without bound. */
#define STREAM_QUEUE_MAX 4096

typedef struct msg_node {
    ProtobufCMessage *msg;
    struct msg_node *next;
} msg_node;

struct pins_stream {
    pins_client *c;
    pins_call *call; /* NULL once done */
    bool done;
    msg_node *head;
    msg_node *tail;
    size_t queued; /* nodes in head..tail */
    pins_status st;
};

static void on_wait_done(void *arg, ProtobufCMessage *resp, const pins_status *st)
{
    waiter *w = arg;
    w->done = true;
    w->resp = resp;
    client__status_move(&w->st, (pins_status *)st);
}

/* Runs the client's base until *done. Returns 0, or -1 when the base has nothing left to wait
 * for (which would be a bug: the call's events keep it busy). */
static int run_until(pins_client *c, const bool *done)
{
    while (!*done) {
        int rv = event_base_loop(c->base, EVLOOP_ONCE);
        if (rv != 0 && !*done)
            return -1;
    }
    return 0;
}

pins_client *pins_client_new(const pins_options *opts, pins_status *st)
{
    pins_client *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        if (st != NULL)
            client__status_set(st, PINS_CODE_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    c->base = event_base_new();
    if (c->base == NULL) {
        if (st != NULL)
            client__status_set(st, PINS_CODE_RESOURCE_EXHAUSTED, "cannot create an event base");
        free(c);
        return NULL;
    }
    c->conn = pins_conn_new(c->base, opts, st);
    if (c->conn == NULL) {
        event_base_free(c->base);
        free(c);
        return NULL;
    }
    return c;
}

void pins_client_free(pins_client *c)
{
    if (c == NULL)
        return;
    pins_conn_free(c->conn);
    event_base_free(c->base);
    free(c);
}

/* Finishes a blocking call: status into st (or dropped), code returned. */
static int give_status(waiter *w, pins_status *st)
{
    int code = w->st.code;
    if (st != NULL)
        client__status_move(st, &w->st);
    else
        pins_status_clear(&w->st);
    return code;
}

static int bad_call(pins_status *st, const char *msg)
{
    if (st != NULL) {
        client__status_set(st, PINS_CODE_INVALID_ARGUMENT, "%s", msg);
        st->attempts = 0;
    }
    return PINS_CODE_INVALID_ARGUMENT;
}

int pins_client_call(pins_client *c, pins_rpc rpc, const ProtobufCMessage *req,
                     ProtobufCMessage **presp, const pins_call_options *copts, pins_status *st)
{
    const pins_method *m = pins_method_of(rpc);
    if (c == NULL || m == NULL || req == NULL)
        return bad_call(st, "no client, method or request");
    if (m->server_streaming)
        return bad_call(st, "a streaming method needs pins_stream_open");
    if (req->descriptor != m->input)
        return bad_call(st, "the request is not the method's input message");
    waiter w = {.done = false};
    pins_status_init(&w.st);
    pins_call *call = pins_conn_start(c->conn, rpc, req, copts, NULL, on_wait_done, &w);
    if (call == NULL)
        return bad_call(st, "cannot start the call (out of memory)");
    if (run_until(c, &w.done) != 0) {
        pins_call_cancel(call);
        client__status_set(&w.st, PINS_CODE_INTERNAL, "event loop stopped");
    }
    int code = give_status(&w, st);
    if (code == PINS_CODE_OK && presp != NULL)
        *presp = w.resp;
    else
        pins_message_free(w.resp);
    return code;
}

#define TYPED(fn, rpc, reqt, respt)                                                        \
    int fn(pins_client *c, const reqt *req, respt **presp, const pins_call_options *copts, \
           pins_status *st)                                                                \
    {                                                                                      \
        return pins_client_call(c, rpc, req != NULL ? &req->base : NULL,                   \
                                (ProtobufCMessage **)presp, copts, st);                    \
    }

TYPED(pins_upsert_pin, PINS_RPC_UPSERT_PIN, Memorypins__V1__UpsertPinRequest,
      Memorypins__V1__UpsertPinResponse)
TYPED(pins_get_pin, PINS_RPC_GET_PIN, Memorypins__V1__GetPinRequest, Memorypins__V1__GetPinResponse)
TYPED(pins_list_pins, PINS_RPC_LIST_PINS, Memorypins__V1__ListPinsRequest,
      Memorypins__V1__ListPinsResponse)
TYPED(pins_delete_pin, PINS_RPC_DELETE_PIN, Memorypins__V1__DeletePinRequest,
      Memorypins__V1__DeletePinResponse)
TYPED(pins_cleanup_expired_pins, PINS_RPC_CLEANUP_EXPIRED_PINS,
      Memorypins__V1__CleanupExpiredPinsRequest, Memorypins__V1__CleanupExpiredPinsResponse)
TYPED(pins_list_rbac_audit, PINS_RPC_LIST_RBAC_AUDIT, Memorypins__V1__ListRbacAuditRequest,
      Memorypins__V1__ListRbacAuditResponse)
TYPED(pins_cleanup_rbac_audit, PINS_RPC_CLEANUP_RBAC_AUDIT, Memorypins__V1__CleanupRbacAuditRequest,
      Memorypins__V1__CleanupRbacAuditResponse)
TYPED(pins_list_memory_audit, PINS_RPC_LIST_MEMORY_AUDIT, Memorypins__V1__ListMemoryAuditRequest,
      Memorypins__V1__ListMemoryAuditResponse)

#define EMPTY(fn, rpc, reqt, reqinit, respt)                                               \
    int fn(pins_client *c, respt **presp, const pins_call_options *copts, pins_status *st) \
    {                                                                                      \
        reqt req = reqinit;                                                                \
        return pins_client_call(c, rpc, &req.base, (ProtobufCMessage **)presp, copts, st); \
    }

EMPTY(pins_get_rbac_info, PINS_RPC_GET_RBAC_INFO, Memorypins__V1__GetRbacInfoRequest,
      MEMORYPINS__V1__GET_RBAC_INFO_REQUEST__INIT, Memorypins__V1__GetRbacInfoResponse)
EMPTY(pins_reload_rbac_policy, PINS_RPC_RELOAD_RBAC_POLICY, Memorypins__V1__ReloadRbacPolicyRequest,
      MEMORYPINS__V1__RELOAD_RBAC_POLICY_REQUEST__INIT, Memorypins__V1__ReloadRbacPolicyResponse)
EMPTY(pins_get_rbac_matrix, PINS_RPC_GET_RBAC_MATRIX, Memorypins__V1__GetRbacMatrixRequest,
      MEMORYPINS__V1__GET_RBAC_MATRIX_REQUEST__INIT, Memorypins__V1__GetRbacMatrixResponse)
EMPTY(pins_get_status, PINS_RPC_GET_STATUS, Memorypins__V1__GetStatusRequest,
      MEMORYPINS__V1__GET_STATUS_REQUEST__INIT, Memorypins__V1__GetStatusResponse)

int pins_health_check(pins_client *c, const char *service,
                      Grpc__Health__V1__HealthCheckResponse **presp, const pins_call_options *copts,
                      pins_status *st)
{
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)(service != NULL ? service : "");
    return pins_client_call(c, PINS_RPC_HEALTH_CHECK, &req.base, (ProtobufCMessage **)presp, copts,
                            st);
}

int pins_client_http_get(pins_client *c, const char *path, int *phttp_status, char **pbody,
                         size_t *plen, const pins_call_options *copts, pins_status *st)
{
    if (c == NULL || path == NULL || path[0] != '/')
        return bad_call(st, "the path must start with /");
    waiter w = {.done = false};
    pins_status_init(&w.st);
    char *body = NULL;
    size_t len = 0;
    pins_call *call = client__conn_get(c->conn, path, copts, on_wait_done, &w, &body, &len);
    if (call == NULL)
        return bad_call(st, "cannot start the request (bad path or out of memory)");
    if (run_until(c, &w.done) != 0) {
        pins_call_cancel(call);
        client__status_set(&w.st, PINS_CODE_INTERNAL, "event loop stopped");
    }
    int http = w.st.http_status;
    int code = give_status(&w, st);
    if (code != PINS_CODE_OK) {
        free(body);
        return code;
    }
    if (phttp_status != NULL)
        *phttp_status = http;
    if (plen != NULL)
        *plen = len;
    if (pbody != NULL)
        *pbody = body;
    else
        free(body);
    return 0;
}

/* ---- streams ------------------------------------------------------------------------------- */

static void on_stream_message(void *arg, ProtobufCMessage *msg)
{
    pins_stream *s = arg;
    if (s->queued >= STREAM_QUEUE_MAX) {
        pins_message_free(msg);
        pins_call_cancel(s->call);
        client__status_set(&s->st, PINS_CODE_RESOURCE_EXHAUSTED,
                           "more than %d stream messages waiting to be read", STREAM_QUEUE_MAX);
        return;
    }
    msg_node *n = malloc(sizeof(*n));
    if (n == NULL) {
        /* Losing a message silently would be worse than ending the stream. */
        pins_message_free(msg);
        pins_call_cancel(s->call);
        client__status_set(&s->st, PINS_CODE_RESOURCE_EXHAUSTED, "out of memory");
        return;
    }
    n->msg = msg;
    n->next = NULL;
    if (s->tail != NULL)
        s->tail->next = n;
    else
        s->head = n;
    s->tail = n;
    s->queued++;
}

static void on_stream_done(void *arg, ProtobufCMessage *resp, const pins_status *st)
{
    pins_stream *s = arg;
    pins_message_free(resp);
    s->done = true;
    s->call = NULL;
    if (s->st.code == PINS_CODE_OK) /* keep an earlier local failure */
        client__status_move(&s->st, (pins_status *)st);
}

pins_stream *pins_stream_open(pins_client *c, pins_rpc rpc, const ProtobufCMessage *req,
                              const pins_call_options *copts, pins_status *st)
{
    const pins_method *m = pins_method_of(rpc);
    if (c == NULL || m == NULL || req == NULL || !m->server_streaming ||
        req->descriptor != m->input) {
        bad_call(st, "not a streaming method, or the request is not its input message");
        return NULL;
    }
    pins_stream *s = calloc(1, sizeof(*s));
    if (s == NULL) {
        if (st != NULL)
            client__status_set(st, PINS_CODE_RESOURCE_EXHAUSTED, "out of memory");
        return NULL;
    }
    s->c = c;
    pins_status_init(&s->st);
    s->call = pins_conn_start(c->conn, rpc, req, copts, on_stream_message, on_stream_done, s);
    if (s->call == NULL) {
        free(s);
        bad_call(st, "cannot start the stream (out of memory)");
        return NULL;
    }
    if (st != NULL)
        client__status_set(st, PINS_CODE_OK, "%s", "");
    return s;
}

int pins_stream_next(pins_stream *s, ProtobufCMessage **pmsg, pins_status *st)
{
    if (s == NULL)
        return bad_call(st, "no stream");
    while (s->head == NULL && !s->done) {
        int rv = event_base_loop(s->c->base, EVLOOP_ONCE);
        if (rv != 0 && s->head == NULL && !s->done) {
            pins_call_cancel(s->call);
            client__status_set(&s->st, PINS_CODE_INTERNAL, "event loop stopped");
        }
    }
    if (s->head != NULL) {
        msg_node *n = s->head;
        s->head = n->next;
        if (s->head == NULL)
            s->tail = NULL;
        s->queued--;
        if (pmsg != NULL)
            *pmsg = n->msg;
        else
            pins_message_free(n->msg);
        free(n);
        return 1;
    }
    int code = s->st.code;
    if (st != NULL) {
        /* The final status stays with the stream too, for a later next(). */
        pins_status_clear(st);
        st->code = s->st.code;
        st->message = client__text(s->st.message);
        st->http_status = s->st.http_status;
        st->from_server = s->st.from_server;
        st->attempts = s->st.attempts;
        st->request_id = client__strdup(s->st.request_id);
        st->retry_after_ms = s->st.retry_after_ms;
        for (size_t i = 0; i < s->st.headers.count; i++)
            client__md_add(&st->headers, s->st.headers.items[i].name,
                           strlen(s->st.headers.items[i].name), s->st.headers.items[i].value,
                           s->st.headers.items[i].value_len);
        for (size_t i = 0; i < s->st.trailers.count; i++)
            client__md_add(&st->trailers, s->st.trailers.items[i].name,
                           strlen(s->st.trailers.items[i].name), s->st.trailers.items[i].value,
                           s->st.trailers.items[i].value_len);
        if (s->st.details != NULL) {
            st->details = malloc(s->st.details_len + 1);
            if (st->details != NULL) {
                memcpy(st->details, s->st.details, s->st.details_len);
                st->details_len = s->st.details_len;
            }
        }
    }
    return code;
}

void pins_stream_close(pins_stream *s)
{
    if (s == NULL)
        return;
    if (s->call != NULL)
        pins_call_cancel(s->call);
    while (s->head != NULL) {
        msg_node *n = s->head;
        s->head = n->next;
        pins_message_free(n->msg);
        free(n);
    }
    pins_status_clear(&s->st);
    free(s);
}

pins_stream *pins_watch_pins(pins_client *c, const Memorypins__V1__WatchPinsRequest *req,
                             const pins_call_options *copts, pins_status *st)
{
    return pins_stream_open(c, PINS_RPC_WATCH_PINS, req != NULL ? &req->base : NULL, copts, st);
}

int pins_watch_next(pins_stream *s, Memorypins__V1__WatchPinsResponse **pevent, pins_status *st)
{
    return pins_stream_next(s, (ProtobufCMessage **)pevent, st);
}
