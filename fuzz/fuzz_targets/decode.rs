//! Decode arbitrary bytes, packet after packet, at an arbitrary level and direction.
//!
//! Input: byte 0 picks the options (level = b % 3, sender = b / 3 % 3, and with bit 7 a
//! small `max_packet_size`); the rest is decoded until `Incomplete` or an error.
//!
//! Besides "never panics", it checks what the API promises:
//! - `Complete { consumed }` is in `1..=input.len()`, and decoding exactly the frame (without
//!   the bytes after it) gives the same packet;
//! - `Incomplete { needed }` is at least 1, is exact once the fixed header is complete, and
//!   feeding exactly `needed` more bytes never yields `Incomplete` again (checked by
//!   decoding prefixes of the input);
//! - an error is reached from the frame alone (trailing bytes do not change it);
//! - every decoded packet re-encodes, `encoded_len` equals the bytes written, the encoding
//!   decodes again to an equal packet, and encoding that packet is byte-identical.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_codec::{
    decode, decode_fixed_header, DecodeOptions, Packet, ProtocolVersion, Sender, Status,
};

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

/// The packet length announced by a complete fixed header at the front of `buf`.
fn frame_len(buf: &[u8], opts: &DecodeOptions) -> Option<(usize, usize)> {
    match decode_fixed_header(buf, opts) {
        Ok(Status::Complete {
            packet: h,
            consumed,
        }) => {
            assert_eq!(
                consumed, h.header_len,
                "fixed header consumed != header_len"
            );
            assert!(
                (2..=5).contains(&h.header_len),
                "header_len {}",
                h.header_len
            );
            Some((h.header_len, h.packet_len()))
        }
        Ok(Status::Incomplete { needed }) => {
            assert_eq!(needed, 1, "an incomplete fixed header needs 1 more byte");
            None
        }
        Err(_) => None,
    }
}

/// Decoding `buf[..k]` for a `k` inside the frame `[0, packet_len)`.
fn check_prefix(buf: &[u8], k: usize, header: Option<(usize, usize)>, opts: &DecodeOptions) {
    let prefix = &buf[..k];
    match decode(prefix, opts) {
        Ok(Status::Complete { .. }) => {
            panic!("a prefix of {k} bytes of an unfinished frame decoded")
        }
        Ok(Status::Incomplete { needed }) => {
            assert!(needed >= 1, "Incomplete with needed = 0");
            if let Some((header_len, packet_len)) = header {
                if k >= header_len {
                    assert_eq!(
                        needed,
                        packet_len - k,
                        "needed is not exact with a complete header"
                    );
                    // Feeding exactly `needed` more bytes must finish the frame.
                    if let Ok(Status::Incomplete { needed: again }) =
                        decode(&buf[..k + needed], opts)
                    {
                        panic!("still Incomplete (needed {again}) after feeding the {needed} bytes asked for");
                    }
                } else {
                    assert_eq!(needed, 1, "needed before the header is complete");
                }
            }
        }
        // The header is valid and the body is only read once complete: no prefix fails.
        Err(e) => panic!("a prefix of {k} bytes of a frame with a valid header fails: {e:?}"),
    }
}

fn check_packet(packet: &Packet<'_>, frame: &[u8], opts: &DecodeOptions) {
    let version = opts.version;
    let len = match packet.encoded_len(version) {
        Ok(len) => len,
        Err(e) => panic!("decoded packet does not re-encode ({e:?}): {packet:?}"),
    };
    let mut out = vec![0u8; len];
    let written = packet
        .encode(version, &mut out)
        .expect("encode after encoded_len succeeded");
    assert_eq!(written, len, "encoded_len != bytes written");
    assert_eq!(
        packet.encode_to_vec(version).as_deref(),
        Ok(&out[..]),
        "encode_to_vec differs from encode"
    );
    match decode(&out, opts) {
        Ok(Status::Complete { packet: again, consumed }) => {
            assert_eq!(consumed, len, "re-decode consumed");
            assert_eq!(&again, packet, "decode(encode(decode(x))) != decode(x)");
            let twice = again.encode_to_vec(version).expect("re-encode");
            assert_eq!(twice, out, "encoding of equal packets differs");
        }
        other => panic!("re-encoded packet does not decode: {other:?}\n packet: {packet:?}\n frame: {frame:02x?}\n encoded: {out:02x?}"),
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, mut rest)) = data.split_first() else {
        return;
    };
    let opts = options(sel);
    loop {
        let header = frame_len(rest, &opts);
        let result = decode(rest, &opts);
        match result {
            Ok(Status::Complete { packet, consumed }) => {
                assert!(
                    consumed > 0 && consumed <= rest.len(),
                    "consumed {consumed} of {}",
                    rest.len()
                );
                let (header_len, packet_len) =
                    header.expect("a packet decoded without a complete fixed header");
                assert_eq!(consumed, packet_len, "consumed != announced packet length");
                // The frame alone decodes to the same packet.
                let frame = &rest[..consumed];
                assert_eq!(
                    decode(frame, &opts),
                    Ok(Status::Complete { packet, consumed }),
                    "trailing bytes matter"
                );
                // A few prefixes: inside the header, right after it, the middle, one short.
                for k in [
                    0,
                    1,
                    header_len - 1,
                    header_len,
                    (header_len + consumed) / 2,
                    consumed - 1,
                ] {
                    if k < consumed {
                        check_prefix(frame, k, header, &opts);
                    }
                }
                check_packet(&packet, frame, &opts);
                rest = &rest[consumed..];
            }
            Ok(Status::Incomplete { needed }) => {
                assert!(needed >= 1, "Incomplete with needed = 0");
                match header {
                    Some((_, packet_len)) => {
                        assert!(
                            rest.len() < packet_len,
                            "Incomplete though the frame is all there"
                        );
                        assert_eq!(needed, packet_len - rest.len(), "needed is not exact");
                    }
                    None => assert_eq!(needed, 1, "needed before the header is complete"),
                }
                return;
            }
            Err(e) => {
                // Errors are decided from the frame alone (or from the header alone).
                if let Some((header_len, packet_len)) = header {
                    // Before the frame is complete, only Incomplete (exact) is possible.
                    for k in [header_len - 1, header_len, packet_len - 1] {
                        if k < packet_len {
                            check_prefix(&rest[..packet_len], k, header, &opts);
                        }
                    }
                    assert!(
                        packet_len <= rest.len(),
                        "body error {e:?} before the frame is complete"
                    );
                    assert_eq!(
                        decode(&rest[..packet_len], &opts),
                        Err(e),
                        "trailing bytes change the error"
                    );
                }
                // The error's reason code is a real 5.0 failure code.
                assert!(
                    e.reason_code() as u8 >= 0x80,
                    "{e:?} maps to a success code"
                );
                return;
            }
        }
    }
});
