/* rpc/worker.c: what the core sets up and tears down per process and per worker, for the
 * composition root (server/server.c). */
#include "rpc/core.h"

#include "common/rand.h"
#include "rpc/reflection.h"
#include "rpc/rpc_int.h"

int rpc_core_init(void)
{
    rpc__metrics_init();
    return rpc__reflection_init() == 0 ? 0 : PINS_EINTERNAL;
}

void rpc_core_shutdown(void)
{
    rpc__reflection_shutdown();
}

int rpc_worker_start(rpc_worker *w)
{
    pins_rand_seed(&w->rng);
    pins_list_init(&w->health_watches);
    /* A call's memory: its decoded request (half of the arena at most, rpc/decode.c), the
     * handler's reply and whatever the protocols keep, for the largest request allowed. */
    w->arena_limit = (size_t)w->server->cfg->max_request_bytes * 8 + (1u << 20);
    return rpc__watch_worker_init(w);
}

void rpc_worker_drain(rpc_worker *w)
{
    rpc__health_drain(w);
    rpc__watch_drain(w);
}

void rpc_worker_release(rpc_worker *w)
{
    rpc__watch_worker_free(w);
    rpc__metrics_worker_free(w);
    for (size_t k = 0; k < w->narena_pool; k++)
        pins_arena_free(w->arena_pool[k]);
    w->narena_pool = 0;
}
