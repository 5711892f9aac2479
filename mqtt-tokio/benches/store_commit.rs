//! What a durable broker pays for its store: [`RedbStore::commit`] of batches of 1, 64 and
//! 1,024 message-sized Puts (a 20-byte key: a session and a sequence number; a 200-byte
//! value), each commit one redb write transaction with `Durability::Immediate` and
//! two-phase commit (two `fsync`s); a durable broker's steady state under load (10 queues,
//! each commit putting at their tails and deleting at their heads what the commit before
//! put), with the store thread's CPU time per operation (Linux); and the bytes on disk per
//! stored message once 100,000 are stored (keys of 100 sessions interleaved, as queues
//! fill). Prints a table; asserts nothing.
//!
//! ```text
//! cargo bench -p mqtt-tokio --features store --bench store_commit
//! ```
//!
//! `STORE_BENCH_DIR` sets the directory of the file (default: the system's temporary
//! directory; the file system decides what an `fsync` costs, so measure where the broker's
//! `--data-dir` will be). `STORE_BENCH_COMMITS` (200) commits per batch size.

use std::time::{Duration, Instant as StdInstant};

use mqtt_tokio::broker::{StoreOp, Table};
use mqtt_tokio::mqtt_state::Instant;
use mqtt_tokio::store::{RedbStore, Store};

const VALUE: usize = 200;
const STORED: u64 = 100_000;

fn key(session: u32, seq: u64) -> Vec<u8> {
    let mut k = format!("client-{session:05}").into_bytes();
    k.push(0);
    k.extend_from_slice(&seq.to_be_bytes());
    k
}

fn puts(first: u64, n: u64) -> Vec<StoreOp> {
    (first..first + n)
        .map(|seq| StoreOp::Put {
            table: Table::Messages,
            key: key((seq % 100) as u32, seq),
            value: vec![(seq % 251) as u8; VALUE],
        })
        .collect()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` too: run only under bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let base = std::env::var_os("STORE_BENCH_DIR")
        .map(Into::into)
        .unwrap_or_else(std::env::temp_dir);
    let commits: u64 = std::env::var("STORE_BENCH_COMMITS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(200);
    let dir = base.join(format!("mqtt-store-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("bench directory");
    println!("RedbStore commit cost, file in {}", dir.display());
    println!();
    println!("| Puts per commit | commits | ms/commit mean | p50 | p99 | µs per message |");
    println!("|---:|---:|---:|---:|---:|---:|");
    for batch in [1u64, 64, 1024] {
        let sub = dir.join(format!("batch-{batch}"));
        std::fs::create_dir_all(&sub).unwrap();
        let mut store = RedbStore::open(&sub).expect("open");
        let mut times = Vec::with_capacity(commits as usize);
        let mut seq = 0;
        for c in 0..commits {
            let ops = puts(seq, batch);
            seq += batch;
            let t = StdInstant::now();
            store.commit(&ops, Instant::from_millis(c)).expect("commit");
            times.push(t.elapsed());
        }
        let total: Duration = times.iter().sum();
        times.sort();
        let mean = total / commits as u32;
        println!(
            "| {batch} | {commits} | {:.3} | {:.3} | {:.3} | {:.1} |",
            ms(mean),
            ms(percentile(&times, 0.5)),
            ms(percentile(&times, 0.99)),
            mean.as_secs_f64() * 1e6 / batch as f64,
        );
    }

    queue(&dir, commits);

    // 100,000 messages stored in commits of 1,024, then the file's size.
    let sub = dir.join("stored");
    std::fs::create_dir_all(&sub).unwrap();
    let mut store = RedbStore::open(&sub).expect("open");
    let empty = std::fs::metadata(store.path()).unwrap().len();
    let t = StdInstant::now();
    let mut seq = 0;
    while seq < STORED {
        let n = (STORED - seq).min(1024);
        store
            .commit(&puts(seq, n), Instant::from_millis(seq))
            .expect("commit");
        seq += n;
    }
    let took = t.elapsed();
    let size = std::fs::metadata(store.path()).unwrap().len();
    drop(store);
    let t = StdInstant::now();
    let mut store = RedbStore::open(&sub).expect("reopen");
    let opened = t.elapsed();
    let t = StdInstant::now();
    let loaded = store.load(&mut |_, _, _, _| Ok(())).expect("load");
    let load = t.elapsed();
    println!();
    println!(
        "{STORED} messages ({VALUE}-byte values) stored in {:.2} s; file {} bytes ({} empty): \
         {:.0} bytes on disk per stored message; reopen (integrity check) {:.0} ms, \
         load of {} entries {:.0} ms",
        took.as_secs_f64(),
        size,
        empty,
        size as f64 / STORED as f64,
        ms(opened),
        loaded.entries,
        ms(load),
    );
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The CPU time this thread has used (Linux: `/proc/thread-self/schedstat`; `None`
/// elsewhere).
fn thread_cpu() -> Option<Duration> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    Some(Duration::from_nanos(
        s.split_whitespace().next()?.parse().ok()?,
    ))
}

/// A durable broker's steady state under load: 10 sessions' queues, each commit puts
/// `PER` messages per session at a queue's tail and deletes the `PER` its commit before
/// put (acknowledged meanwhile) at the head, as a closed loop of QoS 1 messages does.
/// What a commit costs the store's thread in CPU, per operation, which is what limits the
/// broker's throughput there (the fsyncs wait without it).
fn queue(dir: &std::path::Path, commits: u64) {
    const SESSIONS: u64 = 10;
    const PER: u64 = 50;
    // A 64-byte payload stored as the core does (format, instants, packet identifier, the
    // PUBLISH packet): about 110 bytes.
    const QUEUE_VALUE: usize = 110;
    let sub = dir.join("queue");
    std::fs::create_dir_all(&sub).unwrap();
    let mut store = RedbStore::open(&sub).expect("open");
    let key = |s: u64, seq: u64| {
        let id = format!("bench-subscriber-{s:04}");
        let mut k = (id.len() as u16).to_be_bytes().to_vec();
        k.extend_from_slice(id.as_bytes());
        k.extend_from_slice(&(seq << 1).to_be_bytes());
        k
    };
    let mut times = Vec::with_capacity(commits as usize);
    let mut cpu = Duration::ZERO;
    let mut ops_total = 0;
    for c in 0..commits {
        let mut ops = Vec::new();
        for s in 0..SESSIONS {
            if c > 0 {
                for seq in (c - 1) * PER..c * PER {
                    ops.push(StoreOp::Delete {
                        table: Table::Messages,
                        key: key(s, seq),
                    });
                }
            }
            for seq in c * PER..(c + 1) * PER {
                ops.push(StoreOp::Put {
                    table: Table::Messages,
                    key: key(s, seq),
                    value: vec![(seq % 251) as u8; QUEUE_VALUE],
                });
            }
        }
        // In the order they happen: acknowledgements and publications interleaved.
        ops.sort_by_key(|op| match op {
            StoreOp::Put { key, .. } | StoreOp::Delete { key, .. } => key[key.len() - 8..].to_vec(),
            StoreOp::DeletePrefix { .. } => Vec::new(),
        });
        let t = StdInstant::now();
        let c0 = thread_cpu();
        store.commit(&ops, Instant::from_millis(c)).expect("commit");
        if let (Some(a), Some(b)) = (c0, thread_cpu()) {
            cpu += b.saturating_sub(a);
        }
        times.push(t.elapsed());
        ops_total += ops.len() as u64;
    }
    let total: Duration = times.iter().sum();
    times.sort();
    println!();
    println!(
        "Queues ({SESSIONS} sessions; each commit {} puts, and {} deletes of the commit \
         before's): {commits} commits, {:.3} ms/commit mean, p50 {:.3}, p99 {:.3}; \
         CPU {:.2} µs per operation",
        SESSIONS * PER,
        SESSIONS * PER,
        ms(total / commits as u32),
        ms(percentile(&times, 0.5)),
        ms(percentile(&times, 0.99)),
        cpu.as_secs_f64() * 1e6 / ops_total.max(1) as f64,
    );
}
