#!/usr/bin/env bash
# test_stack_restart.sh - the stack's fault sub-steps that other fault tests rely on:
# `stack.sh stop-redis` makes Redis unreachable and `start-redis` brings it back on the same
# port (empty); `stop-rgw` makes S3 unreachable and `start-rgw` brings it back on the same
# port with its objects and credentials intact.
#
# Runs against the stack named by ZI_STACK_DIR (exported by `stack.sh env`); fails when the
# variables are missing. Leaves the stack as it found it (all services running).
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "$0")/../lib.sh"

zt_require_env ZI_STACK_DIR ZI_REDIS_PORT ZI_S3_ENDPOINT ZI_S3_BUCKET ZI_S3_ACCESS_KEY \
    ZI_S3_SECRET_KEY
STACK=${ZI_SOURCE_DIR:-$(cd "$(dirname "$0")/../.." && pwd)}/deploy/local/stack.sh
EMPTY=$ZT_EMPTY_SHA256

zt_scratch stackrestart
tmp=$ZT_TMP
# Whatever happens, hand the stack back with every service running.
restore_stack() {
    "$STACK" start-redis >/dev/null 2>&1 || true
    "$STACK" start-rgw >/dev/null 2>&1
}
zt_on_exit restore_stack
s3() { # curl-args...: a signed request; prints the HTTP status (000: no connection)
    zt_s3 "$ZI_S3_ACCESS_KEY:$ZI_S3_SECRET_KEY" --max-time 10 -o "$tmp/resp" -w '%{http_code}' \
        "$@" || true
}
ping() { redis-cli -p "$ZI_REDIS_PORT" ping 2>/dev/null || true; }

# ---- Redis ----
zt_check "redis answers" PONG "$(ping)"
redis-cli -p "$ZI_REDIS_PORT" set zitest:restart 1 >/dev/null
"$STACK" stop-redis
zt_check "redis down after stop-redis" "" "$(ping)"
"$STACK" start-redis
zt_check "redis back on the same port" PONG "$(ping)"
zt_check "redis came back empty" "" "$(redis-cli -p "$ZI_REDIS_PORT" get zitest:restart)"

# ---- S3 ----
printf 'survives a gateway restart\n' >"$tmp/body"
sha=$(sha256sum "$tmp/body" | cut -d' ' -f1)
url="$ZI_S3_ENDPOINT/$ZI_S3_BUCKET/zitest/restart-$$.txt"
zt_check "PUT before stop" 200 "$(s3 -X PUT -H "x-amz-content-sha256: $sha" --data-binary @"$tmp/body" "$url")"
"$STACK" stop-rgw
zt_check "S3 unreachable after stop-rgw" 000 "$(s3 -H "x-amz-content-sha256: $EMPTY" "$url")"
"$STACK" start-rgw
zt_check "GET after start-rgw" 200 "$(s3 -H "x-amz-content-sha256: $EMPTY" "$url")"
zt_check "object intact" "$sha" "$(sha256sum "$tmp/resp" | cut -d' ' -f1)"
s3 -X DELETE -H "x-amz-content-sha256: $EMPTY" "$url" >/dev/null
zt_finish restart
