//! What the broker benches share: encoded client packets, the event loop, and populations
//! of sessions built through the public API only (so the benches survive a rewrite of the
//! core).

#![allow(unreachable_pub, dead_code)]

use std::time::Instant as StdInstant;

use bytes::BytesMut;
use mqtt_broker::codec::{
    Connect, Disconnect, List, Packet, PacketId, ProtocolVersion, Publish, QoS, QosPid, ReasonCode,
    Subscribe, Subscription, SubscriptionOptions, Topic, Unsubscribe,
};
use mqtt_broker::state::Instant;
use mqtt_broker::{Broker, BrokerConfig, BrokerEvent, ConnectionId};

/// Every client speaks 3.1.1: the smallest packets, and a persistent session needs no
/// expiry property.
pub const V4: ProtocolVersion = ProtocolVersion::V3_1_1;

/// PINGREQ, fixed header only.
pub const PINGREQ: [u8; 2] = [0xC0, 0];

/// Keep alive of every bench client, in seconds: the largest there is. The bench clock
/// moves only in `handle_timeout_one_due` (10 ms per call, at most a few thousand
/// seconds in all), so no population's keep alive (1.5 × this, 27 hours) runs out.
pub const KEEP_ALIVE: u16 = u16::MAX;

fn encode(p: &Packet<'_>) -> Vec<u8> {
    p.encode_to_vec(V4).expect("bench packets encode")
}

/// A 3.1.1 CONNECT.
pub fn connect_bytes(client_id: &str, clean: bool) -> Vec<u8> {
    connect_bytes_keep_alive(client_id, clean, KEEP_ALIVE)
}

/// A 3.1.1 CONNECT with its own keep alive (seconds).
pub fn connect_bytes_keep_alive(client_id: &str, clean: bool, keep_alive: u16) -> Vec<u8> {
    let mut c = Connect::new(V4, client_id);
    c.clean_start = clean;
    c.keep_alive = keep_alive;
    encode(&Packet::Connect(c))
}

/// A SUBSCRIBE of one filter.
pub fn subscribe_bytes(pid: u16, filter: &str, qos: QoS) -> Vec<u8> {
    let subs = [Subscription {
        filter,
        options: SubscriptionOptions::qos(qos),
    }];
    let pid = PacketId::new(pid).expect("non-zero");
    encode(&Packet::Subscribe(Subscribe::new(pid, List::new(&subs))))
}

/// An UNSUBSCRIBE of one filter.
pub fn unsubscribe_bytes(pid: u16, filter: &str) -> Vec<u8> {
    let filters = [filter];
    let pid = PacketId::new(pid).expect("non-zero");
    encode(&Packet::Unsubscribe(Unsubscribe::new(
        pid,
        List::new(&filters),
    )))
}

/// A QoS 0 PUBLISH.
pub fn publish_bytes(topic: &str, payload: &[u8]) -> Vec<u8> {
    let topic = Topic::new(topic).expect("valid topic");
    encode(&Packet::Publish(Publish::new(
        topic,
        payload,
        QosPid::AtMostOnce,
    )))
}

/// A normal DISCONNECT.
pub fn disconnect_bytes() -> Vec<u8> {
    encode(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)))
}

/// Broker settings for a bench: room for every population, no `$SYS` timer.
pub fn config() -> BrokerConfig {
    BrokerConfig {
        max_connections: usize::MAX,
        sys_interval: None,
        ..BrokerConfig::default()
    }
}

/// Runs the broker's output side until it has nothing more to say: every byte it sends
/// goes to `on_bytes`, every close it asks for is done. The only place the benches touch
/// `BrokerEvent` and `poll_transmit`, so that a change of the event API is one edit here.
pub fn pump(
    broker: &mut Broker,
    now: Instant,
    out: &mut [u8],
    mut on_bytes: impl FnMut(ConnectionId, &[u8]),
) {
    while let Some(event) = broker.poll_event() {
        match event {
            BrokerEvent::Transmit(id) => {
                while let Ok(Some(n)) = broker.poll_transmit(now, id, out) {
                    on_bytes(id, &out[..n]);
                }
            }
            BrokerEvent::Close { id, .. } => {
                while let Ok(Some(n)) = broker.poll_transmit(now, id, out) {
                    on_bytes(id, &out[..n]);
                }
                broker.handle_close(now, id);
            }
            // Events a later core adds (flow control) need nothing from a bench that
            // drains every connection at once.
            #[allow(unreachable_patterns)]
            _ => {}
        }
    }
}

/// What the sessions of a population are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// Connected, clean, no subscription, only keeping alive.
    ConnectedIdle,
    /// Disconnected persistent sessions (3.1.1 clean session 0), each subscribed at QoS 1
    /// to its own topic `dev/<id>`.
    OfflinePersistent,
}

impl Kind {
    /// Short name for bench ids.
    pub fn name(self) -> &'static str {
        match self {
            Kind::ConnectedIdle => "connected_idle",
            Kind::OfflinePersistent => "offline_1sub",
        }
    }
}

/// A broker holding `n` sessions of one kind, plus one connected `probe` client that the
/// benches drive.
pub struct Population {
    pub broker: Broker,
    pub now: Instant,
    pub out: Vec<u8>,
    input: BytesMut,
    pub probe: ConnectionId,
    pub n: usize,
    pub kind: Kind,
    /// Seconds spent building it.
    pub build_secs: f64,
}

impl Population {
    /// Builds the population, one client after the other as a real broker would see
    /// them arrive.
    pub fn build(kind: Kind, n: usize) -> Self {
        let started = StdInstant::now();
        let now = Instant::from_millis(1_000);
        let mut broker = Broker::new(config(), now);
        // The probe connects first, so it is not the newest connection at any size.
        let probe = broker.open(now);
        let mut p = Population {
            broker,
            now,
            out: vec![0; 1 << 16],
            input: BytesMut::with_capacity(1 << 16),
            probe,
            n,
            kind,
            build_secs: 0.0,
        };
        let reply = p.exchange(probe, &connect_bytes("probe", true));
        assert!(
            reply.len() >= 4 && reply[0] == 0x20 && reply[3] == 0,
            "probe CONNACK"
        );
        let disconnect = disconnect_bytes();
        for i in 0..n {
            match kind {
                Kind::ConnectedIdle => {
                    p.connect(&connect_bytes(&format!("c{i}"), true));
                }
                Kind::OfflinePersistent => {
                    let client_id = format!("o{i}");
                    let id = p.connect(&connect_bytes(&client_id, false));
                    let acked = p.exchange(
                        id,
                        &subscribe_bytes(1, &format!("dev/{client_id}"), QoS::AtLeastOnce),
                    );
                    assert_eq!(acked.first(), Some(&0x90), "SUBACK");
                    p.exchange(id, &disconnect);
                }
            }
        }
        let stats = p.broker.stats();
        match kind {
            Kind::ConnectedIdle => assert_eq!(stats.clients_connected, n + 1),
            Kind::OfflinePersistent => {
                assert_eq!(stats.clients_connected, 1);
                assert_eq!(stats.subscriptions, n);
            }
        }
        p.build_secs = started.elapsed().as_secs_f64();
        p
    }

    /// Hands `bytes` to connection `id` as one read.
    pub fn feed(&mut self, id: ConnectionId, bytes: &[u8]) {
        self.input.clear();
        self.input.extend_from_slice(bytes);
        self.broker.handle_input(self.now, id, &mut self.input);
    }

    /// Feeds `bytes` to `id` and returns what the broker sent back to it (for checks
    /// outside the timed parts).
    pub fn exchange(&mut self, id: ConnectionId, bytes: &[u8]) -> Vec<u8> {
        self.feed(id, bytes);
        let mut reply = Vec::new();
        pump(&mut self.broker, self.now, &mut self.out, |to, b| {
            if to == id {
                reply.extend_from_slice(b);
            }
        });
        reply
    }

    /// Opens a connection and sends `connect` on it; checks the CONNACK.
    pub fn connect(&mut self, connect: &[u8]) -> ConnectionId {
        let id = self.broker.open(self.now);
        let reply = self.exchange(id, connect);
        assert!(
            reply.len() >= 4 && reply[0] == 0x20 && reply[3] == 0,
            "CONNACK accepted, got {reply:?}"
        );
        id
    }

    /// Opens, connects (timed by the caller) and drains; nothing checked.
    pub fn connect_unchecked(&mut self, connect: &[u8]) -> ConnectionId {
        let id = self.broker.open(self.now);
        self.feed(id, connect);
        pump(&mut self.broker, self.now, &mut self.out, |_, _| {});
        id
    }

    /// Feeds and drains, counting the bytes sent (to anyone).
    pub fn feed_and_drain(&mut self, id: ConnectionId, bytes: &[u8]) -> usize {
        self.feed(id, bytes);
        let mut sent = 0;
        pump(&mut self.broker, self.now, &mut self.out, |_, b| {
            sent += b.len()
        });
        sent
    }
}

/// Population sizes: `BROKER_BENCH_SIZES=1000,10000` or the default 1 k to 1 M.
pub fn sizes() -> Vec<usize> {
    match std::env::var("BROKER_BENCH_SIZES") {
        Ok(s) if !s.trim().is_empty() => s
            .split(',')
            .map(|x| x.trim().replace('_', ""))
            .map(|x| match x.strip_suffix(['k', 'K']) {
                Some(k) => k.parse::<usize>().map(|k| k * 1000),
                None => match x.strip_suffix(['m', 'M']) {
                    Some(m) => m.parse::<usize>().map(|m| m * 1_000_000),
                    None => x.parse::<usize>(),
                },
            })
            .map(|r| r.expect("BROKER_BENCH_SIZES: comma-separated counts like 1000,10k,1M"))
            .collect(),
        _ => vec![1_000, 10_000, 100_000, 1_000_000],
    }
}
