/* rpc/services/pin_codec.c: hand-written protobuf encoding of memorypins.v1.Pin responses. */
#include "rpc/services/pin_codec.h"

#include <string.h>

#include "common/error.h"

static size_t varint_size(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static uint8_t *put_varint(uint8_t *p, uint64_t v)
{
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    return p;
}

/* Size of a length-delimited field with a one-byte tag and n bytes of payload. */
static size_t ld_size(size_t n)
{
    return 1 + varint_size(n) + n;
}

static size_t str_size(const char *s, size_t *plen)
{
    *plen = strlen(s);
    return *plen ? ld_size(*plen) : 0;
}

/* google.protobuf.Timestamp{seconds, nanos} content size. */
static size_t ts_content(int64_t us, int64_t *psec, int32_t *pnanos)
{
    int64_t secs = us >= 0 ? us / 1000000 : (us - 999999) / 1000000;
    int32_t nanos = (int32_t)((us - secs * 1000000) * 1000);
    *psec = secs;
    *pnanos = nanos;
    return (secs ? 1 + varint_size((uint64_t)secs) : 0) +
           (nanos ? 1 + varint_size((uint64_t)(int64_t)nanos) : 0);
}

static uint8_t *put_ts(uint8_t *p, uint8_t tag, int64_t secs, int32_t nanos, size_t content)
{
    *p++ = tag;
    p = put_varint(p, content);
    if (secs) {
        *p++ = 0x08;
        p = put_varint(p, (uint64_t)secs);
    }
    if (nanos) {
        *p++ = 0x10;
        p = put_varint(p, (uint64_t)(int64_t)nanos);
    }
    return p;
}

static uint8_t *put_str(uint8_t *p, uint8_t tag, const char *s, size_t len)
{
    if (len == 0)
        return p;
    *p++ = tag;
    p = put_varint(p, len);
    memcpy(p, s, len);
    return p + len;
}

/* head[0..nhead) + <pin_tag><len><Pin> + tail[0..ntail). */
static int encode(pins_arena *a, const store_pin *pin, const uint8_t *value_pb, size_t value_pb_len,
                  const uint8_t *head, size_t nhead, uint8_t pin_tag, const uint8_t *tail,
                  size_t ntail, uint8_t **pbuf, size_t *plen)
{
    size_t tl, kl, sl;
    int64_t cs, us, es = 0;
    int32_t cn, un, en = 0;
    size_t cc = ts_content(pin->created_us, &cs, &cn);
    size_t uc = ts_content(pin->updated_us, &us, &un);
    size_t ec = pin->has_expires ? ts_content(pin->expires_us, &es, &en) : 0;
    size_t ttlc = pin->has_ttl && pin->ttl_seconds != 0
                      ? 1 + varint_size((uint64_t)(int64_t)pin->ttl_seconds)
                      : 0;
    size_t n = 0;
    n += pin->id ? 1 + varint_size((uint64_t)pin->id) : 0;
    n += str_size(pin->tenant_id, &tl);
    n += str_size(pin->key, &kl);
    n += ld_size(value_pb_len);
    n += str_size(pin->source, &sl);
    n += ld_size(cc) + ld_size(uc);
    n += pin->has_ttl ? ld_size(ttlc) : 0;
    n += pin->has_expires ? ld_size(ec) : 0;
    n += pin->version ? 1 + varint_size((uint64_t)pin->version) : 0;
    n += pin->revision ? 1 + varint_size((uint64_t)pin->revision) : 0;

    size_t total = nhead + ld_size(n) + ntail;
    uint8_t *buf = pins_arena_alloc(a, total);
    if (buf == NULL)
        return PINS_ENOMEM;
    uint8_t *p = buf;
    if (nhead) {
        memcpy(p, head, nhead);
        p += nhead;
    }
    *p++ = pin_tag;
    p = put_varint(p, n);
    if (pin->id) {
        *p++ = 0x08;
        p = put_varint(p, (uint64_t)pin->id);
    }
    p = put_str(p, 0x12, pin->tenant_id, tl);
    p = put_str(p, 0x1a, pin->key, kl);
    *p++ = 0x22;
    p = put_varint(p, value_pb_len);
    if (value_pb_len)
        memcpy(p, value_pb, value_pb_len);
    p += value_pb_len;
    p = put_str(p, 0x2a, pin->source, sl);
    p = put_ts(p, 0x32, cs, cn, cc);
    p = put_ts(p, 0x3a, us, un, uc);
    if (pin->has_ttl) {
        *p++ = 0x42;
        p = put_varint(p, ttlc);
        if (ttlc) {
            *p++ = 0x08;
            p = put_varint(p, (uint64_t)(int64_t)pin->ttl_seconds);
        }
    }
    if (pin->has_expires)
        p = put_ts(p, 0x4a, es, en, ec);
    if (pin->version) {
        *p++ = 0x50;
        p = put_varint(p, (uint64_t)pin->version);
    }
    if (pin->revision) {
        *p++ = 0x58; /* Pin.revision, field 11 */
        p = put_varint(p, (uint64_t)pin->revision);
    }
    if (ntail) {
        memcpy(p, tail, ntail);
        p += ntail;
    }
    *pbuf = buf;
    *plen = (size_t)(p - buf);
    return 0;
}

int pin_codec_encode_response(pins_arena *a, const store_pin *pin, const uint8_t *value_pb,
                              size_t value_pb_len, int created, uint8_t **pbuf, size_t *plen)
{
    static const uint8_t created_true[] = {0x10, 0x01}; /* UpsertPinResponse.created = true */
    return encode(a, pin, value_pb, value_pb_len, NULL, 0, 0x0a, created_true,
                  created > 0 ? sizeof(created_true) : 0, pbuf, plen);
}

int pin_codec_encode_event(pins_arena *a, const store_pin *pin, const uint8_t *value_pb,
                           size_t value_pb_len, int type, uint8_t **pbuf, size_t *plen)
{
    uint8_t head[2] = {0x08, (uint8_t)type}; /* WatchPinsResponse.type (1..3) */
    return encode(a, pin, value_pb, value_pb_len, head, type > 0 ? 2 : 0, 0x12, NULL, 0, pbuf,
                  plen);
}
