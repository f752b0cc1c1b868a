/* rpc/services/reply.h: what the MemoryPins and Admin handlers share to answer a call: the
 * failure for invalid request fields, the failure for a store outcome and the
 * google.protobuf.Timestamp of a store time. For the files of rpc/services/ only.
 */
#ifndef PINS_RPC_SERVICES_REPLY_H
#define PINS_RPC_SERVICES_REPLY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "google/protobuf/timestamp.pb-c.h"
#include "rpc/call.h"

#define RPC__COUNTOF(a) (sizeof(a) / sizeof((a)[0]))

/* A field of the request and the validate.h reason it is invalid, or NULL when it is valid. */
typedef struct rpc__field_check {
    const char *field;
    const char *why;
} rpc__field_check;

/* Fails call with PINS_EINVALID_ARGUMENT for the first of checks[0..n) that has a reason
 * (rpc_call_fail_field: "<field>: <why>") and returns false; returns true when none has one.
 * The checks are listed in the order the fields are reported. */
bool rpc__fields_valid_or_reply(rpc_call *call, const rpc__field_check *checks, size_t n);

/* Fails call for err, an error a store operation returned or delivered (never 0). With the key
 * of the operation, the domain outcomes keep the wording clients match: PINS_ENOT_FOUND
 * "Pin not found: <key>", PINS_EALREADY_EXISTS "Pin already exists: <key>", PINS_EABORTED
 * "Version conflict on pin: <key>". Every other error (and every error when key is NULL) is
 * "<what> failed: <reason>"; for a server fault the log also gets the store's own text
 * (store_session_last_error), while the client gets the generic message of rpc_call_fail.
 * what and key are borrowed for the call. */
void rpc__fail_store(rpc_call *call, int err, const char *what, const char *key);

/* A new Timestamp in a for us (microseconds since the Unix epoch; nanos never negative, as the
 * type requires). Returns NULL when out of memory. */
Google__Protobuf__Timestamp *rpc__timestamp_new(pins_arena *a, int64_t us);

#endif
