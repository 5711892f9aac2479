#!/usr/bin/env bash
# Compares the example broker (examples/src/bin/mqtt-broker.rs) with mosquitto on loopback:
# throughput and latency (mqtt-bench fan-in/fan-out, QoS 0/1, 64 B/1 KiB payloads), then
# resident memory per idle connection. A benchmark, not a test: nothing asserts a speed, and
# it does not belong in CI. Numbers on a shared or small machine are noisy; the script prints
# `uptime` so the load can be judged.
#
# Needs mosquitto (Debian: apt-get update && apt-get install -y mosquitto) and a file
# descriptor limit above IDLE_CONNS (it raises the soft limit to the hard one itself;
# otherwise run `ulimit -n 20000` first).
#
# Usage: examples/bench/compare.sh
# Knobs (environment): DURATION (seconds per run, 5), PUBS (fan-in publishers, 10),
# SUBS (fan-out subscribers, 10), WINDOW (messages per publisher not yet delivered, 64),
# MAX_QUEUED (per-client queue of both brokers, 10000: mosquitto 2.0.11
# drops QoS 1 messages for a fan-in subscriber at 1000 with only ~640 outstanding), MAX_INFLIGHT (both brokers, 64),
# IDLE_CONNS (10000), IDLE_HOLD (seconds, 5), SKIP_LOAD=1, SKIP_IDLE=1,
# IDLE_SUBSCRIBE=1 (each idle connection subscribes to its own topic, keep alive 2 s, and
# memory is measured IDLE_SETTLE seconds, default 5, after all are connected: after at
# least one PINGREQ round, after which our broker gives back per-connection queues).
set -euo pipefail

cd "$(dirname "$0")/../.."

DURATION=${DURATION:-5}
PUBS=${PUBS:-10}
SUBS=${SUBS:-10}
WINDOW=${WINDOW:-64}
MAX_QUEUED=${MAX_QUEUED:-10000}
MAX_INFLIGHT=${MAX_INFLIGHT:-64}
IDLE_CONNS=${IDLE_CONNS:-10000}
IDLE_HOLD=${IDLE_HOLD:-5}
SKIP_LOAD=${SKIP_LOAD:-0}
SKIP_IDLE=${SKIP_IDLE:-0}
IDLE_SUBSCRIBE=${IDLE_SUBSCRIBE:-0}
IDLE_KEEP_ALIVE=30
IDLE_SETTLE=2
IDLE_ARGS=()
if [ "$IDLE_SUBSCRIBE" = 1 ]; then
    IDLE_KEEP_ALIVE=2
    IDLE_SETTLE=${IDLE_SETTLE_SUBSCRIBE:-5}
    IDLE_ARGS=(--subscribe)
    # Held until after the measurement.
    [ "$IDLE_HOLD" -lt $((IDLE_SETTLE + 3)) ] && IDLE_HOLD=$((IDLE_SETTLE + 3))
fi

MOSQUITTO=$(command -v mosquitto || true)
[ -z "$MOSQUITTO" ] && [ -x /usr/sbin/mosquitto ] && MOSQUITTO=/usr/sbin/mosquitto
if [ -z "$MOSQUITTO" ]; then
    echo "mosquitto not found: apt-get update && apt-get install -y mosquitto" >&2
    exit 1
fi

# Each idle connection is a descriptor in the bench and one in the broker.
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
FD_LIMIT=$(ulimit -n)
if [ "$FD_LIMIT" != unlimited ] && [ "$IDLE_CONNS" -gt $((FD_LIMIT - 200)) ]; then
    echo "ulimit -n is $FD_LIMIT: idle test lowered to $((FD_LIMIT - 200)) connections" >&2
    IDLE_CONNS=$((FD_LIMIT - 200))
fi

cargo build --release -q -p mqtt-examples --bin mqtt-broker --bin mqtt-bench
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        kill "$p" 2>/dev/null || true
    done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT

# A loopback port nothing listens on, below the ephemeral range.
free_port() {
    local p
    while :; do
        p=$((20000 + RANDOM % 10000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then
            echo "$p"
            return
        fi
    done
}

# Starts our broker; sets OURS_PID and OURS_PORT.
start_ours() {
    local out=$WORK/ours.$RANDOM
    "$BIN/mqtt-broker" --bind 127.0.0.1:0 --no-ws --sys-interval 0 \
        --max-queued "$MAX_QUEUED" --max-inflight "$MAX_INFLIGHT" >"$out" 2>>"$WORK/ours.log" &
    OURS_PID=$!
    PIDS+=("$OURS_PID")
    local i
    for i in $(seq 100); do
        OURS_PORT=$(sed -n 's/^listening on tcp .*:\([0-9]*\)$/\1/p' "$out")
        [ -n "$OURS_PORT" ] && return
        sleep 0.05
    done
    echo "our broker did not start:" >&2
    cat "$WORK/ours.log" >&2
    exit 1
}

# Starts mosquitto with the same limits; sets MOSQ_PID and MOSQ_PORT.
start_mosquitto() {
    MOSQ_PORT=$(free_port)
    local conf=$WORK/mosquitto.$MOSQ_PORT.conf
    cat >"$conf" <<EOF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages $MAX_QUEUED
max_queued_bytes 0
max_inflight_messages $MAX_INFLIGHT
set_tcp_nodelay true
sys_interval 0
log_dest stderr
log_type error
log_type warning
EOF
    "$MOSQUITTO" -c "$conf" 2>>"$WORK/mosquitto.log" &
    MOSQ_PID=$!
    PIDS+=("$MOSQ_PID")
    local i
    for i in $(seq 100); do
        if ! kill -0 "$MOSQ_PID" 2>/dev/null; then
            break
        fi
        if (exec 3<>"/dev/tcp/127.0.0.1/$MOSQ_PORT") 2>/dev/null; then
            return
        fi
        sleep 0.05
    done
    echo "mosquitto did not start:" >&2
    cat "$WORK/mosquitto.log" >&2
    exit 1
}

stop() {
    kill "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}

rss_kb() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"
}

# field LINE KEY
field() {
    sed -n "s/.*\(^\| \)$2=\([^ ]*\).*/\2/p" <<<"$1"
}

echo "## mqtt-broker vs mosquitto"
echo
echo "- date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), $(nproc) cores, mosquitto $("$MOSQUITTO" -h 2>&1 | sed -n 's/^mosquitto version //p' | head -1)"
echo "- uptime before: $(uptime)"
echo "- $DURATION s per run, window $WINDOW messages per publisher, fan-in $PUBS publishers, fan-out $SUBS subscribers,"
echo "  both brokers: $MAX_INFLIGHT in flight and $MAX_QUEUED queued per client, MQTT 3.1.1"
echo

if [ "$SKIP_LOAD" != 1 ]; then
    start_ours
    start_mosquitto
    RESULTS=$WORK/results.txt
    : >"$RESULTS"
    for scenario in fan-in fan-out; do
        for qos in 0 1; do
            for payload in 64 1024; do
                counts=(--pubs "$PUBS" --subs 1)
                [ "$scenario" = fan-out ] && counts=(--pubs 1 --subs "$SUBS")
                for broker in ours mosquitto; do
                    port=$OURS_PORT
                    [ "$broker" = mosquitto ] && port=$MOSQ_PORT
                    line=$("$BIN/mqtt-bench" --port "$port" --label "$broker" \
                        --scenario "$scenario" "${counts[@]}" --qos "$qos" \
                        --payload "$payload" --duration "$DURATION" --window "$WINDOW" \
                        2>>"$WORK/bench.log" || echo "broker=$broker scenario=$scenario failed")
                    echo "$line" >>"$RESULTS"
                    echo "$line" >&2
                done
            done
        done
    done
    stop "$OURS_PID"
    stop "$MOSQ_PID"

    echo "| scenario | QoS | payload | ours msg/s | mosquitto msg/s | ratio | ours p50 µs | mosq p50 µs | ours p99 µs | mosq p99 µs | lost ours/mosq |"
    echo "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---|"
    for scenario in fan-in fan-out; do
        for qos in 0 1; do
            for payload in 64 1024; do
                o=$(grep "^broker=ours scenario=$scenario qos=$qos payload=$payload " "$RESULTS" || true)
                m=$(grep "^broker=mosquitto scenario=$scenario qos=$qos payload=$payload " "$RESULTS" || true)
                if [ -z "$o" ] || [ -z "$m" ]; then
                    echo "| $scenario | $qos | $payload | failed | | | | | | | |"
                    continue
                fi
                ratio=$(awk -v a="$(field "$o" msgs_per_sec)" -v b="$(field "$m" msgs_per_sec)" \
                    'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }')
                echo "| $scenario | $qos | $payload | $(field "$o" msgs_per_sec) | $(field "$m" msgs_per_sec) | $ratio | $(field "$o" p50_us) | $(field "$m" p50_us) | $(field "$o" p99_us) | $(field "$m" p99_us) | $(field "$o" lost)/$(field "$m" lost) |"
            done
        done
    done
    echo
    echo "(msg/s = deliveries per second at the subscribers; fan-in: $PUBS→1, fan-out: 1→$SUBS)"
    echo
fi

# Idle connections: resident memory of a fresh broker before and after opening them.
idle_test() {
    local broker=$1 pid=$2 port=$3
    sleep 0.5
    local before after out=$WORK/idle.$broker
    before=$(rss_kb "$pid")
    : >"$out"
    "$BIN/mqtt-bench" --port "$port" --label "$broker" --scenario idle \
        --connections "$IDLE_CONNS" --hold "$IDLE_HOLD" --keep-alive "$IDLE_KEEP_ALIVE" \
        "${IDLE_ARGS[@]}" >"$out" 2>>"$WORK/bench.log" &
    local bench=$!
    PIDS+=("$bench")
    local i
    for i in $(seq 1200); do
        grep -q '^idle ready' "$out" && break
        kill -0 "$bench" 2>/dev/null || break
        sleep 0.1
    done
    sleep "$IDLE_SETTLE"
    after=$(rss_kb "$pid")
    local connected
    connected=$(field "$(grep '^idle ready' "$out" || true)" connected)
    connected=${connected:-0}
    wait "$bench" || true
    local per
    per=$(awk -v a="$after" -v b="$before" -v k="$connected" \
        'BEGIN { if (k > 0) printf "%.0f", (a - b) * 1024 / k; else print "n/a" }')
    echo "| $broker | $connected | $before | $after | $per |"
}

if [ "$SKIP_IDLE" != 1 ]; then
    if [ "$IDLE_SUBSCRIBE" = 1 ]; then
        echo "Idle connections, each subscribed to its own topic (keep alive $IDLE_KEEP_ALIVE s, measured $IDLE_SETTLE s after all connected), fresh broker each:"
    else
        echo "Idle connections (keep alive $IDLE_KEEP_ALIVE s), fresh broker each:"
    fi
    echo
    echo "| broker | connections | VmRSS before kB | VmRSS after kB | bytes per connection |"
    echo "|---|---:|---:|---:|---:|"
    start_ours
    idle_test ours "$OURS_PID" "$OURS_PORT"
    stop "$OURS_PID"
    start_mosquitto
    idle_test mosquitto "$MOSQ_PID" "$MOSQ_PORT"
    stop "$MOSQ_PID"
    echo
fi

echo "- uptime after: $(uptime)"
if [ -s "$WORK/bench.log" ]; then
    echo
    echo "bench stderr:"
    sort "$WORK/bench.log" | uniq -c | head -20
fi
