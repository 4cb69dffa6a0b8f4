#!/usr/bin/env bash
# run-all.sh - everything `make test` (and so CI) does, in order:
#
#   1. dependencies   deploy/local/install-deps.sh (apt-get only for missing packages)
#   2. build          build/      Release (-O2), CUDA too when nvcc is present (compile only)
#   3. build-asan     build-asan/ Debug, ASan + UBSan, no CUDA
#      build-emu      build-emu/ the CUDA backend on the CPU emulator of CUDA
#                     (tests/cudaemu/), ASan + UBSan; needs the CUDA toolkit's headers
#                     (with ZI_CUDA=AUTO it is left out without them)
#      build-pipeline build-pipeline/ -DZI_WORKER=OFF, the pipeline-only build of GPU
#                     machines (tests/gpu/run.sh): `zimage` must link without the worker
#   4. format         clang-format --dry-run -Werror on every C/CUDA file (tests/lint.sh)
#   5. static-analysis cppcheck on every C file, zero findings (tests/lint.sh); .cu files
#                     are held to nvcc's warnings-as-errors in step 2 instead
#   6. unit tests     ctest -L unit in build-asan (includes the fuzz corpus replays);
#                     ctest -L '^(unit|gpu)$' in build-emu: the CUDA backend's kernels against
#                     the CPU backend, the golden images through it, the allocator on the
#                     emulated driver, the emulator's own tests
#   7. golden tests   ctest -L golden in build
#   8. stack          deploy/local/stack.sh up, its `env` exported
#   9. integration and fault tests: ctest -L 'integration|fault' in build, one at a time
#                     (fault tests stop and start the shared stack's services); then
#                     ctest -L '^gpu-stack$' in build-emu: the worker on the (emulated) CUDA
#                     backend against the stack - GPU telemetry in Redis, out of memory
#  10. stack down (also on failure or interrupt), unless KEEP=1 or the stack was already
#      running before (then it is used as it is and left running)
#
# Steps 1-5 and 8 are checks counted like tests; each ctest test counts once. A ctest test
# passes only when it ran and succeeded (skipped or "not run" count as failed: the team
# has no skipped tests). The last line printed is exactly "N passed, N failed"; the exit
# status is 0 only when nothing failed.
#
# Environment: JOBS (parallel jobs, default 2), KEEP=1 (leave the stack running),
# ZI_CUDA=AUTO|ON|OFF (CUDA in build/, default AUTO: when nvcc is found),
# ZI_STACK_DIR (stack scratch dir, default <repo>/.stack), CTEST_TIMEOUT (per test,
# default 600 s), ZI_TEST_FAST=1 (skip dependencies, format and static analysis: for quick
# local loops only; they are then not counted).
set -uo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO" || exit 1
JOBS=${JOBS:-2}
CTEST_TIMEOUT=${CTEST_TIMEOUT:-600}
STACK=$REPO/deploy/local/stack.sh
RESULTS=$REPO/build/test-results
export ZI_STACK_DIR=${ZI_STACK_DIR:-$REPO/.stack}

passed=0
failed=0
failed_names=()
stack_started=0

say() { printf '\n==== [%d:%02d] %s\n' $((SECONDS / 60)) $((SECONDS % 60)) "$*"; }

record() { # NAME RC: one counted check
    if (($2 == 0)); then
        passed=$((passed + 1))
        echo "check $1: passed"
    else
        failed=$((failed + 1))
        failed_names+=("$1")
        echo "check $1: FAILED"
    fi
}

# Called from make: keep the inner builds' output free of "Entering directory" noise.
unset MAKEFLAGS MFLAGS MAKELEVEL

# Tests must see the stack only through what stack.sh exports: drop any ZIMAGE_*/AWS_*
# variables inherited from the caller's shell, which would override config files in tests.
while read -r v; do
    unset "$v"
done < <(compgen -e | grep -E '^(ZIMAGE_|AWS_|ZI_KAFKA_|ZI_REDIS_|ZI_S3_)' || true)

# ctest_run NAME TESTDIR CTEST-ARGS...: runs ctest, adds its tests to the counts (from its
# JUnit report). When no report comes back although ctest failed, that counts as one failure.
ctest_run() {
    local name=$1 dir=$2
    shift 2
    local xml=$RESULTS/$name.xml rc report p f t
    mkdir -p "$RESULTS"
    rm -f "$xml"
    say "ctest: $name ($dir)"
    if [[ ! -f $dir/CTestTestfile.cmake ]]; then
        record "ctest-$name (no configured tree in $dir)" 1
        return
    fi
    ctest --test-dir "$dir" --timeout "$CTEST_TIMEOUT" --output-on-failure \
        --output-junit "$xml" "$@"
    rc=$?
    # First line "PASSED FAILED", then the name of each test that did not pass.
    report=$(python3 - "$xml" <<'EOF' 2>/dev/null
import sys, xml.etree.ElementTree as ET
cases = list(ET.parse(sys.argv[1]).getroot().iter("testcase"))
bad = [tc.get("name", "?") for tc in cases if tc.get("status") != "run"]
print(len(cases) - len(bad), len(bad))
print("\n".join(bad))
EOF
    ) || report=""
    if [[ -z $report ]]; then
        record "ctest-$name (no report; ctest exit $rc)" 1
        return
    fi
    read -r p f <<<"$(head -n 1 <<<"$report")"
    if ((rc != 0 && f == 0)); then
        # ctest failed without any failing test in the report (e.g. a bad label regex)
        record "ctest-$name (ctest exit $rc)" 1
    fi
    passed=$((passed + p))
    failed=$((failed + f))
    while read -r t; do
        [[ -n $t ]] && failed_names+=("$name: $t")
    done < <(tail -n +2 <<<"$report")
    echo "ctest $name: $p passed, $f failed"
}

stack_down() {
    if ((stack_started)) && [[ ${KEEP:-0} != 1 ]]; then
        say "stack down"
        "$STACK" down || echo "run-all: warning: stack down failed" >&2
    fi
    stack_started=0
}
on_exit() {
    stack_down
}
trap on_exit EXIT
trap 'echo "run-all: interrupted" >&2; exit 130' INT TERM

fast=${ZI_TEST_FAST:-0}

if [[ $fast != 1 ]]; then
    say "dependencies"
    "$REPO/deploy/local/install-deps.sh"
    record dependencies $?
fi

# `-- -k` (make's keep-going): one file that does not compile fails the build check and its
# own tests, but every other test still gets built and run.
say "build: build/ (Release)"
rc=0
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DZI_CUDA="${ZI_CUDA:-AUTO}" &&
    cmake --build build -j"$JOBS" -- -k || rc=1
record build $rc

say "build: build-asan/ (Debug, ASan+UBSan)"
rc=0
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DZI_SANITIZE=ON -DZI_CUDA=OFF &&
    cmake --build build-asan -j"$JOBS" -- -k || rc=1
record build-asan $rc

emu=0
cuda_inc=${CUDA_HOME:-/usr/local/cuda}/include
if [[ ${ZI_CUDA:-AUTO} != OFF && -f $cuda_inc/cuda_runtime_api.h && -f $cuda_inc/cublasLt.h ]]; then
    emu=1
    say "build: build-emu/ (CUDA backend on the CPU emulator, ASan+UBSan)"
    rc=0
    cmake -S . -B build-emu -DCMAKE_BUILD_TYPE=RelWithDebInfo -DZI_SANITIZE=ON -DZI_CUDA=EMU \
        -DCUDAToolkit_ROOT="${CUDA_HOME:-/usr/local/cuda}" &&
        cmake --build build-emu -j"$JOBS" -- -k || rc=1
    record build-emu $rc

    say "build: build-pipeline/ (-DZI_WORKER=OFF, as on GPU machines; zimage only)"
    rc=0
    cmake -S . -B build-pipeline -DCMAKE_BUILD_TYPE=Debug -DZI_WORKER=OFF -DZI_CUDA=EMU \
        -DCUDAToolkit_ROOT="${CUDA_HOME:-/usr/local/cuda}" &&
        cmake --build build-pipeline -j"$JOBS" --target zimage || rc=1
    record build-pipeline $rc
else
    say "build-emu left out: no CUDA toolkit headers in $cuda_inc (or ZI_CUDA=OFF)"
fi

if [[ $fast != 1 ]]; then
    say "format: clang-format --dry-run -Werror"
    "$REPO/tests/lint.sh" format-check
    record format $?

    say "static analysis: cppcheck"
    "$REPO/tests/lint.sh" cppcheck
    record static-analysis $?
fi

# Unit and golden tests run before the stack's variables are exported: they must not
# depend on services.
ctest_run unit build-asan -L unit -j"$JOBS"
if ((emu)); then
    ctest_run emu build-emu -L '^(unit|gpu)$' -j"$JOBS"
fi
ctest_run golden build -L golden -j"$JOBS"

say "stack up ($ZI_STACK_DIR)"
export ZI_BINARY=$REPO/build/zimage
[[ -x $ZI_BINARY ]] || ZI_BINARY=$REPO/build-asan/zimage
rc=0
if "$STACK" status >/dev/null 2>&1; then
    # Started by someone else (make stack-up, KEEP=1): use it, and leave it running.
    echo "using the stack already running in $ZI_STACK_DIR (it stays up)"
else
    stack_started=1
    "$STACK" up || rc=1
fi
record stack $rc
if ((rc == 0)); then
    env_text=$("$STACK" env) && eval "$env_text" || record stack-env 1
fi
# Integration and fault tests share one stack and fault tests stop its services: serial.
ctest_run integration-fault build -L 'integration|fault' -j1
if ((emu)); then
    ctest_run emu-stack build-emu -L '^gpu-stack$' -j1
fi
stack_down

say "summary"
if ((${#failed_names[@]})); then
    echo "failed:"
    printf '  %s\n' "${failed_names[@]}"
fi
echo "$passed passed, $failed failed"
((failed == 0))
