//! The state that outlives one network connection: messages in flight both ways and the
//! queue of messages not yet sent. [MQTT-4.1.0-1] it is never discarded while the
//! connection is open; it is exported with `into_session`/`snapshot` and restored into the
//! next connection's machine.

use alloc::collections::VecDeque;
use alloc::vec::Vec;

use mqtt_codec::{PacketId, QoS};

use crate::{Instant, Message, PacketIdAllocator, SubscriptionIdList};

/// A message waiting to be sent, with what the sender needs to send it later.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Outgoing {
    /// The message.
    pub message: Message,
    /// When it was queued, for 5.0 message expiry.
    pub queued_at: Instant,
    /// Subscription identifiers to attach (server to client): every matching
    /// subscription's ([MQTT-3.3.4-4]).
    pub subscription_ids: SubscriptionIdList,
    /// The identifier taken when it was queued (QoS 1/2), so `publish` can return it.
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_impls::opt_packet_id"))]
    pub packet_id: Option<PacketId>,
    /// The embedder's name for this message, carried and never read: a durable broker's
    /// storage key ([`crate::ServerSession::deliver_tagged`]), so that
    /// [`crate::Event::Released`] and [`crate::Event::Finished`] can say which stored
    /// message moved on. 0 for none.
    #[cfg_attr(feature = "serde", serde(default))]
    pub tag: u64,
}

/// Where an outgoing QoS 1/2 PUBLISH stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub enum Stage {
    /// PUBLISH sent (or to send); waiting for PUBACK (QoS 1) or PUBREC (QoS 2).
    Published,
    /// PUBREC received, PUBREL sent (or to send); waiting for PUBCOMP.
    Released,
}

/// An outgoing QoS 1/2 message between its PUBLISH and its last acknowledgement.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Inflight {
    /// Its packet identifier.
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_impls::packet_id"))]
    pub packet_id: PacketId,
    /// The message and its queueing data.
    pub outgoing: Outgoing,
    /// Which acknowledgement it waits for.
    pub stage: Stage,
    /// Whether the packet for the current stage went out on this connection. Cleared when
    /// the connection drops, so that a resumed session re-sends it (with DUP for PUBLISH).
    #[cfg_attr(feature = "serde", serde(skip))]
    pub(crate) sent: bool,
    /// Whether the PUBLISH was ever sent, on any connection: a re-send carries DUP.
    pub ever_sent: bool,
}

impl Inflight {
    /// An in-flight message read back from storage after a restart: its packet for
    /// `stage` goes out again on the next connection, PUBLISH with DUP
    /// ([MQTT-4.4.0-1] [MQTT-3.3.1-1]).
    pub fn resumed(packet_id: PacketId, outgoing: Outgoing, stage: Stage) -> Self {
        Self {
            packet_id,
            outgoing,
            stage,
            sent: false,
            ever_sent: true,
        }
    }
}

/// Everything that must survive a reconnect or a process restart.
///
/// With the `serde` feature it serialises, so an application can persist it with any store
/// and restore it after a restart.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct SessionState {
    /// Outgoing QoS 1/2 messages, in the order they were first sent ([MQTT-4.6.0-1]).
    pub inflight: VecDeque<Inflight>,
    /// Messages not yet sent, in order.
    pub queue: VecDeque<Outgoing>,
    /// Incoming QoS 2 packet identifiers between PUBREC and PUBREL, sorted: a PUBLISH that
    /// repeats one is not delivered again ([MQTT-4.3.3-10]).
    pub incoming_qos2: Vec<u16>,
    /// SUBSCRIBE/UNSUBSCRIBE identifiers awaiting their ack (client side); they hold ids.
    pub pending_acks: Vec<u16>,
}

impl SessionState {
    /// Whether nothing is held.
    pub fn is_empty(&self) -> bool {
        self.inflight.is_empty() && self.queue.is_empty() && self.incoming_qos2.is_empty()
    }

    /// A packet id allocator with every id this state holds marked in use.
    pub(crate) fn allocator(&self, capacity: usize) -> PacketIdAllocator {
        let mut ids = PacketIdAllocator::with_capacity(capacity);
        for f in &self.inflight {
            ids.claim(f.packet_id);
        }
        for id in self.queue.iter().filter_map(|o| o.packet_id) {
            ids.claim(id);
        }
        for &id in &self.pending_acks {
            if let Some(id) = PacketId::new(id) {
                ids.claim(id);
            }
        }
        ids
    }

    /// Records an incoming QoS 2 id; `false` if it was already there (a duplicate).
    pub(crate) fn receive_qos2(&mut self, id: PacketId) -> bool {
        match self.incoming_qos2.binary_search(&id.get()) {
            Ok(_) => false,
            Err(pos) => {
                self.incoming_qos2.insert(pos, id.get());
                true
            }
        }
    }

    /// Forgets an incoming QoS 2 id; `false` if it was unknown.
    pub(crate) fn release_qos2(&mut self, id: PacketId) -> bool {
        match self.incoming_qos2.binary_search(&id.get()) {
            Ok(pos) => {
                self.incoming_qos2.remove(pos);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether there is state the peer shares (as opposed to messages never sent).
    pub(crate) fn has_shared_state(&self) -> bool {
        !self.inflight.is_empty() || !self.incoming_qos2.is_empty() || !self.pending_acks.is_empty()
    }

    /// The session was not resumed: messages already sent can no longer complete. Messages
    /// still queued were never sent and go out on the new session.
    pub(crate) fn take_shared(&mut self) -> (Vec<Inflight>, Vec<u16>) {
        self.incoming_qos2.clear();
        (
            self.inflight.drain(..).collect(),
            core::mem::take(&mut self.pending_acks),
        )
    }
}

impl Outgoing {
    /// The remaining 5.0 Message Expiry Interval at `now`, `Err(())` if it has run out.
    /// [MQTT-3.3.2-6]: the interval sent is the received one minus the time spent waiting.
    pub(crate) fn remaining_expiry(&self, now: Instant) -> Result<Option<u32>, ()> {
        match self.message.properties().message_expiry_interval {
            None => Ok(None),
            Some(secs) => {
                let waited = (now - self.queued_at).as_secs();
                let waited = u32::try_from(waited).unwrap_or(u32::MAX);
                if waited >= secs && secs > 0 {
                    Err(())
                } else {
                    Ok(Some(secs - waited.min(secs)))
                }
            }
        }
    }

    /// Whether this needs a packet identifier and a slot of the send quota.
    pub(crate) fn needs_ack(&self) -> bool {
        self.message.qos != QoS::AtMostOnce
    }
}
