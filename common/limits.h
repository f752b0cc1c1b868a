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
 *   RPC_MAX_PROTO_DEPTH (rpc/core.h)         200: PINS_VALUE_WIRE_DEPTH and some room
 *   PROTO__JSON_MAX_DEPTH                    100: the value and the request's own JSON levels
 *   (protocols/protocols_int.h)
 */
#ifndef PINS_COMMON_LIMITS_H
#define PINS_COMMON_LIMITS_H

#define PINS_VALUE_MAX_DEPTH  64
#define PINS_VALUE_WIRE_DEPTH (1 + 3 * PINS_VALUE_MAX_DEPTH)

#endif
