//! Authentication and authorization, asked of the embedding program.

use bytes::Bytes;
use mqtt_codec::ReasonCode;
use mqtt_state::ConnectRequest;

/// Authentication and authorization, implemented by the embedding broker. Every method
/// has a permissive default.
pub trait Hooks {
    /// Decides on a CONNECT; `Err` refuses it with that reason code (Bad user name or
    /// password, Not authorized, Banned, ...). 3.1.1 clients get the nearest return code.
    fn authenticate(&mut self, request: &ConnectRequest) -> Result<(), ReasonCode> {
        let _ = request;
        Ok(())
    }

    /// A step of enhanced authentication: the method and data of a CONNECT that names a
    /// method, then of each AUTH the client sends, also when it re-authenticates. The
    /// default supports no method ([MQTT-4.12.0-1]: Bad authentication method).
    fn enhanced_auth(&mut self, client_id: &str, method: &str, data: Option<&[u8]>) -> AuthStep {
        let _ = (client_id, method, data);
        AuthStep::Fail(ReasonCode::BadAuthenticationMethod)
    }

    /// Whether `client_id` (logged in as `username`) may publish to `topic`.
    fn authorize_publish(&mut self, client_id: &str, username: Option<&str>, topic: &str) -> bool {
        let _ = (client_id, username, topic);
        true
    }

    /// Whether `client_id` (logged in as `username`) may subscribe to `filter`.
    fn authorize_subscribe(
        &mut self,
        client_id: &str,
        username: Option<&str>,
        filter: &str,
    ) -> bool {
        let _ = (client_id, username, filter);
        true
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
}

/// [`Hooks`] that allow everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct AllowAll;

impl Hooks for AllowAll {}
