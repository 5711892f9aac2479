//! One connection as the core keeps it: its machine, the session it serves, and the little
//! that only some connections have.

use alloc::boxed::Box;
use alloc::vec::Vec;

use mqtt_state::{ConnectRequest, Instant, Message, ServerSession, SessionState, Utf8Bytes};

use crate::decide::{ConnInfo, Deciding};
use crate::timers::NOT_ARMED;
use crate::{CloseReason, ConnectionId};

pub(crate) struct Conn {
    pub(crate) generation: u32,
    /// The session this connection serves, once accepted (an index into `sessions`,
    /// which the subscription tree already keeps as `u32`); [`NO_OWNER`] before. A plain
    /// `u32` rather than an `Option`, which would take 8 bytes in every connection.
    pub(crate) owner: u32,
    /// [`Conn::CLOSING`], [`Conn::TRANSMIT_QUEUED`], [`Conn::INPUT_WAITING`],
    /// [`Conn::INTERNAL`], [`Conn::BRIDGE`].
    flags: u8,
    /// The deadline this connection has in the timer wheel ([`NOT_ARMED`] for none).
    pub(crate) armed: Instant,
    pub(crate) session: ServerSession,
    /// Boxed, all in one: many connections have none of it, and every connection would
    /// carry the pointers inline.
    pub(crate) extra: Option<Box<ConnExtra>>,
}

/// `Conn::owner` of a connection that serves no session.
pub(crate) const NO_OWNER: u32 = u32::MAX;

/// What only some connections have.
#[derive(Default)]
pub(crate) struct ConnExtra {
    pub(crate) username: Option<Utf8Bytes>,
    /// Boxed in turn: a connection with a user name but no will would carry the message.
    pub(crate) will: Option<Box<(Message, u32)>>,
    /// A CONNECT waiting for enhanced authentication to finish.
    pub(crate) authenticating: Option<Box<ConnectRequest>>,
    /// Paused: the subscriber whose full queue this publisher waits on.
    pub(crate) paused_on: Option<ConnectionId>,
    /// Publishers paused on this connection's full queue.
    pub(crate) waiters: Vec<ConnectionId>,
    /// While it has waiters: when it is closed as a slow consumer unless it takes some of
    /// its output before.
    pub(crate) stall_deadline: Option<Instant>,
    /// Why the core decided to close it, when the machine cannot say (taken over, ...).
    pub(crate) close_reason: Option<CloseReason>,
    /// What the adapter passed at `open_with`.
    pub(crate) info: Option<Box<ConnInfo>>,
    /// Decisions it waits for: it is not read meanwhile.
    pub(crate) deciding: Option<Box<Deciding>>,
    /// Incoming QoS 2 packet identifiers whose PUBLISH was dropped undecided (its
    /// connection ended first): never routed nor acknowledged, so their repeat is a new
    /// message, not a duplicate.
    pub(crate) unrouted_qos2: Vec<u16>,
}

impl Conn {
    /// Asked the program to close it.
    const CLOSING: u8 = 1;
    /// A [`crate::BrokerEvent::Transmit`] for it waits in the event queue.
    const TRANSMIT_QUEUED: u8 = 1 << 1;
    /// Its machine left a complete packet unread (its inbound quota is used up until the
    /// acknowledgements go out): the next transmit asks for input again.
    const INPUT_WAITING: u8 = 1 << 2;
    /// A bridge's local leg: a client inside the core, which the hooks do not judge.
    const INTERNAL: u8 = 1 << 3;
    /// Its CONNECT said it is a broker bridging to this one (mosquitto's extension,
    /// [`mqtt_codec::Connect::bridge`]): its subscriptions get No Local and Retain As
    /// Published. A bit here costs ordinary connections nothing.
    const BRIDGE: u8 = 1 << 4;

    pub(crate) fn set_internal(&mut self) {
        self.flags |= Self::INTERNAL;
    }

    pub(crate) fn is_internal(&self) -> bool {
        self.flags & Self::INTERNAL != 0
    }

    pub(crate) fn new(generation: u32, session: ServerSession) -> Self {
        Self {
            generation,
            owner: NO_OWNER,
            flags: 0,
            armed: NOT_ARMED,
            session,
            extra: None,
        }
    }

    pub(crate) fn closing(&self) -> bool {
        self.flags & Self::CLOSING != 0
    }

    /// Marks it closing; whether it was not already.
    pub(crate) fn set_closing(&mut self) -> bool {
        let was = self.closing();
        self.flags |= Self::CLOSING;
        !was
    }

    /// Marks a Transmit event queued; whether one was not already.
    pub(crate) fn set_transmit_queued(&mut self) -> bool {
        let was = self.flags & Self::TRANSMIT_QUEUED != 0;
        self.flags |= Self::TRANSMIT_QUEUED;
        !was
    }

    pub(crate) fn set_input_waiting(&mut self, waiting: bool) {
        if waiting {
            self.flags |= Self::INPUT_WAITING;
        } else {
            self.flags &= !Self::INPUT_WAITING;
        }
    }

    pub(crate) fn input_waiting(&self) -> bool {
        self.flags & Self::INPUT_WAITING != 0
    }

    pub(crate) fn set_bridge(&mut self) {
        self.flags |= Self::BRIDGE;
    }

    pub(crate) fn bridge(&self) -> bool {
        self.flags & Self::BRIDGE != 0
    }

    pub(crate) fn clear_transmit_queued(&mut self) {
        self.flags &= !Self::TRANSMIT_QUEUED;
    }

    pub(crate) fn owner(&self) -> Option<usize> {
        (self.owner != NO_OWNER).then_some(self.owner as usize)
    }

    pub(crate) fn username(&self) -> Option<&Utf8Bytes> {
        self.extra.as_ref()?.username.as_ref()
    }

    pub(crate) fn authenticating(&self) -> Option<&ConnectRequest> {
        self.extra.as_ref()?.authenticating.as_deref()
    }

    pub(crate) fn paused_on(&self) -> Option<ConnectionId> {
        self.extra.as_ref()?.paused_on
    }

    pub(crate) fn stall_deadline(&self) -> Option<Instant> {
        self.extra.as_ref()?.stall_deadline
    }

    pub(crate) fn info(&self) -> Option<&ConnInfo> {
        self.extra.as_ref()?.info.as_deref()
    }

    /// Whether it waits for decisions.
    pub(crate) fn deciding(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| e.deciding.is_some())
    }

    /// When its decisions time out.
    pub(crate) fn decision_deadline(&self) -> Option<Instant> {
        Some(self.extra.as_ref()?.deciding.as_ref()?.deadline)
    }

    /// Whether the program may read it: not closing, not paused, not deciding.
    pub(crate) fn readable(&self) -> bool {
        !self.closing() && self.paused_on().is_none() && !self.deciding()
    }

    /// Its deadline: its machine's, the end of its patience as a stalled subscriber, or
    /// the end of the wait for its decisions.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        [
            self.session.poll_timeout(),
            self.stall_deadline(),
            self.decision_deadline(),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    pub(crate) fn has_waiters(&self) -> bool {
        self.extra.as_ref().is_some_and(|e| !e.waiters.is_empty())
    }

    pub(crate) fn extra_mut(&mut self) -> &mut ConnExtra {
        self.extra.get_or_insert_with(Box::default)
    }

    pub(crate) fn take_will(&mut self) -> Option<(Message, u32)> {
        let will = self.extra.as_mut()?.will.take();
        self.tidy_extra();
        will.map(|w| *w)
    }

    pub(crate) fn take_authenticating(&mut self) -> Option<ConnectRequest> {
        let req = self.extra.as_mut()?.authenticating.take();
        self.tidy_extra();
        req.map(|r| *r)
    }

    pub(crate) fn take_waiters(&mut self) -> Vec<ConnectionId> {
        let waiters = self
            .extra
            .as_mut()
            .map(|e| {
                e.stall_deadline = None;
                core::mem::take(&mut e.waiters)
            })
            .unwrap_or_default();
        self.tidy_extra();
        waiters
    }

    /// Unpauses it if it waits on `blocker`; whether it did.
    pub(crate) fn unpause_from(&mut self, blocker: ConnectionId) -> bool {
        let Some(e) = self.extra.as_mut() else {
            return false;
        };
        if e.paused_on != Some(blocker) {
            return false;
        }
        e.paused_on = None;
        self.tidy_extra();
        true
    }

    /// Takes the session state out of its machine, to park or hand over. A QoS 2 PUBLISH
    /// that was never decided had no PUBREC: the client sends it again, and that must be
    /// routed ([MQTT-4.3.3-10] holds only from the PUBREC on).
    pub(crate) fn take_session_state(&mut self) -> SessionState {
        let mut state = self.session.take_session();
        if let Some(e) = self.extra.as_mut() {
            for id in core::mem::take(&mut e.unrouted_qos2) {
                if let Ok(i) = state.incoming_qos2.binary_search(&id) {
                    state.incoming_qos2.remove(i);
                }
            }
        }
        self.tidy_extra();
        state
    }

    /// Why it closes: what the core recorded, else what its machine failed with.
    pub(crate) fn close_reason(&self) -> CloseReason {
        self.extra
            .as_ref()
            .and_then(|e| e.close_reason)
            .or_else(|| self.session.error().map(CloseReason::from_error))
            .unwrap_or(CloseReason::TransportClosed)
    }

    /// Records why the core ends it, unless a reason is already recorded.
    pub(crate) fn set_close_reason(&mut self, reason: CloseReason) {
        let e = self.extra_mut();
        e.close_reason.get_or_insert(reason);
    }

    /// Drops the extra box once it holds nothing.
    pub(crate) fn tidy_extra(&mut self) {
        if self.extra.as_ref().is_some_and(|e| {
            e.username.is_none()
                && e.will.is_none()
                && e.authenticating.is_none()
                && e.paused_on.is_none()
                && e.waiters.is_empty()
                && e.stall_deadline.is_none()
                && e.close_reason.is_none()
                && e.info.is_none()
                && e.deciding.is_none()
                && e.unrouted_qos2.is_empty()
        }) {
            self.extra = None;
        }
    }
}
