/* tests/fuzz/fuzz_http1.c: libFuzzer target for the HTTP/1.1 request parser (transport/h1_parse.c).
 *
 * Feeds the input to the parser twice, once whole and once in pieces whose size the first byte
 * chooses, through the same llhttp settings and callbacks transport/h1.c uses, and checks that:
 *   - every accepted request satisfies the parser's contract (origin-form path, lower-case token
 *     header names without CR or LF in values, at most 100 headers, body within the limit, one
 *     Content-Length at most and never with Transfer-Encoding);
 *   - every rejection carries a known status and a body;
 *   - how the bytes are split never changes which requests are accepted (a request smuggled
 *     through a split point would show up here).
 * Like a connection, a run stops at the first rejection, after a request that closes the
 * connection, or after an Upgrade request.
 *
 * Corpus: tests/fuzz/corpus/http1/.
 */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "transport/h1_parse.h"

#define MAX_BODY     4096
#define MAX_REQUESTS 64

typedef struct outcome {
    size_t nrequests;
    uint64_t digest[MAX_REQUESTS];
    bool rejected;
} outcome;

typedef struct fuzz_owner {
    pins_arena *arena;
} fuzz_owner;

static pins_arena *on_begin(void *owner)
{
    fuzz_owner *o = owner;
    pins_arena_reset(o->arena);
    return o->arena;
}

static void on_headers(void *owner, bool expect_continue)
{
    (void)owner;
    (void)expect_continue;
}

static const transport_h1_parser_hooks hooks = {.begin = on_begin, .headers_done = on_headers};

static uint64_t mix(uint64_t h, const void *data, size_t len)
{
    const unsigned char *p = data;
    for (size_t i = 0; i < len; i++)
        h = (h ^ p[i]) * 1099511628211ull;
    return (h ^ len) * 1099511628211ull;
}

static bool token_lower(const char *s)
{
    if (s[0] == '\0')
        return false;
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;
        if ((ch >= 'A' && ch <= 'Z') || ch <= ' ' || ch >= 0x7f ||
            strchr("\"(),/:;<=>?@[\\]{}", ch))
            return false;
    }
    return true;
}

/* Checks one accepted request and returns its digest. */
static uint64_t check_request(const transport_h1_parser *p)
{
    if (p->method == NULL || p->path == NULL || p->nheaders > TRANSPORT_H1_MAX_HEADERS ||
        p->body_len > MAX_BODY || (p->body_len > 0 && p->body == NULL))
        abort();
    if (p->path[0] != '/' && strcmp(p->path, "*") != 0)
        abort();
    unsigned ncl = 0, nte = 0;
    uint64_t h = mix(1469598103934665603ull, p->method, strlen(p->method));
    h = mix(h, p->path, strlen(p->path));
    for (size_t i = 0; i < p->nheaders; i++) {
        const rpc_header *hd = &p->headers[i];
        if (!token_lower(hd->name) || strpbrk(hd->value, "\r\n") != NULL)
            abort();
        ncl += strcmp(hd->name, "content-length") == 0;
        nte += strcmp(hd->name, "transfer-encoding") == 0;
        h = mix(h, hd->name, strlen(hd->name));
        h = mix(h, hd->value, strlen(hd->value));
    }
    if (ncl > 1 || (ncl > 0 && nte > 0) || nte > 1)
        abort();
    return mix(h, p->body, p->body_len);
}

static void run(const uint8_t *data, size_t size, size_t piece, outcome *out)
{
    fuzz_owner owner = {.arena = pins_arena_new(1u << 22)};
    if (owner.arena == NULL)
        abort();
    transport_h1_parser p;
    transport_h1_parser_init(&p, MAX_BODY, &hooks, &owner);
    memset(out, 0, sizeof(*out));
    size_t off = 0;
    while (off < size) {
        size_t n = size - off < piece ? size - off : piece;
        size_t used = 0;
        int r = transport_h1_parser_feed(&p, (const char *)data + off, n, &used);
        if (used > n)
            abort();
        off += used;
        if (r == TRANSPORT_H1_MORE) {
            if (used != n)
                abort();
            continue;
        }
        if (r == TRANSPORT_H1_REJECT) {
            int s = p.reject_status;
            if (p.reject_body == NULL || !(s == 400 || s == 413 || s == 414 || s == 431 ||
                                           s == 500 || s == 501 || s == 503 || s == 505))
                abort();
            out->rejected = true;
            break;
        }
        if (out->nrequests < MAX_REQUESTS)
            out->digest[out->nrequests] = check_request(&p);
        out->nrequests++;
        bool stop = !p.keep_alive || p.upgrade;
        transport_h1_parser_next(&p);
        if (stop)
            break;
    }
    transport_h1_parser_free(&p);
    pins_arena_free(owner.arena);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 1)
        return 0;
    size_t piece = (size_t)data[0] % 64 + 1;
    data++;
    size--;
    outcome whole, split;
    run(data, size, size > 0 ? size : 1, &whole);
    run(data, size, piece, &split);
    if (whole.nrequests != split.nrequests)
        abort();
    size_t n = whole.nrequests < MAX_REQUESTS ? whole.nrequests : MAX_REQUESTS;
    if (memcmp(whole.digest, split.digest, n * sizeof(whole.digest[0])) != 0)
        abort();
    return 0;
}
