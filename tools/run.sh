#!/usr/bin/env bash
# tools/run.sh: install the build dependencies, build pinsd (Release) and start it.
#
#   tools/run.sh [PINSD_FLAGS...]
#   tools/run.sh --help          this text; `tools/run.sh -- --help` shows pinsd's own flags
#   tools/run.sh --build-only    install and build only (build-release/pinsd and pinsctl, what
#                                deploy/local/stack.sh runs), do not start pinsd
#
# Steps: tools/deps.sh (the build set; apt-get as root when something is missing), then
# cmake -DCMAKE_BUILD_TYPE=Release -DPINS_TESTS=OFF into build-release/ and make -j$(nproc)
# (JOBS=N to change), then exec build-release/pinsd with every flag given.
#
# With no DATABASE_URL pinsd uses its embedded store; run.sh points PINS_DATA_DIR at var/ in the
# repository unless PINS_DATA_DIR (or --PINS_DATA_DIR) is given. pinsd listens on
# 127.0.0.1:8000 (REST) and 127.0.0.1:50051 (gRPC) by default and logs where it listens;
# every setting of README.md "Configuration" works as an environment variable or a flag,
# for example:  RATE_LIMIT_RPM=0 tools/run.sh --LOG_FORMAT=text
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools/lib.sh
. "$HERE/lib.sh"

case "${1:-}" in
  -h | --help)
    sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
    exit 0
    ;;
  --) shift ;;
  --build-only) BUILD_ONLY=1 ;;
esac

"$HERE/deps.sh" || pins_die "installing the build dependencies failed (see above)"

BUILD_DIR="$PINS_ROOT/build-release"
pins_note "building pinsd (Release) in $BUILD_DIR"
pins_build "$BUILD_DIR" -DCMAKE_BUILD_TYPE=Release -DPINS_TESTS=OFF ||
  pins_die "the build failed (see the compiler output above)"
[[ -x "$BUILD_DIR/pinsd" ]] || pins_die "the build produced no $BUILD_DIR/pinsd"
if [[ -n "${BUILD_ONLY:-}" ]]; then
  pins_note "built $BUILD_DIR/pinsd and $BUILD_DIR/pinsctl"
  exit 0
fi

if [[ -z "${PINS_DATA_DIR:-}" ]]; then
  export PINS_DATA_DIR="$PINS_ROOT/var"
  mkdir -p "$PINS_DATA_DIR"
fi
pins_note "starting $BUILD_DIR/pinsd (PINS_DATA_DIR=$PINS_DATA_DIR unless a flag or DATABASE_URL says otherwise); Ctrl-C stops it"
exec "$BUILD_DIR/pinsd" "$@"
