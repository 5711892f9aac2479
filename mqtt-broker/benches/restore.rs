//! What durability costs the core (issue #13), without a disk: the bytes the core asks a
//! store to keep per queued message, per session and per retained message, and how long
//! `Broker::restore` takes to rebuild a broker of 100,000 persistent sessions and
//! 1,000,000 retained messages. The store here is a `BTreeMap`; the disk's own cost
//! (redb) is measured with the example broker.
//!
//! `cargo bench -p mqtt-broker --bench restore` (`SESSIONS=n`, `RETAINED=n`, `QUEUED=n`
//! change the sizes).

#[path = "common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::time::Instant as StdInstant;

use bytes::BytesMut;
use common::{connect_bytes, disconnect_bytes, subscribe_bytes};
use mqtt_broker::codec::{Packet, PacketId, Publish, QoS, QosPid, Topic};
use mqtt_broker::state::Instant;
use mqtt_broker::{Broker, BrokerConfig, BrokerEvent, ConnectionId, Persistence, StoreOp, Table};

type Store = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn config() -> BrokerConfig {
    BrokerConfig {
        max_connections: usize::MAX,
        max_offline_queue: usize::MAX,
        sys_interval: None,
        persistence: Persistence::Sync,
        ..BrokerConfig::default()
    }
}

struct Durable {
    broker: Broker,
    store: Store,
    ops: Vec<StoreOp>,
    now: Instant,
    input: BytesMut,
    out: Vec<u8>,
}

impl Durable {
    /// Feeds `bytes` to `id`, commits, drains; what `id` got back.
    fn exchange(&mut self, id: ConnectionId, bytes: &[u8]) -> Vec<u8> {
        self.input.clear();
        self.input.extend_from_slice(bytes);
        self.broker.handle_input(self.now, id, &mut self.input);
        self.commit();
        let mut reply = Vec::new();
        while let Some(e) = self.broker.poll_event() {
            let (BrokerEvent::Transmit(to) | BrokerEvent::Close { id: to, .. }) = e else {
                continue;
            };
            while let Ok(Some(n)) = self.broker.poll_transmit(self.now, to, &mut self.out) {
                if to == id {
                    reply.extend_from_slice(&self.out[..n]);
                }
            }
            if matches!(e, BrokerEvent::Close { .. }) {
                self.broker.handle_close(self.now, to);
            }
        }
        reply
    }

    fn commit(&mut self) {
        if let Some(batch) = self.broker.poll_store(&mut self.ops) {
            for op in self.ops.drain(..) {
                op.apply(&mut self.store);
            }
            self.broker.handle_durable(self.now, batch);
        }
    }

    fn connect(&mut self, client_id: &str, clean: bool) -> ConnectionId {
        let id = self.broker.open(self.now);
        let reply = self.exchange(id, &connect_bytes(client_id, clean));
        assert!(
            reply.len() >= 4 && reply[0] == 0x20 && reply[3] == 0,
            "CONNACK"
        );
        id
    }
}

fn publish(topic: &str, payload: &[u8], qos: QoS, pid: u16, retain: bool) -> Vec<u8> {
    let qos_pid = match qos {
        QoS::AtMostOnce => QosPid::AtMostOnce,
        QoS::AtLeastOnce => QosPid::AtLeastOnce(PacketId::new(pid).unwrap()),
        QoS::ExactlyOnce => QosPid::ExactlyOnce(PacketId::new(pid).unwrap()),
    };
    let mut p = Publish::new(Topic::new(topic).unwrap(), payload, qos_pid);
    p.retain = retain;
    Packet::Publish(p)
        .encode_to_vec(common::V4)
        .expect("encodes")
}

fn table_bytes(store: &Store, table: Table) -> (usize, usize) {
    store
        .iter()
        .filter(|((t, _), _)| *t == table)
        .fold((0, 0), |(n, b), ((_, k), v)| (n + 1, b + k.len() + v.len()))
}

fn main() {
    let sessions = env("SESSIONS", 100_000);
    let retained = env("RETAINED", 1_000_000);
    let queued = env("QUEUED", 10_000);
    let mut d = Durable {
        broker: Broker::new(config(), Instant::from_millis(1_000)),
        store: Store::new(),
        ops: Vec::new(),
        now: Instant::from_millis(1_000),
        input: BytesMut::new(),
        out: vec![0; 1 << 16],
    };
    let started = StdInstant::now();
    let disconnect = disconnect_bytes();
    for i in 0..sessions {
        let client_id = format!("o{i}");
        let id = d.connect(&client_id, false);
        let acked = d.exchange(
            id,
            &subscribe_bytes(1, &format!("dev/{client_id}"), QoS::AtLeastOnce),
        );
        assert_eq!(acked.first(), Some(&0x90), "SUBACK");
        d.exchange(id, &disconnect);
    }
    // One offline session with a queue: QoS 1 messages of 100 bytes.
    let q = d.connect("queue", false);
    d.exchange(q, &subscribe_bytes(1, "q", QoS::AtLeastOnce));
    d.exchange(q, &disconnect);
    let p = d.connect("publisher", true);
    let payload = [b'x'; 100];
    for i in 0..queued {
        let pid = (i % 60_000 + 1) as u16;
        d.exchange(p, &publish("q", &payload, QoS::AtLeastOnce, pid, false));
    }
    let small = [b'v'; 32];
    for i in 0..retained {
        d.exchange(
            p,
            &publish(&format!("r/{i}"), &small, QoS::AtMostOnce, 1, true),
        );
    }
    let built = started.elapsed().as_secs_f64();

    let (ns, bs) = table_bytes(&d.store, Table::Sessions);
    let (nm, bm) = table_bytes(&d.store, Table::Messages);
    let (nr, br) = table_bytes(&d.store, Table::Retained);
    println!("built in {built:.1} s: {ns} sessions, {nm} queued messages, {nr} retained");
    println!(
        "stored bytes (keys + values): session with 1 subscription {:.0} B, queued message \
         with a 100 B payload on a 1-byte topic {:.0} B, retained message with 32 B on \
         r/<n> {:.0} B",
        bs as f64 / ns.max(1) as f64,
        bm as f64 / nm.max(1) as f64,
        br as f64 / nr.max(1) as f64
    );

    let now = Instant::from_millis(60_000);
    let started = StdInstant::now();
    let mut b = Broker::new(config(), now);
    for table in Table::ALL {
        for ((t, k), v) in d.store.iter().filter(|((t, _), _)| *t == table) {
            b.restore(now, *t, k, v).expect("restores");
        }
    }
    b.finish_restore(now);
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(b.session_count(), sessions + 2 - 1);
    println!(
        "restore: {secs:.2} s for {} entries ({} sessions, {} retained, {} queued)",
        d.store.len(),
        b.session_count(),
        nr,
        nm
    );
}
