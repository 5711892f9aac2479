//! mqtt-tokio's server with a bridge to a real mosquitto: topics out, in and both ways at
//! QoS 0, 1 and 2 over 3.1.1 and 5.0, no loop on a topic bridged both ways, and TLS with a
//! client certificate. mosquitto restarted mid-stream is the example broker's test, over
//! the same `Hub::dial` (`tests/tests/interop/bridge_out.rs`).

#[path = "support/mosquitto.rs"]
mod mosquitto;

use std::time::Duration;

use mosquitto::Mosquitto;
use mqtt_tokio::broker::{
    AllowAll, BridgeConfig, BridgeId, BridgeState, BridgeTopic, BrokerConfig, Direction,
};
use mqtt_tokio::server::{Remote, Server, ServerHandle, Transport};
use mqtt_tokio::{AsyncClient, Incoming, Options, ProtocolVersion, QoS};
use tokio::sync::oneshot;

struct Ours {
    port: u16,
    handle: ServerHandle<AllowAll>,
    bridge: BridgeId,
    _stop: oneshot::Sender<()>,
}

/// Our server on a free port, bridged to `remote_port` with `topics`.
async fn ours(remote_port: u16, version: ProtocolVersion, topics: Vec<BridgeTopic>) -> Ours {
    let address = format!("127.0.0.1:{remote_port}");
    ours_with(address, Remote::default(), version, topics).await
}

/// Our server on a free port, bridged to `address` as `remote` says.
async fn ours_with(
    address: String,
    remote: Remote,
    version: ProtocolVersion,
    topics: Vec<BridgeTopic>,
) -> Ours {
    let mut server = Server::new(
        BrokerConfig {
            sys_interval: None,
            ..BrokerConfig::default()
        },
        AllowAll,
    );
    let addr = server
        .bind("127.0.0.1:0", Transport::Tcp)
        .await
        .expect("bind");
    let mut config = BridgeConfig::new("b", address, version);
    config.topics = topics;
    config.remote.clean_start = false;
    config.remote.session_expiry_interval = 3600;
    config.reconnect_delay = mqtt_tokio::mqtt_state::Duration::from_millis(100);
    config.max_reconnect_delay = mqtt_tokio::mqtt_state::Duration::from_millis(500);
    let bridge = server.bridge(config, remote).expect("bridge");
    let handle = server.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    let o = Ours {
        port: addr.port(),
        handle,
        bridge,
        _stop: stop,
    };
    o.wait_up().await;
    o
}

impl Ours {
    async fn state(&self) -> Option<BridgeState> {
        let b = self.bridge;
        self.handle
            .call(move |broker, _| broker.bridge_state(b))
            .await
            .expect("server running")
    }

    async fn wait_up(&self) {
        for _ in 0..500 {
            if self.state().await == Some(BridgeState::Up) {
                // The SUBSCRIBEs on both legs follow the CONNACKs.
                tokio::time::sleep(Duration::from_millis(200)).await;
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("the bridge is not up after 10 s");
    }
}

async fn client(id: &str, port: u16) -> (AsyncClient, Incoming) {
    let o = Options::new(id, "127.0.0.1", port).version(ProtocolVersion::V5);
    AsyncClient::connect(o).await.expect("connect")
}

/// Messages arriving within `quiet` of each other: (topic, payload).
async fn drain(incoming: &mut Incoming, quiet: Duration) -> Vec<(String, String)> {
    let mut v = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(quiet, incoming.recv()).await {
        v.push((
            m.topic.to_string(),
            String::from_utf8_lossy(&m.payload).into_owned(),
        ));
    }
    v
}

fn qos_all() -> [QoS; 3] {
    [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_cross_both_ways_at_every_qos() {
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let m = Mosquitto::start();
        let o = ours(
            m.port,
            version,
            vec![
                BridgeTopic::new("up/#", Direction::Out, QoS::ExactlyOnce)
                    .with_prefixes("", "site/"),
                BridgeTopic::new("down/#", Direction::In, QoS::ExactlyOnce)
                    .with_prefixes("from-cloud/", ""),
            ],
        )
        .await;
        let (there, mut there_in) = client("there", m.port).await;
        there.subscribe("site/#", QoS::ExactlyOnce).await.unwrap();
        let (here, mut here_in) = client("here", o.port).await;
        here.subscribe("from-cloud/#", QoS::ExactlyOnce)
            .await
            .unwrap();
        for qos in qos_all() {
            here.publish("up/x", qos, format!("{qos:?}")).await.unwrap();
            there
                .publish("down/y", qos, format!("{qos:?}"))
                .await
                .unwrap();
        }
        let want = |t: &str| -> Vec<(String, String)> {
            qos_all()
                .iter()
                .map(|q| (t.to_owned(), format!("{q:?}")))
                .collect()
        };
        let got_there = drain(&mut there_in, Duration::from_secs(2)).await;
        let got_here = drain(&mut here_in, Duration::from_secs(1)).await;
        assert_eq!(got_there, want("site/up/x"), "{version:?} out");
        assert_eq!(got_here, want("from-cloud/down/y"), "{version:?} in");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_bridged_both_ways_does_not_loop() {
    for version in [ProtocolVersion::V3_1_1, ProtocolVersion::V5] {
        let m = Mosquitto::start();
        let o = ours(
            m.port,
            version,
            vec![BridgeTopic::new(
                "chat/#",
                Direction::Both,
                QoS::AtLeastOnce,
            )],
        )
        .await;
        let (there, mut there_in) = client("there", m.port).await;
        there.subscribe("chat/#", QoS::AtLeastOnce).await.unwrap();
        let (here, mut here_in) = client("here", o.port).await;
        here.subscribe("chat/#", QoS::AtLeastOnce).await.unwrap();
        here.publish("chat/1", QoS::AtLeastOnce, "from here")
            .await
            .unwrap();
        there
            .publish("chat/2", QoS::AtLeastOnce, "from there")
            .await
            .unwrap();
        let mut got_there = drain(&mut there_in, Duration::from_secs(2)).await;
        let mut got_here = drain(&mut here_in, Duration::from_secs(1)).await;
        got_there.sort();
        got_here.sort();
        let both = vec![
            ("chat/1".to_owned(), "from here".to_owned()),
            ("chat/2".to_owned(), "from there".to_owned()),
        ];
        assert_eq!(got_there, both, "{version:?}: once each at mosquitto");
        // 5.0's No Local, or before 5.0 mosquitto's bridge flag (on by default).
        assert_eq!(got_here, both, "{version:?}: once each here");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_with_a_client_certificate() {
    // mosquitto's TLS listener requires a client certificate signed by its CA; the
    // bridge checks mosquitto's certificate for `localhost` against that CA.
    let m = Mosquitto::with(
        mosquitto::Auth::Anonymous,
        mosquitto::Listeners {
            tls: true,
            client_cert: true,
            ..Default::default()
        },
    );
    let (cert, key) = m.client_cert();
    let tls = mqtt_tokio::tls_config(Some(&m.ca_pem()), Some((&cert, &key))).expect("tls");
    let remote = Remote {
        tls: Some(tls),
        server_name: None,
    };
    let address = format!("localhost:{}", m.tls_port.expect("a TLS listener"));
    let o = ours_with(
        address,
        remote,
        ProtocolVersion::V5,
        vec![
            BridgeTopic::new("up", Direction::Out, QoS::AtLeastOnce),
            BridgeTopic::new("down", Direction::In, QoS::AtLeastOnce),
        ],
    )
    .await;
    let (there, mut there_in) = client("there", m.port).await;
    there.subscribe("up", QoS::AtLeastOnce).await.unwrap();
    let (here, mut here_in) = client("here", o.port).await;
    here.subscribe("down", QoS::AtLeastOnce).await.unwrap();
    here.publish("up", QoS::AtLeastOnce, "1").await.unwrap();
    there.publish("down", QoS::AtLeastOnce, "2").await.unwrap();
    assert_eq!(
        drain(&mut there_in, Duration::from_secs(2)).await,
        [("up".to_owned(), "1".to_owned())]
    );
    assert_eq!(
        drain(&mut here_in, Duration::from_secs(1)).await,
        [("down".to_owned(), "2".to_owned())]
    );
}
