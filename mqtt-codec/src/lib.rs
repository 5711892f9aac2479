//! A zero-copy, `no_std` codec for every MQTT 3.1, 3.1.1 and 5.0 control packet.
//!
//! # What it does
//!
//! [`decode`] turns the front of a byte slice into a [`Packet`] that borrows from it: topic
//! names are a checked [`Topic`] over the input, strings `&str`, payloads `&[u8]`, and the
//! lists a packet carries (user properties, SUBSCRIBE filters, SUBACK codes) stay in the
//! input and are read through iterators. Decoding allocates nothing and copies nothing.
//!
//! ```
//! use mqtt_codec::{decode, DecodeOptions, Packet, ProtocolVersion, Status};
//!
//! let opts = DecodeOptions::new(ProtocolVersion::V3_1_1).max_packet_size(1 << 20);
//! let mut input: &[u8] = &[0xC0, 0x00, 0xD0, 0x00]; // PINGREQ, PINGRESP
//! let mut seen = 0;
//! loop {
//!     match decode(input, &opts)? {
//!         Status::Complete { packet, consumed } => {
//!             seen += 1;
//!             input = &input[consumed..];
//!         }
//!         // Read at least `needed` more bytes, then call again.
//!         Status::Incomplete { needed } => break,
//!     }
//! }
//! assert_eq!(seen, 2);
//! # Ok::<(), mqtt_codec::Error>(())
//! ```
//!
//! Encoding is the mirror: [`Packet::encoded_len`] is exact, and [`Packet::encode`] writes
//! into a caller's buffer (or a `bytes::BufMut`, or a new `Vec`), refusing up front what
//! the protocol forbids instead of emitting bad bytes. A PUBLISH's topic is the one thing
//! checked earlier, when its [`Topic`] is made: a broker that forwards one message to many
//! subscribers, or a client that resends it, does not scan it again.
//!
//! # Promises
//!
//! - **No panic on any input.** Every length is checked before it is read; a field that
//!   runs past its frame is [`Error::UnexpectedEnd`], not a slice panic. Fuzz targets in
//!   `fuzz/` hold the codec to this.
//! - **Incomplete is not an error.** Only the framer says [`Status::Incomplete`], with the
//!   exact number of missing bytes once the fixed header is known. A frame that is
//!   complete but whose contents are short is malformed.
//! - **Oversize is refused from the header.** [`DecodeOptions::max_packet_size`] is checked
//!   as soon as the remaining length is read, before the body has arrived, so a peer cannot
//!   make the caller buffer what it announces.
//! - **Validated once.** A decoded packet has passed every rule this layer owns: reserved
//!   flags, QoS, packet identifiers, UTF-8 (no surrogates, no U+0000), topic names and
//!   filters (through `mqtt-topic`), CONNECT flag consistency, property identifiers,
//!   duplicates and ranges, and reason codes per packet. Accessors then cannot fail.
//! - **One `unsafe` block.** Strings whose bytes a word-at-a-time scan finds all ASCII
//!   become `&str` without running `from_utf8` over them again (`reader.rs`,
//!   `str_from_ascii`; a test compares the scan with a byte loop at every length and
//!   position). Topic names take `mqtt_topic::is_ascii_name`, which checks ASCII and the
//!   name rules in the same pass. Everything else is safe code, and the lint denies any
//!   other `unsafe`.
//! - **Every error names its reason code.** [`Error::reason_code`] gives the 5.0 code to
//!   send before closing (Malformed Packet, Protocol Error, Packet Too Large, ...).
//!
//! # What it does not do
//!
//! No I/O, no buffering, no session state: which packet may come next, packet identifier
//! bookkeeping, topic alias resolution and keep alive belong to `mqtt-state`. Rules that
//! need that state (a second CONNECT, an unknown alias) are not checked here.
//!
//! # Features
//!
//! - `std` (default): implies `alloc`. ([`Error`] implements `core::error::Error`, which is
//!   `std::error::Error`, with or without it.)
//! - `alloc`: [`Packet::encode_to_vec`].
//! - `bytes`: [`Packet::encode_to`] for any `BufMut`, and [`OwnedPacket`], a decoded packet
//!   that keeps its frame as `bytes::Bytes` for queues and retransmission, copying nothing.
//! - `arbitrary`: the [`fuzzing`] module's packet generator, for fuzzers and property tests.
//!
//! Without features the crate is `#![no_std]` and needs no allocator.
//!
// Links to feature-gated items resolve to the feature list when those items are compiled out,
// so the docs build warning-free with any feature set.
#![cfg_attr(not(feature = "alloc"), doc = "[`Packet::encode_to_vec`]: #features")]
#![cfg_attr(not(feature = "bytes"), doc = "[`Packet::encode_to`]: #features")]
#![cfg_attr(not(feature = "bytes"), doc = "[`OwnedPacket`]: #features")]
#![cfg_attr(not(feature = "arbitrary"), doc = "[`fuzzing`]: #features")]
#![no_std]
// docs.rs (`--cfg docsrs`, nightly): mark feature-gated items with the feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]
// `deny`, not `forbid`: one audited exception in reader.rs (`str_from_ascii`).
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod auth;
mod connack;
mod connect;
mod disconnect;
mod error;
mod list;
mod packet;
mod properties;
mod puback;
mod publish;
mod reader;
mod reason;
mod suback;
mod subscribe;
mod types;
mod unsuback;
mod unsubscribe;
mod varint;
mod writer;

#[cfg(feature = "bytes")]
mod owned;

#[cfg(any(test, feature = "arbitrary"))]
pub mod fuzzing;

#[cfg(test)]
mod tests;

pub use auth::Auth;
pub use connack::ConnAck;
pub use connect::{Connect, Will};
pub use disconnect::Disconnect;
pub use error::Error;
pub use list::{List, ListItem, ListIter};
pub use packet::{
    decode, decode_body, decode_fixed_header, DecodeOptions, FixedHeader, Packet, Status,
};
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PropertyId, PublishProperties, SubscribeProperties, SubscriptionIds, SubscriptionIdsIter,
    UnsubscribeProperties, UserProperties, UserPropertiesIter, WillProperties,
};
pub use puback::PubAck;
pub use publish::{Publish, Topic};
pub use reason::ReasonCode;
pub use suback::SubAck;
pub use subscribe::{Subscribe, Subscription};
pub use types::{
    PacketId, PacketType, ProtocolVersion, QoS, QosPid, RetainHandling, Sender, SubscriptionId,
    SubscriptionOptions,
};
pub use unsuback::UnsubAck;
pub use unsubscribe::Unsubscribe;

#[cfg(feature = "bytes")]
pub use owned::OwnedPacket;

// README.md's example is compiled and run with the crate's doctests, so it cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
