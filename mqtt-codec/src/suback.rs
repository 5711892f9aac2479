use crate::packet::{require_v5, Plan};
use crate::properties::block_len;
use crate::publish::packet_id;
use crate::reader::Reader;
use crate::writer::Sink;
use crate::{AckProperties, Error, List, PacketId, PacketType, ProtocolVersion, ReasonCode};

/// SUBACK: one reason code per filter of the SUBSCRIBE, in order. Before 5.0 only
/// Granted QoS 0/1/2 and Unspecified error (0x80, "Failure") exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SubAck<'a> {
    /// The SUBSCRIBE's identifier.
    pub packet_id: PacketId,
    /// 5.0 properties.
    pub properties: AckProperties<'a>,
    /// The reason codes, at least one.
    pub reason_codes: List<'a, ReasonCode>,
}

impl<'a> SubAck<'a> {
    /// A SUBACK without properties.
    pub fn new(packet_id: PacketId, reason_codes: List<'a, ReasonCode>) -> Self {
        Self {
            packet_id,
            properties: AckProperties::default(),
            reason_codes,
        }
    }

    pub(crate) fn decode(r: &mut Reader<'a>, v: ProtocolVersion) -> Result<Self, Error> {
        let t = PacketType::SubAck;
        let packet_id = packet_id(r)?;
        let properties = if v.is_v5() {
            AckProperties::decode(r)?
        } else {
            AckProperties::default()
        };
        let codes = r.rest();
        if codes.is_empty() {
            return Err(Error::EmptyPayload { packet: t });
        }
        // [MQTT-3.9.3-2] only listed codes.
        for &code in codes {
            if !ReasonCode::from_u8(code).is_some_and(|c| c.is_valid_in(t, v)) {
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
        ack_list_plan(PacketType::SubAck, v, &self.properties, &self.reason_codes)
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

/// Plans SUBACK and UNSUBACK, which share their shape: identifier, properties, codes.
pub(crate) fn ack_list_plan(
    t: PacketType,
    v: ProtocolVersion,
    props: &AckProperties<'_>,
    codes: &List<'_, ReasonCode>,
) -> Result<Plan, Error> {
    require_v5(v, !props.is_empty(), "acknowledgement properties")?;
    let mut plan = Plan::default();
    let mut n = 2;
    if v.is_v5() {
        plan.props = props.body_len(t)?;
        n += block_len(plan.props);
    }
    // UNSUBACK has no payload before 5.0.
    if v.is_v5() || t == PacketType::SubAck {
        let mut count = 0;
        for c in codes.iter() {
            if !c.is_valid_in(t, v) {
                return Err(Error::InvalidReasonCode {
                    packet: t,
                    code: c as u8,
                });
            }
            count += 1;
        }
        if count == 0 {
            return Err(Error::EmptyPayload { packet: t });
        }
        n += count;
    } else {
        require_v5(v, !codes.is_empty(), "UNSUBACK reason codes")?;
    }
    plan.remaining = n;
    Ok(plan)
}

pub(crate) fn ack_list_write<S: Sink>(
    id: PacketId,
    v: ProtocolVersion,
    props: &AckProperties<'_>,
    codes: &List<'_, ReasonCode>,
    plan: &Plan,
    s: &mut S,
) {
    s.u16(id.get());
    if v.is_v5() {
        props.write(s, plan.props);
    }
    if plan.remaining > 2 + if v.is_v5() { block_len(plan.props) } else { 0 } {
        for c in codes.iter() {
            s.u8(c as u8);
        }
    }
}
