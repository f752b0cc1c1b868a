#!/usr/bin/env bash
# tools/bench/auth_overhead.sh: what RBAC enforcement with a JWT and the Redis rate limiter cost.
# GetPin throughput on one pinsd with both on against one with both off, same core, same load.
#
#   tools/bench/auth_overhead.sh [-D S] [--rounds N] [-c N] [-m N] [--redis-cpu LIST] [--split]
#                                [-- PINSD_FLAGS]
#
#   -D S              seconds per load run [5] (at most 20)
#   --rounds N        on/off pairs [3] (at most 10)
#   -c N, -m N        connections and streams per connection [16, 32]
#   --redis-cpu LIST  taskset for redis-server [0, the server CPU]; "" leaves it unpinned
#   --split           also measure each half alone: "rbac" (127.0.0.1:50053, RBAC + JWT, no limiter)
#                     and "redis" (127.0.0.1:50054, the Redis limiter, RBAC_ENFORCE=false, no token)
#   -- FLAGS          extra flags for both pinsd instances
#
# It builds pinsd (Release, build-release/) and starts, pinned to CPU 0, each with the embedded
# store in its own temp dir under /tmp:
#   on   127.0.0.1:50052  RBAC_ENFORCE=true, JWT_SECRET (random, never printed), REDIS_URL to a
#                         redis-server started here on a free loopback port (--save '' --appendonly
#                         no), RATE_LIMIT_RPM=RATE_LIMIT_BURST=1000000 (pinsd's maximum; it refuses
#                         more); calls carry 'authorization: Bearer <HS256 JWT, roles ["admin"]>',
#                         minted with python3 hmac/hashlib/base64
#   off  127.0.0.1:50051  RBAC_ENFORCE=false, no JWT_SECRET, no REDIS_URL, RATE_LIMIT_RPM=0
# and runs $BENCH_DIR/grpc_load.sh GetPin on CPU 1, on / off alternating for --rounds rounds. The
# Redis bucket is emptied (FLUSHALL on our own redis-server) before every "on" run, so a long run
# never meets the limit. Before loading it checks that "on" really enforces (GetPin without the
# token must be refused); afterwards it prints on's rbac / rate_limit metrics and Redis's EVALSHA
# count, which show whether the calls were decided by Redis or by the local fallback bucket.
# Prints every run, the medians and the ratio on/off of req/s (the target is >= 0.85x).
# Both pinsd and redis-server are stopped by pid on exit, also on failure or Ctrl-C.
# Exit status: 0 every run was all OK, 1 a run had errors or something failed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools/bench/common.sh
. "$HERE/common.sh"

DUR=5 ROUNDS=3 C=16 M=32 REDIS_CPU=0 SPLIT=0
ON=127.0.0.1:50052 OFF=127.0.0.1:50051 RBAC_ONLY=127.0.0.1:50053 REDIS_ONLY=127.0.0.1:50054 SERVER_CPU=0 LOAD_CPU=1 RPM=1000000
bench_options -D=DUR+ --rounds=ROUNDS+ -c=C+ -m=M+ --redis-cpu=REDIS_CPU: --split=SPLIT=1 -- "$@"
((DUR <= 20)) || pins_die "-D must be at most 20 s"
((ROUNDS <= 10)) || pins_die "--rounds must be at most 10"
(($(nproc) >= 2)) || pins_die "needs 2 CPUs (servers on CPU $SERVER_CPU, load on CPU $LOAD_CPU)"
command -v h2load >/dev/null || pins_die "h2load not found (apt-get install nghttp2-client, or tools/deps.sh --bench)"
for tool in redis-server redis-cli; do
  command -v "$tool" >/dev/null || pins_die "$tool not found (apt-get install redis-server)"
done

# Only what is set below reaches the two instances.
unset DATABASE_URL REDIS_URL JWT_SECRET MACHINE_SECRET_TOKEN RBAC_ENFORCE RBAC_FAIL_OPEN RBAC_TRUST_X_ROLES \
  RBAC_POLICY_FILE RATE_LIMIT_RPM RATE_LIMIT_BURST

WORK=$(mktemp -d /tmp/pinsd-auth-overhead.XXXXXX)
JSONL="$WORK/runs.jsonl"
: >"$JSONL"
ON_PID="" ON_TMP="" OFF_PID="" OFF_TMP="" RB_PID="" RB_TMP="" RE_PID="" RE_TMP="" REDIS_PID="" CHILD=""
stop_pinsd() { # PID TMP: pinsd_stop for one of our two instances
  PINSD_PID=$1 PINSD_TMP=$2
  pinsd_stop
}
cleanup() {
  local rc=$? i
  trap - EXIT INT TERM
  exec >&2
  if [[ -n "$CHILD" ]]; then # a running grpc_load.sh and its h2load
    kill -TERM -- "-$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  stop_pinsd "$ON_PID" "$ON_TMP"
  stop_pinsd "$OFF_PID" "$OFF_TMP"
  stop_pinsd "$RB_PID" "$RB_TMP"
  stop_pinsd "$RE_PID" "$RE_TMP"
  if [[ -n "$REDIS_PID" ]] && kill -0 "$REDIS_PID" 2>/dev/null; then
    kill -TERM "$REDIS_PID" 2>/dev/null || true
    for ((i = 0; i < 100; i++)); do
      kill -0 "$REDIS_PID" 2>/dev/null || break
      sleep 0.1
    done
    kill -0 "$REDIS_PID" 2>/dev/null && kill -KILL "$REDIS_PID" 2>/dev/null
    wait "$REDIS_PID" 2>/dev/null || true
    pins_note "redis-server stopped (pid $REDIS_PID)"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bench_build

# redis-server on a free loopback port, no persistence, data dir in our temp dir.
RPORT=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
REDIS_ARGS=(redis-server --bind 127.0.0.1 --port "$RPORT" --save '' --appendonly no --dir "$WORK"
  --protected-mode yes --daemonize no --logfile "$WORK/redis.log")
[[ -n "$REDIS_CPU" ]] && REDIS_ARGS=(taskset -c "$REDIS_CPU" "${REDIS_ARGS[@]}")
"${REDIS_ARGS[@]}" </dev/null >/dev/null 2>&1 &
REDIS_PID=$!
for ((i = 0; i < 100; i++)); do
  [[ "$(redis-cli -h 127.0.0.1 -p "$RPORT" ping 2>/dev/null)" == PONG ]] && break
  kill -0 "$REDIS_PID" 2>/dev/null || { tail -5 "$WORK/redis.log" >&2; REDIS_PID=""; pins_die "redis-server exited"; }
  sleep 0.1
done
[[ "$(redis-cli -h 127.0.0.1 -p "$RPORT" ping 2>/dev/null)" == PONG ]] || pins_die "redis-server did not answer PING on 127.0.0.1:$RPORT"
pins_note "redis-server started, pid $REDIS_PID${REDIS_CPU:+, CPU $REDIS_CPU}, 127.0.0.1:$RPORT"
rcli() { redis-cli -h 127.0.0.1 -p "$RPORT" "$@"; }

# A random HS256 secret and an admin token for it (both passed through the environment, not argv).
SECRET=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
TOKEN=$(JWT_SECRET=$SECRET "$PY" - <<'PYEOF'
import base64, hashlib, hmac, json, os, time
def b64(b):
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()
def part(obj):
    return b64(json.dumps(obj, separators=(",", ":")).encode())
now = int(time.time())
signing = part({"alg": "HS256", "typ": "JWT"}) + "." + part(
    {"sub": "bench", "roles": ["admin"], "iat": now, "nbf": now - 60, "exp": now + 3 * 3600})
sig = hmac.new(os.environ["JWT_SECRET"].encode(), signing.encode(), hashlib.sha256).digest()
print(signing + "." + b64(sig))
PYEOF
)
AUTH_H="authorization: Bearer $TOKEN"

RBAC_ENFORCE=false RATE_LIMIT_RPM=0 pinsd_start "$OFF" "$SERVER_CPU" "${PINSD_FLAGS[@]}"
OFF_PID=$PINSD_PID OFF_TMP=$PINSD_TMP PINSD_PID="" PINSD_TMP=""
RBAC_ENFORCE=true JWT_SECRET=$SECRET REDIS_URL="redis://127.0.0.1:$RPORT/0" \
  RATE_LIMIT_RPM=$RPM RATE_LIMIT_BURST=$RPM pinsd_start "$ON" "$SERVER_CPU" "${PINSD_FLAGS[@]}"
ON_PID=$PINSD_PID ON_TMP=$PINSD_TMP PINSD_PID="" PINSD_TMP=""
if ((SPLIT)); then
  RBAC_ENFORCE=true JWT_SECRET=$SECRET RATE_LIMIT_RPM=0 pinsd_start "$RBAC_ONLY" "$SERVER_CPU" "${PINSD_FLAGS[@]}"
  RB_PID=$PINSD_PID RB_TMP=$PINSD_TMP PINSD_PID="" PINSD_TMP=""
  RBAC_ENFORCE=false REDIS_URL="redis://127.0.0.1:$RPORT/0" RATE_LIMIT_RPM=$RPM RATE_LIMIT_BURST=$RPM \
    pinsd_start "$REDIS_ONLY" "$SERVER_CPU" "${PINSD_FLAGS[@]}"
  RE_PID=$PINSD_PID RE_TMP=$PINSD_TMP PINSD_PID="" PINSD_TMP=""
fi
for ((i = 0; i < 50; i++)); do # the limiter's Redis connection comes up after the listener
  ready=$(curl -s --max-time 2 "http://$ON/ready" || true)
  [[ "$ready" == *'"ok"'* && "$ready" != *down* ]] && break
  sleep 0.1
done
echo "on's /ready: $ready"

SVC=memorypins.v1.MemoryPins
PIN='{"tenant_id":"bench","key":"bench:k1","value":{"a":1,"note":"bench"},"ttl_seconds":3600}'
GET='{"tenant_id":"bench","key":"bench:k1"}'
GL=("$BENCH_DIR/grpc_load.sh" --method "$SVC/GetPin" --json "$GET" --seed-method "$SVC/UpsertPin"
  --seed-json "$PIN" -c "$C" -m "$M" -D "$DUR" --cpu "$LOAD_CPU")

# Enforcement check: without the token the "on" instance must refuse GetPin (pre-flight, exit 2).
rc=0
out=$(timeout 60 "$BENCH_DIR/grpc_load.sh" --addr "$ON" --method "$SVC/GetPin" --json "$GET" -n 1 2>&1) || rc=$?
if ((rc == 2)) && [[ "$out" == *PERMISSION_DENIED* || "$out" == *UNAUTHENTICATED* ]]; then
  echo "enforcement check: GetPin on $ON without a token is refused ($(grep -o 'PERMISSION_DENIED\|UNAUTHENTICATED' <<<"$out" | head -1))"
else
  pins_die "RBAC does not seem enforced on $ON: GetPin without a token gave exit $rc: $out"
fi

fail=0
run() { # LABEL ADDR [ARGS...]
  local label=$1 addr=$2 rc=0
  shift 2
  run_child timeout $((DUR * 3 + 90)) "${GL[@]}" --addr "$addr" "$@" --label "$label" \
    --json-out "$JSONL" >"$WORK/run.out" 2>&1 || rc=$?
  if ((rc != 0)); then
    fail=1
    echo "  [exit $rc] $(tail -n 3 "$WORK/run.out" | tr '\n' ' ')"
  else
    echo "  $(tail -n 1 "$WORK/run.out")"
  fi
}
L_ON="GetPin on (RBAC+JWT, Redis limiter) c=$C m=$M" L_OFF="GetPin off c=$C m=$M"
L_RB="GetPin rbac only (RBAC+JWT) c=$C m=$M" L_RE="GetPin redis only (Redis limiter) c=$C m=$M"
pins_note "GetPin, on ($ON) / off ($OFF) alternating, $ROUNDS rounds of $DUR s, servers on CPU $SERVER_CPU, h2load on CPU $LOAD_CPU"
for ((r = 1; r <= ROUNDS; r++)); do
  rcli FLUSHALL >/dev/null
  run "$L_ON" "$ON" -H "$AUTH_H"
  run "$L_OFF" "$OFF"
  if ((SPLIT)); then
    run "$L_RB" "$RBAC_ONLY" -H "$AUTH_H"
    rcli FLUSHALL >/dev/null
    run "$L_RE" "$REDIS_ONLY"
  fi
done

echo
echo "on's metrics after the runs (rbac, rate limiter) and Redis's script calls (every instance using it):"
curl -s --max-time 5 "http://$ON/metrics" | grep -E '^(rbac_decisions_total|rate_limit_decisions_total|rate_limit_redis_up)' | sed 's/^/  /' || true
rcli INFO commandstats | grep -E 'cmdstat_(evalsha|eval|script)' | sed 's/^/  /' || true
echo
echo "pinsd on: $ON, off: $OFF, both on CPU $SERVER_CPU (embedded store), redis-server on CPU ${REDIS_CPU:-any}, h2load on CPU $LOAD_CPU; $ROUNDS rounds of $DUR s"
"$PY" "$BENCH_DIR/lib/summarize.py" "$JSONL"
"$PY" - "$JSONL" "$L_ON" "$L_OFF" "$L_RB" "$L_RE" <<'PYEOF'
import json, statistics, sys
path, l_on, l_off, l_rb, l_re = sys.argv[1:6]
recs = [json.loads(l) for l in open(path) if l.strip()]
def med(label, field):
    v = [r[field] for r in recs if r["label"] == label and r.get(field) is not None]
    return statistics.median(v) if v else None
on, off = med(l_on, "rps"), med(l_off, "rps")
if not on or not off:
    print("ratio on/off: n/a (a side has no usable run)")
    sys.exit(0)
x = on / off
print(f"ratio on/off: req/s {on:.0f} / {off:.0f} = {x:.2f}x   target >= 0.85x: {'meets' if x >= 0.85 else 'MISSES'}"
      f"   p50 {med(l_on, 'p50_ms') / med(l_off, 'p50_ms'):.2f}x   p99 {med(l_on, 'p99_ms') / med(l_off, 'p99_ms'):.2f}x")
for name, label in (("rbac only/off", l_rb), ("redis only/off", l_re)):
    v = med(label, "rps")
    if v:
        print(f"ratio {name}: req/s {v:.0f} / {off:.0f} = {v / off:.2f}x")
PYEOF
((fail == 0)) || pins_die "some runs were not all OK (see the lines marked NOT ALL OK or [exit N] above)"
