use core::fmt;

use bytes::Bytes;
use mqtt_codec::{
    Packet, ProtocolVersion, Publish, PublishProperties, QoS, QosPid, SubscriptionId,
    SubscriptionIds, Topic, UserProperties,
};
use mqtt_topic::TopicBuf;

use crate::Error;

/// The Subscription Identifiers a delivered message carries: one per matching
/// subscription that has one, every one of them ([MQTT-3.3.4-4]). Up to four live inline,
/// which covers nearly every delivery without allocating; more spill to the heap.
#[derive(Clone)]
pub struct SubscriptionIdList(IdRepr);

#[derive(Clone)]
enum IdRepr {
    /// `ids[..len]`; the rest is filler.
    Inline { len: u8, ids: [SubscriptionId; 4] },
    /// More than four. A boxed slice rather than a `Vec`, so the list is no larger than
    /// the inline form; a push re-allocates, and pushes beyond four are rare.
    Heap(alloc::boxed::Box<[SubscriptionId]>),
}

/// What unused inline slots hold.
const FILLER: SubscriptionId = match SubscriptionId::new(1) {
    Some(id) => id,
    None => panic!("1 is a subscription id"),
};

impl SubscriptionIdList {
    /// An empty list.
    pub const fn new() -> Self {
        Self(IdRepr::Inline {
            len: 0,
            ids: [FILLER; 4],
        })
    }

    /// Appends `id`.
    pub fn push(&mut self, id: SubscriptionId) {
        match &mut self.0 {
            IdRepr::Inline { len, ids } if usize::from(*len) < ids.len() => {
                ids[usize::from(*len)] = id;
                *len += 1;
            }
            IdRepr::Inline { ids, .. } => {
                let mut v = alloc::vec::Vec::with_capacity(ids.len() + 1);
                v.extend_from_slice(ids);
                v.push(id);
                self.0 = IdRepr::Heap(v.into_boxed_slice());
            }
            IdRepr::Heap(b) => {
                let mut v = core::mem::take(b).into_vec();
                v.push(id);
                *b = v.into_boxed_slice();
            }
        }
    }

    /// The identifiers, in the order they were pushed.
    pub fn as_slice(&self) -> &[SubscriptionId] {
        match &self.0 {
            IdRepr::Inline { len, ids } => &ids[..usize::from(*len)],
            IdRepr::Heap(b) => b,
        }
    }

    /// Removes them all (and any heap memory).
    pub fn clear(&mut self) {
        *self = Self::new();
    }
}

impl Default for SubscriptionIdList {
    fn default() -> Self {
        Self::new()
    }
}

impl core::ops::Deref for SubscriptionIdList {
    type Target = [SubscriptionId];
    fn deref(&self) -> &[SubscriptionId] {
        self.as_slice()
    }
}

impl PartialEq for SubscriptionIdList {
    fn eq(&self, other: &Self) -> bool {
        self.as_slice() == other.as_slice()
    }
}

impl Eq for SubscriptionIdList {}

impl fmt::Debug for SubscriptionIdList {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list().entries(self.as_slice()).finish()
    }
}

impl FromIterator<SubscriptionId> for SubscriptionIdList {
    fn from_iter<I: IntoIterator<Item = SubscriptionId>>(iter: I) -> Self {
        let mut list = Self::new();
        list.extend(iter);
        list
    }
}

impl Extend<SubscriptionId> for SubscriptionIdList {
    fn extend<I: IntoIterator<Item = SubscriptionId>>(&mut self, iter: I) {
        for id in iter {
            self.push(id);
        }
    }
}

impl From<&[SubscriptionId]> for SubscriptionIdList {
    fn from(ids: &[SubscriptionId]) -> Self {
        if ids.len() > 4 {
            return Self(IdRepr::Heap(ids.into()));
        }
        ids.iter().copied().collect()
    }
}

impl<'a> IntoIterator for &'a SubscriptionIdList {
    type Item = &'a SubscriptionId;
    type IntoIter = core::slice::Iter<'a, SubscriptionId>;
    fn into_iter(self) -> Self::IntoIter {
        self.as_slice().iter()
    }
}

/// Bytes known to be UTF-8: a content type, a client identifier, a filter. Cloning shares the
/// buffer. (A message's topic is a [`TopicBuf`], which also carries its name check.)
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Utf8Bytes(Bytes);

impl Utf8Bytes {
    /// The empty string, usable in `static`s.
    pub(crate) const EMPTY: Utf8Bytes = Utf8Bytes(Bytes::new());

    /// Checks `b` is UTF-8.
    pub fn new(b: Bytes) -> Result<Self, core::str::Utf8Error> {
        core::str::from_utf8(&b)?;
        Ok(Self(b))
    }

    /// A view into `frame` at `s`, which must lie inside it (it does when `s` was decoded
    /// from `frame`). Nothing is copied.
    pub(crate) fn slice_of(frame: &Bytes, s: &str) -> Self {
        Self(frame.slice_ref(s.as_bytes()))
    }

    /// An owned copy of `s`, for state that outlives the frame it was decoded from: a view
    /// would pin the whole receive buffer, so that the reader's `BytesMut` could never
    /// reclaim its storage and would reallocate every time it wraps.
    pub fn copy_of(s: &str) -> Self {
        Self(Bytes::copy_from_slice(s.as_bytes()))
    }

    /// The string.
    pub fn as_str(&self) -> &str {
        // Checked when built; a failure here would be a bug in this crate, not bad input.
        core::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The underlying bytes.
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }
}

impl From<&'static str> for Utf8Bytes {
    fn from(s: &'static str) -> Self {
        Self(Bytes::from_static(s.as_bytes()))
    }
}

impl From<alloc::string::String> for Utf8Bytes {
    fn from(s: alloc::string::String) -> Self {
        Self(Bytes::from(s.into_bytes()))
    }
}

impl fmt::Debug for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Utf8Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Reason String and User Properties the application adds to a packet it answers with
/// (5.0 only; before 5.0 there is nowhere to put them), for the peer's diagnostics.
///
/// They are left out of a packet they would push beyond the client's Maximum Packet
/// Size, User Properties first, then the Reason String ([MQTT-3.2.2-19] and the other
/// "MUST NOT send this property if it would increase the size of the packet beyond the
/// Maximum Packet Size" statements); and, on anything but CONNACK and DISCONNECT, when
/// the client set Request Problem Information to 0 ([MQTT-3.1.2-29]).
///
/// ```
/// use mqtt_state::Diagnostics;
/// let d = Diagnostics::new()
///     .with_reason_string("topic not allowed")?
///     .with_user_properties(&[("policy", "acl-7")])?;
/// assert_eq!(d.reason_string(), Some("topic not allowed"));
/// # Ok::<(), mqtt_state::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    reason_string: Option<Utf8Bytes>,
    /// A validated property block of User Properties only.
    user_block: Bytes,
}

impl Diagnostics {
    /// None yet.
    pub const fn new() -> Self {
        Self {
            reason_string: None,
            user_block: Bytes::new(),
        }
    }

    /// Sets the Reason String. Refused when no packet could carry it (U+0000, more than
    /// 65,535 bytes), so that it cannot wedge a packet later.
    pub fn with_reason_string(mut self, s: impl Into<Utf8Bytes>) -> Result<Self, Error> {
        let s = s.into();
        let probe = mqtt_codec::Disconnect {
            reason_code: mqtt_codec::ReasonCode::Success,
            properties: mqtt_codec::DisconnectProperties {
                reason_string: Some(s.as_str()),
                ..Default::default()
            },
        };
        mqtt_codec::Packet::Disconnect(probe).encoded_len(mqtt_codec::ProtocolVersion::V5)?;
        self.reason_string = Some(s);
        Ok(self)
    }

    /// Sets the User Properties, in order (names may repeat).
    pub fn with_user_properties(mut self, pairs: &[(&str, &str)]) -> Result<Self, Error> {
        self.user_block = if pairs.is_empty() {
            Bytes::new()
        } else {
            Bytes::from(UserProperties::new(pairs).to_block()?)
        };
        Ok(self)
    }

    /// The Reason String, if any.
    pub fn reason_string(&self) -> Option<&str> {
        self.reason_string.as_ref().map(Utf8Bytes::as_str)
    }

    /// The User Properties, in order.
    pub fn user_properties(&self) -> UserProperties<'_> {
        // The block was validated when it was stored.
        UserProperties::from_block(&self.user_block).unwrap_or_default()
    }

    /// Whether there is nothing to add.
    pub fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_block.is_empty()
    }
}

/// An application message: what a PUBLISH carries, owned.
///
/// Received messages share the receive buffer (`bytes::Bytes` views): nothing is copied.
/// Messages to send are built with [`Message::new`] from `Bytes` the application already
/// owns, so queueing one costs a reference count, not a copy.
///
/// The topic is a [`TopicBuf`]: checked once, when the message is made or received
/// ([MQTT-3.3.2-2] no wildcard, [MQTT-4.7.3-1] to [MQTT-4.7.3-3]), then routed and written
/// to every subscriber without being scanned again.
///
/// The 5.0 properties are read with [`Message::properties`] and written with
/// [`Message::properties_mut`]: they live in a box of their own, made only for a message
/// that has any. Most messages have none, and a message is queued per subscriber and
/// carried by every [`crate::Event::Message`], so it stays at 80 bytes rather than 240.
#[derive(Debug, Clone)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct Message {
    /// The topic name (after topic alias resolution), checked.
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_impls::topic"))]
    pub topic: TopicBuf,
    /// The payload.
    pub payload: Bytes,
    /// The QoS it is (to be) delivered at.
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_impls::qos"))]
    pub qos: QoS,
    /// The RETAIN flag.
    pub retain: bool,
    /// 5.0 properties; `None` when there are none.
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_impls::properties"))]
    properties: Option<alloc::boxed::Box<MessageProperties>>,
}

/// What a message without properties reads.
static NO_PROPERTIES: MessageProperties = MessageProperties::new();

/// Equal when the fields are, properties compared by value: a message whose properties
/// were made and emptied again equals one that never had any.
impl PartialEq for Message {
    fn eq(&self, other: &Self) -> bool {
        self.topic == other.topic
            && self.payload == other.payload
            && self.qos == other.qos
            && self.retain == other.retain
            && self.properties() == other.properties()
    }
}

impl Eq for Message {}

/// The 5.0 properties an application message carries end to end.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
pub struct MessageProperties {
    /// Whether the payload is UTF-8.
    pub payload_format_indicator: Option<bool>,
    /// Lifetime in seconds.
    pub message_expiry_interval: Option<u32>,
    /// Content type.
    pub content_type: Option<Utf8Bytes>,
    /// Response topic.
    pub response_topic: Option<Utf8Bytes>,
    /// Correlation data.
    pub correlation_data: Option<Bytes>,
    /// User properties as a property block (read with [`MessageProperties::user_properties`]).
    #[cfg_attr(feature = "serde", serde(with = "crate::serde_impls::user_block"))]
    user_block: Bytes,
    /// Subscription identifiers (delivered messages only), all of them.
    pub subscription_identifiers: SubscriptionIdList,
}

impl MessageProperties {
    /// None at all.
    pub const fn new() -> Self {
        Self {
            payload_format_indicator: None,
            message_expiry_interval: None,
            content_type: None,
            response_topic: None,
            correlation_data: None,
            user_block: Bytes::new(),
            subscription_identifiers: SubscriptionIdList::new(),
        }
    }

    /// Whether there is no property at all.
    pub fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.message_expiry_interval.is_none()
            && self.content_type.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_block.is_empty()
            && self.subscription_identifiers.is_empty()
    }

    /// The user properties, in order.
    pub fn user_properties(&self) -> UserProperties<'_> {
        // The block was validated when it was stored.
        UserProperties::from_block(&self.user_block).unwrap_or_default()
    }

    /// The same properties in buffers of their own, not views into a receive buffer.
    fn detached(&self) -> Self {
        let copy = |b: &Bytes| Bytes::copy_from_slice(b);
        Self {
            payload_format_indicator: self.payload_format_indicator,
            message_expiry_interval: self.message_expiry_interval,
            content_type: self
                .content_type
                .as_ref()
                .map(|s| Utf8Bytes::copy_of(s.as_str())),
            response_topic: self
                .response_topic
                .as_ref()
                .map(|s| Utf8Bytes::copy_of(s.as_str())),
            correlation_data: self.correlation_data.as_ref().map(copy),
            user_block: copy(&self.user_block),
            subscription_identifiers: self.subscription_identifiers.clone(),
        }
    }

    pub(crate) fn set_user_block(&mut self, block: Option<Bytes>) {
        self.user_block = block.unwrap_or_default();
    }

    /// Replaces the user properties.
    pub fn set_user_properties(&mut self, pairs: &[(&str, &str)]) -> Result<(), Error> {
        self.user_block = if pairs.is_empty() {
            Bytes::new()
        } else {
            Bytes::from(UserProperties::new(pairs).to_block()?)
        };
        Ok(())
    }
}

impl Message {
    /// A message without properties, not retained. The topic is checked already: build it
    /// with `TopicBuf::from_static`, `TopicBuf::try_from(String)` or from a `TopicName`.
    ///
    /// ```
    /// use mqtt_state::{Message, TopicBuf};
    /// use mqtt_codec::QoS;
    /// let m = Message::new(TopicBuf::from_static("sensors/t1")?, "21.5", QoS::AtLeastOnce);
    /// assert_eq!(m.topic.as_str(), "sensors/t1");
    /// // A topic name with a wildcard cannot be built, so no such message can be sent.
    /// assert!(TopicBuf::from_static("sensors/+").is_err());
    /// # Ok::<(), mqtt_topic::Error>(())
    /// ```
    pub fn new(topic: TopicBuf, payload: impl Into<Bytes>, qos: QoS) -> Self {
        Self {
            topic,
            payload: payload.into(),
            qos,
            retain: false,
            properties: None,
        }
    }

    /// The 5.0 properties (all absent for most messages).
    #[inline]
    pub fn properties(&self) -> &MessageProperties {
        self.properties.as_deref().unwrap_or(&NO_PROPERTIES)
    }

    /// The 5.0 properties to change; the first call on a message without any allocates
    /// their box.
    pub fn properties_mut(&mut self) -> &mut MessageProperties {
        self.properties.get_or_insert_with(Default::default)
    }

    /// Replaces the 5.0 properties; empty ones take no memory.
    pub fn set_properties(&mut self, properties: MessageProperties) {
        self.properties = (!properties.is_empty()).then(|| alloc::boxed::Box::new(properties));
    }

    /// The message with `properties` (see [`Message::set_properties`]).
    pub fn with_properties(mut self, properties: MessageProperties) -> Self {
        self.set_properties(properties);
        self
    }

    /// The same message in buffers of its own. A message kept for as long as a connection
    /// lives (a will) must not hold a view into the receive buffer, or the buffer could
    /// never reuse its memory.
    pub fn detached(&self) -> Self {
        Self {
            topic: TopicBuf::from(self.topic.as_topic_name()),
            payload: Bytes::copy_from_slice(&self.payload),
            qos: self.qos,
            retain: self.retain,
            properties: self
                .properties
                .as_ref()
                .map(|p| alloc::boxed::Box::new(p.detached())),
        }
    }

    /// Appends the message to `out` as one MQTT 5.0 PUBLISH packet (every property kept,
    /// packet identifier 1 when the QoS needs one): a stable, versioned form for storage
    /// that [`Message::from_stored`] reads back. The 5.0 encoding carries everything a
    /// message of any protocol level has.
    pub fn to_stored(&self, out: &mut alloc::vec::Vec<u8>) -> Result<(), Error> {
        let qos_pid =
            crate::conn::qos_pid(self.qos, mqtt_codec::PacketId::new(1).expect("1 is not 0"));
        let ids = &self.properties().subscription_identifiers;
        let p = self.to_publish(
            qos_pid,
            false,
            self.codec_topic(),
            None,
            self.properties().message_expiry_interval,
            ids.as_slice(),
        );
        Packet::Publish(p).encode_to(ProtocolVersion::V5, out)?;
        Ok(())
    }

    /// A message [`Message::to_stored`] wrote, sharing `frame`'s buffer; anything else
    /// (truncated, damaged, not a PUBLISH, bytes after it) is an error, never a panic.
    pub fn from_stored(frame: &Bytes) -> Result<Self, Error> {
        let opts = mqtt_codec::DecodeOptions::new(ProtocolVersion::V5);
        let (p, consumed) = match mqtt_codec::decode(frame, &opts)? {
            mqtt_codec::Status::Complete {
                packet: Packet::Publish(p),
                consumed,
            } => (p, consumed),
            _ => return Err(Error::InvalidState("a stored message is one PUBLISH")),
        };
        if consumed != frame.len() || p.properties.topic_alias.is_some() {
            return Err(Error::InvalidState("a stored message is one PUBLISH"));
        }
        let name = p
            .topic
            .name()
            .ok_or(Error::InvalidState("a stored message has a topic"))?;
        let topic = TopicBuf::slice_ref(frame, name);
        Ok(Self::from_publish(frame, &p, topic))
    }

    /// The message a decoded PUBLISH carries, sharing `frame` (the bytes it was decoded
    /// from). `topic` is the name after alias resolution.
    pub(crate) fn from_publish(frame: &Bytes, p: &Publish<'_>, topic: TopicBuf) -> Self {
        let pp = &p.properties;
        // A server sends one per matching subscription ([MQTT-3.3.4-4]): every one is
        // kept; more than four allocate, which a decoded packet bounds.
        let subscription_identifiers = pp.subscription_identifiers.iter().collect();
        let mut m = Self::new(topic, frame.slice_ref(p.payload), p.qos());
        m.retain = p.retain;
        // Boxed only when the PUBLISH carries any: most carry none, and then receiving
        // allocates nothing.
        m.set_properties(MessageProperties {
            payload_format_indicator: pp.payload_format_indicator,
            message_expiry_interval: pp.message_expiry_interval,
            content_type: pp.content_type.map(|s| Utf8Bytes::slice_of(frame, s)),
            response_topic: pp.response_topic.map(|s| Utf8Bytes::slice_of(frame, s)),
            correlation_data: pp.correlation_data.map(|b| frame.slice_ref(b)),
            user_block: pp
                .user_properties
                .wire_block()
                .map(|b| frame.slice_ref(b))
                .unwrap_or_default(),
            subscription_identifiers,
        });
        m
    }

    /// The PUBLISH that sends this message. `topic` and `alias` come from the sender's
    /// topic alias state (the message's checked topic, or empty with an alias); `expiry` is
    /// the remaining lifetime. Nothing is checked here: the topic was when the message was
    /// made, once for all its subscribers.
    pub(crate) fn to_publish<'a>(
        &'a self,
        qos_pid: QosPid,
        dup: bool,
        topic: Topic<'a>,
        alias: Option<core::num::NonZeroU16>,
        expiry: Option<u32>,
        sub_ids: &'a [SubscriptionId],
    ) -> Publish<'a> {
        let pp = self.properties();
        Publish {
            dup,
            qos_pid,
            retain: self.retain,
            topic,
            payload: &self.payload,
            properties: PublishProperties {
                payload_format_indicator: pp.payload_format_indicator,
                message_expiry_interval: expiry,
                topic_alias: alias,
                response_topic: pp.response_topic.as_ref().map(Utf8Bytes::as_str),
                correlation_data: pp.correlation_data.as_deref(),
                content_type: pp.content_type.as_ref().map(Utf8Bytes::as_str),
                user_properties: pp.user_properties(),
                subscription_identifiers: SubscriptionIds::new(sub_ids),
            },
        }
    }

    /// The message's topic as the codec takes it, without a check.
    #[inline]
    pub(crate) fn codec_topic(&self) -> Topic<'_> {
        self.topic.as_topic_name().into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec::Vec;

    #[test]
    fn a_stored_message_reads_back_whole() {
        let mut m = Message::new(
            TopicBuf::from_static("a/b").unwrap(),
            "payload",
            QoS::ExactlyOnce,
        );
        m.retain = true;
        let p = m.properties_mut();
        p.payload_format_indicator = Some(true);
        p.message_expiry_interval = Some(30);
        p.content_type = Some(Utf8Bytes::copy_of("text/plain"));
        p.response_topic = Some(Utf8Bytes::copy_of("re/ply"));
        p.correlation_data = Some(Bytes::from_static(b"\x00\x01"));
        p.set_user_properties(&[("k", "v"), ("k", "w")]).unwrap();
        let mut out = Vec::new();
        m.to_stored(&mut out).unwrap();
        let back = Message::from_stored(&Bytes::from(out.clone())).unwrap();
        // A decoded message keeps its user properties as the wire's property block, so
        // they compare as lists.
        let (a, b) = (back.properties(), m.properties());
        assert_eq!(
            a.user_properties().iter().collect::<Vec<_>>(),
            b.user_properties().iter().collect::<Vec<_>>()
        );
        let mut a = a.clone();
        a.set_user_properties(&[("k", "v"), ("k", "w")]).unwrap();
        assert_eq!(&a, b);
        assert_eq!(
            (back.topic.as_str(), &back.payload, back.qos, back.retain),
            (m.topic.as_str(), &m.payload, m.qos, m.retain)
        );
        // Anything short of the whole, or more, is refused, never a panic.
        for cut in 0..out.len() {
            assert!(Message::from_stored(&Bytes::copy_from_slice(&out[..cut])).is_err());
        }
        let mut longer = out.clone();
        longer.push(0);
        assert!(Message::from_stored(&Bytes::from(longer)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn stored_messages_round_trip(
            topic in "[a-z/]{1,20}",
            payload in proptest::collection::vec(proptest::num::u8::ANY, 0..300),
            qos in 0u8..3,
            retain: bool,
            expiry: Option<u32>,
        ) {
            let qos = QoS::try_from(qos).unwrap();
            let mut m = Message::new(TopicBuf::try_from(topic).unwrap(), payload, qos);
            m.retain = retain;
            m.properties_mut().message_expiry_interval = expiry;
            let mut out = Vec::new();
            m.to_stored(&mut out).unwrap();
            proptest::prop_assert_eq!(Message::from_stored(&Bytes::from(out)).unwrap(), m);
        }

        #[test]
        fn any_bytes_are_a_message_or_an_error(
            bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..64),
        ) {
            let _ = Message::from_stored(&Bytes::from(bytes));
        }
    }

    #[test]
    fn user_properties_round_trip_through_the_block() {
        let mut p = MessageProperties::default();
        assert!(p.user_properties().is_empty());
        p.set_user_properties(&[("a", "1"), ("a", "2")]).unwrap();
        assert_eq!(
            p.user_properties().iter().collect::<Vec<_>>(),
            [("a", "1"), ("a", "2")]
        );
        assert!(p.set_user_properties(&[("\0", "x")]).is_err());
    }
}
