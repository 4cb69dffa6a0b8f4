#!/usr/bin/env bash
# test_devbroker.sh - `zimage devbroker` on its own (no stack needed): --help and usage
# errors follow the CLI contract; it creates the requested topics with their partition
# counts, writes its bootstrap file, serves another process (kcat), and exits 0 on SIGTERM.
set -euo pipefail

ZI_BINARY=${ZI_BINARY:?ZI_BINARY is not set (ctest sets it)}
tmp=$(mktemp -d)
pid=
cleanup() {
    if [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
fails=0
check() { # NAME EXPECTED ACTUAL
    if [[ $2 == "$3" ]]; then
        echo "ok   $1"
    else
        echo "FAIL $1: expected '$2', got '$3'" >&2
        fails=$((fails + 1))
    fi
}

rc=0
"$ZI_BINARY" devbroker --help >"$tmp/help" || rc=$?
check "--help exits 0" 0 "$rc"
check "--help prints usage on stdout" yes "$(grep -q '^usage: zimage devbroker' "$tmp/help" && echo yes)"
check "--help says it is a stand-in" yes "$(grep -q 'stand-in' "$tmp/help" && echo yes)"
for bad in "--brokers 0" "--topic a:0" "--topic a:x" "--topic :3" "--nope" "--topic"; do
    rc=0
    # shellcheck disable=SC2086
    "$ZI_BINARY" devbroker $bad 2>"$tmp/err" || rc=$?
    check "'$bad' exits 2" 2 "$rc"
    check "'$bad' error line" yes "$(grep -q '^zimage: error: ' "$tmp/err" && echo yes)"
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
check "bootstrap lists 2 loopback brokers" yes \
    "$([[ $bs =~ ^127\.0\.0\.1:[0-9]+,127\.0\.0\.1:[0-9]+$ ]] && echo yes)"
kcat -b "$bs" -L -J >"$tmp/meta" 2>"$tmp/kcat.err" || cat "$tmp/kcat.err" >&2
check "topic zitest.a has 3 partitions" 3 \
    "$(jq '[.topics[] | select(.topic=="zitest.a") | .partitions[]] | length' "$tmp/meta")"
check "topic zitest.b has 1 partition" 1 \
    "$(jq '[.topics[] | select(.topic=="zitest.b") | .partitions[]] | length' "$tmp/meta")"

kill -TERM "$pid"
rc=0
wait "$pid" || rc=$?
pid=
check "exits 0 on SIGTERM" 0 "$rc"

if ((fails)); then
    echo "$fails check(s) failed" >&2
    exit 1
fi
echo "all devbroker checks passed"
