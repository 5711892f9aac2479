//! `OwnedPacket::decode` on arbitrary bytes, packet after packet, against the borrowed
//! `decode` it wraps.
//!
//! Input: byte 0 picks the options as in `decode` (level = b % 3, sender = b / 3 % 3, with
//! bit 7 a small `max_packet_size`); the rest is the receive buffer, as `bytes::Bytes`.
//!
//! Checks, for every packet until `Ok(None)` or an error:
//! - the outcome is the borrowed `decode`'s: `Ok(Some)` exactly when it is `Complete`, the
//!   same error when it fails, and `Ok(None)` when it is `Incomplete`;
//! - `Ok(Some)` splits exactly the frame off the buffer (`frame()` is those bytes and the
//!   buffer keeps the rest); `Ok(None)` and an error leave the buffer untouched;
//! - `packet()` (which re-decodes the stored frame and must never reach its
//!   `unreachable!`) equals the packet `decode` returned, also on a clone;
//! - `publish_payload()` and `publish_topic()` are `Some` exactly for a PUBLISH, equal its
//!   payload and topic, and share the frame's storage (no copy).
#![no_main]

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use mqtt_codec::{decode, DecodeOptions, OwnedPacket, Packet, ProtocolVersion, Sender, Status};

const LEVELS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];
const SENDERS: [Sender; 3] = [Sender::Either, Sender::Client, Sender::Server];

fn options(b: u8) -> DecodeOptions {
    let sel = b & 0x7F;
    let opts =
        DecodeOptions::new(LEVELS[usize::from(sel % 3)]).sender(SENDERS[usize::from(sel / 3 % 3)]);
    if b & 0x80 != 0 {
        opts.max_packet_size(128)
    } else {
        opts
    }
}

/// Whether `part` lies inside `whole`'s memory.
fn within(part: &[u8], whole: &[u8]) -> bool {
    let (p, w) = (part.as_ptr() as usize, whole.as_ptr() as usize);
    part.is_empty() || (p >= w && p + part.len() <= w + whole.len())
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let opts = options(sel);
    let mut buf = Bytes::copy_from_slice(rest);
    for _ in 0..1024 {
        let before = buf.clone();
        let expected = decode(&before, &opts);
        let got = OwnedPacket::decode(&mut buf, &opts);
        match (expected, got) {
            (Ok(Status::Complete { packet, consumed }), Ok(Some(owned))) => {
                assert_eq!(owned.frame(), &before[..consumed], "frame");
                assert_eq!(
                    buf,
                    before[consumed..],
                    "the buffer keeps what follows the frame"
                );
                // The frame is a view of the buffer's storage, not a copy.
                assert!(within(owned.frame(), &before));
                assert_eq!(owned.packet(), packet);
                let copy = owned.clone();
                assert_eq!(copy, owned);
                assert_eq!(copy.packet(), packet);
                match packet {
                    Packet::Publish(p) => {
                        let payload = owned.publish_payload().expect("a PUBLISH has a payload");
                        assert_eq!(&payload[..], p.payload);
                        assert!(within(&payload, owned.frame()), "payload copied");
                        let topic = owned.publish_topic().expect("a PUBLISH has a topic");
                        assert_eq!(&topic[..], p.topic.as_str().as_bytes());
                        assert!(within(&topic, owned.frame()), "topic copied");
                    }
                    _ => {
                        assert!(owned.publish_payload().is_none());
                        assert!(owned.publish_topic().is_none());
                    }
                }
                if buf.is_empty() {
                    return;
                }
            }
            (Ok(Status::Incomplete { .. }), Ok(None)) => {
                assert_eq!(buf, before, "Ok(None) consumed bytes");
                return;
            }
            (Err(e), Err(g)) => {
                assert_eq!(e, g, "a different error");
                assert_eq!(buf, before, "an error consumed bytes");
                return;
            }
            (e, g) => panic!("decode gave {e:?}, OwnedPacket::decode gave {g:?}"),
        }
    }
});
