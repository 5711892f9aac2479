use crate::connect::check_response_topic;
use crate::packet::{from_client, require_v5, DecodeOptions, Plan};
use crate::properties::block_len;
use crate::reader::{topic_error, Reader};
use crate::writer::{field_len, Sink, SliceSink};
use crate::{varint, Error, PacketId, PacketType, ProtocolVersion, PublishProperties, QoS, QosPid};

/// PUBLISH: an application message.
///
/// ```
/// use mqtt_codec::{PacketId, Publish, QoS, QosPid};
/// let id = PacketId::new(7).unwrap();
/// let p = Publish::new("sensors/t1", b"21.5", QosPid::AtLeastOnce(id));
/// assert_eq!(p.qos(), QoS::AtLeastOnce);
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
    pub topic: &'a str,
    /// The payload.
    pub payload: &'a [u8],
    /// 5.0 properties.
    pub properties: PublishProperties<'a>,
}

impl<'a> Publish<'a> {
    /// A PUBLISH that is neither DUP nor retained and has no properties.
    pub fn new(topic: &'a str, payload: &'a [u8], qos_pid: QosPid) -> Self {
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
            r.topic_name()?
        };
        // The fixed header already refused QoS 3 and DUP on QoS 0.
        let qos_pid = match (flags >> 1) & 0x03 {
            0 => QosPid::AtMostOnce,
            // [MQTT-2.3.1-1] a non-zero identifier.
            1 => QosPid::AtLeastOnce(packet_id(r)?),
            _ => QosPid::ExactlyOnce(packet_id(r)?),
        };
        let properties = if v.is_v5() {
            let p = PublishProperties::decode(r)?;
            if topic.is_empty() && p.topic_alias.is_none() {
                return Err(Error::EmptyTopicWithoutAlias);
            }
            check_response_topic(p.response_topic, PacketType::Publish)?;
            // [MQTT-3.3.4-6] subscription identifiers travel from server to client only.
            if from_client(opts) && !p.subscription_identifiers.is_empty() {
                return Err(Error::SubscriptionIdFromClient);
            }
            p
        } else {
            PublishProperties::default()
        };
        Ok(Self {
            dup: flags & 0x08 != 0,
            qos_pid,
            retain: flags & 0x01 != 0,
            topic,
            payload: r.rest(),
            properties,
        })
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
        if self.topic.is_empty() && v.is_v5() && self.properties.topic_alias.is_some() {
            // A topic alias stands in for the name.
        } else {
            mqtt_topic::validate_name(self.topic)
                .map_err(|e| topic_error(e, t, Error::InvalidTopicName))?;
        }
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
        let plan = self.plan(v)?.checked()?;
        let total = plan.total();
        let header = total - plan.remaining;
        let Some(out) = out.get_mut(..total) else {
            return Err(Error::BufferTooSmall { required: total });
        };
        out[0] = (PacketType::Publish as u8) << 4 | self.flags();
        let mut len = [0; 4];
        varint::write(plan.remaining as u32, &mut len);
        out[1..header].copy_from_slice(&len[..header - 1]);
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

#[inline]
pub(crate) fn packet_id(r: &mut Reader<'_>) -> Result<PacketId, Error> {
    let packet = r.packet;
    PacketId::new(r.u16()?).ok_or(Error::ZeroPacketId { packet })
}
