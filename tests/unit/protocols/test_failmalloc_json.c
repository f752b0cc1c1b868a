/* tests/unit/protocols/test_failmalloc_json.c: allocation-failure runs over the proto3 JSON codec
 * (protocols/json.c; STYLE 24). Each allocation that decoding (arena), binding a text value (arena)
 * and encoding (malloc'd buffer) make fails in turn (tests/unit/support/failmalloc.h): every such
 * run must fail with PINS_ENOMEM or PINS_ETOO_LARGE, leave the out-parameters as the contract
 * says, and free what it allocated (ASan checks the leaks at exit). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "protocols/json.h"
#include "common/error.h"
#include "failmalloc.h"
#include "memorypins/v1/memory_pins.pb-c.h"

#define DEPTH 100

static const char upsert_json[] =
    "{\"tenant_id\":\"tenant-a\",\"key\":\"profile/\\u00e9t\\u00e9\",\"source\":\"agent\","
    "\"ttlSeconds\":3600,\"expected_version\":\"42\","
    "\"value\":{\"name\":\"Ada\",\"age\":36,\"ratio\":0.125,\"ok\":true,\"none\":null,"
    "\"tags\":[\"a\",\"b\",[1,2,{\"deep\":[[[\"x\"]]]}]],"
    "\"nested\":{\"a\":{\"b\":{\"c\":{\"d\":\"\\ud83d\\ude00 \\\"q\\\" \\n\"}}}},"
    "\"empty_obj\":{},\"empty_arr\":[],\"big\":1e300,\"neg\":-17}}";

typedef struct json_run {
    const ProtobufCMessageDescriptor *desc;
    const char *json;
    const proto_json_options *opt;
    pins_arena *arena;
    ProtobufCMessage *msg; /* decoded; the subject of encode and set_field */
    ProtobufCMessage *out; /* what a decode run produced */
    proto_json_error err;
    pins_buf buf;
    char *expected; /* the encoding without failure */
} json_run;

static int decode(void *state)
{
    json_run *r = state;
    r->out = (ProtobufCMessage *)&r->out; /* a sentinel: must stay on failure */
    r->arena = pins_arena_new(1u << 20);
    if (r->arena == NULL)
        return PINS_ENOMEM;
    memset(&r->err, 0, sizeof(r->err));
    return proto_json_decode(r->arena, r->desc, r->json, strlen(r->json), DEPTH, &r->out, &r->err);
}

static void check_decode(void *state, int rv, bool fired)
{
    json_run *r = state;
    if (!fired) {
        assert_int_equal(rv, 0);
        assert_non_null(r->out);
        assert_ptr_equal(r->out->descriptor, r->desc);
    } else {
        assert_true(rv == PINS_ENOMEM || rv == PINS_ETOO_LARGE);
        assert_ptr_equal(r->out, (ProtobufCMessage *)&r->out);
    }
    pins_arena_free(r->arena);
    r->arena = NULL;
}

static void test_failmalloc_json_decode_upsert_request(void **state)
{
    (void)state;
    json_run r = {.desc = &memorypins__v1__upsert_pin_request__descriptor, .json = upsert_json};
    size_t n = failmalloc_each(decode, check_decode, &r);
    print_message("json decode: %zu allocations failed in turn\n", n);
}

static void test_failmalloc_json_decode_list_request(void **state)
{
    (void)state;
    json_run r = {.desc = &memorypins__v1__list_pins_request__descriptor,
                  .json = "{\"tenant_id\":\"t\",\"prefix\":\"p/\",\"limit\":100,"
                          "\"page_token\":\"abc\",\"unknown\":{\"x\":[1,2,3]}}"};
    size_t n = failmalloc_each(decode, check_decode, &r);
    print_message("json decode list: %zu allocations failed in turn\n", n);
}

/* ---- encoding ------------------------------------------------------------------------------- */

static void decode_subject(json_run *r)
{
    r->arena = pins_arena_new(1u << 20);
    assert_non_null(r->arena);
    proto_json_error err;
    assert_int_equal(
        proto_json_decode(r->arena, r->desc, r->json, strlen(r->json), DEPTH, &r->msg, &err), 0);
}

static int encode(void *state)
{
    json_run *r = state;
    pins_buf_init(&r->buf, SIZE_MAX);
    return proto_json_encode(r->msg, r->opt, &r->buf);
}

static void check_encode(void *state, int rv, bool fired)
{
    json_run *r = state;
    if (!fired) {
        assert_int_equal(rv, 0);
        assert_non_null(pins_buf_ptr(&r->buf));
        r->expected = strdup(pins_buf_ptr(&r->buf));
        assert_non_null(r->expected);
    } else {
        assert_int_equal(rv, PINS_ENOMEM);
        assert_int_equal(pins_buf_len(&r->buf), 0);
    }
    pins_buf_free(&r->buf);
}

static void encode_runs(const proto_json_options *opt, const char *name)
{
    json_run r = {
        .desc = &memorypins__v1__upsert_pin_request__descriptor, .json = upsert_json, .opt = opt};
    decode_subject(&r);
    size_t n = failmalloc_each(encode, check_encode, &r);
    assert_non_null(strstr(r.expected, "\"deep\":[[[\"x\"]]]"));
    print_message("json encode %s: %zu allocations failed in turn\n", name, n);
    free(r.expected);
    pins_arena_free(r.arena);
}

static void test_failmalloc_json_encode_rest(void **state)
{
    (void)state;
    encode_runs(&proto_json_rest, "rest");
}

static void test_failmalloc_json_encode_canonical(void **state)
{
    (void)state;
    encode_runs(&proto_json_canonical, "canonical");
}

/* ---- binding a text value (REST query and path parameters) --------------------------------- */

typedef struct bind_run {
    pins_arena *arena;
    ProtobufCMessage *msg;
} bind_run;

static int bind(void *state)
{
    bind_run *r = state;
    r->arena = pins_arena_new(1u << 20);
    if (r->arena == NULL)
        return PINS_ENOMEM;
    proto_json_error err;
    int rv = proto_json_decode(r->arena, &memorypins__v1__upsert_pin_request__descriptor, "{}", 2,
                               DEPTH, &r->msg, &err);
    if (rv == 0)
        rv = proto_json_set_field(r->arena, r->msg, "value",
                                  "{\"a\":[1,\"two\",{\"three\":3}],\"b\":{\"c\":null}}", 42, &err);
    if (rv == 0)
        rv = proto_json_set_field(r->arena, r->msg, "ttl_seconds", "60", 2, &err);
    if (rv == 0)
        rv = proto_json_set_field(r->arena, r->msg, "key", "k/1", 3, &err);
    return rv;
}

static void check_bind(void *state, int rv, bool fired)
{
    bind_run *r = state;
    if (!fired) {
        assert_int_equal(rv, 0);
        const Memorypins__V1__UpsertPinRequest *req = (const void *)r->msg;
        assert_non_null(req->value);
        assert_int_equal(req->value->n_fields, 2);
        assert_non_null(req->ttl_seconds);
        assert_int_equal(req->ttl_seconds->value, 60);
        assert_string_equal(req->key, "k/1");
    } else {
        assert_true(rv == PINS_ENOMEM || rv == PINS_ETOO_LARGE);
    }
    pins_arena_free(r->arena);
    r->arena = NULL;
}

static void test_failmalloc_json_set_field(void **state)
{
    (void)state;
    bind_run r = {0};
    size_t n = failmalloc_each(bind, check_bind, &r);
    print_message("json set_field: %zu allocations failed in turn\n", n);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failmalloc_json_decode_upsert_request),
        cmocka_unit_test(test_failmalloc_json_decode_list_request),
        cmocka_unit_test(test_failmalloc_json_encode_rest),
        cmocka_unit_test(test_failmalloc_json_encode_canonical),
        cmocka_unit_test(test_failmalloc_json_set_field),
    };
    return cmocka_run_group_tests_name("failmalloc_json", tests, NULL, NULL);
}
