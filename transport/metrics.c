/* transport/metrics.c: the transport's metric families: bytes held for peers, refusals for want
 * of buffer room, connections the server closed, requests that did not arrive in time. */
#include "transport/transport_int.h"

#include "observability/metrics.h"

static metrics_family *buffered;
static metrics_family *refused;
static metrics_family *conn_closed;
static metrics_family *req_timeouts;

static transport_worker *sampled;
static int nsampled;

static double sample_buffered(void *arg)
{
    int64_t sum = 0;
    for (int i = 0; sampled != NULL && i < nsampled; i++)
        sum += atomic_load_explicit(&sampled[i].buffered, memory_order_relaxed);
    return (double)sum;
}

void transport_metrics_init(transport_worker *tws, int n)
{
    sampled = tws;
    nsampled = n;
    static const char *const reason[] = {"reason"};
    if (buffered != NULL) {
        metrics_gauge_set_cb(buffered, NULL, sample_buffered, NULL);
        return;
    }
    buffered = metrics_gauge_new("connection_buffered_bytes",
                                 "Bytes held for peers: request bodies, decoded request messages "
                                 "and response output not yet sent (PINS_BUFFER_BYTES bounds it).",
                                 NULL, 0);
    refused = metrics_counter_new("connection_buffer_refusals_total",
                                  "Requests and streams refused because a connection or the "
                                  "process held its budget of buffered bytes.",
                                  NULL, 0);
    conn_closed = metrics_counter_new(
        "connection_closed_total",
        "Connections the server closed: idle (GOAWAY first), output that could not leave, or "
        "a protocol error (GOAWAY with an error code).",
        reason, 1);
    req_timeouts = metrics_counter_new(
        "request_timeouts_total",
        "Requests whose headers or body did not arrive within PINS_REQUEST_TIMEOUT_SECONDS.", NULL,
        0);
    if (buffered != NULL)
        metrics_gauge_set_cb(buffered, NULL, sample_buffered, NULL);
}

void transport__metrics_buffer_refused(void)
{
    if (refused != NULL)
        metrics_counter_inc(refused, NULL);
}

void transport__metrics_conn_closed(const char *reason)
{
    const char *v[] = {reason};
    if (conn_closed != NULL)
        metrics_counter_inc(conn_closed, v);
}

void transport__metrics_request_timeout(void)
{
    if (req_timeouts != NULL)
        metrics_counter_inc(req_timeouts, NULL);
}
