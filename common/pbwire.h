/* common/pbwire.h: a linear pre-check of protobuf wire format before unpacking.
 *
 * protobuf_c_message_unpack() recurses once per nested message without a limit, so a hostile
 * 4 MiB request that nests a Struct half a million levels deep would exhaust the stack. Every
 * transport therefore runs pbwire_check() on a request's bytes before unpacking them. The check
 * walks the wire format once, without recursion and without allocating, and descends into a
 * length-delimited field only when the descriptor says the field is a message; unknown fields and
 * every other field are skipped by their wire type.
 *
 * Depth. The top-level message is depth 1 and every nested message adds 1; map entries are
 * messages. So UpsertPinRequest.value (a Struct) is depth 2, and each further JSON level of a pin
 * value costs 3 (Struct -> FieldsEntry -> Value) for an object member and 2 (ListValue -> Value)
 * for an array element. A JSON depth of 64 inside UpsertPinRequest needs at most
 * 1 + 3 * 64 = 193 levels. A max_depth above PBWIRE_MAX_DEPTH is treated as PBWIRE_MAX_DEPTH.
 */
#ifndef PINS_COMMON_PBWIRE_H
#define PINS_COMMON_PBWIRE_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "common/limits.h"

/* The deepest nesting pbwire_check() follows, whatever max_depth says: eight times a pin value's
 * (common/limits.h), 512, which holds a request carrying the deepest value (PINS_VALUE_WIRE_DEPTH,
 * 193). */
#define PBWIRE_MAX_DEPTH (8 * PINS_VALUE_MAX_DEPTH)

/* Checks that buf[0..len) is well-formed protobuf wire format for desc whose messages nest at most
 * max_depth deep. Malformed means: a varint longer than 10 bytes (5 for a tag) or cut short, field
 * number 0, a length or fixed-size field running past the end of its enclosing message, wire type
 * 3 or 4 (groups), 6 or 7, a message field not sent as length-delimited, or a string field that
 * is not valid UTF-8 or holds a NUL byte. buf and desc are
 * borrowed; nothing is allocated.
 * Returns 0, or PINS_EINVALID_ARGUMENT when the bytes are malformed or nest deeper than max_depth
 * (a max_depth below 1 rejects everything). */
int pbwire_check(const uint8_t *buf, size_t len, const ProtobufCMessageDescriptor *desc,
                 int max_depth);
/* As pbwire_check(); when a string field is the reason, *pbad (if pbad is not NULL) gets the
 * top-level field of desc that holds it (the string itself, or the message field it is nested in;
 * borrowed from desc), and NULL for every other reason. */
int pbwire_check_ex(const uint8_t *buf, size_t len, const ProtobufCMessageDescriptor *desc,
                    int max_depth, const ProtobufCFieldDescriptor **pbad);

#endif
