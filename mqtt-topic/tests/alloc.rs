//! Matching allocates nothing once the tree is built: every match of a few thousand names
//! against a tree of ten thousand filters (shared groups included), under a counting global
//! allocator, and retained-store lookups with `+` and `#` over wide levels.
//!
//! One test in its own binary, so no other test thread allocates while it counts.

use mqtt_topic::{Match, RetainedStore, Subscription, SubscriptionTree, TopicFilter, TopicName};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

#[test]
fn matching_allocates_nothing() {
    let _profiler = dhat::Profiler::builder().testing().build();
    let mut tree = SubscriptionTree::new();
    let mut retained = RetainedStore::new();
    let mut filters = Vec::new();
    for site in 0..50 {
        for dev in 0..40 {
            filters.push(format!("site/{site}/device/{dev}/temp"));
            filters.push(format!("site/{site}/+/{dev}/#"));
            filters.push(format!("$share/g{}/site/{site}/device/{dev}/+", dev % 3));
            filters.push(format!("site/+/device/{dev}/temp"));
            filters.push(format!("#/x{dev}").replace("#/", "+/"));
        }
    }
    for (i, f) in filters.iter().enumerate() {
        tree.insert(Subscription::parse(f).unwrap(), i % 97, i);
    }
    let names: Vec<String> = (0..2000)
        .map(|i| format!("site/{}/device/{}/temp", i % 50, i % 40))
        .collect();
    for n in &names {
        retained.insert(TopicName::new(n).unwrap(), n.len());
    }
    let names: Vec<TopicName<'_>> = names.iter().map(|n| TopicName::new(n).unwrap()).collect();
    let narrow = TopicFilter::new("site/+/device/7/#").unwrap();
    let wide = TopicFilter::new("#").unwrap();

    let before = dhat::HeapStats::get();
    let (mut plain, mut groups, mut kept) = (0usize, 0usize, 0usize);
    for &n in &names {
        tree.for_each_match(n, |m| match m {
            Match::Plain { .. } => plain += 1,
            Match::Shared(g) => groups += g.len(),
        });
    }
    retained.for_each_match(narrow, |_, _| kept += 1);
    let after = dhat::HeapStats::get();
    assert!(
        plain > 2000 && groups > 0 && kept > 0,
        "{plain} {groups} {kept}"
    );
    assert_eq!(
        after.total_blocks - before.total_blocks,
        0,
        "matching allocated"
    );

    let mut all = 0;
    let w = dhat::HeapStats::get();
    retained.for_each_match(wide, |_, _| all += 1);
    let lookup_blocks = dhat::HeapStats::get().total_blocks - w.total_blocks;
    assert_eq!(lookup_blocks, 0, "a wide lookup allocated");

    let distinct: std::collections::BTreeSet<_> = names.iter().collect();
    let expect = |f| {
        distinct
            .iter()
            .filter(|n| mqtt_topic::matches(f, ***n))
            .count()
    };
    assert_eq!((kept, all), (expect(narrow), expect(wide)));
}
