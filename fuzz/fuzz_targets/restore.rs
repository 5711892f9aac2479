//! A durable broker restored from a damaged store (`Broker::restore`). The store is read
//! from disk, and a disk, a crash or a hand can damage it: every stored byte is hostile.
//!
//! A real store is made once by a scripted run (persistent sessions at 3.1.1 and 5.0 with
//! subscriptions and identifiers, a will, QoS 1 and 2 messages queued offline and in
//! flight, a QoS 2 message between PUBREC and PUBREL, incoming QoS 2 state, retained
//! messages with properties). The input then damages it: truncates, overwrites, inserts
//! or removes bytes of values and keys, drops, duplicates or adds entries. Checks: restore
//! never panics; a store it accepts is served: every stored client reconnects with its
//! session and the broker runs its resends and acknowledgements without a panic, then a
//! crash and a second restore of what that run stored succeed.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use arbitrary::Arbitrary;
use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use mqtt_broker::{Broker, BrokerConfig, BrokerEvent, Persistence, StoreOp, Table};
use mqtt_codec::{ProtocolVersion, QoS, SubscriptionOptions};
use mqtt_state::{Client, ClientConfig, Duration, Instant, Message, TopicBuf};

type Store = BTreeMap<(Table, Vec<u8>), Vec<u8>>;

fn config() -> BrokerConfig {
    BrokerConfig {
        sys_interval: None,
        persistence: Persistence::Sync,
        hash_seed: 7,
        ..BrokerConfig::default()
    }
}

fn apply(store: &mut Store, ops: &[StoreOp]) {
    for op in ops {
        op.apply(store);
    }
}

/// Clients wired to a broker through buffers, the store committed after every step.
struct Net {
    broker: Broker,
    store: Store,
    clients: Vec<(
        Client,
        Option<mqtt_broker::ConnectionId>,
        BytesMut,
        BytesMut,
    )>,
    /// Per client: whether it stops reading after its first message (`Some(true)` once it
    /// has), leaving a QoS 2 exchange half done.
    stall: Vec<Option<bool>>,
    /// Clients that do not acknowledge what they receive.
    silent: Vec<bool>,
    now: Instant,
}

impl Net {
    fn step(&mut self) {
        let mut out = vec![0u8; 1 << 16];
        for _ in 0..200 {
            let mut progress = false;
            for (c, id, to, _) in &mut self.clients {
                let Some(id) = *id else { continue };
                while let Ok(Some(n)) = c.poll_transmit(self.now, &mut out) {
                    to.extend_from_slice(&out[..n]);
                }
                if !to.is_empty() {
                    self.broker.handle_input(self.now, id, to);
                    progress = true;
                }
            }
            let mut ops = Vec::new();
            if let Some(b) = self.broker.poll_store(&mut ops) {
                apply(&mut self.store, &ops);
                self.broker.handle_durable(self.now, b);
            }
            while let Some(e) = self.broker.poll_event() {
                let (BrokerEvent::Transmit(id) | BrokerEvent::Close { id, .. }) = e else {
                    continue;
                };
                let Some(k) = self.clients.iter().position(|c| c.1 == Some(id)) else {
                    continue;
                };
                while let Ok(Some(n)) = self.broker.poll_transmit(self.now, id, &mut out) {
                    self.clients[k].3.extend_from_slice(&out[..n]);
                    progress = true;
                }
                if matches!(e, BrokerEvent::Close { .. }) {
                    self.broker.handle_close(self.now, id);
                    self.clients[k].1 = None;
                }
            }
            for (k, (c, _, _, from)) in self.clients.iter_mut().enumerate() {
                if !from.is_empty() && self.stall.get(k) != Some(&Some(true)) {
                    let _ = c.handle_input(self.now, from);
                }
                while let Some(e) = c.poll_event() {
                    progress = true;
                    if let mqtt_state::Event::Message { packet_id, .. } = e {
                        if let Some(Some(s)) = self.stall.get_mut(k) {
                            *s = true;
                        }
                        if let (Some(p), false) = (packet_id, self.silent.get(k) == Some(&true)) {
                            c.ack(self.now, p);
                        }
                    }
                }
            }
            if !progress {
                return;
            }
        }
    }

    fn connect(&mut self, k: usize) {
        let id = self.broker.open(self.now);
        let (c, slot, to, from) = &mut self.clients[k];
        to.clear();
        from.clear();
        *slot = Some(id);
        c.connect(self.now).unwrap();
        self.step();
    }

    fn cut(&mut self, k: usize) {
        if let Some(id) = self.clients[k].1.take() {
            self.broker.handle_close(self.now, id);
        }
        self.clients[k].0.handle_close(self.now);
        self.step();
    }

    fn publish(&mut self, k: usize, topic: &'static str, qos: QoS, retain: bool) {
        let mut m = Message::new(TopicBuf::from_static(topic).unwrap(), "payload", qos);
        m.retain = retain;
        m.properties_mut().content_type = Some("text/plain".into());
        m.properties_mut().message_expiry_interval = Some(3600);
        let _ = self.clients[k].0.publish(self.now, m);
        self.step();
    }
}

fn client(v: ProtocolVersion, id: &str, manual: bool) -> Client {
    let mut c = ClientConfig {
        clean_start: false,
        session_expiry_interval: 3600,
        manual_acks: manual,
        ..ClientConfig::new(v, mqtt_state::Utf8Bytes::copy_of(id))
    };
    if id == "w" {
        c.will = Some((
            Message::new(
                TopicBuf::from_static("wills/w").unwrap(),
                "gone",
                QoS::AtLeastOnce,
            ),
            5,
        ));
    }
    Client::new(c)
}

/// The store of a scripted run.
fn base() -> &'static Store {
    static BASE: OnceLock<Store> = OnceLock::new();
    BASE.get_or_init(|| {
        let mut net = Net {
            broker: Broker::new(config(), Instant::ZERO),
            store: Store::new(),
            clients: Vec::new(),
            stall: Vec::new(),
            silent: Vec::new(),
            now: Instant::ZERO,
        };
        // a: 3.1.1, offline while messages queue; b: 5.0, never acknowledges (messages in
        // flight); r: stops reading after PUBREC (a QoS 2 message released, PUBREL
        // unread); w: leaves a will; p: publishes, and stops reading before its last
        // PUBREC (incoming QoS 2 state).
        for (v, id, manual) in [
            (ProtocolVersion::V3_1_1, "a", false),
            (ProtocolVersion::V5, "b", true),
            (ProtocolVersion::V3_1_1, "r", false),
            (ProtocolVersion::V5, "w", false),
            (ProtocolVersion::V5, "p", false),
        ] {
            net.clients.push((
                client(v, id, manual),
                None,
                BytesMut::new(),
                BytesMut::new(),
            ));
            net.stall.push(None);
            net.silent.push(manual);
            net.connect(net.clients.len() - 1);
        }
        for (k, filter) in [(0, "t/#"), (1, "t/+"), (1, "$share/g/t/x"), (2, "q2")] {
            let _ = net.clients[k].0.subscribe(
                net.now,
                &[(filter, SubscriptionOptions::qos(QoS::ExactlyOnce))],
                None,
            );
            net.step();
        }
        net.stall[2] = Some(false);
        net.publish(4, "q2", QoS::ExactlyOnce, false);
        net.publish(4, "r/1", QoS::AtLeastOnce, true);
        net.publish(4, "t/x", QoS::ExactlyOnce, false);
        net.cut(0);
        for _ in 0..3 {
            net.publish(4, "t/x", QoS::AtLeastOnce, false);
            net.publish(4, "t/y", QoS::ExactlyOnce, false);
        }
        // a comes back: its queued messages take identifiers, then it drops again.
        net.stall[0] = Some(true);
        net.connect(0);
        net.cut(0);
        net.stall[4] = Some(true);
        net.publish(4, "t/z", QoS::ExactlyOnce, false);
        net.now = net.now + Duration::from_secs(1);
        net.step();
        // Every table has entries, so that the damage reaches every reader.
        for table in Table::ALL {
            assert!(
                net.store.keys().any(|(t, _)| *t == table),
                "the scripted run stored no {table:?}"
            );
        }
        net.store.clone()
    })
}

#[derive(Arbitrary, Debug)]
enum Damage {
    Truncate {
        entry: u16,
        at: u16,
    },
    Set {
        entry: u16,
        at: u16,
        byte: u8,
    },
    Insert {
        entry: u16,
        at: u16,
        byte: u8,
    },
    Remove {
        entry: u16,
        at: u16,
    },
    KeySet {
        entry: u16,
        at: u16,
        byte: u8,
    },
    Drop {
        entry: u16,
    },
    Copy {
        entry: u16,
        to: u8,
    },
    Add {
        table: u8,
        key: Vec<u8>,
        value: Vec<u8>,
    },
}

fuzz_target!(|damage: Vec<Damage>| {
    let mut entries: Vec<((Table, Vec<u8>), Vec<u8>)> =
        base().iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    for d in damage.into_iter().take(16) {
        let n = entries.len();
        if n == 0 {
            break;
        }
        let pick = |e: u16| usize::from(e) % n;
        let at = |v: &Vec<u8>, a: u16| usize::from(a) % (v.len() + 1);
        match d {
            Damage::Truncate { entry, at: a } => {
                let v = &mut entries[pick(entry)].1;
                v.truncate(at(v, a));
            }
            Damage::Set { entry, at: a, byte } => {
                let v = &mut entries[pick(entry)].1;
                if !v.is_empty() {
                    let i = usize::from(a) % v.len();
                    v[i] = byte;
                }
            }
            Damage::Insert { entry, at: a, byte } => {
                let v = &mut entries[pick(entry)].1;
                let i = at(v, a);
                v.insert(i, byte);
            }
            Damage::Remove { entry, at: a } => {
                let v = &mut entries[pick(entry)].1;
                if !v.is_empty() {
                    let i = usize::from(a) % v.len();
                    v.remove(i);
                }
            }
            Damage::KeySet { entry, at: a, byte } => {
                let k = &mut entries[pick(entry)].0 .1;
                if !k.is_empty() {
                    let i = usize::from(a) % k.len();
                    k[i] = byte;
                }
            }
            Damage::Drop { entry } => {
                entries.remove(pick(entry));
            }
            Damage::Copy { entry, to } => {
                let (mut k, v) = entries[pick(entry)].clone();
                k.0 = Table::ALL[usize::from(to) % Table::ALL.len()];
                entries.push((k, v));
            }
            Damage::Add { table, key, value } => {
                let t = Table::ALL[usize::from(table) % Table::ALL.len()];
                entries.push(((t, key), value));
            }
        }
    }
    // As a store holds them: one value per key, keys in order.
    let store: Store = entries.into_iter().collect();
    let now = Instant::from_millis(10_000);
    let Ok(broker) = restore(&store, now) else {
        return;
    };
    // Accepted: served. Every stored client comes back with its session.
    let mut net = Net {
        broker,
        store,
        clients: Vec::new(),
        stall: Vec::new(),
        silent: Vec::new(),
        now,
    };
    let ids: Vec<(String, bool)> = net
        .store
        .keys()
        .filter(|(t, _)| *t == Table::Sessions)
        .filter_map(|(_, k)| String::from_utf8(k.clone()).ok())
        .map(|id| (id, false))
        .collect();
    for (id, _) in ids.iter().take(8) {
        if id.is_empty() || id.len() > 23 {
            continue;
        }
        net.clients.push((
            client(ProtocolVersion::V5, id, false),
            None,
            BytesMut::new(),
            BytesMut::new(),
        ));
        net.connect(net.clients.len() - 1);
    }
    net.now = net.now + Duration::from_secs(10);
    net.broker.handle_timeout(net.now);
    net.step();
    // What that run stored restores in turn.
    let store = net.store.clone();
    if let Err(e) = restore(&store, net.now) {
        panic!("the store a restored broker wrote does not restore: {e}");
    }
});

fn restore(store: &Store, now: Instant) -> Result<Broker, mqtt_broker::Error> {
    let mut b = Broker::new(config(), now);
    for table in Table::ALL {
        for ((t, k), v) in store.iter().filter(|((t, _), _)| *t == table) {
            b.restore(now, *t, k, v)?;
        }
    }
    b.finish_restore(now);
    Ok(b)
}
