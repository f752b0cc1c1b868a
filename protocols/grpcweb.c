/* protocols/grpcweb.c: what is specific to gRPC-Web
 * (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md); the envelopes themselves are
 * read and written by protocols/connect.c.
 *
 * Every gRPC-Web answer is HTTP 200 with the status in a trailer frame (flag 0x80) at the end of
 * the body, errors before any message included: the spec also allows a headers-only answer, but
 * one form is simpler for clients and works through every proxy and browser API.
 *
 * application/grpc-web-text (what the grpc-web browser client sends by default) carries the same
 * frames in base64, both ways. The request may be one base64 string or several padded ones
 * concatenated, split anywhere by the transport: it is decoded one 4-character quantum at a time.
 * The response encodes each frame as its own padded chunk, as grpc-web's reference proxies do, so
 * that a client decodes the body as it streams in.
 */
#include "protocols/protocols_int.h"

#include <stdlib.h>
#include <string.h>

static const char b64_alphabet[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

const char *proto__grpcweb_content_type(bool json, bool text)
{
    if (text)
        return "application/grpc-web-text+proto";
    return json ? "application/grpc-web+json" : "application/grpc-web+proto";
}

static int b64_value(uint8_t c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}

int proto__base64_quantum(const uint8_t q[4], uint8_t *out)
{
    int v0 = b64_value(q[0]), v1 = b64_value(q[1]);
    if (v0 < 0 || v1 < 0)
        return -1;
    int v2 = q[2] == '=' ? -2 : b64_value(q[2]);
    int v3 = q[3] == '=' ? -2 : b64_value(q[3]);
    if (v2 == -1 || v3 == -1 || (v2 == -2 && v3 != -2))
        return -1;
    out[0] = (uint8_t)(v0 << 2 | v1 >> 4);
    if (v2 == -2)
        return 1;
    out[1] = (uint8_t)((v1 & 15) << 4 | v2 >> 2);
    if (v3 == -2)
        return 2;
    out[2] = (uint8_t)((v2 & 3) << 6 | v3);
    return 3;
}

int proto__base64_envelope(const uint8_t hdr[5], const void *p, size_t len, char **pout,
                           size_t *plen)
{
    size_t total = 5 + len;
    if (len > SIZE_MAX / 2 - 8)
        return PINS_ENOMEM;
    char *out = malloc((total + 2) / 3 * 4 + 1);
    if (out == NULL)
        return PINS_ENOMEM;
    const uint8_t *body = p;
    size_t o = 0;
    uint8_t q[3];
    for (size_t i = 0; i < total; i += 3) {
        size_t k = total - i < 3 ? total - i : 3;
        for (size_t j = 0; j < 3; j++) {
            size_t at = i + j;
            q[j] = j >= k ? 0 : at < 5 ? hdr[at] : body[at - 5];
        }
        out[o++] = b64_alphabet[q[0] >> 2];
        out[o++] = b64_alphabet[(q[0] & 3) << 4 | q[1] >> 4];
        out[o++] = k > 1 ? b64_alphabet[(q[1] & 15) << 2 | q[2] >> 6] : '=';
        out[o++] = k > 2 ? b64_alphabet[q[2] & 63] : '=';
    }
    out[o] = '\0';
    *pout = out;
    *plen = o;
    return 0;
}

char *proto__grpcweb_trailers(rpc_call *call, int err, const char *message, size_t *plen)
{
    pins_arena *a = call->arena;
    char *out = pins_arena_printf(a, "grpc-status:%d\r\n", pins_error_grpc(err));
    if (out != NULL && err != 0) {
        const char *msg = message != NULL ? message : pins_strerror(err);
        char *enc = proto__grpc_message_encode(a, msg);
        out = enc != NULL ? pins_arena_printf(a, "%sgrpc-message:%s\r\n", out, enc) : NULL;
    }
    for (const rpc_metadata *m = rpc_call_metadata(call); out != NULL && m; m = m->next) {
        if (m->trailer)
            out = pins_arena_printf(a, "%s%s:%s\r\n", out, m->name, m->value);
    }
    if (out != NULL)
        *plen = strlen(out);
    return out;
}
