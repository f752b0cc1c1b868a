/* client/methods.c: the method table of pinsd's services, freeing returned messages, and the
 * JSON form of a pin's value (google.protobuf.Struct) over common/pbstruct.
 *
 * Values parsed from JSON are built in a temporary arena, packed, and unpacked again with the
 * default allocator, so that the caller frees them with pins_message_free like any response.
 */
#include "pins/client.h"

#include <stdlib.h>
#include <string.h>

#include "client/client_int.h"
#include "common/arena.h"
#include "common/error.h"
#include "common/limits.h"
#include "common/pbstruct.h"

#define MP "/memorypins.v1.MemoryPins/"
#define AD "/memorypins.v1.Admin/"
#define HE "/grpc.health.v1.Health/"

#define ROW(id, p, in, out, stream, idem) \
    [id] = {.path = (p),                  \
            .input = &in##__descriptor,   \
            .output = &out##__descriptor, \
            .server_streaming = (stream), \
            .idempotent = (idem)}

static const pins_method methods[PINS_RPC__COUNT] = {
    ROW(PINS_RPC_UPSERT_PIN, MP "UpsertPin", memorypins__v1__upsert_pin_request,
        memorypins__v1__upsert_pin_response, false, false),
    ROW(PINS_RPC_GET_PIN, MP "GetPin", memorypins__v1__get_pin_request,
        memorypins__v1__get_pin_response, false, true),
    ROW(PINS_RPC_LIST_PINS, MP "ListPins", memorypins__v1__list_pins_request,
        memorypins__v1__list_pins_response, false, true),
    ROW(PINS_RPC_DELETE_PIN, MP "DeletePin", memorypins__v1__delete_pin_request,
        memorypins__v1__delete_pin_response, false, false),
    ROW(PINS_RPC_CLEANUP_EXPIRED_PINS, MP "CleanupExpiredPins",
        memorypins__v1__cleanup_expired_pins_request, memorypins__v1__cleanup_expired_pins_response,
        false, false),
    ROW(PINS_RPC_WATCH_PINS, MP "WatchPins", memorypins__v1__watch_pins_request,
        memorypins__v1__watch_pins_response, true, true),
    ROW(PINS_RPC_GET_RBAC_INFO, AD "GetRbacInfo", memorypins__v1__get_rbac_info_request,
        memorypins__v1__get_rbac_info_response, false, true),
    ROW(PINS_RPC_RELOAD_RBAC_POLICY, AD "ReloadRbacPolicy",
        memorypins__v1__reload_rbac_policy_request, memorypins__v1__reload_rbac_policy_response,
        false, false),
    ROW(PINS_RPC_GET_RBAC_MATRIX, AD "GetRbacMatrix", memorypins__v1__get_rbac_matrix_request,
        memorypins__v1__get_rbac_matrix_response, false, true),
    ROW(PINS_RPC_LIST_RBAC_AUDIT, AD "ListRbacAudit", memorypins__v1__list_rbac_audit_request,
        memorypins__v1__list_rbac_audit_response, false, true),
    ROW(PINS_RPC_CLEANUP_RBAC_AUDIT, AD "CleanupRbacAudit",
        memorypins__v1__cleanup_rbac_audit_request, memorypins__v1__cleanup_rbac_audit_response,
        false, false),
    ROW(PINS_RPC_LIST_MEMORY_AUDIT, AD "ListMemoryAudit", memorypins__v1__list_memory_audit_request,
        memorypins__v1__list_memory_audit_response, false, true),
    ROW(PINS_RPC_GET_STATUS, AD "GetStatus", memorypins__v1__get_status_request,
        memorypins__v1__get_status_response, false, true),
    ROW(PINS_RPC_HEALTH_CHECK, HE "Check", grpc__health__v1__health_check_request,
        grpc__health__v1__health_check_response, false, true),
    ROW(PINS_RPC_HEALTH_WATCH, HE "Watch", grpc__health__v1__health_check_request,
        grpc__health__v1__health_check_response, true, true),
};

const pins_method *pins_method_of(pins_rpc rpc)
{
    if ((int)rpc < 0 || rpc >= PINS_RPC__COUNT)
        return NULL;
    return &methods[rpc];
}

void pins_message_free(ProtobufCMessage *msg)
{
    if (msg != NULL)
        protobuf_c_message_free_unpacked(msg, NULL);
}

int pins_value_from_json(const char *json, size_t len, Google__Protobuf__Struct **pvalue,
                         pins_status *st)
{
    int code = PINS_CODE_OK;
    uint8_t *packed = NULL;
    pins_arena *a = pins_arena_new(0);
    if (a == NULL) {
        code = PINS_CODE_RESOURCE_EXHAUSTED;
        if (st != NULL)
            client__status_set(st, code, "out of memory");
        goto out;
    }
    Google__Protobuf__Struct *s = NULL;
    int rv = pbstruct_from_json(a, json != NULL ? json : "", json != NULL ? len : 0,
                                PINS_VALUE_MAX_DEPTH, &s);
    if (rv != 0) {
        code = rv == PINS_ENOMEM ? PINS_CODE_RESOURCE_EXHAUSTED : PINS_CODE_INVALID_ARGUMENT;
        if (st != NULL)
            client__status_set(st, code, "%s", pbstruct_reason_text(pbstruct_last_reason()));
        goto out;
    }
    size_t n = protobuf_c_message_get_packed_size(&s->base);
    packed = malloc(n + 1);
    if (packed == NULL) {
        code = PINS_CODE_RESOURCE_EXHAUSTED;
        if (st != NULL)
            client__status_set(st, code, "out of memory");
        goto out;
    }
    protobuf_c_message_pack(&s->base, packed);
    ProtobufCMessage *m =
        protobuf_c_message_unpack(&google__protobuf__struct__descriptor, NULL, n, packed);
    if (m == NULL) {
        code = PINS_CODE_RESOURCE_EXHAUSTED;
        if (st != NULL)
            client__status_set(st, code, "out of memory");
        goto out;
    }
    *pvalue = (Google__Protobuf__Struct *)m;
    if (st != NULL)
        client__status_set(st, PINS_CODE_OK, "%s", "");
out:
    free(packed);
    pins_arena_free(a);
    return code;
}

char *pins_value_to_json(const Google__Protobuf__Struct *value)
{
    if (value == NULL)
        return NULL;
    char *json = NULL;
    size_t len = 0;
    if (pbstruct_to_json(value, SIZE_MAX, PBSTRUCT_MAX_DEPTH, &json, &len) != 0)
        return NULL;
    return json;
}
