//! mqtt-tokio's client against a real mosquitto on a free loopback port, over TCP, TLS and
//! WebSocket, across a broker restart, and at shutdown. Fails (does not skip) without
//! mosquitto.

mod support;

use std::collections::HashSet;

use mqtt_tokio::{tls_config, AsyncClient, Error, Options, QoS};
use support::mosquitto::{Auth, Listeners, Mosquitto};

fn payload(i: u32) -> Vec<u8> {
    i.to_be_bytes().to_vec()
}

fn index(p: &[u8]) -> u32 {
    u32::from_be_bytes(p.try_into().expect("4-byte payload"))
}

/// Subscribes, publishes `n` QoS 1 messages from another task and receives all of them;
/// returns once every index arrived (duplicates allowed for QoS 1) and the client
/// disconnected cleanly.
async fn round_trip(options: Options, n: u32) {
    let (client, mut incoming) = AsyncClient::connect(options).await.expect("connect");
    client
        .subscribe("t/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let publisher = client.clone();
    let sent = tokio::spawn(async move {
        let mut acks = Vec::new();
        for i in 0..n {
            let m = mqtt_tokio::Message::new(
                mqtt_tokio::TopicBuf::from_static("t/1").unwrap(),
                payload(i),
                QoS::AtLeastOnce,
            );
            acks.push(publisher.enqueue(m).await.expect("enqueue"));
        }
        for a in acks {
            a.await.expect("PUBACK");
        }
    });
    let mut seen = HashSet::new();
    while seen.len() < n as usize {
        let m = next(&mut incoming).await;
        assert_eq!(m.topic.as_str(), "t/1");
        seen.insert(index(&m.payload));
    }
    sent.await.expect("publisher task");
    client.disconnect().await.expect("clean disconnect");
}

/// The next message. A generous guard turns a lost message into a failure instead of a
/// hang; it measures nothing.
async fn next(incoming: &mut mqtt_tokio::Incoming) -> mqtt_tokio::Message {
    tokio::time::timeout(std::time::Duration::from_secs(60), incoming.recv())
        .await
        .expect("no message for 60 s: one was lost")
        .expect("the client is running")
}

fn local(broker_port: u16, id: &str) -> Options {
    Options::new(id, "127.0.0.1", broker_port)
}

#[tokio::test]
async fn qos1_thousand_messages_round_trip() {
    let m = Mosquitto::start();
    round_trip(local(m.port, "qos1"), 1000).await;
}

/// The README's example, line for line.
#[tokio::test]
async fn readme_example() -> Result<(), Error> {
    let m = Mosquitto::start();
    let port = m.port;
    // -- README begins
    let options = Options::new("readme", "127.0.0.1", port);
    let (client, mut incoming) = AsyncClient::connect(options).await?;
    client.subscribe("demo/#", QoS::AtLeastOnce).await?;
    let publisher = client.clone();
    tokio::spawn(async move {
        for i in 0..1000u32 {
            publisher
                .publish("demo/n", QoS::AtLeastOnce, i.to_string())
                .await?;
        }
        Ok::<_, mqtt_tokio::Error>(())
    });
    for _ in 0..1000 {
        let message = incoming.recv().await.expect("the client is running");
        println!("{}: {:?}", message.topic, message.payload);
    }
    client.disconnect().await?;
    // -- README ends
    Ok(())
}

#[tokio::test]
async fn qos2_exactly_once() {
    let m = Mosquitto::start();
    let (client, mut incoming) = AsyncClient::connect(local(m.port, "qos2")).await.unwrap();
    let granted = client.subscribe("q2/#", QoS::ExactlyOnce).await.unwrap();
    assert_eq!(granted as u8, 2, "granted QoS 2");
    let n = 300;
    let publisher = client.clone();
    let sender = tokio::spawn(async move {
        let mut acks = Vec::new();
        for i in 0..n {
            let m = mqtt_tokio::Message::new(
                mqtt_tokio::TopicBuf::from_static("q2/a").unwrap(),
                payload(i),
                QoS::ExactlyOnce,
            );
            acks.push(publisher.enqueue(m).await.unwrap());
        }
        for a in acks {
            let ack = a.await.expect("PUBCOMP");
            assert!(ack.packet_id.is_some());
        }
        // A sentinel after every PUBCOMP: everything before it has been routed.
        publisher
            .publish("q2/end", QoS::ExactlyOnce, Vec::new())
            .await
            .unwrap();
    });
    let mut seen = HashSet::new();
    loop {
        let m = next(&mut incoming).await;
        if m.topic.as_str() == "q2/end" {
            break;
        }
        assert_eq!(m.qos, QoS::ExactlyOnce);
        assert!(seen.insert(index(&m.payload)), "delivered twice");
    }
    sender.await.unwrap();
    assert_eq!(seen.len(), n as usize);
    client.disconnect().await.unwrap();
}

#[tokio::test]
async fn over_tls_with_the_given_ca() {
    let m = Mosquitto::with(
        Auth::Anonymous,
        Listeners {
            tls: true,
            ..Default::default()
        },
    );
    let tls = tls_config(Some(&m.ca_pem()), None).unwrap();
    let options = Options::new("tls", "localhost", m.tls_port.unwrap()).tls(tls);
    round_trip(options, 200).await;
}

#[tokio::test]
async fn over_tls_with_a_client_certificate() {
    let m = Mosquitto::with(
        Auth::Anonymous,
        Listeners {
            tls: true,
            client_cert: true,
            ..Default::default()
        },
    );
    let ca = m.ca_pem();
    // Without a certificate the broker ends the handshake.
    let tls = tls_config(Some(&ca), None).unwrap();
    let options = Options::new("no-cert", "localhost", m.tls_port.unwrap()).tls(tls);
    assert!(AsyncClient::connect(options).await.is_err());
    let (cert, key) = m.client_cert();
    let tls = tls_config(Some(&ca), Some((&cert, &key))).unwrap();
    let options = Options::new("cert", "localhost", m.tls_port.unwrap()).tls(tls);
    round_trip(options, 200).await;
}

#[tokio::test]
async fn tls_refuses_a_certificate_from_an_unknown_ca() {
    let m = Mosquitto::with(
        Auth::Anonymous,
        Listeners {
            tls: true,
            ..Default::default()
        },
    );
    // The Mozilla roots do not include the test CA.
    let tls = tls_config(None, None).unwrap();
    let options = Options::new("tls", "localhost", m.tls_port.unwrap()).tls(tls);
    assert!(matches!(
        AsyncClient::connect(options).await,
        Err(Error::Io(_))
    ));
}

#[tokio::test]
async fn over_websocket() {
    let m = Mosquitto::with(
        Auth::Anonymous,
        Listeners {
            websocket: true,
            ..Default::default()
        },
    );
    let options = Options::new("ws", "127.0.0.1", m.ws_port.unwrap()).websocket("/mqtt");
    round_trip(options, 500).await;
}

#[tokio::test]
async fn over_secure_websocket() {
    let m = Mosquitto::with(
        Auth::Anonymous,
        Listeners {
            websocket: true,
            tls: true,
            ..Default::default()
        },
    );
    let tls = tls_config(Some(&m.ca_pem()), None).unwrap();
    let options = Options::new("wss", "localhost", m.wss_port.unwrap())
        .tls(tls)
        .websocket("/mqtt");
    round_trip(options, 500).await;
}

#[tokio::test]
async fn refused_connection_is_an_error() {
    let m = Mosquitto::with(Auth::Nobody, Listeners::default());
    match AsyncClient::connect(local(m.port, "x")).await {
        Err(Error::Refused(code)) => assert!(code.is_error()),
        other => panic!("expected a refusal, got {:?}", other.map(|_| ())),
    }
}

/// mosquitto stops (writing its persistence file) and starts again while QoS 1 messages
/// are in flight both ways: with a persistent session every message arrives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_loses_no_qos1_message() {
    let mut m = Mosquitto::start();
    let n = 2000u32;
    let options = local(m.port, "restart").persistent_session(3600);
    let (client, mut incoming) = AsyncClient::connect(options).await.unwrap();
    client.subscribe("r/#", QoS::AtLeastOnce).await.unwrap();
    let publisher = client.clone();
    let sender = tokio::spawn(async move {
        let mut acks = Vec::new();
        for i in 0..n {
            let m = mqtt_tokio::Message::new(
                mqtt_tokio::TopicBuf::from_static("r/1").unwrap(),
                payload(i),
                QoS::AtLeastOnce,
            );
            acks.push(publisher.enqueue(m).await.unwrap());
        }
        for a in acks {
            a.await
                .expect("every message is acknowledged, across the restart");
        }
    });
    let mut seen = HashSet::new();
    let mut restarted = false;
    while seen.len() < n as usize {
        let msg = next(&mut incoming).await;
        seen.insert(index(&msg.payload));
        if !restarted && seen.len() >= 200 {
            restarted = true;
            tokio::task::block_in_place(|| m.restart());
        }
    }
    assert!(restarted);
    sender.await.unwrap();
    let status = client.status();
    assert!(status.connections >= 2, "reconnected: {status:?}");
    assert!(status.session_present, "the session was resumed");
    client.disconnect().await.unwrap();
}

#[tokio::test]
async fn clean_disconnect_is_ok() {
    let m = Mosquitto::start();
    let (client, _incoming) = AsyncClient::connect(local(m.port, "bye")).await.unwrap();
    let mut acks = Vec::new();
    for i in 0..50 {
        let msg = mqtt_tokio::Message::new(
            mqtt_tokio::TopicBuf::from_static("bye").unwrap(),
            payload(i),
            QoS::AtLeastOnce,
        );
        acks.push(client.enqueue(msg).await.unwrap());
    }
    // The disconnect waits for every message queued before it.
    client
        .disconnect()
        .await
        .expect("a clean close is not an error");
    for a in acks {
        a.await.expect("acknowledged before the DISCONNECT");
    }
    assert!(matches!(
        client.publish("bye", QoS::AtMostOnce, "late").await,
        Err(Error::Closed)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_reports_what_is_in_flight() {
    let mut m = Mosquitto::start();
    let (client, _incoming) = AsyncClient::connect(local(m.port, "gone")).await.unwrap();
    tokio::task::block_in_place(|| m.stop());
    let mut acks = Vec::new();
    for i in 0..5 {
        let msg = mqtt_tokio::Message::new(
            mqtt_tokio::TopicBuf::from_static("gone").unwrap(),
            payload(i),
            QoS::AtLeastOnce,
        );
        acks.push(client.enqueue(msg).await.unwrap());
    }
    match client.disconnect().await {
        Err(Error::Unfinished { messages }) => {
            let got: Vec<u32> = messages.iter().map(|m| index(&m.payload)).collect();
            assert_eq!(got, [0, 1, 2, 3, 4]);
        }
        other => panic!("expected the unfinished messages, got {other:?}"),
    }
    for a in acks {
        assert!(matches!(a.await, Err(Error::Closed)));
    }
}

#[tokio::test]
async fn a_wildcard_topic_is_refused_before_sending() {
    let m = Mosquitto::start();
    let (client, _incoming) = AsyncClient::connect(local(m.port, "wild")).await.unwrap();
    assert!(matches!(
        client.publish("a/+", QoS::AtLeastOnce, "x").await,
        Err(Error::Mqtt(_))
    ));
    client.disconnect().await.unwrap();
}

/// Stopping while the broker is away loses nothing when nothing is pending: `Ok`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disconnect_while_the_broker_is_down_with_nothing_pending_is_ok() {
    let mut m = Mosquitto::start();
    let (mut client, _incoming) = AsyncClient::connect(local(m.port, "idle")).await.unwrap();
    tokio::task::block_in_place(|| m.stop());
    // Wait until the client has noticed.
    while client.status().connected {
        client.status_changed().await.unwrap();
    }
    client.disconnect().await.expect("nothing was lost");
}

/// QoS 2 across a broker restart with a persistent session: every message arrives, none
/// twice (the machine re-sends PUBLISH with DUP or PUBREL as the stage requires, and
/// suppresses a repeated incoming PUBLISH, [MQTT-4.3.3-10]).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_keeps_qos2_exactly_once() {
    let mut m = Mosquitto::start();
    let n = 1000u32;
    let options = local(m.port, "restart2").persistent_session(3600);
    let (client, mut incoming) = AsyncClient::connect(options).await.unwrap();
    client.subscribe("r2/#", QoS::ExactlyOnce).await.unwrap();
    let publisher = client.clone();
    let sender = tokio::spawn(async move {
        let mut acks = Vec::new();
        for i in 0..n {
            let m = mqtt_tokio::Message::new(
                mqtt_tokio::TopicBuf::from_static("r2/1").unwrap(),
                payload(i),
                QoS::ExactlyOnce,
            );
            acks.push(publisher.enqueue(m).await.unwrap());
        }
        for a in acks {
            a.await
                .expect("every message completes, across the restart");
        }
        publisher
            .publish("r2/end", QoS::ExactlyOnce, Vec::new())
            .await
            .unwrap();
    });
    let mut seen = HashSet::new();
    let mut restarted = false;
    loop {
        let msg = next(&mut incoming).await;
        if msg.topic.as_str() == "r2/end" {
            break;
        }
        assert!(seen.insert(index(&msg.payload)), "delivered twice");
        if !restarted && seen.len() >= 100 {
            restarted = true;
            tokio::task::block_in_place(|| m.restart());
        }
    }
    sender.await.unwrap();
    assert_eq!(seen.len(), n as usize);
    assert!(client.status().connections >= 2);
    client.disconnect().await.unwrap();
}

/// With manual acks a message the application did not acknowledge is not acknowledged to
/// the broker: a resumed session gets it again, marked DUP ([MQTT-4.4.0-1],
/// [MQTT-3.3.1-1]); once acknowledged, it does not come back.
#[tokio::test]
async fn manual_ack_leaves_a_message_unacknowledged_until_the_application_acks() {
    let m = Mosquitto::start();
    let subscriber = || {
        local(m.port, "manual")
            .persistent_session(3600)
            .manual_acks(true)
    };
    let (client, mut incoming) = AsyncClient::connect(subscriber()).await.unwrap();
    client.subscribe("ma/#", QoS::AtLeastOnce).await.unwrap();
    let (publisher, _in) = AsyncClient::connect(local(m.port, "manual-pub"))
        .await
        .unwrap();
    publisher
        .publish("ma/1", QoS::AtLeastOnce, "kept")
        .await
        .unwrap();
    let first = next_delivery(&mut incoming).await;
    assert_eq!(&first.message.payload[..], b"kept");
    assert!(first.ack.is_some(), "QoS 1 with manual acks has a token");
    // Not acknowledged: gone with the connection.
    client.disconnect().await.unwrap();

    let (client, mut incoming) = AsyncClient::connect(subscriber()).await.unwrap();
    assert!(client.status().session_present);
    let again = next_delivery(&mut incoming).await;
    assert_eq!(&again.message.payload[..], b"kept", "re-sent");
    assert!(again.dup, "[MQTT-3.3.1-1] a re-delivery is marked DUP");
    client.ack(again.ack.expect("token")).await.unwrap();
    // The acknowledgement goes out before the DISCONNECT (both in arrival order of the
    // requests), so the third connection gets only what is new.
    client.disconnect().await.unwrap();

    let (client, mut incoming) = AsyncClient::connect(subscriber()).await.unwrap();
    publisher
        .publish("ma/2", QoS::AtLeastOnce, "new")
        .await
        .unwrap();
    let d = next_delivery(&mut incoming).await;
    assert_eq!(
        &d.message.payload[..],
        b"new",
        "the acknowledged one stayed away"
    );
    client.ack(d.ack.expect("token")).await.unwrap();
    client.disconnect().await.unwrap();
    publisher.disconnect().await.unwrap();
}

/// Without manual acks there is no token: the client acknowledged by itself.
#[tokio::test]
async fn automatic_acks_hand_out_no_token() {
    let m = Mosquitto::start();
    let (client, mut incoming) = AsyncClient::connect(local(m.port, "auto")).await.unwrap();
    client.subscribe("aa", QoS::AtLeastOnce).await.unwrap();
    client.publish("aa", QoS::AtLeastOnce, "x").await.unwrap();
    let d = next_delivery(&mut incoming).await;
    assert_eq!(d.ack, None);
    client.disconnect().await.unwrap();
}

/// The progress hook sees every step in order, with the packet identifiers, and the
/// cause when the client stops.
#[tokio::test]
async fn progress_hook_reports_each_step_and_the_end() {
    use mqtt_tokio::mqtt_state::Event;
    use mqtt_tokio::Progress;
    use std::sync::{Arc, Mutex};

    let m = Mosquitto::start();
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let l = Arc::clone(&log);
    let options = local(m.port, "hooked").on_progress(move |p| {
        let line = match p {
            Progress::Connecting => "connecting".to_string(),
            Progress::Event(Event::Connected(i)) => format!("connack {}", i.session_present),
            Progress::Event(Event::Subscribed { packet_id, reasons }) => {
                format!("suback {} {:?}", packet_id.get(), reasons)
            }
            Progress::Event(Event::Acknowledged { packet_id, .. }) => {
                format!("puback {}", packet_id.get())
            }
            Progress::Event(Event::Message { message, .. }) => {
                format!("message {}", message.topic.as_str())
            }
            Progress::Stopped { error } => format!("stopped {}", error.is_some()),
            _ => return,
        };
        l.lock().unwrap().push(line);
    });
    let (client, mut incoming) = AsyncClient::connect(options).await.unwrap();
    client.subscribe("h", QoS::AtLeastOnce).await.unwrap();
    let ack = client.publish("h", QoS::AtLeastOnce, "x").await.unwrap();
    next(&mut incoming).await;
    client.disconnect().await.unwrap();
    let pid = ack.packet_id.expect("QoS 1").get();
    let got = log.lock().unwrap().clone();
    // The message and the PUBACK may come in either order.
    let mut middle = got[3..5].to_vec();
    middle.sort();
    assert_eq!(
        got[..3],
        ["connecting", "connack false", "suback 1 [GrantedQoS1]"]
    );
    assert_eq!(middle, ["message h".to_string(), format!("puback {pid}")]);
    assert_eq!(got[5..], ["stopped false"]);

    // A refusal: the hook has the cause.
    let refusing = Mosquitto::with(Auth::Nobody, Listeners::default());
    let cause = Arc::new(Mutex::new(None));
    let c = Arc::clone(&cause);
    let options = local(refusing.port, "refused").on_progress(move |p| {
        if let Progress::Stopped { error } = p {
            *c.lock().unwrap() = error.map(|e| e.to_string());
        }
    });
    assert!(AsyncClient::connect(options).await.is_err());
    let cause = cause.lock().unwrap().clone().expect("a cause");
    assert!(cause.contains("refused"), "{cause}");
}

async fn next_delivery(incoming: &mut mqtt_tokio::Incoming) -> mqtt_tokio::Delivery {
    tokio::time::timeout(std::time::Duration::from_secs(60), incoming.recv_delivery())
        .await
        .expect("no message for 60 s: one was lost")
        .expect("the client is running")
}

/// `enqueue_untracked` keeps no reply: the hook counts the acknowledgements, every
/// message arrives, in order ([MQTT-4.6.0-6]); `try_recv` takes what has arrived without
/// waiting. A message the machine refuses is reported through the hook.
#[tokio::test]
async fn untracked_publishes_are_acknowledged_through_the_hook() {
    use mqtt_tokio::mqtt_state::Event;
    use mqtt_tokio::Progress;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;

    let m = Mosquitto::start();
    let acked = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let (a, r) = (Arc::clone(&acked), Arc::clone(&refused));
    let options = local(m.port, "untracked").on_progress(move |p| match p {
        Progress::Event(Event::Acknowledged { .. }) => drop(a.fetch_add(1, Ordering::SeqCst)),
        Progress::Refused { .. } => drop(r.fetch_add(1, Ordering::SeqCst)),
        _ => {}
    });
    let (client, mut incoming) = AsyncClient::connect(options).await.unwrap();
    client.subscribe("u/#", QoS::AtLeastOnce).await.unwrap();
    let n = 500u32;
    let mut bad = mqtt_tokio::Message::new(
        mqtt_tokio::TopicBuf::from_static("u/1").unwrap(),
        Vec::new(),
        QoS::AtLeastOnce,
    );
    for i in 0..n {
        let msg = mqtt_tokio::Message::new(
            mqtt_tokio::TopicBuf::from_static("u/1").unwrap(),
            payload(i),
            QoS::AtLeastOnce,
        );
        client.enqueue_untracked(msg).await.unwrap();
    }
    let mut got = Vec::new();
    while got.len() < n as usize {
        got.push(index(&next(&mut incoming).await.payload));
        while let Some(m) = incoming.try_recv() {
            got.push(index(&m.payload));
        }
    }
    assert_eq!(got, (0..n).collect::<Vec<_>>());
    // The disconnect waits for every acknowledgement.
    client.disconnect().await.unwrap();
    assert_eq!(acked.load(Ordering::SeqCst), u64::from(n));
    assert_eq!(refused.load(Ordering::SeqCst), 0);

    // A message the protocol cannot carry (U+0000 in a 5.0 string, [MQTT-1.5.4-2]): the
    // machine refuses it before sending, and only the hook can say so.
    let (a, r) = (Arc::clone(&acked), Arc::clone(&refused));
    let options = local(m.port, "untracked-bad").on_progress(move |p| match p {
        Progress::Event(Event::Acknowledged { .. }) => drop(a.fetch_add(1, Ordering::SeqCst)),
        Progress::Refused { .. } => drop(r.fetch_add(1, Ordering::SeqCst)),
        _ => {}
    });
    let (client, _incoming) = AsyncClient::connect(options).await.unwrap();
    let mut properties = bad.properties().clone();
    properties.content_type = Some(String::from("a\0b").into());
    bad.set_properties(properties);
    client.enqueue_untracked(bad).await.unwrap();
    // Requests are taken in order: by the time the disconnect is done, so is the refusal.
    client.disconnect().await.unwrap();
    assert_eq!(refused.load(Ordering::SeqCst), 1);
    assert_eq!(
        acked.load(Ordering::SeqCst),
        u64::from(n),
        "nothing more was sent"
    );
}

/// A drain larger than the write buffer's start, and a packet larger than its most: the
/// buffer grows and everything arrives whole.
#[tokio::test]
async fn bursts_and_large_packets_go_out_whole() {
    let m = Mosquitto::start();
    let (client, mut incoming) = AsyncClient::connect(local(m.port, "big")).await.unwrap();
    client.subscribe("b/#", QoS::AtLeastOnce).await.unwrap();
    let big = vec![7u8; 300 * 1024];
    client
        .publish("b/big", QoS::AtLeastOnce, big.clone())
        .await
        .unwrap();
    let got = next(&mut incoming).await;
    assert_eq!(got.payload.len(), big.len());
    assert!(got.payload.iter().all(|b| *b == 7));
    round_trip_on(&client, &mut incoming, "b/burst", 2000).await;
    client.disconnect().await.unwrap();
}

/// `n` QoS 1 messages of 100 bytes queued at once on `topic`, received in order.
async fn round_trip_on(
    client: &AsyncClient,
    incoming: &mut mqtt_tokio::Incoming,
    topic: &str,
    n: u32,
) {
    let mut acks = Vec::new();
    for i in 0..n {
        let mut p = payload(i);
        p.resize(100, 0);
        let msg = mqtt_tokio::Message::new(
            mqtt_tokio::TopicBuf::try_from(topic.to_string()).unwrap(),
            p,
            QoS::AtLeastOnce,
        );
        acks.push(client.enqueue(msg).await.unwrap());
    }
    for i in 0..n {
        let m = next(incoming).await;
        assert_eq!(index(&m.payload[..4]), i);
    }
    for a in acks {
        a.await.unwrap();
    }
}
