//! Steady state allocates nothing: QoS 1 (and QoS 2) publish/ack cycles in both directions
//! through a connected client and server, codec included, under a counting allocator.
//!
//! The application side keeps to what a fixed-capacity deployment does: `&'static str`
//! topics and `Bytes::from_static` payloads, reused input `BytesMut`s and output buffer.
//! One test in its own binary, so no other test thread allocates while it counts.

mod common;

use bytes::Bytes;
use common::Wire;
use mqtt_codec::{ProtocolVersion, QoS};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const TOPIC: &str = "sensors/site-1/temperature";
static PAYLOAD: [u8; 64] = [0x42; 64];
const CYCLES: u64 = 1000;

/// Blocks allocated by `f`.
fn blocks(f: impl FnOnce()) -> u64 {
    let before = dhat::HeapStats::get().total_blocks;
    f();
    dhat::HeapStats::get().total_blocks - before
}

#[test]
fn publish_ack_cycles_allocate_nothing_in_steady_state() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let payload = Bytes::from_static(&PAYLOAD);
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut w = Wire::connected(version);
            // Warm up: every queue, id set and buffer reaches its working size.
            for _ in 0..300 {
                w.client_cycle(TOPIC, &payload, qos);
                w.server_cycle(TOPIC, &payload, qos);
            }
            let up = blocks(|| {
                for _ in 0..CYCLES {
                    w.client_cycle(TOPIC, &payload, qos);
                }
            });
            let down = blocks(|| {
                for _ in 0..CYCLES {
                    w.server_cycle(TOPIC, &payload, qos);
                }
            });
            assert_eq!(w.server_received, 300 + CYCLES);
            assert_eq!(w.client_acked, 300 + CYCLES);
            assert_eq!(w.client_received, 300 + CYCLES);
            assert_eq!(w.server_acked, 300 + CYCLES);
            std::println!(
                "{version:?} {qos:?}: {up} blocks per {CYCLES} client->server cycles, \
                 {down} per {CYCLES} server->client cycles"
            );
            assert_eq!(up, 0, "{version:?} {qos:?} client->server allocates");
            assert_eq!(down, 0, "{version:?} {qos:?} server->client allocates");
        }
    }
}
