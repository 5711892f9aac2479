//! Decisions that may wait: authentication and authorization deferred to the embedding
//! program as requests, answered later while every other connection keeps flowing.
#![allow(unused_imports)]

mod support;

use bytes::Bytes;
use mqtt_broker::Error;
use mqtt_broker::*;
use mqtt_codec::{decode, DecodeOptions, Packet, ProtocolVersion, QoS, ReasonCode, Status};
use mqtt_state::*;
use mqtt_topic::{TopicFilter, TopicName};
use support::*;

/// Defers what the test names: connections of user "slow", topics and filters under
/// "slow/", enhanced authentication; denies "deny/..." filters; allows the rest.
struct Picky;

impl Hooks for Picky {
    fn authenticate(&mut self, _: &Context<'_>, req: &ConnectRequest) -> Verdict {
        match req.username.as_ref().map(Utf8Bytes::as_str) {
            Some("slow") => Verdict::Defer,
            _ => Verdict::Allow,
        }
    }
    fn enhanced_auth(&mut self, _: &Context<'_>, _: &str, _: Option<&[u8]>) -> AuthStep {
        AuthStep::Defer
    }
    fn authorize_publish(&mut self, _: &Context<'_>, t: TopicName<'_>, _: QoS, _: bool) -> Verdict {
        if t.as_str().starts_with("slow/") {
            Verdict::Defer
        } else {
            Verdict::Allow
        }
    }
    fn authorize_subscribe(&mut self, _: &Context<'_>, f: TopicFilter<'_>, _: QoS) -> Verdict {
        match f.as_str() {
            f if f.starts_with("slow/") => Verdict::Defer,
            f if f.starts_with("deny/") => Verdict::Deny(ReasonCode::NotAuthorized),
            _ => Verdict::Allow,
        }
    }
}

fn net(decision_timeout_ms: u64) -> Net<Picky> {
    Net::with(Broker::with_hooks(
        BrokerConfig {
            sys_interval: None,
            decision_timeout: Duration::from_millis(decision_timeout_ms),
            ..BrokerConfig::default()
        },
        Picky,
        Instant::ZERO,
    ))
}

fn slow(v: ProtocolVersion, id: &'static str) -> ClientConfig {
    ClientConfig {
        username: Some("slow".into()),
        password: Some(Bytes::from_static(b"pw")),
        ..ClientConfig::new(v, id)
    }
}

fn requests<H: Hooks>(net: &mut Net<H>) -> Vec<Request> {
    core::iter::from_fn(|| net.broker.poll_request()).collect()
}

fn disconnected(events: &[Event]) -> Option<(ReasonCode, Option<String>)> {
    events.iter().find_map(|e| match e {
        Event::Disconnected {
            reason,
            reason_string,
            ..
        } => Some((
            *reason,
            reason_string.as_ref().map(|s| s.as_str().to_owned()),
        )),
        _ => None,
    })
}

#[test]
fn mqtt_3_2_0_1_deferred_authentication_accepted_later() {
    let mut net = net(10_000);
    let c = net.join(slow(V5, "c"));
    // No CONNACK yet: the decision is the embedder's.
    assert!(!net.peers[c].client.is_connected());
    let id = net.peers[c].id.unwrap();
    assert!(net.broker.is_deciding(id));
    assert!(!net.broker.wants_input(id));
    let reqs = requests(&mut net);
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].conn, id);
    assert_eq!(
        reqs[0].kind,
        RequestKind::Authenticate {
            username: Some("slow".into()),
            password: Some(Bytes::from_static(b"pw")),
        }
    );
    let ctx = net.broker.context(id).unwrap();
    assert_eq!((ctx.client_id, ctx.username), ("c", Some("slow")));
    assert_eq!(ctx.protocol, V5);
    net.broker.accept(net.now, reqs[0].id).unwrap();
    net.drive();
    assert!(net.peers[c].client.is_connected());
    assert!(!net.broker.is_deciding(id));
    assert!(net.broker.wants_input(id));
    // Answered once: a second answer finds nothing.
    assert_eq!(
        net.broker.accept(net.now, reqs[0].id),
        Err(Error::UnknownRequest)
    );
}

#[test]
fn mqtt_3_2_2_7_deferred_rejection_with_reason_string_reaches_a_v5_client() {
    let mut net = net(10_000);
    let c = net.join(slow(V5, "c"));
    let r = requests(&mut net).remove(0);
    net.broker
        .reject(
            net.now,
            r.id,
            ReasonCode::BadUserNameOrPassword,
            Some("wrong password"),
        )
        .unwrap();
    net.drive();
    // [MQTT-3.2.2-7] a CONNACK >= 0x80, then the close; the Reason String with it.
    assert_eq!(
        disconnected(&net.events(c)),
        Some((
            ReasonCode::BadUserNameOrPassword,
            Some("wrong password".into())
        ))
    );
    assert_eq!(
        net.closes.last().map(|c| c.1),
        Some(CloseReason::Refused(ReasonCode::BadUserNameOrPassword))
    );
    // A reason string no packet can carry is refused before anything is decided.
    let d = net.join(slow(V5, "d"));
    let r = requests(&mut net).remove(0);
    assert_eq!(
        net.broker
            .reject(net.now, r.id, ReasonCode::NotAuthorized, Some("a\0b")),
        Err(Error::InvalidReasonString)
    );
    assert!(net.broker.is_deciding(net.peers[d].id.unwrap()));
}

#[test]
fn mqtt_3_2_2_7_a_v311_client_refused_gets_the_nearest_return_code() {
    let mut net = net(10_000);
    for (code, nearest) in [
        (ReasonCode::Banned, ReasonCode::NotAuthorized),
        (
            ReasonCode::BadUserNameOrPassword,
            ReasonCode::BadUserNameOrPassword,
        ),
        (ReasonCode::QuotaExceeded, ReasonCode::ServerUnavailable),
    ] {
        let c = net.join(slow(V4, "c"));
        let r = requests(&mut net).remove(0);
        net.broker.reject(net.now, r.id, code, Some("no")).unwrap();
        net.drive();
        // 3.1.1 has no Reason String.
        assert_eq!(
            disconnected(&net.events(c)),
            Some((nearest, None)),
            "{code:?}"
        );
    }
}

#[test]
fn an_unanswered_decision_times_out_with_a_stated_reason() {
    let mut net = net(2_000);
    let c = net.join(slow(V5, "c"));
    let r = requests(&mut net).remove(0);
    net.now = net.now + Duration::from_millis(1_999);
    net.broker.handle_timeout(net.now);
    net.drive();
    assert!(net.peers[c].id.is_some(), "not yet");
    assert_eq!(net.broker.poll_timeout(), Some(Instant::from_millis(2_000)));
    net.now = Instant::from_millis(2_000);
    net.broker.handle_timeout(net.now);
    net.drive();
    assert_eq!(
        disconnected(&net.events(c)),
        Some((
            ReasonCode::ImplementationSpecificError,
            Some("decision timed out".into())
        ))
    );
    assert_eq!(
        net.closes.last().map(|c| c.1),
        Some(CloseReason::DecisionTimeout)
    );
    assert_eq!(net.broker.stats().decisions_timed_out, 1);
    assert_eq!(
        net.broker
            .reject(net.now, r.id, ReasonCode::NotAuthorized, None),
        Err(Error::UnknownRequest)
    );
    assert_eq!(net.broker.pending_requests(), 0);

    // Connected: a deferred PUBLISH left unanswered ends with a 5.0 DISCONNECT.
    let p = net.join(ClientConfig::new(V5, "p"));
    net.publish(p, "slow/x", "m", QoS::AtLeastOnce, false);
    assert_eq!(requests(&mut net).len(), 1);
    net.advance(2_000);
    assert_eq!(
        disconnected(&net.events(p)),
        Some((
            ReasonCode::ImplementationSpecificError,
            Some("decision timed out".into())
        ))
    );
    assert_eq!(net.broker.stats().decisions_timed_out, 2);
}

#[test]
fn other_connections_flow_while_one_waits() {
    let mut net = net(10_000);
    let waiting = net.join(slow(V5, "w"));
    let s = net.join(ClientConfig::new(V5, "s"));
    let p = net.join(ClientConfig::new(V4, "p"));
    net.subscribe(s, "t", q(QoS::AtLeastOnce));
    net.publish(p, "t", "hi", QoS::AtLeastOnce, false);
    assert_eq!(net.take(s), [got("t", "hi", QoS::AtLeastOnce, false)]);
    // A subscriber whose SUBSCRIBE is being decided still gets what it subscribed before.
    net.peers[s]
        .client
        .subscribe(net.now, &[("slow/a", q(QoS::AtMostOnce))], None)
        .unwrap();
    net.drive();
    net.publish(p, "t", "again", QoS::AtLeastOnce, false);
    assert_eq!(net.take(s), [got("t", "again", QoS::AtLeastOnce, false)]);
    assert!(!net.peers[waiting].client.is_connected());
    assert_eq!(net.broker.pending_requests(), 2);
}

#[test]
fn a_connection_closed_while_deciding_drops_its_requests() {
    let mut net = net(10_000);
    let c = net.join(slow(V5, "c"));
    let id = net.peers[c].id.unwrap();
    net.cut(c);
    // Not handed out, and an answer from before the close finds nothing.
    assert!(net.broker.poll_request().is_none());
    let d = net.join(slow(V5, "d"));
    let r = requests(&mut net).remove(0);
    net.cut(d);
    assert_eq!(net.broker.accept(net.now, r.id), Err(Error::UnknownRequest));
    assert_eq!(
        net.broker.challenge(net.now, r.id, Bytes::new()),
        Err(Error::UnknownRequest)
    );
    assert!(!net.broker.is_deciding(id));
    assert_eq!(net.broker.connection_count(), 0);
    assert_eq!(net.broker.pending_requests(), 0);
    // Taken over while its PUBLISH is being decided.
    let a = net.join(ClientConfig::new(V5, "same"));
    net.publish(a, "slow/x", "m", QoS::AtLeastOnce, false);
    let r = requests(&mut net).remove(0);
    net.join(ClientConfig::new(V5, "same"));
    assert_eq!(net.broker.accept(net.now, r.id), Err(Error::UnknownRequest));
}

#[test]
fn mqtt_4_12_0_2_deferred_enhanced_authentication_challenge_round_trip() {
    let mut net = net(10_000);
    let c = net.join(ClientConfig {
        authentication: Some(("CR".into(), Some(Bytes::from_static(b"hello")))),
        ..ClientConfig::new(V5, "c")
    });
    let r = requests(&mut net).remove(0);
    assert_eq!(
        r.kind,
        RequestKind::Auth {
            method: "CR".into(),
            data: Some(Bytes::from_static(b"hello")),
            reauthenticate: false,
        }
    );
    // Only an AUTH request takes a challenge.
    net.broker
        .challenge(net.now, r.id, Bytes::from_static(b"nonce"))
        .unwrap();
    net.drive();
    // [MQTT-4.12.0-2] Continue authentication with the challenge.
    let challenge = net.events(c).into_iter().find_map(|e| match e {
        Event::Auth { reason, data, .. } => Some((reason, data)),
        _ => None,
    });
    assert_eq!(
        challenge,
        Some((
            ReasonCode::ContinueAuthentication,
            Some(Bytes::from_static(b"nonce"))
        ))
    );
    net.peers[c]
        .client
        .auth(
            net.now,
            ReasonCode::ContinueAuthentication,
            Some(Bytes::from_static(b"nonce+key")),
        )
        .unwrap();
    net.drive();
    let r = requests(&mut net).remove(0);
    assert!(matches!(&r.kind, RequestKind::Auth { data: Some(d), .. } if &d[..] == b"nonce+key"));
    net.broker.accept(net.now, r.id).unwrap();
    net.drive();
    assert!(net.peers[c].client.is_connected());

    // [MQTT-4.12.1-2] a re-authentication refused later disconnects, with the reason.
    net.peers[c]
        .client
        .auth(
            net.now,
            ReasonCode::ReAuthenticate,
            Some(Bytes::from_static(b"again")),
        )
        .unwrap();
    net.drive();
    let r = requests(&mut net).remove(0);
    assert!(matches!(
        r.kind,
        RequestKind::Auth {
            reauthenticate: true,
            ..
        }
    ));
    net.broker
        .reject(net.now, r.id, ReasonCode::NotAuthorized, Some("expired"))
        .unwrap();
    net.drive();
    assert_eq!(
        disconnected(&net.events(c)),
        Some((ReasonCode::NotAuthorized, Some("expired".into())))
    );
}

#[test]
fn mqtt_4_6_0_6_a_deferred_publish_keeps_its_place_in_order() {
    let mut net = net(10_000);
    let s = net.join(ClientConfig::new(V5, "s"));
    let p = net.join(ClientConfig::new(V5, "p"));
    net.subscribe(s, "#", q(QoS::AtLeastOnce));
    net.events(s);
    for (topic, payload) in [
        ("slow/1", "a"),
        ("fast", "b"),
        ("slow/2", "c"),
        ("fast", "d"),
    ] {
        net.peers[p]
            .client
            .publish(
                net.now,
                Message::new(
                    TopicBuf::from_static(topic).unwrap(),
                    payload,
                    QoS::AtLeastOnce,
                ),
            )
            .unwrap();
    }
    net.drive();
    // Nothing behind the deferred message is routed before it.
    assert!(net.take(s).is_empty());
    let pid = net.peers[p].id.unwrap();
    assert!(!net.broker.wants_input(pid));
    assert!(net.paused(p));
    let r = requests(&mut net);
    assert_eq!(r.len(), 1, "one at a time: the rest is not read yet");
    assert!(
        matches!(&r[0].kind, RequestKind::Publish { topic, qos: QoS::AtLeastOnce, retain: false } if topic.as_str() == "slow/1")
    );
    net.broker.accept(net.now, r[0].id).unwrap();
    net.drive();
    let r = requests(&mut net);
    assert_eq!(r.len(), 1);
    // Refused: dropped, and the 5.0 publisher hears why.
    net.broker
        .reject(
            net.now,
            r[0].id,
            ReasonCode::NotAuthorized,
            Some("read only"),
        )
        .unwrap();
    net.drive();
    let payloads: Vec<String> = net.take(s).into_iter().map(|m| m.1).collect();
    assert_eq!(payloads, ["a", "b", "d"]);
    let acks: Vec<(ReasonCode, Option<String>)> = net
        .events(p)
        .into_iter()
        .filter_map(|e| match e {
            Event::Acknowledged {
                reason,
                reason_string,
                ..
            } => Some((reason, reason_string.map(|s| s.as_str().to_owned()))),
            _ => None,
        })
        .collect();
    assert_eq!(
        acks,
        [
            (ReasonCode::Success, None),
            (ReasonCode::Success, None),
            (ReasonCode::NotAuthorized, Some("read only".into())),
            (ReasonCode::Success, None),
        ]
    );
    assert!(!net.paused(p));
}

#[test]
fn mqtt_3_9_3_1_deferred_subscribe_filters_keep_their_order_in_the_suback() {
    let mut net = net(10_000);
    let s = net.join(ClientConfig::new(V5, "s"));
    let sid = net.peers[s].id.unwrap();
    net.peers[s]
        .client
        .subscribe(
            net.now,
            &[
                ("a", q(QoS::AtLeastOnce)),
                ("slow/b", q(QoS::AtLeastOnce)),
                ("deny/c", q(QoS::AtLeastOnce)),
                ("slow/d", q(QoS::ExactlyOnce)),
            ],
            None,
        )
        .unwrap();
    // Keep the SUBACK in the broker, to read its properties.
    net.stalled.push(sid);
    net.drive();
    let r = requests(&mut net);
    let filters: Vec<&str> = r
        .iter()
        .map(|r| match &r.kind {
            RequestKind::Subscribe { filter, .. } => filter.as_str(),
            k => panic!("{k:?}"),
        })
        .collect();
    assert_eq!(filters, ["slow/b", "slow/d"]);
    // Answered in the other order.
    net.broker
        .reject(
            net.now,
            r[1].id,
            ReasonCode::QuotaExceeded,
            Some("too many"),
        )
        .unwrap();
    assert!(net.broker.is_deciding(sid));
    net.broker.accept(net.now, r[0].id).unwrap();
    assert!(!net.broker.is_deciding(sid));
    let mut out = vec![0u8; 4096];
    let mut suback = None;
    while let Some(n) = net.broker.poll_transmit(net.now, sid, &mut out).unwrap() {
        if let Ok(Status::Complete {
            packet: Packet::SubAck(a),
            ..
        }) = decode(&out[..n], &DecodeOptions::new(V5))
        {
            suback = Some((
                a.reason_codes.iter().collect::<Vec<_>>(),
                a.properties.reason_string.map(str::to_owned),
            ));
        }
    }
    assert_eq!(
        suback,
        Some((
            vec![
                ReasonCode::GrantedQoS1,
                ReasonCode::GrantedQoS1,
                ReasonCode::NotAuthorized,
                ReasonCode::QuotaExceeded,
            ],
            Some("too many".into())
        ))
    );
    net.stalled.clear();
    // Both allowed filters are subscribed; the refused ones are not.
    let p = net.join(ClientConfig::new(V5, "p"));
    for t in ["a", "slow/b", "deny/c", "slow/d"] {
        net.publish(p, t, t, QoS::AtMostOnce, false);
        let r = requests(&mut net);
        if let Some(r) = r.first() {
            net.broker.accept(net.now, r.id).unwrap();
            net.drive();
        }
    }
    let topics: Vec<String> = net.take(s).into_iter().map(|m| m.0).collect();
    assert_eq!(topics, ["a", "slow/b"]);
}

#[test]
fn mqtt_3_9_3_2_a_v311_deferred_filter_refused_is_a_failure() {
    let mut net = net(10_000);
    let s = net.join(ClientConfig::new(V4, "s"));
    net.peers[s]
        .client
        .subscribe(
            net.now,
            &[("slow/x", q(QoS::AtLeastOnce)), ("a", q(QoS::AtMostOnce))],
            None,
        )
        .unwrap();
    net.drive();
    let r = requests(&mut net).remove(0);
    net.broker
        .reject(net.now, r.id, ReasonCode::NotAuthorized, Some("ignored"))
        .unwrap();
    net.drive();
    // 3.1.1 knows only 0x80 (Failure).
    assert_eq!(
        net.ack_codes(s),
        [vec![ReasonCode::UnspecifiedError, ReasonCode::Success]]
    );
}

#[test]
fn mqtt_3_1_2_22_keep_alive_is_not_counted_while_a_decision_is_pending() {
    let mut net = net(60_000);
    let p = net.join(ClientConfig {
        keep_alive: 2,
        ..ClientConfig::new(V5, "p")
    });
    net.publish(p, "slow/x", "m", QoS::AtLeastOnce, false);
    let r = requests(&mut net).remove(0);
    // Well beyond 1.5 times the keep alive, the client's packets unread on our word.
    for _ in 0..10 {
        net.now = net.now + Duration::from_millis(1_000);
        net.broker.handle_timeout(net.now);
        net.drive();
    }
    assert!(net.closes.is_empty());
    net.broker.accept(net.now, r.id).unwrap();
    net.drive();
    assert!(net.peers[p].client.is_connected());
}

#[test]
fn open_with_passes_peer_and_tls_identity_to_the_hooks() {
    struct ByCert(Vec<(Option<core::net::SocketAddr>, Option<String>)>);
    impl Hooks for ByCert {
        fn authenticate(&mut self, ctx: &Context<'_>, _: &ConnectRequest) -> Verdict {
            self.0.push((ctx.info.peer, ctx.info.tls_identity.clone()));
            match ctx.info.tls_identity.as_deref() {
                Some("CN=ok") => Verdict::Allow,
                _ => Verdict::Deny(ReasonCode::NotAuthorized),
            }
        }
    }
    let mut broker = Broker::with_hooks(
        BrokerConfig {
            sys_interval: None,
            ..BrokerConfig::default()
        },
        ByCert(Vec::new()),
        Instant::ZERO,
    );
    let peer: core::net::SocketAddr = "192.0.2.1:4711".parse().unwrap();
    let now = Instant::ZERO;
    let ok = broker.open_with(
        now,
        ConnInfo {
            peer: Some(peer),
            tls_identity: Some("CN=ok".into()),
        },
    );
    let anon = broker.open(now);
    for id in [ok, anon] {
        broker.handle_input(now, id, &mut wire(&[connect(V5, "x", 0)], V5));
        run_events(&mut broker, now);
    }
    assert_eq!(
        broker.hooks_mut().0,
        [(Some(peer), Some("CN=ok".into())), (None, None)]
    );
    assert_eq!(broker.context(ok).unwrap().info.peer, Some(peer));
    assert_eq!(broker.connection_count(), 1);
}

#[test]
fn mqtt_3_1_2_20_a_client_counts_keep_alive_from_its_connect_when_the_login_waits() {
    let mut net = net(60_000);
    let c = net.join(ClientConfig {
        keep_alive: 2,
        ..slow(V5, "c")
    });
    let r = requests(&mut net).remove(0);
    // The login takes 3 s, beyond the keep alive.
    net.now = net.now + Duration::from_millis(3_000);
    net.broker.accept(net.now, r.id).unwrap();
    net.drive();
    assert!(net.peers[c].client.is_connected());
    // The CONNECT was the last packet sent, 3 s ago: a PINGREQ is due now, not 2 s on.
    assert!(net.peers[c]
        .client
        .poll_timeout()
        .is_some_and(|t| t <= net.now));
}

/// `answer` takes the same `Verdict` a synchronous hook returns: `Defer` leaves the request
/// waiting, `Deny` refuses it (no reason string), `Allow` accepts it; answering one that is
/// gone is `UnknownRequest`.
#[test]
fn answer_takes_a_hooks_verdict() {
    let mut net = net(10_000);
    let a = net.join(slow(V5, "a"));
    let b = net.join(slow(V5, "b"));
    let reqs = requests(&mut net);
    assert_eq!(reqs.len(), 2);
    net.broker
        .answer(net.now, reqs[0].id, Verdict::Defer)
        .unwrap();
    assert!(net.broker.is_deciding(net.peers[a].id.unwrap()));
    net.broker
        .answer(net.now, reqs[0].id, Verdict::Allow)
        .unwrap();
    let denied = Verdict::Deny(ReasonCode::BadUserNameOrPassword);
    net.broker.answer(net.now, reqs[1].id, denied).unwrap();
    net.drive();
    assert!(net.peers[a].client.is_connected());
    assert_eq!(
        disconnected(&net.events(b)),
        Some((ReasonCode::BadUserNameOrPassword, None))
    );
    for verdict in [Verdict::Defer, Verdict::Allow, denied] {
        assert_eq!(
            net.broker.answer(net.now, reqs[1].id, verdict),
            Err(Error::UnknownRequest)
        );
    }
}

/// Every event names its connection.
#[test]
fn an_events_connection() {
    let mut net = net(10_000);
    let id = net.broker.open(net.now);
    for e in [
        BrokerEvent::Transmit(id),
        BrokerEvent::Pause(id),
        BrokerEvent::Resume(id),
        BrokerEvent::Close {
            id,
            reason: CloseReason::KeepAliveTimeout,
        },
    ] {
        assert_eq!(e.connection(), id);
    }
}
