//! What the core asks of the embedding program, and why a connection closes.

use mqtt_codec::ReasonCode;

/// A connection, as the broker names it to the embedding program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId {
    pub(crate) index: u32,
    pub(crate) generation: u32,
}

/// What the embedding program must do for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BrokerEvent {
    /// The connection has bytes to send: call [`crate::Broker::poll_transmit`] for it
    /// until it returns `Ok(None)`.
    Transmit(ConnectionId),
    /// Send what is pending (drain [`crate::Broker::poll_transmit`]), then close the
    /// connection and call [`crate::Broker::handle_close`].
    Close {
        /// The connection.
        id: ConnectionId,
        /// Why the core closes it.
        reason: CloseReason,
    },
    /// Stop reading this connection's socket: a subscriber its messages go to cannot keep
    /// up, or a decision about it is deferred ([`crate::Broker::poll_request`]). Bytes already read stay in its input buffer; [`crate::Broker::handle_input`]
    /// leaves them there meanwhile.
    Pause(ConnectionId),
    /// Read this connection's socket again, and call [`crate::Broker::handle_input`] with
    /// the bytes left in its input buffer even if no new ones arrive: after a
    /// [`BrokerEvent::Pause`], or when input left unread can be read now. Harmless for a
    /// connection that was not paused.
    Resume(ConnectionId),
}

impl BrokerEvent {
    /// The connection the event is about: each event concerns one, so an adapter can hand
    /// it to that connection's task or socket without matching every variant.
    pub fn connection(&self) -> ConnectionId {
        match *self {
            BrokerEvent::Transmit(id)
            | BrokerEvent::Close { id, .. }
            | BrokerEvent::Pause(id)
            | BrokerEvent::Resume(id) => id,
        }
    }
}

/// Why the core closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum CloseReason {
    /// The client sent DISCONNECT with this reason code.
    ClientDisconnect(ReasonCode),
    /// No CONNECT within [`mqtt_state::ServerConfig::connect_timeout`].
    ConnectTimeout,
    /// Nothing from the client for 1.5 times its keep alive ([MQTT-3.1.2-22]).
    KeepAliveTimeout,
    /// The CONNECT was refused with this code (a CONNACK with it was sent).
    Refused(ReasonCode),
    /// Another connection with the same client identifier took the session over
    /// ([MQTT-3.1.4-3]).
    SessionTakenOver,
    /// The client sent malformed bytes or broke a protocol rule.
    ProtocolError(mqtt_state::Error),
    /// The server ended it with this reason code ([`crate::Broker::disconnect`], a failed
    /// re-authentication).
    ServerDisconnect(ReasonCode),
    /// The server is shutting down ([`crate::Broker::shutdown`]).
    ServerShuttingDown,
    /// Publishers waited on this subscriber's full queue, and it took none of its output
    /// for [`crate::BrokerConfig::stall_timeout`]: it stopped reading.
    SlowConsumer,
    /// The connection's machine saw the transport close.
    TransportClosed,
    /// A deferred decision about it was not answered within
    /// [`crate::BrokerConfig::decision_timeout`] (a CONNACK or 5.0 DISCONNECT with
    /// Implementation specific error said so).
    DecisionTimeout,
}

impl CloseReason {
    /// The reason code a 5.0 DISCONNECT (or CONNACK) for this close carries.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            CloseReason::ClientDisconnect(c)
            | CloseReason::Refused(c)
            | CloseReason::ServerDisconnect(c) => *c,
            CloseReason::ConnectTimeout | CloseReason::TransportClosed => {
                ReasonCode::UnspecifiedError
            }
            CloseReason::KeepAliveTimeout => ReasonCode::KeepAliveTimeout,
            CloseReason::SessionTakenOver => ReasonCode::SessionTakenOver,
            CloseReason::ProtocolError(e) => e.reason_code(),
            CloseReason::ServerShuttingDown => ReasonCode::ServerShuttingDown,
            CloseReason::SlowConsumer => ReasonCode::QuotaExceeded,
            CloseReason::DecisionTimeout => ReasonCode::ImplementationSpecificError,
        }
    }

    /// The reason for a connection whose machine failed with `e` on its own (the core's
    /// own decisions are recorded before they reach the machine).
    pub(crate) fn from_error(e: mqtt_state::Error) -> Self {
        use mqtt_state::Error as E;
        match e {
            E::Disconnected(code) => CloseReason::ClientDisconnect(code),
            E::ConnectionRefused(code) => CloseReason::Refused(code),
            E::KeepAliveTimeout => CloseReason::KeepAliveTimeout,
            E::ConnectTimeout => CloseReason::ConnectTimeout,
            E::ConnectionClosed => CloseReason::TransportClosed,
            e => CloseReason::ProtocolError(e),
        }
    }
}
