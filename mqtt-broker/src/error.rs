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
    /// A message from the server that cannot be published: its topic is not a valid topic
    /// name ([MQTT-4.7.3-1] [MQTT-4.7.1-1]).
    #[error("invalid topic name")]
    InvalidTopic,
}

impl Error {
    /// The nearest 5.0 reason code.
    pub const fn reason_code(&self) -> ReasonCode {
        match self {
            Error::BufferTooSmall { .. } => ReasonCode::ImplementationSpecificError,
            Error::UnknownConnection | Error::UnknownSession => ReasonCode::UnspecifiedError,
            Error::InvalidTopic => ReasonCode::TopicNameInvalid,
        }
    }
}
