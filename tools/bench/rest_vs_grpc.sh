#!/usr/bin/env bash
# tools/bench/rest_vs_grpc.sh: the REST bridge against native gRPC on the same pinsd, same run.
#
#   tools/bench/rest_vs_grpc.sh [-D S] [--rounds N] [-c N] [--grpc-m N] [-- PINSD_FLAGS]
#
#   -D S          seconds per load run [5] (at most 20)
#   --rounds N    rounds of (REST GET, gRPC GetPin, REST POST, gRPC UpsertPin) [3] (at most 10)
#   -c N          connections for every run [64]
#   --grpc-m N    streams per connection for the gRPC runs [1] (HTTP/1.1 is never pipelined, so
#                 m=1 compares the same concurrency; raise it to see gRPC's multiplexing)
#   -- FLAGS      extra flags for pinsd
#
# It builds pinsd (Release), starts it pinned to CPU 0 on 127.0.0.1:50051 (RATE_LIMIT_RPM=0,
# data in a temp dir), and alternates $BENCH_DIR/rest_load.sh (HTTP/1.1 keep-alive) and
# $BENCH_DIR/grpc_load.sh (h2c) with h2load on CPU 1, for GetPin and UpsertPin. It prints every run,
# the medians and the ratio REST/gRPC of req/s (the target is >= 0.7). pinsd is stopped by pid on
# exit, also on failure or Ctrl-C. Exit status: 0 every run was all OK, 1 otherwise.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools/bench/common.sh
. "$HERE/common.sh"

DUR=5 ROUNDS=3 C=64 GM=1 ADDR=127.0.0.1:50051
bench_options -D=DUR: --rounds=ROUNDS: -c=C: --grpc-m=GM: -- "$@"
# shellcheck disable=SC2015 # dies unless both hold (also when (( )) fails on "08")
[[ "$DUR" =~ ^[0-9]+$ ]] && ((DUR >= 1 && DUR <= 20)) || pins_die "-D must be 1..20"
# shellcheck disable=SC2015
[[ "$ROUNDS" =~ ^[0-9]+$ ]] && ((ROUNDS >= 1 && ROUNDS <= 10)) || pins_die "--rounds must be 1..10"

bench_build
trap 'pinsd_stop' EXIT INT TERM
pinsd_start "$ADDR" 0 "${PINSD_FLAGS[@]}"

KEY=bench:k1
PIN='{"tenant_id":"bench","key":"bench:k1","value":{"a":1,"note":"bench"},"ttl_seconds":3600}'
OUT=$(mktemp /tmp/pinsd-rest-vs-grpc.XXXXXX)
ok=1
run() { # label, command...
  local label=$1 line
  shift
  if ! line=$(timeout $((DUR * 3 + 60)) "$@" --label "$label" 2>&1 | tail -n 1); then ok=0; fi
  echo "$line"
  printf '%s\t%s\n' "$label" "$(sed -nE 's/.*: ([0-9.]+) req\/s.*/\1/p' <<<"$line")" >>"$OUT"
}
for ((r = 1; r <= ROUNDS; r++)); do
  run "rest-get" "$BENCH_DIR/rest_load.sh" --url "http://$ADDR/api/v1/memory/pins/$KEY?tenant_id=bench" \
    --seed-url "http://$ADDR/api/v1/memory/pins" --seed-json "$PIN" -c "$C" -D "$DUR" --cpu 1
  run "grpc-get" "$BENCH_DIR/grpc_load.sh" --addr "$ADDR" --method memorypins.v1.MemoryPins/GetPin \
    --json '{"tenant_id":"bench","key":"bench:k1"}' -c "$C" -m "$GM" -D "$DUR" --cpu 1
  run "rest-post" "$BENCH_DIR/rest_load.sh" --url "http://$ADDR/api/v1/memory/pins" -X POST \
    --json "$PIN" -c "$C" -D "$DUR" --cpu 1
  run "grpc-upsert" "$BENCH_DIR/grpc_load.sh" --addr "$ADDR" \
    --method memorypins.v1.MemoryPins/UpsertPin --json "$PIN" -c "$C" -m "$GM" -D "$DUR" --cpu 1
done
median() { awk -v l="$1" '$1 == l {print $2}' "$OUT" | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
printf 'pinsd %s, c=%s (gRPC m=%s), %s rounds of %s s, server on CPU 0, h2load on CPU 1\n' \
  "$ADDR" "$C" "$GM" "$ROUNDS" "$DUR"
for pair in "get:rest-get:grpc-get" "upsert:rest-post:grpc-upsert"; do
  IFS=: read -r name rl gl <<<"$pair"
  rm_=$(median "$rl") gm_=$(median "$gl")
  awk -v n="$name" -v r="$rm_" -v g="$gm_" \
    'BEGIN { printf "  %-7s REST %8.0f req/s  gRPC %8.0f req/s  ratio REST/gRPC %.2fx\n", n, r, g, (g > 0 ? r / g : 0) }'
done
rm -f "$OUT"
((ok)) || exit 1
