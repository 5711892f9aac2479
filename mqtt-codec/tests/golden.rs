//! Hand-checked byte vectors for every packet type (tests/golden.txt): each decodes to the
//! named packet and re-encodes to the very same bytes, or fails with the named reason code.
//! [MQTT-7.0.0-2]: these are the standard's encodings, with no extension.

use mqtt_codec::{decode, DecodeOptions, Packet, ProtocolVersion, Status};

struct Vector {
    line: usize,
    version: ProtocolVersion,
    name: String,
    bytes: Vec<u8>,
    expect: String,
}

fn vectors() -> Vec<Vector> {
    include_str!("golden.txt")
        .lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty() && !l.starts_with('#'))
        .map(|(i, l)| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            assert_eq!(f.len(), 4, "line {}: {l}", i + 1);
            Vector {
                line: i + 1,
                version: ProtocolVersion::try_from(f[0].parse::<u8>().unwrap()).unwrap(),
                name: f[1].to_string(),
                bytes: f[2]
                    .split_whitespace()
                    .map(|h| u8::from_str_radix(h, 16).unwrap())
                    .collect(),
                expect: f[3].to_string(),
            }
        })
        .collect()
}

fn encode_version(p: &Packet<'_>, negotiated: ProtocolVersion) -> ProtocolVersion {
    match p {
        Packet::Connect(c) => c.protocol,
        _ => negotiated,
    }
}

#[test]
fn golden_vectors() {
    let all = vectors();
    assert!(all.len() >= 40);
    let mut kinds = std::collections::BTreeSet::new();
    for v in &all {
        let ctx = format!("line {} ({})", v.line, v.name);
        let result = decode(&v.bytes, &DecodeOptions::new(v.version));
        if v.expect == "ok" {
            let Ok(Status::Complete { packet, consumed }) = result else {
                panic!("{ctx}: {result:?}");
            };
            assert_eq!(consumed, v.bytes.len(), "{ctx}");
            // The name starts with the packet type.
            let t = format!("{:?}", packet.packet_type()).to_lowercase();
            assert!(v.name.starts_with(&t), "{ctx}: decoded as {t}");
            kinds.insert((v.version.is_v5(), t));
            let version = encode_version(&packet, v.version);
            assert_eq!(packet.encoded_len(version), Ok(v.bytes.len()), "{ctx}");
            assert_eq!(packet.encode_to_vec(version).unwrap(), v.bytes, "{ctx}");
        } else {
            let e = result.expect_err(&ctx);
            assert_eq!(format!("{:?}", e.reason_code()), v.expect, "{ctx}: {e}");
        }
    }
    // Every 3.1.1 packet type, and every 5.0 one (AUTH included), has a vector.
    assert_eq!(kinds.iter().filter(|(v5, _)| !v5).count(), 14, "{kinds:?}");
    assert_eq!(kinds.iter().filter(|(v5, _)| *v5).count(), 12, "{kinds:?}");
}
