//! The session registry: sessions by client identifier, which outlive their connections,
//! and what an offline session holds.

use alloc::boxed::Box;
use alloc::vec::Vec;

use mqtt_codec::ProtocolVersion;
use mqtt_state::{Instant, Message, SessionState};

use crate::subscriptions::parse_subscription;
use crate::timers::{TimerKey, NOT_ARMED};
use crate::{Broker, ConnectionId, Hooks};

pub(crate) struct SessionRecord {
    /// Also the key `by_client_id` finds the session by (the index holds only the
    /// session's number). A `Box<str>`: no header beside the bytes.
    pub(crate) client_id: Box<str>,
    /// Filters as subscribed, to remove them from the tree when the session ends.
    /// A `Box<str>` rather than a `Utf8Bytes` handle: 16 bytes less per subscription.
    pub(crate) filters: Vec<(Box<str>, ProtocolVersion)>,
    pub(crate) conn: Option<ConnectionId>,
    pub(crate) expiry: u32,
    /// Boxed: only a session without a connection has any of this, and most sessions
    /// have one, so the slot of every session would otherwise carry it.
    pub(crate) offline: Option<Box<Offline>>,
}

/// What a session holds while no connection serves it.
pub(crate) struct Offline {
    /// The session state (messages queued for the client meanwhile).
    pub(crate) state: SessionState,
    /// When the session ends.
    pub(crate) expires_at: Option<Instant>,
    /// A will waiting for its delay: message and due time.
    pub(crate) pending_will: Option<(Message, Instant)>,
    /// The deadline this session has in the timer wheel.
    pub(crate) armed: Instant,
}

impl Default for Offline {
    fn default() -> Self {
        Self {
            state: SessionState::default(),
            expires_at: None,
            pending_will: None,
            armed: NOT_ARMED,
        }
    }
}

impl Offline {
    /// When something is due: the will or the end of the session.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        match (self.expires_at, self.pending_will.as_ref().map(|w| w.1)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl<H: Hooks> Broker<H> {
    pub(crate) fn new_session(&mut self, client_id: Box<str>) -> usize {
        let rec = SessionRecord {
            client_id,
            filters: Vec::new(),
            conn: None,
            expiry: 0,
            offline: None,
        };
        let s = match self.free_sessions.pop() {
            Some(s) => {
                self.sessions[s as usize] = Some(rec);
                s as usize
            }
            None => self.sessions.push(Some(rec)),
        };
        let id = self.sessions[s].as_ref().map_or("", |r| &r.client_id);
        self.by_client_id.insert(id, s as u32);
        s
    }

    /// The session of `client_id`, if there is one.
    pub(crate) fn session_of(&self, client_id: &str) -> Option<usize> {
        self.by_client_id
            .get(&self.sessions, client_id)
            .map(|s| s as usize)
    }

    /// Removes a session and its subscriptions, from the store too.
    pub(crate) fn end_session(&mut self, s: usize) {
        self.end_session_stored(s, true);
    }

    /// Removes a session; `stored`: it may have been stored, so the store forgets it.
    pub(crate) fn end_session_stored(&mut self, s: usize, stored: bool) {
        let Some(rec) = self.sessions[s].take() else {
            return;
        };
        if stored {
            self.forget_session(&rec.client_id);
        }
        self.by_client_id.remove(&rec.client_id, s as u32);
        for (filter, version) in &rec.filters {
            if let Some(sub) = parse_subscription(filter, *version) {
                self.tree_remove(sub, s as u32);
            }
        }
        self.free_sessions.push(s as u32);
    }

    /// Puts the offline session `s`'s next deadline in the timer wheel, unless an entry at
    /// or before it is there already.
    pub(crate) fn rearm_session(&mut self, s: usize) {
        let Some(o) = self
            .sessions
            .get_mut(s)
            .and_then(Option::as_mut)
            .and_then(|r| r.offline.as_deref_mut())
        else {
            return;
        };
        if let Some(at) = o.deadline() {
            if at < o.armed {
                o.armed = at;
                self.timers.push(at, TimerKey::Session(s as u32));
            }
        }
    }

    /// A session's timer entry came up: publish a will that is due, end a session that
    /// expired, arm what remains.
    pub(crate) fn session_timer(&mut self, now: Instant, at: Instant, s: usize) {
        let Some(o) = self
            .sessions
            .get_mut(s)
            .and_then(Option::as_mut)
            .and_then(|r| r.offline.as_deref_mut())
        else {
            return;
        };
        if o.armed != at {
            return; // stale
        }
        o.armed = NOT_ARMED;
        // [MQTT-3.1.2-8] a delayed will goes out when its delay ends, or with the session.
        let will_due = o.pending_will.as_ref().is_some_and(|w| w.1 <= now);
        let expired = o.expires_at.is_some_and(|t| t <= now);
        let mut will_sent = false;
        if will_due || expired {
            if let Some((will, _)) = o.pending_will.take() {
                self.route(now, None, None, will);
                will_sent = true;
            }
        }
        if expired {
            // [MQTT-4.1.0-2] the session ends with its expiry.
            self.end_session(s);
        } else {
            if will_sent {
                self.store_session(s);
            }
            self.rearm_session(s);
        }
    }
}
