#!/usr/bin/env bash
# test_worker_cuda.sh - the worker on the CUDA backend against the local stack (label
# gpu-stack). In CI it runs in build-emu/, on the CPU emulator of CUDA (tests/cudaemu/);
# on a GPU machine with the stack up it runs on the real device the same way.
#
# 1. A job through the CUDA backend: succeeded, a 64x64 PNG in the bucket.
# 2. GPU telemetry (the contract's worker hash and /metrics): backend cuda, the device's
#    name, vram_total_bytes / vram_free_bytes from cudaMemGetInfo, the allocator's
#    reserved >= allocated > 0 and peak >= allocated, the same figures in
#    zimage_gpu_memory_bytes{kind=...}.
# 3. Out of device memory (a mapping cap, ZI_CUDA_MEM_LIMIT_MB, that fits the weights and a
#    64x64 job but not a 256x256 one): the big job fails with error_code oom and goes to the
#    DLQ, the worker keeps running, and the next small job succeeds.
# 4. device.weight_budget_mb = 0 (every weight in host memory, copied in per op, the large
#    ones prefetched) and a page-lock limit of 2 MiB (device.pin_limit_mb: the rest is read
#    from the mapped checkpoint files): the load log and zimage_weight_bytes say both,
#    zimage_weight_prefetch_total counts hits, and the same job gives the same PNG bytes.
# 5. A bad device.weight_budget_mb: start-up stops with exit 2, naming the key.
# 6. The GPU fails mid-job (ZIMAGE_FAULT_DEVICE_PROMPT: a kernel writes to an illegal
#    address - on a GPU a real fault, on the emulator its emulated form): the worker stops
#    with exit 1 and records no final state; the job, not committed, is delivered again and
#    another worker finishes it (attempt 2); it is not in the DLQ.
# 7. `worker --check` on the device: the device line names it and finds every weight
#    resident beside the largest job; under a 1 MiB weight budget it says how much stays in
#    host memory; on the emulator, a 600 MiB card is too small for the largest job (FAIL).
source "$(dirname "$0")/../integration/worker_lib.sh"
zt_init worker_cuda
ZT_STEPS=2 zt_config
# the cap plays a small device for the oom case; the weights stay resident (no budget)
CUDA=(ZIMAGE_DEVICE_BACKEND=cuda ZI_CUDA_MEM_LIMIT_MB=136 ZI_CUDA_WEIGHT_BUDGET_MB=resident)

zt_start_worker w1 "${CUDA[@]}"
zt_wait_log w1 'assigned' 60

# ---- 1. a job on the CUDA backend ----
zt_submit --job-id cu-1 --prompt "a lighthouse at dusk" >/dev/null
zt_wait_status cu-1 succeeded 120
curl -s -o "$ZT_TMP/cu-1.png" --max-time 10 "$(zt_url cu-1)"
zt_check "cu-1 image" 64x64 "$(zt_png_size "$ZT_TMP/cu-1.png")"

zt_check "load log says where the weights are" yes \
    "$(grep -qE 'weights: [0-9.]+ GiB on the device, 0\.00 GiB kept in host memory' \
        "$ZT_TMP/w1.log" && echo yes)"
zt_check "stall watchdog on by default on the CUDA backend (600 s)" yes \
    "$(grep -q 'stall watchdog: a job with no finished step for 600 s' "$ZT_TMP/w1.log" && echo yes)"

# ---- 2. telemetry ----
sleep 1.5 # one heartbeat (heartbeat_s 1) after the job
h() { zt_redis HGET "${ZT_PREFIX}worker:w1" "$1"; }
zt_check "backend" cuda "$(h backend)"
gpu=$(h gpu_name)
zt_check "gpu_name is the device's" yes "$([[ -n $gpu && $gpu != cpu ]] && echo yes)"
total=$(h vram_total_bytes) free=$(h vram_free_bytes)
res=$(h alloc_reserved_bytes) alloc=$(h alloc_allocated_bytes) peak=$(h alloc_peak_bytes)
echo "telemetry: gpu '$gpu' total $total free $free reserved $res allocated $alloc peak $peak"
zt_check_ge "vram_total_bytes" 1 "$total"
zt_check_ge "vram_free_bytes <= total" 0 "$((total - free))"
zt_check_ge "alloc_allocated_bytes (weights at least)" 1 "$alloc"
zt_check_ge "reserved >= allocated" 0 "$((res - alloc))"
zt_check_ge "peak >= allocated" 0 "$((peak - alloc))"
zt_check_ge "reserved within the 136 MiB cap" 0 "$((136 * 1048576 - res))"
zt_check "metric total" "$total" "$(zt_metric w1 'zimage_gpu_memory_bytes{kind="total"}')"
zt_check "metric reserved" "$res" "$(zt_metric w1 'zimage_gpu_memory_bytes{kind="reserved"}')"
zt_check_ge "metric: weights on the device" 1 "$(zt_metric w1 'zimage_weight_bytes{where="device"}')"
zt_check "metric: no weight in host memory" "0 0 0" \
    "$(for k in pinned mapped pageable; do zt_metric w1 "zimage_weight_bytes{where=\"$k\"}"; done | xargs)"
zt_check "metric: nothing prefetched (all resident)" 0 \
    "$(zt_metric w1 'zimage_weight_prefetch_total{result="miss"}')"

# ---- 3. out of device memory ----
zt_submit --job-id cu-big --prompt "too big for the cap" --width 256 --height 256 >/dev/null
zt_wait_status cu-big failed 180
zt_check "cu-big error_code" oom "$(zt_field cu-big error_code)"
zt_check "cu-big error names device memory" yes \
    "$(grep -q 'out of device memory' <<<"$(zt_field cu-big error)" && echo yes)"
in_dlq=no # the copy may land just after the final status
for _ in $(seq 1 50); do
    zt_consume "$ZT_DLQ" '%k\n' | grep -qx cu-big && in_dlq=yes && break
    sleep 0.2
done
zt_check "cu-big in the DLQ" yes "$in_dlq"
zt_submit --job-id cu-2 --prompt "small again" --seed 7 >/dev/null
zt_wait_status cu-2 succeeded 120
zt_check "worker still running after oom" yes "$(kill -0 "${ZT_PIDS[w1]}" 2>/dev/null && echo yes)"
zt_check "objects" "$(printf "$ZT_KEYDIR/%s.png\n" cu-1 cu-2)" "$(zt_s3_keys | sort)"

zt_kill w1 TERM
zt_wait_exit w1 60
zt_check "exit status after SIGTERM" 0 "$ZT_RC"

# ---- 4. a weight budget from the configuration: every weight in host memory ----
# device.weight_budget_mb (here through its variable) wins over ZI_CUDA_WEIGHT_BUDGET_MB;
# the weights are copied in as the ops need them, most of them straight from the mapped
# checkpoint (past the 2 MiB page-lock limit), and the image is the same bytes. The tiny
# model's weights from 4 KiB up go through the prefetch slots on the copy stream, and on
# the emulator the other streams run ahead (ZI_EMU_ORDER=ahead; ignored on a GPU), so a
# slot refilled before the job thread's ops that read it ran would change the image.
zt_start_worker w2 ZIMAGE_DEVICE_BACKEND=cuda ZI_CUDA_WEIGHT_BUDGET_MB=resident \
    ZIMAGE_DEVICE_WEIGHT_BUDGET_MB=0 ZIMAGE_DEVICE_PIN_LIMIT_MB=2 ZI_CUDA_PREFETCH_MIN_KB=4 \
    ZI_EMU_ORDER=ahead
zt_wait_log w2 'assigned' 60
zt_check "budget 0: no weight on the device" yes \
    "$(grep -qE 'weights: 0\.00 GiB on the device, 0\.0[0-9]* GiB kept in host memory \(budget 0\.00 GiB' \
        "$ZT_TMP/w2.log" && echo yes)"
zt_check "budget 0, pin limit 2 MiB: the page-locked part and its limit logged" yes \
    "$(grep -qE 'weights: 0\.00[0-9]* GiB of those page-locked \(limit 0\.00 GiB' \
        "$ZT_TMP/w2.log" && echo yes)"
zt_check "budget 0, pin limit 2 MiB: weights read from the mapped checkpoint" yes \
    "$(grep -qE 'weights: 0\.0[0-9]* GiB of those read from the mapped checkpoint files' \
        "$ZT_TMP/w2.log" && echo yes)"
zt_submit --job-id cu-3 --prompt "small again" --seed 7 >/dev/null
zt_wait_status cu-3 succeeded 120
curl -s -o "$ZT_TMP/cu-2.png" --max-time 10 "$(zt_url cu-2)"
curl -s -o "$ZT_TMP/cu-3.png" --max-time 10 "$(zt_url cu-3)"
zt_check "same image with the weights in host memory" yes \
    "$(cmp -s "$ZT_TMP/cu-2.png" "$ZT_TMP/cu-3.png" && echo yes)"
zt_check "metric: no weight on the device" 0 "$(zt_metric w2 'zimage_weight_bytes{where="device"}')"
zt_check_ge "metric: weights read from the mapped checkpoint" 1 \
    "$(zt_metric w2 'zimage_weight_bytes{where="mapped"}')"
zt_check_ge "metric: weights found prefetched" 1 "$(zt_metric w2 'zimage_weight_prefetch_total{result="hit"}')"
zt_kill w2 TERM
zt_wait_exit w2 60
zt_check "w2 exit status after SIGTERM" 0 "$ZT_RC"

# ---- 5. a bad budget stops start-up with exit 2, naming the key ----
zt_start_worker w3 ZIMAGE_DEVICE_BACKEND=cuda ZIMAGE_DEVICE_WEIGHT_BUDGET_MB=lots
zt_wait_exit w3 30
zt_check "bad budget: exit status" 2 "$ZT_RC"
zt_check "bad budget: names the key" yes \
    "$(grep -q 'device.weight_budget_mb' "$ZT_TMP/w3.log" && echo yes)"

# ---- 6. the GPU fails in the middle of a job ----
zt_start_worker w4 "${CUDA[@]}" ZIMAGE_FAULT_DEVICE_PROMPT="the gpu breaks here"
zt_wait_log w4 'assigned' 60
zt_submit --job-id cu-lost --prompt "the gpu breaks here" >/dev/null
zt_wait_exit w4 180
zt_check "device fault: the worker exits 1" 1 "$ZT_RC"
zt_check "device fault: the log says the GPU failed" yes \
    "$(grep -q 'the GPU failed: .*cudaErrorIllegalAddress.*this worker stops' "$ZT_TMP/w4.log" &&
        echo yes)"
zt_check "device fault: no final state recorded" running "$(zt_field cu-lost status)"
zt_check "device fault: its attempt counted" 1 "$(zt_field cu-lost attempt)"
zt_start_worker w5 "${CUDA[@]}"
zt_wait_status cu-lost succeeded 180
zt_check "device fault: redone by the next worker" 2 "$(zt_field cu-lost attempt)"
zt_check "device fault: redone by w5" w5 "$(zt_field cu-lost worker)"
zt_check "device fault: not in the DLQ" no \
    "$(zt_consume "$ZT_DLQ" '%k\n' | grep -qx cu-lost && echo yes || echo no)"
zt_kill w5 TERM
zt_wait_exit w5 60
zt_check "w5 exit status after SIGTERM" 0 "$ZT_RC"

# ---- 7. the device line of worker --check ----
device_line() { # VAR=VALUE...: the device line of a check run with those variables
    { env ZIMAGE_DEVICE_BACKEND=cuda "$@" "$ZI_BINARY" worker --config "$ZT_CFG" --check \
        2>/dev/null || true; } | awk '$1 == "device"'
}
line=$(device_line)
zt_check "check: device ok on cuda" yes \
    "$(grep -q '^device *ok *cuda: ' <<<"$line" && echo yes || echo "no: $line")"
zt_check "check: every weight resident" yes \
    "$(grep -q 'all weights (.* GiB) resident beside the largest job' <<<"$line" && echo yes ||
        echo "no: $line")"
if grep -q 'CUDA emulator' <<<"$line"; then # a card too small for the largest job
    small=$(device_line ZI_EMU_DEVICE_MEMORY=$((600 << 20)))
    zt_check "check (emulated 600 MiB card): the largest job does not fit" yes \
        "$(grep -q '^device *FAIL .* needs .* GiB with its scratch: lower generation.max_side' \
            <<<"$small" && echo yes || echo "no: $small")"
fi
line=$(device_line ZI_CUDA_WEIGHT_BUDGET_MB=1)
zt_check "check: 1 MiB budget, weights in host memory" yes \
    "$(grep -q '^device *ok .*GiB stay in host memory under the weight budget' <<<"$line" &&
        echo yes || echo "no: $line")"
zt_finish
