/* bridge/json.h: the descriptor-driven proto3 JSON codec
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
 * Memory: decoded messages live in the given arena (protobuf-c structures initialised with their
 * descriptors, so protobuf_c_message_pack works on them); encoded JSON is appended to a growable
 * buffer (bridge_buf) that the caller frees.
 */
#ifndef PINS_BRIDGE_JSON_H
#define PINS_BRIDGE_JSON_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/arena.h"

/* A growable byte buffer. Zero-initialise; free data with free(). */
typedef struct bridge_buf {
    char *data;
    size_t len;
    size_t cap;
    size_t max; /* 0: unlimited; appending past max fails with PINS_ETOO_LARGE */
} bridge_buf;

/* Appends n bytes. Returns 0, PINS_ENOMEM or PINS_ETOO_LARGE. */
int bridge_buf_append(bridge_buf *b, const void *data, size_t n);
/* Frees the buffer's memory and zeroes it. */
void bridge_buf_free(bridge_buf *b);

typedef struct bridge_json_options {
    bool proto_names;     /* snake_case names (REST) instead of lowerCamelCase */
    bool int64_as_number; /* int64 as JSON numbers (REST) instead of strings */
    bool emit_defaults;   /* every field present: defaults emitted, unset messages as null */
    bool fixed_micros;    /* Timestamps with exactly 6 fractional digits (REST) */
} bridge_json_options;

/* The REST shape (API.md section 3) and canonical proto3 JSON (Connect). */
extern const bridge_json_options bridge_json_rest;
extern const bridge_json_options bridge_json_canonical;

/* Appends msg as JSON to out. Returns 0, PINS_ENOMEM, PINS_ETOO_LARGE, PINS_EINTERNAL (a value
 * with no JSON form, e.g. a NaN inside a Struct). */
int bridge_json_encode(const ProtobufCMessage *msg, const bridge_json_options *opt,
                       bridge_buf *out);

/* Why decoding failed, for the client. */
typedef struct bridge_json_error {
    char path[128];  /* the field where it failed, e.g. "value.a" or "ttl_seconds" ("" at top) */
    char msg[160];   /* lower case reason, e.g. "expected a number" */
    bool type_error; /* a value of the wrong JSON type (REST answers 400 rather than 422) */
} bridge_json_error;

/* Parses json[0..len) as a message of type desc into a in the arena. max_depth bounds nesting
 * (64 for pin values plus the message's own levels: callers pass 100). Returns 0 and *pmsg, or
 * PINS_EMALFORMED (syntax, wrong types: *perr says where), PINS_ENOMEM / PINS_ETOO_LARGE (the
 * arena is full). An empty input decodes as the empty message. */
int bridge_json_decode(pins_arena *a, const ProtobufCMessageDescriptor *desc, const char *json,
                       size_t len, int max_depth, ProtobufCMessage **pmsg, bridge_json_error *perr);

/* Sets one field of msg (already decoded, arena-allocated) from a text value, as the REST
 * bridge binds path and query parameters: the field is found by proto name or json name; strings
 * are taken as is, numbers and bools parsed, wrappers and Timestamps set from their text form.
 * Returns 0, PINS_ENOT_FOUND (no such field), PINS_EMALFORMED (bad value, *perr says why),
 * PINS_ENOMEM. */
int bridge_json_set_field(pins_arena *a, ProtobufCMessage *msg, const char *name, const char *value,
                          size_t value_len, bridge_json_error *perr);

#endif
