use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use mqtt_state::codec::{PacketId, QoS, ReasonCode, SubscriptionOptions};
use mqtt_state::{Event, Message, TopicBuf};
use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::Driver;
use crate::{Error, Options};

/// What the broker said about a publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// The packet identifier it had (QoS 1/2); `None` for QoS 0.
    pub packet_id: Option<PacketId>,
    /// The broker's reason code (PUBACK or PUBCOMP; Success for QoS 0 and before 5.0).
    pub reason: ReasonCode,
}

pub(crate) type Reply<T> = oneshot::Sender<Result<T, Error>>;

/// A request from a handle to the client task.
pub(crate) enum Request {
    /// Boxed: a `Message` is large and most queue slots are small requests' worth. No
    /// reply for [`AsyncClient::enqueue_untracked`].
    Publish(Box<Message>, Option<Reply<Ack>>),
    Subscribe(Vec<(String, SubscriptionOptions)>, Reply<Vec<ReasonCode>>),
    Unsubscribe(Vec<String>, Reply<Vec<ReasonCode>>),
    Disconnect(Reply<()>),
    /// Manual acks: the application is done with this message.
    Ack(AckToken),
}

/// A step of the protocol, as [`crate::Options::on_progress`] reports it.
#[derive(Debug)]
#[non_exhaustive]
pub enum Progress<'a> {
    /// The transport is open and CONNECT is queued, the first or a reconnect.
    Connecting,
    /// The machine reported this, before the client acts on it: CONNACK
    /// ([`Event::Connected`]), SUBACK, PUBACK/PUBCOMP, a message, a session that was not
    /// resumed, a message dropped, DISCONNECT.
    Event(&'a Event),
    /// An established connection (or an attempt to reconnect) failed; the next attempt
    /// comes after `retry_in`.
    Reconnecting {
        /// Why the connection ended.
        error: &'a Error,
        /// The wait before the next attempt.
        retry_in: std::time::Duration,
    },
    /// A message queued with [`AsyncClient::enqueue_untracked`] was refused before it was
    /// sent (a wildcard in its topic, a QoS above the server's maximum, a full queue).
    Refused {
        /// Why.
        error: &'a Error,
    },
    /// The client stopped: `None` after [`AsyncClient::disconnect`], else why (a refused
    /// reconnect, a protocol error, the first connection failing). The request futures
    /// and [`Incoming`] only see [`Error::Closed`]; this is where the cause is.
    Stopped {
        /// The cause.
        error: Option<&'a Error>,
    },
}

/// What acknowledges a received QoS 1/2 message with manual acks
/// ([`crate::Options::manual_acks`]): pass it to [`AsyncClient::ack`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckToken {
    /// The connection it arrived on ([`Status::connections`]): a token of an earlier
    /// connection is stale, the broker sends its message again.
    pub(crate) connection: u64,
    pub(crate) packet_id: PacketId,
}

/// A received message with what the client needs to acknowledge it.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// The broker marked it as sent before ([MQTT-3.3.1-1]); a QoS 1 message may be a
    /// duplicate.
    pub dup: bool,
    /// With manual acks, the token for [`AsyncClient::ack`]; `None` for QoS 0 or when the
    /// client acknowledges by itself.
    pub ack: Option<AckToken>,
}

/// A handle to a client connection: cheap to clone, `Send`, usable from any task.
///
/// Every method sends a request to the client task that [`AsyncClient::connect`] spawned,
/// which owns the socket and the sans-IO machine. The task ends after
/// [`AsyncClient::disconnect`], after a fatal error, or when every handle and the
/// [`Incoming`] receiver are dropped.
#[derive(Debug, Clone)]
pub struct AsyncClient {
    tx: mpsc::Sender<Request>,
    status: watch::Receiver<Status>,
}

/// Where the connection stands, as last reported by the client task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Status {
    /// A connection is up (CONNACK accepted it and it has not ended).
    pub connected: bool,
    /// Connections accepted so far, the first included: above 1 after a reconnect.
    pub connections: u64,
    /// Whether the broker resumed the session on the latest connection
    /// ([MQTT-3.2.2-2]).
    pub session_present: bool,
}

/// Received messages, in the order they arrived; also a [`futures_core::Stream`].
///
/// Read it concurrently with requests that wait for acknowledgements: when
/// [`Options::incoming_capacity`] messages are unread, the client stops reading the socket,
/// and so stops seeing acknowledgements too.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<Delivery>,
}

impl Incoming {
    /// The next message; `None` once the client has stopped.
    ///
    /// With manual acks this drops the token: use [`Incoming::recv_delivery`].
    pub async fn recv(&mut self) -> Option<Message> {
        self.rx.recv().await.map(|d| d.message)
    }

    /// A message that has already arrived, without waiting; `None` if there is none now.
    /// For reading a burst in one go after [`Incoming::recv`].
    pub fn try_recv(&mut self) -> Option<Message> {
        self.rx.try_recv().ok().map(|d| d.message)
    }

    /// The next message with its DUP flag and, with manual acks, its [`AckToken`].
    pub async fn recv_delivery(&mut self) -> Option<Delivery> {
        self.rx.recv().await
    }
}

impl futures_core::Stream for Incoming {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.rx.poll_recv(cx).map(|d| d.map(|d| d.message))
    }
}

/// The acknowledgement of a publish that [`AsyncClient::enqueue`] queued: a future.
#[derive(Debug)]
pub struct AckFuture {
    rx: oneshot::Receiver<Result<Ack, Error>>,
}

impl Future for AckFuture {
    type Output = Result<Ack, Error>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.rx)
            .poll(cx)
            .map(|r| r.unwrap_or(Err(Error::Closed)))
    }
}

impl AsyncClient {
    /// Opens the transport, sends CONNECT and waits for the broker's CONNACK; then spawns
    /// the task that runs the connection (and reconnects) on the current tokio runtime.
    ///
    /// Fails if the first connection cannot be made or is refused: reconnecting starts
    /// only once a connection was accepted.
    pub async fn connect(options: Options) -> Result<(AsyncClient, Incoming), Error> {
        let (tx, requests) = mpsc::channel(options.request_capacity.max(1));
        let (incoming, rx) = mpsc::channel(options.incoming_capacity.max(1));
        let (first_tx, first_rx) = oneshot::channel();
        let (status_tx, status) = watch::channel(Status::default());
        tokio::spawn(Driver::new(options, requests, incoming, status_tx).run(first_tx));
        first_rx.await.unwrap_or(Err(Error::Closed))?;
        Ok((AsyncClient { tx, status }, Incoming { rx }))
    }

    /// Acknowledges a message received with manual acks ([`crate::Options::manual_acks`]):
    /// PUBACK for QoS 1, PUBREC for QoS 2, once every message that arrived before it is
    /// acknowledged too ([MQTT-4.6.0-2]). Waits only for room in the request queue. A
    /// token of a connection since lost is ignored: the broker sends that message again.
    pub async fn ack(&self, token: AckToken) -> Result<(), Error> {
        self.tx
            .send(Request::Ack(token))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Where the connection stands now.
    pub fn status(&self) -> Status {
        *self.status.borrow()
    }

    /// Waits until the status changes (a connection made or lost); `Err(Error::Closed)`
    /// once the client has stopped.
    pub async fn status_changed(&mut self) -> Result<Status, Error> {
        self.status.changed().await.map_err(|_| Error::Closed)?;
        Ok(self.status())
    }

    async fn request<T>(&self, make: impl FnOnce(Reply<T>) -> Request) -> Result<T, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(make(reply)).await.map_err(|_| Error::Closed)?;
        rx.await.unwrap_or(Err(Error::Closed))
    }

    /// Publishes `payload` to `topic` and waits for the broker: PUBACK for QoS 1, PUBCOMP
    /// for QoS 2, the write queue for QoS 0. A 5.0 failure code is
    /// [`Error::Rejected`]. A wildcard in the topic is refused here ([MQTT-3.3.2-2]).
    ///
    /// To have many messages in flight from one task, use [`AsyncClient::enqueue`].
    pub async fn publish(
        &self,
        topic: &str,
        qos: QoS,
        payload: impl Into<Bytes>,
    ) -> Result<Ack, Error> {
        self.publish_message(message(topic, qos, payload)?).await
    }

    /// Publishes a message built in full (retain, 5.0 properties) and waits for the broker.
    pub async fn publish_message(&self, message: Message) -> Result<Ack, Error> {
        self.enqueue(message).await?.await
    }

    /// Queues a message, waiting only for room in the request queue (backpressure), and
    /// returns the future of its acknowledgement. Messages go out in the order queued
    /// ([MQTT-4.6.0-6]), up to the broker's Receive Maximum at a time.
    pub async fn enqueue(&self, message: Message) -> Result<AckFuture, Error> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request::Publish(Box::new(message), Some(reply)))
            .await
            .map_err(|_| Error::Closed)?;
        Ok(AckFuture { rx })
    }

    /// Queues a message like [`AsyncClient::enqueue`] but keeps no acknowledgement for
    /// it: no future, no reply to route. For a load generator or a firehose that counts
    /// acknowledgements in the [`crate::Options::on_progress`] hook
    /// ([`Progress::Event`] with `Event::Acknowledged`) rather than per message; a message
    /// the machine refuses is reported there as [`Progress::Refused`].
    pub async fn enqueue_untracked(&self, message: Message) -> Result<(), Error> {
        self.tx
            .send(Request::Publish(Box::new(message), None))
            .await
            .map_err(|_| Error::Closed)
    }

    /// Subscribes to `filter` at `qos` and waits for SUBACK; returns the granted code
    /// (the granted QoS), or [`Error::Rejected`] if the broker refused ([MQTT-3.9.3-1]).
    /// After a reconnect without a session the client subscribes again by itself
    /// ([`Options::resubscribe`]).
    pub async fn subscribe(&self, filter: &str, qos: QoS) -> Result<ReasonCode, Error> {
        let codes = self
            .subscribe_many(&[(filter, SubscriptionOptions::qos(qos))])
            .await?;
        match codes.first() {
            Some(c) if c.is_error() => Err(Error::Rejected {
                reason: *c,
                reason_string: None,
            }),
            Some(c) => Ok(*c),
            None => Err(Error::Closed),
        }
    }

    /// Subscribes to several filters in one SUBSCRIBE; one reason code per filter, in order.
    pub async fn subscribe_many(
        &self,
        filters: &[(&str, SubscriptionOptions)],
    ) -> Result<Vec<ReasonCode>, Error> {
        let filters = filters.iter().map(|(f, o)| (f.to_string(), *o)).collect();
        self.request(|r| Request::Subscribe(filters, r)).await
    }

    /// Unsubscribes and waits for UNSUBACK; 5.0 gives one reason code per filter, 3.1.1
    /// none.
    pub async fn unsubscribe(&self, filters: &[&str]) -> Result<Vec<ReasonCode>, Error> {
        let filters = filters.iter().map(|f| f.to_string()).collect();
        self.request(|r| Request::Unsubscribe(filters, r)).await
    }

    /// Ends the connection cleanly: takes no new requests, waits until every message
    /// queued before is acknowledged, sends DISCONNECT (Normal disconnection,
    /// [MQTT-3.14.4-1]) and closes. `Ok(())` on a clean close; [`Error::Unfinished`] with
    /// the messages that could not complete if the connection is lost meanwhile (it does
    /// not reconnect to finish them).
    pub async fn disconnect(&self) -> Result<(), Error> {
        self.request(Request::Disconnect).await
    }
}

/// A message at `qos` with a checked topic name.
pub(crate) fn message(topic: &str, qos: QoS, payload: impl Into<Bytes>) -> Result<Message, Error> {
    let topic = TopicBuf::try_from(topic.to_owned())
        .map_err(|e| mqtt_state::Error::from(mqtt_state::codec::Error::InvalidTopicName(e)))?;
    Ok(Message::new(topic, payload, qos))
}
