#!/usr/bin/env bash
# tools/bench/pg_vs_pgbench.sh: pinsd on PostgreSQL against the database's own ceiling (pgbench) and
# against the M7 FastAPI app it replaces, all on the same PostgreSQL 15 cluster.
#
#   tools/bench/pg_vs_pgbench.sh [-D S] [--rounds N] [-c N] [-m N] [--pool N] [--rest-c N]
#                                [--no-rest] [--no-half] [--no-multikey] [-- PINSD_FLAGS]
#
#   -D S            seconds per load run [5] (at most 20)
#   --rounds N      rounds of every A/B pair [3] (at most 10)
#   -c N, -m N      gRPC connections and streams per connection for (a) and (c) [16, 32]
#   --pool N        pinsd's DB_POOL_SIZE, and pgbench's -c (same number of connections) [8]
#   --rest-c N      HTTP/1.1 connections for (b) [16]
#   --no-rest       skip (b), the M7 FastAPI comparison
#   --no-half       skip (c), p99 at half of the maximum GetPin throughput
#   --no-multikey   skip the reference pgbench upsert over 1000 keys
#   -- FLAGS        extra flags for pinsd
#
# Setup: builds pinsd and pinsctl (Release, build-release/), starts PostgreSQL 15 with
# $BENCH_DIR/peers/m7-fastapi/start.sh pg (127.0.0.1:55432, user postgres, trust auth on loopback,
# cluster, pid files and logs under a mktemp dir: RUN_DIR=/tmp/pinsd-pgbench.XXXXXX/run), creates
# database pinsd_bench next to the peer's m7 database and runs `pinsctl migrate upgrade head` on it
# (the peer's system.memory_pins is M7's schema, without pinsd's version / value_hash columns), then
# starts pinsd on it (DATABASE_URL=postgresql://postgres@127.0.0.1:55432/pinsd_bench,
# DB_POOL_SIZE=--pool, RATE_LIMIT_RPM=0) on 127.0.0.1:50051. PostgreSQL, pinsd and uvicorn run on
# CPU 0; h2load and pgbench on CPU 1.
#
#   (a) pinsd GetPin / UpsertPin over gRPC ($BENCH_DIR/grpc_load.sh, c/m) against
#       $BENCH_DIR/peers/m7-fastapi/pgbench.sh select / upsert with -c --pool. pgbench runs the M7
#       app's SQL on the M7 schema (prepared statements, one row, no audit row); pinsd runs its own
#       statements on its own schema (an upsert also writes memory_audit). That is the closest
#       "same SQL" there is. pinsd batches the calls that wait together (one statement for the
#       reads, one transaction for the writes, one statement for the upserts of one key in it:
#       store/README.md, "Segments") and, connected
#       straight to PostgreSQL as here, runs named prepared statements as pgbench -M prepared
#       does. Target: pinsd >= 0.9x pgbench's TPS for each.
#       Every run uses ONE key (h2load sends one body; grpc_load.sh cannot vary it), so UpsertPin
#       measures the row lock of one hot row; pgbench upsert with --nkeys 1000 is printed as a
#       reference for what the database does without that contention (not comparable to pinsd).
#   (b) REST GET and POST through pinsd against the M7 app ($BENCH_DIR/peers/m7-fastapi/start.sh
#       app, uvicorn 2 workers, 127.0.0.1:8071, same cluster), $BENCH_DIR/rest_load.sh HTTP/1.1,
#       --rest-c connections. Target: pinsd >= 10x the app's req/s.
#   (c) GetPin p99 at half of the maximum GetPin throughput, offered at an even pace. Each round
#       measures the maximum again (as in (a)) and offers half of it right away: these machines
#       are shared, their capacity drifts over minutes, and half of a maximum measured minutes
#       earlier can be most of what the machine gives by the time it is offered. h2load's
#       --rps (requests per second per connection, added by a small h2load shim first on
#       grpc_load.sh's PATH) wakes each connection every 10 ms and sends that 10 ms's share at
#       once. Connections opened together wake together: the whole server then gets a burst
#       of 10 ms of traffic in one instant, drains it at full speed and idles for the rest of the
#       period, so "half load" is really full load half the time (its log shows nothing sent
#       for about 5 ms of every 10). The paced run opens the c connections 1 ms apart (h2load -r 1
#       --rate-period=1ms, which needs grpc_load.sh's count mode -n instead of -D), so their
#       wake-ups interleave and the same rate arrives spread over each 10 ms.
#       Target: median p99 <= 5 ms over the paced runs. Printed for reference: the in-phase runs,
#       and paced runs at the same rate against a second pinsd on its embedded SQLite store
#       (127.0.0.1:50052, CPU 0, started for (c) only). Their p99 is what the machine, h2load and
#       pinsd's transport give at that moment without PostgreSQL, so a miss can be read against
#       the noise of the same run.
#
# Before every round of (a) and of (c), both databases are vacuumed and analysed whole and a
# checkpoint is taken (settle, below), as pgbench vacuums before its runs: the writes of the phase
# before (pinsd's upserts also write memory_audit rows) would otherwise leave autovacuum and the
# checkpointer work that lands, at a random moment, on the CPU of the phase measured next.
#
# Runs alternate pinsd / peer in every round. Everything started is stopped on exit, also on
# failure or Ctrl-C: pinsd by pid, then $BENCH_DIR/peers/m7-fastapi/stop.sh all (uvicorn by pid,
# pg_ctl stop, cluster deleted), and the temp dir is removed.
# Exit status: 0 every run was all OK (targets met or not), 1 a run had errors or something failed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools/bench/common.sh
. "$HERE/common.sh"

DUR=5 ROUNDS=3 C=16 M=32 POOL=8 REST_C=16 REST=1 HALF=1 MULTIKEY=1
ADDR=127.0.0.1:50051 REF_ADDR=127.0.0.1:50052 PG_PORT=55432 APP_PORT=8071 SERVER_CPU=0 LOAD_CPU=1
bench_options -D=DUR+ --rounds=ROUNDS+ -c=C+ -m=M+ --pool=POOL+ --rest-c=REST_C+ \
  --no-rest=REST=0 --no-half=HALF=0 --no-multikey=MULTIKEY=0 -- "$@"
((DUR <= 20)) || pins_die "-D must be at most 20 s"
((ROUNDS <= 10)) || pins_die "--rounds must be at most 10"
((POOL <= 90)) || pins_die "--pool must be at most 90 (the peer's max_connections is 100)"
(($(nproc) >= 2)) || pins_die "needs 2 CPUs (servers on CPU $SERVER_CPU, load on CPU $LOAD_CPU)"
command -v h2load >/dev/null || pins_die "h2load not found (apt-get install nghttp2-client, or tools/deps.sh --bench)"
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
[[ -x "$PGBIN/pgbench" && -x "$PGBIN/psql" ]] || pins_die "PostgreSQL 15 not found in $PGBIN (apt-get install postgresql-15)"
if ((HALF)) && [[ "$(h2load --help 2>&1)" != *--rps=* ]]; then
  pins_die "this h2load has no --rps, needed by (c); use --no-half"
fi
for a in "127.0.0.1:$PG_PORT" "127.0.0.1:$APP_PORT" "$ADDR"; do
  ! port_open "$a" || pins_die "something already listens on $a (another benchmark?); stop it first"
done

unset REDIS_URL DATABASE_URL # pinsd gets only the DATABASE_URL set below, and no shared limiter

WORK=$(mktemp -d /tmp/pinsd-pgbench.XXXXXX)
chmod 755 "$WORK" # the postgres user must reach the cluster below it
# The peer's pid files, logs and cluster go to our own RUN_DIR, never to a shared one.
export RUN_DIR="$WORK/run" PG_PORT APP_PORT
mkdir -p "$RUN_DIR"
JSONL="$WORK/runs.jsonl"
: >"$JSONL"
PG_STARTED=0 CHILD="" REF_PID="" REF_TMP=""
# ref_start / ref_stop: the reference pinsd of (c), on SQLite at REF_ADDR, beside the one under test
# (pinsd_start and pinsd_stop keep one pinsd in PINSD_PID / PINSD_TMP: swapped around the calls).
ref_start() {
  local pid=$PINSD_PID tmp=$PINSD_TMP log=$PINSD_LOG
  PINSD_PID="" PINSD_TMP=""
  DATABASE_URL="" pinsd_start "$REF_ADDR" "$SERVER_CPU"
  REF_PID=$PINSD_PID REF_TMP=$PINSD_TMP
  PINSD_PID=$pid PINSD_TMP=$tmp PINSD_LOG=$log
}
ref_stop() {
  local pid=$PINSD_PID tmp=$PINSD_TMP
  PINSD_PID=$REF_PID PINSD_TMP=$REF_TMP
  pinsd_stop
  REF_PID="" REF_TMP=""
  PINSD_PID=$pid PINSD_TMP=$tmp
}
cleanup() {
  local rc=$?
  trap - EXIT INT TERM
  exec >&2
  if [[ -n "$CHILD" ]]; then # a running load script and its h2load / pgbench
    kill -TERM -- "-$CHILD" 2>/dev/null || true
    wait "$CHILD" 2>/dev/null || true
  fi
  ref_stop
  pinsd_stop
  if ((PG_STARTED)); then "$BENCH_DIR/peers/m7-fastapi/stop.sh" all || true; fi
  rm -rf "$WORK"
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

fail=0
# run LABEL CMD...: one bounded load run; its result line is printed and its JSON record kept.
run() {
  local label=$1 rc=0
  shift
  run_child timeout $((DUR * 3 + 90)) "$@" --label "$label" --json-out "$JSONL" >"$WORK/run.out" 2>&1 || rc=$?
  if ((rc != 0)); then
    fail=1
    echo "  [exit $rc] $(tail -n 3 "$WORK/run.out" | tr '\n' ' ')"
  else
    echo "  $(tail -n 1 "$WORK/run.out")"
  fi
}
psql_() { # DB SQL
  "$PGBIN/psql" -X -q -h 127.0.0.1 -p "$PG_PORT" -U postgres -d "$1" -v ON_ERROR_STOP=1 -c "$2" >/dev/null
}
settle() { # leaves no vacuum or checkpoint work behind for the next phase
  psql_ m7 "VACUUM ANALYZE"
  psql_ pinsd_bench "VACUUM ANALYZE"
  psql_ postgres "CHECKPOINT"
}

bench_build
PINSCTL="$PINS_ROOT/build-release/pinsctl"
[[ -x "$PINSCTL" ]] || pins_die "build-release/pinsctl was not built"

pins_note "starting PostgreSQL 15 on 127.0.0.1:$PG_PORT, CPU $SERVER_CPU ($BENCH_DIR/peers/m7-fastapi/start.sh pg)"
PG_STARTED=1
CPUS=$SERVER_CPU run_child "$BENCH_DIR/peers/m7-fastapi/start.sh" pg || pins_die "PostgreSQL did not start"
psql_ postgres "CREATE DATABASE pinsd_bench"
DBURL="postgresql://postgres@127.0.0.1:$PG_PORT/pinsd_bench"
pins_note "pinsctl migrate upgrade head on pinsd_bench"
DATABASE_URL=$DBURL "$PINSCTL" migrate upgrade head || pins_die "pinsctl migrate upgrade head failed"

DATABASE_URL=$DBURL DB_POOL_SIZE=$POOL RATE_LIMIT_RPM=0 pinsd_start "$ADDR" "$SERVER_CPU" "${PINSD_FLAGS[@]}"
for ((i = 0; i < 100; i++)); do # /ready is 200 once the store's connections are up
  code=$(curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://$ADDR/ready" || true)
  [[ "$code" == 200 ]] && break
  sleep 0.1
done
[[ "$code" == 200 ]] || pins_die "pinsd's /ready answered $code after 10 s: $(curl -s --max-time 2 "http://$ADDR/ready" || true)"

SVC=memorypins.v1.MemoryPins
PIN='{"tenant_id":"bench","key":"bench:k1","value":{"a":1,"note":"bench"},"ttl_seconds":3600}'
GET='{"tenant_id":"bench","key":"bench:k1"}'
GL=("$BENCH_DIR/grpc_load.sh" --addr "$ADDR" -c "$C" -m "$M" -D "$DUR" --cpu "$LOAD_CPU")
PGB=("$BENCH_DIR/peers/m7-fastapi/pgbench.sh")
L_GET="pinsd GetPin grpc c=$C m=$M" L_SEL="pgbench select c=$POOL"
L_UPS="pinsd UpsertPin grpc c=$C m=$M (1 key)" L_PUP="pgbench upsert c=$POOL (1 key)"
L_PUP1K="pgbench upsert c=$POOL (1000 keys, reference)"

pins_note "(a) pinsd on PostgreSQL vs pgbench, $ROUNDS rounds of $DUR s, server CPU $SERVER_CPU, load CPU $LOAD_CPU"
for ((r = 1; r <= ROUNDS; r++)); do
  settle
  run "$L_GET" "${GL[@]}" --method "$SVC/GetPin" --json "$GET" --seed-method "$SVC/UpsertPin" --seed-json "$PIN"
  run "$L_SEL" "${PGB[@]}" select -c "$POOL" -T "$DUR" --cpu "$LOAD_CPU"
  run "$L_UPS" "${GL[@]}" --method "$SVC/UpsertPin" --json "$PIN"
  run "$L_PUP" "${PGB[@]}" upsert -c "$POOL" -T "$DUR" --cpu "$LOAD_CPU"
  if ((MULTIKEY)); then
    run "$L_PUP1K" "${PGB[@]}" upsert -c "$POOL" -T "$DUR" --nkeys 1000 --cpu "$LOAD_CPU"
  fi
done

last_of() { # LABEL FIELD: FIELD of the last record labelled LABEL, rounded (empty if none)
  "$PY" - "$JSONL" "$1" "$2" <<'PYEOF'
import json, sys
path, label, field = sys.argv[1:4]
v = [r[field] for r in map(json.loads, filter(str.strip, open(path))) if r["label"] == label and r.get(field) is not None]
print(f"{v[-1]:.0f}" if v else "")
PYEOF
}

L_HALF="" L_BURST="" L_REF=""
if ((HALF)); then
  L_CMAX="pinsd GetPin grpc c=$C m=$M, the round's maximum"
  L_HALF="pinsd GetPin grpc c=$C m=$M at half of the round's maximum, paced"
  L_BURST="pinsd GetPin grpc c=$C m=$M at half of the round's maximum, in phase"
  L_REF="reference: pinsd on SQLite, GetPin grpc c=$C m=$M at the same rate, paced"
  mkdir -p "$WORK/shim"
  # shellcheck disable=SC2016 # $PINS_H2LOAD_RPS, $PINS_H2LOAD_EXTRA and $@ are for the shim
  printf '#!/bin/sh\nexec %s --rps="$PINS_H2LOAD_RPS" $PINS_H2LOAD_EXTRA "$@"\n' \
    "$(command -v h2load)" >"$WORK/shim/h2load"
  chmod 755 "$WORK/shim/h2load"
  pins_note "(c) GetPin at half of the maximum, $ROUNDS rounds: the maximum again (as in (a)), then half of it" \
    "with the connections opened 1 ms apart (paced), the reference pinsd on SQLite at that rate, and" \
    "the connections opened at once (in phase)"
  ref_start
  GLR=("$BENCH_DIR/grpc_load.sh" --addr "$REF_ADDR" -c "$C" -m "$M" -D "$DUR" --cpu "$LOAD_CPU")
  for ((r = 1; r <= ROUNDS; r++)); do
    settle
    run "$L_CMAX" "${GL[@]}" --method "$SVC/GetPin" --json "$GET"
    max=$(last_of "$L_CMAX" rps)
    if [[ -z "$max" || "$max" == 0 ]]; then
      echo "  round $r skipped: no maximum GetPin throughput"
      fail=1
      continue
    fi
    # h2load --rps is per connection: C connections at rps each offer C * rps requests/s.
    rps=$(((max / 2 + C / 2) / C))
    ((rps >= 1)) || rps=1
    echo "  round $r: $((rps * C)) req/s offered (half of $max): h2load --rps $rps per connection x $C"
    run "$L_HALF" env PATH="$WORK/shim:$PATH" PINS_H2LOAD_RPS="$rps" \
      PINS_H2LOAD_EXTRA="--rate-period=1ms" "${GL[@]}" --method "$SVC/GetPin" --json "$GET" \
      -n $((rps * C * DUR)) --rate 1
    run "$L_REF" env PATH="$WORK/shim:$PATH" PINS_H2LOAD_RPS="$rps" \
      PINS_H2LOAD_EXTRA="--rate-period=1ms" "${GLR[@]}" --method "$SVC/GetPin" --json "$GET" \
      --seed-method "$SVC/UpsertPin" --seed-json "$PIN" -n $((rps * C * DUR)) --rate 1
    run "$L_BURST" env PATH="$WORK/shim:$PATH" PINS_H2LOAD_RPS="$rps" PINS_H2LOAD_EXTRA="" \
      "${GL[@]}" --method "$SVC/GetPin" --json "$GET"
  done
  ref_stop
fi

if ((REST)); then
  pins_note "(b) REST through pinsd vs the M7 FastAPI app (uvicorn on CPU $SERVER_CPU, 127.0.0.1:$APP_PORT)"
  CPUS=$SERVER_CPU run_child "$BENCH_DIR/peers/m7-fastapi/start.sh" app || pins_die "the M7 app did not start"
  P_BASE="http://$ADDR/api/v1/memory/pins" M_BASE="http://127.0.0.1:$APP_PORT/api/v1/memory/pins"
  RL=("$BENCH_DIR/rest_load.sh" -c "$REST_C" -D "$DUR" --cpu "$LOAD_CPU")
  for ((r = 1; r <= ROUNDS; r++)); do
    run "pinsd REST GET h1 c=$REST_C" "${RL[@]}" --url "$P_BASE/bench:k1?tenant_id=bench" --seed-url "$P_BASE" --seed-json "$PIN"
    run "m7 REST GET h1 c=$REST_C" "${RL[@]}" --url "$M_BASE/bench:k1?tenant_id=bench" --seed-url "$M_BASE" --seed-json "$PIN"
    run "pinsd REST POST h1 c=$REST_C (1 key)" "${RL[@]}" --url "$P_BASE" -X POST --json "$PIN"
    run "m7 REST POST h1 c=$REST_C (1 key)" "${RL[@]}" --url "$M_BASE" -X POST --json "$PIN"
  done
fi

echo
echo "pinsd ($ADDR, DB_POOL_SIZE=$POOL) and peers on PostgreSQL 15 127.0.0.1:$PG_PORT; servers on CPU $SERVER_CPU, load on CPU $LOAD_CPU; $ROUNDS rounds of $DUR s"
"$PY" "$BENCH_DIR/lib/summarize.py" "$JSONL"
echo
"$PY" - "$JSONL" "$L_GET" "$L_SEL" "$L_UPS" "$L_PUP" "$REST_C" "$L_HALF" "$L_BURST" "$L_REF" <<'PYEOF'
import json, statistics, sys
path, l_get, l_sel, l_ups, l_pup, rc, l_half, l_burst, l_ref = sys.argv[1:10]
recs = [json.loads(l) for l in open(path) if l.strip()]
def med(label, field="rps"):
    v = [r[field] for r in recs if r["label"] == label and r.get(field) is not None]
    return statistics.median(v) if v else None
def ratio(name, a, b, target):
    ma, mb = med(a), med(b)
    if not ma or not mb:
        print(f"  {name:<34} n/a (a side has no usable run)")
        return
    x = ma / mb
    verdict = "meets" if x >= target else "MISSES"
    print(f"  {name:<34} {ma:>9.0f} / {mb:>9.0f} req/s = {x:6.2f}x   target >= {target:g}x: {verdict}")
print("ratios of medians:")
ratio("GetPin / pgbench select", l_get, l_sel, 0.9)
ratio("UpsertPin / pgbench upsert, 1 key", l_ups, l_pup, 0.9)
ratio(f"REST GET pinsd / M7 (c={rc})", f"pinsd REST GET h1 c={rc}", f"m7 REST GET h1 c={rc}", 10)
ratio(f"REST POST pinsd / M7 (c={rc})", f"pinsd REST POST h1 c={rc} (1 key)", f"m7 REST POST h1 c={rc} (1 key)", 10)
if l_half:
    p99, got = med(l_half, "p99_ms"), med(l_half)
    if p99 is None:
        print("  GetPin p99 at half load            n/a")
    else:
        verdict = "meets" if p99 <= 5 else "MISSES"
        print(f"  GetPin p99 at half load, paced     {p99:.2f} ms at {got:.0f} req/s achieved   target <= 5 ms: {verdict}")
    p99, got = med(l_burst, "p99_ms"), med(l_burst)
    if p99 is not None:
        print(f"  (in phase: 10 ms bursts)           {p99:.2f} ms at {got:.0f} req/s achieved   (reference)")
    p99, got = med(l_ref, "p99_ms"), med(l_ref)
    if p99 is not None:
        print(f"  (pinsd on SQLite, same rate, paced) {p99:.2f} ms at {got:.0f} req/s achieved   (reference: the machine's noise)")
print("note: every run uses one key; UpsertPin and pgbench upsert measure one hot row's lock and WAL flush.")
PYEOF
((fail == 0)) || pins_die "some runs were not all OK (see the lines marked NOT ALL OK or [exit N] above)"
