//! MQTT topic names and filters: validation, matching, shared subscriptions, and the
//! subscription tree and retained-message index a broker routes with.
//!
//! # What it does
//!
//! * **Validation** ([`validate_name`], [`validate_filter`], [`TopicName`], [`TopicFilter`]):
//!   the rules of MQTT 3.1.1 and 5.0 section 4.7. A name or filter is non-empty, at most 65,535
//!   bytes and has no U+0000; a name has no wildcard; `#` is alone in the last level of a
//!   filter; `+` fills its level. Every rule has its own [`Error`] variant that cites the
//!   normative statement and the byte offset. The typed wrappers can only be built valid, so
//!   the functions that take them need not check again.
//! * **Shared subscriptions** ([`parse_shared`], [`Subscription`], [`SharedFilter`]):
//!   `$share/{ShareName}/{filter}` from MQTT 5.0 section 4.8.2. [`validate_filter`] is pure
//!   section-4.7 syntax and accepts such strings as ordinary filters (as MQTT 3.1.1 does);
//!   [`Subscription::parse`] is what an MQTT 5 server calls on a SUBSCRIBE entry.
//! * **Matching** ([`matches()`]): `+`, `#` (which also matches its parent level), empty
//!   levels, the `$` rule, byte-for-byte comparison.
//! * **[`SubscriptionTree`]** (feature `alloc`): every subscription of a broker, stored level by
//!   level, matched against a topic without scanning them all; shared groups are reported as
//!   groups so the broker picks one member.
//! * **[`RetainedStore`]** (feature `alloc`): values keyed by topic name with the reverse
//!   lookup, every stored name a filter matches.
//! * **[`FilterSet`]** (feature `heapless`): a fixed-capacity list of filters for devices
//!   without an allocator.
//!
//! ```
//! use mqtt_topic::{Match, Subscription, SubscriptionTree, TopicName};
//!
//! let mut tree = SubscriptionTree::new();
//! tree.insert(Subscription::parse("site/+/temperature")?, "dashboard", 0u8);
//! tree.insert(Subscription::parse("$share/db/site/#")?, "writer-1", 1);
//! tree.insert(Subscription::parse("$share/db/site/#")?, "writer-2", 1);
//!
//! // On PUBLISH: validate the topic once, then route it.
//! let topic = TopicName::new("site/7/temperature")?;
//! tree.for_each_match(topic, |m| match m {
//!     Match::Plain { key, value: qos } => println!("send to {key} at QoS {qos}"),
//!     Match::Shared(group) => {
//!         let (member, _qos) = group.get(0).unwrap(); // pick one: round robin, hash...
//!         println!("send to {member} for group {}", group.name());
//!     }
//! });
//! # Ok::<(), mqtt_topic::Error>(())
//! ```
//!
//! # What it does not do
//!
//! No I/O, no packets (that is `mqtt-codec`), no sessions, no choice of which shared-group
//! member receives a message, no QoS downgrade or No Local handling: the trees store your `V`
//! and report matches; delivery policy stays with the broker. Topic aliases are resolved
//! before a name reaches this crate. Names with control characters or U+FEFF are accepted:
//! the specification only says they *should* not be used.
//!
//! # No panics on any input
//!
//! No function panics on any name, filter or sequence of tree operations; every malformed
//! input is an [`Error`]. Matching never recurses, so a 32,767-level topic cannot overflow the
//! stack. The only panic is capacity overflow when a tree would exceed `u32::MAX - 1` nodes,
//! the same class of failure as `Vec::push` running out of address space.
//!
//! # Cost
//!
//! Validation is one pass over the bytes, in 32-byte blocks that the compiler vectorises.
//! Validation and [`matches()`] never allocate. A tree match allocates nothing for topics of up to
//! 31 levels, and its cost depends on the topic's depth and the number of matching filters,
//! barely on how many filters are stored. The `tree` benchmark (`cargo bench -p mqtt-topic
//! --bench tree`) measures it against a linear scan and reports the bytes used per filter.
//!
//! # Features
//!
//! * `std` (default): implies `alloc`; nothing else yet.
//! * `alloc`: [`SubscriptionTree`], [`RetainedStore`], [`OwnedTopicName`],
//!   [`OwnedTopicFilter`].
//! * `bytes`: implies `alloc`; [`TopicBuf`], a checked name in a shared `bytes::Bytes`, for
//!   messages that carry their topic to many subscribers without checking it again.
//! * `heapless`: [`FilterSet`].
//!
//! Without features the crate is `#![no_std]` and needs no allocator.
//!
//! # Specification IDs
//!
//! Checks cite MQTT 5.0 IDs such as `[MQTT-4.7.1-2]`; MQTT 3.1.1 numbers some of the same rules
//! differently, and [`Error`] notes both.
//!
// Links to feature-gated items resolve to the feature list when those items are compiled out,
// so the docs build warning-free with any feature set.
#![cfg_attr(not(feature = "heapless"), doc = "[`FilterSet`]: #features")]
#![cfg_attr(not(feature = "alloc"), doc = "[`SubscriptionTree`]: #features")]
#![cfg_attr(not(feature = "alloc"), doc = "[`RetainedStore`]: #features")]
#![cfg_attr(not(feature = "alloc"), doc = "[`OwnedTopicName`]: #features")]
#![cfg_attr(not(feature = "alloc"), doc = "[`OwnedTopicFilter`]: #features")]
#![cfg_attr(not(feature = "bytes"), doc = "[`TopicBuf`]: #features")]
#![no_std]
// docs.rs (`--cfg docsrs`, nightly): mark feature-gated items with the feature they need.
#![cfg_attr(docsrs, feature(doc_cfg))]
// Forbidden but for two audited exceptions: `TopicName::from_ascii` and `TopicBuf::as_str`.
#![deny(unsafe_code)]
#![warn(missing_docs, unreachable_pub)]

#[cfg(any(feature = "alloc", test))]
extern crate alloc;
#[cfg(any(feature = "std", test))]
extern crate std;

#[cfg(feature = "bytes")]
mod buf;
mod error;
#[cfg(feature = "heapless")]
mod filter_set;
mod matching;
#[cfg(feature = "alloc")]
mod retained;
mod shared;
#[cfg(feature = "alloc")]
mod tree;
#[cfg(feature = "alloc")]
mod trie;
mod validate;

#[cfg(feature = "bytes")]
pub use buf::TopicBuf;
pub use error::Error;
#[cfg(feature = "heapless")]
pub use filter_set::FilterSet;
pub use matching::matches;
#[cfg(feature = "alloc")]
pub use retained::RetainedStore;
pub use shared::{parse_shared, SharedFilter, Subscription};
#[cfg(feature = "alloc")]
pub use tree::{Match, SharedGroup, SubscriptionTree};
pub use validate::{is_ascii_name, validate_filter, validate_name, TopicFilter, TopicName};
#[cfg(feature = "alloc")]
pub use validate::{OwnedTopicFilter, OwnedTopicName};

// README.md's example is compiled and run with the crate's doctests, so it cannot drift.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
