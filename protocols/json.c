/* protocols/json.c: the descriptor-driven proto3 JSON codec.
 *
 * Both directions walk ProtobufCMessageDescriptor field tables; nothing is generated per message.
 * protobuf-c 1.4 descriptors carry neither json_name nor the map_entry option, so the json name is
 * computed with protoc's rule (drop '_', capitalise the next letter) and a map field is recognised
 * by protoc's naming of its entry type: "<Owner>.<CamelField>Entry" with key = 1 and value = 2.
 *
 * The decoder is a strict RFC 8259 recursive-descent parser that converts while it parses, with no
 * intermediate tree: unknown members are validated and skipped, and the elements of an open array
 * or object are collected on one malloc'd byte stack (offsets, never pointers, because it moves)
 * and copied into the arena at their exact size when the container closes. Every container passes
 * enter(), so recursion is bounded by max_depth, itself clamped to HARD_MAX_DEPTH.
 *
 * Struct, Value and ListValue, in both directions, are common/pbstruct's: one codec for them in
 * pinsd, so that a pin's value parses and prints exactly as the store keeps it (duplicate keys:
 * the last wins). The decoder hands it the position, depth and arena budget and turns its failure
 * (place, cause, path) into this decoder's error; the encoder lets it append to the same buffer.
 * The double formatting below follows its rule. Strings are written by common/json_str.h, UTF-8 is
 * checked by common/utf8.h. Timestamps go through common/timeutil for the calendar and keep
 * nanoseconds here.
 */
#include "protocols/json.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "common/base64.h"
#include "common/buf.h"
#include "common/error.h"
#include "common/fmt.h"
#include "common/limits.h"
#include "common/json_str.h"
#include "common/pbstruct.h"
#include "common/timeutil.h"
#include "common/utf8.h"
#include "google/protobuf/struct.pb-c.h"

#define HARD_MAX_DEPTH   PBSTRUCT_MAX_DEPTH /* recursion bound of both directions */
#define NUMBER_BUF       64 /* numbers up to this long are copied on the C stack for strtod */
#define TS_MIN_SECONDS   (-62135596800LL) /* 0001-01-01T00:00:00Z */
#define TS_MAX_SECONDS   253402300799LL   /* 9999-12-31T23:59:59Z */
#define DUR_MAX_SECONDS  315576000000LL   /* 10000 years, the Duration range */
#define NANOS_PER_SECOND 1000000000

const proto_json_options proto_json_rest = {
    .proto_names = true,
    .int64_as_number = true,
    .emit_defaults = true,
    .fixed_micros = true,
};

const proto_json_options proto_json_canonical = {
    .proto_names = false,
    .int64_as_number = false,
    .emit_defaults = false,
    .fixed_micros = false,
};

/* ---- descriptors ----------------------------------------------------------------------------- */

enum wkt {
    WKT_NONE,
    WKT_STRUCT,
    WKT_VALUE,
    WKT_LIST,
    WKT_TIMESTAMP,
    WKT_DURATION,
    WKT_WRAPPER,
    WKT_EMPTY,
    WKT_FIELDMASK,
    WKT_ANY,
};

static enum wkt wkt_of(const ProtobufCMessageDescriptor *desc)
{
    static const char prefix[] = "google.protobuf.";
    static const struct {
        const char *name;
        enum wkt kind;
    } table[] = {
        {"Struct", WKT_STRUCT},       {"Value", WKT_VALUE},
        {"ListValue", WKT_LIST},      {"Timestamp", WKT_TIMESTAMP},
        {"Duration", WKT_DURATION},   {"Empty", WKT_EMPTY},
        {"FieldMask", WKT_FIELDMASK}, {"Any", WKT_ANY},
        {"DoubleValue", WKT_WRAPPER}, {"FloatValue", WKT_WRAPPER},
        {"Int64Value", WKT_WRAPPER},  {"UInt64Value", WKT_WRAPPER},
        {"Int32Value", WKT_WRAPPER},  {"UInt32Value", WKT_WRAPPER},
        {"BoolValue", WKT_WRAPPER},   {"StringValue", WKT_WRAPPER},
        {"BytesValue", WKT_WRAPPER},
    };
    const char *name = desc->name;
    if (name == NULL || strncmp(name, prefix, sizeof(prefix) - 1) != 0)
        return WKT_NONE;
    name += sizeof(prefix) - 1;
    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++) {
        if (strcmp(name, table[i].name) != 0)
            continue;
        if (table[i].kind == WKT_WRAPPER &&
            (desc->n_fields != 1 || strcmp(desc->fields[0].name, "value") != 0 ||
             desc->fields[0].label == PROTOBUF_C_LABEL_REPEATED))
            return WKT_NONE;
        return table[i].kind;
    }
    return WKT_NONE;
}

static bool is_null_enum(const ProtobufCFieldDescriptor *f)
{
    const ProtobufCEnumDescriptor *e = f->descriptor;
    return f->type == PROTOBUF_C_TYPE_ENUM && e != NULL && e->name != NULL &&
           strcmp(e->name, "google.protobuf.NullValue") == 0;
}

static bool is_value_field(const ProtobufCFieldDescriptor *f)
{
    return f->type == PROTOBUF_C_TYPE_MESSAGE && wkt_of(f->descriptor) == WKT_VALUE;
}

static const ProtobufCFieldDescriptor *field_named(const ProtobufCMessageDescriptor *desc,
                                                   const char *name)
{
    for (unsigned i = 0; i < desc->n_fields; i++) {
        if (strcmp(desc->fields[i].name, name) == 0)
            return &desc->fields[i];
    }
    return NULL;
}

/* True when key[0..n) is the json name of the proto field name (protoc's ToJsonName). */
static bool json_name_eq(const char *proto, const char *key, size_t n)
{
    size_t j = 0;
    bool up = false;
    for (const char *p = proto; *p != '\0'; p++) {
        if (*p == '_') {
            up = true;
            continue;
        }
        char c = up && *p >= 'a' && *p <= 'z' ? (char)(*p - 'a' + 'A') : *p;
        up = false;
        if (j >= n || key[j] != c)
            return false;
        j++;
    }
    return j == n;
}

/* The field named key[0..n) by its proto name or its json name, or NULL. */
static const ProtobufCFieldDescriptor *find_field(const ProtobufCMessageDescriptor *desc,
                                                  const char *key, size_t n)
{
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const char *name = desc->fields[i].name;
        if ((strlen(name) == n && memcmp(name, key, n) == 0) || json_name_eq(name, key, n))
            return &desc->fields[i];
    }
    return NULL;
}

/* A map field is a repeated message field whose type is the entry protoc generates for it:
 * "<owner>.<CamelCaseField>Entry" with exactly the fields key = 1 and value = 2. */
static bool is_map_field(const ProtobufCMessageDescriptor *owner, const ProtobufCFieldDescriptor *f)
{
    if (f->label != PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_MESSAGE)
        return false;
    const ProtobufCMessageDescriptor *e = f->descriptor;
    if (e == NULL || e->n_fields != 2 || e->fields[0].id != 1 || e->fields[1].id != 2 ||
        strcmp(e->fields[0].name, "key") != 0 || strcmp(e->fields[1].name, "value") != 0 ||
        e->fields[0].label == PROTOBUF_C_LABEL_REPEATED ||
        e->fields[1].label == PROTOBUF_C_LABEL_REPEATED)
        return false;
    size_t on = strlen(owner->name);
    if (strncmp(e->name, owner->name, on) != 0 || e->name[on] != '.')
        return false;
    const char *s = e->name + on + 1;
    bool cap = true;
    for (const char *p = f->name; *p != '\0'; p++) {
        if (*p == '_') {
            cap = true;
            continue;
        }
        char c = cap && *p >= 'a' && *p <= 'z' ? (char)(*p - 'a' + 'A') : *p;
        cap = false;
        if (*s++ != c)
            return false;
    }
    return strcmp(s, "Entry") == 0;
}

static void *member(const void *msg, unsigned offset)
{
    return (char *)msg + offset;
}

/* Bytes one element of a field of type t takes in a repeated array (protobuf-c's layout). */
static size_t elt_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return 4;
    case PROTOBUF_C_TYPE_FLOAT:
        return sizeof(float);
    case PROTOBUF_C_TYPE_ENUM:
        return sizeof(int);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return 8;
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    }
    return 0;
}

/* Whether an optional (proto2 or proto3 optional) singular field is present. */
static bool optional_present(const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    if (f->type == PROTOBUF_C_TYPE_MESSAGE || f->type == PROTOBUF_C_TYPE_STRING) {
        const void *ptr = *(const void *const *)member(m, f->offset);
        return ptr != NULL && ptr != f->default_value;
    }
    return *(const protobuf_c_boolean *)member(m, f->quantifier_offset) != 0;
}

/* Records that a singular field was set: its oneof case or its has_ flag. */
static void mark_present(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        *(uint32_t *)member(m, f->quantifier_offset) = f->id;
    else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_MESSAGE &&
             f->type != PROTOBUF_C_TYPE_STRING)
        *(protobuf_c_boolean *)member(m, f->quantifier_offset) = 1;
}

/* Returns a field to its unset state (JSON null). */
static void clear_field(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    void *p = member(m, f->offset);
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
        *(size_t *)member(m, f->quantifier_offset) = 0;
        *(void **)p = NULL;
        return;
    }
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        uint32_t *pcase = member(m, f->quantifier_offset);
        if (*pcase != f->id)
            return;
        *pcase = 0;
    } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL && f->type != PROTOBUF_C_TYPE_MESSAGE &&
               f->type != PROTOBUF_C_TYPE_STRING) {
        *(protobuf_c_boolean *)member(m, f->quantifier_offset) = 0;
    }
    if (f->type == PROTOBUF_C_TYPE_STRING)
        *(const char **)p =
            f->label == PROTOBUF_C_LABEL_OPTIONAL ? f->default_value : protobuf_c_empty_string;
    else
        memset(p, 0, elt_size(f->type));
}

/* ---- text conversions shared by both directions ---------------------------------------------- */

/* Length of the RFC 8259 number at the start of s[0..n), 0 when there is none. */
static size_t scan_number(const char *s, size_t n)
{
    size_t i = 0;
    if (i < n && s[i] == '-')
        i++;
    if (i >= n)
        return 0;
    if (s[i] == '0') {
        i++;
    } else if (s[i] >= '1' && s[i] <= '9') {
        while (i < n && s[i] >= '0' && s[i] <= '9')
            i++;
    } else {
        return 0;
    }
    if (i < n && s[i] == '.') {
        size_t j = i + 1;
        while (j < n && s[j] >= '0' && s[j] <= '9')
            j++;
        if (j == i + 1)
            return 0;
        i = j;
    }
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        size_t j = i + 1;
        if (j < n && (s[j] == '+' || s[j] == '-'))
            j++;
        size_t k = j;
        while (k < n && s[k] >= '0' && s[k] <= '9')
            k++;
        if (k == j)
            return 0;
        i = k;
    }
    return i;
}

enum numres { NUM_OK, NUM_SYNTAX, NUM_FRACTION, NUM_RANGE };

/* Reads the JSON number s[0..n) exactly as an integer: 1.0 and 1e3 are integers, 1.5 is not.
 * *pneg and *pmag get the sign and magnitude. */
static enum numres parse_integer(const char *s, size_t n, bool *pneg, uint64_t *pmag)
{
    if (n == 0 || scan_number(s, n) != n)
        return NUM_SYNTAX;
    size_t i = 0;
    bool neg = s[0] == '-';
    if (neg)
        i++;
    /* The digits of the integer and fraction parts form one sequence D; the value is
     * D * 10^(exp - nfrac). */
    size_t dstart = i, nint = 0, nfrac = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        i++;
        nint++;
    }
    size_t fstart = i + 1;
    if (i < n && s[i] == '.') {
        i++;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            i++;
            nfrac++;
        }
    }
    long long exp = 0;
    if (i < n && (s[i] == 'e' || s[i] == 'E')) {
        i++;
        bool eneg = s[i] == '-';
        if (s[i] == '+' || s[i] == '-')
            i++;
        for (; i < n; i++) {
            if (exp < 1000000)
                exp = exp * 10 + (s[i] - '0');
        }
        if (eneg)
            exp = -exp;
    }
    size_t total = nint + nfrac;
#define DIGIT(k) ((k) < nint ? s[dstart + (k)] : s[fstart + (k)-nint])
    size_t first = 0;
    while (first < total && DIGIT(first) == '0')
        first++;
    if (first == total) {
        *pneg = false;
        *pmag = 0;
        return NUM_OK;
    }
    size_t last = total - 1;
    while (DIGIT(last) == '0')
        last--;
    long long e = exp - (long long)nfrac + (long long)(total - 1 - last);
    if (e < 0)
        return NUM_FRACTION;
    if ((long long)(last - first + 1) + e > 20)
        return NUM_RANGE;
    uint64_t mag = 0;
    for (size_t k = first; k <= last; k++) {
        unsigned dg = (unsigned)(DIGIT(k) - '0');
        if (mag > (UINT64_MAX - dg) / 10)
            return NUM_RANGE;
        mag = mag * 10 + dg;
    }
#undef DIGIT
    for (long long k = 0; k < e; k++) {
        if (mag > UINT64_MAX / 10)
            return NUM_RANGE;
        mag *= 10;
    }
    *pneg = neg;
    *pmag = mag;
    return NUM_OK;
}

/* Reads the JSON number s[0..n) as a double; NUM_RANGE when it overflows. */
static enum numres parse_double(const char *s, size_t n, double *pd)
{
    if (n == 0 || scan_number(s, n) != n)
        return NUM_SYNTAX;
    char small[NUMBER_BUF];
    char *buf = small;
    if (n >= sizeof(small)) {
        buf = malloc(n + 1);
        if (buf == NULL)
            return NUM_RANGE;
    }
    memcpy(buf, s, n);
    buf[n] = '\0';
    errno = 0;
    double d = strtod(buf, NULL);
    bool overflow = errno == ERANGE && isinf(d);
    if (buf != small)
        free(buf);
    if (overflow)
        return NUM_RANGE;
    *pd = d;
    return NUM_OK;
}

/* Parses an RFC 3339 timestamp into seconds and nanoseconds. */
static int parse_timestamp(const char *s, size_t n, int64_t *psec, int32_t *pnanos)
{
    int64_t us;
    if (n < 20 || pins_time_parse_us(s, n, &us) != 0) /* also refuses 31 April, 30 February */
        return -1;
    int32_t nanos = 0;
    if (s[19] == '.') {
        int scale = 100000000;
        for (size_t i = 20; i < n && s[i] >= '0' && s[i] <= '9'; i++) {
            nanos += (s[i] - '0') * scale;
            scale /= 10;
        }
    }
    int64_t sec = us >= 0 ? us / 1000000 : -((-us + 999999) / 1000000);
    if (sec < TS_MIN_SECONDS || sec > TS_MAX_SECONDS)
        return -1;
    *psec = sec;
    *pnanos = nanos;
    return 0;
}

/* Parses a Duration's JSON form, "-1.5s". */
static int parse_duration(const char *s, size_t n, int64_t *psec, int32_t *pnanos)
{
    size_t i = 0;
    bool neg = n > 0 && s[0] == '-';
    if (neg)
        i++;
    size_t start = i;
    int64_t sec = 0;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        if (sec > DUR_MAX_SECONDS)
            return -1;
        sec = sec * 10 + (s[i] - '0');
        i++;
    }
    if (i == start || sec > DUR_MAX_SECONDS)
        return -1;
    int32_t nanos = 0;
    if (i < n && s[i] == '.') {
        i++;
        size_t fstart = i;
        int scale = 100000000;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            nanos += (s[i] - '0') * scale;
            scale /= 10;
            i++;
        }
        if (i == fstart || i - fstart > 9)
            return -1;
    }
    if (i + 1 != n || s[i] != 's')
        return -1;
    *psec = neg ? -sec : sec;
    *pnanos = neg ? -nanos : nanos;
    return 0;
}

/* ---- encoder --------------------------------------------------------------------------------- */

struct enc {
    pins_buf *b;
    const proto_json_options *o;
    int depth;
};

static int put(struct enc *e, const char *s, size_t n)
{
    return pins_buf_add(e->b, s, n);
}

static int put_cstr(struct enc *e, const char *s)
{
    return put(e, s, strlen(s));
}

/* Writes s[0..n) (n: PINS_JSON_STR_NUL for a C string) as a JSON string; PINS_EINTERNAL when it
 * is not valid UTF-8. */
static int put_str(struct enc *e, const char *str, size_t n)
{
    int rv = pins_json_str_put_strict(e->b, str, n);
    return rv == PINS_EINVALID_ARGUMENT ? PINS_EINTERNAL : rv;
}

/* Writes the digits in tmp[1..end), in quotes when quoted (tmp has room for both). */
static int put_digits(struct enc *e, char *tmp, char *end, bool quoted)
{
    if (!quoted)
        return put(e, tmp + 1, (size_t)(end - tmp - 1));
    tmp[0] = '"';
    *end++ = '"';
    return put(e, tmp, (size_t)(end - tmp));
}

static int put_int(struct enc *e, int64_t v, bool quoted)
{
    char tmp[PINS_FMT_INT_MAX + 2];
    return put_digits(e, tmp, pins_fmt_i64(tmp + 1, v), quoted);
}

static int put_uint(struct enc *e, uint64_t v, bool quoted)
{
    char tmp[PINS_FMT_INT_MAX + 2];
    return put_digits(e, tmp, pins_fmt_u64(tmp + 1, v), quoted);
}

/* A double as pbstruct prints it: an integral value up to 2^53 as an integer, anything else in
 * the shortest of %.15g, %.16g, %.17g that reads back. Non-finite values are the strings of
 * proto3 JSON. */
static int put_double(struct enc *e, double d)
{
    if (isnan(d))
        return put_cstr(e, "\"NaN\"");
    if (isinf(d))
        return put_cstr(e, d > 0 ? "\"Infinity\"" : "\"-Infinity\"");
    if (fabs(d) <= 9007199254740992.0 && d == (double)(int64_t)d)
        return put_int(e, (int64_t)d, false);
    char tmp[40];
    int n = 0;
    for (int prec = 15; prec <= 17; prec++) {
        n = snprintf(tmp, sizeof(tmp), "%.*g", prec, d);
        if (prec == 17 || strtod(tmp, NULL) == d)
            break;
    }
    return put(e, tmp, (size_t)n);
}

/* A float in the fewest significant digits (6 to 9) that read back to the same float. */
static int put_float(struct enc *e, float f)
{
    if (!isfinite(f) || (fabsf(f) <= 16777216.0f && f == (float)(int32_t)f))
        return put_double(e, (double)f);
    char tmp[40];
    int n = 0;
    for (int prec = 6; prec <= 9; prec++) {
        n = snprintf(tmp, sizeof(tmp), "%.*g", prec, (double)f);
        if (prec == 9 || strtof(tmp, NULL) == f)
            break;
    }
    return put(e, tmp, (size_t)n);
}

/* Standard base64 with padding (common/base64.h), in chunks of whole quanta on the stack. */
static int put_base64(struct enc *e, const uint8_t *p, size_t n)
{
    char chunk[4 * 64 + 1];
    int rv = put(e, "\"", 1);
    for (size_t i = 0; rv == 0 && i < n; i += 3 * 64) {
        size_t k = n - i < 3 * 64 ? n - i : 3 * 64;
        rv = put(e, chunk, pins_base64_encode(p + i, k, PINS_BASE64_PAD, chunk));
    }
    return rv != 0 ? rv : put(e, "\"", 1);
}

/* The fraction of a second (0 <= nanos < 10^9) at buf (11 bytes of room): exactly 6 digits
 * (fixed), or 0, 3, 6 or 9 digits (canonical). Returns the length. */
static int fraction(char *buf, int32_t nanos, bool fixed)
{
    if (!fixed && nanos == 0)
        return 0;
    buf[0] = '.';
    if (fixed || (nanos % 1000 == 0 && nanos % 1000000 != 0))
        return (int)(pins_fmt_digits(buf + 1, (uint64_t)(nanos / 1000), 6) - buf);
    if (nanos % 1000000 == 0)
        return (int)(pins_fmt_digits(buf + 1, (uint64_t)(nanos / 1000000), 3) - buf);
    return (int)(pins_fmt_digits(buf + 1, (uint64_t)nanos, 9) - buf);
}

/* Reads the seconds (int64) and nanos (int32) fields of a Timestamp or Duration. */
static int seconds_nanos(const ProtobufCMessage *m, int64_t *psec, int32_t *pnanos)
{
    const ProtobufCFieldDescriptor *fs = field_named(m->descriptor, "seconds");
    const ProtobufCFieldDescriptor *fn = field_named(m->descriptor, "nanos");
    if (fs == NULL || fn == NULL || elt_size(fs->type) != 8 || elt_size(fn->type) != 4)
        return PINS_EINTERNAL;
    *psec = *(const int64_t *)member(m, fs->offset);
    *pnanos = *(const int32_t *)member(m, fn->offset);
    return 0;
}

static int put_timestamp(struct enc *e, const ProtobufCMessage *m)
{
    int64_t sec;
    int32_t nanos;
    int rv = seconds_nanos(m, &sec, &nanos);
    if (rv != 0)
        return rv;
    if (sec < TS_MIN_SECONDS || sec > TS_MAX_SECONDS || nanos < 0 || nanos >= NANOS_PER_SECOND)
        return PINS_EINTERNAL;
    char buf[PINS_TIME_RFC3339_LEN + 16];
    pins_time_format_us(sec * 1000000, buf + 1);
    buf[0] = '"';
    size_t n = 20; /* the quote and "YYYY-MM-DDTHH:MM:SS" */
    n += (size_t)fraction(buf + n, nanos, e->o->fixed_micros);
    buf[n++] = 'Z';
    buf[n++] = '"';
    return put(e, buf, n);
}

static int put_duration(struct enc *e, const ProtobufCMessage *m)
{
    int64_t sec;
    int32_t nanos;
    int rv = seconds_nanos(m, &sec, &nanos);
    if (rv != 0)
        return rv;
    if (sec < -DUR_MAX_SECONDS || sec > DUR_MAX_SECONDS || nanos <= -NANOS_PER_SECOND ||
        nanos >= NANOS_PER_SECOND || (sec > 0 && nanos < 0) || (sec < 0 && nanos > 0))
        return PINS_EINTERNAL;
    bool neg = sec < 0 || nanos < 0;
    char buf[48];
    char *p = buf;
    *p++ = '"';
    if (neg)
        *p++ = '-';
    p = pins_fmt_u64(p, sec < 0 ? 0 - (uint64_t)sec : (uint64_t)sec);
    int n = (int)(p - buf);
    n += fraction(buf + n, nanos < 0 ? -nanos : nanos, false);
    buf[n++] = 's';
    buf[n++] = '"';
    return put(e, buf, (size_t)n);
}

/* FieldMask: the paths in lowerCamelCase joined by commas; a path that would not convert back
 * (an upper-case letter, or '_' not followed by a lower-case letter) has no JSON form. */
static int put_fieldmask(struct enc *e, const ProtobufCMessage *m)
{
    const ProtobufCFieldDescriptor *f = field_named(m->descriptor, "paths");
    if (f == NULL || f->label != PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_STRING)
        return PINS_EINTERNAL;
    size_t n = *(const size_t *)member(m, f->quantifier_offset);
    char *const *paths = *(char *const *const *)member(m, f->offset);
    int rv = put(e, "\"", 1);
    for (size_t i = 0; rv == 0 && i < n; i++) {
        if (i > 0)
            rv = put(e, ",", 1);
        for (const char *p = paths[i] != NULL ? paths[i] : ""; rv == 0 && *p != '\0'; p++) {
            char c = *p;
            if (c == '_') {
                if (p[1] < 'a' || p[1] > 'z')
                    return PINS_EINTERNAL;
                c = (char)(*++p - 'a' + 'A');
            } else if ((c >= 'A' && c <= 'Z') || c == '"' || c == '\\' || c == ',' ||
                       (unsigned char)c < 0x20 || (unsigned char)c >= 0x80) {
                return PINS_EINTERNAL;
            }
            rv = put(e, &c, 1);
        }
    }
    return rv != 0 ? rv : put(e, "\"", 1);
}

/* A Struct, Value or ListValue (k), written by the one codec into the same buffer. Its own
 * nesting is bounded by PBSTRUCT_MAX_DEPTH from here on. */
static int put_pbstruct(struct enc *e, enum wkt k, const ProtobufCMessage *m)
{
    int rv;
    if (k == WKT_STRUCT)
        rv = pbstruct_put_struct(e->b, (const Google__Protobuf__Struct *)m, PBSTRUCT_MAX_DEPTH);
    else if (k == WKT_LIST)
        rv = pbstruct_put_list(e->b, (const Google__Protobuf__ListValue *)m, PBSTRUCT_MAX_DEPTH);
    else
        rv = pbstruct_put_value(e->b, (const Google__Protobuf__Value *)m, PBSTRUCT_MAX_DEPTH);
    if (rv == 0 || rv == PINS_ENOMEM)
        return rv;
    return pbstruct_last_reason() == PBSTRUCT_REASON_TOO_LARGE ? PINS_ETOO_LARGE : PINS_EINTERNAL;
}

static int put_message(struct enc *e, const ProtobufCMessage *m);

/* One of the eight integer types at p, in quotes when quote32 (32-bit types) or quote64 (64-bit
 * types) says so (proto3 JSON quotes 64-bit integers, and every map key). Returns as put, or
 * PINS_EINTERNAL for any other type. */
static int put_integer(struct enc *e, ProtobufCType t, const void *p, bool quote32, bool quote64)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return put_int(e, *(const int32_t *)p, quote32);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return put_uint(e, *(const uint32_t *)p, quote32);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        return put_int(e, *(const int64_t *)p, quote64);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return put_uint(e, *(const uint64_t *)p, quote64);
    default:
        return PINS_EINTERNAL;
    }
}

/* One value of field f's type stored at p (a singular field, an array element, a map key or
 * value). */
static int put_elem(struct enc *e, const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return put_integer(e, f->type, p, false, !e->o->int64_as_number);
    case PROTOBUF_C_TYPE_FLOAT:
        return put_float(e, *(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return put_double(e, *(const double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        return *(const protobuf_c_boolean *)p ? put(e, "true", 4) : put(e, "false", 5);
    case PROTOBUF_C_TYPE_ENUM: {
        int v = *(const int *)p;
        if (is_null_enum(f))
            return put(e, "null", 4);
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        if (ev == NULL)
            return put_int(e, v, false);
        return put_str(e, ev->name, PINS_JSON_STR_NUL);
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)p;
        return s != NULL ? put_str(e, s, PINS_JSON_STR_NUL) : put(e, "\"\"", 2);
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *bd = p;
        return put_base64(e, bd->data, bd->len);
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)p;
        return sub != NULL ? put_message(e, sub) : put(e, "null", 4);
    }
    }
    return PINS_EINTERNAL;
}

/* A map key as a JSON object key: strings as they are, numbers and bools in quotes. */
static int put_map_key(struct enc *e, const ProtobufCFieldDescriptor *kf, const void *p)
{
    switch (kf->type) {
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)p;
        return put_str(e, s != NULL ? s : "", PINS_JSON_STR_NUL);
    }
    case PROTOBUF_C_TYPE_BOOL:
        return *(const protobuf_c_boolean *)p ? put(e, "\"true\"", 6) : put(e, "\"false\"", 7);
    default:
        return put_integer(e, kf->type, p, true, true);
    }
}

static int put_name(struct enc *e, const char *name, bool *pfirst)
{
    int rv = *pfirst ? 0 : put(e, ",", 1);
    *pfirst = false;
    if (rv == 0)
        rv = put(e, "\"", 1);
    if (e->o->proto_names) {
        if (rv == 0)
            rv = put_cstr(e, name);
    } else {
        bool up = false;
        for (const char *p = name; rv == 0 && *p != '\0'; p++) {
            if (*p == '_') {
                up = true;
                continue;
            }
            char c = up && *p >= 'a' && *p <= 'z' ? (char)(*p - 'a' + 'A') : *p;
            up = false;
            rv = put(e, &c, 1);
        }
    }
    return rv != 0 ? rv : put(e, "\":", 2);
}

static int put_repeated(struct enc *e, const ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    size_t n = *(const size_t *)member(m, f->quantifier_offset);
    const char *arr = *(const char *const *)member(m, f->offset);
    if (is_map_field(m->descriptor, f)) {
        const ProtobufCMessageDescriptor *ed = f->descriptor;
        int rv = put(e, "{", 1);
        for (size_t i = 0; rv == 0 && i < n; i++) {
            const ProtobufCMessage *entry = ((const ProtobufCMessage *const *)(const void *)arr)[i];
            if (entry == NULL)
                return PINS_EINTERNAL;
            if (i > 0)
                rv = put(e, ",", 1);
            if (rv == 0)
                rv = put_map_key(e, &ed->fields[0], member(entry, ed->fields[0].offset));
            if (rv == 0)
                rv = put(e, ":", 1);
            if (rv == 0)
                rv = put_elem(e, &ed->fields[1], member(entry, ed->fields[1].offset));
        }
        return rv != 0 ? rv : put(e, "}", 1);
    }
    size_t esz = elt_size(f->type);
    int rv = put(e, "[", 1);
    for (size_t i = 0; rv == 0 && i < n; i++) {
        if (i > 0)
            rv = put(e, ",", 1);
        if (rv == 0)
            rv = put_elem(e, f, arr + i * esz);
    }
    return rv != 0 ? rv : put(e, "]", 1);
}

/* True when a proto3 singular scalar holds its default (and so is omitted in canonical JSON). */
static bool is_default(const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_FLOAT: {
        float v = *(const float *)p;
        return v == 0 && !signbit(v);
    }
    case PROTOBUF_C_TYPE_DOUBLE: {
        double v = *(const double *)p;
        return v == 0 && !signbit(v);
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)p;
        return s == NULL || s[0] == '\0';
    }
    case PROTOBUF_C_TYPE_BYTES:
        return ((const ProtobufCBinaryData *)p)->len == 0;
    case PROTOBUF_C_TYPE_MESSAGE:
        return *(const void *const *)p == NULL;
    default: {
        static const unsigned char zero[8];
        return memcmp(p, zero, elt_size(f->type)) == 0;
    }
    }
}

static int put_object(struct enc *e, const ProtobufCMessage *m)
{
    const ProtobufCMessageDescriptor *desc = m->descriptor;
    bool emit = e->o->emit_defaults, first = true;
    int rv = put(e, "{", 1);
    for (unsigned i = 0; rv == 0 && i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        const void *p = member(m, f->offset);
        if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            if (!emit && *(const size_t *)member(m, f->quantifier_offset) == 0)
                continue;
            rv = put_name(e, f->name, &first);
            if (rv == 0)
                rv = put_repeated(e, m, f);
            continue;
        }
        bool present;
        if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
            if (*(const uint32_t *)member(m, f->quantifier_offset) != f->id)
                continue; /* an unset member of a oneof is never emitted */
            present = true;
        } else if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
            present = *(const void *const *)p != NULL;
        } else if (f->label == PROTOBUF_C_LABEL_OPTIONAL) {
            present = optional_present(m, f);
        } else {
            present = f->label == PROTOBUF_C_LABEL_REQUIRED || !is_default(f, p) || emit;
        }
        if (!present && !emit)
            continue;
        rv = put_name(e, f->name, &first);
        if (rv == 0)
            rv = present ? put_elem(e, f, p) : put(e, "null", 4);
    }
    return rv != 0 ? rv : put(e, "}", 1);
}

static int put_message(struct enc *e, const ProtobufCMessage *m)
{
    if (m->descriptor == NULL || ++e->depth > HARD_MAX_DEPTH)
        return PINS_EINTERNAL;
    int rv;
    switch (wkt_of(m->descriptor)) {
    case WKT_STRUCT:
    case WKT_VALUE:
    case WKT_LIST:
        rv = put_pbstruct(e, wkt_of(m->descriptor), m);
        break;
    case WKT_TIMESTAMP:
        rv = put_timestamp(e, m);
        break;
    case WKT_DURATION:
        rv = put_duration(e, m);
        break;
    case WKT_FIELDMASK:
        rv = put_fieldmask(e, m);
        break;
    case WKT_WRAPPER: {
        const ProtobufCFieldDescriptor *f = &m->descriptor->fields[0];
        rv = put_elem(e, f, member(m, f->offset));
        break;
    }
    case WKT_ANY:
        rv = PINS_EINTERNAL;
        break;
    default:
        rv = put_object(e, m);
        break;
    }
    e->depth--;
    return rv;
}

int proto_json_encode(const ProtobufCMessage *msg, const proto_json_options *opt, pins_buf *out)
{
    if (msg == NULL || opt == NULL)
        return PINS_EINTERNAL;
    struct enc e = {.b = out, .o = opt, .depth = 0};
    size_t len0 = pins_buf_len(out);
    int rv = put_message(&e, msg);
    if (rv != 0)
        pins_buf_setlen(out, len0);
    return rv;
}

/* ---- decoder --------------------------------------------------------------------------------- */

struct dec {
    const char *s;
    size_t n;
    size_t pos;
    pins_arena *a;
    size_t base;   /* pins_arena_used(a) when decoding began */
    size_t budget; /* at most this many arena bytes for the decode (0: the arena's limit) */
    int max_depth;
    int depth;
    unsigned char *stk; /* elements of the open containers; see push() */
    size_t stk_len;
    size_t stk_cap;
    char path[sizeof(((proto_json_error *)0)->path)];
    size_t plen;
    bool failed;
    proto_json_error err;
};

enum strmode { STR_SKIP, STR_VIEW, STR_COPY };

/* Records the first failure and returns code. */
__attribute__((format(printf, 4, 5))) static int fail(struct dec *d, int code, bool type_error,
                                                      const char *fmt, ...)
{
    if (d->failed)
        return code;
    d->failed = true;
    memcpy(d->err.path, d->path, d->plen + 1);
    d->err.type_error = type_error;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(d->err.msg, sizeof(d->err.msg), fmt, ap);
    va_end(ap);
    return code;
}

static int fail_value(struct dec *d, const char *what)
{
    return fail(d, PINS_EMALFORMED, false, "%s", what);
}

/* The arena refused an allocation of size bytes: over its limit, or out of memory. */
static int fail_nomem(struct dec *d, size_t size)
{
    size_t limit = pins_arena_limit(d->a), used = pins_arena_used(d->a);
    if (limit != 0 && (size >= limit || limit - size < used + 16))
        return fail(d, PINS_ETOO_LARGE, false, "request too large");
    return fail(d, PINS_ENOMEM, false, "out of memory");
}

static int syntax(struct dec *d)
{
    if (d->pos >= d->n)
        return fail(d, PINS_EMALFORMED, true, "invalid json: unexpected end of input");
    unsigned char c = (unsigned char)d->s[d->pos];
    if (c > 0x20 && c < 0x7f && c != '\'')
        return fail(d, PINS_EMALFORMED, true,
                    "invalid json: unexpected character '%c' at offset %zu", c, d->pos);
    return fail(d, PINS_EMALFORMED, true, "invalid json: unexpected byte 0x%02x at offset %zu", c,
                d->pos);
}

/* The value at the current position has the wrong JSON type (or is no JSON value at all). */
static int fail_type(struct dec *d, const char *expected)
{
    char c = d->pos < d->n ? d->s[d->pos] : '\0';
    if (strchr("{[\"tfn-0123456789", c) == NULL || c == '\0')
        return syntax(d);
    if (!d->failed)
        d->err.expected = expected;
    return fail(d, PINS_EMALFORMED, true, "expected %s", expected);
}

static size_t path_append(struct dec *d, const char *s, size_t n, bool dot)
{
    size_t old = d->plen, room = sizeof(d->path) - 1;
    if (dot && d->plen > 0 && d->plen < room)
        d->path[d->plen++] = '.';
    size_t k = n < room - d->plen ? n : room - d->plen;
    if (k < n) {
        while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80)
            k--; /* cut at a character boundary */
    }
    memcpy(d->path + d->plen, s, k);
    d->plen += k;
    d->path[d->plen] = '\0';
    return old;
}

static size_t path_push(struct dec *d, const char *s, size_t n)
{
    return path_append(d, s, n, true);
}

static size_t path_index(struct dec *d, size_t i)
{
    char tmp[32];
    int n = snprintf(tmp, sizeof(tmp), "[%zu]", i);
    return path_append(d, tmp, (size_t)n, false);
}

static void path_pop(struct dec *d, size_t old)
{
    d->plen = old;
    d->path[old] = '\0';
}

static int alloc(struct dec *d, size_t n, void **pp)
{
    if (d->budget != 0) {
        size_t spent = pins_arena_used(d->a) - d->base;
        if (n > d->budget || spent > d->budget - n)
            return fail(d, PINS_ETOO_LARGE, false, "request too large");
    }
    void *p = pins_arena_alloc(d->a, n != 0 ? n : 1);
    if (p == NULL)
        return fail_nomem(d, n);
    *pp = p;
    return 0;
}

static int new_message(struct dec *d, const ProtobufCMessageDescriptor *desc, ProtobufCMessage **pm)
{
    void *m = NULL;
    int rv = alloc(d, desc->sizeof_message, &m);
    if (rv != 0)
        return rv;
    protobuf_c_message_init(desc, m);
    *pm = m;
    return 0;
}

/* Pushes n bytes onto the element stack; the stack is bounded by the arena's limit too. */
static int push(struct dec *d, const void *data, size_t n)
{
    if (d->stk_cap - d->stk_len < n) {
        size_t cap = d->stk_cap != 0 ? d->stk_cap : 256;
        while (cap - d->stk_len < n)
            cap *= 2;
        size_t limit = d->budget != 0 ? d->budget : pins_arena_limit(d->a);
        if (limit != 0 && cap / 2 > limit)
            return fail(d, PINS_ETOO_LARGE, false, "request too large");
        unsigned char *ns = realloc(d->stk, cap);
        if (ns == NULL)
            return fail(d, PINS_ENOMEM, false, "out of memory");
        d->stk = ns;
        d->stk_cap = cap;
    }
    memcpy(d->stk + d->stk_len, data, n);
    d->stk_len += n;
    return 0;
}

/* Moves the stack above base into a new arena array; *pn gets the element count. */
static int pop_array(struct dec *d, size_t base, size_t esz, void **parr, size_t *pn)
{
    size_t bytes = d->stk_len - base;
    void *arr = NULL;
    if (bytes > 0) {
        int rv = alloc(d, bytes, &arr);
        if (rv != 0)
            return rv;
        memcpy(arr, d->stk + base, bytes);
    }
    d->stk_len = base;
    *parr = arr;
    *pn = bytes / esz;
    return 0;
}

static void skip_ws(struct dec *d)
{
    while (d->pos < d->n) {
        char c = d->s[d->pos];
        if (c != ' ' && c != '\t' && c != '\n' && c != '\r')
            break;
        d->pos++;
    }
}

static char peek(struct dec *d)
{
    skip_ws(d);
    return d->pos < d->n ? d->s[d->pos] : '\0';
}

static int enter(struct dec *d)
{
    if (++d->depth > d->max_depth)
        return fail(d, PINS_EMALFORMED, false, "nesting deeper than %d", d->max_depth);
    return 0;
}

static int hex4(const char *s, unsigned *pv)
{
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        char c = s[i];
        unsigned h;
        if (c >= '0' && c <= '9')
            h = (unsigned)(c - '0');
        else if (c >= 'a' && c <= 'f')
            h = (unsigned)(c - 'a' + 10);
        else if (c >= 'A' && c <= 'F')
            h = (unsigned)(c - 'A' + 10);
        else
            return -1;
        v = v << 4 | h;
    }
    *pv = v;
    return 0;
}

/* Decodes the escapes of the string body s[i..end) into out (NULL: validate only); returns the
 * decoded length or -1 with d->pos at the bad escape. *pnul is set when it holds \u0000. */
static long unescape(struct dec *d, size_t i, size_t end, char *out, bool *pnul)
{
    const char *s = d->s;
    size_t o = 0;
    while (i < end) {
        char c = s[i];
        if (c != '\\') {
            if (out != NULL)
                out[o] = c;
            o++;
            i++;
            continue;
        }
        char x = s[i + 1];
        const char *simple = strchr("\"\\/bfnrt", x);
        if (x != '\0' && simple != NULL) {
            if (out != NULL)
                out[o] = "\"\\/\b\f\n\r\t"[simple - "\"\\/bfnrt"];
            o++;
            i += 2;
            continue;
        }
        unsigned cp, lo;
        if (x != 'u' || end - i < 6 || hex4(s + i + 2, &cp) != 0) {
            d->pos = i;
            return -1;
        }
        size_t len = 6;
        if (cp >= 0xDC00 && cp <= 0xDFFF) {
            d->pos = i;
            return -1;
        }
        if (cp >= 0xD800 && cp <= 0xDBFF) {
            if (end - i < 12 || s[i + 6] != '\\' || s[i + 7] != 'u' || hex4(s + i + 8, &lo) != 0 ||
                lo < 0xDC00 || lo > 0xDFFF) {
                d->pos = i;
                return -1;
            }
            cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
            len = 12;
        }
        if (cp == 0)
            *pnul = true;
        unsigned char u[4];
        size_t k;
        if (cp < 0x80) {
            u[0] = (unsigned char)cp;
            k = 1;
        } else if (cp < 0x800) {
            u[0] = (unsigned char)(0xC0 | cp >> 6);
            u[1] = (unsigned char)(0x80 | (cp & 0x3F));
            k = 2;
        } else if (cp < 0x10000) {
            u[0] = (unsigned char)(0xE0 | cp >> 12);
            u[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
            u[2] = (unsigned char)(0x80 | (cp & 0x3F));
            k = 3;
        } else {
            u[0] = (unsigned char)(0xF0 | cp >> 18);
            u[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
            u[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
            u[3] = (unsigned char)(0x80 | (cp & 0x3F));
            k = 4;
        }
        if (out != NULL)
            memcpy(out + o, u, k);
        o += k;
        i += len;
    }
    return (long)o;
}

/* Reads the string token at the current position. STR_SKIP validates only; STR_VIEW gives the
 * content without a guaranteed NUL (pointing into the input when it has no escapes); STR_COPY
 * gives a NUL-terminated copy in the arena. *pnul: the content holds \u0000. */
static int read_string(struct dec *d, enum strmode mode, const char **ps, size_t *pn, bool *pnul)
{
    const unsigned char *s = (const unsigned char *)d->s;
    size_t start = d->pos + 1, i = start;
    bool escapes = false;
    *pnul = false;
    for (;;) {
        if (i >= d->n) {
            d->pos = i;
            return syntax(d);
        }
        unsigned c = s[i];
        if (c == '"')
            break;
        if (c == '\\') {
            escapes = true;
            i += 2;
            if (i > d->n) {
                d->pos = d->n;
                return syntax(d);
            }
            continue;
        }
        if (c < 0x20) {
            d->pos = i;
            return fail(d, PINS_EMALFORMED, true,
                        "invalid json: control character in string at offset %zu", i);
        }
        if (c >= 0x80) {
            size_t k = pins_utf8_seq(s + i, d->n - i);
            if (k == 0) {
                d->pos = i;
                return fail(d, PINS_EMALFORMED, true,
                            "invalid json: invalid utf-8 in string at offset %zu", i);
            }
            i += k;
            continue;
        }
        i++;
    }
    size_t end = i;
    if (!escapes) {
        d->pos = end + 1;
        if (mode == STR_COPY) {
            char *copy = NULL;
            int rv = alloc(d, end - start + 1, (void **)&copy);
            if (rv != 0)
                return rv;
            memcpy(copy, d->s + start, end - start);
            copy[end - start] = '\0';
            *ps = copy;
        } else {
            *ps = d->s + start;
        }
        *pn = end - start;
        return 0;
    }
    char *out = NULL;
    if (mode != STR_SKIP) {
        int rv = alloc(d, end - start + 1, (void **)&out);
        if (rv != 0)
            return rv;
    }
    long len = unescape(d, start, end, out, pnul);
    if (len < 0)
        return fail(d, PINS_EMALFORMED, true,
                    "invalid json: invalid escape in string at offset %zu", d->pos);
    if (out != NULL)
        out[len] = '\0';
    d->pos = end + 1;
    *ps = out != NULL ? out : d->s + start;
    *pn = (size_t)len;
    return 0;
}

static int read_number(struct dec *d, const char **ps, size_t *pn)
{
    size_t len = d->pos < d->n ? scan_number(d->s + d->pos, d->n - d->pos) : 0;
    if (len == 0) {
        if (d->pos < d->n && d->s[d->pos] == '-')
            d->pos++;
        return syntax(d);
    }
    *ps = d->s + d->pos;
    *pn = len;
    d->pos += len;
    return 0;
}

static int read_literal(struct dec *d, const char *lit)
{
    size_t n = strlen(lit);
    for (size_t i = 0; i < n; i++) {
        if (d->pos >= d->n || d->s[d->pos] != lit[i])
            return syntax(d);
        d->pos++;
    }
    return 0;
}

/* Object iteration: call with *pi = 0 at '{'; each call positions at the next member's value and
 * gives its key, or sets *pmore false after the closing '}'. */
static int obj_next(struct dec *d, enum strmode mode, size_t *pi, bool *pmore, const char **pkey,
                    size_t *pklen, bool *pnul)
{
    int rv;
    if (*pi == 0) {
        rv = enter(d);
        if (rv != 0)
            return rv;
        d->pos++; /* '{' */
    }
    char c = peek(d);
    if (c == '}' || (*pi > 0 && c == ',')) {
        d->pos++;
        if (c == '}') {
            d->depth--;
            *pmore = false;
            return 0;
        }
        c = peek(d);
    } else if (*pi > 0) {
        return syntax(d);
    }
    if (c != '"')
        return syntax(d);
    rv = read_string(d, mode, pkey, pklen, pnul);
    if (rv != 0)
        return rv;
    if (peek(d) != ':')
        return syntax(d);
    d->pos++;
    skip_ws(d);
    (*pi)++;
    *pmore = true;
    return 0;
}

/* Array iteration, as obj_next. */
static int arr_next(struct dec *d, size_t *pi, bool *pmore)
{
    if (*pi == 0) {
        int rv = enter(d);
        if (rv != 0)
            return rv;
        d->pos++; /* '[' */
    }
    char c = peek(d);
    if (c == ']' || (*pi > 0 && c == ',')) {
        d->pos++;
        if (c == ']') {
            d->depth--;
            *pmore = false;
            return 0;
        }
        skip_ws(d);
    } else if (*pi > 0) {
        return syntax(d);
    }
    (*pi)++;
    *pmore = true;
    return 0;
}

/* Validates and skips one JSON value (an unknown member's). */
static int skip_value(struct dec *d)
{
    const char *s;
    size_t n, i = 0;
    bool more = true, nul;
    int rv = 0;
    switch (peek(d)) {
    case '{':
        while (rv == 0) {
            rv = obj_next(d, STR_SKIP, &i, &more, &s, &n, &nul);
            if (rv != 0 || !more)
                break;
            rv = skip_value(d);
        }
        return rv;
    case '[':
        while (rv == 0) {
            rv = arr_next(d, &i, &more);
            if (rv != 0 || !more)
                break;
            rv = skip_value(d);
        }
        return rv;
    case '"':
        return read_string(d, STR_SKIP, &s, &n, &nul);
    case 't':
        return read_literal(d, "true");
    case 'f':
        return read_literal(d, "false");
    case 'n':
        return read_literal(d, "null");
    default:
        return read_number(d, &s, &n);
    }
}

/* -- conversions of one text value to a field's type (JSON strings and set_field text) -------- */

static int conv_int(struct dec *d, const ProtobufCFieldDescriptor *f, const char *s, size_t n,
                    void *dst)
{
    bool neg = false;
    uint64_t mag = 0;
    enum numres r = parse_integer(s, n, &neg, &mag);
    if (r == NUM_SYNTAX)
        return fail_value(d, "invalid number");
    if (r == NUM_FRACTION)
        return fail_value(d, "expected an integer, not a fraction");
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        if (r == NUM_RANGE || mag > (neg ? 2147483648u : 2147483647u))
            return fail_value(d, "value out of range for int32");
        *(int32_t *)dst = neg ? (int32_t)(-(int64_t)mag) : (int32_t)mag;
        return 0;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        if (r == NUM_RANGE || (neg && mag != 0) || mag > UINT32_MAX)
            return fail_value(d, "value out of range for uint32");
        *(uint32_t *)dst = (uint32_t)mag;
        return 0;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        if (r == NUM_RANGE || mag > (neg ? (uint64_t)INT64_MAX + 1 : (uint64_t)INT64_MAX))
            return fail_value(d, "value out of range for int64");
        *(int64_t *)dst = neg ? (int64_t)(0 - mag) : (int64_t)mag;
        return 0;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        if (r == NUM_RANGE || (neg && mag != 0))
            return fail_value(d, "value out of range for uint64");
        *(uint64_t *)dst = mag;
        return 0;
    default:
        return fail(d, PINS_EINTERNAL, false, "internal error");
    }
}

/* A double or float from number text; quoted text may also be NaN, Infinity or -Infinity. */
static int conv_float(struct dec *d, const ProtobufCFieldDescriptor *f, const char *s, size_t n,
                      bool quoted, void *dst)
{
    double v;
    if (quoted && n == 3 && memcmp(s, "NaN", 3) == 0) {
        v = NAN;
    } else if (quoted && n == 8 && memcmp(s, "Infinity", 8) == 0) {
        v = INFINITY;
    } else if (quoted && n == 9 && memcmp(s, "-Infinity", 9) == 0) {
        v = -INFINITY;
    } else {
        enum numres r = parse_double(s, n, &v);
        if (r == NUM_SYNTAX)
            return fail_value(d, "invalid number");
        if (r != NUM_OK)
            return fail_value(d, "value out of range for double");
    }
    if (f->type == PROTOBUF_C_TYPE_DOUBLE) {
        *(double *)dst = v;
        return 0;
    }
    /* Values that round to FLT_MAX are in range; from FLT_MAX + half an ulp on they overflow. */
    if (isfinite(v) && fabs(v) >= 0x1.ffffffp127)
        return fail_value(d, "value out of range for float");
    *(float *)dst = (float)v;
    return 0;
}

static int conv_enum(struct dec *d, const ProtobufCFieldDescriptor *f, const char *s, size_t n,
                     void *dst)
{
    const ProtobufCEnumDescriptor *ed = f->descriptor;
    for (unsigned i = 0; i < ed->n_values; i++) {
        const char *name = ed->values[i].name;
        if (strlen(name) == n && memcmp(name, s, n) == 0) {
            *(int *)dst = ed->values[i].value;
            return 0;
        }
    }
    if (n > 0 && ((s[0] >= '0' && s[0] <= '9') || s[0] == '-')) {
        int32_t v;
        int rv = conv_int(d, f, s, n, &v);
        if (rv == 0)
            *(int *)dst = v;
        return rv;
    }
    return fail(d, PINS_EMALFORMED, false, "unknown value %.*s of enum %s", n > 64 ? 64 : (int)n, s,
                ed->name);
}

static int conv_string(struct dec *d, const char *s, size_t n, bool nul, void *dst)
{
    if (nul || memchr(s, '\0', n) != NULL)
        return fail_value(d, "string contains \\u0000");
    if (pins_utf8_count(s, n) < 0)
        return fail_value(d, "string is not valid utf-8");
    char *copy = NULL;
    int rv = alloc(d, n + 1, (void **)&copy);
    if (rv != 0)
        return rv;
    memcpy(copy, s, n);
    copy[n] = '\0';
    *(char **)dst = copy;
    return 0;
}

/* Standard or URL-safe base64, padded or not (common/base64.h). */
static int conv_bytes(struct dec *d, const char *s, size_t n, void *dst)
{
    unsigned char *out = NULL;
    int rv = alloc(d, pins_base64_decoded_max(n), (void **)&out);
    if (rv != 0)
        return rv;
    size_t len = 0;
    if (pins_base64_decode(s, n, PINS_BASE64_MIXED | PINS_BASE64_PAD, out, &len) != 0)
        return fail_value(d, "invalid base64");
    ProtobufCBinaryData *bd = dst;
    bd->len = len;
    bd->data = len > 0 ? out : NULL;
    return 0;
}

static int conv_bool(struct dec *d, const char *s, size_t n, void *dst)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};
    for (size_t i = 0; i < 4; i++) {
        if (strlen(yes[i]) == n && strncasecmp(s, yes[i], n) == 0) {
            *(protobuf_c_boolean *)dst = 1;
            return 0;
        }
        if (strlen(no[i]) == n && strncasecmp(s, no[i], n) == 0) {
            *(protobuf_c_boolean *)dst = 0;
            return 0;
        }
    }
    return fail_value(d, "expected true or false");
}

/* Sets the seconds and nanos fields of a Timestamp or Duration message m. */
static int set_seconds_nanos(struct dec *d, ProtobufCMessage *m, int64_t sec, int32_t nanos)
{
    const ProtobufCFieldDescriptor *fs = field_named(m->descriptor, "seconds");
    const ProtobufCFieldDescriptor *fn = field_named(m->descriptor, "nanos");
    if (fs == NULL || fn == NULL || elt_size(fs->type) != 8 || elt_size(fn->type) != 4)
        return fail(d, PINS_EINTERNAL, false, "internal error");
    *(int64_t *)member(m, fs->offset) = sec;
    *(int32_t *)member(m, fn->offset) = nanos;
    return 0;
}

static int conv_fieldmask(struct dec *d, ProtobufCMessage *m, const char *s, size_t n)
{
    const ProtobufCFieldDescriptor *f = field_named(m->descriptor, "paths");
    if (f == NULL || f->label != PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_STRING)
        return fail(d, PINS_EINTERNAL, false, "internal error");
    size_t count = n == 0 ? 0 : 1;
    for (size_t i = 0; i < n; i++)
        count += s[i] == ',';
    char **paths = NULL;
    int rv = count > 0 ? alloc(d, count * sizeof(char *), (void **)&paths) : 0;
    size_t k = 0, i = 0;
    while (rv == 0 && k < count) {
        size_t j = i;
        while (j < n && s[j] != ',')
            j++;
        if (j == i)
            return fail_value(d, "invalid field mask path");
        size_t upper = 0;
        for (size_t q = i; q < j; q++)
            upper += s[q] >= 'A' && s[q] <= 'Z';
        char *p = NULL;
        rv = alloc(d, j - i + upper + 1, (void **)&p);
        if (rv != 0)
            break;
        size_t o = 0;
        for (size_t q = i; q < j; q++) {
            unsigned char c = (unsigned char)s[q];
            if (c < 0x20 || c >= 0x80)
                return fail_value(d, "invalid field mask path");
            if (c >= 'A' && c <= 'Z') {
                p[o++] = '_';
                c = (unsigned char)(c - 'A' + 'a');
            }
            p[o++] = (char)c;
        }
        p[o] = '\0';
        paths[k++] = p;
        i = j + 1;
    }
    if (rv != 0)
        return rv;
    *(size_t *)member(m, f->quantifier_offset) = count;
    *(char ***)member(m, f->offset) = paths;
    return 0;
}

/* A message of a well-known type whose JSON form is a string (Timestamp, Duration, FieldMask)
 * from its text. */
static int conv_wkt_text(struct dec *d, const ProtobufCMessageDescriptor *desc, const char *s,
                         size_t n, ProtobufCMessage **pm)
{
    enum wkt k = wkt_of(desc);
    ProtobufCMessage *m = NULL;
    int rv = new_message(d, desc, &m);
    if (rv != 0)
        return rv;
    int64_t sec;
    int32_t nanos;
    if (k == WKT_TIMESTAMP) {
        if (parse_timestamp(s, n, &sec, &nanos) != 0)
            return fail_value(d, "invalid timestamp, expected rfc 3339 such as "
                                 "2026-11-27T23:53:22.123456Z");
        rv = set_seconds_nanos(d, m, sec, nanos);
    } else if (k == WKT_DURATION) {
        if (parse_duration(s, n, &sec, &nanos) != 0)
            return fail_value(d, "invalid duration, expected seconds such as 1.5s");
        rv = set_seconds_nanos(d, m, sec, nanos);
    } else {
        rv = conv_fieldmask(d, m, s, n);
    }
    if (rv == 0)
        *pm = m;
    return rv;
}

/* -- JSON values to fields --------------------------------------------------------------------- */

static int dec_message(struct dec *d, const ProtobufCMessageDescriptor *desc,
                       ProtobufCMessage **pm);

/* A JSON string or number holding a number: *pquoted tells which. */
static int read_numeric(struct dec *d, const char **ps, size_t *pn, bool *pquoted)
{
    char c = peek(d);
    bool nul;
    *pquoted = c == '"';
    if (c == '"')
        return read_string(d, STR_VIEW, ps, pn, &nul);
    if (c == '-' || (c >= '0' && c <= '9'))
        return read_number(d, ps, pn);
    return fail_type(d, "a number");
}

/* Decodes the value at the current position into dst, one value of f's type. */
static int dec_elem(struct dec *d, const ProtobufCFieldDescriptor *f, void *dst)
{
    const char *s = NULL; /* set by every scan that returns 0 */
    size_t n = 0;
    bool quoted, nul;
    int rv;
    char c = peek(d);
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        rv = read_numeric(d, &s, &n, &quoted);
        return rv != 0 ? rv : conv_int(d, f, s, n, dst);
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
        rv = read_numeric(d, &s, &n, &quoted);
        return rv != 0 ? rv : conv_float(d, f, s, n, quoted, dst);
    case PROTOBUF_C_TYPE_BOOL:
        if (c != 't' && c != 'f')
            return fail_type(d, "a boolean");
        *(protobuf_c_boolean *)dst = c == 't';
        return read_literal(d, c == 't' ? "true" : "false");
    case PROTOBUF_C_TYPE_ENUM:
        if (c == 'n' && is_null_enum(f)) {
            *(int *)dst = 0;
            return read_literal(d, "null");
        }
        if (c == '"') {
            rv = read_string(d, STR_VIEW, &s, &n, &nul);
            return rv != 0 ? rv : conv_enum(d, f, s, n, dst);
        }
        if (c != '-' && (c < '0' || c > '9'))
            return fail_type(d, "a string or a number");
        rv = read_number(d, &s, &n);
        return rv != 0 ? rv : conv_enum(d, f, s, n, dst);
    case PROTOBUF_C_TYPE_STRING:
        if (c != '"')
            return fail_type(d, "a string");
        rv = read_string(d, STR_COPY, &s, &n, &nul);
        if (rv != 0)
            return rv;
        if (nul)
            return fail_value(d, "string contains \\u0000");
        *(const char **)dst = s;
        return 0;
    case PROTOBUF_C_TYPE_BYTES:
        if (c != '"')
            return fail_type(d, "a base64 string");
        rv = read_string(d, STR_VIEW, &s, &n, &nul);
        return rv != 0 ? rv : conv_bytes(d, s, n, dst);
    case PROTOBUF_C_TYPE_MESSAGE:
        return dec_message(d, f->descriptor, dst);
    }
    return fail(d, PINS_EINTERNAL, false, "internal error");
}

static int dec_repeated(struct dec *d, ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    if (peek(d) != '[')
        return fail_type(d, "an array");
    size_t esz = elt_size(f->type), base = d->stk_len, i = 0;
    bool more;
    int rv;
    for (;;) {
        rv = arr_next(d, &i, &more);
        if (rv != 0 || !more)
            break;
        size_t old = path_index(d, i - 1);
        union {
            int64_t i64;
            double dbl;
            void *ptr;
            ProtobufCBinaryData bytes;
        } tmp;
        memset(&tmp, 0, sizeof(tmp));
        if (peek(d) == 'n' && !is_value_field(f) && !is_null_enum(f))
            rv = fail_type(d, "a list element, not null");
        else
            rv = dec_elem(d, f, &tmp);
        if (rv == 0)
            rv = push(d, &tmp, esz);
        path_pop(d, old);
        if (rv != 0)
            break;
    }
    if (rv != 0)
        return rv;
    void *arr = NULL;
    size_t n;
    rv = pop_array(d, base, esz, &arr, &n);
    if (rv != 0)
        return rv;
    *(size_t *)member(m, f->quantifier_offset) = n;
    *(void **)member(m, f->offset) = arr;
    return 0;
}

static int dec_map_key(struct dec *d, const ProtobufCFieldDescriptor *kf, const char *s, size_t n,
                       bool nul, void *dst)
{
    switch (kf->type) {
    case PROTOBUF_C_TYPE_STRING:
        if (nul)
            return fail_value(d, "map key contains \\u0000");
        *(const char **)dst = s; /* a STR_COPY key */
        return 0;
    case PROTOBUF_C_TYPE_BOOL:
        if (n == 4 && memcmp(s, "true", 4) == 0)
            *(protobuf_c_boolean *)dst = 1;
        else if (n == 5 && memcmp(s, "false", 5) == 0)
            *(protobuf_c_boolean *)dst = 0;
        else
            return fail_value(d, "map key is not true or false");
        return 0;
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
    case PROTOBUF_C_TYPE_ENUM:
    case PROTOBUF_C_TYPE_BYTES:
    case PROTOBUF_C_TYPE_MESSAGE:
        return fail(d, PINS_EINTERNAL, false, "internal error");
    default:
        return conv_int(d, kf, s, n, dst);
    }
}

static int dec_map(struct dec *d, ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    if (peek(d) != '{')
        return fail_type(d, "an object");
    const ProtobufCMessageDescriptor *ed = f->descriptor;
    const ProtobufCFieldDescriptor *kf = &ed->fields[0], *vf = &ed->fields[1];
    size_t base = d->stk_len, i = 0;
    bool more, nul;
    const char *key;
    size_t klen;
    int rv;
    for (;;) {
        rv = obj_next(d, STR_COPY, &i, &more, &key, &klen, &nul);
        if (rv != 0 || !more)
            break;
        size_t old = path_push(d, key, klen);
        ProtobufCMessage *entry = NULL;
        rv = new_message(d, ed, &entry);
        if (rv == 0)
            rv = dec_map_key(d, kf, key, klen, nul, member(entry, kf->offset));
        if (rv == 0) {
            mark_present(entry, kf);
            if (peek(d) == 'n' && vf->type == PROTOBUF_C_TYPE_MESSAGE && !is_value_field(vf)) {
                rv = read_literal(d, "null");
            } else if (peek(d) == 'n' && !is_value_field(vf) && !is_null_enum(vf)) {
                rv = fail_type(d, "a map value, not null");
            } else {
                rv = dec_elem(d, vf, member(entry, vf->offset));
                if (rv == 0)
                    mark_present(entry, vf);
            }
        }
        if (rv == 0)
            rv = push(d, &entry, sizeof(entry));
        path_pop(d, old);
        if (rv != 0)
            break;
    }
    if (rv != 0)
        return rv;
    void *arr = NULL;
    size_t n;
    rv = pop_array(d, base, sizeof(ProtobufCMessage *), &arr, &n);
    if (rv != 0)
        return rv;
    *(size_t *)member(m, f->quantifier_offset) = n;
    *(void **)member(m, f->offset) = arr;
    return 0;
}

static int dec_field(struct dec *d, ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    bool oneof = (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) != 0;
    if (peek(d) == 'n' && !is_value_field(f) && !is_null_enum(f)) {
        clear_field(m, f);
        return read_literal(d, "null");
    }
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return is_map_field(m->descriptor, f) ? dec_map(d, m, f) : dec_repeated(d, m, f);
    if (oneof) {
        uint32_t cur = *(const uint32_t *)member(m, f->quantifier_offset);
        if (cur != 0 && cur != f->id) {
            const ProtobufCFieldDescriptor *other =
                protobuf_c_message_descriptor_get_field(m->descriptor, cur);
            return fail(d, PINS_EMALFORMED, false, "fields %s and %s of the same oneof are set",
                        other != NULL ? other->name : "?", f->name);
        }
    }
    int rv = dec_elem(d, f, member(m, f->offset));
    if (rv == 0)
        mark_present(m, f);
    return rv;
}

static int dec_object(struct dec *d, const ProtobufCMessageDescriptor *desc, ProtobufCMessage *m)
{
    if (peek(d) != '{')
        return fail_type(d, "an object");
    size_t i = 0;
    bool more, nul;
    const char *key;
    size_t klen;
    for (;;) {
        int rv = obj_next(d, STR_VIEW, &i, &more, &key, &klen, &nul);
        if (rv != 0 || !more)
            return rv;
        const ProtobufCFieldDescriptor *f = nul ? NULL : find_field(desc, key, klen);
        if (f == NULL) {
            rv = skip_value(d);
        } else {
            size_t old = path_push(d, f->name, strlen(f->name));
            rv = dec_field(d, m, f);
            path_pop(d, old);
        }
        if (rv != 0)
            return rv;
    }
}

/* Turns the codec's failure into this decoder's: the path gets the codec's steps (outermost
 * first), the message the protocol's wording. */
__attribute__((cold, noinline)) static int from_pbstruct(struct dec *d, const pbstruct_parse *p,
                                                         int rv)
{
    size_t old = d->plen;
    for (size_t i = p->npath; i > 0; i--) {
        const pbstruct_step *st = &p->path[i - 1];
        if (st->key != NULL)
            path_push(d, st->key, st->len);
        else
            path_index(d, st->index);
    }
    d->pos = p->err_pos;
    switch (p->fault) {
    case PBSTRUCT_FAULT_SYNTAX:
        rv = syntax(d);
        break;
    case PBSTRUCT_FAULT_CONTROL:
        rv = fail(d, PINS_EMALFORMED, true,
                  "invalid json: control character in string at offset %zu", d->pos);
        break;
    case PBSTRUCT_FAULT_UTF8:
        rv = fail(d, PINS_EMALFORMED, true, "invalid json: invalid utf-8 in string at offset %zu",
                  d->pos);
        break;
    case PBSTRUCT_FAULT_ESCAPE:
    case PBSTRUCT_FAULT_SURROGATE:
        rv = fail(d, PINS_EMALFORMED, true, "invalid json: invalid escape in string at offset %zu",
                  d->pos);
        break;
    case PBSTRUCT_FAULT_NUL:
        rv = fail_value(d, "string contains \\u0000");
        break;
    case PBSTRUCT_FAULT_NUL_KEY:
        rv = fail_value(d, "object key contains \\u0000");
        break;
    case PBSTRUCT_FAULT_NUMBER:
        rv = fail_value(d, "number out of range");
        break;
    case PBSTRUCT_FAULT_DEPTH:
        rv = fail(d, PINS_EMALFORMED, false, "nesting deeper than %d", d->max_depth);
        break;
    case PBSTRUCT_FAULT_TOO_LARGE:
        rv = fail(d, PINS_ETOO_LARGE, false, "request too large");
        break;
    case PBSTRUCT_FAULT_NOMEM:
        rv = fail(d, PINS_ENOMEM, false, "out of memory");
        break;
    default:
        rv = fail(d, rv != 0 ? rv : PINS_EINTERNAL, false, "internal error");
        break;
    }
    path_pop(d, old);
    return rv;
}

/* A Struct, Value or ListValue (k) at the current position, parsed by the one codec. A Struct
 * must be an object and a ListValue an array (else the value has the wrong type); a Value is any
 * JSON value. */
static int dec_pbstruct(struct dec *d, enum wkt k, ProtobufCMessage **pm)
{
    char c = peek(d);
    if (k == WKT_STRUCT && c != '{')
        return fail_type(d, "an object");
    if (k == WKT_LIST && c != '[')
        return fail_type(d, "an array");
    pbstruct_step steps[PBSTRUCT_MAX_DEPTH];
    pbstruct_parse p = {
        .json = d->s,
        .len = d->n,
        .pos = d->pos,
        .depth = d->depth,
        .max_depth = d->max_depth,
        .budget = d->budget,
        .budget_base = d->base,
        .path = steps,
    };
    int rv;
    if (k == WKT_STRUCT)
        rv = pbstruct_parse_struct(d->a, &p, (Google__Protobuf__Struct **)pm);
    else if (k == WKT_LIST)
        rv = pbstruct_parse_list(d->a, &p, (Google__Protobuf__ListValue **)pm);
    else
        rv = pbstruct_parse_value(d->a, &p, (Google__Protobuf__Value **)pm);
    if (rv != 0)
        return from_pbstruct(d, &p, rv);
    d->pos = p.pos;
    return 0;
}

static int dec_message(struct dec *d, const ProtobufCMessageDescriptor *desc, ProtobufCMessage **pm)
{
    enum wkt k = wkt_of(desc);
    const char *s;
    size_t n;
    bool nul;
    int rv;
    switch (k) {
    case WKT_STRUCT:
    case WKT_VALUE:
    case WKT_LIST:
        return dec_pbstruct(d, k, pm);
    case WKT_TIMESTAMP:
    case WKT_DURATION:
    case WKT_FIELDMASK:
        if (peek(d) != '"')
            return fail_type(d, "a string");
        rv = read_string(d, STR_VIEW, &s, &n, &nul);
        return rv != 0 ? rv : conv_wkt_text(d, desc, s, n, pm);
    case WKT_ANY:
        return fail_value(d, "google.protobuf.Any is not supported");
    case WKT_WRAPPER: {
        ProtobufCMessage *m = NULL;
        rv = new_message(d, desc, &m);
        if (rv == 0)
            rv = dec_elem(d, &desc->fields[0], member(m, desc->fields[0].offset));
        if (rv == 0)
            *pm = m;
        return rv;
    }
    default: {
        if (peek(d) != '{')
            return fail_type(d, "an object");
        ProtobufCMessage *m = NULL;
        rv = new_message(d, desc, &m);
        if (rv == 0)
            rv = dec_object(d, desc, m);
        if (rv == 0)
            *pm = m;
        return rv;
    }
    }
}

static void dec_init(struct dec *d, pins_arena *a, const char *s, size_t n, int max_depth)
{
    memset(d, 0, sizeof(*d));
    d->s = s;
    d->n = n;
    d->a = a;
    d->base = pins_arena_used(a);
    d->max_depth = max_depth < 1 ? 1 : max_depth > HARD_MAX_DEPTH ? HARD_MAX_DEPTH : max_depth;
}

/* Parses the whole of d's input as one JSON value of type desc (whitespace only: the empty
 * message). */
static int dec_document(struct dec *d, const ProtobufCMessageDescriptor *desc,
                        ProtobufCMessage **pm)
{
    ProtobufCMessage *m = NULL;
    int rv;
    if (peek(d) == '\0' && d->pos == d->n)
        rv = new_message(d, desc, &m);
    else
        rv = dec_message(d, desc, &m);
    if (rv == 0 && peek(d) != '\0')
        rv = syntax(d);
    if (rv == 0 && d->pos != d->n)
        rv = syntax(d);
    if (rv == 0)
        *pm = m;
    return rv;
}

/* Checks that the whole of d's input is one JSON value (or whitespace), allocating nothing. */
static int scan_document(struct dec *d)
{
    if (peek(d) == '\0' && d->pos == d->n)
        return 0;
    int rv = skip_value(d);
    if (rv == 0 && (peek(d) != '\0' || d->pos != d->n))
        rv = syntax(d);
    return rv;
}

int proto_json_decode(pins_arena *a, const ProtobufCMessageDescriptor *desc, const char *json,
                      size_t len, int max_depth, ProtobufCMessage **pmsg, proto_json_error *perr)
{
    return proto_json_decode_bounded(a, desc, json, len, max_depth, 0, pmsg, perr);
}

int proto_json_decode_bounded(pins_arena *a, const ProtobufCMessageDescriptor *desc,
                              const char *json, size_t len, int max_depth, size_t max_bytes,
                              ProtobufCMessage **pmsg, proto_json_error *perr)
{
    struct dec d;
    dec_init(&d, a, json != NULL ? json : "", json != NULL ? len : 0, max_depth);
    d.budget = max_bytes;
    ProtobufCMessage *m = NULL;
    int rv = dec_document(&d, desc, &m);
    free(d.stk);
    if (rv != 0 && d.err.expected != NULL) {
        /* A value of the wrong type, found before the parser got to the rest of the input:
         * that is only a wrong type when the whole input is JSON; else the syntax error is
         * the reason. */
        struct dec v;
        dec_init(&v, a, d.s, d.n, max_depth);
        if (scan_document(&v) != 0)
            d.err = v.err;
    }
    if (rv != 0) {
        if (perr != NULL)
            *perr = d.err;
        return rv;
    }
    *pmsg = m;
    return 0;
}

/* -- set_field ----------------------------------------------------------------------------------
 */

/* Converts text to one value of f's type at dst. */
static int text_elem(struct dec *d, const ProtobufCFieldDescriptor *f, const char *s, size_t n,
                     void *dst)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
        return conv_float(d, f, s, n, true, dst);
    case PROTOBUF_C_TYPE_BOOL:
        return conv_bool(d, s, n, dst);
    case PROTOBUF_C_TYPE_ENUM:
        return conv_enum(d, f, s, n, dst);
    case PROTOBUF_C_TYPE_STRING:
        return conv_string(d, s, n, false, dst);
    case PROTOBUF_C_TYPE_BYTES:
        return conv_bytes(d, s, n, dst);
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessageDescriptor *desc = f->descriptor;
        enum wkt k = wkt_of(desc);
        if (k == WKT_TIMESTAMP || k == WKT_DURATION || k == WKT_FIELDMASK)
            return conv_wkt_text(d, desc, s, n, dst);
        if (k == WKT_WRAPPER) {
            ProtobufCMessage *m = NULL;
            int rv = new_message(d, desc, &m);
            if (rv == 0)
                rv = text_elem(d, &desc->fields[0], s, n, member(m, desc->fields[0].offset));
            if (rv == 0)
                *(ProtobufCMessage **)dst = m;
            return rv;
        }
        /* Anything else is given as JSON text. */
        ProtobufCMessage *m = NULL;
        int rv = dec_document(d, desc, &m);
        if (rv == 0)
            *(ProtobufCMessage **)dst = m;
        return rv;
    }
    default:
        return conv_int(d, f, s, n, dst);
    }
}

/* Appends one element to a repeated field (an array in the arena, copied one longer). */
static int append_elem(struct dec *d, ProtobufCMessage *m, const ProtobufCFieldDescriptor *f,
                       const void *elem)
{
    size_t esz = elt_size(f->type);
    size_t *pn = member(m, f->quantifier_offset);
    void **parr = member(m, f->offset);
    char *arr = NULL;
    int rv = alloc(d, (*pn + 1) * esz, (void **)&arr);
    if (rv != 0)
        return rv;
    if (*pn > 0)
        memcpy(arr, *parr, *pn * esz);
    memcpy(arr + *pn * esz, elem, esz);
    *parr = arr;
    (*pn)++;
    return 0;
}

static int set_field(struct dec *d, ProtobufCMessage *msg, const char *name, const char *value,
                     size_t value_len)
{
    ProtobufCMessage *m = msg;
    const ProtobufCFieldDescriptor *f = NULL;
    const char *seg = name;
    int rv;
    for (;;) {
        const char *dot = strchr(seg, '.');
        size_t n = dot != NULL ? (size_t)(dot - seg) : strlen(seg);
        f = find_field(m->descriptor, seg, n);
        if (f == NULL)
            return fail(d, PINS_ENOT_FOUND, false, "no such field");
        if (dot == NULL)
            break;
        if (f->label == PROTOBUF_C_LABEL_REPEATED || f->type != PROTOBUF_C_TYPE_MESSAGE ||
            wkt_of(f->descriptor) != WKT_NONE || (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
            return fail(d, PINS_ENOT_FOUND, false, "no such field");
        ProtobufCMessage **psub = member(m, f->offset);
        if (*psub == NULL) {
            rv = new_message(d, f->descriptor, psub);
            if (rv != 0)
                return rv;
        }
        m = *psub;
        seg = dot + 1;
    }
    union {
        int64_t i64;
        double dbl;
        void *ptr;
        ProtobufCBinaryData bytes;
    } tmp;
    memset(&tmp, 0, sizeof(tmp));
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
        uint32_t cur = *(const uint32_t *)member(m, f->quantifier_offset);
        if (cur != 0 && cur != f->id)
            return fail_value(d, "another field of the same oneof is set");
    }
    rv = text_elem(d, f, value, value_len, &tmp);
    if (rv != 0)
        return rv;
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return append_elem(d, m, f, &tmp);
    memcpy(member(m, f->offset), &tmp, elt_size(f->type));
    mark_present(m, f);
    return 0;
}

int proto_json_set_field(pins_arena *a, ProtobufCMessage *msg, const char *name, const char *value,
                         size_t value_len, proto_json_error *perr)
{
    struct dec d;
    dec_init(&d, a, value, value_len, PINS_REQUEST_JSON_DEPTH);
    path_push(&d, name, strlen(name));
    int rv = set_field(&d, msg, name, value, value_len);
    free(d.stk);
    if (rv != 0 && perr != NULL)
        *perr = d.err;
    return rv;
}
