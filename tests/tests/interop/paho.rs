//! Python `paho-mqtt` 2.x against the example broker: 3.1.1 and 5.0, over TCP and over
//! WebSocket (`/mqtt`), and a 5.0 shared subscription. The scripts run with `python3 -c`
//! and print `OK` when every check passed; every wait in them is bounded.

use std::process::Command;
use std::time::Duration;

use crate::broker::{require_paho, run, Broker};

/// Definitions shared by the scripts. argv: host port transport(tcp|websockets) version.
const PRELUDE: &str = r#"
import sys, threading, time
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST, PORT, TRANSPORT, VERSION = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
PROTOCOL = {"311": mqtt.MQTTv311, "5": mqtt.MQTTv5}[VERSION]
TIMEOUT = 10

def client(client_id, on_message=None, subscribe=None):
    """A connected client, its network loop running; subscribed to `subscribe` (a list
    of (filter, qos)) once this returns."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id,
                    protocol=PROTOCOL, transport=TRANSPORT)
    if TRANSPORT == "websockets":
        c.ws_set_options(path="/mqtt")
    connected, subscribed = threading.Event(), threading.Event()
    def on_connect(c, userdata, flags, reason_code, properties):
        assert not reason_code.is_failure, f"CONNACK {reason_code}"
        connected.set()
    def on_subscribe(c, userdata, mid, reason_codes, properties):
        assert all(not r.is_failure for r in reason_codes), f"SUBACK {reason_codes}"
        subscribed.set()
    c.on_connect = on_connect
    c.on_subscribe = on_subscribe
    if on_message:
        c.on_message = on_message
    c.connect(HOST, PORT, keepalive=30)
    c.loop_start()
    assert connected.wait(TIMEOUT), f"{client_id}: no CONNACK"
    if subscribe:
        c.subscribe(subscribe)
        assert subscribed.wait(TIMEOUT), f"{client_id}: no SUBACK"
    return c

def collector(n):
    """An on_message callback collecting (topic, qos, payload, user properties) and an
    Event set after `n` messages."""
    got, done, lock = [], threading.Event(), threading.Lock()
    def on_message(c, userdata, msg):
        props = getattr(msg.properties, "UserProperty", None) if msg.properties else None
        with lock:
            got.append((msg.topic, msg.qos, msg.payload.decode(), props))
            if len(got) >= n:
                done.set()
    return got, done, on_message

def publish(c, topic, payload, qos, properties=None):
    info = c.publish(topic, payload, qos=qos, properties=properties)
    info.wait_for_publish(TIMEOUT)
    assert info.is_published(), f"publish {topic} not acknowledged"

def close(*clients):
    for c in clients:
        c.disconnect()
        c.loop_stop()
"#;

/// Publishes at QoS 0, 1 and 2 (and, in 5.0, with a user property) and receives them.
const PUBSUB: &str = r#"
got, done, on_message = collector(3)
sub = client(f"paho-sub-{TRANSPORT}-{VERSION}", on_message, [("paho/+", 2)])
pub = client(f"paho-pub-{TRANSPORT}-{VERSION}")
for q in (0, 1, 2):
    props = None
    if PROTOCOL == mqtt.MQTTv5:
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("k", f"v{q}")]
    publish(pub, f"paho/{q}", f"m{q}", q, props)
assert done.wait(TIMEOUT), got
expected = [(f"paho/{q}", q, f"m{q}", [("k", f"v{q}")] if PROTOCOL == mqtt.MQTTv5 else None)
            for q in (0, 1, 2)]
assert got == expected, got
close(pub, sub)
print("OK")
"#;

/// Two members of `$share/g/...` split the messages between them, each exactly once.
const SHARED: &str = r#"
N = 20
lock, both = threading.Lock(), threading.Event()
got = {"a": [], "b": []}
def member(name):
    def on_message(c, userdata, msg):
        with lock:
            got[name].append(msg.payload.decode())
            if len(got["a"]) + len(got["b"]) >= N:
                both.set()
    return client(f"paho-share-{name}", on_message, [("$share/g/share/t", 1)])
a, b = member("a"), member("b")
pub = client("paho-share-pub")
for i in range(N):
    publish(pub, "share/t", str(i), 1)
assert both.wait(TIMEOUT), got
time.sleep(0.2)  # anything beyond N would be a duplicate
all_ = sorted(got["a"] + got["b"], key=int)
assert all_ == [str(i) for i in range(N)], got
assert got["a"] and got["b"], f"one member got everything: {got}"
# Each member sees its share in publish order.
for name in "ab":
    assert got[name] == sorted(got[name], key=int), got
close(pub, a, b)
print("OK")
"#;

fn python(broker: &Broker, script: &str, transport: &str, version: &str) {
    require_paho();
    let addr = match transport {
        "websockets" => broker.ws,
        _ => broker.tcp,
    };
    let mut c = Command::new("python3");
    c.arg("-c")
        .arg(format!("{PRELUDE}\n{script}"))
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .arg(transport)
        .arg(version);
    let out = run(&mut c, None, Duration::from_secs(30));
    assert_eq!(out.stdout.last().map(String::as_str), Some("OK"), "{out:?}");
}

#[test]
fn tcp_v311() {
    python(&Broker::start(&[]), PUBSUB, "tcp", "311");
}

#[test]
fn tcp_v5() {
    python(&Broker::start(&[]), PUBSUB, "tcp", "5");
}

#[test]
fn websocket_v311() {
    python(&Broker::start(&[]), PUBSUB, "websockets", "311");
}

#[test]
fn websocket_v5() {
    python(&Broker::start(&[]), PUBSUB, "websockets", "5");
}

#[test]
fn shared_subscription_v5() {
    let broker = Broker::start(&[]);
    python(&broker, SHARED, "tcp", "5");
    python(&broker, SHARED, "websockets", "5");
}

/// `--max-keep-alive` and `--response-information` as a 5.0 client sees them: a keep alive
/// above the maximum, or none, comes back as Server Keep Alive ([MQTT-3.2.2-21]); Response
/// Information only when requested ([MQTT-3.1.2-28]).
const SERVER_CHOICES: &str = r#"
def connack(keepalive, request_info):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"ka-{keepalive}-{request_info}",
                    protocol=PROTOCOL, transport=TRANSPORT)
    got, done = {}, threading.Event()
    def on_connect(c, userdata, flags, reason_code, properties):
        got["rc"] = reason_code
        got["props"] = properties
        done.set()
    c.on_connect = on_connect
    props = Properties(PacketTypes.CONNECT)
    if request_info:
        props.RequestResponseInformation = 1
    c.connect(HOST, PORT, keepalive=keepalive, properties=props)
    c.loop_start()
    assert done.wait(TIMEOUT), "no CONNACK"
    c.disconnect()
    c.loop_stop()
    assert not got["rc"].is_failure, f"CONNACK {got['rc']}"
    return got["props"]

p = connack(100, True)
assert getattr(p, "ServerKeepAlive", None) == 30, f"keep alive 100: {p}"
assert getattr(p, "ResponseInformation", None) == "replies/", f"asked for it: {p}"
p = connack(0, False)
assert getattr(p, "ServerKeepAlive", None) == 30, f"keep alive 0: {p}"
assert getattr(p, "ResponseInformation", None) is None, f"not asked for: {p}"
p = connack(20, False)
assert getattr(p, "ServerKeepAlive", None) is None, f"keep alive 20 is within the maximum: {p}"
print("OK")
"#;

#[test]
fn max_keep_alive_and_response_information_v5() {
    let broker = Broker::start(&[
        "--max-keep-alive",
        "30",
        "--response-information",
        "replies/",
    ]);
    python(&broker, SERVER_CHOICES, "tcp", "5");
}
