/* tools/pinsctl/cmd_seed.c: pinsctl seed, the M7 seed tool (ops/seed_memory_pins.py) in C.
 *
 * The whole file is parsed with pinsd's own JSON parser (common/pbstruct.h) and validated before
 * the first write, so a bad file writes nothing. The pins are then upserted one by one in file
 * order over gRPC (libpins-client), each retried with exponential backoff only when another
 * attempt can help (rate limited, unavailable, deadline, no connection); --verify reads each pin
 * back and compares the value, --sql-verify compares it with the row in PostgreSQL (jsonb
 * equality, so key order does not matter).
 */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/arena.h"
#include "common/base64.h"
#include "common/limits.h"
#include "common/pbstruct.h"
#include "pinsctl.h"

/* The runbook's file has 82 lines; 8 MiB is thousands of times that. The parse tree may take at
 * most ARENA_PER_BYTE bytes per byte of the file plus ARENA_BASE_BYTES, so memory stays
 * proportional to the file (a file of tiny values fails with a clear error, not an OOM kill). */
#define FILE_MAX_BYTES     ((size_t)8 << 20)
#define ARENA_PER_BYTE     32
#define ARENA_BASE_BYTES   ((size_t)4 << 20)
#define TTL_MAX_SECONDS    31536000
#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_RETRIES    3
#define MAX_RETRIES        20
#define DEFAULT_WAIT_S     30
#define DEFAULT_BACKOFF_MS 1000
#define JWT_HEAD_MAX       4096

static const char usage_text[] =
    "usage: pinsctl seed --file FILE --base URL [--dry-run] [--verify] [--sql-verify] [--wait]\n"
    "                    [--wait-timeout S] [-v|--verbose]\n"
    "\n"
    "Upserts every pin of a seed file (the M7 format of ops/memory_pins_seed.json) into pinsd,\n"
    "one UpsertPin per pin, in file order.\n"
    "\n"
    "options:\n"
    "  -f, --file FILE       the seed file (required)\n"
    "  -b, --base URL        pinsd: http://host:port (h2c) or https://host:port (TLS), the same\n"
    "                        address as the REST API's (required; --addr is the same; no\n"
    "                        user:password@)\n"
    "  --dry-run             write nothing: print \"[DRY-RUN] Would upsert: tenant/key\" per pin\n"
    "                        (counted as successes)\n"
    "  --verify              read every written pin back (GetPin) and compare its value\n"
    "  --sql-verify          compare every written pin with its non-expired row in\n"
    "                        system.memory_pins (PostgreSQL at DATABASE_URL; skipped without it)\n"
    "  --wait                first wait until /health and /ready answer 200, polling once a\n"
    "                        second, at most --wait-timeout seconds\n"
    "  --wait-timeout S      (default $SEED_WAIT_TIMEOUT, else 30)\n"
    "  -v, --verbose         retries, request ids, values and verification details\n"
    "  -h, --help            this help\n"
    "  TLS and the other connection options of every pinsctl command work too: --tls, --ca,\n"
    "  --cert, --key, --server-name, --insecure, --timeout (overrides SEED_TIMEOUT).\n"
    "\n"
    "file: a JSON array of entries, or an object with an \"entries\" array (other members, such\n"
    "as description, version and created, are ignored). An entry is an object:\n"
    "  tenant_id    string, default \"global\"\n"
    "  source       string, default \"seed_script\"\n"
    "  ttl_seconds  null (default) or an integer 1..31536000, for every pin of the entry\n"
    "  pins         object: key -> value, each value a JSON object\n"
    "An empty tenant_id is \"global\", as pinsd has it. The file must be a regular file of at\n"
    "most 8 MiB. The whole file is checked before the first write; a tenant/key given twice is\n"
    "an error.\n"
    "Tenant, key, source and value size are judged by pinsd: a pin it refuses counts as failed.\n"
    "\n"
    "environment:\n"
    "  MACHINE_JWT            sent as authorization: Bearer when it is a JWT (three base64url\n"
    "                         parts, the first a JSON object with \"alg\"), else as\n"
    "                         x-machine-token (a machine secret given under this name)\n"
    "  MACHINE_TOKEN, MACHINE_SECRET_TOKEN   without MACHINE_JWT: sent as x-machine-token\n"
    "                         (no credential at all: a warning; tokens are never printed;\n"
    "                         surrounding blanks and line ends are removed, other control\n"
    "                         characters are refused)\n"
    "  SEED_TIMEOUT           deadline of each request in seconds (default 10)\n"
    "  SEED_RETRIES           retries of a failed request (default 3: up to 4 attempts)\n"
    "  SEED_WAIT_TIMEOUT      default --wait-timeout (30)\n"
    "  SEED_BACKOFF_MS        the first backoff (default 1000; for tests)\n"
    "  DATABASE_URL           PostgreSQL for --sql-verify (never printed, nor any part of it;\n"
    "                         connect_timeout and statement_timeout are the request timeout\n"
    "                         unless the URL sets them)\n"
    "\n"
    "Retries: after RESOURCE_EXHAUSTED with a retry-after (pinsd's rate limit; the retry-after is\n"
    "honoured when longer than the backoff), UNAVAILABLE, DEADLINE_EXCEEDED, and a connection\n"
    "that could not be made or broke, the request is sent again after 1 s x 2^attempt (1 s, 2 s,\n"
    "4 s, at most 60 s). Any other answer (RESOURCE_EXHAUSTED without retry-after, such as a\n"
    "message over the size limit, INVALID_ARGUMENT, PERMISSION_DENIED, UNAUTHENTICATED, ...) is\n"
    "final.\n"
    "\n"
    "Exit status: 0 every pin written (and verified, when asked); 1 a pin failed or was not\n"
    "verified; 2 usage error, a missing or malformed file (nothing written; M7's script said 1),\n"
    "or --wait timed out.\n";

/* ---- the file ------------------------------------------------------------------------------- */

static const char *kind_name(const Google__Protobuf__Value *v)
{
    if (v == NULL)
        return "nothing";
    switch (v->kind_case) {
    case GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE:
        return "null";
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE:
        return "a number";
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        return "a string";
    case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE:
        return "a boolean";
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        return "an object";
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE:
        return "an array";
    default:
        return "nothing";
    }
}

/* The value of the last member named name (JSON: the last one wins), or NULL. */
static const Google__Protobuf__Value *member(const Google__Protobuf__Struct *s, const char *name)
{
    const Google__Protobuf__Value *v = NULL;
    for (size_t i = 0; i < s->n_fields; i++) {
        if (strcmp(s->fields[i]->key, name) == 0)
            v = s->fields[i]->value;
    }
    return v;
}

static bool is_kind(const Google__Protobuf__Value *v, Google__Protobuf__Value__KindCase k)
{
    return v != NULL && v->kind_case == k;
}

/* Line and column (from 1) of byte pos. */
static void line_col(const char *json, size_t pos, size_t *pline, size_t *pcol)
{
    size_t line = 1, col = 1;
    for (size_t i = 0; i < pos; i++) {
        if (json[i] == '\n') {
            line++;
            col = 1;
        } else {
            col++;
        }
    }
    *pline = line;
    *pcol = col;
}

static size_t skip_ws(const char *json, size_t len, size_t pos)
{
    while (pos < len &&
           (json[pos] == ' ' || json[pos] == '\t' || json[pos] == '\n' || json[pos] == '\r'))
        pos++;
    return pos;
}

/* Parses the whole text as one JSON value into the plan's arena. */
static int parse_top(pinsctl_seed_plan *plan, const char *json, size_t len,
                     Google__Protobuf__Value **ptop, char *err, size_t errlen)
{
    size_t start = skip_ws(json, len, 0);
    if (start == len) {
        snprintf(err, errlen, "invalid JSON: the file is empty");
        return -1;
    }
    pbstruct_parse p = {.json = json, .len = len, .pos = start, .max_depth = PBSTRUCT_MAX_DEPTH};
    int rv = pbstruct_parse_value(plan->arena, &p, ptop);
    size_t line = 0, col = 0;
    if (rv != 0) {
        switch (p.fault) {
        case PBSTRUCT_FAULT_SYNTAX:
        case PBSTRUCT_FAULT_CONTROL:
        case PBSTRUCT_FAULT_UTF8:
        case PBSTRUCT_FAULT_ESCAPE:
        case PBSTRUCT_FAULT_SURROGATE:
            line_col(json, p.err_pos, &line, &col);
            snprintf(err, errlen, "invalid JSON at line %zu, column %zu: %s", line, col,
                     p.err_pos >= len ? "unexpected end of the file"
                     : p.fault == PBSTRUCT_FAULT_SYNTAX
                         ? "unexpected character"
                         : pbstruct_reason_text(pbstruct_last_reason()));
            break;
        default:
            if (pbstruct_last_reason() == PBSTRUCT_REASON_NOMEM)
                snprintf(err, errlen,
                         "out of memory: parsing it would take more than %zu MiB (%d bytes per "
                         "byte of the file; too many tiny values)",
                         (len * ARENA_PER_BYTE + ARENA_BASE_BYTES) >> 20, ARENA_PER_BYTE);
            else
                snprintf(err, errlen, "invalid JSON: %s",
                         pbstruct_reason_text(pbstruct_last_reason()));
            break;
        }
        return -1;
    }
    size_t end = skip_ws(json, len, p.pos);
    if (end != len) {
        line_col(json, end, &line, &col);
        snprintf(err, errlen,
                 "invalid JSON at line %zu, column %zu: data after the top-level value", line, col);
        return -1;
    }
    return 0;
}

/* A string member (default when absent). */
static int entry_string(const Google__Protobuf__Struct *e, size_t idx, const char *name,
                        const char *def, const char **pout, char *err, size_t errlen)
{
    const Google__Protobuf__Value *v = member(e, name);
    if (v == NULL) {
        *pout = def;
        return 0;
    }
    if (!is_kind(v, GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE)) {
        snprintf(err, errlen, "entries[%zu]: %s must be a string (got %s)", idx, name,
                 kind_name(v));
        return -1;
    }
    *pout = v->string_value;
    if (strcmp(name, "tenant_id") == 0 && v->string_value[0] == '\0')
        *pout = "global"; /* pinsd's rule (API.md section 4): an empty tenant is "global" */
    return 0;
}

static int entry_ttl(const Google__Protobuf__Struct *e, size_t idx, pinsctl_seed_pin *pin,
                     char *err, size_t errlen)
{
    const Google__Protobuf__Value *v = member(e, "ttl_seconds");
    pin->has_ttl = false;
    if (v == NULL || is_kind(v, GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE))
        return 0;
    if (!is_kind(v, GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE)) {
        snprintf(err, errlen,
                 "entries[%zu]: ttl_seconds must be null or a positive integer (got %s)", idx,
                 kind_name(v));
        return -1;
    }
    double d = v->number_value;
    if (!(d >= 1 && d <= TTL_MAX_SECONDS) || d != (double)(int32_t)d) {
        snprintf(err, errlen,
                 "entries[%zu]: ttl_seconds must be null or an integer from 1 to %d (got %.17g)",
                 idx, TTL_MAX_SECONDS, d);
        return -1;
    }
    pin->has_ttl = true;
    pin->ttl = (int32_t)d;
    return 0;
}

/* What the parse builds besides the plan: the pins array's capacity and a hash set of the pins'
 * (tenant, key) for the duplicate check (open addressing; slots hold pin index + 1, 0 is free). */
typedef struct plan_build {
    size_t cap;
    size_t *slots;
    size_t nslots; /* a power of 2, at least twice the pins */
} plan_build;

static uint64_t pin_hash(const char *tenant, const char *key)
{
    uint64_t h = 1469598103934665603ULL; /* FNV-1a over tenant, NUL, key */
    for (const unsigned char *p = (const unsigned char *)tenant; *p != '\0'; p++)
        h = (h ^ *p) * 1099511628211ULL;
    h = (h ^ 0xffu) * 1099511628211ULL;
    for (const unsigned char *p = (const unsigned char *)key; *p != '\0'; p++)
        h = (h ^ *p) * 1099511628211ULL;
    return h ^ (h >> 29);
}

/* The slot of (tenant, key): the one holding it, or the free one where it goes. */
static size_t *find_slot(const pinsctl_seed_plan *plan, const plan_build *b, const char *tenant,
                         const char *key)
{
    size_t mask = b->nslots - 1;
    for (size_t i = (size_t)pin_hash(tenant, key) & mask;; i = (i + 1) & mask) {
        size_t s = b->slots[i];
        if (s == 0 || (strcmp(plan->pins[s - 1].key, key) == 0 &&
                       strcmp(plan->pins[s - 1].tenant, tenant) == 0))
            return &b->slots[i];
    }
}

static int grow_set(const pinsctl_seed_plan *plan, plan_build *b)
{
    size_t n = b->nslots ? b->nslots * 2 : 64;
    size_t *slots = calloc(n, sizeof(*slots));
    if (slots == NULL)
        return -1;
    free(b->slots);
    b->slots = slots;
    b->nslots = n;
    for (size_t i = 0; i < plan->npins; i++)
        *find_slot(plan, b, plan->pins[i].tenant, plan->pins[i].key) = i + 1;
    return 0;
}

static int add_pin(pinsctl_seed_plan *plan, plan_build *b, const pinsctl_seed_pin *pin, char *err,
                   size_t errlen)
{
    if ((plan->npins + 1) * 2 > b->nslots && grow_set(plan, b) != 0) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    size_t *slot = find_slot(plan, b, pin->tenant, pin->key);
    if (*slot != 0) {
        snprintf(err, errlen,
                 "entries[%zu].pins[\"%s\"]: tenant %s, key %s is already given in entries[%zu]",
                 pin->entry, pin->key, pin->tenant, pin->key, plan->pins[*slot - 1].entry);
        return -1;
    }
    if (plan->npins == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        pinsctl_seed_pin *p = realloc(plan->pins, cap * sizeof(*p));
        if (p == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        plan->pins = p;
        b->cap = cap;
    }
    plan->pins[plan->npins++] = *pin;
    *slot = plan->npins;
    return 0;
}

static int parse_entry(pinsctl_seed_plan *plan, plan_build *b, const Google__Protobuf__Value *ev,
                       size_t idx, char *err, size_t errlen)
{
    if (!is_kind(ev, GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE)) {
        snprintf(err, errlen, "entries[%zu]: an entry must be an object (got %s)", idx,
                 kind_name(ev));
        return -1;
    }
    const Google__Protobuf__Struct *e = ev->struct_value;
    pinsctl_seed_pin proto = {.entry = idx};
    if (entry_string(e, idx, "tenant_id", "global", &proto.tenant, err, errlen) != 0 ||
        entry_string(e, idx, "source", "seed_script", &proto.source, err, errlen) != 0 ||
        entry_ttl(e, idx, &proto, err, errlen) != 0)
        return -1;
    const Google__Protobuf__Value *pv = member(e, "pins");
    if (pv == NULL) {
        snprintf(err, errlen, "entries[%zu]: has no \"pins\" object", idx);
        return -1;
    }
    if (!is_kind(pv, GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE)) {
        snprintf(err, errlen, "entries[%zu]: pins must be an object of key -> value (got %s)", idx,
                 kind_name(pv));
        return -1;
    }
    const Google__Protobuf__Struct *pins = pv->struct_value;
    for (size_t k = 0; k < pins->n_fields; k++) {
        const Google__Protobuf__Struct__FieldsEntry *f = pins->fields[k];
        if (!is_kind(f->value, GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE)) {
            snprintf(err, errlen,
                     "entries[%zu].pins[\"%s\"]: the value must be a JSON object (got %s)", idx,
                     f->key, kind_name(f->value));
            return -1;
        }
        pinsctl_seed_pin pin = proto;
        pin.key = f->key;
        pin.value = f->value->struct_value;
        char *text = NULL;
        size_t tlen = 0;
        if (pbstruct_to_json(pin.value, SIZE_MAX, PINS_VALUE_MAX_DEPTH, &text, &tlen) != 0) {
            snprintf(err, errlen, "entries[%zu].pins[\"%s\"]: %s", idx, f->key,
                     pbstruct_reason_text(pbstruct_last_reason()));
            return -1;
        }
        pin.value_json = pins_arena_strndup(plan->arena, text, tlen);
        free(text);
        if (pin.value_json == NULL) {
            snprintf(err, errlen, "out of memory");
            return -1;
        }
        if (add_pin(plan, b, &pin, err, errlen) != 0)
            return -1;
    }
    return 0;
}

int pinsctl_seed_parse(const char *json, size_t len, pinsctl_seed_plan *plan, char *err,
                       size_t errlen)
{
    memset(plan, 0, sizeof(*plan));
    size_t limit = len > (SIZE_MAX - ARENA_BASE_BYTES) / ARENA_PER_BYTE
                       ? SIZE_MAX
                       : len * ARENA_PER_BYTE + ARENA_BASE_BYTES;
    plan->arena = pins_arena_new(limit);
    if (plan->arena == NULL) {
        snprintf(err, errlen, "out of memory");
        return -1;
    }
    Google__Protobuf__Value *top = NULL;
    if (parse_top(plan, json, len, &top, err, errlen) != 0)
        return -1;
    const Google__Protobuf__ListValue *entries = NULL;
    if (is_kind(top, GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE)) {
        entries = top->list_value;
    } else if (is_kind(top, GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE)) {
        const Google__Protobuf__Value *ev = member(top->struct_value, "entries");
        if (!is_kind(ev, GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE)) {
            snprintf(err, errlen,
                     "the top-level object must have an \"entries\" array (entries is %s)",
                     ev == NULL ? "missing" : kind_name(ev));
            return -1;
        }
        entries = ev->list_value;
    } else {
        snprintf(err, errlen,
                 "the top level must be an array of entries or an object with an \"entries\" "
                 "array (got %s)",
                 kind_name(top));
        return -1;
    }
    plan_build b = {0};
    int rv = 0;
    plan->nentries = entries->n_values;
    for (size_t i = 0; i < entries->n_values && rv == 0; i++)
        rv = parse_entry(plan, &b, entries->values[i], i, err, errlen);
    free(b.slots);
    return rv;
}

void pinsctl_seed_plan_free(pinsctl_seed_plan *plan)
{
    free(plan->pins);
    pins_arena_free(plan->arena);
    memset(plan, 0, sizeof(*plan));
}

/* ---- policy --------------------------------------------------------------------------------- */

static bool b64url_segment(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            return false;
    }
    return true;
}

bool pinsctl_seed_is_jwt(const char *token)
{
    if (token == NULL)
        return false;
    const char *d1 = strchr(token, '.');
    if (d1 == NULL)
        return false;
    const char *d2 = strchr(d1 + 1, '.');
    if (d2 == NULL || strchr(d2 + 1, '.') != NULL)
        return false;
    size_t n0 = (size_t)(d1 - token), n1 = (size_t)(d2 - d1 - 1), n2 = strlen(d2 + 1);
    if (n0 == 0 || n1 == 0 || n0 > JWT_HEAD_MAX || !b64url_segment(token, n0) ||
        !b64url_segment(d1 + 1, n1) || !b64url_segment(d2 + 1, n2))
        return false;
    uint8_t head[JWT_HEAD_MAX];
    size_t hn = 0;
    if (pins_base64_decode(token, n0, PINS_BASE64_URL, head, &hn) != 0)
        return false;
    pins_arena *a = pins_arena_new(64u << 10);
    if (a == NULL)
        return false;
    Google__Protobuf__Struct *s = NULL;
    bool ok = pbstruct_from_json(a, (const char *)head, hn, 8, &s) == 0 && member(s, "alg") != NULL;
    pins_arena_free(a);
    return ok;
}

int64_t pinsctl_seed_backoff_ms(int64_t base_ms, int attempt, int64_t retry_after_ms)
{
    int64_t ms = base_ms < 0 ? 0 : base_ms;
    for (int i = 0; i < attempt && ms < PINSCTL_SEED_BACKOFF_MAX_MS; i++)
        ms *= 2;
    if (retry_after_ms > ms)
        ms = retry_after_ms;
    return ms > PINSCTL_SEED_BACKOFF_MAX_MS ? PINSCTL_SEED_BACKOFF_MAX_MS : ms;
}

bool pinsctl_seed_retryable(const pins_status *st)
{
    switch (st->code) {
    case PINS_CODE_RESOURCE_EXHAUSTED:
        /* Only pinsd's rate limit, which says when to come back (retry-after). Any other (a
         * message over the size limit, out of memory) would be the same on every attempt. */
        return st->retry_after_ms >= 0;
    case PINS_CODE_UNAVAILABLE:
    case PINS_CODE_DEADLINE_EXCEEDED:
        return true;
    case PINS_CODE_UNKNOWN:
    case PINS_CODE_INTERNAL:
        /* Without an answer from pinsd: the connection broke or the answer was cut off. */
        return !st->from_server;
    default:
        return false;
    }
}

static bool value_equal(const Google__Protobuf__Value *a, const Google__Protobuf__Value *b);

static bool list_equal(const Google__Protobuf__ListValue *a, const Google__Protobuf__ListValue *b)
{
    if (a == NULL || b == NULL || a->n_values != b->n_values)
        return a == b;
    for (size_t i = 0; i < a->n_values; i++) {
        if (!value_equal(a->values[i], b->values[i]))
            return false;
    }
    return true;
}

/* A field and its place in the object, so that sorting by key keeps the document's order among
 * a repeated key. */
typedef struct {
    Google__Protobuf__Struct__FieldsEntry *e;
    size_t at;
} field_ref;

static int field_cmp(const void *x, const void *y)
{
    const field_ref *a = x, *b = y;
    int c = strcmp(a->e->key, b->e->key);
    if (c != 0)
        return c;
    return a->at < b->at ? -1 : a->at > b->at;
}

/* s's fields sorted by key, each key once (the last of a repeated key: JSON's rule). New array
 * (free it) or NULL when out of memory; *pn the count. */
static Google__Protobuf__Struct__FieldsEntry **sorted_fields(const Google__Protobuf__Struct *s,
                                                             size_t *pn)
{
    size_t n = s->n_fields;
    Google__Protobuf__Struct__FieldsEntry **f = malloc((n ? n : 1) * sizeof(*f));
    field_ref *refs = malloc((n ? n : 1) * sizeof(*refs));
    if (f == NULL || refs == NULL) {
        free(f);
        free(refs);
        return NULL;
    }
    for (size_t i = 0; i < n; i++)
        refs[i] = (field_ref){.e = s->fields[i], .at = i};
    if (n > 1)
        qsort(refs, n, sizeof(*refs), field_cmp);
    size_t out = 0;
    for (size_t i = 0; i < n; i++) {
        if (i + 1 < n && strcmp(refs[i].e->key, refs[i + 1].e->key) == 0)
            continue; /* a later one follows */
        f[out++] = refs[i].e;
    }
    free(refs);
    *pn = out;
    return f;
}

bool pinsctl_seed_value_equal(const Google__Protobuf__Struct *a, const Google__Protobuf__Struct *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    /* Sorted once and walked together: O(n log n) in the keys, not n^2. */
    size_t na = 0, nb = 0;
    Google__Protobuf__Struct__FieldsEntry **fa = sorted_fields(a, &na);
    Google__Protobuf__Struct__FieldsEntry **fb = fa != NULL ? sorted_fields(b, &nb) : NULL;
    bool eq = fa != NULL && fb != NULL && na == nb;
    for (size_t i = 0; eq && i < na; i++)
        eq = strcmp(fa[i]->key, fb[i]->key) == 0 && value_equal(fa[i]->value, fb[i]->value);
    free(fa);
    free(fb);
    return eq;
}

static bool value_equal(const Google__Protobuf__Value *a, const Google__Protobuf__Value *b)
{
    if (a == NULL || b == NULL)
        return a == b;
    if (a->kind_case != b->kind_case)
        return false;
    switch (a->kind_case) {
    case GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE:
        return true;
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE:
        return a->number_value == b->number_value;
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        return strcmp(a->string_value, b->string_value) == 0;
    case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE:
        return a->bool_value == b->bool_value;
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        return pinsctl_seed_value_equal(a->struct_value, b->struct_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE:
        return list_equal(a->list_value, b->list_value);
    default:
        return false;
    }
}

/* ---- running -------------------------------------------------------------------------------- */

typedef struct seed_run {
    pinsctl_global *g;
    const char *file;
    const char *base;
    bool dry_run, verify, sql_verify, wait, verbose;
    int64_t wait_timeout_s;
    int64_t timeout_ms;
    int retries;
    int64_t backoff_ms;
    char addr[600];
    pins_client *client;
    pinsctl_seed_plan plan;
    bool *written;  /* by pin */
    char *creds[3]; /* trimmed copies of the credentials */
    size_t ncreds;
} seed_run;

static void sleep_ms(int64_t ms)
{
    struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static const char *env_or_null(const char *name)
{
    const char *v = getenv(name);
    return v != NULL && v[0] != '\0' ? v : NULL;
}

/* One line about a status: "CODE: message (request id R)". */
static void print_status(FILE *f, const pins_status *st, bool verbose)
{
    fputs(pins_code_name(st->code), f);
    if (st->message != NULL && st->message[0] != '\0')
        fprintf(f, ": %s", st->message);
    if (verbose && st->request_id != NULL && st->request_id[0] != '\0')
        fprintf(f, " (request id %s)", st->request_id);
}

/* Runs one call with the retry policy. Returns 0 or the last status code; st holds its status. */
static int call_with_retries(seed_run *r, pins_rpc rpc, const ProtobufCMessage *req,
                             ProtobufCMessage **presp, const pinsctl_seed_pin *pin,
                             const char *what, pins_status *st, int *pattempts)
{
    pins_call_options co = {.no_retry = true};
    int rv = 0;
    int attempt = 0;
    for (;;) {
        attempt++;
        rv = pins_client_call(r->client, rpc, req, presp, &co, st);
        if (rv == 0 || !pinsctl_seed_retryable(st) || attempt > r->retries)
            break;
        int64_t wait = pinsctl_seed_backoff_ms(r->backoff_ms, attempt - 1, st->retry_after_ms);
        printf("[RETRY] %s %s/%s in %" PRId64 " ms (attempt %d of %d): ", what, pin->tenant,
               pin->key, wait, attempt + 1, r->retries + 1);
        print_status(stdout, st, r->verbose);
        putchar('\n');
        fflush(stdout);
        sleep_ms(wait);
    }
    *pattempts = attempt;
    return rv;
}

static bool upsert_one(seed_run *r, const pinsctl_seed_pin *pin)
{
    Memorypins__V1__UpsertPinRequest req = MEMORYPINS__V1__UPSERT_PIN_REQUEST__INIT;
    Google__Protobuf__Int32Value ttl = GOOGLE__PROTOBUF__INT32_VALUE__INIT;
    req.tenant_id = (char *)pin->tenant;
    req.key = (char *)pin->key;
    req.source = (char *)pin->source;
    req.value = pin->value;
    if (pin->has_ttl) {
        ttl.value = pin->ttl;
        req.ttl_seconds = &ttl;
    }
    ProtobufCMessage *resp = NULL;
    pins_status st = PINS_STATUS_INIT;
    int attempts = 0;
    int rv =
        call_with_retries(r, PINS_RPC_UPSERT_PIN, &req.base, &resp, pin, "upsert", &st, &attempts);
    if (rv == 0) {
        const Memorypins__V1__UpsertPinResponse *u =
            (const Memorypins__V1__UpsertPinResponse *)resp;
        printf("[OK] Upserted: %s/%s (%s", pin->tenant, pin->key,
               u->created ? "created" : "updated");
        if (u->pin != NULL)
            printf(", version %" PRId64, u->pin->version);
        if (pin->has_ttl)
            printf(", ttl %" PRId32 "s", pin->ttl);
        putchar(')');
        if (r->verbose && st.request_id != NULL)
            printf(" request id %s", st.request_id);
        putchar('\n');
        if (r->verbose)
            printf("     value: %s\n", pin->value_json);
    } else {
        printf("[FAILED] Upsert %s/%s: ", pin->tenant, pin->key);
        print_status(stdout, &st, r->verbose);
        printf(" (%d attempt%s)\n", attempts, attempts == 1 ? "" : "s");
    }
    fflush(stdout);
    pins_message_free(resp);
    pins_status_clear(&st);
    return rv == 0;
}

static bool verify_api_one(seed_run *r, const pinsctl_seed_pin *pin)
{
    Memorypins__V1__GetPinRequest req = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    req.tenant_id = (char *)pin->tenant;
    req.key = (char *)pin->key;
    ProtobufCMessage *resp = NULL;
    pins_status st = PINS_STATUS_INIT;
    int attempts = 0;
    int rv =
        call_with_retries(r, PINS_RPC_GET_PIN, &req.base, &resp, pin, "verify", &st, &attempts);
    bool ok = false;
    if (rv != 0) {
        printf("[VERIFY FAILED] %s/%s: ", pin->tenant, pin->key);
        print_status(stdout, &st, r->verbose);
        putchar('\n');
    } else {
        const Memorypins__V1__GetPinResponse *g = (const Memorypins__V1__GetPinResponse *)resp;
        const Google__Protobuf__Struct *got = g->pin != NULL ? g->pin->value : NULL;
        ok = got != NULL && pinsctl_seed_value_equal(got, pin->value);
        if (ok) {
            printf("[VERIFIED] API: %s/%s\n", pin->tenant, pin->key);
        } else {
            printf("[VERIFY FAILED] %s/%s: the value read back differs from the one written\n",
                   pin->tenant, pin->key);
            if (r->verbose) {
                char *t = got != NULL ? pins_value_to_json(got) : NULL;
                printf("     written: %s\n     read:    %s\n", pin->value_json,
                       t != NULL ? t : "(none)");
                free(t);
            }
        }
    }
    fflush(stdout);
    pins_message_free(resp);
    pins_status_clear(&st);
    return ok;
}

/* The first line of a libpq error text, with every occurrence of the password masked (libpq's
 * connection and query errors do not quote the password, but a server's message might). */
static void print_pq_error(const char *what, const char *msg, const char *password)
{
    size_t n = strcspn(msg, "\n");
    size_t pl = password != NULL ? strlen(password) : 0;
    fprintf(stderr, "pinsctl: seed: %s: ", what);
    for (size_t i = 0; i < n;) {
        if (pl > 0 && i + pl <= n && memcmp(msg + i, password, pl) == 0) {
            fputs("***", stderr);
            i += pl;
        } else {
            fputc(msg[i++], stderr);
        }
    }
    fputc('\n', stderr);
}

/* Connects to url, bounded by the request timeout: connect_timeout (whole seconds, rounded up)
 * unless the URL sets one. The URL is parsed first; when that fails only a fixed message is
 * printed (libpq's parse errors quote the offending token, which can be the password). NULL when
 * it cannot connect (printed). *ppassword: the URL's password (free with PQconninfoFree(*popts)).
 */
static PGconn *sql_connect(const seed_run *r, const char *url, PQconninfoOption **popts,
                           const char **ppassword)
{
    char *perr = NULL;
    PQconninfoOption *opts = PQconninfoParse(url, &perr);
    *popts = opts;
    *ppassword = NULL;
    if (opts == NULL) {
        PQfreemem(perr);
        fputs("pinsctl: seed: --sql-verify: DATABASE_URL cannot be parsed as a PostgreSQL "
              "connection string\n",
              stderr);
        return NULL;
    }
    size_t n = 0;
    bool has_timeout = false;
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        n++;
        if (o->val != NULL && strcmp(o->keyword, "password") == 0)
            *ppassword = o->val;
        if (o->val != NULL && o->val[0] != '\0' && strcmp(o->keyword, "connect_timeout") == 0)
            has_timeout = true;
    }
    const char **keys = calloc(n + 2, sizeof(*keys));
    const char **vals = calloc(n + 2, sizeof(*vals));
    char ct[32];
    snprintf(ct, sizeof(ct), "%" PRId64, (r->timeout_ms + 999) / 1000);
    size_t k = 0;
    for (PQconninfoOption *o = opts; keys != NULL && vals != NULL && o->keyword != NULL; o++) {
        if (o->val == NULL)
            continue;
        keys[k] = o->keyword;
        vals[k++] = o->val;
    }
    if (!has_timeout && keys != NULL && vals != NULL) {
        keys[k] = "connect_timeout";
        vals[k++] = ct;
    }
    PGconn *db = keys != NULL && vals != NULL ? PQconnectdbParams(keys, vals, 0) : NULL;
    free(keys);
    free(vals);
    if (db == NULL) {
        fputs("pinsctl: seed: --sql-verify: out of memory\n", stderr);
        return NULL;
    }
    if (PQstatus(db) != CONNECTION_OK) {
        print_pq_error("--sql-verify: cannot connect to DATABASE_URL", PQerrorMessage(db),
                       *ppassword);
        PQfinish(db);
        return NULL;
    }
    return db;
}

/* --sql-verify: returns how many written pins have the same value in system.memory_pins. Every
 * query runs in one transaction under statement_timeout (the request timeout) unless the URL's
 * options set one: SET LOCAL holds through PgBouncer in transaction mode too. */
static size_t verify_sql(seed_run *r, const char *url)
{
    size_t ok = 0;
    PQconninfoOption *opts = NULL;
    const char *password = NULL;
    PGconn *db = sql_connect(r, url, &opts, &password);
    if (db == NULL) {
        PQconninfoFree(opts);
        return 0;
    }
    bool own_timeout = true;
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (o->val != NULL && strcmp(o->keyword, "options") == 0 &&
            strstr(o->val, "statement_timeout") != NULL)
            own_timeout = false;
    }
    char begin[96];
    if (own_timeout)
        snprintf(begin, sizeof(begin), "BEGIN; SET LOCAL statement_timeout = %" PRId64,
                 r->timeout_ms);
    else
        snprintf(begin, sizeof(begin), "BEGIN");
    PGresult *br = PQexec(db, begin);
    if (PQresultStatus(br) != PGRES_COMMAND_OK) {
        print_pq_error("--sql-verify", PQresultErrorMessage(br), password);
        PQclear(br);
        PQfinish(db);
        PQconninfoFree(opts);
        return 0;
    }
    PQclear(br);
    static const char sql[] =
        "SELECT value = $3::jsonb FROM system.memory_pins"
        " WHERE tenant_id = $1 AND key = $2 AND (expires_at IS NULL OR expires_at > now())";
    for (size_t i = 0; i < r->plan.npins; i++) {
        const pinsctl_seed_pin *pin = &r->plan.pins[i];
        if (!r->written[i])
            continue;
        const char *params[3] = {pin->tenant, pin->key, pin->value_json};
        PGresult *res = PQexecParams(db, sql, 3, NULL, params, NULL, NULL, 0);
        if (PQresultStatus(res) != PGRES_TUPLES_OK) {
            printf("[SQL VERIFY FAILED] %s/%s: ", pin->tenant, pin->key);
            fflush(stdout);
            print_pq_error("--sql-verify", PQresultErrorMessage(res), password);
            /* The transaction is aborted now: start another for the next pins. */
            PQclear(PQexec(db, "ROLLBACK"));
            PQclear(PQexec(db, begin));
        } else if (PQntuples(res) == 0) {
            printf("[SQL VERIFY FAILED] %s/%s: no live row in system.memory_pins\n", pin->tenant,
                   pin->key);
        } else if (strcmp(PQgetvalue(res, 0, 0), "t") != 0) {
            printf("[SQL VERIFY FAILED] %s/%s: the row's value differs from the one written\n",
                   pin->tenant, pin->key);
        } else {
            printf("[VERIFIED] SQL: %s/%s\n", pin->tenant, pin->key);
            ok++;
        }
        fflush(stdout);
        PQclear(res);
    }
    PQclear(PQexec(db, "ROLLBACK"));
    PQfinish(db);
    PQconninfoFree(opts);
    return ok;
}

/* GET path; true when it answered 200. */
static bool probe(seed_run *r, const char *path, int64_t timeout_ms, int *phttp)
{
    pins_call_options co = {.timeout_ms = timeout_ms > 0 ? timeout_ms : 1, .no_retry = true};
    pins_status st = PINS_STATUS_INIT;
    char *body = NULL;
    *phttp = 0;
    int rv = pins_client_http_get(r->client, path, phttp, &body, NULL, &co, &st);
    free(body);
    pins_status_clear(&st);
    return rv == 0 && *phttp == 200;
}

/* --wait: /health, then /ready, answering 200. Returns 0 or PINSCTL_EXIT_USAGE at the timeout. */
static int wait_ready(seed_run *r)
{
    int64_t start = now_ms();
    int64_t deadline = start + r->wait_timeout_s * 1000;
    printf("Waiting for %s to be ready (at most %" PRId64 " s)...\n", r->addr, r->wait_timeout_s);
    fflush(stdout);
    int polls = 0;
    for (;;) {
        int64_t left = deadline - now_ms();
        int64_t each = left < 2000 ? left : 2000;
        int hs = 0, rs = 0;
        polls++;
        if (left > 0 && probe(r, "/health", each, &hs)) {
            left = deadline - now_ms();
            each = left < 2000 ? left : 2000;
            if (left > 0 && probe(r, "/ready", each, &rs)) {
                printf("Service ready after %.1f s\n", (double)(now_ms() - start) / 1000.0);
                fflush(stdout);
                return 0;
            }
        }
        if (r->verbose) {
            printf("  not ready yet (/health %d, /ready %d)\n", hs, rs);
            fflush(stdout);
        }
        int64_t next = start + (int64_t)polls * 1000;
        if (next >= deadline || now_ms() >= deadline)
            break;
        if (next > now_ms())
            sleep_ms(next - now_ms());
    }
    fprintf(stderr, "pinsctl: seed: %s was not ready within %" PRId64 " s (--wait-timeout)\n",
            r->addr, r->wait_timeout_s);
    return PINSCTL_EXIT_USAGE;
}

/* The address for the client: the URL's scheme, host and port (a path is dropped; without a port,
 * 80 for http:// and 443 for https://, as a URL means). */
static int make_addr(seed_run *r)
{
    const char *b = r->base;
    const char *rest = b;
    const char *def_port = NULL;
    if (strncmp(b, "http://", 7) == 0) {
        rest = b + 7;
        def_port = "80";
    } else if (strncmp(b, "https://", 8) == 0) {
        rest = b + 8;
        def_port = "443";
    }
    size_t hp = strcspn(rest, "/?#");
    if (hp == 0 || hp > 300) {
        fprintf(stderr, "pinsctl: seed: --base: expected http://host:port or https://host:port\n");
        return PINSCTL_EXIT_USAGE;
    }
    if (memchr(rest, '@', hp) != NULL) {
        /* Not repeated: user information is usually a password. */
        fprintf(stderr, "pinsctl: seed: --base: user information (user:password@) is not "
                        "allowed in the URL; give credentials in MACHINE_JWT or "
                        "MACHINE_TOKEN\n");
        return PINSCTL_EXIT_USAGE;
    }
    bool has_port = false;
    const char *close = memchr(rest, ']', hp);
    const char *colon = NULL;
    for (const char *p = close != NULL ? close : rest; p < rest + hp; p++) {
        if (*p == ':')
            colon = p;
    }
    has_port = colon != NULL;
    snprintf(r->addr, sizeof(r->addr), "%.*s%.*s%s%s", (int)(rest - b), b, (int)hp, rest,
             !has_port && def_port != NULL ? ":" : "",
             !has_port && def_port != NULL ? def_port : "");
    return 0;
}

/* A credential from the environment with surrounding blanks and line ends removed (an env file
 * written on Windows leaves "\r"). NULL when unset or empty; *pbad when a control character is
 * left inside it (the name is printed, never the value). New text in r->creds. */
static const char *credential(seed_run *r, const char *name, bool *pbad)
{
    const char *v = env_or_null(name);
    if (v == NULL)
        return NULL;
    while (*v == ' ' || *v == '\t' || *v == '\r' || *v == '\n')
        v++;
    size_t n = strlen(v);
    while (n > 0 && (v[n - 1] == ' ' || v[n - 1] == '\t' || v[n - 1] == '\r' || v[n - 1] == '\n'))
        n--;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c < 0x20 || c == 0x7f) {
            fprintf(stderr,
                    "pinsctl: seed: %s holds a control character (not printed); a token is one "
                    "line of printable characters\n",
                    name);
            *pbad = true;
            return NULL;
        }
    }
    if (n == 0 || r->ncreds >= sizeof(r->creds) / sizeof(r->creds[0]))
        return NULL;
    char *c = strndup(v, n);
    if (c != NULL)
        r->creds[r->ncreds++] = c;
    return c;
}

/* Which credential goes out. Returns what to call it in the log, or NULL after an error
 * (printed). */
static const char *setup_auth(seed_run *r)
{
    pins_options *o = &r->g->opts;
    o->machine_token = NULL;
    o->bearer_token = NULL;
    bool bad = false;
    const char *jwt = credential(r, "MACHINE_JWT", &bad);
    if (bad)
        return NULL;
    if (jwt != NULL) {
        if (pinsctl_seed_is_jwt(jwt)) {
            o->bearer_token = jwt;
            return "MACHINE_JWT as authorization: Bearer";
        }
        o->machine_token = jwt;
        return "MACHINE_JWT (not a JWT) as x-machine-token";
    }
    const char *tok = credential(r, "MACHINE_TOKEN", &bad);
    if (bad)
        return NULL;
    if (tok != NULL) {
        o->machine_token = tok;
        return "MACHINE_TOKEN as x-machine-token";
    }
    tok = credential(r, "MACHINE_SECRET_TOKEN", &bad);
    if (bad)
        return NULL;
    if (tok != NULL) {
        o->machine_token = tok;
        return "MACHINE_SECRET_TOKEN as x-machine-token";
    }
    fputs("pinsctl: seed: warning: no MACHINE_JWT, MACHINE_TOKEN or MACHINE_SECRET_TOKEN set: "
          "sending no credentials (pinsd with RBAC_ENFORCE=true refuses the writes)\n",
          stderr);
    return "none";
}

static int env_int(const char *name, int64_t min, int64_t max, int64_t *pv)
{
    const char *s = env_or_null(name);
    if (s == NULL)
        return 0;
    char *end = NULL;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < min || v > max) {
        fprintf(stderr,
                "pinsctl: seed: %s: expected an integer from %" PRId64 " to %" PRId64
                ", got '%s'\n",
                name, min, max, s);
        return PINSCTL_EXIT_USAGE;
    }
    *pv = v;
    return 0;
}

static int read_env(seed_run *r)
{
    const char *t = env_or_null("SEED_TIMEOUT");
    r->timeout_ms = DEFAULT_TIMEOUT_MS;
    if (t != NULL && (!pinsctl_parse_duration_ms(t, &r->timeout_ms) || r->timeout_ms == 0)) {
        fprintf(stderr, "pinsctl: seed: SEED_TIMEOUT: expected seconds above 0, got '%s'\n", t);
        return PINSCTL_EXIT_USAGE;
    }
    int64_t v = DEFAULT_RETRIES;
    if (env_int("SEED_RETRIES", 0, MAX_RETRIES, &v) != 0)
        return PINSCTL_EXIT_USAGE;
    r->retries = (int)v;
    r->wait_timeout_s = DEFAULT_WAIT_S;
    if (env_int("SEED_WAIT_TIMEOUT", 1, 86400, &r->wait_timeout_s) != 0)
        return PINSCTL_EXIT_USAGE;
    r->backoff_ms = DEFAULT_BACKOFF_MS;
    if (env_int("SEED_BACKOFF_MS", 0, PINSCTL_SEED_BACKOFF_MAX_MS, &r->backoff_ms) != 0)
        return PINSCTL_EXIT_USAGE;
    return 0;
}

static int usage_error(const char *fmt, const char *arg)
{
    fputs("pinsctl: seed: ", stderr);
    fprintf(stderr, fmt, arg);
    fputs(" (see pinsctl seed --help)\n", stderr);
    return PINSCTL_EXIT_USAGE;
}

/* A short option's or a long option's value: "-f F", "--file F", "--file=F". */
static int take(int argc, char **argv, int *pi, const char *shrt, const char *lng,
                const char **pval)
{
    const char *s = argv[*pi];
    size_t n = strlen(lng);
    if (strncmp(s, lng, n) == 0 && s[n] == '=') {
        *pval = s + n + 1;
        *pi += 1;
        return 1;
    }
    if (strcmp(s, lng) != 0 && (shrt == NULL || strcmp(s, shrt) != 0))
        return 0;
    if (*pi + 1 >= argc)
        return -1;
    *pval = argv[*pi + 1];
    *pi += 2;
    return 1;
}

/* Options with a value: where each one goes. */
typedef struct value_opt {
    const char *shrt, *lng, *metavar;
} value_opt;

static const value_opt value_opts[] = {
    {"-f", "--file", "FILE"},
    {"-b", "--base", "URL"},
    {NULL, "--addr", "URL"},
    {NULL, "--wait-timeout", "seconds"},
};

static int parse_args(seed_run *r, int argc, char **argv)
{
    const char *wait_timeout = NULL;
    for (int i = 1; i < argc;) {
        const char *s = argv[i];
        if (strcmp(s, "--dry-run") == 0) {
            r->dry_run = true;
        } else if (strcmp(s, "--verify") == 0) {
            r->verify = true;
        } else if (strcmp(s, "--sql-verify") == 0) {
            r->sql_verify = true;
        } else if (strcmp(s, "--wait") == 0) {
            r->wait = true;
        } else if (strcmp(s, "-v") == 0 || strcmp(s, "--verbose") == 0) {
            r->verbose = true;
        } else {
            size_t k = 0;
            const char *val = NULL;
            int rv = 0;
            for (; k < sizeof(value_opts) / sizeof(value_opts[0]) && rv == 0; k++)
                rv = take(argc, argv, &i, value_opts[k].shrt, value_opts[k].lng, &val);
            if (rv < 0) {
                fprintf(stderr, "pinsctl: seed: %s needs a value (%s) (see pinsctl seed --help)\n",
                        s, value_opts[k - 1].metavar);
                return PINSCTL_EXIT_USAGE;
            }
            if (rv > 0) {
                const char *name = value_opts[k - 1].lng;
                if (strcmp(name, "--file") == 0)
                    r->file = val;
                else if (strcmp(name, "--wait-timeout") == 0)
                    wait_timeout = val;
                else
                    r->base = val; /* --base, --addr */
                continue;
            }
            rv = pinsctl_global_option(r->g, argc, argv, &i);
            if (rv < 0)
                return PINSCTL_EXIT_USAGE;
            if (rv == 0)
                return usage_error("unknown option or argument '%s'", s);
            continue;
        }
        i++;
    }
    if (wait_timeout != NULL) {
        char *end = NULL;
        errno = 0;
        long long v = strtoll(wait_timeout, &end, 10);
        if (errno != 0 || end == wait_timeout || *end != '\0' || v < 1 || v > 86400)
            return usage_error("--wait-timeout: expected whole seconds from 1 to 86400, got '%s'",
                               wait_timeout);
        r->wait_timeout_s = v;
    }
    if (r->file == NULL || r->file[0] == '\0')
        return usage_error("%s", "--file FILE is required");
    if (r->base == NULL || r->base[0] == '\0')
        return usage_error("%s", "--base URL is required");
    if (r->g->timeout_given)
        r->timeout_ms = r->g->opts.timeout_ms;
    return 0;
}

/* Reads FILE whole (at most FILE_MAX_BYTES; exactly that is accepted). Only a regular file: it is
 * opened with O_NONBLOCK, so a FIFO without a writer or a device is refused after fstat instead
 * of blocking. New text, or NULL (printed). */
static char *read_file(const char *path, size_t *plen)
{
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        fprintf(stderr, "pinsctl: seed: %s: cannot open the seed file: %s (nothing written)\n",
                path, strerror(errno));
        return NULL;
    }
    struct stat sb;
    if (fstat(fd, &sb) != 0) {
        fprintf(stderr, "pinsctl: seed: %s: cannot read the seed file: %s (nothing written)\n",
                path, strerror(errno));
        close(fd);
        return NULL;
    }
    if (!S_ISREG(sb.st_mode)) {
        fprintf(stderr,
                "pinsctl: seed: %s: not a regular file (a FIFO, device or directory); give the "
                "seed file itself (nothing written)\n",
                path);
        close(fd);
        return NULL;
    }
    if (sb.st_size < 0 || (uint64_t)sb.st_size > FILE_MAX_BYTES) {
        fprintf(stderr, "pinsctl: seed: %s: larger than %zu MiB (nothing written)\n", path,
                FILE_MAX_BYTES >> 20);
        close(fd);
        return NULL;
    }
    int fl = fcntl(fd, F_GETFL);
    if (fl >= 0)
        (void)fcntl(fd, F_SETFL, fl & ~O_NONBLOCK);
    /* The size may change while it is read: read at most the cap plus one byte to see that. */
    size_t cap = (size_t)sb.st_size + 1 + ((size_t)1 << 12);
    if (cap > FILE_MAX_BYTES + 1)
        cap = FILE_MAX_BYTES + 1;
    size_t len = 0;
    char *p = malloc(cap);
    bool oom = p == NULL;
    while (p != NULL) {
        if (len == cap) {
            if (cap > FILE_MAX_BYTES) {
                fprintf(stderr, "pinsctl: seed: %s: larger than %zu MiB (nothing written)\n", path,
                        FILE_MAX_BYTES >> 20);
                free(p);
                p = NULL;
                break;
            }
            size_t ncap = cap * 2 > FILE_MAX_BYTES + 1 ? FILE_MAX_BYTES + 1 : cap * 2;
            char *q = realloc(p, ncap);
            if (q == NULL) {
                free(p);
                p = NULL;
                oom = true;
                break;
            }
            p = q;
            cap = ncap;
        }
        ssize_t n = read(fd, p + len, cap - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            fprintf(stderr, "pinsctl: seed: %s: cannot read the seed file: %s (nothing written)\n",
                    path, strerror(errno));
            free(p);
            p = NULL;
            break;
        }
        if (n == 0)
            break;
        len += (size_t)n;
    }
    if (oom)
        fprintf(stderr, "pinsctl: seed: %s: out of memory (nothing written)\n", path);
    close(fd);
    *plen = len;
    return p;
}

static void print_summary(const seed_run *r, size_t ok, size_t failed, size_t vapi, size_t vsql,
                          const char *sql_note)
{
    puts("==================================================");
    puts("Seed Complete");
    puts("==================================================");
    printf("Success:      %zu\n", ok);
    printf("Failed:       %zu\n", failed);
    if (r->verify && !r->dry_run)
        printf("Verified API: %zu\n", vapi);
    else
        printf("Verified API: %zu (%s)\n", vapi, r->dry_run ? "dry run" : "not asked: --verify");
    if (sql_note == NULL)
        printf("Verified SQL: %zu\n", vsql);
    else
        printf("Verified SQL: %zu (%s)\n", vsql, sql_note);
    puts("==================================================");
}

int pinsctl_seed_main(pinsctl_global *g, int argc, char **argv)
{
    seed_run r = {.g = g};
    int ex = 0;
    char *text = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0) {
            fputs(usage_text, stdout);
            return PINSCTL_EXIT_OK;
        }
    }
    ex = read_env(&r);
    if (ex == 0)
        ex = parse_args(&r, argc, argv);
    if (ex == 0)
        ex = make_addr(&r);
    if (ex != 0)
        return ex;

    size_t len = 0;
    text = read_file(r.file, &len);
    if (text == NULL)
        return PINSCTL_EXIT_USAGE;
    char err[768] = "";
    if (pinsctl_seed_parse(text, len, &r.plan, err, sizeof(err)) != 0) {
        fprintf(stderr, "pinsctl: seed: %s: %s (nothing written)\n", r.file, err);
        ex = PINSCTL_EXIT_USAGE;
        goto out;
    }
    r.written = calloc(r.plan.npins + 1, sizeof(*r.written));
    if (r.written == NULL) {
        ex = PINSCTL_EXIT_REFUSED;
        goto out;
    }

    const char *auth = setup_auth(&r);
    if (auth == NULL) {
        ex = PINSCTL_EXIT_USAGE;
        goto out;
    }
    g->opts.addr = r.addr;
    g->opts.timeout_ms = r.timeout_ms;
    if (r.timeout_ms > 0 && g->opts.connect_timeout_ms > r.timeout_ms)
        g->opts.connect_timeout_ms = r.timeout_ms;
    printf("Seeding %zu pins from %zu entries of %s into %s%s\n", r.plan.npins, r.plan.nentries,
           r.file, r.addr, r.dry_run ? " (dry run)" : "");
    if (r.verbose)
        printf("  credentials: %s; request timeout %" PRId64 " ms; retries %d\n", auth,
               r.timeout_ms, r.retries);
    fflush(stdout);
    if (!r.dry_run || r.wait) {
        pins_status st = PINS_STATUS_INIT;
        r.client = pins_client_new(&g->opts, &st);
        if (r.client == NULL) {
            fprintf(stderr, "pinsctl: seed: %s\n",
                    st.message != NULL && st.message[0] != '\0' ? st.message : "bad address");
            pins_status_clear(&st);
            ex = PINSCTL_EXIT_USAGE;
            goto out;
        }
        pins_status_clear(&st);
    }
    if (r.wait) {
        ex = wait_ready(&r);
        if (ex != 0)
            goto out;
    }

    size_t ok = 0, failed = 0, vapi = 0, vsql = 0;
    for (size_t i = 0; i < r.plan.npins; i++) {
        const pinsctl_seed_pin *pin = &r.plan.pins[i];
        if (r.dry_run) {
            printf("[DRY-RUN] Would upsert: %s/%s\n", pin->tenant, pin->key);
            if (r.verbose)
                printf("     value: %s\n", pin->value_json);
            ok++;
            continue;
        }
        r.written[i] = upsert_one(&r, pin);
        if (r.written[i])
            ok++;
        else
            failed++;
    }
    fflush(stdout);
    if (r.verify && !r.dry_run) {
        for (size_t i = 0; i < r.plan.npins; i++) {
            if (r.written[i] && verify_api_one(&r, &r.plan.pins[i]))
                vapi++;
        }
    }
    const char *sql_note = NULL;
    const char *url = env_or_null("DATABASE_URL");
    bool sql_done = false;
    if (!r.sql_verify)
        sql_note = "not asked: --sql-verify";
    else if (r.dry_run)
        sql_note = "dry run";
    else if (url == NULL)
        sql_note = "skipped: DATABASE_URL not set";
    if (r.sql_verify && url == NULL && !r.dry_run)
        puts("[SKIP] SQL verification: DATABASE_URL not set");
    if (r.sql_verify && url != NULL && !r.dry_run) {
        vsql = verify_sql(&r, url);
        sql_done = true;
    }
    print_summary(&r, ok, failed, vapi, vsql, sql_note);
    bool bad = failed > 0 || (r.verify && !r.dry_run && vapi < ok) || (sql_done && vsql < ok);
    if (bad) {
        puts("Seeding finished with failures");
        ex = PINSCTL_EXIT_REFUSED;
    } else {
        puts("All pins seeded and verified successfully!");
        ex = PINSCTL_EXIT_OK;
    }
    fflush(stdout);
out:
    pins_client_free(r.client);
    free(r.written);
    for (size_t i = 0; i < r.ncreds; i++)
        free(r.creds[i]);
    pinsctl_seed_plan_free(&r.plan);
    free(text);
    return ex;
}
