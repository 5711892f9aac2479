//! Encode an arbitrary packet, then decode it: a byte-identical round trip, plus encoding
//! into buffers of the wrong size.
//!
//! For a `PacketSpec` at its level:
//! - if `encoded_len` is `Ok(len)`: `encode` into exactly `len` bytes writes `len`;
//!   `encode_to_vec` gives the same bytes; `encode` into `len - 1` bytes fails with
//!   `BufferTooSmall { required: len }` and leaves the buffer untouched; decoding the bytes
//!   (`Sender::Either`) is `Complete` with `consumed == len` and a packet equal to the
//!   original, which encodes to the same bytes again;
//! - if `encoded_len` fails: `encode` (into an empty and into a large buffer, which stays
//!   untouched) and `encode_to_vec` fail with the same error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtt_codec::fuzzing::PacketSpec;
use mqtt_codec::{decode, DecodeOptions, Error, Sender, Status};

const SENTINEL: u8 = 0xA5;

fuzz_target!(|spec: PacketSpec| {
    let version = spec.version;
    spec.with_packet(|p| match p.encoded_len(version) {
        Ok(len) => {
            assert!(len >= 2, "a packet is at least 2 bytes");
            let mut out = vec![SENTINEL; len];
            assert_eq!(
                p.encode(version, &mut out),
                Ok(len),
                "encode into exactly encoded_len bytes"
            );
            assert_eq!(
                p.encode_to_vec(version).as_deref(),
                Ok(&out[..]),
                "encode_to_vec differs from encode"
            );

            let mut short = vec![SENTINEL; len - 1];
            assert_eq!(
                p.encode(version, &mut short),
                Err(Error::BufferTooSmall { required: len }),
                "encode into one byte short"
            );
            assert!(
                short.iter().all(|&b| b == SENTINEL),
                "a refused encode wrote into the buffer"
            );

            let opts = DecodeOptions::new(version).sender(Sender::Either);
            match decode(&out, &opts) {
                Ok(Status::Complete { packet, consumed }) => {
                    assert_eq!(consumed, len, "decode consumed != encoded length");
                    assert_eq!(&packet, p, "decode(encode(p)) != p\n bytes: {out:02x?}");
                    assert_eq!(
                        packet.encode_to_vec(version).as_deref(),
                        Ok(&out[..]),
                        "round trip is not byte-identical"
                    );
                }
                other => panic!(
                    "encoded packet does not decode: {other:?}\n packet: {p:?}\n bytes: {out:02x?}"
                ),
            }
        }
        Err(e) => {
            // Validation comes before the size check: the same error into any buffer.
            assert_eq!(
                p.encode(version, &mut []),
                Err(e),
                "encode into [] disagrees with encoded_len"
            );
            let mut big = vec![SENTINEL; 8192];
            assert_eq!(
                p.encode(version, &mut big),
                Err(e),
                "encode disagrees with encoded_len"
            );
            assert!(
                big.iter().all(|&b| b == SENTINEL),
                "a refused encode wrote into the buffer"
            );
            assert_eq!(
                p.encode_to_vec(version),
                Err(e),
                "encode_to_vec disagrees with encoded_len"
            );
        }
    });
});
