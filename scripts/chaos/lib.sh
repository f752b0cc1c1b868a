# shellcheck shell=bash
# Shared by the chaos scripts in this directory (sourced, never run). See README.md.
#
# The caller has already checked CHAOS_ALLOWED. These helpers find the target stack
# (--stack DIR, else stack.sh's default: $PINS_STACK_DIR, else ${XDG_RUNTIME_DIR:-/tmp}/pins-stack-<uid>),
# load its stack.env through `stack.sh env` (which refuses a DIR or stack.env that is not the
# caller's own or is group/other-writable, before anything is read), refuse a target
# whose pinsd says chaos_allowed=false, talk to both replicas over REST with curl (credentials go to
# curl through a config file or stdin, never on a command line), read /metrics, and print the final
# "PASS: <name>: ..." / "FAIL: <name>: ..." line. Every process a script starts in the background is
# registered with chaos_bg and killed by PID from the EXIT trap; every wait is bounded.

CHAOS_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
CHAOS_NAME=${CHAOS_NAME:-chaos}
CHAOS_STACK_ARG=""
CHAOS_TMP=""
CHAOS_PIDS=()
CHAOS_RESTORE=()   # stack.sh verbs run by the EXIT trap (e.g. "start redis"), cleared when done

chaos_err() { echo "ERROR: $CHAOS_NAME: $*" >&2; }
chaos_usage_err() {
    echo "ERROR: $CHAOS_NAME: $*" >&2
    echo "Try '$0 --help'." >&2
    exit 2
}
chaos_now() { echo "$EPOCHREALTIME"; }
# Seconds from $1 to now, 3 decimals.
chaos_since() { awk -v a="$1" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f", b - a }'; }
# chaos_within SECONDS LIMIT: 0 when SECONDS (decimal) <= LIMIT.
chaos_within() { awk -v a="$1" -v b="$2" 'BEGIN { exit !(a + 0 <= b + 0) }'; }
chaos_log() { printf '%s %s\n' "$(date -u +%H:%M:%S)" "$*"; }

chaos_pass() {
    echo "PASS: $CHAOS_NAME: $*"
    exit 0
}
chaos_fail() {
    echo "FAIL: $CHAOS_NAME: $*"
    exit 1
}

# Validates that $2 (the value of option $1) is a whole number within [$3, $4].
chaos_int() {
    local opt=$1 v=$2 lo=$3 hi=$4
    [[ $v =~ ^[0-9]+$ ]] || chaos_usage_err "$opt wants a whole number, got '$v'"
    ((10#$v >= lo && 10#$v <= hi)) || chaos_usage_err "$opt must be within $lo..$hi, got $v"
}

chaos_bg() { CHAOS_PIDS+=("$1"); }

chaos_cleanup() {
    local rc=$? pid verb i
    trap - EXIT INT TERM
    for pid in "${CHAOS_PIDS[@]}"; do
        kill -TERM "$pid" 2>/dev/null || true
    done
    for pid in "${CHAOS_PIDS[@]}"; do
        for ((i = 0; i < 50; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    done
    for verb in "${CHAOS_RESTORE[@]}"; do
        echo "restoring: stack.sh $verb" >&2
        # shellcheck disable=SC2086  # verb is "start redis" etc., split on purpose
        chaos_stack $verb >&2 || echo "ERROR: $CHAOS_NAME: 'stack.sh $verb' failed: restore the stack by hand" >&2
    done
    [ -n "$CHAOS_TMP" ] && rm -rf -- "$CHAOS_TMP"
    exit "$rc"
}

# Loads the target stack: --stack DIR ($CHAOS_STACK_ARG), else stack.sh's default directory (the
# one definition of it is in stack.sh). stack.sh env checks DIR and DIR/stack.env before reading.
chaos_load_stack() {
    local envtext dir
    CHAOS_STACK_SH=${PINS_STACK_SH:-$CHAOS_HERE/../../deploy/local/stack.sh}
    [ -x "$CHAOS_STACK_SH" ] || CHAOS_STACK_SH="${PINS_ROOT:-}/deploy/local/stack.sh"
    if [ ! -x "$CHAOS_STACK_SH" ]; then
        chaos_err "deploy/local/stack.sh not found (next to this script or under PINS_ROOT)"
        exit 1
    fi
    CHAOS_STACK_DIR=$CHAOS_STACK_ARG
    if ! envtext=$(chaos_stack env); then
        chaos_err "no usable stack (see above): start one with deploy/local/stack.sh${CHAOS_STACK_DIR:+ --dir $CHAOS_STACK_DIR} up"
        exit 1
    fi
    eval "$envtext"
    unset envtext
    dir=${PINS_STACK_DIR:-$CHAOS_STACK_DIR}
    CHAOS_STACK_DIR=$dir
    local v
    for v in PINSD_URL PINSD2_URL; do
        if [ -z "${!v:-}" ]; then
            chaos_err "$dir/stack.env does not set $v"
            exit 1
        fi
    done
    CHAOS_REPLICAS=("$PINSD_URL" "$PINSD2_URL")
    CHAOS_TMP=$(mktemp -d "${TMPDIR:-/tmp}/pins-chaos.XXXXXX")
    trap chaos_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
    chaos_log "target stack: $dir (pinsd1 $PINSD_URL, pinsd2 $PINSD2_URL)"
}

# stack.sh [--dir <the target>] VERB...: the only way the scripts stop and start services.
chaos_stack() { "$CHAOS_STACK_SH" ${CHAOS_STACK_DIR:+--dir "$CHAOS_STACK_DIR"} "$@"; }

# The credential header for the admin routes: the stack's admin JWT, else the machine token.
chaos_auth_header() {
    if [ -n "${ADMIN_JWT:-}" ]; then
        printf 'header = "Authorization: Bearer %s"\n' "$ADMIN_JWT"
    elif [ -n "${MACHINE_SECRET_TOKEN:-}" ]; then
        printf 'header = "X-Machine-Token: %s"\n' "$MACHINE_SECRET_TOKEN"
    fi
}

# chaos_get URL: prints the body; returns curl's status (non-zero on no answer or HTTP >= 400).
chaos_get() {
    chaos_auth_header | curl -sS --fail --max-time 10 -K - -- "$1" 2>/dev/null
}

# chaos_code URL: prints the HTTP status of a GET (000 when nothing answered).
chaos_code() {
    chaos_auth_header | curl -s -o /dev/null -w '%{http_code}' --max-time 10 -K - -- "$1" 2>/dev/null || true
}

# chaos_status URL: /api/v1/admin/status of one replica (JSON), or empty.
chaos_status() { chaos_get "$1/api/v1/admin/status" || true; }

# chaos_jq URL FILTER: one field of a replica's admin status ("" when unreachable).
chaos_jq() {
    local body
    body=$(chaos_status "$1")
    [ -n "$body" ] || return 0
    jq -r "$2 // empty" <<<"$body" 2>/dev/null || true
}

# Refuses (exit 1) unless both replicas answer their admin status and say chaos_allowed=true.
chaos_check_target() {
    local url body flag
    for url in "${CHAOS_REPLICAS[@]}"; do
        body=$(chaos_status "$url")
        if [ -z "$body" ]; then
            chaos_err "cannot read $url/api/v1/admin/status: is the stack up? Aborting."
            exit 1
        fi
        flag=$(jq -r '.flags.chaos_allowed' <<<"$body" 2>/dev/null || echo unknown)
        if [ "$flag" != "true" ]; then
            chaos_err "target pinsd $url says chaos_allowed=$flag (start it with CHAOS_ALLOWED=true). Aborting."
            exit 1
        fi
    done
}

# chaos_metric URL REGEX: the sum of the /metrics samples whose name{labels} matches REGEX
# (an awk ERE anchored at the start of the line), or empty when /metrics did not answer.
chaos_metric() {
    local text
    text=$(curl -sS --fail --max-time 10 -- "$1/metrics" 2>/dev/null) || return 0
    awk -v re="^$2" '$0 ~ re && $1 !~ /^#/ { s += $NF } END { printf "%.0f\n", s }' <<<"$text"
}

# chaos_sum_metric REGEX: the sum of chaos_metric over both replicas ("" if either is missing).
chaos_sum_metric() {
    local url v total=0
    for url in "${CHAOS_REPLICAS[@]}"; do
        v=$(chaos_metric "$url" "$1")
        [ -n "$v" ] || return 0
        total=$((total + v))
    done
    echo "$total"
}

# Appends one request to the curl config file $1: chaos_req CFG METHOD URL [JSON-BODY]. Each answer
# is written by curl as "<http code> <Retry-After header or -> <seconds>".
chaos_req() {
    local cfg=$1 method=$2 url=$3 body=${4:-} sep=""
    [ -s "$cfg" ] && sep="next"
    {
        [ -z "$sep" ] || echo "$sep"
        printf 'url = "%s"\n' "$url"
        printf 'request = "%s"\n' "$method"
        if [ -n "${MACHINE_SECRET_TOKEN:-}" ]; then
            printf 'header = "X-Machine-Token: %s"\n' "$MACHINE_SECRET_TOKEN"
        fi
        if [ -n "$body" ]; then
            echo 'header = "Content-Type: application/json"'
            printf 'data = "%s"\n' "${body//\"/\\\"}"
        fi
        echo 'output = "/dev/null"'
        echo 'max-time = 10'
        printf '%s\n' 'write-out = "%{http_code} %header{retry-after}- %{time_total}\n"'
    } >>"$cfg"
}

# chaos_run_batch CFG PARALLEL OUT: sends every request of CFG, PARALLEL at a time, answers in OUT
# (one line each: code, Retry-After, seconds). curl's own complaints go to OUT.err.
chaos_run_batch() {
    local cfg=$1 par=$2 out=$3
    : >"$out"
    curl -s --parallel --parallel-max "$par" -K "$cfg" >"$out" 2>"$out.err" || true
}

# chaos_write_json TENANT KEY: a small pin as a JSON request body.
chaos_write_json() {
    printf '{"tenant_id":"%s","key":"%s","value":{"chaos":"%s"},"source":"chaos"}' "$1" "$2" "$CHAOS_NAME"
}

# chaos_try_write URL TENANT KEY: 0 when one pin write on that replica answers 2xx.
chaos_try_write() {
    local cfg="$CHAOS_TMP/one.cfg" out="$CHAOS_TMP/one.out"
    : >"$cfg"
    chaos_req "$cfg" POST "$1/api/v1/memory/pins" "$(chaos_write_json "$2" "$3")"
    chaos_run_batch "$cfg" 1 "$out"
    [[ $(awk '{ print $1 }' "$out") == 2?? ]]
}

# A fresh name: <prefix>-<epoch seconds>-<pid>-<random>.
chaos_fresh() { echo "$1-$(date +%s)-$$-$RANDOM"; }
