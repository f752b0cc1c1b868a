/* tests/fuzz/fuzz_connect.c: libFuzzer target for the Connect protocol (protocols/connect.c): unary
 * bodies and the streaming envelopes, read by the envelope engine shared with gRPC-Web.
 *
 * Byte 0: bits 0-1 the method (Health/Check, reflection, MemoryPins GetPin, UpsertPin), bit 2
 * JSON instead of protobuf, bit 3 streaming (application/connect+proto|json), bit 4 HTTP/2, bit 5
 * a charset parameter on the content type. Byte 1: the size of the body pieces (proto_body) for
 * a streaming request. Then an optional header block ('H', "name: value" lines, an empty line;
 * see proto_harness.h), then the body.
 * Checked (tests/fuzz/proto_harness.h): every answer starts and ends once with the bytes it
 * declared; a unary answer is 200 with a message of the method's output type, or an error with
 * a JSON body (the Connect error object when it has a string code); a streaming answer is 200
 * with messages and one end-stream envelope last, or a refusal with a JSON body; and for the
 * methods that run without credentials, the answer to a streaming request is the same whether
 * the body arrives whole (HTTP/1.1) or in pieces (HTTP/2), unless it carries a deadline, whose
 * outcome depends on how long each run takes.
 *
 * Corpus: tests/fuzz/corpus/connect/.
 */
#include "proto_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    uint8_t cfg = data[0];
    size_t piece = (size_t)data[1] % 64 + 1;
    data += 2;
    size -= 2;
    size_t pi = cfg & 3;
    bool json = (cfg & 4) != 0, stream = (cfg & 8) != 0, http2 = (cfg & 16) != 0;
    static const char *const types[2][2][2] = {
        {{"application/proto", "application/proto; charset=utf-8"},
         {"application/json", "application/json; charset=utf-8"}},
        {{"application/connect+proto", "application/connect+proto; charset=utf-8"},
         {"application/connect+json", "application/connect+json; charset=utf-8"}},
    };
    harness_request req = {.path = harness_paths[pi],
                           .content_type = types[stream][json][(cfg >> 5) & 1]};
    char *store = malloc(size + 1);
    harness_check(store != NULL);
    size_t off = harness_headers(data, size, &req, store);
    req.body = data + off;
    req.len = size - off;
    const rpc_method *m = rpc_method_find(req.path, strlen(req.path));

    harness_capture whole;
    harness_run(&req, true, 0, http2, &whole);
    if (whole.status != 200) {
        harness_check_plain_refusal(&whole);
        json_t *j = NULL;
        harness_check(harness_json_object(whole.body, whole.len, &j));
        if (json_is_string(json_object_get(j, "code")))
            harness_check_connect_error(j);
        json_decref(j);
    } else if (!stream) {
        harness_check_message(m, json, whole.body, whole.len);
    } else {
        harness_check_envelopes(m, json, 0x02, whole.body, whole.len);
    }

    if (stream && pi < 2 && !harness_has_deadline(&req)) {
        harness_capture split;
        harness_run(&req, false, piece, http2, &split);
        harness_check(split.status == whole.status && split.len == whole.len);
        harness_check(whole.len == 0 || memcmp(split.body, whole.body, whole.len) == 0);
        harness_capture_free(&split);
    }
    harness_capture_free(&whole);
    free(store);
    return 0;
}
