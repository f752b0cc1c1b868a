/* auth/policy.c: the RBAC policy object, its file format and its atomic replacement.
 *
 * A policy never changes once built. The one in force sits in an atomic pointer; a reload builds
 * a new one, swaps it in, then frees the old one as soon as no reader holds it. Readers announce
 * what they use with a hazard pointer: each thread owns one slot (claimed once per thread under a
 * mutex, released by a thread-exit destructor) into which it stores the policy it read, then reads
 * the pointer again to confirm that the policy is still the one in force. The writer, after the
 * swap, waits until no slot holds the old policy. Readers hold a policy for a few microseconds and
 * never block while holding it, so that wait is short; the request path takes no lock.
 *
 * The hash is the first 16 hex characters of the SHA-256 of the file's JSON re-serialised
 * canonically (keys sorted, compact), so it ignores formatting but not content.
 */
#include "auth/auth_int.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/timeutil.h"
#include "observability/log.h"
#include "observability/metrics.h"

/* API.md section 6. */
static const char default_policy[] =
    "{\"version\":\"default\",\"audit\":{\"log_allowed\":false},\"matrix\":{"
    "\"infra\":{\"memory_pin\":[\"read\",\"write\",\"delete\",\"admin\"],"
    "\"prometheus\":[\"reload\",\"query\"],\"rbac\":[\"read\",\"reload\"]},"
    "\"admin\":{\"memory_pin\":[\"read\",\"write\",\"delete\",\"admin\"],"
    "\"prometheus\":[\"reload\",\"query\"],\"rbac\":[\"read\",\"reload\"]},"
    "\"machine\":{\"memory_pin\":[\"read\",\"write\"],\"prometheus\":[\"reload\"],"
    "\"rbac\":[\"read\"]},"
    "\"dev\":{\"memory_pin\":[\"read\"],\"prometheus\":[\"query\"],\"rbac\":[\"read\"]},"
    "\"readonly\":{\"memory_pin\":[\"read\"],\"prometheus\":[\"query\"],\"rbac\":[\"read\"]}}}";

typedef struct slot {
    _Atomic(const auth__policy *) hp;
    struct slot *next;
    atomic_bool in_use;
    int depth; /* nesting on the owning thread */
} slot;

static _Atomic(auth__policy *) current;
static atomic_bool inited;
static pthread_mutex_t init_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t install_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_mutex_t slots_mu = PTHREAD_MUTEX_INITIALIZER;
static slot *slots; /* never freed: a thread may still point at its slot */
static pthread_key_t slot_key;
static pthread_once_t key_once = PTHREAD_ONCE_INIT;
static _Thread_local slot *my_slot;

static metrics_family *loads_family;
static metrics_family *version_family;

/* ---- parsing -------------------------------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

static bool usable_name(const char *s, size_t len)
{
    if (len == 0 || len > AUTH__MAX_NAME)
        return false;
    for (size_t i = 0; i < len; i++) {
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return false;
    }
    return true;
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static int cmp_role(const void *a, const void *b)
{
    return strcmp(((const auth__role *)a)->name, ((const auth__role *)b)->name);
}

static int cmp_grant(const void *a, const void *b)
{
    return strcmp(((const auth__grant *)a)->resource, ((const auth__grant *)b)->resource);
}

/* Fills g from "resource": [actions]. */
static int parse_grant(const char *role, const char *res, const json_t *v, auth__grant *g,
                       char *err, size_t errlen)
{
    if (!usable_name(res, strlen(res))) {
        set_err(err, errlen,
                "matrix.%.64s: a resource name is empty, too long or has control "
                "characters",
                role);
        return PINS_EINVALID_ARGUMENT;
    }
    if (!json_is_array(v) || json_array_size(v) > AUTH__MAX_POLICY_N) {
        set_err(err, errlen, "matrix.%.64s.%.64s: expected a list of at most %d action names", role,
                res, AUTH__MAX_POLICY_N);
        return PINS_EINVALID_ARGUMENT;
    }
    g->resource = strdup(res);
    g->nactions = json_array_size(v);
    g->actions = calloc(g->nactions ? g->nactions : 1, sizeof(*g->actions));
    if (g->resource == NULL || g->actions == NULL)
        return PINS_ENOMEM;
    for (size_t i = 0; i < g->nactions; i++) {
        const json_t *s = json_array_get(v, i);
        if (!json_is_string(s) || !usable_name(json_string_value(s), json_string_length(s))) {
            set_err(err, errlen, "matrix.%.64s.%.64s[%zu]: expected a non-empty action name", role,
                    res, i);
            return PINS_EINVALID_ARGUMENT;
        }
        g->actions[i] = strdup(json_string_value(s));
        if (g->actions[i] == NULL)
            return PINS_ENOMEM;
    }
    return 0;
}

static int parse_matrix(const json_t *m, auth__policy *p, char *err, size_t errlen)
{
    if (!json_is_object(m)) {
        set_err(err, errlen, "matrix: expected an object {role: {resource: [actions]}}");
        return PINS_EINVALID_ARGUMENT;
    }
    if (json_object_size(m) > AUTH__MAX_POLICY_N) {
        set_err(err, errlen, "matrix: more than %d roles", AUTH__MAX_POLICY_N);
        return PINS_EINVALID_ARGUMENT;
    }
    p->roles = calloc(json_object_size(m) + 1, sizeof(*p->roles));
    if (p->roles == NULL)
        return PINS_ENOMEM;
    size_t nres = 0;
    const char *name;
    const json_t *rv;
    json_object_foreach((json_t *)m, name, rv)
    {
        auth__role *r = &p->roles[p->nroles];
        p->nroles++; /* counted at once, so that auth__policy_free sees a half-built role */
        if (!usable_name(name, strlen(name))) {
            set_err(err, errlen,
                    "matrix: a role name is empty, too long or has control "
                    "characters");
            return PINS_EINVALID_ARGUMENT;
        }
        if (!json_is_object(rv) || json_object_size(rv) > AUTH__MAX_POLICY_N) {
            set_err(err, errlen, "matrix.%.64s: expected an object of at most %d resources", name,
                    AUTH__MAX_POLICY_N);
            return PINS_EINVALID_ARGUMENT;
        }
        r->name = strdup(name);
        r->grants = calloc(json_object_size(rv) + 1, sizeof(*r->grants));
        if (r->name == NULL || r->grants == NULL)
            return PINS_ENOMEM;
        const char *res;
        const json_t *acts;
        json_object_foreach((json_t *)rv, res, acts)
        {
            int e = parse_grant(name, res, acts, &r->grants[r->ngrants], err, errlen);
            r->ngrants++;
            if (e != 0)
                return e;
        }
        qsort(r->grants, r->ngrants, sizeof(*r->grants), cmp_grant);
        nres += r->ngrants;
    }
    qsort(p->roles, p->nroles, sizeof(*p->roles), cmp_role);

    /* Every resource some role names, sorted, once. */
    p->resources = calloc(nres + 1, sizeof(*p->resources));
    if (p->resources == NULL)
        return PINS_ENOMEM;
    size_t n = 0;
    for (size_t i = 0; i < p->nroles; i++)
        for (size_t k = 0; k < p->roles[i].ngrants; k++)
            p->resources[n++] = p->roles[i].grants[k].resource;
    qsort(p->resources, n, sizeof(*p->resources), cmp_str);
    size_t u = 0;
    for (size_t i = 0; i < n; i++) {
        if (u == 0 || strcmp(p->resources[u - 1], p->resources[i]) != 0)
            p->resources[u++] = p->resources[i];
    }
    /* The entries borrowed the grants' strings; own copies keep freeing simple. */
    for (size_t i = 0; i < u; i++) {
        p->resources[i] = strdup(p->resources[i]);
        if (p->resources[i] == NULL) {
            p->nresources = i;
            return PINS_ENOMEM;
        }
    }
    p->nresources = u;
    return 0;
}

int auth__policy_parse(const char *text, size_t len, bool from_file, auth__policy **ppolicy,
                       char *err, size_t errlen)
{
    int rv = PINS_EINVALID_ARGUMENT;
    json_error_t je;
    char *canon = NULL;
    auth__policy *p = calloc(1, sizeof(*p));
    json_t *root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &je);
    if (p == NULL) {
        rv = PINS_ENOMEM;
        goto out;
    }
    if (root == NULL) {
        set_err(err, errlen, "not valid JSON: line %d column %d: %s", je.line, je.column, je.text);
        goto out;
    }
    if (!json_is_object(root)) {
        set_err(err, errlen, "the top level is not a JSON object");
        goto out;
    }
    const json_t *version = json_object_get(root, "version");
    if (!json_is_string(version) ||
        !usable_name(json_string_value(version), json_string_length(version))) {
        set_err(err, errlen, "version: expected a non-empty string");
        goto out;
    }
    const json_t *audit = json_object_get(root, "audit");
    const json_t *log_allowed = audit != NULL ? json_object_get(audit, "log_allowed") : NULL;
    if (audit != NULL && !json_is_object(audit)) {
        set_err(err, errlen, "audit: expected an object");
        goto out;
    }
    if (log_allowed != NULL && !json_is_boolean(log_allowed)) {
        set_err(err, errlen, "audit.log_allowed: expected true or false");
        goto out;
    }
    const json_t *matrix = json_object_get(root, "matrix");
    if (matrix == NULL) {
        set_err(err, errlen, "matrix: missing");
        goto out;
    }
    rv = parse_matrix(matrix, p, err, errlen);
    if (rv != 0)
        goto out;
    rv = PINS_ENOMEM;
    p->version = strdup(json_string_value(version));
    p->matrix_json = json_dumps(matrix, JSON_SORT_KEYS | JSON_COMPACT);
    canon = json_dumps(root, JSON_SORT_KEYS | JSON_COMPACT);
    if (p->version == NULL || p->matrix_json == NULL || canon == NULL)
        goto out;
    p->matrix_len = strlen(p->matrix_json);
    if (auth__sha256_hex16(canon, strlen(canon), p->hash) != 0) {
        rv = PINS_EINTERNAL;
        set_err(err, errlen, "cannot hash the policy");
        goto out;
    }
    p->log_allowed = json_is_true(log_allowed);
    p->from_file = from_file;
    p->loaded_us = pins_time_now_us();
    *ppolicy = p;
    p = NULL;
    rv = 0;
out:
    if (rv == PINS_ENOMEM)
        set_err(err, errlen, "out of memory");
    free(canon);
    json_decref(root);
    auth__policy_free(p);
    return rv;
}

int auth__policy_default(auth__policy **ppolicy)
{
    char err[128];
    int rv = auth__policy_parse(default_policy, sizeof(default_policy) - 1, false, ppolicy, err,
                                sizeof(err));
    /* The built-in text is valid: only memory can fail. */
    return rv == 0 ? 0 : PINS_ENOMEM;
}

int auth__policy_load_file(const char *path, auth__policy **ppolicy, const char **pstatus,
                           char *err, size_t errlen)
{
    int rv = PINS_EINVALID_ARGUMENT;
    char *buf = NULL;
    struct stat st;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    *pstatus = "error";
    if (fd < 0 || fstat(fd, &st) != 0) {
        set_err(err, errlen, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(st.st_mode) || st.st_size > AUTH__MAX_POLICY) {
        set_err(err, errlen, "cannot read %s: not a regular file of at most %d bytes", path,
                AUTH__MAX_POLICY);
        goto out;
    }
    buf = malloc((size_t)st.st_size + 1);
    if (buf == NULL) {
        rv = PINS_ENOMEM;
        set_err(err, errlen, "out of memory");
        goto out;
    }
    size_t got = 0;
    while (got < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + got, (size_t)st.st_size - got);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            set_err(err, errlen, "cannot read %s: %s", path, n < 0 ? strerror(errno) : "truncated");
            goto out;
        }
        got += (size_t)n;
    }
    char why[200] = "";
    rv = auth__policy_parse(buf, got, true, ppolicy, why, sizeof(why));
    if (rv != 0) {
        *pstatus = rv == PINS_ENOMEM ? "error" : "parse_error";
        set_err(err, errlen, "%s: %s", path, why);
        goto out;
    }
    *pstatus = "success";
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return rv;
}

void auth__policy_free(auth__policy *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->nroles; i++) {
        auth__role *r = &p->roles[i];
        for (size_t k = 0; k < r->ngrants; k++) {
            for (size_t j = 0; j < r->grants[k].nactions; j++)
                free(r->grants[k].actions[j]);
            free(r->grants[k].actions);
            free(r->grants[k].resource);
        }
        free(r->grants);
        free(r->name);
    }
    /* A role that failed half-way is counted in nroles, so it was freed above. */
    free(p->roles);
    for (size_t i = 0; i < p->nresources; i++)
        free(p->resources[i]);
    free(p->resources);
    free(p->version);
    free(p->matrix_json);
    free(p);
}

static const auth__role *find_role(const auth__policy *p, const char *name)
{
    size_t lo = 0, hi = p->nroles;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, p->roles[mid].name);
        if (c == 0)
            return &p->roles[mid];
        if (c < 0)
            hi = mid;
        else
            lo = mid + 1;
    }
    return NULL;
}

bool auth__policy_allows(const auth__policy *p, const char *const *roles, size_t nroles,
                         const char *resource, const char *action)
{
    if (resource == NULL || action == NULL)
        return false;
    for (size_t i = 0; i < nroles; i++) {
        const auth__role *r = find_role(p, roles[i]);
        for (size_t k = 0; r != NULL && k < r->ngrants; k++) {
            const auth__grant *g = &r->grants[k];
            if (strcmp(g->resource, resource) != 0)
                continue;
            for (size_t j = 0; j < g->nactions; j++) {
                if (strcmp(g->actions[j], action) == 0)
                    return true;
            }
        }
    }
    return false;
}

/* ---- readers: hazard slots ------------------------------------------------------------------ */

static void on_thread_exit(void *arg)
{
    slot *s = arg;
    atomic_store(&s->hp, NULL);
    s->depth = 0;
    atomic_store(&s->in_use, false);
}

static void make_key(void)
{
    if (pthread_key_create(&slot_key, on_thread_exit) != 0)
        abort(); /* only when the process is out of keys at start-up */
}

static slot *thread_slot(void)
{
    if (my_slot != NULL)
        return my_slot;
    pthread_once(&key_once, make_key);
    pthread_mutex_lock(&slots_mu);
    slot *s = slots;
    while (s != NULL && atomic_load(&s->in_use))
        s = s->next;
    if (s == NULL) {
        s = calloc(1, sizeof(*s));
        if (s != NULL) {
            s->next = slots;
            slots = s;
        }
    }
    if (s != NULL)
        atomic_store(&s->in_use, true);
    pthread_mutex_unlock(&slots_mu);
    if (s != NULL) {
        pthread_setspecific(slot_key, s);
        my_slot = s;
    }
    return s;
}

const auth__policy *auth__policy_acquire(void)
{
    if (auth__ensure_init() != 0)
        return NULL;
    slot *s = thread_slot();
    if (s == NULL)
        return NULL;
    if (s->depth > 0) {
        s->depth++;
        return atomic_load_explicit(&s->hp, memory_order_relaxed);
    }
    const auth__policy *p = atomic_load(&current);
    for (;;) {
        atomic_store(&s->hp, p);
        const auth__policy *again = atomic_load(&current);
        if (again == p)
            break;
        p = again;
    }
    s->depth = 1;
    return p;
}

void auth__policy_release(const auth__policy *p)
{
    slot *s = my_slot;
    if (p == NULL || s == NULL || s->depth == 0)
        return;
    if (--s->depth == 0)
        atomic_store_explicit(&s->hp, NULL, memory_order_release);
}

/* ---- the writer ----------------------------------------------------------------------------- */

static void set_version_gauge(const auth__policy *p, double v)
{
    const char *labels[] = {p->version, p->hash};
    metrics_gauge_set(version_family, labels, v);
}

void auth__policy_install_take(auth__policy *p, char prev[17])
{
    pthread_mutex_lock(&install_mu);
    auth__policy *old = atomic_exchange(&current, p);
    if (old != NULL) {
        memcpy(prev, old->hash, 17);
        set_version_gauge(old, 0);
    } else {
        prev[0] = '\0';
    }
    set_version_gauge(p, 1);
    if (old != NULL) {
        /* Every reader that could have seen old published it before the swap (see the top). */
        pthread_mutex_lock(&slots_mu);
        for (slot *s = slots; s != NULL; s = s->next) {
            while (atomic_load(&s->hp) == old)
                sched_yield();
        }
        pthread_mutex_unlock(&slots_mu);
        auth__policy_free(old);
    }
    pthread_mutex_unlock(&install_mu);
}

/* ---- module state --------------------------------------------------------------------------- */

static void count_load(const char *status)
{
    const char *labels[] = {status};
    metrics_counter_inc(loads_family, labels);
}

/* Creates the metric families once; init_mu held. */
static void families_init_locked(void)
{
    static const char *const status[] = {"status"};
    static const char *const version[] = {"version", "hash"};
    if (loads_family != NULL)
        return;
    loads_family = metrics_counter_new(
        "rbac_policy_loads_total", "RBAC policy loads by outcome (success, error, parse_error).",
        status, 1);
    version_family =
        metrics_gauge_new("rbac_policy_version_info",
                          "The RBAC policy in force (1) and those it replaced (0).", version, 2);
    /* Series that exist from the start, so that increase() sees the first failure. */
    static const char *const outcomes[] = {"success", "error", "parse_error"};
    for (size_t i = 0; i < 3; i++)
        metrics_counter_add(loads_family, &outcomes[i], 0);
    auth__decide_metrics_init();
}

int auth__ensure_init(void)
{
    int rv = 0;
    if (atomic_load_explicit(&inited, memory_order_acquire))
        return 0;
    pthread_mutex_lock(&init_mu);
    if (!atomic_load(&inited)) {
        families_init_locked();
        auth__policy *p = NULL;
        rv = auth__policy_default(&p);
        if (rv == 0) {
            char prev[17];
            count_load("success");
            auth__policy_install_take(p, prev);
            atomic_store(&inited, true);
        }
    }
    pthread_mutex_unlock(&init_mu);
    return rv;
}

/* Builds the policy cfg names and counts the load. */
static int load_configured(const pins_config *cfg, auth__policy **pp, char *err, size_t errlen)
{
    const char *status = "success";
    int rv = 0;
    if (cfg->rbac_policy_file != NULL && cfg->rbac_policy_file[0] != '\0') {
        rv = auth__policy_load_file(cfg->rbac_policy_file, pp, &status, err, errlen);
    } else {
        rv = auth__policy_default(pp);
        if (rv != 0) {
            status = "error";
            set_err(err, errlen, "out of memory");
        }
    }
    count_load(status);
    return rv;
}

int auth_init(const pins_config *cfg, char *err, size_t errlen)
{
    char why[320] = "";
    auth__policy *p = NULL;
    pthread_mutex_lock(&init_mu);
    families_init_locked();
    pthread_mutex_unlock(&init_mu);
    /* Warm the digest and the random key now, not on the first request. */
    auth__secret_equal("", 0, "", 0);
    int rv = load_configured(cfg, &p, why, sizeof(why));
    if (rv != 0) {
        set_err(err, errlen, "invalid RBAC_POLICY_FILE: %s", why);
        return rv == PINS_ENOMEM ? rv : PINS_EINVALID_ARGUMENT;
    }
    char version[AUTH__MAX_NAME + 1], hash[17], prev[17];
    snprintf(version, sizeof(version), "%s", p->version);
    memcpy(hash, p->hash, sizeof(hash));
    pthread_mutex_lock(&init_mu);
    auth__policy_install_take(p, prev);
    atomic_store(&inited, true);
    pthread_mutex_unlock(&init_mu);
    pins_log_info("rbac policy loaded", "version", version, "hash", hash, "source",
                  cfg->rbac_policy_file != NULL ? cfg->rbac_policy_file : "built-in", NULL);
    bool machine = cfg->machine_secret_token != NULL && cfg->machine_secret_token[0] != '\0';
    bool bearer = cfg->jwt_secret != NULL && cfg->jwt_secret[0] != '\0';
    if (cfg->rbac_enforce && !cfg->rbac_fail_open && !machine && !bearer &&
        !cfg->rbac_trust_x_roles)
        pins_log_warn("RBAC_ENFORCE=true but no credential can be accepted (MACHINE_SECRET_TOKEN, "
                      "JWT_SECRET and RBAC_TRUST_X_ROLES unset): every guarded call is refused",
                      NULL);
    return 0;
}

void auth_shutdown(void)
{
    pthread_mutex_lock(&init_mu);
    pthread_mutex_lock(&install_mu);
    auth__policy *p = atomic_exchange(&current, NULL);
    auth__policy_free(p);
    atomic_store(&inited, false);
    loads_family = NULL;
    version_family = NULL;
    auth__decide_metrics_forget();
    auth__cred_cache_invalidate();
    auth__cred_cache_free_thread();
    pthread_mutex_unlock(&install_mu);
    pthread_mutex_unlock(&init_mu);
}

int auth_policy_view_get(pins_arena *a, auth_policy_view *pview)
{
    int rv = PINS_ENOMEM;
    auth_policy_view v = {0};
    const auth__policy *p = auth__policy_acquire();
    if (p == NULL)
        return PINS_ENOMEM;
    v.version = pins_arena_strdup(a, p->version);
    memcpy(v.hash, p->hash, sizeof(v.hash));
    v.loaded_us = p->loaded_us;
    v.from_file = p->from_file;
    v.roles = pins_arena_calloc(a, p->nroles + 1, sizeof(*v.roles));
    v.resources = pins_arena_calloc(a, p->nresources + 1, sizeof(*v.resources));
    v.matrix_json = pins_arena_strndup(a, p->matrix_json, p->matrix_len);
    v.matrix_len = p->matrix_len;
    if (v.version == NULL || v.roles == NULL || v.resources == NULL || v.matrix_json == NULL)
        goto out;
    for (size_t i = 0; i < p->nroles; i++) {
        v.roles[i] = pins_arena_strdup(a, p->roles[i].name);
        if (v.roles[i] == NULL)
            goto out;
    }
    v.nroles = p->nroles;
    for (size_t i = 0; i < p->nresources; i++) {
        v.resources[i] = pins_arena_strdup(a, p->resources[i]);
        if (v.resources[i] == NULL)
            goto out;
    }
    v.nresources = p->nresources;
    *pview = v;
    rv = 0;
out:
    auth__policy_release(p);
    return rv;
}

int auth_policy_reload(const pins_config *cfg, auth_reload_result *pres)
{
    auth_reload_result r = {.at_us = pins_time_now_us()};
    auth__policy *p = NULL;
    char why[sizeof(r.message) - 32] = "";
    const char *source =
        cfg->rbac_policy_file != NULL && cfg->rbac_policy_file[0] ? cfg->rbac_policy_file : NULL;
    int rv = auth__ensure_init();
    if (rv != 0) {
        set_err(r.message, sizeof(r.message), "policy not reloaded: out of memory");
        goto out;
    }
    rv = load_configured(cfg, &p, why, sizeof(why));
    if (rv != 0) {
        const auth__policy *cur = auth__policy_acquire();
        if (cur != NULL) {
            memcpy(r.previous_hash, cur->hash, 17);
            memcpy(r.new_hash, cur->hash, 17);
        }
        auth__policy_release(cur);
        set_err(r.message, sizeof(r.message), "policy not reloaded, previous kept: %s", why);
        pins_log_warn("rbac policy reload failed", "reason", why, "hash", r.new_hash, NULL);
        if (rv != PINS_ENOMEM)
            rv = PINS_EINVALID_ARGUMENT;
        goto out;
    }
    memcpy(r.new_hash, p->hash, 17);
    char version[AUTH__MAX_NAME + 1];
    snprintf(version, sizeof(version), "%s", p->version);
    auth__policy_install_take(p, r.previous_hash);
    r.success = true;
    set_err(r.message, sizeof(r.message), "policy %.64s loaded from %.160s", version,
            source != NULL ? source : "the built-in matrix");
    pins_log_info("rbac policy reloaded", "version", version, "hash", r.new_hash, "previous_hash",
                  r.previous_hash, "source", source != NULL ? source : "built-in", NULL);
out:
    *pres = r;
    return rv;
}
