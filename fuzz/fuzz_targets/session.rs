//! The session machines under arbitrary input: a [`Client`] or a [`ServerSession`] driven
//! by a sequence of operations (peer bytes, raw or well-formed; application commands; time
//! steps; transport close and reconnect; `poll_transmit` into buffers of arbitrary sizes;
//! `poll_event`).
//!
//! Invariants checked after every operation:
//! - nothing panics;
//! - every packet `poll_transmit` writes decodes, alone and whole, at the negotiated level,
//!   and is never larger than the Maximum Packet Size the peer announced;
//! - `BufferTooSmall` leaves the session untouched, and a large buffer then succeeds;
//! - once `handle_input` or `poll_transmit` failed, the machine keeps returning that error
//!   (until the client's transport is closed and it connects again);
//! - the session stays within its bounds (in flight ≤ `max_inflight`, queued ≤
//!   `max_queued`) and no packet identifier is held twice.
#![no_main]

use arbitrary::Arbitrary;
use bytes::{Bytes, BytesMut};
use libfuzzer_sys::fuzz_target;
use mqtt_codec::fuzzing::PacketSpec;
use mqtt_codec::{
    decode, AckProperties, ConnAck, ConnAckProperties, Connect, DecodeOptions, Packet, PacketId,
    ProtocolVersion, PubAck, Publish, QoS, QosPid, ReasonCode, Sender, Status, SubAck,
    SubscriptionId, SubscriptionOptions, Topic, UnsubAck,
};
use mqtt_state::{
    Accept, Client, ClientConfig, Error, Event, HeartbeatConfig, Instant, Message, ServerConfig,
    ServerSession, SessionState, TopicBuf,
};
use std::num::{NonZeroU16, NonZeroU32};

const LEVELS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];
/// Topics: valid names, and a few a name must not be (the machines must cope either way).
const TOPICS: [&str; 8] = [
    "a",
    "a/b",
    "sport/tennis",
    "$SYS/x",
    "é/日本",
    "",
    "a/+",
    "#",
];
const FILTERS: [&str; 6] = ["a", "a/+", "#", "sport/#", "+/+", "a/#/b"];
/// Maximum Packet Size values that matter: tiny, small, and none.
const MAX_SIZES: [u32; 5] = [0, 16, 64, 300, 1 << 20];
const BIG: usize = 1 << 21;

#[derive(Debug, Arbitrary)]
struct Input {
    server: bool,
    level: u8,
    receive_maximum: u8,
    max_inflight: u8,
    max_queued: u8,
    max_size: u8,
    topic_aliases: u8,
    keep_alive: u8,
    manual_acks: bool,
    clean_start: bool,
    ops: Vec<Op>,
}

#[derive(Debug, Arbitrary)]
enum Op {
    /// Peer bytes, appended to the input buffer; `feed` hands the buffer to the machine.
    Peer {
        data: PeerData,
        feed: bool,
    },
    /// Client: publish. Server: deliver.
    Send(MsgSpec),
    /// Client: subscribe. Server: suback the `n`-th pending SUBSCRIBE.
    Subscribe {
        n: u8,
        qos: u8,
        codes: Vec<u8>,
    },
    /// Client: unsubscribe. Server: unsuback the `n`-th pending UNSUBSCRIBE.
    Unsubscribe {
        n: u8,
        codes: Vec<u8>,
    },
    /// Manual ack of the `n`-th message received.
    Ack {
        n: u8,
    },
    Disconnect {
        reason: u8,
    },
    /// Server only: answer the pending CONNECT.
    Accept {
        session_present: bool,
    },
    Reject {
        reason: u8,
    },
    Advance {
        ms: u16,
    },
    /// Advance to the machine's own deadline.
    AdvanceToTimeout,
    /// The transport closes; the client connects again, the server is rebuilt with the
    /// session it had.
    Reconnect,
    Transmit {
        size: u16,
        count: u8,
    },
    Events,
}

#[derive(Debug, Arbitrary)]
enum PeerData {
    Raw(Vec<u8>),
    Spec(PacketSpec),
    /// CONNACK (to a client) or CONNECT (to a server) with chosen limits.
    Hello {
        code: u8,
        session_present: bool,
        receive_maximum: u8,
        max_size: u8,
        topic_alias_maximum: u8,
        maximum_qos: u8,
        retain_available: Option<bool>,
        keep_alive: u8,
    },
    /// An acknowledgement (PUBACK, PUBREC, PUBREL, PUBCOMP by `kind`) for the `n`-th id the
    /// machine holds, or a made-up id.
    AckFor {
        kind: u8,
        n: u8,
        code: u8,
    },
    Publish {
        topic: u8,
        qos: u8,
        id: u8,
        dup: bool,
        retain: bool,
        alias: u8,
        payload: u16,
    },
    SubAckFor {
        n: u8,
        codes: Vec<u8>,
    },
    PingReq,
    PingResp,
}

#[derive(Debug, Arbitrary)]
struct MsgSpec {
    topic: u8,
    payload: u16,
    qos: u8,
    retain: bool,
    expiry: Option<u8>,
    content_type: bool,
    user: bool,
    sub_ids: Vec<u32>,
}

fn qos(b: u8) -> QoS {
    match b % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

fn code(b: u8) -> ReasonCode {
    ReasonCode::try_from(b).unwrap_or(ReasonCode::Success)
}

impl MsgSpec {
    /// The message, or `None` for a topic that is not a valid name: [MQTT-3.3.2-2]
    /// [MQTT-4.7.3-1] such a message cannot be made, so it can never reach the machines.
    fn message(&self) -> Option<Message> {
        let payload = Bytes::from(vec![0x5a; usize::from(self.payload % 2048)]);
        let t = TOPICS[usize::from(self.topic) % TOPICS.len()];
        let topic = TopicBuf::from_static(t);
        assert_eq!(topic.is_ok(), mqtt_topic::validate_name(t).is_ok(), "{t:?}");
        let mut m = Message::new(topic.ok()?, payload, qos(self.qos));
        m.retain = self.retain;
        m.properties_mut().message_expiry_interval = self.expiry.map(u32::from);
        if self.content_type {
            m.properties_mut().content_type = Some("text/plain".into());
        }
        if self.user {
            m.properties_mut()
                .set_user_properties(&[("k", "v")])
                .unwrap();
        }
        Some(m)
    }
}

/// What both machines offer the harness.
trait Machine {
    fn input(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), Error>;
    fn transmit(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<usize>, Error>;
    /// As many whole packets as fit.
    fn transmit_batch(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<usize>, Error>;
    fn event(&mut self) -> Option<Event>;
    fn timeout(&mut self, now: Instant);
    fn next_timeout(&self) -> Option<Instant>;
    fn session(&self) -> &SessionState;
    /// The level packets are exchanged at.
    fn version(&self) -> ProtocolVersion;
    /// Over, and nothing left to send.
    fn closed(&self) -> bool;
}

impl Machine for Client {
    fn input(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), Error> {
        self.handle_input(now, buf)
    }
    fn transmit(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<usize>, Error> {
        self.poll_transmit(now, out)
    }
    fn transmit_batch(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<usize>, Error> {
        self.poll_transmit_batch(now, out)
    }
    fn event(&mut self) -> Option<Event> {
        self.poll_event()
    }
    fn timeout(&mut self, now: Instant) {
        self.handle_timeout(now)
    }
    fn next_timeout(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn session(&self) -> &SessionState {
        Client::session(self)
    }
    fn version(&self) -> ProtocolVersion {
        self.config().version
    }
    fn closed(&self) -> bool {
        self.is_closed()
    }
}

impl Machine for ServerSession {
    fn input(&mut self, now: Instant, buf: &mut BytesMut) -> Result<(), Error> {
        self.handle_input(now, buf)
    }
    fn transmit(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<usize>, Error> {
        self.poll_transmit(now, out)
    }
    fn transmit_batch(&mut self, now: Instant, out: &mut [u8]) -> Result<Option<usize>, Error> {
        self.poll_transmit_batch(now, out)
    }
    fn event(&mut self) -> Option<Event> {
        self.poll_event()
    }
    fn timeout(&mut self, now: Instant) {
        self.handle_timeout(now)
    }
    fn next_timeout(&self) -> Option<Instant> {
        self.poll_timeout()
    }
    fn session(&self) -> &SessionState {
        ServerSession::session(self)
    }
    fn version(&self) -> ProtocolVersion {
        ServerSession::version(self)
    }
    fn closed(&self) -> bool {
        self.is_closed()
    }
}

/// The length of the whole packet `bytes` starts with (fixed header included), if it holds
/// one.
fn packet_len(bytes: &[u8]) -> Option<usize> {
    let mut len = 0usize;
    for i in 1..5 {
        let b = *bytes.get(i)?;
        len |= usize::from(b & 0x7f) << (7 * (i - 1));
        if b & 0x80 == 0 {
            let total = 1 + i + len;
            return (total <= bytes.len()).then_some(total);
        }
    }
    None
}

fn is_buffer_too_small(e: &Error) -> bool {
    matches!(e, Error::Codec(mqtt_codec::Error::BufferTooSmall { .. }))
}

struct Harness {
    is_server: bool,
    /// The level a server's peer connects with.
    level: ProtocolVersion,
    now: Instant,
    input: BytesMut,
    /// The error the machine must keep returning.
    sticky: Option<Error>,
    /// The connection closed cleanly (the application's disconnect, or the peer's
    /// Normal disconnection): no call may return an error for it.
    clean_close: bool,
    /// The Maximum Packet Size the peer announced on this connection.
    peer_max: Option<u32>,
    /// The peer's first CONNECT/CONNACK on this connection was seen: a later one is a
    /// protocol error whose limits the machine rightly ignores.
    hello_seen: bool,
    max_inflight: usize,
    max_queued: usize,
    /// Ids of received messages (for manual acks) and of pending requests.
    received: Vec<PacketId>,
    sub_requests: Vec<PacketId>,
    unsub_requests: Vec<PacketId>,
    connect_pending: bool,
    /// The server answered the CONNECT.
    decided: bool,
    out: Vec<u8>,
}

impl Harness {
    fn check_session(&self, s: &SessionState) {
        assert!(
            s.inflight.len() <= self.max_inflight,
            "{} in flight, limit {}",
            s.inflight.len(),
            self.max_inflight
        );
        assert!(
            s.queue.len() <= self.max_queued,
            "{} queued, limit {}",
            s.queue.len(),
            self.max_queued
        );
        let mut ids: Vec<u16> = s
            .inflight
            .iter()
            .map(|f| f.packet_id.get())
            .chain(
                s.queue
                    .iter()
                    .filter_map(|o| o.packet_id.map(PacketId::get)),
            )
            .chain(s.pending_acks.iter().copied())
            .collect();
        let n = ids.len();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), n, "a packet id is held twice: {s:?}");
        assert!(
            s.incoming_qos2.windows(2).all(|w| w[0] < w[1]),
            "incoming QoS 2 ids not sorted and unique: {:?}",
            s.incoming_qos2
        );
        for f in &s.inflight {
            assert_ne!(f.outgoing.message.qos, QoS::AtMostOnce, "QoS 0 in flight");
        }
    }

    /// Records an error a call returned; it must equal the sticky one if there is one.
    fn on_error(&mut self, e: Error) {
        if std::env::var_os("TRACE").is_some() {
            eprintln!("error {e:?}");
        }
        match self.sticky {
            Some(s) => assert_eq!(s, e, "error changed after failure"),
            None => self.sticky = Some(e),
        }
    }

    /// Feeds the input buffer and looks at what was consumed for the peer's limits.
    fn feed<M: Machine>(&mut self, m: &mut M) {
        let before = self.input.clone();
        let r = m.input(self.now, &mut self.input);
        if let Some(s) = self.sticky {
            assert_eq!(r, Err(s), "handle_input after failure");
        } else if self.clean_close {
            assert_eq!(r, Ok(()), "handle_input after a clean close");
        } else if r.is_ok() && m.closed() {
            // The peer's DISCONNECT with Normal disconnection: the end, not an error.
            self.clean_close = true;
        }
        if let Err(e) = r {
            assert!(!is_buffer_too_small(&e));
            self.on_error(e);
        }
        let consumed = before.len() - self.input.len();
        assert_eq!(&before[consumed..], &self.input[..], "input tail changed");
        // Shadow-decode the consumed frames for the announced Maximum Packet Size.
        let sender = if self.is_server {
            Sender::Client
        } else {
            Sender::Server
        };
        let mut rest = &before[..consumed];
        let mut version = m.version();
        while let Ok(Status::Complete { packet, consumed }) =
            decode(rest, &DecodeOptions::new(version).sender(sender))
        {
            match &packet {
                Packet::Connect(c) if !self.hello_seen => {
                    version = c.protocol;
                    self.hello_seen = true;
                    self.peer_max = c.properties.maximum_packet_size.map(NonZeroU32::get);
                }
                Packet::ConnAck(c) if !c.reason_code.is_error() && !self.hello_seen => {
                    self.hello_seen = true;
                    self.peer_max = c.properties.maximum_packet_size.map(NonZeroU32::get);
                }
                _ => {}
            }
            rest = &rest[consumed..];
        }
    }

    /// One `poll_transmit` into a buffer of `size` bytes, checked.
    fn transmit<M: Machine>(&mut self, m: &mut M, size: usize) -> bool {
        // Odd sizes take the batch: whole packets, as many as fit.
        let batch = size % 2 == 1;
        let size = size.min(BIG);
        let before = m.session().clone();
        let r = if batch {
            m.transmit_batch(self.now, &mut self.out[..size])
        } else {
            m.transmit(self.now, &mut self.out[..size])
        };
        let r = match r {
            Err(e) if is_buffer_too_small(&e) => {
                assert_eq!(&before, m.session(), "BufferTooSmall changed the session");
                let r = if batch {
                    m.transmit_batch(self.now, &mut self.out[..BIG])
                } else {
                    m.transmit(self.now, &mut self.out[..BIG])
                };
                assert!(
                    !matches!(r, Err(ref e) if is_buffer_too_small(e)),
                    "a large buffer is still too small"
                );
                r
            }
            r => r,
        };
        match r {
            Ok(Some(n)) => {
                assert!(n <= BIG);
                if batch {
                    // Whole packets back to back, each checked as a lone one would be.
                    let mut at = 0;
                    while at < n {
                        let len = packet_len(&self.out[at..n])
                            .expect("poll_transmit_batch wrote a partial packet");
                        self.check_packet(m.version(), &self.out[at..at + len]);
                        at += len;
                    }
                } else {
                    self.check_packet(m.version(), &self.out[..n]);
                }
                true
            }
            Ok(None) => false,
            Err(e) => {
                assert!(
                    !self.clean_close,
                    "poll_transmit error after a clean close: {e:?}"
                );
                self.on_error(e);
                false
            }
        }
    }

    fn check_packet(&self, version: ProtocolVersion, bytes: &[u8]) {
        let sender = if self.is_server {
            Sender::Server
        } else {
            Sender::Client
        };
        let opts = DecodeOptions::new(version).sender(sender);
        match decode(bytes, &opts) {
            Ok(Status::Complete { packet, consumed }) => {
                assert_eq!(
                    consumed,
                    bytes.len(),
                    "poll_transmit wrote more than a packet"
                );
                if let Some(max) = self.peer_max {
                    assert!(
                        bytes.len() <= max as usize,
                        "{} byte packet over the peer's maximum of {max}: {packet:?}",
                        bytes.len()
                    );
                }
                if self.sticky.is_some() || self.clean_close {
                    assert!(
                        match &packet {
                            Packet::Disconnect(_) => true,
                            // A CONNACK decided before the failure still goes out: a
                            // refusal, or an acceptance that must precede the DISCONNECT
                            // ([MQTT-3.14.0-1]).
                            Packet::ConnAck(_) => true,
                            _ => false,
                        },
                        "sent {packet:?} after failing"
                    );
                }
            }
            other => panic!("poll_transmit wrote an undecodable packet ({other:?}): {bytes:02x?}"),
        }
    }

    fn events<M: Machine>(&mut self, m: &mut M) {
        for _ in 0..256 {
            let Some(e) = m.event() else { return };
            match e {
                Event::Message {
                    packet_id: Some(id),
                    ..
                } => self.received.push(id),
                Event::SubscribeRequest { packet_id, .. } => self.sub_requests.push(packet_id),
                Event::UnsubscribeRequest { packet_id, .. } => self.unsub_requests.push(packet_id),
                Event::ConnectRequest(_) => self.connect_pending = !self.decided,
                _ => {}
            }
        }
    }

    /// An `accept` or `reject`: it must succeed when a CONNECT awaits an answer, unless the
    /// connection already failed.
    fn decide(&mut self, r: Result<(), Error>) {
        match r {
            Ok(()) => self.decided = true,
            Err(Error::InvalidState(e)) => assert!(
                !self.connect_pending || self.clean_close,
                "refused to answer a CONNECT: {e}"
            ),
            // The connection failed while the CONNECT awaited an answer: the same error.
            Err(e) => self.on_error(e),
        }
        self.connect_pending = false;
    }

    /// Bytes for a peer packet; `ids` are those the machine holds.
    fn peer_bytes(&self, version: ProtocolVersion, d: &PeerData, ids: &[u16]) -> Vec<u8> {
        let enc = |p: &Packet<'_>| p.encode_to_vec(version).unwrap_or_default();
        let pick_id = |n: u8| -> PacketId {
            if ids.is_empty() || n >= 200 {
                PacketId::new(u16::from(n).max(1)).unwrap()
            } else {
                PacketId::new(ids[usize::from(n) % ids.len()]).unwrap()
            }
        };
        match d {
            PeerData::Raw(b) => b.clone(),
            PeerData::Spec(s) => {
                let mut s = s.clone();
                s.version = version;
                s.with_packet(|p| enc(p))
            }
            PeerData::Hello {
                code: c,
                session_present,
                receive_maximum,
                max_size,
                topic_alias_maximum,
                maximum_qos,
                retain_available,
                keep_alive,
            } => {
                let max = MAX_SIZES[usize::from(*max_size) % MAX_SIZES.len()];
                if self.is_server {
                    let version = self.level;
                    let mut c = Connect::new(version, "peer");
                    c.keep_alive = u16::from(*keep_alive % 4);
                    c.clean_start = !*session_present;
                    if version.is_v5() {
                        c.properties.receive_maximum = NonZeroU16::new(u16::from(*receive_maximum));
                        c.properties.maximum_packet_size = NonZeroU32::new(max);
                        c.properties.topic_alias_maximum =
                            Some(u16::from(*topic_alias_maximum % 4));
                    }
                    enc(&Packet::Connect(c))
                } else {
                    let rc = if c % 4 == 0 {
                        code(*c)
                    } else {
                        ReasonCode::Success
                    };
                    let mut a = ConnAck::new(*session_present, rc);
                    if version.is_v5() {
                        a.properties = ConnAckProperties {
                            receive_maximum: NonZeroU16::new(u16::from(*receive_maximum)),
                            maximum_packet_size: NonZeroU32::new(max),
                            topic_alias_maximum: Some(u16::from(*topic_alias_maximum % 4)),
                            maximum_qos: (*maximum_qos < 2).then_some(qos(*maximum_qos)),
                            retain_available: *retain_available,
                            server_keep_alive: (*keep_alive > 200).then_some(1),
                            ..Default::default()
                        };
                    }
                    enc(&Packet::ConnAck(a))
                }
            }
            PeerData::AckFor { kind, n, code: c } => {
                let ack = PubAck {
                    packet_id: pick_id(*n),
                    reason_code: if version.is_v5() {
                        code(*c)
                    } else {
                        ReasonCode::Success
                    },
                    properties: AckProperties::default(),
                };
                enc(&match kind % 4 {
                    0 => Packet::PubAck(ack),
                    1 => Packet::PubRec(ack),
                    2 => Packet::PubRel(ack),
                    _ => Packet::PubComp(ack),
                })
            }
            PeerData::Publish {
                topic,
                qos: q,
                id,
                dup,
                retain,
                alias,
                payload,
            } => {
                let id = PacketId::new(u16::from(*id % 8) + 1).unwrap();
                let qos_pid = match qos(*q) {
                    QoS::AtMostOnce => QosPid::AtMostOnce,
                    QoS::AtLeastOnce => QosPid::AtLeastOnce(id),
                    QoS::ExactlyOnce => QosPid::ExactlyOnce(id),
                };
                let body = vec![0xa5; usize::from(*payload % 512)];
                // The first five topics are valid names.
                let name = Topic::new(TOPICS[usize::from(*topic) % 5]).expect("a valid name");
                let mut p = Publish::new(name, &body, qos_pid);
                p.dup = *dup && qos_pid != QosPid::AtMostOnce;
                p.retain = *retain;
                if version.is_v5() && *alias % 4 != 0 {
                    p.properties.topic_alias = NonZeroU16::new(u16::from(*alias % 4));
                    if *alias >= 128 {
                        p.topic = Topic::EMPTY;
                    }
                }
                enc(&Packet::Publish(p))
            }
            PeerData::SubAckFor { n, codes } => {
                let codes: Vec<ReasonCode> = codes.iter().take(4).map(|&c| code(c)).collect();
                let codes = if codes.is_empty() {
                    vec![ReasonCode::Success]
                } else {
                    codes
                };
                let id = pick_id(*n);
                if n % 2 == 0 {
                    enc(&Packet::SubAck(SubAck::new(
                        id,
                        mqtt_codec::List::new(&codes),
                    )))
                } else {
                    enc(&Packet::UnsubAck(UnsubAck::new(
                        id,
                        mqtt_codec::List::new(&codes),
                    )))
                }
            }
            PeerData::PingReq => enc(&Packet::PingReq),
            PeerData::PingResp => enc(&Packet::PingResp),
        }
    }

    fn held_ids(s: &SessionState) -> Vec<u16> {
        s.inflight
            .iter()
            .map(|f| f.packet_id.get())
            .chain(s.pending_acks.iter().copied())
            .chain(s.incoming_qos2.iter().copied())
            .collect()
    }

    /// The operations both machines share.
    fn common<M: Machine>(&mut self, m: &mut M, op: &Op) -> bool {
        match op {
            Op::Peer { data, feed } => {
                let ids = Self::held_ids(m.session());
                let bytes = self.peer_bytes(m.version(), data, &ids);
                if self.input.len() + bytes.len() < (1 << 20) {
                    self.input.extend_from_slice(&bytes);
                }
                if *feed {
                    self.feed(m);
                }
            }
            Op::Advance { ms } => {
                self.now = self.now + mqtt_state::Duration::from_millis(u64::from(*ms) * 10);
                m.timeout(self.now);
            }
            Op::AdvanceToTimeout => {
                if let Some(t) = m.next_timeout() {
                    assert!(t >= Instant::ZERO);
                    if t > self.now {
                        self.now = t;
                    }
                    m.timeout(self.now);
                }
            }
            Op::Transmit { size, count } => {
                for _ in 0..=(*count % 8) {
                    if !self.transmit(m, usize::from(*size)) {
                        break;
                    }
                }
            }
            Op::Events => self.events(m),
            _ => return false,
        }
        true
    }

    /// Drains everything, as an event loop would, with a large buffer.
    fn drain<M: Machine>(&mut self, m: &mut M) {
        for _ in 0..4096 {
            if !self.transmit(m, BIG) {
                break;
            }
        }
        self.events(m);
    }
}

fn run_client(h: &mut Harness, cfg: ClientConfig, ops: &[Op]) {
    let mut c = Client::new(cfg);
    c.connect(h.now).unwrap();
    for op in ops {
        if std::env::var_os("TRACE").is_some() {
            eprintln!("{op:?}");
        }
        if !h.common(&mut c, op) {
            match op {
                Op::Send(spec) => {
                    if let Some(m) = spec.message() {
                        let r = c.publish(h.now, m);
                        if let (Some(s), Err(e)) = (h.sticky, &r) {
                            assert_eq!(s, *e, "publish after failure");
                        }
                    }
                }
                Op::Subscribe { n, qos: q, .. } => {
                    let f = FILTERS[usize::from(*n) % FILTERS.len()];
                    let r = c.subscribe(h.now, &[(f, SubscriptionOptions::qos(qos(*q)))], None);
                    if let Some(s) = h.sticky {
                        assert_eq!(r.map(|_| ()), Err(s), "subscribe after failure");
                    }
                }
                Op::Unsubscribe { n, .. } => {
                    let f = FILTERS[usize::from(*n) % FILTERS.len()];
                    let r = c.unsubscribe(h.now, &[f, "a"]);
                    if let Some(s) = h.sticky {
                        assert_eq!(r.map(|_| ()), Err(s), "unsubscribe after failure");
                    }
                }
                Op::Ack { n } => {
                    if !h.received.is_empty() {
                        let id = h.received.remove(usize::from(*n) % h.received.len());
                        c.ack(h.now, id);
                    }
                }
                Op::Disconnect { reason } => {
                    let r = c.disconnect(h.now, code(*reason));
                    if let Some(s) = h.sticky {
                        assert_eq!(r, Err(s), "disconnect after failure");
                    } else if r.is_ok() {
                        // Asked for: a clean close, whatever the code.
                        h.clean_close = true;
                    }
                }
                Op::Reconnect | Op::Accept { .. } | Op::Reject { .. } => {
                    c.handle_close(h.now);
                    h.sticky = None;
                    h.clean_close = false;
                    h.peer_max = None;
                    h.hello_seen = false;
                    h.input.clear();
                    h.received.clear();
                    c.connect(h.now).unwrap();
                }
                _ => {}
            }
        }
        h.check_session(c.session());
    }
    h.drain(&mut c);
    h.check_session(c.session());
}

fn run_server(h: &mut Harness, cfg: ServerConfig, ops: &[Op]) {
    let mut s = ServerSession::new(cfg.clone(), h.now);
    let mut saved = SessionState::default();
    for op in ops {
        if std::env::var_os("TRACE").is_some() {
            eprintln!("{op:?}");
        }
        if !h.common(&mut s, op) {
            match op {
                Op::Send(spec) => {
                    let ids: Vec<SubscriptionId> = spec
                        .sub_ids
                        .iter()
                        .filter_map(|&i| SubscriptionId::new(i))
                        .collect();
                    if let Some(m) = spec.message() {
                        let r = s.deliver(h.now, m, &ids);
                        if let (Some(st), Err(e)) = (h.sticky, &r) {
                            assert_eq!(st, *e, "deliver after failure");
                        }
                    }
                }
                Op::Subscribe { n, codes, .. } => {
                    if !h.sub_requests.is_empty() {
                        let id = h
                            .sub_requests
                            .remove(usize::from(*n) % h.sub_requests.len());
                        let codes = codes.iter().take(4).map(|&c| code(c)).collect();
                        let r = s.suback(h.now, id, codes);
                        if let Some(st) = h.sticky {
                            assert_eq!(r, Err(st), "suback after failure");
                        }
                    }
                }
                Op::Unsubscribe { n, codes } => {
                    if !h.unsub_requests.is_empty() {
                        let i = usize::from(*n) % h.unsub_requests.len();
                        let id = h.unsub_requests.remove(i);
                        let codes = codes.iter().take(4).map(|&c| code(c)).collect();
                        let r = s.unsuback(h.now, id, codes);
                        if let Some(st) = h.sticky {
                            assert_eq!(r, Err(st), "unsuback after failure");
                        }
                    }
                }
                Op::Ack { n } => {
                    if !h.received.is_empty() {
                        let id = h.received.remove(usize::from(*n) % h.received.len());
                        // Now and then a refusal (5.0 reason codes of 0x80 and above).
                        let reason = if n % 4 == 3 {
                            ReasonCode::NotAuthorized
                        } else {
                            ReasonCode::Success
                        };
                        s.ack(h.now, id, reason);
                    }
                }
                Op::Disconnect { reason } => {
                    s.disconnect(h.now, code(*reason));
                    // Clean unless it had failed already (a timeout fails silently).
                    if s.error() == Some(Error::Disconnected(code(*reason))) {
                        h.clean_close = true;
                    }
                }
                Op::Accept { session_present } => {
                    let accept = Accept {
                        session: std::mem::take(&mut saved),
                        session_present: *session_present,
                        ..Accept::default()
                    };
                    let r = s.accept(h.now, accept);
                    h.decide(r);
                }
                Op::Reject { reason } => {
                    let r = s.reject(h.now, code(*reason));
                    h.decide(r);
                }
                Op::Reconnect => {
                    s.handle_close(h.now);
                    let old = std::mem::replace(&mut s, ServerSession::new(cfg.clone(), h.now));
                    saved = old.into_session();
                    h.check_session(&saved);
                    h.sticky = None;
                    h.clean_close = false;
                    h.peer_max = None;
                    h.hello_seen = false;
                    h.input.clear();
                    h.received.clear();
                    h.sub_requests.clear();
                    h.unsub_requests.clear();
                    h.connect_pending = false;
                    h.decided = false;
                }
                _ => {}
            }
        }
        h.check_session(s.session());
    }
    h.drain(&mut s);
    h.check_session(s.session());
}

fn run(input: Input) {
    let version = LEVELS[usize::from(input.level) % 3];
    let max_inflight = u16::from(input.max_inflight % 8) + 1;
    let max_queued = usize::from(input.max_queued % 10);
    let max_size = MAX_SIZES[usize::from(input.max_size) % MAX_SIZES.len()].max(64);
    let mut h = Harness {
        is_server: input.server,
        level: version,
        now: Instant::from_millis(1_000),
        input: BytesMut::new(),
        sticky: None,
        clean_close: false,
        peer_max: None,
        hello_seen: false,
        max_inflight: usize::from(max_inflight),
        max_queued,
        received: Vec::new(),
        sub_requests: Vec::new(),
        unsub_requests: Vec::new(),
        connect_pending: false,
        decided: false,
        out: vec![0; BIG],
    };
    let ops = &input.ops[..input.ops.len().min(256)];
    if input.server {
        let cfg = ServerConfig {
            receive_maximum: u16::from(input.receive_maximum % 8) + 1,
            maximum_packet_size: max_size,
            topic_alias_maximum: u16::from(input.topic_aliases % 4),
            outgoing_topic_aliases: u16::from(input.topic_aliases / 4 % 4),
            max_inflight,
            max_queued,
            server_keep_alive: (input.keep_alive > 250).then_some(1),
            ..ServerConfig::default()
        };
        run_server(&mut h, cfg, ops);
    } else {
        let mut cfg = ClientConfig::new(version, "fuzz");
        cfg.keep_alive = u16::from(input.keep_alive % 4);
        if input.keep_alive & 0x10 != 0 {
            // The adaptive heartbeat, at the scale of the fuzzer's clock (seconds).
            let mut hb = HeartbeatConfig::default();
            hb.min_interval = mqtt_state::Duration::from_millis(500);
            hb.precision = mqtt_state::Duration::from_millis(200);
            hb.pong_timeout = mqtt_state::Duration::from_millis(700);
            hb.recheck_after = 2;
            cfg.heartbeat = Some(hb);
        }
        cfg.clean_start = input.clean_start;
        cfg.receive_maximum = u16::from(input.receive_maximum % 8) + 1;
        cfg.maximum_packet_size = max_size;
        cfg.topic_alias_maximum = u16::from(input.topic_aliases % 4);
        cfg.outgoing_topic_aliases = u16::from(input.topic_aliases / 4 % 4);
        cfg.max_inflight = max_inflight;
        cfg.max_queued = max_queued;
        cfg.manual_acks = input.manual_acks;
        run_client(&mut h, cfg, ops);
    }
}

fuzz_target!(|input: Input| run(input));
