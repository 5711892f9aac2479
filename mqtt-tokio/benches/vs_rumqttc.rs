//! mqtt-tokio against rumqttc 0.25, both against the same mosquitto in one run: throughput
//! of one client publishing at QoS 0/1/2 (closed loop and open loop), round-trip latency at
//! a fixed rate, memory per connected client, and lines of user code for the README task.
//! Prints a table; asserts nothing.
//!
//! ```text
//! cargo bench -p mqtt-tokio --bench vs_rumqttc
//! ```
//!
//! Both clients speak MQTT 3.1.1 with 16-byte payloads, each on its own current-thread
//! tokio runtime (client task and application on one thread), with at most 64 QoS 1/2
//! messages in flight (`MQTT_BENCH_WINDOW`), and TCP_NODELAY (rumqttc's default is
//! off; the bench turns it on). mosquitto runs with logging at warnings, TCP_NODELAY, 100
//! messages in flight per client (its default, 20, also limits incoming QoS 2 in 3.1.1:
//! it ignores a 21st PUBLISH, and the client waits forever) and no limit on its
//! per-client queues (`max_queued_messages 0`), so a message the broker had to drop is
//! not counted against a client.
//!
//! - **closed loop**: the application keeps at most `MQTT_BENCH_WINDOW` (64) publishes
//!   unacknowledged (a semaphore: a permit per publish, returned by its PUBACK/PUBCOMP; for
//!   QoS 0 by the client's own "sent": mqtt-tokio's resolved publish future, rumqttc's
//!   `Outgoing::Publish` event). Messages per second until the last acknowledgement, and
//!   p50/p99 from calling publish to its acknowledgement.
//! - **closed loop, ack-only peer**: the same, against a peer in this process that only
//!   answers (CONNACK, PUBACK, PUBREC, PUBCOMP, SUBACK, PINGRESP; 3.1.1 by hand, one
//!   thread per connection, acknowledgements batched per read): mosquitto is
//!   single-threaded and saturates one core first, so only this shows the clients' own cost.
//! - **open loop**: the application publishes `MQTT_BENCH_N` messages as fast as the API
//!   takes them, without waiting for any acknowledgement; a raw-socket subscriber on the
//!   broker (the same for both clients, on its own thread) counts what arrives: received
//!   messages per second from the first publish to the last arrival, p50/p99 from the
//!   publish call to the arrival (mostly the time spent queued: nothing paces the
//!   publisher), and every message lost (never arrived) or duplicated.
//! - **latency**: the client subscribes to its own topic and publishes QoS 1 on a fixed
//!   schedule (`MQTT_BENCH_RATE` per second for `MQTT_BENCH_SECS`), never waiting for an
//!   acknowledgement; latency is arrival minus the *scheduled* send time, so a stall in the
//!   client counts against it. p50, p99, max and lost.
//! - **memory**: `MQTT_BENCH_CLIENTS` (1,000) connected clients in a child process of this
//!   bench, one per library, each with its default options; growth of the process's
//!   resident set (`VmRSS`) divided by the number of clients.
//! - **lines**: non-blank lines of the README task as the tests run it, between the markers
//!   in `tests/mosquitto.rs` (`readme_example`) and `tests/rumqttc_same_task.rs`.
//!
//! `MQTT_BENCH_N` (default 50,000), `MQTT_BENCH_WINDOW` (64), `MQTT_BENCH_RATE` (2,000),
//! `MQTT_BENCH_SECS` (5), `MQTT_BENCH_CLIENTS` (1,000). `MQTT_BENCH_PROFILE=ours` (or
//! `theirs`) runs only one library's QoS 1 closed loop, for `perf record`;
//! `MQTT_BENCH_LATENCY_ONLY=1` only the latency, twice for each library.
//! `MQTT_BENCH_OURS_QUEUE` sets mqtt-tokio's `config.max_queued` (default 64).

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, Semaphore};

const PAYLOAD: usize = 16;
/// How long the subscriber or a receiver waits for one more message before it counts the
/// rest as lost.
const IDLE: Duration = Duration::from_secs(3);

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.replace('_', "").parse().ok())
        .unwrap_or(default)
}

/// Index `i` in the first 8 bytes, padding after.
fn payload(i: u64) -> Vec<u8> {
    let mut p = vec![b'.'; PAYLOAD];
    p[..8].copy_from_slice(&i.to_be_bytes());
    p
}

fn index(p: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(p.get(..8)?.try_into().ok()?))
}

// ---------------------------------------------------------------------------------------
// mosquitto, configured for the bench

struct Broker {
    child: Child,
    dir: PathBuf,
    port: u16,
}

impl Broker {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("mqtt-bench-mosquitto-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let conf = format!(
            "allow_anonymous true\n\
             persistence false\n\
             log_dest stderr\n\
             log_type warning\n\
             max_queued_messages 0\n\
             max_inflight_messages 100\n\
             set_tcp_nodelay true\n\
             listener {port} 127.0.0.1\n"
        );
        std::fs::write(dir.join("mosquitto.conf"), conf).expect("write conf");
        let bin = [
            "/usr/sbin/mosquitto",
            "/usr/local/sbin/mosquitto",
            "mosquitto",
        ]
        .into_iter()
        .find(|p| !p.starts_with('/') || std::path::Path::new(p).is_file())
        .expect("mosquitto");
        let child = Command::new(bin)
            .arg("-c")
            .arg(dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start mosquitto (apt-get install mosquitto)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "mosquitto is not listening");
            std::thread::sleep(Duration::from_millis(20));
        }
        Self { child, dir, port }
    }

    fn version() -> String {
        let out = Command::new("/usr/sbin/mosquitto").arg("-h").output();
        out.ok()
            .and_then(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .next()
                    .map(str::to_owned)
            })
            .unwrap_or_default()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

// ---------------------------------------------------------------------------------------
// A subscriber that is neither client: MQTT 3.1.1 by hand over a blocking socket.

struct Received {
    unique: u64,
    duplicates: u64,
    last: Option<Instant>,
    /// When each index first arrived.
    arrived: Vec<Option<Instant>>,
}

struct RawSubscriber {
    done: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<Received>,
}

fn string(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn packet(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![kind];
    let mut len = body.len();
    loop {
        let mut b = (len % 128) as u8;
        len /= 128;
        if len > 0 {
            b |= 0x80;
        }
        out.push(b);
        if len == 0 {
            break;
        }
    }
    out.extend_from_slice(body);
    out
}

/// One complete packet at the front of `buf`: (first byte, body range, total length).
fn frame(buf: &[u8]) -> Option<(u8, std::ops::Range<usize>)> {
    let mut len = 0usize;
    let mut shift = 0;
    let mut i = 1;
    loop {
        let b = *buf.get(i)?;
        len |= usize::from(b & 0x7f) << shift;
        shift += 7;
        i += 1;
        if b & 0x80 == 0 {
            break;
        }
    }
    (buf.len() >= i + len).then(|| (buf[0], i..i + len))
}

impl RawSubscriber {
    /// Connects, subscribes to `topic` at `qos` and returns once SUBACK arrived; counts
    /// indexes below `n` until all arrived, or `done` is set and nothing came for
    /// [`IDLE`].
    fn start(port: u16, topic: &str, qos: u8, n: u64) -> Self {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("subscriber connect");
        s.set_nodelay(true).unwrap();
        let mut connect = vec![];
        string(&mut connect, "MQTT");
        connect.extend_from_slice(&[4, 0x02, 0, 0]);
        string(&mut connect, &format!("raw-sub-{topic}"));
        let mut subscribe = vec![0, 1];
        string(&mut subscribe, topic);
        subscribe.push(qos);
        s.write_all(&packet(0x10, &connect)).unwrap();
        s.write_all(&packet(0x82, &subscribe)).unwrap();
        let mut buf = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        // CONNACK then SUBACK.
        let mut acks = 0;
        while acks < 2 {
            let k = s.read(&mut chunk).expect("subscriber read");
            assert!(k > 0, "broker closed the subscriber");
            buf.extend_from_slice(&chunk[..k]);
            while let Some((_, body)) = frame(&buf) {
                buf.drain(..body.end);
                acks += 1;
            }
        }
        let done = Arc::new(AtomicBool::new(false));
        let stop = Arc::clone(&done);
        let thread = std::thread::spawn(move || {
            s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
            let mut seen = vec![false; n as usize];
            let mut r = Received {
                unique: 0,
                duplicates: 0,
                last: None,
                arrived: vec![None; n as usize],
            };
            let mut quiet_since = Instant::now();
            let mut out = Vec::new();
            while r.unique < n {
                match s.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(k) => buf.extend_from_slice(&chunk[..k]),
                    Err(e)
                        if matches!(
                            e.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) =>
                    {
                        if stop.load(Ordering::Relaxed) && quiet_since.elapsed() > IDLE {
                            break;
                        }
                        continue;
                    }
                    Err(_) => break,
                }
                let now = Instant::now();
                quiet_since = now;
                let mut at = 0;
                while let Some((first, body)) = frame(&buf[at..]) {
                    let b = &buf[at + body.start..at + body.end];
                    match first >> 4 {
                        3 => {
                            let q = (first >> 1) & 3;
                            let tl = usize::from(u16::from_be_bytes([b[0], b[1]]));
                            let mut p = 2 + tl;
                            if q > 0 {
                                let id = [b[p], b[p + 1]];
                                p += 2;
                                let kind = if q == 1 { 0x40 } else { 0x50 };
                                out.extend_from_slice(&[kind, 2, id[0], id[1]]);
                            }
                            if let Some(i) = index(&b[p..]).filter(|i| *i < n) {
                                if std::mem::replace(&mut seen[i as usize], true) {
                                    r.duplicates += 1;
                                } else {
                                    r.unique += 1;
                                    r.last = Some(now);
                                    r.arrived[i as usize] = Some(now);
                                }
                            }
                        }
                        // PUBREL: PUBCOMP.
                        6 => out.extend_from_slice(&[0x70, 2, b[0], b[1]]),
                        _ => {}
                    }
                    at += body.end;
                }
                buf.drain(..at);
                if !out.is_empty() {
                    if s.write_all(&out).is_err() {
                        break;
                    }
                    out.clear();
                }
            }
            let _ = s.write_all(&[0xe0, 0]);
            r
        });
        Self { done, thread }
    }

    /// The publisher has published everything: wait for the rest.
    fn finish(self) -> Received {
        self.done.store(true, Ordering::Relaxed);
        self.thread.join().expect("subscriber thread")
    }
}

// ---------------------------------------------------------------------------------------
// A peer that only acknowledges: MQTT 3.1.1 by hand, one thread per connection. It
// answers every packet at once and in batches, so the client is the bottleneck.

/// Listens on a free port; answers CONNECT, PUBLISH (QoS 1/2), PUBREL, SUBSCRIBE and
/// PINGREQ until the bench ends.
fn start_acker() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind acker");
    let port = listener.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in listener.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let _ = s.set_nodelay(true);
                let mut buf = Vec::new();
                let mut chunk = vec![0u8; 64 * 1024];
                let mut out = Vec::new();
                loop {
                    let k = match s.read(&mut chunk) {
                        Ok(0) | Err(_) => return,
                        Ok(k) => k,
                    };
                    buf.extend_from_slice(&chunk[..k]);
                    let mut at = 0;
                    while let Some((first, body)) = frame(&buf[at..]) {
                        let b = &buf[at + body.start..at + body.end];
                        match first >> 4 {
                            1 => out.extend_from_slice(&[0x20, 2, 0, 0]),
                            3 => {
                                let q = (first >> 1) & 3;
                                let tl = usize::from(u16::from_be_bytes([b[0], b[1]]));
                                if q > 0 {
                                    let kind = if q == 1 { 0x40 } else { 0x50 };
                                    out.extend_from_slice(&[kind, 2, b[2 + tl], b[3 + tl]]);
                                }
                            }
                            6 => out.extend_from_slice(&[0x70, 2, b[0], b[1]]),
                            8 => out.extend_from_slice(&[0x90, 3, b[0], b[1], 1]),
                            12 => out.extend_from_slice(&[0xd0, 0]),
                            14 => return,
                            _ => {}
                        }
                        at += body.end;
                    }
                    buf.drain(..at);
                    if !out.is_empty() {
                        if s.write_all(&out).is_err() {
                            return;
                        }
                        out.clear();
                    }
                }
            });
        }
    });
    port
}

// ---------------------------------------------------------------------------------------
// Figures

#[derive(Default, Clone)]
struct Closed {
    rate: f64,
    p50: Duration,
    p99: Duration,
    errors: u64,
}

#[derive(Default, Clone)]
struct Open {
    rate: f64,
    lost: u64,
    duplicates: u64,
    /// From the publish call to the subscriber, of the messages that arrived.
    p50: Duration,
    p99: Duration,
}

#[derive(Default, Clone)]
struct Latency {
    p50: Duration,
    p99: Duration,
    max: Duration,
    lost: u64,
}

fn percentile(sorted: &[Duration], p: usize) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[(sorted.len() * p / 100).min(sorted.len() - 1)]
}

fn closed_figures(
    n: u64,
    start: Instant,
    sent: &[Instant],
    done: &[Instant],
    errors: u64,
) -> Closed {
    let mut lat: Vec<Duration> = sent.iter().zip(done).map(|(s, d)| *d - *s).collect();
    lat.sort();
    let end = done.last().copied().unwrap_or(start);
    Closed {
        rate: n as f64 / (end - start).as_secs_f64(),
        p50: percentile(&lat, 50),
        p99: percentile(&lat, 99),
        errors: errors + (n - done.len() as u64),
    }
}

fn open_figures(n: u64, start: Instant, sent: &[Instant], r: &Received) -> Open {
    let end = r.last.unwrap_or(start);
    let mut lat: Vec<Duration> = sent
        .iter()
        .zip(&r.arrived)
        .filter_map(|(s, a)| a.map(|a| a.saturating_duration_since(*s)))
        .collect();
    lat.sort();
    Open {
        rate: r.unique as f64 / (end - start).as_secs_f64().max(1e-9),
        lost: n - r.unique,
        duplicates: r.duplicates,
        p50: percentile(&lat, 50),
        p99: percentile(&lat, 99),
    }
}

fn latency_figures(n: u64, mut lat: Vec<Duration>) -> Latency {
    lat.sort();
    Latency {
        p50: percentile(&lat, 50),
        p99: percentile(&lat, 99),
        max: lat.last().copied().unwrap_or_default(),
        lost: n - lat.len() as u64,
    }
}

// ---------------------------------------------------------------------------------------
// mqtt-tokio

mod ours {
    use super::*;
    use mqtt_tokio::{AsyncClient, Incoming, Message, Options, ProtocolVersion, QoS, TopicBuf};

    pub(super) fn qos(q: u8) -> QoS {
        [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(q)]
    }

    pub(super) async fn connect(port: u16, id: &str, window: u16) -> (AsyncClient, Incoming) {
        let mut options = Options::new(id, "127.0.0.1", port).version(ProtocolVersion::V3_1_1);
        options.config.max_inflight = window;
        // The machine's queue behind the window (default 64): in an open loop its
        // depth is the latency (Little's law).
        if let Ok(q) = std::env::var("MQTT_BENCH_OURS_QUEUE") {
            options.config.max_queued = q.parse().expect("MQTT_BENCH_OURS_QUEUE: a number");
        }
        AsyncClient::connect(options)
            .await
            .expect("mqtt-tokio connect")
    }

    fn message(topic: &TopicBuf, q: u8, i: u64) -> Message {
        Message::new(topic.clone(), payload(i), qos(q))
    }

    pub(super) async fn closed(port: u16, q: u8, n: u64, window: usize) -> Closed {
        let (client, _incoming) = connect(port, "ours-closed", window as u16).await;
        let topic = TopicBuf::try_from(format!("closed/ours/{q}")).unwrap();
        let permits = Arc::new(Semaphore::new(window));
        let (tx, mut rx) = mpsc::unbounded_channel::<mqtt_tokio::AckFuture>();
        let returned = Arc::clone(&permits);
        let collector = tokio::spawn(async move {
            let mut done = Vec::with_capacity(n as usize);
            let mut errors = 0;
            while let Some(ack) = rx.recv().await {
                if ack.await.is_err() {
                    errors += 1;
                }
                done.push(Instant::now());
                returned.add_permits(1);
            }
            (done, errors)
        });
        let mut sent = Vec::with_capacity(n as usize);
        let start = Instant::now();
        for i in 0..n {
            permits.acquire().await.unwrap().forget();
            sent.push(Instant::now());
            let ack = client.enqueue(message(&topic, q, i)).await.unwrap();
            tx.send(ack).unwrap();
        }
        drop(tx);
        let (done, errors) = collector.await.unwrap();
        let figures = closed_figures(n, start, &sent, &done, errors);
        client.disconnect().await.unwrap();
        figures
    }

    pub(super) async fn open(port: u16, q: u8, n: u64, window: u16) -> Open {
        let name = format!("open/ours/{q}");
        let sub = RawSubscriber::start(port, &name, q, n);
        let (client, _incoming) = connect(port, "ours-open", window).await;
        let topic = TopicBuf::try_from(name).unwrap();
        let mut acks = Vec::with_capacity(n as usize);
        let mut sent = Vec::with_capacity(n as usize);
        let start = Instant::now();
        for i in 0..n {
            sent.push(Instant::now());
            acks.push(client.enqueue(message(&topic, q, i)).await.unwrap());
        }
        let received = tokio::task::spawn_blocking(move || sub.finish())
            .await
            .unwrap();
        let figures = open_figures(n, start, &sent, &received);
        drop(acks);
        let _ = client.disconnect().await;
        figures
    }

    pub(super) async fn latency(port: u16, rate: u64, secs: u64, window: u16) -> Latency {
        let (client, mut incoming) = connect(port, "ours-latency", window).await;
        client
            .subscribe("latency/ours", QoS::AtLeastOnce)
            .await
            .unwrap();
        let n = rate * secs;
        let interval = Duration::from_secs(1) / rate as u32;
        let start = tokio::time::Instant::now() + Duration::from_millis(100);
        let publisher = client.clone();
        let sender = tokio::spawn(async move {
            let topic = TopicBuf::from_static("latency/ours").unwrap();
            for i in 0..n {
                tokio::time::sleep_until(start + interval * i as u32).await;
                // Open loop: the acknowledgement is not awaited.
                drop(publisher.enqueue(message(&topic, 1, i)).await);
            }
        });
        let mut seen = vec![false; n as usize];
        let mut lat = Vec::with_capacity(n as usize);
        while lat.len() < n as usize {
            let Ok(Some(m)) = tokio::time::timeout(IDLE, incoming.recv()).await else {
                break;
            };
            let now = tokio::time::Instant::now();
            if let Some(i) = index(&m.payload).filter(|i| *i < n) {
                if !std::mem::replace(&mut seen[i as usize], true) {
                    lat.push(now - (start + interval * i as u32));
                }
            }
        }
        sender.await.unwrap();
        let _ = client.disconnect().await;
        latency_figures(n, lat)
    }

    /// Connects `n` clients and keeps them; returns them so that they stay connected.
    pub(super) async fn many(port: u16, n: usize) -> Vec<(AsyncClient, Incoming)> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            v.push(connect(port, &format!("ours-mem-{i}"), 64).await);
        }
        v
    }
}

// ---------------------------------------------------------------------------------------
// rumqttc

mod theirs {
    use super::*;
    use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};

    fn qos(q: u8) -> QoS {
        [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(q)]
    }

    pub(super) async fn connect(port: u16, id: &str, window: u16) -> (AsyncClient, EventLoop) {
        let mut o = MqttOptions::new(id, "127.0.0.1", port);
        o.set_inflight(window);
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        // mqtt-tokio sets TCP_NODELAY; rumqttc does not by default. Off for both, so
        // that Nagle's delay does not decide the latency figures.
        eventloop.network_options.set_tcp_nodelay(true);
        loop {
            if let Event::Incoming(Packet::ConnAck(_)) =
                eventloop.poll().await.expect("rumqttc connect")
            {
                break;
            }
        }
        (client, eventloop)
    }

    async fn disconnect(client: AsyncClient, mut eventloop: EventLoop) {
        let _ = client.disconnect().await;
        while tokio::time::timeout(IDLE, eventloop.poll())
            .await
            .is_ok_and(|r| r.is_ok())
        {}
    }

    /// Whether `e` completes a publish at `q`: PUBACK, PUBCOMP, or for QoS 0 the write.
    fn completes(q: u8, e: &Event) -> bool {
        matches!(
            (q, e),
            (0, Event::Outgoing(Outgoing::Publish(_)))
                | (1, Event::Incoming(Packet::PubAck(_)))
                | (2, Event::Incoming(Packet::PubComp(_)))
        )
    }

    pub(super) async fn closed(port: u16, q: u8, n: u64, window: usize) -> Closed {
        let (client, mut eventloop) = connect(port, "theirs-closed", window as u16).await;
        let topic = format!("closed/theirs/{q}");
        let permits = Arc::new(Semaphore::new(window));
        let returned = Arc::clone(&permits);
        let poller = tokio::spawn(async move {
            let mut done = Vec::with_capacity(n as usize);
            let mut errors = 0;
            while (done.len() as u64) < n {
                match tokio::time::timeout(IDLE * 10, eventloop.poll()).await {
                    Ok(Ok(e)) if completes(q, &e) => {
                        done.push(Instant::now());
                        returned.add_permits(1);
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(_)) => errors += 1,
                    Err(_) => break,
                }
            }
            (done, errors, eventloop)
        });
        let mut sent = Vec::with_capacity(n as usize);
        let start = Instant::now();
        for i in 0..n {
            permits.acquire().await.unwrap().forget();
            sent.push(Instant::now());
            client
                .publish(topic.as_str(), qos(q), false, payload(i))
                .await
                .unwrap();
        }
        let (done, errors, eventloop) = poller.await.unwrap();
        let figures = closed_figures(n, start, &sent, &done, errors);
        disconnect(client, eventloop).await;
        figures
    }

    pub(super) async fn open(port: u16, q: u8, n: u64, window: u16) -> Open {
        let topic = format!("open/theirs/{q}");
        let sub = RawSubscriber::start(port, &topic, q, n);
        let (client, mut eventloop) = connect(port, "theirs-open", window).await;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let poller = tokio::spawn(async move {
            let mut completed = 0u64;
            while completed < n && !stopped.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await {
                    Ok(Ok(e)) if completes(q, &e) => completed += 1,
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(_)) => break,
                }
            }
            eventloop
        });
        let mut sent = Vec::with_capacity(n as usize);
        let start = Instant::now();
        for i in 0..n {
            sent.push(Instant::now());
            client
                .publish(topic.as_str(), qos(q), false, payload(i))
                .await
                .unwrap();
        }
        let received = tokio::task::spawn_blocking(move || sub.finish())
            .await
            .unwrap();
        let figures = open_figures(n, start, &sent, &received);
        stop.store(true, Ordering::Relaxed);
        let eventloop = poller.await.unwrap();
        disconnect(client, eventloop).await;
        figures
    }

    pub(super) async fn latency(port: u16, rate: u64, secs: u64, window: u16) -> Latency {
        let (client, mut eventloop) = connect(port, "theirs-latency", window).await;
        client
            .subscribe("latency/theirs", QoS::AtLeastOnce)
            .await
            .unwrap();
        let n = rate * secs;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        // The application polls the event loop itself: arrivals are stamped there.
        let poller = tokio::spawn(async move {
            while !stopped.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(200), eventloop.poll()).await {
                    Ok(Ok(Event::Incoming(Packet::Publish(p)))) => {
                        let _ = tx.send((tokio::time::Instant::now(), index(&p.payload)));
                    }
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(_)) => break,
                }
            }
            eventloop
        });
        let interval = Duration::from_secs(1) / rate as u32;
        let start = tokio::time::Instant::now() + Duration::from_millis(100);
        let publisher = client.clone();
        let sender = tokio::spawn(async move {
            for i in 0..n {
                tokio::time::sleep_until(start + interval * i as u32).await;
                publisher
                    .publish("latency/theirs", QoS::AtLeastOnce, false, payload(i))
                    .await
                    .unwrap();
            }
        });
        let mut seen = vec![false; n as usize];
        let mut lat = Vec::with_capacity(n as usize);
        while lat.len() < n as usize {
            let Ok(Some((at, i))) = tokio::time::timeout(IDLE, rx.recv()).await else {
                break;
            };
            if let Some(i) = i.filter(|i| *i < n) {
                if !std::mem::replace(&mut seen[i as usize], true) {
                    lat.push(at - (start + interval * i as u32));
                }
            }
        }
        sender.await.unwrap();
        stop.store(true, Ordering::Relaxed);
        let eventloop = poller.await.unwrap();
        disconnect(client, eventloop).await;
        latency_figures(n, lat)
    }

    /// Connects `n` clients, each with its event loop polled by a task of its own (which
    /// rumqttc requires), and keeps them.
    pub(super) async fn many(port: u16, n: usize) -> Vec<AsyncClient> {
        let mut v = Vec::with_capacity(n);
        for i in 0..n {
            let o = MqttOptions::new(format!("theirs-mem-{i}"), "127.0.0.1", port);
            let (client, mut eventloop) = AsyncClient::new(o, 10);
            let (up, connected) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                let mut up = Some(up);
                while let Ok(e) = eventloop.poll().await {
                    if let Event::Incoming(Packet::ConnAck(_)) = e {
                        if let Some(up) = up.take() {
                            let _ = up.send(());
                        }
                    }
                }
            });
            connected.await.expect("rumqttc connect");
            v.push(client);
        }
        v
    }
}

// ---------------------------------------------------------------------------------------
// Memory, in a child process per library

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// In the child: connect one client (warm-up), then `n`, and print the RSS growth per
/// client in bytes.
fn memory_child(lib: &str, port: u16, n: usize) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let per_client = match lib {
            "ours" => {
                let _warm = ours::many(port, 1).await;
                let before = rss_kib();
                let kept = ours::many(port, n).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let after = rss_kib();
                drop(kept);
                (after.saturating_sub(before) * 1024) as f64 / n as f64
            }
            _ => {
                let _warm = theirs::many(port, 1).await;
                let before = rss_kib();
                let kept = theirs::many(port, n).await;
                tokio::time::sleep(Duration::from_millis(200)).await;
                let after = rss_kib();
                drop(kept);
                (after.saturating_sub(before) * 1024) as f64 / n as f64
            }
        };
        println!("bytes-per-client {per_client:.0}");
    });
    // Exit without tearing the clients down one by one.
    std::process::exit(0);
}

fn memory(lib: &str, port: u16, n: usize) -> f64 {
    let out = Command::new(std::env::current_exe().unwrap())
        .env("MQTT_BENCH_MEMORY_CHILD", lib)
        .env("MQTT_BENCH_PORT", port.to_string())
        .env("MQTT_BENCH_CLIENTS", n.to_string())
        .stderr(Stdio::inherit())
        .output()
        .expect("run the memory child");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("bytes-per-client "))
        .and_then(|v| v.parse().ok())
        .unwrap_or(f64::NAN)
}

// ---------------------------------------------------------------------------------------
// Lines of user code

fn lines_between(file: &str, begin: &str, end: &str) -> usize {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(file);
    let text = std::fs::read_to_string(&path).unwrap_or_default();
    text.lines()
        .skip_while(|l| !l.contains(begin))
        .skip(1)
        .take_while(|l| !l.contains(end))
        .filter(|l| !l.trim().is_empty())
        .count()
}

// ---------------------------------------------------------------------------------------

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let clients: usize = env("MQTT_BENCH_CLIENTS", 1000);
    if let Ok(lib) = std::env::var("MQTT_BENCH_MEMORY_CHILD") {
        let port = env("MQTT_BENCH_PORT", 0u16);
        memory_child(&lib, port, clients);
        return;
    }
    let n: u64 = env("MQTT_BENCH_N", 50_000);
    let window: usize = env("MQTT_BENCH_WINDOW", 64);
    let rate: u64 = env("MQTT_BENCH_RATE", 2_000);
    let secs: u64 = env("MQTT_BENCH_SECS", 5);
    let broker = Broker::start();
    let port = broker.port;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    if std::env::var_os("MQTT_BENCH_LATENCY_ONLY").is_some() {
        // Only the fixed-rate latency, both libraries, alternating.
        rt.block_on(async {
            for _ in 0..2 {
                let a = ours::latency(port, rate, secs, window as u16).await;
                let b = theirs::latency(port, rate, secs, window as u16).await;
                println!(
                    "latency QoS 1 {rate}/s p50/p99/max/lost ms: mqtt-tokio {}/{}/{}/{} rumqttc {}/{}/{}/{}",
                    ms(a.p50), ms(a.p99), ms(a.max), a.lost, ms(b.p50), ms(b.p99), ms(b.max), b.lost
                );
            }
        });
        return;
    }
    if let Ok(lib) = std::env::var("MQTT_BENCH_PROFILE") {
        // Only QoS 1 closed loop of one library, for `perf record`; against the ack-only
        // peer with `MQTT_BENCH_ACKER=1`.
        let port = if std::env::var_os("MQTT_BENCH_ACKER").is_some() {
            start_acker()
        } else {
            port
        };
        let r = rt.block_on(async {
            match lib.as_str() {
                "ours" => ours::closed(port, 1, n, window).await,
                _ => theirs::closed(port, 1, n, window).await,
            }
        });
        println!("{lib}: QoS 1 closed {:.0} msg/s", r.rate);
        return;
    }
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "mqtt-tokio vs rumqttc 0.25 | {} | MQTT 3.1.1, {PAYLOAD}-byte payloads, N={n}, \
         window {window}, latency {rate}/s for {secs} s, {clients} clients | load {}",
        Broker::version(),
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "{:<34} {:>14} {:>14} {:>8}",
        "", "mqtt-tokio", "rumqttc", "ratio"
    );
    let row = |name: &str, a: String, b: String, ratio: Option<f64>| {
        let r = ratio.map(|r| format!("{r:.2}")).unwrap_or_default();
        println!("{name:<34} {a:>14} {b:>14} {r:>8}");
    };
    rt.block_on(async {
        // Warm up both.
        ours::closed(port, 1, 2000, window).await;
        theirs::closed(port, 1, 2000, window).await;
        for q in 0..=2u8 {
            eprintln!("closed loop, QoS {q}: mqtt-tokio");
            let a = ours::closed(port, q, n, window).await;
            eprintln!("closed loop, QoS {q}: rumqttc");
            let b = theirs::closed(port, q, n, window).await;
            row(
                &format!("QoS {q} closed msg/s"),
                format!("{:.0}", a.rate),
                format!("{:.0}", b.rate),
                Some(a.rate / b.rate),
            );
            row(
                &format!("QoS {q} closed ack p50/p99 ms"),
                format!("{}/{}", ms(a.p50), ms(a.p99)),
                format!("{}/{}", ms(b.p50), ms(b.p99)),
                None,
            );
            if a.errors + b.errors > 0 {
                row(
                    &format!("QoS {q} closed failed"),
                    a.errors.to_string(),
                    b.errors.to_string(),
                    None,
                );
            }
        }
        // The same closed loop against a peer that only acknowledges: what each client
        // can do when the broker is not the bottleneck.
        let acker = start_acker();
        for q in 0..=2u8 {
            eprintln!("closed loop against the ack-only peer, QoS {q}: mqtt-tokio");
            let a = ours::closed(acker, q, n, window).await;
            eprintln!("closed loop against the ack-only peer, QoS {q}: rumqttc");
            let b = theirs::closed(acker, q, n, window).await;
            row(
                &format!("QoS {q} closed, ack-only peer msg/s"),
                format!("{:.0}", a.rate),
                format!("{:.0}", b.rate),
                Some(a.rate / b.rate),
            );
            row(
                &format!("QoS {q} closed, ack-only p50/p99 ms"),
                format!("{}/{}", ms(a.p50), ms(a.p99)),
                format!("{}/{}", ms(b.p50), ms(b.p99)),
                None,
            );
        }
        for q in 0..=2u8 {
            eprintln!("open loop, QoS {q}: mqtt-tokio");
            let a = ours::open(port, q, n, window as u16).await;
            eprintln!("open loop, QoS {q}: rumqttc");
            let b = theirs::open(port, q, n, window as u16).await;
            row(
                &format!("QoS {q} open received msg/s"),
                format!("{:.0}", a.rate),
                format!("{:.0}", b.rate),
                Some(a.rate / b.rate),
            );
            row(
                &format!("QoS {q} open p50/p99 ms"),
                format!("{}/{}", ms(a.p50), ms(a.p99)),
                format!("{}/{}", ms(b.p50), ms(b.p99)),
                None,
            );
            row(
                &format!("QoS {q} open lost/duplicated"),
                format!("{}/{}", a.lost, a.duplicates),
                format!("{}/{}", b.lost, b.duplicates),
                None,
            );
        }
        eprintln!("latency: mqtt-tokio");
        let a = ours::latency(port, rate, secs, window as u16).await;
        eprintln!("latency: rumqttc");
        let b = theirs::latency(port, rate, secs, window as u16).await;
        row(
            &format!("latency QoS 1 {rate}/s p50 ms"),
            ms(a.p50),
            ms(b.p50),
            None,
        );
        row(
            &format!("latency QoS 1 {rate}/s p99 ms"),
            ms(a.p99),
            ms(b.p99),
            Some(a.p99.as_secs_f64() / b.p99.as_secs_f64()),
        );
        row(
            &format!("latency QoS 1 {rate}/s max ms"),
            ms(a.max),
            ms(b.max),
            None,
        );
        row(
            &format!("latency QoS 1 {rate}/s lost"),
            a.lost.to_string(),
            b.lost.to_string(),
            None,
        );
    });
    let a = memory("ours", port, clients);
    let b = memory("theirs", port, clients);
    row(
        "memory per client, KiB RSS",
        format!("{:.1}", a / 1024.0),
        format!("{:.1}", b / 1024.0),
        Some(a / b),
    );
    let a = lines_between(
        "tests/mosquitto.rs",
        "// -- README begins",
        "// -- README ends",
    );
    let b = lines_between(
        "tests/rumqttc_same_task.rs",
        "// -- rumqttc begins",
        "// -- rumqttc ends",
    );
    row(
        "README task, lines of user code",
        a.to_string(),
        b.to_string(),
        Some(a as f64 / b as f64),
    );
    drop(broker);
}
