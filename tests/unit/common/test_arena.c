/* tests/unit/common/test_arena.c: the call lifetime's bump allocator. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/arena.h"

#include <string.h>

static void test_allocations_are_aligned_to_16(void **state)
{
    pins_arena *a = pins_arena_new(0);
    assert_non_null(a);
    static const size_t sizes[] = {1, 3, 16, 17, 100, 5000, 1, 70000, 7};
    for (size_t i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        unsigned char *p = pins_arena_alloc(a, sizes[i]);
        assert_non_null(p);
        assert_int_equal((uintptr_t)p % 16, 0);
        memset(p, 0xab, sizes[i]); /* ASan checks the whole block is ours */
    }
    pins_arena_free(a);
}

static void test_limit_is_enforced_and_counts_rounded_sizes(void **state)
{
    pins_arena *a = pins_arena_new(64);
    assert_non_null(a);
    assert_non_null(pins_arena_alloc(a, 1));
    assert_int_equal(pins_arena_used(a), 16);
    assert_non_null(pins_arena_alloc(a, 48));
    assert_int_equal(pins_arena_used(a), 64);
    assert_null(pins_arena_alloc(a, 1));
    assert_int_equal(pins_arena_used(a), 64);
    pins_arena_free(a);

    a = pins_arena_new(1024);
    assert_null(pins_arena_alloc(a, 1025));
    assert_null(pins_arena_alloc(a, SIZE_MAX)); /* rounding overflow */
    assert_null(pins_arena_calloc(a, SIZE_MAX / 2, 4));
    assert_non_null(pins_arena_alloc(a, 1024));
    pins_arena_free(a);
}

static void test_calloc_zeroes_and_strdup_copies(void **state)
{
    pins_arena *a = pins_arena_new(0);
    unsigned char *z = pins_arena_calloc(a, 10, 10);
    assert_non_null(z);
    for (int i = 0; i < 100; i++)
        assert_int_equal(z[i], 0);
    char *s = pins_arena_strdup(a, "memory pin");
    assert_string_equal(s, "memory pin");
    char *n = pins_arena_strndup(a, "abcdef", 3);
    assert_string_equal(n, "abc");
    pins_arena_free(a);
}

static void test_printf_formats_into_the_arena(void **state)
{
    pins_arena *a = pins_arena_new(0);
    char *s = pins_arena_printf(a, "%s/%d/%.2f", "pins", 42, 1.5);
    assert_string_equal(s, "pins/42/1.50");
    char big[10000];
    memset(big, 'y', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    char *b = pins_arena_printf(a, "<%s>", big);
    assert_non_null(b);
    assert_int_equal(strlen(b), sizeof(big) + 1);
    pins_arena_free(a);

    a = pins_arena_new(32);
    assert_null(pins_arena_printf(a, "%s", big)); /* over the limit */
    pins_arena_free(a);
}

static void test_reset_frees_everything_and_allows_reuse(void **state)
{
    pins_arena *a = pins_arena_new(100000);
    for (int i = 0; i < 20; i++)
        assert_non_null(pins_arena_alloc(a, 4000));
    assert_int_equal(pins_arena_used(a), 20 * 4000);
    pins_arena_reset(a);
    assert_int_equal(pins_arena_used(a), 0);
    for (int i = 0; i < 20; i++)
        assert_non_null(pins_arena_alloc(a, 4000)); /* the limit counts from zero again */
    pins_arena_free(a);
    pins_arena_free(NULL);
}

static void test_protobuf_allocator_allocates_from_the_arena(void **state)
{
    pins_arena *a = pins_arena_new(0);
    ProtobufCAllocator al = pins_arena_allocator(a);
    void *p = al.alloc(al.allocator_data, 40);
    assert_non_null(p);
    assert_int_equal(pins_arena_used(a), 48);
    al.free(al.allocator_data, p); /* a no-op: the arena frees it */
    pins_arena_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_allocations_are_aligned_to_16),
        cmocka_unit_test(test_limit_is_enforced_and_counts_rounded_sizes),
        cmocka_unit_test(test_calloc_zeroes_and_strdup_copies),
        cmocka_unit_test(test_printf_formats_into_the_arena),
        cmocka_unit_test(test_reset_frees_everything_and_allows_reuse),
        cmocka_unit_test(test_protobuf_allocator_allocates_from_the_arena),
    };
    return cmocka_run_group_tests_name("common/arena", tests, NULL, NULL);
}
