/* store/pg_int.h: the PostgreSQL backend's parts, shared by its files only (store/README.md,
 * "PostgreSQL").
 *
 *   pg_sql.c     the SQL texts and the table of statements a direct connection names
 *   pg_conn.c    connections: connect, schema check, backoff and the reconnect epoch, the
 *                pipeline pump that matches results to statements, deadlines, blocking mode
 *   pg_sched.c   the scheduler: the session's queue, segments, read batches, write order, key
 *                slots and upsert chains
 *   pg_cancel.c  the process-wide thread that sends cancel requests
 *   pg_feed.c    the change feed: the process's LISTEN connection and its thread
 *   pg_cache.c   the read cache the feed keeps, and the read index of GetPin batches
 *   postgres.c   the operations (a request per call), result delivery, sessions, the vtable
 *
 * Everything here runs on the session's thread, except pg_cancel.c's thread, pg_feed.c's thread
 * (which shares with the sessions only the read cache, pg_cache.c, thread-safe) and the store's
 * up_epoch (atomic, read by every session). A pg_req is owned by whichever list holds it: the
 * session's queue (wq_head), a connection's statements in flight (head..tail), a batch's kids or
 * a req_list being requeued; store__pg_fail_req and store__pg_deliver free it.
 *
 * ---- The one-key-per-write contract (pg_sched.c) ---------------------------------------------
 *
 * The scheduler assumes that every write call (OP_UPSERT, OP_DELETE) changes exactly one row,
 * named by its first two parameters, params[0] = tenant_id and params[1] = key, and nothing
 * else. Four things rest on it:
 *   - tenant slots: submit hashes params[0] once into r->slot; a write whose slot has a write
 *     segment of this session in flight (busy[slot] > 0) waits, so one tenant (its revision row)
 *     and one key never have two transactions of one session queued on their row locks;
 *   - write order: a write segment is sorted by (tenant, key) (write_cmp), so two segments take
 *     their row locks in the same order and never deadlock each other; a statement locking a
 *     second row would break that order;
 *   - upsert chains: consecutive upserts of one (tenant, key) become one statement
 *     (store__pg_sql_upsert_chain), which reads the parameters at fixed positions of sql_upsert;
 *   - requeueing after a rolled-back segment runs each call again on its own key.
 * A new write op that touches two keys (a rename, a move between tenants) must therefore:
 * take a slot for each key and count both in busy[] (busy_at holds one slot today: make it two),
 * order its locks by the same (tenant, key) comparison inside its statement and place itself in
 * the sort by the smaller key, never join an upsert chain (chainable() must refuse it), and keep
 * its two keys as params[0..1] and two more fixed positions that key_slot and write_cmp know.
 * Reads (OP_GET) use params[0..1] to find equal keys in a batch, and r->slot holds the hash of
 * tenant and key for them (key_slot), not of the tenant.
 */
#ifndef PINS_STORE_PG_INT_H
#define PINS_STORE_PG_INT_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>

#include <libpq-fe.h>

#include "common/arena.h"
#include "common/rand.h"
#include "store/cache.h"
#include "store/store_int.h"

#define SEGS_MAX        4   /* segments in flight per direct connection */
#define SEGS_MAX_POOLED 1   /* ... per connection through a pooler */
#define GET_BATCH_MAX   64  /* GetPin calls in one statement */
#define WRITE_BATCH_MAX 128 /* upserts and deletes in one transaction */
/* Write segments in flight per session: one running while one commits. PostgreSQL serialises
 * the commits of transactions that NOTIFY (a database-wide lock held through the commit's WAL
 * flush), and every write NOTIFYs: more segments in flight made smaller transactions that queued
 * on that lock one flush each, where fewer, fuller ones commit more writes per flush (UpsertPin
 * 6,160 -> 9,846 req/s measured, store/README.md). */
#define WRITE_SEGS_MAX     2
#define BUSY_SLOTS         16384                  /* counters of keys being written (power of 2) */
#define QUEUE_MAX          1024                   /* calls waiting per session */
#define TICK_MS            20                     /* deadline and reconnect check period */
#define BACKOFF_MIN_MS     100                    /* first reconnect delay */
#define BACKOFF_MAX_MS     2000                   /* largest reconnect delay: recovery < 5 s */
#define CONNECT_TIMEOUT_NS (INT64_C(5000000000))  /* a connection attempt, schema check included */
#define DEFAULT_TIMEOUT_NS (INT64_C(30000000000)) /* the limit of a call without a deadline */
#define STUCK_NS           (INT64_C(1000000000))  /* answer overdue past a deadline: reconnect */
#define NPARAMS            14

typedef enum op_kind {
    OP_UPSERT,
    OP_DELETE,
    OP_GET,
    OP_GET_BATCH,    /* internal: the statement of many OP_GET calls */
    OP_UPSERT_CHAIN, /* internal: the statement of several OP_UPSERT calls of one key */
    OP_LIST,
    OP_AUDIT,
    OP_CLEANUP,
    OP_SWEEP,
    OP_PING,
    OP_MAUDIT_WRITE,
    OP_RAUDIT_WRITE,
    OP_RAUDIT_LIST,
    OP_RAUDIT_CLEANUP,
    OP_AUDIT_EXPIRE,
    OP_CHANGES,
    OP_HISTORY_EXPIRE,
    OP_SCHEMA, /* internal: the schema check of a new connection */
} op_kind;

typedef enum conn_state { C_DOWN, C_CONNECTING, C_CHECKING, C_UP } conn_state;

/* What store_pool_connections reports for a connection. */
typedef enum pool_state { P_IDLE, P_BUSY, P_CONNECTING, P_DOWN, P_COUNT } pool_state;

/* The callback of a request, as its kind says. */
typedef union pg_cb {
    store_pin_cb pin;
    store_list_cb list;
    store_count_cb count;
    store_audit_list_cb audit;
    store_rbac_audit_list_cb raudit;
    store_changes_cb changes;
} pg_cb;

typedef struct pg_req {
    struct pg_req *next;
    op_kind kind;
    const char *sql;
    int nparams;
    const char *params[NPARAMS]; /* NULL: SQL NULL; else into num[] or owned[] */
    char *owned[NPARAMS];        /* malloc'd copies of the caller's strings */
    char num[NPARAMS][32];
    bool unbound; /* a parameter could not be copied: submitting fails with PINS_ENOMEM */
    pg_cb cb;
    void *arg;
    int64_t deadline_ns;
    int retries;
    bool abandoned; /* completed at its deadline: the result is discarded */
    int64_t abandoned_ns;
    bool *pdone; /* blocking mode: set when the callback ran */
    PGresult *res;
    bool sync_after;    /* the last statement of its segment */
    bool slow_seg;      /* sync_after: its segment is not a read batch (pg_conn.nslow) */
    bool write_seg;     /* sync_after: its segment writes pins (pg_conn.nwrite) */
    bool pre_set;       /* store__pg_sql_generic precedes it (and its Parse); its result is due */
    bool parse_pending; /* a Parse of its statement precedes it; its result is due */
    uint32_t slot;      /* upsert, delete: its tenant's slot in busy[] (tenant_slot); get: the
                           hash of its tenant and key (key_slot) */
    uint32_t busy_at;   /* sent in a write segment: its key's slot in busy[] + 1, else 0 */
    bool solo;          /* goes in a segment of its own (a retry after an error) */
    bool cancel_sent;   /* its calls all passed their deadlines: a cancel request went out */
    int64_t now_us;     /* get: the call's clock, for the expiry check of a shared row */
    store__changes_req changes; /* OP_CHANGES: after and limit (no strings) */
    int key_at;                 /* get in a batch: the array element of its (tenant, key), 0-based;
                                   -1 for a call the read cache answers (cache_cand) */
    int tenant_at;       /* get in a batch read through the cache: its tenant's element, 0-based */
    bool no_cache;       /* get: read from the database (the cache could not answer it) */
    bool cache_cand;     /* get in a batch: cached when sent, answered from the cache if the
                            read index allows (deliver_gets) */
    bool cache_fill;     /* get in a batch: not cached when sent; its row fills the cache */
    uint64_t cache_gen;  /* cache_fill: the stripe generation before the read */
    struct pg_req *kids; /* OP_GET_BATCH, OP_UPSERT_CHAIN: its calls in order, linked by next */
    int nkids;
} pg_req;

typedef struct pg_session pg_session;

typedef struct pg_conn {
    pg_session *ss;
    PGconn *pg;
    conn_state state;
    pool_state pstate;
    store__io *io;
    bool want_read, want_write;
    int64_t backoff_ms;
    int64_t retry_ns;    /* C_DOWN: when to try again */
    uint64_t down_epoch; /* C_DOWN: the store's up_epoch when it failed */
    int64_t connect_ns;  /* C_CONNECTING, C_CHECKING: when the attempt times out */
    pg_req *head, *tail; /* statements in flight, in send order */
    pg_req *recv;        /* the first of them still without a result */
    int inflight;        /* statements in flight */
    bool direct;         /* no pooler between: named statements may be kept */
    uint32_t prepared;   /* direct: bit i set once store__pg_named_sql[i] was sent for preparing */
    int nsegs;           /* segments (syncs) in flight */
    int nslow;           /* of them, segments other than read batches: writes (each waits for
                            its commit's WAL flush), audit inserts, listings */
    int nwrite;          /* of them, segments of writes (pins changed: WRITE_SEGS_MAX) */
    bool seg_slow;       /* the segment being queued has a statement other than a read batch */
    bool seg_write;      /* ... has an upsert or a delete */
    uint64_t gen;        /* bumped when the connection is dropped */
    bool recheck;        /* the schema went behind: no new work; dropped for a schema check
                            once its statements in flight are done (store__pg_conn_recheck) */
} pg_conn;

typedef struct pg_feed pg_feed;
typedef struct pg_rcache pg_rcache;

typedef struct pg_store {
    struct store base;
    char *url;
    char *listen_url;  /* the feed's URL (store_options.listen_url, else url) */
    pg_feed *feed;     /* NULL until store_feed_start, and after store_feed_stop */
    pg_rcache *rcache; /* the read cache (pg_cache.c); NULL when store_options.pg_read_cache
                          is off */
    int pool_size;
    int workers;
    atomic_int sessions;
    int schema_need;
    atomic_uint_fast64_t up_epoch; /* bumped when a failing connection comes back */
} pg_store;

struct pg_session {
    struct store_session base;
    pg_store *st;
    struct event_base *evb;
    pg_conn *conns;
    int nconns;
    pg_req *wq_head, *wq_tail;
    int wq_len;
    store__timer *tick;
    store__defer *kick;                 /* store__pg_dispatch() at the end of the loop iteration */
    uint16_t *busy;                     /* BUSY_SLOTS counters: writes in flight per key hash */
    pins_arena *pack;                   /* scratch of store__pack_value (made on first use) */
    pins_rand rng;                      /* the reconnect jitter */
    char down_reason[STORE__ERROR_MAX]; /* why the last connection to fail failed */
    bool down_schema; /* down_reason is a schema behind the binary (store_session_schema_behind) */
};

/* How store__pg_conn_put sends a statement on a connection through a pooler (a direct connection
 * uses its named statements instead). */
typedef enum put_mode {
    PUT_ONCE,          /* parse, bind and execute (the unnamed statement is replaced) */
    PUT_PARSE,         /* parse r->sql as the unnamed statement, then bind and execute it */
    PUT_REUSE,         /* bind and execute the unnamed statement the segment parsed last */
    PUT_PARSE_GENERIC, /* PUT_PARSE, preceded by store__pg_sql_generic: the calls after it that
                          reuse the statement run its one generic plan instead of a plan each */
} put_mode;

/* Calls to run again, in order, ahead of the queue. */
typedef struct req_list {
    pg_req *head, *tail;
    int n;
} req_list;

/* A statement of several calls (its kids). */
static inline bool store__pg_is_batch(const pg_req *r)
{
    return r->kind == OP_GET_BATCH || r->kind == OP_UPSERT_CHAIN;
}

/* Reads column col of row as an integer (the text of an int8). */
static inline int64_t store__pg_col_i64(const PGresult *res, int row, int col)
{
    return strtoll(PQgetvalue(res, row, col), NULL, 10);
}

/* ---- pg_sql.c ----------------------------------------------------------------------------- */

extern const char store__pg_sql_upsert[];
extern const char store__pg_sql_upsert_chain[];
extern const char store__pg_sql_delete[];
extern const char store__pg_sql_get_batch[];
extern const char store__pg_sql_get_batch_ri[];
extern const char store__pg_sql_revisions_all[];
extern const char store__pg_sql_barrier[];
extern const char store__pg_sql_list[];
extern const char store__pg_sql_audit[];
extern const char store__pg_sql_cleanup[];
extern const char store__pg_sql_sweep[];
extern const char store__pg_sql_maudit_write[];
extern const char store__pg_sql_raudit_write[];
extern const char store__pg_sql_raudit_list[];
extern const char store__pg_sql_raudit_cleanup[];
extern const char store__pg_sql_raudit_expire[];
extern const char store__pg_sql_maudit_expire[];
extern const char store__pg_sql_changes[];
extern const char store__pg_sql_change_get[];
extern const char store__pg_sql_history_expire[];
extern const char store__pg_sql_ping[];
extern const char store__pg_sql_schema[];
extern const char store__pg_sql_generic[];

/* The bit of sql (one of the texts above, compared by address) in pg_conn.prepared, with its
 * statement name in name[16]; 0 for a statement that is never named. */
uint32_t store__pg_named_bit(const char *sql, char name[16]);

/* ---- pg_conn.c ---------------------------------------------------------------------------- */

/* Registers store_errors_total and store_pool_connections (once per process). */
void store__pg_metrics_init(void);
/* Adds one to store_errors_total{kind}. */
void store__pg_count_error(const char *kind);
/* The schema went behind the binary while c was up (a migration reverted, a table gone):
 * store_schema_behind and the session's schema_behind are set, c takes no new statements, and
 * once those in flight are done it is dropped (store_errors_total{kind="schema"}) so that it runs
 * the schema check again when it reconnects. */
void store__pg_conn_recheck(pg_conn *c);
/* c's statements in flight are done and it awaits a schema check: drops it. */
void store__pg_conn_recheck_due(pg_conn *c);
/* Makes c a connection of ss, down, watched on ss's loop when it has one. Returns 0 or
 * PINS_ENOMEM (c then needs store__pg_conn_close all the same). */
int store__pg_conn_init(pg_conn *c, pg_session *ss);
/* Closes c (its statements in flight were completed) and takes it out of the pool gauge. */
void store__pg_conn_close(pg_conn *c);
/* Starts connecting c (C_DOWN -> C_CONNECTING). */
void store__pg_conn_start(pg_conn *c);
/* Drops c (its statements in flight fail with PINS_ESTORE: their outcome is unknown) and plans
 * the next attempt; kind is the store_errors_total kind, why the detail (ss->down_reason). Safe
 * inside a callback running from c: the caller checks c->gen. */
void store__pg_conn_fail(pg_conn *c, const char *kind, const char *why);
/* Queues r's statement on c (an up connection). Returns false when that dropped c (r was
 * failed with the rest). */
bool store__pg_conn_put(pg_conn *c, pg_req *r, put_mode mode);
/* Ends the segment queued on c with a sync and sends it. */
void store__pg_conn_sync(pg_conn *c);
/* Sends r on c as a segment of its own. */
void store__pg_conn_send(pg_conn *c, pg_req *r);
/* The schema check's result res arrived on c: returns true when the schema is recent enough (c
 * is then up), false when c was dropped for a schema behind the binary. */
bool store__pg_conn_checked(pg_conn *c, const PGresult *res);
/* True when a connection of ss is up or coming up. */
bool store__pg_any_conn_alive(const pg_session *ss);
/* Arms ss's tick when something needs it (a waiting call, a connection not up or busy). */
void store__pg_tick_arm(pg_session *ss);
/* The tick's callback (reconnects, deadlines, cancels). */
void store__pg_on_tick(void *arg);
/* Blocking mode (no loop): runs the connections until *done. */
void store__pg_wait_done(pg_session *ss, bool *done);

/* ---- pg_sched.c --------------------------------------------------------------------------- */

/* Queues r (fails it at once when no connection is up or coming up, or the queue is full), then
 * waits for it in blocking mode. Always returns 0: the callback runs exactly once. */
int store__pg_submit(pg_session *ss, pg_req *r);
/* Submits r when its parameters were all bound (ok), else frees it. Returns store__pg_submit()'s
 * result or PINS_ENOMEM. */
int store__pg_submit_if(pg_session *ss, pg_req *r, bool ok);
/* Sends waiting calls, a segment at a time, to the least busy connections that are up. */
void store__pg_dispatch(pg_session *ss);
/* The end-of-iteration callback (ss->kick): dispatches, then arms the tick. */
void store__pg_on_kick(void *arg);
/* r left the write segment it was sent in: its key no longer counts as in flight. */
void store__pg_busy_release(pg_session *ss, pg_req *r);
/* Fails every waiting call with PINS_ESTORE (no connection is up or coming up). */
void store__pg_fail_queue(pg_session *ss, const char *detail);
/* Adds r to l for another run: a batch's calls one by one (the batch is freed); an abandoned
 * call is freed instead. */
void store__pg_requeue(req_list *l, pg_req *r);
/* Puts the calls of l in front of the waiting ones. */
void store__pg_requeue_front(pg_session *ss, req_list *l);

/* ---- pg_cancel.c -------------------------------------------------------------------------- */

/* Asks c's server to cancel what it is running; true when the request was queued. */
bool store__pg_cancel_post(pg_conn *c);

/* ---- pg_feed.c ---------------------------------------------------------------------------- */

/* store_feed_start, store_feed_stop, store_feed_live for s (store/store.h). */
int store__pg_feed_start(pg_store *s, store_change_fn fn, store_feed_state_fn state, void *arg);
void store__pg_feed_stop(pg_store *s);
bool store__pg_feed_live(const pg_store *s);

/* ---- pg_cache.c --------------------------------------------------------------------------- */

/* Tenants whose applied revision the read cache tracks: a tenant beyond is read from the
 * database (about 60 bytes and its name each). */
#define RCACHE_TENANTS_MAX 100000

/* A new read cache of about bytes bytes, not ready. Returns 0 or PINS_ENOMEM. */
int store__pg_rcache_new(size_t bytes, pg_rcache **prc);
/* Frees rc (the feed is stopped). NULL is allowed. */
void store__pg_rcache_free(pg_rcache *rc);
/* The pins (store/cache.h). */
store_cache *store__pg_rcache_cache(pg_rcache *rc);
/* Feed thread. A change the feed received, in commit order: replaces or removes its key, then
 * raises its tenant's applied revision. A PUT's value is packed on the way (ch->pin.value_pb,
 * valid until the next call), so that the watchers get it packed too. */
void store__pg_rcache_apply(pg_rcache *rc, store_change *ch);
/* Feed thread. The feed (re)started listening, or missed a change: not ready, every entry and
 * applied revision dropped. */
void store__pg_rcache_reset(pg_rcache *rc);
/* Feed thread. The barrier sent after reading res (store__pg_sql_revisions_all: tenant,
 * revision) came back: raises each tenant's applied revision to the one listed; ready. */
void store__pg_rcache_sync_rows(pg_rcache *rc, const PGresult *res);
/* Feed thread. A statement took revision rev of tenant and wrote nothing (store/pg_sql.c, sk):
 * when the tenant has an applied revision, it rises to rev. */
void store__pg_rcache_skip(pg_rcache *rc, const char *tenant, int64_t rev);
/* Any thread. The schema went behind (a migration reverted: revisions may start over): the cache
 * is unusable until the feed has started it over (store__pg_rcache_take_resync). */
void store__pg_rcache_invalidate(pg_rcache *rc);
/* Feed thread. Whether a start-over was asked for since the last call. */
bool store__pg_rcache_take_resync(pg_rcache *rc);
/* Whether the cache may be used (NULL: no cache). */
bool store__pg_rcache_ready(pg_rcache *rc);
/* Whether tenant has an applied revision (a hint at send time: its calls may be cached). */
bool store__pg_rcache_known(pg_rcache *rc, const char *tenant);
/* Whether the cache holds every change of tenant up to rev, its revision read by the read index
 * after the call started: the call may be answered from the cache. */
bool store__pg_rcache_covers(pg_rcache *rc, const char *tenant, int64_t rev);

/* ---- postgres.c --------------------------------------------------------------------------- */

/* The number of columns store__pg_read_pin reads: id, tenant, key, value, source, created,
 * updated, ttl, expires, version, revision. */
#define PIN_NCOLS 11
/* Fills *pin from the PIN_NCOLS pin columns of row starting at col (strings borrowed from res);
 * the compacted value goes to *pbuf (new, the caller frees it). Returns 0 or PINS_ENOMEM. */
int store__pg_read_pin(const PGresult *res, int row, int col, store_pin *pin, char **pbuf);
/* Copies jsonb's text output src[0..n) without the blanks it puts outside strings into dst (at
 * least n + 1 bytes). Returns the length written. */
size_t store__pg_json_compact(char *dst, const char *src, size_t n);

/* Frees r, and the calls of a batch. */
void store__pg_req_free(pg_req *r);
/* Calls r's callback with err and no data. */
void store__pg_call_error(pg_session *ss, pg_req *r, int err);
/* Completes r (every call of a batch) with err (no result) and frees it; abandoned calls were
 * completed already. detail goes to store_session_last_error for the failures that have one; a
 * PINS_ESTORE whose detail is ss->down_reason of a schema behind the binary also sets
 * store_session_schema_behind. */
void store__pg_fail_req(pg_session *ss, pg_req *r, int err, const char *detail);
/* Delivers r's result (r->res) to its callback, or, for the schema check, brings c up; frees r. */
void store__pg_deliver(pg_session *ss, pg_conn *c, pg_req *r);

/* The PostgreSQL migrations in ascending version order (generated source). */
extern const store__migration store__postgres_migrations[];
extern const size_t store__postgres_migrations_count;

/* Opens the PostgreSQL store for opts->database_url without connecting (sessions connect, and
 * reconnect, by themselves). Returns 0, PINS_ESTORE (unparsable URL), PINS_ENOMEM. */
int store__postgres_open(const store_options *opts, store **pstore);

#endif
