/* bridge/bridge.c: the entry point for every non-gRPC request: probes first, then the routes. */
#include "bridge/bridge.h"

#include <string.h>

typedef struct probe_wait {
    bridge_stream *s;
} probe_wait;

int bridge_respond(bridge_stream *s, int status, const char *content_type, const char *body,
                   size_t body_len, const rpc__header *extra, size_t nextra)
{
    rpc__header hdrs[16];
    size_t n = 0;
    if (content_type != NULL)
        hdrs[n++] = (rpc__header){.name = "content-type", .value = content_type};
    for (size_t i = 0; i < nextra && n < 16; i++)
        hdrs[n++] = extra[i];
    int rv = s->ops->start(s, status, hdrs, n, (int64_t)body_len);
    if (rv == 0 && body_len > 0)
        rv = s->ops->write(s, body, body_len);
    s->ops->end(s);
    return rv;
}

static void on_probe(const rpc__http_answer *ans, void *arg)
{
    bridge_stream *s = arg;
    rpc_call *call = s->call;
    rpc__header allow = {.name = "allow", .value = ans->allow};
    bridge_respond(s, ans->status, ans->content_type, ans->body, ans->body_len, &allow,
                   ans->allow != NULL ? 1 : 0);
    rpc__call_unref(call); /* may free s */
}

bool bridge_begin(bridge_stream *s)
{
    (void)s;
    return false;
}

void bridge_body(bridge_stream *s, const uint8_t *data, size_t len)
{
    (void)s;
    (void)data;
    (void)len;
}

void bridge_body_end(bridge_stream *s)
{
    (void)s;
}

void bridge_handle(bridge_stream *s)
{
    rpc_call *call = s->call;
    if (call->request_id == NULL &&
        rpc__call_set_request_id(call, rpc_call_header(call, "x-request-id")) != 0) {
        bridge_respond(s, 500, "application/json", "{\"detail\":\"out of memory\"}", 26, NULL, 0);
        return;
    }
    rpc__call_ref(call); /* held until the probe answered */
    if (rpc__probe_handle(s->worker, call->arena, s->method, s->path, on_probe, s))
        return;
    rpc__call_unref(call);
    static const char body[] =
        "{\"detail\":\"Not Found\",\"code\":5,\"message\":\"no such route\"}";
    bridge_respond(s, 404, "application/json", body, sizeof(body) - 1, NULL, 0);
}
