//! The broker core (`mqtt_broker::Broker`) under arbitrary connections, bytes, time steps and
//! client behaviour. The input picks one of two layers:
//!
//! - **Raw**: several connections fed arbitrary bytes, arbitrary well-formed packets
//!   (`PacketSpec`) and well-formed CONNECT/SUBSCRIBE/PUBLISH/acks at the connection's level,
//!   opened and closed at will, with time steps. Checks: nothing panics; every packet the
//!   broker writes decodes, alone and whole, at the level of the connection's CONNECT, and is
//!   no larger than the Maximum Packet Size that CONNECT announced.
//! - **Scenario**: real `mqtt_state::Client` machines (3.1, 3.1.1 and 5.0 mixed; QoS 0, 1, 2;
//!   persistent and clean sessions) subscribing, publishing, disconnecting, dropping their
//!   transport, reconnecting, taking their session over from a half-open connection, reading
//!   slowly or not at all, across time jumps. At the end every client is unstalled and
//!   reconnected with its session, and the run settles. Checks:
//!   - the broker never violates the protocol towards a correct client (the client's
//!     `handle_input` fails only on a DISCONNECT from the broker);
//!   - a persistent session that has not expired is resumed (Session Present);
//!   - no loss: every QoS 1/2 message whose publisher got its PUBACK/PUBCOMP reaches every
//!     subscriber whose session held a matching QoS >= 1 subscription (SUBACK received before
//!     the message was published, no UNSUBSCRIBE sent before the acknowledgement) and lived to
//!     the end of the run. The one excused loss: a message the broker routed while the
//!     subscriber's session may have been offline, in a run where the broker counted a drop
//!     (offline persistent sessions keep bounded queues, `max_offline_queue`; a connected
//!     subscriber is never dropped from, its publishers are paused instead);
//!   - no duplicate: a message is delivered at QoS 2 at most once per subscriber;
//!   - order: per subscriber, per publisher, for the same published and delivered QoS, first
//!     deliveries arrive in publishing order.
//!
//! Both layers check that the heap the run allocates stays within a bound linear in the
//! input (a counting global allocator): the broker must never allocate in proportion to a
//! peer's claim, and its queues are bounded by its configuration.
#![no_main]

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqtt_codec::fuzzing::PacketSpec;
use mqtt_codec::{
    decode, Connect, DecodeOptions, List, Packet, PacketId, ProtocolVersion, PubAck, Publish, QoS,
    QosPid, ReasonCode, Sender, Status, Subscribe, Subscription, SubscriptionOptions, Topic,
    Unsubscribe, Will,
};
use mqtt_state::{
    Client, ClientConfig, Duration, Error, Event, Instant, Message, SessionState, TopicBuf,
};
use mqtt_topic::{matches, TopicFilter, TopicName};

// ---------------------------------------------------------------------------------------
// The broker API, in one place. The broker's API is changing (close reasons, Pause/Resume
// backpressure events, a fallible `poll_transmit`, deferred decisions): only this module
// touches `mqtt_broker` and should need updating.
mod core {
    use bytes::{Bytes, BytesMut};
    use mqtt_broker::{
        AuthStep, Broker, BrokerConfig, BrokerEvent, ConnectionId, Context, Error, Hooks, Request,
        RequestKind, Verdict,
    };
    use mqtt_codec::{QoS, ReasonCode};
    use mqtt_state::{ConnectRequest, Duration, Instant, ServerConfig};
    use mqtt_topic::{TopicFilter, TopicName};

    pub use mqtt_broker::ConnectionId as Id;

    /// What the broker asks of the program.
    pub enum Ev {
        /// Bytes to send on the connection.
        Transmit(Id),
        /// Send what is pending, then close the connection.
        Close(Id),
        /// Offer the connection's unread input again (after backpressure held it).
        Resume(Id),
    }

    /// Limits the harness chooses.
    pub struct Limits {
        pub max_queued: usize,
        pub max_inflight: u16,
        pub receive_maximum: u16,
        pub max_offline_queue: usize,
        pub max_packet_size: u32,
        pub sys: bool,
        pub max_connections: usize,
        /// Bytes that script the decisions, in turn: each hook's verdict (allow, deny,
        /// defer) and each deferred request's answer (accept, reject, challenge, or not yet,
        /// which lets it time out). Empty: everything allowed at once.
        pub decisions: Vec<u8>,
        /// Refusals only where the harness's invariants expect them (subscriptions): the
        /// scenario's no-loss check counts every acknowledged message, and a refused login
        /// would leave a client without its session at the end.
        pub gentle: bool,
        pub decision_timeout_ms: u64,
    }

    /// Hooks that read their verdicts from the input.
    struct Scripted {
        script: Vec<u8>,
        at: usize,
        gentle: bool,
        /// Everything allowed from now on (the run settles).
        permissive: bool,
    }

    impl Scripted {
        fn next(&mut self) -> u8 {
            if self.script.is_empty() || self.permissive {
                return 0;
            }
            let b = self.script[self.at % self.script.len()];
            self.at = self.at.wrapping_add(1);
            b
        }
        fn verdict(&mut self, deny_ok: bool) -> Verdict {
            match self.next() % 4 {
                2 => Verdict::Defer,
                3 if deny_ok || !self.gentle => Verdict::Deny(ReasonCode::NotAuthorized),
                _ => Verdict::Allow,
            }
        }
    }

    impl Hooks for Scripted {
        fn authenticate(&mut self, _: &Context<'_>, _: &ConnectRequest) -> Verdict {
            self.verdict(false)
        }
        fn enhanced_auth(&mut self, _: &Context<'_>, _: &str, _: Option<&[u8]>) -> AuthStep {
            match self.next() % 4 {
                0 => AuthStep::Success,
                1 => AuthStep::Continue(Bytes::from_static(b"challenge")),
                2 => AuthStep::Defer,
                _ => AuthStep::Fail(ReasonCode::NotAuthorized),
            }
        }
        fn authorize_publish(
            &mut self,
            _: &Context<'_>,
            _: TopicName<'_>,
            _: QoS,
            _: bool,
        ) -> Verdict {
            self.verdict(false)
        }
        fn authorize_subscribe(&mut self, _: &Context<'_>, _: TopicFilter<'_>, _: QoS) -> Verdict {
            self.verdict(true)
        }
    }

    pub struct Core {
        broker: Broker<Scripted>,
        /// Deferred requests not answered yet (some may have timed out or lost their
        /// connection meanwhile).
        held: Vec<Request>,
        /// Connections the program closed: their requests are gone.
        closed: Vec<Id>,
    }

    impl Core {
        pub fn new(l: &Limits, now: Instant) -> Self {
            let d = BrokerConfig::default();
            let config = BrokerConfig {
                server: ServerConfig {
                    max_queued: l.max_queued,
                    max_inflight: l.max_inflight,
                    receive_maximum: l.receive_maximum,
                    maximum_packet_size: l.max_packet_size,
                    ..d.server.clone()
                },
                max_connections: l.max_connections,
                max_offline_queue: l.max_offline_queue,
                sys_interval: l.sys.then(|| Duration::from_secs(10)),
                decision_timeout: Duration::from_millis(l.decision_timeout_ms),
                ..d
            };
            let hooks = Scripted {
                script: l.decisions.clone(),
                at: 0,
                gentle: l.gentle,
                permissive: false,
            };
            Self {
                broker: Broker::with_hooks(config, hooks, now),
                held: Vec::new(),
                closed: Vec::new(),
            }
        }
        pub fn open(&mut self, now: Instant) -> ConnectionId {
            let id = self.broker.open(now);
            self.closed.retain(|c| *c != id);
            id
        }
        pub fn input(&mut self, now: Instant, id: Id, buf: &mut BytesMut) {
            self.broker.handle_input(now, id, buf)
        }
        /// The next packet for `id`, written into `out`.
        /// The output buffers here hold any packet the broker may send (its sizes are
        /// capped by the limits above), so a refusal for size is a broker bug.
        pub fn transmit(&mut self, now: Instant, id: Id, out: &mut [u8]) -> Option<usize> {
            match self.broker.poll_transmit(now, id, out) {
                Ok(n) => n,
                Err(e) => panic!("poll_transmit({id:?}) with {} bytes: {e}", out.len()),
            }
        }
        pub fn event(&mut self, now: Instant) -> Option<Ev> {
            loop {
                let Some(event) = self.broker.poll_event() else {
                    // Nothing else to do: decide what waits, which may make more events.
                    if self.decide(now) {
                        continue;
                    }
                    return None;
                };
                return Some(match event {
                    BrokerEvent::Transmit(id) => Ev::Transmit(id),
                    BrokerEvent::Close { id, .. } => Ev::Close(id),
                    BrokerEvent::Resume(id) => Ev::Resume(id),
                    // Pause: the broker leaves the bytes in the buffer it is handed; the
                    // harness keeps offering them, which the broker must tolerate.
                    _ => continue,
                });
            }
        }
        /// Answers the requests the script says to answer now; whether any was.
        fn decide(&mut self, now: Instant) -> bool {
            while let Some(r) = self.broker.poll_request() {
                // A request names an open connection, which is then deciding.
                assert!(
                    !self.closed.contains(&r.conn),
                    "request for a closed connection"
                );
                assert!(self.broker.is_deciding(r.conn), "request but not deciding");
                self.held.push(r);
            }
            let mut answered = false;
            let held = std::mem::take(&mut self.held);
            let gentle = self.broker.hooks_mut().gentle;
            for r in held {
                let b = self.broker.hooks_mut().next();
                if crate::trace() {
                    eprintln!(
                        "  decision {:?} on {:?}: {:?}, answer {}",
                        r.id,
                        r.conn,
                        r.kind,
                        b % 5
                    );
                }
                let subscribe = matches!(r.kind, RequestKind::Subscribe { .. });
                let result = match b % 5 {
                    2 => {
                        // Not yet: answered on a later turn, or it times out.
                        self.held.push(r);
                        continue;
                    }
                    3 if subscribe || !gentle => self.broker.reject(
                        now,
                        r.id,
                        ReasonCode::NotAuthorized,
                        Some("refused by the fuzzer"),
                    ),
                    4 if !gentle => {
                        match self
                            .broker
                            .challenge(now, r.id, Bytes::from_static(b"more"))
                        {
                            Err(Error::NotAnAuthRequest) => {
                                assert!(!matches!(r.kind, RequestKind::Auth { .. }));
                                self.broker.accept(now, r.id)
                            }
                            other => other,
                        }
                    }
                    _ => self.broker.accept(now, r.id),
                };
                match result {
                    Ok(()) => {
                        assert!(
                            !self.closed.contains(&r.conn),
                            "answered for a closed connection"
                        )
                    }
                    // Timed out, or its connection closed or was taken over.
                    Err(Error::UnknownRequest) => {}
                    Err(e) => panic!("answering {r:?}: {e}"),
                }
                answered = true;
            }
            answered
        }
        /// From now on everything is allowed, and what waits is accepted: the run settles.
        pub fn permissive(&mut self, now: Instant) {
            self.broker.hooks_mut().permissive = true;
            self.decide(now);
        }
        pub fn close(&mut self, now: Instant, id: Id) {
            self.broker.handle_close(now, id);
            assert!(!self.broker.is_deciding(id));
            self.closed.push(id);
        }
        pub fn timeout(&mut self, now: Instant) {
            self.broker.handle_timeout(now)
        }
        pub fn next_timeout(&self) -> Option<Instant> {
            self.broker.poll_timeout()
        }
        /// Messages the broker says it dropped (a full queue).
        pub fn dropped(&self) -> u64 {
            self.broker.stats().messages_dropped
        }
        /// Requests waiting, handed out or not.
        pub fn pending_requests(&self) -> usize {
            self.broker.pending_requests()
        }
    }
}
use crate::core::{Core, Ev, Id, Limits};

// ---------------------------------------------------------------------------------------
// Memory: a counting allocator. `unsafe` is confined to this harness (the libraries forbid
// it); it only forwards to the system allocator.

struct Counting;
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = System.alloc(l);
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(l);
        if !p.is_null() {
            grew(l.size());
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = System.realloc(p, l, new);
        if !q.is_null() {
            LIVE.fetch_sub(l.size(), Ordering::Relaxed);
            grew(new);
        }
        q
    }
}

fn grew(n: usize) {
    let live = LIVE.fetch_add(n, Ordering::Relaxed) + n;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// The heap a run may add on top of what it started with: a fixed allowance (machines, the
/// harness's own buffers and records) plus a generous amount per input byte (a topic of n
/// bytes is up to n tree levels; every message costs a queue entry per subscriber, within
/// the configured limits). A broker that believed a peer's length claim, or queued without
/// bound, blows through it.
const MEM_BASE: usize = 8 << 20;
const MEM_PER_INPUT_BYTE: usize = 4096;

// ---------------------------------------------------------------------------------------

#[derive(Debug, Arbitrary)]
enum Input {
    Raw(RawInput),
    Scenario(Scenario),
}

/// Room for any packet the broker may write (its Maximum Packet Size is at most 1 MiB here,
/// a client's at most the protocol's, but the messages in these runs are small).
const OUT: usize = 1 << 21;

thread_local! {
    static OUT_BUF: std::cell::RefCell<Vec<u8>> = std::cell::RefCell::new(vec![0; OUT]);
}

fuzz_target!(|data: &[u8]| {
    let size = data.len();
    let Ok(input) = Input::arbitrary_take_rest(arbitrary::Unstructured::new(data)) else {
        return;
    };
    // The output buffer is the harness's, made once: not part of the run's heap.
    OUT_BUF.with(|_| ());
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    OUT_BUF.with(|out| {
        let out = &mut out.borrow_mut()[..];
        match input {
            Input::Raw(r) => raw::run(r, out),
            Input::Scenario(s) => scenario::run(s, out),
        }
    });
    let peak = PEAK.load(Ordering::Relaxed) - base;
    let bound = MEM_BASE + MEM_PER_INPUT_BYTE * size;
    if trace() {
        eprintln!("heap peak {peak} bytes for {size} input bytes (bound {bound})");
    }
    assert!(
        peak <= bound,
        "the run's heap peaked at {peak} bytes, over {bound} for {size} bytes of input"
    );
});

const LEVELS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];

fn qos(b: u8) -> QoS {
    match b % 3 {
        0 => QoS::AtMostOnce,
        1 => QoS::AtLeastOnce,
        _ => QoS::ExactlyOnce,
    }
}

/// `TRACE=1`: print every operation and client event (to replay one input).
fn trace() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("TRACE").is_some())
}

// ---------------------------------------------------------------------------------------
mod raw {
    use super::*;

    const TOPICS: [&str; 6] = ["a", "a/b", "$SYS/x", "b/c/d", "a/+", ""];
    const FILTERS: [&str; 7] = ["a", "a/+", "#", "+/+", "$share/g/a/#", "b/#", "a/#/b"];

    #[derive(Debug, Arbitrary)]
    pub struct RawInput {
        max_queued: u8,
        max_inflight: u8,
        receive_maximum: u8,
        max_offline_queue: u8,
        max_packet_size: u16,
        sys: bool,
        max_connections: u8,
        /// Scripts the decisions (see `core::Limits::decisions`).
        decisions: Vec<u8>,
        decision_timeout_ms: u16,
        ops: Vec<RawOp>,
    }

    #[derive(Debug, Arbitrary)]
    enum RawOp {
        Open,
        /// The transport of the `c`-th connection closes.
        Close {
            c: u8,
        },
        Bytes {
            c: u8,
            data: Vec<u8>,
        },
        Spec {
            c: u8,
            spec: PacketSpec,
        },
        Connect {
            c: u8,
            level: u8,
            id: u8,
            clean: bool,
            keep_alive: u8,
            expiry: u8,
            max_packet: Option<u16>,
            will: Option<(u8, u8, bool, u8)>,
        },
        Subscribe {
            c: u8,
            filter: u8,
            qos: u8,
            id: u16,
        },
        Unsubscribe {
            c: u8,
            filter: u8,
            id: u16,
        },
        Publish {
            c: u8,
            topic: u8,
            qos: u8,
            id: u16,
            retain: bool,
            dup: bool,
            payload: u8,
        },
        Ack {
            c: u8,
            kind: u8,
            id: u16,
        },
        Advance {
            ms: u16,
            secs: bool,
        },
        AdvanceToTimeout,
    }

    struct Conn {
        id: Id,
        /// What was fed so far, until the first packet is known.
        head: Vec<u8>,
        /// The level of the connection's CONNECT, once it decoded; `Err(())` when the first
        /// packet was not a decodable CONNECT (the broker may answer at either level).
        version: Option<Result<ProtocolVersion, ()>>,
        peer_max: Option<u32>,
        pending: BytesMut,
    }

    struct Raw {
        core: Core,
        now: Instant,
        conns: Vec<Conn>,
    }

    impl Raw {
        fn pick(&self, c: u8) -> Option<usize> {
            (!self.conns.is_empty()).then(|| usize::from(c) % self.conns.len())
        }

        fn version(&self, i: usize) -> ProtocolVersion {
            match self.conns[i].version {
                Some(Ok(v)) => v,
                _ => ProtocolVersion::V3_1_1,
            }
        }

        fn feed(&mut self, i: usize, bytes: &[u8]) {
            let now = self.now;
            let c = &mut self.conns[i];
            if c.version.is_none() {
                c.head.extend_from_slice(bytes);
                let opts = DecodeOptions::new(ProtocolVersion::V5).sender(Sender::Client);
                match decode(&c.head, &opts) {
                    Ok(Status::Complete {
                        packet: Packet::Connect(p),
                        ..
                    }) => {
                        c.version = Some(Ok(p.protocol));
                        c.peer_max = p.properties.maximum_packet_size.map(|m| m.get());
                    }
                    Ok(Status::Incomplete { .. }) => {}
                    _ => c.version = Some(Err(())),
                }
                if c.version.is_some() {
                    c.head = Vec::new();
                }
            }
            c.pending.extend_from_slice(bytes);
            self.core.input(now, c.id, &mut c.pending);
        }

        fn encode(&mut self, i: usize, packet: &Packet<'_>) {
            let v = self.version(i);
            if let Ok(bytes) = packet.encode_to_vec(v) {
                self.feed(i, &bytes);
            }
        }

        fn drain(&mut self, out: &mut [u8]) {
            let mut closing = Vec::new();
            for _ in 0..100_000 {
                let Some(ev) = self.core.event(self.now) else {
                    break;
                };
                let (id, close) = match ev {
                    Ev::Transmit(id) => (id, false),
                    Ev::Close(id) => (id, true),
                    Ev::Resume(id) => {
                        if let Some(c) = self.conns.iter_mut().find(|c| c.id == id) {
                            self.core.input(self.now, id, &mut c.pending);
                        }
                        continue;
                    }
                };
                let Some(i) = self.conns.iter().position(|c| c.id == id) else {
                    // A closed connection's id: the broker must not name it again with work
                    // to do, but an event queued before the close may still come out.
                    assert!(self.core.transmit(self.now, id, out).is_none());
                    continue;
                };
                while let Some(n) = self.core.transmit(self.now, id, out) {
                    check_packet(&self.conns[i], &out[..n]);
                }
                if close && !closing.contains(&id) {
                    closing.push(id);
                }
            }
            for id in closing {
                self.close_id(id);
            }
        }

        fn close_id(&mut self, id: Id) {
            if let Some(i) = self.conns.iter().position(|c| c.id == id) {
                self.conns.swap_remove(i);
                self.core.close(self.now, id);
            }
        }
    }

    fn check_packet(c: &Conn, bytes: &[u8]) {
        let decodes = |v: ProtocolVersion| {
            let opts = DecodeOptions::new(v).sender(Sender::Server);
            matches!(decode(bytes, &opts), Ok(Status::Complete { consumed, .. }) if consumed == bytes.len())
        };
        let ok = match c.version {
            Some(Ok(v)) => decodes(v),
            _ => decodes(ProtocolVersion::V3_1_1) || decodes(ProtocolVersion::V5),
        };
        assert!(
            ok,
            "broker wrote an undecodable packet (connection level {:?}): {bytes:02x?}",
            c.version
        );
        if let Some(max) = c.peer_max {
            assert!(
                bytes.len() <= max as usize,
                "{} byte packet over the client's maximum of {max}",
                bytes.len()
            );
        }
    }

    fn pid(id: u16) -> PacketId {
        PacketId::new(id).unwrap_or(PacketId::new(1).unwrap())
    }

    pub fn run(input: RawInput, out: &mut [u8]) {
        let limits = Limits {
            max_queued: usize::from(input.max_queued % 32) + 1,
            max_inflight: u16::from(input.max_inflight % 16) + 1,
            receive_maximum: u16::from(input.receive_maximum % 16) + 1,
            max_offline_queue: usize::from(input.max_offline_queue % 32),
            max_packet_size: u32::from(input.max_packet_size).max(2) * 16,
            sys: input.sys,
            max_connections: usize::from(input.max_connections % 8) + 1,
            decisions: input.decisions.iter().take(64).copied().collect(),
            gentle: false,
            decision_timeout_ms: u64::from(input.decision_timeout_ms) + 1,
        };
        let mut h = Raw {
            core: Core::new(&limits, Instant::ZERO),
            now: Instant::ZERO,
            conns: Vec::new(),
        };
        for op in input.ops.into_iter().take(200) {
            if trace() {
                eprintln!("{op:?}");
            }
            match op {
                RawOp::Open => {
                    if h.conns.len() < 16 {
                        let id = h.core.open(h.now);
                        h.conns.push(Conn {
                            id,
                            head: Vec::new(),
                            version: None,
                            peer_max: None,
                            pending: BytesMut::new(),
                        });
                    }
                }
                RawOp::Close { c } => {
                    if let Some(i) = h.pick(c) {
                        let id = h.conns[i].id;
                        h.close_id(id);
                    }
                }
                RawOp::Bytes { c, data } => {
                    if let Some(i) = h.pick(c) {
                        h.feed(i, &data);
                    }
                }
                RawOp::Spec { c, spec } => {
                    if let Some(i) = h.pick(c) {
                        let bytes = spec.with_packet(|p| p.encode_to_vec(spec.version).ok());
                        if let Some(bytes) = bytes {
                            h.feed(i, &bytes);
                        }
                    }
                }
                RawOp::Connect {
                    c,
                    level,
                    id,
                    clean,
                    keep_alive,
                    expiry,
                    max_packet,
                    will,
                } => {
                    if let Some(i) = h.pick(c) {
                        let v = LEVELS[usize::from(level) % 3];
                        let client_id = ["a", "b", "c", ""][usize::from(id) % 4];
                        let mut p = Connect::new(v, client_id);
                        p.clean_start = clean || client_id.is_empty();
                        p.keep_alive = u16::from(keep_alive % 8);
                        if v.is_v5() {
                            p.properties.session_expiry_interval =
                                Some([0, 1, 5, 3600, u32::MAX][usize::from(expiry) % 5]);
                            p.properties.maximum_packet_size =
                                max_packet.and_then(|m| std::num::NonZeroU32::new(u32::from(m)));
                        }
                        let w = will.map(|(t, q, r, d)| {
                            let mut w = Will::new(TOPICS[usize::from(t) % 2], b"will");
                            w.qos = qos(q);
                            w.retain = r;
                            if v.is_v5() {
                                w.properties.will_delay_interval = Some(u32::from(d % 8));
                            }
                            w
                        });
                        p.will = w;
                        h.encode(i, &Packet::Connect(p));
                    }
                }
                RawOp::Subscribe {
                    c,
                    filter,
                    qos: q,
                    id,
                } => {
                    if let Some(i) = h.pick(c) {
                        let subs = [Subscription {
                            filter: FILTERS[usize::from(filter) % FILTERS.len()],
                            options: SubscriptionOptions::qos(qos(q)),
                        }];
                        let p = Subscribe::new(pid(id), List::new(&subs));
                        h.encode(i, &Packet::Subscribe(p));
                    }
                }
                RawOp::Unsubscribe { c, filter, id } => {
                    if let Some(i) = h.pick(c) {
                        let f = [FILTERS[usize::from(filter) % FILTERS.len()]];
                        let p = Unsubscribe::new(pid(id), List::new(&f));
                        h.encode(i, &Packet::Unsubscribe(p));
                    }
                }
                RawOp::Publish {
                    c,
                    topic,
                    qos: q,
                    id,
                    retain,
                    dup,
                    payload,
                } => {
                    if let Some(i) = h.pick(c) {
                        let qp = match qos(q) {
                            QoS::AtMostOnce => QosPid::AtMostOnce,
                            QoS::AtLeastOnce => QosPid::AtLeastOnce(pid(id)),
                            QoS::ExactlyOnce => QosPid::ExactlyOnce(pid(id)),
                        };
                        let data = vec![b'x'; usize::from(payload % 64)];
                        let Ok(t) = Topic::new(TOPICS[usize::from(topic) % TOPICS.len()]) else {
                            continue;
                        };
                        let mut p = Publish::new(t, &data, qp);
                        p.retain = retain;
                        p.dup = dup && q % 3 != 0;
                        h.encode(i, &Packet::Publish(p));
                    }
                }
                RawOp::Ack { c, kind, id } => {
                    if let Some(i) = h.pick(c) {
                        let a = PubAck::new(pid(id));
                        let p = match kind % 4 {
                            0 => Packet::PubAck(a),
                            1 => Packet::PubRec(a),
                            2 => Packet::PubRel(a),
                            _ => Packet::PubComp(a),
                        };
                        h.encode(i, &p);
                    }
                }
                RawOp::Advance { ms, secs } => {
                    let ms = u64::from(ms) * if secs { 1000 } else { 1 };
                    h.now = h.now + Duration::from_millis(ms);
                    h.core.timeout(h.now);
                }
                RawOp::AdvanceToTimeout => {
                    if let Some(t) = h.core.next_timeout() {
                        h.now = h.now.max(t);
                        h.core.timeout(h.now);
                    }
                }
            }
            h.drain(out);
        }
        // Every connection goes away; the broker must cope with the rest of its timers.
        while let Some(c) = h.conns.pop() {
            h.core.close(h.now, c.id);
        }
        h.drain(out);
        for _ in 0..8 {
            let Some(t) = h.core.next_timeout() else {
                break;
            };
            h.now = h.now.max(t);
            h.core.timeout(h.now);
            h.drain(out);
        }
    }
}
use raw::RawInput;

// ---------------------------------------------------------------------------------------
mod scenario {
    use super::*;

    const TOPICS: [&str; 3] = ["t/0", "t/1", "u"];
    const FILTERS: [&str; 6] = ["t/0", "t/+", "#", "t/#", "u", "+/1"];
    /// 5.0 session expiry choices, seconds.
    const EXPIRIES: [u32; 4] = [0, 5, 60, 3600];

    #[derive(Debug, Arbitrary)]
    pub struct Scenario {
        clients: Vec<ClientSpec>,
        max_queued: u8,
        max_inflight: u8,
        max_offline_queue: u8,
        /// Scripts the decisions: deferred ones answered later or timed out, refused
        /// subscriptions (see `core::Limits::decisions`).
        decisions: Vec<u8>,
        ops: Vec<Op>,
    }

    #[derive(Debug, Arbitrary)]
    struct ClientSpec {
        level: u8,
        expiry: u8,
        keep_alive: u8,
        receive_maximum: u8,
        /// Connected at the start (with clean start), so short inputs already have traffic.
        start: bool,
        /// Subscribed at the start: filter and QoS.
        subscribe: Option<(u8, u8)>,
    }

    #[derive(Debug, Arbitrary)]
    enum Op {
        Connect {
            c: u8,
            clean: bool,
        },
        /// DISCONNECT, then the transport closes.
        Disconnect {
            c: u8,
        },
        /// The transport drops without DISCONNECT.
        Cut {
            c: u8,
        },
        /// The client reconnects on a new transport while the broker still holds the old one
        /// open (half-open): the broker must hand the session over.
        Takeover {
            c: u8,
            clean: bool,
        },
        Subscribe {
            c: u8,
            filter: u8,
            qos: u8,
        },
        Unsubscribe {
            c: u8,
            filter: u8,
        },
        Publish {
            c: u8,
            topic: u8,
            qos: u8,
            retain: bool,
            count: u8,
        },
        /// The program stops (or resumes) writing to this client's socket.
        Stall {
            c: u8,
            on: bool,
        },
        Advance {
            amount: u16,
            secs: bool,
        },
        AdvanceToTimeout,
    }

    struct Msg {
        publisher: usize,
        seq: u32,
        topic: usize,
        qos: QoS,
        /// Logical time of the `publish` call.
        queued: u64,
        /// Logical time the publisher got PUBACK/PUBCOMP with a success code.
        acked: Option<u64>,
    }

    /// A subscription as the subscriber knows it: granted by a SUBACK at `since`, in session
    /// epoch `epoch`; ended (conservatively) when an UNSUBSCRIBE or a replacing SUBSCRIBE was
    /// queued at `until`.
    struct SubInst {
        filter: usize,
        granted: QoS,
        since: u64,
        until: Option<u64>,
        epoch: u32,
    }

    struct Delivery {
        msg: usize,
        qos: QoS,
        retain: bool,
    }

    struct Peer {
        client: Client,
        version: ProtocolVersion,
        expiry: u32,
        conn: Option<Id>,
        to_broker: BytesMut,
        from_broker: BytesMut,
        stalled: bool,
        wants_write: bool,
        /// Bytes arrived for the broker, or the broker's output was drained (it may read
        /// again): worth a `handle_input`. A program calls it when its socket is readable,
        /// not again and again with the same unread bytes.
        readable: bool,
        /// The current connection's CONNACK arrived.
        connack: bool,
        /// When this connection first stalled. The broker may decide to close a connection
        /// (keep alive) and release its session while its final DISCONNECT cannot be written;
        /// it asks to close the socket only once that DISCONNECT is out, so from the first
        /// stall on, the session may have been released earlier than the socket closes.
        stalled_since: Option<Instant>,
        /// The session on the broker, as far as the client can know: `None` none (or
        /// unknown), `Some(None)` alive with no end in sight, `Some(Some(t))` until `t`.
        session_until: Option<Option<Instant>>,
        /// Incremented whenever the broker may have started a new session for this client.
        epoch: u32,
        subs: Vec<SubInst>,
        pending_subs: Vec<(PacketId, usize, QoS)>,
        /// Packet identifier of a QoS 1/2 message published and not yet acknowledged.
        unacked: BTreeMap<u16, usize>,
        deliveries: Vec<Delivery>,
        seq: u32,
        /// Ticks (inclusive ranges) at which the broker may have held this client's session
        /// offline: not connected, CONNACK not yet seen, or stalled (the broker may have
        /// closed it). Messages routed then may meet the bounded offline queue.
        offline: Vec<(u64, u64)>,
    }

    impl Peer {
        /// What is left of the session once the broker releases the connection at
        /// `released` (see `session_until`).
        fn session_after_close(&self, released: Instant) -> Option<Option<Instant>> {
            let expiry = if self.version.is_v5() {
                self.expiry
            } else if self.client.config().clean_start {
                0
            } else {
                u32::MAX
            };
            match expiry {
                0 => None,
                u32::MAX if !self.version.is_v5() => Some(None),
                e => Some(Some(released + Duration::from_secs(u64::from(e)))),
            }
        }
    }

    struct World {
        core: Core,
        now: Instant,
        tick: u64,
        peers: Vec<Peer>,
        /// Broker connections no client reads any more (taken over); their output is checked
        /// and discarded.
        orphans: Vec<Id>,
        msgs: Vec<Msg>,
    }

    fn payload(publisher: usize, seq: u32) -> String {
        format!("{publisher}:{seq}")
    }

    impl World {
        /// Records, for the op at `self.tick` and the one before, which clients may have been
        /// offline as the broker sees it.
        fn note_presence(&mut self) {
            let t = self.tick;
            for p in &mut self.peers {
                let online = p.conn.is_some()
                    && p.connack
                    && !p.stalled
                    && p.stalled_since.is_none()
                    && p.client.is_connected();
                if online {
                    continue;
                }
                let from = t.saturating_sub(1);
                match p.offline.last_mut() {
                    Some((_, end)) if *end + 1 >= from => *end = t,
                    _ => p.offline.push((from, t)),
                }
            }
        }

        fn peer_of(&self, id: Id) -> Option<usize> {
            self.peers.iter().position(|p| p.conn == Some(id))
        }

        fn msg_of(&self, m: &Message) -> Option<usize> {
            let s = std::str::from_utf8(&m.payload).ok()?;
            let (p, q) = s.split_once(':')?;
            let (p, q): (usize, u32) = (p.parse().ok()?, q.parse().ok()?);
            self.msgs
                .iter()
                .position(|m| m.publisher == p && m.seq == q)
        }

        fn config(&self, i: usize, clean: bool) -> ClientConfig {
            let p = &self.peers[i];
            ClientConfig {
                clean_start: clean,
                session_expiry_interval: p.expiry,
                ..p.client.config().clone()
            }
        }

        /// Opens a transport for client `i` and sends CONNECT.
        fn connect(&mut self, i: usize, clean: bool) {
            if self.peers[i].client.config().clean_start != clean {
                let config = self.config(i, clean);
                let old = std::mem::replace(
                    &mut self.peers[i].client,
                    Client::new(ClientConfig::new(ProtocolVersion::V5, "x")),
                );
                self.peers[i].client = Client::with_session(config, old.into_session());
            }
            let id = self.core.open(self.now);
            let p = &mut self.peers[i];
            p.conn = Some(id);
            p.connack = false;
            p.stalled_since = p.stalled.then_some(self.now);
            p.to_broker.clear();
            p.from_broker.clear();
            p.wants_write = false;
            // A SUBSCRIBE of an earlier connection is never answered; its id is free again.
            p.pending_subs.clear();
            if clean {
                // The broker discards the session when it reads this CONNECT.
                p.epoch += 1;
                p.session_until = None;
            }
            p.client
                .connect(self.now)
                .expect("connect on an idle client");
        }

        /// Client `i`'s transport is gone (the broker was told separately).
        fn ended(&mut self, i: usize) {
            let now = self.now;
            let p = &mut self.peers[i];
            // The earliest the broker may have released the session.
            let released = p.stalled_since.unwrap_or(now).min(now);
            p.conn = None;
            p.client.handle_close(now);
            if p.connack {
                p.session_until = p.session_after_close(released);
            } else {
                // The broker may have accepted a CONNECT whose answer never arrived: the
                // client cannot know what session the broker holds.
                p.epoch += 1;
                p.session_until = None;
            }
            p.connack = false;
        }

        fn cut(&mut self, i: usize) {
            if let Some(id) = self.peers[i].conn {
                self.core.close(self.now, id);
                self.ended(i);
            }
        }

        fn flush(&mut self, id: Id, out: &mut [u8]) {
            match self.peer_of(id) {
                Some(i) => {
                    let v = self.peers[i].version;
                    while let Some(n) = self.core.transmit(self.now, id, out) {
                        check_packet(v, &out[..n]);
                        self.peers[i].from_broker.extend_from_slice(&out[..n]);
                    }
                    self.peers[i].wants_write = false;
                    self.peers[i].readable = true;
                }
                None => while self.core.transmit(self.now, id, out).is_some() {},
            }
        }

        fn drive(&mut self, out: &mut [u8]) {
            for round in 0..10_000 {
                let mut progress = false;
                if trace() && round >= 9_997 {
                    for (i, p) in self.peers.iter().enumerate() {
                        eprintln!(
                            "  stuck? client {i}: conn {:?} stalled {} wants {} to_broker {:02x?} from_broker {}",
                            p.conn, p.stalled, p.wants_write, &p.to_broker[..], p.from_broker.len()
                        );
                    }
                }
                for i in 0..self.peers.len() {
                    let Some(id) = self.peers[i].conn else {
                        continue;
                    };
                    let mut gone = false;
                    loop {
                        let p = &mut self.peers[i];
                        match p.client.poll_transmit(self.now, out) {
                            Ok(Some(n)) => {
                                p.to_broker.extend_from_slice(&out[..n]);
                                p.readable = true;
                                progress = true;
                            }
                            // A clean close (its DISCONNECT is out) is not an error.
                            Ok(None) => {
                                gone = p.client.is_closed();
                                break;
                            }
                            Err(_) => {
                                gone = true;
                                break;
                            }
                        }
                    }
                    if self.peers[i].readable && !self.peers[i].to_broker.is_empty() {
                        self.peers[i].readable = false;
                        let mut buf = std::mem::take(&mut self.peers[i].to_broker);
                        self.core.input(self.now, id, &mut buf);
                        self.peers[i].to_broker = buf;
                    }
                    if gone {
                        // The client ended the connection (its DISCONNECT, a keep alive
                        // timeout): the program closes the socket.
                        self.core.close(self.now, id);
                        self.ended(i);
                        progress = true;
                    }
                }
                while let Some(ev) = self.core.event(self.now) {
                    progress = true;
                    if trace() && round >= 9_997 {
                        match ev {
                            Ev::Transmit(id) => eprintln!("  event Transmit({id:?})"),
                            Ev::Close(id) => eprintln!("  event Close({id:?})"),
                            Ev::Resume(id) => eprintln!("  event Resume({id:?})"),
                        }
                    }
                    match ev {
                        Ev::Resume(id) => {
                            if let Some(i) = self.peer_of(id) {
                                self.peers[i].readable = true;
                            }
                        }
                        Ev::Transmit(id) => match self.peer_of(id) {
                            Some(i) if self.peers[i].stalled => self.peers[i].wants_write = true,
                            _ => self.flush(id, out),
                        },
                        Ev::Close(id) => match self.peer_of(id) {
                            Some(i) => {
                                if !self.peers[i].stalled {
                                    self.flush(id, out);
                                    self.read(i);
                                }
                                self.core.close(self.now, id);
                                self.ended(i);
                            }
                            None => {
                                self.flush(id, out);
                                if let Some(k) = self.orphans.iter().position(|o| *o == id) {
                                    self.orphans.swap_remove(k);
                                    self.core.close(self.now, id);
                                }
                            }
                        },
                    }
                }
                for i in 0..self.peers.len() {
                    let p = &self.peers[i];
                    if p.conn.is_some() && !p.stalled && p.wants_write {
                        self.flush(p.conn.unwrap(), out);
                        progress = true;
                    }
                    if self.read(i) {
                        progress = true;
                    }
                }
                if !progress {
                    return;
                }
            }
            panic!("the broker and its clients never settle");
        }

        /// Client `i` reads what arrived and reports its events; whether anything happened.
        fn read(&mut self, i: usize) -> bool {
            let now = self.now;
            let p = &mut self.peers[i];
            if !p.from_broker.is_empty() {
                let r = p.client.handle_input(now, &mut p.from_broker);
                match r {
                    Ok(()) | Err(Error::Disconnected(_)) => {}
                    Err(e) => panic!("client {i} refused the broker's bytes: {e:?}"),
                }
            }
            let mut any = false;
            while let Some(e) = self.peers[i].client.poll_event() {
                any = true;
                self.on_event(i, e);
            }
            any
        }

        fn on_event(&mut self, i: usize, e: Event) {
            if trace() {
                eprintln!("  client {i} @{}: {e:?}", self.tick);
            }
            let tick = self.tick;
            let now = self.now;
            match e {
                Event::Connected(info) => {
                    let p = &mut self.peers[i];
                    let clean = p.client.config().clean_start;
                    let alive = match p.session_until {
                        Some(None) => true,
                        Some(Some(t)) => now < t,
                        None => false,
                    };
                    if !clean && alive {
                        assert!(
                            info.session_present,
                            "client {i}: the broker lost a persistent session that had not expired"
                        );
                    }
                    if !info.session_present && !clean {
                        p.epoch += 1;
                    }
                    p.connack = true;
                    p.session_until = Some(None);
                }
                Event::Message { message, .. } => {
                    if let Some(m) = self.msg_of(&message) {
                        self.peers[i].deliveries.push(Delivery {
                            msg: m,
                            qos: message.qos,
                            retain: message.retain,
                        });
                    }
                }
                Event::Acknowledged {
                    packet_id, reason, ..
                } => {
                    if let Some(m) = self.peers[i].unacked.remove(&packet_id.get()) {
                        if !reason.is_error() {
                            self.msgs[m].acked = Some(tick);
                        }
                    }
                }
                Event::SessionLost { messages } => {
                    for message in messages {
                        if let Some(m) = self.msg_of(&message) {
                            self.peers[i].unacked.retain(|_, v| *v != m);
                        }
                    }
                }
                Event::Dropped { packet_id, .. } => {
                    if let Some(id) = packet_id {
                        self.peers[i].unacked.remove(&id.get());
                    }
                }
                Event::Subscribed { packet_id, reasons } => {
                    let p = &mut self.peers[i];
                    if let Some(k) = p.pending_subs.iter().position(|s| s.0 == packet_id) {
                        let (_, filter, requested) = p.pending_subs.swap_remove(k);
                        let granted = match reasons.first() {
                            Some(ReasonCode::Success) => Some(QoS::AtMostOnce),
                            Some(ReasonCode::GrantedQoS1) => Some(QoS::AtLeastOnce),
                            Some(ReasonCode::GrantedQoS2) => Some(QoS::ExactlyOnce),
                            _ => None,
                        };
                        if let Some(g) = granted {
                            // [MQTT-3.9.3-...] never above what was asked.
                            assert!(g <= requested, "granted {g:?} above {requested:?}");
                            p.subs.push(SubInst {
                                filter,
                                granted: g,
                                since: tick,
                                until: None,
                                epoch: p.epoch,
                            });
                        }
                    }
                }
                _ => {}
            }
        }

        fn subscribe(&mut self, i: usize, filter: u8, q: u8) {
            let tick = self.tick;
            let p = &mut self.peers[i];
            if p.client.is_connected() {
                let f = usize::from(filter) % FILTERS.len();
                let q = qos(q);
                if let Ok(id) =
                    p.client
                        .subscribe(self.now, &[(FILTERS[f], SubscriptionOptions::qos(q))], None)
                {
                    // [MQTT-3.8.4-3] it replaces an identical filter's subscription.
                    for s in p.subs.iter_mut().filter(|s| s.filter == f) {
                        s.until.get_or_insert(tick);
                    }
                    p.pending_subs.push((id, f, q));
                }
            }
        }

        fn advance(&mut self, to: Instant, out: &mut [u8]) {
            self.now = self.now.max(to);
            for p in &mut self.peers {
                if p.conn.is_some() {
                    p.client.handle_timeout(self.now);
                }
            }
            self.core.timeout(self.now);
            self.drive(out);
        }
    }

    fn check_packet(v: ProtocolVersion, bytes: &[u8]) {
        let opts = DecodeOptions::new(v).sender(Sender::Server);
        match decode(bytes, &opts) {
            Ok(Status::Complete { consumed, .. }) if consumed == bytes.len() => {}
            other => panic!("broker wrote an undecodable {v:?} packet ({other:?}): {bytes:02x?}"),
        }
    }

    pub fn run(input: Scenario, out: &mut [u8]) {
        let limits = Limits {
            max_queued: usize::from(input.max_queued % 64) + 1,
            max_inflight: u16::from(input.max_inflight % 8) + 1,
            receive_maximum: 64,
            max_offline_queue: usize::from(input.max_offline_queue % 64) + 1,
            max_packet_size: 1 << 20,
            sys: false,
            max_connections: 64,
            decisions: input.decisions.iter().take(64).copied().collect(),
            gentle: true,
            decision_timeout_ms: 10_000,
        };
        let mut w = World {
            core: Core::new(&limits, Instant::ZERO),
            now: Instant::ZERO,
            tick: 0,
            peers: Vec::new(),
            orphans: Vec::new(),
            msgs: Vec::new(),
        };
        for (i, spec) in input.clients.iter().take(5).enumerate() {
            let version = LEVELS[usize::from(spec.level) % 3];
            let expiry = if version.is_v5() {
                EXPIRIES[usize::from(spec.expiry) % EXPIRIES.len()]
            } else {
                0
            };
            let config = ClientConfig {
                keep_alive: [0, 0, 5, 60][usize::from(spec.keep_alive) % 4],
                receive_maximum: u16::from(spec.receive_maximum % 8) + 1,
                session_expiry_interval: expiry,
                ..ClientConfig::new(version, format!("c{i}"))
            };
            if trace() {
                eprintln!(
                    "client {i}: {version:?}, expiry {expiry}, keep alive {}, receive maximum {}",
                    config.keep_alive, config.receive_maximum
                );
            }
            w.peers.push(Peer {
                client: Client::with_session(config, SessionState::default()),
                version,
                expiry,
                conn: None,
                to_broker: BytesMut::new(),
                from_broker: BytesMut::new(),
                stalled: false,
                wants_write: false,
                readable: false,
                connack: false,
                stalled_since: None,
                session_until: None,
                epoch: 0,
                subs: Vec::new(),
                pending_subs: Vec::new(),
                unacked: BTreeMap::new(),
                deliveries: Vec::new(),
                seq: 0,
                offline: Vec::new(),
            });
        }
        if w.peers.is_empty() {
            return;
        }
        let n = w.peers.len();
        for (i, spec) in input.clients.iter().take(n).enumerate() {
            if spec.start {
                w.connect(i, true);
            }
        }
        w.drive(out);
        w.tick += 1;
        for (i, spec) in input.clients.iter().take(n).enumerate() {
            if let Some((filter, q)) = spec.subscribe {
                w.subscribe(i, filter, q);
            }
        }
        w.drive(out);
        let pick = |c: u8| usize::from(c) % n;
        for op in input.ops.into_iter().take(128) {
            w.tick += 1;
            w.note_presence();
            if trace() {
                eprintln!("@{} t={:?}: {op:?}", w.tick, w.now);
            }
            match op {
                Op::Connect { c, clean } => {
                    let i = pick(c);
                    if w.peers[i].conn.is_none() {
                        w.connect(i, clean);
                    }
                }
                Op::Disconnect { c } => {
                    let i = pick(c);
                    if w.peers[i].client.is_connected() {
                        let _ = w.peers[i].client.disconnect(w.now, ReasonCode::Success);
                    }
                }
                Op::Cut { c } => w.cut(pick(c)),
                Op::Takeover { c, clean } => {
                    let i = pick(c);
                    if let Some(old) = w.peers[i].conn {
                        if w.peers[i].connack {
                            w.orphans.push(old);
                            w.peers[i].conn = None;
                            w.peers[i].client.handle_close(w.now);
                            // The session lives on the old connection: no end recorded,
                            // unless that connection stalled: then the broker may have
                            // closed it already (its keep alive ran out unread) and
                            // released the session, the close waiting for the socket.
                            if let Some(since) = w.peers[i].stalled_since {
                                let p = &mut w.peers[i];
                                p.session_until = p.session_after_close(since);
                            }
                            w.connect(i, clean);
                        }
                    }
                }
                Op::Subscribe { c, filter, qos: q } => w.subscribe(pick(c), filter, q),
                Op::Unsubscribe { c, filter } => {
                    let i = pick(c);
                    let tick = w.tick;
                    let p = &mut w.peers[i];
                    if p.client.is_connected() {
                        let f = usize::from(filter) % FILTERS.len();
                        if p.client.unsubscribe(w.now, &[FILTERS[f]]).is_ok() {
                            for s in p.subs.iter_mut().filter(|s| s.filter == f) {
                                s.until.get_or_insert(tick);
                            }
                        }
                    }
                }
                Op::Publish {
                    c,
                    topic,
                    qos: q,
                    retain,
                    count,
                } => {
                    let i = pick(c);
                    for _ in 0..=count % 4 {
                        let seq = w.peers[i].seq;
                        let t = usize::from(topic) % TOPICS.len();
                        // [MQTT-3.3.2-2] [MQTT-4.7.3-1] no message holds an invalid name.
                        let Ok(name) = TopicBuf::from_static(TOPICS[t]) else {
                            break;
                        };
                        let mut m = Message::new(name, payload(i, seq), qos(q));
                        m.retain = retain;
                        let now = w.now;
                        match w.peers[i].client.publish(now, m) {
                            Ok(pid) => {
                                w.peers[i].seq += 1;
                                w.msgs.push(Msg {
                                    publisher: i,
                                    seq,
                                    topic: t,
                                    qos: qos(q),
                                    queued: w.tick,
                                    acked: None,
                                });
                                if let Some(pid) = pid {
                                    let m = w.msgs.len() - 1;
                                    w.peers[i].unacked.insert(pid.get(), m);
                                }
                            }
                            Err(_) => break,
                        }
                    }
                }
                Op::Stall { c, on } => {
                    let now = w.now;
                    let p = &mut w.peers[pick(c)];
                    p.stalled = on;
                    if on && p.conn.is_some() {
                        p.stalled_since.get_or_insert(now);
                    }
                }
                Op::Advance { amount, secs } => {
                    let ms = if secs {
                        u64::from(amount % 4000) * 1000
                    } else {
                        u64::from(amount)
                    };
                    let to = w.now + Duration::from_millis(ms);
                    w.advance(to, out);
                    continue;
                }
                Op::AdvanceToTimeout => {
                    if let Some(t) = w.core.next_timeout() {
                        w.advance(t, out);
                    }
                    continue;
                }
            }
            w.drive(out);
        }

        // Settle: everyone reads again and comes back with its session; what waits for a
        // decision is accepted.
        w.tick += 1;
        w.note_presence();
        for p in &mut w.peers {
            p.stalled = false;
        }
        w.core.permissive(w.now);
        w.drive(out);
        for round in 0..3 {
            for i in 0..n {
                if w.peers[i].conn.is_none() {
                    w.connect(i, false);
                }
            }
            w.drive(out);
            if round == 0 {
                assert!(w.peers.iter().all(|p| p.conn.is_some()));
            }
        }
        // Permissive now: nothing may be left waiting.
        assert_eq!(
            w.core.pending_requests(),
            0,
            "decisions left after the run settled"
        );
        check(&w, &limits);
    }

    fn check(w: &World, limits: &Limits) {
        let dropped = w.core.dropped();
        // An offline queue can only have been full if more messages were published than it
        // holds.
        let could_overflow = dropped > 0 && w.msgs.len() > limits.max_offline_queue;
        if trace() {
            let acked = w.msgs.iter().filter(|m| m.acked.is_some()).count();
            eprintln!(
                "{} messages, {acked} acknowledged; broker dropped {dropped}",
                w.msgs.len(),
            );
        }
        for (si, s) in w.peers.iter().enumerate() {
            let mut first: BTreeMap<usize, usize> = BTreeMap::new();
            let mut qos2: BTreeMap<usize, usize> = BTreeMap::new();
            for (k, d) in s.deliveries.iter().enumerate() {
                if d.retain {
                    // A retained copy on subscribe is another delivery of the same message.
                    continue;
                }
                let m = &w.msgs[d.msg];
                assert!(d.qos <= m.qos, "delivered above the published QoS");
                first.entry(d.msg).or_insert(k);
                if d.qos == QoS::ExactlyOnce {
                    let c = qos2.entry(d.msg).or_default();
                    *c += 1;
                    assert_eq!(
                        *c, 1,
                        "client {si} got message {}:{} twice at QoS 2",
                        m.publisher, m.seq
                    );
                }
            }
            // Order: per publisher, per published and delivered QoS.
            let mut last: BTreeMap<(usize, QoS, QoS), u32> = BTreeMap::new();
            let mut firsts: Vec<(usize, usize)> = first.iter().map(|(m, k)| (*k, *m)).collect();
            firsts.sort_unstable();
            for (k, mi) in firsts {
                let m = &w.msgs[mi];
                let key = (m.publisher, m.qos, s.deliveries[k].qos);
                if let Some(prev) = last.insert(key, m.seq) {
                    assert!(
                        prev < m.seq,
                        "client {si} got {}:{} after {}:{prev} ({:?})",
                        m.publisher,
                        m.seq,
                        m.publisher,
                        key
                    );
                }
            }
            let mut checked = 0;
            for (mi, m) in w.msgs.iter().enumerate() {
                let Some(acked) = m.acked else { continue };
                if m.qos == QoS::AtMostOnce {
                    continue;
                }
                let name = TopicName::new(TOPICS[m.topic]).unwrap();
                let expected = s.subs.iter().any(|sub| {
                    sub.epoch == s.epoch
                        && sub.granted >= QoS::AtLeastOnce
                        && sub.since < m.queued
                        && sub.until.map_or(true, |u| acked < u)
                        && matches(TopicFilter::new(FILTERS[sub.filter]).unwrap(), name)
                });
                // Routed while the session may have been offline, into a bounded queue.
                let offline_then = could_overflow
                    && s.offline
                        .iter()
                        .any(|&(from, to)| from <= acked && to >= m.queued);
                if expected && !offline_then {
                    checked += 1;
                    assert!(
                        first.contains_key(&mi),
                        "client {si} never got {:?} message {}:{} on {} acknowledged at @{acked} \
                         (broker dropped {dropped})",
                        m.qos,
                        m.publisher,
                        m.seq,
                        TOPICS[m.topic],
                    );
                }
            }
            if trace() {
                eprintln!(
                    "client {si}: {} deliveries, {checked} acknowledged messages owed and received",
                    s.deliveries.len()
                );
            }
        }
    }
}
use scenario::Scenario;
