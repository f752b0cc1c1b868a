#!/usr/bin/env bash
# Chaos experiment: database connection exhaustion. Other clients hold most of PostgreSQL's free
# connection slots while a spike of concurrent calls runs through both pinsd replicas; pinsd's
# connection pool must stay bounded (DB_POOL_SIZE per replica) so that PostgreSQL is never driven
# to max_connections, no call fails with an internal error, and calls succeed again once the other
# clients let go.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: CHAOS_ALLOWED=true scripts/chaos/db_exhaustion.sh [--stack DIR] [OPTIONS]

1. Reads PostgreSQL's max_connections, superuser_reserved_connections and its client backends, and
   each replica's pool size (store.pool_size of /api/v1/admin/status, i.e. DB_POOL_SIZE).
2. Opens H idle psql sessions straight to PostgreSQL (DATABASE_DIRECT_URL, application_name
   pins-chaos-hold-<pid>): every free slot except the replicas' pools and --headroom.
3. Meanwhile runs pinsctl bench against both replicas (-c connections x -m streams each, writes
   and reads of many tenants, for --duration), sampling every 0.5 s, from outside pinsd, the
   client connections with application_name pinsd on PgBouncer (its admin console, SHOW CLIENTS,
   as the stack's user, an admin_user), PostgreSQL's client backends (pg_stat_activity), and each
   replica's own store_pool_connections gauge.
4. Ends the holders (by PID) and waits until a write succeeds on both replicas.

"Bounded pool" here: (a) the pools fit: the replicas' DB_POOL_SIZE together fit in the slots
PostgreSQL has left for them (max_connections - superuser_reserved_connections - the other client
backends); (b) the pinsd client connections PgBouncer sees never exceed the replicas' DB_POOL_SIZE
together, and each replica's own gauge (store_pool_connections busy+idle+connecting) never exceeds
its DB_POOL_SIZE, whatever the number of concurrent calls; every sample must be read (a PgBouncer
or /metrics sample that fails is a FAIL, not a zero); (c) PostgreSQL's client
backends never reach the non-superuser limit (max_connections - superuser_reserved_connections),
i.e. the spike never made PostgreSQL refuse a connection.

PASS iff (a), (b) and (c) hold, at least 90% of the planned holders connected, no call answered
INTERNAL or UNKNOWN, no call failed (answers other than NOT_FOUND and RESOURCE_EXHAUSTED, or no
answer), and writes succeed on both replicas within --recovery-timeout after the holders are
released (the measured recovery time is compared with the limit).

options:
  --stack DIR             the stack (default $PINS_STACK_DIR, else ${XDG_RUNTIME_DIR:-/tmp}/pins-stack-<uid>)
  -c, --connections N     bench HTTP/2 connections per replica (default 32, 1..256)
  -m, --streams N         calls in flight per connection (default 4, 1..100)
  -d, --duration S        seconds of load (default 10, 1..600)
  --max-holders N         most idle sessions to open (default 200, 0..1000)
  --headroom N            slots left free besides the pools (default 4: the sampler, logins)
  --recovery-timeout S    longest accepted recovery after the holders go (default 300)
  -h, --help              this text

Exit: 0 PASS, 1 FAIL or refused (CHAOS_ALLOWED not "true", pinsd says chaos_allowed=false,
no stack), 2 usage error. The holders and the bench are killed by PID on every exit; the holders
also end by themselves (idle_session_timeout, and EOF on their input when this script ends).
EOF
}

for a in "$@"; do
    case $a in -h | --help) usage; exit 0 ;; esac
done

# Chaos scripts MUST check this
if [ "${CHAOS_ALLOWED:-}" != "true" ]; then
    echo "ERROR: CHAOS_ALLOWED not set. Aborting."
    exit 1
fi

CHAOS_NAME=db_exhaustion
# shellcheck source=scripts/chaos/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

CONNS=32
STREAMS=4
DURATION=10
MAX_HOLDERS=200
HEADROOM=4
RECOVERY_TIMEOUT=300
while [ $# -gt 0 ]; do
    case $1 in
    --stack) [ $# -ge 2 ] || chaos_usage_err "--stack needs a directory"; CHAOS_STACK_ARG=$2; shift 2 ;;
    --stack=*) CHAOS_STACK_ARG=${1#*=}; shift ;;
    -c | --connections) [ $# -ge 2 ] || chaos_usage_err "$1 needs a number"; chaos_int "$1" "$2" 1 256; CONNS=$((10#$2)); shift 2 ;;
    -m | --streams) [ $# -ge 2 ] || chaos_usage_err "$1 needs a number"; chaos_int "$1" "$2" 1 100; STREAMS=$((10#$2)); shift 2 ;;
    -d | --duration) [ $# -ge 2 ] || chaos_usage_err "$1 needs seconds"; chaos_int "$1" "$2" 1 600; DURATION=$((10#$2)); shift 2 ;;
    --max-holders) [ $# -ge 2 ] || chaos_usage_err "--max-holders needs a number"; chaos_int --max-holders "$2" 0 1000; MAX_HOLDERS=$((10#$2)); shift 2 ;;
    --headroom) [ $# -ge 2 ] || chaos_usage_err "--headroom needs a number"; chaos_int --headroom "$2" 1 1000; HEADROOM=$((10#$2)); shift 2 ;;
    --recovery-timeout) [ $# -ge 2 ] || chaos_usage_err "--recovery-timeout needs seconds"; chaos_int --recovery-timeout "$2" 1 3600; RECOVERY_TIMEOUT=$((10#$2)); shift 2 ;;
    *) chaos_usage_err "unknown argument '$1'" ;;
    esac
done

chaos_load_stack
chaos_check_target

PINSCTL=${PINSCTL_BIN:-}
[ -x "$PINSCTL" ] || PINSCTL="${PINS_ROOT:-}/build-release/pinsctl"
[ -x "$PINSCTL" ] || chaos_fail "pinsctl not found (PINSCTL_BIN of the stack)"

# PostgreSQL straight (never through PgBouncer): libpq settings from DATABASE_DIRECT_URL, the
# password in a 0600 passfile, never on a command line.
url=${DATABASE_DIRECT_URL:-}
re='^postgres(ql)?://([^:@/]+)(:([^@]*))?@([^:/]+)(:([0-9]+))?/([^?]+)'
[[ $url =~ $re ]] || chaos_fail "DATABASE_DIRECT_URL of the stack is not postgresql://user:pass@host:port/db"
export PGUSER=${BASH_REMATCH[2]} PGHOST=${BASH_REMATCH[5]} PGPORT=${BASH_REMATCH[7]:-5432} PGDATABASE=${BASH_REMATCH[8]}
pass=${BASH_REMATCH[4]}
pass=${pass//\\/\\\\}
pass=${pass//:/\\:}
export PGPASSFILE="$CHAOS_TMP/pgpass"
(umask 077 && printf '%s:%s:%s:%s:%s\n' "$PGHOST" "$PGPORT" "$PGDATABASE" "$PGUSER" "$pass" >"$PGPASSFILE")
# PgBouncer's admin console: host and port of DATABASE_URL (pinsd's), database pgbouncer.
url=${DATABASE_URL:-}
[[ $url =~ $re ]] || chaos_fail "DATABASE_URL of the stack is not postgresql://user:pass@host:port/db"
PGB_HOST=${BASH_REMATCH[5]} PGB_PORT=${BASH_REMATCH[7]:-6432} PGB_USER=${BASH_REMATCH[2]}
pass=${BASH_REMATCH[4]}
pass=${pass//\\/\\\\}
pass=${pass//:/\\:}
(umask 077 && printf '%s:%s:pgbouncer:%s:%s\n' "$PGB_HOST" "$PGB_PORT" "$PGB_USER" "$pass" >>"$PGPASSFILE")
export PGCONNECT_TIMEOUT=10
unset pass url
HOLD_APP="pins-chaos-hold-$$"
pgq() { PGAPPNAME=pins-chaos-probe psql -X -q -At -v ON_ERROR_STOP=1 -c "$1" 2>/dev/null; }
# pgb_pinsd_clients: the client connections of application_name pinsd PgBouncer has (SHOW CLIENTS
# on its admin console), or nothing (status 1) when the console did not answer.
pgb_pinsd_clients() {
    local text
    text=$(PGAPPNAME=pins-chaos-probe timeout 10 psql -X -q -A -F '|' -h "$PGB_HOST" -p "$PGB_PORT" \
        -U "$PGB_USER" -d pgbouncer -c "SHOW CLIENTS" 2>/dev/null) || return 1
    awk -F'|' 'NR == 1 { for (i = 1; i <= NF; i++) if ($i == "application_name") c = i; next }
               c && $c == "pinsd" { n++ }
               END { if (!c) exit 1; print n + 0 }' <<<"$text"
}
pgb_pinsd_clients >/dev/null || chaos_fail "cannot read SHOW CLIENTS on PgBouncer's admin console at $PGB_HOST:$PGB_PORT (user $PGB_USER)"

max_conn=$(pgq "show max_connections") || chaos_fail "cannot query PostgreSQL at $PGHOST:$PGPORT"
reserved=$(pgq "show superuser_reserved_connections")
limit=$((max_conn - reserved))
q_clients="select count(*) from pg_stat_activity where backend_type = 'client backend'"
clients0=$(pgq "$q_clients")
# The probe itself is one of them.
others=$((clients0 - 1))

pools=0
declare -a POOL
for i in 0 1; do
    p=$(chaos_jq "${CHAOS_REPLICAS[$i]}" '.store.pool_size')
    [[ $p =~ ^[0-9]+$ ]] || chaos_fail "${CHAOS_REPLICAS[$i]} reports no store.pool_size (is its store PostgreSQL?)"
    POOL[i]=$p
    pools=$((pools + p))
done
free=$((limit - others))
holders=$((free - pools - HEADROOM))
[ "$holders" -le "$MAX_HOLDERS" ] || holders=$MAX_HOLDERS
chaos_log "postgres: max_connections $max_conn, superuser_reserved $reserved, client backends $others; pools ${POOL[0]}+${POOL[1]}=$pools; holders $holders"

figures_head() {
    echo "figures:"
    echo "  postgres slots:        max_connections $max_conn - superuser_reserved $reserved = $limit for the application"
    echo "  other clients before:  $others; free $free"
    echo "  pinsd pools:           DB_POOL_SIZE ${POOL[0]} + ${POOL[1]} = $pools"
}
if [ "$pools" -gt "$free" ] || [ "$holders" -lt 1 ]; then
    figures_head
    if [ "$pools" -gt "$free" ]; then
        chaos_fail "pinsd's pools ($pools connections) do not fit in the $free free PostgreSQL slots: a spike could exhaust PostgreSQL"
    fi
    chaos_fail "no slot left to hold (free $free, pools $pools, headroom $HEADROOM): nothing to spike"
fi

# The holders: idle psql sessions reading a FIFO nobody writes to. This script keeps the FIFO's
# write end open (fd 9); the holders get EOF and end when it closes, and PostgreSQL ends them after
# idle_session_timeout in any case.
fifo="$CHAOS_TMP/hold.fifo"
mkfifo -m 600 "$fifo"
exec 9<>"$fifo"
hold_s=$((DURATION + RECOVERY_TIMEOUT + 120))
HOLD_PIDS=()
for ((i = 0; i < holders; i++)); do
    PGAPPNAME=$HOLD_APP PGOPTIONS="-c idle_session_timeout=${hold_s}s" \
        psql -X -q -v ON_ERROR_STOP=1 <"$fifo" >/dev/null 2>>"$CHAOS_TMP/holders.err" 9>&- &
    chaos_bg $!
    HOLD_PIDS+=("$!")
done
q_held="select count(*) from pg_stat_activity where application_name = '$HOLD_APP'"
held=0
for ((i = 0; i < 60; i++)); do
    held=$(pgq "$q_held" || echo 0)
    [ "$held" -ge "$holders" ] && break
    sleep 0.5
done
chaos_log "holding $held of $holders PostgreSQL slots"

# PostgreSQL's client backends every 0.5 s over one session (\watch runs until killed).
echo "$q_clients \\watch 0.5" |
    PGAPPNAME=pins-chaos-probe psql -X -q -At >"$CHAOS_TMP/pg_samples" 2>/dev/null 9>&- &
SAMPLER=$!
chaos_bg "$SAMPLER"

# The spike: one bench per replica, in the background, bounded by -d and --timeout.
for i in 0 1; do
    "$PINSCTL" bench --addr "${CHAOS_REPLICAS[$i]}" -c "$CONNS" -m "$STREAMS" -d "${DURATION}s" \
        --timeout 10s --mix put=50,get=50 --tenants 2000 --keys 100 \
        --tenant-prefix "chaos-db-$$-t" --json >"$CHAOS_TMP/bench$i.json" 2>"$CHAOS_TMP/bench$i.err" 9>&- &
    chaos_bg $!
    eval "BENCH$i=\$!"
done
open_re='store_pool_connections\{state="(busy|idle|connecting)"\}'
busy_re='store_pool_connections\{state="busy"\}'
peak_open=(0 0)
peak_busy=(0 0)
metrics_failed=(0 0)
peak_pgb=0
pgb_samples=0
pgb_failed=0
samples=0
t0=$(chaos_now)
deadline=$((SECONDS + DURATION + 40))
while kill -0 "$BENCH0" 2>/dev/null || kill -0 "$BENCH1" 2>/dev/null; do
    [ "$SECONDS" -lt "$deadline" ] || break
    if c=$(pgb_pinsd_clients); then
        pgb_samples=$((pgb_samples + 1))
        [ "$c" -le "$peak_pgb" ] || peak_pgb=$c
    else
        pgb_failed=$((pgb_failed + 1))
    fi
    for i in 0 1; do
        o=$(chaos_metric "${CHAOS_REPLICAS[$i]}" "$open_re")
        b=$(chaos_metric "${CHAOS_REPLICAS[$i]}" "$busy_re")
        if [ -z "$o" ] || [ -z "$b" ]; then
            metrics_failed[i]=$((metrics_failed[i] + 1))
            continue
        fi
        [ "$o" -le "${peak_open[i]}" ] || peak_open[i]=$o
        [ "$b" -le "${peak_busy[i]}" ] || peak_busy[i]=$b
    done
    samples=$((samples + 1))
    sleep 0.5
done
spike_s=$(chaos_since "$t0")
bench_rc=(0 0)
for i in 0 1; do
    pid_var="BENCH$i"
    if kill -0 "${!pid_var}" 2>/dev/null; then
        kill -TERM "${!pid_var}" 2>/dev/null || true
    fi
    wait "${!pid_var}" 2>/dev/null || bench_rc[i]=$?
done

kill -TERM "$SAMPLER" 2>/dev/null || true
wait "$SAMPLER" 2>/dev/null || true
pg_samples=$(grep -c '^[0-9][0-9]*$' "$CHAOS_TMP/pg_samples" || true)
peak_pg=$(awk '/^[0-9]+$/ { if ($1 > m) m = $1 } END { print m + 0 }' "$CHAOS_TMP/pg_samples")

# Release the holders, then recovery.
for pid in "${HOLD_PIDS[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
exec 9>&-
t_rel=$(chaos_now)
recovered=0
left=-1
deadline=$((SECONDS + RECOVERY_TIMEOUT))
n=0
while :; do
    left=$(pgq "$q_held" || echo -1)
    good=0
    for url in "${CHAOS_REPLICAS[@]}"; do
        n=$((n + 1))
        chaos_try_write "$url" "chaos-db-$$-after" "k$n" && good=$((good + 1))
    done
    if [ "$good" -eq 2 ] && [ "$left" = 0 ]; then recovered=1; break; fi
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.5
done
recovery_s=$(chaos_since "$t_rel")

# The bench reports.
answers=0 ok=0 internal=0 failed=0 limited=0 codes=""
for i in 0 1; do
    f="$CHAOS_TMP/bench$i.json"
    if ! jq -e . "$f" >/dev/null 2>&1; then
        echo "bench against ${CHAOS_REPLICAS[$i]} gave no report (exit ${bench_rc[i]}): $(head -c 300 "$CHAOS_TMP/bench$i.err")"
        failed=$((failed + 1))
        continue
    fi
    answers=$((answers + $(jq '.answers' "$f")))
    ok=$((ok + $(jq '.ok' "$f")))
    internal=$((internal + $(jq '(.errors_by_code.INTERNAL // 0) + (.errors_by_code.UNKNOWN // 0)' "$f")))
    limited=$((limited + $(jq '.errors_by_code.RESOURCE_EXHAUSTED // 0' "$f")))
    failed=$((failed + $(jq '([.errors_by_code | to_entries[] | select(.key != "NOT_FOUND" and .key != "RESOURCE_EXHAUSTED") | .value] | add // 0) + .failed_locally' "$f")))
    codes+="$(jq -r '[.errors_by_code, .failed_locally_by_code | to_entries[] | "\(.key)=\(.value)"] | join(",")' "$f") "
done

figures_head
echo "  holders:               $held idle sessions held (of $holders planned)"
echo "  spike:                 pinsctl bench -c $CONNS -m $STREAMS per replica for ${DURATION}s (${spike_s}s; $samples rounds, $pgb_samples PgBouncer samples ($pgb_failed failed), $pg_samples PostgreSQL samples, /metrics failed ${metrics_failed[0]}+${metrics_failed[1]})"
echo "  calls:                 $answers answered, $ok ok, $limited rate limited, $failed failed, $internal internal"
echo "  answer codes:          ${codes% }"
echo "  pgbouncer peak:        $peak_pgb pinsd client connections of DB_POOL_SIZE ${POOL[0]} + ${POOL[1]} = $pools"
echo "  pool peak pinsd1:      ${peak_open[0]} open (${peak_busy[0]} busy) of DB_POOL_SIZE ${POOL[0]}"
echo "  pool peak pinsd2:      ${peak_open[1]} open (${peak_busy[1]} busy) of DB_POOL_SIZE ${POOL[1]}"
echo "  postgres peak:         $peak_pg client backends of $limit (max_connections $max_conn)"
echo "  recovery:              ${recovery_s}s (limit ${RECOVERY_TIMEOUT}s), holder sessions left $left"

[ "$held" -ge 1 ] || chaos_fail "no holder session could connect"
[ $((held * 10)) -ge $((holders * 9)) ] || chaos_fail "only $held of $holders holder sessions connected: PostgreSQL was not squeezed"
if [ "$samples" -lt 1 ] || [ "$pgb_samples" -lt 1 ] || [ "${pg_samples:-0}" -lt 1 ]; then chaos_fail "no sample taken during the spike"; fi
[ "$pgb_failed" -eq 0 ] || chaos_fail "$pgb_failed PgBouncer SHOW CLIENTS samples failed during the spike: the pool was not measured"
for i in 0 1; do
    [ "${metrics_failed[i]}" -eq 0 ] || chaos_fail "${metrics_failed[i]} /metrics samples of ${CHAOS_REPLICAS[$i]} failed during the spike: its pool was not measured"
done
[ "$peak_pgb" -le "$pools" ] || chaos_fail "PgBouncer saw $peak_pgb pinsd client connections, more than the replicas' DB_POOL_SIZE together ($pools)"
[ "$peak_pgb" -ge 1 ] || chaos_fail "PgBouncer never saw a pinsd client connection during the spike"
for i in 0 1; do
    [ "${peak_open[i]}" -le "${POOL[i]}" ] || chaos_fail "${CHAOS_REPLICAS[$i]} opened ${peak_open[i]} connections, more than its DB_POOL_SIZE ${POOL[i]}"
done
[ "$peak_pg" -lt "$limit" ] || chaos_fail "PostgreSQL reached $peak_pg client backends: its $limit slots were exhausted"
[ "$answers" -gt 0 ] || chaos_fail "the spike got no answers"
[ "$internal" -eq 0 ] || chaos_fail "$internal calls answered INTERNAL/UNKNOWN during the spike"
[ "$failed" -eq 0 ] || chaos_fail "$failed calls failed during the spike (${codes% })"
[ "$recovered" -eq 1 ] || chaos_fail "writes not succeeding on both replicas ${recovery_s}s after the holders went (limit ${RECOVERY_TIMEOUT}s)"
chaos_within "$recovery_s" "$RECOVERY_TIMEOUT" || chaos_fail "recovered only after ${recovery_s}s, over the limit of ${RECOVERY_TIMEOUT}s"
chaos_pass "pools bounded (PgBouncer peak $peak_pgb/$pools pinsd clients; gauges ${peak_open[0]}/${POOL[0]}, ${peak_open[1]}/${POOL[1]}), PostgreSQL peak $peak_pg of $limit with $held slots held, $ok calls ok, 0 internal, recovered in ${recovery_s}s"
