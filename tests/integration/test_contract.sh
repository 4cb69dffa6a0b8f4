#!/usr/bin/env bash
# test_contract.sh - the external contract (docs/contract.md) point by point, through its
# names only, on the real stack with one CPU worker (tiny model, 64x64, a non-default
# Redis key_prefix and s3.public_endpoint set):
# * submit --wait / status: one JSON object of strings with every contract field (also
#   error_code/error, empty on success), exit 0 only for `succeeded`, exit 1 + one error
#   line for an unknown job; a seed of 2^64-1 kept exactly in the hash, the PNG's
#   `parameters` and x-amz-meta-seed; the `parameters` text exactly; negative prompt only
#   with guidance > 0; unknown job fields ignored; an empty prompt accepted;
# * S3: key_template with {date} (UTC date of the message timestamp), Content-Type,
#   x-amz-meta-job-id/seed by a signed HEAD; the presigned URL on the public_endpoint host,
#   fetched with plain curl;
# * Redis: the lease and the worker hash (every field, TTL 3 x heartbeat_s) while a job
#   runs, cancel -> `cancelled`, the job hash TTL, events with worker (+ error_code on
#   failure), the workers zset, every key under key_prefix;
# * result messages (key and every field), /healthz, /readyz, every required metric;
# * the S3 secret appears nowhere: worker log, Redis, /metrics, DLQ and result messages.
source "$(dirname "$0")/worker_lib.sh"
zt_init contract
ZT_RESULT_TOPIC=$ZT_RESULTS zt_config
sed -i "s|key_template: \"$ZT_KEYDIR/{job_id}.png\"|key_template: \"$ZT_KEYDIR/{date}/{job_id}.png\"|" "$ZT_CFG"
secret=$ZI_S3_SECRET_KEY

zt_start_worker w1 ZIMAGE_FAULT_STEP_DELAY_MS=150
zt_wait_log w1 'assigned' 30
port=$(grep -oE 'on port [0-9]+' "$ZT_TMP/w1.log" | head -1 | awk '{print $3}')
http() { curl -s -o /dev/null -w '%{http_code}' --max-time 2 "http://127.0.0.1:$port$1"; }
zt_check "/healthz" 200 "$(http /healthz)"
zt_check "/readyz while consuming" 200 "$(http /readyz)"
zt_check "no stall watchdog by default on the CPU" no \
    "$(grep -q 'stall watchdog' "$ZT_TMP/w1.log" && echo yes || echo no)"

# ---- a job with every parameter, to the end: submit --wait ----
rc=0
zt_submit --job-id c-full --prompt "a red fox" --negative-prompt "blurry" --guidance 2.5 \
    --width 64 --height 80 --steps 2 --seed 18446744073709551615 --wait \
    >"$ZT_TMP/full.out" 2>"$ZT_TMP/full.err" || rc=$?
zt_check "submit --wait exit for succeeded" 0 "$rc"
zt_check "submit --wait prints the job id first" c-full "$(head -1 "$ZT_TMP/full.out")"
tail -n +2 "$ZT_TMP/full.out" >"$ZT_TMP/full.json"
zt_check "submit --wait: the id line, then the hash on one line" 2 "$(wc -l <"$ZT_TMP/full.out")"
fields="status worker attempt step steps progress queued_at started_at finished_at duration_ms seed width height model version s3_key url error_code error"
check_hash() { # FILE NAME: every contract field present, every value a string
    python3 - "$1" "$fields" <<'EOF'
import json, sys
h = json.load(open(sys.argv[1]))
missing = [f for f in sys.argv[2].split() if f not in h]
nonstr = [k for k, v in h.items() if not isinstance(v, str)]
print("missing=%s nonstring=%s" % (",".join(missing), ",".join(nonstr)))
EOF
}
zt_check "submit --wait hash: every field, all strings" "missing= nonstring=" "$(check_hash "$ZT_TMP/full.json")"
sleep 1.1 # so that a fresh signature has another X-Amz-Date than the worker's
"$ZI_BINARY" status --config "$ZT_CFG" c-full >"$ZT_TMP/st.json"
zt_check "status hash: every field, all strings" "missing= nonstring=" "$(check_hash "$ZT_TMP/st.json")"
zt_check "status: one line" 1 "$(wc -l <"$ZT_TMP/st.json")"
j() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get(sys.argv[2], "<absent>"))' "$@"; }
zt_check "status" succeeded "$(j "$ZT_TMP/st.json" status)"
zt_check "worker" w1 "$(j "$ZT_TMP/st.json" worker)"
zt_check "seed 2^64-1 exactly" 18446744073709551615 "$(j "$ZT_TMP/st.json" seed)"
zt_check "size" 64x80 "$(j "$ZT_TMP/st.json" width)x$(j "$ZT_TMP/st.json" height)"
zt_check "step/steps/progress" "2/2/1" \
    "$(j "$ZT_TMP/st.json" step)/$(j "$ZT_TMP/st.json" steps)/$(j "$ZT_TMP/st.json" progress)"
zt_check "attempt" 1 "$(j "$ZT_TMP/st.json" attempt)"
zt_check "error_code empty on success" "" "$(j "$ZT_TMP/st.json" error_code)"
zt_check "model" tiny-zimage "$(j "$ZT_TMP/st.json" model)"
q=$(j "$ZT_TMP/st.json" queued_at) s=$(j "$ZT_TMP/st.json" started_at)
f=$(j "$ZT_TMP/st.json" finished_at) d=$(j "$ZT_TMP/st.json" duration_ms)
zt_check "queued_at <= started_at <= finished_at (unix ms)" yes \
    "$( ((q > 1600000000000 && q <= s && s <= f)) && echo yes)"
zt_check "duration_ms = finished_at - started_at" "$((f - s))" "$d"
# {date}: the UTC date of the Kafka message timestamp (the hash's produced_at extension).
day=$(date -u -d "@$(($(j "$ZT_TMP/st.json" produced_at) / 1000))" +%F)
key="$ZT_KEYDIR/$day/c-full.png"
zt_check "s3_key from key_template with {date}" "$key" "$(j "$ZT_TMP/st.json" s3_key)"
url=$(j "$ZT_TMP/st.json" url)
zt_check "presigned URL on the endpoint" yes "$([[ $url == "$ZI_S3_ENDPOINT/$ZI_S3_BUCKET/$key?"* ]] && echo yes)"
# s3.public_endpoint: the host of presigned URLs (not fetched: the local gateway answers
# only to its own host name).
pub=https://images.zimage.test:8443
purl=$(ZIMAGE_S3_PUBLIC_ENDPOINT=$pub "$ZI_BINARY" status --config "$ZT_CFG" c-full | python3 -c 'import json,sys; print(json.load(sys.stdin)["url"])')
zt_check "presigned URL on s3.public_endpoint" yes "$([[ $purl == "$pub/$ZI_S3_BUCKET/$key?"*X-Amz-Signature=* ]] && echo yes)"
amzdate() { grep -oE 'X-Amz-Date=[0-9]{8}T[0-9]{6}Z' <<<"$1" | tr -dc 0-9; }
zt_check "presigned URL freshly signed by status" yes \
    "$( (($(amzdate "$url") > $(amzdate "$(zt_field c-full url)"))) && echo yes)"
zt_check "GET through the presigned URL (plain curl)" 200 \
    "$(curl -s -o "$ZT_TMP/full.png" -w '%{http_code}' --max-time 10 "$url")"
params=$(python3 - "$ZT_TMP/full.png" <<'EOF'
import struct, sys
d = open(sys.argv[1], "rb").read()
i = 8
while i < len(d):
    n, t = struct.unpack(">I4s", d[i:i + 8])
    b = d[i + 8:i + 8 + n]
    if t == b"iTXt":
        k, r = b.split(b"\0", 1)
        if k == b"parameters" and r[0] == 0:
            print(r[2:].split(b"\0", 2)[2].decode(), end="")
    i += 12 + n
EOF
)
zt_check "PNG parameters" "a red fox
Negative prompt: blurry
Steps: 2, Sampler: flow-euler, CFG scale: 2.5, Seed: 18446744073709551615, Size: 64x80, Model: tiny-zimage, Version: $(j "$ZT_TMP/st.json" version)" "$params"
empty=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
curl -s -I --max-time 10 --aws-sigv4 "aws:amz:${ZI_S3_REGION:-us-east-1}:s3" \
    --user "$ZI_S3_ACCESS_KEY:$ZI_S3_SECRET_KEY" -H "x-amz-content-sha256: $empty" \
    "$ZI_S3_ENDPOINT/$ZI_S3_BUCKET/$key" | tr -d '\r' >"$ZT_TMP/head"
hdr() { awk -v h="$1" 'tolower($1) == tolower(h) ":" {print $2}' "$ZT_TMP/head"; }
zt_check "signed HEAD status" 200 "$(awk 'NR == 1 {print $2}' "$ZT_TMP/head")"
zt_check "Content-Type" image/png "$(hdr content-type)"
zt_check "x-amz-meta-job-id" c-full "$(hdr x-amz-meta-job-id)"
zt_check "x-amz-meta-seed" 18446744073709551615 "$(hdr x-amz-meta-seed)"

# ---- produced directly: unknown fields ignored, empty prompt, guidance 0 + negative ----
kcat -b "$ZI_KAFKA_BOOTSTRAP" -P -t "$ZT_TOPIC" -k c-raw <<<'{"job_id":"c-raw","prompt":"","negative_prompt":"unused","steps":1,"seed":9007199254740991,"x_unknown":{"a":[1,2]},"priority":"high"}'
zt_wait_status c-raw succeeded 30
zt_check "c-raw seed 2^53-1" 9007199254740991 "$(zt_field c-raw seed)"
curl -s -o "$ZT_TMP/raw.png" --max-time 10 "$(zt_url c-raw)"
zt_check "empty prompt, no negative prompt at guidance 0" "
Steps: 1, Sampler: flow-euler, CFG scale: 0.0, Seed: 9007199254740991, Size: 64x64, Model: tiny-zimage, Version: $(zt_field c-raw version)" \
    "$(python3 -c '
import struct, sys
d = open(sys.argv[1], "rb").read(); i = 8
while i < len(d):
    n, t = struct.unpack(">I4s", d[i:i + 8]); b = d[i + 8:i + 8 + n]
    if t == b"iTXt" and b.startswith(b"parameters\0"): print(b.split(b"\0", 4)[4].decode(), end="")
    i += 12 + n' "$ZT_TMP/raw.png")"

# ---- while a job runs: lease, worker hash; then cancel ----
zt_submit --job-id c-cancel --prompt "slow" --steps 40 >/dev/null
for _ in $(seq 100); do
    [[ $(zt_field c-cancel step) -ge 1 ]] 2>/dev/null && break
    sleep 0.1
done
zt_check "lease holder while running" w1 "$(zt_redis GET "${ZT_PREFIX}lease:c-cancel")"
zt_check_ge "lease expires (PTTL > 0)" 1 "$(zt_redis PTTL "${ZT_PREFIX}lease:c-cancel")"
wh=$(zt_redis HGETALL "${ZT_PREFIX}worker:w1" | paste - - | awk -F'\t' '{print $1}' | sort | tr '\n' ' ')
# (the contract's fields and one extension, `instance`: docs/contract.md)
zt_check "worker hash fields" "$(tr ' ' '\n' <<<"alloc_allocated_bytes alloc_peak_bytes alloc_reserved_bytes backend current_job gpu_name heartbeat_at instance jobs_failed jobs_succeeded model state version vram_free_bytes vram_total_bytes" | sort | tr '\n' ' ')" "$wh"
zt_check "worker state busy" busy "$(zt_redis HGET "${ZT_PREFIX}worker:w1" state)"
zt_check "worker current_job" c-cancel "$(zt_redis HGET "${ZT_PREFIX}worker:w1" current_job)"
ttl=$(zt_redis TTL "${ZT_PREFIX}worker:w1")
zt_check "worker hash TTL within 3 x heartbeat_s" yes "$( ((ttl >= 1 && ttl <= 3)) && echo yes)"
zt_check "metrics: zimage_worker_busy while running" 1 "$(zt_metric w1 zimage_worker_busy)"
zt_redis SET "${ZT_PREFIX}cancel:c-cancel" 1 >/dev/null
zt_wait_status c-cancel cancelled 15
zt_check "no lease after the final state" 0 "$(zt_redis EXISTS "${ZT_PREFIX}lease:c-cancel")"
zt_check "cancelled: error_code empty" "" "$(zt_field c-cancel error_code)"

# ---- a failure: submit --wait and status exit codes ----
rc=0
zt_submit --job-id c-late --prompt "late" --deadline-ms 1000 --wait >"$ZT_TMP/late.out" 2>&1 || rc=$?
zt_check "submit --wait exit for a failed job is not 0" yes "$( ((rc != 0)) && echo yes)"
zt_check "c-late error_code" expired "$(zt_field c-late error_code)"
zt_check "c-late hash keeps the job's size" 64x64 "$(zt_field c-late width)x$(zt_field c-late height)"
rc=0
"$ZI_BINARY" status --config "$ZT_CFG" no-such-job >"$ZT_TMP/unk.out" 2>"$ZT_TMP/unk.err" || rc=$?
zt_check "status of an unknown job: exit" 1 "$rc"
zt_check "status of an unknown job: one error line" "1 yes" \
    "$(wc -l <"$ZT_TMP/unk.err") $(grep -q '^zimage: error: ' "$ZT_TMP/unk.err" && echo yes)"
zt_check "status of an unknown job: nothing on stdout" "" "$(cat "$ZT_TMP/unk.out")"

# ---- Redis layout ----
ttl=$(zt_redis TTL "${ZT_PREFIX}job:c-full")
zt_check "job hash TTL = job_ttl_s" yes "$( ((ttl > 3500 && ttl <= 3600)) && echo yes)"
zt_check "events of c-full" "c-full queued - c-full running - c-full succeeded -" \
    "$(zt_events | grep '^c-full ' | tr '\n' ' ' | sed 's/ $//')"
zt_check "failure event with error_code" "c-late failed expired" "$(zt_events | grep '^c-late failed' || true)"
evw=$(python3 - "$ZI_REDIS_PORT" "${ZT_PREFIX}events" <<'EOF'
import socket, sys
s = socket.create_connection(("127.0.0.1", int(sys.argv[1]))); f = s.makefile("rb")
a = [b"XRANGE", sys.argv[2].encode(), b"-", b"+"]
s.sendall(b"*%d\r\n" % len(a) + b"".join(b"$%d\r\n%s\r\n" % (len(x), x) for x in a))
def rd():
    l = f.readline().rstrip(b"\r\n"); t, r = l[:1], l[1:]
    if t == b"*": return [rd() for _ in range(int(r))]
    if t == b"$": return f.read(int(r) + 2)[:-2].decode()
    return r.decode()
n = 0
for _id, kv in rd():
    d = dict(zip(kv[0::2], kv[1::2]))
    n += d["status"] != "queued" and d.get("worker") != "w1"
print(n)
EOF
)
zt_check "worker events name the worker" 0 "$evw"
zt_check_ge "workers zset has w1 with a recent heartbeat (ms)" $(($(date +%s%3N) - 10000)) \
    "$(zt_redis ZSCORE "${ZT_PREFIX}workers" w1)"
zt_check "no key of this test outside key_prefix" "" \
    "$(zt_redis --scan | grep -E ':(job|lease|cancel):c-(full|raw|cancel|late)$|:worker:w1$' | grep -v '^zt:' || true)"

# ---- result messages ----
for _ in $(seq 50); do # produced just after the hash is written
    res=$(zt_consume "$ZT_RESULTS" '%k\t%s\n')
    (($(grep -c . <<<"$res") >= 4)) && break
    sleep 0.2
done
zt_check "result key = job_id, every field" "c-cancel c-full c-late c-raw" "$(python3 -c '
import json, sys
ok = []
for line in sys.stdin:
    k, v = line.rstrip("\n").split("\t", 1)
    o = json.loads(v)
    need = ["job_id", "status", "s3_key", "url", "error_code", "error", "seed", "duration_ms", "worker"]
    if o.get("job_id") == k and all(f in o for f in need) and o["worker"] == "w1":
        ok.append(k)
print(" ".join(sorted(ok)))' <<<"$res")"
zt_check "result of c-late" "failed expired" "$(python3 -c '
import json, sys
for line in sys.stdin:
    o = json.loads(line.split("\t", 1)[1])
    if o["job_id"] == "c-late": print(o["status"], o["error_code"])' <<<"$res")"

# ---- metrics ----
curl -s --max-time 2 "http://127.0.0.1:$port/metrics" >"$ZT_TMP/metrics"
for m in 'zimage_jobs_total{outcome="succeeded"} 2' 'zimage_job_duration_seconds_count 2' \
    'zimage_job_duration_seconds_bucket{le="+Inf"} 2' 'zimage_step_duration_seconds_bucket{le="+Inf"}' \
    'zimage_step_duration_seconds_sum' 'zimage_consumer_lag' 'zimage_worker_busy 0' \
    'zimage_gpu_memory_bytes{kind="reserved"}' 'zimage_gpu_memory_bytes{kind="allocated"}' \
    'zimage_gpu_memory_bytes{kind="peak"}' 'zimage_gpu_memory_bytes{kind="total"}' \
    'zimage_gpu_memory_bytes{kind="free"}'; do
    zt_check "metric $m" yes "$(grep -qF "$m" "$ZT_TMP/metrics" && echo yes)"
done
zt_check "histogram types" 2 "$(grep -cE '^# TYPE zimage_(job|step)_duration_seconds histogram' "$ZT_TMP/metrics")"

# ---- secrets nowhere ----
zt_kill w1 TERM
zt_wait_exit w1 30
zt_check "exit status after SIGTERM" 0 "$ZT_RC"
{
    for k in $(zt_redis --scan --pattern "${ZT_PREFIX}*"); do
        case $(zt_redis TYPE "$k") in
        hash) zt_redis HGETALL "$k" ;;
        string) zt_redis GET "$k" ;;
        stream) zt_redis XRANGE "$k" - + ;;
        zset) zt_redis ZRANGE "$k" 0 -1 WITHSCORES ;;
        esac
    done
} >"$ZT_TMP/redis.dump"
zt_check_ge "Redis dump has the jobs" 4 "$(grep -c '^c-' "$ZT_TMP/redis.dump" || true)"
zt_check "secret not in Redis" 0 "$(grep -cF "$secret" "$ZT_TMP/redis.dump" || true)"
zt_check "secret not in the log" 0 "$(grep -cF "$secret" "$ZT_TMP/w1.log" || true)"
zt_check "secret not in /metrics" 0 "$(grep -cF "$secret" "$ZT_TMP/metrics" || true)"
zt_check "secret not in the DLQ" 0 "$(zt_consume "$ZT_DLQ" '%k %h %s\n' | grep -cF "$secret" || true)"
zt_check "secret not in results" 0 "$(grep -cF "$secret" <<<"$res" || true)"
zt_finish
