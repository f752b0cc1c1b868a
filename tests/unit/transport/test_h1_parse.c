/* tests/unit/transport/test_h1_parse.c: the HTTP/1.1 request parser without a connection
 * (transport/h1_parse.c): pipelining, bodies, limits and the request-smuggling refusals. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "transport/h1_parse.h"

#define MAX_BODY 64

typedef struct owner {
    pins_arena *arena;
    int begins;
    int continues;
} owner;

static pins_arena *on_begin(void *arg)
{
    owner *o = arg;
    o->begins++;
    pins_arena_reset(o->arena);
    return o->arena;
}

static void on_headers(void *arg, bool expect_continue)
{
    owner *o = arg;
    o->continues += expect_continue;
}

static const transport_h1_parser_hooks hooks = {.begin = on_begin, .headers_done = on_headers};

typedef struct fixture {
    owner o;
    transport_h1_parser p;
} fixture;

static int setup(void **state)
{
    static fixture f;
    memset(&f, 0, sizeof(f));
    f.o.arena = pins_arena_new(1u << 20);
    assert_non_null(f.o.arena);
    transport_h1_parser_init(&f.p, MAX_BODY, &hooks, &f.o);
    *state = &f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    transport_h1_parser_free(&f->p);
    pins_arena_free(f->o.arena);
    return 0;
}

/* Feeds s in pieces of at most piece bytes until a request or a rejection; *poff advances. */
static int feed(fixture *f, const char *s, size_t *poff, size_t piece)
{
    size_t len = strlen(s);
    while (*poff < len) {
        size_t n = len - *poff < piece ? len - *poff : piece;
        size_t used = 0;
        int r = transport_h1_parser_feed(&f->p, s + *poff, n, &used);
        *poff += used;
        if (r != TRANSPORT_H1_MORE)
            return r;
    }
    return TRANSPORT_H1_MORE;
}

static int feed_all(fixture *f, const char *s)
{
    size_t off = 0;
    return feed(f, s, &off, strlen(s));
}

static void assert_rejected(const char *req, int status)
{
    for (size_t piece = 1; piece <= 7; piece += 6) {
        fixture f = {.o.arena = pins_arena_new(1u << 20)};
        assert_non_null(f.o.arena);
        transport_h1_parser_init(&f.p, MAX_BODY, &hooks, &f.o);
        size_t off = 0;
        assert_int_equal(feed(&f, req, &off, piece), TRANSPORT_H1_REJECT);
        assert_int_equal(f.p.reject_status, status);
        assert_non_null(f.p.reject_body);
        transport_h1_parser_free(&f.p);
        pins_arena_free(f.o.arena);
    }
}

static const char *header(const transport_h1_parser *p, const char *name)
{
    for (size_t i = 0; i < p->nheaders; i++) {
        if (strcmp(p->headers[i].name, name) == 0)
            return p->headers[i].value;
    }
    return NULL;
}

/* ---- requests -------------------------------------------------------------------------------- */

static void test_h1_parse_pipelined_requests_one_at_a_time(void **state)
{
    fixture *f = *state;
    const char *in = "GET /a?x=1 HTTP/1.1\r\nHost: h\r\nX-Mixed-Case: V  \r\n\r\n"
                     "HEAD /b HTTP/1.1\r\nHost: h\r\n\r\n";
    size_t off = 0;
    assert_int_equal(feed(f, in, &off, 1000), TRANSPORT_H1_REQUEST);
    assert_string_equal(f->p.method, "GET");
    assert_string_equal(f->p.path, "/a?x=1");
    assert_string_equal(header(&f->p, "x-mixed-case"), "V");
    assert_true(f->p.keep_alive);
    transport_h1_parser_next(&f->p);
    assert_int_equal(feed(f, in, &off, 1000), TRANSPORT_H1_REQUEST);
    assert_string_equal(f->p.path, "/b");
    assert_true(f->p.head);
    assert_int_equal(off, strlen(in));
    assert_int_equal(f->o.begins, 2);
}

static void test_h1_parse_chunked_body_with_trailers_in_one_byte_pieces(void **state)
{
    fixture *f = *state;
    const char *in = "POST /p HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                     "3;e=1\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n";
    size_t off = 0;
    assert_int_equal(feed(f, in, &off, 1), TRANSPORT_H1_REQUEST);
    assert_int_equal(f->p.body_len, 5);
    assert_memory_equal(f->p.body, "abcde", 5);
    assert_null(header(&f->p, "x-t")); /* trailers are not request headers */
}

static void test_h1_parse_expect_continue_only_with_a_body(void **state)
{
    fixture *f = *state;
    assert_int_equal(feed_all(f, "POST /p HTTP/1.1\r\nHost: h\r\nExpect: 100-Continue\r\n"
                                 "Content-Length: 2\r\n\r\nok"),
                     TRANSPORT_H1_REQUEST);
    assert_int_equal(f->o.continues, 1);
    transport_h1_parser_next(&f->p);
    assert_int_equal(feed_all(f, "GET / HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n\r\n"),
                     TRANSPORT_H1_REQUEST);
    assert_int_equal(f->o.continues, 1);
}

static void test_h1_parse_http10_and_absolute_form(void **state)
{
    fixture *f = *state;
    assert_int_equal(feed_all(f, "GET http://example.com:80?q=1 HTTP/1.0\r\n\r\n"),
                     TRANSPORT_H1_REQUEST);
    assert_string_equal(f->p.path, "/?q=1");
    assert_true(f->p.http10);
    assert_false(f->p.keep_alive);
}

/* ---- refusals -------------------------------------------------------------------------------- */

static void test_h1_parse_rejects_smuggling_shapes(void **state)
{
    static const char *const bad[] = {
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nContent-Length: 1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1\r\nContent-Length: 1\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 1, 2\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n\r\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding:\r\n chunked\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX : a\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: h\r\n\rGET /x HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\nHost: h\n\n",
        "POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n1\r\naXX0\r\n\r\n",
        "GET / HTTP/1.1\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        "GET nowhere HTTP/1.1\r\nHost: h\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        assert_rejected(bad[i], 400);
}

static void test_h1_parse_limits(void **state)
{
    static char big[TRANSPORT_H1_MAX_TARGET + 64];
    char path[TRANSPORT_H1_MAX_TARGET + 1];
    memset(path, 'a', sizeof(path) - 1);
    path[sizeof(path) - 1] = '\0';
    snprintf(big, sizeof(big), "GET /%s HTTP/1.1\r\nHost: h\r\n\r\n", path);
    assert_rejected(big, 414);
    assert_rejected("POST / HTTP/1.1\r\nHost: h\r\nContent-Length: 65\r\n\r\n", 413);
    assert_rejected("POST / HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
                    "40\r\n0123456789012345678901234567890123456789012345678901234567890123\r\n"
                    "1\r\nx\r\n0\r\n\r\n",
                    413);
    assert_rejected("GET / HTTP/2.0\r\nHost: h\r\n\r\n", 505);
    assert_rejected("CONNECT h:1 HTTP/1.1\r\nHost: h:1\r\n\r\n", 501);
}

static void test_h1_parse_header_count_limit(void **state)
{
    char req[4096];
    size_t n = (size_t)snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: h\r\n");
    for (int i = 0; i < 99; i++)
        n += (size_t)snprintf(req + n, sizeof(req) - n, "X-%d: v\r\n", i);
    snprintf(req + n, sizeof(req) - n, "\r\n");
    fixture *f = *state;
    assert_int_equal(feed_all(f, req), TRANSPORT_H1_REQUEST);
    assert_int_equal(f->p.nheaders, TRANSPORT_H1_MAX_HEADERS);
    snprintf(req + n, sizeof(req) - n, "X-last: v\r\n\r\n");
    assert_rejected(req, 431);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_h1_parse_pipelined_requests_one_at_a_time, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_parse_chunked_body_with_trailers_in_one_byte_pieces,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_h1_parse_expect_continue_only_with_a_body, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_h1_parse_http10_and_absolute_form, setup, teardown),
        cmocka_unit_test(test_h1_parse_rejects_smuggling_shapes),
        cmocka_unit_test(test_h1_parse_limits),
        cmocka_unit_test_setup_teardown(test_h1_parse_header_count_limit, setup, teardown),
    };
    return cmocka_run_group_tests_name("transport/h1_parse", tests, NULL, NULL);
}
