//! Unit tests of every decoding rule the codec owns, each named after the normative
//! statement it checks, and the property-based round trip.

use alloc::vec;
use alloc::vec::Vec;

use proptest::prelude::*;

use crate::fuzzing::PacketSpec;
use crate::*;

const V31: ProtocolVersion = ProtocolVersion::V3_1;
const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

/// A frame: first byte, remaining length, body. Leaked so that decoded packets may borrow
/// from it for the rest of the test.
fn frame(first: u8, body: &[u8]) -> &'static [u8] {
    let mut out = vec![first];
    let mut len = [0; 4];
    let n = varint::write(body.len() as u32, &mut len);
    out.extend_from_slice(&len[..n]);
    out.extend_from_slice(body);
    out.leak()
}

fn s(v: &str) -> Vec<u8> {
    let mut out = (v.len() as u16).to_be_bytes().to_vec();
    out.extend_from_slice(v.as_bytes());
    out
}

fn dec_as(v: ProtocolVersion, sender: Sender, bytes: &[u8]) -> Result<Packet<'_>, Error> {
    match decode(bytes, &DecodeOptions::new(v).sender(sender))? {
        Status::Complete { packet, consumed } => {
            assert_eq!(consumed, bytes.len(), "the test frame is one packet");
            Ok(packet)
        }
        Status::Incomplete { needed } => panic!("incomplete, {needed} more"),
    }
}

fn dec(v: ProtocolVersion, bytes: &[u8]) -> Result<Packet<'_>, Error> {
    dec_as(v, Sender::Either, bytes)
}

fn enc(v: ProtocolVersion, p: &Packet<'_>) -> Vec<u8> {
    p.encode_to_vec(v).expect("encodable")
}

fn id(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

/// A CONNECT body from its parts.
fn connect_body(
    name: &str,
    level: u8,
    flags: u8,
    props: Option<&[u8]>,
    payload: &[&[u8]],
) -> Vec<u8> {
    let mut b = s(name);
    b.push(level);
    b.push(flags);
    b.extend_from_slice(&60u16.to_be_bytes());
    if let Some(p) = props {
        b.push(p.len() as u8);
        b.extend_from_slice(p);
    }
    for field in payload {
        b.extend_from_slice(field);
    }
    b
}

// ---- Framing ----------------------------------------------------------------------------

#[test]
fn incomplete_needs_one_until_the_header_is_known_then_exact() {
    let bytes = enc(
        V4,
        &Publish::new(Topic::new("a/b").unwrap(), b"hello", QosPid::AtMostOnce).into(),
    );
    let opts = DecodeOptions::new(V4);
    assert_eq!(decode(&[], &opts), Ok(Status::Incomplete { needed: 1 }));
    assert_eq!(
        decode(&bytes[..1], &opts),
        Ok(Status::Incomplete { needed: 1 })
    );
    for k in 2..bytes.len() {
        assert_eq!(
            decode(&bytes[..k], &opts),
            Ok(Status::Incomplete {
                needed: bytes.len() - k
            })
        );
    }
    // A multi-byte remaining length in pieces.
    assert_eq!(
        decode(&[0x30, 0x80], &opts),
        Ok(Status::Incomplete { needed: 1 })
    );
}

#[test]
fn remaining_length_fifth_byte_is_malformed() {
    let opts = DecodeOptions::new(V4);
    let e = decode(&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], &opts).unwrap_err();
    assert_eq!(e, Error::VarIntTooLong);
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn mqtt_1_5_5_1_remaining_length_must_be_minimal() {
    let opts = DecodeOptions::new(V5);
    assert_eq!(
        decode(&[0xC0, 0x80, 0x00], &opts),
        Err(Error::VarIntNotMinimal)
    );
    // Also inside a packet: a property length of 0 encoded in two bytes.
    let bytes = frame(0x40, &[0x00, 0x01, 0x00, 0x80, 0x00]);
    assert_eq!(dec(V5, bytes), Err(Error::VarIntNotMinimal));
}

#[test]
fn oversize_is_refused_from_the_fixed_header_alone() {
    let opts = DecodeOptions::new(V4).max_packet_size(100);
    // Only the header of a 1,000-byte PUBLISH has arrived.
    let e = decode(&[0x30, 0xE5, 0x07], &opts).unwrap_err();
    assert_eq!(
        e,
        Error::PacketTooLarge {
            size: 1000,
            max: 100
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::PacketTooLarge);
    // Exactly the maximum passes.
    let p = enc(
        V4,
        &Publish::new(Topic::new("t").unwrap(), &[0; 95], QosPid::AtMostOnce).into(),
    );
    assert_eq!(p.len(), 100);
    assert!(decode(&p, &opts).is_ok());
}

#[test]
fn reserved_packet_types_are_refused() {
    assert!(matches!(
        dec(V4, &[0x00, 0x00]),
        Err(Error::InvalidPacketType { nibble: 0, .. })
    ));
    // AUTH exists only in 5.0.
    assert!(matches!(
        dec(V4, &[0xF0, 0x00]),
        Err(Error::InvalidPacketType { nibble: 15, .. })
    ));
    assert!(matches!(
        dec(V31, &[0xF0, 0x00]),
        Err(Error::InvalidPacketType { nibble: 15, .. })
    ));
    assert_eq!(dec(V5, &[0xF0, 0x00]), Ok(Packet::Auth(Auth::default())));
}

#[test]
fn mqtt_2_2_2_1_reserved_flags_of_every_packet_type() {
    // [MQTT-2.2.2-1] [MQTT-2.2.2-2] (3.1.1) and [MQTT-2.1.3-1] (5.0): every type but PUBLISH
    // has fixed flags; any other value is malformed.
    for nibble in [1u8, 2, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15] {
        let t = PacketType::from_nibble(nibble).unwrap();
        let required = t.required_flags().unwrap();
        for flags in 0..16u8 {
            if flags == required {
                continue;
            }
            let e = decode(&[nibble << 4 | flags, 0x00], &DecodeOptions::new(V5)).unwrap_err();
            assert_eq!(
                e,
                Error::InvalidFlags { packet: t, flags },
                "{t:?} {flags:#b}"
            );
            assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
        }
    }
}

#[test]
fn mqtt_3_6_1_1_pubrel_flags_are_0010() {
    assert_eq!(
        dec(V4, &[0x60, 0x02, 0x00, 0x01]),
        Err(Error::InvalidFlags {
            packet: PacketType::PubRel,
            flags: 0
        })
    );
    assert_eq!(
        dec(V4, &[0x62, 0x02, 0x00, 0x01]),
        Ok(Packet::PubRel(PubAck::new(id(1))))
    );
}

#[test]
fn mqtt_3_8_1_1_subscribe_flags_are_0010() {
    let body = [&[0x00, 0x01][..], &s("a"), &[0x00]].concat();
    assert!(matches!(
        dec(V4, frame(0x80, &body)),
        Err(Error::InvalidFlags { .. })
    ));
    assert!(dec(V4, frame(0x82, &body)).is_ok());
}

#[test]
fn mqtt_3_10_1_1_unsubscribe_flags_are_0010() {
    let body = [&[0x00, 0x01][..], &s("a")].concat();
    assert!(matches!(
        dec(V4, frame(0xA0, &body)),
        Err(Error::InvalidFlags { .. })
    ));
    assert!(dec(V4, frame(0xA2, &body)).is_ok());
}

#[test]
fn mqtt_3_14_1_1_disconnect_reserved_flags() {
    assert!(matches!(
        dec(V4, &[0xE1, 0x00]),
        Err(Error::InvalidFlags { .. })
    ));
    assert!(matches!(
        dec(V5, &[0xE8, 0x00]),
        Err(Error::InvalidFlags { .. })
    ));
}

#[test]
fn mqtt_3_15_1_1_auth_flags_are_zero() {
    assert!(matches!(
        dec(V5, &[0xF1, 0x00]),
        Err(Error::InvalidFlags { .. })
    ));
}

#[test]
fn ping_with_a_body_is_malformed() {
    assert_eq!(
        dec(V4, &[0xC0, 0x01, 0x00]),
        Err(Error::TrailingBytes {
            packet: PacketType::PingReq,
            extra: 1
        })
    );
    assert_eq!(dec(V4, &[0xD0, 0x00]), Ok(Packet::PingResp));
}

// ---- PUBLISH --------------------------------------------------------------------------

#[test]
fn mqtt_3_3_1_4_qos_3_is_malformed() {
    let e = dec(V4, frame(0x36, &[&s("a")[..], &[0, 1]].concat())).unwrap_err();
    assert_eq!(e, Error::InvalidQoS { qos: 3 });
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn mqtt_3_3_1_2_no_dup_on_qos_0() {
    assert_eq!(dec(V4, frame(0x38, &s("a"))), Err(Error::DupWithQoS0));
    let mut p = Publish::new(Topic::new("a").unwrap(), b"", QosPid::AtMostOnce);
    p.dup = true;
    assert_eq!(Packet::Publish(p).encoded_len(V4), Err(Error::DupWithQoS0));
}

#[test]
fn mqtt_2_3_1_1_packet_ids_are_non_zero() {
    let zero = PacketType::Publish;
    assert_eq!(
        dec(V4, frame(0x32, &[&s("a")[..], &[0, 0]].concat())),
        Err(Error::ZeroPacketId { packet: zero })
    );
    for (first, t) in [
        (0x40, PacketType::PubAck),
        (0x50, PacketType::PubRec),
        (0x62, PacketType::PubRel),
        (0x70, PacketType::PubComp),
        (0xB0, PacketType::UnsubAck),
    ] {
        assert_eq!(
            dec(V4, frame(first, &[0, 0])),
            Err(Error::ZeroPacketId { packet: t })
        );
    }
    let sub = [&[0, 0][..], &s("a"), &[0]].concat();
    assert_eq!(
        dec(V4, frame(0x82, &sub)),
        Err(Error::ZeroPacketId {
            packet: PacketType::Subscribe
        })
    );
    assert_eq!(PacketId::new(0), None);
}

#[test]
fn mqtt_2_3_1_5_qos_0_has_no_packet_id() {
    // [MQTT-2.3.1-5] (3.1.1) / [MQTT-2.2.1-2] (5.0): the two bytes after a QoS 0 topic are
    // payload, not an identifier.
    let Packet::Publish(p) = dec(V4, frame(0x30, &[&s("a")[..], &[0, 7]].concat())).unwrap() else {
        panic!()
    };
    assert_eq!(p.packet_id(), None);
    assert_eq!(p.payload, &[0, 7]);
    let bytes = enc(
        V5,
        &Publish::new(Topic::new("a").unwrap(), b"x", QosPid::AtMostOnce).into(),
    );
    assert_eq!(bytes, [0x30, 0x05, 0x00, 0x01, b'a', 0x00, b'x']);
}

#[test]
fn mqtt_3_3_2_1_topic_is_a_utf8_string() {
    let bad = frame(0x30, &[0x00, 0x02, 0xC3, 0x28]);
    assert_eq!(
        dec(V4, bad),
        Err(Error::InvalidUtf8 {
            packet: PacketType::Publish
        })
    );
}

#[test]
fn mqtt_3_3_2_2_no_wildcards_in_topic_names() {
    for topic in ["a/+", "#", "a/#", "+"] {
        let e = dec(V4, frame(0x30, &s(topic))).unwrap_err();
        assert!(
            matches!(
                e,
                Error::InvalidTopicName(mqtt_topic::Error::WildcardInName { .. })
            ),
            "{topic}"
        );
        assert_eq!(e.reason_code(), ReasonCode::TopicNameInvalid);
        // A PUBLISH to encode takes a `Topic`, which refuses the name.
        assert!(matches!(
            Topic::new(topic),
            Err(Error::InvalidTopicName(
                mqtt_topic::Error::WildcardInName { .. }
            ))
        ));
    }
}

#[test]
fn empty_topic_is_invalid_without_an_alias() {
    // 3.1.1: [MQTT-4.7.3-1] topic names are at least one character.
    assert!(matches!(
        dec(V4, frame(0x30, &s(""))),
        Err(Error::InvalidTopicName(_))
    ));
    // 5.0: allowed only with a Topic Alias.
    let e = dec(V5, frame(0x30, &[&s("")[..], &[0]].concat())).unwrap_err();
    assert_eq!(e, Error::EmptyTopicWithoutAlias);
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    let Packet::Publish(p) =
        dec(V5, frame(0x30, &[&s("")[..], &[3, 0x23, 0, 9]].concat())).unwrap()
    else {
        panic!()
    };
    assert_eq!(p.properties.topic_alias.map(|a| a.get()), Some(9));
    assert_eq!(
        enc(V5, &Packet::Publish(p)),
        frame(0x30, &[&s("")[..], &[3, 0x23, 0, 9]].concat())
    );
    // The encoder refuses what the decoder does, on both of its paths: a PUBLISH without
    // properties (written without sizing them) and one with a property other than an alias.
    let mut bare = Publish::new(Topic::EMPTY, b"x", QosPid::AtMostOnce);
    let empty = Error::InvalidTopicName(mqtt_topic::Error::Empty);
    let mut out = [0u8; 64];
    for v in [V4, V5] {
        assert_eq!(Packet::Publish(bare).encode(v, &mut out), Err(empty));
        assert_eq!(Packet::Publish(bare).encoded_len(v), Err(empty));
    }
    bare.properties.message_expiry_interval = Some(5);
    assert_eq!(Packet::Publish(bare).encode(V5, &mut out), Err(empty));
    bare.properties.topic_alias = core::num::NonZeroU16::new(9);
    assert!(Packet::Publish(bare).encode(V5, &mut out).is_ok());
}

#[test]
fn mqtt_3_3_2_8_topic_alias_zero() {
    let e = dec(V5, frame(0x30, &[&s("a")[..], &[3, 0x23, 0, 0]].concat())).unwrap_err();
    assert_eq!(
        e,
        Error::InvalidPropertyValue {
            id: PropertyId::TopicAlias,
            packet: PacketType::Publish
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::TopicAliasInvalid);
}

#[test]
fn mqtt_3_3_2_13_and_14_response_topic_is_a_topic_name() {
    let ok = frame(0x30, &[&s("a")[..], &[4, 0x08], &s("r")].concat());
    let Packet::Publish(p) = dec(V5, ok).unwrap() else {
        panic!()
    };
    assert_eq!(p.properties.response_topic, Some("r"));
    let wild = frame(0x30, &[&s("a")[..], &[4, 0x08], &s("+")].concat());
    assert!(matches!(dec(V5, wild), Err(Error::InvalidTopicName(_))));
    let bad_utf8 = frame(0x30, &[&s("a")[..], &[4, 0x08, 0, 1, 0xFF]].concat());
    assert!(matches!(dec(V5, bad_utf8), Err(Error::InvalidUtf8 { .. })));
}

#[test]
fn mqtt_3_3_2_19_content_type_is_a_utf8_string() {
    let bad = frame(0x30, &[&s("a")[..], &[5, 0x03, 0, 2, 0xED, 0xA0]].concat());
    assert!(matches!(dec(V5, bad), Err(Error::InvalidUtf8 { .. })));
    let ok = frame(0x30, &[&s("a")[..], &[7, 0x03], &s("json")].concat());
    let Packet::Publish(p) = dec(V5, ok).unwrap() else {
        panic!()
    };
    assert_eq!(p.properties.content_type, Some("json"));
}

#[test]
fn mqtt_3_3_4_6_no_subscription_id_from_a_client() {
    let bytes = frame(0x30, &[&s("a")[..], &[2, 0x0B, 5]].concat());
    assert_eq!(
        dec_as(V5, Sender::Client, bytes),
        Err(Error::SubscriptionIdFromClient)
    );
    let Packet::Publish(p) = dec_as(V5, Sender::Server, bytes).unwrap() else {
        panic!()
    };
    assert_eq!(
        p.properties
            .subscription_identifiers
            .iter()
            .map(|i| i.get())
            .collect::<Vec<_>>(),
        [5]
    );
}

#[test]
fn publish_allows_repeated_subscription_ids_and_user_properties() {
    let props = [
        &[0x0B, 1, 0x0B, 0x80, 0x01, 0x26][..],
        &s("k"),
        &s("v1"),
        &[0x26],
        &s("k"),
        &s("v2"),
    ]
    .concat();
    let body = [&s("a")[..], &[props.len() as u8], &props, b"payload"].concat();
    let Packet::Publish(p) = dec_as(V5, Sender::Server, frame(0x30, &body)).unwrap() else {
        panic!()
    };
    let ids: Vec<u32> = p
        .properties
        .subscription_identifiers
        .iter()
        .map(|i| i.get())
        .collect();
    assert_eq!(ids, [1, 128]);
    let users: Vec<_> = p.properties.user_properties.iter().collect();
    assert_eq!(users, [("k", "v1"), ("k", "v2")]);
    assert_eq!(p.payload, b"payload");
}

// ---- Strings ----------------------------------------------------------------------------

#[test]
fn mqtt_1_5_4_1_ill_formed_utf8_and_surrogates() {
    // [MQTT-1.5.4-1] (5.0) / [MQTT-1.5.3-1] (3.1.1): an encoded surrogate (U+D800 as
    // ED A0 80), an overlong form and a stray continuation byte.
    for bad in [
        &[0xED, 0xA0, 0x80][..],
        &[0xC0, 0xAF],
        &[0x80],
        &[0xF4, 0x90, 0x80, 0x80],
    ] {
        let mut body = (bad.len() as u16).to_be_bytes().to_vec();
        body.extend_from_slice(bad);
        let e = dec(V4, frame(0x30, &body)).unwrap_err();
        assert_eq!(
            e,
            Error::InvalidUtf8 {
                packet: PacketType::Publish
            }
        );
        assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
    }
}

#[test]
fn mqtt_1_5_4_2_no_null_character_in_strings() {
    // [MQTT-1.5.4-2] (5.0) / [MQTT-1.5.3-2] (3.1.1), in a topic, a client id and a property.
    let e = dec(V4, frame(0x30, &s("a\0b"))).unwrap_err();
    assert_eq!(
        e,
        Error::NullCharacter {
            packet: PacketType::Publish
        }
    );
    let c = connect_body("MQTT", 4, 0x02, None, &[&s("id\0")]);
    assert_eq!(
        dec(V4, frame(0x10, &c)),
        Err(Error::NullCharacter {
            packet: PacketType::Connect
        })
    );
    let p = frame(0x30, &[&s("a")[..], &[4, 0x03], &s("\0")].concat());
    assert_eq!(
        dec(V5, p),
        Err(Error::NullCharacter {
            packet: PacketType::Publish
        })
    );
    // Encoding refuses it too.
    let c = Connect::new(V4, "a\0");
    assert!(matches!(
        Packet::Connect(c).encoded_len(V4),
        Err(Error::NullCharacter { .. })
    ));
}

#[test]
fn mqtt_1_5_4_3_bom_is_kept() {
    // [MQTT-1.5.4-3] (5.0) / [MQTT-1.5.3-3] (3.1.1): EF BB BF stays U+FEFF.
    let Packet::Publish(p) = dec(V4, frame(0x30, &s("\u{FEFF}a"))).unwrap() else {
        panic!()
    };
    assert_eq!(p.topic, "\u{FEFF}a");
    assert_eq!(p.topic.as_bytes()[..3], [0xEF, 0xBB, 0xBF]);
}

#[test]
fn mqtt_1_5_7_1_both_halves_of_a_string_pair_are_strings() {
    let bad_value = [&[0x26][..], &s("k"), &[0, 1, 0xFF]].concat();
    let body = [&s("a")[..], &[bad_value.len() as u8], &bad_value].concat();
    assert!(matches!(
        dec(V5, frame(0x30, &body)),
        Err(Error::InvalidUtf8 { .. })
    ));
    let nul_key = [&[0x26][..], &s("\0"), &s("v")].concat();
    let body = [&s("a")[..], &[nul_key.len() as u8], &nul_key].concat();
    assert!(matches!(
        dec(V5, frame(0x30, &body)),
        Err(Error::NullCharacter { .. })
    ));
}

#[test]
fn strings_longer_than_65535_bytes_are_refused_on_encode() {
    let long = "a".repeat(70_000);
    let c = Connect::new(V4, &long);
    assert_eq!(
        Packet::Connect(c).encoded_len(V4),
        Err(Error::FieldTooLong { len: 70_000 })
    );
}

// ---- CONNECT ----------------------------------------------------------------------------

#[test]
fn mqtt_3_1_2_1_protocol_name() {
    let e = dec(
        V4,
        frame(0x10, &connect_body("MQTX", 4, 2, None, &[&s("c")])),
    )
    .unwrap_err();
    assert_eq!(e, Error::InvalidProtocolName);
    assert_eq!(e.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    // A known name with an unknown level gets 0x84 too.
    let e = dec(
        V4,
        frame(0x10, &connect_body("MQTT", 6, 2, None, &[&s("c")])),
    )
    .unwrap_err();
    assert_eq!(e, Error::UnsupportedProtocolVersion { level: 6 });
    assert_eq!(e.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    // The name must match the level.
    let e = dec(
        V4,
        frame(0x10, &connect_body("MQIsdp", 4, 2, None, &[&s("c")])),
    )
    .unwrap_err();
    assert_eq!(e, Error::UnsupportedProtocolVersion { level: 4 });
}

#[test]
fn connect_carries_its_own_level() {
    // A 3.1 CONNECT decodes even when the connection was configured for 5.0, and vice versa.
    let Packet::Connect(c) = dec(
        V5,
        frame(0x10, &connect_body("MQIsdp", 3, 2, None, &[&s("c")])),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(c.protocol, V31);
    let Packet::Connect(c) = dec(
        V31,
        frame(0x10, &connect_body("MQTT", 5, 2, Some(&[]), &[&s("c")])),
    )
    .unwrap() else {
        panic!()
    };
    assert_eq!(c.protocol, V5);
}

/// mosquitto's bridge extension (not in the standard; [MQTT-3.1.2-2] lets a server refuse
/// an unknown level, but refusing this one makes every default mosquitto bridge retry).
#[test]
fn bridge_bit_in_the_protocol_level() {
    // The bytes mosquitto 2.0.11 sends for `bridge_protocol_version mqttv311` and
    // `mqttv31` (captured on a socket): level 0x84 / 0x83.
    for (name, level, version) in [("MQTT", 0x84, V4), ("MQIsdp", 0x83, V31)] {
        let body = connect_body(name, level, 0, None, &[&s("bridge")]);
        let Packet::Connect(c) = dec(V5, frame(0x10, &body)).unwrap() else {
            panic!()
        };
        assert_eq!((c.protocol, c.bridge), (version, true));
        assert!(!c.clean_start);
        // Encoded back with the bit, byte for byte.
        assert_eq!(enc(version, &Packet::Connect(c)), frame(0x10, &body));
    }
    let Packet::Connect(c) = dec(
        V4,
        frame(0x10, &connect_body("MQTT", 4, 2, None, &[&s("c")])),
    )
    .unwrap() else {
        panic!()
    };
    assert!(!c.bridge);
    // mosquitto's 5.0 bridges send level 5; 0x85 is no level anyone sends.
    let e = dec(
        V4,
        frame(0x10, &connect_body("MQTT", 0x85, 2, Some(&[]), &[&s("c")])),
    )
    .unwrap_err();
    assert_eq!(e, Error::UnsupportedProtocolVersion { level: 0x85 });
    assert_eq!(e.reason_code(), ReasonCode::UnsupportedProtocolVersion);
    // The name must still match the level under the bit.
    let e = dec(
        V4,
        frame(0x10, &connect_body("MQIsdp", 0x84, 2, None, &[&s("c")])),
    )
    .unwrap_err();
    assert_eq!(e, Error::UnsupportedProtocolVersion { level: 0x84 });
    // A 5.0 CONNECT cannot carry the flag: refused, not silently dropped.
    let mut c = Connect::new(V5, "c");
    c.bridge = true;
    assert!(matches!(
        Packet::Connect(c).encoded_len(V5),
        Err(Error::NotInVersion { .. })
    ));
}

#[test]
fn mqtt_3_1_2_3_reserved_connect_flag() {
    let e = dec(
        V4,
        frame(0x10, &connect_body("MQTT", 4, 0x03, None, &[&s("c")])),
    )
    .unwrap_err();
    assert_eq!(e, Error::ConnectReservedFlag);
    assert_eq!(e.reason_code(), ReasonCode::MalformedPacket);
}

#[test]
fn mqtt_3_1_2_11_will_qos_and_retain_need_the_will_flag() {
    // [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-15] (3.1.1), [MQTT-3.1.2-11] [MQTT-3.1.2-13] (5.0)
    for flags in [0x08u8, 0x10, 0x20, 0x38] {
        let body = connect_body("MQTT", 4, 0x02 | flags, None, &[&s("c")]);
        assert_eq!(
            dec(V4, frame(0x10, &body)),
            Err(Error::WillFlagsWithoutWill),
            "{flags:#x}"
        );
    }
}

#[test]
fn mqtt_3_1_2_14_will_qos_3_is_malformed() {
    // [MQTT-3.1.2-14] (3.1.1) / [MQTT-3.1.2-12] (5.0)
    let body = connect_body(
        "MQTT",
        4,
        0x02 | 0x04 | 0x18,
        None,
        &[&s("c"), &s("w"), &s("m")],
    );
    assert_eq!(
        dec(V4, frame(0x10, &body)),
        Err(Error::InvalidQoS { qos: 3 })
    );
}

#[test]
fn mqtt_3_1_2_9_will_fields_present_with_the_will_flag() {
    // Will flag set but the payload ends after the client id.
    let body = connect_body("MQTT", 4, 0x06, None, &[&s("c")]);
    assert_eq!(
        dec(V4, frame(0x10, &body)),
        Err(Error::UnexpectedEnd {
            packet: PacketType::Connect
        })
    );
    // 5.0: will properties, topic and payload, in that order ([MQTT-3.1.3-1]).
    let body = connect_body(
        "MQTT",
        5,
        0x06 | 0x08 | 0x20,
        Some(&[]),
        &[&s("c"), &[2, 0x01, 1], &s("w/t"), &s("bye")],
    );
    let Packet::Connect(c) = dec(V5, frame(0x10, &body)).unwrap() else {
        panic!()
    };
    let w = c.will.unwrap();
    assert_eq!(
        (w.topic, w.payload, w.qos, w.retain),
        ("w/t", &b"bye"[..], QoS::AtLeastOnce, true)
    );
    assert_eq!(w.properties.payload_format_indicator, Some(true));
}

#[test]
fn mqtt_3_1_3_10_will_topic_is_a_valid_topic_name() {
    // [MQTT-3.1.3-10] (3.1.1) / [MQTT-3.1.3-11] (5.0)
    let body = connect_body("MQTT", 4, 0x06, None, &[&s("c"), &s("w/#"), &s("m")]);
    assert!(matches!(
        dec(V4, frame(0x10, &body)),
        Err(Error::InvalidTopicName(_))
    ));
    let body = connect_body("MQTT", 4, 0x06, None, &[&s("c"), &[0, 1, 0xFF], &s("m")]);
    assert!(matches!(
        dec(V4, frame(0x10, &body)),
        Err(Error::InvalidUtf8 { .. })
    ));
}

#[test]
fn mqtt_3_1_2_19_username_and_password_follow_their_flags() {
    // [MQTT-3.1.2-18..21] (3.1.1) / [MQTT-3.1.2-16..19] (5.0)
    let both = connect_body("MQTT", 4, 0xC2, None, &[&s("c"), &s("user"), &s("pw")]);
    let Packet::Connect(c) = dec(V4, frame(0x10, &both)).unwrap() else {
        panic!()
    };
    assert_eq!((c.username, c.password), (Some("user"), Some(&b"pw"[..])));
    // Flag set, field missing.
    let missing = connect_body("MQTT", 4, 0xC2, None, &[&s("c"), &s("user")]);
    assert!(matches!(
        dec(V4, frame(0x10, &missing)),
        Err(Error::UnexpectedEnd { .. })
    ));
    // Field present, flag clear: the extra bytes are malformed.
    let extra = connect_body("MQTT", 4, 0x02, None, &[&s("c"), &s("user")]);
    assert!(matches!(
        dec(V4, frame(0x10, &extra)),
        Err(Error::TrailingBytes { .. })
    ));
}

#[test]
fn mqtt_3_1_3_11_username_is_utf8() {
    // [MQTT-3.1.3-11] (3.1.1) / [MQTT-3.1.3-12] (5.0)
    let body = connect_body("MQTT", 4, 0x82, None, &[&s("c"), &[0, 1, 0xFE]]);
    assert!(matches!(
        dec(V4, frame(0x10, &body)),
        Err(Error::InvalidUtf8 { .. })
    ));
}

#[test]
fn mqtt_3_1_2_22_password_needs_a_username_before_5() {
    let body = connect_body("MQTT", 4, 0x42, None, &[&s("c"), &s("pw")]);
    assert_eq!(
        dec(V4, frame(0x10, &body)),
        Err(Error::PasswordWithoutUsername)
    );
    let body = connect_body("MQIsdp", 3, 0x42, None, &[&s("c"), &s("pw")]);
    assert_eq!(
        dec(V4, frame(0x10, &body)),
        Err(Error::PasswordWithoutUsername)
    );
    // 5.0 allows it.
    let body = connect_body("MQTT", 5, 0x42, Some(&[]), &[&s("c"), &s("pw")]);
    let Packet::Connect(c) = dec(V5, frame(0x10, &body)).unwrap() else {
        panic!()
    };
    assert_eq!((c.username, c.password), (None, Some(&b"pw"[..])));
    let mut c = Connect::new(V4, "c");
    c.password = Some(b"pw");
    assert_eq!(
        Packet::Connect(c).encoded_len(V4),
        Err(Error::PasswordWithoutUsername)
    );
}

#[test]
fn mqtt_3_1_3_3_client_id_comes_first_and_may_be_empty() {
    // [MQTT-3.1.3-3] [MQTT-3.1.3-4]
    let body = connect_body("MQTT", 4, 0x02, None, &[&s("")]);
    let Packet::Connect(c) = dec(V4, frame(0x10, &body)).unwrap() else {
        panic!()
    };
    assert_eq!(c.client_id, "");
    let body = connect_body("MQTT", 4, 0x02, None, &[]);
    assert!(matches!(
        dec(V4, frame(0x10, &body)),
        Err(Error::UnexpectedEnd { .. })
    ));
}

#[test]
fn connect_properties_are_checked() {
    // Receive Maximum 0 is a Protocol Error.
    let body = connect_body("MQTT", 5, 0x02, Some(&[0x21, 0, 0]), &[&s("c")]);
    let e = dec(V5, frame(0x10, &body)).unwrap_err();
    assert_eq!(
        e,
        Error::InvalidPropertyValue {
            id: PropertyId::ReceiveMaximum,
            packet: PacketType::Connect
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    // Maximum Packet Size 0 too.
    let body = connect_body("MQTT", 5, 0x02, Some(&[0x27, 0, 0, 0, 0]), &[&s("c")]);
    assert!(matches!(
        dec(V5, frame(0x10, &body)),
        Err(Error::InvalidPropertyValue { .. })
    ));
    // Request Problem Information must be 0 or 1.
    let body = connect_body("MQTT", 5, 0x02, Some(&[0x17, 2]), &[&s("c")]);
    assert!(matches!(
        dec(V5, frame(0x10, &body)),
        Err(Error::InvalidPropertyValue { .. })
    ));
    // A duplicate.
    let body = connect_body(
        "MQTT",
        5,
        0x02,
        Some(&[0x11, 0, 0, 0, 1, 0x11, 0, 0, 0, 2]),
        &[&s("c")],
    );
    let e = dec(V5, frame(0x10, &body)).unwrap_err();
    assert_eq!(
        e,
        Error::DuplicateProperty {
            id: PropertyId::SessionExpiryInterval,
            packet: PacketType::Connect
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    // A property CONNECT may not carry.
    let body = connect_body("MQTT", 5, 0x02, Some(&[0x23, 0, 1]), &[&s("c")]);
    assert_eq!(
        dec(V5, frame(0x10, &body)),
        Err(Error::PropertyNotAllowed {
            id: PropertyId::TopicAlias,
            packet: PacketType::Connect
        })
    );
    // An identifier 5.0 does not define.
    let body = connect_body("MQTT", 5, 0x02, Some(&[0x7F, 0]), &[&s("c")]);
    assert!(matches!(
        dec(V5, frame(0x10, &body)),
        Err(Error::UnknownProperty { id: 0x7F, .. })
    ));
    // A property length running past the packet.
    let body = connect_body("MQTT", 5, 0x02, Some(&[0x11, 0, 0]), &[]);
    assert!(matches!(
        dec(V5, frame(0x10, &body)),
        Err(Error::UnexpectedEnd { .. })
    ));
}

#[test]
fn v5_fields_are_refused_when_encoding_3_1_1() {
    let mut c = Connect::new(V4, "c");
    c.properties.session_expiry_interval = Some(10);
    assert!(matches!(
        Packet::Connect(c).encoded_len(V4),
        Err(Error::NotInVersion { .. })
    ));
    let mut p = Publish::new(Topic::new("a").unwrap(), b"", QosPid::AtMostOnce);
    p.properties.message_expiry_interval = Some(1);
    assert!(matches!(
        Packet::Publish(p).encoded_len(V4),
        Err(Error::NotInVersion { .. })
    ));
    assert!(matches!(
        Packet::Auth(Auth::default()).encoded_len(V4),
        Err(Error::NotInVersion { .. })
    ));
    let d = Disconnect::new(ReasonCode::ServerBusy);
    assert!(matches!(
        Packet::Disconnect(d).encoded_len(V4),
        Err(Error::NotInVersion { .. })
    ));
    let mut ack = PubAck::new(id(1));
    ack.reason_code = ReasonCode::NotAuthorized;
    assert!(matches!(
        Packet::PubAck(ack).encoded_len(V4),
        Err(Error::NotInVersion { .. })
    ));
    let subs = [Subscription {
        filter: "a",
        options: SubscriptionOptions {
            no_local: true,
            ..SubscriptionOptions::default()
        },
    }];
    assert!(matches!(
        Packet::Subscribe(Subscribe::new(id(1), List::new(&subs))).encoded_len(V4),
        Err(Error::NotInVersion { .. })
    ));
}

// ---- CONNACK ----------------------------------------------------------------------------

#[test]
fn mqtt_3_2_2_1_connack_reserved_flags() {
    assert_eq!(
        dec(V4, &[0x20, 0x02, 0x02, 0x00]),
        Err(Error::InvalidConnAckFlags { flags: 2 })
    );
    assert_eq!(
        dec(V5, &[0x20, 0x03, 0x80, 0x00, 0x00]),
        Err(Error::InvalidConnAckFlags { flags: 0x80 })
    );
}

#[test]
fn mqtt_3_2_2_8_connack_reason_codes() {
    // 5.0: only the CONNACK table; 0x04 (Disconnect with Will) is not in it.
    assert!(matches!(
        dec(V5, &[0x20, 0x03, 0x00, 0x04, 0x00]),
        Err(Error::InvalidReasonCode { code: 4, .. })
    ));
    let Packet::ConnAck(c) = dec(V5, &[0x20, 0x03, 0x00, 0x8A, 0x00]).unwrap() else {
        panic!()
    };
    assert_eq!(c.reason_code, ReasonCode::Banned);
    // 3.1.1: return codes 0..=5 map onto their 5.0 meanings.
    let Packet::ConnAck(c) = dec(V4, &[0x20, 0x02, 0x01, 0x04]).unwrap() else {
        panic!()
    };
    assert!(c.session_present);
    assert_eq!(c.reason_code, ReasonCode::BadUserNameOrPassword);
    assert!(matches!(
        dec(V4, &[0x20, 0x02, 0x00, 0x06]),
        Err(Error::InvalidReasonCode { .. })
    ));
    assert_eq!(
        enc(V4, &ConnAck::new(false, ReasonCode::NotAuthorized).into()),
        [0x20, 0x02, 0x00, 0x05]
    );
    assert!(ConnAck::new(false, ReasonCode::Banned).plan(V4).is_err());
}

#[test]
fn connack_maximum_qos_is_0_or_1() {
    assert!(matches!(
        dec(V5, &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x02]),
        Err(Error::InvalidPropertyValue {
            id: PropertyId::MaximumQoS,
            ..
        })
    ));
    let Packet::ConnAck(c) = dec(V5, &[0x20, 0x05, 0x00, 0x00, 0x02, 0x24, 0x01]).unwrap() else {
        panic!()
    };
    assert_eq!(c.properties.maximum_qos, Some(QoS::AtLeastOnce));
}

// ---- Acknowledgements -------------------------------------------------------------------

#[test]
fn mqtt_3_4_2_1_puback_and_pubrec_reason_codes() {
    // [MQTT-3.4.2-1] [MQTT-3.5.2-1]
    for first in [0x40u8, 0x50] {
        assert!(matches!(
            dec(V5, &[first, 0x03, 0, 1, 0x92]),
            Err(Error::InvalidReasonCode { code: 0x92, .. })
        ));
        let bytes = [first, 0x03, 0, 1, 0x10];
        let p = dec(V5, &bytes).unwrap();
        assert_eq!(enc(V5, &p), [first, 0x03, 0, 1, 0x10]);
    }
}

#[test]
fn mqtt_3_6_2_1_pubrel_and_pubcomp_reason_codes() {
    // [MQTT-3.6.2-1] [MQTT-3.7.2-1]
    for first in [0x62u8, 0x70] {
        assert!(matches!(
            dec(V5, &[first, 0x03, 0, 1, 0x10]),
            Err(Error::InvalidReasonCode { .. })
        ));
        assert!(dec(V5, &[first, 0x03, 0, 1, 0x92]).is_ok());
    }
    // [MQTT-3.7.2-1]
    assert!(matches!(
        dec(V5, &[0x70, 0x03, 0, 1, 0x80]),
        Err(Error::InvalidReasonCode { .. })
    ));
}

#[test]
fn acks_use_the_short_forms() {
    // Remaining length 2: Success without properties, in both directions.
    let ack = PubAck::new(id(9));
    assert_eq!(enc(V5, &Packet::PubAck(ack)), [0x40, 0x02, 0x00, 0x09]);
    assert_eq!(dec(V5, &[0x40, 0x02, 0x00, 0x09]), Ok(Packet::PubAck(ack)));
    // Remaining length 4 with an empty property block decodes the same.
    assert_eq!(
        dec(V5, &[0x40, 0x04, 0x00, 0x09, 0x00, 0x00]),
        Ok(Packet::PubAck(ack))
    );
    // 3.1.1 acks are exactly 2 bytes.
    assert!(matches!(
        dec(V4, &[0x40, 0x03, 0x00, 0x09, 0x00]),
        Err(Error::TrailingBytes { .. })
    ));
    assert!(matches!(
        dec(V4, &[0x40, 0x01, 0x00]),
        Err(Error::UnexpectedEnd { .. })
    ));
}

#[test]
fn ack_properties_carry_reason_string_and_user_properties_only() {
    let props = [&[0x1F][..], &s("why"), &[0x26], &s("k"), &s("v")].concat();
    let body = [&[0, 1, 0x80, props.len() as u8][..], &props].concat();
    let Packet::PubRec(p) = dec(V5, frame(0x50, &body)).unwrap() else {
        panic!()
    };
    assert_eq!(p.properties.reason_string, Some("why"));
    assert_eq!(
        p.properties.user_properties.iter().collect::<Vec<_>>(),
        [("k", "v")]
    );
    let body = [&[0, 1, 0x80, 5][..], &[0x02, 0, 0, 0, 1]].concat();
    assert!(matches!(
        dec(V5, frame(0x50, &body)),
        Err(Error::PropertyNotAllowed { .. })
    ));
}

// ---- SUBSCRIBE / SUBACK / UNSUBSCRIBE / UNSUBACK ----------------------------------------

#[test]
fn mqtt_3_8_3_3_subscribe_needs_a_filter() {
    // [MQTT-3.8.3-3] (3.1.1) / [MQTT-3.8.3-2] (5.0)
    let e = dec(V4, frame(0x82, &[0, 1])).unwrap_err();
    assert_eq!(
        e,
        Error::EmptyPayload {
            packet: PacketType::Subscribe
        }
    );
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    assert!(matches!(
        dec(V5, frame(0x82, &[0, 1, 0])),
        Err(Error::EmptyPayload { .. })
    ));
    assert!(Packet::Subscribe(Subscribe::new(id(1), List::new(&[])))
        .encoded_len(V4)
        .is_err());
}

#[test]
fn mqtt_3_8_3_1_filters_are_valid_utf8_filters() {
    let bad = [&[0, 1][..], &[0, 1, 0xFF], &[0]].concat();
    assert!(matches!(
        dec(V4, frame(0x82, &bad)),
        Err(Error::InvalidUtf8 { .. })
    ));
    let wild = [&[0, 1][..], &s("a/#/b"), &[0]].concat();
    let e = dec(V4, frame(0x82, &wild)).unwrap_err();
    assert!(matches!(e, Error::InvalidTopicFilter(_)));
    assert_eq!(e.reason_code(), ReasonCode::TopicFilterInvalid);
}

#[test]
fn mqtt_3_8_3_4_subscription_options_reserved_bits_3_1_1() {
    // [MQTT-3.8.3-4] (3.1.1): bits 7..2 reserved, QoS 3 invalid.
    for o in [0x04u8, 0x80, 0x03] {
        let body = [&[0, 1][..], &s("a"), &[o]].concat();
        assert!(
            matches!(
                dec(V4, frame(0x82, &body)),
                Err(Error::InvalidSubscriptionOptions { .. })
            ),
            "{o:#x}"
        );
    }
}

#[test]
fn mqtt_3_8_3_5_subscription_options_reserved_bits_5() {
    for o in [0x40u8, 0x80, 0x30, 0x03] {
        let body = [&[0, 1, 0][..], &s("a"), &[o]].concat();
        assert!(
            matches!(
                dec(V5, frame(0x82, &body)),
                Err(Error::InvalidSubscriptionOptions { .. })
            ),
            "{o:#x}"
        );
    }
    let body = [&[0, 1, 0][..], &s("a"), &[0x2E]].concat();
    let Packet::Subscribe(sub) = dec(V5, frame(0x82, &body)).unwrap() else {
        panic!()
    };
    let o = sub.filters.iter().next().unwrap().options;
    assert_eq!(
        o,
        SubscriptionOptions {
            qos: QoS::ExactlyOnce,
            no_local: true,
            retain_as_published: true,
            retain_handling: RetainHandling::DoNotSend
        }
    );
}

#[test]
fn mqtt_3_8_3_4_no_local_on_shared_subscription() {
    let body = [&[0, 1, 0][..], &s("$share/g/a"), &[0x04]].concat();
    let e = dec(V5, frame(0x82, &body)).unwrap_err();
    assert_eq!(e, Error::NoLocalOnSharedSubscription);
    assert_eq!(e.reason_code(), ReasonCode::ProtocolError);
    // Without No Local it is fine, and 3.1.1 has no shared subscriptions at all.
    let body = [&[0, 1, 0][..], &s("$share/g/a"), &[0x01]].concat();
    assert!(dec(V5, frame(0x82, &body)).is_ok());
}

#[test]
fn mqtt_4_8_2_1_shared_filters_are_checked_in_5() {
    for f in ["$share//a", "$share/g", "$share/g+/a"] {
        let body = [&[0, 1, 0][..], &s(f), &[0x01]].concat();
        assert!(
            matches!(
                dec(V5, frame(0x82, &body)),
                Err(Error::InvalidTopicFilter(_))
            ),
            "{f}"
        );
    }
}

#[test]
fn subscribe_lists_iterate_in_order() {
    let body = [&[0, 7][..], &s("a/+"), &[1], &s("b/#"), &[2]].concat();
    let Packet::Subscribe(sub) = dec(V4, frame(0x82, &body)).unwrap() else {
        panic!()
    };
    assert_eq!(sub.packet_id, id(7));
    let got: Vec<_> = sub
        .filters
        .iter()
        .map(|s| (s.filter, s.options.qos))
        .collect();
    assert_eq!(got, [("a/+", QoS::AtLeastOnce), ("b/#", QoS::ExactlyOnce)]);
    assert_eq!(sub.filters.len(), 2);
    assert_eq!(enc(V4, &Packet::Subscribe(sub)), frame(0x82, &body));
}

#[test]
fn mqtt_3_9_3_2_suback_codes() {
    // 3.1.1: only 0x00, 0x01, 0x02, 0x80.
    assert!(dec(V4, &[0x90, 0x06, 0, 1, 0x00, 0x01, 0x02, 0x80]).is_ok());
    assert!(matches!(
        dec(V4, &[0x90, 0x03, 0, 1, 0x87]),
        Err(Error::InvalidReasonCode { code: 0x87, .. })
    ));
    // 5.0: the SUBACK table.
    assert!(dec(V5, &[0x90, 0x05, 0, 1, 0, 0x87, 0xA2]).is_ok());
    assert!(matches!(
        dec(V5, &[0x90, 0x04, 0, 1, 0, 0x04]),
        Err(Error::InvalidReasonCode { .. })
    ));
    assert!(matches!(
        dec(V5, &[0x90, 0x03, 0, 1, 0]),
        Err(Error::EmptyPayload { .. })
    ));
}

#[test]
fn mqtt_3_10_3_2_unsubscribe_needs_a_filter() {
    assert!(matches!(
        dec(V4, frame(0xA2, &[0, 1])),
        Err(Error::EmptyPayload { .. })
    ));
    // [MQTT-3.10.3-1] UTF-8 filters.
    assert!(matches!(
        dec(V4, frame(0xA2, &[0, 1, 0, 1, 0xC0])),
        Err(Error::InvalidUtf8 { .. })
    ));
    let body = [&[0, 1][..], &s("a/+"), &s("#")].concat();
    let Packet::Unsubscribe(u) = dec(V4, frame(0xA2, &body)).unwrap() else {
        panic!()
    };
    assert_eq!(u.filters.iter().collect::<Vec<_>>(), ["a/+", "#"]);
}

#[test]
fn mqtt_3_11_3_2_unsuback_codes() {
    assert!(dec(V5, &[0xB0, 0x05, 0, 1, 0, 0x00, 0x11]).is_ok());
    assert!(matches!(
        dec(V5, &[0xB0, 0x04, 0, 1, 0, 0x01]),
        Err(Error::InvalidReasonCode { .. })
    ));
    // 3.1.1 UNSUBACK has no payload.
    assert!(dec(V4, &[0xB0, 0x02, 0, 1]).is_ok());
    assert!(matches!(
        dec(V4, &[0xB0, 0x03, 0, 1, 0]),
        Err(Error::TrailingBytes { .. })
    ));
}

// ---- DISCONNECT / AUTH ------------------------------------------------------------------

#[test]
fn mqtt_3_14_2_1_disconnect_reason_codes() {
    assert_eq!(
        dec(V5, &[0xE0, 0x00]),
        Ok(Packet::Disconnect(Disconnect::default()))
    );
    let Packet::Disconnect(d) = dec(V5, &[0xE0, 0x01, 0x8E]).unwrap() else {
        panic!()
    };
    assert_eq!(d.reason_code, ReasonCode::SessionTakenOver);
    assert!(matches!(
        dec(V5, &[0xE0, 0x01, 0x01]),
        Err(Error::InvalidReasonCode { .. })
    ));
    assert!(matches!(
        dec(V4, &[0xE0, 0x01, 0x00]),
        Err(Error::TrailingBytes { .. })
    ));
}

#[test]
fn mqtt_3_14_2_2_no_session_expiry_from_a_server() {
    let bytes = [0xE0, 0x07, 0x00, 0x05, 0x11, 0, 0, 0, 9];
    assert_eq!(
        dec_as(V5, Sender::Server, &bytes),
        Err(Error::SessionExpiryFromServer)
    );
    let Packet::Disconnect(d) = dec_as(V5, Sender::Client, &bytes).unwrap() else {
        panic!()
    };
    assert_eq!(d.properties.session_expiry_interval, Some(9));
}

#[test]
fn mqtt_3_15_2_1_auth_reason_codes() {
    assert!(dec(V5, &[0xF0, 0x01, 0x18]).is_ok());
    assert!(dec(V5, &[0xF0, 0x01, 0x19]).is_ok());
    assert!(matches!(
        dec(V5, &[0xF0, 0x01, 0x80]),
        Err(Error::InvalidReasonCode { .. })
    ));
    let props = [&[0x15][..], &s("SCRAM"), &[0x16, 0, 2, 1, 2]].concat();
    let body = [&[0x18, props.len() as u8][..], &props].concat();
    let Packet::Auth(a) = dec(V5, frame(0xF0, &body)).unwrap() else {
        panic!()
    };
    assert_eq!(a.properties.authentication_method, Some("SCRAM"));
    assert_eq!(a.properties.authentication_data, Some(&[1u8, 2][..]));
}

#[test]
fn mqtt_2_2_2_1_property_length_zero_is_still_written() {
    // [MQTT-2.2.2-1] (5.0): a packet without properties encodes Property Length 0.
    let bytes = enc(
        V5,
        &Subscribe::new(
            id(1),
            List::new(&[Subscription {
                filter: "a",
                options: SubscriptionOptions::default(),
            }]),
        )
        .into(),
    );
    assert_eq!(bytes, [0x82, 0x07, 0, 1, 0x00, 0, 1, b'a', 0]);
}

// ---- Encoding ---------------------------------------------------------------------------

#[test]
fn encode_into_a_short_buffer_writes_nothing() {
    let p = Packet::Publish(Publish::new(
        Topic::new("a/b").unwrap(),
        b"payload",
        QosPid::AtLeastOnce(id(3)),
    ));
    let len = p.encoded_len(V4).unwrap();
    let mut out = vec![0xAA; len - 1];
    assert_eq!(
        p.encode(V4, &mut out),
        Err(Error::BufferTooSmall { required: len })
    );
    assert!(out.iter().all(|&b| b == 0xAA));
    let mut out = vec![0; len];
    assert_eq!(p.encode(V4, &mut out), Ok(len));
}

#[test]
#[cfg(feature = "bytes")]
fn encode_to_bufmut_checks_room_first() {
    let p = Packet::PingReq;
    let mut small = [0u8; 1];
    let mut b = &mut small[..];
    assert_eq!(
        p.encode_to(V4, &mut b),
        Err(Error::BufferTooSmall { required: 2 })
    );
    let mut v = bytes::BytesMut::new();
    assert_eq!(p.encode_to(V4, &mut v), Ok(2));
    assert_eq!(&v[..], [0xC0, 0x00]);
}

// ---- Property-based round trips ---------------------------------------------------------

fn spec() -> impl Strategy<Value = PacketSpec> {
    proptest::collection::vec(any::<u8>(), 16..512).prop_filter_map("generator ran dry", |raw| {
        arbitrary::Arbitrary::arbitrary(&mut arbitrary::Unstructured::new(&raw)).ok()
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(3000))]

    /// Whatever the encoder accepts decodes to an equal packet, and `encoded_len` is exactly
    /// the number of bytes written, at every protocol level.
    #[test]
    fn encode_decode_round_trip(spec in spec()) {
        spec.with_packet(|p| {
            let v = spec.version;
            let Ok(len) = p.encoded_len(v) else {
                prop_assert!(p.encode_to_vec(v).is_err());
                return Ok(());
            };
            let mut buf = vec![0; len];
            prop_assert_eq!(p.encode(v, &mut buf), Ok(len));
            let opts = DecodeOptions::new(v).sender(Sender::Either);
            match decode(&buf, &opts) {
                Ok(Status::Complete { packet, consumed }) => {
                    prop_assert_eq!(consumed, len);
                    prop_assert_eq!(&packet, p);
                    // Re-encoding the decoded (wire-backed) form gives the same bytes.
                    prop_assert_eq!(packet.encode_to_vec(v).unwrap(), buf);
                }
                other => prop_assert!(false, "{:?} for {:?}", other, p),
            }
            Ok(())
        })?;
    }

    /// Arbitrary bytes never panic the decoder, and what decodes re-encodes and decodes equal.
    #[test]
    fn decode_never_panics(level in 3u8..=5, bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
        let v = ProtocolVersion::try_from(level).unwrap();
        let opts = DecodeOptions::new(v);
        if let Ok(Status::Complete { packet, consumed }) = decode(&bytes, &opts) {
            prop_assert!(consumed <= bytes.len());
            let version = match packet { Packet::Connect(c) => c.protocol, _ => v };
            let again = packet.encode_to_vec(version).unwrap();
            let Ok(Status::Complete { packet: p2, .. }) = decode(&again, &DecodeOptions::new(version)) else {
                return Err(TestCaseError::fail("re-encoded packet does not decode"));
            };
            prop_assert_eq!(p2, packet);
        }
    }
}

/// The generator must mostly produce encodable packets of every type, or the round trip
/// above would pass vacuously.
#[test]
fn generator_covers_every_packet_type_with_encodable_packets() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::deterministic();
    let strategy = spec();
    let mut ok = [[0u32; 16]; 3];
    let mut total = 0;
    // mosquitto's bridge flag: encodable below 5.0, refused at 5.0.
    let mut bridge = [0u32; 2];
    for _ in 0..3000 {
        let spec = strategy.new_tree(&mut runner).unwrap().current();
        spec.with_packet(|p| {
            total += 1;
            let encodable = p.encoded_len(spec.version).is_ok();
            if encodable {
                ok[spec.version as usize - 3][p.packet_type() as usize] += 1;
            }
            if let Packet::Connect(c) = p {
                if c.bridge {
                    bridge[usize::from(encodable)] += 1;
                }
            }
        });
    }
    assert!(
        bridge[0] > 0 && bridge[1] > 0,
        "bridge CONNECTs refused/encodable: {bridge:?}"
    );
    let encodable: u32 = ok.iter().flatten().sum();
    assert!(
        encodable * 10 >= total * 5,
        "only {encodable} of {total} encodable"
    );
    for (level, per_type) in ok.iter().enumerate() {
        // AUTH (15) is 5.0 only.
        let last = if level == 2 { 15 } else { 14 };
        for (t, &n) in per_type.iter().enumerate().take(last + 1).skip(1) {
            assert!(
                n > 0,
                "no encodable packet of type {t} at level {}",
                level + 3
            );
        }
    }
}

/// `decode`'s shortcut for a bare acknowledgement gives what the general path gives (fixed
/// header, then the body), for every type byte, identifier, level and size limit around 4.
#[test]
fn bare_ack_shortcut_agrees_with_the_general_path() {
    for first in [0x40u8, 0x50, 0x62, 0x70, 0x42, 0x60, 0x41] {
        for v in [
            ProtocolVersion::V3_1,
            ProtocolVersion::V3_1_1,
            ProtocolVersion::V5,
        ] {
            for max in [3, 4, 5] {
                let opts = DecodeOptions::new(v).max_packet_size(max);
                for pid in (0..=u16::MAX).step_by(251).chain([0, 1, u16::MAX]) {
                    let [hi, lo] = pid.to_be_bytes();
                    let buf = [first, 2, hi, lo, 0xFF];
                    let general = decode_fixed_header(&buf, &opts).and_then(|h| match h {
                        Status::Complete { packet: h, .. } => decode_body(&h, &buf[2..4], &opts)
                            .map(|packet| Status::Complete {
                                packet,
                                consumed: 4,
                            }),
                        Status::Incomplete { needed } => Ok(Status::Incomplete { needed }),
                    });
                    assert_eq!(decode(&buf, &opts), general, "{buf:x?} {v:?} max {max}");
                }
            }
        }
    }
}

/// `encode`'s shortcuts (PUBLISH, and a bare acknowledgement) write what the general path
/// (`encode_to_vec`) writes, for every ack type and level, with and without a reason code
/// or properties, and refuse a short buffer the same way.
#[test]
fn encode_shortcuts_agree_with_the_general_path() {
    let user = [("k", "v")];
    for v in [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ] {
        for n in [1u16, 0x1234, u16::MAX] {
            let bare = PubAck::new(id(n));
            let coded = PubAck {
                reason_code: ReasonCode::NoMatchingSubscribers,
                ..bare
            };
            let with_props = PubAck {
                properties: AckProperties {
                    user_properties: UserProperties::new(&user),
                    ..AckProperties::default()
                },
                ..bare
            };
            for ack in [bare, coded, with_props] {
                for p in [
                    Packet::PubAck(ack),
                    Packet::PubRec(ack),
                    Packet::PubRel(ack),
                    Packet::PubComp(ack),
                ] {
                    let mut out = [0u8; 64];
                    let general = p.encode_to_vec(v);
                    let fast = p.encode(v, &mut out).map(|k| out[..k].to_vec());
                    // PUBREL/PUBCOMP have no NoMatchingSubscribers: both paths refuse it.
                    assert_eq!(fast, general, "{p:?} {v:?}");
                    if let Ok(bytes) = general {
                        let mut short = [0u8; 3];
                        let r = p.encode(v, &mut short[..bytes.len().min(3)]);
                        assert_eq!(
                            r,
                            Err(Error::BufferTooSmall {
                                required: bytes.len()
                            })
                        );
                    }
                }
            }
        }
    }
    let payload = [7u8; 300];
    let p = Packet::Publish(Publish::new(
        Topic::new("a/b").unwrap(),
        &payload,
        QosPid::AtLeastOnce(id(9)),
    ));
    for v in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let mut out = [0u8; 400];
        let k = p.encode(v, &mut out).unwrap();
        assert_eq!(out[..k].to_vec(), p.encode_to_vec(v).unwrap());
        assert_eq!(
            p.encode(v, &mut out[..k - 1]),
            Err(Error::BufferTooSmall { required: k })
        );
    }
}
