/* auth/jwt.c: HS256 bearer tokens (RFC 7519 with RFC 7515 compact serialisation).
 *
 * Only what pinsd issues to itself is accepted: exactly three base64url parts, a header whose
 * alg is exactly "HS256" and that names no critical extension, an HMAC-SHA256 signature under
 * JWT_SECRET checked in constant time before the payload is even parsed, an exp claim (a token
 * without one would never expire: it is refused, API.md section 6) and exp / nbf within
 * AUTH__LEEWAY_S. Everything else, "none" and every other algorithm included, is refused, so a
 * token signed with the public key of some RSA pair or left unsigned never gives roles.
 */
#include "auth/auth_int.h"

#include <string.h>

#include "common/base64.h"
#include "common/error.h"

/* A JWT part: base64url without padding, and canonical (the bits left over after the last byte
 * must be zero: one encoding per byte string). */
int auth__b64url_decode(const char *in, size_t len, uint8_t *out, size_t *pn)
{
    return pins_base64_decode(in, len, PINS_BASE64_URL | PINS_BASE64_CANONICAL, out, pn);
}

/* Decodes one part into the arena and parses it as a JSON object. */
static json_t *decode_object(pins_arena *a, const char *part, size_t len, int *prv)
{
    uint8_t *buf = pins_arena_alloc(a, pins_base64_decoded_max(len) + 1);
    size_t n = 0;
    if (buf == NULL) {
        *prv = PINS_ENOMEM;
        return NULL;
    }
    *prv = PINS_EUNAUTHENTICATED;
    if (auth__b64url_decode(part, len, buf, &n) != 0)
        return NULL;
    json_error_t e;
    json_t *j = json_loadb((const char *)buf, n, JSON_REJECT_DUPLICATES, &e);
    if (j != NULL && !json_is_object(j)) {
        json_decref(j);
        j = NULL;
    }
    return j;
}

/* A copy of a JSON string that is a usable name (1..AUTH__MAX_NAME bytes, no NUL), or NULL with
 * *pbad set when it is not one. */
static const char *name_copy(pins_arena *a, const json_t *s, bool *pbad, bool *pnomem)
{
    if (!json_is_string(s)) {
        *pbad = true;
        return NULL;
    }
    size_t len = json_string_length(s);
    const char *v = json_string_value(s);
    if (len == 0 || len > AUTH__MAX_NAME || memchr(v, '\0', len) != NULL) {
        *pbad = true;
        return NULL;
    }
    const char *c = pins_arena_strndup(a, v, len);
    if (c == NULL)
        *pnomem = true;
    return c;
}

/* A string or a list of strings (at most max) into a new arena array. */
static int string_list(pins_arena *a, const json_t *v, size_t max, const char ***plist, size_t *pn)
{
    size_t n = json_is_array(v) ? json_array_size(v) : 1;
    bool bad = false, nomem = false;
    if (!json_is_array(v) && !json_is_string(v))
        return PINS_EUNAUTHENTICATED;
    if (n > max)
        return PINS_EUNAUTHENTICATED;
    const char **list = pins_arena_calloc(a, n ? n : 1, sizeof(*list));
    if (list == NULL)
        return PINS_ENOMEM;
    for (size_t i = 0; i < n && !bad && !nomem; i++)
        list[i] = name_copy(a, json_is_array(v) ? json_array_get(v, i) : v, &bad, &nomem);
    if (nomem)
        return PINS_ENOMEM;
    if (bad)
        return PINS_EUNAUTHENTICATED;
    *plist = list;
    *pn = n;
    return 0;
}

static bool header_acceptable(const json_t *h)
{
    const json_t *alg = json_object_get(h, "alg");
    const json_t *typ = json_object_get(h, "typ");
    if (!json_is_string(alg) || json_string_length(alg) != 5 ||
        memcmp(json_string_value(alg), "HS256", 5) != 0)
        return false;
    if (typ != NULL && !json_is_string(typ))
        return false;
    /* A critical extension we do not implement must make the token unusable (RFC 7515 4.1.11). */
    return json_object_get(h, "crit") == NULL;
}

/* Reads exp (required) and nbf (type-checked). Returns a static reason, or NULL. */
static const char *read_times(const json_t *claims, auth__jwt_times *t)
{
    const json_t *exp = json_object_get(claims, "exp");
    const json_t *nbf = json_object_get(claims, "nbf");
    if (exp == NULL)
        return "no exp";
    if (!json_is_number(exp))
        return "exp is not a number";
    if (nbf != NULL && !json_is_number(nbf))
        return "nbf is not a number";
    *t = (auth__jwt_times){
        .has_exp = exp != NULL,
        .exp = exp != NULL ? json_number_value(exp) : 0,
        .has_nbf = nbf != NULL,
        .nbf = nbf != NULL ? json_number_value(nbf) : 0,
    };
    return NULL;
}

const char *auth__jwt_time_problem(const auth__jwt_times *t, int64_t now_s)
{
    if (t->has_exp && (double)now_s >= t->exp + AUTH__LEEWAY_S)
        return "expired";
    if (t->has_nbf && (double)now_s + AUTH__LEEWAY_S < t->nbf)
        return "not yet valid";
    return NULL;
}

static int read_claims(pins_arena *a, const json_t *claims, auth__claims *c, const char **pwhy)
{
    bool bad = false, nomem = false;
    int rv = 0;
    const json_t *sub = json_object_get(claims, "sub");
    if (sub != NULL) {
        c->sub = name_copy(a, sub, &bad, &nomem);
        if (nomem)
            return PINS_ENOMEM;
        if (bad) {
            *pwhy = "sub is not a usable string";
            return PINS_EUNAUTHENTICATED;
        }
    }
    const json_t *roles = json_object_get(claims, "roles");
    if (roles != NULL) {
        rv = string_list(a, roles, AUTH__MAX_ROLES, &c->roles, &c->nroles);
        if (rv != 0) {
            *pwhy = "roles is not a string or a list of strings";
            return rv;
        }
    }
    const json_t *tenants = json_object_get(claims, "tenants");
    const json_t *tenant = json_object_get(claims, "tenant_id");
    if (tenants != NULL && !json_is_array(tenants)) {
        *pwhy = "tenants is not a list";
        return PINS_EUNAUTHENTICATED;
    }
    if (tenant != NULL && !json_is_string(tenant)) {
        *pwhy = "tenant_id is not a string";
        return PINS_EUNAUTHENTICATED;
    }
    /* A token that names tenants may touch only those; "tenants" wins over "tenant_id". */
    const json_t *which = tenants != NULL ? tenants : tenant;
    if (which != NULL) {
        rv = string_list(a, which, AUTH__MAX_TENANTS, &c->tenants, &c->ntenants);
        if (rv != 0) {
            *pwhy = "tenants are not usable strings";
            return rv;
        }
        c->restricted = true;
    }
    return 0;
}

/* Verifies token; checks exp and nbf against now_s only when timed. */
static int verify(pins_arena *a, const char *token, size_t len, const char *secret,
                  size_t secretlen, bool timed, int64_t now_s, auth__claims *pclaims,
                  auth__jwt_times *ptimes, const char **pwhy)
{
    int rv = PINS_EUNAUTHENTICATED;
    json_t *header = NULL, *claims = NULL;
    auth__claims c = {0};
    const char *why = "malformed";

    if (secretlen == 0) {
        why = "bearer tokens are disabled (no JWT_SECRET)";
        goto out;
    }
    if (len == 0 || len > AUTH__MAX_TOKEN) {
        why = len == 0 ? "empty token" : "token too long";
        goto out;
    }
    const char *dot1 = memchr(token, '.', len);
    const char *dot2 =
        dot1 != NULL ? memchr(dot1 + 1, '.', len - (size_t)(dot1 + 1 - token)) : NULL;
    if (dot2 == NULL || memchr(dot2 + 1, '.', len - (size_t)(dot2 + 1 - token)) != NULL) {
        why = "not three parts";
        goto out;
    }
    size_t hlen = (size_t)(dot1 - token);
    size_t plen = (size_t)(dot2 - dot1 - 1);
    size_t slen = len - (size_t)(dot2 + 1 - token);
    if (hlen == 0 || plen == 0 || slen == 0) {
        why = "empty part";
        goto out;
    }

    header = decode_object(a, token, hlen, &rv);
    if (header == NULL) {
        why = "header is not base64url JSON";
        goto out;
    }
    rv = PINS_EUNAUTHENTICATED;
    if (!header_acceptable(header)) {
        why = "algorithm not HS256";
        goto out;
    }

    /* The signature before anything of the payload is believed. */
    uint8_t sig[48], mac[32];
    size_t siglen = 0;
    if (slen > 64 || auth__b64url_decode(dot2 + 1, slen, sig, &siglen) != 0 || siglen != 32) {
        why = "bad signature encoding";
        goto out;
    }
    if (auth__hmac_sha256(secret, secretlen, token, (size_t)(dot2 - token), mac) != 0) {
        rv = PINS_EINTERNAL;
        why = "hmac failed";
        goto out;
    }
    if (!auth__ct_equal(sig, mac, sizeof(mac))) {
        why = "bad signature";
        goto out;
    }

    claims = decode_object(a, dot1 + 1, plen, &rv);
    if (claims == NULL) {
        why = "payload is not base64url JSON";
        goto out;
    }
    rv = PINS_EUNAUTHENTICATED;
    auth__jwt_times t;
    const char *tp = read_times(claims, &t);
    if (tp == NULL && timed)
        tp = auth__jwt_time_problem(&t, now_s);
    if (tp != NULL) {
        why = tp;
        goto out;
    }
    rv = read_claims(a, claims, &c, &why);
    if (rv != 0)
        goto out;
    *pclaims = c;
    if (ptimes != NULL)
        *ptimes = t;
    why = NULL;
out:
    json_decref(header);
    json_decref(claims);
    if (rv == PINS_EINTERNAL)
        rv = PINS_EUNAUTHENTICATED; /* a token we cannot check gives no roles */
    if (pwhy != NULL)
        *pwhy = why;
    return rv;
}

int auth__jwt_verify(pins_arena *a, const char *token, size_t len, const char *secret,
                     size_t secretlen, int64_t now_s, auth__claims *pclaims, const char **pwhy)
{
    return verify(a, token, len, secret, secretlen, true, now_s, pclaims, NULL, pwhy);
}

int auth__jwt_check(pins_arena *a, const char *token, size_t len, const char *secret,
                    size_t secretlen, auth__claims *pclaims, auth__jwt_times *ptimes,
                    const char **pwhy)
{
    return verify(a, token, len, secret, secretlen, false, 0, pclaims, ptimes, pwhy);
}
