/* tests/unit/protocols/test_json.c: the descriptor-driven proto3 JSON codec (protocols/json.c).
 *
 * The contract's own messages cover every field kind the codec meets in pinsd. No message of the
 * build has a map field other than Struct's (special-cased), and Duration, FieldMask and Empty are
 * not generated, so the map path and those well-known types run through small hand-built
 * descriptors below (the codec knows well-known types by their full names).
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "protocols/json.h"
#include "common/error.h"
#include "common/pbstruct.h"
#include "google/protobuf/descriptor.pb-c.h"
#include "google/protobuf/struct.pb-c.h"
#include "google/protobuf/timestamp.pb-c.h"
#include "google/protobuf/wrappers.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "memorypins/v1/admin.pb-c.h"
#include "memorypins/v1/memory_pins.pb-c.h"

#define T_2026_11_27 1795823602 /* 2026-11-27T23:53:22Z */
#define DEPTH        100

/* ---- hand-built descriptors: a message with maps, and Duration / FieldMask / Empty ----------- */

typedef struct {
    ProtobufCMessage base;
    char *key;
    int64_t value;
} CountsEntry;

typedef struct {
    ProtobufCMessage base;
    int32_t key;
    char *value;
} NamesEntry;

typedef struct {
    ProtobufCMessage base;
    char *key;
    Google__Protobuf__Int32Value *value;
} WrapsEntry;

typedef struct {
    ProtobufCMessage base;
    size_t n_counts;
    CountsEntry **counts;
    size_t n_names;
    NamesEntry **names;
    size_t n_wraps;
    WrapsEntry **wraps;
} MapHolder;

typedef struct {
    ProtobufCMessage base;
    int64_t seconds;
    int32_t nanos;
} Duration;

typedef struct {
    ProtobufCMessage base;
    size_t n_paths;
    char **paths;
} FieldMask;

typedef struct {
    ProtobufCMessage base;
    Duration *d;
    FieldMask *mask;
    ProtobufCMessage *e;
} WktHolder;

static const ProtobufCMessageDescriptor counts_entry_desc, names_entry_desc, wraps_entry_desc,
    map_holder_desc, duration_desc, field_mask_desc, empty_desc, wkt_holder_desc;

#define INIT_FN(fn, type, desc)         \
    static void fn(ProtobufCMessage *m) \
    {                                   \
        memset(m, 0, sizeof(type));     \
        m->descriptor = &desc;          \
    }
INIT_FN(init_counts_entry, CountsEntry, counts_entry_desc)
INIT_FN(init_names_entry, NamesEntry, names_entry_desc)
INIT_FN(init_wraps_entry, WrapsEntry, wraps_entry_desc)
INIT_FN(init_map_holder, MapHolder, map_holder_desc)
INIT_FN(init_duration, Duration, duration_desc)
INIT_FN(init_field_mask, FieldMask, field_mask_desc)
INIT_FN(init_empty, ProtobufCMessage, empty_desc)
INIT_FN(init_wkt_holder, WktHolder, wkt_holder_desc)

#define FIELD(name, id, label, type, qoff, off, desc)                                            \
    {                                                                                            \
        name, id, PROTOBUF_C_LABEL_##label, PROTOBUF_C_TYPE_##type, qoff, off, desc, NULL, 0, 0, \
            NULL, NULL                                                                           \
    }

static const unsigned by_name_01[] = {0, 1};
static const ProtobufCIntRange ranges_1[] = {{1, 0}, {0, 1}};
static const ProtobufCIntRange ranges_2[] = {{1, 0}, {0, 2}};
static const ProtobufCIntRange ranges_3[] = {{1, 0}, {0, 3}};
static const ProtobufCIntRange ranges_0[] = {{0, 0}};

static const ProtobufCFieldDescriptor counts_entry_fields[] = {
    FIELD("key", 1, NONE, STRING, 0, offsetof(CountsEntry, key), NULL),
    FIELD("value", 2, NONE, INT64, 0, offsetof(CountsEntry, value), NULL),
};
static const ProtobufCFieldDescriptor names_entry_fields[] = {
    FIELD("key", 1, NONE, INT32, 0, offsetof(NamesEntry, key), NULL),
    FIELD("value", 2, NONE, STRING, 0, offsetof(NamesEntry, value), NULL),
};
static const ProtobufCFieldDescriptor wraps_entry_fields[] = {
    FIELD("key", 1, NONE, STRING, 0, offsetof(WrapsEntry, key), NULL),
    FIELD("value", 2, NONE, MESSAGE, 0, offsetof(WrapsEntry, value),
          &google__protobuf__int32_value__descriptor),
};
static const ProtobufCFieldDescriptor map_holder_fields[] = {
    FIELD("counts", 1, REPEATED, MESSAGE, offsetof(MapHolder, n_counts),
          offsetof(MapHolder, counts), &counts_entry_desc),
    FIELD("names", 2, REPEATED, MESSAGE, offsetof(MapHolder, n_names), offsetof(MapHolder, names),
          &names_entry_desc),
    FIELD("wrapped_ints", 3, REPEATED, MESSAGE, offsetof(MapHolder, n_wraps),
          offsetof(MapHolder, wraps), &wraps_entry_desc),
};
static const unsigned map_holder_by_name[] = {0, 1, 2};
static const ProtobufCFieldDescriptor duration_fields[] = {
    FIELD("seconds", 1, NONE, INT64, 0, offsetof(Duration, seconds), NULL),
    FIELD("nanos", 2, NONE, INT32, 0, offsetof(Duration, nanos), NULL),
};
static const unsigned duration_by_name[] = {1, 0};
static const ProtobufCFieldDescriptor field_mask_fields[] = {
    FIELD("paths", 1, REPEATED, STRING, offsetof(FieldMask, n_paths), offsetof(FieldMask, paths),
          NULL),
};
static const unsigned by_name_0[] = {0};
static const ProtobufCFieldDescriptor wkt_holder_fields[] = {
    FIELD("d", 1, NONE, MESSAGE, 0, offsetof(WktHolder, d), &duration_desc),
    FIELD("mask", 2, NONE, MESSAGE, 0, offsetof(WktHolder, mask), &field_mask_desc),
    FIELD("e", 3, NONE, MESSAGE, 0, offsetof(WktHolder, e), &empty_desc),
};
static const unsigned wkt_holder_by_name[] = {0, 2, 1};

#define MESSAGE_DESC(var, full, short_name, type, fields, n, by_name, ranges, init)      \
    static const ProtobufCMessageDescriptor var = {PROTOBUF_C__MESSAGE_DESCRIPTOR_MAGIC, \
                                                   full,                                 \
                                                   short_name,                           \
                                                   short_name,                           \
                                                   "test",                               \
                                                   sizeof(type),                         \
                                                   n,                                    \
                                                   fields,                               \
                                                   by_name,                              \
                                                   1,                                    \
                                                   ranges,                               \
                                                   init,                                 \
                                                   NULL,                                 \
                                                   NULL,                                 \
                                                   NULL}

MESSAGE_DESC(counts_entry_desc, "test.MapHolder.CountsEntry", "CountsEntry", CountsEntry,
             counts_entry_fields, 2, by_name_01, ranges_2, init_counts_entry);
MESSAGE_DESC(names_entry_desc, "test.MapHolder.NamesEntry", "NamesEntry", NamesEntry,
             names_entry_fields, 2, by_name_01, ranges_2, init_names_entry);
MESSAGE_DESC(wraps_entry_desc, "test.MapHolder.WrappedIntsEntry", "WrappedIntsEntry", WrapsEntry,
             wraps_entry_fields, 2, by_name_01, ranges_2, init_wraps_entry);
MESSAGE_DESC(map_holder_desc, "test.MapHolder", "MapHolder", MapHolder, map_holder_fields, 3,
             map_holder_by_name, ranges_3, init_map_holder);
MESSAGE_DESC(duration_desc, "google.protobuf.Duration", "Duration", Duration, duration_fields, 2,
             duration_by_name, ranges_2, init_duration);
MESSAGE_DESC(field_mask_desc, "google.protobuf.FieldMask", "FieldMask", FieldMask,
             field_mask_fields, 1, by_name_0, ranges_1, init_field_mask);
MESSAGE_DESC(empty_desc, "google.protobuf.Empty", "Empty", ProtobufCMessage, NULL, 0, NULL,
             ranges_0, init_empty);
MESSAGE_DESC(wkt_holder_desc, "test.WktHolder", "WktHolder", WktHolder, wkt_holder_fields, 3,
             wkt_holder_by_name, ranges_3, init_wkt_holder);

/* ---- helpers --------------------------------------------------------------------------------- */

static int setup(void **state)
{
    *state = pins_arena_new(0);
    return *state == NULL;
}

static int teardown(void **state)
{
    pins_arena_free(*state);
    return 0;
}

/* Encodes m and compares with expect. */
static void assert_encodes(const void *m, const proto_json_options *opt, const char *expect)
{
    pins_buf b;
    pins_buf_init(&b, SIZE_MAX);
    int rv = proto_json_encode(m, opt, &b);
    assert_int_equal(rv, 0);
    if (strcmp(pins_buf_ptr(&b), expect) != 0)
        print_error("got  %s\nwant %s\n", pins_buf_ptr(&b), expect);
    assert_string_equal(pins_buf_ptr(&b), expect);
    assert_int_equal(pins_buf_len(&b), strlen(expect));
    pins_buf_free(&b);
}

static void *decode(pins_arena *a, const ProtobufCMessageDescriptor *desc, const char *json)
{
    ProtobufCMessage *m = NULL;
    proto_json_error err = {0};
    int rv = proto_json_decode(a, desc, json, strlen(json), DEPTH, &m, &err);
    if (rv != 0)
        print_error("decode %s failed %d at '%s': %s\n", json, rv, err.path, err.msg);
    assert_int_equal(rv, 0);
    assert_non_null(m);
    return m;
}

/* Decoding must fail with PINS_EMALFORMED at path with a reason containing msg. */
static void assert_rejected(pins_arena *a, const ProtobufCMessageDescriptor *desc, const char *json,
                            const char *path, const char *msg, bool type_error)
{
    ProtobufCMessage *sentinel = (ProtobufCMessage *)&sentinel, *m = sentinel;
    proto_json_error err = {0};
    int rv = proto_json_decode(a, desc, json, strlen(json), DEPTH, &m, &err);
    if (rv != PINS_EMALFORMED || strcmp(err.path, path) != 0 || strstr(err.msg, msg) == NULL ||
        err.type_error != type_error)
        print_error("%s: rv %d path '%s' msg '%s' type_error %d\n", json, rv, err.path, err.msg,
                    err.type_error);
    assert_int_equal(rv, PINS_EMALFORMED);
    assert_ptr_equal(m, sentinel);
    assert_string_equal(err.path, path);
    assert_non_null(strstr(err.msg, msg));
    assert_int_equal(err.type_error, type_error);
}

/* Decodes json, encodes it with opt; the result must be expect. */
static void assert_transcodes(pins_arena *a, const ProtobufCMessageDescriptor *desc,
                              const char *json, const proto_json_options *opt, const char *expect)
{
    assert_encodes(decode(a, desc, json), opt, expect);
}

static Google__Protobuf__Timestamp *timestamp(pins_arena *a, int64_t sec, int32_t nanos)
{
    Google__Protobuf__Timestamp *ts = pins_arena_alloc(a, sizeof(*ts));
    google__protobuf__timestamp__init(ts);
    ts->seconds = sec;
    ts->nanos = nanos;
    return ts;
}

static Memorypins__V1__Pin *sample_pin(pins_arena *a)
{
    Memorypins__V1__Pin *p = pins_arena_alloc(a, sizeof(*p));
    memorypins__v1__pin__init(p);
    p->id = 42;
    p->tenant_id = "t1";
    p->key = "notes/today";
    Google__Protobuf__Struct *v = NULL;
    const char *value = "{\"a\":1,\"b\":[true,null,\"x\"],\"c\":{\"d\":0.5}}";
    assert_int_equal(pbstruct_from_json(a, value, strlen(value), 64, &v), 0);
    p->value = v;
    p->source = "api";
    p->created_at = timestamp(a, T_2026_11_27, 123456789);
    p->updated_at = timestamp(a, T_2026_11_27, 0);
    p->version = 3;
    return p;
}

/* ---- encoding shapes ------------------------------------------------------------------------- */

static void test_json_rest_pin_has_every_field(void **state)
{
    Memorypins__V1__Pin *p = sample_pin(*state);
    assert_encodes(p, &proto_json_rest,
                   "{\"id\":42,\"tenant_id\":\"t1\",\"key\":\"notes/today\","
                   "\"value\":{\"a\":1,\"b\":[true,null,\"x\"],\"c\":{\"d\":0.5}},"
                   "\"source\":\"api\",\"created_at\":\"2026-11-27T23:53:22.123456Z\","
                   "\"updated_at\":\"2026-11-27T23:53:22.000000Z\",\"ttl_seconds\":null,"
                   "\"expires_at\":null,\"version\":3,\"revision\":0}");
}

static void test_json_canonical_pin_omits_defaults(void **state)
{
    Memorypins__V1__Pin *p = sample_pin(*state);
    p->source = "";
    assert_encodes(p, &proto_json_canonical,
                   "{\"id\":\"42\",\"tenantId\":\"t1\",\"key\":\"notes/today\","
                   "\"value\":{\"a\":1,\"b\":[true,null,\"x\"],\"c\":{\"d\":0.5}},"
                   "\"createdAt\":\"2026-11-27T23:53:22.123456789Z\","
                   "\"updatedAt\":\"2026-11-27T23:53:22Z\",\"version\":\"3\"}");
}

static void test_json_rest_pin_with_ttl(void **state)
{
    pins_arena *a = *state;
    Memorypins__V1__Pin *p = sample_pin(a);
    Google__Protobuf__Int32Value ttl = GOOGLE__PROTOBUF__INT32_VALUE__INIT;
    ttl.value = 60;
    p->ttl_seconds = &ttl;
    p->expires_at = timestamp(a, T_2026_11_27 + 60, 123456000);
    p->value = NULL;
    p->id = -5;
    assert_encodes(p, &proto_json_rest,
                   "{\"id\":-5,\"tenant_id\":\"t1\",\"key\":\"notes/today\",\"value\":null,"
                   "\"source\":\"api\",\"created_at\":\"2026-11-27T23:53:22.123456Z\","
                   "\"updated_at\":\"2026-11-27T23:53:22.000000Z\",\"ttl_seconds\":60,"
                   "\"expires_at\":\"2026-11-27T23:54:22.123456Z\",\"version\":3,\"revision\":0}");
    ttl.value = 0; /* a wrapper holding its default is still present */
    assert_encodes(p, &proto_json_canonical,
                   "{\"id\":\"-5\",\"tenantId\":\"t1\",\"key\":\"notes/today\",\"source\":\"api\","
                   "\"createdAt\":\"2026-11-27T23:53:22.123456789Z\","
                   "\"updatedAt\":\"2026-11-27T23:53:22Z\",\"ttlSeconds\":0,"
                   "\"expiresAt\":\"2026-11-27T23:54:22.123456Z\",\"version\":\"3\"}");
}

static void test_json_list_response_repeated_messages(void **state)
{
    pins_arena *a = *state;
    Memorypins__V1__ListPinsResponse r = MEMORYPINS__V1__LIST_PINS_RESPONSE__INIT;
    assert_encodes(&r, &proto_json_rest,
                   "{\"pins\":[],\"total\":0,\"limit\":0,\"offset\":0,\"next_page_token\":\"\","
                   "\"revision\":0}");
    assert_encodes(&r, &proto_json_canonical, "{}");
    Memorypins__V1__Pin *pins[2] = {sample_pin(a), sample_pin(a)};
    pins[0]->value = NULL;
    pins[0]->created_at = NULL;
    pins[0]->updated_at = NULL;
    pins[1]->id = 7;
    pins[1]->value = NULL;
    pins[1]->created_at = NULL;
    pins[1]->updated_at = NULL;
    r.n_pins = 2;
    r.pins = pins;
    r.total = 9007199254740993LL;
    r.limit = 100;
    r.offset = -1;
    assert_encodes(&r, &proto_json_canonical,
                   "{\"pins\":[{\"id\":\"42\",\"tenantId\":\"t1\",\"key\":\"notes/today\","
                   "\"source\":\"api\",\"version\":\"3\"},{\"id\":\"7\",\"tenantId\":\"t1\","
                   "\"key\":\"notes/today\",\"source\":\"api\",\"version\":\"3\"}],"
                   "\"total\":\"9007199254740993\",\"limit\":100,\"offset\":-1}");
    r.n_pins = 1;
    assert_encodes(&r, &proto_json_rest,
                   "{\"pins\":[{\"id\":42,\"tenant_id\":\"t1\",\"key\":\"notes/today\","
                   "\"value\":null,\"source\":\"api\",\"created_at\":null,\"updated_at\":null,"
                   "\"ttl_seconds\":null,\"expires_at\":null,\"version\":3,\"revision\":0}],"
                   "\"total\":9007199254740993,\"limit\":100,\"offset\":-1,"
                   "\"next_page_token\":\"\",\"revision\":0}");
}

static void test_json_string_wrapper(void **state)
{
    pins_arena *a = *state;
    Memorypins__V1__CleanupExpiredPinsRequest r =
        MEMORYPINS__V1__CLEANUP_EXPIRED_PINS_REQUEST__INIT;
    assert_encodes(&r, &proto_json_rest, "{\"tenant_id\":null}");
    assert_encodes(&r, &proto_json_canonical, "{}");
    Google__Protobuf__StringValue sv = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
    r.tenant_id = &sv;
    assert_encodes(&r, &proto_json_canonical, "{\"tenantId\":\"\"}");
    sv.value = "a\"b\\c\n\x01/\xc3\xa9";
    assert_encodes(&r, &proto_json_rest, "{\"tenant_id\":\"a\\\"b\\\\c\\n\\u0001/\xc3\xa9\"}");

    Memorypins__V1__CleanupExpiredPinsRequest *d =
        decode(a, &memorypins__v1__cleanup_expired_pins_request__descriptor,
               "{\"tenantId\":\"t\\u00e9\\ud83d\\ude00\"}");
    assert_non_null(d->tenant_id);
    assert_string_equal(d->tenant_id->value, "t\xc3\xa9\xf0\x9f\x98\x80");
    d = decode(a, &memorypins__v1__cleanup_expired_pins_request__descriptor,
               "{\"tenant_id\":null}");
    assert_null(d->tenant_id);
    assert_rejected(a, &memorypins__v1__cleanup_expired_pins_request__descriptor,
                    "{\"tenant_id\":7}", "tenant_id", "expected a string", true);
}

static void test_json_bool_wrapper_and_timestamp(void **state)
{
    pins_arena *a = *state;
    Memorypins__V1__ListRbacAuditRequest *r =
        decode(a, &memorypins__v1__list_rbac_audit_request__descriptor,
               "{\"allowed\":false,\"since\":\"2026-01-01T00:00:00.5+01:00\",\"limit\":\"5\"}");
    assert_non_null(r->allowed);
    assert_false(r->allowed->value);
    assert_non_null(r->since);
    assert_int_equal(r->since->seconds, 1767222000);
    assert_int_equal(r->since->nanos, 500000000);
    assert_int_equal(r->limit, 5);
    assert_encodes(r, &proto_json_canonical,
                   "{\"allowed\":false,\"since\":\"2025-12-31T23:00:00.500Z\",\"limit\":5}");
    assert_encodes(r, &proto_json_rest,
                   "{\"resource\":\"\",\"action\":\"\",\"allowed\":false,\"subject\":\"\","
                   "\"tenant_id\":\"\",\"since\":\"2025-12-31T23:00:00.500000Z\",\"limit\":5,"
                   "\"offset\":0}");
    assert_rejected(a, &memorypins__v1__list_rbac_audit_request__descriptor,
                    "{\"allowed\":\"true\"}", "allowed", "expected a boolean", true);
}

static void test_json_timestamp_forms(void **state)
{
    pins_arena *a = *state;
    Memorypins__V1__CleanupExpiredPinsResponse r =
        MEMORYPINS__V1__CLEANUP_EXPIRED_PINS_RESPONSE__INIT;
    static const struct {
        int32_t nanos;
        const char *canonical;
    } cases[] = {
        {0, "1970-01-01T00:00:00Z"},
        {100000000, "1970-01-01T00:00:00.100Z"},
        {120000, "1970-01-01T00:00:00.000120Z"},
        {1, "1970-01-01T00:00:00.000000001Z"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        r.timestamp = timestamp(a, 0, cases[i].nanos);
        char want[128];
        snprintf(want, sizeof(want), "{\"timestamp\":\"%s\"}", cases[i].canonical);
        assert_encodes(&r, &proto_json_canonical, want);
    }
    r.timestamp = timestamp(a, -1, 999999999);
    assert_encodes(&r, &proto_json_rest,
                   "{\"deleted_count\":0,\"tenant_id\":null,"
                   "\"timestamp\":\"1969-12-31T23:59:59.999999Z\"}");
    r.timestamp = timestamp(a, 253402300800LL, 0); /* year 10000 has no RFC 3339 form */
    pins_buf b;
    pins_buf_init(&b, SIZE_MAX);
    assert_int_equal(proto_json_encode(&r.base, &proto_json_canonical, &b), PINS_EINTERNAL);
    assert_int_equal(pins_buf_len(&b), 0);
    pins_buf_free(&b);

    const ProtobufCMessageDescriptor *desc =
        &memorypins__v1__cleanup_expired_pins_response__descriptor;
    Memorypins__V1__CleanupExpiredPinsResponse *d =
        decode(a, desc, "{\"timestamp\":\"0001-01-01T00:00:00Z\"}");
    assert_int_equal(d->timestamp->seconds, -62135596800LL);
    d = decode(a, desc, "{\"timestamp\":\"9999-12-31T23:59:59.999999999Z\"}");
    assert_int_equal(d->timestamp->seconds, 253402300799LL);
    assert_int_equal(d->timestamp->nanos, 999999999);
    assert_rejected(a, desc, "{\"timestamp\":\"2026-02-29T00:00:00Z\"}", "timestamp",
                    "invalid timestamp", false);
    /* Days a month does not have (common/timeutil.c refuses them since json.c's own check went). */
    static const char *const no_such_day[] = {"2026-04-31", "2026-02-30", "2024-02-30",
                                              "1900-02-29", "2026-06-31", "2026-11-31"};
    for (size_t i = 0; i < sizeof(no_such_day) / sizeof(no_such_day[0]); i++) {
        char json[64];
        snprintf(json, sizeof(json), "{\"timestamp\":\"%sT00:00:00Z\"}", no_such_day[i]);
        assert_rejected(a, desc, json, "timestamp", "invalid timestamp", false);
    }
    decode(a, desc, "{\"timestamp\":\"2024-02-29T00:00:00Z\"}");
    decode(a, desc, "{\"timestamp\":\"2000-02-29T23:59:59Z\"}");
    assert_rejected(a, desc, "{\"timestamp\":\"2026-01-01 00:00:00Z\"}", "timestamp",
                    "invalid timestamp", false);
    assert_rejected(a, desc, "{\"timestamp\":\"0000-12-31T00:00:00Z\"}", "timestamp",
                    "invalid timestamp", false);
    assert_rejected(a, desc, "{\"timestamp\":1}", "timestamp", "expected a string", true);
}

static void test_json_enum_names_and_numbers(void **state)
{
    pins_arena *a = *state;
    const ProtobufCMessageDescriptor *desc = &memorypins__v1__watch_pins_response__descriptor;
    Memorypins__V1__WatchPinsResponse r = MEMORYPINS__V1__WATCH_PINS_RESPONSE__INIT;
    assert_encodes(&r, &proto_json_rest, "{\"type\":\"EVENT_TYPE_UNSPECIFIED\",\"pin\":null}");
    assert_encodes(&r, &proto_json_canonical, "{}");
    r.type = MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_PUT;
    assert_encodes(&r, &proto_json_canonical, "{\"type\":\"EVENT_TYPE_PUT\"}");
    r.type = 7; /* proto3 enums are open: an unknown number stays a number */
    assert_encodes(&r, &proto_json_canonical, "{\"type\":7}");

    Memorypins__V1__WatchPinsResponse *d = decode(a, desc, "{\"type\":\"EVENT_TYPE_EXPIRE\"}");
    assert_int_equal(d->type, MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_EXPIRE);
    d = decode(a, desc, "{\"type\":2}");
    assert_int_equal(d->type, MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_DELETE);
    assert_rejected(a, desc, "{\"type\":\"EVENT_TYPE_NOPE\"}", "type", "unknown value", false);
    assert_rejected(a, desc, "{\"type\":4294967296}", "type", "out of range", false);
    assert_rejected(a, desc, "{\"type\":true}", "type", "expected a string or a number", true);
}

static void test_json_struct_field(void **state)
{
    pins_arena *a = *state;
    const ProtobufCMessageDescriptor *desc = &memorypins__v1__get_rbac_matrix_response__descriptor;
    const char *json = "{\"version\":\"1\",\"hash\":\"h\",\"matrix\":{\"admin\":{\"pins\":"
                       "[\"read\",\"write\"]},\"n\":-0.00125,\"z\":null,\"k\":{}}}";
    assert_transcodes(a, desc, json, &proto_json_canonical, json);
    assert_transcodes(a, desc, "{}", &proto_json_rest,
                      "{\"version\":\"\",\"hash\":\"\",\"matrix\":null}");
    assert_rejected(a, desc, "{\"matrix\":[1]}", "matrix", "expected an object", true);
    assert_rejected(a, desc, "{\"matrix\":{\"a\":[1,{\"b\":1e999}]}}", "matrix.a[1].b",
                    "number out of range", false);
    assert_rejected(a, desc, "{\"matrix\":{\"a\":\"x\\u0000\"}}", "matrix.a", "\\u0000", false);

    /* A number with no JSON form inside a Struct fails the encoding. */
    Memorypins__V1__GetRbacMatrixResponse *m = decode(a, desc, "{\"matrix\":{\"a\":1}}");
    m->matrix->fields[0]->value->number_value = NAN;
    pins_buf b;
    pins_buf_init(&b, SIZE_MAX);
    assert_int_equal(proto_json_encode(&m->base, &proto_json_rest, &b), PINS_EINTERNAL);
    pins_buf_free(&b);
}

static void test_json_double_bool_repeated_string(void **state)
{
    pins_arena *a = *state;
    const ProtobufCMessageDescriptor *desc = &memorypins__v1__rbac_audit_entry__descriptor;
    Memorypins__V1__RbacAuditEntry e = MEMORYPINS__V1__RBAC_AUDIT_ENTRY__INIT;
    char *roles[] = {"admin", "reader"};
    e.id = 1;
    e.allowed = 1;
    e.n_roles = 2;
    e.roles = roles;
    e.latency_ms = 1.5;
    assert_encodes(&e, &proto_json_canonical,
                   "{\"id\":\"1\",\"allowed\":true,\"roles\":[\"admin\",\"reader\"],"
                   "\"latencyMs\":1.5}");
    assert_encodes(
        &e, &proto_json_rest,
        "{\"id\":1,\"ts\":null,\"subject\":\"\",\"resource\":\"\",\"action\":\"\","
        "\"allowed\":true,\"reason\":\"\",\"roles\":[\"admin\",\"reader\"],\"path\":\"\","
        "\"method\":\"\",\"tenant_id\":\"\",\"request_id\":\"\",\"latency_ms\":1.5}");
    e.n_roles = 0;
    e.allowed = 0;
    e.latency_ms = NAN;
    assert_encodes(&e, &proto_json_canonical, "{\"id\":\"1\",\"latencyMs\":\"NaN\"}");
    e.latency_ms = -INFINITY;
    assert_encodes(&e, &proto_json_canonical, "{\"id\":\"1\",\"latencyMs\":\"-Infinity\"}");
    e.latency_ms = 0.1;
    assert_encodes(&e, &proto_json_canonical, "{\"id\":\"1\",\"latencyMs\":0.1}");
    e.latency_ms = 1e300;
    assert_encodes(&e, &proto_json_canonical, "{\"id\":\"1\",\"latencyMs\":1e+300}");

    Memorypins__V1__RbacAuditEntry *d =
        decode(a, desc, "{\"latency_ms\":\"Infinity\",\"roles\":[],\"allowed\":true}");
    assert_true(isinf(d->latency_ms) && d->latency_ms > 0);
    assert_true(d->allowed);
    assert_int_equal(d->n_roles, 0);
    d = decode(a, desc, "{\"latencyMs\":\"NaN\",\"roles\":[\"a\",\"\"]}");
    assert_true(isnan(d->latency_ms));
    assert_int_equal(d->n_roles, 2);
    assert_string_equal(d->roles[1], "");
    d = decode(a, desc, "{\"latencyMs\":\"2.5e1\"}");
    assert_true(d->latency_ms == 25.0);
    assert_rejected(a, desc, "{\"latency_ms\":1e309}", "latency_ms", "out of range", false);
    assert_rejected(a, desc, "{\"latency_ms\":\"fast\"}", "latency_ms", "invalid number", false);
    assert_rejected(a, desc, "{\"roles\":\"admin\"}", "roles", "expected an array", true);
    assert_rejected(a, desc, "{\"roles\":[\"a\",null]}", "roles[1]", "not null", true);
    assert_rejected(a, desc, "{\"roles\":[\"a\",1]}", "roles[1]", "expected a string", true);
}

static void test_json_oneof_and_bytes(void **state)
{
    pins_arena *a = *state;
    const ProtobufCMessageDescriptor *req =
        &grpc__reflection__v1__server_reflection_request__descriptor;
    const ProtobufCMessageDescriptor *resp =
        &grpc__reflection__v1__server_reflection_response__descriptor;
    Grpc__Reflection__V1__ServerReflectionRequest *r =
        decode(a, req, "{\"host\":\"h\",\"listServices\":\"\"}");
    assert_int_equal(
        r->message_request_case,
        GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES);
    /* A oneof member set to its default is still set, so it is emitted. */
    assert_encodes(r, &proto_json_canonical, "{\"host\":\"h\",\"listServices\":\"\"}");
    assert_encodes(r, &proto_json_rest, "{\"host\":\"h\",\"list_services\":\"\"}");
    r = decode(a, req, "{\"list_services\":\"a\",\"listServices\":\"b\"}"); /* the last wins */
    assert_string_equal(r->list_services, "b");
    assert_rejected(a, req, "{\"file_by_filename\":\"x\",\"list_services\":\"*\"}", "list_services",
                    "same oneof", false);
    r = decode(a, req,
               "{\"fileContainingExtension\":{\"containingType\":\"T\","
               "\"extensionNumber\":5}}");
    assert_encodes(r, &proto_json_canonical,
                   "{\"fileContainingExtension\":{\"containingType\":\"T\","
                   "\"extensionNumber\":5}}");

    Grpc__Reflection__V1__ServerReflectionResponse *p =
        decode(a, resp,
               "{\"validHost\":\"v\",\"fileDescriptorResponse\":{\"fileDescriptorProto\":"
               "[\"AAEC/w==\",\"AAEC_w\",\"\",\"-_8\"]}}");
    Grpc__Reflection__V1__FileDescriptorResponse *f = p->file_descriptor_response;
    assert_non_null(f);
    assert_int_equal(f->n_file_descriptor_proto, 4);
    assert_int_equal(f->file_descriptor_proto[0].len, 4);
    assert_memory_equal(f->file_descriptor_proto[0].data, "\x00\x01\x02\xff", 4);
    assert_int_equal(f->file_descriptor_proto[1].len, 4);
    assert_memory_equal(f->file_descriptor_proto[1].data, "\x00\x01\x02\xff", 4);
    assert_int_equal(f->file_descriptor_proto[2].len, 0);
    assert_int_equal(f->file_descriptor_proto[3].len, 2);
    assert_encodes(p, &proto_json_canonical,
                   "{\"validHost\":\"v\",\"fileDescriptorResponse\":{\"fileDescriptorProto\":"
                   "[\"AAEC/w==\",\"AAEC/w==\",\"\",\"+/8=\"]}}");
    assert_encodes(p, &proto_json_rest,
                   "{\"valid_host\":\"v\",\"original_request\":null,\"file_descriptor_response\":"
                   "{\"file_descriptor_proto\":[\"AAEC/w==\",\"AAEC/w==\",\"\",\"+/8=\"]}}");
    assert_rejected(a, resp, "{\"fileDescriptorResponse\":{\"fileDescriptorProto\":[\"A\"]}}",
                    "file_descriptor_response.file_descriptor_proto[0]", "invalid base64", false);
    assert_rejected(a, resp, "{\"fileDescriptorResponse\":{\"fileDescriptorProto\":[\"A*==\"]}}",
                    "file_descriptor_response.file_descriptor_proto[0]", "invalid base64", false);
}

static void test_json_proto2_optional_fields(void **state)
{
    pins_arena *a = *state;
    const ProtobufCMessageDescriptor *desc = &google__protobuf__field_descriptor_proto__descriptor;
    Google__Protobuf__FieldDescriptorProto *f = decode(
        a, desc, "{\"name\":\"x\",\"number\":0,\"type\":\"TYPE_STRING\",\"jsonName\":\"x\"}");
    assert_true(f->has_number);
    assert_int_equal(f->number, 0);
    assert_true(f->has_type);
    assert_false(f->has_label);
    assert_encodes(f, &proto_json_canonical,
                   "{\"name\":\"x\",\"number\":0,\"type\":\"TYPE_STRING\",\"jsonName\":\"x\"}");
    f->has_number = 0;
    assert_encodes(f, &proto_json_canonical,
                   "{\"name\":\"x\",\"type\":\"TYPE_STRING\",\"jsonName\":\"x\"}");
}

/* The nine wrappers are their bare value, also as a whole document. */
static void test_json_wrappers_are_bare_values(void **state)
{
    pins_arena *a = *state;
    static const struct {
        const ProtobufCMessageDescriptor *desc;
        const char *in, *rest, *canonical;
    } ok[] = {
        {&google__protobuf__double_value__descriptor, "-2.5e-1", "-0.25", "-0.25"},
        {&google__protobuf__double_value__descriptor, "\"-Infinity\"", "\"-Infinity\"",
         "\"-Infinity\""},
        {&google__protobuf__float_value__descriptor, "0.1", "0.1", "0.1"},
        {&google__protobuf__float_value__descriptor, "3.4028235e38", "3.4028235e+38",
         "3.4028235e+38"},
        {&google__protobuf__float_value__descriptor, "16777216", "16777216", "16777216"},
        {&google__protobuf__int64_value__descriptor, "-9007199254740993", "-9007199254740993",
         "\"-9007199254740993\""},
        {&google__protobuf__uint64_value__descriptor, "\"18446744073709551615\"",
         "18446744073709551615", "\"18446744073709551615\""},
        {&google__protobuf__int32_value__descriptor, "\"-7\"", "-7", "-7"},
        {&google__protobuf__uint32_value__descriptor, "4294967295", "4294967295", "4294967295"},
        {&google__protobuf__bool_value__descriptor, "true", "true", "true"},
        {&google__protobuf__string_value__descriptor, "\"\\/x\"", "\"/x\"", "\"/x\""},
        {&google__protobuf__bytes_value__descriptor, "\"aGk\"", "\"aGk=\"", "\"aGk=\""},
        {&google__protobuf__timestamp__descriptor, "\"2026-11-27T23:53:22.1Z\"",
         "\"2026-11-27T23:53:22.100000Z\"", "\"2026-11-27T23:53:22.100Z\""},
        {&google__protobuf__value__descriptor, "[1,{\"a\":null},\"s\"]", "[1,{\"a\":null},\"s\"]",
         "[1,{\"a\":null},\"s\"]"},
        {&google__protobuf__value__descriptor, "null", "null", "null"},
        {&google__protobuf__list_value__descriptor, "[[],{}]", "[[],{}]", "[[],{}]"},
    };
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        assert_transcodes(a, ok[i].desc, ok[i].in, &proto_json_rest, ok[i].rest);
        assert_transcodes(a, ok[i].desc, ok[i].in, &proto_json_canonical, ok[i].canonical);
    }
    assert_rejected(a, &google__protobuf__float_value__descriptor, "3.5e38", "",
                    "out of range for float", false);
    assert_rejected(a, &google__protobuf__uint64_value__descriptor, "-1", "", "out of range",
                    false);
    assert_rejected(a, &google__protobuf__uint32_value__descriptor, "4294967296", "",
                    "out of range for uint32", false);
    assert_rejected(a, &google__protobuf__bool_value__descriptor, "null", "", "expected a boolean",
                    true);
    assert_rejected(a, &google__protobuf__list_value__descriptor, "{}", "", "expected an array",
                    true);
}

/* ---- decoding rules -------------------------------------------------------------------------- */

static void test_json_accepts_both_name_styles(void **state)
{
    pins_arena *a = *state;
    const ProtobufCMessageDescriptor *desc = &memorypins__v1__upsert_pin_request__descriptor;
    Memorypins__V1__UpsertPinRequest *r =
        decode(a, desc,
               "{\"tenantId\":\"t\",\"key\":\"k\",\"value\":{\"x\":[1,2]},\"ttl_seconds\":60,"
               "\"expectedVersion\":\"0\"}");
    assert_string_equal(r->tenant_id, "t");
    assert_string_equal(r->key, "k");
    assert_int_equal(r->value->n_fields, 1);
    assert_int_equal(r->ttl_seconds->value, 60);
    assert_int_equal(r->expected_version->value, 0);
    assert_string_equal(r->source, "");
    r = decode(a, desc, "{\"tenant_id\":\"u\",\"ttlSeconds\":null,\"expected_version\":7}");
    assert_string_equal(r->tenant_id, "u");
    assert_null(r->ttl_seconds);
    assert_int_equal(r->expected_version->value, 7);
    /* Only the exact proto and json names match. */
    r = decode(a, desc, "{\"TenantId\":\"v\",\"tenantid\":\"w\",\"tenant-id\":\"x\"}");
    assert_string_equal(r->tenant_id, "");
}

static void test_json_ignores_unknown_fields(void **state)
{
    pins_arena *a = *state;
    Memorypins__V1__GetPinRequest *r =
        decode(a, &memorypins__v1__get_pin_request__descriptor,
               "{\"zzz\":{\"a\":[1,2,{\"b\":null,\"c\":\"\\u0000\"}],\"t\":true},\"key\":\"k\","
               "\"other\":-0.5e-3, \"more\" : [ ] , \"last\":\"\\ud83d\\ude00\"}");
    assert_string_equal(r->key, "k");
    /* Unknown members are still checked for syntax. */
    assert_rejected(a, &memorypins__v1__get_pin_request__descriptor, "{\"zzz\":[1,],\"key\":\"k\"}",
                    "", "invalid json", true);
}

static void test_json_null_means_unset_or_default(void **state)
{
    pins_arena *a = *state;
    Memorypins__V1__ListPinsRequest *r =
        decode(a, &memorypins__v1__list_pins_request__descriptor,
               "{\"limit\":5,\"limit\":null,\"prefix\":null,\"include_expired\":null}");
    assert_int_equal(r->limit, 0);
    assert_string_equal(r->prefix, "");
    assert_false(r->include_expired);
    Memorypins__V1__GetRbacInfoResponse *i =
        decode(a, &memorypins__v1__get_rbac_info_response__descriptor,
               "{\"roles\":[\"a\"],\"roles\":null,\"loaded_at\":null}");
    assert_int_equal(i->n_roles, 0);
    assert_null(i->loaded_at);
}

static void test_json_integer_kinds_and_ranges(void **state)
{
    pins_arena *a = *state;
    const ProtobufCMessageDescriptor *lp = &memorypins__v1__list_pins_request__descriptor;
    const ProtobufCMessageDescriptor *pin = &memorypins__v1__pin__descriptor;
    Memorypins__V1__ListPinsRequest *r = decode(a, lp, "{\"limit\":-2147483648,\"offset\":1.0}");
    assert_int_equal(r->limit, INT32_MIN);
    assert_int_equal(r->offset, 1);
    r = decode(a, lp, "{\"limit\":\"2147483647\",\"offset\":1e2}");
    assert_int_equal(r->limit, INT32_MAX);
    assert_int_equal(r->offset, 100);
    r = decode(a, lp, "{\"limit\":1.5e1,\"offset\":-0}");
    assert_int_equal(r->limit, 15);
    assert_int_equal(r->offset, 0);
    r = decode(a, lp, "{\"limit\":0.0e5,\"offset\":12300000000e-8}");
    assert_int_equal(r->limit, 0);
    assert_int_equal(r->offset, 123);
    assert_rejected(a, lp, "{\"limit\":2147483648}", "limit", "out of range for int32", false);
    assert_rejected(a, lp, "{\"limit\":-2147483649}", "limit", "out of range for int32", false);
    assert_rejected(a, lp, "{\"limit\":1e100}", "limit", "out of range", false);
    assert_rejected(a, lp, "{\"limit\":1.5}", "limit", "not a fraction", false);
    assert_rejected(a, lp, "{\"limit\":1e-1}", "limit", "not a fraction", false);
    assert_rejected(a, lp, "{\"limit\":\"1 \"}", "limit", "invalid number", false);
    assert_rejected(a, lp, "{\"limit\":\"0x10\"}", "limit", "invalid number", false);
    assert_rejected(a, lp, "{\"limit\":\"\"}", "limit", "invalid number", false);

    Memorypins__V1__Pin *p =
        decode(a, pin, "{\"id\":\"9223372036854775807\",\"version\":-9223372036854775808}");
    assert_true(p->id == INT64_MAX);
    assert_true(p->version == INT64_MIN);
    p = decode(a, pin, "{\"id\":9007199254740993}"); /* exact, never through a double */
    assert_true(p->id == 9007199254740993LL);
    assert_rejected(a, pin, "{\"id\":9223372036854775808}", "id", "out of range for int64", false);
    assert_rejected(a, pin, "{\"id\":\"-9223372036854775809\"}", "id", "out of range", false);
    assert_rejected(a, pin, "{\"id\":100000000000000000000000}", "id", "out of range", false);
    assert_rejected(a, pin, "{\"id\":true}", "id", "expected a number", true);
    assert_rejected(a, pin, "{\"id\":[1]}", "id", "expected a number", true);
}

static void test_json_wrong_types_are_type_errors(void **state)
{
    pins_arena *a = *state;
    const ProtobufCMessageDescriptor *up = &memorypins__v1__upsert_pin_request__descriptor;
    assert_rejected(a, up, "{\"key\":5}", "key", "expected a string", true);
    assert_rejected(a, up, "{\"value\":[]}", "value", "expected an object", true);
    assert_rejected(a, up, "{\"value\":\"x\"}", "value", "expected an object", true);
    assert_rejected(a, up, "{\"ttl_seconds\":{}}", "ttl_seconds", "expected a number", true);
    assert_rejected(a, up, "[]", "", "expected an object", true);
    assert_rejected(a, up, "\"x\"", "", "expected an object", true);
    assert_rejected(a, up, "null", "", "expected an object", true);
    assert_rejected(a, &memorypins__v1__list_pins_request__descriptor,
                    "{\"include_expired\":\"yes\"}", "include_expired", "expected a boolean", true);
    assert_rejected(a, &memorypins__v1__list_pins_response__descriptor, "{\"pins\":[{\"id\":[]}]}",
                    "pins[0].id", "expected a number", true);
}

/* err.expected is set only when the whole input is JSON: a wrong type seen before a syntax error
 * further on is reported as the syntax error. */
static void test_json_expected_only_for_well_formed_input(void **state)
{
    pins_arena *a = *state;
    const ProtobufCMessageDescriptor *up = &memorypins__v1__upsert_pin_request__descriptor;
    ProtobufCMessage *m = NULL;
    proto_json_error err = {0};
    const char *ok = "{\"key\":\"k\",\"value\":[1,2]}";
    assert_int_equal(proto_json_decode(a, up, ok, strlen(ok), DEPTH, &m, &err), PINS_EMALFORMED);
    assert_non_null(err.expected);
    assert_string_equal(err.expected, "an object");
    assert_string_equal(err.path, "value");
    assert_true(err.type_error);

    memset(&err, 0, sizeof(err));
    const char *bad = "{\"key\":\"k\",\"value\":[1,}";
    assert_int_equal(proto_json_decode(a, up, bad, strlen(bad), DEPTH, &m, &err), PINS_EMALFORMED);
    assert_null(err.expected);
    assert_true(err.type_error);
    assert_non_null(strstr(err.msg, "invalid json"));

    memset(&err, 0, sizeof(err));
    const char *trailing = "{\"value\":5} x";
    assert_int_equal(proto_json_decode(a, up, trailing, strlen(trailing), DEPTH, &m, &err),
                     PINS_EMALFORMED);
    assert_null(err.expected);
    assert_null(m);
}

/* A bounded decode stops at its budget with PINS_ETOO_LARGE and leaves the rest of the arena; the
 * same input fits without the bound. */
static void test_json_decode_bounded_stops_at_its_budget(void **state)
{
    (void)state;
    size_t n = 100000;
    char *json = malloc(n * 2 + 64);
    assert_non_null(json);
    size_t cap = n * 2 + 64;
    size_t o = (size_t)snprintf(json, cap, "{\"key\":\"k\",\"value\":{\"a\":[");
    for (size_t i = 0; i < n; i++) {
        json[o++] = '0';
        json[o++] = i + 1 < n ? ',' : ']';
    }
    o += (size_t)snprintf(json + o, cap - o, "}}");
    const ProtobufCMessageDescriptor *up = &memorypins__v1__upsert_pin_request__descriptor;

    pins_arena *a = pins_arena_new(64u << 20);
    assert_non_null(a);
    ProtobufCMessage *m = NULL;
    proto_json_error err = {0};
    assert_int_equal(proto_json_decode_bounded(a, up, json, o, DEPTH, 1u << 20, &m, &err),
                     PINS_ETOO_LARGE);
    assert_null(m);
    assert_true(pins_arena_used(a) <= (1u << 20) + 4096);
    assert_non_null(pins_arena_alloc(a, 32u << 20)); /* the rest is still there */
    pins_arena_reset(a);

    assert_int_equal(proto_json_decode_bounded(a, up, json, o, DEPTH, 32u << 20, &m, &err), 0);
    Memorypins__V1__UpsertPinRequest *req = (Memorypins__V1__UpsertPinRequest *)m;
    assert_int_equal(req->value->fields[0]->value->list_value->n_values, n);

    /* An arena limit below the budget: still PINS_ETOO_LARGE, never PINS_ENOMEM. */
    pins_arena *small = pins_arena_new(1u << 20);
    assert_non_null(small);
    m = NULL;
    assert_int_equal(proto_json_decode_bounded(small, up, json, o, DEPTH, 0, &m, &err),
                     PINS_ETOO_LARGE);
    pins_arena_free(small);
    pins_arena_free(a);
    free(json);
}

static void test_json_rejects_malformed_json(void **state)
{
    pins_arena *a = *state;
    const ProtobufCMessageDescriptor *up = &memorypins__v1__upsert_pin_request__descriptor;
    static const char *const bad[] = {
        "{",
        "{\"key\"}",
        "{\"key\":}",
        "{\"key\":\"k\",}",
        "{,}",
        "{\"key\":\"k\"} x",
        "{\"key\":\"k\"}{}",
        "{\"key\":'k'}",
        "{key:\"k\"}",
        "{\"key\":\"\x01\"}",
        "{\"key\":\"\xc3\x28\"}",
        "{\"key\":\"\xed\xa0\x80\"}",
        "{\"key\":\"\\ud800\"}",
        "{\"key\":\"\\udc00x\"}",
        "{\"key\":\"\\x\"}",
        "{\"key\":\"\\u12G4\"}",
        "{\"key\":\"abc",
        "{\"ttl_seconds\":01}",
        "{\"ttl_seconds\":+1}",
        "{\"ttl_seconds\":.5}",
        "{\"ttl_seconds\":1.}",
        "{\"ttl_seconds\":1e}",
        "{\"ttl_seconds\":-}",
        "{\"ttl_seconds\":NaN}",
        "{\"value\":{\"a\":tru}}",
        "{\"value\":{\"a\":[1 2]}}",
        "\xef\xbb\xbf{}",
        "{\"key\":\"k\"}\x00",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        ProtobufCMessage *m = NULL;
        proto_json_error err = {0};
        size_t len = strlen(bad[i]) + (i == sizeof(bad) / sizeof(bad[0]) - 1);
        int rv = proto_json_decode(a, up, bad[i], len, DEPTH, &m, &err);
        if (rv != PINS_EMALFORMED || !err.type_error || strstr(err.msg, "invalid json") == NULL)
            print_error("accepted or wrong error (%d, %s): %s\n", rv, err.msg, bad[i]);
        assert_int_equal(rv, PINS_EMALFORMED);
        assert_true(err.type_error);
        assert_non_null(strstr(err.msg, "invalid json"));
        assert_null(m);
    }
}

static void test_json_rejects_nul_in_strings(void **state)
{
    pins_arena *a = *state;
    const ProtobufCMessageDescriptor *up = &memorypins__v1__upsert_pin_request__descriptor;
    assert_rejected(a, up, "{\"key\":\"a\\u0000b\"}", "key", "\\u0000", false);
    assert_rejected(a, up, "{\"value\":{\"a\\u0000\":1}}", "value", "\\u0000", false);
    assert_rejected(a, up, "{\"value\":{\"a\":[\"\\u0000\"]}}", "value.a[0]", "\\u0000", false);
}

static void test_json_depth_limit(void **state)
{
    pins_arena *a = *state;
    const ProtobufCMessageDescriptor *up = &memorypins__v1__upsert_pin_request__descriptor;
    char json[512];
    for (int depth = 9; depth <= 10; depth++) {
        /* The request is depth 1 and its value depth 2; every level of nesting adds one. */
        size_t n = 0;
        n += (size_t)snprintf(json + n, sizeof(json) - n, "{\"value\":");
        for (int i = 2; i < depth; i++)
            n += (size_t)snprintf(json + n, sizeof(json) - n, "{\"a\":");
        n += (size_t)snprintf(json + n, sizeof(json) - n, "[1]");
        for (int i = 2; i < depth; i++)
            n += (size_t)snprintf(json + n, sizeof(json) - n, "}");
        n += (size_t)snprintf(json + n, sizeof(json) - n, "}");
        ProtobufCMessage *m = NULL;
        proto_json_error err = {0};
        int rv = proto_json_decode(a, up, json, n, 9, &m, &err);
        if (depth == 9) {
            assert_int_equal(rv, 0);
        } else {
            assert_int_equal(rv, PINS_EMALFORMED);
            assert_false(err.type_error);
            assert_string_equal(err.msg, "nesting deeper than 9");
        }
    }
    /* Unknown members count too, and a huge depth is bounded whatever the caller asks. */
    size_t n = 0;
    n += (size_t)snprintf(json, sizeof(json), "{\"x\":");
    while (n < 400)
        json[n++] = '[';
    ProtobufCMessage *m = NULL;
    proto_json_error err = {0};
    assert_int_equal(proto_json_decode(a, up, json, n, 1000000, &m, &err), PINS_EMALFORMED);
    assert_non_null(strstr(err.msg, "nesting deeper than"));
}

static void test_json_empty_input_is_empty_message(void **state)
{
    pins_arena *a = *state;
    ProtobufCMessage *m = NULL;
    proto_json_error err = {0};
    assert_int_equal(proto_json_decode(a, &memorypins__v1__list_pins_request__descriptor, "", 0,
                                       DEPTH, &m, &err),
                     0);
    assert_non_null(m);
    assert_ptr_equal(m->descriptor, &memorypins__v1__list_pins_request__descriptor);
    assert_encodes(m, &proto_json_canonical, "{}");
    m = decode(a, &memorypins__v1__list_pins_request__descriptor, " \r\n\t ");
    assert_encodes(m, &proto_json_canonical, "{}");
}

static void test_json_arena_limit_is_too_large(void **state)
{
    pins_arena *small = pins_arena_new(8192);
    assert_non_null(small);
    char json[20000];
    size_t n = (size_t)snprintf(json, sizeof(json), "{\"key\":\"");
    memset(json + n, 'k', 12000);
    n += 12000;
    n += (size_t)snprintf(json + n, sizeof(json) - n, "\"}");
    ProtobufCMessage *m = NULL;
    proto_json_error err = {0};
    assert_int_equal(proto_json_decode(small, &memorypins__v1__get_pin_request__descriptor, json, n,
                                       DEPTH, &m, &err),
                     PINS_ETOO_LARGE);
    assert_null(m);
    assert_string_equal(err.path, "key");
    pins_arena_free(small);
    (void)state;
}

/* Every allocation of a decode fails in turn (the arena is the only allocator a decode uses for
 * its result): each run must fail cleanly with PINS_ETOO_LARGE until the limit suffices. */
static void test_json_decode_fails_cleanly_at_every_arena_limit(void **state)
{
    const char *json =
        "{\"tenant_id\":\"t\",\"key\":\"k\",\"value\":{\"a\":[1,{\"b\":\"x\"}],"
        "\"c\":\"\\u00e9\"},\"ttl_seconds\":5,\"expected_version\":\"2\",\"zz\":[{}]}";
    size_t limit = 16;
    for (;; limit += 16) {
        pins_arena *a = pins_arena_new(limit);
        assert_non_null(a);
        ProtobufCMessage *m = NULL;
        proto_json_error err = {0};
        int rv = proto_json_decode(a, &memorypins__v1__upsert_pin_request__descriptor, json,
                                   strlen(json), DEPTH, &m, &err);
        pins_arena_free(a);
        if (rv == 0)
            break;
        assert_int_equal(rv, PINS_ETOO_LARGE);
        assert_null(m);
        assert_string_equal(err.msg, "request too large");
        assert_true(limit < 65536);
    }
    (void)state;
}

/* Every output size short of the full text fails with PINS_ETOO_LARGE and leaves the buffer as
 * it was. */
static void test_json_encode_fails_cleanly_at_every_size(void **state)
{
    Memorypins__V1__Pin *p = sample_pin(*state);
    pins_buf full;
    pins_buf_init(&full, SIZE_MAX);
    assert_int_equal(proto_json_encode(&p->base, &proto_json_rest, &full), 0);
    for (size_t max = 1; max < pins_buf_len(&full); max++) {
        pins_buf b;
        pins_buf_init(&b, max);
        assert_int_equal(proto_json_encode(&p->base, &proto_json_rest, &b), PINS_ETOO_LARGE);
        assert_int_equal(pins_buf_len(&b), 0);
        pins_buf_free(&b);
    }
    pins_buf b;
    pins_buf_init(&b, pins_buf_len(&full));
    assert_int_equal(proto_json_encode(&p->base, &proto_json_rest, &b), 0);
    assert_string_equal(pins_buf_ptr(&b), pins_buf_ptr(&full));
    pins_buf_free(&b);
    pins_buf_free(&full);
}

/* ---- encoding limits and buffers ------------------------------------------------------------- */

static void test_json_encode_respects_buffer_max(void **state)
{
    Memorypins__V1__Pin *p = sample_pin(*state);
    /* The buffer's maximum bounds the text; a failure leaves what the buffer held before. */
    pins_buf b;
    pins_buf_init(&b, 40); /* the pin fails before its value */
    assert_int_equal(pins_buf_add(&b, "x", 1), 0);
    assert_int_equal(proto_json_encode(&p->base, &proto_json_rest, &b), PINS_ETOO_LARGE);
    assert_int_equal(pins_buf_len(&b), 1);
    assert_string_equal(pins_buf_ptr(&b), "x");
    pins_buf_free(&b);
    pins_buf_init(&b, 70); /* the pin fails inside its Struct value */
    assert_int_equal(pins_buf_add(&b, "x", 1), 0);
    assert_int_equal(proto_json_encode(&p->base, &proto_json_rest, &b), PINS_ETOO_LARGE);
    assert_int_equal(pins_buf_len(&b), 1);
    assert_string_equal(pins_buf_ptr(&b), "x");
    pins_buf_free(&b);
    pins_buf_init(&b, 1000);
    assert_int_equal(pins_buf_add(&b, "x", 1), 0);
    assert_int_equal(proto_json_encode(&p->base, &proto_json_rest, &b), 0);
    assert_int_equal(pins_buf_ptr(&b)[1], '{');
    assert_int_equal(pins_buf_ptr(&b)[pins_buf_len(&b)], '\0');
    pins_buf_free(&b);
}

/* ---- round trips ----------------------------------------------------------------------------- */

/* JSON -> message -> protobuf binary -> message -> JSON gives the same JSON text. */
static void assert_binary_round_trip(pins_arena *a, const ProtobufCMessageDescriptor *desc,
                                     const char *json, const proto_json_options *opt)
{
    ProtobufCMessage *m = decode(a, desc, json);
    size_t size = protobuf_c_message_get_packed_size(m);
    uint8_t *wire = malloc(size + 1);
    assert_non_null(wire);
    assert_int_equal(protobuf_c_message_pack(m, wire), size);
    ProtobufCMessage *u = protobuf_c_message_unpack(desc, NULL, size, wire);
    assert_non_null(u);
    pins_buf first, second;
    pins_buf_init(&first, SIZE_MAX);
    pins_buf_init(&second, SIZE_MAX);
    assert_int_equal(proto_json_encode(m, opt, &first), 0);
    assert_int_equal(proto_json_encode(u, opt, &second), 0);
    assert_string_equal(pins_buf_ptr(&first), pins_buf_ptr(&second));
    assert_string_equal(pins_buf_ptr(&first), json);
    pins_buf_free(&first);
    pins_buf_free(&second);
    protobuf_c_message_free_unpacked(u, NULL);
    free(wire);
}

static void test_json_round_trip_through_protobuf(void **state)
{
    pins_arena *a = *state;
    assert_binary_round_trip(
        a, &memorypins__v1__upsert_pin_response__descriptor,
        "{\"pin\":{\"id\":12,\"tenant_id\":\"t\",\"key\":\"k\",\"value\":{\"a\":{\"b\":[1,2.5,"
        "\"\xe2\x82\xac\",false,null]}},\"source\":\"api\",\"created_at\":"
        "\"2026-11-27T23:53:22.123456Z\",\"updated_at\":\"2026-11-27T23:53:22.123456Z\","
        "\"ttl_seconds\":0,\"expires_at\":\"2026-11-27T23:53:22.123456Z\",\"version\":1,"
        "\"revision\":5},"
        "\"created\":true}",
        &proto_json_rest);
    assert_binary_round_trip(a, &memorypins__v1__list_rbac_audit_response__descriptor,
                             "{\"entries\":[{\"id\":\"1\",\"ts\":\"2026-11-27T23:53:22Z\","
                             "\"subject\":\"s\",\"allowed\":true,\"roles\":[\"a\",\"b\"],"
                             "\"latencyMs\":0.25},{\"id\":\"2\"}],\"total\":\"2\",\"limit\":10}",
                             &proto_json_canonical);
    assert_binary_round_trip(a, &grpc__reflection__v1__server_reflection_response__descriptor,
                             "{\"validHost\":\"h\",\"originalRequest\":{\"fileContainingSymbol\":"
                             "\"memorypins.v1.Pin\"},\"errorResponse\":{\"errorCode\":5,"
                             "\"errorMessage\":\"not found\"}}",
                             &proto_json_canonical);
    assert_binary_round_trip(a, &map_holder_desc,
                             "{\"counts\":{\"a\":\"1\",\"b\":\"-2\"},\"names\":{\"3\":\"three\"},"
                             "\"wrappedInts\":{\"x\":5}}",
                             &proto_json_canonical);
}

/* ---- maps and the well-known types that the build does not generate ------------------------- */

static void test_json_map_fields(void **state)
{
    pins_arena *a = *state;
    MapHolder *m =
        decode(a, &map_holder_desc,
               "{\"counts\":{\"a\":1,\"b\":\"9007199254740993\"},\"names\":{\"-7\":\"x\","
               "\"8\":\"y\"},\"wrapped_ints\":{\"n\":null,\"v\":3}}");
    assert_int_equal(m->n_counts, 2);
    assert_string_equal(m->counts[0]->key, "a");
    assert_int_equal(m->counts[0]->value, 1);
    assert_true(m->counts[1]->value == 9007199254740993LL);
    assert_int_equal(m->n_names, 2);
    assert_int_equal(m->names[0]->key, -7);
    assert_string_equal(m->names[1]->value, "y");
    assert_int_equal(m->n_wraps, 2);
    assert_null(m->wraps[0]->value);
    assert_int_equal(m->wraps[1]->value->value, 3);
    assert_encodes(m, &proto_json_rest,
                   "{\"counts\":{\"a\":1,\"b\":9007199254740993},\"names\":{\"-7\":\"x\","
                   "\"8\":\"y\"},\"wrapped_ints\":{\"n\":null,\"v\":3}}");
    assert_encodes(m, &proto_json_canonical,
                   "{\"counts\":{\"a\":\"1\",\"b\":\"9007199254740993\"},\"names\":{\"-7\":\"x\","
                   "\"8\":\"y\"},\"wrappedInts\":{\"n\":null,\"v\":3}}");
    MapHolder empty;
    init_map_holder(&empty.base);
    assert_encodes(&empty, &proto_json_rest, "{\"counts\":{},\"names\":{},\"wrapped_ints\":{}}");
    assert_encodes(&empty, &proto_json_canonical, "{}");
    assert_rejected(a, &map_holder_desc, "{\"names\":{\"x\":\"y\"}}", "names.x", "invalid number",
                    false);
    assert_rejected(a, &map_holder_desc, "{\"names\":{\"1.5\":\"y\"}}", "names.1.5",
                    "not a fraction", false);
    assert_rejected(a, &map_holder_desc, "{\"counts\":{\"a\":null}}", "counts.a", "not null", true);
    assert_rejected(a, &map_holder_desc, "{\"counts\":[]}", "counts", "expected an object", true);
}

static void test_json_duration_fieldmask_empty(void **state)
{
    pins_arena *a = *state;
    WktHolder *h =
        decode(a, &wkt_holder_desc, "{\"d\":\"-1.5s\",\"mask\":\"tenantId,pin.key\",\"e\":{}}");
    assert_int_equal(h->d->seconds, -1);
    assert_int_equal(h->d->nanos, -500000000);
    assert_int_equal(h->mask->n_paths, 2);
    assert_string_equal(h->mask->paths[0], "tenant_id");
    assert_string_equal(h->mask->paths[1], "pin.key");
    assert_non_null(h->e);
    assert_encodes(h, &proto_json_canonical,
                   "{\"d\":\"-1.500s\",\"mask\":\"tenantId,pin.key\",\"e\":{}}");
    h->d->seconds = 0;
    h->d->nanos = 1000;
    h->mask->n_paths = 0;
    assert_encodes(h, &proto_json_rest, "{\"d\":\"0.000001s\",\"mask\":\"\",\"e\":{}}");
    h = decode(a, &wkt_holder_desc, "{\"d\":\"315576000000s\",\"mask\":\"\"}");
    assert_true(h->d->seconds == 315576000000LL);
    assert_int_equal(h->mask->n_paths, 0);
    assert_null(h->e);
    assert_encodes(h, &proto_json_rest, "{\"d\":\"315576000000s\",\"mask\":\"\",\"e\":null}");
    assert_rejected(a, &wkt_holder_desc, "{\"d\":\"1.5\"}", "d", "invalid duration", false);
    assert_rejected(a, &wkt_holder_desc, "{\"d\":\"315576000001s\"}", "d", "invalid duration",
                    false);
    assert_rejected(a, &wkt_holder_desc, "{\"d\":\"1.0000000001s\"}", "d", "invalid duration",
                    false);
    assert_rejected(a, &wkt_holder_desc, "{\"d\":1}", "d", "expected a string", true);
    assert_rejected(a, &wkt_holder_desc, "{\"mask\":\"a,,b\"}", "mask", "invalid field mask",
                    false);
    assert_rejected(a, &wkt_holder_desc, "{\"e\":[]}", "e", "expected an object", true);
}

/* ---- set_field ------------------------------------------------------------------------------- */

static void test_json_set_field_binds_query_values(void **state)
{
    pins_arena *a = *state;
    Memorypins__V1__ListPinsRequest *r =
        decode(a, &memorypins__v1__list_pins_request__descriptor, "");
    proto_json_error err = {0};
    assert_int_equal(proto_json_set_field(a, &r->base, "limit", "50", 2, &err), 0);
    assert_int_equal(proto_json_set_field(a, &r->base, "include_expired", "TRUE", 4, &err), 0);
    assert_int_equal(proto_json_set_field(a, &r->base, "tenantId", "t\xc3\xa9x", 3, &err), 0);
    assert_int_equal(proto_json_set_field(a, &r->base, "page_token", "", 0, &err), 0);
    assert_int_equal(r->limit, 50);
    assert_true(r->include_expired);
    assert_string_equal(r->tenant_id, "t\xc3\xa9");
    assert_int_equal(proto_json_set_field(a, &r->base, "include_expired", "0", 1, &err), 0);
    assert_false(r->include_expired);
    assert_int_equal(proto_json_set_field(a, &r->base, "nope", "1", 1, &err), PINS_ENOT_FOUND);
    assert_int_equal(proto_json_set_field(a, &r->base, "limit.x", "1", 1, &err), PINS_ENOT_FOUND);
    assert_int_equal(proto_json_set_field(a, &r->base, "limit", "ten", 3, &err), PINS_EMALFORMED);
    assert_string_equal(err.path, "limit");
    assert_string_equal(err.msg, "invalid number");
    assert_false(err.type_error);
    assert_int_equal(proto_json_set_field(a, &r->base, "limit", "3000000000", 10, &err),
                     PINS_EMALFORMED);
    assert_int_equal(proto_json_set_field(a, &r->base, "include_expired", "maybe", 5, &err),
                     PINS_EMALFORMED);
    assert_int_equal(proto_json_set_field(a, &r->base, "prefix", "a\0b", 3, &err), PINS_EMALFORMED);
    assert_int_equal(proto_json_set_field(a, &r->base, "prefix", "\xff", 1, &err), PINS_EMALFORMED);
    assert_int_equal(r->limit, 50);

    Memorypins__V1__DeletePinRequest *d =
        decode(a, &memorypins__v1__delete_pin_request__descriptor, "{}");
    assert_int_equal(proto_json_set_field(a, &d->base, "expected_version", "3", 1, &err), 0);
    assert_int_equal(d->expected_version->value, 3);
    assert_int_equal(proto_json_set_field(a, &d->base, "expected_version", "", 0, &err),
                     PINS_EMALFORMED);

    Memorypins__V1__ListRbacAuditRequest *q =
        decode(a, &memorypins__v1__list_rbac_audit_request__descriptor, "{}");
    const char *since = "2026-11-27T23:53:22.5Z";
    assert_int_equal(proto_json_set_field(a, &q->base, "since", since, strlen(since), &err), 0);
    assert_int_equal(q->since->seconds, T_2026_11_27);
    assert_int_equal(q->since->nanos, 500000000);
    assert_int_equal(proto_json_set_field(a, &q->base, "allowed", "false", 5, &err), 0);
    assert_non_null(q->allowed);
    assert_false(q->allowed->value);
    assert_int_equal(proto_json_set_field(a, &q->base, "since", "yesterday", 9, &err),
                     PINS_EMALFORMED);
    assert_string_equal(err.path, "since");

    Memorypins__V1__UpsertPinRequest *u =
        decode(a, &memorypins__v1__upsert_pin_request__descriptor, "{}");
    const char *value = "{\"a\":[1]}";
    assert_int_equal(proto_json_set_field(a, &u->base, "value", value, strlen(value), &err), 0);
    assert_int_equal(u->value->n_fields, 1);
    assert_int_equal(proto_json_set_field(a, &u->base, "value", "[1]", 3, &err), PINS_EMALFORMED);
    assert_true(err.type_error);

    Memorypins__V1__GetRbacInfoResponse *i =
        decode(a, &memorypins__v1__get_rbac_info_response__descriptor, "{\"roles\":[\"a\"]}");
    assert_int_equal(proto_json_set_field(a, &i->base, "roles", "b", 1, &err), 0);
    assert_int_equal(i->n_roles, 2);
    assert_string_equal(i->roles[1], "b");

    Memorypins__V1__UpsertPinResponse *up =
        decode(a, &memorypins__v1__upsert_pin_response__descriptor, "{}");
    assert_int_equal(proto_json_set_field(a, &up->base, "pin.ttl_seconds", "9", 1, &err), 0);
    assert_int_equal(up->pin->ttl_seconds->value, 9);
    assert_int_equal(proto_json_set_field(a, &up->base, "pin.key", "k", 1, &err), 0);
    assert_string_equal(up->pin->key, "k");

    Grpc__Reflection__V1__ServerReflectionRequest *rr =
        decode(a, &grpc__reflection__v1__server_reflection_request__descriptor, "{}");
    assert_int_equal(proto_json_set_field(a, &rr->base, "list_services", "*", 1, &err), 0);
    assert_int_equal(proto_json_set_field(a, &rr->base, "file_by_filename", "f", 1, &err),
                     PINS_EMALFORMED);
    assert_string_equal(rr->list_services, "*");
}

int main(void)
{
#define T(name) cmocka_unit_test_setup_teardown(name, setup, teardown)
    const struct CMUnitTest tests[] = {
        T(test_json_rest_pin_has_every_field),
        T(test_json_canonical_pin_omits_defaults),
        T(test_json_rest_pin_with_ttl),
        T(test_json_list_response_repeated_messages),
        T(test_json_string_wrapper),
        T(test_json_bool_wrapper_and_timestamp),
        T(test_json_timestamp_forms),
        T(test_json_enum_names_and_numbers),
        T(test_json_struct_field),
        T(test_json_double_bool_repeated_string),
        T(test_json_oneof_and_bytes),
        T(test_json_proto2_optional_fields),
        T(test_json_wrappers_are_bare_values),
        T(test_json_accepts_both_name_styles),
        T(test_json_ignores_unknown_fields),
        T(test_json_null_means_unset_or_default),
        T(test_json_integer_kinds_and_ranges),
        T(test_json_wrong_types_are_type_errors),
        T(test_json_expected_only_for_well_formed_input),
        T(test_json_decode_bounded_stops_at_its_budget),
        T(test_json_rejects_malformed_json),
        T(test_json_rejects_nul_in_strings),
        T(test_json_depth_limit),
        T(test_json_empty_input_is_empty_message),
        T(test_json_arena_limit_is_too_large),
        T(test_json_decode_fails_cleanly_at_every_arena_limit),
        T(test_json_encode_fails_cleanly_at_every_size),
        T(test_json_encode_respects_buffer_max),
        T(test_json_round_trip_through_protobuf),
        T(test_json_map_fields),
        T(test_json_duration_fieldmask_empty),
        T(test_json_set_field_binds_query_values),
    };
#undef T
    return cmocka_run_group_tests_name("protocols/json", tests, NULL, NULL);
}
