//! `FilterSet` (the fixed-capacity filter list for devices without an allocator) against a
//! naive model: a map from filter string to value, scanned with `mqtt_topic::matches`.
//!
//! Input: a capacity choice and a sequence of operations (via `arbitrary`). Filters and names
//! are built from a small alphabet of levels (`a`, `b`, empty, `$SYS`, `+`, `#`) so they
//! collide; strings that come out invalid are checked to be rejected and skipped.
//!
//! Checks after every step:
//! - `insert` replaces an equal filter's value (returning the old one), adds a new one while
//!   there is room, and gives the value back as `Err` when full, as the model says;
//! - `remove` and `get` return what the model returns;
//! - `for_each_match` and `matching` report exactly the model's matching filters and values
//!   (the `$` rule included, [MQTT-4.7.2-1]);
//! - `iter`, `len`, `is_empty` and `capacity` agree with the model.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mqtt_topic::{matches, validate_filter, FilterSet, TopicFilter, TopicName};

const LEVELS: [&str; 6] = ["a", "b", "", "$SYS", "+", "#"];

#[derive(Arbitrary, Debug)]
struct Input {
    small: bool,
    ops: Vec<Op>,
}

#[derive(Arbitrary, Debug)]
enum Op {
    Insert { filter: Vec<u8>, value: u8 },
    Remove { filter: Vec<u8> },
    Get { filter: Vec<u8> },
    Match { name: Vec<u8> },
    Iter,
}

/// Joins alphabet levels; at most 6 levels.
fn topic(levels: &[u8]) -> String {
    let parts: Vec<&str> = levels
        .iter()
        .take(6)
        .map(|b| LEVELS[usize::from(*b) % LEVELS.len()])
        .collect();
    parts.join("/")
}

fn sorted<'a>(it: impl Iterator<Item = (&'a str, u8)>) -> Vec<(String, u8)> {
    let mut v: Vec<(String, u8)> = it.map(|(f, v)| (f.to_owned(), v)).collect();
    v.sort();
    v
}

fn run<const N: usize>(ops: &[Op]) {
    // The set borrows its filters: every string is made first and outlives it.
    let strings: Vec<String> = ops
        .iter()
        .map(|op| match op {
            Op::Insert { filter, .. } | Op::Remove { filter } | Op::Get { filter } => topic(filter),
            Op::Match { name } => topic(name),
            Op::Iter => String::new(),
        })
        .collect();
    let mut set: FilterSet<'_, u8, N> = FilterSet::new();
    let mut model: BTreeMap<&str, u8> = BTreeMap::new();
    for (op, s) in ops.iter().zip(&strings) {
        let s = s.as_str();
        match op {
            Op::Insert { value, .. } => {
                let Ok(f) = TopicFilter::new(s) else {
                    assert!(validate_filter(s).is_err());
                    continue;
                };
                let want = match model.get(s) {
                    Some(&old) => Ok(Some(old)),
                    None if model.len() < N => Ok(None),
                    None => Err(*value),
                };
                assert_eq!(set.insert(f, *value), want, "insert {s:?}");
                if want.is_ok() {
                    model.insert(s, *value);
                }
            }
            Op::Remove { .. } => {
                let Ok(f) = TopicFilter::new(s) else { continue };
                assert_eq!(set.remove(f), model.remove(s), "remove {s:?}");
            }
            Op::Get { .. } => {
                let Ok(f) = TopicFilter::new(s) else { continue };
                assert_eq!(set.get(f).copied(), model.get(s).copied(), "get {s:?}");
            }
            Op::Match { .. } => {
                let Ok(name) = TopicName::new(s) else {
                    continue;
                };
                let want = sorted(
                    model
                        .iter()
                        .filter(|(f, _)| matches(TopicFilter::new(f).unwrap(), name))
                        .map(|(f, v)| (*f, *v)),
                );
                let mut seen = Vec::new();
                set.for_each_match(name, |f, v| seen.push((f.as_str(), *v)));
                assert_eq!(sorted(seen.into_iter()), want, "for_each_match {s:?}");
                let got = sorted(set.matching(name).map(|(f, v)| (f.as_str(), *v)));
                assert_eq!(got, want, "matching {s:?}");
            }
            Op::Iter => {
                let got = sorted(set.iter().map(|(f, v)| (f.as_str(), *v)));
                let want = sorted(model.iter().map(|(f, v)| (*f, *v)));
                assert_eq!(got, want, "iter");
                let _ = format!("{set:?}");
            }
        }
        assert_eq!(set.len(), model.len());
        assert_eq!(set.is_empty(), model.is_empty());
        assert_eq!(set.capacity(), N);
    }
}

fuzz_target!(|input: Input| {
    let ops: Vec<Op> = input.ops.into_iter().take(256).collect();
    if input.small {
        run::<2>(&ops);
    } else {
        run::<8>(&ops);
    }
});
