#!/usr/bin/env bash
# Renders ops/nginx/prometheus_guard.conf.template into an nginx configuration for the Prometheus
# reload guard (README.md beside this file). PROM_RELOAD_TOKEN comes from the environment only;
# the rendered file holds a per-install random salt and MD5(salt || token), never the token.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
template="$here/prometheus_guard.conf.template"
listen=127.0.0.1:9090
upstream=127.0.0.1:9091
prefix=/var/lib/prometheus-guard
out=
user=
min_len=24

usage() {
    cat <<USAGE
Usage: PROM_RELOAD_TOKEN=... $0 [options]

Renders the nginx reload guard for Prometheus (ops/nginx/README.md). The token is read from the
PROM_RELOAD_TOKEN environment variable only (at least $min_len characters of A-Z a-z 0-9 . _ ~ + / -,
optionally ending in =); a fresh random salt is drawn on every run, so re-render after changing it.

Options:
  --listen ADDR      where the guard listens (default $listen)
  --upstream ADDR    Prometheus's loopback address, started with --web.enable-lifecycle
                     (default $upstream)
  --prefix DIR       runtime directory for the pid file, logs/ and tmp/ (default $prefix);
                     created if missing
  --out FILE         the configuration to write, mode 0600 (default PREFIX/nginx.conf)
  --user USER[:GROUP]  the workers' user when nginx starts as root (e.g. www-data)
  --template FILE    the template (default $template)
  -h, --help         this text

Then: nginx -p PREFIX/ -c FILE -e PREFIX/logs/error.log   (add -t to check it first)
USAGE
}

die() { echo "render_guard.sh: $*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        --listen) listen=${2:?--listen needs a value}; shift 2 ;;
        --upstream) upstream=${2:?--upstream needs a value}; shift 2 ;;
        --prefix) prefix=${2:?--prefix needs a value}; shift 2 ;;
        --out) out=${2:?--out needs a value}; shift 2 ;;
        --user) user=${2:?--user needs a value}; shift 2 ;;
        --template) template=${2:?--template needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        *) usage >&2; die "unknown argument: $1" ;;
    esac
done

token=${PROM_RELOAD_TOKEN-}
[ -n "$token" ] || die "PROM_RELOAD_TOKEN is empty or unset (export it; it is never taken from the command line)"
[ "${#token}" -ge "$min_len" ] || die "PROM_RELOAD_TOKEN is too short (${#token} characters, at least $min_len; e.g. openssl rand -base64 32)"
[[ "$token" =~ ^[A-Za-z0-9._~+/-]+=*$ ]] || die "PROM_RELOAD_TOKEN has characters a bearer token cannot carry (allowed: A-Z a-z 0-9 . _ ~ + / - and trailing =)"
command -v openssl >/dev/null || die "openssl is needed for the salt and the digest"
[ -r "$template" ] || die "template not readable: $template"

# Values land in the configuration verbatim: keep them to what nginx parses as one plain token.
addr_re='^[][A-Za-z0-9.:_-]+$'
[[ "$listen" =~ $addr_re ]] || die "--listen: not an address: $listen"
[[ "$upstream" =~ $addr_re ]] || die "--upstream: not an address: $upstream"
[[ "$prefix" =~ ^/[A-Za-z0-9._/+-]*$ ]] || die "--prefix: an absolute path of plain characters is needed: $prefix"
prefix=${prefix%/}
[ -n "$prefix" ] || die "--prefix: / is not a runtime directory"
user_line="# (no user directive: nginx does not start as root)"
if [ -n "$user" ]; then
    [[ "$user" =~ ^[a-z_][a-z0-9_-]*(:[a-z_][a-z0-9_-]*)?$ ]] || die "--user: not USER[:GROUP]: $user"
    u=${user%%:*}
    g=${user#*:}
    [ "$g" != "$user" ] || g=$(id -gn "$u" 2>/dev/null) || die "--user: no such user: $u"
    user_line="user $u $g;"
fi
[ -n "$out" ] || out="$prefix/nginx.conf"

b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
salt=$(openssl rand 32 | b64url)
# printf is a builtin: the token goes through a pipe, never through an argv.
digest=$(printf '%s%s' "$salt" "$token" | openssl dgst -md5 -binary | b64url)
if [ "${#salt}" -ne 43 ] || [ "${#digest}" -ne 22 ]; then
    die "openssl gave an unexpected salt or digest"
fi

mkdir -p "$prefix/logs" "$prefix/tmp"
chmod 0711 "$prefix" "$prefix/tmp"   # workers (--user) reach tmp/; logs are opened by the master
umask 077
tmp=$(mktemp "$out.XXXXXX")
trap 'rm -f "$tmp"' EXIT
sed -e "s|@USER_LINE@|$user_line|" -e "s|@PREFIX@|$prefix|g" -e "s|@LISTEN@|$listen|g" \
    -e "s|@UPSTREAM@|$upstream|g" -e "s|@SALT@|$salt|g" -e "s|@DIGEST@|$digest|g" \
    "$template" >"$tmp"
if grep -q '@[A-Z_]*@' "$tmp"; then
    die "unfilled placeholder in the template: $(grep -o '@[A-Z_]*@' "$tmp" | sort -u | tr '\n' ' ')"
fi
mv -f "$tmp" "$out"
trap - EXIT
echo "render_guard.sh: wrote $out (salted digest only); run: nginx -p $prefix/ -c $out -e $prefix/logs/error.log" >&2
