//! Sans-IO MQTT session state machines (client and server side of one connection, and a
//! broker core).
//!
//! This crate is being built: today it only re-exports [`mqtt_codec`] so that its place in the
//! layering (`mqtt-topic` ← `mqtt-codec` ← `mqtt-state`) is fixed. It never touches sockets,
//! clocks or threads: time comes in as an argument and timers go out as deadlines.
#![no_std]

pub use mqtt_codec as codec;
