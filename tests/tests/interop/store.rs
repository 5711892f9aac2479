//! The example broker's store as a command-line program sees it: where it is made and
//! said, and that a store it cannot use (damaged, in use) stops it with a message and exit
//! status 1 before it listens. What survives a restart is the crash tests' subject.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use crate::broker::{broker_bin, Broker};

/// A scratch directory, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "mqtt-interop-{name}-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs the broker with `args` in `cwd` until it exits (at most 20 s: it must not start
/// serving).
fn run_to_exit(cwd: &Path, args: &[&str]) -> Output {
    let mut child = Command::new(broker_bin())
        .args(["--bind", "127.0.0.1:0", "--ws-bind", "127.0.0.1:0"])
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start mqtt-broker");
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        if child.try_wait().expect("wait").is_some() {
            return child.wait_with_output().expect("output");
        }
        if std::time::Instant::now() >= deadline {
            let _ = child.kill();
            let out = child.wait_with_output().expect("output");
            panic!(
                "the broker kept running; stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn assert_refused(out: &Output, what: &str) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "exit status; stderr:\n{stderr}");
    assert!(
        stderr.contains(what),
        "stderr says `{what}`; stderr:\n{stderr}"
    );
    assert!(!stdout.contains("listening on"), "it listened:\n{stdout}");
    assert!(!stderr.contains("panicked"), "a panic:\n{stderr}");
}

#[test]
fn default_data_dir_is_made_and_printed() {
    let cwd = Scratch::new("default-dir");
    let mut child = Command::new(broker_bin())
        .args(["--bind", "127.0.0.1:0", "--ws-bind", "127.0.0.1:0"])
        .current_dir(&cwd.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mqtt-broker");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    let file = cwd.0.join("mqtt-broker-data").join("broker.redb");
    assert!(file.is_file(), "no {}", file.display());
    assert!(
        first.starts_with("store ") && first.contains("mqtt-broker-data/broker.redb"),
        "{first}"
    );
    assert!(first.contains("durability always"), "{first}");
}

#[test]
fn in_memory_makes_no_data_dir() {
    let cwd = Scratch::new("in-memory");
    let mut child = Command::new(broker_bin())
        .args([
            "--bind",
            "127.0.0.1:0",
            "--ws-bind",
            "127.0.0.1:0",
            "--in-memory",
        ])
        .current_dir(&cwd.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start mqtt-broker");
    let mut stdout = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stdout, &mut first).unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(first.trim_end(), "store in memory (--in-memory)");
    assert!(!cwd.0.join("mqtt-broker-data").exists());
}

#[test]
fn damaged_store_stops_the_broker() {
    let dir = Scratch::new("damaged");
    // A store with something in it, then damaged past its first page (the middle of a
    // small store can be free space, which no reader looks at).
    {
        let mut broker = Broker::start_in(&dir.0, &[]);
        let port = broker.port();
        let status = Command::new("mosquitto_pub")
            .args(["-p", &port, "-t", "a/b", "-m", "kept", "-q", "1", "-r"])
            .status()
            .expect("mosquitto_pub");
        assert!(status.success());
        broker.kill();
    }
    let file = dir.0.join("broker.redb");
    let mut bytes = std::fs::read(&file).unwrap();
    for b in &mut bytes[4096..] {
        *b ^= 0xA5;
    }
    std::fs::write(&file, &bytes).unwrap();
    let out = run_to_exit(&dir.0, &["--data-dir", dir.0.to_str().unwrap()]);
    assert_refused(&out, "store damaged");

    // Truncated to half.
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(bytes.len() as u64 / 2).unwrap();
    drop(f);
    let out = run_to_exit(&dir.0, &["--data-dir", dir.0.to_str().unwrap()]);
    assert_refused(&out, "store damaged");

    // Not a store at all.
    std::fs::write(
        &file,
        b"this is not a database, just some text\n".repeat(1000),
    )
    .unwrap();
    let out = run_to_exit(&dir.0, &["--data-dir", dir.0.to_str().unwrap()]);
    assert_refused(&out, "store damaged");
}

#[test]
fn store_in_use_stops_the_second_broker() {
    let dir = Scratch::new("in-use");
    let _first = Broker::start_in(&dir.0, &[]);
    let out = run_to_exit(&dir.0, &["--data-dir", dir.0.to_str().unwrap()]);
    assert_refused(&out, "in use by another process");
}
