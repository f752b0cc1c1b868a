/* tests/fuzz/fuzz_pbwire.c: libFuzzer target for the protobuf wire pre-check (common/pbwire.c)
 * and the unpacking behind it (rpc/decode.c: pre-check, then protobuf-c into the call's arena).
 *
 * Input: byte 0 picks the message type (request types a peer sends, and the Struct types a pin
 * value nests), byte 1 the depth limit, byte 2 the arena limit; the rest is the wire bytes.
 * Checked:
 *   - pbwire_check() and pbwire_check_ex() agree and answer 0 or PINS_EINVALID_ARGUMENT; a field
 *     named as the reason is a top-level field of the type and comes with a rejection;
 *   - a depth limit below 1 rejects everything, and acceptance only grows with the limit;
 *   - bytes the check accepts are unpacked as rpc/decode.c does (arena allocator, the arena
 *     limit may make it fail midway: that must be a clean NULL); an unpacked message packs to
 *     bytes the check accepts at the same limit, which unpack and pack again to the same bytes.
 * Anything else aborts so that libFuzzer reports it; ASan catches a stack overflow in unpacking
 * that the pre-check should have stopped.
 *
 * Corpus: tests/fuzz/corpus/pbwire/.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "common/arena.h"
#include "common/error.h"
#include "common/pbwire.h"
#include "google/protobuf/struct.pb-c.h"
#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "memorypins/v1/admin.pb-c.h"
#include "memorypins/v1/memory_pins.pb-c.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const ProtobufCMessageDescriptor *const types[] = {
    &memorypins__v1__upsert_pin_request__descriptor,
    &memorypins__v1__get_pin_request__descriptor,
    &memorypins__v1__list_pins_request__descriptor,
    &memorypins__v1__delete_pin_request__descriptor,
    &memorypins__v1__watch_pins_request__descriptor,
    &memorypins__v1__list_rbac_audit_request__descriptor,
    &memorypins__v1__pin__descriptor,
    &google__protobuf__struct__descriptor,
    &google__protobuf__value__descriptor,
    &google__protobuf__list_value__descriptor,
    &grpc__health__v1__health_check_request__descriptor,
    &grpc__reflection__v1__server_reflection_request__descriptor,
};

static void check(bool ok)
{
    if (!ok)
        abort();
}

static int precheck(const uint8_t *p, size_t n, const ProtobufCMessageDescriptor *desc, int depth)
{
    const ProtobufCFieldDescriptor *bad = (const ProtobufCFieldDescriptor *)&bad;
    int rv = pbwire_check_ex(p, n, desc, depth, &bad);
    check(rv == 0 || rv == PINS_EINVALID_ARGUMENT);
    check(pbwire_check(p, n, desc, depth) == rv);
    if (bad != NULL) {
        check(rv != 0);
        check(bad >= desc->fields && bad < desc->fields + desc->n_fields);
    }
    return rv;
}

/* Packs m into a new malloc'd buffer; *pn gets its length. */
static uint8_t *pack(const ProtobufCMessage *m, size_t *pn)
{
    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *out = malloc(n + 1);
    check(out != NULL);
    check(protobuf_c_message_pack(m, out) == n);
    *pn = n;
    return out;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 3)
        return 0;
    const ProtobufCMessageDescriptor *desc = types[data[0] % (sizeof(types) / sizeof(types[0]))];
    int depth = data[1] < 250 ? data[1] : PBWIRE_MAX_DEPTH + data[1] - 250; /* 0..517 */
    size_t limit = data[2] == 0 ? (size_t)64 << 20 : (size_t)data[2] * 64;
    data += 3;
    size -= 3;

    int rv = precheck(data, size, desc, depth);
    if (depth < 1)
        check(rv != 0);
    if (rv == 0)
        check(precheck(data, size, desc, PBWIRE_MAX_DEPTH) == 0);
    if (rv != 0)
        return 0;

    pins_arena *a = pins_arena_new(limit);
    check(a != NULL);
    ProtobufCAllocator alloc = pins_arena_allocator(a);
    ProtobufCMessage *m = protobuf_c_message_unpack(desc, &alloc, size, data);
    if (m == NULL) {
        pins_arena_free(a);
        return 0;
    }
    check(m->descriptor == desc);
    size_t n1, n2;
    uint8_t *w1 = pack(m, &n1);
    check(precheck(w1, n1, desc, depth) == 0);
    ProtobufCMessage *m2 = protobuf_c_message_unpack(desc, NULL, n1, w1);
    check(m2 != NULL);
    uint8_t *w2 = pack(m2, &n2);
    check(n1 == n2 && memcmp(w1, w2, n1) == 0);
    protobuf_c_message_free_unpacked(m2, NULL);
    free(w1);
    free(w2);
    pins_arena_free(a);
    return 0;
}
