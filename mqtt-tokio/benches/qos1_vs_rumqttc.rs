//! One client publishing N QoS 1 messages to mosquitto and waiting for every PUBACK,
//! mqtt-tokio then rumqttc, in one run. Prints messages per second; asserts nothing.
//!
//! `cargo bench -p mqtt-tokio --bench qos1_vs_rumqttc` (N from `MQTT_BENCH_N`, default
//! 20,000). A first look, not the full comparison (no latency or memory figures).

#[path = "../tests/support/mosquitto.rs"]
mod mosquitto;

use std::time::Instant;

use mosquitto::{Auth, Listeners, Mosquitto};

async fn mqtt_tokio(port: u16, n: u32) -> f64 {
    use mqtt_tokio::{AsyncClient, Message, Options, QoS, TopicBuf};
    let (client, _incoming) = AsyncClient::connect(Options::new("bench-a", "127.0.0.1", port))
        .await
        .unwrap();
    let topic = TopicBuf::from_static("bench/a").unwrap();
    let start = Instant::now();
    let mut acks = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let m = Message::new(topic.clone(), &b"0123456789abcdef"[..], QoS::AtLeastOnce);
        acks.push(client.enqueue(m).await.unwrap());
    }
    for a in acks {
        a.await.unwrap();
    }
    let secs = start.elapsed().as_secs_f64();
    client.disconnect().await.unwrap();
    f64::from(n) / secs
}

async fn rumqttc(port: u16, n: u32) -> f64 {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
    let mut o = MqttOptions::new("bench-b", "127.0.0.1", port);
    o.set_inflight(64);
    let (client, mut eventloop) = AsyncClient::new(o, 64);
    let start = Instant::now();
    let publisher = tokio::spawn(async move {
        for _ in 0..n {
            client
                .publish("bench/b", QoS::AtLeastOnce, false, &b"0123456789abcdef"[..])
                .await
                .unwrap();
        }
        client
    });
    let mut acked = 0;
    while acked < n {
        if let Event::Incoming(Packet::PubAck(_)) = eventloop.poll().await.unwrap() {
            acked += 1;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let client = publisher.await.unwrap();
    client.disconnect().await.unwrap();
    f64::from(n) / secs
}

fn main() {
    let n: u32 = std::env::var("MQTT_BENCH_N")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20_000);
    let m = Mosquitto::with(
        Auth::Anonymous,
        Listeners {
            quiet: true,
            ..Default::default()
        },
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        // Warm up both, then measure.
        mqtt_tokio(m.port, 1000).await;
        rumqttc(m.port, 1000).await;
        let a = mqtt_tokio(m.port, n).await;
        let b = rumqttc(m.port, n).await;
        println!("QoS 1, {n} messages of 16 bytes, one client, acknowledged:");
        println!("  mqtt-tokio {a:>10.0} msg/s");
        println!("  rumqttc    {b:>10.0} msg/s");
        println!("  ratio      {:>10.2}", a / b);
    });
}
