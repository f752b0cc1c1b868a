#!/usr/bin/env bash
# tools/test.sh: install the test dependencies, then build and run every check and test.
#
#   tools/test.sh [--quick] [-R REGEX] [--no-deps]
#
#   --quick      skip the sanitizer stage
#   -R REGEX     run only the ctest tests matching REGEX (passed to ctest -R)
#   --no-deps    skip tools/deps.sh --test (when you know everything is installed)
#   -h, --help   this text
#
# Stages, in order; the first failure stops the run:
#   deps       tools/deps.sh --test (Debian packages via apt-get as root, buf via npm)
#   checksrc   tools/checksrc --format (the source checks and clang-format), when it is present
#              and executable
#   buf lint   tools/node_modules/.bin/buf lint, in proto/
#   build      cmake -DPINS_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo into build/, make, then
#              ctest --test-dir build --output-on-failure -j2 (unit and interop tests)
#   release    cmake -DPINS_WERROR=ON -DCMAKE_BUILD_TYPE=Release into build-release/ (what
#              tools/run.sh builds, the same tree; no tests): optimiser warnings are errors too
#   sanitize   cmake -DPINS_SANITIZE=ON -DCMAKE_BUILD_TYPE=Debug into build-asan/, make, then ctest
#              with ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 and
#              UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1, without the tests labelled
#              `tooling` (tests of the operators' scripts and deployment files, which run pinsd
#              the same way again: tests/CMakeLists.txt; the runbook test does run here)
#
# The last line is "N passed, N failed", the ctest counts summed over both ctest stages.
# Environment: JOBS=N make parallelism (default: nproc); BUILD_PREFIX=DIR puts the trees in DIR,
# DIR-release and DIR-asan instead of build/, build-release/ and build-asan/.
# Exit status: 0 only when every stage passed.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools/lib.sh
. "$HERE/lib.sh"

QUICK=0 DEPS=1 REGEX=""
while (($#)); do
  case "$1" in
    --quick) QUICK=1 ;;
    --no-deps) DEPS=0 ;;
    -R)
      (($# >= 2)) || pins_die "-R needs a regular expression"
      REGEX=$2
      shift
      ;;
    -R*) REGEX=${1#-R} ;;
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
      exit 0
      ;;
    *) pins_die "unknown option '$1' (see tools/test.sh --help)" ;;
  esac
  shift
done

cd "$PINS_ROOT"
BUILD_PREFIX=${BUILD_PREFIX:-$PINS_ROOT/build}
PASSED=0 FAILED=0
STAGE="" STAGE_START=0
START=$SECONDS

stage() {
  STAGE=$1
  STAGE_START=$SECONDS
  echo
  echo "======== $STAGE ========"
}

stage_ok() {
  echo "-------- $STAGE: ok ($((SECONDS - STAGE_START)) s)"
}

# run_stage NAME FAILURE CMD...: the stage NAME is CMD alone: its banner, CMD, then its "ok" line,
# or fail FAILURE when CMD fails.
run_stage() {
  local failure=$2
  stage "$1"
  shift 2
  "$@" || fail "$failure"
  stage_ok
}

summary() {
  echo
  echo "$PASSED passed, $FAILED failed"
}

fail() {
  echo "-------- $STAGE: FAILED ($((SECONDS - STAGE_START)) s)" >&2
  echo "error: stage '$STAGE' failed: $*" >&2
  summary
  exit 1
}

# run_ctest DIR [-LE LABEL] [ENV=VALUE...]: runs ctest in DIR (without the tests labelled LABEL),
# adds its counts to PASSED and FAILED.
run_ctest() {
  local dir=$1 log rc=0 line failed total
  shift
  log=$(mktemp "${TMPDIR:-/tmp}/pins-ctest.XXXXXX")
  local args=(--test-dir "$dir" --output-on-failure -j2)
  if [[ "${1:-}" == -LE ]]; then
    args+=(-LE "$2")
    shift 2
  fi
  [[ -n "$REGEX" ]] && args+=(-R "$REGEX")
  if env "$@" ctest "${args[@]}" 2>&1 | tee "$log"; then rc=0; else rc=$?; fi
  line=$(grep -E 'tests passed, [0-9]+ tests? failed out of [0-9]+' "$log" | tail -1 || true)
  rm -f "$log"
  if [[ "$line" =~ ([0-9]+)\ tests?\ failed\ out\ of\ ([0-9]+) ]]; then
    failed=${BASH_REMATCH[1]}
    total=${BASH_REMATCH[2]}
    PASSED=$((PASSED + total - failed))
    FAILED=$((FAILED + failed))
  elif ((rc == 0)); then
    local what="no tests"
    [[ -n "$REGEX" ]] && what="no tests matching \"$REGEX\""
    echo "note: ctest found $what in $dir"
  fi
  if ((rc != 0)); then
    [[ -n "$line" ]] || FAILED=$((FAILED + 1)) # ctest itself failed; count it once
    return 1
  fi
}

# ---- deps --------------------------------------------------------------------------------------
if ((DEPS)); then
  run_stage deps "installing the test dependencies failed" "$HERE/deps.sh" --test
fi

# ---- checksrc ----------------------------------------------------------------------------------
stage checksrc
if [[ -x "$HERE/checksrc" ]]; then
  "$HERE/checksrc" --format || fail "tools/checksrc found problems (see above)"
  stage_ok
else
  echo "-------- checksrc: skipped (tools/checksrc is not there yet)"
fi

# ---- buf lint ----------------------------------------------------------------------------------
stage "buf lint"
BUF="$HERE/node_modules/.bin/buf"
[[ -x "$BUF" ]] || fail "$BUF is missing; run tools/deps.sh --test"
(cd "$PINS_ROOT/proto" && "$BUF" lint) || fail "buf lint found problems in proto/ (see above)"
stage_ok

# ---- build + ctest -----------------------------------------------------------------------------
run_stage "build (warnings are errors)" "the build failed (see the compiler output above)" \
  pins_build "$BUILD_PREFIX" -DPINS_WERROR=ON -DPINS_TESTS=ON -DPINS_SANITIZE=OFF \
  -DCMAKE_BUILD_TYPE=RelWithDebInfo
run_stage "tests" "some tests failed (see the output above)" run_ctest "$BUILD_PREFIX"
# The Release build tools/run.sh makes (the README's first command): -O3 warns where -O2 does not.
run_stage "build (Release, as tools/run.sh; warnings are errors)" \
  "the Release build failed (see the compiler output above)" \
  pins_build "$BUILD_PREFIX-release" -DPINS_WERROR=ON -DPINS_TESTS=OFF -DCMAKE_BUILD_TYPE=Release

# ---- sanitizers --------------------------------------------------------------------------------
if ((QUICK)); then
  echo
  echo "======== sanitize: skipped (--quick) ========"
else
  run_stage "build (AddressSanitizer + UndefinedBehaviorSanitizer)" \
    "the sanitizer build failed (see the compiler output above)" \
    pins_build "$BUILD_PREFIX-asan" -DPINS_SANITIZE=ON -DPINS_WERROR=ON -DPINS_TESTS=ON \
    -DCMAKE_BUILD_TYPE=Debug
  run_stage "tests under the sanitizers" "some tests failed under the sanitizers (see the output above)" \
    run_ctest "$BUILD_PREFIX-asan" -LE tooling ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 \
    UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
fi

# ---- fuzzing ----------------------------------------------------------------------------------
# Every libFuzzer target runs from its committed corpus for FUZZ_SECONDS (default 30); new inputs
# go to a scratch directory, never into the repository. A crash, leak or timeout fails the stage.
if ((QUICK)); then
  echo
  echo "======== fuzz: skipped (--quick) ========"
else
  CC=clang run_stage "build (libFuzzer targets, clang)" "the fuzz build failed (see the compiler output above)" \
    pins_build "$BUILD_PREFIX-fuzz" -DCMAKE_C_COMPILER=clang -DPINS_FUZZ=ON \
    -DPINS_TESTS=OFF -DPINS_WERROR=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo

  stage "fuzz (${FUZZ_SECONDS:-30} s per target)"
  for fz in "$BUILD_PREFIX-fuzz"/tests/fuzz/fuzz_*; do
    [[ -x "$fz" ]] || continue
    name=$(basename "$fz")
    name=${name#fuzz_}
    scratch=$(mktemp -d "${TMPDIR:-/tmp}/pins-fuzz.XXXXXX")
    dict=()
    [[ -f "$PINS_ROOT/tests/fuzz/$name.dict" ]] && dict=(-dict="$PINS_ROOT/tests/fuzz/$name.dict")
    echo "-- fuzz_$name"
    if ! timeout $(( ${FUZZ_SECONDS:-30} + 60 )) "$fz" "${dict[@]}" \
      -max_total_time="${FUZZ_SECONDS:-30}" -timeout=10 -rss_limit_mb=2048 \
      -artifact_prefix="$scratch/" "$scratch" "$PINS_ROOT/tests/fuzz/corpus/$name" \
      > "$scratch/log" 2>&1; then
      tail -40 "$scratch/log"
      FAILED=$((FAILED + 1))
      fail "fuzz_$name found a problem (artifacts in $scratch)"
    fi
    tail -1 "$scratch/log"
    PASSED=$((PASSED + 1))
    rm -rf "$scratch"
  done
  stage_ok
fi

echo
echo "all stages passed in $((SECONDS - START)) s"
summary
