/* common/rand.c: seeding the xorshift128+ generator. */
#include "common/rand.h"

#include <stdint.h>
#include <sys/random.h>

#include "common/timeutil.h"

void pins_rand_seed(pins_rand *r)
{
    if (getrandom(r->s, sizeof r->s, GRND_NONBLOCK) != (ssize_t)sizeof r->s) {
        r->s[0] = (uint64_t)pins_time_mono_ns() ^ 0x9e3779b97f4a7c15ull;
        r->s[1] = (uint64_t)(uintptr_t)r ^ (uint64_t)pins_time_now_us();
    }
    if ((r->s[0] | r->s[1]) == 0)
        r->s[0] = 0x9e3779b97f4a7c15ull;
}
