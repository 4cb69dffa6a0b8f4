#!/usr/bin/env bash
# demo.sh - `make demo`: the whole service on one machine, from a fresh checkout.
#
#   1. installs what is missing (deploy/local/install-deps.sh), builds build/zimage (Release)
#   2. starts the local stack (deploy/local/stack.sh: Redis, the dev Kafka broker, Ceph RGW)
#      unless one is already up in $ZI_STACK_DIR (then that one is used and left running)
#   3. checks the set-up (`zimage worker --check`), then runs one worker on the CPU with the
#      tiny test checkpoint (tests/golden/data/tiny-zimage)
#   4. submits three jobs, waits for them, prints each job's status and presigned URL
#   5. copies the PNGs to demo-output/ (and the worker's log: demo-output/worker.log)
#   6. stops everything it started (trap; also on failure or Ctrl-C) unless KEEP=1
#
# The tiny checkpoint has random weights: its images are abstract noise - the point is the
# plumbing. For real images use the Z-Image-Turbo weights on a GPU; every setting can be
# overridden through the worker's environment variables, e.g.
#   ZIMAGE_MODEL_PATH=/models/Z-Image-Turbo ZIMAGE_DEVICE_BACKEND=cuda \
#   ZIMAGE_GENERATION_WIDTH=1024 ZIMAGE_GENERATION_HEIGHT=1024 ZIMAGE_GENERATION_STEPS=8 make demo
# Other knobs: DEMO_PROMPTS_FILE (one prompt per line, default three built-in prompts),
# DEMO_TIMEOUT_S (per job, default 600), DEMO_START_TIMEOUT_S (the worker's start-up, that is
# the model load, default 900), JOBS (build parallelism), KEEP=1.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
JOBS=${JOBS:-2}
KEEP=${KEEP:-}
OUT=$REPO/demo-output
STACK=$REPO/deploy/local/stack.sh
export ZI_STACK_DIR=${ZI_STACK_DIR:-$REPO/.stack}
TIMEOUT=${DEMO_TIMEOUT_S:-600}
START_TIMEOUT=${DEMO_START_TIMEOUT_S:-900}

say() { printf '\n==== %s\n' "$*"; }
die() {
    printf 'demo: error: %s\n' "$*" >&2
    exit 1
}

worker_pid=
stack_started=0
cleanup() {
    local rc=$?
    if [[ -n $KEEP ]]; then
        say "KEEP=1: leaving things running"
        [[ -n $worker_pid ]] && echo "worker pid $worker_pid (stop it with: kill -TERM $worker_pid)"
        ((stack_started)) && echo "stack in $ZI_STACK_DIR (stop it with: make stack-down)"
        exit "$rc"
    fi
    if [[ -n $worker_pid ]] && kill -0 "$worker_pid" 2>/dev/null; then
        say "stopping the worker (SIGTERM: drains, commits, leaves the group)"
        kill -TERM "$worker_pid" 2>/dev/null || true
        for _ in $(seq 300); do
            kill -0 "$worker_pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$worker_pid" 2>/dev/null || true
        wait "$worker_pid" 2>/dev/null || true
    fi
    if ((stack_started)); then
        say "stopping the stack"
        "$STACK" down || true
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

say "dependencies"
deploy/local/install-deps.sh

say "build (Release)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$JOBS" --target zimage
Z=$REPO/build/zimage
export ZI_BINARY=$Z

say "local stack ($ZI_STACK_DIR)"
if "$STACK" status >/dev/null 2>&1; then
    echo "a stack is already up there: using it (it stays up afterwards)"
else
    stack_started=1
    "$STACK" up
fi
eval "$("$STACK" env)"

mkdir -p "$OUT"
rm -f "$OUT"/*.png "$OUT"/worker.log
CFG=$OUT/worker.yaml
RUN=$(date +%Y%m%d-%H%M%S)
# The tiny checkpoint at 256x256 and 4 steps: about a second a job on 2 cores.
cat >"$CFG" <<EOF
# written by deploy/local/demo.sh; the stack's addresses and keys come from the environment
# (deploy/local/stack.sh env), and any key can be overridden with ZIMAGE_<SECTION>_<KEY>.
model:
  path: $REPO/tests/golden/data/tiny-zimage
device:
  backend: cpu
generation:
  width: 256
  height: 256
  steps: 4
kafka:
  topic: zimage.jobs
  group_id: zimage-demo
  properties:
    session.timeout.ms: "6000"
    heartbeat.interval.ms: "500"
    # the dev broker answers a waiting fetch only after fetch.wait.max.ms (real Kafka at once)
    fetch.wait.max.ms: "50"
s3:
  key_template: "demo/{date}/{job_id}.png"
worker:
  id: demo-worker
  http_listen: 127.0.0.1:0
  heartbeat_s: 2
EOF

say "preflight: zimage worker --check (each dependency once, nothing written)"
if ! "$Z" worker --config "$CFG" --check 2>"$OUT/check.log"; then
    cat "$OUT/check.log" >&2
    die "the check failed (above): not starting the worker"
fi

say "worker (log: $OUT/worker.log)"
"$Z" worker --config "$CFG" >"$OUT/worker.log" 2>&1 &
worker_pid=$!
# Start-up is the model load: a moment for the tiny model, about a minute for the real
# weights from a local SSD, more from a network disk; the worker's death ends the wait early.
start_deadline=$((SECONDS + START_TIMEOUT))
until grep -q 'consuming ' "$OUT/worker.log"; do
    kill -0 "$worker_pid" 2>/dev/null || {
        cat "$OUT/worker.log" >&2
        die "the worker exited during start-up"
    }
    ((SECONDS < start_deadline)) ||
        die "the worker did not start within $START_TIMEOUT s (DEMO_START_TIMEOUT_S; see $OUT/worker.log)"
    sleep 0.1
done
port=$(grep -oE 'on port [0-9]+' "$OUT/worker.log" | head -1 | awk '{print $3}')
echo "worker up: http://127.0.0.1:$port/metrics, /healthz, /readyz"

say "submitting three jobs"
prompts=()
if [[ -n ${DEMO_PROMPTS_FILE:-} ]]; then
    mapfile -t prompts <"$DEMO_PROMPTS_FILE"
else
    prompts=("a lighthouse on a cliff at dawn, oil painting"
        "a red fox in fresh snow, photograph"
        "an isometric pixel-art city at night")
fi
ids=()
for i in "${!prompts[@]}"; do
    id=$("$Z" submit --config "$CFG" --job-id "demo-$RUN-$((i + 1))" --prompt "${prompts[i]}" --seed "$((42 + i))")
    echo "submitted $id: ${prompts[i]}"
    ids+=("$id")
done

say "results"
failed=0
for id in "${ids[@]}"; do
    if ! "$Z" status --config "$CFG" "$id" --wait --timeout "$TIMEOUT" >"$OUT/$id.json"; then
        failed=1
        echo "$id: no final state" >&2
        continue
    fi
    status=$(jq -r .status "$OUT/$id.json")
    url=$(jq -r '.url // ""' "$OUT/$id.json")
    printf '%s  %s  %s ms (pipeline %s ms)  seed %s\n' "$id" "$status" \
        "$(jq -r '.duration_ms // "-"' "$OUT/$id.json")" "$(jq -r '.pipeline_ms // "-"' "$OUT/$id.json")" \
        "$(jq -r '.seed // "-"' "$OUT/$id.json")"
    if [[ $status == succeeded ]]; then
        echo "  url: $url"
        curl -sf --max-time 30 -o "$OUT/$id.png" "$url" || {
            failed=1
            echo "  download failed" >&2
        }
    else
        failed=1
        echo "  error: $(jq -r '.error_code // ""' "$OUT/$id.json"): $(jq -r '.error // ""' "$OUT/$id.json")"
    fi
    rm -f "$OUT/$id.json"
done
say "images in $OUT"
ls -l "$OUT"/*.png 2>/dev/null || true
echo "(the tiny test checkpoint draws abstract noise; see the header of this script for real weights)"
exit "$failed"
