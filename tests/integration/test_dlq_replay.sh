#!/usr/bin/env bash
# test_dlq_replay.sh - `zimage dlq list` / `zimage dlq replay` against the live local stack
# (the dev broker and Redis).
#
# Five dead letters are produced into a private DLQ topic with the worker's zimage-* headers
# (kcat -H): job a (s3_auth, failed after 3 attempts, plus a foreign header), b (invalid_job),
# c (s3_auth, but its hash says succeeded), d (s3_auth, hash expired), e (invalid_job, no
# key, not JSON). Checks:
#   list      lists all five (source, key, error code, error), changes nothing;
#   --dry-run lists what would be replayed, skips c, and changes nothing (the jobs topic
#             stays empty, Redis is untouched);
#   replay --error-code s3_auth
#             re-produces exactly a and d to the jobs topic with the original key and value,
#             without zimage-* headers but with zimage-replayed-from and the foreign header;
#             resets a's hash (status queued, attempt 0, error gone, queued event), creates
#             d's, leaves c `succeeded`; prints "replayed 2 of 5 messages";
#   replaying again replays nothing (the position is committed), while another error code
#             and --from-beginning still see their messages; usage errors exit 2;
#   a real worker (CPU, tiny checkpoint) limited to 2 steps dead-letters a 4-step job:
#             `list` reads its headers, `replay` hands the job back to it (queued event,
#             a second dead letter whose source is the replayed message).
#
# Environment: ZI_BINARY (ctest) and the stack's variables (`deploy/local/stack.sh env`;
# tests/run-all.sh exports them). Missing ones fail the test.
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "$0")/../lib.sh"

zt_require_env ZI_BINARY ZIMAGE_KAFKA_BOOTSTRAP_SERVERS ZIMAGE_REDIS_URL ZIMAGE_S3_ENDPOINT \
    ZIMAGE_S3_ACCESS_KEY ZIMAGE_S3_SECRET_KEY
zt_require_tools kcat redis-cli

BS=$ZIMAGE_KAFKA_BOOTSTRAP_SERVERS
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
wpid=
id=$$-$RANDOM
JOBS=zitest.dlq-$id.jobs
DLQ=zitest.dlq-$id.dlq
P="zitest-dlq-$id:"
zt_scratch dlq
tmp=$ZT_TMP
rcli() { redis-cli -u "$ZIMAGE_REDIS_URL" "$@"; }
cleanup() {
    zt_stop_pid "$wpid"
    if zt_failed; then
        zt_tail_log 40 "$tmp/worker.log"
    fi
    zt_redis_del_prefix "$P"
}
zt_on_exit cleanup


cat >"$tmp/cfg.yaml" <<EOF
kafka:
  topic: $JOBS
  dlq_topic: $DLQ
  group_id: zitest-dlq-$id
redis:
  key_prefix: "$P"
EOF
zimage() { "$ZI_BINARY" "$@"; }

# the jobs topic, as "key|headers|value" lines (kcat exits at the end of every partition)
jobs_topic() {
    zt_consume "$JOBS" '%k|%h|%s\n' | LC_ALL=C sort
}

a=job-a-$id b=job-b-$id c=job-c-$id d=job-d-$id
va="{\"job_id\":\"$a\",\"prompt\":\"a red fox\",\"steps\":2}"
dead() { # KEY VALUE CODE ERROR SOURCE ATTEMPTS [extra kcat args]
    local key=$1 value=$2 code=$3 err=$4 src=$5 att=$6
    shift 6
    local -a k=()
    [[ -n $key ]] && k=(-k "$key")
    printf '%s' "$value" | kcat -b "$BS" -P -t "$DLQ" "${k[@]}" -H "zimage-error-code=$code" \
        -H "zimage-error=$err" -H "zimage-source=zimage.jobs/$src" -H "zimage-attempts=$att" "$@"
}
dead "$a" "$va" s3_auth "S3 refused the credentials (403 InvalidAccessKeyId)" 0/11 3 -H trace=t-a
dead "$b" "{\"job_id\":\"$b\",\"prompt\":\"x\",\"width\":100}" invalid_job \
    "width: 100 is not a multiple of 16" 1/12 0
dead "$c" "{\"job_id\":\"$c\",\"prompt\":\"c\"}" s3_auth "S3 refused the credentials" 2/13 3
dead "$d" "{\"job_id\":\"$d\",\"prompt\":\"d\"}" s3_auth "S3 refused the credentials" 3/14 3
dead "" "not json" invalid_job "not valid JSON" 0/15 0

rcli hset "${P}job:$a" status failed attempt 3 worker w1 error_code s3_auth \
    error "S3 refused the credentials" finished_at 1 >/dev/null
rcli hset "${P}job:$c" status succeeded attempt 1 worker w1 >/dev/null
snapshot() { # Redis state that replays may change
    echo "a: $(rcli hmget "${P}job:$a" status attempt error_code | xargs)"
    echo "c: $(rcli hmget "${P}job:$c" status attempt | xargs)"
    echo "d: $(rcli exists "${P}job:$d")"
    echo "events: $(rcli xlen "${P}events")"
}
snapshot >"$tmp/redis.before"

# ---- list ----
rc=0
zimage dlq list --config "$tmp/cfg.yaml" >"$tmp/list" 2>"$tmp/err" || rc=$?
zt_check "list exits 0" 0 "$rc"
zt_check "list: one line per message + summary" 6 "$(wc -l <"$tmp/list")"
zt_check "list: summary" "listed 5 of 5 messages" "$(tail -n 1 "$tmp/list")"
zt_check "list: a with source, key, code, attempts, error" yes "$(zt_has "$tmp/list" \
    "^$DLQ/[0-9]+/[0-9]+ key=$a error_code=s3_auth attempts=3 source=zimage.jobs/0/11 error=S3 refused the credentials \(403 InvalidAccessKeyId\)$")"
zt_check "list: b" yes "$(zt_has "$tmp/list" "key=$b error_code=invalid_job .*error=width: 100 is not")"
zt_check "list: message without a key" yes \
    "$(zt_has "$tmp/list" 'key=\(none\) error_code=invalid_job .*source=zimage.jobs/0/15')"
zt_check "list --error-code" "listed 2 of 5 messages; 3 with another error code" \
    "$(zimage dlq list --config "$tmp/cfg.yaml" --error-code invalid_job | tail -n 1)"

# ---- dry run ----
rc=0
zimage dlq replay --config "$tmp/cfg.yaml" --dry-run >"$tmp/dry" 2>"$tmp/err" || rc=$?
zt_check "dry run exits 0" 0 "$rc"
zt_check "dry run: summary" \
    "dry run: would replay 4 of 5 messages; 1 skipped: job already succeeded; nothing changed" \
    "$(tail -n 1 "$tmp/dry")"
zt_check "dry run: lists a, b, d and the keyless one, not c" "(none) $a $b $d" \
    "$(grep -o 'key=[^ ]*' "$tmp/dry" | cut -d= -f2 | LC_ALL=C sort | xargs)"
zt_check "dry run: jobs topic stays empty" "" "$(jobs_topic)"
snapshot >"$tmp/redis.after"
zt_check "dry run: Redis unchanged" "$(cat "$tmp/redis.before")" "$(cat "$tmp/redis.after")"

# ---- replay one error code ----
rc=0
zimage dlq replay --config "$tmp/cfg.yaml" --error-code s3_auth >"$tmp/replay" 2>"$tmp/err" || rc=$?
zt_check "replay exits 0" 0 "$rc"
[[ $rc == 0 ]] || cat "$tmp/err" >&2
zt_check "replay: summary" \
    "replayed 2 of 5 messages; 2 with another error code; 1 skipped: job already succeeded" \
    "$(tail -n 1 "$tmp/replay")"
zt_check "replay: one line per replayed message" 2 "$(grep -c '^replayed [^0-9]' "$tmp/replay")"
zt_check "replay: says why c was skipped" yes "$(zt_has "$tmp/replay" "^skipped .*key=$c.*already succeeded")"

jobs_topic >"$tmp/jobs"
zt_check "jobs topic: exactly a and d" "$a $d" "$(cut -d'|' -f1 "$tmp/jobs" | xargs)"
zt_check "jobs topic: a's value unchanged" "$va" "$(grep "^$a|" "$tmp/jobs" | cut -d'|' -f3-)"
ha=$(grep "^$a|" "$tmp/jobs" | cut -d'|' -f2)
zt_check "jobs topic: no zimage-error headers" no "$([[ $ha == *zimage-error* ]] && echo yes || echo no)"
zt_check "jobs topic: zimage-replayed-from names the DLQ message" yes \
    "$([[ $ha =~ zimage-replayed-from=$DLQ/[0-9]+/[0-9]+ ]] && echo yes || echo no)"
zt_check "jobs topic: foreign header kept" yes "$([[ $ha == *trace=t-a* ]] && echo yes || echo no)"

zt_check "redis: a queued again with attempt 0" "queued 0" \
    "$(rcli hmget "${P}job:$a" status attempt | xargs)"
zt_check "redis: a's error cleared" "0 0" \
    "$(rcli hexists "${P}job:$a" error_code) $(rcli hexists "${P}job:$a" error)"
zt_check "redis: a's replayed_from" yes \
    "$([[ $(rcli hget "${P}job:$a" replayed_from) =~ ^$DLQ/[0-9]+/[0-9]+$ ]] && echo yes || echo no)"
ttl=$(rcli ttl "${P}job:$a")
zt_check "redis: a has a TTL" yes "$([[ $ttl =~ ^[0-9]+$ && $ttl -gt 0 ]] && echo yes || echo no)"
zt_check "redis: d recorded queued with attempt 0" "queued 0" \
    "$(rcli hmget "${P}job:$d" status attempt | xargs)"
zt_check "redis: c still succeeded" "succeeded 1" "$(rcli hmget "${P}job:$c" status attempt | xargs)"
zt_check "redis: b untouched" 0 "$(rcli exists "${P}job:$b")"
zt_check "redis: queued events for a and d" "$a $d" "$(rcli xrange "${P}events" - + |
    awk 'prev == "job_id" { id = $0 } prev == "status" && $0 == "queued" { print id } { prev = $0 }' |
    LC_ALL=C sort | xargs)"

# ---- once only; positions per error code ----
rc=0
zimage dlq replay --config "$tmp/cfg.yaml" --error-code s3_auth >"$tmp/again" 2>&1 || rc=$?
zt_check "second replay exits 0" 0 "$rc"
zt_check "second replay replays nothing" "replayed 0 of 0 messages" "$(tail -n 1 "$tmp/again")"
zt_check "jobs topic still holds 2 messages" 2 "$(jobs_topic | wc -l)"
zt_check "another error code keeps its own position" \
    "dry run: would replay 2 of 5 messages; 3 with another error code; nothing changed" \
    "$(zimage dlq replay --config "$tmp/cfg.yaml" --error-code invalid_job --dry-run | tail -n 1)"
zt_check "--from-beginning reads everything again" \
    "dry run: would replay 2 of 5 messages; 2 with another error code; 1 skipped: job already succeeded; nothing changed" \
    "$(zimage dlq replay --config "$tmp/cfg.yaml" --error-code s3_auth --from-beginning --dry-run |
        tail -n 1)"
zimage dlq replay --config "$tmp/cfg.yaml" --dry-run --limit 1 >"$tmp/limit"
zt_check "--limit: one message listed" 1 "$(grep -c ' key=' "$tmp/limit")"
zt_check "--limit: summary" yes \
    "$(zt_has "$tmp/limit" '^dry run: would replay 1 of [0-9]+ messages.*; stopped at --limit 1; nothing changed$')"

# ---- usage and failures ----
for bad in "replay" "replay --config $tmp/cfg.yaml --limit 0" "replay --config $tmp/cfg.yaml --nope" \
    "bogus --config $tmp/cfg.yaml" "list --config $tmp/cfg.yaml --dry-run" \
    "replay --config $tmp/cfg.yaml --error-code S3-AUTH" ""; do
    rc=0
    # shellcheck disable=SC2086
    zimage dlq $bad >/dev/null 2>"$tmp/err" || rc=$?
    zt_check "'dlq $bad' exits 2 with an error line" "2 yes" "$rc $(zt_has "$tmp/err" '^zimage: error: ')"
done
rc=0
ZIMAGE_REDIS_URL=redis://127.0.0.1:1/0 zimage dlq replay --config "$tmp/cfg.yaml" \
    >/dev/null 2>"$tmp/err" || rc=$?
zt_check "Redis unreachable exits 1" "1 yes" "$rc $(zt_has "$tmp/err" '^zimage: error: redis .*refused')"
rc=0
ZIMAGE_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1 zimage dlq list --config "$tmp/cfg.yaml" \
    --timeout-ms 1500 >/dev/null 2>"$tmp/err" || rc=$?
zt_check "Kafka unreachable exits 1 within the timeout" "1 yes" \
    "$rc $(zt_has "$tmp/err" '^zimage: error: dlq list: kafka')"
zt_check "jobs topic unchanged by the failures" 2 "$(jobs_topic | wc -l)"

# ---- with a real worker: its own dead letters, replayed back to it ----
# A worker limited to 2 steps dead-letters a 4-step job as invalid_job; `dlq list` reads the
# worker's real headers, and `dlq replay` hands the job back to it (it fails again: the DLQ
# then holds a second copy whose source is the replayed message).
J2=zitest.dlq-$id.w.jobs
D2=zitest.dlq-$id.w.dlq
wid=zt-dlq-$$
cat >"$tmp/worker.yaml" <<EOF
model:
  path: $REPO/tests/golden/data/tiny-zimage
device:
  backend: cpu
generation:
  width: 64
  height: 64
  steps: 2
  max_steps: 2
kafka:
  topic: $J2
  dlq_topic: $D2
  group_id: zitest-dlq-w-$id
  properties:
    session.timeout.ms: "6000"
    heartbeat.interval.ms: "500"
redis:
  key_prefix: "$P"
  job_ttl_s: 600
s3:
  key_template: "zitest/dlq-$id/{job_id}.png"
worker:
  id: $wid
  http_listen: 127.0.0.1:0
  heartbeat_s: 1
EOF
"$ZI_BINARY" worker --config "$tmp/worker.yaml" >"$tmp/worker.log" 2>&1 &
wpid=$!
wait_for() { # TIMEOUT_S COMMAND...: until COMMAND succeeds
    local deadline=$(($(date +%s%3N) + $1 * 1000))
    shift
    while (($(date +%s%3N) < deadline)); do
        "$@" && return 0
        kill -0 "$wpid" 2>/dev/null || return 1
        sleep 0.2
    done
    return 1
}
dlq_count() { zt_consume "$D2" '%o\n' | wc -l; }
is_ready() { [[ $(rcli hget "${P}worker:$wid" state) == ready ]]; }
has_dead() { (($(dlq_count) >= $1)); }
jx=job-x-$id
zt_check "worker ready" yes "$(wait_for 30 is_ready && echo yes || echo no)"
printf '%s' "{\"job_id\":\"$jx\",\"prompt\":\"p\",\"steps\":4}" |
    kcat -b "$BS" -P -t "$J2" -k "$jx"
zt_check "worker dead-letters the 4-step job" yes "$(wait_for 20 has_dead 1 && echo yes || echo no)"
zt_check "job recorded failed, invalid_job" "failed invalid_job" \
    "$(rcli hmget "${P}job:$jx" status error_code | xargs)"
sed "s|^  dlq_topic: .*|  dlq_topic: $D2|; s|^  topic: .*|  topic: $J2|" "$tmp/cfg.yaml" >"$tmp/cfg2.yaml"
zimage dlq list --config "$tmp/cfg2.yaml" >"$tmp/wlist"
zt_check "list reads the worker's headers" yes "$(zt_has "$tmp/wlist" \
    "^$D2/[0-9]+/0 key=$jx error_code=invalid_job attempts=[0-9]+ source=$J2/[0-9]+/0 error=.*steps")"
rc=0
zimage dlq replay --config "$tmp/cfg2.yaml" --error-code invalid_job >"$tmp/wreplay" 2>&1 || rc=$?
zt_check "replay of the worker's dead letter" "0 replayed 1 of 1 messages" "$rc $(tail -n 1 "$tmp/wreplay")"
zt_check "the worker took the replayed job again" yes "$(wait_for 20 has_dead 2 && echo yes || echo no)"
zt_consume "$D2" '%o %h\n' | sort -n >"$tmp/dead"
zt_check "second dead letter's source is the replayed message" yes \
    "$(zt_has "$tmp/dead" "^1 .*zimage-source=$J2/[0-9]+/1")"
zt_check "events: failed, queued by the replay, failed again" "failed queued failed" \
    "$(rcli xrange "${P}events" - + | awk -v j="$jx" '
        prev == "job_id" { id = $0 } prev == "status" && id == j && $0 != "running" { print $0 }
        { prev = $0 }' | xargs)"
kill -TERM "$wpid"
rc=0
wait "$wpid" || rc=$?
wpid=
zt_check "worker drains and exits 0" 0 "$rc"

zt_finish "dlq replay"
