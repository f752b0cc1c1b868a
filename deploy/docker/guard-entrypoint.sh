#!/usr/bin/env bash
# The Prometheus reload guard in a container: renders ops/nginx's template at every start (a fresh
# salt; PROM_RELOAD_TOKEN comes from the environment only), checks the result with `nginx -t` and
# runs nginx in the foreground as the container's user.
set -euo pipefail
usage() {
    cat <<USAGE
usage: guard-entrypoint [--check]
  --check   render and check the configuration (nginx -t), then exit instead of serving
environment:
  PROM_RELOAD_TOKEN  the bearer token POST /-/reload needs (required)
  GUARD_LISTEN       where nginx listens (default 0.0.0.0:9090)
  GUARD_UPSTREAM     Prometheus (default prometheus:9091, started with --web.enable-lifecycle)
  GUARD_DIR          render_guard.sh and its template (default /opt/guard)
  GUARD_PREFIX       nginx's runtime directory (default /tmp/guard)
USAGE
}
check=0
case "${1:-}" in
    "") ;;
    --check) check=1 ;;
    -h | --help) usage; exit 0 ;;
    *) usage >&2; echo "guard-entrypoint: unknown argument: $1" >&2; exit 2 ;;
esac
dir=${GUARD_DIR:-/opt/guard}
prefix=${GUARD_PREFIX:-/tmp/guard}
"$dir/render_guard.sh" --template "$dir/prometheus_guard.conf.template" \
    --listen "${GUARD_LISTEN:-0.0.0.0:9090}" --upstream "${GUARD_UPSTREAM:-prometheus:9091}" \
    --prefix "$prefix" --out "$prefix/nginx.conf"
mkdir -p "$prefix/logs"
nginx -t -q -p "$prefix/" -c "$prefix/nginx.conf" -e "$prefix/logs/error.log"
if [ "$check" = 1 ]; then
    echo "guard-entrypoint: $prefix/nginx.conf is valid"
    exit 0
fi
exec nginx -g 'daemon off;' -p "$prefix/" -c "$prefix/nginx.conf" -e "$prefix/logs/error.log"
