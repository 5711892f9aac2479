//! A broker server: the sans-IO [`mqtt_broker::Broker`] core served over tokio listeners
//! (TCP, TLS, WebSocket, secure WebSocket), with its deferred decisions answered by async
//! functions.
//!
//! ```no_run
//! use mqtt_tokio::server::{Answer, Server, Transport};
//! use mqtt_tokio::broker::{BrokerConfig, DeferAll, RequestKind};
//! use mqtt_tokio::ReasonCode;
//!
//! # async fn run() -> std::io::Result<()> {
//! // Every decision deferred to `decide`: logins checked without stalling anyone else.
//! let mut server = Server::new(BrokerConfig::default(), DeferAll);
//! server.bind("127.0.0.1:1883", Transport::Tcp).await?;
//! server.bind("127.0.0.1:8080", Transport::Ws).await?;
//! server.decide(|decision| async move {
//!     match decision.request.kind {
//!         RequestKind::Authenticate { username, password } => {
//!             // A password hash, a directory lookup...
//!             match (username.as_deref(), password.as_deref()) {
//!                 (Some("alice"), Some(b"secret")) => Answer::Allow,
//!                 _ => Answer::Deny(ReasonCode::BadUserNameOrPassword),
//!             }
//!         }
//!         _ => Answer::Allow,
//!     }
//! });
//! server.run(async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```
//!
//! # Design
//!
//! One task owns the core (it is `&mut self` and single-threaded by design): the future
//! [`Server::run`] returns. Each connection is a task of its own that reads its socket and
//! sends what it read to the core over a bounded channel, and writes what the core leaves
//! in its outbox; the [`Hub`] is the core's end of that. A connection whose task has not
//! taken its last output gets no more: its messages wait in the core, whose queue limits
//! pause their publishers (the core's backpressure, [`mqtt_broker::BrokerConfig`]), so
//! nothing acknowledged is dropped and memory stays bounded.
//!
//! Decisions the hooks defer ([`mqtt_broker::Verdict::Defer`]) go to the function given
//! to [`Server::decide`], a task each; other connections keep flowing meanwhile, and an
//! answer that comes after the core's decision timeout is ignored (the core has answered
//! with its stated reason). [`ServerHandle`] reaches the core from other tasks: publish
//! from the server, disconnect a client, list sessions, or anything
//! [`ServerHandle::call`] does with `&mut Broker`.
//!
//! # The run loop
//!
//! After every wake-up (a connection task's message, a decision's answer, a call from a
//! handle, the core's deadline), the core task:
//!
//! 1. handles the core's timers if due (keep alive, session expiry, wills, `$SYS`);
//! 2. takes what the connection tasks sent ([`Hub::poll`], up to 1024 messages before it
//!    yields to the runtime), the answers and the calls;
//! 3. after each, drains the core: requests go to the decision function, events to the
//!    hub ([`Hub::handle_event`]), which hands output to the connections' outboxes;
//! 4. with a store (`Server::store`, feature `store`), commits what the turn changed
//!    (with `Persistence::Sync` before any output that depends on it goes out);
//! 5. waits for the next wake-up or [`mqtt_broker::Broker::poll_timeout`].
//!
//! # Memory per connection
//!
//! A connection is a tokio task, a socket registration and an outbox besides its state in
//! the core: 1,668 bytes per idle plain TCP connection with 10,000 held (with
//! [`HubConfig::conn_info`], about 250 of them), against 387 for the example broker's mio
//! loop (`examples/bench/server_memory.sh` in the repository). A program whose
//! connections are mostly idle plain TCP can serve those from a readiness loop of its own
//! and the rest through a [`Hub`], as the example broker does.

mod hub;
mod link;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::Arc;

use bytes::Bytes;
use mqtt_broker::{
    AllowAll, Broker, BrokerConfig, ConnInfo, ConnectionId, Hooks, Request, RequestId, RequestKind,
};
use mqtt_state::codec::{ProtocolVersion, ReasonCode};
use mqtt_state::{Instant, Message};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::{mpsc, oneshot, Notify};

use crate::{Clock, Error};

pub use hub::{Hub, HubConfig};
pub use link::{Acceptor, Remote, Transport};

/// Messages from the connection tasks taken before the core task yields to the runtime.
const MESSAGES_PER_TURN: usize = 1024;
/// How long, after shutdown, the connections have to take their last output (a
/// DISCONNECT with Server shutting down).
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// A deferred decision, as [`Server::decide`]'s function gets it: the core's request and
/// who asks.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Decision {
    /// The request: its id, connection and what is to be decided.
    pub request: Request,
    /// The client identifier (empty while a CONNECT that left it to the server is
    /// authenticated).
    pub client_id: String,
    /// The user name of the CONNECT, if any.
    pub username: Option<String>,
    /// The client's protocol version.
    pub protocol: ProtocolVersion,
    /// The peer's address and TLS client certificate identity
    /// ([`HubConfig::conn_info`]).
    pub info: ConnInfo,
}

/// The answer to a [`Decision`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Answer {
    /// Allowed.
    Allow,
    /// Refused with this reason code (CONNACK, PUBACK/PUBREC or SUBACK; 3.1.1 clients get
    /// the nearest return code).
    Deny(ReasonCode),
    /// Refused with this reason code and, to a 5.0 client, a reason string.
    DenyWith(ReasonCode, String),
    /// Enhanced authentication ([`RequestKind::Auth`]): send this challenge and wait for
    /// the client's answer, which comes back as a new decision.
    Challenge(Bytes),
}

type Decide =
    Arc<dyn Fn(Decision) -> std::pin::Pin<Box<dyn Future<Output = Answer> + Send>> + Send + Sync>;
type Call<H> = Box<dyn FnOnce(&mut Broker<H>, Instant) + Send>;

/// A broker core served over tokio listeners. See the [module docs](self).
pub struct Server<H: Hooks = AllowAll> {
    broker: Broker<H>,
    clock: Clock,
    hub: Hub,
    acceptor: Acceptor,
    notify: Arc<Notify>,
    decide: Option<Decide>,
    answers_tx: std::sync::mpsc::Sender<(RequestId, Answer)>,
    answers: std::sync::mpsc::Receiver<(RequestId, Answer)>,
    calls_tx: mpsc::Sender<Call<H>>,
    calls: mpsc::Receiver<Call<H>>,
    listeners: Vec<(TcpListener, Transport)>,
    #[cfg(feature = "store")]
    durable: Option<Durable>,
}

/// The server's store and what it has not written yet.
#[cfg(feature = "store")]
struct Durable {
    /// `None` only while a commit runs on the blocking pool.
    store: Option<Box<dyn crate::store::Store>>,
    /// Operations taken from the core and not written yet, and the last batch among them.
    ops: Vec<mqtt_broker::StoreOp>,
    spare: Vec<mqtt_broker::StoreOp>,
    batch: Option<mqtt_broker::Batch>,
    /// The commit on its way (one at a time): its last batch, and where its result comes.
    in_flight: Option<(mqtt_broker::Batch, oneshot::Receiver<Committed>)>,
    /// With [`mqtt_broker::Persistence::Eventual`]: how far apart commits are at most,
    /// and when the last one was.
    every: std::time::Duration,
    last: tokio::time::Instant,
}

/// What a commit on the blocking pool gives back: the store, the buffer (the core task
/// empties it), the result.
#[cfg(feature = "store")]
type Committed = (
    Box<dyn crate::store::Store>,
    Vec<mqtt_broker::StoreOp>,
    Result<(), Error>,
);

impl<H: Hooks> std::fmt::Debug for Server<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("hub", &self.hub)
            .field("listeners", &self.listeners.len())
            .finish_non_exhaustive()
    }
}

impl<H: Hooks + 'static> Server<H> {
    /// A server for a new core with `config` and `hooks` (the synchronous policy; a hook
    /// that answers [`mqtt_broker::Verdict::Defer`] sends the question to
    /// [`Server::decide`]).
    pub fn new(config: BrokerConfig, hooks: H) -> Self {
        Self::with_hub_config(config, hooks, HubConfig::default())
    }

    /// [`Server::new`] with settings for the connection tasks.
    pub fn with_hub_config(config: BrokerConfig, hooks: H, hub_config: HubConfig) -> Self {
        let clock = Clock::new();
        let notify = Arc::new(Notify::new());
        let n = notify.clone();
        let (hub, acceptor) = Hub::new(move || n.notify_one(), hub_config);
        let (answers_tx, answers) = std::sync::mpsc::channel();
        let (calls_tx, calls) = mpsc::channel(64);
        Self {
            broker: Broker::with_hooks(config, hooks, clock.now()),
            clock,
            hub,
            acceptor,
            notify,
            decide: None,
            answers_tx,
            answers,
            calls_tx,
            calls,
            listeners: Vec::new(),
            #[cfg(feature = "store")]
            durable: None,
        }
    }

    /// Makes the core durable on `store` (feature `store`): [`Server::run`] first restores
    /// the core from it ([`crate::store::restore`]; the clock resumes where the stored
    /// one stopped, plus the downtime) and then writes what the core asks to store, as
    /// [`BrokerConfig::persistence`] says:
    ///
    /// - [`mqtt_broker::Persistence::Sync`]: after every turn of the loop, one commit of
    ///   everything the turn changed (group commit), and only then does the output that
    ///   depends on it (acknowledgements, SUBACK, deliveries) go out: acknowledged means
    ///   on disk.
    /// - [`mqtt_broker::Persistence::Eventual`]: a commit at most
    ///   [`Server::commit_interval`] (100 ms by default) after a change; output is not
    ///   held, so a crash loses what was acknowledged since the last commit.
    /// - [`mqtt_broker::Persistence::Off`]: restored at start, never written.
    ///
    /// Commits run on tokio's blocking pool (`spawn_blocking`, so a current-thread runtime
    /// works too), one at a time, while the core task goes on serving: what it takes in
    /// meanwhile goes into the next commit (group commit). A store error stops
    /// the server with that error: promises could no longer be kept. On shutdown, what
    /// remains is committed before `run` returns.
    #[cfg(feature = "store")]
    #[cfg_attr(docsrs, doc(cfg(feature = "store")))]
    pub fn store(&mut self, store: impl crate::store::Store) {
        self.durable = Some(Durable {
            store: Some(Box::new(store)),
            ops: Vec::new(),
            spare: Vec::new(),
            batch: None,
            in_flight: None,
            every: std::time::Duration::from_millis(100),
            last: tokio::time::Instant::now(),
        });
    }

    /// With [`mqtt_broker::Persistence::Eventual`], the longest time between a change
    /// and its commit (after [`Server::store`]).
    #[cfg(feature = "store")]
    #[cfg_attr(docsrs, doc(cfg(feature = "store")))]
    pub fn commit_interval(&mut self, every: std::time::Duration) {
        if let Some(d) = &mut self.durable {
            d.every = every;
        }
    }

    /// Listens on `addr` for connections speaking `transport`; the address bound (so
    /// port 0 picks a free port).
    pub async fn bind(
        &mut self,
        addr: impl ToSocketAddrs,
        transport: Transport,
    ) -> io::Result<SocketAddr> {
        let listener = TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        self.listeners.push((listener, transport));
        Ok(local)
    }

    /// Serves connections from `listener`, bound elsewhere (systemd socket activation, a
    /// listener shared with another program part).
    pub fn listener(&mut self, listener: TcpListener, transport: Transport) {
        self.listeners.push((listener, transport));
    }

    /// Answers the decisions the hooks defer with `decide`, run as a task per decision.
    /// Without it they are refused with Implementation specific error.
    pub fn decide<F, Fut>(&mut self, decide: F)
    where
        F: Fn(Decision) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Answer> + Send + 'static,
    {
        self.decide = Some(Arc::new(move |d| Box::pin(decide(d))));
    }

    /// A handle that reaches the core from other tasks while [`Server::run`] runs.
    pub fn handle(&self) -> ServerHandle<H> {
        ServerHandle {
            calls: self.calls_tx.clone(),
            notify: self.notify.clone(),
        }
    }

    /// Adds a bridge to a remote broker ([`mqtt_broker::BridgeConfig`]), reached as
    /// `remote` says (TLS or plain TCP): the server dials it once it runs, and again after
    /// each failure or close, with a growing delay.
    ///
    /// ```no_run
    /// use mqtt_tokio::broker::{BridgeConfig, BridgeTopic, Direction, BrokerConfig, AllowAll};
    /// use mqtt_tokio::server::{Remote, Server};
    /// use mqtt_tokio::{ProtocolVersion, QoS};
    ///
    /// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
    /// let mut server = Server::new(BrokerConfig::default(), AllowAll);
    /// server.bind("127.0.0.1:1883", mqtt_tokio::server::Transport::Tcp).await?;
    /// // Local `sensors/#` goes to the cloud broker as `site1/sensors/#`; its
    /// // `site1/cmd/#` comes back as `cmd/#`.
    /// let bridge = BridgeConfig::new("cloud", "cloud.example:1883", ProtocolVersion::V5)
    ///     .topic(BridgeTopic::new("sensors/#", Direction::Out, QoS::AtLeastOnce)
    ///         .with_prefixes("", "site1/"))
    ///     .topic(BridgeTopic::new("cmd/#", Direction::In, QoS::AtLeastOnce)
    ///         .with_prefixes("", "site1/"));
    /// server.bridge(bridge, Remote::default())?;
    /// server.run(std::future::pending()).await?;
    /// # Ok(()) }
    /// ```
    pub fn bridge(
        &mut self,
        config: mqtt_broker::BridgeConfig,
        remote: Remote,
    ) -> Result<mqtt_broker::BridgeId, Error> {
        let now = self.clock.now();
        let id = self
            .broker
            .add_bridge(now, config)
            .map_err(|e| Error::Options(e.to_string()))?;
        self.hub.remote(id, remote);
        Ok(id)
    }

    /// The acceptor of the server's connections, for sockets accepted elsewhere
    /// ([`Acceptor::spawn`]).
    pub fn acceptor(&self) -> Acceptor {
        self.acceptor.clone()
    }

    /// The core, before [`Server::run`] takes it.
    pub fn broker(&mut self) -> &mut Broker<H> {
        &mut self.broker
    }

    /// The clock that converts between tokio's time and the core's. With a store
    /// ([`Server::store`]), [`Server::run`] starts another one, resumed where the stored
    /// clock stopped.
    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// Serves until `shutdown` completes, then stops accepting, shuts the core down (5.0
    /// clients get a DISCONNECT with Server shutting down, wills of connected clients go
    /// out as the standard says) and returns once every connection task has written its
    /// last output and ended, or after a grace of 2 s.
    ///
    /// Runs on the calling task; the connection and decision tasks are spawned on the
    /// current runtime.
    ///
    /// With a store ([`Server::store`]), a store that cannot be read (damaged, from a
    /// newer version, in use) is an error before anything is served, and a store error
    /// while serving stops the server with it: an [`io::Error`] of kind `Other` whose
    /// inner error is the [`Error`].
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        #[cfg(feature = "store")]
        self.restore().map_err(io::Error::other)?;
        let result = self.serve(shutdown).await;
        #[cfg(feature = "store")]
        if result.is_ok() {
            // What the last turns changed (the shutdown's wills, say).
            self.commit_rest().await.map_err(io::Error::other)?;
        }
        result
    }

    async fn serve(&mut self, shutdown: impl Future<Output = ()>) -> io::Result<()> {
        let listening: Vec<_> = std::mem::take(&mut self.listeners)
            .into_iter()
            .map(|(listener, transport)| {
                tokio::spawn(self.acceptor.clone().listen(listener, transport))
            })
            .collect();
        let mut shutdown = pin!(shutdown);
        let mut stopping: Option<tokio::time::Instant> = None;
        loop {
            let now = self.clock.now();
            if self.broker.poll_timeout().is_some_and(|t| t <= now) {
                self.broker.handle_timeout(now);
            }
            self.drain(now);
            let mut more = false;
            for i in 0..MESSAGES_PER_TURN {
                if !self.hub.poll(&mut self.broker, now) {
                    break;
                }
                self.drain(now);
                more = i + 1 == MESSAGES_PER_TURN;
            }
            while let Ok((id, answer)) = self.answers.try_recv() {
                // Err: answered after its timeout, or the client left.
                let _ = match answer {
                    Answer::Allow => self.broker.accept(now, id),
                    Answer::Deny(code) => self.broker.reject(now, id, code, None),
                    Answer::DenyWith(code, why) => self.broker.reject(now, id, code, Some(&why)),
                    Answer::Challenge(data) => self.broker.challenge(now, id, data),
                };
                self.drain(now);
            }
            while let Ok(call) = self.calls.try_recv() {
                call(&mut self.broker, now);
                self.drain(now);
            }
            // A commit done hands out the output that waited for it; then what the core
            // changed since goes to the store, unless a commit is on its way (its end
            // notifies).
            #[cfg(feature = "store")]
            if let Err(e) = self.take_committed().and_then(|()| self.commit(false)) {
                tracing::error!("store: {e}; stopping");
                for l in &listening {
                    l.abort();
                }
                return Err(io::Error::other(e));
            }
            if let Some(until) = stopping {
                let done = self.hub.is_empty() && self.hub.tasks() == 0;
                if done || tokio::time::Instant::now() >= until {
                    return Ok(());
                }
            }
            if more {
                tokio::task::yield_now().await;
                continue;
            }
            let deadline = self.broker.poll_timeout().map(|t| self.clock.to_tokio(t));
            #[cfg(feature = "store")]
            let commit_at = {
                let pending = self.broker.has_store_ops();
                self.durable.as_ref().and_then(|d| {
                    let due = (pending || d.batch.is_some()) && d.in_flight.is_none();
                    due.then_some(d.last + d.every)
                })
            };
            #[cfg(not(feature = "store"))]
            let commit_at: Option<tokio::time::Instant> = None;
            tokio::select! {
                _ = sleep_until(commit_at), if commit_at.is_some() => {}
                _ = self.notify.notified() => {}
                _ = sleep_until(deadline), if deadline.is_some() => {}
                _ = sleep_until(stopping), if stopping.is_some() => {}
                _ = &mut shutdown, if stopping.is_none() => {
                    tracing::info!("shutting down");
                    for l in &listening {
                        l.abort();
                    }
                    self.broker.shutdown(self.clock.now());
                    stopping = Some(tokio::time::Instant::now() + SHUTDOWN_GRACE);
                }
            }
        }
    }

    /// Restores the core from the store, if there is one, and starts the clock where the
    /// stored one stopped.
    #[cfg(feature = "store")]
    fn restore(&mut self) -> Result<(), Error> {
        let Some(store) = self.durable.as_mut().and_then(|d| d.store.as_mut()) else {
            return Ok(());
        };
        if self.broker.config().persistence == mqtt_broker::Persistence::Off {
            tracing::warn!("a store and Persistence::Off: restored, never written");
        }
        // Blocking, on this task: nothing is served before it is done.
        let loaded = crate::store::restore(&mut self.broker, &mut **store)?;
        tracing::info!(entries = loaded.entries, "restored");
        self.clock = Clock::resuming_at(loaded.resume_at);
        Ok(())
    }

    /// Takes what the core has for the store and, if no commit is on its way, starts one
    /// if it is time: every turn with `Persistence::Sync`, every
    /// [`Server::commit_interval`] with `Eventual`, at once when `all` (at the end).
    #[cfg(feature = "store")]
    fn commit(&mut self, all: bool) -> Result<(), Error> {
        let Some(d) = self.durable.as_mut() else {
            return Ok(());
        };
        // Polled only when it can be sent: until then the operations stay in the core,
        // which drops a message put and acknowledged meanwhile from the batch.
        if d.in_flight.is_some() {
            return Ok(());
        }
        let sync = self.broker.config().persistence == mqtt_broker::Persistence::Sync;
        if !(all || sync || tokio::time::Instant::now() >= d.last + d.every) {
            return Ok(());
        }
        if let Some(batch) = self.broker.poll_store(&mut d.ops) {
            d.batch = Some(batch);
        }
        let Some(batch) = d.batch else {
            return Ok(());
        };
        let Some(mut store) = d.store.take() else {
            return Err(Error::Store("the store failed before".into()));
        };
        let ops = std::mem::replace(&mut d.ops, std::mem::take(&mut d.spare));
        let now = self.clock.now();
        let (tx, rx) = oneshot::channel();
        let notify = self.notify.clone();
        // fsync takes milliseconds: on the blocking pool, not on a runtime thread (and
        // `block_in_place` would panic on a current-thread runtime). The result is sent
        // before the core task is woken, so that it finds it.
        tokio::task::spawn_blocking(move || {
            let result = store.commit(&ops, now);
            // Emptied by the core task, which allocated what it holds (see `committed`).
            let _ = tx.send((store, ops, result));
            notify.notify_one();
        });
        d.in_flight = Some((batch, rx));
        d.batch = None;
        d.last = tokio::time::Instant::now();
        Ok(())
    }

    /// If the commit on its way is done, hands out the output that waited for it.
    #[cfg(feature = "store")]
    fn take_committed(&mut self) -> Result<(), Error> {
        let Some((batch, rx)) = self.durable.as_mut().and_then(|d| d.in_flight.as_mut()) else {
            return Ok(());
        };
        let batch = *batch;
        let done = match rx.try_recv() {
            Ok(done) => done,
            Err(oneshot::error::TryRecvError::Empty) => return Ok(()),
            Err(oneshot::error::TryRecvError::Closed) => {
                return Err(Error::Store("the commit failed (panicked)".into()))
            }
        };
        self.committed(batch, done)
    }

    #[cfg(feature = "store")]
    fn committed(&mut self, batch: mqtt_broker::Batch, done: Committed) -> Result<(), Error> {
        let (store, spare, result) = done;
        if let Some(d) = self.durable.as_mut() {
            d.in_flight = None;
            d.store = Some(store);
            d.spare = spare;
        }
        result?;
        let now = self.clock.now();
        self.broker.handle_durable(now, batch);
        self.drain(now);
        // After the output that waited: emptying the buffer frees every key and value, on
        // the thread that allocated them rather than the blocking pool's.
        if let Some(d) = self.durable.as_mut() {
            d.spare.clear();
        }
        Ok(())
    }

    /// At the end: commits everything, waiting for each commit.
    #[cfg(feature = "store")]
    async fn commit_rest(&mut self) -> Result<(), Error> {
        loop {
            if let Some((batch, rx)) = self.durable.as_mut().and_then(|d| d.in_flight.as_mut()) {
                let batch = *batch;
                let done = rx
                    .await
                    .map_err(|_| Error::Store("the commit failed (panicked)".into()))?;
                self.committed(batch, done)?;
            }
            self.commit(true)?;
            if self.durable.as_ref().is_none_or(|d| d.in_flight.is_none()) {
                return Ok(());
            }
        }
    }

    /// Carries out what the core asks for until it has nothing more.
    fn drain(&mut self, now: Instant) {
        while let Some(request) = self.broker.poll_request() {
            let Some(decide) = self.decide.clone() else {
                tracing::warn!(?request, "a deferred decision and no Server::decide");
                let code = ReasonCode::ImplementationSpecificError;
                let _ = self.broker.reject(now, request.id, code, None);
                continue;
            };
            let decision = self.decision(request);
            let answers = self.answers_tx.clone();
            let notify = self.notify.clone();
            tokio::spawn(async move {
                let id = decision.request.id;
                let answer = decide(decision).await;
                if answers.send((id, answer)).is_ok() {
                    notify.notify_one();
                }
            });
        }
        while let Some(event) = self.broker.poll_event() {
            self.hub.handle_event(&mut self.broker, now, &event);
        }
        self.hub
            .dial(&mut self.broker, &tokio::runtime::Handle::current());
    }

    fn decision(&self, request: Request) -> Decision {
        let (client_id, username, protocol, info) = match self.broker.context(request.conn) {
            Some(c) => (
                c.client_id.to_owned(),
                c.username.map(str::to_owned),
                c.protocol,
                c.info.clone(),
            ),
            None => (
                String::new(),
                None,
                ProtocolVersion::V3_1_1,
                ConnInfo::default(),
            ),
        };
        let username = username.or_else(|| match &request.kind {
            RequestKind::Authenticate { username, .. } => username.clone(),
            _ => None,
        });
        Decision {
            request,
            client_id,
            username,
            protocol,
            info,
        }
    }
}

async fn sleep_until(t: Option<tokio::time::Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

/// Reaches the core of a running [`Server`] from other tasks: cloneable and `Send`.
pub struct ServerHandle<H: Hooks = AllowAll> {
    calls: mpsc::Sender<Call<H>>,
    notify: Arc<Notify>,
}

impl<H: Hooks> Clone for ServerHandle<H> {
    fn clone(&self) -> Self {
        Self {
            calls: self.calls.clone(),
            notify: self.notify.clone(),
        }
    }
}

impl<H: Hooks> std::fmt::Debug for ServerHandle<H> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle").finish_non_exhaustive()
    }
}

impl<H: Hooks + 'static> ServerHandle<H> {
    /// Runs `f` with the core on the server's task, and returns what it returns; what it
    /// asks of the core (a publish, a disconnect) is carried out after it.
    /// [`Error::Stopped`] once the server has stopped.
    pub async fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Broker<H>, Instant) -> R + Send + 'static,
    ) -> Result<R, Error> {
        let (tx, rx) = oneshot::channel();
        let call: Call<H> = Box::new(move |broker, now| {
            let _ = tx.send(f(broker, now));
        });
        self.calls.send(call).await.map_err(|_| Error::Stopped)?;
        self.notify.notify_one();
        rx.await.map_err(|_| Error::Stopped)
    }

    /// Publishes `message` from the server ([`Broker::publish`]): the number of sessions
    /// it went to.
    pub async fn publish(&self, message: Message) -> Result<usize, Error> {
        self.call(move |b, now| b.publish(now, message)).await
    }

    /// Disconnects the client of `client_id` with `reason` ([`Broker::disconnect`]).
    pub async fn disconnect(&self, client_id: &str, reason: ReasonCode) -> Result<(), Error> {
        let client_id = client_id.to_owned();
        self.call(move |b, now| {
            let conn = b
                .session(&client_id)
                .and_then(|s| s.connection)
                .ok_or(mqtt_broker::Error::UnknownConnection)?;
            b.disconnect(now, conn, reason)
        })
        .await?
        .map_err(Error::Broker)
    }

    /// The connection serving `client_id`, if it is connected.
    pub async fn connection(&self, client_id: &str) -> Result<Option<ConnectionId>, Error> {
        let client_id = client_id.to_owned();
        self.call(move |b, _| b.session(&client_id).and_then(|s| s.connection))
            .await
    }
}

/// A TLS acceptor for [`Transport::Tls`] and [`Transport::Wss`] from a PEM certificate
/// chain and its private key (TLS 1.2 and 1.3, rustls with ring). With `client_ca`, a
/// client may present a certificate, which must then chain to that CA; its identity
/// reaches the core ([`ConnInfo::tls_identity`], with [`HubConfig::conn_info`]). Clients
/// without one are served too: require one in the hooks (an empty `tls_identity`) where
/// that is the policy.
pub fn tls_acceptor(
    cert_pem: &[u8],
    key_pem: &[u8],
    client_ca: Option<&[u8]>,
) -> Result<tokio_rustls::TlsAcceptor, Error> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    use tokio_rustls::rustls;
    let err = |e: &dyn std::fmt::Display| Error::Tls(e.to_string());
    let certs = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| err(&e))?;
    if certs.is_empty() {
        return Err(err(&"no certificate in the PEM"));
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| err(&e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| err(&e))?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(pem) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in CertificateDer::pem_slice_iter(pem) {
                roots.add(cert.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .allow_unauthenticated()
            .build()
            .map_err(|e| err(&e))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(certs, key).map_err(|e| err(&e))?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}
