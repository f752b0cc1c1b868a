/* tests/unit/protocols/test_failmalloc_h1.c: allocation-failure runs over the HTTP/1.1 request
 * parser (transport/h1_parse.c; STYLE 24). Every allocation the parser and its owner's arena make
 * while reading a connection's requests fails in turn (tests/unit/support/failmalloc.h): each run
 * must answer the requests before the failure exactly as without it, then refuse with 503 and the
 * out-of-memory body, and free everything (ASan checks the leaks at exit). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "transport/h1_parse.h"
#include "failmalloc.h"

#define MAX_BODY  (1u << 16)
#define MAX_SEEN  8
#define ARENA_MAX (1u << 20)

typedef struct run {
    const char *input; /* the bytes of the connection */
    size_t piece;      /* fed in pieces of at most this many bytes */
    /* Filled by the operation. */
    pins_arena *arena; /* made by the begin hook, as transport/h1.c makes a call's */
    size_t nseen;
    char seen[MAX_SEEN][128]; /* "METHOD path nheaders body_len" of each request */
    int reject_status;
    const char *reject_body;
    /* Filled by the counting run. */
    size_t nexpected;
    char expected[MAX_SEEN][128];
} run;

static pins_arena *on_begin(void *owner)
{
    run *r = owner;
    if (r->arena == NULL)
        r->arena = pins_arena_new(ARENA_MAX);
    else
        pins_arena_reset(r->arena);
    return r->arena;
}

static void on_headers(void *owner, bool expect_continue)
{
    (void)owner;
    (void)expect_continue;
}

static const transport_h1_parser_hooks hooks = {.begin = on_begin, .headers_done = on_headers};

/* Reads every request of r->input as transport/h1.c does; returns the status of a rejection, or 0.
 */
static int parse_connection(void *state)
{
    run *r = state;
    transport_h1_parser p;
    transport_h1_parser_init(&p, MAX_BODY, &hooks, r);
    r->nseen = 0;
    r->reject_status = 0;
    r->reject_body = NULL;
    size_t len = strlen(r->input), off = 0;
    while (off < len) {
        size_t n = len - off < r->piece ? len - off : r->piece;
        size_t used = 0;
        int res = transport_h1_parser_feed(&p, r->input + off, n, &used);
        off += used;
        if (res == TRANSPORT_H1_MORE)
            continue;
        if (res == TRANSPORT_H1_REJECT) {
            r->reject_status = p.reject_status;
            r->reject_body = p.reject_body;
            break;
        }
        if (r->nseen < MAX_SEEN)
            snprintf(r->seen[r->nseen], sizeof(r->seen[0]), "%s %s %zu %zu", p.method, p.path,
                     p.nheaders, p.body_len);
        r->nseen++;
        transport_h1_parser_next(&p);
    }
    transport_h1_parser_free(&p);
    return r->reject_status;
}

static void check_connection(void *state, int rv, bool fired)
{
    run *r = state;
    if (!fired) {
        assert_int_equal(rv, 0);
        assert_true(r->nseen > 0 && r->nseen <= MAX_SEEN);
        r->nexpected = r->nseen;
        memcpy(r->expected, r->seen, sizeof(r->seen));
    } else {
        /* The requests before the failure are unchanged; the failure itself is a 503. */
        assert_int_equal(rv, 503);
        assert_non_null(r->reject_body);
        assert_non_null(strstr(r->reject_body, "out of memory"));
        assert_true(r->nseen < r->nexpected);
        for (size_t i = 0; i < r->nseen; i++)
            assert_string_equal(r->seen[i], r->expected[i]);
    }
    pins_arena_free(r->arena);
    r->arena = NULL;
}

/* Three pipelined requests: headers, a Content-Length body, a chunked body with trailers. */
static const char pipelined[] = "POST /memorypins.v1.MemoryPins/GetPin HTTP/1.1\r\n"
                                "Host: pins.example\r\n"
                                "Content-Type: application/json\r\n"
                                "X-Request-Id: r-1\r\n"
                                "Content-Length: 27\r\n"
                                "\r\n"
                                "{\"tenant_id\":\"t\",\"key\":\"k\"}"
                                "GET /api/v1/memory/pins?tenant_id=t&limit=10 HTTP/1.1\r\n"
                                "Host: pins.example\r\n"
                                "Authorization: Bearer abc.def.ghi\r\n"
                                "Accept: */*\r\n"
                                "\r\n"
                                "POST /api/v1/memory/pins HTTP/1.1\r\n"
                                "Host: pins.example\r\n"
                                "Transfer-Encoding: chunked\r\n"
                                "\r\n"
                                "5\r\n{\"ten\r\n"
                                "19\r\nant_id\":\"t\",\"key\":\"k2\",\"v\r\n"
                                "c\r\nalue\":{}}   \r\n"
                                "0\r\n"
                                "X-Trailer: t\r\n"
                                "\r\n";

static void test_failmalloc_h1_pipelined_requests_whole(void **state)
{
    (void)state;
    run r = {.input = pipelined, .piece = sizeof(pipelined)};
    size_t n = failmalloc_each(parse_connection, check_connection, &r);
    assert_int_equal(r.nexpected, 3);
    print_message("h1 whole: %zu allocations failed in turn\n", n);
}

/* Fed 7 bytes at a time, the scratch buffer and the body grow piece by piece. */
static void test_failmalloc_h1_pipelined_requests_in_pieces(void **state)
{
    (void)state;
    run r = {.input = pipelined, .piece = 7};
    size_t n = failmalloc_each(parse_connection, check_connection, &r);
    assert_int_equal(r.nexpected, 3);
    print_message("h1 in pieces: %zu allocations failed in turn\n", n);
}

/* Many headers (the header list grows) and a long target and body. */
static void test_failmalloc_h1_large_request(void **state)
{
    (void)state;
    static char input[32768];
    size_t off = 0;
    off += (size_t)snprintf(input + off, sizeof(input) - off, "PUT /api/v1/memory/pins/");
    for (int i = 0; i < 600; i++)
        input[off++] = (char)('a' + i % 26);
    off += (size_t)snprintf(input + off, sizeof(input) - off, " HTTP/1.1\r\nHost: h\r\n");
    for (int i = 0; i < 60; i++)
        off +=
            (size_t)snprintf(input + off, sizeof(input) - off, "X-Header-%d: value %d\r\n", i, i);
    off += (size_t)snprintf(input + off, sizeof(input) - off, "Content-Length: 5000\r\n\r\n");
    for (int i = 0; i < 5000; i++)
        input[off++] = 'b';
    input[off] = '\0';
    run r = {.input = input, .piece = 100};
    size_t n = failmalloc_each(parse_connection, check_connection, &r);
    assert_int_equal(r.nexpected, 1);
    print_message("h1 large request: %zu allocations failed in turn\n", n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failmalloc_h1_pipelined_requests_whole),
        cmocka_unit_test(test_failmalloc_h1_pipelined_requests_in_pieces),
        cmocka_unit_test(test_failmalloc_h1_large_request),
    };
    return cmocka_run_group_tests_name("failmalloc_h1", tests, NULL, NULL);
}
