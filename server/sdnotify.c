/* server/sdnotify.c: the sd_notify(3) datagram, without libsystemd.
 *
 * The address is parsed once, before any thread starts, and only read afterwards; each
 * notification opens its own socket, so threads need no lock. The sender's credentials are those
 * of the process, so NotifyAccess=main accepts datagrams from any of pinsd's threads.
 */
#include "server/sdnotify.h"

#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "common/error.h"

static struct sockaddr_un notify_addr;
static socklen_t notify_addrlen; /* 0: notifications off */

int server_sdnotify_init(void)
{
    notify_addrlen = 0;
    const char *path = getenv("NOTIFY_SOCKET");
    if (path == NULL || path[0] == '\0')
        return 0;
    size_t len = strlen(path);
    if ((path[0] != '/' && path[0] != '@') || len < 2 || len > sizeof(notify_addr.sun_path) - 1)
        return PINS_EINVALID_ARGUMENT;
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
    return 0;
}

bool server_sdnotify_enabled(void)
{
    return notify_addrlen != 0;
}

int server_sdnotify(const char *state)
{
    if (notify_addrlen == 0 || state == NULL)
        return 0;
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return PINS_EUNAVAILABLE;
    int rv = 0;
    ssize_t n;
    do {
        n = sendto(fd, state, strlen(state), MSG_NOSIGNAL, (const struct sockaddr *)&notify_addr,
                   notify_addrlen);
    } while (n < 0 && errno == EINTR);
    if (n < 0)
        rv = PINS_EUNAVAILABLE;
    close(fd);
    return rv;
}
