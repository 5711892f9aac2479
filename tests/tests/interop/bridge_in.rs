//! A real `mosquitto` bridged to the example broker (issue #16, incoming bridges): a
//! `connection` section with `topic # both 2`, `cleansession false` and a
//! `remote_clientid`, for `bridge_protocol_version` `mqttv311` and `mqttv50`.
//!
//! At 3.1.1 mosquitto sets the top bit of the CONNECT level (`0x84`, its default
//! `try_private true`) and relies on the remote to hold back what the bridge published and
//! to keep retain flags; at 5.0 it subscribes with No Local and Retain As Published
//! (options `0x0c` in its log). Checked here, each way and at each QoS:
//!
//! - [`both_ways_exactly_once_v311`], [`both_ways_exactly_once_v50`]: messages published on
//!   either side arrive on the other once, at their QoS, and nothing more arrives during a
//!   quiet period after (a loop through `both` would deliver copies); retained messages
//!   cross the bridge retained.
//! - [`restart_without_qos1_loss_v311`], [`restart_without_qos1_loss_v50`]: our broker is
//!   killed (SIGKILL at 3.1.1, SIGTERM at 5.0) and restarted on the same port and store
//!   while a QoS 1 publisher on the mosquitto side keeps publishing; every message
//!   mosquitto acknowledged reaches a persistent QoS 1 subscriber on our side (duplicates
//!   allowed at QoS 1).
//!
//! `mosquitto` (Debian `mosquitto`) must be installed: a missing peer fails the test.
//! Every wait is bounded; nothing is timed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use mqtt_tokio::{AsyncClient, Incoming, Message, Options, QoS, TopicBuf};

use crate::broker::{broker_bin, collect_lines};
use crate::mosquitto_daemon::net::fixed_port;
use crate::mosquitto_daemon::{Auth, Listeners, Mosquitto};

/// Longest wait for anything expected; a lost message fails the test at this, not a hang.
const GUARD: Duration = Duration::from_secs(30);

/// How long nothing more may arrive once everything expected did.
const QUIET: Duration = Duration::from_secs(2);

/// Our example broker on a fixed port and a store that outlive its processes.
struct Ours {
    child: Option<Child>,
    port: u16,
    dir: PathBuf,
    /// The stderr of each run so far.
    runs: Vec<Arc<Mutex<Vec<String>>>>,
}

impl Ours {
    fn start(name: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mqtt-bridge-in-{name}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut o = Self {
            child: None,
            port: fixed_port(),
            dir,
            runs: Vec::new(),
        };
        o.spawn();
        o
    }

    /// Starts the broker on its port and store; waits until it listens.
    fn spawn(&mut self) {
        assert!(self.child.is_none(), "already running");
        let mut child = Command::new(broker_bin())
            .arg("--bind")
            .arg(format!("127.0.0.1:{}", self.port))
            .arg("--no-ws")
            .arg("--data-dir")
            .arg(self.dir.join("data"))
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mqtt-broker");
        let (tx, rx) = mpsc::channel();
        collect_lines(child.stdout.take().expect("piped"), Some(tx));
        let stderr = collect_lines(child.stderr.take().expect("piped"), None);
        self.runs.push(Arc::clone(&stderr));
        let deadline = Instant::now() + GUARD;
        loop {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(line) if line.starts_with("listening on tcp ") => break,
                Ok(_) => {}
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "mqtt-broker did not listen on {}:\n{}",
                        self.port,
                        stderr.lock().unwrap().join("\n")
                    );
                }
            }
        }
        self.child = Some(child);
    }

    /// SIGKILL: a crash, nothing more written.
    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM: the broker commits what is left and exits.
    fn terminate(&mut self) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &c.id().to_string()])
            .status();
        let deadline = Instant::now() + GUARD;
        loop {
            match c.try_wait() {
                Ok(Some(status)) => {
                    assert!(status.success(), "mqtt-broker on SIGTERM: {status}");
                    return;
                }
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = c.kill();
                    let _ = c.wait();
                    panic!("mqtt-broker did not exit on SIGTERM within {GUARD:?}");
                }
            }
        }
    }
}

impl Drop for Ours {
    fn drop(&mut self) {
        self.kill();
        if thread::panicking() {
            for (i, run) in self.runs.iter().enumerate() {
                let log = run.lock().unwrap();
                let tail = log.len().saturating_sub(100);
                eprintln!("---- mqtt-broker run {} (last 100 lines) ----", i + 1);
                for l in &log[tail..] {
                    eprintln!("{l}");
                }
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// mosquitto with a bridge to our broker on `port` at `version` (`mqttv311`, `mqttv50`).
/// Its own queue is unbounded (`max_queued_messages 0`), so that only a fault on our side
/// can lose a message while our broker is down, and the bridge retries every second.
fn bridged_mosquitto(port: u16, version: &str) -> Mosquitto {
    let conf = format!(
        "max_queued_messages 0\n\
         connection ours\n\
         address 127.0.0.1:{port}\n\
         topic # both 2\n\
         bridge_protocol_version {version}\n\
         try_private true\n\
         cleansession false\n\
         remote_clientid bridge-in-{version}\n\
         restart_timeout 1\n"
    );
    Mosquitto::with_config(Auth::Anonymous, Listeners::default(), &conf)
}

fn options(port: u16, id: &str) -> Options {
    let mut o = Options::new(id, "127.0.0.1", port);
    o.reconnect = Some((Duration::from_millis(50), Duration::from_millis(500)));
    o.incoming_capacity = 8192;
    o
}

async fn connect(port: u16, id: &str) -> (AsyncClient, Incoming) {
    AsyncClient::connect(options(port, id))
        .await
        .unwrap_or_else(|e| panic!("{id}: connect to {port}: {e}"))
}

fn message(topic: &str, qos: QoS, payload: impl Into<bytes::Bytes>, retain: bool) -> Message {
    let mut m = Message::new(
        TopicBuf::try_from(topic.to_string()).expect("topic"),
        payload.into(),
        qos,
    );
    m.retain = retain;
    m
}

async fn recv_within(incoming: &mut Incoming, d: Duration) -> Option<Message> {
    tokio::time::timeout(d, incoming.recv())
        .await
        .ok()
        .flatten()
}

/// Waits until the bridge carries messages both ways: probes on `ready/in` (mosquitto to
/// ours) and `ready/out` (ours to mosquitto) until one arrives on the far side.
async fn wait_bridged(ours: u16, mosq: u16) {
    let (a, mut on_ours) = connect(ours, "ready-ours").await;
    let (b, mut on_mosq) = connect(mosq, "ready-mosq").await;
    a.subscribe("ready/#", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    b.subscribe("ready/#", QoS::AtMostOnce)
        .await
        .expect("subscribe");
    for (from, to, topic) in [
        (&b, &mut on_ours, "ready/in"),
        (&a, &mut on_mosq, "ready/out"),
    ] {
        let deadline = Instant::now() + GUARD;
        'probe: loop {
            assert!(
                Instant::now() < deadline,
                "the bridge carried nothing on {topic} within {GUARD:?}"
            );
            from.publish_message(message(topic, QoS::AtMostOnce, "probe", false))
                .await
                .expect("probe");
            while let Some(m) = recv_within(to, Duration::from_millis(200)).await {
                if m.topic.as_str() == topic {
                    break 'probe;
                }
            }
        }
    }
    let _ = a.disconnect().await;
    let _ = b.disconnect().await;
}

/// (topic, QoS, payload) of a message.
type Seen = (String, u8, String);

fn seen(m: &Message) -> Seen {
    (
        m.topic.as_str().to_string(),
        m.qos as u8,
        String::from_utf8_lossy(&m.payload).into_owned(),
    )
}

/// Receives until `want` messages arrived (or the guard), then for [`QUIET`] more: every
/// message, sorted.
async fn collect(incoming: &mut Incoming, want: usize) -> Vec<Seen> {
    let mut got = Vec::new();
    let deadline = tokio::time::Instant::now() + GUARD;
    while got.len() < want {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        match recv_within(incoming, left).await {
            Some(m) => got.push(seen(&m)),
            None => break,
        }
    }
    while let Some(m) = recv_within(incoming, QUIET).await {
        got.push(seen(&m));
    }
    got.sort();
    got
}

/// Messages at each QoS from each side arrive on the other exactly once, at their QoS; a
/// retained message crosses retained.
async fn both_ways(version: &str) {
    let ours = Ours::start(&format!("both-{version}"));
    let mosq = bridged_mosquitto(ours.port, version);
    wait_bridged(ours.port, mosq.port).await;
    let (sub_ours, mut on_ours) = connect(ours.port, "sub-ours").await;
    let (sub_mosq, mut on_mosq) = connect(mosq.port, "sub-mosq").await;
    for s in [&sub_ours, &sub_mosq] {
        s.subscribe("t/#", QoS::ExactlyOnce)
            .await
            .expect("subscribe");
    }
    let (pub_ours, _) = connect(ours.port, "pub-ours").await;
    let (pub_mosq, _) = connect(mosq.port, "pub-mosq").await;
    let mut want = Vec::new();
    for (q, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
        .into_iter()
        .enumerate()
    {
        for (p, side) in [(&pub_mosq, "in"), (&pub_ours, "out")] {
            let topic = format!("t/{side}/{q}");
            let payload = format!("{version}-{side}-{q}");
            p.publish_message(message(&topic, qos, payload.clone(), false))
                .await
                .expect("publish");
            want.push((topic, q as u8, payload));
        }
    }
    // Retained, each way: stored on the far side too.
    pub_mosq
        .publish_message(message("t/r/in", QoS::AtLeastOnce, "kept-in", true))
        .await
        .expect("publish");
    pub_ours
        .publish_message(message("t/r/out", QoS::AtLeastOnce, "kept-out", true))
        .await
        .expect("publish");
    want.push(("t/r/in".into(), 1, "kept-in".into()));
    want.push(("t/r/out".into(), 1, "kept-out".into()));
    want.sort();
    let got_ours = collect(&mut on_ours, want.len()).await;
    let got_mosq = collect(&mut on_mosq, want.len()).await;
    assert_eq!(got_ours, want, "{version}: on our broker");
    assert_eq!(got_mosq, want, "{version}: on mosquitto");
    // The retained messages as each side now holds them, read by new subscribers.
    for (port, side) in [(ours.port, "ours"), (mosq.port, "mosquitto")] {
        let (late, mut on_late) = connect(port, &format!("late-{side}")).await;
        late.subscribe("t/r/#", QoS::AtLeastOnce)
            .await
            .expect("subscribe");
        let mut retained = BTreeMap::new();
        while retained.len() < 2 {
            let Some(m) = recv_within(&mut on_late, GUARD).await else {
                break;
            };
            assert!(m.retain, "{version}: {} on {side} not retained", m.topic);
            let (topic, _, payload) = seen(&m);
            retained.insert(topic, payload);
        }
        let want: BTreeMap<String, String> = [
            ("t/r/in".to_string(), "kept-in".to_string()),
            ("t/r/out".to_string(), "kept-out".to_string()),
        ]
        .into();
        assert_eq!(retained, want, "{version}: retained on {side}");
        let _ = late.disconnect().await;
    }
    for c in [sub_ours, sub_mosq, pub_ours, pub_mosq] {
        let _ = c.disconnect().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_exactly_once_v311() {
    both_ways("mqttv311").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_ways_exactly_once_v50() {
    both_ways("mqttv50").await;
}

/// Our broker restarted mid-stream (`sigkill`, else SIGTERM) while a QoS 1 publisher on
/// the mosquitto side keeps publishing: whatever mosquitto acknowledged reaches our
/// persistent subscriber.
async fn restart_without_qos1_loss(version: &str, sigkill: bool) {
    const TOTAL: u64 = 1500;
    const RESTART_AT: u64 = 500;
    let mut ours = Ours::start(&format!("restart-{version}"));
    let mosq = bridged_mosquitto(ours.port, version);
    wait_bridged(ours.port, mosq.port).await;
    let (sub, mut incoming) = AsyncClient::connect(
        options(ours.port, "load-sub")
            .version(mqtt_tokio::ProtocolVersion::V3_1_1)
            .persistent_session(3600),
    )
    .await
    .expect("connect subscriber");
    sub.subscribe("load/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let received: Arc<Mutex<BTreeMap<u64, u64>>> = Arc::default();
    let reader = {
        let received = Arc::clone(&received);
        tokio::spawn(async move {
            while let Some(m) = incoming.recv().await {
                let i: u64 = std::str::from_utf8(&m.payload)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or_else(|| panic!("payload {:?}", m.payload));
                *received.lock().unwrap().entry(i).or_default() += 1;
            }
        })
    };
    let (publisher, _) = connect(mosq.port, "load-pub").await;
    let acked = Arc::new(Mutex::new(BTreeSet::new()));
    let sent = Arc::new(AtomicU64::new(0));
    let producer = {
        let (publisher, acked, sent) = (publisher.clone(), Arc::clone(&acked), Arc::clone(&sent));
        tokio::spawn(async move {
            for i in 0..TOTAL {
                // Paced, so that the stream spans the restart.
                tokio::time::sleep(Duration::from_millis(2)).await;
                let m = message("load/x", QoS::AtLeastOnce, i.to_string(), false);
                if publisher.publish_message(m).await.is_ok() {
                    acked.lock().unwrap().insert(i);
                }
                sent.store(i + 1, Ordering::Relaxed);
            }
        })
    };
    let deadline = Instant::now() + GUARD;
    while sent.load(Ordering::Relaxed) < RESTART_AT {
        assert!(
            Instant::now() < deadline,
            "publisher stuck before the restart"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // How many the publisher sent while our broker was down: the restart is mid-stream.
    let during = tokio::task::block_in_place(|| {
        if sigkill {
            ours.kill();
        } else {
            ours.terminate();
        }
        let down = sent.load(Ordering::Relaxed);
        // Down while mosquitto keeps acknowledging the publisher.
        thread::sleep(Duration::from_millis(800));
        let up = sent.load(Ordering::Relaxed);
        ours.spawn();
        up - down
    });
    assert!(
        during > 0,
        "nothing was published while our broker was down"
    );
    producer.await.expect("producer");
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() as u64 > TOTAL / 2,
        "mosquitto acknowledged only {} of {TOTAL}",
        acked.len()
    );
    let deadline = Instant::now() + GUARD;
    let missing = loop {
        let missing: Vec<u64> = {
            let r = received.lock().unwrap();
            acked
                .iter()
                .filter(|i| !r.contains_key(i))
                .copied()
                .collect()
        };
        if missing.is_empty() || Instant::now() >= deadline {
            break missing;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (distinct, duplicates) = {
        let r = received.lock().unwrap();
        (r.len(), r.values().filter(|&&n| n > 1).count())
    };
    println!(
        "{version} ({}): {} acknowledged by mosquitto ({during} while our broker was down), \
         {distinct} distinct received, {duplicates} duplicated, {} missing",
        if sigkill { "SIGKILL" } else { "SIGTERM" },
        acked.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "{version}: {} acknowledged messages never reached our subscriber, first {:?}",
        missing.len(),
        &missing[..missing.len().min(20)]
    );
    let _ = publisher.disconnect().await;
    let _ = sub.disconnect().await;
    reader.abort();
    drop(mosq);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_qos1_loss_v311() {
    restart_without_qos1_loss("mqttv311", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_without_qos1_loss_v50() {
    restart_without_qos1_loss("mqttv50", false).await;
}
