/* tests/unit/auth/test_jwt.c: HS256 verification and base64url (auth/jwt.c), credential parsing
 * (auth/credentials.c) and the constant-time helpers (auth/crypto.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth/auth_int.h"
#include "common/error.h"
#include "jwt_mint.h"

#define SECRET "test-secret-0123456789"
#define NOW    1800000000LL

typedef struct fixture {
    pins_arena *a;
    char tok[AUTH__MAX_TOKEN * 2];
} fixture;

static int setup(void **state)
{
    fixture *f = calloc(1, sizeof(*f));
    assert_non_null(f);
    f->a = pins_arena_new(1 << 20);
    assert_non_null(f->a);
    *state = f;
    return 0;
}

static int teardown(void **state)
{
    fixture *f = *state;
    pins_arena_free(f->a);
    free(f);
    return 0;
}

/* Verifies tok with SECRET at NOW. */
static int verify(fixture *f, const char *tok, auth__claims *c, const char **why)
{
    return auth__jwt_verify(f->a, tok, strlen(tok), SECRET, strlen(SECRET), NOW, c, why);
}

static void assert_refused(fixture *f, const char *tok)
{
    auth__claims c = {.sub = "untouched"};
    const char *why = NULL;
    assert_int_equal(verify(f, tok, &c, &why), PINS_EUNAUTHENTICATED);
    assert_non_null(why);
    assert_string_equal(c.sub, "untouched"); /* out-parameter untouched on failure */
}

/* ---- base64url --------------------------------------------------------------------------------
 */

static void test_b64url_decodes_canonical_input(void **state)
{
    uint8_t out[16];
    size_t n = 0;
    assert_int_equal(auth__b64url_decode("aGVsbG8", 7, out, &n), 0);
    assert_int_equal(n, 5);
    assert_memory_equal(out, "hello", 5);
    assert_int_equal(auth__b64url_decode("-_8", 3, out, &n), 0);
    assert_int_equal(n, 2);
    assert_int_equal(out[0], 0xfb);
    assert_int_equal(out[1], 0xff);
    assert_int_equal(auth__b64url_decode("", 0, out, &n), 0);
    assert_int_equal(n, 0);
}

static void test_b64url_rejects_padding_standard_alphabet_and_loose_bits(void **state)
{
    uint8_t out[16];
    size_t n = 0;
    assert_int_equal(auth__b64url_decode("aGVsbG8=", 8, out, &n), PINS_EINVALID_ARGUMENT);
    assert_int_equal(auth__b64url_decode("+/8", 3, out, &n), PINS_EINVALID_ARGUMENT);
    assert_int_equal(auth__b64url_decode("aGVs bG8", 8, out, &n), PINS_EINVALID_ARGUMENT);
    assert_int_equal(auth__b64url_decode("aGVsb", 5, out, &n), PINS_EINVALID_ARGUMENT); /* 4n+1 */
    /* "aGVsbG9" decodes to the same bytes as "aGVsbG8" only if the loose bits are ignored. */
    assert_int_equal(auth__b64url_decode("aGVsbG9", 7, out, &n), PINS_EINVALID_ARGUMENT);
}

/* ---- tokens -----------------------------------------------------------------------------------
 */

static void test_jwt_valid_hs256_gives_claims(void **state)
{
    fixture *f = *state;
    mint_jwt(f->tok, sizeof(f->tok),
             "{\"sub\":\"agent-7\",\"roles\":[\"dev\",\"machine\"],\"exp\":1800000100,"
             "\"nbf\":1799999000,\"iat\":1799999000}",
             SECRET);
    auth__claims c;
    const char *why = "x";
    assert_int_equal(verify(f, f->tok, &c, &why), 0);
    assert_null(why);
    assert_string_equal(c.sub, "agent-7");
    assert_int_equal(c.nroles, 2);
    assert_string_equal(c.roles[0], "dev");
    assert_string_equal(c.roles[1], "machine");
    assert_false(c.restricted);
}

static void test_jwt_without_typ_is_accepted(void **state)
{
    fixture *f = *state;
    mint_jwt_raw(f->tok, sizeof(f->tok), "{\"alg\":\"HS256\"}",
                 "{\"roles\":\"admin\",\"exp\":4102444800}", SECRET, 1);
    auth__claims c;
    assert_int_equal(verify(f, f->tok, &c, NULL), 0);
    assert_int_equal(c.nroles, 1);
    assert_string_equal(c.roles[0], "admin");
    assert_null(c.sub);
}

static void test_jwt_alg_none_is_refused(void **state)
{
    fixture *f = *state;
    mint_jwt_raw(f->tok, sizeof(f->tok), "{\"alg\":\"none\",\"typ\":\"JWT\"}",
                 "{\"roles\":[\"admin\"]}", SECRET, 0);
    assert_refused(f, f->tok);
    /* "none" with a valid HMAC attached is still not HS256. */
    mint_jwt_raw(f->tok, sizeof(f->tok), "{\"alg\":\"none\"}", "{\"roles\":[\"admin\"]}", SECRET,
                 1);
    assert_refused(f, f->tok);
}

static void test_jwt_other_algorithms_are_refused(void **state)
{
    fixture *f = *state;
    static const char *const headers[] = {
        "{\"alg\":\"HS512\"}",           "{\"alg\":\"RS256\"}",
        "{\"alg\":\"hs256\"}",           "{\"alg\":\"HS256 \"}",
        "{\"alg\":[\"HS256\"]}",         "{\"typ\":\"JWT\"}",
        "{\"alg\":\"ES256\"}",           "{\"alg\":\"HS256\",\"crit\":[\"b64\"],\"b64\":false}",
        "{\"alg\":\"HS256\",\"typ\":7}",
    };
    for (size_t i = 0; i < sizeof(headers) / sizeof(headers[0]); i++) {
        mint_jwt_raw(f->tok, sizeof(f->tok), headers[i], "{\"roles\":[\"admin\"]}", SECRET, 1);
        assert_refused(f, f->tok);
    }
}

static void test_jwt_bad_signature_is_refused(void **state)
{
    fixture *f = *state;
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":[\"admin\"]}", "another-secret");
    assert_refused(f, f->tok);
    /* One flipped character of a good signature. */
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":[\"admin\"]}", SECRET);
    size_t n = strlen(f->tok);
    f->tok[n - 2] = f->tok[n - 2] == 'A' ? 'B' : 'A';
    assert_refused(f, f->tok);
    /* A truncated signature. */
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":[\"admin\"]}", SECRET);
    f->tok[strlen(f->tok) - 4] = '\0';
    assert_refused(f, f->tok);
}

static void test_jwt_tampered_payload_is_refused(void **state)
{
    fixture *f = *state;
    char other[1024];
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":[\"dev\"]}", SECRET);
    mint_jwt(other, sizeof(other), "{\"roles\":[\"admin\"]}", SECRET);
    /* The admin payload with the dev token's header and signature. */
    char *d1 = strchr(f->tok, '.'), *d2 = strrchr(f->tok, '.');
    char *o1 = strchr(other, '.'), *o2 = strrchr(other, '.');
    char forged[2048];
    snprintf(forged, sizeof(forged), "%.*s%.*s%s", (int)(d1 - f->tok), f->tok, (int)(o2 - o1), o1,
             d2);
    assert_refused(f, forged);
}

static void test_jwt_without_exp_is_refused(void **state)
{
    fixture *f = *state;
    static const char *const payloads[] = {
        "{\"roles\":\"admin\"}",
        "{\"roles\":\"admin\",\"nbf\":1799999000}",
        "{\"roles\":\"admin\",\"exp\":null}",
        "{}",
    };
    for (size_t i = 0; i < sizeof(payloads) / sizeof(payloads[0]); i++) {
        mint_jwt_raw(f->tok, sizeof(f->tok), "{\"alg\":\"HS256\",\"typ\":\"JWT\"}", payloads[i],
                     SECRET, 1);
        assert_refused(f, f->tok);
        /* The clock-free check (the credential cache's) refuses it too. */
        auth__claims c;
        auth__jwt_times t;
        const char *why = NULL;
        assert_int_equal(
            auth__jwt_check(f->a, f->tok, strlen(f->tok), SECRET, strlen(SECRET), &c, &t, &why),
            PINS_EUNAUTHENTICATED);
        assert_non_null(why);
    }
    const char *why = NULL;
    auth__claims c;
    mint_jwt_raw(f->tok, sizeof(f->tok), "{\"alg\":\"HS256\"}", "{\"sub\":\"x\"}", SECRET, 1);
    assert_int_equal(verify(f, f->tok, &c, &why), PINS_EUNAUTHENTICATED);
    assert_string_equal(why, "no exp");
}

static void test_jwt_exp_and_nbf_with_leeway(void **state)
{
    fixture *f = *state;
    auth__claims c;
    char payload[128];
    /* Expired 31 s ago: refused; 29 s ago: inside the 30 s leeway. */
    snprintf(payload, sizeof(payload), "{\"roles\":\"dev\",\"exp\":%lld}", NOW - 31);
    mint_jwt(f->tok, sizeof(f->tok), payload, SECRET);
    const char *why = NULL;
    assert_int_equal(verify(f, f->tok, &c, &why), PINS_EUNAUTHENTICATED);
    assert_string_equal(why, "expired");
    snprintf(payload, sizeof(payload), "{\"roles\":\"dev\",\"exp\":%lld}", NOW - 29);
    mint_jwt(f->tok, sizeof(f->tok), payload, SECRET);
    assert_int_equal(verify(f, f->tok, &c, NULL), 0);
    /* Not before 31 s from now: refused; 29 s: accepted. */
    snprintf(payload, sizeof(payload), "{\"roles\":\"dev\",\"nbf\":%lld}", NOW + 31);
    mint_jwt(f->tok, sizeof(f->tok), payload, SECRET);
    assert_int_equal(verify(f, f->tok, &c, &why), PINS_EUNAUTHENTICATED);
    assert_string_equal(why, "not yet valid");
    snprintf(payload, sizeof(payload), "{\"roles\":\"dev\",\"nbf\":%lld.5}", NOW + 29);
    mint_jwt(f->tok, sizeof(f->tok), payload, SECRET);
    assert_int_equal(verify(f, f->tok, &c, NULL), 0);
    /* exp that is not a number. */
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":\"dev\",\"exp\":\"1900000000\"}", SECRET);
    assert_refused(f, f->tok);
}

static void test_jwt_roles_list_or_string(void **state)
{
    fixture *f = *state;
    auth__claims c;
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":\"readonly\"}", SECRET);
    assert_int_equal(verify(f, f->tok, &c, NULL), 0);
    assert_int_equal(c.nroles, 1);
    assert_string_equal(c.roles[0], "readonly");
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":[]}", SECRET);
    assert_int_equal(verify(f, f->tok, &c, NULL), 0);
    assert_int_equal(c.nroles, 0);
    mint_jwt(f->tok, sizeof(f->tok), "{\"sub\":\"x\"}", SECRET);
    assert_int_equal(verify(f, f->tok, &c, NULL), 0);
    assert_int_equal(c.nroles, 0);
    /* Wrong shapes refuse the whole token. */
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":[\"dev\",7]}", SECRET);
    assert_refused(f, f->tok);
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":{\"dev\":true}}", SECRET);
    assert_refused(f, f->tok);
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":[\"\"]}", SECRET);
    assert_refused(f, f->tok);
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":[\"a\\u0000b\"]}", SECRET);
    assert_refused(f, f->tok);
    /* More than AUTH__MAX_ROLES roles. */
    char payload[1024] = "{\"roles\":[";
    for (int i = 0; i <= AUTH__MAX_ROLES; i++)
        snprintf(payload + strlen(payload), sizeof(payload) - strlen(payload), "%s\"r%d\"",
                 i ? "," : "", i);
    snprintf(payload + strlen(payload), sizeof(payload) - strlen(payload), "]}");
    mint_jwt(f->tok, sizeof(f->tok), payload, SECRET);
    assert_refused(f, f->tok);
}

static void test_jwt_tenants_and_tenant_id_restrict(void **state)
{
    fixture *f = *state;
    auth__claims c;
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":\"dev\",\"tenants\":[\"t1\",\"t2\"]}", SECRET);
    assert_int_equal(verify(f, f->tok, &c, NULL), 0);
    assert_true(c.restricted);
    assert_int_equal(c.ntenants, 2);
    assert_string_equal(c.tenants[1], "t2");
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":\"dev\",\"tenant_id\":\"t9\"}", SECRET);
    assert_int_equal(verify(f, f->tok, &c, NULL), 0);
    assert_true(c.restricted);
    assert_int_equal(c.ntenants, 1);
    assert_string_equal(c.tenants[0], "t9");
    /* tenants wins over tenant_id; an empty list restricts to nothing. */
    mint_jwt(f->tok, sizeof(f->tok), "{\"tenants\":[],\"tenant_id\":\"t9\"}", SECRET);
    assert_int_equal(verify(f, f->tok, &c, NULL), 0);
    assert_true(c.restricted);
    assert_int_equal(c.ntenants, 0);
    mint_jwt(f->tok, sizeof(f->tok), "{\"tenants\":\"t1\"}", SECRET);
    assert_refused(f, f->tok);
    mint_jwt(f->tok, sizeof(f->tok), "{\"tenant_id\":[\"t1\"]}", SECRET);
    assert_refused(f, f->tok);
}

static void test_jwt_malformed_encodings_are_refused(void **state)
{
    fixture *f = *state;
    char good[1024], bad[2048];
    mint_jwt(good, sizeof(good), "{\"roles\":\"dev\"}", SECRET);
    assert_refused(f, "");
    assert_refused(f, "abc");
    assert_refused(f, "a.b");
    assert_refused(f, "a.b.c.d");
    assert_refused(f, "..");
    snprintf(bad, sizeof(bad), "%s.", good); /* four parts */
    assert_refused(f, bad);
    snprintf(bad, sizeof(bad), "%s=", good); /* padding */
    assert_refused(f, bad);
    snprintf(bad, sizeof(bad), " %s", good);
    assert_refused(f, bad);
    /* Correctly signed, but the parts are not JSON objects. */
    mint_jwt_raw(f->tok, sizeof(f->tok), "{\"alg\":\"HS256\"", "{}", SECRET, 1);
    assert_refused(f, f->tok);
    mint_jwt(f->tok, sizeof(f->tok), "[\"admin\"]", SECRET);
    assert_refused(f, f->tok);
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":\"dev\"} x", SECRET);
    assert_refused(f, f->tok);
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":\"dev\",\"roles\":\"admin\"}", SECRET);
    assert_refused(f, f->tok); /* duplicate claims are ambiguous */
    mint_jwt_raw(f->tok, sizeof(f->tok), "{\"alg\":\"HS256\",\"alg\":\"none\"}", "{}", SECRET, 1);
    assert_refused(f, f->tok);
}

static void test_jwt_oversize_is_refused(void **state)
{
    fixture *f = *state;
    /* A payload that makes the token just over AUTH__MAX_TOKEN bytes, and one just under. */
    size_t fill = AUTH__MAX_TOKEN * 3 / 4;
    char *payload = malloc(fill + 64);
    assert_non_null(payload);
    snprintf(payload, fill + 64, "{\"roles\":\"dev\",\"pad\":\"%0*d\"}", (int)fill, 0);
    mint_jwt(f->tok, sizeof(f->tok), payload, SECRET);
    assert_true(strlen(f->tok) > AUTH__MAX_TOKEN);
    assert_refused(f, f->tok);
    snprintf(payload, fill + 64, "{\"roles\":\"dev\",\"pad\":\"%0*d\"}", (int)(fill - 200), 0);
    mint_jwt(f->tok, sizeof(f->tok), payload, SECRET);
    assert_true(strlen(f->tok) <= AUTH__MAX_TOKEN);
    auth__claims c;
    assert_int_equal(verify(f, f->tok, &c, NULL), 0);
    free(payload);
}

static void test_jwt_empty_secret_disables_bearer_tokens(void **state)
{
    fixture *f = *state;
    mint_jwt(f->tok, sizeof(f->tok), "{\"roles\":\"admin\"}", "");
    auth__claims c;
    const char *why = NULL;
    assert_int_equal(auth__jwt_verify(f->a, f->tok, strlen(f->tok), "", 0, NOW, &c, &why),
                     PINS_EUNAUTHENTICATED);
    assert_non_null(strstr(why, "disabled"));
}

/* ---- credentials ------------------------------------------------------------------------------
 */

typedef struct headers {
    const char *const *kv; /* name, value, ..., NULL */
} headers;

/* As auth/decide.c looks headers up: the value, NULL, or auth_header_repeated. */
static const char *lookup(void *arg, const char *name)
{
    const headers *h = arg;
    const char *v = NULL;
    for (size_t i = 0; h->kv[i] != NULL; i += 2) {
        if (strcmp(h->kv[i], name) != 0)
            continue;
        if (v != NULL)
            return auth_header_repeated;
        v = h->kv[i + 1];
    }
    return v;
}

static auth__principal creds(fixture *f, const pins_config *cfg, const char *const *kv)
{
    headers h = {kv};
    auth__principal p;
    assert_int_equal(auth__credentials(f->a, cfg, lookup, &h, NOW, &p), 0);
    return p;
}

static pins_config config(void)
{
    pins_config cfg = {0};
    cfg.machine_secret_token = "m-secret";
    cfg.jwt_secret = SECRET;
    return cfg;
}

static void test_credentials_machine_token(void **state)
{
    fixture *f = *state;
    pins_config cfg = config();
    auth__principal p = creds(f, &cfg, (const char *const[]){"x-machine-token", "m-secret", NULL});
    assert_int_equal(p.status, AUTH__CRED_OK);
    assert_string_equal(p.subject, "machine");
    assert_int_equal(p.nroles, 1);
    assert_string_equal(p.roles[0], "machine");
    p = creds(f, &cfg, (const char *const[]){"authorization-machine", "m-secret", NULL});
    assert_int_equal(p.status, AUTH__CRED_OK);
    p = creds(f, &cfg, (const char *const[]){"x-machine-token", "m-secret2", NULL});
    assert_int_equal(p.status, AUTH__CRED_INVALID);
    p = creds(f, &cfg, (const char *const[]){"x-machine-token", "m-secre", NULL});
    assert_int_equal(p.status, AUTH__CRED_INVALID);
    /* An empty secret disables machine tokens: one that is sent is refused; an empty header
     * counts as no header. */
    cfg.machine_secret_token = "";
    p = creds(f, &cfg, (const char *const[]){"x-machine-token", "m-secret", NULL});
    assert_int_equal(p.status, AUTH__CRED_INVALID);
    p = creds(f, &cfg, (const char *const[]){"x-machine-token", "", NULL});
    assert_int_equal(p.status, AUTH__CRED_NONE);
}

static void test_credentials_bearer(void **state)
{
    fixture *f = *state;
    pins_config cfg = config();
    char tok[512], value[600];
    mint_jwt(tok, sizeof(tok), "{\"sub\":\"s\",\"roles\":[\"admin\"]}", SECRET);
    snprintf(value, sizeof(value), "bEaReR   %s  ", tok);
    auth__principal p = creds(f, &cfg, (const char *const[]){"authorization", value, NULL});
    assert_int_equal(p.status, AUTH__CRED_OK);
    assert_string_equal(p.kind, "jwt");
    assert_string_equal(p.subject, "s");
    assert_string_equal(p.roles[0], "admin");
    /* A wrong machine token does not hide a good bearer token behind it. */
    snprintf(value, sizeof(value), "Bearer %s", tok);
    p = creds(f, &cfg,
              (const char *const[]){"x-machine-token", "nope", "authorization", value, NULL});
    assert_int_equal(p.status, AUTH__CRED_OK);
    assert_string_equal(p.kind, "jwt");
    /* A bad bearer token is refused, not anonymous. */
    snprintf(value, sizeof(value), "Bearer %sx", tok);
    p = creds(f, &cfg, (const char *const[]){"authorization", value, NULL});
    assert_int_equal(p.status, AUTH__CRED_INVALID);
    /* Other schemes are no credential. */
    p = creds(f, &cfg, (const char *const[]){"authorization", "Basic dXNlcjpwYXNz", NULL});
    assert_int_equal(p.status, AUTH__CRED_NONE);
    p = creds(f, &cfg, (const char *const[]){"authorization", "Bearertoken", NULL});
    assert_int_equal(p.status, AUTH__CRED_NONE);
}

static void test_credentials_x_roles_only_when_trusted(void **state)
{
    fixture *f = *state;
    pins_config cfg = config();
    const char *const kv[] = {"x-roles", " admin, dev ,,", NULL};
    auth__principal p = creds(f, &cfg, kv);
    assert_int_equal(p.status, AUTH__CRED_NONE);
    assert_int_equal(p.nroles, 0);
    cfg.rbac_trust_x_roles = true;
    p = creds(f, &cfg, kv);
    assert_int_equal(p.status, AUTH__CRED_OK);
    assert_int_equal(p.nroles, 2);
    assert_string_equal(p.roles[0], "admin");
    assert_string_equal(p.roles[1], "dev");
    assert_false(p.restricted);
    p = creds(f, &cfg, (const char *const[]){"x-roles", " , ", NULL});
    assert_int_equal(p.status, AUTH__CRED_NONE);
    p = creds(f, &cfg, (const char *const[]){"x-roles", "a\x01", NULL});
    assert_int_equal(p.status, AUTH__CRED_INVALID);
}

static void test_credentials_refuse_a_repeated_credential_header(void **state)
{
    fixture *f = *state;
    pins_config cfg = config();
    char tok[512], value[600], dev[512], devv[600];
    mint_jwt(tok, sizeof(tok), "{\"sub\":\"s\",\"roles\":[\"admin\"]}", SECRET);
    snprintf(value, sizeof(value), "Bearer %s", tok);
    mint_jwt(dev, sizeof(dev), "{\"sub\":\"d\",\"roles\":[\"dev\"]}", SECRET);
    snprintf(devv, sizeof(devv), "Bearer %s", dev);
    /* Two good tokens, two equal ones, one good and one bad: never "the first one wins". */
    const char *const *cases[] = {
        (const char *const[]){"authorization", value, "authorization", devv, NULL},
        (const char *const[]){"authorization", value, "authorization", value, NULL},
        (const char *const[]){"authorization", value, "authorization", "Basic eDp5", NULL},
        (const char *const[]){"x-machine-token", "m-secret", "x-machine-token", "other", NULL},
        (const char *const[]){"x-machine-token", "m-secret", "x-machine-token", "m-secret", NULL},
        (const char *const[]){"authorization-machine", "m-secret", "authorization-machine", "m",
                              NULL},
        (const char *const[]){"x-machine-token", "m-secret", "authorization-machine", "m-secret",
                              NULL},
        (const char *const[]){"x-machine-token", "m-secret", "x-machine-token", "m-secret",
                              "authorization", value, NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        auth__principal p = creds(f, &cfg, cases[i]);
        if (p.status != AUTH__CRED_INVALID)
            fail_msg("case %zu: status %d, want invalid", i, (int)p.status);
        assert_string_equal(p.why, "credential header sent more than once");
        assert_string_equal(p.subject, "anonymous");
        assert_int_equal(p.nroles, 0);
    }
    /* X-Roles counts only when trusted. */
    const char *const xr[] = {"x-roles", "admin", "x-roles", "dev", NULL};
    assert_int_equal(creds(f, &cfg, xr).status, AUTH__CRED_NONE);
    cfg.rbac_trust_x_roles = true;
    assert_int_equal(creds(f, &cfg, xr).status, AUTH__CRED_INVALID);
    /* One of each is fine. */
    auth__principal p =
        creds(f, &cfg, (const char *const[]){"authorization", value, "x-roles", "dev", NULL});
    assert_int_equal(p.status, AUTH__CRED_OK);
    assert_string_equal(p.subject, "s");
}

static void test_secret_equal_is_exact(void **state)
{
    assert_true(auth__secret_equal("abc", 3, "abc", 3));
    assert_false(auth__secret_equal("abc", 3, "abd", 3));
    assert_false(auth__secret_equal("abc", 3, "abcd", 4));
    assert_false(auth__secret_equal("", 0, "a", 1));
    assert_true(auth__secret_equal("", 0, "", 0));
    assert_true(auth__ct_equal("xyz", "xyz", 3));
    assert_false(auth__ct_equal("xyz", "xyw", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_b64url_decodes_canonical_input),
        cmocka_unit_test(test_b64url_rejects_padding_standard_alphabet_and_loose_bits),
        cmocka_unit_test_setup_teardown(test_jwt_valid_hs256_gives_claims, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jwt_without_typ_is_accepted, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jwt_without_exp_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jwt_alg_none_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jwt_other_algorithms_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jwt_bad_signature_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jwt_tampered_payload_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jwt_exp_and_nbf_with_leeway, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jwt_roles_list_or_string, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jwt_tenants_and_tenant_id_restrict, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jwt_malformed_encodings_are_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jwt_oversize_is_refused, setup, teardown),
        cmocka_unit_test_setup_teardown(test_jwt_empty_secret_disables_bearer_tokens, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_credentials_machine_token, setup, teardown),
        cmocka_unit_test_setup_teardown(test_credentials_bearer, setup, teardown),
        cmocka_unit_test_setup_teardown(test_credentials_x_roles_only_when_trusted, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_credentials_refuse_a_repeated_credential_header, setup,
                                        teardown),
        cmocka_unit_test(test_secret_equal_is_exact),
    };
    return cmocka_run_group_tests_name("auth_jwt", tests, NULL, NULL);
}
