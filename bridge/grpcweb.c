/* bridge/grpcweb.c: what is specific to gRPC-Web
 * (https://github.com/grpc/grpc/blob/master/doc/PROTOCOL-WEB.md); the envelopes themselves are
 * read and written by bridge/connect.c.
 *
 * Every gRPC-Web answer is HTTP 200 with the status in a trailer frame (flag 0x80) at the end of
 * the body, errors before any message included: the spec also allows a headers-only answer, but
 * one form is simpler for clients and works through every proxy and browser API.
 */
#include "bridge/bridge_int.h"

#include <string.h>

const char *bridge__grpcweb_content_type(bool json)
{
    return json ? "application/grpc-web+json" : "application/grpc-web+proto";
}

char *bridge__grpcweb_trailers(rpc_call *call, int err, const char *message, size_t *plen)
{
    pins_arena *a = call->arena;
    char *out = pins_arena_printf(a, "grpc-status:%d\r\n", pins_error_grpc(err));
    if (out != NULL && err != 0) {
        const char *msg = message != NULL ? message : pins_strerror(err);
        char *enc = rpc__grpc_message_encode(a, msg);
        out = enc != NULL ? pins_arena_printf(a, "%sgrpc-message:%s\r\n", out, enc) : NULL;
    }
    for (const rpc__metadata *m = rpc__call_metadata(call); out != NULL && m; m = m->next) {
        if (m->trailer)
            out = pins_arena_printf(a, "%s%s:%s\r\n", out, m->name, m->value);
    }
    if (out != NULL)
        *plen = strlen(out);
    return out;
}
