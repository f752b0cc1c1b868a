#!/usr/bin/env bash
# ops/preflight.sh: the runbook's preflight checks (ops/RUNBOOK.md "Preflight"), run before any
# migration, RBAC change or chaos experiment. One line per check ("ok" or "FAIL" and what was
# seen), then a verdict line; exit 0 only when every check passed.
set -euo pipefail

me=preflight.sh
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root=$(cd "$here/.." && pwd)

usage() {
    cat <<USAGE
Usage: $0 [options]

Checks, in order (each prints one line):
  backup      pg_dump -Fc (custom format, the one pg_restore reads) of the database into
              BACKUP_DIR/pgdump_<UTC time>.dump, mode 0600, then pg_restore --list reads it back
  restore     creates a scratch database, restores the backup into it with pg_restore, checks
              that system.memory_pins came back with as many rows as the backup holds, drops it
  schema      pinsctl migrate current says the schema is at head (every migration applied)
  health      GET /health answers 200 on every pinsd URL
  ready       GET /ready answers 200 with "ready":true on every pinsd URL
  redis       PING answers PONG on REDIS_URL
  prometheus  Prometheus's active targets: at least one, every one up, and every pinsd URL
              above a nova-backend target that is up

Options:
  --database-url URL   the database to back up (default \$DATABASE_DIRECT_URL, else \$DATABASE_URL);
                       give PostgreSQL itself, not PgBouncer in transaction mode: pg_dump and
                       createdb need a session of their own
  --pinsd URL          a pinsd base URL (repeatable; default \$PINSD and \$PINSD2_URL, else
                       http://localhost:8000)
  --redis-url URL      default \$REDIS_URL, else redis://localhost:6379/0
  --prom URL           Prometheus, or the reload guard in front of it (default \$PROM, else
                       http://localhost:9090)
  --backup-dir DIR     where the backup goes (default \$BACKUP_DIR, else /tmp)
  --no-restore-test    skip the restore test (the backup is still read back by pg_restore --list)
  --pinsctl PATH       pinsctl for the schema check (default \$PINSCTL_BIN, else pinsctl on
                       PATH, else build-release/pinsctl)
  --timeout SECONDS    bound of every HTTP request and database command (default 30)
  -h, --help           this text

Passwords in URLs never reach a command line or the output: they go to the PostgreSQL tools
through a temporary PGPASSFILE and to redis-cli through REDISCLI_AUTH.
Exit status: 0 every check passed; 1 a check failed; 2 usage error.
USAGE
}

die_usage() {
    echo "$me: $*" >&2
    echo "$me: see $0 --help" >&2
    exit 2
}

db_url=${DATABASE_DIRECT_URL:-${DATABASE_URL:-}}
pinsd_urls=()
redis_url=${REDIS_URL:-redis://localhost:6379/0}
prom=${PROM:-http://localhost:9090}
backup_dir=${BACKUP_DIR:-/tmp}
restore_test=1
pinsctl=${PINSCTL_BIN:-}
timeout=30

while (($#)); do
    case "$1" in
        --database-url | --pinsd | --redis-url | --prom | --backup-dir | --pinsctl | --timeout)
            (($# >= 2)) || die_usage "$1 needs a value"
            case "$1" in
                --database-url) db_url=$2 ;;
                --pinsd) pinsd_urls+=("${2%/}") ;;
                --redis-url) redis_url=$2 ;;
                --prom) prom=${2%/} ;;
                --backup-dir) backup_dir=$2 ;;
                --pinsctl) pinsctl=$2 ;;
                --timeout) timeout=$2 ;;
            esac
            shift
            ;;
        --no-restore-test) restore_test=0 ;;
        -h | --help)
            usage
            exit 0
            ;;
        *) die_usage "unknown argument '$1'" ;;
    esac
    shift
done

[[ "$timeout" =~ ^[1-9][0-9]{0,3}$ ]] || die_usage "--timeout must be 1..9999 seconds"
[[ -n "$db_url" ]] || die_usage "no database: set DATABASE_DIRECT_URL or DATABASE_URL, or give --database-url"
if ((${#pinsd_urls[@]} == 0)); then
    [[ -n "${PINSD:-}" ]] && pinsd_urls+=("${PINSD%/}")
    [[ -n "${PINSD2_URL:-}" ]] && pinsd_urls+=("${PINSD2_URL%/}")
    ((${#pinsd_urls[@]})) || pinsd_urls=(http://localhost:8000)
fi
if [[ -z "$pinsctl" ]]; then
    pinsctl=$(command -v pinsctl || true)
    [[ -n "$pinsctl" ]] || pinsctl=$root/build-release/pinsctl
fi
for tool in pg_dump pg_restore psql createdb dropdb redis-cli curl jq python3; do
    command -v "$tool" > /dev/null || die_usage "$tool is not installed (Debian: postgresql-client, redis-tools, curl, jq)"
done

work=$(mktemp -d "${TMPDIR:-/tmp}/pins-preflight.XXXXXX")
scratch_db=
pg_conn=()

cleanup() {
    if [[ -n "$scratch_db" ]]; then
        timeout "$timeout" dropdb "${pg_conn[@]}" --if-exists "$scratch_db" > /dev/null 2>&1 || true
    fi
    rm -rf "$work"
}
trap cleanup EXIT

# Split the database URL: host, port, user and database go on the command lines; the password
# goes into a private PGPASSFILE.
parsed=$(PINS_URL=$db_url python3 - <<'PY'
import os, sys, urllib.parse
u = urllib.parse.urlsplit(os.environ["PINS_URL"])
if u.scheme not in ("postgres", "postgresql"):
    sys.exit("not a postgres:// or postgresql:// URL")
q = urllib.parse.parse_qs(u.query)
host = u.hostname or (q.get("host") or ["localhost"])[0]
print(host)
print(u.port or 5432)
print(urllib.parse.unquote(u.username or "") or os.environ.get("USER", "postgres"))
print(urllib.parse.unquote(u.path.lstrip("/")) or urllib.parse.unquote(u.username or "postgres"))
pw = urllib.parse.unquote(u.password or "")
print(pw.replace("\\", "\\\\").replace(":", "\\:"))
PY
) || die_usage "the database URL cannot be read (postgresql://user:password@host:port/db)"
{
    read -r pg_host
    read -r pg_port
    read -r pg_user
    read -r pg_db
    read -r pg_pass || true # the last line: empty when the URL has no password
} <<< "$parsed"
export PGPASSFILE=$work/pgpass
umask 077
if [[ -n "$pg_pass" ]]; then
    printf '*:*:*:*:%s\n' "$pg_pass" > "$PGPASSFILE"
else
    : > "$PGPASSFILE"
fi
unset pg_pass parsed
export PGCONNECT_TIMEOUT=$timeout
pg_conn=(-h "$pg_host" -p "$pg_port" -U "$pg_user" -w)

failed=0 total=0
ok() {
    total=$((total + 1))
    printf 'ok    %-10s %s\n' "$1" "$2"
}
bad() {
    total=$((total + 1))
    failed=$((failed + 1))
    printf 'FAIL  %-10s %s\n' "$1" "$2"
}
# first line of a tool's error output, for the FAIL line
why() { sed -n '/./{s/^[a-z_]*: //;p;q}' "$1"; }

# ---- backup -------------------------------------------------------------------------------------
backup=
stamp=$(date -u +%Y%m%d_%H%M%S)
if ! mkdir -p "$backup_dir" 2> "$work/err"; then
    bad backup "cannot create $backup_dir: $(why "$work/err")"
else
    backup=$backup_dir/pgdump_${pg_db}_$stamp.dump
    if timeout "$timeout" pg_dump "${pg_conn[@]}" -d "$pg_db" -Fc -f "$backup" 2> "$work/err" &&
        timeout "$timeout" pg_restore --list "$backup" > "$work/toc" 2> "$work/err"; then
        chmod 0600 "$backup"
        entries=$(grep -cv '^;' "$work/toc" || true)
        ok backup "$backup ($(stat -c %s "$backup") bytes, $entries entries, pg_restore reads it)"
    else
        bad backup "pg_dump -Fc of database $pg_db on $pg_host:$pg_port: $(why "$work/err")"
        rm -f "$backup"
        backup=
    fi
fi

# ---- restore test -------------------------------------------------------------------------------
count_pins() { # DB -> row count of system.memory_pins, or nothing when the table is not there
    timeout "$timeout" psql "${pg_conn[@]}" -d "$1" -X -At -v ON_ERROR_STOP=1 \
        -c "SELECT count(*) FROM system.memory_pins" 2> "$work/err"
}
if ((!restore_test)); then
    echo "skip  restore    (--no-restore-test)"
elif [[ -z "$backup" ]]; then
    bad restore "no backup to restore"
else
    scratch_db=pins_restore_test_$$
    if ! timeout "$timeout" createdb "${pg_conn[@]}" "$scratch_db" 2> "$work/err"; then
        bad restore "createdb $scratch_db: $(why "$work/err") (the role needs CREATEDB)"
        scratch_db=
    elif ! timeout "$((timeout * 4))" pg_restore "${pg_conn[@]}" -d "$scratch_db" --no-owner \
        --exit-on-error "$backup" 2> "$work/err"; then
        bad restore "pg_restore into $scratch_db: $(why "$work/err")"
    else
        # The rows the backup holds: its COPY data for system.memory_pins (text format: one
        # line per row, newlines inside values escaped).
        in_backup=$( (timeout "$timeout" pg_restore --data-only -n system -t memory_pins -f - "$backup" 2> /dev/null ||
            echo "pg_restore failed") | awk '/^pg_restore failed$/{bad=1} /^COPY /{c=1; next} /^\\\.$/{c=0}
            c{n++} END{print bad ? "" : n+0}')
        restored=$(count_pins "$scratch_db" || true)
        if [[ -z "$in_backup" ]]; then
            bad restore "pg_restore could not read the rows of system.memory_pins from $backup"
        elif [[ -z "$restored" ]]; then
            bad restore "system.memory_pins is missing after the restore: $(why "$work/err")"
        elif [[ "$restored" != "$in_backup" ]]; then
            bad restore "system.memory_pins has $restored rows after the restore, the backup holds $in_backup"
        else
            ok restore "scratch database $scratch_db: system.memory_pins restored with all $restored rows of the backup; dropped"
        fi
    fi
    if [[ -n "$scratch_db" ]]; then
        timeout "$timeout" dropdb "${pg_conn[@]}" --if-exists "$scratch_db" 2> "$work/err" ||
            bad restore "dropdb $scratch_db: $(why "$work/err")"
        scratch_db=
    fi
fi

# ---- schema -------------------------------------------------------------------------------------
if [[ ! -x "$pinsctl" ]]; then
    bad schema "pinsctl not found (give --pinsctl or set PINSCTL_BIN)"
else
    # pinsctl reads the URL from its environment, never from its command line.
    if current=$(DATABASE_URL=$db_url timeout "$timeout" "$pinsctl" migrate current 2> "$work/err"); then
        if [[ "$current" == *"(head)"* ]]; then
            ok schema "version $current"
        else
            bad schema "version $current: run pinsctl migrate upgrade head"
        fi
    else
        bad schema "pinsctl migrate current: $(why "$work/err")"
    fi
fi

# ---- pinsd ---------------------------------------------------------------------------------------
for url in "${pinsd_urls[@]}"; do
    code=$(curl -s -o "$work/body" -w '%{http_code}' --max-time "$timeout" "$url/health" 2> /dev/null || true)
    if [[ "$code" == 200 ]]; then
        ok health "$url/health 200 $(jq -c '{status, version}' "$work/body" 2> /dev/null || true)"
    else
        bad health "$url/health answered ${code:-nothing} (want 200)"
    fi
    code=$(curl -s -o "$work/body" -w '%{http_code}' --max-time "$timeout" "$url/ready" 2> /dev/null || true)
    checks=$(jq -c '.checks' "$work/body" 2> /dev/null || true)
    if [[ "$code" == 200 ]] && [[ "$(jq -r '.ready' "$work/body" 2> /dev/null)" == true ]]; then
        ok ready "$url/ready 200 $checks"
    else
        bad ready "$url/ready answered ${code:-nothing} ${checks:-} (want 200, ready true)"
    fi
done

# ---- redis --------------------------------------------------------------------------------------
redis_args=$(PINS_URL=$redis_url python3 - <<'PY'
import os, sys, urllib.parse
u = urllib.parse.urlsplit(os.environ["PINS_URL"])
if u.scheme not in ("redis", "rediss"):
    sys.exit(1)
args = ["-h", u.hostname or "localhost", "-p", str(u.port or 6379)]
db = u.path.lstrip("/")
if db:
    args += ["-n", db]
if u.username and u.password:
    args += ["--user", urllib.parse.unquote(u.username)]
if u.scheme == "rediss":
    args.append("--tls")
print(" ".join(args))
print(urllib.parse.unquote(u.password or u.username or "") if (u.password or u.username) else "")
PY
) || true
if [[ -z "$redis_args" ]]; then
    bad redis "REDIS_URL is not a redis:// or rediss:// URL"
else
    {
        read -r redis_line
        read -r redis_pass || true # empty without a password
    } <<< "$redis_args"
    read -r -a redis_cli <<< "$redis_line"
    if [[ -n "$redis_pass" ]]; then export REDISCLI_AUTH=$redis_pass; fi
    unset redis_pass redis_args
    reply=$(timeout "$timeout" redis-cli "${redis_cli[@]}" ping 2>&1 || true)
    unset REDISCLI_AUTH
    if [[ "$reply" == PONG ]]; then
        ok redis "PONG from ${redis_cli[1]}:${redis_cli[3]}"
    else
        bad redis "PING to ${redis_cli[1]}:${redis_cli[3]} answered: ${reply:-nothing}"
    fi
fi

# ---- prometheus ---------------------------------------------------------------------------------
if curl -sf --max-time "$timeout" -o "$work/targets" "$prom/api/v1/targets?state=active" 2> /dev/null &&
    summary=$(jq -r '.data.activeTargets | [length,
        (map(select(.health == "up")) | length),
        (map(select(.labels.job == "nova-backend")) | length),
        (map(select(.health != "up") | .labels.job + " " + .scrapeUrl + " " + .health) | join("; "))]
        | @tsv' "$work/targets" 2> /dev/null); then
    IFS=$'\t' read -r n_targets n_up n_backend down_list <<< "$summary"
    # Every pinsd URL checked above is a nova-backend target that is up (matched by host:port;
    # localhost and 127.0.0.1 are the same).
    missing=()
    for url in "${pinsd_urls[@]}"; do
        hostport=${url#*://}
        hostport=${hostport%%/*}
        port=${hostport##*:}
        if ! jq -e --arg port "$port" --arg hp "$hostport" '.data.activeTargets[]
            | select(.labels.job == "nova-backend" and .health == "up")
            | (.scrapeUrl | sub("^[a-z]+://"; "") | sub("/.*$"; "")) as $t
            | select($t == $hp or ($t | sub("^(localhost|127\\.0\\.0\\.1):"; "")) == $port
                     and ($hp | test("^(localhost|127\\.0\\.0\\.1):")))' \
            "$work/targets" > /dev/null 2>&1; then
            missing+=("$hostport")
        fi
    done
    if ((n_targets > 0 && n_up == n_targets && ${#missing[@]} == 0)); then
        ok prometheus "$n_up of $n_targets active targets up, $n_backend nova-backend, every pinsd checked above among them"
    else
        bad prometheus "$n_up of $n_targets active targets up, $n_backend nova-backend${missing[*]:+; pinsd not scraped or not up: ${missing[*]}}${down_list:+; not up: $down_list}"
    fi
else
    bad prometheus "$prom/api/v1/targets did not answer with JSON"
fi

if ((failed)); then
    echo "preflight: FAIL ($failed of $total checks failed)"
    exit 1
fi
echo "preflight: PASS ($total checks)"
