//! Routing: a PUBLISH to every matching session, once per session, and the backpressure
//! that keeps a slow subscriber from losing messages or growing without bound.
//!
//! A connected subscriber's queue has a high watermark (`ServerConfig::max_queued`). A
//! message for a subscriber at it is still queued (nothing is lost), and the publisher
//! that sent it is paused ([`BrokerEvent::Pause`]): the program stops reading its socket,
//! so it takes no further messages until the subscriber's queue is down to half the
//! watermark, when every publisher waiting on it resumes at once ([`BrokerEvent::Resume`]).
//! The queue thus exceeds its watermark by at most one message per paused publisher.
//!
//! Waiting must not deadlock: a paused connection's acknowledgements are not read either,
//! so its own queue may not drain. A publisher is therefore never paused on itself nor on
//! a subscriber that is paused in turn: every wait ends at a connection that is read, so
//! the waits cannot form a cycle. The message then still goes into the queue, past the
//! watermark; those overshoots last only while that subscriber is paused.

use alloc::string::String;
use alloc::vec::Vec;

use mqtt_codec::{PacketId, QoS, SubscriptionId};
use mqtt_state::{Instant, Message, Outgoing};
use mqtt_topic::Match;

use crate::broker::Delivery;
use crate::cluster::{ClusterTarget, RouteMode};
use crate::decide::Pending;
use crate::{Broker, BrokerEvent, ConnectionId, Hooks, QoS0Overflow, RequestKind, Verdict};
use mqtt_state::SubscriptionIdList;

/// A subscription's options as the router uses them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SubOpts {
    pub(crate) qos: QoS,
    pub(crate) no_local: bool,
    pub(crate) retain_as_published: bool,
    pub(crate) id: Option<SubscriptionId>,
}

impl<H: Hooks> Broker<H> {
    /// A PUBLISH from client connection `id`: authorized (now or later), then routed.
    pub(crate) fn on_message(
        &mut self,
        now: Instant,
        id: ConnectionId,
        packet_id: Option<PacketId>,
        message: Message,
    ) {
        self.stats.messages_received += 1;
        if self.conn(id).and_then(crate::conn::Conn::owner).is_none() {
            return;
        }
        match self.publish_verdict(id, &message) {
            Verdict::Allow => self.publish_allowed(now, id, packet_id, message),
            // 5.0 says why; before 5.0 the message is dropped but still acknowledged.
            Verdict::Deny(code) => self.publish_refused(now, id, packet_id, code),
            Verdict::Defer => {
                let kind = RequestKind::Publish {
                    topic: message.topic.clone(),
                    qos: message.qos,
                    retain: message.retain,
                };
                // Routed (and acknowledged) once allowed; nothing read behind it before.
                let message = alloc::boxed::Box::new(message);
                self.defer(now, id, Pending::Publish { packet_id, message }, kind);
            }
        }
    }

    /// Stores (retained) and delivers a message to every matching session; returns how
    /// many sessions it went to. `from` is the publishing session, for No Local;
    /// `publisher` its connection, which is paused if a subscriber's queue is full.
    pub(crate) fn route(
        &mut self,
        now: Instant,
        from: Option<usize>,
        publisher: Option<ConnectionId>,
        message: Message,
    ) -> usize {
        self.route_mode(now, from, publisher, message, RouteMode::Local)
    }

    /// [`Broker::route`] for a message published here (`RouteMode::Local`) or on another
    /// node of the cluster.
    pub(crate) fn route_mode(
        &mut self,
        now: Instant,
        from: Option<usize>,
        publisher: Option<ConnectionId>,
        mut message: Message,
        mode: RouteMode<'_>,
    ) -> usize {
        // Checked when the message was made or received; a clone shares the buffer, so
        // the name can be borrowed while the message is changed and copied below.
        let name = message.topic.clone();
        let topic = name.as_topic_name();
        let clustered = self.config.cluster.is_some();
        if mode == RouteMode::Local && clustered {
            self.cluster_out(&message);
        }
        // Which subscriptions it goes to here: a cluster picks shared groups' nodes itself.
        let (plain, shared) = match mode {
            RouteMode::Local => (true, !clustered),
            RouteMode::Cluster(ClusterTarget::Plain { .. }) => (true, false),
            RouteMode::Cluster(ClusterTarget::Shared { .. }) => (false, true),
        };
        let only_group = match mode {
            RouteMode::Cluster(ClusterTarget::Shared { share, filter }) => Some((share, filter)),
            _ => None,
        };
        // A retained message from another node is stored by `cluster_retained`.
        if message.retain && mode == RouteMode::Local {
            if message.payload.is_empty() {
                // [MQTT-3.3.1-6] [MQTT-3.3.1-7] an empty retained message clears the topic.
                if self.retained.remove(topic).is_some() {
                    self.store_retained(now, topic.as_str(), None);
                }
            } else {
                // [MQTT-3.3.1-5] replaces the topic's retained message.
                // Kept indefinitely: copied, so it does not hold the publisher's whole
                // receive buffer alive through a view.
                self.retained.insert(topic, (message.detached(), now));
                self.store_retained(now, topic.as_str(), Some(&message));
            }
        }
        // Subscription identifiers are per delivery, never forwarded from the publisher.
        // (Only touched when there are some: most messages have no properties at all.)
        if !message.properties().subscription_identifiers.is_empty() {
            message.properties_mut().subscription_identifiers.clear();
        }
        let mut scratch = core::mem::take(&mut self.scratch);
        scratch.clear();
        let mut mark = core::mem::take(&mut self.route_mark);
        if mark.len() < self.sessions.len() {
            mark.resize(self.sessions.len(), 0);
        }
        // The one shared group a cluster's queue picked this node for: a group name may
        // be under several filters, so its members' filters tell which.
        let mut wanted_group: Option<usize> = None;
        if let Some((share, filter)) = only_group {
            let mut index = 0;
            let mut candidates = Vec::new();
            self.tree.for_each_match(topic, |m| {
                if let Match::Shared(g) = m {
                    if g.name() == share {
                        candidates.push((index, g.get(0).map(|(k, _)| *k)));
                    }
                    index += 1;
                }
            });
            wanted_group = candidates
                .into_iter()
                .find(|(_, k)| k.is_some_and(|k| self.is_shared_subscription(k, share, filter)))
                .map(|(i, _)| i);
            if wanted_group.is_none() {
                // Its subscribers here left since: nothing to deliver.
                self.scratch = scratch;
                self.route_mark = mark;
                return 0;
            }
        }
        let mut group_index = 0;
        let share_cursor = &mut self.share_cursor;
        let sessions = &self.sessions;
        self.tree.for_each_match(topic, |m| match m {
            Match::Plain { key, value } => {
                if !plain {
                    return;
                }
                // [MQTT-3.8.3-3] No Local: not back to the publisher's own session.
                if value.no_local && from == Some(*key as usize) {
                    return;
                }
                add_delivery(&mut scratch, &mut mark, *key, value, message.retain);
            }
            Match::Shared(group) => {
                let this = group_index;
                group_index += 1;
                if !shared || wanted_group.is_some_and(|w| w != this) {
                    return;
                }
                // One member per message, round robin, preferring connected ones.
                let cursor = match share_cursor.get_mut(group.name()) {
                    Some(c) => c,
                    None => share_cursor.entry(String::from(group.name())).or_insert(0),
                };
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
                    add_delivery(&mut scratch, &mut mark, *key, value, false);
                }
            }
        });
        let count = scratch.len();
        self.blockers.clear();
        for (s, qos, retain, ids) in scratch.drain(..) {
            mark[s as usize] = 0;
            let mut m = message.clone();
            // [MQTT-3.8.4-8] the lower of the message's and the subscription's QoS.
            m.qos = m.qos.min(qos);
            m.retain = retain;
            self.deliver(now, s as usize, m, &ids);
        }
        self.scratch = scratch;
        self.route_mark = mark;
        if let Some(p) = publisher {
            self.pause_if_blocked(now, p);
        }
        count
    }

    /// Hands a message to a session: its connection's machine when online, its offline
    /// queue otherwise. A connected subscriber at its watermark is noted in `blockers`.
    pub(crate) fn deliver(
        &mut self,
        now: Instant,
        s: usize,
        message: Message,
        ids: &[SubscriptionId],
    ) {
        let tag = self.message_tag(s, &message);
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
                let full = c.session.session().queue.len() >= self.config.server.max_queued;
                if full {
                    if message.qos == QoS::AtMostOnce
                        && self.config.qos0_overflow == QoS0Overflow::Drop
                    {
                        self.stats.messages_dropped += 1;
                        return;
                    }
                    self.blockers.push(id);
                }
                // The machine has no queue bound of its own (the watermark is the core's):
                // what fails here could never be sent (a packet the client's version
                // cannot carry) or found every packet identifier in use.
                let stored = (tag != 0).then(|| message.clone());
                match c.session.deliver_tagged(now, message, ids, tag) {
                    Ok(pid) => {
                        self.stats.messages_sent += 1;
                        if c.set_transmit_queued() {
                            self.events.push_back(BrokerEvent::Transmit(id));
                        }
                        if let Some(m) = stored {
                            self.store_message(now, s, tag, pid, &m, ids);
                        }
                    }
                    Err(_) => {
                        self.stats.messages_dropped += 1;
                        if c.set_transmit_queued() {
                            self.events.push_back(BrokerEvent::Transmit(id));
                        }
                    }
                }
            }
            None => {
                let queue = &mut rec.offline.get_or_insert_with(Default::default).state.queue;
                if message.qos == QoS::AtMostOnce
                    || (queue.len() >= self.config.max_offline_queue
                        && queue.len() >= self.bridges.queue_limit(&rec.client_id))
                {
                    self.stats.messages_dropped += 1;
                    return;
                }
                if tag != 0 {
                    self.store_message(now, s, tag, None, &message, ids);
                }
                let Some(rec) = self.sessions.get_mut(s).and_then(Option::as_mut) else {
                    return;
                };
                let queue = &mut rec.offline.get_or_insert_with(Default::default).state.queue;
                queue.push_back(Outgoing {
                    message,
                    queued_at: now,
                    subscription_ids: SubscriptionIdList::from(ids),
                    packet_id: None,
                    tag,
                });
                self.stats.messages_sent += 1;
            }
        }
    }

    /// Pauses `publisher` on the first subscriber in `blockers` it may wait on (see the
    /// module documentation).
    fn pause_if_blocked(&mut self, now: Instant, publisher: ConnectionId) {
        if self.blockers.is_empty() {
            return;
        }
        let blockers = core::mem::take(&mut self.blockers);
        let target = blockers
            .iter()
            .copied()
            .find(|&b| b != publisher && self.conn(b).is_some_and(|c| c.paused_on().is_none()));
        self.blockers = blockers;
        let Some(b) = target else { return };
        let Some(p) = self.conn_mut(publisher) else {
            return;
        };
        if p.closing() || p.paused_on().is_some() {
            return;
        }
        p.extra_mut().paused_on = Some(b);
        // A subscriber that waits must not keep others waiting on it: let them go, so no
        // chain of waits ends at a connection that is not read.
        self.resume_waiters(publisher);
        let stall = self.config.stall_timeout;
        if let Some(c) = self.conn_mut(b) {
            let e = c.extra_mut();
            if e.waiters.is_empty() {
                e.stall_deadline = stall.map(|d| now + d);
            }
            e.waiters.push(publisher);
            self.rearm(b);
        }
        self.stats.publishers_paused += 1;
        self.events.push_back(BrokerEvent::Pause(publisher));
    }

    /// Resumes every publisher paused on `blocker`.
    pub(crate) fn resume_waiters(&mut self, blocker: ConnectionId) {
        let Some(c) = self.conn_mut(blocker) else {
            return;
        };
        if !c.has_waiters() {
            return;
        }
        let waiters: Vec<ConnectionId> = c.take_waiters();
        for w in waiters {
            // One still deciding resumes when its decisions are made.
            if self
                .conn_mut(w)
                .is_some_and(|c| c.unpause_from(blocker) && c.readable())
            {
                self.events.push_back(BrokerEvent::Resume(w));
            }
        }
    }
}

/// Adds session `key` to this message's deliveries, or merges it into its delivery:
/// `mark` says where it is, so the cost is constant per matching subscription.
fn add_delivery(
    scratch: &mut Vec<Delivery>,
    mark: &mut [u32],
    key: u32,
    opts: &SubOpts,
    retain: bool,
) {
    // [MQTT-3.3.1-12] [MQTT-3.3.1-13] RETAIN forwarded only with Retain As Published.
    let retain = retain && opts.retain_as_published;
    // [MQTT-3.3.4-2] [MQTT-3.3.4-3] overlapping subscriptions: one copy at the highest QoS
    // with every subscription identifier.
    if let Some(d) = mark
        .get(key as usize)
        .and_then(|&m| m.checked_sub(1))
        .and_then(|i| scratch.get_mut(i as usize))
    {
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
    if let Some(m) = mark.get_mut(key as usize) {
        *m = scratch.len() as u32 + 1;
    }
    scratch.push((key, opts.qos, retain, ids));
}
