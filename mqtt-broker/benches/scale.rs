//! Per-operation cost of the broker core as the number of sessions grows: 1 k, 10 k,
//! 100 k and 1 M sessions, either connected and idle or offline and persistent with one
//! subscription each. The goal (issue #12): every per-operation time at 1 M sessions
//! within 1.5× of its time at 1 k, and a PUBLISH's fan-out linear in its matches.
//!
//! ```text
//! cargo bench -p mqtt-broker --bench scale
//! BROKER_BENCH_SIZES=1000,10000 cargo bench -p mqtt-broker --bench scale
//! BROKER_BENCH_SIZES=1k,100k BROKER_BENCH_KINDS=offline cargo bench -p mqtt-broker --bench scale -- connect
//! ```
//!
//! Operations, each on a broker that already holds the population (built once per size
//! and kind, then reused; every operation leaves it as it found it):
//!
//! - `connect`: open + CONNECT (clean) + CONNACK of one more client; its DISCONNECT and
//!   close afterwards are not timed.
//! - `pingreq`: PINGREQ in, PINGRESP out, on the probe connection.
//! - `handle_timeout` / `poll_timeout`: the run loop's timer calls when nothing is due.
//! - `handle_timeout_one_due`: `handle_timeout` when exactly one deadline is due: a client
//!   with a keep alive of 1 s whose 1.5 s ran out, closed by the call (its `Close` event
//!   and `handle_close` afterwards are not timed). The clock moves 10 ms per call and a
//!   new such client connects (untimed) before each, so 150 of them are in the pipeline
//!   besides the population and each call finds the oldest one due.
//! - `subscribe` / `unsubscribe`: one filter, with its SUBACK / UNSUBACK (the other half
//!   restores the state, untimed).
//! - `publish_fanout/K`: a QoS 0 PUBLISH of 64 bytes from the probe to a topic K connected
//!   clients subscribe to, everything delivered (encoded into the output buffer). The K
//!   subscribers exist only while their bench runs.
//!
//! Before the operations, the clock moves past the CONNECT timeout once (untimed by
//! criterion, reported as `settle s`): every connection of the population connected at the
//! same instant, so their first timer entries all come up together then.
//!
//! Besides criterion's own report, the bench prints a table of mean times per operation
//! and size, with the ratio to the smallest size, and how long each population took to
//! build and to settle. Bytes per session: `cargo bench -p mqtt-broker --bench memory`.
//!
//! Knobs (environment): `BROKER_BENCH_SIZES` (comma-separated, `k`/`M` suffixes allowed),
//! `BROKER_BENCH_KINDS` (`connected`, `offline` or both, comma-separated),
//! `BROKER_BENCH_FANOUT` (subscriber counts, default `1,100,10000`).
#![allow(missing_docs)]

mod common;

use std::collections::BTreeMap;
use std::hint::black_box;
use std::time::{Duration, Instant as StdInstant};

use common::*;
use criterion::{BenchmarkId, Criterion, SamplingMode, Throughput};
use mqtt_broker::codec::QoS;
use mqtt_broker::state::Instant;

/// Mean time per operation, gathered from the timed loops, in the order first run:
/// (kind, operation) -> size -> (total, iterations).
type Table = Vec<((&'static str, String), BTreeMap<usize, (Duration, u64)>)>;

fn record(table: &mut Table, op: &str, kind: Kind, n: usize, d: Duration, iters: u64) {
    let key = (kind.name(), op.to_string());
    let i = match table.iter().position(|(k, _)| *k == key) {
        Some(i) => i,
        None => {
            table.push((key, BTreeMap::new()));
            table.len() - 1
        }
    };
    let e = table[i].1.entry(n).or_default();
    e.0 += d;
    e.1 += iters;
}

fn kinds() -> Vec<Kind> {
    let s = std::env::var("BROKER_BENCH_KINDS").unwrap_or_default();
    let mut k = Vec::new();
    if s.is_empty() || s.contains("connected") {
        k.push(Kind::ConnectedIdle);
    }
    if s.is_empty() || s.contains("offline") {
        k.push(Kind::OfflinePersistent);
    }
    k
}

fn fanouts() -> Vec<usize> {
    std::env::var("BROKER_BENCH_FANOUT")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map(|s| {
            s.split(',')
                .map(|x| x.trim().parse().expect("BROKER_BENCH_FANOUT: counts"))
                .collect()
        })
        .unwrap_or_else(|| vec![1, 100, 10_000])
}

/// Runs one timed operation as a criterion benchmark and records its mean.
fn run(
    c: &mut Criterion,
    table: &mut Table,
    pop: &mut Population,
    op: &str,
    elements: u64,
    mut timed: impl FnMut(&mut Population, u64) -> Duration,
) {
    let kind = pop.kind;
    let n = pop.n;
    let mut g = c.benchmark_group(format!("{}/{op}", kind.name()));
    g.sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(800))
        .sampling_mode(SamplingMode::Flat)
        .throughput(Throughput::Elements(elements));
    g.bench_function(BenchmarkId::from_parameter(n), |b| {
        b.iter_custom(|iters| {
            let d = timed(pop, iters);
            record(table, op, kind, n, d, iters);
            d
        })
    });
    g.finish();
}

fn bench_population(c: &mut Criterion, table: &mut Table, pop: &mut Population) {
    let probe = pop.probe;

    let connect = connect_bytes("extra", true);
    let disconnect = disconnect_bytes();
    run(c, table, pop, "connect", 1, |p, iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let t = StdInstant::now();
            let id = p.connect_unchecked(&connect);
            total += t.elapsed();
            p.feed_and_drain(id, &disconnect);
        }
        total
    });

    run(c, table, pop, "pingreq", 1, |p, iters| {
        let t = StdInstant::now();
        for _ in 0..iters {
            black_box(p.feed_and_drain(probe, &PINGREQ));
        }
        t.elapsed()
    });

    run(c, table, pop, "handle_timeout", 1, |p, iters| {
        let now = p.now;
        let t = StdInstant::now();
        for _ in 0..iters {
            p.broker.handle_timeout(black_box(now));
        }
        t.elapsed()
    });

    // Exactly one keep alive due per call: a pipeline of short-keep-alive clients, one
    // connected every DUE_STEP_MS, each due DUE_LAG steps after it connected.
    const DUE_STEP_MS: u64 = 10;
    const DUE_KEEP_ALIVE: u16 = 1;
    const DUE_LAG: u64 = DUE_KEEP_ALIVE as u64 * 1500 / DUE_STEP_MS;
    let mut due_next = 0u64;
    let connect_due = |p: &mut Population, due_next: &mut u64| {
        p.now = Instant::from_millis(p.now.as_millis() + DUE_STEP_MS);
        let bytes = connect_bytes_keep_alive(&format!("due{due_next}"), true, DUE_KEEP_ALIVE);
        *due_next += 1;
        p.connect(&bytes);
    };
    for _ in 0..DUE_LAG {
        connect_due(pop, &mut due_next);
    }
    run(c, table, pop, "handle_timeout_one_due", 1, |p, iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            connect_due(p, &mut due_next);
            let before = p.broker.stats().clients_connected;
            let now = p.now;
            let t = StdInstant::now();
            p.broker.handle_timeout(black_box(now));
            total += t.elapsed();
            p.feed_and_drain(probe, &[]);
            assert_eq!(
                p.broker.stats().clients_connected,
                before - 1,
                "exactly one keep alive ran out"
            );
        }
        total
    });
    // Let the rest of the pipeline run out, untimed.
    pop.now = Instant::from_millis(pop.now.as_millis() + DUE_LAG * DUE_STEP_MS);
    pop.broker.handle_timeout(pop.now);
    pop.feed_and_drain(probe, &[]);

    run(c, table, pop, "poll_timeout", 1, |p, iters| {
        let t = StdInstant::now();
        for _ in 0..iters {
            black_box(p.broker.poll_timeout());
        }
        t.elapsed()
    });

    let sub = subscribe_bytes(7, "probe/filter/+", QoS::AtLeastOnce);
    let unsub = unsubscribe_bytes(8, "probe/filter/+");
    run(c, table, pop, "subscribe", 1, |p, iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            let t = StdInstant::now();
            black_box(p.feed_and_drain(probe, &sub));
            total += t.elapsed();
            p.feed_and_drain(probe, &unsub);
        }
        total
    });
    run(c, table, pop, "unsubscribe", 1, |p, iters| {
        let mut total = Duration::ZERO;
        for _ in 0..iters {
            p.feed_and_drain(probe, &sub);
            let t = StdInstant::now();
            black_box(p.feed_and_drain(probe, &unsub));
            total += t.elapsed();
        }
        total
    });

    let payload = [0x42u8; 64];
    for k in fanouts() {
        let topic = format!("fan/{k}");
        let subscribe = subscribe_bytes(1, &topic, QoS::AtMostOnce);
        let subscribers: Vec<_> = (0..k)
            .map(|j| {
                let id = pop.connect(&connect_bytes(&format!("fan{k}-{j}"), true));
                let ack = pop.exchange(id, &subscribe);
                assert_eq!(ack.first(), Some(&0x90), "SUBACK");
                id
            })
            .collect();
        let publish = publish_bytes(&topic, &payload);
        // Every subscriber gets it: the PUBLISH as sent, 2 + 2 + topic + payload bytes.
        let sent = pop.feed_and_drain(probe, &publish);
        assert_eq!(sent, k * publish.len(), "delivered to all {k}");
        let op = format!("publish_fanout/{k}");
        run(c, table, pop, &op, k as u64, |p, iters| {
            let t = StdInstant::now();
            for _ in 0..iters {
                black_box(p.feed_and_drain(probe, &publish));
            }
            t.elapsed()
        });
        for id in subscribers {
            pop.feed_and_drain(id, &disconnect);
        }
    }
}

/// Moves the clock past the CONNECT timeout and runs what is due, untimed by criterion;
/// returns how long that took. The population connected at one instant of the bench clock,
/// so every connection's CONNECT-timeout entry comes up in the same call (each then arms
/// its keep alive once; a closed connection's entry is dropped). A real broker sees that
/// spread over the time its clients took to connect; left in place it would land on one
/// timed `handle_timeout_one_due` call at 1 M sessions. The benches measure the steady
/// state after it.
fn settle(pop: &mut Population) -> f64 {
    let after = config().server.connect_timeout.as_millis() + 1000;
    pop.now = Instant::from_millis(pop.now.as_millis() + after);
    let t = StdInstant::now();
    pop.broker.handle_timeout(pop.now);
    let secs = t.elapsed().as_secs_f64();
    let probe = pop.probe;
    pop.feed_and_drain(probe, &[]);
    secs
}

fn fmt_duration(d: f64) -> String {
    if d >= 1e-3 {
        format!("{:.2} ms", d * 1e3)
    } else if d >= 1e-6 {
        format!("{:.2} µs", d * 1e6)
    } else {
        format!("{:.0} ns", d * 1e9)
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    let mut table = Table::new();
    let mut builds = Vec::new();
    let sizes = sizes();
    for kind in kinds() {
        for &n in &sizes {
            let mut pop = Population::build(kind, n);
            eprintln!("built {} × {n} in {:.1} s", kind.name(), pop.build_secs);
            let settle = settle(&mut pop);
            eprintln!("settled in {:.3} s", settle);
            builds.push((kind.name(), n, pop.build_secs, settle));
            bench_population(&mut c, &mut table, &mut pop);
        }
    }
    c.final_summary();

    println!("\n## Broker core: mean time per operation by number of sessions\n");
    let mut header = String::from("| kind | operation |");
    let mut rule = String::from("|---|---|");
    for n in &sizes {
        header += &format!(" {n} |");
        rule += "---:|";
    }
    if sizes.len() > 1 {
        header += &format!(" {} / {} |", sizes[sizes.len() - 1], sizes[0]);
        rule += "---:|";
    }
    println!("{header}\n{rule}");
    for ((kind, op), by_size) in &table {
        let mean = |n: &usize| {
            by_size
                .get(n)
                .filter(|e| e.1 > 0)
                .map(|e| e.0.as_secs_f64() / e.1 as f64)
        };
        let mut line = format!("| {kind} | {op} |");
        for n in &sizes {
            line += &format!(" {} |", mean(n).map_or("–".into(), fmt_duration));
        }
        if sizes.len() > 1 {
            let r = match (mean(&sizes[sizes.len() - 1]), mean(&sizes[0])) {
                (Some(a), Some(b)) if b > 0.0 => format!("{:.2}×", a / b),
                _ => "–".into(),
            };
            line += &format!(" {r} |");
        }
        println!("{line}");
    }
    println!("\n(mean over every timed iteration, warm-up included; goal ≤ 1.5× from the smallest to the largest size)\n");
    println!("| kind | sessions | build s | settle s |\n|---|---:|---:|---:|");
    for (kind, n, secs, settle) in builds {
        println!("| {kind} | {n} | {secs:.1} | {settle:.3} |");
    }
}
