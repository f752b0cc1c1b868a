/* tests/unit/client/test_tls.c: libpins-client over TLS (client/tls.c through client/conn.c)
 * against a fake HTTP/2 server that speaks TLS.
 *
 * The certificates are made by the test at start (OpenSSL's API, P-256 keys, valid for a day)
 * in a temporary directory removed at the end: a CA, a server certificate for localhost and
 * 127.0.0.1 signed by it, a client certificate signed by it, and a second CA that signed
 * nothing the server shows. The server runs in a thread with blocking sockets (one connection at
 * a time, reads bounded by a receive timeout): TLS handshake (optionally requiring a client
 * certificate from the CA, optionally refusing ALPN h2), then an nghttp2 server session that
 * answers every request with one GetPinResponse. It counts handshakes that failed and requests
 * served. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <nghttp2/nghttp2.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "pins/client.h"

static char DIR_[64];
static char CA[128], CA2[128], SRV_CERT[128], SRV_KEY[128], CLI_CERT[128], CLI_KEY[128];

/* ---- certificates -------------------------------------------------------------------------- */

static void add_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    assert_non_null(e);
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
}

static X509 *new_cert(const char *cn, EVP_PKEY *key, X509 *issuer, EVP_PKEY *ikey, const char *san)
{
    static long serial = 1;
    X509 *x = X509_new();
    assert_non_null(x);
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), serial++);
    X509_gmtime_adj(X509_getm_notBefore(x), -3600);
    X509_gmtime_adj(X509_getm_notAfter(x), 86400);
    X509_set_pubkey(x, key);
    X509_NAME *n = X509_get_subject_name(x);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_ASC, (const unsigned char *)cn, -1, -1, 0);
    X509_set_issuer_name(x, issuer != NULL ? X509_get_subject_name(issuer) : n);
    X509V3_CTX ctx;
    X509V3_set_ctx_nodb(&ctx);
    X509V3_set_ctx(&ctx, issuer != NULL ? issuer : x, x, NULL, NULL, 0);
    if (issuer == NULL) {
        add_ext(x, &ctx, NID_basic_constraints, "critical,CA:TRUE");
        add_ext(x, &ctx, NID_key_usage, "critical,keyCertSign,cRLSign");
    } else {
        add_ext(x, &ctx, NID_basic_constraints, "CA:FALSE");
    }
    if (san != NULL)
        add_ext(x, &ctx, NID_subject_alt_name, san);
    assert_true(X509_sign(x, ikey != NULL ? ikey : key, EVP_sha256()) > 0);
    return x;
}

static void write_pem(const char *path, X509 *x, EVP_PKEY *key)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    if (x != NULL)
        assert_int_equal(PEM_write_X509(f, x), 1);
    if (key != NULL)
        assert_int_equal(PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL), 1);
    fclose(f);
}

static int setup(void **state)
{
    (void)state;
    snprintf(DIR_, sizeof(DIR_), "/tmp/pins-client-tls-XXXXXX");
    if (mkdtemp(DIR_) == NULL)
        return -1;
    snprintf(CA, sizeof(CA), "%s/ca.pem", DIR_);
    snprintf(CA2, sizeof(CA2), "%s/ca2.pem", DIR_);
    snprintf(SRV_CERT, sizeof(SRV_CERT), "%s/server.pem", DIR_);
    snprintf(SRV_KEY, sizeof(SRV_KEY), "%s/server.key", DIR_);
    snprintf(CLI_CERT, sizeof(CLI_CERT), "%s/client.pem", DIR_);
    snprintf(CLI_KEY, sizeof(CLI_KEY), "%s/client.key", DIR_);
    EVP_PKEY *kca = EVP_EC_gen("P-256"), *kca2 = EVP_EC_gen("P-256");
    EVP_PKEY *ksrv = EVP_EC_gen("P-256"), *kcli = EVP_EC_gen("P-256");
    X509 *ca = new_cert("test ca", kca, NULL, NULL, NULL);
    X509 *ca2 = new_cert("other ca", kca2, NULL, NULL, NULL);
    X509 *srv = new_cert("server", ksrv, ca, kca, "DNS:localhost,IP:127.0.0.1");
    X509 *cli = new_cert("client", kcli, ca, kca, "DNS:client");
    write_pem(CA, ca, NULL);
    write_pem(CA2, ca2, NULL);
    write_pem(SRV_CERT, srv, NULL);
    write_pem(SRV_KEY, NULL, ksrv);
    write_pem(CLI_CERT, cli, NULL);
    write_pem(CLI_KEY, NULL, kcli);
    X509_free(ca);
    X509_free(ca2);
    X509_free(srv);
    X509_free(cli);
    EVP_PKEY_free(kca);
    EVP_PKEY_free(kca2);
    EVP_PKEY_free(ksrv);
    EVP_PKEY_free(kcli);
    return 0;
}

static int teardown(void **state)
{
    (void)state;
    const char *files[] = {CA, CA2, SRV_CERT, SRV_KEY, CLI_CERT, CLI_KEY};
    for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++)
        unlink(files[i]);
    rmdir(DIR_);
    return 0;
}

/* ---- the TLS server ------------------------------------------------------------------------ */

typedef struct server {
    int lfd;
    int port;
    bool require_client_cert;
    bool refuse_h2;
    SSL_CTX *ctx;
    pthread_t th;
    pthread_mutex_t mu;
    int handshakes_failed; /* under mu */
    int requests;          /* under mu */
    char sni[64];          /* the last server name the client sent, under mu */
} server;

static server S;
static uint8_t RESP[128];
static size_t RESP_LEN;

typedef struct sconn {
    SSL *ssl;
    nghttp2_session *h2;
} sconn;

static ssize_t s_send(nghttp2_session *s, const uint8_t *data, size_t len, int flags, void *u)
{
    (void)s;
    (void)flags;
    sconn *c = u;
    int n = SSL_write(c->ssl, data, (int)len);
    return n > 0 ? n : NGHTTP2_ERR_CALLBACK_FAILURE;
}

static ssize_t s_read(nghttp2_session *s, int32_t id, uint8_t *buf, size_t length, uint32_t *flags,
                      nghttp2_data_source *src, void *u)
{
    (void)src;
    (void)u;
    (void)length;
    memcpy(buf, RESP, RESP_LEN);
    *flags |= NGHTTP2_DATA_FLAG_EOF | NGHTTP2_DATA_FLAG_NO_END_STREAM;
    nghttp2_nv tr = {(uint8_t *)"grpc-status", (uint8_t *)"0", 11, 1, NGHTTP2_NV_FLAG_NONE};
    nghttp2_submit_trailer(s, id, &tr, 1);
    return (ssize_t)RESP_LEN;
}

static int s_frame_recv(nghttp2_session *s, const nghttp2_frame *frame, void *u)
{
    (void)u;
    bool request_end = (frame->hd.type == NGHTTP2_HEADERS || frame->hd.type == NGHTTP2_DATA) &&
                       (frame->hd.flags & NGHTTP2_FLAG_END_STREAM);
    if (!request_end)
        return 0;
    pthread_mutex_lock(&S.mu);
    S.requests++;
    pthread_mutex_unlock(&S.mu);
    nghttp2_nv h[] = {
        {(uint8_t *)":status", (uint8_t *)"200", 7, 3, NGHTTP2_NV_FLAG_NONE},
        {(uint8_t *)"content-type", (uint8_t *)"application/grpc", 12, 16, NGHTTP2_NV_FLAG_NONE}};
    nghttp2_data_provider prd = {.read_callback = s_read};
    nghttp2_submit_response(s, frame->hd.stream_id, h, 2, &prd);
    return 0;
}

static int on_alpn(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                   const unsigned char *in, unsigned int inlen, void *arg)
{
    (void)ssl;
    (void)arg;
    if (S.refuse_h2)
        return SSL_TLSEXT_ERR_NOACK;
    for (unsigned i = 0; i + 1 < inlen; i += 1u + in[i]) {
        if (in[i] == 2 && i + 3 <= inlen && memcmp(in + i + 1, "h2", 2) == 0) {
            *out = in + i + 1;
            *outlen = 2;
            return SSL_TLSEXT_ERR_OK;
        }
    }
    return SSL_TLSEXT_ERR_NOACK;
}

static void serve(int fd)
{
    struct timeval tv = {.tv_sec = 5};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    sconn c = {0};
    c.ssl = SSL_new(S.ctx);
    SSL_set_fd(c.ssl, fd);
    if (SSL_accept(c.ssl) != 1) {
        pthread_mutex_lock(&S.mu);
        S.handshakes_failed++;
        pthread_mutex_unlock(&S.mu);
        goto out;
    }
    const char *sni = SSL_get_servername(c.ssl, TLSEXT_NAMETYPE_host_name);
    pthread_mutex_lock(&S.mu);
    snprintf(S.sni, sizeof(S.sni), "%s", sni != NULL ? sni : "");
    pthread_mutex_unlock(&S.mu);
    nghttp2_session_callbacks *cbs;
    nghttp2_session_callbacks_new(&cbs);
    nghttp2_session_callbacks_set_send_callback(cbs, s_send);
    nghttp2_session_callbacks_set_on_frame_recv_callback(cbs, s_frame_recv);
    nghttp2_session_server_new(&c.h2, cbs, &c);
    nghttp2_session_callbacks_del(cbs);
    nghttp2_submit_settings(c.h2, NGHTTP2_FLAG_NONE, NULL, 0);
    nghttp2_session_send(c.h2);
    uint8_t buf[16384];
    for (int i = 0; i < 1000; i++) {
        int n = SSL_read(c.ssl, buf, sizeof(buf));
        if (n <= 0)
            break;
        if (nghttp2_session_mem_recv(c.h2, buf, (size_t)n) < 0 || nghttp2_session_send(c.h2) != 0)
            break;
    }
    nghttp2_session_del(c.h2);
out:
    SSL_free(c.ssl);
    ERR_clear_error();
    close(fd);
}

static void *server_thread(void *arg)
{
    (void)arg;
    for (int i = 0; i < 100; i++) {
        int fd = accept(S.lfd, NULL, NULL);
        if (fd < 0)
            break; /* the listener was shut down */
        serve(fd);
    }
    return NULL;
}

static void server_start(bool require_client_cert, bool refuse_h2)
{
    memset(&S, 0, sizeof(S));
    pthread_mutex_init(&S.mu, NULL);
    S.require_client_cert = require_client_cert;
    S.refuse_h2 = refuse_h2;
    S.ctx = SSL_CTX_new(TLS_server_method());
    assert_non_null(S.ctx);
    assert_int_equal(SSL_CTX_use_certificate_file(S.ctx, SRV_CERT, SSL_FILETYPE_PEM), 1);
    assert_int_equal(SSL_CTX_use_PrivateKey_file(S.ctx, SRV_KEY, SSL_FILETYPE_PEM), 1);
    SSL_CTX_set_alpn_select_cb(S.ctx, on_alpn, NULL);
    if (require_client_cert) {
        assert_int_equal(SSL_CTX_load_verify_locations(S.ctx, CA, NULL), 1);
        SSL_CTX_set_verify(S.ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, NULL);
    }
    S.lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = 0};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(S.lfd, (struct sockaddr *)&sin, sizeof(sin)), 0);
    assert_int_equal(listen(S.lfd, 16), 0);
    socklen_t sl = sizeof(sin);
    getsockname(S.lfd, (struct sockaddr *)&sin, &sl);
    S.port = ntohs(sin.sin_port);
    assert_int_equal(pthread_create(&S.th, NULL, server_thread, NULL), 0);
}

static void server_stop(void)
{
    shutdown(S.lfd, SHUT_RDWR);
    pthread_join(S.th, NULL);
    close(S.lfd);
    SSL_CTX_free(S.ctx);
    pthread_mutex_destroy(&S.mu);
}

static int server_get(const int *field)
{
    pthread_mutex_lock(&S.mu);
    int v = *field;
    pthread_mutex_unlock(&S.mu);
    return v;
}

/* ---- client -------------------------------------------------------------------------------- */

typedef struct tcase {
    const char *scheme_host; /* "https://localhost", "127.0.0.1" (then tls = true) */
    const char *ca;
    const char *cert;
    const char *key;
    const char *server_name;
    bool insecure;
    int retries; /* max_retries */
} tcase;

/* One GetPin with the case's options; the status in st. */
static int call(const tcase *t, pins_status *st)
{
    char addr[96];
    snprintf(addr, sizeof(addr), "%s:%d", t->scheme_host, S.port);
    pins_options o;
    pins_options_init(&o);
    o.addr = addr;
    o.tls = true;
    o.ca_file = t->ca;
    o.cert_file = t->cert;
    o.key_file = t->key;
    o.server_name = t->server_name;
    o.insecure_skip_verify = t->insecure;
    o.timeout_ms = 5000;
    o.max_retries = t->retries;
    o.backoff_initial_ms = 5;
    pins_client *c = pins_client_new(&o, st);
    if (c == NULL)
        return st->code;
    Memorypins__V1__GetPinRequest req = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    Memorypins__V1__GetPinResponse *r = NULL;
    int rv = pins_get_pin(c, &req, &r, NULL, st);
    if (rv == 0) {
        assert_non_null(r);
        assert_string_equal(r->pin->key, "tls");
        pins_message_free(&r->base);
    }
    pins_client_free(c);
    return rv;
}

static void test_tls_verified_by_name_and_by_address(void **state)
{
    (void)state;
    server_start(false, false);
    pins_status st = PINS_STATUS_INIT;
    tcase by_name = {.scheme_host = "https://localhost", .ca = CA};
    assert_int_equal(call(&by_name, &st), 0);
    assert_string_equal(S.sni, "localhost"); /* SNI for a name */
    tcase by_ip = {.scheme_host = "127.0.0.1", .ca = CA};
    assert_int_equal(call(&by_ip, &st), 0);
    assert_string_equal(S.sni, ""); /* none for an address */
    tcase named = {.scheme_host = "127.0.0.1", .ca = CA, .server_name = "localhost"};
    assert_int_equal(call(&named, &st), 0);
    assert_string_equal(S.sni, "localhost");
    assert_int_equal(server_get(&S.requests), 3);
    pins_status_clear(&st);
    server_stop();
}

static void test_tls_untrusted_or_wrong_name_is_refused(void **state)
{
    (void)state;
    server_start(false, false);
    pins_status st = PINS_STATUS_INIT;
    /* A certificate that fails verification is not retried: it would fail the same way. */
    tcase other_ca = {.scheme_host = "https://localhost", .ca = CA2, .retries = 3};
    assert_int_equal(call(&other_ca, &st), PINS_CODE_UNAVAILABLE);
    assert_non_null(strstr(st.message, "certificate verification failed"));
    assert_false(st.from_server);
    assert_int_equal(st.attempts, 1);
    tcase wrong_name = {.scheme_host = "127.0.0.1", .ca = CA, .server_name = "pins.example"};
    assert_int_equal(call(&wrong_name, &st), PINS_CODE_UNAVAILABLE);
    assert_non_null(strstr(st.message, "certificate verification failed"));
    /* Verification is on by default: the system's store does not know the test CA. */
    tcase system = {.scheme_host = "https://localhost"};
    assert_int_equal(call(&system, &st), PINS_CODE_UNAVAILABLE);
    /* insecure_skip_verify turns it off. */
    tcase insecure = {.scheme_host = "https://localhost", .ca = CA2, .insecure = true};
    assert_int_equal(call(&insecure, &st), 0);
    assert_int_equal(server_get(&S.requests), 1);
    pins_status_clear(&st);
    server_stop();
}

static void test_tls_mutual(void **state)
{
    (void)state;
    server_start(true, false);
    pins_status st = PINS_STATUS_INIT;
    tcase with = {.scheme_host = "https://localhost", .ca = CA, .cert = CLI_CERT, .key = CLI_KEY};
    assert_int_equal(call(&with, &st), 0);
    tcase without = {.scheme_host = "https://localhost", .ca = CA};
    assert_int_equal(call(&without, &st), PINS_CODE_UNAVAILABLE);
    assert_int_equal(st.attempts, 1);
    assert_int_equal(server_get(&S.requests), 1);
    assert_int_equal(server_get(&S.handshakes_failed), 1);
    /* A key without its certificate, or files that do not exist, are bad options. */
    tcase half = {.scheme_host = "https://localhost", .ca = CA, .key = CLI_KEY};
    assert_null(
        pins_client_new(&(pins_options){.addr = "https://localhost:1", .key_file = CLI_KEY}, &st));
    assert_int_equal(st.code, PINS_CODE_INVALID_ARGUMENT);
    assert_int_equal(call(&half, &st), PINS_CODE_INVALID_ARGUMENT);
    tcase missing = {.scheme_host = "https://localhost", .ca = "/nonexistent/ca.pem"};
    assert_int_equal(call(&missing, &st), PINS_CODE_INVALID_ARGUMENT);
    assert_non_null(strstr(st.message, "/nonexistent/ca.pem"));
    pins_status_clear(&st);
    server_stop();
}

static void test_tls_without_alpn_h2_is_refused(void **state)
{
    (void)state;
    server_start(false, true);
    pins_status st = PINS_STATUS_INIT;
    tcase t = {.scheme_host = "https://localhost", .ca = CA};
    assert_int_equal(call(&t, &st), PINS_CODE_UNAVAILABLE);
    assert_non_null(strstr(st.message, "h2"));
    assert_int_equal(server_get(&S.requests), 0);
    pins_status_clear(&st);
    server_stop();
}

static void test_tls_encrypted_key_is_refused_without_prompt(void **state)
{
    (void)state;
    char enc[160];
    snprintf(enc, sizeof(enc), "%s/encrypted.key", DIR_);
    EVP_PKEY *k = EVP_EC_gen("P-256");
    FILE *f = fopen(enc, "w");
    assert_non_null(f);
    assert_int_equal(
        PEM_write_PrivateKey(f, k, EVP_aes_128_cbc(), (unsigned char *)"secret", 6, NULL, NULL), 1);
    fclose(f);
    EVP_PKEY_free(k);
    /* The library never asks for a passphrase (OpenSSL's default would prompt on the terminal
     * and block): the options are refused with a message that says why. */
    pins_options o;
    pins_options_init(&o);
    o.addr = "https://localhost:1";
    o.ca_file = CA;
    o.cert_file = CLI_CERT;
    o.key_file = enc;
    pins_status st = PINS_STATUS_INIT;
    assert_null(pins_client_new(&o, &st));
    assert_int_equal(st.code, PINS_CODE_INVALID_ARGUMENT);
    assert_non_null(strstr(st.message, "encrypted"));
    pins_status_clear(&st);
    unlink(enc);
}

int main(void)
{
    Memorypins__V1__Pin pin = MEMORYPINS__V1__PIN__INIT;
    pin.key = "tls";
    Memorypins__V1__GetPinResponse r = MEMORYPINS__V1__GET_PIN_RESPONSE__INIT;
    r.pin = &pin;
    size_t n = protobuf_c_message_pack(&r.base, RESP + 5);
    memset(RESP, 0, 5);
    RESP[4] = (uint8_t)n;
    RESP_LEN = n + 5;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_tls_verified_by_name_and_by_address),
        cmocka_unit_test(test_tls_untrusted_or_wrong_name_is_refused),
        cmocka_unit_test(test_tls_mutual),
        cmocka_unit_test(test_tls_without_alpn_h2_is_refused),
        cmocka_unit_test(test_tls_encrypted_key_is_refused_without_prompt),
    };
    return cmocka_run_group_tests(tests, setup, teardown);
}
