/* tests/fuzz/proto_harness.h: what fuzz_connect.c and fuzz_grpcweb.c share: one worker without
 * sockets or store, a capturing proto_stream, and the checks of a Connect or gRPC-Web answer.
 *
 * A request goes through the bridge's public entry points, as the transports drive them:
 * proto_handle() with the whole body (HTTP/1.1), or proto_begin(), proto_body() in pieces and
 * proto_body_end() (HTTP/2). The worker has RBAC enforced and no audit queue, rate limiter or
 * store, so a MemoryPins method is refused before its handler runs, while the unguarded ones
 * (Health/Check, server reflection) run to the end, synchronously. Every answer must start once,
 * end once, send as many bytes as it declared, and have the shape of its protocol; the checks
 * abort otherwise so that libFuzzer reports it.
 *
 * Included by one fuzz target each (static functions only).
 */
#ifndef PINS_TESTS_FUZZ_BRIDGE_HARNESS_H
#define PINS_TESTS_FUZZ_BRIDGE_HARNESS_H

#include <event2/event.h>
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "protocols/protocols.h"
#include "common/arena.h"
#include "common/config.h"
#include "common/error.h"
#include "common/pbwire.h"
#include "observability/log.h"
#include "rpc/rpc_int.h"

#define HARNESS_ARENA_LIMIT (64u << 20)
#define HARNESS_MAX_HEADERS 8

/* The method paths a request may name (index chosen by the input). */
static const char *const harness_paths[] = {
    "/grpc.health.v1.Health/Check",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/memorypins.v1.MemoryPins/GetPin",
    "/memorypins.v1.MemoryPins/UpsertPin",
};
#define HARNESS_NPATHS (sizeof(harness_paths) / sizeof(harness_paths[0]))

static void harness_check(bool ok)
{
    if (!ok)
        abort();
}

/* ---- the worker --------------------------------------------------------------------------- */

static pins_config harness_cfg;
static rpc_server harness_server;
static rpc_worker harness_worker;

static rpc_worker *harness_worker_get(void)
{
    static bool ready;
    if (ready)
        return &harness_worker;
    pins_log_setup(PINS_LOG_ERROR, PINS_LOG_TEXT);
    pins_config_defaults(&harness_cfg);
    harness_cfg.rbac_enforce = true;
    rpc__metrics_init();
    harness_server.cfg = &harness_cfg;
    harness_server.workers = &harness_worker;
    harness_server.nworkers = 1;
    harness_worker.server = &harness_server;
    harness_worker.base = event_base_new();
    harness_check(harness_worker.base != NULL);
    harness_worker.rng.s[0] = 0x243f6a8885a308d3ull;
    harness_worker.rng.s[1] = 0x13198a2e03707344ull;
    for (size_t i = 0; i < HARNESS_NPATHS; i++)
        harness_check(rpc_method_find(harness_paths[i], strlen(harness_paths[i])) != NULL);
    ready = true;
    return &harness_worker;
}

/* ---- the capturing stream ------------------------------------------------------------------ */

typedef struct harness_capture {
    proto_stream s; /* first: the ops get &s */
    int status;
    int starts, ends;
    int64_t declared;
    char content_type[128];
    uint8_t *body;
    size_t len, cap;
} harness_capture;

static int cap_start(proto_stream *s, int status, const rpc_header *hdrs, size_t n,
                     int64_t body_len)
{
    harness_capture *c = (harness_capture *)s;
    harness_check(c->starts == 0 && c->ends == 0);
    harness_check(status >= 200 && status <= 599 && body_len >= -1);
    c->starts++;
    c->status = status;
    c->declared = body_len;
    for (size_t i = 0; i < n; i++) {
        harness_check(hdrs[i].name != NULL && hdrs[i].value != NULL);
        harness_check(strcmp(hdrs[i].name, "content-length") != 0 &&
                      strcmp(hdrs[i].name, "transfer-encoding") != 0);
        if (strcmp(hdrs[i].name, "content-type") == 0)
            snprintf(c->content_type, sizeof(c->content_type), "%s", hdrs[i].value);
    }
    s->started = true;
    return 0;
}

static int cap_write(proto_stream *s, const void *data, size_t len)
{
    harness_capture *c = (harness_capture *)s;
    harness_check(c->starts == 1 && c->ends == 0);
    if (c->len + len > c->cap) {
        size_t cap = c->cap != 0 ? c->cap : 1024;
        while (cap < c->len + len)
            cap *= 2;
        uint8_t *nb = realloc(c->body, cap);
        harness_check(nb != NULL);
        c->body = nb;
        c->cap = cap;
    }
    if (len > 0)
        memcpy(c->body + c->len, data, len);
    c->len += len;
    return 0;
}

static void cap_end(proto_stream *s)
{
    harness_capture *c = (harness_capture *)s;
    harness_check(c->starts == 1 && c->ends == 0);
    harness_check(c->declared < 0 || (size_t)c->declared == c->len);
    c->ends++;
    s->ended = true;
}

static const proto_stream_ops harness_ops = {
    .start = cap_start, .write = cap_write, .end = cap_end};

/* A request: method path, header lines {name, value} and the body. */
typedef struct harness_request {
    const char *path;
    const char *content_type;
    const char *hnames[HARNESS_MAX_HEADERS];
    const char *hvalues[HARNESS_MAX_HEADERS];
    size_t nheaders;
    const uint8_t *body;
    size_t len;
} harness_request;

/* True when req carries a deadline (grpc-timeout, connect-timeout-ms): whether it has passed
 * when the call starts depends on the time the run takes, so two runs of it may answer
 * differently (DEADLINE_EXCEEDED or not), and a comparison of them proves nothing. */
static bool harness_has_deadline(const harness_request *req)
{
    for (size_t i = 0; i < req->nheaders; i++) {
        if (strcasecmp(req->hnames[i], "grpc-timeout") == 0 ||
            strcasecmp(req->hnames[i], "connect-timeout-ms") == 0)
            return true;
    }
    return false;
}

/* Runs req; whole: proto_handle with the body at once, else proto_begin and proto_body in
 * pieces of piece bytes. Fills c (its body is freed with harness_capture_free). */
static void harness_run(const harness_request *req, bool whole, size_t piece, bool http2,
                        harness_capture *c)
{
    rpc_worker *w = harness_worker_get();
    memset(c, 0, sizeof(*c));
    rpc_call *call = rpc_call_new(w, NULL, NULL, NULL, HARNESS_ARENA_LIMIT);
    harness_check(call != NULL);
    call->headers = pins_arena_calloc(call->arena, req->nheaders + 1, sizeof(rpc_header));
    harness_check(call->headers != NULL);
    call->headers[0] = (rpc_header){.name = "content-type", .value = req->content_type};
    for (size_t i = 0; i < req->nheaders; i++)
        call->headers[i + 1] = (rpc_header){.name = req->hnames[i], .value = req->hvalues[i]};
    call->nheaders = req->nheaders + 1;
    harness_check(rpc_call_set_request_id(call, "fuzz-request") == 0);
    c->s = (proto_stream){.ops = &harness_ops,
                          .call = call,
                          .worker = w,
                          .method = "POST",
                          .path = req->path,
                          .body = req->body,
                          .body_len = req->len,
                          .http2 = http2};
    if (whole || !proto_begin(&c->s)) {
        proto_handle(&c->s);
    } else {
        size_t off = 0;
        while (off < req->len) {
            size_t n = req->len - off < piece ? req->len - off : piece;
            proto_body(&c->s, req->body + off, n);
            off += n;
        }
        proto_body_end(&c->s);
    }
    /* The stream closes: the transport lets go of the call. */
    if (c->s.dispatched)
        rpc_call_detach(call);
    else
        rpc_call_abandon(call);
    harness_check(c->starts == 1 && c->ends == 1);
}

static void harness_capture_free(harness_capture *c)
{
    free(c->body);
    c->body = NULL;
}

/* ---- answer checks ------------------------------------------------------------------------- */

/* A JSON object, or false. */
static bool harness_json_object(const uint8_t *p, size_t len, json_t **pj)
{
    json_error_t e;
    json_t *j = json_loadb((const char *)p, len, 0, &e);
    if (j == NULL || !json_is_object(j)) {
        json_decref(j);
        return false;
    }
    *pj = j;
    return true;
}

/* A Connect error object {"code": "<connect code>", "message": "..."}. */
static void harness_check_connect_error(const json_t *err)
{
    harness_check(json_is_object(err));
    const json_t *code = json_object_get(err, "code");
    harness_check(json_is_string(code) && json_string_length(code) > 0);
    const json_t *msg = json_object_get(err, "message");
    harness_check(msg == NULL || json_is_string(msg));
}

/* A response message of method m: protobuf bytes of its output type, or a JSON object. */
static void harness_check_message(const rpc_method *m, bool json, const uint8_t *p, size_t len)
{
    if (json) {
        json_t *j = NULL;
        harness_check(harness_json_object(p, len, &j));
        json_decref(j);
        return;
    }
    harness_check(pbwire_check(p, len, m->output, PBWIRE_MAX_DEPTH) == 0);
    ProtobufCMessage *msg = protobuf_c_message_unpack(m->output, NULL, len, p);
    harness_check(msg != NULL);
    protobuf_c_message_free_unpacked(msg, NULL);
}

/* gRPC-Web trailers: "name:value\r\n" lines, grpc-status first. */
static void harness_check_grpcweb_trailers(const uint8_t *p, size_t len)
{
    static const char status[] = "grpc-status:";
    harness_check(len > sizeof(status) && memcmp(p, status, sizeof(status) - 1) == 0);
    size_t i = sizeof(status) - 1, digits = 0;
    while (i < len && p[i] >= '0' && p[i] <= '9') {
        i++;
        digits++;
    }
    harness_check(digits >= 1 && digits <= 2);
    size_t line = 0;
    for (size_t k = 0; k < len; k++) {
        harness_check(p[k] != '\0');
        if (p[k] == '\n') {
            harness_check(k > line && p[k - 1] == '\r' && memchr(p + line, ':', k - line));
            line = k + 1;
        }
    }
    harness_check(line == len);
}

/* The body of a framed answer (Connect streaming, gRPC-Web): messages, then one end envelope
 * (end_flag: 0x02 Connect end-stream JSON, 0x80 gRPC-Web trailers) and nothing after it. */
static void harness_check_envelopes(const rpc_method *m, bool json, uint8_t end_flag,
                                    const uint8_t *p, size_t len)
{
    size_t off = 0;
    for (;;) {
        harness_check(len - off >= 5);
        uint8_t flags = p[off];
        uint32_t n = (uint32_t)p[off + 1] << 24 | (uint32_t)p[off + 2] << 16 |
                     (uint32_t)p[off + 3] << 8 | p[off + 4];
        off += 5;
        harness_check(len - off >= n);
        if (flags == 0) {
            harness_check_message(m, json, p + off, n);
            off += n;
            continue;
        }
        harness_check(flags == end_flag);
        if (end_flag == 0x80) {
            harness_check_grpcweb_trailers(p + off, n);
        } else {
            json_t *j = NULL;
            harness_check(harness_json_object(p + off, n, &j));
            const json_t *err = json_object_get(j, "error");
            if (err != NULL)
                harness_check_connect_error(err);
            json_decref(j);
        }
        harness_check(off + n == len);
        return;
    }
}

/* A refusal before the protocol took over (415, 405, ...): a JSON body. */
static void harness_check_plain_refusal(const harness_capture *c)
{
    harness_check(c->status >= 400);
    json_t *j = NULL;
    harness_check(harness_json_object(c->body, c->len, &j));
    json_decref(j);
}

/* Reads the input's optional header block: when its first byte is 'H', lines "name: value\n" up
 * to an empty line (names lower case, at most HARNESS_MAX_HEADERS); the text is copied into
 * store, which must hold size + 1 bytes. Returns the offset of the body. */
static size_t harness_headers(const uint8_t *data, size_t size, harness_request *req, char *store)
{
    if (size == 0 || data[0] != 'H')
        return 0;
    memcpy(store, data, size);
    store[size] = '\0';
    size_t off = 1;
    while (off < size && req->nheaders < HARNESS_MAX_HEADERS) {
        char *line = store + off;
        char *nl = memchr(line, '\n', size - off);
        if (nl == NULL)
            break;
        *nl = '\0';
        off = (size_t)(nl - store) + 1;
        if (line[0] == '\0')
            return off;
        char *colon = strchr(line, ':');
        if (colon == NULL || colon == line)
            continue;
        *colon = '\0';
        char *value = colon + 1;
        while (*value == ' ')
            value++;
        for (char *q = line; *q; q++)
            if (*q >= 'A' && *q <= 'Z')
                *q = (char)(*q - 'A' + 'a');
        req->hnames[req->nheaders] = line;
        req->hvalues[req->nheaders] = value;
        req->nheaders++;
    }
    /* No empty line: the rest after the last header line is the body. */
    return off;
}

#endif
