/* tests/unit/auth/api_matrix.h: API.md section 6's RBAC matrix, written out independently of
 * auth/policy.c, for the tests that compare the server's decisions with it (test_policy.c,
 * test_decide.c).
 *
 * static inline, like jwt_mint.h, so that each test includes it without warnings.
 */
#ifndef PINS_TESTS_AUTH_API_MATRIX_H
#define PINS_TESTS_AUTH_API_MATRIX_H

#include <stdbool.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

static const struct {
    const char *role, *resource, *actions;
} api_matrix[] = {
    {"infra", "memory_pin", "read write delete admin"},
    {"infra", "prometheus", "reload query"},
    {"infra", "rbac", "read reload"},
    {"admin", "memory_pin", "read write delete admin"},
    {"admin", "prometheus", "reload query"},
    {"admin", "rbac", "read reload"},
    {"machine", "memory_pin", "read write"},
    {"machine", "prometheus", "reload"},
    {"machine", "rbac", "read"},
    {"dev", "memory_pin", "read"},
    {"dev", "prometheus", "query"},
    {"dev", "rbac", "read"},
    {"readonly", "memory_pin", "read"},
    {"readonly", "prometheus", "query"},
    {"readonly", "rbac", "read"},
};

/* Whether API.md grants role (NULL: no role) action on resource. */
static inline bool api_allows(const char *role, const char *resource, const char *action)
{
    if (role == NULL)
        return false;
    for (size_t i = 0; i < sizeof(api_matrix) / sizeof(api_matrix[0]); i++) {
        if (strcmp(api_matrix[i].role, role) != 0 || strcmp(api_matrix[i].resource, resource) != 0)
            continue;
        char words[64], needle[32];
        snprintf(words, sizeof(words), " %s ", api_matrix[i].actions);
        snprintf(needle, sizeof(needle), " %s ", action);
        return strstr(words, needle) != NULL;
    }
    return false;
}

#endif
