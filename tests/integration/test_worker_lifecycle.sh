#!/usr/bin/env bash
# test_worker_lifecycle.sh - cancellation and the SIGTERM drain.
#
# 1. `zimage:cancel:{id}` set while the job runs: it stops at the next step boundary,
#    status `cancelled`, no object uploaded, a `cancelled` event.
# 2. SIGTERM while a job runs: /readyz turns 503, the job still finishes (`succeeded`), the
#    worker exits 0, and its offset was committed: a new worker of the group does not get
#    the job again.
# 3. SIGTERM with a drain_timeout_s shorter than the job: the job is stopped WITHOUT a final
#    state and without committing, the worker still exits 0 at once, and the next worker
#    runs the job again (attempt 2) to `succeeded`.
# 4. A job picked up before its deadline_ms and stopped by a drain still runs when it is
#    delivered again after the deadline (expired is for a job first picked up late).
# 5. Another worker takes the running job's lease: the run stops without a final state, the
#    worker exits 1 without committing, the next worker runs the job.
# 6. SIGTERM while a job still waits for its lease (before its run): the worker leaves it at
#    once (exit 0, no wait for drain_timeout_s), uncommitted; the next worker runs it once.
# Jobs are slowed down with the test hook ZIMAGE_FAULT_STEP_DELAY_MS.
source "$(dirname "$0")/worker_lib.sh"
zt_init lifecycle
ZT_STEPS=8 zt_config
SLOW=(ZIMAGE_FAULT_STEP_DELAY_MS=400)

wait_step() { # JOB MIN_STEP TIMEOUT_S
    zt_wait_step "$@" || zt_die "$1 did not reach step $2 within $3 s"
}

zt_start_worker w1 "${SLOW[@]}"
zt_wait_log w1 'assigned' 30
zt_check "w1 /readyz while consuming" 200 "$(zt_readyz w1)"

# ---- 1. cancellation ----
zt_submit --job-id cancel-1 --prompt "to be cancelled" >/dev/null
wait_step cancel-1 1 30
zt_redis SET "${ZT_PREFIX}cancel:cancel-1" 1 >/dev/null
zt_wait_status cancel-1 cancelled 10
zt_check_ge "cancel-1 stopped before the last step (steps left)" 1 "$((8 - $(zt_field cancel-1 step)))"
zt_check "cancel-1 event" "cancel-1 cancelled -" "$(zt_events | grep '^cancel-1 cancelled' || true)"
zt_check "no object for cancel-1" "" "$(zt_s3_keys | grep cancel-1 || true)"

# ---- 2. SIGTERM during a job: it finishes, exit 0, offset committed ----
zt_submit --job-id drain-1 --prompt "finish me" >/dev/null
wait_step drain-1 2 30
zt_kill w1 TERM
sleep 0.3
zt_check "w1 /readyz while draining" 503 "$(zt_readyz w1)"
zt_wait_exit w1 60
zt_check "w1 exit status" 0 "$ZT_RC"
zt_check "drain-1 finished during the drain" succeeded "$(zt_field drain-1 status)"
zt_check "w1 committed before leaving" yes "$(grep -q 'left the consumer group' "$ZT_TMP/w1.log" && echo yes)"

zt_start_worker w2 "${SLOW[@]}" ZIMAGE_WORKER_DRAIN_TIMEOUT_S=1
zt_wait_log w2 'assigned' 30
zt_submit --job-id probe-1 --prompt "probe" --steps 1 >/dev/null
zt_wait_status probe-1 succeeded 30
zt_check "drain-1 not delivered again" "" "$(grep 'drain-1' "$ZT_TMP/w2.log" || true)"
zt_check "drain-1 attempts" 1 "$(zt_field drain-1 attempt)"

# ---- 3. drain deadline shorter than the job: stopped, not committed, redone ----
zt_submit --job-id slow-1 --prompt "too slow for the drain" >/dev/null
wait_step slow-1 1 30
zt_term_timed w2 30
zt_check "w2 exit status" 0 "$ZT_RC"
zt_check_ge "w2 stopped within 5 s (drain_timeout_s 1)" 0 "$((5000 - ZT_MS))"
zt_check "slow-1 has no final state" running "$(zt_field slow-1 status)"
zt_check "slow-1 stopped, not committed" yes \
    "$(grep -q 'stopped by the drain deadline' "$ZT_TMP/w2.log" && echo yes)"

zt_start_worker w3
zt_wait_status slow-1 succeeded 60
zt_check "slow-1 run again by w3" w3 "$(zt_field slow-1 worker)"
zt_check "slow-1 attempts" 2 "$(zt_field slow-1 attempt)"
zt_check "objects" "$(printf "$ZT_KEYDIR/%s.png\n" drain-1 probe-1 slow-1)" "$(zt_s3_keys | sort)"
zt_kill w3 TERM
zt_wait_exit w3 30
zt_check "w3 exit status" 0 "$ZT_RC"

# ---- 4. deadline_ms applies to the first pick-up only ----
zt_start_worker w4 "${SLOW[@]}" ZIMAGE_WORKER_DRAIN_TIMEOUT_S=1
zt_wait_log w4 'assigned' 30
dl=$(($(date +%s%3N) + 2500))
zt_submit --job-id dl-1 --prompt "picked up in time" --deadline-ms "$dl" >/dev/null
wait_step dl-1 1 30
zt_kill w4 TERM
zt_wait_exit w4 30
zt_check "w4 exit status" 0 "$ZT_RC"
zt_check "dl-1 stopped by the drain, no final state" running "$(zt_field dl-1 status)"
while (($(date +%s%3N) <= dl)); do sleep 0.1; done
zt_start_worker w5
zt_wait_status dl-1 succeeded 60
zt_check "dl-1 redelivered after its deadline still runs (attempt 2)" 2 "$(zt_field dl-1 attempt)"
zt_kill w5 TERM
zt_wait_exit w5 30
zt_check "w5 exit status" 0 "$ZT_RC"

# ---- 5. the running job's lease taken by another worker: this run stops ----
# (one job never runs twice at once; the worker exits 1, since its partition is still its
# own and the job has no final state, and the job is delivered again)
zt_start_worker w6 "${SLOW[@]}"
zt_wait_log w6 'assigned' 30
zt_submit --job-id lease-1 --prompt "lease taken" >/dev/null
wait_step lease-1 1 30
zt_redis SET "${ZT_PREFIX}lease:lease-1" intruder PX 60000 >/dev/null
zt_wait_exit w6 30
zt_check "w6 stops when its job's lease is taken (exit 1)" 1 "$ZT_RC"
zt_check "w6 names the holder" yes "$(zt_has "$ZT_TMP/w6.log" 'lease of lease-1 is held by intruder')"
zt_check "lease-1 has no final state" running "$(zt_field lease-1 status)"
zt_redis DEL "${ZT_PREFIX}lease:lease-1" >/dev/null
zt_start_worker w7
zt_wait_status lease-1 succeeded 60
zt_check "lease-1 run again by w7" w7 "$(zt_field lease-1 worker)"
zt_check "objects after 4 and 5" "$(printf "$ZT_KEYDIR/%s.png\n" dl-1 drain-1 lease-1 probe-1 slow-1)" \
    "$(zt_s3_keys | sort)"
zt_kill w7 TERM
zt_wait_exit w7 30
zt_check "w7 exit status" 0 "$ZT_RC"

# ---- 6. the drain begins while a job waits for its lease: it is left at once ----
# (its run has not started: no final state, not committed, delivered again; the worker does
# not wait out drain_timeout_s, 120 s here)
zt_redis SET "${ZT_PREFIX}lease:wait-1" elsewhere PX 120000 >/dev/null
zt_start_worker w8
zt_wait_log w8 'assigned' 30
zt_submit --job-id wait-1 --prompt "waits for its lease" >/dev/null
zt_wait_log w8 'job is running on worker elsewhere: waiting for its lease' 30
zt_term_timed w8 30
zt_check "w8 exit status" 0 "$ZT_RC"
zt_check_ge "w8 left within 5 s" 0 "$((5000 - ZT_MS))"
zt_check "w8 left the job before its run" yes \
    "$(zt_has "$ZT_TMP/w8.log" 'draining before the run: the job is left to be delivered again')"
zt_check "wait-1 not run" "queued 0" "$(zt_field wait-1 status) $(zt_field wait-1 attempt)"
zt_redis DEL "${ZT_PREFIX}lease:wait-1" >/dev/null
zt_start_worker w9
zt_wait_status wait-1 succeeded 60
zt_check "wait-1 run once, by w9" "w9 1" "$(zt_field wait-1 worker) $(zt_field wait-1 attempt)"
zt_kill w9 TERM
zt_wait_exit w9 30
zt_check "w9 exit status" 0 "$ZT_RC"
zt_finish
