//! MQTT for tokio: an async client — the sans-IO [`mqtt_state::Client`] machine driven over
//! TCP, TLS (rustls) or WebSocket, behind a cloneable handle — and, with the `server`
//! feature (on by default), a server runner ([`server`]) that serves an
//! [`mqtt_broker::Broker`] core over TCP, TLS, WebSocket and secure WebSocket and answers
//! its deferred decisions with async functions.
//!
//! ```no_run
//! use mqtt_tokio::{AsyncClient, Options, QoS};
//!
//! # async fn run() -> Result<(), mqtt_tokio::Error> {
//! let options = Options::new("demo", "127.0.0.1", 1883);
//! let (client, mut incoming) = AsyncClient::connect(options).await?;
//! client.subscribe("demo/#", QoS::AtLeastOnce).await?;
//! let publisher = client.clone();
//! tokio::spawn(async move {
//!     for i in 0..1000u32 {
//!         publisher.publish("demo/n", QoS::AtLeastOnce, i.to_string()).await?;
//!     }
//!     Ok::<_, mqtt_tokio::Error>(())
//! });
//! for _ in 0..1000 {
//!     let message = incoming.recv().await.expect("the client is running");
//!     println!("{}: {:?}", message.topic, message.payload);
//! }
//! client.disconnect().await?;
//! # Ok(())
//! # }
//! ```
//!
//! # Design
//!
//! [`AsyncClient::connect`] opens the transport, sends CONNECT, waits for CONNACK and
//! spawns one task that owns the socket and the machine. Handles ([`AsyncClient`], `Clone
//! + Send`) talk to it through a bounded request queue ([`Options::request_capacity`]):
//! when it is full, or the machine's own queue is (`config.max_queued`), request futures
//! wait, which is the backpressure. Every request carries a one-shot reply, so
//! [`AsyncClient::publish`], [`AsyncClient::subscribe`], [`AsyncClient::unsubscribe`] and
//! [`AsyncClient::disconnect`] resolve when the broker answers (PUBACK/PUBCOMP, SUBACK,
//! UNSUBACK) with its reason codes; QoS 0 resolves once the machine has queued it.
//! [`AsyncClient::enqueue`] returns the acknowledgement as a future instead, for many
//! messages in flight from one task. Received messages come out of [`Incoming`] (a
//! receiver and a `Stream`).
//!
//! Every protocol decision is the machine's: packet identifiers, Receive Maximum, keep
//! alive, QoS 2 duplicate suppression ([MQTT-4.3.3-10]) and, after a reconnect that resumes
//! the session, re-sending what was unacknowledged with DUP set, in order ([MQTT-4.4.0-1],
//! [MQTT-4.6.0-1]). This crate moves bytes and time, and maps requests to replies.
//!
//! # The run loop
//!
//! After every input — bytes read, a request, a timer — the task drains the machine
//! completely before it waits again:
//!
//! 1. hand out every `poll_event` (replies, messages), which may queue packets: events
//!    come first, so that after a reconnect that found no session the resubscribe that
//!    `Event::Connected` queues goes out before the messages published again;
//! 2. gather every packet `poll_transmit` has into one buffer and write it in one call
//!    (one TCP segment train, one WebSocket frame; TCP_NODELAY is set, so a lone PINGREQ
//!    is not delayed by Nagle), and go back to 1 until both are idle;
//! 3. wait for the socket, the request queue, room in [`Incoming`], or `poll_timeout`
//!    (converted with [`Clock`]).
//!
//! A lost connection (I/O error, keep alive timeout, the broker's DISCONNECT) is followed by
//! reconnects with exponential backoff ([`Options::reconnect`]); requests are taken
//! meanwhile and go out on the next connection. If the broker has no session any more
//! (Session Present 0, [MQTT-3.2.2-5]) the client publishes again what was not
//! acknowledged and subscribes again ([`Options::resubscribe`]). Use
//! [`Options::persistent_session`] for the session to survive (the broker keeps QoS 1/2
//! messages for the client while it is away, [MQTT-3.1.2-5]).
//!
//! # Shutdown
//!
//! [`AsyncClient::disconnect`] takes no more requests, waits for everything queued before
//! it to be acknowledged, sends DISCONNECT and closes: `Ok(())`. If the connection is lost
//! meanwhile it returns [`Error::Unfinished`] with the messages that did not complete, and
//! every pending request future resolves to [`Error::Closed`]: nothing in flight is
//! dropped without a word. Dropping every handle and the [`Incoming`] receiver also ends
//! the task (with a DISCONNECT, without waiting).
//!
//! # Reading and waiting
//!
//! When [`Options::incoming_capacity`] messages are unread and as many again wait in the
//! task, it stops reading the socket, and with it acknowledgements. Read [`Incoming`] in
//! another task than the one awaiting acknowledgements (as above) when more than that many
//! messages may arrive before you read.
//!
//! # TLS and WebSocket
//!
//! [`tls_config`] builds a rustls configuration from a CA in PEM (or the Mozilla roots of
//! `webpki-roots`, feature `webpki-roots`, on by default) and an optional client
//! certificate; pass it to [`Options::tls`]. [`Options::websocket`] selects MQTT over
//! WebSocket (`ws://`, or `wss://` with TLS) with the subprotocol `mqtt` ([MQTT-6.0.0-3]).
//!
//! # Features
//!
//! - `webpki-roots` (default): [`tls_config`] with no CA trusts the Mozilla root set
//!   compiled into the `webpki-roots` crate. Without it, a CA must be given (the platform's
//!   certificate store is never read).
//! - `server` (default): the [`server`] runner.
//! - `store`: durable storage for the server's core ([`store`]): a redb file on disk
//!   ([`store::RedbStore`]) or memory ([`store::MemoryStore`]), restored at start
//!   ([`server::Server::store`]): what the broker acknowledged survives a crash.
//! - `cluster`: a broker node's link to the other nodes of its cluster over NATS
//!   ([`cluster::Cluster`], with the official `async-nats` client): messages, retained
//!   messages, shared subscriptions, and sessions that move between nodes and outlive
//!   a dead one (stored in NATS with [`cluster::Cluster::store`], which needs `store`).
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
#[cfg(feature = "cluster")]
#[cfg_attr(docsrs, doc(cfg(feature = "cluster")))]
pub mod cluster;
mod driver;
mod error;
mod options;
#[cfg(feature = "server")]
#[cfg_attr(docsrs, doc(cfg(feature = "server")))]
pub mod server;
#[cfg(feature = "store")]
#[cfg_attr(docsrs, doc(cfg(feature = "store")))]
pub mod store;
mod time;
mod transport;

pub use client::{Ack, AckFuture, AckToken, AsyncClient, Delivery, Incoming, Progress, Status};
pub use error::Error;
pub use options::{tls_config, Hook, Options};
pub use time::Clock;

/// The broker core the [`server`] serves.
#[cfg(feature = "server")]
pub use mqtt_broker as broker;
pub use mqtt_state;
pub use mqtt_state::codec::{ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};
pub use mqtt_state::{ClientConfig, Message, TopicBuf};
pub use tokio_rustls::rustls;
