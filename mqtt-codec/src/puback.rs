use crate::packet::{require_v5, Plan};
use crate::properties::block_len;
use crate::publish::packet_id;
use crate::reader::Reader;
use crate::writer::Sink;
use crate::{AckProperties, Error, PacketId, PacketType, ProtocolVersion, ReasonCode};

/// PUBACK, PUBREC, PUBREL and PUBCOMP: one shape, told apart by the [`Packet`](crate::Packet)
/// variant that holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PubAck<'a> {
    /// The identifier of the PUBLISH (or PUBREL) acknowledged.
    pub packet_id: PacketId,
    /// The outcome (5.0; always Success before).
    pub reason_code: ReasonCode,
    /// 5.0 properties.
    pub properties: AckProperties<'a>,
}

impl<'a> PubAck<'a> {
    /// A successful acknowledgement without properties.
    pub fn new(packet_id: PacketId) -> Self {
        Self {
            packet_id,
            reason_code: ReasonCode::Success,
            properties: AckProperties::default(),
        }
    }

    #[inline]
    pub(crate) fn decode(r: &mut Reader<'a>, v: ProtocolVersion) -> Result<Self, Error> {
        let packet_id = packet_id(r)?;
        // The common case, and all of 3.1.1: an identifier alone.
        if r.is_empty() {
            return Ok(Self::new(packet_id));
        }
        let mut ack = Self::new(packet_id);
        // 5.0: remaining length 2 means Success and no properties, 3 a code and no properties.
        if v.is_v5() && !r.is_empty() {
            let code = r.u8()?;
            // [MQTT-3.4.2-1] [MQTT-3.5.2-1] [MQTT-3.6.2-1] [MQTT-3.7.2-1]
            ack.reason_code = ReasonCode::from_u8(code)
                .filter(|c| c.is_valid_for(r.packet))
                .ok_or(Error::InvalidReasonCode {
                    packet: r.packet,
                    code,
                })?;
            if !r.is_empty() {
                ack.properties = AckProperties::decode(r)?;
            }
        }
        r.finish()?;
        Ok(ack)
    }

    pub(crate) fn plan(&self, t: PacketType, v: ProtocolVersion) -> Result<Plan, Error> {
        if !self.reason_code.is_valid_in(t, v) {
            return Err(if v.is_v5() {
                Error::InvalidReasonCode {
                    packet: t,
                    code: self.reason_code as u8,
                }
            } else {
                Error::NotInVersion {
                    field: "acknowledgement reason codes",
                    version: v,
                }
            });
        }
        require_v5(v, !self.properties.is_empty(), "acknowledgement properties")?;
        let mut plan = Plan {
            remaining: 2,
            ..Plan::default()
        };
        if v.is_v5() {
            plan.props = self.properties.body_len(t)?;
            // The short forms: omit what is default.
            if plan.props > 0 {
                plan.remaining += 1 + block_len(plan.props);
            } else if self.reason_code != ReasonCode::Success {
                plan.remaining += 1;
            }
        }
        Ok(plan)
    }

    pub(crate) fn write<S: Sink>(&self, _v: ProtocolVersion, plan: &Plan, s: &mut S) {
        s.u16(self.packet_id.get());
        if plan.remaining > 2 {
            s.u8(self.reason_code as u8);
        }
        if plan.remaining > 3 {
            self.properties.write(s, plan.props);
        }
    }
}
