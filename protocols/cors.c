/* protocols/cors.c: CORS (https://fetch.spec.whatwg.org/#http-cors-protocol) for browsers calling
 * the REST routes, Connect and gRPC-Web from another origin. Origins come from
 * CORS_ALLOWED_ORIGINS (comma list, "*" for any); without it no CORS header is ever sent. */
#include "protocols/protocols_int.h"

#include <string.h>
#include <strings.h>

#define ALLOW_METHODS "GET, POST, DELETE, OPTIONS"
#define ALLOW_HEADERS                                                                        \
    "content-type, authorization, x-machine-token, x-request-id, x-grpc-web, x-user-agent, " \
    "grpc-timeout, connect-protocol-version, connect-timeout-ms, connect-accept-encoding, "  \
    "connect-content-encoding"
#define EXPOSE_HEADERS                                                                          \
    "grpc-status, grpc-message, x-request-id, ratelimit-policy, ratelimit, x-ratelimit-limit, " \
    "x-ratelimit-remaining, retry-after"
#define MAX_AGE "7200" /* Chromium's cap; a policy change reaches browsers within two hours */

static bool configured(const pins_config *cfg)
{
    return cfg->cors_allowed_origins != NULL && cfg->cors_allowed_origins[0] != '\0';
}

/* True when origin is in the comma list (entries trimmed; "*" matches any origin; scheme and
 * host compare case-insensitively, as browsers serialise them in lower case anyway). */
static bool origin_listed(const char *list, const char *origin)
{
    size_t olen = strlen(origin);
    const char *p = list;
    while (*p != '\0') {
        size_t n = strcspn(p, ",");
        const char *b = p, *e = p + n;
        while (b < e && (*b == ' ' || *b == '\t'))
            b++;
        while (e > b && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '/'))
            e--;
        size_t len = (size_t)(e - b);
        if ((len == 1 && *b == '*') || (len == olen && len > 0 && strncasecmp(b, origin, len) == 0))
            return true;
        p += n;
        if (*p == ',')
            p++;
    }
    return false;
}

const char *proto__cors_origin(const pins_config *cfg, const rpc_call *call)
{
    const char *origin = rpc_call_header(call, "origin");
    if (origin == NULL || origin[0] == '\0' || !configured(cfg))
        return NULL;
    return origin_listed(cfg->cors_allowed_origins, origin) ? origin : NULL;
}

bool proto__cors_is_preflight(const char *method, const rpc_call *call)
{
    return method != NULL && strcmp(method, "OPTIONS") == 0 &&
           rpc_call_header(call, "origin") != NULL &&
           rpc_call_header(call, "access-control-request-method") != NULL;
}

static bool method_allowed(const char *m)
{
    return strcmp(m, "GET") == 0 || strcmp(m, "POST") == 0 || strcmp(m, "DELETE") == 0 ||
           strcmp(m, "HEAD") == 0 || strcmp(m, "OPTIONS") == 0;
}

void proto__cors_preflight(proto__exchange *ex)
{
    const char *requested = rpc_call_header(ex->call, "access-control-request-method");
    /* A preflight that fails the CORS check gets no allow headers; 403 (rather than a bare 204)
     * tells a human reading the network panel why, while the browser fails it either way. */
    if (ex->cors_origin == NULL || !method_allowed(requested)) {
        static const char body[] = "{\"detail\":\"Disallowed CORS origin or method\",\"code\":7,"
                                   "\"message\":\"cors preflight rejected\"}";
        proto__respond(ex, 403, "application/json", body, sizeof(body) - 1, NULL, 0);
        return;
    }
    static const rpc_header h[] = {
        {.name = "access-control-allow-methods", .value = ALLOW_METHODS},
        {.name = "access-control-allow-headers", .value = ALLOW_HEADERS},
        {.name = "access-control-max-age", .value = MAX_AGE},
    };
    proto__respond(ex, 204, NULL, NULL, 0, h, sizeof(h) / sizeof(h[0]));
}

int proto__cors_headers(proto__exchange *ex, proto__hdrs *h)
{
    const pins_config *cfg = ex->call->worker->server->cfg;
    pins_arena *a = ex->call->arena;
    if (!configured(cfg) || rpc_call_header(ex->call, "origin") == NULL)
        return 0;
    int rv = proto__hdrs_add(a, h, "vary", "Origin");
    if (rv == 0 && ex->cors_origin != NULL)
        rv = proto__hdrs_add(a, h, "access-control-allow-origin", ex->cors_origin);
    if (rv == 0 && ex->cors_origin != NULL)
        rv = proto__hdrs_add(a, h, "access-control-expose-headers", EXPOSE_HEADERS);
    return rv;
}
