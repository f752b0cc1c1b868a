#!/usr/bin/env bash
# Redis in a container, like the official image: the command is redis-server's command line, and
# protected mode is off (the official image builds it so) because other containers connect over
# the container network without a password; Redis is reachable inside that network only.
set -euo pipefail
if [ "${1:-}" = "--help" ] || [ "${1:-}" = "-h" ]; then
    echo "usage: redis-entrypoint [redis-server ARGS... | COMMAND...]"
    exit 0
fi
if [ "$#" -eq 0 ]; then
    set -- redis-server
fi
if [ "$1" = redis-server ]; then
    shift
    set -- redis-server --protected-mode no --bind '* -::*' "$@"
fi
exec "$@"
