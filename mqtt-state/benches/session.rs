//! Steady-state publish/ack cycles per second through a client and a server machine wired
//! back to back, codec included: client to server, QoS 1 (PUBLISH, PUBACK) and QoS 2
//! (PUBLISH, PUBREC, PUBREL, PUBCOMP), at 3.1.1 and 5.0, with 16 B and 1 KiB payloads.
//! And fan-out: one message delivered to 64 server sessions and written out, as a broker
//! does for a topic with 64 subscribers (per delivery).
#![allow(missing_docs)]

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Duration;

use bytes::Bytes;
use bytes::BytesMut;
use common::Wire;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use mqtt_codec::{Connect, Packet, ProtocolVersion, QoS, SubscriptionId};
use mqtt_state::{Accept, Instant, Message, ServerConfig, ServerSession, TopicBuf};

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

/// `n` server sessions at `version`, connected (CONNACK drained), keep alive off.
fn sessions(version: ProtocolVersion, n: usize) -> Vec<ServerSession> {
    let now = Instant::ZERO;
    (0..n)
        .map(|i| {
            let mut s = ServerSession::new(ServerConfig::default(), now);
            let mut c = Connect::new(version, "fan");
            c.keep_alive = 0;
            let _ = i;
            let mut input = BytesMut::from(&Packet::Connect(c).encode_to_vec(version).unwrap()[..]);
            s.handle_input(now, &mut input).unwrap();
            s.accept(now, Accept::default()).unwrap();
            let mut out = vec![0u8; 256];
            while s.poll_transmit(now, &mut out).unwrap().is_some() {}
            while s.poll_event().is_some() {}
            s
        })
        .collect()
}

fn fan_out(c: &mut Criterion) {
    const N: usize = 64;
    let mut g = c.benchmark_group("fan_out_64");
    g.warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(30)
        .throughput(Throughput::Elements(N as u64));
    let ids = [SubscriptionId::new(7).unwrap()];
    for (vname, version) in [
        ("3.1.1", ProtocolVersion::V3_1_1),
        ("5.0", ProtocolVersion::V5),
    ] {
        let mut subs = sessions(version, N);
        let payload = Bytes::from_static(&SMALL);
        let mut out = vec![0u8; 4096];
        let now = Instant::ZERO;
        g.bench_function(BenchmarkId::new(vname, "qos0/16B"), |b| {
            b.iter(|| {
                // As a broker routes it: one message, a clone per subscriber.
                let m = Message::new(
                    TopicBuf::from_static(TOPIC).unwrap(),
                    payload.clone(),
                    QoS::AtMostOnce,
                );
                for s in &mut subs {
                    s.deliver(now, m.clone(), &ids).unwrap();
                    while let Some(n) = s.poll_transmit(now, &mut out).unwrap() {
                        std::hint::black_box(&out[..n]);
                    }
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, cycles, fan_out);
criterion_main!(benches);
