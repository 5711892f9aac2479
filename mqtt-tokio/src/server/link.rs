//! The connection side of the server: one tokio task per TLS or WebSocket connection (and
//! per plain TCP connection under [`super::Server`]), which moves bytes between its socket
//! and the core's owner over a bounded channel and an outbox.

use std::cell::RefCell;
use std::fmt::Write as _;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use std::time::Duration as StdDuration;

use bytes::{Buf, Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use mqtt_broker::{BridgeId, ConnInfo, ConnectionId, Dial};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The most a connection reads at once.
const MAX_READ: usize = 64 * 1024;
/// How long a TLS or WebSocket handshake may take.
const HANDSHAKE_TIMEOUT: StdDuration = StdDuration::from_secs(10);
/// How long a closed connection is read and discarded from before it is dropped (see
/// `linger`).
const LINGER: StdDuration = StdDuration::from_secs(2);

thread_local! {
    /// What every connection on this thread reads into: what was read is copied out at
    /// its size, so an idle connection holds no buffer.
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; MAX_READ].into_boxed_slice());
}

/// What a listener speaks on top of TCP.
#[derive(Clone)]
pub enum Transport {
    /// MQTT directly over TCP.
    Tcp,
    /// MQTT over TLS.
    Tls(TlsAcceptor),
    /// MQTT over WebSocket (binary frames, subprotocol `mqtt`, path `/mqtt`).
    Ws,
    /// MQTT over WebSocket over TLS.
    Wss(TlsAcceptor),
}

impl Transport {
    /// The name printed for a listener: `tcp`, `tls`, `ws` or `wss`.
    pub fn name(&self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls(_) => "tls",
            Transport::Ws => "ws",
            Transport::Wss(_) => "wss",
        }
    }
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// From a connection task to the core's owner.
pub(crate) enum ToCore {
    /// A connection was accepted; the core answers with its id.
    Open {
        tx: Arc<Outbox>,
        info: Option<Box<ConnInfo>>,
        reply: oneshot::Sender<ConnectionId>,
        /// The bridge whose remote leg this is, for a connection the server dialled.
        bridge: Option<BridgeId>,
    },
    /// A dial for a bridge failed: the core tries again later.
    DialFailed(BridgeId),
    /// Bytes arrived.
    Input(ConnectionId, Bytes),
    /// The transport is gone (peer closed, error, or after a close).
    Closed(ConnectionId),
}

/// What the connection tasks share with the core's owner.
pub(crate) struct Shared {
    /// Wakes the core's owner (a `tokio::sync::Notify`, a `mio::Waker`, ...).
    notify: Box<dyn Fn() + Send + Sync>,
    /// Set once messages may be waiting, so that a burst of them wakes the owner once; the
    /// owner clears it before it takes them.
    pub(crate) pending: AtomicBool,
    /// Connections whose task took its output after the owner held back: the owner pulls
    /// their next output from the core.
    pub(crate) writable: Mutex<Vec<ConnectionId>>,
    /// Connection tasks alive, handshakes and lingering included: a server that stops
    /// waits for them to write their last bytes.
    pub(crate) tasks: AtomicUsize,
}

/// Counts a connection task as alive while it exists.
struct Alive(Arc<Shared>);

impl Alive {
    fn new(shared: &Arc<Shared>) -> Self {
        shared.tasks.fetch_add(1, Ordering::AcqRel);
        Alive(shared.clone())
    }
}

impl Drop for Alive {
    fn drop(&mut self) {
        if self.0.tasks.fetch_sub(1, Ordering::AcqRel) == 1 {
            // The last one: a stopping server waits for this.
            (self.0.notify)();
        }
    }
}

impl Shared {
    pub(crate) fn new(notify: Box<dyn Fn() + Send + Sync>) -> Self {
        Self {
            notify,
            pending: AtomicBool::new(false),
            writable: Mutex::new(Vec::new()),
            tasks: AtomicUsize::new(0),
        }
    }

    pub(crate) fn notify(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            (self.notify)();
        }
    }
}

/// Serves connections for a [`super::Hub`]: cloneable and `Send`, for the tasks that
/// accept connections.
///
/// Each connection is a task that registers with the core (through the hub), forwards
/// what it reads, and writes what the hub leaves in its outbox. A hub that falls behind
/// slows the readers down (the channel is bounded); a connection the core pauses is not
/// read; a client that does not take its output is closed once `write_queue` deliveries
/// wait for it.
#[derive(Clone)]
pub struct Acceptor {
    pub(crate) tx: mpsc::Sender<ToCore>,
    pub(crate) shared: Arc<Shared>,
    /// Pass the peer's address (and TLS identity) to the core ([`ConnInfo`]).
    pub(crate) conn_info: bool,
}

impl std::fmt::Debug for Acceptor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Acceptor")
            .field("conn_info", &self.conn_info)
            .finish_non_exhaustive()
    }
}

impl Acceptor {
    /// Accepts connections on `listener` speaking `transport`, a task each, until the hub
    /// is gone. Accept errors (EMFILE and friends) pause accepting for 100 ms instead of
    /// spinning.
    pub async fn listen(self, listener: TcpListener, transport: Transport) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!("accept: {e}");
                    tokio::time::sleep(StdDuration::from_millis(100)).await;
                    continue;
                }
            };
            if self.tx.is_closed() {
                return;
            }
            let _ = stream.set_nodelay(true);
            self.spawn(stream, peer, &transport);
        }
    }

    /// Serves one accepted TCP connection speaking `transport` on a task of its own.
    pub fn spawn(&self, stream: tokio::net::TcpStream, peer: SocketAddr, transport: &Transport) {
        let this = self.clone();
        let alive = Alive::new(&self.shared);
        match transport {
            Transport::Tcp => {
                let serve = this.serve(stream, peer, None);
                tokio::spawn(async move {
                    serve.await;
                    drop(alive);
                });
            }
            Transport::Ws => {
                tokio::spawn(async move {
                    this.serve_ws(stream, peer, None).await;
                    drop(alive);
                });
            }
            Transport::Tls(tls) => {
                let tls = tls.clone();
                tokio::spawn(async move {
                    this.serve_tls(tls, stream, false, peer).await;
                    drop(alive);
                });
            }
            Transport::Wss(tls) => {
                let tls = tls.clone();
                tokio::spawn(async move {
                    this.serve_tls(tls, stream, true, peer).await;
                    drop(alive);
                });
            }
        }
    }

    /// Dials a bridge's remote broker for the core ([`mqtt_broker::Broker::poll_dial`]) on a
    /// task of its own, then serves the connection like an accepted one; a failure goes
    /// back to the core, which dials again later.
    pub(crate) fn dial(&self, runtime: &tokio::runtime::Handle, dial: Dial, remote: Remote) {
        let this = self.clone();
        let alive = Alive::new(&self.shared);
        runtime.spawn(async move {
            let bridge = dial.bridge;
            match connect(&dial.address, &remote).await {
                Ok((stream, peer)) => {
                    tracing::info!(%peer, address = %dial.address, "bridge connected");
                    this.serve_as(stream, peer, None, Some(bridge)).await;
                }
                Err(e) => {
                    tracing::warn!(address = %dial.address, "bridge: {e}");
                    let _ = this.send(ToCore::DialFailed(bridge)).await;
                }
            }
            drop(alive);
        });
    }

    /// Sends `msg`, waiting for room; `Err` when the hub is gone.
    async fn send(&self, msg: ToCore) -> Result<(), ()> {
        self.tx.send(msg).await.map_err(drop)?;
        self.shared.notify();
        Ok(())
    }

    /// Sends `msg` if there is room at once.
    fn try_send(&self, msg: ToCore) -> Result<(), ToCore> {
        self.tx.try_send(msg).map_err(|e| e.into_inner())?;
        self.shared.notify();
        Ok(())
    }

    /// A TLS connection: the handshake, then MQTT over TCP or WebSocket inside it.
    async fn serve_tls(
        self,
        tls: TlsAcceptor,
        stream: tokio::net::TcpStream,
        websocket: bool,
        peer: SocketAddr,
    ) {
        let Some(stream) = handshake(peer, "tls", tls.accept(stream)).await else {
            return;
        };
        let identity = if self.conn_info {
            stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|c| c.first())
                .map(|c| tls_identity(c.as_ref()))
        } else {
            None
        };
        if websocket {
            self.serve_ws(stream, peer, identity).await
        } else {
            self.serve(stream, peer, identity).await
        }
    }

    /// Registers a connection with the core; `None` when the hub is gone.
    async fn open(
        self,
        peer: SocketAddr,
        identity: Option<String>,
        bridge: Option<BridgeId>,
    ) -> Option<(ConnectionId, Arc<Outbox>)> {
        let outbox = Arc::new(Outbox::default());
        let (reply, id) = oneshot::channel();
        let info = self.conn_info.then(|| {
            Box::new(ConnInfo {
                peer: Some(peer),
                tls_identity: identity,
            })
        });
        self.send(ToCore::Open {
            tx: outbox.clone(),
            info,
            reply,
            bridge,
        })
        .await
        .ok()?;
        let id = id.await.ok()?;
        tracing::debug!(%peer, ?id, "open");
        Some((id, outbox))
    }

    /// Runs MQTT over a byte stream (TCP or TLS) in one task: writes what the core queues
    /// and reads whatever arrives meanwhile, so a client that writes without reading
    /// cannot stall its own output.
    ///
    /// The task lives as long as the connection, and a task is as large as the most it
    /// holds across any one `.await`: what it awaits only now and then (the registration
    /// with the core, room in the channel, the closing) is boxed.
    fn serve<S>(
        self,
        stream: S,
        peer: SocketAddr,
        identity: Option<String>,
    ) -> impl Future<Output = ()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        self.serve_as(stream, peer, identity, None)
    }

    /// [`Acceptor::serve`] for a connection accepted (`bridge: None`) or dialled for a
    /// bridge.
    fn serve_as<S>(
        self,
        mut stream: S,
        peer: SocketAddr,
        identity: Option<String>,
        bridge: Option<BridgeId>,
    ) -> impl Future<Output = ()>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let opening = Box::pin(self.clone().open(peer, identity, bridge));
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
                    // Paused by the core: the client's bytes wait in the socket.
                    if outbox.poll_read_allowed(cx).is_pending() {
                        return Poll::Pending;
                    }
                    poll_read_in(&mut stream, cx)
                });
                let bytes = match step.await {
                    Step::Input(bytes) => bytes,
                    Step::Done => break,
                };
                let Err(msg) = self.try_send(ToCore::Input(id, bytes)) else {
                    continue;
                };
                if Box::pin(self.send(msg)).await.is_err() {
                    break;
                }
            }
            outbox.log_end(peer);
            // The hub sees a dropped outbox as gone and stops queueing.
            drop(outbox);
            Box::pin(linger(&mut stream)).await;
            let _ = Box::pin(self.send(ToCore::Closed(id))).await;
        }
    }

    /// Runs a WebSocket connection (over TCP or TLS): the handshake, then binary frames
    /// both ways.
    async fn serve_ws<S>(self, stream: S, peer: SocketAddr, identity: Option<String>)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let accept = tokio_tungstenite::accept_hdr_async(stream, ws_handshake);
        let Some(ws) = handshake(peer, "websocket", accept).await else {
            return;
        };
        let Some((id, outbox)) = self.clone().open(peer, identity, None).await else {
            return;
        };
        let (mut sink, mut stream) = ws.split();
        let reader_tx = self.clone();
        let reader_outbox = outbox.clone();
        let mut reader = tokio::spawn(async move {
            loop {
                // Paused by the core: the client's frames wait in the socket.
                std::future::poll_fn(|cx| reader_outbox.poll_read_allowed(cx)).await;
                let Some(Ok(msg)) = stream.next().await else {
                    break;
                };
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
            drop(reader_outbox);
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
        if tokio::time::timeout(LINGER, &mut reader).await.is_err() {
            reader.abort();
        }
        let _ = self.send(ToCore::Closed(id)).await;
    }
}

/// How the server reaches a bridge's remote broker ([`super::Server::bridge`],
/// [`super::Hub::remote`]).
#[derive(Clone, Default)]
pub struct Remote {
    /// TLS with this configuration (see [`crate::tls_config`]); `None`: plain TCP.
    pub tls: Option<Arc<tokio_rustls::rustls::ClientConfig>>,
    /// The name the remote's certificate must carry; `None`: the host of the address.
    pub server_name: Option<String>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("tls", &self.tls.is_some())
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// A byte stream to a remote broker: TCP, or TLS over it.
trait RemoteIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> RemoteIo for T {}

/// Opens a connection to `address` (`host:port`) as `remote` says, within
/// [`HANDSHAKE_TIMEOUT`] for each step.
async fn connect(
    address: &str,
    remote: &Remote,
) -> std::io::Result<(Box<dyn RemoteIo>, SocketAddr)> {
    use std::io::{Error, ErrorKind};
    let timed_out = |what: &str| Error::new(ErrorKind::TimedOut, format!("{address}: {what}"));
    let tcp = tokio::time::timeout(HANDSHAKE_TIMEOUT, tokio::net::TcpStream::connect(address))
        .await
        .map_err(|_| timed_out("connect timed out"))?
        .map_err(|e| Error::new(e.kind(), format!("connecting to {address}: {e}")))?;
    tcp.set_nodelay(true)?;
    let peer = tcp.peer_addr()?;
    let Some(config) = &remote.tls else {
        return Ok((Box::new(tcp), peer));
    };
    let host = match &remote.server_name {
        Some(n) => n.clone(),
        None => address
            .rsplit_once(':')
            .map_or(address, |(h, _)| h)
            .trim_matches(['[', ']'])
            .to_owned(),
    };
    let name = tokio_rustls::rustls::pki_types::ServerName::try_from(host)
        .map_err(|e| Error::new(ErrorKind::InvalidInput, format!("{address}: {e}")))?;
    let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
    let tls = tokio::time::timeout(HANDSHAKE_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| timed_out("TLS handshake timed out"))?
        .map_err(|e| Error::new(e.kind(), format!("{address}: TLS: {e}")))?;
    Ok((Box::new(tls), peer))
}

/// A TLS or WebSocket handshake within [`HANDSHAKE_TIMEOUT`]; `None` (logged) when it
/// fails or takes longer.
async fn handshake<T, E: std::fmt::Display>(
    peer: SocketAddr,
    what: &str,
    handshake: impl Future<Output = Result<T, E>>,
) -> Option<T> {
    match tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake).await {
        Ok(Ok(done)) => Some(done),
        Ok(Err(e)) => {
            tracing::debug!(%peer, "{what} handshake: {e}");
            None
        }
        Err(_) => {
            tracing::debug!(%peer, "{what} handshake timed out");
            None
        }
    }
}

/// A client certificate's identity for [`ConnInfo::tls_identity`]: `sha256:` and the hex
/// SHA-256 of its DER, the fingerprint that certificate pinning and ACLs by fingerprint
/// use (this crate parses no X.509, so no subject).
fn tls_identity(der: &[u8]) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, der);
    let mut s = String::with_capacity(7 + 64);
    s.push_str("sha256:");
    for b in digest.as_ref() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// Output from the core to one connection: the bytes its task has not yet taken, behind a
/// lock the hub and the task share. An idle connection's outbox holds no buffer: the task
/// takes the bytes whole and lets go of them once written.
#[derive(Default)]
pub(crate) struct Outbox(Mutex<Pending>);

#[derive(Default)]
pub(crate) struct Pending {
    bytes: BytesMut,
    /// Deliveries in `bytes`, which `write_queue` bounds.
    chunks: usize,
    /// Write what is queued, then close.
    closing: bool,
    /// Close at once, without writing even what the task has taken.
    discard: bool,
    /// Closed for not reading: for the task to log, as it knows the peer's address.
    slow: bool,
    /// The connection's task, waiting for output.
    waker: Option<Waker>,
    /// The core paused this connection: its task stops reading.
    read_paused: bool,
    /// The task that reads, waiting for the pause to end.
    read_waker: Option<Waker>,
    /// The hub left output in the core because the task had not taken the last: the task
    /// tells the hub (`ready`) when it takes it.
    starved: bool,
    /// The connection's id and the hub's shared state, set once the core opened it.
    pub(crate) ready: Option<(ConnectionId, Arc<Shared>)>,
}

/// Why a chunk could not be queued.
pub(crate) enum Refused {
    /// The client has not read what came before.
    Full,
    /// The connection's task is gone; its `Closed` is on its way.
    Gone,
}

impl Outbox {
    pub(crate) fn lock(&self) -> MutexGuard<'_, Pending> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues `chunk` unless `limit` chunks are already waiting or the task is gone.
    pub(crate) fn push(self: &Arc<Self>, chunk: &[u8], limit: usize) -> Result<(), Refused> {
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

    /// Whether the hub should leave output in the core for now: the task has not taken
    /// what was queued before, so the client (or its socket) is behind. The messages then
    /// wait in the core, whose queue limit pauses their publishers; the task tells the hub
    /// when it takes the bytes (see `poll_take`).
    pub(crate) fn hold_back(&self) -> bool {
        let mut p = self.lock();
        if p.chunks > 0 && !p.closing {
            p.starved = true;
            return true;
        }
        false
    }

    /// Tells the task to stop after what is queued, or, with `discard`, at once: a client
    /// that stopped reading is not waited for.
    pub(crate) fn close(&self, discard: bool) {
        let mut p = self.lock();
        if discard {
            p.bytes = BytesMut::new();
            p.discard = true;
        }
        p.closing = true;
        // A paused reader must see the close too.
        let read_waker = p.read_waker.take();
        wake(p);
        if let Some(w) = read_waker {
            w.wake();
        }
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
            let bytes = std::mem::take(&mut p.bytes);
            if std::mem::take(&mut p.starved) {
                if let Some((id, shared)) = p.ready.clone() {
                    drop(p);
                    shared
                        .writable
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .push(id);
                    shared.notify();
                }
            }
            return Poll::Ready(Some(bytes));
        }
        if idle && p.closing {
            return Poll::Ready(None);
        }
        if !p.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            p.waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    /// Pauses or resumes reading ([`mqtt_broker::BrokerEvent::Pause`] and `Resume`).
    pub(crate) fn set_read_paused(&self, paused: bool) {
        let mut p = self.lock();
        p.read_paused = paused;
        if !paused {
            let waker = p.read_waker.take();
            drop(p);
            if let Some(w) = waker {
                w.wake();
            }
        }
    }

    /// Ready when the connection may be read (or is to close).
    fn poll_read_allowed(&self, cx: &mut Context<'_>) -> Poll<()> {
        let mut p = self.lock();
        if !p.read_paused || p.closing {
            return Poll::Ready(());
        }
        if !p
            .read_waker
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            p.read_waker = Some(cx.waker().clone());
        }
        Poll::Pending
    }

    async fn take(&self) -> Option<BytesMut> {
        std::future::poll_fn(|cx| self.poll_take(cx, true)).await
    }

    /// Logs why the connection ended, if it is worth a warning.
    fn log_end(&self, peer: SocketAddr) {
        if self.lock().slow {
            tracing::warn!(%peer, "client not reading; disconnecting");
        }
    }
}

/// Wakes the connection's task, after letting go of the lock.
fn wake(mut p: MutexGuard<'_, Pending>) {
    let waker = p.waker.take();
    drop(p);
    if let Some(waker) = waker {
        waker.wake();
    }
}

/// What a connection's task does next.
enum Step {
    /// Forward these bytes to the core.
    Input(Bytes),
    /// The peer closed, the transport failed, or the core closed the connection.
    Done,
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
    let _ = tokio::time::timeout(LINGER, discard).await;
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
