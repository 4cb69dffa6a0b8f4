#!/usr/bin/env bash
# worker_overhead.sh - the worker's own cost per job at 512x512, apart from the pipeline.
#
# Runs one CPU worker on the tiny checkpoint against a local stack and sends N jobs one at
# a time (`zimage submit --wait`, so no job waits behind another). From each job hash
# (times the worker records: produced_at = the Kafka message timestamp, received_at,
# started_at, finished_at, pipeline_ms, png_ms, upload_ms):
#   worker overhead = finished_at - received_at - pipeline_ms: the pre-run checks (lease,
#       hash read, S3 HEAD, cancel flag, attempt count, `running` write), progress writes,
#       PNG encode, S3 PUT, presign, the final Redis write (hash + event);
#   Kafka delivery  = received_at - produced_at (producer -> broker -> consumer);
# and prints median / p90 / max of each part. The target: worker overhead under 50 ms.
# The dev broker (librdkafka's mock) does not end a fetch long-poll when data arrives, so
# the config sets fetch.wait.max.ms=20; a real broker answers a waiting fetch at once.
#
# Usage: bench/worker_overhead.sh [N]   (default N=10; env: ZI_BINARY, default build/zimage;
# SIZE, default 512; STEPS, default 2). Uses the stack in $ZI_STACK_DIR when one is up there
# (as `make stack-up` leaves it), else starts a private one in a temporary dir and stops it.
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../tests/lib.sh"

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
N=${1:-10}
SIZE=${SIZE:-512}
STEPS=${STEPS:-2}
Z=${ZI_BINARY:-$REPO/build/zimage}
[[ -x $Z ]] || {
    echo "worker_overhead: no binary at $Z (make build, or set ZI_BINARY)" >&2
    exit 1
}
STACK=$REPO/deploy/local/stack.sh
zt_scratch bench
tmp=$ZT_TMP
own_stack=0
wpid=
cleanup() {
    zt_stop_pid "$wpid" TERM
    ((own_stack == 0)) || "$STACK" down >/dev/null 2>&1
}
zt_on_exit cleanup

if [[ -n ${ZI_STACK_DIR:-} ]] && ZI_STACK_DIR=$ZI_STACK_DIR "$STACK" status >/dev/null 2>&1; then
    :
else
    export ZI_STACK_DIR=$tmp/stack
    own_stack=1
    ZI_BINARY=$Z "$STACK" up >/dev/null
fi
eval "$("$STACK" env)"

run=$(od -An -N4 -tx4 /dev/urandom | tr -d ' ')
cat >"$tmp/worker.yaml" <<EOF
model:
  path: $REPO/tests/golden/data/tiny-zimage
device:
  backend: cpu
generation:
  width: $SIZE
  height: $SIZE
  steps: $STEPS
kafka:
  topic: bench.$run
  group_id: bench-$run
  properties:
    session.timeout.ms: "6000"
    heartbeat.interval.ms: "500"
    fetch.wait.max.ms: "20"
redis:
  key_prefix: "bench:$run:"
s3:
  key_template: "bench/$run/{job_id}.png"
worker:
  id: bench-worker
  http_listen: 127.0.0.1:0
EOF
"$Z" worker --config "$tmp/worker.yaml" >"$tmp/worker.log" 2>&1 &
wpid=$!
# One warm-up job (group join, first connections) that is not counted.
"$Z" submit --config "$tmp/worker.yaml" --job-id warmup --prompt warmup --wait --timeout 120 \
    >/dev/null || {
    tail -n 30 "$tmp/worker.log" >&2
    exit 1
}
for i in $(seq 1 "$N"); do
    "$Z" submit --config "$tmp/worker.yaml" --job-id "j$i" --prompt "benchmark prompt $i" \
        --seed "$i" --wait --timeout 120 | sed 1d >"$tmp/j$i.json"
done
python3 - "$tmp" "$N" "$SIZE" "$STEPS" <<'EOF'
import json, statistics, sys
tmp, n, size, steps = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
rows = [json.load(open(f"{tmp}/j{i}.json")) for i in range(1, n + 1)]
bad = [r["job_id"] if "job_id" in r else "?" for r in rows if r.get("status") != "succeeded"]
if bad:
    sys.exit(f"jobs not succeeded: {bad}")
def col(f):
    return sorted(f(r) for r in rows)
pipe = col(lambda r: int(r["pipeline_ms"]))
kafka = col(lambda r: int(r["received_at"]) - int(r["produced_at"]))
pre = col(lambda r: int(r["started_at"]) - int(r["received_at"]))
png = col(lambda r: int(r["png_ms"]))
up = col(lambda r: int(r["upload_ms"]))
post = col(lambda r: int(r["duration_ms"]) - int(r["pipeline_ms"]))
worker = col(lambda r: int(r["finished_at"]) - int(r["received_at"]) - int(r["pipeline_ms"]))
e2e = col(lambda r: int(r["finished_at"]) - int(r["produced_at"]) - int(r["pipeline_ms"]))
def stats(v):
    p90 = v[min(len(v) - 1, int(round(0.9 * (len(v) - 1))))]
    return f"median {statistics.median(v):7.1f}  p90 {p90:5d}  max {max(v):5d}"
print(f"worker overhead per job (ms), {size}x{size}, {steps} steps, tiny checkpoint on the CPU, {n} jobs")
print(f"  pipeline_ms (not overhead)           {stats(pipe)}")
print(f"  Kafka: produced -> received          {stats(kafka)}")
print(f"  checks: received -> started          {stats(pre)}")
print(f"    (lease, hash read, S3 HEAD, cancel flag, attempt count, `running` write)")
print(f"  after the pipeline: duration - pipeline {stats(post)}")
print(f"    of which PNG encode                {stats(png)}")
print(f"    of which S3 upload                 {stats(up)}")
print(f"  worker overhead: received -> finished - pipeline {stats(worker)}")
print(f"  with Kafka: produced -> finished - pipeline      {stats(e2e)}")
med = statistics.median(worker)
print(f"target < 50 ms worker overhead (median): {'met' if med < 50 else 'NOT met'} ({med:.1f} ms)")
EOF
