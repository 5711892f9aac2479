//! What a durable broker pays for its store: [`RedbStore::commit`] of batches of 1, 64 and
//! 1,024 message-sized Puts (a 20-byte key: a session and a sequence number; a 200-byte
//! value), each commit one redb write transaction with `Durability::Immediate` and
//! two-phase commit (two `fsync`s); and the bytes on disk per stored message once 100,000
//! are stored (keys of 100 sessions interleaved, as queues fill). Prints a table; asserts
//! nothing.
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
