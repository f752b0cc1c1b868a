#!/usr/bin/env bash
# The M7 staging topology on loopback, natively from Debian packages: PostgreSQL 15, PgBouncer
# (transaction pooling), Redis, Prometheus behind the nginx reload guard, the schema migration and
# two pinsd replicas. Every process runs detached (its own session), its PID in DIR/run and its log
# in DIR/logs; every wait is bounded. deploy/local/README.md describes it; --help lists everything.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=${PINS_ROOT:-$(cd "$here/../.." && pwd)}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}
PSQL_BIN=${PSQL_BIN:-/usr/bin/psql}
REDIS_BIN=${REDIS_BIN:-/usr/bin/redis-server}
REDIS_CLI=${REDIS_CLI:-/usr/bin/redis-cli}
PROMETHEUS_BIN=${PROMETHEUS_BIN:-/usr/bin/prometheus}
PROMTOOL_BIN=${PROMTOOL_BIN:-/usr/bin/promtool}
NGINX_BIN=${NGINX_BIN:-/usr/sbin/nginx}

SERVICES="postgres pgbouncer redis prometheus guard pinsd1 pinsd2"
# pinsd settings an operator may pass to `up`, `start pinsd*` and `restart pinsd*`
PINSD_SETTINGS="RBAC_ENFORCE RBAC_FAIL_OPEN MEMORY_PINS_ENABLED CHAOS_ALLOWED RATE_LIMIT_RPM RATE_LIMIT_BURST BREAKER_ERRORS_PER_MIN BREAKER_OPEN_SECONDS DB_POOL_SIZE LOG_LEVEL PINS_SWEEP_INTERVAL_SECONDS"

usage() {
    cat <<USAGE
Usage: deploy/local/stack.sh [--dir DIR] COMMAND

Runs the M7 staging topology on 127.0.0.1 from Debian packages (deploy/local/README.md).

Commands:
  up                 start the whole stack: PostgreSQL 15 (role nova/novapass, database nova_aos),
                     PgBouncer (pool_mode transaction), Redis (no persistence), the migration
                     (pinsctl migrate upgrade head, directly against PostgreSQL), pinsd1 and pinsd2
                     (through PgBouncer, the stack's Redis), Prometheus (job nova-backend scraping
                     both replicas every 5 s, lifecycle API on) and the nginx reload guard in front
                     of it; writes DIR/stack.env. Fails (exit 1, stopping what it started) when a
                     port is taken or anything does not come up within its bound; refuses when DIR
                     already has a running stack.
  down [--purge]     stop everything by PID (TERM or INT, bounded wait, then KILL); safe when
                     things are already dead; --purge then removes DIR (only a DIR with the
                     marker .pins-stack holding nothing but what stack.sh creates)
  status             one line per service: NAME PID PORT up|down; exit 0 all up, 3 any down
  stop SERVICE       stop one service by PID
  start SERVICE      start a stopped service again (same ports, same data) and wait until it serves
  restart SERVICE    stop + start; pinsd restarts rolling (pinsd1, then pinsd2, each waits for /ready)
  env                print DIR/stack.env (e.g. \`. <(deploy/local/stack.sh env)\`)
  SERVICE: postgres pgbouncer redis prometheus guard pinsd1 pinsd2, or pinsd (both replicas)

Options:
  --dir DIR          the stack's directory (default \$PINS_STACK_DIR, else
                     \${XDG_RUNTIME_DIR:-/tmp}/pins-stack-<uid>); created (mode 0700, 0711 as
                     root) if missing. Every command refuses a DIR, DIR/run or a file it reads
                     that is not owned by the caller or is group/other-writable, or a symlink;
                     up refuses an existing non-empty DIR without the stack's marker .pins-stack
  -h, --help         this text

Environment:
  PINS_STACK_DIR     default for --dir
  PINS_STACK_PORTS   runbook (default): the ports below; free: a free loopback port for each
  PINS_STACK_PORT_<SERVICE>  one port instead (SERVICE: PINSD1 PINSD1_GRPC PINSD2 PINSD2_GRPC
                     POSTGRES PGBOUNCER REDIS PROMETHEUS GUARD)
  PINSD_BIN, PINSCTL_BIN   pinsd and pinsctl (default \$PINS_ROOT/build-release/pinsd, .../pinsctl,
                     where tools/run.sh builds); PINS_ROOT defaults to this checkout
  PINS_STACK_PG_MAX_CONNECTIONS  PostgreSQL max_connections (default 100, 10..10000)
  PINS_STACK_PGB_POOL_SIZE       PgBouncer default_pool_size (default 20, 1..10000)
  MACHINE_SECRET_TOKEN, JWT_SECRET, PROM_RELOAD_TOKEN, ADMIN_JWT
                     taken from the environment of \`up\` when set, else generated (ADMIN_JWT: HS256
                     with JWT_SECRET, sub ops-admin, roles [admin], expires in 24 h)
  pinsd settings, read by up, start pinsd* and restart pinsd* and written back to DIR/pinsd.env
  (so they stay in force across later restarts):
    $PINSD_SETTINGS
    defaults: CHAOS_ALLOWED=true (a staging stand-in), RBAC_ENFORCE=false; always PINS_WORKERS=1,
    LOG_FORMAT=json
  PG_BIN, PGBOUNCER_BIN, PSQL_BIN, REDIS_BIN, REDIS_CLI, PROMETHEUS_BIN, PROMTOOL_BIN, NGINX_BIN
                     the Debian packages' binaries (defaults under /usr)

Ports (runbook / free):
  pinsd1    8000 (+ gRPC-only listener 50051)   pinsd2   8001 (+ 50052)
  postgres  5433    pgbouncer 6432    redis 6379
  prometheus 9091 (its own, lifecycle API on)   guard (nginx reload guard) 9090 = \$PROM

Files: DIR/stack.env (mode 0600; \`. DIR/stack.env\` exports PINSD, DATABASE_URL, REDIS_URL, PROM,
  the secrets, ...), DIR/pinsd.env, DIR/ports.env, DIR/run/SERVICE.pid, DIR/logs/SERVICE.log (the
  guard's access and error logs in DIR/guard/logs; DIR/logs/migrate.log; DIR/logs/stack.log: every
  process started and stopped, with its PID), data in DIR/postgres, DIR/redis, DIR/prometheus.
As root, PostgreSQL and PgBouncer run as user postgres and the guard's workers as nobody.
Servers start with a clean environment (PATH, HOME, LANG, LC_*, TZ, TMPDIR, and the sanitizers'
ASAN_OPTIONS, UBSAN_OPTIONS, LSAN_OPTIONS for a sanitizer build); pinsd gets DIR/pinsd.env,
the stack's DATABASE_URL, REDIS_URL, PINS_LISTEN, MACHINE_SECRET_TOKEN and JWT_SECRET on top.

Exit status: 0 ok; 1 failure; 2 usage error; 3 (status) some service down.
USAGE
}

die() { echo "stack.sh: $*" >&2; exit 1; }
usage_error() { echo "stack.sh: $*" >&2; echo "Try: $0 --help" >&2; exit 2; }
say() { echo "stack.sh: $*" >&2; }

# The one definition of the default stack directory (scripts/chaos/lib.sh asks this script).
dir=${PINS_STACK_DIR:-${XDG_RUNTIME_DIR:-/tmp}/pins-stack-$(id -u)}
while [ $# -gt 0 ]; do
    case "$1" in
        --dir) [ $# -ge 2 ] || usage_error "--dir needs a value"; dir=$2; shift 2 ;;
        --dir=*) dir=${1#--dir=}; shift ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        -*) usage_error "unknown option: $1" ;;
        *) break ;;
    esac
done
[ $# -ge 1 ] || usage_error "a command is needed"
cmd=$1
shift
[ -n "$dir" ] || usage_error "--dir is empty"
case "$dir" in /*) ;; *) dir=$(pwd)/$dir ;; esac
dir=${dir%/}
[ -n "$dir" ] || usage_error "--dir / is not a stack directory"

is_root() { [ "$(id -u)" -eq 0 ]; }

for v in PINS_STACK_PG_MAX_CONNECTIONS:10 PINS_STACK_PGB_POOL_SIZE:1; do
    n=${v%:*}
    if [ -n "${!n+x}" ] && { ! [[ "${!n}" =~ ^[0-9]{1,5}$ ]] || [ "$((10#${!n}))" -lt "${v#*:}" ] || [ "$((10#${!n}))" -gt 10000 ]; }; then
        usage_error "$n must be a whole number within ${v#*:}..10000, not: ${!n}"
    fi
done
unset v n

# ---- the stack directory's safety --------------------------------------------------------------
# Nothing is sourced from DIR, and no PID read from DIR/run, unless DIR, DIR/run and the file are
# the caller's own and writable by nobody else: another local user must not be able to plant code
# or PIDs for us (root) to run or kill.

# safe_path PATH WHAT: dies unless PATH (not a symlink) is owned by the caller's uid and is not
# group/other-writable.
safe_path() {
    local p=$1 what=$2 owner mode
    [ ! -L "$p" ] || die "refusing $what $p: it is a symlink"
    owner=$(stat -c %u -- "$p") || die "cannot stat $what $p"
    mode=$(stat -c %a -- "$p")
    [ "$owner" = "$(id -u)" ] || die "refusing $what $p: owned by uid $owner, not by you (uid $(id -u))"
    (((8#$mode & 8#022) == 0)) || die "refusing $what $p: mode $mode is group/other-writable"
}

# safe_parents: every existing ancestor of DIR is owned by root or the caller and, unless sticky
# (/tmp), writable only by its owner, so nobody else can swap DIR for another directory.
safe_parents() {
    local p=$dir owner mode
    while p=${p%/*}; [ -n "$p" ]; do
        [ -e "$p" ] || continue
        p=$(readlink -f -- "$p")
        owner=$(stat -c %u -- "$p") || die "cannot stat $p"
        mode=$(stat -c %a -- "$p")
        if [ "$owner" != 0 ] && [ "$owner" != "$(id -u)" ]; then
            die "refusing $dir: its parent $p is owned by uid $owner"
        fi
        if (((8#$mode & 8#022) != 0 && (8#$mode & 8#1000) == 0)); then
            die "refusing $dir: its parent $p (mode $mode) is writable by others and not sticky"
        fi
    done
}

# check_dir: DIR and DIR/run (when they exist) pass safe_path.
check_dir() {
    safe_parents
    [ -e "$dir" ] || [ -L "$dir" ] || return 0
    [ -d "$dir" ] || [ -L "$dir" ] || die "$dir is not a directory"
    safe_path "$dir" "stack directory"
    if [ -e "$dir/run" ] || [ -L "$dir/run" ]; then safe_path "$dir/run" "PID directory"; fi
}

# source_safe FILE: sources FILE after safe_path.
source_safe() {
    safe_path "$1" file
    # shellcheck disable=SC1090
    . "$1"
}

# Runs a command as the postgres user when root (setpriv execs, so a PID stays the server's own).
as_pg() {
    if is_root; then
        setpriv --reuid=postgres --regid=postgres --init-groups -- "$@"
    else
        "$@"
    fi
}

pg_super() { if is_root; then echo postgres; else id -un; fi; }

# ---- ports -----------------------------------------------------------------------------------

PORT_VARS="PINSD1_PORT PINSD1_GRPC_PORT PINSD2_PORT PINSD2_GRPC_PORT PG_PORT PGBOUNCER_PORT REDIS_PORT PROM_PORT GUARD_PORT"

choose_ports() {
    local mode=${PINS_STACK_PORTS:-runbook} ports
    case "$mode" in
        runbook)
            PINSD1_PORT=8000 PINSD1_GRPC_PORT=50051 PINSD2_PORT=8001 PINSD2_GRPC_PORT=50052
            PG_PORT=5433 PGBOUNCER_PORT=6432 REDIS_PORT=6379 PROM_PORT=9091 GUARD_PORT=9090 ;;
        free)
            # nine distinct free ports: every socket stays bound until all are chosen
            ports=$(python3 - <<'PY'
import socket
socks = []
for _ in range(9):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)
            # shellcheck disable=SC2086
            set -- $ports
            [ $# -eq 9 ] || die "could not choose free ports"
            PINSD1_PORT=$1 PINSD1_GRPC_PORT=$2 PINSD2_PORT=$3 PINSD2_GRPC_PORT=$4
            PG_PORT=$5 PGBOUNCER_PORT=$6 REDIS_PORT=$7 PROM_PORT=$8 GUARD_PORT=$9 ;;
        *) usage_error "PINS_STACK_PORTS must be runbook or free, not: $mode" ;;
    esac
    # PINS_STACK_PORT_<SERVICE> overrides one port (e.g. PINS_STACK_PORT_PROMETHEUS=9191)
    local v o seen=" "
    for v in $PORT_VARS; do
        o=$(port_override_name "$v")
        if [ -n "${!o-}" ]; then
            if ! [[ "${!o}" =~ ^[0-9]{1,5}$ ]] || [ "${!o}" -lt 1 ] || [ "${!o}" -gt 65535 ]; then
                usage_error "$o must be a port number, not: ${!o}"
            fi
            printf -v "$v" '%s' "${!o}"
        fi
        case "$seen" in *" ${!v} "*) usage_error "port ${!v} is given to two services" ;; esac
        seen="$seen${!v} "
    done
}

port_override_name() {
    case "$1" in
        PG_PORT) echo PINS_STACK_PORT_POSTGRES ;;
        PROM_PORT) echo PINS_STACK_PORT_PROMETHEUS ;;
        *) echo "PINS_STACK_PORT_${1%_PORT}" ;;
    esac
}

load_ports() {
    [ -r "$dir/ports.env" ] || die "no stack in $dir (no ports.env; run up first)"
    source_safe "$dir/ports.env"
}

service_port() {
    case "$1" in
        postgres) echo "$PG_PORT" ;;
        pgbouncer) echo "$PGBOUNCER_PORT" ;;
        redis) echo "$REDIS_PORT" ;;
        prometheus) echo "$PROM_PORT" ;;
        guard) echo "$GUARD_PORT" ;;
        pinsd1) echo "$PINSD1_PORT" ;;
        pinsd2) echo "$PINSD2_PORT" ;;
    esac
}

# shellcheck disable=SC2016  # $1 expands in the inner bash
port_open() { timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$1" 2>/dev/null; }

# ---- processes -------------------------------------------------------------------------------

pidfile() { echo "$dir/run/$1.pid"; }

proc_start_time() {
    # field 22 of /proc/PID/stat (after the parenthesised command name, which may hold spaces)
    local stat
    stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    stat=${stat##*) }
    # shellcheck disable=SC2086
    set -- $stat
    [ "$1" != Z ] || return 1   # a zombie has exited
    echo "${20}"
}

# The PID of a running service, or nothing: the recorded PID must be alive and have the start
# time recorded with it (a recycled PID is not ours).
service_pid() {
    local f pid want have
    f=$(pidfile "$1")
    [ -r "$f" ] || return 0
    pid=$(cat "$f" 2>/dev/null) || return 0
    [[ "$pid" =~ ^[0-9]+$ ]] || return 0
    want=$(cat "$dir/run/$1.start" 2>/dev/null) || return 0
    have=$(proc_start_time "$pid") || return 0
    [ "$want" = "$have" ] || return 0
    echo "$pid"
}

# spawn NAME [--as-pg] CMD...: runs CMD detached (its own session, stdin /dev/null, output
# appended to DIR/logs/NAME.log) and records its PID and start time. setsid and setpriv exec, so
# the PID is the server's own. The subshell exits at once: the server is not our child (no
# zombie) and outlives this script. The server's environment is clean: PATH, HOME, LANG, LC_*,
# TZ, TMPDIR, the sanitizers' *SAN_OPTIONS and the exported variables named in $SPAWN_KEEP
# (pinsd's settings and secrets) only,
# so nothing of the caller's shell (a secret, a stray pinsd setting) leaks into a server.
SPAWN_KEEP=
spawn() {
    local name=$1 pid t i pre=() v
    shift
    if [ "${1-}" = --as-pg ]; then
        shift
        if is_root; then pre=(setpriv --reuid=postgres --regid=postgres --init-groups --); fi
    fi
    rm -f "$dir/run/$name.pid" "$dir/run/$name.start"
    (
        # A signal now is only noted: the PID and start time are recorded before this subshell
        # ends, so up's cleanup finds the server. (A handler, unlike an ignored signal, is not
        # inherited by the server.)
        trap : INT TERM HUP
        for v in $(compgen -e); do
            case " $SPAWN_KEEP " in *" $v "*) continue ;; esac
            case "$v" in PATH|HOME|LANG|LC_*|TZ|TMPDIR|ASAN_OPTIONS|UBSAN_OPTIONS|LSAN_OPTIONS) continue ;; esac
            unset "$v" 2>/dev/null || true
        done
        setsid "${pre[@]}" "$@" </dev/null >>"$dir/logs/$name.log" 2>&1 9>&- &
        pid=$!
        t=
        for i in 1 2 3 4 5 6 7 8 9 10; do
            if t=$(proc_start_time "$pid"); then break; fi
            t=
            sleep 0.05
        done
        # a process that is already gone: recorded anyway, wait_until reports its log
        echo "${t:-gone}" >"$dir/run/$name.start"
        echo "$pid" >"$dir/run/$name.pid.tmp"
        mv -f "$dir/run/$name.pid.tmp" "$dir/run/$name.pid"
    )
    pid=$(cat "$dir/run/$name.pid")
    echo "$(date -u +%FT%TZ) started $name PID $pid" >>"$dir/logs/stack.log"
}

log_tail() { tail -n 25 "$dir/logs/$1.log" 2>/dev/null | sed 's/^/    /' >&2 || true; }

# wait_until NAME SECONDS CHECK...: polls CHECK until it succeeds; fails when the process exits
# or the bound passes.
wait_until() {
    local name=$1 secs=$2 deadline
    shift 2
    deadline=$((SECONDS + secs))
    while :; do
        if [ -z "$(service_pid "$name")" ]; then
            say "$name exited while starting; the end of $dir/logs/$name.log:"
            log_tail "$name"
            return 1
        fi
        if "$@" >/dev/null 2>&1; then
            return 0
        fi
        if [ "$SECONDS" -ge "$deadline" ]; then
            say "$name did not come up within ${secs}s; the end of $dir/logs/$name.log:"
            log_tail "$name"
            return 1
        fi
        sleep 0.2
    done
}

stop_service() {
    local name=$1 pid sig=TERM waited=0 limit=20 pgid
    pid=$(service_pid "$name")
    if [ -z "$pid" ]; then
        rm -f "$dir/run/$name.pid" "$dir/run/$name.start"
        return 0
    fi
    case "$name" in
        postgres) sig=INT; limit=30 ;;   # fast shutdown
        pinsd*) limit=25 ;;              # PINS_DRAIN_SECONDS (10) of draining at most
    esac
    kill -"$sig" "$pid" 2>/dev/null || true
    while [ -n "$(service_pid "$name")" ] && [ "$waited" -lt $((limit * 10)) ]; do
        sleep 0.1
        waited=$((waited + 1))
    done
    if [ -n "$(service_pid "$name")" ]; then
        say "$name (PID $pid) still running after ${limit}s: KILL"
        pgid=$(ps -o pgid= -p "$pid" 2>/dev/null | tr -d ' ') || pgid=
        if [ "$pgid" = "$pid" ]; then
            kill -KILL -- "-$pid" 2>/dev/null || true   # its session's group: nginx workers, postgres backends
        else
            kill -KILL "$pid" 2>/dev/null || true
        fi
        waited=0
        while [ -n "$(service_pid "$name")" ] && [ "$waited" -lt 100 ]; do
            sleep 0.1
            waited=$((waited + 1))
        done
        [ -z "$(service_pid "$name")" ] || { say "$name (PID $pid) did not exit"; return 1; }
    fi
    rm -f "$dir/run/$name.pid" "$dir/run/$name.start"
    echo "$(date -u +%FT%TZ) stopped $name PID $pid" >>"$dir/logs/stack.log"
}

# ---- the services ----------------------------------------------------------------------------

psql_super() {
    as_pg env -u PGPASSWORD "$PSQL_BIN" -X -q -h "$dir/postgres/sock" -p "$PG_PORT" -U "$(pg_super)" \
        -d postgres -v ON_ERROR_STOP=1 -Atc "$1"
}

psql_nova() {   # psql_nova PORT DB SQL: as nova over TCP, password from the environment
    PGPASSWORD=novapass PGCONNECT_TIMEOUT=3 "$PSQL_BIN" -X -q -h 127.0.0.1 -p "$1" -U nova -d "$2" \
        -v ON_ERROR_STOP=1 -Atc "$3"
}

init_postgres() {
    local pgdir=$dir/postgres
    mkdir -p "$pgdir"
    if is_root; then chown postgres:postgres "$pgdir"; fi
    chmod 0700 "$pgdir"
    if is_root && ! as_pg test -w "$pgdir"; then
        die "user postgres cannot reach $pgdir: make every parent of $dir traversable (chmod o+x)"
    fi
    as_pg mkdir -p "$pgdir/sock"
    if [ ! -f "$pgdir/data/PG_VERSION" ]; then
        as_pg "$PG_BIN/initdb" -D "$pgdir/data" -U "$(pg_super)" --auth-local=peer \
            --auth-host=scram-sha-256 -E UTF8 --locale=C.UTF-8 >>"$dir/logs/postgres.log" 2>&1 \
            || { log_tail postgres; die "initdb failed"; }
    fi
}

start_postgres() {
    spawn postgres --as-pg "$PG_BIN/postgres" -D "$dir/postgres/data" -p "$PG_PORT" \
        -k "$dir/postgres/sock" -c listen_addresses=127.0.0.1 -c fsync=on \
        -c "max_connections=${PINS_STACK_PG_MAX_CONNECTIONS:-100}" -c password_encryption=scram-sha-256
    wait_until postgres 60 as_pg "$PG_BIN/pg_isready" -q -h "$dir/postgres/sock" -p "$PG_PORT"
}

setup_postgres() {
    psql_super "DO \$\$ BEGIN
        IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'nova') THEN
            CREATE ROLE nova LOGIN CREATEDB PASSWORD 'novapass';
        END IF; END \$\$;" >/dev/null
    if [ -z "$(psql_super "SELECT 1 FROM pg_database WHERE datname = 'nova_aos'")" ]; then
        psql_super "CREATE DATABASE nova_aos OWNER nova" >/dev/null
    fi
}

write_pgbouncer_conf() {
    local d=$dir/pgbouncer
    mkdir -p "$d"
    (
        umask 077
        printf '"nova" "novapass"\n' >"$d/userlist.txt"
        cat >"$d/pgbouncer.ini" <<INI
[databases]
nova_aos = host=127.0.0.1 port=$PG_PORT dbname=nova_aos

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $PGBOUNCER_PORT
unix_socket_dir =
auth_type = scram-sha-256
auth_file = $d/userlist.txt
admin_users = nova
stats_users = nova
pool_mode = transaction
default_pool_size = ${PINS_STACK_PGB_POOL_SIZE:-20}
max_client_conn = 1000
ignore_startup_parameters = extra_float_digits
; pinsd has its own deadlines and circuit breaker: with PostgreSQL gone, a query waiting for a
; server connection gets an error after 5 s instead of 120 s, and PgBouncer tries the server again
; every second, so pinsd sees the outage and the recovery quickly.
query_wait_timeout = 5
server_connect_timeout = 5
server_login_retry = 1
INI
    )
    if is_root; then chown -R postgres:postgres "$d"; fi
}

start_pgbouncer() {
    spawn pgbouncer --as-pg "$PGBOUNCER_BIN" "$dir/pgbouncer/pgbouncer.ini"
    wait_until pgbouncer 30 psql_nova "$PGBOUNCER_PORT" nova_aos "SELECT 1"
}

start_redis() {
    mkdir -p "$dir/redis"
    spawn redis "$REDIS_BIN" --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
        --dir "$dir/redis" --daemonize no --protected-mode yes
    wait_until redis 30 redis_ping
}

redis_ping() { [ "$(timeout 3 "$REDIS_CLI" -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }

write_prometheus_conf() {
    local d=$dir/prometheus src=$root/observability/prometheus/prometheus.yml
    [ -r "$src" ] || die "not found: $src"
    mkdir -p "$d/rules" "$d/data"
    cp -f "$root"/ops/prometheus_rules/*.yml "$d/rules/"
    sed -e 's/^\(  *\)scrape_interval: .*/\1scrape_interval: 5s/' \
        -e 's/^\(  *\)evaluation_interval: .*/\1evaluation_interval: 5s/' \
        -e "s/\[\"localhost:8000\"\]/[\"127.0.0.1:$PINSD1_PORT\", \"127.0.0.1:$PINSD2_PORT\"]/" \
        -e "s/\[\"localhost:9091\"\]/[\"127.0.0.1:$PROM_PORT\"]/" "$src" >"$d/prometheus.yml"
    grep -q "127.0.0.1:$PINSD2_PORT" "$d/prometheus.yml" \
        || die "could not set the scrape targets in $d/prometheus.yml (has $src changed?)"
    "$PROMTOOL_BIN" check config "$d/prometheus.yml" >>"$dir/logs/prometheus.log" 2>&1 \
        || { log_tail prometheus; die "promtool check config failed"; }
}

http_code() { curl -s -o /dev/null -w '%{http_code}' --max-time 3 "$@" 2>/dev/null || true; }
http_ok() { [ "$(http_code "$1")" = 200 ]; }
# Every active target of Prometheus is up, and the nova-backend job has both replicas.
prom_targets_up() {
    curl -sf --max-time 5 "http://127.0.0.1:$PROM_PORT/api/v1/targets?state=active" |
        python3 -c 'import json, sys
t = json.load(sys.stdin)["data"]["activeTargets"]
ok = t and all(x["health"] == "up" for x in t)
sys.exit(0 if ok and sum(x["labels"].get("job") == "nova-backend" for x in t) == 2 else 1)'
}

start_prometheus() {
    spawn prometheus "$PROMETHEUS_BIN" --config.file="$dir/prometheus/prometheus.yml" \
        --storage.tsdb.path="$dir/prometheus/data" --web.listen-address="127.0.0.1:$PROM_PORT" \
        --web.enable-lifecycle --log.level=info
    wait_until prometheus 90 http_ok "http://127.0.0.1:$PROM_PORT/-/ready"
}

render_guard() {
    local args=(--listen "127.0.0.1:$GUARD_PORT" --upstream "127.0.0.1:$PROM_PORT"
                --prefix "$dir/guard" --out "$dir/guard/nginx.conf")
    if is_root; then args+=(--user nobody:nogroup); fi
    PROM_RELOAD_TOKEN=$PROM_RELOAD_TOKEN "$root/ops/nginx/render_guard.sh" "${args[@]}" \
        >>"$dir/logs/guard.log" 2>&1 || { log_tail guard; die "ops/nginx/render_guard.sh failed"; }
}

start_guard() {
    local g=$dir/guard
    "$NGINX_BIN" -p "$g/" -c "$g/nginx.conf" -e "$g/logs/error.log" -g "daemon off;" -t -q \
        >>"$dir/logs/guard.log" 2>&1 || { log_tail guard; die "nginx -t failed for $g/nginx.conf"; }
    spawn guard "$NGINX_BIN" -p "$g/" -c "$g/nginx.conf" -e "$g/logs/error.log" -g "daemon off;"
    wait_until guard 30 http_ok "http://127.0.0.1:$GUARD_PORT/-/ready"
}

# pinsd.env: defaults, then the previous file, then the caller's environment (written back).
update_pinsd_env() {
    local f=$dir/pinsd.env v
    declare -A val=([CHAOS_ALLOWED]=true [RBAC_ENFORCE]=false)
    if [ -r "$f" ]; then
        safe_path "$f" file
        while IFS='=' read -r k v; do
            case " $PINSD_SETTINGS " in *" $k "*) val[$k]=$v ;; esac
        done < <(grep -E '^[A-Z_]+=' "$f")
    fi
    for k in $PINSD_SETTINGS; do
        if [ -n "${!k+x}" ]; then
            v=${!k}
            [[ "$v" =~ ^[A-Za-z0-9._-]*$ ]] || die "$k: a plain value is needed, not: $v"
            val[$k]=$v
        fi
    done
    (
        umask 077
        {
            echo "# pinsd settings of this stack (deploy/local/stack.sh); environment-file syntax"
            echo "PINS_WORKERS=1"
            echo "LOG_FORMAT=json"
            for k in $PINSD_SETTINGS; do
                if [ -n "${val[$k]+x}" ]; then echo "$k=${val[$k]}"; fi
            done
        } >"$f.tmp"
        mv -f "$f.tmp" "$f"
    )
}

load_stack_env() {
    [ -r "$dir/stack.env" ] || die "no stack in $dir ($dir/stack.env missing; run up first)"
    source_safe "$dir/stack.env"
}

start_pinsd() {   # start_pinsd 1|2
    local n=$1 http grpc
    if [ "$n" = 1 ]; then http=$PINSD1_PORT grpc=$PINSD1_GRPC_PORT; else http=$PINSD2_PORT grpc=$PINSD2_GRPC_PORT; fi
    [ -x "$PINSD_BIN" ] || die "PINSD_BIN is not executable: $PINSD_BIN"
    (
        cd "$dir"
        safe_path "$dir/pinsd.env" file
        set -a
        # shellcheck disable=SC1091
        . "$dir/pinsd.env"
        set +a
        export DATABASE_URL REDIS_URL MACHINE_SECRET_TOKEN JWT_SECRET
        # The change feed (LISTEN) goes to PostgreSQL itself: PgBouncer cannot carry it.
        export DATABASE_LISTEN_URL=$DATABASE_DIRECT_URL
        export PINS_LISTEN="127.0.0.1:$http,127.0.0.1:$grpc" PINS_DATA_DIR="$dir/pinsd$n"
        SPAWN_KEEP="DATABASE_URL DATABASE_LISTEN_URL REDIS_URL MACHINE_SECRET_TOKEN JWT_SECRET"
        SPAWN_KEEP="$SPAWN_KEEP PINS_LISTEN PINS_DATA_DIR"
        SPAWN_KEEP="$SPAWN_KEEP PINS_WORKERS LOG_FORMAT $PINSD_SETTINGS"
        spawn "pinsd$n" "$PINSD_BIN"
    )
    wait_until "pinsd$n" 60 http_ok "http://127.0.0.1:$http/ready"
}

start_service() {
    case "$1" in
        postgres) start_postgres ;;
        pgbouncer) start_pgbouncer ;;
        redis) start_redis ;;
        prometheus) start_prometheus ;;
        guard) start_guard ;;
        pinsd1) start_pinsd 1 ;;
        pinsd2) start_pinsd 2 ;;
    esac
}

# ---- secrets and stack.env -------------------------------------------------------------------

gen_secret() { openssl rand -hex 32; }

make_admin_jwt() {
    JWT_SECRET=$JWT_SECRET python3 - <<'PY'
import base64, hashlib, hmac, json, os, time
def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "typ": "JWT"}, separators=(",", ":")).encode())
body = b64(json.dumps({"sub": "ops-admin", "roles": ["admin"], "iat": int(time.time()),
                       "exp": int(time.time()) + 86400}, separators=(",", ":")).encode())
sig = hmac.new(os.environ["JWT_SECRET"].encode(), (head + "." + body).encode(), hashlib.sha256)
print(head + "." + body + "." + b64(sig.digest()))
PY
}

write_stack_env() {
    local v
    (
        umask 077
        {
            echo "# The local M7 stack in $dir (deploy/local/stack.sh). Source it: . $dir/stack.env"
            for v in PINS_STACK_DIR PINS_ROOT PINSD_BIN PINSCTL_BIN PINSD PINSD_URL PINSD2_URL \
                     PINS_ADDR PG_HOST PG_PORT PGBOUNCER_PORT DATABASE_URL DATABASE_DIRECT_URL \
                     REDIS_HOST REDIS_PORT REDIS_URL PROM PROM_URL PROM_DIRECT_URL PROM_RELOAD_TOKEN \
                     PROM_RULES_DIR PROMTOOL MACHINE_SECRET_TOKEN JWT_SECRET ADMIN_JWT; do
                printf 'export %s=%q\n' "$v" "${!v}"
            done
        } >"$dir/stack.env.tmp"
        mv -f "$dir/stack.env.tmp" "$dir/stack.env"
    )
}

# shellcheck disable=SC2034  # written to stack.env by name (write_stack_env)
set_urls() {
    PINS_STACK_DIR=$dir PINS_ROOT=$root
    PINSD=http://127.0.0.1:$PINSD1_PORT PINSD_URL=$PINSD PINSD2_URL=http://127.0.0.1:$PINSD2_PORT
    PINS_ADDR=$PINSD PG_HOST=127.0.0.1
    DATABASE_URL=postgresql://nova:novapass@127.0.0.1:$PGBOUNCER_PORT/nova_aos
    DATABASE_DIRECT_URL=postgresql://nova:novapass@127.0.0.1:$PG_PORT/nova_aos
    REDIS_HOST=127.0.0.1 REDIS_URL=redis://127.0.0.1:$REDIS_PORT/0
    PROM=http://127.0.0.1:$GUARD_PORT PROM_URL=$PROM PROM_DIRECT_URL=http://127.0.0.1:$PROM_PORT
    PROM_RULES_DIR=$dir/prometheus/rules PROMTOOL=$PROMTOOL_BIN
}

# ---- commands --------------------------------------------------------------------------------

lock() {
    [ -d "$dir" ] || die "no stack in $dir"
    safe_path "$dir" "stack directory"
    if [ -e "$dir/.lock" ] || [ -L "$dir/.lock" ]; then safe_path "$dir/.lock" file; fi
    exec 9>>"$dir/.lock"
    flock -w 600 9 || die "another stack.sh holds $dir/.lock for over 600s"
}

need_bin() { [ -x "$1" ] || die "$2 not found: $1 (install the Debian package: tools/deps.sh)"; }

# What stack.sh creates in DIR (down --purge removes DIR only when it holds nothing else).
STACK_ENTRIES=".pins-stack .lock run logs ports.env stack.env stack.env.tmp pinsd.env pinsd.env.tmp postgres pgbouncer redis prometheus guard pinsd1 pinsd2"

# make_dir: DIR for up. A missing DIR is created (mode 0700; 0711 as root, so that postgres and
# the guard's workers, nobody, can go through it) and marked; an existing one must be empty (then
# marked) or already marked, and is never chmod-ed.
make_dir() {
    local parent=${dir%/*}
    [ -n "$parent" ] || parent=/
    if [ ! -e "$dir" ] && [ ! -L "$dir" ]; then
        [ -d "$parent" ] || (umask 077 && mkdir -p -- "$parent") || die "cannot create $parent"
        safe_parents
        mkdir -m 0700 -- "$dir" || die "cannot create $dir"
        if is_root; then chmod 0711 "$dir"; fi
        : >"$dir/.pins-stack"
    fi
    check_dir
    if [ ! -f "$dir/.pins-stack" ]; then
        [ -z "$(ls -A -- "$dir")" ] ||
            die "$dir is not empty and is not a stack directory (no .pins-stack): use another --dir"
        : >"$dir/.pins-stack"
    fi
}

started=()
up_cleanup() {
    local i
    trap '' PIPE INT TERM HUP   # finish the cleanup even when the output or the terminal is gone
    say "up failed: stopping what it started" || true
    for ((i = ${#started[@]} - 1; i >= 0; i--)); do
        stop_service "${started[$i]}" || true
    done
}

cmd_up() {
    [ $# -eq 0 ] || usage_error "up takes no arguments"
    PINSD_BIN=${PINSD_BIN:-$root/build-release/pinsd}
    PINSCTL_BIN=${PINSCTL_BIN:-$root/build-release/pinsctl}
    [ -x "$PINSD_BIN" ] || die "pinsd not found: $PINSD_BIN (build it: tools/run.sh --build-only, or set PINSD_BIN)"
    [ -x "$PINSCTL_BIN" ] || die "pinsctl not found: $PINSCTL_BIN (build it like pinsd, or set PINSCTL_BIN)"
    PINSD_BIN=$(readlink -f "$PINSD_BIN") PINSCTL_BIN=$(readlink -f "$PINSCTL_BIN")
    need_bin "$PG_BIN/postgres" "PostgreSQL 15"
    need_bin "$PGBOUNCER_BIN" pgbouncer
    need_bin "$PSQL_BIN" psql
    need_bin "$REDIS_BIN" redis-server
    need_bin "$REDIS_CLI" redis-cli
    need_bin "$PROMETHEUS_BIN" prometheus
    need_bin "$PROMTOOL_BIN" promtool
    need_bin "$NGINX_BIN" nginx
    command -v openssl >/dev/null || die "openssl not found"
    command -v curl >/dev/null || die "curl not found"
    if is_root; then id postgres >/dev/null 2>&1 || die "user postgres does not exist (install postgresql-15)"; fi

    make_dir
    lock
    local s running=
    for s in $SERVICES; do
        if [ -n "$(service_pid "$s")" ]; then running="$running $s"; fi
    done
    [ -z "$running" ] || die "$dir already has a running stack ($running ); run: $0 --dir $dir down"

    choose_ports
    local v p
    for v in $PORT_VARS; do
        p=${!v}
        if port_open "$p"; then die "port $p (${v%_PORT}) is already in use on 127.0.0.1"; fi
    done

    mkdir -p "$dir/run" "$dir/logs"
    check_dir
    {
        for v in $PORT_VARS; do echo "$v=${!v}"; done
    } >"$dir/ports.env"

    MACHINE_SECRET_TOKEN=${MACHINE_SECRET_TOKEN:-$(gen_secret)}
    JWT_SECRET=${JWT_SECRET:-$(gen_secret)}
    PROM_RELOAD_TOKEN=${PROM_RELOAD_TOKEN:-$(gen_secret)}
    ADMIN_JWT=${ADMIN_JWT:-$(make_admin_jwt)}
    set_urls
    write_stack_env
    update_pinsd_env

    trap up_cleanup EXIT
    # a signal (^C, a closed output pipe) ends up through the EXIT trap, which cleans up; handlers,
    # unlike ignored signals, are not inherited by the servers
    trap 'exit 129' HUP
    trap 'exit 130' INT
    trap 'exit 141' PIPE
    trap 'exit 143' TERM
    local t0=$SECONDS
    init_postgres
    started+=(postgres); start_postgres; say "postgres up on 127.0.0.1:$PG_PORT"
    setup_postgres
    write_pgbouncer_conf
    started+=(pgbouncer); start_pgbouncer; say "pgbouncer up on 127.0.0.1:$PGBOUNCER_PORT (pool_mode transaction)"
    started+=(redis); start_redis; say "redis up on 127.0.0.1:$REDIS_PORT"
    DATABASE_URL=$DATABASE_DIRECT_URL timeout 120 "$PINSCTL_BIN" migrate upgrade head \
        >>"$dir/logs/migrate.log" 2>&1 || { log_tail migrate; die "pinsctl migrate upgrade head failed (log: $dir/logs/migrate.log)"; }
    say "migrated: $(DATABASE_URL=$DATABASE_DIRECT_URL timeout 30 "$PINSCTL_BIN" migrate current 2>&1 | tail -n 1)"
    started+=(pinsd1); start_pinsd 1; say "pinsd1 ready on 127.0.0.1:$PINSD1_PORT (+ $PINSD1_GRPC_PORT)"
    started+=(pinsd2); start_pinsd 2; say "pinsd2 ready on 127.0.0.1:$PINSD2_PORT (+ $PINSD2_GRPC_PORT)"
    write_prometheus_conf
    started+=(prometheus); start_prometheus; say "prometheus up on 127.0.0.1:$PROM_PORT"
    render_guard
    started+=(guard); start_guard; say "guard up on 127.0.0.1:$GUARD_PORT"
    # Up means observed too: Prometheus has scraped every target, both pinsd replicas included,
    # so a preflight run right after `up` sees them up.
    wait_until prometheus 90 prom_targets_up ||
        die "Prometheus did not scrape every target (both pinsd replicas) within 90 s"
    say "prometheus scrapes every target"
    trap - EXIT HUP INT PIPE TERM
    say "stack up in $((SECONDS - t0))s; run: . $dir/stack.env"
    cmd_status || true
}

cmd_down() {
    local purge=
    while [ $# -gt 0 ]; do
        case "$1" in
            --purge) purge=1; shift ;;
            *) usage_error "down: unknown argument: $1" ;;
        esac
    done
    if [ ! -e "$dir" ] && [ ! -L "$dir" ]; then say "no stack in $dir: nothing to stop"; return 0; fi
    lock
    local s rc=0
    for s in guard prometheus pinsd2 pinsd1 pgbouncer redis postgres; do
        stop_service "$s" || rc=1
    done
    [ "$rc" -eq 0 ] || die "some services did not stop"
    say "stopped"
    if [ -n "$purge" ]; then
        [ -f "$dir/.pins-stack" ] || die "$dir does not look like a stack directory (no .pins-stack): not removing it"
        local e foreign=
        for e in "$dir"/* "$dir"/.[!.]* "$dir"/..?*; do
            [ -e "$e" ] || [ -L "$e" ] || continue
            case " $STACK_ENTRIES " in *" ${e##*/} "*) ;; *) foreign="$foreign ${e##*/}" ;; esac
        done
        [ -z "$foreign" ] || die "$dir holds what stack.sh did not create ($foreign ): not removing it"
        rm -rf -- "$dir"
        say "removed $dir"
    fi
}

cmd_status() {
    [ -d "$dir/run" ] || { say "no stack in $dir"; }
    local v
    for v in $PORT_VARS; do printf -v "$v" ''; done
    [ ! -r "$dir/ports.env" ] || load_ports
    local s pid port state rc=0
    for s in $SERVICES; do
        pid=$(service_pid "$s")
        port=$(service_port "$s" 2>/dev/null || true)
        state=down
        if [ -n "$pid" ] && [ -n "$port" ] && port_open "$port"; then state=up; fi
        [ "$state" = up ] || rc=3
        printf '%-10s %-7s %-5s %s\n' "$s" "${pid:--}" "${port:--}" "$state"
    done
    return "$rc"
}

expand_service() {
    case "$1" in
        pinsd) echo "pinsd1 pinsd2" ;;
        postgres|pgbouncer|redis|prometheus|guard|pinsd1|pinsd2) echo "$1" ;;
        "") usage_error "a SERVICE is needed (postgres pgbouncer redis prometheus guard pinsd1 pinsd2 pinsd)" ;;
        *) usage_error "unknown service: $1 (postgres pgbouncer redis prometheus guard pinsd1 pinsd2 pinsd)" ;;
    esac
}

prepare_service_cmd() {
    load_ports
    load_stack_env
    lock
}

cmd_stop() {
    [ $# -eq 1 ] || usage_error "stop takes one SERVICE"
    local list s
    list=$(expand_service "$1")
    prepare_service_cmd
    for s in $list; do
        stop_service "$s"
        say "$s stopped"
    done
}

cmd_start() {
    [ $# -eq 1 ] || usage_error "start takes one SERVICE"
    local list s
    list=$(expand_service "$1")
    prepare_service_cmd
    case "$1" in pinsd*) update_pinsd_env ;; esac
    for s in $list; do
        if [ -n "$(service_pid "$s")" ]; then
            say "$s is already running (PID $(service_pid "$s"))"
            continue
        fi
        start_service "$s" || { stop_service "$s" || true; die "$s did not start (stopped again)"; }
        say "$s up"
    done
}

cmd_restart() {
    [ $# -eq 1 ] || usage_error "restart takes one SERVICE"
    local list s
    list=$(expand_service "$1")
    prepare_service_cmd
    case "$1" in pinsd*) update_pinsd_env ;; esac
    for s in $list; do
        stop_service "$s"
        start_service "$s" || { stop_service "$s" || true; die "$s did not start (stopped again)"; }
        say "$s restarted"
    done
}

case "$cmd" in help) ;; *) check_dir ;; esac
case "$cmd" in
    up) cmd_up "$@" ;;
    down) cmd_down "$@" ;;
    status) [ $# -eq 0 ] || usage_error "status takes no arguments"; cmd_status ;;
    stop) cmd_stop "$@" ;;
    start) cmd_start "$@" ;;
    restart) cmd_restart "$@" ;;
    env)
        [ $# -eq 0 ] || usage_error "env takes no arguments"
        [ -r "$dir/stack.env" ] || die "no stack in $dir ($dir/stack.env missing; run up first)"
        safe_path "$dir/stack.env" file
        cat "$dir/stack.env" ;;
    help) usage ;;
    *) usage_error "unknown command: $cmd" ;;
esac
