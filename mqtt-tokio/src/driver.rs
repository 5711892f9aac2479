//! The client task: the only module that drives the sans-IO [`mqtt_state::Client`].
//!
//! One loop per connection: after every input (bytes, a request, a timer) it drains the
//! machine completely — every pending packet gathered into one buffer and written in one
//! call, then every event — and only then waits again, so nothing queued from an event
//! handler is left unsent.

use std::collections::{HashMap, VecDeque};

use bytes::BytesMut;
use mqtt_state::codec::{ReasonCode, SubscriptionOptions};
use mqtt_state::{Client, Event, Message};
use tokio::sync::{mpsc, oneshot, watch};

use crate::client::{Ack, AckToken, Delivery, Progress, Reply, Request, Status};
use crate::transport::Transport;
use crate::{Clock, Error, Options};

/// The write buffer's starting size: small, so that thousands of idle clients in one
/// process hold little; it grows by doubling while a drain has more to send.
const OUT_START: usize = 2 * 1024;

/// Up to this size the write buffer grows to gather a drain into one write; beyond, it
/// grows only to fit one packet larger than all before.
const OUT: usize = 64 * 1024;

/// Requests taken per wake-up before the machine is drained.
const BATCH: usize = 256;

/// How a connection ended.
enum End {
    /// Our DISCONNECT went out.
    Done,
    /// The transport or the session failed; reconnect if allowed.
    Lost(Error),
    /// Refused or stopped for good.
    Fatal(Error),
}

/// What woke the connection loop.
enum Wake {
    Read(std::io::Result<bool>),
    Request(Option<Request>),
    Timer,
    Other,
}

type Filters = Vec<(String, SubscriptionOptions)>;
/// A SUBSCRIBE awaiting SUBACK: its filters and who waits (nobody for a resubscribe).
type PendingSubscribe = (Filters, Option<Reply<Vec<ReasonCode>>>);

pub(crate) struct Driver {
    client: Client,
    options: Options,
    clock: Clock,
    requests: mpsc::Receiver<Request>,
    /// Every handle is gone: no request can come.
    requests_closed: bool,
    incoming: mpsc::Sender<Delivery>,
    /// Received, not yet taken by `Incoming` (at most `incoming_capacity`).
    undelivered: VecDeque<Delivery>,
    /// Connections accepted so far: the current one's number, for [`AckToken`]s.
    generation: u64,
    /// Publish acknowledgements awaited, by packet identifier.
    publishes: HashMap<u16, Reply<Ack>>,
    /// SUBSCRIBE/UNSUBSCRIBE sent, by packet identifier; `None` reply for a resubscribe.
    subscribes: HashMap<u16, PendingSubscribe>,
    unsubscribes: HashMap<u16, (Vec<String>, Reply<Vec<ReasonCode>>)>,
    /// SUBSCRIBE/UNSUBSCRIBE requests waiting for a connection (the machine forgets those
    /// of a lost connection: their SUBACK may never come).
    waiting: Vec<Request>,
    /// Filters the broker granted, for resubscribing.
    subscriptions: Vec<(String, SubscriptionOptions)>,
    /// Packet identifiers in flight when CONNECT went out, in order: if the session is
    /// not resumed, `Event::SessionLost` lists their messages in this order.
    inflight_at_connect: Vec<u16>,
    /// Messages of a session the broker did not resume, with who waits for them: they go
    /// into the machine again, oldest first, as its queue has room (it may be full), and
    /// only after `Event::Connected` queued the resubscribe.
    session_lost: VecDeque<(Message, Option<Reply<Ack>>)>,
    disconnect: Option<Reply<()>>,
    status: watch::Sender<Status>,
    /// This connection reached CONNACK.
    connected: bool,
    out: Vec<u8>,
    input: BytesMut,
}

impl Driver {
    pub(crate) fn new(
        options: Options,
        requests: mpsc::Receiver<Request>,
        incoming: mpsc::Sender<Delivery>,
        status: watch::Sender<Status>,
    ) -> Self {
        Self {
            client: Client::new(options.config.clone()),
            options,
            clock: Clock::new(),
            requests,
            requests_closed: false,
            incoming,
            undelivered: VecDeque::new(),
            generation: 0,
            publishes: HashMap::new(),
            subscribes: HashMap::new(),
            unsubscribes: HashMap::new(),
            waiting: Vec::new(),
            subscriptions: Vec::new(),
            inflight_at_connect: Vec::new(),
            session_lost: VecDeque::new(),
            disconnect: None,
            status,
            connected: false,
            out: vec![0; OUT_START],
            input: BytesMut::new(),
        }
    }

    /// Connects, runs connections and reconnects until done; answers `first` after the
    /// first CONNACK or failure.
    pub(crate) async fn run(mut self, first: oneshot::Sender<Result<(), Error>>) {
        let mut first = Some(first);
        let mut backoff = self
            .options
            .reconnect
            .map_or(std::time::Duration::ZERO, |r| r.0);
        let end = loop {
            self.connected = false;
            let end = match Transport::open(&self.options).await {
                Ok(mut t) => {
                    let end = self.connection(&mut t, &mut first).await;
                    self.status.send_modify(|s| s.connected = false);
                    // The DISCONNECT, ours or the machine's, is written: close.
                    t.close().await;
                    end
                }
                Err(e) => End::Lost(e),
            };
            match end {
                End::Done => break Ok(()),
                End::Fatal(e) => break Err(e),
                End::Lost(e) if first.is_some() || self.disconnect.is_some() => break Err(e),
                End::Lost(e) => {
                    self.client.handle_close(self.clock.now());
                    self.requeue_requests();
                    let Some((min, max)) = self.options.reconnect else {
                        break Err(e);
                    };
                    if self.connected {
                        backoff = min;
                    }
                    // A ping the heartbeat timed out: the path (a NAT mapping) failed,
                    // not the server, so a new connection goes at once.
                    let path_lost = matches!(e, Error::Mqtt(mqtt_state::Error::KeepAliveTimeout))
                        && self.options.config.heartbeat.is_some();
                    if path_lost {
                        backoff = std::time::Duration::ZERO;
                    }
                    self.progress(Progress::Reconnecting {
                        error: &e,
                        retry_in: backoff,
                    });
                    if !self.pause(backoff).await {
                        break Err(e);
                    }
                    backoff = (backoff * 2).max(min).min(max);
                }
            }
        };
        self.finish(end, first);
    }

    /// Tells the application's hook, if any.
    fn progress(&self, p: Progress<'_>) {
        if let Some(hook) = &self.options.hook {
            (hook.0)(&p);
        }
    }

    /// Waits `wait` before reconnecting, taking requests meanwhile. `false` to stop.
    async fn pause(&mut self, wait: std::time::Duration) -> bool {
        let sleep = tokio::time::sleep(wait);
        tokio::pin!(sleep);
        loop {
            if self.requests_closed && self.incoming.is_closed() {
                return false;
            }
            tokio::select! {
                () = &mut sleep => return true,
                r = self.requests.recv(), if !self.requests_closed && self.has_room() => match r {
                    Some(r) => {
                        self.submit(r);
                        if self.disconnect.is_some() {
                            return false;
                        }
                    }
                    None => self.requests_closed = true,
                },
                () = self.incoming.closed(), if self.requests_closed => return false,
            }
        }
    }

    /// Room in the machine's queue for another message: the request channel holds the
    /// rest, and its senders wait.
    fn has_room(&self) -> bool {
        self.client.session().queue.len() < self.options.config.max_queued
    }

    /// SUBSCRIBE/UNSUBSCRIBE sent on a lost connection are asked again on the next.
    fn requeue_requests(&mut self) {
        let mut subs: Vec<_> = self.subscribes.drain().collect();
        subs.sort_by_key(|(id, _)| *id);
        for (_, (filters, reply)) in subs {
            if let Some(reply) = reply {
                self.waiting.push(Request::Subscribe(filters, reply));
            }
        }
        let mut unsubs: Vec<_> = self.unsubscribes.drain().collect();
        unsubs.sort_by_key(|(id, _)| *id);
        for (_, (filters, reply)) in unsubs {
            self.waiting.push(Request::Unsubscribe(filters, reply));
        }
    }

    /// Runs one connection until it ends.
    async fn connection(
        &mut self,
        t: &mut Transport,
        first: &mut Option<oneshot::Sender<Result<(), Error>>>,
    ) -> End {
        let now = self.clock.now();
        self.inflight_at_connect = self
            .client
            .session()
            .inflight
            .iter()
            .map(|f| f.packet_id.get())
            .collect();
        if let Err(e) = self.client.connect(now) {
            return End::Fatal(e.into());
        }
        self.progress(Progress::Connecting);
        self.input.clear();
        loop {
            // Events before packets: after a CONNACK without a session, the resubscribe
            // that `Event::Connected` queues must go out before the messages waiting in
            // the machine, or the new session routes them before the subscription exists.
            while let Some(ev) = self.client.poll_event() {
                self.on_event(ev, first);
            }
            self.republish();
            // Drain everything: packets out (one write), then events, until both are idle.
            loop {
                if let Err(e) = self.flush(t).await {
                    return self.classify(e);
                }
                let mut any = false;
                while let Some(ev) = self.client.poll_event() {
                    any = true;
                    self.on_event(ev, first);
                }
                if !any {
                    break;
                }
            }
            self.deliver();
            if self.client.is_closed() {
                // A clean close: ours (the DISCONNECT is written) or the server's (a
                // DISCONNECT with a non-error code), after which the next connection
                // takes over.
                return if self.disconnect.is_some() {
                    End::Done
                } else {
                    End::Lost(Error::Mqtt(mqtt_state::Error::ConnectionClosed))
                };
            }
            if self.disconnect.is_some() && self.client.is_connected() && self.drained() {
                // Everything queued before the disconnect is acknowledged.
                if let Err(e) = self
                    .client
                    .disconnect(self.clock.now(), ReasonCode::Success)
                {
                    return End::Fatal(e.into());
                }
                return match self.flush(t).await {
                    Ok(()) => End::Done,
                    Err(e) => self.classify(e),
                };
            }
            if self.requests_closed && self.incoming.is_closed() {
                // Nobody can ask for anything or read anything: leave cleanly.
                let _ = self
                    .client
                    .disconnect(self.clock.now(), ReasonCode::Success);
                let _ = self.flush(t).await;
                t.close().await;
                return End::Fatal(Error::Closed);
            }
            let deadline = self.client.poll_timeout().map(|d| self.clock.to_tokio(d));
            let sleep = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            let take_requests = !self.requests_closed
                && self.disconnect.is_none()
                && self.client.is_connected()
                && self.session_lost.is_empty()
                && self.has_room();
            let read_room = self.undelivered.len() < self.options.incoming_capacity.max(1);
            let wake = tokio::select! {
                r = t.read(&mut self.input), if read_room => Wake::Read(r),
                r = self.requests.recv(), if take_requests => Wake::Request(r),
                p = self.incoming.reserve(), if !self.undelivered.is_empty() => {
                    match p {
                        Ok(p) => p.send(self.undelivered.pop_front().expect("not empty")),
                        // Nobody reads: what arrives is dropped.
                        Err(_) => self.undelivered.clear(),
                    }
                    Wake::Other
                }
                () = self.incoming.closed(), if self.requests_closed => Wake::Other,
                () = sleep => Wake::Timer,
            };
            let now = self.clock.now();
            match wake {
                Wake::Read(Ok(true)) => {
                    if let Err(e) = self.client.handle_input(now, &mut self.input) {
                        // Write the DISCONNECT the machine queued, then end.
                        let _ = self.flush(t).await;
                        return self.classify(e.into());
                    }
                }
                Wake::Read(Ok(false)) => {
                    return End::Lost(Error::Mqtt(mqtt_state::Error::ConnectionClosed))
                }
                Wake::Read(Err(e)) => return End::Lost(e.into()),
                Wake::Request(Some(r)) => {
                    self.submit_at(now, r);
                    // Take what else is waiting, so that one drain writes all of it in one
                    // call rather than one write per request.
                    for _ in 0..BATCH {
                        if self.disconnect.is_some() || !self.has_room() {
                            break;
                        }
                        match self.requests.try_recv() {
                            Ok(r) => self.submit_at(now, r),
                            Err(_) => break,
                        }
                    }
                }
                Wake::Request(None) => self.requests_closed = true,
                Wake::Timer => self.client.handle_timeout(now),
                Wake::Other => {}
            }
        }
    }

    /// Whether nothing is queued, in flight, or awaiting SUBACK/UNSUBACK.
    fn drained(&self) -> bool {
        let s = self.client.session();
        s.inflight.is_empty()
            && s.queue.is_empty()
            && self.subscribes.values().all(|(_, r)| r.is_none())
            && self.unsubscribes.is_empty()
            && self.waiting.is_empty()
    }

    /// Hands received messages to `Incoming` while it has room.
    fn deliver(&mut self) {
        while let Some(m) = self.undelivered.pop_front() {
            match self.incoming.try_send(m) {
                Ok(()) => {}
                Err(mpsc::error::TrySendError::Full(m)) => {
                    self.undelivered.push_front(m);
                    return;
                }
                Err(mpsc::error::TrySendError::Closed(_)) => {
                    self.undelivered.clear();
                    return;
                }
            }
        }
    }

    /// Gathers every packet the machine has to send into one buffer and writes it in one
    /// call.
    async fn flush(&mut self, t: &mut Transport) -> Result<(), Error> {
        let now = self.clock.now();
        let mut len = 0;
        let result = loop {
            match self.client.poll_transmit(now, &mut self.out[len..]) {
                Ok(Some(n)) => len += n,
                Ok(None) => break Ok(()),
                // The next packet does not fit behind the others: write those first, and
                // grow the buffer for a packet larger than all before (the machine keeps
                // it queued).
                Err(mqtt_state::Error::Codec(mqtt_state::codec::Error::BufferTooSmall {
                    required,
                })) => {
                    if self.out.len() < OUT {
                        // Gather more into the one write.
                        let grown = (self.out.len() * 2).max(len + required).min(OUT);
                        self.out.resize(grown.max(len + required), 0);
                        continue;
                    }
                    if len > 0 {
                        t.write(&self.out[..len]).await?;
                        len = 0;
                    }
                    if required > self.out.len() {
                        self.out.resize(required, 0);
                    }
                }
                Err(e) => break Err(e.into()),
            }
        };
        if len > 0 {
            t.write(&self.out[..len]).await?;
        }
        result
    }

    /// How a failure ends the connection.
    fn classify(&self, e: Error) -> End {
        match e {
            Error::Mqtt(mqtt_state::Error::Disconnected(_)) if self.disconnect.is_some() => {
                End::Done
            }
            Error::Mqtt(mqtt_state::Error::ConnectionRefused(code)) => {
                End::Fatal(Error::Refused(code))
            }
            e => End::Lost(e),
        }
    }

    /// Hands a request to the machine (or keeps it for the next connection).
    fn submit(&mut self, r: Request) {
        let now = self.clock.now();
        self.submit_at(now, r);
    }

    /// [`Driver::submit`] at `now`: one clock read for a batch of requests.
    fn submit_at(&mut self, now: mqtt_state::Instant, r: Request) {
        match r {
            Request::Publish(m, reply) => match (self.client.publish(now, *m), reply) {
                (Ok(Some(id)), Some(reply)) => {
                    self.publishes.insert(id.get(), reply);
                }
                (Ok(None), Some(reply)) => {
                    let _ = reply.send(Ok(Ack {
                        packet_id: None,
                        reason: ReasonCode::Success,
                    }));
                }
                (Ok(_), None) => {}
                (Err(e), Some(reply)) => {
                    let _ = reply.send(Err(e.into()));
                }
                (Err(e), None) => self.progress(Progress::Refused { error: &e.into() }),
            },
            Request::Subscribe(filters, reply) => {
                if !self.client.is_connected() {
                    self.waiting.push(Request::Subscribe(filters, reply));
                    return;
                }
                let fs: Vec<(&str, SubscriptionOptions)> =
                    filters.iter().map(|(f, o)| (f.as_str(), *o)).collect();
                match self.client.subscribe(now, &fs, None) {
                    Ok(id) => {
                        self.subscribes.insert(id.get(), (filters, Some(reply)));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Request::Unsubscribe(filters, reply) => {
                if !self.client.is_connected() {
                    self.waiting.push(Request::Unsubscribe(filters, reply));
                    return;
                }
                let fs: Vec<&str> = filters.iter().map(String::as_str).collect();
                match self.client.unsubscribe(now, &fs) {
                    Ok(id) => {
                        self.unsubscribes.insert(id.get(), (filters, reply));
                    }
                    Err(e) => {
                        let _ = reply.send(Err(e.into()));
                    }
                }
            }
            Request::Disconnect(reply) => {
                self.disconnect = Some(reply);
            }
            Request::Ack(token) => {
                // A token of a lost connection: the machine forgot what it owed then, and
                // the broker sends the message again.
                if token.connection == self.generation && self.connected {
                    self.client.ack(now, token.packet_id);
                }
            }
        }
    }

    fn on_event(&mut self, ev: Event, first: &mut Option<oneshot::Sender<Result<(), Error>>>) {
        self.progress(Progress::Event(&ev));
        match ev {
            Event::Connected(info) => {
                self.connected = true;
                self.generation += 1;
                self.status.send_modify(|s| {
                    s.connected = true;
                    s.connections += 1;
                    s.session_present = info.session_present;
                });
                if let Some(f) = first.take() {
                    let _ = f.send(Ok(()));
                }
                // A new session has none of our subscriptions.
                if !info.session_present && self.options.resubscribe {
                    let subs = std::mem::take(&mut self.subscriptions);
                    if !subs.is_empty() {
                        let fs: Vec<(&str, SubscriptionOptions)> =
                            subs.iter().map(|(f, o)| (f.as_str(), *o)).collect();
                        if let Ok(id) = self.client.subscribe(self.clock.now(), &fs, None) {
                            self.subscribes.insert(id.get(), (subs, None));
                        }
                    }
                }
                for r in std::mem::take(&mut self.waiting) {
                    self.submit(r);
                }
                self.republish();
            }
            Event::Message {
                message,
                packet_id,
                dup,
            } => {
                let ack = packet_id
                    .filter(|_| self.options.config.manual_acks)
                    .map(|packet_id| AckToken {
                        connection: self.generation,
                        packet_id,
                    });
                self.undelivered.push_back(Delivery { message, dup, ack });
            }
            Event::Acknowledged {
                packet_id,
                reason,
                reason_string,
            } => {
                if let Some(reply) = self.publishes.remove(&packet_id.get()) {
                    let r = if reason.is_error() {
                        Err(Error::Rejected {
                            reason,
                            reason_string: reason_string.map(|s| s.as_str().to_owned()),
                        })
                    } else {
                        Ok(Ack {
                            packet_id: Some(packet_id),
                            reason,
                        })
                    };
                    let _ = reply.send(r);
                }
            }
            Event::Subscribed { packet_id, reasons } => {
                if let Some((filters, reply)) = self.subscribes.remove(&packet_id.get()) {
                    for ((f, o), code) in filters.into_iter().zip(&reasons) {
                        if !code.is_error() {
                            self.subscriptions.retain(|(s, _)| *s != f);
                            self.subscriptions.push((f, o));
                        }
                    }
                    if let Some(reply) = reply {
                        let _ = reply.send(Ok(reasons));
                    }
                }
            }
            Event::Unsubscribed { packet_id, reasons } => {
                if let Some((filters, reply)) = self.unsubscribes.remove(&packet_id.get()) {
                    self.subscriptions.retain(|(s, _)| !filters.contains(s));
                    let _ = reply.send(Ok(reasons));
                }
            }
            Event::SessionLost { messages } => {
                // [MQTT-3.2.2-5] the broker has no session: publish again what it never
                // acknowledged (at least once still holds; QoS 2 may now arrive twice),
                // once the resubscribe is queued (`republish`).
                let ids = std::mem::take(&mut self.inflight_at_connect);
                for (id, m) in ids.into_iter().zip(messages) {
                    let reply = self.publishes.remove(&id);
                    self.session_lost.push_back((m, reply));
                }
            }
            Event::Dropped {
                packet_id, error, ..
            } => {
                if let Some(reply) = packet_id.and_then(|id| self.publishes.remove(&id.get())) {
                    let _ = reply.send(Err(error.into()));
                }
            }
            _ => {}
        }
    }

    /// Hands the messages of a lost session to the machine while its queue has room.
    fn republish(&mut self) {
        if !self.client.is_connected() {
            return;
        }
        let now = self.clock.now();
        while self.has_room() {
            let Some((m, reply)) = self.session_lost.pop_front() else {
                return;
            };
            match (self.client.publish(now, m), reply) {
                (Ok(Some(new)), Some(reply)) => {
                    self.publishes.insert(new.get(), reply);
                }
                (Err(e), Some(reply)) => {
                    let _ = reply.send(Err(e.into()));
                }
                _ => {}
            }
        }
    }

    /// The client stops: every request still waiting gets an answer, and what was not
    /// acknowledged is reported, not dropped silently.
    fn finish(mut self, end: Result<(), Error>, first: Option<oneshot::Sender<Result<(), Error>>>) {
        self.progress(Progress::Stopped {
            error: end.as_ref().err(),
        });
        if let Some(f) = first {
            let _ = f.send(end.clone().and(Err(Error::Closed)));
        }
        self.requests.close();
        while let Ok(r) = self.requests.try_recv() {
            self.waiting.push(r);
        }
        let lost = std::mem::take(&mut self.session_lost);
        let s = self.client.session();
        let unfinished: Vec<Message> = s
            .inflight
            .iter()
            .map(|f| f.outgoing.message.clone())
            .chain(lost.iter().map(|(m, _)| m.clone()))
            .chain(s.queue.iter().map(|o| o.message.clone()))
            .collect();
        for (_, reply) in lost {
            if let Some(reply) = reply {
                let _ = reply.send(Err(Error::Closed));
            }
        }
        for (_, reply) in self.publishes.drain() {
            let _ = reply.send(Err(Error::Closed));
        }
        for (_, (_, reply)) in self.subscribes.drain() {
            if let Some(reply) = reply {
                let _ = reply.send(Err(Error::Closed));
            }
        }
        for (_, (_, reply)) in self.unsubscribes.drain() {
            let _ = reply.send(Err(Error::Closed));
        }
        for r in self.waiting.drain(..) {
            match r {
                Request::Publish(_, Some(reply)) => drop(reply.send(Err(Error::Closed))),
                Request::Publish(_, None) => {}
                Request::Subscribe(_, reply) | Request::Unsubscribe(_, reply) => {
                    drop(reply.send(Err(Error::Closed)))
                }
                Request::Disconnect(reply) => drop(reply.send(Ok(()))),
                Request::Ack(_) => {}
            }
        }
        if let Some(reply) = self.disconnect.take() {
            // The application asked to stop: that is clean whenever nothing is lost, even
            // if the connection was down at the time.
            let r = if unfinished.is_empty() {
                Ok(())
            } else {
                Err(Error::Unfinished {
                    messages: unfinished,
                })
            };
            drop(end);
            let _ = reply.send(r);
        }
    }
}
