//! Routing: messages between protocol levels, wildcards, overlapping and shared subscriptions, forwarded properties, order.
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
fn messages_flow_between_all_protocol_levels() {
    let mut net = Net::new();
    let sub = net.join(ClientConfig::new(V31, "sub31"));
    let sub4 = net.join(ClientConfig::new(V4, "sub4"));
    let pub5 = net.join(ClientConfig::new(V5, "pub5"));
    net.subscribe(sub, "a/+", q(QoS::ExactlyOnce));
    net.subscribe(sub4, "a/#", q(QoS::AtLeastOnce));
    net.take(sub);
    net.take(sub4);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        net.publish(pub5, "a/b", "m", qos, false);
    }
    let all = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    assert_eq!(net.take(sub), all.map(|qos| got("a/b", "m", qos, false)));
    // [MQTT-3.8.4-8] downgraded to the subscription's QoS.
    let capped = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::AtLeastOnce];
    assert_eq!(
        net.take(sub4),
        capped.map(|qos| got("a/b", "m", qos, false))
    );
    assert_eq!(net.broker.stats().messages_received, 3);
}

#[test]
fn mqtt_4_7_2_1_wildcards_do_not_match_dollar_topics() {
    let mut net = Net::new();
    let s = net.join(ClientConfig::new(V4, "s"));
    let p = net.join(ClientConfig::new(V4, "p"));
    net.subscribe(s, "#", q(QoS::AtMostOnce));
    net.publish(p, "$internal/x", "hidden", QoS::AtMostOnce, false);
    net.publish(p, "public", "seen", QoS::AtMostOnce, false);
    assert_eq!(net.take(s), [got("public", "seen", QoS::AtMostOnce, false)]);
}

#[test]
fn mqtt_3_3_4_2_overlapping_subscriptions_give_one_copy_at_the_highest_qos() {
    let mut net = Net::new();
    let s = net.join(ClientConfig::new(V5, "s"));
    let p = net.join(ClientConfig::new(V5, "p"));
    net.peers[s]
        .client
        .subscribe(
            net.now,
            &[("a/+", q(QoS::AtMostOnce))],
            SubscriptionId::new(1),
        )
        .unwrap();
    net.peers[s]
        .client
        .subscribe(
            net.now,
            &[("a/#", q(QoS::ExactlyOnce))],
            SubscriptionId::new(2),
        )
        .unwrap();
    net.drive();
    net.events(s);
    net.publish(p, "a/b", "x", QoS::ExactlyOnce, false);
    let evs = net.events(s);
    let msgs: Vec<_> = evs
        .iter()
        .filter_map(|e| match e {
            Event::Message { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].qos, QoS::ExactlyOnce);
    // [MQTT-3.3.4-3] every matching subscription's identifier.
    let mut ids: Vec<u32> = msgs[0]
        .properties()
        .subscription_identifiers
        .iter()
        .map(|i| i.get())
        .collect();
    ids.sort();
    assert_eq!(ids, [1, 2]);
}

#[test]
fn mqtt_4_8_2_3_shared_subscription_splits_messages() {
    let mut net = Net::new();
    let a = net.join(ClientConfig::new(V5, "a"));
    let b = net.join(ClientConfig::new(V5, "b"));
    let p = net.join(ClientConfig::new(V5, "p"));
    net.subscribe(a, "$share/g/jobs/#", q(QoS::AtLeastOnce));
    net.subscribe(b, "$share/g/jobs/#", q(QoS::AtLeastOnce));
    for _ in 0..10 {
        net.publish(p, "jobs/x", "j", QoS::AtLeastOnce, false);
    }
    let (na, nb) = (net.take(a).len(), net.take(b).len());
    // One member per message, and both get some.
    assert_eq!(na + nb, 10);
    assert!(na > 0 && nb > 0, "{na} {nb}");
}

#[test]
fn mqtt_3_3_2_4_message_properties_are_forwarded_unchanged() {
    // [MQTT-3.3.2-4] Payload Format Indicator, [MQTT-3.3.2-15] Response Topic,
    // [MQTT-3.3.2-16] Correlation Data, [MQTT-3.3.2-17] User Properties, [MQTT-3.3.2-18] in
    // their order, [MQTT-3.3.2-20] Content Type: to every subscriber, online, offline-queued
    // or served from the retained store.
    let mut net = Net::new();
    let online = net.join(ClientConfig::new(V5, "online"));
    let offline = net.join(persistent(V5, "offline"));
    let p = net.join(ClientConfig::new(V5, "p"));
    net.subscribe(online, "req/#", q(QoS::AtLeastOnce));
    net.subscribe(offline, "req/+", q(QoS::ExactlyOnce));
    net.events(online);
    net.cut(offline);
    let users = [("k", "1"), ("z", "2"), ("k", "0"), ("a", "")];
    for (payload_format, topic) in [(true, "req/1"), (false, "req/2")] {
        let mut m = Message::new(
            TopicBuf::from_static(topic).unwrap(),
            "body",
            QoS::AtLeastOnce,
        );
        m.retain = true;
        m.properties_mut().payload_format_indicator = Some(payload_format);
        m.properties_mut().content_type = Some("application/json; v=2".into());
        m.properties_mut().response_topic = Some("reply/p/7".into());
        m.properties_mut().correlation_data = Some(bytes::Bytes::from_static(b"\x00corr\xff"));
        m.properties_mut().set_user_properties(&users).unwrap();
        net.publish_message(p, m);
    }
    net.reconnect(offline);
    let late = net.join(ClientConfig::new(V5, "late"));
    net.subscribe(late, "req/#", q(QoS::AtLeastOnce));
    for s in [online, offline, late] {
        let got = net.deliveries(s);
        assert_eq!(got.len(), 2, "{s}");
        for ((_, _, m), payload_format) in got.iter().zip([true, false]) {
            let props = &m.properties();
            assert_eq!(props.payload_format_indicator, Some(payload_format));
            assert_eq!(
                props.content_type.as_ref().map(Utf8Bytes::as_str),
                Some("application/json; v=2")
            );
            assert_eq!(
                props.response_topic.as_ref().map(Utf8Bytes::as_str),
                Some("reply/p/7")
            );
            assert_eq!(
                props.correlation_data.as_deref(),
                Some(&b"\x00corr\xff"[..])
            );
            assert_eq!(props.user_properties().iter().collect::<Vec<_>>(), users);
            assert_eq!(text(m), "body");
        }
    }
}

#[test]
fn mqtt_3_3_4_4_one_copy_carries_every_matching_subscription_identifier() {
    let mut net = Net::new();
    let s = net.join(persistent(V5, "s"));
    let t = net.join(ClientConfig::new(V5, "t"));
    let u = net.join(ClientConfig::new(V5, "u"));
    let p = net.join(ClientConfig::new(V5, "p"));
    let subs: [(usize, &str, Option<u32>); 6] = [
        (s, "x/+", Some(1)),
        (s, "x/#", Some(2)),
        (s, "#", None),
        (s, "$share/g/x/y", Some(3)),
        (t, "x/y", Some(9)),
        (u, "x/y", None),
    ];
    for (i, filter, id) in subs {
        net.peers[i]
            .client
            .subscribe(
                net.now,
                &[(filter, q(QoS::AtLeastOnce))],
                id.and_then(SubscriptionId::new),
            )
            .unwrap();
        net.drive();
    }
    for i in [s, t, u] {
        net.events(i);
    }
    let ids = |net: &mut Net<AllowAll>, i| -> Vec<Vec<u32>> {
        net.deliveries(i)
            .into_iter()
            .map(|(_, _, m)| {
                let mut ids: Vec<u32> = m
                    .properties()
                    .subscription_identifiers
                    .iter()
                    .map(|i| i.get())
                    .collect();
                ids.sort();
                ids
            })
            .collect()
    };
    net.publish(p, "x/y", "m", QoS::AtLeastOnce, false);
    // [MQTT-3.3.4-4] one copy for the client, with the identifier of each matching
    // subscription that has one (the shared one included); others get only their own.
    assert_eq!(ids(&mut net, s), [vec![1, 2, 3]]);
    assert_eq!(ids(&mut net, t), [vec![9]]);
    assert_eq!(ids(&mut net, u), [Vec::<u32>::new()]);
    net.publish(p, "x/z", "m", QoS::AtLeastOnce, false);
    assert_eq!(ids(&mut net, s), [vec![1, 2]]);
    // The same through the offline queue.
    net.cut(s);
    net.publish(p, "x/y", "m", QoS::AtLeastOnce, false);
    net.reconnect(s);
    assert_eq!(ids(&mut net, s), [vec![1, 2, 3]]);
}

#[test]
fn mqtt_3_3_1_3_outgoing_dup_reflects_only_the_outgoing_retransmission() {
    use mqtt_codec::{Publish, QosPid};
    let mut net = Net::new();
    let s = net.join(ClientConfig {
        manual_acks: true,
        ..persistent(V5, "s")
    });
    let p = net.join(ClientConfig::new(V5, "p"));
    net.subscribe(s, "d", q(QoS::ExactlyOnce));
    net.events(s);
    // The publisher re-sends (DUP=1) messages the broker never saw.
    for qos_pid in [QosPid::AtLeastOnce(pid(101)), QosPid::ExactlyOnce(pid(102))] {
        let mut publish = Publish::new(Topic::new("d").unwrap(), b"again", qos_pid);
        publish.dup = true;
        net.inject(p, V5, &Packet::Publish(publish));
    }
    let first = net.deliveries(s);
    let seen: Vec<_> = first.iter().map(|(_, dup, m)| (*dup, m.qos)).collect();
    // Not copied from the incoming PUBLISH: this is the first attempt towards `s`.
    assert_eq!(seen, [(false, QoS::AtLeastOnce), (false, QoS::ExactlyOnce)]);
    let qos1_id = first[0].0;
    // Unacknowledged when the connection drops: the broker's own re-send carries DUP=1.
    net.cut(s);
    net.reconnect(s);
    let again = net.deliveries(s);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!((again[0].0, again[0].1), (qos1_id, true));
    net.peers[s].client.ack(net.now, qos1_id.unwrap());
    net.drive();
    // A new message is a first attempt again.
    net.publish(p, "d", "new", QoS::AtLeastOnce, false);
    let new = net.deliveries(s);
    assert_eq!(new.len(), 1);
    assert!(!new[0].1);
}

#[test]
fn mqtt_3_3_2_3_delivered_topic_name_matches_the_filter() {
    let filters = ["sport/+/score", "sport/tennis/#", "+/+"];
    let mut net = Net::new();
    let s = net.join(ClientConfig::new(V5, "s"));
    let p = net.join(ClientConfig::new(V5, "p"));
    for f in filters {
        net.subscribe(s, f, q(QoS::AtMostOnce));
    }
    net.events(s);
    let topics = [
        "sport/tennis/score",
        "sport/golf/score",
        "sport/tennis",
        "sport",
        "sport/tennis/player/1",
        "news/today",
        "sport/golf/player",
        "/x",
    ];
    // Twice: the second round goes out with topic aliases.
    for _ in 0..2 {
        for t in topics {
            net.publish(p, t, "m", QoS::AtMostOnce, false);
        }
    }
    let got: Vec<String> = net.take(s).into_iter().map(|g| g.0).collect();
    for t in &got {
        let name = mqtt_topic::TopicName::new(t).unwrap();
        assert!(
            filters
                .iter()
                .any(|f| mqtt_topic::TopicFilter::new(f).unwrap().matches(name)),
            "{t}"
        );
    }
    let once = [
        "sport/tennis/score",
        "sport/golf/score",
        "sport/tennis",
        "sport/tennis/player/1",
        "news/today",
        "/x",
    ];
    assert_eq!(got, [once, once].concat());
}

#[test]
fn mqtt_3_3_5_1_v311_overlapping_subscriptions_deliver_at_the_highest_qos() {
    let mut net = Net::new();
    let s = net.join(ClientConfig::new(V4, "s"));
    let p = net.join(ClientConfig::new(V4, "p"));
    net.subscribe(s, "a/+", q(QoS::AtMostOnce));
    net.subscribe(s, "a/#", q(QoS::ExactlyOnce));
    net.subscribe(s, "#", q(QoS::AtLeastOnce));
    net.events(s);
    net.publish(p, "a/b", "2", QoS::ExactlyOnce, false);
    net.publish(p, "a/b", "1", QoS::AtLeastOnce, false);
    net.publish(p, "b", "only #", QoS::ExactlyOnce, false);
    assert_eq!(
        net.take(s),
        [
            got("a/b", "2", QoS::ExactlyOnce, false),
            got("a/b", "1", QoS::AtLeastOnce, false),
            got("b", "only #", QoS::AtLeastOnce, false),
        ]
    );
}

#[test]
fn mqtt_3_3_2_5_expired_messages_are_not_delivered_onward() {
    let expiring = |payload: &'static str, secs| {
        let mut m = Message::new(
            TopicBuf::from_static("e").unwrap(),
            payload,
            QoS::AtLeastOnce,
        );
        m.properties_mut().message_expiry_interval = secs;
        m
    };
    let mut net = Net::new();
    let p = net.join(ClientConfig::new(V5, "p"));
    // Queued for an offline session.
    let s = net.join(persistent(V5, "s"));
    net.subscribe(s, "e", q(QoS::AtLeastOnce));
    net.cut(s);
    net.publish_message(p, expiring("short", Some(5)));
    net.publish_message(p, expiring("long", Some(60)));
    net.publish_message(p, expiring("forever", None));
    net.advance(6_000);
    net.reconnect(s);
    let got: Vec<_> = net
        .deliveries(s)
        .into_iter()
        .map(|(_, _, m)| (text(&m), m.properties().message_expiry_interval))
        .collect();
    assert_eq!(
        got,
        [
            (String::from("long"), Some(54)),
            (String::from("forever"), None)
        ]
    );
    // Waiting behind the client's Receive Maximum.
    let w = net.join(ClientConfig {
        receive_maximum: 1,
        manual_acks: true,
        ..ClientConfig::new(V5, "w")
    });
    net.subscribe(w, "e", q(QoS::AtLeastOnce));
    net.publish_message(p, expiring("first", None));
    let first = net.deliveries(w);
    assert_eq!(first.len(), 1);
    net.publish_message(p, expiring("stale", Some(2)));
    net.publish_message(p, expiring("fresh", Some(60)));
    net.advance(3_000);
    net.peers[w].client.ack(net.now, first[0].0.unwrap());
    net.drive();
    let rest: Vec<String> = drain_acking(&mut net, w).into_iter().map(|g| g.0).collect();
    assert_eq!(rest, ["fresh"]);
}

#[test]
fn mqtt_4_6_0_5_messages_keep_each_publishers_order() {
    let mut net = Net::new();
    let s = net.join(ClientConfig {
        receive_maximum: 3,
        manual_acks: true,
        ..persistent(V5, "s")
    });
    let p1 = net.join(ClientConfig::new(V5, "p1"));
    let p2 = net.join(ClientConfig::new(V4, "p2"));
    net.subscribe(s, "o/#", q(QoS::ExactlyOnce));
    net.events(s);
    const N: usize = 12;
    let payloads: Vec<(String, String)> = (0..N)
        .map(|i| (format!("p1-{i:02}"), format!("p2-{i:02}")))
        .collect();
    // Interleaved, without letting the network run in between: most wait in the session.
    let send = |net: &mut Net<AllowAll>, range: core::ops::Range<usize>| {
        for (a, b) in &payloads[range] {
            let now = net.now;
            let m = Message::new(
                TopicBuf::from_static("o/a").unwrap(),
                bytes::Bytes::from(a.clone()),
                QoS::AtLeastOnce,
            );
            net.peers[p1].client.publish(now, m).unwrap();
            let m = Message::new(
                TopicBuf::from_static("o/a").unwrap(),
                bytes::Bytes::from(b.clone()),
                QoS::ExactlyOnce,
            );
            net.peers[p2].client.publish(now, m).unwrap();
        }
        net.drive();
    };
    send(&mut net, 0..8);
    // Three in flight, unacknowledged, when the subscriber drops.
    let mut seen: Vec<(String, bool)> = net
        .deliveries(s)
        .into_iter()
        .map(|(_, dup, m)| (text(&m), dup))
        .collect();
    assert_eq!(seen.len(), 3);
    net.cut(s);
    send(&mut net, 8..N);
    net.reconnect(s);
    seen.extend(drain_acking(&mut net, s).into_iter().map(|g| (g.0, g.3)));
    for (publisher, qos_payloads) in [("p1-", 0), ("p2-", 1)] {
        let order: Vec<&str> = seen
            .iter()
            .filter(|(p, dup)| p.starts_with(publisher) && !dup)
            .map(|(p, _)| p.as_str())
            .collect();
        let expected: Vec<&str> = payloads
            .iter()
            .map(|(a, b)| if qos_payloads == 0 { a } else { b }.as_str())
            .collect();
        assert_eq!(order, expected);
    }
}

#[test]
fn mqtt_4_5_0_1_every_matching_subscriber_gets_the_message() {
    let mut net = Net::new();
    let a = net.join(ClientConfig::new(V31, "a"));
    let b = net.join(ClientConfig::new(V4, "b"));
    let c = net.join(ClientConfig::new(V5, "c"));
    let d = net.join(persistent(V5, "d"));
    let e = net.join(ClientConfig::new(V5, "e"));
    let g1 = net.join(ClientConfig::new(V5, "g1"));
    let g2 = net.join(ClientConfig::new(V5, "g2"));
    let p = net.join(ClientConfig::new(V5, "p"));
    for (i, f) in [
        (a, "m/+"),
        (b, "m/#"),
        (c, "+/x"),
        (d, "m/x"),
        (e, "other"),
        (g1, "$share/g/m/x"),
        (g2, "$share/g/m/x"),
    ] {
        net.subscribe(i, f, q(QoS::AtLeastOnce));
    }
    net.cut(d);
    net.publish(p, "m/x", "all", QoS::AtLeastOnce, false);
    let one = [got("m/x", "all", QoS::AtLeastOnce, false)];
    for i in [a, b, c] {
        assert_eq!(net.take(i), one, "{i}");
    }
    assert!(net.take(e).is_empty());
    // The shared group counts as one subscriber.
    let group = [net.take(g1), net.take(g2)].concat();
    assert_eq!(group, one);
    net.reconnect(d);
    assert_eq!(net.take(d), one);
}

#[test]
fn mqtt_4_8_2_4_shared_qos2_delivery_resumes_with_the_same_member() {
    let mut net = Net::new();
    let config = |id| ClientConfig {
        manual_acks: true,
        ..persistent(V5, id)
    };
    let members = [net.join(config("m1")), net.join(config("m2"))];
    let p = net.join(ClientConfig::new(V5, "p"));
    for m in members {
        net.subscribe(m, "$share/g/job", q(QoS::ExactlyOnce));
        net.events(m);
    }
    net.publish(p, "job", "work", QoS::ExactlyOnce, false);
    let (r, o) = if net.peers[members[0]].events.is_empty() {
        (members[1], members[0])
    } else {
        (members[0], members[1])
    };
    let first = net.deliveries(r);
    assert_eq!(first.len(), 1);
    net.cut(r);
    // Meanwhile new work goes to the member that is there; "work" stays with `r`.
    net.publish(p, "job", "next", QoS::ExactlyOnce, false);
    let other: Vec<String> = drain_acking(&mut net, o).into_iter().map(|g| g.0).collect();
    assert_eq!(other, ["next"]);
    // Back with a machine that forgot what it had received: the broker re-sends to it.
    net.peers[r].client = Client::new(config(if r == members[0] { "m1" } else { "m2" }));
    net.reconnect(r);
    let again = net.deliveries(r);
    assert_eq!(again.len(), 1, "{again:?}");
    assert_eq!((again[0].0, again[0].1), (first[0].0, true));
    assert_eq!(text(&again[0].2), "work");
    net.peers[r].client.ack(net.now, again[0].0.unwrap());
    net.drive();
    assert!(net.peers[r].client.session().incoming_qos2.is_empty());
    assert!(net.deliveries(o).is_empty());
}

#[test]
fn mqtt_4_8_2_5_a_shared_message_dies_with_its_members_session() {
    let mut net = Net::new();
    let config = |id| ClientConfig {
        manual_acks: true,
        session_expiry_interval: 5,
        ..persistent(V5, id)
    };
    let members = [net.join(config("m1")), net.join(config("m2"))];
    let p = net.join(ClientConfig::new(V5, "p"));
    for m in members {
        net.subscribe(m, "$share/g/job", q(QoS::AtLeastOnce));
        net.events(m);
    }
    net.publish(p, "job", "work", QoS::AtLeastOnce, false);
    let (r, o) = if net.peers[members[0]].events.is_empty() {
        (members[1], members[0])
    } else {
        (members[0], members[1])
    };
    assert_eq!(net.deliveries(r).len(), 1);
    net.cut(r);
    net.advance(5_000);
    net.advance(5_000);
    // The session of `r` ended with "work" in flight: not handed to `o`.
    assert!(net.deliveries(o).is_empty());
    net.publish(p, "job", "next", QoS::AtLeastOnce, false);
    let other: Vec<String> = drain_acking(&mut net, o).into_iter().map(|g| g.0).collect();
    assert_eq!(other, ["next"]);
    // Nor to `r`, which comes back to a new session.
    net.reconnect(r);
    assert!(net.events(r).iter().any(|e| matches!(
        e,
        Event::Connected(ConnAckInfo {
            session_present: false,
            ..
        })
    )));
    assert!(net.deliveries(r).is_empty());
}

#[test]
fn mqtt_4_8_2_6_a_refused_shared_message_is_dropped() {
    use mqtt_codec::PubAck;
    let mut net = Net::new();
    let config = |id| ClientConfig {
        manual_acks: true,
        ..persistent(V5, id)
    };
    let members = [net.join(config("m1")), net.join(config("m2"))];
    let p = net.join(ClientConfig::new(V5, "p"));
    for m in members {
        net.subscribe(m, "$share/g/job", q(QoS::ExactlyOnce));
        net.events(m);
    }
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        net.publish(p, "job", "refused", qos, false);
        let got: Vec<_> = members
            .iter()
            .flat_map(|&m| net.deliveries(m).into_iter().map(move |d| (m, d)))
            .collect();
        assert_eq!(got.len(), 1);
        let (member, (id, _, message)) = &got[0];
        assert_eq!(message.qos, qos);
        // PUBACK or PUBREC with Unspecified error, sent past the client machine.
        let ack = PubAck {
            reason_code: ReasonCode::UnspecifiedError,
            ..PubAck::new(id.unwrap())
        };
        let packet = match qos {
            QoS::AtLeastOnce => Packet::PubAck(ack),
            _ => Packet::PubRec(ack),
        };
        net.inject(*member, V5, &packet);
        // Not offered to the other member.
        for m in members {
            assert!(net.deliveries(m).is_empty());
        }
    }
    // Nor re-sent to anyone after a reconnect.
    for (m, id) in members.into_iter().zip(["m1", "m2"]) {
        net.cut(m);
        net.peers[m].client = Client::new(config(id));
        net.reconnect(m);
        assert!(net.deliveries(m).is_empty());
    }
}

#[test]
fn mqtt_3_3_4_9_a_burst_beyond_receive_maximum_is_acknowledged_not_refused() {
    // MQTT.js 5 ignores the broker's Receive Maximum (64) and publishes 200 QoS 1 messages
    // in one burst. The broker takes a quota's worth, acknowledges it, reads on, and so
    // acknowledges and routes all 200 in one `handle_input`, as mosquitto does, instead of
    // DISCONNECT 0x93.
    use mqtt_codec::{decode, Connect, DecodeOptions, Publish, QosPid, Status};
    let mut net = Net::new();
    let s = net.join(ClientConfig::new(V5, "s"));
    net.subscribe(s, "burst", q(QoS::AtLeastOnce));
    let now = net.now;
    let id = net.broker.open(now);
    let mut input = BytesMut::new();
    input.extend_from_slice(
        &Packet::Connect(Connect::new(V5, "mqttjs"))
            .encode_to_vec(V5)
            .unwrap(),
    );
    for pid in 1..=200u16 {
        let p = Publish::new(
            Topic::new("burst").unwrap(),
            b"x",
            QosPid::AtLeastOnce(PacketId::new(pid).unwrap()),
        );
        input.extend_from_slice(&Packet::Publish(p).encode_to_vec(V5).unwrap());
    }
    net.broker.handle_input(now, id, &mut input);
    assert!(input.is_empty());
    let mut out = vec![0u8; 1024];
    let mut acks = Vec::new();
    let mut disconnects = 0;
    while let Some(n) = net.broker.poll_transmit(now, id, &mut out).unwrap() {
        match decode(&out[..n], &DecodeOptions::new(V5)) {
            Ok(Status::Complete {
                packet: Packet::PubAck(a),
                ..
            }) => acks.push(a.packet_id.get()),
            Ok(Status::Complete {
                packet: Packet::Disconnect(_),
                ..
            }) => disconnects += 1,
            _ => {}
        }
    }
    assert_eq!(disconnects, 0);
    assert_eq!(acks, (1..=200).collect::<Vec<u16>>());
    net.drive();
    assert_eq!(net.take(s).len(), 200);
}

#[test]
fn mqtt_3_3_4_4_every_matching_subscription_identifier_is_delivered() {
    // [MQTT-3.3.4-3] [MQTT-3.3.4-4] six overlapping subscriptions, each with its own
    // identifier: the one copy carries all six (no cap at four), online and, after a
    // reconnect, from the offline queue.
    let mut net = Net::new();
    let s = net.join(persistent(V5, "s"));
    let p = net.join(ClientConfig::new(V5, "p"));
    let filters = ["a/b", "a/+", "a/#", "+/b", "+/+", "#"];
    for (i, f) in filters.iter().enumerate() {
        net.peers[s]
            .client
            .subscribe(
                net.now,
                &[(f, q(QoS::AtLeastOnce))],
                SubscriptionId::new(i as u32 + 1),
            )
            .unwrap();
    }
    net.drive();
    net.events(s);
    let ids = |net: &mut Net<AllowAll>| -> Vec<Vec<u32>> {
        net.deliveries(s)
            .into_iter()
            .map(|(_, _, m)| {
                let mut ids: Vec<u32> = m
                    .properties()
                    .subscription_identifiers
                    .iter()
                    .map(|i| i.get())
                    .collect();
                ids.sort();
                ids
            })
            .collect()
    };
    net.publish(p, "a/b", "online", QoS::AtLeastOnce, false);
    assert_eq!(ids(&mut net), [vec![1, 2, 3, 4, 5, 6]]);
    net.cut(s);
    net.publish(p, "a/b", "offline", QoS::AtLeastOnce, false);
    net.reconnect(s);
    assert_eq!(ids(&mut net), [vec![1, 2, 3, 4, 5, 6]]);
}
