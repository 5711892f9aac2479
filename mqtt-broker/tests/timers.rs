//! Deadlines: keep alive and CONNECT timeouts fire when due, in order, for many
//! connections, and move with every packet.

mod support;

use std::collections::HashMap;

use mqtt_broker::*;
use mqtt_codec::{Packet, ProtocolVersion};
use mqtt_state::*;
use support::*;

fn broker() -> Broker {
    Broker::new(
        BrokerConfig {
            sys_interval: None,
            ..BrokerConfig::default()
        },
        Instant::ZERO,
    )
}

#[test]
fn a_hundred_thousand_deadlines_fire_in_order_each_when_due() {
    const N: usize = 100_000;
    let mut broker = broker();
    let now = Instant::ZERO;
    // Expected close time and reason per connection.
    let mut due: HashMap<ConnectionId, (Instant, CloseReason)> = HashMap::new();
    for i in 0..N {
        let id = broker.open(now);
        if i % 100 == 0 {
            // Never sends CONNECT: closed after the CONNECT timeout (10 s by default).
            due.insert(
                id,
                (Instant::from_millis(10_000), CloseReason::ConnectTimeout),
            );
            continue;
        }
        // Keep alives spread over 1..=600 s, in no order.
        let keep_alive = 1 + (i * 7919 % 600) as u16;
        let client_id = format!("c{i}");
        let mut input = wire(
            &[connect(ProtocolVersion::V3_1_1, &client_id, keep_alive)],
            ProtocolVersion::V3_1_1,
        );
        broker.handle_input(now, id, &mut input);
        assert!(input.is_empty());
        // [MQTT-3.1.2-22] closed after 1.5 times the keep alive without a packet.
        let at = Instant::from_millis(u64::from(keep_alive) * 1500);
        due.insert(id, (at, CloseReason::KeepAliveTimeout));
    }
    assert!(run_events(&mut broker, now).is_empty());
    assert_eq!(broker.connection_count(), N);
    assert_eq!(broker.session_count(), N - N / 100);
    assert_eq!(broker.stats().clients_connected, N - N / 100);

    let mut last = now;
    let mut wakes = 0;
    let mut closed = 0;
    while let Some(t) = broker.poll_timeout() {
        assert!(t >= last, "deadlines went back from {last:?} to {t:?}");
        last = t;
        wakes += 1;
        broker.handle_timeout(t);
        for (id, reason) in run_events(&mut broker, t) {
            let (at, expected) = due.remove(&id).expect("closed once");
            assert_eq!((t, reason), (at, expected), "{id:?}");
            closed += 1;
        }
    }
    assert_eq!(closed, N);
    assert!(due.is_empty());
    assert_eq!(broker.connection_count(), 0);
    assert_eq!(broker.stats().clients_connected, 0);
    // One wake per distinct deadline (600 keep alives, the CONNECT timeout) and a few more
    // for deadlines that moved: not one per connection.
    assert!(wakes <= 602, "{wakes} wakes");
}

#[test]
fn every_packet_moves_the_keep_alive_deadline() {
    let mut broker = broker();
    let v = ProtocolVersion::V3_1_1;
    let id = broker.open(Instant::ZERO);
    let mut input = wire(&[connect(v, "c", 10)], v);
    broker.handle_input(Instant::ZERO, id, &mut input);
    run_events(&mut broker, Instant::ZERO);
    // A PINGREQ at 9 s and at 18 s: the deadline is 15 s after the last.
    for t in [9_000, 18_000] {
        let now = Instant::from_millis(t);
        broker.handle_timeout(now);
        assert!(run_events(&mut broker, now).is_empty());
        let mut ping = wire(&[Packet::PingReq], v);
        broker.handle_input(now, id, &mut ping);
        assert!(run_events(&mut broker, now).is_empty());
    }
    // Early wakes (the CONNECT timeout, the old keep alive) close nothing.
    let mut closes = Vec::new();
    while let Some(t) = broker.poll_timeout() {
        broker.handle_timeout(t);
        for c in run_events(&mut broker, t) {
            closes.push((t, c));
        }
    }
    assert_eq!(
        closes,
        [(
            Instant::from_millis(33_000),
            (id, CloseReason::KeepAliveTimeout)
        )]
    );
}

#[test]
fn an_offline_session_expires_and_its_delayed_will_goes_out_on_time() {
    let mut net = Net::new();
    let watcher = net.join(ClientConfig::new(V5, "w"));
    net.subscribe(watcher, "wills/#", q(mqtt_codec::QoS::AtLeastOnce));
    let will = Message::new(
        TopicBuf::from_static("wills/d").unwrap(),
        "gone",
        mqtt_codec::QoS::AtLeastOnce,
    );
    let d = net.join(ClientConfig {
        will: Some((will, 5)),
        session_expiry_interval: 20,
        ..ClientConfig::new(V5, "d")
    });
    net.cut(d);
    assert_eq!(net.broker.session_count(), 2);
    net.advance(4_999);
    assert!(net.take(watcher).is_empty());
    net.advance(1);
    // [MQTT-3.1.2-8] the will after its delay.
    assert_eq!(net.take(watcher).len(), 1);
    net.advance(14_999);
    assert!(net.broker.session("d").is_some());
    net.advance(1);
    // [MQTT-4.1.0-2] the session ends with its expiry.
    assert!(net.broker.session("d").is_none());
    assert_eq!(net.broker.session_count(), 1);
}
