#![allow(dead_code, unreachable_pub)]
//! A cluster of real `nats-server` processes on free loopback ports, for the tests of the
//! broker cluster over NATS (issue #16): each server has its configuration, JetStream
//! store and log in one temporary directory, routes to every other server, and JetStream
//! on. Plain `std` (processes, sockets, files), so that any test can use it whatever
//! client it drives NATS with.
//!
//! `nats-server` is required: without it [`NatsCluster::start`] panics with the command
//! that installs it; the tests fail, they do not skip. `NATS_SERVER_BIN` names another
//! executable. Every wait is bounded (a cluster that never forms fails the test with the
//! servers' logs); nothing is timed.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread;
use std::time::{Duration, Instant};

// The interop tests load it through mosquitto's harness too: two copies, one source.
#[allow(clippy::duplicate_mod)]
#[path = "../../../mqtt-tokio/tests/support/net.rs"]
mod net;
use net::{free_port, listens};

/// How long a server may take to listen, and the cluster to form (routes connected,
/// JetStream meta leader elected, streams caught up). Generous: a bound that turns a hang
/// into a failure, on a loaded two-core CI machine.
const FORM_TIMEOUT: Duration = Duration::from_secs(60);

/// The `nats-server` executable: `NATS_SERVER_BIN`, else on PATH or in /usr/sbin (where
/// Debian puts it, often not on a user's PATH). Panics if there is none.
pub fn nats_server_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("NATS_SERVER_BIN") {
        let p = PathBuf::from(p);
        assert!(
            p.is_file(),
            "NATS_SERVER_BIN={} is not a file (apt-get install nats-server puts one in \
             /usr/sbin)",
            p.display()
        );
        return p;
    }
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default()
        .into_iter()
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/local/sbin")])
        .map(|d| d.join("nats-server"))
        .find(|p| p.is_file())
        .expect(
            "`nats-server` is not installed (apt-get install nats-server, or `bash .ci/deps`; \
             or set NATS_SERVER_BIN); the cluster tests fail rather than skip without it",
        )
}

/// `GET path` on the monitoring port: the status code and the body, or `None` if the
/// server does not answer (not up yet, or killed).
fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.set_write_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut response = String::new();
    s.read_to_string(&mut response).ok()?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())?;
    let body = response.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Some((status, body.to_owned()))
}

/// The number after `"key":` in a JSON text (the monitoring endpoints' flat counters; a
/// JSON parser is not worth a dependency here).
fn json_number(json: &str, key: &str) -> Option<u64> {
    let rest = &json[json.find(&format!("\"{key}\""))? + key.len() + 2..];
    let rest = rest.trim_start().strip_prefix(':')?.trim_start();
    let digits = rest.split(|c: char| !c.is_ascii_digit()).next()?;
    digits.parse().ok()
}

/// One server of the cluster.
struct Server {
    name: String,
    /// Client port (`nats://127.0.0.1:port`).
    port: u16,
    /// Route port (`cluster { listen }`).
    cluster_port: u16,
    /// HTTP monitoring port (`/varz`, `/routez`, `/healthz`, `/jsz`).
    http_port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

impl Server {
    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open nats-server log");
        let child = Command::new(nats_server_bin())
            .arg("-c")
            .arg(&self.conf)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start nats-server ({}): {e}", nats_server_bin().display()));
        self.child = Some(child);
    }

    fn running(&self) -> bool {
        self.child.is_some()
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `n` clustered `nats-server` processes with JetStream; all killed on drop (their logs
/// printed if the test is panicking) and their directory removed.
pub struct NatsCluster {
    dir: PathBuf,
    servers: Vec<Server>,
}

impl NatsCluster {
    /// Starts `n` servers (`n0`, `n1`, ..., as `server_name`) routed to each other, with
    /// JetStream on, and waits until the cluster has formed: every server listens, has a
    /// route to every other one, and reports itself healthy (`/healthz`: JetStream meta
    /// leader known and the server current). JetStream clusters need a quorum, so `n` is
    /// 1 (no cluster block) or at least 3.
    pub fn start(n: usize) -> Self {
        assert!(
            n == 1 || n >= 3,
            "a JetStream cluster needs at least 3 servers (or 1, unclustered); got {n}"
        );
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "mqtt-test-nats-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create temp dir");
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let mut servers = Vec::with_capacity(n);
        for (i, &(port, cluster_port, http_port)) in ports.iter().enumerate() {
            let name = format!("n{i}");
            let store = dir.join(format!("{name}-jetstream"));
            // Limits well below the defaults (75% of memory and of the disk), as several
            // clusters may run at once.
            let mut conf = format!(
                "server_name: {name}\n\
                 listen: 127.0.0.1:{port}\n\
                 http: 127.0.0.1:{http_port}\n\
                 jetstream {{\n  store_dir: {store:?}\n  max_memory_store: 64MB\n  \
                 max_file_store: 256MB\n}}\n",
            );
            if n > 1 {
                let routes: Vec<String> = ports
                    .iter()
                    .enumerate()
                    .filter(|&(j, _)| j != i)
                    .map(|(_, &(_, c, _))| format!("    nats-route://127.0.0.1:{c}"))
                    .collect();
                conf.push_str(&format!(
                    "cluster {{\n  name: mqtt-test\n  listen: 127.0.0.1:{cluster_port}\n  \
                     routes: [\n{}\n  ]\n}}\n",
                    routes.join("\n")
                ));
            }
            let conf_file = dir.join(format!("{name}.conf"));
            std::fs::write(&conf_file, conf).expect("write nats-server config");
            servers.push(Server {
                log: dir.join(format!("{name}.log")),
                name,
                port,
                cluster_port,
                http_port,
                conf: conf_file,
                child: None,
            });
        }
        let mut cluster = Self { dir, servers };
        for s in &mut cluster.servers {
            s.spawn();
        }
        cluster.wait_formed();
        cluster
    }

    /// How many servers the cluster has (running or not).
    pub fn len(&self) -> usize {
        self.servers.len()
    }

    /// Server `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("nats://127.0.0.1:{}", self.servers[i].port)
    }

    /// All servers' client URLs, in order.
    pub fn urls(&self) -> Vec<String> {
        (0..self.servers.len()).map(|i| self.url(i)).collect()
    }

    /// Server `i`'s client port.
    pub fn port(&self, i: usize) -> u16 {
        self.servers[i].port
    }

    /// Server `i`'s HTTP monitoring port.
    pub fn http_port(&self, i: usize) -> u16 {
        self.servers[i].http_port
    }

    /// Server `i`'s `server_name` (as JetStream reports stream leaders and peers).
    pub fn name(&self, i: usize) -> &str {
        &self.servers[i].name
    }

    /// `GET path` on server `i`'s monitoring port (`/varz`, `/jsz?streams=1`, ...): the
    /// body if it answered 200.
    pub fn monitor(&self, i: usize, path: &str) -> Option<String> {
        match http_get(self.servers[i].http_port, path) {
            Some((200, body)) => Some(body),
            _ => None,
        }
    }

    /// Kills server `i` with SIGKILL (a crash: no lame-duck mode, no goodbye to routes or
    /// clients) and waits for the process to be gone.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.servers[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts server `i` again, on the same ports with the same JetStream store, and waits
    /// until the running servers form one cluster again (see [`NatsCluster::start`]).
    pub fn restart(&mut self, i: usize) {
        self.kill(i);
        self.servers[i].spawn();
        self.wait_formed();
    }

    /// Server `i`'s log so far (all its runs).
    pub fn log(&self, i: usize) -> String {
        self.servers[i].log_text()
    }

    /// Waits until every running server listens on its client, route and monitoring
    /// ports, has a route to every other running server, and answers `/healthz` with 200
    /// (which in a JetStream cluster means: a meta leader is known, and this server's
    /// copies of the streams and consumers are current).
    fn wait_formed(&mut self) {
        let deadline = Instant::now() + FORM_TIMEOUT;
        let clustered = self.servers.len() > 1;
        let running = self.servers.iter().filter(|s| s.running()).count() as u64;
        loop {
            let mut waiting_for = None;
            for s in &mut self.servers {
                let Some(child) = s.child.as_mut() else {
                    continue;
                };
                if let Ok(Some(status)) = child.try_wait() {
                    let name = s.name.clone();
                    s.child = None;
                    panic!("nats-server {name} exited: {status}\n{}", self.logs());
                }
                let pid = child.id();
                let mut ports = vec![s.port, s.http_port];
                if clustered {
                    ports.push(s.cluster_port);
                }
                if let Some(p) = ports.iter().find(|&&p| !listens(pid, p)) {
                    waiting_for = Some(format!("{} to listen on port {p}", s.name));
                    break;
                }
                if clustered {
                    let routes = http_get(s.http_port, "/routez")
                        .filter(|(code, _)| *code == 200)
                        .and_then(|(_, body)| json_number(&body, "num_routes"));
                    if routes.is_none_or(|r| r < running - 1) {
                        waiting_for = Some(format!(
                            "{} to have routes to the {} other running servers (has {routes:?})",
                            s.name,
                            running - 1
                        ));
                        break;
                    }
                }
                match http_get(s.http_port, "/healthz") {
                    Some((200, _)) => {}
                    other => {
                        waiting_for = Some(format!("{} to be healthy ({other:?})", s.name));
                        break;
                    }
                }
            }
            let Some(what) = waiting_for else {
                return;
            };
            assert!(
                Instant::now() < deadline,
                "NATS cluster not formed after {FORM_TIMEOUT:?}: waiting for {what}\n{}",
                self.logs()
            );
            thread::sleep(Duration::from_millis(50));
        }
    }

    /// Every server's log, each under a header.
    pub fn logs(&self) -> String {
        self.servers
            .iter()
            .map(|s| format!("---- nats-server {} log ----\n{}", s.name, s.log_text()))
            .collect::<Vec<_>>()
            .join("\n")
    }
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for i in 0..self.servers.len() {
            self.kill(i);
        }
        if thread::panicking() {
            eprintln!("{}", self.logs());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
