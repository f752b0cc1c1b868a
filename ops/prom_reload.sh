#!/usr/bin/env bash
# ops/prom_reload.sh: the runbook's Phase 3 (Prometheus lifecycle) in one step. Checks the new
# alert rules with promtool, keeps a last-known-good copy of the rules Prometheus runs now,
# installs the new ones into the live rules directory, reloads Prometheus through the nginx reload
# guard (ops/nginx) with PROM_RELOAD_TOKEN, verifies through the API that the reload succeeded and
# every new group is loaded, then waits (bounded) until Prometheus has evaluated every new rule once
# and requires each one healthy. On any failure after the install it puts the last-known-good copy
# back, reloads again and exits non-zero with one line saying what failed.
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
me=prom_reload.sh
url=${PROM_URL:-http://localhost:9090}
live_dir=${PROM_RULES_DIR:-/etc/prometheus/rules}
backup_dir=
promtool=${PROMTOOL:-promtool}
timeout=30
eval_wait=
keep=live   # what step 2 kept as the last-known-good: "live" (copied now) or "backup" (kept)

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
  --eval-wait SECONDS how long to wait, after the reload, for Prometheus to evaluate every new
                      rule once (default: twice the longest interval of the new groups, plus 5)
  -h, --help          this text

The token is read from the PROM_RELOAD_TOKEN environment variable only, and goes to curl through
a pipe, never on a command line. Steps:
  1. promtool check rules on the new files.
  2. Keep the last-known-good copy: when /api/v1/status/runtimeinfo says Prometheus's last reload
     succeeded, LIVE_DIR's *.yml and *.yaml files (what it runs now) replace the backup
     directory's contents. When it says that reload failed, the live rules are not known to be
     good: an existing backup directory is kept as it is (a rollback restores it, not the live
     rules); only when there is none yet are the live rules copied, with a warning.
  3. Install the files into LIVE_DIR (same names, each renamed into place).
  4. POST URL/-/reload with "Authorization: Bearer \$PROM_RELOAD_TOKEN".
  5. Check /api/v1/status/runtimeinfo (reload successful, after this run started) and
     /api/v1/rules (every group of the new files is loaded from its file, with its number of
     rules).
  6. Wait, at most the --eval-wait bound (printed), until every rule of the new groups has been
     evaluated since the reload (its lastEvaluation in /api/v1/rules is not older than the
     runtimeinfo's lastConfigTime), and require health "ok" for all of them: a rule promtool
     accepts can still fail when evaluated (e.g. a many-to-many vector match); its lastError is
     reported.
On a failure after the install, the backup directory's files are put back (LIVE_DIR's *.yml and
*.yaml become exactly them) and Prometheus is reloaded again; that rollback is checked as in step
5 (loaded, not evaluated).

Exit status: 0 done; 1 failed, nothing installed or last-known-good restored and reloaded;
2 failed and the rollback failed too: either the rollback reload failed or was not verified (the
files are restored, Prometheus may still run the old state it had: look at it now), or putting
the files back failed (LIVE_DIR may hold a mix of new and last-known-good files, Prometheus was
not reloaded again; the line names the backup directory to copy from by hand); 64 usage.
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
        --eval-wait) eval_wait=${2:?--eval-wait needs a value}; shift 2 ;;
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
[[ "$eval_wait" =~ ^[0-9]*$ ]] || die_usage "--eval-wait: not a number of seconds: $eval_wait"
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

# The checks on Prometheus's answers, in Python (JSON and the rule files' YAML).
#   check.py loaded SINCE LIVE INFO RULES FILE...   the reload at or after epoch second SINCE
#       succeeded and every group of FILE... is loaded from LIVE/<its name> with its rule count
#   check.py plan LIVE RULES FILE...                prints "INTERVAL RULES GROUPS" of those groups
#       (INTERVAL: the longest group interval, whole seconds)
#   check.py health LIVE INFO RULES FILE...         every rule of those groups was evaluated since
#       the reload (lastEvaluation >= lastConfigTime) with health "ok": exit 0; a rule evaluated
#       since then with another health: exit 1 and the rules with their lastError; otherwise
#       exit 3 and the rules not evaluated yet
# Anything wrong is printed as one line.
cat >"$work/check.py" <<'PY'
import datetime, json, math, os, re, sys
import yaml


def ts(text):
    """Epoch seconds of an RFC 3339 time as Prometheus writes it (nanoseconds, Z); None if not one."""
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:\d\d)", text or "")
    if not m:
        return None
    t = datetime.datetime.fromisoformat(m.group(1) + ("+00:00" if m.group(3) == "Z" else m.group(3)))
    return t.timestamp() + float(m.group(2) or 0)


def new_groups(live, rules_path, files):
    """[(label, wanted rule count, the loaded group or None)] for every group of files."""
    loaded = {}
    for g in json.load(open(rules_path))["data"]["groups"]:
        path = g.get("file", "")
        if os.path.isabs(path) and os.path.exists(path):
            key = os.path.realpath(path)
        else:
            key = os.path.basename(path)
        loaded[(key, g["name"])] = g
    live = os.path.realpath(live)
    out = []
    for f in files:
        doc = yaml.safe_load(open(f)) or {}
        name = os.path.basename(f)
        for grp in doc.get("groups") or []:
            got = loaded.get((os.path.join(live, name), grp["name"]), loaded.get((name, grp["name"])))
            out.append(("%s/%s" % (name, grp["name"]), len(grp.get("rules") or []), got))
    return out, loaded, live


def fail(msg, status=1):
    print(msg)
    sys.exit(status)


def brief(items, n=5):
    return ", ".join(items[:n]) + (", and %d more" % (len(items) - n) if len(items) > n else "")


mode, args = sys.argv[1], sys.argv[2:]
if mode == "loaded":
    since, live, info_path, rules_path = args[:4]
    info = json.load(open(info_path))["data"]
    if not info.get("reloadConfigSuccess"):
        fail("Prometheus reports its last configuration reload failed")
    last = info.get("lastConfigTime", "")
    t = ts(last)
    if t is None or math.floor(t) < int(since):
        fail("Prometheus's last successful reload (%s) is older than this run" % last)
    groups, loaded, live = new_groups(live, rules_path, args[4:])
    missing = []
    for label, want, g in groups:
        got = None if g is None else len(g.get("rules") or [])
        if got != want:
            missing.append("%s (%s rules loaded, %d in the file)" % (label, "no" if got is None else got, want))
    if missing:
        hint = ""
        if not any(os.path.isabs(k[0]) and os.path.dirname(k[0]) == live for k in loaded):
            hint = " (Prometheus loads no rule file from %s: is it the directory its rule_files names?)" % live
        fail("not loaded as written: " + ", ".join(missing) + hint)
elif mode == "plan":
    groups, _, _ = new_groups(args[0], args[1], args[2:])
    groups = [g for _, _, g in groups if g and g.get("rules")]
    interval = max([math.ceil(float(g.get("interval") or 0)) for g in groups] or [0])
    print(interval, sum(len(g["rules"]) for g in groups), len(groups))
elif mode == "health":
    live, info_path, rules_path = args[:3]
    reloaded = ts(json.load(open(info_path))["data"].get("lastConfigTime", ""))
    groups, _, _ = new_groups(live, rules_path, args[3:])
    bad, pending = [], []
    for label, _, g in groups:
        if g is None:
            fail("%s is no longer loaded" % label)
        for r in g.get("rules") or []:
            name = "%s/%s" % (label, r.get("name"))
            t = ts(r.get("lastEvaluation", ""))
            if reloaded is None or t is None or t < reloaded:
                pending.append(name)
            elif r.get("health") != "ok":
                bad.append("%s is %s: %s" % (name, r.get("health"), r.get("lastError") or "no lastError"))
    if bad:
        fail("rule evaluation failed: " + "; ".join(bad))
    if pending:
        fail("%d rule(s) not evaluated since the reload: %s" % (len(pending), brief(pending)), 3)
else:
    fail("check.py: unknown mode " + mode, 2)
PY

# Checks that Prometheus reloaded successfully at or after epoch second $1 and that the groups
# of the files $3... are loaded from files named like them in $2; prints what is wrong, if anything.
verify() {
    local since=$1 dir=$2 code
    shift 2
    code=$(http_get /api/v1/status/runtimeinfo "$work/runtimeinfo.json")
    [ "$code" = 200 ] || { echo "GET /api/v1/status/runtimeinfo answered $code"; return 1; }
    code=$(http_get /api/v1/rules "$work/rules.json")
    [ "$code" = 200 ] || { echo "GET /api/v1/rules answered $code"; return 1; }
    python3 "$work/check.py" loaded "$since" "$dir" "$work/runtimeinfo.json" "$work/rules.json" "$@"
}

# After verify: 0 when every rule of the groups of the files $@ (in LIVE_DIR) was evaluated since
# the reload verify saw, all healthy; 1 and why when one failed; 3 and which when some are pending.
evaluated() {
    local code
    code=$(http_get /api/v1/rules "$work/rules.json")
    [ "$code" = 200 ] || { echo "GET /api/v1/rules answered $code"; return 1; }
    python3 "$work/check.py" health "$live_dir" "$work/runtimeinfo.json" "$work/rules.json" "$@"
}

# Puts the last-known-good copy back: the live *.yml and *.yaml files become exactly the
# backup's (each copied next to its place and renamed into it, then the others removed).
# Every step is checked here (set -e does not apply inside a command substitution or a
# condition); on the first failure it prints what failed and returns 1.
restore() {
    local f name tmp err live saved
    [ -d "$backup_dir" ] || { echo "the last-known-good copy $backup_dir is missing"; return 1; }
    shopt -s nullglob
    saved=("$backup_dir"/*.yml "$backup_dir"/*.yaml)
    live=("$live_dir"/*.yml "$live_dir"/*.yaml)
    shopt -u nullglob
    for f in "${saved[@]}"; do
        name=$(basename "$f")
        tmp="$live_dir/.$name.restore"
        if ! err=$({ cp -p "$f" "$tmp" && mv -f "$tmp" "$live_dir/$name"; } 2>&1); then
            rm -f "$tmp" 2>/dev/null || true
            echo "cannot put $name back: $err" | tr '\n' ' '
            return 1
        fi
    done
    for f in "${live[@]}"; do
        [ -e "$backup_dir/$(basename "$f")" ] && continue
        if ! err=$(rm -f "$f" 2>&1); then
            echo "cannot remove $f: $err" | tr '\n' ' '
            return 1
        fi
    done
}

# Failure after the install: restore, reload, verify the restored groups, one line, exit.
# $2 "not-reloaded" when the guard refused the reload: Prometheus never re-read the rule files,
# so the restored files are what it runs and there is nothing to reload.
fail_rollback() {
    local what=$1 code why status=1
    trap cleanup EXIT
    if ! why=$(restore 2>&1); then
        say "FAILED: $what; restoring the last-known-good rules failed too (${why% }): the live rules directory $live_dir may be inconsistent and Prometheus was not reloaded again; the last-known-good copy is in $backup_dir"
        exit 2
    fi
    if [ "${2-}" = not-reloaded ]; then
        if [ "$keep" = live ]; then
            why="Prometheus was not reloaded and still runs them"
        else
            why="Prometheus was not reloaded and still runs what it last loaded successfully"
        fi
        say "FAILED: $what; restored the last-known-good rules from $backup_dir ($why)"
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

# 2. Prometheus answers through the guard; keep what it runs now as the last-known-good, when that
# is known to be good.
code=$(http_get /api/v1/status/runtimeinfo "$work/runtimeinfo.json")
[ "$code" = 200 ] || fail_early "GET $url/api/v1/status/runtimeinfo answered $code ($(head -c 200 "$work/curl.err" | tr '\n' ' '))"
if python3 -c 'import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))["data"].get("reloadConfigSuccess") else 1)' "$work/runtimeinfo.json"; then
    keep=live
elif [ -d "$backup_dir" ]; then
    keep=backup
    say "Prometheus reports its last reload failed, so the live rules in $live_dir are not known to be good: keeping the last-known-good copy in $backup_dir (made $(date -u -r "$backup_dir" +%Y-%m-%dT%H:%M:%SZ)) instead of replacing it with them; a rollback restores that copy"
else
    keep=live
    say "warning: Prometheus reports its last reload failed and there is no last-known-good copy in $backup_dir yet: copying the live rules, which may not be what it runs (a rollback restores them)"
fi
if [ "$keep" = live ]; then
    new_backup=$(mktemp -d "$backup_dir.new.XXXXXX") || fail_early "cannot create $backup_dir.new.*"
    shopt -s nullglob
    live_files=("$live_dir"/*.yml "$live_dir"/*.yaml)
    shopt -u nullglob
    if [ ${#live_files[@]} -gt 0 ] && ! err=$(cp -p "${live_files[@]}" "$new_backup/" 2>&1); then
        rm -rf "$new_backup"
        fail_early "cannot copy the live rules to $new_backup: $(printf '%s' "$err" | head -c 300 | tr '\n' ' ')"
    fi
    chmod 0755 "$new_backup"
    # The old copy goes aside before the new one takes its name, so a failure between the two
    # leaves one of them where this script says it is.
    old_backup=""
    if [ -e "$backup_dir" ]; then
        old_backup="$backup_dir.old.$$"
        mv "$backup_dir" "$old_backup" ||
            fail_early "cannot move the previous last-known-good copy $backup_dir aside (the new one is in $new_backup)"
    fi
    if ! mv "$new_backup" "$backup_dir"; then
        previous="there was none"
        if [ -n "$old_backup" ]; then
            previous="it is in $old_backup"
            mv "$old_backup" "$backup_dir" && previous="it is back in $backup_dir"
        fi
        fail_early "cannot put the new last-known-good copy in place (it is in $new_backup; the previous one: $previous)"
    fi
    [ -z "$old_backup" ] || rm -rf "$old_backup"
fi

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

# 5. Verify the reload and the loaded groups.
installed_files=()
for f in "${rules[@]}"; do
    installed_files+=("$live_dir/$(basename "$f")")
done
if ! why=$(verify "$since" "$live_dir" "${installed_files[@]}"); then
    fail_rollback "reload not verified: $why"
fi

# 6. Wait until Prometheus has evaluated every new rule once since the reload; all must be healthy.
if ! plan=$(python3 "$work/check.py" plan "$live_dir" "$work/rules.json" "${installed_files[@]}"); then
    fail_rollback "cannot read the new groups' intervals from /api/v1/rules: $plan"
fi
read -r interval nrules ngroups <<<"$plan"
if [ "$nrules" -gt 0 ]; then
    wait_s=${eval_wait:-$((2 * interval + 5))}
    say "waiting up to ${wait_s}s for Prometheus to evaluate each of the $nrules rule(s) of the $ngroups new group(s) once since the reload, and for each to be healthy (longest group interval ${interval}s; bound: --eval-wait)"
    deadline=$(($(date +%s) + wait_s))
    while :; do
        if why=$(evaluated "${installed_files[@]}"); then
            break
        else
            rc=$?
        fi
        [ "$rc" = 3 ] || fail_rollback "$why"
        [ "$(date +%s)" -lt "$deadline" ] || fail_rollback "waited ${wait_s}s: $why"
        sleep 1
    done
fi
trap cleanup EXIT
if [ "$keep" = live ]; then
    say "OK: ${#rules[@]} rule file(s) installed in $live_dir, loaded, and each of their $nrules rule(s) evaluated healthy; previous rules kept in $backup_dir"
else
    say "OK: ${#rules[@]} rule file(s) installed in $live_dir, loaded, and each of their $nrules rule(s) evaluated healthy; the last-known-good copy in $backup_dir was kept unchanged"
fi
