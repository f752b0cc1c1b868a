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

#include "common/base64.h"
#include "common/buf.h"
#include "common/fmt.h"

const char *proto__grpcweb_content_type(bool json, bool text)
{
    if (text)
        return "application/grpc-web-text+proto";
    return json ? "application/grpc-web+json" : "application/grpc-web+proto";
}

int proto__base64_quantum(const uint8_t q[4], uint8_t *out)
{
    size_t n = 0;
    if (pins_base64_decode((const char *)q, 4, PINS_BASE64_PAD, out, &n) != 0)
        return -1;
    return (int)n;
}

int proto__base64_envelope(const uint8_t hdr[5], const void *p, size_t len, char **pout,
                           size_t *plen)
{
    if (len > SIZE_MAX / 2 - 8)
        return PINS_ENOMEM;
    char *out = malloc(pins_base64_encoded_len(5 + len, PINS_BASE64_PAD) + 1);
    if (out == NULL)
        return PINS_ENOMEM;
    /* The header and the first body byte make two whole quanta, so the body's encoding follows
     * on without a seam: one base64 text of hdr + p. */
    uint8_t head[6];
    memcpy(head, hdr, 5);
    size_t k = len > 0 ? 1 : 0;
    if (k > 0)
        head[5] = *(const uint8_t *)p;
    size_t o = pins_base64_encode(head, 5 + k, PINS_BASE64_PAD, out);
    o += pins_base64_encode((const uint8_t *)p + k, len - k, PINS_BASE64_PAD, out + o);
    *pout = out;
    *plen = o;
    return 0;
}

/* The call's arena holds the result, so its limit bounds the text (0: no limit). */
static size_t arena_bound(pins_arena *a)
{
    size_t limit = pins_arena_limit(a);
    return limit != 0 ? limit : SIZE_MAX;
}

char *proto__grpcweb_trailers(rpc_call *call, int err, const char *message, size_t *plen)
{
    pins_arena *a = call->arena;
    pins_buf b;
    pins_buf_init(&b, arena_bound(a));
    char code[PINS_FMT_INT_MAX];
    pins_buf_add_str(&b, "grpc-status:");
    pins_buf_add(&b, code, (size_t)(pins_fmt_i64(code, pins_error_grpc(err)) - code));
    pins_buf_add(&b, "\r\n", 2);
    if (err != 0) {
        const char *msg = message != NULL ? message : pins_strerror(err);
        char *enc = proto_grpc_message_encode(a, msg);
        if (enc == NULL)
            goto fail;
        pins_buf_add_str(&b, "grpc-message:");
        pins_buf_add_str(&b, enc);
        pins_buf_add(&b, "\r\n", 2);
    }
    for (const rpc_metadata *m = rpc_call_metadata(call); m; m = m->next) {
        if (!m->trailer)
            continue;
        pins_buf_add_str(&b, m->name);
        pins_buf_add_byte(&b, ':');
        pins_buf_add_str(&b, m->value);
        pins_buf_add(&b, "\r\n", 2);
    }
    if (pins_buf_error(&b) != 0)
        goto fail;
    char *out = pins_arena_alloc(a, pins_buf_len(&b) + 1);
    if (out != NULL) {
        memcpy(out, pins_buf_ptr(&b), pins_buf_len(&b) + 1);
        *plen = pins_buf_len(&b);
    }
    pins_buf_free(&b);
    return out;
fail:
    pins_buf_free(&b);
    return NULL;
}
