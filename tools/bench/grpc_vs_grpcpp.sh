#!/usr/bin/env bash
# tools/bench/grpc_vs_grpcpp.sh: pinsd against the stock gRPC C++ server, same core, same load.
#
#   tools/bench/grpc_vs_grpcpp.sh [-D S] [--rounds N] [-c N] [-m N] [--no-latency] [-- PINSD_FLAGS]
#
#   -D S           seconds per load run [5] (compare.sh allows at most 20)
#   --rounds N     target/peer pairs per method [3] (at most 10)
#   -c N, -m N     connections and streams per connection of the throughput comparison [16, 32]
#   --no-latency   skip the sequential comparison (c=1 m=1)
#   -- FLAGS       extra flags for pinsd (e.g. -- --PINS_WORKERS=1)
#
# It builds pinsd (Release, build-release/), starts it pinned to CPU 0 on 127.0.0.1:50051 with
# RATE_LIMIT_RPM=0, LOG_LEVEL=warn and its data in a temp dir under /tmp, starts the grpcpp peer
# pinned to CPU 0 on 127.0.0.1:50061 (CPUS=0 $BENCH_DIR/peers/grpcpp/start.sh; built with cmake on
# first use, needs tools/deps.sh --bench), then runs $BENCH_DIR/compare.sh with h2load on CPU 1:
# GetPin and UpsertPin at c/m, then at c=1 m=1. Both servers are stopped by pid on exit, also on
# failure or Ctrl-C. BENCH_DIR defaults to ../shared/bench next to the repository.
# Exit status: 0 every run was all OK, 1 a run had errors or something failed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools/bench/common.sh
. "$HERE/common.sh"

DUR=5 ROUNDS=3 C=16 M=32 LATENCY=1
TARGET=127.0.0.1:50051 PEER=127.0.0.1:50061 SERVER_CPU=0 LOAD_CPU=1
bench_options -D=DUR+ --rounds=ROUNDS+ -c=C+ -m=M+ --no-latency=LATENCY=0 -- "$@"
((DUR <= 20)) || pins_die "-D must be at most 20 s"
((ROUNDS <= 10)) || pins_die "--rounds must be at most 10"
(($(nproc) >= 2)) || pins_die "needs 2 CPUs (servers on CPU $SERVER_CPU, load on CPU $LOAD_CPU)"
command -v h2load >/dev/null || pins_die "h2load not found (apt-get install nghttp2-client, or tools/deps.sh --bench)"

PEER_PIDFILE="${RUN_DIR:-/tmp/pinsd-bench}/grpcpp/grpcpp.pid"
if [[ -s "$PEER_PIDFILE" ]] && kill -0 "$(cat "$PEER_PIDFILE")" 2>/dev/null; then
  pins_die "a grpcpp peer is already running (pid $(cat "$PEER_PIDFILE")); stop it with $BENCH_DIR/peers/grpcpp/stop.sh"
fi
! port_open "$PEER" || pins_die "something already listens on $PEER; stop it first"

PEER_STARTED=0 OUT="" CHILD=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  exec >&2 # a signal may arrive while stdout points at a run's output file
  if [[ -n "$CHILD" ]]; then # a running start.sh or compare.sh and its load processes
    kill -TERM -- "-$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  if ((PEER_STARTED)); then "$BENCH_DIR/peers/grpcpp/stop.sh" || true; fi
  pinsd_stop
  [[ -z "$OUT" ]] || rm -f "$OUT" "$OUT.run"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

bench_build
pinsd_start "$TARGET" "$SERVER_CPU" "${PINSD_FLAGS[@]}"
PEER_STARTED=1
pins_note "starting the grpcpp peer (the first start builds it, which takes a few minutes)"
CPUS=$SERVER_CPU run_child "$BENCH_DIR/peers/grpcpp/start.sh" "$PEER" || pins_die "the grpcpp peer did not start"

OUT=$(mktemp /tmp/pinsd-compare.XXXXXX)
fail=0
compare() { # label c m
  local label=$1 c=$2 m=$3
  pins_note "$label: compare.sh -c $c -m $m -D $DUR --rounds $ROUNDS --cpu $LOAD_CPU"
  run_child "$BENCH_DIR/compare.sh" --target "$TARGET" --peer "$PEER" -c "$c" -m "$m" -D "$DUR" \
    --rounds "$ROUNDS" --cpu "$LOAD_CPU" >"$OUT.run" || fail=1
  cat "$OUT.run"
  cat "$OUT.run" >>"$OUT"
  echo "== $label" >>"$OUT"
}
compare "throughput c=$C m=$M" "$C" "$M"
((LATENCY)) && compare "latency c=1 m=1" 1 1

echo
echo "pinsd ($TARGET) / grpcpp ($PEER), both on CPU $SERVER_CPU, h2load on CPU $LOAD_CPU:"
awk '/ratio target\/peer/ { buf = buf "  " $0 "\n" }
  /^== / {
    sub(/^== /, "")
    printf "%s\n%s", $0, (buf == "" ? "  (no ratio: a side had no usable run, see above)\n" : buf)
    buf = ""
  }' "$OUT"
((fail == 0)) || pins_die "some runs were not all OK (see the lines marked NOT ALL OK above)"
