//! MQTT topic names and filters: validation, matching, shared subscriptions.
//!
//! Validation and matching are `#![no_std]` and allocate nothing.
#![no_std]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod error;
mod validate;

pub use error::Error;
pub use validate::{validate_filter, validate_name, TopicFilter, TopicName};
