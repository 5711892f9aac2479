//! Interop tests: the example broker (`examples/src/bin/mqtt-broker.rs`, a thin tokio
//! adapter over `mqtt_broker::Broker`) against independent implementations, as real
//! processes over real sockets.
//!
//! - [`mosquitto`]: `mosquitto_pub`/`mosquitto_sub` in 3.1, 3.1.1 and 5.0: QoS 0/1/2,
//!   retained messages, `+`/`#` and `$` topics, wills, persistent sessions, 5.0 user
//!   properties and message expiry, a burst of 10,000 QoS 1 messages in order.
//! - [`paho`]: Python `paho-mqtt` 2.x, 3.1.1 and 5.0 over TCP and WebSocket, shared
//!   subscriptions.
//! - [`rumqttc_peer`]: `rumqttc` 3.1.1 and 5.0.
//! - [`mqttjs`]: MQTT.js 5 (npm `mqtt`) from Node, 3.1.1 and 5.0 over TCP and WebSocket,
//!   including bursts of 200 QoS 1/2 publishes that ignore the broker's Receive Maximum.
//! - [`access`]: TLS (`mosquitto_pub`/`mosquitto_sub` and paho over WebSocket), password
//!   files (mosquitto's `$7$` and Argon2) and mosquitto-format ACLs.
//! - [`bad_peers`]: garbage, protocol violations, oversize packets and unfinished CONNECTs
//!   over raw TCP, while a well-behaved client keeps working.
//! - [`bridge_in`]: a `mosquitto` daemon bridged to the broker (`bridge_protocol_version`
//!   3.1.1 and 5.0): both ways at each QoS, no loop with `both`, no QoS 1 loss across a
//!   restart of the broker.
//! - [`bridge_out`]: the broker bridged to a `mosquitto` daemon by a `connection` section
//!   of its `-c FILE`: out, in and both ways at each QoS over 3.1.1 and 5.0, no loop, no
//!   QoS 1 loss across a restart of mosquitto.
//! - [`cluster`]: three brokers clustered over three `nats-server` processes: publish and
//!   subscribe across nodes at each QoS, retained messages and a shared subscription
//!   cluster-wide, a session taken over from another node, a broker node and a NATS
//!   server killed.
//! - [`conf`]: `-c FILE` in mosquitto.conf syntax: a listener, a password file and
//!   `allow_anonymous false`; unsupported options, and bridge settings it cannot honour,
//!   refused with the line.
//! - [`store`]: the broker's data directory, and a damaged or busy store refused with a
//!   message and exit status 1.
//!
//! Each test starts its own broker on free loopback ports ([`broker::Broker`]). Missing
//! peers fail the tests; see [`broker`] for how the binary is found and the peers checked.

mod access;
mod bad_peers;
mod bridge_in;
mod bridge_out;
mod broker;
mod cluster;
mod conf;
mod mosquitto;
#[path = "../../../mqtt-tokio/tests/support/mosquitto.rs"]
mod mosquitto_daemon;
mod mqttjs;
#[path = "../support/nats.rs"]
mod nats;
mod paho;
mod rumqttc_peer;
mod store;
