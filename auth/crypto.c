/* auth/crypto.c: the OpenSSL primitives auth/ needs, and nothing else of OpenSSL.
 *
 * Secrets are compared as HMACs under a random per-process key: the comparison then always
 * covers 32 bytes, so neither the contents nor the lengths of the two strings show in its timing.
 */
#include "auth/auth_int.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <pthread.h>
#include <string.h>

#include "common/error.h"

static uint8_t compare_key[32];
static bool compare_key_ok;
static pthread_once_t compare_once = PTHREAD_ONCE_INIT;

static void make_compare_key(void)
{
    compare_key_ok = RAND_bytes(compare_key, sizeof(compare_key)) == 1;
}

int auth__hmac_sha256(const void *key, size_t keylen, const void *msg, size_t len, uint8_t out[32])
{
    unsigned int n = 0;
    static const uint8_t empty[1];
    if (keylen > (size_t)INT32_MAX)
        return PINS_EINTERNAL;
    if (HMAC(EVP_sha256(), keylen ? key : empty, (int)keylen, len ? msg : empty, len, out, &n) ==
            NULL ||
        n != 32)
        return PINS_EINTERNAL;
    return 0;
}

int auth__sha256_hex16(const void *data, size_t len, char out[17])
{
    static const char hex[] = "0123456789abcdef";
    uint8_t md[EVP_MAX_MD_SIZE];
    unsigned int n = 0;
    if (EVP_Digest(data, len, md, &n, EVP_sha256(), NULL) != 1 || n < 8)
        return PINS_EINTERNAL;
    for (int i = 0; i < 8; i++) {
        out[2 * i] = hex[md[i] >> 4];
        out[2 * i + 1] = hex[md[i] & 15];
    }
    out[16] = '\0';
    return 0;
}

bool auth__ct_equal(const void *a, const void *b, size_t n)
{
    return CRYPTO_memcmp(a, b, n) == 0;
}

bool auth__secret_equal(const char *a, size_t alen, const char *b, size_t blen)
{
    uint8_t ma[32], mb[32];
    pthread_once(&compare_once, make_compare_key);
    if (!compare_key_ok)
        return false;
    if (auth__hmac_sha256(compare_key, sizeof(compare_key), a, alen, ma) != 0 ||
        auth__hmac_sha256(compare_key, sizeof(compare_key), b, blen, mb) != 0)
        return false;
    bool eq = CRYPTO_memcmp(ma, mb, sizeof(ma)) == 0;
    OPENSSL_cleanse(ma, sizeof(ma));
    OPENSSL_cleanse(mb, sizeof(mb));
    return eq;
}
