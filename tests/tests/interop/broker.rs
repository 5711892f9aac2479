//! Support for the interop tests: builds and starts the example broker, runs peer
//! processes with deadlines, and checks that the peers are installed.
//!
//! # Finding the broker binary
//!
//! `env!("CARGO_BIN_EXE_..")` only names binaries of the package under test, and the broker
//! lives in `mqtt-examples`. So the first test to need it runs
//!
//! ```text
//! cargo build -p mqtt-examples --bin mqtt-broker --message-format=json --target-dir <target>/interop
//! ```
//!
//! once per test binary and takes the `executable` path from cargo's JSON. A target
//! directory of its own, next to the one running the tests, means the nested cargo never
//! waits for the build lock that the outer `cargo test` may hold, and never fights it over
//! feature sets (`--workspace --all-features` unifies features differently from
//! `-p mqtt-examples`, which would relink the broker on every alternate run). The first
//! build in a fresh checkout compiles tokio and friends once; later runs are a freshness
//! check. `MQTT_BROKER_BIN=/path/to/mqtt-broker` skips the build.
//!
//! # Peers
//!
//! `mosquitto_pub`/`mosquitto_sub` (Debian `mosquitto-clients`) and Python `paho-mqtt`
//! 2.x must be installed: a missing peer fails the test loudly rather than skipping it,
//! so CI cannot pass without them (`.ci/run` installs both). The access-control tests also
//! need `mosquitto_passwd` (Debian `mosquitto`).
//!
//! # Data directories
//!
//! The broker is durable by default and keeps its store in `--data-dir` (default
//! `mqtt-broker-data` in the working directory, which one broker at a time can hold). Tests
//! run many brokers at once, so [`Broker::start`] gives each a directory of its own under
//! the system's temporary directory (unless the test passes `--data-dir` or
//! `--in-memory`) and removes it when the broker is dropped; [`Broker::start_in`] uses a
//! given directory and leaves it, for a test that restarts a broker on the same store.
//!
//! # No hangs
//!
//! Every wait is bounded: processes are killed at their deadline (and on drop), socket
//! reads carry timeouts, the broker is killed when its [`Broker`] handle drops.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, Instant};

/// How long a peer process may run unless a test says otherwise.
pub(crate) const DEFAULT_DEADLINE: Duration = Duration::from_secs(20);

/// The broker executable, built on first use (see the module docs).
pub(crate) fn broker_bin() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| example_bin("mqtt-broker", "MQTT_BROKER_BIN"))
}

/// Builds the `mqtt-examples` binary `name` as the module docs describe (the path in the
/// environment variable `env`, if set, skips the build) and returns its path.
pub(crate) fn example_bin(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    let cargo = std::env::var_os("CARGO")
        .or_else(|| option_env!("CARGO").map(Into::into))
        .unwrap_or_else(|| "cargo".into());
    let out = Command::new(cargo)
        .current_dir(workspace_root())
        .args([
            "build",
            "-p",
            "mqtt-examples",
            "--bin",
            name,
            "--message-format=json-render-diagnostics",
            "--target-dir",
        ])
        .arg(target_dir().join("interop"))
        .stderr(Stdio::inherit())
        .output()
        .unwrap_or_else(|e| panic!("run cargo to build {name}: {e}"));
    assert!(out.status.success(), "building {name} failed");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let exe = stdout
        .lines()
        .filter(|l| l.contains(r#""reason":"compiler-artifact""#))
        .filter(|l| l.contains(&format!(r#""name":"{name}""#)))
        .find_map(|l| json_string_field(l, "executable"))
        .unwrap_or_else(|| panic!("cargo's JSON names the {name} executable"));
    PathBuf::from(exe)
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ is inside the workspace")
        .to_path_buf()
}

/// The target directory the test binary was built into (`<target>/<profile>/deps/<test>`),
/// or the workspace's `target/` if the layout is unexpected.
fn target_dir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|exe| Some(exe.parent()?.parent()?.parent()?.to_path_buf()))
        .filter(|t| t.join("debug").is_dir() || t.join("release").is_dir())
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// The string value of `"field":"..."` in one line of cargo's JSON (no escapes expected
/// in a path on the systems we run on).
fn json_string_field(line: &str, field: &str) -> Option<String> {
    let key = format!("\"{field}\":\"");
    let start = line.find(&key)? + key.len();
    let end = start + line[start..].find('"')?;
    Some(line[start..end].replace("\\\\", "\\"))
}

/// Fails the test if `program` cannot be run (`program --help` style probe by `args`).
pub(crate) fn require(program: &str, args: &[&str], install_hint: &str) {
    let ok = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "interop peer `{program}` is not available ({install_hint}); \
         these tests fail rather than skip without it"
    );
}

/// Fails the test without `mosquitto_pub`/`mosquitto_sub`.
pub(crate) fn require_mosquitto() {
    // `--help` exits 1 on older releases; `--version` does not exist. Probe with `which`.
    for p in ["mosquitto_pub", "mosquitto_sub"] {
        require(
            "sh",
            &["-c", &format!("command -v {p}")],
            "apt-get install mosquitto-clients",
        );
    }
}

/// Fails the test without Python's paho-mqtt 2.x.
pub(crate) fn require_paho() {
    require(
        "python3",
        &[
            "-c",
            "import paho.mqtt, sys; sys.exit(0 if int(paho.mqtt.__version__.split('.')[0]) >= 2 else 1)",
        ],
        "python3 -m pip install paho-mqtt",
    );
}

/// A running example broker; killed on drop. Its log (stderr) is printed if the test
/// panics.
pub(crate) struct Broker {
    child: Child,
    /// The TCP listener.
    pub(crate) tcp: SocketAddr,
    /// The WebSocket listener.
    pub(crate) ws: SocketAddr,
    /// The TLS listener, when `extra` has `--tls-bind`.
    pub(crate) tls: Option<SocketAddr>,
    /// The WebSocket-over-TLS listener, when `extra` has `--wss-bind`.
    pub(crate) wss: Option<SocketAddr>,
    log: Arc<Mutex<Vec<String>>>,
    /// The store's directory when the harness made it (removed on drop).
    own_data_dir: Option<PathBuf>,
}

/// A directory of its own for a broker's store.
fn fresh_data_dir() -> PathBuf {
    static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("mqtt-interop-store-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

impl Broker {
    /// Starts a broker on free loopback ports with `extra` options, with a store of its own
    /// (see the module docs) unless `extra` says `--data-dir` or `--in-memory`.
    pub(crate) fn start(extra: &[&str]) -> Self {
        let chosen = extra
            .iter()
            .any(|a| *a == "--in-memory" || *a == "--data-dir" || a.starts_with("--data-dir="));
        if chosen {
            return Self::spawn(extra, None);
        }
        let dir = fresh_data_dir();
        let mut args = extra.to_vec();
        let d = dir.to_str().expect("a UTF-8 temporary directory");
        args.extend(["--data-dir", d]);
        Self::spawn(&args, Some(dir.clone()))
    }

    /// Starts a broker whose store is in `dir`, left there when it is dropped (or
    /// killed): start another with the same `dir` to restart it on the same store.
    pub(crate) fn start_in(dir: &Path, extra: &[&str]) -> Self {
        let mut args = extra.to_vec();
        let d = dir.to_str().expect("a UTF-8 directory");
        args.extend(["--data-dir", d]);
        Self::spawn(&args, None)
    }

    fn spawn(extra: &[&str], own_data_dir: Option<PathBuf>) -> Self {
        let mut child = Command::new(broker_bin())
            .args(["--bind", "127.0.0.1:0", "--ws-bind", "127.0.0.1:0"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "debug".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start mqtt-broker");
        let log = collect_lines(child.stderr.take().expect("piped"), None);
        let (tx, rx) = mpsc::channel();
        collect_lines(child.stdout.take().expect("piped"), Some(tx));
        let mut tcp = None;
        let mut ws = None;
        let mut tls = None;
        let mut wss = None;
        let want_tls = extra.contains(&"--tls-bind");
        let want_wss = extra.contains(&"--wss-bind");
        let deadline = Instant::now() + Duration::from_secs(10);
        while tcp.is_none()
            || ws.is_none()
            || (want_tls && tls.is_none())
            || (want_wss && wss.is_none())
        {
            let left = deadline.saturating_duration_since(Instant::now());
            let line = match rx.recv_timeout(left) {
                Ok(line) => line,
                Err(_) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    panic!(
                        "mqtt-broker printed no listening addresses; log:\n{}",
                        log.lock().unwrap().join("\n")
                    );
                }
            };
            let parse = |rest: &str| rest.trim().parse::<SocketAddr>().ok();
            if let Some(rest) = line.strip_prefix("listening on tcp ") {
                tcp = parse(rest);
            } else if let Some(rest) = line.strip_prefix("listening on ws ") {
                ws = parse(rest);
            } else if let Some(rest) = line.strip_prefix("listening on tls ") {
                tls = parse(rest);
            } else if let Some(rest) = line.strip_prefix("listening on wss ") {
                wss = parse(rest);
            }
        }
        Self {
            child,
            tcp: tcp.expect("set"),
            ws: ws.expect("set"),
            tls,
            wss,
            log,
            own_data_dir,
        }
    }

    /// Kills the broker with SIGKILL (a crash) and waits for it to end.
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// The TCP port, as a string for command lines.
    pub(crate) fn port(&self) -> String {
        self.tcp.port().to_string()
    }

    /// Whether the broker logged a line containing `needle` (its log goes to stderr).
    pub(crate) fn logged(&self, needle: &str) -> bool {
        self.log.lock().unwrap().iter().any(|l| l.contains(needle))
    }

    /// Whether the broker process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.own_data_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
        if thread::panicking() {
            let log = self.log.lock().unwrap();
            let tail = log.len().saturating_sub(200);
            eprintln!("---- mqtt-broker log (last 200 lines) ----");
            for l in &log[tail..] {
                eprintln!("{l}");
            }
        }
    }
}

/// Reads `r` line by line on a thread: into the returned buffer, and to `tx` if given.
pub(crate) fn collect_lines(
    r: impl Read + Send + 'static,
    tx: Option<mpsc::Sender<String>>,
) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let sink = Arc::clone(&lines);
    thread::spawn(move || {
        let mut r = BufReader::new(r);
        let mut buf = Vec::new();
        loop {
            buf.clear();
            match r.read_until(b'\n', &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => {
                    let line = String::from_utf8_lossy(&buf)
                        .trim_end_matches(['\r', '\n'])
                        .to_string();
                    if let Some(tx) = &tx {
                        let _ = tx.send(line.clone());
                    }
                    sink.lock().unwrap().push(line);
                }
            }
        }
    });
    lines
}

/// A peer process with its output collected; killed on drop.
pub(crate) struct Proc {
    name: String,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    stderr: Arc<Mutex<Vec<String>>>,
    lines: mpsc::Receiver<String>,
}

/// What a finished [`Proc`] printed.
#[derive(Debug)]
pub(crate) struct Output {
    pub(crate) status: ExitStatus,
    pub(crate) stdout: Vec<String>,
    pub(crate) stderr: Vec<String>,
}

impl Proc {
    /// Spawns `cmd` with stdout and stderr collected; `stdin` is written and closed.
    pub(crate) fn spawn(cmd: &mut Command, stdin: Option<Vec<u8>>) -> Self {
        let name = format!("{cmd:?}");
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        cmd.stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run {name}: {e}"));
        if let Some(data) = stdin {
            let mut w = child.stdin.take().expect("piped");
            thread::spawn(move || {
                let _ = w.write_all(&data);
            });
        }
        let (tx, lines) = mpsc::channel();
        let stdout = collect_lines(child.stdout.take().expect("piped"), Some(tx));
        let stderr = collect_lines(child.stderr.take().expect("piped"), None);
        Self {
            name,
            child,
            stdout,
            stderr,
            lines,
        }
    }

    /// Waits for a stdout line containing `needle`; panics after `timeout`.
    pub(crate) fn wait_for(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.contains(needle) => return l,
                Ok(_) => {}
                Err(_) => panic!(
                    "{}: no line with {needle:?} within {timeout:?}\n{}",
                    self.name,
                    self.dump()
                ),
            }
        }
    }

    /// Kills the process (SIGKILL: no DISCONNECT, the kernel closes its sockets).
    pub(crate) fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Waits for the process to exit; kills it and panics after `timeout`.
    pub(crate) fn finish(mut self, timeout: Duration) -> Output {
        let deadline = Instant::now() + timeout;
        let status = loop {
            match self.child.try_wait() {
                Ok(Some(status)) => break status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                _ => {
                    self.kill();
                    panic!(
                        "{}: still running after {timeout:?}, killed\n{}",
                        self.name,
                        self.dump()
                    );
                }
            }
        };
        // The reader threads see EOF right after exit; give them a moment to catch up.
        thread::sleep(Duration::from_millis(20));
        Output {
            status,
            stdout: self.stdout.lock().unwrap().clone(),
            stderr: self.stderr.lock().unwrap().clone(),
        }
    }

    /// Like [`Proc::finish`], and the exit status must be success.
    pub(crate) fn success(self, timeout: Duration) -> Output {
        let name = self.name.clone();
        let out = self.finish(timeout);
        assert!(
            out.status.success(),
            "{name}: {}\nstdout:\n{}\nstderr:\n{}",
            out.status,
            out.stdout.join("\n"),
            out.stderr.join("\n")
        );
        out
    }

    fn dump(&self) -> String {
        format!(
            "stdout:\n{}\nstderr:\n{}",
            self.stdout.lock().unwrap().join("\n"),
            self.stderr.lock().unwrap().join("\n")
        )
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs `cmd` to completion within `timeout`; it must succeed.
pub(crate) fn run(cmd: &mut Command, stdin: Option<Vec<u8>>, timeout: Duration) -> Output {
    Proc::spawn(cmd, stdin).success(timeout)
}
