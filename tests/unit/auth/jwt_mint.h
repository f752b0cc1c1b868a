/* tests/unit/auth/jwt_mint.h: HS256 tokens for the auth tests, built independently of auth/jwt.c
 * (base64url from tests/unit/support/b64enc.h; only the HMAC comes from auth/crypto.c).
 *
 * Functions are static inline so that each test includes only what it uses without warnings.
 */
#ifndef PINS_TESTS_AUTH_JWT_MINT_H
#define PINS_TESTS_AUTH_JWT_MINT_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth_int.h"
#include "b64enc.h"

/* Unpadded base64url of in[0..n) into out (NUL-terminated); returns the length. */
static inline size_t mint_b64url(const void *in, size_t n, char *out)
{
    return b64enc(in, n, true, out);
}

/* header.payload signed with secret (HMAC-SHA256) into out (cap bytes). sign false leaves the
 * signature part empty ("alg":"none" style). Returns out. */
static inline char *mint_jwt_raw(char *out, size_t cap, const char *header, const char *payload,
                                 const char *secret, int sign)
{
    size_t hl = strlen(header), pl = strlen(payload);
    if ((hl + pl) * 2 + 64 > cap)
        return NULL;
    size_t o = mint_b64url(header, hl, out);
    out[o++] = '.';
    o += mint_b64url(payload, pl, out + o);
    uint8_t mac[32];
    if (auth__hmac_sha256(secret, strlen(secret), out, o, mac) != 0)
        return NULL;
    out[o++] = '.';
    if (sign)
        o += mint_b64url(mac, sizeof(mac), out + o);
    out[o] = '\0';
    return out;
}

/* A valid HS256 token with the given payload JSON (exp added when missing). */
static inline char *mint_jwt(char *out, size_t cap, const char *payload, const char *secret)
{
    /* exp is required (API.md section 6): an object without one gets exp in 2100, so that a
     * case names only what it is about. mint_jwt_raw() makes tokens without exp. */
    char *timed = NULL;
    if (payload[0] == '{' && strstr(payload, "\"exp\"") == NULL) {
        size_t n = strlen(payload) + 32;
        timed = malloc(n);
        if (timed == NULL)
            return NULL;
        snprintf(timed, n, "{\"exp\":4102444800%s%s", payload[1] == '}' ? "" : ",", payload + 1);
        payload = timed;
    }
    char *tok = mint_jwt_raw(out, cap, "{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payload, secret, 1);
    free(timed);
    return tok;
}

#endif
