use core::num::{NonZeroU16, NonZeroU32};

use crate::Error;

/// The protocol level a connection speaks. CONNECT carries it; every other packet is
/// decoded under the level the connection negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum ProtocolVersion {
    /// MQTT 3.1, protocol name `MQIsdp`, level 3.
    V3_1 = 3,
    /// MQTT 3.1.1, protocol name `MQTT`, level 4.
    V3_1_1 = 4,
    /// MQTT 5.0, protocol name `MQTT`, level 5.
    V5 = 5,
}

impl ProtocolVersion {
    /// Whether this level has properties, reason codes and AUTH.
    #[inline]
    pub const fn is_v5(self) -> bool {
        matches!(self, Self::V5)
    }

    /// The protocol name CONNECT carries at this level.
    pub const fn protocol_name(self) -> &'static str {
        match self {
            Self::V3_1 => "MQIsdp",
            Self::V3_1_1 | Self::V5 => "MQTT",
        }
    }
}

impl TryFrom<u8> for ProtocolVersion {
    type Error = Error;
    fn try_from(level: u8) -> Result<Self, Error> {
        match level {
            3 => Ok(Self::V3_1),
            4 => Ok(Self::V3_1_1),
            5 => Ok(Self::V5),
            level => Err(Error::UnsupportedProtocolVersion { level }),
        }
    }
}

/// Quality of service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
#[repr(u8)]
pub enum QoS {
    /// At most once (0).
    #[default]
    AtMostOnce = 0,
    /// At least once (1).
    AtLeastOnce = 1,
    /// Exactly once (2).
    ExactlyOnce = 2,
}

impl TryFrom<u8> for QoS {
    type Error = Error;
    fn try_from(v: u8) -> Result<Self, Error> {
        match v {
            0 => Ok(Self::AtMostOnce),
            1 => Ok(Self::AtLeastOnce),
            2 => Ok(Self::ExactlyOnce),
            qos => Err(Error::InvalidQoS { qos }),
        }
    }
}

/// A packet identifier: never zero ([MQTT-2.3.1-1]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PacketId(NonZeroU16);

impl PacketId {
    /// `None` for 0.
    #[inline]
    pub const fn new(id: u16) -> Option<Self> {
        match NonZeroU16::new(id) {
            Some(id) => Some(Self(id)),
            None => None,
        }
    }
    /// The identifier as a number.
    #[inline]
    pub const fn get(self) -> u16 {
        self.0.get()
    }
}

impl From<NonZeroU16> for PacketId {
    fn from(id: NonZeroU16) -> Self {
        Self(id)
    }
}

/// The QoS of a PUBLISH together with its packet identifier, which exists exactly when
/// QoS > 0 ([MQTT-2.3.1-5]): the type makes the other combinations unrepresentable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum QosPid {
    /// QoS 0, no packet identifier.
    AtMostOnce,
    /// QoS 1 with its identifier.
    AtLeastOnce(PacketId),
    /// QoS 2 with its identifier.
    ExactlyOnce(PacketId),
}

impl QosPid {
    /// The QoS level.
    #[inline]
    pub const fn qos(self) -> QoS {
        match self {
            Self::AtMostOnce => QoS::AtMostOnce,
            Self::AtLeastOnce(_) => QoS::AtLeastOnce,
            Self::ExactlyOnce(_) => QoS::ExactlyOnce,
        }
    }
    /// The packet identifier, if QoS > 0.
    #[inline]
    pub const fn packet_id(self) -> Option<PacketId> {
        match self {
            Self::AtMostOnce => None,
            Self::AtLeastOnce(id) | Self::ExactlyOnce(id) => Some(id),
        }
    }
}

/// A subscription identifier (MQTT 5.0): 1 to 268,435,455.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SubscriptionId(NonZeroU32);

impl SubscriptionId {
    /// The largest identifier a Variable Byte Integer holds.
    pub const MAX: u32 = crate::varint::MAX;

    /// `None` for 0 or above [`SubscriptionId::MAX`].
    pub const fn new(id: u32) -> Option<Self> {
        if id > Self::MAX {
            return None;
        }
        match NonZeroU32::new(id) {
            Some(id) => Some(Self(id)),
            None => None,
        }
    }
    /// The identifier as a number.
    pub const fn get(self) -> u32 {
        self.0.get()
    }
}

/// When the server sends retained messages for a new subscription (MQTT 5.0).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum RetainHandling {
    /// Send retained messages at the time of the subscribe (0).
    #[default]
    SendAtSubscribe = 0,
    /// Send them only if the subscription did not exist (1).
    SendIfNew = 1,
    /// Never send them (2).
    DoNotSend = 2,
}

/// The options byte that follows each filter in SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct SubscriptionOptions {
    /// The maximum QoS the subscriber accepts.
    pub qos: QoS,
    /// 5.0: do not deliver the subscriber's own messages back to it.
    pub no_local: bool,
    /// 5.0: keep the RETAIN flag of forwarded messages.
    pub retain_as_published: bool,
    /// 5.0: when to send retained messages.
    pub retain_handling: RetainHandling,
}

impl SubscriptionOptions {
    /// Options with only a QoS, the only field 3.1.1 has.
    pub const fn qos(qos: QoS) -> Self {
        Self {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: RetainHandling::SendAtSubscribe,
        }
    }

    pub(crate) fn from_byte(b: u8, version: ProtocolVersion) -> Result<Self, Error> {
        let reserved = if version.is_v5() { 0xC0 } else { 0xFC };
        // [MQTT-3.8.3-4] (3.1.1) / [MQTT-3.8.3-5] (5.0): reserved bits are zero.
        if b & reserved != 0 {
            return Err(Error::InvalidSubscriptionOptions { byte: b });
        }
        let qos =
            QoS::try_from(b & 0x03).map_err(|_| Error::InvalidSubscriptionOptions { byte: b })?;
        let retain_handling = match (b >> 4) & 0x03 {
            0 => RetainHandling::SendAtSubscribe,
            1 => RetainHandling::SendIfNew,
            2 => RetainHandling::DoNotSend,
            _ => return Err(Error::InvalidSubscriptionOptions { byte: b }),
        };
        Ok(Self {
            qos,
            no_local: b & 0x04 != 0,
            retain_as_published: b & 0x08 != 0,
            retain_handling,
        })
    }

    pub(crate) fn to_byte(self, version: ProtocolVersion) -> Result<u8, Error> {
        let b = self.qos as u8
            | (self.no_local as u8) << 2
            | (self.retain_as_published as u8) << 3
            | (self.retain_handling as u8) << 4;
        if !version.is_v5() && b > 3 {
            return Err(Error::NotInVersion {
                field: "subscription options other than QoS",
                version,
            });
        }
        Ok(b)
    }
}

/// The 4-bit control packet type in the fixed header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
#[allow(missing_docs)]
pub enum PacketType {
    Connect = 1,
    ConnAck = 2,
    Publish = 3,
    PubAck = 4,
    PubRec = 5,
    PubRel = 6,
    PubComp = 7,
    Subscribe = 8,
    SubAck = 9,
    Unsubscribe = 10,
    UnsubAck = 11,
    PingReq = 12,
    PingResp = 13,
    Disconnect = 14,
    Auth = 15,
}

impl PacketType {
    /// The type from the high nibble of the first byte; 0 is reserved, and 15 (AUTH) exists
    /// only in 5.0.
    pub const fn from_nibble(n: u8) -> Option<Self> {
        Some(match n {
            1 => Self::Connect,
            2 => Self::ConnAck,
            3 => Self::Publish,
            4 => Self::PubAck,
            5 => Self::PubRec,
            6 => Self::PubRel,
            7 => Self::PubComp,
            8 => Self::Subscribe,
            9 => Self::SubAck,
            10 => Self::Unsubscribe,
            11 => Self::UnsubAck,
            12 => Self::PingReq,
            13 => Self::PingResp,
            14 => Self::Disconnect,
            15 => Self::Auth,
            _ => return None,
        })
    }

    /// The fixed-header flags this type must carry ([MQTT-2.2.2-1] / [MQTT-2.1.3-1]);
    /// `None` for PUBLISH, whose flags carry DUP, QoS and RETAIN.
    pub const fn required_flags(self) -> Option<u8> {
        match self {
            Self::Publish => None,
            // [MQTT-3.6.1-1] [MQTT-3.8.1-1] [MQTT-3.10.1-1]
            Self::PubRel | Self::Subscribe | Self::Unsubscribe => Some(0b0010),
            _ => Some(0),
        }
    }
}

/// Which side sent the bytes being decoded. Some rules bind one direction only
/// (a client never sends a Subscription Identifier in PUBLISH, a server never sends
/// Session Expiry Interval in DISCONNECT).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Sender {
    /// Unknown: only the rules that bind both directions are checked.
    #[default]
    Either,
    /// The bytes come from a client (we are the server).
    Client,
    /// The bytes come from a server (we are the client).
    Server,
}
