//! Decoding allocates nothing: every packet of the golden corpus, at every level, decoded and
//! walked (lists iterated, properties read) under a counting global allocator.
//!
//! One test in its own binary, so no other test thread allocates while it counts.

use mqtt_codec::{decode, DecodeOptions, Packet, ProtocolVersion, Status};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn corpus() -> Vec<(ProtocolVersion, Vec<u8>)> {
    include_str!("golden.txt")
        .lines()
        .filter(|l| !l.starts_with('#') && l.trim_end().ends_with("| ok"))
        .map(|l| {
            let f: Vec<&str> = l.split('|').collect();
            let v = ProtocolVersion::try_from(f[0].trim().parse::<u8>().unwrap()).unwrap();
            let b = f[2]
                .split_whitespace()
                .map(|h| u8::from_str_radix(h, 16).unwrap())
                .collect();
            (v, b)
        })
        .collect()
}

/// Touches everything a decoded packet lends, so lazy parts are counted too.
fn walk(p: &Packet<'_>) -> usize {
    let mut n = 0;
    match p {
        Packet::Publish(p) => {
            n += p.topic.len() + p.payload.len();
            n += p.properties.user_properties.iter().count();
            n += p.properties.subscription_identifiers.iter().count();
        }
        Packet::Subscribe(s) => n += s.filters.iter().map(|f| f.filter.len()).sum::<usize>(),
        Packet::SubAck(s) => n += s.reason_codes.iter().count(),
        Packet::Unsubscribe(u) => n += u.filters.iter().count(),
        Packet::UnsubAck(u) => n += u.reason_codes.iter().count(),
        Packet::Connect(c) => n += c.client_id.len() + c.properties.user_properties.iter().count(),
        _ => n += 1,
    }
    n
}

#[test]
fn decoding_the_corpus_allocates_nothing() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let corpus = corpus();
    assert!(corpus.len() >= 35);
    // A 10-filter SUBSCRIBE too: peers allocate a Vec (and Strings) for it.
    let mut sub = vec![0x82, 0, 0x00, 0x01];
    for i in 0..10u8 {
        sub.extend_from_slice(&[0x00, 0x03, b'a', b'/', b'0' + i, 0x01]);
    }
    sub[1] = (sub.len() - 2) as u8;
    let opts: Vec<_> = [
        ProtocolVersion::V3_1,
        ProtocolVersion::V3_1_1,
        ProtocolVersion::V5,
    ]
    .into_iter()
    .map(DecodeOptions::new)
    .collect();

    let sub = (ProtocolVersion::V3_1_1, sub);

    let before = dhat::HeapStats::get();
    let mut touched = 0;
    for (v, bytes) in corpus.iter().chain(std::iter::once(&sub)) {
        let o = &opts[*v as usize - 3];
        let Ok(Status::Complete { packet, .. }) = decode(bytes, o) else {
            panic!("{bytes:x?}")
        };
        touched += walk(&packet);
    }
    let after = dhat::HeapStats::get();
    assert!(touched > 0);
    assert_eq!(
        after.total_blocks - before.total_blocks,
        0,
        "decoding allocated"
    );
    assert_eq!(
        after.total_bytes - before.total_bytes,
        0,
        "decoding allocated"
    );
}
