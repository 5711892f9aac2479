use alloc::collections::VecDeque;
use alloc::vec::Vec;

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    Connect, ConnectProperties, Disconnect, Packet, PacketId, PacketType, ProtocolVersion, QoS,
    ReasonCode, Subscribe, SubscribeProperties, Subscription, SubscriptionId, SubscriptionOptions,
    Unsubscribe, Will, WillProperties,
};

use crate::conn::{encode_common, unexpected, Conn, Control, Limits, Next, Phase, Role};
use crate::session::SessionState;
use crate::{
    ConnAckInfo, Duration, Error, Event, Heartbeat, HeartbeatConfig, Instant, Message, Output,
    Timer, Utf8Bytes, Violation,
};

const CONNECT: u8 = 0;
const SUBSCRIBE: u8 = 1;
const UNSUBSCRIBE: u8 = 2;
const AUTH: u8 = 3;

/// How a [`Client`] connects and what it accepts.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// Protocol level.
    pub version: ProtocolVersion,
    /// Client identifier; empty asks the server to assign one (3.1.1 requires clean start).
    pub client_id: Utf8Bytes,
    /// Keep alive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// Start a new session rather than resume one.
    pub clean_start: bool,
    /// 5.0 Session Expiry Interval in seconds.
    pub session_expiry_interval: u32,
    /// User name.
    pub username: Option<Utf8Bytes>,
    /// Password.
    pub password: Option<Bytes>,
    /// Will message and its 5.0 delay in seconds.
    pub will: Option<(Message, u32)>,
    /// Receive Maximum the client announces: QoS 1/2 messages it accepts unacknowledged.
    pub receive_maximum: u16,
    /// Largest packet the client accepts.
    pub maximum_packet_size: u32,
    /// Highest topic alias the server may use towards the client (5.0).
    pub topic_alias_maximum: u16,
    /// At most this many topic aliases are assigned towards the server (5.0).
    pub outgoing_topic_aliases: u16,
    /// At most this many QoS 1/2 messages in flight, below the server's Receive Maximum.
    pub max_inflight: u16,
    /// At most this many messages waiting behind the send quota.
    pub max_queued: usize,
    /// How long to wait for CONNACK.
    pub connect_timeout: Duration,
    /// Treat QoS 1/2 messages from the server beyond the Receive Maximum announced as the
    /// Protocol Error they are ([MQTT-3.3.4-9]: DISCONNECT 0x93) rather than taking them:
    /// off by default, since mosquitto 2.0.11 sends a resumed session's queue past it, and
    /// a client that disconnects for it gets the same messages again at each reconnect.
    pub strict_receive_maximum: bool,
    /// Acknowledge incoming QoS 1/2 messages only when the application calls
    /// [`Client::ack`] (acknowledgements still go out in arrival order).
    pub manual_acks: bool,
    /// 5.0 enhanced authentication method and initial data.
    pub authentication: Option<(Utf8Bytes, Option<Bytes>)>,
    /// Learn the longest idle interval the network path tolerates and ping at it, below
    /// the keep alive (see [`Heartbeat`]); `None` pings once per keep alive. For clients
    /// behind NAT gateways that drop idle connections early (phones, push services).
    pub heartbeat: Option<HeartbeatConfig>,
    /// Connect as a broker bridging to the server, by mosquitto's non-standard extension:
    /// at 3.1 / 3.1.1 the protocol level goes out with its top bit set (`0x83` / `0x84`),
    /// which tells a mosquitto server (and this workspace's broker) not to send back what
    /// this client published and to keep the retain flag of what it forwards, as 5.0's
    /// No Local and Retain As Published would. Ignored at 5.0, where a bridge asks for
    /// those per subscription instead. A server that does not know the extension refuses
    /// the level (CONNACK return code 1); retrying without it is the caller's choice.
    pub bridge: bool,
}

impl ClientConfig {
    /// Defaults for `client_id` at `version`: keep alive 60 s, clean start, 64 messages in
    /// flight each way, 1 MiB packets, 1,024 queued messages, 16 topic aliases each way.
    pub fn new(version: ProtocolVersion, client_id: impl Into<Utf8Bytes>) -> Self {
        Self {
            version,
            client_id: client_id.into(),
            keep_alive: 60,
            clean_start: true,
            session_expiry_interval: 0,
            username: None,
            password: None,
            will: None,
            receive_maximum: 64,
            maximum_packet_size: 1 << 20,
            topic_alias_maximum: 16,
            outgoing_topic_aliases: 16,
            max_inflight: 64,
            max_queued: 1024,
            connect_timeout: Duration::from_secs(10),
            strict_receive_maximum: false,
            manual_acks: false,
            authentication: None,
            heartbeat: None,
            bridge: false,
        }
    }
}

/// A SUBSCRIBE waiting to be sent or acknowledged: its id, filters and subscription id.
type PendingSubscribe = (
    PacketId,
    Vec<(Utf8Bytes, SubscriptionOptions)>,
    Option<SubscriptionId>,
);

/// The client side of one MQTT connection, as a pure state machine.
///
/// Feed it what the transport delivers with [`Client::handle_input`] and the passage of time
/// with [`Client::handle_timeout`]; after every call, drain [`Client::poll_output`] (events,
/// then bytes to write, until neither is left), then wait for the transport or
/// [`Client::poll_timeout`] (when to call `handle_timeout` next). See the crate
/// documentation for the loop.
pub struct Client {
    conn: Conn,
    config: ClientConfig,
    subscribes: VecDeque<PendingSubscribe>,
    unsubscribes: VecDeque<(PacketId, Vec<Utf8Bytes>)>,
    auths: VecDeque<(ReasonCode, Option<Bytes>)>,
    /// Whether the server's capabilities (CONNACK) are known.
    maximum_qos: QoS,
    retain_available: bool,
    /// When the CONNECT went out: keep alive counts from it ([MQTT-3.1.2-20]), not from
    /// the CONNACK, which may come late (the server waited for a login check).
    connect_sent: Instant,
    /// What [`ClientConfig::heartbeat`] learned: it outlives connections.
    heartbeat: Option<Heartbeat>,
    /// The idle interval the outstanding PINGREQ probes.
    probe: Option<Duration>,
    /// The heartbeat's interval, below the keep alive.
    ping_every: Option<Duration>,
    /// When the client last sent a packet.
    last_send: Instant,
    /// When input last arrived: traffic from the server keeps the path open too, so a
    /// ping probes only the time since the last packet either way.
    last_input: Instant,
}

impl Client {
    /// A client that has not connected yet.
    pub fn new(config: ClientConfig) -> Self {
        Self::with_session(config, SessionState::default())
    }

    /// A client resuming `session` (from [`Client::into_session`] or a persisted
    /// snapshot): unacknowledged messages are re-sent if the server resumes the session.
    pub fn with_session(config: ClientConfig, session: SessionState) -> Self {
        let local = Limits {
            receive_maximum: config.receive_maximum.max(1),
            maximum_packet_size: config.maximum_packet_size,
            topic_alias_maximum: if config.version.is_v5() {
                config.topic_alias_maximum
            } else {
                0
            },
        };
        let mut conn = Conn::new(Role::Client, config.version, session, local);
        conn.max_inflight = config.max_inflight.max(1);
        conn.max_queued = u32::try_from(config.max_queued).unwrap_or(u32::MAX);
        conn.manual_acks = config.manual_acks;
        conn.lenient_receive_maximum = !config.strict_receive_maximum;
        conn.max_alias_out = config.outgoing_topic_aliases;
        let heartbeat = config.heartbeat.clone().map(Heartbeat::new);
        Self {
            conn,
            config,
            subscribes: VecDeque::new(),
            unsubscribes: VecDeque::new(),
            auths: VecDeque::new(),
            maximum_qos: QoS::ExactlyOnce,
            retain_available: true,
            connect_sent: Instant::ZERO,
            heartbeat,
            probe: None,
            ping_every: None,
            last_send: Instant::ZERO,
            last_input: Instant::ZERO,
        }
    }

    /// The learned heartbeat, with [`ClientConfig::heartbeat`].
    pub fn heartbeat(&self) -> Option<&Heartbeat> {
        self.heartbeat.as_ref()
    }

    /// How long the client sends nothing before it pings: the keep alive in effect, or
    /// the shorter interval a heartbeat learned. `None` without keep alive.
    pub fn ping_interval(&self) -> Option<Duration> {
        (self.conn.keep_alive_secs != 0).then(|| self.ping_every())
    }

    fn ping_every(&self) -> Duration {
        let keep_alive = self.conn.keep_alive();
        self.ping_every.map_or(keep_alive, |d| d.min(keep_alive))
    }

    /// With a heartbeat: the keep alive timer (which sends PINGREQ) set to the learned
    /// interval after the last packet either way (what keeps a gateway's mapping), and
    /// never later than a keep alive after the last packet sent ([MQTT-3.1.2-20]).
    fn arm_ping(&mut self) {
        if self.heartbeat.is_some()
            && self.conn.phase == Phase::Connected
            && self.conn.keep_alive_secs != 0
            && !self.conn.ping_outstanding
        {
            let sent = self.last_send.max(self.connect_sent);
            let at = (self.last_packet() + self.ping_every()).min(sent + self.conn.keep_alive());
            self.conn.timers.set(Timer::KeepAlive, at);
        }
    }

    /// When the last packet either way went or came.
    fn last_packet(&self) -> Instant {
        self.last_send.max(self.last_input).max(self.connect_sent)
    }

    /// Feeds the heartbeat what happened to the connection's ping and sets the next
    /// interval: called after input and timeouts.
    fn heartbeat_sync(&mut self, now: Instant) {
        let ping_every = self.ping_every();
        let last_packet = self.last_packet();
        let Some(hb) = self.heartbeat.as_mut() else {
            return;
        };
        let live = self.conn.phase == Phase::Connected && self.conn.error().is_none();
        match (self.probe, self.conn.ping_outstanding) {
            _ if !live => {}
            // A PINGREQ just went into the queue: it probes the time since the last
            // packet either way; a live path answers within the pong timeout.
            (None, true) => {
                let idle = now.saturating_since(last_packet);
                self.probe = Some(idle.min(ping_every));
                self.conn
                    .timers
                    .set(Timer::PingResp, now + hb.config().pong_timeout);
            }
            // Something arrived after the PINGREQ: the path held.
            (Some(idle), false) => {
                hb.answered(idle);
                self.probe = None;
            }
            _ => {}
        }
        self.ping_every = Some(hb.interval(self.conn.keep_alive()));
        self.arm_ping();
    }

    /// The outstanding PINGREQ went unanswered, or the connection ended while it waited.
    fn heartbeat_lost(&mut self) {
        if let (Some(hb), Some(idle)) = (self.heartbeat.as_mut(), self.probe.take()) {
            hb.lost(idle);
            self.ping_every = Some(hb.interval(self.conn.keep_alive()));
        }
    }

    /// The session state to keep across a reconnect or restart.
    pub fn session(&self) -> &SessionState {
        self.conn.session()
    }

    /// Gives up the machine, keeping its session state.
    pub fn into_session(mut self) -> SessionState {
        self.conn.take_session()
    }

    /// The configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Whether CONNACK accepted the connection and it has not ended.
    pub fn is_connected(&self) -> bool {
        self.conn.phase == Phase::Connected
    }

    /// Whether the connection is over and everything it had to send is out (a
    /// DISCONNECT included): close the transport, then [`Client::handle_close`] before
    /// the next [`Client::connect`]. True after a clean close too, which no call reports
    /// as an error (only [`Event::Disconnected`] does).
    pub fn is_closed(&self) -> bool {
        self.conn.phase == Phase::Closed && self.conn.error().is_some()
    }

    /// Starts a connection over a transport that just opened: queues CONNECT
    /// ([MQTT-3.1.0-1]: the first packet). Clears the error of an earlier connection.
    pub fn connect(&mut self, now: Instant) -> Result<(), Error> {
        if matches!(
            self.conn.phase,
            Phase::Connecting | Phase::Connected | Phase::Closing
        ) {
            return Err(Error::InvalidState("already connected or connecting"));
        }
        self.conn.reset_connection();
        // SUBSCRIBE/UNSUBSCRIBE of an earlier connection (or process, after a restart from
        // a snapshot) get no answer on this one; the application subscribes again. Their
        // identifiers are free.
        if let Some(flows) = self.conn.flows_if_any() {
            for id in flows.session.pending_acks.drain(..) {
                if let Some(id) = PacketId::new(id) {
                    flows.ids.release(id);
                }
            }
        }
        self.subscribes.clear();
        self.unsubscribes.clear();
        self.conn.set_error(None);
        self.conn.final_disconnect = None;
        self.conn.phase = Phase::Connecting;
        self.conn.push_control(Control::Role(CONNECT));
        self.conn
            .timers
            .set(Timer::Connect, now + self.config.connect_timeout);
        Ok(())
    }

    /// Reads every complete packet from `buf` (leaving a partial one there) and acts on it.
    /// Received messages share `buf`'s storage: nothing is copied.
    pub fn handle_input(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), Error> {
        let before = buf.len();
        let result = self.read_input(now, buf);
        if buf.len() != before {
            self.last_input = now;
        }
        self.heartbeat_sync(now);
        result
    }

    fn read_input(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), Error> {
        let Self {
            conn,
            subscribes,
            unsubscribes,
            maximum_qos,
            retain_available,
            config,
            connect_sent,
            ..
        } = self;
        let connect_sent = *connect_sent;
        conn.read_frames(now, buf, |conn, now, frame, packet| {
            let t = packet.packet_type();
            if conn.phase == Phase::Connecting
                && !matches!(t, PacketType::ConnAck | PacketType::Auth)
            {
                return Err(unexpected(t));
            }
            match packet {
                Packet::ConnAck(ack) => {
                    if conn.phase != Phase::Connecting {
                        return Err(unexpected(t));
                    }
                    let sent = connect_sent.min(now);
                    on_connack(
                        conn,
                        config,
                        sent,
                        frame,
                        ack,
                        maximum_qos,
                        retain_available,
                    )?;
                }
                Packet::Publish(p) => conn.on_publish(frame, p)?,
                Packet::PubAck(a) => conn.on_puback(a),
                Packet::PubRec(a) => conn.on_pubrec(a),
                Packet::PubRel(a) => conn.on_pubrel(a),
                Packet::PubComp(a) => conn.on_pubcomp(a),
                // [MQTT-2.2.1-6] an ack answers the request with its identifier; one for a
                // request not sent (or not made) on this connection is ignored.
                Packet::SubAck(s) => {
                    let sent = !conn.control_contains(&Control::Request(SUBSCRIBE, s.packet_id));
                    if let Some(i) = subscribes
                        .iter()
                        .position(|(id, ..)| *id == s.packet_id && sent)
                    {
                        subscribes.remove(i);
                        release_pending(conn, s.packet_id);
                        conn.events.push_back(Event::Subscribed {
                            packet_id: s.packet_id,
                            reasons: s.reason_codes.iter().collect(),
                        });
                    }
                }
                Packet::UnsubAck(u) => {
                    let sent = !conn.control_contains(&Control::Request(UNSUBSCRIBE, u.packet_id));
                    if let Some(i) = unsubscribes
                        .iter()
                        .position(|(id, _)| *id == u.packet_id && sent)
                    {
                        unsubscribes.remove(i);
                        release_pending(conn, u.packet_id);
                        conn.events.push_back(Event::Unsubscribed {
                            packet_id: u.packet_id,
                            reasons: u.reason_codes.iter().collect(),
                        });
                    }
                }
                Packet::PingResp => {}
                Packet::Disconnect(d) => return conn.on_peer_disconnect(&d),
                Packet::Auth(a) => {
                    // [MQTT-4.12.0-7] only after asking for enhanced authentication.
                    if config.authentication.is_none() {
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
                Packet::Connect(_)
                | Packet::Subscribe(_)
                | Packet::Unsubscribe(_)
                | Packet::PingReq => {
                    return Err(unexpected(t));
                }
            }
            Ok(true)
        })
    }

    /// Acts on expired timers: CONNACK timeout, PINGREQ when idle, PINGRESP timeout. Calling
    /// it early does nothing.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.conn.handle_timeout(now);
        if self.probe.is_some() && self.conn.error() == Some(Error::KeepAliveTimeout) {
            self.heartbeat_lost();
        }
        self.heartbeat_sync(now);
    }

    /// The transport closed. The session stays for the next [`Client::connect`], and the
    /// client is idle again: messages published now wait in the queue for that connection.
    pub fn handle_close(&mut self, _now: Instant) {
        // A connection that died while its ping waited: the path did not hold (a clean
        // close, ours or the server's, says nothing about the path).
        if self.is_closed() {
            self.probe = None;
        } else {
            self.heartbeat_lost();
        }
        if self.conn.error().is_none() && self.conn.phase != Phase::Idle {
            self.conn.phase = Phase::Connected;
            self.conn.fail(Error::ConnectionClosed);
        }
        self.conn.reset_connection();
        self.conn.set_error(None);
        self.conn.final_disconnect = None;
        self.conn.phase = Phase::Idle;
    }

    /// Queues a message. QoS 1/2 messages return their packet identifier; they are sent as
    /// soon as the server's Receive Maximum allows and re-sent after a resumed reconnect.
    /// Messages may be queued before the connection is up.
    ///
    /// Refused, leaving the connection as it was: QoS above the server's Maximum QoS, RETAIN
    /// when the server has none, a message the protocol cannot carry (a wildcard in the topic
    /// or Response Topic, U+0000 in a string, a field over 65,535 bytes), a full queue,
    /// exhausted identifiers.
    pub fn publish(&mut self, now: Instant, message: Message) -> Result<Option<PacketId>, Error> {
        self.conn.check()?;
        // [MQTT-3.2.2-11] never above the server's Maximum QoS.
        if message.qos > self.maximum_qos {
            return Err(Error::QoSNotSupported);
        }
        // [MQTT-3.2.2-14] no RETAIN when the server has no retained messages.
        if message.retain && !self.retain_available {
            return Err(Error::RetainNotSupported);
        }
        self.conn.enqueue(now, message, heapless::Vec::new())
    }

    /// Queues a SUBSCRIBE, returning its packet identifier; [`Event::Subscribed`] reports
    /// the SUBACK.
    pub fn subscribe(
        &mut self,
        _now: Instant,
        filters: &[(&str, SubscriptionOptions)],
        subscription_id: Option<SubscriptionId>,
    ) -> Result<PacketId, Error> {
        self.conn.check()?;
        for (f, _) in filters {
            mqtt_topic::validate_filter(f)
                .map_err(|e| Error::Codec(mqtt_codec::Error::InvalidTopicFilter(e)))?;
        }
        if filters.is_empty() {
            return Err(Error::Codec(mqtt_codec::Error::EmptyPayload {
                packet: PacketType::Subscribe,
            }));
        }
        let id = self.take_id()?;
        let owned = filters
            .iter()
            .map(|(f, o)| (Utf8Bytes::from(alloc::string::String::from(*f)), *o))
            .collect();
        self.subscribes.push_back((id, owned, subscription_id));
        self.conn.push_control(Control::Request(SUBSCRIBE, id));
        Ok(id)
    }

    /// Queues an UNSUBSCRIBE, returning its packet identifier.
    pub fn unsubscribe(&mut self, _now: Instant, filters: &[&str]) -> Result<PacketId, Error> {
        self.conn.check()?;
        for f in filters {
            mqtt_topic::validate_filter(f)
                .map_err(|e| Error::Codec(mqtt_codec::Error::InvalidTopicFilter(e)))?;
        }
        if filters.is_empty() {
            return Err(Error::Codec(mqtt_codec::Error::EmptyPayload {
                packet: PacketType::Unsubscribe,
            }));
        }
        let id = self.take_id()?;
        let owned = filters
            .iter()
            .map(|f| Utf8Bytes::from(alloc::string::String::from(*f)))
            .collect();
        self.unsubscribes.push_back((id, owned));
        self.conn.push_control(Control::Request(UNSUBSCRIBE, id));
        Ok(id)
    }

    fn take_id(&mut self) -> Result<PacketId, Error> {
        let flows = self.conn.flows_mut();
        let id = flows.ids.allocate().ok_or(Error::PacketIdsExhausted)?;
        flows.session.pending_acks.push(id.get());
        Ok(id)
    }

    /// Sends AUTH with the configured method ([MQTT-4.12.0-5]): Continue authentication in
    /// answer to the server's challenge ([MQTT-4.12.0-3]), or Re-authenticate once
    /// connected ([MQTT-4.12.1-1], same method). Without a method there is no AUTH
    /// ([MQTT-4.12.0-7]).
    pub fn auth(
        &mut self,
        _now: Instant,
        reason: ReasonCode,
        data: Option<Bytes>,
    ) -> Result<(), Error> {
        self.conn.check()?;
        if self.config.authentication.is_none() || !self.config.version.is_v5() {
            return Err(Error::InvalidState("AUTH needs an authentication method"));
        }
        self.auths.push_back((reason, data));
        self.conn.push_control(Control::Role(AUTH));
        Ok(())
    }

    /// Acknowledges an incoming QoS 1/2 message when manual acks are on. Acknowledgements
    /// still leave in arrival order ([MQTT-4.6.0-2] [MQTT-4.6.0-3]): an early ack waits for
    /// the ones before it. `false` if `packet_id` is not awaiting an ack.
    pub fn ack(&mut self, _now: Instant, packet_id: PacketId) -> bool {
        self.conn.ack(packet_id, ReasonCode::Success)
    }

    /// Sends DISCONNECT with `reason` (5.0; Normal disconnection before) and closes. The
    /// close is clean whatever the code, since the application asked for it: the DISCONNECT
    /// comes out of the next drain, [`Event::Disconnected`] reports it, then
    /// [`Client::is_closed`] is true and no call returns it as an error.
    pub fn disconnect(&mut self, _now: Instant, reason: ReasonCode) -> Result<(), Error> {
        self.conn.check()?;
        // [MQTT-3.14.2-1] only the DISCONNECT table: refused here, before any state changes.
        if !reason.is_valid_for(PacketType::Disconnect) {
            return Err(Error::Codec(mqtt_codec::Error::InvalidReasonCode {
                packet: PacketType::Disconnect,
                code: reason as u8,
            }));
        }
        // A close the application asked for is no error, whatever its code: nothing
        // returns `Err(Disconnected)` for it, and `is_closed` says when the DISCONNECT is
        // out.
        if self.conn.phase != Phase::Connected {
            self.conn.phase = Phase::Closed;
            self.conn.set_error(Some(Error::Disconnected(reason)));
            self.conn.mark_clean();
            self.conn.timers.clear();
            return Ok(());
        }
        self.conn.final_disconnect = Some(reason);
        self.conn.phase = Phase::Closing;
        self.conn.set_error(Some(Error::Disconnected(reason)));
        self.conn.mark_clean();
        self.conn.timers.clear();
        self.conn.events.push_back(Event::Disconnected {
            reason,
            by_peer: false,
            reason_string: None,
        });
        Ok(())
    }

    /// Writes the next packet to send into `out`, returning its length; `Ok(None)` when
    /// there is nothing to send. After a failure the DISCONNECT (if any) comes out first,
    /// then the error. A packet larger than `out` is `Error::Codec(BufferTooSmall)` and
    /// stays queued.
    pub fn poll_transmit(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<usize>, Error> {
        let written = self.transmit_one(now, out);
        if let Ok(Some(_)) = written {
            self.last_send = now;
            self.arm_ping();
        }
        written
    }

    fn transmit_one(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<usize>, Error> {
        loop {
            let Some(next) = self.conn.pick(now) else {
                return match self.conn.transmit_error() {
                    Some(e) if self.conn.phase == Phase::Closed => Err(e),
                    _ => Ok(None),
                };
            };
            // [MQTT-3.1.2-30] with an Authentication Method in CONNECT, only CONNECT and AUTH
            // (or a DISCONNECT, which is not a control packet here) go out until CONNACK;
            // SUBSCRIBE, UNSUBSCRIBE and PINGREQ queued meanwhile wait for it.
            if matches!(next, Next::Control)
                && self.conn.phase == Phase::Connecting
                && self.config.version.is_v5()
                && self.config.authentication.is_some()
                && !self.conn.role_control_first()
            {
                return Ok(None);
            }
            let n = match next {
                Next::Control => self.transmit_control(now, out)?,
                next => self.conn.transmit(now, next, out)?,
            };
            if let Some(n) = n {
                return Ok(Some(n));
            }
        }
    }

    fn transmit_control(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<usize>, Error> {
        let c = self.conn.control_front().expect("picked");
        let n = match c {
            Control::Role(CONNECT) => {
                let connect = self.connect_packet();
                self.conn.encode(&Packet::Connect(connect.0), out)?
            }
            Control::Request(SUBSCRIBE, id) => {
                let Some((id, filters, sub_id)) = self.subscribes.iter().find(|(i, ..)| i == id)
                else {
                    // Its data went with an earlier connection: nothing to send.
                    self.conn.pop_control();
                    return Ok(None);
                };
                let subs: Vec<Subscription<'_>> = filters
                    .iter()
                    .map(|(f, o)| Subscription {
                        filter: f.as_str(),
                        options: *o,
                    })
                    .collect();
                let s = Subscribe {
                    packet_id: *id,
                    properties: SubscribeProperties {
                        subscription_identifier: *sub_id,
                        ..Default::default()
                    },
                    filters: mqtt_codec::List::new(&subs),
                };
                self.conn.encode(&Packet::Subscribe(s), out)?
            }
            Control::Role(AUTH) => {
                let (reason, data) = self.auths.pop_front().expect("queued with its control");
                let a = mqtt_codec::Auth {
                    reason_code: reason,
                    properties: mqtt_codec::AuthProperties {
                        authentication_method: self
                            .config
                            .authentication
                            .as_ref()
                            .map(|(m, _)| m.as_str()),
                        authentication_data: data.as_deref(),
                        ..Default::default()
                    },
                };
                self.conn.encode(&Packet::Auth(a), out)?
            }
            Control::Request(_, id) => {
                let Some((id, filters)) = self.unsubscribes.iter().find(|(i, _)| i == id) else {
                    self.conn.pop_control();
                    return Ok(None);
                };
                let fs: Vec<&str> = filters.iter().map(Utf8Bytes::as_str).collect();
                let u = Unsubscribe::new(*id, mqtt_codec::List::new(&fs));
                self.conn.encode(&Packet::Unsubscribe(u), out)?
            }
            other => {
                let p = encode_common(other).expect("common control packet");
                self.conn.encode(&p, out)?
            }
        };
        let c = self.conn.pop_control().expect("picked");
        // SUBSCRIBE/UNSUBSCRIBE data stays until the ack arrives (it is re-sent after a
        // reconnect only by the application: the server's SUBACK may have been lost).
        match n {
            Ok(n) => {
                if c == Control::Role(CONNECT) {
                    self.connect_sent = now;
                }
                if c != Control::Role(CONNECT) && self.conn.phase == Phase::Connected {
                    // Keep alive counts from the last packet sent.
                    self.conn
                        .timers
                        .set(Timer::KeepAlive, now + self.conn.keep_alive());
                    if self.conn.keep_alive_secs == 0 {
                        self.conn.timers.stop(Timer::KeepAlive);
                    }
                }
                Ok(Some(n))
            }
            Err(size) => {
                let e = Error::PacketTooLarge {
                    size,
                    max: self.conn.peer.maximum_packet_size,
                };
                Err(self.conn.fail(e))
            }
        }
    }

    fn connect_packet(&self) -> (Connect<'_>,) {
        let c = &self.config;
        let v5 = c.version.is_v5();
        let will = c.will.as_ref().map(|(m, delay)| Will {
            topic: m.topic.as_str(),
            payload: &m.payload,
            qos: m.qos,
            retain: m.retain,
            properties: if v5 {
                WillProperties {
                    will_delay_interval: (*delay > 0).then_some(*delay),
                    payload_format_indicator: m.properties().payload_format_indicator,
                    message_expiry_interval: m.properties().message_expiry_interval,
                    content_type: m.properties().content_type.as_ref().map(Utf8Bytes::as_str),
                    response_topic: m
                        .properties()
                        .response_topic
                        .as_ref()
                        .map(Utf8Bytes::as_str),
                    correlation_data: m.properties().correlation_data.as_deref(),
                    user_properties: m.properties().user_properties(),
                }
            } else {
                WillProperties::default()
            },
        });
        let properties = if v5 {
            ConnectProperties {
                session_expiry_interval: (c.session_expiry_interval > 0)
                    .then_some(c.session_expiry_interval),
                receive_maximum: core::num::NonZeroU16::new(c.receive_maximum)
                    .filter(|r| r.get() != u16::MAX),
                maximum_packet_size: core::num::NonZeroU32::new(c.maximum_packet_size),
                topic_alias_maximum: (c.topic_alias_maximum > 0).then_some(c.topic_alias_maximum),
                authentication_method: c.authentication.as_ref().map(|(m, _)| m.as_str()),
                authentication_data: c.authentication.as_ref().and_then(|(_, d)| d.as_deref()),
                ..Default::default()
            }
        } else {
            ConnectProperties::default()
        };
        (Connect {
            protocol: c.version,
            clean_start: c.clean_start,
            keep_alive: c.keep_alive,
            client_id: c.client_id.as_str(),
            will,
            username: c.username.as_ref().map(Utf8Bytes::as_str),
            password: c.password.as_deref(),
            properties,
            // The codec refuses the flag at 5.0: ignored there, as documented.
            bridge: c.bridge && !v5,
        },)
    }

    /// Writes as many whole packets as fit into `out`, for one write to the transport
    /// (a write per packet costs a system call each, and without `TCP_NODELAY` a delayed
    /// ACK per packet). `Ok(None)` when there is nothing to send. As
    /// [`Client::poll_transmit`], with two differences: a packet that does not fit the
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
    /// ([`Client::poll_transmit_batch`]). `Ok(None)` means nothing is pending, not even
    /// what handling the events queued; only then wait for the transport or
    /// [`Client::poll_timeout`]. The loop cannot end with output left behind, whatever the
    /// event handlers do.
    pub fn poll_output(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<Output>, Error> {
        if let Some(e) = self.poll_event() {
            return Ok(Some(Output::Event(e)));
        }
        Ok(self.poll_transmit_batch(now, out)?.map(Output::Transmit))
    }

    /// Whether an event waits for [`Client::poll_event`].
    pub fn has_events(&self) -> bool {
        !self.conn.events.is_empty()
    }

    /// The next event, if any.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.conn.pop_event()
    }

    /// When [`Client::handle_timeout`] must be called next.
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.conn.timers.next()
    }

    /// Sends a DISCONNECT with the given reason once the queued packets are out; used by
    /// `Drop`-less shutdown paths. Same as [`Client::disconnect`] with Normal disconnection.
    pub fn close(&mut self, now: Instant) -> Result<(), Error> {
        self.disconnect(now, ReasonCode::Success)
    }

    /// The DISCONNECT packet bytes for 3.1.1 and 5.0 alike, for adapters that must say
    /// goodbye outside the machine (a signal handler).
    pub fn disconnect_packet(version: ProtocolVersion, out: &mut [u8]) -> Result<usize, Error> {
        Ok(Packet::Disconnect(Disconnect::default()).encode(version, out)?)
    }
}

fn release_pending(conn: &mut Conn, id: PacketId) {
    let Some(flows) = conn.flows_if_any() else {
        return;
    };
    if let Some(i) = flows
        .session
        .pending_acks
        .iter()
        .position(|&p| p == id.get())
    {
        flows.session.pending_acks.remove(i);
        flows.ids.release(id);
    }
}

fn on_connack(
    conn: &mut Conn,
    config: &ClientConfig,
    connect_sent: Instant,
    frame: &Bytes,
    ack: mqtt_codec::ConnAck<'_>,
    maximum_qos: &mut QoS,
    retain_available: &mut bool,
) -> Result<(), Error> {
    conn.timers.stop(Timer::Connect);
    if ack.reason_code.is_error() {
        conn.set_peer_reason_string(ack.properties.reason_string);
        // [MQTT-4.13.2-1] a refusal closes the connection.
        conn.phase = Phase::Closed;
        return Err(Error::ConnectionRefused(ack.reason_code));
    }
    // [MQTT-3.2.2-4] a client that started clean cannot be handed a session.
    if config.clean_start && ack.session_present {
        return Err(Violation::SessionPresentOnCleanStart.into());
    }
    if !ack.session_present && conn.session().has_shared_state() {
        // [MQTT-3.2.2-5] the server has no session: drop ours and say what is lost.
        let flows = conn.flows_mut();
        let (inflight, pending) = flows.session.take_shared();
        flows.carried.clear();
        for id in pending.into_iter().filter_map(PacketId::new) {
            flows.ids.release(id);
        }
        let messages = inflight
            .into_iter()
            .map(|f| {
                flows.ids.release(f.packet_id);
                f.outgoing.message
            })
            .collect();
        conn.events.push_back(Event::SessionLost { messages });
    }
    let p = &ack.properties;
    conn.peer = Limits {
        receive_maximum: p.receive_maximum.map_or(u16::MAX, |r| r.get()),
        maximum_packet_size: p
            .maximum_packet_size
            .map_or(mqtt_codec::DecodeOptions::PROTOCOL_MAX_PACKET_SIZE, |m| {
                m.get()
            }),
        topic_alias_maximum: p.topic_alias_maximum.unwrap_or(0),
    };
    *maximum_qos = p.maximum_qos.unwrap_or(QoS::ExactlyOnce);
    *retain_available = p.retain_available.unwrap_or(true);
    // [MQTT-3.1.2-21] [MQTT-3.2.2-21] the server's keep alive wins.
    let keep_alive = p.server_keep_alive.unwrap_or(config.keep_alive);
    conn.keep_alive_secs = keep_alive;
    conn.phase = Phase::Connected;
    if keep_alive > 0 {
        // [MQTT-3.1.2-20] from the last packet sent, the CONNECT: due at once if the
        // CONNACK took longer than the keep alive.
        conn.timers
            .set(Timer::KeepAlive, connect_sent + conn.keep_alive());
    }
    conn.events.push_back(Event::Connected(ConnAckInfo {
        session_present: ack.session_present,
        assigned_client_id: p
            .assigned_client_identifier
            .map(|id| Utf8Bytes::slice_of(frame, id)),
        keep_alive: conn.keep_alive(),
        maximum_qos: *maximum_qos,
        retain_available: *retain_available,
        receive_maximum: conn.peer.receive_maximum,
        maximum_packet_size: conn.peer.maximum_packet_size,
        topic_alias_maximum: conn.peer.topic_alias_maximum,
        session_expiry_interval: p.session_expiry_interval,
    }));
    Ok(())
}
