#!/usr/bin/env bash
# tools/bench/watch_rss.sh: pinsd's resident memory with many open WatchPins streams, against the
# target "10,000 WatchPins streams on one pinsd process within 100 MiB RSS above idle".
#
#   tools/bench/watch_rss.sh [-n N] [-s S] [--tenants T] [-e E] [--settle S]
#                            [--addr 127.0.0.1:PORT] [-- PINSD_FLAGS]
#
#   -n N          WatchPins streams to open [10000] (at most 20000)
#   -s S          streams per HTTP/2 connection [100] (pinsd's PINS_MAX_CONCURRENT_STREAMS is
#                 raised when S is above its default of 100)
#   --tenants T   tenants the streams are spread over, N/T each (T must divide N) [100]
#   -e E          upserts made while the streams are open, spread over the tenants [1000]
#                 (at most 100000)
#   --settle S    seconds to wait before each measurement [2]
#   --addr A      where pinsd listens [127.0.0.1:50051] (loopback only)
#   -- FLAGS      extra flags for pinsd (e.g. -- --PINS_WORKERS=1)
#
# It builds pinsd (Release, build-release/) unless PINSD_BIN names a pinsd binary (pinsctl is then
# taken from PINSCTL_BIN, else from beside it), starts it on the embedded SQLite store with its
# data in a temp dir under /tmp and PINS_WATCH_MAX and PINS_WATCH_MAX_PER_PRINCIPAL set to N (the
# streams are anonymous: one principal), and reads VmRSS from /proc/PID/status after --settle.
# Then watch_streams.py opens the N streams (stream i watches tenant bench-t<i mod T>, all keys)
# and VmRSS is read again once every stream has its response headers; `pinsctl bench` makes E
# UpsertPin calls over the same tenants (bench-t0..), the client counts the gRPC messages its
# streams received (after no data came for 1 s) and VmRSS is read a third time. It prints idle,
# with-streams and after-events MiB, the growth in MiB and KiB per stream, the events delivered
# against the expected (successful upserts x N/T), and PASS or FAIL for the growth against
# 100 MiB. pinsd, pinsctl and the client are stopped by pid on exit. The open-files limit is raised
# to fit the connections (it fails if the hard limit is too low).
# Exit status: 0 PASS and every event delivered, 1 FAIL or something failed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
WANT_PINSD=${PINSD_BIN:-} # common.sh resets PINSD_BIN
# shellcheck source=tools/bench/common.sh
. "$HERE/common.sh"

N=10000 S=100 T=100 E=1000 SETTLE=2 ADDR=127.0.0.1:50051 LIMIT_MIB=100
bench_options -n=N: -s=S+ --tenants=T+ -e=E+ --settle=SETTLE: --addr=ADDR: -- "$@"
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]] || ((N > 20000)); then pins_die "-n must be 1..20000, got '$N'"; fi
((S <= N)) || pins_die "-s ($S) must not exceed -n ($N)"
((T <= N && N % T == 0)) || pins_die "--tenants ($T) must divide -n ($N), so every tenant has as many streams"
((E <= 100000)) || pins_die "-e must be 1..100000, got '$E'"
if ! [[ "$SETTLE" =~ ^[0-9]+$ ]] || ((SETTLE > 60)); then pins_die "--settle must be 0..60 s, got '$SETTLE'"; fi
require_loopback "$ADDR"
[[ -x "$PY" ]] || pins_die "$PY not found (set PY=/path/to/python3)"
"$PY" -c 'import h2' 2>/dev/null || pins_die "$PY has no h2 module (apt-get install python3-h2)"

CONNS=$(((N + S - 1) / S))
# Each side holds the connections plus its own files; pinsd inherits this limit from us.
raise_nofile $((CONNS + 512)) "$CONNS connections (raise it or use a larger -s)"

CLIENT_PID="" WORK="" CHILD=""
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  if [[ -n "$CHILD" ]]; then # a running pinsctl bench
    kill -TERM -- "-$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  exec 3>&- # EOF on the client's stdin
  if [[ -n "$CLIENT_PID" ]] && kill -0 "$CLIENT_PID" 2>/dev/null; then
    kill -TERM "$CLIENT_PID" 2>/dev/null || true
    wait "$CLIENT_PID" 2>/dev/null || true
  fi
  [[ -z "$WORK" ]] || rm -rf "$WORK"
  pinsd_stop
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

field() { sed -n "s/.* $1=\([0-9]*\).*/\1/p" <<<" $2"; } # NAME LINE -> the number after NAME=
# wait_line PREFIX SECONDS: the client's last output line starting with PREFIX, within SECONDS
wait_line() {
  local i line
  for ((i = 0; i < $2 * 10; i++)); do
    line=$(grep "^$1 " "$WORK/client.out" | tail -n 1 || true)
    if [[ -n "$line" ]]; then
      echo "$line"
      return 0
    fi
    kill -0 "$CLIENT_PID" 2>/dev/null || break
    sleep 0.1
  done
  cat "$WORK/client.err" >&2 || true
  return 1
}

if [[ -n "$WANT_PINSD" ]]; then
  [[ -x "$WANT_PINSD" ]] || pins_die "PINSD_BIN=$WANT_PINSD is not an executable"
  PINSD_BIN=$WANT_PINSD
  pins_note "pinsd from PINSD_BIN: $PINSD_BIN"
else
  bench_build
fi
PINSCTL=${PINSCTL_BIN:-$(dirname "$PINSD_BIN")/pinsctl}
[[ -x "$PINSCTL" ]] || pins_die "no pinsctl at $PINSCTL (set PINSCTL_BIN)"

export PINS_WATCH_MAX=$N PINS_WATCH_MAX_PER_PRINCIPAL=$N
((S <= 100)) || export PINS_MAX_CONCURRENT_STREAMS=$S
((CONNS + 16 <= 10000)) || export PINS_MAX_CONNECTIONS=$((CONNS + 16))
pinsd_start "$ADDR" "" "${PINSD_FLAGS[@]}"
sleep "$SETTLE"
idle=$(rss_kib "$PINSD_PID")
pins_note "idle: VmRSS $(mib "$idle") MiB"

WORK=$(mktemp -d /tmp/pinsd-watch-rss.XXXXXX)
mkfifo "$WORK/in"
"$PY" "$HERE/watch_streams.py" --addr "$ADDR" -n "$N" -s "$S" --tenants "$T" \
  --timeout 120 --hold 600 <"$WORK/in" >"$WORK/client.out" 2>"$WORK/client.err" &
CLIENT_PID=$!
exec 3>"$WORK/in" # opens once the client has opened its end
ready=$(wait_line ready 150) || pins_die "watch_streams.py did not report its streams (its errors are above)"
pins_note "client: $ready"
opened=$(field open "$ready")
refused=$(field refused "$ready")
if ((opened != N)); then
  cat "$WORK/client.err" >&2
  pins_die "only $opened of $N streams opened ($refused refused)"
fi
sleep "$SETTLE"
loaded=$(rss_kib "$PINSD_PID")
kill -0 "$CLIENT_PID" 2>/dev/null || pins_die "watch_streams.py exited early (connections lost?)"
pins_note "with $N streams: VmRSS $(mib "$loaded") MiB"

pins_note "$E upserts over $T tenants (pinsctl bench)"
run_child "$PINSCTL" bench --addr "$ADDR" -n "$E" --mix put=100 --tenants "$T" --keys 1000 \
  -c 1 -m 16 --json >"$WORK/bench.json" || pins_die "pinsctl bench failed"
read -r ok errors unanswered < <("$PY" -c 'import json, sys
d = json.load(open(sys.argv[1]))
print(d["ok"], d["errors"], d.get("failed_locally", 0))' "$WORK/bench.json") ||
  pins_die "cannot read pinsctl bench's report"
echo count >&3
counted=$(wait_line events 90) || pins_die "watch_streams.py did not count its events"
pins_note "client: $counted"
sleep "$SETTLE"
after=$(rss_kib "$PINSD_PID")
total=$(field total "$counted")
ended=$(field ended "$counted")
expected=$((ok * N / T))

growth=$((loaded - idle))
verdict=PASS
((growth <= LIMIT_MIB * 1024)) || verdict=FAIL
delivery=ok
((total == expected && ended == 0)) || delivery=FAIL
echo
echo "pinsd RSS: idle $(mib "$idle") MiB; with $N WatchPins streams ($CONNS connections, $T tenants) $(mib "$loaded") MiB; after $ok events $(mib "$after") MiB"
echo "growth: $(mib "$growth") MiB, $(awk -v g="$growth" -v n="$N" 'BEGIN { printf "%.2f", g / n }') KiB per stream; after the events $(mib $((after - idle))) MiB above idle"
echo "events: $ok upserts ok, $errors errors, $unanswered unanswered; delivered $total of $expected expected (min per stream $(field min_per_stream "$counted"), $ended streams ended): $delivery"
echo "target: $N streams within $LIMIT_MIB MiB above idle: $verdict"
[[ "$verdict" == PASS && "$delivery" == ok ]]
