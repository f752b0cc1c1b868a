/* common/pbstruct.h: google.protobuf.Struct <-> compact JSON text, and the value hash.
 *
 * A pin's value travels as a google.protobuf.Struct on gRPC and is stored as JSON text. These
 * functions convert between the two on every UpsertPin and GetPin, so they are written for speed:
 * the parser is a small strict RFC 8259 parser that builds the Struct directly in the call's arena,
 * and the writer appends into one growing buffer.
 *
 * Depth. The Struct (the JSON object) itself is depth 1; every nested object or array adds 1. So
 * {"a":{"b":[1]}} has depth 3. A max_depth above PBSTRUCT_MAX_DEPTH is treated as
 * PBSTRUCT_MAX_DEPTH, which bounds the recursion of both directions.
 *
 * Duplicate keys. protobuf map semantics apply: the last entry of a key wins. pbstruct_to_json
 * emits each key once, at the position of its last entry. pbstruct_from_json keeps every member of
 * the JSON text in order (duplicates included); packed as protobuf, a receiver keeps the last one,
 * and pbstruct_to_json emits the last one, so the meaning is the same.
 *
 * Numbers are doubles. The writer prints an integral double of magnitude up to 2^53 as an integer
 * ("1", never "1.0"; -0 prints as "0") and any other finite double in the shortest of %.15g, %.16g,
 * %.17g that reads back to the same double. NaN and infinities are rejected. Number formatting
 * assumes the "C" LC_NUMERIC locale (pinsd never calls setlocale).
 *
 * Strings. Both directions require valid UTF-8 (no overlong forms, no surrogates, nothing above
 * U+10FFFF). The writer escapes '"' and '\' and every control character below U+0020: \b \f \n
 * \r \t in their short forms, the others as \u00XX; it emits everything else, including '/' and
 * non-ASCII characters, as is. The parser rejects \u0000 because protobuf-c strings are C strings.
 *
 * Errors. Every failure returns a negative PINS_E* code; pbstruct_last_reason() then tells on the
 * calling thread which limit or rule was broken, so that a caller can write "value larger than N
 * bytes" or "value nesting deeper than N".
 *
 * One codec. This file is pinsd's only JSON codec for Struct, Value and ListValue: the stores
 * (stored text <-> Struct), the cache, and protocols/json.c (REST, Connect, gRPC-Web JSON, SSE)
 * all parse and write them here. pbstruct_from_json/pbstruct_to_json serve whole texts;
 * pbstruct_parse_* and pbstruct_put_* serve a value inside a larger JSON document or buffer, with
 * the position, the path and the finer cause of a failure (pbstruct_parse) that a protocol needs
 * for its error answer.
 *
 * Thread safety: all functions are reentrant; the last reason is per thread.
 */
#ifndef PINS_COMMON_PBSTRUCT_H
#define PINS_COMMON_PBSTRUCT_H

#include <stddef.h>

#include "common/arena.h"
#include "common/limits.h"
#include "common/buf.h"
#include "google/protobuf/struct.pb-c.h"

/* The deepest nesting either direction follows, whatever max_depth says: four times a pin value's
 * (common/limits.h), 256. */
#define PBSTRUCT_MAX_DEPTH (4 * PINS_VALUE_MAX_DEPTH)

/* Why the last pbstruct_* call on this thread failed. */
typedef enum pbstruct_reason {
    PBSTRUCT_REASON_NONE = 0,   /* the last call succeeded */
    PBSTRUCT_REASON_TOO_LARGE,  /* the JSON text would be longer than max_bytes */
    PBSTRUCT_REASON_TOO_DEEP,   /* nesting deeper than max_depth */
    PBSTRUCT_REASON_NOT_OBJECT, /* the top-level JSON value is not an object */
    PBSTRUCT_REASON_SYNTAX,     /* malformed JSON, trailing garbage */
    PBSTRUCT_REASON_BAD_UTF8,   /* a string is not valid UTF-8, or contains \u0000 */
    PBSTRUCT_REASON_BAD_NUMBER, /* NaN, an infinity, or a number out of double range */
    PBSTRUCT_REASON_NO_KIND,    /* a Value with no kind set, or a NULL part of a Struct */
    PBSTRUCT_REASON_NOMEM,      /* out of memory or over the arena's limit */
    PBSTRUCT_REASON_INTERNAL,   /* the hash backend failed */
} pbstruct_reason;

/* Writes s as compact JSON (no whitespace) into a new NUL-terminated malloc'd buffer: *pjson gets
 * the buffer (the caller frees it with free()), *plen its length without the NUL. Fields are
 * emitted in the order of s->fields, each key once (the last entry wins). The text may be at most
 * max_bytes long (SIZE_MAX: no limit); s may nest at most max_depth deep. s is borrowed.
 * Returns 0; PINS_EINVALID_ARGUMENT when the text would be longer than max_bytes
 * (reason TOO_LARGE), nested deeper than max_depth (TOO_DEEP), a number is NaN or infinite
 * (BAD_NUMBER), a string or key is not valid UTF-8 (BAD_UTF8), or a Value has no kind or a
 * pointer in s is NULL (NO_KIND); PINS_ENOMEM. The out-parameters are untouched on failure. */
int pbstruct_to_json(const Google__Protobuf__Struct *s, size_t max_bytes, int max_depth,
                     char **pjson, size_t *plen);

/* Parses json[0..len) (need not be NUL-terminated), which must be exactly one JSON object with
 * optional surrounding whitespace, into a Struct allocated entirely in a: every message, array and
 * string lives in the arena and dies with it (never call free_unpacked on it). Members keep their
 * order; numbers become doubles. json is borrowed and may be freed after the call.
 * Returns 0 and sets *pstruct; PINS_EINVALID_ARGUMENT when the text is not an object (reason
 * NOT_OBJECT), is malformed or has trailing garbage (SYNTAX), nests deeper than max_depth
 * (TOO_DEEP), has invalid UTF-8 or \u0000 in a string (BAD_UTF8), or has a number out of
 * double range (BAD_NUMBER); PINS_ENOMEM when the arena is exhausted (NOMEM). *pstruct is
 * untouched on failure; what was allocated stays in the arena until it is freed. */
int pbstruct_from_json(pins_arena *a, const char *json, size_t len, int max_depth,
                       Google__Protobuf__Struct **pstruct);

/* ---- the codec inside a larger document ------------------------------------------------------
 *
 * The rules are the ones above. Strings: a string is checked whole (control bytes, UTF-8,
 * escapes) before its escapes are decoded; \u0000 is refused only once the rest of the string is
 * valid (so "\u0000\q" is an invalid escape), and in a key only after the ':' that follows it. */

/* The finer cause of a parse failure. */
typedef enum pbstruct_fault {
    PBSTRUCT_FAULT_NONE = 0,
    PBSTRUCT_FAULT_SYNTAX,    /* unexpected byte at err_pos, or the end of input (err_pos == len) */
    PBSTRUCT_FAULT_CONTROL,   /* a control byte inside a string, at err_pos */
    PBSTRUCT_FAULT_UTF8,      /* a byte inside a string that starts no valid UTF-8, at err_pos */
    PBSTRUCT_FAULT_ESCAPE,    /* an invalid escape, its backslash at err_pos */
    PBSTRUCT_FAULT_SURROGATE, /* a \u escape of a lone or unpaired surrogate, at err_pos */
    PBSTRUCT_FAULT_NUL,       /* \u0000 in a string value */
    PBSTRUCT_FAULT_NUL_KEY,   /* \u0000 in an object key */
    PBSTRUCT_FAULT_NUMBER,    /* a number out of double range */
    PBSTRUCT_FAULT_DEPTH,     /* nesting deeper than max_depth */
    PBSTRUCT_FAULT_TOO_LARGE, /* over the budget or the arena's limit */
    PBSTRUCT_FAULT_NOMEM,     /* malloc failed, or the arena below its limit */
} pbstruct_fault;

/* One step of the path to a failure: a key (key != NULL; in the arena) or an array index. */
typedef struct pbstruct_step {
    const char *key;
    size_t len;
    size_t index;
} pbstruct_step;

/* A parse inside a larger JSON text, and on failure where and why it stopped. */
typedef struct pbstruct_parse {
    const char *json; /* the whole text (borrowed) */
    size_t len;
    size_t pos;    /* in: the first byte of the value (no whitespace); out: just past it */
    int depth;     /* the containers the value sits in (0: it is the top-level value) */
    int max_depth; /* the deepest nesting allowed, counted as depth; at most PBSTRUCT_MAX_DEPTH */
    size_t budget; /* at most this many arena bytes from budget_base on (0: the arena's limit) */
    size_t budget_base;  /* pins_arena_used() when the caller's decode began */
    pbstruct_step *path; /* room for PBSTRUCT_MAX_DEPTH steps, or NULL: the path is not kept */
    /* Out, on failure: */
    pbstruct_fault fault;
    size_t err_pos; /* for SYNTAX, CONTROL, UTF8, ESCAPE, SURROGATE */
    size_t npath;   /* the path from the value to the failure: path[npath - 1] is outermost */
} pbstruct_parse;

/* Parse the value at p->json[p->pos] (a Value: any JSON value; a Struct: an object, which must
 * start at pos; a ListValue: an array, likewise) into a new message in a, advance p->pos past it,
 * and set *pout. The message and everything under it live in a (never free_unpacked). Returns 0;
 * PINS_EINVALID_ARGUMENT (p->fault says why; SYNTAX also when pos is not at '{' / '['),
 * PINS_ETOO_LARGE or PINS_ENOMEM (faults TOO_LARGE / NOMEM). *pout is untouched and p->pos
 * unspecified on failure; the per-thread reason is set as for pbstruct_from_json. */
int pbstruct_parse_value(pins_arena *a, pbstruct_parse *p, Google__Protobuf__Value **pout);
int pbstruct_parse_struct(pins_arena *a, pbstruct_parse *p, Google__Protobuf__Struct **pout);
int pbstruct_parse_list(pins_arena *a, pbstruct_parse *p, Google__Protobuf__ListValue **pout);

/* Append v / s / l as compact JSON to b (the rules of pbstruct_to_json; b's maximum is the size
 * limit). A Struct or ListValue at the top is depth 1, and nesting deeper than max_depth (at most
 * PBSTRUCT_MAX_DEPTH) fails. Borrowed arguments. Returns 0 or the errors and reasons of
 * pbstruct_to_json (a text past b's maximum: reason TOO_LARGE); on failure b may hold a part of
 * the text after what it held before: the caller cuts it (pins_buf_setlen). */
int pbstruct_put_value(pins_buf *b, const Google__Protobuf__Value *v, int max_depth);
int pbstruct_put_struct(pins_buf *b, const Google__Protobuf__Struct *s, int max_depth);
int pbstruct_put_list(pins_buf *b, const Google__Protobuf__ListValue *l, int max_depth);

/* The value hash: the first 16 lower-case hex characters of the SHA-256 of json[0..len), written
 * NUL-terminated to out. json is borrowed. Returns 0 or PINS_EINTERNAL (reason INTERNAL) when the
 * digest fails; out is untouched on failure. */
int pbstruct_value_hash(const char *json, size_t len, char out[17]);

/* Why the last pbstruct_* call on the calling thread failed (NONE after a success). */
pbstruct_reason pbstruct_last_reason(void);
/* A short lower-case description of r, e.g. "value nesting too deep". Static string. */
const char *pbstruct_reason_text(pbstruct_reason r);

#endif
