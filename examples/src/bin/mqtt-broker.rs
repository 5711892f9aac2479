//! An MQTT 3.1/3.1.1/5.0 broker over TCP and WebSocket: a thin tokio adapter around the
//! sans-IO [`mqtt_state::Broker`].
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
//! The adapter only moves bytes and time; every protocol decision is the core's. One task
//! owns the `Broker` (it is `&mut self` and single-threaded by design). Each TCP or TLS
//! connection has one task that forwards what arrives to the core over one shared channel
//! and writes what the core leaves in the connection's outbox (a WebSocket connection has a
//! reader and a writer task). A client that does not read fast enough to keep its outbox
//! below `--write-queue` chunks is closed rather than buffered for without bound.
//!
//! On startup it prints one line per listener with the address actually bound (so
//! `--bind 127.0.0.1:0` can be used and the port learnt from stdout):
//!
//! ```text
//! listening on tcp 127.0.0.1:1883
//! listening on ws 127.0.0.1:8080
//! listening on tls 127.0.0.1:8883
//! listening on wss 127.0.0.1:8443
//! ```
//!
//! Logs go to stderr; `RUST_LOG` filters them (default `info`).

#[path = "../access.rs"]
mod access;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration as StdDuration;

use bytes::{Buf, Bytes, BytesMut};
use clap::{Parser, Subcommand};
use futures_util::{SinkExt, StreamExt};
use mqtt_state::{
    Broker, BrokerConfig, BrokerEvent, ConnectionId, Duration, Instant, ServerConfig,
};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tracing::{debug, info, warn};

use access::{Access, Acl, Passwords};

/// Command line options.
#[derive(Debug, Parser)]
#[command(
    name = "mqtt-broker",
    about = "An MQTT broker over the sans-IO mqtt-state core"
)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// TCP listen address.
    #[arg(long, default_value = "127.0.0.1:1883")]
    bind: SocketAddr,
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
    /// Messages queued per client: for a disconnected persistent session, and for a
    /// connected client beyond its in-flight window. Beyond this, messages for that client
    /// are dropped (counted in `$SYS/broker/messages/dropped`).
    #[arg(long, default_value_t = 1000)]
    max_queued: usize,
    /// Seconds a new connection has to complete its CONNECT.
    #[arg(long, default_value_t = 10)]
    connect_timeout: u64,
    /// Seconds between `$SYS/broker/...` statistics; 0 turns them off.
    #[arg(long, default_value_t = 10)]
    sys_interval: u64,
    /// Chunks of output buffered per connection before a slow reader is disconnected.
    #[arg(long, default_value_t = 4096)]
    write_queue: usize,
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

/// What a listener speaks on top of TCP.
#[derive(Clone)]
struct Listener {
    websocket: bool,
    tls: Option<TlsAcceptor>,
}

/// From a connection task to the core.
enum ToCore {
    /// A connection was accepted; the core answers with its id.
    Open {
        tx: Arc<Outbox>,
        reply: oneshot::Sender<ConnectionId>,
    },
    /// Bytes arrived.
    Input(ConnectionId, Bytes),
    /// The transport is gone (peer closed, error, or after a `Close`).
    Closed(ConnectionId),
}

/// Output from the core to one connection: the bytes its task has not yet taken, behind
/// a lock the core and the task share. An idle connection's outbox holds no buffer: the
/// task takes the bytes whole and lets go of them once written.
#[derive(Default)]
struct Outbox(std::sync::Mutex<Pending>);

#[derive(Default)]
struct Pending {
    bytes: BytesMut,
    /// Chunks in `bytes`, which `--write-queue` bounds.
    chunks: usize,
    /// Write what is queued, then close.
    closing: bool,
    /// Close at once, without writing even what the task has taken.
    discard: bool,
    /// Closed for not reading: for the task to log, as it knows the peer's address.
    slow: bool,
    /// The connection's task, waiting for output.
    waker: Option<Waker>,
}

/// Why a chunk could not be queued.
enum Refused {
    /// The client has not read what came before.
    Full,
    /// The connection's task is gone; its `Closed` is on its way.
    Gone,
}

impl Outbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `chunk` unless `limit` chunks are already waiting or the task is gone.
    fn push(self: &Arc<Self>, chunk: &[u8], limit: usize) -> Result<(), Refused> {
        if Arc::strong_count(self) < 2 {
            return Err(Refused::Gone);
        }
        let mut p = self.lock();
        if p.chunks >= limit {
            p.slow = true;
            return Err(Refused::Full);
        }
        p.bytes.extend_from_slice(chunk);
        p.chunks += 1;
        wake(p);
        Ok(())
    }

    /// Tells the task to stop after what is queued, or, with `discard`, at once: a client
    /// that stopped reading is not waited for.
    fn close(&self, discard: bool) {
        let mut p = self.lock();
        if discard {
            p.bytes = BytesMut::new();
            p.discard = true;
        }
        p.closing = true;
        wake(p);
    }

    /// All the bytes queued, if the task has written what it took before (`idle`); `None`
    /// when the connection is to close: once everything is written, or at once if
    /// discarding.
    fn poll_take(&self, cx: &mut Context<'_>, idle: bool) -> Poll<Option<BytesMut>> {
        let mut p = self.lock();
        if p.discard {
            return Poll::Ready(None);
        }
        if idle && !p.bytes.is_empty() {
            p.chunks = 0;
            return Poll::Ready(Some(std::mem::take(&mut p.bytes)));
        }
        if idle && p.closing {
            return Poll::Ready(None);
        }
        if !p.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            p.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    async fn take(&self) -> Option<BytesMut> {
        std::future::poll_fn(|cx| self.poll_take(cx, true)).await
    }

    /// Logs why the connection ended, if it is worth a warning.
    fn log_end(&self, peer: SocketAddr) {
        if self.lock().slow {
            warn!(%peer, "client not reading; disconnecting");
        }
    }
}

/// Wakes the connection's task, after letting go of the lock.
fn wake(mut p: std::sync::MutexGuard<'_, Pending>) {
    let waker = p.waker.take();
    drop(p);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// The most a connection reads at once.
const MAX_READ: usize = 64 * 1024;

thread_local! {
    /// What every connection on this thread reads into (the runtime has one thread):
    /// what was read is copied out at its size, so an idle connection holds no buffer.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_READ].into_boxed_slice());
}

/// What the core keeps per connection. The peer's address is the connection task's to log:
/// here it would cost as much again as the rest.
struct Link {
    tx: Arc<Outbox>,
    /// Received bytes not yet forming a complete packet.
    input: BytesMut,
}

fn main() -> std::io::Result<()> {
    let args = Args::parse();
    if let Some(Command::HashPassword { user, password }) = &args.command {
        return hash_password(user, password.clone());
    }
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?
        .block_on(run(args))
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

/// The TLS acceptor for `--cert`/`--key`.
fn tls_acceptor(cert: &Path, key: &Path) -> std::io::Result<TlsAcceptor> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let invalid = |what: &Path, e: &dyn std::fmt::Display| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("{}: {e}", what.display()),
        )
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .map_err(|e| invalid(cert, &e))?;
    if certs.is_empty() {
        return Err(invalid(cert, &"no certificate found"));
    }
    let key_der = PrivateKeyDer::from_pem_file(key).map_err(|e| invalid(key, &e))?;
    let config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(certs, key_der))
    .map_err(|e| invalid(cert, &e))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

async fn run(args: Args) -> std::io::Result<()> {
    let access = Access {
        passwords: match &args.password_file {
            Some(p) => Some(access::load(p, Passwords::parse)?),
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
    let plain = |websocket| Listener {
        websocket,
        tls: None,
    };
    let secure = |websocket| Listener {
        websocket,
        tls: tls.clone(),
    };
    let mut listeners = vec![("tcp", TcpListener::bind(args.bind).await?, plain(false))];
    if !args.no_ws {
        listeners.push(("ws", TcpListener::bind(args.ws_bind).await?, plain(true)));
    }
    if let Some(addr) = args.tls_bind {
        listeners.push(("tls", TcpListener::bind(addr).await?, secure(false)));
    }
    if let Some(addr) = args.wss_bind {
        listeners.push(("wss", TcpListener::bind(addr).await?, secure(true)));
    }
    {
        let mut out = std::io::stdout().lock();
        for (name, listener, _) in &listeners {
            writeln!(out, "listening on {name} {}", listener.local_addr()?)?;
        }
        out.flush()?;
    }
    let (core_tx, core_rx) = mpsc::channel(1024);
    for (_, listener, kind) in listeners {
        tokio::spawn(accept_loop(listener, kind, core_tx.clone()));
    }
    drop(core_tx);
    let config = BrokerConfig {
        server: ServerConfig {
            maximum_packet_size: args.max_packet_size,
            max_inflight: args.max_inflight,
            max_queued: args.max_queued,
            connect_timeout: Duration::from_secs(args.connect_timeout),
            manual_acks: true,
            ..ServerConfig::default()
        },
        max_connections: args.max_connections,
        max_offline_queue: args.max_queued,
        sys_interval: (args.sys_interval > 0).then(|| Duration::from_secs(args.sys_interval)),
        ..BrokerConfig::default()
    };
    let out_size = args.max_packet_size as usize + 4096;
    tokio::select! {
        () = core(config, access, core_rx, out_size, args.write_queue.max(1)) => {}
        r = tokio::signal::ctrl_c() => {
            r?;
            info!("interrupted, shutting down");
        }
    }
    Ok(())
}

async fn accept_loop(listener: TcpListener, kind: Listener, core_tx: mpsc::Sender<ToCore>) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("accept: {e}");
                tokio::time::sleep(StdDuration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let core_tx = core_tx.clone();
        // Each kind is its own task, so a plain TCP connection's task is not as large as
        // the TLS and WebSocket ones.
        match (&kind.tls, kind.websocket) {
            (None, false) => tokio::spawn(serve(stream, peer, core_tx)),
            (None, true) => tokio::spawn(serve_ws(stream, peer, core_tx)),
            (Some(tls), websocket) => {
                tokio::spawn(serve_tls(tls.clone(), stream, websocket, peer, core_tx))
            }
        };
    }
}

/// A TLS connection: the handshake, then MQTT over TCP or WebSocket inside it.
async fn serve_tls(
    tls: TlsAcceptor,
    stream: tokio::net::TcpStream,
    websocket: bool,
    peer: SocketAddr,
    core_tx: mpsc::Sender<ToCore>,
) {
    let handshake = tls.accept(stream);
    let stream = match tokio::time::timeout(StdDuration::from_secs(10), handshake).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            debug!(%peer, "tls handshake: {e}");
            return;
        }
        Err(_) => {
            debug!(%peer, "tls handshake timed out");
            return;
        }
    };
    if websocket {
        serve_ws(stream, peer, core_tx).await
    } else {
        serve(stream, peer, core_tx).await
    }
}

/// Registers a connection with the core; `None` when the core is gone.
async fn open(
    core_tx: mpsc::Sender<ToCore>,
    peer: SocketAddr,
) -> Option<(ConnectionId, Arc<Outbox>)> {
    let outbox = Arc::new(Outbox::default());
    let (reply, id) = oneshot::channel();
    core_tx
        .send(ToCore::Open {
            tx: outbox.clone(),
            reply,
        })
        .await
        .ok()?;
    let id = id.await.ok()?;
    debug!(%peer, ?id, "open");
    Some((id, outbox))
}

/// What a connection's task does next.
enum Step {
    /// Forward these bytes to the core.
    Input(Bytes),
    /// The peer closed, the transport failed, or the core closed the connection.
    Done,
}

/// Runs a byte-stream connection (TCP or TLS) in one task: writes what the core queues and
/// reads whatever arrives meanwhile, so a client that writes without reading cannot stall
/// its own output.
///
/// The task lives as long as the connection, and a task is as large as the most it holds
/// across any one `.await`: so what it awaits only now and then (the registration with the
/// core, room in the core's channel, the closing) is boxed, and the peer's address it keeps
/// for logging fits in what is left (an idle connection's task is 256 bytes).
fn serve<S>(
    mut stream: S,
    peer: SocketAddr,
    core_tx: mpsc::Sender<ToCore>,
) -> impl Future<Output = ()>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let opening = Box::pin(open(core_tx.clone(), peer));
    async move {
        let Some((id, outbox)) = opening.await else {
            return;
        };
        let mut unwritten = BytesMut::new();
        loop {
            let step = std::future::poll_fn(|cx| {
                if poll_write_out(&mut stream, cx, &outbox, &mut unwritten).is_ready() {
                    return Poll::Ready(Step::Done);
                }
                poll_read_in(&mut stream, cx)
            });
            let bytes = match step.await {
                Step::Input(bytes) => bytes,
                Step::Done => break,
            };
            let msg = match core_tx.try_send(ToCore::Input(id, bytes)) {
                Ok(()) => continue,
                Err(e) => e.into_inner(),
            };
            if Box::pin(core_tx.send(msg)).await.is_err() {
                break;
            }
        }
        outbox.log_end(peer);
        // The core sees a dropped outbox as gone and stops queueing.
        drop(outbox);
        Box::pin(linger(&mut stream)).await;
        let _ = Box::pin(core_tx.send(ToCore::Closed(id))).await;
    }
}

/// Writes what the core queued until the socket is full or the queue empty; ready when the
/// connection is to close.
fn poll_write_out<S: AsyncWrite + Unpin>(
    stream: &mut S,
    cx: &mut Context<'_>,
    outbox: &Outbox,
    unwritten: &mut BytesMut,
) -> Poll<()> {
    loop {
        // Asked also while a write is pending, so that a client that stopped reading is
        // let go at once.
        match outbox.poll_take(cx, unwritten.is_empty()) {
            Poll::Ready(Some(bytes)) => *unwritten = bytes,
            Poll::Ready(None) => return Poll::Ready(()),
            Poll::Pending if unwritten.is_empty() => {
                // Let go of the written buffer: an idle connection keeps none.
                *unwritten = BytesMut::new();
                // TLS may hold back the last record of a write until flushed.
                return match Pin::new(stream).poll_flush(cx) {
                    Poll::Ready(Err(_)) => Poll::Ready(()),
                    _ => Poll::Pending,
                };
            }
            Poll::Pending => {}
        }
        match Pin::new(&mut *stream).poll_write(cx, unwritten) {
            Poll::Ready(Ok(n)) if n > 0 => unwritten.advance(n),
            Poll::Ready(_) => return Poll::Ready(()),
            Poll::Pending => return Poll::Pending,
        }
    }
}

/// Reads whatever has arrived, copied out of the shared scratch buffer at its size.
fn poll_read_in<S: AsyncRead + Unpin>(stream: &mut S, cx: &mut Context<'_>) -> Poll<Step> {
    SCRATCH.with_borrow_mut(|scratch| {
        let mut buf = ReadBuf::new(scratch);
        match Pin::new(stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if !buf.filled().is_empty() => {
                Poll::Ready(Step::Input(Bytes::copy_from_slice(buf.filled())))
            }
            Poll::Ready(_) => Poll::Ready(Step::Done),
            Poll::Pending => Poll::Pending,
        }
    })
}

/// Closes our side, then keeps reading and discarding for a moment, so the kernel does not
/// reset the connection over unread input before the peer has read the last CONNACK or
/// DISCONNECT.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(stream: &mut S) {
    let _ = stream.flush().await;
    let _ = stream.shutdown().await;
    let discard = async {
        while let Step::Input(_) = std::future::poll_fn(|cx| poll_read_in(stream, cx)).await {}
    };
    let _ = tokio::time::timeout(StdDuration::from_secs(2), discard).await;
}

/// Runs a WebSocket connection (over TCP or TLS): the handshake, then binary frames both
/// ways.
async fn serve_ws<S>(stream: S, peer: SocketAddr, core_tx: mpsc::Sender<ToCore>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let handshake = tokio_tungstenite::accept_hdr_async(stream, ws_handshake);
    let ws = match tokio::time::timeout(StdDuration::from_secs(10), handshake).await {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            debug!(%peer, "websocket handshake: {e}");
            return;
        }
        Err(_) => {
            debug!(%peer, "websocket handshake timed out");
            return;
        }
    };
    let Some((id, outbox)) = open(core_tx.clone(), peer).await else {
        return;
    };
    let (mut sink, mut stream) = ws.split();
    let reader_tx = core_tx.clone();
    let mut reader = tokio::spawn(async move {
        while let Some(Ok(msg)) = stream.next().await {
            match msg {
                WsMessage::Binary(b) => {
                    if reader_tx.send(ToCore::Input(id, b)).await.is_err() {
                        break;
                    }
                }
                // [MQTT-6.0.0-1] MQTT goes in binary frames; anything else closes.
                WsMessage::Text(_) | WsMessage::Close(_) => break,
                WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => {}
            }
        }
        let _ = reader_tx.send(ToCore::Closed(id)).await;
    });
    while let Some(b) = outbox.take().await {
        if sink.send(WsMessage::Binary(b.freeze())).await.is_err() {
            break;
        }
    }
    outbox.log_end(peer);
    drop(outbox);
    let _ = sink.close().await;
    if tokio::time::timeout(StdDuration::from_secs(2), &mut reader)
        .await
        .is_err()
    {
        reader.abort();
    }
    let _ = core_tx.send(ToCore::Closed(id)).await;
}

/// Accepts the WebSocket upgrade on `/mqtt` only, answering with the `mqtt` subprotocol.
#[allow(clippy::result_large_err)] // the signature tungstenite's `Callback` takes
fn ws_handshake(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    if req.uri().path() != "/mqtt" {
        let mut e = ErrorResponse::new(Some("not found".into()));
        *e.status_mut() = StatusCode::NOT_FOUND;
        return Err(e);
    }
    // [MQTT-6.0.0-3] [MQTT-6.0.0-4] the subprotocol is "mqtt".
    let offered = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim() == "mqtt");
    if offered {
        resp.headers_mut()
            .insert("sec-websocket-protocol", HeaderValue::from_static("mqtt"));
    }
    Ok(resp)
}

/// The task that owns the broker.
async fn core(
    config: BrokerConfig,
    access: Access,
    mut rx: mpsc::Receiver<ToCore>,
    out_size: usize,
    write_queue: usize,
) {
    let start = tokio::time::Instant::now();
    let now = || Instant::from_millis(start.elapsed().as_millis() as u64);
    let mut broker = Broker::with_hooks(config, access, now());
    let mut links: HashMap<ConnectionId, Link> = HashMap::new();
    let mut out = vec![0u8; out_size];
    let mut batch = BytesMut::new();
    loop {
        let deadline = broker
            .poll_timeout()
            .map(|t| start + StdDuration::from_millis(t.as_millis()));
        let sleep = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            msg = rx.recv() => {
                let Some(msg) = msg else { return };
                let now = now();
                match msg {
                    ToCore::Open { tx, reply } => {
                        let id = broker.open(now);
                        if reply.send(id).is_err() {
                            broker.handle_close(now, id);
                        } else {
                            links.insert(id, Link { tx, input: BytesMut::new() });
                        }
                    }
                    ToCore::Input(id, bytes) => {
                        if let Some(link) = links.get_mut(&id) {
                            if link.input.is_empty() {
                                link.input = bytes.into();
                            } else {
                                link.input.extend_from_slice(&bytes);
                            }
                            broker.handle_input(now, id, &mut link.input);
                            // What the broker consumed need not stay allocated.
                            if link.input.is_empty() {
                                link.input = BytesMut::new();
                            }
                        }
                    }
                    ToCore::Closed(id) => {
                        if let Some(link) = links.remove(&id) {
                            debug!(?id, "closed by peer");
                            // The task waits on its outbox, not on our handle: tell it.
                            link.tx.close(true);
                            broker.handle_close(now, id);
                        }
                    }
                }
            }
            () = sleep => broker.handle_timeout(now()),
        }
        drain(
            &mut broker,
            &mut links,
            now(),
            &mut out,
            &mut batch,
            write_queue,
        );
    }
}

/// Carries out what the broker asks for until it has nothing more.
fn drain(
    broker: &mut Broker<Access>,
    links: &mut HashMap<ConnectionId, Link>,
    now: Instant,
    out: &mut [u8],
    batch: &mut BytesMut,
    write_queue: usize,
) {
    while let Some(event) = broker.poll_event() {
        let (BrokerEvent::Transmit(id) | BrokerEvent::Close(id)) = event;
        while let Some(n) = broker.poll_transmit(now, id, out) {
            batch.extend_from_slice(&out[..n]);
        }
        let close = matches!(event, BrokerEvent::Close(_));
        let Some(link) = links.get(&id) else {
            batch.clear();
            continue;
        };
        let ok = batch.is_empty() || link.tx.push(batch, write_queue).is_ok();
        batch.clear();
        if close || !ok {
            link.tx.close(!ok);
            if links.remove(&id).is_some() {
                debug!(?id, "closed by broker");
            }
            broker.handle_close(now, id);
        }
    }
}
