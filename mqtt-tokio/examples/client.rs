//! README's client task: subscribe, publish 1,000 QoS 1 messages from another task, receive
//! them, disconnect. Against any broker on 127.0.0.1:1883 (the example broker, mosquitto):
//!
//! ```text
//! cargo run -p mqtt-tokio --example client
//! ```
use mqtt_tokio::{AsyncClient, Options, QoS};

#[tokio::main]
async fn main() -> Result<(), mqtt_tokio::Error> {
    let options = Options::new("demo", "127.0.0.1", 1883);
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
    Ok(())
}
