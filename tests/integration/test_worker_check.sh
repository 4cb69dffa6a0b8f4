#!/usr/bin/env bash
# test_worker_check.sh - `zimage worker --check` against the real stack: every line ok with
# the stack's settings; each broken dependency named on its own line (exit 1) while the
# others still pass - Redis unreachable, Kafka unreachable, a wrong S3 secret, a missing
# bucket, credentials without s3:ListBucket (warn, exit 0), a checkpoint missing a layer's
# tensors, a missing model folder, the CUDA backend without a GPU; and nothing is written:
# no Redis key, no object.
# (The dev broker creates any topic a client asks about, so a missing topic - a FAIL on a
# real Kafka - cannot be shown here.)
source "$(dirname "$0")/worker_lib.sh"
zt_init check
zt_config

# check NAME [VAR=VALUE...]: runs the check; output in $ZT_TMP/NAME.out, status in $rc
check() {
    local name=$1
    shift
    rc=0
    env "$@" "$ZI_BINARY" worker --config "$ZT_CFG" --check >"$ZT_TMP/$name.out" \
        2>"$ZT_TMP/$name.err" || rc=$?
}
# state NAME CHECK: the state column (ok, warn, FAIL) of CHECK's line
state() { awk -v c="$2" '$1 == c { print $2 }' "$ZT_TMP/$1.out"; }
# line NAME CHECK: CHECK's whole line
line() { awk -v c="$2" '$1 == c' "$ZT_TMP/$1.out"; }

our_keys() { redis-cli -u "$ZI_REDIS_URL" --scan --pattern "${ZT_PREFIX}*" | grep -c '' || true; }

# ---- 1. the stack as configured: all pass ----
t0=$(date +%s%3N)
check good
zt_check "good: exit" 0 "$rc"
for c in config redis kafka s3 model device; do
    zt_check "good: $c" ok "$(state good "$c")"
done
zt_check "good: summary" "check: all passed" "$(tail -n 1 "$ZT_TMP/good.out")"
zt_check "good: a line per check and the summary" 7 "$(grep -c '' "$ZT_TMP/good.out")"
zt_check "good: kafka names the jobs topic" yes \
    "$(line good kafka | grep -qF "kafka.topic $ZT_TOPIC (" && echo yes || echo no)"
zt_check "good: kafka names the DLQ topic" yes \
    "$(line good kafka | grep -qF "kafka.dlq_topic $ZT_DLQ (" && echo yes || echo no)"
zt_check "good: no result topic configured, none checked" no \
    "$(line good kafka | grep -qF "kafka.result_topic" && echo yes || echo no)"
check results ZIMAGE_KAFKA_RESULT_TOPIC="$ZT_RESULTS"
zt_check "with a result topic: checked too" yes \
    "$(line results kafka | grep -qF "kafka.result_topic $ZT_RESULTS (" && echo yes || echo no)"
zt_check "good: model counted its weights" yes \
    "$(line good model | grep -q 'GiB of weights in bf16' && echo yes || echo no)"
zt_check "good: device planned the largest job" yes \
    "$(line good device | grep -q 'the largest job ([0-9]*x[0-9]* with CFG)' && echo yes || echo no)"
zt_check_ge "good: done within 10 s (ms left)" 0 "$((10000 - ($(date +%s%3N) - t0)))"

# ---- 2. each dependency broken alone ----
check redis ZIMAGE_REDIS_URL=redis://127.0.0.1:1/0
zt_check "redis down: exit" 1 "$rc"
zt_check "redis down: redis" FAIL "$(state redis redis)"
zt_check "redis down: the others pass" "ok ok ok ok" \
    "$(state redis kafka) $(state redis s3) $(state redis model) $(state redis device)"
zt_check "redis down: summary" "check: 1 failed" "$(tail -n 1 "$ZT_TMP/redis.out")"

t0=$(date +%s%3N)
check kafka ZIMAGE_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1
zt_check "kafka down: exit" 1 "$rc"
zt_check "kafka down: one kafka line, FAIL" FAIL "$(state kafka kafka)"
zt_check "kafka down: names the servers" yes \
    "$(line kafka kafka | grep -qF '127.0.0.1:1' && echo yes || echo no)"
zt_check "kafka down: redis still ok" ok "$(state kafka redis)"
zt_check_ge "kafka down: gives up within 15 s (ms left)" 0 "$((15000 - ($(date +%s%3N) - t0)))"

check secret ZIMAGE_S3_SECRET_KEY=wrong-secret-0000000000000000000000000
zt_check "wrong secret: exit" 1 "$rc"
zt_check "wrong secret: s3" FAIL "$(state secret s3)"
zt_check "wrong secret: names S3's reason" yes \
    "$(line secret s3 | grep -q SignatureDoesNotMatch && echo yes || echo no)"

check nobucket ZIMAGE_S3_BUCKET=zimage-no-such-bucket
zt_check "missing bucket: exit" 1 "$rc"
zt_check "missing bucket: s3" FAIL "$(state nobucket s3)"
zt_check "missing bucket: names it" yes \
    "$(line nobucket s3 | grep -q NoSuchBucket && echo yes || echo no)"

zt_s3_putget
check putget ZIMAGE_S3_BUCKET="$ZT_PUTGET_BUCKET" ZIMAGE_S3_ACCESS_KEY="${ZT_PUTGET_KEYS%%:*}" \
    ZIMAGE_S3_SECRET_KEY="${ZT_PUTGET_KEYS#*:}"
zt_check "no s3:ListBucket: exit (the worker runs)" 0 "$rc"
zt_check "no s3:ListBucket: s3" warn "$(state putget s3)"
zt_check "no s3:ListBucket: says so" yes \
    "$(line putget s3 | grep -q 'lack s3:ListBucket' && echo yes || echo no)"

# A checkpoint whose transformer config counts a layer more than its weights hold (links to
# the rest).
bad=$ZT_TMP/bad-model
mkdir -p "$bad"
for f in "$ZT_REPO"/tests/golden/data/tiny-zimage/*; do
    ln -s "$f" "$bad/$(basename "$f")"
done
rm "$bad/transformer"
mkdir "$bad/transformer"
ln -s "$ZT_REPO"/tests/golden/data/tiny-zimage/transformer/*.safetensors* "$bad/transformer/"
python3 - "$ZT_REPO/tests/golden/data/tiny-zimage/transformer/config.json" \
    "$bad/transformer/config.json" <<'EOF'
import json, sys
c = json.load(open(sys.argv[1]))
c["n_layers"] += 1
json.dump(c, open(sys.argv[2], "w"))
EOF
check badmodel ZIMAGE_MODEL_PATH="$bad"
zt_check "a layer short: exit" 1 "$rc"
zt_check "a layer short: model" FAIL "$(state badmodel model)"
zt_check "a layer short: names the missing tensor" yes \
    "$(line badmodel model | grep -q 'tensor layers\.[0-9]*\..*: not found' && echo yes || echo no)"
zt_check "a layer short: device still checked" ok "$(state badmodel device)"

check nomodel ZIMAGE_MODEL_PATH="$ZT_TMP/no-such-model"
zt_check "no model folder: model" FAIL "$(state nomodel model)"
zt_check "no model folder: names it" yes \
    "$(line nomodel model | grep -qF "$ZT_TMP/no-such-model" && echo yes || echo no)"

check backend ZIMAGE_DEVICE_BACKEND=cuda
if [[ $(state backend device) == ok ]]; then # a GPU machine
    zt_check "cuda backend: names the GPU" yes \
        "$(line backend device | grep -q '^device *ok *cuda: ' && echo yes || echo no)"
else
    zt_check "no GPU: device" FAIL "$(state backend device)"
    zt_check "no GPU: exit" 1 "$rc"
fi

# ---- 3. nothing written, nothing joined ----
zt_check "no Redis key written under the prefix" 0 "$(our_keys)"
zt_check "no object written under the key template" "" "$(zt_s3_keys)"

# ---- 4. usage ----
rc=0
"$ZI_BINARY" worker --config "$ZT_CFG" --check --print-config >/dev/null 2>"$ZT_TMP/usage.err" ||
    rc=$?
zt_check "--check with --print-config: usage error" 2 "$rc"
zt_finish
