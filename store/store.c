/* store/store.c: the public store functions. They pick a backend at open, check what every backend
 * would check, clear the session's last error and dispatch through the backend table. */
#include "store/store_int.h"

#include <stdio.h>

#include "common/error.h"

/* True when limit and offset describe a page store_pin_list and store_audit_list accept. */
static bool page_ok(int32_t limit, int64_t offset)
{
    return limit >= 1 && limit <= STORE__LIST_MAX && offset >= 0;
}

void store__session_error(store_session *ss, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ss->last_error, sizeof(ss->last_error), fmt, ap);
    va_end(ap);
}

int store_open(const store_options *opts, store **pstore)
{
    if (opts == NULL || pstore == NULL)
        return PINS_EINTERNAL;
    if (opts->database_url == NULL || opts->database_url[0] == '\0')
        return store__sqlite_open(opts, pstore);
    return store__postgres_open(opts, pstore);
}

void store_close(store *s)
{
    if (s != NULL)
        s->be->close(s);
}

const char *store_backend_name(const store *s)
{
    return s->be->name;
}

int store_session_new(store *s, struct event_base *base, store_session **psession)
{
    if (s == NULL || psession == NULL)
        return PINS_EINTERNAL;
    return s->be->session_new(s, base, psession);
}

void store_session_free(store_session *ss)
{
    if (ss != NULL)
        ss->be->session_free(ss);
}

void store_session_set_deadline(store_session *ss, int64_t deadline_ns)
{
    if (ss != NULL)
        ss->deadline_ns = deadline_ns > 0 ? deadline_ns : 0;
}

const char *store_session_last_error(const store_session *ss)
{
    return ss->last_error;
}

int store_pin_upsert(store_session *ss, const store_upsert_req *req, store_pin_cb cb, void *arg)
{
    if (ss == NULL || req == NULL || cb == NULL || req->tenant_id == NULL || req->key == NULL ||
        req->value_json == NULL || req->source == NULL)
        return PINS_EINTERNAL;
    ss->last_error[0] = '\0';
    return ss->be->pin_upsert(ss, req, cb, arg);
}

int store_pin_get(store_session *ss, const char *tenant_id, const char *key, int64_t now_us,
                  store_pin_cb cb, void *arg)
{
    if (ss == NULL || tenant_id == NULL || key == NULL || cb == NULL)
        return PINS_EINTERNAL;
    ss->last_error[0] = '\0';
    const store__get_req req = {.tenant_id = tenant_id, .key = key, .now_us = now_us};
    return ss->be->pin_get(ss, &req, cb, arg);
}

int store_pin_list(store_session *ss, const store_list_req *req, store_list_cb cb, void *arg)
{
    if (ss == NULL || req == NULL || cb == NULL || req->tenant_id == NULL)
        return PINS_EINTERNAL;
    if (!page_ok(req->limit, req->offset))
        return PINS_EINVALID_ARGUMENT;
    ss->last_error[0] = '\0';
    if (req->prefix != NULL)
        return ss->be->pin_list(ss, req, cb, arg);
    store_list_req all = *req;
    all.prefix = "";
    return ss->be->pin_list(ss, &all, cb, arg);
}

int store_pin_delete(store_session *ss, const store_delete_req *req, store_pin_cb cb, void *arg)
{
    if (ss == NULL || req == NULL || cb == NULL || req->tenant_id == NULL || req->key == NULL)
        return PINS_EINTERNAL;
    ss->last_error[0] = '\0';
    return ss->be->pin_delete(ss, req, cb, arg);
}

int store_pin_cleanup(store_session *ss, const char *tenant_id, int64_t now_us, store_count_cb cb,
                      void *arg)
{
    if (ss == NULL || cb == NULL)
        return PINS_EINTERNAL;
    ss->last_error[0] = '\0';
    const store__cleanup_req req = {.tenant_id = tenant_id, .now_us = now_us};
    return ss->be->pin_cleanup(ss, &req, cb, arg);
}

int store_pin_sweep(store_session *ss, int64_t now_us, int batch, store_count_cb cb, void *arg)
{
    if (ss == NULL || cb == NULL)
        return PINS_EINTERNAL;
    if (batch < 1)
        return PINS_EINVALID_ARGUMENT;
    ss->last_error[0] = '\0';
    const store__sweep_req req = {.now_us = now_us, .batch = batch};
    return ss->be->pin_sweep(ss, &req, cb, arg);
}

int store_audit_list(store_session *ss, const store_audit_list_req *req, store_audit_list_cb cb,
                     void *arg)
{
    if (ss == NULL || req == NULL || cb == NULL)
        return PINS_EINTERNAL;
    if (!page_ok(req->limit, req->offset))
        return PINS_EINVALID_ARGUMENT;
    ss->last_error[0] = '\0';
    return ss->be->audit_list(ss, req, cb, arg);
}

int store_ping(store_session *ss, store_count_cb cb, void *arg)
{
    if (ss == NULL || cb == NULL)
        return PINS_EINTERNAL;
    ss->last_error[0] = '\0';
    return ss->be->ping(ss, cb, arg);
}
