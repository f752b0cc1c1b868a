/* rpc/dispatch.c: the one dispatcher. Generic checks run here, once, for every transport:
 * deadline, feature flag (and, as they land, authentication, RBAC, rate limit and breaker).
 * Handlers only validate and act. */
#include "rpc/rpc_int.h"

#include "observability/metrics.h"

static void on_deadline(evutil_socket_t fd, short what, void *arg)
{
    rpc__call_expire(arg);
}

static void arm_deadline(rpc_call *call)
{
    int64_t left = call->deadline_ns - rpc__now_ns();
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

void rpc__dispatch(rpc_call *call)
{
    const rpc_method *m = call->method;
    const pins_config *cfg = call->worker->server->cfg;

    rpc__metrics_started(m);
    call->flags |= RPC__CALL_DISPATCHED;
    call->refs += 2; /* the handler's, and ours until the handler returns */

    if (call->deadline_ns != 0 && rpc__now_ns() >= call->deadline_ns) {
        rpc_call_fail(call, PINS_EDEADLINE_EXCEEDED, "deadline exceeded before the call started");
        goto out;
    }
    if ((m->flags & RPC_METHOD_MEMORY_PINS) && !cfg->memory_pins_enabled) {
        rpc_call_fail(call, PINS_EDISABLED, "Memory pins feature is disabled");
        goto out;
    }
    m->handler(call);
    if (!(call->flags & RPC__CALL_FINISHED) && call->deadline_ns != 0)
        arm_deadline(call);
out:
    rpc__call_unref(call); /* ours; the call lives while others hold one */
}
