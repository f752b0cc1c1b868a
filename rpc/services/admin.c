/* rpc/services/admin.c: the RBAC part of memorypins.v1.Admin (GetRbacInfo, ReloadRbacPolicy,
 * GetRbacMatrix) on auth/auth.h.
 *
 * ReloadRbacPolicy answers OK in every case where the server did its job: a file that does not
 * load is reported as success=false with the reason in message (REST: 200 with that body, as
 * API.md section 3 specifies one shape for the route), while the previous policy stays in force
 * and new_hash repeats previous_hash. Only a server fault (out of memory) is a gRPC error.
 * The reload reads a small local file on the worker's thread; it does not touch the store.
 */
#include <string.h>

#include "auth/auth.h"
#include "common/config.h"
#include "common/pbstruct.h"
#include "memorypins/v1/admin.pb-c.h"
#include "rpc/services/services.h"

/* {role: {resource: [actions]}} nests three deep. */
#define MATRIX_DEPTH 8

static Google__Protobuf__Timestamp *timestamp(pins_arena *a, int64_t us)
{
    Google__Protobuf__Timestamp *ts = pins_arena_alloc(a, sizeof(*ts));
    if (ts == NULL)
        return NULL;
    google__protobuf__timestamp__init(ts);
    int64_t secs = us >= 0 ? us / 1000000 : (us - 999999) / 1000000;
    ts->seconds = secs;
    ts->nanos = (int32_t)((us - secs * 1000000) * 1000);
    return ts;
}

void rpc__admin_rbac_info(rpc_call *call)
{
    pins_arena *a = rpc_call_arena(call);
    const pins_config *cfg = rpc_call_config(call);
    auth_policy_view v;
    if (auth_policy_view_get(a, &v) != 0) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    Memorypins__V1__GetRbacInfoResponse resp = MEMORYPINS__V1__GET_RBAC_INFO_RESPONSE__INIT;
    resp.version = (char *)v.version;
    resp.hash = v.hash;
    resp.loaded_at = timestamp(a, v.loaded_us);
    resp.n_roles = v.nroles;
    resp.roles = (char **)v.roles;
    resp.n_resources = v.nresources;
    resp.resources = (char **)v.resources;
    resp.enforce_mode = cfg->rbac_enforce;
    resp.fail_open = cfg->rbac_fail_open;
    if (resp.loaded_at == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    rpc_call_reply(call, &resp.base);
}

void rpc__admin_rbac_reload(rpc_call *call)
{
    auth_reload_result r;
    int rv = auth_policy_reload(rpc_call_config(call), &r);
    if (rv == PINS_ENOMEM) {
        rpc_call_fail(call, rv, "policy reload failed: %s", r.message);
        return;
    }
    Memorypins__V1__ReloadRbacPolicyResponse resp =
        MEMORYPINS__V1__RELOAD_RBAC_POLICY_RESPONSE__INIT;
    resp.success = r.success;
    resp.message = r.message;
    resp.previous_hash = r.previous_hash;
    resp.new_hash = r.new_hash;
    resp.timestamp = timestamp(rpc_call_arena(call), r.at_us);
    if (resp.timestamp == NULL) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    rpc_call_reply(call, &resp.base);
}

void rpc__admin_rbac_matrix(rpc_call *call)
{
    pins_arena *a = rpc_call_arena(call);
    auth_policy_view v;
    Google__Protobuf__Struct *matrix = NULL;
    if (auth_policy_view_get(a, &v) != 0) {
        rpc_call_fail(call, PINS_ENOMEM, NULL);
        return;
    }
    int rv = pbstruct_from_json(a, v.matrix_json, v.matrix_len, MATRIX_DEPTH, &matrix);
    if (rv != 0) {
        rpc_call_fail(call, rv == PINS_ENOMEM ? rv : PINS_EINTERNAL,
                      "cannot represent the rbac matrix: %s",
                      pbstruct_reason_text(pbstruct_last_reason()));
        return;
    }
    Memorypins__V1__GetRbacMatrixResponse resp = MEMORYPINS__V1__GET_RBAC_MATRIX_RESPONSE__INIT;
    resp.version = (char *)v.version;
    resp.hash = v.hash;
    resp.matrix = matrix;
    rpc_call_reply(call, &resp.base);
}
