use alloc::vec::Vec;

use bytes::Bytes;
use mqtt_codec::{PacketId, ProtocolVersion, ReasonCode, SubscriptionId, SubscriptionOptions};

use crate::{Duration, Error, Message, Utf8Bytes};

/// What a machine reports to the application, drained with `poll_event`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Client: the server accepted the connection.
    Connected(ConnAckInfo),
    /// Server: a client asks to connect; answer with `accept` or `reject`. Boxed: it is
    /// the largest event by far and comes once per connection, and every other event
    /// would otherwise be as large.
    ConnectRequest(alloc::boxed::Box<ConnectRequest>),
    /// An application message arrived. With manual acks, acknowledge `packet_id` with `ack`.
    Message {
        /// Its packet identifier (QoS 1/2).
        packet_id: Option<PacketId>,
        /// Whether the sender marked it as a re-delivery.
        dup: bool,
        /// The message.
        message: Message,
    },
    /// An outgoing QoS 1/2 message was acknowledged: PUBACK, PUBCOMP, or a PUBREC that
    /// reported failure (5.0 reason codes of 0x80 and above).
    Acknowledged {
        /// The message's packet identifier.
        packet_id: PacketId,
        /// The peer's reason code.
        reason: ReasonCode,
        /// The peer's Reason String (5.0), if it sent one.
        reason_string: Option<Utf8Bytes>,
    },
    /// Server: a message queued with a tag ([`crate::ServerSession::deliver_tagged`]) got
    /// its PUBREC; PUBREL is due, and after a restart it is PUBREL, not the PUBLISH, that
    /// must be sent again ([MQTT-4.3.3-6]).
    Released {
        /// The tag it was queued with.
        tag: u64,
        /// Its packet identifier.
        packet_id: PacketId,
    },
    /// Server: a message queued with a tag is done with: acknowledged (PUBACK, PUBCOMP,
    /// or a PUBREC that refused it), expired in the queue, or too large ever to send.
    Finished {
        /// The tag it was queued with.
        tag: u64,
    },
    /// Server: PUBREL released an incoming QoS 2 packet identifier; a PUBLISH that uses it
    /// again is a new message ([MQTT-4.3.3-10]).
    IncomingReleased {
        /// The identifier.
        packet_id: PacketId,
    },
    /// Client: SUBACK.
    Subscribed {
        /// The SUBSCRIBE's identifier.
        packet_id: PacketId,
        /// One code per filter: the granted QoS or why it was refused.
        reasons: Vec<ReasonCode>,
    },
    /// Client: UNSUBACK.
    Unsubscribed {
        /// The UNSUBSCRIBE's identifier.
        packet_id: PacketId,
        /// 5.0: one code per filter; empty before 5.0.
        reasons: Vec<ReasonCode>,
    },
    /// Server: a SUBSCRIBE; answer with `suback`.
    SubscribeRequest {
        /// Its identifier.
        packet_id: PacketId,
        /// The filters and their options.
        filters: Vec<(Utf8Bytes, SubscriptionOptions)>,
        /// The Subscription Identifier, if any.
        subscription_id: Option<SubscriptionId>,
    },
    /// Server: an UNSUBSCRIBE; answer with `unsuback`.
    UnsubscribeRequest {
        /// Its identifier.
        packet_id: PacketId,
        /// The filters.
        filters: Vec<Utf8Bytes>,
    },
    /// Client: the session was not resumed, so these messages, sent but not acknowledged,
    /// will not complete ([MQTT-3.2.2-5]). Messages still queued go out on the new session.
    SessionLost {
        /// The messages, in order.
        messages: Vec<Message>,
    },
    /// A message could not be sent and was dropped.
    Dropped {
        /// Its packet identifier, if it had one.
        packet_id: Option<PacketId>,
        /// The message.
        message: Message,
        /// Why.
        error: Error,
    },
    /// AUTH from the peer during enhanced authentication.
    Auth {
        /// Continue authentication, Re-authenticate or Success.
        reason: ReasonCode,
        /// The method.
        method: Option<Utf8Bytes>,
        /// The data.
        data: Option<Bytes>,
    },
    /// The connection ended: DISCONNECT sent or received, a protocol error, a timeout, or
    /// the transport closed.
    Disconnected {
        /// The reason code sent or received.
        reason: ReasonCode,
        /// Whether the peer ended it.
        by_peer: bool,
        /// The Reason String of the peer's DISCONNECT or refusing CONNACK (5.0).
        reason_string: Option<Utf8Bytes>,
    },
}

/// One step of draining a machine: [`crate::Client::poll_output`] and
/// [`crate::ServerSession::poll_output`] hand out events before bytes, so that whatever
/// the application queues while handling an event (a SUBSCRIBE in answer to
/// [`Event::Connected`], say) goes out in the same drain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Handle this event; the commands it leads to may queue more output.
    Event(Event),
    /// Write the first this many bytes of the buffer: one or more whole packets.
    Transmit(usize),
}

/// What the server said in CONNACK, as the client applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAckInfo {
    /// Whether the session was resumed.
    pub session_present: bool,
    /// The client identifier the server assigned, if the client sent an empty one.
    pub assigned_client_id: Option<Utf8Bytes>,
    /// The keep alive in effect ([MQTT-3.2.2-21]: the server's when it sent one).
    pub keep_alive: Duration,
    /// The highest QoS the server accepts.
    pub maximum_qos: mqtt_codec::QoS,
    /// Whether the server accepts retained messages.
    pub retain_available: bool,
    /// How many QoS 1/2 messages the server accepts at once.
    pub receive_maximum: u16,
    /// The largest packet the server accepts.
    pub maximum_packet_size: u32,
    /// The highest topic alias the server accepts.
    pub topic_alias_maximum: u16,
    /// Session expiry the server uses.
    pub session_expiry_interval: Option<u32>,
}

/// A client's CONNECT, owned, for the server application to decide on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectRequest {
    /// The protocol level.
    pub protocol: ProtocolVersion,
    /// The client identifier (may be empty).
    pub client_id: Utf8Bytes,
    /// Clean Start / Clean Session.
    pub clean_start: bool,
    /// The keep alive requested, in seconds.
    pub keep_alive: u16,
    /// User name.
    pub username: Option<Utf8Bytes>,
    /// Password.
    pub password: Option<Bytes>,
    /// The will message and its delay in seconds.
    pub will: Option<(Message, u32)>,
    /// 5.0 Session Expiry Interval (seconds; 0 when absent).
    pub session_expiry_interval: u32,
    /// 5.0 enhanced authentication method.
    pub authentication_method: Option<Utf8Bytes>,
    /// 5.0 authentication data.
    pub authentication_data: Option<Bytes>,
    /// The client said it is a broker bridging to this one: mosquitto's extension of
    /// 3.1 / 3.1.1 ([`mqtt_codec::Connect::bridge`]); always false at 5.0.
    pub bridge: bool,
}
