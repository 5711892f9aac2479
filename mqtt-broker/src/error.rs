//! The crate's error type.

use mqtt_codec::ReasonCode;

/// What a call to the broker core could not do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The output buffer is smaller than the next packet, which stays queued: call again
    /// with at least `needed` bytes. The connection is not affected.
    #[error("output buffer too small: {needed} bytes needed")]
    BufferTooSmall {
        /// Bytes the next packet needs.
        needed: usize,
    },
    /// No open connection has this identifier.
    #[error("no such connection")]
    UnknownConnection,
    /// No session has this client identifier.
    #[error("no such session")]
    UnknownSession,
    /// No deferred decision waits under this request: answered already, timed out, or
    /// its connection closed.
    #[error("no such request")]
    UnknownRequest,
    /// [`crate::Broker::challenge`] answers enhanced authentication requests only.
    #[error("not an enhanced authentication request")]
    NotAnAuthRequest,
    /// A reason string no packet could carry (U+0000, longer than 65,535 bytes).
    #[error("invalid reason string")]
    InvalidReasonString,
    /// [`crate::Broker::cluster_publish`] or [`crate::Broker::cluster_retained`] got bytes
    /// that are not one MQTT 5.0 PUBLISH packet.
    #[error("not a cluster message")]
    InvalidClusterMessage,
    /// A bridge [`crate::Broker::add_bridge`] refused, and why.
    #[error("invalid bridge: {0}")]
    InvalidBridge(&'static str),
    /// A stored entry [`crate::Broker::restore`] cannot read: damaged, truncated, or
    /// written by a newer version of this crate.
    #[error("stored {table:?} entry unreadable: {reason}")]
    Corrupt {
        /// Its table.
        table: crate::Table,
        /// What is wrong with it.
        reason: &'static str,
    },
}

impl Error {
    /// The nearest 5.0 reason code.
    pub const fn reason_code(&self) -> ReasonCode {
        match self {
            Error::BufferTooSmall { .. } => ReasonCode::ImplementationSpecificError,
            Error::UnknownConnection
            | Error::UnknownSession
            | Error::UnknownRequest
            | Error::NotAnAuthRequest
            | Error::InvalidReasonString
            | Error::InvalidBridge(_)
            | Error::InvalidClusterMessage
            | Error::Corrupt { .. } => ReasonCode::UnspecifiedError,
        }
    }
}
