//! Backpressure: a subscriber that cannot keep up pauses the publishers that feed it,
//! instead of losing their messages; memory stays bounded meanwhile.

mod support;

use mqtt_broker::*;
use mqtt_codec::QoS;
use mqtt_state::*;
use support::*;

const WATERMARK: usize = 10;

fn net(overflow: QoS0Overflow) -> Net<AllowAll> {
    let mut config = BrokerConfig {
        sys_interval: None,
        qos0_overflow: overflow,
        ..BrokerConfig::default()
    };
    config.server.max_queued = WATERMARK;
    Net::with(Broker::new(config, Instant::ZERO))
}

fn payload(p: usize, n: usize) -> String {
    format!("{p}/{n}")
}

#[test]
fn a_stalled_subscriber_pauses_its_publishers_and_loses_nothing() {
    let mut net = net(QoS0Overflow::PushBack);
    let sub = net.join(ClientConfig::new(V5, "sub"));
    net.subscribe(sub, "t/#", q(QoS::ExactlyOnce));
    let sub_id = net.peers[sub].id.unwrap();
    net.stalled.push(sub_id);
    const PUBLISHERS: usize = 8;
    const EACH: usize = 60;
    let pubs: Vec<usize> = (0..PUBLISHERS)
        .map(|p| net.join(ClientConfig::new(V5, format!("pub{p}"))))
        .collect();
    let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce];
    for n in 0..EACH {
        for (p, &i) in pubs.iter().enumerate() {
            let m = Message::new(
                TopicBuf::try_from(format!("t/{p}")).unwrap(),
                payload(p, n),
                qos[(p + n) % qos.len()],
            );
            net.peers[i].client.publish(net.now, m).unwrap();
        }
        net.drive();
        // Bounded: the watermark, plus at most one message per paused publisher.
        let queued = net.broker.session("sub").unwrap().queued;
        assert!(
            queued <= WATERMARK + PUBLISHERS,
            "{queued} queued for a subscriber that does not read"
        );
    }
    // Every publisher waits on the subscriber; nothing was dropped.
    for &i in &pubs {
        assert!(net.paused(i), "publisher {i} not paused");
        assert!(!net.broker.wants_input(net.peers[i].id.unwrap()));
    }
    assert_eq!(net.broker.stats().messages_dropped, 0);
    assert!(net.broker.stats().publishers_paused >= PUBLISHERS as u64);

    // The subscriber reads again: everything arrives, in each publisher's order, and the
    // publishers are resumed.
    net.unstall(sub);
    let mut got: Vec<Vec<usize>> = vec![Vec::new(); PUBLISHERS];
    for (topic, text, _, _) in net.take(sub) {
        let (p, n) = text.split_once('/').unwrap();
        let p: usize = p.parse().unwrap();
        assert_eq!(topic, format!("t/{p}"));
        got[p].push(n.parse().unwrap());
    }
    for (p, ns) in got.iter().enumerate() {
        // [MQTT-4.6.0-5] in the order each publisher sent them; none lost, none doubled.
        assert_eq!(*ns, (0..EACH).collect::<Vec<_>>(), "publisher {p}");
    }
    for &i in &pubs {
        assert!(!net.paused(i), "publisher {i} still paused");
    }
    assert_eq!(net.broker.stats().messages_dropped, 0);
    assert_eq!(net.broker.session("sub").unwrap().queued, 0);
}

#[test]
fn under_the_drop_policy_qos0_is_dropped_and_counted_not_paused() {
    let mut net = net(QoS0Overflow::Drop);
    let sub = net.join(ClientConfig::new(V4, "sub"));
    net.subscribe(sub, "t", q(QoS::AtMostOnce));
    net.stalled.push(net.peers[sub].id.unwrap());
    let p = net.join(ClientConfig::new(V4, "pub"));
    for n in 0..50 {
        net.publish_message(
            p,
            Message::new(
                TopicBuf::from_static("t").unwrap(),
                payload(0, n),
                QoS::AtMostOnce,
            ),
        );
    }
    assert!(!net.paused(p));
    assert_eq!(net.broker.session("sub").unwrap().queued, WATERMARK);
    assert_eq!(net.broker.stats().messages_dropped, 50 - WATERMARK as u64);
    net.unstall(sub);
    assert_eq!(net.take(sub).len(), WATERMARK);
}

#[test]
fn a_paused_publisher_does_not_hold_up_other_connections() {
    let mut net = net(QoS0Overflow::PushBack);
    let slow = net.join(ClientConfig::new(V5, "slow"));
    net.subscribe(slow, "slow", q(QoS::AtLeastOnce));
    net.stalled.push(net.peers[slow].id.unwrap());
    let fast = net.join(ClientConfig::new(V5, "fast"));
    net.subscribe(fast, "fast", q(QoS::AtLeastOnce));
    let p1 = net.join(ClientConfig::new(V5, "p1"));
    let p2 = net.join(ClientConfig::new(V5, "p2"));
    for n in 0..3 * WATERMARK {
        net.publish_message(
            p1,
            Message::new(
                TopicBuf::from_static("slow").unwrap(),
                payload(1, n),
                QoS::AtLeastOnce,
            ),
        );
    }
    assert!(net.paused(p1));
    for n in 0..3 * WATERMARK {
        net.publish_message(
            p2,
            Message::new(
                TopicBuf::from_static("fast").unwrap(),
                payload(2, n),
                QoS::AtLeastOnce,
            ),
        );
    }
    assert!(!net.paused(p2));
    assert_eq!(net.take(fast).len(), 3 * WATERMARK);
    net.unstall(slow);
    assert_eq!(net.take(slow).len(), 3 * WATERMARK);
    assert!(!net.paused(p1));
}

#[test]
fn two_clients_feeding_each_other_do_not_deadlock() {
    // Each subscribes to what the other publishes, at QoS 1, and both publish more than
    // their queues hold before reading: a paused connection's acknowledgements are not read,
    // so waits must not form a cycle.
    let mut net = net(QoS0Overflow::PushBack);
    let a = net.join(ClientConfig::new(V5, "a"));
    let b = net.join(ClientConfig::new(V5, "b"));
    net.subscribe(a, "to-a", q(QoS::AtLeastOnce));
    net.subscribe(b, "to-b", q(QoS::AtLeastOnce));
    let (ida, idb) = (net.peers[a].id.unwrap(), net.peers[b].id.unwrap());
    net.stalled.push(ida);
    net.stalled.push(idb);
    for n in 0..3 * WATERMARK {
        net.peers[a]
            .client
            .publish(
                net.now,
                Message::new(
                    TopicBuf::from_static("to-b").unwrap(),
                    payload(0, n),
                    QoS::AtLeastOnce,
                ),
            )
            .unwrap();
        net.peers[b]
            .client
            .publish(
                net.now,
                Message::new(
                    TopicBuf::from_static("to-a").unwrap(),
                    payload(1, n),
                    QoS::AtLeastOnce,
                ),
            )
            .unwrap();
        net.drive();
    }
    // Never both paused: one of them is always read.
    assert!(!(net.paused(a) && net.paused(b)));
    net.unstall(a);
    net.unstall(b);
    for _ in 0..10 {
        net.unstall(a);
        net.unstall(b);
    }
    assert_eq!(net.take(a).len(), 3 * WATERMARK);
    assert_eq!(net.take(b).len(), 3 * WATERMARK);
    assert_eq!(net.broker.stats().messages_dropped, 0);
}

#[test]
fn an_offline_session_keeps_its_bounded_queue_and_counts_drops() {
    let mut config = BrokerConfig {
        sys_interval: None,
        max_offline_queue: 5,
        ..BrokerConfig::default()
    };
    config.server.max_queued = WATERMARK;
    let mut net = Net::with(Broker::new(config, Instant::ZERO));
    let sub = net.join(persistent(V5, "sub"));
    net.subscribe(sub, "t", q(QoS::AtLeastOnce));
    net.cut(sub);
    let p = net.join(ClientConfig::new(V5, "pub"));
    for n in 0..8 {
        net.publish_message(
            p,
            Message::new(
                TopicBuf::from_static("t").unwrap(),
                payload(0, n),
                QoS::AtLeastOnce,
            ),
        );
    }
    // Offline, nothing is paused: the queue is bounded and the rest counted as dropped.
    assert!(!net.paused(p));
    let info = net.broker.session("sub").unwrap();
    assert_eq!((info.connection, info.queued), (None, 5));
    assert_eq!(net.broker.stats().messages_dropped, 3);
}

#[test]
fn a_subscriber_that_stopped_reading_is_let_go_after_the_stall_timeout() {
    let mut net = net(QoS0Overflow::PushBack);
    let sub = net.join(ClientConfig {
        keep_alive: 0,
        ..ClientConfig::new(V5, "sub")
    });
    net.subscribe(sub, "t", q(QoS::AtLeastOnce));
    let sub_id = net.peers[sub].id.unwrap();
    net.stalled.push(sub_id);
    let p = net.join(ClientConfig {
        keep_alive: 0,
        ..ClientConfig::new(V5, "pub")
    });
    for n in 0..3 * WATERMARK {
        net.peers[p]
            .client
            .publish(
                net.now,
                Message::new(
                    TopicBuf::from_static("t").unwrap(),
                    payload(0, n),
                    QoS::AtLeastOnce,
                ),
            )
            .unwrap();
    }
    net.drive();
    assert!(net.paused(p));
    // Some progress within the timeout keeps it: it is slow, not gone.
    net.advance(4_000);
    let mut out = vec![0u8; 4096];
    assert!(matches!(
        net.broker.poll_transmit(net.now, sub_id, &mut out),
        Ok(Some(_))
    ));
    net.advance(4_000);
    assert!(net.closes.is_empty());
    assert!(net.paused(p));
    // Then nothing for the whole timeout (5 s by default).
    net.advance(999);
    assert!(net.closes.is_empty());
    net.advance(1);
    assert_eq!(net.closes, [(sub_id, CloseReason::SlowConsumer)]);
    assert!(!net.paused(p), "the publisher goes on");
}

#[test]
fn a_persistent_subscriber_let_go_as_a_slow_consumer_gets_everything_when_it_returns() {
    for takeover in [false, true] {
        let mut net = net(QoS0Overflow::PushBack);
        let sub = net.join(ClientConfig {
            keep_alive: 0,
            ..persistent(V5, "sub")
        });
        net.subscribe(sub, "t", q(QoS::ExactlyOnce));
        let sub_id = net.peers[sub].id.unwrap();
        net.stalled.push(sub_id);
        let p = net.join(ClientConfig {
            keep_alive: 0,
            ..ClientConfig::new(V5, "pub")
        });
        let n = 3 * WATERMARK;
        for i in 0..n {
            let qos = if i % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            net.peers[p]
                .client
                .publish(
                    net.now,
                    Message::new(TopicBuf::from_static("t").unwrap(), payload(0, i), qos),
                )
                .unwrap();
        }
        net.drive();
        net.advance(6_000);
        assert_eq!(net.closes, [(sub_id, CloseReason::SlowConsumer)]);
        // The client notices much later (its link was dead), and reconnects.
        net.peers[sub].id = None;
        net.peers[sub].client.handle_close(net.now);
        net.advance(1_000);
        net.reconnect(sub);
        if takeover {
            // A second CONNECT over a live one takes the session over.
            net.peers[sub].client.handle_close(net.now);
            net.reconnect(sub);
        }
        for _ in 0..20 {
            net.advance(100);
        }
        let got: Vec<String> = drain_acking(&mut net, sub)
            .into_iter()
            .map(|(payload, ..)| payload)
            .collect();
        let want: Vec<String> = (0..n).map(|i| payload(0, i)).collect();
        let mut uniq = got.clone();
        uniq.dedup();
        assert_eq!(uniq, want, "takeover {takeover}: got {got:?}");
    }
}
