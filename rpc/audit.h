/* rpc/audit.h: audit rows recorded on the request path and written off it, in batches.
 *
 * Each worker owns one rpc_audit: two bounded queues (RBAC decisions, memory reads) whose rows
 * are copied in when a call records them and written to the store by a timer on the worker's
 * loop, every RPC_AUDIT_FLUSH_MS after the first queued row or as soon as RPC_AUDIT_FLUSH_ROWS
 * rows of one kind are queued, each kind in one store transaction (store_rbac_audit_write,
 * store_memory_audit_write). Recording never blocks and never fails a call: a full queue drops
 * the row, and a failed write loses its rows; both are counted in rbac_audit_writes_total or
 * memory_audit_writes_total {status="success"|"error"|"dropped"}, one per row.
 *
 * Rows never hold credentials: the subject, roles, reason and tenant of the decision, the method
 * path or REST route, the request id, the x-agent-id header, never a token.
 *
 * Denials are bounded so that anonymous traffic cannot grow the audit without bound (API.md
 * section 6). A denial identical to one already queued (same subject, roles, resource, action,
 * reason, route and tenant) only adds to that row's count (store_rbac_audit.count, kept in its
 * extra column). A new denial row spends a token of the queue's bucket (denial_rows_per_s, burst
 * one second's worth, at least one row); without a token the denial is folded into a summary
 * row of its subject and reason (at most 8 per queue and period, the last one taking every
 * other pair), written once per summary_ms: its fields keep the value every folded denial
 * shared and read "*" where they differed, its request id is empty and its count says how many
 * denials it stands for. Nothing is lost silently: every denial is a row or is counted in one,
 * rbac_audit_aggregated_total{cause="identical"|"over_budget"} counts the denials that had no
 * row of their own, and writing summaries logs one warning. In shadow mode (RBAC_ENFORCE=false) a
 * would-be denial is audited the same way, with allowed true (the call went through) and the
 * reason prefixed with "shadow-" ("shadow-no-credentials"). Allowed decisions written because of
 * audit.log_allowed get a row each, as before.
 *
 * Reads are bounded the same way, so that traffic over many keys costs the audit little. A read
 * identical to one queued in the flush window (same operation, tenant, key, agent, outcome and
 * cache hit) adds to that row's count (store_memory_audit.reads). Any other read spends a token
 * of the read rows' bucket (read_rows_per_s, burst one second's worth) for a row of its own;
 * without a token it is folded into the read summary of its operation, tenant, agent, outcome
 * and cache hit: a row with key "*" whose `keys` lists every key it stands for with its count
 * (extra {"reads": N, "keys": {"<key>": n, ...}}), and which a listing filtered on one of those
 * keys returns. Past RPC_AUDIT_READ_GROUPS summaries in one period, the reads of any further
 * group go to one overflow summary whose fields read "*" where they differ (tenant and agent
 * always), with a warning, so that reads varying their tenant or agent never make a row each.
 * Summaries are queued every read_summary_ms after their first read, or at once when
 * RPC_AUDIT_READ_KEYS keys are held; a key that is not
 * valid UTF-8 never folds (it could not be told apart in the JSON). Nothing is lost silently:
 * every read is a row or is counted in one, and memory_audit_reads_folded_total counts the
 * reads that went into a summary.
 *
 * Retention. The queue given retention_days > 0 (one per process: worker 0's) deletes RBAC and
 * memory audit rows older than that many days every retention_interval_s, in statements of
 * retention_batch rows (oldest first), at most RPC_AUDIT_RETENTION_BATCHES statements per table
 * and tick, and counts them in audit_retention_deleted_total{table}.
 *
 * Lifetime. rpc_audit_new() after the worker's store session, rpc_audit_drain() when the worker's
 * loop stopped (the session still open), store_session_free(), then rpc_audit_free().
 * Threads: an rpc_audit is used only on its worker's thread.
 */
#ifndef PINS_RPC_AUDIT_H
#define PINS_RPC_AUDIT_H

#include <stdbool.h>
#include <stddef.h>

#include "rpc/call.h"

struct event_base;
struct store_session;
struct auth_decision;

#define RPC_AUDIT_FLUSH_MS          200
#define RPC_AUDIT_FLUSH_ROWS        256
#define RPC_AUDIT_MAX_ROWS          4096
#define RPC_AUDIT_DENIAL_ROWS_PER_S 20    /* a queue's budget of new denial rows */
#define RPC_AUDIT_SUMMARY_MS        10000 /* over-budget denials: one summary row per this */
#define RPC_AUDIT_RETENTION_BATCHES 20    /* retention statements per table and tick */
#define RPC_AUDIT_READ_ROWS_PER_S   200   /* a queue's budget of single-read rows */
#define RPC_AUDIT_READ_SUMMARY_MS   1000 /* read summaries are queued this long after their first */
#define RPC_AUDIT_READ_GROUPS       256  /* read summaries held at once (then the overflow) */
#define RPC_AUDIT_READ_KEYS         8192 /* keys held by all read summaries at once */

typedef struct rpc_audit rpc_audit;

/* Bounds of a queue; 0 in a field takes its default above. max_rows bounds each kind. */
typedef struct rpc_audit_options {
    int flush_ms;
    size_t flush_rows;
    size_t max_rows;
    double denial_rows_per_s; /* new denial rows per second (the process budget / workers) */
    double read_rows_per_s;   /* single-read rows per second (the process budget / workers) */
    bool read_rows_set;       /* read_rows_per_s is given (0 then folds every read); false: the
                               * default RPC_AUDIT_READ_ROWS_PER_S */
    int read_summary_ms;
    int summary_ms;
    int retention_days;       /* 0: this queue runs no retention */
    int retention_interval_s; /* 0: 10 */
    int retention_batch;      /* rows per retention statement; 0: 500 */
} rpc_audit_options;

/* A new empty audit queue writing through ss (borrowed; must outlive the queue's writes) with a
 * timer on base. opts may be NULL (defaults). Registers the metric families once per process.
 * Returns 0 or PINS_ENOMEM. */
int rpc_audit_new(struct event_base *base, struct store_session *ss, const rpc_audit_options *opts,
                  rpc_audit **pq);
/* Frees q; rows still queued are dropped (and counted). NULL is allowed. */
void rpc_audit_free(rpc_audit *q);
/* Starts the writes of every queued row now. */
void rpc_audit_flush(rpc_audit *q);
/* Writes started whose store callback has not run yet. */
size_t rpc_audit_in_flight(const rpc_audit *q);
/* Rows queued (not yet handed to the store) of both kinds. */
size_t rpc_audit_queued(const rpc_audit *q);
/* At shutdown, after the loop stopped: flushes, then runs the loop until every write completed
 * or timeout_ms passed. */
void rpc_audit_drain(rpc_audit *q, int timeout_ms);

/* Starts a retention pass now (as the timer does); no-op without retention. */
void rpc_audit_retention_run(rpc_audit *q);

/* Records the RBAC decision d of call when the audit wants it: every denial (aggregated and
 * bounded as above), shadow-mode would-be denials the same way, and allowed decisions when the
 * policy's audit.log_allowed is set. No-op without a queue on the worker. */
void rpc_audit_rbac(rpc_call *call, const struct auth_decision *d);
/* Records a read of the memory pins (operation "get" or "list"; key: the key, or the list's
 * prefix) that the store answered with err (0: success), cache_hit when from its cache. */
void rpc_audit_memory_read(rpc_call *call, const char *operation, const char *tenant,
                           const char *key, bool cache_hit, int err);

#endif
