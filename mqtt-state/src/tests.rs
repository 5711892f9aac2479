//! A client and a server machine wired back to back, and the rules they must keep.

use alloc::vec;
use alloc::vec::Vec;

use bytes::BytesMut;
use mqtt_codec::{
    decode, DecodeOptions, Packet, PacketType, ProtocolVersion, QoS, ReasonCode, Status,
    SubscriptionId, SubscriptionOptions, Topic,
};

use crate::*;

const V4: ProtocolVersion = ProtocolVersion::V3_1_1;
const V5: ProtocolVersion = ProtocolVersion::V5;

struct Pair {
    client: Client,
    server: ServerSession,
    server_config: ServerConfig,
    now: Instant,
    /// Bytes in flight each way.
    c2s: BytesMut,
    s2c: BytesMut,
    /// Every packet type each side sent, in order.
    client_sent: Vec<PacketType>,
    server_sent: Vec<PacketType>,
    /// Every packet each side sent, as bytes.
    client_frames: Vec<Vec<u8>>,
    server_frames: Vec<Vec<u8>>,
    client_events: Vec<Event>,
    server_events: Vec<Event>,
    /// What the server application does with a CONNECT.
    session_for_server: Option<SessionState>,
    session_present: bool,
    auto_accept: bool,
    version: ProtocolVersion,
}

/// Everything a machine has to send now, a frame per packet; `poll` is its
/// `poll_transmit` at some instant.
fn frames(mut poll: impl FnMut(&mut [u8]) -> Result<Option<usize>, Error>) -> Vec<Vec<u8>> {
    let mut out = vec![0u8; 64 * 1024];
    let mut sent = Vec::new();
    while let Ok(Some(n)) = poll(&mut out) {
        sent.push(out[..n].to_vec());
    }
    sent
}

fn types(bytes: &[u8], v: ProtocolVersion) -> Vec<PacketType> {
    let mut out = Vec::new();
    let mut rest = bytes;
    let mut v = v;
    while let Ok(Status::Complete { packet, consumed }) = decode(rest, &DecodeOptions::new(v)) {
        if let Packet::Connect(c) = &packet {
            v = c.protocol;
        }
        out.push(packet.packet_type());
        rest = &rest[consumed..];
    }
    out
}

impl Pair {
    fn new(client: ClientConfig, server: ServerConfig) -> Self {
        let version = client.version;
        let mut p = Self {
            client: Client::new(client),
            server: ServerSession::new(server.clone(), Instant::ZERO),
            server_config: server,
            now: Instant::ZERO,
            c2s: BytesMut::new(),
            s2c: BytesMut::new(),
            client_sent: Vec::new(),
            server_sent: Vec::new(),
            client_frames: Vec::new(),
            server_frames: Vec::new(),
            client_events: Vec::new(),
            server_events: Vec::new(),
            session_for_server: None,
            session_present: false,
            auto_accept: true,
            version,
        };
        p.client.connect(p.now).unwrap();
        p
    }

    fn v(version: ProtocolVersion) -> Self {
        Self::new(ClientConfig::new(version, "c1"), ServerConfig::default())
    }

    /// Moves bytes both ways until neither side has anything to say.
    fn drive(&mut self) {
        let mut out = vec![0u8; 1 << 16];
        for _ in 0..1000 {
            let mut progress = false;
            while let Ok(Some(n)) = self.client.poll_transmit(self.now, &mut out) {
                self.client_sent.extend(types(&out[..n], self.version));
                self.client_frames.push(out[..n].to_vec());
                self.c2s.extend_from_slice(&out[..n]);
                progress = true;
            }
            let _ = self.server.handle_input(self.now, &mut self.c2s);
            while let Some(e) = self.server.poll_event() {
                progress = true;
                self.on_server_event(&e);
                self.server_events.push(e);
            }
            let _ = self.server.handle_input(self.now, &mut self.c2s);
            while let Ok(Some(n)) = self.server.poll_transmit(self.now, &mut out) {
                self.server_sent.extend(types(&out[..n], self.version));
                self.server_frames.push(out[..n].to_vec());
                self.s2c.extend_from_slice(&out[..n]);
                progress = true;
            }
            let _ = self.client.handle_input(self.now, &mut self.s2c);
            while let Some(e) = self.client.poll_event() {
                self.client_events.push(e);
                progress = true;
            }
            if !progress {
                return;
            }
        }
        panic!("no quiescence");
    }

    fn on_server_event(&mut self, e: &Event) {
        match e {
            Event::ConnectRequest(_) if self.auto_accept => {
                let session = self.session_for_server.take().unwrap_or_default();
                let accept = Accept {
                    session,
                    session_present: self.session_present,
                    ..Accept::default()
                };
                self.server.accept(self.now, accept).unwrap();
            }
            Event::SubscribeRequest {
                packet_id, filters, ..
            } => {
                let codes = filters
                    .iter()
                    .map(|(_, o)| match o.qos {
                        QoS::AtMostOnce => ReasonCode::Success,
                        QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                        QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
                    })
                    .collect();
                self.server.suback(self.now, *packet_id, codes).unwrap();
            }
            Event::UnsubscribeRequest { packet_id, filters } => {
                self.server
                    .unsuback(
                        self.now,
                        *packet_id,
                        vec![ReasonCode::Success; filters.len()],
                    )
                    .unwrap();
            }
            _ => {}
        }
    }

    fn advance(&mut self, ms: u64) {
        self.now = self.now + Duration::from_millis(ms);
        self.client.handle_timeout(self.now);
        self.server.handle_timeout(self.now);
        self.drive();
    }

    /// Cuts the transport and reconnects with the same sessions on both sides.
    fn reconnect(&mut self, session_present: bool) {
        self.client.handle_close(self.now);
        self.server.handle_close(self.now);
        let server = core::mem::replace(
            &mut self.server,
            ServerSession::new(self.server_config.clone(), self.now),
        );
        self.session_for_server = Some(server.into_session());
        self.session_present = session_present;
        self.c2s.clear();
        self.s2c.clear();
        self.client_sent.clear();
        self.server_sent.clear();
        self.client.connect(self.now).unwrap();
        self.drive();
    }

    fn server_messages(&self) -> Vec<(Vec<u8>, QoS, bool)> {
        self.server_events
            .iter()
            .filter_map(|e| match e {
                Event::Message { message, dup, .. } => {
                    Some((message.payload.to_vec(), message.qos, *dup))
                }
                _ => None,
            })
            .collect()
    }

    fn client_messages(&self) -> Vec<Vec<u8>> {
        self.client_events
            .iter()
            .filter_map(|e| match e {
                Event::Message { message, .. } => Some(message.payload.to_vec()),
                _ => None,
            })
            .collect()
    }

    fn acked(&self) -> usize {
        self.client_events
            .iter()
            .filter(|e| matches!(e, Event::Acknowledged { .. }))
            .count()
    }
}

/// A client that asks the server to keep its session.
fn keeping_session(v: ProtocolVersion) -> ClientConfig {
    ClientConfig {
        clean_start: false,
        ..ClientConfig::new(v, "c1")
    }
}

fn msg(topic: &'static str, payload: &'static str, qos: QoS) -> Message {
    Message::new(TopicBuf::from_static(topic).unwrap(), payload, qos)
}

#[test]
fn mqtt_3_1_0_1_connect_comes_first_and_connack_answers() {
    for v in [ProtocolVersion::V3_1, V4, V5] {
        let mut p = Pair::v(v);
        p.drive();
        assert_eq!(p.client_sent, [PacketType::Connect], "{v:?}");
        // [MQTT-3.2.0-1] [MQTT-3.2.0-2] one CONNACK, first.
        assert_eq!(p.server_sent, [PacketType::ConnAck], "{v:?}");
        assert!(p.client.is_connected());
        assert!(matches!(
            p.client_events[0],
            Event::Connected(ConnAckInfo {
                session_present: false,
                ..
            })
        ));
        let Event::ConnectRequest(req) = &p.server_events[0] else {
            panic!()
        };
        assert_eq!((req.protocol, req.client_id.as_str()), (v, "c1"));
    }
}

/// `ClientConfig::bridge` sets mosquitto's bridge bit in the level at 3.1 / 3.1.1 and the
/// server reports it on the ConnectRequest; at 5.0 it is ignored (no such bit there).
#[test]
fn bridge_flag_travels_from_client_config_to_connect_request() {
    for (v, level, expected) in [
        (ProtocolVersion::V3_1, 0x83, true),
        (V4, 0x84, true),
        (V5, 0x05, false),
    ] {
        let config = ClientConfig {
            bridge: true,
            ..ClientConfig::new(v, "c1")
        };
        let mut p = Pair::new(config, ServerConfig::default());
        p.drive();
        assert!(p.client.is_connected(), "{v:?}");
        // The level byte follows the protocol name's length and bytes.
        let frame = &p.client_frames[0];
        let name_len = usize::from(frame[3]);
        assert_eq!(frame[4 + name_len], level, "{v:?}");
        let Event::ConnectRequest(req) = &p.server_events[0] else {
            panic!()
        };
        assert_eq!((req.protocol, req.bridge), (v, expected));
    }
    let mut p = Pair::v(V4);
    p.drive();
    let Event::ConnectRequest(req) = &p.server_events[0] else {
        panic!()
    };
    assert!(!req.bridge);
}

#[test]
fn qos_0_1_2_from_client_to_server() {
    for v in [V4, V5] {
        let mut p = Pair::v(v);
        p.drive();
        p.client
            .publish(p.now, msg("a/b", "zero", QoS::AtMostOnce))
            .unwrap();
        let id1 = p
            .client
            .publish(p.now, msg("a/b", "one", QoS::AtLeastOnce))
            .unwrap()
            .unwrap();
        let id2 = p
            .client
            .publish(p.now, msg("a/b", "two", QoS::ExactlyOnce))
            .unwrap()
            .unwrap();
        // [MQTT-2.2.1-3] (5.0) / [MQTT-2.3.1-2] (3.1.1) distinct identifiers.
        assert_ne!(id1, id2);
        p.drive();
        let got = p.server_messages();
        assert_eq!(
            got.iter()
                .map(|(b, q, _)| (b.as_slice(), *q))
                .collect::<Vec<_>>(),
            [
                (&b"zero"[..], QoS::AtMostOnce),
                (b"one", QoS::AtLeastOnce),
                (b"two", QoS::ExactlyOnce)
            ]
        );
        // [MQTT-4.3.2-4] PUBACK; [MQTT-4.3.3-8] PUBREC, [MQTT-4.3.3-11] PUBCOMP.
        assert_eq!(
            p.server_sent[1..],
            [PacketType::PubAck, PacketType::PubRec, PacketType::PubComp]
        );
        assert_eq!(p.client_sent[4..], [PacketType::PubRel]);
        assert_eq!(p.acked(), 2);
        assert!(p.client.session().is_empty());
    }
}

#[test]
fn qos_1_2_from_server_to_client() {
    let mut p = Pair::v(V5);
    p.drive();
    p.server
        .deliver(p.now, msg("x", "1", QoS::AtLeastOnce), &[])
        .unwrap();
    p.server
        .deliver(p.now, msg("x", "2", QoS::ExactlyOnce), &[])
        .unwrap();
    p.drive();
    assert_eq!(p.client_messages(), [b"1".to_vec(), b"2".to_vec()]);
    assert_eq!(
        p.client_sent[1..],
        [PacketType::PubAck, PacketType::PubRec, PacketType::PubComp]
    );
    assert!(p.server.session().is_empty());
}

#[test]
fn mqtt_4_3_3_10_qos_2_duplicate_is_not_delivered_twice() {
    let mut p = Pair::new(
        ClientConfig {
            clean_start: false,
            session_expiry_interval: 60,
            ..ClientConfig::new(V5, "c1")
        },
        ServerConfig::default(),
    );
    p.drive();
    p.client
        .publish(p.now, msg("a", "once", QoS::ExactlyOnce))
        .unwrap();
    // The PUBLISH reaches the server, but its PUBREC is lost with the connection.
    let mut out = vec![0u8; 1024];
    let n = p.client.poll_transmit(p.now, &mut out).unwrap().unwrap();
    p.c2s.extend_from_slice(&out[..n]);
    p.server.handle_input(p.now, &mut p.c2s).unwrap();
    while let Some(e) = p.server.poll_event() {
        p.server_events.push(e);
    }
    assert_eq!(p.server_messages().len(), 1);
    p.reconnect(true);
    // [MQTT-4.4.0-1] [MQTT-3.3.1-1] the client re-sends with DUP; the server answers PUBREC
    // but does not deliver again.
    assert_eq!(
        p.client_sent[..2],
        [PacketType::Connect, PacketType::Publish]
    );
    let got = p.server_messages();
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(p.acked(), 1);
    assert!(p.client.session().is_empty() && p.server.session().is_empty());
}

#[test]
fn mqtt_4_6_0_1_resend_in_original_order_with_dup() {
    let mut p = Pair::new(
        ClientConfig {
            clean_start: false,
            session_expiry_interval: 60,
            ..ClientConfig::new(V4, "c1")
        },
        ServerConfig::default(),
    );
    p.drive();
    for payload in ["a", "b", "c"] {
        p.client
            .publish(
                p.now,
                Message::new(
                    TopicBuf::from_static("t").unwrap(),
                    payload,
                    QoS::AtLeastOnce,
                ),
            )
            .unwrap();
    }
    // Sent but never acknowledged: the connection drops first.
    let mut out = vec![0u8; 1024];
    while let Ok(Some(_)) = p.client.poll_transmit(p.now, &mut out) {}
    p.reconnect(true);
    let got = p.server_messages();
    assert_eq!(
        got,
        [
            (b"a".to_vec(), QoS::AtLeastOnce, true),
            (b"b".to_vec(), QoS::AtLeastOnce, true),
            (b"c".to_vec(), QoS::AtLeastOnce, true)
        ]
    );
    assert_eq!(p.acked(), 3);
}

#[test]
fn mqtt_3_2_2_5_session_not_present_reports_what_is_lost() {
    let mut p = Pair::new(keeping_session(V5), ServerConfig::default());
    p.drive();
    p.client
        .publish(p.now, msg("t", "lost", QoS::AtLeastOnce))
        .unwrap();
    let mut out = vec![0u8; 1024];
    while let Ok(Some(_)) = p.client.poll_transmit(p.now, &mut out) {}
    p.reconnect(false);
    let lost: Vec<_> = p
        .client_events
        .iter()
        .filter_map(|e| match e {
            Event::SessionLost { messages } => Some(messages.len()),
            _ => None,
        })
        .collect();
    assert_eq!(lost, [1]);
    assert!(p.server_messages().is_empty());
    assert!(p.client.session().is_empty());
}

#[test]
fn mqtt_4_9_0_2_send_quota_is_the_servers_receive_maximum() {
    // [MQTT-3.3.4-7] [MQTT-4.9.0-1] the client's quota starts at the server's Receive
    // Maximum (non-zero by the codec's rules) and never goes beyond it.
    let mut p = Pair::new(
        ClientConfig::new(V5, "c1"),
        ServerConfig {
            receive_maximum: 2,
            ..ServerConfig::default()
        },
    );
    p.drive();
    for _ in 0..5 {
        p.client
            .publish(p.now, msg("t", "x", QoS::AtLeastOnce))
            .unwrap();
    }
    // Without the server answering, only two go out.
    let mut out = vec![0u8; 1024];
    let mut sent = 0;
    while let Ok(Some(_)) = p.client.poll_transmit(p.now, &mut out) {
        sent += 1;
    }
    assert_eq!(sent, 2);
    // [MQTT-3.3.4-8] [MQTT-4.9.0-3] other packets still go out at zero quota.
    p.client
        .subscribe(p.now, &[("s", SubscriptionOptions::default())], None)
        .unwrap();
    assert!(p.client.poll_transmit(p.now, &mut out).unwrap().is_some());
}

/// A 5.0 server session past CONNACK with `config`; the CONNACK is drained.
fn connected_server(config: ServerConfig) -> ServerSession {
    let mut server = ServerSession::new(config, Instant::ZERO);
    let mut input = BytesMut::new();
    input.extend_from_slice(
        &Packet::Connect(mqtt_codec::Connect::new(V5, "c"))
            .encode_to_vec(V5)
            .unwrap(),
    );
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    server.accept(Instant::ZERO, Accept::default()).unwrap();
    assert_eq!(
        frames(|out| server.poll_transmit(Instant::ZERO, out)).len(),
        1
    );
    while server.poll_event().is_some() {}
    server
}

/// `n` QoS `qos` PUBLISH with ids `first..first + n`, back to back.
fn publishes(first: u16, n: u16, qos: QoS) -> BytesMut {
    let mut input = BytesMut::new();
    for id in first..first + n {
        let id = mqtt_codec::PacketId::new(id).unwrap();
        let qos_pid = match qos {
            QoS::AtMostOnce => mqtt_codec::QosPid::AtMostOnce,
            QoS::AtLeastOnce => mqtt_codec::QosPid::AtLeastOnce(id),
            QoS::ExactlyOnce => mqtt_codec::QosPid::ExactlyOnce(id),
        };
        let publish = mqtt_codec::Publish::new(Topic::new("t").unwrap(), b"x", qos_pid);
        input.extend_from_slice(&Packet::Publish(publish).encode_to_vec(V5).unwrap());
    }
    input
}

/// The messages the server reported, draining its events.
fn server_messages(server: &mut ServerSession) -> usize {
    let mut n = 0;
    while let Some(e) = server.poll_event() {
        n += usize::from(matches!(e, Event::Message { .. }));
    }
    n
}

/// Each packet the server sends: (type, packet id, reason code) of acknowledgements.
fn server_acks(server: &mut ServerSession) -> Vec<(PacketType, u16, ReasonCode)> {
    frames(|out| server.poll_transmit(Instant::ZERO, out))
        .iter()
        .filter_map(|f| match decode(f, &DecodeOptions::new(V5)) {
            Ok(Status::Complete {
                packet: Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubComp(a),
                ..
            }) => {
                let t = types(f, V5)[0];
                Some((t, a.packet_id.get(), a.reason_code))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn mqtt_4_9_0_1_the_receive_quota_starts_again_with_each_connection() {
    // A QoS 2 identifier held from the last connection (PUBLISH received, the server never
    // saw PUBREC) takes none of the new connection's quota: the server may send
    // Receive Maximum new PUBLISH packets on it before repeating the old one.
    let v = ProtocolVersion::V5;
    let now = Instant::ZERO;
    let config = ClientConfig {
        clean_start: false,
        session_expiry_interval: 60,
        receive_maximum: 1,
        strict_receive_maximum: true,
        ..ClientConfig::new(v, "c")
    };
    let mut client = Client::new(config);
    let mut out = vec![0u8; 256];
    let connack = |present| {
        let c = mqtt_codec::ConnAck::new(present, ReasonCode::Success);
        BytesMut::from(&Packet::ConnAck(c).encode_to_vec(v).unwrap()[..])
    };
    client.connect(now).unwrap();
    while let Ok(Some(_)) = client.poll_transmit(now, &mut out) {}
    client.handle_input(now, &mut connack(false)).unwrap();
    let mut input = BytesMut::from(&publish_bytes(v, 5, QoS::ExactlyOnce, false)[..]);
    client.handle_input(now, &mut input).unwrap();
    // The connection drops before the PUBREC goes.
    client.handle_close(now);
    client.connect(now).unwrap();
    while let Ok(Some(_)) = client.poll_transmit(now, &mut out) {}
    client.handle_input(now, &mut connack(true)).unwrap();
    let mut input = BytesMut::from(&publish_bytes(v, 6, QoS::AtLeastOnce, false)[..]);
    client.handle_input(now, &mut input).unwrap();
    // Repeated on this connection, the old one counts again: acknowledged first, the
    // QoS 1 message leaves room for it.
    while let Ok(Some(_)) = client.poll_transmit(now, &mut out) {}
    let mut input = BytesMut::from(&publish_bytes(v, 5, QoS::ExactlyOnce, true)[..]);
    client.handle_input(now, &mut input).unwrap();
    let mut input = BytesMut::from(&publish_bytes(v, 7, QoS::AtLeastOnce, false)[..]);
    assert!(
        client.handle_input(now, &mut input).is_err(),
        "beyond the quota"
    );
}

#[test]
fn a_client_takes_messages_beyond_its_receive_maximum_unless_strict() {
    // mosquitto 2.0.11 sends a resumed session's queue past the client's Receive Maximum.
    // A strict client disconnects (0x93) and gets the same messages again at each
    // reconnect; by default the client takes them, QoS 2 included, as any other.
    for strict in [false, true] {
        let v = ProtocolVersion::V5;
        let now = Instant::ZERO;
        let config = ClientConfig {
            receive_maximum: 1,
            manual_acks: true,
            strict_receive_maximum: strict,
            ..ClientConfig::new(v, "c")
        };
        let mut client = Client::new(config);
        let mut out = vec![0u8; 256];
        client.connect(now).unwrap();
        while let Ok(Some(_)) = client.poll_transmit(now, &mut out) {}
        let c = mqtt_codec::ConnAck::new(false, ReasonCode::Success);
        let mut input = BytesMut::from(&Packet::ConnAck(c).encode_to_vec(v).unwrap()[..]);
        client.handle_input(now, &mut input).unwrap();
        let mut input = BytesMut::from(&publish_bytes(v, 1, QoS::AtLeastOnce, false)[..]);
        client.handle_input(now, &mut input).unwrap();
        let mut input = BytesMut::from(&publish_bytes(v, 2, QoS::ExactlyOnce, false)[..]);
        let r = client.handle_input(now, &mut input);
        assert_eq!(r.is_err(), strict, "strict: {strict}");
        let delivered = core::iter::from_fn(|| client.poll_event())
            .filter(|e| matches!(e, Event::Message { .. }))
            .count();
        assert_eq!(delivered, if strict { 1 } else { 2 });
    }
}

#[test]
fn a_pubcomp_identifier_not_found_after_pubrec_is_a_delivery() {
    // The broker restarted between PUBREC and PUBREL: it has forgotten the identifier
    // (the message was routed at PUBREC) and answers PUBCOMP 0x92. PUBREC Success was the
    // promise; the publish succeeded.
    let (mut client, mut input, mut out) = connected_client(ProtocolVersion::V5);
    let id = client
        .publish(Instant::ZERO, msg("t", "x", QoS::ExactlyOnce))
        .unwrap()
        .unwrap();
    while let Ok(Some(_)) = client.poll_transmit(Instant::ZERO, &mut out) {}
    input.extend_from_slice(&ack_frame(0x50, id));
    client.handle_input(Instant::ZERO, &mut input).unwrap();
    while let Ok(Some(_)) = client.poll_transmit(Instant::ZERO, &mut out) {}
    let pubcomp = Packet::PubComp(mqtt_codec::PubAck {
        packet_id: id,
        reason_code: ReasonCode::PacketIdentifierNotFound,
        properties: Default::default(),
    });
    input.extend_from_slice(&pubcomp.encode_to_vec(ProtocolVersion::V5).unwrap());
    client.handle_input(Instant::ZERO, &mut input).unwrap();
    let acks: Vec<ReasonCode> = core::iter::from_fn(|| client.poll_event())
        .filter_map(|e| match e {
            Event::Acknowledged { reason, .. } => Some(reason),
            _ => None,
        })
        .collect();
    assert_eq!(acks, [ReasonCode::Success]);
}

#[test]
fn mqtt_3_3_4_9_receive_maximum_exceeded_strict_is_a_protocol_error() {
    // [MQTT-3.3.4-9] strictly: a peer that ignores our Receive Maximum of 1 sends a second
    // QoS 1 PUBLISH before it can have seen the PUBACK of the first (queued, not yet sent).
    let mut server = connected_server(ServerConfig {
        receive_maximum: 1,
        strict_receive_maximum: true,
        ..ServerConfig::default()
    });
    let mut input = publishes(1, 2, QoS::AtLeastOnce);
    let e = server.handle_input(Instant::ZERO, &mut input).unwrap_err();
    assert_eq!(e, Error::Protocol(Violation::ReceiveMaximumExceeded));
    let mut out = vec![0u8; 256];
    let sent = frames(|out| server.poll_transmit(Instant::ZERO, out));
    // DISCONNECT 0x93 (Receive Maximum exceeded).
    let last = sent.last().unwrap();
    assert_eq!(last[..3], [0xE0, 0x01, 0x93]);
    assert_eq!(server.poll_transmit(Instant::ZERO, &mut out), Err(e));
}

#[test]
fn mqtt_3_3_4_9_strict_qos2_beyond_the_quota_is_a_protocol_error() {
    // [MQTT-3.3.4-9] a QoS 2 message counts until PUBCOMP: a second one before the first's
    // PUBREL is beyond a Receive Maximum of 1 whatever was sent.
    let mut server = connected_server(ServerConfig {
        receive_maximum: 1,
        strict_receive_maximum: true,
        ..ServerConfig::default()
    });
    let mut input = publishes(1, 1, QoS::ExactlyOnce);
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    assert_eq!(
        server_acks(&mut server),
        [(PacketType::PubRec, 1, ReasonCode::Success)]
    );
    let mut input = publishes(2, 1, QoS::ExactlyOnce);
    let e = server.handle_input(Instant::ZERO, &mut input).unwrap_err();
    assert_eq!(e, Error::Protocol(Violation::ReceiveMaximumExceeded));
}

#[test]
fn mqtt_3_3_4_9_qos1_burst_beyond_the_quota_is_acknowledged() {
    // MQTT.js 5 ignores a Receive Maximum of 64 and sends 200 QoS 1 PUBLISH at once. The
    // acknowledgements of one read are queued before the next PUBLISH counts, and what is
    // beyond the quota is accepted, as mosquitto does: every message is delivered and
    // acknowledged in order ([MQTT-4.6.0-2]), and the connection stays.
    let mut server = connected_server(ServerConfig::default());
    let mut input = publishes(1, 200, QoS::AtLeastOnce);
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    assert!(input.is_empty());
    assert_eq!(server_messages(&mut server), 200);
    let acks = server_acks(&mut server);
    let expected: Vec<_> = (1..=200)
        .map(|id| (PacketType::PubAck, id, ReasonCode::Success))
        .collect();
    assert_eq!(acks, expected);
    assert!(!server.is_closed());
}

#[test]
fn mqtt_3_3_4_9_qos2_beyond_the_quota_gets_pubrec_quota_exceeded() {
    // [MQTT-3.3.4-9] a Receive Maximum of 2 and four QoS 2 PUBLISH at once: two are taken
    // (PUBREC 0x00, held until PUBREL), the others answered PUBREC 0x97 (Quota exceeded)
    // and neither stored nor delivered ([MQTT-4.3.3-9]: the exchange ends there).
    let mut server = connected_server(ServerConfig {
        receive_maximum: 2,
        ..ServerConfig::default()
    });
    let mut input = publishes(1, 4, QoS::ExactlyOnce);
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    assert_eq!(server_messages(&mut server), 2);
    assert_eq!(
        server_acks(&mut server),
        [
            (PacketType::PubRec, 1, ReasonCode::Success),
            (PacketType::PubRec, 2, ReasonCode::Success),
            (PacketType::PubRec, 3, ReasonCode::QuotaExceeded),
            (PacketType::PubRec, 4, ReasonCode::QuotaExceeded),
        ]
    );
    assert_eq!(server.session().incoming_qos2, [1, 2]);
    // PUBREL 1 frees a unit of the quota: id 3 sent again is a new message, taken.
    let mut input = BytesMut::new();
    input.extend_from_slice(
        &Packet::PubRel(mqtt_codec::PubAck::new(
            mqtt_codec::PacketId::new(1).unwrap(),
        ))
        .encode_to_vec(V5)
        .unwrap(),
    );
    input.extend_from_slice(&publishes(3, 1, QoS::ExactlyOnce));
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    assert_eq!(server_messages(&mut server), 1);
    assert_eq!(
        server_acks(&mut server),
        [
            (PacketType::PubComp, 1, ReasonCode::Success),
            (PacketType::PubRec, 3, ReasonCode::Success),
        ]
    );
}

#[test]
fn mqtt_3_3_4_9_manual_acks_pace_a_burst_at_the_quota() {
    // With manual acks, reading stops before a QoS 1 PUBLISH beyond the Receive Maximum
    // while the application has not acknowledged the quota: the rest stays in the buffer
    // until it does, so a client that ignores the quota is paced, not refused.
    let config = ServerConfig {
        receive_maximum: 2,
        manual_acks: true,
        ..ServerConfig::default()
    };
    let mut server = connected_server(config.clone());
    let mut input = publishes(1, 5, QoS::AtLeastOnce);
    let one = input.len() / 5;
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    assert_eq!(server_messages(&mut server), 2);
    assert_eq!(input.len(), 3 * one);
    // Called again without acknowledging: stopping would make no progress, so the next
    // PUBLISH is read all the same, accepted beyond the quota (QoS 1), and reading stops
    // again behind it.
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    assert_eq!(server_messages(&mut server), 1);
    assert_eq!(input.len(), 2 * one);
    assert!(server_acks(&mut server).is_empty());
    for id in 1..=3 {
        assert!(server.ack(
            Instant::ZERO,
            mqtt_codec::PacketId::new(id).unwrap(),
            ReasonCode::Success
        ));
    }
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    assert_eq!(server_messages(&mut server), 2);
    assert!(input.is_empty());
    for id in 4..=5 {
        assert!(server.ack(
            Instant::ZERO,
            mqtt_codec::PacketId::new(id).unwrap(),
            ReasonCode::Success
        ));
    }
    let acks: Vec<_> = server_acks(&mut server).iter().map(|a| a.1).collect();
    assert_eq!(acks, [1, 2, 3, 4, 5]);

    // Strictly, the PUBLISH read without acknowledging is a Protocol Error.
    let mut server = connected_server(ServerConfig {
        strict_receive_maximum: true,
        ..config
    });
    let mut input = publishes(1, 3, QoS::AtLeastOnce);
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    assert_eq!(server_messages(&mut server), 2);
    let e = server.handle_input(Instant::ZERO, &mut input).unwrap_err();
    assert_eq!(e, Error::Protocol(Violation::ReceiveMaximumExceeded));
}

#[test]
fn mqtt_4_6_0_2_manual_acks_leave_in_arrival_order() {
    let mut p = Pair::new(
        ClientConfig {
            manual_acks: true,
            ..ClientConfig::new(V4, "c1")
        },
        ServerConfig::default(),
    );
    p.drive();
    let ids: Vec<_> = ["1", "2", "3"]
        .iter()
        .map(|b| {
            p.server
                .deliver(
                    p.now,
                    Message::new(TopicBuf::from_static("t").unwrap(), *b, QoS::AtLeastOnce),
                    &[],
                )
                .unwrap()
                .unwrap()
        })
        .collect();
    p.drive();
    assert_eq!(p.client_messages().len(), 3);
    let acks_sent = |p: &Pair| {
        p.client_sent
            .iter()
            .filter(|t| **t == PacketType::PubAck)
            .count()
    };
    assert_eq!(acks_sent(&p), 0);
    // The application acknowledges the third first: nothing may leave before the first.
    assert!(p.client.ack(p.now, ids[2]));
    p.drive();
    assert_eq!(acks_sent(&p), 0);
    assert!(p.client.ack(p.now, ids[0]));
    p.drive();
    assert_eq!(acks_sent(&p), 1);
    assert!(p.client.ack(p.now, ids[1]));
    p.drive();
    assert_eq!(acks_sent(&p), 3);
    assert!(p.server.session().is_empty());
}

#[test]
fn mqtt_3_1_2_20_client_pings_when_idle_and_times_out() {
    let mut p = Pair::new(
        ClientConfig {
            keep_alive: 10,
            ..ClientConfig::new(V4, "c1")
        },
        ServerConfig::default(),
    );
    p.drive();
    assert_eq!(p.client.poll_timeout(), Some(Instant::from_millis(10_000)));
    p.advance(9_999);
    assert!(!p.client_sent.contains(&PacketType::PingReq));
    p.advance(1);
    assert!(p.client_sent.contains(&PacketType::PingReq));
    // [MQTT-3.12.4-1] the server answers.
    assert!(p.server_sent.contains(&PacketType::PingResp));
    assert!(p.client.is_connected());
    // Now a server that stops answering: the PINGRESP deadline passes.
    p.server = ServerSession::new(ServerConfig::default(), p.now);
    p.auto_accept = false;
    p.advance(10_000);
    p.advance(10_000);
    assert!(!p.client.is_connected());
    assert!(p.client_events.iter().any(|e| matches!(
        e,
        Event::Disconnected {
            reason: ReasonCode::KeepAliveTimeout,
            ..
        }
    )));
}

#[test]
fn an_idle_server_connection_gives_back_its_queues_and_keeps_its_id_sequence() {
    let mut p = Pair::new(
        ClientConfig {
            keep_alive: 10,
            ..ClientConfig::new(V5, "c1")
        },
        ServerConfig::default(),
    );
    p.drive();
    let first = p
        .server
        .deliver(p.now, msg("x", "1", QoS::AtLeastOnce), &[])
        .unwrap();
    p.drive();
    // The client pings after a quiet keep alive period; the server then drops what the
    // delivery grew, its packet identifiers included.
    p.advance(10_000);
    assert!(p.server_sent.contains(&PacketType::PingResp));
    let second = p
        .server
        .deliver(p.now, msg("x", "2", QoS::AtLeastOnce), &[])
        .unwrap();
    p.drive();
    assert_eq!(p.client_messages(), [b"1".to_vec(), b"2".to_vec()]);
    // Identifiers continue where they were, as if nothing had been dropped.
    assert_eq!(first.map(|id| id.get() + 1), second.map(|id| id.get()));
    assert!(p.server.session().is_empty());
}

#[test]
fn mqtt_3_1_2_21_server_keep_alive_wins() {
    let mut p = Pair::new(
        ClientConfig {
            keep_alive: 100,
            ..ClientConfig::new(V5, "c1")
        },
        ServerConfig {
            server_keep_alive: Some(5),
            ..ServerConfig::default()
        },
    );
    p.drive();
    let Event::Connected(info) = &p.client_events[0] else {
        panic!()
    };
    assert_eq!(info.keep_alive, Duration::from_secs(5));
    assert_eq!(p.client.poll_timeout(), Some(Instant::from_millis(5_000)));
}

/// The CONNACK a server with `config` sends when it accepts a `version` CONNECT asking
/// for `keep_alive`, and the server itself.
fn connack_for_keep_alive(
    config: ServerConfig,
    version: ProtocolVersion,
    keep_alive: u16,
) -> (Vec<u8>, ServerSession) {
    let mut server = ServerSession::new(config, Instant::ZERO);
    let mut c = mqtt_codec::Connect::new(version, "c");
    c.keep_alive = keep_alive;
    let mut input = BytesMut::from(&Packet::Connect(c).encode_to_vec(version).unwrap()[..]);
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    server.accept(Instant::ZERO, Accept::default()).unwrap();
    let sent = frames(|out| server.poll_transmit(Instant::ZERO, out));
    (sent.into_iter().next().expect("CONNACK"), server)
}

fn server_keep_alive_of(connack: &[u8]) -> Option<u16> {
    match decode(connack, &DecodeOptions::new(V5)) {
        Ok(Status::Complete {
            packet: Packet::ConnAck(a),
            ..
        }) => a.properties.server_keep_alive,
        other => panic!("{other:?}"),
    }
}

#[test]
fn mqtt_3_2_2_21_a_keep_alive_beyond_the_maximum_is_cut_and_announced() {
    let max = ServerConfig {
        max_keep_alive: Some(60),
        ..ServerConfig::default()
    };
    // [MQTT-3.2.2-21] asking for more, or for none (0), gets Server Keep Alive 60, and the
    // server holds the client to it: closed after 1.5 x 60 s of silence, not 1.5 x 100 s.
    for asked in [100, 0] {
        let (connack, mut server) = connack_for_keep_alive(max.clone(), V5, asked);
        assert_eq!(server_keep_alive_of(&connack), Some(60), "asked {asked}");
        assert_eq!(server.poll_timeout(), Some(Instant::from_millis(90_000)));
        server.handle_timeout(Instant::from_millis(89_999));
        assert!(!server.is_closed());
        server.handle_timeout(Instant::from_millis(90_000));
        let sent = frames(|out| server.poll_transmit(Instant::from_millis(90_000), out));
        // DISCONNECT 0x8D (Keep Alive timeout).
        assert_eq!(sent, [vec![0xE0, 0x01, 0x8D]]);
    }
    // [MQTT-3.2.2-22] within the maximum: no Server Keep Alive, the client's value holds.
    for asked in [30, 60] {
        let (connack, server) = connack_for_keep_alive(max.clone(), V5, asked);
        assert_eq!(server_keep_alive_of(&connack), None, "asked {asked}");
        let grace = u64::from(asked) * 1500;
        assert_eq!(server.poll_timeout(), Some(Instant::from_millis(grace)));
    }
    // An imposed keep alive wins over the maximum.
    let (connack, _) = connack_for_keep_alive(
        ServerConfig {
            server_keep_alive: Some(5),
            ..max.clone()
        },
        V5,
        30,
    );
    assert_eq!(server_keep_alive_of(&connack), Some(5));
    // Some(0) is no maximum.
    let (connack, server) = connack_for_keep_alive(
        ServerConfig {
            max_keep_alive: Some(0),
            ..ServerConfig::default()
        },
        V5,
        0,
    );
    assert_eq!(server_keep_alive_of(&connack), None);
    assert_eq!(server.poll_timeout(), None);
}

#[test]
fn mqtt_3_1_2_21_the_client_uses_the_maximum_the_server_announces() {
    // [MQTT-3.1.2-21] end to end: the client pings at the announced 60 s, not its 100 s.
    let mut p = Pair::new(
        ClientConfig {
            keep_alive: 100,
            ..ClientConfig::new(V5, "c1")
        },
        ServerConfig {
            max_keep_alive: Some(60),
            ..ServerConfig::default()
        },
    );
    p.drive();
    let Event::Connected(info) = &p.client_events[0] else {
        panic!()
    };
    assert_eq!(info.keep_alive, Duration::from_secs(60));
    assert_eq!(p.client.poll_timeout(), Some(Instant::from_millis(60_000)));
}

#[test]
fn mqtt_3_2_2_22_a_3_1_1_keep_alive_beyond_the_maximum_is_refused() {
    // 3.1.1 has no Server Keep Alive and the server must use the client's keep alive, so
    // one beyond the maximum (or none) is refused, CONNACK 0x02, as mosquitto 2.0 does.
    let max = ServerConfig {
        max_keep_alive: Some(60),
        ..ServerConfig::default()
    };
    for asked in [100, 0] {
        let mut server = ServerSession::new(max.clone(), Instant::ZERO);
        let mut c = mqtt_codec::Connect::new(V4, "c");
        c.keep_alive = asked;
        let mut input = BytesMut::from(&Packet::Connect(c).encode_to_vec(V4).unwrap()[..]);
        let _ = server.handle_input(Instant::ZERO, &mut input);
        assert!(server.poll_event().is_none(), "no ConnectRequest");
        let sent = frames(|out| server.poll_transmit(Instant::ZERO, out));
        assert_eq!(sent, [vec![0x20, 0x02, 0x00, 0x02]], "asked {asked}");
        assert!(server.is_closed());
    }
    let (connack, server) = connack_for_keep_alive(max, V4, 60);
    assert_eq!(connack, [0x20, 0x02, 0x00, 0x00]);
    assert_eq!(server.poll_timeout(), Some(Instant::from_millis(90_000)));
}

#[test]
fn mqtt_3_1_2_22_server_closes_after_one_and_a_half_keep_alives() {
    let mut server = ServerSession::new(ServerConfig::default(), Instant::ZERO);
    let mut c = mqtt_codec::Connect::new(V5, "c");
    c.keep_alive = 10;
    let mut input = BytesMut::from(&Packet::Connect(c).encode_to_vec(V5).unwrap()[..]);
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    server.accept(Instant::ZERO, Accept::default()).unwrap();
    assert_eq!(server.poll_timeout(), Some(Instant::from_millis(15_000)));
    server.handle_timeout(Instant::from_millis(14_999));
    let mut out = vec![0u8; 64];
    assert!(server
        .poll_transmit(Instant::from_millis(14_999), &mut out)
        .unwrap()
        .is_some()); // CONNACK
    server.handle_timeout(Instant::from_millis(15_000));
    let n = server
        .poll_transmit(Instant::from_millis(15_000), &mut out)
        .unwrap()
        .unwrap();
    assert_eq!(out[..n], [0xE0, 0x01, 0x8D]);
    assert_eq!(
        server.poll_transmit(Instant::from_millis(15_000), &mut out),
        Err(Error::KeepAliveTimeout)
    );
}

#[test]
fn mqtt_3_1_0_2_second_connect_is_a_protocol_error() {
    let mut server = ServerSession::new(ServerConfig::default(), Instant::ZERO);
    let connect = Packet::Connect(mqtt_codec::Connect::new(V4, "c"))
        .encode_to_vec(V4)
        .unwrap();
    let mut input = BytesMut::from(&connect[..]);
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    server.accept(Instant::ZERO, Accept::default()).unwrap();
    input.extend_from_slice(&connect);
    let e = server.handle_input(Instant::ZERO, &mut input).unwrap_err();
    assert_eq!(e, Error::Protocol(Violation::SecondConnect));
}

#[test]
fn mqtt_3_1_0_1_first_packet_must_be_connect() {
    let mut server = ServerSession::new(ServerConfig::default(), Instant::ZERO);
    let mut input = BytesMut::from(&[0xC0, 0x00][..]);
    let e = server.handle_input(Instant::ZERO, &mut input).unwrap_err();
    assert_eq!(
        e,
        Error::Protocol(Violation::FirstPacketNotConnect(PacketType::PingReq))
    );
    // No CONNACK was sent, so no DISCONNECT either ([MQTT-3.14.0-1]).
    let mut out = vec![0u8; 64];
    assert_eq!(server.poll_transmit(Instant::ZERO, &mut out), Err(e));
}

/// Found by the interop tests: a CONNECT with protocol level 6 was closed without a word.
#[test]
fn mqtt_3_1_2_2_unsupported_protocol_level_gets_connack_0x01() {
    let mut server = ServerSession::new(ServerConfig::default(), Instant::ZERO);
    let mut connect = Packet::Connect(mqtt_codec::Connect::new(V4, "c"))
        .encode_to_vec(V4)
        .unwrap();
    assert_eq!(connect[8], 4, "the protocol level byte");
    connect[8] = 6;
    let mut input = BytesMut::from(&connect[..]);
    let e = server.handle_input(Instant::ZERO, &mut input).unwrap_err();
    let mut out = vec![0u8; 64];
    let n = server.poll_transmit(Instant::ZERO, &mut out).unwrap();
    assert_eq!(n.map(|n| &out[..n]), Some(&[0x20, 0x02, 0x00, 0x01][..]));
    assert_eq!(server.poll_transmit(Instant::ZERO, &mut out), Err(e));
    assert!(server.is_closed());
}

#[test]
fn connect_timeout_on_both_sides() {
    let mut server = ServerSession::new(
        ServerConfig {
            connect_timeout: Duration::from_secs(3),
            ..ServerConfig::default()
        },
        Instant::ZERO,
    );
    assert_eq!(server.poll_timeout(), Some(Instant::from_millis(3000)));
    server.handle_timeout(Instant::from_millis(3000));
    let mut out = vec![0u8; 64];
    assert_eq!(
        server.poll_transmit(Instant::from_millis(3000), &mut out),
        Err(Error::ConnectTimeout)
    );

    let mut client = Client::new(ClientConfig::new(V4, "c"));
    client.connect(Instant::ZERO).unwrap();
    client.handle_timeout(Instant::from_millis(10_000));
    while let Ok(Some(_)) = client.poll_transmit(Instant::from_millis(10_000), &mut out) {}
    assert!(!client.is_connected());
    assert_eq!(
        client.publish(Instant::ZERO, msg("t", "x", QoS::AtMostOnce)),
        Err(Error::ConnectTimeout)
    );
}

#[test]
fn mqtt_3_2_2_7_rejected_connect_closes() {
    let mut p = Pair::v(V5);
    p.auto_accept = false;
    p.drive();
    p.server
        .reject(p.now, ReasonCode::BadUserNameOrPassword)
        .unwrap();
    p.drive();
    assert_eq!(p.server_sent, [PacketType::ConnAck]);
    assert!(!p.client.is_connected());
    assert!(matches!(
        p.client.publish(p.now, msg("t", "x", QoS::AtMostOnce)),
        Err(Error::ConnectionRefused(ReasonCode::BadUserNameOrPassword))
    ));
}

#[test]
fn subscribe_and_unsubscribe_round_trip() {
    // [MQTT-2.2.1-6] (5.0) / [MQTT-2.3.1-7] (3.1.1): SUBACK and UNSUBACK carry the request's
    // identifier, which the client matches to its request.
    for v in [V4, V5] {
        let mut p = Pair::v(v);
        p.drive();
        let id = p
            .client
            .subscribe(
                Instant::ZERO,
                &[
                    ("a/+", SubscriptionOptions::qos(QoS::AtLeastOnce)),
                    ("b", SubscriptionOptions::default()),
                ],
                None,
            )
            .unwrap();
        p.drive();
        assert!(p.client_events.iter().any(|e| matches!(e, Event::Subscribed { packet_id, reasons } if *packet_id == id && reasons == &[ReasonCode::GrantedQoS1, ReasonCode::Success])));
        let id = p.client.unsubscribe(p.now, &["a/+"]).unwrap();
        p.drive();
        assert!(p
            .client_events
            .iter()
            .any(|e| matches!(e, Event::Unsubscribed { packet_id, .. } if *packet_id == id)));
        // The identifiers were released.
        assert!(p.client.session().pending_acks.is_empty());
    }
}

#[test]
fn mqtt_3_3_2_9_outgoing_topic_aliases_stay_within_the_servers_maximum() {
    let mut p = Pair::new(
        ClientConfig::new(V5, "c1"),
        ServerConfig {
            topic_alias_maximum: 1,
            ..ServerConfig::default()
        },
    );
    p.drive();
    let mut out = vec![0u8; 1024];
    let mut publishes = Vec::new();
    for t in ["long/topic/name", "long/topic/name", "other"] {
        p.client
            .publish(
                p.now,
                Message::new(TopicBuf::from_static(t).unwrap(), "x", QoS::AtMostOnce),
            )
            .unwrap();
        let n = p.client.poll_transmit(p.now, &mut out).unwrap().unwrap();
        publishes.push(out[..n].to_vec());
        p.c2s.extend_from_slice(&out[..n]);
    }
    let opts = DecodeOptions::new(V5);
    let decoded: Vec<_> = publishes
        .iter()
        .map(|b| match decode(b, &opts).unwrap() {
            Status::Complete {
                packet: Packet::Publish(p),
                ..
            } => (p.topic.len(), p.properties.topic_alias.map(|a| a.get())),
            _ => panic!(),
        })
        .collect();
    // First with the name and alias 1, then the alias alone, then no alias (maximum 1).
    assert_eq!(decoded, [(15, Some(1)), (0, Some(1)), (5, None)]);
    // The server resolves them back.
    p.drive();
    let topics: Vec<_> = p
        .server_events
        .iter()
        .filter_map(|e| match e {
            Event::Message { message, .. } => {
                Some(alloc::string::String::from(message.topic.as_str()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(topics, ["long/topic/name", "long/topic/name", "other"]);
}

#[test]
fn mqtt_3_3_2_12_unknown_incoming_alias_is_an_error() {
    let mut p = Pair::v(V5);
    p.drive();
    let mut publish = mqtt_codec::Publish::new(
        Topic::new("").unwrap(),
        b"x",
        mqtt_codec::QosPid::AtMostOnce,
    );
    publish.properties.topic_alias = core::num::NonZeroU16::new(3);
    p.c2s
        .extend_from_slice(&Packet::Publish(publish).encode_to_vec(V5).unwrap());
    let e = p.server.handle_input(p.now, &mut p.c2s).unwrap_err();
    assert_eq!(e, Error::Protocol(Violation::UnknownTopicAlias(3)));
    publish.properties.topic_alias = core::num::NonZeroU16::new(17);
    let mut p = Pair::v(V5);
    p.drive();
    p.c2s
        .extend_from_slice(&Packet::Publish(publish).encode_to_vec(V5).unwrap());
    let e = p.server.handle_input(p.now, &mut p.c2s).unwrap_err();
    assert_eq!(e, Error::Protocol(Violation::TopicAliasOutOfRange(17)));
    assert_eq!(e.reason_code(), ReasonCode::TopicAliasInvalid);
}

#[test]
fn mqtt_3_2_2_11_client_respects_maximum_qos_and_retain_available() {
    let mut p = Pair::new(
        ClientConfig::new(V5, "c1"),
        ServerConfig {
            maximum_qos: QoS::AtLeastOnce,
            retain_available: false,
            ..ServerConfig::default()
        },
    );
    p.drive();
    assert_eq!(
        p.client.publish(p.now, msg("t", "x", QoS::ExactlyOnce)),
        Err(Error::QoSNotSupported)
    );
    let mut m = msg("t", "x", QoS::AtMostOnce);
    m.retain = true;
    // [MQTT-3.2.2-14]
    assert_eq!(p.client.publish(p.now, m), Err(Error::RetainNotSupported));
}

#[test]
fn mqtt_3_2_2_15_client_never_sends_more_than_the_servers_maximum_packet_size() {
    let mut p = Pair::new(
        ClientConfig::new(V5, "c1"),
        ServerConfig {
            maximum_packet_size: 64,
            ..ServerConfig::default()
        },
    );
    p.drive();
    let big = alloc::string::String::from_utf8(vec![b'x'; 100]).unwrap();
    let id = p
        .client
        .publish(
            p.now,
            Message::new(TopicBuf::from_static("t").unwrap(), big, QoS::AtLeastOnce),
        )
        .unwrap();
    p.drive();
    assert!(p.server_messages().is_empty());
    assert!(p.client_events.iter().any(|e| matches!(e, Event::Dropped { packet_id, error: Error::PacketTooLarge { max: 64, .. }, .. } if *packet_id == id)));
    assert!(p.client.session().is_empty());
}

#[test]
fn mqtt_3_1_2_25_server_drops_what_the_client_cannot_take() {
    // [MQTT-3.1.2-24] (5.0) nothing larger than the client's Maximum Packet Size goes out.
    let mut p = Pair::new(
        ClientConfig {
            maximum_packet_size: 50,
            ..ClientConfig::new(V5, "c1")
        },
        ServerConfig::default(),
    );
    p.drive();
    let big = alloc::string::String::from_utf8(vec![b'x'; 100]).unwrap();
    p.server
        .deliver(
            p.now,
            Message::new(TopicBuf::from_static("t").unwrap(), big, QoS::AtLeastOnce),
            &[],
        )
        .unwrap();
    p.server
        .deliver(
            p.now,
            Message::new(
                TopicBuf::from_static("t").unwrap(),
                "small",
                QoS::AtLeastOnce,
            ),
            &[],
        )
        .unwrap();
    p.drive();
    // The large one is dropped as if delivered; the next one still arrives.
    assert_eq!(p.client_messages(), [b"small".to_vec()]);
    assert!(p.server.session().is_empty());
}

#[test]
fn message_expiry_counts_down_while_queued() {
    let mut p = Pair::new(keeping_session(V5), ServerConfig::default());
    p.drive();
    p.client.handle_close(p.now);
    let mut m = msg("t", "soon", QoS::AtLeastOnce);
    m.properties_mut().message_expiry_interval = Some(10);
    let mut m2 = msg("t", "later", QoS::AtLeastOnce);
    m2.properties_mut().message_expiry_interval = Some(100);
    p.client.publish(p.now, m).unwrap();
    p.client.publish(p.now, m2).unwrap();
    p.now = p.now + Duration::from_secs(30);
    p.reconnect(true);
    let got: Vec<_> = p
        .server_events
        .iter()
        .filter_map(|e| match e {
            Event::Message { message, .. } => Some((
                message.payload.to_vec(),
                message.properties().message_expiry_interval,
            )),
            _ => None,
        })
        .collect();
    assert_eq!(got, [(b"later".to_vec(), Some(70))]);
}

#[test]
fn disconnect_is_the_last_packet() {
    // [MQTT-3.14.4-1] nothing after DISCONNECT; [MQTT-3.14.4-2] the machine then only
    // reports its end, for the adapter to close the connection.
    let mut p = Pair::v(V5);
    p.drive();
    p.client
        .disconnect(p.now, ReasonCode::DisconnectWithWill)
        .unwrap();
    p.drive();
    assert_eq!(p.client_sent.last(), Some(&PacketType::Disconnect));
    assert!(p.server_events.iter().any(|e| matches!(
        e,
        Event::Disconnected {
            reason: ReasonCode::DisconnectWithWill,
            by_peer: true,
            ..
        }
    )));
    // [MQTT-3.14.4-1] nothing after DISCONNECT.
    assert!(p
        .client
        .publish(p.now, msg("t", "x", QoS::AtMostOnce))
        .is_err());
    // A close the application asked for is no error: drained, closed, no `Err`.
    let mut out = vec![0u8; 64];
    assert_eq!(p.client.poll_transmit(p.now, &mut out), Ok(None));
    assert!(p.client.is_closed());
    assert!(p.server.is_closed());
}

#[test]
fn a_clean_close_is_not_an_error_on_either_side() {
    for version in [V4, V5] {
        // The client closes with Normal disconnection: the server reads it without an
        // error, reports the event, and is closed ([MQTT-3.14.4-1]).
        let mut p = Pair::v(version);
        p.drive();
        p.client.close(p.now).unwrap();
        let mut out = vec![0u8; 64];
        let n = p.client.poll_transmit(p.now, &mut out).unwrap().unwrap();
        assert_eq!(p.client.poll_transmit(p.now, &mut out), Ok(None));
        assert!(p.client.is_closed());
        let mut input = BytesMut::from(&out[..n]);
        assert_eq!(p.server.handle_input(p.now, &mut input), Ok(()));
        assert!(matches!(
            p.server.poll_event(),
            Some(Event::Disconnected {
                reason: ReasonCode::Success,
                by_peer: true,
                ..
            })
        ));
        assert_eq!(p.server.poll_transmit(p.now, &mut out), Ok(None));
        assert!(p.server.is_closed());
        // Still known why it ended, for a broker's close reason.
        assert_eq!(
            p.server.error(),
            Some(Error::Disconnected(ReasonCode::Success))
        );
    }
    // The server closes with Normal disconnection (5.0): the client reads it as the end,
    // not as an error; one with an error code stays an error.
    for (code, clean) in [
        (ReasonCode::Success, true),
        (ReasonCode::ServerShuttingDown, false),
    ] {
        let mut p = Pair::v(V5);
        p.drive();
        while p.client.poll_event().is_some() {}
        p.server.disconnect(p.now, code);
        let mut out = vec![0u8; 64];
        let n = p.server.poll_transmit(p.now, &mut out).unwrap().unwrap();
        assert_eq!(p.server.poll_transmit(p.now, &mut out), Ok(None));
        assert!(p.server.is_closed());
        let mut input = BytesMut::from(&out[..n]);
        let r = p.client.handle_input(p.now, &mut input);
        if clean {
            assert_eq!(r, Ok(()));
            assert_eq!(p.client.poll_transmit(p.now, &mut out), Ok(None));
        } else {
            assert_eq!(r, Err(Error::Disconnected(code)));
            assert_eq!(
                p.client.poll_transmit(p.now, &mut out),
                Err(Error::Disconnected(code))
            );
        }
        assert!(p.client.is_closed());
        assert!(matches!(
            p.client.poll_event(),
            Some(Event::Disconnected { reason, by_peer: true, .. }) if reason == code
        ));
        // Reconnecting is the way on.
        p.client.handle_close(p.now);
        assert!(!p.client.is_closed());
        p.client.connect(p.now).unwrap();
    }
}

#[test]
fn snapshot_survives_a_restart() {
    let mut p = Pair::new(keeping_session(V4), ServerConfig::default());
    p.drive();
    p.client
        .publish(p.now, msg("t", "kept", QoS::ExactlyOnce))
        .unwrap();
    let mut out = vec![0u8; 1024];
    while let Ok(Some(_)) = p.client.poll_transmit(p.now, &mut out) {}
    // The process dies: only the session state is kept.
    let saved =
        core::mem::replace(&mut p.client, Client::new(ClientConfig::new(V4, "x"))).into_session();
    assert_eq!(saved.inflight.len(), 1);
    p.client = Client::with_session(keeping_session(V4), saved);
    p.server.handle_close(p.now);
    let server = core::mem::replace(
        &mut p.server,
        ServerSession::new(ServerConfig::default(), p.now),
    );
    p.session_for_server = Some(server.into_session());
    p.session_present = true;
    p.c2s.clear();
    p.client.connect(p.now).unwrap();
    p.drive();
    assert_eq!(p.server_messages().len(), 1);
    assert_eq!(p.acked(), 1);
}

#[test]
fn mqtt_4_12_0_2_enhanced_authentication_exchange() {
    let mut p = Pair::new(
        ClientConfig {
            authentication: Some((
                "SCRAM-SHA-1".into(),
                Some(bytes::Bytes::from_static(b"client-first")),
            )),
            ..ClientConfig::new(V5, "c1")
        },
        ServerConfig::default(),
    );
    p.auto_accept = false;
    p.drive();
    let Event::ConnectRequest(req) = &p.server_events[0] else {
        panic!()
    };
    assert_eq!(
        req.authentication_method.as_ref().map(Utf8Bytes::as_str),
        Some("SCRAM-SHA-1")
    );
    // [MQTT-4.12.0-2] the server's challenge carries Continue authentication.
    p.server
        .auth(
            p.now,
            ReasonCode::ContinueAuthentication,
            Some(bytes::Bytes::from_static(b"server-first")),
        )
        .unwrap();
    p.drive();
    let challenge = p.client_events.iter().find_map(|e| match e {
        Event::Auth {
            reason,
            method,
            data,
        } => Some((*reason, method.clone(), data.clone())),
        _ => None,
    });
    let (reason, method, data) = challenge.expect("AUTH reached the client");
    assert_eq!(reason, ReasonCode::ContinueAuthentication);
    // [MQTT-4.12.0-5] the same method every time.
    assert_eq!(method.unwrap().as_str(), "SCRAM-SHA-1");
    assert_eq!(&data.unwrap()[..], b"server-first");
    // [MQTT-4.12.0-3] the client answers with Continue authentication.
    p.client
        .auth(
            p.now,
            ReasonCode::ContinueAuthentication,
            Some(bytes::Bytes::from_static(b"client-final")),
        )
        .unwrap();
    p.drive();
    assert!(p.server_events.iter().any(|e| matches!(
        e,
        Event::Auth {
            reason: ReasonCode::ContinueAuthentication,
            ..
        }
    )));
    p.server.accept(p.now, Accept::default()).unwrap();
    p.drive();
    assert!(p.client.is_connected());
    assert_eq!(p.client_sent, [PacketType::Connect, PacketType::Auth]);
    assert_eq!(p.server_sent, [PacketType::Auth, PacketType::ConnAck]);
    // [MQTT-4.12.1-1] re-authentication after CONNACK with the same method.
    p.client
        .auth(p.now, ReasonCode::ReAuthenticate, None)
        .unwrap();
    p.drive();
    assert!(p.server_events.iter().any(|e| matches!(
        e,
        Event::Auth {
            reason: ReasonCode::ReAuthenticate,
            ..
        }
    )));
}

#[test]
fn mqtt_4_12_0_7_no_auth_without_a_method() {
    let mut p = Pair::v(V5);
    p.drive();
    assert!(p
        .client
        .auth(p.now, ReasonCode::ReAuthenticate, None)
        .is_err());
    assert!(p
        .server
        .auth(p.now, ReasonCode::ContinueAuthentication, None)
        .is_err());
    // A peer that sends one anyway breaks the protocol.
    let auth = Packet::Auth(mqtt_codec::Auth {
        reason_code: ReasonCode::ReAuthenticate,
        properties: mqtt_codec::AuthProperties {
            authentication_method: Some("X"),
            ..Default::default()
        },
    });
    p.c2s.extend_from_slice(&auth.encode_to_vec(V5).unwrap());
    assert_eq!(
        p.server.handle_input(p.now, &mut p.c2s),
        Err(Error::Protocol(Violation::UnexpectedAuth))
    );
}

#[test]
fn mqtt_3_1_4_6_packets_behind_connect_wait_for_the_decision() {
    let mut server = ServerSession::new(ServerConfig::default(), Instant::ZERO);
    let mut input = BytesMut::new();
    input.extend_from_slice(
        &Packet::Connect(mqtt_codec::Connect::new(V4, "c"))
            .encode_to_vec(V4)
            .unwrap(),
    );
    let subs = [mqtt_codec::Subscription {
        filter: "a/#",
        options: SubscriptionOptions::default(),
    }];
    let sub = mqtt_codec::Subscribe::new(
        mqtt_codec::PacketId::new(1).unwrap(),
        mqtt_codec::List::new(&subs),
    );
    input.extend_from_slice(&Packet::Subscribe(sub).encode_to_vec(V4).unwrap());
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    assert!(matches!(
        server.poll_event(),
        Some(Event::ConnectRequest(_))
    ));
    assert_eq!(server.poll_event(), None);
    // The pipelined SUBSCRIBE is still in the buffer, processed after the accept.
    assert!(!input.is_empty());
    server.accept(Instant::ZERO, Accept::default()).unwrap();
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    assert!(matches!(
        server.poll_event(),
        Some(Event::SubscribeRequest { .. })
    ));
}

/// Feeds one CONNECT to a fresh server and returns what it sent.
fn connect_to(config: ServerConfig, c: mqtt_codec::Connect<'_>) -> (ServerSession, Vec<Vec<u8>>) {
    let mut server = ServerSession::new(config, Instant::ZERO);
    let mut input = BytesMut::from(&Packet::Connect(c).encode_to_vec(c.protocol).unwrap()[..]);
    let _ = server.handle_input(Instant::ZERO, &mut input);
    let sent = frames(|out| server.poll_transmit(Instant::ZERO, out));
    (server, sent)
}

#[test]
fn mqtt_3_1_3_8_empty_client_id_needs_clean_session_in_3_1_1() {
    // [MQTT-3.1.3-7] [MQTT-3.1.3-8]: CONNACK 0x02 (identifier rejected), then close.
    let mut c = mqtt_codec::Connect::new(V4, "");
    c.clean_start = false;
    let (mut server, sent) = connect_to(ServerConfig::default(), c);
    assert_eq!(sent, [vec![0x20, 0x02, 0x00, 0x02]]);
    assert_eq!(server.poll_event(), None, "the application is not asked");
    // With a clean session it is the application's call.
    let (mut server, _) = connect_to(ServerConfig::default(), mqtt_codec::Connect::new(V4, ""));
    assert!(matches!(
        server.poll_event(),
        Some(Event::ConnectRequest(_))
    ));
}

#[test]
fn mqtt_3_2_2_12_will_beyond_the_servers_qos_or_retain_is_refused() {
    let config = ServerConfig {
        maximum_qos: QoS::AtLeastOnce,
        retain_available: false,
        ..ServerConfig::default()
    };
    let mut c = mqtt_codec::Connect::new(V5, "c");
    let mut will = mqtt_codec::Will::new("w", b"bye");
    will.qos = QoS::ExactlyOnce;
    c.will = Some(will);
    let (_, sent) = connect_to(config.clone(), c);
    assert_eq!(sent[0][..4], [0x20, 0x03, 0x00, 0x9B]);
    // [MQTT-3.2.2-13]
    will.qos = QoS::AtMostOnce;
    will.retain = true;
    c.will = Some(will);
    let (_, sent) = connect_to(config, c);
    assert_eq!(sent[0][..4], [0x20, 0x03, 0x00, 0x9A]);
}

#[test]
fn mqtt_3_2_2_9_connack_announces_limits() {
    let config = ServerConfig {
        maximum_qos: QoS::AtLeastOnce,
        retain_available: false,
        receive_maximum: 10,
        ..ServerConfig::default()
    };
    let mut p = Pair::new(ClientConfig::new(V5, "c1"), config);
    p.drive();
    let Event::Connected(info) = &p.client_events[0] else {
        panic!()
    };
    assert_eq!(
        (
            info.maximum_qos,
            info.retain_available,
            info.receive_maximum
        ),
        (QoS::AtLeastOnce, false, 10)
    );
}

#[test]
fn mqtt_4_3_1_1_qos_0_goes_once_without_dup() {
    let mut p = Pair::v(V4);
    p.drive();
    p.client
        .publish(p.now, msg("t", "x", QoS::AtMostOnce))
        .unwrap();
    p.drive();
    assert_eq!(
        p.server_messages(),
        [(b"x".to_vec(), QoS::AtMostOnce, false)]
    );
    // [MQTT-3.3.4-1] nothing answers a QoS 0 PUBLISH.
    assert_eq!(p.server_sent, [PacketType::ConnAck]);
    assert!(p.client.session().is_empty());
}

#[test]
fn a_failed_accept_hands_the_session_back() {
    let mut server = ServerSession::new(ServerConfig::default(), Instant::ZERO);
    let mut c = mqtt_codec::Connect::new(V4, "c");
    c.clean_start = false;
    let mut input = BytesMut::from(&Packet::Connect(c).encode_to_vec(V4).unwrap()[..]);
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    // The transport closes before the broker decides.
    server.handle_close(Instant::ZERO);
    let mut session = SessionState::default();
    session.incoming_qos2.push(7);
    let accept = Accept {
        session: session.clone(),
        session_present: true,
        ..Accept::default()
    };
    assert!(server.accept(Instant::ZERO, accept).is_err());
    assert_eq!(server.take_session(), session);
}

#[test]
fn reason_strings_reach_the_application() {
    let mut p = Pair::v(V5);
    p.drive();
    let id = p
        .client
        .publish(p.now, msg("t", "x", QoS::AtLeastOnce))
        .unwrap()
        .unwrap();
    let mut out = vec![0u8; 256];
    while let Ok(Some(_)) = p.client.poll_transmit(p.now, &mut out) {}
    // A server that refuses the message and says why, then disconnects with a reason.
    let ack = Packet::PubAck(mqtt_codec::PubAck {
        packet_id: id,
        reason_code: ReasonCode::QuotaExceeded,
        properties: mqtt_codec::AckProperties {
            reason_string: Some("slow down"),
            ..Default::default()
        },
    });
    let bye = Packet::Disconnect(mqtt_codec::Disconnect {
        reason_code: ReasonCode::ServerShuttingDown,
        properties: mqtt_codec::DisconnectProperties {
            reason_string: Some("maintenance"),
            ..Default::default()
        },
    });
    let mut input = BytesMut::new();
    input.extend_from_slice(&ack.encode_to_vec(V5).unwrap());
    input.extend_from_slice(&bye.encode_to_vec(V5).unwrap());
    let _ = p.client.handle_input(p.now, &mut input);
    let events: Vec<_> = core::iter::from_fn(|| p.client.poll_event()).collect();
    assert!(events.iter().any(|e| matches!(e, Event::Acknowledged { reason: ReasonCode::QuotaExceeded, reason_string: Some(s), .. } if s.as_str() == "slow down")));
    assert!(events.iter().any(|e| matches!(e, Event::Disconnected { reason: ReasonCode::ServerShuttingDown, by_peer: true, reason_string: Some(s) } if s.as_str() == "maintenance")));
}

#[test]
fn an_idle_connection_holds_no_queue_memory() {
    let mut p = Pair::v(V5);
    p.drive();
    let s = p.server.session();
    assert_eq!(
        (
            s.queue.capacity(),
            s.inflight.capacity(),
            s.incoming_qos2.capacity()
        ),
        (0, 0, 0)
    );
    // The machine itself is small: it is what a broker holds per idle connection.
    assert!(
        core::mem::size_of::<ServerSession>() < 1024,
        "{}",
        core::mem::size_of::<ServerSession>()
    );
}

/// Decodes packets a side sent (one packet per frame).
fn decoded(frames: &[Vec<u8>], v: ProtocolVersion) -> Vec<Packet<'_>> {
    frames
        .iter()
        .map(|f| match decode(f, &DecodeOptions::new(v)).unwrap() {
            Status::Complete { packet, .. } => packet,
            Status::Incomplete { .. } => panic!("a whole packet per frame"),
        })
        .collect()
}

#[test]
fn mqtt_2_2_1_5_acks_carry_the_publish_packet_id() {
    // [MQTT-2.2.1-5] (5.0) / [MQTT-2.3.1-6] (3.1.1); and [MQTT-4.3.2-2] [MQTT-4.3.3-2]
    // (5.0): a first send is DUP 0 with the identifier and QoS.
    for v in [V4, V5] {
        let mut p = Pair::v(v);
        p.drive();
        let a = p
            .server
            .deliver(p.now, msg("t", "1", QoS::AtLeastOnce), &[])
            .unwrap()
            .unwrap();
        let b = p
            .server
            .deliver(p.now, msg("t", "2", QoS::ExactlyOnce), &[])
            .unwrap()
            .unwrap();
        p.drive();
        let sent = decoded(&p.server_frames, v);
        let publishes: Vec<_> = sent
            .iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some((p.packet_id(), p.qos(), p.dup)),
                _ => None,
            })
            .collect();
        assert_eq!(
            publishes,
            [
                (Some(a), QoS::AtLeastOnce, false),
                (Some(b), QoS::ExactlyOnce, false)
            ]
        );
        let acks: Vec<_> = decoded(&p.client_frames, v)
            .into_iter()
            .filter_map(|p| match p {
                Packet::PubAck(x) => Some((PacketType::PubAck, x.packet_id)),
                Packet::PubRec(x) => Some((PacketType::PubRec, x.packet_id)),
                Packet::PubComp(x) => Some((PacketType::PubComp, x.packet_id)),
                _ => None,
            })
            .collect();
        assert_eq!(
            acks,
            [
                (PacketType::PubAck, a),
                (PacketType::PubRec, b),
                (PacketType::PubComp, b)
            ]
        );
        // The server's PUBREL carries it too.
        assert!(sent
            .iter()
            .any(|p| matches!(p, Packet::PubRel(x) if x.packet_id == b)));
    }
}

#[test]
fn mqtt_4_3_3_3_qos_2_sender_holds_publish_then_pubrel() {
    // [MQTT-4.3.3-3] until PUBREC, [MQTT-4.3.3-5] until PUBCOMP.
    let (mut client, mut input, mut out) = connected_client(V5);
    let id = client
        .publish(Instant::ZERO, msg("t", "x", QoS::ExactlyOnce))
        .unwrap()
        .unwrap();
    client
        .poll_transmit(Instant::ZERO, &mut out)
        .unwrap()
        .unwrap();
    assert_eq!(client.session().inflight[0].stage, Stage::Published);
    input.extend_from_slice(
        &Packet::PubRec(mqtt_codec::PubAck::new(id))
            .encode_to_vec(V5)
            .unwrap(),
    );
    client.handle_input(Instant::ZERO, &mut input).unwrap();
    assert_eq!(client.session().inflight[0].stage, Stage::Released);
    let n = client
        .poll_transmit(Instant::ZERO, &mut out)
        .unwrap()
        .unwrap();
    assert_eq!(out[..n], [0x62, 0x02, 0x00, id.get() as u8]);
    assert_eq!(client.session().inflight.len(), 1);
    input.extend_from_slice(
        &Packet::PubComp(mqtt_codec::PubAck::new(id))
            .encode_to_vec(V5)
            .unwrap(),
    );
    client.handle_input(Instant::ZERO, &mut input).unwrap();
    assert!(client.session().inflight.is_empty());
}

/// A client that sent CONNECT and got CONNACK, for feeding it packets by hand; returns it
/// with its (empty) input buffer and an output buffer.
fn connected_client(v: ProtocolVersion) -> (Client, BytesMut, Vec<u8>) {
    let mut client = Client::new(ClientConfig::new(v, "c"));
    client.connect(Instant::ZERO).unwrap();
    let mut out = vec![0u8; 256];
    client.poll_transmit(Instant::ZERO, &mut out).unwrap();
    let connack = Packet::ConnAck(mqtt_codec::ConnAck::new(false, ReasonCode::Success));
    let mut input = BytesMut::from(&connack.encode_to_vec(v).unwrap()[..]);
    client.handle_input(Instant::ZERO, &mut input).unwrap();
    assert!(client.is_connected());
    (client, input, out)
}

/// A server with a connected client, for feeding it packets by hand.
fn accepted_server(v: ProtocolVersion) -> (ServerSession, BytesMut) {
    let mut server = ServerSession::new(ServerConfig::default(), Instant::ZERO);
    let mut input = BytesMut::from(
        &Packet::Connect(mqtt_codec::Connect::new(v, "c"))
            .encode_to_vec(v)
            .unwrap()[..],
    );
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    server.accept(Instant::ZERO, Accept::default()).unwrap();
    (server, input)
}

fn publish_bytes(v: ProtocolVersion, id: u16, qos: QoS, dup: bool) -> Vec<u8> {
    let id = mqtt_codec::PacketId::new(id).unwrap();
    let mut p = mqtt_codec::Publish::new(
        Topic::new("t").unwrap(),
        b"x",
        crate::conn::qos_pid(qos, id),
    );
    p.dup = dup;
    Packet::Publish(p).encode_to_vec(v).unwrap()
}

fn messages(server: &mut ServerSession) -> usize {
    core::iter::from_fn(|| server.poll_event())
        .filter(|e| matches!(e, Event::Message { .. }))
        .count()
}

#[test]
fn mqtt_4_3_3_12_after_pubcomp_the_id_is_a_new_message() {
    // [MQTT-4.3.3-12] (5.0) / [MQTT-4.3.3-2] (3.1.1), and for QoS 1 [MQTT-4.3.2-5] (5.0) /
    // [MQTT-4.3.2-2] (3.1.1): once acknowledged, the same id, DUP or not, is a new message.
    for v in [V4, V5] {
        let (mut server, mut input) = accepted_server(v);
        let mut out = vec![0u8; 256];
        input.extend_from_slice(&publish_bytes(v, 5, QoS::ExactlyOnce, false));
        input.extend_from_slice(
            &Packet::PubRel(mqtt_codec::PubAck::new(
                mqtt_codec::PacketId::new(5).unwrap(),
            ))
            .encode_to_vec(v)
            .unwrap(),
        );
        server.handle_input(Instant::ZERO, &mut input).unwrap();
        while let Ok(Some(_)) = server.poll_transmit(Instant::ZERO, &mut out) {}
        input.extend_from_slice(&publish_bytes(v, 5, QoS::ExactlyOnce, true));
        server.handle_input(Instant::ZERO, &mut input).unwrap();
        assert_eq!(messages(&mut server), 2, "{v:?}");
        while let Ok(Some(_)) = server.poll_transmit(Instant::ZERO, &mut out) {}
        input.extend_from_slice(&publish_bytes(v, 9, QoS::AtLeastOnce, false));
        server.handle_input(Instant::ZERO, &mut input).unwrap();
        while let Ok(Some(_)) = server.poll_transmit(Instant::ZERO, &mut out) {}
        input.extend_from_slice(&publish_bytes(v, 9, QoS::AtLeastOnce, true));
        server.handle_input(Instant::ZERO, &mut input).unwrap();
        assert_eq!(messages(&mut server), 2, "{v:?}");
    }
}

#[test]
fn mqtt_4_5_0_2_every_publish_is_acknowledged_even_if_unread() {
    // The application never looks at its events: the PUBACK goes out regardless.
    let (mut client, mut input, mut out) = connected_client(V4);
    input.extend_from_slice(&publish_bytes(V4, 3, QoS::AtLeastOnce, false));
    client.handle_input(Instant::ZERO, &mut input).unwrap();
    let n = client
        .poll_transmit(Instant::ZERO, &mut out)
        .unwrap()
        .unwrap();
    assert_eq!(out[..n], [0x40, 0x02, 0x00, 0x03]);
}

#[test]
fn mqtt_3_3_4_10_servers_quota_does_not_hold_back_other_packets() {
    let mut p = Pair::new(
        ClientConfig {
            receive_maximum: 1,
            manual_acks: true,
            ..ClientConfig::new(V5, "c1")
        },
        ServerConfig::default(),
    );
    p.drive();
    for _ in 0..3 {
        p.server
            .deliver(p.now, msg("t", "x", QoS::AtLeastOnce), &[])
            .unwrap();
    }
    p.drive();
    // [MQTT-3.3.4-9] one in flight towards a client with Receive Maximum 1.
    assert_eq!(
        p.server_sent
            .iter()
            .filter(|t| **t == PacketType::Publish)
            .count(),
        1
    );
    // The SUBACK still comes back while the quota is used up.
    p.client
        .subscribe(p.now, &[("s", SubscriptionOptions::default())], None)
        .unwrap();
    p.drive();
    assert_eq!(p.server_sent.last(), Some(&PacketType::SubAck));
}

#[test]
fn mqtt_3_1_2_26_server_topic_aliases_follow_the_clients_maximum() {
    // [MQTT-3.1.2-27] none when the client allows none; [MQTT-3.1.2-26] never above it.
    for max in [0u16, 1] {
        let mut p = Pair::new(
            ClientConfig {
                topic_alias_maximum: max,
                ..ClientConfig::new(V5, "c1")
            },
            ServerConfig::default(),
        );
        p.drive();
        for t in ["a/long/topic", "a/long/topic", "other/topic"] {
            p.server
                .deliver(
                    p.now,
                    Message::new(TopicBuf::from_static(t).unwrap(), "x", QoS::AtMostOnce),
                    &[],
                )
                .unwrap();
        }
        p.drive();
        let aliases: Vec<_> = decoded(&p.server_frames, V5)
            .into_iter()
            .filter_map(|p| match p {
                Packet::Publish(p) => Some(p.properties.topic_alias.map(|a| a.get())),
                _ => None,
            })
            .collect();
        let expect = if max == 0 {
            vec![None, None, None]
        } else {
            vec![Some(1), Some(1), None]
        };
        assert_eq!(aliases, expect);
        assert_eq!(p.client_messages().len(), 3);
    }
}

#[test]
fn mqtt_3_1_4_1_a_malformed_connect_is_closed_without_connack() {
    let mut server = ServerSession::new(ServerConfig::default(), Instant::ZERO);
    // CONNECT with the reserved flag set.
    let mut input = BytesMut::from(
        &[
            0x10, 0x0D, 0, 4, b'M', b'Q', b'T', b'T', 4, 0x03, 0, 60, 0, 1, b'c',
        ][..],
    );
    assert!(server.handle_input(Instant::ZERO, &mut input).is_err());
    let mut out = vec![0u8; 64];
    assert!(server.poll_transmit(Instant::ZERO, &mut out).is_err());
    assert_eq!(
        server.poll_event(),
        Some(Event::Disconnected {
            reason: ReasonCode::MalformedPacket,
            by_peer: false,
            reason_string: None
        })
    );
}

#[test]
fn mqtt_3_1_4_5_a_rejected_connection_reads_nothing_more() {
    // [MQTT-3.1.4-5] (3.1.1) / [MQTT-3.1.4-6] (5.0)
    let mut server = ServerSession::new(ServerConfig::default(), Instant::ZERO);
    let mut input = BytesMut::from(
        &Packet::Connect(mqtt_codec::Connect::new(V4, "c"))
            .encode_to_vec(V4)
            .unwrap()[..],
    );
    input.extend_from_slice(&publish_bytes(V4, 1, QoS::AtLeastOnce, false));
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    server
        .reject(Instant::ZERO, ReasonCode::NotAuthorized)
        .unwrap();
    let _ = server.handle_input(Instant::ZERO, &mut input);
    assert_eq!(messages(&mut server), 0);
    let mut out = vec![0u8; 64];
    let n = server
        .poll_transmit(Instant::ZERO, &mut out)
        .unwrap()
        .unwrap();
    assert_eq!(out[..n], [0x20, 0x02, 0x00, 0x05]);
    assert!(server.poll_transmit(Instant::ZERO, &mut out).is_err());
}

#[test]
fn mqtt_3_1_4_4_an_accepted_connect_gets_connack_0() {
    // [MQTT-3.1.4-4] (3.1.1) / [MQTT-3.1.4-5] (5.0)
    for v in [V4, V5] {
        let mut p = Pair::v(v);
        p.drive();
        let Packet::ConnAck(ack) = decoded(&p.server_frames, v)[0] else {
            panic!()
        };
        assert_eq!(
            (ack.reason_code, ack.session_present),
            (ReasonCode::Success, false)
        );
    }
}

#[test]
fn mqtt_4_6_0_4_pubrels_leave_in_pubrec_order() {
    let (mut client, mut input, mut out) = connected_client(V4);
    let ids: Vec<_> = (0..3)
        .map(|_| {
            client
                .publish(Instant::ZERO, msg("t", "x", QoS::ExactlyOnce))
                .unwrap()
                .unwrap()
        })
        .collect();
    while let Ok(Some(_)) = client.poll_transmit(Instant::ZERO, &mut out) {}
    for id in &ids {
        input.extend_from_slice(
            &Packet::PubRec(mqtt_codec::PubAck::new(*id))
                .encode_to_vec(V4)
                .unwrap(),
        );
    }
    client.handle_input(Instant::ZERO, &mut input).unwrap();
    let mut rels = Vec::new();
    while let Ok(Some(n)) = client.poll_transmit(Instant::ZERO, &mut out) {
        assert_eq!(out[0], 0x62);
        rels.push(u16::from_be_bytes([out[2], out[3]]));
        assert_eq!(n, 4);
    }
    assert_eq!(rels, ids.iter().map(|i| i.get()).collect::<Vec<_>>());
}

#[test]
fn mqtt_4_13_1_1_a_malformed_packet_closes_with_its_reason() {
    let (mut server, mut input) = accepted_server(V5);
    let mut out = vec![0u8; 64];
    while let Ok(Some(_)) = server.poll_transmit(Instant::ZERO, &mut out) {}
    // PUBLISH with QoS 3.
    input.extend_from_slice(&[0x36, 0x03, 0x00, 0x01, b't']);
    assert!(server.handle_input(Instant::ZERO, &mut input).is_err());
    let n = server
        .poll_transmit(Instant::ZERO, &mut out)
        .unwrap()
        .unwrap();
    assert_eq!(out[..n], [0xE0, 0x01, 0x81]);
    // [MQTT-3.14.4-1] nothing after it; the adapter closes.
    assert!(server.poll_transmit(Instant::ZERO, &mut out).is_err());
}

#[test]
fn mqtt_3_1_2_24_3_1_1_server_drops_a_silent_client_after_one_and_a_half_keep_alives() {
    // [MQTT-3.1.2-24] (3.1.1): closed as a network failure, without a DISCONNECT (3.1.1
    // servers have none).
    let mut server = ServerSession::new(ServerConfig::default(), Instant::ZERO);
    let mut c = mqtt_codec::Connect::new(V4, "c");
    c.keep_alive = 4;
    let mut input = BytesMut::from(&Packet::Connect(c).encode_to_vec(V4).unwrap()[..]);
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    server.accept(Instant::ZERO, Accept::default()).unwrap();
    let mut out = vec![0u8; 64];
    server
        .poll_transmit(Instant::ZERO, &mut out)
        .unwrap()
        .unwrap();
    // A PINGREQ at 3 s restarts the allowance.
    input.extend_from_slice(&[0xC0, 0x00]);
    server
        .handle_input(Instant::from_millis(3_000), &mut input)
        .unwrap();
    assert_eq!(server.poll_timeout(), Some(Instant::from_millis(9_000)));
    server.handle_timeout(Instant::from_millis(8_999));
    assert!(server
        .poll_transmit(Instant::from_millis(8_999), &mut out)
        .unwrap()
        .is_some()); // PINGRESP
    server.handle_timeout(Instant::from_millis(9_000));
    assert_eq!(
        server.poll_transmit(Instant::from_millis(9_000), &mut out),
        Err(Error::KeepAliveTimeout)
    );
}

#[test]
fn an_unencodable_message_is_refused_at_publish_and_the_connection_goes_on() {
    let (mut client, _input, mut out) = connected_client(V5);
    let mut m = msg("t", "x", QoS::AtLeastOnce);
    m.properties_mut().response_topic = Some("replies/+".into());
    assert!(matches!(
        client.publish(Instant::ZERO, m),
        Err(Error::Codec(mqtt_codec::Error::InvalidTopicName(_)))
    ));
    // [MQTT-3.3.2-2] a message with a wildcard in its topic cannot even be made.
    assert_eq!(
        TopicBuf::from_static("a/#"),
        Err(mqtt_topic::Error::WildcardInName { at: 2 })
    );
    // Nothing was queued or wedged, and the next message goes out.
    assert!(client.session().queue.is_empty());
    client
        .publish(Instant::ZERO, msg("t", "ok", QoS::AtMostOnce))
        .unwrap();
    assert!(client
        .poll_transmit(Instant::ZERO, &mut out)
        .unwrap()
        .is_some());
    assert!(client.is_connected());
}

#[test]
fn an_ack_for_a_request_not_sent_is_ignored() {
    // A confused or hostile server answers a SUBSCRIBE the client has not sent yet, and one
    // it never made: neither may complete it early nor upset the machine.
    let (mut client, mut input, mut out) = connected_client(V4);
    let first = client
        .subscribe(
            Instant::ZERO,
            &[("a", SubscriptionOptions::default())],
            None,
        )
        .unwrap();
    let second = client
        .subscribe(
            Instant::ZERO,
            &[("b", SubscriptionOptions::default())],
            None,
        )
        .unwrap();
    let n = client
        .poll_transmit(Instant::ZERO, &mut out)
        .unwrap()
        .unwrap();
    assert_eq!(u16::from_be_bytes([out[2], out[3]]), first.get());
    let _ = n;
    for id in [second.get(), 999] {
        let ack = mqtt_codec::SubAck::new(
            mqtt_codec::PacketId::new(id).unwrap(),
            mqtt_codec::List::new(&[ReasonCode::Success]),
        );
        input.extend_from_slice(&Packet::SubAck(ack).encode_to_vec(V4).unwrap());
    }
    client.handle_input(Instant::ZERO, &mut input).unwrap();
    assert!(
        core::iter::from_fn(|| client.poll_event()).all(|e| !matches!(e, Event::Subscribed { .. }))
    );
    // The second SUBSCRIBE still goes out, with its own identifier and filter.
    let n = client
        .poll_transmit(Instant::ZERO, &mut out)
        .unwrap()
        .unwrap();
    let Ok(Status::Complete {
        packet: Packet::Subscribe(s),
        ..
    }) = decode(&out[..n], &DecodeOptions::new(V4))
    else {
        panic!()
    };
    assert_eq!(
        (s.packet_id, s.filters.iter().next().unwrap().filter),
        (second, "b")
    );
}

#[test]
fn mqtt_3_14_2_1_disconnect_reasons_come_from_the_disconnect_table() {
    let (mut client, _input, mut out) = connected_client(V5);
    // 0x91 (Packet identifier in use) is not a DISCONNECT code: refused, nothing changes.
    assert!(matches!(
        client.disconnect(Instant::ZERO, ReasonCode::PacketIdentifierInUse),
        Err(Error::Codec(mqtt_codec::Error::InvalidReasonCode { .. }))
    ));
    assert!(client.is_connected());
    // A server told to disconnect with such a code says Unspecified error on the wire.
    let (mut server, _) = accepted_server(V5);
    while let Ok(Some(_)) = server.poll_transmit(Instant::ZERO, &mut out) {}
    server.disconnect(Instant::ZERO, ReasonCode::GrantedQoS1);
    let n = server
        .poll_transmit(Instant::ZERO, &mut out)
        .unwrap()
        .unwrap();
    assert_eq!(out[..n], [0xE0, 0x01, 0x80]);
}

/// One PUBACK, PUBREC, PUBREL or PUBCOMP (`first_byte` 0x40, 0x50, 0x62, 0x70) for `id`.
fn ack_frame(first_byte: u8, id: mqtt_codec::PacketId) -> [u8; 4] {
    let [hi, lo] = id.get().to_be_bytes();
    [first_byte, 0x02, hi, lo]
}

/// Publishes and acknowledges one QoS 1 message at a time, `n` times: a walk through the
/// identifier space. Returns the identifiers the messages took.
fn churn_client_ids(
    client: &mut Client,
    input: &mut BytesMut,
    out: &mut [u8],
    n: usize,
) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let id = client
                .publish(Instant::ZERO, msg("c", "", QoS::AtLeastOnce))
                .unwrap()
                .unwrap();
            client.poll_transmit(Instant::ZERO, out).unwrap().unwrap();
            input.extend_from_slice(&ack_frame(0x40, id));
            client.handle_input(Instant::ZERO, input).unwrap();
            while client.poll_event().is_some() {}
            id.get()
        })
        .collect()
}

/// The same walk for a server delivering QoS 1 messages.
fn churn_server_ids(
    server: &mut ServerSession,
    input: &mut BytesMut,
    out: &mut [u8],
    n: usize,
) -> Vec<u16> {
    (0..n)
        .map(|_| {
            let id = server
                .deliver(Instant::ZERO, msg("c", "", QoS::AtLeastOnce), &[])
                .unwrap()
                .unwrap();
            server.poll_transmit(Instant::ZERO, out).unwrap().unwrap();
            input.extend_from_slice(&ack_frame(0x40, id));
            server.handle_input(Instant::ZERO, input).unwrap();
            while server.poll_event().is_some() {}
            id.get()
        })
        .collect()
}

/// What a side re-sent: PUBLISH (id, DUP) and PUBREL (id).
fn resent(frames: &[Vec<u8>], v: ProtocolVersion) -> Vec<(PacketType, mqtt_codec::PacketId, bool)> {
    decoded(frames, v)
        .into_iter()
        .filter_map(|p| match p {
            Packet::Publish(p) => Some((PacketType::Publish, p.packet_id().unwrap(), p.dup)),
            Packet::PubRel(r) => Some((PacketType::PubRel, r.packet_id, false)),
            Packet::ConnAck(_) => None,
            other => panic!("{other:?}"),
        })
        .collect()
}

#[test]
fn mqtt_2_3_1_3_a_client_resend_keeps_its_id_which_only_the_ack_frees() {
    let v = V4;
    let now = Instant::ZERO;
    let mut client = Client::new(keeping_session(v));
    let mut out = vec![0u8; 256];
    let mut input = BytesMut::new();
    let connack = |present| {
        Packet::ConnAck(mqtt_codec::ConnAck::new(present, ReasonCode::Success))
            .encode_to_vec(v)
            .unwrap()
    };
    client.connect(now).unwrap();
    client.poll_transmit(now, &mut out).unwrap().unwrap();
    input.extend_from_slice(&connack(false));
    client.handle_input(now, &mut input).unwrap();
    let one = client
        .publish(now, msg("t", "1", QoS::AtLeastOnce))
        .unwrap()
        .unwrap();
    let two = client
        .publish(now, msg("t", "2", QoS::ExactlyOnce))
        .unwrap()
        .unwrap();
    while let Ok(Some(_)) = client.poll_transmit(now, &mut out) {}
    // PUBREC for the QoS 2 one; its PUBREL goes out, and then the connection drops before
    // PUBACK and PUBCOMP.
    input.extend_from_slice(&ack_frame(0x50, two));
    client.handle_input(now, &mut input).unwrap();
    let n = client.poll_transmit(now, &mut out).unwrap().unwrap();
    assert_eq!(out[..n], ack_frame(0x62, two));
    client.handle_close(now);
    client.connect(now).unwrap();
    client.poll_transmit(now, &mut out).unwrap().unwrap();
    input.extend_from_slice(&connack(true));
    client.handle_input(now, &mut input).unwrap();
    let frames = frames(|out| client.poll_transmit(now, out));
    // The re-sent PUBLISH and PUBREL keep their identifiers.
    assert_eq!(
        resent(&frames, v),
        [
            (PacketType::Publish, one, true),
            (PacketType::PubRel, two, false)
        ]
    );
    // A SUBSCRIBE and an UNSUBSCRIBE waiting for their acks hold identifiers too.
    let sub = client
        .subscribe(now, &[("s", SubscriptionOptions::default())], None)
        .unwrap();
    let unsub = client.unsubscribe(now, &["s"]).unwrap();
    while let Ok(Some(_)) = client.poll_transmit(now, &mut out) {}
    let held = [one.get(), two.get(), sub.get(), unsub.get()];
    // A walk all the way round the identifier space never hands out one still held, the
    // QoS 2 one included although its PUBREC has arrived.
    let walk = churn_client_ids(&mut client, &mut input, &mut out, 65_535);
    assert!(walk.iter().all(|id| !held.contains(id)));
    // The acks arrive: PUBACK, PUBCOMP, SUBACK, UNSUBACK.
    input.extend_from_slice(&ack_frame(0x40, one));
    input.extend_from_slice(&ack_frame(0x70, two));
    input.extend_from_slice(
        &Packet::SubAck(mqtt_codec::SubAck::new(
            sub,
            mqtt_codec::List::new(&[ReasonCode::Success]),
        ))
        .encode_to_vec(v)
        .unwrap(),
    );
    input.extend_from_slice(
        &Packet::UnsubAck(mqtt_codec::UnsubAck::new(unsub, mqtt_codec::List::new(&[])))
            .encode_to_vec(v)
            .unwrap(),
    );
    client.handle_input(now, &mut input).unwrap();
    let events: Vec<_> = core::iter::from_fn(|| client.poll_event()).collect();
    assert_eq!(events.len(), 4, "{events:?}");
    // Now free: the next walk round hands every one of them out again.
    let walk = churn_client_ids(&mut client, &mut input, &mut out, 65_535);
    assert!(held.iter().all(|id| walk.contains(id)), "{held:?}");
}

#[test]
fn mqtt_2_3_1_4_a_server_resend_keeps_its_id_which_only_the_ack_frees() {
    let v = V4;
    let now = Instant::ZERO;
    let mut out = vec![0u8; 256];
    let mut input = BytesMut::new();
    let start = |session: SessionState, present: bool, input: &mut BytesMut| {
        let mut server = ServerSession::new(ServerConfig::default(), now);
        let mut c = mqtt_codec::Connect::new(v, "c");
        c.clean_start = false;
        input.extend_from_slice(&Packet::Connect(c).encode_to_vec(v).unwrap());
        server.handle_input(now, input).unwrap();
        let accept = Accept {
            session,
            session_present: present,
            ..Accept::default()
        };
        server.accept(now, accept).unwrap();
        server
    };
    let mut server = start(SessionState::default(), false, &mut input);
    let one = server
        .deliver(now, msg("t", "1", QoS::AtLeastOnce), &[])
        .unwrap()
        .unwrap();
    let two = server
        .deliver(now, msg("t", "2", QoS::ExactlyOnce), &[])
        .unwrap()
        .unwrap();
    let three = server
        .deliver(now, msg("t", "3", QoS::ExactlyOnce), &[])
        .unwrap()
        .unwrap();
    while let Ok(Some(_)) = server.poll_transmit(now, &mut out) {}
    input.extend_from_slice(&ack_frame(0x50, two));
    server.handle_input(now, &mut input).unwrap();
    let n = server.poll_transmit(now, &mut out).unwrap().unwrap();
    assert_eq!(out[..n], ack_frame(0x62, two));
    // The connection drops before PUBACK and PUBCOMP; the client comes back.
    server.handle_close(now);
    let mut server = start(server.into_session(), true, &mut input);
    let frames = frames(|out| server.poll_transmit(now, out));
    assert_eq!(
        resent(&frames, v),
        [
            (PacketType::Publish, one, true),
            (PacketType::PubRel, two, false),
            (PacketType::Publish, three, true)
        ]
    );
    // PUBREC for the third on this connection: its PUBREL goes out, the id stays held.
    input.extend_from_slice(&ack_frame(0x50, three));
    server.handle_input(now, &mut input).unwrap();
    let n = server.poll_transmit(now, &mut out).unwrap().unwrap();
    assert_eq!(out[..n], ack_frame(0x62, three));
    let held = [one.get(), two.get(), three.get()];
    let walk = churn_server_ids(&mut server, &mut input, &mut out, 65_535);
    assert!(walk.iter().all(|id| !held.contains(id)));
    input.extend_from_slice(&ack_frame(0x40, one));
    input.extend_from_slice(&ack_frame(0x70, two));
    input.extend_from_slice(&ack_frame(0x70, three));
    server.handle_input(now, &mut input).unwrap();
    assert!(server.session().is_empty());
    let walk = churn_server_ids(&mut server, &mut input, &mut out, 65_535);
    assert!(held.iter().all(|id| walk.contains(id)), "{held:?}");
}

#[test]
fn mqtt_4_9_0_2_a_resumed_session_resends_within_the_new_receive_maximum() {
    // Ten messages were in flight; the client comes back announcing Receive Maximum 3:
    // three go out again, each acknowledgement lets the next one go.
    let v = ProtocolVersion::V5;
    let now = Instant::ZERO;
    let mut input = BytesMut::new();
    let start = |session: SessionState, present: bool, input: &mut BytesMut, rm: u16| {
        let mut server = ServerSession::new(ServerConfig::default(), now);
        let mut c = mqtt_codec::Connect::new(v, "c");
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(60);
        c.properties.receive_maximum = core::num::NonZeroU16::new(rm);
        input.extend_from_slice(&Packet::Connect(c).encode_to_vec(v).unwrap());
        server.handle_input(now, input).unwrap();
        let accept = Accept {
            session,
            session_present: present,
            ..Accept::default()
        };
        server.accept(now, accept).unwrap();
        server
    };
    let mut server = start(SessionState::default(), false, &mut input, 100);
    for _ in 0..10 {
        server
            .deliver(now, msg("t", "m", QoS::AtLeastOnce), &[])
            .unwrap();
    }
    let sent = resent(&frames(|out| server.poll_transmit(now, out)), v);
    assert_eq!(sent.len(), 10);
    server.handle_close(now);
    let mut server = start(server.into_session(), true, &mut input, 3);
    let again = resent(&frames(|out| server.poll_transmit(now, out)), v);
    let ids = |f: &[(PacketType, mqtt_codec::PacketId, bool)]| {
        f.iter().map(|(_, id, _)| *id).collect::<Vec<_>>()
    };
    assert_eq!(ids(&again), ids(&sent[..3]), "only the new quota, in order");
    let mut all = again.clone();
    while all.len() < 10 {
        let (_, id, _) = all[all.len() - 3];
        input.extend_from_slice(&ack_frame(0x40, id));
        server.handle_input(now, &mut input).unwrap();
        let next = resent(&frames(|out| server.poll_transmit(now, out)), v);
        assert_eq!(next.len(), 1, "one acknowledgement, one more");
        all.extend(next);
    }
    // [MQTT-3.3.1-1] every one again with DUP; [MQTT-4.6.0-1] in the original order.
    assert!(all.iter().all(|(_, _, dup)| *dup));
    assert_eq!(ids(&all), ids(&sent));
}

#[test]
fn mqtt_4_8_0_2_an_error_in_inbound_packets_closes_the_connection() {
    // 3.1.1 server: a SUBACK from a client breaks the protocol. What came before it is
    // handled; nothing after it is read, and nothing more is sent (a 3.1.1 server has no
    // DISCONNECT): the adapter closes.
    let (mut server, mut input) = accepted_server(V4);
    let mut out = vec![0u8; 64];
    server
        .poll_transmit(Instant::ZERO, &mut out)
        .unwrap()
        .unwrap(); // CONNACK
    while server.poll_event().is_some() {}
    input.extend_from_slice(&publish_bytes(V4, 1, QoS::AtMostOnce, false));
    input.extend_from_slice(
        &Packet::SubAck(mqtt_codec::SubAck::new(
            mqtt_codec::PacketId::new(1).unwrap(),
            mqtt_codec::List::new(&[ReasonCode::Success]),
        ))
        .encode_to_vec(V4)
        .unwrap(),
    );
    input.extend_from_slice(&publish_bytes(V4, 2, QoS::AtLeastOnce, false));
    let e = server.handle_input(Instant::ZERO, &mut input).unwrap_err();
    assert_eq!(
        e,
        Error::Protocol(Violation::UnexpectedPacket(PacketType::SubAck))
    );
    let events: Vec<_> = core::iter::from_fn(|| server.poll_event()).collect();
    assert!(
        matches!(
            events[..],
            [
                Event::Message { .. },
                Event::Disconnected { by_peer: false, .. }
            ]
        ),
        "{events:?}"
    );
    assert_eq!(server.handle_input(Instant::ZERO, &mut input), Err(e));
    assert_eq!(server.poll_event(), None);
    assert_eq!(server.poll_transmit(Instant::ZERO, &mut out), Err(e));
    assert!(server.is_closed());
    // 3.1.1 client: a packet it cannot decode (a PUBLISH with QoS 3, caught in the fixed
    // header; one with a wildcard in its topic, caught in the body) ends the connection
    // with a DISCONNECT, then the error; a QoS 1 PUBLISH behind it is not acknowledged.
    for bad in [
        &[0x36, 0x03, 0x00, 0x01, b't'][..],
        &[0x30, 0x03, 0x00, 0x01, b'#'],
    ] {
        let (mut client, mut input, mut out) = connected_client(V4);
        input.extend_from_slice(bad);
        input.extend_from_slice(&publish_bytes(V4, 2, QoS::AtLeastOnce, false));
        let e = client.handle_input(Instant::ZERO, &mut input).unwrap_err();
        assert!(matches!(e, Error::Codec(_)), "{e:?}");
        assert!(!client.is_connected());
        let n = client
            .poll_transmit(Instant::ZERO, &mut out)
            .unwrap()
            .unwrap();
        assert_eq!(out[..n], [0xE0, 0x00]);
        assert_eq!(client.poll_transmit(Instant::ZERO, &mut out), Err(e));
        assert_eq!(client.handle_input(Instant::ZERO, &mut input), Err(e));
        assert!(core::iter::from_fn(|| client.poll_event())
            .all(|e| !matches!(e, Event::Message { .. })));
    }
}

#[test]
fn mqtt_3_1_2_30_an_authenticating_client_sends_only_auth_until_connack() {
    let config = ClientConfig {
        authentication: Some(("X".into(), None)),
        ..ClientConfig::new(V5, "c")
    };
    let mut client = Client::new(config);
    let now = Instant::ZERO;
    client.connect(now).unwrap();
    let mut out = vec![0u8; 256];
    let n = client.poll_transmit(now, &mut out).unwrap().unwrap();
    assert_eq!(out[0], 0x10, "CONNECT");
    let _ = n;
    // The application asks for everything it might before the CONNACK.
    client.publish(now, msg("t", "0", QoS::AtMostOnce)).unwrap();
    client
        .publish(now, msg("t", "1", QoS::AtLeastOnce))
        .unwrap();
    client
        .subscribe(now, &[("s", SubscriptionOptions::default())], None)
        .unwrap();
    client.unsubscribe(now, &["u"]).unwrap();
    client
        .auth(now, ReasonCode::ContinueAuthentication, None)
        .unwrap();
    let before = frames(|out| client.poll_transmit(now, out));
    assert_eq!(types(&before.concat(), V5), [PacketType::Auth]);
    // After CONNACK the rest goes.
    let connack = Packet::ConnAck(mqtt_codec::ConnAck::new(false, ReasonCode::Success));
    let mut input = BytesMut::from(&connack.encode_to_vec(V5).unwrap()[..]);
    client.handle_input(now, &mut input).unwrap();
    let after = frames(|out| client.poll_transmit(now, out));
    let mut after = types(&after.concat(), V5);
    after.sort_by_key(|t| *t as u8);
    assert_eq!(
        after,
        [
            PacketType::Publish,
            PacketType::Publish,
            PacketType::Subscribe,
            PacketType::Unsubscribe
        ]
    );
}

#[test]
fn mqtt_4_3_3_7_a_sent_qos_2_message_does_not_expire() {
    // Two QoS 2 messages with a 5 s expiry: one sent and waiting for PUBREC, one past PUBREC
    // with its PUBREL sent. The connection drops, and the client is back 30 s later.
    let v = V5;
    let mut client = Client::new(keeping_session(v));
    let mut out = vec![0u8; 256];
    let mut input = BytesMut::new();
    let connack = |present| {
        Packet::ConnAck(mqtt_codec::ConnAck::new(present, ReasonCode::Success))
            .encode_to_vec(v)
            .unwrap()
    };
    let t0 = Instant::ZERO;
    client.connect(t0).unwrap();
    client.poll_transmit(t0, &mut out).unwrap().unwrap();
    input.extend_from_slice(&connack(false));
    client.handle_input(t0, &mut input).unwrap();
    let mut ids = Vec::new();
    for payload in ["a", "b"] {
        let mut m = msg("t", payload, QoS::ExactlyOnce);
        m.properties_mut().message_expiry_interval = Some(5);
        ids.push(client.publish(t0, m).unwrap().unwrap());
    }
    let (a, b) = (ids[0], ids[1]);
    while let Ok(Some(_)) = client.poll_transmit(t0, &mut out) {}
    input.extend_from_slice(&ack_frame(0x50, b));
    client.handle_input(t0, &mut input).unwrap();
    client.poll_transmit(t0, &mut out).unwrap().unwrap(); // PUBREL b
    let t1 = Instant::from_millis(30_000);
    client.handle_close(t1);
    client.connect(t1).unwrap();
    client.poll_transmit(t1, &mut out).unwrap().unwrap();
    input.extend_from_slice(&connack(true));
    client.handle_input(t1, &mut input).unwrap();
    client.handle_timeout(t1);
    let frames = frames(|out| client.poll_transmit(t1, out));
    assert_eq!(
        resent(&frames, v),
        [
            (PacketType::Publish, a, true),
            (PacketType::PubRel, b, false)
        ]
    );
    // Both finish; nothing is dropped.
    input.extend_from_slice(&ack_frame(0x50, a));
    input.extend_from_slice(&ack_frame(0x70, b));
    client.handle_input(t1, &mut input).unwrap();
    let n = client.poll_transmit(t1, &mut out).unwrap().unwrap();
    assert_eq!(out[..n], ack_frame(0x62, a));
    input.extend_from_slice(&ack_frame(0x70, a));
    client.handle_input(t1, &mut input).unwrap();
    let events: Vec<_> = core::iter::from_fn(|| client.poll_event()).collect();
    let acked: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Event::Acknowledged {
                packet_id,
                reason: ReasonCode::Success,
                ..
            } => Some(*packet_id),
            Event::Dropped { .. } | Event::SessionLost { .. } => panic!("{e:?}"),
            _ => None,
        })
        .collect();
    assert_eq!(acked, [b, a]);
    assert!(client.session().is_empty());
}

#[test]
fn mqtt_4_3_3_13_a_qos_2_receiver_finishes_an_expired_message() {
    // Server to client: the message expires (1 s) while the client's application holds
    // its acknowledgement. [MQTT-4.3.3-7] the server, having sent the PUBLISH, keeps it;
    // the client still answers PUBREC, then PUBCOMP to the PUBREL.
    let mut p = Pair::new(
        ClientConfig {
            manual_acks: true,
            ..ClientConfig::new(V5, "c1")
        },
        ServerConfig::default(),
    );
    p.drive();
    let mut m = msg("t", "x", QoS::ExactlyOnce);
    m.properties_mut().message_expiry_interval = Some(1);
    let id = p.server.deliver(p.now, m, &[]).unwrap().unwrap();
    p.drive();
    assert_eq!(p.client_messages(), [b"x".to_vec()]);
    p.advance(10_000);
    assert!(p.client.ack(p.now, id));
    p.drive();
    let client_acks: Vec<_> = decoded(&p.client_frames, V5)
        .into_iter()
        .filter_map(|p| match p {
            Packet::PubRec(a) => Some((PacketType::PubRec, a.packet_id, a.reason_code)),
            Packet::PubComp(a) => Some((PacketType::PubComp, a.packet_id, a.reason_code)),
            _ => None,
        })
        .collect();
    assert_eq!(
        client_acks,
        [
            (PacketType::PubRec, id, ReasonCode::Success),
            (PacketType::PubComp, id, ReasonCode::Success)
        ]
    );
    assert!(p.server.session().is_empty() && p.client.session().is_empty());
    // Client to server: the PUBREL comes 10 s after a PUBLISH that expired after 1 s.
    let (mut server, mut input) = accepted_server(V5);
    let mut out = vec![0u8; 64];
    while let Ok(Some(_)) = server.poll_transmit(Instant::ZERO, &mut out) {}
    let mut publish = mqtt_codec::Publish::new(
        Topic::new("t").unwrap(),
        b"x",
        mqtt_codec::QosPid::ExactlyOnce(mqtt_codec::PacketId::new(7).unwrap()),
    );
    publish.properties.message_expiry_interval = Some(1);
    input.extend_from_slice(&Packet::Publish(publish).encode_to_vec(V5).unwrap());
    server.handle_input(Instant::ZERO, &mut input).unwrap();
    let n = server
        .poll_transmit(Instant::ZERO, &mut out)
        .unwrap()
        .unwrap();
    assert_eq!(out[..n], [0x50, 0x02, 0x00, 0x07]);
    let later = Instant::from_millis(10_000);
    server.handle_timeout(later);
    input.extend_from_slice(&[0x62, 0x02, 0x00, 0x07]);
    server.handle_input(later, &mut input).unwrap();
    let n = server.poll_transmit(later, &mut out).unwrap().unwrap();
    assert_eq!(out[..n], [0x70, 0x02, 0x00, 0x07]);
    assert!(server.session().is_empty());
}

#[test]
fn mqtt_4_3_3_9_after_a_failed_pubrec_the_id_is_a_new_message() {
    let mut server = ServerSession::new(
        ServerConfig {
            manual_acks: true,
            ..ServerConfig::default()
        },
        Instant::ZERO,
    );
    let now = Instant::ZERO;
    let mut input = BytesMut::from(
        &Packet::Connect(mqtt_codec::Connect::new(V5, "c"))
            .encode_to_vec(V5)
            .unwrap()[..],
    );
    server.handle_input(now, &mut input).unwrap();
    server.accept(now, Accept::default()).unwrap();
    let mut out = vec![0u8; 64];
    while let Ok(Some(_)) = server.poll_transmit(now, &mut out) {}
    while server.poll_event().is_some() {}
    let id = mqtt_codec::PacketId::new(5).unwrap();
    input.extend_from_slice(&publish_bytes(V5, 5, QoS::ExactlyOnce, false));
    server.handle_input(now, &mut input).unwrap();
    assert_eq!(messages(&mut server), 1);
    // The application refuses it: PUBREC 0x87.
    assert!(server.ack(now, id, ReasonCode::NotAuthorized));
    let n = server.poll_transmit(now, &mut out).unwrap().unwrap();
    assert_eq!(out[..n], [0x50, 0x03, 0x00, 0x05, 0x87]);
    // For the client the message is done ([MQTT-4.4.0-2]); it sends a new one with the
    // same identifier, which is delivered and acknowledged for itself.
    input.extend_from_slice(&publish_bytes(V5, 5, QoS::ExactlyOnce, false));
    server.handle_input(now, &mut input).unwrap();
    assert_eq!(messages(&mut server), 1, "the new message is delivered");
    assert!(server.ack(now, id, ReasonCode::Success));
    let n = server.poll_transmit(now, &mut out).unwrap().unwrap();
    assert_eq!(out[..n], [0x50, 0x02, 0x00, 0x05]);
}

#[test]
fn mqtt_3_1_2_29_no_problem_information_on_other_packets_when_not_requested() {
    // A client with Request Problem Information 0 and an authentication method; the
    // server refuses some of what it asks, which is where diagnostics would go.
    let now = Instant::ZERO;
    let mut server = ServerSession::new(
        ServerConfig {
            manual_acks: true,
            ..ServerConfig::default()
        },
        now,
    );
    let mut c = mqtt_codec::Connect::new(V5, "c");
    c.properties.request_problem_information = Some(false);
    c.properties.authentication_method = Some("X");
    let mut input = BytesMut::from(&Packet::Connect(c).encode_to_vec(V5).unwrap()[..]);
    server.handle_input(now, &mut input).unwrap();
    let mut sent = Vec::new();
    server
        .auth(now, ReasonCode::ContinueAuthentication, None)
        .unwrap();
    sent.extend(frames(|out| server.poll_transmit(now, out)));
    let auth = Packet::Auth(mqtt_codec::Auth {
        reason_code: ReasonCode::ContinueAuthentication,
        properties: mqtt_codec::AuthProperties {
            authentication_method: Some("X"),
            ..Default::default()
        },
    });
    input.extend_from_slice(&auth.encode_to_vec(V5).unwrap());
    server.handle_input(now, &mut input).unwrap();
    server.accept(now, Accept::default()).unwrap();
    let pid = |n| mqtt_codec::PacketId::new(n).unwrap();
    for (id, qos) in [
        (1, QoS::AtLeastOnce),
        (2, QoS::ExactlyOnce),
        (3, QoS::ExactlyOnce),
    ] {
        input.extend_from_slice(&publish_bytes(V5, id, qos, false));
    }
    let subs = [
        mqtt_codec::Subscription {
            filter: "a",
            options: SubscriptionOptions::default(),
        },
        mqtt_codec::Subscription {
            filter: "b",
            options: SubscriptionOptions::default(),
        },
    ];
    input.extend_from_slice(
        &Packet::Subscribe(mqtt_codec::Subscribe::new(
            pid(4),
            mqtt_codec::List::new(&subs),
        ))
        .encode_to_vec(V5)
        .unwrap(),
    );
    input.extend_from_slice(
        &Packet::Unsubscribe(mqtt_codec::Unsubscribe::new(
            pid(5),
            mqtt_codec::List::new(&["z"]),
        ))
        .encode_to_vec(V5)
        .unwrap(),
    );
    server.handle_input(now, &mut input).unwrap();
    assert!(server.ack(now, pid(1), ReasonCode::NotAuthorized));
    assert!(server.ack(now, pid(2), ReasonCode::QuotaExceeded));
    assert!(server.ack(now, pid(3), ReasonCode::Success));
    server
        .suback(
            now,
            pid(4),
            vec![ReasonCode::Success, ReasonCode::NotAuthorized],
        )
        .unwrap();
    server
        .unsuback(now, pid(5), vec![ReasonCode::NoSubscriptionExisted])
        .unwrap();
    let out_id = server
        .deliver(now, msg("t", "x", QoS::ExactlyOnce), &[])
        .unwrap()
        .unwrap();
    sent.extend(frames(|out| server.poll_transmit(now, out)));
    // PUBREL for 3 and an unknown 9 (PUBCOMP 0x92); PUBREC for the server's message.
    input.extend_from_slice(&ack_frame(0x62, pid(3)));
    input.extend_from_slice(&ack_frame(0x62, pid(9)));
    input.extend_from_slice(&ack_frame(0x50, out_id));
    server.handle_input(now, &mut input).unwrap();
    sent.extend(frames(|out| server.poll_transmit(now, out)));
    let mut seen = Vec::new();
    for p in decoded(&sent, V5) {
        let (reason_string, user_properties_empty) = match &p {
            Packet::Publish(_) | Packet::ConnAck(_) | Packet::Disconnect(_) => continue,
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => (
                a.properties.reason_string,
                a.properties.user_properties.is_empty(),
            ),
            Packet::SubAck(a) => (
                a.properties.reason_string,
                a.properties.user_properties.is_empty(),
            ),
            Packet::UnsubAck(a) => (
                a.properties.reason_string,
                a.properties.user_properties.is_empty(),
            ),
            Packet::Auth(a) => (
                a.properties.reason_string,
                a.properties.user_properties.is_empty(),
            ),
            other => panic!("{other:?}"),
        };
        assert_eq!(
            (reason_string, user_properties_empty),
            (None, true),
            "{p:?}"
        );
        seen.push(p.packet_type());
    }
    // Every kind the server sends other than those three was looked at.
    seen.sort_by_key(|t| *t as u8);
    assert_eq!(
        seen,
        [
            PacketType::PubAck,
            PacketType::PubRec,
            PacketType::PubRec,
            PacketType::PubRel,
            PacketType::PubComp,
            PacketType::PubComp,
            PacketType::SubAck,
            PacketType::UnsubAck,
            PacketType::Auth
        ]
    );
}

#[test]
fn mqtt_3_3_4_4_deliver_keeps_every_subscription_identifier() {
    // [MQTT-3.3.4-4] [MQTT-3.3.4-5] the broker found seven matching subscriptions with
    // identifiers: the PUBLISH carries all seven, and the client reports all seven.
    let mut p = Pair::new(ClientConfig::new(V5, "c1"), ServerConfig::default());
    p.drive();
    let ids: Vec<SubscriptionId> = (1..=7)
        .map(|i| SubscriptionId::new(i * 100).unwrap())
        .collect();
    p.server
        .deliver(
            p.now,
            Message::new(TopicBuf::from_static("t").unwrap(), "x", QoS::AtLeastOnce),
            &ids,
        )
        .unwrap();
    p.drive();
    let got: Vec<Vec<SubscriptionId>> = p
        .client_events
        .iter()
        .filter_map(|e| match e {
            Event::Message { message, .. } => {
                Some(message.properties().subscription_identifiers.to_vec())
            }
            _ => None,
        })
        .collect();
    assert_eq!(got, [ids]);
}

#[test]
fn subscription_id_list_spills_past_four_and_compares_by_content() {
    let ids: Vec<SubscriptionId> = (1..=9).map(|i| SubscriptionId::new(i).unwrap()).collect();
    let mut list = SubscriptionIdList::new();
    for (n, id) in ids.iter().enumerate() {
        list.push(*id);
        assert_eq!(list.as_slice(), &ids[..=n]);
    }
    assert_eq!(SubscriptionIdList::from(&ids[..]), list);
    assert_eq!(ids.iter().copied().collect::<SubscriptionIdList>(), list);
    list.clear();
    assert!(list.is_empty());
    assert_eq!(list, SubscriptionIdList::default());
    // No larger than the four-entry array it replaced.
    assert!(core::mem::size_of::<SubscriptionIdList>() <= 24);
}

#[test]
fn mqtt_3_1_2_28_response_information_only_when_requested() {
    let config = ServerConfig {
        response_information: Some(Utf8Bytes::from("responses/c/")),
        ..ServerConfig::default()
    };
    let connack = |request: Option<bool>, version: ProtocolVersion| {
        let mut server = ServerSession::new(config.clone(), Instant::ZERO);
        let mut c = mqtt_codec::Connect::new(version, "c");
        c.properties.request_response_information = request;
        let mut input = BytesMut::from(&Packet::Connect(c).encode_to_vec(version).unwrap()[..]);
        server.handle_input(Instant::ZERO, &mut input).unwrap();
        server.accept(Instant::ZERO, Accept::default()).unwrap();
        frames(|out| server.poll_transmit(Instant::ZERO, out))
            .into_iter()
            .next()
            .unwrap()
    };
    let info = |bytes: &[u8]| match decode(bytes, &DecodeOptions::new(V5)) {
        Ok(Status::Complete {
            packet: Packet::ConnAck(a),
            ..
        }) => a
            .properties
            .response_information
            .map(alloc::string::String::from),
        other => panic!("{other:?}"),
    };
    // Requested: the configured Response Information.
    assert_eq!(
        info(&connack(Some(true), V5)).as_deref(),
        Some("responses/c/")
    );
    // [MQTT-3.1.2-28] not requested (0, or absent, which means 0): none.
    assert_eq!(info(&connack(Some(false), V5)), None);
    assert_eq!(info(&connack(None, V5)), None);
    // 3.1.1 has no properties at all.
    assert_eq!(connack(None, V4), [0x20, 0x02, 0x00, 0x00]);
}

// ---- Diagnostics (Reason String, User Properties) and the client's Maximum Packet Size --

/// The frames a 5.0 server sends when the application answers with `packet_type`
/// carrying `diagnostics`, to a client whose Maximum Packet Size is `max` (and whose
/// Request Problem Information is `problem_info`); the rest of each exchange is driven
/// with plain calls.
fn answered_with(
    packet_type: PacketType,
    max: u32,
    problem_info: bool,
    diagnostics: Diagnostics,
) -> Vec<Vec<u8>> {
    use mqtt_codec::{List, PubAck, Subscribe, Subscription, Unsubscribe};
    let now = Instant::ZERO;
    let id = mqtt_codec::PacketId::new(7).unwrap();
    let mut server = ServerSession::new(
        ServerConfig {
            manual_acks: true,
            ..ServerConfig::default()
        },
        now,
    );
    let mut c = mqtt_codec::Connect::new(V5, "c");
    c.properties.maximum_packet_size = core::num::NonZeroU32::new(max);
    c.properties.request_problem_information = Some(problem_info);
    if packet_type == PacketType::Auth {
        c.properties.authentication_method = Some("X");
    }
    let mut input = BytesMut::from(&Packet::Connect(c).encode_to_vec(V5).unwrap()[..]);
    server.handle_input(now, &mut input).unwrap();
    match packet_type {
        PacketType::ConnAck => {
            server
                .accept_with(now, Accept::default(), diagnostics)
                .unwrap();
            return frames(|out| server.poll_transmit(now, out));
        }
        PacketType::Auth => {
            server
                .auth_with(now, ReasonCode::ContinueAuthentication, None, diagnostics)
                .unwrap();
            return frames(|out| server.poll_transmit(now, out));
        }
        _ => {}
    }
    server.accept(now, Accept::default()).unwrap();
    frames(|out| server.poll_transmit(now, out));
    let feed = |server: &mut ServerSession, p: Packet<'_>| {
        let mut input = BytesMut::from(&p.encode_to_vec(V5).unwrap()[..]);
        server.handle_input(now, &mut input).unwrap();
    };
    match packet_type {
        PacketType::PubAck | PacketType::PubRec => {
            let qos = if packet_type == PacketType::PubAck {
                mqtt_codec::QosPid::AtLeastOnce(id)
            } else {
                mqtt_codec::QosPid::ExactlyOnce(id)
            };
            let p = mqtt_codec::Publish::new(Topic::new("t").unwrap(), b"x", qos);
            feed(&mut server, Packet::Publish(p));
            let code = ReasonCode::NoMatchingSubscribers;
            assert!(server.ack_with(now, id, code, diagnostics).unwrap());
        }
        PacketType::PubComp => {
            let qos = mqtt_codec::QosPid::ExactlyOnce(id);
            let p = mqtt_codec::Publish::new(Topic::new("t").unwrap(), b"x", qos);
            feed(&mut server, Packet::Publish(p));
            assert!(server.ack(now, id, ReasonCode::Success));
            frames(|out| server.poll_transmit(now, out));
            server
                .attach_diagnostics(PacketType::PubComp, id, diagnostics)
                .unwrap();
            feed(&mut server, Packet::PubRel(PubAck::new(id)));
        }
        PacketType::PubRel => {
            let m = Message::new(TopicBuf::from_static("t").unwrap(), "x", QoS::ExactlyOnce);
            let out_id = server.deliver(now, m, &[]).unwrap().unwrap();
            frames(|out| server.poll_transmit(now, out));
            server
                .attach_diagnostics(PacketType::PubRel, out_id, diagnostics)
                .unwrap();
            feed(&mut server, Packet::PubRec(PubAck::new(out_id)));
        }
        PacketType::SubAck => {
            let filters = [Subscription {
                filter: "a/#",
                options: SubscriptionOptions::default(),
            }];
            feed(
                &mut server,
                Packet::Subscribe(Subscribe::new(id, List::new(&filters))),
            );
            server
                .suback_with(now, id, vec![ReasonCode::Success], diagnostics)
                .unwrap();
        }
        PacketType::UnsubAck => {
            let filters = ["a/#"];
            feed(
                &mut server,
                Packet::Unsubscribe(Unsubscribe::new(id, List::new(&filters))),
            );
            server
                .unsuback_with(
                    now,
                    id,
                    vec![ReasonCode::NoSubscriptionExisted],
                    diagnostics,
                )
                .unwrap();
        }
        PacketType::Disconnect => {
            server
                .disconnect_with(now, ReasonCode::ServerShuttingDown, diagnostics)
                .unwrap();
        }
        other => panic!("{other:?}"),
    }
    frames(|out| server.poll_transmit(now, out))
}

/// The Reason String and the number of User Properties of the packet of type `t` among
/// `sent`, and its size.
fn diagnostics_in(
    sent: &[Vec<u8>],
    t: PacketType,
) -> (Option<alloc::string::String>, usize, usize) {
    for f in sent {
        let Ok(Status::Complete { packet, .. }) = decode(f, &DecodeOptions::new(V5)) else {
            panic!("{f:?}")
        };
        let (rs, up) = match packet {
            Packet::PubAck(a) | Packet::PubRec(a) | Packet::PubRel(a) | Packet::PubComp(a) => {
                (a.properties.reason_string, a.properties.user_properties)
            }
            Packet::SubAck(a) => (a.properties.reason_string, a.properties.user_properties),
            Packet::UnsubAck(a) => (a.properties.reason_string, a.properties.user_properties),
            Packet::ConnAck(a) => (a.properties.reason_string, a.properties.user_properties),
            Packet::Disconnect(a) => (a.properties.reason_string, a.properties.user_properties),
            Packet::Auth(a) => (a.properties.reason_string, a.properties.user_properties),
            _ => continue,
        };
        if packet.packet_type() == t {
            return (
                rs.map(alloc::string::String::from),
                up.iter().count(),
                f.len(),
            );
        }
    }
    panic!("no {t:?} in {sent:?}")
}

/// Checks the Maximum Packet Size rule for the diagnostics of `t`: both properties when
/// they fit, the Reason String alone when the User Properties would not fit, neither when
/// the Reason String would not fit either; the packet itself is sent every time.
fn check_diagnostics_fit(t: PacketType) {
    let reason = "x".repeat(100);
    let full = || {
        Diagnostics::new()
            .with_reason_string(alloc::string::String::from(reason.as_str()))
            .unwrap()
            .with_user_properties(&[("k", "v"), ("why", "because")])
            .unwrap()
    };
    let reason_only = Diagnostics::new()
        .with_reason_string(alloc::string::String::from(reason.as_str()))
        .unwrap();
    let big = 1 << 20;
    let (rs, up, with_both) = diagnostics_in(&answered_with(t, big, true, full()), t);
    assert_eq!((rs.as_deref(), up), (Some(reason.as_str()), 2), "{t:?}");
    let (_, _, with_reason) = diagnostics_in(&answered_with(t, big, true, reason_only), t);
    let (_, _, bare) = diagnostics_in(&answered_with(t, big, true, Diagnostics::new()), t);
    assert!(bare < with_reason && with_reason < with_both);
    // Exactly at the limit: all of it.
    let max = with_both as u32;
    assert_eq!(
        diagnostics_in(&answered_with(t, max, true, full()), t),
        (Some(reason.clone()), 2, with_both)
    );
    // One byte less: the User Properties would exceed it, so they are left out.
    let max = with_both as u32 - 1;
    assert_eq!(
        diagnostics_in(&answered_with(t, max, true, full()), t),
        (Some(reason.clone()), 0, with_reason),
        "{t:?}"
    );
    // Room for neither: both left out, the packet still sent.
    let max = with_reason as u32 - 1;
    assert_eq!(
        diagnostics_in(&answered_with(t, max, true, full()), t),
        (None, 0, bare),
        "{t:?}"
    );
}

#[test]
fn mqtt_3_2_2_19_mqtt_3_2_2_20_connack_diagnostics_fit_the_maximum_packet_size() {
    check_diagnostics_fit(PacketType::ConnAck);
}

#[test]
fn mqtt_3_4_2_2_mqtt_3_4_2_3_puback_diagnostics_fit_the_maximum_packet_size() {
    check_diagnostics_fit(PacketType::PubAck);
}

#[test]
fn mqtt_3_5_2_2_mqtt_3_5_2_3_pubrec_diagnostics_fit_the_maximum_packet_size() {
    check_diagnostics_fit(PacketType::PubRec);
}

#[test]
fn mqtt_3_6_2_2_mqtt_3_6_2_3_pubrel_diagnostics_fit_the_maximum_packet_size() {
    check_diagnostics_fit(PacketType::PubRel);
}

#[test]
fn mqtt_3_7_2_2_mqtt_3_7_2_3_pubcomp_diagnostics_fit_the_maximum_packet_size() {
    check_diagnostics_fit(PacketType::PubComp);
}

#[test]
fn mqtt_3_9_2_1_mqtt_3_9_2_2_suback_diagnostics_fit_the_maximum_packet_size() {
    check_diagnostics_fit(PacketType::SubAck);
}

#[test]
fn mqtt_3_11_2_1_mqtt_3_11_2_2_unsuback_diagnostics_fit_the_maximum_packet_size() {
    check_diagnostics_fit(PacketType::UnsubAck);
}

#[test]
fn mqtt_3_14_2_3_mqtt_3_14_2_4_disconnect_diagnostics_fit_the_maximum_packet_size() {
    check_diagnostics_fit(PacketType::Disconnect);
}

#[test]
fn mqtt_3_15_2_2_mqtt_3_15_2_3_auth_diagnostics_fit_the_maximum_packet_size() {
    check_diagnostics_fit(PacketType::Auth);
}

#[test]
fn mqtt_3_1_2_29_diagnostics_only_on_connack_and_disconnect_without_problem_information() {
    let d = || {
        Diagnostics::new()
            .with_reason_string("why")
            .unwrap()
            .with_user_properties(&[("k", "v")])
            .unwrap()
    };
    let big = 1 << 20;
    for t in [
        PacketType::PubAck,
        PacketType::PubRec,
        PacketType::PubRel,
        PacketType::PubComp,
        PacketType::SubAck,
        PacketType::UnsubAck,
        PacketType::Auth,
    ] {
        let (rs, up, _) = diagnostics_in(&answered_with(t, big, false, d()), t);
        assert_eq!((rs, up), (None, 0), "{t:?}");
        let (rs, up, _) = diagnostics_in(&answered_with(t, big, true, d()), t);
        assert_eq!((rs.as_deref(), up), (Some("why"), 1), "{t:?}");
    }
    for t in [PacketType::ConnAck, PacketType::Disconnect] {
        let (rs, up, _) = diagnostics_in(&answered_with(t, big, false, d()), t);
        assert_eq!((rs.as_deref(), up), (Some("why"), 1), "{t:?}");
    }
}

#[test]
fn diagnostics_that_no_packet_could_carry_are_refused_up_front() {
    assert!(Diagnostics::new().with_reason_string("a\0b").is_err());
    assert!(Diagnostics::new()
        .with_user_properties(&[("\0", "v")])
        .is_err());
    let huge = "x".repeat(70_000);
    assert!(Diagnostics::new().with_reason_string(huge).is_err());
}

#[test]
fn diagnostics_are_left_out_before_5_0() {
    let mut p = Pair::new(ClientConfig::new(V4, "c1"), ServerConfig::default());
    p.auto_accept = false;
    p.drive();
    p.server
        .reject_with(
            p.now,
            ReasonCode::NotAuthorized,
            Diagnostics::new().with_reason_string("no").unwrap(),
        )
        .unwrap();
    let sent = frames(|out| p.server.poll_transmit(p.now, out));
    assert_eq!(sent, [vec![0x20, 0x02, 0x00, 0x05]]);
}

/// The packet types in `bytes`, which must be whole packets from a client at `v`.
fn client_packet_types(v: ProtocolVersion, mut bytes: &[u8]) -> Vec<PacketType> {
    let opts = DecodeOptions::new(v).sender(mqtt_codec::Sender::Client);
    let mut types = Vec::new();
    while !bytes.is_empty() {
        match decode(bytes, &opts).unwrap() {
            Status::Complete { packet, consumed } => {
                types.push(packet.packet_type());
                bytes = &bytes[consumed..];
            }
            Status::Incomplete { .. } => panic!("a partial packet"),
        }
    }
    types
}

#[test]
fn a_subscribe_queued_by_an_event_handler_goes_out_in_the_same_drain() {
    // The trap: drain transmit, then events, then wait. The handler of `Connected`
    // subscribes, the SUBSCRIBE waits in the machine, and the program waits on a socket
    // that will never speak (the broker waits for the SUBSCRIBE): a silent hang.
    let mut client = Client::new(ClientConfig::new(V5, "c"));
    let now = Instant::ZERO;
    client.connect(now).unwrap();
    let mut out = vec![0u8; 256];
    let mut wire = Vec::new();
    while let Some(n) = client.poll_transmit(now, &mut out).unwrap() {
        wire.extend_from_slice(&out[..n]);
    }
    assert_eq!(client_packet_types(V5, &wire), [PacketType::Connect]);
    let connack = Packet::ConnAck(mqtt_codec::ConnAck::new(false, ReasonCode::Success));
    let mut input = BytesMut::from(&connack.encode_to_vec(V5).unwrap()[..]);
    client.handle_input(now, &mut input).unwrap();

    // The wrong order, reproduced: transmit first (nothing), then the events.
    assert_eq!(client.poll_transmit(now, &mut out), Ok(None));
    while let Some(e) = client.poll_event() {
        if let Event::Connected(_) = e {
            client
                .subscribe(now, &[("a/#", SubscriptionOptions::default())], None)
                .unwrap();
        }
    }
    // The machine does not lose it: the next poll_transmit, whatever queued it, hands it
    // out. The mistake is only waiting before asking.
    let n = client.poll_transmit(now, &mut out).unwrap().unwrap();
    assert_eq!(client_packet_types(V5, &out[..n]), [PacketType::Subscribe]);

    // The one-step drain cannot end with it pending: events come before bytes, and the
    // loop ends only when neither is left.
    let (mut client, _input, _) = connected_client(V5);
    client
        .publish(now, msg("t", "early", QoS::AtMostOnce))
        .unwrap();
    let mut wire = Vec::new();
    let mut events = 0;
    while let Some(o) = client.poll_output(now, &mut out).unwrap() {
        match o {
            Output::Event(Event::Connected(_)) => {
                events += 1;
                client
                    .subscribe(now, &[("a/#", SubscriptionOptions::default())], None)
                    .unwrap();
            }
            Output::Event(_) => events += 1,
            Output::Transmit(n) => wire.extend_from_slice(&out[..n]),
        }
    }
    assert_eq!(events, 1);
    assert_eq!(
        client_packet_types(V5, &wire),
        [PacketType::Subscribe, PacketType::Publish]
    );
    assert!(!client.has_events());
    assert_eq!(client.poll_transmit(now, &mut out), Ok(None));
}

#[test]
fn poll_transmit_batch_fills_the_buffer_with_whole_packets() {
    let now = Instant::ZERO;
    let (mut client, _input, _) = connected_client(V4);
    for i in 0..10 {
        client
            .publish(
                now,
                msg("t", if i % 2 == 0 { "x" } else { "yy" }, QoS::AtLeastOnce),
            )
            .unwrap();
    }
    // One PUBLISH here is 2 + 3 + 2 + payload bytes: 8 or 9.
    let mut big = vec![0u8; 4096];
    let n = client.poll_transmit_batch(now, &mut big).unwrap().unwrap();
    assert_eq!(
        client_packet_types(V4, &big[..n]),
        [PacketType::Publish; 10]
    );
    assert_eq!(n, 5 * 8 + 5 * 9);
    assert_eq!(client.poll_transmit_batch(now, &mut big), Ok(None));

    // A small buffer takes what fits whole; the rest waits, nothing is split or lost.
    let (mut client, _input, _) = connected_client(V4);
    for _ in 0..5 {
        client
            .publish(now, msg("t", "x", QoS::AtLeastOnce))
            .unwrap();
    }
    let mut small = vec![0u8; 20];
    let mut types = Vec::new();
    while let Some(n) = client.poll_transmit_batch(now, &mut small).unwrap() {
        assert_eq!(n, 16, "two 8-byte packets fit in 20 bytes, not three");
        types.extend(client_packet_types(V4, &small[..n]));
        if types.len() == 4 {
            break;
        }
    }
    let n = client
        .poll_transmit_batch(now, &mut small)
        .unwrap()
        .unwrap();
    assert_eq!(n, 8);
    assert_eq!(types.len() + 1, 5);

    // A first packet larger than the whole buffer is the caller's to fix, and stays queued.
    client
        .publish(now, msg("t", "a payload beyond 20 bytes", QoS::AtMostOnce))
        .unwrap();
    assert!(matches!(
        client.poll_transmit_batch(now, &mut small),
        Err(Error::Codec(mqtt_codec::Error::BufferTooSmall { .. }))
    ));
    assert!(client.poll_transmit_batch(now, &mut big).unwrap().is_some());
}

#[test]
fn public_types_stay_small() {
    // Rare fields (a will, 5.0 properties, which most messages lack) live behind a box:
    // an `Event` was 416 bytes and a `Message` 240 while they sat inline, and every
    // queued delivery, message in flight and event carried that.
    use core::mem::size_of;
    assert!(
        size_of::<Message>() <= 80,
        "Message: {}",
        size_of::<Message>()
    );
    assert!(size_of::<Event>() <= 112, "Event: {}", size_of::<Event>());
    assert!(
        size_of::<Output>() <= 112,
        "Output: {}",
        size_of::<Output>()
    );
    // 8 bytes of each are the storage tag a durable broker needs to name a queued message
    // (`ServerSession::deliver_tagged`, issue #13): 120 and 128 before it.
    assert!(
        size_of::<Outgoing>() <= 128,
        "Outgoing: {}",
        size_of::<Outgoing>()
    );
    assert!(
        size_of::<Inflight>() <= 136,
        "Inflight: {}",
        size_of::<Inflight>()
    );
}

#[test]
fn properties_take_memory_only_when_a_message_has_some() {
    let mut m = msg("t", "x", QoS::AtLeastOnce);
    assert!(m.properties().is_empty());
    // Setting empty properties keeps the message as it was, and equal to one without.
    m.set_properties(MessageProperties::new());
    assert_eq!(m, msg("t", "x", QoS::AtLeastOnce));
    m.properties_mut().message_expiry_interval = Some(5);
    assert_eq!(m.properties().message_expiry_interval, Some(5));
    assert_ne!(m, msg("t", "x", QoS::AtLeastOnce));
    // Emptied again, it compares by value.
    m.properties_mut().message_expiry_interval = None;
    assert_eq!(m, msg("t", "x", QoS::AtLeastOnce));
}

#[test]
fn an_unencodable_suback_or_unsuback_is_refused_not_queued() {
    // Found by the session fuzzer: an UNSUBACK without codes at 5.0 was queued, failed
    // every poll_transmit with a non-sticky error, and wedged the connection.
    let now = Instant::ZERO;
    let (mut server, _input) = accepted_server(V5);
    let mut out = vec![0u8; 256];
    while server.poll_transmit(now, &mut out).unwrap().is_some() {}
    let id = mqtt_codec::PacketId::new(1).unwrap();
    // [MQTT-3.11.3-1] one code per filter: none is no UNSUBACK.
    assert!(matches!(
        server.unsuback(now, id, vec![]),
        Err(Error::Codec(mqtt_codec::Error::EmptyPayload { .. }))
    ));
    // [MQTT-3.9.3-2] a code SUBACK does not have.
    assert!(server
        .suback(now, id, vec![ReasonCode::DisconnectWithWill])
        .is_err());
    assert!(server.suback(now, id, vec![]).is_err());
    // Nothing was queued, and the connection goes on.
    assert_eq!(server.poll_transmit(now, &mut out), Ok(None));
    server
        .suback(now, id, vec![ReasonCode::GrantedQoS1])
        .unwrap();
    assert!(server.poll_transmit(now, &mut out).unwrap().is_some());
}
