/* rpc/services/validate.c: API.md section 4, once for every transport. */
#include "rpc/services/validate.h"

#include <string.h>

static const char *check_text(const char *s, long max, const char *too_long, bool allow_empty)
{
    size_t len = strlen(s);
    if (len == 0 && !allow_empty)
        return "must not be empty";
    long n = pins_utf8_count(s, len);
    if (n < 0)
        return "must be valid UTF-8";
    if (n > max)
        return too_long;
    if (pins_utf8_has_control(s, len))
        return "must not contain control characters";
    return NULL;
}

static const char *check_range(int64_t v, int64_t min, int64_t max, const char *outside)
{
    return v < min || v > max ? outside : NULL;
}

const char *pins_check_key(const char *key)
{
    const char *why = check_text(key, PINS_KEY_MAX_CHARS, "must be at most 512 characters", false);
    if (why != NULL)
        return why;
    if (strstr(key, "..") != NULL)
        return "must not contain '..'";
    if (strchr(key, '/') != NULL)
        return "must not contain '/'";
    if (strchr(key, '\\') != NULL)
        return "must not contain '\\'";
    return NULL;
}

const char *pins_check_tenant(const char *tenant)
{
    return check_text(tenant, PINS_TENANT_MAX_CHARS, "must be at most 256 characters", false);
}

const char *pins_check_source(const char *source)
{
    return check_text(source, PINS_SOURCE_MAX_CHARS, "must be at most 64 characters", true);
}

const char *pins_check_ttl(int64_t ttl)
{
    return check_range(ttl, 0, PINS_TTL_MAX_SECONDS, "must be null or between 0 and 31536000");
}

const char *pins_check_prefix(const char *prefix)
{
    return check_text(prefix, PINS_KEY_MAX_CHARS, "must be at most 512 characters", true);
}

const char *pins_check_limit(int64_t limit)
{
    return check_range(limit, 1, PINS_LIST_MAX_LIMIT, "must be between 1 and 1000");
}

const char *pins_check_offset(int64_t offset)
{
    return check_range(offset, 0, INT64_MAX, "must be at least 0");
}
