#!/usr/bin/env bash
# test_stack_s3.sh - the local stack's S3 (Ceph RADOS Gateway) checks SigV4 for real:
# a signed PUT and GET round-trip an object byte for byte; the same PUT signed with a wrong
# secret is refused with 403 SignatureDoesNotMatch; a body that does not match its signed
# x-amz-content-sha256 is refused with 400 XAmzContentSHA256Mismatch.
#
# Addresses and keys come from the variables `deploy/local/stack.sh env` prints
# (tests/run-all.sh exports them). A missing variable fails the test.
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "$0")/../lib.sh"

zt_require_env ZI_S3_ENDPOINT ZI_S3_BUCKET ZI_S3_ACCESS_KEY ZI_S3_SECRET_KEY

zt_scratch stacks3
tmp=$ZT_TMP

# A binary body with every byte value, so nothing is lost in transit.
python3 -c 'import os,sys; sys.stdout.buffer.write(bytes(range(256)) * 64 + os.urandom(1000))' \
    >"$tmp/body"
sha=$(sha256sum "$tmp/body" | cut -d' ' -f1)
key="zitest/stack-$$-$(date +%s%N).bin"
url="$ZI_S3_ENDPOINT/$ZI_S3_BUCKET/$key"

s3() { # SECRET curl-args...: one SigV4-signed request; prints the HTTP status
    local secret=$1
    shift
    zt_s3 "$ZI_S3_ACCESS_KEY:$secret" -o "$tmp/resp" -w '%{http_code}' "$@"
}

code=$(s3 "$ZI_S3_SECRET_KEY" -X PUT -H "x-amz-content-sha256: $sha" \
    -H 'Content-Type: application/octet-stream' --data-binary @"$tmp/body" "$url")
zt_check "signed PUT" 200 "$code"

empty=$ZT_EMPTY_SHA256
code=$(s3 "$ZI_S3_SECRET_KEY" -H "x-amz-content-sha256: $empty" "$url")
zt_check "signed GET" 200 "$code"
zt_check "GET body equals PUT body" "$sha" "$(sha256sum "$tmp/resp" | cut -d' ' -f1)"

code=$(s3 "${ZI_S3_SECRET_KEY}x" -X PUT -H "x-amz-content-sha256: $sha" \
    --data-binary @"$tmp/body" "$url.wrong")
zt_check "PUT with a wrong secret" 403 "$code"
zt_check "wrong secret error code" yes "$(grep -q SignatureDoesNotMatch "$tmp/resp" && echo yes)"
code=$(s3 "$ZI_S3_SECRET_KEY" -H "x-amz-content-sha256: $empty" "$url.wrong")
zt_check "nothing stored by the refused PUT" 404 "$code"

code=$(s3 "$ZI_S3_SECRET_KEY" -X PUT -H "x-amz-content-sha256: $empty" \
    --data-binary @"$tmp/body" "$url.badhash")
zt_check "PUT whose body does not match its signed hash" 400 "$code"

code=$(s3 "$ZI_S3_SECRET_KEY" -X DELETE -H "x-amz-content-sha256: $empty" "$url")
zt_check "signed DELETE" 204 "$code"

zt_finish S3
