/* common/pbstruct.c: google.protobuf.Struct <-> compact JSON.
 *
 * The parser is hand-written rather than jansson because it runs on every GetPin: it validates and
 * builds in one pass, allocates only from the arena (an entry and its Value share one allocation),
 * and collects the members of an open container on one shared pointer stack so that each
 * container's array is allocated once, at its exact size, when it closes. Numbers take the exact
 * fast path of Clinger (at most 15 significant digits and a power of ten up to 1e22, both exact
 * doubles, so one IEEE operation rounds correctly) and fall back to strtod otherwise.
 *
 * The same parser serves a value inside a larger document (protocols/json.c: REST, Connect, SSE):
 * it then starts at a position, keeps within the caller's arena budget, and on failure reports the
 * place, the finer cause and the path, which cost nothing until something fails (the path is
 * collected on the way out of the recursion). A failure's place follows the rules the protocol
 * error messages were written against: a number that is none fails at its start (after its '-'),
 * a literal at its first wrong byte, an escape at its backslash.
 *
 * The writer appends into one pins_buf (common/buf.h) whose maximum is max_bytes, so the size limit
 * costs one comparison per append; strings go through the shared strict JSON string writer
 * (common/json_str.h), and UTF-8 is checked by pins_utf8_seq in both directions. Duplicate keys
 * are found by pairwise comparison for small objects and by a hash table on a scratch stack for
 * larger ones.
 */
#include "common/pbstruct.h"

#include <errno.h>
#include <math.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>

#include "common/buf.h"
#include "common/error.h"
#include "common/hash.h"
#include "common/json_str.h"
#include "common/utf8.h"

#define SMALL_OBJECT 8   /* objects up to this many keys look for duplicates pairwise */
#define INLINE_STACK 128 /* parser pointer-stack slots before it moves to the heap */
#define NUMBER_BUF   64  /* longest number the parser copies on the C stack for strtod */

static _Thread_local pbstruct_reason last_reason;

static int fail(pbstruct_reason r)
{
    last_reason = r;
    if (r == PBSTRUCT_REASON_NOMEM)
        return PINS_ENOMEM;
    if (r == PBSTRUCT_REASON_INTERNAL)
        return PINS_EINTERNAL;
    return PINS_EINVALID_ARGUMENT;
}

static int clamp_depth(int max_depth)
{
    return max_depth > PBSTRUCT_MAX_DEPTH ? PBSTRUCT_MAX_DEPTH : max_depth;
}

/* ---- writer ---------------------------------------------------------------------------------- */

struct writer {
    pins_buf *b; /* the text; its maximum is the size limit */
    int max_depth;
    unsigned char *scratch; /* LIFO of duplicate-key tables; addressed by offsets */
    size_t scratch_len;
    size_t scratch_cap;
};

/* The reason for an error of the buffer or the string writer. Cold: kept out of the appends. */
__attribute__((cold, noinline)) static int fail_put(int rv)
{
    if (rv == PINS_ETOO_LARGE)
        return fail(PBSTRUCT_REASON_TOO_LARGE);
    if (rv == PINS_EINVALID_ARGUMENT)
        return fail(PBSTRUCT_REASON_BAD_UTF8);
    return fail(PBSTRUCT_REASON_NOMEM);
}

static inline int put(struct writer *w, const void *s, size_t n)
{
    int rv = pins_buf_add(w->b, s, n);
    return rv == 0 ? 0 : fail_put(rv);
}

static inline int putc1(struct writer *w, char c)
{
    int rv = pins_buf_add_byte(w->b, c);
    return rv == 0 ? 0 : fail_put(rv);
}

static int put_string(struct writer *w, const char *str)
{
    if (str == NULL)
        return fail(PBSTRUCT_REASON_NO_KIND);
    int rv = pins_json_str_put_strict(w->b, str, PINS_JSON_STR_NUL);
    return rv == 0 ? 0 : fail_put(rv);
}

/* Writes the decimal digits of u ending at e; returns where they start. */
static char *digits_before(char *e, uint64_t u)
{
    do {
        *--e = (char)('0' + u % 10);
        u /= 10;
    } while (u != 0);
    return e;
}

static int put_number(struct writer *w, double d)
{
    static const double pow10[] = {1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9};
    static const uint64_t ipow10[] = {1,      10,      100,      1000,      10000,
                                      100000, 1000000, 10000000, 100000000, 1000000000};
    if (!isfinite(d))
        return fail(PBSTRUCT_REASON_BAD_NUMBER);
    char tmp[40];
    char *e = tmp + sizeof(tmp), *q;
    double ad = fabs(d);
    if (ad <= 9007199254740992.0 && d == (double)(int64_t)d) {
        q = digits_before(e, (uint64_t)ad);
        if (d < 0)
            *--q = '-';
        return put(w, q, (size_t)(e - q));
    }
    /* Fast path for short decimals such as 0.75 or 19.99: the smallest k for which m = d * 10^k
     * is an integer below 10^15 and m / 10^k (one correctly rounded IEEE division of exact
     * operands, which is what any correct parser computes) gives d back. A decimal of at most 15
     * digits that reads back to d is the only one, and it is what %.15g prints; the range is
     * where %g uses no exponent. So this prints exactly what the slow path would. */
    if (ad >= 1e-4 && ad < 1e15) {
        for (int k = 1; k <= 9; k++) {
            double m = ad * pow10[k];
            if (m >= 1e15)
                break;
            if (m != (double)(uint64_t)m || m / pow10[k] != ad)
                continue;
            uint64_t u = (uint64_t)m, ip = u / ipow10[k], fp = u % ipow10[k];
            while (fp % 10 == 0) {
                fp /= 10;
                k--;
            }
            q = digits_before(e, fp);
            while (e - q < k)
                *--q = '0';
            *--q = '.';
            q = digits_before(q, ip);
            if (d < 0)
                *--q = '-';
            return put(w, q, (size_t)(e - q));
        }
    }
    /* The shortest of 15, 16, 17 significant digits that reads back to d; %.15g strips trailing
     * zeros, so a double whose shortest form has at most 15 digits gets exactly that form. */
    int len = 0;
    for (int prec = 15; prec <= 17; prec++) {
        len = snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
        if (prec == 17 || strtod(tmp, NULL) == d)
            break;
    }
    return put(w, tmp, (size_t)len);
}

static int put_struct(struct writer *w, const Google__Protobuf__Struct *s, int depth);
static int put_list(struct writer *w, const Google__Protobuf__ListValue *l, int depth);

/* v sits in a container at depth; a nested container is at depth + 1. */
static int put_value(struct writer *w, const Google__Protobuf__Value *v, int depth)
{
    if (v == NULL)
        return fail(PBSTRUCT_REASON_NO_KIND);
    switch (v->kind_case) {
    case GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE:
        return put(w, "null", 4);
    case GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE:
        return put_number(w, v->number_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE:
        return put_string(w, v->string_value);
    case GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE:
        return v->bool_value ? put(w, "true", 4) : put(w, "false", 5);
    case GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE:
        return put_struct(w, v->struct_value, depth + 1);
    case GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE:
        return put_list(w, v->list_value, depth + 1);
    default:
        return fail(PBSTRUCT_REASON_NO_KIND);
    }
}

static int put_list(struct writer *w, const Google__Protobuf__ListValue *l, int depth)
{
    if (l == NULL)
        return fail(PBSTRUCT_REASON_NO_KIND);
    if (depth > w->max_depth)
        return fail(PBSTRUCT_REASON_TOO_DEEP);
    int rv = putc1(w, '[');
    for (size_t i = 0; rv == 0 && i < l->n_values; i++) {
        if (i > 0)
            rv = putc1(w, ',');
        if (rv == 0)
            rv = put_value(w, l->values[i], depth);
    }
    return rv != 0 ? rv : putc1(w, ']');
}

static int put_member(struct writer *w, const Google__Protobuf__Struct__FieldsEntry *e, bool comma,
                      int depth)
{
    int rv = comma ? putc1(w, ',') : 0;
    if (rv == 0)
        rv = put_string(w, e->key);
    if (rv == 0)
        rv = putc1(w, ':');
    if (rv == 0)
        rv = put_value(w, e->value, depth);
    return rv;
}

static uint32_t hash_key(const char *k, size_t n)
{
    return (uint32_t)pins_fnv1a(PINS_FNV1A_INIT, k, n);
}

/* Pushes size bytes onto the scratch stack; *poff gets their offset. */
static int scratch_push(struct writer *w, size_t size, size_t *poff)
{
    size = (size + 7) & ~(size_t)7;
    if (w->scratch_cap - w->scratch_len < size) {
        size_t cap = w->scratch_cap != 0 ? w->scratch_cap : 1024;
        while (cap - w->scratch_len < size)
            cap *= 2;
        unsigned char *ns = realloc(w->scratch, cap);
        if (ns == NULL)
            return fail(PBSTRUCT_REASON_NOMEM);
        w->scratch = ns;
        w->scratch_cap = cap;
    }
    *poff = w->scratch_len;
    w->scratch_len += size;
    return 0;
}

/* Marks drop[i] for every entry whose key occurs again later, using an open-addressing table of
 * (index + 1, hash) pairs that lives on the scratch stack only while it is built. */
static int mark_duplicates(struct writer *w, const Google__Protobuf__Struct *s, size_t drop_off)
{
    size_t n = s->n_fields;
    size_t slots = 16;
    while (slots < 2 * n)
        slots *= 2;
    size_t tab_off;
    int rv = scratch_push(w, slots * 2 * sizeof(uint32_t), &tab_off);
    if (rv != 0)
        return rv;
    uint32_t *tab = (uint32_t *)(void *)(w->scratch + tab_off);
    unsigned char *drop = w->scratch + drop_off;
    memset(tab, 0, slots * 2 * sizeof(uint32_t));
    for (size_t i = 0; i < n; i++) {
        const char *key = s->fields[i]->key;
        uint32_t h = hash_key(key, strlen(key));
        size_t j = h & (slots - 1);
        while (tab[2 * j] != 0) {
            uint32_t k = tab[2 * j] - 1;
            if (tab[2 * j + 1] == h && strcmp(s->fields[k]->key, key) == 0) {
                drop[k] = 1;
                break;
            }
            j = (j + 1) & (slots - 1);
        }
        tab[2 * j] = (uint32_t)i + 1;
        tab[2 * j + 1] = h;
    }
    w->scratch_len = tab_off;
    return 0;
}

static int put_struct(struct writer *w, const Google__Protobuf__Struct *s, int depth)
{
    if (s == NULL)
        return fail(PBSTRUCT_REASON_NO_KIND);
    if (depth > w->max_depth)
        return fail(PBSTRUCT_REASON_TOO_DEEP);
    size_t n = s->n_fields;
    for (size_t i = 0; i < n; i++) {
        if (s->fields[i] == NULL || s->fields[i]->key == NULL)
            return fail(PBSTRUCT_REASON_NO_KIND);
    }
    int rv = putc1(w, '{');
    if (rv != 0)
        return rv;
    bool comma = false;
    if (n <= SMALL_OBJECT) {
        size_t lens[SMALL_OBJECT];
        for (size_t i = 0; i < n; i++)
            lens[i] = strlen(s->fields[i]->key);
        for (size_t i = 0; i < n; i++) {
            bool dup = false;
            for (size_t j = i + 1; j < n && !dup; j++)
                dup = lens[j] == lens[i] &&
                      memcmp(s->fields[j]->key, s->fields[i]->key, lens[i]) == 0;
            if (dup)
                continue;
            rv = put_member(w, s->fields[i], comma, depth);
            if (rv != 0)
                return rv;
            comma = true;
        }
    } else {
        if (n > UINT32_MAX / 4)
            return fail(PBSTRUCT_REASON_TOO_LARGE);
        size_t drop_off;
        rv = scratch_push(w, n, &drop_off);
        if (rv != 0)
            return rv;
        memset(w->scratch + drop_off, 0, n);
        rv = mark_duplicates(w, s, drop_off);
        if (rv != 0)
            return rv;
        for (size_t i = 0; i < n; i++) {
            /* The scratch may move while a member nests; read it through the offset. */
            if (w->scratch[drop_off + i])
                continue;
            rv = put_member(w, s->fields[i], comma, depth);
            if (rv != 0)
                return rv;
            comma = true;
        }
        w->scratch_len = drop_off;
    }
    return putc1(w, '}');
}

/* ---- parser ---------------------------------------------------------------------------------- */

struct parser {
    const unsigned char *s; /* the whole text */
    size_t n;
    size_t pos;
    pins_arena *a;
    int max_depth;
    size_t budget; /* 0: only the arena's limit */
    size_t budget_base;
    void **stack; /* members of the open containers, innermost last */
    size_t top;
    size_t cap;
    bool heap; /* stack was malloc'd */
    pbstruct_step *path;
    size_t npath;
    pbstruct_fault fault;
    size_t err_pos;
};

/* A member and its value in one arena allocation. */
struct member {
    Google__Protobuf__Struct__FieldsEntry entry;
    Google__Protobuf__Value value;
};

static pbstruct_reason reason_of(pbstruct_fault f)
{
    switch (f) {
    case PBSTRUCT_FAULT_NONE:
        return PBSTRUCT_REASON_NONE;
    case PBSTRUCT_FAULT_SYNTAX:
    case PBSTRUCT_FAULT_CONTROL:
    case PBSTRUCT_FAULT_ESCAPE:
        return PBSTRUCT_REASON_SYNTAX;
    case PBSTRUCT_FAULT_UTF8:
    case PBSTRUCT_FAULT_SURROGATE:
    case PBSTRUCT_FAULT_NUL:
    case PBSTRUCT_FAULT_NUL_KEY:
        return PBSTRUCT_REASON_BAD_UTF8;
    case PBSTRUCT_FAULT_NUMBER:
        return PBSTRUCT_REASON_BAD_NUMBER;
    case PBSTRUCT_FAULT_DEPTH:
        return PBSTRUCT_REASON_TOO_DEEP;
    case PBSTRUCT_FAULT_TOO_LARGE:
    case PBSTRUCT_FAULT_NOMEM:
        return PBSTRUCT_REASON_NOMEM;
    }
    return PBSTRUCT_REASON_SYNTAX;
}

/* Records the failure (at pos, for the faults that have a place) and returns its code. */
__attribute__((cold, noinline)) static int pfail(struct parser *ps, pbstruct_fault f, size_t pos)
{
    ps->fault = f;
    ps->err_pos = pos;
    last_reason = reason_of(f);
    if (f == PBSTRUCT_FAULT_NOMEM)
        return PINS_ENOMEM;
    if (f == PBSTRUCT_FAULT_TOO_LARGE)
        return PINS_ETOO_LARGE;
    return PINS_EINVALID_ARGUMENT;
}

/* Adds one step to the path of a failure, on the way out of the recursion. */
__attribute__((cold, noinline)) static void path_add(struct parser *ps, const char *key, size_t len,
                                                     size_t index)
{
    if (ps->path != NULL && ps->npath < PBSTRUCT_MAX_DEPTH)
        ps->path[ps->npath++] = (pbstruct_step){.key = key, .len = len, .index = index};
}

/* n bytes of the arena, within the budget. Past the budget or the arena's limit: TOO_LARGE. */
static void *palloc(struct parser *ps, size_t n)
{
    if (ps->budget != 0) {
        size_t spent = pins_arena_used(ps->a) - ps->budget_base;
        if (n > ps->budget || spent > ps->budget - n) {
            pfail(ps, PBSTRUCT_FAULT_TOO_LARGE, ps->pos);
            return NULL;
        }
    }
    void *p = pins_arena_alloc(ps->a, n);
    if (p == NULL) {
        size_t limit = pins_arena_limit(ps->a), used = pins_arena_used(ps->a);
        bool over = limit != 0 && (n >= limit || limit - n < used + 16);
        pfail(ps, over ? PBSTRUCT_FAULT_TOO_LARGE : PBSTRUCT_FAULT_NOMEM, ps->pos);
    }
    return p;
}

static inline void skip_ws(struct parser *ps)
{
    const unsigned char *s = ps->s;
    size_t i = ps->pos, n = ps->n;
    while (i < n && (s[i] == ' ' || s[i] == '\n' || s[i] == '\r' || s[i] == '\t'))
        i++;
    ps->pos = i;
}

static int push(struct parser *ps, void *item)
{
    if (ps->top == ps->cap) {
        size_t cap = ps->cap * 2;
        /* The stack is bounded by the arena's share too: its content ends up in the arena. */
        size_t limit = ps->budget != 0 ? ps->budget : pins_arena_limit(ps->a);
        if (limit != 0 && cap * sizeof(void *) / 2 > limit)
            return pfail(ps, PBSTRUCT_FAULT_TOO_LARGE, ps->pos);
        void **ns;
        if (ps->heap) {
            ns = realloc(ps->stack, cap * sizeof(*ns));
        } else {
            ns = malloc(cap * sizeof(*ns));
            if (ns != NULL)
                memcpy(ns, ps->stack, ps->top * sizeof(*ns));
        }
        if (ns == NULL)
            return pfail(ps, PBSTRUCT_FAULT_NOMEM, ps->pos);
        ps->stack = ns;
        ps->cap = cap;
        ps->heap = true;
    }
    ps->stack[ps->top++] = item;
    return 0;
}

/* Steps over the '{' or '[' at ps->pos and the spaces after it. True when close follows at once
 * (an empty object or array, consumed too). */
static bool open_empty(struct parser *ps, char close)
{
    ps->pos++;
    skip_ws(ps);
    if (ps->pos < ps->n && ps->s[ps->pos] == close) {
        ps->pos++;
        return true;
    }
    return false;
}

/* After an object member or array element: keeps item, then reads ',' (another follows: 1) or
 * close (the object or array ends: 0). Returns 1, 0 or a failure. */
static int next_item(struct parser *ps, void *item, char close)
{
    int rv = push(ps, item);
    if (rv != 0)
        return rv;
    skip_ws(ps);
    if (ps->pos < ps->n && ps->s[ps->pos] == ',') {
        ps->pos++;
        skip_ws(ps);
        return 1;
    }
    if (ps->pos < ps->n && ps->s[ps->pos] == close) {
        ps->pos++;
        return 0;
    }
    return pfail(ps, PBSTRUCT_FAULT_SYNTAX, ps->pos);
}

/* Moves the items pushed since base into a new arena array of exactly their count. */
static int pop_array(struct parser *ps, size_t base, void ***parr, size_t *pn)
{
    size_t n = ps->top - base;
    void **arr = NULL;
    if (n > 0) {
        arr = palloc(ps, n * sizeof(*arr));
        if (arr == NULL)
            return ps->fault == PBSTRUCT_FAULT_NOMEM ? PINS_ENOMEM : PINS_ETOO_LARGE;
        memcpy(arr, ps->stack + base, n * sizeof(*arr));
    }
    ps->top = base;
    *parr = arr;
    *pn = n;
    return 0;
}

/* The code palloc's failure recorded. */
static int alloc_failed(const struct parser *ps)
{
    return ps->fault == PBSTRUCT_FAULT_NOMEM ? PINS_ENOMEM : PINS_ETOO_LARGE;
}

static int hex4(const unsigned char *p, unsigned *pv)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        unsigned c = p[i], d;
        if (c >= '0' && c <= '9')
            d = c - '0';
        else if ((c | 0x20) >= 'a' && (c | 0x20) <= 'f')
            d = (c | 0x20) - 'a' + 10;
        else
            return -1;
        v = v << 4 | d;
    }
    *pv = v;
    return 0;
}

/* Decodes the escaped string body s[start..end) into out, which has room for end - start + 1
 * bytes (an escape never decodes longer than itself). The body was already checked for quotes,
 * control bytes and UTF-8. *pnul is set when it holds \u0000; decoding goes on, so that a later
 * invalid escape is what is reported. */
static int decode_escapes(struct parser *ps, size_t start, size_t end, char *out, bool *pnul)
{
    const unsigned char *s = ps->s;
    size_t i = start;
    char *o = out;
    while (i < end) {
        if (s[i] != '\\') {
            *o++ = (char)s[i++];
            continue;
        }
        unsigned c = s[i + 1];
        switch (c) {
        case '"':
        case '\\':
        case '/':
            *o++ = (char)c;
            i += 2;
            continue;
        case 'b':
            *o++ = '\b';
            i += 2;
            continue;
        case 'f':
            *o++ = '\f';
            i += 2;
            continue;
        case 'n':
            *o++ = '\n';
            i += 2;
            continue;
        case 'r':
            *o++ = '\r';
            i += 2;
            continue;
        case 't':
            *o++ = '\t';
            i += 2;
            continue;
        case 'u':
            break;
        default:
            return pfail(ps, PBSTRUCT_FAULT_ESCAPE, i);
        }
        unsigned cp;
        if (end - i < 6 || hex4(s + i + 2, &cp) != 0)
            return pfail(ps, PBSTRUCT_FAULT_ESCAPE, i);
        size_t len = 6;
        if (cp >= 0xDC00 && cp <= 0xDFFF)
            return pfail(ps, PBSTRUCT_FAULT_SURROGATE, i);
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            unsigned lo;
            if (end - i < 12 || s[i + 6] != '\\' || s[i + 7] != 'u' || hex4(s + i + 8, &lo) != 0 ||
                lo < 0xDC00 || lo > 0xDFFF)
                return pfail(ps, PBSTRUCT_FAULT_SURROGATE, i);
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            len = 12;
        }
        i += len;
        if (cp == 0)
            *pnul = true;
        if (cp < 0x80) {
            *o++ = (char)cp;
        } else if (cp < 0x800) {
            *o++ = (char)(0xC0 | cp >> 6);
            *o++ = (char)(0x80 | (cp & 0x3F));
        } else if (cp < 0x10000) {
            *o++ = (char)(0xE0 | cp >> 12);
            *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
            *o++ = (char)(0x80 | (cp & 0x3F));
        } else {
            *o++ = (char)(0xF0 | cp >> 18);
            *o++ = (char)(0x80 | (cp >> 12 & 0x3F));
            *o++ = (char)(0x80 | (cp >> 6 & 0x3F));
            *o++ = (char)(0x80 | (cp & 0x3F));
        }
    }
    *o = '\0';
    return 0;
}

/* ps->pos is at the opening quote. *pout gets the NUL-terminated content in the arena; *pnul is
 * set when it holds \u0000 (the caller decides: a key is refused only after its ':'). */
static int parse_string(struct parser *ps, char **pout, bool *pnul)
{
    const unsigned char *s = ps->s;
    size_t start = ps->pos + 1, i = start, n = ps->n;
    bool escaped = false;
    for (;;) {
        if (i >= n)
            return pfail(ps, PBSTRUCT_FAULT_SYNTAX, n);
        unsigned c = s[i];
        if (c == '"')
            break;
        if (c == '\\') {
            escaped = true;
            i += 2;
            continue;
        }
        if (c < 0x20)
            return pfail(ps, PBSTRUCT_FAULT_CONTROL, i);
        if (c >= 0x80) {
            size_t k = pins_utf8_seq(s + i, n - i);
            if (k == 0)
                return pfail(ps, PBSTRUCT_FAULT_UTF8, i);
            i += k;
            continue;
        }
        i++;
    }
    size_t len = i - start;
    char *out = palloc(ps, len + 1);
    if (out == NULL)
        return alloc_failed(ps);
    *pnul = false;
    if (escaped) {
        int rv = decode_escapes(ps, start, i, out, pnul);
        if (rv != 0)
            return rv;
    } else {
        memcpy(out, s + start, len);
        out[len] = '\0';
    }
    ps->pos = i + 1;
    *pout = out;
    return 0;
}

/* A string value: \u0000 refused at once. */
static int parse_string_value(struct parser *ps, char **pout)
{
    bool nul;
    int rv = parse_string(ps, pout, &nul);
    if (rv == 0 && nul)
        rv = pfail(ps, PBSTRUCT_FAULT_NUL, ps->pos);
    return rv;
}

/* An RFC 8259 number. A text that is none fails at its start, or after its '-'. */
static int parse_number(struct parser *ps, double *pout)
{
    static const double pow10[] = {1e0,  1e1,  1e2,  1e3,  1e4,  1e5,  1e6,  1e7,
                                   1e8,  1e9,  1e10, 1e11, 1e12, 1e13, 1e14, 1e15,
                                   1e16, 1e17, 1e18, 1e19, 1e20, 1e21, 1e22};
    const unsigned char *s = ps->s + ps->pos, *p = s, *end = ps->s + ps->n;
    bool neg = false;
    uint64_t mant = 0;
    int digits = 0;  /* significant digits in mant */
    int dropped = 0; /* integer digits beyond what mant holds */
    int frac = 0;    /* fraction digits in mant */
    size_t bad = ps->pos;
    if (p < end && *p == '-') {
        neg = true;
        p++;
        bad++;
    }
    if (p >= end || *p < '0' || *p > '9')
        return pfail(ps, PBSTRUCT_FAULT_SYNTAX, bad);
    if (*p == '0') {
        p++;
    } else {
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            if (digits < 19) {
                mant = mant * 10 + (uint64_t)(*p - '0');
                digits++;
            } else {
                dropped++;
            }
        }
    }
    if (p < end && *p == '.') {
        p++;
        if (p >= end || *p < '0' || *p > '9')
            return pfail(ps, PBSTRUCT_FAULT_SYNTAX, bad);
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            if (mant == 0 && *p == '0') {
                frac++;
            } else if (digits < 19) {
                mant = mant * 10 + (uint64_t)(*p - '0');
                digits++;
                frac++;
            } else {
                dropped++; /* precision beyond 19 digits: leave it to strtod */
            }
        }
    }
    int exp = 0;
    if (p < end && (*p == 'e' || *p == 'E')) {
        p++;
        bool eneg = false;
        if (p < end && (*p == '+' || *p == '-'))
            eneg = *p++ == '-';
        if (p >= end || *p < '0' || *p > '9')
            return pfail(ps, PBSTRUCT_FAULT_SYNTAX, bad);
        for (; p < end && *p >= '0' && *p <= '9'; p++) {
            if (exp < 100000)
                exp = exp * 10 + (*p - '0');
        }
        if (eneg)
            exp = -exp;
    }
    double d;
    int e10 = exp - frac;
    if (dropped == 0 && digits <= 15 && e10 >= -22 && e10 <= 22) {
        d = (double)mant;
        if (mant != 0)
            d = e10 < 0 ? d / pow10[-e10] : d * pow10[e10];
        if (neg)
            d = -d;
    } else {
        /* strtod needs a NUL: a short copy on the C stack, a long one malloc'd (never the
         * arena, whose bytes are the request's budget). */
        size_t n = (size_t)(p - s);
        char small[NUMBER_BUF];
        char *txt = small;
        if (n >= sizeof(small)) {
            txt = malloc(n + 1);
            if (txt == NULL)
                return pfail(ps, PBSTRUCT_FAULT_NOMEM, ps->pos);
        }
        memcpy(txt, s, n);
        txt[n] = '\0';
        d = strtod(txt, NULL);
        if (txt != small)
            free(txt);
        if (!isfinite(d))
            return pfail(ps, PBSTRUCT_FAULT_NUMBER, ps->pos);
    }
    ps->pos += (size_t)(p - s);
    *pout = d;
    return 0;
}

/* A literal; fails at the first byte that differs. */
static int literal(struct parser *ps, const char *word, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (ps->pos + i >= ps->n || ps->s[ps->pos + i] != (unsigned char)word[i])
            return pfail(ps, PBSTRUCT_FAULT_SYNTAX, ps->pos + i);
    }
    ps->pos += n;
    return 0;
}

static int parse_object(struct parser *ps, Google__Protobuf__Struct *s, int depth);
static int parse_array(struct parser *ps, Google__Protobuf__ListValue *l, int depth);

/* v sits in a container at depth; a nested container is at depth + 1. */
static int parse_value(struct parser *ps, Google__Protobuf__Value *v, int depth)
{
    int rv;
    switch (ps->pos < ps->n ? ps->s[ps->pos] : '\0') {
    case '{': {
        if (depth + 1 > ps->max_depth)
            return pfail(ps, PBSTRUCT_FAULT_DEPTH, ps->pos);
        Google__Protobuf__Struct *s = palloc(ps, sizeof(*s));
        if (s == NULL)
            return alloc_failed(ps);
        *s = (Google__Protobuf__Struct)GOOGLE__PROTOBUF__STRUCT__INIT;
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE;
        v->struct_value = s;
        return parse_object(ps, s, depth + 1);
    }
    case '[': {
        if (depth + 1 > ps->max_depth)
            return pfail(ps, PBSTRUCT_FAULT_DEPTH, ps->pos);
        Google__Protobuf__ListValue *l = palloc(ps, sizeof(*l));
        if (l == NULL)
            return alloc_failed(ps);
        *l = (Google__Protobuf__ListValue)GOOGLE__PROTOBUF__LIST_VALUE__INIT;
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_LIST_VALUE;
        v->list_value = l;
        return parse_array(ps, l, depth + 1);
    }
    case '"':
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE;
        return parse_string_value(ps, &v->string_value);
    case 't':
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
        v->bool_value = 1;
        return literal(ps, "true", 4);
    case 'f':
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_BOOL_VALUE;
        v->bool_value = 0;
        return literal(ps, "false", 5);
    case 'n':
        v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NULL_VALUE;
        v->null_value = GOOGLE__PROTOBUF__NULL_VALUE__NULL_VALUE;
        return literal(ps, "null", 4);
    default:
        rv = parse_number(ps, &v->number_value);
        if (rv == 0)
            v->kind_case = GOOGLE__PROTOBUF__VALUE__KIND_NUMBER_VALUE;
        return rv;
    }
}

/* ps->pos is at '{'; the object is at depth. */
static int parse_object(struct parser *ps, Google__Protobuf__Struct *s, int depth)
{
    size_t base = ps->top;
    if (open_empty(ps, '}'))
        return 0;
    for (;;) {
        if (ps->pos >= ps->n || ps->s[ps->pos] != '"')
            return pfail(ps, PBSTRUCT_FAULT_SYNTAX, ps->pos);
        struct member *m = palloc(ps, sizeof(*m));
        if (m == NULL)
            return alloc_failed(ps);
        m->entry =
            (Google__Protobuf__Struct__FieldsEntry)GOOGLE__PROTOBUF__STRUCT__FIELDS_ENTRY__INIT;
        m->value = (Google__Protobuf__Value)GOOGLE__PROTOBUF__VALUE__INIT;
        m->entry.value = &m->value;
        bool nul;
        int rv = parse_string(ps, &m->entry.key, &nul);
        if (rv != 0)
            return rv;
        skip_ws(ps);
        if (ps->pos >= ps->n || ps->s[ps->pos] != ':')
            return pfail(ps, PBSTRUCT_FAULT_SYNTAX, ps->pos);
        if (nul)
            return pfail(ps, PBSTRUCT_FAULT_NUL_KEY, ps->pos);
        ps->pos++;
        skip_ws(ps);
        rv = parse_value(ps, &m->value, depth);
        if (rv != 0) {
            path_add(ps, m->entry.key, strlen(m->entry.key), 0);
            return rv;
        }
        rv = next_item(ps, &m->entry, '}');
        if (rv < 0)
            return rv;
        if (rv == 0)
            break;
    }
    void **arr = NULL;
    size_t n = 0;
    int rv = pop_array(ps, base, &arr, &n);
    s->n_fields = n;
    s->fields = (Google__Protobuf__Struct__FieldsEntry **)arr;
    return rv;
}

/* ps->pos is at '['; the array is at depth. */
static int parse_array(struct parser *ps, Google__Protobuf__ListValue *l, int depth)
{
    size_t base = ps->top;
    if (open_empty(ps, ']'))
        return 0;
    for (size_t i = 0;; i++) {
        Google__Protobuf__Value *v = palloc(ps, sizeof(*v));
        if (v == NULL)
            return alloc_failed(ps);
        *v = (Google__Protobuf__Value)GOOGLE__PROTOBUF__VALUE__INIT;
        int rv = parse_value(ps, v, depth);
        if (rv != 0) {
            path_add(ps, NULL, 0, i);
            return rv;
        }
        rv = next_item(ps, v, ']');
        if (rv < 0)
            return rv;
        if (rv == 0)
            break;
    }
    void **arr = NULL;
    size_t n = 0;
    int rv = pop_array(ps, base, &arr, &n);
    l->n_values = n;
    l->values = (Google__Protobuf__Value **)arr;
    return rv;
}

/* ---- public ---------------------------------------------------------------------------------- */

static void parser_init(struct parser *ps, pins_arena *a, const char *json, size_t len,
                        int max_depth, void **inline_stack)
{
    *ps = (struct parser){
        .s = (const unsigned char *)json,
        .n = len,
        .a = a,
        .max_depth = clamp_depth(max_depth),
        .stack = inline_stack,
        .cap = INLINE_STACK,
    };
}

static void parser_from(struct parser *ps, pins_arena *a, const pbstruct_parse *p,
                        void **inline_stack)
{
    parser_init(ps, a, p->json, p->len, p->max_depth, inline_stack);
    ps->pos = p->pos;
    ps->budget = p->budget;
    ps->budget_base = p->budget_base;
    ps->path = p->path;
}

/* Hands the outcome back to p; frees the parser's stack. */
static int parser_done(struct parser *ps, pbstruct_parse *p, int rv)
{
    if (ps->heap)
        free(ps->stack);
    if (rv != 0) {
        p->fault = ps->fault;
        p->err_pos = ps->err_pos;
        p->npath = ps->npath;
        return rv;
    }
    p->pos = ps->pos;
    p->fault = PBSTRUCT_FAULT_NONE;
    p->npath = 0;
    last_reason = PBSTRUCT_REASON_NONE;
    return 0;
}

/* The container at ps->pos (c: '{' or '['), checked for its depth. */
static int parse_container(struct parser *ps, int depth, char c, void *m)
{
    if (ps->pos >= ps->n || ps->s[ps->pos] != (unsigned char)c)
        return pfail(ps, PBSTRUCT_FAULT_SYNTAX, ps->pos);
    if (depth + 1 > ps->max_depth)
        return pfail(ps, PBSTRUCT_FAULT_DEPTH, ps->pos);
    return c == '{' ? parse_object(ps, m, depth + 1) : parse_array(ps, m, depth + 1);
}

/* The three entry points: kind '{' a Struct, '[' a ListValue, 0 a Value. */
static int parse_entry(pins_arena *a, pbstruct_parse *p, char kind, void **pout)
{
    static const Google__Protobuf__Struct struct_init = GOOGLE__PROTOBUF__STRUCT__INIT;
    static const Google__Protobuf__ListValue list_init = GOOGLE__PROTOBUF__LIST_VALUE__INIT;
    static const Google__Protobuf__Value value_init = GOOGLE__PROTOBUF__VALUE__INIT;
    const void *init = kind == '{'   ? (const void *)&struct_init
                       : kind == '[' ? (const void *)&list_init
                                     : (const void *)&value_init;
    size_t size = kind == '{'   ? sizeof(struct_init)
                  : kind == '[' ? sizeof(list_init)
                                : sizeof(value_init);
    void *inline_stack[INLINE_STACK];
    struct parser ps;
    parser_from(&ps, a, p, inline_stack);
    void *m = palloc(&ps, size);
    int rv = m != NULL ? 0 : alloc_failed(&ps);
    if (rv == 0) {
        memcpy(m, init, size);
        rv = kind != 0 ? parse_container(&ps, p->depth, kind, m) : parse_value(&ps, m, p->depth);
    }
    rv = parser_done(&ps, p, rv);
    if (rv == 0)
        *pout = m;
    return rv;
}

int pbstruct_parse_value(pins_arena *a, pbstruct_parse *p, Google__Protobuf__Value **pout)
{
    return parse_entry(a, p, 0, (void **)pout);
}

int pbstruct_parse_struct(pins_arena *a, pbstruct_parse *p, Google__Protobuf__Struct **pout)
{
    return parse_entry(a, p, '{', (void **)pout);
}

int pbstruct_parse_list(pins_arena *a, pbstruct_parse *p, Google__Protobuf__ListValue **pout)
{
    return parse_entry(a, p, '[', (void **)pout);
}

int pbstruct_from_json(pins_arena *a, const char *json, size_t len, int max_depth,
                       Google__Protobuf__Struct **pstruct)
{
    void *inline_stack[INLINE_STACK];
    struct parser ps;
    parser_init(&ps, a, json, len, max_depth, inline_stack);
    Google__Protobuf__Struct *s = NULL;
    int rv;
    skip_ws(&ps);
    if (ps.pos >= ps.n || ps.s[ps.pos] != '{') {
        rv = fail(PBSTRUCT_REASON_NOT_OBJECT);
        goto out;
    }
    s = palloc(&ps, sizeof(*s));
    if (s == NULL) {
        rv = alloc_failed(&ps);
        goto out;
    }
    *s = (Google__Protobuf__Struct)GOOGLE__PROTOBUF__STRUCT__INIT;
    rv = parse_container(&ps, 0, '{', s);
    if (rv != 0)
        goto out;
    skip_ws(&ps);
    if (ps.pos != ps.n) {
        rv = fail(PBSTRUCT_REASON_SYNTAX);
        goto out;
    }
    *pstruct = s;
    last_reason = PBSTRUCT_REASON_NONE;
out:
    if (ps.heap)
        free(ps.stack);
    /* This entry point has always answered INVALID_ARGUMENT or NOMEM: an arena over its limit is
     * out of memory here (reason NOMEM). */
    return rv == PINS_ETOO_LARGE ? PINS_ENOMEM : rv;
}

/* The writer's entry points: w's buffer is the caller's. */
static int write_with(pins_buf *b, int max_depth, int kind, const void *m)
{
    struct writer w = {.b = b, .max_depth = clamp_depth(max_depth)};
    int rv;
    if (kind == 0)
        rv = put_struct(&w, m, 1);
    else if (kind == 1)
        rv = put_list(&w, m, 1);
    else
        rv = put_value(&w, m, 0);
    free(w.scratch);
    if (rv == 0)
        last_reason = PBSTRUCT_REASON_NONE;
    return rv;
}

int pbstruct_put_struct(pins_buf *b, const Google__Protobuf__Struct *s, int max_depth)
{
    return write_with(b, max_depth, 0, s);
}

int pbstruct_put_list(pins_buf *b, const Google__Protobuf__ListValue *l, int max_depth)
{
    return write_with(b, max_depth, 1, l);
}

int pbstruct_put_value(pins_buf *b, const Google__Protobuf__Value *v, int max_depth)
{
    return write_with(b, max_depth, 2, v);
}

int pbstruct_to_json(const Google__Protobuf__Struct *s, size_t max_bytes, int max_depth,
                     char **pjson, size_t *plen)
{
    pins_buf b;
    pins_buf_init(&b, max_bytes);
    int rv = write_with(&b, max_depth, 0, s);
    if (rv == 0)
        *pjson = pins_buf_take(&b, plen);
    pins_buf_free(&b);
    return rv;
}

/* OpenSSL 3 fetches an implementation on every use of EVP_sha256(); fetching once saves most of
 * the cost of hashing a small value. The fetched method lives for the process. */
static EVP_MD *sha256;

static void fetch_sha256(void)
{
    sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
}

int pbstruct_value_hash(const char *json, size_t len, char out[17])
{
    static const char hex[] = "0123456789abcdef";
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    pthread_once(&once, fetch_sha256);
    const EVP_MD *type = sha256 != NULL ? sha256 : EVP_sha256();
    if (EVP_Digest(json, len, md, &mdlen, type, NULL) != 1 || mdlen < 8)
        return fail(PBSTRUCT_REASON_INTERNAL);
    for (int i = 0; i < 8; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[16] = '\0';
    last_reason = PBSTRUCT_REASON_NONE;
    return 0;
}

pbstruct_reason pbstruct_last_reason(void)
{
    return last_reason;
}

const char *pbstruct_reason_text(pbstruct_reason r)
{
    switch (r) {
    case PBSTRUCT_REASON_NONE:
        return "ok";
    case PBSTRUCT_REASON_TOO_LARGE:
        return "value larger than the size limit";
    case PBSTRUCT_REASON_TOO_DEEP:
        return "value nesting deeper than the limit";
    case PBSTRUCT_REASON_NOT_OBJECT:
        return "value is not a json object";
    case PBSTRUCT_REASON_SYNTAX:
        return "value is not valid json";
    case PBSTRUCT_REASON_BAD_UTF8:
        return "value has a string that is not valid utf-8";
    case PBSTRUCT_REASON_BAD_NUMBER:
        return "value has a number that is not finite";
    case PBSTRUCT_REASON_NO_KIND:
        return "value has an element with no kind set";
    case PBSTRUCT_REASON_NOMEM:
        return "out of memory";
    case PBSTRUCT_REASON_INTERNAL:
        return "internal error";
    }
    return "unknown reason";
}
