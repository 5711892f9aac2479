//! `mosquitto_pub` / `mosquitto_sub` against the example broker, in MQTT 3.1, 3.1.1 and 5.0.

use std::process::Command;
use std::time::Duration;

use crate::broker::{require_mosquitto, run, Broker, Proc, DEFAULT_DEADLINE};

const VERSIONS: [&str; 3] = ["mqttv31", "mqttv311", "mqttv5"];

/// One message as `mosquitto_sub` printed it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Msg {
    topic: String,
    qos: u8,
    retain: bool,
    /// `%E`: the remaining message expiry interval (5.0), empty if none.
    expiry: String,
    /// `%P`: user properties as `key:value`, empty if none.
    props: String,
    payload: String,
}

const FORMAT: &str = "msg|%t|%q|%r|%E|%P|%p";

fn parse(lines: &[String]) -> Vec<Msg> {
    lines
        .iter()
        .filter_map(|l| l.strip_prefix("msg|"))
        .map(|l| {
            let f: Vec<&str> = l.splitn(6, '|').collect();
            assert_eq!(f.len(), 6, "malformed line {l:?}");
            Msg {
                topic: f[0].into(),
                qos: f[1].parse().expect("qos"),
                retain: f[2] == "1",
                expiry: f[3].into(),
                props: f[4].into(),
                payload: f[5].into(),
            }
        })
        .collect()
}

fn base(program: &str, broker: &Broker, version: &str) -> Command {
    let mut c = Command::new(program);
    c.args(["-h", "127.0.0.1", "-p", &broker.port(), "-V", version]);
    c
}

/// Starts `mosquitto_sub` with `args` and returns once its SUBACK arrived. (`stdbuf -oL`:
/// its stdout is a pipe, which stdio would buffer until exit; `-d` prints the SUBACK.)
fn sub(broker: &Broker, version: &str, args: &[&str]) -> Proc {
    sub_until(broker, version, args, "Subscribed (mid")
}

/// [`sub`], returning once a line containing `ready` was printed.
fn sub_until(broker: &Broker, version: &str, args: &[&str], ready: &str) -> Proc {
    let mut c = Command::new("stdbuf");
    c.args([
        "-oL",
        "mosquitto_sub",
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port(),
        "-V",
        version,
    ]);
    c.args(["-d", "-F", FORMAT]).args(args);
    let mut p = Proc::spawn(&mut c, None);
    p.wait_for(ready, Duration::from_secs(10));
    p
}

/// Runs `mosquitto_pub` with `args` to completion.
fn publish(broker: &Broker, version: &str, args: &[&str]) {
    let mut c = base("mosquitto_pub", broker, version);
    c.args(args);
    run(&mut c, None, DEFAULT_DEADLINE);
}

/// The messages a finished subscriber printed.
fn received(p: Proc) -> Vec<Msg> {
    parse(&p.success(DEFAULT_DEADLINE).stdout)
}

fn brief(msgs: &[Msg]) -> Vec<(String, u8, bool, String)> {
    msgs.iter()
        .map(|m| (m.topic.clone(), m.qos, m.retain, m.payload.clone()))
        .collect()
}

fn m(topic: &str, qos: u8, retain: bool, payload: &str) -> (String, u8, bool, String) {
    (topic.into(), qos, retain, payload.into())
}

/// [MQTT-7.1.1-1] [MQTT-4.2-1] the broker serves an ordered, lossless, bidirectional byte
/// stream (TCP): every message of every QoS arrives, in order, at mosquitto's clients.
#[test]
fn qos_0_1_2_delivery() {
    require_mosquitto();
    let broker = Broker::start(&[]);
    for v in VERSIONS {
        let s = sub(&broker, v, &["-t", "q/t", "-q", "2", "-C", "3"]);
        // A subscriber at QoS 1 gets at most QoS 1.
        let s1 = sub(&broker, v, &["-t", "q/t", "-q", "1", "-C", "3"]);
        for q in ["0", "1", "2"] {
            publish(
                &broker,
                v,
                &["-t", "q/t", "-q", q, "-m", &format!("{v}-{q}")],
            );
        }
        let expect = |max: u8| {
            (0..3)
                .map(|q| m("q/t", q.min(max), false, &format!("{v}-{q}")))
                .collect::<Vec<_>>()
        };
        assert_eq!(brief(&received(s)), expect(2), "{v}");
        assert_eq!(brief(&received(s1)), expect(1), "{v}");
    }
}

#[test]
fn retained_set_replace_clear() {
    require_mosquitto();
    let broker = Broker::start(&[]);
    for v in VERSIONS {
        let (a, b) = (format!("r/{v}/a"), format!("r/{v}/b"));
        publish(&broker, v, &["-t", &a, "-q", "1", "-r", "-m", "old"]);
        publish(&broker, v, &["-t", &a, "-q", "1", "-r", "-m", "new"]);
        let s = sub(&broker, v, &["-t", &a, "-q", "1", "-C", "2"]);
        // A live subscriber gets a retained publish without the RETAIN flag.
        publish(&broker, v, &["-t", &a, "-q", "1", "-r", "-m", "live"]);
        assert_eq!(
            brief(&received(s)),
            [m(&a, 1, true, "new"), m(&a, 1, false, "live")],
            "{v}"
        );
        // An empty retained message clears the topic: a new subscriber to both topics gets
        // only b's (filters are answered in order, so a leftover `a` would come first).
        publish(&broker, v, &["-t", &a, "-q", "1", "-r", "-n"]);
        publish(&broker, v, &["-t", &b, "-q", "0", "-r", "-m", "b"]);
        let s = sub(&broker, v, &["-t", &a, "-t", &b, "-q", "1", "-C", "1"]);
        assert_eq!(brief(&received(s)), [m(&b, 0, true, "b")], "{v}");
    }
}

#[test]
fn wildcards_and_dollar_topics() {
    require_mosquitto();
    let broker = Broker::start(&["--sys-interval", "1"]);
    // $SYS statistics are retained: a `$SYS/#` subscriber gets one at once (or within
    // the first tick).
    let s = sub(
        &broker,
        "mqttv311",
        &["-t", "$SYS/broker/uptime", "-C", "1"],
    );
    let sys = received(s);
    assert!(sys[0].payload.ends_with("seconds"), "{sys:?}");
    for v in VERSIONS {
        let plus = sub(&broker, v, &["-t", "w/+/temp", "-C", "2"]);
        let hash = sub(&broker, v, &["-t", "w/#", "-C", "4"]);
        // [MQTT-4.7.2-1] `#` does not match topics starting with `$`.
        let all = sub(&broker, v, &["-t", "#", "-C", "4"]);
        for t in ["w/a/temp", "w/a/b/temp", "w", "w/b/temp"] {
            publish(&broker, v, &["-t", t, "-m", t]);
        }
        // A $SYS tick happens meanwhile; `#` must not see it.
        std::thread::sleep(Duration::from_millis(1100));
        publish(&broker, v, &["-t", "$x/y", "-m", "dollar"]);
        publish(&broker, v, &["-t", "end", "-m", "end"]);
        let topics = |p: Proc| received(p).into_iter().map(|m| m.topic).collect::<Vec<_>>();
        assert_eq!(topics(plus), ["w/a/temp", "w/b/temp"], "{v}");
        assert_eq!(
            topics(hash),
            ["w/a/temp", "w/a/b/temp", "w", "w/b/temp"],
            "{v}"
        );
        assert_eq!(
            topics(all),
            ["w/a/temp", "w/a/b/temp", "w", "w/b/temp"],
            "{v}"
        );
    }
    // ... and `+/...` neither; `$SYS/#` does.
    let plus = sub(
        &broker,
        "mqttv5",
        &["-t", "+/broker/uptime", "-t", "end", "-C", "1"],
    );
    publish(&broker, "mqttv5", &["-t", "end", "-m", "end"]);
    assert_eq!(received(plus)[0].topic, "end");
}

#[test]
fn will_on_abrupt_close_only() {
    require_mosquitto();
    let broker = Broker::start(&[]);
    for v in VERSIONS {
        let topic = format!("will/{v}");
        let s = sub(&broker, v, &["-t", &topic, "-q", "1", "-C", "2"]);
        // A client that disconnects normally: its will is discarded.
        publish(
            &broker,
            v,
            &[
                "-t",
                "x",
                "-m",
                "x",
                "--will-topic",
                &topic,
                "--will-payload",
                "polite",
            ],
        );
        // A client that dies: its will goes out.
        let mut dying = sub(
            &broker,
            v,
            &[
                "-t",
                "dummy",
                "--will-topic",
                &topic,
                "--will-payload",
                "died",
                "--will-qos",
                "1",
            ],
        );
        dying.kill();
        publish(&broker, v, &["-t", &topic, "-q", "1", "-m", "after"]);
        let got = received(s);
        assert_eq!(
            brief(&got),
            [m(&topic, 1, false, "died"), m(&topic, 1, false, "after")],
            "{v}"
        );
    }
}

#[test]
fn persistent_session_gets_messages_queued_offline() {
    require_mosquitto();
    let broker = Broker::start(&[]);
    for v in VERSIONS {
        let id = format!("persist-{v}");
        let topic = format!("p/{v}");
        // Subscribe with a persistent session, then leave (-E: exit once subscribed).
        let s = sub(
            &broker,
            v,
            &["-c", "-i", &id, "-q", "2", "-t", &topic, "-E"],
        );
        s.success(DEFAULT_DEADLINE);
        for (q, payload) in [("1", "one"), ("2", "two"), ("0", "dropped"), ("1", "three")] {
            publish(&broker, v, &["-t", &topic, "-q", q, "-m", payload]);
        }
        let s = sub(
            &broker,
            v,
            &["-c", "-i", &id, "-q", "2", "-t", &topic, "-C", "4"],
        );
        publish(&broker, v, &["-t", &topic, "-q", "1", "-m", "online"]);
        let mut got = brief(&received(s));
        // libmosquitto hands a QoS 2 message to the application at PUBREL, so it may print
        // after QoS 1 messages the broker sent later; order holds per QoS ([MQTT-4.6.0-6]).
        let qos2 = got
            .iter()
            .position(|g| g.1 == 2)
            .expect("the QoS 2 message");
        let two = got.remove(qos2);
        assert_eq!(two, m(&topic, 2, false, "two"), "{v}");
        assert_eq!(
            got,
            [
                m(&topic, 1, false, "one"),
                m(&topic, 1, false, "three"),
                m(&topic, 1, false, "online"),
            ],
            "{v} (QoS 0 is not queued for an offline session)"
        );
        // A clean session afterwards starts empty.
        let s = sub(
            &broker,
            v,
            &["-i", &id, "-q", "1", "-t", "other", "-C", "1"],
        );
        publish(&broker, v, &["-t", &topic, "-q", "1", "-m", "gone"]);
        publish(&broker, v, &["-t", "other", "-q", "1", "-m", "here"]);
        assert_eq!(brief(&received(s)), [m("other", 1, false, "here")], "{v}");
    }
}

#[test]
fn v5_user_properties_and_message_expiry() {
    require_mosquitto();
    let broker = Broker::start(&[]);
    let v = "mqttv5";
    let s = sub(&broker, v, &["-t", "props", "-q", "1", "-C", "1"]);
    publish(
        &broker,
        v,
        &[
            "-t",
            "props",
            "-q",
            "1",
            "-m",
            "p",
            "-D",
            "publish",
            "user-property",
            "k",
            "v",
            "-D",
            "publish",
            "message-expiry-interval",
            "60",
        ],
    );
    let got = received(s);
    assert_eq!(got[0].props, "k:v", "{got:?}");
    let expiry: u32 = got[0].expiry.parse().expect("expiry present");
    assert!((59..=60).contains(&expiry), "{got:?}");

    // Offline: a message whose expiry passes while queued is not delivered; the rest is,
    // with the time it waited taken off its expiry.
    let id = "expiry-session";
    sub(&broker, v, &["-c", "-i", id, "-q", "1", "-t", "exp", "-E"]).success(DEFAULT_DEADLINE);
    let expiring = |payload: &str, secs: &str| {
        let args = [
            "-t",
            "exp",
            "-q",
            "1",
            "-m",
            payload,
            "-D",
            "publish",
            "message-expiry-interval",
            secs,
        ];
        publish(&broker, v, &args);
    };
    expiring("short", "1");
    expiring("long", "100");
    publish(&broker, v, &["-t", "exp", "-q", "1", "-m", "forever"]);
    std::thread::sleep(Duration::from_millis(2200));
    let resume = ["-c", "-i", id, "-q", "1", "-t", "exp", "-C", "2"];
    let s = sub_until(&broker, v, &resume, "CONNACK");
    let got = received(s);
    assert_eq!(
        got.iter().map(|m| m.payload.as_str()).collect::<Vec<_>>(),
        ["long", "forever"],
        "{got:?}"
    );
    let left: u32 = got[0].expiry.parse().expect("expiry present");
    // 2.2 s waited, counted in whole seconds; more on a slow machine.
    assert!((90..=98).contains(&left), "{got:?}");
    assert_eq!(got[1].expiry, "");

    // A retained message expires too.
    publish(
        &broker,
        v,
        &[
            "-t",
            "exp/r",
            "-r",
            "-m",
            "r",
            "-D",
            "publish",
            "message-expiry-interval",
            "1",
        ],
    );
    publish(&broker, v, &["-t", "exp/s", "-r", "-m", "stays"]);
    std::thread::sleep(Duration::from_millis(2200));
    let s = sub(&broker, v, &["-t", "exp/r", "-t", "exp/s", "-C", "1"]);
    assert_eq!(received(s)[0].payload, "stays");
}

fn burst(version: &str) {
    const N: usize = 10_000;
    // No backpressure reaches a publisher: messages beyond a subscriber's queue are
    // dropped (and counted), so the queue must hold the burst.
    let broker = Broker::start(&["--max-queued", "10000"]);
    let s = sub(
        &broker,
        version,
        &["-t", "burst", "-q", "1", "-C", &N.to_string()],
    );
    let lines: String = (0..N).map(|i| format!("{i}\n")).collect();
    let mut c = base("mosquitto_pub", &broker, version);
    c.args(["-t", "burst", "-q", "1", "-l"]);
    run(&mut c, Some(lines.into_bytes()), Duration::from_secs(60));
    let out = s.success(Duration::from_secs(60));
    let got = parse(&out.stdout);
    assert_eq!(got.len(), N);
    for (i, msg) in got.iter().enumerate() {
        assert_eq!(msg.payload, i.to_string(), "message {i} out of order");
        assert_eq!(msg.qos, 1);
    }
}

#[test]
fn burst_10000_qos1_in_order_v311() {
    require_mosquitto();
    burst("mqttv311");
}

#[test]
fn burst_10000_qos1_in_order_v5() {
    require_mosquitto();
    burst("mqttv5");
}

#[test]
fn v5_subscription_ids_topic_aliases_will_delay_takeover_large_payload() {
    require_mosquitto();
    let broker = Broker::start(&[]);
    let v = "mqttv5";

    // A subscription identifier comes back with the message (`%S`); a publisher using a
    // topic alias is understood.
    let mut c = Command::new("stdbuf");
    c.args([
        "-oL",
        "mosquitto_sub",
        "-h",
        "127.0.0.1",
        "-p",
        &broker.port(),
        "-V",
        v,
    ]);
    c.args(["-d", "-F", "msg|%t|%S|%p", "-t", "ta/#", "-C", "3"]);
    c.args(["-D", "subscribe", "subscription-identifier", "7"]);
    let mut s = Proc::spawn(&mut c, None);
    s.wait_for("Subscribed (mid", Duration::from_secs(10));
    let mut c = base("mosquitto_pub", &broker, v);
    c.args(["-t", "ta/x", "-l", "-D", "publish", "topic-alias", "1"]);
    run(&mut c, Some(b"a\nb\nc\n".to_vec()), DEFAULT_DEADLINE);
    let lines: Vec<String> = s
        .success(DEFAULT_DEADLINE)
        .stdout
        .into_iter()
        .filter(|l| l.starts_with("msg|"))
        .collect();
    assert_eq!(lines, ["msg|ta/x|7|a", "msg|ta/x|7|b", "msg|ta/x|7|c"]);

    // A will with a delay goes out after the delay, not at the close.
    let s = sub(&broker, v, &["-t", "wd", "-C", "1"]);
    let mut dying = sub(
        &broker,
        v,
        &[
            "-t",
            "x",
            "-i",
            "will-delay",
            "-x",
            "10",
            "--will-topic",
            "wd",
            "--will-payload",
            "late",
            "-D",
            "will",
            "will-delay-interval",
            "2",
        ],
    );
    dying.kill();
    let killed = std::time::Instant::now();
    let got = received(s);
    let waited = killed.elapsed();
    assert_eq!(got[0].payload, "late");
    assert!(waited >= Duration::from_millis(1500), "{waited:?}");

    // [MQTT-3.1.4-3] a second connection with the same id takes over: the first gets
    // DISCONNECT Session taken over (0x8E).
    let first = sub(&broker, v, &["-t", "a", "-i", "same"]);
    sub(&broker, v, &["-t", "a", "-i", "same", "-E"]).success(DEFAULT_DEADLINE);
    // It exits on the DISCONNECT.
    let out = first.finish(DEFAULT_DEADLINE);
    assert!(
        out.stdout
            .iter()
            .chain(&out.stderr)
            .any(|l| l.contains("DISCONNECT (142)")),
        "{out:?}"
    );

    // A payload of 1,000,000 bytes (within the default 1 MiB maximum packet size).
    let s = sub(&broker, v, &["-t", "big", "-C", "1"]);
    let path = std::env::temp_dir().join(format!("mqtt-interop-big-{}", std::process::id()));
    std::fs::write(&path, vec![b'a'; 1_000_000]).unwrap();
    let mut c = base("mosquitto_pub", &broker, v);
    c.args(["-t", "big", "-q", "1", "-f"]).arg(&path);
    run(&mut c, None, DEFAULT_DEADLINE);
    let _ = std::fs::remove_file(&path);
    let got = received(s);
    assert_eq!(got[0].payload.len(), 1_000_000);
}
