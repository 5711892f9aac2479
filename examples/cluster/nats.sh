#!/usr/bin/env bash
# A three-server NATS cluster on this machine, for trying the broker cluster by hand
# (issue #16): the same shape as the tests' (tests/tests/support/nats.rs), with fixed ports.
#
#   bash examples/cluster/nats.sh [PORT0 PORT1 PORT2]   start (default 4222 4223 4224)
#   bash examples/cluster/nats.sh --stop                 stop all three, delete their data
#   bash examples/cluster/nats.sh --status               whether they run, and their URLs
#
# Options (before the ports):
#   --dir DIR      where configurations, JetStream stores, logs and pid files go
#                  (default: ${TMPDIR:-/tmp}/mqtt-nats-cluster); --stop and --status
#                  need the same --dir
#   --host ADDR    the address every port binds to (default 127.0.0.1: loopback only)
#
# Server i (named n0, n1, n2) takes clients on PORTi (nats://HOST:PORTi), routes on
# PORTi+2000 and HTTP monitoring on PORTi+4000 (so the defaults are NATS's usual 4222,
# 6222 and 8222 for n0). Each server routes to the other two and runs JetStream (needed
# for retained messages and session ownership; a JetStream cluster needs three servers
# for a quorum). The script returns once every server answers /healthz (cluster formed,
# JetStream meta leader elected), and prints the URLs to give the brokers.
#
# Needs `nats-server` (Debian: `apt-get install nats-server`, or `bash .ci/deps`), or
# NATS_SERVER_BIN naming one. Debian's package also installs a systemd service on port
# 4222: stop it (`systemctl stop nats-server`) or pass other ports.
set -euo pipefail

DEFAULT_DIR="${TMPDIR:-/tmp}/mqtt-nats-cluster"
DIR="$DEFAULT_DIR"
HOST=127.0.0.1
ACTION=start
PORTS=()

usage() {
    sed -n '2,/^set -euo/p' "${BASH_SOURCE[0]}" | sed '$d' | sed 's/^# \{0,1\}//'
}

while (($# > 0)); do
    case "$1" in
    --stop) ACTION=stop ;;
    --status) ACTION=status ;;
    --dir)
        DIR="${2:?--dir needs a directory}"
        shift
        ;;
    --host)
        HOST="${2:?--host needs an address}"
        shift
        ;;
    -h | --help)
        usage
        exit 0
        ;;
    -*)
        echo "nats.sh: unknown option $1 (see --help)" >&2
        exit 2
        ;;
    *) PORTS+=("$1") ;;
    esac
    shift
done

# The pid of server $1 if it is running, else nothing.
running_pid() {
    local f="$DIR/n$1.pid" pid
    [[ -f "$f" ]] || return 0
    pid=$(<"$f")
    if [[ "$pid" =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        echo "$pid"
    fi
}

# Prints the HTTP status of GET $3 on $1:$2, or nothing if there is no answer (bash's
# /dev/tcp: curl may not be installed).
http_status() {
    local line
    exec 3<>"/dev/tcp/$1/$2" 2>/dev/null || return 0
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\nConnection: close\r\n\r\n' "$3" "$1" >&3
    IFS= read -r -t 5 line <&3 || true
    exec 3<&- 3>&-
    line=${line%$'\r'}
    [[ "$line" =~ ^HTTP/[0-9.]+\ ([0-9]+) ]] && echo "${BASH_REMATCH[1]}"
    return 0
}

stop() {
    local i pid stopped=0
    for i in 0 1 2; do
        pid=$(running_pid "$i")
        [[ -n "$pid" ]] || continue
        kill -TERM "$pid"
        stopped=$((stopped + 1))
        for _ in $(seq 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            echo "n$i (pid $pid) did not stop on SIGTERM within 10 s: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
    # Only a directory this script made (it holds n0.conf) is deleted.
    if [[ -f "$DIR/n0.conf" ]]; then
        rm -rf "$DIR"
    fi
    echo "stopped $stopped nats-server(s); removed $DIR"
}

status() {
    local i pid any=0
    for i in 0 1 2; do
        pid=$(running_pid "$i")
        if [[ -n "$pid" ]]; then
            any=1
            echo "n$i: running (pid $pid), $(grep -m1 '^listen:' "$DIR/n$i.conf" | cut -d' ' -f2)"
        else
            echo "n$i: not running"
        fi
    done
    ((any)) && [[ -f "$DIR/urls" ]] && echo "client URLs: $(<"$DIR/urls")"
    return 0
}

case "$ACTION" in
stop)
    stop
    exit 0
    ;;
status)
    status
    exit 0
    ;;
esac

# ---- start ---------------------------------------------------------------------------
if ((${#PORTS[@]} == 0)); then
    PORTS=(4222 4223 4224)
elif ((${#PORTS[@]} != 3)); then
    echo "nats.sh: give three client ports, or none for 4222 4223 4224" >&2
    exit 2
fi
for p in "${PORTS[@]}"; do
    if ! [[ "$p" =~ ^[0-9]+$ ]] || ((p < 1 || p + 4000 > 65535)); then
        echo "nats.sh: bad port $p (1..61535: routes and monitoring take +2000 and +4000)" >&2
        exit 2
    fi
done

BIN="${NATS_SERVER_BIN:-}"
if [[ -z "$BIN" ]]; then
    BIN=$(PATH="$PATH:/usr/sbin:/usr/local/sbin" command -v nats-server || true)
fi
if [[ -z "$BIN" || ! -x "$BIN" ]]; then
    echo "nats.sh: nats-server not found: apt-get install nats-server (or bash .ci/deps)," \
        "or set NATS_SERVER_BIN" >&2
    exit 1
fi

for i in 0 1 2; do
    if [[ -n "$(running_pid "$i")" ]]; then
        echo "nats.sh: a cluster already runs from $DIR (n$i); --stop it first" >&2
        exit 1
    fi
done
for p in "${PORTS[@]}"; do
    for q in "$p" $((p + 2000)) $((p + 4000)); do
        if (exec 3<>"/dev/tcp/$HOST/$q") 2>/dev/null; then
            echo "nats.sh: port $q on $HOST is taken (a nats-server service?)" >&2
            exit 1
        fi
    done
done

rm -rf "$DIR"
mkdir -p "$DIR"
URLS=()
for i in 0 1 2; do
    p=${PORTS[$i]}
    routes=""
    for j in 0 1 2; do
        ((j == i)) || routes+="    nats-route://$HOST:$((PORTS[j] + 2000))"$'\n'
    done
    cat >"$DIR/n$i.conf" <<EOF
server_name: n$i
listen: $HOST:$p
http: $HOST:$((p + 4000))
jetstream {
  store_dir: "$DIR/n$i-jetstream"
}
cluster {
  name: mqtt-cluster
  listen: $HOST:$((p + 2000))
  routes: [
$routes  ]
}
EOF
    nohup "$BIN" -c "$DIR/n$i.conf" >"$DIR/n$i.log" 2>&1 </dev/null &
    echo $! >"$DIR/n$i.pid"
    URLS+=("nats://$HOST:$p")
done
(
    IFS=,
    echo "${URLS[*]}"
) >"$DIR/urls"

# Wait (bounded) until each server is healthy: routes up, JetStream meta leader elected.
for _ in $(seq 300); do
    healthy=0
    for i in 0 1 2; do
        if [[ -z "$(running_pid "$i")" ]]; then
            echo "nats.sh: n$i exited; its log ($DIR/n$i.log):" >&2
            tail -n 20 "$DIR/n$i.log" >&2
            stop >&2
            exit 1
        fi
        [[ "$(http_status "$HOST" $((PORTS[i] + 4000)) /healthz)" == 200 ]] &&
            healthy=$((healthy + 1))
    done
    ((healthy == 3)) && break
    sleep 0.1
done
if ((healthy != 3)); then
    echo "nats.sh: the cluster did not form within 30 s; logs in $DIR:" >&2
    for i in 0 1 2; do
        echo "---- n$i ----" >&2
        tail -n 10 "$DIR/n$i.log" >&2
    done
    stop >&2
    exit 1
fi

echo "NATS cluster up (JetStream on), files in $DIR:"
for i in 0 1 2; do
    p=${PORTS[$i]}
    echo "  n$i: clients nats://$HOST:$p  routes $HOST:$((p + 2000))  monitoring http://$HOST:$((p + 4000))/"
done
echo "client URLs: $(<"$DIR/urls")"
stop_cmd="bash $0 --stop"
[[ "$DIR" == "$DEFAULT_DIR" ]] || stop_cmd+=" --dir $DIR"
echo "stop with: $stop_cmd"
