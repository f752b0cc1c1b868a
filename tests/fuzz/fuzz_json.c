/* tests/fuzz/fuzz_json.c: libFuzzer target for the JSON -> protobuf codec (protocols/json.c).
 *
 * Every input is decoded as UpsertPinRequest and as ListPinsRequest, the two request bodies and
 * query shapes a REST peer controls. A decoded message must encode in both shapes, its canonical
 * JSON must decode again and encode to the same text, and its protobuf binary must unpack to a
 * message with that same JSON. A failure must be one of the documented codes with a reason.
 * Anything else aborts, so libFuzzer reports it; ASan and UBSan catch the rest, and leaks are
 * checked at exit.
 *
 * Run: build-fuzz/tests/fuzz/fuzz_json -dict=tests/fuzz/json.dict tests/fuzz/corpus/json
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "protocols/json.h"
#include "common/arena.h"
#include "common/error.h"
#include "memorypins/v1/memory_pins.pb-c.h"

#define ARENA_LIMIT (16u << 20)
#define DEPTH       100

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok)
{
    if (!ok)
        abort();
}

static bool same(const pins_buf *x, const pins_buf *y)
{
    return pins_buf_len(x) == pins_buf_len(y) &&
           memcmp(pins_buf_ptr(x), pins_buf_ptr(y), pins_buf_len(x)) == 0;
}

/* The message's canonical JSON must survive JSON and binary round trips unchanged. */
static void round_trips(pins_arena *a, const ProtobufCMessageDescriptor *desc,
                        const ProtobufCMessage *m)
{
    pins_buf rest, canon, again, unpacked;
    pins_buf_init(&rest, SIZE_MAX);
    pins_buf_init(&canon, SIZE_MAX);
    pins_buf_init(&again, SIZE_MAX);
    pins_buf_init(&unpacked, SIZE_MAX);
    proto_json_error err;
    check(proto_json_encode(m, &proto_json_rest, &rest) == 0);
    check(proto_json_encode(m, &proto_json_canonical, &canon) == 0);

    ProtobufCMessage *m2 = NULL;
    check(proto_json_decode(a, desc, pins_buf_ptr(&canon), pins_buf_len(&canon), DEPTH, &m2,
                            &err) == 0);
    check(proto_json_encode(m2, &proto_json_canonical, &again) == 0);
    check(same(&canon, &again));
    check(proto_json_decode(a, desc, pins_buf_ptr(&rest), pins_buf_len(&rest), DEPTH, &m2, &err) ==
          0);

    size_t n = protobuf_c_message_get_packed_size(m);
    uint8_t *wire = malloc(n + 1);
    check(wire != NULL);
    check(protobuf_c_message_pack(m, wire) == n);
    ProtobufCMessage *u = protobuf_c_message_unpack(desc, NULL, n, wire);
    check(u != NULL);
    check(proto_json_encode(u, &proto_json_canonical, &unpacked) == 0);
    check(same(&canon, &unpacked));
    protobuf_c_message_free_unpacked(u, NULL);
    free(wire);

    pins_buf_free(&rest);
    pins_buf_free(&canon);
    pins_buf_free(&again);
    pins_buf_free(&unpacked);
}

static void one(const ProtobufCMessageDescriptor *desc, const uint8_t *data, size_t size)
{
    pins_arena *a = pins_arena_new(ARENA_LIMIT);
    if (a == NULL)
        return;
    ProtobufCMessage *m = NULL;
    proto_json_error err;
    memset(&err, 0, sizeof(err));
    int rv = proto_json_decode(a, desc, (const char *)data, size, DEPTH, &m, &err);
    if (rv == 0) {
        check(m != NULL && m->descriptor == desc);
        round_trips(a, desc, m);
    } else {
        check(rv == PINS_EMALFORMED || rv == PINS_ETOO_LARGE || rv == PINS_ENOMEM);
        check(m == NULL);
        check(err.msg[0] != '\0' && memchr(err.msg, '\0', sizeof(err.msg)) != NULL);
        check(memchr(err.path, '\0', sizeof(err.path)) != NULL);
    }
    pins_arena_free(a);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    one(&memorypins__v1__upsert_pin_request__descriptor, data, size);
    one(&memorypins__v1__list_pins_request__descriptor, data, size);
    return 0;
}
