/* auth/credentials.c: what a request presents, in the order of API.md section 6.
 *
 * The first credential that is accepted wins: the machine token, then a bearer JWT, then X-Roles
 * (only with RBAC_TRUST_X_ROLES=true, since anyone can send that header). A credential that was
 * sent and refused (a wrong machine token with no bearer token behind it, any bad bearer token)
 * makes the request INVALID rather than anonymous, so that the client learns its credential is
 * wrong ("invalid-token") instead of being told it sent none.
 *
 * A credential header that arrives twice is refused before any value is looked at (API.md
 * section 6): "the first one wins" would let a proxy that checks the last copy see another
 * credential than ours. The two machine-token headers count as one name.
 */
#include "auth/auth_int.h"

#include <string.h>
#include <strings.h>

#include "common/error.h"

static bool is_space(char c)
{
    return c == ' ' || c == '\t';
}

/* The token of an "authorization: Bearer <token>" value v[0..len), or NULL for any other
 * scheme. */
static const char *bearer_token(const char *v, size_t len, size_t *plen)
{
    const char *end = v + len;
    while (is_space(*v))
        v++;
    if (strncasecmp(v, "bearer", 6) != 0 || !is_space(v[6]))
        return NULL;
    v += 6;
    while (is_space(*v))
        v++;
    size_t n = (size_t)(end - v);
    while (n > 0 && is_space(v[n - 1]))
        n--;
    *plen = n;
    return v;
}

/* Splits a comma list of role names into a. Returns 0, PINS_EUNAUTHENTICATED (too many or
 * unusable names), PINS_ENOMEM. */
static int split_roles(pins_arena *a, const char *v, const char ***proles, size_t *pn)
{
    const char **roles = pins_arena_calloc(a, AUTH__MAX_ROLES, sizeof(*roles));
    size_t n = 0;
    if (roles == NULL)
        return PINS_ENOMEM;
    while (*v != '\0') {
        while (is_space(*v) || *v == ',')
            v++;
        const char *start = v;
        while (*v != '\0' && *v != ',')
            v++;
        size_t len = (size_t)(v - start);
        while (len > 0 && is_space(start[len - 1]))
            len--;
        if (len == 0)
            continue;
        if (n == AUTH__MAX_ROLES || len > AUTH__MAX_NAME)
            return PINS_EUNAUTHENTICATED;
        for (size_t i = 0; i < len; i++) {
            if ((unsigned char)start[i] < 0x20 || start[i] == 0x7f)
                return PINS_EUNAUTHENTICATED;
        }
        roles[n] = pins_arena_strndup(a, start, len);
        if (roles[n] == NULL)
            return PINS_ENOMEM;
        n++;
    }
    *proles = roles;
    *pn = n;
    return 0;
}

const char auth_header_repeated[] = "";

static const char *present(const char *v)
{
    return v != NULL && v[0] != '\0' ? v : NULL;
}

/* The kind of the first credential header the request repeated, or NULL when none was. */
static const char *repeated_kind(const pins_config *cfg, auth_header_cb header, void *arg)
{
    const char *mt = header(arg, "x-machine-token");
    const char *am = header(arg, "authorization-machine");
    if (mt == auth_header_repeated || am == auth_header_repeated || (mt != NULL && am != NULL))
        return "machine-token";
    if (header(arg, "authorization") == auth_header_repeated)
        return "jwt";
    if (cfg->rbac_trust_x_roles && header(arg, "x-roles") == auth_header_repeated)
        return "x-roles";
    return NULL;
}

int auth__credentials(pins_arena *a, const pins_config *cfg, auth_header_cb header, void *arg,
                      int64_t now_s, auth__principal *pp)
{
    auth__principal p = {.status = AUTH__CRED_NONE, .subject = "anonymous"};
    int rv = 0;
    const char *dup = repeated_kind(cfg, header, arg);
    if (dup != NULL) {
        p.status = AUTH__CRED_INVALID;
        p.kind = dup;
        p.why = "credential header sent more than once";
        goto out;
    }
    const char *mt = present(header(arg, "x-machine-token"));
    if (mt == NULL)
        mt = present(header(arg, "authorization-machine"));
    const char *secret = cfg->machine_secret_token != NULL ? cfg->machine_secret_token : "";

    if (mt != NULL && secret[0] != '\0' &&
        auth__secret_equal(mt, strlen(mt), secret, strlen(secret))) {
        static const char *const machine_roles[] = {"machine"};
        p.status = AUTH__CRED_OK;
        p.kind = "machine-token";
        p.subject = "machine";
        p.roles = (const char **)machine_roles;
        p.nroles = 1;
        goto out;
    }

    const char *authz = present(header(arg, "authorization"));
    size_t alen = authz != NULL ? strlen(authz) : 0, tlen = 0;
    const char *token = authz != NULL ? bearer_token(authz, alen, &tlen) : NULL;
    if (token != NULL) {
        const char *jwt_secret = cfg->jwt_secret != NULL ? cfg->jwt_secret : "";
        auth__claims c;
        const char *why = NULL;
        rv = auth__jwt_verify_cached(a, authz, alen, token, tlen, jwt_secret, strlen(jwt_secret),
                                     now_s, &c, &why);
        if (rv == PINS_ENOMEM)
            return rv;
        if (rv != 0) {
            p.status = AUTH__CRED_INVALID;
            p.kind = "jwt";
            p.why = why;
            rv = 0;
            goto out;
        }
        p.status = AUTH__CRED_OK;
        p.kind = "jwt";
        p.subject = c.sub != NULL ? c.sub : "jwt";
        p.roles = c.roles;
        p.nroles = c.nroles;
        p.restricted = c.restricted;
        p.tenants = c.tenants;
        p.ntenants = c.ntenants;
        goto out;
    }

    if (mt != NULL) {
        p.status = AUTH__CRED_INVALID;
        p.kind = "machine-token";
        p.why = secret[0] != '\0' ? "machine token does not match"
                                  : "machine tokens are disabled (no MACHINE_SECRET_TOKEN)";
        goto out;
    }

    const char *xr = present(header(arg, "x-roles"));
    if (xr != NULL && cfg->rbac_trust_x_roles) {
        rv = split_roles(a, xr, &p.roles, &p.nroles);
        if (rv == PINS_ENOMEM)
            return rv;
        if (rv != 0) {
            p.status = AUTH__CRED_INVALID;
            p.kind = "x-roles";
            p.why = "x-roles is not a usable list";
            p.roles = NULL;
            rv = 0;
        } else if (p.nroles > 0) {
            p.status = AUTH__CRED_OK;
            p.kind = "x-roles";
            p.subject = "x-roles";
        }
    }
out:
    *pp = p;
    return rv;
}
