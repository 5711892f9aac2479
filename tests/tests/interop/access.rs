//! Access control and TLS: a password file written by the real `mosquitto_passwd` (`$7$`,
//! PBKDF2-SHA512) plus an Argon2 line from `mqtt-broker hash-password`, a mosquitto-format
//! ACL file, and TLS with a throwaway CA from `rcgen` for `mosquitto_pub`/`mosquitto_sub`
//! (`--tls-bind`) and paho over WebSocket (`--wss-bind`).
//!
//! CONNACK and SUBACK codes are read with a raw client whose packets `mqtt_codec` encodes
//! and decodes.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use mqtt_codec::{
    decode, Connect, DecodeOptions, List, Packet, PacketId, ProtocolVersion, Publish, QoS, QosPid,
    ReasonCode, Status, Subscribe, Subscription, SubscriptionOptions, Topic,
};

use crate::broker::{
    broker_bin, require, require_mosquitto, require_paho, run, Broker, Proc, DEFAULT_DEADLINE,
};

const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A fresh directory under the system temp dir, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mqtt-interop-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    fn file(&self, name: &str, contents: &str) -> String {
        let p = self.0.join(name);
        std::fs::write(&p, contents).expect("write temp file");
        self.path(name)
    }

    fn path(&self, name: &str) -> String {
        self.0
            .join(name)
            .to_str()
            .expect("utf-8 temp path")
            .to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Users: `alice`/`alice-pw` and `watcher`/`watcher-pw` hashed by `mosquitto_passwd`
/// (`$7$`), `bob`/`bob-pw` by `mqtt-broker hash-password` (Argon2id).
fn password_file(dir: &TempDir) -> String {
    require(
        "sh",
        &["-c", "command -v mosquitto_passwd"],
        "apt-get install mosquitto",
    );
    let file = dir.path("passwd");
    run(
        Command::new("mosquitto_passwd").args(["-c", "-b", &file, "alice", "alice-pw"]),
        None,
        DEFAULT_DEADLINE,
    );
    run(
        Command::new("mosquitto_passwd").args(["-b", &file, "watcher", "watcher-pw"]),
        None,
        DEFAULT_DEADLINE,
    );
    let text = std::fs::read_to_string(&file).expect("read password file");
    assert!(
        text.lines().all(|l| l.contains(":$7$")),
        "mosquitto_passwd wrote $7$ hashes: {text}"
    );
    // The password on stdin, as an operator would type it.
    let out = run(
        Command::new(broker_bin()).args(["hash-password", "bob"]),
        Some(b"bob-pw\n".to_vec()),
        DEFAULT_DEADLINE,
    );
    let line = out.stdout.join("\n");
    assert!(line.starts_with("bob:$argon2id$"), "{line}");
    assert!(!line.contains("bob-pw"));
    std::fs::write(&file, format!("{text}{line}\n")).expect("append to password file");
    file
}

const ACL: &str = "\
# anonymous clients (--allow-anonymous): read public/# only
topic read public/#

user alice
topic readwrite alice/#
topic write shared/in
topic read shared/+/out

user watcher
topic read #

user bob
topic read bob/#

# everyone
pattern readwrite users/%u/#
";

/// A client over raw TCP, packets encoded and decoded by `mqtt_codec`.
struct Raw {
    stream: TcpStream,
    buf: Vec<u8>,
    version: ProtocolVersion,
}

impl Raw {
    fn connect(
        broker: &Broker,
        version: ProtocolVersion,
        client_id: &str,
        login: Option<(&str, &str)>,
    ) -> (Self, ReasonCode, u8) {
        let stream = TcpStream::connect_timeout(&broker.tcp, READ_TIMEOUT).expect("connect");
        stream.set_read_timeout(Some(READ_TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let mut raw = Self {
            stream,
            buf: Vec::new(),
            version,
        };
        let mut c = Connect::new(version, client_id);
        if let Some((user, password)) = login {
            c.username = Some(user);
            c.password = Some(password.as_bytes());
        }
        raw.send(&Packet::Connect(c));
        let (code, byte) = raw.recv(|p, frame| match p {
            // The last byte of a 3.1.1 CONNACK is its return code; a 5.0 one's reason code
            // is the second byte of the body.
            Packet::ConnAck(a) => Some((a.reason_code, frame[3])),
            _ => None,
        });
        (raw, code, byte)
    }

    fn send(&mut self, p: &Packet<'_>) {
        let bytes = p.encode_to_vec(self.version).expect("encode");
        self.stream.write_all(&bytes).expect("write");
    }

    /// The next packet, handed to `f` with its frame; panics on close or timeout.
    fn recv<T>(&mut self, f: impl Fn(Packet<'_>, &[u8]) -> Option<T>) -> T {
        loop {
            let opts = DecodeOptions::new(self.version);
            if let Status::Complete { packet, consumed } = decode(&self.buf, &opts).expect("decode")
            {
                let frame = self.buf[..consumed].to_vec();
                let r = f(packet, &frame);
                self.buf.drain(..consumed);
                return r.expect("an unexpected packet");
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => panic!("closed by the broker"),
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == ErrorKind::ConnectionReset => panic!("reset by the broker"),
                // A read with a timeout is not restarted after a signal (signal(7)).
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => panic!("no packet within {READ_TIMEOUT:?}: {e}"),
            }
        }
    }

    /// SUBSCRIBE to `filters` at QoS 0 in one packet; the SUBACK's codes and raw bytes.
    fn subscribe(&mut self, filters: &[&str]) -> (Vec<ReasonCode>, Vec<u8>) {
        let subs: Vec<_> = filters
            .iter()
            .map(|f| Subscription {
                filter: f,
                options: SubscriptionOptions::qos(QoS::AtMostOnce),
            })
            .collect();
        let id = PacketId::new(1).unwrap();
        self.send(&Packet::Subscribe(Subscribe::new(id, List::new(&subs))));
        let n = filters.len();
        self.recv(|p, frame| match p {
            Packet::SubAck(a) => Some((
                a.reason_codes.iter().collect(),
                frame[frame.len() - n..].to_vec(),
            )),
            _ => None,
        })
    }

    /// A QoS 0 PUBLISH.
    fn publish(&mut self, topic: &str, payload: &str) {
        self.send(&Packet::Publish(Publish::new(
            Topic::new(topic).expect("a valid topic"),
            payload.as_bytes(),
            QosPid::AtMostOnce,
        )));
    }
}

#[test]
fn password_file_refuses_bad_logins() {
    require_mosquitto();
    let dir = TempDir::new("passwd");
    let passwd = password_file(&dir);
    let broker = Broker::start(&["--password-file", &passwd]);
    use ProtocolVersion::{V3_1_1 as V4, V5};

    // 5.0: Bad user name or password (0x86); 3.1.1: return code 4.
    let (_, code, byte) = Raw::connect(&broker, V5, "c1", Some(("alice", "wrong")));
    assert_eq!((code, byte), (ReasonCode::BadUserNameOrPassword, 0x86));
    let (_, _, byte) = Raw::connect(&broker, V4, "c2", Some(("alice", "wrong")));
    assert_eq!(byte, 4);
    let (_, code, _) = Raw::connect(&broker, V5, "c3", Some(("nobody", "alice-pw")));
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    // Argon2 user, wrong password.
    let (_, code, _) = Raw::connect(&broker, V5, "c4", Some(("bob", "alice-pw")));
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
    // Anonymous: Not authorized (0x87); 3.1.1: return code 5.
    let (_, code, byte) = Raw::connect(&broker, V5, "c5", None);
    assert_eq!((code, byte), (ReasonCode::NotAuthorized, 0x87));
    let (_, _, byte) = Raw::connect(&broker, V4, "c6", None);
    assert_eq!(byte, 5);

    // The right passwords, both hash formats.
    let (_, code, _) = Raw::connect(&broker, V5, "c7", Some(("alice", "alice-pw")));
    assert_eq!(code, ReasonCode::Success);
    let (_, _, byte) = Raw::connect(&broker, V4, "c8", Some(("bob", "bob-pw")));
    assert_eq!(byte, 0);

    // mosquitto's clients see the same.
    let base = |v: &str, user: &str, pw: &str| {
        let mut c = Command::new("mosquitto_pub");
        c.args(["-h", "127.0.0.1", "-p", &broker.port(), "-V", v]);
        c.args(["-u", user, "-P", pw, "-t", "t", "-m", "x"]);
        c
    };
    for v in ["mqttv5", "mqttv311"] {
        let out = Proc::spawn(&mut base(v, "alice", "wrong"), None).finish(DEFAULT_DEADLINE);
        assert!(!out.status.success(), "{v}: {out:?}");
        let err = out.stderr.join("\n").to_lowercase();
        assert!(
            err.contains("bad user name or password"),
            "{v}: mosquitto_pub said: {err}"
        );
        run(&mut base(v, "alice", "alice-pw"), None, DEFAULT_DEADLINE);
    }
}

#[test]
fn allow_anonymous_with_password_file() {
    let dir = TempDir::new("anon");
    let passwd = password_file(&dir);
    let broker = Broker::start(&["--password-file", &passwd, "--allow-anonymous"]);
    let (_, code, _) = Raw::connect(&broker, ProtocolVersion::V5, "anon", None);
    assert_eq!(code, ReasonCode::Success);
    let login = Some(("alice", "wrong"));
    let (_, code, _) = Raw::connect(&broker, ProtocolVersion::V5, "x", login);
    assert_eq!(code, ReasonCode::BadUserNameOrPassword);
}

#[test]
fn acl_refuses_subscriptions_and_drops_publishes() {
    require_mosquitto();
    let dir = TempDir::new("acl");
    let passwd = password_file(&dir);
    let acl = dir.file("acl", ACL);
    let broker = Broker::start(&[
        "--password-file",
        &passwd,
        "--acl-file",
        &acl,
        "--allow-anonymous",
    ]);
    let alice = Some(("alice", "alice-pw"));

    // 5.0: Granted QoS 0 or Not authorized (0x87) per filter.
    let (mut a5, code, _) = Raw::connect(&broker, ProtocolVersion::V5, "a5", alice);
    assert_eq!(code, ReasonCode::Success);
    let (codes, bytes) = a5.subscribe(&[
        "alice/#",
        "#",
        "shared/+/out",
        "shared/x/out",
        "shared/#",
        "users/alice/+",
        "users/bob/x",
        "$share/g/alice/inbox",
        "bob/x",
    ]);
    let ok = ReasonCode::Success;
    let no = ReasonCode::NotAuthorized;
    assert_eq!(codes, [ok, no, ok, ok, no, ok, no, ok, no]);
    assert_eq!(bytes, [0, 0x87, 0, 0, 0x87, 0, 0x87, 0, 0x87]);

    // 3.1.1: 0x80 Failure.
    let (mut a4, _, byte) = Raw::connect(&broker, ProtocolVersion::V3_1_1, "a4", alice);
    assert_eq!(byte, 0);
    let (_, bytes) = a4.subscribe(&["alice/x", "secret/#"]);
    assert_eq!(bytes, [0, 0x80]);

    // Anonymous: read public/# only.
    let (mut anon, _, _) = Raw::connect(&broker, ProtocolVersion::V5, "anon", None);
    let (codes, _) = anon.subscribe(&["public/+", "alice/#", "users/%u/x"]);
    assert_eq!(codes, [ok, no, no]);

    // Publishes: `watcher` reads everything; what alice may not write never arrives.
    let mut c = Command::new("stdbuf");
    c.args([
        "-oL",
        "mosquitto_sub",
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port(),
    ]);
    c.args([
        "-V",
        "mqttv311",
        "-u",
        "watcher",
        "-P",
        "watcher-pw",
        "-d",
        "-v",
    ]);
    c.args(["-t", "#"]);
    let mut watcher = Proc::spawn(&mut c, None);
    watcher.wait_for("Subscribed (mid", READ_TIMEOUT);
    // One connection, in order: were the refused ones delivered, they would come first.
    for (i, topic) in [
        "secret/a",
        "public/news",
        "shared/out/x",
        "users/bob/x",
        "alice/ok",
    ]
    .iter()
    .enumerate()
    {
        a4.publish(topic, &format!("m{i}"));
    }
    // And 5.0 too (its publishes are acknowledged Not authorized at QoS 1; at QoS 0 they
    // are just dropped).
    a5.publish("secret/b", "m5");
    a5.publish("users/alice/ok", "m6");
    watcher.wait_for("users/alice/ok m6", READ_TIMEOUT);
    watcher.kill();
    let out = watcher.finish(DEFAULT_DEADLINE);
    let got: Vec<_> = out
        .stdout
        .iter()
        .filter(|l| !l.starts_with("Client ") && !l.starts_with("Subscribed"))
        .cloned()
        .collect();
    assert_eq!(got, ["alice/ok m4", "users/alice/ok m6"]);
}

/// A CA and a server certificate for `127.0.0.1` and `localhost`, as PEM files in `dir`:
/// (ca.pem, server.pem, server.key).
fn certificates(dir: &TempDir) -> (String, String, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "mqtt interop test CA");
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().unwrap();
    let mut server =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    server.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    server.use_authority_key_identifier_extension = true;
    let cert = server.signed_by(&key, &issuer).unwrap();
    (
        dir.file("ca.pem", &ca_cert.pem()),
        dir.file("server.pem", &cert.pem()),
        dir.file("server.key", &key.serialize_pem()),
    )
}

fn tls_broker(dir: &TempDir, extra: &[&str]) -> Broker {
    let (_, cert, key) = certificates(dir);
    let mut args = vec![
        "--tls-bind",
        "127.0.0.1:0",
        "--wss-bind",
        "127.0.0.1:0",
        "--cert",
        &cert,
        "--key",
        &key,
    ];
    args.extend_from_slice(extra);
    Broker::start(&args)
}

#[test]
fn tls_with_mosquitto_clients() {
    require_mosquitto();
    let dir = TempDir::new("tls");
    let passwd = password_file(&dir);
    let broker = tls_broker(&dir, &["--password-file", &passwd]);
    let ca = dir.path("ca.pem");
    let port = broker.tls.expect("tls listener").port().to_string();
    for v in ["mqttv311", "mqttv5"] {
        let tls = |c: &mut Command| {
            c.args(["-h", "127.0.0.1", "-p", &port, "--cafile", &ca, "-V", v]);
            c.args(["-u", "alice", "-P", "alice-pw"]);
        };
        let mut c = Command::new("stdbuf");
        c.args(["-oL", "mosquitto_sub", "-d", "-v", "-C", "1", "-t", "tls/#"]);
        tls(&mut c);
        let mut sub = Proc::spawn(&mut c, None);
        sub.wait_for("Subscribed (mid", READ_TIMEOUT);
        let mut c = Command::new("mosquitto_pub");
        c.args(["-t", "tls/x", "-m", v, "-q", "1"]);
        tls(&mut c);
        run(&mut c, None, DEFAULT_DEADLINE);
        let out = sub.success(DEFAULT_DEADLINE);
        assert!(
            out.stdout.iter().any(|l| l == &format!("tls/x {v}")),
            "{out:?}"
        );
    }
    // Without the CA the client refuses the certificate.
    let out = Proc::spawn(
        Command::new("mosquitto_pub").args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "--capath",
            "/nonexistent",
            "-t",
            "t",
            "-m",
            "x",
        ]),
        None,
    )
    .finish(DEFAULT_DEADLINE);
    assert!(!out.status.success());
    // Plain MQTT to the TLS port gets nowhere, and the broker is still fine.
    let mut plain = Command::new("mosquitto_pub");
    plain.args(["-h", "127.0.0.1", "-p", &port, "-t", "t", "-m", "x"]);
    let out = Proc::spawn(&mut plain, None).finish(DEFAULT_DEADLINE);
    assert!(!out.status.success());
    let mut c = Command::new("mosquitto_pub");
    c.args([
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port(),
        "-t",
        "t",
        "-m",
        "x",
    ]);
    c.args(["-u", "alice", "-P", "alice-pw"]);
    run(&mut c, None, DEFAULT_DEADLINE);
}

#[test]
fn wss_with_paho() {
    require_paho();
    let dir = TempDir::new("wss");
    let broker = tls_broker(&dir, &[]);
    let ca = dir.path("ca.pem");
    let wss = broker.wss.expect("wss listener");
    let script = r#"
import sys, threading
import paho.mqtt.client as mqtt
host, port, ca = sys.argv[1], int(sys.argv[2]), sys.argv[3]
got, done = [], threading.Event()
def make(cid):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid,
                    protocol=mqtt.MQTTv5, transport="websockets")
    c.ws_set_options(path="/mqtt")
    c.tls_set(ca_certs=ca)
    return c
sub = make("wss-sub")
subscribed = threading.Event()
sub.on_subscribe = lambda *a: subscribed.set()
def on_message(c, u, m):
    got.append((m.topic, m.payload.decode()))
    done.set()
sub.on_message = on_message
sub.on_connect = lambda c, *a: c.subscribe("wss/#", qos=1)
sub.connect(host, port)
sub.loop_start()
assert subscribed.wait(10), "no SUBACK"
pub = make("wss-pub")
pub.connect(host, port)
pub.loop_start()
pub.publish("wss/t", "over tls", qos=1).wait_for_publish(10)
assert done.wait(10), "no message"
assert got == [("wss/t", "over tls")], got
print("OK")
"#;
    let out = run(
        Command::new("python3").args(["-c", script, "127.0.0.1", &wss.port().to_string(), &ca]),
        None,
        DEFAULT_DEADLINE,
    );
    assert_eq!(out.stdout.last().map(String::as_str), Some("OK"), "{out:?}");
}
