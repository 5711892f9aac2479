//! Subscription tree and retained store against a linear scan with `matches`.
//!
//! Filters come from a seeded generator shaped like a fleet of devices:
//! `site/{s}/device/{d}/{metric}` with a share of `+` and `#` filters. Before the timed
//! benchmarks it prints the memory used per filter (the tree's own estimate and the growth of
//! the process's resident set).
//!
//! Run with `cargo bench -p mqtt-topic --bench tree`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use mqtt_topic::{
    matches, validate_name, RetainedStore, Subscription, SubscriptionTree, TopicFilter, TopicName,
};

const METRICS: &[&str] = &[
    "temperature",
    "humidity",
    "power",
    "status",
    "voltage",
    "current",
    "rssi",
    "uptime",
];

/// SplitMix64: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// 100 devices per site; the number of sites grows with the number of filters so that most
/// filters are distinct, as in a real fleet.
fn shape(n: usize) -> (u64, u64) {
    ((n as u64 / 400).max(1), 100)
}

/// `n` filters: 80% exact, 10% `.../device/{d}/+`, 5% `.../device/+/{metric}`, 4% `site/{s}/#`,
/// 1% `site/+/device/{d}/{metric}`, plus one `#` per 100,000 (a monitoring client).
fn filters(n: usize, seed: u64) -> Vec<String> {
    let (sites, devices) = shape(n);
    let mut rng = Rng(seed);
    (0..n)
        .map(|i| {
            let s = rng.below(sites);
            let d = rng.below(devices);
            let m = METRICS[rng.below(METRICS.len() as u64) as usize];
            if i % 100_000 == 99_999 {
                return "#".to_owned();
            }
            match rng.below(100) {
                0..80 => format!("site/{s}/device/{d}/{m}"),
                80..90 => format!("site/{s}/device/{d}/+"),
                90..95 => format!("site/{s}/device/+/{m}"),
                95..99 => format!("site/{s}/#"),
                _ => format!("site/+/device/{d}/{m}"),
            }
        })
        .collect()
}

/// Topic names from the same fleet.
fn names(n_filters: usize, count: usize, seed: u64) -> Vec<String> {
    let (sites, devices) = shape(n_filters);
    let mut rng = Rng(seed);
    (0..count)
        .map(|_| {
            let s = rng.below(sites);
            let d = rng.below(devices);
            let m = METRICS[rng.below(METRICS.len() as u64) as usize];
            format!("site/{s}/device/{d}/{m}")
        })
        .collect()
}

fn build(filters: &[String]) -> SubscriptionTree<u32, u8> {
    let mut tree = SubscriptionTree::new();
    for (i, f) in filters.iter().enumerate() {
        tree.insert(Subscription::parse(f).unwrap(), i as u32, 1);
    }
    tree
}

fn tree_count(tree: &SubscriptionTree<u32, u8>, name: TopicName<'_>) -> usize {
    let mut n = 0;
    tree.for_each_match(name, |_| n += 1);
    n
}

fn linear_count(list: &[TopicFilter<'_>], name: TopicName<'_>) -> usize {
    list.iter().filter(|f| matches(**f, name)).count()
}

/// Resident set size in bytes, from /proc (Linux); 0 elsewhere.
fn rss() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Prints bytes per filter and build/match sanity figures once, outside criterion's timing.
fn report_memory() {
    println!("\n== memory per filter (tree estimate via memory_usage(); RSS growth) ==");
    for n in [1_000usize, 100_000, 1_000_000] {
        let fs = filters(n, 7);
        let before = rss();
        let start = Instant::now();
        let tree = build(&fs);
        let took = start.elapsed();
        let grown = rss().saturating_sub(before);
        println!(
            "{n:>9} filters: {:>6.1} B/filter (memory_usage {:.1} MiB), RSS +{:.1} MiB \
             ({:.1} B/filter), {} nodes, built in {took:.2?} ({:.0} ns/insert)",
            tree.memory_usage() as f64 / n as f64,
            tree.memory_usage() as f64 / (1 << 20) as f64,
            grown as f64 / (1 << 20) as f64,
            grown as f64 / n as f64,
            tree.node_count(),
            took.as_nanos() as f64 / n as f64,
        );
        // The tree and the linear scan must agree before their speed is compared.
        let list: Vec<TopicFilter<'_>> = fs.iter().map(|f| TopicFilter::new(f).unwrap()).collect();
        for name in names(n, 20, 11)
            .iter()
            .take(if n > 100_000 { 3 } else { 20 })
        {
            let name = TopicName::new(name).unwrap();
            assert_eq!(tree_count(&tree, name), linear_count(&list, name));
        }
        drop(tree);
    }
}

fn bench_match(c: &mut Criterion) {
    report_memory();
    let mut group = c.benchmark_group("match");
    for n in [10usize, 1_000, 100_000, 1_000_000] {
        let fs = filters(n, 7);
        let tree = build(&fs);
        let list: Vec<TopicFilter<'_>> = fs.iter().map(|f| TopicFilter::new(f).unwrap()).collect();
        let ns = names(n, 1024, 11);
        let ns: Vec<TopicName<'_>> = ns.iter().map(|n| TopicName::new(n).unwrap()).collect();
        if n >= 100_000 {
            group
                .sample_size(10)
                .measurement_time(Duration::from_secs(3));
        } else {
            group
                .sample_size(50)
                .measurement_time(Duration::from_secs(2));
        }
        group.throughput(Throughput::Elements(1));
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("tree", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % ns.len();
                black_box(tree_count(&tree, black_box(ns[i])))
            })
        });
        let mut i = 0;
        group.bench_with_input(BenchmarkId::new("linear", n), &n, |b, _| {
            b.iter(|| {
                i = (i + 1) % ns.len();
                black_box(linear_count(&list, black_box(ns[i])))
            })
        });
    }
    group.finish();
}

fn bench_insert_remove(c: &mut Criterion) {
    const N: usize = 100_000;
    let fs = filters(N, 7);
    let mut group = c.benchmark_group("update");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(N as u64));
    group.bench_function(BenchmarkId::new("insert", N), |b| {
        b.iter(|| black_box(build(&fs)))
    });
    group.bench_function(BenchmarkId::new("remove", N), |b| {
        b.iter_batched(
            || build(&fs),
            |mut tree| {
                for (i, f) in fs.iter().enumerate() {
                    tree.remove(Subscription::parse(f).unwrap(), &(i as u32));
                }
                assert_eq!(tree.node_count(), 1);
                tree
            },
            BatchSize::LargeInput,
        )
    });
    // Churn on a large tree: one subscribe plus one unsubscribe of a fresh filter.
    let big = filters(1_000_000, 7);
    let mut tree = build(&big);
    let extra = filters(1024, 99);
    group.throughput(Throughput::Elements(1));
    let mut i = 0;
    group.bench_function("insert+remove in 1000000", |b| {
        b.iter(|| {
            i = (i + 1) % extra.len();
            let sub = Subscription::parse(&extra[i]).unwrap();
            tree.insert(sub, u32::MAX, 0);
            black_box(tree.remove(sub, &u32::MAX))
        })
    });
    group.finish();
}

fn bench_retained(c: &mut Criterion) {
    const N: usize = 100_000;
    let mut store = RetainedStore::new();
    let ns = names(N * 4, N, 5);
    for n in &ns {
        store.insert(TopicName::new(n).unwrap(), 0u32);
    }
    let list: Vec<TopicName<'_>> = ns.iter().map(|n| TopicName::new(n).unwrap()).collect();
    let lookups: Vec<String> = filters(N * 4, 13).into_iter().take(256).collect();
    let lookups: Vec<TopicFilter<'_>> = lookups
        .iter()
        .map(|f| TopicFilter::new(f).unwrap())
        .collect();
    let mut group = c.benchmark_group("retained");
    group
        .sample_size(10)
        .measurement_time(Duration::from_secs(3));
    println!(
        "\n== retained store: {} names, {:.1} B/name (memory_usage) ==",
        store.len(),
        store.memory_usage() as f64 / store.len() as f64
    );
    let mut i = 0;
    group.bench_function(BenchmarkId::new("tree", N), |b| {
        b.iter(|| {
            i = (i + 1) % lookups.len();
            let mut n = 0;
            store.for_each_match(black_box(lookups[i]), |_, _| n += 1);
            n
        })
    });
    let mut i = 0;
    group.bench_function(BenchmarkId::new("linear", N), |b| {
        b.iter(|| {
            i = (i + 1) % lookups.len();
            let f = black_box(lookups[i]);
            list.iter().filter(|n| matches(f, **n)).count()
        })
    });
    group.finish();
}

/// The block scan of `validate_name` against the obvious byte loop.
fn bench_validate(c: &mut Criterion) {
    fn naive(name: &str) -> bool {
        !name.is_empty() && !name.bytes().any(|b| b == 0 || b == b'+' || b == b'#')
    }
    let mut group = c.benchmark_group("validate_name");
    for len in [16usize, 64, 256, 4096] {
        let name: String = "site/1234/device/".chars().cycle().take(len).collect();
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("block", len), &name, |b, n| {
            b.iter(|| validate_name(black_box(n)).is_ok())
        });
        group.bench_with_input(BenchmarkId::new("bytewise", len), &name, |b, n| {
            b.iter(|| naive(black_box(n)))
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = bench_match, bench_insert_remove, bench_retained, bench_validate
}
criterion_main!(benches);
