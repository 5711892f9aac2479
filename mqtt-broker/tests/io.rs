//! Input and output at the edges: output buffers too small, pipelined input, publishing
//! from the server.

mod support;

use mqtt_broker::Error;
use mqtt_broker::*;
use mqtt_codec::{
    List, Packet, PacketId, ProtocolVersion, Publish, QoS, QosPid, Subscribe, Subscription,
    SubscriptionOptions, Topic,
};
use mqtt_state::*;
use support::*;

#[test]
fn a_buffer_too_small_says_what_it_needs_and_closes_nothing() {
    let mut net = Net::new();
    let sub = net.join(ClientConfig::new(V5, "sub"));
    net.subscribe(sub, "t", q(QoS::AtLeastOnce));
    let id = net.peers[sub].id.unwrap();
    net.stalled.push(id);
    let p = net.join(ClientConfig::new(V5, "pub"));
    let payload = "x".repeat(1000);
    net.publish_message(
        p,
        Message::new(
            TopicBuf::from_static("t").unwrap(),
            payload.clone(),
            QoS::AtLeastOnce,
        ),
    );
    let mut small = [0u8; 100];
    let needed = match net.broker.poll_transmit(net.now, id, &mut small) {
        Err(Error::BufferTooSmall { needed }) => needed,
        other => panic!("{other:?}"),
    };
    assert!(needed > 1000, "{needed}");
    // Asked again, the same: the packet stays queued and the connection open.
    assert_eq!(
        net.broker.poll_transmit(net.now, id, &mut small),
        Err(Error::BufferTooSmall { needed })
    );
    assert!(net.broker.wants_input(id));
    net.drive();
    assert!(net.closes.is_empty());
    let mut exact = vec![0u8; needed];
    assert_eq!(
        net.broker.poll_transmit(net.now, id, &mut exact),
        Ok(Some(needed))
    );
    net.peers[sub].from_broker.extend_from_slice(&exact);
    net.stalled.clear();
    net.drive();
    assert_eq!(net.take(sub), [got("t", &payload, QoS::AtLeastOnce, false)]);
}

#[test]
fn a_burst_behind_connect_is_read_in_one_call() {
    // As MQTT.js does: CONNECT, SUBSCRIBE and 200 QoS 1 PUBLISH written at once. (3.1.1,
    // which has no Receive Maximum: a 5.0 machine that stops at its quota leaves the rest
    // in the buffer, and the core asks for it again once the acknowledgements went out.)
    let v = ProtocolVersion::V3_1_1;
    let mut broker = Broker::new(
        BrokerConfig {
            sys_interval: None,
            ..BrokerConfig::default()
        },
        Instant::ZERO,
    );
    let now = Instant::ZERO;
    let id = broker.open(now);
    let filters = [Subscription {
        filter: "t",
        options: SubscriptionOptions::qos(QoS::AtMostOnce),
    }];
    let mut packets = vec![
        connect(v, "burst", 60),
        Packet::Subscribe(Subscribe::new(
            PacketId::new(1).unwrap(),
            List::new(&filters),
        )),
    ];
    for n in 1..=200u16 {
        packets.push(Packet::Publish(Publish::new(
            Topic::new("t").unwrap(),
            b"m",
            QosPid::AtLeastOnce(PacketId::new(n).unwrap()),
        )));
    }
    let mut input = wire(&packets, v);
    broker.handle_input(now, id, &mut input);
    assert!(input.is_empty(), "{} bytes left", input.len());
    assert_eq!(broker.stats().messages_received, 200);
    // Out: CONNACK, SUBACK, then each message to the subscriber and its PUBACK.
    let mut out = vec![0u8; 1024];
    let mut acks = Vec::new();
    while let Ok(Some(n)) = broker.poll_transmit(now, id, &mut out) {
        if let Ok(mqtt_codec::Status::Complete {
            packet: Packet::PubAck(a),
            ..
        }) = mqtt_codec::decode(&out[..n], &mqtt_codec::DecodeOptions::new(v))
        {
            acks.push(a.packet_id.get());
        }
    }
    assert_eq!(acks, (1..=200).collect::<Vec<_>>());
}

#[test]
fn input_after_a_pause_waits_in_the_buffer() {
    let mut config = BrokerConfig {
        sys_interval: None,
        ..BrokerConfig::default()
    };
    config.server.max_queued = 2;
    let mut net = Net::with(Broker::new(config, Instant::ZERO));
    let sub = net.join(ClientConfig::new(V4, "sub"));
    net.subscribe(sub, "t", q(QoS::AtMostOnce));
    net.stalled.push(net.peers[sub].id.unwrap());
    let p = net.join(ClientConfig::new(V4, "pub"));
    for n in 0..10 {
        net.peers[p]
            .client
            .publish(
                net.now,
                Message::new(
                    TopicBuf::from_static("t").unwrap(),
                    format!("{n}"),
                    QoS::AtMostOnce,
                ),
            )
            .unwrap();
    }
    net.drive();
    assert!(net.paused(p));
    // The watermark (2) and the one that reached it.
    assert_eq!(net.broker.session("sub").unwrap().queued, 3);
    assert!(!net.peers[p].to_broker.is_empty(), "the rest waits unread");
    net.unstall(sub);
    let texts: Vec<String> = net.take(sub).into_iter().map(|m| m.1).collect();
    assert_eq!(texts, (0..10).map(|n| n.to_string()).collect::<Vec<_>>());
}

#[test]
fn the_server_publishes_with_qos_retain_and_properties() {
    let mut net = Net::new();
    let s = net.join(ClientConfig::new(V5, "s"));
    net.subscribe(s, "news/#", q(QoS::ExactlyOnce));
    let mut m = Message::new(
        TopicBuf::from_static("news/a").unwrap(),
        "hello",
        QoS::AtLeastOnce,
    );
    m.retain = true;
    m.properties_mut().content_type = Some("text/plain".into());
    assert_eq!(net.broker.publish(net.now, m), 1);
    net.drive();
    let received = net.deliveries(s);
    assert_eq!(received.len(), 1);
    let (_, _, m) = &received[0];
    assert_eq!((m.qos, m.topic.as_str()), (QoS::AtLeastOnce, "news/a"));
    assert_eq!(
        m.properties().content_type.as_ref().unwrap().as_str(),
        "text/plain"
    );
    assert_eq!(net.broker.stats().retained, 1);
    // A late subscriber gets it as retained.
    let late = net.join(ClientConfig::new(V5, "late"));
    net.subscribe(late, "news/#", q(QoS::AtMostOnce));
    assert_eq!(
        net.take(late),
        [got("news/a", "hello", QoS::AtMostOnce, true)]
    );
    // [MQTT-3.3.2-2] no wildcards in a topic name: such a message cannot be made.
    assert!(TopicBuf::from_static("news/#").is_err());
}

#[test]
fn overlapping_subscriptions_of_many_sessions_give_one_copy_each() {
    // Sessions come and go, so indices are reused: each still gets exactly one copy.
    let mut net = Net::new();
    let mut subs = Vec::new();
    for round in 0..3 {
        for i in 0..20 {
            let c = net.join(ClientConfig::new(V5, format!("s{round}-{i}")));
            for f in ["a/b", "a/+", "a/#", "#", "+/b"] {
                net.subscribe(c, f, q(QoS::AtLeastOnce));
            }
            subs.push(c);
        }
        // The first half of this round leaves.
        for &c in &subs[subs.len() - 20..subs.len() - 10] {
            net.cut(c);
        }
    }
    let p = net.join(ClientConfig::new(V5, "p"));
    // [MQTT-3.3.4-2] one copy per session, at the highest QoS.
    net.publish_message(
        p,
        Message::new(TopicBuf::from_static("a/b").unwrap(), "m", QoS::AtLeastOnce),
    );
    let mut copies = 0;
    for &c in &subs {
        let got = net.take(c);
        if net.peers[c].id.is_some() {
            assert_eq!(got, [got_one()], "{c}");
            copies += 1;
        } else {
            assert!(got.is_empty());
        }
    }
    assert_eq!(copies, 30);
}

fn got_one() -> (String, String, QoS, bool) {
    got("a/b", "m", QoS::AtLeastOnce, false)
}
