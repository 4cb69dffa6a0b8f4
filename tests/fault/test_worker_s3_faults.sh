#!/usr/bin/env bash
# test_worker_s3_faults.sh - S3 failures during a job (stops and restarts the shared
# stack's gateway; run-all.sh runs fault tests one at a time).
#
# 1. The gateway is stopped while a job computes and started again 10 s later: the upload
#    is retried (s3.retry_s = 60) and the job succeeds in its first attempt, one object.
# 2. A worker with a wrong S3 secret says so in its log at start; the job fails `failed` /
#    `s3_auth` within seconds, without retrying (403 is permanent), is copied to the DLQ, and
#    the worker goes on.
# 3. SIGTERM while a job's check for an earlier upload retries against a stopped gateway
#    (before its run): the worker leaves the job at once (exit 0, not after s3.retry_s),
#    uncommitted and not counted; with the gateway back the next worker runs it once.
# 4. Least-privilege credentials (s3:GetObject and s3:PutObject, no s3:ListBucket, as many
#    AWS policies grant): S3 answers the HEAD of a missing object with 403, which must not
#    read as refused credentials - the jobs succeed, and the worker says once why.
source "$(dirname "$0")/../integration/worker_lib.sh"
zt_init s3faults
ZT_STEPS=8 zt_config
STACK=$ZT_REPO/deploy/local/stack.sh
rgw_down=0
restore_rgw() { ((rgw_down == 0)) || "$STACK" start-rgw; }
zt_on_exit restore_rgw

zt_start_worker w1 ZIMAGE_FAULT_STEP_DELAY_MS=300
zt_wait_log w1 'assigned' 30

# ---- 1. gateway down for 10 s during the upload ----
zt_submit --job-id outage-1 --prompt "upload through an outage" >/dev/null
zt_wait_step outage-1 5 30 || true
zt_check "outage-1 computing when the gateway stops" running "$(zt_field outage-1 status)"
rgw_down=1
"$STACK" stop-rgw
t_stop=$(date +%s%3N)
sleep 10
"$STACK" start-rgw
rgw_down=0
zt_wait_status outage-1 succeeded 90
zt_check "outage-1 attempts (S3 retries do not count)" 1 "$(zt_field outage-1 attempt)"
finished=$(zt_field outage-1 finished_at)
zt_check_ge "outage-1 finished after the gateway came back (ms after the stop)" 9000 \
    "$((finished - t_stop))"
zt_check "outage-1 object" "$ZT_KEYDIR/outage-1.png" "$(zt_s3_keys)"
zt_check "outage-1 upload retried" yes \
    "$(grep -q 'S3 upload of .*outage-1.png took' "$ZT_TMP/w1.log" && echo yes || echo no)"

# ---- 2. wrong secret: s3_auth, fast, no endless retries ----
zt_kill w1 TERM
zt_wait_exit w1 30
zt_check "w1 exit status" 0 "$ZT_RC"
zt_start_worker w2 ZIMAGE_S3_SECRET_KEY=wrong-secret-0000000000000000000000000
zt_wait_log w2 'assigned' 30
zt_wait_log w2 'S3 refused the credentials at start \(.*SignatureDoesNotMatch' 30
t0=$(date +%s%3N)
zt_submit --job-id auth-1 --prompt "wrong secret" --steps 1 >/dev/null
zt_wait_status auth-1 failed 30
t1=$(date +%s%3N)
zt_check "auth-1 error_code" s3_auth "$(zt_field auth-1 error_code)"
zt_check "auth-1 error names the HTTP status" yes "$(zt_field auth-1 error | grep -q 403 && echo yes)"
zt_check "auth-1 error names S3's reason" yes \
    "$(zt_field auth-1 error | grep -q SignatureDoesNotMatch && echo yes)"
zt_check_ge "auth-1 failed within 10 s (no retry loop; ms left)" 0 "$((10000 - (t1 - t0)))"
for _ in $(seq 50); do
    dlq=$(zt_consume "$ZT_DLQ" '%k|%h\n')
    [[ -n $dlq ]] && break
    sleep 0.2
done
zt_check "auth-1 copied to the DLQ" yes "$(grep -q '^auth-1|.*zimage-error-code=s3_auth' <<<"$dlq" && echo yes)"
zt_check "no object for auth-1" "" "$(zt_s3_keys | grep auth-1 || true)"
zt_check "w2 still consuming" 200 "$(zt_readyz w2)"
zt_kill w2 TERM
zt_wait_exit w2 30
zt_check "w2 exit status" 0 "$ZT_RC"

# ---- 3. the drain begins while the pre-run S3 check retries ----
zt_start_worker w3
zt_wait_log w3 'assigned' 30
rgw_down=1
"$STACK" stop-rgw
zt_submit --job-id head-1 --prompt "checked while S3 is down" >/dev/null
zt_wait_log w3 'job_id=head-1 job received' 30
sleep 2 # the HEAD of an earlier upload is retrying now
zt_term_timed w3 30
zt_check "w3 exit status" 0 "$ZT_RC"
zt_check_ge "w3 left within 5 s, not after s3.retry_s (ms left)" 0 "$((5000 - ZT_MS))"
zt_check "head-1 not run" "queued 0" "$(zt_field head-1 status) $(zt_field head-1 attempt)"
"$STACK" start-rgw
rgw_down=0
zt_start_worker w4
zt_wait_status head-1 succeeded 60
zt_check "head-1 run once, by w4" "w4 1" "$(zt_field head-1 worker) $(zt_field head-1 attempt)"
zt_kill w4 TERM
zt_wait_exit w4 30
zt_check "w4 exit status" 0 "$ZT_RC"

# ---- 4. credentials that may read and write objects but not list the bucket ----
zt_s3_putget
lp_head() { # CREDENTIALS KEY: the HTTP status of a HEAD
    zt_s3 "$1" -I -o /dev/null -w '%{http_code}' -H "x-amz-content-sha256: $ZT_EMPTY_SHA256" \
        "$ZI_S3_ENDPOINT/$ZT_PUTGET_BUCKET/$2"
}
zt_check "putget: a missing object reads 403, not 404" 403 \
    "$(lp_head "$ZT_PUTGET_KEYS" "$ZT_KEYDIR/none.png")"
zt_start_worker w5 ZIMAGE_S3_BUCKET=$ZT_PUTGET_BUCKET ZIMAGE_S3_ACCESS_KEY="${ZT_PUTGET_KEYS%%:*}" \
    ZIMAGE_S3_SECRET_KEY="${ZT_PUTGET_KEYS#*:}"
zt_wait_log w5 'assigned' 30
zt_submit --job-id putget-1 --prompt "no list permission" --steps 1 >/dev/null
zt_submit --job-id putget-2 --prompt "no list permission, again" --steps 1 >/dev/null
zt_wait_status putget-1 succeeded 60
zt_wait_status putget-2 succeeded 60
zt_check "putget-1 run once" 1 "$(zt_field putget-1 attempt)"
# (the uploader owns the object: the bucket owner cannot read it without an ACL)
zt_check "putget-1 object in the bucket, read by its uploader: 200" 200 \
    "$(lp_head "$ZT_PUTGET_KEYS" "$ZT_KEYDIR/putget-1.png")"
zt_check "w5 says once why a HEAD's 403 is no error" 1 \
    "$(grep -c 'lack s3:ListBucket on bucket zimage-putget' "$ZT_TMP/w5.log")"
zt_kill w5 TERM
zt_wait_exit w5 30
zt_check "w5 exit status" 0 "$ZT_RC"
zt_finish
