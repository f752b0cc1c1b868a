#!/usr/bin/env bash
# tools/layercheck.sh: proves that the per-layer libraries only call downwards.
#
#   tools/layercheck.sh LIB...     (the static libraries, lowest layer first, as CMake lists them)
#
# For each library, every symbol it leaves undefined must be defined by itself, by a library
# listed before it (a lower layer), or by none of them (libc, nghttp2, libpq...). A symbol that
# only a later (higher) library defines is an upward call: it is printed with the object that
# needs it, and the exit status is 1. ctest runs it as build/layers (tests/CMakeLists.txt).
# Exit status: 0 clean, 1 an upward call, 2 usage error or a library missing.
set -euo pipefail
if (($# == 0)) || [[ "$1" == -h || "$1" == --help ]]; then
  sed -n '2,11p' "$0" | sed 's/^# \{0,1\}//'
  (($# > 0)) && exit 0 || exit 2
fi
command -v nm >/dev/null || { echo "layercheck: nm not found (binutils)" >&2; exit 2; }
tmp=$(mktemp -d /tmp/pins-layercheck.XXXXXX)
trap 'rm -rf "$tmp"' EXIT
i=0
names=()
for lib in "$@"; do
  [[ -f "$lib" ]] || { echo "layercheck: no library $lib" >&2; exit 2; }
  nm -g --defined-only "$lib" 2>/dev/null | awk 'NF >= 3 { print $3 }' | sort -u >"$tmp/def.$i"
  names+=("$(basename "$lib" .a)")
  i=$((i + 1))
done
n=$i
bad=0
for ((i = 0; i < n; i++)); do
  lib=$(eval echo "\${$((i + 1))}")
  # lowest layer that defines each symbol, then this library's undefined symbols against it
  if ! nm -u -A "$lib" 2>/dev/null | awk -v me="$i" -v names="${names[*]}" -v dir="$tmp" -v n="$n" '
    BEGIN {
      split(names, name, " ")
      for (j = 0; j < n; j++) {
        f = dir "/def." j
        while ((getline s < f) > 0) if (!(s in layer)) layer[s] = j
        close(f)
      }
    }
    {
      sym = $NF; where = $1; sub(/:$/, "", where)
      if ((sym in layer) && layer[sym] > me && !seen[sym]++) {
        printf "layercheck: %s calls up into %s: %s (%s)\n", name[me + 1], name[layer[sym] + 1], sym, where
        bad = 1
      }
    }
    END { exit bad }'; then
    bad=1
  fi
done
if ((bad)); then
  exit 1
fi
echo "layercheck: ${names[*]}: every call goes downwards"
