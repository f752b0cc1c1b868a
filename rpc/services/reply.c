/* rpc/services/reply.c: the field and store-outcome failures and the Timestamp builder that
 * memory_pins.c and admin.c share, so that one wording and one rounding serve every handler. */
#include "rpc/services/reply.h"

#include "store/store.h"

bool rpc__fields_valid_or_reply(rpc_call *call, const rpc__field_check *checks, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        if (checks[i].why != NULL) {
            rpc_call_fail_field(call, PINS_EINVALID_ARGUMENT, checks[i].field, "%s", checks[i].why);
            return false;
        }
    }
    return true;
}

void rpc__fail_store(rpc_call *call, int err, const char *what, const char *key)
{
    if (key != NULL && err == PINS_ENOT_FOUND)
        rpc_call_fail(call, err, "Pin not found: %s", key);
    else if (key != NULL && err == PINS_EALREADY_EXISTS)
        rpc_call_fail(call, err, "Pin already exists: %s", key);
    else if (key != NULL && err == PINS_EABORTED)
        rpc_call_fail(call, err, "Version conflict on pin: %s", key);
    else if (err == PINS_ESTORE || err == PINS_EINTERNAL || err == PINS_ENOMEM)
        rpc_call_fail(call, err, "%s failed: %s (%s)", what, pins_strerror(err),
                      store_session_last_error(rpc_call_store(call)));
    else
        rpc_call_fail(call, err, "%s failed: %s", what, pins_strerror(err));
}

Google__Protobuf__Timestamp *rpc__timestamp_new(pins_arena *a, int64_t us)
{
    Google__Protobuf__Timestamp *ts = pins_arena_alloc(a, sizeof(*ts));
    if (ts == NULL)
        return NULL;
    google__protobuf__timestamp__init(ts);
    /* Floor division, so that a time before the epoch has nanos in [0, 1e9). */
    int64_t secs = us >= 0 ? us / 1000000 : (us - 999999) / 1000000;
    ts->seconds = secs;
    ts->nanos = (int32_t)((us - secs * 1000000) * 1000);
    return ts;
}
