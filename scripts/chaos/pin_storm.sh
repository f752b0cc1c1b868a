#!/usr/bin/env bash
# Chaos experiment: memory pin storm. 1000 rapid writes to ONE fresh tenant, split across both pinsd
# replicas; the rate limiter's bucket is shared through Redis, so the writes accepted by both
# replicas together must be exactly what one token bucket allows.
set -euo pipefail

usage() {
    cat <<'EOF'
usage: CHAOS_ALLOWED=true scripts/chaos/pin_storm.sh [--stack DIR] [OPTIONS]

Sends N pin writes (REST POST /api/v1/memory/pins) of one fresh tenant, alternating between the two
pinsd replicas, C at a time, and counts the answers. The limiter's rpm and burst come from the
replicas' /api/v1/admin/status.

PASS iff the writes accepted (2xx) by both replicas together are within
[min(N, burst), burst + ceil(rpm * elapsed / 60) + 1] (one shared bucket: with a per-replica bucket
they would double), every other answer is 429 with a Retry-After header, and nothing answered 5xx
or failed.

options:
  --stack DIR        the stack (default $PINS_STACK_DIR, else ${XDG_RUNTIME_DIR:-/tmp}/pins-stack-<uid>)
  -n, --requests N   writes (default 1000, 1..100000)
  -c, --concurrency C  writes in flight (default 20, 1..256)
  --tenant NAME      the tenant (default a fresh chaos-storm-<time>-<pid>-<random>); it must be
                     fresh: writes it received earlier have used its bucket
  -h, --help         this text

Exit: 0 PASS, 1 FAIL or refused (CHAOS_ALLOWED not "true", pinsd says chaos_allowed=false,
no stack), 2 usage error.
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

CHAOS_NAME=pin_storm
# shellcheck source=scripts/chaos/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

N=1000
C=20
TENANT=""
while [ $# -gt 0 ]; do
    case $1 in
    --stack) [ $# -ge 2 ] || chaos_usage_err "--stack needs a directory"; CHAOS_STACK_ARG=$2; shift 2 ;;
    --stack=*) CHAOS_STACK_ARG=${1#*=}; shift ;;
    -n | --requests) [ $# -ge 2 ] || chaos_usage_err "$1 needs a number"; chaos_int "$1" "$2" 1 100000; N=$((10#$2)); shift 2 ;;
    -c | --concurrency) [ $# -ge 2 ] || chaos_usage_err "$1 needs a number"; chaos_int "$1" "$2" 1 256; C=$((10#$2)); shift 2 ;;
    --tenant) [ $# -ge 2 ] || chaos_usage_err "--tenant needs a name"; TENANT=$2; shift 2 ;;
    *) chaos_usage_err "unknown argument '$1'" ;;
    esac
done
[[ -z $TENANT || $TENANT =~ ^[A-Za-z0-9._:-]{1,200}$ ]] || chaos_usage_err "--tenant: letters, digits, . _ : - only"

chaos_load_stack
chaos_check_target

s1=$(chaos_status "$PINSD_URL")
s2=$(chaos_status "$PINSD2_URL")
RPM=$(jq -r '.limiter.rpm' <<<"$s1")
BURST=$(jq -r '.limiter.burst' <<<"$s1")
for url in "${CHAOS_REPLICAS[@]}"; do
    st=$s1
    [ "$url" = "$PINSD2_URL" ] && st=$s2
    chaos_log "$url: limiter $(jq -c '.limiter' <<<"$st"), redis $(jq -r '.redis.state' <<<"$st")"
done
[[ $RPM =~ ^[0-9]+$ && $BURST =~ ^[0-9]+$ ]] || chaos_fail "cannot read limiter rpm/burst from $PINSD_URL/api/v1/admin/status"
if [ "$(jq -r '.limiter.rpm' <<<"$s2")" != "$RPM" ] || [ "$(jq -r '.limiter.burst' <<<"$s2")" != "$BURST" ]; then
    chaos_fail "the replicas disagree on the limit: $(jq -c .limiter <<<"$s1") vs $(jq -c .limiter <<<"$s2")"
fi

[ -n "$TENANT" ] || TENANT=$(chaos_fresh chaos-storm)
cfg="$CHAOS_TMP/storm.cfg"
: >"$cfg"
for ((i = 0; i < N; i++)); do
    printf -v body '{"tenant_id":"%s","key":"storm-%d","value":{"chaos":"pin_storm"},"source":"chaos"}' "$TENANT" "$i"
    chaos_req "$cfg" POST "${CHAOS_REPLICAS[$((i % 2))]}/api/v1/memory/pins" "$body"
done
chaos_log "storm: $N writes of tenant $TENANT, $C in flight, alternating replicas"
t0=$(chaos_now)
chaos_run_batch "$cfg" "$C" "$CHAOS_TMP/storm.out"
elapsed=$(chaos_since "$t0")

out="$CHAOS_TMP/storm.out"
answered=$(wc -l <"$out")
accepted=$(awk '$1 ~ /^2/' "$out" | wc -l)
limited=$(awk '$1 == 429' "$out" | wc -l)
limited_no_ra=$(awk '$1 == 429 && $2 == "-"' "$out" | wc -l)
errors5=$(awk '$1 ~ /^5/' "$out" | wc -l)
other=$((N - accepted - limited - errors5))
other_codes=$(awk '$1 !~ /^2/ && $1 != 429 { c[$1]++ } END { for (k in c) printf "%s%s=%d", (n++ ? "," : ""), k, c[k] }' "$out")
ra_range=$(awk '$1 == 429 && $2 != "-" { v = $2; sub(/-$/, "", v); v += 0; if (!n++ || v < lo) lo = v; if (v > hi) hi = v } END { if (n) printf "%d..%d s", lo, hi; else printf "-" }' "$out")

lo=$BURST
[ "$N" -ge "$lo" ] || lo=$N
refill=$(awk -v r="$RPM" -v e="$elapsed" 'BEGIN { x = r * e / 60; c = int(x); if (c < x) c++; print c }')
hi=$((BURST + refill + 1))

echo "figures:"
echo "  tenant:          $TENANT"
echo "  writes sent:     $N ($answered answered, $C in flight, both replicas)"
echo "  accepted:        $accepted"
echo "  limited (429):   $limited ($limited_no_ra without Retry-After; Retry-After $ra_range)"
echo "  errors (5xx):    $errors5"
echo "  other:           $other${other_codes:+ (codes: $other_codes)}"
echo "  limit:           rpm $RPM, burst $BURST"
echo "  expected range:  [$lo, $hi] accepted"
echo "  elapsed:         ${elapsed}s"

[ "$RPM" -gt 0 ] || chaos_fail "rate limiting is disabled (RATE_LIMIT_RPM=0): $accepted of $N writes accepted"
[ "$errors5" -eq 0 ] || chaos_fail "$errors5 writes answered 5xx"
[ "$other" -eq 0 ] || chaos_fail "$other writes neither accepted nor 429 ($other_codes)"
[ "$limited_no_ra" -eq 0 ] || chaos_fail "$limited_no_ra answers 429 without Retry-After"
if [ "$accepted" -lt "$lo" ] || [ "$accepted" -gt "$hi" ]; then
    chaos_fail "accepted $accepted outside [$lo, $hi] (burst $BURST + rpm $RPM over ${elapsed}s): the replicas do not share one bucket"
fi
chaos_pass "accepted $accepted of $N within [$lo, $hi], limited $limited (429 + Retry-After), 0 errors, ${elapsed}s"
