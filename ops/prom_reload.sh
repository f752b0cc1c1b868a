#!/usr/bin/env bash
# ops/prom_reload.sh: the runbook's Phase 3 (Prometheus lifecycle) in one step. Checks the new
# alert rules with promtool, keeps a last-known-good copy of the rules Prometheus runs now,
# installs the new ones into the live rules directory, reloads Prometheus through the nginx reload
# guard (ops/nginx) with PROM_RELOAD_TOKEN, and verifies through the API that the reload succeeded
# and every new group is loaded. On any failure after the install it puts the last-known-good copy
# back, reloads again and exits non-zero with one line saying what failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
me=prom_reload.sh
url=${PROM_URL:-http://localhost:9090}
live_dir=${PROM_RULES_DIR:-/etc/prometheus/rules}
backup_dir=
promtool=${PROMTOOL:-promtool}
timeout=30

usage() {
    cat <<USAGE
Usage: PROM_RELOAD_TOKEN=... $0 [options] [RULES_FILE...]

  RULES_FILE...       the new rule files (default: $here/prometheus_rules/*.yml)
  --live-dir DIR      the directory Prometheus loads its rule files from (its rule_files glob,
                      <config dir>/rules/*.yml with observability/prometheus/prometheus.yml);
                      default \$PROM_RULES_DIR, else $live_dir
  --url URL           the reload guard in front of Prometheus (default \$PROM_URL, else
                      http://localhost:9090)
  --backup-dir DIR    where the last-known-good copy is kept (default LIVE_DIR.last-known-good)
  --promtool PATH     promtool to check the rules with (default \$PROMTOOL, else promtool)
  --timeout SECONDS   bound of every HTTP request (default $timeout)
  -h, --help          this text

The token is read from the PROM_RELOAD_TOKEN environment variable only, and goes to curl through
a pipe, never on a command line. Steps: promtool check rules; copy LIVE_DIR/*.yml to the backup
directory; install the files into LIVE_DIR (same names); POST URL/-/reload with
"Authorization: Bearer \$PROM_RELOAD_TOKEN"; check /api/v1/status/runtimeinfo (reload successful,
after this run started) and /api/v1/rules (every group of the new files is loaded from its file,
with its number of rules). On a failure after the install, the backup is put back and Prometheus
reloaded again.

Exit status: 0 done; 1 failed, nothing installed or last-known-good restored and reloaded;
2 failed and the rollback reload failed too (the files are restored, Prometheus may still run
the old state it had: look at it now); 64 usage.
USAGE
}

say() { echo "$me: $*" >&2; }
die_usage() { say "$*"; exit 64; }

rules=()
while [ $# -gt 0 ]; do
    case "$1" in
        --live-dir) live_dir=${2:?--live-dir needs a value}; shift 2 ;;
        --url) url=${2:?--url needs a value}; shift 2 ;;
        --backup-dir) backup_dir=${2:?--backup-dir needs a value}; shift 2 ;;
        --promtool) promtool=${2:?--promtool needs a value}; shift 2 ;;
        --timeout) timeout=${2:?--timeout needs a value}; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; rules+=("$@"); break ;;
        -*) usage >&2; die_usage "unknown option: $1" ;;
        *) rules+=("$1"); shift ;;
    esac
done
if [ ${#rules[@]} -eq 0 ]; then
    shopt -s nullglob
    rules=("$here"/prometheus_rules/*.yml)
    shopt -u nullglob
    [ ${#rules[@]} -gt 0 ] || die_usage "no rule files in $here/prometheus_rules"
fi
[[ "$timeout" =~ ^[0-9]+$ ]] || die_usage "--timeout: not a number of seconds: $timeout"
url=${url%/}
live_dir=${live_dir%/}
[ -n "$backup_dir" ] || backup_dir="$live_dir.last-known-good"

# Failure before anything was installed: one line, nothing to undo.
fail_early() { say "FAILED: $*; nothing installed, Prometheus untouched"; exit 1; }

for tool in "$promtool" curl python3 flock; do
    command -v "$tool" >/dev/null || fail_early "$tool not found"
done
python3 -c 'import yaml' 2>/dev/null || fail_early "python3 cannot import yaml (Debian: python3-yaml)"
for f in "${rules[@]}"; do
    if [ ! -f "$f" ] || [ ! -r "$f" ]; then
        fail_early "rule file not readable: $f"
    fi
    case "$(basename "$f")" in
        *.yml|*.yaml) ;;
        *) fail_early "rule file $f does not end in .yml or .yaml" ;;
    esac
done

# 1. promtool check rules
if ! out=$("$promtool" check rules "${rules[@]}" 2>&1); then
    printf '%s\n' "$out" >&2
    fail_early "promtool check rules rejected ${rules[*]}"
fi

token=${PROM_RELOAD_TOKEN-}
[ -n "$token" ] || fail_early "PROM_RELOAD_TOKEN is empty or unset"
[ -d "$live_dir" ] || fail_early "live rules directory $live_dir does not exist (--live-dir: where Prometheus loads its rule files)"
live_real=$(cd "$live_dir" && pwd -P)
for f in "${rules[@]}"; do
    if [ "$(cd "$(dirname "$f")" && pwd -P)" = "$live_real" ]; then
        fail_early "$f is already in the live directory $live_dir: give the new files from elsewhere (nothing to keep as last-known-good otherwise)"
    fi
done

work=$(mktemp -d "${TMPDIR:-/tmp}/prom_reload.XXXXXX")
cleanup() { rm -rf "$work"; }
trap cleanup EXIT

exec 9>"$backup_dir.lock"
flock -n 9 || fail_early "another $me holds $backup_dir.lock"

# GET URL$1 into $2; prints the HTTP status (000 when unreachable).
http_get() {
    curl -sS -o "$2" -w '%{http_code}' --max-time "$timeout" "$url$1" 2>"$work/curl.err" || true
}

# POST URL/-/reload with the token (from a pipe: curl -K - reads the header from stdin).
reload() {
    local t=${token//\\/\\\\}
    t=${t//\"/\\\"}
    printf 'header = "Authorization: Bearer %s"\n' "$t" |
        curl -sS -K - -X POST -o "$work/reload.body" -w '%{http_code}' --max-time "$timeout" \
            "$url/-/reload" 2>"$work/curl.err" || true
}

# Why a reload answered $1, in words.
reload_reason() {
    case "$1" in
        000) echo "the guard at $url is unreachable ($(head -c 200 "$work/curl.err" | tr '\n' ' '))" ;;
        401) echo "the guard answered 401 (no token reached it)" ;;
        403) echo "the guard answered 403 (PROM_RELOAD_TOKEN is not the guard's token)" ;;
        405) echo "the guard answered 405 to POST /-/reload" ;;
        *) echo "the reload answered HTTP $1: $(head -c 300 "$work/reload.body" | tr '\n' ' ')" ;;
    esac
}

# Checks that Prometheus reloaded successfully at or after epoch second $1 and that the groups
# of the files $3... are loaded from files named like them in $2; prints what is wrong, if anything.
verify() {
    local since=$1 dir=$2 code
    shift 2
    code=$(http_get /api/v1/status/runtimeinfo "$work/runtimeinfo.json")
    [ "$code" = 200 ] || { echo "GET /api/v1/status/runtimeinfo answered $code"; return 1; }
    code=$(http_get /api/v1/rules "$work/rules.json")
    [ "$code" = 200 ] || { echo "GET /api/v1/rules answered $code"; return 1; }
    python3 - "$since" "$dir" "$work/runtimeinfo.json" "$work/rules.json" "$@" <<'PY'
import datetime, json, os, re, sys
import yaml

since, live, info_path, rules_path = sys.argv[1:5]
files = sys.argv[5:]
info = json.load(open(info_path))["data"]
if not info.get("reloadConfigSuccess"):
    sys.exit(print("Prometheus reports its last configuration reload failed") or 1)
last = info.get("lastConfigTime", "")
try:
    t = datetime.datetime.fromisoformat(re.sub(r"\.[0-9]+", "", last).replace("Z", "+00:00"))
    if t.tzinfo is None:
        t = t.replace(tzinfo=datetime.timezone.utc)
    ok = t.timestamp() >= int(since)
except ValueError:
    ok = False
if not ok:
    sys.exit(print("Prometheus's last successful reload (%s) is older than this run" % last) or 1)
loaded = {}
for g in json.load(open(rules_path))["data"]["groups"]:
    path = g.get("file", "")
    if os.path.isabs(path) and os.path.exists(path):
        key = os.path.realpath(path)
    else:
        key = os.path.basename(path)
    loaded[(key, g["name"])] = len(g.get("rules") or [])
live = os.path.realpath(live)
missing = []
for f in files:
    doc = yaml.safe_load(open(f)) or {}
    name = os.path.basename(f)
    for grp in doc.get("groups") or []:
        want = len(grp.get("rules") or [])
        got = loaded.get((os.path.join(live, name), grp["name"]), loaded.get((name, grp["name"])))
        if got != want:
            missing.append("%s/%s (%s rules loaded, %d in the file)" %
                           (name, grp["name"], "no" if got is None else got, want))
if missing:
    hint = ""
    if not any(os.path.isabs(k[0]) and os.path.dirname(k[0]) == live for k in loaded):
        hint = " (Prometheus loads no rule file from %s: is it the directory its rule_files names?)" % live
    sys.exit(print("not loaded as written: " + ", ".join(missing) + hint) or 1)
PY
}

# Puts the last-known-good copy back: the live *.yml files become exactly the backup's.
restore() {
    local f
    shopt -s nullglob
    for f in "$live_dir"/*.yml "$live_dir"/*.yaml; do
        [ -e "$backup_dir/$(basename "$f")" ] || rm -f "$f"
    done
    for f in "$backup_dir"/*.yml "$backup_dir"/*.yaml; do
        cp -p "$f" "$live_dir/.$(basename "$f").restore"
        mv -f "$live_dir/.$(basename "$f").restore" "$live_dir/$(basename "$f")"
    done
    shopt -u nullglob
}

# Failure after the install: restore, reload, verify the restored groups, one line, exit.
# $2 "not-reloaded" when the guard refused the reload: Prometheus never re-read the rule files,
# so the restored files are what it runs and there is nothing to reload.
fail_rollback() {
    local what=$1 code why status=1
    trap cleanup EXIT
    restore
    if [ "${2-}" = not-reloaded ]; then
        say "FAILED: $what; restored the last-known-good rules from $backup_dir (Prometheus was not reloaded and still runs them)"
        exit 1
    fi
    local since
    since=$(date +%s)
    code=$(reload)
    if [ "$code" != 200 ]; then
        why="rollback reload failed: $(reload_reason "$code")"
        status=2
    else
        local restored=()
        shopt -s nullglob
        restored=("$backup_dir"/*.yml "$backup_dir"/*.yaml)
        shopt -u nullglob
        if why=$(verify "$since" "$live_dir" "${restored[@]}"); then
            why="reloaded"
        else
            why="rollback reload not verified: $why"
            status=2
        fi
    fi
    say "FAILED: $what; restored the last-known-good rules from $backup_dir ($why)"
    exit "$status"
}

# 2. Prometheus answers through the guard, and what it runs now is the last-known-good.
code=$(http_get /api/v1/status/runtimeinfo "$work/runtimeinfo.json")
[ "$code" = 200 ] || fail_early "GET $url/api/v1/status/runtimeinfo answered $code ($(head -c 200 "$work/curl.err" | tr '\n' ' '))"
if ! python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["data"].get("reloadConfigSuccess") else 1)' "$work/runtimeinfo.json"; then
    say "warning: Prometheus's last reload had failed: the live rules may not be what it runs; keeping them as last-known-good anyway"
fi
new_backup=$(mktemp -d "$backup_dir.new.XXXXXX")
shopt -s nullglob
live_files=("$live_dir"/*.yml "$live_dir"/*.yaml)
shopt -u nullglob
[ ${#live_files[@]} -eq 0 ] || cp -p "${live_files[@]}" "$new_backup/"
chmod 0755 "$new_backup"
rm -rf "$backup_dir"
mv "$new_backup" "$backup_dir"

# 3. Install (each file renamed into place: Prometheus never reads half a file).
trap 'fail_rollback "interrupted or failed while installing"' EXIT
for f in "${rules[@]}"; do
    name=$(basename "$f")
    cp "$f" "$live_dir/.$name.new"
    chmod 0644 "$live_dir/.$name.new"
    mv -f "$live_dir/.$name.new" "$live_dir/$name"
done

# 4. Reload through the guard.
since=$(date +%s)
code=$(reload)
case "$code" in
    200) ;;
    401|403|405) fail_rollback "$(reload_reason "$code")" not-reloaded ;;
    *) fail_rollback "$(reload_reason "$code")" ;;
esac

# 5. Verify.
installed_files=()
for f in "${rules[@]}"; do
    installed_files+=("$live_dir/$(basename "$f")")
done
if ! why=$(verify "$since" "$live_dir" "${installed_files[@]}"); then
    fail_rollback "reload not verified: $why"
fi
trap cleanup EXIT
say "OK: ${#rules[@]} rule file(s) installed in $live_dir and loaded; previous rules kept in $backup_dir"
