#!/usr/bin/env bash
# test_worker_identity.sh - worker.id must be unique, and a second process with the same id
# is reported (docs/worker.md): each heartbeat reads back the `instance` token of the worker
# hash; another process's token there means another worker writes under this id.
#
# 1. Two workers started with the same worker.id: both log the conflict (an error naming
#    the id) within a few heartbeats, and zimage_worker_id_conflicts_total counts it.
# 2. A worker restarted with that id after both were killed (a crash: their hash and
#    token are still in Redis) is not a conflict: no such log line, the counter stays 0,
#    and it runs a job.
source "$(dirname "$0")/worker_lib.sh"
zt_init identity
zt_config
CONFLICT='another process runs with worker.id w-same'

# ---- 1. two processes, one id ----
zt_start_worker a ZIMAGE_WORKER_ID=w-same
zt_wait_log a 'consuming' 30
zt_start_worker b ZIMAGE_WORKER_ID=w-same
zt_wait_log b "$CONFLICT" 20
zt_wait_log a "$CONFLICT" 20
zt_check_ge "a counted the conflict" 1 "$(zt_metric a zimage_worker_id_conflicts_total)"
zt_check_ge "b counted the conflict" 1 "$(zt_metric b zimage_worker_id_conflicts_total)"
zt_check "the worker hash names one of them" yes \
    "$(zt_redis HGET "${ZT_PREFIX}worker:w-same" instance | grep -qE '^[0-9a-f]{32}$' && echo yes)"

# ---- 2. a restart after a crash is not a conflict ----
zt_kill a KILL
zt_kill b KILL
zt_start_worker c ZIMAGE_WORKER_ID=w-same
zt_wait_log c 'assigned' 30
zt_submit --job-id ident-1 --prompt "one worker again" >/dev/null
zt_wait_status ident-1 succeeded 60
sleep 3 # a few more heartbeats (heartbeat_s 1)
zt_check "c logged no conflict" "" "$(grep "$CONFLICT" "$ZT_TMP/c.log" || true)"
zt_check "c's conflict counter" 0 "$(zt_metric c zimage_worker_id_conflicts_total)"
zt_kill c TERM
zt_wait_exit c 30
zt_check "c exit status" 0 "$ZT_RC"
zt_finish
