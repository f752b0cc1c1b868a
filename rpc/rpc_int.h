/* rpc/rpc_int.h: what the files of rpc/ share beyond rpc/core.h (WatchPins, health, metrics of
 * the core). Only for rpc/: handlers see rpc/call.h, protocols and transports rpc/core.h.
 */
#ifndef PINS_RPC_RPC_INT_H
#define PINS_RPC_RPC_INT_H

#include <event2/event.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "common/config.h"
#include "rpc/call.h"
#include "rpc/core.h"

struct store;
struct store_session;
struct ratelimit;
struct ratelimit_worker;

/* ---- WatchPins fan-out (rpc/watch.c) ----------------------------------------------------------
 */

typedef struct rpc__watch_worker rpc__watch_worker;
/* Creates the worker's inbox (after its base). Returns 0 or PINS_ENOMEM. */
int rpc__watch_worker_init(rpc_worker *w);
/* Finishes every WatchPins stream of the worker (drain). */
void rpc__watch_drain(rpc_worker *w);
/* Frees the inbox (after the worker stopped). */
void rpc__watch_worker_free(rpc_worker *w);

/* ---- health and probes ------------------------------------------------------------------------
 */

void rpc__health_check(rpc_call *call);
void rpc__health_watch(rpc_call *call);
/* Tells the worker's open Watch streams that the server is draining. */
void rpc__health_drain(rpc_worker *w);

/* ---- metrics of the rpc layer ------------------------------------------------------------------
 */

void rpc__metrics_init(void);
void rpc__metrics_started(rpc_worker *w, const rpc_method *m);
void rpc__metrics_handled(rpc_worker *w, const rpc_method *m, int grpc_code, double seconds);
/* rpc_requests_total{protocol,grpc_code} of a call that ended (nothing for RPC_PROTOCOL_NONE) and,
 * when seconds >= 0, rpc_request_duration_seconds{protocol} (a stream's lifetime is not a
 * latency: the caller passes -1 for server-streaming calls). */
void rpc__metrics_protocol(rpc_worker *w, rpc_protocol protocol, int grpc_code, double seconds);
/* Registers watch_streams_active, watch_events_sent_total, watch_streams_refused_total (once). */
void rpc__watch_metrics_init(void);
/* Frees the worker's metric cells (after the worker stopped). */
void rpc__metrics_worker_free(rpc_worker *w);

#endif
