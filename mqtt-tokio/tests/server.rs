//! mqtt-tokio's server runner serving a broker core over TCP, TLS, WebSocket and secure
//! WebSocket, with mqtt-tokio's client on the other end: messages at QoS 1 and 2, deferred
//! decisions answered by async functions while other connections flow, the handle's
//! calls, and shutdown.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use mqtt_tokio::broker::{BrokerConfig, Context, Hooks, RequestKind, Verdict};
use mqtt_tokio::server::{tls_acceptor, Answer, Decision, Server, ServerHandle, Transport};
use mqtt_tokio::{tls_config, AsyncClient, Error, Message, Options, QoS, ReasonCode, TopicBuf};
use tokio::sync::{oneshot, Notify};

/// Test certificates: a CA, a server certificate for `localhost` and a client one.
struct Pki {
    ca: Vec<u8>,
    server: (Vec<u8>, Vec<u8>),
    client: (Vec<u8>, Vec<u8>),
    client_der: Vec<u8>,
}

fn pki() -> Pki {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &issuer)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client
        .distinguished_name
        .push(DnType::CommonName, "test client");
    let client = client.signed_by(&client_key, &issuer).unwrap();
    Pki {
        ca: ca_cert.pem().into_bytes(),
        server: (server.pem().into_bytes(), key.serialize_pem().into_bytes()),
        client_der: client.der().to_vec(),
        client: (
            client.pem().into_bytes(),
            client_key.serialize_pem().into_bytes(),
        ),
    }
}

/// A server running on the test's runtime, stopped when dropped or by `stop`.
struct Running<H: Hooks + 'static> {
    addrs: HashMap<&'static str, SocketAddr>,
    handle: ServerHandle<H>,
    stop: Option<oneshot::Sender<()>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl<H: Hooks + 'static> Running<H> {
    fn port(&self, transport: &str) -> u16 {
        self.addrs[transport].port()
    }

    async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        (&mut self.done)
            .await
            .expect("server task")
            .expect("server run");
    }
}

async fn start<H: Hooks + Send + 'static>(
    mut server: Server<H>,
    transports: Vec<Transport>,
) -> Running<H> {
    let mut addrs = HashMap::new();
    for t in transports {
        let name = t.name();
        addrs.insert(name, server.bind("127.0.0.1:0", t).await.expect("bind"));
    }
    let handle = server.handle();
    let (stop, stopped) = oneshot::channel::<()>();
    let done = tokio::spawn(server.run(async {
        let _ = stopped.await;
    }));
    Running {
        addrs,
        handle,
        stop: Some(stop),
        done,
    }
}

fn topic(s: &str) -> TopicBuf {
    TopicBuf::try_from(s.to_owned()).unwrap()
}

/// The next message; the guard turns a lost message into a failure instead of a hang.
async fn next(incoming: &mut mqtt_tokio::Incoming) -> Message {
    tokio::time::timeout(std::time::Duration::from_secs(60), incoming.recv())
        .await
        .expect("no message for 60 s: one was lost")
        .expect("the client is running")
}

/// A subscriber and a publisher over `options`: `n` messages at `qos`, all received once
/// and in order.
async fn round_trip(options: impl Fn(&str) -> Options, n: u32, qos: QoS) {
    let (sub, mut incoming) = AsyncClient::connect(options("sub")).await.expect("sub");
    sub.subscribe("t/#", qos).await.expect("subscribe");
    let (publisher, _) = AsyncClient::connect(options("pub")).await.expect("pub");
    let sent = tokio::spawn(async move {
        let mut acks = Vec::new();
        for i in 0..n {
            let m = Message::new(topic("t/1"), i.to_be_bytes().to_vec(), qos);
            acks.push(publisher.enqueue(m).await.expect("enqueue"));
        }
        for a in acks {
            a.await.expect("acknowledged");
        }
        publisher.disconnect().await.expect("disconnect");
    });
    for i in 0..n {
        let m = next(&mut incoming).await;
        assert_eq!(m.payload.as_ref(), i.to_be_bytes(), "message {i}");
    }
    sent.await.expect("publisher");
    sub.disconnect().await.expect("disconnect");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qos_1_and_2_over_every_transport() {
    let pki = pki();
    let acceptor = tls_acceptor(&pki.server.0, &pki.server.1, None).unwrap();
    let server = Server::new(BrokerConfig::default(), mqtt_tokio::broker::AllowAll);
    let running = start(
        server,
        vec![
            Transport::Tcp,
            Transport::Ws,
            Transport::Tls(acceptor.clone()),
            Transport::Wss(acceptor),
        ],
    )
    .await;
    let tls = tls_config(Some(&pki.ca), None).unwrap();
    for (name, host) in [
        ("tcp", "127.0.0.1"),
        ("ws", "127.0.0.1"),
        ("tls", "localhost"),
        ("wss", "localhost"),
    ] {
        let port = running.port(name);
        let tls = tls.clone();
        let options = move |id: &str| {
            let mut o = Options::new(format!("{name}-{id}"), host, port);
            if name == "tls" || name == "wss" {
                o = o.tls(tls.clone());
            }
            if name == "ws" || name == "wss" {
                o = o.websocket("/mqtt");
            }
            o
        };
        round_trip(&options, 300, QoS::AtLeastOnce).await;
        round_trip(&options, 100, QoS::ExactlyOnce).await;
    }
    running.stop().await;
}

/// Logins are deferred; publish and subscribe are allowed at once.
struct Login;

impl Hooks for Login {
    fn authenticate(
        &mut self,
        _: &Context<'_>,
        _: &mqtt_tokio::mqtt_state::ConnectRequest,
    ) -> Verdict {
        Verdict::Defer
    }
}

fn with_login(id: &str, port: u16, user: &str, password: &str) -> Options {
    let mut o = Options::new(id, "127.0.0.1", port);
    o.config.username = Some(user.to_owned().into());
    o.config.password = Some(password.as_bytes().to_vec().into());
    o.reconnect = None;
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_login_that_waits_holds_up_no_one_else() {
    let gate = Arc::new(Notify::new());
    let seen: Arc<Mutex<Vec<Decision>>> = Arc::default();
    let mut server = Server::new(BrokerConfig::default(), Login);
    {
        let (gate, seen) = (gate.clone(), seen.clone());
        server.decide(move |d: Decision| {
            let (gate, seen) = (gate.clone(), seen.clone());
            async move {
                seen.lock().unwrap().push(d.clone());
                let RequestKind::Authenticate { username, password } = d.request.kind else {
                    return Answer::Deny(ReasonCode::ImplementationSpecificError);
                };
                match (username.as_deref(), password.as_deref()) {
                    (Some("slow"), Some(b"pw")) => {
                        // A check that takes as long as the test says.
                        gate.notified().await;
                        Answer::Allow
                    }
                    (Some("alice"), Some(b"pw")) => Answer::Allow,
                    _ => Answer::DenyWith(ReasonCode::BadUserNameOrPassword, "no".into()),
                }
            }
        });
    }
    let running = start(server, vec![Transport::Tcp]).await;
    let port = running.port("tcp");

    let slow = tokio::spawn(AsyncClient::connect(with_login("slow", port, "slow", "pw")));
    // While that login waits, another client connects, subscribes and gets its messages.
    let (alice, mut incoming) = AsyncClient::connect(with_login("alice", port, "alice", "pw"))
        .await
        .expect("alice");
    alice.subscribe("a/#", QoS::AtLeastOnce).await.unwrap();
    for i in 0..50u32 {
        alice
            .publish("a/b", QoS::AtLeastOnce, i.to_string())
            .await
            .unwrap();
        assert_eq!(
            next(&mut incoming).await.payload.as_ref(),
            i.to_string().as_bytes()
        );
    }
    assert!(
        !slow.is_finished(),
        "the gate is closed: the login cannot have finished"
    );
    gate.notify_one();
    let (slow, _) = slow
        .await
        .unwrap()
        .expect("slow login accepted once answered");
    slow.disconnect().await.unwrap();

    let refused = AsyncClient::connect(with_login("eve", port, "eve", "guess")).await;
    assert!(
        matches!(
            refused,
            Err(Error::Refused(ReasonCode::BadUserNameOrPassword))
        ),
        "{refused:?}"
    );

    let seen = seen.lock().unwrap().clone();
    let alice_decision = seen.iter().find(|d| d.username.as_deref() == Some("alice"));
    let alice_decision = alice_decision.expect("alice's login was decided");
    let peer = alice_decision.info.peer.expect("the peer's address");
    assert!(peer.ip().is_loopback());
    assert_eq!(alice_decision.protocol, mqtt_tokio::ProtocolVersion::V5);
    alice.disconnect().await.unwrap();
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_identity_reaches_the_decision() {
    let pki = pki();
    let acceptor = tls_acceptor(&pki.server.0, &pki.server.1, Some(&pki.ca)).unwrap();
    let identities: Arc<Mutex<Vec<Option<String>>>> = Arc::default();
    let mut server = Server::new(BrokerConfig::default(), Login);
    {
        let identities = identities.clone();
        server.decide(move |d: Decision| {
            identities.lock().unwrap().push(d.info.tls_identity.clone());
            async move {
                match d.info.tls_identity {
                    Some(_) => Answer::Allow,
                    None => Answer::Deny(ReasonCode::NotAuthorized),
                }
            }
        });
    }
    let running = start(server, vec![Transport::Tls(acceptor)]).await;
    let port = running.port("tls");
    let with_cert = tls_config(Some(&pki.ca), Some((&pki.client.0, &pki.client.1))).unwrap();
    let mut o = with_login("cert", port, "u", "p").tls(with_cert);
    o.host = "localhost".into();
    let (client, _) = AsyncClient::connect(o).await.expect("with a certificate");
    client.disconnect().await.unwrap();

    let without = tls_config(Some(&pki.ca), None).unwrap();
    let mut o = with_login("nocert", port, "u", "p").tls(without);
    o.host = "localhost".into();
    let refused = AsyncClient::connect(o).await;
    assert!(
        matches!(refused, Err(Error::Refused(ReasonCode::NotAuthorized))),
        "{refused:?}"
    );

    let digest = ring::digest::digest(&ring::digest::SHA256, &pki.client_der);
    let hex: String = digest.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let identities = identities.lock().unwrap().clone();
    assert_eq!(identities, vec![Some(format!("sha256:{hex}")), None]);
    running.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_handle_publishes_and_disconnects() {
    let server = Server::new(BrokerConfig::default(), mqtt_tokio::broker::AllowAll);
    let running = start(server, vec![Transport::Tcp]).await;
    let port = running.port("tcp");
    let mut options = Options::new("sub", "127.0.0.1", port);
    options.reconnect = None;
    let (sub, mut incoming) = AsyncClient::connect(options).await.unwrap();
    sub.subscribe("news/#", QoS::ExactlyOnce).await.unwrap();
    let m = Message::new(topic("news/1"), &b"hello"[..], QoS::ExactlyOnce);
    assert_eq!(running.handle.publish(m).await.unwrap(), 1);
    let got = next(&mut incoming).await;
    assert_eq!(
        (got.topic.as_str(), got.payload.as_ref()),
        ("news/1", &b"hello"[..])
    );
    assert_eq!(got.qos, QoS::ExactlyOnce);

    assert!(running.handle.connection("sub").await.unwrap().is_some());
    running
        .handle
        .disconnect("sub", ReasonCode::AdministrativeAction)
        .await
        .unwrap();
    // The client ends (no reconnect), so its messages end.
    assert!(incoming.recv().await.is_none());
    assert!(matches!(
        running
            .handle
            .disconnect("nobody", ReasonCode::AdministrativeAction)
            .await,
        Err(Error::Broker(_))
    ));
    let handle = running.handle.clone();
    running.stop().await;
    assert!(matches!(
        handle
            .publish(Message::new(topic("x"), &b""[..], QoS::AtMostOnce))
            .await,
        Err(Error::Stopped)
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_disconnects_every_client_and_returns() {
    let server = Server::new(BrokerConfig::default(), mqtt_tokio::broker::AllowAll);
    let running = start(server, vec![Transport::Tcp, Transport::Ws]).await;
    let mut clients = Vec::new();
    for (i, ws) in [(0, false), (1, true), (2, false)] {
        let mut o = Options::new(
            format!("c{i}"),
            "127.0.0.1",
            running.port(if ws { "ws" } else { "tcp" }),
        );
        if ws {
            o = o.websocket("/mqtt");
        }
        o.reconnect = None;
        clients.push(AsyncClient::connect(o).await.unwrap());
    }
    running.stop().await;
    for (_, mut incoming) in clients {
        assert!(incoming.recv().await.is_none(), "the connection ended");
    }
}
