//! Heap allocations per decode and per encode, for ours and the peers, on the corpus of
//! `benches/codec.rs`. Prints a markdown table and fails if ours allocates at all.
//!
//! ```text
//! cargo bench -p mqtt-codec --bench allocs
//! ```
//!
//! Counting uses `dhat::Alloc` as the global allocator (the workspace forbids `unsafe`, which
//! a hand-written `GlobalAlloc` would need) and `dhat::HeapStats::total_blocks`, which counts
//! every allocation and every reallocation. Inputs (rumqttc's `BytesMut`, in the shared state
//! of a connection buffer) are made before counting; outputs are dropped after.

use std::hint::black_box;

use mqtt_codec::decode;

mod common;
use common::*;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const RUNS: u64 = 10;

/// Allocations made by `f`, averaged over `RUNS` calls after one warm-up call.
fn count<I, O>(mut setup: impl FnMut() -> I, mut f: impl FnMut(&mut I) -> O) -> f64 {
    let mut input = setup();
    drop(black_box(f(&mut input)));
    let mut total = 0;
    for _ in 0..RUNS {
        let mut input = setup();
        let before = dhat::HeapStats::get().total_blocks;
        let out = black_box(f(&mut input));
        total += dhat::HeapStats::get().total_blocks - before;
        drop(out);
    }
    total as f64 / RUNS as f64
}

fn cell(n: Option<f64>) -> String {
    n.map_or_else(|| "n/a".to_string(), |n| format!("{n}"))
}

fn main() {
    // Benches are run with `--bench`; criterion-style filters are ignored here.
    let _profiler = dhat::Profiler::builder().testing().build();
    let corpus = corpus();
    let mut ours_total = 0.0;

    println!("\nAllocations per decode (heap blocks, dhat):\n");
    println!("| packet | version | ours | rumqttc | mqttrs |");
    println!("|---|---|---:|---:|---:|");
    for case in &corpus.cases {
        for v in [V4, V5] {
            let bytes = if v.is_v5() {
                &case.v5[..]
            } else {
                &case.v4[..]
            };
            let o = opts(v);
            let ours = count(
                || (),
                |_| decode(bytes, &o).map(|s| matches!(s, mqtt_codec::Status::Complete { .. })),
            );
            let rumqttc = if v.is_v5() {
                count(|| shared(bytes), |m| rumqttc_v5(m).is_ok())
            } else {
                count(|| shared(bytes), |m| rumqttc_v4(m).is_ok())
            };
            let mqttrs = (!v.is_v5()).then(|| count(|| (), |_| mqttrs::decode_slice(bytes)));
            ours_total += ours;
            println!(
                "| {} | {} | {ours} | {rumqttc} | {} |",
                case.name,
                if v.is_v5() { "5.0" } else { "3.1.1" },
                cell(mqttrs)
            );
        }
    }
    for v in [V4, V5] {
        let bytes = if v.is_v5() {
            &corpus.stream_v5[..]
        } else {
            &corpus.stream_v4[..]
        };
        let o = opts(v);
        let ours = count(|| (), |_| ours_stream(bytes, &o));
        let rumqttc = if v.is_v5() {
            count(|| shared(bytes), rumqttc_v5_stream)
        } else {
            count(|| shared(bytes), rumqttc_v4_stream)
        };
        let lengths = frame_lengths(bytes);
        let mqttrs = (!v.is_v5()).then(|| count(|| (), |_| mqttrs_stream(bytes, &lengths)));
        ours_total += ours;
        println!(
            "| stream ({STREAM_PACKETS} packets) | {} | {ours} | {rumqttc} | {} |",
            if v.is_v5() { "5.0" } else { "3.1.1" },
            cell(mqttrs)
        );
    }

    println!("\nAllocations per encode (into a reused buffer):\n");
    println!("| packet | version | ours | rumqttc | mqttrs |");
    println!("|---|---|---:|---:|---:|");
    let mut out = vec![0u8; 128 * 1024];
    let mut bm = bytes::BytesMut::with_capacity(128 * 1024);
    for case in &corpus.cases {
        for v in [V4, V5] {
            let bytes = if v.is_v5() {
                &case.v5[..]
            } else {
                &case.v4[..]
            };
            let p = packet(case.name, v);
            let ours = count(|| (), |_| p.encode(v, &mut out).is_ok());
            let rumqttc = if v.is_v5() {
                let r = rumqttc_v5(&mut shared(bytes)).expect("decodes");
                count(
                    || (),
                    |_| {
                        bm.clear();
                        r.write(&mut bm, Some(MAX as u32)).is_ok()
                    },
                )
            } else {
                let r = rumqttc_v4(&mut shared(bytes)).expect("decodes");
                count(
                    || (),
                    |_| {
                        bm.clear();
                        r.write(&mut bm, MAX).is_ok()
                    },
                )
            };
            let mqttrs = (!v.is_v5()).then(|| {
                let m = mqttrs::decode_slice(bytes)
                    .expect("decodes")
                    .expect("whole");
                count(|| (), |_| mqttrs::encode_slice(&m, &mut out).is_ok())
            });
            ours_total += ours;
            println!(
                "| {} | {} | {ours} | {rumqttc} | {} |",
                case.name,
                if v.is_v5() { "5.0" } else { "3.1.1" },
                cell(mqttrs)
            );
        }
    }
    assert_eq!(ours_total, 0.0, "mqtt-codec allocated");
}
