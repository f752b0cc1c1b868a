/* rpc/health.c: grpc.health.v1.Health. Check answers from the server state; Watch sends the
 * current status, then NOT_SERVING when the server starts draining, and ends with the drain. */
#include "rpc/rpc_int.h"

#include <string.h>

#include "grpc/health/v1/health.pb-c.h"

/* One open Watch stream on a worker. */
struct rpc__health_watch {
    pins_list link; /* in the worker's health_watches */
    rpc_call *call;
};

static bool known_service(const char *s)
{
    return s[0] == '\0' || strcmp(s, "memorypins.v1.MemoryPins") == 0 ||
           strcmp(s, "memorypins.v1.Admin") == 0 || strcmp(s, "grpc.health.v1.Health") == 0;
}

static Grpc__Health__V1__HealthCheckResponse__ServingStatus status_of(rpc_worker *w)
{
    return atomic_load(&w->server->draining)
               ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING
               : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING;
}

void rpc__health_check(rpc_call *call)
{
    const Grpc__Health__V1__HealthCheckRequest *req =
        (const Grpc__Health__V1__HealthCheckRequest *)rpc_call_request(call);
    if (!known_service(req->service)) {
        rpc_call_fail(call, PINS_ENOT_FOUND, "unknown service %s", req->service);
        return;
    }
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = status_of(rpc_call_worker(call));
    rpc_call_reply(call, &resp.base);
}

static void on_watch_cancel(rpc_call *call, void *arg)
{
    struct rpc__health_watch *hw = arg;
    pins_list_unlink(&hw->link);
    rpc_call_finish(call);
}

void rpc__health_watch(rpc_call *call)
{
    const Grpc__Health__V1__HealthCheckRequest *req =
        (const Grpc__Health__V1__HealthCheckRequest *)rpc_call_request(call);
    rpc_worker *w = rpc_call_worker(call);
    Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
    resp.status = known_service(req->service)
                      ? status_of(w)
                      : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN;
    int rv = rpc_call_send(call, &resp.base);
    if (rv != 0) {
        rpc_call_fail(call, rv, NULL);
        return;
    }
    if (atomic_load(&w->server->draining)) {
        rpc_call_finish(call);
        return;
    }
    struct rpc__health_watch *hw = pins_arena_calloc(rpc_call_arena(call), 1, sizeof(*hw));
    if (hw == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    hw->call = call;
    pins_list_insert(w->health_watches.next, &hw->link); /* newest first */
    rpc_call_on_cancel(call, on_watch_cancel, hw);
}

void rpc__health_drain(rpc_worker *w)
{
    for (pins_list *p = pins_list_first(&w->health_watches); p != NULL;
         p = pins_list_first(&w->health_watches)) {
        struct rpc__health_watch *hw = pins_list_entry(p, struct rpc__health_watch, link);
        pins_list_unlink(&hw->link);
        rpc_call *call = hw->call;
        rpc_call_on_cancel(call, NULL, NULL);
        Grpc__Health__V1__HealthCheckResponse resp = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__INIT;
        resp.status = GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
        rpc_call_send(call, &resp.base);
        rpc_call_finish(call);
    }
}
