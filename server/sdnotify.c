/* server/sdnotify.c: the sd_notify(3) datagram, without libsystemd.
 *
 * The address is parsed once, before any thread starts, and only read afterwards; each
 * notification opens its own socket, so threads need no lock. The sender's credentials are those
 * of the process, so NotifyAccess=main accepts datagrams from any of pinsd's threads.
 *
 * Notifications are best-effort: one non-blocking sendto() (MSG_DONTWAIT), never repeated. A
 * manager that does not read its socket (a full receive queue: EAGAIN) loses the datagram, but
 * never holds pinsd up, neither at start nor during the drain after SIGTERM.
 */
#include "server/sdnotify.h"

#include <errno.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/error.h"
#include "observability/log.h"

static struct sockaddr_un notify_addr;
static socklen_t notify_addrlen; /* 0: notifications off */
static atomic_bool dropped_logged;

void server_sdnotify_init(void)
{
    notify_addrlen = 0;
    atomic_store(&dropped_logged, false);
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0')
        return;
    size_t len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len < 2) {
        pins_log_warn("NOTIFY_SOCKET is neither an absolute path nor an abstract socket name "
                      "('@' and a name); no readiness notifications",
                      NULL);
        return;
    }
    /* A path needs its terminating NUL inside sun_path; an abstract name has none, so '@' plus
     * sizeof(sun_path) - 1 bytes fill sun_path exactly (its leading NUL stands for the '@'). */
    size_t max = path[0] == '@' ? sizeof(notify_addr.sun_path) : sizeof(notify_addr.sun_path) - 1;
    if (len > max) {
        char lim[32];
        snprintf(lim, sizeof(lim), "%zu", max);
        pins_log_warn("NOTIFY_SOCKET is too long for a socket address; no readiness notifications",
                      "max_bytes", lim, NULL);
        return;
    }
    memset(&notify_addr, 0, sizeof(notify_addr));
    notify_addr.sun_family = AF_UNIX;
    memcpy(notify_addr.sun_path, path, len);
    if (path[0] == '@') {
        /* Abstract namespace: a leading NUL, and the length counts the name's bytes only. */
        notify_addr.sun_path[0] = '\0';
        notify_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len);
    } else {
        notify_addrlen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + len + 1);
    }
}

bool server_sdnotify_enabled(void)
{
    return notify_addrlen != 0;
}

int server_sdnotify(const char *state)
{
    if (notify_addrlen == 0 || state == NULL)
        return 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0)
        return PINS_EUNAVAILABLE;
    /* One attempt: no loop on EINTR or EAGAIN, so a signal or a full queue never keeps pinsd in
     * here. */
    ssize_t n = sendto(fd, state, strlen(state), MSG_DONTWAIT | MSG_NOSIGNAL,
                       (const struct sockaddr *)&notify_addr, notify_addrlen);
    int e = errno;
    close(fd);
    if (n >= 0)
        return 0;
    if ((e == EAGAIN || e == EWOULDBLOCK) && !atomic_exchange(&dropped_logged, true))
        pins_log_debug("sd_notify: the NOTIFY_SOCKET queue is full; notification dropped", NULL);
    return PINS_EUNAVAILABLE;
}
