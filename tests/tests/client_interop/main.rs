//! Interop tests for the example client (`examples/src/bin/mqtt-client.rs`, a thin tokio
//! adapter over `mqtt_state::Client`) against a real `mosquitto` broker, and against
//! `mosquitto_pub`/`mosquitto_sub`, as real processes over real sockets.
//!
//! - [`cases`]: QoS 0/1/2, retained messages, `+`/`#`, wills, refused connections,
//!   `pub -l`, WebSocket, 5.0 user properties and message expiry, both ways with
//!   mosquitto's own clients, in 3.1.1 and 5.0.
//! - [`cases::session_survives_a_broker_restart`] and
//!   [`cases::running_subscriber_reconnects_and_resumes`]: persistent sessions across a
//!   restart of mosquitto with persistence on.
//!
//! Each test starts its own mosquitto ([`mosquitto::Mosquitto`]) on a free loopback port
//! with a generated configuration. A missing `mosquitto` (Debian `mosquitto`) or
//! `mosquitto_pub`/`mosquitto_sub` (`mosquitto-clients`) fails the tests; `.ci/run`
//! installs both. The client binary is built like the broker in the `interop` tests
//! (`MQTT_CLIENT_BIN` skips the build).

// The process helpers of the `interop` tests; not all of them are used here.
#[allow(dead_code)]
#[path = "../interop/broker.rs"]
mod broker;
mod cases;
mod mosquitto;
