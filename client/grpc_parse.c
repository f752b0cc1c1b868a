/* client/grpc_parse.c: the gRPC response parser (see grpc_parse.h for the rules).
 *
 * Messages that arrive whole inside one DATA chunk go to the callback straight from the chunk;
 * only a message split across chunks is copied, into one buffer of exactly its announced length,
 * allocated after the length was checked against max_message. Metadata is bounded by
 * max_header_bytes and CLIENT_MAX_METADATA; binary values are base64-decoded on the way in.
 */
#include "client/grpc_parse.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "common/base64.h"
#include "common/percent.h"

static bool name_is(const char *name, size_t nlen, const char *lit)
{
    size_t l = strlen(lit);
    return nlen == l && memcmp(name, lit, l) == 0;
}

static bool ends_with_bin(const char *name, size_t nlen)
{
    return nlen > 4 && memcmp(name + nlen - 4, "-bin", 4) == 0;
}

/* Names the status lists leave out: pseudo headers and the ones gRPC itself consumes. */
static bool reserved(const char *name, size_t nlen)
{
    return (nlen > 0 && name[0] == ':') || name_is(name, nlen, "content-type") ||
           name_is(name, nlen, "grpc-status") || name_is(name, nlen, "grpc-message") ||
           name_is(name, nlen, "grpc-status-details-bin") || name_is(name, nlen, "grpc-encoding") ||
           name_is(name, nlen, "grpc-accept-encoding");
}

/* Decimal digits only, at most 9 of them; -1 otherwise. */
static long parse_uint(const char *s, size_t n)
{
    if (n == 0 || n > 9)
        return -1;
    long v = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return -1;
        v = v * 10 + (s[i] - '0');
    }
    return v;
}

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);
    if (d == NULL)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

int client__parse_fail(client__parse *p, int code, const char *fmt, ...)
{
    if (p->error != 0)
        return p->error;
    p->error = code;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(p->error_msg, sizeof(p->error_msg), fmt, ap);
    va_end(ap);
    return code;
}

void client__parse_init(client__parse *p, size_t max_message, size_t max_header_bytes)
{
    memset(p, 0, sizeof(*p));
    p->max_message = max_message;
    p->max_header_bytes = max_header_bytes;
    p->grpc_status = -1;
    p->retry_after_ms = -1;
}

void client__parse_free(client__parse *p)
{
    free(p->grpc_message);
    free(p->details);
    free(p->request_id);
    free(p->msg);
    client__md_clear(&p->headers);
    client__md_clear(&p->trailers);
    p->grpc_message = NULL;
    p->details = NULL;
    p->request_id = NULL;
    p->msg = NULL;
}

/* A metadata entry for the lists: -bin values decoded. */
static int add_md(client__parse *p, const char *name, size_t nlen, const char *value, size_t vlen)
{
    pins_metadata_list *l = p->in_trailers ? &p->trailers : &p->headers;
    if (p->headers.count + p->trailers.count >= CLIENT_MAX_METADATA)
        return client__parse_fail(p, PINS_CODE_RESOURCE_EXHAUSTED,
                                  "response metadata has more than %d entries",
                                  CLIENT_MAX_METADATA);
    if (!ends_with_bin(name, nlen))
        return client__md_add(l, name, nlen, value, vlen) == 0
                   ? 0
                   : client__parse_fail(p, PINS_CODE_RESOURCE_EXHAUSTED, "out of memory");
    uint8_t *dec = malloc(pins_base64_decoded_max(vlen) + 1);
    if (dec == NULL)
        return client__parse_fail(p, PINS_CODE_RESOURCE_EXHAUSTED, "out of memory");
    size_t n = 0;
    int rv = pins_base64_decode(value, vlen, PINS_BASE64_MIXED | PINS_BASE64_PAD, dec, &n);
    if (rv != 0) {
        free(dec);
        return client__parse_fail(p, PINS_CODE_INTERNAL, "response metadata %.*s is not base64",
                                  (int)nlen, name);
    }
    rv = client__md_add(l, name, nlen, (const char *)dec, n);
    free(dec);
    return rv == 0 ? 0 : client__parse_fail(p, PINS_CODE_RESOURCE_EXHAUSTED, "out of memory");
}

int client__parse_header(client__parse *p, const char *name, size_t nlen, const char *value,
                         size_t vlen)
{
    if (p->error != 0)
        return p->error;
    if (p->skip_block)
        return 0;
    if (p->blocks >= 2)
        return client__parse_fail(p, PINS_CODE_INTERNAL, "header block after the trailers");
    size_t cost = nlen + vlen + 32;
    if (cost > p->max_header_bytes - p->header_bytes || p->header_bytes > p->max_header_bytes)
        return client__parse_fail(p, PINS_CODE_RESOURCE_EXHAUSTED,
                                  "response header blocks larger than %zu bytes",
                                  p->max_header_bytes);
    p->header_bytes += cost;
    if (name_is(name, nlen, ":status")) {
        long s = parse_uint(value, vlen);
        if (p->in_trailers || s < 100 || s > 999)
            return client__parse_fail(p, PINS_CODE_INTERNAL, "malformed :status");
        if (s < 200) {
            /* An informational response (103 Early Hints, 100 Continue): the real one follows.
             * :status comes first in a block, so nothing of this block was kept. */
            p->skip_block = true;
            return 0;
        }
        p->http_status = (int)s;
        return 0;
    }
    if (name_is(name, nlen, "content-type")) {
        p->content_type_seen = true;
        p->content_type_ok = vlen >= 16 && memcmp(value, "application/grpc", 16) == 0 &&
                             (vlen == 16 || value[16] == '+' || value[16] == ';');
        return 0;
    }
    if (name_is(name, nlen, "grpc-status")) {
        long s = parse_uint(value, vlen);
        p->grpc_status = s < 0 ? -2 : (s > 16 ? PINS_CODE_UNKNOWN : (int)s);
        return 0;
    }
    if (name_is(name, nlen, "grpc-message")) {
        free(p->grpc_message);
        p->grpc_message = dup_n(value, vlen);
        return p->grpc_message != NULL
                   ? 0
                   : client__parse_fail(p, PINS_CODE_RESOURCE_EXHAUSTED, "out of memory");
    }
    if (name_is(name, nlen, "grpc-status-details-bin")) {
        free(p->details);
        p->details = malloc(pins_base64_decoded_max(vlen) + 1);
        if (p->details == NULL)
            return client__parse_fail(p, PINS_CODE_RESOURCE_EXHAUSTED, "out of memory");
        if (pins_base64_decode(value, vlen, PINS_BASE64_MIXED | PINS_BASE64_PAD, p->details,
                               &p->details_len) != 0) {
            free(p->details);
            p->details = NULL;
            p->details_len = 0;
        }
        return 0;
    }
    if (name_is(name, nlen, "grpc-encoding")) {
        if (!name_is(value, vlen, "identity"))
            return client__parse_fail(p, PINS_CODE_INTERNAL,
                                      "response grpc-encoding %.*s was not requested",
                                      (int)(vlen > 40 ? 40 : vlen), value);
        return 0;
    }
    if (name_is(name, nlen, "retry-after")) {
        long s = parse_uint(value, vlen);
        if (s >= 0)
            p->retry_after_ms = (int64_t)s * 1000;
    }
    if (name_is(name, nlen, "x-request-id") && p->request_id == NULL) {
        p->request_id = dup_n(value, vlen);
        if (p->request_id == NULL)
            return client__parse_fail(p, PINS_CODE_RESOURCE_EXHAUSTED, "out of memory");
    }
    if (reserved(name, nlen))
        return 0;
    return add_md(p, name, nlen, value, vlen);
}

int client__parse_end_block(client__parse *p)
{
    if (p->error != 0)
        return p->error;
    if (p->skip_block) {
        p->skip_block = false;
        return 0;
    }
    if (p->blocks == 0 && p->http_status == 0)
        return client__parse_fail(p, PINS_CODE_INTERNAL, "response without :status");
    if (p->blocks == 0 && (p->http_status != 200 || (p->content_type_seen && !p->content_type_ok)))
        p->not_grpc = true;
    p->blocks++;
    p->in_trailers = true;
    return 0;
}

/* Reads the 5-byte prefix complete in p->prefix. */
static int start_message(client__parse *p)
{
    const uint8_t *h = p->prefix;
    uint32_t len = (uint32_t)h[1] << 24 | (uint32_t)h[2] << 16 | (uint32_t)h[3] << 8 | h[4];
    if (h[0] & 1)
        return client__parse_fail(p, PINS_CODE_INTERNAL,
                                  "compressed response message without grpc-encoding");
    if (h[0] & ~1u)
        return client__parse_fail(p, PINS_CODE_INTERNAL, "response message flags 0x%02x",
                                  (unsigned)h[0]);
    if (len > p->max_message)
        return client__parse_fail(p, PINS_CODE_RESOURCE_EXHAUSTED,
                                  "response message of %u bytes is larger than %zu", len,
                                  p->max_message);
    p->msg_len = len;
    p->msg_have = 0;
    p->in_message = true;
    p->prefix_have = 0;
    return 0;
}

static int deliver(client__parse *p, const uint8_t *data, size_t len, client__parse_msg_cb cb,
                   void *arg)
{
    p->messages++;
    p->in_message = false;
    int rv = cb != NULL ? cb(arg, data, len) : 0;
    if (rv != 0 && p->error == 0)
        return client__parse_fail(p, rv, "undecodable response message");
    return rv;
}

int client__parse_data(client__parse *p, const uint8_t *data, size_t len, client__parse_msg_cb cb,
                       void *arg)
{
    if (p->error != 0)
        return p->error;
    if (p->blocks != 1 || p->http_status == 0)
        return client__parse_fail(p, PINS_CODE_INTERNAL, "DATA outside the response body");
    if (p->not_grpc)
        return 0; /* not gRPC: the status comes from the headers (see decide) */
    while (len > 0) {
        if (!p->in_message) {
            size_t take = 5 - p->prefix_have;
            if (take > len)
                take = len;
            memcpy(p->prefix + p->prefix_have, data, take);
            p->prefix_have += take;
            data += take;
            len -= take;
            if (p->prefix_have < 5)
                return 0;
            if (start_message(p) != 0)
                return p->error;
            if (p->msg_len == 0) {
                if (deliver(p, (const uint8_t *)"", 0, cb, arg) != 0)
                    return p->error;
                continue;
            }
        }
        size_t want = p->msg_len - p->msg_have;
        if (p->msg == NULL && len >= want) {
            const uint8_t *m = data;
            data += want;
            len -= want;
            if (deliver(p, m, want, cb, arg) != 0)
                return p->error;
            continue;
        }
        if (p->msg == NULL) {
            p->msg = malloc(p->msg_len);
            if (p->msg == NULL)
                return client__parse_fail(p, PINS_CODE_RESOURCE_EXHAUSTED, "out of memory");
        }
        size_t take = want < len ? want : len;
        memcpy(p->msg + p->msg_have, data, take);
        p->msg_have += take;
        data += take;
        len -= take;
        if (p->msg_have == p->msg_len) {
            uint8_t *m = p->msg;
            p->msg = NULL;
            int rv = deliver(p, m, p->msg_len, cb, arg);
            free(m);
            if (rv != 0)
                return p->error;
        }
    }
    return 0;
}

int client__http_to_code(int http_status)
{
    switch (http_status) {
    case 400:
        return PINS_CODE_INTERNAL;
    case 401:
        return PINS_CODE_UNAUTHENTICATED;
    case 403:
        return PINS_CODE_PERMISSION_DENIED;
    case 404:
        return PINS_CODE_UNIMPLEMENTED;
    case 429:
    case 502:
    case 503:
    case 504:
        return PINS_CODE_UNAVAILABLE;
    default:
        return PINS_CODE_UNKNOWN;
    }
}

/* The status before the metadata moves: code and message (new). */
static int decide(client__parse *p, char **pmsg, bool *pfrom_server)
{
    char buf[200];
    *pfrom_server = false;
    if (p->error != 0) {
        *pmsg = client__strdup(p->error_msg);
        return p->error;
    }
    if (p->http_status == 0) {
        *pmsg = client__strdup("stream ended without a response");
        return PINS_CODE_INTERNAL;
    }
    bool has_status = p->grpc_status != -1;
    if (p->http_status != 200 && !has_status) {
        snprintf(buf, sizeof(buf), "HTTP status %d without grpc-status", p->http_status);
        *pmsg = client__strdup(buf);
        return client__http_to_code(p->http_status);
    }
    if (p->content_type_seen ? !p->content_type_ok : !has_status || p->messages > 0) {
        *pmsg = client__strdup(p->content_type_seen ? "response content-type is not "
                                                      "application/grpc"
                                                    : "response without content-type");
        return PINS_CODE_UNKNOWN;
    }
    if (p->in_message || p->prefix_have > 0) {
        snprintf(buf, sizeof(buf), "truncated message: %zu of %zu bytes arrived", p->msg_have,
                 p->in_message ? p->msg_len : (size_t)5);
        *pmsg = client__strdup(buf);
        return PINS_CODE_INTERNAL;
    }
    if (!has_status) {
        *pmsg = client__strdup("missing trailers: the stream ended without grpc-status");
        return PINS_CODE_INTERNAL;
    }
    if (p->grpc_status == -2) {
        *pmsg = client__strdup("malformed grpc-status");
        return PINS_CODE_INTERNAL;
    }
    *pfrom_server = true;
    const char *raw = p->grpc_message != NULL ? p->grpc_message : "";
    size_t rl = strlen(raw);
    char *m = malloc(rl + 1);
    if (m != NULL) {
        size_t n = 0;
        if (pins_percent_decode(raw, rl, PINS_PERCENT_NO_NUL, m, &n) != 0) {
            memcpy(m, raw, rl + 1);
        }
    }
    *pmsg = m;
    return p->grpc_status;
}

int client__parse_finish(client__parse *p, pins_status *st)
{
    bool from_server = false;
    char *msg = NULL;
    int code = decide(p, &msg, &from_server);
    int attempts = st->attempts;
    char *rid = st->request_id;
    st->request_id = NULL;
    pins_status_clear(st);
    st->attempts = attempts;
    st->code = code;
    st->message = msg != NULL ? msg : client__text("");
    st->http_status = p->http_status;
    st->from_server = from_server;
    st->retry_after_ms = p->retry_after_ms;
    st->details = p->details;
    st->details_len = p->details_len;
    p->details = NULL;
    if (p->request_id != NULL) {
        free(rid);
        st->request_id = p->request_id;
        p->request_id = NULL;
    } else {
        st->request_id = rid;
    }
    /* A trailers-only response carries its metadata in the one block: trailers, as gRPC has it. */
    if (p->blocks == 1 && p->trailers.count == 0 && p->grpc_status != -1 && p->messages == 0) {
        st->trailers = p->headers;
        p->headers.items = NULL;
        p->headers.count = 0;
    } else {
        st->headers = p->headers;
        st->trailers = p->trailers;
        p->headers.items = NULL;
        p->headers.count = 0;
        p->trailers.items = NULL;
        p->trailers.count = 0;
    }
    return code;
}
