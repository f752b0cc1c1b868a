/* rpc/rpc_metrics.c: the grpc_server_* families, memory_pins_operations_total / latency and
 * rpc_requests_total / rpc_request_duration_seconds by protocol, recorded once per call by the
 * dispatcher and the call funnel. */
#include "rpc/rpc_int.h"

#include "observability/metrics.h"

#include <stdlib.h>

static metrics_family *started;
static metrics_family *handled;
static metrics_family *handling;
static metrics_family *ops;
static metrics_family *latency;
static metrics_family *requests;
static metrics_family *request_seconds;

/* rpc_protocol's label values. */
static const char *const protocol_names[RPC_PROTOCOL_COUNT] = {
    [RPC_PROTOCOL_GRPC] = "grpc",
    [RPC_PROTOCOL_GRPC_WEB] = "grpc_web",
    [RPC_PROTOCOL_CONNECT] = "connect",
    [RPC_PROTOCOL_REST] = "rest",
};

/* memory_pins_operations_total's status values, in op_status's order. */
static const char *const op_status_names[3] = {"success", "not_found", "error"};

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
    static const char *const pc[] = {"protocol", "grpc_code"};
    static const char *const p[] = {"protocol"};
    requests = metrics_counter_new(
        "rpc_requests_total", "RPCs completed, by the protocol they arrived in and status code.",
        pc, 2);
    request_seconds = metrics_histogram_new(
        "rpc_request_duration_seconds", "Time from dispatch to the final status, by protocol.", p,
        1, metrics_latency_buckets, metrics_latency_nbuckets);
    /* Every series whose label values are known from the start, so that rates and increase()
     * see the first call: each operation of the method table by outcome, each protocol by code. */
    size_t nmethods;
    const rpc_method *table = rpc_method_table(&nmethods);
    for (size_t m = 0; m < nmethods; m++) {
        for (int st = 0; table[m].op != NULL && st < 3; st++) {
            const char *v[] = {table[m].op, op_status_names[st]};
            metrics_counter_add(ops, v, 0);
        }
    }
    for (int i = RPC_PROTOCOL_NONE + 1; i < RPC_PROTOCOL_COUNT; i++) {
        for (int code = 0; code <= 16; code++) {
            const char *v[] = {protocol_names[i], pins_grpc_code_name(code)};
            metrics_counter_add(requests, v, 0);
        }
        const char *v[] = {protocol_names[i]};
        (void)metrics_cell_get(request_seconds, v); /* creates the series, empty */
    }
    rpc__watch_metrics_init();
}

/* A worker's cells, one row per method of the table, filled on first use: the label lookup of
 * every family then happens once per worker and method instead of once per call. */
struct rpc__mcache {
    bool started_set, handling_set, latency_set;
    metrics_cell *started;
    metrics_cell *handling;
    metrics_cell *latency;
    metrics_cell *handled[17];
    bool handled_set[17];
    metrics_cell *ops[3]; /* success, not_found, error */
    bool ops_set[3];
};

/* A worker's cells of rpc_requests_total and rpc_request_duration_seconds, by protocol and code. */
struct rpc__pcache {
    metrics_cell *requests[RPC_PROTOCOL_COUNT][17];
    bool requests_set[RPC_PROTOCOL_COUNT][17];
    metrics_cell *seconds[RPC_PROTOCOL_COUNT];
    bool seconds_set[RPC_PROTOCOL_COUNT];
};

static struct rpc__mcache *row_of(rpc_worker *w, const rpc_method *m)
{
    size_t n;
    const rpc_method *table = rpc_method_table(&n);
    if (m < table || m >= table + n)
        return NULL;
    if (w->mcache == NULL) {
        w->mcache = calloc(n, sizeof(*w->mcache));
        if (w->mcache == NULL)
            return NULL;
    }
    return &w->mcache[m - table];
}

void rpc__metrics_worker_free(rpc_worker *w)
{
    free(w->mcache);
    w->mcache = NULL;
    free(w->pcache);
    w->pcache = NULL;
}

void rpc__metrics_protocol(rpc_worker *w, rpc_protocol protocol, int grpc_code, double seconds)
{
    if (protocol <= RPC_PROTOCOL_NONE || protocol >= RPC_PROTOCOL_COUNT)
        return;
    if (grpc_code < 0 || grpc_code > 16)
        grpc_code = 2;
    const char *v[] = {protocol_names[protocol], pins_grpc_code_name(grpc_code)};
    if (w->pcache == NULL)
        w->pcache = calloc(1, sizeof(*w->pcache));
    struct rpc__pcache *c = w->pcache;
    if (c == NULL) {
        metrics_counter_inc(requests, v);
        if (seconds >= 0)
            metrics_histogram_observe(request_seconds, v, seconds);
        return;
    }
    if (!c->requests_set[protocol][grpc_code]) {
        c->requests[protocol][grpc_code] = metrics_cell_get(requests, v);
        c->requests_set[protocol][grpc_code] = true;
    }
    if (!c->seconds_set[protocol]) {
        c->seconds[protocol] = metrics_cell_get(request_seconds, v);
        c->seconds_set[protocol] = true;
    }
    metrics_cell_add(c->requests[protocol][grpc_code], 1);
    if (seconds >= 0)
        metrics_cell_observe(request_seconds, c->seconds[protocol], seconds);
}

void rpc__metrics_started(rpc_worker *w, const rpc_method *m)
{
    const char *v[] = {m->service, m->name};
    struct rpc__mcache *r = row_of(w, m);
    if (r == NULL) {
        metrics_counter_inc(started, v);
        return;
    }
    if (!r->started_set) {
        r->started = metrics_cell_get(started, v);
        r->started_set = true;
    }
    metrics_cell_add(r->started, 1);
}

/* success / not_found / error (a server-side fault); client errors are not operations. */
static int op_status(int code)
{
    switch (code) {
    case 0:
        return 0;
    case 5:
        return 1;
    case 2:  /* UNKNOWN */
    case 4:  /* DEADLINE_EXCEEDED */
    case 13: /* INTERNAL */
    case 14: /* UNAVAILABLE */
    case 15: /* DATA_LOSS */
        return 2;
    default:
        return -1;
    }
}

void rpc__metrics_handled(rpc_worker *w, const rpc_method *m, int grpc_code, double seconds)
{
    if (grpc_code < 0 || grpc_code > 16)
        grpc_code = 2;
    const char *v[] = {m->service, m->name, pins_grpc_code_name(grpc_code)};
    int st = m->op != NULL ? op_status(grpc_code) : -1;
    struct rpc__mcache *r = row_of(w, m);
    if (r == NULL) {
        metrics_counter_inc(handled, v);
        metrics_histogram_observe(handling, v, seconds);
        if (st >= 0) {
            const char *ov[] = {m->op, op_status_names[st]};
            metrics_counter_inc(ops, ov);
            metrics_histogram_observe(latency, ov, seconds);
        }
        return;
    }
    if (!r->handled_set[grpc_code]) {
        r->handled[grpc_code] = metrics_cell_get(handled, v);
        r->handled_set[grpc_code] = true;
    }
    if (!r->handling_set) {
        r->handling = metrics_cell_get(handling, v);
        r->handling_set = true;
    }
    metrics_cell_add(r->handled[grpc_code], 1);
    metrics_cell_observe(handling, r->handling, seconds);
    if (st < 0)
        return;
    if (!r->ops_set[st]) {
        const char *ov[] = {m->op, op_status_names[st]};
        r->ops[st] = metrics_cell_get(ops, ov);
        r->ops_set[st] = true;
    }
    if (!r->latency_set) {
        const char *lv[] = {m->op};
        r->latency = metrics_cell_get(latency, lv);
        r->latency_set = true;
    }
    metrics_cell_add(r->ops[st], 1);
    metrics_cell_observe(latency, r->latency, seconds);
}
