/* tests/unit/common/test_error.c: the error table and its mappings (API.md section 5). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "common/error.h"

#include <string.h>

/* Written out by hand from the contract, so that a changed row fails here. */
static const struct {
    int err;
    const char *name;
    int grpc;
    int http;
} rows[] = {
    {PINS_EINVALID_ARGUMENT, "INVALID_ARGUMENT", 3, 422},
    {PINS_EMALFORMED, "MALFORMED", 3, 400},
    {PINS_ENOT_FOUND, "NOT_FOUND", 5, 404},
    {PINS_EALREADY_EXISTS, "ALREADY_EXISTS", 6, 409},
    {PINS_EABORTED, "ABORTED", 10, 409},
    {PINS_EUNAUTHENTICATED, "UNAUTHENTICATED", 16, 403},
    {PINS_EPERMISSION_DENIED, "PERMISSION_DENIED", 7, 403},
    {PINS_ERATE_LIMITED, "RATE_LIMITED", 8, 429},
    {PINS_ETOO_LARGE, "TOO_LARGE", 8, 413},
    {PINS_EDISABLED, "DISABLED", 14, 503},
    {PINS_EUNAVAILABLE, "UNAVAILABLE", 14, 503},
    {PINS_EDEADLINE_EXCEEDED, "DEADLINE_EXCEEDED", 4, 504},
    {PINS_EUNIMPLEMENTED, "UNIMPLEMENTED", 12, 404},
    {PINS_EMETHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", 12, 405},
    {PINS_EINTERNAL, "INTERNAL", 13, 500},
    {PINS_ENOMEM, "NOMEM", 8, 503},
    {PINS_ECANCELLED, "CANCELLED", 1, 499},
    {PINS_EUNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE", 3, 415},
    {PINS_ESTORE, "STORE", 14, 503},
    {PINS_EBREAKER_OPEN, "BREAKER_OPEN", 14, 503},
    {PINS_ERESOURCE_EXHAUSTED, "RESOURCE_EXHAUSTED", 8, 503},
    {PINS_EOUT_OF_RANGE, "OUT_OF_RANGE", 11, 400},
};
#define NROWS (sizeof(rows) / sizeof(rows[0]))

static void test_not_found_maps_to_grpc_5_and_http_404(void **state)
{
    assert_int_equal(pins_error_grpc(PINS_ENOT_FOUND), 5);
    assert_int_equal(pins_error_http(PINS_ENOT_FOUND), 404);
    assert_string_equal(pins_error_name(PINS_ENOT_FOUND), "NOT_FOUND");
    assert_string_equal(pins_strerror(PINS_ENOT_FOUND), "not found");
}

static void test_every_row_maps_its_codes(void **state)
{
    assert_int_equal(NROWS, PINS__IDX_COUNT);
    for (size_t i = 0; i < NROWS; i++) {
        assert_int_equal(rows[i].err, -(int)(i + 1)); /* rows are never renumbered */
        assert_string_equal(pins_error_name(rows[i].err), rows[i].name);
        assert_int_equal(pins_error_grpc(rows[i].err), rows[i].grpc);
        assert_int_equal(pins_error_http(rows[i].err), rows[i].http);
        const char *msg = pins_strerror(rows[i].err);
        assert_true(strlen(msg) > 0);
        for (const char *p = msg; *p; p++)
            assert_false(*p >= 'A' && *p <= 'Z'); /* lower case, PostgreSQL style */
    }
}

static void test_ok_and_unknown_codes_have_fixed_answers(void **state)
{
    assert_string_equal(pins_strerror(0), "ok");
    assert_string_equal(pins_error_name(0), "OK");
    assert_int_equal(pins_error_grpc(0), 0);
    assert_int_equal(pins_error_http(0), 200);
    static const int unknown[] = {1, 42, -(PINS__IDX_COUNT + 1), -1000};
    for (size_t i = 0; i < 4; i++) {
        assert_string_equal(pins_strerror(unknown[i]), "unknown error");
        assert_string_equal(pins_error_name(unknown[i]), "UNKNOWN");
        assert_int_equal(pins_error_grpc(unknown[i]), 2);
        assert_int_equal(pins_error_http(unknown[i]), 500);
    }
}

static void test_grpc_code_names_connect_codes_and_http(void **state)
{
    static const struct {
        const char *name, *connect;
        int http;
    } codes[17] = {
        {"OK", "ok", 200},
        {"CANCELLED", "canceled", 499},
        {"UNKNOWN", "unknown", 500},
        {"INVALID_ARGUMENT", "invalid_argument", 400},
        {"DEADLINE_EXCEEDED", "deadline_exceeded", 504},
        {"NOT_FOUND", "not_found", 404},
        {"ALREADY_EXISTS", "already_exists", 409},
        {"PERMISSION_DENIED", "permission_denied", 403},
        {"RESOURCE_EXHAUSTED", "resource_exhausted", 429},
        {"FAILED_PRECONDITION", "failed_precondition", 400},
        {"ABORTED", "aborted", 409},
        {"OUT_OF_RANGE", "out_of_range", 400},
        {"UNIMPLEMENTED", "unimplemented", 501},
        {"INTERNAL", "internal", 500},
        {"UNAVAILABLE", "unavailable", 503},
        {"DATA_LOSS", "data_loss", 500},
        {"UNAUTHENTICATED", "unauthenticated", 401},
    };
    for (int c = 0; c < 17; c++) {
        assert_string_equal(pins_grpc_code_name(c), codes[c].name);
        assert_string_equal(pins_grpc_code_connect(c), codes[c].connect);
        assert_int_equal(pins_grpc_code_http(c), codes[c].http);
    }
    assert_string_equal(pins_grpc_code_name(17), "UNKNOWN");
    assert_string_equal(pins_grpc_code_name(-1), "UNKNOWN");
    assert_string_equal(pins_grpc_code_connect(99), "unknown");
    assert_int_equal(pins_grpc_code_http(99), 500);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_not_found_maps_to_grpc_5_and_http_404),
        cmocka_unit_test(test_every_row_maps_its_codes),
        cmocka_unit_test(test_ok_and_unknown_codes_have_fixed_answers),
        cmocka_unit_test(test_grpc_code_names_connect_codes_and_http),
    };
    return cmocka_run_group_tests_name("common/error", tests, NULL, NULL);
}
