//! `mqtt-broker -c FILE`: a mosquitto.conf-syntax configuration file. A listener on a free
//! port with a password file written by the real `mosquitto_passwd` and `allow_anonymous
//! false` lets `mosquitto_pub` in with the password only, and nothing listens that the
//! file does not declare; an option the broker does not support, and a bridge section it
//! cannot honour, make it exit non-zero naming the line.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use crate::broker::{
    broker_bin, collect_lines, require, require_mosquitto, run, Proc, DEFAULT_DEADLINE,
};

/// A fresh directory under the system temp dir, removed on drop.
pub(crate) struct TempDir(PathBuf);

impl TempDir {
    pub(crate) fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mqtt-interop-conf-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        Self(dir)
    }

    pub(crate) fn path(&self, name: &str) -> String {
        self.0
            .join(name)
            .to_str()
            .expect("utf-8 temp path")
            .to_string()
    }

    pub(crate) fn file(&self, name: &str, contents: &str) -> String {
        std::fs::write(self.0.join(name), contents).expect("write temp file");
        self.path(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The broker started with `-c FILE` only; killed on drop.
pub(crate) struct ConfBroker {
    child: Child,
    pub(crate) stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    pub(crate) port: u16,
}

impl ConfBroker {
    pub(crate) fn start(conf: &str) -> Self {
        let mut child = Command::new(broker_bin())
            .args(["-c", conf])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mqtt-broker");
        let stderr = collect_lines(child.stderr.take().expect("piped"), None);
        let (tx, rx) = mpsc::channel();
        let stdout = collect_lines(child.stdout.take().expect("piped"), Some(tx));
        let mut broker = Self {
            child,
            stdout,
            stderr,
            port: 0,
        };
        loop {
            match rx.recv_timeout(Duration::from_secs(10)) {
                Ok(line) => {
                    if let Some(addr) = line.strip_prefix("listening on tcp ") {
                        let addr: std::net::SocketAddr = addr.trim().parse().expect("address");
                        broker.port = addr.port();
                        break;
                    }
                }
                Err(_) => panic!(
                    "mqtt-broker -c {conf} printed no tcp listener\nstdout:\n{}\nstderr:\n{}",
                    broker.stdout.lock().unwrap().join("\n"),
                    broker.stderr.lock().unwrap().join("\n")
                ),
            }
        }
        broker
    }
}

impl Drop for ConfBroker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- mqtt-broker stderr ----");
            for l in self.stderr.lock().unwrap().iter() {
                eprintln!("{l}");
            }
        }
    }
}

#[test]
fn config_file_listener_password_file_no_anonymous() {
    require_mosquitto();
    require(
        "sh",
        &["-c", "command -v mosquitto_passwd"],
        "apt-get install mosquitto",
    );
    let dir = TempDir::new("passwd");
    let passwd = dir.path("passwd");
    run(
        Command::new("mosquitto_passwd").args(["-c", "-b", &passwd, "alice", "alice-pw"]),
        None,
        DEFAULT_DEADLINE,
    );
    // Port 0: a free port, which the broker prints (mosquitto gives port 0 to Unix sockets).
    let conf = dir.file(
        "broker.conf",
        &format!(
            "# mosquitto.conf syntax\n\
             listener 0 127.0.0.1\n\
             \n\
             allow_anonymous false\n\
             password_file {passwd}\n\
             persistence false\n"
        ),
    );
    let broker = ConfBroker::start(&conf);
    let port = broker.port.to_string();
    let publish = |v: &str, login: Option<(&str, &str)>| {
        let mut c = Command::new("mosquitto_pub");
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-V",
            v,
            "-t",
            "t",
            "-m",
            "x",
        ]);
        if let Some((user, pw)) = login {
            c.args(["-u", user, "-P", pw]);
        }
        Proc::spawn(&mut c, None).finish(DEFAULT_DEADLINE)
    };
    for v in ["mqttv5", "mqttv311"] {
        let out = publish(v, Some(("alice", "alice-pw")));
        assert!(out.status.success(), "{v}: with the password: {out:?}");
        let out = publish(v, Some(("alice", "wrong")));
        assert!(
            !out.status.success(),
            "{v}: a wrong password got in: {out:?}"
        );
        let err = out.stderr.join("\n").to_lowercase();
        assert!(err.contains("bad user name or password"), "{v}: {err}");
        let out = publish(v, None);
        assert!(
            !out.status.success(),
            "{v}: an anonymous client got in: {out:?}"
        );
        let err = out.stderr.join("\n").to_lowercase();
        assert!(err.contains("not authori"), "{v}: {err}");
    }
    // Only the declared listener: no WebSocket one (the flags' default has one).
    let stdout = broker.stdout.lock().unwrap().clone();
    let listening: Vec<_> = stdout
        .iter()
        .filter(|l| l.starts_with("listening on "))
        .collect();
    assert_eq!(listening.len(), 1, "{stdout:?}");
    assert!(
        stdout.iter().any(|l| l.starts_with("store in memory")),
        "{stdout:?}"
    );
}

/// Runs `mqtt-broker -c FILE` with `text` in the file; it must exit non-zero at once.
fn refused(text: &str) -> (String, String) {
    let dir = TempDir::new("bad");
    let conf = dir.file("broker.conf", text);
    let out =
        Proc::spawn(Command::new(broker_bin()).args(["-c", &conf]), None).finish(DEFAULT_DEADLINE);
    assert!(!out.status.success(), "exit status {}: {out:?}", out.status);
    (conf, out.stderr.join("\n"))
}

#[test]
fn config_file_unsupported_option_exits_non_zero() {
    let (conf, err) =
        refused("listener 0 127.0.0.1\nallow_anonymous true\n\n# logging\nlog_dest stdout\n");
    assert!(
        err.contains(&format!(
            "mqtt-broker: {conf}:5: unsupported option 'log_dest'"
        )),
        "{err}"
    );
    let (conf, err) = refused("listener 0 127.0.0.1\nmax_keepalive forever\n");
    assert!(
        err.contains(&format!("{conf}:2: bad value for 'max_keepalive'")),
        "{err}"
    );
}

#[test]
fn config_file_bridge_it_cannot_honour_exits_non_zero() {
    // Fallback addresses and bridge_insecure are not supported: refused, naming the
    // bridge's line, rather than run differently from what the file says.
    let (conf, err) = refused(
        "listener 0 127.0.0.1\nallow_anonymous true\n\
         connection upstream\naddresses 127.0.0.1:1 127.0.0.1:2\ntopic # both 1\n",
    );
    assert!(
        err.contains(&format!("{conf}:3: bridge 'upstream': one address only")),
        "{err}"
    );
    let (conf, err) = refused(
        "listener 0 127.0.0.1\nallow_anonymous true\n\
         connection upstream\naddress 127.0.0.1:1\ntopic # both 1\n\
         bridge_cafile /nonexistent/ca.pem\nbridge_insecure true\n",
    );
    assert!(
        err.contains(&format!(
            "{conf}:3: bridge 'upstream': bridge_insecure true is not supported"
        )),
        "{err}"
    );
}
