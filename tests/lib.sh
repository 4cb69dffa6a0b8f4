# shellcheck shell=bash disable=SC2034
# lib.sh - helpers shared by the shell tests (tests/{unit,integration,fault}/test_*.sh,
# tests/integration/worker_lib.sh) and bench/*.sh; sourced, not a test.
#
# What every script wrote for itself before: environment checks that fail clearly when the
# stack's variables or a tool are missing, a scratch directory and exit hooks (run whatever
# the outcome, last registered first), the ok/FAIL check counter, signed S3 requests with
# curl, reading a Kafka topic with kcat, stopping a process the script started.
# Only processes a script started are ever signalled, by PID.
#
# Use:  source "$(dirname "$0")/../lib.sh"

ZT_FAILS=0
ZT_EXIT_HOOKS=()
# sha256 of the empty body: the x-amz-content-sha256 of a request without one
ZT_EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

zt_die() {
    echo "FAIL: $*" >&2
    exit 1
}

# zt_require_env VAR...: fails unless every variable is set (the stack's come from
# `deploy/local/stack.sh env`, which tests/run-all.sh exports).
zt_require_env() {
    local v
    for v in "$@"; do
        if [[ -z ${!v:-} ]]; then
            zt_die "$v is not set: run through 'make test', or" \
                "eval \"\$(deploy/local/stack.sh env)\" after 'deploy/local/stack.sh up'"
        fi
    done
}

# zt_require_tools TOOL...: fails unless every tool is on PATH.
zt_require_tools() {
    local t
    for t in "$@"; do
        command -v "$t" >/dev/null || zt_die "$t is not installed (deploy/local/install-deps.sh)"
    done
}

# zt_on_exit CODE: CODE (usually a function's name) is eval'd when the script exits, after
# the hooks registered later; a failing hook does not stop the others. The script's exit
# status is kept, and is in ZT_EXIT_RC while the hooks run.
zt_on_exit() {
    ZT_EXIT_HOOKS+=("$1")
    trap zt_run_exit_hooks EXIT
}

zt_run_exit_hooks() {
    ZT_EXIT_RC=$?
    local i
    for ((i = ${#ZT_EXIT_HOOKS[@]} - 1; i >= 0; i--)); do
        eval "${ZT_EXIT_HOOKS[i]}" || true
    done
}

# zt_failed: true while the exit hooks run after a failure (an exit status or a FAIL check).
zt_failed() {
    ((${ZT_EXIT_RC:-0} != 0 || ZT_FAILS != 0))
}

# zt_scratch [NAME]: a scratch directory in ZT_TMP, removed at exit.
zt_scratch() {
    ZT_TMP=$(mktemp -d "/tmp/zt-${1:-test}.XXXXXX")
    zt_on_exit "rm -rf $(printf %q "$ZT_TMP")"
}

# zt_stop_pid PID [SIGNAL]: signals a process this script started (KILL unless named) and
# reaps it; nothing when PID is empty or already gone.
zt_stop_pid() {
    [[ -n $1 ]] || return 0
    kill -"${2:-KILL}" "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

# zt_tail_log LINES FILE...: the end of each log that exists, on stderr.
zt_tail_log() {
    local n=$1 f
    shift
    for f in "$@"; do
        [[ -f $f ]] || continue
        echo "---- $f (last $n lines) ----" >&2
        tail -n "$n" "$f" >&2
    done
}

zt_check() { # NAME EXPECTED ACTUAL
    if [[ $2 == "$3" ]]; then
        echo "ok   $1"
    else
        echo "FAIL $1: expected '$2', got '$3'" >&2
        ZT_FAILS=$((ZT_FAILS + 1))
    fi
}

zt_check_ge() { # NAME MIN ACTUAL
    if [[ $3 =~ ^[0-9]+$ ]] && (($3 >= $2)); then
        echo "ok   $1 ($3)"
    else
        echo "FAIL $1: expected >= $2, got '$3'" >&2
        ZT_FAILS=$((ZT_FAILS + 1))
    fi
}

zt_has() { # FILE REGEX -> yes/no
    if grep -Eq -- "$2" "$1"; then echo yes; else echo no; fi
}

# zt_finish [WHAT]: exits 1 when a check failed, else says "all [WHAT ]checks passed".
# shellcheck disable=SC2120 # WHAT is optional
zt_finish() {
    if ((ZT_FAILS)); then
        echo "$ZT_FAILS check(s) failed" >&2
        exit 1
    fi
    echo "all ${1:+$1 }checks passed"
}

# zt_s3 ACCESS:SECRET CURL-ARGS...: one SigV4-signed request (30 s at most; a later
# --max-time wins).
zt_s3() {
    local user=$1
    shift
    curl -s --max-time 30 --aws-sigv4 "aws:amz:${ZI_S3_REGION:-us-east-1}:s3" --user "$user" "$@"
}

# zt_consume TOPIC FORMAT: every message of a topic so far, one kcat -f FORMAT line each
# (kcat stops at the end of every partition); nothing when the topic does not exist.
zt_consume() {
    kcat -b "${ZI_KAFKA_BOOTSTRAP:-${ZIMAGE_KAFKA_BOOTSTRAP_SERVERS:-}}" -C -t "$1" \
        -o beginning -e -q -f "$2" 2>/dev/null || true
}

# zt_redis_del_prefix PREFIX...: deletes every key under the prefixes (ZIMAGE_REDIS_URL).
zt_redis_del_prefix() {
    local p
    for p in "$@"; do
        redis-cli -u "$ZIMAGE_REDIS_URL" --scan --pattern "$p*" 2>/dev/null |
            xargs -r redis-cli -u "$ZIMAGE_REDIS_URL" del >/dev/null 2>&1 || true
    done
}
