/* auth/auth.h: authentication and RBAC for every guarded RPC (API.md section 6).
 *
 * The core's dispatcher calls auth_decide() once for every method row that is not
 * RPC_METHOD_UNGUARDED, before the feature flag and the handler. A decision is made from plain
 * facts (auth_facts): the request's credentials (machine token, HS256 bearer JWT, X-Roles when
 * trusted) through a header lookup, the row's resource and action, the request's tenant as the
 * dispatcher resolved it, and the RBAC policy in force. It returns a verdict (auth_decision):
 * whether the call may proceed, why, and with which status it is refused. It never touches the
 * call: the dispatcher records the verdict, audits it and fails a refused call.
 *
 * The policy is process wide: the built-in matrix, or RBAC_POLICY_FILE. It is immutable once
 * loaded and replaced whole by auth_policy_reload() (Admin.ReloadRbacPolicy, SIGHUP); a decision
 * in flight on another thread keeps the policy it started with. A file that does not load keeps
 * the previous policy.
 *
 * Reasons (static strings, also the `reason` label of rbac_decisions_total):
 *   allowed: "role-allowed", "rbac-disabled" (RBAC_ENFORCE=false), "fail-open-no-credentials",
 *            "fail-open-insufficient-permissions" (RBAC_FAIL_OPEN=true);
 *   denied:  "no-credentials", "invalid-token" (PINS_EUNAUTHENTICATED), "insufficient-permissions",
 *            "tenant-not-allowed" (PINS_EPERMISSION_DENIED).
 *
 * Secrets and tokens are never logged nor copied into a decision or a message.
 *
 * Threads. Every function may be called from any thread; auth_init() and auth_shutdown() run
 * while no other thread uses this module.
 */
#ifndef PINS_AUTH_AUTH_H
#define PINS_AUTH_AUTH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "common/config.h"

/* The request's tenant when the request names every tenant (an unset StringValue, an empty
 * filter of an Admin listing, or a method row marked RPC_METHOD_ALL_TENANTS: ReloadRbacPolicy,
 * CleanupRbacAudit): a tenant-restricted caller may not use it. */
#define AUTH_ALL_TENANTS "*"

/* Looks up a request header by lower-case name: its value, NULL when absent, or
 * auth_header_repeated when the request carried it more than once. */
typedef const char *(*auth_header_cb)(void *arg, const char *name);
/* The value a header lookup returns for a repeated header (compare the pointer). */
extern const char auth_header_repeated[];

/* What a decision is made from. Everything is borrowed for the call of auth_decide(). */
typedef struct auth_facts {
    const pins_config *cfg;
    pins_arena *arena;     /* where the principal's strings go (the call's arena) */
    auth_header_cb header; /* the request's headers (credentials) */
    void *header_arg;
    const char *resource; /* the method row's permission, e.g. "memory_pin" ("" for none) */
    const char *action;   /* e.g. "read" */
    /* The request's tenant as the dispatcher resolved it: AUTH_ALL_TENANTS for every tenant, NULL
     * when the request names none (or, early, is not decoded yet). */
    const char *tenant;
    const char *method;     /* the RPC path, for the debug log */
    const char *request_id; /* for the debug log */
} auth_facts;

/* The verdict of auth_decide(). Strings are static or live in the facts' arena. */
typedef struct auth_decision {
    bool allowed;              /* the call may proceed */
    int err;                   /* when !allowed: PINS_EUNAUTHENTICATED or PINS_EPERMISSION_DENIED */
    const char *reason;        /* see the list above */
    const char *shadow_reason; /* RBAC_ENFORCE=false and the enforced decision would deny: why;
                                  else NULL */
    const char *resource;      /* the method row's permission */
    const char *action;
    const char *subject;      /* "machine", the JWT's sub, "x-roles", or "anonymous" */
    const char *const *roles; /* the caller's roles (nroles of them) */
    size_t nroles;
    bool tenant_restricted;     /* the credential names the tenants it may touch ... */
    const char *const *tenants; /* ... these ntenants */
    size_t ntenants;
    bool log_allowed; /* the policy's audit.log_allowed */
} auth_decision;

/* Loads the policy of cfg (RBAC_POLICY_FILE, or the built-in matrix when it is NULL) and
 * registers the rbac_* metric families. cfg is borrowed for the call. On failure writes one line
 * naming RBAC_POLICY_FILE into err. Without auth_init(), the first decision installs the built-in
 * matrix. Returns 0, PINS_EINVALID_ARGUMENT (the file does not load), PINS_ENOMEM. */
int auth_init(const pins_config *cfg, char *err, size_t errlen);
/* Frees the policy (after every other thread stopped; before metrics_shutdown()). */
void auth_shutdown(void);

/* Decides a request whose body is decoded from facts f. Counts the decision in the rbac metrics.
 * *pd is filled on success (its strings live in f->arena).
 * Returns 0 or PINS_ENOMEM (*pd untouched). */
int auth_decide(const auth_facts *f, auth_decision *pd);
/* What can be decided before the request is decoded, from the headers alone: the credentials
 * and the role's permission, not the tenant binding. Transports call it once a request's headers
 * are in, so that under RBAC_ENFORCE=true a request that auth_decide() would refuse anyway is
 * refused before its body is buffered or decoded. pd->allowed false: refuse with pd->err (the
 * denial is counted in the rbac metrics); true: go on, auth_decide() decides (and counts) once
 * the request is decoded. Always allowed when RBAC_ENFORCE=false. f->tenant is AUTH_ALL_TENANTS
 * for a row that spans every tenant, else NULL. Strings live in f->arena.
 * Returns 0 or PINS_ENOMEM (*pd untouched). */
int auth_decide_early(const auth_facts *f, auth_decision *pd);
/* True when the decision's caller may touch tenant (as the dispatcher resolved it; NULL: no). */
bool auth_decision_tenant_allowed(const auth_decision *d, const char *tenant);

/* What GetRbacInfo and GetRbacMatrix show of the policy in force. */
typedef struct auth_policy_view {
    const char *version;
    char hash[17];      /* first 16 hex characters of the SHA-256 of the canonical JSON */
    int64_t loaded_us;  /* wall clock of the load */
    const char **roles; /* sorted */
    size_t nroles;
    const char **resources; /* every resource some role names, sorted */
    size_t nresources;
    const char *matrix_json; /* {role: {resource: [actions]}}, compact, keys sorted */
    size_t matrix_len;
    bool from_file; /* false: the built-in matrix */
} auth_policy_view;

/* Copies the policy in force into a (strings and arrays in a). Returns 0 or PINS_ENOMEM. */
int auth_policy_view_get(pins_arena *a, auth_policy_view *pview);

/* What a reload did. */
typedef struct auth_reload_result {
    bool success;
    char message[256]; /* what happened, or why the file was refused (never a secret) */
    char previous_hash[17];
    char new_hash[17]; /* the hash in force afterwards (the previous one after a failure) */
    int64_t at_us;
} auth_reload_result;

/* Reads cfg->rbac_policy_file again (the built-in matrix when it is NULL) and swaps it in; a file
 * that does not load keeps the policy in force. Counts rbac_policy_loads_total and logs the
 * outcome. Must not be called while the calling thread is inside auth_decide() or
 * auth_policy_view_get() (it waits for other threads to let go of the old policy).
 * Returns 0 when the new policy is in force, PINS_EINVALID_ARGUMENT when the file was refused
 * (the reason in pres->message), PINS_ENOMEM; *pres is filled in every case. */
int auth_policy_reload(const pins_config *cfg, auth_reload_result *pres);

#endif
