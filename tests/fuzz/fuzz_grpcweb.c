/* tests/fuzz/fuzz_grpcweb.c: libFuzzer target for gRPC-Web (protocols/grpcweb.c and the envelope
 * engine of protocols/connect.c).
 *
 * Byte 0: bits 0-1 the method (Health/Check, reflection, MemoryPins GetPin, UpsertPin), bits 2-4
 * the content type (application/grpc-web, +proto, +json, grpc-web-text, grpc-web-text+proto),
 * bit 5 HTTP/2, bit 6 a text body sent as the input is instead of base64-encoded here. Byte 1:
 * the size of the body pieces (proto_body). Then an optional header block ('H', "name: value"
 * lines, an empty line; see proto_harness.h), then the body.
 * Checked (tests/fuzz/proto_harness.h): every answer starts and ends once with the bytes it
 * declared; it is 200 with messages of the method's output type and one trailer frame last
 * ("grpc-status:N" first, "name:value\r\n" lines; base64 for the text types), or a refusal with a
 * JSON body; and for the methods that run without credentials, the answer is the same whether
 * the body arrives whole (HTTP/1.1) or in pieces (HTTP/2), unless it carries a deadline, whose
 * outcome depends on how long each run takes.
 *
 * Corpus: tests/fuzz/corpus/grpcweb/.
 */
#include "proto_harness.h"

#include "../unit/support/b64enc.h"

#include <strings.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char b64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/* Standard base64 with padding of p[0..len) into a new malloc'd buffer; *pn gets its length. */
static uint8_t *base64(const uint8_t *p, size_t len, size_t *pn)
{
    char *out = malloc((len + 2) / 3 * 4 + 1);
    harness_check(out != NULL);
    *pn = b64enc(p, len, false, out);
    return (uint8_t *)out;
}

/* Decodes a text answer: base64 quads, where padding may end one written chunk and another
 * chunk follow. Aborts on anything else. */
static uint8_t *unbase64(const uint8_t *p, size_t len, size_t *pn)
{
    harness_check(len % 4 == 0);
    uint8_t *out = malloc(len / 4 * 3 + 1);
    harness_check(out != NULL);
    size_t n = 0;
    for (size_t i = 0; i < len; i += 4) {
        uint32_t v = 0;
        int pad = 0;
        for (int k = 0; k < 4; k++) {
            const char *q = p[i + k] != '\0' ? strchr(b64, p[i + k]) : NULL;
            if (p[i + k] == '=' && k >= 2) {
                pad++;
                v <<= 6;
                continue;
            }
            harness_check(q != NULL && pad == 0);
            v = v << 6 | (uint32_t)(q - b64);
        }
        out[n++] = (uint8_t)(v >> 16);
        if (pad < 2)
            out[n++] = (uint8_t)(v >> 8);
        if (pad < 1)
            out[n++] = (uint8_t)v;
    }
    *pn = n;
    return out;
}

/* Checks one answer of a request of content type ct. */
static void check_answer(const rpc_method *m, bool json, const harness_capture *c)
{
    if (c->status != 200) {
        harness_check_plain_refusal(c);
        return;
    }
    if (strncasecmp(c->content_type, "application/grpc-web-text", 25) == 0) {
        size_t n;
        uint8_t *raw = unbase64(c->body, c->len, &n);
        harness_check_envelopes(m, json, 0x80, raw, n);
        free(raw);
        return;
    }
    harness_check_envelopes(m, json, 0x80, c->body, c->len);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2)
        return 0;
    static const char *const types[] = {
        "application/grpc-web",      "application/grpc-web+proto",      "application/grpc-web+json",
        "application/grpc-web-text", "application/grpc-web-text+proto",
    };
    uint8_t cfg = data[0];
    size_t piece = (size_t)data[1] % 64 + 1;
    data += 2;
    size -= 2;
    size_t pi = cfg & 3, ti = ((size_t)cfg >> 2 & 7) % (sizeof(types) / sizeof(types[0]));
    bool http2 = (cfg & 32) != 0, raw = (cfg & 64) != 0;
    bool json = ti == 2, text = ti >= 3;
    harness_request req = {.path = harness_paths[pi], .content_type = types[ti]};
    char *store = malloc(size + 1);
    harness_check(store != NULL);
    size_t off = harness_headers(data, size, &req, store);
    uint8_t *encoded = NULL;
    req.body = data + off;
    req.len = size - off;
    if (text && !raw) {
        encoded = base64(req.body, req.len, &req.len);
        req.body = encoded;
    }
    const rpc_method *m = rpc_method_find(req.path, strlen(req.path));

    harness_capture whole;
    harness_run(&req, true, 0, http2, &whole);
    check_answer(m, json, &whole);
    if (pi < 2 && !harness_has_deadline(&req)) {
        harness_capture split;
        harness_run(&req, false, piece, http2, &split);
        check_answer(m, json, &split);
        harness_check(split.status == whole.status);
        if (!text) {
            /* A text answer may be cut into base64 chunks differently; the binary one may not. */
            harness_check(split.len == whole.len);
            harness_check(whole.len == 0 || memcmp(split.body, whole.body, whole.len) == 0);
        }
        harness_capture_free(&split);
    }
    harness_capture_free(&whole);
    free(encoded);
    free(store);
    return 0;
}
