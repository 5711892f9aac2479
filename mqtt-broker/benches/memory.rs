//! Heap bytes per session held by the broker core: offline persistent sessions with one
//! subscription each (what a push service keeps for its devices), and connected idle
//! sessions. Counted exactly with `dhat::Alloc` as the global allocator (the workspace
//! forbids the `unsafe` a hand-written counting allocator needs): live heap bytes after
//! building the population minus before, divided by the number of sessions. Allocator
//! overhead is not included.
//!
//! ```text
//! cargo bench -p mqtt-broker --bench memory
//! BROKER_BENCH_SIZES=1000,100000 cargo bench -p mqtt-broker --bench memory
//! ```
//!
//! dhat records a backtrace per allocation, which makes building slow: the default sizes
//! stop at 100 k (the bytes per session should not depend on the size; that is one of the
//! things this shows).
#![allow(missing_docs)]

mod common;

use common::*;

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

fn main() {
    let sizes = match std::env::var("BROKER_BENCH_SIZES") {
        Ok(s) if !s.trim().is_empty() => common::sizes(),
        _ => vec![1_000, 10_000, 100_000],
    };
    // `cargo test --benches` runs this too: keep that quick.
    let sizes = if std::env::args().any(|a| a == "--test") {
        vec![100]
    } else {
        sizes
    };
    let _profiler = dhat::Profiler::builder().testing().build();
    println!("\n## Broker core: heap bytes per session (dhat)\n");
    println!("| kind | sessions | live heap bytes | bytes per session | build s |");
    println!("|---|---:|---:|---:|---:|");
    for kind in [Kind::OfflinePersistent, Kind::ConnectedIdle] {
        for &n in &sizes {
            let before = dhat::HeapStats::get().curr_bytes;
            let pop = Population::build(kind, n);
            let after = dhat::HeapStats::get().curr_bytes;
            // The empty broker with its probe, measured the same way, is not per session.
            let base = {
                let b0 = dhat::HeapStats::get().curr_bytes;
                let empty = Population::build(kind, 0);
                let b1 = dhat::HeapStats::get().curr_bytes;
                drop(empty);
                b1 - b0
            };
            let per = (after - before).saturating_sub(base) as f64 / n.max(1) as f64;
            println!(
                "| {} | {n} | {} | {per:.0} | {:.1} |",
                kind.name(),
                after - before,
                pop.build_secs
            );
            drop(pop);
        }
    }
}
