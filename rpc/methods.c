/* rpc/methods.c: the method table, one row per RPC, filled from the protobuf-c service
 * descriptors (input and output types) at first use. */
#include "rpc/rpc_int.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"
#include "grpc/reflection/v1alpha/reflection.pb-c.h"
#include "memorypins/v1/admin.pb-c.h"
#include "memorypins/v1/memory_pins.pb-c.h"
#include "rpc/reflection.h"
#include "rpc/services/services.h"

#define PINS    RPC_METHOD_MEMORY_PINS
#define OPEN    RPC_METHOD_UNGUARDED
#define ALL     RPC_METHOD_ALL_TENANTS
#define SSTREAM RPC_METHOD_SERVER_STREAM
#define BIDI    (RPC_METHOD_SERVER_STREAM | RPC_METHOD_CLIENT_STREAM)

struct row {
    const ProtobufCServiceDescriptor *svc;
    const char *name;
    rpc_handler_cb handler;
    const char *resource;
    const char *action;
    const char *op;
    unsigned flags;
};

/* The hot methods come first: lookup is a linear scan. ALL marks the methods whose request names
 * no tenant because they act on every tenant or on what the tenants share (the policy, the RBAC
 * audit as a whole); the reads of the policy and of the process status (GetRbacInfo,
 * GetRbacMatrix, GetStatus) show no tenant's data and are not marked. */
static const struct row rows[] = {
    {&memorypins__v1__memory_pins__descriptor, "GetPin", rpc__pins_get, "memory_pin", "read", "get",
     PINS},
    {&memorypins__v1__memory_pins__descriptor, "UpsertPin", rpc__pins_upsert, "memory_pin", "write",
     "upsert", PINS},
    {&memorypins__v1__memory_pins__descriptor, "ListPins", rpc__pins_list, "memory_pin", "read",
     "list", PINS},
    {&memorypins__v1__memory_pins__descriptor, "DeletePin", rpc__pins_delete, "memory_pin",
     "delete", "delete", PINS},
    {&memorypins__v1__memory_pins__descriptor, "CleanupExpiredPins", rpc__pins_cleanup,
     "memory_pin", "admin", "cleanup", PINS},
    {&memorypins__v1__memory_pins__descriptor, "WatchPins", rpc__pins_watch, "memory_pin", "read",
     NULL, PINS | SSTREAM},
    {&memorypins__v1__admin__descriptor, "GetRbacInfo", rpc__admin_rbac_info, "rbac", "read", NULL,
     0},
    {&memorypins__v1__admin__descriptor, "ReloadRbacPolicy", rpc__admin_rbac_reload, "rbac",
     "reload", NULL, ALL},
    {&memorypins__v1__admin__descriptor, "GetRbacMatrix", rpc__admin_rbac_matrix, "rbac", "read",
     NULL, 0},
    {&memorypins__v1__admin__descriptor, "ListRbacAudit", rpc__admin_rbac_audit_list, "rbac",
     "read", NULL, 0},
    {&memorypins__v1__admin__descriptor, "CleanupRbacAudit", rpc__admin_rbac_audit_cleanup, "rbac",
     "reload", NULL, ALL},
    {&memorypins__v1__admin__descriptor, "ListMemoryAudit", rpc__admin_memory_audit_list,
     "memory_pin", "admin", NULL, 0},
    {&memorypins__v1__admin__descriptor, "GetStatus", rpc__admin_status, "rbac", "read", NULL, 0},
    {&grpc__health__v1__health__descriptor, "Check", rpc__health_check, NULL, NULL, NULL, OPEN},
    {&grpc__health__v1__health__descriptor, "Watch", rpc__health_watch, NULL, NULL, NULL,
     OPEN | SSTREAM},
    {&grpc__reflection__v1__server_reflection__descriptor, "ServerReflectionInfo",
     rpc__reflection_v1_handler, NULL, NULL, NULL, OPEN | BIDI},
    {&grpc__reflection__v1alpha__server_reflection__descriptor, "ServerReflectionInfo",
     rpc__reflection_v1alpha_handler, NULL, NULL, NULL, OPEN | BIDI},
};

#define NROWS (sizeof(rows) / sizeof(rows[0]))

static rpc_method table[NROWS];
static size_t path_len[NROWS];
static pthread_once_t once = PTHREAD_ONCE_INIT;

static void build(void)
{
    for (size_t i = 0; i < NROWS; i++) {
        const struct row *r = &rows[i];
        const ProtobufCMethodDescriptor *md =
            protobuf_c_service_descriptor_get_method_by_name(r->svc, r->name);
        /* The rows name methods of the compiled contract; a miss is a broken build. */
        if (md == NULL)
            abort();
        size_t n = strlen(r->svc->name) + strlen(r->name) + 3;
        char *path = malloc(n);
        if (path == NULL)
            abort();
        snprintf(path, n, "/%s/%s", r->svc->name, r->name);
        table[i] = (rpc_method){
            .path = path,
            .service = r->svc->name,
            .name = r->name,
            .input = md->input,
            .output = md->output,
            .handler = r->handler,
            .resource = r->resource,
            .action = r->action,
            .op = r->op,
            .flags = r->flags,
        };
        path_len[i] = n - 1;
    }
}

const rpc_method *rpc_method_table(size_t *pn)
{
    pthread_once(&once, build);
    *pn = NROWS;
    return table;
}

const rpc_method *rpc_method_find(const char *path, size_t len)
{
    pthread_once(&once, build);
    for (size_t i = 0; i < NROWS; i++) {
        if (path_len[i] == len && memcmp(table[i].path, path, len) == 0)
            return &table[i];
    }
    return NULL;
}
