#!/usr/bin/env bash
# test_worker_e2e.sh - 50 jobs through 2 workers, end to end on the real stack:
# `zimage submit` -> Kafka -> 2 CPU workers (tiny model, 64x64) -> Ceph RGW -> Redis.
# Checks: 50 `succeeded` hashes with every contract field, both workers took jobs, exactly
# one object per job in the bucket (50 under the test's prefix), each a valid 64x64 PNG
# with its x-amz-meta-job-id, fetched through the presigned URL of `zimage status`; the
# events stream has queued/running/succeeded per job; the result topic has one message
# per job; /metrics counts the jobs (and the 50 prompts encoded, none found in the
# prompt-embedding cache); both workers drain and exit 0 on SIGTERM; the worker
# logs the memory plan of the largest job its limits admit.
source "$(dirname "$0")/worker_lib.sh"
zt_init e2e
ZT_RESULT_TOPIC=$ZT_RESULTS zt_config
N=50

zt_start_worker w1
zt_start_worker w2
zt_wait_log w1 'assigned' 30
zt_wait_log w2 'assigned' 40
# the memory plan of the largest job the default limits admit (max_side 4096, max_pixels
# 4194304: 4194304 pixels, the widest or the squarest shape), logged before the load
grep -Eq 'memory plan: the largest job \((4096x1024|2048x2048), generation.max_side/max_pixels, with CFG\) needs [0-9.]+ GiB of activations \([0-9.]+ GiB mapped\)' \
    "$ZT_TMP/w1.log" || zt_die "w1 logged no memory plan of the largest job: $(grep -m1 'memory plan' "$ZT_TMP/w1.log")"

# Submit in 5 parallel streams (each submit is a short-lived producer).
ids=()
for i in $(seq 1 $N); do ids+=("e2e-$i"); done
subs=()
for s in 0 1 2 3 4; do
    (for ((i = s; i < N; i += 5)); do
        zt_submit --job-id "${ids[i]}" --prompt "prompt number $i" --seed "$((i + 1))" >/dev/null
    done) &
    subs+=($!)
done
for p in "${subs[@]}"; do
    wait "$p" || zt_die "zimage submit failed"
done
zt_wait_all_final 240 "${ids[@]}"

succeeded=0 complete=0 by_w1=0 by_w2=0
for j in "${ids[@]}"; do
    [[ $(zt_field "$j" status) == succeeded ]] && succeeded=$((succeeded + 1))
    n=0
    for f in status worker attempt step steps progress queued_at started_at finished_at \
        duration_ms seed width height model version s3_key url; do
        [[ -n $(zt_field "$j" "$f") ]] && n=$((n + 1))
    done
    ((n == 17)) && complete=$((complete + 1))
    case $(zt_field "$j" worker) in
    w1) by_w1=$((by_w1 + 1)) ;;
    w2) by_w2=$((by_w2 + 1)) ;;
    esac
done
zt_check "succeeded hashes" $N "$succeeded"
zt_check "hashes with every contract field" $N "$complete"
zt_check "jobs done by w1 or w2" $N "$((by_w1 + by_w2))"
zt_check_ge "jobs done by w1" 1 "$by_w1"
zt_check_ge "jobs done by w2" 1 "$by_w2"
zt_check "job e2e-7 seed" 7 "$(zt_field e2e-7 seed)"
zt_check "job e2e-7 size" 64x64 "$(zt_field e2e-7 width)x$(zt_field e2e-7 height)"
zt_check "job e2e-7 key" "$ZT_KEYDIR/e2e-7.png" "$(zt_field e2e-7 s3_key)"
zt_check "job e2e-7 model" tiny-zimage "$(zt_field e2e-7 model)"

keys=$(zt_s3_keys | sort)
zt_check "objects under the prefix" $N "$(grep -c . <<<"$keys")"
zt_check "one object per job" "$(printf '%s\n' "${ids[@]}" | sed "s|^|$ZT_KEYDIR/|; s|\$|.png|" | sort)" "$keys"

valid=0 meta=0
for j in "${ids[@]}"; do
    url=$(zt_url "$j")
    curl -sf --max-time 10 -D "$ZT_TMP/h" -o "$ZT_TMP/img.png" "$url" || continue
    [[ $(zt_png_size "$ZT_TMP/img.png") == 64x64 ]] && valid=$((valid + 1))
    grep -qi "^x-amz-meta-job-id: $j"$'\r' "$ZT_TMP/h" && meta=$((meta + 1))
done
zt_check "valid 64x64 PNGs through presigned URLs" $N "$valid"
zt_check "objects with their x-amz-meta-job-id" $N "$meta"

events=$(zt_events | awk '{print $2}' | sort | uniq -c | awk '{print $2"="$1}' | tr '\n' ' ')
zt_check "events per status" "queued=$N running=$N succeeded=$N " "$events"

results=$(zt_consume "$ZT_RESULTS" '%s\n' | grep -c '"status":"succeeded"' || true)
zt_check "result messages" $N "$results"

m1=$(zt_metric w1 'zimage_jobs_total{outcome="succeeded"}')
m2=$(zt_metric w2 'zimage_jobs_total{outcome="succeeded"}')
zt_check "zimage_jobs_total{succeeded} over both workers" $N "$((m1 + m2))"
# 50 different prompts: each encoded once, none found in the prompt-embedding cache
c1=$(zt_metric w1 'zimage_caption_cache_total{result="miss"}')
c2=$(zt_metric w2 'zimage_caption_cache_total{result="miss"}')
zt_check "zimage_caption_cache_total{miss} over both workers" $N "$((c1 + c2))"
h1=$(zt_metric w1 'zimage_caption_cache_total{result="hit"}')
h2=$(zt_metric w2 'zimage_caption_cache_total{result="hit"}')
zt_check "zimage_caption_cache_total{hit} over both workers" 0 "$((h1 + h2))"
# the start time (ZimageWorkerRestarts counts its changes): within this test's run
st=$(zt_metric w1 zimage_worker_start_time_seconds)
zt_check "zimage_worker_start_time_seconds is w1's start" yes \
    "$(awk -v s="$st" -v t0="$ZT_T0" -v now="$(date +%s)" \
        'BEGIN { print (s >= int(t0 / 1000) - 1 && s <= now) ? "yes" : "no" }')"

zt_kill w1 TERM
zt_kill w2 TERM
zt_wait_exit w1 30
zt_check "w1 exit status after SIGTERM" 0 "$ZT_RC"
zt_wait_exit w2 30
zt_check "w2 exit status after SIGTERM" 0 "$ZT_RC"
zt_check "nothing in the DLQ" 0 "$(zt_consume "$ZT_DLQ" '%o\n' | grep -c . || true)"
zt_finish
