//! mqtt-tokio's server runner on a store (feature `store`): output still flows with
//! `Persistence::Sync`, a store that cannot be read stops `run` before anything is served,
//! and a persistent session survives a restart from the same store.

use std::net::SocketAddr;

use mqtt_tokio::broker::{AllowAll, BrokerConfig, Persistence, StoreOp, Table};
use mqtt_tokio::server::{Server, Transport};
use mqtt_tokio::store::{Loaded, MemoryStore, Store, Visit};
use mqtt_tokio::{AsyncClient, Error, Message, Options, QoS, TopicBuf};
use tokio::sync::oneshot;

fn config(persistence: Persistence) -> BrokerConfig {
    BrokerConfig {
        persistence,
        ..BrokerConfig::default()
    }
}

/// A server on `store`, running until the sender is dropped or fires.
async fn start(
    store: impl Store,
    persistence: Persistence,
) -> (
    SocketAddr,
    oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
) {
    let mut server = Server::new(config(persistence), AllowAll);
    server.store(store);
    server.commit_interval(std::time::Duration::from_millis(10));
    let addr = server
        .bind("127.0.0.1:0", Transport::Tcp)
        .await
        .expect("bind");
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    (addr, stop, done)
}

fn topic(s: &str) -> TopicBuf {
    TopicBuf::try_from(s.to_owned()).unwrap()
}

async fn next(incoming: &mut mqtt_tokio::Incoming) -> Message {
    tokio::time::timeout(std::time::Duration::from_secs(60), incoming.recv())
        .await
        .expect("no message for 60 s: one was lost")
        .expect("the client is running")
}

/// QoS 1 and 2 to a persistent session (stored, message by message) through a server
/// whose output waits for each commit (or not): every message once, in order.
async fn flows(persistence: Persistence) {
    let store = MemoryStore::new();
    let (addr, stop, done) = start(store.clone(), persistence).await;
    let options = |id: &str| Options::new(id, "127.0.0.1", addr.port());
    let (sub, mut incoming) = AsyncClient::connect(options("sub").persistent_session(600))
        .await
        .expect("sub");
    sub.subscribe("t/#", QoS::ExactlyOnce)
        .await
        .expect("subscribe");
    let (publisher, _) = AsyncClient::connect(options("pub")).await.expect("pub");
    for qos in [QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let mut acks = Vec::new();
        for i in 0..500u32 {
            let m = Message::new(topic("t/1"), i.to_be_bytes().to_vec(), qos);
            acks.push(publisher.enqueue(m).await.expect("enqueue"));
        }
        for a in acks {
            a.await.expect("acknowledged");
        }
        for i in 0..500u32 {
            let m = next(&mut incoming).await;
            assert_eq!(m.payload.as_ref(), i.to_be_bytes(), "message {i}");
        }
    }
    publisher.disconnect().await.expect("disconnect");
    sub.disconnect().await.expect("disconnect");
    let _ = stop.send(());
    done.await.expect("server task").expect("server run");
    assert!(store.commits() > 0, "nothing was stored");
    // The subscriber's session outlives it (the last QoS 2 exchange may still be open: a
    // client that disconnects right after its last message leaves it to the session).
    assert_eq!(store.entries(Table::Sessions).len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_flows_with_sync() {
    flows(Persistence::Sync).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_flows_with_eventual() {
    flows(Persistence::Eventual).await;
}

/// A store whose entries the core cannot read, or that fails to load.
struct Broken;

impl Store for Broken {
    fn load(&mut self, _: &mut Visit<'_>) -> Result<Loaded, Error> {
        Err(Error::StoreDamaged("test: damaged".into()))
    }

    fn commit(&mut self, _: &[StoreOp], _: mqtt_tokio::mqtt_state::Instant) -> Result<(), Error> {
        Err(Error::Store("test: cannot write".into()))
    }
}

#[tokio::test]
async fn unreadable_store_stops_run_before_serving() {
    let mut server = Server::new(config(Persistence::Sync), AllowAll);
    server.store(Broken);
    let addr = server
        .bind("127.0.0.1:0", Transport::Tcp)
        .await
        .expect("bind");
    let err = server
        .run(std::future::pending())
        .await
        .expect_err("a damaged store is an error");
    let inner = err
        .get_ref()
        .and_then(|e| e.downcast_ref::<Error>())
        .expect("the store's error inside");
    assert!(matches!(inner, Error::StoreDamaged(_)), "{inner}");
    // Nothing was served: the listener is closed with the server.
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// A persistent session with a subscription, queued messages while it was away, and a
/// retained message, across a restart from the same store.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn persistent_session_survives_a_restart() {
    let store = MemoryStore::new();
    let (addr, stop, done) = start(store.clone(), Persistence::Sync).await;
    let options = |id: &str, port: u16| Options::new(id, "127.0.0.1", port);
    let (sub, _) = AsyncClient::connect(options("sub", addr.port()).persistent_session(3600))
        .await
        .expect("sub");
    sub.subscribe("t/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    sub.disconnect().await.expect("disconnect");
    let (publisher, _) = AsyncClient::connect(options("pub", addr.port()))
        .await
        .expect("pub");
    for i in 0..10u32 {
        let m = Message::new(topic("t/1"), i.to_be_bytes().to_vec(), QoS::AtLeastOnce);
        publisher.publish_message(m).await.expect("acknowledged");
    }
    let mut retained = Message::new(topic("r/1"), b"kept".to_vec(), QoS::AtLeastOnce);
    retained.retain = true;
    publisher
        .publish_message(retained)
        .await
        .expect("acknowledged");
    publisher.disconnect().await.expect("disconnect");
    let _ = stop.send(());
    done.await.expect("server task").expect("server run");
    assert!(store.commits() > 0, "nothing was stored");

    // Another server, restored from the same store.
    let (addr, stop, done) = start(store.clone(), Persistence::Sync).await;
    let (sub, mut incoming) =
        AsyncClient::connect(options("sub", addr.port()).persistent_session(3600))
            .await
            .expect("sub again");
    for i in 0..10u32 {
        let m = next(&mut incoming).await;
        assert_eq!(m.payload.as_ref(), i.to_be_bytes(), "message {i}");
    }
    sub.subscribe("r/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let m = next(&mut incoming).await;
    assert_eq!(m.payload.as_ref(), b"kept");
    sub.disconnect().await.expect("disconnect");
    let _ = stop.send(());
    done.await.expect("server task").expect("server run");
    assert!(!store.entries(Table::Sessions).is_empty());
}

/// The same on a redb file: every commit an fsync on the blocking pool, output held for
/// it; the session is in the file afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_flows_with_sync_on_redb() {
    let dir = std::env::temp_dir().join(format!("mqtt-tokio-server-store-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let store = mqtt_tokio::store::RedbStore::open(&dir).expect("open");
    let (addr, stop, done) = start(store, Persistence::Sync).await;
    let options = |id: &str| Options::new(id, "127.0.0.1", addr.port());
    let (sub, mut incoming) = AsyncClient::connect(options("sub").persistent_session(600))
        .await
        .expect("sub");
    sub.subscribe("t/#", QoS::AtLeastOnce)
        .await
        .expect("subscribe");
    let (publisher, _) = AsyncClient::connect(options("pub")).await.expect("pub");
    let mut acks = Vec::new();
    for i in 0..300u32 {
        let m = Message::new(topic("t/1"), i.to_be_bytes().to_vec(), QoS::AtLeastOnce);
        acks.push(publisher.enqueue(m).await.expect("enqueue"));
    }
    for a in acks {
        a.await.expect("acknowledged");
    }
    for i in 0..300u32 {
        let m = next(&mut incoming).await;
        assert_eq!(m.payload.as_ref(), i.to_be_bytes(), "message {i}");
    }
    publisher.disconnect().await.expect("disconnect");
    sub.disconnect().await.expect("disconnect");
    let _ = stop.send(());
    done.await.expect("server task").expect("server run");
    let mut store = mqtt_tokio::store::RedbStore::open(&dir).expect("reopen");
    let mut sessions = 0;
    store
        .load(&mut |_, t, _, _| {
            sessions += usize::from(t == Table::Sessions);
            Ok(())
        })
        .expect("load");
    assert_eq!(sessions, 1);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
