//! Bridges: broker A with a bridge to broker B, both cores in memory, the bridge's bytes
//! moved by the test. Messages cross both ways at every QoS, do not loop, wait while B is
//! unreachable and survive A's crash when A is durable.

mod support;

use bytes::BytesMut;
use mqtt_broker::*;
use mqtt_codec::{QoS, ReasonCode};
use mqtt_state::*;
use support::*;

struct Pair {
    a: Net<AllowAll>,
    b: Net<AllowAll>,
    /// The bridge's remote leg on A and the connection it reaches on B.
    link: Option<(ConnectionId, ConnectionId)>,
    /// Bytes on their way, not read yet by the other side.
    a_to_b: BytesMut,
    b_to_a: BytesMut,
    /// Whether a dial reaches B.
    reachable: bool,
    dials: usize,
}

fn bridge_config(topics: &[BridgeTopic], version: mqtt_codec::ProtocolVersion) -> BridgeConfig {
    let mut c = BridgeConfig::new("ab", "b:1883", version);
    c.topics = topics.to_vec();
    c
}

impl Pair {
    fn new(config: BridgeConfig) -> Self {
        Self::with(Net::new(), config)
    }

    fn with(mut a: Net<AllowAll>, config: BridgeConfig) -> Self {
        a.broker.add_bridge(a.now, config).expect("bridge");
        let mut p = Pair {
            a,
            b: Net::new(),
            link: None,
            a_to_b: BytesMut::new(),
            b_to_a: BytesMut::new(),
            reachable: true,
            dials: 0,
        };
        p.drive();
        p
    }

    fn drive(&mut self) {
        for _ in 0..10_000 {
            self.a.drive();
            self.b.drive();
            let mut progress = false;
            while let Some(d) = self.a.broker.poll_dial() {
                progress = true;
                self.dials += 1;
                if !self.reachable {
                    self.a.broker.dial_failed(self.a.now, d.bridge);
                    continue;
                }
                let rb = self.b.broker.open(self.b.now);
                let ra = self.a.broker.connect_bridge(self.a.now, d.bridge).unwrap();
                self.a.raw.push(Raw {
                    id: ra,
                    out: BytesMut::new(),
                    closed: false,
                });
                self.b.raw.push(Raw {
                    id: rb,
                    out: BytesMut::new(),
                    closed: false,
                });
                self.link = Some((ra, rb));
            }
            if let Some((ra, rb)) = self.link {
                let ia = self.a.raw.iter().position(|r| r.id == ra).unwrap();
                let ib = self.b.raw.iter().position(|r| r.id == rb).unwrap();
                let out = self.a.raw[ia].out.split();
                self.a_to_b.extend_from_slice(&out);
                let out = self.b.raw[ib].out.split();
                self.b_to_a.extend_from_slice(&out);
                let before = (self.a_to_b.len(), self.b_to_a.len());
                if !self.a_to_b.is_empty() && !self.b.raw[ib].closed {
                    self.b.broker.handle_input(self.b.now, rb, &mut self.a_to_b);
                }
                if !self.b_to_a.is_empty() && !self.a.raw[ia].closed {
                    self.a.broker.handle_input(self.a.now, ra, &mut self.b_to_a);
                }
                progress |= before != (self.a_to_b.len(), self.b_to_a.len());
                let (ca, cb) = (self.a.raw[ia].closed, self.b.raw[ib].closed);
                if ca || cb {
                    // One side closed: the other sees the transport go.
                    if !ca {
                        self.a.broker.handle_close(self.a.now, ra);
                    }
                    if !cb {
                        self.b.broker.handle_close(self.b.now, rb);
                    }
                    self.unlink();
                    progress = true;
                }
            }
            if !progress {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn unlink(&mut self) {
        if let Some((ra, rb)) = self.link.take() {
            self.a.raw.retain(|r| r.id != ra);
            self.b.raw.retain(|r| r.id != rb);
        }
        self.a_to_b.clear();
        self.b_to_a.clear();
    }

    /// The network between A and B fails: both see their connection go.
    fn cut(&mut self) {
        if let Some((ra, rb)) = self.link {
            self.a.broker.handle_close(self.a.now, ra);
            self.b.broker.handle_close(self.b.now, rb);
            self.unlink();
        }
        self.drive();
    }

    fn advance(&mut self, ms: u64) {
        self.a.advance(ms);
        self.b.advance(ms);
        self.drive();
    }

    fn up(&self) -> bool {
        self.a.broker.bridge_state(BridgeId::first()) == Some(BridgeState::Up)
    }
}

trait First {
    fn first() -> Self;
}

impl First for BridgeId {
    fn first() -> Self {
        // The first bridge a broker adds; found through the only public door: a dial.
        let mut b = Broker::new(BrokerConfig::default(), Instant::ZERO);
        let c = bridge_config(
            &[BridgeTopic::new("x", Direction::Out, QoS::AtMostOnce)],
            V5,
        );
        b.add_bridge(Instant::ZERO, c).unwrap()
    }
}

fn qos_all() -> [QoS; 3] {
    [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
}

/// Messages of client `i` on net `n`, acknowledging them (manual acks are off for test
/// clients, so `take` is enough).
fn payloads(n: &mut Net<AllowAll>, i: usize) -> Vec<(String, String, QoS, bool)> {
    n.take(i)
}

#[test]
fn out_topics_reach_the_remote_with_their_prefix_at_each_qos() {
    for version in [V4, V5] {
        let mut p = Pair::new(bridge_config(
            &[
                BridgeTopic::new("sensors/#", Direction::Out, QoS::ExactlyOnce)
                    .with_prefixes("", "site1/"),
            ],
            version,
        ));
        assert!(p.up(), "the bridge connects");
        let s = p.b.join(ClientConfig::new(V5, "s"));
        p.b.subscribe(s, "site1/#", q(QoS::ExactlyOnce));
        let pub_ = p.a.join(ClientConfig::new(V4, "pub"));
        for qos in qos_all() {
            p.a.publish(pub_, "sensors/t", "v", qos, false);
            p.drive();
        }
        // Not an out topic: stays here.
        p.a.publish(pub_, "other", "v", QoS::AtLeastOnce, false);
        p.drive();
        assert_eq!(
            payloads(&mut p.b, s),
            qos_all().map(|qos| got("site1/sensors/t", "v", qos, false)),
            "{version:?}"
        );
    }
}

#[test]
fn in_topics_come_from_the_remote_under_the_local_prefix() {
    let mut p = Pair::new(bridge_config(
        &[BridgeTopic::new("cmd/#", Direction::In, QoS::ExactlyOnce).with_prefixes("remote/", "")],
        V5,
    ));
    let s = p.a.join(ClientConfig::new(V5, "s"));
    p.a.subscribe(s, "#", q(QoS::ExactlyOnce));
    let pub_ = p.b.join(ClientConfig::new(V5, "pub"));
    for qos in qos_all() {
        p.b.publish(pub_, "cmd/go", "now", qos, false);
        p.drive();
    }
    assert_eq!(
        payloads(&mut p.a, s),
        qos_all().map(|qos| got("remote/cmd/go", "now", qos, false))
    );
    // Every message from B was acknowledged to B's publisher, and only once A had it.
    let acked =
        p.b.events(pub_)
            .iter()
            .filter(|e| matches!(e, Event::Acknowledged { .. }))
            .count();
    assert_eq!(acked, 2);
}

#[test]
fn both_ways_on_one_topic_without_a_loop() {
    // 3.1.1 with and without mosquitto's bridge flag, and 5.0.
    for (version, flag) in [(V4, true), (V4, false), (V5, true)] {
        let mut config = bridge_config(
            &[BridgeTopic::new(
                "chat/#",
                Direction::Both,
                QoS::AtLeastOnce,
            )],
            version,
        );
        config.remote.bridge = flag;
        let mut p = Pair::new(config);
        let sa = p.a.join(ClientConfig::new(V5, "sa"));
        p.a.subscribe(sa, "chat/#", q(QoS::AtLeastOnce));
        let sb = p.b.join(ClientConfig::new(V5, "sb"));
        p.b.subscribe(sb, "chat/#", q(QoS::AtLeastOnce));
        p.a.publish(sa, "chat/a", "from a", QoS::AtLeastOnce, false);
        p.b.publish(sb, "chat/b", "from b", QoS::AtLeastOnce, false);
        p.drive();
        p.advance(1000);
        let mut at_a = payloads(&mut p.a, sa);
        let mut at_b = payloads(&mut p.b, sb);
        at_a.sort();
        at_b.sort();
        let both = vec![
            got("chat/a", "from a", QoS::AtLeastOnce, false),
            got("chat/b", "from b", QoS::AtLeastOnce, false),
        ];
        if flag {
            // 5.0's No Local, or the bridge flag before 5.0, on both legs: each message
            // arrives once on each side.
            assert_eq!(at_a, both, "A {version:?}");
            assert_eq!(at_b, both, "B {version:?}");
        } else {
            // 3.1.1 without the flag has no No Local: B sends A's message back once; the
            // local leg's No Local stops it there, so it does not loop.
            let mut echoed = both.clone();
            echoed.insert(0, both[0].clone());
            assert_eq!(at_a, echoed, "A");
            assert_eq!(at_b, both, "B");
        }
    }
}

#[test]
fn messages_wait_while_the_remote_is_unreachable_and_go_when_it_is_back() {
    // The bridge's own bound, not the broker's (10) for offline sessions.
    let a = Net::with(Broker::new(
        BrokerConfig {
            sys_interval: None,
            max_offline_queue: 10,
            ..BrokerConfig::default()
        },
        Instant::ZERO,
    ));
    let mut p = Pair::with(
        a,
        bridge_config(
            &[BridgeTopic::new("t/#", Direction::Out, QoS::AtLeastOnce)],
            V5,
        ),
    );
    let s = p.b.join(ClientConfig::new(V5, "s"));
    p.b.subscribe(s, "t/#", q(QoS::AtLeastOnce));
    p.reachable = false;
    p.cut();
    assert!(!p.up());
    let pub_ = p.a.join(ClientConfig::new(V5, "pub"));
    for i in 0..50 {
        let topic: &'static str = Box::leak(format!("t/{i}").into_boxed_str());
        p.a.publish(pub_, topic, "m", QoS::AtLeastOnce, false);
    }
    // Acknowledged to the publisher: the bridge's session holds them.
    let acked =
        p.a.events(pub_)
            .iter()
            .filter(|e| matches!(e, Event::Acknowledged { .. }))
            .count();
    assert_eq!(acked, 50);
    // Dials fail, each after a longer wait (1, 2, 4, 8 s...).
    let dials = p.dials;
    p.advance(1000);
    assert_eq!(p.dials, dials + 1);
    p.advance(1000);
    assert_eq!(p.dials, dials + 1, "the second wait is longer");
    p.advance(1000);
    assert_eq!(p.dials, dials + 2);
    assert!(payloads(&mut p.b, s).is_empty());
    p.reachable = true;
    p.advance(30_000);
    assert!(p.up());
    let got_b: Vec<String> = payloads(&mut p.b, s).into_iter().map(|m| m.0).collect();
    let want: Vec<String> = (0..50).map(|i| format!("t/{i}")).collect();
    assert_eq!(got_b, want, "all, in order");
}

#[test]
fn a_cut_in_mid_flight_loses_no_qos1_message() {
    let mut p = Pair::new(bridge_config(
        &[BridgeTopic::new("t", Direction::Out, QoS::AtLeastOnce)],
        V4,
    ));
    let s = p.b.join(persistent(V4, "s"));
    p.b.subscribe(s, "t", q(QoS::AtLeastOnce));
    let pub_ = p.a.join(ClientConfig::new(V5, "pub"));
    // Published, and the link cut before B's acknowledgements come back.
    p.a.publish(pub_, "t", "1", QoS::AtLeastOnce, false);
    p.a.publish(pub_, "t", "2", QoS::AtLeastOnce, false);
    p.a.drive();
    p.cut();
    p.advance(2000);
    assert!(p.up());
    let mut payloads_b: Vec<String> = payloads(&mut p.b, s).into_iter().map(|m| m.1).collect();
    payloads_b.dedup();
    assert_eq!(payloads_b, ["1", "2"]);
}

#[test]
fn clients_may_not_take_a_bridge_session() {
    let mut p = Pair::new(bridge_config(
        &[BridgeTopic::new("t", Direction::Out, QoS::AtLeastOnce)],
        V5,
    ));
    let intruder = p.a.join(ClientConfig::new(V5, "$bridge/ab"));
    let refused = p.a.events(intruder).iter().any(|e| {
        matches!(
            e,
            Event::Disconnected {
                reason: ReasonCode::ClientIdentifierNotValid,
                ..
            }
        )
    });
    assert!(refused);
    assert!(p.up(), "the bridge is unaffected");
}

#[test]
fn invalid_bridges_are_refused() {
    let mut b = Broker::new(BrokerConfig::default(), Instant::ZERO);
    assert!(matches!(
        b.add_bridge(Instant::ZERO, bridge_config(&[], V5)),
        Err(mqtt_broker::Error::InvalidBridge(_))
    ));
    let bad = BridgeTopic::new("a/#/b", Direction::In, QoS::AtMostOnce);
    assert!(b
        .add_bridge(Instant::ZERO, bridge_config(&[bad], V5))
        .is_err());
    let ok = BridgeTopic::new("a", Direction::In, QoS::AtMostOnce);
    b.add_bridge(Instant::ZERO, bridge_config(std::slice::from_ref(&ok), V5))
        .unwrap();
    assert!(
        b.add_bridge(Instant::ZERO, bridge_config(&[ok], V5))
            .is_err(),
        "same name"
    );
}

#[test]
fn queued_messages_for_the_remote_survive_a_crash_of_a_durable_broker() {
    let config = bridge_config(
        &[BridgeTopic::new("t", Direction::Out, QoS::AtLeastOnce)],
        V5,
    );
    let mut p = Pair::with(Net::durable(), config.clone());
    let s = p.b.join(persistent(V5, "s"));
    p.b.subscribe(s, "t", q(QoS::AtLeastOnce));
    p.reachable = false;
    p.cut();
    let pub_ = p.a.join(ClientConfig::new(V5, "pub"));
    for _ in 0..10 {
        p.a.publish(pub_, "t", "kept", QoS::AtLeastOnce, false);
    }
    p.a.crash_and_restore(5000);
    // The program adds its bridges again after the restore.
    p.reachable = true;
    p.a.broker.add_bridge(p.a.now, config).unwrap();
    p.drive();
    assert!(p.up());
    assert_eq!(payloads(&mut p.b, s).len(), 10);
}

#[test]
fn a_rule_without_a_pattern_maps_one_topic_to_another() {
    let mut p = Pair::new(bridge_config(
        &[BridgeTopic::new("", Direction::Out, QoS::AtLeastOnce)
            .with_prefixes("here/one", "there/other")],
        V5,
    ));
    let s = p.b.join(ClientConfig::new(V5, "s"));
    p.b.subscribe(s, "#", q(QoS::AtLeastOnce));
    let pub_ = p.a.join(ClientConfig::new(V5, "pub"));
    p.a.publish(pub_, "here/one", "x", QoS::AtLeastOnce, false);
    p.a.publish(pub_, "here/one/deeper", "y", QoS::AtLeastOnce, false);
    p.drive();
    assert_eq!(
        payloads(&mut p.b, s),
        [got("there/other", "x", QoS::AtLeastOnce, false)]
    );
}

#[test]
fn notifications_say_when_the_bridge_is_up_and_down() {
    let mut config = bridge_config(
        &[BridgeTopic::new("t", Direction::Out, QoS::AtLeastOnce)],
        V5,
    );
    config.notifications = true;
    let mut p = Pair::new(config);
    let s = p.a.join(ClientConfig::new(V5, "s"));
    p.a.subscribe(s, "$SYS/broker/connection/#", q(QoS::AtMostOnce));
    // Retained: a subscriber that comes later learns the state.
    assert_eq!(
        payloads(&mut p.a, s),
        [got(
            "$SYS/broker/connection/ab/state",
            "1",
            QoS::AtMostOnce,
            true
        )]
    );
    p.reachable = false;
    p.cut();
    assert_eq!(
        payloads(&mut p.a, s),
        [got(
            "$SYS/broker/connection/ab/state",
            "0",
            QoS::AtMostOnce,
            false
        )]
    );
}

#[test]
fn a_remote_that_refuses_the_bridge_flag_is_dialled_again_without_it() {
    let mut b = Broker::new(
        BrokerConfig {
            sys_interval: None,
            ..BrokerConfig::default()
        },
        Instant::ZERO,
    );
    let config = bridge_config(
        &[BridgeTopic::new("t", Direction::Out, QoS::AtLeastOnce)],
        V4,
    );
    let bridge = b.add_bridge(Instant::ZERO, config).unwrap();
    // The protocol level byte of the CONNECT the bridge sends on a new connection.
    let mut now = Instant::ZERO;
    let level = |b: &mut Broker<AllowAll>, now: Instant| -> (ConnectionId, u8) {
        let d = b.poll_dial().expect("a dial");
        assert_eq!(d.bridge, bridge);
        let id = b.connect_bridge(now, d.bridge).unwrap();
        let mut out = [0u8; 256];
        let n = b.poll_transmit(now, id, &mut out).unwrap().unwrap();
        // Fixed header 2 bytes, name "MQTT" 6 bytes, then the level.
        (id, out[..n][8])
    };
    let (id, first) = level(&mut b, now);
    assert_eq!(first, 0x84, "mosquitto's try_private");
    // CONNACK return code 1: unacceptable protocol version.
    let mut connack = BytesMut::from(&[0x20, 2, 0, 1][..]);
    b.handle_input(now, id, &mut connack);
    let mut closed = false;
    while let Some(e) = b.poll_event() {
        if let BrokerEvent::Close { id: c, .. } = e {
            assert_eq!(c, id);
            closed = true;
        }
    }
    assert!(closed, "the refused connection is closed");
    b.handle_close(now, id);
    now = now + Duration::from_millis(1000);
    b.handle_timeout(now);
    let (_, second) = level(&mut b, now);
    assert_eq!(second, 0x04, "plain 3.1.1 the second time");
}
