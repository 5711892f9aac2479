//! A `mosquitto` broker on a free loopback port (the harness `mqtt-tokio`'s tests use too:
//! one copy), and the example client it is tested with.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::broker::example_bin;

#[path = "../../../mqtt-tokio/tests/support/mosquitto.rs"]
mod harness;

pub(crate) use harness::{Auth, Listeners, Mosquitto};

/// The `mqtt-client` executable, built on first use.
pub(crate) fn client_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| example_bin("mqtt-client", "MQTT_CLIENT_BIN"))
}
