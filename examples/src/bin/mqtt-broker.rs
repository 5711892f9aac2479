//! An MQTT 3.1/3.1.1/5.0 broker over TCP, TLS and WebSocket: a thin adapter (a mio event
//! loop, and tokio for TLS and WebSocket) around the sans-IO [`mqtt_broker::Broker`].
//!
//! ```text
//! cargo run -p mqtt-examples --bin mqtt-broker -- --bind 127.0.0.1:1883 --ws-bind 127.0.0.1:8080
//! ```
//!
//! With TLS (`--tls-bind`, and `--wss-bind` for WebSocket over TLS; both take the PEM
//! certificate chain and key from `--cert`/`--key`), a password file and an ACL file:
//!
//! ```text
//! mqtt-broker hash-password alice >> passwd      # reads the password from stdin
//! mqtt-broker --tls-bind 0.0.0.0:8883 --cert server.pem --key server.key \
//!     --password-file passwd --acl-file acl
//! ```
//!
//! The password file holds `user:HASH` lines: Argon2 PHC strings as printed by
//! `hash-password`, or mosquitto's `$7$` (so a `mosquitto_passwd` file works as is). The ACL
//! file is in mosquitto's `acl_file` format. See `examples/src/access.rs` for both.
//!
//! `-c FILE` reads the same settings from a file in mosquitto's `mosquitto.conf` syntax
//! (listeners, access, limits, persistence, and bridges to other brokers from
//! `connection` sections); flags given on the command line override it, and an option it
//! does not support is an error naming the line. See `examples/src/conf.rs`,
//! `docs/config.md` and `docs/bridges.md`.
//!
//! The adapter only moves bytes and time; every protocol decision is the core's. It has
//! two halves:
//!
//! - Plain TCP, the case with many connections (a push service keeps one idle connection
//!   per device), is served by a [`mio`] event loop on the main thread, which also owns the
//!   `Broker` (it is `&mut self` and single-threaded by design). A connection there is an
//!   entry in a table: the socket, the core's id, a few flags, and only while it has any,
//!   the output the kernel has not taken and the input short of a whole packet. Everything
//!   is read into one scratch buffer. A task per connection would cost more than all that
//!   (tokio keeps a task and a socket registration per connection, 512 bytes between them,
//!   before the connection holds anything); this way an idle connection costs the core's
//!   state and a few dozen bytes.
//! - TLS and WebSocket (`--tls-bind`, `--ws-bind`, `--wss-bind`) are mqtt-tokio's server
//!   side ([`mqtt_tokio::server`]): one tokio task per connection on a runtime on a second
//!   thread, where rustls and tungstenite fit as they are. Those tasks send what arrives
//!   to the event loop through a [`Hub`] (waking the loop), and the hub leaves their
//!   output in the connection's outbox (waking the task). `mqtt_tokio::server::Server`
//!   serves plain TCP the same way, at 4.3 times the memory per idle connection of this
//!   loop (1,668 against 387 bytes with 10,000 connections, measured by
//!   `examples/bench/server_memory.sh`), which is why plain TCP stays here.
//!
//! # Durability
//!
//! What the broker acknowledged survives a crash: sessions, subscriptions, retained
//! messages and the QoS 1/2 messages queued for persistent sessions are kept in a redb
//! file, `broker.redb` in `--data-dir` (default `mqtt-broker-data` in the working
//! directory), and restored at start. `--durability always` (the default) sends no
//! acknowledgement before what it acknowledges is on disk. Commits (one redb transaction,
//! two `fsync`s, each) are written by a thread of their own, one at a time, while the loop
//! goes on reading: everything the loop took in meanwhile goes into the next one (group
//! commit). `--durability 100ms` commits at most 100 ms apart and does not hold
//! acknowledgements (a crash loses up to that much); `--in-memory` keeps nothing. A store
//! that cannot be used (damaged, written by a newer version, in use by another broker) is
//! reported on stderr and the broker exits with status 1 without serving anything; so
//! does a store error while serving. SIGTERM, like Ctrl-C, commits what is left and exits.
//!
//! A client that does not read fast enough to keep its output below `--write-queue`
//! chunks is closed rather than buffered for without bound.
//!
//! On startup it prints where its data is (or `store in memory`), then one line per
//! listener with the address actually bound (so `--bind 127.0.0.1:0` can be used and the
//! port learnt from stdout):
//!
//! ```text
//! store /home/me/mqtt-broker-data/broker.redb (0 entries restored, durability always)
//! listening on tcp 127.0.0.1:1883
//! listening on ws 127.0.0.1:8080
//! listening on tls 127.0.0.1:8883
//! listening on wss 127.0.0.1:8443
//! ```
//!
//! Logs go to stderr; `RUST_LOG` filters them (default `info`).

#[path = "../access.rs"]
mod access;
#[path = "../conf.rs"]
mod conf;

use std::collections::HashMap;
use std::io::{ErrorKind, IsTerminal, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration as StdDuration, Instant as StdInstant};

use bytes::{Buf, Bytes, BytesMut};
use clap::parser::ValueSource;
use clap::{CommandFactory, FromArgMatches, Subcommand};
use mio::net::TcpStream as MioStream;
use mio::{Events, Interest, Token};
use mqtt_broker::{
    Batch, Broker, BrokerConfig, BrokerEvent, CloseReason, ConnectionId, Error as BrokerError,
    Hooks, Persistence, QoS0Overflow, RequestId, RequestKind, StoreOp, Verdict,
};
use mqtt_codec::{QoS, ReasonCode};
use mqtt_state::{ConnectRequest, Duration, Instant, ServerConfig};
use mqtt_tokio::cluster::{Cluster, ClusterOptions};
use mqtt_tokio::server::{Hub, HubConfig, Transport};
use mqtt_tokio::store::{RedbStore, Store};
use mqtt_topic::{TopicFilter, TopicName};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tracing::{debug, info, warn};

use access::{Access, Acl, Passwords};

/// Command line options.
#[derive(Debug, clap::Parser)]
#[command(
    name = "mqtt-broker",
    about = "An MQTT broker over the sans-IO mqtt-state core"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// A configuration file in mosquitto's `mosquitto.conf` syntax (the options
    /// `docs/config.md` lists; any other is an error). Flags given on the command line
    /// override it.
    #[arg(short = 'c', long = "config", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Join a cluster of brokers over these NATS servers (comma-separated
    /// `nats://host:port`): messages, retained messages, shared subscriptions and session
    /// takeovers span every node (see docs/cluster.md).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    cluster: Vec<String>,
    /// This node's name in the cluster, unique among its nodes; default HOSTNAME-PID.
    #[arg(long, value_name = "NAME", requires = "cluster")]
    node: Option<String>,
    /// JetStream replicas of the cluster's retained messages and session owners (at most
    /// the number of NATS servers).
    #[arg(long, default_value_t = 1, requires = "cluster")]
    cluster_replicas: usize,
    /// Prefix of the cluster's NATS subjects, stream and bucket: clusters sharing NATS
    /// servers use different ones.
    #[arg(long, default_value = "mqtt", requires = "cluster")]
    cluster_prefix: String,
    /// Bridges from the configuration file's `connection` sections, checked.
    #[arg(skip)]
    bridges: Vec<(mqtt_broker::BridgeConfig, mqtt_tokio::server::Remote)>,
    /// TCP listen address.
    #[arg(long, default_value = "127.0.0.1:1883", conflicts_with = "no_tcp")]
    bind: SocketAddr,
    /// Do not listen for plain TCP connections (what a configuration file whose listeners
    /// are all TLS or WebSocket asks for).
    #[arg(long)]
    no_tcp: bool,
    /// WebSocket listen address (path `/mqtt`, subprotocol `mqtt`).
    #[arg(long, default_value = "127.0.0.1:8080", conflicts_with = "no_ws")]
    ws_bind: SocketAddr,
    /// Do not listen for WebSocket connections.
    #[arg(long)]
    no_ws: bool,
    /// MQTT over TLS listen address (off by default; needs `--cert` and `--key`).
    #[arg(long, requires_all = ["cert", "key"])]
    tls_bind: Option<SocketAddr>,
    /// WebSocket over TLS listen address (off by default; needs `--cert` and `--key`).
    #[arg(long, requires_all = ["cert", "key"])]
    wss_bind: Option<SocketAddr>,
    /// The server's certificate chain, PEM, leaf first.
    #[arg(long)]
    cert: Option<PathBuf>,
    /// The server's private key, PEM (PKCS#8, PKCS#1 or SEC1).
    #[arg(long)]
    key: Option<PathBuf>,
    /// `user:HASH` lines (see `hash-password`); with it, clients must log in with a listed
    /// user name and its password.
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// With `--password-file`, also let in clients that send no user name.
    #[arg(long)]
    allow_anonymous: bool,
    /// ACLs in mosquitto's `acl_file` format; with it, what the file does not allow is
    /// refused.
    #[arg(long)]
    acl_file: Option<PathBuf>,
    /// Connections beyond this are refused with CONNACK Server busy.
    #[arg(long, default_value_t = 100_000)]
    max_connections: usize,
    /// Largest packet accepted from a client, in bytes.
    #[arg(long, default_value_t = 1 << 20)]
    max_packet_size: u32,
    /// QoS 1/2 messages in flight to each client.
    #[arg(long, default_value_t = 64)]
    max_inflight: u16,
    /// Messages queued per client: for a disconnected persistent session (beyond this,
    /// messages for it are dropped, counted in `$SYS/broker/messages/dropped`), and for a
    /// connected client beyond its in-flight window (at this, the publishers feeding it
    /// stop being read until it catches up: nothing is dropped).
    #[arg(long, default_value_t = 1000)]
    max_queued: usize,
    /// QoS 0 messages for a connected client whose queue is full: `push-back` pauses the
    /// publishers like QoS 1/2, `drop` drops them (counted).
    #[arg(long, value_enum, default_value_t = Qos0Overflow::PushBack)]
    qos0_overflow: Qos0Overflow,
    /// Longest keep alive a client may use, in seconds (mosquitto's `max_keepalive`); 0: no
    /// maximum. A 5.0 client asking for more (or for none) is told this one in CONNACK
    /// (Server Keep Alive); a 3.1/3.1.1 client asking for more is refused, as mosquitto
    /// 2.0.12 and later do.
    #[arg(long, default_value_t = 0)]
    max_keep_alive: u16,
    /// Response Information sent in CONNACK to 5.0 clients that ask for it (Request Response
    /// Information), for example a topic prefix for their response topics.
    #[arg(long)]
    response_information: Option<String>,
    /// Seconds a new connection has to complete its CONNECT.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    /// Seconds between `$SYS/broker/...` statistics; 0 turns them off.
    #[arg(long, default_value_t = 10)]
    sys_interval: u64,
    /// Seconds a subscriber may keep publishers paused (its queue full) without taking any
    /// of its output before it is disconnected as not reading; 0: never.
    #[arg(long, default_value_t = 5)]
    stall_timeout: u64,
    /// Chunks of output buffered per connection before a slow reader is disconnected.
    #[arg(long, default_value_t = 4096)]
    write_queue: usize,
    /// Where sessions, subscriptions, retained and queued messages are kept across
    /// restarts: the file `broker.redb` in this directory (created if missing).
    #[arg(long, default_value = "mqtt-broker-data")]
    data_dir: PathBuf,
    /// Keep nothing on disk: a restart loses every session and retained message.
    #[arg(long, conflicts_with = "data_dir")]
    in_memory: bool,
    /// `always`: no acknowledgement goes out before what it acknowledges is on disk (one
    /// commit at a time, for everything changed since the last). `<N>ms` (say
    /// `100ms`): a commit at most N ms apart, acknowledgements not held; a crash loses what
    /// was acknowledged in the last N ms.
    #[arg(long, default_value = "always", value_parser = parse_durability)]
    durability: Durability,
    /// Not a flag: a configuration file said `allow_anonymous false` (or left it at
    /// mosquitto 2's default while declaring listeners) and named no password file, which
    /// in mosquitto 2 lets no client in. So here: every CONNECT is refused.
    #[arg(skip)]
    refuse_everyone: bool,
}

/// `--durability`.
#[derive(Debug, Clone, Copy)]
enum Durability {
    Always,
    Every(StdDuration),
}

impl std::fmt::Display for Durability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Durability::Always => f.write_str("always"),
            Durability::Every(d) => write!(f, "{}ms", d.as_millis()),
        }
    }
}

fn parse_durability(s: &str) -> Result<Durability, String> {
    if s == "always" {
        return Ok(Durability::Always);
    }
    s.strip_suffix("ms")
        .and_then(|n| n.parse::<u64>().ok())
        .filter(|&n| n > 0)
        .map(|n| Durability::Every(StdDuration::from_millis(n)))
        .ok_or_else(|| format!("`{s}`: expected `always` or a number of milliseconds like `100ms`"))
}

/// Reports a store that cannot be used and exits with status 1: nothing is served from a
/// store that could not be read, or once what the broker promised can no longer be kept.
fn store_failed(e: &mqtt_tokio::Error) -> ! {
    eprintln!("mqtt-broker: {e}");
    std::process::exit(1)
}

/// `--qos0-overflow`.
#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Qos0Overflow {
    PushBack,
    Drop,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Prints a `USER:HASH` line for `--password-file` (Argon2id) and exits. The password
    /// is the first line of stdin unless `--password` is given.
    HashPassword {
        /// The user name.
        user: String,
        /// The password (visible to other local users in the process list; prefer stdin).
        #[arg(long)]
        password: Option<String>,
    },
}

/// The most a connection reads at once.
const MAX_READ: usize = 64 * 1024;

/// How the password checker thread, the connection tasks and Ctrl-C reach the event loop.
struct Wake {
    waker: mio::Waker,
    /// Ctrl-C was pressed, or SIGTERM came.
    shutdown: AtomicBool,
}

fn main() -> std::io::Result<()> {
    let matches = Args::command().get_matches();
    let mut args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    if let Some(Command::HashPassword { user, password }) = &args.command {
        return hash_password(user, password.clone());
    }
    if let Some(path) = args.config.clone() {
        let on_command_line = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        match load_config(&path)
            .and_then(|config| apply_config(&mut args, &on_command_line, config, &path))
        {
            Ok(notes) => notes
                .iter()
                .for_each(|n| eprintln!("mqtt-broker: warning: {n}")),
            Err(e) => {
                eprintln!("mqtt-broker: {e}");
                std::process::exit(1);
            }
        }
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    run(args)
}

/// Reads and parses `-c FILE`.
fn load_config(path: &Path) -> Result<conf::Config, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    conf::parse(&text, path).map_err(|e| e.to_string())
}

/// A `connection` section as the core's bridge and how the hub reaches its remote; what
/// it cannot honour is an error, never dropped.
fn bridge_config(
    b: &conf::Bridge,
) -> Result<(mqtt_broker::BridgeConfig, mqtt_tokio::server::Remote), String> {
    use mqtt_broker::{BridgeConfig, BridgeTopic, Direction};
    use mqtt_codec::ProtocolVersion;
    let name = &b.name;
    let address = match b.addresses.as_slice() {
        [] => return Err(format!("bridge '{name}' has no address")),
        [a] => {
            if a.host.contains(':') && !a.host.starts_with('[') {
                format!("[{}]:{}", a.host, a.port)
            } else {
                format!("{}:{}", a.host, a.port)
            }
        }
        _ => {
            return Err(format!(
                "bridge '{name}': one address only (fallback addresses are not supported)"
            ))
        }
    };
    let version = match b.protocol_version {
        conf::BridgeProtocol::V31 => ProtocolVersion::V3_1,
        conf::BridgeProtocol::V311 => ProtocolVersion::V3_1_1,
        conf::BridgeProtocol::V50 => ProtocolVersion::V5,
    };
    let mut c = BridgeConfig::new(name.clone(), address, version);
    // mosquitto's default client identifier: HOSTNAME.NAME.
    let client_id = b.remote_clientid.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "localhost".into());
        format!("{host}.{name}")
    });
    c.remote.client_id = client_id.into();
    c.remote.keep_alive = b.keepalive_interval;
    c.remote.bridge = b.try_private;
    c.remote.clean_start = b.clean_session;
    if !b.clean_session {
        // 5.0: the remote keeps the session until the bridge is back.
        c.remote.session_expiry_interval = u32::MAX;
    }
    c.remote.username = b.remote_username.clone().map(Into::into);
    c.remote.password = b
        .remote_password
        .clone()
        .map(|p| Bytes::from(p.into_bytes()));
    c.notifications = b.notifications;
    for t in &b.topics {
        let direction = match t.direction {
            conf::Direction::In => Direction::In,
            conf::Direction::Out => Direction::Out,
            conf::Direction::Both => Direction::Both,
        };
        c.topics.push(
            BridgeTopic::new(t.pattern.clone().unwrap_or_default(), direction, t.qos)
                .with_prefixes(
                    t.local_prefix.clone().unwrap_or_default(),
                    t.remote_prefix.clone().unwrap_or_default(),
                ),
        );
    }
    let mut remote = mqtt_tokio::server::Remote::default();
    if b.insecure {
        return Err(format!(
            "bridge '{name}': bridge_insecure true is not supported (the remote's name is always checked)"
        ));
    }
    if b.cafile.is_some() || b.certfile.is_some() {
        let read = |p: &PathBuf| {
            std::fs::read(p).map_err(|e| format!("bridge '{name}': {}: {e}", p.display()))
        };
        let ca = b.cafile.as_ref().map(read).transpose()?;
        let client = match (&b.certfile, &b.keyfile) {
            (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
            (None, None) => None,
            _ => {
                return Err(format!(
                    "bridge '{name}': bridge_certfile and bridge_keyfile go together"
                ))
            }
        };
        let client = client.as_ref().map(|(c, k)| (c.as_slice(), k.as_slice()));
        remote.tls = Some(
            mqtt_tokio::tls_config(ca.as_deref(), client)
                .map_err(|e| format!("bridge '{name}': {e}"))?,
        );
    }
    // Checked here, so that a bad rule is an error at start, not at the first dial.
    let mut probe = mqtt_broker::Broker::new(mqtt_broker::BrokerConfig::default(), Instant::ZERO);
    probe
        .add_bridge(Instant::ZERO, c.clone())
        .map_err(|e| format!("bridge '{name}': {e}"))?;
    Ok((c, remote))
}

/// Merges a configuration file into `args` under the flags given on the command line
/// (`given(id)`: the flag with that clap id was), and returns warnings for stderr.
///
/// With listeners in the file, only those listen: a kind of listener the file does not
/// declare is turned off (no WebSocket unless declared), as in mosquitto, unless its flag
/// is on the command line. A file that declares none leaves the listeners to the flags.
fn apply_config(
    args: &mut Args,
    given: &dyn Fn(&str) -> bool,
    config: conf::Config,
    path: &Path,
) -> Result<Vec<String>, String> {
    use conf::ListenerKind;
    let file = path.display();
    for b in &config.bridges {
        let bridge = bridge_config(b).map_err(|e| format!("{file}:{}: {e}", b.line))?;
        args.bridges.push(bridge);
    }
    let mut notes = Vec::new();
    let addr = |kind| -> Result<Option<SocketAddr>, String> {
        config
            .listener(kind)
            .map(|l| {
                l.socket_addr()
                    .map_err(|e| format!("{file}:{}: {e}", l.line))
            })
            .transpose()
    };
    if !config.listeners.is_empty() {
        if !given("bind") {
            match addr(ListenerKind::Tcp)? {
                Some(a) => args.bind = a,
                None => args.no_tcp = true,
            }
        }
        if !given("ws_bind") && !given("no_ws") {
            match addr(ListenerKind::Ws)? {
                Some(a) => args.ws_bind = a,
                None => args.no_ws = true,
            }
        }
        if !given("tls_bind") {
            args.tls_bind = addr(ListenerKind::Tls)?;
        }
        if !given("wss_bind") {
            args.wss_bind = addr(ListenerKind::Wss)?;
        }
        // `conf::parse` saw to it that the TLS listeners share one certificate and key.
        let tls = config
            .listener(ListenerKind::Tls)
            .or(config.listener(ListenerKind::Wss));
        if let Some(l) = tls {
            if !given("cert") {
                args.cert.clone_from(&l.certfile);
            }
            if !given("key") {
                args.key.clone_from(&l.keyfile);
            }
        }
        if (args.tls_bind.is_some() || args.wss_bind.is_some())
            && (args.cert.is_none() || args.key.is_none())
        {
            return Err(format!(
                "{file}: a TLS listener needs a certificate and key (certfile/keyfile, or \
                 --cert/--key)"
            ));
        }
    }
    if !given("password_file") && config.password_file.is_some() {
        args.password_file = config.password_file;
    }
    if !given("acl_file") && config.acl_file.is_some() {
        args.acl_file = config.acl_file;
    }
    // mosquitto 2: `allow_anonymous` is false unless set, when the file declares listeners.
    let allow_anonymous = config
        .allow_anonymous
        .or((!config.listeners.is_empty()).then_some(false));
    match allow_anonymous {
        _ if given("allow_anonymous") => {}
        Some(true) => args.allow_anonymous = true,
        Some(false) => {
            args.allow_anonymous = false;
            if args.password_file.is_none() {
                args.refuse_everyone = true;
                notes.push(format!(
                    "{file}: allow_anonymous is false{} and there is no password_file: every \
                     client is refused, as mosquitto 2 does",
                    if config.allow_anonymous.is_none() {
                        " (mosquitto 2's default with listeners)"
                    } else {
                        ""
                    }
                ));
            }
        }
        None => {}
    }
    if let (false, Some(v)) = (given("max_keep_alive"), config.max_keepalive) {
        args.max_keep_alive = v;
    }
    if let (false, Some(v)) = (given("max_queued"), config.max_queued_messages) {
        args.max_queued = v;
    }
    if let (false, Some(v)) = (given("max_connections"), config.max_connections) {
        args.max_connections = v;
    }
    if let (false, Some(v)) = (given("max_packet_size"), config.max_packet_size) {
        args.max_packet_size = v;
    }
    if let (false, Some(v)) = (given("max_inflight"), config.max_inflight_messages) {
        args.max_inflight = v;
    }
    let storage_given = given("in_memory") || given("data_dir");
    match config.persistence {
        Some(false) if !storage_given => args.in_memory = true,
        Some(true) if !given("in_memory") => args.in_memory = false,
        _ => {}
    }
    if let (false, Some(dir)) = (given("data_dir"), config.persistence_location) {
        args.data_dir = dir;
    }
    Ok(notes)
}

/// The `hash-password` subcommand.
fn hash_password(user: &str, password: Option<String>) -> std::io::Result<()> {
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    if user.is_empty() || user.contains(':') {
        return Err(invalid(
            "the user name must be non-empty, without ':'".into(),
        ));
    }
    let password = match password {
        Some(p) => p,
        None => {
            let mut line = String::new();
            std::io::stdin().read_line(&mut line)?;
            line.trim_end_matches(['\r', '\n']).to_string()
        }
    };
    let hash = access::hash_password(password.as_bytes()).map_err(invalid)?;
    println!("{user}:{hash}");
    Ok(())
}

/// Grows this process's file descriptor table to its open-file limit (at most 65,536)
/// while the process has one thread.
///
/// Linux grows the table by doubling as descriptors are opened, and while more than one
/// thread shares it each growth waits for an RCU grace period: `accept` of the 256th and
/// 512th connection took 10-15 ms each (strace), every connection in progress waited, and
/// the connect p99 read about twice mosquitto's, which has one thread. The table never
/// shrinks, so growing it once here, before the tokio thread starts, takes those waits out
/// of serving. Safe std only: duplicates of stderr, opened and closed again.
fn pregrow_fd_table() {
    let limit = std::fs::read_to_string("/proc/self/limits")
        .ok()
        .and_then(|l| {
            l.lines()
                .find(|x| x.starts_with("Max open files"))
                .and_then(|x| x.split_whitespace().nth(3))
                .and_then(|n| n.parse::<usize>().ok())
        })
        .unwrap_or(1024)
        .min(1 << 16);
    let Ok(fd) = std::os::fd::AsFd::as_fd(&std::io::stderr()).try_clone_to_owned() else {
        return;
    };
    let mut held = Vec::with_capacity(limit);
    while held.len() + 8 < limit {
        match fd.try_clone() {
            Ok(f) => held.push(f),
            // The limit, or stderr closed: as far as it goes.
            Err(_) => break,
        }
    }
}

/// The TLS acceptor for `--cert`/`--key`.
fn tls_acceptor(cert: &Path, key: &Path) -> std::io::Result<TlsAcceptor> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| std::io::Error::new(e.kind(), format!("{}: {e}", p.display())))
    };
    let (cert_pem, key_pem) = (read(cert)?, read(key)?);
    mqtt_tokio::server::tls_acceptor(&cert_pem, &key_pem, None).map_err(|e| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{} / {}: {e}", cert.display(), key.display()),
        )
    })
}

fn run(mut args: Args) -> std::io::Result<()> {
    // The cluster node's name: given, or HOSTNAME-PID.
    let node = args.node.clone().unwrap_or_else(|| {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_owned())
            .unwrap_or_else(|_| "node".into());
        format!("{host}-{}", std::process::id())
    });
    if args.no_tcp && args.no_ws && args.tls_bind.is_none() && args.wss_bind.is_none() {
        eprintln!("mqtt-broker: no listener (--no-tcp and --no-ws, no --tls-bind or --wss-bind)");
        std::process::exit(1);
    }
    // First, while this is the only thread.
    pregrow_fd_table();
    let access = Access {
        passwords: match &args.password_file {
            Some(p) => Some(access::load(p, Passwords::parse)?),
            // No user in the file and no anonymous access: nobody gets in.
            None if args.refuse_everyone => Some(Passwords::default()),
            None => None,
        },
        allow_anonymous: args.allow_anonymous,
        acl: match &args.acl_file {
            Some(p) => Some(access::load(p, Acl::parse)?),
            None => None,
        },
    };
    let tls = match (&args.cert, &args.key) {
        (Some(cert), Some(key)) if args.tls_bind.is_some() || args.wss_bind.is_some() => {
            Some(tls_acceptor(cert, key)?)
        }
        _ => None,
    };
    let config = BrokerConfig {
        server: ServerConfig {
            maximum_packet_size: args.max_packet_size,
            max_inflight: args.max_inflight,
            max_queued: args.max_queued,
            connect_timeout: Duration::from_secs(args.connect_timeout),
            max_keep_alive: (args.max_keep_alive > 0).then_some(args.max_keep_alive),
            response_information: args
                .response_information
                .as_deref()
                .map(mqtt_state::Utf8Bytes::copy_of),
            manual_acks: true,
            ..ServerConfig::default()
        },
        max_connections: args.max_connections,
        max_offline_queue: args.max_queued,
        sys_interval: (args.sys_interval > 0).then(|| Duration::from_secs(args.sys_interval)),
        stall_timeout: (args.stall_timeout > 0).then(|| Duration::from_secs(args.stall_timeout)),
        qos0_overflow: match args.qos0_overflow {
            Qos0Overflow::PushBack => QoS0Overflow::PushBack,
            Qos0Overflow::Drop => QoS0Overflow::Drop,
        },
        persistence: match (args.in_memory, args.durability) {
            // Clustered, sessions are stored in NATS all the same: any node resumes them.
            (true, _) if !args.cluster.is_empty() => Persistence::Sync,
            (true, _) => Persistence::Off,
            (false, Durability::Always) => Persistence::Sync,
            (false, Durability::Every(_)) => Persistence::Eventual,
        },
        cluster: (!args.cluster.is_empty())
            .then(|| mqtt_broker::ClusterConfig { node: node.clone() }),
        ..BrokerConfig::default()
    };

    // The store, and the state restored from it, before anything listens: a store that
    // cannot be read ends the process before a client could see a partial state.
    let access = Arc::new(access);
    let policy = Policy {
        access: access.clone(),
    };
    let mut broker = Broker::with_hooks(config, policy, Instant::ZERO);
    let mut resume_at = Instant::ZERO;
    let store = if args.in_memory {
        None
    } else {
        if let Err(e) = std::fs::create_dir_all(&args.data_dir) {
            eprintln!(
                "mqtt-broker: cannot create {}: {e}",
                args.data_dir.display()
            );
            std::process::exit(1);
        }
        let dir = std::fs::canonicalize(&args.data_dir).unwrap_or_else(|_| args.data_dir.clone());
        let mut store = RedbStore::open(&dir).unwrap_or_else(|e| store_failed(&e));
        let loaded = mqtt_tokio::store::restore(&mut broker, &mut store)
            .unwrap_or_else(|e| store_failed(&e));
        resume_at = loaded.resume_at;
        info!(entries = loaded.entries, path = %store.path().display(), "restored");
        Some((store, loaded.entries))
    };

    let poll = mio::Poll::new()?;
    let mut tcp = match args.no_tcp {
        true => None,
        false => Some(mio::net::TcpListener::bind(args.bind)?),
    };
    if let Some(tcp) = &mut tcp {
        poll.registry()
            .register(tcp, LISTENER, Interest::READABLE)?;
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Bridges dial from the event loop onto the tokio side.
    let runtime = rt.handle().clone();
    let bind = |addr| rt.block_on(TcpListener::bind(addr));
    let mut listeners = Vec::new();
    if !args.no_ws {
        listeners.push((bind(args.ws_bind)?, Transport::Ws));
    }
    if let (Some(addr), Some(tls)) = (args.tls_bind, &tls) {
        listeners.push((bind(addr)?, Transport::Tls(tls.clone())));
    }
    if let (Some(addr), Some(tls)) = (args.wss_bind, &tls) {
        listeners.push((bind(addr)?, Transport::Wss(tls.clone())));
    }
    {
        let mut out = std::io::stdout().lock();
        match &store {
            Some((store, entries)) => writeln!(
                out,
                "store {} ({entries} entries restored, durability {})",
                store.path().display(),
                args.durability
            )?,
            None => writeln!(out, "store in memory (--in-memory)")?,
        }
        if let Some(tcp) = &tcp {
            writeln!(out, "listening on tcp {}", tcp.local_addr()?)?;
        }
        for (listener, transport) in &listeners {
            let name = transport.name();
            writeln!(out, "listening on {name} {}", listener.local_addr()?)?;
        }
        for (bridge, _) in &args.bridges {
            writeln!(out, "bridge {} to {}", bridge.name, bridge.address)?;
        }
        out.flush()?;
    }

    let wake = Arc::new(Wake {
        waker: mio::Waker::new(poll.registry(), WAKER)?,
        shutdown: AtomicBool::new(false),
    });
    // The cluster's NATS tasks run on the tokio side and wake the event loop.
    let cluster = if args.cluster.is_empty() {
        None
    } else {
        let wake = wake.clone();
        let options = ClusterOptions::new(args.cluster.clone(), node.clone())
            .replicas(args.cluster_replicas)
            .prefix(args.cluster_prefix.clone());
        match rt.block_on(Cluster::connect(options, move || drop(wake.waker.wake()))) {
            Ok(c) => {
                let mut out = std::io::stdout().lock();
                writeln!(out, "cluster node {node} over {}", args.cluster.join(","))?;
                out.flush()?;
                Some(c)
            }
            Err(e) => {
                eprintln!("mqtt-broker: cluster: {e}");
                std::process::exit(1);
            }
        }
    };
    // TLS and WebSocket connections are tokio tasks (mqtt-tokio's server side), which the
    // event loop serves through a hub. `open`, not `open_with`: see `EventLoop::accept`.
    let (mut hub, acceptor) = {
        let wake = wake.clone();
        let mut config = HubConfig::default();
        config.write_queue = args.write_queue.max(1);
        config.conn_info = false;
        Hub::new(move || drop(wake.waker.wake()), config)
    };
    // Added after the restore: a bridge's local session comes back with it.
    for (bridge, remote) in std::mem::take(&mut args.bridges) {
        let id = broker
            .add_bridge(resume_at, bridge)
            .map_err(std::io::Error::other)?;
        hub.remote(id, remote);
    }
    // The tokio side: TLS and WebSocket connections, and Ctrl-C.
    {
        let wake = wake.clone();
        std::thread::Builder::new()
            .name("tls-ws".into())
            .spawn(move || {
                rt.block_on(async move {
                    for (listener, transport) in listeners {
                        tokio::spawn(acceptor.clone().listen(listener, transport));
                    }
                    // Ctrl-C (SIGINT) or SIGTERM: what is not committed yet goes to the
                    // store before the process ends.
                    let term = async {
                        use tokio::signal::unix::{signal, SignalKind};
                        match signal(SignalKind::terminate()) {
                            Ok(mut s) => drop(s.recv().await),
                            Err(e) => {
                                warn!("cannot catch SIGTERM: {e}");
                                std::future::pending::<()>().await;
                            }
                        }
                    };
                    tokio::select! {
                        r = tokio::signal::ctrl_c() => {
                            if let Err(e) = r {
                                warn!("cannot catch Ctrl-C: {e}");
                                std::future::pending::<()>().await;
                            }
                        }
                        _ = term => {}
                    }
                    wake.shutdown.store(true, Ordering::Release);
                    let _ = wake.waker.wake();
                    // Serve on until the process ends.
                    std::future::pending::<()>().await;
                })
            })?;
    }

    // Password hashes (Argon2: tens of ms each) are checked on their own thread, so that a
    // burst of logins does not stall every connection on the event loop.
    let (checks, check_rx) = std::sync::mpsc::channel::<Check>();
    let (checked_tx, checked) = std::sync::mpsc::channel();
    {
        let access = access.clone();
        let wake = wake.clone();
        std::thread::Builder::new()
            .name("password-check".into())
            .spawn(move || {
                for (id, user, password) in check_rx {
                    let result = access.check_password(user.as_deref(), password.as_deref());
                    if checked_tx.send((id, result)).is_err() {
                        return;
                    }
                    let _ = wake.waker.wake();
                }
            })?;
    }

    // Commits (an fsync or two each) run on a thread of their own, so that the event loop
    // goes on reading while one is on its way to the disk; what it reads meanwhile is the
    // next commit (group commit).
    // Clustered, the session tables go to NATS ([`Cluster::store`]), in memory too.
    let store: Option<Box<dyn Store>> = match (store, &cluster) {
        (Some((store, _)), Some(c)) => Some(Box::new(c.store(store))),
        (None, Some(c)) => Some(Box::new(c.store(mqtt_tokio::store::MemoryStore::new()))),
        (Some((store, _)), None) => Some(Box::new(store)),
        (None, None) => None,
    };
    let durable = match store {
        None => None,
        Some(mut store) => {
            let (to_committer, commits) = std::sync::mpsc::channel::<(Vec<StoreOp>, Instant)>();
            let (committed_tx, committed) = std::sync::mpsc::channel();
            let wake = wake.clone();
            let thread = std::thread::Builder::new()
                .name("store".into())
                .spawn(move || {
                    for (ops, now) in commits {
                        let result = store.commit(&ops, now);
                        // Emptied by the loop, which allocated what it holds: freeing
                        // here would cost this thread, whose work limits a durable
                        // broker's throughput, and contend with the loop's allocator.
                        if committed_tx.send((result, ops)).is_err() {
                            return;
                        }
                        let _ = wake.waker.wake();
                    }
                })?;
            Some(Durable {
                thread,
                to_committer,
                committed,
                ops: Vec::new(),
                spare: Vec::new(),
                batch: None,
                in_flight: None,
                every: match args.durability {
                    Durability::Always => None,
                    Durability::Every(d) => Some(d),
                },
                last: StdInstant::now(),
            })
        }
    };
    let start = StdInstant::now();
    EventLoop {
        poll,
        listener: tcp,
        accept_paused: None,
        broker,
        checks,
        checked,
        start,
        base: resume_at.as_millis(),
        durable,
        conns: Vec::new(),
        free: Vec::new(),
        tcp: HashMap::new(),
        hub,
        runtime,
        cluster,
        wake,
        tasks_ready: false,
        scratch: vec![0; MAX_READ].into_boxed_slice(),
        out: vec![0; args.max_packet_size as usize + 4096],
        batch: BytesMut::new(),
        dirty: Vec::new(),
        again: Vec::new(),
        closing: Vec::new(),
        write_queue: args.write_queue.max(1),
    }
    .run()
}

/// A password check for the checker thread: request, user name, password.
type Check = (RequestId, Option<String>, Option<Bytes>);

/// The broker's hooks: the ACL is checked at once; a password is checked on the checker
/// thread (the decision is deferred), so that the event loop never waits for a hash.
struct Policy {
    access: Arc<Access>,
}

impl Hooks for Policy {
    fn authenticate(&mut self, _: &mqtt_broker::Context<'_>, request: &ConnectRequest) -> Verdict {
        if self.access.passwords.is_some() && request.username.is_some() {
            return Verdict::Defer;
        }
        match self.access.check_password(None, None) {
            Ok(()) => Verdict::Allow,
            Err(code) => Verdict::Deny(code),
        }
    }

    fn authorize_publish(
        &mut self,
        ctx: &mqtt_broker::Context<'_>,
        topic: TopicName<'_>,
        _: QoS,
        _: bool,
    ) -> Verdict {
        let acl = self.access.acl.as_ref();
        allowed(acl.is_none_or(|acl| acl.may_publish(ctx.client_id, ctx.username, topic.as_str())))
    }

    fn authorize_subscribe(
        &mut self,
        ctx: &mqtt_broker::Context<'_>,
        filter: TopicFilter<'_>,
        _: QoS,
    ) -> Verdict {
        let acl = self.access.acl.as_ref();
        allowed(
            acl.is_none_or(|acl| acl.may_subscribe(ctx.client_id, ctx.username, filter.as_str())),
        )
    }
}

fn allowed(yes: bool) -> Verdict {
    if yes {
        Verdict::Allow
    } else {
        Verdict::Deny(ReasonCode::NotAuthorized)
    }
}

/// The event loop's token for the plain TCP listener; a connection's token is its index in
/// [`EventLoop::conns`].
const LISTENER: Token = Token(usize::MAX - 1);
/// The token of the tokio side's waker.
const WAKER: Token = Token(usize::MAX);
/// Reads from one connection before the others get a turn. Readiness is edge-triggered,
/// so a connection left with input unread is put on [`EventLoop::again`].
const READS_PER_TURN: usize = 16;
/// Messages from the tokio side taken in one turn.
const TASK_MESSAGES_PER_TURN: usize = 1024;
/// How long a connection the broker closed has to take its last output.
const CLOSE_FLUSH: StdDuration = StdDuration::from_secs(10);
/// How long a connection, once shut down for writing, is read and discarded from before it
/// is dropped: dropping it with input unread would reset it, and the peer could lose the
/// CONNACK or DISCONNECT that explains the close.
const LINGER: StdDuration = StdDuration::from_secs(2);
/// How long accepting pauses after an error such as EMFILE, instead of spinning.
const ACCEPT_BACKOFF: StdDuration = StdDuration::from_millis(100);

/// The link to the store's thread, and what the core gave the store that is not
/// committed yet.
struct Durable {
    /// The store's thread: it closes the store when `to_committer` closes.
    thread: std::thread::JoinHandle<()>,
    /// Batches to commit, with the broker's clock.
    to_committer: std::sync::mpsc::Sender<(Vec<StoreOp>, Instant)>,
    /// Each commit's result (and its buffer, emptied by the loop); the thread wakes the loop
    /// after each.
    committed: std::sync::mpsc::Receiver<(Result<(), mqtt_tokio::Error>, Vec<StoreOp>)>,
    /// Operations not sent to the thread yet, and the last batch among them.
    ops: Vec<StoreOp>,
    spare: Vec<StoreOp>,
    batch: Option<Batch>,
    /// The last batch of the commit on its way (one at a time).
    in_flight: Option<Batch>,
    /// `--durability <N>ms`: commits at most this far apart; `None`: one after another.
    every: Option<StdDuration>,
    /// When the last commit was sent.
    last: StdInstant,
}

/// A plain TCP connection. An idle one is this and nothing else (24 bytes on 64-bit
/// targets, besides its entry in [`EventLoop::tcp`]).
struct Conn {
    stream: MioStream,
    id: ConnectionId,
    state: State,
    /// Registered for WRITABLE as well: the kernel did not take all the output.
    blocked: bool,
    /// Listed in [`EventLoop::dirty`].
    dirty: bool,
    /// The core paused it ([`BrokerEvent::Pause`]): not read until resumed.
    paused: bool,
    /// Only while there is output or input to keep, or the connection is closing.
    bufs: Option<Box<Buffers>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum State {
    /// Served: input goes to the core.
    Open,
    /// The core closed it: write what is queued, then linger. Input is discarded.
    Closing,
    /// Shut down for writing; reading and discarding until the peer closes or the
    /// deadline.
    Lingering,
}

/// What a busy connection keeps between turns.
#[derive(Default)]
struct Buffers {
    /// Output the kernel has not taken yet.
    out: BytesMut,
    /// Chunks (one per delivery from the core) put in `out` since it was last empty;
    /// `--write-queue` bounds it once the kernel stops taking more.
    chunks: usize,
    /// Received bytes not yet forming a complete packet.
    input: BytesMut,
    /// When a closing connection is dropped whatever its state.
    deadline: Option<StdInstant>,
}

/// The main thread: the broker, the plain TCP listener and connections, and the link to
/// the TLS and WebSocket tasks.
struct EventLoop {
    poll: mio::Poll,
    /// The plain TCP listener, unless `--no-tcp`.
    listener: Option<mio::net::TcpListener>,
    /// Accepting is paused until then after an error.
    accept_paused: Option<StdInstant>,
    broker: Broker<Policy>,
    /// Password checks for the checker thread: (request, user name, password).
    checks: std::sync::mpsc::Sender<Check>,
    /// Its answers; it wakes the loop through [`Wake`] after each.
    checked: std::sync::mpsc::Receiver<(RequestId, Result<(), ReasonCode>)>,
    /// The broker's clock reads `base` milliseconds here (more than 0 when restored: the
    /// stored clock's last reading plus the downtime).
    start: StdInstant,
    base: u64,
    /// The store, unless `--in-memory`.
    durable: Option<Durable>,
    /// Plain TCP connections by token; `free` lists the empty slots.
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    /// The slot in `conns` of each plain TCP connection the core knows.
    tcp: HashMap<ConnectionId, u32>,
    /// TLS and WebSocket connections, and bridges' remote legs.
    hub: Hub,
    /// The tokio side, where bridges dial.
    runtime: tokio::runtime::Handle,
    /// The other nodes of the cluster, through NATS (`--cluster`).
    cluster: Option<Cluster>,
    wake: Arc<Wake>,
    /// Messages from the tokio side may be waiting beyond what the last turn took.
    tasks_ready: bool,
    /// Every plain TCP read goes here first; what the core does not consume at once is
    /// copied out at its size.
    scratch: Box<[u8]>,
    /// For `Broker::poll_transmit`: room for the largest packet.
    out: Vec<u8>,
    /// What the core has for one connection, gathered before it is delivered.
    batch: BytesMut,
    /// Connections with output to write at the end of the turn: writing once per turn
    /// rather than once per delivery saves system calls under load.
    dirty: Vec<usize>,
    /// Connections whose input was not read to the end last turn.
    again: Vec<usize>,
    /// Connections closing or lingering, which have a deadline (stale entries are
    /// skipped).
    closing: Vec<usize>,
    write_queue: usize,
}

impl EventLoop {
    fn run(mut self) -> std::io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            if self.wake.shutdown.load(Ordering::Acquire) {
                info!("interrupted, shutting down");
                // What the last turns changed, `--durability <N>ms` or not.
                self.commit_rest();
                return Ok(());
            }
            let now = self.now();
            let mut deadline = self.broker.poll_timeout();
            if deadline.is_some_and(|t| t <= now) {
                self.broker.handle_timeout(now);
                self.drain(now);
                deadline = self.broker.poll_timeout();
            }
            let mut wake_at = deadline.map(|t| self.to_std(t));
            if let Some(t) = self.accept_paused {
                if t <= StdInstant::now() {
                    self.accept_paused = None;
                    self.accept();
                }
            }
            // Before the writes: dropping a connection past its deadline can make output.
            let closing_at = self.expire_closing();
            // Feeding the core is over for this turn: what it changed goes to the store
            // (group commit), and with `--durability always` its output waits for that.
            // Pulling output can change more (a message handed to a connection): again
            // until nothing is left.
            loop {
                self.take_committed(false);
                self.commit();
                if self.dirty.is_empty() {
                    break;
                }
                // A failed write can close a connection, and what the core then sends (a
                // will, say) makes more output: written before waiting too.
                for i in std::mem::take(&mut self.dirty) {
                    self.flush(i);
                }
                // Pulling output from the core drains queues, which resumes publishers.
                self.drain(self.now());
            }
            // The store's thread wakes the loop when a commit is done; with `<N>ms`, the next
            // one is due then.
            let pending = self.broker.has_store_ops();
            let commit_at = self.durable.as_ref().and_then(|d| {
                let due = pending && d.in_flight.is_none();
                Some(d.last + d.every?).filter(|_| due)
            });
            for t in [self.accept_paused, closing_at, commit_at] {
                wake_at = match (wake_at, t) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                };
            }
            let timeout = if self.tasks_ready || !self.again.is_empty() {
                Some(StdDuration::ZERO)
            } else {
                wake_at.map(|t| t.saturating_duration_since(StdInstant::now()))
            };
            match self.poll.poll(&mut events, timeout) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
            for event in &events {
                match event.token() {
                    WAKER => self.tasks_ready = true,
                    LISTENER => self.accept(),
                    Token(i) => {
                        if event.is_writable() {
                            self.flush(i);
                        }
                        if event.is_readable() || event.is_read_closed() || event.is_error() {
                            self.read(i);
                        }
                    }
                }
            }
            for i in std::mem::take(&mut self.again) {
                self.read(i);
            }
            if self.tasks_ready {
                self.take_task_messages();
            }
        }
    }

    fn now(&self) -> Instant {
        Instant::from_millis(self.base + self.start.elapsed().as_millis() as u64)
    }

    /// A broker instant on std's clock.
    fn to_std(&self, t: Instant) -> StdInstant {
        self.start + StdDuration::from_millis(t.as_millis().saturating_sub(self.base))
    }

    /// Takes what the core has for the store and sends it to the store's thread, unless a
    /// commit is on its way (what comes meanwhile goes with the next) or, with
    /// `--durability <N>ms`, the last one was sent less than N ms ago.
    fn commit(&mut self) {
        let now = self.now();
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        // Polled only when it can be sent: until then the operations stay in the core,
        // which drops a message put and acknowledged meanwhile from the batch.
        if d.in_flight.is_some() {
            return;
        }
        if d.every.is_some_and(|every| d.last.elapsed() < every) {
            return;
        }
        let Some(batch) = self.broker.poll_store(&mut d.ops) else {
            return;
        };
        d.batch = Some(batch);
        let ops = std::mem::replace(&mut d.ops, std::mem::take(&mut d.spare));
        if d.to_committer.send((ops, now)).is_err() {
            store_failed(&mqtt_tokio::Error::Store(
                "the store's thread is gone".into(),
            ));
        }
        d.in_flight = d.batch.take();
        d.last = StdInstant::now();
    }

    /// Takes the result of the commit on its way, if it is done (`wait`: waits for it),
    /// and hands out the output that waited for it. A store error ends the process: what
    /// the broker acknowledged could no longer be kept.
    fn take_committed(&mut self, wait: bool) {
        let Some(d) = self.durable.as_mut() else {
            return;
        };
        let Some(batch) = d.in_flight else {
            return;
        };
        let done = if wait {
            d.committed.recv().ok()
        } else {
            match d.committed.try_recv() {
                Ok(done) => Some(done),
                Err(std::sync::mpsc::TryRecvError::Empty) => return,
                Err(std::sync::mpsc::TryRecvError::Disconnected) => None,
            }
        };
        let Some((result, spare)) = done else {
            store_failed(&mqtt_tokio::Error::Store(
                "the store's thread is gone".into(),
            ));
        };
        if let Err(e) = result {
            store_failed(&e);
        }
        d.spare = spare;
        d.in_flight = None;
        let now = self.now();
        self.broker.handle_durable(now, batch);
        self.drain(now);
        // After the output that waited: emptying it frees every key and value.
        if let Some(d) = self.durable.as_mut() {
            d.spare.clear();
        }
    }

    /// At shutdown: commits everything, waiting for each commit.
    fn commit_rest(&mut self) {
        loop {
            self.take_committed(true);
            let Some(d) = self.durable.as_mut() else {
                return;
            };
            // Whatever the interval: now.
            d.every = None;
            self.commit();
            if self.durable.as_ref().is_none_or(|d| d.in_flight.is_none()) {
                break;
            }
        }
        // Closed cleanly: the next start need not check for a torn commit.
        if let Some(d) = self.durable.take() {
            drop(d.to_committer);
            let _ = d.thread.join();
        }
    }

    /// Accepts plain TCP connections until there are no more.
    fn accept(&mut self) {
        loop {
            let Some(listener) = &self.listener else {
                return;
            };
            let (mut stream, peer) = match listener.accept() {
                Ok(s) => s,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue
                }
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning. Readiness is
                    // edge-triggered, so the loop comes back here when the pause is over.
                    warn!("accept: {e}");
                    self.accept_paused = Some(StdInstant::now() + ACCEPT_BACKOFF);
                    return;
                }
            };
            let _ = stream.set_nodelay(true);
            let i = self.free.pop().unwrap_or_else(|| {
                self.conns.push(None);
                self.conns.len() - 1
            });
            if let Err(e) = self
                .poll
                .registry()
                .register(&mut stream, Token(i), Interest::READABLE)
            {
                warn!(%peer, "register: {e}");
                self.free.push(i);
                continue;
            }
            // `open`, not `open_with` and the peer: no hook here reads it, and a connection
            // that carries it costs the core about 250 bytes more (measured by
            // `SKIP_LOAD=1 examples/bench/compare.sh`: 674 bytes per idle connection with it).
            let id = self.broker.open(self.now());
            debug!(%peer, ?id, "open");
            self.tcp.insert(id, i as u32);
            self.conns[i] = Some(Conn {
                stream,
                id,
                state: State::Open,
                blocked: false,
                dirty: false,
                paused: false,
                bufs: None,
            });
            // Read it this turn: a client sends CONNECT right after its handshake, so the
            // bytes are often there already, and waiting for their readiness event first
            // costs a turn of the loop on every connect.
            self.again.push(i);
        }
    }

    /// Reads what connection `i` has for us, up to [`READS_PER_TURN`] reads.
    fn read(&mut self, i: usize) {
        for _ in 0..READS_PER_TURN {
            let Some(Some(conn)) = self.conns.get_mut(i) else {
                return;
            };
            // Paused: what the client sends waits in the kernel, and TCP pushes back.
            if conn.paused && conn.state == State::Open {
                return;
            }
            match conn.stream.read(&mut self.scratch) {
                // The peer closed. A connection still flushing its last output is let finish
                // (the peer may still read); otherwise it is done.
                Ok(0) if conn.state == State::Closing => return,
                Ok(0) => return self.gone(i),
                Ok(n) if conn.state == State::Open => self.input(i, n),
                Ok(_) => {} // closing: discarded
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return self.gone(i),
            }
        }
        self.again.push(i);
    }

    /// Hands `n` bytes just read from connection `i` to the core.
    fn input(&mut self, i: usize, n: usize) {
        let now = self.now();
        let Some(conn) = self.conns[i].as_mut() else {
            return;
        };
        let read = &self.scratch[..n];
        match &mut conn.bufs {
            Some(bufs) if !bufs.input.is_empty() => {
                bufs.input.extend_from_slice(read);
                self.broker.handle_input(now, conn.id, &mut bufs.input);
                // What the core consumed need not stay allocated.
                if bufs.input.is_empty() {
                    bufs.input = BytesMut::new();
                }
                conn.tidy();
            }
            // The common case: nothing was left over. A copy at the size read, so that what
            // the core keeps of it (a message's payload is a view of the packet) holds no
            // more memory than that.
            _ => {
                let mut input = BytesMut::from(read);
                self.broker.handle_input(now, conn.id, &mut input);
                if !input.is_empty() {
                    conn.bufs.get_or_insert_default().input = input;
                }
            }
        }
        self.drain(now);
    }

    /// Carries out what the broker asks for until it has nothing more.
    /// Answers the password checks the checker thread finished.
    fn take_checked(&mut self) {
        while let Ok((id, result)) = self.checked.try_recv() {
            let now = self.now();
            // A connection that closed meanwhile dropped its request: nothing to do.
            let _ = match result {
                Ok(()) => self.broker.accept(now, id),
                Err(code) => self.broker.reject(now, id, code, None),
            };
            self.drain(now);
        }
    }

    fn drain(&mut self, now: Instant) {
        // Deferred decisions go to the checker thread, whose answers wake the loop.
        while let Some(request) = self.broker.poll_request() {
            match request.kind {
                RequestKind::Authenticate { username, password } => {
                    let _ = self.checks.send((request.id, username, password));
                }
                // The policy defers nothing else.
                _ => {
                    let _ = self.broker.reject(
                        now,
                        request.id,
                        ReasonCode::ImplementationSpecificError,
                        None,
                    );
                }
            }
        }
        while let Some(event) = self.broker.poll_event() {
            // TLS and WebSocket connections are the hub's.
            if self.hub.handle_event(&mut self.broker, now, &event) {
                continue;
            }
            let (id, close) = match event {
                BrokerEvent::Transmit(id) => (id, false),
                BrokerEvent::Close { id, reason } => {
                    let slow = reason == CloseReason::SlowConsumer;
                    if slow {
                        warn!(?id, "client not reading; disconnecting");
                    } else {
                        debug!(?id, ?reason, "closing");
                    }
                    (id, true)
                }
                BrokerEvent::Pause(id) => {
                    self.pause(id, true, now);
                    continue;
                }
                BrokerEvent::Resume(id) => {
                    self.pause(id, false, now);
                    continue;
                }
                _ => continue,
            };
            let Some(i) = self.tcp.get(&id).map(|&i| i as usize) else {
                continue;
            };
            // A TCP connection whose socket takes no more output is not pulled from: the
            // messages stay queued in the core, whose watermark pauses their publishers;
            // `flush` pulls once the socket drains.
            let blocked = self.conns[i].as_ref().is_some_and(|c| c.blocked);
            if !blocked || close {
                self.pull(now, id);
            }
            self.deliver(i, close, now);
            self.batch.clear();
        }
        self.hub.dial(&mut self.broker, &self.runtime);
        if let Some(c) = &mut self.cluster {
            c.flush(&mut self.broker);
        }
    }

    /// Moves what the core has to send on `id` into `batch`.
    fn pull(&mut self, now: Instant, id: ConnectionId) {
        loop {
            match self.broker.poll_transmit(now, id, &mut self.out) {
                Ok(Some(n)) => self.batch.extend_from_slice(&self.out[..n]),
                Ok(None) => return,
                // Larger than any packet we take in (properties the broker adds): grow.
                Err(BrokerError::BufferTooSmall { needed }) => self.out.resize(needed, 0),
                Err(e) => {
                    warn!(?id, "transmit: {e}");
                    return;
                }
            }
        }
    }

    /// Stops or resumes reading connection `id`, as the core asks.
    fn pause(&mut self, id: ConnectionId, paused: bool, now: Instant) {
        if let Some(&i) = self.tcp.get(&id) {
            let Some(conn) = self.conns[i as usize].as_mut() else {
                return;
            };
            conn.paused = paused;
            if !paused {
                // What was read before the pause, then whatever the kernel holds.
                if let Some(bufs) = conn.bufs.as_mut().filter(|b| !b.input.is_empty()) {
                    self.broker.handle_input(now, id, &mut bufs.input);
                    if bufs.input.is_empty() {
                        bufs.input = BytesMut::new();
                    }
                    conn.tidy();
                }
                self.again.push(i as usize);
            }
        }
    }

    /// Queues `batch` on plain TCP connection `i`, closing it if the core asks to or it has
    /// stopped reading.
    fn deliver(&mut self, i: usize, close: bool, now: Instant) {
        let Some(conn) = self.conns[i].as_mut() else {
            return;
        };
        let mut slow = false;
        if !self.batch.is_empty() {
            let bufs = conn.bufs.get_or_insert_default();
            if conn.blocked && bufs.chunks >= self.write_queue {
                slow = true;
                // A client that stopped reading is not waited for.
                bufs.out = BytesMut::new();
                match conn.stream.peer_addr() {
                    Ok(peer) => warn!(%peer, "client not reading; disconnecting"),
                    Err(_) => warn!("client not reading; disconnecting"),
                }
            } else {
                bufs.out.extend_from_slice(&self.batch);
                bufs.chunks += 1;
            }
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(i);
            }
        }
        if close || slow {
            let id = conn.id;
            conn.state = State::Closing;
            conn.bufs.get_or_insert_default().deadline = Some(StdInstant::now() + CLOSE_FLUSH);
            self.closing.push(i);
            if !conn.dirty {
                conn.dirty = true;
                self.dirty.push(i);
            }
            self.tcp.remove(&id);
            debug!(?id, "closed by broker");
            self.broker.handle_close(now, id);
        }
    }

    /// Writes connection `i`'s output until done or the kernel takes no more; then, if it
    /// is closing, shuts it down for writing and lingers.
    fn flush(&mut self, i: usize) {
        let Some(Some(conn)) = self.conns.get_mut(i) else {
            return;
        };
        conn.dirty = false;
        if let Some(bufs) = &mut conn.bufs {
            while !bufs.out.is_empty() {
                match conn.stream.write(&bufs.out) {
                    Ok(n) if n > 0 => bufs.out.advance(n),
                    Err(e) if e.kind() == ErrorKind::Interrupted => {}
                    Err(e) if e.kind() == ErrorKind::WouldBlock => {
                        // Told again once there is room.
                        if !conn.blocked {
                            conn.blocked = true;
                            let _ = self.poll.registry().reregister(
                                &mut conn.stream,
                                Token(i),
                                Interest::READABLE | Interest::WRITABLE,
                            );
                        }
                        return;
                    }
                    _ => return self.gone(i),
                }
            }
            bufs.out = BytesMut::new();
            bufs.chunks = 0;
        }
        if conn.blocked {
            conn.blocked = false;
            let _ = self
                .poll
                .registry()
                .reregister(&mut conn.stream, Token(i), Interest::READABLE);
            if conn.state == State::Open {
                // Output left in the core while the socket was full: pull it now.
                let id = conn.id;
                let now = self.now();
                self.pull(now, id);
                let pulled = !self.batch.is_empty();
                self.deliver(i, false, now);
                self.batch.clear();
                if pulled {
                    return;
                }
            }
        }
        let Some(Some(conn)) = self.conns.get_mut(i) else {
            return;
        };
        conn.tidy();
        if conn.state == State::Closing {
            let _ = conn.stream.shutdown(Shutdown::Write);
            conn.state = State::Lingering;
            conn.bufs.get_or_insert_default().deadline = Some(StdInstant::now() + LINGER);
            // Whatever came meanwhile, or the peer's close, was not read while closing.
            self.read(i);
        }
    }

    /// Connection `i` is closed by the peer or failed: tells the core if it is still the
    /// core's, and drops it.
    fn gone(&mut self, i: usize) {
        let Some(conn) = self.conns.get_mut(i).and_then(Option::take) else {
            return;
        };
        self.free.push(i);
        let mut stream = conn.stream;
        let _ = self.poll.registry().deregister(&mut stream);
        if conn.state == State::Open {
            let now = self.now();
            self.tcp.remove(&conn.id);
            debug!(id = ?conn.id, "closed by peer");
            self.broker.handle_close(now, conn.id);
            self.drain(now);
        }
    }

    /// Drops closing connections past their deadline; the earliest deadline left.
    fn expire_closing(&mut self) -> Option<StdInstant> {
        let now = StdInstant::now();
        let mut next: Option<StdInstant> = None;
        let mut expired = Vec::new();
        let conns = &self.conns;
        self.closing.retain(|&i| {
            let deadline = match &conns[i] {
                Some(c) if c.state != State::Open => c.bufs.as_ref().and_then(|b| b.deadline),
                _ => None,
            };
            match deadline {
                Some(d) if d <= now => expired.push(i),
                Some(d) => {
                    next = Some(next.map_or(d, |n| n.min(d)));
                    return true;
                }
                None => {}
            }
            false
        });
        for i in expired {
            self.gone(i);
        }
        next
    }

    /// Takes what the TLS and WebSocket tasks sent, and the password checker's answers.
    fn take_task_messages(&mut self) {
        self.take_checked();
        for _ in 0..TASK_MESSAGES_PER_TURN {
            let now = self.now();
            let hub = self.hub.poll(&mut self.broker, now);
            if hub {
                self.drain(now);
            }
            let cluster = match &mut self.cluster {
                Some(c) => c.poll(&mut self.broker, now),
                None => false,
            };
            if cluster {
                self.drain(now);
            }
            if !hub && !cluster {
                self.tasks_ready = false;
                return;
            }
        }
        // More may be waiting: the next turn does not wait for readiness.
        self.tasks_ready = true;
    }
}

impl Conn {
    /// Lets go of the buffers once an open connection no longer needs them.
    fn tidy(&mut self) {
        if self.state == State::Open
            && self
                .bufs
                .as_ref()
                .is_some_and(|b| b.out.is_empty() && b.input.is_empty())
        {
            self.bufs = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `mqtt-broker ARGV -c broker.conf` with `text` in the file: the merged arguments and
    /// the warnings, or the error as printed.
    fn merged(argv: &[&str], text: &str) -> Result<(Args, Vec<String>), String> {
        let matches = Args::command()
            .try_get_matches_from(std::iter::once("mqtt-broker").chain(argv.iter().copied()))
            .expect("valid flags");
        let mut args = Args::from_arg_matches(&matches).expect("args");
        let given = |id: &str| matches.value_source(id) == Some(ValueSource::CommandLine);
        let path = Path::new("broker.conf");
        let config = conf::parse(text, path).map_err(|e| e.to_string())?;
        let notes = apply_config(&mut args, &given, config, path)?;
        Ok((args, notes))
    }

    fn ok(argv: &[&str], text: &str) -> Args {
        merged(argv, text).unwrap_or_else(|e| panic!("{e}")).0
    }

    fn addr(s: &str) -> SocketAddr {
        s.parse().unwrap()
    }

    #[test]
    fn a_file_without_listeners_leaves_them_to_the_flags() {
        let a = ok(&[], "max_keepalive 30\n");
        assert_eq!(a.bind, addr("127.0.0.1:1883"));
        assert_eq!(a.ws_bind, addr("127.0.0.1:8080"));
        assert!(!a.no_tcp && !a.no_ws && a.tls_bind.is_none() && a.wss_bind.is_none());
        assert!(!a.refuse_everyone);
    }

    #[test]
    fn declared_listeners_are_the_only_ones() {
        let a = ok(&[], "listener 1884 127.0.0.1\nallow_anonymous true");
        assert_eq!(a.bind, addr("127.0.0.1:1884"));
        // No WebSocket unless declared, as in mosquitto.
        assert!(a.no_ws && !a.no_tcp && a.tls_bind.is_none() && a.wss_bind.is_none());

        let a = ok(
            &[],
            "listener 9001 127.0.0.1\nprotocol websockets\nallow_anonymous true",
        );
        assert!(a.no_tcp && !a.no_ws);
        assert_eq!(a.ws_bind, addr("127.0.0.1:9001"));

        let text = "listener 8883 127.0.0.1\ncertfile s.pem\nkeyfile s.key\n\
                    listener 8443 127.0.0.1\nprotocol websockets\ncertfile s.pem\nkeyfile s.key\n\
                    allow_anonymous true";
        let a = ok(&[], text);
        assert!(a.no_tcp && a.no_ws);
        assert_eq!(a.tls_bind, Some(addr("127.0.0.1:8883")));
        assert_eq!(a.wss_bind, Some(addr("127.0.0.1:8443")));
        assert_eq!(a.cert, Some(PathBuf::from("s.pem")));
        assert_eq!(a.key, Some(PathBuf::from("s.key")));
        // Without an address: every IPv4 interface.
        assert_eq!(
            ok(&[], "port 1885\nallow_anonymous true").bind,
            addr("0.0.0.0:1885")
        );
    }

    #[test]
    fn listener_flags_override_the_file() {
        let file = "listener 1884 127.0.0.1\n\
                    listener 9001 127.0.0.1\nprotocol websockets\n\
                    listener 8883 127.0.0.1\ncertfile s.pem\nkeyfile s.key\n\
                    allow_anonymous true";
        let a = ok(
            &["--bind", "127.0.0.1:0", "--no-ws", "--cert", "other.pem"],
            file,
        );
        assert_eq!(a.bind, addr("127.0.0.1:0"));
        assert!(a.no_ws);
        assert_eq!(a.tls_bind, Some(addr("127.0.0.1:8883")));
        assert_eq!(a.cert, Some(PathBuf::from("other.pem")));
        assert_eq!(a.key, Some(PathBuf::from("s.key")));
        // A flag for a kind the file does not declare turns it on.
        let a = ok(
            &["--ws-bind", "127.0.0.1:8081"],
            "listener 1884\nallow_anonymous true",
        );
        assert!(!a.no_ws);
        assert_eq!(a.ws_bind, addr("127.0.0.1:8081"));
        let a = ok(
            &["--bind", "127.0.0.1:1999"],
            "listener 9001\nprotocol websockets\nallow_anonymous true",
        );
        assert!(!a.no_tcp);
        assert_eq!(a.bind, addr("127.0.0.1:1999"));
    }

    #[test]
    fn limits_from_the_file_unless_flagged() {
        let file = "max_keepalive 30\nmax_queued_messages 50\nmax_connections 7\n\
                    max_packet_size 4096\nmax_inflight_messages 5\n";
        let a = ok(&[], file);
        assert_eq!(
            (
                a.max_keep_alive,
                a.max_queued,
                a.max_connections,
                a.max_packet_size,
                a.max_inflight
            ),
            (30, 50, 7, 4096, 5)
        );
        let a = ok(
            &[
                "--max-keep-alive",
                "60",
                "--max-queued",
                "60",
                "--max-connections",
                "60",
                "--max-packet-size",
                "6000",
                "--max-inflight",
                "6",
            ],
            file,
        );
        assert_eq!(
            (
                a.max_keep_alive,
                a.max_queued,
                a.max_connections,
                a.max_packet_size,
                a.max_inflight
            ),
            (60, 60, 60, 6000, 6)
        );
        // A flag given with its default value still wins over the file.
        assert_eq!(ok(&["--max-keep-alive", "0"], file).max_keep_alive, 0);
    }

    #[test]
    fn persistence() {
        assert!(ok(&[], "persistence false").in_memory);
        assert!(!ok(&[], "persistence true").in_memory);
        assert!(!ok(&["--data-dir", "d"], "persistence false").in_memory);
        assert!(ok(&["--in-memory"], "persistence true").in_memory);
        let a = ok(&[], "persistence true\npersistence_location /var/lib/mqtt");
        assert_eq!(a.data_dir, PathBuf::from("/var/lib/mqtt"));
        let a = ok(&["--data-dir", "d"], "persistence_location /var/lib/mqtt");
        assert_eq!(a.data_dir, PathBuf::from("d"));
        // Unset: this broker's default, durable (mosquitto's is not).
        assert!(!ok(&[], "").in_memory);
    }

    #[test]
    fn access_files() {
        let a = ok(&[], "password_file p\nacl_file a");
        assert_eq!(
            (a.password_file, a.acl_file),
            (Some("p".into()), Some("a".into()))
        );
        let a = ok(
            &["--password-file", "p2", "--acl-file", "a2"],
            "password_file p\nacl_file a",
        );
        assert_eq!(
            (a.password_file, a.acl_file),
            (Some("p2".into()), Some("a2".into()))
        );
    }

    #[test]
    fn allow_anonymous() {
        let (a, notes) = merged(&[], "allow_anonymous true").unwrap();
        assert!(a.allow_anonymous && !a.refuse_everyone && notes.is_empty());
        // With a password file, false is this broker's own behaviour.
        let (a, notes) = merged(&[], "allow_anonymous false\npassword_file p").unwrap();
        assert!(!a.allow_anonymous && !a.refuse_everyone && notes.is_empty());
        // Without one, mosquitto 2 refuses everyone: so do we, and say so.
        let (a, notes) = merged(&[], "allow_anonymous false").unwrap();
        assert!(a.refuse_everyone);
        assert_eq!(notes.len(), 1);
        assert!(notes[0].contains("every client is refused"), "{notes:?}");
        // mosquitto 2's default with listeners declared is false, too.
        let (a, notes) = merged(&[], "listener 1883").unwrap();
        assert!(a.refuse_everyone);
        assert!(notes[0].contains("default with listeners"), "{notes:?}");
        assert!(!ok(&[], "listener 1883\npassword_file p").refuse_everyone);
        // Neither: the flags' behaviour (no password file, anyone gets in).
        assert!(!ok(&[], "max_keepalive 5").refuse_everyone);
        // The flag beats the file; a password file on the command line too.
        let a = ok(&["--allow-anonymous"], "allow_anonymous false");
        assert!(a.allow_anonymous && !a.refuse_everyone);
        assert!(!ok(&["--password-file", "p"], "allow_anonymous false").refuse_everyone);
    }

    #[test]
    fn bridges_from_the_file() {
        let a = ok(
            &[],
            "allow_anonymous true\n\nconnection cloud\naddress h:1884\n\
             topic up/# out 1 \"\" site/\ntopic cmd/# in 2\n\
             remote_clientid edge\nremote_username u\nremote_password p\n\
             bridge_protocol_version mqttv50\ncleansession true\ntry_private false\n\
             keepalive_interval 30\nnotifications false\n",
        );
        let [(b, remote)] = a.bridges.as_slice() else {
            panic!("one bridge: {:?}", a.bridges);
        };
        assert_eq!((b.name.as_str(), b.address.as_str()), ("cloud", "h:1884"));
        assert_eq!(b.remote.version, mqtt_codec::ProtocolVersion::V5);
        assert_eq!(b.remote.client_id.as_str(), "edge");
        assert_eq!(b.remote.username.as_ref().map(|u| u.as_str()), Some("u"));
        assert_eq!(b.remote.password.as_deref(), Some(&b"p"[..]));
        assert!(b.remote.clean_start && !b.remote.bridge && !b.notifications);
        assert_eq!(b.remote.keep_alive, 30);
        assert!(remote.tls.is_none());
        let t = &b.topics;
        assert_eq!(
            (t[0].local_filter(), t[0].remote_filter()),
            ("up/#".into(), "site/up/#".into())
        );
        assert_eq!(
            (t[0].direction, t[0].qos),
            (mqtt_broker::Direction::Out, QoS::AtLeastOnce)
        );
        assert_eq!(
            (t[1].direction, t[1].qos),
            (mqtt_broker::Direction::In, QoS::ExactlyOnce)
        );
        // mosquitto's defaults: HOSTNAME.NAME, try_private, notifications, persistent.
        let a = ok(
            &[],
            "allow_anonymous true\nconnection c2\naddress h\ntopic #\n",
        );
        let b = &a.bridges[0].0;
        assert!(b.remote.client_id.as_str().ends_with(".c2"));
        assert!(b.remote.bridge && b.notifications && !b.remote.clean_start);
        assert_eq!(b.address, "h:1883");
        // What it cannot honour is refused with the line.
        let e = merged(
            &[],
            "allow_anonymous true\n\nconnection cloud\naddresses h:1 h:2\ntopic #",
        )
        .unwrap_err();
        assert!(
            e.starts_with("broker.conf:3: bridge 'cloud': one address only"),
            "{e}"
        );
    }

    #[test]
    fn a_config_error_names_file_and_line() {
        let e = merged(&[], "allow_anonymous true\nlog_dest stdout").unwrap_err();
        assert_eq!(e, "broker.conf:2: unsupported option 'log_dest'");
    }
}
