#!/usr/bin/env bash
# tools/deps.sh: install what pinsd needs on Debian 12, and nothing that is already there.
#
#   tools/deps.sh            the build set (compilers, cmake, libraries)
#   tools/deps.sh --test     the build set, the test and ops tools, @bufbuild/buf (npm, into
#                            tools/node_modules, pinned by tools/package.json + package-lock.json)
#                            and the Kubernetes schema validator (npm ci in tests/ops/k8s)
#   tools/deps.sh --bench    the build set and what the benchmark peers in ../shared/bench need
#   tools/deps.sh --list [--test] [--bench]   print the Debian packages of that set and exit
#
# Options combine (--test --bench installs both sets). Each package is checked with dpkg-query;
# only missing ones are installed (apt-get update first, then apt-get install
# --no-install-recommends). Installing does not start any service (a temporary policy-rc.d is
# used when the machine has none). As root no sudo is needed; as another user the script names
# the missing packages and exits 1.
#
# Exit status: 0 everything is present, 1 something is missing or failed to install.
set -euo pipefail
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck source=tools/lib.sh
. "$HERE/lib.sh"

# ---- the package sets: the one place that lists them ------------------------------------------
# Build: toolchain, codegen, and every library CMakeLists.txt links (DESIGN.md "Dependencies").
BUILD_PKGS=(
  cmake gcc make pkg-config
  libprotobuf-c-dev protobuf-c-compiler protobuf-compiler libprotobuf-dev
  libnghttp2-dev libevent-dev node-llhttp libpq-dev libsqlite3-dev libhiredis-dev libssl-dev
  libjansson-dev libcmocka-dev
  clang libclang-rt-14-dev # libFuzzer targets (PINS_FUZZ)
)
# Test: interop clients, formatters and the servers the integration tests start on loopback.
TEST_PKGS=(
  python3 python3-grpcio python3-protobuf python3-h2
  nghttp2-client curl openssl nodejs npm clang-format
  postgresql redis-server pgbouncer prometheus nginx
  python3-yaml jq shellcheck # the ops tests: rule YAML, the runbook's `jq`, the ops scripts
  docker-compose systemd     # tests/ops/test_deploy.py: `docker-compose config`, `systemd-analyze verify`
  podman runc netavark aardvark-dns iptables debootstrap # tests/containers: the compose stack on podman (netavark sets up its networks with iptables)
)
# Bench: ../shared/bench/README.md "Setup" (grpcpp, etcd, nghttpd and m7-fastapi peers, h2load).
BENCH_PKGS=(
  libgrpc++-dev protobuf-compiler-grpc protobuf-compiler cmake g++ pkg-config
  python3 python3-grpcio python3-protobuf etcd-server etcd-client nghttp2-server nghttp2-client
  curl python3-fastapi uvicorn python3-psycopg2 python3-uvloop python3-httptools postgresql-15
  util-linux # taskset
  wrk        # tools/bench/realistic.sh: REST load with scripted keys
)
# npm packages come from tools/package.json (exact versions) and tools/package-lock.json.

usage() {
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'
}

WANT_TEST=0 WANT_BENCH=0 LIST_ONLY=0
while (($#)); do
  case "$1" in
    --test) WANT_TEST=1 ;;
    --bench) WANT_BENCH=1 ;;
    --list) LIST_ONLY=1 ;;
    -h | --help)
      usage
      exit 0
      ;;
    *) pins_die "unknown option '$1' (see tools/deps.sh --help)" ;;
  esac
  shift
done

# The wanted set, in order, without duplicates.
WANTED=()
declare -A SEEN=()
add_pkgs() {
  local p
  for p in "$@"; do
    if [[ -z "${SEEN[$p]:-}" ]]; then
      SEEN[$p]=1
      WANTED+=("$p")
    fi
  done
}
add_pkgs "${BUILD_PKGS[@]}"
((WANT_TEST)) && add_pkgs "${TEST_PKGS[@]}"
((WANT_BENCH)) && add_pkgs "${BENCH_PKGS[@]}"

if ((LIST_ONLY)); then
  printf '%s\n' "${WANTED[@]}"
  exit 0
fi

command -v dpkg-query >/dev/null 2>&1 || pins_die "dpkg-query not found: tools/deps.sh supports Debian 12 only"

# Virtual packages provided by installed packages (nodesource's nodejs provides npm, for example;
# installing Debian's npm next to it would remove it). Computed on first use.
PROVIDED=""
provided_by_installed() {
  local want=$1
  if [[ -z "$PROVIDED" ]]; then
    PROVIDED=$(dpkg-query -W -f='${db:Status-Abbrev}|${Provides}\n' 2>/dev/null |
      awk -F'|' '$1 ~ /^ii/ && $2 != "" { n = split($2, a, /, */); for (i = 1; i <= n; i++) { sub(/ .*/, "", a[i]); print a[i] } }' |
      sort -u)
    PROVIDED=${PROVIDED:-none}
  fi
  grep -qxF -- "$want" <<<"$PROVIDED"
}

pkg_status() {
  dpkg-query -W -f='${Status}' "$1" 2>/dev/null || true
}

pkg_ok() {
  [[ "$(pkg_status "$1")" == "install ok installed" ]] || provided_by_installed "$1"
}

MISSING=()
BROKEN=0
for p in "${WANTED[@]}"; do
  if ! pkg_ok "$p"; then
    MISSING+=("$p")
    case "$(pkg_status "$p")" in
      "" | *not-installed | *config-files) ;;
      *) BROKEN=1 ;; # unpacked, half-configured, ...
    esac
  fi
done

sets="build"
((WANT_TEST)) && sets+=", test"
((WANT_BENCH)) && sets+=", bench"

if ((${#MISSING[@]} == 0)); then
  echo "deps: all ${#WANTED[@]} Debian packages of the $sets set are installed"
else
  echo "deps: missing Debian packages: ${MISSING[*]}"
  if ((EUID != 0)); then
    again="tools/deps.sh"
    ((WANT_TEST)) && again+=" --test"
    ((WANT_BENCH)) && again+=" --bench"
    echo "error: installing them needs root; run as root: $again" >&2
    echo "       or: apt-get install --no-install-recommends ${MISSING[*]}" >&2
    exit 1
  fi
  command -v apt-get >/dev/null 2>&1 || pins_die "apt-get not found: tools/deps.sh supports Debian 12 only"

  export DEBIAN_FRONTEND=noninteractive
  APT_OPTS=(-o DPkg::Lock::Timeout=600 -o Dpkg::Use-Pty=0)

  # Packages install; they do not start services (tests start their own servers on loopback).
  POLICY=/usr/sbin/policy-rc.d
  if [[ ! -e "$POLICY" ]]; then
    printf '#!/bin/sh\n# temporary, from pinsd tools/deps.sh: no service starts while installing\nexit 101\n' >"$POLICY"
    chmod 755 "$POLICY"
    trap 'rm -f "$POLICY"' EXIT
  fi

  if ((BROKEN)); then
    echo "deps: finishing interrupted package installs (dpkg --configure -a)"
    dpkg --configure -a || pins_die "dpkg --configure -a failed; fix the package state first"
  fi
  echo "deps: apt-get update"
  apt-get "${APT_OPTS[@]}" update -q || pins_die "apt-get update failed (is the Debian mirror reachable?)"
  echo "deps: apt-get install ${MISSING[*]}"
  if ! apt-get "${APT_OPTS[@]}" install -y -q --no-install-recommends "${MISSING[@]}"; then
    pins_die "apt-get install failed for: ${MISSING[*]}"
  fi

  PROVIDED=""
  STILL=()
  for p in "${MISSING[@]}"; do
    pkg_ok "$p" || STILL+=("$p")
  done
  ((${#STILL[@]} == 0)) || pins_die "still not installed after apt-get: ${STILL[*]}"
  echo "deps: installed ${#MISSING[@]} Debian packages: ${MISSING[*]}"
fi

# ---- npm packages into tools/node_modules (test set only) --------------------------------------
if ((WANT_TEST)); then
  command -v node >/dev/null 2>&1 || pins_die "node not found after installing nodejs"
  command -v npm >/dev/null 2>&1 || pins_die "npm not found after installing npm"
  [[ -f "$HERE/package.json" ]] || pins_die "tools/package.json is missing"
  pinned=$(node -p "require(process.argv[1]).devDependencies['@bufbuild/buf']" "$HERE/package.json")
  [[ "$pinned" =~ ^[0-9]+\.[0-9]+\.[0-9]+$ ]] ||
    pins_die "tools/package.json must pin @bufbuild/buf to an exact version, found '$pinned'"
  BUF="$HERE/node_modules/.bin/buf"
  have=$("$BUF" --version 2>/dev/null || true)
  if [[ "$have" == "$pinned" ]]; then
    echo "deps: npm @bufbuild/buf $have is in tools/node_modules"
  else
    if [[ -f "$HERE/package-lock.json" ]]; then
      echo "deps: npm ci in tools/ (@bufbuild/buf $pinned)"
      (cd "$HERE" && npm ci --no-audit --no-fund) || pins_die "npm ci in tools/ failed (is the npm registry reachable?)"
    else
      echo "deps: npm install in tools/ (no package-lock.json yet; commit the one it writes)"
      (cd "$HERE" && npm install --no-audit --no-fund) || pins_die "npm install in tools/ failed (is the npm registry reachable?)"
    fi
    have=$("$BUF" --version 2>/dev/null || true)
    [[ "$have" == "$pinned" ]] || pins_die "tools/node_modules/.bin/buf reports '$have', expected $pinned"
    echo "deps: installed npm @bufbuild/buf $have into tools/node_modules"
  fi
  # The offline Kubernetes schema validator of tests/ops/test_deploy.py, pinned by its lockfile.
  K8S="$PINS_ROOT/tests/ops/k8s"
  if [[ -d "$K8S/node_modules/kubernetes-models" && -d "$K8S/node_modules/typescript" ]]; then
    echo "deps: npm packages of tests/ops/k8s are installed"
  else
    echo "deps: npm ci in tests/ops/k8s (kubernetes-models, kubernetes-types, typescript)"
    (cd "$K8S" && npm ci --no-audit --no-fund) || pins_die "npm ci in tests/ops/k8s failed (is the npm registry reachable?)"
  fi
fi
