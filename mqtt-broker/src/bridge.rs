//! Bridges: connections from this broker to remote brokers, each an `mqtt-state`
//! [`Client`], exchanging the messages of chosen topics both ways (mosquitto's `connection`
//! sections).
//!
//! # Design
//!
//! A bridge has two legs, both ordinary MQTT connections driven by [`Client`] machines:
//!
//! - the **remote leg** is a connection the program opens to the remote broker when
//!   [`Broker::poll_dial`] asks for one, and hands over with [`Broker::connect_bridge`]; from
//!   then on its bytes move like any other connection's ([`Broker::handle_input`],
//!   [`Broker::poll_transmit`], [`BrokerEvent::Transmit`], [`BrokerEvent::Close`],
//!   [`Broker::handle_close`]);
//! - the **local leg** is a connection into this core that never leaves it: a client
//!   named `$bridge/NAME` (MQTT 5.0) whose bytes the core passes to its own session in
//!   memory. It subscribes to the `out` topics, with No Local so that what the bridge
//!   brought in is not sent back, and publishes what comes in.
//!
//! Between the two, a message is handed on and acknowledged to the side it came from only
//! when the other side acknowledged it (both clients use manual acks): a message from the
//! remote is acknowledged once this broker took it (stored first, with
//! [`crate::Persistence::Sync`]); a message for the remote leaves the local session only
//! when the remote took it. So the local leg is a persistent session like any client's:
//! while the remote is unreachable, the local leg is disconnected and messages for the
//! remote wait in its session, within [`BridgeConfig::max_queued`], stored
//! when the broker is durable, and are sent when the bridge is back. No protocol rule is
//! written here: the two machines keep them, so the bridge conforms as a client towards
//! the remote and as a server towards the local leg ([MQTT-7.0.0-1]).
//!
//! The local leg reconnects only together with the remote one; the remote leg is dialled
//! again after a delay that doubles up to [`BridgeConfig::max_reconnect_delay`].
//!
//! What the bridge holds in memory only: a QoS 2 message handed to the remote whose
//! completion is pending when the broker crashes may be sent again after the restart (at
//! least once rather than exactly once), and the remote's QoS 2 messages likewise.

use alloc::collections::{BTreeMap, BTreeSet, VecDeque};
use alloc::format;
use alloc::string::String;
use alloc::vec::Vec;

use bytes::BytesMut;
use mqtt_codec::{ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionOptions};
use mqtt_state::{Client, ClientConfig, Duration, Event, Instant, Message};
use mqtt_topic::{TopicBuf, TopicFilter, TopicName};

use crate::timers::{TimerKey, NOT_ARMED};
use crate::{Broker, BrokerEvent, CloseReason, ConnectionId, Error, Hooks};

/// The prefix of a bridge's local client identifier; clients from outside may not use it.
pub(crate) const LOCAL_PREFIX: &str = "$bridge/";

/// The top bit of a [`ConnectionId`]'s index that marks a bridge's remote leg (the slots
/// of ordinary connections never reach it).
pub(crate) const BRIDGE_BIT: u32 = 1 << 30;

/// Which way a bridge topic's messages go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the remote broker to this one.
    In,
    /// From this broker to the remote one.
    Out,
    /// Both ways.
    Both,
}

impl Direction {
    fn inbound(self) -> bool {
        matches!(self, Direction::In | Direction::Both)
    }

    fn outbound(self) -> bool {
        matches!(self, Direction::Out | Direction::Both)
    }
}

/// One topic rule of a bridge: mosquitto's `topic PATTERN DIRECTION QOS LOCAL REMOTE`.
///
/// The filter is `local_prefix + pattern` here and `remote_prefix + pattern` there; a
/// message crossing the bridge has the one prefix replaced by the other.
///
/// ```
/// use mqtt_broker::{BridgeTopic, Direction};
/// use mqtt_broker::codec::QoS;
///
/// // Local `sensors/#` goes to the remote as `site1/sensors/#`.
/// let t = BridgeTopic::new("sensors/#", Direction::Out, QoS::AtLeastOnce)
///     .with_prefixes("", "site1/");
/// assert_eq!(t.remote_filter(), "site1/sensors/#");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeTopic {
    /// A topic filter, wildcards allowed. Empty (mosquitto's `""`): the rule maps the one
    /// topic `local_prefix` here to the one topic `remote_prefix` there.
    pub pattern: String,
    /// Which way.
    pub direction: Direction,
    /// The QoS of the subscriptions made for it, here and there: the most a message
    /// crossing the bridge keeps.
    pub qos: QoS,
    /// Prepended to the pattern on this broker.
    pub local_prefix: String,
    /// Prepended to the pattern on the remote broker.
    pub remote_prefix: String,
}

impl BridgeTopic {
    /// A rule without prefixes.
    pub fn new(pattern: impl Into<String>, direction: Direction, qos: QoS) -> Self {
        Self {
            pattern: pattern.into(),
            direction,
            qos,
            local_prefix: String::new(),
            remote_prefix: String::new(),
        }
    }

    /// The same rule with these prefixes.
    pub fn with_prefixes(mut self, local: impl Into<String>, remote: impl Into<String>) -> Self {
        self.local_prefix = local.into();
        self.remote_prefix = remote.into();
        self
    }

    /// The filter on this broker.
    pub fn local_filter(&self) -> String {
        format!("{}{}", self.local_prefix, self.pattern)
    }

    /// The filter on the remote broker.
    pub fn remote_filter(&self) -> String {
        format!("{}{}", self.remote_prefix, self.pattern)
    }

    /// `topic` on the other side, if this rule carries it: from this broker when
    /// `outbound`, else from the remote.
    fn map(&self, topic: &str, outbound: bool) -> Option<String> {
        let (from, to) = if outbound {
            (&self.local_prefix, &self.remote_prefix)
        } else {
            (&self.remote_prefix, &self.local_prefix)
        };
        if self.pattern.is_empty() {
            return (topic == from.as_str()).then(|| to.clone());
        }
        let rest = topic.strip_prefix(from.as_str())?;
        let filter = TopicFilter::new(&self.pattern).ok()?;
        let name = TopicName::new(rest).ok()?;
        filter.matches(name).then(|| format!("{to}{rest}"))
    }
}

/// A bridge to a remote broker.
#[derive(Debug, Clone)]
pub struct BridgeConfig {
    /// Its name: the local leg is the client `$bridge/NAME` on this broker.
    pub name: String,
    /// Where the remote broker is, as the program understands it (`host:port`, a URL):
    /// handed back in [`Dial`].
    pub address: String,
    /// How the remote leg connects: protocol version, client identifier, clean start,
    /// keep alive, credentials, and (before 5.0) the bridge flag in the protocol level,
    /// on by default as mosquitto's `try_private`: a remote that refuses that level is
    /// dialled again without it. Manual acks are always on (the bridge acknowledges what
    /// this broker took).
    pub remote: ClientConfig,
    /// The topic rules.
    pub topics: Vec<BridgeTopic>,
    /// Messages from this broker in flight to the remote at once.
    pub max_inflight: u16,
    /// Messages kept for the remote while it is unreachable (QoS 1/2; QoS 0 is not kept),
    /// stored when the broker is durable; beyond it, new ones are dropped and counted.
    /// Below [`crate::BrokerConfig::max_offline_queue`], that applies instead.
    pub max_queued: usize,
    /// The first wait before dialling again after a failure; it doubles each time.
    pub reconnect_delay: Duration,
    /// The longest wait between two dials.
    pub max_reconnect_delay: Duration,
    /// Publish the bridge's state here, retained: `1` when it is up, `0` when it is not,
    /// on `$SYS/broker/connection/NAME/state` (mosquitto's `notifications`, local only).
    pub notifications: bool,
}

impl BridgeConfig {
    /// A bridge named `name` to `address` over `version`; the remote client identifier is
    /// `name`, keep alive 60 s, clean start ([`ClientConfig::new`]'s defaults; mosquitto's
    /// `cleansession` defaults to false, a persistent session on the remote), the bridge
    /// flag on before 5.0, reconnect after 1 s up to 30 s, 64 messages in flight, 100,000
    /// kept while the remote is unreachable, no notifications.
    pub fn new(
        name: impl Into<String>,
        address: impl Into<String>,
        version: ProtocolVersion,
    ) -> Self {
        let name = name.into();
        let mut remote = ClientConfig::new(version, mqtt_state::Utf8Bytes::copy_of(&name));
        // mosquitto's try_private: before 5.0, say it is a bridge (the remote then does not
        // send back what the bridge sent it); dropped if the remote refuses the level.
        remote.bridge = true;
        Self {
            name,
            address: address.into(),
            remote,
            topics: Vec::new(),
            max_inflight: 64,
            max_queued: 100_000,
            reconnect_delay: Duration::from_secs(1),
            max_reconnect_delay: Duration::from_secs(30),
            notifications: false,
        }
    }

    /// The same bridge with one more topic rule.
    pub fn topic(mut self, topic: BridgeTopic) -> Self {
        self.topics.push(topic);
        self
    }
}

/// A bridge, as [`Broker::add_bridge`] names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BridgeId(pub(crate) u32);

/// The core asks the program to open a connection to a bridge's remote broker: on success
/// call [`Broker::connect_bridge`] with the connection, on failure [`Broker::dial_failed`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dial {
    /// The bridge.
    pub bridge: BridgeId,
    /// Its [`BridgeConfig::address`].
    pub address: String,
}

/// Where a bridge stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum BridgeState {
    /// Waiting to dial again (after a failure or a close).
    Waiting,
    /// Asked the program to dial ([`Broker::poll_dial`]), no answer yet.
    Dialing,
    /// Connected, waiting for the remote's CONNACK.
    Connecting,
    /// Up: messages flow.
    Up,
}

pub(crate) struct Bridge {
    config: BridgeConfig,
    /// The remote leg's machine; it keeps its session across connections.
    remote: Client,
    /// The remote leg's connection, while the program has one open.
    remote_conn: Option<ConnectionId>,
    /// A Close for the remote leg was asked for.
    remote_closing: bool,
    /// Generation of the next remote connection id.
    generation: u32,
    state: BridgeState,
    /// The local leg's connection into the core, while the remote leg is up.
    local_conn: Option<ConnectionId>,
    /// The local leg's machine; it keeps its session across connections.
    local: Client,
    /// Bytes from the core for the local machine.
    from_core: BytesMut,
    /// Bytes from the local machine for the core, not read yet (the core paused it).
    to_core: BytesMut,
    /// Messages handed to the remote and not acknowledged by it, in order: (remote packet
    /// identifier, local one). The local one is acknowledged when the remote's is.
    out: VecDeque<(u16, u16)>,
    /// The local identifiers in `out`, so that a repeat from the core is not sent twice.
    out_local: BTreeSet<u16>,
    /// Messages from the remote handed to the core: local identifier to remote one.
    inward: BTreeMap<u16, u16>,
    delay: Duration,
    /// Why the remote leg's machine ended, as it reported.
    last_close: CloseReason,
    /// When to dial again.
    next_dial: Option<Instant>,
    armed: Instant,
}

impl Bridge {
    fn remote_deadline(&self) -> Option<Instant> {
        let client = self.remote_conn.and(self.remote.poll_timeout());
        match (client, self.next_dial) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// Bridges of one broker and the dials they wait for.
#[derive(Default)]
pub(crate) struct Bridges {
    pub(crate) list: Vec<Bridge>,
    dials: VecDeque<Dial>,
    /// Connection ids of local legs, to tell their events from the program's.
    pub(crate) locals: BTreeMap<ConnectionId, u32>,
    /// What the core's output to a local leg is written into.
    scratch: Vec<u8>,
}

impl Bridges {
    /// The most messages `client_id`'s offline session keeps: a bridge's own bound for its
    /// local leg, 0 (the broker's bound applies) for any other session. Only asked once
    /// a queue is at the broker's bound.
    pub(crate) fn queue_limit(&self, client_id: &str) -> usize {
        client_id
            .strip_prefix(LOCAL_PREFIX)
            .and_then(|name| self.list.iter().find(|b| b.config.name == name))
            .map_or(0, |b| b.config.max_queued)
    }
}

/// Whether `id` is a bridge's remote leg, and which bridge.
pub(crate) fn remote_index(id: ConnectionId) -> Option<usize> {
    (id.index & BRIDGE_BIT != 0).then_some((id.index & !BRIDGE_BIT) as usize)
}

impl<H: Hooks> Broker<H> {
    /// Adds a bridge; the core asks for its first connection at once ([`Broker::poll_dial`]).
    ///
    /// Refused ([`Error::InvalidBridge`]) without topics, with a name or prefix that makes a
    /// filter invalid, or with a name already used.
    pub fn add_bridge(&mut self, now: Instant, config: BridgeConfig) -> Result<BridgeId, Error> {
        self.now = self.now.max(now);
        if config.topics.is_empty() {
            return Err(Error::InvalidBridge("a bridge needs at least one topic"));
        }
        if config.name.is_empty() || config.name.contains(['/', '+', '#']) {
            return Err(Error::InvalidBridge(
                "a bridge name is not empty and has no '/', '+' or '#'",
            ));
        }
        if self
            .bridges
            .list
            .iter()
            .any(|b| b.config.name == config.name)
        {
            return Err(Error::InvalidBridge("a bridge of that name exists"));
        }
        for t in &config.topics {
            if t.pattern.is_empty()
                && (mqtt_topic::validate_name(&t.local_prefix).is_err()
                    || mqtt_topic::validate_name(&t.remote_prefix).is_err())
            {
                return Err(Error::InvalidBridge(
                    "a rule without a pattern needs a topic for each prefix",
                ));
            }
            if mqtt_topic::validate_filter(&t.local_filter()).is_err()
                || mqtt_topic::validate_filter(&t.remote_filter()).is_err()
            {
                return Err(Error::InvalidBridge("a topic rule makes an invalid filter"));
            }
        }
        let mut remote_config = config.remote.clone();
        remote_config.manual_acks = true;
        // Bounded by the identifiers the remote may have unacknowledged and the local
        // leg's in-flight window: never refused for lack of room.
        remote_config.max_queued = usize::from(u16::MAX) + 1024;
        let mut local_config = ClientConfig::new(
            ProtocolVersion::V5,
            mqtt_state::Utf8Bytes::from(format!("{LOCAL_PREFIX}{}", config.name)),
        );
        local_config.clean_start = false;
        local_config.session_expiry_interval = u32::MAX;
        local_config.keep_alive = 0;
        local_config.receive_maximum = config.max_inflight.max(1);
        local_config.manual_acks = true;
        local_config.max_queued = usize::from(u16::MAX) + 1024;
        local_config.max_inflight = u16::MAX;
        local_config.maximum_packet_size = self.config.server.maximum_packet_size;
        local_config.topic_alias_maximum = 0;
        local_config.outgoing_topic_aliases = 0;
        let index = self.bridges.list.len() as u32;
        let delay = config.reconnect_delay;
        self.bridges.list.push(Bridge {
            remote: Client::new(remote_config),
            local: Client::new(local_config),
            config,
            remote_conn: None,
            remote_closing: false,
            generation: 0,
            state: BridgeState::Dialing,
            local_conn: None,
            from_core: BytesMut::new(),
            to_core: BytesMut::new(),
            out: VecDeque::new(),
            out_local: BTreeSet::new(),
            inward: BTreeMap::new(),
            delay,
            last_close: CloseReason::TransportClosed,
            next_dial: None,
            armed: NOT_ARMED,
        });
        let b = &self.bridges.list[index as usize];
        self.bridges.dials.push_back(Dial {
            bridge: BridgeId(index),
            address: b.config.address.clone(),
        });
        Ok(BridgeId(index))
    }

    /// The next connection to open for a bridge. Drain it after each call, like
    /// [`Broker::poll_event`].
    pub fn poll_dial(&mut self) -> Option<Dial> {
        self.bridges.dials.pop_front()
    }

    /// Where bridge `bridge` stands; `None` for an unknown one.
    pub fn bridge_state(&self, bridge: BridgeId) -> Option<BridgeState> {
        self.bridges.list.get(bridge.0 as usize).map(|b| b.state)
    }

    /// The program opened the connection a [`Dial`] asked for: its identifier, for
    /// [`Broker::handle_input`], [`Broker::poll_transmit`] and [`Broker::handle_close`] as
    /// any connection's. The CONNECT is ready to send ([`BrokerEvent::Transmit`]). `None`
    /// when the bridge did not ask for one.
    pub fn connect_bridge(&mut self, now: Instant, bridge: BridgeId) -> Option<ConnectionId> {
        self.now = self.now.max(now);
        let i = bridge.0 as usize;
        let b = self.bridges.list.get_mut(i)?;
        if b.state != BridgeState::Dialing {
            return None;
        }
        b.generation = b.generation.wrapping_add(1);
        let id = ConnectionId {
            index: BRIDGE_BIT | bridge.0,
            generation: b.generation,
        };
        b.remote_conn = Some(id);
        b.remote_closing = false;
        b.last_close = CloseReason::TransportClosed;
        b.state = BridgeState::Connecting;
        if b.remote.connect(now).is_err() {
            // A machine that cannot connect (closed for good) is a bug; say so by closing.
            self.close_remote(i, CloseReason::TransportClosed);
        }
        self.events.push_back(BrokerEvent::Transmit(id));
        self.arm_bridge(i);
        Some(id)
    }

    /// The program could not open the connection a [`Dial`] asked for: the core asks again
    /// after the bridge's reconnect delay.
    pub fn dial_failed(&mut self, now: Instant, bridge: BridgeId) {
        self.now = self.now.max(now);
        let i = bridge.0 as usize;
        if let Some(b) = self.bridges.list.get_mut(i) {
            if b.state == BridgeState::Dialing {
                self.retry_later(now, i);
            }
        }
    }

    fn retry_later(&mut self, now: Instant, i: usize) {
        let b = &mut self.bridges.list[i];
        b.state = BridgeState::Waiting;
        b.next_dial = Some(now + b.delay);
        b.delay = (b.delay + b.delay).min(b.config.max_reconnect_delay);
        self.arm_bridge(i);
    }

    fn arm_bridge(&mut self, i: usize) {
        let b = &mut self.bridges.list[i];
        if let Some(at) = b.remote_deadline() {
            if at < b.armed {
                b.armed = at;
                self.timers.push(at, TimerKey::Bridge(i as u32));
            }
        }
    }

    /// A bridge's deadline came up: dial again, or the remote leg's keep alive.
    pub(crate) fn bridge_timer(&mut self, now: Instant, at: Instant, i: usize) {
        let Some(b) = self.bridges.list.get_mut(i) else {
            return;
        };
        if b.armed != at {
            return; // stale
        }
        b.armed = NOT_ARMED;
        if b.next_dial.is_some_and(|t| t <= now) {
            b.next_dial = None;
            b.state = BridgeState::Dialing;
            let dial = Dial {
                bridge: BridgeId(i as u32),
                address: b.config.address.clone(),
            };
            self.bridges.dials.push_back(dial);
        }
        let b = &mut self.bridges.list[i];
        if b.remote_conn.is_some() && b.remote.poll_timeout().is_some_and(|t| t <= now) {
            b.remote.handle_timeout(now);
            self.remote_process(now, i);
        }
        self.arm_bridge(i);
    }

    /// Bytes from a bridge's remote leg.
    pub(crate) fn remote_input(&mut self, now: Instant, i: usize, buf: &mut BytesMut) {
        let Some(b) = self.bridges.list.get_mut(i) else {
            return;
        };
        // An error closes the machine; `remote_process` sees it.
        let _ = b.remote.handle_input(now, buf);
        self.remote_process(now, i);
        self.arm_bridge(i);
    }

    /// The next packet for a bridge's remote leg.
    pub(crate) fn remote_transmit(
        &mut self,
        now: Instant,
        i: usize,
        out: &mut [u8],
    ) -> Result<Option<usize>, Error> {
        let Some(b) = self.bridges.list.get_mut(i) else {
            return Ok(None);
        };
        let r = match b.remote.poll_transmit(now, out) {
            Ok(n) => Ok(n),
            Err(mqtt_state::Error::Codec(mqtt_codec::Error::BufferTooSmall { required })) => {
                Err(Error::BufferTooSmall { needed: required })
            }
            Err(_) => Ok(None),
        };
        // Sending drains the machine's events too (a CONNACK timeout, say).
        self.remote_process(now, i);
        self.arm_bridge(i);
        r
    }

    /// The program closed a bridge's remote leg (after a Close, or the network's doing):
    /// the local leg goes offline too, and the remote is dialled again later.
    pub(crate) fn remote_closed(&mut self, now: Instant, i: usize) {
        let Some(b) = self.bridges.list.get_mut(i) else {
            return;
        };
        if b.remote_conn.take().is_none() {
            return;
        }
        b.remote.handle_close(now);
        // What the remote leg reported last (SessionLost comes with the next CONNACK).
        self.remote_process(now, i);
        let b = &mut self.bridges.list[i];
        let refused_level = matches!(
            b.last_close,
            CloseReason::ClientDisconnect(ReasonCode::UnsupportedProtocolVersion)
        );
        if refused_level && b.remote.config().bridge && !b.remote.config().version.is_v5() {
            // A remote that does not know mosquitto's bridge flag: as mosquitto does, the
            // next dial goes without it.
            let mut config = b.remote.config().clone();
            config.bridge = false;
            let old = core::mem::replace(&mut b.remote, Client::new(config.clone()));
            b.remote = Client::with_session(config, old.into_session());
        }
        // Messages from the remote the core has not acknowledged: the remote sends them
        // again, or they are lost with its session; either way no ack goes back for them.
        let b = &mut self.bridges.list[i];
        b.inward.clear();
        if b.state == BridgeState::Up && b.config.notifications {
            self.bridge_notify(now, i, false);
        }
        let b = &mut self.bridges.list[i];
        if let Some(l) = b.local_conn.take() {
            self.bridges.locals.remove(&l);
            self.handle_close(now, l);
            let b = &mut self.bridges.list[i];
            b.local.handle_close(now);
            b.from_core.clear();
            b.to_core.clear();
            self.local_process(now, i);
        }
        self.retry_later(now, i);
    }

    fn close_remote(&mut self, i: usize, reason: CloseReason) {
        let b = &mut self.bridges.list[i];
        if let (Some(id), false) = (b.remote_conn, b.remote_closing) {
            b.remote_closing = true;
            self.events.push_back(BrokerEvent::Close { id, reason });
        }
    }

    /// Handles what the remote leg's machine reported.
    fn remote_process(&mut self, now: Instant, i: usize) {
        let mut transmit = false;
        loop {
            let b = &mut self.bridges.list[i];
            let Some(event) = b.remote.poll_event() else {
                break;
            };
            match event {
                Event::Connected(_) => {
                    b.state = BridgeState::Up;
                    b.delay = b.config.reconnect_delay;
                    let notify = b.config.notifications;
                    let v5 = b.config.remote.version.is_v5();
                    let filters: Vec<(String, SubscriptionOptions)> = b
                        .config
                        .topics
                        .iter()
                        .filter(|t| t.direction.inbound())
                        .map(|t| {
                            // 5.0: not back what the bridge sent there, retain flags as
                            // published (before 5.0 these options do not exist).
                            let o = if v5 {
                                SubscriptionOptions {
                                    qos: t.qos,
                                    no_local: true,
                                    retain_as_published: true,
                                    retain_handling: RetainHandling::SendAtSubscribe,
                                }
                            } else {
                                SubscriptionOptions::qos(t.qos)
                            };
                            (t.remote_filter(), o)
                        })
                        .collect();
                    if !filters.is_empty() {
                        let refs: Vec<(&str, SubscriptionOptions)> =
                            filters.iter().map(|(f, o)| (f.as_str(), *o)).collect();
                        let _ = b.remote.subscribe(now, &refs, None);
                    }
                    self.open_local(now, i);
                    if notify {
                        self.bridge_notify(now, i, true);
                    }
                }
                Event::Message {
                    packet_id, message, ..
                } => self.bridge_in(now, i, packet_id.map(|p| p.get()), message),
                Event::Acknowledged { packet_id, .. } => {
                    // Taken by the remote (or refused there, which a bridge cannot mend):
                    // the local session may let it go.
                    let b = &mut self.bridges.list[i];
                    let rid = packet_id.get();
                    if let Some(pos) = b.out.iter().position(|&(r, _)| r == rid) {
                        if let Some((_, lid)) = b.out.remove(pos) {
                            b.out_local.remove(&lid);
                            if let Some(p) = mqtt_codec::PacketId::new(lid) {
                                b.local.ack(now, p);
                            }
                            self.local_flush(now, i);
                        }
                    }
                }
                Event::SessionLost { messages } => {
                    // The remote forgot the messages in flight, the oldest of `out`: sent
                    // again, as new ones.
                    let lost: Vec<(u16, u16)> =
                        b.out.drain(..messages.len().min(b.out.len())).collect();
                    for ((_, lid), m) in lost.into_iter().zip(messages) {
                        match b.remote.publish(now, m) {
                            Ok(Some(r)) => b.out.push_back((r.get(), lid)),
                            _ => {
                                b.out_local.remove(&lid);
                            }
                        }
                    }
                }
                Event::Disconnected {
                    reason, by_peer, ..
                } => {
                    b.last_close = if by_peer {
                        CloseReason::ClientDisconnect(reason)
                    } else {
                        CloseReason::ServerDisconnect(reason)
                    };
                }
                _ => {}
            }
            transmit = true;
        }
        let b = &self.bridges.list[i];
        if let Some(id) = b.remote_conn {
            if b.remote.is_closed() {
                let reason = b.last_close;
                self.close_remote(i, reason);
            } else if transmit {
                self.events.push_back(BrokerEvent::Transmit(id));
            }
        }
    }

    /// The remote leg is up: the local one connects to this core.
    fn open_local(&mut self, now: Instant, i: usize) {
        if self.bridges.list[i].local_conn.is_some() {
            return;
        }
        let id = self.open(now);
        if let Some(c) = self.conn_mut(id) {
            c.set_internal();
        }
        self.bridges.locals.insert(id, i as u32);
        let b = &mut self.bridges.list[i];
        b.local_conn = Some(id);
        let _ = b.local.connect(now);
        self.local_flush(now, i);
    }

    /// A message from the remote: on to the core under its local topic.
    fn bridge_in(&mut self, now: Instant, i: usize, rid: Option<u16>, message: Message) {
        let b = &mut self.bridges.list[i];
        let mapped = b
            .config
            .topics
            .iter()
            .filter(|t| t.direction.inbound())
            .find_map(|t| t.map(message.topic.as_ref(), false));
        let topic = mapped.and_then(|t| TopicBuf::try_from(t).ok());
        let Some(topic) = topic else {
            // Not one of ours (a remote that sends what was not asked for): taken and
            // dropped, so that it does not block the remote's queue.
            if let Some(p) = rid.and_then(mqtt_codec::PacketId::new) {
                b.remote.ack(now, p);
            }
            self.stats.messages_dropped += 1;
            return;
        };
        let mut m = message;
        m.topic = topic;
        if !m.properties().subscription_identifiers.is_empty() {
            m.properties_mut().subscription_identifiers.clear();
        }
        match b.local.publish(now, m) {
            Ok(Some(lid)) => {
                if let Some(r) = rid {
                    b.inward.insert(lid.get(), r);
                }
            }
            Ok(None) => {}
            Err(_) => {
                // Cannot happen within the bounds set at `add_bridge`; the remote sends it
                // again if it is QoS 1/2 (no ack goes back).
                self.stats.messages_dropped += 1;
            }
        }
        self.local_flush(now, i);
    }

    /// Moves the local machine's output into the core, as far as the core reads it.
    pub(crate) fn local_flush(&mut self, now: Instant, i: usize) {
        let Some(l) = self.bridges.list[i].local_conn else {
            return;
        };
        // Events first: what handling them queues (a SUBSCRIBE after CONNACK, acks) goes
        // in this flush.
        self.local_process(now, i);
        let mut chunk = [0u8; 512];
        loop {
            let b = &mut self.bridges.list[i];
            match b.local.poll_transmit(now, &mut chunk) {
                Ok(Some(n)) => b.to_core.extend_from_slice(&chunk[..n]),
                Ok(None) => break,
                Err(mqtt_state::Error::Codec(mqtt_codec::Error::BufferTooSmall { required })) => {
                    let mut big = alloc::vec![0u8; required];
                    match b.local.poll_transmit(now, &mut big) {
                        Ok(Some(n)) => b.to_core.extend_from_slice(&big[..n]),
                        _ => break,
                    }
                }
                Err(_) => break,
            }
        }
        let mut input = core::mem::take(&mut self.bridges.list[i].to_core);
        if !input.is_empty() && self.wants_input(l) {
            self.handle_input(now, l, &mut input);
        }
        // What the core did not read yet (it paused the leg) waits for Resume.
        let b = &mut self.bridges.list[i];
        if b.to_core.is_empty() {
            b.to_core = input;
        } else {
            input.extend_from_slice(&b.to_core);
            b.to_core = input;
        }
    }

    /// The core has output for a local leg: into its machine.
    pub(crate) fn local_transmit(&mut self, now: Instant, l: ConnectionId, i: usize) {
        // Reused: this runs for every batch of output a bridged message makes.
        let mut chunk = core::mem::take(&mut self.bridges.scratch);
        if chunk.len() < 4096 {
            chunk.resize(4096, 0);
        }
        loop {
            match self.poll_transmit(now, l, &mut chunk) {
                Ok(Some(n)) => self.bridges.list[i]
                    .from_core
                    .extend_from_slice(&chunk[..n]),
                Ok(None) => break,
                Err(Error::BufferTooSmall { needed }) => chunk.resize(needed, 0),
                Err(_) => break,
            }
        }
        self.bridges.scratch = chunk;
        let b = &mut self.bridges.list[i];
        if !b.from_core.is_empty() {
            let mut input = core::mem::take(&mut b.from_core);
            let _ = b.local.handle_input(now, &mut input);
            b.from_core = input;
        }
        self.local_flush(now, i);
    }

    /// Handles what the local leg's machine reported.
    fn local_process(&mut self, now: Instant, i: usize) {
        let mut remote_output = false;
        loop {
            let b = &mut self.bridges.list[i];
            let Some(event) = b.local.poll_event() else {
                break;
            };
            match event {
                Event::Connected(_) => {
                    let filters: Vec<(String, SubscriptionOptions)> = b
                        .config
                        .topics
                        .iter()
                        .filter(|t| t.direction.outbound())
                        .map(|t| {
                            let o = SubscriptionOptions {
                                qos: t.qos,
                                // Not back to the remote what came from it.
                                no_local: true,
                                retain_as_published: true,
                                retain_handling: RetainHandling::SendIfNew,
                            };
                            (t.local_filter(), o)
                        })
                        .collect();
                    if !filters.is_empty() {
                        let refs: Vec<(&str, SubscriptionOptions)> =
                            filters.iter().map(|(f, o)| (f.as_str(), *o)).collect();
                        let _ = b.local.subscribe(now, &refs, None);
                    }
                }
                Event::Message {
                    packet_id, message, ..
                } => {
                    let lid = packet_id.map(|p| p.get());
                    if lid.is_some_and(|l| b.out_local.contains(&l)) {
                        // Sent again by the core after the local leg reconnected; the
                        // remote leg has it already.
                        continue;
                    }
                    let mapped = b
                        .config
                        .topics
                        .iter()
                        .filter(|t| t.direction.outbound())
                        .find_map(|t| t.map(message.topic.as_ref(), true))
                        .and_then(|t| TopicBuf::try_from(t).ok());
                    let Some(topic) = mapped else {
                        if let Some(p) = packet_id {
                            b.local.ack(now, p);
                        }
                        continue;
                    };
                    let mut m = message;
                    m.topic = topic;
                    if !m.properties().subscription_identifiers.is_empty() {
                        m.properties_mut().subscription_identifiers.clear();
                    }
                    match b.remote.publish(now, m) {
                        Ok(Some(r)) => {
                            if let Some(l) = lid {
                                b.out.push_back((r.get(), l));
                                b.out_local.insert(l);
                            }
                        }
                        Ok(None) => {}
                        Err(_) => {
                            // The remote cannot carry it (QoS or retain it does not
                            // support, a full queue): dropped and counted, not retried
                            // forever.
                            if let Some(p) = packet_id {
                                b.local.ack(now, p);
                            }
                            self.stats.messages_dropped += 1;
                        }
                    }
                    remote_output = true;
                }
                Event::Acknowledged { packet_id, .. } => {
                    // The core took a message from the remote: acknowledge it there.
                    if let Some(r) = b.inward.remove(&packet_id.get()) {
                        if let Some(p) = mqtt_codec::PacketId::new(r) {
                            b.remote.ack(now, p);
                            remote_output = true;
                        }
                    }
                }
                _ => {}
            }
        }
        if remote_output {
            if let Some(id) = self.bridges.list[i].remote_conn {
                self.events.push_back(BrokerEvent::Transmit(id));
            }
        }
    }

    /// A local leg's event, handled inside the core; `true` if `event` was one.
    pub(crate) fn local_event(&mut self, event: &BrokerEvent) -> bool {
        let id = event.connection();
        let Some(&i) = self.bridges.locals.get(&id) else {
            return false;
        };
        let i = i as usize;
        let now = self.now;
        match *event {
            BrokerEvent::Transmit(_) => self.local_transmit(now, id, i),
            BrokerEvent::Resume(_) => self.local_flush(now, i),
            BrokerEvent::Pause(_) => {}
            BrokerEvent::Close { reason, .. } => {
                // The core ended the local leg (shutting down, a slow remote): the bridge
                // starts over with the remote leg.
                self.local_transmit(now, id, i);
                self.bridges.locals.remove(&id);
                self.bridges.list[i].local_conn = None;
                self.handle_close(now, id);
                let b = &mut self.bridges.list[i];
                b.local.handle_close(now);
                b.from_core.clear();
                b.to_core.clear();
                if b.remote.disconnect(now, ReasonCode::Success).is_ok() {
                    if let Some(r) = b.remote_conn {
                        self.events.push_back(BrokerEvent::Transmit(r));
                    }
                }
                self.close_remote(i, reason);
            }
        }
        true
    }
}

impl<H: Hooks> Broker<H> {
    /// Publishes bridge `i`'s state, retained, on `$SYS/broker/connection/NAME/state`.
    fn bridge_notify(&mut self, now: Instant, i: usize, up: bool) {
        let name = &self.bridges.list[i].config.name;
        let Ok(topic) = TopicBuf::try_from(format!("$SYS/broker/connection/{name}/state")) else {
            return;
        };
        let mut m = Message::new(topic, if up { "1" } else { "0" }, QoS::AtMostOnce);
        m.retain = true;
        self.route(now, None, None, m);
    }

    /// Whether `id` is bridge `i`'s open remote leg.
    pub(crate) fn bridge_conn_is(&self, i: usize, id: ConnectionId) -> bool {
        self.bridges
            .list
            .get(i)
            .is_some_and(|b| b.remote_conn == Some(id))
    }
}
