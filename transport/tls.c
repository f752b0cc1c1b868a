/* transport/tls.c: the only file of pinsd that talks to OpenSSL's TLS API. */
#include "transport/tls.h"

#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>

#include "common/error.h"

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    static const unsigned char prefs[] = "\x02h2\x08http/1.1";
    unsigned char *sel;
    if (SSL_select_next_proto(&sel, outlen, prefs, sizeof(prefs) - 1, in, inlen) !=
        OPENSSL_NPN_NEGOTIATED)
        return SSL_TLSEXT_ERR_NOACK;
    *out = sel;
    return SSL_TLSEXT_ERR_OK;
}

static void set_err(char *err, size_t errlen, const char *what, const char *file)
{
    unsigned long e = ERR_get_error();
    char reason[128] = "";
    if (e != 0)
        ERR_error_string_n(e, reason, sizeof(reason));
    snprintf(err, errlen, "%s %s%s%s", what, file, reason[0] ? ": " : "", reason);
    ERR_clear_error();
}

int transport_tls_ctx_new(const char *cert_file, const char *key_file, const char *client_ca,
                          void **pctx, char *err, size_t errlen)
{
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL) {
        snprintf(err, errlen, "cannot create a TLS context");
        return PINS_EINVALID_ARGUMENT;
    }
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);
    SSL_CTX_set_options(ctx, SSL_OP_NO_COMPRESSION | SSL_OP_NO_RENEGOTIATION |
                                 SSL_OP_CIPHER_SERVER_PREFERENCE);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file) != 1) {
        set_err(err, errlen, "invalid TLS_CERT_FILE: cannot load certificate chain from",
                cert_file);
        goto fail;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, key_file, SSL_FILETYPE_PEM) != 1) {
        set_err(err, errlen, "invalid TLS_KEY_FILE: cannot load private key from", key_file);
        goto fail;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        set_err(err, errlen, "invalid TLS_KEY_FILE: key does not match the certificate in",
                cert_file);
        goto fail;
    }
    if (client_ca != NULL && client_ca[0] != '\0') {
        if (SSL_CTX_load_verify_locations(ctx, client_ca, NULL) != 1) {
            set_err(err, errlen, "invalid TLS_CLIENT_CA_FILE: cannot load CA certificates from",
                    client_ca);
            goto fail;
        }
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    SSL_CTX_set_alpn_select_cb(ctx, on_alpn, NULL);
    *pctx = ctx;
    return 0;
fail:
    SSL_CTX_free(ctx);
    return PINS_EINVALID_ARGUMENT;
}

void transport_tls_ctx_free(void *ctx)
{
    SSL_CTX_free(ctx);
}

struct ssl_st *transport_tls_ssl_new(void *ctx)
{
    return SSL_new(ctx);
}
