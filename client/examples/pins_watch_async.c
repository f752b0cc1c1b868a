/* pins_watch_async.c: libpins-client's event-driven API on a libevent base.
 *
 * Opens one connection, starts a WatchPins stream on a tenant and then COUNT UpsertPin calls at
 * once (all of them concurrent HTTP/2 streams of that connection), prints every answer and every
 * event as it arrives, and stops when each upsert has answered and its event has been seen.
 *
 *   cc pins_watch_async.c $(pkg-config --cflags --libs pins-client libevent) -o pins_watch_async
 *   PINS_ADDR=127.0.0.1:50051 ./pins_watch_async [TENANT [COUNT]]
 *
 * PINS_ADDR, PINS_CA_FILE, MACHINE_SECRET_TOKEN and PINS_TOKEN as for pins_example.c. Exit
 * status: 0 done, 1 a call failed or the events did not all arrive within 10 s, 2 usage.
 */
#include <pins/client.h>

#include <event2/event.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_UPSERTS 64

struct app {
    struct event_base *base;
    pins_call *watch; /* NULL once its on_done has run */
    int upserts_left; /* upserts started and not answered yet */
    int events;       /* PUT events seen for our keys */
    int wanted;       /* events to wait for */
    int failed;
};

/* One upsert's context, handed to its on_done. */
struct upsert {
    struct app *app;
    char key[32];
};

static void finish_when_done(struct app *a)
{
    if (a->failed || (a->upserts_left == 0 && a->events >= a->wanted))
        event_base_loopbreak(a->base);
}

static const char *event_name(Memorypins__V1__WatchPinsResponse__EventType t)
{
    switch (t) {
    case MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_PUT:
        return "PUT";
    case MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_DELETE:
        return "DELETE";
    case MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_EXPIRE:
        return "EXPIRE";
    default:
        return "UNSPECIFIED";
    }
}

/* A WatchPins event: msg is new and ours to free. */
static void on_event(void *arg, ProtobufCMessage *msg)
{
    struct app *a = arg;
    Memorypins__V1__WatchPinsResponse *ev = (Memorypins__V1__WatchPinsResponse *)msg;
    if (ev->pin != NULL) {
        char *value = pins_value_to_json(ev->pin->value);
        printf("event: %s %s/%s version %lld %s\n", event_name(ev->type), ev->pin->tenant_id,
               ev->pin->key, (long long)ev->pin->version, value ? value : "null");
        free(value);
        if (ev->type == MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_PUT &&
            strncmp(ev->pin->key, "async-", 6) == 0)
            a->events++;
    }
    pins_message_free(msg);
    finish_when_done(a);
}

/* The watch ended: CANCELLED when we cancel it at the end, anything else is a failure. st lives
 * only for this callback. */
static void on_watch_done(void *arg, ProtobufCMessage *resp, const pins_status *st)
{
    struct app *a = arg;
    (void)resp; /* always NULL for a stream */
    a->watch = NULL;
    if (st->code != PINS_CODE_CANCELLED) {
        fprintf(stderr, "pins_watch_async: the watch ended: %s: %s\n", pins_code_name(st->code),
                st->message);
        a->failed = 1;
    }
    finish_when_done(a);
}

static void on_upsert_done(void *arg, ProtobufCMessage *resp, const pins_status *st)
{
    struct upsert *u = arg;
    struct app *a = u->app;
    a->upserts_left--;
    if (st->code != PINS_CODE_OK) {
        fprintf(stderr, "pins_watch_async: UpsertPin %s failed: %s: %s (%s)\n", u->key,
                pins_code_name(st->code), st->message,
                st->from_server ? "from the server" : "from the client");
        a->failed = 1;
    } else {
        Memorypins__V1__UpsertPinResponse *r = (Memorypins__V1__UpsertPinResponse *)resp;
        printf("upsert: %s version %lld\n", u->key, r->pin ? (long long)r->pin->version : -1LL);
    }
    pins_message_free(resp);
    free(u);
    finish_when_done(a);
}

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    struct app *a = arg;
    (void)fd;
    (void)what;
    fprintf(stderr, "pins_watch_async: %d of %d events after 10 s\n", a->events, a->wanted);
    a->failed = 1;
    event_base_loopbreak(a->base);
}

int main(int argc, char **argv)
{
    char *tenant = argc > 1 ? argv[1] : "example-async";
    int count = argc > 2 ? (int)strtol(argv[2], NULL, 10) : 3;
    if (argc > 3 || count < 1 || count > MAX_UPSERTS) {
        fprintf(stderr, "usage: pins_watch_async [TENANT [COUNT (1..%d)]]\n", MAX_UPSERTS);
        return 2;
    }

    struct app a = {.wanted = count};
    pins_status st = PINS_STATUS_INIT;
    pins_conn *conn = NULL;
    struct event *deadline = NULL;
    a.base = event_base_new();
    if (a.base == NULL) {
        fprintf(stderr, "pins_watch_async: event_base_new failed\n");
        return 1;
    }

    pins_options opts;
    pins_options_init(&opts);
    if (getenv("PINS_ADDR") != NULL)
        opts.addr = getenv("PINS_ADDR");
    opts.ca_file = getenv("PINS_CA_FILE");
    opts.machine_token = getenv("MACHINE_SECRET_TOKEN");
    opts.bearer_token = getenv("PINS_TOKEN");
    conn = pins_conn_new(a.base, &opts, &st);
    if (conn == NULL) {
        fprintf(stderr, "pins_watch_async: pins_conn_new: %s\n", st.message);
        a.failed = 1;
        goto out;
    }

    /* The watch first: the streams of one connection reach pinsd in the order they start, and
     * pinsd subscribes a watch as soon as its request arrives, so it sees the upserts below. */
    Memorypins__V1__WatchPinsRequest watch_req = MEMORYPINS__V1__WATCH_PINS_REQUEST__INIT;
    watch_req.tenant_id = tenant;
    pins_call_options watch_opts = {.timeout_ms = -1}; /* a stream without a deadline */
    a.watch = pins_conn_start(conn, PINS_RPC_WATCH_PINS, &watch_req.base, &watch_opts, on_event,
                              on_watch_done, &a);
    if (a.watch == NULL) {
        fprintf(stderr, "pins_watch_async: WatchPins could not start\n");
        a.failed = 1;
        goto out;
    }
    printf("watch: %s\n", tenant);

    /* COUNT upserts at once. Each request is encoded by pins_conn_start: its value can be freed
     * right after. */
    for (int i = 0; i < count; i++) {
        struct upsert *u = calloc(1, sizeof(*u));
        Google__Protobuf__Struct *value = NULL;
        char json[32];
        snprintf(json, sizeof(json), "{\"n\":%d}", i);
        if (u == NULL || pins_value_from_json(json, strlen(json), &value, &st) != 0) {
            fprintf(stderr, "pins_watch_async: out of memory\n");
            free(u);
            a.failed = 1;
            goto out;
        }
        u->app = &a;
        snprintf(u->key, sizeof(u->key), "async-%d", i);
        Memorypins__V1__UpsertPinRequest req = MEMORYPINS__V1__UPSERT_PIN_REQUEST__INIT;
        req.tenant_id = tenant;
        req.key = u->key;
        req.value = value;
        pins_call_options copts = {.timeout_ms = 5000};
        pins_call *call =
            pins_conn_start(conn, PINS_RPC_UPSERT_PIN, &req.base, &copts, NULL, on_upsert_done, u);
        pins_message_free(&value->base);
        if (call == NULL) {
            free(u);
            a.failed = 1;
            goto out;
        }
        a.upserts_left++;
    }
    printf("started: %d upserts on one connection, %zu calls pending\n", count,
           pins_conn_pending(conn));

    /* Run until every answer and event is in (or the deadline). */
    deadline = evtimer_new(a.base, on_deadline, &a);
    struct timeval ten_seconds = {.tv_sec = 10};
    if (deadline == NULL || evtimer_add(deadline, &ten_seconds) != 0) {
        a.failed = 1;
        goto out;
    }
    event_base_dispatch(a.base);
    if (!a.failed)
        printf("done: %d upserts, %d events\n", count, a.events);

out:
    /* Outside every callback: cancel the watch (its on_done runs now, with CANCELLED), then free
     * the connection, which would also cancel whatever is still running. */
    if (a.watch != NULL)
        pins_call_cancel(a.watch);
    pins_conn_free(conn);
    if (deadline != NULL)
        event_free(deadline);
    event_base_free(a.base);
    pins_status_clear(&st);
    return a.failed ? 1 : 0;
}
