use crate::{PacketType, PropertyId, ProtocolVersion, ReasonCode};

/// Everything that can be wrong with bytes being decoded or a packet being encoded.
///
/// `Copy` and allocation-free, so a decoder can return it from any depth. Every variant
/// maps to the MQTT 5.0 reason code the receiver sends before it closes
/// ([`Error::reason_code`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A remaining length or other Variable Byte Integer needs a fifth byte.
    #[error("variable byte integer longer than 4 bytes")]
    VarIntTooLong,
    /// [MQTT-1.5.5-1] a Variable Byte Integer uses more bytes than its value needs.
    #[error("[MQTT-1.5.5-1] variable byte integer is not minimally encoded")]
    VarIntNotMinimal,
    /// The packet type nibble is reserved (0), or AUTH (15) before 5.0.
    #[error("reserved packet type {nibble} for protocol {version:?}")]
    InvalidPacketType {
        /// The high nibble of the first byte.
        nibble: u8,
        /// The level the packet was decoded under.
        version: ProtocolVersion,
    },
    /// [MQTT-2.2.2-1] [MQTT-2.1.3-1] reserved fixed-header flags carry the wrong value.
    #[error("[MQTT-2.2.2-1] {packet:?} with fixed-header flags {flags:#06b}")]
    InvalidFlags {
        /// The packet.
        packet: PacketType,
        /// The low nibble of the first byte.
        flags: u8,
    },
    /// The packet is larger than the configured maximum; known from the fixed header alone.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    PacketTooLarge {
        /// Size of the whole packet, fixed header included.
        size: usize,
        /// The configured maximum.
        max: u32,
    },
    /// A field runs past the end of the packet's remaining length.
    #[error("{packet:?} ends inside a field")]
    UnexpectedEnd {
        /// The packet.
        packet: PacketType,
    },
    /// Bytes remain after the last field of a packet that has no payload to absorb them.
    #[error("{packet:?} has {extra} bytes after its last field")]
    TrailingBytes {
        /// The packet.
        packet: PacketType,
        /// How many bytes are left over.
        extra: usize,
    },
    /// [MQTT-1.5.4-1] [MQTT-1.5.3-1] a string is not well-formed UTF-8 (surrogates included).
    #[error("[MQTT-1.5.4-1] {packet:?} contains ill-formed UTF-8")]
    InvalidUtf8 {
        /// The packet.
        packet: PacketType,
    },
    /// [MQTT-1.5.4-2] [MQTT-1.5.3-2] a string contains U+0000.
    #[error("[MQTT-1.5.4-2] {packet:?} contains a string with U+0000")]
    NullCharacter {
        /// The packet.
        packet: PacketType,
    },
    /// A string or binary field is longer than 65,535 bytes (encoding only).
    #[error("string or binary field of {len} bytes exceeds 65535")]
    FieldTooLong {
        /// Its length.
        len: usize,
    },
    /// [MQTT-3.3.1-4] QoS 3, in PUBLISH flags or a will.
    #[error("[MQTT-3.3.1-4] invalid QoS {qos}")]
    InvalidQoS {
        /// The value found.
        qos: u8,
    },
    /// [MQTT-3.3.1-2] DUP set on a QoS 0 PUBLISH.
    #[error("[MQTT-3.3.1-2] DUP set on a QoS 0 PUBLISH")]
    DupWithQoS0,
    /// [MQTT-2.3.1-1] a packet identifier of 0.
    #[error("[MQTT-2.3.1-1] {packet:?} with packet identifier 0")]
    ZeroPacketId {
        /// The packet.
        packet: PacketType,
    },
    /// [MQTT-3.1.2-1] the protocol name is not `MQTT` (or `MQIsdp` for level 3).
    #[error("[MQTT-3.1.2-1] unknown protocol name")]
    InvalidProtocolName,
    /// The protocol level is not 3, 4 or 5.
    #[error("unsupported protocol level {level}")]
    UnsupportedProtocolVersion {
        /// The level byte.
        level: u8,
    },
    /// [MQTT-3.1.2-3] the reserved bit of the CONNECT flags is set.
    #[error("[MQTT-3.1.2-3] CONNECT reserved flag is set")]
    ConnectReservedFlag,
    /// [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15] will QoS or retain set without the will flag.
    #[error("[MQTT-3.1.2-11] will QoS or retain set without a will")]
    WillFlagsWithoutWill,
    /// [MQTT-3.1.2-22] a password without a user name, before 5.0.
    #[error("[MQTT-3.1.2-22] password without user name")]
    PasswordWithoutUsername,
    /// [MQTT-3.2.2-1] CONNACK acknowledge flags other than bit 0 are set.
    #[error("[MQTT-3.2.2-1] CONNACK flags {flags:#04x}")]
    InvalidConnAckFlags {
        /// The flags byte.
        flags: u8,
    },
    /// [MQTT-3.3.2-2] a topic name (PUBLISH, will, response topic) is invalid.
    #[error("[MQTT-3.3.2-2] invalid topic name: {0}")]
    InvalidTopicName(mqtt_topic::Error),
    /// A topic filter in SUBSCRIBE or UNSUBSCRIBE is invalid.
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(mqtt_topic::Error),
    /// A 5.0 PUBLISH with an empty topic name and no topic alias.
    #[error("PUBLISH with an empty topic name and no topic alias")]
    EmptyTopicWithoutAlias,
    /// [MQTT-3.8.3-3] [MQTT-3.10.3-2] SUBSCRIBE or UNSUBSCRIBE with no filter, or an ack with
    /// no reason code.
    #[error("[MQTT-3.8.3-3] {packet:?} has an empty payload")]
    EmptyPayload {
        /// The packet.
        packet: PacketType,
    },
    /// [MQTT-3.8.3-4] (3.1.1) / [MQTT-3.8.3-5] (5.0) reserved bits or bad values in the
    /// subscription options byte.
    #[error("[MQTT-3.8.3-5] invalid subscription options {byte:#04x}")]
    InvalidSubscriptionOptions {
        /// The options byte.
        byte: u8,
    },
    /// [MQTT-3.8.3-4] (5.0) No Local on a shared subscription.
    #[error("[MQTT-3.8.3-4] No Local on a shared subscription")]
    NoLocalOnSharedSubscription,
    /// A reason code that the packet's table does not list.
    #[error("reason code {code:#04x} is not valid in {packet:?}")]
    InvalidReasonCode {
        /// The packet.
        packet: PacketType,
        /// The byte.
        code: u8,
    },
    /// A property identifier that 5.0 does not define.
    #[error("unknown property identifier {id:#04x} in {packet:?}")]
    UnknownProperty {
        /// The identifier.
        id: u32,
        /// The packet.
        packet: PacketType,
    },
    /// A defined property that this packet may not carry.
    #[error("property {id:?} is not allowed in {packet:?}")]
    PropertyNotAllowed {
        /// The property.
        id: PropertyId,
        /// The packet.
        packet: PacketType,
    },
    /// A property that may appear once appears twice.
    #[error("property {id:?} appears twice in {packet:?}")]
    DuplicateProperty {
        /// The property.
        id: PropertyId,
        /// The packet.
        packet: PacketType,
    },
    /// A property value out of its range (Receive Maximum 0, Topic Alias 0, Maximum QoS 2,
    /// a boolean other than 0 or 1, ...).
    #[error("property {id:?} has a value out of range in {packet:?}")]
    InvalidPropertyValue {
        /// The property.
        id: PropertyId,
        /// The packet.
        packet: PacketType,
    },
    /// [MQTT-3.3.4-6] a PUBLISH from a client carries a Subscription Identifier.
    #[error("[MQTT-3.3.4-6] PUBLISH from a client carries a Subscription Identifier")]
    SubscriptionIdFromClient,
    /// [MQTT-3.14.2-2] a DISCONNECT from a server carries Session Expiry Interval.
    #[error("[MQTT-3.14.2-2] DISCONNECT from a server carries Session Expiry Interval")]
    SessionExpiryFromServer,
    /// Encoding: the buffer is smaller than the packet; nothing was written.
    #[error("buffer too small: {required} bytes required")]
    BufferTooSmall {
        /// Bytes the packet needs.
        required: usize,
    },
    /// Encoding: a field or packet that this protocol level does not have.
    #[error("{field} does not exist in protocol {version:?}")]
    NotInVersion {
        /// What was asked for.
        field: &'static str,
        /// The level being encoded.
        version: ProtocolVersion,
    },
    /// Encoding: a value outside the range the protocol allows.
    #[error("{field} is out of range")]
    ValueOutOfRange {
        /// Which value.
        field: &'static str,
    },
}

impl Error {
    /// The MQTT 5.0 reason code a receiver sends (in CONNACK or DISCONNECT) for this error.
    ///
    /// ```
    /// use mqtt_codec::{Error, ReasonCode};
    /// assert_eq!(Error::DupWithQoS0.reason_code(), ReasonCode::MalformedPacket);
    /// ```
    pub const fn reason_code(&self) -> ReasonCode {
        use Error::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PacketTooLarge,
            UnsupportedProtocolVersion { .. } | InvalidProtocolName => {
                ReasonCode::UnsupportedProtocolVersion
            }
            InvalidTopicName(_) => ReasonCode::TopicNameInvalid,
            InvalidTopicFilter(_) => ReasonCode::TopicFilterInvalid,
            InvalidPropertyValue {
                id: PropertyId::TopicAlias,
                ..
            } => ReasonCode::TopicAliasInvalid,
            DuplicateProperty { .. }
            | InvalidPropertyValue { .. }
            | EmptyTopicWithoutAlias
            | EmptyPayload { .. }
            | NoLocalOnSharedSubscription
            | SubscriptionIdFromClient
            | SessionExpiryFromServer => ReasonCode::ProtocolError,
            BufferTooSmall { .. }
            | NotInVersion { .. }
            | ValueOutOfRange { .. }
            | FieldTooLong { .. } => ReasonCode::ImplementationSpecificError,
            _ => ReasonCode::MalformedPacket,
        }
    }
}
