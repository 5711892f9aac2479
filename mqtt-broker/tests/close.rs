//! Every close the core decides comes out as `BrokerEvent::Close` with its reason.

mod support;

use bytes::BytesMut;
use mqtt_broker::Error;
use mqtt_broker::*;
use mqtt_codec::{Packet, ProtocolVersion, QoS, ReasonCode};
use mqtt_state::*;
use support::*;

fn broker() -> Broker {
    Broker::new(
        BrokerConfig {
            sys_interval: None,
            ..BrokerConfig::default()
        },
        Instant::ZERO,
    )
}

/// A connection of `client_id` (3.1.1, keep alive 60 s), accepted.
fn connected(broker: &mut Broker, client_id: &str) -> ConnectionId {
    let v = ProtocolVersion::V3_1_1;
    let id = broker.open(Instant::ZERO);
    let mut input = wire(&[connect(v, client_id, 60)], v);
    broker.handle_input(Instant::ZERO, id, &mut input);
    assert!(run_events(broker, Instant::ZERO).is_empty());
    id
}

#[test]
fn no_connect_in_time_is_a_connect_timeout() {
    let mut broker = broker();
    let id = broker.open(Instant::ZERO);
    let t = Instant::from_millis(10_000);
    broker.handle_timeout(Instant::from_millis(9_999));
    assert!(run_events(&mut broker, t).is_empty());
    broker.handle_timeout(t);
    assert_eq!(
        run_events(&mut broker, t),
        [(id, CloseReason::ConnectTimeout)]
    );
}

#[test]
fn the_clients_disconnect_is_reported_with_its_code() {
    let mut broker = broker();
    let id = connected(&mut broker, "c");
    let mut input = wire(
        &[Packet::Disconnect(mqtt_codec::Disconnect::new(
            ReasonCode::Success,
        ))],
        ProtocolVersion::V3_1_1,
    );
    broker.handle_input(Instant::ZERO, id, &mut input);
    assert_eq!(
        run_events(&mut broker, Instant::ZERO),
        [(id, CloseReason::ClientDisconnect(ReasonCode::Success))]
    );
}

#[test]
fn a_protocol_violation_is_a_protocol_error() {
    let mut broker = broker();
    let id = connected(&mut broker, "c");
    // [MQTT-3.1.0-2] a second CONNECT.
    let v = ProtocolVersion::V3_1_1;
    let mut input = wire(&[connect(v, "c", 60)], v);
    broker.handle_input(Instant::ZERO, id, &mut input);
    let closes = run_events(&mut broker, Instant::ZERO);
    assert_eq!(closes.len(), 1);
    assert!(
        matches!(closes[0], (c, CloseReason::ProtocolError(e)) if c == id
            && e.reason_code() == ReasonCode::ProtocolError),
        "{closes:?}"
    );
}

#[test]
fn malformed_bytes_are_a_protocol_error() {
    let mut broker = broker();
    let id = connected(&mut broker, "c");
    // Packet type 0 is reserved.
    let mut input = BytesMut::from(&[0x00u8, 0x00][..]);
    broker.handle_input(Instant::ZERO, id, &mut input);
    let closes = run_events(&mut broker, Instant::ZERO);
    assert!(
        matches!(closes[..], [(c, CloseReason::ProtocolError(_))] if c == id),
        "{closes:?}"
    );
}

#[test]
fn a_refused_connect_is_reported_with_its_code() {
    let mut broker = Broker::with_hooks(
        BrokerConfig {
            sys_interval: None,
            ..BrokerConfig::default()
        },
        Strict,
        Instant::ZERO,
    );
    let id = broker.open(Instant::ZERO);
    let v = ProtocolVersion::V5;
    let mut input = wire(&[connect(v, "c", 60)], v);
    broker.handle_input(Instant::ZERO, id, &mut input);
    assert_eq!(
        run_events(&mut broker, Instant::ZERO),
        [(id, CloseReason::Refused(ReasonCode::BadUserNameOrPassword))]
    );
}

#[test]
fn beyond_max_connections_is_refused_as_server_busy() {
    let mut broker = Broker::new(
        BrokerConfig {
            sys_interval: None,
            max_connections: 1,
            ..BrokerConfig::default()
        },
        Instant::ZERO,
    );
    connected(&mut broker, "a");
    let id = broker.open(Instant::ZERO);
    let v = ProtocolVersion::V5;
    let mut input = wire(&[connect(v, "b", 60)], v);
    broker.handle_input(Instant::ZERO, id, &mut input);
    assert_eq!(
        run_events(&mut broker, Instant::ZERO),
        [(id, CloseReason::Refused(ReasonCode::ServerBusy))]
    );
}

#[test]
fn a_takeover_closes_the_old_connection_as_taken_over() {
    let mut broker = broker();
    let old = connected(&mut broker, "c");
    let v = ProtocolVersion::V3_1_1;
    let new = broker.open(Instant::ZERO);
    let mut input = wire(&[connect(v, "c", 60)], v);
    broker.handle_input(Instant::ZERO, new, &mut input);
    // [MQTT-3.1.4-3]
    assert_eq!(
        run_events(&mut broker, Instant::ZERO),
        [(old, CloseReason::SessionTakenOver)]
    );
    assert_eq!(broker.session("c").unwrap().connection, Some(new));
    assert_eq!(broker.stats().clients_connected, 1);
}

#[test]
fn the_server_disconnects_with_a_reason_and_shuts_down() {
    let mut net = Net::new();
    let a = net.join(ClientConfig::new(V5, "a"));
    let b = net.join(ClientConfig::new(V5, "b"));
    let c = net.join(ClientConfig::new(V4, "c"));
    let ida = net.peers[a].id.unwrap();
    net.broker
        .disconnect(net.now, ida, ReasonCode::AdministrativeAction)
        .unwrap();
    net.drive();
    assert_eq!(
        net.closes,
        [(
            ida,
            CloseReason::ServerDisconnect(ReasonCode::AdministrativeAction)
        )]
    );
    // [MQTT-3.14.0-1] a 5.0 client is told why.
    assert!(net.events(a).iter().any(|e| matches!(
        e,
        Event::Disconnected {
            reason: ReasonCode::AdministrativeAction,
            by_peer: true,
            ..
        }
    )));
    assert_eq!(
        net.broker
            .disconnect(net.now, ida, ReasonCode::AdministrativeAction),
        Err(Error::UnknownConnection)
    );
    net.closes.clear();
    let (idb, idc) = (net.peers[b].id.unwrap(), net.peers[c].id.unwrap());
    net.broker.shutdown(net.now);
    net.drive();
    net.closes.sort_by_key(|c| c.0);
    let mut expected = vec![
        (idb, CloseReason::ServerShuttingDown),
        (idc, CloseReason::ServerShuttingDown),
    ];
    expected.sort_by_key(|c| c.0);
    assert_eq!(net.closes, expected);
    assert_eq!(net.broker.connection_count(), 0);
}

#[test]
fn removing_a_session_disconnects_it_and_forgets_it() {
    let mut net = Net::new();
    let w = net.join(ClientConfig::new(V5, "w"));
    net.subscribe(w, "wills/#", q(QoS::AtMostOnce));
    let will = Message::new(
        TopicBuf::from_static("wills/d").unwrap(),
        "gone",
        QoS::AtMostOnce,
    );
    let d = net.join(ClientConfig {
        will: Some((will, 100)),
        ..persistent(V5, "d")
    });
    net.subscribe(d, "x/#", q(QoS::AtLeastOnce));
    let idd = net.peers[d].id.unwrap();
    let info = net.broker.session("d").unwrap();
    assert_eq!(info.connection, Some(idd));
    assert_eq!(info.subscriptions.len(), 1);
    assert_eq!(info.subscriptions[0].filter, "x/#");
    assert_eq!(info.subscriptions[0].qos, QoS::AtLeastOnce);
    assert_eq!(info.expiry_interval, 3600);
    net.broker.remove_session(net.now, "d").unwrap();
    net.drive();
    assert_eq!(
        net.closes,
        [(
            idd,
            CloseReason::ServerDisconnect(ReasonCode::AdministrativeAction)
        )]
    );
    // The session ends, so its will goes out without waiting for the delay.
    assert_eq!(
        net.take(w),
        [got("wills/d", "gone", QoS::AtMostOnce, false)]
    );
    assert!(net.broker.session("d").is_none());
    assert_eq!(
        net.broker
            .sessions()
            .map(|s| s.client_id)
            .collect::<Vec<_>>(),
        ["w"]
    );
    assert_eq!(
        net.broker.remove_session(net.now, "d"),
        Err(Error::UnknownSession)
    );
    assert_eq!(net.broker.stats().subscriptions, 1);
}
