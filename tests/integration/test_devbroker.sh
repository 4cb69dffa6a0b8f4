#!/usr/bin/env bash
# test_devbroker.sh - `zimage devbroker` on its own (no stack needed): --help and usage
# errors follow the CLI contract; it creates the requested topics with their partition
# counts, writes its bootstrap file, serves another process (kcat), and exits 0 on SIGTERM.
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "$0")/../lib.sh"

ZI_BINARY=${ZI_BINARY:?ZI_BINARY is not set (ctest sets it)}
zt_scratch devbroker
tmp=$ZT_TMP
pid=
stop_broker() { zt_stop_pid "$pid"; }
zt_on_exit stop_broker

rc=0
"$ZI_BINARY" devbroker --help >"$tmp/help" || rc=$?
zt_check "--help exits 0" 0 "$rc"
zt_check "--help prints usage on stdout" yes "$(grep -q '^usage: zimage devbroker' "$tmp/help" && echo yes)"
zt_check "--help says it is a stand-in" yes "$(grep -q 'stand-in' "$tmp/help" && echo yes)"
for bad in "--brokers 0" "--topic a:0" "--topic a:x" "--topic :3" "--nope" "--topic"; do
    rc=0
    # shellcheck disable=SC2086
    "$ZI_BINARY" devbroker $bad 2>"$tmp/err" || rc=$?
    zt_check "'$bad' exits 2" 2 "$rc"
    zt_check "'$bad' error line" yes "$(grep -q '^zimage: error: ' "$tmp/err" && echo yes)"
done

"$ZI_BINARY" devbroker --topic zitest.a:3 --topic zitest.b:1 --brokers 2 \
    --bootstrap-file "$tmp/bootstrap" --quiet 2>"$tmp/log" &
pid=$!
for _ in $(seq 100); do
    [[ -s $tmp/bootstrap ]] && break
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
done
if [[ ! -s $tmp/bootstrap ]]; then
    cat "$tmp/log" >&2
    echo "FAIL: no bootstrap file within 5 s" >&2
    exit 1
fi
bs=$(<"$tmp/bootstrap")
zt_check "bootstrap lists 2 loopback brokers" yes \
    "$([[ $bs =~ ^127\.0\.0\.1:[0-9]+,127\.0\.0\.1:[0-9]+$ ]] && echo yes)"
kcat -b "$bs" -L -J >"$tmp/meta" 2>"$tmp/kcat.err" || cat "$tmp/kcat.err" >&2
zt_check "topic zitest.a has 3 partitions" 3 \
    "$(jq '[.topics[] | select(.topic=="zitest.a") | .partitions[]] | length' "$tmp/meta")"
zt_check "topic zitest.b has 1 partition" 1 \
    "$(jq '[.topics[] | select(.topic=="zitest.b") | .partitions[]] | length' "$tmp/meta")"

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=
zt_check "exits 0 on SIGTERM" 0 "$rc"

zt_finish devbroker
