#![allow(dead_code, unreachable_pub)]
//! A `mosquitto` broker on a free loopback port, with its configuration and persistence in
//! a temporary directory; killed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

#[path = "net.rs"]
pub(crate) mod net;
use net::{free_port, listens};

/// The `mosquitto` executable (Debian puts it in /usr/sbin, often not on PATH); fails the
/// test if there is none.
fn mosquitto_bin() -> PathBuf {
    let on_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("mosquitto"))
        .find(|p| p.is_file());
    on_path.expect(
        "the `mosquitto` broker is not installed (apt-get install mosquitto); \
         these tests fail rather than skip without it",
    )
}

/// Extra configuration lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Auth {
    Anonymous,
    /// `allow_anonymous false` and no password file: every CONNECT is refused.
    Nobody,
}

/// A running mosquitto.
pub(crate) struct Mosquitto {
    child: Option<Child>,
    dir: PathBuf,
    pub(crate) port: u16,
    /// A WebSocket listener (path-agnostic in mosquitto), if asked for.
    pub(crate) ws_port: Option<u16>,
    /// A TLS listener with a certificate for `localhost` only, if asked for.
    pub(crate) tls_port: Option<u16>,
    /// A WebSocket listener under TLS, if both were asked for.
    pub(crate) wss_port: Option<u16>,
}

/// What to listen on besides plain TCP.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Listeners {
    pub(crate) websocket: bool,
    pub(crate) tls: bool,
    /// The TLS listeners require a client certificate signed by the CA.
    pub(crate) client_cert: bool,
    /// Log errors and warnings only (benchmarks: logging every packet costs the broker).
    pub(crate) quiet: bool,
}

impl Mosquitto {
    /// Starts mosquitto with persistence on.
    pub(crate) fn start() -> Self {
        Self::with(Auth::Anonymous, Listeners::default())
    }

    pub(crate) fn with(auth: Auth, listeners: Listeners) -> Self {
        Self::with_config(auth, listeners, "")
    }

    /// [`Mosquitto::with`], with `extra` appended to the generated configuration (whole
    /// lines, each ending in a newline).
    pub(crate) fn with_config(auth: Auth, listeners: Listeners, extra: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mqtt-test-mosquitto-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        // Started as root, mosquitto drops to the `mosquitto` user before it writes its
        // persistence file.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))
            .expect("chmod temp dir");
        let port = free_port();
        let ws_port = listeners.websocket.then(free_port);
        let tls_port = listeners.tls.then(free_port);
        let wss_port = (listeners.tls && listeners.websocket).then(free_port);
        let mut conf = format!(
            "per_listener_settings false\n\
             allow_anonymous {}\n\
             persistence true\n\
             persistence_location {}/\n\
             log_dest stderr\n\
             log_type {}\n\
             listener {port} 127.0.0.1\n",
            auth == Auth::Anonymous,
            dir.display(),
            if listeners.quiet { "warning" } else { "all" },
        );
        if let Some(ws) = ws_port {
            conf.push_str(&format!("listener {ws} 127.0.0.1\nprotocol websockets\n"));
        }
        if listeners.tls {
            let (cert, key) = certificates(&dir);
            let mut tls = format!("certfile {}\nkeyfile {}\n", cert.display(), key.display());
            if listeners.client_cert {
                tls.push_str(&format!(
                    "cafile {}\nrequire_certificate true\n",
                    dir.join("ca.pem").display()
                ));
            }
            for (p, ws) in [(tls_port, false), (wss_port, true)] {
                if let Some(p) = p {
                    conf.push_str(&format!("listener {p} 127.0.0.1\n{tls}"));
                    if ws {
                        conf.push_str("protocol websockets\n");
                    }
                }
            }
        }
        conf.push_str(extra);
        std::fs::write(dir.join("mosquitto.conf"), conf).expect("write mosquitto.conf");
        let mut m = Self {
            child: None,
            dir,
            port,
            ws_port,
            tls_port,
            wss_port,
        };
        m.spawn();
        m
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("log"))
            .expect("open log");
        let child = Command::new(mosquitto_bin())
            .arg("-c")
            .arg(self.dir.join("mosquitto.conf"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        let ports = [Some(self.port), self.ws_port, self.tls_port, self.wss_port];
        let pid = self.child.as_ref().map_or(0, Child::id);
        while ports.iter().flatten().any(|p| !listens(pid, *p)) {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!("mosquitto exited: {status}\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto is not listening after 10 s\n{}",
                self.log()
            );
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops mosquitto with SIGTERM (so it writes its persistence file) and waits for it.
    pub(crate) fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait() {
                Ok(Some(_)) => return,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(20)),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!("mosquitto did not stop on SIGTERM within 10 s");
                }
            }
        }
    }

    /// Kills mosquitto with SIGKILL (no chance to write its persistence file, as in a
    /// crash) and starts it again on the same port `down` later.
    pub(crate) fn crash(&mut self, down: Duration) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        thread::sleep(down);
        self.spawn();
    }

    /// Stops and starts again on the same port, keeping its persistence file.
    pub(crate) fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// The CA that signed the TLS listener's certificate (and the client's): its file.
    pub(crate) fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// The plain TCP port, as command-line tools take it.
    pub(crate) fn port(&self) -> String {
        self.port.to_string()
    }

    /// The CA that signed the TLS listener's certificate (and the client's), PEM.
    pub(crate) fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.join("ca.pem")).expect("read ca.pem")
    }

    /// A client certificate and key signed by the CA, PEM.
    pub(crate) fn client_cert(&self) -> (Vec<u8>, Vec<u8>) {
        let read = |n: &str| std::fs::read(self.dir.join(n)).expect("read client PEM");
        (read("client.pem"), read("client.key"))
    }

    pub(crate) fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("log")).unwrap_or_default()
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if thread::panicking() {
            eprintln!("---- mosquitto log ----\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A CA (`dir/ca.pem`) and a server certificate for `localhost` only, signed by it: returns
/// the certificate and key files.
fn certificates(dir: &Path) -> (PathBuf, PathBuf) {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "mqtt test CA");
    let ca_cert = ca.self_signed(&ca_key).expect("CA certificate");
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate().expect("server key");
    let mut server = CertificateParams::new(vec!["localhost".to_string()]).expect("params");
    server
        .distinguished_name
        .push(DnType::CommonName, "localhost");
    let cert = server.signed_by(&key, &issuer).expect("server certificate");
    let write = |name: &str, pem: String| {
        let p = dir.join(name);
        std::fs::write(&p, pem).expect("write PEM");
        p
    };
    write("ca.pem", ca_cert.pem());
    let client_key = KeyPair::generate().expect("client key");
    let mut client = CertificateParams::new(Vec::<String>::new()).expect("params");
    client
        .distinguished_name
        .push(DnType::CommonName, "mqtt test client");
    let client_cert = client
        .signed_by(&client_key, &issuer)
        .expect("client certificate");
    write("client.pem", client_cert.pem());
    write("client.key", client_key.serialize_pem());
    (
        write("server.pem", cert.pem()),
        write("server.key", key.serialize_pem()),
    )
}
