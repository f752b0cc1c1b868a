/* common/hash.h: the one non-cryptographic hash (FNV-1a, 64 bits) and a (tenant, key) helper.
 *
 * For hash tables and shard choice only (the read cache, the rate limiter's buckets, the audit
 * windows, the PostgreSQL key slots, watch filters): never for anything a peer could exploit by
 * choosing colliding inputs without a bound on the table's chains. Inline: these run per request.
 */
#ifndef PINS_COMMON_HASH_H
#define PINS_COMMON_HASH_H

#include <stddef.h>
#include <stdint.h>

#define PINS_FNV1A_INIT  0xcbf29ce484222325ull
#define PINS_FNV1A_PRIME 0x100000001b3ull

/* Folds n bytes of p into h (start from PINS_FNV1A_INIT). */
static inline uint64_t pins_fnv1a(uint64_t h, const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        h = (h ^ b[i]) * PINS_FNV1A_PRIME;
    return h;
}

/* Folds the NUL-terminated s into h; *plen (may be NULL) gets strlen(s). */
static inline uint64_t pins_fnv1a_str(uint64_t h, const char *s, size_t *plen)
{
    const unsigned char *p = (const unsigned char *)s;
    for (; *p != '\0'; p++)
        h = (h ^ *p) * PINS_FNV1A_PRIME;
    if (plen != NULL)
        *plen = (size_t)(p - (const unsigned char *)s);
    return h;
}

/* MurmurHash3's 64-bit finaliser: spreads every input bit over the high and the low bits, so that
 * both a shard (high bits) and a bucket (low bits) can be taken from one hash. */
static inline uint64_t pins_hash_mix(uint64_t h)
{
    h ^= h >> 33;
    h *= 0xff51afd7ed558ccdull;
    h ^= h >> 33;
    h *= 0xc4ceb9fe1a85ec53ull;
    h ^= h >> 33;
    return h;
}

/* The hash of a (tenant, key) pair: FNV-1a over tenant, a 0xff separator (no UTF-8 string holds
 * that byte, so ("ab","c") and ("a","bc") differ) and key, mixed. *ptl and *pkl (may be NULL) get
 * the lengths. */
static inline uint64_t pins_hash_tenant_key(const char *tenant, const char *key, size_t *ptl,
                                            size_t *pkl)
{
    uint64_t h = pins_fnv1a_str(PINS_FNV1A_INIT, tenant, ptl);
    h = (h ^ 0xff) * PINS_FNV1A_PRIME;
    h = pins_fnv1a_str(h, key, pkl);
    return pins_hash_mix(h);
}

#endif
