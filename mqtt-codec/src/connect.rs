use crate::packet::{require_v5, Plan};
use crate::properties::block_len;
use crate::reader::{topic_error, Reader};
use crate::writer::{field_len, string_len, Sink};
use crate::{ConnectProperties, Error, PacketType, ProtocolVersion, QoS, WillProperties};

/// CONNECT: the first packet a client sends.
///
/// ```
/// use mqtt_codec::{Connect, Packet, ProtocolVersion};
/// let mut c = Connect::new(ProtocolVersion::V5, "sensor-17");
/// c.keep_alive = 30;
/// let bytes = Packet::Connect(c).encode_to_vec(ProtocolVersion::V5)?;
/// assert_eq!(&bytes[2..8], b"\x00\x04MQTT");
/// # Ok::<(), mqtt_codec::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Connect<'a> {
    /// The level the client speaks; CONNECT is always decoded under its own level.
    pub protocol: ProtocolVersion,
    /// Clean Start (5.0) / Clean Session (3.1.1).
    pub clean_start: bool,
    /// Keep alive in seconds; 0 turns it off.
    pub keep_alive: u16,
    /// The client identifier (may be empty: the server then assigns one, if it allows).
    pub client_id: &'a str,
    /// The will message.
    pub will: Option<Will<'a>>,
    /// The user name.
    pub username: Option<&'a str>,
    /// The password (binary).
    pub password: Option<&'a [u8]>,
    /// 5.0 properties.
    pub properties: ConnectProperties<'a>,
    /// mosquitto's bridge extension, not in any MQTT standard: a 3.1 / 3.1.1 CONNECT whose
    /// protocol level has its top bit set (`0x83` / `0x84`) comes from a broker bridging to
    /// this one. mosquitto bridges send it by default (`try_private true`) so that the
    /// remote broker neither sends back what the bridge published (a loop with
    /// `topic # both`) nor clears the retain flag of what it forwards: 3.1.1 has no No Local
    /// or Retain As Published to ask for that. A server that does not know the extension
    /// refuses the level ([MQTT-3.1.2-2]), and the bridge then retries without the bit.
    /// Never set at 5.0 (a mosquitto 5.0 bridge sends level 5 and uses the subscription
    /// options instead); encoding it there is an error.
    pub bridge: bool,
}

/// The will message carried in CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Will<'a> {
    /// Topic name ([MQTT-3.1.3-11] a valid name).
    pub topic: &'a str,
    /// Payload.
    pub payload: &'a [u8],
    /// QoS.
    pub qos: QoS,
    /// Whether it is retained.
    pub retain: bool,
    /// 5.0 will properties.
    pub properties: WillProperties<'a>,
}

impl<'a> Will<'a> {
    /// A will at QoS 0, not retained, without properties.
    pub fn new(topic: &'a str, payload: &'a [u8]) -> Self {
        Self {
            topic,
            payload,
            qos: QoS::AtMostOnce,
            retain: false,
            properties: WillProperties::default(),
        }
    }
}

const RESERVED: u8 = 0x01;
const CLEAN: u8 = 0x02;
const WILL: u8 = 0x04;
const WILL_RETAIN: u8 = 0x20;
const PASSWORD: u8 = 0x40;
const USERNAME: u8 = 0x80;
/// The bit mosquitto's bridges set in the protocol level (see [`Connect::bridge`]).
const BRIDGE_LEVEL: u8 = 0x80;

impl<'a> Connect<'a> {
    /// A clean-start CONNECT with no will, credentials or properties, keep alive 60 s.
    pub fn new(protocol: ProtocolVersion, client_id: &'a str) -> Self {
        Self {
            protocol,
            clean_start: true,
            keep_alive: 60,
            client_id,
            will: None,
            username: None,
            password: None,
            properties: ConnectProperties::default(),
            bridge: false,
        }
    }

    // Inlined so the large result is built in the caller's `Packet` instead of being copied
    // into it (callgrind: 86 + 55 instructions of moves for a CONNECT with a will).
    #[inline]
    pub(crate) fn decode(r: &mut Reader<'a>) -> Result<Self, Error> {
        let name = r.binary()?;
        let level = r.u8()?;
        // [MQTT-3.1.2-1] the name must match the level's; an unknown level is answered with
        // CONNACK 0x84 / return code 1 by the session, which sees the error's reason code
        // ([MQTT-3.1.2-2]). 0x83 / 0x84 are mosquitto's bridge extension, accepted; 0x85 is
        // not (mosquitto's own 5.0 bridges send 5), so it stays an unknown level.
        let bridge = level & BRIDGE_LEVEL != 0;
        let protocol = match (name, level & !BRIDGE_LEVEL) {
            (b"MQIsdp", 3) => ProtocolVersion::V3_1,
            (b"MQTT", 4) => ProtocolVersion::V3_1_1,
            (b"MQTT", 5) if !bridge => ProtocolVersion::V5,
            (b"MQTT" | b"MQIsdp", _) => return Err(Error::UnsupportedProtocolVersion { level }),
            _ => return Err(Error::InvalidProtocolName),
        };
        let flags = r.u8()?;
        // [MQTT-3.1.2-3] the reserved flag is 0.
        if flags & RESERVED != 0 {
            return Err(Error::ConnectReservedFlag);
        }
        let will_flag = flags & WILL != 0;
        let will_qos = (flags >> 3) & 0x03;
        let will_retain = flags & WILL_RETAIN != 0;
        // [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15] (3.1.1): no will, no will QoS or retain.
        if !will_flag && (will_qos != 0 || will_retain) {
            return Err(Error::WillFlagsWithoutWill);
        }
        // [MQTT-3.1.2-14] (3.1.1) / [MQTT-3.1.2-12] (5.0): will QoS 3 is malformed.
        let will_qos = QoS::try_from(will_qos)?;
        let has_username = flags & USERNAME != 0;
        let has_password = flags & PASSWORD != 0;
        // [MQTT-3.1.2-22] before 5.0 a password needs a user name.
        if !protocol.is_v5() && has_password && !has_username {
            return Err(Error::PasswordWithoutUsername);
        }
        let keep_alive = r.u16()?;
        let properties = if protocol.is_v5() {
            ConnectProperties::decode(r)?
        } else {
            ConnectProperties::default()
        };
        // [MQTT-3.1.3-1] payload order: client id, will, user name, password.
        // [MQTT-3.1.3-3] [MQTT-3.1.3-4] the client id comes first and is a UTF-8 string.
        let client_id = r.string()?;
        // [MQTT-3.1.2-9] a will flag means will properties, topic and payload are present.
        let will = if will_flag {
            let properties = if protocol.is_v5() {
                WillProperties::decode(r)?
            } else {
                WillProperties::default()
            };
            // [MQTT-3.1.3-10] (3.1.1) / [MQTT-3.1.3-11] (5.0) the will topic is a UTF-8 string.
            let topic = r.topic_name()?.as_str();
            check_response_topic(properties.response_topic, PacketType::Connect)?;
            let payload = r.binary()?;
            Some(Will {
                topic,
                payload,
                qos: will_qos,
                retain: will_retain,
                properties,
            })
        } else {
            None
        };
        // [MQTT-3.1.2-19] [MQTT-3.1.2-17] user name present exactly when flagged;
        // [MQTT-3.1.3-11] (3.1.1) / [MQTT-3.1.3-12] (5.0) a UTF-8 string.
        let username = if has_username {
            Some(r.string()?)
        } else {
            None
        };
        // [MQTT-3.1.2-21] [MQTT-3.1.2-19] password present exactly when flagged.
        let password = if has_password {
            Some(r.binary()?)
        } else {
            None
        };
        // [MQTT-3.1.2-18] [MQTT-3.1.2-20] (3.1.1) / [MQTT-3.1.2-16] [MQTT-3.1.2-18] (5.0):
        // nothing may follow the fields the flags announce.
        r.finish()?;
        Ok(Self {
            protocol,
            clean_start: flags & CLEAN != 0,
            keep_alive,
            client_id,
            will,
            username,
            password,
            properties,
            bridge,
        })
    }

    pub(crate) fn plan(&self) -> Result<Plan, Error> {
        let v = self.protocol;
        let t = PacketType::Connect;
        if !v.is_v5() && self.password.is_some() && self.username.is_none() {
            return Err(Error::PasswordWithoutUsername);
        }
        require_v5(v, !self.properties.is_empty(), "CONNECT properties")?;
        if self.bridge && v.is_v5() {
            return Err(Error::NotInVersion {
                field: "bridge flag",
                version: v,
            });
        }
        let mut plan = Plan::default();
        let mut n = 2 + v.protocol_name().len() + 1 + 1 + 2;
        if v.is_v5() {
            plan.props = self.properties.body_len(t)?;
            n += block_len(plan.props);
        }
        n += string_len(self.client_id, t)?;
        if let Some(w) = &self.will {
            require_v5(v, !w.properties.is_empty(), "will properties")?;
            mqtt_topic::validate_name(w.topic)
                .map_err(|e| topic_error(e, t, Error::InvalidTopicName))?;
            check_response_topic(w.properties.response_topic, t)?;
            if v.is_v5() {
                plan.will_props = w.properties.body_len(t)?;
                n += block_len(plan.will_props);
            }
            n += field_len(w.topic.as_bytes())? + field_len(w.payload)?;
        }
        if let Some(u) = self.username {
            n += string_len(u, t)?;
        }
        if let Some(p) = self.password {
            n += field_len(p)?;
        }
        plan.remaining = n;
        Ok(plan)
    }

    fn flags(&self) -> u8 {
        let mut f = 0;
        if self.clean_start {
            f |= CLEAN;
        }
        if let Some(w) = &self.will {
            f |= WILL | (w.qos as u8) << 3;
            if w.retain {
                f |= WILL_RETAIN;
            }
        }
        if self.username.is_some() {
            f |= USERNAME;
        }
        if self.password.is_some() {
            f |= PASSWORD;
        }
        f
    }

    pub(crate) fn write<S: Sink>(&self, plan: &Plan, s: &mut S) {
        let v = self.protocol;
        s.binary(v.protocol_name().as_bytes());
        s.u8(v as u8 | if self.bridge { BRIDGE_LEVEL } else { 0 });
        s.u8(self.flags());
        s.u16(self.keep_alive);
        if v.is_v5() {
            self.properties.write(s, plan.props);
        }
        s.binary(self.client_id.as_bytes());
        if let Some(w) = &self.will {
            if v.is_v5() {
                w.properties.write(s, plan.will_props);
            }
            s.binary(w.topic.as_bytes());
            s.binary(w.payload);
        }
        if let Some(u) = self.username {
            s.binary(u.as_bytes());
        }
        if let Some(p) = self.password {
            s.binary(p);
        }
    }
}

/// [MQTT-3.3.2-14] a Response Topic is a topic name: no wildcards.
#[inline]
pub(crate) fn check_response_topic(topic: Option<&str>, packet: PacketType) -> Result<(), Error> {
    match topic {
        Some(t) => mqtt_topic::validate_name(t)
            .map_err(|e| topic_error(e, packet, Error::InvalidTopicName)),
        None => Ok(()),
    }
}
