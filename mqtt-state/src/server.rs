use alloc::boxed::Box;
use alloc::vec::Vec;
use core::num::{NonZeroU16, NonZeroU32};

use bytes::BytesMut;
use mqtt_codec::{
    ConnAck, ConnAckProperties, Disconnect, Packet, PacketId, PacketType, ProtocolVersion, QoS,
    ReasonCode, SubscriptionId,
};

use mqtt_topic::{TopicBuf, TopicName};

use crate::conn::{encode_common, unexpected, Conn, Control, Limits, Next, Phase, Role};
use crate::session::SessionState;
use crate::{
    ConnectRequest, Diagnostics, Duration, Error, Event, Instant, Message, Output,
    SubscriptionIdList, Timer, Utf8Bytes, Violation,
};

const AUTH: u8 = 1;

/// What a server accepts and announces in CONNACK.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Receive Maximum: QoS 1/2 messages a client may have unacknowledged towards us.
    pub receive_maximum: u16,
    /// Largest packet accepted from a client.
    pub maximum_packet_size: u32,
    /// Highest topic alias a client may use (5.0).
    pub topic_alias_maximum: u16,
    /// At most this many topic aliases towards each client (5.0).
    pub outgoing_topic_aliases: u16,
    /// At most this many QoS 1/2 messages in flight to a client.
    pub max_inflight: u16,
    /// At most this many messages queued per client.
    pub max_queued: usize,
    /// How long a new connection has to send CONNECT.
    pub connect_timeout: Duration,
    /// Highest QoS accepted in PUBLISH.
    pub maximum_qos: QoS,
    /// Whether retained messages are supported.
    pub retain_available: bool,
    /// Keep alive imposed on clients (5.0 Server Keep Alive), if any.
    pub server_keep_alive: Option<u16>,
    /// The longest keep alive a client may have, in seconds (mosquitto's `max_keepalive`);
    /// `None` or `Some(0)`: no maximum. A 5.0 client asking for more, or for none (0), is
    /// told this one in CONNACK's Server Keep Alive and held to it ([MQTT-3.2.2-21]).
    /// 3.1/3.1.1 has no way to tell a client, and the server must use the client's value
    /// ([MQTT-3.2.2-22]'s 3.1.1 counterpart), so such a client is refused with CONNACK
    /// 0x02 (identifier rejected), as mosquitto 2.0 does since 2.0.12 ("Apply
    /// max_keepalive to MQTT v3.1.1 and v3.1 clients"). [`ServerConfig::server_keep_alive`],
    /// when set, applies instead.
    pub max_keep_alive: Option<u16>,
    /// Whether wildcard subscriptions are supported (announced in 5.0).
    pub wildcard_subscription_available: bool,
    /// Whether subscription identifiers are supported (announced in 5.0).
    pub subscription_identifier_available: bool,
    /// Whether shared subscriptions are supported (announced in 5.0).
    pub shared_subscription_available: bool,
    /// Acknowledge incoming QoS 1/2 messages only when the application calls
    /// [`ServerSession::ack`], so a broker can route (or refuse) a message first.
    pub manual_acks: bool,
    /// Treat a client's QoS 1/2 PUBLISH beyond our Receive Maximum as the Protocol Error
    /// it is: DISCONNECT 0x93 (Receive Maximum exceeded), counting every PUBACK not yet
    /// sent. Off (the default), the server does what mosquitto does with clients that
    /// ignore the quota (MQTT.js 5 publishes a whole burst): QoS 1 is accepted, QoS 2
    /// answered PUBREC 0x97 (Quota exceeded), and a PUBACK queued counts as sent.
    pub strict_receive_maximum: bool,
    /// Response Information for 5.0 clients that ask for it (Request Response Information
    /// 1): the basis of their response topics. CONNACK carries it only then
    /// ([MQTT-3.1.2-28]). Every connection keeps a reference to it until its CONNACK. One
    /// no UTF-8 string field can carry (U+0000, over 65,535 bytes) is never sent.
    pub response_information: Option<Utf8Bytes>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            receive_maximum: 64,
            maximum_packet_size: 1 << 20,
            topic_alias_maximum: 16,
            outgoing_topic_aliases: 16,
            max_inflight: 64,
            max_queued: 1024,
            connect_timeout: Duration::from_secs(10),
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            server_keep_alive: None,
            max_keep_alive: None,
            wildcard_subscription_available: true,
            subscription_identifier_available: true,
            shared_subscription_available: true,
            manual_acks: false,
            strict_receive_maximum: false,
            response_information: None,
        }
    }
}

/// How the server application answers a CONNECT.
#[derive(Debug, Clone, Default)]
pub struct Accept {
    /// The session to resume (empty for a new one).
    pub session: SessionState,
    /// Whether a session was resumed ([MQTT-3.2.2-2] [MQTT-3.2.2-3]).
    pub session_present: bool,
    /// The identifier assigned to a client that sent an empty one (5.0 tells the client).
    pub assigned_client_id: Option<Utf8Bytes>,
    /// The session expiry the server applies, if it differs from the request.
    pub session_expiry_interval: Option<u32>,
}

/// The server side of one MQTT connection: validates the client's packets against the
/// protocol's state rules, runs both QoS flows and keep alive, and hands application
/// messages and requests out as events. Routing is the broker's.
pub struct ServerSession {
    conn: Conn,
    policy: Policy,
    /// CONNECT received; decision pending or made.
    connect_seen: bool,
    decided: bool,
    /// Whether `client_id` keeps the CONNECT's identifier. A broker that keeps it with the
    /// session anyway turns this off, so that every connection does not hold a second
    /// copy; an identifier the server assigns is kept regardless, for CONNACK.
    keep_client_id: bool,
    connack: Option<PendingConnAck>,
    /// Boxed: in a broker, which keeps no identifier here, the slot costs a pointer
    /// rather than the 32 bytes of a handle.
    client_id: Option<Box<Utf8Bytes>>,
    /// Boxed, made on first use: few connections have any of it, and every connection
    /// would carry it.
    rare: Option<Box<Rare>>,
}

/// Per-connection state that most connections never use.
#[derive(Debug, Default)]
struct Rare {
    /// Enhanced authentication, when CONNECT named a method.
    auth: Option<AuthExchange>,
    /// The Session Expiry Interval of the client's DISCONNECT.
    disconnect_session_expiry: Option<u32>,
    /// [`ServerConfig::response_information`] until CONNACK, kept only if the client
    /// asked for it.
    response_information: Option<Utf8Bytes>,
}

/// What a connection still needs of its [`ServerConfig`] once set up (the rest went into
/// the engine's limits): a connection lives long and many are idle, so it keeps this
/// rather than the whole configuration, and keeps it in 4 bytes.
#[derive(Debug, Clone, Copy)]
struct Policy {
    /// The imposed keep alive with [`Policy::SERVER_KEEP_ALIVE`] set, else the maximum
    /// with [`Policy::MAX_KEEP_ALIVE`] set (an imposed one makes a maximum moot).
    server_keep_alive: u16,
    maximum_qos: QoS,
    /// The switches below.
    flags: u8,
}

impl Policy {
    const RETAIN: u8 = 1;
    const WILDCARDS: u8 = 1 << 1;
    const SUBSCRIPTION_IDS: u8 = 1 << 2;
    const SHARED: u8 = 1 << 3;
    const SERVER_KEEP_ALIVE: u8 = 1 << 4;
    /// Receive Maximum configured as 0: the engine keeps it at 1, CONNACK leaves it out.
    const RECEIVE_MAXIMUM_ZERO: u8 = 1 << 5;
    /// A maximum keep alive, in `server_keep_alive`.
    const MAX_KEEP_ALIVE: u8 = 1 << 6;
    /// Set at CONNECT: this client's keep alive was cut to the maximum, which CONNACK
    /// announces.
    const KEEP_ALIVE_CAPPED: u8 = 1 << 7;

    fn new(config: &ServerConfig) -> Self {
        let mut flags = 0;
        for (on, flag) in [
            (config.retain_available, Self::RETAIN),
            (config.wildcard_subscription_available, Self::WILDCARDS),
            (
                config.subscription_identifier_available,
                Self::SUBSCRIPTION_IDS,
            ),
            (config.shared_subscription_available, Self::SHARED),
            (config.server_keep_alive.is_some(), Self::SERVER_KEEP_ALIVE),
            (config.receive_maximum == 0, Self::RECEIVE_MAXIMUM_ZERO),
        ] {
            if on {
                flags |= flag;
            }
        }
        let max_keep_alive = config.max_keep_alive.filter(|&m| m > 0);
        if config.server_keep_alive.is_none() && max_keep_alive.is_some() {
            flags |= Self::MAX_KEEP_ALIVE;
        }
        Self {
            server_keep_alive: config.server_keep_alive.or(max_keep_alive).unwrap_or(0),
            maximum_qos: config.maximum_qos,
            flags,
        }
    }

    fn has(self, flag: u8) -> bool {
        self.flags & flag != 0
    }

    fn retain_available(self) -> bool {
        self.has(Self::RETAIN)
    }

    fn server_keep_alive(self) -> Option<u16> {
        self.has(Self::SERVER_KEEP_ALIVE)
            .then_some(self.server_keep_alive)
    }

    fn max_keep_alive(self) -> Option<u16> {
        self.has(Self::MAX_KEEP_ALIVE)
            .then_some(self.server_keep_alive)
    }

    /// The Server Keep Alive CONNACK carries (5.0): the imposed one, or the maximum
    /// when this client's request was cut to it.
    fn announced_keep_alive(self) -> Option<u16> {
        self.server_keep_alive().or_else(|| {
            self.has(Self::KEEP_ALIVE_CAPPED)
                .then_some(self.server_keep_alive)
        })
    }

    /// The Receive Maximum as configured, given the one the engine enforces.
    fn receive_maximum(self, enforced: u16) -> u16 {
        if self.has(Self::RECEIVE_MAXIMUM_ZERO) {
            0
        } else {
            enforced
        }
    }
}

/// The CONNACK to send, in 8 bytes (every connection carries the slot).
#[derive(Debug, Clone, Copy)]
struct PendingConnAck {
    /// Meaningful with `has_expiry`.
    session_expiry_interval: u32,
    code: ReasonCode,
    session_present: bool,
    /// Whether it announces the client identifier the server assigned (kept as
    /// `client_id`).
    assigned: bool,
    has_expiry: bool,
}

impl PendingConnAck {
    fn refusal(code: ReasonCode) -> Self {
        Self {
            session_expiry_interval: 0,
            code,
            session_present: false,
            assigned: false,
            has_expiry: false,
        }
    }
}

/// Enhanced authentication ([MQTT-4.12.0-1]).
#[derive(Debug)]
struct AuthExchange {
    /// The CONNECT's authentication method.
    method: Utf8Bytes,
    /// AUTH packets to send: reason, data and diagnostics.
    queued:
        alloc::collections::VecDeque<(ReasonCode, Option<bytes::Bytes>, Option<Box<Diagnostics>>)>,
}

impl ServerSession {
    /// A connection that just opened: CONNECT is due within `config.connect_timeout`.
    pub fn new(config: ServerConfig, now: Instant) -> Self {
        let local = Limits {
            receive_maximum: config.receive_maximum.max(1),
            maximum_packet_size: config.maximum_packet_size,
            topic_alias_maximum: config.topic_alias_maximum,
        };
        let mut conn = Conn::new(
            Role::Server,
            ProtocolVersion::V5,
            SessionState::default(),
            local,
        );
        conn.max_inflight = config.max_inflight.max(1);
        conn.max_queued = u32::try_from(config.max_queued).unwrap_or(u32::MAX);
        conn.max_alias_out = config.outgoing_topic_aliases;
        conn.manual_acks = config.manual_acks;
        conn.lenient_receive_maximum = !config.strict_receive_maximum;
        conn.phase = Phase::Connecting;
        conn.timers
            .set(Timer::Connect, now + config.connect_timeout);
        // One a UTF-8 string field cannot carry (U+0000, over 65,535 bytes) is left out
        // rather than failing every CONNACK.
        let sendable = |r: &Utf8Bytes| r.as_str().len() <= 65_535 && !r.as_str().contains('\0');
        let policy = Policy::new(&config);
        let rare = config.response_information.filter(sendable).map(|r| {
            Box::new(Rare {
                response_information: Some(r),
                ..Rare::default()
            })
        });
        Self {
            conn,
            policy,
            connect_seen: false,
            decided: false,
            keep_client_id: true,
            connack: None,
            client_id: None,
            rare,
        }
    }

    /// Stops keeping the CONNECT's client identifier (see `keep_client_id`): for a broker
    /// that keeps it itself. [`ServerSession::client_id`] is then empty unless the server
    /// assigned one.
    pub fn forget_client_id(&mut self) {
        self.keep_client_id = false;
        self.client_id = None;
    }

    fn auth_exchange(&self) -> Option<&AuthExchange> {
        self.rare.as_ref()?.auth.as_ref()
    }

    /// The client's protocol level (5.0 until CONNECT arrives).
    pub fn version(&self) -> ProtocolVersion {
        self.conn.version
    }

    /// The client identifier from CONNECT (or the one assigned).
    pub fn client_id(&self) -> &Utf8Bytes {
        static NONE: Utf8Bytes = Utf8Bytes::EMPTY;
        self.client_id.as_deref().unwrap_or(&NONE)
    }

    /// The Session Expiry Interval the client set in its DISCONNECT, if it did.
    pub fn disconnect_session_expiry(&self) -> Option<u32> {
        self.rare.as_ref()?.disconnect_session_expiry
    }

    /// The session state, to keep for the client's next connection.
    pub fn session(&self) -> &SessionState {
        self.conn.session()
    }

    /// Takes the session state out, leaving this machine with an empty one: for a broker
    /// parking the session of a connection that is ending (its last packets may still be
    /// waiting in `poll_transmit`).
    pub fn take_session(&mut self) -> SessionState {
        let mut session = self.conn.take_session();
        for f in &mut session.inflight {
            f.sent = false;
        }
        session
    }

    /// Gives up the machine, keeping the session state.
    pub fn into_session(mut self) -> SessionState {
        self.conn.reset_connection();
        self.conn.take_session()
    }

    /// Reads complete packets from `buf`, taking each from it. After CONNECT it reports
    /// [`Event::ConnectRequest`] and reads nothing but AUTH until the application decides
    /// ([MQTT-3.1.4-6]); call it again after [`ServerSession::accept`] to read what the
    /// client sent behind its CONNECT.
    ///
    /// With [`ServerConfig::manual_acks`] (5.0), reading also stops before a QoS 1/2
    /// PUBLISH beyond the Receive Maximum while messages the application has not
    /// acknowledged fill the quota: a client that ignores the quota (MQTT.js 5 sends a
    /// burst of hundreds) is paced by the application instead of overflowing it. The
    /// contract: drain `poll_event`, [`ServerSession::ack`] what it can, and call again
    /// while `buf` holds bytes and the call took some. Every call with a complete packet
    /// takes at least one, so the loop ends; a call made without acknowledging reads the
    /// PUBLISH beyond the quota all the same, which is then handled as
    /// [`ServerConfig::strict_receive_maximum`] says.
    pub fn handle_input(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), Error> {
        let mut refusal = None;
        let Self {
            conn,
            policy: config,
            connect_seen,
            keep_client_id,
            client_id,
            rare,
            ..
        } = self;
        let result = conn.read_frames(now, buf, |conn, _now, frame, packet| {
            let t = packet.packet_type();
            if !*connect_seen {
                // [MQTT-3.1.0-1] the first packet is CONNECT.
                let Packet::Connect(c) = packet else {
                    return Err(Violation::FirstPacketNotConnect(t).into());
                };
                *connect_seen = true;
                conn.version = c.protocol;
                conn.timers.stop(Timer::Connect);
                let p = &c.properties;
                conn.peer = Limits {
                    receive_maximum: p.receive_maximum.map_or(u16::MAX, |r| r.get()),
                    maximum_packet_size: p
                        .maximum_packet_size
                        .map_or(mqtt_codec::DecodeOptions::PROTOCOL_MAX_PACKET_SIZE, |m| {
                            m.get()
                        }),
                    topic_alias_maximum: p.topic_alias_maximum.unwrap_or(0),
                };
                if !c.protocol.is_v5() {
                    conn.local.topic_alias_maximum = 0;
                }
                // [MQTT-3.2.2-22] the client's keep alive unless the server imposes one
                // (5.0), or caps it: [MQTT-3.2.2-21] a client asking for more than the
                // maximum, or for none, is told the maximum in CONNACK and uses it.
                let over_max = config
                    .max_keep_alive()
                    .filter(|&m| c.keep_alive > m || c.keep_alive == 0);
                let ka = if !c.protocol.is_v5() {
                    c.keep_alive
                } else if let Some(imposed) = config.server_keep_alive() {
                    imposed
                } else if let Some(max) = over_max {
                    config.flags |= Policy::KEEP_ALIVE_CAPPED;
                    max
                } else {
                    c.keep_alive
                };
                conn.keep_alive_secs = ka;
                // Kept for the whole connection: a copy, not a view pinning the buffer.
                if *keep_client_id {
                    *client_id = Some(Box::new(Utf8Bytes::copy_of(c.client_id)));
                }
                // [MQTT-3.1.2-29] Request Problem Information 0: diagnostics on CONNACK and
                // DISCONNECT only.
                conn.problem_info = p.request_problem_information != Some(false);
                // [MQTT-3.1.2-28] Response Information only for a 5.0 client that asked.
                if !(c.protocol.is_v5() && p.request_response_information == Some(true)) {
                    if let Some(r) = rare.as_mut() {
                        r.response_information = None;
                    }
                }
                if let Some(m) = p.authentication_method {
                    rare.get_or_insert_with(Box::default).auth = Some(AuthExchange {
                        method: Utf8Bytes::copy_of(m),
                        queued: alloc::collections::VecDeque::new(),
                    });
                }
                // The decoder has checked the Will Topic ([MQTT-3.1.3-11]); this makes the
                // check a type.
                let will_topic = match &c.will {
                    Some(w) => Some(
                        TopicName::new(w.topic)
                            .map(|t| TopicBuf::slice_ref(frame, t))
                            .map_err(mqtt_codec::Error::InvalidTopicName)?,
                    ),
                    None => None,
                };
                let will = c.will.zip(will_topic).map(|(w, topic)| {
                    let mut m = Message::new(topic, frame.slice_ref(w.payload), w.qos);
                    m.retain = w.retain;
                    let wp = &w.properties;
                    let mut p = crate::MessageProperties::new();
                    p.payload_format_indicator = wp.payload_format_indicator;
                    p.message_expiry_interval = wp.message_expiry_interval;
                    p.content_type = wp.content_type.map(|s| Utf8Bytes::slice_of(frame, s));
                    p.response_topic = wp.response_topic.map(|s| Utf8Bytes::slice_of(frame, s));
                    p.correlation_data = wp.correlation_data.map(|b| frame.slice_ref(b));
                    p.set_user_block(wp.user_properties.wire_block().map(|b| frame.slice_ref(b)));
                    m.set_properties(p);
                    // Kept until the connection ends: copied out of the receive buffer.
                    (m.detached(), wp.will_delay_interval.unwrap_or(0))
                });
                // Refusals the protocol fixes, before the application is asked:
                // [MQTT-3.1.3-7] [MQTT-3.1.3-8] (3.1.1) an empty client id needs a clean
                // session; [MQTT-3.2.2-12] [MQTT-3.2.2-13] a will beyond what the server
                // supports.
                let will_flags = c.will.map(|w| (w.qos, w.retain));
                refusal = if !c.protocol.is_v5() && c.client_id.is_empty() && !c.clean_start {
                    Some(ReasonCode::ClientIdentifierNotValid)
                } else if !c.protocol.is_v5() && over_max.is_some() {
                    // 3.1.1 cannot announce a keep alive and the server must use the
                    // client's: beyond the maximum, refused with 0x02 as mosquitto does.
                    Some(ReasonCode::ClientIdentifierNotValid)
                } else if will_flags.is_some_and(|(q, _)| q > config.maximum_qos) {
                    Some(ReasonCode::QoSNotSupported)
                } else if will_flags.is_some_and(|(_, r)| r) && !config.retain_available() {
                    Some(ReasonCode::RetainNotSupported)
                } else {
                    None
                };
                if refusal.is_some() {
                    return Ok(false);
                }
                conn.events
                    .push_back(Event::ConnectRequest(Box::new(ConnectRequest {
                        protocol: c.protocol,
                        // A copy of its own rather than a clone: cloning a `Bytes` made from a
                        // `Vec` allocates a shared header, which the machine's copy would then
                        // keep for the life of the connection.
                        client_id: Utf8Bytes::copy_of(c.client_id),
                        clean_start: c.clean_start,
                        keep_alive: ka,
                        username: c.username.map(|u| Utf8Bytes::slice_of(frame, u)),
                        password: c.password.map(|pw| frame.slice_ref(pw)),
                        will,
                        session_expiry_interval: p.session_expiry_interval.unwrap_or(0),
                        authentication_method: p
                            .authentication_method
                            .map(|m| Utf8Bytes::slice_of(frame, m)),
                        authentication_data: p.authentication_data.map(|d| frame.slice_ref(d)),
                        bridge: c.bridge,
                    })));
                // Nothing but AUTH is read until the application decides.
                conn.hold_non_auth = true;
                return Ok(true);
            }
            match packet {
                // [MQTT-3.1.0-2] a second CONNECT is a Protocol Error.
                Packet::Connect(_) => return Err(Violation::SecondConnect.into()),
                Packet::Publish(p) => {
                    if p.qos() > config.maximum_qos {
                        return Err(Violation::QoSNotSupported.into());
                    }
                    if p.retain && !config.retain_available() {
                        return Err(Violation::RetainNotSupported.into());
                    }
                    conn.on_publish(frame, p)?;
                }
                Packet::PubAck(a) => conn.on_puback(a),
                Packet::PubRec(a) => conn.on_pubrec(a),
                Packet::PubRel(a) => conn.on_pubrel(a),
                Packet::PubComp(a) => conn.on_pubcomp(a),
                Packet::Subscribe(s) => {
                    let filters = s
                        .filters
                        .iter()
                        .map(|f| (Utf8Bytes::slice_of(frame, f.filter), f.options))
                        .collect();
                    conn.events.push_back(Event::SubscribeRequest {
                        packet_id: s.packet_id,
                        filters,
                        subscription_id: s.properties.subscription_identifier,
                    });
                }
                Packet::Unsubscribe(u) => {
                    let filters = u
                        .filters
                        .iter()
                        .map(|f| Utf8Bytes::slice_of(frame, f))
                        .collect();
                    conn.events.push_back(Event::UnsubscribeRequest {
                        packet_id: u.packet_id,
                        filters,
                    });
                }
                // [MQTT-3.12.4-1] every PINGREQ gets a PINGRESP.
                Packet::PingReq => {
                    conn.push_control(Control::PingResp);
                    conn.pinged = true;
                }
                Packet::Disconnect(d) => {
                    if let Some(e) = d.properties.session_expiry_interval {
                        rare.get_or_insert_with(Box::default)
                            .disconnect_session_expiry = Some(e);
                    }
                    return conn.on_peer_disconnect(&d);
                }
                Packet::Auth(a) => {
                    // [MQTT-4.12.0-7] no AUTH without a method in CONNECT; [MQTT-4.12.1-1]
                    // re-authentication keeps the method.
                    let auth = rare.as_ref().and_then(|r| r.auth.as_ref());
                    let same = match (auth, a.properties.authentication_method) {
                        (Some(x), Some(am)) => x.method.as_str() == am,
                        _ => false,
                    };
                    if !same {
                        return Err(Violation::UnexpectedAuth.into());
                    }
                    conn.events.push_back(Event::Auth {
                        reason: a.reason_code,
                        method: a
                            .properties
                            .authentication_method
                            .map(|m| Utf8Bytes::slice_of(frame, m)),
                        data: a.properties.authentication_data.map(|d| frame.slice_ref(d)),
                    });
                }
                Packet::ConnAck(_) | Packet::SubAck(_) | Packet::UnsubAck(_) | Packet::PingResp => {
                    return Err(unexpected(t));
                }
            }
            Ok(true)
        });
        if let Some(code) = refusal {
            self.reject(now, code)?;
        }
        // [MQTT-3.1.2-2] a CONNECT with a protocol level we do not support is answered with
        // CONNACK 0x01 (unacceptable protocol version) in the 3.1.1 format, then closed.
        if let Err(Error::Codec(mqtt_codec::Error::UnsupportedProtocolVersion { .. })) = result {
            if !self.connect_seen && self.connack.is_none() {
                self.conn.version = ProtocolVersion::V3_1_1;
                self.connack = Some(PendingConnAck::refusal(
                    ReasonCode::UnsupportedProtocolVersion,
                ));
            }
        }
        result
    }

    /// Accepts the connection: CONNACK 0x00 goes out first ([MQTT-3.2.0-1]), then whatever
    /// the resumed session holds, re-sent in order with DUP ([MQTT-4.4.0-1]).
    ///
    /// On error (the connection failed before the decision) the session is still taken in,
    /// so a broker gets it back with [`ServerSession::take_session`].
    pub fn accept(&mut self, now: Instant, accept: Accept) -> Result<(), Error> {
        if !self.connect_seen || self.decided {
            return Err(Error::InvalidState("accept needs a pending CONNECT"));
        }
        // [MQTT-4.8.0-1] a connection that already failed (a malformed packet behind the
        // CONNECT, the transport closed) is closed: no CONNACK, and the error stays. The
        // session is kept all the same, so that `take_session`/`into_session` hand it back.
        if let Err(e) = self.conn.check() {
            self.conn.set_session(accept.session);
            return Err(e);
        }
        self.decided = true;
        self.conn.hold_non_auth = false;
        // The CONNECT's event grew the event queue (an event is 112 bytes), and most
        // connections then sit idle: give that back instead of keeping the high-water mark.
        self.conn.events.shrink_to_fit();
        let mut session = accept.session;
        let session_present = accept.session_present;
        if !session_present {
            session = SessionState::default();
        }
        for f in &mut session.inflight {
            f.sent = false;
        }
        self.conn.set_session(session);
        // Messages a broker queued while the client was away have no identifier yet.
        if let Some(flows) = self.conn.flows_if_any() {
            for q in &mut flows.session.queue {
                if q.packet_id.is_none() && q.message.qos != QoS::AtMostOnce {
                    q.packet_id = Some(flows.ids.allocate().ok_or(Error::PacketIdsExhausted)?);
                }
            }
        }
        let assigned = accept.assigned_client_id.is_some();
        if let Some(id) = accept.assigned_client_id {
            self.client_id = Some(Box::new(id));
        }
        self.connack = Some(PendingConnAck {
            session_expiry_interval: accept.session_expiry_interval.unwrap_or(0),
            code: ReasonCode::Success,
            session_present,
            assigned,
            has_expiry: accept.session_expiry_interval.is_some(),
        });
        self.conn.phase = Phase::Connected;
        if self.conn.keep_alive_secs != 0 {
            let grace = Duration::from_millis(self.conn.keep_alive().as_millis() * 3 / 2);
            self.conn.timers.set(Timer::KeepAlive, now + grace);
        }
        Ok(())
    }

    /// Refuses the connection with `reason`: CONNACK with that code, then close
    /// ([MQTT-3.2.2-7]). Before 5.0 the code maps to the nearest 3.1.1 return code. A code
    /// below 0x80 is no refusal and becomes Unspecified error.
    pub fn reject(&mut self, _now: Instant, reason: ReasonCode) -> Result<(), Error> {
        // [MQTT-3.2.2-7] a refusing CONNACK carries a code of 0x80 or above; a Success one
        // would tell the client it is connected while this side closes.
        // Nor may it carry a code CONNACK does not have (Server shutting down is DISCONNECT
        // only): encoding would fail on every `poll_transmit`.
        let reason = if reason.is_error() && reason.is_valid_for(mqtt_codec::PacketType::ConnAck) {
            reason
        } else {
            ReasonCode::UnspecifiedError
        };
        if !self.connect_seen || self.decided {
            return Err(Error::InvalidState("reject needs a pending CONNECT"));
        }
        // [MQTT-4.8.0-1] a connection that already failed (a malformed packet behind the
        // CONNECT, the transport closed) is closed: no CONNACK, and the error stays.
        self.conn.check()?;
        self.decided = true;
        self.conn.hold_non_auth = false;
        let code = if self.conn.version.is_v5() || reason.to_v3_connack().is_some() {
            reason
        } else {
            match reason {
                ReasonCode::Banned => ReasonCode::NotAuthorized,
                ReasonCode::BadAuthenticationMethod => ReasonCode::BadUserNameOrPassword,
                _ => ReasonCode::ServerUnavailable,
            }
        };
        // [MQTT-3.2.2-6] Session Present is 0 with a refusal.
        self.connack = Some(PendingConnAck::refusal(code));
        self.conn.set_error(Some(Error::ConnectionRefused(code)));
        Ok(())
    }

    /// [`ServerSession::accept`] with a Reason String and User Properties on the CONNACK
    /// (5.0; left out where they do not fit, see [`Diagnostics`]).
    pub fn accept_with(
        &mut self,
        now: Instant,
        accept: Accept,
        diagnostics: Diagnostics,
    ) -> Result<(), Error> {
        self.conn
            .attach_diagnostics(PacketType::ConnAck, 0, diagnostics)?;
        let result = self.accept(now, accept);
        if result.is_err() {
            self.conn.drop_diagnostics(PacketType::ConnAck, 0);
        }
        result
    }

    /// [`ServerSession::reject`] with a Reason String and User Properties on the CONNACK.
    pub fn reject_with(
        &mut self,
        now: Instant,
        reason: ReasonCode,
        diagnostics: Diagnostics,
    ) -> Result<(), Error> {
        self.conn
            .attach_diagnostics(PacketType::ConnAck, 0, diagnostics)?;
        let result = self.reject(now, reason);
        if result.is_err() {
            self.conn.drop_diagnostics(PacketType::ConnAck, 0);
        }
        result
    }

    /// [`ServerSession::ack`] with a Reason String and User Properties on the PUBACK
    /// (QoS 1) or PUBREC (QoS 2). `Ok(false)` when no message with that identifier awaits
    /// an acknowledgement.
    pub fn ack_with(
        &mut self,
        now: Instant,
        packet_id: PacketId,
        reason: ReasonCode,
        diagnostics: Diagnostics,
    ) -> Result<bool, Error> {
        let owed = self
            .conn
            .flows()
            .acks
            .iter()
            .find(|a| a.id == packet_id && !a.ready)
            .map(|a| a.qos);
        let Some(qos) = owed else {
            return Ok(false);
        };
        let t = match qos {
            QoS::ExactlyOnce => PacketType::PubRec,
            _ => PacketType::PubAck,
        };
        self.conn
            .attach_diagnostics(t, packet_id.get(), diagnostics)?;
        Ok(self.ack(now, packet_id, reason))
    }

    /// [`ServerSession::suback`] with a Reason String and User Properties.
    pub fn suback_with(
        &mut self,
        now: Instant,
        packet_id: PacketId,
        reasons: Vec<ReasonCode>,
        diagnostics: Diagnostics,
    ) -> Result<(), Error> {
        self.conn.check()?;
        self.conn
            .attach_diagnostics(PacketType::SubAck, packet_id.get(), diagnostics)?;
        self.suback(now, packet_id, reasons)
    }

    /// [`ServerSession::unsuback`] with a Reason String and User Properties.
    pub fn unsuback_with(
        &mut self,
        now: Instant,
        packet_id: PacketId,
        reasons: Vec<ReasonCode>,
        diagnostics: Diagnostics,
    ) -> Result<(), Error> {
        self.conn.check()?;
        self.conn
            .attach_diagnostics(PacketType::UnsubAck, packet_id.get(), diagnostics)?;
        self.unsuback(now, packet_id, reasons)
    }

    /// [`ServerSession::auth`] with a Reason String and User Properties.
    pub fn auth_with(
        &mut self,
        now: Instant,
        reason: ReasonCode,
        data: Option<bytes::Bytes>,
        diagnostics: Diagnostics,
    ) -> Result<(), Error> {
        // Checked as any attached diagnostics are, then kept with this AUTH.
        self.conn
            .attach_diagnostics(PacketType::Auth, 0, diagnostics.clone())?;
        self.conn.drop_diagnostics(PacketType::Auth, 0);
        self.auth(now, reason, data)?;
        if let Some(last) = self
            .rare
            .as_mut()
            .and_then(|r| r.auth.as_mut())
            .and_then(|a| a.queued.back_mut())
        {
            last.2 = Some(Box::new(diagnostics));
        }
        Ok(())
    }

    /// [`ServerSession::disconnect`] with a Reason String and User Properties on the
    /// DISCONNECT.
    pub fn disconnect_with(
        &mut self,
        now: Instant,
        reason: ReasonCode,
        diagnostics: Diagnostics,
    ) -> Result<(), Error> {
        self.conn.check()?;
        self.conn
            .attach_diagnostics(PacketType::Disconnect, 0, diagnostics)?;
        self.disconnect(now, reason);
        Ok(())
    }

    /// Attaches a Reason String and User Properties to the next packet of type
    /// `packet_type` with `packet_id` this session sends: PUBACK, PUBREC, PUBREL, PUBCOMP,
    /// SUBACK or UNSUBACK (the `_with` methods do it for the packets the application
    /// answers with; this one reaches the PUBREL of a delivery and the PUBCOMP of a
    /// received QoS 2 message, which the machine sends itself). Replaces what was
    /// attached before; at most 1024 wait at once (`Error::QueueFull`).
    pub fn attach_diagnostics(
        &mut self,
        packet_type: PacketType,
        packet_id: PacketId,
        diagnostics: Diagnostics,
    ) -> Result<(), Error> {
        self.conn.check()?;
        if !matches!(
            packet_type,
            PacketType::PubAck
                | PacketType::PubRec
                | PacketType::PubRel
                | PacketType::PubComp
                | PacketType::SubAck
                | PacketType::UnsubAck
        ) {
            return Err(Error::InvalidState(
                "diagnostics by packet identifier go on acknowledgements",
            ));
        }
        self.conn
            .attach_diagnostics(packet_type, packet_id.get(), diagnostics)
    }

    /// Queues `message` for the client, at the QoS it carries (the broker has already
    /// applied the subscription's maximum). Returns its packet identifier for QoS 1/2.
    pub fn deliver(
        &mut self,
        now: Instant,
        message: Message,
        subscription_ids: &[SubscriptionId],
    ) -> Result<Option<PacketId>, Error> {
        self.deliver_tagged(now, message, subscription_ids, 0)
    }

    /// [`ServerSession::deliver`] with a `tag` (not 0) that the message carries while it is
    /// queued and in flight: [`Event::Released`] and [`Event::Finished`] name it, so a
    /// durable broker knows which stored message moved on.
    pub fn deliver_tagged(
        &mut self,
        now: Instant,
        message: Message,
        subscription_ids: &[SubscriptionId],
        tag: u64,
    ) -> Result<Option<PacketId>, Error> {
        self.conn.check()?;
        // [MQTT-3.3.4-4] [MQTT-3.3.4-5] every identifier the broker found, however many;
        // 3.1.1 has none.
        let ids = if self.conn.version.is_v5() {
            SubscriptionIdList::from(subscription_ids)
        } else {
            SubscriptionIdList::new()
        };
        self.conn.enqueue_with_ids(now, message, ids, tag)
    }

    /// Answers a SUBSCRIBE, one code per filter ([MQTT-3.8.4-2]: with its identifier).
    pub fn suback(
        &mut self,
        _now: Instant,
        packet_id: PacketId,
        reasons: Vec<ReasonCode>,
    ) -> Result<(), Error> {
        self.conn.check()?;
        // Refused now if it could never be encoded (no code at all, a code SUBACK does not
        // have at this level): queued, it would fail every `poll_transmit` and wedge the
        // connection ([MQTT-3.9.3-1] one code per filter, [MQTT-3.9.3-2] from its table).
        let probe = Packet::SubAck(mqtt_codec::SubAck::new(
            packet_id,
            mqtt_codec::List::new(&reasons),
        ));
        probe.encoded_len(self.conn.version)?;
        self.conn.push_control(Control::SubAck(packet_id, reasons));
        Ok(())
    }

    /// Answers an UNSUBSCRIBE (codes are dropped before 5.0, which has none).
    pub fn unsuback(
        &mut self,
        _now: Instant,
        packet_id: PacketId,
        reasons: Vec<ReasonCode>,
    ) -> Result<(), Error> {
        self.conn.check()?;
        let reasons = if self.conn.version.is_v5() {
            reasons
        } else {
            Vec::new()
        };
        // As for SUBACK: what could never be encoded is refused here, not queued
        // ([MQTT-3.11.3-1] a 5.0 UNSUBACK has one code per filter).
        let probe = Packet::UnsubAck(mqtt_codec::UnsubAck::new(
            packet_id,
            mqtt_codec::List::new(&reasons),
        ));
        probe.encoded_len(self.conn.version)?;
        self.conn
            .push_control(Control::UnsubAck(packet_id, reasons));
        Ok(())
    }

    /// Sends AUTH during enhanced authentication (before [`ServerSession::accept`], with
    /// Continue authentication, [MQTT-4.12.0-2]) or to end a re-authentication (Success).
    /// It carries the CONNECT's method ([MQTT-4.12.0-5]); without one there is no AUTH
    /// ([MQTT-4.12.0-6]).
    pub fn auth(
        &mut self,
        _now: Instant,
        reason: ReasonCode,
        data: Option<bytes::Bytes>,
    ) -> Result<(), Error> {
        self.conn.check()?;
        let auth = self.rare.as_mut().and_then(|r| r.auth.as_mut());
        let Some(auth) = auth.filter(|_| self.conn.version.is_v5()) else {
            return Err(Error::InvalidState(
                "AUTH needs an authentication method in CONNECT",
            ));
        };
        auth.queued.push_back((reason, data, None));
        self.conn.push_control(Control::Role(AUTH));
        Ok(())
    }

    /// Acknowledges a message when manual acks are on ([`ServerConfig::manual_acks`]),
    /// with the reason code the 5.0 PUBACK/PUBREC carries (a refused publish gets Not
    /// authorized, say). Acks still leave in arrival order.
    pub fn ack(&mut self, _now: Instant, packet_id: PacketId, reason: ReasonCode) -> bool {
        self.conn.ack(packet_id, reason)
    }

    /// Ends the connection from the server side: 5.0 sends DISCONNECT with `reason` first
    /// (only after a successful CONNACK, [MQTT-3.14.0-1]).
    pub fn disconnect(&mut self, _now: Instant, reason: ReasonCode) {
        // Asked for, so no error: `poll_transmit` hands out the DISCONNECT and then
        // `Ok(None)`, and `is_closed` says when to close. [`ServerSession::error`] still
        // says why it ended.
        self.conn.close_cleanly(reason);
    }

    /// The embedder has stopped reading this connection (backpressure, or a decision it
    /// has not made yet): whatever the client sent may be waiting unread, so its silence
    /// proves nothing. Counts the keep alive ([MQTT-3.1.2-22]) from `now` again, so that a
    /// client is never closed for packets the server itself left unread.
    pub fn hold_input(&mut self, now: Instant) {
        self.conn.restart_keep_alive(now);
    }

    /// Acts on expired timers: CONNECT timeout, keep alive (1.5 times, [MQTT-3.1.2-22]).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_timeout(now);
    }

    /// The transport closed.
    pub fn handle_close(&mut self, _now: Instant) {
        if self.conn.error().is_none() {
            self.conn.fail(Error::ConnectionClosed);
        }
        self.conn.phase = Phase::Closed;
        self.conn.final_disconnect = None;
    }

    /// Why the connection ended, once it has (sticky): for a broker that reports why it
    /// closed a connection. A clean close is `Disconnected` with its code (Normal
    /// disconnection, Disconnect with Will Message, or the code the application closed
    /// with), though no call returned it as an error.
    pub fn error(&self) -> Option<Error> {
        self.conn.error()
    }

    /// Whether the connection is over: the adapter closes the socket after draining
    /// `poll_transmit`.
    pub fn is_closed(&self) -> bool {
        self.conn.error().is_some()
            && self.conn.final_disconnect.is_none()
            && self.connack.is_none()
            && self.conn.control_is_empty()
    }

    /// Writes the next packet into `out`; see [`crate::Client::poll_transmit`].
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<usize>, Error> {
        loop {
            let next = if self.connack.is_some() {
                Some(Next::Control)
            } else if self.conn.error().is_some() && self.conn.phase != Phase::Closing {
                None
            } else {
                self.conn.pick(now)
            };
            let Some(next) = next else {
                return match self.conn.transmit_error() {
                    Some(e) => Err(e),
                    None if self.conn.error().is_some() => Ok(None),
                    None => {
                        // Drained: the one moment an idle connection has nothing queued.
                        // Here in the machine rather than in the broker, so that every
                        // server application gets it.
                        if self.conn.pinged {
                            self.conn.release_idle_memory();
                        }
                        Ok(None)
                    }
                };
            };
            let n = match next {
                Next::Control => self.transmit_control(out)?,
                next => self.conn.transmit(now, next, out)?,
            };
            if let Some(n) = n {
                return Ok(Some(n));
            }
        }
    }

    fn transmit_control(&mut self, out: &mut [u8]) -> Result<Option<usize>, Error> {
        if let Some(pending) = self.connack {
            let PendingConnAck {
                session_expiry_interval: expiry,
                code,
                session_present: present,
                assigned,
                has_expiry,
            } = pending;
            let expiry = has_expiry.then_some(expiry);
            let c = self.policy;
            let assigned = assigned.then(|| self.client_id());
            let v5 = self.conn.version.is_v5();
            let properties = if v5 && !code.is_error() {
                ConnAckProperties {
                    session_expiry_interval: expiry,
                    receive_maximum: NonZeroU16::new(
                        c.receive_maximum(self.conn.local.receive_maximum),
                    )
                    .filter(|r| r.get() != u16::MAX),
                    // [MQTT-3.2.2-9] say what QoS is supported when it is not all of them.
                    maximum_qos: (c.maximum_qos < QoS::ExactlyOnce).then_some(c.maximum_qos),
                    retain_available: (!c.retain_available()).then_some(false),
                    maximum_packet_size: NonZeroU32::new(self.conn.local.maximum_packet_size),
                    assigned_client_identifier: assigned.map(Utf8Bytes::as_str),
                    topic_alias_maximum: (self.conn.local.topic_alias_maximum > 0)
                        .then_some(self.conn.local.topic_alias_maximum),
                    wildcard_subscription_available: (!c.has(Policy::WILDCARDS)).then_some(false),
                    subscription_identifier_available: (!c.has(Policy::SUBSCRIPTION_IDS))
                        .then_some(false),
                    shared_subscription_available: (!c.has(Policy::SHARED)).then_some(false),
                    server_keep_alive: c.announced_keep_alive(),
                    // [MQTT-4.12.0-5] a successful CONNACK repeats the method.
                    authentication_method: self.auth_exchange().map(|a| a.method.as_str()),
                    // [MQTT-3.1.2-28] kept only when the client asked.
                    response_information: self
                        .rare
                        .as_ref()
                        .and_then(|r| r.response_information.as_ref())
                        .map(Utf8Bytes::as_str),
                    ..Default::default()
                }
            } else {
                ConnAckProperties::default()
            };
            let ack = ConnAck {
                session_present: present && !code.is_error(),
                reason_code: code,
                properties,
            };
            let diagnostics = self.conn.diagnostics_for(PacketType::ConnAck, 0);
            let n = self
                .conn
                .encode_with(Packet::ConnAck(ack), diagnostics, out)?
                .ok();
            self.conn.drop_diagnostics(PacketType::ConnAck, 0);
            self.connack = None;
            if let Some(r) = self.rare.as_mut() {
                r.response_information = None;
            }
            if code.is_error() {
                self.conn.phase = Phase::Closed;
            }
            return Ok(n);
        }
        let c = self.conn.control_front().expect("picked");
        let n = match (c, encode_common(c)) {
            (c, Some(p)) => {
                let id = match c {
                    Control::PubComp(id, _) | Control::SubAck(id, _) | Control::UnsubAck(id, _) => {
                        id.get()
                    }
                    _ => 0,
                };
                let t = p.packet_type();
                let n = self
                    .conn
                    .encode_with(p, self.conn.diagnostics_for(t, id), out)?;
                self.conn.drop_diagnostics(t, id);
                n
            }
            (Control::Role(AUTH), None) => {
                let auth = self
                    .rare
                    .as_mut()
                    .and_then(|r| r.auth.as_mut())
                    .expect("queued with its control");
                let (reason, data, diagnostics) =
                    auth.queued.front().expect("queued with its control");
                let a = mqtt_codec::Auth {
                    reason_code: *reason,
                    properties: mqtt_codec::AuthProperties {
                        authentication_method: Some(auth.method.as_str()),
                        authentication_data: data.as_deref(),
                        ..Default::default()
                    },
                };
                let n = self
                    .conn
                    .encode_with(Packet::Auth(a), diagnostics.as_deref(), out)?;
                auth.queued.pop_front();
                n
            }
            _ => Ok(0),
        };
        self.conn.pop_control();
        Ok(n.ok().filter(|&n| n > 0))
    }

    /// Writes as many whole packets as fit into `out`, for one write to the transport
    /// (a write per packet costs a system call each, and without `TCP_NODELAY` a delayed
    /// ACK per packet). `Ok(None)` when there is nothing to send. As
    /// [`ServerSession::poll_transmit`], with two differences: a packet that does not fit the
    /// rest of `out` waits for the next call, and an error met after some packets were
    /// written comes back on the next call. Only a first packet larger than all of `out`
    /// is `Error::Codec(BufferTooSmall)`.
    pub fn poll_transmit_batch(
        &mut self,
        now: Instant,
        out: &mut [u8],
    ) -> Result<Option<usize>, Error> {
        crate::conn::transmit_batch(out, |rest| self.poll_transmit(now, rest))
    }

    /// Everything pending, in one loop: events first, then bytes in batches
    /// ([`ServerSession::poll_transmit_batch`]). `Ok(None)` means nothing is pending, not even
    /// what handling the events queued; only then wait for the transport or
    /// [`ServerSession::poll_timeout`]. The loop cannot end with output left behind, whatever the
    /// event handlers do.
    pub fn poll_output(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<Output>, Error> {
        if let Some(e) = self.poll_event() {
            return Ok(Some(Output::Event(e)));
        }
        Ok(self.poll_transmit_batch(now, out)?.map(Output::Transmit))
    }

    /// Whether an event waits for [`ServerSession::poll_event`].
    pub fn has_events(&self) -> bool {
        !self.conn.events.is_empty()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.conn.pop_event()
    }

    /// When [`ServerSession::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conn.timers.next()
    }

    /// Encodes a DISCONNECT for adapters that close outside the machine.
    pub fn disconnect_packet(&self, reason: ReasonCode, out: &mut [u8]) -> Result<usize, Error> {
        Ok(Packet::Disconnect(Disconnect::new(reason)).encode(self.conn.version, out)?)
    }
}
