# shellcheck shell=bash
# tools/bench/common.sh: what the benchmark scripts share (source it; it only defines things).
#
#   BENCH_DIR          the shared harness (peers, load scripts): $BENCH_DIR if set, else
#                      ../shared/bench next to the repository
#   PY                 the Debian python3 (has grpcio and protobuf), override with PY=...
#   bench_build        build pinsd (Release, build-release/) and set PINSD_BIN
#   pinsd_start ADDR CPUS [FLAGS...]   start pinsd on ADDR (loopback), data in a temp dir
#   pinsd_stop         stop it by pid (SIGTERM, then SIGKILL after 15 s) and remove the temp dir
#   port_open HOST:PORT                true when something accepts TCP connections there
#   run_child CMD...   CMD as a background job in its own process group (its pid in CHILD while
#                      it runs), waited for; a script's trap stops the group "-$CHILD"
#   bench_options SPEC... -- ARGS...   parse a script's command line (see below); extra pinsd
#                      flags after "--" go to PINSD_FLAGS
#   raise_nofile N WHAT  raise the open-files limit to N (pinsd inherits it); dies naming WHAT
#                      when the hard limit is lower
#   rss_kib PID        VmRSS of PID in KiB;  mib KIB: KIB as MiB with one decimal

# shellcheck source=tools/lib.sh
. "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"

PY=${PY:-/usr/bin/python3}
if [[ -z "${BENCH_DIR:-}" ]]; then
  top=$(git -C "$PINS_ROOT" rev-parse --show-toplevel 2>/dev/null || echo "$PINS_ROOT")
  BENCH_DIR="$top/../shared/bench"
fi
[[ -x "$BENCH_DIR/compare.sh" ]] ||
  pins_die "no benchmark harness in $BENCH_DIR (set BENCH_DIR to the shared bench/ folder)"
BENCH_DIR=$(cd "$BENCH_DIR" && pwd)

PINSD_BIN="" PINSD_PID="" PINSD_TMP="" PINSD_LOG=""

require_loopback() {
  local host=${1%:*}
  host=${host#[}
  host=${host%]}
  case "$host" in
    127.0.0.1 | ::1 | localhost) ;;
    *) pins_die "refusing non-loopback address '$1' (benchmarks run on 127.0.0.1 only)" ;;
  esac
}

port_open() {
  local host=${1%:*} port=${1##*:}
  host=${host#[}
  host=${host%]}
  (exec 3<>"/dev/tcp/$host/$port") 2>/dev/null
}

bench_build() {
  "$PINS_ROOT/tools/deps.sh" >/dev/null || pins_die "missing build dependencies (run tools/deps.sh)"
  pins_note "building pinsd (Release) in build-release/"
  pins_build "$PINS_ROOT/build-release" -DCMAKE_BUILD_TYPE=Release -DPINS_TESTS=OFF >/dev/null ||
    pins_die "building pinsd failed (run tools/run.sh to see the compiler output)"
  PINSD_BIN="$PINS_ROOT/build-release/pinsd"
}

# pinsd_start ADDR CPUS [FLAGS...]: CPUS empty means not pinned. The environment wins over the
# defaults set here except for PINS_LISTEN and PINS_DATA_DIR.
pinsd_start() {
  local addr=$1 cpus=$2 i
  shift 2
  require_loopback "$addr"
  ! port_open "$addr" || pins_die "something already listens on $addr; stop it first"
  PINSD_TMP=$(mktemp -d /tmp/pinsd-bench-data.XXXXXX)
  PINSD_LOG="$PINSD_TMP/pinsd.log"
  local cmd=("$PINSD_BIN" "$@")
  [[ -n "$cpus" ]] && cmd=(taskset -c "$cpus" "${cmd[@]}")
  PINS_LISTEN=$addr PINS_DATA_DIR="$PINSD_TMP/data" RATE_LIMIT_RPM=${RATE_LIMIT_RPM:-0} \
    PINS_DRAIN_SECONDS=${PINS_DRAIN_SECONDS:-2} LOG_LEVEL=${LOG_LEVEL:-warn} \
    "${cmd[@]}" </dev/null >"$PINSD_LOG" 2>&1 &
  PINSD_PID=$!
  pins_note "pinsd started, pid $PINSD_PID${cpus:+, CPU $cpus}, $addr, log $PINSD_LOG"
  for ((i = 0; i < 150; i++)); do
    if ! kill -0 "$PINSD_PID" 2>/dev/null; then
      tail -n 20 "$PINSD_LOG" >&2 || true
      PINSD_PID=""
      pins_die "pinsd exited before listening on $addr (its log is above)"
    fi
    port_open "$addr" && return 0
    sleep 0.1
  done
  tail -n 20 "$PINSD_LOG" >&2 || true
  pins_die "pinsd did not listen on $addr within 15 s"
}

pinsd_stop() {
  local i
  if [[ -n "$PINSD_PID" ]] && kill -0 "$PINSD_PID" 2>/dev/null; then
    kill -TERM "$PINSD_PID" 2>/dev/null || true
    for ((i = 0; i < 150; i++)); do
      kill -0 "$PINSD_PID" 2>/dev/null || break
      sleep 0.1
    done
    if kill -0 "$PINSD_PID" 2>/dev/null; then
      echo "pinsd (pid $PINSD_PID) ignored SIGTERM for 15 s, sending SIGKILL" >&2
      kill -KILL "$PINSD_PID" 2>/dev/null || true
    fi
    wait "$PINSD_PID" 2>/dev/null || true
    pins_note "pinsd stopped (pid $PINSD_PID)"
  fi
  PINSD_PID=""
  if [[ -n "$PINSD_TMP" ]]; then
    rm -rf "$PINSD_TMP"
    PINSD_TMP=""
  fi
}

# run_child CMD...: CMD as a background job in its own process group, waited for, so that a signal
# reaches the caller's trap at once and the trap can stop the whole group (h2load included): the
# trap kills "-$CHILD" while CHILD is set. Returns CMD's status.
CHILD=""
run_child() {
  local rc=0
  set -m
  "$@" </dev/null &
  CHILD=$!
  set +m
  wait "$CHILD" || rc=$?
  CHILD=""
  return "$rc"
}

# bench_options SPEC... -- ARGS...: parses a benchmark script's command line ARGS. Each SPEC names
# one option and the variable it sets:
#   OPT=VAR+    OPT takes a positive integer ("OPT needs a positive integer, got 'X'" otherwise)
#   OPT=VAR:    OPT takes any value
#   OPT=VAR=V   OPT takes no value and sets VAR to V
# An option given without its value dies with "OPT needs a value". -h and --help print the
# script's header comment (from line 2 to the line before "set -euo") and exit 0; "--" ends the
# options and what follows it becomes PINSD_FLAGS; anything else dies as an unknown option.
# Limits beyond "positive integer" are the script's to check afterwards.
bench_options() {
  local specs=() spec opt var kind
  while [[ "$1" != -- ]]; do
    specs+=("$1")
    shift
  done
  shift
  # shellcheck disable=SC2034 # the calling script's
  PINSD_FLAGS=()
  while (($#)); do
    case "$1" in
      -h | --help)
        sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
        exit 0
        ;;
      --)
        shift
        # shellcheck disable=SC2034 # the calling script's
        PINSD_FLAGS=("$@")
        return 0
        ;;
    esac
    kind=""
    for spec in "${specs[@]}"; do
      opt=${spec%%=*}
      [[ "$1" == "$opt" ]] || continue
      var=${spec#*=}
      case "$var" in
        *=*) kind=flag ;;
        *+) kind=posint var=${var%+} ;;
        *:) kind=value var=${var%:} ;;
        *) pins_die "bench_options: bad spec '$spec'" ;;
      esac
      break
    done
    case "$kind" in
      flag)
        printf -v "${var%%=*}" '%s' "${var#*=}"
        shift
        ;;
      posint | value)
        (($# >= 2)) || pins_die "$1 needs a value"
        [[ "$kind" != posint || "$2" =~ ^[1-9][0-9]*$ ]] || pins_die "$1 needs a positive integer, got '$2'"
        printf -v "$var" '%s' "$2"
        shift 2
        ;;
      *) pins_die "unknown option '$1' (see --help)" ;;
    esac
  done
}

raise_nofile() { # N WHAT
  local soft hard
  soft=$(ulimit -Sn)
  if [[ "$soft" != unlimited ]] && ((soft < $1)); then
    hard=$(ulimit -Hn)
    if [[ "$hard" != unlimited ]] && ((hard < $1)); then
      pins_die "open-files hard limit $hard is below the $1 needed for $2"
    fi
    ulimit -n "$1"
  fi
}

rss_kib() { # PID -> VmRSS in KiB
  awk '/^VmRSS:/ { print $2; found = 1 } END { if (!found) exit 1 }' "/proc/$1/status" ||
    pins_die "cannot read VmRSS of pid $1 (did pinsd exit?)"
}

mib() { awk -v k="$1" 'BEGIN { printf "%.1f", k / 1024 }'; }
