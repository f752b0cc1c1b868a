/* tests/unit/common/test_failmalloc_buf.c: allocation-failure runs over the growable buffer and
 * the JSON string writer (common/buf.c, common/json_str.c; STYLE 24). Each allocation fails in
 * turn (tests/unit/support/failmalloc.h): the failing append must return PINS_ENOMEM and leave
 * the content that the earlier appends made, whole and NUL-terminated; nothing may leak (ASan
 * checks at exit). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/error.h"
#include "common/json_str.h"
#include "failmalloc.h"

#define PIECES 400

typedef struct buf_run {
    pins_buf b;
    size_t done; /* pieces appended before the first failure */
} buf_run;

static void piece(size_t i, char *out, size_t outlen)
{
    snprintf(out, outlen, "piece %zu;", i);
}

/* Appends pieces by each of the append functions until one fails. */
static int append_pieces(void *state)
{
    buf_run *r = state;
    pins_buf_init(&r->b, SIZE_MAX);
    r->done = 0;
    for (size_t i = 0; i < PIECES; i++) {
        char p[32];
        piece(i, p, sizeof(p));
        int rv;
        if (i % 3 == 0) {
            rv = pins_buf_add_str(&r->b, p);
        } else if (i % 3 == 1) {
            rv = pins_buf_addf(&r->b, "piece %zu;", i);
        } else {
            rv = 0;
            size_t len = pins_buf_len(&r->b);
            for (const char *c = p; rv == 0 && *c != '\0'; c++)
                rv = pins_buf_add_byte(&r->b, *c);
            if (rv != 0)
                pins_buf_setlen(&r->b, len);
        }
        if (rv != 0)
            return rv;
        r->done++;
    }
    return 0;
}

static void check_pieces(void *state, int rv, bool fired)
{
    buf_run *r = state;
    assert_int_equal(rv, fired ? PINS_ENOMEM : 0);
    assert_int_equal(r->done, fired ? r->done : PIECES);
    pins_buf want;
    pins_buf_init(&want, SIZE_MAX);
    for (size_t i = 0; i < r->done; i++) {
        char p[32];
        piece(i, p, sizeof(p));
        assert_int_equal(pins_buf_add_str(&want, p), 0);
    }
    assert_int_equal(pins_buf_len(&r->b), pins_buf_len(&want));
    if (pins_buf_len(&want) > 0)
        assert_string_equal(pins_buf_ptr(&r->b), pins_buf_ptr(&want));
    pins_buf_free(&want);
    pins_buf_free(&r->b);
}

static void test_failmalloc_buf_appends(void **state)
{
    (void)state;
    buf_run r = {0};
    size_t n = failmalloc_each(append_pieces, check_pieces, &r);
    print_message("buf appends: %zu allocations failed in turn\n", n);
}

typedef struct str_run {
    pins_buf b;
    char text[3000];
} str_run;

/* A prefix, then one long string with escapes and invalid UTF-8 in a single call. */
static int write_string(void *state)
{
    str_run *r = state;
    pins_buf_init(&r->b, SIZE_MAX);
    int rv = pins_buf_add_str(&r->b, "prefix:");
    if (rv == 0)
        rv = pins_json_str_put(&r->b, r->text, sizeof(r->text));
    return rv;
}

static void check_string(void *state, int rv, bool fired)
{
    str_run *r = state;
    if (!fired) {
        assert_int_equal(rv, 0);
        assert_memory_equal(pins_buf_ptr(&r->b), "prefix:\"", 8);
    } else {
        assert_int_equal(rv, PINS_ENOMEM);
        /* The string is all or nothing: what stays is the prefix, if that was allocated. */
        if (pins_buf_ptr(&r->b) != NULL)
            assert_string_equal(pins_buf_ptr(&r->b), "prefix:");
    }
    pins_buf_free(&r->b);
}

static void test_failmalloc_json_str(void **state)
{
    (void)state;
    str_run *r = calloc(1, sizeof(*r));
    assert_non_null(r);
    for (size_t i = 0; i < sizeof(r->text); i++)
        r->text[i] = "ab\"\n\x01\xff\xc3\xa9z"[i % 9];
    size_t n = failmalloc_each(write_string, check_string, r);
    print_message("json string: %zu allocations failed in turn\n", n);
    free(r);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failmalloc_buf_appends),
        cmocka_unit_test(test_failmalloc_json_str),
    };
    return cmocka_run_group_tests_name("failmalloc_buf", tests, NULL, NULL);
}
