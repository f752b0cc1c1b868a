/* tests/unit/rpc/test_audit.c: the per-worker audit queues (rpc/audit.c) through the dispatcher
 * and the MemoryPins read handlers, on a fake worker with a real SQLite store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <sqlite3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "auth/auth.h"
#include "common/error.h"
#include "common/timeutil.h"
#include "fake_call.h"
#include "scrape.h"
#include "memorypins/v1/memory_pins.pb-c.h"
#include "observability/metrics.h"
#include "rpc/audit.h"
#include "store/sqlite.h"

#define GET_PIN    "/memorypins.v1.MemoryPins/GetPin"
#define LIST_PINS  "/memorypins.v1.MemoryPins/ListPins"
#define UPSERT_PIN "/memorypins.v1.MemoryPins/UpsertPin"

typedef struct fixture {
    fake_env *env;
    char policy[64]; /* a policy file written by a test, "" when none */
} fixture;

/* What both audit listings record of the page the store answered. */
typedef struct page_seen {
    int calls;
    int64_t total;
    size_t n;
} page_seen;

typedef struct rbac_rows {
    page_seen page;
    char subject[8][32];
    char reason[8][40];
    char path[8][64];
    char method[8][32];
    char request_id[8][64];
    bool allowed[8];
} rbac_rows;

typedef struct mem_rows {
    page_seen page;
    char key[8][32];
    char agent[8][32];
    bool cache_hit[8];
    bool success[8];
} mem_rows;

static void attach_with(fixture *fx, const rpc_audit_options *o)
{
    rpc_worker *w = fake_env_worker(fx->env);
    assert_int_equal(rpc_audit_new(fake_env_base(fx->env), w->store, o, &w->audit), 0);
}

static void attach(fixture *fx, int flush_ms, size_t flush_rows, size_t max_rows)
{
    rpc_audit_options o = {.flush_ms = flush_ms, .flush_rows = flush_rows, .max_rows = max_rows};
    attach_with(fx, &o);
}

static void reattach(fixture *fx, const rpc_audit_options *o)
{
    rpc_worker *w = fake_env_worker(fx->env);
    rpc_audit_free(w->audit);
    w->audit = NULL;
    attach_with(fx, o);
}

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    fx->env = fake_env_new();
    attach(fx, 10000, 256, 64);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    rpc_worker *w = fake_env_worker(fx->env);
    rpc_audit_free(w->audit);
    w->audit = NULL;
    pins_config *cfg = fake_env_config(fx->env);
    if (fx->policy[0] != '\0') {
        free(cfg->rbac_policy_file);
        cfg->rbac_policy_file = NULL;
        auth_reload_result r;
        assert_int_equal(auth_policy_reload(cfg, &r), 0);
        unlink(fx->policy);
    }
    fake_env_free(fx->env);
    free(fx);
    return 0;
}

static void copy(char *dst, size_t cap, const char *s)
{
    snprintf(dst, cap, "%s", s != NULL ? s : "");
}

/* Records a listing's answer: it succeeded with at most 8 rows (what the row arrays hold). */
static void see_page(page_seen *p, int err, size_t n, int64_t total)
{
    assert_int_equal(err, 0);
    assert_true(n <= 8);
    p->calls++;
    p->total = total;
    p->n = n;
}

static void on_rbac(void *arg, int err, const store_rbac_audit *rows, size_t n, int64_t total)
{
    rbac_rows *r = arg;
    see_page(&r->page, err, n, total);
    for (size_t i = 0; i < n; i++) {
        copy(r->subject[i], sizeof(r->subject[i]), rows[i].subject);
        copy(r->reason[i], sizeof(r->reason[i]), rows[i].reason);
        copy(r->path[i], sizeof(r->path[i]), rows[i].path);
        copy(r->method[i], sizeof(r->method[i]), rows[i].method);
        copy(r->request_id[i], sizeof(r->request_id[i]), rows[i].request_id);
        r->allowed[i] = rows[i].allowed;
    }
}

static void rbac_list(fixture *fx, rbac_rows *r)
{
    memset(r, 0, sizeof(*r));
    store_rbac_audit_list_req q = {.limit = 8};
    assert_int_equal(store_rbac_audit_list(fake_env_store(fx->env), &q, on_rbac, r), 0);
    assert_int_equal(r->page.calls, 1);
}

static void on_mem(void *arg, int err, const store_memory_audit *rows, size_t n, int64_t total)
{
    mem_rows *r = arg;
    see_page(&r->page, err, n, total);
    for (size_t i = 0; i < n; i++) {
        copy(r->key[i], sizeof(r->key[i]), rows[i].key);
        copy(r->agent[i], sizeof(r->agent[i]), rows[i].agent_id);
        r->cache_hit[i] = rows[i].cache_hit;
        r->success[i] = rows[i].success;
    }
}

static void mem_list(fixture *fx, const char *operation, mem_rows *r)
{
    memset(r, 0, sizeof(*r));
    store_audit_list_req q = {.operation = operation, .limit = 8};
    assert_int_equal(store_audit_list(fake_env_store(fx->env), &q, on_mem, r), 0);
    assert_int_equal(r->page.calls, 1);
}

static fake_call *get_pin_in(fixture *fx, const char *tenant, const char *key,
                             const char *const *headers)
{
    Memorypins__V1__GetPinRequest req = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    req.tenant_id = (char *)tenant;
    req.key = (char *)key;
    return fake_call_run(fx->env, GET_PIN, &req.base, headers);
}

static fake_call *get_pin(fixture *fx, const char *key, const char *const *headers)
{
    return get_pin_in(fx, "t", key, headers);
}

static rpc_audit *queue_of(fixture *fx)
{
    return fake_env_worker(fx->env)->audit;
}

/* ---- RBAC decisions ---------------------------------------------------------------------------
 */

static void test_denied_call_writes_one_rbac_row_after_flush(void **state)
{
    fixture *fx = *state;
    fake_env_config(fx->env)->rbac_enforce = true;
    double before = scrape_value("rbac_audit_writes_total{status=\"success\"}", 0);
    fake_call *fc = get_pin(fx, "k", (const char *const[]){"x-request-id", "req-42", NULL});
    assert_int_equal(fake_call_err(fc), PINS_EUNAUTHENTICATED);

    rbac_rows r;
    rbac_list(fx, &r);
    assert_int_equal(r.page.total, 0); /* queued, not written on the request path */
    assert_int_equal(rpc_audit_queued(queue_of(fx)), 1);

    rpc_audit_flush(queue_of(fx));
    rbac_list(fx, &r);
    assert_int_equal(r.page.total, 1);
    assert_string_equal(r.subject[0], "anonymous");
    assert_string_equal(r.reason[0], "no-credentials");
    assert_string_equal(r.path[0], GET_PIN);
    assert_string_equal(r.method[0], "GetPin");
    assert_string_equal(r.request_id[0], "req-42");
    assert_false(r.allowed[0]);
    assert_int_equal(rpc_audit_queued(queue_of(fx)), 0);
    assert_int_equal(rpc_audit_in_flight(queue_of(fx)), 0);
    assert_true(scrape_value("rbac_audit_writes_total{status=\"success\"}", 0) == before + 1);
    fake_call_free(fc);
}

static void test_allowed_calls_are_written_only_with_log_allowed(void **state)
{
    fixture *fx = *state;
    pins_config *cfg = fake_env_config(fx->env);
    cfg->rbac_enforce = true;
    cfg->machine_secret_token = strdup("audit-secret");
    assert_non_null(cfg->machine_secret_token);
    const char *const hdrs[] = {"x-machine-token", "audit-secret", NULL};
    fake_call *fc = get_pin(fx, "k", hdrs);
    assert_int_equal(fake_call_err(fc), PINS_ENOT_FOUND); /* allowed: the store answered */
    fake_call_free(fc);
    rpc_audit_flush(queue_of(fx));
    rbac_rows r;
    rbac_list(fx, &r);
    assert_int_equal(r.page.total, 0);

    snprintf(fx->policy, sizeof(fx->policy), "/tmp/pins-audit-policy-XXXXXX");
    int fd = mkstemp(fx->policy);
    assert_true(fd >= 0);
    static const char policy[] = "{\"version\":\"log-all\",\"audit\":{\"log_allowed\":true},"
                                 "\"matrix\":{\"machine\":{\"memory_pin\":[\"read\"]}}}";
    assert_int_equal(write(fd, policy, sizeof(policy) - 1), (ssize_t)(sizeof(policy) - 1));
    close(fd);
    cfg->rbac_policy_file = strdup(fx->policy);
    auth_reload_result res;
    assert_int_equal(auth_policy_reload(cfg, &res), 0);

    fc = get_pin(fx, "k", hdrs);
    assert_int_equal(fake_call_err(fc), PINS_ENOT_FOUND);
    fake_call_free(fc);
    rpc_audit_flush(queue_of(fx));
    rbac_list(fx, &r);
    assert_int_equal(r.page.total, 1);
    assert_true(r.allowed[0]);
    assert_string_equal(r.subject[0], "machine");
    assert_string_equal(r.reason[0], "role-allowed");
}

static void test_full_queue_drops_and_counts(void **state)
{
    fixture *fx = *state;
    rpc_worker *w = fake_env_worker(fx->env);
    rpc_audit_free(w->audit);
    attach(fx, 10000, 100, 2);
    fake_env_config(fx->env)->rbac_enforce = true;
    double dropped = scrape_value("rbac_audit_writes_total{status=\"dropped\"}", 0);
    static const char *const tenants[] = {"t1", "t2", "t3"}; /* three distinct denials */
    for (int i = 0; i < 3; i++)
        fake_call_free(get_pin_in(fx, tenants[i], "k", NULL));
    assert_int_equal(rpc_audit_queued(queue_of(fx)), 2);
    assert_true(scrape_value("rbac_audit_writes_total{status=\"dropped\"}", 0) == dropped + 1);
    rpc_audit_flush(queue_of(fx));
    rbac_rows r;
    rbac_list(fx, &r);
    assert_int_equal(r.page.total, 2);
}

static void test_timer_and_threshold_flush_from_the_loop(void **state)
{
    fixture *fx = *state;
    rpc_worker *w = fake_env_worker(fx->env);
    rpc_audit_free(w->audit);
    attach(fx, 20, 2, 64);
    fake_env_config(fx->env)->rbac_enforce = true;
    fake_call_free(get_pin(fx, "k", NULL));
    rbac_rows r;
    rbac_list(fx, &r);
    assert_int_equal(r.page.total, 0);
    fake_env_run(fx->env, 100); /* the 20 ms timer */
    rbac_list(fx, &r);
    assert_int_equal(r.page.total, 1);

    /* Two rows reach flush_rows: written in the next loop iteration, before any timer. */
    fake_call_free(get_pin_in(fx, "t1", "k", NULL));
    fake_call_free(get_pin_in(fx, "t2", "k", NULL));
    assert_int_equal(rpc_audit_queued(queue_of(fx)), 2);
    event_base_loop(fake_env_base(fx->env), EVLOOP_NONBLOCK);
    rbac_list(fx, &r);
    assert_int_equal(r.page.total, 3);
}

static void test_failed_write_counts_errors_and_never_fails_the_call(void **state)
{
    fixture *fx = *state;
    fake_env_config(fx->env)->rbac_enforce = true;
    fake_call *fc = get_pin(fx, "k", NULL);
    assert_int_equal(fake_call_err(fc), PINS_EUNAUTHENTICATED);
    fake_call_free(fc);
    double errors = scrape_value("rbac_audit_writes_total{status=\"error\"}", 0);
    assert_int_equal(store_sqlite_fail_next_commit(fake_env_store(fx->env), SQLITE_IOERR), 0);
    rpc_audit_flush(queue_of(fx));
    assert_true(scrape_value("rbac_audit_writes_total{status=\"error\"}", 0) == errors + 1);
    rbac_rows r;
    rbac_list(fx, &r);
    assert_int_equal(r.page.total, 0);
}

static long long sql_int(fixture *fx, const char *sql);

static void test_identical_denials_become_one_row_with_their_count(void **state)
{
    fixture *fx = *state;
    fake_env_config(fx->env)->rbac_enforce = true;
    double identical = scrape_value("rbac_audit_aggregated_total{cause=\"identical\"}", 0);
    for (int i = 0; i < 100; i++)
        fake_call_free(get_pin(fx, "k", NULL));
    fake_call_free(get_pin_in(fx, "other", "k", NULL)); /* another tenant: its own row */
    assert_int_equal(rpc_audit_queued(queue_of(fx)), 2);
    rpc_audit_flush(queue_of(fx));
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM rbac_audit"), 2);
    assert_int_equal(
        sql_int(fx, "SELECT json_extract(extra, '$.count') FROM rbac_audit WHERE tenant_id = 't'"),
        100);
    assert_int_equal(sql_int(fx, "SELECT extra = '{}' FROM rbac_audit WHERE tenant_id = 'other'"),
                     1);
    assert_true(scrape_value("rbac_audit_aggregated_total{cause=\"identical\"}", 0) ==
                identical + 99);
}

static void test_denials_over_the_budget_fold_into_one_summary_row(void **state)
{
    fixture *fx = *state;
    rpc_audit_options o = {.flush_ms = 10000, .denial_rows_per_s = 0.001, .summary_ms = 600000};
    reattach(fx, &o);
    pins_config *cfg = fake_env_config(fx->env);
    cfg->rbac_enforce = true;
    cfg->jwt_secret = strdup("audit-jwt-secret");
    assert_non_null(cfg->jwt_secret);
    double over = scrape_value("rbac_audit_aggregated_total{cause=\"over_budget\"}", 0);
    /* 50 anonymous denials, each for another tenant: one row from the bucket (its one token),
     * the 49 others in the summary row of (anonymous, no-credentials). */
    char tenant[16];
    for (int i = 0; i < 50; i++) {
        snprintf(tenant, sizeof(tenant), "t%d", i);
        fake_call_free(get_pin_in(fx, tenant, "k", NULL));
    }
    /* Bad tokens: another reason, a summary row of its own. */
    const char *const bad[] = {"authorization", "Bearer a.b.c", NULL};
    fake_call_free(get_pin_in(fx, "t98", "k", bad));
    fake_call_free(get_pin_in(fx, "t99", "k", bad));
    assert_int_equal(rpc_audit_queued(queue_of(fx)), 1);
    assert_true(scrape_value("rbac_audit_aggregated_total{cause=\"over_budget\"}", 0) == over + 51);
    rpc_audit_flush(queue_of(fx)); /* an explicit flush writes the summaries at once */
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM rbac_audit"), 3);
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM rbac_audit WHERE tenant_id = 't0'"
                                 " AND reason = 'no-credentials' AND extra = '{}'"),
                     1);
    /* The summaries: what every folded denial shared, "*" for the rest, and how many. */
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM rbac_audit WHERE tenant_id = '*'"
                                 " AND reason = 'no-credentials' AND subject = 'anonymous'"
                                 " AND resource = 'memory_pin' AND action = 'read'"
                                 " AND path = '" GET_PIN "' AND request_id IS NULL"
                                 " AND json_extract(extra, '$.count') = 49"),
                     1);
    assert_int_equal(sql_int(fx, "SELECT json_extract(extra, '$.count') FROM rbac_audit"
                                 " WHERE reason = 'invalid-token' AND tenant_id = '*'"),
                     2);
    /* Nothing is lost: the rows stand for every denial. */
    assert_int_equal(sql_int(fx, "SELECT sum(coalesce(json_extract(extra, '$.count'), 1))"
                                 " FROM rbac_audit"),
                     52);
}

static void test_summary_row_is_written_from_the_loop_when_due(void **state)
{
    fixture *fx = *state;
    rpc_audit_options o = {.flush_ms = 10000, .denial_rows_per_s = 0.001, .summary_ms = 20};
    reattach(fx, &o);
    fake_env_config(fx->env)->rbac_enforce = true;
    fake_call_free(get_pin_in(fx, "a", "k", NULL));
    fake_call_free(get_pin_in(fx, "b", "k", NULL));
    fake_call_free(get_pin_in(fx, "c", "k", NULL));
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM rbac_audit"), 0);
    for (int i = 0; i < 100 && sql_int(fx, "SELECT count(*) FROM rbac_audit") < 2; i++)
        fake_env_run(fx->env, 10);
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM rbac_audit"), 2);
    assert_int_equal(sql_int(fx, "SELECT json_extract(extra, '$.count') FROM rbac_audit"
                                 " WHERE tenant_id = '*'"),
                     2);
}

static void test_shadow_mode_audits_would_be_denials(void **state)
{
    fixture *fx = *state;
    pins_config *cfg = fake_env_config(fx->env);
    cfg->rbac_enforce = false;
    cfg->machine_secret_token = strdup("audit-secret");
    assert_non_null(cfg->machine_secret_token);
    fake_call *fc = get_pin(fx, "k", (const char *const[]){"x-request-id", "req-7", NULL});
    assert_int_equal(fake_call_err(fc), PINS_ENOT_FOUND); /* let through */
    fake_call_free(fc);
    /* The machine token is allowed: no row (the policy does not log allowed decisions). */
    fake_call_free(
        get_pin(fx, "k", (const char *const[]){"x-machine-token", "audit-secret", NULL}));
    rpc_audit_flush(queue_of(fx));
    rbac_rows r;
    rbac_list(fx, &r);
    assert_int_equal(r.page.total, 1);
    assert_string_equal(r.subject[0], "anonymous");
    assert_string_equal(r.reason[0], "shadow-no-credentials");
    assert_true(r.allowed[0]);
    assert_string_equal(r.request_id[0], "req-7");
}

static void on_written_count(void *arg, int err, int64_t n)
{
    assert_int_equal(err, 0);
    *(int64_t *)arg = n;
}

static void test_retention_deletes_old_rows_of_both_audits_in_batches(void **state)
{
    fixture *fx = *state;
    rpc_audit_options o = {.flush_ms = 10000, .retention_days = 30, .retention_batch = 2};
    reattach(fx, &o);
    store_session *ss = fake_env_store(fx->env);
    const int64_t day = INT64_C(86400000000), now = pins_time_now_us();
    store_rbac_audit rr[6];
    for (int i = 0; i < 6; i++)
        rr[i] = (store_rbac_audit){.ts_us = i < 5 ? now - 40 * day + i : now - 20 * day,
                                   .subject = i < 5 ? "old" : "recent",
                                   .resource = "memory_pin",
                                   .action = "read"};
    store_memory_audit mr[3];
    for (int i = 0; i < 3; i++)
        mr[i] = (store_memory_audit){.ts_us = i < 2 ? now - 31 * day : now,
                                     .operation = "get",
                                     .tenant_id = "t",
                                     .key = i < 2 ? "old" : "recent",
                                     .success = true};
    int64_t n = -1;
    assert_int_equal(store_rbac_audit_write(ss, rr, 6, on_written_count, &n), 0);
    assert_int_equal(n, 6);
    assert_int_equal(store_memory_audit_write(ss, mr, 3, on_written_count, &n), 0);
    assert_int_equal(n, 3);
    double before = scrape_value("audit_retention_deleted_total{table=\"rbac\"}", 0);

    rpc_audit_retention_run(queue_of(fx));
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM rbac_audit WHERE subject = 'old'"), 0);
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM rbac_audit WHERE subject = 'recent'"), 1);
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM memory_audit WHERE key = 'old'"), 0);
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM memory_audit WHERE key = 'recent'"), 1);
    assert_true(scrape_value("audit_retention_deleted_total{table=\"rbac\"}", 0) == before + 5);

    /* A queue without retention_days deletes nothing. */
    reattach(fx, &(rpc_audit_options){.flush_ms = 10000});
    assert_int_equal(store_rbac_audit_write(ss, rr, 1, on_written_count, &n), 0);
    rpc_audit_retention_run(queue_of(fx));
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM rbac_audit WHERE subject = 'old'"), 1);
}

/* ---- memory reads ------------------------------------------------------------------------------
 */

static long long sql_int(fixture *fx, const char *sql)
{
    char path[256];
    snprintf(path, sizeof(path), "%s/pins.db", fake_env_data_dir(fx->env));
    sqlite3 *db = NULL;
    sqlite3_stmt *st = NULL;
    assert_int_equal(sqlite3_open_v2(path, &db, SQLITE_OPEN_READONLY, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_prepare_v2(db, sql, -1, &st, NULL), SQLITE_OK);
    assert_int_equal(sqlite3_step(st), SQLITE_ROW);
    long long v = sqlite3_column_int64(st, 0);
    sqlite3_finalize(st);
    sqlite3_close(db);
    return v;
}

static void test_identical_reads_in_a_window_become_one_row_with_their_count(void **state)
{
    fixture *fx = *state;
    const char *const a[] = {"x-agent-id", "agent-a", NULL};
    const char *const b[] = {"x-agent-id", "agent-b", NULL};
    for (int i = 0; i < 50; i++)
        fake_call_free(get_pin(fx, "hot", a));
    fake_call_free(get_pin(fx, "hot", b)); /* another agent: its own row */
    fake_call_free(get_pin(fx, "cold", a));
    /* 3 reads, and 1 RBAC row: the shadow-mode would-be denials of these anonymous reads are
     * identical, so they share one row. */
    assert_int_equal(rpc_audit_queued(queue_of(fx)), 4);
    rpc_audit_flush(queue_of(fx));
    fake_env_run(fx->env, 10);
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM memory_audit WHERE operation = 'get'"), 3);
    assert_int_equal(sql_int(fx, "SELECT json_extract(extra, '$.reads') FROM memory_audit"
                                 " WHERE key = 'hot' AND agent_id = 'agent-a'"),
                     50);
    assert_int_equal(sql_int(fx, "SELECT extra = '{}' FROM memory_audit WHERE key = 'cold'"), 1);
}

static void test_get_and_list_append_memory_read_rows(void **state)
{
    fixture *fx = *state;
    const char *const hdrs[] = {"x-agent-id", "agent-9", NULL};
    Memorypins__V1__UpsertPinRequest up = MEMORYPINS__V1__UPSERT_PIN_REQUEST__INIT;
    Google__Protobuf__Struct empty = GOOGLE__PROTOBUF__STRUCT__INIT;
    up.tenant_id = "t";
    up.key = "k1";
    up.value = &empty;
    fake_call *fc = fake_call_run(fx->env, UPSERT_PIN, &up.base, NULL);
    fake_env_run(fx->env, 10);
    assert_int_equal(fake_call_err(fc), 0);
    fake_call_free(fc);
    fake_call_free(get_pin(fx, "k1", hdrs));
    fake_call_free(get_pin(fx, "absent", hdrs));
    Memorypins__V1__ListPinsRequest lr = MEMORYPINS__V1__LIST_PINS_REQUEST__INIT;
    lr.tenant_id = "t";
    lr.prefix = "k";
    fake_call_free(fake_call_run(fx->env, LIST_PINS, &lr.base, hdrs));
    double ok = scrape_value("memory_audit_writes_total{status=\"success\"}", 0);
    /* 3 reads, and 3 shadow-mode RBAC rows (UpsertPin, GetPin twice: one row, ListPins). */
    assert_int_equal(rpc_audit_queued(queue_of(fx)), 6);
    rpc_audit_flush(queue_of(fx));
    assert_true(scrape_value("memory_audit_writes_total{status=\"success\"}", 0) == ok + 3);

    mem_rows r;
    mem_list(fx, "get", &r);
    assert_int_equal(r.page.total, 2);
    assert_string_equal(r.key[0], "absent");
    assert_false(r.success[0]);
    assert_false(r.cache_hit[0]);
    assert_string_equal(r.key[1], "k1");
    assert_true(r.success[1]);
    assert_true(r.cache_hit[1]); /* the upsert left the pin in the SQLite cache */
    assert_string_equal(r.agent[1], "agent-9");
    mem_list(fx, "list", &r);
    assert_int_equal(r.page.total, 1);
    assert_string_equal(r.key[0], "k");
}

/* With no read rows to spend, reads fold into one summary per (operation, tenant, agent,
 * outcome, cache hit) that lists every key with its count; a listing filtered on a key returns
 * the summaries that list it. Nothing is lost: the counts add up to the reads. */
static void test_reads_over_the_budget_fold_into_summaries_that_list_their_keys(void **state)
{
    fixture *fx = *state;
    rpc_audit_options o = {.flush_ms = 10000,
                           .max_rows = 64,
                           .read_rows_per_s = 0,
                           .read_rows_set = true,
                           .read_summary_ms = 600000};
    reattach(fx, &o);
    double folded = scrape_value("memory_audit_reads_folded_total", 0);
    const char *const a[] = {"x-agent-id", "agent-a", NULL};
    for (int i = 0; i < 3; i++)
        fake_call_free(get_pin_in(fx, "t", "alpha", a));
    fake_call_free(get_pin_in(fx, "t", "beta", a));
    fake_call_free(get_pin_in(fx, "u", "alpha", a));
    fake_call_free(get_pin_in(fx, "u", "alpha", NULL)); /* another agent (none) */
    /* The reads count in summaries, not as rows: only the RBAC rows (the shadow-mode would-be
     * denials of tenants t and u) are queued. */
    assert_int_equal(rpc_audit_queued(queue_of(fx)), 2);
    assert_true(scrape_value("memory_audit_reads_folded_total", 0) == folded + 6);
    rpc_audit_flush(queue_of(fx));
    fake_env_run(fx->env, 10);
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM memory_audit WHERE operation = 'get'"), 3);
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM memory_audit WHERE key <> '*'"), 0);
    assert_int_equal(sql_int(fx, "SELECT sum(json_extract(extra, '$.reads')) FROM memory_audit"),
                     6);
    assert_int_equal(sql_int(fx, "SELECT json_extract(extra, '$.keys.alpha') FROM memory_audit"
                                 " WHERE tenant_id = 't'"),
                     3);
    assert_int_equal(sql_int(fx, "SELECT json_extract(extra, '$.keys.beta') FROM memory_audit"
                                 " WHERE tenant_id = 't'"),
                     1);
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM memory_audit WHERE tenant_id = 'u'"
                                 " AND agent_id IS NULL AND json_extract(extra, '$.reads') = 1"),
                     1);
    mem_rows r;
    memset(&r, 0, sizeof(r));
    store_audit_list_req q = {.key = "beta", .limit = 8};
    assert_int_equal(store_audit_list(fake_env_store(fx->env), &q, on_mem, &r), 0);
    assert_int_equal(r.page.total, 1);
    assert_string_equal(r.key[0], "*");
    assert_string_equal(r.agent[0], "agent-a");
    q.key = "alpha";
    memset(&r, 0, sizeof(r));
    assert_int_equal(store_audit_list(fake_env_store(fx->env), &q, on_mem, &r), 0);
    assert_int_equal(r.page.total, 3);
}

/* The budget's tokens give reads rows of their own first; the reads past them fold. */
static void test_reads_within_the_budget_keep_rows_of_their_own(void **state)
{
    fixture *fx = *state;
    rpc_audit_options o = {.flush_ms = 10000,
                           .max_rows = 64,
                           .read_rows_per_s = 2,
                           .read_rows_set = true,
                           .read_summary_ms = 600000};
    reattach(fx, &o);
    const char *keys[] = {"k1", "k2", "k3", "k4", "k1"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        fake_call_free(get_pin(fx, keys[i], NULL));
    rpc_audit_flush(queue_of(fx));
    fake_env_run(fx->env, 10);
    /* k1 and k2 spent the burst (k1 again joined its row); k3 and k4 are in one summary. */
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM memory_audit WHERE key IN ('k1', 'k2')"), 2);
    assert_int_equal(sql_int(fx, "SELECT json_extract(extra, '$.reads') FROM memory_audit"
                                 " WHERE key = 'k1'"),
                     2);
    assert_int_equal(sql_int(fx, "SELECT json_extract(extra, '$.reads') FROM memory_audit"
                                 " WHERE key = '*'"),
                     2);
    assert_int_equal(sql_int(fx, "SELECT json_extract(extra, '$.keys.k4') FROM memory_audit"
                                 " WHERE key = '*'"),
                     1);
}

/* Summaries are written from the loop once read_summary_ms passed, without a flush; and at once
 * when they hold RPC_AUDIT_READ_KEYS keys, so the memory they take stays bounded. */
static void test_read_summaries_are_queued_when_due_or_full(void **state)
{
    fixture *fx = *state;
    rpc_audit_options o = {.flush_ms = 5,
                           .max_rows = 64,
                           .read_rows_per_s = 0,
                           .read_rows_set = true,
                           .read_summary_ms = 30};
    reattach(fx, &o);
    fake_call_free(get_pin(fx, "due", NULL));
    fake_env_run(fx->env, 10);
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM memory_audit WHERE key = '*'"), 0);
    fake_env_run(fx->env, 200);
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM memory_audit WHERE key = '*'"), 1);

    o.read_summary_ms = 600000;
    o.flush_ms = 600000;
    reattach(fx, &o);
    char key[32];
    for (int i = 0; i <= RPC_AUDIT_READ_KEYS; i++) {
        snprintf(key, sizeof(key), "many-%d", i);
        fake_call_free(get_pin(fx, key, NULL));
    }
    /* The key past the bound queued the full summary; it starts the next one. */
    assert_int_equal(rpc_audit_queued(queue_of(fx)), 2);
    rpc_audit_flush(queue_of(fx));
    fake_env_run(fx->env, 10);
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM memory_audit WHERE key = '*'"), 3);
    assert_int_equal(sql_int(fx, "SELECT sum(json_extract(extra, '$.reads')) FROM memory_audit"
                                 " WHERE key = '*'"),
                     RPC_AUDIT_READ_KEYS + 2);
}

/* Reads that vary their agent (or tenant) cannot make a row each: past RPC_AUDIT_READ_GROUPS
 * summaries in one period the rest share one overflow summary with "*" for tenant and agent. */
static void test_reads_of_too_many_groups_share_one_overflow_summary(void **state)
{
    fixture *fx = *state;
    rpc_audit_options o = {.flush_ms = 600000,
                           .max_rows = 4096,
                           .read_rows_per_s = 0,
                           .read_rows_set = true,
                           .read_summary_ms = 600000};
    reattach(fx, &o);
    char agent[32];
    const int n = RPC_AUDIT_READ_GROUPS + 44;
    for (int i = 0; i < n; i++) {
        snprintf(agent, sizeof(agent), "agent-%d", i);
        const char *const h[] = {"x-agent-id", agent, NULL};
        fake_call_free(get_pin(fx, i % 2 == 0 ? "even" : "odd", h));
    }
    rpc_audit_flush(queue_of(fx));
    fake_env_run(fx->env, 10);
    assert_int_equal(sql_int(fx, "SELECT count(*) FROM memory_audit WHERE operation = 'get'"),
                     RPC_AUDIT_READ_GROUPS + 1);
    assert_int_equal(sql_int(fx, "SELECT sum(json_extract(extra, '$.reads')) FROM memory_audit"
                                 " WHERE operation = 'get'"),
                     n);
    assert_int_equal(sql_int(fx, "SELECT json_extract(extra, '$.reads') FROM memory_audit"
                                 " WHERE agent_id = '*' AND tenant_id = '*'"),
                     44);
    assert_int_equal(sql_int(fx, "SELECT json_extract(extra, '$.keys.odd') FROM memory_audit"
                                 " WHERE agent_id = '*'"),
                     22);
}

#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_denied_call_writes_one_rbac_row_after_flush),
        T(test_allowed_calls_are_written_only_with_log_allowed),
        T(test_full_queue_drops_and_counts),
        T(test_timer_and_threshold_flush_from_the_loop),
        T(test_failed_write_counts_errors_and_never_fails_the_call),
        T(test_identical_denials_become_one_row_with_their_count),
        T(test_denials_over_the_budget_fold_into_one_summary_row),
        T(test_summary_row_is_written_from_the_loop_when_due),
        T(test_shadow_mode_audits_would_be_denials),
        T(test_retention_deletes_old_rows_of_both_audits_in_batches),
        T(test_get_and_list_append_memory_read_rows),
        T(test_identical_reads_in_a_window_become_one_row_with_their_count),
        T(test_reads_over_the_budget_fold_into_summaries_that_list_their_keys),
        T(test_reads_within_the_budget_keep_rows_of_their_own),
        T(test_read_summaries_are_queued_when_due_or_full),
        T(test_reads_of_too_many_groups_share_one_overflow_summary),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
