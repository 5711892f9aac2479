//! Sessions: wills, persistence, clean start, takeover, client identifiers, expiry.
#![allow(unused_imports)]

mod support;

use bytes::BytesMut;
use mqtt_broker::Error;
use mqtt_broker::*;
use mqtt_codec::{
    Packet, PacketId, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionId,
    SubscriptionOptions, Topic,
};
use mqtt_state::*;
use support::*;

#[test]
fn will_on_abnormal_close_but_not_on_disconnect() {
    let mut net = Net::new();
    let s = net.join(ClientConfig::new(V4, "s"));
    net.subscribe(s, "wills/#", q(QoS::AtLeastOnce));
    let mut will = Message::new(
        TopicBuf::from_static("wills/dev").unwrap(),
        "gone",
        QoS::AtLeastOnce,
    );
    will.retain = false;
    let config = ClientConfig {
        will: Some((will.clone(), 0)),
        ..ClientConfig::new(V4, "dev")
    };
    let d = net.join(config.clone());
    // [MQTT-3.1.2-8] published when the connection drops.
    net.cut(d);
    assert_eq!(
        net.take(s),
        [got("wills/dev", "gone", QoS::AtLeastOnce, false)]
    );
    // [MQTT-3.14.4-3] a normal DISCONNECT discards it.
    net.reconnect(d);
    net.peers[d]
        .client
        .disconnect(net.now, ReasonCode::Success)
        .unwrap();
    net.drive();
    net.cut(d);
    assert!(net.take(s).is_empty());
}

#[test]
fn mqtt_3_1_3_9_will_delay_and_reconnect_in_time() {
    let mut net = Net::new();
    let s = net.join(ClientConfig::new(V5, "s"));
    net.subscribe(s, "w", q(QoS::AtMostOnce));
    let config = ClientConfig {
        will: Some((
            Message::new(TopicBuf::from_static("w").unwrap(), "late", QoS::AtMostOnce),
            10,
        )),
        ..persistent(V5, "dev")
    };
    let d = net.join(config);
    net.cut(d);
    net.advance(5_000);
    assert!(net.take(s).is_empty());
    // Back within the delay: no will.
    net.reconnect(d);
    net.advance(20_000);
    assert!(net.take(s).is_empty());
    // Gone for good: the will goes out after its delay.
    net.cut(d);
    net.advance(9_000);
    assert!(net.take(s).is_empty());
    net.advance(1_000);
    assert_eq!(net.take(s), [got("w", "late", QoS::AtMostOnce, false)]);
}

#[test]
fn persistent_session_receives_what_was_queued_offline() {
    // [MQTT-3.1.3-2] the client identifier finds the session again.
    let mut net = Net::new();
    let s = net.join(persistent(V4, "s"));
    net.subscribe(s, "q/#", q(QoS::AtLeastOnce));
    let p = net.join(ClientConfig::new(V4, "p"));
    net.cut(s);
    for payload in ["1", "2", "3"] {
        net.publish(p, "q/x", payload, QoS::AtLeastOnce, false);
    }
    // QoS 0 is not queued for an offline session.
    net.publish(p, "q/x", "zero", QoS::AtMostOnce, false);
    net.reconnect(s);
    let evs = net.events(s);
    assert!(evs.iter().any(|e| matches!(
        e,
        Event::Connected(ConnAckInfo {
            session_present: true,
            ..
        })
    )));
    let payloads: Vec<String> = evs
        .into_iter()
        .filter_map(|e| match e {
            Event::Message { message, .. } => {
                Some(String::from_utf8(message.payload.to_vec()).unwrap())
            }
            _ => None,
        })
        .collect();
    assert_eq!(payloads, ["1", "2", "3"]);
}

#[test]
fn mqtt_3_1_2_4_clean_start_drops_the_session() {
    // [MQTT-3.1.4-4] (5.0) the server carries out Clean Start.
    let mut net = Net::new();
    let s = net.join(persistent(V5, "s"));
    net.subscribe(s, "t", q(QoS::AtLeastOnce));
    net.cut(s);
    net.peers[s].client = Client::new(ClientConfig::new(V5, "s"));
    net.reconnect(s);
    let p = net.join(ClientConfig::new(V5, "p"));
    net.publish(p, "t", "x", QoS::AtLeastOnce, false);
    assert!(net.take(s).is_empty());
    assert_eq!(net.broker.stats().subscriptions, 0);
}

#[test]
fn mqtt_3_1_4_3_second_connection_takes_the_session_over() {
    let mut net = Net::new();
    let first = net.join(persistent(V5, "same"));
    net.subscribe(first, "t", q(QoS::AtLeastOnce));
    let second = net.join(persistent(V5, "same"));
    // The first got DISCONNECT Session taken over.
    assert!(net.events(first).iter().any(|e| matches!(
        e,
        Event::Disconnected {
            reason: ReasonCode::SessionTakenOver,
            ..
        }
    )));
    assert!(net.events(second).iter().any(|e| matches!(
        e,
        Event::Connected(ConnAckInfo {
            session_present: true,
            ..
        })
    )));
    let p = net.join(ClientConfig::new(V5, "p"));
    net.publish(p, "t", "x", QoS::AtLeastOnce, false);
    assert_eq!(net.take(second), [got("t", "x", QoS::AtLeastOnce, false)]);
    assert!(net.take(first).is_empty());
}

#[test]
fn mqtt_3_1_3_6_empty_client_id_is_assigned() {
    let mut net = Net::new();
    let c = net.join(ClientConfig::new(V5, ""));
    let evs = net.events(c);
    let Some(Event::Connected(info)) = evs.first() else {
        panic!("{evs:?}")
    };
    let id = info.assigned_client_id.as_ref().expect("assigned");
    assert!(!id.as_str().is_empty());
}

#[test]
fn session_expiry_ends_the_session() {
    let mut net = Net::new();
    let s = net.join(ClientConfig {
        session_expiry_interval: 10,
        ..persistent(V5, "s")
    });
    net.subscribe(s, "t", q(QoS::AtLeastOnce));
    net.cut(s);
    assert_eq!(net.broker.stats().subscriptions, 1);
    net.advance(10_000);
    // [MQTT-4.1.0-2] gone after the interval.
    assert_eq!(net.broker.stats().subscriptions, 0);
}

#[test]
fn mqtt_3_1_4_2_v311_second_connection_takes_the_session_over() {
    let mut net = Net::new();
    let first = net.join(persistent(V4, "same"));
    net.subscribe(first, "t", q(QoS::AtLeastOnce));
    net.events(first);
    let second = net.join(persistent(V4, "same"));
    // The existing connection is closed by the broker.
    assert!(net.peers[first].id.is_none());
    assert!(!net.peers[first].client.is_connected());
    assert!(net
        .events(first)
        .iter()
        .any(|e| matches!(e, Event::Disconnected { .. })));
    assert!(net.events(second).iter().any(|e| matches!(
        e,
        Event::Connected(ConnAckInfo {
            session_present: true,
            ..
        })
    )));
    let p = net.join(ClientConfig::new(V4, "p"));
    net.publish(p, "t", "x", QoS::AtLeastOnce, false);
    assert_eq!(net.take(second), [got("t", "x", QoS::AtLeastOnce, false)]);
    assert!(net.take(first).is_empty());
    // A clean-session connection takes over too, and starts afresh.
    let third = net.join(ClientConfig::new(V4, "same"));
    assert!(net.peers[second].id.is_none());
    assert!(net.events(third).iter().any(|e| matches!(
        e,
        Event::Connected(ConnAckInfo {
            session_present: false,
            ..
        })
    )));
    net.publish(p, "t", "y", QoS::AtLeastOnce, false);
    assert!(net.take(third).is_empty());
    assert_eq!(net.broker.stats().clients_connected, 2);
}

#[test]
fn mqtt_3_1_4_2_a_failed_check_closes_the_connection_and_spares_the_session() {
    // 5.0 [MQTT-3.1.4-2]: a CONNECT that fails authentication is refused and closed; it
    // takes nothing over.
    let mut net = Net::with(Broker::with_hooks(
        BrokerConfig {
            sys_interval: None,
            ..BrokerConfig::default()
        },
        Strict,
        Instant::ZERO,
    ));
    let with = |v, password: &'static [u8]| ClientConfig {
        username: Some("u".into()),
        password: Some(bytes::Bytes::from_static(password)),
        ..persistent(v, "victim")
    };
    let victim = net.join(with(V5, b"secret"));
    net.subscribe(victim, "t", q(QoS::AtLeastOnce));
    net.events(victim);
    for v in [V5, V4] {
        let intruder = net.join(with(v, b"guess"));
        let evs = net.events(intruder);
        assert!(
            evs.iter().any(|e| matches!(
                e,
                Event::Disconnected {
                    reason: ReasonCode::BadUserNameOrPassword,
                    ..
                }
            )),
            "{evs:?}"
        );
        assert!(net.peers[intruder].id.is_none());
        assert!(!net.peers[intruder].client.is_connected());
    }
    assert!(net.peers[victim].client.is_connected());
    assert!(net.events(victim).is_empty());
    assert_eq!(net.broker.stats().clients_connected, 1);
    let p = net.join(with(V5, b"secret"));
    // (`p` took "victim" over legitimately; the refused ones did not.)
    assert!(net.peers[victim].id.is_none());
    net.publish(p, "t", "x", QoS::AtLeastOnce, false);
    assert_eq!(net.take(p), [got("t", "x", QoS::AtLeastOnce, false)]);
}

#[test]
fn mqtt_3_1_3_5_short_alphanumeric_client_ids_are_accepted() {
    let ids = ["0", "a", "A", "Z9", "0123456789abcdefghijKLM"];
    assert_eq!(ids[4].len(), 23);
    for v in [V31, V4, V5] {
        let mut net = Net::new();
        let peers: Vec<usize> = ids
            .iter()
            .map(|id| net.join(ClientConfig::new(v, *id)))
            .collect();
        for (&i, id) in peers.iter().zip(ids) {
            let evs = net.events(i);
            assert!(
                matches!(
                    evs.first(),
                    Some(Event::Connected(ConnAckInfo {
                        assigned_client_id: None,
                        ..
                    }))
                ),
                "{v:?} {id}: {evs:?}"
            );
        }
        // Each is its own session ("a" and "A" differ): nobody was taken over.
        assert!(peers.iter().all(|&i| net.peers[i].client.is_connected()));
        assert_eq!(net.broker.stats().clients_connected, ids.len());
    }
}

#[test]
fn mqtt_3_2_2_16_assigned_client_ids_are_unique() {
    let mut net = Net::new();
    // A client already using the name the broker would assign first.
    let squatter = net.join(ClientConfig::new(V5, "auto-0000000000000001"));
    let named = net.join(persistent(V5, "auto-0000000000000002"));
    net.cut(named);
    let a = net.join(ClientConfig::new(V5, ""));
    let b = net.join(ClientConfig::new(V5, ""));
    let assigned = |net: &mut Net<AllowAll>, i| {
        net.events(i)
            .into_iter()
            .find_map(|e| match e {
                Event::Connected(info) => info.assigned_client_id,
                _ => None,
            })
            .expect("assigned")
    };
    let (ida, idb) = (assigned(&mut net, a), assigned(&mut net, b));
    assert_ne!(ida, idb);
    for id in [&ida, &idb] {
        assert_ne!(id.as_str(), "auto-0000000000000001");
        // Nor the one a disconnected session still holds.
        assert_ne!(id.as_str(), "auto-0000000000000002");
    }
    assert!([squatter, a, b]
        .iter()
        .all(|&i| net.peers[i].client.is_connected()));
    net.reconnect(named);
    assert!(net.events(named).iter().any(|e| matches!(
        e,
        Event::Connected(ConnAckInfo {
            session_present: true,
            ..
        })
    )));
}

#[test]
fn mqtt_3_1_2_28_no_response_information_unless_requested() {
    use mqtt_codec::{decode, Connect, DecodeOptions, Status};
    let mut broker = broker_with(|_| {});
    let now = Instant::ZERO;
    for request in [None, Some(false)] {
        let id = broker.open(now);
        let mut connect = Connect::new(V5, "rri");
        connect.properties.request_response_information = request;
        let bytes = Packet::Connect(connect).encode_to_vec(V5).unwrap();
        broker.handle_input(now, id, &mut BytesMut::from(&bytes[..]));
        let mut out = vec![0u8; 1024];
        let n = broker
            .poll_transmit(now, id, &mut out)
            .unwrap()
            .expect("CONNACK");
        let Ok(Status::Complete {
            packet: Packet::ConnAck(ack),
            ..
        }) = decode(&out[..n], &DecodeOptions::new(V5))
        else {
            panic!("{:?}", &out[..n])
        };
        assert_eq!(ack.reason_code, ReasonCode::Success);
        assert_eq!(ack.properties.response_information, None);
        broker.handle_close(now, id);
    }
}
