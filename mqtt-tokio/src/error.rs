use std::sync::Arc;

use mqtt_state::codec::ReasonCode;
use mqtt_state::Message;

/// Why a request or the connection failed.
///
/// Cloneable so that one failure can answer every request it ends (I/O errors are shared
/// behind an `Arc`).
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Opening or using the transport failed (TCP, TLS or WebSocket).
    #[error("transport: {0}")]
    Io(Arc<std::io::Error>),
    /// The TLS settings could not be built (a bad PEM file, no root certificate).
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The options do not make a connection (a host name TLS cannot use, a bad URL path).
    #[error("invalid options: {0}")]
    Options(String),
    /// The state machine refused the request or failed the connection: a topic with a
    /// wildcard, a QoS above the server's maximum ([MQTT-3.2.2-11]), a protocol error.
    #[error(transparent)]
    Mqtt(#[from] mqtt_state::Error),
    /// The broker refused the connection in CONNACK ([MQTT-3.2.2-6]).
    #[error("connection refused: {0:?}")]
    Refused(ReasonCode),
    /// The broker answered a publish or a subscription with a failure reason code
    /// (5.0 PUBACK/PUBREC codes of 0x80 and above, or a SUBACK refusal).
    #[error("rejected by the broker: {reason:?}{}", reason_string.as_deref().map(|s| format!(" ({s})")).unwrap_or_default())]
    Rejected {
        /// The broker's reason code.
        reason: ReasonCode,
        /// Its 5.0 Reason String, if it sent one.
        reason_string: Option<String>,
    },
    /// The client stopped (disconnected, or a fatal error) before the request completed.
    #[error("the client is closed")]
    Closed,
    /// The server stopped before the call completed.
    #[error("the server has stopped")]
    Stopped,
    /// The broker core refused a call from a [`crate::server::ServerHandle`].
    #[cfg(feature = "server")]
    #[error(transparent)]
    Broker(mqtt_broker::Error),
    /// The store failed: the file cannot be created, read or written. While a server
    /// runs, this stops it: what it acknowledged could no longer be kept.
    #[cfg(feature = "store")]
    #[error("store: {0}")]
    Store(String),
    /// The store was written by a newer version (a format this one cannot read).
    #[cfg(feature = "store")]
    #[error("store {path}: format version {found}, this version reads {supported}")]
    StoreVersion {
        /// The file.
        path: String,
        /// The version in the file.
        found: u64,
        /// The version this build reads and writes.
        supported: u64,
    },
    /// The store is damaged or truncated, is not a store, or holds an entry the core
    /// cannot read: nothing is served from it.
    #[cfg(feature = "store")]
    #[error("store damaged: {0}")]
    StoreDamaged(String),
    /// Another process (another broker) has the store open.
    #[cfg(feature = "store")]
    #[error("store {0} is in use by another process")]
    StoreInUse(String),
    /// The client stopped with these messages sent but not acknowledged or not sent yet;
    /// nothing is dropped silently. They are in their original order.
    #[error("closed with {} message(s) not acknowledged", messages.len())]
    Unfinished {
        /// The messages.
        messages: Vec<Message>,
    },
}

impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Self {
        Error::Io(Arc::new(e))
    }
}
