#!/usr/bin/env bash
# test_top.sh - `zimage top` against the live local stack's Redis.
#
# Fake fleet (under a private key prefix, so other tests and real workers are not seen):
#   busy   fresh heartbeat, busy with a job at step 3/8
#   stale  heartbeat 4 x heartbeat_s old, its hash still says `ready` -> must show `lost`
#   old    heartbeat two hours old -> must be pruned from <prefix>workers
#   idle   fresh heartbeat, ready
# plus events (one succeeded, one failed with s3_auth) and a decoy worker under another
# prefix. Checks, in a real terminal (tmux, 160x50): the screen shows the workers, states,
# `lost`, the job id and step; it refreshes in place (step 3/8 -> 5/8); `q` quits with exit 0
# and SIGTERM exits 0, both restoring the terminal (canonical mode back, alternate screen
# left); Ctrl-Z and `fg` in an interactive shell give the terminal back and take it again;
# with a private redis-server stopped under it, top keeps the last data on screen
# under the error and recovers when Redis is back. Then `--once`: the same facts as plain text without any escape code, the header
# counts, recent failures with the job hash's error, and exit codes 2 (bad config) and 1
# (Redis unreachable). Last, a real worker (CPU, tiny checkpoint, 64x64): top shows it
# `ready`; after one job, the job's final state in recent jobs and in the worker's counts.
#
# Environment: ZI_BINARY (ctest) and the stack's variables (`deploy/local/stack.sh env`;
# tests/run-all.sh exports them). A missing variable fails the test.
set -euo pipefail
# shellcheck source=tests/lib.sh
source "$(dirname "$0")/../lib.sh"

zt_require_env ZI_BINARY ZIMAGE_REDIS_URL ZIMAGE_KAFKA_BOOTSTRAP_SERVERS ZIMAGE_S3_ENDPOINT \
    ZIMAGE_S3_ACCESS_KEY ZIMAGE_S3_SECRET_KEY
zt_require_tools tmux redis-cli

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
unset TMUX # a private server below; never attach to the caller's
zt_scratch top
tmp=$ZT_TMP
wpid=
rpid=
sock=zitop-$$-$RANDOM # a private tmux server: never touches the user's sessions
P="zitest-top-$$-$RANDOM:"
P2="zitest-top-w-$$-$RANDOM:"
DECOY="zitest-top-decoy-$$:"
rcli() { redis-cli -u "$ZIMAGE_REDIS_URL" "$@"; }
cleanup() {
    zt_stop_pid "$wpid"
    zt_stop_pid "$rpid"
    if zt_failed; then
        zt_tail_log 40 "$tmp/worker.log"
    fi
    tmux -L "$sock" kill-server 2>/dev/null || true
    zt_redis_del_prefix "$P" "$P2"
    rcli del "${DECOY}workers" >/dev/null 2>&1 || true
}
zt_on_exit cleanup


HB=10 # heartbeat_s: lost after 30 s, so the fresh workers stay fresh during the test
cat >"$tmp/cfg.yaml" <<EOF
redis:
  key_prefix: "$P"
worker:
  heartbeat_s: $HB
EOF

now=$(date +%s%3N)
job=job-top-$$
rcli zadd "${P}workers" "$now" w-busy "$((now - 4 * HB * 1000))" w-stale \
    "$((now - 2 * 3600 * 1000))" w-old "$now" w-idle >/dev/null
rcli hset "${P}worker:w-busy" state busy current_job "$job" backend cuda \
    gpu_name "NVIDIA H100 80GB HBM3" vram_total_bytes 85899345920 vram_free_bytes 53687091200 \
    alloc_reserved_bytes 23622320128 alloc_allocated_bytes 22548578304 \
    alloc_peak_bytes 24696061952 jobs_succeeded 7 jobs_failed 2 >/dev/null
rcli hset "${P}worker:w-stale" state ready backend cpu jobs_succeeded 1 jobs_failed 0 >/dev/null
rcli hset "${P}worker:w-idle" state ready backend cpu jobs_succeeded 0 jobs_failed 0 >/dev/null
rcli hset "${P}job:$job" status running worker w-busy step 3 steps 8 progress 0.375 >/dev/null
rcli hset "${P}job:done-$$" status succeeded worker w-busy >/dev/null
rcli hset "${P}job:bad-$$" status failed worker w-busy error_code s3_auth \
    error "S3 refused the credentials: InvalidAccessKeyId" >/dev/null
rcli xadd "${P}events" '*' job_id "done-$$" status succeeded worker w-busy >/dev/null
rcli xadd "${P}events" '*' job_id "bad-$$" status failed worker w-busy error_code s3_auth \
    >/dev/null
rcli xadd "${P}events" '*' job_id "$job" status running worker w-busy >/dev/null
rcli zadd "${DECOY}workers" "$now" w-decoy >/dev/null

# ---- live, in a real terminal ----
# run.sh runs top as the pane's foreground job (exec keeps its pid known), then reports
# its exit status and whether the terminal is back in canonical mode.
cat >"$tmp/run.sh" <<EOF
#!/usr/bin/env bash
export ZIMAGE_REDIS_URL=$(printf %q "$ZIMAGE_REDIS_URL") TERM=xterm-256color
bash -c 'echo \$\$ >"\$1"; exec "\$2" top --config "\$3" --interval 0.5' _ "\$1" \
    $(printf %q "$ZI_BINARY") $(printf %q "$tmp/cfg.yaml")
echo "top exited rc=\$?"
stty -a | tr ' ;' '\n\n' | grep -x -- '-\{0,1\}icanon' | sed 's/^/mode /'
sleep 120
EOF
chmod +x "$tmp/run.sh"

pane() { tmux -L "$sock" capture-pane -p -t "$1" >"$tmp/pane.$1" 2>/dev/null || true; }
wait_pane() { # SESSION REGEX TIMEOUT_S: until the pane shows REGEX
    local deadline=$(($(date +%s%3N) + $3 * 1000))
    while (($(date +%s%3N) < deadline)); do
        pane "$1"
        grep -Eq -- "$2" "$tmp/pane.$1" && return 0
        sleep 0.1
    done
    echo "---- pane $1 (waited for /$2/) ----" >&2
    cat "$tmp/pane.$1" >&2
    return 1
}

tmux -L "$sock" -f /dev/null new-session -d -s live -x 160 -y 50 "$tmp/run.sh $tmp/pid.live"
if wait_pane live "$job" 10; then
    f=$tmp/pane.live
    zt_check "screen: title" yes "$(zt_has "$f" '^zimage top ')"
    zt_check "screen: busy worker with its job at step 3/8" yes \
        "$(zt_has "$f" "^w-busy +busy +cuda +H100 80GB HBM3 +$job +3/8 +38%")"
    zt_check "screen: busy worker's VRAM and allocator figures" yes \
        "$(zt_has "$f" '^w-busy .* 30G/80G +22G +21G +23G +7 +2 ')"
    zt_check "screen: stale heartbeat shown as lost" yes "$(zt_has "$f" '^w-stale +lost ')"
    zt_check "screen: idle worker ready" yes "$(zt_has "$f" '^w-idle +ready +cpu ')"
    zt_check "screen: worker silent for 2 h not shown" no "$(zt_has "$f" 'w-old')"
    zt_check "screen: other prefix not shown" no "$(zt_has "$f" 'w-decoy')"
    zt_check "screen: header counts" yes "$(zt_has "$f" 'workers 3: 1 ready, 1 busy, 1 lost, 0 other')"
    zt_check "screen: recent failure" yes "$(zt_has "$f" "bad-$$ +w-busy +s3_auth +S3 refused")"
else
    zt_check "top shows the fleet within 10 s" yes no
fi
zt_check "member older than an hour pruned from ${P}workers" "" "$(rcli zscore "${P}workers" w-old)"
zt_check "members of other prefixes untouched" "$now" "$(rcli zscore "${DECOY}workers" w-decoy)"

rcli hset "${P}job:$job" step 5 progress 0.625 >/dev/null
zt_check "screen refreshes in place (step 5/8)" yes \
    "$(wait_pane live "^w-busy .* $job +5/8 +62%" 5 && echo yes || echo no)"
zt_check "one frame on screen (title once)" 1 "$(grep -c '^zimage top ' "$tmp/pane.live")"

tmux -L "$sock" send-keys -t live q
zt_check "q quits with exit 0" yes "$(wait_pane live 'top exited rc=0' 5 && echo yes || echo no)"
wait_pane live '^mode ' 3 >/dev/null || true
zt_check "terminal back in canonical mode after q" "mode icanon" \
    "$(grep '^mode ' "$tmp/pane.live" || true)"
zt_check "alternate screen left after q" no "$(zt_has "$tmp/pane.live" '^WORKER ')"

tmux -L "$sock" new-session -d -s term -x 120 -y 30 "$tmp/run.sh $tmp/pid.term"
if wait_pane term "$job" 10; then
    zt_check "80+ columns: lines cut to the terminal width" yes \
        "$(awk 'length > 120 { bad = 1 } END { print bad ? "no" : "yes" }' "$tmp/pane.term")"
    kill -TERM "$(cat "$tmp/pid.term")"
    zt_check "SIGTERM exits 0" yes "$(wait_pane term 'top exited rc=0' 5 && echo yes || echo no)"
    wait_pane term '^mode ' 3 >/dev/null || true
    zt_check "terminal back in canonical mode after SIGTERM" "mode icanon" \
        "$(grep '^mode ' "$tmp/pane.term" || true)"
else
    zt_check "top starts in a 120x30 terminal" yes no
fi

# Ctrl-Z in an interactive shell: top gives the terminal back (alternate screen left, so the
# shell's "Stopped" line is on the normal screen), and after `fg` takes it again (raw mode:
# a bare `q` still quits).
tmux -L "$sock" new-session -d -s job -x 160 -y 40 \
    "env -i HOME=$tmp TERM=xterm PATH=$PATH PS1='PROMPT\$ ' bash --norc --noprofile -i"
wait_pane job '^PROMPT' 5 >/dev/null || true
tmux -L "$sock" send-keys -t job "ZIMAGE_REDIS_URL=$ZIMAGE_REDIS_URL $ZI_BINARY top --config $tmp/cfg.yaml --interval 0.5" Enter
if wait_pane job '^WORKER ' 10 >/dev/null; then
    tmux -L "$sock" send-keys -t job C-z
    zt_check "Ctrl-Z: shell gets the terminal back" yes \
        "$(wait_pane job 'Stopped' 5 && echo yes || echo no)"
    zt_check "Ctrl-Z: alternate screen left" no "$(zt_has "$tmp/pane.job" '^WORKER ')"
    tmux -L "$sock" send-keys -t job fg Enter
    zt_check "fg: top redraws" yes "$(wait_pane job '^WORKER ' 5 && echo yes || echo no)"
    tmux -L "$sock" send-keys -t job q
    wait_pane job '^PROMPT' 5 >/dev/null || true
    tmux -L "$sock" send-keys -t job 'echo "rc=$?"' Enter
    zt_check "fg: q still quits at once, exit 0" yes \
        "$(wait_pane job '^rc=0' 5 && echo yes || echo no)"
else
    zt_check "top starts in an interactive shell" yes no
fi

# Redis going away while top runs (a private redis-server, not the shared stack's): the last
# data stays on screen under the error, and top recovers when Redis is back.
rport=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
mkdir -p "$tmp/redis"
start_redis() {
    redis-server --port "$rport" --bind 127.0.0.1 --save '' --appendonly no --dir "$tmp/redis" \
        --logfile "$tmp/redis/log" &
    rpid=$!
    for _ in $(seq 100); do
        [[ $(redis-cli -p "$rport" ping 2>/dev/null) == PONG ]] && return 0
        sleep 0.02
    done
    echo "FAIL: private redis-server did not start" >&2
    cat "$tmp/redis/log" >&2
    exit 1
}
start_redis
redis-cli -p "$rport" zadd "${P}workers" "$(date +%s%3N)" w-before >/dev/null
sed "s|^export ZIMAGE_REDIS_URL=.*|export ZIMAGE_REDIS_URL=redis://127.0.0.1:$rport/0 TERM=xterm|" \
    "$tmp/run.sh" >"$tmp/run-outage.sh"
chmod +x "$tmp/run-outage.sh"
tmux -L "$sock" new-session -d -s outage -x 160 -y 40 "$tmp/run-outage.sh $tmp/pid.outage"
wait_pane outage '^w-before ' 10 >/dev/null || true
kill -TERM "$rpid"
wait "$rpid" 2>/dev/null || true
rpid=
zt_check "Redis down: error shown over the last data" yes \
    "$(wait_pane outage 'redis error: .*refused \(showing data from' 5 && echo yes || echo no)"
zt_check "Redis down: last data still shown" yes "$(zt_has "$tmp/pane.outage" '^w-before ')"
start_redis
redis-cli -p "$rport" zadd "${P}workers" "$(date +%s%3N)" w-after >/dev/null
zt_check "Redis back: top recovers" yes "$(wait_pane outage '^w-after ' 10 && echo yes || echo no)"
zt_check "Redis back: error gone" no "$(zt_has "$tmp/pane.outage" 'redis error')"
tmux -L "$sock" send-keys -t outage q
zt_check "q after the outage exits 0" yes \
    "$(wait_pane outage 'top exited rc=0' 5 && echo yes || echo no)"
kill -TERM "$rpid"
wait "$rpid" 2>/dev/null || true
rpid=
tmux -L "$sock" kill-server 2>/dev/null || true

# ---- --once ----
rcli zadd "${P}workers" "$((now - 2 * 3600 * 1000))" w-old >/dev/null
rc=0
"$ZI_BINARY" top --config "$tmp/cfg.yaml" --once >"$tmp/once" 2>"$tmp/once.err" || rc=$?
zt_check "--once exits 0" 0 "$rc"
f=$tmp/once
zt_check "--once: no escape codes" no "$(zt_has "$f" $'\x1b')"
zt_check "--once: busy worker, job and step" yes "$(zt_has "$f" "^w-busy +busy +cuda .* $job +5/8 +62%")"
zt_check "--once: lost worker" yes "$(zt_has "$f" '^w-stale +lost ')"
zt_check "--once: ready worker" yes "$(zt_has "$f" '^w-idle +ready ')"
zt_check "--once: pruned member reported" yes "$(zt_has "$f" 'pruned 1 silent > 1h')"
zt_check "--once: pruned member gone" "" "$(rcli zscore "${P}workers" w-old)"
zt_check "--once: jobs/min from the events" yes "$(zt_has "$f" 'jobs/min 2 \(1 succeeded, 1 failed\)')"
zt_check "--once: recent jobs newest first" "$job done-$$" \
    "$(awk '/^RECENT JOBS/ { on = 1; next } on && /^[0-9]/ { print $2 } /^$/ { on = 0 }' "$f" |
        grep -v "bad-$$" | head -n 2 | xargs)"
zt_check "--once: recent failure with its error" yes \
    "$(zt_has "$f" "bad-$$ +w-busy +s3_auth +S3 refused the credentials: InvalidAccessKeyId")"
zt_check "--once: prefix shown" yes "$(zt_has "$f" "prefix $P")"

# exit codes
echo "redis: {nope: 1}" >"$tmp/bad.yaml"
rc=0
"$ZI_BINARY" top --config "$tmp/bad.yaml" --once >/dev/null 2>"$tmp/err" || rc=$?
zt_check "bad config exits 2" 2 "$rc"
zt_check "bad config names the key" yes "$(zt_has "$tmp/err" "^zimage: error: .*redis.nope")"
rc=0
"$ZI_BINARY" top --once >/dev/null 2>"$tmp/err" || rc=$?
zt_check "missing --config exits 2" 2 "$rc"
rc=0
ZIMAGE_REDIS_URL=redis://127.0.0.1:1/0 "$ZI_BINARY" top --config "$tmp/cfg.yaml" --once \
    >/dev/null 2>"$tmp/err" || rc=$?
zt_check "Redis unreachable exits 1" 1 "$rc"
zt_check "Redis unreachable: one clear error" yes \
    "$(zt_has "$tmp/err" '^zimage: error: redis at 127.0.0.1:1/0 is unreachable: .*refused')"
rc=0
"$ZI_BINARY" top --help >"$tmp/help" || rc=$?
zt_check "--help exits 0 with usage" "0 yes" "$rc $(zt_has "$tmp/help" '^usage: zimage top')"

# ---- a real worker ----
wid=zt-top-$$
cat >"$tmp/worker.yaml" <<EOF
model:
  path: $REPO/tests/golden/data/tiny-zimage
device:
  backend: cpu
generation:
  width: 64
  height: 64
  steps: 2
kafka:
  topic: zitest.top-$$.jobs
  group_id: zitest-top-$$
  dlq_topic: zitest.top-$$.dlq
  properties:
    session.timeout.ms: "6000"
    heartbeat.interval.ms: "500"
redis:
  key_prefix: "$P2"
  job_ttl_s: 600
s3:
  key_template: "zitest/top-$$/{job_id}.png"
worker:
  id: $wid
  http_listen: 127.0.0.1:0
  heartbeat_s: 1
EOF
"$ZI_BINARY" worker --config "$tmp/worker.yaml" >"$tmp/worker.log" 2>&1 &
wpid=$!
once_until() { # REGEX TIMEOUT_S: polls `top --once` until it shows REGEX
    local deadline=$(($(date +%s%3N) + $2 * 1000))
    while (($(date +%s%3N) < deadline)); do
        "$ZI_BINARY" top --config "$tmp/worker.yaml" --once >"$tmp/wonce" 2>&1 || true
        grep -Eq -- "$1" "$tmp/wonce" && return 0
        kill -0 "$wpid" 2>/dev/null || break
        sleep 0.2
    done
    echo "---- top --once (waited for /$1/) ----" >&2
    cat "$tmp/wonce" >&2
    return 1
}
zt_check "real worker shown ready" yes "$(once_until "^$wid +ready +cpu " 30 && echo yes || echo no)"
# The job's own outcome (S3 and all) is other tests' business: top must show whichever
# final state the worker recorded, and count it.
"$ZI_BINARY" submit --config "$tmp/worker.yaml" --job-id "top-job-$$" --prompt "a lighthouse" \
    >"$tmp/submit" 2>&1 || cat "$tmp/submit" >&2
zt_check "real worker: job's final state in recent jobs" yes \
    "$(once_until "^[0-9:]{8} top-job-$$ +(succeeded|failed) +$wid" 60 && echo yes || echo no)"
final=$(rcli hget "${P2}job:top-job-$$" status)
zt_check "real worker: recent jobs agree with the job hash" yes \
    "$(zt_has "$tmp/wonce" "^[0-9:]{8} top-job-$$ +$final +$wid")"
zt_check "real worker: ready again with the job counted" yes \
    "$(once_until "^$wid +ready +cpu .* ($([[ $final == succeeded ]] && echo '1 +0' || echo '0 +1')) +[0-9.]+s$" 10 &&
        echo yes || echo no)"
kill -TERM "$wpid"
rc=0
wait "$wpid" || rc=$?
wpid=
zt_check "real worker drains and exits 0" 0 "$rc"

zt_finish top
