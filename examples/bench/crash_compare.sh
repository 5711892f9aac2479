#!/usr/bin/env bash
# What a SIGKILL costs (issue #13): the crash tests' harness (tests/tests/crash.rs) run
# against mosquitto with `persistence true` and its default autosave (every 30 minutes and
# on a clean shutdown), then against our example broker on its --data-dir (durable by
# default). Two scenarios each, counting acknowledged messages that never arrive:
#
# - under load: a QoS 1 and a QoS 2 publisher send without pause to a persistent
#   subscriber (MQTT 3.1.1) while the broker is killed with SIGKILL at random moments,
#   CRASH_ROUNDS times (5), and started again on the same state and port;
# - queued for an absent session: CRASH_MESSAGES (10,000) QoS 1 and as many QoS 2 are
#   queued for a `mosquitto_sub -c` session that is away, the broker is killed and started
#   again, and the session comes back.
#
# A comparison, not a test: nothing fails on mosquitto's losses. The kill schedule comes
# from CRASH_SEED (printed; set it to repeat a run). CRASH_COMPARE_OURS=0 runs mosquitto
# only; CRASH_BROKER_ARGS adds options to our broker (say `--durability 10ms`).
#
# Needs mosquitto and mosquitto-clients (Debian: apt-get install -y mosquitto
# mosquitto-clients). The test builds the example broker itself (or takes MQTT_BROKER_BIN).
#
# Usage: examples/bench/crash_compare.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"
uptime
cargo test -q -p mqtt-tests --test crash -- --ignored --exact compare_with_mosquitto \
    --nocapture
