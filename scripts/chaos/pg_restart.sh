#!/usr/bin/env bash
# Chaos experiment: PostgreSQL restart. Stops the stack's PostgreSQL, drives pin writes until the
# store circuit breaker opens on both pinsd replicas (calls then fail fast with 503), starts
# PostgreSQL again and measures the time until the breakers are closed, /ready answers 200 and
# writes succeed on both replicas.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: CHAOS_ALLOWED=true scripts/chaos/pg_restart.sh [--stack DIR] [OPTIONS]

Stops PostgreSQL of the local stack (deploy/local/stack.sh --dir DIR stop postgres), sends pin
writes (each of a distinct tenant, so the rate limiter never answers them) to both pinsd replicas
until both report breaker.state "open" in /api/v1/admin/status, checks that calls then fail fast
with 503 + Retry-After (all but one half-open probe per replica), starts PostgreSQL again and
waits until both replicas have the breaker closed, answer /ready 200 and accept a write.

PASS iff the breaker opened on both replicas, every answer while it was open (but the half-open
probe of each replica) took at most --fast-limit (fail fast), it closed again, and recovery (from the start of PostgreSQL, measured)
took at most --recovery-timeout.

options:
  --stack DIR             the stack (default $PINS_STACK_DIR, else ${XDG_RUNTIME_DIR:-/tmp}/pins-stack-<uid>)
  --open-timeout S        longest time to drive writes waiting for the breaker (default 120)
  --fast-limit S          slowest accepted 503 while the breaker is open (default 1)
  --recovery-timeout S    longest accepted recovery after PostgreSQL starts (default 300)
  -h, --help              this text

The breaker opens after more than BREAKER_ERRORS_PER_MIN store errors in a minute and stays open
BREAKER_OPEN_SECONDS before one probe (the stack's pinsd.env; stack.sh restart pinsd changes them).

Exit: 0 PASS, 1 FAIL or refused (CHAOS_ALLOWED not "true", pinsd says chaos_allowed=false,
no stack), 2 usage error. PostgreSQL is started again on every exit once it was stopped.
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

CHAOS_NAME=pg_restart
# shellcheck source=scripts/chaos/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

OPEN_TIMEOUT=120
RECOVERY_TIMEOUT=300
FAST_LIMIT=1
while [ $# -gt 0 ]; do
    case $1 in
    --stack) [ $# -ge 2 ] || chaos_usage_err "--stack needs a directory"; CHAOS_STACK_ARG=$2; shift 2 ;;
    --stack=*) CHAOS_STACK_ARG=${1#*=}; shift ;;
    --open-timeout) [ $# -ge 2 ] || chaos_usage_err "--open-timeout needs seconds"; chaos_int --open-timeout "$2" 1 3600; OPEN_TIMEOUT=$((10#$2)); shift 2 ;;
    --fast-limit) [ $# -ge 2 ] || chaos_usage_err "--fast-limit needs seconds"; chaos_int --fast-limit "$2" 1 60; FAST_LIMIT=$((10#$2)); shift 2 ;;
    --recovery-timeout) [ $# -ge 2 ] || chaos_usage_err "--recovery-timeout needs seconds"; chaos_int --recovery-timeout "$2" 1 3600; RECOVERY_TIMEOUT=$((10#$2)); shift 2 ;;
    *) chaos_usage_err "unknown argument '$1'" ;;
    esac
done

chaos_load_stack
chaos_check_target

for url in "${CHAOS_REPLICAS[@]}"; do
    st=$(chaos_status "$url")
    bs=$(jq -r '.breaker.state' <<<"$st")
    chaos_log "baseline $url: store $(jq -c '.store' <<<"$st") breaker $(jq -c '.breaker' <<<"$st")"
    [ "$bs" = closed ] || chaos_fail "baseline: $url breaker is '$bs', not closed"
    [ "$(chaos_code "$url/ready")" = 200 ] || chaos_fail "baseline: $url/ready is not 200"
done
run=$(chaos_fresh chaos-pg)

# One round: W writes on each replica, each of its own tenant; answers appended to $CHAOS_TMP/outage.out.
seq_no=0
round() {
    local w=$1 out=$2 cfg="$CHAOS_TMP/round.cfg" i url
    : >"$cfg"
    for ((i = 0; i < w; i++)); do
        for url in "${CHAOS_REPLICAS[@]}"; do
            seq_no=$((seq_no + 1))
            chaos_req "$cfg" POST "$url/api/v1/memory/pins" "$(chaos_write_json "$run-$seq_no" k)"
        done
    done
    chaos_run_batch "$cfg" 8 "$CHAOS_TMP/round.out"
    cat "$CHAOS_TMP/round.out" >>"$out"
}
breaker_states() {
    local url s=""
    for url in "${CHAOS_REPLICAS[@]}"; do s+="$(chaos_jq "$url" '.breaker.state' || true) "; done
    echo "${s% }"
}

CHAOS_RESTORE=("start postgres")
chaos_log "stopping postgres"
chaos_stack stop postgres >"$CHAOS_TMP/stop.log" 2>&1 || { cat "$CHAOS_TMP/stop.log"; chaos_fail "'stack.sh stop postgres' failed"; }
t_down=$(chaos_now)

: >"$CHAOS_TMP/outage.out"
opened=0
states=""
deadline=$((SECONDS + OPEN_TIMEOUT))
while :; do
    round 10 "$CHAOS_TMP/outage.out"
    states=$(breaker_states)
    if [ "$states" = "open open" ]; then opened=1; break; fi
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.2
done
open_s=$(chaos_since "$t_down")
outage_calls=$(wc -l <"$CHAOS_TMP/outage.out")
outage_codes=$(awk '{ c[$1]++ } END { for (k in c) printf "%s%s=%d", (n++ ? "," : ""), k, c[k] }' "$CHAOS_TMP/outage.out")
chaos_log "breaker states after ${open_s}s: $states (calls during the outage: $outage_calls, $outage_codes)"
metric_open=$(chaos_sum_metric 'circuit_breaker_state\{name="store"\}')

# While open: calls fail fast with 503 + Retry-After.
fast_503=0
fast_total=0
fast_max="-"
fast_slow=0
fast_codes=""
if [ "$opened" -eq 1 ]; then
    : >"$CHAOS_TMP/open.out"
    round 5 "$CHAOS_TMP/open.out"
    fast_total=$(wc -l <"$CHAOS_TMP/open.out")
    fast_503=$(awk '$1 == 503 && $2 != "-"' "$CHAOS_TMP/open.out" | wc -l)
    fast_codes=$(awk '{ c[$1]++ } END { for (k in c) printf "%s%s=%d", (n++ ? "," : ""), k, c[k] }' "$CHAOS_TMP/open.out")
    fast_max=$(awk '$1 == 503 { if ($3 > m) m = $3 } END { printf "%.3f", m }' "$CHAOS_TMP/open.out")
    fast_slow=$(awk -v lim="$FAST_LIMIT" '$3 > lim' "$CHAOS_TMP/open.out" | wc -l)
fi

chaos_log "starting postgres"
t_up=$(chaos_now)
down_s=$(chaos_since "$t_down")
chaos_stack start postgres >"$CHAOS_TMP/start.log" 2>&1 || { cat "$CHAOS_TMP/start.log"; chaos_fail "'stack.sh start postgres' failed"; }
CHAOS_RESTORE=()
recovered=0
deadline=$((SECONDS + RECOVERY_TIMEOUT))
probe=0
while :; do
    good=0
    for url in "${CHAOS_REPLICAS[@]}"; do
        probe=$((probe + 1))
        # The write is also what lets the breaker's probe run once BREAKER_OPEN_SECONDS passed.
        if chaos_try_write "$url" "$run-recover-$probe" k &&
            [ "$(chaos_jq "$url" '.breaker.state')" = closed ] &&
            [ "$(chaos_code "$url/ready")" = 200 ]; then
            good=$((good + 1))
        fi
    done
    if [ "$good" -eq 2 ]; then recovered=1; break; fi
    [ "$SECONDS" -lt "$deadline" ] || break
    sleep 0.5
done
recovery_s=$(chaos_since "$t_up")
final_states=$(breaker_states)

echo "figures:"
echo "  breaker opened:        $([ "$opened" -eq 1 ] && echo "yes, ${open_s}s after PostgreSQL stopped" || echo "no (states: $states after ${open_s}s)")"
echo "  calls while opening:   $outage_calls (${outage_codes:-none})"
echo "  circuit_breaker_state: ${metric_open:-?} (sum over both replicas when open; 1 = open each)"
echo "  fail fast while open:  $fast_503 of $fast_total answered 503 + Retry-After (${fast_codes:-none}), slowest 503 ${fast_max}s, $fast_slow over ${FAST_LIMIT}s"
echo "  postgres down for:     ${down_s}s"
echo "  recovery:              ${recovery_s}s (limit ${RECOVERY_TIMEOUT}s): breaker $final_states"

[ "$opened" -eq 1 ] || chaos_fail "the breaker did not open on both replicas within ${OPEN_TIMEOUT}s of PostgreSQL being down (states: $states)"
# Once BREAKER_OPEN_SECONDS pass, one call per replica is let through as the half-open probe.
if [ "$fast_503" -lt $((fast_total - 2)) ] || [ "$fast_503" -lt 1 ]; then
    chaos_fail "only $fast_503 of $fast_total calls answered 503 + Retry-After while the breaker was open (${fast_codes:-none})"
fi
# The same allowance: the half-open probe (one per replica) may wait for the store.
if [ "$fast_slow" -gt 2 ]; then
    chaos_fail "$fast_slow of the $fast_total answers while the breaker was open took over ${FAST_LIMIT}s (slowest 503 ${fast_max}s): not failing fast"
fi
[ "$recovered" -eq 1 ] || chaos_fail "not recovered ${recovery_s}s after PostgreSQL started (limit ${RECOVERY_TIMEOUT}s; breaker $final_states)"
chaos_within "$recovery_s" "$RECOVERY_TIMEOUT" || chaos_fail "recovered only after ${recovery_s}s, over the limit of ${RECOVERY_TIMEOUT}s"
chaos_pass "breaker opened after ${open_s}s, closed again; recovered in ${recovery_s}s"
