/* tests/unit/client/test_failmalloc_grpc_parse.c: allocation-failure runs over libpins-client's
 * response parser (client/grpc_parse.c and the status it fills, client/status.c; STYLE 24).
 * Every allocation a whole response makes (metadata copies, a -bin value's decoding, the buffer
 * of a message split across DATA chunks, grpc-message, details, the status texts) fails in turn:
 * each run must end in a status that is either the response's own or RESOURCE_EXHAUSTED, with a
 * message that is never NULL, and free everything (ASan checks the leaks at exit). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "client/grpc_parse.h"
#include "failmalloc.h"

typedef struct run {
    pins_status st;
    size_t messages;
} run;

static int on_msg(void *arg, const uint8_t *data, size_t len)
{
    run *r = arg;
    (void)data;
    (void)len;
    r->messages++;
    return 0;
}

static void hdr(client__parse *p, const char *name, const char *value)
{
    client__parse_header(p, name, strlen(name), value, strlen(value));
}

static int op_response(void *state)
{
    run *r = state;
    static const uint8_t wire[] = {0, 0, 0, 0, 6, 'a', 'b', 'c', 'd', 'e', 'f', 0,
                                   0, 0, 0, 0, 0, 0,   0,   0,   2,   'x', 'y'};
    client__parse p;
    client__parse_init(&p, 1024, 4096);
    hdr(&p, ":status", "200");
    hdr(&p, "content-type", "application/grpc");
    hdr(&p, "x-request-id", "srv-1");
    hdr(&p, "x-one", "1");
    client__parse_end_block(&p);
    for (size_t i = 0; i < sizeof(wire); i += 4) {
        size_t n = sizeof(wire) - i < 4 ? sizeof(wire) - i : 4;
        client__parse_data(&p, wire + i, n, on_msg, r);
    }
    hdr(&p, "grpc-status", "9");
    hdr(&p, "grpc-message", "not%20now");
    hdr(&p, "grpc-status-details-bin", "CAk");
    hdr(&p, "x-t-bin", "AAEC");
    hdr(&p, "retry-after", "2");
    client__parse_end_block(&p);
    r->st.request_id = strdup("sent"); /* as the connection leaves it */
    int code = client__parse_finish(&p, &r->st);
    client__parse_free(&p);
    return code;
}

static void check_response(void *state, int rv, bool fired)
{
    run *r = state;
    assert_non_null(r->st.message);
    assert_int_equal(rv, r->st.code);
    if (!fired) {
        assert_int_equal(rv, PINS_CODE_FAILED_PRECONDITION);
        assert_string_equal(r->st.message, "not now");
        assert_string_equal(r->st.request_id, "srv-1");
        assert_int_equal(r->st.retry_after_ms, 2000);
        assert_int_equal(r->st.details_len, 2);
        assert_int_equal(r->messages, 3);
        assert_string_equal(pins_status_metadata(&r->st, "x-one"), "1");
        assert_memory_equal(pins_status_metadata(&r->st, "x-t-bin"), "\0\1\2", 3);
    } else {
        assert_true(rv == PINS_CODE_FAILED_PRECONDITION || rv == PINS_CODE_RESOURCE_EXHAUSTED);
    }
    pins_status_clear(&r->st);
    r->messages = 0;
}

static void test_failmalloc_parse_whole_response(void **state)
{
    (void)state;
    run r = {.st = PINS_STATUS_INIT};
    size_t n = failmalloc_each(op_response, check_response, &r);
    assert_true(n >= 10);
}

static int op_value(void *state)
{
    run *r = state;
    static const char json[] = "{\"a\":[1,true,null,{\"b\":\"c\"}],\"d\":2.5}";
    Google__Protobuf__Struct *v = NULL;
    int code = pins_value_from_json(json, sizeof(json) - 1, &v, &r->st);
    if (code == 0) {
        char *text = pins_value_to_json(v);
        if (text == NULL)
            code = PINS_CODE_RESOURCE_EXHAUSTED;
        else if (strcmp(text, json) != 0)
            code = PINS_CODE_INTERNAL;
        free(text);
        pins_message_free(&v->base);
    }
    return code;
}

static void check_value(void *state, int rv, bool fired)
{
    run *r = state;
    if (!fired)
        assert_int_equal(rv, 0);
    else
        assert_true(rv == 0 || rv == PINS_CODE_RESOURCE_EXHAUSTED);
    pins_status_clear(&r->st);
}

static void test_failmalloc_value_json_round_trip(void **state)
{
    (void)state;
    run r = {.st = PINS_STATUS_INIT};
    assert_true(failmalloc_each(op_value, check_value, &r) > 0);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failmalloc_parse_whole_response),
        cmocka_unit_test(test_failmalloc_value_json_round_trip),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
