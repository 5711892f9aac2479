//! A sans-IO MQTT broker core: every connection's [`mqtt_state::ServerSession`], the
//! sessions that outlive them, routing through the subscription tree, retained messages,
//! wills and `$SYS` statistics, for MQTT 3.1, 3.1.1 and 5.0 clients on the same broker.
//!
//! # What it does not do
//!
//! No sockets, no clocks, no threads, no async runtime. The embedding program owns the
//! sockets and the clock; this crate owns the protocol. The per-connection protocol (QoS
//! handshakes, keep alive, flow control) is `mqtt-state`'s; this crate routes between
//! connections.
//!
//! # The run loop
//!
//! The embedding program tells the broker when a connection opens ([`Broker::open`]), what
//! bytes arrived ([`Broker::handle_input`]), when it closed ([`Broker::handle_close`]) and
//! what time it is ([`Broker::handle_timeout`]); it drains bytes to send per connection
//! ([`Broker::poll_transmit`]), and [`Broker::poll_event`] says which connections have
//! output or must be closed. Then it waits for input or for [`Broker::poll_timeout`].
//!
//! ```
//! use bytes::BytesMut;
//! use mqtt_broker::{Broker, BrokerConfig, BrokerEvent};
//! use mqtt_state::Instant;
//!
//! let now = Instant::ZERO;
//! let mut broker = Broker::new(BrokerConfig::default(), now);
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
//!             while let Some(n) = broker.poll_transmit(now, id, &mut out) {
//!                 assert_eq!(&out[..n], &[0x20, 2, 0, 0]); // CONNACK: accepted
//!                 // ... write out[..n] to the connection's socket
//!             }
//!         }
//!         BrokerEvent::Close(id) => broker.handle_close(now, id),
//!     }
//! }
//! ```
#![no_std]
#![forbid(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod broker;

#[cfg(test)]
mod tests;

pub use broker::{
    AllowAll, AuthStep, Broker, BrokerConfig, BrokerEvent, ConnectionId, Hooks, Stats,
};

pub use mqtt_codec as codec;
pub use mqtt_state as state;
pub use mqtt_topic as topic;
