#!/usr/bin/env bash
# test_worker_crash.sh - workers that die mid-job lose nothing and compute nothing twice.
#
# A. `kill -9` of the worker running a (slowed-down) job: after the group notices, the
#    other worker finishes it (attempt 2); every job of the batch succeeds, exactly one
#    object per job, the killed job has two `running` events and one `succeeded`.
# B. A job that crashes every worker that runs it (test hook ZIMAGE_FAULT_CRASH_PROMPT makes
#    the worker abort() after the job's first step): the crashed workers are restarted, as
#    an orchestrator would; after worker.max_attempts runs the job ends `failed` /
#    `too_many_attempts`, is copied to the DLQ with its headers, and a job queued behind it
#    on the same partition still succeeds.
# C. A worker that dies after writing `succeeded` but before its result message (test hook
#    ZIMAGE_FAULT_CRASH_BEFORE_RESULT): the redelivered job is not computed again, but its
#    result message is sent by the next worker - one per job, `result_sent` in the hash.
# D. A job thread that hangs, deaf to aborts (test hook ZIMAGE_FAULT_HANG_PROMPT: as a call
#    into a GPU that stopped answering): the stall watchdog (worker.stall_timeout_s, 5 s
#    here) stops the worker with exit 1 without committing; the other worker runs the job
#    again (attempt 2) and it succeeds, with no failure recorded.
source "$(dirname "$0")/worker_lib.sh"
zt_init crash
ulimit -c 0 # abort() must not leave core files
ZT_STEPS=8 ZT_MAX_ATTEMPTS=2 ZT_RESULT_TOPIC=$ZT_RESULTS zt_config
HOOKS=(ZIMAGE_FAULT_STEP_DELAY_MS=300 ZIMAGE_FAULT_CRASH_PROMPT=boom
    ZIMAGE_FAULT_CRASH_BEFORE_RESULT=halfway ZIMAGE_FAULT_HANG_PROMPT=hangs
    ZIMAGE_WORKER_STALL_TIMEOUT_S=5)

# reap_dead: the first of w1, w2 that has exited (reaped, forgotten) in $DEAD, else "".
# Not in $(...): only this shell can wait for them.
reap_dead() {
    local w pid
    DEAD=
    for w in w1 w2; do
        pid=${ZT_PIDS[$w]:-}
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            unset "ZT_PIDS[$w]"
            DEAD=$w
            return
        fi
    done
}

zt_start_worker w1 "${HOOKS[@]}"
zt_start_worker w2 "${HOOKS[@]}"
zt_wait_log w1 'assigned' 30
zt_check "stall watchdog set (5 s) on the CPU" yes \
    "$(grep -q 'stall watchdog: a job with no finished step for 5 s' "$ZT_TMP/w1.log" && echo yes)"
zt_wait_log w2 'assigned' 40

# ---- A: kill -9 in the middle of a job ----
ids=(crash-a1 crash-a2 crash-a3 crash-a4)
for j in "${ids[@]}"; do zt_submit --job-id "$j" --prompt "slow $j" >/dev/null; done
victim_job=
for _ in $(seq 150); do
    for j in "${ids[@]}"; do
        if [[ $(zt_field "$j" status) == running && $(zt_field "$j" step) -ge 1 ]]; then
            victim_job=$j
            break 2
        fi
    done
    sleep 0.1
done
[[ -n $victim_job ]] || zt_die "no job started running"
victim=$(zt_field "$victim_job" worker)
echo "killing $victim in the middle of $victim_job (step $(zt_field "$victim_job" step) of 8)"
zt_kill "$victim" KILL
zt_wait_all_final 90 "${ids[@]}"
survivor=w1
[[ $victim == w1 ]] && survivor=w2
ok=0
for j in "${ids[@]}"; do [[ $(zt_field "$j" status) == succeeded ]] && ok=$((ok + 1)); done
zt_check "every job of the batch succeeded" 4 "$ok"
zt_check "the killed job was finished by the other worker" "$survivor" "$(zt_field "$victim_job" worker)"
zt_check "the killed job's attempts" 2 "$(zt_field "$victim_job" attempt)"
zt_check "running events of the killed job" 2 "$(zt_events | grep -c "^$victim_job running" || true)"
zt_check "succeeded events of the killed job" 1 "$(zt_events | grep -c "^$victim_job succeeded" || true)"
zt_check "objects: exactly one per job" \
    "$(printf "$ZT_KEYDIR/%s.png\n" "${ids[@]}" | sort)" "$(zt_s3_keys | sort)"

# ---- B: a job that kills every worker that runs it ----
zt_start_worker "$victim" "${HOOKS[@]}"
zt_submit --job-id boom-1 --prompt boom >/dev/null
# Same key -> same partition: this one waits behind boom-1.
restarts=0
for _ in $(seq 1200); do
    s=$(zt_field boom-1 status)
    [[ $s == failed || $s == succeeded ]] && break
    reap_dead
    if [[ -n $DEAD ]]; then
        echo "$DEAD crashed (boom-1 attempt $(zt_field boom-1 attempt)); restarting it"
        restarts=$((restarts + 1))
        zt_start_worker "$DEAD" "${HOOKS[@]}"
    fi
    sleep 0.1
done
zt_check "boom-1 status" failed "$(zt_field boom-1 status)"
zt_check "boom-1 error_code" too_many_attempts "$(zt_field boom-1 error_code)"
zt_check "workers crashed by boom-1 (= max_attempts)" 2 "$restarts"
zt_check "boom-1 attempt (the runs; the refused delivery is not one)" 2 "$(zt_field boom-1 attempt)"
zt_check "boom-1 failure event" "boom-1 failed too_many_attempts" \
    "$(zt_events | grep '^boom-1 failed' || true)"
# The DLQ copy is produced right after the failure is recorded: give it a moment.
for _ in $(seq 50); do
    dlq=$(zt_consume "$ZT_DLQ" '%k|%h|%s\n')
    [[ -n $dlq ]] && break
    sleep 0.2
done
zt_check "DLQ messages" 1 "$(grep -c . <<<"$dlq" || true)"
zt_check "DLQ key" boom-1 "$(cut -d'|' -f1 <<<"$dlq")"
zt_check "DLQ zimage-error-code header" yes \
    "$(grep -q 'zimage-error-code=too_many_attempts' <<<"$dlq" && echo yes)"
zt_check "DLQ zimage-attempts header" yes "$(grep -q 'zimage-attempts=2' <<<"$dlq" && echo yes)"
zt_check "DLQ zimage-source header" yes \
    "$(grep -qE "zimage-source=$ZT_TOPIC/[0-9]+/[0-9]+" <<<"$dlq" && echo yes)"
zt_check "DLQ value is the original job" yes \
    "$(grep -q '"prompt":"boom"' <<<"$dlq" && echo yes)"

# The partition is not blocked: a job after it (same partition via the same key) succeeds.
p=$(grep -oE "zimage-source=$ZT_TOPIC/[0-9]+" <<<"$dlq" | grep -oE '[0-9]+$')
kcat -b "$ZI_KAFKA_BOOTSTRAP" -P -t "$ZT_TOPIC" -p "$p" -k after-boom \
    <<<'{"job_id":"after-boom","prompt":"after the crash loop","steps":2}'
zt_wait_status after-boom succeeded 60
zt_check "job behind the crash loop" succeeded "$(zt_field after-boom status)"

# ---- C: killed between the `succeeded` record and the result message ----
zt_submit --job-id half-1 --prompt halfway >/dev/null
zt_wait_status half-1 succeeded 60
crashed=
for _ in $(seq 100); do
    reap_dead
    crashed=$DEAD
    [[ -n $crashed ]] && break
    sleep 0.1
done
zt_check "a worker died between succeeded and the result message" yes \
    "$([[ -n $crashed ]] && grep -q 'CRASH_BEFORE_RESULT matched' "$ZT_TMP/$crashed.log" && echo yes)"
zt_check "no result message yet" 0 \
    "$(zt_consume "$ZT_RESULTS" '%k\n' | grep -c '^half-1$' || true)"
zt_start_worker "$crashed" "${HOOKS[@]}"
res=
for _ in $(seq 300); do
    res=$(zt_consume "$ZT_RESULTS" '%k|%s\n' | grep '^half-1|' || true)
    [[ -n $res ]] && break
    sleep 0.2
done
zt_check "result messages of half-1 after the redelivery" 1 "$(grep -c . <<<"$res" || true)"
zt_check "its status and key" yes "$(grep -q '"status":"succeeded","s3_key":"'"$ZT_KEYDIR"'/half-1.png"' \
    <<<"$res" && echo yes)"
zt_check "its seed" "$(zt_field half-1 seed)" "$(sed -E 's/.*"seed":"([0-9]*)".*/\1/' <<<"$res")"
for _ in $(seq 50); do
    [[ $(zt_field half-1 result_sent) == 1 ]] && break
    sleep 0.1
done
zt_check "result_sent in the hash" 1 "$(zt_field half-1 result_sent)"
# whichever worker took the redelivery (the restarted one, or the other after a rebalance)
zt_check_ge "the redelivery found done: zimage_jobs_deduplicated_total" 1 \
    "$(($(zt_metric w1 zimage_jobs_deduplicated_total) + $(zt_metric w2 zimage_jobs_deduplicated_total)))"
zt_check "half-1 computed once (running events)" 1 \
    "$(zt_events | grep -c '^half-1 running' || true)"
# every job that succeeded has exactly one result message (A's killed job included); a
# failed job is run again when delivered again (only `succeeded` is done), so boom-1 may
# have been failed - and reported - more than once by the rebalances of the crash loop
for j in "${ids[@]}" after-boom; do
    zt_check "result messages of $j" 1 "$(zt_consume "$ZT_RESULTS" '%k\n' | grep -c "^$j\$" || true)"
done
zt_check "boom-1 reported failed too_many_attempts" yes \
    "$(zt_consume "$ZT_RESULTS" '%k|%s\n' | grep '^boom-1|' | grep -q '"error_code":"too_many_attempts"' && echo yes)"

# ---- D: a job thread that hangs ----
zt_submit --job-id hang-1 --prompt hangs >/dev/null
hung=$(zt_which_log 'ZIMAGE_FAULT_HANG_PROMPT matched' 30 w1 w2) || zt_die "no worker ran hang-1"
other=w1
[[ $hung == w1 ]] && other=w2
zt_wait_exit "$hung" 60 # 5 s without progress, then the 15 s a job gets to stop
zt_check "hang: the watchdog stops the worker (exit 1)" 1 "$ZT_RC"
zt_check "hang: the log says why" yes \
    "$(grep -q 'the pipeline made no progress for 5 s' "$ZT_TMP/$hung.log" && echo yes)"
zt_wait_status hang-1 succeeded 90
zt_check "hang: finished by the other worker" "$other" "$(zt_field hang-1 worker)"
zt_check "hang: as the second run" 2 "$(zt_field hang-1 attempt)"
zt_check "hang: no failure recorded" 0 "$(zt_events | grep -c '^hang-1 failed' || true)"
zt_finish
