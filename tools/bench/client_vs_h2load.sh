#!/usr/bin/env bash
# tools/bench/client_vs_h2load.sh: pinsctl bench (libpins-client) against h2load, driving the
# same pinsd with the same GetPin, from the same core.
#
#   tools/bench/client_vs_h2load.sh [-D S] [--rounds N] [-c N] [-m N] [-- PINSD_FLAGS]
#
#   -D S           seconds per load run, after 1 s of warmup [5] (at most 20)
#   --rounds N     h2load / pinsctl bench pairs, alternating [3] (at most 10)
#   -c N, -m N     connections and streams per connection, the same for both [16, 32]
#   -- FLAGS       extra flags for pinsd
#
# It builds pinsd and pinsctl (Release, build-release/), starts pinsd with one worker pinned to
# CPU 0 on 127.0.0.1:50051 (RATE_LIMIT_RPM=0, SQLite in a temp dir under /tmp), upserts the pin
# bench-t0/bench-0 with `pinsctl bench --prefill --keys 1`, then alternates on CPU 1 (taskset):
#   h2load -c C -m M -t 1 -D S --warm-up-time=1 -d BODY  (BODY: the GetPin request as a gRPC frame)
#   pinsctl bench -c C -m M -d S --warmup 1s --keys 1    (the same GetPin: same tenant, same key)
# Each run's GetPin calls are also counted by pinsd (grpc_server_handled_total by code, from
# /metrics before and after): every one must be OK (h2load sees only HTTP statuses), and the
# client's CPU time (user + system, from the shell's `times`) divided by them gives the client's
# cost per call (pinsd's own, from /proc, is shown beside it). It prints each run (in the order A B B A ...), the medians of GetPin/s and of
# the CPU per call, and the ratios pinsctl / h2load.
# pinsd is stopped by pid on exit, also on failure or Ctrl-C; temporary files live under /tmp.
# PINSCTL_BIN=... measures another pinsctl instead of build-release/'s.
# Exit status: 0 every run was all OK and pinsctl bench drove at least h2load's median GetPin/s
# (or, when pinsd's core is the limit and the rates are within 3%, spent no more client CPU per
# call than h2load), 1 otherwise.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools/bench/common.sh
. "$HERE/common.sh"

DUR=5 ROUNDS=3 C=16 M=32
TARGET=127.0.0.1:50051 SERVER_CPU=0 LOAD_CPU=1
bench_options -D=DUR+ --rounds=ROUNDS+ -c=C+ -m=M+ -- "$@"
((DUR <= 20)) || pins_die "-D must be at most 20 s"
((ROUNDS <= 10)) || pins_die "--rounds must be at most 10"
(($(nproc) >= 2)) || pins_die "needs 2 CPUs (pinsd on CPU $SERVER_CPU, the load on CPU $LOAD_CPU)"
command -v h2load >/dev/null || pins_die "h2load not found (apt-get install nghttp2-client, or tools/deps.sh --bench)"
command -v curl >/dev/null || pins_die "curl not found"

WORK="" CHILD=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$CHILD" ]]; then
    kill -TERM -- "-$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  pinsd_stop
  [[ -z "$WORK" ]] || rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bench_build
PINSCTL_BIN=${PINSCTL_BIN:-$PINS_ROOT/build-release/pinsctl}
"$PINSCTL_BIN" bench --help >/dev/null 2>&1 || pins_die "$PINSCTL_BIN has no bench command"
WORK=$(mktemp -d /tmp/pinsd-client-vs-h2load.XXXXXX)

pinsd_start "$TARGET" "$SERVER_CPU" --PINS_WORKERS=1 "${PINSD_FLAGS[@]}"
run_child taskset -c "$LOAD_CPU" timeout 60 "$PINSCTL_BIN" bench --addr "$TARGET" --prefill \
  --keys 1 -n 1 --json >"$WORK/prefill.json" || pins_die "the prefill failed"

# GetPin{tenant_id: "bench-t0", key: "bench-0"} in a gRPC frame (uncompressed, 4-byte length).
"$PY" - "$WORK/getpin.bin" <<'EOF'
import struct, sys
t, k = b"bench-t0", b"bench-0"
msg = b"\x0a" + bytes([len(t)]) + t + b"\x12" + bytes([len(k)]) + k
open(sys.argv[1], "wb").write(b"\x00" + struct.pack(">I", len(msg)) + msg)
EOF

# getpin_count CODE: GetPin calls pinsd finished with CODE ("" for every code) so far.
getpin_count() {
  curl -sf "http://$TARGET/metrics" | awk -v code="$1" '
    /^grpc_server_handled_total\{grpc_service="memorypins.v1.MemoryPins",grpc_method="GetPin",/ {
      if (code == "" || index($0, "grpc_code=\"" code "\"") > 0) n += $NF
    }
    END { printf "%d\n", n }'
}

# server_ticks: pinsd's user + system clock ticks so far (/proc/PID/stat fields 14 and 15).
server_ticks() {
  awk '{ print $14 + $15 }' "/proc/$PINSD_PID/stat"
}

# children_cpu FILE: user + system seconds of this shell's waited-for children so far, into FILE
# (`times` must run in this shell, not in a command substitution's subshell).
children_cpu() {
  times >"$WORK/times"
  awk 'NR == 2 {
    split($1, u, /[ms]/); split($2, s, /[ms]/)
    printf "%.3f\n", u[1] * 60 + u[2] + s[1] * 60 + s[2]
  }' "$WORK/times" >"$1"
}

H2_RATES=() CTL_RATES=() H2_CPU=() CTL_CPU=() fail=0
# one_run NAME CMD...: runs CMD on the load CPU, checks pinsd's count of GetPin calls, prints a
# line and leaves GetPin/s in RATE and the client's CPU microseconds per call in PER_CALL.
one_run() {
  local name=$1 all0 ok0 all1 ok1 cpu0 cpu1 st0 st1 rc=0
  shift
  all0=$(getpin_count "") ok0=$(getpin_count OK)
  children_cpu "$WORK/cpu0"
  st0=$(server_ticks)
  run_child taskset -c "$LOAD_CPU" timeout $((DUR + 30)) "$@" >"$WORK/$name.out" 2>"$WORK/$name.err" || rc=$?
  st1=$(server_ticks)
  children_cpu "$WORK/cpu1"
  cpu0=$(cat "$WORK/cpu0") cpu1=$(cat "$WORK/cpu1")
  all1=$(getpin_count "") ok1=$(getpin_count OK)
  RATE=0 PER_CALL=0
  if ((rc != 0)); then
    tail -n 20 "$WORK/$name.out" "$WORK/$name.err" >&2
    pins_note "$name exited $rc"
    fail=1
    return
  fi
  case "$name" in
    h2load*) RATE=$(awk '/^finished in/ { gsub(/,/, "", $4); print $4 }' "$WORK/$name.out") ;;
    *) RATE=$("$PY" -c 'import json,sys; print("%.2f" % json.load(open(sys.argv[1]))["rps"])' "$WORK/$name.out") ;;
  esac
  local calls=$((all1 - all0)) bad=$(((all1 - all0) - (ok1 - ok0)))
  PER_CALL=$(awk -v n="$calls" -v c1="$cpu1" -v c0="$cpu0" 'BEGIN { printf "%.3f", (n > 0 ? (c1 - c0) * 1e6 / n : 0) }')
  awk -v name="$name" -v rate="$RATE" -v n="$calls" -v bad="$bad" -v c1="$cpu1" -v c0="$cpu0" \
    -v pc="$PER_CALL" -v hz="$(getconf CLK_TCK)" -v st="$((st1 - st0))" 'BEGIN {
    printf "  %-16s %9.1f GetPin/s  pinsd: %d calls, %d not OK, %.2f us CPU per call; client: %.2f s CPU, %.2f us per call\n",
      name, rate, n, bad, (n > 0 ? st * 1e6 / hz / n : 0), c1 - c0, pc }'
  if ((bad != 0 || calls == 0)); then
    pins_note "$name: pinsd answered $bad GetPin calls with an error"
    fail=1
  fi
}

run_h2load() {
  one_run "h2load#$1" h2load -c "$C" -m "$M" -t 1 -D "$DUR" --warm-up-time=1 -d "$WORK/getpin.bin" \
    -H 'content-type: application/grpc' -H 'te: trailers' "$URL"
  H2_RATES+=("$RATE")
  H2_CPU+=("$PER_CALL")
}
run_pinsctl() {
  one_run "pinsctl-bench#$1" "$PINSCTL_BIN" bench --addr "$TARGET" -c "$C" -m "$M" -d "${DUR}s" \
    --warmup 1s --keys 1 --json
  CTL_RATES+=("$RATE")
  CTL_CPU+=("$PER_CALL")
}

URL="http://$TARGET/memorypins.v1.MemoryPins/GetPin"
echo "pinsd: 1 worker on CPU $SERVER_CPU; load on CPU $LOAD_CPU; c=$C m=$M, ${DUR} s after 1 s of warmup"
echo "  h2load -c $C -m $M -t 1 -D $DUR --warm-up-time=1 -d <GetPin frame> -H 'content-type: application/grpc' -H 'te: trailers' $URL"
echo "  pinsctl bench --addr $TARGET -c $C -m $M -d ${DUR}s --warmup 1s --keys 1 --json"
# A B B A ...: a drift of the machine's load over the rounds favours neither side.
for ((i = 1; i <= ROUNDS; i++)); do
  if ((i % 2)); then
    run_h2load "$i"
    run_pinsctl "$i"
  else
    run_pinsctl "$i"
    run_h2load "$i"
  fi
done

median() { printf '%s\n' "$@" | sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
H2_MED=$(median "${H2_RATES[@]}") CTL_MED=$(median "${CTL_RATES[@]}")
H2_PC=$(median "${H2_CPU[@]}") CTL_PC=$(median "${CTL_CPU[@]}")
RATIO=$(awk -v a="$CTL_MED" -v b="$H2_MED" 'BEGIN { printf "%.3f", (b > 0 ? a / b : 0) }')
CAP_RATIO=$(awk -v a="$CTL_PC" -v b="$H2_PC" 'BEGIN { printf "%.3f", (a > 0 ? b / a : 0) }')
echo
echo "median GetPin/s:        h2load $H2_MED, pinsctl bench $CTL_MED; ratio pinsctl/h2load $RATIO"
echo "median client CPU/call: h2load $H2_PC us, pinsctl bench $CTL_PC us; calls per client CPU-second,"
echo "                        ratio pinsctl/h2load $CAP_RATIO"
((fail == 0)) || pins_die "some runs failed or had errors (see above)"
# When pinsd's one core is the limit, both clients reach about the same rate and the rounds' noise
# decides the GetPin/s ratio; then what the client could drive from its core is 1 / its CPU per
# call. Either figure shows pinsctl bench keeping up with h2load.
awk -v r="$RATIO" -v c="$CAP_RATIO" 'BEGIN { exit !(r >= 1.0 || (r >= 0.97 && c >= 1.0)) }' ||
  pins_die "pinsctl bench drove fewer GetPin/s than h2load (ratio $RATIO, CPU per call ratio $CAP_RATIO)"
