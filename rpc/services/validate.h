/* rpc/services/validate.h: the validation rules of API.md section 4, shared by every transport
 * (they run in the handlers, after decoding). Each check returns NULL when the input is valid, or
 * a static, client-visible reason ("must not contain '..'") otherwise.
 */
#ifndef PINS_RPC_SERVICES_VALIDATE_H
#define PINS_RPC_SERVICES_VALIDATE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/limits.h"
#include "common/utf8.h"

#define PINS_KEY_MAX_CHARS      512
#define PINS_TENANT_MAX_CHARS   256
#define PINS_SOURCE_MAX_CHARS   64
#define PINS_TTL_MAX_SECONDS    31536000
#define PINS_LIST_MAX_LIMIT     1000
#define PINS_LIST_DEFAULT_LIMIT 100
/* PINS_VALUE_MAX_DEPTH: common/limits.h, where the transports' nesting bounds derive from it. */

const char *pins_check_key(const char *key);
/* tenant must already be defaulted (the dispatcher's rpc_call_tenant()). */
const char *pins_check_tenant(const char *tenant);
const char *pins_check_source(const char *source);
const char *pins_check_ttl(int64_t ttl);
/* prefix: valid UTF-8 without control characters, at most PINS_KEY_MAX_CHARS. */
const char *pins_check_prefix(const char *prefix);
/* A listing page's limit, already defaulted (0 in a request means PINS_LIST_DEFAULT_LIMIT):
 * between 1 and PINS_LIST_MAX_LIMIT. */
const char *pins_check_limit(int64_t limit);
/* A listing page's offset: at least 0. */
const char *pins_check_offset(int64_t offset);

#endif
