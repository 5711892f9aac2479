//! SUBSCRIBE and UNSUBSCRIBE: the subscription tree, and retained messages sent at
//! subscription time.

use alloc::vec::Vec;

use mqtt_codec::{
    PacketId, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionId, SubscriptionOptions,
};
use mqtt_state::{Instant, Utf8Bytes};
use mqtt_topic::{Subscription, TopicFilter};

use crate::routing::SubOpts;
use crate::{Broker, ConnectionId, Hooks};

impl<H: Hooks> Broker<H> {
    pub(crate) fn on_subscribe(
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

    pub(crate) fn on_unsubscribe(
        &mut self,
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
