//! The broker core's state and its run loop: connections in and out, events, timers.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use bytes::BytesMut;
use mqtt_codec::{DecodeOptions, ProtocolVersion, QoS, ReasonCode, Status};
use mqtt_topic::{RetainedStore, SubscriptionTree};

use mqtt_state::{Diagnostics, Event, Instant, Message, ServerConfig, ServerSession};

use crate::conn::Conn;
use crate::decide::Decisions;
use crate::index::ClientIndex;
use crate::persist::StoredEvent;
use crate::registry::SessionRecord;
use crate::routing::SubOpts;
use crate::slots::Slots;
use crate::timers::{TimerKey, TimerQueue, NOT_ARMED};
use crate::{AllowAll, BrokerConfig, BrokerEvent, CloseReason, ConnectionId, Error, Hooks, Stats};

/// One routed message's deliveries: (session, qos, retain, subscription ids).
pub(crate) type Delivery = (u32, QoS, bool, mqtt_state::SubscriptionIdList);

/// The broker core. See the crate documentation for the run loop.
pub struct Broker<H: Hooks = AllowAll> {
    pub(crate) config: BrokerConfig,
    /// What each connection's machine is made with: `config.server` with no queue bound
    /// of its own, since the core applies `max_queued` as a watermark (see
    /// [`BrokerConfig::server`]).
    pub(crate) session_config: ServerConfig,
    pub(crate) hooks: H,
    pub(crate) started: Instant,
    /// Boxed: a slot is a pointer, so neither the vector's spare capacity nor a closed
    /// connection's slot costs a whole machine.
    pub(crate) conns: Slots<Option<Box<Conn>>>,
    pub(crate) free_conns: Vec<u32>,
    /// The generation each freed slot last had, so a stale id never matches a new one.
    pub(crate) last_generation: Vec<u32>,
    /// Open connections.
    pub(crate) open_conns: usize,
    /// Connections that serve a session.
    pub(crate) online: usize,
    pub(crate) sessions: Slots<Option<SessionRecord>>,
    pub(crate) free_sessions: Vec<u32>,
    /// Session by client identifier.
    pub(crate) by_client_id: ClientIndex,
    pub(crate) tree: SubscriptionTree<u32, SubOpts>,
    pub(crate) retained: RetainedStore<(Message, Instant)>,
    pub(crate) events: VecDeque<BrokerEvent>,
    pub(crate) timers: TimerQueue,
    /// Round-robin position per shared group name.
    pub(crate) share_cursor: BTreeMap<String, usize>,
    pub(crate) stats: Stats,
    pub(crate) next_sys: Option<Instant>,
    pub(crate) next_client_id: u64,
    /// Reused per routed message.
    pub(crate) scratch: Vec<Delivery>,
    /// Per session index: its position in `scratch` plus one while a message is being
    /// routed, else 0; so that overlapping subscriptions merge in constant time.
    pub(crate) route_mark: Vec<u32>,
    /// Connected subscribers found at their queue's high watermark while routing.
    pub(crate) blockers: Vec<ConnectionId>,
    /// Deferred decisions: handed out and waiting for their answers.
    pub(crate) decisions: Decisions,
    /// Durability: operations to store, output held for them.
    pub(crate) store: crate::persist::StoreState,
    /// Bridges to remote brokers.
    pub(crate) bridges: crate::bridge::Bridges,
    /// What goes to and comes from the other nodes of a cluster.
    pub(crate) cluster: crate::cluster::ClusterState,
    /// The latest time the program gave: for the work [`Broker::poll_event`] does inside
    /// the core (a bridge's local leg), which takes no time argument.
    pub(crate) now: Instant,
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
        let hash_seed = config.hash_seed;
        let next_sys = config.sys_interval.map(|d| now + d);
        let session_config = ServerConfig {
            max_queued: usize::MAX,
            ..config.server.clone()
        };
        Self {
            config,
            session_config,
            hooks,
            started: now,
            conns: Slots::new(),
            free_conns: Vec::new(),
            last_generation: Vec::new(),
            open_conns: 0,
            online: 0,
            sessions: Slots::new(),
            free_sessions: Vec::new(),
            by_client_id: ClientIndex::new(hash_seed),
            tree: SubscriptionTree::new(),
            retained: RetainedStore::new(),
            events: VecDeque::new(),
            timers: TimerQueue::new(now),
            share_cursor: BTreeMap::new(),
            stats: Stats::default(),
            next_sys,
            next_client_id: 1,
            scratch: Vec::new(),
            route_mark: Vec::new(),
            blockers: Vec::new(),
            decisions: Decisions::default(),
            store: crate::persist::StoreState::default(),
            bridges: crate::bridge::Bridges::default(),
            cluster: crate::cluster::ClusterState::default(),
            now,
        }
    }

    /// The hooks.
    pub fn hooks_mut(&mut self) -> &mut H {
        &mut self.hooks
    }

    /// The settings.
    pub fn config(&self) -> &BrokerConfig {
        &self.config
    }

    /// Current counters.
    pub fn stats(&self) -> Stats {
        let mut s = self.stats;
        s.clients_connected = self.online;
        s.subscriptions = self.tree.len();
        s.retained = self.retained.len();
        s
    }

    /// Open connections (opened and not yet closed with [`Broker::handle_close`]).
    pub fn connection_count(&self) -> usize {
        self.open_conns
    }

    /// Sessions, with or without a connection.
    pub fn session_count(&self) -> usize {
        self.by_client_id.len()
    }

    /// A new connection opened. Beyond `max_connections` it is still registered, so that
    /// the refusal (CONNACK Server busy) can be sent, then closed.
    pub fn open(&mut self, now: Instant) -> ConnectionId {
        self.now = self.now.max(now);
        let mut session = ServerSession::new(self.session_config.clone(), now);
        // The session record keeps the client identifier; the machine need not copy it too.
        session.forget_client_id();
        self.open_conns += 1;
        let id = match self.free_conns.pop() {
            Some(index) => {
                let generation = self
                    .last_generation
                    .get(index as usize)
                    .copied()
                    .unwrap_or(0)
                    .wrapping_add(1);
                self.conns[index as usize] = Some(Box::new(Conn::new(generation, session)));
                ConnectionId { index, generation }
            }
            None => ConnectionId {
                index: self.conns.push(Some(Box::new(Conn::new(0, session)))) as u32,
                generation: 0,
            },
        };
        self.rearm(id);
        id
    }

    pub(crate) fn conn_mut(&mut self, id: ConnectionId) -> Option<&mut Conn> {
        conn_in(&mut self.conns, id)
    }

    pub(crate) fn conn(&self, id: ConnectionId) -> Option<&Conn> {
        conn_ref(&self.conns, id)
    }

    /// Bytes arrived on `id`. Complete packets are taken from `buf`, one at a time, until
    /// it holds no complete packet, the connection is paused ([`BrokerEvent::Pause`]) or
    /// its machine reads no further (it waits for a decision, or for its acknowledgements
    /// to go out); what is left stays in `buf`, and a [`BrokerEvent::Resume`] says when to
    /// call again with it.
    pub fn handle_input(&mut self, now: Instant, id: ConnectionId, buf: &mut BytesMut) {
        self.now = self.now.max(now);
        if let Some(i) = crate::bridge::remote_index(id) {
            if self.bridge_conn_is(i, id) {
                self.remote_input(now, i, buf);
            }
            return;
        }
        loop {
            let Some(c) = self.conn_mut(id) else { return };
            if buf.is_empty() || !c.readable() {
                break;
            }
            let before = buf.len();
            // One packet per call, so that a publisher is paused right after the message
            // that filled a subscriber's queue, not after all it had in its buffer.
            let result = match frame_len(buf) {
                Some(n) if n < buf.len() => {
                    let mut one = buf.split_to(n);
                    let r = c.session.handle_input(now, &mut one);
                    if !one.is_empty() {
                        // Not taken (the machine waits): put it back in front, in place.
                        one.unsplit(core::mem::take(buf));
                        *buf = one;
                    }
                    r
                }
                _ => c.session.handle_input(now, buf),
            };
            self.process(now, id);
            if result.is_err() {
                break;
            }
            if buf.len() == before {
                // The machine read nothing though a whole packet is there: it waits for its
                // acknowledgements to go out. `poll_transmit` asks for the rest then.
                let waiting = frame_len(buf).is_some_and(|n| n <= buf.len());
                if let Some(c) = self.conn_mut(id) {
                    c.set_input_waiting(waiting && c.readable());
                }
                break;
            }
        }
        self.rearm(id);
    }

    /// The connection closed (by the peer, by the network, or after a `Close` event). Its
    /// identifier is not used again until reassigned by [`Broker::open`].
    pub fn handle_close(&mut self, now: Instant, id: ConnectionId) {
        self.now = self.now.max(now);
        if let Some(i) = crate::bridge::remote_index(id) {
            if self.bridge_conn_is(i, id) {
                self.remote_closed(now, i);
            }
            return;
        }
        // Its decisions are moot: answering them is `UnknownRequest` from now on.
        self.drop_requests(id);
        let Some(c) = self.conn_mut(id) else { return };
        // Closed already: no Close event for it.
        c.set_closing();
        c.session.handle_close(now);
        self.process(now, id);
        self.release(now, id);
        self.resume_waiters(id);
        let generation = id.generation;
        self.conns[id.index as usize] = None;
        self.open_conns -= 1;
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

    /// Writes the next packet for `id` into `out`: `Ok(Some(n))` for `n` bytes,
    /// `Ok(None)` when it has nothing to send (or is unknown). A packet larger than `out`
    /// stays queued and is [`Error::BufferTooSmall`] with the size it needs; the
    /// connection is not closed for it.
    pub fn poll_transmit(
        &mut self,
        now: Instant,
        id: ConnectionId,
        out: &mut [u8],
    ) -> Result<Option<usize>, Error> {
        self.now = self.now.max(now);
        if let Some(i) = crate::bridge::remote_index(id) {
            // Nothing the remote leg sends promises what is not stored: its
            // acknowledgements follow the core's own to the local leg, which wait.
            if !self.bridge_conn_is(i, id) {
                return Ok(None);
            }
            return self.remote_transmit(now, i, out);
        }
        let stall_timeout = self.config.stall_timeout;
        if self.holding() {
            // What is queued may promise what is not stored yet (see `Persistence::Sync`).
            // The program was told to transmit and will not be told again: a Transmit
            // comes out with `handle_durable`.
            if let Some(c) = self.conn_mut(id) {
                if c.set_transmit_queued() {
                    self.store.held.push(BrokerEvent::Transmit(id));
                }
            }
            return Ok(None);
        }
        let Some(c) = self.conn_mut(id) else {
            return Ok(None);
        };
        let result = match c.session.poll_transmit(now, out) {
            Ok(Some(n)) => {
                // Progress: a subscriber that others wait on is still reading.
                if let (Some(e), Some(d)) = (c.extra.as_mut(), stall_timeout) {
                    if e.stall_deadline.is_some() {
                        e.stall_deadline = Some(now + d);
                    }
                }
                if c.input_waiting() {
                    // Output went (acknowledgements among it): the input left unread may
                    // be read now.
                    c.set_input_waiting(false);
                    if c.readable() {
                        self.events.push_back(BrokerEvent::Resume(id));
                    }
                }
                Ok(Some(n))
            }
            Ok(None) => {
                // A clean close (the client's DISCONNECT, or one the core sent) is no
                // error: the machine says it is done.
                if c.session.is_closed() {
                    let reason = c.close_reason();
                    self.close(id, reason);
                }
                Ok(None)
            }
            Err(mqtt_state::Error::Codec(mqtt_codec::Error::BufferTooSmall { required })) => {
                Err(Error::BufferTooSmall { needed: required })
            }
            Err(_) => {
                let reason = c.close_reason();
                self.close(id, reason);
                Ok(None)
            }
        };
        // Where a subscriber's queue drains: let its publishers go once it is low enough.
        if let Some(c) = self.conn(id) {
            if c.has_waiters()
                && c.session.session().queue.len() <= self.config.server.max_queued / 2
            {
                self.resume_waiters(id);
            }
        }
        self.rearm(id);
        result
    }

    /// What the program must do next.
    pub fn poll_event(&mut self) -> Option<BrokerEvent> {
        loop {
            let mut event = self.events.pop_front()?;
            if self.holding() {
                // Output waits for the store; it comes out again with `handle_durable`.
                while matches!(event, BrokerEvent::Transmit(_) | BrokerEvent::Close { .. }) {
                    self.store.held.push(event);
                    event = self.events.pop_front()?;
                }
            }
            if let BrokerEvent::Transmit(id) = event {
                if let Some(c) = self.conn_mut(id) {
                    c.clear_transmit_queued();
                }
            }
            // A bridge's local leg is served here, inside the core.
            if !self.bridges.locals.is_empty() && self.local_event(&event) {
                continue;
            }
            return Some(event);
        }
    }

    /// Whether `id` may be read: `false` while it is paused ([`BrokerEvent::Pause`]), for
    /// backpressure or while it waits for a deferred decision.
    pub fn wants_input(&self, id: ConnectionId) -> bool {
        if let Some(i) = crate::bridge::remote_index(id) {
            return self.bridge_conn_is(i, id);
        }
        self.conn(id).is_some_and(Conn::readable)
    }

    /// The earliest deadline of any connection, will, session expiry or `$SYS` tick. It
    /// may be early (a deadline that moved later since): calling
    /// [`Broker::handle_timeout`] then does nothing but look again.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match (self.timers.peek(), self.next_sys) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Runs whatever is due at `now`: keep alive and connect timeouts, delayed wills,
    /// session expiry, `$SYS` statistics. Costs a few steps per due deadline (each moves
    /// down the timer wheel's levels at most once per level before it is due), nothing per
    /// connection that has none.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.now = self.now.max(now);
        while let Some((at, key)) = self.timers.pop_due(now) {
            match key {
                TimerKey::Conn(id) => self.conn_timer(now, at, id),
                TimerKey::Session(s) => self.session_timer(now, at, s as usize),
                TimerKey::Bridge(b) => self.bridge_timer(now, at, b as usize),
            }
        }
        // Stale entries (deadlines that moved earlier) are rare; should they pile up, drop
        // them, so the wheel stays proportional to what it times.
        if self.timers.len() > 2 * (self.open_conns + self.by_client_id.len()) + 1024 {
            let conns = &self.conns;
            let sessions = &self.sessions;
            self.timers.retain(|at, key| match key {
                TimerKey::Conn(id) => conns
                    .get(id.index as usize)
                    .and_then(Option::as_deref)
                    .is_some_and(|c| c.generation == id.generation && c.armed == at),
                TimerKey::Session(s) => sessions
                    .get(s as usize)
                    .and_then(Option::as_ref)
                    .and_then(|r| r.offline.as_deref())
                    .is_some_and(|o| o.armed == at),
                // A handful at most.
                TimerKey::Bridge(_) => true,
            });
        }
        if self.next_sys.is_some_and(|t| t <= now) {
            self.publish_sys(now);
            self.next_sys = self.config.sys_interval.map(|d| now + d);
        }
    }

    fn conn_timer(&mut self, now: Instant, at: Instant, id: ConnectionId) {
        let Some(c) = self.conn_mut(id) else { return };
        if c.armed != at {
            return; // stale
        }
        c.armed = NOT_ARMED;
        if c.paused_on().is_some() || c.input_waiting() || c.deciding() {
            // The adapter is not reading this connection on our word: what the client sent
            // is unread, not missing ([MQTT-3.1.2-22] counts packets received).
            c.session.hold_input(now);
        }
        if c.decision_deadline().is_some_and(|t| t <= now) {
            self.decision_timed_out(now, id);
            self.rearm(id);
            return;
        }
        if c.session.poll_timeout().is_some_and(|t| t <= now) {
            c.session.handle_timeout(now);
            self.process(now, id);
        }
        let stalled = self
            .conn(id)
            .and_then(Conn::stall_deadline)
            .is_some_and(|t| t <= now);
        if stalled {
            if let Some(e) = self.conn_mut(id).and_then(|c| c.extra.as_mut()) {
                e.stall_deadline = None;
            }
            self.end_connection(
                now,
                id,
                ReasonCode::QuotaExceeded,
                CloseReason::SlowConsumer,
            );
        }
        self.rearm(id);
    }

    /// Puts `id`'s machine deadline in the timer wheel unless an entry at or before it is
    /// there already: called after every input, output and timeout of the connection.
    pub(crate) fn rearm(&mut self, id: ConnectionId) {
        let Some(c) = self.conn_mut(id) else { return };
        if let Some(at) = c.deadline() {
            if at < c.armed {
                c.armed = at;
                self.timers.push(at, TimerKey::Conn(id));
            }
        }
    }

    /// Handles what a connection's machine reported.
    pub(crate) fn process(&mut self, now: Instant, id: ConnectionId) {
        loop {
            let Some(c) = self.conn_mut(id) else { return };
            if c.deciding() {
                // What came behind waits for the decision, in order.
                break;
            }
            let Some(event) = c.session.poll_event() else {
                break;
            };
            let owner = c.owner();
            match event {
                Event::ConnectRequest(req) => self.on_connect(now, id, *req),
                Event::Auth { method, data, .. } => self.on_auth(now, id, method, data),
                Event::Message {
                    packet_id, message, ..
                } => self.on_message(now, id, packet_id, message),
                Event::Released { tag, packet_id } => {
                    if let Some(s) = owner {
                        self.on_stored_event(s, StoredEvent::Released { tag, packet_id });
                    }
                }
                Event::Finished { tag } => {
                    if let Some(s) = owner {
                        self.on_stored_event(s, StoredEvent::Finished { tag });
                    }
                }
                Event::IncomingReleased { packet_id } => {
                    if let Some(s) = owner {
                        self.on_stored_event(s, StoredEvent::IncomingReleased { packet_id });
                    }
                }
                Event::SubscribeRequest {
                    packet_id,
                    filters,
                    subscription_id,
                } => self.on_subscribe(now, id, packet_id, filters, subscription_id),
                Event::UnsubscribeRequest { packet_id, filters } => {
                    self.on_unsubscribe(now, id, packet_id, filters)
                }
                Event::Disconnected {
                    reason, by_peer, ..
                } => self.on_disconnected(now, id, reason, by_peer),
                _ => {}
            }
        }
        self.wake(id);
    }

    /// Queues a Transmit for `id` unless one is queued, and a Close if its machine is done.
    pub(crate) fn wake(&mut self, id: ConnectionId) {
        let Some(c) = conn_in(&mut self.conns, id) else {
            return;
        };
        if c.closing() {
            return;
        }
        if c.set_transmit_queued() {
            self.events.push_back(BrokerEvent::Transmit(id));
        }
        if c.session.is_closed() {
            let reason = c.close_reason();
            self.close(id, reason);
        }
    }

    /// Asks the program to close `id` (once), saying why.
    pub(crate) fn close(&mut self, id: ConnectionId, reason: CloseReason) {
        self.drop_requests(id);
        let Some(c) = self.conn_mut(id) else { return };
        if c.set_closing() {
            self.events.push_back(BrokerEvent::Close { id, reason });
        }
    }

    /// Ends `id` from the server side with `reason` (5.0: a DISCONNECT with its code
    /// first), recording `why` for the Close event.
    pub(crate) fn end_connection(
        &mut self,
        now: Instant,
        id: ConnectionId,
        code: ReasonCode,
        why: CloseReason,
    ) {
        self.end_connection_with(now, id, code, why, Diagnostics::new());
    }

    /// [`Broker::end_connection`] with a Reason String (and User Properties) on the 5.0
    /// DISCONNECT.
    pub(crate) fn end_connection_with(
        &mut self,
        now: Instant,
        id: ConnectionId,
        code: ReasonCode,
        why: CloseReason,
        diagnostics: Diagnostics,
    ) {
        self.drop_requests(id);
        let Some(c) = self.conn_mut(id) else { return };
        c.set_close_reason(why);
        if diagnostics.is_empty() || c.session.disconnect_with(now, code, diagnostics).is_err() {
            c.session.disconnect(now, code);
        }
        self.wake(id);
        self.close(id, why);
    }

    /// Every connection is told the server is shutting down (5.0: DISCONNECT 0x8B) and
    /// closed with [`CloseReason::ServerShuttingDown`]; sessions stay (a program that
    /// persists them takes them from here).
    pub fn shutdown(&mut self, now: Instant) {
        let _ = now;
        for index in 0..self.conns.len() {
            let Some(c) = self.conns[index].as_deref() else {
                continue;
            };
            let id = ConnectionId {
                index: index as u32,
                generation: c.generation,
            };
            self.end_connection(
                now,
                id,
                ReasonCode::ServerShuttingDown,
                CloseReason::ServerShuttingDown,
            );
        }
    }
}

/// The open connection `id` in `conns`: for borrowing it beside other fields.
pub(crate) fn conn_in(conns: &mut Slots<Option<Box<Conn>>>, id: ConnectionId) -> Option<&mut Conn> {
    conns
        .get_mut(id.index as usize)?
        .as_deref_mut()
        .filter(|c| c.generation == id.generation)
}

/// The open connection `id` in `conns`, borrowed alone.
pub(crate) fn conn_ref(conns: &Slots<Option<Box<Conn>>>, id: ConnectionId) -> Option<&Conn> {
    conns
        .get(id.index as usize)?
        .as_deref()
        .filter(|c| c.generation == id.generation)
}

/// The length of the first packet in `buf` by its fixed header, when the header is
/// complete and valid; anything else is left to the connection's machine to judge.
fn frame_len(buf: &[u8]) -> Option<usize> {
    // Framing only: the machine checks the limits and the version's rules.
    let opts = DecodeOptions::new(ProtocolVersion::V5);
    match mqtt_codec::decode_fixed_header(buf, &opts) {
        Ok(Status::Complete { packet, .. }) => Some(packet.packet_len()),
        _ => None,
    }
}
