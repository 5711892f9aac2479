//! Decode and encode, in one run and on the same bytes: ours, rumqttc (3.1.1 and 5.0),
//! mqttrs (3.1.1, borrowed), and a floor that only frames and checks PUBLISH topics.
//!
//! ```text
//! cargo bench -p mqtt-codec --bench codec --bench allocs
//! ```
//!
//! Groups, so ratios are read within one group of one run:
//! `decode/<case>/{ours,rumqttc,mqttrs,floor}`, `decode_v5/<case>/{ours,rumqttc,floor}`,
//! `stream_311/{ours,rumqttc,mqttrs,floor}`, `stream_v5/{ours,rumqttc,floor}`,
//! `encode/<case>/{ours,rumqttc,mqttrs,copy}`, `encode_v5/<case>/{ours,rumqttc,copy}`.
//!
//! Fairness:
//! - Every decoder runs under `iter_batched_ref` with the same batch size: inputs are made in
//!   the untimed setup (and dropped after the timed region). rumqttc consumes a `BytesMut`, so
//!   its setup copies the bytes into one already in the shared state a connection buffer is in
//!   after its first packet (`common::shared`); ours, mqttrs and the floor read the same
//!   `&[u8]` each time.
//! - Every decoder's result is handed to `black_box` by reference and dropped inside the timed
//!   region (`consume`), one packet at a time in the streams: decode, look, drop, as a caller
//!   does. mqttrs does not report the bytes a packet used, so its frame lengths for the stream
//!   are computed before timing.
//! - Encoders write into a buffer reused across iterations: a `&mut [u8]` for ours, mqttrs and
//!   the copy, a cleared `BytesMut` with enough capacity for rumqttc. The packets to encode are
//!   built before timing (ours from slices, as an application would; the peers' by decoding
//!   the same corpus bytes).

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, Criterion};
use mqtt_codec::{decode, Packet, ProtocolVersion};

mod common;
use common::*;

/// What a caller does with a decoded packet: look at it and drop it. `black_box` makes the
/// decoder produce the whole value; the drop (the peers' frees) is timed, for everyone.
#[inline(always)]
fn consume<T>(packet: T) {
    black_box(&packet);
}

/// Iterations per batch: about 1 MiB of rumqttc inputs per batch, at least 4.
fn batch(len: usize) -> BatchSize {
    BatchSize::NumIterations(((1 << 20) / len).clamp(4, 1000) as u64)
}

fn decode_benches(c: &mut Criterion) {
    let corpus = corpus();
    for case in &corpus.cases {
        for v in [V4, V5] {
            let (group, bytes) = if v.is_v5() {
                (format!("decode_v5/{}", case.name), &case.v5[..])
            } else {
                (format!("decode/{}", case.name), &case.v4[..])
            };
            let mut g = c.benchmark_group(group);
            let o = opts(v);
            let bs = batch(bytes.len());
            g.bench_function("ours", |b| {
                b.iter_batched_ref(|| (), |_| consume(decode(black_box(bytes), &o)), bs)
            });
            if v.is_v5() {
                g.bench_function("rumqttc", |b| {
                    b.iter_batched_ref(|| shared(bytes), |m| consume(rumqttc_v5(m)), bs)
                });
            } else {
                g.bench_function("rumqttc", |b| {
                    b.iter_batched_ref(|| shared(bytes), |m| consume(rumqttc_v4(m)), bs)
                });
                g.bench_function("mqttrs", |b| {
                    b.iter_batched_ref(
                        || (),
                        |_| consume(mqttrs::decode_slice(black_box(bytes))),
                        bs,
                    )
                });
            }
            g.bench_function("floor", |b| {
                b.iter_batched_ref(|| (), |_| consume(floor(black_box(bytes))), bs)
            });
            g.finish();
        }
    }
}

fn stream_benches(c: &mut Criterion) {
    let corpus = corpus();
    for v in [V4, V5] {
        let (group, bytes) = if v.is_v5() {
            ("stream_v5", &corpus.stream_v5[..])
        } else {
            ("stream_311", &corpus.stream_v4[..])
        };
        let mut g = c.benchmark_group(group);
        let o = opts(v);
        let bs = batch(bytes.len());
        g.bench_function("ours", |b| {
            b.iter_batched_ref(|| (), |_| ours_stream(black_box(bytes), &o), bs)
        });
        if v.is_v5() {
            g.bench_function("rumqttc", |b| {
                b.iter_batched_ref(|| shared(bytes), rumqttc_v5_stream, bs)
            });
        } else {
            g.bench_function("rumqttc", |b| {
                b.iter_batched_ref(|| shared(bytes), rumqttc_v4_stream, bs)
            });
            let lengths = frame_lengths(bytes);
            g.bench_function("mqttrs", |b| {
                b.iter_batched_ref(|| (), |_| mqttrs_stream(black_box(bytes), &lengths), bs)
            });
        }
        g.bench_function("floor", |b| {
            b.iter_batched_ref(|| (), |_| consume(floor(black_box(bytes))), bs)
        });
        g.finish();
    }
}

const ENCODE_CASES: [&str; 4] = ["connect", "publish_1k", "subscribe_10", "puback"];

fn encode_benches(c: &mut Criterion) {
    let corpus = corpus();
    let mut out = vec![0u8; 128 * 1024];
    let mut bm = bytes::BytesMut::with_capacity(128 * 1024);
    for name in ENCODE_CASES {
        let case = corpus.cases.iter().find(|c| c.name == name).expect("case");
        for v in [V4, V5] {
            let (group, bytes) = if v.is_v5() {
                (format!("encode_v5/{name}"), &case.v5[..])
            } else {
                (format!("encode/{name}"), &case.v4[..])
            };
            let ours = packet(name, v);
            assert_eq!(ours.encode(v, &mut out), Ok(bytes.len()));
            let mut g = c.benchmark_group(group);
            g.bench_function("ours", |b| {
                b.iter(|| black_box(&ours).encode(v, black_box(&mut out[..])))
            });
            if v.is_v5() {
                let p = rumqttc_v5(&mut shared(bytes)).expect("rumqttc decodes");
                check_peer("rumqttc", name, v, bytes, |o| {
                    p.write(o, Some(MAX as u32)).expect("rumqttc encodes");
                });
                g.bench_function("rumqttc", |b| {
                    b.iter(|| {
                        bm.clear();
                        black_box(&p).write(&mut bm, Some(MAX as u32))
                    })
                });
            } else {
                let p = rumqttc_v4(&mut shared(bytes)).expect("rumqttc decodes");
                check_peer("rumqttc", name, v, bytes, |o| {
                    p.write(o, MAX).expect("rumqttc encodes");
                });
                g.bench_function("rumqttc", |b| {
                    b.iter(|| {
                        bm.clear();
                        black_box(&p).write(&mut bm, MAX)
                    })
                });
                let m = mqttrs::decode_slice(bytes)
                    .expect("mqttrs decodes")
                    .expect("whole");
                let n = mqttrs::encode_slice(&m, &mut out).expect("mqttrs encodes");
                if out[..n] != *bytes {
                    eprintln!("note: mqttrs encodes {name} to {n} bytes, differently from ours");
                }
                g.bench_function("mqttrs", |b| {
                    b.iter(|| mqttrs::encode_slice(black_box(&m), black_box(&mut out[..])))
                });
            }
            match ours {
                // The floor: header, then plain copies of topic, identifier, the property block
                // (pre-encoded) and payload.
                Packet::Publish(p) => {
                    let props =
                        &bytes[bytes.len() - p.payload.len() - props_len(bytes, p.topic.len(), v)
                            ..bytes.len() - p.payload.len()];
                    let pid = p.packet_id().map_or(0, |id| id.get());
                    let n = copy_publish(p.topic.as_bytes(), pid, props, p.payload, &mut out);
                    assert_eq!(&out[..n], bytes, "copy floor writes the same bytes");
                    g.bench_function("copy", |b| {
                        b.iter(|| {
                            copy_publish(
                                black_box(p.topic.as_bytes()),
                                black_box(pid),
                                black_box(props),
                                black_box(p.payload),
                                black_box(&mut out[..]),
                            )
                        })
                    });
                }
                // Other packets: one copy of the whole frame.
                _ => {
                    g.bench_function("copy", |b| {
                        b.iter(|| {
                            let o = black_box(&mut out[..bytes.len()]);
                            o.copy_from_slice(black_box(bytes));
                            o.len()
                        })
                    });
                }
            }
            g.finish();
        }
    }
}

/// The length of the property block (with its length prefix) of an encoded QoS 1 PUBLISH.
fn props_len(bytes: &[u8], topic_len: usize, v: ProtocolVersion) -> usize {
    if !v.is_v5() {
        return 0;
    }
    let header = mqtt_codec::decode_fixed_header(bytes, &opts(v)).expect("header");
    let mqtt_codec::Status::Complete { packet: h, .. } = header else {
        unreachable!()
    };
    let at = h.header_len + 2 + topic_len + 2;
    let (mut len, mut i) = (0usize, 0);
    loop {
        let b = bytes[at + i];
        len |= usize::from(b & 0x7F) << (7 * i);
        i += 1;
        if b & 0x80 == 0 {
            return i + len;
        }
    }
}

/// Warns when a peer's encoding differs from ours (same packet, decoded from our bytes).
fn check_peer(
    peer: &str,
    name: &str,
    v: ProtocolVersion,
    ours: &[u8],
    write: impl FnOnce(&mut bytes::BytesMut),
) {
    let mut o = bytes::BytesMut::new();
    write(&mut o);
    if o[..] != *ours {
        eprintln!(
            "note: {peer} encodes {name} ({v:?}) to {} bytes, differently from ours ({})",
            o.len(),
            ours.len()
        );
    }
}

fn config() -> Criterion {
    // About five minutes for the whole file on two cores.
    Criterion::default()
        .warm_up_time(Duration::from_millis(1000))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(40)
}

criterion_group! {
    name = benches;
    config = config();
    targets = decode_benches, stream_benches, encode_benches
}
criterion_main!(benches);
