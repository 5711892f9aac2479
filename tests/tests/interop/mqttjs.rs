//! MQTT.js 5 (npm `mqtt`, the browser and Node client) against the example broker, from
//! Node, over TCP and WebSocket (`/mqtt`), MQTT 3.1.1 and 5.0.
//!
//! The scripts live in `tests/mqttjs/interop.mjs`, one case per run, printing `OK` last
//! when every check passed: `pubsub` (QoS 0/1/2 round trips, 5.0 user properties),
//! `retained` (kept, then cleared), `will` (the transport cut under the client), and
//! `burst1`/`burst2`: 200 QoS 1 or QoS 2 publishes fired without waiting. MQTT.js does not
//! hold back for the broker's Receive Maximum, so the 5.0 bursts are what a broker must
//! absorb rather than answer DISCONNECT 0x93 (Receive Maximum exceeded): every QoS 1
//! message acknowledged and delivered, in order; QoS 2 beyond the quota answered with
//! PUBREC 0x97 (Quota exceeded) as mosquitto does, the rest delivered once, in order.
//!
//! Node and the lock file's packages are required: `.ci/run` runs `npm ci` in
//! `tests/mqttjs`; without `node_modules` the first test runs it itself. A missing `node`
//! or `npm` fails the tests rather than skipping them.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::broker::{require, run, Broker};

/// The node project with the scripts and the lock file.
fn project() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("mqttjs")
}

/// Fails the test without node, and installs the locked packages once if they are not.
fn require_mqttjs() {
    static READY: OnceLock<()> = OnceLock::new();
    READY.get_or_init(|| {
        require("node", &["--version"], "install Node.js 18 or later");
        let dir = project();
        if !dir.join("node_modules/mqtt/package.json").is_file() {
            require("npm", &["--version"], "install npm");
            run(
                Command::new("npm")
                    .args(["ci", "--no-audit", "--no-fund"])
                    .current_dir(&dir),
                None,
                Duration::from_secs(300),
            );
        }
        let out = run(
            Command::new("node")
                .args(["-e", "console.log(require('mqtt/package.json').version)"])
                .current_dir(&dir),
            None,
            Duration::from_secs(20),
        );
        let version = out.stdout.last().cloned().unwrap_or_default();
        assert!(
            version.starts_with("5."),
            "MQTT.js 5 expected in {}, found {version:?}",
            dir.display()
        );
    });
}

#[derive(Clone, Copy)]
enum Transport {
    Tcp,
    WebSocket,
}

/// Runs one case of `interop.mjs` against `broker`; it must print `OK` and exit 0.
fn case(broker: &Broker, transport: Transport, version: u8, name: &str) {
    require_mqttjs();
    let url = match transport {
        Transport::Tcp => format!("mqtt://{}", broker.tcp),
        Transport::WebSocket => format!("ws://{}/mqtt", broker.ws),
    };
    let out = run(
        Command::new("node")
            .arg("interop.mjs")
            .arg(&url)
            .arg(version.to_string())
            .arg(name)
            .current_dir(project()),
        None,
        Duration::from_secs(60),
    );
    assert_eq!(
        out.stdout.last().map(String::as_str),
        Some("OK"),
        "{name} over {url}, protocol level {version}: {out:?}"
    );
}

/// Connect, subscribe, QoS 0/1/2, retained and will on one broker.
fn basics(transport: Transport, version: u8) {
    let broker = Broker::start(&[]);
    for name in ["pubsub", "retained", "will"] {
        case(&broker, transport, version, name);
    }
}

#[test]
fn tcp_v311() {
    basics(Transport::Tcp, 4);
}

#[test]
fn tcp_v5() {
    basics(Transport::Tcp, 5);
}

#[test]
fn websocket_v311() {
    basics(Transport::WebSocket, 4);
}

#[test]
fn websocket_v5() {
    basics(Transport::WebSocket, 5);
}

#[test]
fn tcp_v311_burst_qos1() {
    case(&Broker::start(&[]), Transport::Tcp, 4, "burst1");
}

#[test]
fn tcp_v311_burst_qos2() {
    case(&Broker::start(&[]), Transport::Tcp, 4, "burst2");
}

#[test]
fn websocket_v311_burst_qos1() {
    case(&Broker::start(&[]), Transport::WebSocket, 4, "burst1");
}

#[test]
fn websocket_v311_burst_qos2() {
    case(&Broker::start(&[]), Transport::WebSocket, 4, "burst2");
}

/// Issue #12: keeping within the server's Receive Maximum is the client's duty
/// [MQTT-3.3.4-7], and MQTT.js ignores it (the broker announces 64). Refusing with
/// DISCONNECT 0x93 loses a popular client; these pass once the broker pushes back on the
/// connection (stops reading it) instead.
#[test]
fn tcp_v5_burst_qos1() {
    case(&Broker::start(&[]), Transport::Tcp, 5, "burst1");
}

#[test]
fn tcp_v5_burst_qos2() {
    case(&Broker::start(&[]), Transport::Tcp, 5, "burst2");
}

#[test]
fn websocket_v5_burst_qos1() {
    case(&Broker::start(&[]), Transport::WebSocket, 5, "burst1");
}

#[test]
fn websocket_v5_burst_qos2() {
    case(&Broker::start(&[]), Transport::WebSocket, 5, "burst2");
}
