/* auth/decide.c: one decision per guarded call, and its metrics.
 *
 * The enforced decision is always computed, in this order: credentials (refused -> invalid-token,
 * none -> no-credentials), the role permission (-> insufficient-permissions), the tenant binding
 * (-> tenant-not-allowed). RBAC_FAIL_OPEN lets only the two "missing" cases through
 * (no-credentials, insufficient-permissions): a forged or expired token and a tenant outside the
 * token's list stay refused, since letting them pass would defeat the credential itself. With
 * RBAC_ENFORCE=false every call passes as "rbac-disabled" and a would-be denial is counted in
 * rbac_shadow_denials_total.
 *
 * Both metric families of the M7 dashboards are kept (rbac_decisions_* and rbac_engine_*), with
 * the same labels and values.
 */
#include "auth/auth_int.h"

#include <stdatomic.h>
#include <string.h>

#include "common/error.h"
#include "common/timeutil.h"
#include "observability/log.h"
#include "observability/metrics.h"

static metrics_family *decisions;
static metrics_family *engine_decisions;
static metrics_family *latency;
static metrics_family *engine_latency;
static metrics_family *shadow;

/* Each thread's cells of the per-call series (the label lookup once per thread and series): rows
 * keyed by the label strings' addresses (the method rows' resource and action, static reasons).
 * They belong to the families of one auth__decide_metrics_init() (its generation). */
#define DECIDE_CELL_ROWS 32

typedef struct cell_row {
    const char *resource;
    const char *action;
    const char *reason;
    bool allowed;
    metrics_cell *decisions;
    metrics_cell *engine;
} cell_row;

typedef struct decide_cells {
    unsigned generation;
    bool latency_set;
    metrics_cell *latency;
    metrics_cell *engine_latency;
    size_t n;
    cell_row rows[DECIDE_CELL_ROWS];
} decide_cells;

static _Thread_local decide_cells tl_cells;
static _Atomic unsigned cells_generation = 1;

void auth__decide_metrics_init(void)
{
    atomic_fetch_add(&cells_generation, 1);
    static const char *const labels[] = {"resource", "action", "decision", "reason"};
    static const char *const reason[] = {"reason"};
    decisions = metrics_counter_new("rbac_decisions_total", "RBAC decisions.", labels, 4);
    engine_decisions = metrics_counter_new("rbac_engine_decisions_total",
                                           "RBAC decisions (M7 engine family).", labels, 4);
    latency = metrics_histogram_new("rbac_latency_seconds", "Time to reach an RBAC decision.", NULL,
                                    0, metrics_latency_buckets, metrics_latency_nbuckets);
    engine_latency = metrics_histogram_new(
        "rbac_engine_latency_seconds", "Time to reach an RBAC decision (M7 engine family).", NULL,
        0, metrics_latency_buckets, metrics_latency_nbuckets);
    shadow =
        metrics_counter_new("rbac_shadow_denials_total",
                            "Calls RBAC would have denied while RBAC_ENFORCE=false.", reason, 1);
}

void auth__decide_metrics_forget(void)
{
    atomic_fetch_add(&cells_generation, 1);
    decisions = engine_decisions = latency = engine_latency = shadow = NULL;
}

bool auth_decision_tenant_allowed(const auth_decision *d, const char *tenant)
{
    if (!d->tenant_restricted)
        return true;
    if (tenant == NULL)
        return false;
    for (size_t i = 0; i < d->ntenants; i++) {
        if (strcmp(d->tenants[i], tenant) == 0)
            return true;
    }
    return false;
}

static void deny(auth_decision *d, int err, const char *reason)
{
    d->allowed = false;
    d->err = err;
    d->reason = reason;
}

static void allow(auth_decision *d, const char *reason)
{
    d->allowed = true;
    d->err = 0;
    d->reason = reason;
}

/* The enforced decision. */
static void evaluate(auth_decision *d, const auth__principal *p, const char *tenant,
                     const auth__policy *pol, bool fail_open)
{
    if (p->status == AUTH__CRED_INVALID) {
        deny(d, PINS_EUNAUTHENTICATED, "invalid-token");
        return;
    }
    if (p->status == AUTH__CRED_NONE) {
        if (fail_open)
            allow(d, "fail-open-no-credentials");
        else
            deny(d, PINS_EUNAUTHENTICATED, "no-credentials");
        return;
    }
    bool permitted = auth__policy_allows(pol, d->roles, d->nroles, d->resource, d->action);
    if (!permitted && !fail_open) {
        deny(d, PINS_EPERMISSION_DENIED, "insufficient-permissions");
        return;
    }
    if (tenant != NULL && d->tenant_restricted &&
        (strcmp(tenant, AUTH_ALL_TENANTS) == 0 || !auth_decision_tenant_allowed(d, tenant))) {
        deny(d, PINS_EPERMISSION_DENIED, "tenant-not-allowed");
        return;
    }
    allow(d, permitted ? "role-allowed" : "fail-open-insufficient-permissions");
}

/* The calling thread's cells, emptied when the families changed. */
static decide_cells *cells(void)
{
    decide_cells *c = &tl_cells;
    unsigned g = atomic_load(&cells_generation);
    if (c->generation != g) {
        c->generation = g;
        c->latency_set = false;
        c->n = 0;
    }
    return c;
}

/* The row of d's labels, added on first use; NULL when the rows are full or out of memory. */
static const cell_row *row_of(decide_cells *c, const auth_decision *d, const char *const *labels)
{
    for (size_t i = 0; i < c->n; i++) {
        const cell_row *r = &c->rows[i];
        if (r->resource == d->resource && r->action == d->action && r->reason == d->reason &&
            r->allowed == d->allowed)
            return r;
    }
    if (c->n == DECIDE_CELL_ROWS)
        return NULL;
    cell_row r = {d->resource,
                  d->action,
                  d->reason,
                  d->allowed,
                  metrics_cell_get(decisions, labels),
                  metrics_cell_get(engine_decisions, labels)};
    if (r.decisions == NULL || r.engine == NULL)
        return NULL;
    c->rows[c->n] = r;
    return &c->rows[c->n++];
}

static void count(const auth_decision *d, double seconds)
{
    const char *labels[] = {d->resource, d->action, d->allowed ? "allowed" : "denied", d->reason};
    decide_cells *c = cells();
    const cell_row *r = row_of(c, d, labels);
    if (r != NULL) {
        metrics_cell_add(r->decisions, 1);
        metrics_cell_add(r->engine, 1);
    } else {
        metrics_counter_inc(decisions, labels);
        metrics_counter_inc(engine_decisions, labels);
    }
    if (!c->latency_set) {
        c->latency = metrics_cell_get(latency, NULL);
        c->engine_latency = metrics_cell_get(engine_latency, NULL);
        c->latency_set = true;
    }
    if (c->latency != NULL && c->engine_latency != NULL) {
        metrics_cell_observe(latency, c->latency, seconds);
        metrics_cell_observe(engine_latency, c->engine_latency, seconds);
    } else {
        metrics_histogram_observe(latency, NULL, seconds);
        metrics_histogram_observe(engine_latency, NULL, seconds);
    }
    if (d->shadow_reason != NULL) {
        const char *sr[] = {d->shadow_reason};
        metrics_counter_inc(shadow, sr);
    }
}

/* One decision. early: from the headers alone (auth_decide_early), without the tenant binding;
 * it counts and logs only a denial that RBAC_ENFORCE makes final. */
static int decide(const auth_facts *f, auth_decision *pd, bool early)
{
    int64_t t0 = pins_time_mono_ns();
    const pins_config *cfg = f->cfg;
    auth__principal p;
    int rv = auth__ensure_init();
    if (rv != 0)
        return rv;
    rv = auth__credentials(f->arena, cfg, f->header, f->header_arg, pins_time_now_us() / 1000000,
                           &p);
    if (rv != 0)
        return rv;
    auth_decision d = {
        .resource = f->resource,
        .action = f->action,
        .subject = p.subject,
        .roles = p.roles,
        .nroles = p.nroles,
        .tenant_restricted = p.status == AUTH__CRED_OK && p.restricted,
        .tenants = p.tenants,
        .ntenants = p.ntenants,
    };
    const auth__policy *pol = auth__policy_acquire();
    if (pol == NULL)
        return PINS_ENOMEM;
    evaluate(&d, &p, f->tenant, pol, cfg->rbac_fail_open);
    d.log_allowed = pol->log_allowed;
    auth__policy_release(pol);

    if (early && (!cfg->rbac_enforce || d.allowed)) {
        allow(&d, "role-allowed"); /* nothing final yet: auth_decide() decides and counts */
        *pd = d;
        return 0;
    }
    if (!cfg->rbac_enforce) {
        d.shadow_reason = d.allowed ? NULL : d.reason;
        allow(&d, "rbac-disabled");
    }
    count(&d, (double)(pins_time_mono_ns() - t0) / 1e9);
    if ((!d.allowed || d.shadow_reason != NULL) && pins_log_enabled(PINS_LOG_DEBUG)) {
        pins_log_debug("rbac denial", "method", f->method, "reason",
                       d.shadow_reason != NULL ? d.shadow_reason : d.reason, "enforced",
                       cfg->rbac_enforce ? "true" : "false", "subject", d.subject, "credential",
                       p.kind, "detail", p.why, "request_id", f->request_id, NULL);
    }
    *pd = d;
    return 0;
}

int auth_decide(const auth_facts *f, auth_decision *pd)
{
    return decide(f, pd, false);
}

int auth_decide_early(const auth_facts *f, auth_decision *pd)
{
    return decide(f, pd, true);
}
