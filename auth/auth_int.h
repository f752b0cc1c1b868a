/* auth/auth_int.h: the pieces of auth/ shared by its files and its tests. Not for other modules.
 *
 *   crypto.c       the only OpenSSL code: HMAC-SHA256, SHA-256, constant-time comparison
 *   jwt.c          strict base64url, HS256 JWT verification, claims
 *   credentials.c  headers -> principal (machine token, bearer JWT, X-Roles)
 *   credcache.c    the per-thread cache of verified bearer tokens
 *   policy.c       the policy object: parsing, hashing, the atomic swap and its readers
 *   decide.c       auth_decide(), the rbac_* decision metrics
 */
#ifndef PINS_AUTH_AUTH_INT_H
#define PINS_AUTH_AUTH_INT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "auth/auth.h"

/* Bounds on what a peer or a policy file can make us hold. */
#define AUTH__MAX_TOKEN    8192      /* bytes of a bearer JWT */
#define AUTH__MAX_ROLES    32        /* roles of one caller */
#define AUTH__MAX_TENANTS  64        /* tenants one credential may name */
#define AUTH__MAX_NAME     256       /* bytes of a role, tenant or subject */
#define AUTH__LEEWAY_S     30        /* clock skew accepted on exp and nbf */
#define AUTH__MAX_POLICY   (1 << 20) /* bytes of a policy file */
#define AUTH__MAX_POLICY_N 256       /* roles, resources of a role, actions of a resource */

/* ---- crypto.c ------------------------------------------------------------------------------- */

/* HMAC-SHA256 of msg with key into out. Returns 0 or PINS_EINTERNAL. */
int auth__hmac_sha256(const void *key, size_t keylen, const void *msg, size_t len, uint8_t out[32]);
/* Lower-case hex of the first 8 bytes of SHA-256(data), NUL-terminated. Returns 0 or
 * PINS_EINTERNAL. */
int auth__sha256_hex16(const void *data, size_t len, char out[17]);
/* Constant-time comparison of n bytes. */
bool auth__ct_equal(const void *a, const void *b, size_t n);
/* True when the strings are equal; the time taken depends on neither their contents nor on which
 * of the two lengths is larger (both are reduced to HMACs under a per-process random key). */
bool auth__secret_equal(const char *a, size_t alen, const char *b, size_t blen);

/* ---- jwt.c ---------------------------------------------------------------------------------- */

/* Decodes strict unpadded base64url (RFC 4648 section 5: no '=', no whitespace, unused bits zero)
 * into out (at least len * 3 / 4 + 1 bytes). Returns 0 and *pn, or PINS_EINVALID_ARGUMENT. */
int auth__b64url_decode(const char *in, size_t len, uint8_t *out, size_t *pn);

/* What a verified token says. Strings live in the arena given to auth__jwt_verify(). */
typedef struct auth__claims {
    const char *sub; /* NULL when absent */
    const char **roles;
    size_t nroles;
    bool restricted; /* tenants or tenant_id was present */
    const char **tenants;
    size_t ntenants;
} auth__claims;

/* Verifies token[0..len) (the part after "Bearer ") as an HS256 JWT signed with secret, valid at
 * now_s (Unix seconds, AUTH__LEEWAY_S of leeway on exp and nbf), and extracts its claims into a.
 * On refusal *pwhy gets a short static reason for the debug log ("expired", "bad signature"...).
 * Returns 0, PINS_EUNAUTHENTICATED (any defect), PINS_ENOMEM. *pclaims is untouched on failure. */
int auth__jwt_verify(pins_arena *a, const char *token, size_t len, const char *secret,
                     size_t secretlen, int64_t now_s, auth__claims *pclaims, const char **pwhy);

/* A token's exp and nbf claims (Unix seconds), when present. */
typedef struct auth__jwt_times {
    bool has_exp;
    bool has_nbf;
    double exp;
    double nbf;
} auth__jwt_times;

/* auth__jwt_verify() without the clock: everything but exp / nbf against now is checked (their
 * types are), and *ptimes gets them so that the caller checks them at every use
 * (auth__jwt_time_problem). Same returns as auth__jwt_verify(). */
int auth__jwt_check(pins_arena *a, const char *token, size_t len, const char *secret,
                    size_t secretlen, auth__claims *pclaims, auth__jwt_times *ptimes,
                    const char **pwhy);
/* "expired" or "not yet valid" when t is not valid at now_s (AUTH__LEEWAY_S of leeway), else
 * NULL. */
const char *auth__jwt_time_problem(const auth__jwt_times *t, int64_t now_s);

/* ---- credentials.c -------------------------------------------------------------------------- */

typedef enum auth__cred_status {
    AUTH__CRED_NONE,    /* nothing that counts as a credential was sent */
    AUTH__CRED_OK,      /* a credential was accepted (it may carry no roles) */
    AUTH__CRED_INVALID, /* a credential was sent and refused */
} auth__cred_status;

typedef struct auth__principal {
    auth__cred_status status;
    const char *kind; /* "machine-token", "jwt", "x-roles", or NULL */
    const char *subject;
    const char **roles;
    size_t nroles;
    bool restricted;
    const char **tenants;
    size_t ntenants;
    const char *why; /* AUTH__CRED_INVALID: a static reason for the debug log */
} auth__principal;

/* Reads the credentials of one request (API.md section 6, in order: x-machine-token or
 * authorization-machine, authorization: Bearer, x-roles when cfg->rbac_trust_x_roles) at now_s.
 * A credential header sent twice (or both machine-token headers) makes the request
 * AUTH__CRED_INVALID whatever the values: a proxy in front may have checked another copy than
 * the one we would read. Strings go to a. Returns 0 (with pp->status saying what was found) or
 * PINS_ENOMEM. */
int auth__credentials(pins_arena *a, const pins_config *cfg, auth_header_cb header, void *arg,
                      int64_t now_s, auth__principal *pp);

/* ---- credcache.c ---------------------------------------------------------------------------- */

/* Per thread (no lock, nothing shared): bearer tokens already verified, keyed by the exact
 * Authorization header value (hashed for the lookup, compared in full), set-associative with
 * least-recently-used eviction inside a set. Accepted tokens keep their claims, exp and nbf (the
 * clock is checked again at every use); refused ones keep only the static reason, in a smaller
 * table of their own so that a flood of bad tokens cannot push out good ones. The tables belong
 * to the JWT secret they were filled under (a copy is compared at every use) and to the
 * generation of auth__cred_cache_invalidate(); either changing empties them. */
#define AUTH__CACHE_WAYS     4  /* entries per set */
#define AUTH__CACHE_SETS     64 /* accepted tokens: 256 per thread */
#define AUTH__CACHE_BAD_SETS 8  /* refused tokens: 32 per thread */

/* Verifies the bearer token token[0..len) of the Authorization header value authz[0..authzlen)
 * (the cache key) with secret at now_s, through the calling thread's cache. Same contract as
 * auth__jwt_verify(): the claims' strings are copied into a. */
int auth__jwt_verify_cached(pins_arena *a, const char *authz, size_t authzlen, const char *token,
                            size_t len, const char *secret, size_t secretlen, int64_t now_s,
                            auth__claims *pclaims, const char **pwhy);

/* The calling thread's cache counters (tests). */
typedef struct auth__cache_stats {
    uint64_t hits;      /* accepted tokens served from the cache (valid at use) */
    uint64_t bad_hits;  /* refused tokens served from the cache */
    uint64_t misses;    /* tokens verified from scratch */
    uint64_t evictions; /* entries pushed out by newer ones */
    size_t size;        /* accepted tokens held */
    size_t bad_size;    /* refused tokens held */
} auth__cache_stats;
void auth__cred_cache_stats(auth__cache_stats *ps);
/* Empties every thread's cache (lazily: each thread at its next use). */
void auth__cred_cache_invalidate(void);
/* Frees the calling thread's cache now (also done at thread exit). */
void auth__cred_cache_free_thread(void);

/* ---- policy.c ------------------------------------------------------------------------------- */

typedef struct auth__grant {
    char *resource;
    char **actions;
    size_t nactions;
} auth__grant;

typedef struct auth__role {
    char *name;
    auth__grant *grants;
    size_t ngrants;
} auth__role;

/* An immutable policy. Readers get one from auth__policy_acquire() and give it back. */
typedef struct auth__policy {
    char *version;
    char hash[17];
    int64_t loaded_us;
    bool log_allowed;
    bool from_file;
    auth__role *roles; /* sorted by name */
    size_t nroles;
    char **resources; /* sorted, unique */
    size_t nresources;
    char *matrix_json; /* compact, keys sorted */
    size_t matrix_len;
} auth__policy;

/* Builds a policy from the text of a policy file (a new policy the caller frees with
 * auth__policy_free). On failure writes why into err. Returns 0, PINS_EINVALID_ARGUMENT (not
 * JSON, or not the expected shape), PINS_ENOMEM. */
int auth__policy_parse(const char *text, size_t len, bool from_file, auth__policy **ppolicy,
                       char *err, size_t errlen);
/* The built-in matrix of API.md section 6 as a new policy. Returns 0 or PINS_ENOMEM. */
int auth__policy_default(auth__policy **ppolicy);
/* Reads and parses a policy file. On failure writes why into err; *pstatus gets the
 * rbac_policy_loads_total status ("error" when unreadable, "parse_error" when malformed).
 * Returns 0, PINS_EINVALID_ARGUMENT, PINS_ENOMEM. */
int auth__policy_load_file(const char *path, auth__policy **ppolicy, const char **pstatus,
                           char *err, size_t errlen);
void auth__policy_free(auth__policy *p);
/* True when one of roles grants action on resource in p. */
bool auth__policy_allows(const auth__policy *p, const char *const *roles, size_t nroles,
                         const char *resource, const char *action);

/* The policy in force, protected from being freed until auth__policy_release(). Nested calls on
 * one thread return the same policy. NULL only when out of memory. */
const auth__policy *auth__policy_acquire(void);
void auth__policy_release(const auth__policy *p);
/* Puts p in force (taking it) and frees the previous policy once no thread holds it. The caller
 * must not hold a policy. Returns the hash of the previous policy in prev (empty if none). */
void auth__policy_install_take(auth__policy *p, char prev[17]);
/* Lazily sets up the module (metric families, the built-in policy) once. Returns 0 or NOMEM. */
int auth__ensure_init(void);
/* Metric families of decide.c, created by auth__ensure_init(). */
void auth__decide_metrics_init(void);
void auth__decide_metrics_forget(void);

#endif
