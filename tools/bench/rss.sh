#!/usr/bin/env bash
# tools/bench/rss.sh: pinsd's resident memory when idle and with many idle HTTP/2 connections.
#
#   tools/bench/rss.sh [-n N] [--settle S] [--addr 127.0.0.1:PORT] [-- PINSD_FLAGS]
#
#   -n N          idle HTTP/2 connections to open [1000] (at most 20000)
#   --settle S    seconds to wait before each measurement [2]
#   --addr A      where pinsd listens [127.0.0.1:50051] (loopback only)
#   -- FLAGS      extra flags for pinsd (e.g. -- --PINS_WORKERS=1)
#
# It builds pinsd (Release, build-release/), starts it with its data in a temp dir under /tmp,
# reads VmRSS from /proc/PID/status once it listens, then opens N connections with
# idle_conns.py (client preface + empty SETTINGS, nothing else), reads VmRSS again and reports
# the growth in MiB and per connection. pinsd and the client are stopped by pid on exit.
# The open-files limit is raised to fit N connections (it fails if the hard limit is too low).
# Exit status: 0 measured, 1 something failed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools/bench/common.sh
. "$HERE/common.sh"

N=1000 SETTLE=2 ADDR=127.0.0.1:50051
bench_options -n=N: --settle=SETTLE: --addr=ADDR: -- "$@"
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]] || ((N > 20000)); then pins_die "-n must be 1..20000, got '$N'"; fi
if ! [[ "$SETTLE" =~ ^[0-9]+$ ]] || ((SETTLE > 60)); then pins_die "--settle must be 0..60 s, got '$SETTLE'"; fi
require_loopback "$ADDR"
[[ -x "$PY" ]] || pins_die "$PY not found (set PY=/path/to/python3)"

# Each side holds N sockets plus its own files; pinsd inherits this limit from us.
raise_nofile $((N + 512)) "-n $N (raise it or use a smaller -n)"

CLIENT_PID="" CLIENT_OUT=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$CLIENT_PID" ]] && kill -0 "$CLIENT_PID" 2>/dev/null; then
    kill -TERM "$CLIENT_PID" 2>/dev/null || true
    wait "$CLIENT_PID" 2>/dev/null || true
  fi
  [[ -z "$CLIENT_OUT" ]] || rm -f "$CLIENT_OUT"
  pinsd_stop
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM


bench_build
pinsd_start "$ADDR" "" "${PINSD_FLAGS[@]}"
sleep "$SETTLE"
idle=$(rss_kib "$PINSD_PID")
pins_note "idle: VmRSS $(mib "$idle") MiB"

CLIENT_OUT=$(mktemp /tmp/pinsd-idle-conns.XXXXXX)
"$PY" "$HERE/idle_conns.py" --addr "$ADDR" -n "$N" --hold 300 >"$CLIENT_OUT" &
CLIENT_PID=$!
for ((i = 0; i < 1200; i++)); do # 120 s at most
  grep -q '^ready ' "$CLIENT_OUT" && break
  kill -0 "$CLIENT_PID" 2>/dev/null || break
  sleep 0.1
done
ready=$(grep '^ready ' "$CLIENT_OUT" || true)
[[ -n "$ready" ]] || pins_die "idle_conns.py did not report its connections as open"
pins_note "client: $ready"
sleep "$SETTLE"
loaded=$(rss_kib "$PINSD_PID")
kill -0 "$CLIENT_PID" 2>/dev/null || pins_die "idle_conns.py exited early (connections failed?)"
opened=$(sed -n 's/^ready opened=\([0-9]*\).*/\1/p' <<<"$ready")
closed=$(sed -n 's/.* closed=\([0-9]*\).*/\1/p' <<<"$ready")

growth=$((loaded - idle))
echo
echo "pinsd RSS: idle $(mib "$idle") MiB; with $opened idle HTTP/2 connections $(mib "$loaded") MiB"
echo "growth: $(mib "$growth") MiB, $(awk -v g="$growth" -v n="$opened" 'BEGIN { printf "%.1f", n ? g / n : 0 }') KiB per connection"
((opened == N)) || pins_die "only $opened of $N connections opened"
((closed == 0)) || pins_die "pinsd closed $closed of the connections before the measurement"
