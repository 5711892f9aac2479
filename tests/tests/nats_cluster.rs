//! The NATS test harness (`support/nats.rs`) and the `async-nats` client against three
//! clustered Debian `nats-server` processes: the properties of NATS that the broker
//! cluster of issue #16 is built on, checked here on their own so that a failure in the
//! cluster tests can be told apart from a NATS (or harness) problem.
//!
//! 1. Core routing across servers: a subscriber on server 0 gets what a publisher on
//!    server 2 sends, through the wildcards MQTT filters map onto (`a.*.c` for `a/+/c`,
//!    `a.>` for `a/#` without its parent level), in publication order; a queue group with
//!    members on servers 0 and 1 (MQTT shared subscriptions) gets each message exactly
//!    once, and both members get some.
//! 2. JetStream: an R3 stream with one message per subject (retained messages) keeps the
//!    last message of each subject; with its leader (server 1) killed, a new leader serves
//!    them to a `LastPerSubject` consumer; server 1 restarted catches up and leads again.
//! 3. JetStream key-value, R3 (session ownership): a put on server 2 is seen by a watcher on
//!    server 1 and a get on server 0; `create` refuses an existing key, `update` refuses a
//!    stale revision (compare-and-set), deletes are watched. (The bucket is made by hand:
//!    async-nats's `create_key_value` fails against 2.9, see `create_bucket`.)
//!
//! `nats-server` is required (`apt-get install nats-server`, as `.ci/deps` does): without it
//! these tests fail, they do not skip. Every wait is bounded by a guard that turns a hang
//! into a failure (with the servers' logs); nothing is timed.

#[path = "support/nats.rs"]
mod nats;

use std::future::{Future, IntoFuture};
use std::time::Duration;

use async_nats::jetstream::{self, consumer, kv, stream};
use async_nats::{Client, Subscriber};
use futures_util::{FutureExt, StreamExt};

use nats::NatsCluster;

/// The bound on any one wait: generous, so that only a hang trips it.
const GUARD: Duration = Duration::from_secs(60);

/// `fut`, or a panic naming `what` if it does not finish within [`GUARD`].
async fn guard<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(GUARD, fut)
        .await
        .unwrap_or_else(|_| panic!("no progress within {GUARD:?}: {what}"))
}

async fn connect(url: String) -> Client {
    guard(&format!("connect to {url}"), async_nats::connect(&url))
        .await
        .unwrap_or_else(|e| panic!("connect to {url}: {e}"))
}

/// The harness blocks (it waits for processes and polls HTTP): off the runtime's threads.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// Waits until `publisher`'s server knows of every subscription in `subs` (which all match
/// `probe`): interest crosses routes asynchronously, and a message published before it
/// arrives is dropped, as NATS has no subscriber for it yet. Publishes `probe` until each
/// subscriber has received one; later readers skip `probe`. A server forwards the
/// subscriptions of one connection over a route in order, so a subscription made before
/// the last of `subs`, on the same connection, is known too.
async fn await_interest(publisher: &Client, probe: &str, subs: &mut [&mut Subscriber]) {
    guard(
        &format!("interest in {probe} to cross the cluster"),
        async {
            for sub in subs.iter_mut() {
                loop {
                    publisher
                        .publish(probe.to_owned(), "probe".into())
                        .await
                        .unwrap();
                    publisher.flush().await.unwrap();
                    match tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
                        Ok(Some(m)) if m.subject.as_str() == probe => break,
                        Ok(Some(m)) => panic!("unexpected message on {} before any", m.subject),
                        Ok(None) => panic!("subscription closed"),
                        Err(_) => continue,
                    }
                }
            }
        },
    )
    .await;
}

/// Reads `sub` until a message on `end`, skipping `skip` (probes): the other messages'
/// subjects and payloads, in arrival order.
async fn read_until(sub: &mut Subscriber, end: &str, skip: &str) -> Vec<(String, String)> {
    let mut got = Vec::new();
    guard(&format!("the message on {end}"), async {
        loop {
            let m = sub.next().await.expect("subscription closed");
            match m.subject.as_str() {
                s if s == end => return,
                s if s == skip => {}
                s => got.push((
                    s.to_owned(),
                    String::from_utf8_lossy(&m.payload).into_owned(),
                )),
            }
        }
    })
    .await;
    got
}

/// Wildcard subscriptions and a queue group across servers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn core_routing_across_servers() {
    let cluster = blocking(|| NatsCluster::start(3));
    let subscriber = connect(cluster.url(0)).await;
    let publisher = connect(cluster.url(2)).await;

    // Wildcards: `*` one level, `>` one or more.
    let mut one_level = subscriber.subscribe("a.*.c").await.unwrap();
    let mut all_below = subscriber.subscribe("a.>").await.unwrap();
    subscriber.flush().await.unwrap();
    await_interest(
        &publisher,
        "a.probe.c",
        &mut [&mut one_level, &mut all_below],
    )
    .await;
    for s in ["a.b.c", "a.x.c", "a.b.d", "a.b.c.d", "b.b.c", "a", "a.c"] {
        publisher.publish(s, s.into()).await.unwrap();
    }
    publisher.publish("a.end.c", "end".into()).await.unwrap();
    publisher.flush().await.unwrap();
    let pairs = |subjects: &[&str]| -> Vec<(String, String)> {
        subjects
            .iter()
            .map(|s| (s.to_string(), s.to_string()))
            .collect()
    };
    assert_eq!(
        read_until(&mut one_level, "a.end.c", "a.probe.c").await,
        pairs(&["a.b.c", "a.x.c"]),
        "a.*.c on server 0, published on server 2"
    );
    assert_eq!(
        read_until(&mut all_below, "a.end.c", "a.probe.c").await,
        pairs(&["a.b.c", "a.x.c", "a.b.d", "a.b.c.d", "a.c"]),
        "a.> on server 0, published on server 2"
    );

    // A queue group with a member on server 0 and one on server 1; each member's
    // connection also has a plain subscription to `jobs.ctl`, for the interest probe and
    // the end marker.
    const JOBS: u32 = 200;
    let members = [connect(cluster.url(0)).await, connect(cluster.url(1)).await];
    let mut queues = Vec::new();
    let mut controls = Vec::new();
    for m in &members {
        queues.push(m.queue_subscribe("jobs", "workers".into()).await.unwrap());
        controls.push(m.subscribe("jobs.ctl").await.unwrap());
        m.flush().await.unwrap();
    }
    {
        let [c0, c1] = &mut controls[..] else {
            unreachable!()
        };
        await_interest(&publisher, "jobs.ctl", &mut [c0, c1]).await;
    }
    for i in 0..JOBS {
        publisher
            .publish("jobs", i.to_string().into())
            .await
            .unwrap();
    }
    publisher.publish("jobs.ctl", "done".into()).await.unwrap();
    publisher.flush().await.unwrap();
    // The end marker reaches each member after every job routed to it (one publisher, one
    // route per pair of servers, one connection per member: all in order), and the client
    // hands a connection's messages to its subscriptions in order: once a member has the
    // marker, its jobs are in its queue subscription's buffer.
    let mut per_member = Vec::new();
    for (control, queue) in controls.iter_mut().zip(&mut queues) {
        guard("the end marker", async {
            while control.next().await.expect("subscription closed").payload != "done" {}
        })
        .await;
        let mut jobs = Vec::new();
        // Unconstrained: tokio's cooperative budget would make a receive pending after
        // some 100 ready messages, and the drain would stop early.
        while let Some(Some(m)) = tokio::task::unconstrained(queue.next()).now_or_never() {
            jobs.push(String::from_utf8_lossy(&m.payload).parse::<u32>().unwrap());
        }
        per_member.push(jobs);
    }
    let mut all: Vec<u32> = per_member.concat();
    all.sort_unstable();
    assert_eq!(
        all,
        (0..JOBS).collect::<Vec<_>>(),
        "each job to exactly one member of the queue group"
    );
    let counts: Vec<usize> = per_member.iter().map(Vec::len).collect();
    eprintln!("queue group split across servers 0 and 1: {counts:?}");
    assert!(
        counts.iter().all(|&c| c > 0),
        "both members, on different servers, get jobs: {counts:?}"
    );
}

/// The name of the stream's leader, retrying while the stream has none (an election).
async fn stream_leader(js: &jetstream::Context, name: &str) -> String {
    guard(&format!("a leader for stream {name}"), async {
        loop {
            if let Ok(mut s) = js.get_stream(name).await {
                if let Ok(info) = s.info().await {
                    if let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone()) {
                        return leader;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
}

/// Makes server `want` the stream's leader: asks the leader to step down (the replicas
/// elect another) until `want` wins. The request is repeated if the leader stays (a lost
/// request, or a step-down refused while a replica catches up).
async fn make_leader(client: &Client, js: &jetstream::Context, name: &str, want: &str) {
    guard(&format!("{want} to lead stream {name}"), async {
        loop {
            let leader = stream_leader(js, name).await;
            if leader == want {
                return;
            }
            let _ = client
                .request(format!("$JS.API.STREAM.LEADER.STEPDOWN.{name}"), "".into())
                .await;
            for _ in 0..40 {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if stream_leader(js, name).await != leader {
                    break;
                }
            }
        }
    })
    .await;
}

/// Reads the last message of each subject of `stream.>` through a new `LastPerSubject`
/// consumer, retrying its creation while the stream elects a leader.
async fn last_per_subject(js: &jetstream::Context, name: &str) -> Vec<(String, String)> {
    let consumer = guard("a LastPerSubject consumer", async {
        loop {
            match js.get_stream(name).await {
                Ok(s) => match s
                    .create_consumer(consumer::pull::Config {
                        deliver_policy: consumer::DeliverPolicy::LastPerSubject,
                        ack_policy: consumer::AckPolicy::None,
                        filter_subject: "retained.>".into(),
                        ..Default::default()
                    })
                    .await
                {
                    Ok(c) => return c,
                    Err(e) => eprintln!("create consumer: {e}; retrying"),
                },
                Err(e) => eprintln!("get stream: {e}; retrying"),
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await;
    let mut consumer = consumer;
    let pending = consumer.info().await.unwrap().num_pending;
    let mut messages = consumer.messages().await.unwrap();
    let mut got = Vec::new();
    for _ in 0..pending {
        let m = guard("a retained message", messages.next())
            .await
            .expect("consumer stream ended")
            .expect("consumer message");
        got.push((
            m.subject.to_string(),
            String::from_utf8_lossy(&m.payload).into_owned(),
        ));
    }
    got
}

/// An R3 stream keeping one message per subject (retained messages) survives its leader's
/// crash, and the crashed server catches up when restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jetstream_last_per_subject_survives_a_killed_server() {
    let mut cluster = blocking(|| NatsCluster::start(3));
    let c0 = connect(cluster.url(0)).await;
    let js0 = jetstream::new(c0.clone());
    let js2 = jetstream::new(connect(cluster.url(2)).await);
    let mut s = js0
        .create_stream(stream::Config {
            name: "RETAINED".into(),
            subjects: vec!["retained.>".into()],
            max_messages_per_subject: 1,
            num_replicas: 3,
            storage: stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();
    let topics = ["a", "b.c", "d.e.f"];
    for round in 1..=3 {
        for t in topics {
            guard(
                "a publish acknowledgement",
                js2.publish(format!("retained.{t}"), format!("{t}={round}").into())
                    .await
                    .unwrap()
                    .into_future(),
            )
            .await
            .unwrap();
        }
    }
    let info = s.info().await.unwrap();
    assert_eq!(info.state.messages, 3, "one message per subject is kept");
    let expected: Vec<(String, String)> = topics
        .iter()
        .map(|t| (format!("retained.{t}"), format!("{t}=3")))
        .collect();
    assert_eq!(last_per_subject(&js0, "RETAINED").await, expected);

    // Kill the leader (made server 1), then read from server 0.
    make_leader(&c0, &js0, "RETAINED", cluster.name(1)).await;
    blocking(|| cluster.kill(1));
    // Until the replicas elect a new leader (seconds: Raft's election timeout), requests to
    // the stream go unanswered; the retries below ask every second rather than every 5 s
    // (async-nats's default timeout), so that the test ends soon after the election.
    let mut js0_retrying = js0.clone();
    js0_retrying.set_timeout(Duration::from_secs(1));
    assert_ne!(
        stream_leader(&js0_retrying, "RETAINED").await,
        cluster.name(1),
        "a new leader after the old one was killed"
    );
    assert_eq!(
        last_per_subject(&js0, "RETAINED").await,
        expected,
        "the last message per subject, from the replicas, after the leader was killed"
    );

    // Server 1 restarted catches up: it can lead again (Raft elects only a replica whose
    // log is current) and serves the same messages to a client connected to it.
    blocking(|| cluster.restart(1));
    let c1 = connect(cluster.url(1)).await;
    let js1 = jetstream::new(c1.clone());
    make_leader(&c1, &js1, "RETAINED", cluster.name(1)).await;
    assert_eq!(
        last_per_subject(&js1, "RETAINED").await,
        expected,
        "from the restarted server, leading again"
    );
}

/// The next entry of a KV watch, bounded.
async fn next_entry(watch: &mut kv::Watch) -> kv::Entry {
    guard("a KV watch entry", watch.next())
        .await
        .expect("watch ended")
        .expect("watch entry")
}

/// Creates key-value bucket `bucket` with `replicas` copies, keeping the last value of
/// each key.
///
/// Not with `Context::create_key_value`: async-nats 0.41 and later first ask for the
/// account's JetStream info and require fields in it (`reserved_memory`,
/// `reserved_storage`) that nats-server 2.9 (Debian 12's) does not send, so the call fails
/// with "data did not match any variant of untagged enum Response". The answer is used
/// only for `limit_markers` (server 2.11), so this creates the bucket's stream as
/// async-nats's `kv_to_stream_config` would for a plain bucket (the key-value conventions
/// of NATS ADR-8), and opens it with `get_key_value`, which 2.9 serves.
async fn create_bucket(js: &jetstream::Context, bucket: &str, replicas: usize) -> kv::Store {
    js.create_stream(stream::Config {
        name: format!("KV_{bucket}"),
        subjects: vec![format!("$KV.{bucket}.>")],
        max_messages_per_subject: 1,
        max_bytes: -1,
        max_message_size: -1,
        storage: stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        deny_purge: false,
        allow_direct: true,
        num_replicas: replicas,
        discard: stream::DiscardPolicy::New,
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("create the stream of bucket {bucket}: {e}"));
    js.get_key_value(bucket)
        .await
        .unwrap_or_else(|e| panic!("open bucket {bucket}: {e}"))
}

/// An R3 key-value bucket used as session ownership would be: puts, compare-and-set and
/// deletes on one server, seen on the others.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_across_servers() {
    let cluster = blocking(|| NatsCluster::start(3));
    let js0 = jetstream::new(connect(cluster.url(0)).await);
    let js1 = jetstream::new(connect(cluster.url(1)).await);
    let js2 = jetstream::new(connect(cluster.url(2)).await);
    let kv0 = create_bucket(&js0, "sessions", 3).await;
    let kv1 = js1.get_key_value("sessions").await.unwrap();
    let kv2 = js2.get_key_value("sessions").await.unwrap();
    let mut watch = kv1.watch_all().await.unwrap();

    let r1 = kv2.put("client-a", "node-2".into()).await.unwrap();
    let e = next_entry(&mut watch).await;
    assert_eq!(
        (e.key.as_str(), &e.value[..], e.revision, e.operation),
        ("client-a", &b"node-2"[..], r1, kv::Operation::Put),
        "a put on server 2, watched on server 1"
    );
    assert_eq!(
        kv0.get("client-a").await.unwrap().as_deref(),
        Some(&b"node-2"[..]),
        "read on server 0"
    );

    // Compare-and-set: what taking a session over needs.
    assert!(
        kv0.create("client-a", "node-0".into()).await.is_err(),
        "create refuses an existing key"
    );
    let r2 = kv0
        .update("client-a", "node-0".into(), r1)
        .await
        .expect("update at the current revision");
    assert!(r2 > r1);
    assert!(
        kv2.update("client-a", "node-2".into(), r1).await.is_err(),
        "update refuses a stale revision"
    );
    let e = next_entry(&mut watch).await;
    assert_eq!(
        (e.key.as_str(), &e.value[..], e.revision),
        ("client-a", &b"node-0"[..], r2)
    );

    kv2.delete("client-a").await.unwrap();
    let e = next_entry(&mut watch).await;
    assert_eq!(
        (e.key.as_str(), e.operation),
        ("client-a", kv::Operation::Delete),
        "a delete on server 2, watched on server 1"
    );
    assert_eq!(kv0.get("client-a").await.unwrap(), None);
    assert!(
        kv0.create("client-a", "node-0".into()).await.is_ok(),
        "create takes a deleted key"
    );
}
