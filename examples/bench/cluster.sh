#!/usr/bin/env bash
# What crossing nodes costs (issue #16): two example brokers in one cluster over NATS
# (`mqtt-broker --cluster`), a message published on node A and received on node A
# ("same node") or on node B ("cross node"), in one run.
#
# Loads, all in memory (--in-memory) so that only the cluster differs:
# - pairs: PAIRS publishers, each to its own subscriber, QoS 1. Closed loop (WINDOW
#   messages per publisher in flight), then open loop at OPEN_RATE msg/s in all (a fixed
#   schedule: what the path cannot take shows as lost messages and latency).
# - persistent: the closed pairs with persistent subscribers (--persistent): each node
#   stores its sessions in NATS (JetStream), so a message that waits for its subscriber
#   is written there.
# - latency: one publisher to one subscriber at RATE msg/s, QoS 1, p50/p99.
# - connect: CONNECTS connections, 64 at a time, to a clustered node (each CONNECT a
#   claim written to JetStream) and to a node alone: connections per second, p50/p99.
# Every line: delivered msg/s, p50/p99 latency (µs), lost, duplicates. A benchmark, not a
# test: nothing asserts a speed. On a 2-core machine the two brokers, NATS and the load
# generator share the cores: the cross-node figures include a second broker's and NATS's
# CPU. ROUNDS (1) repeats each load; `uptime` is printed.
#
# Usage: examples/bench/cluster.sh
# Knobs: DURATION (5 s), PAIRS (10), WINDOW (64), OPEN_RATE (20000), RATE (1000),
# CONNECTS (5000), ROUNDS (1), NATS_SERVERS (3: a NATS cluster as in
# examples/cluster/nats.sh, streams replicated 3 times; 1: one server, no replicas).
set -euo pipefail

cd "$(dirname "$0")/../.."
# shellcheck source=examples/bench/lib.sh
. examples/bench/lib.sh

DURATION=${DURATION:-5}
PAIRS=${PAIRS:-10}
WINDOW=${WINDOW:-64}
OPEN_RATE=${OPEN_RATE:-20000}
RATE=${RATE:-1000}
CONNECTS=${CONNECTS:-5000}
ROUNDS=${ROUNDS:-1}
NATS_SERVERS=${NATS_SERVERS:-3}

NATS=$(command -v nats-server || true)
[ -z "$NATS" ] && [ -x /usr/sbin/nats-server ] && NATS=/usr/sbin/nats-server
if [ -z "$NATS" ]; then
    echo "nats-server not found: apt-get update && apt-get install -y nats-server" >&2
    exit 1
fi

cargo build --release -q -p mqtt-examples --bin mqtt-broker --bin mqtt-bench
BIN=${CARGO_TARGET_DIR:-target}/release
WORK=$(mktemp -d)
PIDS=()

cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ "$NATS_SERVERS" = 3 ] && bash examples/cluster/nats.sh --dir "$WORK/nats" --stop >/dev/null 2>&1
    true
    wait 2>/dev/null || true
    rm -rf "$WORK"
}
trap cleanup EXIT


if [ "$NATS_SERVERS" = 3 ]; then
    # Client ports; routes and monitoring take PORT+2000 and PORT+4000.
    NATS_PORTS=()
    while [ ${#NATS_PORTS[@]} -lt 3 ]; do
        p=$(free_port)
        [ "$p" -lt 60000 ] && NATS_PORTS+=("$p")
    done
    NATS_SERVER_BIN=$NATS bash examples/cluster/nats.sh --dir "$WORK/nats" "${NATS_PORTS[@]}" \
        >/dev/null 2>"$WORK/nats-start.log" || { cat "$WORK/nats-start.log" >&2; exit 1; }
    URLS=()
    for p in "${NATS_PORTS[@]}"; do URLS+=("nats://127.0.0.1:$p"); done
else
    NATS_PORT=$(free_port)
    "$NATS" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$WORK/js" 2>>"$WORK/nats.log" &
    PIDS+=($!)
    for i in $(seq 100); do
        (exec 3<>"/dev/tcp/127.0.0.1/$NATS_PORT") 2>/dev/null && break
        sleep 0.05
    done
    URLS=("nats://127.0.0.1:$NATS_PORT")
fi
NODES=0

# Starts node $1 of the cluster (`solo`: a broker alone); prints its port.
node() {
    # Each node prefers its own NATS server (then the others).
    local urls=("${URLS[@]:$((NODES % ${#URLS[@]}))}" "${URLS[@]:0:$((NODES % ${#URLS[@]}))}")
    local joined
    joined=$(IFS=,; echo "${urls[*]}")
    local out=$WORK/out.$1 cluster=(--cluster "$joined" --node "$1"
        --cluster-replicas "$NATS_SERVERS")
    [ "$1" = solo ] && cluster=()
    "$BIN/mqtt-broker" --bind 127.0.0.1:0 --no-ws --sys-interval 0 --in-memory \
        --max-queued 100000 "${cluster[@]}" >"$out" 2>>"$WORK/broker.$1.log" &
    PIDS+=($!)
    local i port
    for i in $(seq 200); do
        port=$(sed -n 's/^listening on tcp .*:\([0-9]*\)$/\1/p' "$out")
        if [ -n "$port" ] && { [ "$1" = solo ] || grep -q '^cluster node' "$out"; }; then
            echo "$port"
            return
        fi
        sleep 0.05
    done
    echo "node $1 did not start:" >&2
    cat "$WORK/broker.$1.log" >&2
    exit 1
}
A=$(node a)
NODES=1
B=$(node b)
SOLO=$(node solo)

field() { sed -n "s/.* $1=\([^ ]*\).*/\1/p"; }

# run PATH LABEL mqtt-bench-args...: one line of the table.
run() {
    local path=$1 label=$2 sub_port=$A
    shift 2
    [ "$path" = "cross node" ] && sub_port=$B
    local line
    line=$(timeout $((DURATION * 8 + 30)) "$BIN/mqtt-bench" --port "$A" --sub-port "$sub_port" \
        --qos 1 --duration "$DURATION" --window "$WINDOW" --label "${path// /-}" "$@" ||
        echo "path=$path failed")
    printf '| %-14s | %-10s | %9s | %7s | %7s | %6s | %4s |\n' "$label" "$path" \
        "$(echo "$line" | field msgs_per_sec)" "$(echo "$line" | field p50_us)" \
        "$(echo "$line" | field p99_us)" "$(echo "$line" | field lost)" \
        "$(echo "$line" | field duplicates)"
}

PATHS=("same node" "cross node")
echo "# $(uptime)"
echo "# mqtt-bench QoS 1, ${DURATION} s per run, window $WINDOW; $NATS_SERVERS nats-server $("$NATS" --version | sed 's/.* v//')"
echo
echo "| load           | path       | msg/s     | p50 µs  | p99 µs  | lost   | dup  |"
echo "|---|---|--:|--:|--:|--:|--:|"
for round in $(seq "$ROUNDS"); do
    order=("${PATHS[@]}")
    ((round % 2 == 0)) && order=("cross node" "same node")
    for p in "${order[@]}"; do run "$p" "pairs closed" --scenario pairs --pubs "$PAIRS"; done
    for p in "${order[@]}"; do
        run "$p" "pairs open" --scenario pairs --pubs "$PAIRS" --rate "$OPEN_RATE"
    done
    for p in "${order[@]}"; do
        run "$p" "persistent" --scenario pairs --pubs "$PAIRS" --persistent
    done
    for p in "${order[@]}"; do
        run "$p" "latency $RATE/s" --scenario pairs --pubs 1 --rate "$RATE"
    done
done
echo
echo "| connect ($CONNECTS, 64 at a time) | connections/s | p50 µs | p99 µs | failed |"
echo "|---|--:|--:|--:|--:|"
for target in clustered alone; do
    port=$A
    [ $target = alone ] && port=$SOLO
    line=$("$BIN/mqtt-bench" --port "$port" --scenario connect --connections "$CONNECTS" \
        --connect-concurrency 64 --label "$target" || echo "failed")
    secs=$(echo "$line" | field secs)
    ok=$(echo "$line" | field ok)
    printf '| %-9s | %9s | %7s | %7s | %4s |\n' "$target" \
        "$(awk -v n="$ok" -v s="$secs" 'BEGIN { if (s > 0) printf "%.0f", n / s }')" \
        "$(echo "$line" | field p50_us)" "$(echo "$line" | field p99_us)" \
        "$(echo "$line" | field failed)"
done
