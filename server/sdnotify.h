/* server/sdnotify.h: readiness and status for a service manager (the sd_notify(3) protocol).
 *
 * Under systemd with Type=notify, $NOTIFY_SOCKET names a datagram socket: an absolute path, or an
 * abstract socket when it starts with '@'. Each notification is one datagram of newline-separated
 * KEY=VALUE lines (READY=1, STOPPING=1, STATUS=...). Without $NOTIFY_SOCKET nothing is sent. No
 * libsystemd: the protocol is one sendto().
 *
 * pinsd sends READY=1 once the store is open and every listener is bound and listening with its
 * worker running, STOPPING=1 when the drain starts, and STATUS= lines for `systemctl status`.
 */
#ifndef PINS_SERVER_SDNOTIFY_H
#define PINS_SERVER_SDNOTIFY_H

#include <stdbool.h>

/* Reads $NOTIFY_SOCKET once (call it from main before any thread starts, after the log is set
 * up). An unset or empty variable disables notifications. A value that is neither an absolute path
 * nor '@' followed by a name, or one too long for a socket address (a path: sizeof(sun_path) - 1
 * bytes; '@' and an abstract name: sizeof(sun_path) bytes), disables them too: the reason is
 * logged here (warn), once. */
void server_sdnotify_init(void);

/* Sends state (borrowed; e.g. "READY=1\nSTATUS=serving") as one datagram, best-effort: one
 * non-blocking sendto(), never repeated, so it never blocks (a full queue drops the datagram and
 * logs that once at debug). Thread safe. Returns 0 (also when notifications are disabled),
 * PINS_EUNAVAILABLE when the socket cannot be created or the datagram is refused or dropped. */
int server_sdnotify(const char *state);

/* true when $NOTIFY_SOCKET named a usable address at server_sdnotify_init(). */
bool server_sdnotify_enabled(void);

#endif
