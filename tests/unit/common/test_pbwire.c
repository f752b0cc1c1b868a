/* tests/unit/common/test_pbwire.c: the wire-format depth and shape check. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdlib.h>
#include <string.h>

#include "common/error.h"
#include "common/pbstruct.h"
#include "common/pbwire.h"
#include "google/protobuf/struct.pb-c.h"
#include "memorypins/v1/memory_pins.pb-c.h"

#define E PINS_EINVALID_ARGUMENT

static size_t put_varint(uint8_t *out, uint64_t v)
{
    size_t n = 0;
    do {
        uint8_t b = v & 0x7F;
        v >>= 7;
        out[n++] = b | (v != 0 ? 0x80 : 0);
    } while (v != 0);
    return n;
}

static int check_upsert(const uint8_t *buf, size_t len)
{
    return pbwire_check(buf, len, &memorypins__v1__upsert_pin_request__descriptor, 64);
}

/* A Value -> ListValue -> Value -> ... chain of levels messages, built from the inside out at the
 * end of a malloc'd buffer; *pstart gets where it begins. */
static uint8_t *chain(int levels, uint8_t **pstart, size_t *plen)
{
    size_t cap = (size_t)levels * 6 + 16;
    uint8_t *buf = malloc(cap);
    assert_non_null(buf);
    size_t start = cap, len = 0;
    for (int i = 1; i < levels; i++) {
        /* Wrap the bytes so far in their parent at level levels - i from the outside: odd levels
         * are Values (the child is list_value = 6), even ones ListValues (values = 1). */
        uint8_t hdr[12];
        uint32_t field = (levels - i) % 2 == 1 ? 6 : 1;
        size_t h = put_varint(hdr, field << 3 | 2);
        h += put_varint(hdr + h, len);
        start -= h;
        memcpy(buf + start, hdr, h);
        len += h;
    }
    *pstart = buf + start;
    *plen = len;
    return buf;
}

static void test_pbwire_accepts_valid_messages(void **state)
{
    (void)state;
    Google__Protobuf__Value leaf = GOOGLE__PROTOBUF__VALUE__INIT;
    leaf.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
    leaf.number_value = 1.5;
    Google__Protobuf__Value *leaves[] = {&leaf, &leaf};
    Google__Protobuf__ListValue list = GOOGLE__PROTOBUF__LIST_VALUE__INIT;
    list.n_values = 2;
    list.values = leaves;
    Google__Protobuf__Value lv = GOOGLE__PROTOBUF__VALUE__INIT;
    lv.kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
    lv.list_value = &list;
    Google__Protobuf__Struct__FieldsEntry e = GOOGLE__PROTOBUF__STRUCT__FIELDS_ENTRY__INIT;
    e.key = "k";
    e.value = &lv;
    Google__Protobuf__Struct__FieldsEntry *es[] = {&e};
    Google__Protobuf__Struct s = GOOGLE__PROTOBUF__STRUCT__INIT;
    s.n_fields = 1;
    s.fields = es;
    Google__Protobuf__Int32Value ttl = GOOGLE__PROTOBUF__INT32_VALUE__INIT;
    ttl.value = -5;
    Memorypins__V1__UpsertPinRequest req = MEMORYPINS__V1__UPSERT_PIN_REQUEST__INIT;
    req.tenant_id = "t";
    req.key = "key";
    req.value = &s;
    req.ttl_seconds = &ttl;
    uint8_t buf[256];
    size_t n = memorypins__v1__upsert_pin_request__pack(&req, buf);
    assert_int_equal(check_upsert(buf, n), 0);
    /* UpsertPinRequest > Struct > FieldsEntry > Value > ListValue > Value: 6 levels. */
    assert_int_equal(pbwire_check(buf, n, &memorypins__v1__upsert_pin_request__descriptor, 6), 0);
    assert_int_equal(pbwire_check(buf, n, &memorypins__v1__upsert_pin_request__descriptor, 5), E);
    assert_int_equal(check_upsert(buf, 0), 0);
    assert_int_equal(pbwire_check(NULL, 0, &memorypins__v1__get_pin_request__descriptor, 1), 0);
    assert_int_equal(pbwire_check(buf, n, &memorypins__v1__upsert_pin_request__descriptor, 0), E);
}

static void test_pbwire_rejects_nesting_deeper_than_max(void **state)
{
    (void)state;
    uint8_t *start;
    size_t len;
    uint8_t *buf = chain(100, &start, &len);
    const ProtobufCMessageDescriptor *d = &google__protobuf__value__descriptor;
    assert_int_equal(pbwire_check(start, len, d, 100), 0);
    assert_int_equal(pbwire_check(start, len, d, 99), E);
    assert_int_equal(pbwire_check(start, len, d, 1), E);
    free(buf);
}

static void test_pbwire_rejects_hostile_half_million_deep_message(void **state)
{
    (void)state;
    uint8_t *start;
    size_t len;
    uint8_t *buf = chain(500000, &start, &len);
    assert_true(len < 4u << 20);
    assert_int_equal(pbwire_check(start, len, &google__protobuf__value__descriptor, 200), E);
    /* A max_depth beyond the ceiling is capped, not trusted. */
    assert_int_equal(pbwire_check(start, len, &google__protobuf__value__descriptor, 1 << 30), E);
    free(buf);
}

static void test_pbwire_rejects_malformed_varints(void **state)
{
    (void)state;
    /* Field 9 is unknown to UpsertPinRequest; its varint is 11 bytes long. */
    const uint8_t long_varint[] = {9 << 3, 0xff, 0xff, 0xff, 0xff, 0xff,
                                   0xff,   0xff, 0xff, 0xff, 0xff, 0x01};
    assert_int_equal(check_upsert(long_varint, sizeof(long_varint)), E);
    const uint8_t ten_byte_varint[] = {9 << 3, 0xff, 0xff, 0xff, 0xff, 0xff,
                                       0xff,   0xff, 0xff, 0xff, 0x01};
    assert_int_equal(check_upsert(ten_byte_varint, sizeof(ten_byte_varint)), 0);
    const uint8_t cut_varint[] = {9 << 3, 0xff, 0xff};
    assert_int_equal(check_upsert(cut_varint, sizeof(cut_varint)), E);
    const uint8_t cut_tag[] = {0x80};
    assert_int_equal(check_upsert(cut_tag, sizeof(cut_tag)), E);
    const uint8_t long_tag[] = {0x88, 0x80, 0x80, 0x80, 0x80, 0x01, 0x00};
    assert_int_equal(check_upsert(long_tag, sizeof(long_tag)), E);
    const uint8_t field_zero[] = {0 << 3 | 0, 1};
    assert_int_equal(check_upsert(field_zero, sizeof(field_zero)), E);
}

static void test_pbwire_rejects_lengths_past_the_end(void **state)
{
    (void)state;
    const uint8_t string_too_long[] = {1 << 3 | 2, 5, 'a', 'b'};
    assert_int_equal(check_upsert(string_too_long, sizeof(string_too_long)), E);
    const uint8_t huge_length[] = {1 << 3 | 2, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f};
    assert_int_equal(check_upsert(huge_length, sizeof(huge_length)), E);
    /* value (a Struct) of length 2 whose entry claims 3 bytes: it runs past its parent even
     * though the buffer has bytes left. */
    const uint8_t child_past_parent[] = {3 << 3 | 2, 2, 1 << 3 | 2, 3, 0, 0, 0};
    assert_int_equal(check_upsert(child_past_parent, sizeof(child_past_parent)), E);
    const uint8_t cut_fixed64[] = {9 << 3 | 1, 1, 2, 3, 4, 5, 6, 7};
    assert_int_equal(check_upsert(cut_fixed64, sizeof(cut_fixed64)), E);
    const uint8_t cut_fixed32[] = {9 << 3 | 5, 1, 2, 3};
    assert_int_equal(check_upsert(cut_fixed32, sizeof(cut_fixed32)), E);
}

static void test_pbwire_rejects_groups_and_undefined_wire_types(void **state)
{
    (void)state;
    for (uint8_t wire = 3; wire <= 7; wire++) {
        if (wire == 5)
            continue;
        const uint8_t msg[] = {(uint8_t)(9 << 3 | wire), 0, 0, 0, 0};
        assert_int_equal(check_upsert(msg, sizeof(msg)), E);
    }
    /* A message field sent with a scalar wire type. */
    const uint8_t value_as_varint[] = {3 << 3 | 0, 1};
    assert_int_equal(check_upsert(value_as_varint, sizeof(value_as_varint)), E);
}

static void test_pbwire_skips_unknown_fields(void **state)
{
    (void)state;
    uint8_t buf[64];
    size_t n = 0;
    buf[n++] = 1 << 3 | 2; /* tenant_id "t" */
    buf[n++] = 1;
    buf[n++] = 't';
    n += put_varint(buf + n, 100u << 3 | 0); /* unknown varint */
    n += put_varint(buf + n, 1ull << 62);
    n += put_varint(buf + n, 101u << 3 | 1); /* unknown fixed64 */
    memset(buf + n, 0xee, 8);
    n += 8;
    n += put_varint(buf + n, 536870911u << 3 | 2); /* unknown bytes, highest field number */
    buf[n++] = 4;
    memcpy(buf + n, "\x0b\x0c\xff\xff", 4); /* not a valid message: must not be entered */
    n += 4;
    n += put_varint(buf + n, 103u << 3 | 5); /* unknown fixed32 */
    memset(buf + n, 0, 4);
    n += 4;
    buf[n++] = 2 << 3 | 2; /* key: bytes that look like a group tag, but it is a string */
    buf[n++] = 2;
    buf[n++] = 0x0b;
    buf[n++] = 0x0c;
    const ProtobufCMessageDescriptor *d = &memorypins__v1__get_pin_request__descriptor;
    assert_int_equal(pbwire_check(buf, n, d, 1), 0);
    assert_int_equal(pbwire_check(buf, n, NULL, 1), 0);
    Memorypins__V1__GetPinRequest *r = memorypins__v1__get_pin_request__unpack(NULL, n, buf);
    assert_non_null(r);
    assert_string_equal(r->tenant_id, "t");
    memorypins__v1__get_pin_request__free_unpacked(r, NULL);
}

static void test_pbwire_pin_value_of_json_depth_64_needs_193_levels(void **state)
{
    (void)state;
    /* {"a":{"a":...{"a":1}...}}: 64 objects, the deepest a pin value may nest. */
    char json[64 * 6 + 16];
    size_t n = 0;
    for (int i = 0; i < 64; i++) {
        memcpy(json + n, i < 63 ? "{\"a\":" : "{\"a\":1", i < 63 ? 5 : 6);
        n += i < 63 ? 5 : 6;
    }
    memset(json + n, '}', 64);
    n += 64;
    pins_arena *a = pins_arena_new(0);
    assert_non_null(a);
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(pbstruct_from_json(a, json, n, 64, &s), 0);
    Memorypins__V1__UpsertPinRequest req = MEMORYPINS__V1__UPSERT_PIN_REQUEST__INIT;
    req.value = s;
    size_t len = memorypins__v1__upsert_pin_request__get_packed_size(&req);
    uint8_t *buf = pins_arena_alloc(a, len);
    assert_non_null(buf);
    memorypins__v1__upsert_pin_request__pack(&req, buf);
    const ProtobufCMessageDescriptor *d = &memorypins__v1__upsert_pin_request__descriptor;
    assert_int_equal(pbwire_check(buf, len, d, 193), 0);
    assert_int_equal(pbwire_check(buf, len, d, 192), E);
    pins_arena_free(a);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pbwire_accepts_valid_messages),
        cmocka_unit_test(test_pbwire_rejects_nesting_deeper_than_max),
        cmocka_unit_test(test_pbwire_rejects_hostile_half_million_deep_message),
        cmocka_unit_test(test_pbwire_rejects_malformed_varints),
        cmocka_unit_test(test_pbwire_rejects_lengths_past_the_end),
        cmocka_unit_test(test_pbwire_rejects_groups_and_undefined_wire_types),
        cmocka_unit_test(test_pbwire_skips_unknown_fields),
        cmocka_unit_test(test_pbwire_pin_value_of_json_depth_64_needs_193_levels),
    };
    return cmocka_run_group_tests_name("common/pbwire", tests, NULL, NULL);
}
