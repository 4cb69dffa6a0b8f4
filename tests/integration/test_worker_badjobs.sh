#!/usr/bin/env bash
# test_worker_badjobs.sh - bad jobs never block a partition.
#
# Produced straight to ONE partition, in this order: not JSON; no prompt; width 17; a
# message over kafka.max_message_bytes; invalid UTF-8 in the prompt; a job_id with '/';
# a job_id with '..'; a job whose deadline_ms has passed; then two good jobs. Checks: every
# bad job with a readable, valid id is recorded `failed` with its error_code
# (invalid_job / too_large) and an error naming the field, the ones without a usable id
# leave no hash; the expired job fails `expired`; all eight are copied to the DLQ (every
# failed job is: docs/contract.md, "Extensions") with key, value (cut to
# max_message_bytes) and the zimage-* headers; the good jobs behind them succeed; the
# result topic carries the outcomes.
source "$(dirname "$0")/worker_lib.sh"
zt_init badjobs
ZT_MAX_MESSAGE_BYTES=4096 ZT_RESULT_TOPIC=$ZT_RESULTS zt_config

zt_start_worker w1
zt_wait_log w1 'assigned' 30

produce() { # KEY FILE: one message to partition 0
    kcat -b "$ZI_KAFKA_BOOTSTRAP" -P -t "$ZT_TOPIC" -p 0 -k "$1" "$2"
}
cat_to() { # FILE TEXT (printf format, so \x escapes work)
    # shellcheck disable=SC2059
    printf "$2" >"$1"
}
cat_to "$ZT_TMP"/m1 'this is not JSON'
cat_to "$ZT_TMP"/m2 '{"job_id":"bad-noprompt","width":64}'
cat_to "$ZT_TMP"/m3 '{"job_id":"bad-width","prompt":"a cat","width":17}'
python3 -c 'import json; print(json.dumps({"job_id": "bad-big", "prompt": "x" * 5000}), end="")' >"$ZT_TMP/m4"
cat_to "$ZT_TMP"/m5 '{"job_id":"bad-utf8","prompt":"caf\xc3 \xff"}'
cat_to "$ZT_TMP"/m6 '{"job_id":"a/b","prompt":"slash"}'
cat_to "$ZT_TMP"/m7 '{"job_id":"a..b","prompt":"dots"}'
cat_to "$ZT_TMP"/m8 '{"job_id":"bad-expired","prompt":"late","deadline_ms":1000}'
cat_to "$ZT_TMP"/m9 '{"job_id":"good-1","prompt":"after the bad ones"}'
cat_to "$ZT_TMP"/m10 '{"job_id":"good-2","prompt":"also fine","seed":"18446744073709551615"}'
keys=(k-notjson bad-noprompt bad-width bad-big bad-utf8 a/b a..b bad-expired good-1 good-2)
for i in $(seq 1 10); do produce "${keys[i - 1]}" "$ZT_TMP/m$i"; done

zt_wait_status good-2 succeeded 60
zt_check "good-1" succeeded "$(zt_field good-1 status)"
zt_check "good-2 (64-bit seed)" 18446744073709551615 "$(zt_field good-2 seed)"

expect_failed() { # ID CODE FIELD-IN-ERROR
    zt_check "$1 status" failed "$(zt_field "$1" status)"
    zt_check "$1 error_code" "$2" "$(zt_field "$1" error_code)"
    zt_check "$1 error names '$3'" yes "$(zt_field "$1" error | grep -q "$3" && echo yes)"
}
expect_failed bad-noprompt invalid_job prompt
expect_failed bad-width invalid_job width
expect_failed bad-big too_large 4096
expect_failed bad-utf8 invalid_job UTF-8
expect_failed bad-expired expired deadline_ms
zt_check "events for bad jobs with ids" 5 "$(zt_events | grep -c ' failed ' || true)"
zt_check "no hash for ids that are not valid" "" \
    "$(zt_redis --scan --pattern "${ZT_PREFIX}job:*" | grep -E 'a/b|a\.\.b' || true)"
zt_check "hashes in all (5 failed, 2 good)" 7 \
    "$(zt_redis --scan --pattern "${ZT_PREFIX}job:*" | grep -c . || true)"

for _ in $(seq 50); do
    dlq=$(zt_consume "$ZT_DLQ" '%k|%h|%S\n')
    (($(grep -c . <<<"$dlq") >= 8)) && break
    sleep 0.2
done
zt_check "DLQ messages (every failed job)" 8 "$(grep -c . <<<"$dlq")"
# The DLQ topic has several partitions (keys spread): order the copies by source offset.
dlq=$(while IFS= read -r l; do
    printf '%s\t%s\n' "$(grep -oE "zimage-source=[^,|]*/[0-9]+" <<<"$l" | grep -oE '[0-9]+$')" "$l"
done <<<"$dlq" | sort -n | cut -f2-)
zt_check "DLQ keys in order" "k-notjson bad-noprompt bad-width bad-big bad-utf8 a/b a..b bad-expired" \
    "$(cut -d'|' -f1 <<<"$dlq" | tr '\n' ' ' | sed 's/ $//')"
zt_check "DLQ error codes" "invalid_job invalid_job invalid_job too_large invalid_job invalid_job invalid_job expired" \
    "$(grep -oE 'zimage-error-code=[a-z_]+' <<<"$dlq" | cut -d= -f2 | tr '\n' ' ' | sed 's/ $//')"
zt_check "DLQ sources" "0 1 2 3 4 5 6 7" \
    "$(grep -oE "zimage-source=$ZT_TOPIC/0/[0-9]+" <<<"$dlq" | grep -oE '[0-9]+$' | tr '\n' ' ' | sed 's/ $//')"
zt_check "DLQ attempts headers (no run)" 8 "$(grep -c 'zimage-attempts=0' <<<"$dlq")"
zt_check "DLQ errors present" 8 "$(grep -c 'zimage-error=[^,|]' <<<"$dlq")"
zt_check "DLQ copy of the large message cut to max_message_bytes" 4096 \
    "$(grep '^bad-big|' <<<"$dlq" | cut -d'|' -f3)"
zt_check "DLQ copy of the small bad message whole" 16 "$(grep '^k-notjson|' <<<"$dlq" | cut -d'|' -f3)"

res=$(zt_consume "$ZT_RESULTS" '%s\n')
zt_check "result messages (ids only)" 7 "$(grep -c . <<<"$res")"
zt_check "result of good-1" yes \
    "$(grep '"job_id":"good-1"' <<<"$res" | grep -q '"status":"succeeded"' && echo yes)"
zt_check "result of bad-width" yes \
    "$(grep '"job_id":"bad-width"' <<<"$res" | grep -q '"error_code":"invalid_job"' && echo yes)"
zt_check "metrics: the bad jobs and the expired one are outcome failed" 8 \
    "$(zt_metric w1 'zimage_jobs_total{outcome="failed"}')"
zt_check "metrics: bad jobs by error_code" 7 \
    "$(($(zt_metric w1 'zimage_job_failures_total{error_code="invalid_job"}') + \
        $(zt_metric w1 'zimage_job_failures_total{error_code="too_large"}')))"
# a job produced straight to Kafka (no `queued` record) still gets queued_at: the Kafka
# timestamp of its message
zt_check_ge "good-1 queued_at (unix ms)" 1700000000000 "$(zt_field good-1 queued_at)"

# An escaped NUL in the prompt (cJSON would cut the prompt there): a bad job recorded
# under its id, naming the prompt; in a field the job does not read it is ignored.
cat_to "$ZT_TMP"/m11 '{"job_id":"bad-nul","prompt":"a\\u0000b"}'
cat_to "$ZT_TMP"/m12 '{"job_id":"good-3","prompt":"p","note":"\\u0000"}'
produce bad-nul "$ZT_TMP/m11"
produce good-3 "$ZT_TMP/m12"
zt_wait_status good-3 succeeded 60
expect_failed bad-nul invalid_job "prompt: contains an escaped NUL"

zt_kill w1 TERM
zt_wait_exit w1 30
zt_check "exit status after SIGTERM" 0 "$ZT_RC"
zt_finish
