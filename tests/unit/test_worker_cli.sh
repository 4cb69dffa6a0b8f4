#!/usr/bin/env bash
# test_worker_cli.sh - the command-line contract of `zimage worker`, `submit` and `status`
# without any service: --help (exit 0, usage on stdout), usage errors (exit 2, one
# "zimage: error:" line), a bad config key (exit 2, the key named), --print-config with
# secrets redacted, and jobs that the worker would refuse rejected by submit (exit 2).
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "$0")/../lib.sh"

ZI_BINARY=${ZI_BINARY:?ZI_BINARY is not set (ctest sets it)}
zt_scratch workercli
tmp=$ZT_TMP
run() { # ARGS... -> sets rc, out, err
    rc=0
    "$ZI_BINARY" "$@" >"$tmp/out" 2>"$tmp/err" || rc=$?
    out=$(cat "$tmp/out")
    err=$(cat "$tmp/err")
}
# Nothing may reach a real service: point everything at closed ports.
export ZIMAGE_KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:1 ZIMAGE_REDIS_URL=redis://127.0.0.1:1/0
export ZIMAGE_S3_ENDPOINT=http://127.0.0.1:1
cat >"$tmp/good.yaml" <<EOF
generation:
  max_side: 1024
  max_pixels: 1048576
EOF
printf 'kafka:\n  topik: x\n' >"$tmp/badkey.yaml"
printf 'worker:\n  heartbeat_s: abc\n' >"$tmp/badtype.yaml"

for c in worker submit status; do
    run "$c" --help
    zt_check "$c --help exit" 0 "$rc"
    zt_check "$c --help usage on stdout" yes "$(grep -q "^usage: zimage $c" <<<"$out" && echo yes)"
    run "$c" --bogus
    zt_check "$c --bogus exit" 2 "$rc"
    zt_check "$c --bogus error line" yes "$(grep -q '^zimage: error: ' <<<"$err" && echo yes)"
done

run worker
zt_check "worker without --config" 2 "$rc"
run worker --config "$tmp/missing.yaml"
zt_check "worker with a missing file" 2 "$rc"
run worker --config "$tmp/badkey.yaml"
zt_check "worker unknown key exit" 2 "$rc"
zt_check "worker unknown key named" yes "$(grep -q 'kafka.topik' <<<"$err" && echo yes)"
run worker --config "$tmp/badtype.yaml"
zt_check "worker wrong type exit" 2 "$rc"
zt_check "worker wrong type named" yes "$(grep -q 'heartbeat_s' <<<"$err" && echo yes)"
# a kafka.properties entry librdkafka refuses is a configuration error too (before any
# connection: the ports are closed)
printf 'kafka:\n  properties:\n    no.such.property: "1"\n' >"$tmp/badprop.yaml"
run worker --config "$tmp/badprop.yaml"
zt_check "worker refused kafka property exit" 2 "$rc"
zt_check "worker refused kafka property named" yes \
    "$(grep -q 'kafka.properties.no.such.property' <<<"$err" && echo yes)"
zt_check "worker refused kafka property: one error line" 1 "$(grep -c '^zimage: error: ' <<<"$err")"
ZIMAGE_S3_SECRET_KEY=supersecret-value ZIMAGE_REDIS_URL=redis://:hunter2pw@127.0.0.1:1/0 \
    run worker --config "$tmp/good.yaml" --print-config
zt_check "--print-config exit" 0 "$rc"
zt_check "--print-config shows settings" yes "$(grep -q 'max_side: 1024' <<<"$out" && echo yes)"
zt_check "--print-config hides the S3 secret" no "$(grep -q 'supersecret-value' <<<"$out$err" && echo yes || echo no)"
zt_check "--print-config hides the Redis password" no "$(grep -q 'hunter2pw' <<<"$out$err" && echo yes || echo no)"
zt_check "--print-config says redacted" yes "$(grep -q 'redacted' <<<"$out" && echo yes)"

run submit --config "$tmp/good.yaml"
zt_check "submit without --prompt" 2 "$rc"
for bad in "--width 17" "--width 2048" "--steps 0" "--steps 51" "--guidance 21" \
    "--seed -1" "--seed 18446744073709551616" "--job-id a/b" "--job-id a..b" "--width x" \
    "--guidance nan" "--guidance=inf"; do
    # shellcheck disable=SC2086
    run submit --config "$tmp/good.yaml" --prompt cat $bad
    zt_check "submit $bad exit" 2 "$rc"
    zt_check "submit $bad error line" yes "$(grep -q '^zimage: error: ' <<<"$err" && echo yes)"
done
# --name=value as well as --name value: the options are taken, the run gets as far as Redis
# (unreachable here: exit 1, not a usage error)
run submit --config="$tmp/good.yaml" --prompt=cat --width=64 --job-id=eq-1
zt_check "submit --name=value: exit" 1 "$rc"
zt_check "submit --name=value: got to Redis" yes "$(grep -q 'redis' <<<"$err" && echo yes)"
run submit --config "$tmp/badkey.yaml" --prompt cat
zt_check "submit bad config exit" 2 "$rc"
run status --config "$tmp/good.yaml"
zt_check "status without JOB_ID" 2 "$rc"
run status --config "$tmp/good.yaml" "a/b"
zt_check "status with an invalid id (no such job: exit 1)" 1 "$rc"
zt_check "status with an invalid id: error line" yes \
    "$(grep -q '^zimage: error: job a/b not found' <<<"$err" && echo yes)"
run status --config="$tmp/good.yaml"
zt_check "status --config=FILE without JOB_ID" 2 "$rc"
zt_check "status --config=FILE accepted (the error is the missing id)" yes \
    "$(grep -q 'JOB_ID is required' <<<"$err" && echo yes)"
run worker --config="$tmp/badkey.yaml"
zt_check "worker --config=FILE reads FILE" 2 "$rc"
run status --config "$tmp/good.yaml" job-1 extra
zt_check "status with two ids" 2 "$rc"

zt_finish
