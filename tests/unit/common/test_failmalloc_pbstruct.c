/* tests/unit/common/test_failmalloc_pbstruct.c: allocation-failure runs over Struct packing
 * (common/pbstruct.c; STYLE 24). Each allocation of JSON -> Struct (arena) and Struct -> JSON
 * (malloc'd buffer) fails in turn (tests/unit/support/failmalloc.h): every such run must fail
 * with PINS_ENOMEM, reason NOMEM and its out-parameters untouched, and free what it allocated
 * (ASan checks the leaks at exit). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/pbstruct.h"
#include "failmalloc.h"

#define DEPTH 64

/* Every kind of Value, nesting, escapes, non-ASCII text and a duplicate key. */
static const char value_json[] =
    "{\"name\":\"Ada \\\"L\\\" \\u00e9\\n\",\"age\":36,\"ratio\":0.1,\"ok\":true,\"off\":false,"
    "\"none\":null,\"tags\":[\"a\",1,2.5,[],[[{\"x\":[null,true]}]],{}],"
    "\"deep\":{\"a\":{\"b\":{\"c\":{\"d\":{\"e\":[1,[2,[3,[4]]]]}}}}},"
    "\"text\":\"\\ud83d\\ude00 caf\\u00e9 \\t tab\",\"big\":1e300,\"neg\":-0.0,\"age\":37}";

typedef struct pbs_run {
    pins_arena *arena;
    Google__Protobuf__Struct *s; /* the parsed value (subject of the writer runs) */
    Google__Protobuf__Struct *out;
    char *json;
    size_t len;
    char *expected;
} pbs_run;

static int parse(void *state)
{
    pbs_run *r = state;
    r->out = (Google__Protobuf__Struct *)&r->out; /* a sentinel: must stay on failure */
    r->arena = pins_arena_new(1u << 20);
    if (r->arena == NULL)
        return PINS_ENOMEM;
    return pbstruct_from_json(r->arena, value_json, strlen(value_json), DEPTH, &r->out);
}

static void check_parse(void *state, int rv, bool fired)
{
    pbs_run *r = state;
    if (!fired) {
        assert_int_equal(rv, 0);
        assert_int_equal(r->out->n_fields, 12);
    } else {
        assert_int_equal(rv, PINS_ENOMEM);
        assert_ptr_equal(r->out, (Google__Protobuf__Struct *)&r->out);
        if (r->arena != NULL)
            assert_int_equal(pbstruct_last_reason(), PBSTRUCT_REASON_NOMEM);
    }
    pins_arena_free(r->arena);
    r->arena = NULL;
}

static void test_failmalloc_pbstruct_from_json(void **state)
{
    (void)state;
    pbs_run r = {0};
    size_t n = failmalloc_each(parse, check_parse, &r);
    print_message("pbstruct from_json: %zu allocations failed in turn\n", n);
}

static int write_json(void *state)
{
    pbs_run *r = state;
    r->json = (char *)&r->json; /* sentinels: must stay on failure */
    r->len = SIZE_MAX;
    return pbstruct_to_json(r->s, SIZE_MAX, DEPTH, &r->json, &r->len);
}

static void check_write(void *state, int rv, bool fired)
{
    pbs_run *r = state;
    if (!fired) {
        assert_int_equal(rv, 0);
        assert_int_equal(strlen(r->json), r->len);
        r->expected = r->json;
        return;
    }
    assert_int_equal(rv, PINS_ENOMEM);
    assert_int_equal(pbstruct_last_reason(), PBSTRUCT_REASON_NOMEM);
    assert_ptr_equal(r->json, (char *)&r->json);
    assert_int_equal(r->len, SIZE_MAX);
}

static void test_failmalloc_pbstruct_to_json(void **state)
{
    (void)state;
    pbs_run r = {.arena = pins_arena_new(1u << 20)};
    assert_non_null(r.arena);
    assert_int_equal(pbstruct_from_json(r.arena, value_json, strlen(value_json), DEPTH, &r.s), 0);
    size_t n = failmalloc_each(write_json, check_write, &r);
    /* The last entry of a duplicate key wins. */
    assert_non_null(strstr(r.expected, "\"age\":37"));
    assert_null(strstr(r.expected, "\"age\":36"));
    print_message("pbstruct to_json: %zu allocations failed in turn\n", n);
    free(r.expected);
    pins_arena_free(r.arena);
}

/* A large flat object: the writer's buffer grows several times. */
static void test_failmalloc_pbstruct_to_json_growing(void **state)
{
    (void)state;
    static char big[65536];
    size_t off = 0;
    big[off++] = '{';
    for (int i = 0; i < 1000; i++)
        off += (size_t)snprintf(big + off, sizeof(big) - off, "%s\"key%04d\":\"value %d\"",
                                i ? "," : "", i, i);
    big[off++] = '}';
    pbs_run r = {.arena = pins_arena_new(4u << 20)};
    assert_non_null(r.arena);
    assert_int_equal(pbstruct_from_json(r.arena, big, off, DEPTH, &r.s), 0);
    size_t n = failmalloc_each(write_json, check_write, &r);
    assert_int_equal(strlen(r.expected), off);
    print_message("pbstruct to_json (1000 members): %zu allocations failed in turn\n", n);
    free(r.expected);
    pins_arena_free(r.arena);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failmalloc_pbstruct_from_json),
        cmocka_unit_test(test_failmalloc_pbstruct_to_json),
        cmocka_unit_test(test_failmalloc_pbstruct_to_json_growing),
    };
    return cmocka_run_group_tests_name("failmalloc_pbstruct", tests, NULL, NULL);
}
