/* client/client_int.h: what the files of libpins-client share and nobody else sees.
 *
 * status.c owns the pins_status helpers (metadata lists, setting a client-side status, moving a
 * status); methods.c the method table; tls.c the OpenSSL session over memory BIOs; conn.c the
 * event-driven core (pins_conn, pins_call); blocking.c the blocking API on top of it. The
 * response parser has its own header (grpc_parse.h) because it is pure and fuzzed alone.
 */
#ifndef PINS_CLIENT_CLIENT_INT_H
#define PINS_CLIENT_CLIENT_INT_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "client/grpc_parse.h" /* CLIENT_MAX_METADATA */
#include "pins/client.h"

/* ---- status.c ------------------------------------------------------------------------------ */

/* Appends a copy of name[0..nlen) and value[0..vlen) to l (both NUL-terminated in the copy).
 * Returns 0 or PINS_CODE_RESOURCE_EXHAUSTED when out of memory. */
int client__md_add(pins_metadata_list *l, const char *name, size_t nlen, const char *value,
                   size_t vlen);
/* Frees l's entries; l is empty afterwards. */
void client__md_clear(pins_metadata_list *l);
/* Sets st to a client-side status: code, printf message, from_server false. Keeps attempts and
 * request_id; clears the rest. */
void client__status_set(pins_status *st, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
void client__status_vset(pins_status *st, int code, const char *fmt, va_list ap)
    __attribute__((format(printf, 3, 0)));
/* Moves src into dst (dst's previous contents are released); src is left initialised. */
void client__status_move(pins_status *dst, pins_status *src);
/* A new copy of s, or NULL. */
char *client__strdup(const char *s);
/* A status message: a new copy of s (NULL: ""), or, when out of memory, a static "" that
 * pins_status_clear knows not to free. Never NULL. */
char *client__text(const char *s);

/* ---- tls.c --------------------------------------------------------------------------------- */

typedef struct client__tls_ctx client__tls_ctx;
typedef struct client__tls client__tls;

/* A TLS context for connections to servers: verification against ca_file (NULL: the system's
 * default paths) unless insecure, the client certificate and key for mutual TLS (both or
 * neither), ALPN "h2". Returns 0 or PINS_CODE_INVALID_ARGUMENT with the reason in err. */
int client__tls_ctx_new(const pins_options *opts, client__tls_ctx **pctx, char *err, size_t errlen);
void client__tls_ctx_free(client__tls_ctx *ctx);
/* A client TLS session verifying name (a host name or an IP address; SNI for names only).
 * NULL when out of memory. */
client__tls *client__tls_new(client__tls_ctx *ctx, const char *name);
void client__tls_free(client__tls *t);
/* Ciphertext received from the peer. Returns 0 or -1 (out of memory). */
int client__tls_feed(client__tls *t, const uint8_t *p, size_t n);
/* Advances the handshake: 1 done (ALPN h2 negotiated), 0 wants more input, -1 failed, -2 the
 * server's certificate failed verification (reason in err for both). */
int client__tls_handshake(client__tls *t, char *err, size_t errlen);
/* Plaintext decrypted so far into p: > 0 bytes, 0 none for now, -1 the peer closed or the
 * session failed (reason in err). */
long client__tls_read(client__tls *t, uint8_t *p, size_t n, char *err, size_t errlen);
/* Encrypts p[0..n). Returns 0 or -1 (reason in err). */
int client__tls_write(client__tls *t, const uint8_t *p, size_t n, char *err, size_t errlen);
/* Ciphertext waiting to go to the peer, copied into p: the byte count (0: none). */
size_t client__tls_take(client__tls *t, uint8_t *p, size_t n);

/* ---- conn.c -------------------------------------------------------------------------------- */

/* Starts a plain HTTP/2 GET of path on conn (see pins_client_http_get). on_done gets resp NULL;
 * when its status is OK, *pbody holds the body (new, NUL-terminated) and *plen (may be NULL) its
 * length, both set before on_done runs. NULL on a bad path or out of memory. */
pins_call *client__conn_get(pins_conn *conn, const char *path, const pins_call_options *copts,
                            pins_done_cb on_done, void *arg, char **pbody, size_t *plen);

#endif
