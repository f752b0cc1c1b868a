#!/usr/bin/env bash
# tools/bench/cpu_per_request.sh: pinsd's own CPU time per request, for one or more binaries.
#
#   tools/bench/cpu_per_request.sh [-n N] [--rounds R] PINSD_BIN [PINSD_BIN...]
#
#   -n N          requests per measurement [200000] (count mode: every binary does the same work)
#   --rounds R    times each binary is measured, alternating between binaries [2] (at most 10)
#
# Throughput ratios on a shared machine swing by 10-20% from run to run with the neighbours' load;
# the CPU time the server spends per request moves far less, so it is the figure to compare two
# builds of pinsd with (before and after a change). Each binary is started in turn on
# 127.0.0.1:50071 by common.sh's pinsd_start (SQLite in a temp dir, 1 worker pinned to CPU 0),
# then $BENCH_DIR/rest_load.sh and grpc_load.sh send N requests each with h2load on CPU 1: REST GET
# and POST (HTTP/1.1, 64 connections), gRPC GetPin and UpsertPin (16 connections x 32 streams).
# The server's utime+stime from /proc before and after each load gives microseconds per request
# (the clock tick is 10 ms: at N=200000 one tick is 0.05 us). pinsd is stopped by pid after each
# binary, also on failure or Ctrl-C. Exit status: 0 every run was all OK, 1 otherwise.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools/bench/common.sh
. "$HERE/common.sh"

N=200000 ROUNDS=2 BINS=()
while (($#)); do
  case "$1" in
    -n)
      if (($# < 2)) || ! [[ "$2" =~ ^[1-9][0-9]*$ ]]; then pins_die "-n needs a positive integer"; fi
      N=$2
      shift 2
      ;;
    --rounds)
      if (($# < 2)) || ! [[ "$2" =~ ^([1-9]|10)$ ]]; then pins_die "--rounds needs 1..10"; fi
      ROUNDS=$2
      shift 2
      ;;
    -h | --help) sed -n '2,19p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    -*) pins_die "unknown option $1 (see --help)" ;;
    *) [[ -x "$1" ]] || pins_die "$1 is not an executable"; BINS+=("$1"); shift ;;
  esac
done
((${#BINS[@]} > 0)) || pins_die "name at least one pinsd binary (see --help)"
ADDR=127.0.0.1:50071
HZ=$(getconf CLK_TCK)
trap pinsd_stop EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
ticks() { awk '{ print $14 + $15 }' "/proc/$PINSD_PID/stat"; }
fail=0
measure() { # label command...
  local label=$1 t0 t1
  shift
  t0=$(ticks)
  timeout 300 "$@" >/dev/null 2>&1 || { echo "  $label: the load reported failures"; fail=1; }
  t1=$(ticks)
  awk -v l="$label" -v t=$((t1 - t0)) -v hz="$HZ" -v n="$N" \
    'BEGIN { printf "  %-12s %8.2f us/request  (%d ticks for %d requests)\n", l, t / hz / n * 1e6, t, n }'
}
for ((r = 1; r <= ROUNDS; r++)); do
  for bin in "${BINS[@]}"; do
    PINSD_BIN=$bin
    pinsd_start "$ADDR" 0 --PINS_WORKERS=1
    echo "round $r: $bin"
    U="http://$ADDR/api/v1/memory/pins"
    curl -s -o /dev/null -X POST "$U" -H 'content-type: application/json' \
      -d '{"tenant_id":"bench","key":"bench:k1","value":{"a":1,"b":"two"}}'
    measure rest-get "$BENCH_DIR/rest_load.sh" --url "$U/bench:k1?tenant_id=bench" -c 64 -n "$N" \
      --warmup 0 --cpu 1
    measure rest-post "$BENCH_DIR/rest_load.sh" --url "$U" -X POST -c 64 -n "$N" --warmup 0 --cpu 1 \
      --json '{"tenant_id":"bench","key":"bench:k2","value":{"a":1}}'
    measure grpc-get "$BENCH_DIR/grpc_load.sh" --addr "$ADDR" -c 16 -m 32 -n "$N" --warmup 0 \
      --cpu 1 --method memorypins.v1.MemoryPins/GetPin --json '{"tenant_id":"bench","key":"bench:k1"}'
    measure grpc-upsert "$BENCH_DIR/grpc_load.sh" --addr "$ADDR" -c 16 -m 32 -n "$N" --warmup 0 \
      --cpu 1 --method memorypins.v1.MemoryPins/UpsertPin \
      --json '{"tenant_id":"bench","key":"bench:k3","value":{"a":1}}'
    pinsd_stop
  done
done
exit "$fail"
