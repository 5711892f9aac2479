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
#
# Then (issue #12), each part skippable:
# - open loop (SKIP_OPEN=1): publishers send without a window (mqtt-bench --open-loop) in
#   fan-in ($PUBS->1), fan-out (1->$SUBS) and blast (BLAST_PUBS, 8, -> 1) at each QoS of
#   OPEN_QOS ("0 1 2"), payload 64 B. Both brokers with default flags, except mosquitto's
#   queue limits raised (OPEN_MOSQ_QUEUED, 1000000 messages, no byte limit). Table: delivered
#   msg/s, p50/p99, lost, duplicates; then the geometric mean of ours/mosquitto delivered
#   msg/s over every closed- and open-loop load, and again over the loads where neither
#   broker lost a message. OPEN_INFLIGHT (1000): unacknowledged QoS 1/2 messages per
#   publisher (mqtt-bench --open-inflight). mosquitto 2.0.11 takes at most
#   max_inflight_messages (20) QoS 2 messages in flight from a 3.1.1 client and silently
#   drops the rest while still completing their PUBREC/PUBREL/PUBCOMP (a 3.1.1 client has
#   no way to learn the limit); OPEN_INFLIGHT=20 stays within it.
# - connect latency (SKIP_CONNECT=1): CONNECT_N (1000) connections, CONNECT_CONC (16) at a
#   time, p50/p99 from TCP connect to CONNACK. A run lasts about 0.1 s, so one scheduling
#   hiccup of a shared machine is its p99: CONNECT_ROUNDS (1) repeats it, the brokers taking
#   turns to go first, a fresh broker each time, and prints the median of each column.
# - fixed rate (SKIP_RATE=1): 1 publisher -> 1 subscriber at RATE msg/s (1000), QoS RATE_QOS
#   (1), latency p50/p99 on an idle broker, then again while RATE_IDLE_CONNS (15000) idle
#   connections are held (needs `ulimit -n 20000`; lowered to fit the limit otherwise).
# Every run is bounded (`timeout`): DURATION seconds of load plus a few seconds of drain.
#
# Our broker runs with --in-memory (as mosquitto does by default) unless OURS_DURABILITY is
# set: `always` or `<N>ms` (its --durability), each start with a fresh --data-dir in the
# work directory (removed at the end).
set -euo pipefail

cd "$(dirname "$0")/../.."
# shellcheck source=examples/bench/lib.sh
. examples/bench/lib.sh

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
SKIP_OPEN=${SKIP_OPEN:-0}
SKIP_CONNECT=${SKIP_CONNECT:-0}
SKIP_RATE=${SKIP_RATE:-0}
OPEN_QOS=${OPEN_QOS:-0 1 2}
BLAST_PUBS=${BLAST_PUBS:-8}
OPEN_MOSQ_QUEUED=${OPEN_MOSQ_QUEUED:-1000000}
OPEN_INFLIGHT=${OPEN_INFLIGHT:-1000}
CONNECT_N=${CONNECT_N:-1000}
CONNECT_CONC=${CONNECT_CONC:-16}
CONNECT_ROUNDS=${CONNECT_ROUNDS:-1}
RATE=${RATE:-1000}
RATE_QOS=${RATE_QOS:-1}
RATE_IDLE_CONNS=${RATE_IDLE_CONNS:-15000}
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
if [ "$FD_LIMIT" != unlimited ] && [ "$RATE_IDLE_CONNS" -gt $((FD_LIMIT - 200)) ]; then
    echo "ulimit -n is $FD_LIMIT: fixed-rate idle load lowered to $((FD_LIMIT - 200)) connections" >&2
    RATE_IDLE_CONNS=$((FD_LIMIT - 200))
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

# Starts our broker; sets OURS_PID and OURS_PORT.
# With OURS_DEFAULTS=1, only the address flags (default limits).
start_ours() {
    local out=$WORK/ours.$RANDOM
    local limits=(--sys-interval 0 --max-queued "$MAX_QUEUED" --max-inflight "$MAX_INFLIGHT")
    [ "${OURS_DEFAULTS:-0}" = 1 ] && limits=()
    # Created before the broker starts: polled below, and under `set -e` a read of a
    # file the child has not yet opened would end the script.
    : >"$out"
    local store=(--in-memory)
    if [ -n "${OURS_DURABILITY:-}" ]; then
        store=(--data-dir "$WORK/data.$RANDOM$RANDOM" --durability "$OURS_DURABILITY")
    fi
    "$BIN/mqtt-broker" --bind 127.0.0.1:0 --no-ws "${store[@]}" "${limits[@]}" >"$out" 2>>"$WORK/ours.log" &
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

# Starts mosquitto with the same limits; sets MOSQ_PID and MOSQ_PORT. With
# MOSQ_DEFAULTS=1: its defaults, except the queue limits raised to OPEN_MOSQ_QUEUED.
start_mosquitto() {
    MOSQ_PORT=$(free_port)
    local conf=$WORK/mosquitto.$MOSQ_PORT.conf
    if [ "${MOSQ_DEFAULTS:-0}" = 1 ]; then
        cat >"$conf" <<EOF
listener $MOSQ_PORT 127.0.0.1
allow_anonymous true
persistence false
max_queued_messages $OPEN_MOSQ_QUEUED
max_queued_bytes 0
log_dest stderr
log_type error
log_type warning
EOF
    else
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
    fi
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

# Ratio ours/mosquitto of field $3 over result lines $1 and $2.
ratio() {
    awk -v a="$(field "$1" "$3")" -v b="$(field "$2" "$3")" \
        'BEGIN { if (b > 0) printf "%.2f×", a / b; else print "n/a" }'
}

if [ "$SKIP_OPEN" != 1 ]; then
    OURS_DEFAULTS=1 start_ours
    MOSQ_DEFAULTS=1 start_mosquitto
    OPEN=$WORK/open.txt
    : >"$OPEN"
    for scenario in fan-in fan-out blast; do
        for qos in $OPEN_QOS; do
            case $scenario in
                fan-in) counts=(--pubs "$PUBS" --subs 1) ;;
                fan-out) counts=(--pubs 1 --subs "$SUBS") ;;
                blast) counts=(--pubs "$BLAST_PUBS" --subs 1) ;;
            esac
            for broker in ours mosquitto; do
                port=$OURS_PORT
                [ "$broker" = mosquitto ] && port=$MOSQ_PORT
                line=$(timeout $((DURATION + 40)) "$BIN/mqtt-bench" --port "$port" \
                    --label "$broker" --scenario "$scenario" "${counts[@]}" --qos "$qos" \
                    --payload 64 --duration "$DURATION" --open-loop \
                    --open-inflight "$OPEN_INFLIGHT" 2>>"$WORK/bench.log" ||
                    echo "broker=$broker scenario=$scenario failed")
                echo "$line" >>"$OPEN"
                echo "$line" >&2
            done
        done
    done
    stop "$OURS_PID"
    stop "$MOSQ_PID"

    echo "Open loop (no window), 64 B payloads, default flags (mosquitto: queue limits $OPEN_MOSQ_QUEUED):"
    echo
    echo "| load | QoS | ours msg/s | mosquitto msg/s | ratio | ours p50 µs | mosq p50 µs | ours p99 µs | mosq p99 µs | lost ours/mosq | duplicates ours/mosq | sent ours/mosq |"
    echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---|---|---|"
    for scenario in fan-in fan-out blast; do
        for qos in $OPEN_QOS; do
            o=$(grep "^broker=ours scenario=$scenario qos=$qos " "$OPEN" || true)
            m=$(grep "^broker=mosquitto scenario=$scenario qos=$qos " "$OPEN" || true)
            if [ -z "$o" ] || [ -z "$m" ]; then
                echo "| $scenario | $qos | failed | | | | | | | | | |"
                continue
            fi
            echo "| $scenario $(field "$o" pubs)→$(field "$o" subs) | $qos | $(field "$o" unique_per_sec) | $(field "$m" unique_per_sec) | $(ratio "$o" "$m" unique_per_sec) | $(field "$o" p50_us) | $(field "$m" p50_us) | $(field "$o" p99_us) | $(field "$m" p99_us) | $(field "$o" lost)/$(field "$m" lost) | $(field "$o" duplicates)/$(field "$m" duplicates) | $(field "$o" sent)/$(field "$m" sent) |"
        done
    done
    echo
    echo "(msg/s = distinct deliveries per second; lost = per subscriber, sent (QoS 0) or acknowledged (QoS 1/2) and never delivered; up to $OPEN_INFLIGHT unacknowledged QoS 1/2 messages per publisher)"
    echo
    if grep -q "^broker=mosquitto .* qos=2 .* lost=[1-9]" "$OPEN"; then
        echo "mosquitto lost QoS 2 messages: it takes at most max_inflight_messages (20) in flight from a 3.1.1 client and drops the rest while completing their handshake; OPEN_INFLIGHT=20 stays within it."
        echo
    fi
fi

# Geometric mean over every load both brokers completed, closed and open loop; then the
# same over the loads where neither broker lost a message: a broker that drops what it
# cannot carry is not faster for it.
if [ "$SKIP_LOAD" != 1 ] || [ "$SKIP_OPEN" != 1 ]; then
    cat "${RESULTS:-/dev/null}" "${OPEN:-/dev/null}" | awk '
        { key = ""; b = ""; r = ""; m = ""; l = 0;
          for (i = 1; i <= NF; i++) {
              split($i, kv, "=");
              if (kv[1] == "broker") b = kv[2];
              else if (kv[1] == "scenario" || kv[1] == "qos" || kv[1] == "payload" || kv[1] == "mode") key = key " " $i;
              else if (kv[1] == "unique_per_sec") r = kv[2];
              else if (kv[1] == "msgs_per_sec") m = kv[2];
              else if (kv[1] == "lost") l = kv[2];
          }
          if (r == "") r = m;
          rate[b, key] = r; lost[b, key] = l; keys[key] = 1 }
        END { n = 0; s = 0; nf = 0; sf = 0;
              for (k in keys) if (rate["ours", k] > 0 && rate["mosquitto", k] > 0) {
                  x = log(rate["ours", k] / rate["mosquitto", k]); s += x; n++;
                  if (lost["ours", k] == 0 && lost["mosquitto", k] == 0) { sf += x; nf++ } }
              if (n > 0) printf "Geometric mean of ours/mosquitto delivered msg/s over %d loads (closed and open loop): %.2f×\n\n", n, exp(s / n);
              if (nf > 0) printf "Geometric mean over the %d loads where neither broker lost a message: %.2f×\n\n", nf, exp(sf / nf) }'
fi

if [ "$SKIP_CONNECT" != 1 ]; then
    rounds_note=""
    [ "$CONNECT_ROUNDS" -gt 1 ] && rounds_note=", $CONNECT_ROUNDS rounds"
    echo "Connect latency: $CONNECT_N connections, $CONNECT_CONC at a time (default flags, fresh broker each$rounds_note):"
    echo
    echo "| broker | ok | TCP connect→CONNACK p50 µs | p99 µs | max µs | CONNECT→CONNACK p50 µs | p99 µs |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    CONNECTS=$WORK/connect.txt
    : >"$CONNECTS"
    for round in $(seq "$CONNECT_ROUNDS"); do
    order="ours mosquitto"
    [ $((round % 2)) = 0 ] && order="mosquitto ours"
    for broker in $order; do
        if [ "$broker" = ours ]; then
            OURS_DEFAULTS=1 start_ours
            pid=$OURS_PID port=$OURS_PORT
        else
            MOSQ_DEFAULTS=1 start_mosquitto
            pid=$MOSQ_PID port=$MOSQ_PORT
        fi
        c=$(timeout 120 "$BIN/mqtt-bench" --port "$port" --label "$broker" --scenario connect \
            --connections "$CONNECT_N" --connect-concurrency "$CONNECT_CONC" \
            2>>"$WORK/bench.log" || true)
        echo "$c" >&2
        echo "$c" >>"$CONNECTS"
        echo "| $broker | $(field "$c" ok) | $(field "$c" p50_us) | $(field "$c" p99_us) | $(field "$c" max_us) | $(field "$c" mqtt_p50_us) | $(field "$c" mqtt_p99_us) |"
        stop "$pid"
    done
    done
    if [ "$CONNECT_ROUNDS" -gt 1 ]; then
        for broker in ours mosquitto; do
            med() {
                grep "^connect broker=$broker " "$CONNECTS" | sed -n "s/.* $1=\([0-9]*\).*/\1/p" |
                    sort -n | awk '{ v[NR] = $1 } END { if (NR) print v[int((NR + 1) / 2)] }'
            }
            echo "| $broker, median of $CONNECT_ROUNDS | | $(med p50_us) | $(med p99_us) | $(med max_us) | $(med mqtt_p50_us) | $(med mqtt_p99_us) |"
        done
    fi
    echo
fi

# Fixed-rate latency against port $2, labelled $1, with $3 idle connections held.
rate_run() {
    local line
    line=$(timeout $((DURATION + 40)) "$BIN/mqtt-bench" --port "$2" --label "$1" \
        --scenario fan-in --pubs 1 --subs 1 --qos "$RATE_QOS" --payload 64 \
        --duration "$DURATION" --rate "$RATE" 2>>"$WORK/bench.log" || echo "broker=$1 failed")
    echo "$line" >&2
    echo "| $1 | $3 | $(field "$line" unique_per_sec) | $(field "$line" p50_us) | $(field "$line" p99_us) | $(field "$line" max_us) | $(field "$line" lost) |"
}

if [ "$SKIP_RATE" != 1 ]; then
    echo "Fixed rate: 1→1 at $RATE msg/s, QoS $RATE_QOS, 64 B, $DURATION s; on an idle broker, then while $RATE_IDLE_CONNS idle connections (keep alive 30 s) are held (default flags, fresh broker each):"
    echo
    echo "| broker | idle connections held | msg/s | p50 µs | p99 µs | max µs | lost |"
    echo "|---|---:|---:|---:|---:|---:|---:|"
    for broker in ours mosquitto; do
        if [ "$broker" = ours ]; then
            OURS_DEFAULTS=1 start_ours
            pid=$OURS_PID port=$OURS_PORT
        else
            MOSQ_DEFAULTS=1 start_mosquitto
            pid=$MOSQ_PID port=$MOSQ_PORT
        fi
        rate_run "$broker" "$port" 0
        out=$WORK/rate-idle.$broker
        : >"$out"
        "$BIN/mqtt-bench" --port "$port" --label "$broker" --scenario idle \
            --connections "$RATE_IDLE_CONNS" --hold $((DURATION + 60)) --keep-alive 30 \
            >"$out" 2>>"$WORK/bench.log" &
        holder=$!
        PIDS+=("$holder")
        for i in $(seq 1200); do
            grep -q '^idle ready' "$out" && break
            kill -0 "$holder" 2>/dev/null || break
            sleep 0.1
        done
        held=$(field "$(grep '^idle ready' "$out" || true)" connected)
        rate_run "$broker" "$port" "${held:-0}"
        stop "$holder"
        stop "$pid"
    done
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
