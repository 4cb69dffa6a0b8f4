#!/usr/bin/env bash
# test_worker_s3_faults.sh - S3 failures during a job (stops and restarts the shared
# stack's gateway; run-all.sh runs fault tests one at a time).
#
# 1. The gateway is stopped while a job computes and started again 10 s later: the upload
#    is retried (s3.retry_s = 60) and the job succeeds in its first attempt, one object.
# 2. A worker with a wrong S3 secret: the job fails `failed` / `s3_auth` within seconds,
#    without retrying (403 is permanent), is copied to the DLQ, and the worker goes on.
# 3. SIGTERM while a job's check for an earlier upload retries against a stopped gateway
#    (before its run): the worker leaves the job at once (exit 0, not after s3.retry_s),
#    uncommitted and not counted; with the gateway back the next worker runs it once.
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
t0=$(date +%s%3N)
zt_submit --job-id auth-1 --prompt "wrong secret" --steps 1 >/dev/null
zt_wait_status auth-1 failed 30
t1=$(date +%s%3N)
zt_check "auth-1 error_code" s3_auth "$(zt_field auth-1 error_code)"
zt_check "auth-1 error names the HTTP status" yes "$(zt_field auth-1 error | grep -q 403 && echo yes)"
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
zt_finish
