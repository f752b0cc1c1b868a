#!/usr/bin/env bash
# PostgreSQL in a container, honouring the official image's environment: on the first start (an
# empty PGDATA) initdb with POSTGRES_USER as the superuser and POSTGRES_PASSWORD as its password
# (scram-sha-256), then POSTGRES_DB; every start runs `postgres` in the foreground, listening on
# all addresses with password authentication for TCP. The password goes to initdb through a file
# in the container's /tmp (mode 0600, removed right after), never a command line.
set -euo pipefail
usage() {
    cat <<USAGE
usage: postgres-entrypoint [postgres ARGS... | COMMAND...]
environment: POSTGRES_PASSWORD (required on the first start), POSTGRES_USER (default postgres),
             POSTGRES_DB (default POSTGRES_USER), PGDATA (default /var/lib/postgresql/data)
USAGE
}
case "${1:-}" in
    -h | --help) usage; exit 0 ;;
esac
if [ "$#" -eq 0 ]; then
    set -- postgres
fi
if [ "$1" != postgres ]; then
    exec "$@"
fi
shift
user=${POSTGRES_USER:-postgres}
db=${POSTGRES_DB:-$user}
: "${PGDATA:=/var/lib/postgresql/data}"
export PGDATA
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    if [ -z "${POSTGRES_PASSWORD:-}" ]; then
        echo "postgres-entrypoint: POSTGRES_PASSWORD is not set (needed to create the database)" >&2
        exit 1
    fi
    umask 077
    pwfile=$(mktemp /tmp/pwfile.XXXXXX)
    trap 'rm -f "$pwfile"' EXIT
    printf '%s\n' "$POSTGRES_PASSWORD" > "$pwfile"
    initdb --username="$user" --pwfile="$pwfile" --auth-local=trust --auth-host=scram-sha-256 \
        --encoding=UTF8 --locale=C.UTF-8 -D "$PGDATA" > /tmp/initdb.log
    rm -f "$pwfile"
    trap - EXIT
    printf 'host all all all scram-sha-256\n' >> "$PGDATA/pg_hba.conf"
    # Create the database on a socket-only server, then stop it.
    pg_ctl -D "$PGDATA" -w -t 60 -o "-c listen_addresses=''" -l /tmp/init-server.log start
    if [ "$db" != postgres ]; then
        psql -v ON_ERROR_STOP=1 -q -U "$user" -d postgres -c "CREATE DATABASE \"$db\"" >/dev/null
    fi
    pg_ctl -D "$PGDATA" -w -t 60 -m fast stop
    echo "postgres-entrypoint: initialized $PGDATA (database $db, owner $user)"
fi
exec postgres -c listen_addresses='*' "$@"
