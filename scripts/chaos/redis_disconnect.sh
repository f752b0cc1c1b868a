#!/usr/bin/env bash
# Chaos experiment: Redis disconnect. Stops the stack's Redis, drives pin writes and reads on both
# pinsd replicas while it is down (every one must succeed: the rate limiter fails open to a local
# bucket), starts Redis again and measures how long the replicas take to use it again.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: CHAOS_ALLOWED=true scripts/chaos/redis_disconnect.sh [--stack DIR] [OPTIONS]

Stops Redis of the local stack (deploy/local/stack.sh --dir DIR stop redis), sends pin writes and
reads of several fresh tenants to both pinsd replicas while it is down, starts it again and waits
until both replicas report Redis up with the limiter back on Redis.

PASS iff every call made while Redis was down succeeded (2xx; memory_pins_operations_total
{status="error"} unchanged on both replicas; /ready 200 with redis "down (fail-open)") and
the replicas recovered within --recovery-timeout.

options:
  --stack DIR             the stack (default $PINS_STACK_DIR, else ${XDG_RUNTIME_DIR:-/tmp}/pins-stack-<uid>)
  --ops N                 calls sent while Redis is down, writes and reads (default 160, 2..10000)
  --tenants N             fresh tenants they are spread over (default 8, 1..1000; raised so that
                          no tenant gets more than half its rate-limit burst on one replica)
  --recovery-timeout S    longest accepted recovery after Redis starts again (default 300)
  -h, --help              this text

Exit: 0 PASS, 1 FAIL or refused (CHAOS_ALLOWED not "true", pinsd says chaos_allowed=false,
no stack), 2 usage error. Redis is started again on every exit once it was stopped.
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

CHAOS_NAME=redis_disconnect
# shellcheck source=scripts/chaos/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OPS=160
TENANTS=8
RECOVERY_TIMEOUT=300
while [ $# -gt 0 ]; do
    case $1 in
    --stack) [ $# -ge 2 ] || chaos_usage_err "--stack needs a directory"; CHAOS_STACK_ARG=$2; shift 2 ;;
    --stack=*) CHAOS_STACK_ARG=${1#*=}; shift ;;
    --ops) [ $# -ge 2 ] || chaos_usage_err "--ops needs a number"; chaos_int --ops "$2" 2 10000; OPS=$((10#$2)); shift 2 ;;
    --tenants) [ $# -ge 2 ] || chaos_usage_err "--tenants needs a number"; chaos_int --tenants "$2" 1 1000; TENANTS=$((10#$2)); shift 2 ;;
    --recovery-timeout) [ $# -ge 2 ] || chaos_usage_err "--recovery-timeout needs seconds"; chaos_int --recovery-timeout "$2" 1 3600; RECOVERY_TIMEOUT=$((10#$2)); shift 2 ;;
    *) chaos_usage_err "unknown argument '$1'" ;;
    esac
done

chaos_load_stack
chaos_check_target

# Baseline: both replicas on Redis.
for url in "${CHAOS_REPLICAS[@]}"; do
    st=$(chaos_status "$url")
    rs=$(jq -r '.redis.state' <<<"$st")
    lb=$(jq -r '.limiter.backend' <<<"$st")
    chaos_log "baseline $url: redis=$rs limiter=$lb"
    [ "$rs" = ok ] || chaos_fail "baseline: $url reports redis '$rs', not ok (is Redis up and REDIS_URL set?)"
    [ "$lb" = redis ] || chaos_fail "baseline: $url limiter backend is '$lb', not redis"
done
BURST=$(chaos_jq "$PINSD_URL" '.limiter.burst')
RPM=$(chaos_jq "$PINSD_URL" '.limiter.rpm')
# Calls per tenant per replica: writes and reads of one tenant on one replica use its local bucket
# while Redis is down; keep them at most half the burst so that the limiter never answers 429.
per_replica=$(((OPS + 1) / 2))
if [ "${RPM:-0}" -gt 0 ] && [ "${BURST:-0}" -gt 1 ]; then
    cap=$((BURST / 2))
    need=$(((per_replica + cap - 1) / cap))
    [ "$need" -le "$TENANTS" ] || TENANTS=$need
    [ "$TENANTS" -le 1000 ] || chaos_usage_err "--ops $OPS needs more than 1000 tenants at burst $BURST: lower --ops"
fi
chaos_log "limiter rpm=$RPM burst=$BURST; $OPS calls over $TENANTS tenants while Redis is down"

ERR_RE='memory_pins_operations_total\{[^}]*status="error"'
err_before=$(chaos_sum_metric "$ERR_RE")
[ -n "$err_before" ] || chaos_fail "cannot read /metrics of both replicas"

# Redis down.
CHAOS_RESTORE=("start redis")
chaos_log "stopping redis"
chaos_stack stop redis >"$CHAOS_TMP/stop.log" 2>&1 || { cat "$CHAOS_TMP/stop.log"; chaos_fail "'stack.sh stop redis' failed"; }
t_down=$(chaos_now)

# Both replicas notice (their status pings Redis); bounded.
noticed=0
for ((i = 0; i < 60; i++)); do
    noticed=0
    for url in "${CHAOS_REPLICAS[@]}"; do
        [ "$(chaos_jq "$url" '.redis.state')" = "down (fail-open)" ] && noticed=$((noticed + 1))
    done
    [ "$noticed" -eq 2 ] && break
    sleep 0.5
done
chaos_log "replicas reporting redis 'down (fail-open)': $noticed of 2"

# The calls: per tenant, writes then reads of the same keys, alternating replicas.
run=$(chaos_fresh chaos-redis)
cfg="$CHAOS_TMP/ops.cfg"
: >"$cfg"
writes=$(((OPS + 1) / 2))
reads=$((OPS - writes))
for ((i = 0; i < writes; i++)); do
    t="$run-t$((i % TENANTS))"
    url=${CHAOS_REPLICAS[$((i % 2))]}
    chaos_req "$cfg" POST "$url/api/v1/memory/pins" "$(chaos_write_json "$t" "k$i")"
done
chaos_run_batch "$cfg" 8 "$CHAOS_TMP/writes.out"
: >"$cfg"
for ((i = 0; i < reads; i++)); do
    t="$run-t$((i % TENANTS))"
    url=${CHAOS_REPLICAS[$(((i + 1) % 2))]}
    chaos_req "$cfg" GET "$url/api/v1/memory/pins/k$i?tenant_id=$t"
done
chaos_run_batch "$cfg" 8 "$CHAOS_TMP/reads.out"
cat "$CHAOS_TMP/writes.out" "$CHAOS_TMP/reads.out" >"$CHAOS_TMP/all.out"
sent=$(wc -l <"$CHAOS_TMP/all.out")
ok=$(awk '$1 ~ /^2/' "$CHAOS_TMP/all.out" | wc -l)
failed=$((OPS - ok))
codes=$(awk '$1 !~ /^2/ { c[$1]++ } END { for (k in c) printf "%s%s=%d", (n++ ? "," : ""), k, c[k] }' "$CHAOS_TMP/all.out")

# /ready while Redis is still down.
ready_ok=0
for url in "${CHAOS_REPLICAS[@]}"; do
    body=$(curl -s --max-time 10 -w '\n%{http_code}' -- "$url/ready" 2>/dev/null || true)
    code=${body##*$'\n'}
    rstate=$(jq -r '.checks.redis // empty' <<<"${body%$'\n'*}" 2>/dev/null || true)
    chaos_log "/ready $url during the outage: $code redis='$rstate'"
    [ "$code" = 200 ] && [ "$rstate" = "down (fail-open)" ] && ready_ok=$((ready_ok + 1))
done
err_after=$(chaos_sum_metric "$ERR_RE")
err_delta=$(( ${err_after:-0} - err_before ))
local_allowed=$(chaos_sum_metric 'rate_limit_decisions_total\{decision="allowed",backend="local"')

# Redis up again; recovery.
chaos_log "starting redis"
t_up=$(chaos_now)
down_s=$(chaos_since "$t_down")
chaos_stack start redis >"$CHAOS_TMP/start.log" 2>&1 || { cat "$CHAOS_TMP/start.log"; chaos_fail "'stack.sh start redis' failed"; }
CHAOS_RESTORE=()
recovered=0
deadline=$((SECONDS + RECOVERY_TIMEOUT))
while :; do
    good=0
    for url in "${CHAOS_REPLICAS[@]}"; do
        st=$(chaos_status "$url")
        if [ -n "$st" ] && [ "$(jq -r '.redis.state' <<<"$st")" = ok ] &&
            [ "$(jq -r '.limiter.backend' <<<"$st")" = redis ]; then
            good=$((good + 1))
        fi
    done
    if [ "$good" -eq 2 ]; then recovered=1; break; fi
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.5
done
recovery_s=$(chaos_since "$t_up")
# After recovery a write on each replica is decided by the Redis bucket again.
redis_before=$(chaos_sum_metric 'rate_limit_decisions_total\{[^}]*backend="redis"')
post_ok=0
for url in "${CHAOS_REPLICAS[@]}"; do
    chaos_try_write "$url" "$run-after" "k-$RANDOM" && post_ok=$((post_ok + 1))
done
redis_after=$(chaos_sum_metric 'rate_limit_decisions_total\{[^}]*backend="redis"')
redis_decisions=$(( ${redis_after:-0} - ${redis_before:-0} ))

echo "figures:"
echo "  ops sent:              $sent (writes $writes, reads $reads, tenants $TENANTS)"
echo "  ops ok:                $ok"
echo "  ops failed:            $failed${codes:+ ($codes)}"
echo "  pinsd error ops delta: $err_delta (memory_pins_operations_total{status=\"error\"}, both replicas)"
echo "  local-bucket allowed:  ${local_allowed:-?} (rate_limit_decisions_total{backend=\"local\"}, total)"
echo "  /ready fail-open:      $ready_ok of 2 replicas"
echo "  redis down for:        ${down_s}s"
echo "  recovery:              ${recovery_s}s (limit ${RECOVERY_TIMEOUT}s)"
echo "  writes after recovery: $post_ok of 2 ok, $redis_decisions decided by redis"

[ "$failed" -eq 0 ] || chaos_fail "$failed of $OPS calls failed while Redis was down${codes:+ ($codes)}: pinsd did not fail open"
[ "$err_delta" -eq 0 ] || chaos_fail "memory_pins_operations_total{status=\"error\"} rose by $err_delta while Redis was down"
[ "$ready_ok" -eq 2 ] || chaos_fail "only $ready_ok of 2 replicas answered /ready 200 with redis 'down (fail-open)'"
[ "$recovered" -eq 1 ] || chaos_fail "replicas not back on Redis ${recovery_s}s after it started (limit ${RECOVERY_TIMEOUT}s)"
chaos_within "$recovery_s" "$RECOVERY_TIMEOUT" || chaos_fail "recovered only after ${recovery_s}s, over the limit of ${RECOVERY_TIMEOUT}s"
[ "$post_ok" -eq 2 ] || chaos_fail "a write after recovery failed ($post_ok of 2 ok)"
[ "$redis_decisions" -ge 2 ] || chaos_fail "writes after recovery were not decided by the Redis limiter ($redis_decisions of 2)"
chaos_pass "$ok/$OPS calls ok while Redis was down ${down_s}s (fail-open), recovered in ${recovery_s}s"
