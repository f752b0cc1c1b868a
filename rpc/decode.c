/* rpc/decode.c: request decoding shared by every transport that receives protobuf bytes. */
#include "rpc/rpc_int.h"

#include "common/pbwire.h"

int rpc__call_decode(rpc_call *call, const ProtobufCMessageDescriptor *desc, const uint8_t *p,
                     size_t len, ProtobufCMessage **pmsg, const char **pwhy)
{
    const ProtobufCFieldDescriptor *bad = NULL;
    if (pbwire_check_ex(p, len, desc, RPC__MAX_PROTO_DEPTH, &bad) != 0) {
        if (bad != NULL) {
            rpc_call_set_error_detail(call, "body", bad->name, "value_error");
            *pwhy = pins_arena_printf(call->arena, "%s: must be valid UTF-8 without NUL characters",
                                      bad->name);
        } else {
            *pwhy = "request message is not valid protobuf for its type (or nested too deep)";
        }
        if (*pwhy == NULL)
            *pwhy = pins_strerror(PINS_EINVALID_ARGUMENT);
        return PINS_EINVALID_ARGUMENT;
    }
    ProtobufCAllocator alloc = pins_arena_allocator(call->arena);
    ProtobufCMessage *msg = protobuf_c_message_unpack(desc, &alloc, len, p);
    if (msg == NULL) {
        if (pins_arena_limit(call->arena) != 0 &&
            pins_arena_used(call->arena) + len >= pins_arena_limit(call->arena) / 2) {
            *pwhy = "request message too large to decode";
            return PINS_ETOO_LARGE;
        }
        *pwhy = "request message is not valid protobuf for its type";
        return PINS_EINVALID_ARGUMENT;
    }
    *pmsg = msg;
    return 0;
}
