//! An idle connected client costs the broker core a bounded amount of heap: its machine,
//! its session record and its client identifier, nothing for queues, timers, packet
//! identifiers or topic aliases it does not use. Push services hold many such connections,
//! so a regression here multiplies by their number.
//!
//! One test in its own binary, so no other test thread allocates while it counts.

use bytes::BytesMut;
use mqtt_codec::{Connect, Packet, ProtocolVersion};
use mqtt_state::{Broker, BrokerConfig, Instant};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const CONNECTIONS: usize = 1000;

/// Requested heap bytes per connection (malloc adds its own overhead per block on top).
/// Today about 720 at both levels; the bound leaves a little room.
const MAX_BYTES_PER_CONNECTION: f64 = 800.0;
/// Heap blocks per connection.
const MAX_BLOCKS_PER_CONNECTION: f64 = 3.5;

#[test]
fn an_idle_connection_costs_the_core_little_memory() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let mut out = vec![0u8; 1024];
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let now = Instant::from_millis(0);
        let mut broker = Broker::new(BrokerConfig::default(), now);
        let mut ids = Vec::with_capacity(CONNECTIONS);
        let before = dhat::HeapStats::get();
        for i in 0..CONNECTIONS {
            let id = broker.open(now);
            ids.push(id);
            let client_id = format!("client-{i:08}");
            let connect = Packet::Connect(Connect {
                protocol: version,
                clean_start: true,
                keep_alive: 60,
                client_id: &client_id,
                will: None,
                username: None,
                password: None,
                properties: Default::default(),
            });
            let mut input = BytesMut::from(&connect.encode_to_vec(version).unwrap()[..]);
            broker.handle_input(now, id, &mut input);
            while broker.poll_event().is_some() {}
            let mut connacks = 0;
            while broker.poll_transmit(now, id, &mut out).is_some() {
                connacks += 1;
            }
            assert_eq!(connacks, 1, "{version:?}: a CONNACK and nothing else");
            drop(input);
        }
        let after = dhat::HeapStats::get();
        assert_eq!(broker.stats().clients_connected, CONNECTIONS);
        let n = CONNECTIONS as f64;
        let bytes = (after.curr_bytes - before.curr_bytes) as f64 / n;
        let blocks = (after.curr_blocks - before.curr_blocks) as f64 / n;
        std::println!("{version:?}: {bytes:.1} bytes, {blocks:.2} blocks per idle connection");
        assert!(
            bytes <= MAX_BYTES_PER_CONNECTION,
            "{version:?}: {bytes:.1} bytes per idle connection, bound {MAX_BYTES_PER_CONNECTION}"
        );
        assert!(
            blocks <= MAX_BLOCKS_PER_CONNECTION,
            "{version:?}: {blocks:.2} blocks per idle connection, bound {MAX_BLOCKS_PER_CONNECTION}"
        );
    }
}
