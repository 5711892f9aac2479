//! Fragmented framing: a byte stream fed in arbitrary chunks through a small buffered framer
//! must give the same packets, then the same error (or the same unfinished tail), as decoding
//! the whole stream at once.
//!
//! Input, byte 0 = `sel`: the low 7 bits pick the options (level `% 3`, sender `/ 3 % 3`,
//! a small `max_packet_size` when `/ 9 % 2 == 1`). Bit 7 picks how the rest is read:
//! - clear (raw mode, used by the seed corpus): byte 1 is a count `n` (`% 16`), the next `n`
//!   bytes are chunk sizes (cycled; 0 counts as 1; none means byte by byte), and everything
//!   after is the stream;
//! - set (structured mode): `arbitrary` chunk sizes and `PacketSpec`s, re-levelled to the
//!   chosen level and encoded back to back (those that do not encode are skipped), with an
//!   optional raw tail.
//!
//! Packets are compared through their `Debug` text and their re-encoding, since they borrow
//! from different buffers.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use libfuzzer_sys::fuzz_target;
use mqtt_codec::fuzzing::PacketSpec;
use mqtt_codec::{decode, DecodeOptions, Error, Packet, ProtocolVersion, Sender, Status};

const LEVELS: [ProtocolVersion; 3] = [
    ProtocolVersion::V3_1,
    ProtocolVersion::V3_1_1,
    ProtocolVersion::V5,
];
const SENDERS: [Sender; 3] = [Sender::Either, Sender::Client, Sender::Server];

/// What decoding a stream produced.
#[derive(Debug, PartialEq, Eq)]
struct Outcome {
    /// Each packet: its `Debug` text and its encoding.
    packets: Vec<(String, Vec<u8>)>,
    /// How it stopped: the first error, or the bytes still missing.
    end: End,
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    Error(Error),
    /// An unfinished packet (or nothing) at the end: bytes left over and `needed`.
    Incomplete {
        left: usize,
        needed: usize,
    },
}

fn record(packet: &Packet<'_>, version: ProtocolVersion) -> (String, Vec<u8>) {
    let bytes = packet
        .encode_to_vec(version)
        .unwrap_or_else(|e| panic!("decoded packet does not re-encode ({e:?}): {packet:?}"));
    (format!("{packet:?}"), bytes)
}

fn one_shot(stream: &[u8], opts: &DecodeOptions) -> Outcome {
    let mut packets = Vec::new();
    let mut rest = stream;
    loop {
        match decode(rest, opts) {
            Ok(Status::Complete { packet, consumed }) => {
                assert!(consumed > 0 && consumed <= rest.len());
                packets.push(record(&packet, opts.version));
                rest = &rest[consumed..];
            }
            Ok(Status::Incomplete { needed }) => {
                let end = End::Incomplete {
                    left: rest.len(),
                    needed,
                };
                return Outcome { packets, end };
            }
            Err(e) => {
                return Outcome {
                    packets,
                    end: End::Error(e),
                }
            }
        }
    }
}

/// A framer as a transport would write it: append what arrived, decode what it can, drain.
fn framed(stream: &[u8], chunks: &[u8], opts: &DecodeOptions) -> Outcome {
    let mut buf: Vec<u8> = Vec::new();
    let mut packets = Vec::new();
    let mut sizes = chunks.iter().map(|&c| usize::from(c.max(1))).cycle();
    let mut pos = 0;
    // After an Incomplete with a complete header: the buffer length at which it must finish.
    let mut promised: Option<usize> = None;
    let mut last_needed = 1;
    while pos < stream.len() {
        let n = if chunks.is_empty() {
            1
        } else {
            sizes.next().unwrap_or(1)
        };
        let end = (pos + n).min(stream.len());
        buf.extend_from_slice(&stream[pos..end]);
        pos = end;
        let mut start = 0;
        loop {
            match decode(&buf[start..], opts) {
                Ok(Status::Complete { packet, consumed }) => {
                    assert!(consumed > 0 && consumed <= buf.len() - start);
                    packets.push(record(&packet, opts.version));
                    start += consumed;
                    promised = None;
                }
                Ok(Status::Incomplete { needed }) => {
                    assert!(needed >= 1, "Incomplete with needed = 0");
                    let have = buf.len() - start;
                    if let Some(p) = promised {
                        assert!(
                            have < p,
                            "Incomplete again after the bytes it asked for arrived"
                        );
                    }
                    if let Ok(Status::Complete { packet: h, .. }) =
                        mqtt_codec::decode_fixed_header(&buf[start..], opts)
                    {
                        assert_eq!(have + needed, h.packet_len(), "needed is not exact");
                        promised = Some(have + needed);
                    }
                    last_needed = needed;
                    break;
                }
                Err(e) => {
                    return Outcome {
                        packets,
                        end: End::Error(e),
                    }
                }
            }
        }
        // `promised` counts from the start of the pending packet, which stays at the front.
        buf.drain(..start);
    }
    Outcome {
        packets,
        end: End::Incomplete {
            left: buf.len(),
            needed: last_needed,
        },
    }
}

fn structured(data: &[u8], version: ProtocolVersion) -> arbitrary::Result<(Vec<u8>, Vec<u8>)> {
    let mut u = Unstructured::new(data);
    let chunks = Vec::<u8>::arbitrary(&mut u)?;
    let mut stream = Vec::new();
    for _ in 0..u.int_in_range(0..=8)? {
        let mut spec = PacketSpec::arbitrary(&mut u)?;
        spec.version = version;
        spec.with_packet(|p| {
            if let Ok(bytes) = p.encode_to_vec(version) {
                stream.extend_from_slice(&bytes);
            }
        });
    }
    if u.ratio(1, 4)? {
        stream.extend_from_slice(u.take_rest());
    }
    Ok((chunks, stream))
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let s = sel & 0x7F;
    let mut opts =
        DecodeOptions::new(LEVELS[usize::from(s % 3)]).sender(SENDERS[usize::from(s / 3 % 3)]);
    if s / 9 % 2 == 1 {
        opts = opts.max_packet_size(96);
    }
    let (chunks, stream) = if sel & 0x80 == 0 {
        let Some((&n, rest)) = rest.split_first() else {
            return;
        };
        let n = usize::from(n % 16).min(rest.len());
        let (chunks, stream) = rest.split_at(n);
        (chunks.to_vec(), stream.to_vec())
    } else {
        match structured(rest, opts.version) {
            Ok(x) => x,
            Err(_) => return,
        }
    };
    let whole = one_shot(&stream, &opts);
    let pieces = framed(&stream, &chunks, &opts);
    assert_eq!(
        pieces, whole,
        "framed decoding differs from one-shot decoding"
    );
});
