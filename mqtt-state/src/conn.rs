//! The engine both roles share: framing of input, the QoS 1/2 flows in both directions,
//! flow control, topic aliases, keep alive bookkeeping, and the transmit scheduler.

use alloc::boxed::Box;
use alloc::collections::VecDeque;
use alloc::vec::Vec;
use core::num::NonZeroU16;

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    decode_fixed_header, AckProperties, DecodeOptions, Disconnect, Packet, PacketId, PacketType,
    ProtocolVersion, PubAck, QoS, QosPid, ReasonCode, Sender, Status, SubscriptionId,
    UserProperties,
};

use mqtt_topic::TopicBuf;

use crate::session::{Inflight, Outgoing, SessionState, Stage};
use crate::{
    Diagnostics, Duration, Error, Event, Instant, Message, PacketIdAllocator, Timer, Utf8Bytes,
    Violation,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    Client,
    Server,
}

/// Connection progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// No transport (client before `connect`, or after it dropped).
    Idle,
    /// CONNECT sent (client) or awaited/being decided (server).
    Connecting,
    /// CONNACK exchanged with success.
    Connected,
    /// A DISCONNECT went or is going out; nothing else is sent.
    Closing,
    /// Done; every call returns the terminal error.
    Closed,
}

/// A non-PUBLISH packet waiting to be sent. Acknowledgements of incoming PUBLISH live in
/// `acks` instead, because their order is constrained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Control {
    PingReq,
    PingResp,
    PubComp(PacketId, ReasonCode),
    SubAck(PacketId, Vec<ReasonCode>),
    UnsubAck(PacketId, Vec<ReasonCode>),
    /// Built by the role from its own data.
    Role(u8),
    /// A request the role keeps the data of, found again by its packet identifier
    /// (the client's SUBSCRIBE and UNSUBSCRIBE).
    Request(u8, PacketId),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ping {
    Req,
    Resp,
}

static PING_REQ: Control = Control::PingReq;
static PING_RESP: Control = Control::PingResp;

impl Ping {
    fn control(self) -> &'static Control {
        match self {
            Ping::Req => &PING_REQ,
            Ping::Resp => &PING_RESP,
        }
    }
}

/// A queue that costs one pointer until first used: every connection carries several, and
/// an empty `VecDeque` is 32 bytes inline. Once made it stays, capacity and all, until
/// [`BoxedDeque::release_if_empty`], so that a busy connection does not allocate it again
/// after every message.
// The box is the point: one pointer inline instead of the deque's four words.
#[allow(clippy::box_collection)]
#[derive(Debug)]
pub(crate) struct BoxedDeque<T>(Option<Box<VecDeque<T>>>);

impl<T> Default for BoxedDeque<T> {
    fn default() -> Self {
        Self(None)
    }
}

impl<T> BoxedDeque<T> {
    pub(crate) fn push_back(&mut self, item: T) {
        // Room for one at first: an idle connection's burst (say a SUBSCRIBE's event, or its
        // SUBACK) is usually a single item, and `VecDeque`'s first growth would reserve four
        // (448 bytes of `Event`s). Freed memory stays resident in the allocator, so this peak is
        // what an idle push client costs, even after the release at its next PINGREQ.
        self.0
            .get_or_insert_with(|| Box::new(VecDeque::with_capacity(1)))
            .push_back(item);
    }

    pub(crate) fn pop_front(&mut self) -> Option<T> {
        self.0.as_mut()?.pop_front()
    }

    pub(crate) fn front(&self) -> Option<&T> {
        self.0.as_ref()?.front()
    }

    pub(crate) fn push_front(&mut self, item: T) {
        self.0
            .get_or_insert_with(|| Box::new(VecDeque::with_capacity(1)))
            .push_front(item);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.0.as_ref().is_none_or(|q| q.is_empty())
    }

    pub(crate) fn clear(&mut self) {
        if let Some(q) = &mut self.0 {
            q.clear();
        }
    }

    pub(crate) fn contains(&self, item: &T) -> bool
    where
        T: PartialEq,
    {
        self.0.as_ref().is_some_and(|q| q.contains(item))
    }

    /// Gives back the capacity beyond what is queued (all of it when nothing is).
    pub(crate) fn shrink_to_fit(&mut self) {
        match &mut self.0 {
            Some(q) if !q.is_empty() => q.shrink_to_fit(),
            _ => self.0 = None,
        }
    }

    /// Moves the first item `pick` accepts to the front; false when none does.
    pub(crate) fn move_first_to_front(&mut self, pick: impl Fn(&T) -> bool) -> bool {
        let Some(q) = &mut self.0 else {
            return false;
        };
        match q.iter().position(pick) {
            Some(i) => {
                let item = q.remove(i).expect("found");
                q.push_front(item);
                true
            }
            None => false,
        }
    }

    /// Gives the memory back when nothing is queued.
    pub(crate) fn release_if_empty(&mut self) {
        if self.is_empty() {
            self.0 = None;
        }
    }
}

fn shrink_if_empty<T>(q: &mut VecDeque<T>) {
    if q.is_empty() {
        *q = VecDeque::new();
    }
}

/// An acknowledgement owed for an incoming QoS 1/2 PUBLISH, in arrival order
/// ([MQTT-4.6.0-2] [MQTT-4.6.0-3]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct OwedAck {
    pub(crate) id: PacketId,
    pub(crate) qos: QoS,
    /// The application has acknowledged it (always, unless manual acks are on).
    pub(crate) ready: bool,
    pub(crate) code: ReasonCode,
}

/// Limits that differ by direction.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// Receive Maximum: unacknowledged QoS 1/2 PUBLISH accepted at once.
    pub(crate) receive_maximum: u16,
    /// Largest packet accepted.
    pub(crate) maximum_packet_size: u32,
    /// Highest topic alias accepted.
    pub(crate) topic_alias_maximum: u16,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            receive_maximum: u16::MAX,
            maximum_packet_size: DecodeOptions::PROTOCOL_MAX_PACKET_SIZE,
            topic_alias_maximum: 0,
        }
    }
}

pub(crate) struct Conn {
    pub(crate) role: Role,
    pub(crate) version: ProtocolVersion,
    pub(crate) phase: Phase,
    /// A DISCONNECT to send before closing (5.0, or any version from a client).
    pub(crate) final_disconnect: Option<ReasonCode>,
    pub(crate) timers: crate::time::TimerTable,
    /// Keep alive in effect, in seconds as CONNECT and CONNACK carry it; zero turns it off.
    pub(crate) keep_alive_secs: u16,
    pub(crate) ping_outstanding: bool,
    /// What we accept.
    pub(crate) local: Limits,
    /// What the peer accepts.
    pub(crate) peer: Limits,
    /// Our own cap on QoS 1/2 messages in flight.
    pub(crate) max_inflight: u16,
    /// `u32`: a queue of four billion messages is beyond any memory, and every
    /// connection carries the field.
    pub(crate) max_queued: u32,
    pub(crate) manual_acks: bool,
    /// Receive Maximum as mosquitto applies it (server, 5.0): only what the application
    /// has not acknowledged counts, a QoS 1 PUBLISH beyond the quota is accepted and a
    /// QoS 2 one is answered PUBREC 0x97. Off, the peer's excess is a Protocol Error
    /// (DISCONNECT 0x93), counting acknowledgements queued but not yet sent.
    pub(crate) lenient_receive_maximum: bool,
    /// The peer's Request Problem Information (5.0): off, diagnostics go only on
    /// CONNACK and DISCONNECT ([MQTT-3.1.2-29]).
    pub(crate) problem_info: bool,
    /// Boxed, made at the first message that needs it and dropped again once the
    /// connection is idle with none of it in use: most connections of a broker sit idle
    /// with no message in flight, and each would carry the empty queues inline.
    flows: Option<Box<Flows>>,
    /// Where the packet identifier sequence resumes while `flows` is absent.
    next_packet_id: u16,
    /// A PINGREQ arrived, so the client had nothing to send for a keep alive period:
    /// queue memory is given back once the connection has nothing left to send.
    pub(crate) pinged: bool,
    /// The control packets waiting, in order: `ping`, then `control`. All an idle
    /// keep-alive connection ever queues is a lone PINGREQ or PINGRESP; that one waits in
    /// `ping` rather than in the queue, which would be allocated for it. Only ever set
    /// while the queue is empty. (Two fields of the machine rather than a struct of
    /// their own, whose padding would cost every connection 8 bytes.)
    ping: Option<Ping>,
    control: BoxedDeque<Control>,
    pub(crate) events: BoxedDeque<Event>,
    pub(crate) max_alias_out: u16,
    /// Boxed, made on first use: most connections never have any of it, and each of the
    /// many idle ones would carry it.
    rare: Option<Box<Rare>>,
    /// While set, only AUTH is read; other packets wait in the input buffer (a server
    /// between CONNECT and its decision, [MQTT-3.1.4-6]).
    pub(crate) hold_non_auth: bool,
}

/// Per-connection state that most connections never use.
#[derive(Debug, Default)]
struct Rare {
    /// Incoming topic aliases: index `alias - 1`.
    alias_in: Vec<Option<TopicBuf>>,
    /// Outgoing topic aliases: index `alias - 1`.
    alias_out: Vec<TopicBuf>,
    /// The Reason String of the peer's DISCONNECT or refusing CONNACK, for the event.
    peer_reason_string: Option<Utf8Bytes>,
    /// The sticky error, once there is one: here because it is set once, when the
    /// connection ends, and every connection would carry an `Error` inline meanwhile.
    error: Option<Error>,
    /// The connection ended cleanly (`error` is then `Disconnected`): the application
    /// asked for it, or the peer's DISCONNECT said Normal disconnection (or Disconnect
    /// with Will Message). No call reports that as an error.
    clean_close: bool,
    /// Diagnostics the application attached to packets still to send, by packet type
    /// and identifier (0 for CONNACK and DISCONNECT); taken when the packet goes out.
    diagnostics: Vec<(PacketType, u16, Diagnostics)>,
}

/// At most this many packets with diagnostics waiting: the application attaches them
/// one per answer, and answers leave as fast as the connection writes.
const MAX_PENDING_DIAGNOSTICS: usize = 1024;

/// A packet identifier for probes.
const ONE: PacketId = match PacketId::new(1) {
    Some(id) => id,
    None => panic!("1 is a packet identifier"),
};

/// Sets the Reason String and User Properties of a packet that has them.
fn set_diagnostics<'a>(p: &mut Packet<'a>, rs: Option<&'a str>, up: UserProperties<'a>) {
    match p {
        Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
            a.properties.reason_string = rs;
            a.properties.user_properties = up;
        }
        Packet::SubAck(a) => {
            a.properties.reason_string = rs;
            a.properties.user_properties = up;
        }
        Packet::UnsubAck(a) => {
            a.properties.reason_string = rs;
            a.properties.user_properties = up;
        }
        Packet::ConnAck(a) => {
            a.properties.reason_string = rs;
            a.properties.user_properties = up;
        }
        Packet::Disconnect(d) => {
            d.properties.reason_string = rs;
            d.properties.user_properties = up;
        }
        Packet::Auth(a) => {
            a.properties.reason_string = rs;
            a.properties.user_properties = up;
        }
        _ => {}
    }
}

/// The message flows of a connection: its session and the bookkeeping of QoS 1/2.
#[derive(Debug)]
pub(crate) struct Flows {
    pub(crate) session: SessionState,
    pub(crate) acks: VecDeque<OwedAck>,
    pub(crate) ids: PacketIdAllocator,
    /// Incoming QoS 2 identifiers held from an earlier connection that the peer has not
    /// repeated on this one (sorted): they take none of this connection's receive quota,
    /// which starts again with each connection ([MQTT-4.9.0-1] 4.9: "re-initialized with
    /// each new Network Connection").
    pub(crate) carried: Vec<u16>,
}

/// What a connection without flows reads.
static NO_FLOWS: Flows = Flows {
    session: SessionState {
        inflight: VecDeque::new(),
        queue: VecDeque::new(),
        incoming_qos2: Vec::new(),
        pending_acks: Vec::new(),
    },
    acks: VecDeque::new(),
    ids: PacketIdAllocator::EMPTY,
    carried: Vec::new(),
};

impl Flows {
    fn holds_nothing(&self) -> bool {
        self.session.is_empty()
            && self.session.pending_acks.is_empty()
            && self.acks.is_empty()
            && self.ids.in_use() == 0
    }
}

/// What `poll_transmit` picked, so that state changes only once the bytes are written.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Next {
    Control,
    Ack,
    Inflight(usize),
    Queued,
    FinalDisconnect,
}

impl Conn {
    pub(crate) fn new(
        role: Role,
        version: ProtocolVersion,
        session: SessionState,
        local: Limits,
    ) -> Self {
        let max_inflight = local.receive_maximum;
        let mut conn = Self {
            role,
            version,
            phase: Phase::Idle,
            final_disconnect: None,
            timers: Default::default(),
            keep_alive_secs: 0,
            ping_outstanding: false,
            local,
            peer: Limits::default(),
            max_inflight,
            max_queued: 1024,
            manual_acks: false,
            lenient_receive_maximum: false,
            problem_info: true,
            flows: None,
            next_packet_id: 1,
            pinged: false,
            ping: None,
            control: BoxedDeque::default(),
            events: BoxedDeque::default(),
            max_alias_out: 0,
            rare: None,
            hold_non_auth: false,
        };
        conn.set_session(session);
        conn
    }

    /// The flows, or empty ones.
    pub(crate) fn flows(&self) -> &Flows {
        self.flows.as_deref().unwrap_or(&NO_FLOWS)
    }

    /// The flows, made now if there are none yet.
    pub(crate) fn flows_mut(&mut self) -> &mut Flows {
        let capacity = usize::from(self.max_inflight) + 8;
        let next = self.next_packet_id;
        self.flows.get_or_insert_with(|| {
            let mut ids = PacketIdAllocator::with_capacity(capacity);
            ids.resume_at(next);
            Box::new(Flows {
                session: SessionState::default(),
                acks: VecDeque::new(),
                ids,
                carried: Vec::new(),
            })
        })
    }

    /// The flows if there are any: for changes that have nothing to do without them.
    pub(crate) fn flows_if_any(&mut self) -> Option<&mut Flows> {
        self.flows.as_deref_mut()
    }

    /// The session, or an empty one.
    pub(crate) fn session(&self) -> &SessionState {
        &self.flows().session
    }

    /// Installs `session` with a fresh packet identifier allocator that knows the
    /// identifiers it holds. Owed acks stay.
    pub(crate) fn set_session(&mut self, session: SessionState) {
        let acks = self.flows.take().map(|f| f.acks).unwrap_or_default();
        self.next_packet_id = 1;
        let ids = session.allocator(usize::from(self.max_inflight) + 8);
        let carried = session.incoming_qos2.clone();
        let flows = Flows {
            session,
            acks,
            ids,
            carried,
        };
        if !flows.holds_nothing() {
            self.flows = Some(Box::new(flows));
        }
    }

    /// Takes the session out, leaving an empty one.
    pub(crate) fn take_session(&mut self) -> SessionState {
        self.flows_if_any()
            .map(|f| {
                f.carried.clear();
                core::mem::take(&mut f.session)
            })
            .unwrap_or_default()
    }

    /// Gives back the memory of whatever holds nothing: the queues keep the capacity they
    /// grew to (an `Event` is 112 bytes, a queued message 120), and a connection that once
    /// was busy may idle for hours.
    ///
    /// Only called once a PINGREQ showed the client idle, never as queues merely empty:
    /// a busy connection empties them after every message, and must not allocate them
    /// again each time (the steady state allocates nothing). A client that receives but
    /// never sends still pings every keep alive period, so this costs it at most a few
    /// allocations per period.
    pub(crate) fn release_idle_memory(&mut self) {
        self.pinged = false;
        if let Some(f) = &mut self.flows {
            if f.holds_nothing() {
                self.next_packet_id = f.ids.next_to_try();
                self.flows = None;
            } else {
                shrink_if_empty(&mut f.session.inflight);
                shrink_if_empty(&mut f.session.queue);
                shrink_if_empty(&mut f.acks);
                if f.session.incoming_qos2.is_empty() {
                    f.session.incoming_qos2 = Vec::new();
                }
                if f.session.pending_acks.is_empty() {
                    f.session.pending_acks = Vec::new();
                }
            }
        }
        self.events.release_if_empty();
        self.control.release_if_empty();
    }

    // ---- Control packets ------------------------------------------------------------------

    pub(crate) fn push_control(&mut self, c: Control) {
        if self.ping.is_none() && self.control.is_empty() {
            match c {
                Control::PingReq => return self.ping = Some(Ping::Req),
                Control::PingResp => return self.ping = Some(Ping::Resp),
                _ => {}
            }
        }
        self.control.push_back(c);
    }

    pub(crate) fn control_front(&self) -> Option<&Control> {
        match self.ping {
            Some(p) => Some(p.control()),
            None => self.control.front(),
        }
    }

    pub(crate) fn pop_control(&mut self) -> Option<Control> {
        if let Some(p) = self.ping.take() {
            return Some(p.control().clone());
        }
        let c = self.control.pop_front();
        if !matches!(c, Some(Control::PubComp(..))) {
            // Only PUBCOMP comes and goes with steady traffic (QoS 2); the rest (SUBACK,
            // UNSUBACK, CONNECT, AUTH, requests) is rare, so the queue's memory goes back
            // at once instead of waiting for the next PINGREQ.
            self.control.release_if_empty();
        }
        c
    }

    /// The next event for the application. A rare event (anything but a message or an
    /// acknowledgement, which come and go with steady traffic) gives the queue's memory back
    /// once it is empty: a push client that subscribed and went idle would otherwise keep it
    /// until its next PINGREQ, and freed memory stays resident in the allocator, so the
    /// peak is what an idle connection costs.
    pub(crate) fn pop_event(&mut self) -> Option<Event> {
        let e = self.events.pop_front()?;
        if !matches!(
            e,
            Event::Message { .. }
                | Event::Acknowledged { .. }
                | Event::Released { .. }
                | Event::Finished { .. }
                | Event::IncomingReleased { .. }
        ) {
            self.events.release_if_empty();
        }
        Some(e)
    }

    /// Puts the first role packet (the client's CONNECT or AUTH) at the head of the control
    /// queue, ahead of a ping or requests queued before it; false when there is none.
    pub(crate) fn role_control_first(&mut self) -> bool {
        if self.ping.is_some() {
            // A lone ping waits in its slot; a role packet can only be behind it in the queue.
            if !self
                .control
                .move_first_to_front(|c| matches!(c, Control::Role(_)))
            {
                return false;
            }
            let ping = self.ping.take().expect("checked").control().clone();
            let role = self.control.pop_front().expect("moved");
            self.control.push_front(ping);
            self.control.push_front(role);
            return true;
        }
        self.control
            .move_first_to_front(|c| matches!(c, Control::Role(_)))
    }

    pub(crate) fn control_is_empty(&self) -> bool {
        self.ping.is_none() && self.control.is_empty()
    }

    pub(crate) fn control_contains(&self, c: &Control) -> bool {
        self.control_front() == Some(c) || self.control.contains(c)
    }

    pub(crate) fn clear_control(&mut self) {
        self.ping = None;
        self.control.clear();
    }

    /// Keeps the Reason String of the peer's DISCONNECT or refusing CONNACK for the
    /// `Disconnected` event.
    pub(crate) fn set_peer_reason_string(&mut self, s: Option<&str>) {
        match (s, &mut self.rare) {
            (Some(s), rare) => {
                rare.get_or_insert_with(Box::default).peer_reason_string =
                    Some(Utf8Bytes::copy_of(s))
            }
            (None, Some(r)) => r.peer_reason_string = None,
            (None, None) => {}
        }
    }

    pub(crate) fn decode_options(&self) -> DecodeOptions {
        DecodeOptions::new(self.version)
            .max_packet_size(self.local.maximum_packet_size)
            .sender(match self.role {
                Role::Client => Sender::Server,
                Role::Server => Sender::Client,
            })
    }

    /// The terminal error, if the connection has failed or closed. After a clean close a
    /// command is refused as out of place, not with the close as an error.
    pub(crate) fn check(&self) -> Result<(), Error> {
        match self.error() {
            Some(_) if self.closed_cleanly() => {
                Err(Error::InvalidState("the connection is closed"))
            }
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// Whether the connection ended cleanly (see `Rare::clean_close`).
    pub(crate) fn closed_cleanly(&self) -> bool {
        self.rare.as_ref().is_some_and(|r| r.clean_close)
    }

    /// The error `poll_transmit` ends with once everything is out: none after a clean
    /// close, which `Event::Disconnected` and `is_closed` report instead.
    pub(crate) fn transmit_error(&self) -> Option<Error> {
        self.error().filter(|_| !self.closed_cleanly())
    }

    /// Ends the connection cleanly with `reason`: as [`Conn::fail`] does (a DISCONNECT
    /// where one goes, the `Disconnected` event), but it is no error.
    pub(crate) fn close_cleanly(&mut self, reason: ReasonCode) {
        if self.error().is_some() {
            return;
        }
        self.fail(Error::Disconnected(reason));
        self.mark_clean();
    }

    /// Marks the error set just now (a `Disconnected`) as a clean close.
    pub(crate) fn mark_clean(&mut self) {
        self.rare.get_or_insert_with(Box::default).clean_close = true;
    }

    /// The sticky error, if any.
    pub(crate) fn error(&self) -> Option<Error> {
        self.rare.as_ref()?.error
    }

    /// Sets or clears the sticky error.
    pub(crate) fn set_error(&mut self, e: Option<Error>) {
        match (e, &mut self.rare) {
            (Some(e), rare) => {
                let r = rare.get_or_insert_with(Box::default);
                r.error = Some(e);
                r.clean_close = false;
            }
            (None, Some(r)) => {
                r.error = None;
                r.clean_close = false;
            }
            (None, None) => {}
        }
    }

    /// The keep alive in effect; zero when off.
    pub(crate) fn keep_alive(&self) -> Duration {
        Duration::from_secs(u64::from(self.keep_alive_secs))
    }

    /// Records a failure: queues a DISCONNECT where the protocol has one, and makes `e`
    /// sticky. Returns `e` for the caller to propagate.
    pub(crate) fn fail(&mut self, e: Error) -> Error {
        if let Some(first) = self.error() {
            return first;
        }
        self.set_error(Some(e));
        // The peer ended it (its DISCONNECT set the phase to Closed) or the transport did.
        let by_peer = self.phase == Phase::Closed || e == Error::ConnectionClosed;
        // A server sends DISCONNECT only after a successful CONNACK ([MQTT-3.14.0-1]), and
        // only 5.0 servers send it at all; a client sends it in any version once connected.
        let can_send =
            self.phase == Phase::Connected && (self.version.is_v5() || self.role == Role::Client);
        if can_send && !by_peer {
            // Errors whose code DISCONNECT cannot carry (a connect timeout, a code the
            // application passed) go out as Unspecified error.
            let code = e.reason_code();
            self.final_disconnect = Some(if code.is_valid_for(PacketType::Disconnect) {
                code
            } else {
                ReasonCode::UnspecifiedError
            });
            self.phase = Phase::Closing;
        } else {
            self.phase = Phase::Closed;
        }
        self.timers.clear();
        self.events.push_back(Event::Disconnected {
            reason: e.reason_code(),
            by_peer,
            reason_string: self.rare.as_mut().and_then(|r| r.peer_reason_string.take()),
        });
        e
    }

    /// The peer's DISCONNECT: the connection is over ([MQTT-3.14.4-1], nothing follows
    /// it). With an error code (0x80 and above) it is `Err(Disconnected)`; with Normal
    /// disconnection (or a client's Disconnect with Will Message) it ends cleanly: only
    /// the `Disconnected` event reports it. `Ok(false)` stops reading.
    pub(crate) fn on_peer_disconnect(&mut self, d: &Disconnect<'_>) -> Result<bool, Error> {
        self.phase = Phase::Closed;
        self.set_peer_reason_string(d.properties.reason_string);
        if d.reason_code.is_error() {
            return Err(Error::Disconnected(d.reason_code));
        }
        self.close_cleanly(d.reason_code);
        Ok(false)
    }

    /// Splits complete frames off `buf` and hands each to `on_packet`; stops early when
    /// `on_packet` says so (the server waits for the application after CONNECT).
    pub(crate) fn read_frames(
        &mut self,
        now: Instant,
        buf: &mut BytesMut,
        mut on_packet: impl FnMut(&mut Self, Instant, &Bytes, Packet<'_>) -> Result<bool, Error>,
    ) -> Result<(), Error> {
        if self.closed_cleanly() {
            // [MQTT-3.14.4-1] nothing follows a DISCONNECT: what does is not read.
            return Ok(());
        }
        self.check()?;
        // Packets handled by this call: the first is always read, so every call with a
        // complete packet makes progress.
        let mut read = 0usize;
        loop {
            if matches!(self.phase, Phase::Closing | Phase::Closed) {
                return Ok(());
            }
            let opts = self.decode_options();
            let header = match decode_fixed_header(buf, &opts) {
                Ok(Status::Complete { packet: h, .. }) => {
                    if self.hold_non_auth && h.packet_type != PacketType::Auth {
                        return Ok(());
                    }
                    // QoS is bits 1-2 of a PUBLISH's flags.
                    let acked = h.packet_type == PacketType::Publish && h.flags & 0b0110 != 0;
                    if acked && read > 0 && self.pause_before_publish() {
                        return Ok(());
                    }
                    h
                }
                Ok(Status::Incomplete { .. }) => return Ok(()),
                Err(e) => return Err(self.fail(e.into())),
            };
            let size = header.packet_len();
            if buf.len() < size {
                // Only the missing bytes are reserved, never what a peer merely announces
                // beyond our maximum packet size, which the header check refused.
                buf.reserve(size - buf.len());
                return Ok(());
            }
            let frame = buf.split_to(size).freeze();
            // The header is already parsed: decode only the body.
            let packet = match mqtt_codec::decode_body(&header, &frame[header.header_len..], &opts)
            {
                Ok(packet) => packet,
                Err(e) => return Err(self.fail(e.into())),
            };
            self.on_receive(now);
            read += 1;
            match on_packet(self, now, &frame, packet) {
                Ok(true) => {}
                Ok(false) => return Ok(()),
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// Any packet proves the peer alive.
    fn on_receive(&mut self, now: Instant) {
        match self.role {
            Role::Client => {
                self.timers.stop(Timer::PingResp);
                self.ping_outstanding = false;
            }
            Role::Server => {
                // [MQTT-3.1.2-22] close after 1.5 times the keep alive without a packet.
                if self.keep_alive_secs != 0 {
                    let grace = Duration::from_millis(self.keep_alive().as_millis() * 3 / 2);
                    self.timers.set(Timer::KeepAlive, now + grace);
                }
            }
        }
    }

    /// A server that has not read what the peer may have sent restarts its keep alive
    /// clock, as if a packet had arrived (only once connected: the CONNECT deadline stays).
    pub(crate) fn restart_keep_alive(&mut self, now: Instant) {
        if self.role == Role::Server && self.phase == Phase::Connected && self.error().is_none() {
            self.on_receive(now);
        }
    }

    /// Called after anything is sent.
    fn on_transmit(&mut self, now: Instant) {
        // [MQTT-3.1.2-20] the client pings when it has sent nothing for the keep alive.
        if self.role == Role::Client && self.keep_alive_secs != 0 && self.phase == Phase::Connected
        {
            self.timers.set(Timer::KeepAlive, now + self.keep_alive());
        }
    }

    // ---- Incoming PUBLISH and acknowledgements -------------------------------------------

    /// Handles an incoming PUBLISH: resolves its topic alias, enforces our Receive Maximum,
    /// suppresses QoS 2 duplicates, queues the acknowledgement and the event.
    pub(crate) fn on_publish(
        &mut self,
        frame: &Bytes,
        p: mqtt_codec::Publish<'_>,
    ) -> Result<(), Error> {
        let topic = self.resolve_alias(frame, &p)?;
        let qos = p.qos();
        match p.qos_pid {
            QosPid::AtMostOnce => {}
            QosPid::AtLeastOnce(id) => {
                // Beyond the quota, leniently: accepted all the same (mosquitto does).
                self.check_receive_maximum()?;
                // [MQTT-4.3.2-4] PUBACK with the PUBLISH's id; [MQTT-4.3.2-5] after it,
                // the same id is a new message, so QoS 1 keeps no per-id state.
                let ready = !self.manual_acks;
                self.flows_mut().acks.push_back(OwedAck {
                    id,
                    qos,
                    ready,
                    code: ReasonCode::Success,
                });
            }
            QosPid::ExactlyOnce(id) => {
                let known = self.flows().session.incoming_qos2.contains(&id.get());
                if !known && self.check_receive_maximum()? {
                    // [MQTT-3.3.4-9] beyond the quota, leniently: PUBREC 0x97 (Quota
                    // exceeded), an error PUBREC, so nothing is stored nor delivered and
                    // the id is free again ([MQTT-4.3.3-9]); the peer may publish it anew.
                    self.flows_mut().acks.push_back(OwedAck {
                        id,
                        qos,
                        ready: true,
                        code: ReasonCode::QuotaExceeded,
                    });
                    return Ok(());
                }
                let flows = self.flows_mut();
                // Repeated on this connection: it counts against this one's quota now.
                uncarry(&mut flows.carried, id);
                if !flows.session.receive_qos2(id) {
                    // [MQTT-4.3.3-10] a repeat before PUBREL: PUBREC again, deliver nothing.
                    if !flows.acks.iter().any(|a| a.id == id) {
                        flows.acks.push_back(OwedAck {
                            id,
                            qos,
                            ready: true,
                            code: ReasonCode::Success,
                        });
                    }
                    return Ok(());
                }
                let ready = !self.manual_acks;
                self.flows_mut().acks.push_back(OwedAck {
                    id,
                    qos,
                    ready,
                    code: ReasonCode::Success,
                });
            }
        }
        let message = Message::from_publish(frame, &p, topic);
        self.events.push_back(Event::Message {
            packet_id: p.packet_id(),
            dup: p.dup,
            message,
        });
        Ok(())
    }

    /// QoS 1/2 messages from the peer that count against our Receive Maximum
    /// ([MQTT-3.3.4-9]: unacknowledged, that is QoS 1 without PUBACK and QoS 2 without
    /// PUBCOMP). Leniently, a QoS 1 whose PUBACK is queued counts as acknowledged: a read
    /// holding more PUBLISH than the quota is then fine as long as the application keeps
    /// up. Strictly, it counts until sent, as the peer cannot have seen it.
    fn receive_quota_used(&self) -> usize {
        let flows = self.flows();
        let lenient = self.lenient_receive_maximum;
        flows
            .acks
            .iter()
            .filter(|a| a.qos == QoS::AtLeastOnce && !(lenient && a.ready))
            .count()
            // `carried` is a subset of `incoming_qos2`; saturating all the same, so that no
            // path that forgets to update it can underflow.
            + flows
                .session
                .incoming_qos2
                .len()
                .saturating_sub(flows.carried.len())
    }

    /// Whether a QoS 1/2 PUBLISH arriving now is beyond our Receive Maximum: `Err` when
    /// that is a Protocol Error (strict), `Ok(true)` when the server takes it leniently,
    /// `Ok(false)` when a lenient client takes it as any other.
    fn check_receive_maximum(&self) -> Result<bool, Error> {
        // Before 5.0 the peer was never told a Receive Maximum, so it may send any number
        // (at most 65,535 ids, which bounds what is kept here).
        if !self.version.is_v5() {
            return Ok(false);
        }
        if self.receive_quota_used() < usize::from(self.local.receive_maximum) {
            return Ok(false);
        }
        if self.lenient_receive_maximum {
            // A client takes it in full: a broker's overflow is the broker's (mosquitto
            // 2.0.11 sends a resumed session's queue past it), and refusing a QoS 2
            // message with 0x97 would make the broker drop it.
            return Ok(self.role == Role::Server);
        }
        Err(Violation::ReceiveMaximumExceeded.into())
    }

    /// Whether reading stops before the next QoS 1/2 PUBLISH, leaving it in the buffer: a
    /// server with manual acks whose quota is used up by messages the application has not
    /// acknowledged yet. Once it acknowledges, the next `handle_input` reads on within the
    /// quota; a peer that ignores our Receive Maximum (MQTT.js 5 sends a whole burst) is
    /// so paced by the application instead of overflowing.
    fn pause_before_publish(&self) -> bool {
        self.role == Role::Server
            && self.manual_acks
            && self.version.is_v5()
            && self
                .flows()
                .acks
                .iter()
                .any(|a| a.qos == QoS::AtLeastOnce && !a.ready)
            && self.receive_quota_used() >= usize::from(self.local.receive_maximum)
    }

    fn resolve_alias(
        &mut self,
        frame: &Bytes,
        p: &mqtt_codec::Publish<'_>,
    ) -> Result<TopicBuf, Error> {
        // The decoder has checked a non-empty topic and hands it on as a `TopicName`; the
        // message carries that check to routing and to every subscriber's PUBLISH.
        let Some(alias) = p.properties.topic_alias else {
            // Empty without an alias was refused by the decoder ([MQTT-3.3.2-1]).
            let name = p
                .topic
                .name()
                .ok_or(Error::Codec(mqtt_codec::Error::InvalidTopicName(
                    mqtt_topic::Error::Empty,
                )))?;
            return Ok(TopicBuf::slice_ref(frame, name));
        };
        let a = alias.get();
        // [MQTT-3.3.2-10] [MQTT-3.3.2-12] accept 1..=the maximum we announced, nothing above.
        if a > self.local.topic_alias_maximum {
            return Err(Violation::TopicAliasOutOfRange(a).into());
        }
        let slot = usize::from(a - 1);
        let max = usize::from(self.local.topic_alias_maximum);
        let alias_in = &mut self.rare.get_or_insert_with(Box::default).alias_in;
        if alias_in.len() < max {
            alias_in.resize(max, None);
        }
        match p.topic.name() {
            None => alias_in[slot]
                .clone()
                .ok_or(Error::Protocol(Violation::UnknownTopicAlias(a))),
            Some(topic) => {
                // The mapping outlives this frame: keep a copy (a view would pin the
                // receive buffer), made only when the mapping changes.
                if alias_in[slot].as_ref().map(TopicBuf::as_topic_name) != Some(topic) {
                    alias_in[slot] = Some(TopicBuf::from(topic));
                }
                Ok(TopicBuf::slice_ref(frame, topic))
            }
        }
    }

    /// The application acknowledges an incoming message (manual acks), with the reason
    /// code the PUBACK/PUBREC carries (5.0; always Success before).
    pub(crate) fn ack(&mut self, id: PacketId, code: ReasonCode) -> bool {
        let v5 = self.version.is_v5();
        let acks = self.flows_if_any().map(|f| &mut f.acks);
        match acks.and_then(|acks| acks.iter_mut().find(|a| a.id == id && !a.ready)) {
            Some(a) => {
                a.ready = true;
                if v5 {
                    a.code = code;
                }
                true
            }
            None => false,
        }
    }

    /// PUBREL: the QoS 2 message is released; answer PUBCOMP ([MQTT-4.3.3-11]).
    pub(crate) fn on_pubrel(&mut self, ack: PubAck<'_>) {
        let known = self.flows_if_any().is_some_and(|f| {
            uncarry(&mut f.carried, ack.packet_id);
            f.session.release_qos2(ack.packet_id)
        });
        if known && self.role == Role::Server {
            // A durable broker forgets the stored identifier; others ignore the event.
            self.events.push_back(Event::IncomingReleased {
                packet_id: ack.packet_id,
            });
        }
        // 3.1.1 has no reason codes: PUBCOMP is the same either way.
        let code = if known || !self.version.is_v5() {
            ReasonCode::Success
        } else {
            // Unknown id (it may have completed before a reconnect): 5.0 says so.
            ReasonCode::PacketIdentifierNotFound
        };
        self.push_control(Control::PubComp(ack.packet_id, code));
    }

    // ---- Outgoing PUBLISH ----------------------------------------------------------------

    /// Queues a message. QoS 1/2 ones take their packet identifier now
    /// ([MQTT-2.2.1-3] [MQTT-2.2.1-4] [MQTT-4.3.2-1] [MQTT-4.3.3-1]: one not in use), and
    /// go out when the send quota allows.
    pub(crate) fn enqueue(
        &mut self,
        now: Instant,
        message: Message,
        subscription_ids: heapless::Vec<SubscriptionId, 4>,
    ) -> Result<Option<PacketId>, Error> {
        self.enqueue_with_ids(now, message, subscription_ids.iter().copied().collect(), 0)
    }

    /// [`Conn::enqueue`] with any number of subscription identifiers (a server's delivery).
    pub(crate) fn enqueue_with_ids(
        &mut self,
        now: Instant,
        message: Message,
        subscription_ids: crate::SubscriptionIdList,
        tag: u64,
    ) -> Result<Option<PacketId>, Error> {
        if self.flows().session.queue.len() >= self.max_queued as usize {
            return Err(Error::QueueFull);
        }
        // Refuse now what could never be encoded (a wildcard in the Response Topic, U+0000
        // in a property, a field over 65,535 bytes), rather than wedge the queue later.
        let probe_id = qos_pid(message.qos, PacketId::new(1).expect("1 is not 0"));
        let probe = message.to_publish(
            probe_id,
            false,
            message.codec_topic(),
            None,
            message.properties().message_expiry_interval,
            &subscription_ids,
        );
        Packet::Publish(self.for_version(probe)).encoded_len(self.version)?;
        let packet_id = if message.qos == QoS::AtMostOnce {
            None
        } else {
            Some(
                self.flows_mut()
                    .ids
                    .allocate()
                    .ok_or(Error::PacketIdsExhausted)?,
            )
        };
        self.flows_mut().session.queue.push_back(Outgoing {
            message,
            queued_at: now,
            subscription_ids,
            packet_id,
            tag,
        });
        Ok(packet_id)
    }

    fn inflight_index(&self, id: PacketId) -> Option<usize> {
        self.flows()
            .session
            .inflight
            .iter()
            .position(|f| f.packet_id == id)
    }

    /// PUBACK (QoS 1) or PUBCOMP (QoS 2) or a failed PUBREC: the message is done.
    fn complete(&mut self, idx: usize, ack: &PubAck<'_>) {
        let flows = self.flows_mut();
        if let Some(f) = flows.session.inflight.remove(idx) {
            flows.ids.release(f.packet_id);
            if f.outgoing.tag != 0 {
                self.events.push_back(Event::Finished {
                    tag: f.outgoing.tag,
                });
            }
            self.events.push_back(Event::Acknowledged {
                packet_id: f.packet_id,
                reason: ack.reason_code,
                // 5.0 diagnostics; copied, so the event does not hold the receive buffer.
                reason_string: ack.properties.reason_string.map(Utf8Bytes::copy_of),
            });
        }
    }

    pub(crate) fn on_puback(&mut self, ack: PubAck<'_>) {
        // [MQTT-4.3.2-3] the message was held until this PUBACK; an id we do not hold is
        // ignored (it completed before a reconnect, or the peer is confused).
        if let Some(i) = self.inflight_index(ack.packet_id) {
            let f = &self.flows().session.inflight[i];
            if f.stage == Stage::Published && f.outgoing.message.qos == QoS::AtLeastOnce {
                self.complete(i, &ack);
            }
        }
    }

    pub(crate) fn on_pubrec(&mut self, ack: PubAck<'_>) {
        let Some(i) = self.inflight_index(ack.packet_id) else {
            // 5.0: answer an unknown PUBREC with PUBREL 0x92 so the peer can finish.
            return;
        };
        let f = &mut self.flows_mut().session.inflight[i];
        if f.outgoing.message.qos != QoS::ExactlyOnce {
            return;
        }
        if ack.reason_code.is_error() {
            // [MQTT-4.4.0-2] a failed PUBREC acknowledges the message: no PUBREL, no resend.
            self.complete(i, &ack);
            return;
        }
        // [MQTT-4.3.3-4] PUBREL with the same id; [MQTT-4.3.3-6] the PUBLISH is not sent
        // again after this.
        f.stage = Stage::Released;
        f.sent = false;
        if f.outgoing.tag != 0 {
            let (tag, packet_id) = (f.outgoing.tag, f.packet_id);
            self.events.push_back(Event::Released { tag, packet_id });
        }
    }

    pub(crate) fn on_pubcomp(&mut self, mut ack: PubAck<'_>) {
        if let Some(i) = self.inflight_index(ack.packet_id) {
            if self.flows().session.inflight[i].stage == Stage::Released {
                // The receiver took the message with its PUBREC Success ([MQTT-4.3.3]);
                // PUBCOMP 0x92 only says it no longer holds the identifier (it completed
                // before a reconnect, or restarted): delivered all the same, no failure.
                if ack.reason_code == ReasonCode::PacketIdentifierNotFound {
                    ack.reason_code = ReasonCode::Success;
                }
                self.complete(i, &ack);
            }
        }
    }

    /// Sends nothing more on this connection and forgets per-connection state, keeping the
    /// session: unacknowledged messages are re-sent after a resumed reconnect.
    pub(crate) fn reset_connection(&mut self) {
        if let Some(flows) = self.flows_if_any() {
            for f in &mut flows.session.inflight {
                f.sent = false;
            }
            // QoS 1 acks not sent yet: the peer re-sends those PUBLISH, so delivering them
            // again is QoS 1's at-least-once. QoS 2 ids stay in the session.
            flows.acks.clear();
            flows.carried.clone_from(&flows.session.incoming_qos2);
        }
        self.clear_control();
        // [MQTT-3.3.2-7] topic aliases belong to one connection.
        if let Some(r) = &mut self.rare {
            r.alias_in.clear();
            r.alias_out.clear();
            r.diagnostics = Vec::new();
        }
        self.timers.clear();
        self.ping_outstanding = false;
    }

    // ---- Transmit ------------------------------------------------------------------------

    /// Whether a PUBLISH in flight may be sent again: fewer than the quota of them are
    /// outstanding on this connection (sent, or past PUBREC). Counted only when more are
    /// in flight than the quota, which only a resumed session can be.
    fn resend_quota_left(&self) -> bool {
        let limit = usize::from(self.peer.receive_maximum.min(self.max_inflight));
        let inflight = &self.flows().session.inflight;
        inflight.len() <= limit
            || inflight
                .iter()
                .filter(|f| f.sent || f.stage == Stage::Released)
                .count()
                < limit
    }

    fn send_quota_left(&self) -> bool {
        let limit = self.peer.receive_maximum.min(self.max_inflight);
        // [MQTT-4.9.0-2] each QoS>0 PUBLISH in flight takes one unit of the quota.
        self.flows().session.inflight.len() < usize::from(limit)
    }

    /// Picks the next packet to send, in the order the protocol requires: control packets
    /// and acknowledgements are never held back by the send quota ([MQTT-3.3.4-8]); QoS 1/2
    /// messages in flight go before new ones, in their original order ([MQTT-4.6.0-1]).
    pub(crate) fn pick(&mut self, now: Instant) -> Option<Next> {
        if self.phase == Phase::Closing {
            return self.final_disconnect.map(|_| Next::FinalDisconnect);
        }
        // [MQTT-4.8.0-1] a failed or closed connection sends nothing more, not even what
        // was queued before the failure (a CONNECT not yet out, a PUBCOMP, a PINGREQ).
        if self.phase == Phase::Closed {
            return None;
        }
        if !self.control_is_empty() {
            return Some(Next::Control);
        }
        if self.phase != Phase::Connected {
            return None;
        }
        let flows = self.flows();
        if flows.acks.front().is_some_and(|a| a.ready) {
            return Some(Next::Ack);
        }
        if let Some(i) = flows.session.inflight.iter().position(|f| !f.sent) {
            // PUBREL takes no quota; a PUBLISH sent again does ([MQTT-4.9.0-2]): a
            // resumed session may hold more in flight than the peer now takes.
            if flows.session.inflight[i].stage == Stage::Released || self.resend_quota_left() {
                return Some(Next::Inflight(i));
            }
        }
        // Drop expired queued messages before they take a packet id.
        while let Some(front) = self.flows().session.queue.front() {
            if front.remaining_expiry(now).is_err() {
                let flows = self.flows_mut();
                if let Some(o) = flows.session.queue.pop_front() {
                    if let Some(id) = o.packet_id {
                        flows.ids.release(id);
                    }
                    if o.tag != 0 {
                        self.events.push_back(Event::Finished { tag: o.tag });
                    }
                }
                continue;
            }
            if front.needs_ack() && !self.send_quota_left() {
                return None;
            }
            return Some(Next::Queued);
        }
        None
    }

    /// The next outgoing topic and alias for `topic` ([MQTT-3.2.2-17] [MQTT-3.3.2-9]
    /// [MQTT-3.3.2-11]: never above the peer's maximum; [MQTT-3.2.2-18] none when it is 0).
    pub(crate) fn alias_for<'a>(
        &self,
        topic: &'a TopicBuf,
    ) -> (mqtt_codec::Topic<'a>, Option<NonZeroU16>, bool) {
        let name = || topic.as_topic_name().into();
        let limit = self.peer.topic_alias_maximum.min(self.max_alias_out);
        if !self.version.is_v5() || limit == 0 {
            return (name(), None, false);
        }
        let alias_out = self.rare.as_ref().map_or(&[][..], |r| &r.alias_out[..]);
        if let Some(i) = alias_out.iter().position(|t| t == topic) {
            return (
                mqtt_codec::Topic::EMPTY,
                NonZeroU16::new(i as u16 + 1),
                false,
            );
        }
        if alias_out.len() < usize::from(limit) {
            // A new mapping: send the name with the alias once.
            return (name(), NonZeroU16::new(alias_out.len() as u16 + 1), true);
        }
        (name(), None, false)
    }

    /// A PUBLISH as this connection's level has it: before 5.0 a message's properties
    /// (kept for 5.0 subscribers, or set by the application) are dropped, since 3.1/3.1.1
    /// PUBLISH has none and encoding them would fail on every attempt.
    pub(crate) fn for_version<'a>(
        &self,
        mut p: mqtt_codec::Publish<'a>,
    ) -> mqtt_codec::Publish<'a> {
        if !self.version.is_v5() {
            p.properties = Default::default();
        }
        p
    }

    /// Encodes `packet` if it fits the peer's maximum size.
    pub(crate) fn encode(
        &self,
        packet: &Packet<'_>,
        out: &mut [u8],
    ) -> Result<Result<usize, usize>, Error> {
        let version = self.version;
        let len = packet.encoded_len(version)?;
        if len > self.peer.maximum_packet_size as usize {
            return Ok(Err(len));
        }
        packet.encode(version, out).map(Ok).map_err(Error::from)
    }

    /// Attaches `d` to the next packet of type `t` with identifier `id` (0 for CONNACK and
    /// DISCONNECT), replacing what was attached before. Checked now to fit a packet of
    /// that type, so that it cannot fail one later.
    pub(crate) fn attach_diagnostics(
        &mut self,
        t: PacketType,
        id: u16,
        d: Diagnostics,
    ) -> Result<(), Error> {
        let mut probe = match t {
            PacketType::ConnAck => Packet::ConnAck(mqtt_codec::ConnAck {
                session_present: false,
                reason_code: ReasonCode::Success,
                properties: Default::default(),
            }),
            PacketType::Disconnect => Packet::Disconnect(Disconnect::new(ReasonCode::Success)),
            PacketType::Auth => Packet::Auth(Default::default()),
            PacketType::SubAck => Packet::SubAck(mqtt_codec::SubAck::new(
                ONE,
                mqtt_codec::List::new(&[ReasonCode::Success]),
            )),
            PacketType::UnsubAck => Packet::UnsubAck(mqtt_codec::UnsubAck::new(
                ONE,
                mqtt_codec::List::new(&[ReasonCode::Success]),
            )),
            PacketType::PubAck => Packet::PubAck(PubAck::new(ONE)),
            PacketType::PubRec => Packet::PubRec(PubAck::new(ONE)),
            PacketType::PubRel => Packet::PubRel(PubAck::new(ONE)),
            PacketType::PubComp => Packet::PubComp(PubAck::new(ONE)),
            _ => return Err(Error::InvalidState("no diagnostics on this packet type")),
        };
        set_diagnostics(&mut probe, d.reason_string(), d.user_properties());
        probe.encoded_len(ProtocolVersion::V5)?;
        let list = &mut self.rare.get_or_insert_with(Box::default).diagnostics;
        list.retain(|(pt, pid, _)| !(*pt == t && *pid == id));
        if list.len() >= MAX_PENDING_DIAGNOSTICS {
            return Err(Error::QueueFull);
        }
        list.push((t, id, d));
        Ok(())
    }

    /// The diagnostics attached to the packet of type `t` and identifier `id`.
    pub(crate) fn diagnostics_for(&self, t: PacketType, id: u16) -> Option<&Diagnostics> {
        self.rare
            .as_ref()?
            .diagnostics
            .iter()
            .find(|(pt, pid, _)| *pt == t && *pid == id)
            .map(|(_, _, d)| d)
    }

    /// Forgets the diagnostics of a packet that went out (or never will).
    pub(crate) fn drop_diagnostics(&mut self, t: PacketType, id: u16) {
        if let Some(r) = &mut self.rare {
            if !r.diagnostics.is_empty() {
                r.diagnostics
                    .retain(|(pt, pid, _)| !(*pt == t && *pid == id));
            }
        }
    }

    /// Encodes `packet` with diagnostics `d`, as far as they may go: only 5.0 has them;
    /// with Request Problem Information off, only CONNACK and DISCONNECT carry them
    /// ([MQTT-3.1.2-29]); and only as far as they fit the peer's Maximum Packet Size:
    /// whole, else without the User Properties, else without the Reason String too.
    /// [MQTT-3.2.2-19] [MQTT-3.2.2-20] (CONNACK), [MQTT-3.4.2-2] [MQTT-3.4.2-3] (PUBACK),
    /// [MQTT-3.5.2-2] [MQTT-3.5.2-3] (PUBREC), [MQTT-3.6.2-2] [MQTT-3.6.2-3] (PUBREL),
    /// [MQTT-3.7.2-2] [MQTT-3.7.2-3] (PUBCOMP), [MQTT-3.9.2-1] [MQTT-3.9.2-2] (SUBACK),
    /// [MQTT-3.11.2-1] [MQTT-3.11.2-2] (UNSUBACK), [MQTT-3.14.2-3] [MQTT-3.14.2-4]
    /// (DISCONNECT), [MQTT-3.15.2-2] [MQTT-3.15.2-3] (AUTH): neither property is sent if
    /// it would push the packet beyond the maximum.
    pub(crate) fn encode_with(
        &self,
        packet: Packet<'_>,
        d: Option<&Diagnostics>,
        out: &mut [u8],
    ) -> Result<Result<usize, usize>, Error> {
        let t = packet.packet_type();
        let allowed = self.version.is_v5()
            && (self.problem_info || matches!(t, PacketType::ConnAck | PacketType::Disconnect));
        let Some(d) = d.filter(|_| allowed) else {
            return self.encode(&packet, out);
        };
        // Borrowing the diagnostics: a packet of a shorter lifetime.
        let mut packet: Packet<'_> = packet;
        let none = UserProperties::default();
        let full = (d.reason_string(), d.user_properties());
        let mut result = Ok(Err(0));
        for (rs, up) in [full, (full.0, none), (None, none)] {
            set_diagnostics(&mut packet, rs, up);
            result = self.encode(&packet, out);
            if !matches!(result, Ok(Err(_))) {
                break;
            }
        }
        result
    }

    /// [`Conn::encode_with`] the diagnostics attached to the packet's type and `id`, which
    /// are then forgotten.
    pub(crate) fn encode_diagnosed(
        &mut self,
        packet: Packet<'_>,
        id: u16,
        out: &mut [u8],
    ) -> Result<Result<usize, usize>, Error> {
        let t = packet.packet_type();
        let result = self.encode_with(packet, self.diagnostics_for(t, id), out);
        self.drop_diagnostics(t, id);
        result
    }

    /// Writes the packet `next` stands for; `Ok(None)` when it was dropped instead.
    pub(crate) fn transmit(
        &mut self,
        now: Instant,
        next: Next,
        out: &mut [u8],
    ) -> Result<Option<usize>, Error> {
        let written = match next {
            Next::FinalDisconnect => {
                let code = self.final_disconnect.unwrap_or(ReasonCode::Success);
                let d = Disconnect::new(if self.version.is_v5() {
                    code
                } else {
                    ReasonCode::Success
                });
                let n = self
                    .encode_diagnosed(Packet::Disconnect(d), 0, out)?
                    .unwrap_or(0);
                // [MQTT-3.14.4-1] nothing after DISCONNECT.
                self.final_disconnect = None;
                self.phase = Phase::Closed;
                return Ok((n > 0).then_some(n));
            }
            Next::Control => unreachable!("roles encode their own control packets"),
            Next::Ack => {
                let a = self.flows().acks.front().copied().expect("picked");
                let ack = PubAck {
                    packet_id: a.id,
                    reason_code: a.code,
                    properties: AckProperties::default(),
                };
                let p = match a.qos {
                    QoS::ExactlyOnce => Packet::PubRec(ack),
                    _ => Packet::PubAck(ack),
                };
                let n = self.encode_diagnosed(p, a.id.get(), out)?;
                let flows = self.flows_mut();
                flows.acks.pop_front();
                if a.qos == QoS::ExactlyOnce && a.code.is_error() && n.is_ok() {
                    // [MQTT-4.3.3-9] a PUBREC with an error ends the exchange: no PUBREL
                    // follows, and a PUBLISH reusing the id is a new message.
                    uncarry(&mut flows.carried, a.id);
                    if flows.session.release_qos2(a.id) && self.role == Role::Server {
                        self.events
                            .push_back(Event::IncomingReleased { packet_id: a.id });
                    }
                }
                n.ok()
            }
            Next::Inflight(i) => {
                let f = &self.flows().session.inflight[i];
                let n = match f.stage {
                    Stage::Published => {
                        let qos_pid = qos_pid(f.outgoing.message.qos, f.packet_id);
                        // Re-sends carry the full topic: aliases do not survive a reconnect.
                        let expiry = f.outgoing.remaining_expiry(now).unwrap_or(Some(1));
                        let p = f.outgoing.message.to_publish(
                            qos_pid,
                            // [MQTT-3.3.1-1] DUP on every re-delivery.
                            f.ever_sent,
                            f.outgoing.message.codec_topic(),
                            None,
                            expiry,
                            &f.outgoing.subscription_ids,
                        );
                        self.encode(&Packet::Publish(self.for_version(p)), out)?
                    }
                    Stage::Released => {
                        let id = f.packet_id;
                        self.encode_diagnosed(Packet::PubRel(PubAck::new(id)), id.get(), out)?
                    }
                };
                match n {
                    Ok(n) => {
                        let f = &mut self.flows_mut().session.inflight[i];
                        f.sent = true;
                        f.ever_sent = true;
                        Some(n)
                    }
                    Err(size) => {
                        self.drop_too_large(i, size);
                        None
                    }
                }
            }
            Next::Queued => {
                let q = self.flows().session.queue.front().expect("picked");
                let expiry = q.remaining_expiry(now).unwrap_or(None);
                let (topic, alias, new_alias) = self.alias_for(&q.message.topic);
                let id = q.packet_id;
                let qos_pid = match id {
                    Some(id) => qos_pid(q.message.qos, id),
                    None => QosPid::AtMostOnce,
                };
                let p =
                    q.message
                        .to_publish(qos_pid, false, topic, alias, expiry, &q.subscription_ids);
                let n = self.encode(&Packet::Publish(self.for_version(p)), out)?;
                let q = self.flows_mut().session.queue.pop_front().expect("picked");
                match (n, id) {
                    (Ok(n), id) => {
                        if new_alias {
                            self.rare
                                .get_or_insert_with(Box::default)
                                .alias_out
                                .push(q.message.topic.clone());
                        }
                        if let Some(packet_id) = id {
                            self.flows_mut().session.inflight.push_back(Inflight {
                                packet_id,
                                outgoing: q,
                                stage: Stage::Published,
                                sent: true,
                                ever_sent: true,
                            });
                        }
                        Some(n)
                    }
                    (Err(size), id) => {
                        if let Some(id) = id {
                            self.flows_mut().ids.release(id);
                        }
                        if q.tag != 0 {
                            self.events.push_back(Event::Finished { tag: q.tag });
                        }
                        self.report_too_large(id, q.message, size);
                        None
                    }
                }
            }
        };
        if written.is_some() {
            self.on_transmit(now);
        }
        Ok(written)
    }

    /// A message too large for the peer. [MQTT-3.1.2-25] a server drops it as if it had
    /// been delivered; a client tells the application.
    fn drop_too_large(&mut self, i: usize, size: usize) {
        let flows = self.flows_mut();
        if let Some(f) = flows.session.inflight.remove(i) {
            flows.ids.release(f.packet_id);
            if f.outgoing.tag != 0 {
                self.events.push_back(Event::Finished {
                    tag: f.outgoing.tag,
                });
            }
            self.report_too_large(Some(f.packet_id), f.outgoing.message, size);
        }
    }

    fn report_too_large(&mut self, packet_id: Option<PacketId>, message: Message, size: usize) {
        if self.role == Role::Client {
            self.events.push_back(Event::Dropped {
                packet_id,
                message,
                error: Error::PacketTooLarge {
                    size,
                    max: self.peer.maximum_packet_size,
                },
            });
        }
    }

    /// Acts on expired timers: the connect deadline (CONNACK for a client, CONNECT for a
    /// server), then keep alive. Early calls do nothing.
    pub(crate) fn handle_timeout(&mut self, now: Instant) {
        if self.error().is_some() {
            return;
        }
        if self.timers.expired(Timer::Connect, now) {
            self.fail(Error::ConnectTimeout);
            return;
        }
        self.handle_keep_alive(now);
    }

    /// The keep alive timers both roles share.
    fn handle_keep_alive(&mut self, now: Instant) {
        match self.role {
            Role::Server => {
                if self.timers.expired(Timer::KeepAlive, now) {
                    self.fail(Error::KeepAliveTimeout);
                }
            }
            Role::Client => {
                if self.timers.expired(Timer::PingResp, now) {
                    self.fail(Error::KeepAliveTimeout);
                    return;
                }
                if self.timers.expired(Timer::KeepAlive, now) {
                    self.timers.stop(Timer::KeepAlive);
                    if !self.ping_outstanding {
                        self.ping_outstanding = true;
                        self.push_control(Control::PingReq);
                        // The answer is due within another keep alive period.
                        self.timers.set(Timer::PingResp, now + self.keep_alive());
                    }
                }
            }
        }
    }
}

pub(crate) fn qos_pid(qos: QoS, id: PacketId) -> QosPid {
    match qos {
        QoS::AtMostOnce => QosPid::AtMostOnce,
        QoS::AtLeastOnce => QosPid::AtLeastOnce(id),
        QoS::ExactlyOnce => QosPid::ExactlyOnce(id),
    }
}

/// Control packets both roles encode the same way.
pub(crate) fn encode_common(c: &Control) -> Option<Packet<'_>> {
    Some(match c {
        Control::PingReq => Packet::PingReq,
        Control::PingResp => Packet::PingResp,
        Control::PubComp(id, code) => Packet::PubComp(PubAck {
            packet_id: *id,
            reason_code: *code,
            properties: AckProperties::default(),
        }),
        Control::SubAck(id, codes) => {
            Packet::SubAck(mqtt_codec::SubAck::new(*id, mqtt_codec::List::new(codes)))
        }
        Control::UnsubAck(id, codes) => {
            Packet::UnsubAck(mqtt_codec::UnsubAck::new(*id, mqtt_codec::List::new(codes)))
        }
        Control::Role(_) | Control::Request(..) => return None,
    })
}

/// Fills `out` with as many whole packets as `one` writes (one `poll_transmit` each):
/// `Ok(Some(total))`, or `Ok(None)` when there was nothing to send. A packet that does not
/// fit the rest of `out` stays queued for the next call; an error after some packets were
/// written is left for the next call too, which returns it again (errors are sticky, and a
/// packet that could not be encoded stays at the head of the queue).
pub(crate) fn transmit_batch(
    out: &mut [u8],
    mut one: impl FnMut(&mut [u8]) -> Result<Option<usize>, Error>,
) -> Result<Option<usize>, Error> {
    let mut written = 0;
    while written < out.len() {
        match one(&mut out[written..]) {
            Ok(Some(n)) => written += n,
            Ok(None) => break,
            Err(_) if written > 0 => break,
            Err(e) => return Err(e),
        }
    }
    Ok((written > 0).then_some(written))
}

/// Checks that a packet type may arrive at this role at all.
pub(crate) fn unexpected(t: PacketType) -> Error {
    Error::Protocol(Violation::UnexpectedPacket(t))
}

/// `id` no longer carried from an earlier connection.
fn uncarry(carried: &mut Vec<u16>, id: PacketId) {
    if let Ok(at) = carried.binary_search(&id.get()) {
        carried.remove(at);
    }
}
