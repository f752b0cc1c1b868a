/* tests/unit/common/test_json_str.c: the JSON string writer (common/json_str.c). The expected
 * texts are the ones the log lines and the pin values were written with before the writer was
 * shared, byte for byte. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/buf.h"
#include "common/error.h"
#include "common/json_str.h"

/* s[0..n) written by pins_json_str_put (strict: pins_json_str_put_strict) must be want. */
static void check(const char *s, size_t n, const char *want)
{
    pins_buf b;
    pins_buf_init(&b, 1 << 16);
    assert_int_equal(pins_json_str_put(&b, s, n), 0);
    assert_string_equal(pins_buf_ptr(&b), want);
    assert_int_equal(pins_buf_len(&b), strlen(want));
    /* A C string without NUL bytes gives the same text without its length. */
    if (s != NULL && memchr(s, '\0', n) == NULL && s[n] == '\0') {
        pins_buf_reset(&b);
        assert_int_equal(pins_json_str_put(&b, s, PINS_JSON_STR_NUL), 0);
        assert_string_equal(pins_buf_ptr(&b), want);
    }
    pins_buf_free(&b);
}

static void check_strict(const char *s, size_t n, const char *want)
{
    check(s, n, want);
    pins_buf b;
    pins_buf_init(&b, 1 << 16);
    assert_int_equal(pins_json_str_put_strict(&b, s, n), 0);
    assert_string_equal(pins_buf_ptr(&b), want);
    pins_buf_free(&b);
}

static void test_json_str_copies_plain_text(void **state)
{
    (void)state;
    check_strict("", 0, "\"\"");
    check_strict(NULL, 0, "\"\"");
    check_strict("hello world", 11, "\"hello world\"");
    /* '/', DEL and printable ASCII are not escaped. */
    check_strict("a/b\x7f~", 5, "\"a/b\x7f~\"");
}

static void test_json_str_escapes_quote_backslash_and_controls(void **state)
{
    (void)state;
    check_strict("say \"hi\" \\o/", 12, "\"say \\\"hi\\\" \\\\o/\"");
    check_strict("\b\f\n\r\t", 5, "\"\\b\\f\\n\\r\\t\"");
    /* Every other control character as \u00XX with lower-case hex, NUL included. */
    char all[32];
    for (int i = 0; i < 32; i++)
        all[i] = (char)i;
    check_strict(all, sizeof(all),
                 "\"\\u0000\\u0001\\u0002\\u0003\\u0004\\u0005\\u0006\\u0007\\b\\t\\n\\u000b\\f\\r"
                 "\\u000e\\u000f\\u0010\\u0011\\u0012\\u0013\\u0014\\u0015\\u0016\\u0017\\u0018"
                 "\\u0019\\u001a\\u001b\\u001c\\u001d\\u001e\\u001f\"");
}

static void test_json_str_copies_valid_utf8(void **state)
{
    (void)state;
    /* 2, 3 and 4 byte sequences at the edges of their ranges. */
    const char s[] = "\xc2\x80 caf\xc3\xa9 \xe0\xa0\x80 \xed\x9f\xbf \xee\x80\x80 \xef\xbf\xbf "
                     "\xf0\x90\x80\x80 \xf0\x9f\x98\x80 \xf4\x8f\xbf\xbf";
    char want[sizeof(s) + 2];
    snprintf(want, sizeof(want), "\"%s\"", s);
    check_strict(s, sizeof(s) - 1, want);
}

static void test_json_str_replaces_invalid_utf8_per_byte(void **state)
{
    (void)state;
    const char *const bad[] = {
        "\x80",             /* stray continuation */
        "\xc0\xaf",         /* overlong '/' */
        "\xc1\xbf",         /* overlong */
        "\xe0\x80\xaf",     /* overlong 3-byte */
        "\xed\xa0\x80",     /* surrogate U+D800 */
        "\xf0\x80\x80\xaf", /* overlong 4-byte */
        "\xf4\x90\x80\x80", /* above U+10FFFF */
        "\xf5\x80\x80\x80", /* no such lead byte */
        "\xff",
        "\xc3",     /* cut short */
        "\xe2\x82", /* cut short */
    };
    const char *const want[] = {
        "\"\\ufffd\"",
        "\"\\ufffd\\ufffd\"",
        "\"\\ufffd\\ufffd\"",
        "\"\\ufffd\\ufffd\\ufffd\"",
        "\"\\ufffd\\ufffd\\ufffd\"",
        "\"\\ufffd\\ufffd\\ufffd\\ufffd\"",
        "\"\\ufffd\\ufffd\\ufffd\\ufffd\"",
        "\"\\ufffd\\ufffd\\ufffd\\ufffd\"",
        "\"\\ufffd\"",
        "\"\\ufffd\"",
        "\"\\ufffd\\ufffd\"",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        check(bad[i], strlen(bad[i]), want[i]);
        pins_buf b;
        pins_buf_init(&b, 100);
        assert_int_equal(pins_buf_add_str(&b, "x"), 0);
        assert_int_equal(pins_json_str_put_strict(&b, bad[i], strlen(bad[i])),
                         PINS_EINVALID_ARGUMENT);
        assert_string_equal(pins_buf_ptr(&b), "x"); /* nothing of the string stays */
        assert_int_equal(pins_json_str_put_strict(&b, bad[i], PINS_JSON_STR_NUL),
                         PINS_EINVALID_ARGUMENT);
        assert_string_equal(pins_buf_ptr(&b), "x");
        pins_buf_free(&b);
    }
    /* A cut sequence is judged by n, not by a NUL after it; valid text around bad bytes stays. */
    check("\xc3\xa9", 1, "\"\\ufffd\"");
    check("\xe2\x82\0", 3, "\"\\ufffd\\ufffd\\u0000\"");
    check("a\xe2\x82\xac\xe2\x82z\n", 8, "\"a\xe2\x82\xac\\ufffd\\ufffdz\\n\"");
}

static void test_json_str_is_all_or_nothing_at_the_limit(void **state)
{
    (void)state;
    pins_buf b;
    pins_buf_init(&b, 10);
    assert_int_equal(pins_buf_add_str(&b, "ab"), 0);
    assert_int_equal(pins_json_str_put(&b, "123456", 6), 0); /* 8 bytes: exactly 10 */
    assert_string_equal(pins_buf_ptr(&b), "ab\"123456\"");
    pins_buf_setlen(&b, 2);
    assert_int_equal(pins_json_str_put(&b, "1234567", 7), PINS_ETOO_LARGE);
    assert_string_equal(pins_buf_ptr(&b), "ab");
    assert_int_equal(pins_json_str_put(&b, "\n\n\n\n", 4), PINS_ETOO_LARGE); /* 2 + 10 > 10 */
    assert_int_equal(pins_json_str_put_strict(&b, "12345", 5), 0);
    assert_string_equal(pins_buf_ptr(&b), "ab\"12345\"");
    pins_buf_free(&b);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_json_str_copies_plain_text),
        cmocka_unit_test(test_json_str_escapes_quote_backslash_and_controls),
        cmocka_unit_test(test_json_str_copies_valid_utf8),
        cmocka_unit_test(test_json_str_replaces_invalid_utf8_per_byte),
        cmocka_unit_test(test_json_str_is_all_or_nothing_at_the_limit),
    };
    return cmocka_run_group_tests_name("json_str", tests, NULL, NULL);
}
