//! CONNECT to DISCONNECT: authentication, admitting a client to its session (new, resumed
//! or taken over), and parking or ending the session when the connection goes.

use alloc::boxed::Box;
use alloc::format;

use bytes::Bytes;
use mqtt_codec::ReasonCode;
use mqtt_state::{Accept, ConnectRequest, Diagnostics, Duration, Instant, SessionState, Utf8Bytes};

use crate::decide::Pending;
use crate::registry::Offline;
use crate::{
    AuthStep, Broker, CloseReason, ConnInfo, ConnectionId, Context, Hooks, RequestKind, Verdict,
};

impl<H: Hooks> Broker<H> {
    pub(crate) fn on_connect(&mut self, now: Instant, id: ConnectionId, req: ConnectRequest) {
        let verdict = if self.online >= self.config.max_connections {
            Verdict::Deny(ReasonCode::ServerBusy)
        } else {
            // The connection and the hooks borrowed apart.
            let Some(c) = crate::broker::conn_ref(&self.conns, id) else {
                return;
            };
            let internal = c.is_internal();
            if internal {
                // A bridge's local leg: the broker's own client.
                Verdict::Allow
            } else if req
                .client_id
                .as_str()
                .starts_with(crate::bridge::LOCAL_PREFIX)
            {
                // [MQTT-3.1.3-9] refused with Client Identifier not valid: the bridges'
                // local sessions are not for clients to take over.
                Verdict::Deny(ReasonCode::ClientIdentifierNotValid)
            } else {
                let ctx = Context {
                    client_id: req.client_id.as_str(),
                    username: req.username.as_ref().map(Utf8Bytes::as_str),
                    protocol: req.protocol,
                    info: c.info().unwrap_or(&ConnInfo::EMPTY),
                };
                self.hooks.authenticate(&ctx, &req)
            }
        };
        match verdict {
            Verdict::Allow => self.continue_connect(now, id, req),
            Verdict::Deny(code) => {
                if let Some(c) = self.conn_mut(id) {
                    // [MQTT-3.2.2-7] a refusing CONNACK, then close.
                    let _ = c.session.reject(now, code);
                }
            }
            Verdict::Defer => {
                let kind = RequestKind::Authenticate {
                    username: req.username.as_ref().map(|u| u.as_str().into()),
                    password: req.password.clone(),
                };
                let Some(c) = self.conn_mut(id) else { return };
                // Kept while it is decided: the context of the request.
                c.extra_mut().authenticating = Some(Box::new(req));
                self.defer(now, id, Pending::Connect, kind);
            }
        }
    }

    /// An authenticated CONNECT: on to enhanced authentication if it names a method
    /// ([MQTT-4.12.0-1]), else admitted.
    pub(crate) fn continue_connect(&mut self, now: Instant, id: ConnectionId, req: ConnectRequest) {
        let Some(method) = req.authentication_method.clone() else {
            self.admit(now, id, req);
            return;
        };
        let data = req.authentication_data.clone();
        let Some(c) = self.conn_mut(id) else { return };
        c.extra_mut().authenticating = Some(Box::new(req));
        self.enhanced_step(now, id, method, data);
    }

    /// An AUTH from the client: the next step of its authentication or a re-authentication.
    pub(crate) fn on_auth(
        &mut self,
        now: Instant,
        id: ConnectionId,
        method: Option<Utf8Bytes>,
        data: Option<Bytes>,
    ) {
        let Some(c) = self.conn_mut(id) else { return };
        if c.authenticating().is_none() && c.owner().is_none() {
            return;
        }
        // The machine already checked that the method is the CONNECT's ([MQTT-4.12.0-5]).
        let method = method.unwrap_or_default();
        self.enhanced_step(now, id, method, data);
    }

    /// Carries out a step of enhanced authentication; `diagnostics` go on a refusal.
    pub(crate) fn auth_step(
        &mut self,
        now: Instant,
        id: ConnectionId,
        step: AuthStep,
        diagnostics: Diagnostics,
    ) {
        let Some(c) = self.conn_mut(id) else { return };
        let pending = c.authenticating().is_some();
        match step {
            // [MQTT-4.12.0-2] a challenge carries Continue authentication.
            AuthStep::Continue(data) => {
                let _ = c
                    .session
                    .auth(now, ReasonCode::ContinueAuthentication, Some(data));
            }
            AuthStep::Success if pending => {
                if let Some(req) = c.take_authenticating() {
                    self.admit(now, id, req);
                }
            }
            // [MQTT-4.12.1-1] a re-authentication that succeeded.
            AuthStep::Success => {
                let _ = c.session.auth(now, ReasonCode::Success, None);
            }
            // [MQTT-4.12.0-4] a refusal during the exchange is a CONNACK >= 0x80 and a close.
            AuthStep::Fail(code) if pending => {
                c.take_authenticating();
                let _ = c.session.reject_with(now, code, diagnostics);
            }
            // [MQTT-4.12.1-2] a failed re-authentication disconnects.
            AuthStep::Fail(code) => self.end_connection_with(
                now,
                id,
                code,
                CloseReason::ServerDisconnect(code),
                diagnostics,
            ),
            // Handled by `enhanced_step`; an answer is never a deferral.
            AuthStep::Defer => {}
        }
    }

    /// Accepts an authenticated CONNECT, in a cluster once this node owns the client
    /// identifier ([`crate::ClusterOp::Claim`], [`Broker::cluster_claimed`]).
    pub(crate) fn admit(&mut self, now: Instant, id: ConnectionId, req: ConnectRequest) {
        let internal = crate::broker::conn_ref(&self.conns, id).is_some_and(|c| c.is_internal());
        // An assigned identifier is this node's own; a bridge's local leg too.
        if self.config.cluster.is_some() && !internal && !req.client_id.as_str().is_empty() {
            self.cluster_park(now, id, req);
            return;
        }
        self.admit_now(now, id, req);
    }

    /// Accepts an authenticated CONNECT: finds, resumes, takes over or creates its session.
    pub(crate) fn admit_now(&mut self, now: Instant, id: ConnectionId, mut req: ConnectRequest) {
        // [MQTT-3.1.3-6] [MQTT-3.1.3-7] an empty client id gets a unique one.
        let assigned = if req.client_id.as_str().is_empty() {
            loop {
                // Unique in a cluster too: another node assigns from the same counter, and
                // the same identifier there would take this session over.
                let candidate = Utf8Bytes::from(match &self.config.cluster {
                    Some(c) => format!("auto-{}-{:016x}", c.node, self.next_client_id),
                    None => format!("auto-{:016x}", self.next_client_id),
                });
                self.next_client_id += 1;
                if self.session_of(candidate.as_str()).is_none() {
                    req.client_id = candidate.clone();
                    break Some(candidate);
                }
            }
        } else {
            None
        };
        let v5 = req.protocol.is_v5();
        // 3.1.1: a persistent session lasts until a clean session replaces it.
        let expiry = if v5 {
            req.session_expiry_interval
                .min(self.config.max_session_expiry)
        } else if req.clean_start {
            0
        } else {
            u32::MAX
        };
        let mut session = SessionState::default();
        let mut present = false;
        if let Some(s) = self.session_of(req.client_id.as_str()) {
            // [MQTT-3.1.4-3] a second connection with this id takes the session over.
            let old = self.sessions[s].as_ref().and_then(|r| r.conn);
            if let Some(old) = old {
                let (state, will) = self.take_over(now, old);
                let rec = self.sessions[s].as_mut().expect("indexed");
                rec.offline = Some(Box::new(Offline {
                    state,
                    ..Offline::default()
                }));
                rec.conn = None;
                // Routed once the session is parked: it may match the session itself.
                if let Some(w) = will {
                    self.route(now, None, None, w);
                }
            }
            let rec = self.sessions[s].as_mut().expect("indexed");
            // [MQTT-3.1.3-9] reconnecting in time cancels a delayed will (dropped with the
            // rest of the offline data).
            let offline = rec.offline.take();
            if req.clean_start {
                // [MQTT-3.1.2-4] clean start discards the old session.
                self.end_session(s);
            } else {
                // [MQTT-3.1.2-5] resume it.
                session = offline.map(|o| o.state).unwrap_or_default();
                present = true;
            }
        }
        let s = match self.session_of(req.client_id.as_str()) {
            Some(s) => s,
            // [MQTT-3.1.2-6] a new session.
            None => self.new_session(req.client_id.as_str().into()),
        };
        let rec = self.sessions[s].as_mut().expect("just made");
        rec.conn = Some(id);
        rec.expiry = expiry;
        rec.offline = None;
        // Which queued messages take their packet identifier in `accept`: stored then.
        let lacked: alloc::vec::Vec<bool> = if self.persisting() && present {
            session
                .queue
                .iter()
                .map(|q| q.packet_id.is_none())
                .collect()
        } else {
            alloc::vec::Vec::new()
        };
        let accept = Accept {
            session,
            session_present: present,
            assigned_client_id: assigned.filter(|_| v5),
            session_expiry_interval: (v5 && expiry != req.session_expiry_interval)
                .then_some(expiry),
        };
        let Some(c) = crate::broker::conn_in(&mut self.conns, id) else {
            return;
        };
        if c.owner().is_none() {
            self.online += 1;
        }
        c.owner = s as u32;
        if req.bridge {
            c.set_bridge();
        }
        // Kept for the whole connection: a copy, so that it does not pin the receive buffer
        // the CONNECT was read into.
        let username = req
            .username
            .as_ref()
            .map(|u| Utf8Bytes::copy_of(u.as_str()));
        // [MQTT-3.1.2-7] the will belongs to the session until it is published or dropped.
        let will = req.will.clone().map(Box::new);
        if username.is_some() || will.is_some() || c.extra.is_some() {
            let extra = c.extra_mut();
            extra.username = username;
            extra.will = will;
            c.tidy_extra();
        }
        // On error (the connection failed meanwhile) the machine keeps the session, and
        // the Disconnected event it reported parks it again.
        let _ = c.session.accept(now, accept);
        if self.persisting() {
            if present && !self.session_is_stored(s) {
                // Resumed without an expiry now: it no longer outlives the connection.
                let id = req.client_id.as_str();
                self.forget_session(id);
            }
            if self.session_is_stored(s) {
                // CONNACK waits for the record: the will is the session's from then on
                // ([MQTT-3.1.2-7]), and a crash must publish it.
                self.store.hazard = true;
            }
            self.store_session(s);
            if lacked.contains(&true) {
                self.store_assigned_ids(s, &lacked);
            }
        }
    }

    /// Ends `old` with Session taken over, returning the session state it held.
    pub(crate) fn take_over(
        &mut self,
        now: Instant,
        old: ConnectionId,
    ) -> (SessionState, Option<mqtt_state::Message>) {
        // What it waited for is moot; its undecided messages were not taken.
        self.drop_requests(old);
        let Some(c) = self.conn_mut(old) else {
            return (SessionState::default(), None);
        };
        let state = c.take_session_state();
        // The old connection's will is not published by a takeover in 3.1.1 practice;
        // 5.0 treats it as a disconnect without DISCONNECT 0x00, so it is.
        let v5 = c.session.version().is_v5();
        let will = c.take_will().filter(|_| v5);
        self.take_owner(old);
        self.end_connection(
            now,
            old,
            ReasonCode::SessionTakenOver,
            CloseReason::SessionTakenOver,
        );
        (state, will.map(|(w, _)| w))
    }

    pub(crate) fn on_disconnected(
        &mut self,
        now: Instant,
        id: ConnectionId,
        reason: ReasonCode,
        by_peer: bool,
    ) {
        let max_expiry = self.config.max_session_expiry;
        let persisting = self.persisting();
        let Some(c) = self.conn_mut(id) else { return };
        // The client's own DISCONNECT arrives as `by_peer` with its reason; a dropped
        // transport reports Unspecified error. [MQTT-3.14.4-3] [MQTT-3.1.2-10] a normal
        // DISCONNECT removes the will unpublished; 0x04 (with will) keeps it.
        let will_dropped = by_peer && reason == ReasonCode::Success && c.take_will().is_some();
        let expiry = c.session.disconnect_session_expiry();
        let owner = c.owner();
        if let (true, true, Some(s)) = (persisting, will_dropped, owner) {
            // A session stored for its will alone is stored no more.
            if let Some(rec) = self.sessions[s].as_ref().filter(|r| r.expiry == 0) {
                let id = rec.client_id.clone();
                self.forget_session(&id);
            }
        }
        if let (Some(expiry), Some(s)) = (expiry, owner) {
            if let Some(rec) = self.sessions[s].as_mut() {
                let was = rec.expiry;
                rec.expiry = expiry.min(max_expiry);
                if persisting && was > 0 && rec.expiry == 0 {
                    // Stored until now; it ends with this connection.
                    let id = rec.client_id.clone();
                    self.forget_session(&id);
                }
            }
        }
        self.release(now, id);
    }

    /// The connection is gone: park or end its session, publish or schedule its will.
    pub(crate) fn release(&mut self, now: Instant, id: ConnectionId) {
        let Some(c) = self.conn_mut(id) else { return };
        if c.owner().is_none() {
            return;
        }
        let will = c.take_will();
        let Some(owner) = self.take_owner(id) else {
            return;
        };
        let Some(c) = self.conn_mut(id) else { return };
        let session = c.take_session_state();
        let Some(rec) = self.sessions[owner].as_mut() else {
            return;
        };
        if rec.conn != Some(id) {
            return;
        }
        rec.conn = None;
        let expiry = rec.expiry;
        if expiry == 0 {
            // [MQTT-3.1.2-23] only a session expiry keeps the session beyond the connection;
            // [MQTT-3.1.2-8] a delayed will goes out when the session ends, if sooner: now.
            // No offline record, no timer: a clean session's end costs no allocation.
            drop(session);
            // Stored only for its will, if it had one.
            let stored = will.is_some();
            if let Some((will, delay)) = will {
                let publisher = (delay == 0).then_some(owner);
                self.route(now, publisher, None, will);
            }
            self.end_session_stored(owner, stored);
            return;
        }
        let offline = rec.offline.insert(Box::new(Offline {
            state: session,
            expires_at: (expiry != u32::MAX).then(|| now + Duration::from_secs(u64::from(expiry))),
            ..Offline::default()
        }));
        if let Some((will, delay)) = will {
            if delay == 0 {
                self.route(now, Some(owner), None, will);
            } else {
                // [MQTT-3.1.2-8] after the delay, or when the session ends if sooner.
                offline.pending_will = Some((will, now + Duration::from_secs(u64::from(delay))));
            }
        }
        self.store_session(owner);
        self.rearm_session(owner);
    }

    /// Detaches `id` from its session, keeping the count of connected clients.
    pub(crate) fn take_owner(&mut self, id: ConnectionId) -> Option<usize> {
        let c = self.conn_mut(id)?;
        let owner = c.owner()?;
        c.owner = crate::conn::NO_OWNER;
        self.online -= 1;
        Some(owner)
    }
}
