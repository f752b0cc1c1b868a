/* rpc/dispatch.c: the one dispatcher. Generic checks run here, once, for every transport:
 * deadline, authentication and RBAC (auth/), feature flag (and, as they land, rate limit and
 * breaker). Handlers only validate and act. */
#include "rpc/rpc_int.h"

#include <string.h>

#include "auth/auth.h"
#include "auth/ratelimit.h"
#include "observability/metrics.h"
#include "rpc/audit.h"
#include "store/breaker.h"
#include "store/store.h"
#include "common/timeutil.h"
#include "google/protobuf/wrappers.pb-c.h"

/* The one place the default tenant is spelled. */
const char rpc_tenant_default[] = "global";

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    rpc__call_expire(arg);
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

/* Records decision d on the call: audited (queued, written off the request path), and for a
 * denial the fields of the REST 403 body. */
static void record(rpc_call *call, const auth_decision *d)
{
    call->auth = d;
    rpc_audit_rbac(call, d);
    if (d->allowed)
        return;
    call->deny_reason = d->reason;
    call->deny_resource = d->resource;
    call->deny_action = d->action;
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
    int rv = d != NULL ? auth_decide(call, d) : PINS_ENOMEM;
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
        rpc__call_unref(call);
        return;
    }
    store_session_set_deadline(call->worker->store, call->deadline_ns);
    call->method->handler(call);
    store_session_set_deadline(call->worker->store, 0);
    /* ---- end of the breaker's part ---- */
    if (!(call->flags & RPC__CALL_FINISHED) && call->deadline_ns != 0)
        arm_deadline(call);
    rpc__call_unref(call); /* ours; the call lives while others hold one */
}

/* The limiter's answer (possibly from a Redis reply callback); a refused call is finished. */
static void on_rate_checked(rpc_call *call, bool go)
{
    if (go)
        proceed(call);
    else
        rpc__call_unref(call);
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
    int rv = d != NULL ? auth_decide_early(call, d) : PINS_ENOMEM;
    if (rv != 0)
        return rv;
    if (!d->allowed) {
        record(call, d);
        *pd = d;
    }
    return 0;
}

int rpc__dispatch_early(rpc_call *call, int *perr, const char **pmsg)
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

bool rpc__dispatch_early_or_reply(rpc_call *call)
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

void rpc__dispatch(rpc_call *call)
{
    const rpc_method *m = call->method;
    const pins_config *cfg = call->worker->server->cfg;

    rpc__metrics_started(call->worker, m);
    call->flags |= RPC__CALL_DISPATCHED;
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
        /* Our reference passes to on_rate_checked (at once, or when Redis answers). */
        ratelimit_call_check(call->worker->ratelimit, call, on_rate_checked);
        return;
    }
    proceed(call);
    return;
out:
    rpc__call_unref(call); /* ours; the call lives while others hold one */
}
