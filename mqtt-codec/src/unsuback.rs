use crate::packet::Plan;
use crate::publish::packet_id;
use crate::reader::Reader;
use crate::suback::{ack_list_plan, ack_list_write};
use crate::writer::Sink;
use crate::{AckProperties, Error, List, PacketId, PacketType, ProtocolVersion, ReasonCode};

/// UNSUBACK. 5.0 carries one reason code per filter; before 5.0 it has no payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UnsubAck<'a> {
    /// The UNSUBSCRIBE's identifier.
    pub packet_id: PacketId,
    /// 5.0 properties.
    pub properties: AckProperties<'a>,
    /// 5.0 reason codes (empty before 5.0).
    pub reason_codes: List<'a, ReasonCode>,
}

impl<'a> UnsubAck<'a> {
    /// An UNSUBACK without properties.
    pub fn new(packet_id: PacketId, reason_codes: List<'a, ReasonCode>) -> Self {
        Self {
            packet_id,
            properties: AckProperties::default(),
            reason_codes,
        }
    }

    pub(crate) fn decode(r: &mut Reader<'a>, v: ProtocolVersion) -> Result<Self, Error> {
        let t = PacketType::UnsubAck;
        let packet_id = packet_id(r)?;
        if !v.is_v5() {
            r.finish()?;
            return Ok(Self::new(packet_id, List::new(&[])));
        }
        let properties = AckProperties::decode(r)?;
        let codes = r.rest();
        if codes.is_empty() {
            return Err(Error::EmptyPayload { packet: t });
        }
        // [MQTT-3.11.3-2] only listed codes.
        for &code in codes {
            if !ReasonCode::from_u8(code).is_some_and(|c| c.is_valid_for(t)) {
                return Err(Error::InvalidReasonCode { packet: t, code });
            }
        }
        Ok(Self {
            packet_id,
            properties,
            reason_codes: List::wire(codes),
        })
    }

    pub(crate) fn plan(&self, v: ProtocolVersion) -> Result<Plan, Error> {
        ack_list_plan(
            PacketType::UnsubAck,
            v,
            &self.properties,
            &self.reason_codes,
        )
    }

    pub(crate) fn write<S: Sink>(&self, v: ProtocolVersion, plan: &Plan, s: &mut S) {
        ack_list_write(
            self.packet_id,
            v,
            &self.properties,
            &self.reason_codes,
            plan,
            s,
        );
    }
}
