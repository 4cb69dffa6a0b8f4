#!/usr/bin/env bash
# stack.sh - a local stack of REAL services for zimage's tests and demo.
#
#   Redis 7     redis-server, no persistence
#   Kafka       `zimage devbroker` (librdkafka's mock cluster: the real wire protocol, but a
#               stand-in for tests and demos only - production uses a real Kafka cluster)
#   S3          a single-node Ceph (1 mon, 1 memstore OSD) + RADOS Gateway: real S3, real SigV4
#
# Usage: stack.sh up|down|env|status|stop-rgw|start-rgw|stop-redis|start-redis|s3-user UID
#
# Everything lives in one scratch directory, $ZI_STACK_DIR (default <repo>/.stack): config,
# data, logs/, pids/, and stack.env (the ports and keys chosen at `up`). Ports are picked
# at random among free ones at `up`, so several stacks run side by side in different
# directories. Services are plain child processes (no systemd, no daemonizing); their PIDs
# are recorded and `down` stops exactly those. Every wait is bounded, and a service that
# does not come up has its log printed.
#
# Limits: nothing persists across `down`; `stop-redis`/`start-redis` restarts Redis on the
# same port with an empty data set; the dev broker cannot be restarted on the same port
# (librdkafka 2.0.2 picks its ports). Recipe and timings: /work/shared/docs/services.md and
# docs/development.md.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
DIR=${ZI_STACK_DIR:-$REPO/.stack}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)
STATE=$DIR/stack.env
PIDS=$DIR/pids
LOGS=$DIR/logs
CEPH_DIR=$DIR/ceph
CEPH_CONF=$CEPH_DIR/ceph.conf
BUCKET=${ZI_STACK_BUCKET:-zimage}
REGION=us-east-1
TOPICS=(zimage.jobs:4 zimage.jobs.dlq:1 zimage.results:1)
# sha256 of the empty body: RGW refuses requests without x-amz-content-sha256.
EMPTY_SHA256=e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855

zi_log() { printf 'stack: %s\n' "$*" >&2; }
zi_die() {
    printf 'stack: error: %s\n' "$*" >&2
    exit 1
}

zi_now_ms() { date +%s%3N; }

# ---- processes ----

# "STATE STARTTIME" of a process (fields 3 and 22 of /proc/PID/stat; the command name may
# hold spaces, so fields are counted after its closing parenthesis).
zi_proc_stat() {
    local st
    st=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    st=${st##*) }
    # shellcheck disable=SC2086
    set -- $st
    echo "$1 ${20}"
}

zi_pid_of() { # NAME -> pid on stdout while that service runs, else status 1
    local f=$PIDS/$1.pid pid rec st
    [[ -f $f ]] || return 1
    read -r pid rec <"$f" || true
    [[ $pid =~ ^[0-9]+$ ]] || return 1
    st=$(zi_proc_stat "$pid") || return 1
    # The start time guards against a reused PID; a zombie (Z) has already exited.
    [[ ${st#* } == "$rec" && ${st%% *} != Z ]] || return 1
    echo "$pid"
}

zi_alive() { # PID -> status 0 while it runs (zombies do not count)
    local st
    st=$(zi_proc_stat "$1") || return 1
    [[ ${st%% *} != Z ]]
}

# zi_spawn NAME CMD... : start CMD in the background, logs to logs/NAME.log; records the PID
# and its start time. The lock fd (9) is closed in the child so a long-running service
# never holds the stack lock.
zi_spawn() {
    local name=$1 pid st
    shift
    "$@" </dev/null >>"$LOGS/$name.log" 2>&1 9>&- &
    pid=$!
    st=$(zi_proc_stat "$pid") || st="? ?"
    echo "$pid ${st#* }" >"$PIDS/$name.pid"
}

zi_show_log() {
    local name=$1
    echo "---- $LOGS/$name.log (last 40 lines) ----" >&2
    tail -n 40 "$LOGS/$name.log" >&2 2>/dev/null || true
    echo "----" >&2
}

zi_fail_start() { # NAME MESSAGE: print the service's log and give up
    zi_show_log "$1"
    zi_die "$1: $2"
}

# zi_stop_many GRACE_MS NAME... : TERM all at once, wait up to GRACE_MS, then KILL what is
# left and wait up to 2 s for it to go. Returns 1 if something survived.
zi_stop_many() {
    local grace=$1 name pid deadline left killed=0
    shift
    local -a pids=()
    for name in "$@"; do
        if pid=$(zi_pid_of "$name"); then
            kill -TERM "$pid" 2>/dev/null || true
            pids+=("$pid")
        fi
        rm -f "$PIDS/$name.pid"
    done
    ((${#pids[@]})) || return 0
    deadline=$(($(zi_now_ms) + grace))
    while :; do
        left=()
        for pid in "${pids[@]}"; do zi_alive "$pid" && left+=("$pid"); done
        ((${#left[@]})) || break
        if (($(zi_now_ms) > deadline)); then
            ((killed)) && return 1
            kill -KILL "${left[@]}" 2>/dev/null || true
            killed=1
            deadline=$(($(zi_now_ms) + 2000))
        fi
        sleep 0.02
    done
    # Reap those that are children of this shell (a failed `up`); init reaps the others.
    wait "${pids[@]}" 2>/dev/null || true
    return 0
}

# ---- state ----

zi_load_state() {
    [[ -f $STATE ]] || zi_die "no stack in $DIR (run: stack.sh up)"
    # shellcheck disable=SC1090
    source "$STATE"
}

zi_pick_ports() { # N -> N distinct free ports, outside the ephemeral range so that
    # clients' outgoing connections never take them
    python3 - "$1" <<'EOF'
import random, socket, sys
n, got = int(sys.argv[1]), []
while len(got) < n:
    p = random.randint(20000, 32000)
    if p in got:
        continue
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        s.bind(("127.0.0.1", p))
        got.append(p)
    except OSError:
        pass
    finally:
        s.close()
print(" ".join(map(str, got)))
EOF
}

zi_random_key() { # LEN ALPHABET
    python3 -c 'import secrets,sys; print("".join(secrets.choice(sys.argv[2]) for _ in range(int(sys.argv[1]))))' "$1" "$2"
}

zi_find_zimage() {
    local c
    for c in "${ZI_BINARY:-}" "$REPO/build/zimage" "$REPO/build-asan/zimage"; do
        if [[ -n $c && -x $c ]]; then
            echo "$c"
            return 0
        fi
    done
    zi_die "no zimage binary (build it first: make build, or set ZI_BINARY)"
}

# ---- Redis ----

zi_start_redis() {
    zi_spawn redis \
        redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save '' --appendonly no \
        --dir "$DIR/redis" --logfile '' --daemonize no
}

zi_wait_redis() {
    local deadline=$(($(zi_now_ms) + 5000))
    until [[ $(redis-cli -p "$REDIS_PORT" ping 2>/dev/null) == PONG ]]; do
        zi_pid_of redis >/dev/null || zi_fail_start redis "exited during start-up"
        (($(zi_now_ms) < deadline)) || zi_fail_start redis "no PONG within 5 s"
        sleep 0.02
    done
}

# ---- Kafka dev broker ----

zi_start_broker() {
    local zimage args=() t
    zimage=$(zi_find_zimage)
    for t in "${TOPICS[@]}"; do args+=(--topic "$t"); done
    rm -f "$DIR/kafka.bootstrap"
    zi_spawn kafka \
        "$zimage" devbroker "${args[@]}" --brokers 1 --bootstrap-file "$DIR/kafka.bootstrap" --quiet
}

zi_wait_broker() {
    local deadline=$(($(zi_now_ms) + 5000))
    until [[ -s $DIR/kafka.bootstrap ]]; do
        zi_pid_of kafka >/dev/null || zi_fail_start kafka "exited during start-up"
        (($(zi_now_ms) < deadline)) || zi_fail_start kafka "no bootstrap file within 5 s"
        sleep 0.02
    done
    KAFKA_BOOTSTRAP=$(<"$DIR/kafka.bootstrap")
}

# ---- Ceph: mon + memstore OSD + radosgw ----

zi_ceph() { ceph -c "$CEPH_CONF" --connect-timeout 15 "$@"; }

zi_write_ceph_conf() {
    local fsid=$1
    cat >"$CEPH_CONF" <<EOF
# written by deploy/local/stack.sh - a throw-away single-node cluster for tests
[global]
fsid = $fsid
mon initial members = a
mon host = [v2:127.0.0.1:$MON_PORT2,v1:127.0.0.1:$MON_PORT1]
public addr = 127.0.0.1
ms bind ipv6 = false
auth cluster required = none
auth service required = none
auth client required = none
keyring = $CEPH_DIR/keyring
run dir = $CEPH_DIR/run
admin socket = $CEPH_DIR/run/\$name.asok
pid file = $CEPH_DIR/run/\$name.pid
log file = $LOGS/ceph-\$name.log
log to stderr = false
err to stderr = true
mon data = $CEPH_DIR/mon-\$id
osd data = $CEPH_DIR/osd-\$id
osd objectstore = memstore
memstore device bytes = 2147483648
osd pool default size = 1
osd pool default min size = 1
mon allow pool size one = true
osd pool default pg autoscale mode = off
osd pool default pg num = 1
osd pool default pgp num = 1
osd crush chooseleaf type = 0
mon data avail warn = 1
mon data avail crit = 0
mon warn on pool no redundancy = false
# Without this a single-mon cluster waits ~1 s per map change: start-up takes ~13 s.
paxos propose interval = 0.05

[client.rgw]
rgw frontends = beast endpoint=127.0.0.1:$RGW_PORT
rgw data = $CEPH_DIR/rgw
# radosgw otherwise insists on "secure" mode, which cannot work with auth none.
ms mon client mode = crc
rgw dns name = 127.0.0.1
EOF
}

zi_start_mon() {
    zi_spawn ceph-mon ceph-mon -c "$CEPH_CONF" -i a -f
}

zi_start_osd() {
    zi_spawn ceph-osd ceph-osd -c "$CEPH_CONF" -i "$OSD_ID" -f
}

zi_start_rgw_proc() {
    zi_spawn radosgw radosgw -c "$CEPH_CONF" -n client.rgw -f
}

zi_wait_rgw() {
    local deadline=$(($(zi_now_ms) + ${1:-10000}))
    until curl -s -o /dev/null --max-time 1 "http://127.0.0.1:$RGW_PORT/"; do
        zi_pid_of radosgw >/dev/null || zi_fail_start radosgw "exited during start-up"
        (($(zi_now_ms) < deadline)) || zi_fail_start radosgw "no HTTP on port $RGW_PORT in time"
        sleep 0.05
    done
}

zi_s3_put_bucket() {
    local code
    code=$(curl -s -o "$LOGS/bucket.out" -w '%{http_code}' --max-time 10 -X PUT \
        --aws-sigv4 "aws:amz:$REGION:s3" --user "$S3_ACCESS_KEY:$S3_SECRET_KEY" \
        -H "x-amz-content-sha256: $EMPTY_SHA256" "http://127.0.0.1:$RGW_PORT/$BUCKET")
    if [[ $code != 200 ]]; then
        cat "$LOGS/bucket.out" >&2 || true
        zi_fail_start radosgw "creating bucket $BUCKET: HTTP $code"
    fi
}

zi_up_ceph() {
    local fsid osd_uuid deadline
    fsid=$(uuidgen)
    osd_uuid=$(uuidgen)
    mkdir -p "$CEPH_DIR/run" "$CEPH_DIR/mon-a" "$CEPH_DIR/rgw"
    zi_write_ceph_conf "$fsid"
    ceph-authtool --create-keyring "$CEPH_DIR/keyring" --gen-key -n mon. --cap mon 'allow *' \
        >>"$LOGS/ceph-setup.log" 2>&1 || zi_fail_start ceph-setup "ceph-authtool failed"
    ceph-authtool "$CEPH_DIR/keyring" --gen-key -n client.admin --cap mon 'allow *' \
        --cap osd 'allow *' --cap mds 'allow *' --cap mgr 'allow *' \
        >>"$LOGS/ceph-setup.log" 2>&1 || zi_fail_start ceph-setup "ceph-authtool failed"
    monmaptool --create --fsid "$fsid" --addv a "[v2:127.0.0.1:$MON_PORT2,v1:127.0.0.1:$MON_PORT1]" \
        "$CEPH_DIR/monmap" >>"$LOGS/ceph-setup.log" 2>&1 || zi_fail_start ceph-setup "monmaptool failed"
    ceph-mon -c "$CEPH_CONF" --mkfs -i a --monmap "$CEPH_DIR/monmap" --keyring "$CEPH_DIR/keyring" \
        >>"$LOGS/ceph-setup.log" 2>&1 || zi_fail_start ceph-setup "ceph-mon --mkfs failed"
    zi_start_mon

    # `ceph osd new` waits for the monitor itself (bounded by --connect-timeout).
    OSD_ID=$(zi_ceph osd new "$osd_uuid" 2>>"$LOGS/ceph-setup.log") ||
        zi_fail_start ceph-mon "monitor not answering (ceph osd new failed)"
    [[ $OSD_ID =~ ^[0-9]+$ ]] || zi_fail_start ceph-mon "ceph osd new said '$OSD_ID'"
    mkdir -p "$CEPH_DIR/osd-$OSD_ID"
    ceph-osd -c "$CEPH_CONF" -i "$OSD_ID" --mkfs --osd-uuid "$osd_uuid" \
        >>"$LOGS/ceph-setup.log" 2>&1 || zi_fail_start ceph-setup "ceph-osd --mkfs failed"
    zi_start_osd
    echo "OSD_ID=$OSD_ID" >>"$STATE"

    deadline=$(($(zi_now_ms) + 15000))
    until zi_ceph osd stat 2>/dev/null | grep -q ' 1 up'; do
        zi_pid_of ceph-osd >/dev/null || zi_fail_start ceph-osd "exited during start-up"
        (($(zi_now_ms) < deadline)) || zi_fail_start ceph-osd "not up within 15 s"
        sleep 0.1
    done

    zi_start_rgw_proc
    radosgw-admin -c "$CEPH_CONF" user create --uid=zimage --display-name=zimage \
        --access-key="$S3_ACCESS_KEY" --secret="$S3_SECRET_KEY" >>"$LOGS/ceph-setup.log" 2>&1 ||
        zi_fail_start ceph-setup "radosgw-admin user create failed"
    zi_wait_rgw 20000
    zi_s3_put_bucket
}

# ---- commands ----

zi_running_names() {
    local n
    for n in redis kafka ceph-mon ceph-osd radosgw; do
        zi_pid_of "$n" >/dev/null && echo "$n"
    done
    return 0
}

zi_cmd_down() {
    local t0 n pid deadline
    local -a all=()
    t0=$(zi_now_ms)
    for n in redis kafka ceph-mon ceph-osd radosgw; do
        if pid=$(zi_pid_of "$n"); then
            all+=("$pid")
        fi
    done
    # The broker takes ~1 s to exit (librdkafka's mock cluster) and Redis ~0.1 s: TERM them
    # first and let them go while Ceph stops. radosgw takes ~5 s to act on SIGTERM, so it is
    # KILLed after a short grace (its data lives in the OSD). The OSD stops in ~0.1 s while
    # its monitor runs but takes seconds once the monitor is gone: OSD first, then monitor.
    for n in kafka redis; do
        if pid=$(zi_pid_of "$n"); then
            kill -TERM "$pid" 2>/dev/null || true
        fi
    done
    zi_stop_many 200 radosgw || zi_die "radosgw survived KILL"
    zi_stop_many 3000 ceph-osd || zi_die "ceph-osd survived KILL"
    zi_stop_many 3000 ceph-mon kafka redis || zi_die "a service survived KILL"
    # They have exited; when this shell is not their parent, init removes their process-table
    # entries (zombies) shortly after. Wait for that (bounded) so nothing is listed afterwards.
    deadline=$(($(zi_now_ms) + 3000))
    for pid in "${all[@]}"; do
        while [[ -e /proc/$pid ]] && (($(zi_now_ms) < deadline)); do sleep 0.05; done
    done
    rm -rf "$CEPH_DIR" "$DIR/redis" "$DIR/kafka.bootstrap"
    rm -f "$STATE"
    zi_log "down in $(($(zi_now_ms) - t0)) ms ($DIR)"
}

zi_cmd_up() {
    local t0
    t0=$(zi_now_ms)
    if [[ -f $STATE && -n $(zi_running_names) ]]; then
        if [[ $(zi_running_names | wc -l) -eq 5 ]]; then
            zi_log "already up ($DIR)"
            return 0
        fi
        zi_log "partly up: stopping it first"
        zi_cmd_down
    fi
    rm -rf "$CEPH_DIR" "$DIR/redis" "$LOGS" "$PIDS" "$STATE"
    mkdir -p "$PIDS" "$LOGS" "$DIR/redis"
    read -r REDIS_PORT MON_PORT1 MON_PORT2 RGW_PORT <<<"$(zi_pick_ports 4)"
    S3_ACCESS_KEY=$(zi_random_key 20 ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789)
    S3_SECRET_KEY=$(zi_random_key 40 abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789)
    cat >"$STATE" <<EOF
REDIS_PORT=$REDIS_PORT
MON_PORT1=$MON_PORT1
MON_PORT2=$MON_PORT2
RGW_PORT=$RGW_PORT
S3_ACCESS_KEY=$S3_ACCESS_KEY
S3_SECRET_KEY=$S3_SECRET_KEY
EOF
    # On any failure below, stop what was started so nothing is left behind.
    trap 'rc=$?; if ((rc)); then zi_log "up failed; stopping what started"; zi_cmd_down || true; fi' EXIT
    zi_start_redis
    zi_start_broker
    zi_up_ceph
    zi_wait_redis
    zi_wait_broker
    echo "KAFKA_BOOTSTRAP=$KAFKA_BOOTSTRAP" >>"$STATE"
    trap - EXIT
    zi_log "up in $(($(zi_now_ms) - t0)) ms ($DIR): redis :$REDIS_PORT, kafka $KAFKA_BOOTSTRAP, s3 :$RGW_PORT"
}

zi_cmd_env() {
    zi_load_state
    [[ -n ${KAFKA_BOOTSTRAP:-} ]] || zi_die "stack in $DIR did not finish starting"
    local redis_url="redis://127.0.0.1:$REDIS_PORT/0" s3="http://127.0.0.1:$RGW_PORT"
    local -a kv=(
        ZI_STACK_DIR "$DIR"
        ZI_KAFKA_BOOTSTRAP "$KAFKA_BOOTSTRAP"
        ZI_REDIS_URL "$redis_url"
        ZI_REDIS_PORT "$REDIS_PORT"
        ZI_S3_ENDPOINT "$s3"
        ZI_S3_BUCKET "$BUCKET"
        ZI_S3_REGION "$REGION"
        ZI_S3_ACCESS_KEY "$S3_ACCESS_KEY"
        ZI_S3_SECRET_KEY "$S3_SECRET_KEY"
        ZI_CEPH_CONF "$CEPH_CONF"
        ZIMAGE_KAFKA_BOOTSTRAP_SERVERS "$KAFKA_BOOTSTRAP"
        ZIMAGE_REDIS_URL "$redis_url"
        ZIMAGE_S3_ENDPOINT "$s3"
        ZIMAGE_S3_BUCKET "$BUCKET"
        ZIMAGE_S3_REGION "$REGION"
        ZIMAGE_S3_ACCESS_KEY "$S3_ACCESS_KEY"
        ZIMAGE_S3_SECRET_KEY "$S3_SECRET_KEY"
        AWS_ACCESS_KEY_ID "$S3_ACCESS_KEY"
        AWS_SECRET_ACCESS_KEY "$S3_SECRET_KEY"
    )
    local i
    for ((i = 0; i < ${#kv[@]}; i += 2)); do
        printf 'export %s=%q\n' "${kv[i]}" "${kv[i + 1]}"
    done
}

zi_cmd_status() {
    local n pid all=0
    if [[ -f $STATE ]]; then
        # shellcheck disable=SC1090
        source "$STATE"
    fi
    echo "stack $DIR"
    for n in redis kafka ceph-mon ceph-osd radosgw; do
        if pid=$(zi_pid_of "$n"); then
            printf '  %-9s running  pid %s\n' "$n" "$pid"
        else
            printf '  %-9s stopped\n' "$n"
            all=1
        fi
    done
    [[ -n ${REDIS_PORT:-} ]] && echo "  redis     redis://127.0.0.1:$REDIS_PORT/0"
    [[ -n ${KAFKA_BOOTSTRAP:-} ]] && echo "  kafka     $KAFKA_BOOTSTRAP"
    [[ -n ${RGW_PORT:-} ]] && echo "  s3        http://127.0.0.1:$RGW_PORT/$BUCKET"
    return $((all ? 3 : 0))
}

zi_cmd_stop_rgw() {
    zi_load_state
    zi_stop_many 300 radosgw
    zi_log "radosgw stopped (port $RGW_PORT)"
}

zi_cmd_start_rgw() {
    zi_load_state
    if zi_pid_of radosgw >/dev/null; then
        zi_log "radosgw already running"
        return 0
    fi
    zi_pid_of ceph-osd >/dev/null || zi_die "ceph-osd is not running; run stack.sh up"
    zi_start_rgw_proc
    zi_wait_rgw 20000
    zi_log "radosgw started on port $RGW_PORT"
}

zi_cmd_stop_redis() {
    zi_load_state
    zi_stop_many 3000 redis
    zi_log "redis stopped (port $REDIS_PORT)"
}

zi_cmd_start_redis() {
    zi_load_state
    if zi_pid_of redis >/dev/null; then
        zi_log "redis already running"
        return 0
    fi
    mkdir -p "$DIR/redis"
    zi_start_redis
    zi_wait_redis
    zi_log "redis started on port $REDIS_PORT (empty)"
}

# s3-user UID: an extra gateway user (made once, then the same) for tests of other
# credentials; prints "ACCESS_KEY SECRET_KEY". It owns nothing and may do nothing until a
# bucket policy grants it something.
zi_cmd_s3_user() {
    local uid=${1:-} f ak sk
    [[ $uid =~ ^[a-z0-9-]{1,32}$ ]] || zi_die "s3-user: want a user id of 1..32 [a-z0-9-]"
    [[ $uid != zimage ]] || zi_die "s3-user: zimage is the stack's own user"
    zi_load_state
    zi_pid_of radosgw >/dev/null || zi_die "s3-user: the gateway is not running"
    f=$CEPH_DIR/s3-user-$uid.keys # goes with the cluster at down/up
    if [[ ! -f $f ]]; then
        ak=$(zi_random_key 20 ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789)
        sk=$(zi_random_key 40 abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789)
        radosgw-admin -c "$CEPH_CONF" user create --uid="$uid" --display-name="$uid" \
            --access-key="$ak" --secret="$sk" >>"$LOGS/ceph-setup.log" 2>&1 ||
            zi_die "s3-user: radosgw-admin user create failed (see $LOGS/ceph-setup.log)"
        printf '%s %s\n' "$ak" "$sk" >"$f"
    fi
    cat "$f"
}

# One command at a time per stack directory.
exec 9>"$DIR/.lock"
flock -w 60 9 || zi_die "another stack.sh holds $DIR/.lock"

case ${1:-} in
up) zi_cmd_up ;;
down) zi_cmd_down ;;
env) zi_cmd_env ;;
status) zi_cmd_status ;;
stop-rgw) zi_cmd_stop_rgw ;;
start-rgw) zi_cmd_start_rgw ;;
stop-redis) zi_cmd_stop_redis ;;
start-redis) zi_cmd_start_redis ;;
s3-user) zi_cmd_s3_user "${2:-}" ;;
-h | --help | help)
    sed -n '2,21p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'
    ;;
*)
    echo "usage: stack.sh up|down|env|status|stop-rgw|start-rgw|stop-redis|start-redis|s3-user UID" >&2
    exit 2
    ;;
esac
