//! SUBSCRIBE and UNSUBSCRIBE: the subscription tree, and retained messages sent at
//! subscription time.

use alloc::vec::Vec;

use mqtt_codec::{
    PacketId, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionId, SubscriptionOptions,
};
use mqtt_state::{Diagnostics, Instant, Utf8Bytes};
use mqtt_topic::{OwnedTopicFilter, Subscription, TopicFilter};

use crate::decide::{context_in, subscribe_refusal, FilterState, Pending, PendingSubscribe};
use crate::routing::SubOpts;
use crate::{Broker, ConnectionId, Hooks, RequestKind, Verdict};

impl<H: Hooks> Broker<H> {
    pub(crate) fn on_subscribe(
        &mut self,
        now: Instant,
        id: ConnectionId,
        packet_id: PacketId,
        filters: Vec<(Utf8Bytes, SubscriptionOptions)>,
        subscription_id: Option<SubscriptionId>,
    ) {
        let Some(c) = self.conn(id) else { return };
        if c.owner().is_none() {
            return;
        }
        let version = c.session.version();
        let internal = c.is_internal();
        let mut states = Vec::with_capacity(filters.len());
        let mut deferred = Vec::new();
        // [MQTT-3.8.4-5] each filter as its own SUBSCRIBE, one SUBACK for all.
        for (i, (filter, options)) in filters.iter().enumerate() {
            let state = match self.check_filter(filter.as_str(), version, subscription_id) {
                Err(code) => FilterState::Done(code),
                Ok(checked) => {
                    let Some(ctx) = context_in(&self.conns, &self.sessions, id) else {
                        return;
                    };
                    let verdict = if internal {
                        Verdict::Allow
                    } else {
                        self.hooks.authorize_subscribe(&ctx, checked, options.qos)
                    };
                    match verdict {
                        Verdict::Allow => FilterState::Allowed,
                        Verdict::Deny(code) => FilterState::Done(subscribe_refusal(code, version)),
                        Verdict::Defer => {
                            deferred.push(i);
                            FilterState::Allowed
                        }
                    }
                }
            };
            states.push(state);
        }
        let mut pending = PendingSubscribe {
            packet_id,
            subscription_id,
            filters: filters
                .into_iter()
                .zip(states)
                .map(|((f, o), st)| (f, o, st))
                .collect(),
            diagnostics: Diagnostics::new(),
        };
        if deferred.is_empty() {
            self.finish_subscribe(now, id, pending);
            return;
        }
        // Asked in filter order; the SUBACK keeps that order whatever the answers' order.
        for i in deferred {
            let (filter, options, _) = &pending.filters[i];
            let kind = match OwnedTopicFilter::new(filter.as_str().into()) {
                Ok(filter) => RequestKind::Subscribe {
                    filter,
                    qos: options.qos,
                },
                Err(_) => {
                    pending.filters[i].2 = FilterState::Done(ReasonCode::TopicFilterInvalid);
                    continue;
                }
            };
            self.defer(now, id, Pending::Subscribe { index: i }, kind);
            pending.filters[i].2 = FilterState::Waiting;
        }
        let Some(d) = self
            .conn_mut(id)
            .and_then(|c| c.extra.as_mut())
            .and_then(|e| e.deciding.as_mut())
        else {
            self.finish_subscribe(now, id, pending);
            return;
        };
        d.subscribe = Some(pending);
    }

    /// Whether a filter may be subscribed as far as the server's own settings go: valid
    /// ([MQTT-4.7.3-1]), and no feature the server turned off ([MQTT-3.2.2-9..]).
    fn check_filter<'f>(
        &self,
        filter: &'f str,
        version: ProtocolVersion,
        subscription_id: Option<SubscriptionId>,
    ) -> Result<TopicFilter<'f>, ReasonCode> {
        let sub = parse_subscription(filter, version).ok_or(ReasonCode::TopicFilterInvalid)?;
        let server = &self.config.server;
        let failure = |code| subscribe_refusal(code, version);
        if matches!(sub, Subscription::Shared(_)) && !server.shared_subscription_available {
            return Err(failure(ReasonCode::SharedSubscriptionsNotSupported));
        }
        if sub.filter().has_wildcards() && !server.wildcard_subscription_available {
            return Err(failure(ReasonCode::WildcardSubscriptionsNotSupported));
        }
        if subscription_id.is_some() && !server.subscription_identifier_available {
            return Err(failure(ReasonCode::SubscriptionIdentifiersNotSupported));
        }
        // As sent, `$share/...` included: a valid subscription is a valid filter.
        TopicFilter::new(filter).map_err(|_| ReasonCode::TopicFilterInvalid)
    }

    /// Every filter of a SUBSCRIBE decided: subscribes the allowed ones in order, sends
    /// the SUBACK, then the retained messages they match.
    pub(crate) fn finish_subscribe(
        &mut self,
        now: Instant,
        id: ConnectionId,
        pending: PendingSubscribe,
    ) {
        let Some(c) = self.conn_mut(id) else { return };
        let Some(owner) = c.owner() else {
            return;
        };
        let version = c.session.version();
        // A 3.1 / 3.1.1 bridge (mosquitto's extension: the top bit of its CONNECT level)
        // cannot ask for No Local and Retain As Published, and needs both: without them
        // `topic # both` sends its messages back to it, which it forwards back here, and
        // retained messages reach its side unretained. mosquitto grants them the same way.
        let bridge = c.bridge();
        let maximum_qos = self.config.server.maximum_qos;
        let subscription_id = pending.subscription_id;
        let mut reasons = Vec::with_capacity(pending.filters.len());
        let mut retained_out = Vec::new();
        for (filter, options, state) in &pending.filters {
            match state {
                FilterState::Done(code) => {
                    reasons.push(*code);
                    continue;
                }
                FilterState::Waiting => {
                    reasons.push(ReasonCode::UnspecifiedError);
                    continue;
                }
                FilterState::Allowed => {}
            }
            let Some(sub) = parse_subscription(filter.as_str(), version) else {
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            };
            // [MQTT-3.2.2-10] grant what the server supports.
            let qos = options.qos.min(maximum_qos);
            let opts = SubOpts {
                qos,
                no_local: options.no_local || bridge,
                retain_as_published: options.retain_as_published || bridge,
                id: subscription_id,
            };
            // [MQTT-3.8.4-3] an identical filter replaces the subscription.
            let existed = self.tree_insert(sub, owner as u32, opts).is_some();
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
            reasons.push(match qos {
                QoS::AtMostOnce => ReasonCode::Success,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
        }
        if reasons.iter().any(|r| !r.is_error()) {
            // Stored before the SUBACK leaves (held with `Persistence::Sync`).
            self.store_session(owner);
        }
        // [MQTT-3.8.4-1] every SUBSCRIBE gets its SUBACK, codes in order ([MQTT-3.9.3-1]);
        // an embedder's Reason String goes with it ([MQTT-3.9.2-1]: not beyond the
        // client's Maximum Packet Size).
        let after = self.after_store();
        if after.is_some() || self.config.cluster.is_some() {
            // Once the subscriptions are stored, and in a cluster once the other nodes
            // send their messages here. Retained messages may go before it (3.1.1 §3.8.4:
            // PUBLISH packets may precede the SUBACK).
            let promise = crate::persist::Promise::SubAck {
                conn: id,
                packet_id: pending.packet_id,
                reasons,
                diagnostics: pending.diagnostics,
            };
            if let Some(promise) = self.hold_for_cluster(after, promise) {
                self.promise(now, after, promise);
            }
        } else if let Some(c) = self.conn_mut(id) {
            if pending.diagnostics.is_empty() {
                let _ = c.session.suback(now, pending.packet_id, reasons);
            } else {
                let _ = c
                    .session
                    .suback_with(now, pending.packet_id, reasons, pending.diagnostics);
            }
        }
        for (mut m, stored, opts) in retained_out {
            // Retained messages are sent with RETAIN set, whatever Retain As Published says.
            m.qos = m.qos.min(opts.qos);
            m.retain = true;
            // [MQTT-3.3.2-6] the expiry counts the time the message was stored.
            if let Some(e) = m.properties().message_expiry_interval {
                let waited = u32::try_from((now - stored).as_secs()).unwrap_or(u32::MAX);
                if waited >= e {
                    continue;
                }
                m.properties_mut().message_expiry_interval = Some(e - waited);
            }
            let ids: Vec<SubscriptionId> = opts.id.into_iter().collect();
            self.deliver(now, owner, m, &ids);
        }
    }

    pub(crate) fn on_unsubscribe(
        &mut self,
        now: Instant,
        id: ConnectionId,
        packet_id: PacketId,
        filters: Vec<Utf8Bytes>,
    ) {
        let Some(c) = self.conn_mut(id) else { return };
        let Some(owner) = c.owner() else {
            return;
        };
        let version = c.session.version();
        let mut reasons = Vec::with_capacity(filters.len());
        for filter in &filters {
            // [MQTT-3.10.4-1] filters compare literally.
            let removed = parse_subscription(filter.as_str(), version)
                .and_then(|sub| self.tree_remove(sub, owner as u32))
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
        if reasons.contains(&ReasonCode::Success) {
            self.store_session(owner);
        }
        // [MQTT-3.10.4-4] [MQTT-3.10.4-5] an UNSUBACK even when nothing was removed.
        let after = self.after_store();
        if after.is_some() {
            let promise = crate::persist::Promise::UnsubAck {
                conn: id,
                packet_id,
                reasons,
            };
            self.promise(now, after, promise);
        } else if let Some(c) = self.conn_mut(id) {
            let _ = c.session.unsuback(now, packet_id, reasons);
        }
    }
}

/// A SUBSCRIBE/UNSUBSCRIBE filter as the tree keys it: 5.0 knows `$share`, 3.1.1 does not.
pub(crate) fn parse_subscription(
    filter: &str,
    version: ProtocolVersion,
) -> Option<Subscription<'_>> {
    if version.is_v5() {
        Subscription::parse(filter).ok()
    } else {
        TopicFilter::new(filter).ok().map(Subscription::Plain)
    }
}
