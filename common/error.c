/* common/error.c: mappings generated from PINS_ERROR_MAP. */
#include "common/error.h"

#include <stddef.h>

struct row {
    const char *name;
    int grpc;
    int http;
    const char *msg;
};

static const struct row rows[PINS__IDX_COUNT] = {
#define PINS__X(n, g, h, m) [PINS__IDX_##n] = {#n, g, h, m},
    PINS_ERROR_MAP(PINS__X)
#undef PINS__X
};

static const struct row *lookup(int err)
{
    int idx = -err - 1;
    if (err >= 0 || idx >= PINS__IDX_COUNT)
        return NULL;
    return &rows[idx];
}

const char *pins_strerror(int err)
{
    if (err == 0)
        return "ok";
    const struct row *r = lookup(err);
    return r ? r->msg : "unknown error";
}

const char *pins_error_name(int err)
{
    if (err == 0)
        return "OK";
    const struct row *r = lookup(err);
    return r ? r->name : "UNKNOWN";
}

int pins_error_grpc(int err)
{
    if (err == 0)
        return 0;
    const struct row *r = lookup(err);
    return r ? r->grpc : 2;
}

int pins_error_http(int err)
{
    if (err == 0)
        return 200;
    const struct row *r = lookup(err);
    return r ? r->http : 500;
}

static const char *const code_names[17] = {
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
};

static const char *const connect_names[17] = {
    "ok",
    "canceled",
    "unknown",
    "invalid_argument",
    "deadline_exceeded",
    "not_found",
    "already_exists",
    "permission_denied",
    "resource_exhausted",
    "failed_precondition",
    "aborted",
    "out_of_range",
    "unimplemented",
    "internal",
    "unavailable",
    "data_loss",
    "unauthenticated",
};

/* The Connect protocol's HTTP status for each code. */
static const int code_http[17] = {200, 499, 500, 400, 504, 404, 409, 403, 429,
                                  400, 409, 400, 501, 500, 503, 500, 401};

const char *pins_grpc_code_name(int code)
{
    return code >= 0 && code <= 16 ? code_names[code] : "UNKNOWN";
}

const char *pins_grpc_code_connect(int code)
{
    return code >= 0 && code <= 16 ? connect_names[code] : "unknown";
}

int pins_grpc_code_http(int code)
{
    return code >= 0 && code <= 16 ? code_http[code] : 500;
}
