//! Sans-IO MQTT session state machines: the client and the server side of one connection,
//! for MQTT 3.1, 3.1.1 and 5.0.
//!
//! # What it does
//!
//! [`Client`] and [`ServerSession`] run everything between the bytes and the application:
//! CONNECT/CONNACK, keep alive (PINGREQ when idle, a deadline for PINGRESP; 1.5 times the
//! keep alive on the server), QoS 1 and 2 in both directions with duplicate suppression,
//! packet identifiers that are never reused while in flight, Receive Maximum flow control
//! both ways, acknowledgements in the order the standard requires even when the
//! application acknowledges out of order, topic aliases both ways, Maximum Packet Size, and
//! session resumption: what is unacknowledged is re-sent with DUP after a resumed
//! reconnect, in its original order. The state that must survive is a [`SessionState`],
//! exported and restored (with `serde` behind the `serde` feature).
//!
//! # What it does not do
//!
//! No sockets, no clocks, no threads, no async runtime. Time comes in as an argument
//! ([`Instant`], milliseconds on the caller's monotonic clock); timers go out as a deadline
//! from `poll_timeout`. Routing messages between connections is a broker's job (the `mqtt-broker`
//! crate): the server machine hands received messages out as events and accepts messages
//! to deliver.
//!
//! # The loop
//!
//! Every input is a `handle_*` call and every command a verb (`publish`, `subscribe`,
//! `disconnect`, ...), each with `now`. After any of them, one step hands out everything
//! pending: `poll_output` until `Ok(None)`. It gives events before bytes, so whatever the
//! application queues while handling an event (a SUBSCRIBE in answer to
//! [`Event::Connected`]) comes out in the same drain, and the bytes come in batches of
//! whole packets, one write each. Only when it returns `Ok(None)` wait, for the socket or
//! until `poll_timeout`, whichever comes first. (`poll_event` and `poll_transmit` remain
//! for those who drain separately: events first, then transmit, and again while either
//! had something.)
//!
//! A complete client over a blocking `std::net::TcpStream`: it subscribes once
//! connected, publishes, keeps the connection alive, and after ten messages closes
//! cleanly.
//!
//! ```no_run
//! use std::io::{ErrorKind, Read, Write};
//! use std::net::TcpStream;
//!
//! use mqtt_state::bytes::BytesMut;
//! use mqtt_state::codec::{ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};
//! use mqtt_state::{Client, ClientConfig, Event, Instant, Message, Output, TopicBuf};
//!
//! fn main() -> Result<(), Box<dyn std::error::Error>> {
//!     let mut sock = TcpStream::connect("localhost:1883")?;
//!     // The machine batches packets itself: Nagle would only add delay.
//!     sock.set_nodelay(true)?;
//!     // The machine's clock: milliseconds on a monotonic clock of ours.
//!     let start = std::time::Instant::now();
//!     let clock = || Instant::from_millis(start.elapsed().as_millis() as u64);
//!
//!     let mut client = Client::new(ClientConfig::new(ProtocolVersion::V5, "sensor-1"));
//!     client.connect(clock())?;
//!     let mut out = vec![0u8; 64 * 1024];
//!     let mut input = BytesMut::with_capacity(64 * 1024);
//!     let mut chunk = [0u8; 16 * 1024];
//!     let mut received = 0;
//!     loop {
//!         let now = clock();
//!         // Timers first (PINGREQ when idle, PINGRESP and CONNACK deadlines); early calls
//!         // do nothing, so calling it every turn is fine.
//!         client.handle_timeout(now);
//!         // 1. Drain everything pending: events, then bytes, until neither is left.
//!         while let Some(output) = client.poll_output(now, &mut out)? {
//!             match output {
//!                 Output::Event(Event::Connected(_)) => {
//!                     let opts = SubscriptionOptions::qos(QoS::AtLeastOnce);
//!                     client.subscribe(now, &[("sensors/#", opts)], None)?;
//!                     let topic = TopicBuf::from_static("sensors/t1")?;
//!                     client.publish(now, Message::new(topic, "21.5", QoS::AtLeastOnce))?;
//!                 }
//!                 Output::Event(Event::Message { message, .. }) => {
//!                     println!("{}: {:?}", message.topic, message.payload);
//!                     received += 1;
//!                     if received == 10 {
//!                         // Shutdown: the DISCONNECT goes out in this same drain.
//!                         client.disconnect(now, ReasonCode::Success)?;
//!                     }
//!                 }
//!                 Output::Event(Event::Disconnected { reason, by_peer, .. }) => {
//!                     println!("closed ({reason}, by the broker: {by_peer})");
//!                 }
//!                 Output::Event(_) => {}
//!                 Output::Transmit(n) => sock.write_all(&out[..n])?,
//!             }
//!         }
//!         // A clean close, ours or the broker's, is no error: the machine is just done.
//!         if client.is_closed() {
//!             return Ok(());
//!         }
//!         // 2. Wait for bytes or the next deadline, whichever comes first.
//!         let wait = client.poll_timeout().map(|at| {
//!             // `Some(0)` would be refused: wait at least a millisecond.
//!             let ms = at.saturating_since(clock()).as_millis().max(1);
//!             std::time::Duration::from_millis(ms)
//!         });
//!         sock.set_read_timeout(wait)?;
//!         match sock.read(&mut chunk) {
//!             Ok(0) => {
//!                 client.handle_close(clock());
//!                 return Err("the broker closed the connection".into());
//!             }
//!             Ok(n) => {
//!                 input.extend_from_slice(&chunk[..n]);
//!                 client.handle_input(clock(), &mut input)?;
//!             }
//!             // The deadline: the next turn's `handle_timeout` acts on it. A read with a
//!             // timeout that a signal interrupted is not restarted by the kernel.
//!             Err(e)
//!                 if matches!(
//!                     e.kind(),
//!                     ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
//!                 ) => {}
//!             Err(e) => return Err(e.into()),
//!         }
//!     }
//! }
//! ```
//!
//! The same steps, without a socket:
//!
//! ```
//! use mqtt_state::bytes::BytesMut;
//! use mqtt_state::codec::{ProtocolVersion, QoS};
//! use mqtt_state::{Client, ClientConfig, Event, Instant, Message, TopicBuf};
//!
//! let mut client = Client::new(ClientConfig::new(ProtocolVersion::V5, "sensor-1"));
//! let now = Instant::from_millis(0);
//! client.connect(now)?;
//! let mut out = [0u8; 1024];
//! let n = client.poll_transmit(now, &mut out)?.expect("CONNECT");
//! // ... write out[..n] to the socket; read the server's CONNACK into a BytesMut:
//! let mut input = BytesMut::from(&[0x20, 0x03, 0x00, 0x00, 0x00][..]);
//! client.handle_input(now, &mut input)?;
//! assert!(matches!(client.poll_event(), Some(Event::Connected(_))));
//! // The topic is checked once, here ([MQTT-3.3.2-2]); a wildcard would be an `Err`.
//! let topic = TopicBuf::from_static("sensors/t").expect("a valid topic name");
//! client.publish(now, Message::new(topic, "21.5", QoS::AtLeastOnce))?;
//! let n = client.poll_transmit(now, &mut out)?.expect("PUBLISH");
//! assert_eq!(out[0] >> 4, 3);
//! # Ok::<(), mqtt_state::Error>(())
//! ```
//!
//! A failure is sticky: the machine queues a DISCONNECT with the reason code (where the
//! protocol has one), `poll_transmit` hands it out, and from then on every call returns the
//! same error. Close the transport then. A clean close is not a failure: the peer's
//! DISCONNECT with Normal disconnection, or a `disconnect` the application asked for,
//! ends with [`Event::Disconnected`] and `is_closed()`, never `Err(Disconnected)`.
//!
//! # Memory
//!
//! Queues are bounded by the configuration but not reserved up front: they grow to their
//! high-water mark and keep that capacity, so an idle connection (the push-service case)
//! holds no queue memory, while steady-state traffic allocates nothing. Payloads are
//! `bytes::Bytes` shared with the receive buffer or the application, so a QoS 1 or 2
//! publish/ack cycle allocates nothing once warm (`tests/alloc.rs`). The packet identifier
//! allocator costs a few bytes per message in flight rather than a bitmap per connection.
//!
//! # Features
//!
//! - `std` (default): conversions between [`Duration`] and `std::time::Duration`; `std` in
//!   `mqtt-codec`, `bytes` and `thiserror`.
//! - `serde`: `Serialize` and `Deserialize` for [`SessionState`] and what it holds
//!   ([`Outgoing`], [`Inflight`], [`Stage`], [`Message`], [`MessageProperties`],
//!   [`Instant`], [`Duration`]), to keep a session across a restart of the program.
//!
//! Without `std` the crate is `#![no_std]`; it needs an allocator.
#![no_std]
// docs.rs (`--cfg docsrs`, nightly): mark feature-gated items with the feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod client;
mod conn;
mod error;
mod event;
mod heartbeat;
mod message;
mod packet_id;
#[cfg(feature = "serde")]
mod serde_impls;
mod server;
mod session;
mod time;

#[cfg(test)]
mod tests;

pub use client::{Client, ClientConfig};
pub use error::{Error, Violation};
pub use event::{ConnAckInfo, ConnectRequest, Event, Output};
pub use heartbeat::{Heartbeat, HeartbeatConfig};
pub use message::{Diagnostics, Message, MessageProperties, SubscriptionIdList, Utf8Bytes};
pub use packet_id::PacketIdAllocator;
pub use server::{Accept, ServerConfig, ServerSession};
pub use session::{Inflight, Outgoing, SessionState, Stage};
pub use time::{Duration, Instant, Timer};

/// The `bytes` crate this one takes and hands out buffers of (`Bytes`, `BytesMut`), so
/// that an application names the same version without a dependency of its own.
pub use bytes;
pub use mqtt_codec as codec;
/// The topic crate ([`TopicBuf`], filter matching), re-exported for the same reason.
pub use mqtt_topic;
pub use mqtt_topic::TopicBuf;

// README.md's example is compiled and run with the crate's doctests, so it cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
