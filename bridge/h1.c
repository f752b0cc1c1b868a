/* bridge/h1.c: HTTP/1.1 connections. */
#include "bridge/h1.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <stdlib.h>

struct bridge_h1 {
    rpc__conn *conn;
};

bridge_h1 *bridge__h1_new(rpc__conn *c)
{
    bridge_h1 *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    h->conn = c;
    return h;
}

void bridge__h1_on_read(bridge_h1 *h, struct evbuffer *in)
{
    static const char resp[] = "HTTP/1.1 505 HTTP Version Not Supported\r\n"
                               "Content-Type: application/json\r\nConnection: close\r\n"
                               "Content-Length: 74\r\n\r\n"
                               "{\"detail\":\"this listener speaks HTTP/2\",\"code\":12,"
                               "\"message\":\"use h2c\"}\n";
    evbuffer_drain(in, evbuffer_get_length(in));
    bufferevent_write(rpc__conn_bev(h->conn), resp, sizeof(resp) - 1);
    rpc__conn_close(h->conn, true);
}

void bridge__h1_on_write_done(bridge_h1 *h)
{
    (void)h;
}

void bridge__h1_drain(bridge_h1 *h)
{
    rpc__conn_close(h->conn, true);
}

bool bridge__h1_busy(const bridge_h1 *h)
{
    (void)h;
    return false;
}

void bridge__h1_free(bridge_h1 *h)
{
    free(h);
}
