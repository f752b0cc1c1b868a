/* rpc/services/memory_pins.c: memorypins.v1.MemoryPins on the store interface.
 *
 * Every handler validates its request (API.md section 4), asks the store, and replies from the
 * store callback, which may run before the store call returns. Client-visible messages follow the
 * M7 wording ("Pin not found: <key>") so existing clients keep matching them.
 */
#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/base64.h"
#include "common/config.h"
#include "common/pbstruct.h"
#include "common/timeutil.h"
#include "memorypins/v1/memory_pins.pb-c.h"
#include "rpc/audit.h"
#include "rpc/services/services.h"
#include "rpc/services/pin_codec.h"
#include "rpc/services/reply.h"
#include "rpc/services/validate.h"
#include "rpc/watch.h"
#include "store/store.h"

#define DEFAULT_SOURCE "api"

/* ---- helpers ------------------------------------------------------------------------------- */

/* Builds a Pin in the call's arena from a store row. value: the Struct to use, or NULL to
 * parse the row's JSON. Returns NULL when out of memory or the stored JSON is unreadable. */
static Memorypins__V1__Pin *pin_from_store(pins_arena *a, const store_pin *sp,
                                           Google__Protobuf__Struct *value)
{
    Memorypins__V1__Pin *p = pins_arena_alloc(a, sizeof(*p));
    if (p == NULL)
        return NULL;
    memorypins__v1__pin__init(p);
    p->id = sp->id;
    p->tenant_id = pins_arena_strdup(a, sp->tenant_id);
    p->key = pins_arena_strdup(a, sp->key);
    p->source = pins_arena_strdup(a, sp->source);
    p->created_at = rpc__timestamp_new(a, sp->created_us);
    p->updated_at = rpc__timestamp_new(a, sp->updated_us);
    p->version = sp->version;
    p->revision = sp->revision;
    if (p->tenant_id == NULL || p->key == NULL || p->source == NULL || p->created_at == NULL ||
        p->updated_at == NULL)
        return NULL;
    if (sp->has_ttl) {
        p->ttl_seconds = pins_arena_alloc(a, sizeof(*p->ttl_seconds));
        if (p->ttl_seconds == NULL)
            return NULL;
        google__protobuf__int32_value__init(p->ttl_seconds);
        p->ttl_seconds->value = sp->ttl_seconds;
    }
    if (sp->has_expires) {
        p->expires_at = rpc__timestamp_new(a, sp->expires_us);
        if (p->expires_at == NULL)
            return NULL;
    }
    if (value == NULL &&
        pbstruct_from_json(a, sp->value_json, sp->value_len, PINS_VALUE_MAX_DEPTH, &value) != 0)
        return NULL;
    p->value = value;
    return p;
}

static store_audit_info audit_info(rpc_call *call)
{
    int64_t now = pins_time_mono_ns();
    return (store_audit_info){
        .agent_id = rpc_call_header(call, "x-agent-id"),
        .request_id = rpc_call_request_id(call),
        .latency_ms = (double)(now - rpc_call_start_ns(call)) / 1e6,
    };
}

/* ---- UpsertPin ----------------------------------------------------------------------------- */

typedef struct upsert_ctx {
    rpc_call *call;
    const Memorypins__V1__UpsertPinRequest *req;
    const char *key;
    const uint8_t *value_pb; /* req->value packed, in the call's arena */
    size_t value_pb_len;
} upsert_ctx;

static void on_upserted(void *arg, int err, const store_pin *pin, bool created)
{
    upsert_ctx *u = arg;
    rpc_call *call = u->call;
    if (err != 0) {
        rpc__fail_store(call, err, "upsert", u->key);
        return;
    }
    uint8_t *msg;
    size_t len;
    if (pin_codec_encode_response(rpc_call_arena(call), pin, u->value_pb, u->value_pb_len,
                                  created ? 1 : 0, &msg, &len) != 0) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    rpc_call_reply_packed(call, msg, len);
}

void rpc__pins_upsert(rpc_call *call)
{
    const Memorypins__V1__UpsertPinRequest *req =
        (const Memorypins__V1__UpsertPinRequest *)rpc_call_request(call);
    const pins_config *cfg = rpc_call_config(call);
    const char *tenant = rpc_call_tenant(call);
    const char *source = req->source != NULL && req->source[0] ? req->source : DEFAULT_SOURCE;
    char *json = NULL;
    size_t len = 0;

    const rpc__field_check checks[] = {
        {"key", pins_check_key(req->key)},
        {"tenant_id", pins_check_tenant(tenant)},
        {"source", pins_check_source(source)},
        {"ttl_seconds", req->ttl_seconds != NULL ? pins_check_ttl(req->ttl_seconds->value) : NULL},
        {"value", req->value == NULL ? "is required and must be a JSON object" : NULL},
    };
    if (!rpc__fields_valid_or_reply(call, checks, RPC__COUNTOF(checks)))
        return;
    int rv = pbstruct_to_json(req->value, (size_t)cfg->memory_max_size_bytes, PINS_VALUE_MAX_DEPTH,
                              &json, &len);
    if (rv != 0) {
        pbstruct_reason r = pbstruct_last_reason();
        if (r == PBSTRUCT_REASON_NOMEM) {
            rpc_call_fail(call, PINS_ERESOURCE_EXHAUSTED, "value: too large to encode");
            return;
        }
        if (r == PBSTRUCT_REASON_TOO_LARGE)
            rpc_call_fail_field(call, PINS_EINVALID_ARGUMENT, "value",
                                "must be at most %lld bytes as JSON",
                                (long long)cfg->memory_max_size_bytes);
        else
            rpc_call_fail_field(call, PINS_EINVALID_ARGUMENT, "value", "%s",
                                pbstruct_reason_text(r));
        return;
    }
    char hash[17];
    pbstruct_value_hash(json, len, hash);

    upsert_ctx *u = pins_arena_alloc(rpc_call_arena(call), sizeof(*u));
    if (u == NULL) {
        free(json);
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    *u = (upsert_ctx){.call = call, .req = req, .key = req->key};
    u->value_pb_len = protobuf_c_message_get_packed_size(&req->value->base);
    uint8_t *vpb = pins_arena_alloc(rpc_call_arena(call), u->value_pb_len + 1);
    if (vpb == NULL) {
        free(json);
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    protobuf_c_message_pack(&req->value->base, vpb);
    u->value_pb = vpb;
    store_upsert_req sr = {
        .tenant_id = tenant,
        .key = req->key,
        .value_json = json,
        .value_len = len,
        .value_hash = hash,
        .source = source,
        .has_ttl = req->ttl_seconds != NULL,
        .ttl_seconds = req->ttl_seconds != NULL ? req->ttl_seconds->value : 0,
        .has_expected_version = req->expected_version != NULL,
        .expected_version = req->expected_version != NULL ? req->expected_version->value : 0,
        .now_us = pins_time_now_us(),
        .audit = audit_info(call),
        .value_pb = u->value_pb,
        .value_pb_len = u->value_pb_len,
    };
    rv = store_pin_upsert(rpc_call_store(call), &sr, on_upserted, u);
    free(json);
    if (rv != 0)
        rpc__fail_store(call, rv, "upsert", NULL);
}

/* ---- GetPin -------------------------------------------------------------------------------- */

typedef struct key_ctx {
    rpc_call *call;
    const char *tenant;
    const char *key;
} key_ctx;

static void on_got(void *arg, int err, const store_pin *pin, bool created)
{
    key_ctx *k = arg;
    rpc_call *call = k->call;
    rpc_audit_memory_read(call, "get", k->tenant, k->key, err == 0 && pin->from_cache, err);
    if (err != 0) {
        rpc__fail_store(call, err, "get", k->key);
        return;
    }
    if (pin->value_pb != NULL) {
        /* The store's cache keeps the value packed: write the answer directly. */
        uint8_t *msg;
        size_t len;
        if (pin_codec_encode_response(rpc_call_arena(call), pin, pin->value_pb, pin->value_pb_len,
                                      -1, &msg, &len) != 0) {
            rpc_call_fail(call, PINS_ENOMEM, NULL);
            return;
        }
        rpc_call_reply_packed(call, msg, len);
        return;
    }
    Memorypins__V1__Pin *p = pin_from_store(rpc_call_arena(call), pin, NULL);
    if (p == NULL) {
        rpc_call_fail(call, PINS_EINTERNAL, "stored value of %s cannot be decoded", k->key);
        return;
    }
    Memorypins__V1__GetPinResponse resp = MEMORYPINS__V1__GET_PIN_RESPONSE__INIT;
    resp.pin = p;
    rpc_call_reply(call, &resp.base);
}

static key_ctx *key_ctx_new(rpc_call *call, const char *tenant, const char *key)
{
    key_ctx *k = pins_arena_alloc(rpc_call_arena(call), sizeof(*k));
    if (k == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return NULL;
    }
    *k = (key_ctx){.call = call, .tenant = tenant, .key = key};
    return k;
}

/* Validates the key and the defaulted tenant of a GetPin or DeletePin request; returns their
 * context in the call's arena, or NULL after failing the call. */
static key_ctx *key_request_or_reply(rpc_call *call, const char *key)
{
    const char *tenant = rpc_call_tenant(call);
    const rpc__field_check checks[] = {
        {"key", pins_check_key(key)},
        {"tenant_id", pins_check_tenant(tenant)},
    };
    if (!rpc__fields_valid_or_reply(call, checks, RPC__COUNTOF(checks)))
        return NULL;
    return key_ctx_new(call, tenant, key);
}

void rpc__pins_get(rpc_call *call)
{
    const Memorypins__V1__GetPinRequest *req =
        (const Memorypins__V1__GetPinRequest *)rpc_call_request(call);
    key_ctx *k = key_request_or_reply(call, req->key);
    if (k == NULL)
        return;
    const char *tenant = k->tenant;
    int rv = store_pin_get(rpc_call_store(call), tenant, req->key, pins_time_now_us(), on_got, k);
    if (rv != 0)
        rpc__fail_store(call, rv, "get", NULL);
}

/* ---- ListPins ------------------------------------------------------------------------------ */

/* Page tokens are "<offset>.<created_us>.<id>" in URL-safe base64 without padding: the keyset
 * position of the last pin returned, so pages neither skip nor repeat pins when others are
 * inserted meanwhile, plus the offset to report. The decoder ignores the bits left over after the
 * last byte, and a last character that completes no byte (PINS_BASE64_LOOSE_TAIL), as it always
 * did. */

static char *token_encode(pins_arena *a, int64_t offset, int64_t created_us, int64_t id)
{
    char raw[80];
    int n = snprintf(raw, sizeof(raw), "%lld.%lld.%lld", (long long)offset, (long long)created_us,
                     (long long)id);
    char *out = pins_arena_alloc(a, pins_base64_encoded_len((size_t)n, PINS_BASE64_URL) + 1);
    if (out != NULL)
        pins_base64_encode(raw, (size_t)n, PINS_BASE64_URL, out);
    return out;
}

static bool parse_i64(const char **ps, const char *end, char stop, int64_t *pv)
{
    const char *s = *ps;
    int64_t v = 0;
    bool neg = false;
    if (s < end && *s == '-') {
        neg = true;
        s++;
    }
    const char *start = s;
    while (s < end && *s >= '0' && *s <= '9') {
        if (v > (INT64_MAX - 9) / 10)
            return false;
        v = v * 10 + (*s++ - '0');
    }
    if (s == start || s - start > 19)
        return false;
    if (stop != '\0') {
        if (s >= end || *s != stop)
            return false;
        s++;
    } else if (s != end) {
        return false;
    }
    *pv = neg ? -v : v;
    *ps = s;
    return true;
}

static bool token_decode(const char *tok, int64_t *poffset, int64_t *pcreated, int64_t *pid)
{
    uint8_t raw[80];
    size_t n = 0, len = strlen(tok);
    static_assert(100 / 4 * 3 <= sizeof(raw), "a token of 100 characters fits raw");
    if (len == 0 || len > 100 ||
        pins_base64_decode(tok, len, PINS_BASE64_URL | PINS_BASE64_LOOSE_TAIL, raw, &n) != 0)
        return false;
    const char *s = (const char *)raw, *end = s + n;
    int64_t off, created, id;
    if (!parse_i64(&s, end, '.', &off) || !parse_i64(&s, end, '.', &created) ||
        !parse_i64(&s, end, '\0', &id) || off < 0 || id < 0)
        return false;
    *poffset = off;
    *pcreated = created;
    *pid = id;
    return true;
}

typedef struct list_ctx {
    rpc_call *call;
    const char *tenant;
    const char *prefix;
    int32_t limit;
    int64_t offset;
} list_ctx;

static void on_listed(void *arg, int err, const store_pin *pins, size_t npins, int64_t total,
                      int64_t revision)
{
    list_ctx *l = arg;
    rpc_call *call = l->call;
    pins_arena *a = rpc_call_arena(call);
    rpc_audit_memory_read(call, "list", l->tenant, l->prefix, false, err);
    if (err != 0) {
        rpc__fail_store(call, err, "list", NULL);
        return;
    }
    Memorypins__V1__ListPinsResponse resp = MEMORYPINS__V1__LIST_PINS_RESPONSE__INIT;
    Memorypins__V1__Pin **arr = npins ? pins_arena_alloc(a, npins * sizeof(*arr)) : NULL;
    if (npins > 0 && arr == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    for (size_t i = 0; i < npins; i++) {
        arr[i] = pin_from_store(a, &pins[i], NULL);
        if (arr[i] == NULL) {
            rpc_call_fail(call, PINS_EINTERNAL, "a stored value cannot be decoded");
            return;
        }
    }
    resp.n_pins = npins;
    resp.pins = arr;
    resp.total = total;
    resp.revision = revision;
    resp.limit = l->limit;
    resp.offset = (int32_t)(l->offset > INT32_MAX ? INT32_MAX : l->offset);
    int64_t next = l->offset + (int64_t)npins;
    if (npins > 0 && next < total) {
        const store_pin *last = &pins[npins - 1];
        resp.next_page_token = token_encode(a, next, last->created_us, last->id);
        if (resp.next_page_token == NULL) {
            rpc_call_fail(call, PINS_ENOMEM, NULL);
            return;
        }
    }
    rpc_call_reply(call, &resp.base);
}

void rpc__pins_list(rpc_call *call)
{
    const Memorypins__V1__ListPinsRequest *req =
        (const Memorypins__V1__ListPinsRequest *)rpc_call_request(call);
    const char *tenant = rpc_call_tenant(call);
    const char *prefix = req->prefix != NULL ? req->prefix : "";
    int32_t limit = req->limit == 0 ? PINS_LIST_DEFAULT_LIMIT : req->limit;
    const rpc__field_check checks[] = {
        {"tenant_id", pins_check_tenant(tenant)},
        {"prefix", pins_check_prefix(prefix)},
        {"limit", pins_check_limit(limit)},
        {"offset", pins_check_offset(req->offset)},
    };
    if (!rpc__fields_valid_or_reply(call, checks, RPC__COUNTOF(checks)))
        return;
    store_list_req lr = {
        .tenant_id = tenant,
        .prefix = prefix,
        .limit = limit,
        .offset = req->offset,
        .include_expired = req->include_expired,
        .now_us = pins_time_now_us(),
    };
    if (req->page_token != NULL && req->page_token[0] != '\0') {
        if (!token_decode(req->page_token, &lr.offset, &lr.cursor_created_us, &lr.cursor_id)) {
            rpc_call_fail_field(call, PINS_EINVALID_ARGUMENT, "page_token",
                                "is not a token this server issued");
            return;
        }
        lr.has_cursor = true;
    }
    list_ctx *l = pins_arena_alloc(rpc_call_arena(call), sizeof(*l));
    if (l == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    *l = (list_ctx){
        .call = call, .tenant = tenant, .prefix = prefix, .limit = limit, .offset = lr.offset};
    int rv = store_pin_list(rpc_call_store(call), &lr, on_listed, l);
    if (rv != 0)
        rpc__fail_store(call, rv, "list", NULL);
}

/* ---- DeletePin ----------------------------------------------------------------------------- */

static void on_deleted(void *arg, int err, const store_pin *pin, bool created)
{
    key_ctx *k = arg;
    rpc_call *call = k->call;
    if (err != 0) {
        rpc__fail_store(call, err, "delete", k->key);
        return;
    }
    Memorypins__V1__DeletePinResponse resp = MEMORYPINS__V1__DELETE_PIN_RESPONSE__INIT;
    resp.deleted = true;
    resp.key = (char *)k->key;
    resp.tenant_id = (char *)k->tenant;
    rpc_call_reply(call, &resp.base);
}

void rpc__pins_delete(rpc_call *call)
{
    const Memorypins__V1__DeletePinRequest *req =
        (const Memorypins__V1__DeletePinRequest *)rpc_call_request(call);
    key_ctx *k = key_request_or_reply(call, req->key);
    if (k == NULL)
        return;
    const char *tenant = k->tenant;
    store_delete_req dr = {
        .tenant_id = tenant,
        .key = req->key,
        .has_expected_version = req->expected_version != NULL,
        .expected_version = req->expected_version != NULL ? req->expected_version->value : 0,
        .now_us = pins_time_now_us(),
        .audit = audit_info(call),
    };
    int rv = store_pin_delete(rpc_call_store(call), &dr, on_deleted, k);
    if (rv != 0)
        rpc__fail_store(call, rv, "delete", NULL);
}

/* ---- CleanupExpiredPins -------------------------------------------------------------------- */

typedef struct cleanup_ctx {
    rpc_call *call;
    const char *tenant; /* NULL: all tenants */
    int64_t now_us;
} cleanup_ctx;

static void on_cleaned(void *arg, int err, int64_t count)
{
    cleanup_ctx *c = arg;
    rpc_call *call = c->call;
    pins_arena *a = rpc_call_arena(call);
    if (err != 0) {
        rpc__fail_store(call, err, "cleanup", NULL);
        return;
    }
    Memorypins__V1__CleanupExpiredPinsResponse resp =
        MEMORYPINS__V1__CLEANUP_EXPIRED_PINS_RESPONSE__INIT;
    Google__Protobuf__StringValue tv = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
    resp.deleted_count = count;
    if (c->tenant != NULL) {
        tv.value = (char *)c->tenant;
        resp.tenant_id = &tv;
    }
    resp.timestamp = rpc__timestamp_new(a, c->now_us);
    if (resp.timestamp == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    rpc_call_reply(call, &resp.base);
}

void rpc__pins_cleanup(rpc_call *call)
{
    const Memorypins__V1__CleanupExpiredPinsRequest *req =
        (const Memorypins__V1__CleanupExpiredPinsRequest *)rpc_call_request(call);
    /* No tenant_id: every tenant. */
    const char *tenant = req->tenant_id != NULL ? rpc_call_tenant(call) : NULL;
    const rpc__field_check check = {"tenant_id", tenant != NULL ? pins_check_tenant(tenant) : NULL};
    if (!rpc__fields_valid_or_reply(call, &check, 1))
        return;
    cleanup_ctx *c = pins_arena_alloc(rpc_call_arena(call), sizeof(*c));
    if (c == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    *c = (cleanup_ctx){.call = call, .tenant = tenant, .now_us = pins_time_now_us()};
    int rv = store_pin_cleanup(rpc_call_store(call), tenant, c->now_us, on_cleaned, c);
    if (rv != 0)
        rpc__fail_store(call, rv, "cleanup", NULL);
}

/* ---- WatchPins ---------------------------------------------------------------------------- */

/* The revision to resume after: since_revision, else an SSE client's Last-Event-ID (the id of
 * the last event it saw, which EventSource sends by itself when it reconnects). Returns 0 or
 * PINS_EINVALID_ARGUMENT with *pwhy set. */
static int watch_since(rpc_call *call, const Memorypins__V1__WatchPinsRequest *req, int64_t *psince,
                       const char **pwhy)
{
    *psince = req->since_revision;
    if (req->since_revision < 0) {
        *pwhy = "since_revision: must be 0 (from now on) or a revision the stream saw";
        return PINS_EINVALID_ARGUMENT;
    }
    const char *last = rpc_call_header(call, "last-event-id");
    if (req->since_revision != 0 || last == NULL || *last == '\0')
        return 0;
    int64_t v = 0;
    for (const char *p = last; *p != '\0'; p++) {
        if (*p < '0' || *p > '9' || v > (INT64_MAX - (*p - '0')) / 10) {
            *pwhy = "last-event-id: must be the id of an event of this stream (a revision)";
            return PINS_EINVALID_ARGUMENT;
        }
        v = v * 10 + (*p - '0');
    }
    *psince = v;
    return 0;
}

void rpc__pins_watch(rpc_call *call)
{
    const Memorypins__V1__WatchPinsRequest *req =
        (const Memorypins__V1__WatchPinsRequest *)rpc_call_request(call);
    const char *tenant = rpc_call_tenant(call);
    const char *prefix = req->prefix != NULL ? req->prefix : "";
    const rpc__field_check checks[] = {
        {"tenant_id", pins_check_tenant(tenant)},
        {"prefix", pins_check_prefix(prefix)},
    };
    if (!rpc__fields_valid_or_reply(call, checks, RPC__COUNTOF(checks)))
        return;
    int64_t since = 0;
    const char *why = NULL;
    if (watch_since(call, req, &since, &why) != 0) {
        rpc_call_fail(call, PINS_EINVALID_ARGUMENT, "%s", why);
        return;
    }
    const char *full = NULL;
    int rv = rpc_watch_subscribe(call, tenant, prefix, since, &full);
    if (rv != 0)
        rpc_call_fail(call, rv, "%s", full != NULL ? full : pins_strerror(rv));
}

/* ---- not served yet ------------------------------------------------------------------------ */

void rpc__unimplemented(rpc_call *call)
{
    rpc_call_fail(call, PINS_EUNIMPLEMENTED, "%s is not served by this version of pinsd",
                  rpc_call_method(call)->path);
}
