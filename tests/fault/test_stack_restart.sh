#!/usr/bin/env bash
# test_stack_restart.sh - the stack's fault sub-steps that other fault tests rely on:
# `stack.sh stop-redis` makes Redis unreachable and `start-redis` brings it back on the same
# port (empty); `stop-rgw` makes S3 unreachable and `start-rgw` brings it back on the same
# port with its objects and credentials intact.
#
# Runs against the stack named by ZI_STACK_DIR (exported by `stack.sh env`); fails when the
# variables are missing. Leaves the stack as it found it (all services running).
set -euo pipefail

for v in ZI_STACK_DIR ZI_REDIS_PORT ZI_S3_ENDPOINT ZI_S3_BUCKET ZI_S3_ACCESS_KEY ZI_S3_SECRET_KEY; do
    if [[ -z ${!v:-} ]]; then
        echo "FAIL: $v is not set: run through 'make test', or" \
            "eval \"\$(deploy/local/stack.sh env)\" after 'deploy/local/stack.sh up'" >&2
        exit 1
    fi
done
STACK=${ZI_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}/deploy/local/stack.sh
REGION=${ZI_S3_REGION:-us-east-1}
EMPTY=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

tmp=$(mktemp -d)
# Whatever happens, hand the stack back with every service running.
trap '"$STACK" start-redis >/dev/null 2>&1 || true; "$STACK" start-rgw >/dev/null 2>&1 || true; rm -rf "$tmp"' EXIT
fails=0
check() { # NAME EXPECTED ACTUAL
    if [[ $2 == "$3" ]]; then
        echo "ok   $1"
    else
        echo "FAIL $1: expected '$2', got '$3'" >&2
        fails=$((fails + 1))
    fi
}
s3() { # curl-args...: a signed request; prints the HTTP status (000: no connection)
    curl -s --max-time 10 -o "$tmp/resp" -w '%{http_code}' --aws-sigv4 "aws:amz:$REGION:s3" \
        --user "$ZI_S3_ACCESS_KEY:$ZI_S3_SECRET_KEY" "$@" || true
}
ping() { redis-cli -p "$ZI_REDIS_PORT" ping 2>/dev/null || true; }

# ---- Redis ----
check "redis answers" PONG "$(ping)"
redis-cli -p "$ZI_REDIS_PORT" set zitest:restart 1 >/dev/null
"$STACK" stop-redis
check "redis down after stop-redis" "" "$(ping)"
"$STACK" start-redis
check "redis back on the same port" PONG "$(ping)"
check "redis came back empty" "" "$(redis-cli -p "$ZI_REDIS_PORT" get zitest:restart)"

# ---- S3 ----
printf 'survives a gateway restart\n' >"$tmp/body"
sha=$(sha256sum "$tmp/body" | cut -d' ' -f1)
url="$ZI_S3_ENDPOINT/$ZI_S3_BUCKET/zitest/restart-$$.txt"
check "PUT before stop" 200 "$(s3 -X PUT -H "x-amz-content-sha256: $sha" --data-binary @"$tmp/body" "$url")"
"$STACK" stop-rgw
check "S3 unreachable after stop-rgw" 000 "$(s3 -H "x-amz-content-sha256: $EMPTY" "$url")"
"$STACK" start-rgw
check "GET after start-rgw" 200 "$(s3 -H "x-amz-content-sha256: $EMPTY" "$url")"
check "object intact" "$sha" "$(sha256sum "$tmp/resp" | cut -d' ' -f1)"
s3 -X DELETE -H "x-amz-content-sha256: $EMPTY" "$url" >/dev/null

if ((fails)); then
    echo "$fails check(s) failed" >&2
    exit 1
fi
echo "all restart checks passed"
