#!/usr/bin/env bash
# test_stack_lifecycle.sh - deploy/local/stack.sh itself: a second stack comes up in its own
# directory beside the one under test (other ports, other keys), `status` and `env` describe
# it, its gateway refuses the first stack's keys, and `down` stops every process it recorded
# (none left, not even as a zombie) in bounded time; afterwards `env` fails.
#
# Needs ZI_BINARY (set by ctest) for the broker and the first stack's variables (from
# `stack.sh env`) to compare against; a missing variable fails the test.
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "$0")/../lib.sh"

zt_require_env ZI_BINARY ZI_S3_ENDPOINT ZI_REDIS_URL ZI_KAFKA_BOOTSTRAP ZI_S3_ACCESS_KEY \
    ZI_S3_SECRET_KEY
STACK=${ZI_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}/deploy/local/stack.sh
first_s3=$ZI_S3_ENDPOINT first_redis=$ZI_REDIS_URL first_kafka=$ZI_KAFKA_BOOTSTRAP
first_key=$ZI_S3_ACCESS_KEY first_secret=$ZI_S3_SECRET_KEY

zt_scratch stacklife
dir=$ZT_TMP
export ZI_STACK_DIR=$dir
stop_second() { "$STACK" down >/dev/null 2>&1; }
zt_on_exit stop_second

"$STACK" up || zt_die "second stack did not come up"
rc=0
"$STACK" status >"$dir/status.out" || rc=$?
zt_check "status exit 0 while up" 0 "$rc"
zt_check "status lists 5 running services" 5 "$(grep -c ' running ' "$dir/status.out")"

# Read the second stack's variables in a subshell, so ours keep describing the first.
second=$(
    eval "$("$STACK" env)"
    echo "$ZI_S3_ENDPOINT $ZI_REDIS_URL $ZI_KAFKA_BOOTSTRAP $ZI_S3_ACCESS_KEY $ZI_S3_SECRET_KEY $ZIMAGE_S3_ENDPOINT $ZIMAGE_REDIS_URL $ZIMAGE_KAFKA_BOOTSTRAP_SERVERS $AWS_ACCESS_KEY_ID"
)
read -r s3 redis kafka key secret zs3 zredis zkafka awskey <<<"$second"
zt_check "other S3 port" yes "$([[ $s3 != "$first_s3" ]] && echo yes)"
zt_check "other Redis port" yes "$([[ $redis != "$first_redis" ]] && echo yes)"
zt_check "other Kafka port" yes "$([[ $kafka != "$first_kafka" ]] && echo yes)"
zt_check "other keys" yes "$([[ $key != "$first_key" ]] && echo yes)"
zt_check "ZIMAGE_ overrides match" "$s3 $redis $kafka $key" "$zs3 $zredis $zkafka $awskey"
list_bucket() { # ACCESS:SECRET -> HTTP status of listing the second stack's bucket
    ZI_S3_REGION=us-east-1 zt_s3 "$1" -o /dev/null -w '%{http_code}' --max-time 10 \
        -H "x-amz-content-sha256: $ZT_EMPTY_SHA256" "$s3/zimage"
}
zt_check "own keys list own bucket" 200 "$(list_bucket "$key:$secret")"
zt_check "the first stack's keys are refused" 403 "$(list_bucket "$first_key:$first_secret")"

pids=$(awk '{print $1}' "$dir"/pids/*.pid)
zt_check "5 PIDs recorded" 5 "$(wc -w <<<"$pids")"
t0=$(date +%s%3N)
"$STACK" down
ms=$(($(date +%s%3N) - t0))
echo "down took $ms ms"
# The target is 5 s (measured ~2 s); the bound leaves room for a loaded CI machine.
zt_check "down within 8 s" yes "$( ((ms <= 8000)) && echo yes)"
left=0
for p in $pids; do [[ -e /proc/$p ]] && left=$((left + 1)); done
zt_check "no recorded process left" 0 "$left"
rc=0
"$STACK" env >/dev/null 2>&1 || rc=$?
zt_check "env fails after down" 1 "$rc"

zt_finish lifecycle
