#!/usr/bin/env bash
# test_stack_s3.sh - the local stack's S3 (Ceph RADOS Gateway) checks SigV4 for real:
# a signed PUT and GET round-trip an object byte for byte; the same PUT signed with a wrong
# secret is refused with 403 SignatureDoesNotMatch; a body that does not match its signed
# x-amz-content-sha256 is refused with 400 XAmzContentSHA256Mismatch.
#
# Addresses and keys come from the variables `deploy/local/stack.sh env` prints
# (tests/run-all.sh exports them). A missing variable fails the test.
set -euo pipefail

for v in ZI_S3_ENDPOINT ZI_S3_BUCKET ZI_S3_ACCESS_KEY ZI_S3_SECRET_KEY; do
    if [[ -z ${!v:-} ]]; then
        echo "FAIL: $v is not set: run through 'make test', or" \
            "eval \"\$(deploy/local/stack.sh env)\" after 'deploy/local/stack.sh up'" >&2
        exit 1
    fi
done
REGION=${ZI_S3_REGION:-us-east-1}

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
fails=0
check() { # NAME EXPECTED ACTUAL
    if [[ $2 == "$3" ]]; then
        echo "ok   $1"
    else
        echo "FAIL $1: expected '$2', got '$3'" >&2
        fails=$((fails + 1))
    fi
}

# A binary body with every byte value, so nothing is lost in transit.
python3 -c 'import os,sys; sys.stdout.buffer.write(bytes(range(256)) * 64 + os.urandom(1000))' \
    >"$tmp/body"
sha=$(sha256sum "$tmp/body" | cut -d' ' -f1)
key="zitest/stack-$$-$(date +%s%N).bin"
url="$ZI_S3_ENDPOINT/$ZI_S3_BUCKET/$key"

s3() { # SECRET curl-args...: one SigV4-signed request; prints the HTTP status
    local secret=$1
    shift
    curl -s --max-time 30 -o "$tmp/resp" -w '%{http_code}' --aws-sigv4 "aws:amz:$REGION:s3" \
        --user "$ZI_S3_ACCESS_KEY:$secret" "$@"
}

code=$(s3 "$ZI_S3_SECRET_KEY" -X PUT -H "x-amz-content-sha256: $sha" \
    -H 'Content-Type: application/octet-stream' --data-binary @"$tmp/body" "$url")
check "signed PUT" 200 "$code"

empty=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855
code=$(s3 "$ZI_S3_SECRET_KEY" -H "x-amz-content-sha256: $empty" "$url")
check "signed GET" 200 "$code"
check "GET body equals PUT body" "$sha" "$(sha256sum "$tmp/resp" | cut -d' ' -f1)"

code=$(s3 "${ZI_S3_SECRET_KEY}x" -X PUT -H "x-amz-content-sha256: $sha" \
    --data-binary @"$tmp/body" "$url.wrong")
check "PUT with a wrong secret" 403 "$code"
check "wrong secret error code" yes "$(grep -q SignatureDoesNotMatch "$tmp/resp" && echo yes)"
code=$(s3 "$ZI_S3_SECRET_KEY" -H "x-amz-content-sha256: $empty" "$url.wrong")
check "nothing stored by the refused PUT" 404 "$code"

code=$(s3 "$ZI_S3_SECRET_KEY" -X PUT -H "x-amz-content-sha256: $empty" \
    --data-binary @"$tmp/body" "$url.badhash")
check "PUT whose body does not match its signed hash" 400 "$code"

code=$(s3 "$ZI_S3_SECRET_KEY" -X DELETE -H "x-amz-content-sha256: $empty" "$url")
check "signed DELETE" 204 "$code"

if ((fails)); then
    echo "$fails check(s) failed" >&2
    exit 1
fi
echo "all S3 checks passed"
