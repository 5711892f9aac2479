//! Durability (`Persistence::Sync`): what the broker acknowledged survives a crash, and
//! nothing is acknowledged before it is stored. A "crash" drops the broker and every
//! transport, keeps only what was committed, and restores a new broker from it.

mod support;

use mqtt_broker::{Error, *};
use mqtt_codec::{QoS, ReasonCode};
use mqtt_state::*;
use support::*;

fn acked(net: &mut Net<AllowAll>, i: usize) -> usize {
    net.events(i)
        .iter()
        .filter(|e| matches!(e, Event::Acknowledged { .. }))
        .count()
}

#[test]
fn acknowledgements_wait_until_stored() {
    let mut net = Net::durable();
    net.auto_commit = false;
    let s = net.join(persistent(V4, "s"));
    // CONNACK waits for the session's record (its will would be the session's).
    assert!(net.peers[s].events.is_empty());
    assert!(net.commit());
    net.drive();
    assert!(!session_present(&net, s));
    net.subscribe(s, "t", q(QoS::AtLeastOnce));
    assert!(
        net.ack_codes(s).is_empty(),
        "SUBACK before the subscription is stored"
    );
    assert!(net.commit());
    net.drive();
    assert_eq!(net.ack_codes(s), [vec![ReasonCode::GrantedQoS1]]);

    let p = net.join(ClientConfig::new(V4, "p"));
    net.publish(p, "t", "one", QoS::AtLeastOnce, false);
    // A QoS 1 delivery may go first (a crash can only make it a duplicate, which QoS 1
    // allows); the PUBACK waits for the message to be stored.
    assert_eq!(net.take(s), [got("t", "one", QoS::AtLeastOnce, false)]);
    assert_eq!(acked(&mut net, p), 0);
    assert!(net.commit());
    net.drive();
    assert_eq!(acked(&mut net, p), 1);
    // UNSUBACK likewise.
    net.peers[s].client.unsubscribe(net.now, &["t"]).unwrap();
    net.drive();
    assert!(net.ack_codes(s).is_empty(), "UNSUBACK before it is stored");
    assert!(net.commit());
    net.drive();
    assert_eq!(net.ack_codes(s).len(), 1);
}

#[test]
fn a_message_acknowledged_before_its_commit_costs_the_store_nothing() {
    // Delivered and acknowledged within one batch: the core drops both its put and its
    // delete; the publisher hears PUBACK after that batch all the same.
    let mut net = Net::durable();
    let s = net.join(persistent(V4, "s"));
    net.subscribe(s, "t", q(QoS::AtLeastOnce));
    let p = net.join(ClientConfig::new(V4, "p"));
    net.auto_commit = false;
    net.publish(p, "t", "one", QoS::AtLeastOnce, false);
    assert_eq!(net.take(s).len(), 1);
    let mut ops = Vec::new();
    let batch = net.broker.poll_store(&mut ops).unwrap();
    let puts = ops
        .iter()
        .filter(|o| {
            matches!(
                o,
                StoreOp::Put {
                    table: Table::Messages,
                    ..
                }
            )
        })
        .count();
    let deletes = ops
        .iter()
        .filter(|o| {
            matches!(
                o,
                StoreOp::Delete {
                    table: Table::Messages,
                    ..
                }
            )
        })
        .count();
    // Put and acknowledged within the batch: neither reaches the store.
    assert_eq!((puts, deletes), (0, 0));
    apply(net.store.as_mut().unwrap(), &ops);
    net.broker.handle_durable(net.now, batch);
    net.drive();
    assert_eq!(acked(&mut net, p), 1);
}

#[test]
fn queued_messages_survive_in_order_and_exactly_once() {
    let mut net = Net::durable();
    let s = net.join(persistent(V4, "s"));
    net.subscribe(s, "t/#", q(QoS::ExactlyOnce));
    net.cut(s);
    let p = net.join(persistent(V5, "p"));
    for i in 0..200 {
        let qos = if i % 2 == 0 {
            QoS::AtLeastOnce
        } else {
            QoS::ExactlyOnce
        };
        let payload: &'static str = Box::leak(format!("{i}").into_boxed_str());
        net.publish(p, "t/x", payload, qos, false);
    }
    assert_eq!(acked(&mut net, p), 200);
    net.crash_and_restore(1000);
    net.reconnect(s);
    assert!(session_present(&net, s));
    let got: Vec<(String, QoS)> = net
        .take(s)
        .into_iter()
        .map(|(_, payload, qos, _)| (payload, qos))
        .collect();
    let want: Vec<(String, QoS)> = (0..200)
        .map(|i| {
            let qos = if i % 2 == 0 {
                QoS::AtLeastOnce
            } else {
                QoS::ExactlyOnce
            };
            (format!("{i}"), qos)
        })
        .collect();
    assert_eq!(got, want);
    // Everything was acknowledged: a second crash has nothing to resend.
    net.crash_and_restore(1000);
    net.reconnect(s);
    assert!(net.take(s).is_empty());
}

#[test]
fn a_qos2_publish_resent_after_a_crash_is_not_routed_twice() {
    // [MQTT-4.3.3-10] the receiver keeps the packet identifier until PUBREL, across the
    // crash: the publisher, which never saw PUBREC, publishes again with DUP.
    let mut net = Net::durable();
    let s = net.join(persistent(V5, "s"));
    net.subscribe(s, "t", q(QoS::ExactlyOnce));
    let p = net.join(persistent(V5, "p"));
    net.auto_commit = false;
    net.publish(p, "t", "once", QoS::ExactlyOnce, false);
    // Stored, but the broker dies before its PUBREC or the delivery leaves.
    assert!(net.commit());
    net.crash_and_restore(10);
    net.auto_commit = true;
    net.reconnect(s);
    net.reconnect(p);
    assert_eq!(net.take(s), [got("t", "once", QoS::ExactlyOnce, false)]);
    assert_eq!(acked(&mut net, p), 1);
    net.crash_and_restore(10);
    net.reconnect(s);
    net.reconnect(p);
    assert!(net.take(s).is_empty());
}

#[test]
fn a_qos2_message_reaches_no_one_before_its_publisher_state_is_stored() {
    // Had the subscriber got it before the publisher's QoS 2 state was stored, a crash
    // then would make the publisher (which never saw PUBREC) send it again to a broker
    // that no longer knows it: a second delivery.
    let mut net = Net::durable();
    let s = net.join(persistent(V5, "s"));
    net.subscribe(s, "t", q(QoS::ExactlyOnce));
    let p = net.join(persistent(V5, "p"));
    net.auto_commit = false;
    net.publish(p, "t", "once", QoS::ExactlyOnce, false);
    let early = net.take(s);
    net.crash_and_restore(10);
    net.auto_commit = true;
    net.reconnect(s);
    net.reconnect(p);
    let mut all = early;
    all.extend(net.take(s));
    assert_eq!(all, [got("t", "once", QoS::ExactlyOnce, false)]);
}

#[test]
fn in_flight_qos2_resumes_where_it_stopped() {
    let mut net = Net::durable();
    let s = net.join(persistent(V4, "s"));
    net.subscribe(s, "t", q(QoS::ExactlyOnce));
    let p = net.join(ClientConfig::new(V4, "p"));
    net.auto_commit = false;
    net.publish(p, "t", "a", QoS::ExactlyOnce, false);
    assert!(net.commit());
    net.drive();
    // The subscriber got the PUBLISH and answered PUBREC; the broker's PUBREL waits for
    // the store, and the broker dies with the PUBREC stored or not: both resume.
    assert_eq!(net.take(s), [got("t", "a", QoS::ExactlyOnce, false)]);
    net.commit();
    net.crash_and_restore(10);
    net.auto_commit = true;
    net.reconnect(s);
    assert!(session_present(&net, s));
    assert!(net.take(s).is_empty(), "delivered twice");
    net.crash_and_restore(10);
    net.reconnect(s);
    assert!(net.take(s).is_empty());
}

#[test]
fn a_released_qos2_message_is_not_published_again() {
    // [MQTT-4.3.3-6] after PUBREC the sender sends PUBREL, never the PUBLISH again. The
    // message is stored; the subscriber answers PUBREC; if PUBREL left before that was
    // stored, the subscriber could complete (and forget the identifier), and a restart
    // would publish the message to it again.
    let mut net = Net::durable();
    let s = net.join(persistent(V5, "s"));
    net.subscribe(s, "t", q(QoS::ExactlyOnce));
    let p = net.join(ClientConfig::new(V5, "p"));
    let sid = net.peers[s].id.unwrap();
    net.stalled.push(sid);
    net.publish(p, "t", "a", QoS::ExactlyOnce, false);
    // Stored (committed), not yet read by the subscriber.
    assert!(net
        .store
        .as_ref()
        .unwrap()
        .keys()
        .any(|(t, _)| *t == Table::Messages));
    net.auto_commit = false;
    net.unstall(s);
    assert_eq!(net.take(s), [got("t", "a", QoS::ExactlyOnce, false)]);
    // The broker dies before it stores anything more.
    net.crash_and_restore(10);
    net.auto_commit = true;
    net.reconnect(s);
    assert!(net.take(s).is_empty(), "delivered twice");
    assert!(
        net.peers[s].client.session().is_empty(),
        "the exchange completed"
    );
}

#[test]
fn unacknowledged_deliveries_go_again_with_dup_and_their_identifiers() {
    let mut net = Net::durable();
    let s = net.join(ClientConfig {
        manual_acks: true,
        ..persistent(V5, "s")
    });
    net.subscribe(s, "t", q(QoS::AtLeastOnce));
    let p = net.join(ClientConfig::new(V5, "p"));
    for m in ["a", "b", "c"] {
        net.publish(p, "t", m, QoS::AtLeastOnce, false);
    }
    let first = net.deliveries(s);
    assert_eq!(first.len(), 3);
    // Never acknowledged; the broker dies.
    net.crash_and_restore(10);
    net.reconnect(s);
    let again = net.deliveries(s);
    let view = |d: &[(Option<mqtt_codec::PacketId>, bool, Message)]| {
        d.iter()
            .map(|(id, dup, m)| (*id, *dup, text(m)))
            .collect::<Vec<_>>()
    };
    // [MQTT-3.3.1-1] DUP on the re-delivery; the same identifiers, in order.
    let want: Vec<_> = view(&first)
        .into_iter()
        .map(|(id, _, m)| (id, true, m))
        .collect();
    assert_eq!(view(&again), want);
}

#[test]
fn retained_messages_and_subscriptions_survive() {
    let mut net = Net::durable();
    let s = net.join(persistent(V5, "s"));
    net.subscribe(s, "r/#", q(QoS::AtLeastOnce));
    let p = net.join(ClientConfig::new(V5, "p"));
    net.publish(p, "r/1", "kept", QoS::AtLeastOnce, true);
    net.publish(p, "r/2", "gone", QoS::AtLeastOnce, true);
    net.publish(p, "r/2", "", QoS::AtLeastOnce, true);
    assert_eq!(net.take(s).len(), 3);
    net.crash_and_restore(10);
    // The old subscription still routes, without a new SUBSCRIBE.
    net.reconnect(s);
    net.reconnect(p);
    net.publish(p, "r/3", "new", QoS::AtLeastOnce, false);
    assert_eq!(net.take(s), [got("r/3", "new", QoS::AtLeastOnce, false)]);
    // The retained store is as it was.
    let n = net.join(ClientConfig::new(V5, "n"));
    net.subscribe(n, "r/#", q(QoS::AtLeastOnce));
    assert_eq!(net.take(n), [got("r/1", "kept", QoS::AtLeastOnce, true)]);
}

#[test]
fn a_session_that_expired_while_down_is_gone() {
    let mut net = Net::durable();
    let short = net.join(ClientConfig {
        session_expiry_interval: 2,
        ..persistent(V5, "short")
    });
    let long = net.join(persistent(V5, "long"));
    net.cut(short);
    net.cut(long);
    // Down for 5 s: the 2 s expiry passed meanwhile, the hour did not.
    net.crash_and_restore(5000);
    net.reconnect(short);
    assert!(!session_present(&net, short));
    net.reconnect(long);
    assert!(session_present(&net, long));
}

#[test]
fn a_client_connected_at_the_crash_leaves_its_will() {
    let mut net = Net::durable();
    let s = net.join(persistent(V4, "s"));
    net.subscribe(s, "wills/#", q(QoS::AtLeastOnce));
    net.cut(s);
    let will = Message::new(
        TopicBuf::from_static("wills/dev").unwrap(),
        "gone",
        QoS::AtLeastOnce,
    );
    // A clean session: stored for its will alone.
    let _dev = net.join(ClientConfig {
        will: Some((will, 0)),
        ..ClientConfig::new(V4, "dev")
    });
    net.crash_and_restore(10);
    net.reconnect(s);
    assert_eq!(
        net.take(s),
        [got("wills/dev", "gone", QoS::AtLeastOnce, false)]
    );
    // Published once: not again after another restart.
    net.crash_and_restore(10);
    net.reconnect(s);
    assert!(net.take(s).is_empty());
}

#[test]
fn clean_sessions_store_nothing() {
    let mut net = Net::durable();
    let a = net.join(ClientConfig::new(V4, "a"));
    net.subscribe(a, "t", q(QoS::AtLeastOnce));
    let b = net.join(ClientConfig::new(V5, "b"));
    net.publish(b, "t", "x", QoS::AtLeastOnce, false);
    assert_eq!(net.take(a).len(), 1);
    net.cut(a);
    assert!(net.store.as_ref().unwrap().is_empty());
}

#[test]
fn damaged_entries_are_refused() {
    let mut net = Net::durable();
    let s = net.join(persistent(V4, "s"));
    net.subscribe(s, "t", q(QoS::AtLeastOnce));
    net.cut(s);
    let p = net.join(ClientConfig::new(V4, "p"));
    net.publish(p, "t", "payload", QoS::AtLeastOnce, true);
    let store = net.store.clone().unwrap();
    let config = durable_config;
    assert!(restored(config(), &store, Instant::ZERO).is_ok());
    for table in [Table::Sessions, Table::Messages, Table::Retained] {
        let key = store.keys().find(|(t, _)| *t == table).unwrap().clone();
        // Truncated anywhere.
        let whole = store[&key].clone();
        for cut in 0..whole.len() {
            let mut bad = store.clone();
            bad.insert(key.clone(), whole[..cut].to_vec());
            let e = restored(config(), &bad, Instant::ZERO).err();
            assert!(
                matches!(e, Some(Error::Corrupt { table: t, .. }) if t == table),
                "{table:?} cut at {cut}: {e:?}"
            );
        }
        // From a newer version.
        let mut bad = store.clone();
        bad.get_mut(&key).unwrap()[0] = 2;
        assert!(matches!(
            restored(config(), &bad, Instant::ZERO),
            Err(Error::Corrupt {
                reason: "written by a newer version",
                ..
            })
        ));
    }
    // A message whose session is missing: the store is not whole.
    let mut bad = store.clone();
    bad.retain(|(t, _), _| *t != Table::Sessions);
    assert!(matches!(
        restored(config(), &bad, Instant::ZERO),
        Err(Error::Corrupt {
            table: Table::Messages,
            ..
        })
    ));
}

#[test]
fn only_a_delivered_qos1_message_may_be_deleted_after_its_commit() {
    let mut net = Net::durable();
    let s = net.join(ClientConfig {
        manual_acks: true,
        ..persistent(V5, "s")
    });
    net.subscribe(s, "t", q(QoS::ExactlyOnce));
    let p = net.join(ClientConfig::new(V5, "p"));
    net.auto_commit = false;
    net.publish(p, "t", "one", QoS::AtLeastOnce, false);
    net.publish(p, "t", "two", QoS::ExactlyOnce, false);
    // Both stored before their subscriber acknowledges them.
    while net.commit() {
        net.drive();
    }
    for (id, _, _) in net.deliveries(s) {
        net.peers[s].client.ack(net.now, id.unwrap());
    }
    net.drive();
    // Every operation from the acknowledgements to the end of both exchanges.
    let mut ops = Vec::new();
    while let Some(batch) = net.broker.poll_store(&mut ops) {
        let now = net.now;
        net.broker.handle_durable(now, batch);
        net.drive();
    }
    let net_ops: Vec<(Table, bool, bool)> = ops
        .iter()
        .filter_map(|o| match o {
            StoreOp::Delete { table, .. } => Some((*table, true, o.delete_may_lag())),
            StoreOp::Put { table, .. } => Some((*table, false, o.delete_may_lag())),
            _ => None,
        })
        .collect();
    // The QoS 1 message's deletion may lag; nothing of the QoS 2 exchange may.
    assert!(
        net_ops.contains(&(Table::Messages, true, true)),
        "{net_ops:?}"
    );
    assert!(
        net_ops
            .iter()
            .filter(|(t, del, _)| *del && *t != Table::Messages)
            .all(|(_, _, lag)| !lag),
        "{net_ops:?}"
    );
    assert_eq!(
        net_ops
            .iter()
            .filter(|(t, del, lag)| *t == Table::Messages && *del && *lag)
            .count(),
        1,
        "only the QoS 1 message: {net_ops:?}"
    );
}
