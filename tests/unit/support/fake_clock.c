/* tests/unit/support/fake_clock.c: a clock the test moves by hand. */
#include "fake_clock.h"

#include <stdatomic.h>
#include <stddef.h>

#include "common/timeutil.h"

static _Atomic int64_t offset_ns; /* added to the frozen start values */
static int64_t start_mono_ns;
static int64_t start_wall_us;

static int64_t fake_mono_ns(void *arg)
{
    (void)arg;
    return start_mono_ns + atomic_load(&offset_ns);
}

static int64_t fake_now_us(void *arg)
{
    (void)arg;
    return start_wall_us + atomic_load(&offset_ns) / 1000;
}

static const pins_clock fake = {.now_us = fake_now_us, .mono_ns = fake_mono_ns, .arg = NULL};

void fake_clock_install(void)
{
    pins_clock_set(NULL);
    start_mono_ns = pins_time_mono_ns();
    start_wall_us = pins_time_now_us();
    atomic_store(&offset_ns, 0);
    pins_clock_set(&fake);
}

void fake_clock_advance_ns(int64_t ns)
{
    atomic_fetch_add(&offset_ns, ns);
}

void fake_clock_advance_ms(int64_t ms)
{
    fake_clock_advance_ns(ms * 1000000);
}

void fake_clock_uninstall(void)
{
    pins_clock_set(NULL);
}
