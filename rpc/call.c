/* rpc/call.c: the call object and the error funnel.
 *
 * A call has two references: the transport's (dropped by rpc_call_detach when the stream closes)
 * and, once dispatched, the handler's (dropped when the handler finishes the call). The arena
 * holding the call is freed when both are gone, so neither side ever sees a dangling call.
 */
#include "rpc/rpc_int.h"

#include "auth/ratelimit.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include "observability/log.h"
#include "store/breaker.h"
#include "store/store.h"
#include "common/timeutil.h"

static void end_response(rpc_call *call, int err, const char *message);

static void release(rpc_call *call)
{
    if (--call->refs > 0)
        return;
    if (call->deadline_ev != NULL)
        event_free(call->deadline_ev);
    rpc_worker *w = call->worker;
    pins_arena *a = call->arena;
    /* Keep a few arenas per worker: most calls then cost no malloc at all. */
    if (w->narena_pool < RPC_ARENA_POOL && pins_arena_limit(a) == w->arena_limit) {
        pins_arena_reset(a);
        w->arena_pool[w->narena_pool++] = a;
    } else {
        pins_arena_free(a);
    }
}

rpc_call *rpc_call_new(rpc_worker *w, const rpc_method *method, const rpc_call_ops *ops,
                       void *transport, size_t arena_limit)
{
    pins_arena *a = NULL;
    if (arena_limit == w->arena_limit && w->narena_pool > 0)
        a = w->arena_pool[--w->narena_pool];
    else
        a = pins_arena_new(arena_limit);
    if (a == NULL)
        return NULL;
    rpc_call *call = pins_arena_calloc(a, 1, sizeof(*call));
    if (call == NULL) {
        pins_arena_free(a);
        return NULL;
    }
    call->arena = a;
    call->method = method;
    call->worker = w;
    call->ops = ops;
    call->transport = transport;
    call->refs = 1;
    call->start_ns = pins_time_mono_ns();
    return call;
}

static void run_cancel(rpc_call *call)
{
    if (call->flags & RPC_CALL_CANCELLED)
        return;
    call->flags |= RPC_CALL_CANCELLED;
    if (call->on_cancel != NULL) {
        rpc_call_cancel_cb cb = call->on_cancel;
        call->on_cancel = NULL;
        cb(call, call->on_cancel_arg);
    }
}

void rpc_call_cancel(rpc_call *call)
{
    if (call->flags & RPC_CALL_FINISHED)
        return;
    call->refs++; /* the cancel callback may finish the call */
    run_cancel(call);
    release(call);
}

void rpc_call_detach(rpc_call *call)
{
    call->refs++;
    /* Detached first: a reply the cancel callback makes is dropped, never sent on a closed
     * stream. */
    call->flags |= RPC_CALL_DETACHED;
    call->transport = NULL;
    if (!(call->flags & RPC_CALL_FINISHED))
        run_cancel(call);
    release(call); /* the extra reference above */
    release(call); /* the transport's */
}

void rpc_call_expire(rpc_call *call)
{
    if (call->flags & RPC_CALL_FINISHED)
        return;
    call->refs++;
    /* The status goes out first, so a cancel callback that finishes the call cannot turn the
     * deadline into OK. */
    end_response(call, PINS_EDEADLINE_EXCEEDED, "deadline exceeded before the call completed");
    run_cancel(call);
    release(call);
}

void rpc_call_abandon(rpc_call *call)
{
    call->transport = NULL;
    release(call);
}

void rpc_call_ref(rpc_call *call)
{
    call->refs++;
}

void rpc_call_unref(rpc_call *call)
{
    release(call);
}

void rpc_call_deliver(rpc_call *call, const ProtobufCMessage *msg)
{
    if (call->on_message != NULL && !(call->flags & RPC_CALL_FINISHED))
        call->on_message(call, msg, call->on_message_arg);
}

int rpc_call_set_request_id(rpc_call *call, const char *sent)
{
    if (sent != NULL && sent[0] != '\0') {
        /* Echo what the client sent when it is printable and short; otherwise make a new one. */
        size_t n = strnlen(sent, 129);
        bool ok = n <= 128;
        for (size_t i = 0; ok && i < n; i++)
            ok = sent[i] > 0x20 && sent[i] < 0x7f;
        if (ok) {
            call->request_id = sent;
            return 0;
        }
    }
    static const char hex[] = "0123456789abcdef";
    char *id = pins_arena_alloc(call->arena, 33);
    if (id == NULL)
        return PINS_ENOMEM;
    uint64_t r[2] = {pins_rand_next(&call->worker->rng), pins_rand_next(&call->worker->rng)};
    for (int i = 0; i < 32; i++)
        id[i] = hex[(r[i / 16] >> ((i % 16) * 4)) & 15];
    id[32] = '\0';
    call->request_id = id;
    return 0;
}

const rpc_metadata *rpc_call_metadata(const rpc_call *call)
{
    return call->metadata;
}

/* ---- handler API --------------------------------------------------------------------------- */

const rpc_method *rpc_call_method(const rpc_call *call)
{
    return call->method;
}

const ProtobufCMessage *rpc_call_request(const rpc_call *call)
{
    return call->request;
}

pins_arena *rpc_call_arena(rpc_call *call)
{
    return call->arena;
}

rpc_worker *rpc_call_worker(rpc_call *call)
{
    return call->worker;
}

struct store_session *rpc_call_store(rpc_call *call)
{
    return call->worker->store;
}

const struct pins_config *rpc_call_config(const rpc_call *call)
{
    return call->worker->server->cfg;
}

double rpc_call_uptime(const rpc_call *call)
{
    const rpc_server *s = call->worker->server;
    return s->started_ns > 0 ? (double)(pins_time_mono_ns() - s->started_ns) / 1e9 : 0;
}

const char *rpc_call_redis_state(const rpc_call *call)
{
    return ratelimit_redis_check(call->worker->server->ratelimit);
}

const struct auth_decision *rpc_call_auth(const rpc_call *call)
{
    return call->auth;
}

const char *rpc_call_tenant(const rpc_call *call)
{
    return call->tenant;
}

const char *rpc_call_header(const rpc_call *call, const char *name)
{
    for (size_t i = 0; i < call->nheaders; i++) {
        const char *n = call->headers[i].name;
        if (n[0] == name[0] && strcmp(n, name) == 0)
            return call->headers[i].value;
    }
    return NULL;
}

size_t rpc_call_header_count(const rpc_call *call, const char *name)
{
    size_t n = 0;
    for (size_t i = 0; i < call->nheaders; i++) {
        const char *h = call->headers[i].name;
        if (h[0] == name[0] && strcmp(h, name) == 0)
            n++;
    }
    return n;
}

const char *rpc_call_request_id(const rpc_call *call)
{
    return call->request_id != NULL ? call->request_id : "";
}

int64_t rpc_call_start_ns(const rpc_call *call)
{
    return call->start_ns;
}

int64_t rpc_call_deadline_ns(const rpc_call *call)
{
    return call->deadline_ns;
}

bool rpc_call_cancelled(const rpc_call *call)
{
    return (call->flags & RPC_CALL_CANCELLED) != 0;
}

void rpc_call_on_cancel(rpc_call *call, rpc_call_cancel_cb cb, void *arg)
{
    call->on_cancel = cb;
    call->on_cancel_arg = arg;
}

void rpc_call_on_message(rpc_call *call, rpc_call_message_cb cb, void *arg)
{
    call->on_message = cb;
    call->on_message_arg = arg;
}

/* True for the metadata whose value changes from call to call (the rate limiter's). */
static bool value_varies(const char *name, size_t len)
{
    switch (len) {
    case 9:
        return memcmp(name, "ratelimit", 9) == 0;
    case 11:
        return memcmp(name, "retry-after", 11) == 0;
    case 21:
        return memcmp(name, "x-ratelimit-remaining", 21) == 0;
    default:
        return false;
    }
}

/* Appends the n entries of md (their strings kept as given) in insertion order. */
static int add_metadata(rpc_call *call, const rpc_call_md *md, size_t n, bool trailer)
{
    rpc_metadata *m = pins_arena_alloc(call->arena, n * sizeof(*m));
    if (m == NULL)
        return PINS_ENOMEM;
    rpc_metadata **tail = call->metadata_tail != NULL ? call->metadata_tail : &call->metadata;
    for (size_t i = 0; i < n; i++) {
        m[i] = (rpc_metadata){.name = md[i].name,
                              .value = md[i].value,
                              .namelen = md[i].namelen,
                              .valuelen = md[i].valuelen,
                              .trailer = trailer,
                              .varies = value_varies(md[i].name, md[i].namelen)};
        *tail = &m[i];
        tail = &m[i].next;
    }
    call->metadata_tail = tail;
    call->nmetadata += n;
    return 0;
}

int rpc_call_add_metadata(rpc_call *call, const char *name, const char *value, bool trailer)
{
    size_t namelen = strlen(name), valuelen = strlen(value);
    const char *n = pins_arena_strndup(call->arena, name, namelen);
    const char *v = pins_arena_strndup(call->arena, value, valuelen);
    if (n == NULL || v == NULL)
        return PINS_ENOMEM;
    rpc_call_md md = {n, namelen, v, valuelen};
    return add_metadata(call, &md, 1, trailer);
}

int rpc_call_add_metadata_static(rpc_call *call, const rpc_call_md *md, size_t n, bool trailer)
{
    return n > 0 ? add_metadata(call, md, n, trailer) : 0;
}

int rpc_call_send(rpc_call *call, const ProtobufCMessage *msg)
{
    if (call->flags & (RPC_CALL_FINISHED | RPC_CALL_CANCELLED) || call->transport == NULL)
        return PINS_ECANCELLED;
    int rv = call->ops->send(call, msg);
    if (rv == 0)
        call->flags |= RPC_CALL_SENT_MESSAGE;
    return rv;
}

/* Ends the response (once). */
static void end_response(rpc_call *call, int err, const char *message)
{
    if (!(call->flags & RPC_CALL_FINISHED)) {
        call->flags |= RPC_CALL_FINISHED;
        call->status_err = err;
        call->error_message = message;
        /* A stream its peer cancelled ends there (the handler finishes it without an error): it
         * counts as CANCELLED. A unary call counts as its handler ended it, cancelled or not. */
        bool stream = (call->method->flags & RPC_METHOD_SERVER_STREAM) != 0;
        int code = pins_error_grpc(
            err == 0 && stream && (call->flags & RPC_CALL_CANCELLED) ? PINS_ECANCELLED : err);
        double secs = (double)(pins_time_mono_ns() - call->start_ns) / 1e9;
        rpc__metrics_handled(call->worker, call->method, code, secs);
        rpc__metrics_protocol(call->worker, call->protocol, code, stream ? -1 : secs);
        if (call->method->flags & RPC_METHOD_MEMORY_PINS)
            store_breaker_record(err); /* the store circuit breaker's verdicts */
        if (call->transport != NULL)
            call->ops->finish(call, err, message);
    }
}

/* Ends the response (once) and drops the handler's reference. */
static void finish(rpc_call *call, int err, const char *message)
{
    end_response(call, err, message);
    if (call->flags & RPC_CALL_DISPATCHED) {
        call->flags &= ~RPC_CALL_DISPATCHED;
        release(call);
    }
}

void rpc_call_reply(rpc_call *call, const ProtobufCMessage *msg)
{
    if (!(call->flags & RPC_CALL_FINISHED) && call->transport != NULL) {
        int rv = call->ops->send(call, msg);
        if (rv != 0) {
            rpc_call_fail(call, rv, NULL);
            return;
        }
    }
    finish(call, 0, NULL);
}

int rpc_call_send_unpacked(rpc_call *call, const uint8_t *msg, size_t len,
                           int (*send)(rpc_call *, const ProtobufCMessage *))
{
    pins_arena *a = pins_arena_new(pins_arena_limit(call->arena));
    if (a == NULL)
        return PINS_ENOMEM;
    ProtobufCAllocator alloc = pins_arena_allocator(a);
    ProtobufCMessage *m = protobuf_c_message_unpack(call->method->output, &alloc, len, msg);
    int rv = m != NULL ? send(call, m) : PINS_EINTERNAL;
    pins_arena_free(a);
    return rv;
}

/* msg (packed) through the transport: as is when it takes packed messages, else unpacked
 * (rpc_call_send_unpacked). */
static int send_packed(rpc_call *call, const uint8_t *msg, size_t len)
{
    if (call->ops->send_packed != NULL)
        return call->ops->send_packed(call, msg, len);
    return rpc_call_send_unpacked(call, msg, len, call->ops->send);
}

int rpc_call_send_packed(rpc_call *call, const uint8_t *msg, size_t len)
{
    if (call->flags & (RPC_CALL_FINISHED | RPC_CALL_CANCELLED) || call->transport == NULL)
        return PINS_ECANCELLED;
    int rv = send_packed(call, msg, len);
    if (rv == 0)
        call->flags |= RPC_CALL_SENT_MESSAGE;
    return rv;
}

void rpc_call_reply_packed(rpc_call *call, const uint8_t *msg, size_t len)
{
    if (!(call->flags & RPC_CALL_FINISHED) && call->transport != NULL) {
        int rv = send_packed(call, msg, len);
        if (rv != 0) {
            rpc_call_fail(call, rv, NULL);
            return;
        }
    }
    finish(call, 0, NULL);
}

void rpc_call_finish(rpc_call *call)
{
    finish(call, 0, NULL);
}

static bool server_fault(int err)
{
    return err == PINS_EINTERNAL || err == PINS_ESTORE || err == PINS_ENOMEM;
}

void rpc_call_fail(rpc_call *call, int err, const char *fmt, ...)
{
    if (err == 0)
        err = PINS_EINTERNAL;
    const char *msg = NULL;
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        msg = pins_arena_vprintf(call->arena, fmt, ap);
        va_end(ap);
    }
    if (msg == NULL)
        msg = pins_strerror(err);
    if (server_fault(err)) {
        /* The client gets a generic message and the request id, never library text. */
        pins_log_error("call failed", "method", call->method->path, "error", pins_error_name(err),
                       "detail", msg, "request_id", rpc_call_request_id(call), NULL);
        msg = pins_arena_printf(call->arena, "%s (request id %s)", pins_strerror(err),
                                rpc_call_request_id(call));
        if (msg == NULL)
            msg = pins_strerror(err);
    } else if (pins_log_enabled(PINS_LOG_DEBUG)) {
        pins_log_debug("call rejected", "method", call->method->path, "error", pins_error_name(err),
                       "message", msg, "request_id", rpc_call_request_id(call), NULL);
    }
    finish(call, err, msg);
}

void rpc_call_fail_field(rpc_call *call, int err, const char *field, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    const char *why = pins_arena_vprintf(call->arena, fmt, ap);
    va_end(ap);
    call->field_error = (rpc_field_error){.field = field};
    rpc_call_fail(call, err, "%s: %s", field, why != NULL ? why : pins_strerror(err));
}
