/* protocols/grpc.c: the pieces of the gRPC wire protocol that do not depend on HTTP/2: timeouts,
 * message frame prefixes, percent-encoded status messages, content types. */
#include "rpc/rpc_int.h"

#include <string.h>

int proto__grpc_timeout_parse(const char *value, size_t len, int64_t *pns)
{
    /* TimeoutValue: 1 to 8 ASCII digits; TimeoutUnit: H M S m u n. */
    if (len < 2 || len > 9)
        return PINS_EINVALID_ARGUMENT;
    int64_t v = 0;
    for (size_t i = 0; i + 1 < len; i++) {
        if (value[i] < '0' || value[i] > '9')
            return PINS_EINVALID_ARGUMENT;
        v = v * 10 + (value[i] - '0');
    }
    int64_t mul;
    switch (value[len - 1]) {
    case 'H':
        mul = 3600LL * 1000000000LL;
        break;
    case 'M':
        mul = 60LL * 1000000000LL;
        break;
    case 'S':
        mul = 1000000000LL;
        break;
    case 'm':
        mul = 1000000LL;
        break;
    case 'u':
        mul = 1000LL;
        break;
    case 'n':
        mul = 1;
        break;
    default:
        return PINS_EINVALID_ARGUMENT;
    }
    /* 99999999 hours overflows int64 nanoseconds: anything over ~146 years is clamped there, so
     * a longer timeout never yields an earlier deadline. */
    const int64_t cap = INT64_MAX / 2;
    if (v > cap / mul)
        *pns = cap;
    else
        *pns = v * mul;
    return 0;
}

int proto__grpc_frame_parse(const uint8_t *p, size_t avail, proto__grpc_frame *pf)
{
    if (avail < PROTO__GRPC_FRAME_HEADER)
        return PINS_EINVALID_ARGUMENT;
    /* The flag byte has one defined bit (compressed); the others are reserved and a frame that
     * sets one is not a message this server can read. */
    if ((p[0] & ~1u) != 0)
        return PINS_EINVALID_ARGUMENT;
    pf->compressed = (p[0] & 1u) != 0;
    pf->len = (uint32_t)p[1] << 24 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 8 | p[4];
    return 0;
}

static bool needs_escape(unsigned char c)
{
    return c < 0x20 || c > 0x7e || c == '%';
}

char *proto__grpc_message_encode(pins_arena *a, const char *msg)
{
    static const char hex[] = "0123456789ABCDEF";
    static const char ellipsis[] = "...";
    const size_t el = sizeof(ellipsis) - 1;
    /* n: the bytes of msg sent, enc: their encoded length. A message whose encoding passes the
     * cap keeps what fits in the cap less the ellipsis, cut before a UTF-8 lead byte. */
    size_t n = 0, enc = 0, cut_n = 0, cut_enc = 0;
    bool cut = false;
    for (; msg[n] != '\0'; n++) {
        unsigned char c = (unsigned char)msg[n];
        if ((c & 0xc0) != 0x80 && enc <= PROTO__GRPC_MESSAGE_MAX - el) {
            cut_n = n; /* a character starts here and the ellipsis still fits after enc */
            cut_enc = enc;
        }
        enc += needs_escape(c) ? 3 : 1;
        if (enc > PROTO__GRPC_MESSAGE_MAX) {
            cut = true;
            break;
        }
    }
    if (cut) {
        n = cut_n;
        enc = cut_enc + el;
    }
    char *out = pins_arena_alloc(a, enc + 1);
    if (out == NULL)
        return NULL;
    char *p = out;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)msg[i];
        if (needs_escape(c)) {
            *p++ = '%';
            *p++ = hex[c >> 4];
            *p++ = hex[c & 15];
        } else {
            *p++ = (char)c;
        }
    }
    if (cut) {
        memcpy(p, ellipsis, el);
        p += el;
    }
    *p = '\0';
    return out;
}

bool proto__grpc_content_type(const char *value, size_t len)
{
    static const char base[] = "application/grpc";
    const size_t bl = sizeof(base) - 1;
    if (len < bl || strncasecmp(value, base, bl) != 0)
        return false;
    if (len == bl)
        return true;
    /* application/grpc+proto, application/grpc;charset=..., but not application/grpc-web. */
    if (value[bl] == ';')
        return true;
    if (value[bl] == '+') {
        const char *sub = value + bl + 1;
        size_t sl = len - bl - 1;
        const char *semi = memchr(sub, ';', sl);
        if (semi != NULL)
            sl = (size_t)(semi - sub);
        return sl == 5 && strncasecmp(sub, "proto", 5) == 0;
    }
    return false;
}
