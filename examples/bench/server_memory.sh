#!/usr/bin/env bash
# Resident memory per idle connection of the two ways this workspace serves connections:
# the example broker's mio loop (plain TCP, and its WebSocket listener, which goes through
# mqtt-tokio's server hub: a tokio task per connection) and mqtt-tokio's `Server` runner
# (`cargo run -p mqtt-tokio --example broker`: every connection a tokio task). A benchmark,
# not a test: it asserts nothing.
#
#   ulimit -n 20000; examples/bench/server_memory.sh      # CONNS=10000 by default
#
# Each row: a fresh broker, VmRSS before and after CONNS connections that only keep alive
# (mqtt-bench --scenario idle, keep alive 30 s), measured 2 s after all connected.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
CONNS=${CONNS:-10000}
FD_LIMIT=$(ulimit -n)
if [ "$FD_LIMIT" -lt $((CONNS + 200)) ]; then
    CONNS=$((FD_LIMIT - 200))
    echo "ulimit -n is $FD_LIMIT: lowered to $CONNS connections" >&2
fi
cargo build -q --release -p mqtt-examples --bin mqtt-broker --bin mqtt-bench
cargo build -q --release -p mqtt-tokio --example broker
BIN=target/release
WORK=$(mktemp -d)
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    rm -rf "$WORK"
}
trap cleanup EXIT

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }

# measure LABEL PORT_KIND BENCH_ARGS... -- BROKER_CMD...
measure() {
    local label=$1 kind=$2
    shift 2
    local bench_args=()
    while [ "$1" != "--" ]; do bench_args+=("$1"); shift; done
    shift
    "$@" >"$WORK/out" 2>"$WORK/err" &
    local pid=$!
    PIDS+=("$pid")
    local port=""
    for _ in $(seq 100); do
        port=$(awk -v k="$kind" '$1 == "listening" && $3 == k { n = split($4, a, ":"); print a[n] }' "$WORK/out")
        [ -n "$port" ] && break
        sleep 0.1
    done
    sleep 0.5
    local before after
    before=$(rss_kb "$pid")
    "$BIN/mqtt-bench" --port "$port" --scenario idle --connections "$CONNS" --hold 5 \
        --keep-alive 30 "${bench_args[@]}" >"$WORK/bench" 2>>"$WORK/bench.err" &
    local bench=$!
    for _ in $(seq 1200); do
        grep -q '^idle ready' "$WORK/bench" && break
        kill -0 "$bench" 2>/dev/null || break
        sleep 0.1
    done
    sleep 2
    after=$(rss_kb "$pid")
    local connected
    connected=$(grep '^idle ready' "$WORK/bench" | tr ' ' '\n' | awk -F= '$1 == "connected" { print $2 }')
    connected=${connected:-0}
    wait "$bench" || true
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    awk -v l="$label" -v a="$after" -v b="$before" -v k="$connected" \
        'BEGIN { printf "| %s | %d | %d | %d | %s |\n", l, k, b, a, (k > 0 ? sprintf("%.0f", (a - b) * 1024 / k) : "n/a") }'
}

echo "| server | connections | VmRSS before kB | VmRSS after kB | bytes per connection |"
echo "|---|---:|---:|---:|---:|"
measure "example broker, plain TCP (mio loop)" tcp -- \
    "$BIN/mqtt-broker" --bind 127.0.0.1:0 --ws-bind 127.0.0.1:0 --in-memory
measure "mqtt-tokio Server, plain TCP (a task each)" tcp -- \
    "$BIN/examples/broker" 127.0.0.1:0
