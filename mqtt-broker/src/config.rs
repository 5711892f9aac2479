//! Broker-wide settings and counters.

use mqtt_state::{Duration, ServerConfig};

/// What happens to a QoS 0 message for a connected subscriber whose queue is full
/// ([`mqtt_state::ServerConfig::max_queued`] messages waiting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum QoS0Overflow {
    /// Queued like QoS 1/2 messages, and the publisher is paused
    /// ([`crate::BrokerEvent::Pause`]) until the subscriber catches up: nothing is lost.
    #[default]
    PushBack,
    /// Dropped (counted in [`crate::Stats::messages_dropped`]); the publisher keeps going. For
    /// telemetry where the latest value matters more than every value.
    Drop,
}

/// Broker-wide settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// What each connection accepts and announces in CONNACK. Its `max_queued` is the
    /// high watermark of a connected subscriber's queue: at it, the publishers that feed
    /// the subscriber are paused (see [`crate::BrokerEvent::Pause`]) rather than their
    /// messages dropped; they resume once the queue is down to half of it.
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
    /// QoS 0 messages for a connected subscriber whose queue is full.
    pub qos0_overflow: QoS0Overflow,
    /// A subscriber that keeps publishers paused and takes none of its output
    /// ([`crate::Broker::poll_transmit`] writes nothing for it) for this long is
    /// disconnected ([`crate::CloseReason::SlowConsumer`]), so that a client that stopped
    /// reading does not hold its publishers forever. `None`: waits as long as it takes.
    pub stall_timeout: Option<Duration>,
    /// How long a connection waits for the answers to its deferred decisions
    /// ([`crate::Broker::poll_request`]) before it is closed
    /// ([`crate::CloseReason::DecisionTimeout`]): a program that lost a request does not
    /// hold the client forever.
    pub decision_timeout: Duration,
    /// Key of the hash that indexes sessions by client identifier. Clients choose their
    /// identifiers: a client that knew the key could pick identifiers that collide and
    /// make every CONNECT slow (hash flooding). With the `std` feature the default is
    /// random per broker (from `std`'s `RandomState`); without it the default is a fixed
    /// value, and a broker that serves untrusted clients should set this from a random
    /// source.
    pub hash_seed: u64,
    /// What must be stored before it is acknowledged (see [`crate::Persistence`]).
    pub persistence: crate::Persistence,
    /// This broker is a node of a cluster (see [`crate::ClusterOp`]); `None`: alone.
    pub cluster: Option<crate::ClusterConfig>,
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
            qos0_overflow: QoS0Overflow::default(),
            stall_timeout: Some(Duration::from_secs(5)),
            decision_timeout: Duration::from_secs(10),
            hash_seed: default_hash_seed(),
            persistence: crate::Persistence::Off,
            cluster: None,
        }
    }
}

#[cfg(feature = "std")]
fn default_hash_seed() -> u64 {
    use core::hash::BuildHasher;
    std::hash::RandomState::new().hash_one(0x6d71_7474_u64)
}

#[cfg(not(feature = "std"))]
fn default_hash_seed() -> u64 {
    0x9e37_79b9_7f4a_7c15
}
