use crate::packet::Plan;
use crate::properties::block_len;
use crate::reader::Reader;
use crate::writer::Sink;
use crate::{AuthProperties, Error, PacketType, ReasonCode};

/// AUTH (5.0 only): a step of enhanced authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Auth<'a> {
    /// Success, Continue authentication or Re-authenticate.
    pub reason_code: ReasonCode,
    /// Properties: method, data, reason string, user properties.
    pub properties: AuthProperties<'a>,
}

impl<'a> Auth<'a> {
    pub(crate) fn decode(r: &mut Reader<'a>) -> Result<Self, Error> {
        let t = PacketType::Auth;
        let mut a = Self::default();
        // Remaining length 0 means Success with no properties.
        if !r.is_empty() {
            let code = r.u8()?;
            // [MQTT-3.15.2-1]
            a.reason_code = ReasonCode::from_u8(code)
                .filter(|c| c.is_valid_for(t))
                .ok_or(Error::InvalidReasonCode { packet: t, code })?;
            if !r.is_empty() {
                a.properties = AuthProperties::decode(r)?;
            }
        }
        r.finish()?;
        Ok(a)
    }

    pub(crate) fn plan(&self) -> Result<Plan, Error> {
        let t = PacketType::Auth;
        if !self.reason_code.is_valid_for(t) {
            return Err(Error::InvalidReasonCode {
                packet: t,
                code: self.reason_code as u8,
            });
        }
        let mut plan = Plan {
            props: self.properties.body_len(t)?,
            ..Plan::default()
        };
        if plan.props > 0 {
            plan.remaining = 1 + block_len(plan.props);
        } else if self.reason_code != ReasonCode::Success {
            plan.remaining = 1;
        }
        Ok(plan)
    }

    pub(crate) fn write<S: Sink>(&self, plan: &Plan, s: &mut S) {
        if plan.remaining > 0 {
            s.u8(self.reason_code as u8);
        }
        if plan.remaining > 1 {
            self.properties.write(s, plan.props);
        }
    }
}
