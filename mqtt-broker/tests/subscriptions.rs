//! SUBSCRIBE, UNSUBSCRIBE and retained messages.
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
fn mqtt_3_3_1_5_retained_messages() {
    let mut net = Net::new();
    let p = net.join(ClientConfig::new(V5, "p"));
    net.publish(p, "r/1", "first", QoS::AtLeastOnce, true);
    // [MQTT-3.3.1-5] a new retained message replaces the old.
    net.publish(p, "r/1", "second", QoS::AtLeastOnce, true);
    net.publish(p, "r/2", "other", QoS::AtMostOnce, true);
    // [MQTT-3.3.1-8] RETAIN=0 leaves the retained message alone.
    net.publish(p, "r/2", "not kept", QoS::AtMostOnce, false);
    let s = net.join(ClientConfig::new(V5, "s"));
    net.subscribe(s, "r/+", q(QoS::AtLeastOnce));
    let mut retained = net.take(s);
    retained.sort();
    // [MQTT-3.3.1-9] sent on subscribe, with RETAIN set.
    assert_eq!(
        retained,
        [
            got("r/1", "second", QoS::AtLeastOnce, true),
            got("r/2", "other", QoS::AtMostOnce, true)
        ]
    );
    // [MQTT-3.3.1-6] [MQTT-3.3.1-7] an empty retained message clears the topic.
    net.publish(p, "r/1", "", QoS::AtMostOnce, true);
    assert_eq!(net.take(s), [got("r/1", "", QoS::AtMostOnce, false)]);
    let s2 = net.join(ClientConfig::new(V5, "s2"));
    net.subscribe(s2, "r/+", q(QoS::AtLeastOnce));
    assert_eq!(net.take(s2), [got("r/2", "other", QoS::AtMostOnce, true)]);
    // [MQTT-3.3.1-11] Retain Handling 2: none.
    let s3 = net.join(ClientConfig::new(V5, "s3"));
    let opts = SubscriptionOptions {
        retain_handling: RetainHandling::DoNotSend,
        ..q(QoS::AtLeastOnce)
    };
    net.subscribe(s3, "r/+", opts);
    assert!(net.take(s3).is_empty());
    // [MQTT-3.3.1-10] Retain Handling 1: only for a new subscription.
    let opts = SubscriptionOptions {
        retain_handling: RetainHandling::SendIfNew,
        ..q(QoS::AtLeastOnce)
    };
    net.subscribe(s2, "r/+", opts);
    assert!(net.take(s2).is_empty());
    assert_eq!(net.broker.stats().retained, 1);
}

#[test]
fn mqtt_3_3_1_12_retain_as_published() {
    let mut net = Net::new();
    let s = net.join(ClientConfig::new(V5, "s"));
    let p = net.join(ClientConfig::new(V5, "p"));
    net.subscribe(s, "plain", q(QoS::AtMostOnce));
    let rap = SubscriptionOptions {
        retain_as_published: true,
        ..q(QoS::AtMostOnce)
    };
    net.subscribe(s, "kept", rap);
    net.publish(p, "plain", "x", QoS::AtMostOnce, true);
    net.publish(p, "kept", "y", QoS::AtMostOnce, true);
    // [MQTT-3.3.1-12] RETAIN cleared; [MQTT-3.3.1-13] kept with Retain As Published.
    assert_eq!(
        net.take(s),
        [
            got("plain", "x", QoS::AtMostOnce, false),
            got("kept", "y", QoS::AtMostOnce, true)
        ]
    );
}

#[test]
fn mqtt_3_8_3_3_no_local() {
    let mut net = Net::new();
    let c = net.join(ClientConfig::new(V5, "c"));
    let opts = SubscriptionOptions {
        no_local: true,
        ..q(QoS::AtMostOnce)
    };
    net.subscribe(c, "t", opts);
    net.publish(c, "t", "mine", QoS::AtMostOnce, false);
    assert!(net.take(c).is_empty());
    let other = net.join(ClientConfig::new(V5, "o"));
    net.publish(other, "t", "theirs", QoS::AtMostOnce, false);
    assert_eq!(net.take(c), [got("t", "theirs", QoS::AtMostOnce, false)]);
}

#[test]
fn mqtt_3_8_4_4_multi_filter_subscribe_is_a_sequence_of_single_ones() {
    // 3.1.1 [MQTT-3.8.4-4]: as if one SUBSCRIBE per filter, one SUBACK for all; a repeated
    // filter replaces the earlier one.
    let mut net = Net::new();
    let s = net.join(ClientConfig::new(V4, "s"));
    let p = net.join(ClientConfig::new(V4, "p"));
    net.peers[s]
        .client
        .subscribe(
            net.now,
            &[
                ("a", q(QoS::AtMostOnce)),
                ("b", q(QoS::AtLeastOnce)),
                ("a", q(QoS::ExactlyOnce)),
            ],
            None,
        )
        .unwrap();
    net.drive();
    let subacks = net.ack_codes(s);
    assert_eq!(
        subacks,
        [vec![
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
            ReasonCode::GrantedQoS2
        ]]
    );
    assert_eq!(net.broker.stats().subscriptions, 2);
    net.publish(p, "a", "x", QoS::ExactlyOnce, false);
    net.publish(p, "b", "y", QoS::ExactlyOnce, false);
    assert_eq!(
        net.take(s),
        [
            got("a", "x", QoS::ExactlyOnce, false),
            got("b", "y", QoS::AtLeastOnce, false)
        ]
    );
}

#[test]
fn mqtt_3_8_4_4_replacing_a_subscription_resends_retained_and_loses_nothing() {
    let mut net = Net::new();
    let p = net.join(ClientConfig::new(V5, "p"));
    net.publish(p, "r", "kept", QoS::AtLeastOnce, true);
    // One message in flight at a time, so that some wait in the session during the swap.
    let s = net.join(ClientConfig {
        receive_maximum: 1,
        manual_acks: true,
        ..ClientConfig::new(V5, "s")
    });
    net.subscribe(s, "r", q(QoS::AtLeastOnce));
    let first = net.deliveries(s);
    assert_eq!(first.len(), 1);
    net.publish(p, "r", "live1", QoS::AtLeastOnce, false);
    // Replaced (Retain Handling 0, now at QoS 2) while "kept" is unacknowledged and
    // "live1" waits behind it.
    let opts = SubscriptionOptions {
        retain_handling: RetainHandling::SendAtSubscribe,
        ..q(QoS::ExactlyOnce)
    };
    net.subscribe(s, "r", opts);
    assert!(net.events(s).iter().any(|e| matches!(
        e,
        Event::Subscribed { reasons, .. } if reasons == &[ReasonCode::GrantedQoS2]
    )));
    net.peers[s].client.ack(net.now, first[0].0.unwrap());
    net.drive();
    net.publish(p, "r", "live2", QoS::ExactlyOnce, false);
    let rest = drain_acking(&mut net, s);
    assert_eq!(
        rest,
        [
            (String::from("live1"), QoS::AtLeastOnce, false, false),
            (String::from("kept"), QoS::AtLeastOnce, true, false),
            (String::from("live2"), QoS::ExactlyOnce, false, false),
        ]
    );
    assert_eq!(net.broker.stats().subscriptions, 1);
}

#[test]
fn mqtt_3_8_4_6_v311_delivered_qos_is_the_lower_of_publish_and_grant() {
    let mut net = Net::new();
    let s = net.join(ClientConfig::new(V4, "s"));
    let p = net.join(ClientConfig::new(V4, "p"));
    let all = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    let filters = ["q0", "q1", "q2"];
    let subs: Vec<_> = filters.iter().zip(all).map(|(f, g)| (*f, q(g))).collect();
    net.peers[s].client.subscribe(net.now, &subs, None).unwrap();
    net.drive();
    net.events(s);
    for (f, granted) in filters.iter().zip(all) {
        for qos in all {
            net.publish(p, f, "m", qos, false);
            assert_eq!(net.take(s), [got(f, "m", qos.min(granted), false)]);
        }
    }
}

#[test]
fn mqtt_3_8_4_7_suback_has_one_code_per_filter_in_order() {
    // 5.0 [MQTT-3.8.4-6] one reason code per filter, [MQTT-3.8.4-7] each the granted
    // maximum QoS or a failure.
    let mut net = Net::with(broker_with(|s| {
        s.maximum_qos = QoS::AtLeastOnce;
        s.shared_subscription_available = false;
    }));
    let s = net.join(ClientConfig::new(V5, "s"));
    let p = net.join(ClientConfig::new(V5, "p"));
    net.peers[s]
        .client
        .subscribe(
            net.now,
            &[
                ("a", q(QoS::ExactlyOnce)),
                ("$share/g/b", q(QoS::AtLeastOnce)),
                ("c", q(QoS::AtMostOnce)),
                ("d", q(QoS::AtLeastOnce)),
            ],
            None,
        )
        .unwrap();
    net.drive();
    let subacks = net.ack_codes(s);
    assert_eq!(
        subacks,
        [vec![
            ReasonCode::GrantedQoS1,
            ReasonCode::SharedSubscriptionsNotSupported,
            ReasonCode::Success,
            ReasonCode::GrantedQoS1,
        ]]
    );
    // The grants hold: "a" delivers at QoS 1, "c" at 0, the refused filter nothing.
    for t in ["a", "b", "c", "d"] {
        net.publish(p, t, "m", QoS::AtLeastOnce, false);
    }
    assert_eq!(
        net.take(s),
        [
            got("a", "m", QoS::AtLeastOnce, false),
            got("c", "m", QoS::AtMostOnce, false),
            got("d", "m", QoS::AtLeastOnce, false),
        ]
    );
}

#[test]
fn mqtt_3_10_4_2_unsubscribe_stops_new_messages_and_finishes_inflight_ones() {
    let mut net = Net::new();
    let s = net.join(ClientConfig {
        manual_acks: true,
        ..persistent(V5, "s")
    });
    let p = net.join(ClientConfig::new(V5, "p"));
    net.subscribe(s, "t", q(QoS::AtLeastOnce));
    net.subscribe(s, "u", q(QoS::ExactlyOnce));
    net.events(s);
    // QoS 2 first: the client acknowledges in arrival order.
    net.publish(p, "u", "u1", QoS::ExactlyOnce, false);
    net.publish(p, "t", "t1", QoS::AtLeastOnce, false);
    let started = net.deliveries(s);
    assert_eq!(started.len(), 2);
    net.peers[s]
        .client
        .unsubscribe(net.now, &["t", "u"])
        .unwrap();
    net.drive();
    assert!(net.events(s).iter().any(|e| matches!(
        e,
        Event::Unsubscribed { reasons, .. }
            if reasons == &[ReasonCode::Success, ReasonCode::Success]
    )));
    // [MQTT-3.10.4-2] nothing new.
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        net.publish(p, "t", "late", qos, false);
        net.publish(p, "u", "late", qos, false);
    }
    assert!(net.deliveries(s).is_empty());
    // [MQTT-3.10.4-3] the QoS 2 delivery already started completes: PUBREC is answered
    // with PUBREL, which releases the client's packet identifier.
    assert_eq!(net.peers[s].client.session().incoming_qos2.len(), 1);
    net.peers[s].client.ack(net.now, started[0].0.unwrap());
    net.drive();
    assert!(net.peers[s].client.session().incoming_qos2.is_empty());
    // The QoS 1 one is still owed: re-sent after a reconnect, until acknowledged.
    net.cut(s);
    net.reconnect(s);
    let again = net.deliveries(s);
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].0, again[0].1), (started[1].0, true));
    assert_eq!(text(&again[0].2), "t1");
    net.peers[s].client.ack(net.now, again[0].0.unwrap());
    net.drive();
    net.cut(s);
    net.reconnect(s);
    assert!(net.deliveries(s).is_empty());
}

#[test]
fn mqtt_3_10_4_6_multi_filter_unsubscribe_is_a_sequence_of_single_ones() {
    // [MQTT-3.11.3-1] (5.0) the UNSUBACK codes follow the filters' order.
    for v in [V5, V4] {
        let mut net = Net::new();
        let s = net.join(ClientConfig::new(v, "s"));
        let p = net.join(ClientConfig::new(v, "p"));
        let subs = ["a", "b", "c"].map(|f| (f, q(QoS::AtMostOnce)));
        net.peers[s].client.subscribe(net.now, &subs, None).unwrap();
        net.drive();
        net.events(s);
        // "c" twice: the second finds it already gone.
        net.peers[s]
            .client
            .unsubscribe(net.now, &["c", "nope", "a", "c"])
            .unwrap();
        net.drive();
        let unsubacks = net.ack_codes(s);
        let expected = if v.is_v5() {
            vec![
                ReasonCode::Success,
                ReasonCode::NoSubscriptionExisted,
                ReasonCode::Success,
                ReasonCode::NoSubscriptionExisted,
            ]
        } else {
            Vec::new()
        };
        assert_eq!(unsubacks, [expected], "{v:?}");
        for t in ["a", "b", "c"] {
            net.publish(p, t, "m", QoS::AtMostOnce, false);
        }
        assert_eq!(net.take(s), [got("b", "m", QoS::AtMostOnce, false)]);
        assert_eq!(net.broker.stats().subscriptions, 1);
    }
}
