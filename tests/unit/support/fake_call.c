/* tests/unit/support/fake_call.c: the fake transport and worker of fake_call.h.
 *
 * The captures live in an arena of the fake_call, not of the rpc_call, so that tests read them
 * after the call is gone. The fake never touches the rpc_call after it let go of it.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <event2/event.h>
#include <ftw.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "common/arena.h"
#include "common/error.h"
#include "common/pbwire.h"
#include "common/timeutil.h"
#include "fake_call.h"
#include "protocols/grpc.h"
#include "rpc/watch.h"
#include "store/store.h"

typedef struct fake_sent {
    uint8_t *data;
    size_t len;
} fake_sent;

typedef struct fake_md {
    struct fake_md *next;
    const char *name;
    const char *value;
    bool trailer;
} fake_md;

struct fake_env {
    pins_config cfg;
    rpc_server server;
    rpc_worker worker;
    store *store;
    char dir[64];
    char data_dir[96];
    fake_call *calls; /* every fake_call not yet freed */
};

struct fake_call {
    fake_env *env;
    fake_call *prev, *next;
    pins_arena *arena; /* the captures */
    const rpc_method *method;
    rpc_call *call; /* NULL once the transport let go */
    bool dispatched;
    bool rejected; /* refused by the transport's decoding, never dispatched */
    bool detaching;
    int send_error;
    fake_sent *sent;
    size_t nsent, capsent;
    bool finished;
    int finish_count;
    int finish_during_detach;
    int err;
    const char *message;
    const char *request_id;
    const char *field, *field_type;
    fake_md *metadata;
    size_t nmetadata;
};

/* ---- helpers -------------------------------------------------------------------------------- */

static const char *copy_or_null(pins_arena *a, const char *s)
{
    if (s == NULL)
        return NULL;
    char *c = pins_arena_strdup(a, s);
    assert_non_null(c);
    return c;
}

static int remove_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(path);
}

static size_t call_arena_limit(const fake_env *env)
{
    return (size_t)env->cfg.max_request_bytes * 8 + (1u << 20);
}

/* Runs the loop without blocking until *done or the store gives up. */
static void wait_for(fake_env *env, const bool *done)
{
    for (int i = 0; i < 1000 && !*done; i++)
        event_base_loop(env->worker.base, EVLOOP_NONBLOCK);
    assert_true(*done);
}

/* ---- the transport's functions --------------------------------------------------------------- */

static int on_send(rpc_call *call, const ProtobufCMessage *msg)
{
    fake_call *fc = call->transport;
    if (fc->send_error != 0)
        return fc->send_error;
    if (fc->nsent == fc->capsent) {
        size_t cap = fc->capsent ? fc->capsent * 2 : 4;
        fake_sent *s = pins_arena_calloc(fc->arena, cap, sizeof(*s));
        assert_non_null(s);
        if (fc->nsent > 0)
            memcpy(s, fc->sent, fc->nsent * sizeof(*s));
        fc->sent = s;
        fc->capsent = cap;
    }
    size_t len = protobuf_c_message_get_packed_size(msg);
    uint8_t *data = pins_arena_alloc(fc->arena, len + 1);
    assert_non_null(data);
    protobuf_c_message_pack(msg, data);
    fc->sent[fc->nsent++] = (fake_sent){.data = data, .len = len};
    return 0;
}

static void on_finish(rpc_call *call, int err, const char *message)
{
    fake_call *fc = call->transport;
    fc->finish_count++;
    if (fc->detaching)
        fc->finish_during_detach++;
    if (fc->finished)
        return; /* keep the first status: that is what the client saw */
    fc->finished = true;
    fc->err = err;
    fc->message = copy_or_null(fc->arena, message);
    fc->request_id = copy_or_null(fc->arena, call->request_id);
    fc->field = copy_or_null(fc->arena, call->field_error.field);
    fc->field_type = copy_or_null(fc->arena, call->field_error.type);
    fake_md **tail = &fc->metadata;
    for (const rpc_metadata *m = rpc_call_metadata(call); m != NULL; m = m->next) {
        fake_md *md = pins_arena_calloc(fc->arena, 1, sizeof(*md));
        assert_non_null(md);
        md->name = copy_or_null(fc->arena, m->name);
        md->value = copy_or_null(fc->arena, m->value);
        md->trailer = m->trailer;
        *tail = md;
        tail = &md->next;
        fc->nmetadata++;
    }
}

static const rpc_call_ops fake_ops = {.send = on_send, .finish = on_finish};

/* ---- the fake worker ------------------------------------------------------------------------ */

fake_env *fake_env_new(void)
{
    fake_env *env = calloc(1, sizeof(*env));
    assert_non_null(env);
    pins_config_defaults(&env->cfg);
    rpc__metrics_init();

    snprintf(env->dir, sizeof(env->dir), "/tmp/pins-rpc-test-XXXXXX");
    assert_non_null(mkdtemp(env->dir));
    snprintf(env->data_dir, sizeof(env->data_dir), "%s/data", env->dir);
    store_options opts = {.data_dir = env->data_dir, .pool_size = 1, .workers = 1};
    assert_int_equal(store_open(&opts, &env->store), 0);

    env->server.cfg = &env->cfg;
    env->server.store = env->store;
    env->server.workers = &env->worker;
    env->server.nworkers = 1;
    atomic_store(&env->server.draining, 0);

    rpc_worker *w = &env->worker;
    w->server = &env->server;
    w->base = event_base_new();
    assert_non_null(w->base);
    assert_int_equal(store_session_new(env->store, w->base, &w->store), 0);
    assert_int_equal(rpc__watch_worker_init(w), 0);
    /* The store's change feed reaches the watch streams, as server/server.c starts it. */
    assert_int_equal(
        store_feed_start(env->store, rpc_watch_feed, rpc_watch_feed_state, &env->server), 0);
    pins_list_init(&w->health_watches);
    w->rng.s[0] = 0x243f6a8885a308d3ull; /* fixed seeds: runs repeat */
    w->rng.s[1] = 0x13198a2e03707344ull;
    fake_env_recycle_arenas(env, false);
    return env;
}

void fake_env_free(fake_env *env)
{
    if (env == NULL)
        return;
    while (env->calls != NULL)
        fake_call_free(env->calls);
    rpc_worker *w = &env->worker;
    /* A Watch stream still open would hold its call: none may be left. */
    assert_true(pins_list_is_empty(&w->health_watches));
    store_feed_stop(env->store);
    store_session_free(w->store); /* first, as server.c does: pending calls complete into the hub */
    w->store = NULL;
    for (size_t i = 0; i < w->narena_pool; i++) /* after: completed calls gave their arenas back */
        pins_arena_free(w->arena_pool[i]);
    w->narena_pool = 0;
    rpc__watch_worker_free(w);
    rpc__metrics_worker_free(w);
    store_close(env->store);
    event_base_free(w->base);
    pins_config_free(&env->cfg);
    nftw(env->dir, remove_entry, 16, FTW_DEPTH | FTW_PHYS);
    free(env);
}

pins_config *fake_env_config(fake_env *env)
{
    return &env->cfg;
}

rpc_worker *fake_env_worker(fake_env *env)
{
    return &env->worker;
}

struct event_base *fake_env_base(fake_env *env)
{
    return env->worker.base;
}

const char *fake_env_data_dir(const fake_env *env)
{
    return env->data_dir;
}

store_session *fake_env_store(fake_env *env)
{
    return env->worker.store;
}

void fake_env_run(fake_env *env, int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    event_base_loopexit(env->worker.base, &tv);
    event_base_dispatch(env->worker.base);
    for (fake_call *fc = env->calls, *next = NULL; fc != NULL; fc = next) {
        next = fc->next;
        if (fc->finished && fc->call != NULL)
            fake_call_detach(fc);
    }
}

bool fake_env_run_until_finished(fake_env *env, fake_call *fc, int max_ms)
{
    int64_t end = pins_time_mono_ns() + (int64_t)max_ms * 1000000;
    while (!fc->finished && pins_time_mono_ns() < end)
        fake_env_run(env, 10);
    return fc->finished;
}

void fake_env_recycle_arenas(fake_env *env, bool on)
{
    /* The pool only takes arenas whose limit equals the worker's. */
    env->worker.arena_limit = on ? call_arena_limit(env) : call_arena_limit(env) + 1;
}

size_t fake_env_pooled_arenas(const fake_env *env)
{
    return env->worker.narena_pool;
}

typedef struct snap_ctx {
    bool done;
    int err;
    int64_t total;
    char *text; /* malloc'd */
} snap_ctx;

static void on_audit(void *arg, int err, const store_memory_audit *rows, size_t nrows,
                     int64_t total)
{
    snap_ctx *s = arg;
    s->done = true;
    s->err = err;
    s->total = total;
}

static void on_list(void *arg, int err, const store_pin *pins, size_t npins, int64_t total,
                    int64_t revision)
{
    (void)revision;
    snap_ctx *s = arg;
    s->done = true;
    s->err = err;
    s->total = total;
    size_t cap = 64, len = 0;
    for (size_t i = 0; i < npins; i++)
        cap += strlen(pins[i].key) + pins[i].value_len + 96;
    s->text = malloc(cap);
    assert_non_null(s->text);
    s->text[0] = '\0';
    for (size_t i = 0; i < npins; i++) {
        int n = snprintf(s->text + len, cap - len, "%lld %s v%lld u%lld %s;", (long long)pins[i].id,
                         pins[i].key, (long long)pins[i].version, (long long)pins[i].updated_us,
                         pins[i].value_json);
        assert_true(n > 0 && (size_t)n < cap - len);
        len += (size_t)n;
    }
}

static snap_ctx list_all(fake_env *env, const char *tenant)
{
    snap_ctx s = {0};
    store_list_req lr = {
        .tenant_id = tenant,
        .prefix = "",
        .limit = 1000,
        .include_expired = true,
        .now_us = INT64_MAX / 4,
    };
    assert_int_equal(store_pin_list(env->worker.store, &lr, on_list, &s), 0);
    wait_for(env, &s.done);
    assert_int_equal(s.err, 0);
    return s;
}

char *fake_env_snapshot(fake_env *env, const char *tenant)
{
    snap_ctx audit = {0};
    store_audit_list_req ar = {.limit = 1};
    assert_int_equal(store_audit_list(env->worker.store, &ar, on_audit, &audit), 0);
    wait_for(env, &audit.done);
    assert_int_equal(audit.err, 0);
    snap_ctx pins = list_all(env, tenant);
    size_t n = strlen(pins.text) + 64;
    char *out = malloc(n);
    assert_non_null(out);
    snprintf(out, n, "audit=%lld pins=%lld %s", (long long)audit.total, (long long)pins.total,
             pins.text);
    free(pins.text);
    return out;
}

int64_t fake_env_pin_count(fake_env *env, const char *tenant)
{
    snap_ctx pins = list_all(env, tenant);
    free(pins.text);
    return pins.total;
}

/* ---- the fake transport --------------------------------------------------------------------- */

/* A call of method with the request bytes wire[0..len) as a transport decodes them. */
static fake_call *new_call(fake_env *env, const rpc_method *method, const uint8_t *wire, size_t len,
                           const char *const *headers)
{
    fake_call *fc = calloc(1, sizeof(*fc));
    assert_non_null(fc);
    fc->env = env;
    fc->method = method;
    fc->arena = pins_arena_new(0);
    assert_non_null(fc->arena);
    rpc_call *call = rpc_call_new(&env->worker, method, &fake_ops, fc, call_arena_limit(env));
    assert_non_null(call);
    fc->call = call;
    fc->next = env->calls;
    if (env->calls != NULL)
        env->calls->prev = fc;
    env->calls = fc;

    /* Headers, as the transport copies them into the call's arena. */
    size_t n = 0;
    while (headers != NULL && headers[2 * n] != NULL)
        n++;
    call->headers = n ? pins_arena_calloc(call->arena, n, sizeof(*call->headers)) : NULL;
    for (size_t i = 0; i < n; i++) {
        call->headers[i].name = pins_arena_strdup(call->arena, headers[2 * i]);
        call->headers[i].value = pins_arena_strdup(call->arena, headers[2 * i + 1]);
        assert_non_null(call->headers[i].name);
        assert_non_null(call->headers[i].value);
    }
    call->nheaders = n;
    assert_int_equal(rpc_call_set_request_id(call, rpc_call_header(call, "x-request-id")), 0);
    const char *timeout = rpc_call_header(call, "grpc-timeout");
    int64_t ns = 0;
    if (timeout != NULL && proto_grpc_timeout_parse(timeout, strlen(timeout), &ns) != 0)
        goto reject;
    if (timeout != NULL)
        call->deadline_ns = call->start_ns + ns;

    /* The transport's decoding: a wire check (for malformed bytes only: the depth limit here is
     * the largest, so that handlers see every message they must judge), then unpacking into the
     * call's arena. */
    const char *why = NULL;
    int rv = rpc_call_decode(call, method->input, wire, len, &call->request, &why);
    if (rv == PINS_EINVALID_ARGUMENT && call->field_error.field != NULL) {
        /* A string field the wire check refused: the transport answers with an early error,
         * which the fake records like any final status. */
        fc->rejected = true;
        on_finish(call, rv, why);
        return fc;
    }
    if (rv != 0)
        goto reject;
    return fc;
reject:
    fake_call_free(fc);
    return NULL;
}

fake_call *fake_call_new_method(fake_env *env, const rpc_method *method,
                                const ProtobufCMessage *request, const char *const *headers)
{
    size_t len = request != NULL ? protobuf_c_message_get_packed_size(request) : 0;
    uint8_t *wire = malloc(len + 1);
    assert_non_null(wire);
    if (request != NULL)
        protobuf_c_message_pack(request, wire);
    fake_call *fc = new_call(env, method, wire, len, headers);
    free(wire);
    return fc;
}

fake_call *fake_call_new(fake_env *env, const char *path, const ProtobufCMessage *request,
                         const char *const *headers)
{
    const rpc_method *m = rpc_method_find(path, strlen(path));
    if (m == NULL)
        return NULL;
    return fake_call_new_method(env, m, request, headers);
}

fake_call *fake_call_new_wire(fake_env *env, const char *path, const uint8_t *wire, size_t len,
                              const char *const *headers)
{
    const rpc_method *m = rpc_method_find(path, strlen(path));
    if (m == NULL)
        return NULL;
    return new_call(env, m, wire, len, headers);
}

void fake_call_set_deadline_ns(fake_call *fc, int64_t deadline_ns)
{
    assert_non_null(fc->call);
    fc->call->deadline_ns = deadline_ns;
}

void fake_call_set_send_error(fake_call *fc, int err)
{
    fc->send_error = err;
}

void fake_call_dispatch(fake_call *fc)
{
    assert_non_null(fc->call);
    assert_false(fc->dispatched);
    if (fc->rejected) {
        fake_call_detach(fc);
        return;
    }
    fc->dispatched = true;
    rpc_dispatch(fc->call);
    /* Stores may complete on the loop (group commit): give them a few iterations. */
    for (int i = 0; i < 8 && !fc->finished; i++)
        event_base_loop(fc->env->worker.base, EVLOOP_NONBLOCK);
    /* The stream closes once its status is out. */
    if (fc->finished)
        fake_call_detach(fc);
}

fake_call *fake_call_run(fake_env *env, const char *path, const ProtobufCMessage *request,
                         const char *const *headers)
{
    fake_call *fc = fake_call_new(env, path, request, headers);
    assert_non_null(fc);
    fake_call_dispatch(fc);
    return fc;
}

void fake_call_detach(fake_call *fc)
{
    rpc_call *call = fc->call;
    if (call == NULL)
        return;
    fc->call = NULL;
    if (!fc->dispatched) {
        rpc_call_abandon(call);
        return;
    }
    fc->detaching = true;
    rpc_call_detach(call);
    fc->detaching = false;
}

void fake_call_free(fake_call *fc)
{
    if (fc == NULL)
        return;
    fake_call_detach(fc);
    fake_env *env = fc->env;
    if (fc->prev != NULL)
        fc->prev->next = fc->next;
    else
        env->calls = fc->next;
    if (fc->next != NULL)
        fc->next->prev = fc->prev;
    pins_arena_free(fc->arena);
    free(fc);
}

/* ---- captures ------------------------------------------------------------------------------- */

rpc_call *fake_call_rpc(const fake_call *fc)
{
    return fc->call;
}

bool fake_call_finished(const fake_call *fc)
{
    return fc->finished;
}

int fake_call_finish_count(const fake_call *fc)
{
    return fc->finish_count;
}

int fake_call_finish_during_detach(const fake_call *fc)
{
    return fc->finish_during_detach;
}

int fake_call_err(const fake_call *fc)
{
    return fc->err;
}

int fake_call_grpc_code(const fake_call *fc)
{
    return pins_error_grpc(fc->err);
}

const char *fake_call_message(const fake_call *fc)
{
    return fc->message;
}

const char *fake_call_request_id(const fake_call *fc)
{
    return fc->request_id;
}

const char *fake_call_field(const fake_call *fc)
{
    return fc->field;
}

const char *fake_call_field_type(const fake_call *fc)
{
    return fc->field_type;
}

size_t fake_call_nsent(const fake_call *fc)
{
    return fc->nsent;
}

const ProtobufCMessage *fake_call_response_at(fake_call *fc, size_t i)
{
    if (i >= fc->nsent)
        return NULL;
    ProtobufCAllocator al = pins_arena_allocator(fc->arena);
    const ProtobufCMessage *m =
        protobuf_c_message_unpack(fc->method->output, &al, fc->sent[i].len, fc->sent[i].data);
    assert_non_null(m);
    return m;
}

const ProtobufCMessage *fake_call_response(fake_call *fc)
{
    return fc->nsent ? fake_call_response_at(fc, fc->nsent - 1) : NULL;
}

const char *fake_call_metadata(const fake_call *fc, const char *name, bool trailer)
{
    for (const fake_md *m = fc->metadata; m != NULL; m = m->next) {
        if (m->trailer == trailer && strcmp(m->name, name) == 0)
            return m->value;
    }
    return NULL;
}

size_t fake_call_nmetadata(const fake_call *fc)
{
    return fc->nmetadata;
}
