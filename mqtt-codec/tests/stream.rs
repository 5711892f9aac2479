//! A byte stream split anywhere and fed piece by piece decodes to the same packets as the
//! whole stream at once.

use mqtt_codec::{decode, DecodeOptions, ProtocolVersion, Status};
use proptest::prelude::*;

/// The valid golden vectors of one level, back to back.
fn stream(v5: bool) -> Vec<u8> {
    include_str!("golden.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && l.trim_end().ends_with("| ok"))
        .filter(|l| l.starts_with('5') == v5 && !l.contains("connect-"))
        .flat_map(|l| {
            l.split('|')
                .nth(2)
                .unwrap()
                .split_whitespace()
                .map(|h| u8::from_str_radix(h, 16).unwrap())
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Decodes what `buf` holds, returning each packet re-encoded, and drains it.
fn drain(buf: &mut Vec<u8>, opts: &DecodeOptions, out: &mut Vec<Vec<u8>>) -> Option<usize> {
    loop {
        match decode(buf, opts).expect("valid stream") {
            Status::Complete { packet, consumed } => {
                out.push(packet.encode_to_vec(opts.version).unwrap());
                buf.drain(..consumed);
            }
            Status::Incomplete { needed } => return Some(needed),
        }
    }
}

fn check_splits(
    whole: &[u8],
    version: ProtocolVersion,
    cuts: &[usize],
) -> Result<(), TestCaseError> {
    let opts = DecodeOptions::new(version);
    let mut expected = Vec::new();
    let mut all = whole.to_vec();
    drain(&mut all, &opts, &mut expected);
    prop_assert!(all.is_empty());

    let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (whole.len() + 1)).collect();
    cuts.sort_unstable();
    cuts.push(whole.len());
    let mut got = Vec::new();
    let mut buf = Vec::new();
    let mut at = 0;
    for cut in cuts {
        let needed = drain(&mut buf, &opts, &mut got).unwrap();
        // `needed` never overshoots: the bytes up to the next packet's end are enough.
        prop_assert!(needed >= 1);
        buf.extend_from_slice(&whole[at..cut]);
        at = cut;
    }
    drain(&mut buf, &opts, &mut got);
    prop_assert!(buf.is_empty());
    prop_assert_eq!(got, expected);
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(500))]

    #[test]
    fn split_stream_3_1_1(cuts in proptest::collection::vec(any::<usize>(), 0..40)) {
        check_splits(&stream(false), ProtocolVersion::V3_1_1, &cuts)?;
    }

    #[test]
    fn split_stream_5(cuts in proptest::collection::vec(any::<usize>(), 0..40)) {
        check_splits(&stream(true), ProtocolVersion::V5, &cuts)?;
    }
}

#[test]
fn byte_by_byte() {
    for (v5, version) in [
        (false, ProtocolVersion::V3_1_1),
        (true, ProtocolVersion::V5),
    ] {
        let whole = stream(v5);
        let cuts: Vec<usize> = (0..whole.len()).collect();
        check_splits(&whole, version, &cuts).unwrap();
    }
}

#[test]
fn needed_is_exact_once_the_header_is_known() {
    let whole = stream(false);
    let opts = DecodeOptions::new(ProtocolVersion::V3_1_1);
    let mut at = 0;
    while at < whole.len() {
        let rest = &whole[at..];
        let Status::Complete { consumed, .. } = decode(rest, &opts).unwrap() else {
            panic!()
        };
        for k in 0..consumed {
            let Status::Incomplete { needed } = decode(&rest[..k], &opts).unwrap() else {
                panic!()
            };
            let header_known = mqtt_codec::decode_fixed_header(&rest[..k], &opts)
                .map(|s| matches!(s, Status::Complete { .. }))
                .unwrap();
            if header_known {
                assert_eq!(k + needed, consumed);
            } else {
                assert_eq!(needed, 1);
            }
        }
        at += consumed;
    }
}
