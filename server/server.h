/* server/server.h: the pinsd server: listeners, worker threads, connections, dispatch.
 *
 * pins_server_new() binds every listener (PINS_LISTEN) once per worker with SO_REUSEPORT, so a bad
 * address fails before anything runs. pins_server_run() starts one thread with its own libevent
 * loop and store session per worker and blocks until pins_server_stop() (async-signal safe: call it
 * from a signal handler or another thread), then drains: GOAWAY on every connection, listeners
 * closed, in-flight calls finished within drain_seconds, then every connection is closed.
 */
#ifndef PINS_SERVER_SERVER_H
#define PINS_SERVER_SERVER_H

#include "common/config.h"

struct store;
typedef struct pins_server pins_server;

/* A new server for cfg (borrowed for the server's life) on store (borrowed). Binds listeners and
 * loads TLS material. On failure writes one line into err. Returns 0, PINS_EINVALID_ARGUMENT
 * (bad address, TLS files), PINS_EUNAVAILABLE (bind failed), PINS_ENOMEM. */
int pins_server_new(const pins_config *cfg, struct store *st, pins_server **pserver, char *err,
                    size_t errlen);
/* Runs the workers until pins_server_stop(); returns 0 after a clean drain. */
int pins_server_run(pins_server *s);
/* Asks the server to drain and stop. Async-signal safe. */
void pins_server_stop(pins_server *s);
/* Asks the server to reload the RBAC policy (SIGHUP): the main thread, which waits in
 * pins_server_run(), does it (auth_policy_reload). Async-signal safe. */
void pins_server_reload(pins_server *s);
/* Frees the server (after pins_server_run returned). */
void pins_server_free(pins_server *s);

#endif
