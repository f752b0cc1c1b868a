/* rpc/services/validate.c: API.md section 4, once for every transport. */
#include "rpc/services/validate.h"

#include <string.h>

long pins_utf8_count(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    long n = 0;
    size_t i = 0;
    while (i < len) {
        unsigned char c = s[i];
        if (c < 0x80) {
            i++;
        } else if (c >= 0xc2 && c <= 0xdf) {
            if (i + 1 >= len || (s[i + 1] & 0xc0) != 0x80)
                return -1;
            i += 2;
        } else if (c >= 0xe0 && c <= 0xef) {
            if (i + 2 >= len || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80)
                return -1;
            if (c == 0xe0 && s[i + 1] < 0xa0) /* overlong */
                return -1;
            if (c == 0xed && s[i + 1] >= 0xa0) /* surrogates */
                return -1;
            i += 3;
        } else if (c >= 0xf0 && c <= 0xf4) {
            if (i + 3 >= len || (s[i + 1] & 0xc0) != 0x80 || (s[i + 2] & 0xc0) != 0x80 ||
                (s[i + 3] & 0xc0) != 0x80)
                return -1;
            if (c == 0xf0 && s[i + 1] < 0x90) /* overlong */
                return -1;
            if (c == 0xf4 && s[i + 1] >= 0x90) /* over U+10FFFF */
                return -1;
            i += 4;
        } else {
            return -1;
        }
        n++;
    }
    return n;
}

bool pins_utf8_has_control(const char *str, size_t len)
{
    const unsigned char *s = (const unsigned char *)str;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < 0x20 || s[i] == 0x7f)
            return true;
        /* C1 controls U+0080..U+009F are encoded as C2 80..C2 9F. */
        if (s[i] == 0xc2 && i + 1 < len && s[i + 1] >= 0x80 && s[i + 1] <= 0x9f)
            return true;
    }
    return false;
}

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
    if (ttl < 0 || ttl > PINS_TTL_MAX_SECONDS)
        return "must be null or between 0 and 31536000";
    return NULL;
}

const char *pins_check_prefix(const char *prefix)
{
    return check_text(prefix, PINS_KEY_MAX_CHARS, "must be at most 512 characters", true);
}
