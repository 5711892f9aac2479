//! Bugs the `session` fuzz target found, each pinned by the smallest input that showed it.

use bytes::BytesMut;
use mqtt_codec::{Packet, ProtocolVersion, Publish, QosPid, Topic};
use mqtt_state::{Client, ClientConfig, Error, Instant, TopicBuf, Violation};

/// [MQTT-4.8.0-1] a protocol violation closes the connection: a client that failed before
/// its CONNECT went out must not send it afterwards (nor any other queued control packet),
/// only report the error.
#[test]
fn a_failed_client_sends_no_queued_control_packet() {
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let now = Instant::ZERO;
        let mut client = Client::new(ClientConfig::new(version, "c"));
        client.connect(now).unwrap();
        // A PUBLISH where CONNACK must come first.
        let publish = Packet::Publish(Publish::new(
            Topic::new("t").unwrap(),
            b"x",
            QosPid::AtMostOnce,
        ));
        let mut input = BytesMut::from(&publish.encode_to_vec(version).unwrap()[..]);
        let err = client.handle_input(now, &mut input).unwrap_err();
        assert!(matches!(
            err,
            Error::Protocol(Violation::UnexpectedPacket(_))
        ));
        let mut out = [0u8; 256];
        assert_eq!(client.poll_transmit(now, &mut out), Err(err));
        assert_eq!(client.poll_transmit(now, &mut out), Err(err));
    }
}

// ---- Found by the deterministic simulation (tests/tests/simulation.rs) -------------------

mod sim {
    use bytes::BytesMut;
    use mqtt_codec::{ProtocolVersion, QoS};
    use mqtt_state::{
        Accept, Client, ClientConfig, Event, Instant, Message, ServerConfig, ServerSession,
    };

    /// Everything `from` has to send, as one buffer.
    pub(super) fn drain_client(c: &mut Client, now: Instant) -> BytesMut {
        let mut out = [0u8; 4096];
        let mut buf = BytesMut::new();
        while let Some(n) = c.poll_transmit(now, &mut out).unwrap() {
            buf.extend_from_slice(&out[..n]);
        }
        buf
    }

    pub(super) fn drain_server(s: &mut ServerSession, now: Instant) -> BytesMut {
        let mut out = [0u8; 4096];
        let mut buf = BytesMut::new();
        while let Ok(Some(n)) = s.poll_transmit(now, &mut out) {
            buf.extend_from_slice(&out[..n]);
        }
        buf
    }

    /// A client and a server session connected at `version`, the server accepting with
    /// `accept`; returns them after CONNACK reached the client.
    pub(super) fn connect(
        client: ClientConfig,
        server: ServerConfig,
        accept: Accept,
    ) -> (Client, ServerSession) {
        let now = Instant::ZERO;
        let mut c = Client::new(client);
        let mut s = ServerSession::new(server, now);
        c.connect(now).unwrap();
        let mut c2s = drain_client(&mut c, now);
        s.handle_input(now, &mut c2s).unwrap();
        assert!(matches!(s.poll_event(), Some(Event::ConnectRequest(_))));
        s.accept(now, accept).unwrap();
        let mut s2c = drain_server(&mut s, now);
        c.handle_input(now, &mut s2c).unwrap();
        assert!(matches!(c.poll_event(), Some(Event::Connected(_))));
        (c, s)
    }

    pub(super) fn msg(payload: &'static str, qos: QoS) -> Message {
        Message::new(
            mqtt_state::TopicBuf::from_static("t").unwrap(),
            payload,
            qos,
        )
    }

    pub(super) const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
}

/// 3.1.1 has no Receive Maximum: the client never announced one, so a conforming 3.1.1
/// server may have any number of QoS 1/2 messages in flight. A client configured with a
/// small `receive_maximum` must not call that a protocol violation (the 5.0 rule,
/// [MQTT-3.3.4-9], is only enforceable once the peer has been told the limit).
#[test]
fn receive_maximum_is_not_enforced_on_a_3_1_1_peer() {
    use mqtt_codec::QoS;
    use mqtt_state::{Accept, ClientConfig, Instant, ServerConfig};
    let now = Instant::ZERO;
    let mut cc = ClientConfig::new(sim::V4, "c");
    cc.receive_maximum = 1;
    let (mut c, mut s) = sim::connect(cc, ServerConfig::default(), Accept::default());
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        s.deliver(now, sim::msg("a", qos), &[]).unwrap();
        s.deliver(now, sim::msg("b", qos), &[]).unwrap();
        let mut s2c = sim::drain_server(&mut s, now);
        c.handle_input(now, &mut s2c).unwrap();
        let mut c2s = sim::drain_client(&mut c, now);
        s.handle_input(now, &mut c2s).unwrap();
        let mut s2c = sim::drain_server(&mut s, now);
        c.handle_input(now, &mut s2c).unwrap();
        sim::drain_client(&mut c, now);
    }
    // And the same the other way: a 3.1.1 client may exceed the server's Receive Maximum.
    let mut cc = ClientConfig::new(sim::V4, "c");
    cc.max_inflight = 4;
    let sc = ServerConfig {
        receive_maximum: 1,
        ..ServerConfig::default()
    };
    let (mut c, mut s) = sim::connect(cc, sc, Accept::default());
    c.publish(now, sim::msg("a", QoS::AtLeastOnce)).unwrap();
    c.publish(now, sim::msg("b", QoS::ExactlyOnce)).unwrap();
    let mut c2s = sim::drain_client(&mut c, now);
    s.handle_input(now, &mut c2s).unwrap();
}

/// [MQTT-4.3.3-11] a PUBREL is answered with PUBCOMP, also for an id the receiver already
/// completed (its PUBCOMP was lost with the connection and the sender re-sends PUBREL on the
/// resumed session). 5.0 says Packet Identifier not found; 3.1.1 has no reason codes, so the
/// PUBCOMP must be a plain one rather than an encoding error.
#[test]
fn pubrel_for_a_completed_id_gets_a_pubcomp_on_3_1_1() {
    use mqtt_codec::{Packet, PubAck};
    use mqtt_state::{Accept, ClientConfig, Instant, ServerConfig};
    let now = Instant::ZERO;
    let (mut c, _s) = sim::connect(
        ClientConfig::new(sim::V4, "c"),
        ServerConfig::default(),
        Accept::default(),
    );
    let id = mqtt_codec::PacketId::new(7).unwrap();
    let pubrel = Packet::PubRel(PubAck::new(id));
    let mut input = BytesMut::from(&pubrel.encode_to_vec(sim::V4).unwrap()[..]);
    c.handle_input(now, &mut input).unwrap();
    let out = sim::drain_client(&mut c, now);
    let expect = Packet::PubComp(PubAck::new(id))
        .encode_to_vec(sim::V4)
        .unwrap();
    assert_eq!(&out[..], &expect[..]);
}

/// [MQTT-4.8.0-1] a server connection that failed while the application was deciding on
/// the CONNECT (a malformed packet behind it, or the transport closing) stays failed:
/// `accept` and `reject` report the error instead of queueing a CONNACK and replacing the
/// error with their own.
#[test]
fn a_failed_server_does_not_answer_the_connect() {
    use mqtt_state::{Accept, Event, ServerConfig, ServerSession};
    let now = Instant::ZERO;
    let connect = Packet::Connect(mqtt_codec::Connect::new(ProtocolVersion::V3_1_1, "c"))
        .encode_to_vec(ProtocolVersion::V3_1_1)
        .unwrap();
    for case in 0..4 {
        let mut server = ServerSession::new(ServerConfig::default(), now);
        let mut input = BytesMut::from(&connect[..]);
        server.handle_input(now, &mut input).unwrap();
        assert!(matches!(
            server.poll_event(),
            Some(Event::ConnectRequest(_))
        ));
        let err = if case < 2 {
            // Packet type 15 does not exist in 3.1.1.
            input.extend_from_slice(&[0xF0, 0x00]);
            server.handle_input(now, &mut input).unwrap_err()
        } else {
            server.handle_close(now);
            Error::ConnectionClosed
        };
        let answer = if case % 2 == 0 {
            server.accept(now, Accept::default())
        } else {
            server.reject(now, mqtt_codec::ReasonCode::NotAuthorized)
        };
        assert_eq!(answer, Err(err));
        let mut out = [0u8; 64];
        assert_eq!(server.poll_transmit(now, &mut out), Err(err));
        assert_eq!(server.handle_input(now, &mut input), Err(err));
    }
}

/// [MQTT-2.2.1-3] each SUBSCRIBE carries its own packet identifier: two subscriptions made
/// before the first SUBACK arrives go out as two SUBSCRIBE packets with their own ids and
/// filters, not the first one twice.
#[test]
fn back_to_back_subscribes_each_go_out_once() {
    use mqtt_codec::{decode, DecodeOptions, Packet, QoS, Status, SubscriptionOptions};
    use mqtt_state::{Accept, ClientConfig, Instant, ServerConfig};
    for version in [sim::V4, mqtt_codec::ProtocolVersion::V5] {
        let now = Instant::ZERO;
        let (mut c, _s) = sim::connect(
            ClientConfig::new(version, "c"),
            ServerConfig::default(),
            Accept::default(),
        );
        let opts = SubscriptionOptions::qos(QoS::AtLeastOnce);
        let a = c.subscribe(now, &[("a", opts)], None).unwrap();
        let b = c.subscribe(now, &[("b", opts)], None).unwrap();
        assert_ne!(a, b);
        let out = sim::drain_client(&mut c, now);
        let mut rest = &out[..];
        let mut sent = Vec::new();
        while let Ok(Status::Complete { packet, consumed }) =
            decode(rest, &DecodeOptions::new(version))
        {
            if let Packet::Subscribe(s) = packet {
                let filters: Vec<String> = s.filters.iter().map(|f| f.filter.into()).collect();
                sent.push((s.packet_id, filters));
            }
            rest = &rest[consumed..];
        }
        assert_eq!(
            sent,
            [(a, vec!["a".to_string()]), (b, vec!["b".to_string()])]
        );
    }
}

/// [MQTT-3.2.2-7] a refusing CONNACK carries a code of 0x80 or above (3.1.1: a non-zero
/// return code): `reject(Success)` must not send a CONNACK that accepts the connection
/// while the machine closes it, and `reject` with a code CONNACK does not have (Server
/// shutting down) must not leave an unencodable CONNACK failing every `poll_transmit`.
#[test]
fn reject_with_a_success_code_still_refuses() {
    use mqtt_codec::{decode, DecodeOptions, ReasonCode, Status};
    use mqtt_state::{Event, ServerConfig, ServerSession};
    let now = Instant::ZERO;
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let connect = Packet::Connect(mqtt_codec::Connect::new(version, "c"))
            .encode_to_vec(version)
            .unwrap();
        let mut server = ServerSession::new(ServerConfig::default(), now);
        server
            .handle_input(now, &mut BytesMut::from(&connect[..]))
            .unwrap();
        assert!(matches!(
            server.poll_event(),
            Some(Event::ConnectRequest(_))
        ));
        // Success, and a refusal CONNACK cannot carry (DISCONNECT only).
        let reason = if version.is_v5() {
            ReasonCode::ServerShuttingDown
        } else {
            ReasonCode::Success
        };
        server.reject(now, reason).unwrap();
        let mut out = [0u8; 64];
        let n = server.poll_transmit(now, &mut out).unwrap().unwrap();
        let Ok(Status::Complete {
            packet: Packet::ConnAck(ack),
            ..
        }) = decode(&out[..n], &DecodeOptions::new(version))
        else {
            panic!("not a CONNACK: {:02x?}", &out[..n]);
        };
        assert!(ack.reason_code.is_error(), "{version:?}: {ack:?}");
        assert!(!ack.session_present);
        assert!(matches!(
            server.poll_transmit(now, &mut out),
            Err(Error::ConnectionRefused(c)) if c.is_error()
        ));
    }
}

/// A SUBSCRIBE whose SUBACK was lost with the connection gets no answer on the next one
/// (the application subscribes again): its packet identifier must be free again rather
/// than held by the session forever, or every lost SUBACK leaks one of the 65,535 ids
/// ([MQTT-2.2.1-3]: an id is in use only until its acknowledgement can still arrive).
#[test]
fn a_subscribe_lost_with_the_connection_frees_its_packet_id() {
    use mqtt_codec::{QoS, SubscriptionOptions};
    use mqtt_state::{Accept, ClientConfig, Event, Instant, ServerConfig};
    for version in [sim::V4, mqtt_codec::ProtocolVersion::V5] {
        let now = Instant::ZERO;
        let mut cc = ClientConfig::new(version, "c");
        cc.clean_start = false;
        cc.session_expiry_interval = 60;
        let (mut c, _s) = sim::connect(cc, ServerConfig::default(), Accept::default());
        let opts = SubscriptionOptions::qos(QoS::AtLeastOnce);
        c.subscribe(now, &[("a", opts)], None).unwrap();
        c.subscribe(now, &[("b", opts)], None).unwrap();
        // One SUBSCRIBE goes out, then the connection drops before any SUBACK.
        let mut out = [0u8; 256];
        c.poll_transmit(now, &mut out).unwrap().unwrap();
        c.handle_close(now);
        c.connect(now).unwrap();
        sim::drain_client(&mut c, now);
        let connack = mqtt_codec::Packet::ConnAck(mqtt_codec::ConnAck::new(
            true,
            mqtt_codec::ReasonCode::Success,
        ));
        let mut input = BytesMut::from(&connack.encode_to_vec(version).unwrap()[..]);
        c.handle_input(now, &mut input).unwrap();
        while let Some(e) = c.poll_event() {
            assert!(!matches!(e, Event::SessionLost { .. }));
        }
        assert_eq!(c.session().pending_acks, Vec::<u16>::new());
        assert_eq!(
            sim::drain_client(&mut c, now).len(),
            0,
            "nothing stale re-sent"
        );
    }
}

/// A message carrying 5.0 properties (a broker forwarding a 5.0 publisher's message, or an
/// application setting them) goes to a 3.1/3.1.1 peer without them: before 5.0 a PUBLISH
/// has no properties (MQTT 3.1.1 §3.3.2), and refusing to encode it left the message stuck
/// at the head of the queue, failing every `poll_transmit`.
#[test]
fn properties_are_dropped_for_a_3_1_1_peer() {
    use mqtt_codec::{decode, DecodeOptions, QoS, Status};
    use mqtt_state::{Accept, Event, Message, ServerConfig, ServerSession};
    let now = Instant::ZERO;
    let v = ProtocolVersion::V3_1_1;
    let connect = Packet::Connect(mqtt_codec::Connect::new(v, "c"))
        .encode_to_vec(v)
        .unwrap();
    let mut server = ServerSession::new(ServerConfig::default(), now);
    server
        .handle_input(now, &mut BytesMut::from(&connect[..]))
        .unwrap();
    assert!(matches!(
        server.poll_event(),
        Some(Event::ConnectRequest(_))
    ));
    server.accept(now, Accept::default()).unwrap();
    let mut m = Message::new(TopicBuf::from_static("t").unwrap(), "x", QoS::AtLeastOnce);
    m.properties_mut().content_type = Some("text/plain".into());
    m.properties_mut()
        .set_user_properties(&[("k", "v")])
        .unwrap();
    server.deliver(now, m, &[]).unwrap();
    let mut out = [0u8; 256];
    let _connack = server.poll_transmit(now, &mut out).unwrap().unwrap();
    let n = server.poll_transmit(now, &mut out).unwrap().unwrap();
    let Ok(Status::Complete {
        packet: Packet::Publish(p),
        ..
    }) = decode(&out[..n], &DecodeOptions::new(v))
    else {
        panic!("not a PUBLISH: {:02x?}", &out[..n]);
    };
    assert_eq!((p.topic.as_str(), p.payload), ("t", &b"x"[..]));
    assert_eq!(server.poll_transmit(now, &mut out), Ok(None));
}
