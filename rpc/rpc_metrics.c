/* rpc/rpc_metrics.c: the grpc_server_* families and memory_pins_operations_total / latency,
 * recorded once per call by the dispatcher and the call funnel. */
#include "rpc/rpc_int.h"

#include "observability/metrics.h"

static metrics_family *started;
static metrics_family *handled;
static metrics_family *handling;
static metrics_family *ops;
static metrics_family *latency;

void rpc__metrics_init(void)
{
    static const char *const sm[] = {"grpc_service", "grpc_method"};
    static const char *const smc[] = {"grpc_service", "grpc_method", "grpc_code"};
    static const char *const os[] = {"operation", "status"};
    static const char *const o[] = {"operation"};
    if (started != NULL)
        return;
    started =
        metrics_counter_new("grpc_server_started_total", "RPCs started on the server.", sm, 2);
    handled = metrics_counter_new("grpc_server_handled_total",
                                  "RPCs completed on the server, by status code.", smc, 3);
    handling = metrics_histogram_new("grpc_server_handling_seconds",
                                     "Time from dispatch to the final status.", sm, 2,
                                     metrics_latency_buckets, metrics_latency_nbuckets);
    ops =
        metrics_counter_new("memory_pins_operations_total",
                            "Memory pin operations by outcome (client errors not counted).", os, 2);
    latency = metrics_histogram_new("memory_pins_latency_seconds", "Memory pin operation latency.",
                                    o, 1, metrics_latency_buckets, metrics_latency_nbuckets);
}

void rpc__metrics_started(const rpc_method *m)
{
    const char *v[] = {m->service, m->name};
    metrics_counter_inc(started, v);
}

/* success / not_found / error (a server-side fault); client errors are not operations. */
static const char *op_status(int code)
{
    switch (code) {
    case 0:
        return "success";
    case 5:
        return "not_found";
    case 2:  /* UNKNOWN */
    case 4:  /* DEADLINE_EXCEEDED */
    case 13: /* INTERNAL */
    case 14: /* UNAVAILABLE */
    case 15: /* DATA_LOSS */
        return "error";
    default:
        return NULL;
    }
}

void rpc__metrics_handled(const rpc_method *m, int grpc_code, double seconds)
{
    const char *v[] = {m->service, m->name, pins_grpc_code_name(grpc_code)};
    metrics_counter_inc(handled, v);
    metrics_histogram_observe(handling, v, seconds);
    if (m->op != NULL) {
        const char *st = op_status(grpc_code);
        if (st != NULL) {
            const char *ov[] = {m->op, st};
            metrics_counter_inc(ops, ov);
            metrics_histogram_observe(latency, ov, seconds);
        }
    }
}
