//! Decisions that may wait: authentication and authorization handed out as requests,
//! answered later by the embedding program, while every other connection keeps flowing.
//!
//! A hook that returns [`Verdict::Defer`] (or [`AuthStep::Defer`]) puts its connection in
//! *deciding*: a [`Request`] waits in [`Broker::poll_request`], and the core reads nothing
//! more from that connection ([`BrokerEvent::Pause`], [`Broker::wants_input`] is `false`)
//! until every request it has is answered, so that what the client sent next (a PUBLISH
//! behind a deferred one, say) is not acted on before it. Then [`BrokerEvent::Resume`]
//! says to read it again. Its keep alive is not counted meanwhile.
//!
//! A request left unanswered for [`crate::BrokerConfig::decision_timeout`] closes its
//! connection ([`CloseReason::DecisionTimeout`]); a connection that closes drops its
//! requests. Answering either is [`Error::UnknownRequest`], never a panic.

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::string::String;
use alloc::vec::Vec;

use bytes::Bytes;
use mqtt_codec::{
    PacketId, PacketType, ProtocolVersion, QoS, ReasonCode, SubscriptionId, SubscriptionOptions,
};
use mqtt_state::{Diagnostics, Instant, Message, Utf8Bytes};
use mqtt_topic::{OwnedTopicFilter, TopicBuf};

use crate::conn::Conn;
use crate::registry::SessionRecord;
use crate::slots::Slots;
use crate::{AuthStep, Broker, BrokerEvent, CloseReason, ConnectionId, Error, Hooks, Verdict};

/// What the adapter knows about a connection when it opens it ([`Broker::open_with`]),
/// for hooks and requests to decide by. Kept beside the connection's rarely used state, so
/// a connection that carries it costs about 250 bytes more than one opened with
/// [`Broker::open`]: pass it when a hook reads it, not by habit, where idle connections
/// are many.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConnInfo {
    /// The peer's address, when the transport has one.
    pub peer: Option<core::net::SocketAddr>,
    /// The identity of the TLS client certificate (a subject or SAN, as the adapter
    /// chooses), when the client presented one that verified.
    pub tls_identity: Option<String>,
}

impl ConnInfo {
    pub(crate) const EMPTY: ConnInfo = ConnInfo {
        peer: None,
        tls_identity: None,
    };

    fn is_empty(&self) -> bool {
        self.peer.is_none() && self.tls_identity.is_none()
    }
}

/// Who asks: what a hook or a request's answer may decide by.
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct Context<'a> {
    /// The client identifier; empty while a CONNECT that left it to the server is being
    /// authenticated ([MQTT-3.1.3-6]: it is assigned once accepted).
    pub client_id: &'a str,
    /// The user name of the CONNECT, if any.
    pub username: Option<&'a str>,
    /// The client's protocol version.
    pub protocol: ProtocolVersion,
    /// What the adapter passed at [`Broker::open_with`].
    pub info: &'a ConnInfo,
}

impl<'a> Context<'a> {
    /// A context, as the core makes them: for testing hooks outside a broker.
    pub fn new(
        client_id: &'a str,
        username: Option<&'a str>,
        protocol: ProtocolVersion,
        info: &'a ConnInfo,
    ) -> Self {
        Self {
            client_id,
            username,
            protocol,
            info,
        }
    }
}

/// A deferred decision's handle: answer it once, with [`Broker::accept`],
/// [`Broker::reject`] or (enhanced authentication) [`Broker::challenge`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

/// A decision the core waits for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// Its handle.
    pub id: RequestId,
    /// The connection that waits; [`Broker::context`] says who it is.
    pub conn: ConnectionId,
    /// What is to be decided.
    pub kind: RequestKind,
}

/// What a [`Request`] asks.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RequestKind {
    /// May this CONNECT go on? Rejecting sends a CONNACK with the code.
    Authenticate {
        /// The user name.
        username: Option<String>,
        /// The password.
        password: Option<Bytes>,
    },
    /// A step of 5.0 enhanced authentication (a CONNECT's method and data, then each
    /// AUTH's): accept (success), [`Broker::challenge`] (Continue authentication) or reject.
    Auth {
        /// The authentication method.
        method: String,
        /// The authentication data.
        data: Option<Bytes>,
        /// Whether the client is connected and re-authenticates ([MQTT-4.12.1-1]); a
        /// rejection then disconnects it.
        reauthenticate: bool,
    },
    /// May the client publish this? Rejecting drops the message; a 5.0 publisher of QoS
    /// 1/2 gets the code in its PUBACK/PUBREC.
    Publish {
        /// The topic (after alias resolution), checked, sharing the receive buffer.
        topic: TopicBuf,
        /// Its QoS.
        qos: QoS,
        /// Its RETAIN flag.
        retain: bool,
    },
    /// May the client subscribe to this filter (as sent, `$share/...` included)?
    /// Rejecting puts the code in its place in the SUBACK.
    Subscribe {
        /// The filter.
        filter: OwnedTopicFilter,
        /// The QoS asked for.
        qos: QoS,
    },
}

/// What the core does once a request is answered.
pub(crate) enum Pending {
    /// The CONNECT in `ConnExtra::authenticating` waits for [`Hooks::authenticate`].
    Connect,
    /// A step of enhanced authentication (before CONNACK when `authenticating` is set).
    Auth,
    /// A PUBLISH waits to be routed.
    Publish {
        packet_id: Option<PacketId>,
        /// Boxed: the other variants are small.
        message: Box<Message>,
    },
    /// Filter `index` of the connection's pending SUBSCRIBE.
    Subscribe { index: usize },
}

/// A connection's decisions in progress.
pub(crate) struct Deciding {
    /// When it is closed unless every request is answered.
    pub(crate) deadline: Instant,
    /// Its requests not yet answered.
    pub(crate) requests: Vec<u64>,
    /// A SUBACK waiting on some of its filters.
    pub(crate) subscribe: Option<PendingSubscribe>,
}

/// One filter's state in a SUBSCRIBE being decided.
pub(crate) enum FilterState {
    /// Refused (or invalid) with this code.
    Done(ReasonCode),
    /// Allowed: subscribed once the SUBACK is complete, in filter order.
    Allowed,
    /// Waiting for its request.
    Waiting,
}

/// A SUBSCRIBE whose filters are being decided.
pub(crate) struct PendingSubscribe {
    pub(crate) packet_id: PacketId,
    pub(crate) subscription_id: Option<SubscriptionId>,
    pub(crate) filters: Vec<(Utf8Bytes, SubscriptionOptions, FilterState)>,
    /// The Reason String of the last rejection, for the SUBACK.
    pub(crate) diagnostics: Diagnostics,
}

/// Every request of the broker: those not yet handed out, and those not yet answered.
#[derive(Default)]
pub(crate) struct Decisions {
    next: u64,
    pub(crate) pending: BTreeMap<u64, (ConnectionId, Pending)>,
    queue: VecDeque<Request>,
}

/// The Reason String of a connection closed for an unanswered decision.
const TIMEOUT_REASON: &str = "decision timed out";

/// The context of connection `id`, from the broker's fields (so that the hooks can be
/// borrowed beside it).
pub(crate) fn context_in<'a>(
    conns: &'a Slots<Option<Box<Conn>>>,
    sessions: &'a Slots<Option<SessionRecord>>,
    id: ConnectionId,
) -> Option<Context<'a>> {
    let c = crate::broker::conn_ref(conns, id)?;
    let (client_id, username) = match c.authenticating() {
        Some(req) => (
            req.client_id.as_str(),
            req.username.as_ref().map(Utf8Bytes::as_str),
        ),
        None => (
            c.owner()
                .and_then(|s| sessions.get(s)?.as_ref())
                .map_or("", |r| &*r.client_id),
            c.username().map(Utf8Bytes::as_str),
        ),
    };
    Some(Context {
        client_id,
        username,
        protocol: c.session.version(),
        info: c.info().unwrap_or(&ConnInfo::EMPTY),
    })
}

/// A refusal code a PUBACK/PUBREC can carry.
fn publish_refusal(code: ReasonCode) -> ReasonCode {
    if code.is_error() && code.is_valid_for(PacketType::PubAck) {
        code
    } else {
        ReasonCode::UnspecifiedError
    }
}

/// A refusal code for one filter's place in a SUBACK: 3.1.1 has only 0x80 (Failure).
pub(crate) fn subscribe_refusal(code: ReasonCode, version: ProtocolVersion) -> ReasonCode {
    if version.is_v5() && code.is_error() && code.is_valid_for(PacketType::SubAck) {
        code
    } else {
        ReasonCode::UnspecifiedError
    }
}

fn diagnostics(reason: Option<&str>) -> Result<Diagnostics, Error> {
    match reason {
        None => Ok(Diagnostics::new()),
        Some(r) => Diagnostics::new()
            .with_reason_string(Utf8Bytes::copy_of(r))
            .map_err(|_| Error::InvalidReasonString),
    }
}

impl<H: Hooks> Broker<H> {
    /// A new connection opened, with what the adapter knows of it (peer address, TLS
    /// client identity) for the hooks and requests to decide by. Otherwise as
    /// [`Broker::open`].
    pub fn open_with(&mut self, now: Instant, info: ConnInfo) -> ConnectionId {
        let id = self.open(now);
        if !info.is_empty() {
            if let Some(c) = self.conn_mut(id) {
                c.extra_mut().info = Some(Box::new(info));
            }
        }
        id
    }

    /// The next decision the core waits for, if any. Each is answered once with
    /// [`Broker::accept`], [`Broker::reject`] or [`Broker::challenge`]; a request whose
    /// connection closed meanwhile is not handed out.
    pub fn poll_request(&mut self) -> Option<Request> {
        while let Some(r) = self.decisions.queue.pop_front() {
            if self.decisions.pending.contains_key(&r.id.0) {
                return Some(r);
            }
        }
        None
    }

    /// Who connection `id` is: client identifier, user name, protocol version and what
    /// the adapter passed at open. `None` for a connection that is not open.
    pub fn context(&self, id: ConnectionId) -> Option<Context<'_>> {
        context_in(&self.conns, &self.sessions, id)
    }

    /// Whether connection `id` waits for decisions (and so is not read).
    pub fn is_deciding(&self, id: ConnectionId) -> bool {
        self.conn(id).is_some_and(Conn::deciding)
    }

    /// Decisions not yet answered, over all connections.
    pub fn pending_requests(&self) -> usize {
        self.decisions.pending.len()
    }

    /// Allows request `id`: the CONNECT goes on (to enhanced authentication if it names a
    /// method, else accepted), the enhanced authentication succeeds, the message is
    /// routed, the filter subscribed. [`Error::UnknownRequest`] if it was answered, timed
    /// out or its connection closed.
    pub fn accept(&mut self, now: Instant, id: RequestId) -> Result<(), Error> {
        let (conn, pending) = self.take_request(id)?;
        match pending {
            Pending::Connect => self.after_authenticate(now, conn),
            Pending::Auth => self.auth_step(now, conn, AuthStep::Success, Diagnostics::new()),
            Pending::Publish { packet_id, message } => {
                self.publish_allowed(now, conn, packet_id, *message)
            }
            Pending::Subscribe { index } => {
                self.filter_decided(now, conn, index, None, Diagnostics::new())
            }
        }
        self.settle(now, conn);
        Ok(())
    }

    /// Answers request `id` with a [`Verdict`], as a synchronous hook would have: `Allow` is
    /// [`Broker::accept`], `Deny(code)` is [`Broker::reject`] without a reason string, and
    /// `Defer` leaves it waiting (its timeout still runs). One policy function can so serve
    /// both the [`Hooks`] and, run elsewhere, the requests.
    ///
    /// ```
    /// # use mqtt_broker::{Broker, Verdict, RequestId, Error};
    /// # use mqtt_broker::state::Instant;
    /// fn answer_all<H: mqtt_broker::Hooks>(
    ///     broker: &mut Broker<H>,
    ///     now: Instant,
    ///     done: impl Iterator<Item = (RequestId, Verdict)>,
    /// ) {
    ///     for (id, verdict) in done {
    ///         // Answered after its timeout or its connection's close: nothing to do.
    ///         let _: Result<(), Error> = broker.answer(now, id, verdict);
    ///     }
    /// }
    /// ```
    pub fn answer(&mut self, now: Instant, id: RequestId, verdict: Verdict) -> Result<(), Error> {
        match verdict {
            Verdict::Allow => self.accept(now, id),
            Verdict::Deny(code) => self.reject(now, id, code, None),
            Verdict::Defer if self.decisions.pending.contains_key(&id.0) => Ok(()),
            Verdict::Defer => Err(Error::UnknownRequest),
        }
    }

    /// Refuses request `id` with `code` and, to a 5.0 client, `reason_string` (left out
    /// where the client's Maximum Packet Size or Request Problem Information say so): a
    /// CONNACK and close, a DISCONNECT for a failed re-authentication, the code in the
    /// PUBACK/PUBREC (the message is dropped), or in the filter's place in the SUBACK. A
    /// code the packet cannot carry becomes Unspecified error; 3.1.1 clients get the
    /// nearest return code. [`Error::InvalidReasonString`] (request still open) for a
    /// reason string no packet could carry.
    pub fn reject(
        &mut self,
        now: Instant,
        id: RequestId,
        code: ReasonCode,
        reason_string: Option<&str>,
    ) -> Result<(), Error> {
        let diag = diagnostics(reason_string)?;
        let (conn, pending) = self.take_request(id)?;
        match pending {
            Pending::Connect => {
                if let Some(c) = self.conn_mut(conn) {
                    c.take_authenticating();
                    // [MQTT-3.2.2-6] [MQTT-3.2.2-7] a refusing CONNACK, then close.
                    let _ = c.session.reject_with(now, code, diag);
                }
            }
            Pending::Auth => self.auth_step(now, conn, AuthStep::Fail(code), diag),
            Pending::Publish { packet_id, .. } => {
                if let (Some(pid), Some(c)) = (packet_id, self.conn_mut(conn)) {
                    let _ = c.session.ack_with(now, pid, publish_refusal(code), diag);
                }
            }
            Pending::Subscribe { index } => self.filter_decided(now, conn, index, Some(code), diag),
        }
        self.settle(now, conn);
        Ok(())
    }

    /// Answers an enhanced-authentication request ([`RequestKind::Auth`]) with a
    /// challenge: an AUTH with Continue authentication and `data` goes to the client
    /// ([MQTT-4.12.0-2]), whose answer comes back through [`Hooks::enhanced_auth`].
    /// [`Error::NotAnAuthRequest`] (request still open) for any other request.
    pub fn challenge(&mut self, now: Instant, id: RequestId, data: Bytes) -> Result<(), Error> {
        match self.decisions.pending.get(&id.0) {
            None => return Err(Error::UnknownRequest),
            Some((_, Pending::Auth)) => {}
            Some(_) => return Err(Error::NotAnAuthRequest),
        }
        let (conn, _) = self.take_request(id)?;
        self.auth_step(now, conn, AuthStep::Continue(data), Diagnostics::new());
        self.settle(now, conn);
        Ok(())
    }

    /// Registers a deferred decision for `conn` and stops reading it.
    pub(crate) fn defer(
        &mut self,
        now: Instant,
        conn: ConnectionId,
        pending: Pending,
        kind: RequestKind,
    ) -> u64 {
        let n = self.decisions.next;
        self.decisions.next += 1;
        let timeout = self.config.decision_timeout;
        let Some(c) = self.conn_mut(conn) else {
            return n;
        };
        let was_readable = c.readable();
        let d = c.extra_mut().deciding.get_or_insert_with(|| {
            Box::new(Deciding {
                deadline: now + timeout,
                requests: Vec::new(),
                subscribe: None,
            })
        });
        if d.requests.is_empty() && d.subscribe.is_none() {
            // A new step (enhanced authentication after the password check): its own time.
            d.deadline = now + timeout;
        }
        d.requests.push(n);
        if was_readable {
            self.events.push_back(BrokerEvent::Pause(conn));
        }
        self.decisions.pending.insert(n, (conn, pending));
        self.decisions.queue.push_back(Request {
            id: RequestId(n),
            conn,
            kind,
        });
        self.rearm(conn);
        n
    }

    /// Takes request `id` out of the books: its connection and what waits on it.
    fn take_request(&mut self, id: RequestId) -> Result<(ConnectionId, Pending), Error> {
        let (conn, pending) = self
            .decisions
            .pending
            .remove(&id.0)
            .ok_or(Error::UnknownRequest)?;
        if let Some(d) = self
            .conn_mut(conn)
            .and_then(|c| c.extra.as_mut())
            .and_then(|e| e.deciding.as_mut())
        {
            d.requests.retain(|&r| r != id.0);
        }
        Ok((conn, pending))
    }

    /// After an answer: once `conn` waits for nothing, reads it again and handles what its
    /// machine reported meanwhile.
    fn settle(&mut self, now: Instant, conn: ConnectionId) {
        let Some(c) = self.conn_mut(conn) else { return };
        let done = c
            .extra
            .as_ref()
            .and_then(|e| e.deciding.as_ref())
            .is_none_or(|d| d.requests.is_empty() && d.subscribe.is_none());
        if done && c.deciding() {
            if let Some(e) = c.extra.as_mut() {
                e.deciding = None;
            }
            c.tidy_extra();
            if c.readable() {
                self.events.push_back(BrokerEvent::Resume(conn));
            }
        }
        self.process(now, conn);
        self.rearm(conn);
    }

    /// Drops every request of `conn` (it closes): answering one later is
    /// [`Error::UnknownRequest`].
    pub(crate) fn drop_requests(&mut self, conn: ConnectionId) {
        let Some(c) = crate::broker::conn_in(&mut self.conns, conn) else {
            return;
        };
        let Some(d) = c.extra.as_mut().and_then(|e| e.deciding.take()) else {
            return;
        };
        for r in &d.requests {
            let dropped = self.decisions.pending.remove(r);
            if let Some((
                _,
                Pending::Publish {
                    packet_id: Some(pid),
                    message,
                },
            )) = dropped
            {
                if message.qos == QoS::ExactlyOnce {
                    c.extra_mut().unrouted_qos2.push(pid.get());
                }
            }
        }
        c.tidy_extra();
    }

    /// `conn`'s decisions were not all answered in time: it is closed, with a CONNACK
    /// (before it was accepted) or a DISCONNECT (5.0) saying so.
    pub(crate) fn decision_timed_out(&mut self, now: Instant, conn: ConnectionId) {
        self.drop_requests(conn);
        self.stats.decisions_timed_out += 1;
        let code = ReasonCode::ImplementationSpecificError;
        let diag = Diagnostics::new()
            .with_reason_string(TIMEOUT_REASON)
            .unwrap_or_default();
        let Some(c) = self.conn_mut(conn) else { return };
        c.set_close_reason(CloseReason::DecisionTimeout);
        if c.take_authenticating().is_some() {
            // 3.1.1: Server unavailable, the nearest return code.
            let _ = c.session.reject_with(now, code, diag);
            self.wake(conn);
            self.close(conn, CloseReason::DecisionTimeout);
        } else {
            self.end_connection_with(now, conn, code, CloseReason::DecisionTimeout, diag);
        }
    }

    /// A CONNECT passed [`Hooks::authenticate`] after a deferral.
    pub(crate) fn after_authenticate(&mut self, now: Instant, id: ConnectionId) {
        if let Some(req) = self.conn_mut(id).and_then(Conn::take_authenticating) {
            self.continue_connect(now, id, req);
        }
    }

    /// Asks [`Hooks::enhanced_auth`] about a step, deferring it if the hook says so.
    pub(crate) fn enhanced_step(
        &mut self,
        now: Instant,
        id: ConnectionId,
        method: Utf8Bytes,
        data: Option<Bytes>,
    ) {
        let Some(ctx) = context_in(&self.conns, &self.sessions, id) else {
            return;
        };
        let step = self
            .hooks
            .enhanced_auth(&ctx, method.as_str(), data.as_deref());
        if step == AuthStep::Defer {
            let reauthenticate = self.conn(id).is_some_and(|c| c.authenticating().is_none());
            let kind = RequestKind::Auth {
                method: method.as_str().into(),
                data,
                reauthenticate,
            };
            self.defer(now, id, Pending::Auth, kind);
        } else {
            self.auth_step(now, id, step, Diagnostics::new());
        }
    }

    /// Asks [`Hooks::authorize_publish`] about a message from `id`.
    pub(crate) fn publish_verdict(&mut self, id: ConnectionId, message: &Message) -> Verdict {
        // Checked when the PUBLISH was read: not scanned again.
        let topic = message.topic.as_topic_name();
        if self.conn(id).is_some_and(Conn::is_internal) {
            return Verdict::Allow;
        }
        let Some(ctx) = context_in(&self.conns, &self.sessions, id) else {
            return Verdict::Deny(ReasonCode::UnspecifiedError);
        };
        self.hooks
            .authorize_publish(&ctx, topic, message.qos, message.retain)
    }

    /// A PUBLISH allowed: routed, then acknowledged ([MQTT-4.3.2-4] [MQTT-4.3.3-9]: once
    /// it is the broker's to deliver).
    pub(crate) fn publish_allowed(
        &mut self,
        now: Instant,
        id: ConnectionId,
        packet_id: Option<PacketId>,
        message: Message,
    ) {
        let Some(owner) = self.conn(id).and_then(Conn::owner) else {
            return;
        };
        if let (Some(pid), QoS::ExactlyOnce) = (packet_id, message.qos) {
            // Held until PUBREL, stored with the routing (same batch): a resend after a
            // restart is not delivered twice, and one never routed is routed.
            self.on_stored_event(
                owner,
                crate::persist::StoredEvent::Received { packet_id: pid },
            );
        }
        let matched = self.route(now, Some(owner), Some(id), message);
        let reason = if matched == 0 {
            ReasonCode::NoMatchingSubscribers
        } else {
            ReasonCode::Success
        };
        if let Some(pid) = packet_id {
            // Acknowledged once what routing it changed is stored.
            let after = self.after_store();
            let promise = crate::persist::Promise::Ack {
                conn: id,
                packet_id: pid,
                reason,
            };
            match after {
                Some(_) => self.promise(now, after, promise),
                None => {
                    if let Some(c) = self.conn_mut(id) {
                        c.session.ack(now, pid, reason);
                    }
                }
            }
        }
    }

    /// A PUBLISH refused with `code`: dropped; the 5.0 publisher of QoS 1/2 hears why,
    /// the 3.1.1 one gets its acknowledgement all the same.
    pub(crate) fn publish_refused(
        &mut self,
        now: Instant,
        id: ConnectionId,
        packet_id: Option<PacketId>,
        code: ReasonCode,
    ) {
        if let (Some(pid), Some(c)) = (packet_id, self.conn_mut(id)) {
            c.session.ack(now, pid, publish_refusal(code));
        }
    }

    /// Filter `index` of `conn`'s pending SUBSCRIBE decided (`refused` with a code, or
    /// allowed); the SUBACK goes once every filter is.
    fn filter_decided(
        &mut self,
        now: Instant,
        conn: ConnectionId,
        index: usize,
        refused: Option<ReasonCode>,
        diag: Diagnostics,
    ) {
        let Some(c) = self.conn_mut(conn) else { return };
        let version = c.session.version();
        let Some(ps) = c
            .extra
            .as_mut()
            .and_then(|e| e.deciding.as_mut())
            .and_then(|d| d.subscribe.as_mut())
        else {
            return;
        };
        if let Some(f) = ps.filters.get_mut(index) {
            f.2 = match refused {
                Some(code) => FilterState::Done(subscribe_refusal(code, version)),
                None => FilterState::Allowed,
            };
        }
        if !diag.is_empty() {
            ps.diagnostics = diag;
        }
        if ps
            .filters
            .iter()
            .any(|f| matches!(f.2, FilterState::Waiting))
        {
            return;
        }
        let ps = c
            .extra
            .as_mut()
            .and_then(|e| e.deciding.as_mut())
            .and_then(|d| d.subscribe.take());
        if let Some(ps) = ps {
            self.finish_subscribe(now, conn, ps);
        }
    }
}
