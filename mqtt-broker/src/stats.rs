//! `$SYS/broker/...` statistics.

use alloc::format;

use bytes::Bytes;
use mqtt_codec::QoS;
use mqtt_state::{Instant, Message, TopicBuf};

use crate::{Broker, Hooks};

/// Counters published under `$SYS/broker/`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections with a session.
    pub clients_connected: usize,
    /// PUBLISH received from clients.
    pub messages_received: u64,
    /// Messages handed to sessions for delivery.
    pub messages_sent: u64,
    /// Messages dropped: an offline queue was full, or a QoS 0 message met a full queue
    /// under [`crate::QoS0Overflow::Drop`].
    pub messages_dropped: u64,
    /// Subscriptions in the tree.
    pub subscriptions: usize,
    /// Retained messages stored.
    pub retained: usize,
    /// Times a publisher was paused because a subscriber could not keep up.
    pub publishers_paused: u64,
    /// Connections closed because a deferred decision was not answered in time
    /// ([`crate::BrokerConfig::decision_timeout`]).
    pub decisions_timed_out: u64,
}

impl<H: Hooks> Broker<H> {
    /// Publishes the `$SYS/broker/...` statistics as retained messages now.
    pub fn publish_sys(&mut self, now: Instant) {
        let s = self.stats();
        let uptime = (now - self.started).as_secs();
        let values = [
            ("$SYS/broker/clients/connected", format!("{}", self.online)),
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
            // Constant names, valid: one that were not would be skipped, not published.
            let Ok(topic) = TopicBuf::from_static(topic) else {
                continue;
            };
            let mut m = Message::new(topic, Bytes::from(value.into_bytes()), QoS::AtMostOnce);
            m.retain = true;
            self.route(now, None, None, m);
        }
    }
}
