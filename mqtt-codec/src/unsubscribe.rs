use crate::packet::{require_v5, Plan};
use crate::properties::block_len;
use crate::publish::packet_id;
use crate::reader::{topic_error, Reader};
use crate::writer::{string_len, Sink};
use crate::{Error, List, PacketId, PacketType, ProtocolVersion, UnsubscribeProperties};

/// UNSUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Unsubscribe<'a> {
    /// The packet identifier.
    pub packet_id: PacketId,
    /// 5.0 properties.
    pub properties: UnsubscribeProperties<'a>,
    /// The filters, at least one.
    pub filters: List<'a, &'a str>,
}

impl<'a> Unsubscribe<'a> {
    /// An UNSUBSCRIBE without properties.
    pub fn new(packet_id: PacketId, filters: List<'a, &'a str>) -> Self {
        Self {
            packet_id,
            properties: UnsubscribeProperties::default(),
            filters,
        }
    }

    pub(crate) fn decode(r: &mut Reader<'a>, v: ProtocolVersion) -> Result<Self, Error> {
        let packet_id = packet_id(r)?;
        let properties = if v.is_v5() {
            UnsubscribeProperties::decode(r)?
        } else {
            UnsubscribeProperties::default()
        };
        let payload = r.clone().rest();
        // [MQTT-3.10.3-2] at least one filter.
        if r.is_empty() {
            return Err(Error::EmptyPayload {
                packet: PacketType::Unsubscribe,
            });
        }
        while !r.is_empty() {
            // [MQTT-3.10.3-1] UTF-8 strings, and valid filters.
            r.topic_filter()?;
        }
        Ok(Self {
            packet_id,
            properties,
            filters: List::wire(payload),
        })
    }

    pub(crate) fn plan(&self, v: ProtocolVersion) -> Result<Plan, Error> {
        let t = PacketType::Unsubscribe;
        require_v5(v, !self.properties.is_empty(), "UNSUBSCRIBE properties")?;
        let mut plan = Plan::default();
        let mut n = 2;
        if v.is_v5() {
            plan.props = self.properties.body_len(t)?;
            n += block_len(plan.props);
        }
        let mut any = false;
        for f in self.filters.iter() {
            mqtt_topic::validate_filter(f)
                .map_err(|e| topic_error(e, t, Error::InvalidTopicFilter))?;
            n += string_len(f, t)?;
            any = true;
        }
        if !any {
            return Err(Error::EmptyPayload { packet: t });
        }
        plan.remaining = n;
        Ok(plan)
    }

    pub(crate) fn write<S: Sink>(&self, v: ProtocolVersion, plan: &Plan, s: &mut S) {
        s.u16(self.packet_id.get());
        if v.is_v5() {
            self.properties.write(s, plan.props);
        }
        for f in self.filters.iter() {
            s.binary(f.as_bytes());
        }
    }
}
