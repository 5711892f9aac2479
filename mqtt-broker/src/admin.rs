//! The server's own side: publishing from the server, disconnecting a client, listing and
//! removing sessions.

use alloc::string::String;
use alloc::vec::Vec;

use mqtt_codec::{QoS, ReasonCode, SubscriptionId};
use mqtt_state::{Instant, Message};

use crate::subscriptions::parse_subscription;
use crate::{Broker, CloseReason, ConnectionId, Error, Hooks};

/// A subscription of a session, as [`Broker::session`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SubscriptionInfo {
    /// The filter as subscribed (with `$share/GROUP/` for a shared subscription).
    pub filter: String,
    /// The QoS granted.
    pub qos: QoS,
    /// No Local ([MQTT-3.8.3-3]).
    pub no_local: bool,
    /// Retain As Published.
    pub retain_as_published: bool,
    /// The Subscription Identifier, if the SUBSCRIBE had one.
    pub subscription_id: Option<SubscriptionId>,
}

/// A session, as [`Broker::session`] and [`Broker::sessions`] report it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SessionInfo {
    /// The client identifier.
    pub client_id: String,
    /// The connection serving it; `None` while the client is away.
    pub connection: Option<ConnectionId>,
    /// Its subscriptions, in the order they were made.
    pub subscriptions: Vec<SubscriptionInfo>,
    /// Messages queued for the client, not yet sent.
    pub queued: usize,
    /// QoS 1/2 messages sent to the client and not yet acknowledged.
    pub inflight: usize,
    /// Session Expiry Interval in seconds (`u32::MAX`: never expires; 0: ends with the
    /// connection).
    pub expiry_interval: u32,
    /// When it ends, while it is offline and expires.
    pub expires_at: Option<Instant>,
}

impl<H: Hooks> Broker<H> {
    /// Publishes `message` from the server itself (QoS, retain and 5.0 properties as it
    /// carries them) to every matching session, as a client's PUBLISH would be; returns
    /// how many sessions it went to. Never paused: the server is no connection to stop
    /// reading, so a full queue takes it beyond its watermark.
    ///
    /// The topic needs no check here: a message's `TopicBuf` can only hold a valid topic
    /// name ([MQTT-4.7.3-1] [MQTT-3.3.2-2]).
    pub fn publish(&mut self, now: Instant, message: Message) -> usize {
        self.route(now, None, None, message)
    }

    /// Disconnects client connection `id`: 5.0 clients get a DISCONNECT with `reason`
    /// ([MQTT-3.14.0-1] only after CONNACK), then a [`crate::BrokerEvent::Close`] follows
    /// with [`CloseReason::ServerDisconnect`] (or [`CloseReason::ServerShuttingDown`]).
    /// The session stays according to its expiry, like any disconnect.
    pub fn disconnect(
        &mut self,
        now: Instant,
        id: ConnectionId,
        reason: ReasonCode,
    ) -> Result<(), Error> {
        let _ = now;
        if self.conn(id).is_none() {
            return Err(Error::UnknownConnection);
        }
        let why = if reason == ReasonCode::ServerShuttingDown {
            CloseReason::ServerShuttingDown
        } else {
            CloseReason::ServerDisconnect(reason)
        };
        self.end_connection(now, id, reason, why);
        Ok(())
    }

    /// The session of `client_id`, if there is one.
    pub fn session(&self, client_id: &str) -> Option<SessionInfo> {
        self.session_info(self.session_of(client_id)?)
    }

    /// Every session, in no particular order (sort them if you need an order: the
    /// broker keeps none, so that finding a session costs the same at any count).
    pub fn sessions(&self) -> impl Iterator<Item = SessionInfo> + '_ {
        (0..self.sessions.len()).filter_map(|s| self.session_info(s))
    }

    /// Ends the session of `client_id` now: its connection, if any, is disconnected with
    /// Administrative action, its will goes out ([MQTT-3.1.2-8]: the session ends), its
    /// subscriptions and queued messages are gone.
    pub fn remove_session(&mut self, now: Instant, client_id: &str) -> Result<(), Error> {
        let s = self.session_of(client_id).ok_or(Error::UnknownSession)?;
        if let Some(id) = self.sessions[s].as_ref().and_then(|r| r.conn) {
            self.end_connection(
                now,
                id,
                ReasonCode::AdministrativeAction,
                CloseReason::ServerDisconnect(ReasonCode::AdministrativeAction),
            );
            // Parks the session, publishing a will without delay.
            self.release(now, id);
        }
        if let Some(will) = self.sessions[s]
            .as_mut()
            .and_then(|r| r.offline.as_deref_mut())
            .and_then(|o| o.pending_will.take())
        {
            self.route(now, None, None, will.0);
        }
        self.end_session(s);
        Ok(())
    }

    fn session_info(&self, s: usize) -> Option<SessionInfo> {
        let rec = self.sessions.get(s)?.as_ref()?;
        let subscriptions = rec
            .filters
            .iter()
            .filter_map(|(filter, version)| {
                let sub = parse_subscription(filter, *version)?;
                let opts = self.tree.get(sub, &(s as u32))?;
                Some(SubscriptionInfo {
                    filter: String::from(&**filter),
                    qos: opts.qos,
                    no_local: opts.no_local,
                    retain_as_published: opts.retain_as_published,
                    subscription_id: opts.id,
                })
            })
            .collect();
        let state = match (rec.conn.and_then(|id| self.conn(id)), &rec.offline) {
            (Some(c), _) => Some(c.session.session()),
            (None, Some(o)) => Some(&o.state),
            (None, None) => None,
        };
        Some(SessionInfo {
            client_id: String::from(&*rec.client_id),
            connection: rec.conn,
            subscriptions,
            queued: state.map_or(0, |s| s.queue.len()),
            inflight: state.map_or(0, |s| s.inflight.len()),
            expiry_interval: rec.expiry,
            expires_at: rec.offline.as_ref().and_then(|o| o.expires_at),
        })
    }
}
