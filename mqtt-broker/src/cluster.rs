//! A cluster: several broker nodes that behave as one broker, over a message bus the
//! program provides (NATS in `mqtt-tokio`), sans-IO like the rest of the core.
//!
//! # Design
//!
//! The core says what leaves the node and takes in what comes from the others, as
//! [`ClusterOp`]s from [`Broker::poll_cluster`] and calls such as
//! [`Broker::cluster_publish`]; the program carries them over its bus. It needs from the
//! bus what NATS gives: subscriptions by subject with wildcards, delivered only where
//! there is interest, and queue groups that hand each message to one member.
//!
//! - **Interest**: each distinct filter subscribed on the node is one
//!   [`ClusterOp::Subscribe`] (the first subscriber) and one [`ClusterOp::Unsubscribe`]
//!   (the last one gone), so the bus carries a message only to nodes that want it. A
//!   program that reconnects to its bus subscribes again to [`Broker::cluster_interest`].
//! - **Messages**: every message published on the node (a client's, a will, one the
//!   program publishes) goes to its local subscribers at once and out as
//!   [`ClusterOp::Publish`]; the other nodes route it to theirs
//!   ([`Broker::cluster_publish`] with [`ClusterTarget::Plain`]). `$SYS` topics stay on
//!   their node. The program must not hand a node its own messages back as `Plain`.
//! - **Shared subscriptions**: cluster-wide, each message goes to one member of a group.
//!   A node's `$share/GROUP/FILTER` is a queue subscription on the bus (group and filter
//!   together name the queue); the node the bus picks delivers to one of its local members
//!   ([`ClusterTarget::Shared`]). So a node never delivers to a shared group on its own,
//!   its own messages included: those come back through the queue too.
//! - **Retained messages**: every retained message (or clearing) published on a node is a
//!   [`ClusterOp::Publish`] with `retain` set; the program also keeps it where every node
//!   reads it (a stream with the last message per subject), and each node stores what it
//!   reads with [`Broker::cluster_retained`]: a subscriber on any node gets them.
//! - **Sessions**: a client connecting to a node is a [`ClusterOp::Claim`], and its
//!   CONNACK waits. The program records that this node owns the client identifier (a
//!   key-value store) and has the node that owned it before let go
//!   ([`Broker::session_taken`]: the client is disconnected there with Session taken over,
//!   [MQTT-3.1.4-3], and the session ends there without a trace in the store). It then
//!   hands this node the session's stored entries ([`Broker::cluster_import`]) and says
//!   the claim is done ([`Broker::cluster_claimed`]): the client resumes its session here,
//!   subscriptions, queued messages, messages in flight and QoS 2 state, as after a
//!   reconnect on one broker.
//! - **The session store is the cluster's**: in a cluster, the program writes the
//!   session tables ([`crate::Table::Sessions`], `Messages`, `Progress`, `Incoming`) of
//!   [`Broker::poll_store`] to a store every node reads (JetStream in `mqtt-tokio`),
//!   keyed by client identifier: so a node that dies leaves its sessions, with everything
//!   it acknowledged, for another to resume. A node never deletes what it let go; the new
//!   owner's changes overwrite it, and a clean start removes it.
//!
//! The order of a move keeps what was acknowledged: the new node imports the session's
//! record first (its subscriptions: the bus brings their messages here from then on), then
//! the old node lets go and stores its last changes, then the new node imports the
//! messages, which go before those queued here meanwhile. A message published in between
//! may reach the session twice (once by each node): never zero times.
//!
//! Messages cross at the QoS they were published with; each node downgrades to its
//! subscribers' QoS as for its own messages ([MQTT-3.8.4-8]).

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use bytes::Bytes;
use mqtt_codec::ReasonCode;
use mqtt_state::{Instant, Message};
use mqtt_topic::Subscription;

use crate::persist::{Restoring, Table};
use crate::{Broker, CloseReason, ConnectionId, Error, Hooks};
use mqtt_state::ConnectRequest;

use crate::decide::Deciding;

/// A node's part in a cluster ([`crate::BrokerConfig::cluster`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// This node's name, unique in the cluster: what the program stamps on the messages it
    /// sends, so that it can tell its own from the others', and records as a session's
    /// owner.
    pub node: String,
}

/// A filter some subscriber on this node has: the bus should bring its messages here.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterFilter {
    /// The topic filter (the part after `$share/GROUP/` for a shared subscription).
    pub filter: String,
    /// The ShareName of a shared subscription: a queue on the bus, so that one node of
    /// the cluster gets each message.
    pub share: Option<String>,
}

/// What the core asks of the program for the cluster: drain [`Broker::poll_cluster`] after
/// each call, like [`Broker::poll_event`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClusterOp {
    /// Bring messages matching this filter to this node (its first subscriber).
    Subscribe(ClusterFilter),
    /// No subscriber to it is left here.
    Unsubscribe(ClusterFilter),
    /// A message published on this node, for the other nodes' subscribers.
    Publish {
        /// Its topic.
        topic: String,
        /// Whether it is retained (an empty payload clears the topic's retained message):
        /// the program keeps the last one per topic where every node reads it.
        retain: bool,
        /// The message as an MQTT 5.0 PUBLISH packet (what [`Message::to_stored`]
        /// writes), for [`Broker::cluster_publish`] on the other nodes.
        frame: Bytes,
    },
    /// A client is connecting here (its CONNECT accepted by the hooks), and waits: make
    /// this node the owner of its session, have the node that owned it before let go
    /// ([`Broker::session_taken`] there), then, with `resume`, import the session's
    /// stored entries ([`Broker::cluster_import`]), and call [`Broker::cluster_claimed`].
    Claim {
        /// The client identifier.
        client_id: String,
        /// The connection waiting.
        conn: ConnectionId,
        /// The client asks to resume its session (not Clean Start): bring it here.
        resume: bool,
    },
}

/// Which subscribers of a node a message from the cluster goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClusterTarget<'a> {
    /// Its plain (not shared) subscribers: the message came through the bus subscription
    /// for `via` (a [`ClusterOp::Subscribe`] without a share). A bus hands a message to a
    /// node once per subscription it matches (`a/#` and `a/+` both bring `a/b`); the core
    /// takes one copy and ignores the others, so pass each copy with the filter it came by.
    Plain {
        /// The filter of the bus subscription that brought it.
        via: &'a str,
    },
    /// One member of this shared subscription here: the bus picked this node from the
    /// group's queue.
    Shared {
        /// The ShareName.
        share: &'a str,
        /// The topic filter.
        filter: &'a str,
    },
}

/// How [`Broker::route`] treats a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RouteMode<'a> {
    /// Published on this node: every local subscriber, and out to the cluster if there
    /// is one (then shared groups are the cluster's to pick).
    Local,
    /// From another node.
    Cluster(ClusterTarget<'a>),
}

/// The cluster's state in the core.
#[derive(Default)]
pub(crate) struct ClusterState {
    /// Per distinct filter on this node: its subscriptions, and its number in `plain`.
    pub(crate) interest: BTreeMap<ClusterFilter, (u32, u32)>,
    /// The plain filters, by number, to find the one copy of a message to take: that of
    /// the lowest-numbered filter it matches.
    plain: mqtt_topic::SubscriptionTree<u32, ()>,
    /// The plain filters' numbers by filter: found by the `via` of each message without
    /// building a key.
    plain_ids: BTreeMap<String, u32>,
    next_id: u32,
    pub(crate) ops: VecDeque<ClusterOp>,
    /// `Subscribe` operations handed out, and those the program reported in place.
    issued: u64,
    confirmed: u64,
    /// SUBACKs waiting for their filters to be in place on the bus: the count of
    /// `Subscribe`s they need confirmed, the store batch they need durable, the promise.
    held: VecDeque<(u64, Option<crate::persist::Batch>, crate::persist::Promise)>,
    /// Sessions being imported, by client identifier.
    imports: BTreeMap<String, Box<Restoring>>,
    /// The client identifier each parked CONNECT claims: its import ends with the claim,
    /// even if the connection has gone meanwhile.
    parked: BTreeMap<ConnectionId, String>,
}

fn cluster_filter(sub: &Subscription<'_>) -> ClusterFilter {
    ClusterFilter {
        filter: String::from(sub.filter().as_str()),
        share: sub.group().map(String::from),
    }
}

impl<H: Hooks> Broker<H> {
    /// The next thing the cluster must carry; `None` when there is none (or no cluster).
    pub fn poll_cluster(&mut self) -> Option<ClusterOp> {
        self.cluster.ops.pop_front()
    }

    /// Every filter this node has subscribers for: what a program that (re)connects to its
    /// bus subscribes to before it takes [`Broker::poll_cluster`]'s changes.
    pub fn cluster_interest(&self) -> impl Iterator<Item = &ClusterFilter> + '_ {
        self.cluster.interest.keys()
    }

    /// The program has put the oldest [`ClusterOp::Subscribe`] not yet reported in place on
    /// its bus (for NATS: the subscription sent and the server's answer to a flush
    /// received), so that the other nodes' messages for it come here from now on. Call
    /// once per `Subscribe`, in the order handed out. The SUBACK of a subscription that
    /// needed it waits for this: a client that gets its SUBACK gets every message
    /// published after it, on any node ([MQTT-3.8.4-1], [MQTT-3.9.3-1] as on one broker).
    pub fn cluster_subscribed(&mut self, now: Instant) {
        self.now = self.now.max(now);
        let c = &mut self.cluster;
        c.confirmed = (c.confirmed + 1).min(c.issued);
        while self
            .cluster
            .held
            .front()
            .is_some_and(|(t, _, _)| *t <= self.cluster.confirmed)
        {
            let Some((_, after, promise)) = self.cluster.held.pop_front() else {
                break;
            };
            // Stored already, or still waiting for its batch.
            let after = after.filter(|b| *b > self.store.durable);
            self.promise(now, after, promise);
        }
    }

    /// A SUBACK about to be sent (`promise`, after store batch `after`): held until the
    /// filters this SUBSCRIBE added to the node's interest are in place on the bus;
    /// `None` when it was held, else the promise back.
    pub(crate) fn hold_for_cluster(
        &mut self,
        after: Option<crate::persist::Batch>,
        promise: crate::persist::Promise,
    ) -> Option<crate::persist::Promise> {
        let c = &mut self.cluster;
        if c.issued > c.confirmed {
            c.held.push_back((c.issued, after, promise));
            None
        } else {
            Some(promise)
        }
    }

    /// A message another node published ([`ClusterOp::Publish`]'s `frame`), for this
    /// node's subscribers as `target` says. Not stored as retained here (that is
    /// [`Broker::cluster_retained`]'s) nor sent on to the cluster. Returns how many
    /// sessions it went to; a frame that is not a PUBLISH is [`Error::InvalidClusterMessage`].
    pub fn cluster_publish(
        &mut self,
        now: Instant,
        frame: &Bytes,
        target: ClusterTarget<'_>,
    ) -> Result<usize, Error> {
        self.now = self.now.max(now);
        let message = Message::from_stored(frame).map_err(|_| Error::InvalidClusterMessage)?;
        if let ClusterTarget::Plain { via } = target {
            // One copy per message: the one that came by the lowest-numbered filter.
            let Some(&id) = self.cluster.plain_ids.get(via) else {
                // No subscriber here any more.
                return Ok(0);
            };
            let mut lowest = u32::MAX;
            self.cluster
                .plain
                .for_each_match(message.topic.as_topic_name(), |m| {
                    if let mqtt_topic::Match::Plain { key, .. } = m {
                        lowest = lowest.min(*key);
                    }
                });
            if lowest != id {
                return Ok(0);
            }
        }
        self.stats.messages_received += 1;
        Ok(self.route_mode(now, None, None, message, RouteMode::Cluster(target)))
    }

    /// A retained message from the cluster (or its clearing, an empty payload): stored
    /// here as if published here, delivered to no one (its own [`ClusterOp::Publish`]
    /// does that).
    pub fn cluster_retained(&mut self, now: Instant, frame: &Bytes) -> Result<(), Error> {
        self.now = self.now.max(now);
        let message = Message::from_stored(frame).map_err(|_| Error::InvalidClusterMessage)?;
        let name = message.topic.clone();
        let topic = name.as_topic_name();
        if message.payload.is_empty() {
            if self.retained.remove(topic).is_some() {
                self.store_retained(now, topic.as_str(), None);
            }
        } else {
            let mut m = message.detached();
            m.retain = true;
            self.store_retained(now, topic.as_str(), Some(&m));
            self.retained.insert(topic, (m, now));
        }
        Ok(())
    }

    /// Another node admitted `client_id` ([`ClusterOp::Claim`] there): its connection here,
    /// if any, is closed with Session taken over ([MQTT-3.1.4-3]), and its session here
    /// ends. Whether there was one.
    pub fn session_taken(&mut self, now: Instant, client_id: &str) -> bool {
        self.now = self.now.max(now);
        let Some(s) = self.session_of(client_id) else {
            return false;
        };
        let conn = self.sessions[s].as_ref().and_then(|r| r.conn);
        if let Some(id) = conn {
            // As a takeover on one node: 5.0 counts it as a close without DISCONNECT, so
            // the will goes out; 3.1.1 practice does not publish it.
            if let Some(c) = self.conn_mut(id) {
                if !c.session.version().is_v5() {
                    let _ = c.take_will();
                }
            }
            self.end_connection(
                now,
                id,
                ReasonCode::SessionTakenOver,
                CloseReason::SessionTakenOver,
            );
            // Detached from its connection, so that the close does not park it again.
            self.release(now, id);
        }
        if self.session_of(client_id) == Some(s) {
            // A delayed will goes out with the session's end ([MQTT-3.1.2-8]).
            let will = self.sessions[s]
                .as_mut()
                .and_then(|r| r.offline.as_mut())
                .and_then(|o| o.pending_will.take());
            if let Some((will, _)) = will {
                self.route(now, None, None, will);
            }
            // The stored session is the new owner's now: nothing deleted.
            self.end_session_stored(s, false);
        }
        true
    }

    /// A CONNECT for a client identifier some other node may own: it waits for its claim.
    ///
    /// It waits as for a deferred decision: not read meanwhile, and refused if the claim
    /// takes longer than [`crate::BrokerConfig::decision_timeout`].
    pub(crate) fn cluster_park(&mut self, now: Instant, conn: ConnectionId, req: ConnectRequest) {
        let deadline = now + self.config.decision_timeout;
        let Some(c) = self.conn_mut(conn) else { return };
        let was_readable = c.readable();
        let client_id = String::from(req.client_id.as_str());
        let resume = !req.clean_start;
        let e = c.extra_mut();
        e.authenticating = Some(Box::new(req));
        e.deciding = Some(Box::new(Deciding {
            deadline,
            requests: Vec::new(),
            subscribe: None,
        }));
        if was_readable {
            self.events.push_back(crate::BrokerEvent::Pause(conn));
        }
        self.rearm(conn);
        self.cluster.parked.insert(conn, client_id.clone());
        self.cluster.ops.push_back(ClusterOp::Claim {
            client_id,
            conn,
            resume,
        });
    }

    /// One stored entry of a session another node owned (or left, dying), for the
    /// [`ClusterOp::Claim`] of its client: as [`Broker::restore`] takes them, a table at a
    /// time in [`Table::ALL`] order, from the cluster's store. The `Sessions` entry may come
    /// twice: once before the previous owner lets go (so that its subscriptions bring
    /// messages here from then on) and once after (its last state, which replaces the
    /// first). A `Retained` entry, or one that cannot be read, is [`Error::Corrupt`]:
    /// nothing of it is taken, and the client gets its session as far as it was read.
    pub fn cluster_import(
        &mut self,
        now: Instant,
        table: Table,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), Error> {
        self.now = self.now.max(now);
        let corrupt = |reason| Error::Corrupt { table, reason };
        let client_id = match table {
            Table::Sessions => {
                core::str::from_utf8(key).map_err(|_| corrupt("client identifier not UTF-8"))?
            }
            Table::Retained => return Err(corrupt("not a session's")),
            _ => crate::persist::split_key(table, key)?.0,
        };
        let rs = self
            .cluster
            .imports
            .remove(client_id)
            .unwrap_or_else(Restoring::importing);
        let client_id = String::from(client_id);
        if table != Table::Sessions && rs.import.as_ref().is_none_or(|(s, _)| *s == usize::MAX) {
            self.cluster.imports.insert(client_id, rs);
            return Err(corrupt("for a session not imported"));
        }
        let saved = self.store.restoring.replace(rs);
        let r = self.restore(now, table, key, value);
        let rs = core::mem::replace(&mut self.store.restoring, saved);
        if let Some(rs) = rs {
            self.cluster.imports.insert(client_id, rs);
        }
        r
    }

    /// The [`ClusterOp::Claim`] for `conn` is done: this node owns the client identifier
    /// and has imported what there was of its session. The client is admitted (its
    /// CONNACK goes), to its session if it asked to resume one. `elsewhere`: another node
    /// (live or gone) owned the client before, so a clean start also removes what the
    /// cluster's store holds of its session ([MQTT-3.1.2-4]). Call it even if the claim
    /// failed (the bus unreachable): the client is then served from what this node has.
    pub fn cluster_claimed(&mut self, now: Instant, conn: ConnectionId, elsewhere: bool) {
        self.now = self.now.max(now);
        // What was imported is the session's now, whether its client waited or not: the
        // stored messages go into its queue.
        if let Some(client_id) = self.cluster.parked.remove(&conn) {
            if let Some(rs) = self.cluster.imports.remove(&client_id) {
                let saved = self.store.restoring.replace(rs);
                self.finish_restore(now);
                self.store.restoring = saved;
            }
        }
        let Some(c) = self.conn_mut(conn) else { return };
        // Not parked (any more: its wait timed out), or waiting for something else.
        let parked = c
            .extra
            .as_ref()
            .and_then(|e| e.deciding.as_ref())
            .is_some_and(|d| d.requests.is_empty() && d.subscribe.is_none());
        if !parked || c.owner().is_some() {
            return;
        }
        let Some(req) = c.take_authenticating() else {
            return;
        };
        if let Some(e) = c.extra.as_mut() {
            e.deciding = None;
        }
        c.tidy_extra();
        if c.readable() {
            self.events.push_back(crate::BrokerEvent::Resume(conn));
        }
        if req.clean_start && elsewhere && self.session_of(req.client_id.as_str()).is_none() {
            // [MQTT-3.1.2-4] what the old owner stored goes (a session here ends with
            // its own store operations).
            self.forget_session(req.client_id.as_str());
        }
        self.admit_now(now, conn, req);
        self.process(now, conn);
        self.rearm(conn);
    }

    /// Inserts a subscription into the tree, telling the cluster of a new filter; the
    /// options it replaced, if any.
    pub(crate) fn tree_insert(
        &mut self,
        sub: Subscription<'_>,
        s: u32,
        opts: crate::routing::SubOpts,
    ) -> Option<crate::routing::SubOpts> {
        let old = self.tree.insert(sub, s, opts);
        if old.is_none() && self.config.cluster.is_some() {
            let c = &mut self.cluster;
            let next = c.next_id;
            let (n, id) = c.interest.entry(cluster_filter(&sub)).or_insert((0, next));
            *n += 1;
            if *n == 1 {
                c.issued += 1;
                c.next_id = c.next_id.wrapping_add(1);
                if let Subscription::Plain(f) = sub {
                    c.plain.insert(Subscription::Plain(f), *id, ());
                    c.plain_ids.insert(String::from(f.as_str()), *id);
                }
                c.ops.push_back(ClusterOp::Subscribe(cluster_filter(&sub)));
            }
        }
        old
    }

    /// Removes a subscription from the tree, telling the cluster of a filter gone.
    pub(crate) fn tree_remove(
        &mut self,
        sub: Subscription<'_>,
        s: u32,
    ) -> Option<crate::routing::SubOpts> {
        let old = self.tree.remove(sub, &s);
        if old.is_some() && self.config.cluster.is_some() {
            let key = cluster_filter(&sub);
            let c = &mut self.cluster;
            if let Some((n, id)) = c.interest.get_mut(&key) {
                *n -= 1;
                if *n == 0 {
                    let id = *id;
                    c.interest.remove(&key);
                    if let Subscription::Plain(f) = sub {
                        c.plain.remove(Subscription::Plain(f), &id);
                        c.plain_ids.remove(f.as_str());
                    }
                    c.ops.push_back(ClusterOp::Unsubscribe(key));
                }
            }
        }
        old
    }

    /// A message published here goes to the cluster too (not `$SYS`: each node's own).
    pub(crate) fn cluster_out(&mut self, message: &Message) {
        if self.config.cluster.is_none() || message.topic.as_ref().starts_with("$SYS") {
            return;
        }
        let mut frame = Vec::new();
        if message.to_stored(&mut frame).is_err() {
            return;
        }
        self.cluster.ops.push_back(ClusterOp::Publish {
            topic: String::from(message.topic.as_ref()),
            retain: message.retain,
            frame: Bytes::from(frame),
        });
    }

    /// Whether shared group `share` (one of `members`' sessions) is the shared
    /// subscription `$share/{share}/{filter}`.
    pub(crate) fn is_shared_subscription(&self, member: u32, share: &str, filter: &str) -> bool {
        let is = |f: &str| {
            f.strip_prefix("$share/")
                .and_then(|f| f.strip_prefix(share))
                .and_then(|f| f.strip_prefix('/'))
                == Some(filter)
        };
        self.sessions
            .get(member as usize)
            .and_then(Option::as_ref)
            .is_some_and(|r| r.filters.iter().any(|(f, _)| is(f)))
    }
}
