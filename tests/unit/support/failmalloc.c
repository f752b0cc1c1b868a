/* tests/unit/support/failmalloc.c: the counting wrappers behind failmalloc.h. Linked only into
 * the test_failmalloc* programs, which are linked with --wrap for each function below: the
 * __real_ names are the original functions (the allocator ASan intercepts, common/arena.c). */
#include "failmalloc.h"

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "common/arena.h"

void *__real_malloc(size_t size);
void *__real_calloc(size_t n, size_t size);
void *__real_realloc(void *ptr, size_t size);
pins_arena *__real_pins_arena_new(size_t limit);
void *__real_pins_arena_alloc(pins_arena *a, size_t size);
void *__real_pins_arena_calloc(pins_arena *a, size_t n, size_t size);
char *__real_pins_arena_strndup(pins_arena *a, const char *s, size_t len);
char *__real_pins_arena_strdup(pins_arena *a, const char *s);
char *__real_pins_arena_vprintf(pins_arena *a, const char *fmt, va_list ap);

void *__wrap_malloc(size_t size);
void *__wrap_calloc(size_t n, size_t size);
void *__wrap_realloc(void *ptr, size_t size);
pins_arena *__wrap_pins_arena_new(size_t limit);
void *__wrap_pins_arena_alloc(pins_arena *a, size_t size);
void *__wrap_pins_arena_calloc(pins_arena *a, size_t n, size_t size);
char *__wrap_pins_arena_strndup(pins_arena *a, const char *s, size_t len);
char *__wrap_pins_arena_strdup(pins_arena *a, const char *s);
char *__wrap_pins_arena_vprintf(pins_arena *a, const char *fmt, va_list ap);
char *__wrap_pins_arena_printf(pins_arena *a, const char *fmt, ...);
ProtobufCAllocator __wrap_pins_arena_allocator(pins_arena *a);

static bool armed;
static size_t count, fail_at;
static bool fired;

/* Counts one allocation; true when this one must fail. */
static bool fail_now(void)
{
    if (!armed)
        return false;
    count++;
    if (fail_at != 0 && count == fail_at) {
        fired = true;
        return true;
    }
    return false;
}

void failmalloc_arm(size_t n)
{
    count = 0;
    fail_at = n;
    fired = false;
    armed = true;
}

size_t failmalloc_disarm(void)
{
    armed = false;
    return count;
}

bool failmalloc_fired(void)
{
    return fired;
}

size_t failmalloc_each(failmalloc_op op, failmalloc_check check, void *state)
{
    failmalloc_arm(0);
    int rv = op(state);
    size_t n = failmalloc_disarm();
    check(state, rv, false);
    assert_true(n > 0);
    for (size_t i = 1; i <= n; i++) {
        failmalloc_arm(i);
        rv = op(state);
        size_t made = failmalloc_disarm();
        assert_true(made <= 4 * n + 64);
        assert_true(failmalloc_fired());
        check(state, rv, true);
    }
    return n;
}

/* ---- libc ---------------------------------------------------------------------------------- */

void *__wrap_malloc(size_t size)
{
    return fail_now() ? NULL : __real_malloc(size);
}

void *__wrap_calloc(size_t n, size_t size)
{
    return fail_now() ? NULL : __real_calloc(n, size);
}

void *__wrap_realloc(void *ptr, size_t size)
{
    return fail_now() ? NULL : __real_realloc(ptr, size);
}

/* ---- common/arena.h ------------------------------------------------------------------------ */

pins_arena *__wrap_pins_arena_new(size_t limit)
{
    return fail_now() ? NULL : __real_pins_arena_new(limit);
}

void *__wrap_pins_arena_alloc(pins_arena *a, size_t size)
{
    return fail_now() ? NULL : __real_pins_arena_alloc(a, size);
}

void *__wrap_pins_arena_calloc(pins_arena *a, size_t n, size_t size)
{
    return fail_now() ? NULL : __real_pins_arena_calloc(a, n, size);
}

char *__wrap_pins_arena_strndup(pins_arena *a, const char *s, size_t len)
{
    return fail_now() ? NULL : __real_pins_arena_strndup(a, s, len);
}

char *__wrap_pins_arena_strdup(pins_arena *a, const char *s)
{
    return fail_now() ? NULL : __real_pins_arena_strdup(a, s);
}

char *__wrap_pins_arena_vprintf(pins_arena *a, const char *fmt, va_list ap)
{
    return fail_now() ? NULL : __real_pins_arena_vprintf(a, fmt, ap);
}

char *__wrap_pins_arena_printf(pins_arena *a, const char *fmt, ...)
{
    if (fail_now())
        return NULL;
    va_list ap;
    va_start(ap, fmt);
    char *p = __real_pins_arena_vprintf(a, fmt, ap);
    va_end(ap);
    return p;
}

static void *pb_alloc(void *data, size_t size)
{
    return fail_now() ? NULL : __real_pins_arena_alloc(data, size);
}

static void pb_free(void *data, void *ptr)
{
    (void)data;
    (void)ptr;
}

ProtobufCAllocator __wrap_pins_arena_allocator(pins_arena *a)
{
    return (ProtobufCAllocator){.alloc = pb_alloc, .free = pb_free, .allocator_data = a};
}
