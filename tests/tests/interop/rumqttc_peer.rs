//! `rumqttc` (3.1.1 and 5.0) publishing and subscribing through the example broker.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::timeout;

use crate::broker::Broker;

const DEADLINE: Duration = Duration::from_secs(20);

/// Runs `f` on a current-thread tokio runtime, bounded by [`DEADLINE`].
fn block_on<F: std::future::Future<Output = ()>>(f: F) {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(async {
            timeout(DEADLINE, f).await.expect("rumqttc test timed out");
        });
}

/// What a client's event loop reports to the test.
#[derive(Debug, PartialEq)]
enum Seen {
    SubAck(Vec<u8>),
    Publish {
        topic: String,
        qos: u8,
        payload: Vec<u8>,
        user_properties: Vec<(String, String)>,
    },
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("nothing from the broker within 10 s")
        .expect("event loop ended")
}

mod v4 {
    use super::*;
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, SubscribeReasonCode};

    fn start(broker: &Broker, id: &str) -> (AsyncClient, mpsc::UnboundedReceiver<Seen>) {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.tcp.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let seen = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(ack))) => Seen::SubAck(
                        ack.return_codes
                            .iter()
                            .map(|c| match c {
                                SubscribeReasonCode::Success(q) => *q as u8,
                                SubscribeReasonCode::Failure => 0x80,
                            })
                            .collect(),
                    ),
                    Ok(Event::Incoming(Packet::Publish(p))) => Seen::Publish {
                        topic: p.topic,
                        qos: p.qos as u8,
                        payload: p.payload.to_vec(),
                        user_properties: Vec::new(),
                    },
                    Ok(_) => continue,
                    Err(e) => panic!("rumqttc v4 event loop: {e}"),
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        (client, rx)
    }

    #[test]
    fn publish_and_subscribe() {
        let broker = Broker::start(&[]);
        block_on(async {
            let (sub, mut sub_rx) = start(&broker, "rumqttc-v4-sub");
            let (publisher, _pub_rx) = start(&broker, "rumqttc-v4-pub");
            sub.subscribe("rumqttc/v4/+", QoS::ExactlyOnce)
                .await
                .unwrap();
            assert_eq!(next(&mut sub_rx).await, Seen::SubAck(vec![2]));
            for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
                .into_iter()
                .enumerate()
            {
                let topic = format!("rumqttc/v4/{i}");
                publisher
                    .publish(topic, qos, false, format!("m{i}"))
                    .await
                    .unwrap();
            }
            for i in 0..3u8 {
                assert_eq!(
                    next(&mut sub_rx).await,
                    Seen::Publish {
                        topic: format!("rumqttc/v4/{i}"),
                        qos: i,
                        payload: format!("m{i}").into_bytes(),
                        user_properties: Vec::new(),
                    }
                );
            }
            sub.disconnect().await.unwrap();
            publisher.disconnect().await.unwrap();
        });
    }
}

mod v5 {
    use super::*;
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties, SubscribeReasonCode};
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    fn start(broker: &Broker, id: &str) -> (AsyncClient, mpsc::UnboundedReceiver<Seen>) {
        let mut options = MqttOptions::new(id, "127.0.0.1", broker.tcp.port());
        options.set_keep_alive(Duration::from_secs(30));
        let (client, mut eventloop) = AsyncClient::new(options, 16);
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                let seen = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::SubAck(ack))) => Seen::SubAck(
                        ack.return_codes
                            .iter()
                            .map(|c| match c {
                                SubscribeReasonCode::Success(q) => *q as u8,
                                _ => 0x80,
                            })
                            .collect(),
                    ),
                    Ok(Event::Incoming(Packet::Publish(p))) => Seen::Publish {
                        topic: String::from_utf8(p.topic.to_vec()).unwrap(),
                        qos: p.qos as u8,
                        payload: p.payload.to_vec(),
                        user_properties: p
                            .properties
                            .map(|p| p.user_properties)
                            .unwrap_or_default(),
                    },
                    Ok(_) => continue,
                    Err(e) => panic!("rumqttc v5 event loop: {e}"),
                };
                if tx.send(seen).is_err() {
                    return;
                }
            }
        });
        (client, rx)
    }

    #[test]
    fn publish_and_subscribe() {
        let broker = Broker::start(&[]);
        block_on(async {
            let (sub, mut sub_rx) = start(&broker, "rumqttc-v5-sub");
            let (publisher, _pub_rx) = start(&broker, "rumqttc-v5-pub");
            sub.subscribe("rumqttc/v5/#", QoS::ExactlyOnce)
                .await
                .unwrap();
            assert_eq!(next(&mut sub_rx).await, Seen::SubAck(vec![2]));
            for (i, qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
                .into_iter()
                .enumerate()
            {
                let properties = PublishProperties {
                    user_properties: vec![("k".into(), format!("v{i}"))],
                    ..PublishProperties::default()
                };
                publisher
                    .publish_with_properties(
                        format!("rumqttc/v5/{i}"),
                        qos,
                        false,
                        format!("m{i}"),
                        properties,
                    )
                    .await
                    .unwrap();
            }
            for i in 0..3u8 {
                assert_eq!(
                    next(&mut sub_rx).await,
                    Seen::Publish {
                        topic: format!("rumqttc/v5/{i}"),
                        qos: i,
                        payload: format!("m{i}").into_bytes(),
                        user_properties: vec![("k".into(), format!("v{i}"))],
                    }
                );
            }
            sub.disconnect().await.unwrap();
            publisher.disconnect().await.unwrap();
        });
    }
}
