use crate::packet::{require_v5, Plan};
use crate::properties::block_len;
use crate::reader::Reader;
use crate::writer::Sink;
use crate::{ConnAckProperties, Error, PacketType, ProtocolVersion, ReasonCode};

/// CONNACK. Before 5.0 the return code (0 to 5) is carried as the [`ReasonCode`] of the
/// same meaning: 1 Unsupported Protocol Version, 2 Client Identifier not valid, 3 Server
/// unavailable, 4 Bad User Name or Password, 5 Not authorized.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnAck<'a> {
    /// Whether the server resumed a session.
    pub session_present: bool,
    /// The outcome.
    pub reason_code: ReasonCode,
    /// 5.0 properties.
    pub properties: ConnAckProperties<'a>,
}

impl<'a> ConnAck<'a> {
    /// A CONNACK with `reason_code` and no properties.
    pub fn new(session_present: bool, reason_code: ReasonCode) -> Self {
        Self {
            session_present,
            reason_code,
            properties: ConnAckProperties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader<'a>, v: ProtocolVersion) -> Result<Self, Error> {
        let flags = r.u8()?;
        // [MQTT-3.2.2-1] bits 7..1 of the acknowledge flags are reserved.
        if flags & 0xFE != 0 {
            return Err(Error::InvalidConnAckFlags { flags });
        }
        let code = r.u8()?;
        let invalid = Error::InvalidReasonCode {
            packet: PacketType::ConnAck,
            code,
        };
        let reason_code = if v.is_v5() {
            // [MQTT-3.2.2-8] the code comes from the CONNACK table.
            ReasonCode::from_u8(code)
                .filter(|c| c.is_valid_for(PacketType::ConnAck))
                .ok_or(invalid)?
        } else {
            ReasonCode::from_v3_connack(code).ok_or(invalid)?
        };
        let properties = if v.is_v5() {
            ConnAckProperties::decode(r)?
        } else {
            ConnAckProperties::default()
        };
        r.finish()?;
        Ok(Self {
            session_present: flags & 1 != 0,
            reason_code,
            properties,
        })
    }

    fn code_byte(&self, v: ProtocolVersion) -> Result<u8, Error> {
        let invalid = Error::InvalidReasonCode {
            packet: PacketType::ConnAck,
            code: self.reason_code as u8,
        };
        if v.is_v5() {
            if !self.reason_code.is_valid_for(PacketType::ConnAck) {
                return Err(invalid);
            }
            Ok(self.reason_code as u8)
        } else {
            self.reason_code.to_v3_connack().ok_or(invalid)
        }
    }

    pub(crate) fn plan(&self, v: ProtocolVersion) -> Result<Plan, Error> {
        self.code_byte(v)?;
        require_v5(v, !self.properties.is_empty(), "CONNACK properties")?;
        let mut plan = Plan {
            remaining: 2,
            ..Plan::default()
        };
        if v.is_v5() {
            plan.props = self.properties.body_len(PacketType::ConnAck)?;
            plan.remaining += block_len(plan.props);
        }
        Ok(plan)
    }

    pub(crate) fn write<S: Sink>(&self, v: ProtocolVersion, plan: &Plan, s: &mut S) {
        s.u8(self.session_present as u8);
        // Checked by `plan`.
        s.u8(self.code_byte(v).unwrap_or(0x80));
        if v.is_v5() {
            self.properties.write(s, plan.props);
        }
    }
}
