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
//! Every input is a `handle_*` call; after each, drain the outputs: `poll_transmit` until
//! `None`, `poll_event` until `None`, then wait for input or `poll_timeout`.
//!
//! ```
//! use bytes::BytesMut;
//! use mqtt_codec::{ProtocolVersion, QoS};
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
//! same error. Close the transport then.
//!
//! # Memory
//!
//! Queues are bounded by the configuration but not reserved up front: they grow to their
//! high-water mark and keep that capacity, so an idle connection (the push-service case)
//! holds no queue memory, while steady-state traffic allocates nothing. Payloads are
//! `bytes::Bytes` shared with the receive buffer or the application, so a QoS 1 or 2
//! publish/ack cycle allocates nothing once warm (`tests/alloc.rs`). The packet identifier
//! allocator costs a few bytes per message in flight rather than a bitmap per connection.
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod client;
mod conn;
mod error;
mod event;
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
