//! Client machines talking to the broker core through in-memory pipes.

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use bytes::BytesMut;
use mqtt_codec::{
    Packet, PacketId, ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionId,
    SubscriptionOptions, Topic,
};

use crate::*;
use mqtt_state::*;

const V31: ProtocolVersion = ProtocolVersion::V3_1;
const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

struct Peer {
    client: Client,
    id: Option<ConnectionId>,
    to_broker: BytesMut,
    from_broker: BytesMut,
    events: Vec<Event>,
}

struct Net<H: Hooks> {
    broker: Broker<H>,
    peers: Vec<Peer>,
    now: Instant,
}

impl Net<AllowAll> {
    fn new() -> Self {
        Self::with(Broker::new(
            BrokerConfig {
                sys_interval: None,
                ..BrokerConfig::default()
            },
            Instant::ZERO,
        ))
    }
}

impl<H: Hooks> Net<H> {
    fn with(broker: Broker<H>) -> Self {
        Self {
            broker,
            peers: Vec::new(),
            now: Instant::ZERO,
        }
    }

    /// Adds and connects a client; returns its index.
    fn join(&mut self, config: ClientConfig) -> usize {
        self.peers.push(Peer {
            client: Client::new(config),
            id: None,
            to_broker: BytesMut::new(),
            from_broker: BytesMut::new(),
            events: Vec::new(),
        });
        let i = self.peers.len() - 1;
        self.reconnect(i);
        i
    }

    fn reconnect(&mut self, i: usize) {
        let id = self.broker.open(self.now);
        let p = &mut self.peers[i];
        p.id = Some(id);
        p.to_broker.clear();
        p.from_broker.clear();
        p.client.connect(self.now).unwrap();
        self.drive();
    }

    /// Drops client `i`'s transport without DISCONNECT.
    fn cut(&mut self, i: usize) {
        if let Some(id) = self.peers[i].id.take() {
            self.broker.handle_close(self.now, id);
        }
        self.peers[i].client.handle_close(self.now);
        self.drive();
    }

    fn drive(&mut self) {
        let mut out = vec![0u8; 1 << 16];
        for _ in 0..10_000 {
            let mut progress = false;
            for p in &mut self.peers {
                let Some(id) = p.id else { continue };
                while let Ok(Some(n)) = p.client.poll_transmit(self.now, &mut out) {
                    p.to_broker.extend_from_slice(&out[..n]);
                    progress = true;
                }
                if !p.to_broker.is_empty() {
                    self.broker.handle_input(self.now, id, &mut p.to_broker);
                }
            }
            while let Some(e) = self.broker.poll_event() {
                progress = true;
                match e {
                    BrokerEvent::Transmit(id) | BrokerEvent::Close(id) => {
                        let Some(p) = self.peers.iter_mut().find(|p| p.id == Some(id)) else {
                            continue;
                        };
                        while let Some(n) = self.broker.poll_transmit(self.now, id, &mut out) {
                            p.from_broker.extend_from_slice(&out[..n]);
                        }
                        if matches!(e, BrokerEvent::Close(_)) {
                            let _ = p.client.handle_input(self.now, &mut p.from_broker);
                            p.id = None;
                            p.client.handle_close(self.now);
                            self.broker.handle_close(self.now, id);
                        }
                    }
                }
            }
            for p in &mut self.peers {
                if !p.from_broker.is_empty() {
                    let _ = p.client.handle_input(self.now, &mut p.from_broker);
                }
                while let Some(e) = p.client.poll_event() {
                    p.events.push(e);
                    progress = true;
                }
            }
            if !progress {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn advance(&mut self, ms: u64) {
        self.now = self.now + Duration::from_millis(ms);
        for p in &mut self.peers {
            p.client.handle_timeout(self.now);
        }
        self.broker.handle_timeout(self.now);
        self.drive();
    }

    fn publish(
        &mut self,
        i: usize,
        topic: &'static str,
        payload: &'static str,
        qos: QoS,
        retain: bool,
    ) {
        let mut m = Message::new(topic, payload, qos);
        m.retain = retain;
        self.peers[i].client.publish(self.now, m).unwrap();
        self.drive();
    }

    fn subscribe(&mut self, i: usize, filter: &str, options: SubscriptionOptions) {
        self.peers[i]
            .client
            .subscribe(&[(filter, options)], None)
            .unwrap();
        self.drive();
    }

    /// (topic, payload, qos, retain) of every message client `i` received, then cleared.
    fn take(&mut self, i: usize) -> Vec<(String, String, QoS, bool)> {
        let evs = core::mem::take(&mut self.peers[i].events);
        evs.into_iter()
            .filter_map(|e| match e {
                Event::Message { message, .. } => Some((
                    String::from(message.topic.as_str()),
                    String::from_utf8(message.payload.to_vec()).unwrap(),
                    message.qos,
                    message.retain,
                )),
                _ => None,
            })
            .collect()
    }

    fn events(&mut self, i: usize) -> Vec<Event> {
        core::mem::take(&mut self.peers[i].events)
    }

    /// The reason codes of every SUBACK and UNSUBACK client `i` received, then cleared.
    fn ack_codes(&mut self, i: usize) -> Vec<Vec<ReasonCode>> {
        self.events(i)
            .into_iter()
            .filter_map(|e| match e {
                Event::Subscribed { reasons, .. } | Event::Unsubscribed { reasons, .. } => {
                    Some(reasons)
                }
                _ => None,
            })
            .collect()
    }

    fn publish_message(&mut self, i: usize, m: Message) {
        self.peers[i].client.publish(self.now, m).unwrap();
        self.drive();
    }

    /// (packet id, DUP, message) of every message client `i` received, then cleared.
    fn deliveries(&mut self, i: usize) -> Vec<(Option<PacketId>, bool, Message)> {
        self.events(i)
            .into_iter()
            .filter_map(|e| match e {
                Event::Message {
                    packet_id,
                    dup,
                    message,
                } => Some((packet_id, dup, message)),
                _ => None,
            })
            .collect()
    }

    /// Sends `packet` to the broker as client `i`, behind its machine's back.
    fn inject(&mut self, i: usize, version: ProtocolVersion, packet: &Packet<'_>) {
        let bytes = packet.encode_to_vec(version).unwrap();
        self.peers[i].to_broker.extend_from_slice(&bytes);
        self.drive();
    }
}

fn q(qos: QoS) -> SubscriptionOptions {
    SubscriptionOptions::qos(qos)
}

fn got(topic: &str, payload: &str, qos: QoS, retain: bool) -> (String, String, QoS, bool) {
    (String::from(topic), String::from(payload), qos, retain)
}

fn persistent(v: ProtocolVersion, id: &'static str) -> ClientConfig {
    ClientConfig {
        clean_start: false,
        session_expiry_interval: 3600,
        ..ClientConfig::new(v, id)
    }
}

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
fn mqtt_3_3_4_2_overlapping_subscriptions_give_one_copy_at_the_highest_qos() {
    let mut net = Net::new();
    let s = net.join(ClientConfig::new(V5, "s"));
    let p = net.join(ClientConfig::new(V5, "p"));
    net.peers[s]
        .client
        .subscribe(&[("a/+", q(QoS::AtMostOnce))], SubscriptionId::new(1))
        .unwrap();
    net.peers[s]
        .client
        .subscribe(&[("a/#", q(QoS::ExactlyOnce))], SubscriptionId::new(2))
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
        .properties
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
fn will_on_abnormal_close_but_not_on_disconnect() {
    let mut net = Net::new();
    let s = net.join(ClientConfig::new(V4, "s"));
    net.subscribe(s, "wills/#", q(QoS::AtLeastOnce));
    let mut will = Message::new("wills/dev", "gone", QoS::AtLeastOnce);
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
    net.peers[d].client.disconnect(ReasonCode::Success).unwrap();
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
        will: Some((Message::new("w", "late", QoS::AtMostOnce), 10)),
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

struct Strict;

impl Hooks for Strict {
    fn authenticate(&mut self, request: &ConnectRequest) -> Result<(), ReasonCode> {
        match request.password.as_deref() {
            Some(b"secret") => Ok(()),
            _ => Err(ReasonCode::BadUserNameOrPassword),
        }
    }
    fn authorize_publish(&mut self, _: &str, _: Option<&str>, topic: &str) -> bool {
        !topic.starts_with("admin")
    }
    fn authorize_subscribe(&mut self, _: &str, _: Option<&str>, filter: &str) -> bool {
        !filter.starts_with("admin")
    }
}

#[test]
fn hooks_authenticate_and_authorize() {
    let mut net = Net::with(Broker::with_hooks(
        BrokerConfig {
            sys_interval: None,
            ..BrokerConfig::default()
        },
        Strict,
        Instant::ZERO,
    ));
    let login = |v, id| ClientConfig {
        username: Some("u".into()),
        password: Some(bytes::Bytes::from_static(b"secret")),
        ..ClientConfig::new(v, id)
    };
    let bad = net.join(ClientConfig::new(V5, "bad"));
    assert!(net.events(bad).iter().any(|e| matches!(
        e,
        Event::Disconnected {
            reason: ReasonCode::BadUserNameOrPassword,
            ..
        }
    )));
    let s5 = net.join(login(V5, "s5"));
    let s4 = net.join(login(V4, "s4"));
    for (s, refused) in [
        (s5, ReasonCode::NotAuthorized),
        (s4, ReasonCode::UnspecifiedError),
    ] {
        net.peers[s]
            .client
            .subscribe(
                &[
                    ("admin/#", q(QoS::AtLeastOnce)),
                    ("ok", q(QoS::AtLeastOnce)),
                ],
                None,
            )
            .unwrap();
        net.drive();
        let evs = net.events(s);
        let reasons = evs.iter().find_map(|e| match e {
            Event::Subscribed { reasons, .. } => Some(reasons.clone()),
            _ => None,
        });
        // 0x87 in 5.0, 0x80 (failure) in 3.1.1.
        assert_eq!(reasons.unwrap(), [refused, ReasonCode::GrantedQoS1]);
    }
    net.subscribe(s4, "#", q(QoS::AtLeastOnce));
    net.events(s4);
    net.publish(s5, "admin/x", "no", QoS::AtLeastOnce, false);
    // Not delivered, and the 5.0 publisher hears why.
    assert!(net.take(s4).is_empty());
    assert!(net.events(s5).iter().any(|e| matches!(
        e,
        Event::Acknowledged {
            reason: ReasonCode::NotAuthorized,
            ..
        }
    )));
}

#[test]
fn sys_statistics_are_published() {
    let mut net = Net::with(Broker::new(
        BrokerConfig {
            sys_interval: Some(Duration::from_secs(10)),
            ..BrokerConfig::default()
        },
        Instant::ZERO,
    ));
    let s = net.join(ClientConfig::new(V4, "s"));
    net.subscribe(s, "$SYS/broker/clients/connected", q(QoS::AtMostOnce));
    net.advance(10_000);
    assert_eq!(
        net.take(s),
        [got(
            "$SYS/broker/clients/connected",
            "1",
            QoS::AtMostOnce,
            false
        )]
    );
}

/// A challenge-response method: CONNECT data "hello", challenge "nonce", answer "nonce+key".
struct Challenge;

impl Hooks for Challenge {
    fn enhanced_auth(&mut self, _: &str, method: &str, data: Option<&[u8]>) -> AuthStep {
        match (method, data) {
            ("CR", Some(b"hello")) => AuthStep::Continue(bytes::Bytes::from_static(b"nonce")),
            ("CR", Some(b"nonce+key")) => AuthStep::Success,
            ("CR", _) => AuthStep::Fail(ReasonCode::NotAuthorized),
            _ => AuthStep::Fail(ReasonCode::BadAuthenticationMethod),
        }
    }
}

#[test]
fn mqtt_4_12_0_4_enhanced_authentication_through_the_hooks() {
    let mut net = Net::with(Broker::with_hooks(
        BrokerConfig {
            sys_interval: None,
            ..BrokerConfig::default()
        },
        Challenge,
        Instant::ZERO,
    ));
    let with = |method: &'static str, data: &'static [u8]| ClientConfig {
        authentication: Some((method.into(), Some(bytes::Bytes::from_static(data)))),
        ..ClientConfig::new(V5, "c")
    };
    let c = net.join(with("CR", b"hello"));
    let challenge = net.events(c).into_iter().find_map(|e| match e {
        Event::Auth { reason, data, .. } => Some((reason, data)),
        _ => None,
    });
    assert_eq!(
        challenge,
        Some((
            ReasonCode::ContinueAuthentication,
            Some(bytes::Bytes::from_static(b"nonce"))
        ))
    );
    net.peers[c]
        .client
        .auth(
            ReasonCode::ContinueAuthentication,
            Some(bytes::Bytes::from_static(b"nonce+key")),
        )
        .unwrap();
    net.drive();
    assert!(net.peers[c].client.is_connected());
    // Re-authentication with a wrong answer disconnects ([MQTT-4.12.1-2]).
    net.peers[c]
        .client
        .auth(
            ReasonCode::ReAuthenticate,
            Some(bytes::Bytes::from_static(b"wrong")),
        )
        .unwrap();
    net.drive();
    assert!(!net.peers[c].client.is_connected());
    // [MQTT-4.12.0-1] an unsupported method: Bad authentication method.
    let d = net.join(with("SCRAM", b"x"));
    assert!(net.events(d).iter().any(|e| matches!(
        e,
        Event::Disconnected {
            reason: ReasonCode::BadAuthenticationMethod,
            ..
        }
    )));
}

// ---- Forwarding, delivery and subscription management ---------------------------------

fn pid(n: u16) -> PacketId {
    PacketId::new(n).unwrap()
}

fn text(m: &Message) -> String {
    String::from_utf8(m.payload.to_vec()).unwrap()
}

fn broker_with(server: impl FnOnce(&mut ServerConfig)) -> Broker<AllowAll> {
    let mut config = BrokerConfig {
        sys_interval: None,
        ..BrokerConfig::default()
    };
    server(&mut config.server);
    Broker::new(config, Instant::ZERO)
}

/// Acknowledges everything client `i` (with manual acks) receives until nothing more comes;
/// returns (payload, qos, retain, dup) in arrival order.
fn drain_acking<H: Hooks>(net: &mut Net<H>, i: usize) -> Vec<(String, QoS, bool, bool)> {
    let mut all = Vec::new();
    loop {
        let got = net.deliveries(i);
        if got.is_empty() {
            return all;
        }
        for (id, dup, m) in got {
            if let Some(id) = id {
                net.peers[i].client.ack(id);
            }
            all.push((text(&m), m.qos, m.retain, dup));
        }
        net.drive();
    }
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
        let mut m = Message::new(topic, "body", QoS::AtLeastOnce);
        m.retain = true;
        m.properties.payload_format_indicator = Some(payload_format);
        m.properties.content_type = Some("application/json; v=2".into());
        m.properties.response_topic = Some("reply/p/7".into());
        m.properties.correlation_data = Some(bytes::Bytes::from_static(b"\x00corr\xff"));
        m.properties.set_user_properties(&users).unwrap();
        net.publish_message(p, m);
    }
    net.reconnect(offline);
    let late = net.join(ClientConfig::new(V5, "late"));
    net.subscribe(late, "req/#", q(QoS::AtLeastOnce));
    for s in [online, offline, late] {
        let got = net.deliveries(s);
        assert_eq!(got.len(), 2, "{s}");
        for ((_, _, m), payload_format) in got.iter().zip([true, false]) {
            let props = &m.properties;
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
                    .properties
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
    net.peers[s].client.ack(qos1_id.unwrap());
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
fn mqtt_3_3_5_2_v311_unauthorized_publish_is_acknowledged_and_dropped() {
    let mut net = Net::with(Broker::with_hooks(
        BrokerConfig {
            sys_interval: None,
            ..BrokerConfig::default()
        },
        Strict,
        Instant::ZERO,
    ));
    let login = |id| ClientConfig {
        username: Some("u".into()),
        password: Some(bytes::Bytes::from_static(b"secret")),
        ..ClientConfig::new(V4, id)
    };
    let s = net.join(login("s"));
    let p = net.join(login("p"));
    net.subscribe(s, "#", q(QoS::ExactlyOnce));
    net.events(s);
    net.events(p);
    for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        net.publish(p, "admin/x", "no", qos, false);
    }
    // 3.1.1 cannot say "not authorized": PUBACK and PUBREC/PUBCOMP as usual, and the
    // connection stays up.
    let acks: Vec<ReasonCode> = net
        .events(p)
        .into_iter()
        .filter_map(|e| match e {
            Event::Acknowledged { reason, .. } => Some(reason),
            Event::Disconnected { .. } => panic!("closed"),
            _ => None,
        })
        .collect();
    assert_eq!(acks, [ReasonCode::Success, ReasonCode::Success]);
    assert!(net.peers[p].client.is_connected());
    assert!(net.take(s).is_empty());
    net.publish(p, "ok", "yes", QoS::ExactlyOnce, false);
    assert_eq!(net.take(s), [got("ok", "yes", QoS::ExactlyOnce, false)]);
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
fn mqtt_3_8_4_4_multi_filter_subscribe_is_a_sequence_of_single_ones() {
    // 3.1.1 [MQTT-3.8.4-4]: as if one SUBSCRIBE per filter, one SUBACK for all; a repeated
    // filter replaces the earlier one.
    let mut net = Net::new();
    let s = net.join(ClientConfig::new(V4, "s"));
    let p = net.join(ClientConfig::new(V4, "p"));
    net.peers[s]
        .client
        .subscribe(
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
    net.peers[s].client.ack(first[0].0.unwrap());
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
    net.peers[s].client.subscribe(&subs, None).unwrap();
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
    net.peers[s].client.unsubscribe(&["t", "u"]).unwrap();
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
    net.peers[s].client.ack(started[0].0.unwrap());
    net.drive();
    assert!(net.peers[s].client.session().incoming_qos2.is_empty());
    // The QoS 1 one is still owed: re-sent after a reconnect, until acknowledged.
    net.cut(s);
    net.reconnect(s);
    let again = net.deliveries(s);
    assert_eq!(again.len(), 1);
    assert_eq!((again[0].0, again[0].1), (started[1].0, true));
    assert_eq!(text(&again[0].2), "t1");
    net.peers[s].client.ack(again[0].0.unwrap());
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
        net.peers[s].client.subscribe(&subs, None).unwrap();
        net.drive();
        net.events(s);
        // "c" twice: the second finds it already gone.
        net.peers[s]
            .client
            .unsubscribe(&["c", "nope", "a", "c"])
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
        let n = broker.poll_transmit(now, id, &mut out).expect("CONNACK");
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

#[test]
fn mqtt_3_3_2_5_expired_messages_are_not_delivered_onward() {
    let expiring = |payload: &'static str, secs| {
        let mut m = Message::new("e", payload, QoS::AtLeastOnce);
        m.properties.message_expiry_interval = secs;
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
        .map(|(_, _, m)| (text(&m), m.properties.message_expiry_interval))
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
    net.peers[w].client.ack(first[0].0.unwrap());
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
            let m = Message::new("o/a", bytes::Bytes::from(a.clone()), QoS::AtLeastOnce);
            net.peers[p1].client.publish(now, m).unwrap();
            let m = Message::new("o/a", bytes::Bytes::from(b.clone()), QoS::ExactlyOnce);
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
    net.peers[r].client.ack(again[0].0.unwrap());
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
    while let Some(n) = net.broker.poll_transmit(now, id, &mut out) {
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
                    .properties
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
