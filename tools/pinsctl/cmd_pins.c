/* tools/pinsctl/cmd_pins.c: get, put, list, delete, cleanup and watch (the MemoryPins service).
 *
 * --json prints the REST API's shape: get and put the pin (as GET and POST answer it), the other
 * commands their response message.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define STDIN_MAX_BYTES (4u << 20)
/* list --all: what one run gathers at most; past it the output ends with the next page token,
 * as a plain list's does, so a script can go on from there. */
#define LIST_MAX_PAGES 10000
#define LIST_MAX_PINS  100000
#define LIST_MAX_BYTES ((size_t)64 << 20)
/* The health Check before a stream waits at most this long (pinsctl_stream_probe). */
#define PROBE_TIMEOUT_MS 10000

/* Reads all of standard input, at most STDIN_MAX_BYTES. Returns new text (free()) or NULL. */
static char *read_stdin(size_t *plen, bool *ptoo_big)
{
    size_t cap = 4096, len = 0;
    char *p = malloc(cap);
    *ptoo_big = false;
    while (p != NULL) {
        if (len == cap) {
            if (cap > STDIN_MAX_BYTES) {
                *ptoo_big = true;
                free(p);
                return NULL;
            }
            char *q = realloc(p, cap * 2);
            if (q == NULL)
                break;
            p = q;
            cap *= 2;
        }
        size_t n = fread(p + len, 1, cap - len, stdin);
        len += n;
        if (n == 0) {
            if (ferror(stdin))
                break;
            if (len > STDIN_MAX_BYTES) {
                *ptoo_big = true;
                break;
            }
            *plen = len;
            return p;
        }
    }
    free(p);
    return NULL;
}

static char *value_text(const Google__Protobuf__Struct *v)
{
    if (v == NULL)
        return strdup("{}");
    char *s = pins_value_to_json(v);
    return s != NULL ? s : strdup("(no JSON form)");
}

static void print_pin(const Memorypins__V1__Pin *p)
{
    char ts[48];
    if (p == NULL) {
        puts("(no pin)");
        return;
    }
    printf("tenant:      %s\n", p->tenant_id);
    printf("key:         %s\n", p->key);
    printf("version:     %" PRId64 "\n", p->version);
    if (p->source != NULL && p->source[0] != '\0')
        printf("source:      %s\n", p->source);
    pinsctl_fmt_ts(p->created_at, true, ts, sizeof(ts));
    printf("created_at:  %s\n", ts);
    pinsctl_fmt_ts(p->updated_at, true, ts, sizeof(ts));
    printf("updated_at:  %s\n", ts);
    if (p->ttl_seconds != NULL)
        printf("ttl:         %" PRId32 "s\n", p->ttl_seconds->value);
    if (p->expires_at != NULL)
        pinsctl_fmt_ts(p->expires_at, true, ts, sizeof(ts));
    printf("expires_at:  %s\n", p->expires_at != NULL ? ts : "never");
    char *v = value_text(p->value);
    printf("value:       %s\n", v != NULL ? v : "?");
    free(v);
    fflush(stdout);
}

int pinsctl_cmd_get(pinsctl_args *a)
{
    int ex = 0;
    pins_client *c = pinsctl_connect(a, &ex);
    if (c == NULL)
        return ex;
    Memorypins__V1__GetPinRequest req = MEMORYPINS__V1__GET_PIN_REQUEST__INIT;
    req.tenant_id = (char *)a->pos[0];
    req.key = (char *)a->pos[1];
    Memorypins__V1__GetPinResponse *resp = NULL;
    pins_status st = PINS_STATUS_INIT;
    if (pins_get_pin(c, &req, &resp, NULL, &st) != 0) {
        ex = pinsctl_fail(a, &st);
    } else if (a->g->json) {
        ex = pinsctl_print_json(resp->pin != NULL ? &resp->pin->base : NULL);
    } else {
        print_pin(resp->pin);
    }
    pins_message_free(resp != NULL ? &resp->base : NULL);
    pins_status_clear(&st);
    pins_client_free(c);
    return ex;
}

int pinsctl_cmd_put(pinsctl_args *a)
{
    int ex = 0;
    Memorypins__V1__UpsertPinRequest req = MEMORYPINS__V1__UPSERT_PIN_REQUEST__INIT;
    Google__Protobuf__Int32Value ttl = GOOGLE__PROTOBUF__INT32_VALUE__INIT;
    Google__Protobuf__Int64Value expected = GOOGLE__PROTOBUF__INT64_VALUE__INIT;
    Google__Protobuf__Struct *value = NULL;
    Memorypins__V1__UpsertPinResponse *resp = NULL;
    pins_client *c = NULL;
    pins_status st = PINS_STATUS_INIT;
    char *input = NULL;
    int64_t n = 0;
    bool set = false;

    ex = pinsctl_int_opt(a, "--ttl", 0, INT32_MAX, &n, &set);
    if (ex != 0)
        goto out;
    if (set) {
        ttl.value = (int32_t)n;
        req.ttl_seconds = &ttl;
    }
    ex = pinsctl_int_opt(a, "--expected-version", 0, INT64_MAX, &n, &set);
    if (ex != 0)
        goto out;
    if (set) {
        expected.value = n;
        req.expected_version = &expected;
    }
    const char *json = a->pos[2];
    size_t len = strlen(json);
    if (strcmp(json, "-") == 0) {
        bool too_big = false;
        input = read_stdin(&len, &too_big);
        if (input == NULL) {
            ex = pinsctl_usage_error(a, too_big ? "the value on standard input is over 4 MiB"
                                                : "could not read standard input");
            goto out;
        }
        json = input;
    }
    if (pins_value_from_json(json, len, &value, &st) != 0) {
        ex = pinsctl_usage_error(a, "%s", st.message != NULL ? st.message : "invalid value");
        goto out;
    }
    req.tenant_id = (char *)a->pos[0];
    req.key = (char *)a->pos[1];
    req.value = value;
    if (pinsctl_arg(a, "--source") != NULL)
        req.source = (char *)pinsctl_arg(a, "--source");
    c = pinsctl_connect(a, &ex);
    if (c == NULL)
        goto out;
    if (pins_upsert_pin(c, &req, &resp, NULL, &st) != 0) {
        ex = pinsctl_fail(a, &st);
    } else if (a->g->json) {
        ex = pinsctl_print_json(resp->pin != NULL ? &resp->pin->base : NULL);
    } else {
        printf("%s\n", resp->created ? "created" : "updated");
        print_pin(resp->pin);
    }
out:
    pins_message_free(resp != NULL ? &resp->base : NULL);
    pins_message_free(value != NULL ? &value->base : NULL);
    pins_status_clear(&st);
    pins_client_free(c);
    free(input);
    return ex;
}

static void list_row(pinsctl_table *t, const Memorypins__V1__Pin *p)
{
    char ts[48];
    pinsctl_table_add(t, p->key);
    pinsctl_table_addf(t, "%" PRId64, p->version);
    pinsctl_fmt_ts(p->updated_at, false, ts, sizeof(ts));
    pinsctl_table_add(t, ts);
    pinsctl_fmt_ts(p->expires_at, false, ts, sizeof(ts));
    pinsctl_table_add(t, p->expires_at != NULL ? ts : "never");
    char *v = value_text(p->value);
    pinsctl_table_add(t, v != NULL ? v : "?");
    free(v);
}

int pinsctl_cmd_list(pinsctl_args *a)
{
    int ex = 0;
    Memorypins__V1__ListPinsRequest req = MEMORYPINS__V1__LIST_PINS_REQUEST__INIT;
    Memorypins__V1__ListPinsResponse **pages = NULL;
    size_t npages = 0;
    pins_client *c = NULL;
    pins_status st = PINS_STATUS_INIT;
    int64_t n = 0;
    bool set = false;
    bool all = pinsctl_flag(a, "--all");

    req.tenant_id = (char *)a->pos[0];
    if (pinsctl_arg(a, "--prefix") != NULL)
        req.prefix = (char *)pinsctl_arg(a, "--prefix");
    if (pinsctl_arg(a, "--page-token") != NULL)
        req.page_token = (char *)pinsctl_arg(a, "--page-token");
    req.include_expired = pinsctl_flag(a, "--include-expired");
    ex = pinsctl_int_opt(a, "--limit", 0, INT32_MAX, &n, &set);
    if (ex != 0)
        goto out;
    if (set)
        req.limit = (int32_t)n;
    ex = pinsctl_int_opt(a, "--offset", 0, INT32_MAX, &n, &set);
    if (ex != 0)
        goto out;
    if (set)
        req.offset = (int32_t)n;
    pages = calloc(all ? LIST_MAX_PAGES : 1, sizeof(*pages));
    if (pages == NULL) {
        ex = PINSCTL_EXIT_REFUSED;
        goto out;
    }
    c = pinsctl_connect(a, &ex);
    if (c == NULL)
        goto out;
    size_t total_pins = 0;
    size_t total_bytes = 0;
    const char *first_token = req.page_token;
    for (;;) {
        Memorypins__V1__ListPinsResponse *resp = NULL;
        if (pins_list_pins(c, &req, &resp, NULL, &st) != 0) {
            ex = pinsctl_fail(a, &st);
            goto out;
        }
        pages[npages++] = resp;
        total_pins += resp->n_pins;
        total_bytes += protobuf_c_message_get_packed_size(&resp->base);
        const char *next = resp->next_page_token;
        if (!all || next == NULL || next[0] == '\0')
            break;
        if (npages == LIST_MAX_PAGES || total_pins >= LIST_MAX_PINS ||
            total_bytes >= LIST_MAX_BYTES) {
            fprintf(stderr,
                    "pinsctl: list: --all stopped at %zu pins in %zu pages (its bound: %d pages, "
                    "%d pins, %zu MiB); go on with --page-token %s\n",
                    total_pins, npages, LIST_MAX_PAGES, LIST_MAX_PINS, LIST_MAX_BYTES >> 20, next);
            break;
        }
        /* A token seen before means the server sends us round in a circle. */
        bool seen = strcmp(next, first_token) == 0;
        for (size_t k = 0; !seen && k + 1 < npages; k++)
            seen = strcmp(next, pages[k]->next_page_token) == 0;
        if (seen) {
            fputs("pinsctl: list: the server gave a page token it had given before\n", stderr);
            ex = PINSCTL_EXIT_UNREACHABLE;
            goto out;
        }
        /* The token carries the position: the offset applied to the first page only. */
        req.page_token = (char *)next;
        req.offset = 0;
    }
    Memorypins__V1__ListPinsResponse *last = pages[npages - 1];
    if (a->g->json) {
        if (npages == 1) {
            ex = pinsctl_print_json(&last->base);
            goto out;
        }
        Memorypins__V1__ListPinsResponse merged = *pages[0];
        Memorypins__V1__Pin **pins = calloc(total_pins ? total_pins : 1, sizeof(*pins));
        if (pins == NULL) {
            ex = PINSCTL_EXIT_REFUSED;
            goto out;
        }
        size_t k = 0;
        for (size_t i = 0; i < npages; i++) {
            for (size_t j = 0; j < pages[i]->n_pins; j++)
                pins[k++] = pages[i]->pins[j];
        }
        merged.pins = pins;
        merged.n_pins = k;
        merged.total = last->total;
        merged.next_page_token = last->next_page_token;
        ex = pinsctl_print_json(&merged.base);
        free(pins);
        goto out;
    }
    pinsctl_table t;
    pinsctl_table_init(&t, 5);
    pinsctl_table_add(&t, "KEY");
    pinsctl_table_add(&t, "VERSION");
    pinsctl_table_add(&t, "UPDATED");
    pinsctl_table_add(&t, "EXPIRES");
    pinsctl_table_add(&t, "VALUE");
    for (size_t i = 0; i < npages; i++) {
        for (size_t j = 0; j < pages[i]->n_pins; j++)
            list_row(&t, pages[i]->pins[j]);
    }
    ex = pinsctl_table_print(&t);
    pinsctl_table_free(&t);
    if (ex != 0)
        goto out;
    printf("(%zu of %" PRId64 " pins)\n", total_pins, last->total);
    if (last->next_page_token != NULL && last->next_page_token[0] != '\0')
        printf("next page: --page-token %s\n", last->next_page_token);
out:
    for (size_t i = 0; i < npages; i++)
        pins_message_free(&pages[i]->base);
    free(pages);
    pins_status_clear(&st);
    pins_client_free(c);
    return ex;
}

int pinsctl_cmd_delete(pinsctl_args *a)
{
    int ex = 0;
    Memorypins__V1__DeletePinRequest req = MEMORYPINS__V1__DELETE_PIN_REQUEST__INIT;
    Google__Protobuf__Int64Value expected = GOOGLE__PROTOBUF__INT64_VALUE__INIT;
    int64_t n = 0;
    bool set = false;
    ex = pinsctl_int_opt(a, "--expected-version", 0, INT64_MAX, &n, &set);
    if (ex != 0)
        return ex;
    if (set) {
        expected.value = n;
        req.expected_version = &expected;
    }
    req.tenant_id = (char *)a->pos[0];
    req.key = (char *)a->pos[1];
    pins_client *c = pinsctl_connect(a, &ex);
    if (c == NULL)
        return ex;
    Memorypins__V1__DeletePinResponse *resp = NULL;
    pins_status st = PINS_STATUS_INIT;
    if (pins_delete_pin(c, &req, &resp, NULL, &st) != 0)
        ex = pinsctl_fail(a, &st);
    else if (a->g->json)
        ex = pinsctl_print_json(&resp->base);
    else
        printf("%s %s/%s\n", resp->deleted ? "deleted" : "not deleted", resp->tenant_id, resp->key);
    pins_message_free(resp != NULL ? &resp->base : NULL);
    pins_status_clear(&st);
    pins_client_free(c);
    return ex;
}

int pinsctl_cmd_cleanup(pinsctl_args *a)
{
    int ex = 0;
    Memorypins__V1__CleanupExpiredPinsRequest req =
        MEMORYPINS__V1__CLEANUP_EXPIRED_PINS_REQUEST__INIT;
    Google__Protobuf__StringValue tenant = GOOGLE__PROTOBUF__STRING_VALUE__INIT;
    if (a->npos > 0) {
        tenant.value = (char *)a->pos[0];
        req.tenant_id = &tenant;
    }
    pins_client *c = pinsctl_connect(a, &ex);
    if (c == NULL)
        return ex;
    Memorypins__V1__CleanupExpiredPinsResponse *resp = NULL;
    pins_status st = PINS_STATUS_INIT;
    if (pins_cleanup_expired_pins(c, &req, &resp, NULL, &st) != 0) {
        ex = pinsctl_fail(a, &st);
    } else if (a->g->json) {
        ex = pinsctl_print_json(&resp->base);
    } else {
        char ts[48];
        pinsctl_fmt_ts(resp->timestamp, false, ts, sizeof(ts));
        printf("deleted %" PRId64 " expired pin%s", resp->deleted_count,
               resp->deleted_count == 1 ? "" : "s");
        if (resp->tenant_id != NULL)
            printf(" of tenant %s", resp->tenant_id->value);
        printf(" at %s\n", ts);
    }
    pins_message_free(resp != NULL ? &resp->base : NULL);
    pins_status_clear(&st);
    pins_client_free(c);
    return ex;
}

static const char *event_name(Memorypins__V1__WatchPinsResponse__EventType t)
{
    switch (t) {
    case MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_PUT:
        return "PUT";
    case MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_DELETE:
        return "DELETE";
    case MEMORYPINS__V1__WATCH_PINS_RESPONSE__EVENT_TYPE__EVENT_TYPE_EXPIRE:
        return "EXPIRE";
    default:
        return "UNSPECIFIED";
    }
}

int pinsctl_stream_probe(const pinsctl_args *a, pins_client *c)
{
    /* A server that accepted the connection but sends nothing until the first event looks, at
     * the deadline, just like one that never answered: one health Check first tells them
     * apart. Any answer the server sends will do. */
    pins_status st = PINS_STATUS_INIT;
    Grpc__Health__V1__HealthCheckResponse *resp = NULL;
    int ex = PINSCTL_EXIT_OK;
    /* The check has a deadline even when the stream has none (--timeout 0): the call's, or
     * 10 s when that is longer or none. */
    pins_call_options co = {.timeout_ms = PROBE_TIMEOUT_MS};
    if (a->g->opts.timeout_ms > 0 && a->g->opts.timeout_ms < PROBE_TIMEOUT_MS)
        co.timeout_ms = a->g->opts.timeout_ms;
    if (pins_health_check(c, "", &resp, &co, &st) != 0 && !st.from_server)
        ex = pinsctl_fail(a, &st);
    pins_message_free(resp != NULL ? &resp->base : NULL);
    pins_status_clear(&st);
    return ex;
}

int pinsctl_stream_end(const pinsctl_args *a, int rv, const pins_status *st, uint64_t seen)
{
    if (rv == 0)
        return PINSCTL_EXIT_OK;
    if (rv == PINS_CODE_DEADLINE_EXCEEDED && a->g->timeout_given) {
        fprintf(stderr, "pinsctl: %s: DEADLINE_EXCEEDED after %" PRIu64 " message%s\n",
                a->cmd->name, seen, seen == 1 ? "" : "s");
        return PINSCTL_EXIT_OK;
    }
    return pinsctl_fail(a, st);
}

pins_call_options pinsctl_stream_copts(const pinsctl_args *a)
{
    pins_call_options co = {0};
    co.timeout_ms = a->g->timeout_given && a->g->opts.timeout_ms > 0 ? a->g->opts.timeout_ms : -1;
    return co;
}

int pinsctl_cmd_watch(pinsctl_args *a)
{
    int ex = 0;
    int64_t count = 0;
    bool has_count = false;
    ex = pinsctl_int_opt(a, "--count", 1, INT64_MAX, &count, &has_count);
    if (ex != 0)
        return ex;
    int64_t since = 0;
    bool has_since = false;
    ex = pinsctl_int_opt(a, "--since-revision", 0, INT64_MAX, &since, &has_since);
    if (ex != 0)
        return ex;
    Memorypins__V1__WatchPinsRequest req = MEMORYPINS__V1__WATCH_PINS_REQUEST__INIT;
    req.since_revision = since;
    req.tenant_id = (char *)a->pos[0];
    if (pinsctl_arg(a, "--prefix") != NULL)
        req.prefix = (char *)pinsctl_arg(a, "--prefix");
    pins_client *c = pinsctl_connect(a, &ex);
    if (c == NULL)
        return ex;
    pins_status st = PINS_STATUS_INIT;
    pins_call_options co = pinsctl_stream_copts(a);
    pins_stream *s = NULL;
    ex = pinsctl_stream_probe(a, c);
    if (ex != 0)
        goto out;
    s = pins_watch_pins(c, &req, &co, &st);
    if (s == NULL) {
        ex = pinsctl_fail(a, &st);
        goto out;
    }
    uint64_t seen = 0;
    for (;;) {
        Memorypins__V1__WatchPinsResponse *ev = NULL;
        int rv = pins_watch_next(s, &ev, &st);
        if (rv != 1) {
            ex = pinsctl_stream_end(a, rv, &st, seen);
            break;
        }
        seen++;
        if (a->g->json) {
            ex = pinsctl_print_json(&ev->base);
        } else {
            const Memorypins__V1__Pin *p = ev->pin;
            char ts[48];
            pinsctl_fmt_ts(p != NULL ? p->updated_at : NULL, true, ts, sizeof(ts));
            char *v = p != NULL ? value_text(p->value) : NULL;
            printf("%s %-6s %s version=%" PRId64 " revision=%" PRId64 " %s\n", ts,
                   event_name(ev->type), p != NULL ? p->key : "-", p != NULL ? p->version : 0,
                   p != NULL ? p->revision : 0, v != NULL ? v : "");
            fflush(stdout);
            free(v);
        }
        pins_message_free(&ev->base);
        if (ex != 0 || (has_count && seen >= (uint64_t)count))
            break;
    }
out:
    pins_stream_close(s);
    pins_status_clear(&st);
    pins_client_free(c);
    return ex;
}
