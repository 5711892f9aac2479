use crate::connect::check_response_topic;
use crate::packet::{from_client, require_v5, DecodeOptions, Plan};
use crate::properties::block_len;
use crate::reader::{topic_error, Reader};
use crate::writer::{field_len, Sink, SliceSink};
use crate::{varint, Error, PacketId, PacketType, ProtocolVersion, PublishProperties, QoS, QosPid};
use mqtt_topic::TopicName;

/// The Topic Name of a PUBLISH, checked when it is made: a valid topic name
/// ([`mqtt_topic::validate_name`]: no wildcard, no U+0000, at most 65,535 bytes) or, for
/// 5.0 with a Topic Alias, empty.
///
/// Decoding makes one from the bytes it has just checked, and encoding trusts it: a broker
/// that forwards one message to many subscribers checks its topic once, not once per copy.
/// A non-empty one is an [`mqtt_topic::TopicName`] ([`Topic::name`]), so the check travels
/// on with the name: into an owned `mqtt_topic::TopicBuf`, and back from one
/// (`From<TopicName>`) without another scan.
/// Whether an empty topic is allowed depends on the packet (5.0 and a Topic Alias) and is
/// checked when the PUBLISH is encoded.
///
/// ```
/// use mqtt_codec::Topic;
/// let t = Topic::new("sensors/t1")?;
/// assert_eq!(t, "sensors/t1");
/// assert!(Topic::new("sensors/+").is_err());
/// # Ok::<(), mqtt_codec::Error>(())
/// ```
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Topic<'a>(
    /// `None`: the empty topic.
    Option<TopicName<'a>>,
);

impl<'a> Topic<'a> {
    /// Checks `name` ([MQTT-3.3.2-2] no wildcards, [MQTT-4.7.3-2] no U+0000, at most
    /// 65,535 bytes); the empty string is accepted, for a 5.0 Topic Alias.
    pub fn new(name: &'a str) -> Result<Self, Error> {
        if name.is_empty() {
            return Ok(Self::EMPTY);
        }
        TopicName::new(name)
            .map(|n| Self(Some(n)))
            .map_err(|e| topic_error(e, PacketType::Publish, Error::InvalidTopicName))
    }

    /// The empty topic of a 5.0 PUBLISH whose Topic Alias stands for the name.
    pub const EMPTY: Topic<'static> = Topic(None);

    /// A name the decoder has just checked (`None`: empty).
    #[inline]
    pub(crate) fn checked(name: Option<TopicName<'a>>) -> Self {
        Self(name)
    }

    /// The name, unless the topic is empty: checked already, so a message that keeps it
    /// (as a `TopicBuf`) need not check it again.
    #[inline]
    pub fn name(&self) -> Option<TopicName<'a>> {
        self.0
    }

    /// The name as a string slice.
    #[inline]
    pub fn as_str(&self) -> &'a str {
        match self.0 {
            Some(name) => name.as_str(),
            None => "",
        }
    }
}

impl<'a> From<TopicName<'a>> for Topic<'a> {
    /// No check: a `TopicName` is valid.
    #[inline]
    fn from(name: TopicName<'a>) -> Self {
        Self(Some(name))
    }
}

impl<'a> TryFrom<&'a str> for Topic<'a> {
    type Error = Error;
    fn try_from(name: &'a str) -> Result<Self, Error> {
        Self::new(name)
    }
}

impl core::ops::Deref for Topic<'_> {
    type Target = str;
    #[inline]
    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Topic<'_> {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl PartialEq<str> for Topic<'_> {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Topic<'_> {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

impl core::fmt::Debug for Topic<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

impl core::fmt::Display for Topic<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// PUBLISH: an application message.
///
/// ```
/// use mqtt_codec::{PacketId, Publish, QoS, QosPid, Topic};
/// let id = PacketId::new(7).unwrap();
/// let p = Publish::new(Topic::new("sensors/t1")?, b"21.5", QosPid::AtLeastOnce(id));
/// assert_eq!(p.qos(), QoS::AtLeastOnce);
/// # Ok::<(), mqtt_codec::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish<'a> {
    /// A re-delivery of an earlier attempt (QoS > 0 only).
    pub dup: bool,
    /// QoS and, above 0, the packet identifier.
    pub qos_pid: QosPid,
    /// Whether the server retains it.
    pub retain: bool,
    /// The topic name; empty only in 5.0 with a topic alias.
    pub topic: Topic<'a>,
    /// The payload.
    pub payload: &'a [u8],
    /// 5.0 properties.
    pub properties: PublishProperties<'a>,
}

impl<'a> Publish<'a> {
    /// A PUBLISH that is neither DUP nor retained and has no properties.
    pub fn new(topic: Topic<'a>, payload: &'a [u8], qos_pid: QosPid) -> Self {
        Self {
            dup: false,
            qos_pid,
            retain: false,
            topic,
            payload,
            properties: PublishProperties::default(),
        }
    }

    /// The QoS.
    #[inline]
    pub fn qos(&self) -> QoS {
        self.qos_pid.qos()
    }

    /// The packet identifier (QoS > 0).
    #[inline]
    pub fn packet_id(&self) -> Option<PacketId> {
        self.qos_pid.packet_id()
    }

    #[inline]
    pub(crate) fn flags(&self) -> u8 {
        (self.dup as u8) << 3 | (self.qos() as u8) << 1 | self.retain as u8
    }

    #[inline]
    pub(crate) fn decode(
        flags: u8,
        r: &mut Reader<'a>,
        opts: &DecodeOptions,
    ) -> Result<Self, Error> {
        let v = opts.version;
        // [MQTT-3.3.2-1] the topic name comes first and is a UTF-8 string.
        // [MQTT-3.3.2-2] no wildcards, via mqtt-topic. In 5.0 an empty name is legal with
        // a topic alias, checked below.
        let topic = if v.is_v5() {
            r.topic_name_or_empty()?
        } else {
            Some(r.topic_name()?)
        };
        // The fixed header already refused QoS 3 and DUP on QoS 0.
        let qos_pid = match (flags >> 1) & 0x03 {
            0 => QosPid::AtMostOnce,
            // [MQTT-2.3.1-1] a non-zero identifier.
            1 => QosPid::AtLeastOnce(packet_id(r)?),
            _ => QosPid::ExactlyOnce(packet_id(r)?),
        };
        let mut publish = Self {
            dup: flags & 0x08 != 0,
            qos_pid,
            retain: flags & 0x01 != 0,
            topic: Topic::checked(topic),
            payload: &[],
            properties: PublishProperties::default(),
        };
        if v.is_v5() {
            let p = &mut publish.properties;
            p.decode_into(r)?;
            if topic.is_none() && p.topic_alias.is_none() {
                return Err(Error::EmptyTopicWithoutAlias);
            }
            check_response_topic(p.response_topic, PacketType::Publish)?;
            // [MQTT-3.3.4-6] subscription identifiers travel from server to client only.
            if from_client(opts) && !p.subscription_identifiers.is_empty() {
                return Err(Error::SubscriptionIdFromClient);
            }
        }
        publish.payload = r.rest();
        Ok(publish)
    }

    pub(crate) fn plan(&self, v: ProtocolVersion) -> Result<Plan, Error> {
        let t = PacketType::Publish;
        // [MQTT-3.3.1-2]
        if self.dup && self.qos() == QoS::AtMostOnce {
            return Err(Error::DupWithQoS0);
        }
        if !v.is_v5() {
            require_v5(v, !self.properties.is_empty(), "PUBLISH properties")?;
        }
        check_empty_topic(self, v)?;
        let mut plan = Plan::default();
        let mut n = field_len(self.topic.as_bytes())? + self.payload.len();
        if self.packet_id().is_some() {
            n += 2;
        }
        if v.is_v5() {
            check_response_topic(self.properties.response_topic, t)?;
            plan.props = self.properties.body_len(t)?;
            n += block_len(plan.props);
        }
        plan.remaining = n;
        Ok(plan)
    }

    /// [`Packet::encode`](crate::Packet::encode) for a PUBLISH: the same checks, written
    /// straight into the slice.
    #[inline]
    pub(crate) fn encode(&self, v: ProtocolVersion, out: &mut [u8]) -> Result<usize, Error> {
        if self.properties.is_empty() {
            return self.encode_bare(v, out);
        }
        self.encode_planned(v, out)
    }

    /// A PUBLISH without properties, the usual one: the checks of `plan` that apply to it
    /// (the topic was checked when it was made), then the bytes, with no property sizing.
    #[inline(always)]
    fn encode_bare(&self, v: ProtocolVersion, out: &mut [u8]) -> Result<usize, Error> {
        // [MQTT-3.3.1-2]
        if self.dup && self.qos() == QoS::AtMostOnce {
            return Err(Error::DupWithQoS0);
        }
        check_empty_topic(self, v)?;
        let topic = self.topic.as_bytes();
        let id = self.packet_id();
        // The topic, the identifier, a zero Property Length in 5.0, the payload.
        // A `Topic` is at most 65,535 bytes (checked when it was made), so its length
        // prefix cannot overflow.
        let remaining = 2
            + topic.len()
            + if id.is_some() { 2 } else { 0 }
            + usize::from(v.is_v5())
            + self.payload.len();
        let plan = Plan {
            remaining,
            ..Plan::default()
        }
        .checked()?;
        let total = plan.total();
        let Some(out) = out.get_mut(..total) else {
            return Err(Error::BufferTooSmall { required: total });
        };
        let header = total - remaining;
        out[0] = (PacketType::Publish as u8) << 4 | self.flags();
        varint::write_exact(remaining as u32, &mut out[1..header]);
        let (head, rest) = out[header..].split_at_mut(2 + topic.len());
        head[..2].copy_from_slice(&(topic.len() as u16).to_be_bytes());
        head[2..].copy_from_slice(topic);
        let mut at = 0;
        if let Some(id) = id {
            rest[..2].copy_from_slice(&id.get().to_be_bytes());
            at = 2;
        }
        if v.is_v5() {
            rest[at] = 0;
            at += 1;
        }
        rest[at..].copy_from_slice(self.payload);
        Ok(total)
    }

    #[inline(never)]
    fn encode_planned(&self, v: ProtocolVersion, out: &mut [u8]) -> Result<usize, Error> {
        let plan = self.plan(v)?.checked()?;
        let total = plan.total();
        let header = total - plan.remaining;
        let Some(out) = out.get_mut(..total) else {
            return Err(Error::BufferTooSmall { required: total });
        };
        out[0] = (PacketType::Publish as u8) << 4 | self.flags();
        varint::write_exact(plan.remaining as u32, &mut out[1..header]);
        let topic = self.topic.as_bytes();
        let (head, rest) = out[header..].split_at_mut(2 + topic.len());
        head[..2].copy_from_slice(&(topic.len() as u16).to_be_bytes());
        head[2..].copy_from_slice(topic);
        let rest = match self.packet_id() {
            Some(id) => {
                rest[..2].copy_from_slice(&id.get().to_be_bytes());
                &mut rest[2..]
            }
            None => rest,
        };
        let at = if v.is_v5() {
            let mut s = SliceSink { buf: rest, pos: 0 };
            self.properties.write(&mut s, plan.props);
            s.pos
        } else {
            0
        };
        rest[at..].copy_from_slice(self.payload);
        Ok(total)
    }

    #[inline]
    pub(crate) fn write<S: Sink>(&self, v: ProtocolVersion, plan: &Plan, s: &mut S) {
        s.binary(self.topic.as_bytes());
        if let Some(id) = self.packet_id() {
            s.u16(id.get());
        }
        if v.is_v5() {
            self.properties.write(s, plan.props);
        }
        s.put(self.payload);
    }
}

/// An empty topic needs 5.0 and a Topic Alias to stand for it ([MQTT-3.3.2-1] otherwise
/// a topic name is required); every other topic was checked when its [`Topic`] was made.
#[inline]
fn check_empty_topic(p: &Publish<'_>, v: ProtocolVersion) -> Result<(), Error> {
    if p.topic.is_empty() && !(v.is_v5() && p.properties.topic_alias.is_some()) {
        return Err(Error::InvalidTopicName(mqtt_topic::Error::Empty));
    }
    Ok(())
}

#[inline]
pub(crate) fn packet_id(r: &mut Reader<'_>) -> Result<PacketId, Error> {
    let packet = r.packet;
    PacketId::new(r.u16()?).ok_or(Error::ZeroPacketId { packet })
}
