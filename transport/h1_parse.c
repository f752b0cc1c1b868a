/* transport/h1_parse.c: one HTTP/1.1 request at a time out of a byte stream (llhttp).
 *
 * llhttp is built in strict mode (CMakeLists.txt) with every lenient flag off, which refuses
 * Content-Length with Transfer-Encoding, duplicate or malformed Content-Length, a Transfer-Encoding
 * whose last coding is not chunked, a bare CR or LF where CRLF belongs (header lines, the end of
 * the header section, chunk lines), whitespace before a header's colon and control characters in
 * values. It still accepts obs-fold continuation lines, a Transfer-Encoding such as "gzip,
 * chunked" and any HTTP version number: those are refused here (RFC 9112 sections 2.2, 5.2, 6.1),
 * with some llhttp checks repeated where cheap, because a request must never be read differently
 * by us and by a proxy in front of us.
 */
#include "transport/h1_parse.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define BODY_KEEP_MAX    65536 /* a body buffer larger than this is not kept between requests */
#define SCRATCH_KEEP_MAX 16384

enum fold_state { FOLD_LINE_START, FOLD_CR, FOLD_IN_LINE, FOLD_DONE };

static const char too_large_body[] = "{\"detail\":\"request body larger than MAX_REQUEST_BYTES\","
                                     "\"code\":8,\"message\":\"message larger than the limit\"}";
static const char headers_too_large_body[] =
    "{\"detail\":\"request header fields larger than 100 fields or 65536 bytes\",\"code\":8,"
    "\"message\":\"resource exhausted\"}";
static const char target_too_long_body[] =
    "{\"detail\":\"request target longer than 8192 bytes\",\"code\":8,"
    "\"message\":\"resource exhausted\"}";
static const char version_body[] =
    "{\"detail\":\"HTTP version not supported: use HTTP/1.1 or HTTP/2\",\"code\":12,"
    "\"message\":\"unsupported\"}";
static const char connect_body[] =
    "{\"detail\":\"method CONNECT is not supported\",\"code\":12,\"message\":\"unsupported\"}";
static const char nomem_body[] =
    "{\"detail\":\"out of memory\",\"code\":8,\"message\":\"out of memory\"}";
static const char busy_body[] =
    "{\"detail\":\"the server holds too many request bytes; retry later\",\"code\":8,"
    "\"message\":\"resource exhausted\"}";
static const char internal_body[] =
    "{\"detail\":\"internal error\",\"code\":13,\"message\":\"internal error\"}";

/* ---- helpers --------------------------------------------------------------------------------- */

static transport_h1_parser *from_ll(llhttp_t *ll)
{
    return ll->data;
}

/* Records the first rejection; returns what an llhttp callback returns to stop the parser. */
static int reject(transport_h1_parser *p, int status, const char *body)
{
    if (p->reject_status == 0) {
        p->reject_status = status;
        p->reject_body = body;
    }
    return HPE_USER;
}

/* A 400 with the reason in the API's error shape. why is copied, made safe for JSON. */
static int reject_malformed(transport_h1_parser *p, const char *why)
{
    char clean[128];
    size_t n = 0;
    for (; why != NULL && why[n] != '\0' && n < sizeof(clean) - 1; n++) {
        unsigned char ch = (unsigned char)why[n];
        clean[n] = ch < 0x20 || ch > 0x7e || ch == '"' || ch == '\\' ? '\'' : (char)ch;
    }
    clean[n] = '\0';
    snprintf(p->reject_buf, sizeof(p->reject_buf),
             "{\"detail\":\"malformed HTTP request: %s\",\"code\":3,"
             "\"message\":\"malformed request\"}",
             clean);
    return reject(p, 400, p->reject_buf);
}

/* Appends to the scratch buffer; fails past limit bytes or when out of memory. */
static int scratch_append(transport_h1_parser *p, const char *at, size_t n, size_t limit)
{
    if (p->scratch_len + n > limit)
        return PINS_ERESOURCE_EXHAUSTED;
    if (n == 0)
        return 0;
    if (p->scratch_len + n > p->scratch_cap) {
        size_t cap = p->scratch_cap ? p->scratch_cap : 256;
        while (cap < p->scratch_len + n)
            cap *= 2;
        char *ns = realloc(p->scratch, cap);
        if (ns == NULL)
            return PINS_ENOMEM;
        p->scratch = ns;
        p->scratch_cap = cap;
    }
    memcpy(p->scratch + p->scratch_len, at, n);
    p->scratch_len += n;
    return 0;
}

static int append_or_reject(transport_h1_parser *p, const char *at, size_t n, size_t limit,
                            const char *too_large)
{
    int rv = scratch_append(p, at, n, limit);
    if (rv == PINS_ENOMEM)
        return reject(p, 503, nomem_body);
    if (rv != 0)
        return reject(p, limit == TRANSPORT_H1_MAX_TARGET ? 414 : 431, too_large);
    return 0;
}

/* RFC 9110 section 5.6.2: tchar. */
static bool is_tchar(unsigned char ch)
{
    if ((ch >= '0' && ch <= '9') || (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z'))
        return true;
    return ch != '\0' && strchr("!#$%&'*+-.^_`|~", ch) != NULL;
}

/* Looks for obs-fold (a header line starting with SP or HTAB) in the header section of the
 * request being received; the state carries over between feeds and stops at the empty line. */
static bool scan_fold(transport_h1_parser *p, const char *data, size_t len)
{
    for (size_t i = 0; i < len && p->fold_state != FOLD_DONE; i++) {
        char ch = data[i];
        switch (p->fold_state) {
        case FOLD_LINE_START:
            if (ch == '\n') {
                if (p->fold_seen_line)
                    p->fold_state = FOLD_DONE;
            } else if (ch == '\r') {
                p->fold_state = FOLD_CR;
            } else if ((ch == ' ' || ch == '\t') && p->fold_seen_line) {
                return true;
            } else {
                p->fold_state = FOLD_IN_LINE;
            }
            break;
        case FOLD_CR:
            if (ch == '\n')
                p->fold_state = p->fold_seen_line ? FOLD_DONE : FOLD_LINE_START;
            else
                p->fold_state = FOLD_IN_LINE;
            break;
        default:
            if (ch == '\n') {
                p->fold_seen_line = true;
                p->fold_state = FOLD_LINE_START;
            }
            break;
        }
    }
    return false;
}

/* The origin form of a request target: an absolute-form target (RFC 9112 section 3.2.2) loses
 * its scheme and authority. Returns NULL for a target that is neither (nor "*"). */
static const char *origin_form(const char *t, size_t n, size_t *plen)
{
    size_t skip = 0;
    if (n >= 7 && strncasecmp(t, "http://", 7) == 0)
        skip = 7;
    else if (n >= 8 && strncasecmp(t, "https://", 8) == 0)
        skip = 8;
    if (skip == 0) {
        if (n == 0 || (t[0] != '/' && !(n == 1 && t[0] == '*')))
            return NULL;
        *plen = n;
        return t;
    }
    size_t i = skip;
    while (i < n && t[i] != '/' && t[i] != '?')
        i++;
    if (i == skip)
        return NULL; /* no authority */
    *plen = n - i;
    return t + i;
}

/* ---- llhttp callbacks ------------------------------------------------------------------------ */

static int on_message_begin(llhttp_t *ll)
{
    transport_h1_parser *p = from_ll(ll);
    p->begun = true;
    p->arena = p->hooks->begin(p->owner);
    if (p->arena == NULL)
        return reject(p, 503, nomem_body);
    return 0;
}

static int on_url(llhttp_t *ll, const char *at, size_t n)
{
    transport_h1_parser *p = from_ll(ll);
    return append_or_reject(p, at, n, TRANSPORT_H1_MAX_TARGET, target_too_long_body);
}

static int on_url_complete(llhttp_t *ll)
{
    transport_h1_parser *p = from_ll(ll);
    if (ll->method == HTTP_CONNECT)
        return reject(p, 501, connect_body); /* its authority-form target is no path either */
    size_t n = 0;
    const char *t = origin_form(p->scratch, p->scratch_len, &n);
    if (t == NULL)
        return reject_malformed(p, "invalid request target");
    char *path;
    if (n == 0 || t[0] == '?') /* an absolute-form target with an empty path */
        path = pins_arena_printf(p->arena, "/%.*s", (int)n, t);
    else
        path = pins_arena_strndup(p->arena, t, n);
    if (path == NULL)
        return reject(p, 503, nomem_body);
    p->path = path;
    p->scratch_len = 0;
    return 0;
}

/* Bytes of a header name or value: counted against the header limit (trailers too), kept in
 * scratch until the name or value is complete (trailers are counted, not kept). */
static int on_header_bytes(llhttp_t *ll, const char *at, size_t n)
{
    transport_h1_parser *p = from_ll(ll);
    p->header_bytes += n;
    if (p->header_bytes > TRANSPORT_H1_MAX_HEADER_BYTES)
        return reject(p, 431, headers_too_large_body);
    if (p->in_trailers)
        return 0;
    return append_or_reject(p, at, n, TRANSPORT_H1_MAX_HEADER_BYTES, headers_too_large_body);
}

static int on_header_field_complete(llhttp_t *ll)
{
    transport_h1_parser *p = from_ll(ll);
    if (p->in_trailers)
        return 0;
    if (p->nheaders >= TRANSPORT_H1_MAX_HEADERS)
        return reject(p, 431, headers_too_large_body);
    if (p->scratch_len == 0)
        return reject_malformed(p, "empty header name");
    char *name = pins_arena_strndup(p->arena, p->scratch, p->scratch_len);
    if (name == NULL)
        return reject(p, 503, nomem_body);
    for (size_t i = 0; i < p->scratch_len; i++) {
        unsigned char ch = (unsigned char)name[i];
        if (!is_tchar(ch))
            return reject_malformed(p, "invalid character in a header name");
        if (ch >= 'A' && ch <= 'Z')
            name[i] = (char)(ch - 'A' + 'a');
    }
    p->name = name;
    p->scratch_len = 0;
    return 0;
}

static int on_header_value_complete(llhttp_t *ll)
{
    transport_h1_parser *p = from_ll(ll);
    if (p->in_trailers)
        return 0;
    size_t n = p->scratch_len;
    while (n > 0 && (p->scratch[n - 1] == ' ' || p->scratch[n - 1] == '\t'))
        n--;
    const char *value = pins_arena_strndup(p->arena, n > 0 ? p->scratch : "", n);
    if (value == NULL || p->name == NULL)
        return reject(p, 503, nomem_body);
    if (p->nheaders == p->cap_headers) {
        size_t cap = p->cap_headers ? p->cap_headers * 2 : 16;
        rpc_header *nh = pins_arena_alloc(p->arena, cap * sizeof(*nh));
        if (nh == NULL)
            return reject(p, 503, nomem_body);
        if (p->nheaders > 0)
            memcpy(nh, p->headers, p->nheaders * sizeof(*nh));
        p->headers = nh;
        p->cap_headers = cap;
    }
    p->headers[p->nheaders++] = (rpc_header){.name = p->name, .value = value};
    if (strcmp(p->name, "content-length") == 0) {
        p->n_content_length++;
    } else if (strcmp(p->name, "transfer-encoding") == 0) {
        p->n_transfer_encoding++;
        p->transfer_encoding = value;
    } else if (strcmp(p->name, "host") == 0) {
        p->n_host++;
        p->host = value;
    } else if (strcmp(p->name, "expect") == 0) {
        p->expect = value;
    }
    p->name = NULL;
    p->scratch_len = 0;
    if (p->n_content_length > 1)
        return reject_malformed(p, "duplicate Content-Length");
    return 0;
}

static int on_headers_complete(llhttp_t *ll)
{
    transport_h1_parser *p = from_ll(ll);
    p->in_trailers = true;
    if (ll->http_major != 1 || ll->http_minor > 1)
        return reject(p, 505, version_body);
    bool http11 = ll->http_minor == 1;
    if (p->n_content_length > 1)
        return reject_malformed(p, "duplicate Content-Length");
    if (p->n_transfer_encoding > 0 && p->n_content_length > 0)
        return reject_malformed(p, "both Content-Length and Transfer-Encoding");
    if (p->n_transfer_encoding > 1 ||
        (p->transfer_encoding != NULL && strcasecmp(p->transfer_encoding, "chunked") != 0))
        return reject_malformed(p, "a Transfer-Encoding other than chunked");
    if (p->n_host > 1 || (http11 && p->n_host == 0))
        return reject_malformed(p, "an HTTP/1.1 request needs exactly one Host header");
    bool chunked = p->transfer_encoding != NULL;
    if (chunked != ((ll->flags & F_CHUNKED) != 0))
        return reject_malformed(p, "inconsistent Transfer-Encoding");
    p->method = llhttp_method_name((llhttp_method_t)ll->method);
    p->head = ll->method == HTTP_HEAD;
    if (p->path == NULL)
        return reject_malformed(p, "missing request target");
    uint64_t clen = (ll->flags & F_CONTENT_LENGTH) ? ll->content_length : 0;
    if (clen > (uint64_t)p->max_body) {
        p->reject_err = PINS_ETOO_LARGE; /* method and path are known: answered in its protocol */
        return reject(p, 413, too_large_body);
    }
    bool expect_continue = http11 && p->expect != NULL &&
                           strcasecmp(p->expect, "100-continue") == 0 && (chunked || clen > 0);
    p->hooks->headers_done(p->owner, expect_continue);
    return 0;
}

static int on_body(llhttp_t *ll, const char *at, size_t n)
{
    transport_h1_parser *p = from_ll(ll);
    if (p->discard_body)
        return 0;
    if (n > p->max_body - p->body_len) {
        p->reject_err = PINS_ETOO_LARGE;
        return reject(p, 413, too_large_body);
    }
    if (n == 0)
        return 0;
    if (p->body_len + n > p->body_cap) {
        size_t cap = p->body_cap ? p->body_cap : 4096;
        while (cap < p->body_len + n)
            cap *= 2;
        if (cap > p->max_body)
            cap = p->max_body;
        if (p->hooks->body_grow != NULL && p->hooks->body_grow(p->owner, cap - p->body_cap) != 0) {
            p->reject_err = PINS_ERESOURCE_EXHAUSTED;
            return reject(p, 503, busy_body);
        }
        unsigned char *nb = realloc(p->body, cap);
        if (nb == NULL)
            return reject(p, 503, nomem_body);
        p->body = nb;
        p->body_cap = cap;
    }
    memcpy(p->body + p->body_len, at, n);
    p->body_len += n;
    return 0;
}

static int on_message_complete(llhttp_t *ll)
{
    transport_h1_parser *p = from_ll(ll);
    p->keep_alive = llhttp_should_keep_alive(ll) != 0;
    p->upgrade = ll->upgrade != 0;
    p->http10 = ll->http_minor == 0;
    p->done = true;
    return HPE_PAUSED; /* one request at a time: the connection answers it first */
}

static const llhttp_settings_t settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_url_complete = on_url_complete,
    .on_header_field = on_header_bytes,
    .on_header_field_complete = on_header_field_complete,
    .on_header_value = on_header_bytes,
    .on_header_value_complete = on_header_value_complete,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

/* ---- public ---------------------------------------------------------------------------------- */

void transport_h1_parser_init(transport_h1_parser *p, size_t max_body,
                              const transport_h1_parser_hooks *hooks, void *owner)
{
    memset(p, 0, sizeof(*p));
    llhttp_init(&p->ll, HTTP_REQUEST, &settings);
    /* The defaults, made explicit: no request smuggling through lenient parsing. */
    llhttp_set_lenient_headers(&p->ll, 0);
    llhttp_set_lenient_chunked_length(&p->ll, 0);
    llhttp_set_lenient_keep_alive(&p->ll, 0);
    llhttp_set_lenient_transfer_encoding(&p->ll, 0);
    p->ll.data = p;
    p->hooks = hooks;
    p->owner = owner;
    p->max_body = max_body;
}

int transport_h1_parser_feed(transport_h1_parser *p, const char *data, size_t len, size_t *pused)
{
    *pused = 0;
    if (p->reject_status != 0)
        return TRANSPORT_H1_REJECT;
    if (p->done) {
        reject(p, 500, internal_body); /* the owner did not take the previous request */
        return TRANSPORT_H1_REJECT;
    }
    if (scan_fold(p, data, len)) {
        reject_malformed(p, "obs-fold line folding in a header field");
        return TRANSPORT_H1_REJECT;
    }
    llhttp_errno_t e = llhttp_execute(&p->ll, data, len);
    if (e == HPE_OK) {
        *pused = len;
        return TRANSPORT_H1_MORE;
    }
    if (e == HPE_PAUSED && p->done) {
        *pused = (size_t)(llhttp_get_error_pos(&p->ll) - data);
        llhttp_resume(&p->ll);
        return TRANSPORT_H1_REQUEST;
    }
    if (p->reject_status == 0) {
        const char *why = llhttp_get_error_reason(&p->ll);
        reject_malformed(p, why != NULL ? why : llhttp_errno_name(e));
    }
    return TRANSPORT_H1_REJECT;
}

void transport_h1_parser_next(transport_h1_parser *p)
{
    p->arena = NULL;
    p->method = NULL;
    p->path = NULL;
    p->headers = NULL;
    p->nheaders = 0;
    p->cap_headers = 0;
    p->header_bytes = 0;
    p->name = NULL;
    p->host = NULL;
    p->expect = NULL;
    p->transfer_encoding = NULL;
    p->n_content_length = 0;
    p->n_transfer_encoding = 0;
    p->n_host = 0;
    p->http10 = false;
    p->keep_alive = false;
    p->upgrade = false;
    p->head = false;
    p->begun = false;
    p->discard_body = false;
    p->in_trailers = false;
    p->done = false;
    p->fold_state = FOLD_LINE_START;
    p->fold_seen_line = false;
    p->body_len = 0;
    if (p->body_cap > BODY_KEEP_MAX) {
        free(p->body);
        p->body = NULL;
        p->body_cap = 0;
    }
    p->scratch_len = 0;
    if (p->scratch_cap > SCRATCH_KEEP_MAX) {
        free(p->scratch);
        p->scratch = NULL;
        p->scratch_cap = 0;
    }
}

bool transport_h1_parser_in_request(const transport_h1_parser *p)
{
    return p->begun && !p->done;
}

bool transport_h1_parser_in_headers(const transport_h1_parser *p)
{
    return p->begun && !p->in_trailers;
}

void transport_h1_parser_free(transport_h1_parser *p)
{
    free(p->body);
    p->body = NULL;
    p->body_cap = 0;
    free(p->scratch);
    p->scratch = NULL;
    p->scratch_cap = 0;
}
