#!/usr/bin/env bash
# test_worker_chaos.sh - three workers killed (-9), drained (SIGTERM) and restarted at random
# while a stream of jobs flows: no job is lost, none ends twice, every object is there once.
#
# The schedule comes from a seed (ZT_CHAOS_SEED, default: drawn and printed), so a failure
# can be replayed with the same sequence of actions (not the same timing). ZT_CHAOS_S sets
# how long the chaos lasts (default 40 s), ZT_CHAOS_JOBS how many jobs (default 24).
# After the chaos every worker is restarted, and then:
#   * every job `succeeded`, with exactly one `succeeded` event (a redelivered job is
#     recognised as done);
#   * the hash names the worker of that event; its attempt counts every run;
#   * one object per job and nothing else under the test's prefix; at least one result
#     message per job (at least once); nothing in the DLQ.
# Stopped workers (SIGSTOP) are test_worker_stall.sh's: stopping one at a random moment can
# catch it in the middle of a group join, and its resumed JoinGroup then aborts the dev
# broker (librdkafka 2.0.2's mock cluster asserts in rd_kafka_mock_cgrp_member_add), taking
# the shared stack down with it; a real broker answers it.
source "$(dirname "$0")/../integration/worker_lib.sh"
zt_init chaos
ZT_STEPS=4 ZT_MAX_ATTEMPTS=50 ZT_RESULT_TOPIC=$ZT_RESULTS ZT_DRAIN_S=20 zt_config
HOOKS=(ZIMAGE_FAULT_STEP_DELAY_MS=250)
SEED=${ZT_CHAOS_SEED:-$((RANDOM * 32768 + RANDOM))}
CHAOS_S=${ZT_CHAOS_S:-40}
NJOBS=${ZT_CHAOS_JOBS:-24}
echo "chaos seed $SEED (ZT_CHAOS_SEED=$SEED replays the schedule), $CHAOS_S s, $NJOBS jobs"
RANDOM=$SEED
WORKERS=(w1 w2 w3)

for w in "${WORKERS[@]}"; do zt_start_worker "$w" "${HOOKS[@]}"; done
for w in "${WORKERS[@]}"; do zt_wait_log "$w" 'consuming' 60; done

# A third of the jobs now, the rest one per round of the chaos (so that jobs are in flight
# during all of it), whatever is left after it.
ids=()
submit_next() {
    local i=${#ids[@]}
    ((i < NJOBS)) || return 0
    ids+=("chaos-$i")
    zt_submit --job-id "chaos-$i" --prompt "chaos job $i" >/dev/null
}
for ((i = 0; i < NJOBS / 3; i++)); do submit_next; done

# running: workers with a live process; reap: forget exited ones.
reap() {
    local w pid
    for w in "${WORKERS[@]}"; do
        pid=${ZT_PIDS[$w]:-}
        if [[ -n $pid ]] && ! kill -0 "$pid" 2>/dev/null; then
            wait "$pid" 2>/dev/null || true
            unset "ZT_PIDS[$w]"
            echo "  $w exited"
        fi
    done
}
running() {
    local w
    for w in "${WORKERS[@]}"; do
        [[ -n ${ZT_PIDS[$w]:-} ]] && echo "$w"
    done
    return 0
}

t0=$SECONDS
actions=0
while ((SECONDS - t0 < CHAOS_S)); do
    sleep "$((1 + RANDOM % 3)).$((RANDOM % 10))"
    submit_next
    reap
    mapfile -t live < <(running)
    for w in "${WORKERS[@]}"; do
        if [[ -z ${ZT_PIDS[$w]:-} ]] && ((RANDOM % 2 == 0)); then
            echo "  start $w"
            zt_start_worker "$w" "${HOOKS[@]}"
        fi
    done
    ((${#live[@]} >= 2)) || continue # always leave one worker running
    victim=${live[RANDOM % ${#live[@]}]}
    if ((RANDOM % 2 == 0)); then
        echo "  kill -9 $victim"
        zt_kill "$victim" KILL
    else
        echo "  term $victim"
        zt_kill "$victim" TERM
    fi
    actions=$((actions + 1))
done
echo "chaos over after $actions actions: every worker started"
while ((${#ids[@]} < NJOBS)); do submit_next; done
reap
for w in "${WORKERS[@]}"; do
    [[ -n ${ZT_PIDS[$w]:-} ]] || zt_start_worker "$w" "${HOOKS[@]}"
done
zt_wait_all_final 240 "${ids[@]}"
sleep 3 # anything a late run would still write

zt_events job_id status worker >"$ZT_TMP/events"
zt_consume "$ZT_RESULTS" '%k\n' >"$ZT_TMP/results"
ok=0 once=0 same_worker=0 attempts_ok=0 results_ok=0
for j in "${ids[@]}"; do
    [[ $(zt_field "$j" status) == succeeded ]] && ok=$((ok + 1))
    n=$(grep -c "^$j succeeded " "$ZT_TMP/events" || true)
    if ((n == 1)); then
        once=$((once + 1))
    else
        echo "  $j: $n succeeded events"
    fi
    runs=$(grep -c "^$j running " "$ZT_TMP/events" || true)
    a=$(zt_field "$j" attempt)
    # every run counted its attempt first; a worker killed or stalled between the count and
    # its `running` record counted one more than it ran
    if ((a >= 1 && a >= runs && a <= runs + actions)); then
        attempts_ok=$((attempts_ok + 1))
    else
        echo "  $j: attempt $a, $runs running events"
    fi
    by=$(grep "^$j succeeded " "$ZT_TMP/events" | tail -1 | cut -d' ' -f3)
    if [[ $by == "$(zt_field "$j" worker)" ]]; then
        same_worker=$((same_worker + 1))
    else
        echo "  $j: hash worker $(zt_field "$j" worker), succeeded event by $by"
    fi
    grep -qx "$j" "$ZT_TMP/results" && results_ok=$((results_ok + 1))
done
zt_check "jobs succeeded" "$NJOBS" "$ok"
zt_check "jobs with exactly one succeeded event" "$NJOBS" "$once"
zt_check "jobs whose hash names the worker of that event" "$NJOBS" "$same_worker"
zt_check "jobs whose attempt counts their runs" "$NJOBS" "$attempts_ok"
zt_check "jobs with a result message" "$NJOBS" "$results_ok"
zt_check "objects: exactly one per job" \
    "$(printf "$ZT_KEYDIR/%s.png\n" "${ids[@]}" | sort)" "$(zt_s3_keys | sort)"
zt_check "DLQ messages" 0 "$(zt_consume "$ZT_DLQ" '%k\n' | grep -c . || true)"
zt_check "no job failed" 0 "$(grep -c ' failed ' "$ZT_TMP/events" || true)"
zt_finish
