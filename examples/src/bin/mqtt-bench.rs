//! A load generator for MQTT brokers: a thin tokio driver of many [`Client`] machines.
//!
//! ```text
//! mqtt-bench --port 1883 --scenario fan-in  --pubs 10 --qos 1 --payload 64 --duration 5
//! mqtt-bench --port 1883 --scenario fan-out --subs 10 --qos 0 --payload 1024 --duration 5
//! mqtt-bench --port 1883 --scenario idle --connections 10000 --hold 10
//! mqtt-bench --port 1883 --scenario fan-in --pubs 10 --qos 2 --open-loop --duration 5
//! mqtt-bench --port 1883 --scenario blast --qos 1 --duration 5
//! mqtt-bench --port 1883 --scenario fan-in --pubs 1 --qos 1 --rate 1000 --duration 5
//! mqtt-bench --port 1883 --scenario connect --connections 1000 --connect-concurrency 16
//! ```
//!
//! Publishers send to `bench/RUN/P` and every subscriber subscribes to `bench/RUN/+`, so
//! `fan-in` (N publishers, one subscriber) and `fan-out` (one publisher, M subscribers) are
//! the same run with different counts. Each payload starts with the send time (nanoseconds
//! since a start instant shared by the whole process, 8 bytes) and the publisher's index
//! (4 bytes); subscribers take the latency from it.
//!
//! The rate is not limited, but each publisher keeps at most `--window` messages that have
//! not yet reached every subscriber (for QoS 1 it also caps the client's in-flight window),
//! so a broker is measured at saturation without its queues growing without bound. A QoS 0
//! message that the broker drops would hold the window forever: after `--stall-ms` without
//! progress the publisher writes its outstanding messages off as lost.
//!
//! `idle` opens `--connections` connections that only keep alive, prints `idle ready ...`
//! when all are connected, holds them for `--hold` seconds and exits: the comparison
//! script reads the broker's resident memory meanwhile. Each connection is a file
//! descriptor on both sides: raise `ulimit -n` first.
//!
//! `--open-loop` drops the window: each publisher writes as fast as its socket accepts
//! (QoS 0) or as the broker's acknowledgements let it (QoS 1/2: up to `--open-inflight`
//! unacknowledged messages, 1000 by default), so a broker that cannot
//! push back loses messages instead of slowing the publishers. `blast` is fan-in with 8
//! publishers (unless `--pubs`), one subscriber, open loop. `--rate R` sends R messages per
//! second in total, spread evenly over the publishers, on a fixed schedule (open loop): the
//! latency of a broker that is not saturated.
//!
//! Payloads of 20 bytes or more also carry a per-publisher sequence number (8 bytes), so
//! subscribers count duplicates and which messages never arrived: `lost` is, per subscriber
//! and publisher, what should have arrived and did not: every message sent at QoS 0, every
//! acknowledged message at QoS 1/2 (in the closed loop, also what the window wrote off).
//!
//! `connect` opens `--connections` connections, `--connect-concurrency` at a time, and
//! times each from the TCP connect to the CONNACK (`p50_us`...) and from the CONNECT write
//! to the CONNACK (`mqtt_p50_us`...); all stay open until the last has connected.
//!
//! Every load run prints one machine-readable line:
//! `broker=.. scenario=fan-in qos=1 payload=64 pubs=10 subs=1 window=.. sent=.. received=..
//! lost=.. secs=.. msgs_per_sec=.. p50_us=.. p99_us=.. max_us=.. errors=.. mode=..
//! acked=.. unique=.. duplicates=.. unique_per_sec=.. rate=.. refused=..`, where
//! `received` counts deliveries (a fan-out publish counts once per subscriber),
//! `msgs_per_sec` is deliveries per second, `mode` is `closed`, `open` or `rate`, `acked`
//! counts acknowledged QoS 1/2 publications, `refused` those a 5.0 broker refused in its
//! acknowledgement (not owed to anyone, so not `lost`) and `unique` deliveries without
//! duplicates. The connect run prints
//! `connect broker=.. connections=.. ok=.. failed=.. secs=.. p50_us=.. p99_us=.. max_us=..
//! mqtt_p50_us=.. mqtt_p99_us=.. mqtt_max_us=..`.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration as StdDuration;

use bytes::{BufMut, Bytes, BytesMut};
use clap::{Parser, ValueEnum};
use mqtt_codec::{ProtocolVersion, QoS, SubscriptionOptions};
use mqtt_state::{Client, ClientConfig, Event, Instant, Message, TopicBuf};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify, Semaphore};

/// Load generator: publish/subscribe throughput and latency, or idle connections.
#[derive(Parser, Debug, Clone)]
#[command(version)]
struct Args {
    /// Broker host.
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// Broker TCP port.
    #[arg(long, default_value_t = 1883)]
    port: u16,
    /// The subscribers' broker TCP port, when not `--port`: another node of a cluster, to
    /// measure messages that cross between nodes.
    #[arg(long)]
    sub_port: Option<u16>,
    /// What to run.
    #[arg(long, value_enum, default_value_t = Scenario::FanIn)]
    scenario: Scenario,
    /// Publishers (fan-in; fan-out uses one unless given).
    #[arg(long)]
    pubs: Option<usize>,
    /// Subscribers (fan-out; fan-in uses one unless given).
    #[arg(long)]
    subs: Option<usize>,
    /// QoS of publications and subscriptions: 0, 1 or 2.
    #[arg(long, default_value_t = 0, value_parser = clap::value_parser!(u8).range(0..=2))]
    qos: u8,
    /// Payload size in bytes (at least 12: timestamp and publisher index).
    #[arg(long, default_value_t = 64)]
    payload: usize,
    /// Seconds to publish for.
    #[arg(long, default_value_t = 5.0)]
    duration: f64,
    /// Stop each publisher after this many messages (whichever of this and `--duration`
    /// comes first).
    #[arg(long)]
    messages: Option<u64>,
    /// Messages per publisher not yet delivered to every subscriber.
    #[arg(long, default_value_t = 64)]
    window: u64,
    /// Milliseconds without delivery progress after which a full window is written off.
    #[arg(long, default_value_t = 500)]
    stall_ms: u64,
    /// MQTT protocol version: 4 (3.1.1) or 5.
    #[arg(long, default_value_t = 4, value_parser = clap::value_parser!(u8).range(4..=5))]
    mqtt_version: u8,
    /// Label printed as `broker=` in the summary.
    #[arg(long, default_value = "broker")]
    label: String,
    /// Idle mode: connections to open.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Idle mode: seconds to hold them once all are connected.
    #[arg(long, default_value_t = 10.0)]
    hold: f64,
    /// Idle mode: keep alive in seconds.
    #[arg(long, default_value_t = 30)]
    keep_alive: u16,
    /// Idle mode: connection attempts in progress at once.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Idle mode: each connection subscribes (QoS 1) to its own topic, `push/<client id>`,
    /// as a push-service device does, before it counts as ready.
    #[arg(long)]
    subscribe: bool,
    /// Load: no window; publishers send as fast as the socket and the broker's
    /// acknowledgements let them.
    #[arg(long)]
    open_loop: bool,
    /// Load: messages per second over all publishers, on a fixed schedule (implies
    /// `--open-loop`).
    #[arg(long)]
    rate: Option<f64>,
    /// Load: seconds to wait after publishing for deliveries to stop arriving before
    /// counting what is lost (at most 5 times this in all).
    #[arg(long, default_value_t = 2.0)]
    drain: f64,
    /// Connect: print the N slowest connections to stderr, with when each began.
    #[arg(long, default_value_t = 0)]
    slowest: usize,
    /// Open loop, QoS 1/2: unacknowledged messages per publisher (the client's in-flight
    /// limit, as any client has one; at most 65,000).
    #[arg(long, default_value_t = 1000)]
    open_inflight: u64,
    /// Load: subscribers keep persistent sessions (3.1.1 clean session 0, 5.0 a session
    /// expiry of an hour), so that a durable broker stores what it queues for them. The
    /// sessions stay on the broker after the run (use a fresh broker per run).
    #[arg(long)]
    persistent: bool,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum Scenario {
    /// Many publishers, one subscriber.
    FanIn,
    /// One publisher, many subscribers.
    FanOut,
    /// Connections that only keep alive.
    Idle,
    /// Open-loop fan-in: 8 publishers (unless `--pubs`) blast one subscriber.
    Blast,
    /// CONNECT to CONNACK latency of `--connections` connections.
    Connect,
    /// Publisher `i` to subscriber `i` alone, 10 pairs (unless `--pubs` or `--subs`).
    Pairs,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::FanIn => "fan-in",
            Scenario::FanOut => "fan-out",
            Scenario::Idle => "idle",
            Scenario::Blast => "blast",
            Scenario::Connect => "connect",
            Scenario::Pairs => "pairs",
        }
    }
}

/// Bytes reserved per read on a loaded connection: many messages per system call.
const LOAD_READ: usize = 64 * 1024;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let args = Args::parse();
    // One thread: the broker under test gets the other core.
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(async move {
            match args.scenario {
                Scenario::Idle => idle(args).await,
                Scenario::Connect => connect_latency(args).await,
                _ => load(args).await,
            }
        })
}

/// One TCP connection driven by a [`Client`].
struct Conn {
    client: Client,
    stream: TcpStream,
    input: BytesMut,
    scratch: Vec<u8>,
    output: Vec<u8>,
    start: std::time::Instant,
    /// Bytes reserved per read.
    read_size: usize,
    /// When the TCP connection was up (before CONNECT was written).
    tcp_connected: std::time::Instant,
}

impl Conn {
    /// Connects and waits for CONNACK.
    async fn open(
        addr: &str,
        config: ClientConfig,
        start: std::time::Instant,
        read_size: usize,
    ) -> Result<Self, BoxError> {
        let stream = TcpStream::connect(addr).await?;
        stream.set_nodelay(true)?;
        let tcp_connected = std::time::Instant::now();
        let mut conn = Conn {
            client: Client::new(config),
            stream,
            input: BytesMut::new(),
            scratch: vec![0; 4096],
            output: Vec::new(),
            start,
            read_size,
            tcp_connected,
        };
        conn.client.connect(conn.now())?;
        conn.flush().await?;
        loop {
            conn.read().await?;
            while let Some(event) = conn.client.poll_event() {
                match event {
                    Event::Connected(_) => return Ok(conn),
                    Event::Disconnected { reason, .. } => {
                        return Err(format!("refused: {reason:?}").into())
                    }
                    _ => {}
                }
            }
        }
    }

    /// Subscribes at QoS 1 to `push/<client id>` and waits for the SUBACK.
    async fn subscribe_own(mut self) -> Result<Self, BoxError> {
        let filter = format!("push/{}", self.client.config().client_id);
        self.client.subscribe(
            self.now(),
            &[(filter.as_str(), SubscriptionOptions::qos(QoS::AtLeastOnce))],
            None,
        )?;
        self.flush().await?;
        loop {
            self.read().await?;
            while let Some(event) = self.client.poll_event() {
                if let Event::Subscribed { .. } = event {
                    return Ok(self);
                }
            }
        }
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.start.elapsed().as_millis() as u64)
    }

    /// Writes everything the machine has to send.
    async fn flush(&mut self) -> Result<(), BoxError> {
        let now = self.now();
        while let Some(n) = self.client.poll_transmit(now, &mut self.scratch)? {
            self.output.extend_from_slice(&self.scratch[..n]);
        }
        if !self.output.is_empty() {
            self.stream.write_all(&self.output).await?;
            self.output.clear();
        }
        Ok(())
    }

    /// Moves what the machine has to send into `output`, without writing.
    fn stage(&mut self) -> Result<(), BoxError> {
        let now = self.now();
        while let Some(n) = self.client.poll_transmit(now, &mut self.scratch)? {
            self.output.extend_from_slice(&self.scratch[..n]);
        }
        Ok(())
    }

    /// One read from the socket into the machine (cancel safe).
    async fn read(&mut self) -> Result<(), BoxError> {
        self.input.reserve(self.read_size);
        if self.stream.read_buf(&mut self.input).await? == 0 {
            return Err("connection closed by the broker".into());
        }
        let now = self.now();
        self.client.handle_input(now, &mut self.input)?;
        Ok(())
    }

    /// Keep alive: lets the machine act on its timers.
    fn tick(&mut self) {
        if let Some(t) = self.client.poll_timeout() {
            let now = self.now();
            if t <= now {
                self.client.handle_timeout(now);
            }
        }
    }

    /// Time until the machine's next timer.
    fn until_timeout(&self) -> StdDuration {
        match self.client.poll_timeout() {
            Some(t) => {
                StdDuration::from_millis(t.as_millis().saturating_sub(self.now().as_millis()))
            }
            None => StdDuration::from_secs(3600),
        }
    }
}

fn client_config(args: &Args, id: String, keep_alive: u16) -> ClientConfig {
    let version = match args.mqtt_version {
        5 => ProtocolVersion::V5,
        _ => ProtocolVersion::V3_1_1,
    };
    let mut config = ClientConfig::new(version, id);
    config.keep_alive = keep_alive;
    let window = u16::try_from(args.window.max(1)).unwrap_or(u16::MAX);
    // The delivery window is what limits a publisher; PUBACKs may trail deliveries.
    config.max_inflight = window.saturating_mul(4);
    config.receive_maximum = window.max(64);
    config.max_queued = config.max_queued.max(usize::from(window) * 4);
    if args.is_open_loop() {
        // No window: the broker's Receive Maximum and acknowledgements are the only limit.
        config.max_inflight = u16::MAX;
        config.receive_maximum = u16::MAX;
        config.max_queued = config.max_queued.max(2 * OPEN_MAX_UNACKED as usize);
        config.max_inflight =
            u16::try_from(args.open_inflight.clamp(1, OPEN_MAX_UNACKED)).unwrap_or(u16::MAX);
    }
    config
}

/// Open loop, QoS 1/2: most unacknowledged messages per publisher, under the 65,535
/// packet identifiers.
const OPEN_MAX_UNACKED: u64 = 65_000;

/// Open loop: bytes a publisher stages before waiting for its socket.
const OPEN_STAGED: usize = 64 * 1024;

impl Args {
    fn is_open_loop(&self) -> bool {
        self.open_loop || self.rate.is_some() || self.scenario == Scenario::Blast
    }

    fn mode(&self) -> &'static str {
        if self.rate.is_some() {
            "rate"
        } else if self.is_open_loop() {
            "open"
        } else {
            "closed"
        }
    }

    fn qos(&self) -> QoS {
        match self.qos {
            0 => QoS::AtMostOnce,
            1 => QoS::AtLeastOnce,
            _ => QoS::ExactlyOnce,
        }
    }
}

/// A payload: send time (ns since the shared start), publisher index, and from 20 bytes
/// on a sequence number, then padding.
fn make_payload(start: std::time::Instant, index: u32, seq: u64, size: usize) -> Bytes {
    let mut p = BytesMut::with_capacity(size);
    p.put_u64(start.elapsed().as_nanos() as u64);
    p.put_u32(index);
    if size >= 20 {
        p.put_u64(seq);
    }
    p.resize(size, 0xa5);
    p.freeze()
}

/// What publishers and subscribers share.
struct Shared {
    start: std::time::Instant,
    /// Per publisher: deliveries of its messages, summed over subscribers.
    delivered: Vec<AtomicU64>,
    /// Per publisher: woken when its deliveries advance.
    wake: Vec<Notify>,
    /// Nanoseconds since `start` of the latest delivery.
    last_delivery: AtomicU64,
    /// Set while publishers are still running.
    publishing: AtomicBool,
    /// Per publisher: messages sent, and (QoS 1/2) acknowledged.
    sent: Vec<AtomicU64>,
    acked: Vec<AtomicU64>,
    /// QoS 1/2 messages the broker refused in its acknowledgement (5.0 reason >= 0x80).
    refused: AtomicU64,
    /// Whether payloads carry a sequence number.
    numbered: bool,
}

/// What a subscriber saw.
struct Received {
    /// Latency of each delivery in microseconds.
    latencies: Vec<u32>,
    /// Per publisher: distinct sequence numbers received (numbered payloads only).
    unique: Vec<u64>,
    duplicates: u64,
}

async fn load(args: Args) -> Result<(), BoxError> {
    let (pubs, subs) = match args.scenario {
        Scenario::FanIn => (args.pubs.unwrap_or(10), args.subs.unwrap_or(1)),
        Scenario::Blast => (args.pubs.unwrap_or(8), args.subs.unwrap_or(1)),
        Scenario::Pairs => {
            let n = args.pubs.or(args.subs).unwrap_or(10);
            (n, n)
        }
        _ => (args.pubs.unwrap_or(1), args.subs.unwrap_or(10)),
    };
    let pairs = args.scenario == Scenario::Pairs;
    // Subscribers each publisher's messages go to.
    let fan = if pairs { 1 } else { subs };
    if pubs == 0 || subs == 0 {
        return Err("need at least one publisher and one subscriber".into());
    }
    let qos = args.qos();
    let payload = args.payload.max(12);
    let addr = format!("{}:{}", args.host, args.port);
    let start = std::time::Instant::now();
    let run = format!(
        "{:x}{:x}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0)
    );
    let shared = Arc::new(Shared {
        start,
        delivered: (0..pubs).map(|_| AtomicU64::new(0)).collect(),
        wake: (0..pubs).map(|_| Notify::new()).collect(),
        last_delivery: AtomicU64::new(0),
        publishing: AtomicBool::new(true),
        sent: (0..pubs).map(|_| AtomicU64::new(0)).collect(),
        acked: (0..pubs).map(|_| AtomicU64::new(0)).collect(),
        refused: AtomicU64::new(0),
        numbered: payload >= 20,
    });

    // Subscribers first, each subscribed before any message goes out.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut sub_tasks = Vec::new();
    for s in 0..subs {
        let mut config = client_config(&args, format!("bench-{run}-s{s}"), 60);
        if args.persistent {
            config.clean_start = false;
            config.session_expiry_interval = 3600;
        }
        let sub_addr = format!("{}:{}", args.host, args.sub_port.unwrap_or(args.port));
        let mut conn = Conn::open(&sub_addr, config, start, LOAD_READ).await?;
        let filter = if pairs {
            format!("bench/{run}/{s}")
        } else {
            format!("bench/{run}/+")
        };
        conn.client.subscribe(
            conn.now(),
            &[(filter.as_str(), SubscriptionOptions::qos(qos))],
            None,
        )?;
        conn.flush().await?;
        'suback: loop {
            conn.read().await?;
            while let Some(event) = conn.client.poll_event() {
                if let Event::Subscribed { .. } = event {
                    break 'suback;
                }
            }
        }
        sub_tasks.push(tokio::spawn(subscriber(
            conn,
            shared.clone(),
            stop_rx.clone(),
        )));
    }
    let mut pub_conns = Vec::new();
    for p in 0..pubs {
        let config = client_config(&args, format!("bench-{run}-p{p}"), 60);
        pub_conns.push(Conn::open(&addr, config, start, LOAD_READ).await?);
    }

    let began = start.elapsed();
    let deadline = began + StdDuration::from_secs_f64(args.duration);
    let mut pub_tasks = Vec::new();
    for (p, conn) in pub_conns.into_iter().enumerate() {
        let topic = TopicBuf::try_from(format!("bench/{run}/{p}"))
            .map_err(|e| format!("bench topic: {e}"))?;
        let job = Publisher {
            index: p,
            topic,
            qos,
            payload,
            subs: fan as u64,
            window: args.window.max(1),
            budget: args.messages.unwrap_or(u64::MAX),
            deadline,
            stall: StdDuration::from_millis(args.stall_ms),
            inflight: args.open_inflight.clamp(1, OPEN_MAX_UNACKED),
        };
        if args.is_open_loop() {
            let rate = args.rate.map(|r| r / pubs as f64);
            pub_tasks.push(tokio::spawn(open_publisher(
                conn,
                job,
                shared.clone(),
                rate,
            )));
        } else {
            pub_tasks.push(tokio::spawn(publisher(conn, job, shared.clone())));
        }
    }
    let mut sent = 0u64;
    let mut lost = 0u64;
    let mut errors = Vec::new();
    for t in pub_tasks {
        match t.await? {
            Ok((s, l)) => {
                sent += s;
                lost += l;
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let published_until = start.elapsed();
    shared.publishing.store(false, Ordering::Relaxed);
    // Refused messages (5.0) were never taken: not expected anywhere.
    let expected = sent.saturating_sub(shared.refused.load(Ordering::Relaxed)) * fan as u64;
    // What each subscriber must get from each publisher: QoS 0 everything sent, QoS 1/2
    // everything acknowledged.
    let owed: Vec<u64> = (0..pubs)
        .map(|p| match qos {
            QoS::AtMostOnce => shared.sent[p].load(Ordering::Relaxed),
            _ => shared.acked[p].load(Ordering::Relaxed),
        })
        .collect();
    let acked: u64 = shared.acked.iter().map(|a| a.load(Ordering::Relaxed)).sum();
    // Drain: wait for what is still on its way, until `--drain` seconds pass without a
    // delivery (at most five times that).
    let drain = StdDuration::from_secs_f64(args.drain.max(0.0));
    let drain_end = std::time::Instant::now() + drain * 5;
    let mut last = (std::time::Instant::now(), 0u64);
    while std::time::Instant::now() < drain_end && last.0.elapsed() < drain {
        let got: u64 = shared
            .delivered
            .iter()
            .map(|d| d.load(Ordering::Relaxed))
            .sum();
        if got >= expected {
            break;
        }
        if got != last.1 {
            last = (std::time::Instant::now(), got);
        }
        tokio::time::sleep(StdDuration::from_millis(10)).await;
    }
    let _ = stop_tx.send(true);
    let mut latencies: Vec<u32> = Vec::new();
    let mut unique = 0u64;
    let mut duplicates = 0u64;
    let mut lost_by_seq = 0u64;
    for (s, t) in sub_tasks.into_iter().enumerate() {
        match t.await? {
            Ok(r) => {
                latencies.extend(r.latencies);
                duplicates += r.duplicates;
                unique += r.unique.iter().sum::<u64>();
                lost_by_seq += owed
                    .iter()
                    .zip(&r.unique)
                    .enumerate()
                    // In pairs a subscriber is owed its own publisher's messages alone.
                    .filter(|(p, _)| !pairs || *p == s)
                    .map(|(_, (o, u))| o.saturating_sub(*u))
                    .sum::<u64>();
            }
            Err(e) => errors.push(e.to_string()),
        }
    }
    let received = latencies.len() as u64;
    if !shared.numbered {
        unique = received;
    }
    let lost = if !shared.numbered {
        expected.saturating_sub(received).max(lost)
    } else if args.is_open_loop() {
        lost_by_seq
    } else {
        expected.saturating_sub(received).max(lost).max(lost_by_seq)
    };
    let last = StdDuration::from_nanos(shared.last_delivery.load(Ordering::Relaxed));
    let end = last.max(published_until);
    let secs = (end - began).as_secs_f64().max(1e-9);
    latencies.sort_unstable();
    let pct = |q: f64| -> u32 {
        if latencies.is_empty() {
            return 0;
        }
        let i = ((latencies.len() as f64 * q).ceil() as usize).clamp(1, latencies.len()) - 1;
        latencies[i]
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "broker={} scenario={} qos={} payload={} pubs={} subs={} window={} sent={} received={} \
         lost={} secs={:.3} msgs_per_sec={:.0} p50_us={} p99_us={} max_us={} errors={} \
         mode={} acked={} unique={} duplicates={} unique_per_sec={:.0} rate={} refused={}",
        args.label,
        args.scenario.name(),
        args.qos,
        payload,
        pubs,
        subs,
        args.window,
        sent,
        received,
        lost,
        secs,
        received as f64 / secs,
        pct(0.50),
        pct(0.99),
        latencies.last().copied().unwrap_or(0),
        errors.len(),
        args.mode(),
        acked,
        unique,
        duplicates,
        unique as f64 / secs,
        args.rate.map_or("none".to_string(), |r| format!("{r}")),
        shared.refused.load(Ordering::Relaxed),
    )?;
    out.flush()?;
    for e in errors {
        eprintln!("error: {e}");
    }
    Ok(())
}

/// What one publisher does.
struct Publisher {
    index: usize,
    topic: TopicBuf,
    qos: QoS,
    payload: usize,
    subs: u64,
    window: u64,
    budget: u64,
    deadline: StdDuration,
    stall: StdDuration,
    /// Open loop: unacknowledged messages allowed.
    inflight: u64,
}

/// Publishes until the deadline or the budget; returns (sent, written off as lost).
async fn publisher(
    mut conn: Conn,
    job: Publisher,
    shared: Arc<Shared>,
) -> Result<(u64, u64), BoxError> {
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut refused = 0u64;
    let mut written_off = 0u64;
    let mut last_progress = (std::time::Instant::now(), 0u64);
    let index = u32::try_from(job.index).unwrap_or(u32::MAX);
    loop {
        let now = shared.start.elapsed();
        if now >= job.deadline || sent >= job.budget {
            break;
        }
        let done = shared.delivered[job.index].load(Ordering::Relaxed) / job.subs;
        if done != last_progress.1 {
            last_progress = (std::time::Instant::now(), done);
        }
        // A refused message never reaches a subscriber: it holds no room in the window.
        let mut outstanding = sent.saturating_sub(done + written_off + refused);
        if outstanding >= job.window && last_progress.0.elapsed() >= job.stall {
            // Dropped somewhere (QoS 0 under overload): stop waiting for them.
            written_off = sent.saturating_sub(done + refused);
            outstanding = 0;
            last_progress.0 = std::time::Instant::now();
        }
        let mn = conn.now();
        while outstanding < job.window && sent < job.budget {
            let p = make_payload(shared.start, index, sent, job.payload);
            conn.client
                .publish(mn, Message::new(job.topic.clone(), p, job.qos))?;
            sent += 1;
            outstanding += 1;
        }
        conn.tick();
        conn.flush().await?;
        let wait = conn
            .until_timeout()
            .min(job.stall)
            .min(job.deadline.saturating_sub(shared.start.elapsed()));
        tokio::select! {
            r = conn.read() => {
                r?;
                let (ok, no) = count_acks(&mut conn.client);
                acked += ok;
                refused += no;
            }
            () = shared.wake[job.index].notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
    // QoS 1: wait (a little) for the last acknowledgements, or DISCONNECT would drop
    // what is still queued in the client.
    if job.qos != QoS::AtMostOnce {
        let until = std::time::Instant::now() + StdDuration::from_secs(2);
        while acked + refused < sent {
            let Some(left) = until.checked_duration_since(std::time::Instant::now()) else {
                break;
            };
            match tokio::time::timeout(left, conn.read()).await {
                Ok(r) => r?,
                Err(_) => break,
            }
            let (ok, no) = count_acks(&mut conn.client);
            acked += ok;
            refused += no;
            conn.flush().await?;
        }
    }
    shared.sent[job.index].store(sent, Ordering::Relaxed);
    shared.acked[job.index].store(acked, Ordering::Relaxed);
    shared.refused.fetch_add(refused, Ordering::Relaxed);
    let _ = conn
        .client
        .disconnect(conn.now(), mqtt_codec::ReasonCode::Success);
    let _ = conn.flush().await;
    Ok((sent, written_off))
}

/// What one turn of the open-loop publisher did.
enum Step {
    Wrote(usize),
    Read(usize),
    Slept,
}

/// Open loop: publishes without a window (or on `rate`'s schedule, messages per second)
/// until the deadline or the budget; returns (sent, 0).
async fn open_publisher(
    mut conn: Conn,
    job: Publisher,
    shared: Arc<Shared>,
    rate: Option<f64>,
) -> Result<(u64, u64), BoxError> {
    let mut sent = 0u64;
    let mut acked = 0u64;
    let mut refused = 0u64;
    let index = u32::try_from(job.index).unwrap_or(u32::MAX);
    let began = shared.start.elapsed();
    loop {
        let now = shared.start.elapsed();
        if now >= job.deadline || sent >= job.budget {
            break;
        }
        // Messages due by now: all of them, or those whose slot in the schedule has come.
        let due = match rate {
            Some(r) => ((now - began).as_secs_f64() * r) as u64 + 1,
            None => u64::MAX,
        }
        .min(job.budget);
        let mn = conn.now();
        while sent < due
            && conn.output.len() < OPEN_STAGED
            && (job.qos == QoS::AtMostOnce || sent - acked - refused < job.inflight)
        {
            let p = make_payload(shared.start, index, sent, job.payload);
            conn.client
                .publish(mn, Message::new(job.topic.clone(), p, job.qos))?;
            sent += 1;
            conn.stage()?;
        }
        shared.sent[job.index].store(sent, Ordering::Relaxed);
        conn.tick();
        conn.stage()?;
        let mut wait = conn
            .until_timeout()
            .min(job.deadline.saturating_sub(shared.start.elapsed()));
        if let (Some(r), true) = (rate, sent < job.budget) {
            let next = began + StdDuration::from_secs_f64(sent as f64 / r);
            wait = wait.min(next.saturating_sub(shared.start.elapsed()));
        }
        let writing = !conn.output.is_empty();
        // Reads and writes at once: a publisher that only wrote would never see the
        // acknowledgements that let it go on.
        let step = {
            let Conn {
                stream,
                output,
                input,
                read_size,
                ..
            } = &mut conn;
            input.reserve(*read_size);
            let (mut rd, mut wr) = stream.split();
            tokio::select! {
                r = wr.write(output), if writing => Step::Wrote(r?),
                r = rd.read_buf(input) => Step::Read(r?),
                () = tokio::time::sleep(wait), if !writing || rate.is_some() => Step::Slept,
            }
        };
        match step {
            Step::Wrote(n) => {
                conn.output.drain(..n);
            }
            Step::Read(0) => return Err("connection closed by the broker".into()),
            Step::Read(_) => {
                let now = conn.now();
                conn.client.handle_input(now, &mut conn.input)?;
                let (ok, no) = count_acks(&mut conn.client);
                acked += ok;
                refused += no;
            }
            Step::Slept => {}
        }
        // One thread runs every publisher and subscriber: let the others read.
        tokio::task::yield_now().await;
    }
    shared.sent[job.index].store(sent, Ordering::Relaxed);
    conn.flush().await?;
    // QoS 1/2: wait (a little) for the last acknowledgements.
    if job.qos != QoS::AtMostOnce {
        let until = std::time::Instant::now() + StdDuration::from_secs(5);
        while acked + refused < sent {
            let Some(left) = until.checked_duration_since(std::time::Instant::now()) else {
                break;
            };
            match tokio::time::timeout(left, conn.read()).await {
                Ok(r) => r?,
                Err(_) => break,
            }
            let (ok, no) = count_acks(&mut conn.client);
            acked += ok;
            refused += no;
            conn.flush().await?;
        }
    }
    shared.acked[job.index].store(acked, Ordering::Relaxed);
    shared.refused.fetch_add(refused, Ordering::Relaxed);
    let _ = conn
        .client
        .disconnect(conn.now(), mqtt_codec::ReasonCode::Success);
    let _ = conn.flush().await;
    Ok((sent, 0))
}

/// Drains the client's events, counting acknowledged publications: (accepted, refused).
/// A 5.0 broker may refuse a message in its acknowledgement (PUBACK or PUBREC with a
/// reason code of 0x80 or above, such as 0x97 Quota exceeded): that message was not
/// taken, so it is not owed to the subscribers (counted as `refused`, never as `lost`).
fn count_acks(client: &mut Client) -> (u64, u64) {
    let (mut ok, mut refused) = (0, 0);
    while let Some(event) = client.poll_event() {
        if let Event::Acknowledged { reason, .. } = event {
            if reason.is_error() {
                refused += 1;
            } else {
                ok += 1;
            }
        }
    }
    (ok, refused)
}

/// Receives until told to stop; returns the latency of each delivery in microseconds.
async fn subscriber(
    mut conn: Conn,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) -> Result<Received, BoxError> {
    let mut latencies = Vec::with_capacity(1 << 16);
    let mut woken = vec![false; shared.delivered.len()];
    // Per publisher: a bit per sequence number seen.
    let mut seen: Vec<Vec<u64>> = vec![Vec::new(); shared.delivered.len()];
    let mut unique = vec![0u64; shared.delivered.len()];
    let mut duplicates = 0u64;
    loop {
        let wait = conn.until_timeout();
        tokio::select! {
            r = conn.read() => {
                r?;
                let now = shared.start.elapsed().as_nanos() as u64;
                while let Some(event) = conn.client.poll_event() {
                    let Event::Message { message, .. } = event else { continue };
                    let p: &Bytes = &message.payload;
                    if p.len() < 12 {
                        continue;
                    }
                    let sent_at = u64::from_be_bytes(p[..8].try_into()?);
                    let index = u32::from_be_bytes(p[8..12].try_into()?) as usize;
                    latencies.push(u32::try_from(now.saturating_sub(sent_at) / 1000).unwrap_or(u32::MAX));
                    if shared.numbered && p.len() >= 20 && index < seen.len() {
                        let seq = u64::from_be_bytes(p[12..20].try_into()?);
                        // Our own publishers count from 0; anything absurd is not ours.
                        if seq < 1 << 32 {
                            let (word, bit) = ((seq / 64) as usize, seq % 64);
                            let bits = &mut seen[index];
                            if bits.len() <= word {
                                bits.resize(word + 1, 0);
                            }
                            if bits[word] & (1 << bit) != 0 {
                                duplicates += 1;
                            } else {
                                bits[word] |= 1 << bit;
                                unique[index] += 1;
                            }
                        }
                    }
                    if let Some(d) = shared.delivered.get(index) {
                        d.fetch_add(1, Ordering::Relaxed);
                        woken[index] = true;
                    }
                }
                shared.last_delivery.fetch_max(now, Ordering::Relaxed);
                for (i, w) in woken.iter_mut().enumerate() {
                    if std::mem::take(w) {
                        shared.wake[i].notify_one();
                    }
                }
            }
            r = stop.changed() => {
                if r.is_err() || *stop.borrow() {
                    break;
                }
            }
            () = tokio::time::sleep(wait) => {}
        }
        conn.tick();
        conn.flush().await?;
    }
    let _ = conn
        .client
        .disconnect(conn.now(), mqtt_codec::ReasonCode::Success);
    let _ = conn.flush().await;
    Ok(Received {
        latencies,
        unique,
        duplicates,
    })
}

/// Opens the idle connections, reports, holds them, exits.
async fn idle(args: Args) -> Result<(), BoxError> {
    let addr = format!("{}:{}", args.host, args.port);
    let start = std::time::Instant::now();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let (ready_tx, mut ready_rx) = tokio::sync::mpsc::channel::<Result<(), String>>(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    for i in 0..args.connections {
        let config = client_config(
            &args,
            format!("idle-{}-{i}", std::process::id()),
            args.keep_alive,
        );
        let addr = addr.clone();
        let gate = gate.clone();
        let ready_tx = ready_tx.clone();
        let mut stop = stop_rx.clone();
        let subscribe = args.subscribe;
        tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let conn = match Conn::open(&addr, config, start, 256).await {
                Ok(c) if subscribe => c.subscribe_own().await,
                r => r,
            };
            drop(permit);
            let mut conn = match conn {
                Ok(c) => {
                    let _ = ready_tx.send(Ok(())).await;
                    c
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e.to_string())).await;
                    return;
                }
            };
            drop(ready_tx);
            // Keep alive until told to stop.
            loop {
                let wait = conn.until_timeout();
                tokio::select! {
                    r = conn.read() => {
                        if r.is_err() {
                            return;
                        }
                        while conn.client.poll_event().is_some() {}
                    }
                    _ = stop.changed() => break,
                    () = tokio::time::sleep(wait) => {}
                }
                conn.tick();
                if conn.flush().await.is_err() {
                    return;
                }
            }
            let _ = conn
                .client
                .disconnect(conn.now(), mqtt_codec::ReasonCode::Success);
            let _ = conn.flush().await;
        });
    }
    drop(ready_tx);
    let mut ok = 0usize;
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(r) = ready_rx.recv().await {
        match r {
            Ok(()) => ok += 1,
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
        if ok + failed == args.connections {
            break;
        }
    }
    {
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "idle ready broker={} connected={ok} failed={failed} secs={:.3}",
            args.label,
            start.elapsed().as_secs_f64()
        )?;
        out.flush()?;
    }
    if let Some(e) = first_error {
        eprintln!("first connection error: {e}");
    }
    tokio::time::sleep(StdDuration::from_secs_f64(args.hold)).await;
    let _ = stop_tx.send(true);
    tokio::time::sleep(StdDuration::from_millis(200)).await;
    println!("idle done broker={}", args.label);
    Ok(())
}

/// Times CONNECT to CONNACK over `--connections` connections, `--connect-concurrency` at a
/// time; all stay open until the last has connected, then disconnect.
async fn connect_latency(args: Args) -> Result<(), BoxError> {
    let addr = format!("{}:{}", args.host, args.port);
    let start = std::time::Instant::now();
    let gate = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    // (total µs, CONNECT→CONNACK µs, µs since the run began when this connection began).
    type Timing = Result<(u32, u32, u32), String>;
    let (done_tx, mut done_rx) = tokio::sync::mpsc::channel::<Timing>(1024);
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = Vec::with_capacity(args.connections);
    for i in 0..args.connections {
        let config = client_config(
            &args,
            format!("conn-{}-{i}", std::process::id()),
            args.keep_alive,
        );
        let addr = addr.clone();
        let gate = gate.clone();
        let done_tx = done_tx.clone();
        let mut stop = stop_rx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await;
            let t0 = std::time::Instant::now();
            let conn = Conn::open(&addr, config, start, 256).await;
            let us = |d: StdDuration| u32::try_from(d.as_micros()).unwrap_or(u32::MAX);
            drop(permit);
            let mut conn = match conn {
                Ok(c) => {
                    let timing = (
                        us(t0.elapsed()),
                        us(c.tcp_connected.elapsed()),
                        us(t0.duration_since(start)),
                    );
                    let _ = done_tx.send(Ok(timing)).await;
                    c
                }
                Err(e) => {
                    let _ = done_tx.send(Err(e.to_string())).await;
                    return;
                }
            };
            drop(done_tx);
            let _ = stop.changed().await;
            let _ = conn
                .client
                .disconnect(conn.now(), mqtt_codec::ReasonCode::Success);
            let _ = conn.flush().await;
        }));
    }
    drop(done_tx);
    let mut total = Vec::with_capacity(args.connections);
    let mut timeline = Vec::with_capacity(args.connections);
    let mut mqtt = Vec::with_capacity(args.connections);
    let mut failed = 0usize;
    let mut first_error = None;
    while let Some(r) = done_rx.recv().await {
        match r {
            Ok((t, m, began)) => {
                total.push(t);
                mqtt.push(m);
                timeline.push((t, m, began));
            }
            Err(e) => {
                failed += 1;
                first_error.get_or_insert(e);
            }
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let _ = stop_tx.send(true);
    for t in tasks {
        let _ = t.await;
    }
    total.sort_unstable();
    mqtt.sort_unstable();
    let pct = |v: &[u32], q: f64| -> u32 {
        if v.is_empty() {
            return 0;
        }
        let i = ((v.len() as f64 * q).ceil() as usize).clamp(1, v.len()) - 1;
        v[i]
    };
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "connect broker={} connections={} ok={} failed={failed} concurrency={} secs={secs:.3} \
         p50_us={} p99_us={} max_us={} mqtt_p50_us={} mqtt_p99_us={} mqtt_max_us={}",
        args.label,
        args.connections,
        total.len(),
        args.connect_concurrency,
        pct(&total, 0.5),
        pct(&total, 0.99),
        total.last().copied().unwrap_or(0),
        pct(&mqtt, 0.5),
        pct(&mqtt, 0.99),
        mqtt.last().copied().unwrap_or(0),
    )?;
    out.flush()?;
    if let Some(e) = first_error {
        eprintln!("first connection error: {e}");
    }
    if args.slowest > 0 {
        // When the slow ones began tells a stall (all at once) from a steady tail.
        timeline.sort_unstable_by_key(|t| std::cmp::Reverse(t.0));
        for (t, m, began) in timeline.iter().take(args.slowest) {
            eprintln!(
                "slow connect broker={} began_ms={:.1} total_us={t} mqtt_us={m}",
                args.label,
                f64::from(*began) / 1000.0
            );
        }
    }
    Ok(())
}
