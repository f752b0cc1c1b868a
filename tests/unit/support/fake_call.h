/* tests/unit/support/fake_call.h: a fake transport and a fake worker for rpc_call (STYLE 22).
 *
 * A fake_env is one worker of a server without sockets: a pins_config from pins_config_defaults()
 * that tests may change at any time (it is read when calls run), a real SQLite store opened in a
 * fresh directory under /tmp (removed by fake_env_free), one store session, and an event_base on
 * which the dispatcher arms deadline timers. fake_env_run() runs that loop.
 *
 * A fake_call is one stream of the fake transport. fake_call_new() builds the rpc_call the way
 * transport/conn.c does (headers copied into the call's arena, x-request-id, grpc-timeout, the
 * request packed and unpacked into the arena), fake_call_dispatch() hands it to rpc_dispatch().
 * The fake's send and finish functions capture what a client would see: every response message (the
 * packed bytes are copied), the final status, message, field at fault, request id and metadata.
 * The captures belong to the fake_call and outlive the rpc_call.
 *
 * Ownership. The fake holds the transport's reference to the rpc_call. Like a stream that closes
 * once its status is sent, it lets go (rpc_call_detach) as soon as the call is finished and
 * control is back in the test: at the end of fake_call_dispatch() and of fake_env_run(). A test
 * can let go earlier with fake_call_detach() (the client went away). fake_call_free() lets go of
 * a call still held (rpc_call_abandon when it was never dispatched) and frees the captures. So
 * every call's arena is freed once its handler is done, and a leak under ASan is a real one.
 *
 * Everything runs on the test's thread.
 */
#ifndef PINS_TESTS_FAKE_CALL_H
#define PINS_TESTS_FAKE_CALL_H

#include <protobuf-c/protobuf-c.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "common/config.h"
#include "rpc/rpc_int.h"
#include "store/store.h"

typedef struct fake_env fake_env;
typedef struct fake_call fake_call;

/* ---- the fake worker ------------------------------------------------------------------------ */

/* A new worker with default configuration and an empty store; fails the test on error. */
fake_env *fake_env_new(void);
/* Lets go of every fake_call still alive, closes the store, removes its directory. */
void fake_env_free(fake_env *env);
/* The configuration the calls see (mutable; borrowed). */
pins_config *fake_env_config(fake_env *env);
rpc_worker *fake_env_worker(fake_env *env);
struct event_base *fake_env_base(fake_env *env);
store_session *fake_env_store(fake_env *env);
/* The embedded store's data directory (pins.db lives there). */
const char *fake_env_data_dir(const fake_env *env);
/* Runs the worker's loop for ms milliseconds, then lets go of every finished call. */
void fake_env_run(fake_env *env, int ms);
/* Runs the loop until fc is finished, for at most max_ms (a bound for a stuck test, never a
 * timing assumption: a loaded machine only makes it take longer). Returns whether fc finished. */
bool fake_env_run_until_finished(fake_env *env, fake_call *fc, int max_ms);
/* With on true, released call arenas go back to the worker's pool (as in the server), so that
 * fake_env_pooled_arenas() counts them; with false (the default) they are freed at once, so that
 * ASan sees every use after free. */
void fake_env_recycle_arenas(fake_env *env, bool on);
/* Arenas in the worker's pool. */
size_t fake_env_pooled_arenas(const fake_env *env);
/* A new malloc'd text describing the store: the number of memory audit rows, then every pin of
 * tenant (expired ones included) with its id, version, updated_at and value. Two equal snapshots
 * mean nothing was written in between. The caller frees it. */
char *fake_env_snapshot(fake_env *env, const char *tenant);
/* Number of pins of tenant, expired ones included. */
int64_t fake_env_pin_count(fake_env *env, const char *tenant);

/* ---- the fake transport --------------------------------------------------------------------- */

/* A new call of the method at path with request (borrowed: packed, then unpacked into the call's
 * arena; NULL sends an empty message) and headers ({name, value, ..., NULL}, lower-case names;
 * NULL for none). Returns NULL when path names no method or the transport would reject the call
 * before dispatch (malformed grpc-timeout). */
fake_call *fake_call_new(fake_env *env, const char *path, const ProtobufCMessage *request,
                         const char *const *headers);
/* The same with the request as wire bytes (borrowed), for messages a C struct cannot express
 * (a string with an embedded NUL). Returns NULL also when the transport would reject the bytes
 * before dispatch (malformed protobuf). */
fake_call *fake_call_new_wire(fake_env *env, const char *path, const uint8_t *wire, size_t len,
                              const char *const *headers);
/* The same for a method row of the test's own (borrowed; must outlive the call). */
fake_call *fake_call_new_method(fake_env *env, const rpc_method *method,
                                const ProtobufCMessage *request, const char *const *headers);
/* Sets the call's absolute monotonic deadline (pins_time_mono_ns() clock) before dispatch. */
void fake_call_set_deadline_ns(fake_call *fc, int64_t deadline_ns);
/* Makes every further send of the transport fail with err (0: succeed again). */
void fake_call_set_send_error(fake_call *fc, int err);
/* Dispatches the call; lets go of it when it finished meanwhile. */
void fake_call_dispatch(fake_call *fc);
/* new + dispatch in one; fails the test when path is unknown. */
fake_call *fake_call_run(fake_env *env, const char *path, const ProtobufCMessage *request,
                         const char *const *headers);
/* The transport lets go of the call now (the client went away when it is not finished). */
void fake_call_detach(fake_call *fc);
/* Lets go of the call if still held and frees the captures. NULL is allowed. */
void fake_call_free(fake_call *fc);

/* The rpc_call while the transport holds it, else NULL. */
rpc_call *fake_call_rpc(const fake_call *fc);
/* True once the transport was told the final status. */
bool fake_call_finished(const fake_call *fc);
/* How many times the transport's finish function ran (a correct call: at most once). */
int fake_call_finish_count(const fake_call *fc);
/* How many of those ran while the transport was letting go (rpc_call_detach). */
int fake_call_finish_during_detach(const fake_call *fc);
/* The PINS_E* code of the final status (0: OK). */
int fake_call_err(const fake_call *fc);
/* The gRPC status code of the final status. */
int fake_call_grpc_code(const fake_call *fc);
/* The client-visible message of the final status, or NULL. */
const char *fake_call_message(const fake_call *fc);
/* The request id of the call as it was when the status was sent, or NULL. */
const char *fake_call_request_id(const fake_call *fc);
/* The request field at fault (rpc_call_fail_field, or the decoder) and its error type, or NULL. */
const char *fake_call_field(const fake_call *fc);
const char *fake_call_field_type(const fake_call *fc);
/* Response messages sent so far. */
size_t fake_call_nsent(const fake_call *fc);
/* Message i (in sending order), unpacked with the method's output descriptor into memory owned
 * by fc; NULL when there is no such message. */
const ProtobufCMessage *fake_call_response_at(fake_call *fc, size_t i);
/* The last message sent, or NULL. */
const ProtobufCMessage *fake_call_response(fake_call *fc);
/* Response metadata the call carried when its status was sent: the value of the first entry
 * named name with that trailer flag, or NULL. */
const char *fake_call_metadata(const fake_call *fc, const char *name, bool trailer);
/* Number of response metadata entries captured. */
size_t fake_call_nmetadata(const fake_call *fc);

#endif
