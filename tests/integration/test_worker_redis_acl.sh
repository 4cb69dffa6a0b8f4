#!/usr/bin/env bash
# test_worker_redis_acl.sh - the Redis ACL that docs/operations.md gives a worker is enough:
# a user limited to the worker's key prefix and to the command categories listed there runs
# a job end to end (lease, attempt, status, events, heartbeat), and `submit`, `status`,
# `top` work with it too. A key outside the prefix or a command outside the categories would
# be refused (NOPERM) and fail the job or the tool.
source "$(dirname "$0")/worker_lib.sh"
zt_init redis_acl
zt_config

user="zt-acl-$ZT_RUN"
pass="pw-$ZT_RUN"
drop_user() { zt_redis ACL DELUSER "$user" >/dev/null 2>&1 || true; }
zt_on_exit drop_user
# The line of docs/operations.md ("Redis ACL"), with this test's key prefix.
acl=$(sed -n 's/^ACL SETUSER zimage-worker on >PASSWORD \(.*\)$/\1/p' "$ZT_REPO/docs/operations.md")
zt_check "operations.md has the ACL line" yes "$([[ -n $acl ]] && echo yes || echo no)"
acl=${acl//'~zimage:*'/"~${ZT_PREFIX}*"}
read -ra rules <<<"$acl" # words, never glob-expanded
zt_check "ACL user created" OK "$(zt_redis ACL SETUSER "$user" on ">$pass" "${rules[@]}")"
url="redis://$user:$pass@127.0.0.1:$ZI_REDIS_PORT/0"
zt_check "the user cannot read outside the prefix" yes \
    "$(redis-cli -u "$url" GET other:key 2>&1 | grep -q NOPERM && echo yes || echo no)"

# the worker with the user in the URL and the password from the environment (the form
# operations.md shows); the tools with both in the URL
zt_start_worker w1 ZIMAGE_REDIS_URL="redis://$user@127.0.0.1:$ZI_REDIS_PORT/0" \
    ZIMAGE_REDIS_PASSWORD="$pass"
zt_wait_log w1 'assigned' 30
ZIMAGE_REDIS_URL=$url zt_submit --job-id acl-1 --prompt "a worker under an ACL" --wait \
    >"$ZT_TMP/submit.out"
zt_check "acl-1 succeeded" succeeded "$(zt_field acl-1 status)"
zt_check "acl-1 ran once" 1 "$(zt_field acl-1 attempt)"
zt_check "acl-1 events: queued running succeeded" "queued running succeeded" \
    "$(zt_events status | tr '\n' ' ' | sed 's/ $//')"
zt_check "no NOPERM in the worker's log" 0 "$(grep -c NOPERM "$ZT_TMP/w1.log" || true)"
zt_check "worker heartbeat under the ACL" yes \
    "$(zt_redis EXISTS "${ZT_PREFIX}worker:w1" | grep -qx 1 && echo yes || echo no)"
ZIMAGE_REDIS_URL=$url "$ZI_BINARY" status --config "$ZT_CFG" acl-1 >"$ZT_TMP/status.json"
zt_check "status under the ACL" succeeded "$(jq -r .status "$ZT_TMP/status.json")"
rc=0
ZIMAGE_REDIS_URL=$url "$ZI_BINARY" top --config "$ZT_CFG" --once --no-color >"$ZT_TMP/top.out" \
    2>"$ZT_TMP/top.err" || rc=$?
zt_check "top under the ACL: exit" 0 "$rc"
zt_check "top under the ACL: shows w1" yes "$(grep -qw w1 "$ZT_TMP/top.out" && echo yes || echo no)"
zt_kill w1 TERM
zt_wait_exit w1 30
zt_check "w1 exit status" 0 "$ZT_RC"
zt_finish
