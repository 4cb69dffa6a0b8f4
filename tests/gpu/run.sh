#!/usr/bin/env bash
# tests/gpu/run.sh - every GPU check of the CUDA backend in one go, for a machine with an
# NVIDIA GPU (compute capability 8.0+), in under 5 minutes on an H100/H200:
#
#   0. deps: when .gpu-debs/ exists (made by tests/gpu/prepare.sh on the Debian machine),
#      its packages are unpacked into a private prefix ($ZI_GPU_DEPS, default /tmp/zi-deps;
#      never into /) and pkg-config sees only that prefix
#   1. configure (-DZI_WORKER=OFF -DZI_CUDA=ON, this GPU's architecture only) and build
#   2. the allocator policy and the Philox twin on the CPU (test_alloc, test_philox_twin)
#   3. the allocator on the real driver (tests/gpu/test_alloc_cuda.c)
#   4. the golden cases end to end with --backend cuda, >= 38 dB PSNR (test_golden_cuda.c);
#      the pipeline in one process: CUDA vs CPU image, determinism, a repeated job maps
#      nothing new, trim (test_pipeline_cuda.c); a real device fault (a kernel writing to an
#      illegal address) fails the job with ZI_EDEVICE and every later one (test_device_lost.c)
#   5. every kernel against the CPU backend at real shapes, timed (tests/gpu/test_kernels.c)
#   6. compute-sanitizer memcheck over one tiny generation (cudaMalloc allocator, so that
#      every tensor has exact bounds)
#   7. the benchmark: zimage bench --backend cuda --random-weights (real Z-Image-Turbo shapes;
#      --runs 2, or 1 when less than 150 s are left); then, when 100 s are left,
#      compute-sanitizer memcheck and racecheck over the attention kernels at small shapes
#   8. optional, when 100 s are left (ZI_GPU_BUDGET=400 makes room): the same with a 6 GiB
#      weight budget, as on a small card - prefetch hits and the no-prefetch baseline; in
#      summary.txt, not counted in RESULT
#
# Every stage runs under its own time limit and under the whole script's budget
# ($ZI_GPU_BUDGET s, default 285): a stage that no longer fits is reported as skipped. The
# script goes on after a failure and exits 1 if any stage failed or was skipped. Results go
# to $OUT (or $BUILD/gpu-out), at most 7 files: summary.txt (every stage, pass/fail, key
# numbers), logs.txt (the tail of every log), logs.tar.gz (all logs in full), kernels.json,
# golden.json, bench.json, build-warnings.txt.
# The build uses -DZI_WERROR=OFF: the GPU image's compiler is not CI's, and a warning that
# only a newer compiler emits must not cost the run; the warnings are counted in the summary.
# Environment: BUILD (default build-gpu), ZI_CUDA_ARCHS (default: nvidia-smi's compute
# capability, else native), JOBS, ZI_GPU_BUDGET, ZI_GPU_DEPS, ZI_GPU_BUILD_ONLY=1 (stop
# after the build: tests/gpu/prepare.sh --check), ZI_DEPS_EXTRACT=python (unpack .debs
# without dpkg-deb).
# Usage: bash tests/gpu/run.sh         (from anywhere; works on a fresh checkout)
set -uo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$ROOT" || exit 1
START=$(date +%s)
BUILD=${BUILD:-$ROOT/build-gpu}
OUTDIR=${OUT:-$BUILD/gpu-out}
LOGDIR=$BUILD/gpu-logs
JOBS=${JOBS:-$(nproc)}
BUDGET=${ZI_GPU_BUDGET:-285}
DEPS=${ZI_GPU_DEPS:-/tmp/zi-deps}
RESERVE=15 # seconds kept for the summary and the log archive
mkdir -p "$OUTDIR" "$LOGDIR" || exit 1
# nvcc and compute-sanitizer where the image does not put them on the PATH
# (/usr/local/cuda, else the newest /usr/local/cuda-X.Y)
if ! command -v nvcc >/dev/null; then
    for c in /usr/local/cuda/bin/nvcc $(ls -d /usr/local/cuda-*/bin/nvcc 2>/dev/null | sort -rV); do
        if [[ -x $c ]]; then
            export PATH=$(dirname "$c"):$PATH CUDACXX=$c
            break
        fi
    done
fi
rm -f "$OUTDIR"/summary.txt "$OUTDIR"/kernels.json "$OUTDIR"/golden.json \
    "$OUTDIR"/bench.json "$OUTDIR"/logs.txt "$OUTDIR"/logs.tar.gz \
    "$OUTDIR"/build-warnings.txt "$LOGDIR"/*.log "$LOGDIR"/small-card.json
declare -a STAGES=()
FAILED=0

left() { echo $((START + BUDGET - RESERVE - $(date +%s))); }

record() { # NAME VERDICT SECONDS
    STAGES+=("$(printf '%-12s %-40s %4d s' "$1" "$2" "$3")")
    echo "== $1: $2 in $3 s"
}

# stage NAME LIMIT_S COMMAND... : runs the command with a time limit (cut to what is left of
# the budget), logs to $LOGDIR/NAME.log, records the verdict; returns the command's status.
stage() {
    local name=$1 limit=$2
    shift 2
    local t0 rc rest verdict=ok
    rest=$(left)
    ((limit > rest)) && limit=$rest
    if ((limit < 5)); then
        echo "not run: the time budget (${BUDGET} s) is spent" >"$LOGDIR/$name.log"
        record "$name" "SKIPPED (time budget spent)" 0
        FAILED=1
        return 125
    fi
    t0=$(date +%s)
    echo "== $name (limit ${limit} s)"
    timeout -k 5 "$limit" "$@" >"$LOGDIR/$name.log" 2>&1
    rc=$?
    if ((rc != 0)); then
        verdict="FAILED (exit $rc$( ((rc == 124 || rc == 137)) && echo ', time limit'))"
        FAILED=1
    fi
    tail -n 25 "$LOGDIR/$name.log"
    record "$name" "$verdict" $(($(date +%s) - t0))
    return "$rc"
}

# A stage that could not run at all (a tool or a binary is missing).
missing() {
    echo "$1: $2" >"$LOGDIR/$1.log"
    record "$1" "FAILED ($2)" 0
    FAILED=1
}

# ---- 0. dependencies from .gpu-debs/ ----
# deb_extract DEB DIR: dpkg-deb -x, or (no dpkg on the image) the ar + tar.xz by python3.
deb_extract() {
    if [[ ${ZI_DEPS_EXTRACT:-} != python ]] && command -v dpkg-deb >/dev/null; then
        dpkg-deb -x "$1" "$2"
        return
    fi
    python3 - "$1" "$2" <<'EOF'
import io, sys, tarfile
deb, dest = sys.argv[1], sys.argv[2]
data = open(deb, "rb").read()
assert data[:8] == b"!<arch>\n", "not an ar archive"
pos = 8
while pos + 60 <= len(data):
    name = data[pos:pos + 16].decode().strip().rstrip("/")
    size = int(data[pos + 48:pos + 58].decode().strip())
    body = data[pos + 60:pos + 60 + size]
    pos += 60 + size + (size & 1)
    if name.startswith("data.tar"):
        kw = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
        with tarfile.open(fileobj=io.BytesIO(body), mode="r:*") as t:
            t.extractall(dest, **kw)
        sys.exit(0)
sys.exit("no data.tar member in " + deb)
EOF
}

# Unpacks every .deb into $DEPS, makes the prefix self-contained (absolute symlinks and the
# .pc files' /usr point into it) and writes the pkg-config wrapper $DEPS/bin/pkg-config.
setup_deps() {
    local d n=0 l t
    rm -rf "$DEPS" && mkdir -p "$DEPS/bin" || return 1
    for d in "$ROOT"/.gpu-debs/*.deb; do
        deb_extract "$d" "$DEPS" || {
            echo "cannot unpack $d"
            return 1
        }
        n=$((n + 1))
    done
    echo "unpacked $n packages into $DEPS"
    while IFS= read -r l; do
        t=$(readlink "$l")
        [[ $t == /* ]] && ln -sfn "$DEPS$t" "$l"
    done < <(find "$DEPS" -type l)
    find "$DEPS" -name '*.pc' -exec sed -i -E \
        -e "s#^([A-Za-z_]+)=/usr#\\1=$DEPS/usr#" \
        -e "s#(^|[[:space:]])-([IL])/usr#\\1-\\2$DEPS/usr#g" {} +
    if [[ -x $DEPS/usr/bin/pkgconf ]]; then
        printf '#!/bin/sh\nLD_LIBRARY_PATH=%s${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH} exec %s "$@"\n' \
            "$DEPS_LIBS" "$DEPS/usr/bin/pkgconf" >"$DEPS/bin/pkg-config"
        chmod +x "$DEPS/bin/pkg-config"
        "$DEPS/bin/pkg-config" --version || return 1
    fi
    # the proof that pkg-config resolves every module from the prefix alone
    local pc=pkg-config
    [[ -x $DEPS/bin/pkg-config ]] && pc=$DEPS/bin/pkg-config
    PKG_CONFIG_LIBDIR=$DEPS_PC "$pc" --cflags --libs \
        libpcre2-8 libutf8proc spng libcjson openblas cmocka zlib
}

DEPS_LIBS=$DEPS/usr/lib/x86_64-linux-gnu:$DEPS/usr/lib/x86_64-linux-gnu/openblas-pthread:$DEPS/lib/x86_64-linux-gnu
DEPS_PC=$DEPS/usr/lib/x86_64-linux-gnu/pkgconfig:$DEPS/usr/lib/x86_64-linux-gnu/openblas-pthread/pkgconfig:$DEPS/usr/share/pkgconfig
declare -a CMAKE_DEPS=()
USE_DEBS=0
compgen -G "$ROOT/.gpu-debs/*.deb" >/dev/null && USE_DEBS=1

{
    echo "date: $(date -u +%FT%TZ)"
    echo "commit: $(git rev-parse --short HEAD 2>/dev/null || echo '? (no .git)')"
    timeout 20 nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm,compute_cap \
        --format=csv 2>&1 || echo "nvidia-smi: failed or timed out (exit $?)"
    command -v nvcc >/dev/null && nvcc --version | tail -n 2
    echo "cmake: $(cmake --version 2>&1 | head -n 1)"
    echo "cc: $(cc --version 2>&1 | head -n 1)"
    echo "glibc: $(ldd --version 2>&1 | head -n 1)"
    echo "os: $(. /etc/os-release 2>/dev/null && echo "$PRETTY_NAME")"
    echo "cpus: $(nproc), deps: $([ "$USE_DEBS" = 1 ] && echo ".gpu-debs -> $DEPS" || echo system)"
} >"$LOGDIR/machine.log" 2>&1
cat "$LOGDIR/machine.log"

DEPS_OK=1
if ((USE_DEBS)); then
    # timeout runs programs, not functions: the function runs in a child bash
    export -f setup_deps deb_extract
    export DEPS DEPS_LIBS DEPS_PC ROOT
    stage deps 60 bash -c setup_deps || DEPS_OK=0
    if ((DEPS_OK)); then
        export PKG_CONFIG_LIBDIR=$DEPS_PC
        unset PKG_CONFIG_PATH
        # (no LIBRARY_PATH: CMake would take its folders for implicit ones and leave them out
        # of the binaries' RUNPATH; the .pc files give full library paths anyway)
        export CPATH=$DEPS/usr/include${CPATH:+:$CPATH}
        [[ -x $DEPS/bin/pkg-config ]] && CMAKE_DEPS+=(-DPKG_CONFIG_EXECUTABLE="$DEPS/bin/pkg-config")
        # libopenblas needs libgfortran, libspng libz: the linker looks for them here
        CMAKE_DEPS+=(-DCMAKE_EXE_LINKER_FLAGS="-Wl,-rpath-link,$DEPS_LIBS")
    fi
fi

# ---- 1. configure and build ----
ARCHS=${ZI_CUDA_ARCHS:-}
if [[ -z $ARCHS ]]; then
    cap=$(timeout 20 nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n 1 |
        tr -d ' .')
    [[ $cap =~ ^[0-9]+$ ]] && ARCHS=$cap || ARCHS=native
fi
declare -a GEN=()
if [[ ! -f $BUILD/CMakeCache.txt ]] && command -v ninja >/dev/null; then
    GEN=(-G Ninja)
fi

BUILT=0
if ((DEPS_OK)) && stage configure 90 cmake -S "$ROOT" -B "$BUILD" "${GEN[@]}" \
    -DCMAKE_BUILD_TYPE=Release -DZI_WORKER=OFF -DZI_CUDA=ON -DZI_WERROR=OFF \
    -DCMAKE_CUDA_ARCHITECTURES="$ARCHS" "${CMAKE_DEPS[@]}"; then
    KEEP=(-k) # keep going: one broken test binary must not stop the others
    grep -q '^CMAKE_GENERATOR:INTERNAL=Ninja' "$BUILD/CMakeCache.txt" && KEEP=(-k 0)
    stage build 200 cmake --build "$BUILD" -j"$JOBS" --target zimage test_alloc \
        test_philox_twin test_alloc_cuda test_kernels test_golden_cuda test_pipeline_cuda \
        test_device_lost -- "${KEEP[@]}"
    BUILT=1 # stages below check for their own binary
    grep -E 'warning:' "$LOGDIR/build.log" | sort -u >"$OUTDIR/build-warnings.txt"
    [[ -s $OUTDIR/build-warnings.txt ]] || rm -f "$OUTDIR/build-warnings.txt"
elif ((!DEPS_OK)); then
    missing configure "the dependencies could not be set up"
fi

# have NAME BINARY...: true when every binary was built, else records NAME as failed
have() {
    local name=$1 b
    shift
    for b in "$@"; do
        [[ -x $BUILD/$b ]] || {
            missing "$name" "$b was not built"
            return 1
        }
    done
}

if ((BUILT)) && [[ ${ZI_GPU_BUILD_ONLY:-0} != 1 ]]; then
    # only our binaries get the prefix's libraries (cmake, gcc and nvcc keep the system's)
    ((USE_DEBS)) && export LD_LIBRARY_PATH=$DEPS_LIBS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    # cuBLAS: the toolkit's own folders last, in case the image's loader config lacks them
    NVCC=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
    CUDA_HOME_GUESS=$(dirname "$(dirname "$(readlink -f "$NVCC")")")
    for d in "$CUDA_HOME_GUESS/lib64" "$CUDA_HOME_GUESS/lib" \
        "$CUDA_HOME_GUESS/targets/x86_64-linux/lib"; do
        [[ -d $d ]] && LD_LIBRARY_PATH=${LD_LIBRARY_PATH:+$LD_LIBRARY_PATH:}$d
    done
    export LD_LIBRARY_PATH
    echo "LD_LIBRARY_PATH=$LD_LIBRARY_PATH" >>"$LOGDIR/machine.log"
    export ZI_SOURCE_DIR=$ROOT ZI_BINARY=$BUILD/zimage
    have cpu-unit test_alloc test_philox_twin &&
        stage cpu-unit 30 bash -c "'$BUILD/test_alloc' && '$BUILD/test_philox_twin'"
    have alloc-cuda test_alloc_cuda && stage alloc-cuda 45 "$BUILD/test_alloc_cuda"
    have golden test_golden_cuda zimage &&
        stage golden 75 env ZI_GOLDEN_JSON="$OUTDIR/golden.json" "$BUILD/test_golden_cuda"
    have pipeline test_pipeline_cuda && stage pipeline 45 "$BUILD/test_pipeline_cuda"
    have device-lost test_device_lost && stage device-lost 30 "$BUILD/test_device_lost"
    have kernels test_kernels &&
        stage kernels 120 env ZI_KERNELS_JSON="$OUTDIR/kernels.json" "$BUILD/test_kernels"

    SAN=$(command -v compute-sanitizer || true)
    for c in "$CUDA_HOME_GUESS"/bin/compute-sanitizer "$CUDA_HOME_GUESS"/compute-sanitizer/compute-sanitizer \
        /usr/local/cuda*/bin/compute-sanitizer /usr/local/cuda*/compute-sanitizer/compute-sanitizer; do
        [[ -z $SAN && -x $c ]] && SAN=$c
    done
    if [[ -z $SAN ]]; then
        missing sanitizer "compute-sanitizer not found"
    elif have sanitizer zimage; then
        was=$FAILED
        stage sanitizer 75 env ZI_CUDA_ALLOCATOR=cudamalloc "$SAN" --tool memcheck \
            --error-exitcode 3 --leak-check no "$BUILD/zimage" generate \
            --model "$ROOT/tests/golden/data/tiny-zimage" --prompt "a cat" --width 64 \
            --height 64 --steps 2 --seed 42 --backend cuda --quiet --output "$BUILD/sanitized.png"
        rc=$?
        # a sandboxed driver (gVisor) can refuse the sanitizer itself: say so, not FAILED
        if ((rc != 0)) && grep -q "Device not supported" "$LOGDIR/sanitizer.log"; then
            unset 'STAGES[-1]'
            record sanitizer "NOT SUPPORTED on this machine (see its log)" 0
            FAILED=$was
        fi
    fi

    RUNS=2
    (($(left) < 150)) && RUNS=1
    have bench zimage && stage bench 150 bash -c "'$BUILD/zimage' bench --backend cuda \
        --random-weights --profile --runs $RUNS >'$OUTDIR/bench.json'"

    # the fused attention kernels (head dims 128 and 512, one and two K/V stages) under
    # memcheck (exact bounds: cudaMalloc) and racecheck (shared-memory hazards, which the
    # emulator cannot see), at test_kernels' small ragged/causal/GQA shapes; when 100 s
    # are left (then it counts in RESULT)
    if [[ -n ${SAN:-} && -x $BUILD/test_kernels ]] && (($(left) >= 100)); then
        was=$FAILED
        stage racecheck 90 env ZI_KERNELS_SMALL=1 ZI_KERNELS_ONLY=test_attention \
            ZI_CUDA_ALLOCATOR=cudamalloc bash -c "'$SAN' --tool memcheck --error-exitcode 3 \
            --leak-check no '$BUILD/test_kernels' && '$SAN' --tool racecheck --error-exitcode 3 \
            '$BUILD/test_kernels'"
        rc=$?
        if ((rc != 0)) && grep -q "Device not supported" "$LOGDIR/racecheck.log"; then
            unset 'STAGES[-1]'
            record racecheck "NOT SUPPORTED on this machine (see its log)" 0
            FAILED=$was
        elif ((rc == 124 || rc == 137)); then # slow, not wrong
            secs=$(awk '{print $(NF - 1)}' <<<"${STAGES[-1]}")
            unset 'STAGES[-1]'
            record racecheck "UNFINISHED (time limit; not in RESULT)" "$secs"
            FAILED=$was
        fi
    else
        record racecheck "not run (no sanitizer/binary, or < 100 s)" 0
    fi

    # optional, when 100 s are left: a small card's split on this GPU (6 GiB of weights
    # resident, the rest prefetched from host memory), with and without prefetch; its
    # outcome does not change RESULT
    if (($(left) >= 100)) && [[ -x $BUILD/zimage ]]; then
        was=$FAILED
        stage small-card 100 bash -c "ZI_CUDA_WEIGHT_BUDGET_MB=6144 '$BUILD/zimage' bench \
            --backend cuda --random-weights --size 384 --steps 1 --small-size 384 \
            --small-steps 9 --runs 1 --tokens 64 --gemm-size 2048 >'$LOGDIR/small-card.json'"
        FAILED=$was
    else
        record small-card "not run (optional; needs 100 s)" 0
    fi
fi
for f in kernels golden bench; do # no empty files back
    [[ -s $OUTDIR/$f.json ]] || rm -f "$OUTDIR/$f.json"
done

# ---- summary (always written) ----
{
    echo "tests/gpu/run.sh: $(date -u +%FT%TZ), $(($(date +%s) - START)) s in all" \
        "(budget ${BUDGET} s), CUDA architectures $ARCHS"
    grep -v '^date:' "$LOGDIR/machine.log"
    echo
    printf '%s\n' "${STAGES[@]}"
    if [[ -f $LOGDIR/build.log ]]; then
        echo
        echo "build: $(grep -c 'warning:' "$LOGDIR/build.log") warning lines" \
            "(ZI_WERROR=OFF; the distinct ones in build-warnings.txt)"
        grep -m 5 -E '(error|Error)[: ]' "$LOGDIR/build.log"
    fi
    if [[ -s $OUTDIR/golden.json ]]; then
        echo
        echo "golden (bf16 GPU vs fp32 reference PNG, >= 38 dB):"
        cat "$OUTDIR/golden.json"
    fi
    if [[ -s $LOGDIR/kernels.log ]]; then
        echo
        echo "kernels (max err = max|gpu-cpu|/max|cpu|; median GPU time, L2 flushed):"
        sed -n '/^op /,$p' "$LOGDIR/kernels.log" | grep -v '^\[' || true
    fi
    if [[ -s $OUTDIR/bench.json ]]; then
        echo
        echo "bench (zimage bench --backend cuda --random-weights --runs ${RUNS:-?}):"
        cat "$OUTDIR/bench.json"
    fi
    if [[ -s $LOGDIR/small-card.json ]]; then
        echo
        echo "small card (ZI_CUDA_WEIGHT_BUDGET_MB=6144; optional, not in RESULT):"
        cat "$LOGDIR/small-card.json"
    fi
    echo
    if [[ ${ZI_GPU_BUILD_ONLY:-0} == 1 ]]; then
        echo "(ZI_GPU_BUILD_ONLY=1: stopped after the build)"
    fi
    if ((FAILED == 0)); then
        echo "RESULT: all stages passed"
    else
        echo "RESULT: some stages FAILED"
    fi
} >"$OUTDIR/summary.txt" 2>&1
for f in "$LOGDIR"/*.log; do
    echo "===== $(basename "$f")"
    tail -n 60 "$f"
done >"$OUTDIR/logs.txt"
tar -czf "$OUTDIR/logs.tar.gz" -C "$BUILD" gpu-logs 2>/dev/null || rm -f "$OUTDIR/logs.tar.gz"
cat "$OUTDIR/summary.txt"
exit "$FAILED"
