//! Authentication and authorization through the hooks.
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
                net.now,
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
            net.now,
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
            net.now,
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
