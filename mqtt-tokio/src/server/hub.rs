//! The core's side of the connection tasks: what the owner of a [`Broker`] calls to serve
//! them.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::BytesMut;
use mqtt_broker::{Broker, BrokerEvent, CloseReason, ConnectionId, Error as BrokerError, Hooks};
use mqtt_state::Instant;
use tokio::sync::mpsc;

use super::link::{Acceptor, Outbox, Remote, Shared, ToCore};
use mqtt_broker::BridgeId;

/// Settings of a [`Hub`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct HubConfig {
    /// Messages (input, opens, closes) the connection tasks may have waiting for the hub
    /// before they wait for room: a core that falls behind slows the readers down.
    pub channel_capacity: usize,
    /// Deliveries a connection may have waiting for its client before the client is
    /// closed as not reading. The core's output to a connection whose task has not taken
    /// the last waits in the core instead (pushing back on its publishers), so this only
    /// counts what the core must send anyway (a close, a will's delivery...).
    pub write_queue: usize,
    /// Pass each connection's peer address and TLS client certificate identity to the
    /// core ([`mqtt_broker::Broker::open_with`]), for hooks and requests to decide by. A
    /// connection that carries them costs about 250 bytes more in the core.
    pub conn_info: bool,
}

impl Default for HubConfig {
    fn default() -> Self {
        Self {
            channel_capacity: 1024,
            write_queue: 1024,
            conn_info: true,
        }
    }
}

/// What the hub keeps per connection.
struct Link {
    tx: Arc<Outbox>,
    /// Received bytes not yet forming a complete packet.
    input: BytesMut,
}

/// Connects tokio connection tasks to a [`Broker`] owned elsewhere: by [`super::Server`],
/// or by an event loop of your own that serves some connections itself (the example
/// broker serves plain TCP from a mio loop and TLS and WebSocket through a hub).
///
/// The owner of the broker, on its own thread or task:
///
/// 1. when the hub's `notify` fires (or whenever it likes), calls [`Hub::poll`] until it
///    returns `false`, draining the core after each call;
/// 2. drains the core: for each [`Broker::poll_event`], [`Hub::handle_event`] (which
///    returns `false` for a connection that is not the hub's).
///
/// The [`Acceptor`] it returns with serves connections: [`Acceptor::listen`] on a
/// listener, or [`Acceptor::spawn`] for one accepted socket.
pub struct Hub {
    rx: mpsc::Receiver<ToCore>,
    shared: Arc<Shared>,
    links: HashMap<ConnectionId, Link>,
    /// For `Broker::poll_transmit`; grows to the largest packet.
    out: Vec<u8>,
    /// What the core has for one connection, gathered before it is handed over.
    batch: BytesMut,
    write_queue: usize,
    /// For the connections the hub dials (bridges).
    acceptor: Acceptor,
    /// How each bridge reaches its remote; plain TCP when not given.
    remotes: HashMap<BridgeId, Remote>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("connections", &self.links.len())
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub and the acceptor of its connections; `notify` is called (from any thread)
    /// when the connection tasks have something for [`Hub::poll`]. A burst of messages
    /// calls it once until `poll` returns `false`.
    pub fn new(notify: impl Fn() + Send + Sync + 'static, config: HubConfig) -> (Hub, Acceptor) {
        let (tx, rx) = mpsc::channel(config.channel_capacity.max(1));
        let shared = Arc::new(Shared::new(Box::new(notify)));
        let acceptor = Acceptor {
            tx,
            shared: shared.clone(),
            conn_info: config.conn_info,
        };
        let hub = Hub {
            rx,
            shared,
            links: HashMap::new(),
            out: vec![0; 4096],
            batch: BytesMut::new(),
            write_queue: config.write_queue.max(1),
            acceptor: acceptor.clone(),
            remotes: HashMap::new(),
        };
        (hub, acceptor)
    }

    /// Connections the hub serves.
    pub fn len(&self) -> usize {
        self.links.len()
    }

    /// Whether the hub serves no connection.
    pub fn is_empty(&self) -> bool {
        self.links.is_empty()
    }

    /// Connection tasks still running, those the core has closed included (they write
    /// their last output and linger before they end).
    pub fn tasks(&self) -> usize {
        self.shared.tasks.load(Ordering::Acquire)
    }

    /// How bridge `bridge` reaches its remote broker (TLS settings); plain TCP otherwise.
    pub fn remote(&mut self, bridge: BridgeId, remote: Remote) {
        self.remotes.insert(bridge, remote);
    }

    /// Opens, on `runtime`, the connections the core asks for
    /// ([`mqtt_broker::Broker::poll_dial`]): its bridges' remote legs, served by the hub
    /// once connected. Call it where the core is drained, after the events.
    pub fn dial<H: Hooks>(&mut self, broker: &mut Broker<H>, runtime: &tokio::runtime::Handle) {
        while let Some(dial) = broker.poll_dial() {
            let remote = self.remotes.get(&dial.bridge).cloned().unwrap_or_default();
            self.acceptor.dial(runtime, dial, remote);
        }
    }

    /// Whether connection `id` is one of the hub's.
    pub fn contains(&self, id: ConnectionId) -> bool {
        self.links.contains_key(&id)
    }

    /// Applies the next thing the connection tasks sent (a new connection, bytes, a
    /// close) to `broker`; `false` once there is nothing left, after which `notify` fires
    /// again when there is. Drain the core after each call that returns `true`.
    pub fn poll<H: Hooks>(&mut self, broker: &mut Broker<H>, now: Instant) -> bool {
        // Cleared before the channel and the writable list are looked at: whatever is
        // sent or made writable after this notifies again.
        self.shared.pending.swap(false, Ordering::AcqRel);
        let writable = std::mem::take(
            &mut *self
                .shared
                .writable
                .lock()
                .unwrap_or_else(|e| e.into_inner()),
        );
        if !writable.is_empty() {
            for id in writable {
                self.send(broker, now, id, false, false);
            }
            return true;
        }
        let Ok(msg) = self.rx.try_recv() else {
            return false;
        };
        match msg {
            ToCore::DialFailed(bridge) => broker.dial_failed(now, bridge),
            ToCore::Open {
                tx,
                info,
                reply,
                bridge,
            } => {
                let id = match (bridge, info) {
                    (Some(bridge), _) => match broker.connect_bridge(now, bridge) {
                        Some(id) => id,
                        // Not dialling any more: the task finds its reply gone.
                        None => return true,
                    },
                    (None, Some(info)) => broker.open_with(now, *info),
                    (None, None) => broker.open(now),
                };
                tx.lock().ready = Some((id, self.shared.clone()));
                if reply.send(id).is_err() {
                    broker.handle_close(now, id);
                } else {
                    self.links.insert(
                        id,
                        Link {
                            tx,
                            input: BytesMut::new(),
                        },
                    );
                }
            }
            ToCore::Input(id, bytes) => {
                if let Some(link) = self.links.get_mut(&id) {
                    if link.input.is_empty() {
                        link.input = bytes.into();
                    } else {
                        link.input.extend_from_slice(&bytes);
                    }
                    broker.handle_input(now, id, &mut link.input);
                    // What the core consumed need not stay allocated.
                    if link.input.is_empty() {
                        link.input = BytesMut::new();
                    }
                }
            }
            ToCore::Closed(id) => {
                if let Some(link) = self.links.remove(&id) {
                    tracing::debug!(?id, "closed by peer");
                    // The task waits on its outbox, not on our handle: tell it.
                    link.tx.close(true);
                    broker.handle_close(now, id);
                }
            }
        }
        true
    }

    /// Carries out `event` if it concerns one of the hub's connections (`false`
    /// otherwise): hands the connection its output, closes it, pauses or resumes reading.
    pub fn handle_event<H: Hooks>(
        &mut self,
        broker: &mut Broker<H>,
        now: Instant,
        event: &BrokerEvent,
    ) -> bool {
        let id = event.connection();
        let Some(link) = self.links.get_mut(&id) else {
            return false;
        };
        match *event {
            BrokerEvent::Transmit(_) => self.send(broker, now, id, false, false),
            BrokerEvent::Close { reason, .. } => {
                let slow = reason == CloseReason::SlowConsumer;
                if slow {
                    tracing::warn!(?id, "client not reading; disconnecting");
                } else {
                    tracing::debug!(?id, ?reason, "closing");
                }
                self.send(broker, now, id, true, slow);
            }
            BrokerEvent::Pause(_) => link.tx.set_read_paused(true),
            BrokerEvent::Resume(_) => {
                link.tx.set_read_paused(false);
                if !link.input.is_empty() {
                    broker.handle_input(now, id, &mut link.input);
                    if link.input.is_empty() {
                        link.input = BytesMut::new();
                    }
                }
            }
            // Events of later versions concern no transport.
            _ => {}
        }
        true
    }

    /// Hands connection `id` its output, and closes it if asked to (`discard`: without
    /// writing what is queued).
    fn send<H: Hooks>(
        &mut self,
        broker: &mut Broker<H>,
        now: Instant,
        id: ConnectionId,
        close: bool,
        discard: bool,
    ) {
        let Some(link) = self.links.get(&id) else {
            return;
        };
        // Its task has not taken the last output: leave this in the core (pushing back on
        // its publishers) until the task says it took it.
        if close || !link.tx.hold_back() {
            loop {
                match broker.poll_transmit(now, id, &mut self.out) {
                    Ok(Some(n)) => self.batch.extend_from_slice(&self.out[..n]),
                    Ok(None) => break,
                    // Larger than any packet so far (properties the broker adds): grow.
                    Err(BrokerError::BufferTooSmall { needed }) => self.out.resize(needed, 0),
                    Err(e) => {
                        tracing::warn!(?id, "transmit: {e}");
                        break;
                    }
                }
            }
        }
        // Refused: the client has not read what came before (it is closed as not
        // reading), or its task is gone (and its `Closed` on its way).
        let ok = self.batch.is_empty() || link.tx.push(&self.batch, self.write_queue).is_ok();
        self.batch.clear();
        if close || !ok {
            link.tx.close(discard || !ok);
            self.links.remove(&id);
            tracing::debug!(?id, "closed by broker");
            broker.handle_close(now, id);
        }
    }
}
