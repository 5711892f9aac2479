//! A session snapshot survives a process restart: a client's `SessionState` holding QoS 1
//! and QoS 2 messages in both stages, a queue and incoming QoS 2 identifiers goes through
//! JSON, and a client restored from it completes every message against the server.
#![cfg(feature = "serde")]

use bytes::{Bytes, BytesMut};
use mqtt_codec::{ProtocolVersion, QoS, SubscriptionId};
use mqtt_state::{
    Accept, Client, ClientConfig, Event, Instant, Message, ServerConfig, ServerSession,
    SessionState, Stage, TopicBuf,
};

fn config() -> ClientConfig {
    let mut c = ClientConfig::new(ProtocolVersion::V5, "snap");
    c.clean_start = false;
    c.session_expiry_interval = 3600;
    c.keep_alive = 0;
    // Three in flight, so the fourth and fifth messages wait in the queue.
    c.max_inflight = 3;
    c
}

/// Everything one side has to send, concatenated.
fn drain_client(c: &mut Client, now: Instant) -> BytesMut {
    let mut out = [0u8; 4096];
    let mut buf = BytesMut::new();
    while let Some(n) = c.poll_transmit(now, &mut out).unwrap() {
        buf.extend_from_slice(&out[..n]);
    }
    buf
}

fn drain_server(s: &mut ServerSession, now: Instant) -> Vec<Vec<u8>> {
    let mut out = [0u8; 4096];
    let mut packets = Vec::new();
    while let Some(n) = s.poll_transmit(now, &mut out).unwrap() {
        packets.push(out[..n].to_vec());
    }
    packets
}

fn events_client(c: &mut Client) -> Vec<Event> {
    std::iter::from_fn(|| c.poll_event()).collect()
}

fn events_server(s: &mut ServerSession) -> Vec<Event> {
    std::iter::from_fn(|| s.poll_event()).collect()
}

/// Moves packets until both sides are quiet, accepting a CONNECT with `resume`.
fn run(c: &mut Client, s: &mut ServerSession, now: Instant, mut resume: Option<SessionState>) {
    let (mut ce, mut se) = (Vec::new(), Vec::new());
    loop {
        let mut c2s = drain_client(c, now);
        let mut moved = !c2s.is_empty();
        s.handle_input(now, &mut c2s).unwrap();
        for e in events_server(s) {
            if let Event::ConnectRequest(_) = e {
                let session = resume.take().unwrap_or_default();
                let accept = Accept {
                    session_present: true,
                    session,
                    ..Accept::default()
                };
                s.accept(now, accept).unwrap();
                s.handle_input(now, &mut c2s).unwrap();
            }
            se.push(e);
            moved = true;
        }
        for p in drain_server(s, now) {
            moved = true;
            c.handle_input(now, &mut BytesMut::from(&p[..])).unwrap();
        }
        let evs = events_client(c);
        moved |= !evs.is_empty();
        ce.extend(evs);
        if !moved {
            break;
        }
    }
    EVENTS.with(|e| e.borrow_mut().extend(ce.into_iter().map(|e| (true, e))));
    EVENTS.with(|e| e.borrow_mut().extend(se.into_iter().map(|e| (false, e))));
}

std::thread_local! {
    /// Every event: (from the client, event).
    static EVENTS: std::cell::RefCell<Vec<(bool, Event)>> = const { std::cell::RefCell::new(Vec::new()) };
}

fn take_events() -> Vec<(bool, Event)> {
    EVENTS.with(|e| std::mem::take(&mut *e.borrow_mut()))
}

#[test]
fn a_session_restored_from_json_completes_its_messages() {
    let now = Instant::from_millis(5_000);
    let mut client = Client::new(config());
    let mut server = ServerSession::new(ServerConfig::default(), now);
    client.connect(now).unwrap();
    run(&mut client, &mut server, now, None);
    assert!(client.is_connected());
    take_events();

    // The server delivers a QoS 2 message; the client's PUBREC is lost with the connection,
    // so its id stays in the client's incoming QoS 2 set.
    server
        .deliver(
            now,
            Message::new(
                TopicBuf::from_static("down/q2").unwrap(),
                "d",
                QoS::ExactlyOnce,
            ),
            &[],
        )
        .unwrap();
    for p in drain_server(&mut server, now) {
        client
            .handle_input(now, &mut BytesMut::from(&p[..]))
            .unwrap();
    }
    let _lost_pubrec = drain_client(&mut client, now);

    // Five messages: three go out, two wait behind max_inflight = 3.
    let mut q1 = Message::new(
        TopicBuf::from_static("up/q1").unwrap(),
        "one",
        QoS::AtLeastOnce,
    );
    q1.properties_mut().message_expiry_interval = Some(600);
    q1.properties_mut().content_type = Some("text/plain".into());
    q1.properties_mut()
        .set_user_properties(&[("k", "v")])
        .unwrap();
    let mut q2a = Message::new(
        TopicBuf::from_static("up/q2a").unwrap(),
        Bytes::from_static(b"two"),
        QoS::ExactlyOnce,
    );
    q2a.retain = true;
    let q2b = Message::new(
        TopicBuf::from_static("up/q2b").unwrap(),
        "three",
        QoS::ExactlyOnce,
    );
    let queued1 = Message::new(
        TopicBuf::from_static("up/q1b").unwrap(),
        "four",
        QoS::AtLeastOnce,
    );
    let queued0 = Message::new(
        TopicBuf::from_static("up/q0").unwrap(),
        "five",
        QoS::AtMostOnce,
    );
    let mut ids = Vec::new();
    for m in [q1, q2a, q2b, queued1, queued0] {
        ids.push(client.publish(now, m).unwrap());
    }
    let mut c2s = drain_client(&mut client, now);
    server.handle_input(now, &mut c2s).unwrap();
    let server_first = events_server(&mut server);
    assert_eq!(
        server_first
            .iter()
            .filter(|e| matches!(e, Event::Message { .. }))
            .count(),
        3
    );
    // Of the server's answers (PUBACK, PUBREC, PUBREC), only the last PUBREC arrives.
    let answers = drain_server(&mut server, now);
    assert_eq!(answers.len(), 3);
    client
        .handle_input(now, &mut BytesMut::from(&answers[2][..]))
        .unwrap();
    let _lost_pubrel = drain_client(&mut client, now);

    // The process stops. The server keeps its session; the client persists its own.
    client.handle_close(now);
    server.handle_close(now);
    let server_session = server.into_session();
    let state = client.into_session();
    let stages: Vec<(QoS, Stage)> = state
        .inflight
        .iter()
        .map(|f| (f.outgoing.message.qos, f.stage))
        .collect();
    assert_eq!(
        stages,
        [
            (QoS::AtLeastOnce, Stage::Published),
            (QoS::ExactlyOnce, Stage::Published),
            (QoS::ExactlyOnce, Stage::Released),
        ]
    );
    assert_eq!(state.queue.len(), 2);
    assert_eq!(state.incoming_qos2.len(), 1);

    let json = serde_json::to_string_pretty(&state).unwrap();
    let restored: SessionState = serde_json::from_str(&json).unwrap();
    assert_eq!(restored, state, "{json}");
    assert_eq!(
        restored.inflight[0]
            .outgoing
            .message
            .properties()
            .user_properties()
            .iter()
            .collect::<Vec<_>>(),
        [("k", "v")]
    );

    // Subscription identifiers round-trip too, and bad input is refused.
    let mut o = restored.queue[0].clone();
    o.subscription_ids.push(SubscriptionId::new(7).unwrap());
    let back: mqtt_state::Outgoing =
        serde_json::from_str(&serde_json::to_string(&o).unwrap()).unwrap();
    assert_eq!(back, o);
    // [MQTT-3.3.4-4] more than four (the old cap) round-trip as well, in order.
    for id in [9, 3, 268_435_455, 8, 2] {
        o.subscription_ids.push(SubscriptionId::new(id).unwrap());
    }
    assert_eq!(o.subscription_ids.len(), 6);
    let json_ids = serde_json::to_string(&o).unwrap();
    assert!(json_ids.contains("[7,9,3,268435455,8,2]"), "{json_ids}");
    let back: mqtt_state::Outgoing = serde_json::from_str(&json_ids).unwrap();
    assert_eq!(back, o);
    assert!(serde_json::from_str::<mqtt_state::Outgoing>(
        &json_ids.replace("268435455", "268435456")
    )
    .is_err());
    assert!(
        serde_json::from_str::<SessionState>(&json.replace("\"qos\": 2", "\"qos\": 3")).is_err()
    );
    // [MQTT-3.3.2-2] [MQTT-4.7.3-1] a snapshot is input: a topic that is not a valid name
    // is refused on the way in, so no message can hold one.
    assert!(json.contains("\"topic\": \"up/q2a\""), "{json}");
    for bad in ["up/+", "up/#", "", "up\\u0000"] {
        let edited = json.replace("\"topic\": \"up/q2a\"", &format!("\"topic\": \"{bad}\""));
        assert!(
            serde_json::from_str::<SessionState>(&edited).is_err(),
            "{bad}"
        );
    }

    // A new process: a client restored from the snapshot, and the server's session.
    let later = now + mqtt_state::Duration::from_secs(1);
    let mut client = Client::with_session(config(), restored);
    let mut server = ServerSession::new(ServerConfig::default(), later);
    client.connect(later).unwrap();
    run(&mut client, &mut server, later, Some(server_session));

    let events = take_events();
    let mut acked: Vec<_> = events
        .iter()
        .filter_map(|(from_client, e)| match e {
            Event::Acknowledged { packet_id, .. } if *from_client => Some(Some(*packet_id)),
            _ => None,
        })
        .collect();
    // (A PUBCOMP may overtake a PUBACK: only acknowledgements of one kind are ordered.)
    acked.sort();
    assert_eq!(acked, ids[..4], "every QoS 1/2 message completes");
    let received: Vec<(Bytes, bool)> = events
        .iter()
        .filter_map(|(from_client, e)| match e {
            Event::Message { message, dup, .. } if !from_client => {
                Some((message.payload.clone(), *dup))
            }
            _ => None,
        })
        .collect();
    // The QoS 1 message is delivered again (DUP), the QoS 2 ones are not; the queued ones
    // arrive for the first time.
    assert_eq!(
        received,
        [
            (Bytes::from_static(b"one"), true),
            (Bytes::from_static(b"four"), false),
            (Bytes::from_static(b"five"), false),
        ]
    );
    // The server's QoS 2 delivery completes too; the client does not deliver it twice.
    assert!(events
        .iter()
        .any(|(from_client, e)| !from_client && matches!(e, Event::Acknowledged { .. })));
    assert!(!events
        .iter()
        .any(|(from_client, e)| *from_client && matches!(e, Event::Message { .. })));
    assert!(client.session().is_empty(), "{:?}", client.session());
    assert!(server.session().is_empty(), "{:?}", server.session());
}
