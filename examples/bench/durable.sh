#!/usr/bin/env bash
# What durability costs (issue #13): the example broker in memory (--in-memory), durable
# with every acknowledgement on disk (--durability always, the default), durable within
# 10 ms (--durability 10ms), against mosquitto in memory (persistence false) and with its
# persistence on (persistence true: it writes at its autosave interval, so its speed is
# its in-memory speed, and a crash loses what it acknowledged since; see
# tests/tests/crash.rs and examples/bench/crash_compare.sh for the count).
#
# Loads, all QoS 1 with persistent subscribers (mqtt-bench --persistent), so that a
# durable broker stores every message:
# - pairs: PAIRS publishers, each to its own subscriber; fan-in: PUBS publishers to one
#   subscriber. Closed loop (WINDOW messages per publisher in flight), then open loop at
#   OPEN_RATE msg/s in all (a fixed schedule: what the broker cannot take shows as lost
#   messages and latency, not as a slower publisher).
# - latency: one publisher to one subscriber at RATE msg/s, p50/p99.
# Every line: delivered msg/s, p50/p99 latency (µs), lost, duplicates. A benchmark, not a
# test: nothing asserts a speed. Numbers on a shared machine are noisy: ROUNDS (1) repeats
# each load, the brokers taking turns, and `uptime` is printed.
#
# Usage: examples/bench/durable.sh
# Knobs: DURATION (5 s), PAIRS (10), PUBS (10), WINDOW (64), OPEN_RATE (100000),
# RATE (1000), ROUNDS (1), DATA_DIR (where durable stores go; default a temporary
# directory: the file system decides what an fsync costs).
set -euo pipefail

cd "$(dirname "$0")/../.."
# shellcheck source=examples/bench/lib.sh
. examples/bench/lib.sh

DURATION=${DURATION:-5}
PAIRS=${PAIRS:-10}
PUBS=${PUBS:-10}
WINDOW=${WINDOW:-64}
OPEN_RATE=${OPEN_RATE:-100000}
RATE=${RATE:-1000}
ROUNDS=${ROUNDS:-1}

MOSQUITTO=$(command -v mosquitto || true)
[ -z "$MOSQUITTO" ] && [ -x /usr/sbin/mosquitto ] && MOSQUITTO=/usr/sbin/mosquitto
if [ -z "$MOSQUITTO" ]; then
    echo "mosquitto not found: apt-get update && apt-get install -y mosquitto" >&2
    exit 1
fi

cargo build --release -q -p mqtt-examples --bin mqtt-broker --bin mqtt-bench
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d)
DATA_DIR=${DATA_DIR:-$WORK}
PID=

cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null || true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT


# Starts broker $1 (ours-mem, ours-always, ours-10ms, mosquitto, mosquitto-persist) on a
# fresh store; sets PID and PORT.
start() {
    local out=$WORK/out.$RANDOM
    : >"$out"
    case $1 in
    ours-*)
        local store
        case $1 in
        ours-mem) store=(--in-memory) ;;
        ours-always) store=(--data-dir "$DATA_DIR/d.$RANDOM$RANDOM" --durability always) ;;
        ours-10ms) store=(--data-dir "$DATA_DIR/d.$RANDOM$RANDOM" --durability 10ms) ;;
        esac
        "$BIN/mqtt-broker" --bind 127.0.0.1:0 --no-ws --sys-interval 0 \
            --max-queued 100000 "${store[@]}" >"$out" 2>>"$WORK/ours.log" &
        PID=$!
        local i
        for i in $(seq 200); do
            PORT=$(sed -n 's/^listening on tcp .*:\([0-9]*\)$/\1/p' "$out")
            [ -n "$PORT" ] && return
            sleep 0.05
        done
        echo "our broker did not start:" >&2
        cat "$WORK/ours.log" >&2
        exit 1
        ;;
    mosquitto*)
        PORT=$(free_port)
        local conf=$WORK/mosquitto.$PORT.conf
        local persistence=false
        [ "$1" = mosquitto-persist ] && persistence=true
        cat >"$conf" <<EOF
listener $PORT 127.0.0.1
allow_anonymous true
persistence $persistence
persistence_location $DATA_DIR/
persistence_file mosquitto.$PORT.db
max_queued_messages 100000
max_queued_bytes 0
set_tcp_nodelay true
sys_interval 0
log_dest stderr
log_type error
EOF
        "$MOSQUITTO" -c "$conf" 2>>"$WORK/mosquitto.log" &
        PID=$!
        local i
        for i in $(seq 100); do
            if (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; then
                return
            fi
            sleep 0.05
        done
        echo "mosquitto did not start:" >&2
        cat "$WORK/mosquitto.log" >&2
        exit 1
        ;;
    esac
}

stop() {
    kill "$PID" 2>/dev/null || true
    wait "$PID" 2>/dev/null || true
    PID=
}

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

# run BROKER LABEL mqtt-bench-args...: one line of the table.
run() {
    local broker=$1 label=$2
    shift 2
    start "$broker"
    local line
    line=$(timeout $((DURATION * 8 + 30)) "$BIN/mqtt-bench" --port "$PORT" --qos 1 \
        --persistent --duration "$DURATION" --window "$WINDOW" --label "$broker" "$@" ||
        echo "broker=$broker failed")
    stop
    printf '| %-12s | %-17s | %9s | %7s | %7s | %6s | %4s |\n' "$label" "$broker" \
        "$(echo "$line" | field msgs_per_sec)" "$(echo "$line" | field p50_us)" \
        "$(echo "$line" | field p99_us)" "$(echo "$line" | field lost)" \
        "$(echo "$line" | field duplicates)"
}

BROKERS=(ours-mem ours-always ours-10ms mosquitto mosquitto-persist)
echo "# $(uptime)"
echo "# mqtt-bench QoS 1, persistent subscribers, ${DURATION} s per run, window $WINDOW"
echo
echo "| load         | broker            | msg/s     | p50 µs  | p99 µs  | lost   | dup  |"
echo "|---|---|--:|--:|--:|--:|--:|"
for round in $(seq "$ROUNDS"); do
    order=("${BROKERS[@]}")
    # Take turns going first.
    if ((round % 2 == 0)); then
        order=()
        for ((i = ${#BROKERS[@]} - 1; i >= 0; i--)); do order+=("${BROKERS[$i]}"); done
    fi
    for b in "${order[@]}"; do run "$b" "pairs closed" --scenario pairs --pubs "$PAIRS"; done
    for b in "${order[@]}"; do run "$b" "fan-in closed" --scenario fan-in --pubs "$PUBS"; done
    for b in "${order[@]}"; do
        run "$b" "pairs open" --scenario pairs --pubs "$PAIRS" --rate "$OPEN_RATE"
    done
    for b in "${order[@]}"; do
        run "$b" "fan-in open" --scenario fan-in --pubs "$PUBS" --rate "$OPEN_RATE"
    done
    for b in "${order[@]}"; do
        run "$b" "latency $RATE/s" --scenario pairs --pubs 1 --rate "$RATE"
    done
done
