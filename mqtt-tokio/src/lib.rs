//! placeholder
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod client;
mod driver;
mod error;
mod options;
mod time;
mod transport;

pub use client::{Ack, AckFuture, AsyncClient, Incoming, Status};
pub use error::Error;
pub use options::{tls_config, Options};
pub use time::Clock;

pub use mqtt_state;
pub use mqtt_state::codec::{ProtocolVersion, QoS, ReasonCode, SubscriptionOptions};
pub use mqtt_state::{ClientConfig, Message, TopicBuf};
pub use tokio_rustls::rustls;
