use crate::packet::{require_v5, DecodeOptions, Plan};
use crate::properties::block_len;
use crate::reader::Reader;
use crate::writer::Sink;
use crate::{DisconnectProperties, Error, PacketType, ProtocolVersion, ReasonCode, Sender};

/// DISCONNECT. Before 5.0 it is empty and only a client sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Disconnect<'a> {
    /// Why (5.0); Success is "Normal disconnection".
    pub reason_code: ReasonCode,
    /// 5.0 properties.
    pub properties: DisconnectProperties<'a>,
}

impl<'a> Disconnect<'a> {
    /// A DISCONNECT with `reason_code` and no properties.
    pub fn new(reason_code: ReasonCode) -> Self {
        Self {
            reason_code,
            properties: DisconnectProperties::default(),
        }
    }

    pub(crate) fn decode(r: &mut Reader<'a>, opts: &DecodeOptions) -> Result<Self, Error> {
        let t = PacketType::Disconnect;
        let mut d = Self::default();
        if opts.version.is_v5() && !r.is_empty() {
            let code = r.u8()?;
            // [MQTT-3.14.2-1]
            d.reason_code = ReasonCode::from_u8(code)
                .filter(|c| c.is_valid_for(t))
                .ok_or(Error::InvalidReasonCode { packet: t, code })?;
            if !r.is_empty() {
                d.properties = DisconnectProperties::decode(r)?;
            }
            // [MQTT-3.14.2-2] a server never sends Session Expiry Interval.
            if opts.sender == Sender::Server && d.properties.session_expiry_interval.is_some() {
                return Err(Error::SessionExpiryFromServer);
            }
        }
        r.finish()?;
        Ok(d)
    }

    pub(crate) fn plan(&self, v: ProtocolVersion) -> Result<Plan, Error> {
        let t = PacketType::Disconnect;
        require_v5(v, !self.properties.is_empty(), "DISCONNECT properties")?;
        require_v5(
            v,
            self.reason_code != ReasonCode::Success,
            "DISCONNECT reason codes",
        )?;
        if !self.reason_code.is_valid_for(t) {
            return Err(Error::InvalidReasonCode {
                packet: t,
                code: self.reason_code as u8,
            });
        }
        let mut plan = Plan::default();
        if v.is_v5() {
            plan.props = self.properties.body_len(t)?;
            if plan.props > 0 {
                plan.remaining = 1 + block_len(plan.props);
            } else if self.reason_code != ReasonCode::Success {
                plan.remaining = 1;
            }
        }
        Ok(plan)
    }

    pub(crate) fn write<S: Sink>(&self, _v: ProtocolVersion, plan: &Plan, s: &mut S) {
        if plan.remaining > 0 {
            s.u8(self.reason_code as u8);
        }
        if plan.remaining > 1 {
            self.properties.write(s, plan.props);
        }
    }
}
