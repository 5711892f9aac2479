//! Client machines talking to the broker core through in-memory pipes.
#![allow(dead_code, unused_imports, unreachable_pub)]

use bytes::BytesMut;
use mqtt_codec::{
    Packet, PacketId, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionId,
    SubscriptionOptions, Topic,
};

use mqtt_broker::*;
use mqtt_state::*;

pub const V31: ProtocolVersion = ProtocolVersion::V3_1;
pub const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
pub const V5: ProtocolVersion = ProtocolVersion::V5;

pub struct Peer {
    pub client: Client,
    pub id: Option<ConnectionId>,
    pub to_broker: BytesMut,
    pub from_broker: BytesMut,
    pub events: Vec<Event>,
}

pub struct Net<H: Hooks> {
    pub broker: Broker<H>,
    pub peers: Vec<Peer>,
    pub now: Instant,
    /// Every Close the broker asked for, with its reason.
    pub closes: Vec<(ConnectionId, CloseReason)>,
    /// Every Pause and Resume, in order: (connection, paused).
    pub pauses: Vec<(ConnectionId, bool)>,
    /// Connections the test keeps from reading what the broker sends (a stalled
    /// subscriber): their Transmit events are ignored.
    pub stalled: Vec<ConnectionId>,
    /// A durable broker's store: what `poll_store` handed out and `commit` applied.
    pub store: Option<MemStore>,
    /// Whether `drive` commits each batch as soon as there is one (else the test calls
    /// `commit`).
    pub auto_commit: bool,
    /// Connections whose bytes the test moves itself (a bridge's remote leg and the
    /// connection it reaches): what the broker sent on each, and whether it was closed.
    pub raw: Vec<Raw>,
}

/// A connection the test moves bytes for itself.
pub struct Raw {
    pub id: ConnectionId,
    pub out: BytesMut,
    pub closed: bool,
}

/// Stored entries by table and key.
pub type MemStore = std::collections::BTreeMap<(Table, Vec<u8>), Vec<u8>>;

/// Applies a batch as a store does.
pub fn apply(store: &mut MemStore, ops: &[StoreOp]) {
    for op in ops {
        op.apply(store);
    }
}

/// A broker restored from `store` at `now`.
pub fn restored(
    config: BrokerConfig,
    store: &MemStore,
    now: Instant,
) -> Result<Broker<AllowAll>, mqtt_broker::Error> {
    let mut b = Broker::new(config, now);
    for table in Table::ALL {
        for ((t, k), v) in store.iter().filter(|((t, _), _)| *t == table) {
            b.restore(now, *t, k, v)?;
        }
    }
    b.finish_restore(now);
    Ok(b)
}

impl Net<AllowAll> {
    /// A broker with `Persistence::Sync` and an empty store.
    pub fn durable() -> Self {
        let mut net = Self::with(Broker::new(durable_config(), Instant::ZERO));
        net.store = Some(MemStore::new());
        net
    }

    /// The broker "crashes" (whatever was not committed is lost, every transport drops)
    /// and a new one is restored from the store `ms` milliseconds later.
    pub fn crash_and_restore(&mut self, ms: u64) {
        self.now = self.now + Duration::from_millis(ms);
        for p in &mut self.peers {
            p.id = None;
            p.to_broker.clear();
            p.from_broker.clear();
            p.client.handle_close(self.now);
            while let Some(e) = p.client.poll_event() {
                p.events.push(e);
            }
        }
        let config = self.broker.config().clone();
        self.broker = restored(config, self.store.as_ref().unwrap(), self.now).unwrap();
        self.drive();
    }

    pub fn new() -> Self {
        Self::with(Broker::new(
            BrokerConfig {
                sys_interval: None,
                ..BrokerConfig::default()
            },
            Instant::ZERO,
        ))
    }
}

impl<H: Hooks> Net<H> {
    pub fn with(broker: Broker<H>) -> Self {
        Self {
            broker,
            peers: Vec::new(),
            now: Instant::ZERO,
            closes: Vec::new(),
            pauses: Vec::new(),
            stalled: Vec::new(),
            store: None,
            auto_commit: true,
            raw: Vec::new(),
        }
    }

    /// Writes the broker's pending batch into the store and reports it durable; whether
    /// there was one.
    pub fn commit(&mut self) -> bool {
        let Some(store) = self.store.as_mut() else {
            return false;
        };
        let mut ops = Vec::new();
        let Some(batch) = self.broker.poll_store(&mut ops) else {
            return false;
        };
        apply(store, &ops);
        self.broker.handle_durable(self.now, batch);
        true
    }

    /// Adds and connects a client; returns its index.
    pub fn join(&mut self, config: ClientConfig) -> usize {
        self.peers.push(Peer {
            client: Client::new(config),
            id: None,
            to_broker: BytesMut::new(),
            from_broker: BytesMut::new(),
            events: Vec::new(),
        });
        let i = self.peers.len() - 1;
        self.reconnect(i);
        i
    }

    pub fn reconnect(&mut self, i: usize) {
        let id = self.broker.open(self.now);
        let p = &mut self.peers[i];
        p.id = Some(id);
        p.to_broker.clear();
        p.from_broker.clear();
        p.client.connect(self.now).unwrap();
        self.drive();
    }

    /// Drops client `i`'s transport without DISCONNECT.
    pub fn cut(&mut self, i: usize) {
        if let Some(id) = self.peers[i].id.take() {
            self.broker.handle_close(self.now, id);
        }
        self.peers[i].client.handle_close(self.now);
        self.drive();
    }

    pub fn drive(&mut self) {
        let mut out = vec![0u8; 1 << 16];
        for _ in 0..10_000 {
            let mut progress = false;
            for p in &mut self.peers {
                let Some(id) = p.id else { continue };
                while let Ok(Some(n)) = p.client.poll_transmit(self.now, &mut out) {
                    p.to_broker.extend_from_slice(&out[..n]);
                    progress = true;
                }
                if !p.to_broker.is_empty() {
                    self.broker.handle_input(self.now, id, &mut p.to_broker);
                }
            }
            if let (true, Some(store)) = (self.auto_commit, self.store.as_mut()) {
                let mut ops = Vec::new();
                if let Some(batch) = self.broker.poll_store(&mut ops) {
                    apply(store, &ops);
                    self.broker.handle_durable(self.now, batch);
                    progress = true;
                }
            }
            while let Some(e) = self.broker.poll_event() {
                progress = true;
                let (id, close) = match e {
                    BrokerEvent::Transmit(id) => (id, false),
                    BrokerEvent::Close { id, reason } => {
                        self.closes.push((id, reason));
                        (id, true)
                    }
                    BrokerEvent::Pause(id) => {
                        self.pauses.push((id, true));
                        continue;
                    }
                    BrokerEvent::Resume(id) => {
                        self.pauses.push((id, false));
                        continue;
                    }
                    _ => continue,
                };
                if !close && self.stalled.contains(&id) {
                    continue;
                }
                if let Some(r) = self.raw.iter_mut().find(|r| r.id == id && !r.closed) {
                    while let Ok(Some(n)) = self.broker.poll_transmit(self.now, id, &mut out) {
                        r.out.extend_from_slice(&out[..n]);
                    }
                    if close {
                        r.closed = true;
                        self.broker.handle_close(self.now, id);
                    }
                    continue;
                }
                let Some(p) = self.peers.iter_mut().find(|p| p.id == Some(id)) else {
                    continue;
                };
                while let Ok(Some(n)) = self.broker.poll_transmit(self.now, id, &mut out) {
                    p.from_broker.extend_from_slice(&out[..n]);
                }
                if close {
                    let _ = p.client.handle_input(self.now, &mut p.from_broker);
                    p.id = None;
                    p.client.handle_close(self.now);
                    self.broker.handle_close(self.now, id);
                }
            }
            for p in &mut self.peers {
                if !p.from_broker.is_empty() {
                    let _ = p.client.handle_input(self.now, &mut p.from_broker);
                }
                while let Some(e) = p.client.poll_event() {
                    p.events.push(e);
                    progress = true;
                }
            }
            if !progress {
                return;
            }
        }
        panic!("no quiescence");
    }

    /// Lets client `i` read again after [`Net::stalled`] held it: pulls what the broker
    /// kept for it, then drives.
    pub fn unstall(&mut self, i: usize) {
        let id = self.peers[i].id.expect("connected");
        self.stalled.retain(|s| *s != id);
        let mut out = vec![0u8; 1 << 16];
        while let Ok(Some(n)) = self.broker.poll_transmit(self.now, id, &mut out) {
            self.peers[i].from_broker.extend_from_slice(&out[..n]);
        }
        self.drive();
    }

    /// Whether client `i` is paused now, by the Pause and Resume events seen.
    pub fn paused(&self, i: usize) -> bool {
        let Some(id) = self.peers[i].id else {
            return false;
        };
        self.pauses
            .iter()
            .rev()
            .find(|(p, _)| *p == id)
            .is_some_and(|(_, paused)| *paused)
    }

    pub fn advance(&mut self, ms: u64) {
        self.now = self.now + Duration::from_millis(ms);
        for p in &mut self.peers {
            p.client.handle_timeout(self.now);
        }
        self.broker.handle_timeout(self.now);
        self.drive();
    }

    pub fn publish(
        &mut self,
        i: usize,
        topic: &'static str,
        payload: &'static str,
        qos: QoS,
        retain: bool,
    ) {
        let mut m = Message::new(TopicBuf::from_static(topic).unwrap(), payload, qos);
        m.retain = retain;
        self.peers[i].client.publish(self.now, m).unwrap();
        self.drive();
    }

    pub fn subscribe(&mut self, i: usize, filter: &str, options: SubscriptionOptions) {
        self.peers[i]
            .client
            .subscribe(self.now, &[(filter, options)], None)
            .unwrap();
        self.drive();
    }

    /// (topic, payload, qos, retain) of every message client `i` received, then cleared.
    pub fn take(&mut self, i: usize) -> Vec<(String, String, QoS, bool)> {
        let evs = core::mem::take(&mut self.peers[i].events);
        evs.into_iter()
            .filter_map(|e| match e {
                Event::Message { message, .. } => Some((
                    String::from(message.topic.as_str()),
                    String::from_utf8(message.payload.to_vec()).unwrap(),
                    message.qos,
                    message.retain,
                )),
                _ => None,
            })
            .collect()
    }

    pub fn events(&mut self, i: usize) -> Vec<Event> {
        core::mem::take(&mut self.peers[i].events)
    }

    /// The reason codes of every SUBACK and UNSUBACK client `i` received, then cleared.
    pub fn ack_codes(&mut self, i: usize) -> Vec<Vec<ReasonCode>> {
        self.events(i)
            .into_iter()
            .filter_map(|e| match e {
                Event::Subscribed { reasons, .. } | Event::Unsubscribed { reasons, .. } => {
                    Some(reasons)
                }
                _ => None,
            })
            .collect()
    }

    pub fn publish_message(&mut self, i: usize, m: Message) {
        self.peers[i].client.publish(self.now, m).unwrap();
        self.drive();
    }

    /// (packet id, DUP, message) of every message client `i` received, then cleared.
    pub fn deliveries(&mut self, i: usize) -> Vec<(Option<PacketId>, bool, Message)> {
        self.events(i)
            .into_iter()
            .filter_map(|e| match e {
                Event::Message {
                    packet_id,
                    dup,
                    message,
                } => Some((packet_id, dup, message)),
                _ => None,
            })
            .collect()
    }

    /// Sends `packet` to the broker as client `i`, behind its machine's back.
    pub fn inject(&mut self, i: usize, version: ProtocolVersion, packet: &Packet<'_>) {
        let bytes = packet.encode_to_vec(version).unwrap();
        self.peers[i].to_broker.extend_from_slice(&bytes);
        self.drive();
    }
}

pub fn durable_config() -> BrokerConfig {
    BrokerConfig {
        sys_interval: None,
        persistence: Persistence::Sync,
        max_offline_queue: 100_000,
        ..BrokerConfig::default()
    }
}

/// What the last CONNACK client `i` of `net` received said (its events stay).
pub fn session_present<H: Hooks>(net: &Net<H>, i: usize) -> bool {
    net.peers[i]
        .events
        .iter()
        .rev()
        .find_map(|e| match e {
            Event::Connected(info) => Some(info.session_present),
            _ => None,
        })
        .expect("connected")
}

pub fn q(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions::qos(qos)
}

pub fn got(topic: &str, payload: &str, qos: QoS, retain: bool) -> (String, String, QoS, bool) {
    (String::from(topic), String::from(payload), qos, retain)
}

pub fn persistent(v: ProtocolVersion, id: &'static str) -> ClientConfig {
    ClientConfig {
        clean_start: false,
        session_expiry_interval: 3600,
        ..ClientConfig::new(v, id)
    }
}

// ---- Forwarding, delivery and subscription management ---------------------------------

pub fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

pub fn text(m: &Message) -> String {
    String::from_utf8(m.payload.to_vec()).unwrap()
}

pub fn broker_with(server: impl FnOnce(&mut ServerConfig)) -> Broker<AllowAll> {
    let mut config = BrokerConfig {
        sys_interval: None,
        ..BrokerConfig::default()
    };
    server(&mut config.server);
    Broker::new(config, Instant::ZERO)
}

/// Acknowledges everything client `i` (with manual acks) receives until nothing more comes;
/// returns (payload, qos, retain, dup) in arrival order.
pub fn drain_acking<H: Hooks>(net: &mut Net<H>, i: usize) -> Vec<(String, QoS, bool, bool)> {
    let mut all = Vec::new();
    loop {
        let got = net.deliveries(i);
        if got.is_empty() {
            return all;
        }
        for (id, dup, m) in got {
            if let Some(id) = id {
                net.peers[i].client.ack(net.now, id);
            }
            all.push((text(&m), m.qos, m.retain, dup));
        }
        net.drive();
    }
}

pub struct Strict;

impl Hooks for Strict {
    fn authenticate(&mut self, _: &Context<'_>, request: &ConnectRequest) -> Verdict {
        match request.password.as_deref() {
            Some(b"secret") => Verdict::Allow,
            _ => Verdict::Deny(ReasonCode::BadUserNameOrPassword),
        }
    }
    fn authorize_publish(
        &mut self,
        _: &Context<'_>,
        topic: mqtt_topic::TopicName<'_>,
        _: QoS,
        _: bool,
    ) -> Verdict {
        if topic.as_str().starts_with("admin") {
            Verdict::Deny(ReasonCode::NotAuthorized)
        } else {
            Verdict::Allow
        }
    }
    fn authorize_subscribe(
        &mut self,
        _: &Context<'_>,
        filter: mqtt_topic::TopicFilter<'_>,
        _: QoS,
    ) -> Verdict {
        if filter.as_str().starts_with("admin") {
            Verdict::Deny(ReasonCode::NotAuthorized)
        } else {
            Verdict::Allow
        }
    }
}

/// A challenge-response method: CONNECT data "hello", challenge "nonce", answer "nonce+key".
pub struct Challenge;

impl Hooks for Challenge {
    fn enhanced_auth(&mut self, _: &Context<'_>, method: &str, data: Option<&[u8]>) -> AuthStep {
        match (method, data) {
            ("CR", Some(b"hello")) => AuthStep::Continue(bytes::Bytes::from_static(b"nonce")),
            ("CR", Some(b"nonce+key")) => AuthStep::Success,
            ("CR", _) => AuthStep::Fail(ReasonCode::NotAuthorized),
            _ => AuthStep::Fail(ReasonCode::BadAuthenticationMethod),
        }
    }
}

/// `packets` encoded back to back at `version`, as a client's socket would deliver them.
pub fn wire(packets: &[mqtt_codec::Packet<'_>], version: ProtocolVersion) -> BytesMut {
    let mut bytes = Vec::new();
    for p in packets {
        bytes.extend(p.encode_to_vec(version).unwrap());
    }
    BytesMut::from(&bytes[..])
}

/// A CONNECT from `client_id` with keep alive `keep_alive` seconds.
pub fn connect(version: ProtocolVersion, client_id: &str, keep_alive: u16) -> Packet<'_> {
    let mut c = mqtt_codec::Connect::new(version, client_id);
    c.keep_alive = keep_alive;
    Packet::Connect(c)
}

/// Runs the broker's events as an adapter does: drains output (discarded), closes what it
/// is asked to close; returns the closes, with their reasons.
pub fn run_events<H: Hooks>(
    broker: &mut Broker<H>,
    now: Instant,
) -> Vec<(ConnectionId, CloseReason)> {
    let mut out = vec![0u8; 1 << 16];
    let mut closes = Vec::new();
    while let Some(e) = broker.poll_event() {
        match e {
            BrokerEvent::Transmit(id) => {
                while let Ok(Some(_)) = broker.poll_transmit(now, id, &mut out) {}
            }
            BrokerEvent::Close { id, reason } => {
                while let Ok(Some(_)) = broker.poll_transmit(now, id, &mut out) {}
                closes.push((id, reason));
                broker.handle_close(now, id);
            }
            _ => {}
        }
    }
    closes
}
