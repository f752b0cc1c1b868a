/* tests/unit/rpc/services/test_memory_pins.c: the memorypins.v1.MemoryPins handlers
 * (rpc/services/memory_pins.c) through the fake transport and the real SQLite store. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/arena.h"
#include "common/base64.h"
#include "common/error.h"
#include "common/pbstruct.h"
#include "fake_call.h"
#include "scrape.h"
#include "memorypins/v1/memory_pins.pb-c.h"
#include "rpc/watch.h"

#define SVC "/memorypins.v1.MemoryPins/"

typedef Memorypins__V1__UpsertPinRequest UpsertReq;
typedef Memorypins__V1__UpsertPinResponse UpsertResp;
typedef Memorypins__V1__GetPinRequest GetReq;
typedef Memorypins__V1__GetPinResponse GetResp;
typedef Memorypins__V1__ListPinsRequest ListReq;
typedef Memorypins__V1__ListPinsResponse ListResp;
typedef Memorypins__V1__DeletePinRequest DeleteReq;
typedef Memorypins__V1__DeletePinResponse DeleteResp;
typedef Memorypins__V1__CleanupExpiredPinsRequest CleanupReq;
typedef Memorypins__V1__CleanupExpiredPinsResponse CleanupResp;

#define NO_TTL     INT64_MIN /* for the helpers: leave ttl_seconds unset */
#define NO_VERSION INT64_MIN /* leave expected_version unset */

typedef struct fixture {
    fake_env *env;
    pins_arena *a; /* requests built by the tests */
} fixture;

static int setup(void **state)
{
    fixture *fx = calloc(1, sizeof(*fx));
    assert_non_null(fx);
    fx->env = fake_env_new();
    fx->a = pins_arena_new(0);
    assert_non_null(fx->a);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    fixture *fx = *state;
    fake_env_free(fx->env);
    pins_arena_free(fx->a);
    free(fx);
    return 0;
}

/* ---- request builders -------------------------------------------------------------------------
 */

static Google__Protobuf__Struct *value_of(fixture *fx, const char *json)
{
    Google__Protobuf__Struct *s = NULL;
    assert_int_equal(pbstruct_from_json(fx->a, json, strlen(json), PBSTRUCT_MAX_DEPTH, &s), 0);
    return s;
}

/* A new arena string of n copies of unit. */
static char *repeat(fixture *fx, const char *unit, size_t n)
{
    size_t ul = strlen(unit);
    char *s = pins_arena_alloc(fx->a, ul * n + 1);
    assert_non_null(s);
    for (size_t i = 0; i < n; i++)
        memcpy(s + i * ul, unit, ul);
    s[ul * n] = '\0';
    return s;
}

/* {"a":{"a":...{}...}}: an object nested depth deep (the outer object is depth 1). */
static const char *nested_json(fixture *fx, int depth)
{
    char *s = pins_arena_alloc(fx->a, (size_t)depth * 6 + 4);
    assert_non_null(s);
    size_t n = 0;
    for (int i = 1; i < depth; i++) {
        memcpy(s + n, "{\"a\":", 5);
        n += 5;
    }
    memcpy(s + n, "{}", 2);
    n += 2;
    for (int i = 1; i < depth; i++)
        s[n++] = '}';
    s[n] = '\0';
    return s;
}

static UpsertReq *upsert_req(fixture *fx, const char *tenant, const char *key, const char *json)
{
    UpsertReq *r = pins_arena_alloc(fx->a, sizeof(*r));
    assert_non_null(r);
    memorypins__v1__upsert_pin_request__init(r);
    if (tenant != NULL)
        r->tenant_id = (char *)tenant;
    r->key = (char *)key;
    r->value = json != NULL ? value_of(fx, json) : NULL;
    return r;
}

static void set_ttl(fixture *fx, UpsertReq *r, int64_t ttl)
{
    if (ttl == NO_TTL)
        return;
    r->ttl_seconds = pins_arena_alloc(fx->a, sizeof(*r->ttl_seconds));
    assert_non_null(r->ttl_seconds);
    google__protobuf__int32_value__init(r->ttl_seconds);
    r->ttl_seconds->value = (int32_t)ttl;
}

static Google__Protobuf__Int64Value *version_of(fixture *fx, int64_t v)
{
    if (v == NO_VERSION)
        return NULL;
    Google__Protobuf__Int64Value *w = pins_arena_alloc(fx->a, sizeof(*w));
    assert_non_null(w);
    google__protobuf__int64_value__init(w);
    w->value = v;
    return w;
}

/* ---- calls ------------------------------------------------------------------------------------
 */

static fake_call *call_upsert(fixture *fx, const UpsertReq *r)
{
    return fake_call_run(fx->env, SVC "UpsertPin", &r->base, NULL);
}

/* Upserts and expects success; returns the response (owned by *pfc, which the caller frees). */
static const UpsertResp *upsert_ok(fixture *fx, fake_call **pfc, const char *tenant,
                                   const char *key, const char *json, int64_t ttl, int64_t expected)
{
    UpsertReq *r = upsert_req(fx, tenant, key, json);
    set_ttl(fx, r, ttl);
    r->expected_version = version_of(fx, expected);
    fake_call *fc = call_upsert(fx, r);
    if (fake_call_err(fc) != 0)
        fail_msg("upsert %s failed: %s", key, fake_call_message(fc));
    assert_int_equal(fake_call_nsent(fc), 1);
    *pfc = fc;
    return (const UpsertResp *)fake_call_response(fc);
}

/* Upserts; for setup steps whose response does not matter. */
static void put(fixture *fx, const char *tenant, const char *key, int64_t ttl)
{
    fake_call *fc = NULL;
    upsert_ok(fx, &fc, tenant, key, "{\"v\":1}", ttl, NO_VERSION);
    fake_call_free(fc);
}

static fake_call *call_get(fixture *fx, const char *tenant, const char *key)
{
    GetReq r = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    if (tenant != NULL)
        r.tenant_id = (char *)tenant;
    r.key = (char *)key;
    return fake_call_run(fx->env, SVC "GetPin", &r.base, NULL);
}

static fake_call *call_list(fixture *fx, const ListReq *r)
{
    return fake_call_run(fx->env, SVC "ListPins", &r->base, NULL);
}

static fake_call *call_delete(fixture *fx, const char *tenant, const char *key, int64_t expected)
{
    DeleteReq r = MEMORYPINS__V1__DELETE_PIN_REQUEST__INIT;
    if (tenant != NULL)
        r.tenant_id = (char *)tenant;
    r.key = (char *)key;
    r.expected_version = version_of(fx, expected);
    return fake_call_run(fx->env, SVC "DeletePin", &r.base, NULL);
}

/* tenant NULL: every tenant. */
static fake_call *call_cleanup(fixture *fx, const char *tenant)
{
    CleanupReq r = MEMORYPINS__V1__CLEANUP_EXPIRED_PINS_REQUEST__INIT;
    Google__Protobuf__StringValue t = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
    if (tenant != NULL) {
        t.value = (char *)tenant;
        r.tenant_id = &t;
    }
    return fake_call_run(fx->env, SVC "CleanupExpiredPins", &r.base, NULL);
}

static void assert_status(fake_call *fc, int err, int grpc, const char *message)
{
    assert_true(fake_call_finished(fc));
    if (fake_call_err(fc) != err)
        fail_msg("expected %s, got %s: %s", pins_error_name(err),
                 pins_error_name(fake_call_err(fc)), fake_call_message(fc));
    assert_int_equal(fake_call_grpc_code(fc), grpc);
    if (message != NULL)
        assert_string_equal(fake_call_message(fc), message);
    assert_int_equal(fake_call_nsent(fc), 0);
}

/* INVALID_ARGUMENT naming field (a field of the request message; where a transport bound it is
 * the transport's to say). */
static void assert_invalid(fake_call *fc, const char *field)
{
    assert_status(fc, PINS_EINVALID_ARGUMENT, 3, NULL);
    const char *msg = fake_call_message(fc);
    size_t fl = strlen(field);
    if (strncmp(msg, field, fl) != 0 || msg[fl] != ':')
        fail_msg("message \"%s\" does not name %s", msg, field);
    assert_non_null(fake_call_field(fc));
    assert_string_equal(fake_call_field(fc), field);
    assert_null(fake_call_field_type(fc)); /* the default, FastAPI's "value_error" on REST */
}

static int64_t ts_us(const Google__Protobuf__Timestamp *t)
{
    assert_non_null(t);
    return t->seconds * 1000000 + t->nanos / 1000;
}

static char *json_of(const Google__Protobuf__Struct *s)
{
    char *json = NULL;
    size_t len = 0;
    assert_int_equal(pbstruct_to_json(s, SIZE_MAX, PBSTRUCT_MAX_DEPTH, &json, &len), 0);
    return json;
}

/* Upserts key of the default tenant with expected_version expected and expects the failure err
 * with the gRPC code and message. */
static void upsert_fails(fixture *fx, const char *key, const char *json, int64_t expected, int err,
                         int grpc, const char *message)
{
    UpsertReq *r = upsert_req(fx, NULL, key, json);
    r->expected_version = version_of(fx, expected);
    fake_call *fc = call_upsert(fx, r);
    assert_status(fc, err, grpc, message);
    fake_call_free(fc);
}

/* GetPin finds key of tenant at version, with the value json (NULL: the value is not checked). */
static void assert_stored(fixture *fx, const char *tenant, const char *key, int64_t version,
                          const char *json)
{
    fake_call *g = call_get(fx, tenant, key);
    const GetResp *gr = (const GetResp *)fake_call_response(g);
    assert_int_equal(gr->pin->version, version);
    if (json != NULL) {
        char *got = json_of(gr->pin->value);
        assert_string_equal(got, json);
        free(got);
    }
    fake_call_free(g);
}

/* ---- UpsertPin --------------------------------------------------------------------------------
 */

static void test_upsert_creates_a_pin_with_defaults(void **state)
{
    fixture *fx = *state;
    fake_call *fc = NULL;
    const UpsertResp *r =
        upsert_ok(fx, &fc, "", "k1", "{\"a\":[1,\"x\",true,null]}", NO_TTL, NO_VERSION);
    assert_true(r->created);
    const Memorypins__V1__Pin *p = r->pin;
    assert_non_null(p);
    assert_string_equal(p->key, "k1");
    assert_string_equal(p->tenant_id, "global");
    assert_string_equal(p->source, "api");
    assert_int_equal(p->version, 1);
    assert_true(p->id > 0);
    assert_null(p->ttl_seconds);
    assert_null(p->expires_at);
    assert_int_equal(ts_us(p->created_at), ts_us(p->updated_at));
    char *json = json_of(p->value);
    assert_string_equal(json, "{\"a\":[1,\"x\",true,null]}");
    free(json);
    fake_call_free(fc);
    assert_int_equal(fake_env_pin_count(fx->env, "global"), 1);
}

static void test_upsert_again_bumps_version_and_keeps_created_at(void **state)
{
    fixture *fx = *state;
    fake_call *fc1 = NULL, *fc2 = NULL;
    const UpsertResp *r1 = upsert_ok(fx, &fc1, "acme", "k1", "{\"v\":1}", NO_TTL, NO_VERSION);
    const UpsertResp *r2 = upsert_ok(fx, &fc2, "acme", "k1", "{\"v\":2}", NO_TTL, NO_VERSION);
    assert_false(r2->created);
    assert_int_equal(r2->pin->version, 2);
    assert_int_equal(r2->pin->id, r1->pin->id);
    assert_int_equal(ts_us(r2->pin->created_at), ts_us(r1->pin->created_at));
    assert_true(ts_us(r2->pin->updated_at) >= ts_us(r1->pin->updated_at));
    assert_string_equal(r2->pin->tenant_id, "acme");
    fake_call_free(fc1);
    fake_call_free(fc2);
    assert_stored(fx, "acme", "k1", 2, "{\"v\":2}");
}

static void test_upsert_keeps_a_custom_source(void **state)
{
    fixture *fx = *state;
    UpsertReq *r = upsert_req(fx, NULL, "k1", "{}");
    r->source = "agent";
    fake_call *fc = call_upsert(fx, r);
    assert_int_equal(fake_call_err(fc), 0);
    assert_string_equal(((const UpsertResp *)fake_call_response(fc))->pin->source, "agent");
    fake_call_free(fc);
}

static void test_upsert_with_ttl_sets_expiry_from_the_write(void **state)
{
    fixture *fx = *state;
    fake_call *fc = NULL;
    const UpsertResp *r = upsert_ok(fx, &fc, NULL, "k1", "{}", 3600, NO_VERSION);
    assert_non_null(r->pin->ttl_seconds);
    assert_int_equal(r->pin->ttl_seconds->value, 3600);
    /* API.md 4: expires_at = time of this write + ttl_seconds. */
    assert_int_equal(ts_us(r->pin->expires_at),
                     ts_us(r->pin->updated_at) + 3600 * INT64_C(1000000));
    fake_call_free(fc);
}

static void test_upsert_with_ttl_zero_expires_at_once(void **state)
{
    fixture *fx = *state;
    fake_call *fc = NULL;
    const UpsertResp *r = upsert_ok(fx, &fc, NULL, "k1", "{}", 0, NO_VERSION);
    assert_non_null(r->pin->ttl_seconds);
    assert_int_equal(r->pin->ttl_seconds->value, 0);
    assert_int_equal(ts_us(r->pin->expires_at), ts_us(r->pin->updated_at));
    fake_call_free(fc);

    /* Expired at once: invisible to GetPin and ListPins, still in the store. */
    fake_call *g = call_get(fx, NULL, "k1");
    assert_status(g, PINS_ENOT_FOUND, 5, "Pin not found: k1");
    fake_call_free(g);
    ListReq lr = MEMORYPINS__V1__LIST_PINS_REQUEST__INIT;
    fake_call *l = call_list(fx, &lr);
    assert_int_equal(((const ListResp *)fake_call_response(l))->n_pins, 0);
    fake_call_free(l);
    assert_int_equal(fake_env_pin_count(fx->env, "global"), 1);
}

static void test_upsert_over_an_expired_pin_creates_it_anew(void **state)
{
    fixture *fx = *state;
    put(fx, NULL, "k1", 0);
    fake_call *fc = NULL;
    const UpsertResp *r = upsert_ok(fx, &fc, NULL, "k1", "{}", NO_TTL, NO_VERSION);
    assert_true(r->created);
    assert_int_equal(r->pin->version, 1);
    assert_null(r->pin->expires_at); /* null ttl clears the expiry */
    fake_call_free(fc);
}

static void test_upsert_expected_version_zero_creates_only(void **state)
{
    fixture *fx = *state;
    fake_call *fc = NULL;
    const UpsertResp *r = upsert_ok(fx, &fc, NULL, "k1", "{\"v\":1}", NO_TTL, 0);
    assert_true(r->created);
    assert_int_equal(r->pin->version, 1);
    fake_call_free(fc);

    upsert_fails(fx, "k1", "{\"v\":2}", 0, PINS_EALREADY_EXISTS, 6, "Pin already exists: k1");
    assert_stored(fx, NULL, "k1", 1, "{\"v\":1}");
}

static void test_upsert_expected_version_n_updates_only_version_n(void **state)
{
    fixture *fx = *state;
    put(fx, NULL, "k1", NO_TTL);
    fake_call *fc = NULL;
    const UpsertResp *r = upsert_ok(fx, &fc, NULL, "k1", "{\"v\":2}", NO_TTL, 1);
    assert_false(r->created);
    assert_int_equal(r->pin->version, 2);
    fake_call_free(fc);

    upsert_fails(fx, "k1", "{\"v\":3}", 1, PINS_EABORTED, 10, "Version conflict on pin: k1");
    /* N on a pin that does not exist is a conflict too. */
    upsert_fails(fx, "k2", "{}", 3, PINS_EABORTED, 10, "Version conflict on pin: k2");
    assert_stored(fx, NULL, "k1", 2, NULL);
    assert_int_equal(fake_env_pin_count(fx->env, "global"), 1);
}

/* ---- GetPin -----------------------------------------------------------------------------------
 */

static void test_get_returns_the_pin(void **state)
{
    fixture *fx = *state;
    fake_call *fc = NULL;
    const UpsertResp *u =
        upsert_ok(fx, &fc, "acme", "k1", "{\"n\":1.5,\"s\":\"caf\xc3\xa9\"}", NO_TTL, NO_VERSION);
    int64_t id = u->pin->id;
    fake_call_free(fc);

    fake_call *g = call_get(fx, "acme", "k1");
    assert_int_equal(fake_call_err(g), 0);
    const GetResp *r = (const GetResp *)fake_call_response(g);
    assert_int_equal(r->pin->id, id);
    assert_string_equal(r->pin->key, "k1");
    assert_string_equal(r->pin->tenant_id, "acme");
    char *json = json_of(r->pin->value);
    assert_string_equal(json, "{\"n\":1.5,\"s\":\"caf\xc3\xa9\"}");
    free(json);
    fake_call_free(g);

    /* Tenants are separate. */
    g = call_get(fx, "other", "k1");
    assert_status(g, PINS_ENOT_FOUND, 5, "Pin not found: k1");
    fake_call_free(g);
}

static void test_get_defaults_the_tenant_to_global(void **state)
{
    fixture *fx = *state;
    put(fx, "", "k1", NO_TTL);
    fake_call *g = call_get(fx, "global", "k1");
    assert_int_equal(fake_call_err(g), 0);
    fake_call_free(g);
    g = call_get(fx, NULL, "k1");
    assert_int_equal(fake_call_err(g), 0);
    assert_string_equal(((const GetResp *)fake_call_response(g))->pin->tenant_id, "global");
    fake_call_free(g);
}

static void test_get_missing_pin_is_not_found(void **state)
{
    fixture *fx = *state;
    fake_call *g = call_get(fx, NULL, "nope");
    assert_status(g, PINS_ENOT_FOUND, 5, "Pin not found: nope");
    fake_call_free(g);
}

/* ---- ListPins ---------------------------------------------------------------------------------
 */

static void put_seven(fixture *fx)
{
    char key[8];
    for (int i = 0; i < 7; i++) {
        snprintf(key, sizeof(key), "p%d", i);
        put(fx, "acme", key, NO_TTL);
    }
    put(fx, "other", "p9", NO_TTL);
}

/* The keys of a list response, joined by spaces. */
static const char *keys_of(fixture *fx, const ListResp *r)
{
    char *s = pins_arena_strdup(fx->a, "");
    for (size_t i = 0; i < r->n_pins; i++)
        s = pins_arena_printf(fx->a, "%s%s%s", s, i ? " " : "", r->pins[i]->key);
    return s;
}

static void test_list_orders_newest_first(void **state)
{
    fixture *fx = *state;
    put_seven(fx);
    ListReq lr = MEMORYPINS__V1__LIST_PINS_REQUEST__INIT;
    lr.tenant_id = "acme";
    fake_call *l = call_list(fx, &lr);
    assert_int_equal(fake_call_err(l), 0);
    const ListResp *r = (const ListResp *)fake_call_response(l);
    assert_string_equal(keys_of(fx, r), "p6 p5 p4 p3 p2 p1 p0");
    assert_int_equal(r->total, 7);
    assert_int_equal(r->limit, 100); /* the default */
    assert_int_equal(r->offset, 0);
    assert_string_equal(r->next_page_token, "");
    for (size_t i = 1; i < r->n_pins; i++) {
        assert_true(ts_us(r->pins[i - 1]->created_at) >= ts_us(r->pins[i]->created_at));
        assert_true(r->pins[i - 1]->id > r->pins[i]->id);
    }
    fake_call_free(l);
}

static void test_list_applies_limit_and_offset(void **state)
{
    fixture *fx = *state;
    put_seven(fx);
    ListReq lr = MEMORYPINS__V1__LIST_PINS_REQUEST__INIT;
    lr.tenant_id = "acme";
    lr.limit = 2;
    lr.offset = 1;
    fake_call *l = call_list(fx, &lr);
    const ListResp *r = (const ListResp *)fake_call_response(l);
    assert_string_equal(keys_of(fx, r), "p5 p4");
    assert_int_equal(r->total, 7);
    assert_int_equal(r->limit, 2);
    assert_int_equal(r->offset, 1);
    assert_string_not_equal(r->next_page_token, "");
    fake_call_free(l);

    lr.offset = 7;
    l = call_list(fx, &lr);
    r = (const ListResp *)fake_call_response(l);
    assert_int_equal(r->n_pins, 0);
    assert_int_equal(r->total, 7);
    assert_string_equal(r->next_page_token, "");
    fake_call_free(l);
}

static void test_list_matches_prefix_literally(void **state)
{
    fixture *fx = *state;
    static const char *const keys[] = {"alpha-1", "alpha-2", "beta-1", "a_b",
                                       "axb",     "50%off",  "500"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        put(fx, NULL, keys[i], NO_TTL);
    static const struct {
        const char *prefix;
        const char *keys;
    } cases[] = {
        {"alpha", "alpha-2 alpha-1"},
        {"a_", "a_b"},
        {"50%", "50%off"},
        {"beta-1", "beta-1"},
        {"gamma", ""},
        {"", "500 50%off axb a_b beta-1 alpha-2 alpha-1"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        ListReq lr = MEMORYPINS__V1__LIST_PINS_REQUEST__INIT;
        lr.prefix = (char *)cases[i].prefix;
        fake_call *l = call_list(fx, &lr);
        assert_int_equal(fake_call_err(l), 0);
        const ListResp *r = (const ListResp *)fake_call_response(l);
        assert_string_equal(keys_of(fx, r), cases[i].keys);
        assert_int_equal(r->total, (int64_t)r->n_pins);
        fake_call_free(l);
    }
}

/* ListPins of tenant "acme" with limit (0: the default) from token (NULL: the first page). */
static fake_call *list_acme(fixture *fx, int32_t limit, const char *token)
{
    ListReq lr = MEMORYPINS__V1__LIST_PINS_REQUEST__INIT;
    lr.tenant_id = "acme";
    lr.limit = limit;
    if (token != NULL)
        lr.page_token = (char *)token;
    return call_list(fx, &lr);
}

static void test_list_page_tokens_cover_every_pin_once(void **state)
{
    fixture *fx = *state;
    put_seven(fx);
    static const char *const pages[] = {"p6 p5 p4", "p3 p2 p1", "p0"};
    static const int32_t offsets[] = {0, 3, 6};
    char *token = pins_arena_strdup(fx->a, "");
    for (size_t i = 0; i < 3; i++) {
        fake_call *l = list_acme(fx, 3, token);
        assert_int_equal(fake_call_err(l), 0);
        const ListResp *r = (const ListResp *)fake_call_response(l);
        assert_string_equal(keys_of(fx, r), pages[i]);
        assert_int_equal(r->offset, offsets[i]);
        assert_int_equal(r->total, 7);
        if (i < 2)
            assert_string_not_equal(r->next_page_token, "");
        else
            assert_string_equal(r->next_page_token, "");
        token = pins_arena_strdup(fx->a, r->next_page_token);
        fake_call_free(l);
    }
}

static void test_list_page_token_neither_skips_nor_repeats_after_an_insert(void **state)
{
    fixture *fx = *state;
    put_seven(fx);
    fake_call *l = list_acme(fx, 3, NULL);
    char *token =
        pins_arena_strdup(fx->a, ((const ListResp *)fake_call_response(l))->next_page_token);
    fake_call_free(l);
    put(fx, "acme", "new", NO_TTL); /* lands on the first page, before the cursor */
    l = list_acme(fx, 3, token);
    assert_string_equal(keys_of(fx, (const ListResp *)fake_call_response(l)), "p3 p2 p1");
    fake_call_free(l);
}

/* Page tokens are "<offset>.<created_us>.<id>" in URL-safe base64 without padding. The issued
 * token of the first page names the last pin of that page, read back from the response. */
static void test_list_page_token_is_offset_created_and_id_of_the_last_pin(void **state)
{
    fixture *fx = *state;
    put_seven(fx);
    fake_call *l = list_acme(fx, 3, NULL);
    const ListResp *r = (const ListResp *)fake_call_response(l);
    const Memorypins__V1__Pin *last = r->pins[2];
    char *want = pins_arena_printf(fx->a, "3.%lld.%lld", (long long)ts_us(last->created_at),
                                   (long long)last->id);
    const char *token = r->next_page_token;
    assert_null(strpbrk(token, "+/="));
    uint8_t raw[80];
    size_t n = 0;
    assert_int_equal(pins_base64_decode(token, strlen(token), PINS_BASE64_URL, raw, &n), 0);
    assert_int_equal(n, strlen(want));
    assert_memory_equal(raw, want, n);
    fake_call_free(l);
}

/* A token written by hand (known bytes, not made by an encoder of the test's own): "3.<a time
 * after every pin>.0" starts at the newest pin and reports offset 3. */
static void test_list_accepts_a_hand_written_page_token(void **state)
{
    fixture *fx = *state;
    put_seven(fx);
    fake_call *l = list_acme(fx, 3, "My45MDAwMDAwMDAwMDAwMDAwLjA"); /* "3.9000000000000000.0" */
    assert_int_equal(fake_call_err(l), 0);
    const ListResp *r = (const ListResp *)fake_call_response(l);
    assert_string_equal(keys_of(fx, r), "p6 p5 p4");
    assert_int_equal(r->offset, 3);
    assert_int_equal(r->total, 7);
    fake_call_free(l);
}

static void test_list_rejects_a_forged_page_token(void **state)
{
    fixture *fx = *state;
    put_seven(fx);
    char *before = fake_env_snapshot(fx->env, "acme");
    const char *const forged[] = {
        "not a token!",
        "A",
        "My4xNzAwMDAwMDAw",                 /* "3.1700000000" */
        "LTEuMTcwMDAwMDAwMC41",             /* "-1.1700000000.5" */
        "MS4yLi0z",                         /* "1.2.-3" */
        "MS4yLjMuNA",                       /* "1.2.3.4" */
        "eC55Lno",                          /* "x.y.z" */
        "OTk5OTk5OTk5OTk5OTk5OTk5OTkuMS4x", /* "99999999999999999999.1.1" */
        repeat(fx, "A", 101),
    };
    for (size_t i = 0; i < sizeof(forged) / sizeof(forged[0]); i++) {
        fake_call *l = list_acme(fx, 0, forged[i]);
        assert_invalid(l, "page_token");
        fake_call_free(l);
    }
    char *after = fake_env_snapshot(fx->env, "acme");
    assert_string_equal(after, before);
    free(before);
    free(after);
}

static void test_list_shows_expired_pins_only_when_asked(void **state)
{
    fixture *fx = *state;
    put(fx, NULL, "live", NO_TTL);
    put(fx, NULL, "gone", 0);
    ListReq lr = MEMORYPINS__V1__LIST_PINS_REQUEST__INIT;
    fake_call *l = call_list(fx, &lr);
    assert_string_equal(keys_of(fx, (const ListResp *)fake_call_response(l)), "live");
    fake_call_free(l);
    lr.include_expired = true;
    l = call_list(fx, &lr);
    assert_string_equal(keys_of(fx, (const ListResp *)fake_call_response(l)), "gone live");
    fake_call_free(l);
}

/* ---- DeletePin --------------------------------------------------------------------------------
 */

static void test_delete_removes_the_pin(void **state)
{
    fixture *fx = *state;
    put(fx, "acme", "k1", NO_TTL);
    fake_call *d = call_delete(fx, "acme", "k1", NO_VERSION);
    assert_int_equal(fake_call_err(d), 0);
    const DeleteResp *r = (const DeleteResp *)fake_call_response(d);
    assert_true(r->deleted);
    assert_string_equal(r->key, "k1");
    assert_string_equal(r->tenant_id, "acme");
    fake_call_free(d);
    fake_call *g = call_get(fx, "acme", "k1");
    assert_status(g, PINS_ENOT_FOUND, 5, "Pin not found: k1");
    fake_call_free(g);
    assert_int_equal(fake_env_pin_count(fx->env, "acme"), 0);
}

static void test_delete_missing_pin_is_not_found(void **state)
{
    fixture *fx = *state;
    fake_call *d = call_delete(fx, NULL, "nope", NO_VERSION);
    assert_status(d, PINS_ENOT_FOUND, 5, "Pin not found: nope");
    fake_call_free(d);
}

static void test_delete_removes_an_expired_pin(void **state)
{
    fixture *fx = *state;
    put(fx, NULL, "k1", 0);
    fake_call *d = call_delete(fx, "", "k1", NO_VERSION);
    assert_int_equal(fake_call_err(d), 0);
    assert_string_equal(((const DeleteResp *)fake_call_response(d))->tenant_id, "global");
    fake_call_free(d);
    assert_int_equal(fake_env_pin_count(fx->env, "global"), 0);
}

static void test_delete_honours_expected_version(void **state)
{
    fixture *fx = *state;
    put(fx, NULL, "k1", NO_TTL);
    put(fx, NULL, "k1", NO_TTL); /* version 2 */
    fake_call *d = call_delete(fx, NULL, "k1", 1);
    assert_status(d, PINS_EABORTED, 10, "Version conflict on pin: k1");
    fake_call_free(d);
    assert_int_equal(fake_env_pin_count(fx->env, "global"), 1);
    d = call_delete(fx, NULL, "k1", 2);
    assert_int_equal(fake_call_err(d), 0);
    fake_call_free(d);
    assert_int_equal(fake_env_pin_count(fx->env, "global"), 0);
}

/* ---- CleanupExpiredPins -----------------------------------------------------------------------
 */

static void test_cleanup_removes_expired_pins_of_one_tenant(void **state)
{
    fixture *fx = *state;
    put(fx, "a", "x1", 0);
    put(fx, "a", "x2", 0);
    put(fx, "a", "live", 3600);
    put(fx, "b", "x1", 0);
    fake_call *c = call_cleanup(fx, "a");
    assert_int_equal(fake_call_err(c), 0);
    const CleanupResp *r = (const CleanupResp *)fake_call_response(c);
    assert_int_equal(r->deleted_count, 2);
    assert_non_null(r->tenant_id);
    assert_string_equal(r->tenant_id->value, "a");
    assert_non_null(r->timestamp);
    assert_true(r->timestamp->seconds > 1700000000);
    fake_call_free(c);
    assert_int_equal(fake_env_pin_count(fx->env, "a"), 1);
    assert_int_equal(fake_env_pin_count(fx->env, "b"), 1);
}

static void test_cleanup_without_tenant_removes_expired_pins_of_all(void **state)
{
    fixture *fx = *state;
    put(fx, "a", "x1", 0);
    put(fx, "b", "x1", 0);
    put(fx, "b", "live", NO_TTL);
    fake_call *c = call_cleanup(fx, NULL);
    assert_int_equal(fake_call_err(c), 0);
    const CleanupResp *r = (const CleanupResp *)fake_call_response(c);
    assert_int_equal(r->deleted_count, 2);
    assert_null(r->tenant_id);
    fake_call_free(c);
    assert_int_equal(fake_env_pin_count(fx->env, "a"), 0);
    assert_int_equal(fake_env_pin_count(fx->env, "b"), 1);

    c = call_cleanup(fx, NULL);
    assert_int_equal(((const CleanupResp *)fake_call_response(c))->deleted_count, 0);
    fake_call_free(c);
}

static void test_cleanup_with_empty_tenant_means_global(void **state)
{
    fixture *fx = *state;
    put(fx, NULL, "x1", 0);
    put(fx, "a", "x1", 0);
    fake_call *c = call_cleanup(fx, "");
    const CleanupResp *r = (const CleanupResp *)fake_call_response(c);
    assert_int_equal(r->deleted_count, 1);
    assert_string_equal(r->tenant_id->value, "global");
    fake_call_free(c);
    assert_int_equal(fake_env_pin_count(fx->env, "a"), 1);
}

/* ---- validation (API.md section 4) ----------------------------------------------------------- */

/* Runs a call that must fail validation and leave the store as it was. */
static void expect_invalid(fixture *fx, const char *method, const ProtobufCMessage *req,
                           const char *field)
{
    char *before = fake_env_snapshot(fx->env, "global");
    char path[96];
    snprintf(path, sizeof(path), SVC "%s", method);
    fake_call *fc = fake_call_run(fx->env, path, req, NULL);
    assert_invalid(fc, field);
    fake_call_free(fc);
    char *after = fake_env_snapshot(fx->env, "global");
    assert_string_equal(after, before);
    free(before);
    free(after);
}

static void expect_upsert_invalid(fixture *fx, const UpsertReq *r, const char *field)
{
    expect_invalid(fx, "UpsertPin", &r->base, field);
}

static void test_upsert_rejects_invalid_keys(void **state)
{
    fixture *fx = *state;
    put(fx, NULL, "existing", NO_TTL);
    const char *const bad[] = {
        "",
        repeat(fx, "k", 513),
        repeat(fx, "\xc3\xa9", 513),
        "a..b",
        "..",
        "a/b",
        "a\\b",
        "a\x01z",
        "tab\tkey",
        "c1\xc2\x85",
        "bad\xff",
        "\xed\xa0\x80",
        "\xc0\xaf",
        "cut\xe2\x82",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_upsert_invalid(fx, upsert_req(fx, NULL, bad[i], "{}"), "key");
}

static void test_upsert_accepts_boundary_keys(void **state)
{
    fixture *fx = *state;
    const char *const ok[] = {repeat(fx, "k", 512), repeat(fx, "\xf0\x9f\x93\x8c", 512), "a.b",
                              "caf\xc3\xa9", "x"};
    for (size_t i = 0; i < sizeof(ok) / sizeof(ok[0]); i++) {
        fake_call *fc = call_upsert(fx, upsert_req(fx, NULL, ok[i], "{}"));
        assert_int_equal(fake_call_err(fc), 0);
        fake_call_free(fc);
    }
    assert_int_equal(fake_env_pin_count(fx->env, "global"), 5);
}

static void test_upsert_rejects_invalid_tenants(void **state)
{
    fixture *fx = *state;
    put(fx, NULL, "existing", NO_TTL);
    const char *const bad[] = {repeat(fx, "t", 257), "acme\n", "acme\x7f", "x\xc2\x9f", "bad\xfe"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        expect_upsert_invalid(fx, upsert_req(fx, bad[i], "k1", "{}"), "tenant_id");
    fake_call *fc = call_upsert(fx, upsert_req(fx, repeat(fx, "\xc3\xa9", 256), "k1", "{}"));
    assert_int_equal(fake_call_err(fc), 0);
    fake_call_free(fc);
}

static void test_upsert_rejects_a_source_over_64_characters(void **state)
{
    fixture *fx = *state;
    UpsertReq *r = upsert_req(fx, NULL, "k1", "{}");
    r->source = repeat(fx, "s", 65);
    expect_upsert_invalid(fx, r, "source");
    r->source = "src\x1b";
    expect_upsert_invalid(fx, r, "source");
    r->source = repeat(fx, "\xc3\xa9", 64);
    fake_call *fc = call_upsert(fx, r);
    assert_int_equal(fake_call_err(fc), 0);
    fake_call_free(fc);
}

static void test_upsert_rejects_ttl_out_of_range(void **state)
{
    fixture *fx = *state;
    put(fx, NULL, "existing", NO_TTL);
    const int64_t bad[] = {-1, 31536001, INT32_MIN, INT32_MAX};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        UpsertReq *r = upsert_req(fx, NULL, "existing", "{\"changed\":true}");
        set_ttl(fx, r, bad[i]);
        expect_upsert_invalid(fx, r, "ttl_seconds");
    }
    fake_call *fc = NULL;
    const UpsertResp *r = upsert_ok(fx, &fc, NULL, "k1", "{}", 31536000, NO_VERSION);
    assert_int_equal(r->pin->ttl_seconds->value, 31536000);
    fake_call_free(fc);
}

static void test_upsert_rejects_a_missing_value(void **state)
{
    fixture *fx = *state;
    expect_upsert_invalid(fx, upsert_req(fx, NULL, "k1", NULL), "value");
}

static void test_upsert_rejects_a_value_nested_over_64_deep(void **state)
{
    fixture *fx = *state;
    expect_upsert_invalid(fx, upsert_req(fx, NULL, "k1", nested_json(fx, 65)), "value");
    fake_call *fc = NULL;
    const UpsertResp *r = upsert_ok(fx, &fc, NULL, "k1", nested_json(fx, 64), NO_TTL, NO_VERSION);
    char *json = json_of(r->pin->value);
    assert_string_equal(json, nested_json(fx, 64));
    free(json);
    fake_call_free(fc);
}

static void test_upsert_rejects_a_value_over_the_size_limit(void **state)
{
    fixture *fx = *state;
    fake_env_config(fx->env)->memory_max_size_bytes = 100;
    /* {"s":"..."} is 8 bytes plus the string. */
    const char *at = pins_arena_printf(fx->a, "{\"s\":\"%s\"}", repeat(fx, "x", 92));
    const char *over = pins_arena_printf(fx->a, "{\"s\":\"%s\"}", repeat(fx, "x", 93));
    assert_int_equal(strlen(at), 100);
    expect_upsert_invalid(fx, upsert_req(fx, NULL, "k1", over), "value");
    fake_call *fc = call_upsert(fx, upsert_req(fx, NULL, "k1", over));
    assert_string_equal(fake_call_message(fc), "value: must be at most 100 bytes as JSON");
    fake_call_free(fc);
    fc = call_upsert(fx, upsert_req(fx, NULL, "k1", at));
    assert_int_equal(fake_call_err(fc), 0);
    fake_call_free(fc);
}

static void test_upsert_rejects_a_value_with_invalid_utf8(void **state)
{
    fixture *fx = *state;
    UpsertReq *r = upsert_req(fx, NULL, "k1", "{\"s\":\"ok\"}");
    r->value->fields[0]->value->string_value = (char *)"bad\xff";
    expect_upsert_invalid(fx, r, "value");
}

/* A string with an embedded NUL cannot be a C string: the request goes as wire bytes. The
 * transport unpacks strings as C strings, so the handler would see only the part before the NUL
 * ("a" for "a\0b"). API.md 4 forbids NUL in keys: the call must be rejected (by the decoder or
 * the handler) and nothing written. */
static void expect_nul_rejected(fixture *fx, const char *method, const uint8_t *wire, size_t len,
                                const char *field)
{
    char *before = fake_env_snapshot(fx->env, "global");
    char path[96];
    snprintf(path, sizeof(path), SVC "%s", method);
    int err = PINS_EINVALID_ARGUMENT;
    bool named = true;
    fake_call *fc = fake_call_new_wire(fx->env, path, wire, len, NULL);
    if (fc != NULL) { /* not rejected while decoding: the handler must reject it */
        fake_call_dispatch(fc);
        assert_true(fake_call_finished(fc));
        err = fake_call_err(fc);
        named = fake_call_field(fc) != NULL && strcmp(fake_call_field(fc), field) == 0;
        fake_call_free(fc);
    }
    char *after = fake_env_snapshot(fx->env, "global");
    bool unchanged = strcmp(after, before) == 0;
    free(before);
    free(after);
    if (err != PINS_EINVALID_ARGUMENT)
        fail_msg("%s with a NUL in %s answered %s", method, field, pins_error_name(err));
    assert_true(named);
    assert_true(unchanged);
}

static void test_upsert_rejects_a_key_with_an_embedded_nul(void **state)
{
    fixture *fx = *state;
    /* key (2) = "a\0b", value (3) = {} */
    static const uint8_t wire[] = {0x12, 3, 'a', 0, 'b', 0x1a, 0};
    expect_nul_rejected(fx, "UpsertPin", wire, sizeof(wire), "key");
    assert_int_equal(fake_env_pin_count(fx->env, "global"), 0);
}

static void test_upsert_rejects_a_tenant_with_an_embedded_nul(void **state)
{
    fixture *fx = *state;
    /* tenant_id (1) = "global\0x", key (2) = "k1", value (3) = {} */
    static const uint8_t wire[] = {0x0a, 8,   'g',  'l', 'o', 'b', 'a',  'l',
                                   0,    'x', 0x12, 2,   'k', '1', 0x1a, 0};
    expect_nul_rejected(fx, "UpsertPin", wire, sizeof(wire), "tenant_id");
    assert_int_equal(fake_env_pin_count(fx->env, "global"), 0);
}

static void test_get_rejects_a_key_with_an_embedded_nul(void **state)
{
    fixture *fx = *state;
    put(fx, NULL, "k1", NO_TTL);
    /* key (2) = "k1\0x": must not find k1 */
    static const uint8_t wire[] = {0x12, 4, 'k', '1', 0, 'x'};
    fake_call *fc = fake_call_new_wire(fx->env, SVC "GetPin", wire, sizeof(wire), NULL);
    if (fc != NULL) {
        fake_call_dispatch(fc);
        assert_int_equal(fake_call_nsent(fc), 0);
        assert_int_equal(fake_call_err(fc), PINS_EINVALID_ARGUMENT);
        fake_call_free(fc);
    }
}

static void test_get_rejects_invalid_key_and_tenant(void **state)
{
    fixture *fx = *state;
    put(fx, NULL, "existing", NO_TTL);
    GetReq r = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    const char *const bad_keys[] = {"", "a/b", "..", "a\\b", "k\n", repeat(fx, "k", 513)};
    for (size_t i = 0; i < sizeof(bad_keys) / sizeof(bad_keys[0]); i++) {
        r.key = (char *)bad_keys[i];
        expect_invalid(fx, "GetPin", &r.base, "key");
    }
    /* Invalid UTF-8 is refused by the decoder, naming the field. */
    r.key = "k\xff";
    expect_invalid(fx, "GetPin", &r.base, "key");
    r.key = "existing";
    r.tenant_id = repeat(fx, "t", 257);
    expect_invalid(fx, "GetPin", &r.base, "tenant_id");
    r.tenant_id = "t\x01";
    expect_invalid(fx, "GetPin", &r.base, "tenant_id");
}

static void test_delete_rejects_invalid_key_and_tenant(void **state)
{
    fixture *fx = *state;
    put(fx, NULL, "existing", NO_TTL);
    DeleteReq r = MEMORYPINS__V1__DELETE_PIN_REQUEST__INIT;
    const char *const bad_keys[] = {"", "a/b", "x..y", "k\x7f"};
    for (size_t i = 0; i < sizeof(bad_keys) / sizeof(bad_keys[0]); i++) {
        r.key = (char *)bad_keys[i];
        expect_invalid(fx, "DeletePin", &r.base, "key");
    }
    r.key = "existing";
    r.tenant_id = "t\n";
    expect_invalid(fx, "DeletePin", &r.base, "tenant_id");
    r.tenant_id = repeat(fx, "t", 257);
    expect_invalid(fx, "DeletePin", &r.base, "tenant_id");
    assert_int_equal(fake_env_pin_count(fx->env, "global"), 1);
}

static void test_list_rejects_invalid_parameters(void **state)
{
    fixture *fx = *state;
    put(fx, NULL, "existing", NO_TTL);
    ListReq r = MEMORYPINS__V1__LIST_PINS_REQUEST__INIT;
    r.limit = 1001;
    expect_invalid(fx, "ListPins", &r.base, "limit");
    r.limit = -1;
    expect_invalid(fx, "ListPins", &r.base, "limit");
    r.limit = 0;
    r.offset = -1;
    expect_invalid(fx, "ListPins", &r.base, "offset");
    r.offset = 0;
    r.tenant_id = repeat(fx, "t", 257);
    expect_invalid(fx, "ListPins", &r.base, "tenant_id");
    r.tenant_id = "t\t";
    expect_invalid(fx, "ListPins", &r.base, "tenant_id");
    r.tenant_id = "";
    r.prefix = "p\n";
    expect_invalid(fx, "ListPins", &r.base, "prefix");
    r.prefix = repeat(fx, "p", 513);
    expect_invalid(fx, "ListPins", &r.base, "prefix");

    r.prefix = "";
    r.limit = 1000;
    fake_call *l = call_list(fx, &r);
    assert_int_equal(fake_call_err(l), 0);
    assert_int_equal(((const ListResp *)fake_call_response(l))->limit, 1000);
    fake_call_free(l);
}

static void test_cleanup_rejects_an_invalid_tenant(void **state)
{
    fixture *fx = *state;
    put(fx, NULL, "gone", 0);
    CleanupReq r = MEMORYPINS__V1__CLEANUP_EXPIRED_PINS_REQUEST__INIT;
    Google__Protobuf__StringValue t = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
    r.tenant_id = &t;
    t.value = "t\x01";
    expect_invalid(fx, "CleanupExpiredPins", &r.base, "tenant_id");
    t.value = repeat(fx, "t", 257);
    expect_invalid(fx, "CleanupExpiredPins", &r.base, "tenant_id");
    assert_int_equal(fake_env_pin_count(fx->env, "global"), 1);
}

static const Memorypins__V1__WatchPinsResponse *event_at(fake_call *fc, size_t i)
{
    return (const Memorypins__V1__WatchPinsResponse *)fake_call_response_at(fc, i);
}

static void test_watch_pins_streams_puts_and_deletes_of_its_tenant_and_prefix(void **state)
{
    fixture *fx = *state;
    Memorypins__V1__WatchPinsRequest w = MEMORYPINS__V1__WATCH_PINS_REQUEST__INIT;
    w.tenant_id = "tw";
    w.prefix = "a:";
    double sent = scrape_value("watch_events_sent_total", -1);
    assert_true(sent >= 0);
    fake_call *watch = fake_call_run(fx->env, SVC "WatchPins", &w.base, NULL);
    assert_false(fake_call_finished(watch)); /* the stream stays open */
    assert_true(scrape_value("watch_streams_active", -1) == 1);

    put(fx, "tw", "a:1", NO_TTL);
    put(fx, "tw", "b:1", NO_TTL);    /* other prefix */
    put(fx, "other", "a:1", NO_TTL); /* other tenant */
    put(fx, "tw", "a:1", NO_TTL);
    Memorypins__V1__DeletePinRequest d = MEMORYPINS__V1__DELETE_PIN_REQUEST__INIT;
    d.tenant_id = "tw";
    d.key = "a:1";
    fake_call *del = fake_call_run(fx->env, SVC "DeletePin", &d.base, NULL);
    assert_int_equal(fake_call_err(del), 0);
    fake_call_free(del);
    fake_env_run(fx->env, 20); /* the inbox is drained on the loop */

    assert_int_equal(fake_call_nsent(watch), 3);
    assert_int_equal(event_at(watch, 0)->type,
                     MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_PUT);
    assert_string_equal(event_at(watch, 0)->pin->key, "a:1");
    assert_int_equal(event_at(watch, 0)->pin->version, 1);
    assert_int_equal(event_at(watch, 1)->pin->version, 2);
    assert_int_equal(event_at(watch, 2)->type,
                     MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_DELETE);
    assert_string_equal(event_at(watch, 2)->pin->tenant_id, "tw");
    assert_true(scrape_value("watch_events_sent_total", -1) == sent + 3);

    assert_true(rpc_watch_active());
    fake_call_detach(watch); /* the client leaves: the subscription ends with the stream */
    assert_false(rpc_watch_active());
    fake_call_free(watch);
}

static void test_watch_pins_rejects_an_invalid_tenant(void **state)
{
    fixture *fx = *state;
    Memorypins__V1__WatchPinsRequest w = MEMORYPINS__V1__WATCH_PINS_REQUEST__INIT;
    w.tenant_id = "t\x01";
    expect_invalid(fx, "WatchPins", &w.base, "tenant_id");
    assert_false(rpc_watch_active());
}

#define T(f) cmocka_unit_test_setup_teardown(f, setup, teardown)

int main(void)
{
    const struct CMUnitTest tests[] = {
        T(test_upsert_creates_a_pin_with_defaults),
        T(test_upsert_again_bumps_version_and_keeps_created_at),
        T(test_upsert_keeps_a_custom_source),
        T(test_upsert_with_ttl_sets_expiry_from_the_write),
        T(test_upsert_with_ttl_zero_expires_at_once),
        T(test_upsert_over_an_expired_pin_creates_it_anew),
        T(test_upsert_expected_version_zero_creates_only),
        T(test_upsert_expected_version_n_updates_only_version_n),
        T(test_get_returns_the_pin),
        T(test_get_defaults_the_tenant_to_global),
        T(test_get_missing_pin_is_not_found),
        T(test_list_orders_newest_first),
        T(test_list_applies_limit_and_offset),
        T(test_list_matches_prefix_literally),
        T(test_list_page_tokens_cover_every_pin_once),
        T(test_list_page_token_neither_skips_nor_repeats_after_an_insert),
        T(test_list_page_token_is_offset_created_and_id_of_the_last_pin),
        T(test_list_accepts_a_hand_written_page_token),
        T(test_list_rejects_a_forged_page_token),
        T(test_list_shows_expired_pins_only_when_asked),
        T(test_delete_removes_the_pin),
        T(test_delete_missing_pin_is_not_found),
        T(test_delete_removes_an_expired_pin),
        T(test_delete_honours_expected_version),
        T(test_cleanup_removes_expired_pins_of_one_tenant),
        T(test_cleanup_without_tenant_removes_expired_pins_of_all),
        T(test_cleanup_with_empty_tenant_means_global),
        T(test_upsert_rejects_invalid_keys),
        T(test_upsert_accepts_boundary_keys),
        T(test_upsert_rejects_invalid_tenants),
        T(test_upsert_rejects_a_source_over_64_characters),
        T(test_upsert_rejects_ttl_out_of_range),
        T(test_upsert_rejects_a_missing_value),
        T(test_upsert_rejects_a_value_nested_over_64_deep),
        T(test_upsert_rejects_a_value_over_the_size_limit),
        T(test_upsert_rejects_a_value_with_invalid_utf8),
        T(test_upsert_rejects_a_key_with_an_embedded_nul),
        T(test_upsert_rejects_a_tenant_with_an_embedded_nul),
        T(test_get_rejects_a_key_with_an_embedded_nul),
        T(test_get_rejects_invalid_key_and_tenant),
        T(test_delete_rejects_invalid_key_and_tenant),
        T(test_list_rejects_invalid_parameters),
        T(test_cleanup_rejects_an_invalid_tenant),
        T(test_watch_pins_streams_puts_and_deletes_of_its_tenant_and_prefix),
        T(test_watch_pins_rejects_an_invalid_tenant),
    };
    return cmocka_run_group_tests_name("rpc/services/memory_pins", tests, NULL, NULL);
}
