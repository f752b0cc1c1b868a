/* rpc/dispatch.c: the one dispatcher. Generic checks run here, once, for every transport:
 * deadline, authentication and RBAC (auth/), feature flag, rate limit, breaker. Handlers only
 * validate and act.
 *
 * The request's facts are resolved here once (its tenant) and handed to auth/ as plain values;
 * RBAC and the rate limiter answer verdicts, and only this file records them on the call, adds
 * their headers and fails a refused call. */
#include "rpc/rpc_int.h"

#include <string.h>

#include "auth/auth.h"
#include "auth/ratelimit.h"
#include "observability/metrics.h"
#include "rpc/audit.h"
#include "store/breaker.h"
#include "store/store.h"
#include "common/fmt.h"
#include "common/timeutil.h"
#include "google/protobuf/wrappers.pb-c.h"

/* The one place the default tenant is spelled. */
const char rpc_tenant_default[] = "global";

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    rpc_call_expire(arg);
}

static void arm_deadline(rpc_call *call)
{
    int64_t left = call->deadline_ns - pins_time_mono_ns();
    if (left < 0)
        left = 0;
    if (call->deadline_ev == NULL)
        call->deadline_ev = evtimer_new(call->worker->base, on_deadline, call);
    if (call->deadline_ev == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    struct timeval tv = {.tv_sec = left / 1000000000, .tv_usec = (left % 1000000000) / 1000};
    evtimer_add(call->deadline_ev, &tv);
}

/* The tenant of a request of method m (see rpc_call_tenant()). A row marked
 * RPC_METHOD_ALL_TENANTS acts on every tenant whatever its request says (known before the body is
 * decoded). Otherwise the request's tenant_id field, found through the descriptor: a string, or a
 * google.protobuf.StringValue (unset: every tenant). Empty means the default tenant on MemoryPins
 * RPCs and "no filter" (every tenant) on Admin listings. NULL when the request has no such field,
 * or req is NULL (not decoded yet). */
static const char *resolve_tenant(const rpc_method *m, const ProtobufCMessage *req)
{
    if (m->flags & RPC_METHOD_ALL_TENANTS)
        return RPC_TENANT_ALL;
    if (req == NULL)
        return NULL;
    const ProtobufCFieldDescriptor *f =
        protobuf_c_message_descriptor_get_field_by_name(req->descriptor, "tenant_id");
    if (f == NULL || f->label == PROTOBUF_C_LABEL_REPEATED)
        return NULL;
    bool pins = (m->flags & RPC_METHOD_MEMORY_PINS) != 0;
    const void *at = (const char *)req + f->offset;
    if (f->type == PROTOBUF_C_TYPE_STRING) {
        const char *v = *(const char *const *)at;
        if (v != NULL && v[0] != '\0')
            return v;
        return pins ? rpc_tenant_default : RPC_TENANT_ALL;
    }
    const ProtobufCMessageDescriptor *md = f->descriptor;
    if (f->type == PROTOBUF_C_TYPE_MESSAGE && md != NULL &&
        strcmp(md->name, "google.protobuf.StringValue") == 0) {
        const Google__Protobuf__StringValue *sv = *(const Google__Protobuf__StringValue *const *)at;
        if (sv == NULL)
            return RPC_TENANT_ALL;
        return sv->value != NULL && sv->value[0] != '\0' ? sv->value : rpc_tenant_default;
    }
    return NULL;
}

/* The request's credentials for auth/: a header's value, NULL, or auth_header_repeated. */
static const char *call_header(void *arg, const char *name)
{
    const char *v = rpc_call_header(arg, name);
    if (v != NULL && rpc_call_header_count(arg, name) > 1)
        return auth_header_repeated;
    return v;
}

/* The facts of call's request for an RBAC decision (call->tenant resolved). */
static auth_facts facts_of(rpc_call *call)
{
    const rpc_method *m = call->method;
    return (auth_facts){
        .cfg = call->worker->server->cfg,
        .arena = call->arena,
        .header = call_header,
        .header_arg = call,
        .resource = m->resource != NULL ? m->resource : "",
        .action = m->action != NULL ? m->action : "",
        .tenant = call->tenant,
        .method = m->path,
        .request_id = rpc_call_request_id(call),
    };
}

/* Records verdict d on the call: audited (queued, written off the request path), and for a
 * denial the fields of the REST 403 body. */
static void record(rpc_call *call, const auth_decision *d)
{
    call->auth = d;
    rpc_audit_rbac(call, d);
    if (d->allowed)
        return;
    call->deny = (rpc_deny){.reason = d->reason, .resource = d->resource, .action = d->action};
}

/* The client-visible message of a denial, in the call's arena (NULL when out of memory). */
static const char *denied_message(rpc_call *call, const auth_decision *d)
{
    return pins_arena_printf(call->arena, "%s:%s denied: %s", d->resource, d->action, d->reason);
}

static void fail_denied(rpc_call *call, const auth_decision *d)
{
    const char *msg = denied_message(call, d);
    rpc_call_fail(call, d->err, "%s", msg != NULL ? msg : d->reason);
}

static bool authorize_or_reply(rpc_call *call)
{
    auth_decision *d = pins_arena_calloc(call->arena, 1, sizeof(*d));
    auth_facts f = facts_of(call);
    int rv = d != NULL ? auth_decide(&f, d) : PINS_ENOMEM;
    if (rv != 0) {
        rpc_call_fail(call, rv, NULL);
        return false;
    }
    record(call, d);
    if (d->allowed)
        return true;
    fail_denied(call, d);
    return false;
}

/* After the rate limit (API.md 7: authenticate -> RBAC -> feature flag -> rate limit ->
 * breaker): runs the handler and drops the dispatcher's reference. */
static void proceed(rpc_call *call)
{
    /* ---- store circuit breaker (store/breaker.h); the store gets the call's deadline ---- */
    if ((call->method->flags & RPC_METHOD_MEMORY_PINS) && !store_breaker_allow()) {
        rpc_call_fail(call, PINS_EBREAKER_OPEN, "store circuit breaker open");
        rpc_call_unref(call);
        return;
    }
    store_session_set_deadline(call->worker->store, call->deadline_ns);
    call->method->handler(call);
    store_session_set_deadline(call->worker->store, 0);
    /* ---- end of the breaker's part ---- */
    if (!(call->flags & RPC_CALL_FINISHED) && call->deadline_ns != 0)
        arm_deadline(call);
    rpc_call_unref(call); /* ours; the call lives while others hold one */
}

/* A metadata entry named by a literal. */
#define MD(name, value, len) ((rpc_call_md){(name), sizeof(name) - 1, (value), (len)})

/* The rate limit headers of verdict v as trailing metadata: the limiter's constant texts (they
 * outlive every call) without copies, the numbers written into one block of the call's arena.
 * Returns 0 or PINS_ENOMEM. */
static int add_rate_metadata(rpc_call *call, const ratelimit_verdict *v)
{
    const ratelimit_texts *t = v->texts;
    /* "limit=<rpm>, remaining=<r>, reset=<s>", then "<r>", then "<retry>" (PINS_FMT_INT_MAX
     * bytes each at most, NUL included). */
    char *buf = pins_arena_alloc(call->arena, t->state_len + 8 + 4 * PINS_FMT_INT_MAX);
    if (buf == NULL)
        return PINS_ENOMEM;
    memcpy(buf, t->state, t->state_len);
    char *rem_at = buf + t->state_len;
    char *p = pins_fmt_i64(rem_at, v->remaining);
    size_t remlen = (size_t)(p - rem_at);
    memcpy(p, ", reset=", 8);
    p = pins_fmt_i64(p + 8, v->reset_s);
    char *rem = p + 1;
    memcpy(rem, rem_at, remlen);
    rem[remlen] = '\0';
    char *retry = rem + remlen + 1;
    rpc_call_md md[5] = {
        MD("ratelimit-policy", t->policy, t->policy_len),
        MD("ratelimit", buf, (size_t)(p - buf)),
        MD("x-ratelimit-limit", t->limit, t->limit_len),
        MD("x-ratelimit-remaining", rem, remlen),
        MD("retry-after", retry, 0),
    };
    if (!v->allowed)
        md[4].valuelen = (size_t)(pins_fmt_i64(retry, v->retry_after_s) - retry);
    return rpc_call_add_metadata_static(call, md, v->allowed ? 4 : 5, true);
}

/* The limiter's verdict (possibly from a Redis reply callback): its numbers go on the call (for
 * the REST 429 body) and out as headers; a refused call is failed here. Our reference to the
 * call ends here or in proceed(). */
static void on_rate_checked(void *arg, const ratelimit_verdict *v)
{
    rpc_call *call = arg;
    if (v->err != 0) {
        rpc_call_fail(call, v->err,
                      v->err == PINS_ECANCELLED ? "the server is shutting down" : NULL);
        goto out;
    }
    if (v->texts != NULL) {
        call->rate = (rpc_rate){.set = true, .limit = v->limit, .retry_after_s = v->retry_after_s};
        int rv = add_rate_metadata(call, v);
        if (rv != 0) {
            rpc_call_fail(call, rv, NULL);
            goto out;
        }
    }
    if (!v->allowed) {
        rpc_call_fail(call, PINS_ERATE_LIMITED,
                      "rate limit exceeded: %lld requests per minute, retry after %lld s",
                      (long long)v->limit, (long long)v->retry_after_s);
        goto out;
    }
    proceed(call);
    return;
out:
    rpc_call_unref(call);
}

/* The early decision; NULL in *pd when the request may go on. */
static int decide_early(rpc_call *call, const auth_decision **pd)
{
    const rpc_method *m = call->method;
    *pd = NULL;
    if ((m->flags & RPC_METHOD_UNGUARDED) || !call->worker->server->cfg->rbac_enforce)
        return 0;
    call->tenant = resolve_tenant(m, NULL); /* early, only a row that spans every tenant names it */
    auth_decision *d = pins_arena_calloc(call->arena, 1, sizeof(*d));
    auth_facts f = facts_of(call);
    int rv = d != NULL ? auth_decide_early(&f, d) : PINS_ENOMEM;
    if (rv != 0)
        return rv;
    if (!d->allowed) {
        record(call, d);
        *pd = d;
    }
    return 0;
}

int rpc_dispatch_early(rpc_call *call, int *perr, const char **pmsg)
{
    const auth_decision *d;
    int rv = decide_early(call, &d);
    if (rv != 0)
        return rv;
    *perr = d != NULL ? d->err : 0;
    *pmsg = d != NULL ? denied_message(call, d) : NULL;
    if (d != NULL && *pmsg == NULL)
        *pmsg = d->reason;
    return 0;
}

bool rpc_dispatch_early_or_reply(rpc_call *call)
{
    const auth_decision *d;
    int rv = decide_early(call, &d);
    if (rv == 0 && d == NULL)
        return true;
    rpc__metrics_started(call->worker, call->method);
    if (rv != 0)
        rpc_call_fail(call, rv, NULL);
    else
        fail_denied(call, d);
    return false;
}

void rpc_dispatch(rpc_call *call)
{
    const rpc_method *m = call->method;
    const pins_config *cfg = call->worker->server->cfg;

    rpc__metrics_started(call->worker, m);
    call->flags |= RPC_CALL_DISPATCHED;
    call->refs += 2; /* the handler's, and ours until the handler returns */
    call->tenant = resolve_tenant(m, call->request);

    if (call->deadline_ns != 0 && pins_time_mono_ns() >= call->deadline_ns) {
        rpc_call_fail(call, PINS_EDEADLINE_EXCEEDED, "deadline exceeded before the call started");
        goto out;
    }
    if (!(m->flags & RPC_METHOD_UNGUARDED) && !authorize_or_reply(call))
        goto out;
    if ((m->flags & RPC_METHOD_MEMORY_PINS) && !cfg->memory_pins_enabled) {
        rpc_call_fail(call, PINS_EDISABLED, "Memory pins feature is disabled");
        goto out;
    }
    if ((m->flags & RPC_METHOD_MEMORY_PINS) && call->worker->ratelimit != NULL) {
        /* A request that names no tenant, or every tenant, counts against the default one. */
        const char *bucket = call->tenant;
        if (bucket == NULL || strcmp(bucket, RPC_TENANT_ALL) == 0)
            bucket = rpc_tenant_default;
        /* Our reference passes to on_rate_checked (at once, or when Redis answers). */
        ratelimit_check(call->worker->ratelimit, bucket, call->arena, on_rate_checked, call);
        return;
    }
    proceed(call);
    return;
out:
    rpc_call_unref(call); /* ours; the call lives while others hold one */
}
