/* tools/pinsctl/cmd_admin.c: health, ready, status, the RBAC commands and memory-audit (the
 * Admin service, gRPC health and the /ready probe).
 *
 * The audit filters are set on the request by field name through pinsd's JSON codec
 * (proto_json_set_field), so every field of ListRbacAuditRequest, CleanupRbacAuditRequest and
 * ListMemoryAuditRequest is reachable and parsed as the REST bridge parses query parameters.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "common/arena.h"
#include "common/limits.h"
#include "protocols/json.h"

#define REQUEST_ARENA_BYTES (64u << 10)

static const char *serving_name(int status)
{
    const ProtobufCEnumValue *v = protobuf_c_enum_descriptor_get_value(
        &grpc__health__v1__health_check_response__serving_status__descriptor, status);
    return v != NULL ? v->name : "UNKNOWN";
}

int pinsctl_cmd_health(pinsctl_args *a)
{
    int ex = 0;
    int64_t count = 0;
    bool has_count = false;
    ex = pinsctl_int_opt(a, "--count", 1, INT64_MAX, &count, &has_count);
    if (ex != 0)
        return ex;
    bool watch = pinsctl_flag(a, "--watch");
    if (has_count && !watch)
        return pinsctl_usage_error(a, "--count needs --watch");
    const char *service = a->npos > 0 ? a->pos[0] : "";
    pins_client *c = pinsctl_connect(a, &ex);
    if (c == NULL)
        return ex;
    pins_status st = PINS_STATUS_INIT;
    if (!watch) {
        Grpc__Health__V1__HealthCheckResponse *resp = NULL;
        if (pins_health_check(c, service, &resp, NULL, &st) != 0) {
            ex = pinsctl_fail(a, &st);
        } else {
            ex = a->g->json ? pinsctl_print_json(&resp->base)
                            : (puts(serving_name(resp->status)), 0);
            if (ex == 0 &&
                resp->status != GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING)
                ex = PINSCTL_EXIT_REFUSED;
        }
        pins_message_free(resp != NULL ? &resp->base : NULL);
        goto out;
    }
    Grpc__Health__V1__HealthCheckRequest req = GRPC__HEALTH__V1__HEALTH_CHECK_REQUEST__INIT;
    req.service = (char *)service;
    pins_call_options co = pinsctl_stream_copts(a);
    ex = pinsctl_stream_probe(a, c);
    if (ex != 0)
        goto out;
    pins_stream *s = pins_stream_open(c, PINS_RPC_HEALTH_WATCH, &req.base, &co, &st);
    if (s == NULL) {
        ex = pinsctl_fail(a, &st);
        goto out;
    }
    uint64_t seen = 0;
    for (;;) {
        ProtobufCMessage *m = NULL;
        int rv = pins_stream_next(s, &m, &st);
        if (rv != 1) {
            ex = pinsctl_stream_end(a, rv, &st, seen);
            break;
        }
        seen++;
        const Grpc__Health__V1__HealthCheckResponse *r =
            (const Grpc__Health__V1__HealthCheckResponse *)m;
        if (a->g->json) {
            ex = pinsctl_print_json(m);
        } else {
            puts(serving_name(r->status));
            fflush(stdout);
        }
        pins_message_free(m);
        if (ex != 0 || (has_count && seen >= (uint64_t)count))
            break;
    }
    pins_stream_close(s);
out:
    pins_status_clear(&st);
    pins_client_free(c);
    return ex;
}

/* The text of a Struct field's value: strings bare, anything else as JSON. New (free()). */
static char *field_text(const Google__Protobuf__Value *v)
{
    if (v != NULL && v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_STRING_VALUE)
        return strdup(v->string_value);
    return pinsctl_json_text(v != NULL ? &v->base : NULL);
}

/* /ready's body {"ready":..,"checks":{..}} as lines; false when it is not that shape. */
static bool print_ready_body(const char *body, size_t len)
{
    Google__Protobuf__Struct *s = NULL;
    if (pins_value_from_json(body, len, &s, NULL) != 0)
        return false;
    for (size_t i = 0; i < s->n_fields; i++) {
        const Google__Protobuf__Struct__FieldsEntry *f = s->fields[i];
        const Google__Protobuf__Value *v = f->value;
        if (strcmp(f->key, "checks") == 0 && v != NULL &&
            v->kind_case == GOOGLE__PROTOBUF__VALUE__KIND_STRUCT_VALUE) {
            const Google__Protobuf__Struct *checks = v->struct_value;
            for (size_t k = 0; k < checks->n_fields; k++) {
                char *t = field_text(checks->fields[k]->value);
                printf("  %s: %s\n", checks->fields[k]->key, t != NULL ? t : "?");
                free(t);
            }
        } else {
            char *t = field_text(v);
            printf("%s: %s\n", f->key, t != NULL ? t : "?");
            free(t);
        }
    }
    pins_message_free(&s->base);
    return true;
}

int pinsctl_cmd_ready(pinsctl_args *a)
{
    int ex = 0;
    pins_client *c = pinsctl_connect(a, &ex);
    if (c == NULL)
        return ex;
    pins_status st = PINS_STATUS_INIT;
    int http = 0;
    char *body = NULL;
    size_t len = 0;
    if (pins_client_http_get(c, "/ready", &http, &body, &len, NULL, &st) != 0) {
        ex = pinsctl_fail(a, &st);
        goto out;
    }
    if (a->g->json) {
        fwrite(body, 1, len, stdout);
        if (len == 0 || body[len - 1] != '\n')
            fputc('\n', stdout);
    } else if (!print_ready_body(body, len)) {
        printf("HTTP %d: %.*s\n", http, (int)(len > 400 ? 400 : len), body);
    }
    fflush(stdout);
    if (http != 200) {
        fprintf(stderr, "pinsctl: ready: not ready (HTTP %d)\n", http);
        ex = PINSCTL_EXIT_REFUSED;
    }
out:
    free(body);
    pins_status_clear(&st);
    pins_client_free(c);
    return ex;
}

/* Prints "name: value" of a Struct (one line, compact JSON). */
static void print_struct_line(const char *name, const Google__Protobuf__Struct *s)
{
    char *t = s != NULL ? pins_value_to_json(s) : strdup("null");
    printf("%-9s %s\n", name, t != NULL ? t : "?");
    free(t);
}

/* Calls an Admin method without arguments. Returns 0 with *presp, or the exit status (printed). */
static int call_plain(pinsctl_args *a, pins_rpc rpc, ProtobufCMessage **presp)
{
    int ex = 0;
    pins_client *c = pinsctl_connect(a, &ex);
    if (c == NULL)
        return ex;
    const pins_method *m = pins_method_of(rpc);
    /* Every plain Admin request is an empty message: initialise it from its descriptor. */
    ProtobufCMessage req;
    protobuf_c_message_init(m->input, &req);
    pins_status st = PINS_STATUS_INIT;
    if (pins_client_call(c, rpc, &req, presp, NULL, &st) != 0)
        ex = pinsctl_fail(a, &st);
    pins_status_clear(&st);
    pins_client_free(c);
    return ex;
}

int pinsctl_cmd_status(pinsctl_args *a)
{
    ProtobufCMessage *m = NULL;
    int ex = call_plain(a, PINS_RPC_GET_STATUS, &m);
    if (ex != 0)
        return ex;
    const Memorypins__V1__GetStatusResponse *r = (const Memorypins__V1__GetStatusResponse *)m;
    if (a->g->json) {
        ex = pinsctl_print_json(m);
    } else {
        printf("%-9s %s\n", "version:", r->version);
        printf("%-9s %.1fs\n", "uptime:", r->uptime);
        print_struct_line("store:", r->store);
        print_struct_line("redis:", r->redis);
        print_struct_line("flags:", r->flags);
        print_struct_line("breaker:", r->breaker);
        print_struct_line("limiter:", r->limiter);
    }
    pins_message_free(m);
    return ex;
}

static void print_list(const char *name, char **items, size_t n)
{
    printf("%-13s ", name);
    for (size_t i = 0; i < n; i++)
        printf("%s%s", i ? ", " : "", items[i]);
    fputc('\n', stdout);
}

int pinsctl_cmd_rbac_info(pinsctl_args *a)
{
    ProtobufCMessage *m = NULL;
    int ex = call_plain(a, PINS_RPC_GET_RBAC_INFO, &m);
    if (ex != 0)
        return ex;
    const Memorypins__V1__GetRbacInfoResponse *r = (const Memorypins__V1__GetRbacInfoResponse *)m;
    if (a->g->json) {
        ex = pinsctl_print_json(m);
    } else {
        char ts[48];
        pinsctl_fmt_ts(r->loaded_at, false, ts, sizeof(ts));
        printf("%-13s %s\n", "version:", r->version);
        printf("%-13s %s\n", "hash:", r->hash);
        printf("%-13s %s\n", "loaded_at:", ts);
        printf("%-13s %s\n", "enforce_mode:", r->enforce_mode ? "true" : "false");
        printf("%-13s %s\n", "fail_open:", r->fail_open ? "true" : "false");
        print_list("roles:", r->roles, r->n_roles);
        print_list("resources:", r->resources, r->n_resources);
    }
    pins_message_free(m);
    return ex;
}

int pinsctl_cmd_rbac_matrix(pinsctl_args *a)
{
    ProtobufCMessage *m = NULL;
    int ex = call_plain(a, PINS_RPC_GET_RBAC_MATRIX, &m);
    if (ex != 0)
        return ex;
    const Memorypins__V1__GetRbacMatrixResponse *r =
        (const Memorypins__V1__GetRbacMatrixResponse *)m;
    if (a->g->json) {
        ex = pinsctl_print_json(m);
    } else {
        printf("version: %s\nhash:    %s\n", r->version, r->hash);
        pinsctl_table t;
        pinsctl_table_init(&t, 2);
        pinsctl_table_add(&t, "ROLE");
        pinsctl_table_add(&t, "PERMISSIONS");
        for (size_t i = 0; r->matrix != NULL && i < r->matrix->n_fields; i++) {
            char *v = field_text(r->matrix->fields[i]->value);
            pinsctl_table_add(&t, r->matrix->fields[i]->key);
            pinsctl_table_add(&t, v != NULL ? v : "?");
            free(v);
        }
        ex = pinsctl_table_print(&t);
        pinsctl_table_free(&t);
    }
    pins_message_free(m);
    return ex;
}

int pinsctl_cmd_rbac_reload(pinsctl_args *a)
{
    ProtobufCMessage *m = NULL;
    int ex = call_plain(a, PINS_RPC_RELOAD_RBAC_POLICY, &m);
    if (ex != 0)
        return ex;
    const Memorypins__V1__ReloadRbacPolicyResponse *r =
        (const Memorypins__V1__ReloadRbacPolicyResponse *)m;
    if (a->g->json) {
        ex = pinsctl_print_json(m);
    } else {
        char ts[48];
        pinsctl_fmt_ts(r->timestamp, false, ts, sizeof(ts));
        printf("%s: %s\nprevious_hash: %s\nnew_hash:      %s\nat:            %s\n",
               r->success ? "reloaded" : "not reloaded", r->message, r->previous_hash, r->new_hash,
               ts);
    }
    if (ex == 0 && !r->success) {
        fprintf(stderr, "pinsctl: rbac reload: the server kept its policy: %s\n", r->message);
        ex = PINSCTL_EXIT_REFUSED;
    }
    pins_message_free(m);
    return ex;
}

/* Calls rpc with a request whose fields come from the command's options (--tenant-id sets
 * tenant_id). Returns 0 with *presp, or the exit status (printed). */
static int call_filtered(pinsctl_args *a, pins_rpc rpc, ProtobufCMessage **presp)
{
    int ex = 0;
    pins_client *c = NULL;
    pins_status st = PINS_STATUS_INIT;
    const pins_method *m = pins_method_of(rpc);
    pins_arena *arena = pins_arena_new(REQUEST_ARENA_BYTES);
    ProtobufCMessage *req = NULL;
    if (arena == NULL ||
        proto_json_decode(arena, m->input, "", 0, PINS_REQUEST_JSON_DEPTH, &req, NULL) != 0) {
        fputs("pinsctl: out of memory\n", stderr);
        ex = PINSCTL_EXIT_REFUSED;
        goto out;
    }
    for (int k = 0; a->cmd->opts[k].name != NULL; k++) {
        if (!a->set[k])
            continue;
        /* --pin-key sets key: --key is the TLS key file of every command. */
        const char *name = a->cmd->opts[k].name + 2;
        char field[64];
        snprintf(field, sizeof(field), "%s", strcmp(name, "pin-key") == 0 ? "key" : name);
        for (char *p = field; *p != '\0'; p++) {
            if (*p == '-')
                *p = '_';
        }
        proto_json_error err = {0};
        const char *v = a->val[k];
        if (proto_json_set_field(arena, req, field, v, strlen(v), &err) != 0) {
            ex = pinsctl_usage_error(a, "%s: %s, got '%s'", a->cmd->opts[k].name,
                                     err.msg[0] != '\0' ? err.msg : "bad value", v);
            goto out;
        }
    }
    c = pinsctl_connect(a, &ex);
    if (c == NULL)
        goto out;
    if (pins_client_call(c, rpc, req, presp, NULL, &st) != 0)
        ex = pinsctl_fail(a, &st);
out:
    pins_status_clear(&st);
    pins_client_free(c);
    pins_arena_free(arena);
    return ex;
}

int pinsctl_cmd_rbac_audit(pinsctl_args *a)
{
    ProtobufCMessage *m = NULL;
    int ex = call_filtered(a, PINS_RPC_LIST_RBAC_AUDIT, &m);
    if (ex != 0)
        return ex;
    const Memorypins__V1__ListRbacAuditResponse *r =
        (const Memorypins__V1__ListRbacAuditResponse *)m;
    if (a->g->json) {
        ex = pinsctl_print_json(m);
        goto out;
    }
    static const char *const head[] = {"ID",     "TIME",    "SUBJECT", "RESOURCE",
                                       "ACTION", "ALLOWED", "TENANT",  "REASON"};
    pinsctl_table t;
    pinsctl_table_init(&t, 8);
    for (size_t i = 0; i < 8; i++)
        pinsctl_table_add(&t, head[i]);
    for (size_t i = 0; i < r->n_entries; i++) {
        const Memorypins__V1__RbacAuditEntry *e = r->entries[i];
        char ts[48];
        pinsctl_fmt_ts(e->ts, false, ts, sizeof(ts));
        pinsctl_table_addf(&t, "%" PRId64, e->id);
        pinsctl_table_add(&t, ts);
        pinsctl_table_add(&t, e->subject[0] ? e->subject : "-");
        pinsctl_table_add(&t, e->resource);
        pinsctl_table_add(&t, e->action);
        pinsctl_table_add(&t, e->allowed ? "yes" : "no");
        pinsctl_table_add(&t, e->tenant_id[0] ? e->tenant_id : "-");
        pinsctl_table_add(&t, e->reason);
    }
    ex = pinsctl_table_print(&t);
    pinsctl_table_free(&t);
    printf("(%zu of %" PRId64 " entries)\n", r->n_entries, r->total);
out:
    pins_message_free(m);
    return ex;
}

int pinsctl_cmd_rbac_audit_cleanup(pinsctl_args *a)
{
    ProtobufCMessage *m = NULL;
    int ex = call_filtered(a, PINS_RPC_CLEANUP_RBAC_AUDIT, &m);
    if (ex != 0)
        return ex;
    const Memorypins__V1__CleanupRbacAuditResponse *r =
        (const Memorypins__V1__CleanupRbacAuditResponse *)m;
    if (a->g->json) {
        ex = pinsctl_print_json(m);
    } else {
        char ts[48];
        pinsctl_fmt_ts(r->timestamp, false, ts, sizeof(ts));
        printf("deleted %" PRId64 " RBAC audit entr%s older than %" PRId32 " days at %s\n",
               r->deleted_count, r->deleted_count == 1 ? "y" : "ies", r->retention_days, ts);
    }
    pins_message_free(m);
    return ex;
}

int pinsctl_cmd_memory_audit(pinsctl_args *a)
{
    ProtobufCMessage *m = NULL;
    int ex = call_filtered(a, PINS_RPC_LIST_MEMORY_AUDIT, &m);
    if (ex != 0)
        return ex;
    const Memorypins__V1__ListMemoryAuditResponse *r =
        (const Memorypins__V1__ListMemoryAuditResponse *)m;
    if (a->g->json) {
        ex = pinsctl_print_json(m);
        goto out;
    }
    static const char *const head[] = {"ID",      "TIME",  "OPERATION",  "TENANT", "KEY",
                                       "SUCCESS", "CACHE", "LATENCY_MS", "ERROR"};
    pinsctl_table t;
    pinsctl_table_init(&t, 9);
    for (size_t i = 0; i < 9; i++)
        pinsctl_table_add(&t, head[i]);
    for (size_t i = 0; i < r->n_entries; i++) {
        const Memorypins__V1__MemoryAuditEntry *e = r->entries[i];
        char ts[48];
        pinsctl_fmt_ts(e->ts, false, ts, sizeof(ts));
        pinsctl_table_addf(&t, "%" PRId64, e->id);
        pinsctl_table_add(&t, ts);
        pinsctl_table_add(&t, e->operation);
        pinsctl_table_add(&t, e->tenant_id);
        pinsctl_table_add(&t, e->key[0] ? e->key : "-");
        pinsctl_table_add(&t, e->success ? "yes" : "no");
        pinsctl_table_add(&t, e->cache_hit ? "hit" : "-");
        pinsctl_table_addf(&t, "%.3f", e->latency_ms);
        pinsctl_table_add(&t, e->error_message[0] ? e->error_message : "-");
    }
    ex = pinsctl_table_print(&t);
    pinsctl_table_free(&t);
    printf("(%zu of %" PRId64 " entries)\n", r->n_entries, r->total);
out:
    pins_message_free(m);
    return ex;
}
