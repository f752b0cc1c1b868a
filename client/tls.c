/* client/tls.c: TLS for libpins-client, the one file that uses OpenSSL.
 *
 * The session reads and writes two memory BIOs (SSL_set_bio with two BIO_s_mem), so the
 * connection's byte pump (conn.c) moves ciphertext between the socket and the BIOs the same way
 * for every transport. Verification is on unless the caller asks otherwise: SSL_VERIFY_PEER
 * against the given CA file or the system's default paths, and the server's name (a DNS name, or
 * an IP address through X509_VERIFY_PARAM_set1_ip_asc). SNI is sent for names, never for
 * addresses. ALPN offers "h2" only, and a server that does not pick it fails the handshake.
 * The context owns the CA store and the client certificate; each session is owned by its link.
 */
#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"

struct client__tls_ctx {
    SSL_CTX *ctx;
    bool verify;
};

struct client__tls {
    SSL *ssl;
    BIO *rbio; /* ciphertext from the peer (owned by ssl) */
    BIO *wbio; /* ciphertext to the peer (owned by ssl) */
};

/* The password callback of the key file: the library has no way to ask for a passphrase (it
 * must never prompt on a terminal, as OpenSSL's default callback does), so it supplies none and
 * notes that one was wanted, for the error message. */
static int no_password(char *buf, int size, int rwflag, void *userdata)
{
    (void)buf;
    (void)size;
    (void)rwflag;
    *(bool *)userdata = true;
    return 0;
}

static void ssl_error(char *err, size_t errlen, const char *what)
{
    unsigned long e = ERR_get_error();
    char buf[200] = "";
    if (e != 0)
        ERR_error_string_n(e, buf, sizeof(buf));
    snprintf(err, errlen, "%s%s%s", what, e != 0 ? ": " : "", buf);
    ERR_clear_error();
}

int client__tls_ctx_new(const pins_options *opts, client__tls_ctx **pctx, char *err, size_t errlen)
{
    static const unsigned char alpn[] = {2, 'h', '2'};
    client__tls_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        snprintf(err, errlen, "out of memory");
        return PINS_CODE_INVALID_ARGUMENT;
    }
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (c->ctx == NULL) {
        ssl_error(err, errlen, "cannot create a TLS context");
        goto fail;
    }
    SSL_CTX_set_min_proto_version(c->ctx, TLS1_2_VERSION);
    SSL_CTX_set_mode(c->ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_set_alpn_protos(c->ctx, alpn, sizeof(alpn)) != 0) {
        ssl_error(err, errlen, "cannot set ALPN");
        goto fail;
    }
    c->verify = !opts->insecure_skip_verify;
    if (c->verify) {
        int ok = opts->ca_file != NULL ? SSL_CTX_load_verify_locations(c->ctx, opts->ca_file, NULL)
                                       : SSL_CTX_set_default_verify_paths(c->ctx);
        if (ok != 1) {
            char what[300];
            snprintf(what, sizeof(what), "cannot load CA file %s",
                     opts->ca_file != NULL ? opts->ca_file : "(system default)");
            ssl_error(err, errlen, what);
            goto fail;
        }
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    } else {
        SSL_CTX_set_verify(c->ctx, SSL_VERIFY_NONE, NULL);
    }
    if ((opts->cert_file == NULL) != (opts->key_file == NULL)) {
        snprintf(err, errlen, "a client certificate needs both cert_file and key_file");
        goto fail;
    }
    bool wanted_password = false;
    SSL_CTX_set_default_passwd_cb(c->ctx, no_password);
    SSL_CTX_set_default_passwd_cb_userdata(c->ctx, &wanted_password);
    if (opts->cert_file != NULL) {
        if (SSL_CTX_use_certificate_chain_file(c->ctx, opts->cert_file) != 1) {
            char what[300];
            snprintf(what, sizeof(what), "cannot load certificate %s", opts->cert_file);
            ssl_error(err, errlen, what);
            goto fail;
        }
        int key_ok = SSL_CTX_use_PrivateKey_file(c->ctx, opts->key_file, SSL_FILETYPE_PEM);
        if (key_ok != 1 && wanted_password) {
            snprintf(err, errlen,
                     "key %s is encrypted: passphrases are not supported, give an unencrypted key",
                     opts->key_file);
            ERR_clear_error();
            goto fail;
        }
        if (key_ok != 1 || SSL_CTX_check_private_key(c->ctx) != 1) {
            char what[300];
            snprintf(what, sizeof(what), "cannot load key %s (or it does not match)",
                     opts->key_file);
            ssl_error(err, errlen, what);
            goto fail;
        }
    }
    SSL_CTX_set_default_passwd_cb_userdata(c->ctx, NULL);
    *pctx = c;
    return 0;
fail:
    client__tls_ctx_free(c);
    return PINS_CODE_INVALID_ARGUMENT;
}

void client__tls_ctx_free(client__tls_ctx *c)
{
    if (c == NULL)
        return;
    SSL_CTX_free(c->ctx);
    free(c);
}

static bool is_ip(const char *name)
{
    unsigned char buf[16];
    return inet_pton(AF_INET, name, buf) == 1 || inet_pton(AF_INET6, name, buf) == 1;
}

client__tls *client__tls_new(client__tls_ctx *ctx, const char *name)
{
    client__tls *t = calloc(1, sizeof(*t));
    if (t == NULL)
        return NULL;
    t->ssl = SSL_new(ctx->ctx);
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    if (t->ssl == NULL || t->rbio == NULL || t->wbio == NULL) {
        BIO_free(t->rbio);
        BIO_free(t->wbio);
        SSL_free(t->ssl);
        free(t);
        return NULL;
    }
    BIO_set_mem_eof_return(t->rbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_connect_state(t->ssl);
    bool ip = is_ip(name);
    int ok = 1;
    if (!ip)
        ok = SSL_set_tlsext_host_name(t->ssl, name);
    if (ok == 1 && ctx->verify) {
        X509_VERIFY_PARAM *param = SSL_get0_param(t->ssl);
        ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(param, name) : SSL_set1_host(t->ssl, name);
    }
    if (ok != 1) {
        ERR_clear_error();
        client__tls_free(t);
        return NULL;
    }
    return t;
}

void client__tls_free(client__tls *t)
{
    if (t == NULL)
        return;
    SSL_free(t->ssl); /* frees both BIOs */
    free(t);
}

int client__tls_feed(client__tls *t, const uint8_t *p, size_t n)
{
    return BIO_write(t->rbio, p, (int)n) == (int)n ? 0 : -1;
}

int client__tls_handshake(client__tls *t, char *err, size_t errlen)
{
    int rv = SSL_do_handshake(t->ssl);
    if (rv == 1) {
        const unsigned char *proto = NULL;
        unsigned len = 0;
        SSL_get0_alpn_selected(t->ssl, &proto, &len);
        if (len != 2 || memcmp(proto, "h2", 2) != 0) {
            snprintf(err, errlen, "the server did not negotiate h2 with ALPN");
            return -1;
        }
        return 1;
    }
    int e = SSL_get_error(t->ssl, rv);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    long vr = SSL_get_verify_result(t->ssl);
    if (vr != X509_V_OK) {
        snprintf(err, errlen, "certificate verification failed: %s",
                 X509_verify_cert_error_string(vr));
        ERR_clear_error();
        return -2;
    }
    ssl_error(err, errlen, "handshake failed");
    return -1;
}

long client__tls_read(client__tls *t, uint8_t *p, size_t n, char *err, size_t errlen)
{
    int rv = SSL_read(t->ssl, p, (int)(n > INT32_MAX ? INT32_MAX : n));
    if (rv > 0)
        return rv;
    int e = SSL_get_error(t->ssl, rv);
    if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
        return 0;
    if (e == SSL_ERROR_ZERO_RETURN) {
        snprintf(err, errlen, "TLS close_notify");
        return -1;
    }
    ssl_error(err, errlen, "TLS read failed");
    return -1;
}

int client__tls_write(client__tls *t, const uint8_t *p, size_t n, char *err, size_t errlen)
{
    while (n > 0) {
        int chunk = n > (1u << 30) ? 1 << 30 : (int)n;
        int rv = SSL_write(t->ssl, p, chunk);
        if (rv <= 0) {
            ssl_error(err, errlen, "TLS write failed");
            return -1;
        }
        p += rv;
        n -= (size_t)rv;
    }
    return 0;
}

size_t client__tls_take(client__tls *t, uint8_t *p, size_t n)
{
    int rv = BIO_read(t->wbio, p, (int)(n > INT32_MAX ? INT32_MAX : n));
    return rv > 0 ? (size_t)rv : 0;
}
