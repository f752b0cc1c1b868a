/* tests/fuzz/fuzz_jwt.c: libFuzzer target for bearer tokens and credential headers (auth/jwt.c,
 * auth/credentials.c).
 *
 * The first byte picks what the rest of the input is:
 *   'S'  "<header JSON>\n<payload JSON>": encoded and signed here with the fuzzing secret, so that
 *        the header checks and the claims parser behind the signature check are reached;
 *   'H'  up to four header values separated by '\n' (authorization, x-machine-token,
 *        authorization-machine, x-roles), read by auth__credentials with X-Roles trusted;
 *   else the whole input is a compact token checked as it is.
 * A verified token's claims must be well formed (bounded counts, non-empty NUL-free names); a
 * refusal must be PINS_EUNAUTHENTICATED with a reason. Anything else aborts so that libFuzzer
 * reports it; ASan and UBSan catch the rest and leaks are checked at exit.
 *
 * Run: build-fuzz/tests/fuzz/fuzz_jwt tests/fuzz/corpus/jwt
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "auth/auth_int.h"
#include "common/arena.h"
#include "common/config.h"
#include "common/error.h"

#include "../unit/support/b64enc.h"

#define SECRET         "fuzz-secret"
#define NOW            1800000000
#define FUZZ_MAX_INPUT (AUTH__MAX_TOKEN * 2)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check(bool ok)
{
    if (!ok)
        abort();
}

static bool good_names(const char *const *v, size_t n, size_t max)
{
    if (n > max || (n > 0 && v == NULL))
        return false;
    for (size_t i = 0; i < n; i++) {
        size_t len = strlen(v[i]);
        if (len == 0 || len > AUTH__MAX_NAME)
            return false;
    }
    return true;
}

static void check_claims(const auth__claims *c)
{
    check(good_names(c->roles, c->nroles, AUTH__MAX_ROLES));
    check(good_names(c->tenants, c->ntenants, AUTH__MAX_TENANTS));
    check(c->restricted || c->ntenants == 0);
    check(c->sub == NULL || (c->sub[0] != '\0' && strlen(c->sub) <= AUTH__MAX_NAME));
}

static void verify(pins_arena *a, const char *tok, size_t len)
{
    auth__claims c = {0};
    const char *why = NULL;
    int rv = auth__jwt_verify(a, tok, len, SECRET, strlen(SECRET), NOW, &c, &why);
    if (rv == 0) {
        check(why == NULL);
        check_claims(&c);
    } else {
        check(rv == PINS_EUNAUTHENTICATED || rv == PINS_ENOMEM);
        check(rv == PINS_ENOMEM || why != NULL);
    }
}

/* Signs "<header>\n<payload>" and verifies the resulting token. */
static void signed_token(pins_arena *a, const uint8_t *p, size_t n)
{
    const uint8_t *nl = memchr(p, '\n', n);
    if (nl == NULL)
        return;
    size_t hl = (size_t)(nl - p), pl = n - hl - 1;
    char *tok = malloc((n + 3) / 3 * 4 + 64);
    check(tok != NULL);
    size_t o = b64enc(p, hl, true, tok);
    tok[o++] = '.';
    o += b64enc(nl + 1, pl, true, tok + o);
    uint8_t mac[32];
    check(auth__hmac_sha256(SECRET, strlen(SECRET), tok, o, mac) == 0);
    tok[o++] = '.';
    o += b64enc(mac, sizeof(mac), true, tok + o);
    verify(a, tok, o);
    free(tok);
}

typedef struct hdrs {
    const char *v[4];
} hdrs;

static const char *lookup(void *arg, const char *name)
{
    static const char *const names[] = {"authorization", "x-machine-token", "authorization-machine",
                                        "x-roles"};
    const hdrs *h = arg;
    for (size_t i = 0; i < 4; i++) {
        if (strcmp(names[i], name) == 0)
            return h->v[i];
    }
    return NULL;
}

static void credentials(pins_arena *a, const uint8_t *p, size_t n)
{
    char *text = malloc(n + 1);
    check(text != NULL);
    memcpy(text, p, n);
    text[n] = '\0';
    hdrs h = {{NULL}};
    char *s = text;
    for (size_t i = 0; i < 4 && s != NULL; i++) {
        h.v[i] = s;
        s = strchr(s, '\n');
        if (s != NULL)
            *s++ = '\0';
    }
    pins_config cfg = {0};
    cfg.machine_secret_token = "machine-secret";
    cfg.jwt_secret = SECRET;
    cfg.rbac_trust_x_roles = true;
    auth__principal pr;
    int rv = auth__credentials(a, &cfg, lookup, &h, NOW, &pr);
    check(rv == 0 || rv == PINS_ENOMEM);
    if (rv == 0 && pr.status == AUTH__CRED_OK) {
        check(pr.kind != NULL && pr.subject != NULL);
        check(good_names(pr.roles, pr.nroles, AUTH__MAX_ROLES));
    }
    if (rv == 0 && pr.status == AUTH__CRED_INVALID)
        check(pr.why != NULL);
    free(text);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size == 0 || size > FUZZ_MAX_INPUT)
        return 0;
    pins_arena *a = pins_arena_new(1u << 20);
    check(a != NULL);
    if (data[0] == 'S') {
        signed_token(a, data + 1, size - 1);
    } else if (data[0] == 'H') {
        credentials(a, data + 1, size - 1);
    } else {
        verify(a, (const char *)data, size);
    }
    pins_arena_free(a);
    return 0;
}
