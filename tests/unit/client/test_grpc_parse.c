/* tests/unit/client/test_grpc_parse.c: the gRPC response parser of libpins-client without a
 * connection (client/grpc_parse.c): framing across chunks, the limits, and every rule that turns
 * a response into a status. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/grpc_parse.h"

#define MAX_MSG 64
#define MAX_HDR 1024

typedef struct seen {
    size_t n;
    size_t len[16];
    uint8_t data[16][MAX_MSG];
} seen;

static int on_msg(void *arg, const uint8_t *data, size_t len)
{
    seen *s = arg;
    assert_true(s->n < 16);
    assert_true(len <= MAX_MSG);
    memcpy(s->data[s->n], data, len);
    s->len[s->n++] = len;
    return 0;
}

static void hdr(client__parse *p, const char *name, const char *value)
{
    client__parse_header(p, name, strlen(name), value, strlen(value));
}

/* The usual response headers. */
static void ok_headers(client__parse *p)
{
    hdr(p, ":status", "200");
    hdr(p, "content-type", "application/grpc");
    assert_int_equal(client__parse_end_block(p), 0);
}

static void trailers(client__parse *p, const char *status, const char *msg)
{
    hdr(p, "grpc-status", status);
    if (msg != NULL)
        hdr(p, "grpc-message", msg);
    client__parse_end_block(p);
}

/* Feeds data in pieces of at most piece bytes. */
static int feed(client__parse *p, const void *data, size_t len, size_t piece, seen *s)
{
    const uint8_t *d = data;
    int rv = 0;
    while (len > 0 && rv == 0) {
        size_t n = len < piece ? len : piece;
        rv = client__parse_data(p, d, n, on_msg, s);
        d += n;
        len -= n;
    }
    return rv;
}

static size_t frame(uint8_t *out, uint8_t flags, const char *msg, size_t len)
{
    out[0] = flags;
    out[1] = (uint8_t)(len >> 24);
    out[2] = (uint8_t)(len >> 16);
    out[3] = (uint8_t)(len >> 8);
    out[4] = (uint8_t)len;
    memcpy(out + 5, msg, len);
    return len + 5;
}

static int finish(client__parse *p, pins_status *st)
{
    int code = client__parse_finish(p, st);
    client__parse_free(p);
    return code;
}

static void test_parse_messages_split_at_every_byte(void **state)
{
    (void)state;
    uint8_t wire[256];
    size_t n = frame(wire, 0, "hello", 5);
    n += frame(wire + n, 0, "", 0);
    n += frame(wire + n, 0, "world!", 6);
    for (size_t piece = 1; piece <= n; piece++) {
        client__parse p;
        seen s = {0};
        client__parse_init(&p, MAX_MSG, MAX_HDR);
        ok_headers(&p);
        assert_int_equal(feed(&p, wire, n, piece, &s), 0);
        trailers(&p, "0", NULL);
        pins_status st = PINS_STATUS_INIT;
        assert_int_equal(finish(&p, &st), PINS_CODE_OK);
        assert_true(st.from_server);
        assert_int_equal(st.http_status, 200);
        assert_int_equal(s.n, 3);
        assert_int_equal(s.len[0], 5);
        assert_memory_equal(s.data[0], "hello", 5);
        assert_int_equal(s.len[1], 0);
        assert_int_equal(s.len[2], 6);
        assert_memory_equal(s.data[2], "world!", 6);
        assert_string_equal(st.message, "");
        pins_status_clear(&st);
    }
}

static void test_parse_length_over_max_is_resource_exhausted(void **state)
{
    (void)state;
    client__parse p;
    seen s = {0};
    client__parse_init(&p, MAX_MSG, MAX_HDR);
    ok_headers(&p);
    /* A prefix announcing 4 GiB - 1: refused on the prefix, before anything is buffered. */
    const uint8_t lie[] = {0, 0xff, 0xff, 0xff, 0xff, 'x'};
    assert_int_equal(feed(&p, lie, sizeof(lie), 3, &s), PINS_CODE_RESOURCE_EXHAUSTED);
    assert_null(p.msg);
    trailers(&p, "0", NULL);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(finish(&p, &st), PINS_CODE_RESOURCE_EXHAUSTED);
    assert_false(st.from_server);
    assert_non_null(strstr(st.message, "larger than 64"));
    assert_int_equal(s.n, 0);
    pins_status_clear(&st);
}

static void test_parse_truncated_message_is_internal(void **state)
{
    (void)state;
    client__parse p;
    seen s = {0};
    client__parse_init(&p, MAX_MSG, MAX_HDR);
    ok_headers(&p);
    const uint8_t part[] = {0, 0, 0, 0, 10, 'a', 'b', 'c'}; /* promises 10, 3 arrive */
    assert_int_equal(feed(&p, part, sizeof(part), 100, &s), 0);
    trailers(&p, "0", NULL);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(finish(&p, &st), PINS_CODE_INTERNAL);
    assert_non_null(strstr(st.message, "truncated message"));
    pins_status_clear(&st);

    /* A partial prefix is truncated too. */
    client__parse_init(&p, MAX_MSG, MAX_HDR);
    ok_headers(&p);
    assert_int_equal(feed(&p, part, 2, 100, &s), 0);
    trailers(&p, "0", NULL);
    assert_int_equal(finish(&p, &st), PINS_CODE_INTERNAL);
    assert_non_null(strstr(st.message, "truncated message"));
    pins_status_clear(&st);
}

static void test_parse_compressed_flag_is_internal(void **state)
{
    (void)state;
    client__parse p;
    seen s = {0};
    client__parse_init(&p, MAX_MSG, MAX_HDR);
    ok_headers(&p);
    uint8_t wire[32];
    size_t n = frame(wire, 1, "zz", 2);
    assert_int_equal(feed(&p, wire, n, n, &s), PINS_CODE_INTERNAL);
    trailers(&p, "0", NULL);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(finish(&p, &st), PINS_CODE_INTERNAL);
    assert_non_null(strstr(st.message, "compressed"));
    assert_int_equal(s.n, 0);
    pins_status_clear(&st);
}

static void test_parse_missing_trailers_is_internal(void **state)
{
    (void)state;
    client__parse p;
    seen s = {0};
    client__parse_init(&p, MAX_MSG, MAX_HDR);
    ok_headers(&p);
    uint8_t wire[32];
    size_t n = frame(wire, 0, "ok", 2);
    assert_int_equal(feed(&p, wire, n, n, &s), 0);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(finish(&p, &st), PINS_CODE_INTERNAL);
    assert_non_null(strstr(st.message, "missing trailers"));
    assert_false(st.from_server);
    pins_status_clear(&st);
}

static void test_parse_trailers_only_metadata_becomes_trailers(void **state)
{
    (void)state;
    client__parse p;
    client__parse_init(&p, MAX_MSG, MAX_HDR);
    hdr(&p, ":status", "200");
    hdr(&p, "content-type", "application/grpc");
    hdr(&p, "grpc-status", "5");
    hdr(&p, "grpc-message", "pin%20not%20found%3A%20k");
    hdr(&p, "x-request-id", "abc");
    hdr(&p, "retry-after", "7");
    client__parse_end_block(&p);
    pins_status st = PINS_STATUS_INIT;
    st.request_id = strdup("sent");
    assert_int_equal(finish(&p, &st), PINS_CODE_NOT_FOUND);
    assert_true(st.from_server);
    assert_string_equal(st.message, "pin not found: k");
    assert_string_equal(st.request_id, "abc");
    assert_int_equal(st.retry_after_ms, 7000);
    assert_int_equal(st.headers.count, 0);
    assert_string_equal(pins_status_metadata(&st, "x-request-id"), "abc");
    assert_null(pins_status_metadata(&st, "grpc-status"));
    pins_status_clear(&st);
}

static void test_parse_http_status_table(void **state)
{
    (void)state;
    static const struct {
        const char *http;
        int code;
    } rows[] = {
        {"400", PINS_CODE_INTERNAL},          {"401", PINS_CODE_UNAUTHENTICATED},
        {"403", PINS_CODE_PERMISSION_DENIED}, {"404", PINS_CODE_UNIMPLEMENTED},
        {"429", PINS_CODE_UNAVAILABLE},       {"502", PINS_CODE_UNAVAILABLE},
        {"503", PINS_CODE_UNAVAILABLE},       {"504", PINS_CODE_UNAVAILABLE},
        {"500", PINS_CODE_UNKNOWN},           {"418", PINS_CODE_UNKNOWN},
    };
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        client__parse p;
        client__parse_init(&p, MAX_MSG, MAX_HDR);
        hdr(&p, ":status", rows[i].http);
        hdr(&p, "content-type", "text/plain");
        client__parse_end_block(&p);
        seen s = {0};
        client__parse_data(&p, (const uint8_t *)"oops", 4, on_msg, &s);
        pins_status st = PINS_STATUS_INIT;
        assert_int_equal(finish(&p, &st), rows[i].code);
        assert_int_equal(st.http_status, (int)strtol(rows[i].http, NULL, 10));
        pins_status_clear(&st);
    }
    /* grpc-status wins over the HTTP status when both came. */
    client__parse p;
    client__parse_init(&p, MAX_MSG, MAX_HDR);
    hdr(&p, ":status", "503");
    hdr(&p, "content-type", "application/grpc");
    hdr(&p, "grpc-status", "8");
    client__parse_end_block(&p);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(finish(&p, &st), PINS_CODE_RESOURCE_EXHAUSTED);
    pins_status_clear(&st);
}

static void test_parse_bad_grpc_status(void **state)
{
    (void)state;
    static const struct {
        const char *v;
        int code;
    } rows[] = {{"abc", PINS_CODE_INTERNAL},      {"-1", PINS_CODE_INTERNAL},
                {"", PINS_CODE_INTERNAL},         {"1 ", PINS_CODE_INTERNAL},
                {"17", PINS_CODE_UNKNOWN},        {"999", PINS_CODE_UNKNOWN},
                {"16", PINS_CODE_UNAUTHENTICATED}};
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        client__parse p;
        client__parse_init(&p, MAX_MSG, MAX_HDR);
        ok_headers(&p);
        trailers(&p, rows[i].v, "%zz not%20percent");
        pins_status st = PINS_STATUS_INIT;
        assert_int_equal(finish(&p, &st), rows[i].code);
        if (rows[i].code != PINS_CODE_INTERNAL) /* a bad escape is kept as sent */
            assert_string_equal(st.message, "%zz not%20percent");
        pins_status_clear(&st);
    }
}

static void test_parse_wrong_content_type_is_unknown(void **state)
{
    (void)state;
    client__parse p;
    client__parse_init(&p, MAX_MSG, MAX_HDR);
    hdr(&p, ":status", "200");
    hdr(&p, "content-type", "application/grpcx");
    client__parse_end_block(&p);
    trailers(&p, "0", NULL);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(finish(&p, &st), PINS_CODE_UNKNOWN);
    pins_status_clear(&st);
    client__parse_init(&p, MAX_MSG, MAX_HDR);
    hdr(&p, ":status", "200");
    hdr(&p, "content-type", "application/grpc+proto");
    client__parse_end_block(&p);
    trailers(&p, "0", NULL);
    assert_int_equal(finish(&p, &st), PINS_CODE_OK);
    pins_status_clear(&st);
}

static void test_parse_header_block_bounded(void **state)
{
    (void)state;
    client__parse p;
    client__parse_init(&p, MAX_MSG, 200);
    hdr(&p, ":status", "200");
    char big[300];
    memset(big, 'v', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    assert_int_equal(client__parse_header(&p, "x-big", 5, big, strlen(big)),
                     PINS_CODE_RESOURCE_EXHAUSTED);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(finish(&p, &st), PINS_CODE_RESOURCE_EXHAUSTED);
    pins_status_clear(&st);
    /* Too many entries. */
    client__parse_init(&p, MAX_MSG, 1u << 20);
    hdr(&p, ":status", "200");
    int rv = 0;
    for (int i = 0; i < CLIENT_MAX_METADATA + 1 && rv == 0; i++)
        rv = client__parse_header(&p, "x-a", 3, "b", 1);
    assert_int_equal(rv, PINS_CODE_RESOURCE_EXHAUSTED);
    assert_int_equal(finish(&p, &st), PINS_CODE_RESOURCE_EXHAUSTED);
    pins_status_clear(&st);
}

static void test_parse_metadata_and_details(void **state)
{
    (void)state;
    client__parse p;
    client__parse_init(&p, MAX_MSG, MAX_HDR);
    ok_headers(&p);
    hdr(&p, "x-trace-bin", "AAEC"); /* 00 01 02 */
    hdr(&p, "grpc-status-details-bin", "CAU");
    trailers(&p, "3", "bad");
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(finish(&p, &st), PINS_CODE_INVALID_ARGUMENT);
    assert_int_equal(st.trailers.count, 1);
    assert_string_equal(st.trailers.items[0].name, "x-trace-bin");
    assert_int_equal(st.trailers.items[0].value_len, 3);
    assert_memory_equal(st.trailers.items[0].value, "\0\1\2", 3);
    assert_int_equal(st.details_len, 2);
    assert_memory_equal(st.details, "\x08\x05", 2);
    pins_status_clear(&st);
}

static int refuse(void *arg, const uint8_t *data, size_t len)
{
    (void)arg;
    (void)data;
    (void)len;
    return PINS_CODE_INTERNAL;
}

static void test_parse_callback_failure_sticks(void **state)
{
    (void)state;
    client__parse p;
    client__parse_init(&p, MAX_MSG, MAX_HDR);
    ok_headers(&p);
    uint8_t wire[32];
    size_t n = frame(wire, 0, "x", 1);
    assert_int_equal(client__parse_data(&p, wire, n, refuse, NULL), PINS_CODE_INTERNAL);
    trailers(&p, "0", NULL);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(finish(&p, &st), PINS_CODE_INTERNAL);
    assert_non_null(strstr(st.message, "undecodable"));
    pins_status_clear(&st);
}

static void test_parse_data_before_headers_is_internal(void **state)
{
    (void)state;
    client__parse p;
    client__parse_init(&p, MAX_MSG, MAX_HDR);
    seen s = {0};
    assert_int_equal(client__parse_data(&p, (const uint8_t *)"\0\0\0\0\0", 5, on_msg, &s),
                     PINS_CODE_INTERNAL);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(finish(&p, &st), PINS_CODE_INTERNAL);
    pins_status_clear(&st);
}

static void test_parse_non_grpc_body_is_not_parsed(void **state)
{
    (void)state;
    static const char html[] = "<html><body>503 Service Unavailable</body></html>";
    /* A proxy's 503 page: its bytes are not read as length prefixes. */
    client__parse p;
    seen s = {0};
    client__parse_init(&p, MAX_MSG, MAX_HDR);
    hdr(&p, ":status", "503");
    hdr(&p, "content-type", "text/html");
    assert_int_equal(client__parse_end_block(&p), 0);
    assert_int_equal(feed(&p, html, sizeof(html) - 1, 7, &s), 0);
    pins_status st = PINS_STATUS_INIT;
    assert_int_equal(client__parse_finish(&p, &st), PINS_CODE_UNAVAILABLE);
    assert_int_equal(st.http_status, 503);
    assert_null(strstr(st.message, "flags"));
    pins_status_clear(&st);
    client__parse_free(&p);
    /* A 200 with another content-type: no message reaches the callback. */
    uint8_t buf[64];
    size_t n = frame(buf, 0, "abc", 3);
    client__parse_init(&p, MAX_MSG, MAX_HDR);
    hdr(&p, ":status", "200");
    hdr(&p, "content-type", "text/plain");
    assert_int_equal(client__parse_end_block(&p), 0);
    assert_int_equal(feed(&p, buf, n, n, &s), 0);
    assert_int_equal(s.n, 0);
    assert_int_equal(client__parse_finish(&p, &st), PINS_CODE_UNKNOWN);
    pins_status_clear(&st);
    client__parse_free(&p);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_messages_split_at_every_byte),
        cmocka_unit_test(test_parse_length_over_max_is_resource_exhausted),
        cmocka_unit_test(test_parse_truncated_message_is_internal),
        cmocka_unit_test(test_parse_compressed_flag_is_internal),
        cmocka_unit_test(test_parse_missing_trailers_is_internal),
        cmocka_unit_test(test_parse_trailers_only_metadata_becomes_trailers),
        cmocka_unit_test(test_parse_http_status_table),
        cmocka_unit_test(test_parse_bad_grpc_status),
        cmocka_unit_test(test_parse_wrong_content_type_is_unknown),
        cmocka_unit_test(test_parse_header_block_bounded),
        cmocka_unit_test(test_parse_metadata_and_details),
        cmocka_unit_test(test_parse_callback_failure_sticks),
        cmocka_unit_test(test_parse_data_before_headers_is_internal),
        cmocka_unit_test(test_parse_non_grpc_body_is_not_parsed),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
