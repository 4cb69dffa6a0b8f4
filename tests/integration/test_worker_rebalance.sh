#!/usr/bin/env bash
# test_worker_rebalance.sh - partitions taken away from a worker while it has them paused
# deliver again when they come back.
#
# A worker pauses its partitions while a job runs and the next message is already buffered
# (docs/worker.md, "Pausing"). librdkafka keeps a partition's pause across its revocation
# and a later re-assignment, so a partition revoked while paused must be resumed
# explicitly when it is assigned again; otherwise it never delivers again while the worker
# lives, and its jobs stay `queued` (found by test_worker_chaos.sh).
#
# w1 alone holds every partition and runs a slow job with a second one buffered (paused);
# w2 joins and takes some partitions (revoked from w1 while paused); w1 finishes; w2 is
# stopped, so w1 gets them back. Then jobs for every partition must all succeed on w1.
source "$(dirname "$0")/worker_lib.sh"
zt_init rebalance
ZT_STEPS=2 ZT_DRAIN_S=5 zt_config

zt_start_worker w1 ZIMAGE_FAULT_STEP_DELAY_MS=1500
zt_wait_log w1 'assigned' 30
# Same key, same partition: the second waits in w1's buffer while the first runs.
zt_submit --job-id slow-1 --prompt "slow one" --steps 8 >/dev/null
zt_submit --job-id slow-1b --prompt "slow two" --steps 1 >/dev/null
zt_wait_step slow-1 1 30 || zt_die "slow-1 did not start"

zt_start_worker w2
zt_wait_log w1 'kafka: revoked' 40
zt_check "w1 had its partitions paused when they were revoked" yes \
    "$([[ $(zt_field slow-1 status) == running ]] && echo yes)"
zt_wait_log w2 'kafka: assigned' 20
zt_wait_all_final 60 slow-1 slow-1b

zt_term_timed w2 30
zt_check "w2 drained" 0 "$ZT_RC"
# w1 is handed the partitions back (one rebalance of the dev broker: session.timeout - 1 s).
assigned() { grep -c 'kafka: assigned' "$ZT_TMP/w1.log" || true; }
before=$(assigned)
for _ in $(seq 200); do
    (($(assigned) > before)) && break
    sleep 0.1
done
zt_check "w1 got partitions back" yes "$( (($(assigned) > before)) && echo yes)"

# One job straight into each partition of the topic.
nparts=$(kcat -b "$ZI_KAFKA_BOOTSTRAP" -L -t "$ZT_TOPIC" | grep -c 'partition [0-9]*,' || true)
((nparts >= 2)) || zt_die "topic $ZT_TOPIC: $nparts partitions"
ids=()
for ((p = 0; p < nparts; p++)); do
    ids+=("back-$p")
    kcat -b "$ZI_KAFKA_BOOTSTRAP" -P -t "$ZT_TOPIC" -p "$p" -k "back-$p" \
        <<<"{\"job_id\":\"back-$p\",\"prompt\":\"after the rebalance\",\"steps\":1}"
done
zt_wait_all_final 60 "${ids[@]}"
ok=0
for j in "${ids[@]}"; do [[ $(zt_field "$j" status) == succeeded ]] && ok=$((ok + 1)); done
zt_check "a job in each of the $nparts partitions succeeded after they came back" "$nparts" "$ok"

# Phase B: partitions assigned while the worker has its partitions paused. Both workers
# busy with a slow job and a second one buffered in every partition; w3 is killed, so w1
# is handed w3's partitions in the middle of its job: they must deliver (a partition paused
# before its first fetch position is known never fetches in librdkafka 2.0.2).
zt_start_worker w3 ZIMAGE_FAULT_STEP_DELAY_MS=1500
zt_wait_log w3 'kafka: assigned' 40
ids=()
for ((p = 0; p < nparts; p++)); do
    for k in slow fast; do
        ids+=("b-$k-$p")
        steps=1
        [[ $k == slow ]] && steps=8
        kcat -b "$ZI_KAFKA_BOOTSTRAP" -P -t "$ZT_TOPIC" -p "$p" -k "b-$k-$p" \
            <<<"{\"job_id\":\"b-$k-$p\",\"prompt\":\"phase b\",\"steps\":$steps}"
    done
done
busy=0
for _ in $(seq 100); do
    busy=0
    for w in w1 w3; do
        [[ $(zt_redis HGET "${ZT_PREFIX}worker:$w" state) == busy ]] && busy=$((busy + 1))
    done
    ((busy == 2)) && break
    sleep 0.1
done
zt_check "both workers busy when w3 leaves" 2 "$busy"
zt_kill w3 KILL
zt_wait_all_final 120 "${ids[@]}"
ok=0
for j in "${ids[@]}"; do [[ $(zt_field "$j" status) == succeeded ]] && ok=$((ok + 1)); done
zt_check "jobs of partitions handed over mid-job succeeded" "${#ids[@]}" "$ok"
zt_finish
