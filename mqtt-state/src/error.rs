use mqtt_codec::{PacketType, ReasonCode};

/// What went wrong on a connection. A protocol error is sticky: the machine queues a
/// DISCONNECT (5.0) with [`Error::reason_code`] and then returns the same error from every
/// later call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The peer sent bytes the codec refused.
    #[error("malformed input: {0}")]
    Codec(#[from] mqtt_codec::Error),
    /// The peer broke a rule of the protocol's state machine.
    #[error("protocol violation: {0}")]
    Protocol(Violation),
    /// Nothing came from the peer within the keep alive allowance.
    #[error("keep alive timeout")]
    KeepAliveTimeout,
    /// CONNACK (client) or CONNECT (server) did not arrive in time.
    #[error("connect timeout")]
    ConnectTimeout,
    /// The server refused the connection.
    #[error("connection refused: {0}")]
    ConnectionRefused(ReasonCode),
    /// The peer sent DISCONNECT with an error reason code (0x80 and above). A clean
    /// close (the peer's Normal disconnection, or a close the application asked for) is
    /// no error: [`crate::Event::Disconnected`] reports it.
    #[error("disconnected: {0}")]
    Disconnected(ReasonCode),
    /// The transport closed.
    #[error("connection closed")]
    ConnectionClosed,
    /// Every packet identifier is in flight: wait for acknowledgements.
    #[error("all packet identifiers are in flight")]
    PacketIdsExhausted,
    /// The outgoing queue is at its configured bound.
    #[error("outgoing queue full")]
    QueueFull,
    /// The server does not accept this QoS ([MQTT-3.2.2-11]).
    #[error("[MQTT-3.2.2-11] QoS above the server's Maximum QoS")]
    QoSNotSupported,
    /// The server does not accept retained messages ([MQTT-3.2.2-14]).
    #[error("[MQTT-3.2.2-14] retain not available on this server")]
    RetainNotSupported,
    /// The packet would exceed the peer's Maximum Packet Size ([MQTT-3.2.2-15]).
    #[error("[MQTT-3.2.2-15] packet of {size} bytes exceeds the peer's maximum of {max}")]
    PacketTooLarge {
        /// Its size.
        size: usize,
        /// The peer's limit.
        max: u32,
    },
    /// The call does not fit the connection's state (publishing before `connect`, accepting
    /// twice, ...).
    #[error("not allowed in this state: {0}")]
    InvalidState(&'static str),
}

/// A rule of the protocol's state machine that the peer broke.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Violation {
    /// [MQTT-3.1.0-1] the first packet was not CONNECT.
    #[error("[MQTT-3.1.0-1] first packet is {0:?}, not CONNECT")]
    FirstPacketNotConnect(PacketType),
    /// [MQTT-3.1.0-2] a second CONNECT.
    #[error("[MQTT-3.1.0-2] second CONNECT")]
    SecondConnect,
    /// A packet that this side never receives, or not in this state.
    #[error("unexpected {0:?}")]
    UnexpectedPacket(PacketType),
    /// [MQTT-3.2.2-4] Session Present = 1 when this client started clean.
    #[error("[MQTT-3.2.2-4] session present on a clean start")]
    SessionPresentOnCleanStart,
    /// [MQTT-3.3.4-9] more unacknowledged QoS 1/2 PUBLISH than our Receive Maximum.
    #[error("[MQTT-3.3.4-9] receive maximum exceeded")]
    ReceiveMaximumExceeded,
    /// [MQTT-3.3.2-10] [MQTT-3.3.2-12] a Topic Alias above the maximum we allowed.
    #[error("[MQTT-3.3.2-12] topic alias {0} above our maximum")]
    TopicAliasOutOfRange(u16),
    /// A Topic Alias with an empty topic that was never mapped on this connection.
    #[error("topic alias {0} is not mapped")]
    UnknownTopicAlias(u16),
    /// A QoS above the Maximum QoS this server announced.
    #[error("QoS above the server's maximum")]
    QoSNotSupported,
    /// RETAIN on a server that said Retain Available = 0.
    #[error("retain not supported")]
    RetainNotSupported,
    /// [MQTT-4.12.0-7] AUTH without an authentication method in CONNECT.
    #[error("[MQTT-4.12.0-7] AUTH without an authentication method")]
    UnexpectedAuth,
}

impl Violation {
    /// The 5.0 reason code to disconnect with.
    pub const fn reason_code(&self) -> ReasonCode {
        match self {
            Violation::ReceiveMaximumExceeded => ReasonCode::ReceiveMaximumExceeded,
            Violation::TopicAliasOutOfRange(_) => ReasonCode::TopicAliasInvalid,
            Violation::QoSNotSupported => ReasonCode::QoSNotSupported,
            Violation::RetainNotSupported => ReasonCode::RetainNotSupported,
            _ => ReasonCode::ProtocolError,
        }
    }
}

impl Error {
    /// The 5.0 reason code the DISCONNECT (or CONNACK) for this error carries.
    pub const fn reason_code(&self) -> ReasonCode {
        match self {
            Error::Codec(e) => e.reason_code(),
            Error::Protocol(v) => v.reason_code(),
            Error::KeepAliveTimeout => ReasonCode::KeepAliveTimeout,
            Error::ConnectionRefused(r) | Error::Disconnected(r) => *r,
            Error::PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            Error::QoSNotSupported => ReasonCode::QoSNotSupported,
            Error::RetainNotSupported => ReasonCode::RetainNotSupported,
            Error::QueueFull => ReasonCode::QuotaExceeded,
            _ => ReasonCode::UnspecifiedError,
        }
    }
}

impl From<Violation> for Error {
    fn from(v: Violation) -> Self {
        Error::Protocol(v)
    }
}
