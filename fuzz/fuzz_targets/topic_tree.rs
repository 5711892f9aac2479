//! The subscription tree and the retained store against a naive model: a list scanned with
//! `mqtt_topic::matches`.
//!
//! Input: a sequence of operations (via `arbitrary`). Topics are built from a small alphabet of
//! levels (`a`, `b`, empty, `$`, `$share`, `g`, `+`, `#`) so filters share prefixes and collide;
//! strings that come out invalid must be rejected by validation and are then skipped. A `Raw`
//! operation feeds arbitrary strings to the validators and checks them against a level-by-level
//! reference.
//!
//! Checks:
//! - insert/remove/get return what the model returns, `len` agrees after every step;
//! - a match reports exactly the model's plain subscriptions and shared groups, and a retained
//!   lookup exactly the model's names (including the `$` rule, [MQTT-4.7.2-1]);
//! - removing everything at the end prunes both trees back to the root.
#![no_main]

use std::collections::BTreeMap;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use mqtt_topic::{
    matches, parse_shared, validate_filter, validate_name, Match, RetainedStore, Subscription,
    SubscriptionTree, TopicFilter, TopicName,
};

const LEVELS: [&str; 8] = ["a", "b", "", "$", "$share", "g", "+", "#"];
const GROUPS: [&str; 3] = ["g", "h", "$"];

#[derive(Arbitrary, Debug)]
enum Op {
    Subscribe {
        filter: Vec<u8>,
        group: Option<u8>,
        key: u8,
    },
    Unsubscribe {
        filter: Vec<u8>,
        group: Option<u8>,
        key: u8,
    },
    Get {
        filter: Vec<u8>,
        group: Option<u8>,
        key: u8,
    },
    Publish {
        name: Vec<u8>,
    },
    Retain {
        name: Vec<u8>,
    },
    Unretain {
        name: Vec<u8>,
    },
    Lookup {
        filter: Vec<u8>,
    },
    Raw(String),
}

/// Joins alphabet levels; at most 8 levels so inputs stay small.
fn topic(levels: &[u8]) -> String {
    let parts: Vec<&str> = levels
        .iter()
        .take(8)
        .map(|b| LEVELS[usize::from(*b) % LEVELS.len()])
        .collect();
    parts.join("/")
}

/// The model's identity of a subscription: (group, inner filter), as the tree keys it.
type SubId = (Option<String>, String);

/// The full string and the model id, or `None` when the string is rejected (checked to be
/// rejected for a reason).
fn subscription(filter: &[u8], group: Option<u8>) -> (String, Option<SubId>) {
    let inner = topic(filter);
    match group {
        Some(g) => {
            let g = GROUPS[usize::from(g) % GROUPS.len()];
            let full = format!("$share/{g}/{inner}");
            let ok = validate_filter(&inner).is_ok();
            assert_eq!(Subscription::parse(&full).is_ok(), ok, "{full}");
            (full, ok.then(|| (Some(g.to_owned()), inner)))
        }
        None => {
            let ok = validate_filter(&inner).is_ok();
            (inner.clone(), ok.then_some((None, inner)))
        }
    }
}

/// Shared strings through the MQTT 5 parser; plain ones literally, as MQTT 3.1.1 does.
fn parse<'a>(full: &'a str, id: &SubId) -> Subscription<'a> {
    match id.0 {
        Some(_) => Subscription::parse(full).unwrap(),
        None => Subscription::Plain(TopicFilter::new(full).unwrap()),
    }
}

type Outcome = (Vec<(u8, u32)>, Vec<(String, Vec<(u8, u32)>)>);

fn reference_filter_ok(s: &str) -> bool {
    let levels: Vec<&str> = s.split('/').collect();
    !s.is_empty()
        && s.len() <= 65_535
        && !s.contains('\0')
        && levels.iter().enumerate().all(|(i, l)| {
            (!l.contains('#') || (*l == "#" && i + 1 == levels.len()))
                && (!l.contains('+') || *l == "+")
        })
}

fuzz_target!(|ops: Vec<Op>| {
    let mut tree: SubscriptionTree<u8, u32> = SubscriptionTree::new();
    let mut subs: BTreeMap<(SubId, u8), u32> = BTreeMap::new();
    let mut store: RetainedStore<u32> = RetainedStore::new();
    let mut retained: BTreeMap<String, u32> = BTreeMap::new();

    for (i, op) in ops.into_iter().take(256).enumerate() {
        let value = i as u32;
        match op {
            Op::Subscribe { filter, group, key } => {
                let (full, id) = subscription(&filter, group);
                let Some(id) = id else { continue };
                let got = tree.insert(parse(&full, &id), key, value);
                assert_eq!(got, subs.insert((id, key), value));
            }
            Op::Unsubscribe { filter, group, key } => {
                let (full, id) = subscription(&filter, group);
                let Some(id) = id else { continue };
                let got = tree.remove(parse(&full, &id), &key);
                assert_eq!(got, subs.remove(&(id, key)));
            }
            Op::Get { filter, group, key } => {
                let (full, id) = subscription(&filter, group);
                let Some(id) = id else { continue };
                let got = tree.get(parse(&full, &id), &key).copied();
                assert_eq!(got, subs.get(&(id, key)).copied());
            }
            Op::Publish { name } => {
                let name = topic(&name);
                let Ok(name) = TopicName::new(&name) else {
                    continue;
                };
                let (mut plain, mut shared): Outcome = Default::default();
                tree.for_each_match(name, |m| match m {
                    Match::Plain { key, value } => plain.push((*key, *value)),
                    Match::Shared(g) => shared.push((
                        g.name().to_owned(),
                        g.iter().map(|(k, v)| (*k, *v)).collect(),
                    )),
                });
                plain.sort();
                shared.sort();
                let mut want_plain = Vec::new();
                let mut groups: BTreeMap<(String, String), Vec<(u8, u32)>> = BTreeMap::new();
                for (((group, filter), key), value) in &subs {
                    if !matches(TopicFilter::new(filter).unwrap(), name) {
                        continue;
                    }
                    match group {
                        None => want_plain.push((*key, *value)),
                        Some(g) => groups
                            .entry((g.clone(), filter.clone()))
                            .or_default()
                            .push((*key, *value)),
                    }
                }
                want_plain.sort();
                let mut want_shared: Vec<_> =
                    groups.into_iter().map(|((g, _), m)| (g, m)).collect();
                want_shared.sort();
                assert_eq!((plain, shared), (want_plain, want_shared), "{name}");
            }
            Op::Retain { name } => {
                let name = topic(&name);
                let Ok(n) = TopicName::new(&name) else {
                    continue;
                };
                assert_eq!(store.insert(n, value), retained.insert(name, value));
            }
            Op::Unretain { name } => {
                let name = topic(&name);
                let Ok(n) = TopicName::new(&name) else {
                    continue;
                };
                assert_eq!(store.remove(n), retained.remove(&name));
                assert_eq!(store.get(n), None);
            }
            Op::Lookup { filter } => {
                let filter = topic(&filter);
                let Ok(f) = TopicFilter::new(&filter) else {
                    continue;
                };
                let mut got = Vec::new();
                store.for_each_match(f, |n, v| got.push((n.as_str().to_owned(), *v)));
                got.sort();
                let want: Vec<(String, u32)> = retained
                    .iter()
                    .filter(|(n, _)| matches(f, TopicName::new(n).unwrap()))
                    .map(|(n, v)| (n.clone(), *v))
                    .collect();
                assert_eq!(got, want, "{filter}");
            }
            Op::Raw(s) => {
                assert_eq!(
                    validate_filter(&s).is_ok(),
                    reference_filter_ok(&s),
                    "{s:?}"
                );
                let name_ok = !s.is_empty() && s.len() <= 65_535 && !s.contains(['+', '#', '\0']);
                assert_eq!(validate_name(&s).is_ok(), name_ok, "{s:?}");
                if let Ok(Some(shared)) = parse_shared(&s) {
                    assert!(
                        !shared.group().is_empty() && !shared.group().contains(['/', '+', '#'])
                    );
                    assert!(validate_filter(shared.filter().as_str()).is_ok());
                    assert_eq!(format!("$share/{}/{}", shared.group(), shared.filter()), s);
                }
            }
        }
        assert_eq!(tree.len(), subs.len());
        assert_eq!(store.len(), retained.len());
    }

    for (((group, filter), key), value) in std::mem::take(&mut subs) {
        let full = match &group {
            Some(g) => format!("$share/{g}/{filter}"),
            None => filter.clone(),
        };
        assert_eq!(
            tree.remove(parse(&full, &(group, filter)), &key),
            Some(value)
        );
    }
    assert_eq!(tree.node_count(), 1);
    for (name, value) in std::mem::take(&mut retained) {
        assert_eq!(store.remove(TopicName::new(&name).unwrap()), Some(value));
    }
    assert_eq!(store.node_count(), 1);
});
