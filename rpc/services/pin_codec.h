/* rpc/services/pin_codec.h: a direct protobuf encoder for the responses that carry one Pin.
 *
 * When the store hands out the value already packed as a google.protobuf.Struct (its read cache
 * keeps it), GetPin and UpsertPin answers are written straight from the store row: no Struct is
 * built and protobuf-c's reflective packer is skipped. The bytes are exactly what protobuf-c
 * would produce for the same message (field order, proto3 default omission).
 */
#ifndef PINS_RPC_SERVICES_PIN_CODEC_H
#define PINS_RPC_SERVICES_PIN_CODEC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/arena.h"
#include "store/store.h"

/* Encodes GetPinResponse{pin} (created < 0) or UpsertPinResponse{pin, created} (created 0 or 1)
 * for pin, whose value is value_pb[0..value_pb_len) (a packed Struct). The bytes live in a.
 * Returns 0 or PINS_ENOMEM. */
int pin_codec_encode_response(pins_arena *a, const store_pin *pin, const uint8_t *value_pb,
                              size_t value_pb_len, int created, uint8_t **pbuf, size_t *plen);

/* Encodes WatchPinsResponse{type, pin} (type 1..3: put, delete, expire). */
int pin_codec_encode_event(pins_arena *a, const store_pin *pin, const uint8_t *value_pb,
                           size_t value_pb_len, int type, uint8_t **pbuf, size_t *plen);

#endif
