#!/usr/bin/env bash
# PgBouncer in a container: writes the userlist from the environment, then runs pgbouncer in the
# foreground. POSTGRES_PASSWORD never reaches a command line or the image: the userlist is written
# by the shell's printf builtin into the container's /tmp with mode 0600.
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
    echo "usage: pgbouncer-entrypoint [pgbouncer.ini]  (env: POSTGRES_USER, POSTGRES_PASSWORD)"
    exit 0
fi
ini=${1:-/etc/pgbouncer/pgbouncer.ini}
user=${POSTGRES_USER:-nova}
[ -n "${POSTGRES_PASSWORD:-}" ] || { echo "pgbouncer-entrypoint: POSTGRES_PASSWORD is not set" >&2; exit 1; }
umask 077
printf '"%s" "%s"\n' "$user" "$POSTGRES_PASSWORD" > /tmp/userlist.txt
exec pgbouncer "$ini"
