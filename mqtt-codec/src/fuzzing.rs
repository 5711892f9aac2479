//! A generator of packets for fuzzers and property tests (feature `arbitrary`).
//!
//! [`PacketSpec`] is an owned description of a packet, built from raw bytes with
//! `arbitrary`; [`PacketSpec::with_packet`] lends the borrowed [`Packet`] it describes.
//! The generator favours values the protocol accepts (topic levels from a small alphabet,
//! strings mostly without U+0000) so that most specs encode, while still producing the
//! odd invalid one, which the encoder must refuse.

use alloc::string::String;
use alloc::vec::Vec;
use core::num::{NonZeroU16, NonZeroU32};

use arbitrary::{Arbitrary, Result, Unstructured};

use crate::*;

/// An owned, arbitrary packet description at a protocol level.
#[derive(Debug, Clone)]
pub struct PacketSpec {
    /// The level the packet is encoded and decoded under.
    pub version: ProtocolVersion,
    kind: u8,
    flags: [bool; 6],
    qos: [QoS; 2],
    nums: [u32; 2],
    id: u16,
    strings: [String; 4],
    bins: [Vec<u8>; 2],
    subs: Vec<(String, u8)>,
    codes: Vec<u8>,
    props: Props,
}

/// Every property, owned; each packet picks the ones it may carry.
#[derive(Debug, Clone, Default)]
struct Props {
    b: [Option<bool>; 8],
    n32: [Option<u32>; 4],
    n16: [Option<u16>; 4],
    s: [Option<String>; 6],
    bin: [Option<Vec<u8>>; 2],
    user: Vec<(String, String)>,
    sub_ids: Vec<u32>,
}

const LEVELS: &[&str] = &[
    "a",
    "b",
    "sport",
    "$SYS",
    "",
    "tennis player",
    "é",
    "日本",
    "x\u{FEFF}",
];

fn string(u: &mut Unstructured<'_>) -> Result<String> {
    Ok(match u.int_in_range(0..=9)? {
        0 => String::new(),
        1 => String::arbitrary(u)?,
        2 => "\0".into(),
        _ => LEVELS[u.choose_index(LEVELS.len())?].into(),
    })
}

fn topic(u: &mut Unstructured<'_>) -> Result<String> {
    let n = u.int_in_range(1..=4)?;
    let mut t = String::new();
    for i in 0..n {
        if i > 0 {
            t.push('/');
        }
        t.push_str(LEVELS[u.choose_index(LEVELS.len())?]);
    }
    // Now and then a wildcard that the encoder must refuse in a name.
    if u.ratio(1, 20)? {
        t.push_str("/+");
    }
    if t.is_empty() {
        t.push('t');
    }
    Ok(t)
}

fn filter(u: &mut Unstructured<'_>) -> Result<String> {
    let mut f = match u.int_in_range(0..=9)? {
        0 => String::from("$share/g/"),
        1 => String::from("#"),
        _ => String::new(),
    };
    if f == "#" {
        return Ok(f);
    }
    let n = u.int_in_range(1..=4)?;
    for i in 0..n {
        if i > 0 {
            f.push('/');
        }
        match u.int_in_range(0..=5)? {
            0 => f.push('+'),
            1 if i + 1 == n => f.push('#'),
            _ => f.push_str(LEVELS[u.choose_index(LEVELS.len())?]),
        }
    }
    Ok(f)
}

fn opt<T>(
    u: &mut Unstructured<'_>,
    f: impl FnOnce(&mut Unstructured<'_>) -> Result<T>,
) -> Result<Option<T>> {
    Ok(if u.ratio(1, 3)? { Some(f(u)?) } else { None })
}

impl<'a> Arbitrary<'a> for Props {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let mut p = Props::default();
        if !u.ratio(1, 2)? {
            return Ok(p);
        }
        for b in &mut p.b {
            *b = opt(u, |u| u.arbitrary::<bool>())?;
        }
        for n in &mut p.n32 {
            *n = opt(u, |u| u.arbitrary::<u32>())?;
        }
        for n in &mut p.n16 {
            *n = opt(u, |u| u.arbitrary::<u16>())?;
        }
        for s in &mut p.s {
            *s = opt(u, string)?;
        }
        for b in &mut p.bin {
            *b = opt(u, |u| u.arbitrary::<Vec<u8>>())?;
        }
        for _ in 0..u.int_in_range(0..=3)? {
            p.user.push((string(u)?, string(u)?));
        }
        for _ in 0..u.int_in_range(0..=2)? {
            p.sub_ids.push(u.int_in_range(1..=varint::MAX)?);
        }
        Ok(p)
    }
}

impl<'a> Arbitrary<'a> for PacketSpec {
    fn arbitrary(u: &mut Unstructured<'a>) -> Result<Self> {
        let version = *u.choose(&[
            ProtocolVersion::V3_1,
            ProtocolVersion::V3_1_1,
            ProtocolVersion::V5,
        ])?;
        let kind = u.int_in_range(1..=15)?;
        let qos = |u: &mut Unstructured<'_>| {
            u.choose(&[QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
                .copied()
        };
        let mut subs = Vec::new();
        for _ in 0..u.int_in_range(1..=4)? {
            subs.push((filter(u)?, u8::arbitrary(u)? & 0x3F));
        }
        let mut codes = Vec::new();
        for _ in 0..u.int_in_range(1..=4)? {
            codes.push(u8::arbitrary(u)?);
        }
        Ok(Self {
            version,
            kind,
            flags: Arbitrary::arbitrary(u)?,
            qos: [qos(u)?, qos(u)?],
            nums: Arbitrary::arbitrary(u)?,
            id: u16::arbitrary(u)?.max(1),
            strings: [topic(u)?, string(u)?, string(u)?, string(u)?],
            bins: [Vec::arbitrary(u)?, Vec::arbitrary(u)?],
            subs,
            codes,
            props: Props::arbitrary(u)?,
        })
    }
}

/// A reason code from `b`, nudged onto one `packet` may carry at `version`.
fn code(b: u8, packet: PacketType, version: ProtocolVersion) -> ReasonCode {
    let c = ReasonCode::from_u8(b).unwrap_or(ReasonCode::Success);
    if c.is_valid_in(packet, version) {
        c
    } else {
        ReasonCode::Success
    }
}

impl PacketSpec {
    /// Lends the packet this spec describes to `f`.
    pub fn with_packet<R>(&self, f: impl FnOnce(&Packet<'_>) -> R) -> R {
        let v = self.version;
        let v5 = v.is_v5();
        let p = &self.props;
        let user: Vec<(&str, &str)> = if v5 {
            p.user
                .iter()
                .map(|(a, b)| (a.as_str(), b.as_str()))
                .collect()
        } else {
            Vec::new()
        };
        let user = UserProperties::new(&user);
        let s = |i: usize| p.s[i].as_deref();
        let sub_ids: Vec<SubscriptionId> = p
            .sub_ids
            .iter()
            .filter_map(|&i| SubscriptionId::new(i))
            .collect();
        let subs: Vec<Subscription<'_>> = self
            .subs
            .iter()
            .map(|(f, o)| {
                let b = if v5 { *o & 0x2F } else { *o & 0x03 };
                let options = SubscriptionOptions::from_byte(b, v).unwrap_or_default();
                Subscription { filter: f, options }
            })
            .collect();
        let filters: Vec<&str> = self.subs.iter().map(|(f, _)| f.as_str()).collect();
        let id =
            PacketId::new(self.id).unwrap_or(PacketId::new(1).unwrap_or_else(|| unreachable!()));
        let ack_props = if v5 {
            AckProperties {
                reason_string: s(0),
                user_properties: user,
            }
        } else {
            AckProperties::default()
        };
        let t = PacketType::from_nibble(self.kind).unwrap_or(PacketType::PingReq);
        let codes: Vec<ReasonCode> = self.codes.iter().map(|&b| code(b, t, v)).collect();
        let [s0, s1, s2, s3] = &self.strings;
        let packet = match t {
            PacketType::Connect => {
                let will = self.flags[1].then(|| Will {
                    topic: s0,
                    payload: &self.bins[1],
                    qos: self.qos[1],
                    retain: self.flags[2],
                    properties: if v5 {
                        WillProperties {
                            will_delay_interval: p.n32[0],
                            payload_format_indicator: p.b[0],
                            message_expiry_interval: p.n32[1],
                            content_type: s(1),
                            response_topic: s(2).filter(|t| !t.is_empty()),
                            correlation_data: p.bin[0].as_deref(),
                            user_properties: user,
                        }
                    } else {
                        WillProperties::default()
                    },
                });
                let username = (self.flags[3] || (v5 && self.flags[4])).then_some(s2.as_str());
                Packet::Connect(Connect {
                    protocol: v,
                    clean_start: self.flags[0],
                    keep_alive: self.nums[0] as u16,
                    client_id: s1,
                    will,
                    username,
                    password: (self.flags[4] && (v5 || username.is_some()))
                        .then_some(&self.bins[0][..]),
                    properties: if v5 {
                        ConnectProperties {
                            session_expiry_interval: p.n32[2],
                            receive_maximum: p.n16[0].and_then(NonZeroU16::new),
                            maximum_packet_size: p.n32[3].and_then(NonZeroU32::new),
                            topic_alias_maximum: p.n16[1],
                            request_response_information: p.b[1],
                            request_problem_information: p.b[2],
                            authentication_method: s(3),
                            authentication_data: p.bin[1].as_deref(),
                            user_properties: user,
                        }
                    } else {
                        ConnectProperties::default()
                    },
                    // Now and then at 5.0 too, which the encoder must refuse.
                    bridge: self.flags[5] && (!v5 || self.nums[1].is_multiple_of(16)),
                })
            }
            PacketType::ConnAck => Packet::ConnAck(ConnAck {
                session_present: self.flags[0],
                reason_code: code(self.codes[0], t, v),
                properties: if v5 {
                    ConnAckProperties {
                        session_expiry_interval: p.n32[0],
                        receive_maximum: p.n16[0].and_then(NonZeroU16::new),
                        maximum_qos: p.b[0]
                            .map(|b| if b { QoS::AtLeastOnce } else { QoS::AtMostOnce }),
                        retain_available: p.b[1],
                        maximum_packet_size: p.n32[1].and_then(NonZeroU32::new),
                        assigned_client_identifier: s(0),
                        topic_alias_maximum: p.n16[1],
                        reason_string: s(1),
                        wildcard_subscription_available: p.b[2],
                        subscription_identifier_available: p.b[3],
                        shared_subscription_available: p.b[4],
                        server_keep_alive: p.n16[2],
                        response_information: s(2),
                        server_reference: s(3),
                        authentication_method: s(4),
                        authentication_data: p.bin[0].as_deref(),
                        user_properties: user,
                    }
                } else {
                    ConnAckProperties::default()
                },
            }),
            PacketType::Publish => {
                let qos_pid = match self.qos[0] {
                    QoS::AtMostOnce => QosPid::AtMostOnce,
                    QoS::AtLeastOnce => QosPid::AtLeastOnce(id),
                    QoS::ExactlyOnce => QosPid::ExactlyOnce(id),
                };
                let alias = p.n16[0].and_then(NonZeroU16::new);
                Packet::Publish(Publish {
                    dup: self.flags[0] && qos_pid != QosPid::AtMostOnce,
                    qos_pid,
                    retain: self.flags[1],
                    // 5.0 may replace the name with an alias.
                    topic: if v5 && alias.is_some() && self.flags[2] {
                        Topic::EMPTY
                    } else {
                        // A name with a wildcard is refused here, not by the encoder; the
                        // empty topic in its place is, without an alias.
                        Topic::new(s0).unwrap_or(Topic::EMPTY)
                    },
                    payload: &self.bins[0],
                    properties: if v5 {
                        PublishProperties {
                            payload_format_indicator: p.b[0],
                            message_expiry_interval: p.n32[0],
                            topic_alias: alias,
                            response_topic: s(0).filter(|t| !t.is_empty()),
                            correlation_data: p.bin[0].as_deref(),
                            content_type: s(1),
                            user_properties: user,
                            subscription_identifiers: SubscriptionIds::new(&sub_ids),
                        }
                    } else {
                        PublishProperties::default()
                    },
                })
            }
            PacketType::PubAck | PacketType::PubRec | PacketType::PubRel | PacketType::PubComp => {
                let ack = PubAck {
                    packet_id: id,
                    reason_code: code(self.codes[0], t, v),
                    properties: ack_props,
                };
                match t {
                    PacketType::PubAck => Packet::PubAck(ack),
                    PacketType::PubRec => Packet::PubRec(ack),
                    PacketType::PubRel => Packet::PubRel(ack),
                    _ => Packet::PubComp(ack),
                }
            }
            PacketType::Subscribe => Packet::Subscribe(Subscribe {
                packet_id: id,
                properties: if v5 {
                    SubscribeProperties {
                        subscription_identifier: sub_ids.first().copied(),
                        user_properties: user,
                    }
                } else {
                    SubscribeProperties::default()
                },
                filters: List::new(&subs),
            }),
            PacketType::SubAck => Packet::SubAck(SubAck {
                packet_id: id,
                properties: ack_props,
                reason_codes: List::new(&codes),
            }),
            PacketType::Unsubscribe => Packet::Unsubscribe(Unsubscribe {
                packet_id: id,
                properties: UnsubscribeProperties {
                    user_properties: user,
                },
                filters: List::new(&filters),
            }),
            PacketType::UnsubAck => Packet::UnsubAck(UnsubAck {
                packet_id: id,
                properties: ack_props,
                reason_codes: List::new(if v5 { &codes } else { &[] }),
            }),
            PacketType::PingReq => Packet::PingReq,
            PacketType::PingResp => Packet::PingResp,
            PacketType::Disconnect => Packet::Disconnect(Disconnect {
                reason_code: code(self.codes[0], t, v),
                properties: if v5 {
                    DisconnectProperties {
                        session_expiry_interval: p.n32[0],
                        reason_string: s(0),
                        server_reference: s(1),
                        user_properties: user,
                    }
                } else {
                    DisconnectProperties::default()
                },
            }),
            PacketType::Auth => Packet::Auth(Auth {
                reason_code: code(self.codes[0], t, v),
                properties: AuthProperties {
                    authentication_method: s(0),
                    authentication_data: p.bin[0].as_deref(),
                    reason_string: s(1),
                    user_properties: user,
                },
            }),
        };
        let _ = s3;
        f(&packet)
    }
}
