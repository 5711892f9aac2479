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
//!
//! Core NATS delivers at most once: a message published while a node's NATS connection
//! is down is not seen by that node (see `docs/cluster.md`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use async_nats::jetstream;
use bytes::Bytes;
use futures_util::StreamExt;
use mqtt_broker::{Broker, ClusterFilter, ClusterOp, ClusterTarget, Hooks};
use mqtt_state::Instant;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::Error;

/// The header that names the process a message comes from.
const ORIGIN: &str = "Mqtt-Origin";
/// Messages from NATS waiting for the core before the readers wait.
const INBOUND: usize = 4096;
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
    out: mpsc::UnboundedSender<ClusterOp>,
    inbound: mpsc::Receiver<In>,
    wake: Arc<Wake>,
    claims: Claims,
    /// This process, as its claims name it.
    instance: String,
    /// `Publish` operations handed to the NATS side and not sent yet.
    outbound: Arc<std::sync::atomic::AtomicUsize>,
    /// Messages dropped because too many were waiting for NATS.
    dropped: u64,
}

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
        })
    }

    /// Hands the core's pending [`ClusterOp`]s to the NATS side. Call after each call
    /// into the core (where its events are drained).
    pub fn flush<H: Hooks>(&mut self, broker: &mut Broker<H>) {
        while let Some(op) = broker.poll_cluster() {
            if let ClusterOp::Claim { client_id } = &op {
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
            if self.out.send(op).is_err() {
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
}

impl Link {
    async fn start(
        self,
        stream: jetstream::stream::Stream,
        sessions: jetstream::stream::Stream,
        ops: mpsc::UnboundedReceiver<ClusterOp>,
    ) -> Result<(), Error> {
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
    async fn run(mut self, mut ops: mpsc::UnboundedReceiver<ClusterOp>) {
        while let Some(op) = ops.recv().await {
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
                ClusterOp::Claim { client_id } => self.claim(&client_id).await,
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

    async fn claim(&mut self, client_id: &str) {
        let key = client_id_to_key(client_id);
        self.claims
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key.clone(), None);
        let subject = format!("{}.s.{key}", self.prefix);
        let payload = Bytes::from(self.instance.clone().into_bytes());
        // Sent here, in order; its acknowledgement (with its revision) awaited apart.
        let sent = self.js.publish(subject, payload).await;
        let claims = self.claims.clone();
        tokio::spawn(async move {
            let r = match sent {
                Ok(ack) => ack.await.map(|a| a.sequence).map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            let mut claims = claims.lock().unwrap_or_else(|e| e.into_inner());
            match r {
                // Unless the watch has shown it already.
                Ok(rev) => {
                    if let Some(slot @ None) = claims.get_mut(&key) {
                        *slot = Some(rev);
                    }
                }
                Err(e) => {
                    claims.remove(&key);
                    tracing::warn!("session claim not stored in NATS: {e}");
                }
            }
        });
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
