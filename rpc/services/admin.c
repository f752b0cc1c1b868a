/* rpc/services/admin.c: memorypins.v1.Admin: the RBAC policy (GetRbacInfo, ReloadRbacPolicy,
 * GetRbacMatrix) on auth/auth.h, the audits (ListRbacAudit, CleanupRbacAudit, ListMemoryAudit) on
 * the store, and GetStatus.
 *
 * ReloadRbacPolicy answers OK in every case where the server did its job: a file that does not
 * load is reported as success=false with the reason in message (REST: 200 with that body, as
 * API.md section 3 specifies one shape for the route), while the previous policy stays in force
 * and new_hash repeats previous_hash. Only a server fault (out of memory) is a gRPC error.
 * The reload reads a small local file on the worker's thread; it does not touch the store.
 *
 * The audit listings answer from the store callback (at once on SQLite, later on PostgreSQL).
 * Empty string filters mean "any". GetStatus pings the store, so its store.state is a real round
 * trip like /ready's, and builds every section as JSON parsed into a Struct.
 */
#include <string.h>

#include "auth/auth.h"
#include "common/config.h"
#include "common/pbstruct.h"
#include "common/timeutil.h"
#include "memorypins/v1/admin.pb-c.h"
#include "rpc/services/reply.h"
#include "rpc/services/services.h"
#include "rpc/services/validate.h"
#include "store/breaker.h"
#include "store/store.h"

/* {role: {resource: [actions]}} nests three deep. */
#define MATRIX_DEPTH 8
/* The sections of GetStatus are flat objects. */
#define STATUS_DEPTH 4
/* The RBAC audit retention (M7: 90 days); listing pages are validate.h's (API.md section 4). */
#define RETENTION_DEFAULT_DAYS 90
#define US_PER_DAY             INT64_C(86400000000)

/* NULL for an empty filter ("any"). */
static const char *filter(const char *s)
{
    return s != NULL && s[0] != '\0' ? s : NULL;
}

/* "" for a missing text column (protobuf strings are never NULL). */
static char *text(const char *s)
{
    return (char *)(s != NULL ? s : "");
}

void rpc__admin_rbac_info(rpc_call *call)
{
    pins_arena *a = rpc_call_arena(call);
    const pins_config *cfg = rpc_call_config(call);
    auth_policy_view v;
    if (auth_policy_view_get(a, &v) != 0) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    Memorypins__V1__GetRbacInfoResponse resp = MEMORYPINS__V1__GET_RBAC_INFO_RESPONSE__INIT;
    resp.version = (char *)v.version;
    resp.hash = v.hash;
    resp.loaded_at = rpc__timestamp_new(a, v.loaded_us);
    resp.n_roles = v.nroles;
    resp.roles = (char **)v.roles;
    resp.n_resources = v.nresources;
    resp.resources = (char **)v.resources;
    resp.enforce_mode = cfg->rbac_enforce;
    resp.fail_open = cfg->rbac_fail_open;
    if (resp.loaded_at == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    rpc_call_reply(call, &resp.base);
}

void rpc__admin_rbac_reload(rpc_call *call)
{
    auth_reload_result r;
    int rv = auth_policy_reload(rpc_call_config(call), &r);
    if (rv == PINS_ENOMEM) {
        rpc_call_fail(call, rv, "policy reload failed: %s", r.message);
        return;
    }
    Memorypins__V1__ReloadRbacPolicyResponse resp =
        MEMORYPINS__V1__RELOAD_RBAC_POLICY_RESPONSE__INIT;
    resp.success = r.success;
    resp.message = r.message;
    resp.previous_hash = r.previous_hash;
    resp.new_hash = r.new_hash;
    resp.timestamp = rpc__timestamp_new(rpc_call_arena(call), r.at_us);
    if (resp.timestamp == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    rpc_call_reply(call, &resp.base);
}

void rpc__admin_rbac_matrix(rpc_call *call)
{
    pins_arena *a = rpc_call_arena(call);
    auth_policy_view v;
    Google__Protobuf__Struct *matrix = NULL;
    if (auth_policy_view_get(a, &v) != 0) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    int rv = pbstruct_from_json(a, v.matrix_json, v.matrix_len, MATRIX_DEPTH, &matrix);
    if (rv != 0) {
        rpc_call_fail(call, rv == PINS_ENOMEM ? rv : PINS_EINTERNAL,
                      "cannot represent the rbac matrix: %s",
                      pbstruct_reason_text(pbstruct_last_reason()));
        return;
    }
    Memorypins__V1__GetRbacMatrixResponse resp = MEMORYPINS__V1__GET_RBAC_MATRIX_RESPONSE__INIT;
    resp.version = (char *)v.version;
    resp.hash = v.hash;
    resp.matrix = matrix;
    rpc_call_reply(call, &resp.base);
}

/* ---- ListRbacAudit and ListMemoryAudit ------------------------------------------------------ */

/* One page of either audit, built by reply_page from the store rows. */
typedef struct audit_page {
    ProtobufCMessage **entries; /* n entries in the call's arena */
    size_t n;
    int64_t total;
    int32_t limit;
    int32_t offset;
} audit_page;

/* What differs between the two audit listings; everything else is reply_page's. */
typedef struct audit_listing {
    const char *what; /* the store operation, in its failure message */
    size_t row_size;  /* of the store row: store_rbac_audit or store_memory_audit */
    /* The entry for one store row, in a; NULL when out of memory. */
    ProtobufCMessage *(*entry_new)(pins_arena *a, const void *row);
    /* Answers the call with the page as the listing's response message. */
    void (*reply)(rpc_call *call, const audit_page *page);
} audit_listing;

/* A listing in flight: which one and the page asked for. */
typedef struct page_ctx {
    rpc_call *call;
    const audit_listing *listing;
    int32_t limit;
    int32_t offset;
} page_ctx;

static ProtobufCMessage *rbac_entry_new(pins_arena *a, const void *row)
{
    const store_rbac_audit *r = row;
    Memorypins__V1__RbacAuditEntry *e = pins_arena_alloc(a, sizeof(*e));
    if (e == NULL)
        return NULL;
    memorypins__v1__rbac_audit_entry__init(e);
    e->id = r->id;
    e->ts = rpc__timestamp_new(a, r->ts_us);
    e->subject = pins_arena_strdup(a, text(r->subject));
    e->resource = pins_arena_strdup(a, text(r->resource));
    e->action = pins_arena_strdup(a, text(r->action));
    e->allowed = r->allowed;
    e->reason = pins_arena_strdup(a, text(r->reason));
    e->path = pins_arena_strdup(a, text(r->path));
    e->method = pins_arena_strdup(a, text(r->method));
    e->tenant_id = pins_arena_strdup(a, text(r->tenant_id));
    e->request_id = pins_arena_strdup(a, text(r->request_id));
    e->latency_ms = r->latency_ms;
    e->n_roles = r->nroles;
    e->roles = r->nroles > 0 ? pins_arena_alloc(a, r->nroles * sizeof(*e->roles)) : NULL;
    bool ok = e->ts != NULL && e->subject != NULL && e->resource != NULL && e->action != NULL &&
              e->reason != NULL && e->path != NULL && e->method != NULL && e->tenant_id != NULL &&
              e->request_id != NULL && (r->nroles == 0 || e->roles != NULL);
    for (size_t k = 0; ok && k < r->nroles; k++) {
        e->roles[k] = pins_arena_strdup(a, r->roles[k]);
        ok = e->roles[k] != NULL;
    }
    return ok ? &e->base : NULL;
}

static ProtobufCMessage *memory_entry_new(pins_arena *a, const void *row)
{
    const store_memory_audit *r = row;
    Memorypins__V1__MemoryAuditEntry *e = pins_arena_alloc(a, sizeof(*e));
    if (e == NULL)
        return NULL;
    memorypins__v1__memory_audit_entry__init(e);
    e->id = r->id;
    e->ts = rpc__timestamp_new(a, r->ts_us);
    e->operation = pins_arena_strdup(a, text(r->operation));
    e->tenant_id = pins_arena_strdup(a, text(r->tenant_id));
    e->key = pins_arena_strdup(a, text(r->key));
    e->agent_id = pins_arena_strdup(a, text(r->agent_id));
    e->source = pins_arena_strdup(a, text(r->source));
    e->cache_hit = r->cache_hit;
    e->latency_ms = r->latency_ms;
    e->success = r->success;
    e->error_message = pins_arena_strdup(a, text(r->error_message));
    e->old_value_hash = pins_arena_strdup(a, text(r->old_value_hash));
    e->new_value_hash = pins_arena_strdup(a, text(r->new_value_hash));
    bool ok = e->ts != NULL && e->operation != NULL && e->tenant_id != NULL && e->key != NULL &&
              e->agent_id != NULL && e->source != NULL && e->error_message != NULL &&
              e->old_value_hash != NULL && e->new_value_hash != NULL;
    return ok ? &e->base : NULL;
}

/* The entries were built as ProtobufCMessage pointers (the first member of every entry), which is
 * how protobuf-c reads a repeated message field; only the field's declared type is cast. */
static void rbac_reply(rpc_call *call, const audit_page *page)
{
    Memorypins__V1__ListRbacAuditResponse resp = MEMORYPINS__V1__LIST_RBAC_AUDIT_RESPONSE__INIT;
    resp.n_entries = page->n;
    resp.entries = (Memorypins__V1__RbacAuditEntry **)page->entries;
    resp.total = page->total;
    resp.limit = page->limit;
    resp.offset = page->offset;
    rpc_call_reply(call, &resp.base);
}

static void memory_reply(rpc_call *call, const audit_page *page)
{
    Memorypins__V1__ListMemoryAuditResponse resp = MEMORYPINS__V1__LIST_MEMORY_AUDIT_RESPONSE__INIT;
    resp.n_entries = page->n;
    resp.entries = (Memorypins__V1__MemoryAuditEntry **)page->entries;
    resp.total = page->total;
    resp.limit = page->limit;
    resp.offset = page->offset;
    rpc_call_reply(call, &resp.base);
}

static const audit_listing rbac_listing = {
    .what = "listing the rbac audit",
    .row_size = sizeof(store_rbac_audit),
    .entry_new = rbac_entry_new,
    .reply = rbac_reply,
};

static const audit_listing memory_listing = {
    .what = "listing the memory audit",
    .row_size = sizeof(store_memory_audit),
    .entry_new = memory_entry_new,
    .reply = memory_reply,
};

/* Answers a listing from the store's rows[0..nrows) (each p->listing->row_size bytes). */
static void reply_page(page_ctx *p, int err, const void *rows, size_t nrows, int64_t total)
{
    rpc_call *call = p->call;
    pins_arena *a = rpc_call_arena(call);
    if (err != 0) {
        rpc__fail_store(call, err, p->listing->what, NULL);
        return;
    }
    audit_page page = {.n = nrows, .total = total, .limit = p->limit, .offset = p->offset};
    page.entries = nrows > 0 ? pins_arena_alloc(a, nrows * sizeof(*page.entries)) : NULL;
    if (nrows > 0 && page.entries == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    for (size_t i = 0; i < nrows; i++) {
        page.entries[i] = p->listing->entry_new(a, (const char *)rows + i * p->listing->row_size);
        if (page.entries[i] == NULL) {
            rpc_call_fail(call, PINS_ENOMEM, NULL);
            return;
        }
    }
    p->listing->reply(call, &page);
}

static void on_rbac_listed(void *arg, int err, const store_rbac_audit *rows, size_t nrows,
                           int64_t total)
{
    reply_page(arg, err, rows, nrows, total);
}

static void on_memory_listed(void *arg, int err, const store_memory_audit *rows, size_t nrows,
                             int64_t total)
{
    reply_page(arg, err, rows, nrows, total);
}

/* Checks the page of a listing request (limit 0: the default) and returns the listing's context
 * in the call's arena, or NULL after failing the call. */
static page_ctx *page_ctx_or_reply(rpc_call *call, const audit_listing *listing, int32_t limit,
                                   int32_t offset)
{
    if (limit == 0)
        limit = PINS_LIST_DEFAULT_LIMIT;
    const rpc__field_check checks[] = {
        {"limit", pins_check_limit(limit)},
        {"offset", pins_check_offset(offset)},
    };
    if (!rpc__fields_valid_or_reply(call, checks, RPC__COUNTOF(checks)))
        return NULL;
    page_ctx *p = pins_arena_alloc(rpc_call_arena(call), sizeof(*p));
    if (p == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return NULL;
    }
    *p = (page_ctx){.call = call, .listing = listing, .limit = limit, .offset = offset};
    return p;
}

void rpc__admin_rbac_audit_list(rpc_call *call)
{
    const Memorypins__V1__ListRbacAuditRequest *req =
        (const Memorypins__V1__ListRbacAuditRequest *)rpc_call_request(call);
    page_ctx *p = page_ctx_or_reply(call, &rbac_listing, req->limit, req->offset);
    if (p == NULL)
        return;
    store_rbac_audit_list_req q = {
        .resource = filter(req->resource),
        .action = filter(req->action),
        .subject = filter(req->subject),
        .tenant_id = filter(req->tenant_id),
        .has_allowed = req->allowed != NULL,
        .allowed = req->allowed != NULL && req->allowed->value,
        .has_since = req->since != NULL,
        .since_us =
            req->since != NULL ? req->since->seconds * 1000000 + req->since->nanos / 1000 : 0,
        .limit = p->limit,
        .offset = p->offset,
    };
    int rv = store_rbac_audit_list(rpc_call_store(call), &q, on_rbac_listed, p);
    if (rv != 0)
        rpc__fail_store(call, rv, rbac_listing.what, NULL);
}

void rpc__admin_memory_audit_list(rpc_call *call)
{
    const Memorypins__V1__ListMemoryAuditRequest *req =
        (const Memorypins__V1__ListMemoryAuditRequest *)rpc_call_request(call);
    page_ctx *p = page_ctx_or_reply(call, &memory_listing, req->limit, req->offset);
    if (p == NULL)
        return;
    store_audit_list_req q = {
        .tenant_id = filter(req->tenant_id),
        .key = filter(req->key),
        .operation = filter(req->operation),
        .limit = p->limit,
        .offset = p->offset,
    };
    int rv = store_audit_list(rpc_call_store(call), &q, on_memory_listed, p);
    if (rv != 0)
        rpc__fail_store(call, rv, memory_listing.what, NULL);
}

/* ---- CleanupRbacAudit ----------------------------------------------------------------------- */

typedef struct cleanup_ctx {
    rpc_call *call;
    int32_t days;
    int64_t now_us;
} cleanup_ctx;

static void on_rbac_cleaned(void *arg, int err, int64_t count)
{
    cleanup_ctx *c = arg;
    rpc_call *call = c->call;
    if (err != 0) {
        rpc__fail_store(call, err, "cleaning up the rbac audit", NULL);
        return;
    }
    Memorypins__V1__CleanupRbacAuditResponse resp =
        MEMORYPINS__V1__CLEANUP_RBAC_AUDIT_RESPONSE__INIT;
    resp.deleted_count = count;
    resp.retention_days = c->days;
    resp.timestamp = rpc__timestamp_new(rpc_call_arena(call), c->now_us);
    if (resp.timestamp == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    rpc_call_reply(call, &resp.base);
}

void rpc__admin_rbac_audit_cleanup(rpc_call *call)
{
    const Memorypins__V1__CleanupRbacAuditRequest *req =
        (const Memorypins__V1__CleanupRbacAuditRequest *)rpc_call_request(call);
    int32_t days = req->retention_days == 0 ? RETENTION_DEFAULT_DAYS : req->retention_days;
    if (days < 1) {
        rpc_call_fail_field(call, PINS_EINVALID_ARGUMENT, "retention_days", "must be at least 1");
        return;
    }
    cleanup_ctx *c = pins_arena_alloc(rpc_call_arena(call), sizeof(*c));
    if (c == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    *c = (cleanup_ctx){.call = call, .days = days, .now_us = pins_time_now_us()};
    int rv = store_rbac_audit_cleanup(rpc_call_store(call), c->now_us - days * US_PER_DAY,
                                      on_rbac_cleaned, c);
    if (rv != 0)
        rpc__fail_store(call, rv, "cleaning up the rbac audit", NULL);
}

/* ---- GetStatus ------------------------------------------------------------------------------ */

static const char *json_bool(bool b)
{
    return b ? "true" : "false";
}

/* Parses json (built here: always an object) into *pout. Returns false when out of memory. */
static bool section(pins_arena *a, const char *json, Google__Protobuf__Struct **pout)
{
    return json != NULL && pbstruct_from_json(a, json, strlen(json), STATUS_DEPTH, pout) == 0;
}

static void on_status_ping(void *arg, int err, int64_t count)
{
    rpc_call *call = arg;
    pins_arena *a = rpc_call_arena(call);
    const pins_config *cfg = rpc_call_config(call);
    store_session *ss = rpc_call_store(call);
    /* The store says whether its schema is behind this binary (as /ready), never in words. */
    const char *state = err == 0                          ? "ok"
                        : store_session_schema_behind(ss) ? "schema_behind"
                                                          : "down";
    const char *backend = store_session_backend_name(ss);
    bool pg = strcmp(backend, "postgres") == 0;
    static const char *const breaker_names[] = {"closed", "open", "half-open"};
    store_breaker_state bs = store_breaker_get();
    int burst = cfg->rate_limit_burst > 0 ? cfg->rate_limit_burst : cfg->rate_limit_rpm;
    const char *limiter_backend = cfg->rate_limit_rpm == 0 ? "disabled"
                                  : cfg->redis_url != NULL ? "redis"
                                                           : "local";
    char *store_json =
        pg ? pins_arena_printf(a, "{\"backend\":\"%s\",\"state\":\"%s\",\"pool_size\":%d}", backend,
                               state, cfg->db_pool_size)
           : pins_arena_printf(a, "{\"backend\":\"%s\",\"state\":\"%s\"}", backend, state);
    char *redis_json = pins_arena_printf(a, "{\"state\":\"%s\"}", rpc_call_redis_state(call));
    char *flags_json =
        pins_arena_printf(a,
                          "{\"memory_pins_enabled\":%s,\"rbac_enforce\":%s,\"rbac_fail_open\":%s,"
                          "\"rbac_trust_x_roles\":%s,\"chaos_allowed\":%s}",
                          json_bool(cfg->memory_pins_enabled), json_bool(cfg->rbac_enforce),
                          json_bool(cfg->rbac_fail_open), json_bool(cfg->rbac_trust_x_roles),
                          json_bool(cfg->chaos_allowed));
    char *breaker_json = pins_arena_printf(a, "{\"state\":\"%s\",\"errors_last_minute\":%d}",
                                           breaker_names[bs <= STORE_BREAKER_HALF_OPEN ? bs : 0],
                                           store_breaker_errors_last_minute());
    char *limiter_json = pins_arena_printf(a, "{\"rpm\":%d,\"burst\":%d,\"backend\":\"%s\"}",
                                           cfg->rate_limit_rpm, burst, limiter_backend);
    Memorypins__V1__GetStatusResponse resp = MEMORYPINS__V1__GET_STATUS_RESPONSE__INIT;
    resp.version = PINS_VERSION;
    resp.uptime = rpc_call_uptime(call);
    if (!section(a, store_json, &resp.store) || !section(a, redis_json, &resp.redis) ||
        !section(a, flags_json, &resp.flags) || !section(a, breaker_json, &resp.breaker) ||
        !section(a, limiter_json, &resp.limiter)) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    rpc_call_reply(call, &resp.base);
}

void rpc__admin_status(rpc_call *call)
{
    if (store_ping(rpc_call_store(call), on_status_ping, call) != 0)
        on_status_ping(call, PINS_ESTORE, 0);
}
