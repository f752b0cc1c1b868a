/* common/limits.h: the limit of the API contract that every nesting bound derives from.
 *
 * A pin's value, a google.protobuf.Struct, nests at most PINS_VALUE_MAX_DEPTH levels (API.md
 * section 4; the Struct itself is level 1, each nested object or array adds one). The bounds that
 * keep hostile nesting off the stack all follow from it, so that raising it raises them:
 *   PINS_VALUE_WIRE_DEPTH                    the protobuf nesting of a request carrying such a
 *                                            value: the request, then 3 per JSON level (Struct,
 *                                            FieldsEntry, Value): 1 + 3 * 64 = 193
 *   PBSTRUCT_MAX_DEPTH (common/pbstruct.h)   4 * 64: the Struct codec's recursion bound, whatever
 *                                            a caller asks
 *   PBWIRE_MAX_DEPTH (common/pbwire.h)       8 * 64: the frames of the wire pre-check
 *   PINS_REQUEST_WIRE_DEPTH                  200: PINS_VALUE_WIRE_DEPTH and room for the
 *                                            request's own levels; RPC_MAX_PROTO_DEPTH
 *                                            (rpc/core.h) is this
 *   PINS_REQUEST_JSON_DEPTH                  100: the value and room for the request's own JSON
 *                                            levels; PROTO__JSON_MAX_DEPTH
 *                                            (protocols/protocols_int.h) and the REST binding of
 *                                            query values (protocols/json.c) are this
 * Both "room" terms are what the hand-written 200 and 100 left above the value; they are written
 * here once, and the layers above name these macros instead of numbers.
 */
#ifndef PINS_COMMON_LIMITS_H
#define PINS_COMMON_LIMITS_H

#define PINS_VALUE_MAX_DEPTH  64
#define PINS_VALUE_WIRE_DEPTH (1 + 3 * PINS_VALUE_MAX_DEPTH)

/* Nesting a request may have around the deepest value, in protobuf frames and in JSON levels. */
#define PINS_REQUEST_WIRE_DEPTH (PINS_VALUE_WIRE_DEPTH + 7)
#define PINS_REQUEST_JSON_DEPTH (PINS_VALUE_MAX_DEPTH + 36)

#endif
