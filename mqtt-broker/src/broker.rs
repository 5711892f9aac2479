//! A sans-IO broker core: every connection's [`ServerSession`], the sessions that outlive
//! them, routing through the subscription tree, retained messages, wills and `$SYS`.
//!
//! The embedding program owns the sockets. It tells the broker when a connection opens
//! ([`Broker::open`]), what bytes arrived ([`Broker::handle_input`]), when it closed
//! ([`Broker::handle_close`]) and what time it is ([`Broker::handle_timeout`]); it drains
//! bytes to send per connection ([`Broker::poll_transmit`]), and [`Broker::poll_event`] says
//! which connections have output or must be closed.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::ops::{Index, IndexMut};

use bytes::{Bytes, BytesMut};
use mqtt_codec::{
    PacketId, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionId, SubscriptionOptions,
};
use mqtt_topic::{Match, RetainedStore, Subscription, SubscriptionTree, TopicFilter, TopicName};

use mqtt_state::{
    Accept, ConnectRequest, Duration, Event, Instant, Message, Outgoing, ServerConfig,
    ServerSession, SessionState, SubscriptionIdList, Utf8Bytes,
};

/// A connection, as the broker names it to the embedding program.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnectionId {
    index: u32,
    generation: u32,
}

/// What the embedding program must do for a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerEvent {
    /// The connection has bytes to send: call [`Broker::poll_transmit`] for it.
    Transmit(ConnectionId),
    /// Send what is pending, then close the connection and call [`Broker::handle_close`].
    Close(ConnectionId),
}

/// Authentication and authorization, implemented by the embedding broker. Every method
/// has a permissive default.
pub trait Hooks {
    /// Decides on a CONNECT; `Err` refuses it with that reason code (Bad user name or
    /// password, Not authorized, Banned, ...). 3.1.1 clients get the nearest return code.
    fn authenticate(&mut self, request: &ConnectRequest) -> Result<(), ReasonCode> {
        let _ = request;
        Ok(())
    }

    /// A step of enhanced authentication: the method and data of a CONNECT that names a
    /// method, then of each AUTH the client sends, also when it re-authenticates. The
    /// default supports no method ([MQTT-4.12.0-1]: Bad authentication method).
    fn enhanced_auth(&mut self, client_id: &str, method: &str, data: Option<&[u8]>) -> AuthStep {
        let _ = (client_id, method, data);
        AuthStep::Fail(ReasonCode::BadAuthenticationMethod)
    }

    /// Whether `client_id` (logged in as `username`) may publish to `topic`.
    fn authorize_publish(&mut self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        let _ = (client_id, username, topic);
        true
    }

    /// Whether `client_id` (logged in as `username`) may subscribe to `filter`.
    fn authorize_subscribe(
        &mut self,
        client_id: &str,
        username: Option<&str>,
        filter: &str,
    ) -> bool {
        let _ = (client_id, username, filter);
        true
    }
}

/// The answer to a step of 5.0 enhanced authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Authenticated: the connection is accepted (or the re-authentication succeeds).
    Success,
    /// Send this challenge in an AUTH with Continue authentication and wait for the answer.
    Continue(Bytes),
    /// Refused with this reason code (CONNACK, or DISCONNECT for a re-authentication).
    Fail(ReasonCode),
}

/// [`Hooks`] that allow everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Hooks for AllowAll {}

/// Broker-wide settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// What each connection accepts and announces in CONNACK.
    pub server: ServerConfig,
    /// Connections beyond this are refused with Server busy / Server unavailable.
    pub max_connections: usize,
    /// Messages kept for a disconnected persistent session. When full, new messages for
    /// it are dropped (and counted in `$SYS/broker/messages/dropped`); QoS 0 messages are
    /// never queued for an offline session.
    pub max_offline_queue: usize,
    /// Longest session expiry granted, in seconds.
    pub max_session_expiry: u32,
    /// Publish `$SYS/broker/...` statistics this often; `None` turns them off.
    pub sys_interval: Option<Duration>,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        Self {
            server: ServerConfig {
                manual_acks: true,
                ..ServerConfig::default()
            },
            max_connections: 100_000,
            max_offline_queue: 1000,
            max_session_expiry: u32::MAX,
            sys_interval: Some(Duration::from_secs(10)),
        }
    }
}

/// Counters published under `$SYS/broker/`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections with a session.
    pub clients_connected: usize,
    /// PUBLISH received from clients.
    pub messages_received: u64,
    /// Messages handed to sessions for delivery.
    pub messages_sent: u64,
    /// Messages dropped because an offline queue was full.
    pub messages_dropped: u64,
    /// Subscriptions in the tree.
    pub subscriptions: usize,
    /// Retained messages stored.
    pub retained: usize,
}

/// A subscription's options as the router uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct SubOpts {
    qos: QoS,
    no_local: bool,
    retain_as_published: bool,
    id: Option<SubscriptionId>,
}

struct Conn {
    generation: u32,
    session: ServerSession,
    /// The session this connection serves, once accepted (an index into `sessions`,
    /// which the subscription tree already keeps as `u32`); [`NO_OWNER`] before. A plain
    /// `u32` rather than an `Option`, which would take 8 bytes in every connection.
    owner: u32,
    /// Asked the program to close it.
    closing: bool,
    /// Boxed, all in one: many connections have none of it, and every connection would
    /// carry the pointers inline.
    extra: Option<Box<ConnExtra>>,
}

/// `Conn::owner` of a connection that serves no session.
const NO_OWNER: u32 = u32::MAX;

/// What only some connections have.
#[derive(Default)]
struct ConnExtra {
    username: Option<Utf8Bytes>,
    /// Boxed in turn: a connection with a user name but no will would carry the message.
    will: Option<Box<(Message, u32)>>,
    /// A CONNECT waiting for enhanced authentication to finish.
    authenticating: Option<Box<ConnectRequest>>,
}

impl Conn {
    fn owner(&self) -> Option<usize> {
        (self.owner != NO_OWNER).then_some(self.owner as usize)
    }

    fn take_owner(&mut self) -> Option<usize> {
        let owner = self.owner();
        self.owner = NO_OWNER;
        owner
    }

    fn username(&self) -> Option<&Utf8Bytes> {
        self.extra.as_ref()?.username.as_ref()
    }

    fn authenticating(&self) -> Option<&ConnectRequest> {
        self.extra.as_ref()?.authenticating.as_deref()
    }

    fn extra_mut(&mut self) -> &mut ConnExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    fn take_will(&mut self) -> Option<(Message, u32)> {
        let will = self.extra.as_mut()?.will.take();
        self.tidy_extra();
        will.map(|w| *w)
    }

    fn take_authenticating(&mut self) -> Option<ConnectRequest> {
        let req = self.extra.as_mut()?.authenticating.take();
        self.tidy_extra();
        req.map(|r| *r)
    }

    /// Drops the extra box once it holds nothing.
    fn tidy_extra(&mut self) {
        if self
            .extra
            .as_ref()
            .is_some_and(|e| e.username.is_none() && e.will.is_none() && e.authenticating.is_none())
        {
            self.extra = None;
        }
    }
}

/// A slab of slots, allocated in chunks of a fixed size: a `Vec` doubles, so that up to
/// half of it is spare capacity, while here at most one chunk is, and growing never moves
/// what is stored.
struct Slots<T> {
    chunks: Vec<Vec<T>>,
}

/// Slots per chunk of [`Slots`].
const CHUNK: usize = 64;

impl<T> Slots<T> {
    const fn new() -> Self {
        Self { chunks: Vec::new() }
    }

    fn len(&self) -> usize {
        match self.chunks.last() {
            Some(last) => (self.chunks.len() - 1) * CHUNK + last.len(),
            None => 0,
        }
    }

    /// Appends `item`, returning its index.
    fn push(&mut self, item: T) -> usize {
        let index = self.len();
        match self.chunks.last_mut() {
            Some(last) if last.len() < CHUNK => last.push(item),
            _ => {
                // Exactly one chunk's capacity: `with_capacity` does not round up.
                let mut chunk = Vec::with_capacity(CHUNK);
                chunk.push(item);
                self.chunks.push(chunk);
            }
        }
        index
    }

    fn get(&self, index: usize) -> Option<&T> {
        self.chunks.get(index / CHUNK)?.get(index % CHUNK)
    }

    fn get_mut(&mut self, index: usize) -> Option<&mut T> {
        self.chunks.get_mut(index / CHUNK)?.get_mut(index % CHUNK)
    }

    fn iter(&self) -> impl Iterator<Item = &T> {
        self.chunks.iter().flatten()
    }
}

impl<T> Index<usize> for Slots<T> {
    type Output = T;
    fn index(&self, index: usize) -> &T {
        &self.chunks[index / CHUNK][index % CHUNK]
    }
}

impl<T> IndexMut<usize> for Slots<T> {
    fn index_mut(&mut self, index: usize) -> &mut T {
        &mut self.chunks[index / CHUNK][index % CHUNK]
    }
}

struct SessionRecord {
    /// Shared with the key in `by_client_id`: one allocation for both, with no header
    /// beyond the reference counts (a cloned `Bytes` made from a `Vec` allocates one).
    client_id: Arc<str>,
    /// Filters as subscribed, to remove them from the tree when the session ends.
    /// A `Box<str>` rather than a `Utf8Bytes` handle: 16 bytes less per subscription.
    filters: Vec<(Box<str>, ProtocolVersion)>,
    conn: Option<ConnectionId>,
    expiry: u32,
    /// Boxed: only a session without a connection has any of this, and most sessions
    /// have one, so the slot of every session would otherwise carry it.
    offline: Option<Box<Offline>>,
}

/// What a session holds while no connection serves it.
#[derive(Default)]
struct Offline {
    /// The session state (messages queued for the client meanwhile).
    state: SessionState,
    /// When the session ends.
    expires_at: Option<Instant>,
    /// A will waiting for its delay: message and due time.
    pending_will: Option<(Message, Instant)>,
}

/// The broker core. See the module documentation.
pub struct Broker<H: Hooks = AllowAll> {
    config: BrokerConfig,
    hooks: H,
    started: Instant,
    /// Boxed: a slot is a pointer, so neither the vector's spare capacity nor a closed
    /// connection's slot costs a whole machine.
    conns: Slots<Option<Box<Conn>>>,
    free_conns: Vec<u32>,
    /// The generation each freed slot last had, so a stale id never matches a new one.
    last_generation: Vec<u32>,
    sessions: Slots<Option<SessionRecord>>,
    free_sessions: Vec<u32>,
    /// Session by client identifier. Ordered rather than hashed, so that chosen
    /// identifiers cannot flood it; the value is `u32` like the other session indices.
    by_client_id: BTreeMap<Arc<str>, u32>,
    tree: SubscriptionTree<u32, SubOpts>,
    retained: RetainedStore<(Message, Instant)>,
    events: VecDeque<BrokerEvent>,
    /// Round-robin position per shared group name.
    share_cursor: BTreeMap<String, usize>,
    stats: Stats,
    next_sys: Option<Instant>,
    next_client_id: u64,
    /// Reused per routed message: (session, qos, retain, subscription ids).
    scratch: Vec<(u32, QoS, bool, SubscriptionIdList)>,
}

impl Broker<AllowAll> {
    /// A broker that allows every client, publish and subscription.
    pub fn new(config: BrokerConfig, now: Instant) -> Self {
        Self::with_hooks(config, AllowAll, now)
    }
}

impl<H: Hooks> Broker<H> {
    /// A broker that asks `hooks` for authentication and authorization.
    pub fn with_hooks(config: BrokerConfig, hooks: H, now: Instant) -> Self {
        let next_sys = config.sys_interval.map(|d| now + d);
        Self {
            config,
            hooks,
            started: now,
            conns: Slots::new(),
            free_conns: Vec::new(),
            last_generation: Vec::new(),
            sessions: Slots::new(),
            free_sessions: Vec::new(),
            by_client_id: BTreeMap::new(),
            tree: SubscriptionTree::new(),
            retained: RetainedStore::new(),
            events: VecDeque::new(),
            share_cursor: BTreeMap::new(),
            stats: Stats::default(),
            next_sys,
            next_client_id: 1,
            scratch: Vec::new(),
        }
    }

    /// The hooks.
    pub fn hooks_mut(&mut self) -> &mut H {
        &mut self.hooks
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.subscriptions = self.tree.len();
        s.retained = self.retained.len();
        s
    }

    /// A new connection opened. Beyond `max_connections` it is still registered, so that
    /// the refusal (CONNACK Server busy) can be sent, then closed.
    pub fn open(&mut self, now: Instant) -> ConnectionId {
        let mut session = ServerSession::new(self.config.server.clone(), now);
        // The session record keeps the client identifier; the machine need not copy it too.
        session.forget_client_id();
        let conn = |generation| {
            Box::new(Conn {
                generation,
                session,
                owner: NO_OWNER,
                closing: false,
                extra: None,
            })
        };
        match self.free_conns.pop() {
            Some(index) => {
                let generation = self
                    .last_generation
                    .get(index as usize)
                    .copied()
                    .unwrap_or(0)
                    .wrapping_add(1);
                self.conns[index as usize] = Some(conn(generation));
                ConnectionId { index, generation }
            }
            None => ConnectionId {
                index: self.conns.push(Some(conn(0))) as u32,
                generation: 0,
            },
        }
    }

    fn conn_mut(&mut self, id: ConnectionId) -> Option<&mut Conn> {
        self.conns
            .get_mut(id.index as usize)?
            .as_deref_mut()
            .filter(|c| c.generation == id.generation)
    }

    fn live_connections(&self) -> usize {
        self.conns
            .iter()
            .flatten()
            .filter(|c| c.owner().is_some())
            .count()
    }

    /// Bytes arrived on `id`. Complete packets are taken from `buf`.
    pub fn handle_input(&mut self, now: Instant, id: ConnectionId, buf: &mut BytesMut) {
        let Some(c) = self.conn_mut(id) else { return };
        let mut result = c.session.handle_input(now, buf);
        self.process(now, id);
        // After accepting a CONNECT, read what the client pipelined behind it; after
        // acknowledging a Receive Maximum's worth of PUBLISH, read on (the session stops
        // reading there until they are acknowledged). Every call that takes bytes is
        // progress; one that takes none ends the loop.
        while result.is_ok() && !buf.is_empty() {
            let before = buf.len();
            let Some(c) = self.conn_mut(id) else { return };
            result = c.session.handle_input(now, buf);
            self.process(now, id);
            if buf.len() == before {
                break;
            }
        }
    }

    /// The connection closed (by the peer, by the network, or after a `Close` event). Its
    /// identifier is not used again until reassigned by [`Broker::open`].
    pub fn handle_close(&mut self, now: Instant, id: ConnectionId) {
        let Some(c) = self.conn_mut(id) else { return };
        c.session.handle_close(now);
        self.process(now, id);
        self.release(now, id);
        let generation = id.generation;
        self.conns[id.index as usize] = None;
        // The slot keeps no machine; its next user gets a newer generation.
        self.free_conns.push(id.index);
        self.generations_hint(id.index, generation);
    }

    fn generations_hint(&mut self, index: u32, generation: u32) {
        let i = index as usize;
        if self.last_generation.len() <= i {
            self.last_generation.resize(i + 1, 0);
        }
        self.last_generation[i] = generation;
    }

    /// Writes the next packet for `id` into `out`; `None` when it has nothing to send.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        id: ConnectionId,
        out: &mut [u8],
    ) -> Option<usize> {
        let c = self.conn_mut(id)?;
        match c.session.poll_transmit(now, out) {
            Ok(n) => n,
            Err(_) => {
                if !c.closing {
                    c.closing = true;
                    self.events.push_back(BrokerEvent::Close(id));
                }
                None
            }
        }
    }

    /// What the program must do next.
    pub fn poll_event(&mut self) -> Option<BrokerEvent> {
        self.events.pop_front()
    }

    /// The earliest deadline of any connection, will, session expiry or `$SYS` tick.
    pub fn poll_timeout(&self) -> Option<Instant> {
        let conns = self
            .conns
            .iter()
            .flatten()
            .filter_map(|c| c.session.poll_timeout());
        let sessions = self
            .sessions
            .iter()
            .flatten()
            .filter_map(|s| s.offline.as_deref())
            .flat_map(|o| [o.expires_at, o.pending_will.as_ref().map(|w| w.1)])
            .flatten();
        conns.chain(sessions).chain(self.next_sys).min()
    }

    /// Runs whatever is due at `now`: keep alive and connect timeouts, delayed wills,
    /// session expiry, `$SYS` statistics.
    pub fn handle_timeout(&mut self, now: Instant) {
        for index in 0..self.conns.len() {
            let Some(c) = &mut self.conns[index] else {
                continue;
            };
            if c.session.poll_timeout().is_some_and(|t| t <= now) {
                c.session.handle_timeout(now);
                let id = ConnectionId {
                    index: index as u32,
                    generation: c.generation,
                };
                self.process(now, id);
            }
        }
        for s in 0..self.sessions.len() {
            let Some(o) = self.sessions[s]
                .as_mut()
                .and_then(|r| r.offline.as_deref_mut())
            else {
                continue;
            };
            // [MQTT-3.1.2-8] a delayed will goes out when its delay ends, or with the session.
            let will_due = o.pending_will.as_ref().is_some_and(|w| w.1 <= now);
            let expired = o.expires_at.is_some_and(|t| t <= now);
            if will_due || expired {
                if let Some((will, _)) = o.pending_will.take() {
                    self.route(now, None, will);
                }
            }
            if expired {
                // [MQTT-4.1.0-2] the session ends with its expiry.
                self.end_session(s);
            }
        }
        if self.next_sys.is_some_and(|t| t <= now) {
            self.publish_sys(now);
            self.next_sys = self.config.sys_interval.map(|d| now + d);
        }
    }

    /// Publishes the `$SYS/broker/...` statistics as retained messages now.
    pub fn publish_sys(&mut self, now: Instant) {
        let s = self.stats();
        let uptime = (now - self.started).as_secs();
        let values = [
            (
                "$SYS/broker/clients/connected",
                format!("{}", self.live_connections()),
            ),
            (
                "$SYS/broker/messages/received",
                format!("{}", s.messages_received),
            ),
            ("$SYS/broker/messages/sent", format!("{}", s.messages_sent)),
            (
                "$SYS/broker/messages/dropped",
                format!("{}", s.messages_dropped),
            ),
            (
                "$SYS/broker/subscriptions/count",
                format!("{}", s.subscriptions),
            ),
            (
                "$SYS/broker/retained messages/count",
                format!("{}", s.retained),
            ),
            ("$SYS/broker/uptime", format!("{uptime} seconds")),
        ];
        for (topic, value) in values {
            let mut m = Message::new(topic, Bytes::from(value.into_bytes()), QoS::AtMostOnce);
            m.retain = true;
            self.route(now, None, m);
        }
    }

    /// Handles what a connection's machine reported.
    fn process(&mut self, now: Instant, id: ConnectionId) {
        loop {
            let Some(c) = self.conn_mut(id) else { return };
            let Some(event) = c.session.poll_event() else {
                break;
            };
            match event {
                Event::ConnectRequest(req) => self.on_connect(now, id, req),
                Event::Auth { method, data, .. } => self.on_auth(now, id, method, data),
                Event::Message {
                    packet_id, message, ..
                } => self.on_message(now, id, packet_id, message),
                Event::SubscribeRequest {
                    packet_id,
                    filters,
                    subscription_id,
                } => self.on_subscribe(now, id, packet_id, filters, subscription_id),
                Event::UnsubscribeRequest { packet_id, filters } => {
                    self.on_unsubscribe(id, packet_id, filters)
                }
                Event::Disconnected {
                    reason, by_peer, ..
                } => self.on_disconnected(now, id, reason, by_peer),
                _ => {}
            }
        }
        self.wake(id);
    }

    fn wake(&mut self, id: ConnectionId) {
        let Some(c) = self.conn_mut(id) else { return };
        if c.closing {
            return;
        }
        let closed = c.session.is_closed();
        if closed {
            c.closing = true;
            self.events.push_back(BrokerEvent::Transmit(id));
            self.events.push_back(BrokerEvent::Close(id));
        } else {
            self.events.push_back(BrokerEvent::Transmit(id));
        }
    }

    fn on_connect(&mut self, now: Instant, id: ConnectionId, req: ConnectRequest) {
        let full = self.live_connections() >= self.config.max_connections;
        let refusal = if full {
            Err(ReasonCode::ServerBusy)
        } else {
            self.hooks.authenticate(&req)
        };
        if let Err(code) = refusal {
            if let Some(c) = self.conn_mut(id) {
                let _ = c.session.reject(code);
            }
            return;
        }
        if let Some(method) = req.authentication_method.clone() {
            let data = req.authentication_data.clone();
            let step =
                self.hooks
                    .enhanced_auth(req.client_id.as_str(), method.as_str(), data.as_deref());
            if let Some(c) = self.conn_mut(id) {
                c.extra_mut().authenticating = Some(Box::new(req));
            }
            self.auth_step(now, id, step);
            return;
        }
        self.admit(now, id, req);
    }

    /// An AUTH from the client: the next step of its authentication or a re-authentication.
    fn on_auth(
        &mut self,
        now: Instant,
        id: ConnectionId,
        method: Option<Utf8Bytes>,
        data: Option<Bytes>,
    ) {
        let Some(c) = self.conn_mut(id) else { return };
        let client_id: Arc<str> = match (c.authenticating(), c.owner()) {
            (Some(req), _) => req.client_id.as_str().into(),
            (None, Some(s)) => self.client_id_of(s),
            (None, None) => return,
        };
        // The machine already checked that the method is the CONNECT's ([MQTT-4.12.0-5]).
        let method = method.unwrap_or_default();
        let step = self
            .hooks
            .enhanced_auth(&client_id, method.as_str(), data.as_deref());
        self.auth_step(now, id, step);
    }

    fn auth_step(&mut self, now: Instant, id: ConnectionId, step: AuthStep) {
        let Some(c) = self.conn_mut(id) else { return };
        let pending = c.authenticating().is_some();
        match step {
            // [MQTT-4.12.0-2] a challenge carries Continue authentication.
            AuthStep::Continue(data) => {
                let _ = c
                    .session
                    .auth(ReasonCode::ContinueAuthentication, Some(data));
            }
            AuthStep::Success if pending => {
                if let Some(req) = c.take_authenticating() {
                    self.admit(now, id, req);
                }
            }
            // A re-authentication that succeeded.
            AuthStep::Success => {
                let _ = c.session.auth(ReasonCode::Success, None);
            }
            // [MQTT-4.12.0-4] a refusal during the exchange is a CONNACK >= 0x80 and a close.
            AuthStep::Fail(code) if pending => {
                c.take_authenticating();
                let _ = c.session.reject(code);
            }
            // [MQTT-4.12.1-2] a failed re-authentication disconnects.
            AuthStep::Fail(code) => c.session.disconnect(code),
        }
    }

    /// Accepts an authenticated CONNECT: finds, resumes, takes over or creates its session.
    fn admit(&mut self, now: Instant, id: ConnectionId, mut req: ConnectRequest) {
        // [MQTT-3.1.3-6] [MQTT-3.1.3-7] an empty client id gets a unique one.
        let assigned = if req.client_id.as_str().is_empty() {
            loop {
                let candidate = Utf8Bytes::from(format!("auto-{:016x}", self.next_client_id));
                self.next_client_id += 1;
                if !self.by_client_id.contains_key(candidate.as_str()) {
                    req.client_id = candidate.clone();
                    break Some(candidate);
                }
            }
        } else {
            None
        };
        let v5 = req.protocol.is_v5();
        // 3.1.1: a persistent session lasts until a clean session replaces it.
        let expiry = if v5 {
            req.session_expiry_interval
                .min(self.config.max_session_expiry)
        } else if req.clean_start {
            0
        } else {
            u32::MAX
        };
        let mut session = SessionState::default();
        let mut present = false;
        if let Some(s) = self.session_of(req.client_id.as_str()) {
            // [MQTT-3.1.4-3] a second connection with this id takes the session over.
            let old = self.sessions[s].as_ref().and_then(|r| r.conn);
            if let Some(old) = old {
                let state = self.take_over(now, old);
                let rec = self.sessions[s].as_mut().expect("indexed");
                rec.offline = Some(Box::new(Offline {
                    state,
                    ..Offline::default()
                }));
                rec.conn = None;
            }
            let rec = self.sessions[s].as_mut().expect("indexed");
            // [MQTT-3.1.3-9] reconnecting in time cancels a delayed will (dropped with the
            // rest of the offline data).
            let offline = rec.offline.take();
            if req.clean_start {
                // [MQTT-3.1.2-4] clean start discards the old session.
                self.end_session(s);
            } else {
                // [MQTT-3.1.2-5] resume it.
                session = offline.map(|o| o.state).unwrap_or_default();
                present = true;
            }
        }
        let s = match self.session_of(req.client_id.as_str()) {
            Some(s) => s,
            // [MQTT-3.1.2-6] a new session.
            None => self.new_session(req.client_id.as_str().into()),
        };
        let rec = self.sessions[s].as_mut().expect("just made");
        rec.conn = Some(id);
        rec.expiry = expiry;
        rec.offline = None;
        let accept = Accept {
            session,
            session_present: present,
            assigned_client_id: assigned.filter(|_| v5),
            session_expiry_interval: (v5 && expiry != req.session_expiry_interval)
                .then_some(expiry),
        };
        let Some(c) = self.conn_mut(id) else { return };
        c.owner = s as u32;
        // Kept for the whole connection: a copy, so that it does not pin the receive buffer
        // the CONNECT was read into.
        let username = req
            .username
            .as_ref()
            .map(|u| Utf8Bytes::copy_of(u.as_str()));
        // [MQTT-3.1.2-7] the will belongs to the session until it is published or dropped.
        let will = req.will.clone().map(Box::new);
        if username.is_some() || will.is_some() || c.extra.is_some() {
            let extra = c.extra_mut();
            extra.username = username;
            extra.will = will;
            c.tidy_extra();
        }
        if c.session.accept(now, accept).is_ok() {
            self.stats.clients_connected = self.live_connections();
        }
    }

    /// Ends `old` with Session taken over, returning the session state it held.
    fn take_over(&mut self, now: Instant, old: ConnectionId) -> SessionState {
        let mut state = SessionState::default();
        if let Some(c) = self.conn_mut(old) {
            state = c.session.take_session();
            // The old connection's will is not published by a takeover in 3.1.1 practice;
            // 5.0 treats it as a disconnect without DISCONNECT 0x00, so it is.
            let v5 = c.session.version().is_v5();
            let will = c.take_will().filter(|_| v5);
            c.session.disconnect(ReasonCode::SessionTakenOver);
            c.take_owner();
            if let Some((w, _)) = will {
                self.route(now, None, w);
            }
            self.wake(old);
            if let Some(c) = self.conn_mut(old) {
                if !c.closing {
                    c.closing = true;
                    self.events.push_back(BrokerEvent::Close(old));
                }
            }
        }
        state
    }

    fn new_session(&mut self, client_id: Arc<str>) -> usize {
        let rec = SessionRecord {
            client_id: client_id.clone(),
            filters: Vec::new(),
            conn: None,
            expiry: 0,
            offline: None,
        };
        let s = match self.free_sessions.pop() {
            Some(s) => {
                self.sessions[s as usize] = Some(rec);
                s as usize
            }
            None => self.sessions.push(Some(rec)),
        };
        self.by_client_id.insert(client_id, s as u32);
        s
    }

    /// The session of `client_id`, if there is one.
    fn session_of(&self, client_id: &str) -> Option<usize> {
        self.by_client_id.get(client_id).map(|&s| s as usize)
    }

    /// The client identifier of session `s` (empty if it has ended).
    fn client_id_of(&self, s: usize) -> Arc<str> {
        self.sessions
            .get(s)
            .and_then(Option::as_ref)
            .map_or_else(|| "".into(), |r| r.client_id.clone())
    }

    /// Removes a session and its subscriptions.
    fn end_session(&mut self, s: usize) {
        let Some(rec) = self.sessions[s].take() else {
            return;
        };
        for (filter, version) in &rec.filters {
            if let Some(sub) = parse_subscription(filter, *version) {
                self.tree.remove(sub, &(s as u32));
            }
        }
        self.by_client_id.remove(&*rec.client_id);
        self.free_sessions.push(s as u32);
    }

    fn on_message(
        &mut self,
        now: Instant,
        id: ConnectionId,
        packet_id: Option<PacketId>,
        message: Message,
    ) {
        self.stats.messages_received += 1;
        let Some(c) = self.conn_mut(id) else { return };
        let Some(owner) = c.owner() else {
            return;
        };
        let username = c.username().cloned();
        let client_id = self.client_id_of(owner);
        let allowed = self.hooks.authorize_publish(
            &client_id,
            username.as_ref().map(Utf8Bytes::as_str),
            message.topic.as_str(),
        );
        let matched = if allowed {
            self.route(now, Some(owner), message)
        } else {
            0
        };
        let reason = if !allowed {
            // 5.0 says why; before 5.0 the message is dropped but still acknowledged.
            ReasonCode::NotAuthorized
        } else if matched == 0 {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        if let (Some(pid), Some(c)) = (packet_id, self.conn_mut(id)) {
            c.session.ack(pid, reason);
        }
    }

    /// Stores (retained) and delivers a message to every matching session; returns how many
    /// sessions it went to. `from` is the publishing session, for No Local.
    fn route(&mut self, now: Instant, from: Option<usize>, mut message: Message) -> usize {
        let Ok(topic) = TopicName::new(message.topic.as_str()) else {
            return 0;
        };
        if message.retain {
            if message.payload.is_empty() {
                // [MQTT-3.3.1-6] [MQTT-3.3.1-7] an empty retained message clears the topic.
                self.retained.remove(topic);
            } else {
                // [MQTT-3.3.1-5] replaces the topic's retained message.
                // Kept indefinitely: copied, so it does not hold the publisher's whole
                // receive buffer alive through a view.
                self.retained.insert(topic, (message.detached(), now));
            }
        }
        // Subscription identifiers are per delivery, never forwarded from the publisher.
        message.properties.subscription_identifiers.clear();
        let mut scratch = core::mem::take(&mut self.scratch);
        scratch.clear();
        let share_cursor = &mut self.share_cursor;
        let sessions = &self.sessions;
        self.tree.for_each_match(topic, |m| match m {
            Match::Plain { key, value } => {
                // [MQTT-3.8.3-3] No Local: not back to the publisher's own session.
                if value.no_local && from == Some(*key as usize) {
                    return;
                }
                add_delivery(&mut scratch, *key, value, message.retain);
            }
            Match::Shared(group) => {
                // One member per message, round robin, preferring connected ones.
                let cursor = share_cursor.entry(String::from(group.name())).or_insert(0);
                let n = group.len();
                let online = |k: &u32| {
                    sessions
                        .get(*k as usize)
                        .and_then(Option::as_ref)
                        .is_some_and(|r| r.conn.is_some())
                };
                let pick = (0..n)
                    .map(|i| (*cursor + i) % n)
                    .find(|&i| group.get(i).is_some_and(|(k, _)| online(k)))
                    .unwrap_or(*cursor % n);
                *cursor = pick + 1;
                if let Some((key, value)) = group.get(pick) {
                    add_delivery(&mut scratch, *key, value, false);
                }
            }
        });
        let count = scratch.len();
        for (s, qos, retain, ids) in scratch.drain(..) {
            let mut m = message.clone();
            // [MQTT-3.8.4-8] the lower of the message's and the subscription's QoS.
            m.qos = m.qos.min(qos);
            m.retain = retain;
            self.deliver(now, s as usize, m, &ids);
        }
        self.scratch = scratch;
        count
    }

    /// Hands a message to a session: its connection's machine when online, its offline
    /// queue otherwise.
    fn deliver(&mut self, now: Instant, s: usize, message: Message, ids: &[SubscriptionId]) {
        let Some(rec) = self.sessions.get_mut(s).and_then(Option::as_mut) else {
            return;
        };
        match rec.conn {
            Some(id) => {
                let Some(c) = self
                    .conns
                    .get_mut(id.index as usize)
                    .and_then(Option::as_mut)
                else {
                    return;
                };
                match c.session.deliver(now, message, ids) {
                    Ok(_) => self.stats.messages_sent += 1,
                    Err(_) => self.stats.messages_dropped += 1,
                }
                self.events.push_back(BrokerEvent::Transmit(id));
            }
            None => {
                let queue = &mut rec.offline.get_or_insert_with(Box::default).state.queue;
                if message.qos == QoS::AtMostOnce || queue.len() >= self.config.max_offline_queue {
                    self.stats.messages_dropped += 1;
                    return;
                }
                queue.push_back(Outgoing {
                    message,
                    queued_at: now,
                    subscription_ids: SubscriptionIdList::from(ids),
                    packet_id: None,
                });
                self.stats.messages_sent += 1;
            }
        }
    }

    fn on_subscribe(
        &mut self,
        now: Instant,
        id: ConnectionId,
        packet_id: PacketId,
        filters: Vec<(Utf8Bytes, SubscriptionOptions)>,
        subscription_id: Option<SubscriptionId>,
    ) {
        let Some(c) = self.conn_mut(id) else { return };
        let Some(owner) = c.owner() else {
            return;
        };
        let version = c.session.version();
        let username = c.username().cloned();
        let client_id = self.client_id_of(owner);
        let server = self.config.server.clone();
        let mut reasons = Vec::with_capacity(filters.len());
        let mut retained_out = Vec::new();
        // [MQTT-3.8.4-5] each filter as its own SUBSCRIBE, one SUBACK for all.
        for (filter, options) in &filters {
            let reason = (|| {
                let sub = parse_subscription(filter.as_str(), version)
                    .ok_or(ReasonCode::TopicFilterInvalid)?;
                let failure = |code| {
                    if version.is_v5() {
                        code
                    } else {
                        ReasonCode::UnspecifiedError
                    }
                };
                if !self.hooks.authorize_subscribe(
                    &client_id,
                    username.as_ref().map(Utf8Bytes::as_str),
                    filter.as_str(),
                ) {
                    return Err(failure(ReasonCode::NotAuthorized));
                }
                if matches!(sub, Subscription::Shared(_)) && !server.shared_subscription_available {
                    return Err(failure(ReasonCode::SharedSubscriptionsNotSupported));
                }
                if sub.filter().has_wildcards() && !server.wildcard_subscription_available {
                    return Err(failure(ReasonCode::WildcardSubscriptionsNotSupported));
                }
                if subscription_id.is_some() && !server.subscription_identifier_available {
                    return Err(failure(ReasonCode::SubscriptionIdentifiersNotSupported));
                }
                // [MQTT-3.2.2-10] grant what the server supports.
                let qos = options.qos.min(server.maximum_qos);
                let opts = SubOpts {
                    qos,
                    no_local: options.no_local,
                    retain_as_published: options.retain_as_published,
                    id: subscription_id,
                };
                // [MQTT-3.8.4-3] an identical filter replaces the subscription.
                let existed = self.tree.insert(sub, owner as u32, opts).is_some();
                if let Some(rec) = self.sessions[owner].as_mut() {
                    if !existed {
                        // Many clients subscribe once and idle: room for that one filter
                        // rather than the four a first push reserves; more grow as usual.
                        if rec.filters.capacity() == 0 {
                            rec.filters.reserve_exact(1);
                        }
                        // Kept as long as the subscription: a copy, not a view pinning the
                        // SUBSCRIBE's receive buffer.
                        rec.filters.push((filter.as_str().into(), version));
                    }
                }
                // [MQTT-3.3.1-9] [MQTT-3.3.1-10] [MQTT-3.3.1-11] retained messages per Retain
                // Handling; none for a shared subscription.
                let send_retained = match options.retain_handling {
                    RetainHandling::SendAtSubscribe => true,
                    RetainHandling::SendIfNew => !existed,
                    RetainHandling::DoNotSend => false,
                } && matches!(sub, Subscription::Plain(_));
                if send_retained {
                    self.retained
                        .for_each_match(sub.filter(), |_, (m, stored)| {
                            retained_out.push((m.clone(), *stored, opts));
                        });
                }
                Ok(match qos {
                    QoS::AtMostOnce => ReasonCode::Success,
                    QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                    QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                })
            })();
            reasons.push(reason.unwrap_or_else(|e| e));
        }
        // [MQTT-3.8.4-1] every SUBSCRIBE gets its SUBACK, codes in order ([MQTT-3.9.3-1]).
        if let Some(c) = self.conn_mut(id) {
            let _ = c.session.suback(packet_id, reasons);
        }
        for (mut m, stored, opts) in retained_out {
            // Retained messages are sent with RETAIN set, whatever Retain As Published says.
            m.qos = m.qos.min(opts.qos);
            m.retain = true;
            // [MQTT-3.3.2-6] the expiry counts the time the message was stored.
            if let Some(e) = m.properties.message_expiry_interval {
                let waited = u32::try_from((now - stored).as_secs()).unwrap_or(u32::MAX);
                if waited >= e {
                    continue;
                }
                m.properties.message_expiry_interval = Some(e - waited);
            }
            let ids: Vec<SubscriptionId> = opts.id.into_iter().collect();
            self.deliver(now, owner, m, &ids);
        }
    }

    fn on_unsubscribe(&mut self, id: ConnectionId, packet_id: PacketId, filters: Vec<Utf8Bytes>) {
        let Some(c) = self.conn_mut(id) else { return };
        let Some(owner) = c.owner() else {
            return;
        };
        let version = c.session.version();
        let mut reasons = Vec::with_capacity(filters.len());
        for filter in &filters {
            // [MQTT-3.10.4-1] filters compare literally.
            let removed = parse_subscription(filter.as_str(), version)
                .and_then(|sub| self.tree.remove(sub, &(owner as u32)))
                .is_some();
            if removed {
                if let Some(rec) = self.sessions[owner].as_mut() {
                    rec.filters.retain(|(f, _)| **f != *filter.as_str());
                }
            }
            reasons.push(if removed {
                ReasonCode::Success
            } else {
                ReasonCode::NoSubscriptionExisted
            });
        }
        // [MQTT-3.10.4-4] [MQTT-3.10.4-5] an UNSUBACK even when nothing was removed.
        if let Some(c) = self.conn_mut(id) {
            let _ = c.session.unsuback(packet_id, reasons);
        }
    }

    fn on_disconnected(
        &mut self,
        now: Instant,
        id: ConnectionId,
        reason: ReasonCode,
        by_peer: bool,
    ) {
        let max_expiry = self.config.max_session_expiry;
        let Some(c) = self.conn_mut(id) else { return };
        // The client's own DISCONNECT arrives as `by_peer` with its reason; a dropped
        // transport reports Unspecified error. [MQTT-3.14.4-3] [MQTT-3.1.2-10] a normal
        // DISCONNECT removes the will unpublished; 0x04 (with will) keeps it.
        if by_peer && reason == ReasonCode::Success {
            c.take_will();
        }
        let expiry = c.session.disconnect_session_expiry();
        let owner = c.owner();
        if let (Some(expiry), Some(s)) = (expiry, owner) {
            if let Some(rec) = self.sessions[s].as_mut() {
                rec.expiry = expiry.min(max_expiry);
            }
        }
        self.release(now, id);
    }

    /// The connection is gone: park or end its session, publish or schedule its will.
    fn release(&mut self, now: Instant, id: ConnectionId) {
        let Some(c) = self.conn_mut(id) else { return };
        let Some(owner) = c.take_owner() else {
            return;
        };
        let will = c.take_will();
        let session = c.session.take_session();
        let Some(rec) = self.sessions[owner].as_mut() else {
            return;
        };
        if rec.conn != Some(id) {
            return;
        }
        rec.conn = None;
        let expiry = rec.expiry;
        let offline = rec.offline.insert(Box::new(Offline {
            state: session,
            expires_at: (expiry != u32::MAX).then(|| now + Duration::from_secs(u64::from(expiry))),
            pending_will: None,
        }));
        if let Some((will, delay)) = will {
            if delay == 0 {
                self.route(now, Some(owner), will);
            } else {
                // [MQTT-3.1.2-8] after the delay, or when the session ends if sooner.
                offline.pending_will = Some((will, now + Duration::from_secs(u64::from(delay))));
            }
        }
        self.stats.clients_connected = self.live_connections();
        if expiry == 0 {
            // [MQTT-3.1.2-23] only a session expiry keeps the session beyond the connection.
            if let Some(o) = self.sessions[owner]
                .as_mut()
                .and_then(|r| r.offline.as_deref_mut())
            {
                if let Some((will, _)) = o.pending_will.take() {
                    self.route(now, None, will);
                }
            }
            self.end_session(owner);
        }
    }
}

fn add_delivery(
    scratch: &mut Vec<(u32, QoS, bool, SubscriptionIdList)>,
    key: u32,
    opts: &SubOpts,
    retain: bool,
) {
    // [MQTT-3.3.1-12] [MQTT-3.3.1-13] RETAIN forwarded only with Retain As Published.
    let retain = retain && opts.retain_as_published;
    // [MQTT-3.3.4-2] [MQTT-3.3.4-3] overlapping subscriptions: one copy at the highest QoS
    // with every subscription identifier.
    if let Some(d) = scratch.iter_mut().find(|d| d.0 == key) {
        d.1 = d.1.max(opts.qos);
        d.2 |= retain;
        if let Some(id) = opts.id {
            d.3.push(id);
        }
        return;
    }
    let mut ids = SubscriptionIdList::new();
    if let Some(id) = opts.id {
        ids.push(id);
    }
    scratch.push((key, opts.qos, retain, ids));
}

/// A SUBSCRIBE/UNSUBSCRIBE filter as the tree keys it: 5.0 knows `$share`, 3.1.1 does not.
fn parse_subscription(filter: &str, version: ProtocolVersion) -> Option<Subscription<'_>> {
    if version.is_v5() {
        Subscription::parse(filter).ok()
    } else {
        TopicFilter::new(filter).ok().map(Subscription::Plain)
    }
}
