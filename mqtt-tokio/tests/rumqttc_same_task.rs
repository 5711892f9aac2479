//! The README task — subscribe, publish 1,000 QoS 1 messages, receive them, disconnect —
//! written with rumqttc against the same mosquitto, so README.md's line count compares
//! two programs that both run. Count the lines between the markers here and in
//! `mosquitto.rs`'s `readme_example`.

mod support;

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use support::mosquitto::Mosquitto;

#[tokio::test]
async fn rumqttc_readme_task() -> Result<(), Box<dyn std::error::Error>> {
    let m = Mosquitto::start();
    let port = m.port;
    // -- rumqttc begins
    let options = MqttOptions::new("rumqttc-readme", "127.0.0.1", port);
    let (client, mut eventloop) = AsyncClient::new(options, 10);
    client.subscribe("demo/#", QoS::AtLeastOnce).await?;
    let publisher = client.clone();
    tokio::spawn(async move {
        for i in 0..1000u32 {
            publisher
                .publish("demo/n", QoS::AtLeastOnce, false, i.to_string())
                .await?;
        }
        Ok::<_, rumqttc::ClientError>(())
    });
    let mut received = 0;
    while received < 1000 {
        if let Event::Incoming(Packet::Publish(p)) = eventloop.poll().await? {
            println!("{}: {:?}", p.topic, p.payload);
            received += 1;
        }
    }
    client.disconnect().await?;
    while eventloop.poll().await.is_ok() {}
    // -- rumqttc ends
    Ok(())
}
