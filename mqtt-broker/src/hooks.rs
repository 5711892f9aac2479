//! Authentication and authorization, asked of the embedding program.
//!
//! Each hook answers at once ([`Verdict::Allow`], [`Verdict::Deny`]) or defers
//! ([`Verdict::Defer`]): the question then goes out as a [`crate::Request`] from
//! [`crate::Broker::poll_request`], answered later, so that a slow check (a password hash,
//! a directory lookup) never holds up the other connections.

use bytes::Bytes;
use mqtt_codec::{QoS, ReasonCode};
use mqtt_state::ConnectRequest;
use mqtt_topic::{TopicFilter, TopicName};

use crate::Context;

/// A hook's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Allowed.
    Allow,
    /// Refused with this reason code (CONNACK, PUBACK/PUBREC or SUBACK; 3.1.1 clients get
    /// the nearest return code, or none where 3.1.1 has none).
    Deny(ReasonCode),
    /// Not decided yet: the core hands out a [`crate::Request`] and waits for
    /// [`crate::Broker::accept`] or [`crate::Broker::reject`], reading nothing more from
    /// that connection meanwhile.
    Defer,
}

/// Authentication and authorization, implemented by the embedding broker. Every method
/// has a permissive default (except enhanced authentication, which no method passes).
pub trait Hooks {
    /// Decides on a CONNECT (user name and password are in `request`). A refused one
    /// gets a CONNACK with the code (Bad user name or password, Not authorized, Banned,
    /// ...) and is closed ([MQTT-3.2.2-7]).
    fn authenticate(&mut self, context: &Context<'_>, request: &ConnectRequest) -> Verdict {
        let _ = (context, request);
        Verdict::Allow
    }

    /// A step of enhanced authentication: the method and data of a CONNECT that names a
    /// method, then of each AUTH the client sends, also when it re-authenticates. The
    /// default supports no method ([MQTT-4.12.0-1]: Bad authentication method).
    fn enhanced_auth(
        &mut self,
        context: &Context<'_>,
        method: &str,
        data: Option<&[u8]>,
    ) -> AuthStep {
        let _ = (context, method, data);
        AuthStep::Fail(ReasonCode::BadAuthenticationMethod)
    }

    /// Whether the client may publish to `topic`. A refused message is not routed; a 5.0
    /// publisher of QoS 1/2 hears why in its PUBACK/PUBREC.
    fn authorize_publish(
        &mut self,
        context: &Context<'_>,
        topic: TopicName<'_>,
        qos: QoS,
        retain: bool,
    ) -> Verdict {
        let _ = (context, topic, qos, retain);
        Verdict::Allow
    }

    /// Whether the client may subscribe to `filter` (as sent, `$share/...` included) at
    /// up to `qos`. Asked once per filter of a SUBSCRIBE.
    fn authorize_subscribe(
        &mut self,
        context: &Context<'_>,
        filter: TopicFilter<'_>,
        qos: QoS,
    ) -> Verdict {
        let _ = (context, filter, qos);
        Verdict::Allow
    }
}

/// The answer to a step of 5.0 enhanced authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AuthStep {
    /// Authenticated: the connection is accepted (or the re-authentication succeeds).
    Success,
    /// Send this challenge in an AUTH with Continue authentication and wait for the answer.
    Continue(Bytes),
    /// Refused with this reason code (CONNACK, or DISCONNECT for a re-authentication).
    Fail(ReasonCode),
    /// Not decided yet: a [`crate::RequestKind::Auth`] request goes out, answered with
    /// [`crate::Broker::accept`], [`crate::Broker::challenge`] or [`crate::Broker::reject`].
    Defer,
}

/// [`Hooks`] that allow everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Hooks for AllowAll {}

/// [`Hooks`] that defer every decision to [`crate::Broker::poll_request`], enhanced
/// authentication included: for a program that decides everything asynchronously.
#[derive(Debug, Clone, Copy, Default)]
pub struct DeferAll;

impl Hooks for DeferAll {
    fn authenticate(&mut self, _: &Context<'_>, _: &ConnectRequest) -> Verdict {
        Verdict::Defer
    }
    fn enhanced_auth(&mut self, _: &Context<'_>, _: &str, _: Option<&[u8]>) -> AuthStep {
        AuthStep::Defer
    }
    fn authorize_publish(&mut self, _: &Context<'_>, _: TopicName<'_>, _: QoS, _: bool) -> Verdict {
        Verdict::Defer
    }
    fn authorize_subscribe(&mut self, _: &Context<'_>, _: TopicFilter<'_>, _: QoS) -> Verdict {
        Verdict::Defer
    }
}
