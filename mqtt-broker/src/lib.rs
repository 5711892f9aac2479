//! A sans-IO MQTT broker core: every connection's [`mqtt_state::ServerSession`], the
//! sessions that outlive them, routing through the subscription tree, retained messages,
//! wills and `$SYS` statistics, for MQTT 3.1, 3.1.1 and 5.0 clients on the same broker.
//!
//! # What it does not do
//!
//! No sockets, no clocks, no threads, no async runtime. The embedding program owns the
//! sockets and the clock; this crate owns the protocol. The per-connection protocol (QoS
//! handshakes, keep alive, flow control) is `mqtt-state`'s; this crate routes between
//! connections. Input is never trusted: no bytes a client sends make it panic.
//!
//! # The run loop
//!
//! The embedding program tells the broker when a connection opens ([`Broker::open`]), what
//! bytes arrived ([`Broker::handle_input`]), when it closed ([`Broker::handle_close`]) and
//! what time it is ([`Broker::handle_timeout`]). After each of these it drains
//! [`Broker::poll_event`], which says what to do:
//!
//! - [`BrokerEvent::Transmit`]: drain [`Broker::poll_transmit`] for that connection into
//!   its socket. A buffer too small for the next packet is [`Error::BufferTooSmall`] with
//!   the size needed; the packet stays queued.
//! - [`BrokerEvent::Close`]: drain it likewise, close the socket, call
//!   [`Broker::handle_close`]. Every close the core decides comes this way, with its
//!   [`CloseReason`].
//! - [`BrokerEvent::Pause`] / [`BrokerEvent::Resume`]: stop / start reading that
//!   connection's socket. A publisher is paused while a subscriber it feeds cannot keep up,
//!   rather than the subscriber's messages being dropped (see [`BrokerConfig::server`] and
//!   [`QoS0Overflow`]). On Resume, call [`Broker::handle_input`] with the bytes left in its
//!   buffer.
//!
//! Decisions that may wait: a [`Hooks`] method may answer [`Verdict::Defer`] (a password
//! check on another thread, a directory lookup). The question then comes out of
//! [`Broker::poll_request`] as a [`Request`] keyed by connection, answered later with
//! [`Broker::accept`], [`Broker::reject`] (reason code and reason string) or
//! [`Broker::challenge`]; meanwhile that one connection is paused and every other keeps
//! flowing. Unanswered for [`BrokerConfig::decision_timeout`], the connection is closed
//! ([`CloseReason::DecisionTimeout`]).
//!
//! Durability: with [`BrokerConfig::persistence`] set, every change that must survive a
//! crash (sessions, subscriptions, wills, queued and in-flight QoS 1/2 messages, QoS 2
//! state, retained messages) comes out of [`Broker::poll_store`] as a batch of
//! [`StoreOp`]s after each turn; the program writes the batch to its store and calls
//! [`Broker::handle_durable`]. With [`Persistence::Sync`] no PUBACK, PUBREC, SUBACK or
//! UNSUBACK leaves before that: what was acknowledged is on disk. After a restart,
//! [`Broker::restore`] takes the stored entries back. See [`Persistence`].
//!
//! Then it waits for input or for [`Broker::poll_timeout`]. Deadlines sit in a timer wheel:
//! the cost of a call does not grow with the number of connections it does not concern.
//!
//! ```
//! use bytes::BytesMut;
//! use mqtt_broker::{Broker, BrokerConfig, BrokerEvent};
//! use mqtt_state::Instant;
//!
//! let now = Instant::ZERO;
//! let config = BrokerConfig { sys_interval: None, ..BrokerConfig::default() };
//! let mut broker = Broker::new(config, now);
//! let conn = broker.open(now);
//! // A 3.1.1 CONNECT from client "c" with keep alive 60 s, as read from its socket.
//! let mut input = BytesMut::from(
//!     &[0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'c'][..],
//! );
//! broker.handle_input(now, conn, &mut input);
//! let mut out = [0u8; 256];
//! while let Some(event) = broker.poll_event() {
//!     match event {
//!         BrokerEvent::Transmit(id) => {
//!             while let Some(n) = broker.poll_transmit(now, id, &mut out).unwrap() {
//!                 assert_eq!(&out[..n], &[0x20, 2, 0, 0]); // CONNACK: accepted
//!                 // ... write out[..n] to the connection's socket
//!             }
//!         }
//!         BrokerEvent::Close { id, reason } => {
//!             // ... drain poll_transmit, close the socket, log `reason`
//!             broker.handle_close(now, id);
//!         }
//!         BrokerEvent::Pause(_id) => { /* stop reading its socket */ }
//!         BrokerEvent::Resume(_id) => { /* read it again, handle_input its buffer */ }
//!         _ => {}
//!     }
//! }
//! assert_eq!(broker.connection_count(), 1);
//! assert_eq!(broker.session_count(), 1);
//! // A deadline may come up early (here the CONNECT timeout, since met); handling it
//! // then only finds the real one: keep alive 60 s, 1.5 times that without a packet
//! // closes the connection.
//! let early = broker.poll_timeout().unwrap();
//! broker.handle_timeout(early);
//! assert!(broker.poll_event().is_none());
//! assert_eq!(broker.poll_timeout(), Some(Instant::from_millis(90_000)));
//! ```
//!
//! # Features
//!
//! - `std` (default): [`BrokerConfig::default`] takes [`BrokerConfig::hash_seed`] from
//!   `std`'s `RandomState`, a new random key per broker; `std` in `mqtt-state`,
//!   `mqtt-codec`, `mqtt-topic` and `bytes`.
//!
//! Without `std` the crate is `#![no_std]`; it needs an allocator, and the default
//! `hash_seed` is a fixed value: a broker that serves untrusted clients should set it from a
//! random source (hash flooding).
#![no_std]
// docs.rs (`--cfg docsrs`, nightly): mark feature-gated items with the feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod admin;
mod bridge;
mod broker;
mod cluster;
mod config;
mod conn;
mod connect;
mod decide;
mod error;
mod event;
mod hooks;
mod index;
mod persist;
mod registry;
mod routing;
mod slots;
mod stats;
mod subscriptions;
mod timers;

pub use admin::{SessionInfo, SubscriptionInfo};
pub use bridge::{BridgeConfig, BridgeId, BridgeState, BridgeTopic, Dial, Direction};
pub use broker::Broker;
pub use cluster::{ClusterConfig, ClusterFilter, ClusterOp, ClusterTarget};
pub use config::{BrokerConfig, QoS0Overflow};
pub use decide::{ConnInfo, Context, Request, RequestId, RequestKind};
pub use error::Error;
pub use event::{BrokerEvent, CloseReason, ConnectionId};
pub use hooks::{AllowAll, AuthStep, DeferAll, Hooks, Verdict};
pub use persist::{Batch, Persistence, StoreOp, Table};
pub use stats::Stats;

pub use mqtt_codec as codec;
pub use mqtt_state as state;
pub use mqtt_topic as topic;

// README.md's example is compiled and run with the crate's doctests, so it cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
