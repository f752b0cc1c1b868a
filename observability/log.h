/* observability/log.h: structured logs to stderr, one line per event.
 *
 * LOG_FORMAT=json writes {"ts":...,"level":...,"msg":...,<fields>}; text writes
 * `ts level msg key=value ...`. Lines are written with one write(2) so threads never interleave.
 * Never pass a secret (token, password, database URL with password) to these functions.
 */
#ifndef PINS_OBSERVABILITY_LOG_H
#define PINS_OBSERVABILITY_LOG_H

#include "common/config.h"

/* Sets level and format (before threads start). Default: info, json. */
void pins_log_setup(pins_log_level level, pins_log_format format);
/* True when a line at level would be written. */
int pins_log_enabled(pins_log_level level);
/* A log line. fields: NULL-terminated list of key, value string pairs (values may be NULL, which
 * writes null). Example: pins_log(PINS_LOG_INFO, "listening", "addr", "127.0.0.1:8000", NULL). */
void pins_log(pins_log_level level, const char *msg, ...) __attribute__((sentinel));

#define pins_log_debug(...) pins_log(PINS_LOG_DEBUG, __VA_ARGS__)
#define pins_log_info(...)  pins_log(PINS_LOG_INFO, __VA_ARGS__)
#define pins_log_warn(...)  pins_log(PINS_LOG_WARN, __VA_ARGS__)
#define pins_log_error(...) pins_log(PINS_LOG_ERROR, __VA_ARGS__)

#endif
