# shellcheck shell=bash disable=SC2034
# worker_lib.sh - helpers for the worker's integration and fault tests (sourced, not a test;
# the variables it sets are used by the tests that source it).
#
# Every test runs against the stack `deploy/local/stack.sh env` describes (tests/run-all.sh
# exports it) and isolates itself inside that shared stack: its own Kafka topics and group,
# its own Redis key prefix and its own S3 key prefix, all suffixed with a random run id, so
# tests never see each other's jobs. Workers run on the CPU with the tiny checkpoint at
# 64x64; the config uses session.timeout.ms=6000 and heartbeat.interval.ms=500 (the mock
# broker waits session.timeout.ms - 1000 per rebalance).
#
# Use:  source "$(dirname "$0")/../integration/worker_lib.sh"; zt_init NAME
#       zt_config [extra YAML appended under the sections]; zt_start_worker w1; ...
# Only processes this file started are ever signalled (by PID). The generic helpers
# (zt_check, zt_finish, zt_die, zt_consume, zt_on_exit, ...) are in tests/lib.sh.

set -euo pipefail

# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../lib.sh"
ZT_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
ZI_BINARY=${ZI_BINARY:-}
declare -A ZT_PIDS=()

# zt_init NAME: env checks, scratch dir, unique names, cleanup at exit (zt_on_exit hooks
# a test adds run before it).
zt_init() {
    ZT_NAME=$1
    zt_require_env ZI_STACK_DIR ZI_KAFKA_BOOTSTRAP ZI_REDIS_URL ZI_REDIS_PORT ZI_S3_ENDPOINT \
        ZI_S3_BUCKET ZI_S3_ACCESS_KEY ZI_S3_SECRET_KEY ZIMAGE_KAFKA_BOOTSTRAP_SERVERS \
        ZIMAGE_REDIS_URL ZIMAGE_S3_ENDPOINT ZIMAGE_S3_ACCESS_KEY ZIMAGE_S3_SECRET_KEY
    [[ -n $ZI_BINARY && -x $ZI_BINARY ]] || zt_die "ZI_BINARY is not set or not executable (ctest sets it)"
    zt_require_tools kcat redis-cli
    zt_scratch "$ZT_NAME"
    ZT_RUN=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
    ZT_TOPIC="zt.$ZT_NAME.$ZT_RUN"
    ZT_DLQ="zt.$ZT_NAME.$ZT_RUN.dlq"
    ZT_RESULTS="zt.$ZT_NAME.$ZT_RUN.results"
    ZT_GROUP="zt-$ZT_NAME-$ZT_RUN"
    ZT_PREFIX="zt:$ZT_NAME:$ZT_RUN:"
    ZT_KEYDIR="zt/$ZT_NAME/$ZT_RUN"
    ZT_CFG=$ZT_TMP/worker.yaml
    ZT_T0=$(date +%s%3N)
    zt_on_exit zt_cleanup
    echo "test $ZT_NAME: run $ZT_RUN, topic $ZT_TOPIC, scratch $ZT_TMP"
}

# Registered after the scratch dir's removal, so it runs before it: kills the workers still
# running, shows their logs after a failure.
zt_cleanup() {
    local n
    for n in "${!ZT_PIDS[@]}"; do
        zt_kill "$n" KILL
    done
    if zt_failed; then
        zt_tail_log 60 "$ZT_TMP"/*.log
    fi
    echo "test $ZT_NAME: $(($(date +%s%3N) - ZT_T0)) ms"
}

# zt_s3_putget: least-privilege S3 credentials - the stack's extra user zimage-putget with a
# bucket policy granting s3:GetObject and s3:PutObject on the bucket zimage-putget's objects
# and nothing else (no s3:ListBucket: a missing object reads 403 AccessDenied, as on AWS).
# Sets ZT_PUTGET_BUCKET and ZT_PUTGET_KEYS (ACCESS:SECRET). Made once per stack.
zt_s3_putget() {
    local access secret policy sha owner=$ZI_S3_ACCESS_KEY:$ZI_S3_SECRET_KEY
    read -r access secret < <("$ZT_REPO/deploy/local/stack.sh" s3-user zimage-putget) || true
    [[ -n $access && -n $secret ]] || zt_die "stack.sh s3-user zimage-putget gave no keys"
    ZT_PUTGET_KEYS=$access:$secret
    ZT_PUTGET_BUCKET=zimage-putget
    # 200 when made, 409 when it is there already
    zt_s3 "$owner" -o /dev/null -X PUT -H "x-amz-content-sha256: $ZT_EMPTY_SHA256" \
        "$ZI_S3_ENDPOINT/$ZT_PUTGET_BUCKET" || true
    policy='{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Principal":{"AWS":["arn:aws:iam:::user/zimage-putget"]},"Action":["s3:GetObject","s3:PutObject"],"Resource":["arn:aws:s3:::zimage-putget/*"]}]}'
    sha=$(printf %s "$policy" | sha256sum | cut -d' ' -f1)
    zt_check "putget: bucket policy set" 204 "$(zt_s3 "$owner" -o /dev/null -w '%{http_code}' \
        -X PUT -H "x-amz-content-sha256: $sha" -H "Content-Type: application/json" \
        --data-binary "$policy" "$ZI_S3_ENDPOINT/$ZT_PUTGET_BUCKET?policy=")"
}

# zt_config [YAML]: the worker config for this test; YAML lines given are appended (they
# may add whole sections that the base does not have: kafka/worker keys go through env).
zt_config() {
    cat >"$ZT_CFG" <<EOF
model:
  path: $ZT_REPO/tests/golden/data/tiny-zimage
device:
  backend: cpu
generation:
  width: 64
  height: 64
  steps: ${ZT_STEPS:-2}
kafka:
  topic: $ZT_TOPIC
  group_id: $ZT_GROUP
  dlq_topic: $ZT_DLQ
  result_topic: "${ZT_RESULT_TOPIC:-}"
  max_message_bytes: ${ZT_MAX_MESSAGE_BYTES:-1048576}
  properties:
    session.timeout.ms: "6000"
    heartbeat.interval.ms: "500"
    auto.commit.interval.ms: "1000"
    statistics.interval.ms: "1000"
redis:
  key_prefix: "$ZT_PREFIX"
  job_ttl_s: 3600
s3:
  key_template: "$ZT_KEYDIR/{job_id}.png"
  retry_s: ${ZT_S3_RETRY_S:-60}
worker:
  http_listen: 127.0.0.1:0
  heartbeat_s: 1
  max_attempts: ${ZT_MAX_ATTEMPTS:-3}
  drain_timeout_s: ${ZT_DRAIN_S:-120}
EOF
}

# zt_start_worker NAME [VAR=VALUE...]: starts a worker (id NAME), log in $ZT_TMP/NAME.log.
zt_start_worker() {
    local name=$1
    shift
    # In a subshell of its own, so bash's "Aborted" notice of a crash test stays out of
    # the output.
    (exec env ZIMAGE_WORKER_ID="$name" "$@" "$ZI_BINARY" worker --config "$ZT_CFG" \
        >>"$ZT_TMP/$name.log" 2>&1) &
    ZT_PIDS[$name]=$!
}

# zt_kill NAME [SIGNAL]: signals a worker this test started and reaps it (KILL: at once).
zt_kill() {
    local name=$1 sig=${2:-TERM} pid=${ZT_PIDS[$1]:-}
    [[ -n $pid ]] || return 0
    if [[ $sig == KILL ]]; then
        zt_stop_pid "$pid" KILL
        unset "ZT_PIDS[$name]"
    else
        kill -"$sig" "$pid" 2>/dev/null || true
    fi
}

# zt_wait_exit NAME TIMEOUT_S: waits for a worker to exit; sets ZT_RC to its exit status
# ("timeout" when it is still running). Not in a $(...) subshell: only this shell can wait.
zt_wait_exit() {
    local name=$1 t=$2 pid=${ZT_PIDS[$1]} i
    ZT_RC=0
    for ((i = 0; i < t * 20; i++)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.05
    done
    if kill -0 "$pid" 2>/dev/null; then
        ZT_RC=timeout
        return 0
    fi
    wait "$pid" || ZT_RC=$?
    unset "ZT_PIDS[$name]"
}

# zt_term_timed NAME TIMEOUT_S: SIGTERM to a worker, then zt_wait_exit; ZT_MS is the time
# from the signal to its exit (ms).
zt_term_timed() {
    local t0
    t0=$(date +%s%3N)
    zt_kill "$1" TERM
    zt_wait_exit "$1" "$2"
    ZT_MS=$(($(date +%s%3N) - t0))
}

# zt_wait_log NAME REGEX TIMEOUT_S: waits until the worker's log matches.
zt_wait_log() {
    local f=$ZT_TMP/$1.log i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -qE "$2" "$f" 2>/dev/null && return 0
        sleep 0.1
    done
    zt_die "$1: no log line matching '$2' within $3 s"
}

# zt_which_log REGEX TIMEOUT_S NAME...: the first of the named workers whose log matches,
# on stdout, once one does; status 1 (nothing printed) when none does in time.
zt_which_log() {
    local re=$1 t=$2 i n
    shift 2
    for ((i = 0; i < t * 10; i++)); do
        for n in "$@"; do
            if grep -qE "$re" "$ZT_TMP/$n.log" 2>/dev/null; then
                echo "$n"
                return 0
            fi
        done
        sleep 0.1
    done
    return 1
}

zt_submit() { # ARGS... -> job id on stdout
    "$ZI_BINARY" submit --config "$ZT_CFG" "$@"
}

zt_redis() {
    redis-cli -p "$ZI_REDIS_PORT" "$@"
}

# zt_events [FIELD...]: the fields (default: job_id status error_code; "-" for an empty one)
# of each entry of this test's events stream, one line per entry (RESP read with a few
# lines of Python: redis-cli prints stream entries one field per line).
zt_events() {
    python3 - "$ZI_REDIS_PORT" "${ZT_PREFIX}events" "$@" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
f = s.makefile("rb")
args = [b"XRANGE", sys.argv[2].encode(), b"-", b"+"]
s.sendall(b"*%d\r\n" % len(args) + b"".join(b"$%d\r\n%s\r\n" % (len(a), a) for a in args))
def read():
    line = f.readline().rstrip(b"\r\n")
    t, rest = line[:1], line[1:]
    if t == b"*":
        n = int(rest)
        return None if n < 0 else [read() for _ in range(n)]
    if t == b"$":
        n = int(rest)
        return None if n < 0 else f.read(n + 2)[:-2].decode()
    if t == b"-":
        raise SystemExit("redis error: " + rest.decode())
    return rest.decode()
fields = sys.argv[3:] or ["job_id", "status", "error_code"]
for _id, kv in read() or []:
    d = dict(zip(kv[0::2], kv[1::2]))
    print(" ".join(d.get(k, "") or "-" for k in fields))
EOF
}

zt_field() { # JOB FIELD
    zt_redis HGET "${ZT_PREFIX}job:$1" "$2"
}

# zt_wait_status JOB STATUS TIMEOUT_S: waits for the hash's status.
zt_wait_status() {
    local i s=
    for ((i = 0; i < $3 * 10; i++)); do
        s=$(zt_field "$1" status 2>/dev/null || true)
        [[ $s == "$2" ]] && return 0
        sleep 0.1
    done
    zt_die "job $1: status '$s', expected '$2' within $3 s"
}

# zt_wait_all_final TIMEOUT_S JOB...: waits until every job has a final status.
zt_wait_all_final() {
    local t=$1 i j s left
    shift
    for ((i = 0; i < t * 5; i++)); do
        left=0
        for j in "$@"; do
            s=$(zt_field "$j" status 2>/dev/null || true)
            [[ $s == succeeded || $s == failed || $s == cancelled ]] || left=$((left + 1))
        done
        ((left == 0)) && return 0
        sleep 0.2
    done
    zt_die "$left of $# jobs not final within $t s"
}

# zt_s3_keys: the object keys under this test's prefix, one per line (ListObjectsV2).
zt_s3_keys() {
    local prefix token=
    prefix=$(python3 -c 'import sys,urllib.parse; print(urllib.parse.quote(sys.argv[1], safe=""))' "$ZT_KEYDIR/")
    : >"$ZT_TMP/keys"
    while :; do
        local q="list-type=2&prefix=$prefix"
        [[ -n $token ]] && q="continuation-token=$token&$q"
        zt_s3 "$ZI_S3_ACCESS_KEY:$ZI_S3_SECRET_KEY" -f --max-time 10 \
            -H "x-amz-content-sha256: $ZT_EMPTY_SHA256" "$ZI_S3_ENDPOINT/$ZI_S3_BUCKET?$q" \
            >"$ZT_TMP/list.xml" || zt_die "S3 list failed"
        python3 - "$ZT_TMP/list.xml" >>"$ZT_TMP/keys" <<'EOF'
import re, sys
x = open(sys.argv[1]).read()
for k in re.findall(r"<Key>([^<]*)</Key>", x):
    print(k)
EOF
        token=$(python3 - "$ZT_TMP/list.xml" <<'EOF'
import re, sys, urllib.parse
x = open(sys.argv[1]).read()
m = re.search(r"<NextContinuationToken>([^<]*)</NextContinuationToken>", x)
print(urllib.parse.quote(m.group(1), safe="") if m and "<IsTruncated>true" in x else "")
EOF
        )
        [[ -n $token ]] || break
    done
    cat "$ZT_TMP/keys"
}

# zt_png_size FILE: "WxH" of a PNG file, or "invalid".
zt_png_size() {
    python3 - "$1" <<'EOF'
import struct, sys, zlib
d = open(sys.argv[1], "rb").read()
ok = d[:8] == b"\x89PNG\r\n\x1a\n" and d[12:16] == b"IHDR"
i, end = 8, False
while ok and i + 12 <= len(d):
    n, t = struct.unpack(">I4s", d[i:i + 8])
    body = d[i + 8:i + 8 + n]
    crc = struct.unpack(">I", d[i + 8 + n:i + 12 + n])[0] if i + 12 + n <= len(d) else -1
    ok = ok and zlib.crc32(t + body) == crc
    end = t == b"IEND"
    i += 12 + n
if ok and end:
    w, h = struct.unpack(">II", d[16:24])
    print(f"{w}x{h}")
else:
    print("invalid")
EOF
}

# zt_url JOB: the presigned URL `zimage status` prints.
zt_url() {
    "$ZI_BINARY" status --config "$ZT_CFG" "$1" | python3 -c 'import json,sys; print(json.load(sys.stdin).get("url",""))'
}

# zt_http_port NAME: the port of the worker's HTTP server, from its log: its latest start ("" before
# it listens).
zt_http_port() {
    grep -oE 'on port [0-9]+' "$ZT_TMP/$1.log" | tail -1 | awk '{print $3}'
}

# zt_readyz NAME: the HTTP status of the worker's /readyz.
zt_readyz() {
    curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$(zt_http_port "$1")/readyz"
}

# zt_metric NAME PATTERN: a sample of the worker's /metrics (0 when absent).
zt_metric() {
    local port
    port=$(zt_http_port "$1")
    [[ -n $port ]] || {
        echo 0
        return
    }
    curl -s --max-time 2 "http://127.0.0.1:$port/metrics" | awk -v p="$2" '$1 == p {print $2; f=1} END {if (!f) print 0}'
}

# zt_wait_step JOB MIN_STEP TIMEOUT_S: waits until the job runs at MIN_STEP or later;
# returns 1 (does not fail the test) when it does not in time.
zt_wait_step() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        [[ $(zt_field "$1" status) == running && $(zt_field "$1" step) -ge $2 ]] && return 0
        sleep 0.1
    done
    return 1
}
