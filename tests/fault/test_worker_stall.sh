#!/usr/bin/env bash
# test_worker_stall.sh - a worker that stalls mid-job (SIGSTOP: a frozen VM or container, a
# process cut off from Redis and Kafka) for longer than its lease and its Kafka session, and
# then comes back, never overwrites the run that replaced it.
#
# While it is stopped, the group gives its partition to the other worker, whose run counts
# attempt 2 and finishes the job. When the stalled worker resumes, the lease is free again
# (the other run released it), so only the job hash's attempt can tell it that a later run
# owns the job: its next write (progress, or the final state) is refused by the fence
# (docs/worker.md, "Stalled workers"), and the run stops without a final state, upload, DLQ
# copy or result message. Checks that fail without the fence: the hash keeps attempt 2 and
# the other worker, one `succeeded` event and one result message. Then the resumed worker
# stays up and runs the next job (a superseded run does not stop the worker).
#
# Then a worker that stalls between its last fence check and its upload
# (ZIMAGE_FAULT_STOP_BEFORE_UPLOAD: it stops itself there) and comes back after the other
# worker's run uploaded and finished: its PUT is conditional (If-None-Match: *), finds the
# later run's object and leaves it (worker.md, "Stalled workers"). Fails without the
# condition: the object's x-amz-meta-attempt would be the stalled run's 1, not 2.
source "$(dirname "$0")/../integration/worker_lib.sh"
zt_init stall
ZT_STEPS=8 ZT_RESULT_TOPIC=$ZT_RESULTS zt_config
HOOKS=(ZIMAGE_FAULT_STEP_DELAY_MS=400 ZIMAGE_FAULT_STOP_BEFORE_UPLOAD="stalled upload")

zt_start_worker w1 "${HOOKS[@]}"
zt_start_worker w2 "${HOOKS[@]}"
zt_wait_log w1 'assigned' 30
zt_wait_log w2 'assigned' 40

zt_submit --job-id stall-1 --prompt "stalled run" >/dev/null
zt_wait_step stall-1 2 30 || zt_die "stall-1 did not reach step 2"
victim=$(zt_field stall-1 worker)
other=w1
[[ $victim == w1 ]] && other=w2
echo "stopping $victim at step $(zt_field stall-1 step) of 8"
kill -STOP "${ZT_PIDS[$victim]}"
# A failed check must not leave it stopped (zt_cleanup kills it after this).
resume() {
    if [[ -n ${ZT_PIDS[$victim]:-} ]]; then
        kill -CONT "${ZT_PIDS[$victim]}" 2>/dev/null || true
    fi
}
zt_on_exit resume

# The session times out (6 s), the partition moves, the lease has expired (3 s): the
# other worker runs the job again and finishes it.
zt_wait_status stall-1 succeeded 90
zt_check "the job was finished by the other worker" "$other" "$(zt_field stall-1 worker)"
zt_check "by a second run" 2 "$(zt_field stall-1 attempt)"

# Resume only once the later run has released the lease: a lease still held would stop the
# resumed run by itself (docs/worker.md, "Lease lost"); a free one it takes back.
for _ in $(seq 100); do
    [[ $(zt_redis EXISTS "${ZT_PREFIX}lease:stall-1") == 0 ]] && break
    sleep 0.1
done
zt_check "the later run released the lease" 0 "$(zt_redis EXISTS "${ZT_PREFIX}lease:stall-1")"
kill -CONT "${ZT_PIDS[$victim]}"
# The resumed run ends within a step (0.4 s): refused, or (without the fence) by finishing.
for _ in $(seq 300); do
    grep -qE 'a later run owns the job|job succeeded' "$ZT_TMP/$victim.log" && break
    sleep 0.1
done
sleep 1 # anything it would still write
zt_check "the resumed run was refused" yes \
    "$(grep -q 'a later run owns the job' "$ZT_TMP/$victim.log" && echo yes)"
zt_check "the resumed worker is still running" yes \
    "$(kill -0 "${ZT_PIDS[$victim]}" 2>/dev/null && echo yes)"
zt_check "hash: status" succeeded "$(zt_field stall-1 status)"
zt_check "hash: worker (the later run's)" "$other" "$(zt_field stall-1 worker)"
zt_check "hash: attempt (the later run's)" 2 "$(zt_field stall-1 attempt)"
zt_check "hash: step" 8 "$(zt_field stall-1 step)"
zt_check "succeeded events" 1 "$(zt_events | grep -c '^stall-1 succeeded' || true)"
zt_check "running events (one per run)" 2 "$(zt_events | grep -c '^stall-1 running' || true)"
zt_check "no failure recorded" 0 "$(zt_events | grep -c '^stall-1 failed' || true)"
zt_check "result messages" 1 "$(zt_consume "$ZT_RESULTS" '%k\n' | grep -c '^stall-1$' || true)"
zt_check "DLQ messages" 0 "$(zt_consume "$ZT_DLQ" '%k\n' | grep -c . || true)"
zt_check "objects" "$ZT_KEYDIR/stall-1.png" "$(zt_s3_keys)"
zt_check "superseded runs counted" 1 \
    "$(zt_metric "$victim" 'zimage_jobs_total{outcome="superseded"}')"

# Both workers go on: each of the next jobs succeeds, whichever worker takes it.
ids=(after-1 after-2 after-3 after-4)
for j in "${ids[@]}"; do zt_submit --job-id "$j" --prompt "after $j" --steps 2 >/dev/null; done
zt_wait_all_final 90 "${ids[@]}"
ok=0
for j in "${ids[@]}"; do [[ $(zt_field "$j" status) == succeeded ]] && ok=$((ok + 1)); done
zt_check "jobs after the stall succeeded" 4 "$ok"
zt_check "both workers still running" yes \
    "$(kill -0 "${ZT_PIDS[w1]}" 2>/dev/null && kill -0 "${ZT_PIDS[w2]}" 2>/dev/null && echo yes)"

# ---- a stall between the last fence check and the upload ----
zt_submit --job-id stall-2 --prompt "stalled upload" --steps 2 >/dev/null
victim=$(zt_which_log 'ZIMAGE_FAULT_STOP_BEFORE_UPLOAD matched' 60 w1 w2) ||
    zt_die "no worker stopped before stall-2's upload"
other=w1
[[ $victim == w1 ]] && other=w2
echo "$victim stopped itself before stall-2's upload"
zt_wait_status stall-2 succeeded 90
zt_check "stall-2 finished by the other worker" "$other" "$(zt_field stall-2 worker)"
zt_check "stall-2 by a second run" 2 "$(zt_field stall-2 attempt)"
for _ in $(seq 100); do
    [[ $(zt_redis EXISTS "${ZT_PREFIX}lease:stall-2") == 0 ]] && break
    sleep 0.1
done
zt_check "the later run released stall-2's lease" 0 "$(zt_redis EXISTS "${ZT_PREFIX}lease:stall-2")"
kill -CONT "${ZT_PIDS[$victim]}"
for _ in $(seq 300); do
    grep -q 'meanwhile: left as it is' "$ZT_TMP/$victim.log" && break
    sleep 0.1
done
sleep 1 # anything it would still write
zt_check "the resumed run left the later run's object" yes \
    "$(grep -q 'uploaded by run 2 of job stall-2 meanwhile: left as it is' "$ZT_TMP/$victim.log" &&
        echo yes)"
curl -sf --max-time 10 -D "$ZT_TMP/h2" -o /dev/null "$(zt_url stall-2)" || zt_die "GET stall-2"
zt_check "the object is the later run's" 2 \
    "$(tr -d '\r' <"$ZT_TMP/h2" | awk 'tolower($1) == "x-amz-meta-attempt:" {print $2}')"
zt_check "stall-2 hash: worker" "$other" "$(zt_field stall-2 worker)"
zt_check "stall-2 hash: attempt" 2 "$(zt_field stall-2 attempt)"
zt_check "stall-2 succeeded events" 1 "$(zt_events | grep -c '^stall-2 succeeded' || true)"
zt_check "stall-2 result messages" 1 \
    "$(zt_consume "$ZT_RESULTS" '%k\n' | grep -c '^stall-2$' || true)"
zt_check "the resumed worker is still running" yes \
    "$(kill -0 "${ZT_PIDS[$victim]}" 2>/dev/null && echo yes)"
zt_finish
