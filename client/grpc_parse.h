/* client/grpc_parse.h: the gRPC response parser of libpins-client (internal).
 *
 * Pure: no I/O, no HTTP/2. The connection feeds it one response: the header block (entry by
 * entry, then client__parse_end_block), the DATA bytes in chunks of any size, the trailers
 * (another block), and finally client__parse_finish at END_STREAM. It hands out whole messages
 * (the bytes after the 5-byte prefix) through a callback and turns what it saw into the final
 * pins_status, the way gRPC does:
 *  - a message whose compressed flag is set (this client never sends grpc-accept-encoding):
 * INTERNAL;
 *  - a length prefix above max_message: RESOURCE_EXHAUSTED, before anything of it is buffered;
 *  - a prefix promising more than arrives before END_STREAM: INTERNAL "truncated message";
 *  - grpc-status: decimal digits only (else INTERNAL), a number above 16 is UNKNOWN;
 *  - grpc-message percent-decoded (kept as sent when it is not valid percent-encoding);
 *  - informational (1xx) header blocks before the response are skipped;
 *  - :status other than 200 without grpc-status: gRPC's HTTP-to-code table;
 *  - a content-type not starting with application/grpc: UNKNOWN;
 *  - END_STREAM without grpc-status: INTERNAL "missing trailers";
 *  - a body after headers with a :status other than 200, or with a content-type other than
 *    application/grpc, is not gRPC: it is dropped unparsed (a proxy's 503 text/html page is
 *    UNAVAILABLE by the table above, not a malformed message);
 *  - header blocks above max_header_bytes (name + value + 32 per entry, RFC 7540 6.5.2) or
 *    CLIENT_MAX_METADATA entries: RESOURCE_EXHAUSTED.
 * The first error sticks: later input is ignored and finish reports it.
 *
 * Memory: the parser owns a buffer for a message that arrives split (at most max_message bytes)
 * and the metadata lists until finish moves them into the status. client__parse_free releases
 * everything; a parser may be freed at any point.
 */
#ifndef PINS_CLIENT_GRPC_PARSE_H
#define PINS_CLIENT_GRPC_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pins/client.h"

/* The most entries a response's header block and trailers may hold together (and a request's
 * caller metadata). */
#define CLIENT_MAX_METADATA 256

/* One whole message (data[0..len), borrowed for the callback). Return 0 to go on, or a pins
 * code to stop the parse with it (message in msg). */
typedef int (*client__parse_msg_cb)(void *arg, const uint8_t *data, size_t len);

typedef struct client__parse {
    /* limits, set by init */
    size_t max_message;
    size_t max_header_bytes;
    /* the response so far */
    int http_status;  /* 0 until :status */
    int blocks;       /* header blocks completed (1: headers, 2: trailers) */
    bool in_trailers; /* the block being fed is the trailers */
    bool content_type_seen;
    bool content_type_ok;
    bool skip_block;        /* the block being fed is an informational (1xx) response: ignored */
    bool not_grpc;          /* the first block ended with a :status other than 200 or a content-type
                             * other than application/grpc: the body is not gRPC and is dropped */
    int grpc_status;        /* -1 until seen; -2 malformed */
    char *grpc_message;     /* raw, as received (malloc) */
    int64_t retry_after_ms; /* -1 when none */
    uint8_t *details;       /* grpc-status-details-bin, decoded (malloc) */
    size_t details_len;
    char *request_id;    /* the response's x-request-id (malloc) */
    size_t header_bytes; /* counted against max_header_bytes */
    pins_metadata_list headers;
    pins_metadata_list trailers;
    /* framing */
    uint8_t prefix[5];
    size_t prefix_have;
    size_t msg_len; /* of the message being assembled */
    uint8_t *msg;   /* its bytes so far (malloc, msg_len), NULL while none */
    size_t msg_have;
    bool in_message; /* a prefix was read, msg_len bytes are due */
    size_t messages; /* whole messages delivered */
    /* the first error */
    int error; /* 0 or a pins code */
    char error_msg[160];
} client__parse;

void client__parse_init(client__parse *p, size_t max_message, size_t max_header_bytes);
void client__parse_free(client__parse *p);
/* One header entry of the current block (name lower case, as HTTP/2 requires). Returns 0 or the
 * sticky error code. */
int client__parse_header(client__parse *p, const char *name, size_t nlen, const char *value,
                         size_t vlen);
/* The current block ended (END_HEADERS); the next block is the trailers. Returns as above. */
int client__parse_end_block(client__parse *p);
/* DATA bytes; every whole message goes to cb. Returns 0 or the sticky error code. */
int client__parse_data(client__parse *p, const uint8_t *data, size_t len, client__parse_msg_cb cb,
                       void *arg);
/* Sets a sticky error (the first one wins). Returns code. */
int client__parse_fail(client__parse *p, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* END_STREAM: fills st (code, message, http_status, from_server, retry_after_ms, details,
 * headers, trailers, request_id when the response had one; attempts untouched) and moves the
 * metadata into it. Returns st->code. */
int client__parse_finish(client__parse *p, pins_status *st);
/* The gRPC code for an HTTP status without grpc-status. */
int client__http_to_code(int http_status);

#endif
