//! `mqtt-client pub`/`sub` against mosquitto and its clients.

use std::process::Command;
use std::time::Duration;

use crate::broker::{require_mosquitto, run, Proc, DEFAULT_DEADLINE};
use crate::mosquitto::{client_bin, Auth, Listeners, Mosquitto};

const VERSIONS: [&str; 2] = ["mqttv311", "mqttv5"];
const FORMAT: &str = "msg|%t|%q|%r|%E|%P|%p";
const READY: Duration = Duration::from_secs(10);

/// `mqtt-client <cmd> -h 127.0.0.1 -p PORT -V version`.
fn client(m: &Mosquitto, cmd: &str, version: &str) -> Command {
    client_at(&m.port(), cmd, version)
}

fn client_at(port: &str, cmd: &str, version: &str) -> Command {
    let mut c = Command::new(client_bin());
    c.args([cmd, "-h", "127.0.0.1", "-p", port, "-V", version]);
    c
}

/// Starts `mqtt-client sub` and returns once its SUBACK arrived.
fn sub(m: &Mosquitto, version: &str, args: &[&str]) -> Proc {
    let mut c = client(m, "sub", version);
    c.args(["-d", "-F", FORMAT]).args(args);
    let mut p = Proc::spawn(&mut c, None);
    p.wait_for("Subscribed (mid", READY);
    p
}

/// Starts `mosquitto_sub` and returns once its SUBACK arrived (`stdbuf -oL`: its stdout is
/// a pipe).
fn mosquitto_sub(m: &Mosquitto, version: &str, args: &[&str]) -> Proc {
    let mut c = Command::new("stdbuf");
    c.args(["-oL", "mosquitto_sub", "-h", "127.0.0.1", "-p", &m.port()]);
    c.args(["-V", version, "-d", "-F", FORMAT]).args(args);
    let mut p = Proc::spawn(&mut c, None);
    p.wait_for("Subscribed (mid", READY);
    p
}

/// Runs `mqtt-client pub` to completion; it must succeed.
fn publish(m: &Mosquitto, version: &str, args: &[&str]) {
    run(client(m, "pub", version).args(args), None, DEFAULT_DEADLINE);
}

fn mosquitto_pub(m: &Mosquitto, version: &str, args: &[&str]) {
    let mut c = Command::new("mosquitto_pub");
    c.args(["-h", "127.0.0.1", "-p", &m.port(), "-V", version]);
    run(c.args(args), None, DEFAULT_DEADLINE);
}

/// The `FORMAT` lines a finished subscriber printed, without the `msg|` prefix.
fn received(p: Proc) -> Vec<String> {
    p.success(DEFAULT_DEADLINE)
        .stdout
        .iter()
        .filter_map(|l| l.strip_prefix("msg|"))
        .map(String::from)
        .collect()
}

/// `topic|qos|retain|expiry|props|payload`.
fn line(topic: &str, qos: u8, retain: bool, expiry: &str, props: &str, payload: &str) -> String {
    format!(
        "{topic}|{qos}|{}|{expiry}|{props}|{payload}",
        u8::from(retain)
    )
}

/// [MQTT-7.1.2-1] the client speaks MQTT over an ordered, lossless, bidirectional byte
/// stream (TCP) to a real broker, both ways, at every QoS.
#[test]
fn qos_0_1_2_both_ways_with_mosquitto_clients() {
    require_mosquitto();
    let m = Mosquitto::start();
    for v in VERSIONS {
        let t = format!("q/{v}");
        // mqtt-client -> mqtt-client and mosquitto_sub.
        let s = sub(&m, v, &["-t", &t, "-q", "2", "-C", "3"]);
        let ms = mosquitto_sub(&m, v, &["-t", &t, "-q", "2", "-C", "3"]);
        for q in ["0", "1", "2"] {
            publish(&m, v, &["-t", &t, "-q", q, "-m", &format!("c{q}")]);
        }
        let expect: Vec<String> = (0..3)
            .map(|q| line(&t, q, false, "", "", &format!("c{q}")))
            .collect();
        assert_eq!(received(s), expect, "{v}: mqtt-client sub");
        assert_eq!(received(ms), expect, "{v}: mosquitto_sub");
        // mosquitto_pub -> mqtt-client.
        let s = sub(&m, v, &["-t", &t, "-q", "2", "-C", "3"]);
        for q in ["0", "1", "2"] {
            mosquitto_pub(&m, v, &["-t", &t, "-q", q, "-m", &format!("m{q}")]);
        }
        let expect: Vec<String> = (0..3)
            .map(|q| line(&t, q, false, "", "", &format!("m{q}")))
            .collect();
        assert_eq!(received(s), expect, "{v}: from mosquitto_pub");
    }
}

#[test]
fn retained_and_cleared() {
    require_mosquitto();
    let m = Mosquitto::start();
    for v in VERSIONS {
        let t = format!("r/{v}");
        publish(&m, v, &["-t", &t, "-q", "1", "-r", "-m", "kept"]);
        let s = sub(&m, v, &["-t", &t, "-q", "1", "-C", "1"]);
        assert_eq!(received(s), [line(&t, 1, true, "", "", "kept")], "{v}");
        // A null retained message clears it: a new subscriber gets only the live message.
        publish(&m, v, &["-t", &t, "-q", "1", "-r", "-n"]);
        let s = sub(&m, v, &["-t", &t, "-q", "1", "-C", "1"]);
        publish(&m, v, &["-t", &t, "-q", "1", "-m", "live"]);
        assert_eq!(received(s), [line(&t, 1, false, "", "", "live")], "{v}");
    }
}

#[test]
fn wildcards_plus_and_hash() {
    require_mosquitto();
    let m = Mosquitto::start();
    for v in VERSIONS {
        let s = sub(
            &m,
            v,
            &[
                "-t",
                &format!("w/{v}/+/x"),
                "-t",
                &format!("h/{v}/#"),
                "-C",
                "4",
            ],
        );
        for t in [
            "w/V/a/x",
            "w/V/a/b/x",
            "w/V/b/y",
            "h/V",
            "h/V/1/2",
            "w/V/b/x",
        ] {
            publish(&m, v, &["-t", &t.replace('V', v), "-m", t]);
        }
        let expect: Vec<String> = ["w/V/a/x", "h/V", "h/V/1/2", "w/V/b/x"]
            .iter()
            .map(|t| line(&t.replace('V', v), 0, false, "", "", t))
            .collect();
        assert_eq!(received(s), expect, "{v}");
    }
}

#[test]
fn will_of_a_killed_client_arrives() {
    require_mosquitto();
    let m = Mosquitto::start();
    for v in VERSIONS {
        let t = format!("will/{v}");
        let watcher = mosquitto_sub(&m, v, &["-t", &t, "-q", "1", "-C", "1"]);
        let mut doomed = sub(
            &m,
            v,
            &[
                "-t",
                "unused",
                "--will-topic",
                &t,
                "--will-payload",
                "gone",
                "--will-qos",
                "1",
            ],
        );
        doomed.kill();
        assert_eq!(
            received(watcher),
            [line(&t, 1, false, "", "", "gone")],
            "{v}"
        );
    }
}

#[test]
fn user_properties_and_message_expiry_v5() {
    require_mosquitto();
    let m = Mosquitto::start();
    let v = "mqttv5";
    // mqtt-client -> mosquitto_sub and mqtt-client; both ways of spelling the properties.
    let s = sub(&m, v, &["-t", "p/1", "-q", "1", "-C", "2"]);
    let ms = mosquitto_sub(&m, v, &["-t", "p/1", "-q", "1", "-C", "2"]);
    #[rustfmt::skip]
    publish(&m, v, &["-t", "p/1", "-q", "1", "-m", "a",
        "-D", "publish", "user-property", "k", "v",
        "-D", "publish", "user-property", "k2", "v2",
        "-D", "publish", "message-expiry-interval", "100"]);
    #[rustfmt::skip]
    publish(&m, v, &["-t", "p/1", "-q", "1", "-m", "b",
        "--user-property", "x", "y", "-e", "200"]);
    let expect = [
        line("p/1", 1, false, "100", "k:v k2:v2", "a"),
        line("p/1", 1, false, "200", "x:y", "b"),
    ];
    assert_eq!(received(s), expect, "mqtt-client sub");
    assert_eq!(received(ms), expect, "mosquitto_sub");
    // mosquitto_pub -> mqtt-client.
    let s = sub(&m, v, &["-t", "p/2", "-q", "1", "-C", "1"]);
    #[rustfmt::skip]
    mosquitto_pub(&m, v, &["-t", "p/2", "-q", "1", "-m", "c",
        "-D", "publish", "user-property", "from", "mosquitto",
        "-D", "publish", "message-expiry-interval", "300"]);
    assert_eq!(
        received(s),
        [line("p/2", 1, false, "300", "from:mosquitto", "c")]
    );
    // A retained message that expired is not delivered.
    publish(
        &m,
        v,
        &["-t", "p/3", "-q", "1", "-r", "-m", "old", "-e", "1"],
    );
    publish(
        &m,
        v,
        &["-t", "p/4", "-q", "1", "-r", "-m", "fresh", "-e", "100"],
    );
    std::thread::sleep(Duration::from_millis(2100));
    let s = sub(&m, v, &["-t", "p/3", "-t", "p/4", "-q", "1", "-C", "1"]);
    let got = received(s);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].starts_with("p/4|1|1|") && got[0].ends_with("|fresh"),
        "{got:?}"
    );
}

#[test]
fn publish_lines_from_stdin() {
    require_mosquitto();
    let m = Mosquitto::start();
    for v in VERSIONS {
        let t = format!("l/{v}");
        let s = mosquitto_sub(&m, v, &["-t", &t, "-q", "2", "-C", "3"]);
        let mut c = client(&m, "pub", v);
        c.args(["-t", &t, "-q", "2", "-l"]);
        run(
            &mut c,
            Some(b"one\ntwo\nthree\n".to_vec()),
            DEFAULT_DEADLINE,
        );
        let expect: Vec<String> = ["one", "two", "three"]
            .iter()
            .map(|p| line(&t, 2, false, "", "", p))
            .collect();
        assert_eq!(received(s), expect, "{v}");
    }
}

#[test]
fn refused_connection_says_why() {
    require_mosquitto();
    let m = Mosquitto::with(Auth::Nobody, Listeners::default());
    for (v, expect) in [
        ("mqttv311", "connection refused: Not authorized (0x87)"),
        ("mqttv5", "connection refused: Not authorized (0x87)"),
    ] {
        let mut c = client(&m, "pub", v);
        c.args(["-t", "t", "-m", "x"]);
        let out = Proc::spawn(&mut c, None).finish(DEFAULT_DEADLINE);
        assert!(!out.status.success(), "{v}: {out:?}");
        assert!(
            out.stderr.iter().any(|l| l.contains(expect)),
            "{v}: {:?}",
            out.stderr
        );
    }
}

#[test]
fn websocket_transport() {
    require_mosquitto();
    let m = Mosquitto::with(
        Auth::Anonymous,
        Listeners {
            websocket: true,
            ..Listeners::default()
        },
    );
    let ws = m.ws_port.expect("ws listener").to_string();
    for v in VERSIONS {
        let t = format!("ws/{v}");
        let mut c = client_at(&ws, "sub", v);
        c.args(["--ws", "-d", "-F", FORMAT, "-t", &t, "-q", "1", "-C", "1"]);
        let mut s = Proc::spawn(&mut c, None);
        s.wait_for("Subscribed (mid", READY);
        run(
            client_at(&ws, "pub", v).args(["--ws", "-t", &t, "-q", "1", "-m", "hi"]),
            None,
            DEFAULT_DEADLINE,
        );
        assert_eq!(received(s), [line(&t, 1, false, "", "", "hi")], "{v}");
    }
}

#[test]
fn session_survives_a_broker_restart() {
    require_mosquitto();
    let mut m = Mosquitto::start();
    for v in VERSIONS {
        let (t, id) = (format!("s/{v}"), format!("persist-{v}"));
        let mut s = sub(&m, v, &["-c", "-i", &id, "-t", &t, "-q", "1"]);
        s.kill();
        for i in 1..=3 {
            publish(&m, v, &["-t", &t, "-q", "1", "-m", &format!("m{i}")]);
        }
        m.restart();
        let mut c = client(&m, "sub", v);
        c.args([
            "-d", "-F", FORMAT, "-c", "-i", &id, "-t", &t, "-q", "1", "-C", "3",
        ]);
        let mut s = Proc::spawn(&mut c, None);
        s.wait_for("session present: 1", READY);
        let expect: Vec<String> = (1..=3)
            .map(|i| line(&t, 1, false, "", "", &format!("m{i}")))
            .collect();
        assert_eq!(received(s), expect, "{v}");
    }
}

#[test]
fn running_subscriber_reconnects_and_resumes() {
    require_mosquitto();
    let mut m = Mosquitto::start();
    for v in VERSIONS {
        let (t, id) = (format!("rc/{v}"), format!("reconnect-{v}"));
        let mut s = sub(&m, v, &["-c", "-i", &id, "-t", &t, "-q", "1", "-C", "2"]);
        publish(&m, v, &["-t", &t, "-q", "1", "-m", "before"]);
        s.wait_for("|before", READY);
        m.restart();
        // Back with its session: no new SUBSCRIBE, and messages still arrive.
        s.wait_for("session present: 1", Duration::from_secs(20));
        publish(&m, v, &["-t", &t, "-q", "1", "-m", "after"]);
        let out = s.success(DEFAULT_DEADLINE);
        let subs = out
            .stdout
            .iter()
            .filter(|l| l.starts_with("Subscribed"))
            .count();
        assert_eq!(subs, 1, "{v}: {out:?}");
        let got: Vec<&str> = out
            .stdout
            .iter()
            .filter_map(|l| l.strip_prefix("msg|"))
            .collect();
        assert_eq!(
            got,
            [
                line(&t, 1, false, "", "", "before"),
                line(&t, 1, false, "", "", "after")
            ],
            "{v}"
        );
    }
}

#[test]
fn publisher_reconnects_and_finishes() {
    require_mosquitto();
    let mut m = Mosquitto::start();
    for v in VERSIONS {
        let t = format!("pr/{v}");
        let s = sub(
            &m,
            v,
            &[
                "-c",
                "-i",
                &format!("prs-{v}"),
                "-t",
                &t,
                "-q",
                "1",
                "-C",
                "3",
            ],
        );
        // `pub -l` reads "a", then the broker restarts while stdin is quiet; "b" and "c"
        // go out on the next connection, and the publisher still exits cleanly.
        let script = format!(
            "(echo a; sleep 3; echo b; echo c) | '{}' pub -h 127.0.0.1 -p {} -V {v} \
             -c -i prp-{v} -t {t} -q 1 -l",
            client_bin().display(),
            m.port()
        );
        let p = Proc::spawn(Command::new("sh").args(["-c", &script]), None);
        let mut s = s;
        s.wait_for("|a", READY);
        m.restart();
        let out = p.success(DEFAULT_DEADLINE);
        assert!(
            out.stderr.iter().any(|l| l.contains("reconnecting")),
            "{v}: {out:?}"
        );
        let expect: Vec<String> = ["a", "b", "c"]
            .iter()
            .map(|p| line(&t, 1, false, "", "", p))
            .collect();
        assert_eq!(received(s), expect, "{v}");
    }
}

#[test]
fn tls_with_a_ca_file() {
    require_mosquitto();
    let m = Mosquitto::with(
        Auth::Anonymous,
        Listeners {
            tls: true,
            ..Listeners::default()
        },
    );
    let tls = m.tls_port.expect("tls listener").to_string();
    let ca = m.ca_file();
    let ca = ca.to_str().expect("UTF-8 path");
    for v in VERSIONS {
        let t = format!("tls/{v}");
        // The certificate is for localhost: by that name it verifies; by address only with
        // --insecure.
        let mut c = Command::new(client_bin());
        c.args(["sub", "-h", "localhost", "-p", &tls, "-V", v]);
        c.args(["--cafile", ca, "-d", "-F", FORMAT]);
        c.args(["-t", &t, "-q", "1", "-C", "1"]);
        let mut s = Proc::spawn(&mut c, None);
        s.wait_for("Subscribed (mid", READY);
        let mut c = client_at(&tls, "pub", v);
        c.args(["--cafile", ca, "-t", &t, "-q", "1", "-m", "secret"]);
        let out = Proc::spawn(&mut c, None).finish(DEFAULT_DEADLINE);
        assert!(!out.status.success(), "{v}: wrong name accepted: {out:?}");
        assert!(
            out.stderr.iter().any(|l| l.contains("TLS")),
            "{v}: {:?}",
            out.stderr
        );
        run(
            client_at(&tls, "pub", v).args([
                "--cafile",
                ca,
                "--insecure",
                "-t",
                &t,
                "-q",
                "1",
                "-m",
                "secret",
            ]),
            None,
            DEFAULT_DEADLINE,
        );
        assert_eq!(received(s), [line(&t, 1, false, "", "", "secret")], "{v}");
    }
}
