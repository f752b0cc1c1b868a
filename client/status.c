/* client/status.c: the library version, gRPC code names, the pins_status type and its metadata
 * lists, and the connection options' defaults.
 *
 * A pins_status owns its message, request id, details and both metadata lists (every name and
 * value a separate malloc'd, NUL-terminated copy). Lists grow by doubling; the parser bounds
 * their length (CLIENT_MAX_METADATA).
 */
#include "pins/client.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "common/error.h"

const char *pins_client_version(void)
{
    return PINS_CLIENT_VERSION_STRING;
}

const char *pins_code_name(int code)
{
    return pins_grpc_code_name(code); /* common/error.c: pinsd's own table of the names */
}

/* The text of a status whose own copy could not be allocated: never freed. */
static char empty_text[1] = "";

char *client__text(const char *s)
{
    char *t = client__strdup(s != NULL ? s : "");
    return t != NULL ? t : empty_text;
}

char *client__strdup(const char *s)
{
    if (s == NULL)
        return NULL;
    size_t n = strlen(s);
    char *d = malloc(n + 1);
    if (d != NULL)
        memcpy(d, s, n + 1);
    return d;
}

int client__md_add(pins_metadata_list *l, const char *name, size_t nlen, const char *value,
                   size_t vlen)
{
    if (l->count == 0 || (l->count & (l->count - 1)) == 0) {
        size_t cap = l->count == 0 ? 4 : l->count * 2;
        if (cap < 4)
            cap = 4;
        pins_metadata *items = realloc(l->items, cap * sizeof(*items));
        if (items == NULL)
            return PINS_CODE_RESOURCE_EXHAUSTED;
        l->items = items;
    }
    char *n = malloc(nlen + 1);
    char *v = malloc(vlen + 1);
    if (n == NULL || v == NULL) {
        free(n);
        free(v);
        return PINS_CODE_RESOURCE_EXHAUSTED;
    }
    memcpy(n, name, nlen);
    n[nlen] = '\0';
    if (vlen > 0)
        memcpy(v, value, vlen);
    v[vlen] = '\0';
    l->items[l->count].name = n;
    l->items[l->count].value = v;
    l->items[l->count].value_len = vlen;
    l->count++;
    return 0;
}

void client__md_clear(pins_metadata_list *l)
{
    for (size_t i = 0; i < l->count; i++) {
        free((char *)l->items[i].name);
        free((char *)l->items[i].value);
    }
    free(l->items);
    l->items = NULL;
    l->count = 0;
}

void pins_status_init(pins_status *st)
{
    memset(st, 0, sizeof(*st));
    st->retry_after_ms = -1;
}

void pins_status_clear(pins_status *st)
{
    if (st == NULL)
        return;
    if (st->message != empty_text)
        free(st->message);
    free(st->request_id);
    free(st->details);
    client__md_clear(&st->headers);
    client__md_clear(&st->trailers);
    pins_status_init(st);
}

const char *pins_status_metadata(const pins_status *st, const char *name)
{
    if (st == NULL || name == NULL)
        return NULL;
    for (size_t i = 0; i < st->trailers.count; i++)
        if (strcmp(st->trailers.items[i].name, name) == 0)
            return st->trailers.items[i].value;
    for (size_t i = 0; i < st->headers.count; i++)
        if (strcmp(st->headers.items[i].name, name) == 0)
            return st->headers.items[i].value;
    return NULL;
}

void client__status_vset(pins_status *st, int code, const char *fmt, va_list ap)
{
    int attempts = st->attempts;
    char *rid = st->request_id;
    st->request_id = NULL;
    pins_status_clear(st);
    st->attempts = attempts;
    st->request_id = rid;
    st->code = code;
    char buf[512];
    vsnprintf(buf, sizeof(buf), fmt, ap);
    st->message = client__text(buf);
}

void client__status_set(pins_status *st, int code, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    client__status_vset(st, code, fmt, ap);
    va_end(ap);
}

void client__status_move(pins_status *dst, pins_status *src)
{
    if (dst == src)
        return;
    pins_status_clear(dst);
    *dst = *src;
    pins_status_init(src);
}

void pins_options_init(pins_options *opts)
{
    memset(opts, 0, sizeof(*opts));
    opts->addr = "127.0.0.1:50051";
    opts->connect_timeout_ms = 5000;
    opts->max_retries = 3;
    opts->backoff_initial_ms = 100;
    opts->backoff_max_ms = 5000;
    opts->max_message_bytes = 4u << 20;
    opts->max_header_bytes = 64u << 10;
    opts->max_concurrent_streams = 100;
}
