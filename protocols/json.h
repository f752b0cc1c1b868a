/* protocols/json.h: the descriptor-driven proto3 JSON codec
 * (https://protobuf.dev/programming-guides/proto3/#json).
 *
 * One codec for every message of the contract, used by the REST routes, Connect (application/json)
 * and SSE: nothing here is specific to a message. Well-known types get their JSON forms:
 * Struct/Value/ListValue (plain JSON), Timestamp (RFC 3339), Duration ("1.5s"), the wrappers
 * (the bare value, or null), Empty ({}), FieldMask ("a.b,c"), Any is not supported.
 *
 * Encoding options choose the REST (M7) shape or canonical proto3 JSON:
 *  - field names: proto names (snake_case, REST) or lowerCamelCase json_name (Connect, canonical);
 *  - int64/uint64/fixed64: JSON numbers (REST) or strings (canonical);
 *  - unset singular message fields and wrappers: explicit null (REST; every field present) or
 *    omitted (canonical); scalars at their default: always emitted (REST) or omitted (canonical);
 *  - Timestamps: always with exactly 6 fractional digits and Z (REST), or canonical (0, 3, 6 or 9
 *    digits).
 * Decoding always accepts both field-name styles, numbers or strings for 64-bit integers, enum
 * names or numbers, and ignores unknown fields. Limits: nesting depth, total input size.
 *
 * Details both directions share:
 *  - protobuf-c descriptors carry neither json_name nor the map_entry option: the json name is
 *    computed with protoc's rule (drop each '_' and capitalise the letter after it), and a map
 *    field is a repeated field of the entry type protoc generates ("<Msg>.<CamelField>Entry" with
 *    key = 1, value = 2). Maps are JSON objects; map entries are written in their order, duplicates
 *    included.
 *  - Enums are written by name (a number the enum does not know: as a number) in both shapes;
 *    google.protobuf.NullValue is null.
 *  - bytes are standard base64 with padding; decoding also takes URL-safe and unpadded forms.
 *  - double/float: NaN and infinities are the strings "NaN", "Infinity", "-Infinity" (numeric
 *    strings are accepted on input too); inside a Struct they have no JSON form.
 *  - Oneofs: only the member that is set is written (also in the REST shape); two members in one
 *    input is an error. Unset proto2/proto3-optional scalars are null in the REST shape.
 *  - Decoding integers: JSON numbers or strings holding one, exact (never through a double), with
 *    1.0 and 1e2 accepted and 1.5 rejected; out of range for the field's kind is an error.
 *  - JSON null: a message or wrapper field stays unset, a scalar keeps its default, a repeated
 *    field is empty; a google.protobuf.Value field becomes a null Value. null is rejected inside
 *    arrays (except for Value elements). A member given twice (either name style): the last wins.
 *  - Strings must be valid UTF-8; \u0000 is rejected because protobuf-c strings are C strings.
 *
 * Memory: decoded messages live in the given arena (protobuf-c structures initialised with their
 * descriptors, so protobuf_c_message_pack works on them); encoded JSON is appended to the caller's
 * pins_buf (common/buf.h), whose maximum bounds it.
 *
 * Struct, Value and ListValue are parsed and written by common/pbstruct.h, pinsd's one codec for
 * them (the stores use it too); this codec hands it the position, depth and arena budget and words
 * its failures. jansson is not used here.
 */
#ifndef PINS_PROTOCOLS_JSON_H
#define PINS_PROTOCOLS_JSON_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/arena.h"
#include "common/buf.h"

typedef struct proto_json_options {
    bool proto_names;     /* snake_case names (REST) instead of lowerCamelCase */
    bool int64_as_number; /* int64 as JSON numbers (REST) instead of strings */
    bool emit_defaults;   /* every field present: defaults emitted, unset messages as null */
    bool fixed_micros;    /* Timestamps with exactly 6 fractional digits (REST) */
} proto_json_options;

/* The REST shape (API.md section 3) and canonical proto3 JSON (Connect). */
extern const proto_json_options proto_json_rest;
extern const proto_json_options proto_json_canonical;

/* Appends msg as JSON to out (compact, fields in field-number order). msg is borrowed. On failure
 * out's length is back to where it was. Returns 0, PINS_ENOMEM, PINS_ETOO_LARGE (past out's
 * maximum), PINS_EINTERNAL (a value with no JSON form: a NaN inside a Struct, a string that is not
 * UTF-8, a Timestamp outside years 1..9999, a Value with no kind, google.protobuf.Any). */
int proto_json_encode(const ProtobufCMessage *msg, const proto_json_options *opt, pins_buf *out);

/* Why decoding failed, for the client. */
typedef struct proto_json_error {
    char path[128];  /* the field where it failed, e.g. "value.a" or "ttl_seconds" ("" at top) */
    char msg[160];   /* lower case reason, e.g. "expected a number" */
    bool type_error; /* true: malformed JSON ("invalid json: ..."), or a value of the wrong JSON
                        type (REST answers 400); false: a well-formed value the field cannot
                        take (out of range, fraction, bad timestamp or base64, unknown enum name,
                        \u0000, nesting too deep, two members of a oneof: REST answers 422). */
    const char *expected; /* with type_error: the input is well-formed JSON, and the value at
                             path has the wrong type: this was expected ("an object", "a string",
                             ...; static). NULL for malformed JSON and every other failure. */
} proto_json_error;

/* Parses json[0..len) as a message of type desc into a in the arena. max_depth bounds nesting
 * (a pin value's plus the message's own levels: callers pass PINS_REQUEST_JSON_DEPTH of
 * common/limits.h); the request object itself
 * is depth 1 and every nested object or array adds 1; values above 256 are treated as 256. The
 * input is strict RFC 8259 (one value, optional surrounding whitespace, no BOM) and json is
 * borrowed. Returns 0 and *pmsg, or PINS_EMALFORMED (syntax, wrong types, bad values: *perr says
 * where), PINS_ENOMEM / PINS_ETOO_LARGE (the arena is full). *pmsg is untouched on failure; *perr
 * (may be NULL) is written only on failure. An empty or all-whitespace input decodes as the empty
 * message. */
int proto_json_decode(pins_arena *a, const ProtobufCMessageDescriptor *desc, const char *json,
                      size_t len, int max_depth, ProtobufCMessage **pmsg, proto_json_error *perr);
/* As proto_json_decode, and the decode takes at most max_bytes of the arena (0: no bound but
 * the arena's limit): past that it stops with PINS_ETOO_LARGE, leaving the rest of the arena to
 * whoever answers the request. */
int proto_json_decode_bounded(pins_arena *a, const ProtobufCMessageDescriptor *desc,
                              const char *json, size_t len, int max_depth, size_t max_bytes,
                              ProtobufCMessage **pmsg, proto_json_error *perr);

/* Sets one field of msg (already decoded, arena-allocated) from a text value, as the REST
 * bridge binds path and query parameters: the field is found by proto name or json name, and a
 * dotted name ("pin.key") walks singular message fields, creating them in a when unset; strings
 * are taken as is (valid UTF-8 without NUL), numbers parsed as in JSON (also from "1e2"), bools
 * from true/false/1/0/yes/no/on/off in any case, enums by name or number, wrappers, Timestamps,
 * Durations and FieldMasks from their JSON text form; any other message field (Struct included)
 * is parsed as JSON text. A repeated field gets the value appended. value[0..value_len) is
 * borrowed. Returns 0, PINS_ENOT_FOUND (no such field), PINS_EMALFORMED (bad value, *perr says
 * why; type_error is set only for JSON text of the wrong type), PINS_ENOMEM / PINS_ETOO_LARGE. */
int proto_json_set_field(pins_arena *a, ProtobufCMessage *msg, const char *name, const char *value,
                         size_t value_len, proto_json_error *perr);

#endif
