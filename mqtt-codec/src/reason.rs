use crate::{PacketType, ProtocolVersion};

macro_rules! reason_codes {
    ($( $(#[$doc:meta])* $name:ident = $value:literal => $($pkt:ident)|* ;)*) => {
        /// An MQTT 5.0 reason code. 3.1.1 CONNACK return codes and SUBACK return codes map
        /// onto the 5.0 codes of the same meaning (see [`ConnAck`](crate::ConnAck)).
        ///
        /// Which codes each packet may carry is checked on decode and encode
        /// ([`ReasonCode::is_valid_for`]).
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
        #[repr(u8)]
        pub enum ReasonCode {
            $( $(#[$doc])* $name = $value, )*
        }

        impl ReasonCode {
            /// The code from its byte, `None` for a byte no table lists.
            pub const fn from_u8(b: u8) -> Option<Self> {
                match b {
                    $( $value => Some(Self::$name), )*
                    _ => None,
                }
            }

            /// Whether a 5.0 packet of type `packet` may carry this code
            /// ([MQTT-3.2.2-8], [MQTT-3.4.2-1], [MQTT-3.5.2-1], [MQTT-3.6.2-1],
            /// [MQTT-3.7.2-1], [MQTT-3.9.3-2], [MQTT-3.11.3-2], [MQTT-3.14.2-1],
            /// [MQTT-3.15.2-1]).
            pub const fn is_valid_for(self, packet: PacketType) -> bool {
                match self {
                    $( Self::$name => matches!(packet, $(PacketType::$pkt)|*), )*
                }
            }
        }
    };
}

reason_codes! {
    /// Success, Normal disconnection, Granted QoS 0.
    #[default]
    Success = 0x00 => ConnAck | PubAck | PubRec | PubRel | PubComp | SubAck | UnsubAck | Disconnect | Auth;
    /// Granted QoS 1.
    GrantedQoS1 = 0x01 => SubAck;
    /// Granted QoS 2.
    GrantedQoS2 = 0x02 => SubAck;
    /// Disconnect with Will Message.
    DisconnectWithWill = 0x04 => Disconnect;
    /// No matching subscribers.
    NoMatchingSubscribers = 0x10 => PubAck | PubRec;
    /// No subscription existed.
    NoSubscriptionExisted = 0x11 => UnsubAck;
    /// Continue authentication.
    ContinueAuthentication = 0x18 => Auth;
    /// Re-authenticate.
    ReAuthenticate = 0x19 => Auth;
    /// Unspecified error.
    UnspecifiedError = 0x80 => ConnAck | PubAck | PubRec | SubAck | UnsubAck | Disconnect;
    /// Malformed Packet.
    MalformedPacket = 0x81 => ConnAck | Disconnect;
    /// Protocol Error.
    ProtocolError = 0x82 => ConnAck | Disconnect;
    /// Implementation specific error.
    ImplementationSpecificError = 0x83 => ConnAck | PubAck | PubRec | SubAck | UnsubAck | Disconnect;
    /// Unsupported Protocol Version.
    UnsupportedProtocolVersion = 0x84 => ConnAck;
    /// Client Identifier not valid.
    ClientIdentifierNotValid = 0x85 => ConnAck;
    /// Bad User Name or Password.
    BadUserNameOrPassword = 0x86 => ConnAck;
    /// Not authorized.
    NotAuthorized = 0x87 => ConnAck | PubAck | PubRec | SubAck | UnsubAck | Disconnect;
    /// Server unavailable.
    ServerUnavailable = 0x88 => ConnAck;
    /// Server busy.
    ServerBusy = 0x89 => ConnAck | Disconnect;
    /// Banned.
    Banned = 0x8A => ConnAck;
    /// Server shutting down.
    ServerShuttingDown = 0x8B => Disconnect;
    /// Bad authentication method.
    BadAuthenticationMethod = 0x8C => ConnAck | Disconnect;
    /// Keep Alive timeout.
    KeepAliveTimeout = 0x8D => Disconnect;
    /// Session taken over.
    SessionTakenOver = 0x8E => Disconnect;
    /// Topic Filter invalid.
    TopicFilterInvalid = 0x8F => SubAck | UnsubAck | Disconnect;
    /// Topic Name invalid.
    TopicNameInvalid = 0x90 => ConnAck | PubAck | PubRec | Disconnect;
    /// Packet Identifier in use.
    PacketIdentifierInUse = 0x91 => PubAck | PubRec | SubAck | UnsubAck;
    /// Packet Identifier not found.
    PacketIdentifierNotFound = 0x92 => PubRel | PubComp;
    /// Receive Maximum exceeded.
    ReceiveMaximumExceeded = 0x93 => Disconnect;
    /// Topic Alias invalid.
    TopicAliasInvalid = 0x94 => Disconnect;
    /// Packet too large.
    PacketTooLarge = 0x95 => ConnAck | Disconnect;
    /// Message rate too high.
    MessageRateTooHigh = 0x96 => Disconnect;
    /// Quota exceeded.
    QuotaExceeded = 0x97 => ConnAck | PubAck | PubRec | SubAck | Disconnect;
    /// Administrative action.
    AdministrativeAction = 0x98 => Disconnect;
    /// Payload format invalid.
    PayloadFormatInvalid = 0x99 => ConnAck | PubAck | PubRec | Disconnect;
    /// Retain not supported.
    RetainNotSupported = 0x9A => ConnAck | Disconnect;
    /// QoS not supported.
    QoSNotSupported = 0x9B => ConnAck | Disconnect;
    /// Use another server.
    UseAnotherServer = 0x9C => ConnAck | Disconnect;
    /// Server moved.
    ServerMoved = 0x9D => ConnAck | Disconnect;
    /// Shared Subscriptions not supported.
    SharedSubscriptionsNotSupported = 0x9E => SubAck | Disconnect;
    /// Connection rate exceeded.
    ConnectionRateExceeded = 0x9F => ConnAck | Disconnect;
    /// Maximum connect time.
    MaximumConnectTime = 0xA0 => Disconnect;
    /// Subscription Identifiers not supported.
    SubscriptionIdentifiersNotSupported = 0xA1 => SubAck | Disconnect;
    /// Wildcard Subscriptions not supported.
    WildcardSubscriptionsNotSupported = 0xA2 => SubAck | Disconnect;
}

impl ReasonCode {
    /// Codes of 0x80 and above report failure.
    #[inline]
    pub const fn is_error(self) -> bool {
        self as u8 >= 0x80
    }

    /// The 3.1/3.1.1 CONNACK return code for this reason, if that level has one.
    pub const fn to_v3_connack(self) -> Option<u8> {
        Some(match self {
            Self::Success => 0,
            Self::UnsupportedProtocolVersion => 1,
            Self::ClientIdentifierNotValid => 2,
            Self::ServerUnavailable => 3,
            Self::BadUserNameOrPassword => 4,
            Self::NotAuthorized => 5,
            _ => return None,
        })
    }

    /// The reason for a 3.1/3.1.1 CONNACK return code.
    pub const fn from_v3_connack(code: u8) -> Option<Self> {
        Some(match code {
            0 => Self::Success,
            1 => Self::UnsupportedProtocolVersion,
            2 => Self::ClientIdentifierNotValid,
            3 => Self::ServerUnavailable,
            4 => Self::BadUserNameOrPassword,
            5 => Self::NotAuthorized,
            _ => return None,
        })
    }

    /// Whether `packet` may carry this code at `version`. Before 5.0 only SUBACK carries
    /// codes in this form, and only 0x00, 0x01, 0x02 and 0x80 ([MQTT-3.9.3-2] in 3.1.1);
    /// CONNACK maps through [`ReasonCode::to_v3_connack`].
    pub const fn is_valid_in(self, packet: PacketType, version: ProtocolVersion) -> bool {
        if version.is_v5() {
            return self.is_valid_for(packet);
        }
        match packet {
            PacketType::SubAck => matches!(
                self,
                Self::Success | Self::GrantedQoS1 | Self::GrantedQoS2 | Self::UnspecifiedError
            ),
            PacketType::ConnAck => self.to_v3_connack().is_some(),
            // Packets that carry no code before 5.0 can only say success.
            _ => matches!(self, Self::Success),
        }
    }

    /// The code's name as the 5.0 specification's tables give it (section 2.4), for logs
    /// and error messages: "not authorized". 0x00 reads "success" whatever the packet
    /// (it is also Normal disconnection and Granted QoS 0).
    pub const fn description(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::GrantedQoS1 => "granted QoS 1",
            Self::GrantedQoS2 => "granted QoS 2",
            Self::DisconnectWithWill => "disconnect with will message",
            Self::NoMatchingSubscribers => "no matching subscribers",
            Self::NoSubscriptionExisted => "no subscription existed",
            Self::ContinueAuthentication => "continue authentication",
            Self::ReAuthenticate => "re-authenticate",
            Self::UnspecifiedError => "unspecified error",
            Self::MalformedPacket => "malformed packet",
            Self::ProtocolError => "protocol error",
            Self::ImplementationSpecificError => "implementation specific error",
            Self::UnsupportedProtocolVersion => "unsupported protocol version",
            Self::ClientIdentifierNotValid => "client identifier not valid",
            Self::BadUserNameOrPassword => "bad user name or password",
            Self::NotAuthorized => "not authorized",
            Self::ServerUnavailable => "server unavailable",
            Self::ServerBusy => "server busy",
            Self::Banned => "banned",
            Self::ServerShuttingDown => "server shutting down",
            Self::BadAuthenticationMethod => "bad authentication method",
            Self::KeepAliveTimeout => "keep alive timeout",
            Self::SessionTakenOver => "session taken over",
            Self::TopicFilterInvalid => "topic filter invalid",
            Self::TopicNameInvalid => "topic name invalid",
            Self::PacketIdentifierInUse => "packet identifier in use",
            Self::PacketIdentifierNotFound => "packet identifier not found",
            Self::ReceiveMaximumExceeded => "receive maximum exceeded",
            Self::TopicAliasInvalid => "topic alias invalid",
            Self::PacketTooLarge => "packet too large",
            Self::MessageRateTooHigh => "message rate too high",
            Self::QuotaExceeded => "quota exceeded",
            Self::AdministrativeAction => "administrative action",
            Self::PayloadFormatInvalid => "payload format invalid",
            Self::RetainNotSupported => "retain not supported",
            Self::QoSNotSupported => "QoS not supported",
            Self::UseAnotherServer => "use another server",
            Self::ServerMoved => "server moved",
            Self::SharedSubscriptionsNotSupported => "shared subscriptions not supported",
            Self::ConnectionRateExceeded => "connection rate exceeded",
            Self::MaximumConnectTime => "maximum connect time",
            Self::SubscriptionIdentifiersNotSupported => "subscription identifiers not supported",
            Self::WildcardSubscriptionsNotSupported => "wildcard subscriptions not supported",
        }
    }
}

/// The name and the byte: `not authorized (0x87)`.
impl core::fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(f, "{} (0x{:02x})", self.description(), *self as u8)
    }
}

impl TryFrom<u8> for ReasonCode {
    type Error = u8;
    fn try_from(b: u8) -> Result<Self, u8> {
        Self::from_u8(b).ok_or(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use PacketType::*;

    #[test]
    fn display_names_the_code_and_its_byte() {
        extern crate alloc;
        use alloc::string::ToString;
        assert_eq!(
            ReasonCode::NotAuthorized.to_string(),
            "not authorized (0x87)"
        );
        assert_eq!(ReasonCode::Success.to_string(), "success (0x00)");
        assert_eq!(
            ReasonCode::QoSNotSupported.to_string(),
            "QoS not supported (0x9b)"
        );
    }

    #[test]
    fn every_byte_maps_back() {
        for b in 0..=255u8 {
            if let Some(c) = ReasonCode::from_u8(b) {
                assert_eq!(c as u8, b);
            }
        }
    }

    #[test]
    fn tables_match_the_standard() {
        let count = |p| {
            (0..=255u8)
                .filter_map(ReasonCode::from_u8)
                .filter(|c| c.is_valid_for(p))
                .count()
        };
        // Section 3.2.2.2 lists 22 CONNACK codes, 3.4.2.1 9 PUBACK, 3.5.2.1 9 PUBREC, 3.6.2.1 2
        // PUBREL, 3.7.2.1 2 PUBCOMP, 3.9.3 12 SUBACK, 3.11.3 7 UNSUBACK, 3.14.2.1 29 DISCONNECT
        // and 3.15.2.1 3 AUTH codes. DISCONNECT also takes 0x8C (Bad authentication method),
        // which the summary in Table 2-6 lists for it although 3.14.2.1 leaves it out.
        assert_eq!(count(ConnAck), 22);
        assert_eq!(count(PubAck), 9);
        assert_eq!(count(PubRec), 9);
        assert_eq!(count(PubRel), 2);
        assert_eq!(count(PubComp), 2);
        assert_eq!(count(SubAck), 12);
        assert_eq!(count(UnsubAck), 7);
        assert_eq!(count(Disconnect), 30);
        assert_eq!(count(Auth), 3);
    }

    #[test]
    fn v3_connack_codes() {
        for code in 0..=5 {
            let r = ReasonCode::from_v3_connack(code).unwrap();
            assert_eq!(r.to_v3_connack(), Some(code));
        }
        assert_eq!(ReasonCode::from_v3_connack(6), None);
        assert_eq!(ReasonCode::Banned.to_v3_connack(), None);
    }
}
