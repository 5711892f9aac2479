//! Client machines talking to the broker core through in-memory pipes.

use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;

use bytes::BytesMut;
use mqtt_codec::{
    ProtocolVersion, QoS, ReasonCode, RetainHandling, SubscriptionId, SubscriptionOptions,
};

use crate::*;

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
