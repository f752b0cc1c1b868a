/* tests/fuzz/fuzz_client_parse.c: libFuzzer target on libpins-client's gRPC response parser
 * (client/grpc_parse.c). The input is a script of records, each one opcode byte and one length
 * byte then that many bytes:
 *   op % 4 == 0: a header entry, the payload split at its first ':' after byte 0 into name and
 *                value (so ":status" and friends are reachable);
 *   op % 4 == 1: the end of a header block;
 *   op % 4 == 2: a DATA chunk;
 *   op % 4 == 3: a DATA chunk fed one byte at a time.
 * Then END_STREAM: the parse is finished into a status, which is checked and cleared. Messages
 * are unpacked as GetPinResponse, as the connection would. Limits are small so that the
 * RESOURCE_EXHAUSTED paths are reached. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "client/grpc_parse.h"

static int on_msg(void *arg, const uint8_t *data, size_t len)
{
    (void)arg;
    ProtobufCMessage *m =
        protobuf_c_message_unpack(&memorypins__v1__get_pin_response__descriptor, NULL, len, data);
    if (m == NULL)
        return PINS_CODE_INTERNAL;
    protobuf_c_message_free_unpacked(m, NULL);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    client__parse p;
    client__parse_init(&p, 1024, 512);
    while (size >= 2) {
        uint8_t op = data[0];
        size_t n = data[1];
        data += 2;
        size -= 2;
        if (n > size)
            n = size;
        const uint8_t *pl = data;
        data += n;
        size -= n;
        switch (op % 4) {
        case 0: {
            const uint8_t *colon = n > 1 ? memchr(pl + 1, ':', n - 1) : NULL;
            size_t nl = colon != NULL ? (size_t)(colon - pl) : n;
            size_t vo = colon != NULL ? nl + 1 : n;
            client__parse_header(&p, (const char *)pl, nl, (const char *)pl + vo, n - vo);
            break;
        }
        case 1:
            client__parse_end_block(&p);
            break;
        case 2:
            client__parse_data(&p, pl, n, on_msg, NULL);
            break;
        default:
            for (size_t i = 0; i < n; i++)
                client__parse_data(&p, pl + i, 1, on_msg, NULL);
            break;
        }
    }
    pins_status st = PINS_STATUS_INIT;
    int code = client__parse_finish(&p, &st);
    if (code < 0 || code > 16 || st.code != code || st.message == NULL)
        abort();
    (void)pins_status_metadata(&st, "x-request-id");
    for (size_t i = 0; i < st.headers.count + st.trailers.count; i++) {
        const pins_metadata *m =
            i < st.headers.count ? &st.headers.items[i] : &st.trailers.items[i - st.headers.count];
        if (m->name == NULL || m->value == NULL || m->value[m->value_len] != '\0')
            abort();
    }
    pins_status_clear(&st);
    client__parse_free(&p);
    return 0;
}
