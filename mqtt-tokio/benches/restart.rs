//! How long a durable broker takes to start again (issue #13's goal: under 10 s with
//! 100,000 sessions and 1,000,000 retained messages), and what a queued message costs on
//! disk.
//!
//! It builds a store through the broker core itself (so the entries are exactly what a
//! broker writes): `SESSIONS` persistent sessions (3.1.1, one QoS 1 subscription each),
//! `RETAINED` retained messages (32-byte payloads on `r/<n>`), and one offline session with
//! `QUEUED` queued QoS 1 messages of 100 bytes, committed to a [`RedbStore`] in batches as
//! the broker's loop would. Then it measures, in this process, what a start does before it
//! serves: open the file (redb checks it), read every entry into `Broker::restore`, and
//! `finish_restore`. With the example broker built (`cargo build --release -p
//! mqtt-examples`), it also starts `target/release/mqtt-broker --data-dir` on the same
//! store and times it from spawn to its `listening on` line.
//!
//! ```text
//! cargo bench -p mqtt-tokio --features store --bench restart
//! ```
//!
//! `SESSIONS` (100000), `RETAINED` (1000000), `QUEUED` (100000) change the sizes;
//! `RESTART_DIR` where the store goes (default: the system's temporary directory).

use std::io::BufRead;
use std::time::Instant as StdInstant;

use bytes::BytesMut;
use mqtt_tokio::broker::codec::{
    Connect, Disconnect, List, Packet, PacketId, ProtocolVersion, Publish, QoS, QosPid, ReasonCode,
    Subscribe, Subscription, SubscriptionOptions, Topic,
};
use mqtt_tokio::broker::{Broker, BrokerConfig, BrokerEvent, ConnectionId, Persistence, StoreOp};
use mqtt_tokio::mqtt_state::Instant;
use mqtt_tokio::store::{flush, restore, RedbStore};

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;

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

fn encode(p: &Packet<'_>) -> Vec<u8> {
    p.encode_to_vec(V4).expect("bench packets encode")
}

struct Writer {
    broker: Broker,
    store: RedbStore,
    ops: Vec<StoreOp>,
    now: Instant,
    input: BytesMut,
    out: Vec<u8>,
    /// Turns since the last commit: the loop commits every `every` turns, so that the
    /// build does not take a sync per client.
    turns: usize,
}

impl Writer {
    fn feed(&mut self, id: ConnectionId, bytes: &[u8]) {
        self.input.clear();
        self.input.extend_from_slice(bytes);
        self.broker.handle_input(self.now, id, &mut self.input);
        self.turns += 1;
        if self.turns >= 1000 {
            self.commit();
        }
        self.drain();
    }

    fn commit(&mut self) {
        self.turns = 0;
        flush(&mut self.broker, &mut self.store, self.now, &mut self.ops).expect("commit");
    }

    fn drain(&mut self) {
        while let Some(e) = self.broker.poll_event() {
            let (BrokerEvent::Transmit(to) | BrokerEvent::Close { id: to, .. }) = e else {
                continue;
            };
            while let Ok(Some(_)) = self.broker.poll_transmit(self.now, to, &mut self.out) {}
            if matches!(e, BrokerEvent::Close { .. }) {
                self.broker.handle_close(self.now, to);
            }
        }
    }

    fn connect(&mut self, client_id: &str, clean: bool) -> ConnectionId {
        let id = self.broker.open(self.now);
        let mut c = Connect::new(V4, client_id);
        c.clean_start = clean;
        c.keep_alive = 600;
        self.feed(id, &encode(&Packet::Connect(c)));
        id
    }

    fn subscribe(&mut self, id: ConnectionId, filter: &str) {
        let subs = [Subscription {
            filter,
            options: SubscriptionOptions::qos(QoS::AtLeastOnce),
        }];
        let pid = PacketId::new(1).expect("non-zero");
        self.feed(
            id,
            &encode(&Packet::Subscribe(Subscribe::new(pid, List::new(&subs)))),
        );
    }

    fn publish(&mut self, id: ConnectionId, topic: &str, payload: &[u8], qos: QoS, retain: bool) {
        let qos_pid = match qos {
            QoS::AtMostOnce => QosPid::AtMostOnce,
            _ => QosPid::AtLeastOnce(PacketId::new(1).expect("non-zero")),
        };
        let mut p = Publish::new(Topic::new(topic).expect("topic"), payload, qos_pid);
        p.retain = retain;
        self.feed(id, &encode(&Packet::Publish(p)));
    }
}

fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn main() {
    let sessions = env("SESSIONS", 100_000);
    let retained = env("RETAINED", 1_000_000);
    let queued = env("QUEUED", 100_000);
    let base = std::env::var_os("RESTART_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(format!("mqtt-restart-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");

    let started = StdInstant::now();
    let mut w = Writer {
        broker: Broker::new(config(), Instant::from_millis(1_000)),
        store: RedbStore::open(&dir).expect("store"),
        ops: Vec::new(),
        now: Instant::from_millis(1_000),
        input: BytesMut::new(),
        out: vec![0; 1 << 16],
        turns: 0,
    };
    let disconnect = encode(&Packet::Disconnect(Disconnect::new(ReasonCode::Success)));
    for i in 0..sessions {
        let client_id = format!("o{i}");
        let id = w.connect(&client_id, false);
        w.subscribe(id, &format!("dev/{client_id}"));
        w.feed(id, &disconnect);
    }
    let p = w.connect("publisher", true);
    let small = [b'v'; 32];
    for i in 0..retained {
        w.publish(p, &format!("r/{i}"), &small, QoS::AtMostOnce, true);
    }
    w.commit();
    let q = w.connect("queue", false);
    w.subscribe(q, "q");
    w.feed(q, &disconnect);
    let payload = [b'x'; 100];
    for _ in 0..queued {
        w.publish(p, "q", &payload, QoS::AtLeastOnce, false);
    }
    w.commit();
    drop(w);
    println!(
        "store built in {:.1} s: {sessions} sessions, {retained} retained, {queued} queued; \
         {:.1} MB on disk",
        started.elapsed().as_secs_f64(),
        dir_bytes(&dir) as f64 / 1e6
    );

    // What a start does before it serves, in this process.
    let started = StdInstant::now();
    let mut store = RedbStore::open(&dir).expect("reopen");
    let opened = started.elapsed().as_secs_f64();
    let mut broker = Broker::new(config(), Instant::ZERO);
    let loaded = restore(&mut broker, &mut store).expect("restore");
    let total = started.elapsed().as_secs_f64();
    println!(
        "restart in process: {total:.2} s ({opened:.2} s opening and checking the file, \
         {:.2} s reading {} entries into the core); {} sessions",
        total - opened,
        loaded.entries,
        broker.session_count()
    );
    drop(broker);
    drop(store);

    // The example broker, from spawn to listening.
    let bin =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/release/mqtt-broker");
    if bin.exists() {
        let started = StdInstant::now();
        let mut child = std::process::Command::new(&bin)
            .args(["--bind", "127.0.0.1:0", "--no-ws", "--sys-interval", "0"])
            .arg("--data-dir")
            .arg(&dir)
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("spawn the example broker");
        let stdout = child.stdout.take().expect("stdout");
        let mut listening = None;
        for line in std::io::BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("listening on") {
                listening = Some(started.elapsed().as_secs_f64());
                break;
            }
        }
        let _ = child.kill();
        let _ = child.wait();
        match listening {
            Some(s) => println!("example broker: listening {s:.2} s after it was started"),
            None => println!("example broker: never said it was listening"),
        }
    } else {
        println!("example broker not built ({}): skipped", bin.display());
    }
    let _ = std::fs::remove_dir_all(&dir);

    // Bytes on disk per queued message: a store of one offline session and its queue
    // (redb grows its file in steps, so a large queue, less an empty store).
    let dir = base.join(format!("mqtt-restart-bench-q-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");
    let mut w = Writer {
        broker: Broker::new(config(), Instant::from_millis(1_000)),
        store: RedbStore::open(&dir).expect("store"),
        ops: Vec::new(),
        now: Instant::from_millis(1_000),
        input: BytesMut::new(),
        out: vec![0; 1 << 16],
        turns: 0,
    };
    let q = w.connect("queue", false);
    w.subscribe(q, "q");
    w.feed(q, &disconnect);
    w.commit();
    let empty = dir_bytes(&dir);
    let p = w.connect("publisher", true);
    let n = queued.max(1);
    for _ in 0..n {
        w.publish(p, "q", &payload, QoS::AtLeastOnce, false);
    }
    w.commit();
    let full = dir_bytes(&dir);
    drop(w);
    println!(
        "bytes on disk per queued QoS 1 message (100-byte payload on topic \"q\"): {:.0} \
         ({n} queued: {:.1} MB, an empty store {:.1} MB)",
        full.saturating_sub(empty) as f64 / n as f64,
        full as f64 / 1e6,
        empty as f64 / 1e6
    );
    let _ = std::fs::remove_dir_all(&dir);
}
