#!/usr/bin/env bash
# test_worker_rebalance.sh - partitions taken away from a worker while it has them paused
# deliver again when they come back.
#
# A worker pauses its partitions while a job runs and the next message is already buffered
# (docs/worker.md, "Pausing"). Two behaviours of librdkafka 2.0.2 made partitions stop
# delivering for good while the worker lived (jobs left `queued`; found by
# test_worker_chaos.sh): a partition keeps its pause across its revocation into its next
# assignment, and a partition paused before its fetch position is known loses it.
#
# Phase A: w1 alone holds every partition, runs a slow job and has one buffered from each
# other partition (all paused); w2 joins and takes some (revoked from w1 while paused); w2
# leaves, so w1 gets them back: a job in each partition must then succeed.
# Phase B (below): partitions handed to w1 in the middle of a job.
source "$(dirname "$0")/worker_lib.sh"
zt_init rebalance
ZT_STEPS=2 ZT_DRAIN_S=5 zt_config

# produce JOB STEPS PARTITION: a job message straight into one partition.
produce() {
    kcat -b "$ZI_KAFKA_BOOTSTRAP" -P -t "$ZT_TOPIC" -p "$3" -k "$1" \
        <<<"{\"job_id\":\"$1\",\"prompt\":\"rebalance $1\",\"steps\":$2}"
}

zt_start_worker w1 ZIMAGE_FAULT_STEP_DELAY_MS=1500
zt_wait_log w1 'assigned' 30
nparts=$(kcat -b "$ZI_KAFKA_BOOTSTRAP" -L -t "$ZT_TOPIC" | grep -c 'partition [0-9]*,' || true)
((nparts >= 2)) || zt_die "topic $ZT_TOPIC: $nparts partitions"
# A slow job in every partition: w1 runs one, the others wait in its buffer, so every
# partition has delivered and is paused.
ids=()
for ((p = 0; p < nparts; p++)); do
    ids+=("a-$p")
    produce "a-$p" 10 "$p"
done
running=
for _ in $(seq 300); do
    for j in "${ids[@]}"; do [[ $(zt_field "$j" status) == running ]] && running=$j; done
    [[ -n $running ]] && break
    sleep 0.1
done
[[ -n $running ]] || zt_die "no job started"
zt_start_worker w2
zt_wait_log w1 'kafka: revoked' 40
zt_check "w1 was in its first job (all partitions delivered, paused) at the revoke" running \
    "$(zt_field "$running" status)"
zt_wait_log w2 'kafka: assigned' 20
zt_wait_all_final 120 "${ids[@]}"

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
ids=()
for ((p = 0; p < nparts; p++)); do
    ids+=("back-$p")
    produce "back-$p" 1 "$p"
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
    produce "b-slow-$p" 8 "$p"
    produce "b-fast-$p" 1 "$p"
    ids+=("b-slow-$p" "b-fast-$p")
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
