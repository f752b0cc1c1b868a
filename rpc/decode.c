/* rpc/decode.c: request decoding shared by every transport that receives protobuf bytes.
 *
 * The decoded form of a message can be many times its wire size (a google.protobuf.Value in a
 * list is 2 to 11 bytes on the wire and about 110 in the arena once protobuf-c unpacked it), and
 * the handler then needs the call's arena for its own copies (the packed value it stores, the
 * packed reply). So a request may take at most half of the arena's limit once decoded; a larger
 * one is refused as too large (RESOURCE_EXHAUSTED) before any handler runs, instead of the
 * handler failing later with the server out of memory. JSON requests get a quarter
 * (protocols/protocols.c): their replies are unpacked once more to be written as JSON. */
#include "rpc/rpc_int.h"

#include "common/pbwire.h"

#define DECODE_SHARE 2

/* A protobuf-c allocator over the call's arena that hands out at most `left` bytes. */
typedef struct budget {
    pins_arena *arena;
    size_t left;
    bool refused; /* an allocation failed: over the budget, the arena's limit, or malloc */
} budget;

static void *budget_alloc(void *data, size_t size)
{
    budget *b = data;
    void *p = size <= b->left ? pins_arena_alloc(b->arena, size) : NULL;
    if (p == NULL) {
        b->refused = true;
        return NULL;
    }
    b->left -= size;
    return p;
}

static void budget_free(void *data, void *p)
{
    (void)data;
    (void)p; /* the arena frees everything with the call */
}

int rpc_call_decode(rpc_call *call, const ProtobufCMessageDescriptor *desc, const uint8_t *p,
                    size_t len, ProtobufCMessage **pmsg, const char **pwhy)
{
    const ProtobufCFieldDescriptor *bad = NULL;
    if (pbwire_check_ex(p, len, desc, RPC_MAX_PROTO_DEPTH, &bad) != 0) {
        if (bad != NULL) {
            call->field_error = (rpc_field_error){.field = bad->name};
            *pwhy = pins_arena_printf(call->arena, "%s: must be valid UTF-8 without NUL characters",
                                      bad->name);
        } else {
            *pwhy = "request message is not valid protobuf for its type (or nested too deep)";
        }
        if (*pwhy == NULL)
            *pwhy = pins_strerror(PINS_EINVALID_ARGUMENT);
        return PINS_EINVALID_ARGUMENT;
    }
    size_t limit = pins_arena_limit(call->arena);
    budget b = {.arena = call->arena, .left = limit != 0 ? limit / DECODE_SHARE : SIZE_MAX};
    ProtobufCAllocator alloc = {.alloc = budget_alloc, .free = budget_free, .allocator_data = &b};
    ProtobufCMessage *msg = protobuf_c_message_unpack(desc, &alloc, len, p);
    if (msg == NULL) {
        /* The wire check passed: protobuf-c ran out of the decode's share of memory, or refused
         * something the check lets through (a scalar sent with another wire type). The share
         * stops the decode with half of the arena left, so the error can still be answered. */
        if (b.refused) {
            *pwhy = "request message too large to decode";
            return PINS_ETOO_LARGE;
        }
        *pwhy = "request message is not valid protobuf for its type";
        return PINS_EINVALID_ARGUMENT;
    }
    *pmsg = msg;
    return 0;
}
