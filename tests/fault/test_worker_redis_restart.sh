#!/usr/bin/env bash
# test_worker_redis_restart.sh - Redis stopped for 3 s in the middle of a batch and started
# again EMPTY (stops the shared stack's Redis; run-all.sh runs fault tests one at a time).
#
# Checks: no job lost - every job's image is in the bucket (exactly one object each) and
# every job hash that exists at the end says `succeeded` (hashes written before the wipe
# are gone with it; jobs that finished during the outage kept their final state in memory
# and wrote it once Redis was back); none computed twice - each job has exactly one
# "job running" log line over both workers; the workers re-register their heartbeat.
source "$(dirname "$0")/../integration/worker_lib.sh"
zt_init redisrestart
ZT_STEPS=4 zt_config
STACK=$ZT_REPO/deploy/local/stack.sh
redis_down=0
restore_redis() { ((redis_down == 0)) || "$STACK" start-redis; }
zt_on_exit restore_redis
N=12

zt_start_worker w1 ZIMAGE_FAULT_STEP_DELAY_MS=250
zt_start_worker w2 ZIMAGE_FAULT_STEP_DELAY_MS=250
zt_wait_log w1 'assigned' 30
zt_wait_log w2 'assigned' 40

ids=()
for i in $(seq 1 $N); do
    ids+=("rr-$i")
    zt_submit --job-id "rr-$i" --prompt "redis restart $i" --seed "$i" >/dev/null
done
# Wait for a few jobs to finish, then pull Redis away while others run.
for _ in $(seq 600); do
    done_n=0
    for j in "${ids[@]}"; do [[ $(zt_field "$j" status) == succeeded ]] && done_n=$((done_n + 1)); done
    ((done_n >= 3)) && break
    sleep 0.1
done
zt_check_ge "jobs done before the restart" 3 "$done_n"
# A marker written before the stop tells whether Redis came back empty: the workers write
# again as soon as it is up, so the key count alone would race with them.
marker="${ZT_PREFIX}wipe-marker"
zt_redis SET "$marker" 1 >/dev/null
zt_check "marker written before the stop" 1 "$(zt_redis EXISTS "$marker")"
redis_down=1
"$STACK" stop-redis
sleep 3
"$STACK" start-redis
redis_down=0
zt_check "Redis came back empty (marker gone)" 0 "$(zt_redis EXISTS "$marker")"

# Every job ends with its object; wait for the last one.
for _ in $(seq 900); do
    (($(zt_s3_keys | grep -c .) >= N)) && break
    sleep 0.2
done
sleep 1 # the final state is written right after the upload
zt_check "one object per job" "$(printf "$ZT_KEYDIR/rr-%s.png\n" $(seq 1 $N) | sort)" "$(zt_s3_keys | sort)"
wrong=0 present=0
for j in "${ids[@]}"; do
    s=$(zt_field "$j" status)
    [[ -n $s ]] && present=$((present + 1))
    [[ -z $s || $s == succeeded ]] || wrong=$((wrong + 1))
done
zt_check "hashes after the restart that are not succeeded" 0 "$wrong"
zt_check_ge "jobs recorded succeeded after the restart" 1 "$present"
runs=$(cat "$ZT_TMP"/w1.log "$ZT_TMP"/w2.log | grep -oE 'job_id=rr-[0-9]+ job running' |
    sort | uniq -c | awk '{print $1}' | sort -u | tr '\n' ' ')
zt_check "runs per job (each exactly once)" "1 " "$runs"
zt_check "jobs run" $N "$(cat "$ZT_TMP"/w1.log "$ZT_TMP"/w2.log | grep -c 'job running' || true)"
zt_check_ge "Redis writes retried while it was down (final states kept meanwhile)" 1 \
    "$(cat "$ZT_TMP"/w1.log "$ZT_TMP"/w2.log | grep -c 'redis: .* failed' || true)"
for _ in $(seq 50); do
    (($(zt_redis ZCARD "${ZT_PREFIX}workers") == 2)) && break
    sleep 0.1
done
zt_check "workers re-registered" 2 "$(zt_redis ZCARD "${ZT_PREFIX}workers")"
zt_kill w1 TERM
zt_kill w2 TERM
zt_wait_exit w1 30
zt_check "w1 exit status" 0 "$ZT_RC"
zt_wait_exit w2 30
zt_check "w2 exit status" 0 "$ZT_RC"
zt_finish
