/* rpc/services/services.h: the handlers of memorypins.v1.MemoryPins and memorypins.v1.Admin.
 * Each is an rpc_handler_cb (rpc/call.h) named in the method table (rpc/methods.c).
 */
#ifndef PINS_RPC_SERVICES_SERVICES_H
#define PINS_RPC_SERVICES_SERVICES_H

#include "rpc/call.h"

void rpc__pins_upsert(rpc_call *call);
void rpc__pins_get(rpc_call *call);
void rpc__pins_list(rpc_call *call);
void rpc__pins_delete(rpc_call *call);
void rpc__pins_cleanup(rpc_call *call);
void rpc__pins_watch(rpc_call *call);
/* Admin: the RBAC policy (rpc/services/admin.c). */
void rpc__admin_rbac_info(rpc_call *call);
void rpc__admin_rbac_reload(rpc_call *call);
void rpc__admin_rbac_matrix(rpc_call *call);
/* Admin: the audits and the status (rpc/services/admin.c). */
void rpc__admin_rbac_audit_list(rpc_call *call);
void rpc__admin_rbac_audit_cleanup(rpc_call *call);
void rpc__admin_memory_audit_list(rpc_call *call);
void rpc__admin_status(rpc_call *call);
/* Answers UNIMPLEMENTED: for methods of the contract whose capability is not served yet. */
void rpc__unimplemented(rpc_call *call);

#endif
