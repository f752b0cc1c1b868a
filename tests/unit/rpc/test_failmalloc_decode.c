/* tests/unit/rpc/test_failmalloc_decode.c: allocation-failure runs over request decoding: the
 * protobuf wire pre-check (common/pbwire.c) and the unpacking into the call's arena behind it
 * (rpc/decode.c; STYLE 24). The pre-check must allocate nothing; each allocation of the decode
 * fails in turn (tests/unit/support/failmalloc.h), and every such run must refuse the message
 * with a client-visible reason and *pmsg untouched (ASan checks the leaks at exit). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/pbwire.h"
#include "failmalloc.h"
#include "memorypins/v1/memory_pins.pb-c.h"
#include "rpc/rpc_int.h"

#define ARENA_LIMIT (8u << 20)

/* An UpsertPinRequest whose value holds every kind of Value, nested lists and objects. */
static uint8_t *upsert_wire(size_t *plen, const char *key)
{
    static Google__Protobuf__Value v[8];
    static Google__Protobuf__Struct inner = GOOGLE__PROTOBUF__STRUCT__INIT, top;
    static Google__Protobuf__Struct__FieldsEntry e[6], *pe[6], ie, *pie[1];
    static Google__Protobuf__ListValue list = GOOGLE__PROTOBUF__LIST_VALUE__INIT;
    static Google__Protobuf__Value *items[3];
    for (size_t i = 0; i < 8; i++)
        google__protobuf__value__init(&v[i]);
    v[0].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
    v[0].string_value = "Ada";
    v[1].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
    v[1].number_value = 36;
    v[2].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
    v[2].bool_value = 1;
    v[3].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
    v[4].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
    v[4].string_value = "x";
    v[5].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
    v[5].number_value = 2.5;
    items[0] = &v[4];
    items[1] = &v[5];
    items[2] = &v[6];
    v[6].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
    v[6].struct_value = &inner;
    google__protobuf__struct__fields_entry__init(&ie);
    ie.key = "deep";
    ie.value = &v[2];
    pie[0] = &ie;
    inner.n_fields = 1;
    inner.fields = pie;
    list.n_values = 3;
    list.values = items;
    v[7].kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
    v[7].list_value = &list;
    static const char *const names[6] = {"name", "age", "ok", "none", "tags", "more"};
    static const int which[6] = {0, 1, 2, 3, 7, 6};
    for (size_t i = 0; i < 6; i++) {
        google__protobuf__struct__fields_entry__init(&e[i]);
        e[i].key = (char *)names[i];
        e[i].value = &v[which[i]];
        pe[i] = &e[i];
    }
    google__protobuf__struct__init(&top);
    top.n_fields = 6;
    top.fields = pe;
    Memorypins__V1__UpsertPinRequest req = MEMORYPINS__V1__UPSERT_PIN_REQUEST__INIT;
    req.tenant_id = "tenant-a";
    req.key = (char *)key;
    req.source = "agent";
    req.value = &top;
    size_t n = memorypins__v1__upsert_pin_request__get_packed_size(&req);
    uint8_t *out = malloc(n);
    assert_non_null(out);
    assert_int_equal(memorypins__v1__upsert_pin_request__pack(&req, out), n);
    *plen = n;
    return out;
}

typedef struct decode_run {
    rpc_worker worker;
    rpc_call *call;
    const uint8_t *wire;
    size_t len;
    int want; /* the result without failure */
    ProtobufCMessage *msg;
    const char *why;
} decode_run;

static int decode(void *state)
{
    decode_run *r = state;
    r->call = rpc_call_new(&r->worker, NULL, NULL, NULL, ARENA_LIMIT);
    if (r->call == NULL)
        return PINS_ENOMEM;
    r->msg = (ProtobufCMessage *)&r->msg; /* a sentinel: must stay on failure */
    r->why = NULL;
    return rpc_call_decode(r->call, &memorypins__v1__upsert_pin_request__descriptor, r->wire,
                           r->len, &r->msg, &r->why);
}

static void check_decode(void *state, int rv, bool fired)
{
    decode_run *r = state;
    if (fired && r->call == NULL) {
        assert_int_equal(rv, PINS_ENOMEM); /* the call itself could not be made */
        return;
    }
    if (!fired || r->want != 0) {
        /* A refusal does not depend on memory; a failed allocation may only change its text. */
        assert_int_equal(rv, r->want);
    } else {
        assert_true(rv == PINS_EINVALID_ARGUMENT || rv == PINS_ETOO_LARGE || rv == PINS_ENOMEM);
    }
    if (rv == 0) {
        const Memorypins__V1__UpsertPinRequest *req = (const void *)r->msg;
        assert_ptr_equal(r->msg->descriptor, &memorypins__v1__upsert_pin_request__descriptor);
        assert_string_equal(req->tenant_id, "tenant-a");
        assert_int_equal(req->value->n_fields, 6);
    } else {
        assert_ptr_equal(r->msg, (ProtobufCMessage *)&r->msg);
        assert_non_null(r->why);
        assert_true(strlen(r->why) > 0);
    }
    rpc_call_abandon(r->call);
    r->call = NULL;
}

static void test_failmalloc_decode_pbwire_check_allocates_nothing(void **state)
{
    (void)state;
    size_t len;
    uint8_t *wire = upsert_wire(&len, "k");
    failmalloc_arm(1);
    int rv = pbwire_check(wire, len, &memorypins__v1__upsert_pin_request__descriptor,
                          RPC_MAX_PROTO_DEPTH);
    assert_int_equal(failmalloc_disarm(), 0);
    assert_int_equal(rv, 0);
    free(wire);
}

static void test_failmalloc_decode_upsert_request(void **state)
{
    (void)state;
    decode_run r = {.want = 0};
    uint8_t *wire = upsert_wire(&r.len, "profile/k");
    r.wire = wire;
    size_t n = failmalloc_each(decode, check_decode, &r);
    print_message("decode: %zu allocations failed in turn\n", n);
    free(wire);
}

/* A key that is not UTF-8: the refusal names the field, in memory of the call. */
static void test_failmalloc_decode_refusal_naming_the_field(void **state)
{
    (void)state;
    decode_run r = {.want = PINS_EINVALID_ARGUMENT};
    uint8_t *wire = upsert_wire(&r.len, "bad\xff key");
    r.wire = wire;
    size_t n = failmalloc_each(decode, check_decode, &r);
    print_message("decode refusal: %zu allocations failed in turn\n", n);
    free(wire);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_failmalloc_decode_pbwire_check_allocates_nothing),
        cmocka_unit_test(test_failmalloc_decode_upsert_request),
        cmocka_unit_test(test_failmalloc_decode_refusal_naming_the_field),
    };
    return cmocka_run_group_tests_name("failmalloc_decode", tests, NULL, NULL);
}
