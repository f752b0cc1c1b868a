#!/usr/bin/env bash
# tools/bench/realistic.sh: pinsd on realistic workloads (issue 15), side by side in one run:
# many keys in many tenants, mixed reads and writes, ListPins, two value sizes, gRPC and REST, on
# the embedded SQLite store, on PostgreSQL directly and through PgBouncer, against the references
# (the same pinsd on one key, the stock gRPC C++ peer, pgbench with the same key draws).
#
#   tools/bench/realistic.sh [-D S] [--rounds N] [--only LIST] [--quick] [--out DIR]
#                            [-c N] [-m N] [--rest-c N] [--pool N] [-- PINSD_FLAGS]
#
#   -D S          seconds per load run [10] (at most 60)
#   --rounds N    rounds [3] (at most 10); the table shows medians over the rounds
#   --only LIST   comma-separated parts to run [all]:
#                   sqlite     pinsd on SQLite over gRPC: GetPin one key, uniform, zipfian, 4 KiB;
#                              90/10 and 50/50 mixes (200 B, and 90/10 with 4 KiB); ListPins 20;
#                              UpsertPin uniform
#                   peer       the grpcpp peer: GetPin uniform, 90/10 (and the pinsd pair)
#                   rest       REST through wrk (HTTP/1.1): GET uniform, zipfian, 90/10 GET/POST;
#                              REST over h2c through h2load: GET uniform, zipfian (and the gRPC
#                              pair)
#                   pg         pinsd on PostgreSQL directly: GetPin uniform, zipfian, 90/10, 50/50,
#                              UpsertPin, ListPins 20; GetPin uniform, zipfian and 90/10 again on a
#                              second pinsd with PINS_PG_READ_CACHE=false (the read cache's pairs)
#                   pgbouncer  pinsd through PgBouncer (transaction pooling): GetPin uniform, 90/10
#                              (and the direct pair)
#                   pgbench    pgbench on pinsd's table: select (uniform, zipfian), upsert, 90/10,
#                              50/50
#                   half       the maximum closed-loop rate, then half of it paced evenly (-r):
#                              GetPin and UpsertPin on SQLite, GetPin on PostgreSQL (when a PG
#                              part is selected too)
#                   stall      60 s of GetPin at half load on SQLite, judged per second (not with
#                              --quick unless named here)
#   --quick       a smoke check: 1 round, -D 3, no 60 s stall run
#   --out DIR     where results.md, results.json, runs.jsonl and the servers' logs (logs/) go
#                 [/tmp/pinsd-realistic-STAMP]
#   -c N, -m N    gRPC (and h2c) connections and calls in flight per connection [16, 32]
#   --rest-c N    wrk's HTTP/1.1 connections [16]
#   --pool N      pinsd's DB_POOL_SIZE, PgBouncer's default_pool_size and pgbench's -c [8]
#   -- FLAGS      extra flags for every pinsd
#
# Data: 100 tenants (bench-t0..99) x 1000 keys (bench-0..999) = 100,000 pins of about 200 B,
# written first with `pinsctl bench --prefill`; the 4 KiB runs use a second set of 100,000
# (big-t*/big-*). Keys are drawn per call: tenant uniform, key uniform or zipfian s = 0.99 (rank r
# with probability ~ 1/(r+1)^s within the tenant). pinsctl bench drives gRPC (pinsd and the peer),
# tools/bench/realistic/pins.lua drives wrk the same way for REST, and
# tools/bench/realistic/{select,upsert}.sql run pinsd's own statements (store/pg_sql.c)
# in pgbench -M prepared, with `\set t random(0, 99)`, `\set k random(0, 999)` and
# random_zipfian(0, 999, 1.001): PostgreSQL 15 needs s >= 1.001, so pgbench's zipfian is s = 1.001,
# not 0.99. pgbench's mixes are weighted scripts (-f select.sql@9 -f upsert.sql@1: random
# draws), pinsctl bench's are exact interleavings. pgbench runs with --pool connections, as many
# as pinsd's pool.
#
# REST twice: HTTP/1.1 through wrk (--rest-c connections, one request in flight on each) and
# HTTP/2 cleartext with prior knowledge (h2c) through h2load with gRPC's -c and -m. Over HTTP/1.1
# every response is its own writev and its own loopback TCP send (about half of pinsd's CPU per
# request in a profile), while gRPC and h2c carry many responses per write; the h2c rows compare
# REST and gRPC on the same transport, the HTTP/1.1 rows show what HTTP/1.1 clients get. h2load
# reads a URI list (-i) that the script writes once with a fixed seed (summarize.py uris): 100,000
# GETs of bench-R in bench-tT, T uniform, R uniform or zipfian s = 0.99, in random order; each
# h2load client cycles through it.
#
# Pinning: every server (pinsd with PINS_WORKERS=1, the peer, PostgreSQL, PgBouncer) on CPU 0,
# every load generator on CPU 1. pinsd runs with RATE_LIMIT_RPM=0 and its data in the temp dir.
# Each round runs every selected workload once, the compared pairs one after the other; the
# table gives the medians (req/s also min-max), p50/p99/p99.9/max, and pinsd's CPU per request
# (utime+stime from /proc/<pid>/stat over the run, warm-up included, per answer; the peer's for
# the peer runs; PostgreSQL's own CPU is not in it). Then each target of issue 15 with its
# ratio and PASS/FAIL, and other ratios. pgbench's p50/p99 come from its per-transaction log.
# PostgreSQL is vacuumed and checkpointed before the PostgreSQL runs of every round.
#
# Half load: each round measures the maximum closed-loop rate right before and offers half of
# it with `pinsctl bench -r` (evenly paced, latency from the scheduled send time). The stall run
# reads the "stall" object of `pinsctl bench --json` (per-second p99 against the run's p99); a
# pinsctl bench without it gives n/a.
#
# Setup: pinsd and pinsctl from $PINSD_BIN / $PINSCTL_BIN if set, else built (Release) into
# build-release/. PostgreSQL 15 from $BENCH_DIR/peers/m7-fastapi/start.sh pg on a free loopback
# port (RUN_DIR in the temp dir), database pinsd_bench, `pinsctl migrate upgrade head`; PgBouncer
# (Debian pgbouncer, /usr/sbin/pgbouncer) as user postgres in transaction mode on a free port;
# the grpcpp peer from $BENCH_DIR/peers/grpcpp/start.sh (built once into $PEER_BUILD_DIR,
# default /tmp/pinsd-bench/grpcpp-build). The rest part needs wrk and h2load (nghttp2-client). Every address is
# loopback; everything lives under a mktemp dir /tmp/pinsd-realistic.XXXXXX, removed on exit;
# every run is bounded by timeout; every process started is stopped by its pid on exit, failure
# or Ctrl-C. A full default run takes about 24 minutes; --quick about 5.
#
# Exit status: 0 every run was all OK (targets met or not), 1 a run had errors or failed,
# 2 a setup problem.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ENV_PINSD_BIN=${PINSD_BIN:-} # common.sh resets PINSD_BIN
# shellcheck source=tools/bench/common.sh
. "$HERE/common.sh"

DUR=10 ROUNDS=3 C=16 M=32 REST_C=16 POOL=8 ONLY="" QUICK=0 OUT=""
bench_options -D=DUR+ --rounds=ROUNDS+ -c=C+ -m=M+ --rest-c=REST_C+ --pool=POOL+ --only=ONLY: \
  --quick=QUICK=1 --out=OUT: -- "$@"
if ((QUICK)); then DUR=3 ROUNDS=1; fi
((DUR <= 60)) || pins_die "-D must be at most 60 s"
((ROUNDS <= 10)) || pins_die "--rounds must be at most 10"
((POOL <= 40)) || pins_die "--pool must be at most 40 (the cluster's max_connections is 100)"
ALL_PARTS="sqlite peer rest pg pgbouncer pgbench half stall"
declare -A PART=()
if [[ -z "$ONLY" ]]; then
  for p in $ALL_PARTS; do PART[$p]=1; done
  ((QUICK)) && unset 'PART[stall]'
else
  for p in ${ONLY//,/ }; do
    [[ " $ALL_PARTS " == *" $p "* ]] || pins_die "--only: unknown part '$p' (parts: ${ALL_PARTS// /,})"
    PART[$p]=1
  done
fi
has() { [[ -n "${PART[$1]:-}" ]]; }

SERVER_CPU=0 LOAD_CPU=1 WARM=1
KEYS=1000 TENANTS=100 VSIZE=200 BIG=4096 LIST_LIMIT=20 ZIPF_S=0.99
(($(nproc) >= 2)) || pins_die "needs 2 CPUs (servers on CPU $SERVER_CPU, load on CPU $LOAD_CPU)"
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
PGBOUNCER_BIN=${PGBOUNCER_BIN:-/usr/sbin/pgbouncer}
need_sq=0 need_pg=0
for p in sqlite peer rest half stall; do has $p && need_sq=1; done
for p in pg pgbouncer pgbench; do has $p && need_pg=1; done
if has rest; then
  command -v wrk >/dev/null || pins_die "wrk not found (apt-get install wrk, or tools/deps.sh --bench)"
  command -v h2load >/dev/null || pins_die "h2load not found (apt-get install nghttp2-client)"
fi
if ((need_pg)); then
  [[ -x "$PGBIN/pgbench" && -x "$PGBIN/psql" ]] || pins_die "PostgreSQL 15 not found in $PGBIN (apt-get install postgresql-15)"
fi
if has pgbouncer; then
  [[ -x "$PGBOUNCER_BIN" ]] || pins_die "$PGBOUNCER_BIN not found (apt-get install pgbouncer, or tools/deps.sh --test)"
  command -v setpriv >/dev/null || pins_die "setpriv not found (util-linux)"
fi

unset DATABASE_URL REDIS_URL # each pinsd gets only what is set below, and no shared limiter

STAMP=$(date -u +%Y%m%dT%H%M%SZ)
OUT=${OUT:-/tmp/pinsd-realistic-$STAMP}
mkdir -p "$OUT"
WORK=$(mktemp -d /tmp/pinsd-realistic.XXXXXX)
chmod 755 "$WORK" # the postgres user must reach the cluster and PgBouncer's files below it
export RUN_DIR="$WORK/run"
export PEER_BUILD_DIR=${PEER_BUILD_DIR:-/tmp/pinsd-bench/grpcpp-build}
mkdir -p "$RUN_DIR"
JSONL="$WORK/runs.jsonl"
: >"$JSONL"
SUM=("$PY" "$HERE/realistic/summarize.py")
T_START=$SECONDS

# ---- processes: started here, stopped by pid -------------------------------------------------
declare -A SRV_PID=()
CHILD="" PG_STARTED=0 PEER_STARTED=0 PGB_PID=""
stop_pid() { # NAME PID: SIGTERM, 15 s, SIGKILL
  local name=$1 pid=$2 i
  [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null || return 0
  kill -TERM "$pid" 2>/dev/null || true
  for ((i = 0; i < 150; i++)); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if kill -0 "$pid" 2>/dev/null; then
    echo "$name (pid $pid) ignored SIGTERM for 15 s, sending SIGKILL" >&2
    kill -KILL "$pid" 2>/dev/null || true
  fi
  wait "$pid" 2>/dev/null || true
  pins_note "$name stopped (pid $pid)"
}
cleanup() {
  local rc=$? n
  trap - EXIT INT TERM
  exec >&2
  if [[ -n "$CHILD" ]]; then # a running load generator (its own process group)
    kill -TERM -- "-$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  for n in "${!SRV_PID[@]}"; do stop_pid "pinsd $n" "${SRV_PID[$n]}"; done
  stop_pid pgbouncer "$PGB_PID"
  if ((PEER_STARTED)); then "$BENCH_DIR/peers/grpcpp/stop.sh" || true; fi
  if ((PG_STARTED)); then "$BENCH_DIR/peers/m7-fastapi/stop.sh" pg || true; fi
  if [[ -d "$OUT" && -d "$WORK" ]]; then # the servers' logs beside the results
    mkdir -p "$OUT/logs"
    for n in "$WORK"/pinsd-*/pinsd.log; do [[ -f "$n" ]] && cp "$n" "$OUT/logs/$(basename "$(dirname "$n")").log"; done
    [[ -f "$WORK/pgbouncer/pgbouncer.log" ]] && cp "$WORK/pgbouncer/pgbouncer.log" "$OUT/logs/"
  fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_ports() { # N: N distinct free loopback ports
  "$PY" -c 'import socket, sys
ss = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in ss: s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in ss))' "$1"
}
read -r P_SQ P_PG P_PGB P_PEER P_PGSQL P_BOUNCER P_PGNC <<<"$(free_ports 7)"
A_SQ=127.0.0.1:$P_SQ A_PG=127.0.0.1:$P_PG A_PGB=127.0.0.1:$P_PGB A_PEER=127.0.0.1:$P_PEER
A_PGNC=127.0.0.1:$P_PGNC
for a in "$A_SQ" "$A_PG" "$A_PGB" "$A_PEER" "$A_PGNC"; do require_loopback "$a"; done

# pinsd_up NAME ADDR [VAR=VALUE...]: a one-worker pinsd on CPU 0, data in WORK/NAME, until /ready.
pinsd_up() {
  local name=$1 addr=$2 dir="$WORK/pinsd-$1" i code=""
  shift 2
  ! port_open "$addr" || pins_die "something already listens on $addr"
  mkdir -p "$dir"
  env PINS_LISTEN="$addr" PINS_DATA_DIR="$dir/data" PINS_WORKERS=1 RATE_LIMIT_RPM=0 \
    PINS_DRAIN_SECONDS=2 LOG_LEVEL="${LOG_LEVEL:-warn}" "$@" \
    taskset -c "$SERVER_CPU" "$PINSD_BIN" "${PINSD_FLAGS[@]}" </dev/null >"$dir/pinsd.log" 2>&1 &
  SRV_PID[$name]=$!
  pins_note "pinsd $name started, pid ${SRV_PID[$name]}, CPU $SERVER_CPU, $addr, log $dir/pinsd.log"
  for ((i = 0; i < 150; i++)); do
    kill -0 "${SRV_PID[$name]}" 2>/dev/null || {
      tail -n 20 "$dir/pinsd.log" >&2
      pins_die "pinsd $name exited (its log is above)"
    }
    code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$addr/ready" || true)
    [[ "$code" == 200 ]] && return 0
    sleep 0.1
  done
  tail -n 20 "$dir/pinsd.log" >&2
  pins_die "pinsd $name: /ready answered '$code' after 15 s"
}
pinsd_alive() { # NAME: dies with the log's tail when pinsd NAME has exited
  local pid=${SRV_PID[$1]:-}
  [[ -z "$pid" ]] && return 0
  kill -0 "$pid" 2>/dev/null && return 0
  tail -n 20 "$WORK/pinsd-$1/pinsd.log" >&2 || true
  pins_die "pinsd $1 (pid $pid) has exited during the benchmark (its log is above)"
}
server_log_tail() { # NAME: the last lines pinsd NAME (or pgbouncer behind it) logged, after a run that was not all OK
  local f="$WORK/pinsd-$1/pinsd.log"
  [[ -s "$f" ]] && tail -n 5 "$f" | sed "s/^/    pinsd $1: /" >&2
  if [[ "$1" == pgbouncer && -s "$WORK/pgbouncer/pgbouncer.log" ]]; then
    tail -n 5 "$WORK/pgbouncer/pgbouncer.log" | sed 's/^/    pgbouncer: /' >&2
  fi
  return 0
}
ticks() { # PID: utime+stime in clock ticks (empty when there is no such process)
  [[ -n "$1" && -r "/proc/$1/stat" ]] || return 0
  sed 's/^.*) //' "/proc/$1/stat" | awk '{ print $12 + $13 }'
}

# ---- build and start -------------------------------------------------------------------------
if [[ -n "$ENV_PINSD_BIN" || -n "${PINSCTL_BIN:-}" ]]; then
  [[ -n "$ENV_PINSD_BIN" && -n "${PINSCTL_BIN:-}" ]] || pins_die "set both PINSD_BIN and PINSCTL_BIN, or neither"
  PINSD_BIN=$ENV_PINSD_BIN
else
  bench_build
  PINSCTL_BIN="$PINS_ROOT/build-release/pinsctl"
fi
[[ -x "$PINSD_BIN" ]] || pins_die "no pinsd at $PINSD_BIN"
[[ -x "$PINSCTL_BIN" ]] || pins_die "no pinsctl at $PINSCTL_BIN"
"$PINSCTL_BIN" bench --help >/dev/null 2>&1 || pins_die "$PINSCTL_BIN has no 'bench' command"

fail=0
# prefill NAME ADDR KEY_PREFIX TENANT_PREFIX VALUE_SIZE: upserts every key once (not measured)
prefill() {
  local t0=$SECONDS rc=0
  pins_note "prefill $1: $TENANTS tenants x $KEYS keys ($3*, $4*), $5 B values"
  run_child timeout 900 taskset -c "$LOAD_CPU" "$PINSCTL_BIN" bench --addr "$2" --prefill -n 1 \
    -c "$C" -m "$M" --keys "$KEYS" --tenants "$TENANTS" --value-size "$5" --key-prefix "$3" \
    --tenant-prefix "$4" --mix get=100 >"$WORK/prefill.out" 2>&1 || rc=$?
  ((rc == 0)) || {
    tail -n 5 "$WORK/prefill.out" >&2
    pins_die "prefill of $1 failed (exit $rc)"
  }
  pins_note "prefill $1 done in $((SECONDS - t0)) s"
}

if ((need_sq)); then
  pinsd_up sqlite "$A_SQ"
  prefill "SQLite pinsd" "$A_SQ" bench- bench-t "$VSIZE"
  if has sqlite; then prefill "SQLite pinsd, 4 KiB" "$A_SQ" big- big-t "$BIG"; fi
fi
if has peer; then
  pins_note "starting the grpcpp peer on $A_PEER, CPU $SERVER_CPU (build dir $PEER_BUILD_DIR)"
  PEER_STARTED=1
  CPUS=$SERVER_CPU run_child timeout 900 "$BENCH_DIR/peers/grpcpp/start.sh" "$A_PEER" ||
    pins_die "the grpcpp peer did not start"
  prefill "grpcpp peer" "$A_PEER" bench- bench-t "$VSIZE"
fi
PG_PORT=$P_PGSQL
psql_() { # DB SQL
  "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$1" -v ON_ERROR_STOP=1 -c "$2" >/dev/null
}
settle() { # leaves no vacuum or checkpoint work behind for the runs that follow
  psql_ pinsd_bench "VACUUM ANALYZE"
  psql_ postgres "CHECKPOINT"
}
if ((need_pg)); then
  pins_note "starting PostgreSQL 15 on 127.0.0.1:$PG_PORT, CPU $SERVER_CPU ($BENCH_DIR/peers/m7-fastapi/start.sh pg)"
  PG_STARTED=1
  PG_PORT=$PG_PORT CPUS=$SERVER_CPU run_child timeout 120 "$BENCH_DIR/peers/m7-fastapi/start.sh" pg ||
    pins_die "PostgreSQL did not start"
  psql_ postgres "CREATE DATABASE pinsd_bench"
  DBURL="postgresql://postgres@127.0.0.1:$PG_PORT/pinsd_bench"
  DATABASE_URL=$DBURL timeout 120 "$PINSCTL_BIN" migrate upgrade head >"$WORK/migrate.out" 2>&1 || {
    cat "$WORK/migrate.out" >&2
    pins_die "pinsctl migrate upgrade head failed"
  }
  pinsd_up pg "$A_PG" DATABASE_URL="$DBURL" DB_POOL_SIZE="$POOL"
  prefill "PostgreSQL pinsd" "$A_PG" bench- bench-t "$VSIZE"
  # the same pinsd without its read cache, on the same data: the cache's pairs
  has pg && pinsd_up pgnc "$A_PGNC" DATABASE_URL="$DBURL" DB_POOL_SIZE="$POOL" PINS_PG_READ_CACHE=false
  if has pgbouncer; then
    d="$WORK/pgbouncer"
    mkdir -p "$d"
    printf '"postgres" ""\n' >"$d/userlist.txt"
    cat >"$d/pgbouncer.ini" <<INI
[databases]
pinsd_bench = host=127.0.0.1 port=$PG_PORT dbname=pinsd_bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $P_BOUNCER
unix_socket_dir =
auth_type = trust
auth_file = $d/userlist.txt
pool_mode = transaction
default_pool_size = $POOL
max_client_conn = 200
ignore_startup_parameters = extra_float_digits
INI
    chown -R postgres: "$d" 2>/dev/null || true
    setpriv --reuid=postgres --regid=postgres --init-groups -- taskset -c "$SERVER_CPU" \
      "$PGBOUNCER_BIN" "$d/pgbouncer.ini" </dev/null >"$d/pgbouncer.log" 2>&1 &
    PGB_PID=$!
    pins_note "pgbouncer started, pid $PGB_PID, 127.0.0.1:$P_BOUNCER, pool $POOL, transaction mode"
    for ((i = 0; i < 100; i++)); do
      port_open "127.0.0.1:$P_BOUNCER" && break
      kill -0 "$PGB_PID" 2>/dev/null || {
        cat "$d/pgbouncer.log" >&2
        pins_die "pgbouncer exited"
      }
      sleep 0.1
    done
    pinsd_up pgbouncer "$A_PGB" DATABASE_URL="postgresql://postgres@127.0.0.1:$P_BOUNCER/pinsd_bench" \
      DB_POOL_SIZE="$POOL"
  fi
fi

# ---- load runs -------------------------------------------------------------------------------
ROUND=0
# grpc ID DESC SERVER ADDR [pinsctl bench args]: one pinsctl bench run (RUN_D seconds, default -D)
# against ADDR; SERVER names the pinsd (or "peer") whose CPU is measured.
grpc() {
  local id=$1 desc=$2 srv=$3 addr=$4 pid="" t0 t1 rc=0 d=${RUN_D:-$DUR}
  shift 4
  if [[ "$srv" == peer ]]; then
    pid=$(cat "$RUN_DIR/grpcpp/grpcpp.pid" 2>/dev/null || true)
  else
    pinsd_alive "$srv"
    pid=${SRV_PID[$srv]}
  fi
  t0=$(ticks "$pid")
  run_child timeout $((d + WARM + 90)) taskset -c "$LOAD_CPU" "$PINSCTL_BIN" bench --addr "$addr" --json \
    -c "$C" -m "$M" -d "${d}s" --warmup "${WARM}s" --keys "$KEYS" --tenants "$TENANTS" \
    --value-size "$VSIZE" --list-limit "$LIST_LIMIT" --zipf-s "$ZIPF_S" "$@" \
    >"$WORK/run.json" 2>"$WORK/run.err" || rc=$?
  t1=$(ticks "$pid")
  local tk=()
  [[ -n "$t0" && -n "$t1" ]] && tk=(--ticks $((t1 - t0)))
  if ! "${SUM[@]}" add-pinsctl "$JSONL" "$id" "$ROUND" "$desc" "$WORK/run.json" --rc "$rc" --warmup "$WARM" "${tk[@]}"; then
    fail=1
    tail -n 3 "$WORK/run.err" >&2
    server_log_tail "$srv"
  fi
}
# rest ID DESC DIST PUT_PCT: wrk against the SQLite pinsd's REST API
rest() {
  local id=$1 desc=$2 pid t0 t1 rc=0
  pinsd_alive sqlite
  pid=${SRV_PID[sqlite]}
  t0=$(ticks "$pid")
  run_child timeout $((DUR + 60)) taskset -c "$LOAD_CPU" wrk -t 1 -c "$REST_C" -d "${DUR}s" --timeout 10s \
    -s "$HERE/realistic/pins.lua" "http://$A_SQ" -- "$TENANTS" "$KEYS" "$3" "$ZIPF_S" "$4" "$VSIZE" \
    >"$WORK/run.out" 2>&1 || rc=$?
  t1=$(ticks "$pid")
  if ! "${SUM[@]}" add-wrk "$JSONL" "$id" "$ROUND" "$desc" "$WORK/run.out" --rc "$rc" --ticks $((t1 - t0)); then
    fail=1
    server_log_tail sqlite
  fi
}
# rest_h2 ID DESC URI_FILE: h2load over h2c (prior knowledge) against the SQLite pinsd's REST
# API, gRPC's -c and -m, the URIs of URI_FILE in turn; percentiles from its --log-file
rest_h2() {
  local id=$1 desc=$2 pid t0 t1 rc=0
  pinsd_alive sqlite
  pid=${SRV_PID[sqlite]}
  rm -f "$WORK/h2.log"
  t0=$(ticks "$pid")
  run_child timeout $((DUR + WARM + 60)) taskset -c "$LOAD_CPU" h2load -t 1 -c "$C" -m "$M" \
    -D "$DUR" --warm-up-time "$WARM" -i "$3" --log-file "$WORK/h2.log" >"$WORK/run.out" 2>&1 || rc=$?
  t1=$(ticks "$pid")
  if ! "${SUM[@]}" add-h2load "$JSONL" "$id" "$ROUND" "$desc" "$WORK/run.out" "$WORK/h2.log" --rc "$rc" \
    --warmup "$WARM" --ticks $((t1 - t0)); then
    fail=1
    tail -n 3 "$WORK/run.out" >&2
    server_log_tail sqlite
  fi
}
# pgb ID DESC PGBENCH_ARGS...: pgbench on pinsd's database, --pool connections, prepared
VALUE="{\"data\":\"$(printf '%*s' $((VSIZE - 12)) '' | tr ' ' x)\"}"
pgb() {
  local id=$1 desc=$2 rc=0
  shift 2
  rm -rf "$WORK/pgblog"
  mkdir -p "$WORK/pgblog"
  run_child timeout $((DUR + 60)) taskset -c "$LOAD_CPU" "$PGBIN/pgbench" -h 127.0.0.1 -p "$PG_PORT" \
    -U postgres -n -M prepared -c "$POOL" -j 1 -T "$DUR" -l --log-prefix "$WORK/pgblog/pgb" \
    -D "val=$VALUE" -D hash=0123456789abcdef -D "zipf=${ZIPF:-0}" "$@" pinsd_bench >"$WORK/run.out" 2>&1 || rc=$?
  "${SUM[@]}" add-pgbench "$JSONL" "$id" "$ROUND" "$desc" "$WORK/run.out" "$WORK/pgblog" --rc "$rc" || fail=1
  ((rc == 0)) || tail -n 3 "$WORK/run.out" >&2
}
# half ID DESC SERVER ADDR MAX_ID MAX_DESC [pinsctl bench args]: the maximum closed-loop rate
# right now (-D seconds), then half of it paced evenly (HALF_D seconds, default -D)
half() {
  local id=$1 desc=$2 srv=$3 addr=$4 mid=$5 mdesc=$6 max
  shift 6
  RUN_D=$DUR grpc "$mid" "$mdesc" "$srv" "$addr" "$@"
  max=$("${SUM[@]}" rps "$JSONL" "$mid" "$ROUND")
  if [[ -z "$max" || "$max" == 0 ]]; then
    echo "  $id skipped: no maximum measured"
    fail=1
    return 0
  fi
  echo "  $id: offering $((max / 2)) req/s, half of $max"
  RUN_D=${HALF_D:-$DUR} grpc "$id" "$desc" "$srv" "$addr" -r $((max / 2)) "$@"
}
S=sqlite
SJ=(--dist zipfian)
BIGSET=(--value-size "$BIG" --key-prefix big- --tenant-prefix big-t)
PGF="$HERE/realistic"
if has rest; then
  for dist in uniform zipfian; do
    "$PY" "$HERE/realistic/summarize.py" uris "$WORK/uris-$dist.txt" "http://$A_SQ" "$TENANTS" "$KEYS" \
      "$dist" "$ZIPF_S" 100000 15
  done
fi

pins_note "$ROUNDS rounds of $DUR s runs; parts: ${!PART[*]}; servers on CPU $SERVER_CPU, load on CPU $LOAD_CPU"
for ((ROUND = 1; ROUND <= ROUNDS; ROUND++)); do
  pins_note "round $ROUND of $ROUNDS ($((SECONDS - T_START)) s so far)"
  if has sqlite || has peer || has rest; then
    has sqlite && grpc sq_onekey "SQLite GetPin, one key (reference)" $S "$A_SQ" --keys 1 --tenants 1
    grpc sq_get_uni "SQLite GetPin uniform" $S "$A_SQ"
    has peer && grpc peer_get_uni "grpcpp peer GetPin uniform" peer "$A_PEER"
    has rest && rest rest_get_uni "REST GET uniform over HTTP/1.1 (wrk c=$REST_C)" uniform 0
    has rest && rest_h2 rest_h2_get_uni "REST GET uniform over h2c (h2load c=$C m=$M)" "$WORK/uris-uniform.txt"
    has sqlite && grpc sq_get_zipf "SQLite GetPin zipfian s=$ZIPF_S" $S "$A_SQ" "${SJ[@]}"
    has rest && rest rest_get_zipf "REST GET zipfian s=$ZIPF_S over HTTP/1.1 (wrk c=$REST_C)" zipfian 0
    has rest && rest_h2 rest_h2_get_zipf "REST GET zipfian s=$ZIPF_S over h2c (h2load c=$C m=$M)" "$WORK/uris-zipfian.txt"
    if has sqlite || has peer; then grpc sq_mix90 "SQLite 90/10 get/put uniform" $S "$A_SQ" --mix get=90,put=10; fi
    has peer && grpc peer_mix90 "grpcpp peer 90/10 get/put uniform" peer "$A_PEER" --mix get=90,put=10
    has rest && rest rest_mix90 "REST 90/10 GET/POST uniform over HTTP/1.1 (wrk c=$REST_C)" uniform 10
    if has sqlite; then
      grpc sq_mix50 "SQLite 50/50 get/put uniform" $S "$A_SQ" --mix get=50,put=50
      grpc sq_list "SQLite ListPins limit $LIST_LIMIT by prefix" $S "$A_SQ" --mix list=100
      grpc sq_put_uni "SQLite UpsertPin uniform" $S "$A_SQ" --mix put=100
      grpc sq_get_uni_4k "SQLite GetPin uniform, 4 KiB values" $S "$A_SQ" "${BIGSET[@]}"
      grpc sq_mix90_4k "SQLite 90/10 uniform, 4 KiB values" $S "$A_SQ" "${BIGSET[@]}" --mix get=90,put=10
    fi
  fi
  if ((need_pg)); then
    settle
    if has pg || has pgbouncer; then grpc pg_get_uni "PG direct GetPin uniform" pg "$A_PG"; fi
    has pgbench && pgb pgbench_select "pgbench select uniform c=$POOL" -f "$PGF/select.sql"
    has pgbouncer && grpc pgb_get_uni "PgBouncer GetPin uniform" pgbouncer "$A_PGB"
    has pg && grpc pgnc_get_uni "PG direct GetPin uniform, no read cache" pgnc "$A_PGNC"
    has pg && grpc pg_get_zipf "PG direct GetPin zipfian s=$ZIPF_S" pg "$A_PG" "${SJ[@]}"
    has pg && grpc pgnc_get_zipf "PG direct GetPin zipfian s=$ZIPF_S, no read cache" pgnc "$A_PGNC" "${SJ[@]}"
    has pgbench && ZIPF=1 pgb pgbench_select_zipf "pgbench select zipfian s=1.001 (PG 15 minimum) c=$POOL" -f "$PGF/select.sql"
    if has pg || has pgbouncer; then grpc pg_mix90 "PG direct 90/10 uniform" pg "$A_PG" --mix get=90,put=10; fi
    has pgbench && pgb pgbench_mix90 "pgbench 90/10 select/upsert c=$POOL" -f "$PGF/select.sql@9" -f "$PGF/upsert.sql@1"
    has pg && grpc pgnc_mix90 "PG direct 90/10 uniform, no read cache" pgnc "$A_PGNC" --mix get=90,put=10
    has pgbouncer && grpc pgb_mix90 "PgBouncer 90/10 uniform" pgbouncer "$A_PGB" --mix get=90,put=10
    has pg && grpc pg_mix50 "PG direct 50/50 uniform" pg "$A_PG" --mix get=50,put=50
    has pgbench && pgb pgbench_mix50 "pgbench 50/50 select/upsert c=$POOL" -f "$PGF/select.sql@1" -f "$PGF/upsert.sql@1"
    has pg && grpc pg_put_uni "PG direct UpsertPin uniform" pg "$A_PG" --mix put=100
    has pgbench && pgb pgbench_upsert "pgbench upsert uniform c=$POOL" -f "$PGF/upsert.sql"
    has pg && grpc pg_list "PG direct ListPins limit $LIST_LIMIT by prefix" pg "$A_PG" --mix list=100
  fi
  if has half; then
    half half_sq_get "SQLite GetPin uniform at half load, paced" $S "$A_SQ" max_sq_get "SQLite GetPin uniform, maximum before half load"
    half half_sq_put "SQLite UpsertPin uniform at half load, paced" $S "$A_SQ" max_sq_put "SQLite UpsertPin uniform, maximum before half load" --mix put=100
    if [[ -n "${SRV_PID[pg]:-}" ]]; then
      settle
      half half_pg_get "PG direct GetPin uniform at half load, paced" pg "$A_PG" max_pg_get "PG direct GetPin uniform, maximum before half load"
    fi
  fi
done
if has stall; then
  ROUND=1
  pins_note "stall: 60 s of GetPin uniform on SQLite at half of the maximum ($((SECONDS - T_START)) s so far)"
  HALF_D=60 half stall_sq_get "SQLite GetPin uniform, 60 s at half load, paced (stall check)" $S "$A_SQ" \
    max_stall "SQLite GetPin uniform, maximum before the stall run"
fi
for n in "${!SRV_PID[@]}"; do pinsd_alive "$n"; done

# ---- report ----------------------------------------------------------------------------------
ELAPSED=$((SECONDS - T_START))
echo
echo "pinsd $(git -C "$PINS_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?') ($PINSD_BIN), servers on CPU $SERVER_CPU (PINS_WORKERS=1), load on CPU $LOAD_CPU;" \
  "$ROUNDS round(s) of $DUR s; gRPC c=$C m=$M, REST HTTP/1.1 wrk c=$REST_C, REST h2c h2load c=$C m=$M, DB_POOL_SIZE=pgbench -c=$POOL;" \
  "$TENANTS tenants x $KEYS keys, $VSIZE B values; zipfian s=$ZIPF_S (pgbench: 1.001); $ELAPSED s in all"
echo
rc=0
"${SUM[@]}" report "$JSONL" "$OUT" "date=$(date -u '+%Y-%m-%d %H:%M UTC')" \
  "pinsd=$(git -C "$PINS_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')" \
  "command=tools/bench/realistic.sh $*" "rounds=$ROUNDS" "seconds_per_run=$DUR" \
  "grpc=c=$C m=$M (pinsctl bench)" "rest=wrk -t 1 -c $REST_C, HTTP/1.1" "rest_h2c=h2load -t 1 -c $C -m $M, h2c prior knowledge" "pool=$POOL" \
  "data=$TENANTS tenants x $KEYS keys, $VSIZE B (4 KiB set: big-t*/big-*)" \
  "zipfian=s=$ZIPF_S (pgbench random_zipfian s=1.001, its minimum in PostgreSQL 15)" \
  "pinning=servers CPU $SERVER_CPU (pinsd PINS_WORKERS=1), load CPU $LOAD_CPU" \
  "elapsed_s=$ELAPSED" || rc=$?
cp "$JSONL" "$OUT/runs.jsonl"
echo
echo "written: $OUT/results.md, $OUT/results.json, $OUT/runs.jsonl"
((fail == 0 && rc == 0)) || pins_die "some runs were not all OK (marked NOT ALL OK above)"
