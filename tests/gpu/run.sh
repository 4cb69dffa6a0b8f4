#!/usr/bin/env bash
# tests/gpu/run.sh - every GPU check of the CUDA backend in one go, for a machine with an
# NVIDIA GPU (compute capability 8.0+), in under 5 minutes on an H100/H200:
#
#   1. configure (-DZI_CUDA=ON, this GPU's architecture only) and build what is needed
#   2. the allocator policy and the Philox twin on the CPU (test_alloc, test_philox_twin)
#   3. the allocator on the real driver (tests/gpu/test_alloc_cuda.c)
#   4. every kernel against the CPU backend at real shapes, timed (tests/gpu/test_kernels.c)
#   5. the golden cases end to end with --backend cuda, >= 38 dB PSNR (test_golden_cuda.c)
#   6. compute-sanitizer memcheck over one tiny generation (cudaMalloc allocator, so that
#      every tensor has exact bounds)
#   7. the benchmark: zimage bench --backend cuda --random-weights (real Z-Image-Turbo shapes)
#
# Every stage runs under a time limit and the script goes on after a failure; it exits 1 if
# any stage failed. Results go to $OUT (or $BUILD/gpu-out): summary.txt, kernels.json,
# golden.json, bench.json, logs.txt (the tail of every stage's log).
# Environment: BUILD (default build-gpu), ZI_CUDA_ARCHS (default native), JOBS.
# Usage: tests/gpu/run.sh            (from anywhere; works on a fresh checkout)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
BUILD=${BUILD:-$ROOT/build-gpu}
OUTDIR=${OUT:-$BUILD/gpu-out}
LOGDIR=$BUILD/gpu-logs
JOBS=${JOBS:-$(nproc)}
ARCHS=${ZI_CUDA_ARCHS:-native}
mkdir -p "$OUTDIR" "$LOGDIR"
rm -f "$OUTDIR"/summary.txt "$OUTDIR"/kernels.json "$OUTDIR"/golden.json "$OUTDIR"/bench.json \
    "$OUTDIR"/logs.txt
START=$(date +%s)
declare -a STAGES=()
FAILED=0

# stage NAME LIMIT_S COMMAND... : runs the command with a time limit, logs to $LOGDIR/NAME.log
stage() {
    local name=$1 limit=$2
    shift 2
    local t0 t1 rc
    t0=$(date +%s)
    echo "== $name (limit ${limit} s)"
    timeout -k 10 "$limit" "$@" >"$LOGDIR/$name.log" 2>&1
    rc=$?
    t1=$(date +%s)
    local verdict=ok
    if [ "$rc" -ne 0 ]; then
        verdict="FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ', time limit'))"
        FAILED=1
    fi
    STAGES+=("$(printf '%-12s %-34s %4d s' "$name" "$verdict" $((t1 - t0)))")
    tail -n 25 "$LOGDIR/$name.log"
    echo "== $name: $verdict in $((t1 - t0)) s"
    return "$rc"
}

# A stage that could not run at all (a tool is missing).
missing() {
    STAGES+=("$(printf '%-12s %-34s %4d s' "$1" "FAILED ($2)" 0)")
    echo "$1: $2" >"$LOGDIR/$1.log"
    echo "== $1: FAILED ($2)"
    FAILED=1
}

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv 2>&1
    command -v nvcc >/dev/null && nvcc --version | tail -n 2
    echo "cmake: $(cmake --version | head -n 1)"
} >"$LOGDIR/machine.log" 2>&1
cat "$LOGDIR/machine.log"

stage configure 120 cmake -S "$ROOT" -B "$BUILD" -DZI_CUDA=ON -DCMAKE_BUILD_TYPE=Release \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCHS"
BUILT=1
stage build 300 cmake --build "$BUILD" -j"$JOBS" --target zimage test_alloc test_philox_twin \
    test_alloc_cuda test_kernels test_golden_cuda || BUILT=0

if [ "$BUILT" -eq 1 ]; then
    export ZI_SOURCE_DIR=$ROOT ZI_BINARY=$BUILD/zimage
    stage cpu-unit 60 bash -c "'$BUILD/test_alloc' && '$BUILD/test_philox_twin'"
    stage alloc-cuda 90 "$BUILD/test_alloc_cuda"
    stage kernels 240 env ZI_KERNELS_JSON="$OUTDIR/kernels.json" "$BUILD/test_kernels"
    stage golden 120 env ZI_GOLDEN_JSON="$OUTDIR/golden.json" "$BUILD/test_golden_cuda"

    SAN=$(command -v compute-sanitizer || true)
    for c in /usr/local/cuda/bin/compute-sanitizer /usr/local/cuda/compute-sanitizer/compute-sanitizer; do
        [ -z "$SAN" ] && [ -x "$c" ] && SAN=$c
    done
    if [ -n "$SAN" ]; then
        stage sanitizer 180 env ZI_CUDA_ALLOCATOR=cudamalloc "$SAN" --tool memcheck \
            --error-exitcode 3 --leak-check no "$BUILD/zimage" generate \
            --model "$ROOT/tests/golden/data/tiny-zimage" --prompt "a cat" --width 64 \
            --height 64 --steps 2 --seed 42 --backend cuda --quiet --output "$BUILD/sanitized.png"
    else
        missing sanitizer "compute-sanitizer not found"
    fi

    stage bench 240 bash -c "'$BUILD/zimage' bench --backend cuda --random-weights --runs 2 \
        >'$OUTDIR/bench.json'"
fi

# ---- summary ----
{
    echo "tests/gpu/run.sh: $(date -u +%FT%TZ), $(($(date +%s) - START)) s in all"
    head -n 3 "$LOGDIR/machine.log"
    echo
    printf '%s\n' "${STAGES[@]}"
    if [ -s "$OUTDIR/golden.json" ]; then
        echo
        echo "golden (bf16 GPU vs fp32 reference PNG, >= 38 dB):"
        cat "$OUTDIR/golden.json"
    fi
    if [ -s "$LOGDIR/kernels.log" ]; then
        echo
        echo "kernels (max err = max|gpu-cpu|/max|cpu|; median GPU time, L2 flushed):"
        sed -n '/^op /,$p' "$LOGDIR/kernels.log" | grep -v '^\[' || true
    fi
    if [ -s "$OUTDIR/bench.json" ]; then
        echo
        echo "bench (zimage bench --backend cuda --random-weights):"
        cat "$OUTDIR/bench.json"
    fi
    echo
    [ "$FAILED" -eq 0 ] && echo "RESULT: all stages passed" || echo "RESULT: some stages FAILED"
} >"$OUTDIR/summary.txt"
for f in "$LOGDIR"/*.log; do
    echo "===== $(basename "$f")"
    tail -n 60 "$f"
done >"$OUTDIR/logs.txt"
cat "$OUTDIR/summary.txt"
exit "$FAILED"
