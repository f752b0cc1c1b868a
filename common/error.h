/* common/error.h: the one error table of pinsd.
 *
 * Every client-visible failure is one row of PINS_ERROR_MAP: its name, the gRPC status code, the
 * HTTP status of the REST bridge, and a short lower-case message. The enum, pins_strerror() and
 * both mappings are generated from it. Append rows; never reorder or renumber them.
 *
 * Functions across pinsd return 0 on success or a negative PINS_E* code.
 */
#ifndef PINS_COMMON_ERROR_H
#define PINS_COMMON_ERROR_H

/*  name                 gRPC  HTTP  message */
#define PINS_ERROR_MAP(X)                                         \
    X(INVALID_ARGUMENT, 3, 422, "invalid argument")               \
    X(MALFORMED, 3, 400, "malformed request")                     \
    X(NOT_FOUND, 5, 404, "not found")                             \
    X(ALREADY_EXISTS, 6, 409, "already exists")                   \
    X(ABORTED, 10, 409, "version conflict")                       \
    X(UNAUTHENTICATED, 16, 403, "no or invalid credentials")      \
    X(PERMISSION_DENIED, 7, 403, "permission denied")             \
    X(RATE_LIMITED, 8, 429, "rate limit exceeded")                \
    X(TOO_LARGE, 8, 413, "message larger than the limit")         \
    X(DISABLED, 14, 503, "feature disabled")                      \
    X(UNAVAILABLE, 14, 503, "service unavailable")                \
    X(DEADLINE_EXCEEDED, 4, 504, "deadline exceeded")             \
    X(UNIMPLEMENTED, 12, 404, "no such method")                   \
    X(METHOD_NOT_ALLOWED, 12, 405, "method not allowed")          \
    X(INTERNAL, 13, 500, "internal error")                        \
    X(NOMEM, 8, 503, "out of memory")                             \
    X(CANCELLED, 1, 499, "cancelled")                             \
    X(UNSUPPORTED_MEDIA_TYPE, 3, 415, "unsupported content type") \
    X(STORE, 14, 503, "store unavailable")                        \
    X(BREAKER_OPEN, 14, 503, "store circuit breaker open")        \
    X(RESOURCE_EXHAUSTED, 8, 503, "resource exhausted")           \
    X(OUT_OF_RANGE, 11, 400, "out of range")

enum pins__error_index {
#define PINS__X(name, grpc, http, msg) PINS__IDX_##name,
    PINS_ERROR_MAP(PINS__X)
#undef PINS__X
        PINS__IDX_COUNT
};

/* PINS_OK is 0; every error is negative: PINS_ENOT_FOUND, PINS_EINVALID_ARGUMENT, ... */
typedef enum pins_error {
    PINS_OK = 0,
#define PINS__X(name, grpc, http, msg) PINS_E##name = -(PINS__IDX_##name + 1),
    PINS_ERROR_MAP(PINS__X)
#undef PINS__X
} pins_error;

/* The table's message for err ("ok" for 0, "unknown error" outside the table). Static string. */
const char *pins_strerror(int err);
/* The row name, e.g. "NOT_FOUND". Static string. */
const char *pins_error_name(int err);
/* gRPC status code for err (0 for PINS_OK, 2 UNKNOWN outside the table). */
int pins_error_grpc(int err);
/* HTTP status for err (200 for PINS_OK, 500 outside the table). */
int pins_error_http(int err);
/* Canonical upper-case gRPC code name for a gRPC status code, e.g. "NOT_FOUND". Static string. */
const char *pins_grpc_code_name(int code);
/* Connect protocol's snake_case code for a gRPC status code, e.g. "not_found". Static string. */
const char *pins_grpc_code_connect(int code);
/* gRPC status code to the HTTP status Connect and gRPC-Web use for it. */
int pins_grpc_code_http(int code);

#endif
