/* transport/tls.h: TLS for the listeners (OpenSSL lives in transport/tls.c only).
 *
 * One server context per process, shared by every worker (OpenSSL 3 contexts are thread safe
 * once built). ALPN offers h2 and http/1.1; with a client CA file, client certificates are
 * required and verified (mutual TLS).
 */
#ifndef PINS_TRANSPORT_TLS_H
#define PINS_TRANSPORT_TLS_H

#include <stddef.h>

struct ssl_st;

/* A new server context from PEM files (client_ca may be NULL). On failure writes one line into
 * err (which names the file, never key material). Returns 0 or PINS_EINVALID_ARGUMENT. */
int transport_tls_ctx_new(const char *cert_file, const char *key_file, const char *client_ca,
                          void **pctx, char *err, size_t errlen);
void transport_tls_ctx_free(void *ctx);
/* A new SSL for one accepted connection, or NULL. */
struct ssl_st *transport_tls_ssl_new(void *ctx);

#endif
