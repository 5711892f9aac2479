//! An idle connected client costs the broker core a bounded amount of heap: its machine,
//! its session record and its client identifier, nothing for queues, timers, packet
//! identifiers or topic aliases it does not use. Push services hold many such connections,
//! so a regression here multiplies by their number.
//!
//! A typical push client connects, subscribes once, may get a message, then idles for hours
//! with only PINGREQ: what its activity grew must not stay for all those hours.
//!
//! One test in its own binary, so no other test thread allocates while it counts.

use bytes::BytesMut;
use mqtt_broker::{Broker, BrokerConfig, ConnectionId};
use mqtt_codec::{
    Connect, List, Packet, PacketId, ProtocolVersion, PubAck, Publish, QoS, QosPid, Subscribe,
    Subscription, SubscriptionOptions, Topic,
};
use mqtt_state::Instant;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const CONNECTIONS: usize = 1000;

/// Requested heap bytes per connection that only connected (malloc adds its own overhead
/// per block on top). Today about 319: the machine (152), the session record (64), the
/// client identifier shared by the record and the index (32), the index entry (about 40),
/// the connection's slot, and its keep-alive deadline: an entry in the timer heap (16) and
/// the deadline it armed (8), which spare every timeout a scan of all connections; the
/// bound leaves a little room.
const MAX_BYTES_CONNECTED: f64 = 335.0;
/// Heap blocks per connection that only connected.
const MAX_BLOCKS_CONNECTED: f64 = 2.5;
/// Per connection that subscribed to one filter (and then pinged, whether or not it got a
/// message first): the above plus the subscription (its copy of the filter and its place
/// in the subscription tree), about 650 today (with the deadline, as above). The queues a SUBSCRIBE passes through give
/// their memory back as soon as they are empty, without waiting for the ping (they held
/// about 1.9 KB until it came, and freed memory stays resident in the allocator); what a
/// received message needed goes at the ping.
const MAX_BYTES_SUBSCRIBED: f64 = 675.0;
/// Blocks per connection that subscribed and pinged.
const MAX_BLOCKS_SUBSCRIBED: f64 = 8.5;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Activity {
    /// CONNECT, nothing else.
    Connected,
    /// CONNECT and SUBSCRIBE, nothing else yet.
    Subscribed,
    /// CONNECT and SUBSCRIBE, then after a while PINGREQ.
    SubscribedThenPinged,
    /// CONNECT and SUBSCRIBE, a QoS 1 message delivered and acknowledged, then PINGREQ.
    ReceivedThenPinged,
}

fn encode(packets: &[Packet<'_>], version: ProtocolVersion) -> BytesMut {
    let mut bytes = Vec::new();
    for p in packets {
        bytes.extend(p.encode_to_vec(version).unwrap());
    }
    BytesMut::from(&bytes[..])
}

fn connect(version: ProtocolVersion, client_id: &str) -> Packet<'_> {
    Packet::Connect(Connect::new(version, client_id))
}

/// Feeds `input` and does what the adapter does: runs the broker's events and drains the
/// connection's transmit queue. Returns how many packets went out.
fn exchange(
    broker: &mut Broker,
    now: Instant,
    id: ConnectionId,
    mut input: BytesMut,
    out: &mut [u8],
) -> usize {
    broker.handle_input(now, id, &mut input);
    while broker.poll_event().is_some() {}
    let mut sent = 0;
    while broker.poll_transmit(now, id, out).unwrap().is_some() {
        sent += 1;
    }
    sent
}

/// Heap bytes and blocks per connection after `CONNECTIONS` clients did `activity`.
fn cost(version: ProtocolVersion, activity: Activity) -> (f64, f64) {
    let mut out = vec![0u8; 1024];
    let now = Instant::from_millis(0);
    let later = Instant::from_millis(30_000);
    let mut broker = Broker::new(BrokerConfig::default(), now);

    let publisher = broker.open(now);
    exchange(
        &mut broker,
        now,
        publisher,
        encode(&[connect(version, "publisher")], version),
        &mut out,
    );
    let mut ids = Vec::with_capacity(CONNECTIONS);
    let before = dhat::HeapStats::get();
    for i in 0..CONNECTIONS {
        let id = broker.open(now);
        ids.push(id);
        let client_id = format!("client-{i:08}");
        let topic = format!("devices/{i:08}/cmd");
        let filters = [Subscription {
            filter: &topic,
            options: SubscriptionOptions::qos(QoS::AtLeastOnce),
        }];
        let one = PacketId::new(1).unwrap();
        let mut input = vec![connect(version, &client_id)];
        if activity != Activity::Connected {
            input.push(Packet::Subscribe(Subscribe::new(one, List::new(&filters))));
        }
        let sent = exchange(&mut broker, now, id, encode(&input, version), &mut out);
        assert_eq!(sent, input.len(), "{version:?}: a CONNACK and a SUBACK");
        if activity == Activity::ReceivedThenPinged {
            let publish = Publish::new(
                Topic::new(&topic).unwrap(),
                b"wake up",
                QosPid::AtLeastOnce(one),
            );
            let publish = encode(&[Packet::Publish(publish)], version);
            exchange(&mut broker, now, publisher, publish, &mut out);
            // The broker sends the subscriber its message with the first free id: 1.
            let mut sent = 0;
            while broker.poll_transmit(now, id, &mut out).unwrap().is_some() {
                sent += 1;
            }
            assert_eq!(sent, 1, "{version:?}: the PUBLISH");
            let ack = encode(&[Packet::PubAck(PubAck::new(one))], version);
            exchange(&mut broker, now, id, ack, &mut out);
        }
        if !matches!(activity, Activity::Connected | Activity::Subscribed) {
            let ping = encode(&[Packet::PingReq], version);
            assert_eq!(exchange(&mut broker, later, id, ping, &mut out), 1);
        }
    }
    let after = dhat::HeapStats::get();
    assert_eq!(broker.stats().clients_connected, CONNECTIONS + 1);
    let n = CONNECTIONS as f64;
    let bytes = (after.curr_bytes - before.curr_bytes) as f64 / n;
    let blocks = (after.curr_blocks - before.curr_blocks) as f64 / n;
    std::println!("{version:?} {activity:?}: {bytes:.1} bytes, {blocks:.2} blocks per connection");
    (bytes, blocks)
}

#[test]
fn an_idle_connection_costs_the_core_little_memory() {
    let _profiler = dhat::Profiler::builder().testing().build();
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        for activity in [
            Activity::Connected,
            Activity::Subscribed,
            Activity::SubscribedThenPinged,
            Activity::ReceivedThenPinged,
        ] {
            let (bytes, blocks) = cost(version, activity);
            let (max_bytes, max_blocks) = match activity {
                Activity::Connected => (MAX_BYTES_CONNECTED, MAX_BLOCKS_CONNECTED),
                _ => (MAX_BYTES_SUBSCRIBED, MAX_BLOCKS_SUBSCRIBED),
            };
            assert!(
                bytes <= max_bytes,
                "{version:?} {activity:?}: {bytes:.1} bytes per connection, bound {max_bytes}"
            );
            assert!(
                blocks <= max_blocks,
                "{version:?} {activity:?}: {blocks:.2} blocks per connection, bound {max_blocks}"
            );
        }
    }
}
