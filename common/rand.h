/* common/rand.h: the one fast pseudo-random generator (xorshift128+), one state per thread.
 *
 * For request ids, jitter and sampling: never for secrets (those come from OpenSSL's RAND_bytes,
 * auth/crypto.c). A state is owned by one thread (a worker, a store session) and needs no lock.
 */
#ifndef PINS_COMMON_RAND_H
#define PINS_COMMON_RAND_H

#include <stdint.h>

typedef struct pins_rand {
    uint64_t s[2];
} pins_rand;

/* Seeds r from the kernel's random source (getrandom), falling back to the clock and r's own
 * address when that fails; never leaves the all-zero state. */
void pins_rand_seed(pins_rand *r);

/* The next 64 random bits. */
static inline uint64_t pins_rand_next(pins_rand *r)
{
    uint64_t s1 = r->s[0];
    const uint64_t s0 = r->s[1];
    r->s[0] = s0;
    s1 ^= s1 << 23;
    r->s[1] = s1 ^ s0 ^ (s1 >> 17) ^ (s0 >> 26);
    return r->s[1] + s0;
}

/* A uniformly distributed value in [0, n) for n > 0 (Lemire's multiply-shift, bias below 2^-32
 * for the small n used here). */
static inline uint64_t pins_rand_below(pins_rand *r, uint64_t n)
{
    return (uint64_t)(((unsigned __int128)pins_rand_next(r) * n) >> 64);
}

#endif
