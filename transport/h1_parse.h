/* transport/h1_parse.h: the HTTP/1.1 request parser behind transport/h1.c, without a connection.
 *
 * transport/h1_parse.c wraps llhttp (lenient flags all off) with the checks llhttp leaves to its
 * user, so that one request means the same thing to us and to any proxy in front of us: one
 * Content-Length at most and never together with Transfer-Encoding, Transfer-Encoding only as a
 * single "chunked", no obs-fold line folding, header names made of token characters, HTTP/1.0
 * and HTTP/1.1 only, a Host header on HTTP/1.1. It also bounds what a peer can make us hold: the
 * request target (8 KiB), the header list (100 fields, 64 KiB with the trailers), and the body
 * (max_body bytes).
 *
 * The parser stops after each complete request (llhttp pauses) so that the connection answers
 * requests strictly one after the other; transport/h1.c owns the connection side, and the fuzzer
 * (tests/fuzz/fuzz_http1.c) drives this part alone.
 *
 * Memory: each request lives in the arena hooks->begin() returns (the exchange's call arena in
 * transport/h1.c): method, path and the header list are allocated there. The body is a malloc'd
 * buffer owned by the parser, reused from request to request. Not thread-safe; one per
 * connection.
 */
#ifndef PINS_TRANSPORT_H1_PARSE_H
#define PINS_TRANSPORT_H1_PARSE_H

#include <llhttp.h>
#include <stdbool.h>
#include <stddef.h>

#include "common/arena.h"
#include "rpc/core.h"

#define TRANSPORT_H1_MAX_TARGET       8192
#define TRANSPORT_H1_MAX_HEADERS      100
#define TRANSPORT_H1_MAX_HEADER_BYTES 65536

/* What the parser needs from its owner. */
typedef struct transport_h1_parser_hooks {
    /* A request starts (its first byte): returns the arena that will hold it, or NULL when out of
     * memory (the request is then rejected with 503). */
    pins_arena *(*begin)(void *owner);
    /* The request headers are complete and acceptable. expect_continue: the client waits for
     * "100 Continue" before it sends the body (already checked against the body limit). */
    void (*headers_done)(void *owner, bool expect_continue);
    /* Optional: the body buffer is about to grow by add bytes; nonzero refuses (the request is
     * then rejected with 503: the server holds too many buffered bytes). The buffer's size is
     * body_cap; it shrinks in transport_h1_parser_next() and goes in transport_h1_parser_free().
     */
    int (*body_grow)(void *owner, size_t add);
} transport_h1_parser_hooks;

/* The result of transport_h1_parser_feed. */
enum transport__h1_feed {
    TRANSPORT_H1_MORE = 0,    /* everything consumed; more bytes needed */
    TRANSPORT_H1_REQUEST = 1, /* a request is complete (see the request fields) */
    TRANSPORT_H1_REJECT = 2,  /* the input is refused: answer reject_status and close */
};

typedef struct transport_h1_parser {
    llhttp_t ll;
    const transport_h1_parser_hooks *hooks;
    void *owner;
    size_t max_body;
    pins_arena *arena; /* the current request's, from hooks->begin; NULL between requests */

    /* The request, valid from TRANSPORT_H1_REQUEST until transport_h1_parser_next(). */
    const char *method; /* static string */
    const char *path;   /* origin form (an absolute-form target is reduced to its path) */
    rpc_header *headers;
    size_t nheaders;
    unsigned char *body; /* owned by the parser */
    size_t body_len;
    bool http10;     /* HTTP/1.0 request */
    bool keep_alive; /* the client keeps the connection open after this request */
    bool upgrade;    /* Upgrade request (not honoured: the connection closes after it) */
    bool head;       /* HEAD request */

    /* A rejection, valid after TRANSPORT_H1_REJECT: the HTTP status and its JSON body. When the
     * headers were complete and the body was refused (too large: PINS_ETOO_LARGE; the buffer
     * budget: PINS_ERESOURCE_EXHAUSTED), reject_err says which, so that the connection can
     * answer in the request's protocol; 0 otherwise. */
    int reject_status;
    const char *reject_body;
    int reject_err;

    /* Internal state. */
    char *scratch; /* the URL, header name or value being received */
    size_t scratch_len, scratch_cap;
    size_t body_cap;
    size_t cap_headers;
    size_t header_bytes;
    const char *name; /* the header whose value is being received */
    const char *host;
    const char *expect;
    const char *transfer_encoding;
    unsigned n_content_length, n_transfer_encoding, n_host;
    bool discard_body; /* the request was answered on its headers: its body is dropped unread */
    bool begun;        /* the request's first byte was seen */
    bool in_trailers;  /* its headers are complete (header callbacks now bring trailers) */
    bool done;
    int fold_state; /* the obs-fold scanner */
    bool fold_seen_line;
    char reject_buf[256];
} transport_h1_parser;

/* Prepares p for a connection; bodies above max_body bytes are refused with 413. Borrows hooks
 * and owner for the parser's life. */
void transport_h1_parser_init(transport_h1_parser *p, size_t max_body,
                              const transport_h1_parser_hooks *hooks, void *owner);
/* Parses up to len bytes of data. *pused gets the bytes consumed: all of them for
 * TRANSPORT_H1_MORE, those up to the end of the request for TRANSPORT_H1_REQUEST (the rest is fed
 * again after transport_h1_parser_next). After TRANSPORT_H1_REJECT the parser accepts nothing
 * more. Returns a value of enum transport__h1_feed. */
int transport_h1_parser_feed(transport_h1_parser *p, const char *data, size_t len, size_t *pused);
/* Forgets the request returned by the last feed; the next feed starts the next request. */
void transport_h1_parser_next(transport_h1_parser *p);
/* True while a request is arriving (its first byte seen, the request not complete). */
bool transport_h1_parser_in_request(const transport_h1_parser *p);
/* True while a request's headers are arriving (its first byte seen, its headers not complete). */
bool transport_h1_parser_in_headers(const transport_h1_parser *p);
/* Frees what the parser allocated (not the struct). */
void transport_h1_parser_free(transport_h1_parser *p);

#endif
