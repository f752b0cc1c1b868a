/* tests/unit/common/test_base64.c: base64 both ways (common/base64.c), with the rules each caller
 * relies on: JWT parts, the ListPins page token, proto3 JSON bytes, grpc-web-text quanta. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "common/base64.h"
#include "common/error.h"

#define JWT   (PINS_BASE64_URL | PINS_BASE64_CANONICAL)
#define PAGE  (PINS_BASE64_URL | PINS_BASE64_LOOSE_TAIL)
#define BYTES (PINS_BASE64_MIXED | PINS_BASE64_PAD)

static void check_encode(const char *in, size_t n, unsigned flags, const char *want)
{
    char out[128];
    assert_int_equal(pins_base64_encoded_len(n, flags), strlen(want));
    assert_int_equal(pins_base64_encode(in, n, flags, out), strlen(want));
    assert_string_equal(out, want);
}

/* Decodes s under flags and expects want[0..wn) (want NULL: refused). */
static void check_decode(const char *s, unsigned flags, const char *want, size_t wn)
{
    size_t len = strlen(s);
    uint8_t *out = malloc(pins_base64_decoded_max(len) + 1); /* ASan: writes stay in bounds */
    assert_non_null(out);
    size_t n = 12345;
    int rv = pins_base64_decode(s, len, flags, out, &n);
    if (want == NULL) {
        assert_int_equal(rv, PINS_EINVALID_ARGUMENT);
        assert_int_equal(n, 12345);
    } else {
        assert_int_equal(rv, 0);
        assert_int_equal(n, wn);
        assert_true(n <= pins_base64_decoded_max(len));
        assert_memory_equal(out, want, wn);
    }
    free(out);
}

static void test_base64_rfc4648_vectors(void **state)
{
    (void)state;
    const char *const raw[] = {"", "f", "fo", "foo", "foob", "fooba", "foobar"};
    const char *const padded[] = {"", "Zg==", "Zm8=", "Zm9v", "Zm9vYg==", "Zm9vYmE=", "Zm9vYmFy"};
    const char *const bare[] = {"", "Zg", "Zm8", "Zm9v", "Zm9vYg", "Zm9vYmE", "Zm9vYmFy"};
    for (size_t i = 0; i < 7; i++) {
        size_t n = strlen(raw[i]);
        check_encode(raw[i], n, PINS_BASE64_PAD, padded[i]);
        check_encode(raw[i], n, 0, bare[i]);
        check_encode(raw[i], n, PINS_BASE64_URL, bare[i]);
        check_decode(padded[i], PINS_BASE64_PAD, raw[i], n);
        check_decode(padded[i], BYTES, raw[i], n);
        check_decode(bare[i], BYTES, raw[i], n);
        check_decode(bare[i], JWT, raw[i], n);
        check_decode(bare[i], 0, raw[i], n);
    }
}

static void test_base64_alphabets(void **state)
{
    (void)state;
    const char raw[] = "\xfb\xff\xbf";
    check_encode(raw, 3, 0, "+/+/");
    check_encode(raw, 3, PINS_BASE64_URL, "-_-_");
    check_decode("+/+/", 0, raw, 3);
    check_decode("-_-_", PINS_BASE64_URL, raw, 3);
    check_decode("-_-_", 0, NULL, 0);
    check_decode("+/+/", PINS_BASE64_URL, NULL, 0);
    check_decode("+_-/", PINS_BASE64_MIXED, raw, 3); /* proto3 JSON accepts either, mixed */
    /* Every byte value round-trips in both alphabets, padded or not. */
    uint8_t all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (uint8_t)i;
    for (unsigned f = 0; f <= (PINS_BASE64_URL | PINS_BASE64_PAD); f++) {
        for (size_t n = 0; n <= 256; n += 37) {
            char text[400];
            size_t len = pins_base64_encode(all, n, f, text);
            uint8_t back[300];
            size_t m = 0;
            assert_int_equal(pins_base64_decode(text, len, f | PINS_BASE64_CANONICAL, back, &m), 0);
            assert_int_equal(m, n);
            assert_memory_equal(back, all, n);
        }
    }
}

static void test_base64_refuses_foreign_characters_and_bad_lengths(void **state)
{
    (void)state;
    check_decode("aGVs bG8", BYTES, NULL, 0); /* whitespace */
    check_decode("aGVs\nbG8", BYTES, NULL, 0);
    check_decode("aGVsbG8*", BYTES, NULL, 0);
    check_decode("aGVsb", BYTES, NULL, 0);  /* 4k + 1 */
    check_decode("aGVsbG8=", 0, NULL, 0);   /* '=' only with PAD */
    check_decode("aGVsbG8=", JWT, NULL, 0); /* JWT parts are unpadded */
    check_decode("Zg=", BYTES, NULL, 0);    /* padding only at a length of 4k */
    check_decode("Z===", BYTES, NULL, 0);
    check_decode("====", BYTES, NULL, 0);
    check_decode("Zg=a", BYTES, NULL, 0);
    check_decode("Z=g=", BYTES, NULL, 0); /* the grpc-web-text quantum "x=y=" */
    check_decode("Zm8=", BYTES, "fo", 2);
    check_decode("Zg==Zg==", BYTES, NULL, 0); /* padding inside: a caller splits chunks itself */
}

static void test_base64_canonical_refuses_leftover_bits(void **state)
{
    (void)state;
    /* "aGVsbG8" is "hello" (canonical); "aGVsbG9" leaves a set bit after the last byte. */
    check_decode("aGVsbG8", JWT, "hello", 5);
    check_decode("aGVsbG9", JWT, NULL, 0);
    check_decode("aGVsbG9", PINS_BASE64_URL, "hello", 5); /* others ignore the leftover bits */
    check_decode("Zh", JWT, NULL, 0);
    check_decode("Zh==", BYTES, "f", 1);
    check_decode("-_8", JWT, "\xfb\xff", 2);
}

static void test_base64_loose_tail_is_the_page_token_rule(void **state)
{
    (void)state;
    /* A last character that completes no byte: checked, then ignored, for the page token only. */
    check_decode("MC4xLjJ4", PAGE, "0.1.2x", 6);
    check_decode("MC4xLjJ4A", PAGE, "0.1.2x", 6);
    check_decode("MC4xLjJ4!", PAGE, NULL, 0);
    check_decode("MC4xLjJ4A", PINS_BASE64_URL, NULL, 0);
    check_decode("A", PAGE, "", 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_base64_rfc4648_vectors),
        cmocka_unit_test(test_base64_alphabets),
        cmocka_unit_test(test_base64_refuses_foreign_characters_and_bad_lengths),
        cmocka_unit_test(test_base64_canonical_refuses_leftover_bits),
        cmocka_unit_test(test_base64_loose_tail_is_the_page_token_rule),
    };
    return cmocka_run_group_tests_name("base64", tests, NULL, NULL);
}
