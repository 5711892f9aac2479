//! Steady-state publish/ack cycles per second through a client and a server machine wired
//! back to back, codec included: client to server, QoS 1 (PUBLISH, PUBACK) and QoS 2
//! (PUBLISH, PUBREC, PUBREL, PUBCOMP), at 3.1.1 and 5.0, with 16 B and 1 KiB payloads.
#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use bytes::Bytes;
use common::Wire;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mqtt_codec::{ProtocolVersion, QoS};

const TOPIC: &str = "sensors/site-1/temperature";
static SMALL: [u8; 16] = [0x42; 16];
static LARGE: [u8; 1024] = [0x42; 1024];

fn cycles(c: &mut Criterion) {
    let mut g = c.benchmark_group("session_cycle");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .throughput(Throughput::Elements(1));
    for (vname, version) in [
        ("3.1.1", ProtocolVersion::V3_1_1),
        ("5.0", ProtocolVersion::V5),
    ] {
        for (qname, qos) in [("qos1", QoS::AtLeastOnce), ("qos2", QoS::ExactlyOnce)] {
            for payload in [Bytes::from_static(&SMALL), Bytes::from_static(&LARGE)] {
                let mut w = Wire::connected(version);
                for _ in 0..300 {
                    w.client_cycle(TOPIC, &payload, qos);
                }
                let id =
                    BenchmarkId::new(format!("{vname}/{qname}"), format!("{}B", payload.len()));
                g.bench_function(id, |b| b.iter(|| w.client_cycle(TOPIC, &payload, qos)));
                assert_eq!(w.client_acked, w.server_received);
            }
        }
    }
    g.finish();
}

criterion_group!(benches, cycles);
criterion_main!(benches);
