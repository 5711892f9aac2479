//! A broker node's link to the rest of its cluster over NATS: what the core's
//! [`mqtt_broker::ClusterOp`]s ask for, carried by the official `async-nats` client.
//!
//! # What lives where in NATS
//!
//! - Messages: core NATS subjects `PREFIX.m.<topic>`, one token per topic level
//!   ([`subject`] encodes the levels NATS cannot carry, reversibly). A node subscribes to
//!   the subjects of its filters (`+` is `*`, `#` is `>` plus the parent level), a shared
//!   subscription as a queue group named by its ShareName, so that NATS brings a message
//!   only to nodes that want it and a shared one to one node. Each message carries the
//!   sending process's id in a header, so that a node drops its own (it delivered them
//!   already).
//! - Retained messages: also published to the JetStream stream `PREFIX_RETAINED`
//!   (subjects `PREFIX.r.>`, one message kept per subject); each node reads it from the
//!   start, the last per subject, and then as it changes.
//! - Session ownership: the JetStream stream `PREFIX_SESSIONS` (subjects `PREFIX.s.>`,
//!   one message kept per subject: a key-value store, as JetStream's own is built; its
//!   key-value API is not used because nats-server 2.9, Debian's, answers its bucket
//!   creation in a form async-nats 0.50 cannot read): client identifier to the process
//!   that admitted it last; each node reads it as it changes and lets go of a client
//!   another one took.
//! - Sessions themselves: the JetStream stream `PREFIX_STATE` (subjects
//!   `PREFIX.st.<client>.<table>.<key>`, one message kept per subject) holds the session
//!   tables of every node's store ([`ClusterStore`] writes them there, the rest to the
//!   node's own store), so that any node can resume any session, a dead node's too.
//!
//! # A client that moves
//!
//! The core holds a CONNECT's CONNACK while its [`ClusterOp::Claim`] runs:
//! 1. the session's record is read from `PREFIX_STATE` and imported: its subscriptions
//!    are this node's interest on NATS before the old owner lets go;
//! 2. the claim is stored, and the old owner (the process named in the claim before) is
//!    asked to let go (`PREFIX.n.<process>.release`): it disconnects the client, ends the
//!    session and answers once its last changes are in `PREFIX_STATE`; no responder means
//!    the process is gone, and what it stored is what there is;
//! 3. the session's entries are read from `PREFIX_STATE` and imported, and the client is
//!    admitted to its session.
//!
//! Core NATS delivers at most once: a message published while a node's NATS connection
//! is down is not seen by that node (see `docs/cluster.md`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use mqtt_broker::{Broker, ClusterFilter, ClusterOp, ClusterTarget, ConnectionId, Hooks, Table};
use mqtt_state::Instant;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::Error;

/// The header that names the process a message comes from.
const ORIGIN: &str = "Mqtt-Origin";
/// Messages from NATS waiting for the core before the readers wait.
const INBOUND: usize = 4096;
/// How long a node waits for the previous owner of a session to let go before it takes the
/// session as stored.
const RELEASE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);
/// Messages for the other nodes waiting for NATS (unreachable, or slower than the node)
/// before new ones are dropped, counted and logged: core NATS would not keep them either,
/// and the node's memory stays bounded.
const OUTBOUND_MESSAGES: usize = 65_536;

/// How a node joins its cluster.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterOptions {
    /// NATS server URLs (`nats://host:port`); the client reconnects to any of them.
    pub servers: Vec<String>,
    /// This node's name ([`mqtt_broker::ClusterConfig::node`]).
    pub node: String,
    /// Prefix of every subject, stream and bucket name: clusters that share a NATS
    /// system use different ones.
    pub prefix: String,
    /// JetStream replicas of the retained stream and the session bucket (1 to 5, at
    /// most the number of NATS servers).
    pub replicas: usize,
}

impl ClusterOptions {
    /// Node `node` over the NATS servers `servers`, prefix `mqtt`, one replica.
    pub fn new(servers: Vec<String>, node: impl Into<String>) -> Self {
        Self {
            servers,
            node: node.into(),
            prefix: "mqtt".into(),
            replicas: 1,
        }
    }

    /// The same, with this many JetStream replicas.
    pub fn replicas(mut self, n: usize) -> Self {
        self.replicas = n;
        self
    }

    /// The same, with this prefix.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }
}

/// What the NATS side hands the core.
enum In {
    Plain {
        via: String,
        frame: Bytes,
    },
    Shared {
        share: String,
        filter: String,
        frame: Bytes,
    },
    Retained(Bytes),
    /// The oldest `Subscribe` not yet reported is in place on the server.
    Subscribed,
    /// Another process claimed this client (its bucket key) at this revision.
    Taken {
        client_id: String,
        key: String,
        revision: u64,
    },
    /// Stored entries of a session being claimed here.
    Import(Vec<(Table, Vec<u8>, Vec<u8>)>),
    /// A claim's first step is done (the session's record imported): on to the next, after
    /// the core's operations that the import made.
    Continue(Claim),
    /// A claim is done; whether another process owned the client before.
    Claimed(ConnectionId, bool),
    /// Another node asks this one to let go of a client: answer `reply` once that is stored.
    Release {
        client_id: String,
        reply: async_nats::Subject,
    },
}

/// A claim on its way.
#[derive(Debug)]
struct Claim {
    client_id: String,
    key: String,
    conn: ConnectionId,
    resume: bool,
    /// The process that owned the client before, if another one.
    prev: Option<String>,
}

/// What the core's side hands the NATS side.
enum Out {
    Core(ClusterOp),
    /// A claim's second step: store it, have the old owner let go, import the session.
    Claim(Claim),
    /// The answer to a release, once what it changed is stored.
    Reply(async_nats::Subject),
}

/// Session claims sent and not yet seen back: an older owner's entry that comes before
/// ours is not a takeover of ours. `None`: the revision is not known yet.
type Claims = Arc<std::sync::Mutex<HashMap<String, Option<u64>>>>;

/// Whether an entry of another process at `revision` for `key` is older than a claim of
/// ours (made or on its way).
fn superseded(claims: &Claims, key: &str, revision: u64) -> bool {
    match claims.lock().unwrap_or_else(|e| e.into_inner()).get(key) {
        Some(None) => true,
        Some(Some(r)) => revision < *r,
        None => false,
    }
}

/// Wakes the core's owner once per burst.
struct Wake {
    notify: Box<dyn Fn() + Send + Sync>,
    pending: AtomicBool,
}

impl Wake {
    fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            (self.notify)();
        }
    }
}

/// The core's side of the link: what the owner of the [`Broker`] calls, like
/// [`crate::server::Hub`]. After each call into the core, [`Cluster::flush`]; when
/// `notify` fires, [`Cluster::poll`] until it returns `false`, draining the core after
/// each.
pub struct Cluster {
    out: mpsc::UnboundedSender<Out>,
    inbound: mpsc::Receiver<In>,
    wake: Arc<Wake>,
    claims: Claims,
    /// This process, as its claims name it.
    instance: String,
    /// `Publish` operations handed to the NATS side and not sent yet.
    outbound: Arc<std::sync::atomic::AtomicUsize>,
    /// Messages dropped because too many were waiting for NATS.
    dropped: u64,
    /// Releases answered once this store batch is durable.
    replies: std::collections::VecDeque<(mqtt_broker::Batch, async_nats::Subject)>,
    /// Where [`ClusterStore`]s send their session tables.
    mirror: mpsc::UnboundedSender<Mirror>,
}

/// A batch of session-table operations for `PREFIX_STATE`, and where to say it is stored.
type Mirror = (
    Vec<mqtt_broker::StoreOp>,
    std::sync::mpsc::SyncSender<Result<(), String>>,
);

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster").finish_non_exhaustive()
    }
}

impl Cluster {
    /// Connects to NATS, makes the retained stream and the session bucket if they are
    /// missing, and starts the tasks that carry the node's messages (on the current
    /// runtime). `notify` is called (from any thread) when [`Cluster::poll`] has work.
    pub async fn connect(
        options: ClusterOptions,
        notify: impl Fn() + Send + Sync + 'static,
    ) -> Result<Cluster, Error> {
        let nats_err = |what: &str, e: &dyn std::fmt::Display| {
            Error::Io(Arc::new(std::io::Error::other(format!("NATS {what}: {e}"))))
        };
        let client = async_nats::ConnectOptions::new()
            .name(format!("mqtt-broker {}", options.node))
            .retry_on_initial_connect()
            // Core NATS drops what a subscription cannot take: say so, it is lost.
            .event_callback(|event| async move {
                match event {
                    async_nats::Event::SlowConsumer(sid) => tracing::warn!(
                        sid,
                        "NATS slow consumer: messages for this node were dropped"
                    ),
                    async_nats::Event::Connected => tracing::info!("NATS connected"),
                    e => tracing::warn!("NATS: {e}"),
                }
            })
            .connect(options.servers.clone())
            .await
            .map_err(|e| nats_err("connect", &e))?;
        let js = jetstream::new(client.clone());
        let p = &options.prefix;
        let stream = js
            .get_or_create_stream(jetstream::stream::Config {
                name: format!("{p}_RETAINED"),
                subjects: vec![format!("{p}.r.>")],
                max_messages_per_subject: 1,
                num_replicas: options.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_err("retained stream", &e))?;
        let sessions = js
            .get_or_create_stream(jetstream::stream::Config {
                name: format!("{p}_SESSIONS"),
                subjects: vec![format!("{p}.s.>")],
                max_messages_per_subject: 1,
                num_replicas: options.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_err("session stream", &e))?;
        let state = js
            .get_or_create_stream(jetstream::stream::Config {
                name: format!("{p}_STATE"),
                subjects: vec![format!("{p}.st.>")],
                max_messages_per_subject: 1,
                num_replicas: options.replicas,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_err("state stream", &e))?;
        let (mirror, mirror_rx) = mpsc::unbounded_channel();
        let (lazy, lazy_rx) = mpsc::channel(LAZY_PURGES);
        tokio::spawn(run_lazy_purges(client.clone(), state.clone(), lazy_rx));
        tokio::spawn(run_mirror(
            js.clone(),
            state.clone(),
            options.prefix.clone(),
            mirror_rx,
            lazy.clone(),
        ));
        let (out, out_rx) = mpsc::unbounded_channel();
        let (in_tx, inbound) = mpsc::channel(INBOUND);
        let wake = Arc::new(Wake {
            notify: Box::new(notify),
            pending: AtomicBool::new(false),
        });
        // Unique per process: a restarted node reads its own retained messages back.
        let instance = format!("{}-{}", options.node, nuid::next());
        let claims = Claims::default();
        let outbound = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let link = Link {
            outbound: outbound.clone(),
            client,
            js,
            prefix: options.prefix.clone(),
            instance,
            in_tx,
            wake: wake.clone(),
            subs: HashMap::new(),
            claims: claims.clone(),
            sessions: sessions.clone(),
            state,
            lazy,
        };
        link.start(stream, sessions, out_rx).await?;
        Ok(Cluster {
            out,
            inbound,
            wake,
            claims,
            instance: options.node.clone(),
            outbound,
            dropped: 0,
            replies: std::collections::VecDeque::new(),
            mirror,
        })
    }

    /// The node's store for a clustered broker: the session tables go to the cluster's
    /// `PREFIX_STATE` stream (where any node resumes them), the rest (retained messages)
    /// to `local`. A commit returns once both have it: what the core acknowledged after it
    /// survives this node. Give it to the server in place of `local`; its `load` reads
    /// `local` only (sessions are read from the cluster when their clients come).
    #[cfg(feature = "store")]
    #[cfg_attr(docsrs, doc(cfg(feature = "store")))]
    pub fn store(&self, local: impl crate::store::Store) -> ClusterStore {
        ClusterStore {
            local: Box::new(local),
            mirror: self.mirror.clone(),
            ops: Vec::new(),
            session_ops: Vec::new(),
        }
    }

    /// Hands the core's pending [`ClusterOp`]s to the NATS side. Call after each call
    /// into the core (where its events are drained).
    pub fn flush<H: Hooks>(&mut self, broker: &mut Broker<H>) {
        // Releases whose changes are stored now: the new owner may read them.
        let durable = broker.durable_batch();
        while self.replies.front().is_some_and(|(b, _)| *b <= durable) {
            if let Some((_, reply)) = self.replies.pop_front() {
                let _ = self.out.send(Out::Reply(reply));
            }
        }
        while let Some(op) = broker.poll_cluster() {
            if let ClusterOp::Claim { client_id, .. } = &op {
                // Known at once, on this side: an older owner's entry already on its way
                // to `poll` must not end the session just admitted.
                self.claims
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(client_id_to_key(client_id), None);
            }
            if let ClusterOp::Publish { topic, .. } = &op {
                if self.outbound.load(Ordering::Acquire) >= OUTBOUND_MESSAGES {
                    self.dropped += 1;
                    if self.dropped.is_power_of_two() {
                        tracing::warn!(
                            %topic,
                            dropped = self.dropped,
                            "NATS is not taking this node's messages: dropped"
                        );
                    }
                    continue;
                }
                self.outbound.fetch_add(1, Ordering::AcqRel);
            }
            if self.out.send(Out::Core(op)).is_err() {
                tracing::error!("cluster link gone");
                return;
            }
        }
    }

    /// Applies the next thing NATS brought (a message, a retained message, a session
    /// another node took) to `broker`; `false` once there is none, after which `notify`
    /// fires again when there is. Drain the core after each call that returns `true`.
    pub fn poll<H: Hooks>(&mut self, broker: &mut Broker<H>, now: Instant) -> bool {
        self.wake.pending.store(false, Ordering::Release);
        let Ok(item) = self.inbound.try_recv() else {
            return false;
        };
        let r = match item {
            In::Plain { via, frame } => broker
                .cluster_publish(now, &frame, ClusterTarget::Plain { via: &via })
                .map(drop),
            In::Shared {
                share,
                filter,
                frame,
            } => {
                let target = ClusterTarget::Shared {
                    share: &share,
                    filter: &filter,
                };
                broker.cluster_publish(now, &frame, target).map(drop)
            }
            In::Retained(frame) => broker.cluster_retained(now, &frame),
            In::Subscribed => {
                broker.cluster_subscribed(now);
                Ok(())
            }
            In::Taken {
                client_id,
                key,
                revision,
            } => {
                if superseded(&self.claims, &key, revision) {
                    tracing::debug!(node = %self.instance, %client_id, revision, "older claim ignored");
                    return true;
                }
                // Another's now: no claim of ours to keep.
                self.claims
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
                if broker.session_taken(now, &client_id) {
                    tracing::debug!(node = %self.instance, %client_id, revision, "session taken by another node");
                }
                Ok(())
            }
            In::Import(entries) => {
                for (table, key, value) in entries {
                    if let Err(e) = broker.cluster_import(now, table, &key, &value) {
                        tracing::warn!(table = table.name(), "session entry not imported: {e}");
                    }
                }
                Ok(())
            }
            In::Continue(claim) => {
                // After the subscriptions the import made: they are this node's interest
                // on NATS before the old owner lets go.
                self.flush(broker);
                let _ = self.out.send(Out::Claim(claim));
                Ok(())
            }
            In::Claimed(conn, elsewhere) => {
                broker.cluster_claimed(now, conn, elsewhere);
                Ok(())
            }
            In::Release { client_id, reply } => {
                let key = client_id_to_key(&client_id);
                self.claims
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&key);
                broker.session_taken(now, &client_id);
                // Answered once the session's last changes are stored ([`Cluster::flush`]).
                self.replies.push_back((broker.store_position(), reply));
                Ok(())
            }
        };
        if let Err(e) = r {
            tracing::warn!("cluster: {e}");
        }
        true
    }
}

/// The NATS side.
struct Link {
    client: async_nats::Client,
    js: jetstream::Context,
    prefix: String,
    instance: String,
    in_tx: mpsc::Sender<In>,
    wake: Arc<Wake>,
    /// The reader tasks of each filter's subscriptions.
    subs: HashMap<ClusterFilter, Vec<AbortHandle>>,
    /// Session claims sent and not yet seen back (shared with [`Cluster`]).
    claims: Claims,
    /// `Publish` operations not sent yet (shared with [`Cluster`]).
    outbound: Arc<std::sync::atomic::AtomicUsize>,
    /// The session owners.
    sessions: jetstream::stream::Stream,
    /// The sessions themselves.
    state: jetstream::stream::Stream,
    /// Deletions that lag behind their commit; a release's answer goes behind them.
    lazy: mpsc::Sender<Lazy>,
}

/// What waits in the queue of deletions that lag behind their commit.
enum Lazy {
    Purge(String),
    /// Answered once every deletion before it is applied: the new owner of a session
    /// never sees one of ours land on its own entries.
    Reply(async_nats::Subject),
}

impl Link {
    async fn start(
        self,
        stream: jetstream::stream::Stream,
        sessions: jetstream::stream::Stream,
        ops: mpsc::UnboundedReceiver<Out>,
    ) -> Result<(), Error> {
        // Requests to let go of a client: the key, answered once stored.
        let mut releases = self
            .client
            .subscribe(format!("{}.n.{}.release", self.prefix, self.instance))
            .await
            .map_err(|e| {
                Error::Io(Arc::new(std::io::Error::other(format!(
                    "NATS release subscription: {e}"
                ))))
            })?;
        let (tx, wake) = (self.in_tx.clone(), self.wake.clone());
        tokio::spawn(async move {
            while let Some(m) = releases.next().await {
                let (Some(reply), Ok(key)) = (m.reply, std::str::from_utf8(&m.payload)) else {
                    continue;
                };
                let Some(client_id) = key_to_client_id(key) else {
                    continue;
                };
                if tx.send(In::Release { client_id, reply }).await.is_err() {
                    return;
                }
                wake.wake();
            }
        });
        let nats_err = |what: &str, e: &dyn std::fmt::Display| {
            Error::Io(Arc::new(std::io::Error::other(format!("NATS {what}: {e}"))))
        };
        // Retained: the last per subject, from the start, then as they change.
        let consumer = stream
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: format!("{}.r.>", self.prefix),
                deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_err("retained consumer", &e))?;
        let mut retained = consumer
            .messages()
            .await
            .map_err(|e| nats_err("retained consumer", &e))?;
        let (tx, wake, me) = (self.in_tx.clone(), self.wake.clone(), self.instance.clone());
        tokio::spawn(async move {
            while let Some(m) = retained.next().await {
                let Ok(m) = m else { continue };
                if origin(&m.headers) == Some(me.as_str()) {
                    continue;
                }
                if tx.send(In::Retained(m.payload.clone())).await.is_err() {
                    return;
                }
                wake.wake();
            }
        });
        // Session owners: the last claim per client, then each new one, in order.
        let consumer = sessions
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: format!("{}.s.>", self.prefix),
                deliver_policy: jetstream::consumer::DeliverPolicy::LastPerSubject,
                ..Default::default()
            })
            .await
            .map_err(|e| nats_err("session consumer", &e))?;
        let mut watch = consumer
            .messages()
            .await
            .map_err(|e| nats_err("session consumer", &e))?;
        let (tx, wake, me) = (self.in_tx.clone(), self.wake.clone(), self.instance.clone());
        let claims = self.claims.clone();
        tokio::spawn(async move {
            while let Some(m) = watch.next().await {
                let Ok(m) = m else { continue };
                let Ok(revision) = m.info().map(|i| i.stream_sequence) else {
                    continue;
                };
                let Some(key) = m.subject.as_str().rsplit('.').next().map(str::to_owned) else {
                    continue;
                };
                let ours = m.payload.as_ref() == me.as_bytes();
                if ours {
                    // Ours, with its revision: what is older is not a takeover of it,
                    // however late it reaches the core.
                    claims
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(key, Some(revision));
                    continue;
                }
                if superseded(&claims, &key, revision) {
                    continue;
                }
                let Some(client_id) = key_to_client_id(&key) else {
                    continue;
                };
                let taken = In::Taken {
                    client_id,
                    key,
                    revision,
                };
                if tx.send(taken).await.is_err() {
                    return;
                }
                wake.wake();
            }
        });
        tokio::spawn(self.run(ops));
        Ok(())
    }

    /// Carries the core's operations until the core's side is dropped.
    async fn run(mut self, mut ops: mpsc::UnboundedReceiver<Out>) {
        while let Some(op) = ops.recv().await {
            let op = match op {
                Out::Core(op) => op,
                Out::Claim(claim) => {
                    tokio::spawn(self.claimer().finish(claim));
                    continue;
                }
                Out::Reply(reply) => {
                    let _ = self.lazy.send(Lazy::Reply(reply)).await;
                    continue;
                }
            };
            match op {
                ClusterOp::Subscribe(f) => {
                    self.subscribe(f).await;
                    // The server has the subscription once it answered a flush sent after
                    // it: the SUBACK the core holds may go.
                    if let Err(e) = self.client.flush().await {
                        tracing::warn!("NATS flush: {e}");
                    }
                    if self.in_tx.send(In::Subscribed).await.is_err() {
                        return;
                    }
                    self.wake.wake();
                }
                ClusterOp::Unsubscribe(f) => {
                    // The reader task owns the subscription: ending it unsubscribes.
                    for h in self.subs.remove(&f).into_iter().flatten() {
                        h.abort();
                    }
                }
                ClusterOp::Publish {
                    topic,
                    retain,
                    frame,
                } => {
                    self.publish(&topic, retain, frame).await;
                    self.outbound.fetch_sub(1, Ordering::AcqRel);
                }
                ClusterOp::Claim {
                    client_id,
                    conn,
                    resume,
                } => {
                    tokio::spawn(self.claimer().start(client_id, conn, resume));
                }
                _ => {}
            }
        }
    }

    async fn subscribe(&mut self, f: ClusterFilter) {
        let mut handles = Vec::new();
        for subject in filter_subjects(&self.prefix, &f.filter) {
            let sub = match &f.share {
                None => self.client.subscribe(subject).await,
                Some(share) => {
                    let mut queue = String::new();
                    token(share, &mut queue);
                    self.client.queue_subscribe(subject, queue).await
                }
            };
            let mut sub = match sub {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(filter = %f.filter, "NATS subscribe: {e}");
                    continue;
                }
            };
            let (tx, wake, me) = (self.in_tx.clone(), self.wake.clone(), self.instance.clone());
            let (filter, share) = (f.filter.clone(), f.share.clone());
            let task = tokio::spawn(async move {
                while let Some(m) = sub.next().await {
                    let item = match &share {
                        None => {
                            // Delivered here already, when it was published.
                            if origin(&m.headers) == Some(me.as_str()) {
                                continue;
                            }
                            In::Plain {
                                via: filter.clone(),
                                frame: m.payload,
                            }
                        }
                        Some(share) => In::Shared {
                            share: share.clone(),
                            filter: filter.clone(),
                            frame: m.payload,
                        },
                    };
                    if tx.send(item).await.is_err() {
                        return;
                    }
                    wake.wake();
                }
            });
            handles.push(task.abort_handle());
        }
        self.subs.insert(f, handles);
    }

    async fn publish(&mut self, topic: &str, retain: bool, frame: Bytes) {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(ORIGIN, self.instance.as_str());
        let m = subject(&self.prefix, "m", topic);
        if let Err(e) = self
            .client
            .publish_with_headers(m, headers.clone(), frame.clone())
            .await
        {
            tracing::warn!(%topic, "NATS publish: {e}");
        }
        if retain {
            // Sent here, in order with the others; its acknowledgement is awaited apart.
            let r = subject(&self.prefix, "r", topic);
            match self.js.publish_with_headers(r, headers, frame).await {
                Ok(ack) => {
                    let topic = topic.to_owned();
                    tokio::spawn(async move {
                        if let Err(e) = ack.await {
                            tracing::warn!(%topic, "retained message not stored in NATS: {e}");
                        }
                    });
                }
                Err(e) => tracing::warn!(%topic, "retained message not stored in NATS: {e}"),
            }
        }
    }

    fn claimer(&self) -> Claimer {
        Claimer {
            client: self.client.clone(),
            js: self.js.clone(),
            sessions: self.sessions.clone(),
            state: self.state.clone(),
            prefix: self.prefix.clone(),
            instance: self.instance.clone(),
            in_tx: self.in_tx.clone(),
            wake: self.wake.clone(),
            claims: self.claims.clone(),
        }
    }
}

/// A claim's steps, on a task of their own: the node goes on carrying messages meanwhile.
struct Claimer {
    client: async_nats::Client,
    js: jetstream::Context,
    sessions: jetstream::stream::Stream,
    state: jetstream::stream::Stream,
    prefix: String,
    instance: String,
    in_tx: mpsc::Sender<In>,
    wake: Arc<Wake>,
    claims: Claims,
}

impl Claimer {
    async fn send(&self, item: In) {
        if self.in_tx.send(item).await.is_ok() {
            self.wake.wake();
        }
    }

    /// Step 1: who owns the client, and (to resume its session) the session's record.
    async fn start(self, client_id: String, conn: ConnectionId, resume: bool) {
        let key = client_id_to_key(&client_id);
        let owner = self
            .sessions
            .get_last_raw_message_by_subject(&format!("{}.s.{key}", self.prefix))
            .await
            .ok()
            .and_then(|m| String::from_utf8(m.payload.to_vec()).ok());
        let prev = owner.filter(|o| *o != self.instance);
        if resume && prev.is_some() {
            let subject = state_subject(&self.prefix, &key, Table::Sessions, client_id.as_bytes());
            if let Ok(m) = self.state.get_last_raw_message_by_subject(&subject).await {
                let entry = (
                    Table::Sessions,
                    client_id.as_bytes().to_vec(),
                    m.payload.to_vec(),
                );
                self.send(In::Import(vec![entry])).await;
            }
        }
        let claim = Claim {
            client_id,
            key,
            conn,
            resume,
            prev,
        };
        self.send(In::Continue(claim)).await;
    }

    /// Step 2: the claim stored, the old owner let go, the session imported.
    async fn finish(self, claim: Claim) {
        self.claim(&claim.key).await;
        if let Some(prev) = &claim.prev {
            let subject = format!("{}.n.{prev}.release", self.prefix);
            let asked = self
                .client
                .request(subject, Bytes::from(claim.key.clone().into_bytes()));
            match tokio::time::timeout(RELEASE_TIMEOUT, asked).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                    tracing::info!(client_id = %claim.client_id, %prev, "previous owner gone: its session resumes as stored");
                }
                Ok(Err(e)) => tracing::warn!(client_id = %claim.client_id, %prev, "release: {e}"),
                Err(_) => tracing::warn!(client_id = %claim.client_id, %prev, "release: no answer"),
            }
            if claim.resume {
                match self.read_session(&claim.key).await {
                    Ok(entries) => self.send(In::Import(entries)).await,
                    Err(e) => tracing::warn!(client_id = %claim.client_id, "session not read: {e}"),
                }
            }
        }
        self.send(In::Claimed(claim.conn, claim.prev.is_some()))
            .await;
    }

    /// Records this process as the owner of `key`.
    async fn claim(&self, key: &str) {
        let subject = format!("{}.s.{key}", self.prefix);
        let payload = Bytes::from(self.instance.clone().into_bytes());
        let r = match self.js.publish(subject, payload).await {
            Ok(ack) => ack.await.map(|a| a.sequence).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        let mut claims = self.claims.lock().unwrap_or_else(|e| e.into_inner());
        match r {
            // Unless the watch has shown it already.
            Ok(rev) => {
                if let Some(slot @ None) = claims.get_mut(key) {
                    *slot = Some(rev);
                }
            }
            Err(e) => {
                claims.remove(key);
                tracing::warn!("session claim not stored in NATS: {e}");
            }
        }
    }

    /// Every stored entry of the session of `key`, in the order the core takes them.
    async fn read_session(&self, key: &str) -> Result<Vec<(Table, Vec<u8>, Vec<u8>)>, String> {
        let consumer = self
            .state
            .create_consumer(jetstream::consumer::pull::OrderedConfig {
                filter_subject: format!("{}.st.{key}.>", self.prefix),
                deliver_policy: jetstream::consumer::DeliverPolicy::All,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        let mut n = consumer.cached_info().num_pending;
        let mut entries = Vec::new();
        if n > 0 {
            let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
            while n > 0 {
                let Some(m) = messages.next().await else {
                    break;
                };
                let m = m.map_err(|e| e.to_string())?;
                if let Some((table, k)) = parse_state_subject(m.subject.as_str()) {
                    entries.push((table, k, m.payload.to_vec()));
                }
                n = m.info().map(|i| i.pending).unwrap_or(0);
            }
        }
        let order = |t: Table| {
            Table::ALL
                .iter()
                .position(|x| *x == t)
                .unwrap_or(usize::MAX)
        };
        entries.sort_by(|a, b| (order(a.0), &a.1).cmp(&(order(b.0), &b.1)));
        Ok(entries)
    }
}

/// A table's token in a state subject.
fn table_token(table: Table) -> Option<&'static str> {
    match table {
        Table::Sessions => Some("s"),
        Table::Progress => Some("p"),
        Table::Messages => Some("m"),
        Table::Incoming => Some("i"),
        _ => None,
    }
}

/// `PREFIX.st.<client>.<table>.<key in hex>`: one subject per stored entry, grouped by
/// session (a session's entries are one wildcard), the key itself readable back.
fn state_subject(prefix: &str, client_key: &str, table: Table, key: &[u8]) -> String {
    use std::fmt::Write;
    let t = table_token(table).unwrap_or("x");
    let mut s = String::with_capacity(prefix.len() + client_key.len() + 8 + 2 * key.len());
    let _ = write!(s, "{prefix}.st.{client_key}.{t}.k");
    for b in key {
        let _ = write!(s, "{b:02x}");
    }
    s
}

/// The table and key of a state subject.
fn parse_state_subject(subject: &str) -> Option<(Table, Vec<u8>)> {
    let mut rev = subject.rsplit('.');
    let hex = rev.next()?.strip_prefix('k')?;
    let table = match rev.next()? {
        "s" => Table::Sessions,
        "p" => Table::Progress,
        "m" => Table::Messages,
        "i" => Table::Incoming,
        _ => return None,
    };
    if hex.len() % 2 != 0 {
        return None;
    }
    let key: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    Some((table, key?))
}

/// Attempts at each write to `PREFIX_STATE` before the store reports an error (which stops
/// the node: what it acknowledged could no longer be kept): a NATS server that restarts or
/// a stream leader that moves makes a request time out now and then.
const MIRROR_ATTEMPTS: u32 = 4;
/// Purges in flight at once, per node.
const PURGES_AT_ONCE: usize = 64;
/// Deletions of delivered QoS 1 messages waiting to be applied after their commit
/// ([`mqtt_broker::StoreOp::delete_may_lag`]); beyond that, a commit applies its own.
const LAZY_PURGES: usize = 65_536;

/// Publishes `value` to `subject` and waits for JetStream's acknowledgement, again on
/// failure (a put is idempotent: one message per subject).
async fn put_stored(js: &jetstream::Context, subject: &str, value: &Bytes) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..MIRROR_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
        }
        match js.publish(subject.to_owned(), value.clone()).await {
            Ok(ack) => match ack.await {
                Ok(_) => return Ok(()),
                Err(e) => last = e.to_string(),
            },
            Err(e) => last = e.to_string(),
        }
        tracing::warn!(%subject, attempt, "session entry not stored in NATS yet: {last}");
    }
    Err(last)
}

/// Purges `filter` from `PREFIX_STATE`, again on failure.
async fn purge(state: &jetstream::stream::Stream, filter: &str) -> Result<(), String> {
    let mut last = String::new();
    for attempt in 0..MIRROR_ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(std::time::Duration::from_millis(100 << attempt)).await;
        }
        match state.purge().filter(filter.to_owned()).await {
            Ok(_) => return Ok(()),
            Err(e) => last = e.to_string(),
        }
        tracing::warn!(%filter, attempt, "session entry not removed from NATS yet: {last}");
    }
    Err(last)
}

/// Writes the session tables' operations to `PREFIX_STATE`, batch by batch in order.
///
/// Within a batch only the last operation on each subject matters (one message kept per
/// subject), and different subjects are independent: between two prefix deletions (a
/// session that ends, which covers many subjects), the final puts go out together and the
/// purges (one JetStream request each: a message acknowledged after its put was stored)
/// run concurrently, rather than one round trip after another.
async fn run_mirror(
    js: jetstream::Context,
    state: jetstream::stream::Stream,
    prefix: String,
    mut batches: mpsc::UnboundedReceiver<Mirror>,
    lazy: mpsc::Sender<Lazy>,
) {
    use mqtt_broker::StoreOp;
    while let Some((ops, done)) = batches.recv().await {
        let mut result = Ok(());
        // Subject to its final value (`None`: purged), since the last prefix deletion.
        let mut last: HashMap<String, Option<Bytes>> = HashMap::new();
        let mut order: Vec<String> = Vec::new();
        for op in &ops {
            let (table, key) = match op {
                StoreOp::Put { table, key, .. } | StoreOp::Delete { table, key } => (*table, key),
                StoreOp::DeletePrefix { table, prefix: p } => {
                    let Some((client, _)) = table.session_key(p) else {
                        continue;
                    };
                    if let Err(e) = apply(&js, &state, &mut last, &mut order).await {
                        result = Err(e);
                    }
                    let t = table_token(*table).unwrap_or("x");
                    let filter = format!("{prefix}.st.{}.{t}.>", client_id_to_key(client));
                    if let Err(e) = purge(&state, &filter).await {
                        result = Err(e);
                    }
                    continue;
                }
            };
            let Some((client, _)) = table.session_key(key) else {
                continue;
            };
            let subject = state_subject(&prefix, &client_id_to_key(client), table, key);
            if op.delete_may_lag() {
                // Off the commit's path (a crash first only sends the message again),
                // unless too many wait already.
                match lazy.try_send(Lazy::Purge(subject)) {
                    Ok(()) => continue,
                    Err(e) => {
                        if let Lazy::Purge(subject) = e.into_inner() {
                            if last.insert(subject.clone(), None).is_none() {
                                order.push(subject);
                            }
                        }
                        continue;
                    }
                }
            }
            let value = match op {
                StoreOp::Put { value, .. } => Some(Bytes::from(value.clone())),
                _ => None,
            };
            if last.insert(subject.clone(), value).is_none() {
                order.push(subject);
            }
        }
        if let Err(e) = apply(&js, &state, &mut last, &mut order).await {
            result = Err(e);
        }
        let _ = done.send(result);
    }
}

/// Applies the deletions that may lag behind their commit, a few at a time.
async fn run_lazy_purges(
    client: async_nats::Client,
    state: jetstream::stream::Stream,
    mut rx: mpsc::Receiver<Lazy>,
) {
    let mut items = Vec::with_capacity(PURGES_AT_ONCE);
    let mut purges = Vec::with_capacity(PURGES_AT_ONCE);
    while rx.recv_many(&mut items, PURGES_AT_ONCE).await > 0 {
        for item in items.drain(..) {
            match item {
                Lazy::Purge(subject) => purges.push(subject),
                Lazy::Reply(reply) => {
                    lazy_purge(&state, &mut purges).await;
                    if let Err(e) = client.publish(reply, Bytes::new()).await {
                        tracing::warn!("NATS release answer: {e}");
                    }
                }
            }
        }
        lazy_purge(&state, &mut purges).await;
    }
}

async fn lazy_purge(state: &jetstream::stream::Stream, purges: &mut Vec<String>) {
    let done = futures_util::future::join_all(purges.iter().map(|s| purge(state, s))).await;
    for r in done {
        if let Err(e) = r {
            // The message stays stored: resumed elsewhere, it is sent again.
            tracing::warn!("a delivered message not removed from NATS: {e}");
        }
    }
    purges.clear();
}

/// Stores the final state of each subject in `last` (in `order`), puts together and
/// purges concurrently; empties both.
async fn apply(
    js: &jetstream::Context,
    state: &jetstream::stream::Stream,
    last: &mut HashMap<String, Option<Bytes>>,
    order: &mut Vec<String>,
) -> Result<(), String> {
    let mut acks = Vec::new();
    let mut purges = Vec::new();
    for subject in order.drain(..) {
        match last.remove(&subject).flatten() {
            Some(value) => {
                let ack = js.publish(subject.clone(), value.clone()).await.ok();
                acks.push((subject, value, ack));
            }
            None => purges.push(subject),
        }
    }
    // A bounded number at a time: JetStream's API takes requests from every node.
    let mut purged = Vec::with_capacity(purges.len());
    for chunk in purges.chunks(PURGES_AT_ONCE) {
        purged.extend(futures_util::future::join_all(chunk.iter().map(|s| purge(state, s))).await);
    }
    let mut result = settle(js, &mut acks).await;
    for r in purged {
        if let Err(e) = r {
            result = Err(e);
        }
    }
    result
}

/// Waits for the puts sent, sending again those that failed.
async fn settle(
    js: &jetstream::Context,
    acks: &mut Vec<(String, Bytes, Option<jetstream::context::PublishAckFuture>)>,
) -> Result<(), String> {
    let mut result = Ok(());
    for (subject, value, ack) in acks.drain(..) {
        let stored = match ack {
            Some(ack) => ack.await.is_ok(),
            None => false,
        };
        if !stored {
            if let Err(e) = put_stored(js, &subject, &value).await {
                result = Err(e);
            }
        }
    }
    result
}

/// A clustered node's store ([`Cluster::store`]).
#[cfg(feature = "store")]
#[cfg_attr(docsrs, doc(cfg(feature = "store")))]
pub struct ClusterStore {
    local: Box<dyn crate::store::Store>,
    mirror: mpsc::UnboundedSender<Mirror>,
    ops: Vec<mqtt_broker::StoreOp>,
    session_ops: Vec<mqtt_broker::StoreOp>,
}

#[cfg(feature = "store")]
impl std::fmt::Debug for ClusterStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterStore").finish_non_exhaustive()
    }
}

#[cfg(feature = "store")]
impl crate::store::Store for ClusterStore {
    fn load(&mut self, visit: &mut crate::store::Visit<'_>) -> Result<crate::store::Loaded, Error> {
        self.local.load(visit)
    }

    fn commit(&mut self, ops: &[mqtt_broker::StoreOp], clock: Instant) -> Result<(), Error> {
        use mqtt_broker::StoreOp;
        self.ops.clear();
        self.session_ops.clear();
        for op in ops {
            let table = match op {
                StoreOp::Put { table, .. }
                | StoreOp::Delete { table, .. }
                | StoreOp::DeletePrefix { table, .. } => *table,
            };
            if table == Table::Retained {
                self.ops.push(op.clone());
            } else {
                self.session_ops.push(op.clone());
            }
        }
        let waiting = if self.session_ops.is_empty() {
            None
        } else {
            let (tx, rx) = std::sync::mpsc::sync_channel(1);
            let ops = std::mem::take(&mut self.session_ops);
            self.mirror
                .send((ops, tx))
                .map_err(|_| Error::Store("the cluster link is gone".into()))?;
            Some(rx)
        };
        // Both at once: the local write while NATS stores the sessions.
        self.local.commit(&self.ops, clock)?;
        if let Some(rx) = waiting {
            rx.recv()
                .map_err(|_| Error::Store("the cluster link is gone".into()))?
                .map_err(|e| Error::Store(format!("sessions not stored in NATS: {e}")))?;
        }
        Ok(())
    }
}

/// The header naming the process a message came from.
fn origin(headers: &Option<async_nats::HeaderMap>) -> Option<&str> {
    headers.as_ref()?.get(ORIGIN).map(|v| v.as_str())
}

/// A client identifier as a bucket key (keys allow few characters): its bytes in hex.
fn client_id_to_key(client_id: &str) -> String {
    use std::fmt::Write;
    let mut s = String::with_capacity(1 + 2 * client_id.len());
    s.push('c');
    for b in client_id.bytes() {
        let _ = write!(s, "{b:02x}");
    }
    s
}

fn key_to_client_id(key: &str) -> Option<String> {
    let hex = key.strip_prefix('c')?;
    if hex.len() % 2 != 0 {
        return None;
    }
    let bytes: Option<Vec<u8>> = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect();
    String::from_utf8(bytes?).ok()
}

/// One topic level as a NATS subject token. NATS tokens cannot be empty nor hold `.`,
/// whitespace, `*` or `>`; those (and `%`) are written `%XX`, and an empty level is `%`
/// alone, which no escape produces: the encoding is reversible.
fn token(level: &str, out: &mut String) {
    use std::fmt::Write;
    if level.is_empty() {
        out.push('%');
        return;
    }
    for c in level.chars() {
        match c {
            '.' | '*' | '>' | '%' => {
                let _ = write!(out, "%{:02X}", c as u32);
            }
            c if c.is_whitespace() || c.is_control() => {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    let _ = write!(out, "%{b:02X}");
                }
            }
            c => out.push(c),
        }
    }
}

/// The subject of topic `topic` under `prefix.kind`.
pub fn subject(prefix: &str, kind: &str, topic: &str) -> String {
    let mut s = format!("{prefix}.{kind}");
    for level in topic.split('/') {
        s.push('.');
        token(level, &mut s);
    }
    s
}

/// The subjects a filter needs: `+` is `*`, a final `#` is `>` and, as `#` also matches
/// the parent level ([MQTT-4.7.1-2]), the parent itself.
pub fn filter_subjects(prefix: &str, filter: &str) -> Vec<String> {
    let levels: Vec<&str> = filter.split('/').collect();
    let mut s = format!("{prefix}.m");
    for (i, level) in levels.iter().enumerate() {
        match *level {
            "#" => {
                let parent = s.clone();
                s.push_str(".>");
                // `#` alone: every topic has at least one level, so `>` is all of them.
                return if i == 0 { vec![s] } else { vec![s, parent] };
            }
            "+" => s.push_str(".*"),
            l => {
                s.push('.');
                token(l, &mut s);
            }
        }
    }
    vec![s]
}
