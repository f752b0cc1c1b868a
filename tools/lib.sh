# shellcheck shell=bash
# tools/lib.sh: helpers shared by the scripts in tools/ (source it; it only defines things).
#
#   PINS_ROOT        the repository root (derived from this file's location)
#   pins_die MSG     print "error: MSG" to stderr and exit 1
#   pins_note MSG    print "==> MSG"
#   pins_jobs        the make parallelism: $JOBS if set, else nproc
#   pins_build DIR [CMAKE_ARGS...]   configure the tree into DIR and build it

PINS_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

pins_die() {
  echo "error: $*" >&2
  exit 1
}

pins_note() {
  echo "==> $*"
}

pins_jobs() {
  local j=${JOBS:-}
  if [[ -z "$j" ]]; then j=$(nproc 2>/dev/null || echo 2); fi
  [[ "$j" =~ ^[1-9][0-9]*$ ]] || pins_die "JOBS must be a positive integer, got '$j'"
  echo "$j"
}

# pins_build DIR [CMAKE_ARGS...]: cmake configure (quiet unless something is wrong) and build.
# Returns cmake's status, so callers decide how to report a failure.
pins_build() {
  local dir=$1 jobs
  shift
  jobs=$(pins_jobs)
  cmake -S "$PINS_ROOT" -B "$dir" --log-level=WARNING "$@" || return
  cmake --build "$dir" -j "$jobs" || return
}
