//! Model-based tests: random operation sequences on the trees, checked against a plain list
//! scanned with `matches`, and validation/matching checked against naive reference versions.
//!
//! Levels come from a small alphabet so that filters share prefixes, collide, and exercise `$`
//! names, `$share`, `+`, `#` and empty levels.

use std::collections::BTreeMap;

use mqtt_topic::{
    matches, validate_filter, validate_name, Match, RetainedStore, Subscription, SubscriptionTree,
    TopicFilter, TopicName,
};
use proptest::prelude::*;

const NAME_LEVELS: &[&str] = &["a", "b", "", "$s", "$share", "g"];
const FILTER_LEVELS: &[&str] = &["a", "b", "", "$s", "$share", "g", "+"];

fn name_strategy() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(NAME_LEVELS), 1..5)
        .prop_map(|levels| levels.join("/"))
        // A single empty level is the empty string, which is not a name.
        .prop_map(|s| if s.is_empty() { "/".to_owned() } else { s })
}

fn filter_strategy() -> impl Strategy<Value = String> {
    (
        prop::collection::vec(prop::sample::select(FILTER_LEVELS), 0..4),
        any::<bool>(),
    )
        .prop_map(|(mut levels, hash)| {
            if hash || levels.is_empty() {
                levels.push("#");
            }
            let s = levels.join("/");
            if s.is_empty() {
                "/".to_owned()
            } else {
                s
            }
        })
}

/// A subscription as the model stores it: group `None` is a plain filter (matched literally,
/// even when it starts with `$share`), `Some(g)` is `$share/{g}/{filter}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Sub {
    group: Option<String>,
    filter: String,
}

impl Sub {
    fn full(&self) -> String {
        match &self.group {
            Some(g) => format!("$share/{g}/{}", self.filter),
            None => self.filter.clone(),
        }
    }
}

/// Builds the crate's `Subscription` from the model's: shared ones through `Subscription::parse`
/// (which must accept them), plain ones as 3.1.1 would, so `$share/..` stays literal.
fn subscription<'a>(sub: &Sub, full: &'a str) -> Subscription<'a> {
    match &sub.group {
        Some(_) => {
            let parsed = Subscription::parse(full).expect("generated shared filter is valid");
            assert!(matches!(parsed, Subscription::Shared(_)));
            parsed
        }
        None => Subscription::Plain(TopicFilter::new(full).expect("generated filter is valid")),
    }
}

fn sub_strategy() -> impl Strategy<Value = Sub> {
    (
        prop::option::weighted(0.3, prop::sample::select(&["g", "h", "$s"][..])),
        filter_strategy(),
    )
        .prop_map(|(group, filter)| Sub {
            group: group.map(str::to_owned),
            filter,
        })
}

#[derive(Debug, Clone)]
enum TreeOp {
    Insert(Sub, u8),
    Remove(Sub, u8),
    Get(Sub, u8),
    Match(String),
}

fn tree_op() -> impl Strategy<Value = TreeOp> {
    prop_oneof![
        4 => (sub_strategy(), 0..4u8).prop_map(|(s, k)| TreeOp::Insert(s, k)),
        2 => (sub_strategy(), 0..4u8).prop_map(|(s, k)| TreeOp::Remove(s, k)),
        1 => (sub_strategy(), 0..4u8).prop_map(|(s, k)| TreeOp::Get(s, k)),
        4 => name_strategy().prop_map(TreeOp::Match),
    ]
}

/// What a match reports, in a comparable form: plain `(key, value)` pairs and shared groups
/// `(group, members)`, each sorted.
type Outcome = (Vec<(u8, u32)>, Vec<(String, Vec<(u8, u32)>)>);

fn tree_outcome(tree: &SubscriptionTree<u8, u32>, name: TopicName<'_>) -> Outcome {
    let (mut plain, mut shared) = (Vec::new(), Vec::new());
    tree.for_each_match(name, |m| match m {
        Match::Plain { key, value } => plain.push((*key, *value)),
        Match::Shared(g) => {
            assert_eq!(g.len(), g.iter().len());
            assert!(!g.is_empty());
            shared.push((
                g.name().to_owned(),
                g.iter().map(|(k, v)| (*k, *v)).collect(),
            ))
        }
    });
    plain.sort();
    shared.sort();
    (plain, shared)
}

fn model_outcome(model: &BTreeMap<(Sub, u8), u32>, name: TopicName<'_>) -> Outcome {
    let mut plain = Vec::new();
    let mut groups: BTreeMap<(String, String), Vec<(u8, u32)>> = BTreeMap::new();
    for ((sub, key), value) in model {
        let filter = TopicFilter::new(&sub.filter).unwrap();
        if !matches(filter, name) {
            continue;
        }
        match &sub.group {
            None => plain.push((*key, *value)),
            Some(g) => groups
                .entry((g.clone(), sub.filter.clone()))
                .or_default()
                .push((*key, *value)),
        }
    }
    plain.sort();
    let mut shared: Vec<_> = groups
        .into_iter()
        .map(|((g, _), mut members)| {
            members.sort();
            (g, members)
        })
        .collect();
    shared.sort();
    (plain, shared)
}

#[derive(Debug, Clone)]
enum RetainedOp {
    Insert(String),
    Remove(String),
    Get(String),
    Lookup(String),
}

fn retained_op() -> impl Strategy<Value = RetainedOp> {
    prop_oneof![
        4 => name_strategy().prop_map(RetainedOp::Insert),
        2 => name_strategy().prop_map(RetainedOp::Remove),
        1 => name_strategy().prop_map(RetainedOp::Get),
        4 => filter_strategy().prop_map(RetainedOp::Lookup),
    ]
}

/// A reference validator written level by level, independent of the byte scan.
fn naive_filter_ok(s: &str) -> bool {
    let levels: Vec<&str> = s.split('/').collect();
    !s.is_empty()
        && s.len() <= 65_535
        && !s.contains('\0')
        && levels.iter().enumerate().all(|(i, l)| {
            (!l.contains('#') || (*l == "#" && i == levels.len() - 1))
                && (!l.contains('+') || *l == "+")
        })
}

/// A reference matcher by recursion on level slices, independent of `matches`.
fn naive_match(filter: &[&str], name: &[&str]) -> bool {
    match (filter.split_first(), name.split_first()) {
        (Some((&"#", _)), _) => true,
        (Some((&"+", f)), Some((_, n))) => naive_match(f, n),
        (Some((f0, f)), Some((n0, n))) => f0 == n0 && naive_match(f, n),
        (None, None) => true,
        _ => false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn subscription_tree_agrees_with_linear_scan(ops in prop::collection::vec(tree_op(), 1..60)) {
        let mut tree: SubscriptionTree<u8, u32> = SubscriptionTree::new();
        let mut model: BTreeMap<(Sub, u8), u32> = BTreeMap::new();
        for (i, op) in ops.into_iter().enumerate() {
            let value = i as u32;
            match op {
                TreeOp::Insert(sub, key) => {
                    let full = sub.full();
                    let got = tree.insert(subscription(&sub, &full), key, value);
                    prop_assert_eq!(got, model.insert((sub, key), value));
                }
                TreeOp::Remove(sub, key) => {
                    let full = sub.full();
                    let got = tree.remove(subscription(&sub, &full), &key);
                    prop_assert_eq!(got, model.remove(&(sub, key)));
                }
                TreeOp::Get(sub, key) => {
                    let full = sub.full();
                    let got = tree.get(subscription(&sub, &full), &key).copied();
                    prop_assert_eq!(got, model.get(&(sub, key)).copied());
                }
                TreeOp::Match(name) => {
                    let name = TopicName::new(&name).unwrap();
                    prop_assert_eq!(tree_outcome(&tree, name), model_outcome(&model, name));
                }
            }
            prop_assert_eq!(tree.len(), model.len());
        }
        // Removing everything must prune back to the bare root.
        for ((sub, key), value) in std::mem::take(&mut model) {
            let full = sub.full();
            prop_assert_eq!(tree.remove(subscription(&sub, &full), &key), Some(value));
        }
        prop_assert!(tree.is_empty());
        prop_assert_eq!(tree.node_count(), 1);
    }

    #[test]
    fn retained_store_agrees_with_linear_scan(ops in prop::collection::vec(retained_op(), 1..60)) {
        let mut store: RetainedStore<u32> = RetainedStore::new();
        let mut model: BTreeMap<String, u32> = BTreeMap::new();
        for (i, op) in ops.into_iter().enumerate() {
            let value = i as u32;
            match op {
                RetainedOp::Insert(name) => {
                    let got = store.insert(TopicName::new(&name).unwrap(), value);
                    prop_assert_eq!(got, model.insert(name, value));
                }
                RetainedOp::Remove(name) => {
                    let got = store.remove(TopicName::new(&name).unwrap());
                    prop_assert_eq!(got, model.remove(&name));
                }
                RetainedOp::Get(name) => {
                    let got = store.get(TopicName::new(&name).unwrap()).copied();
                    prop_assert_eq!(got, model.get(&name).copied());
                }
                RetainedOp::Lookup(filter) => {
                    let filter = TopicFilter::new(&filter).unwrap();
                    let mut got = Vec::new();
                    store.for_each_match(filter, |n, v| got.push((n.as_str().to_owned(), *v)));
                    got.sort();
                    let want: Vec<(String, u32)> = model
                        .iter()
                        .filter(|(n, _)| matches(filter, TopicName::new(n).unwrap()))
                        .map(|(n, v)| (n.clone(), *v))
                        .collect();
                    prop_assert_eq!(got, want);
                }
            }
            prop_assert_eq!(store.len(), model.len());
        }
        for (name, value) in std::mem::take(&mut model) {
            prop_assert_eq!(store.remove(TopicName::new(&name).unwrap()), Some(value));
        }
        prop_assert_eq!(store.node_count(), 1);
    }

    #[test]
    fn matches_agrees_with_recursive_reference(filter in filter_strategy(), name in name_strategy()) {
        let f = TopicFilter::new(&filter).unwrap();
        let n = TopicName::new(&name).unwrap();
        let levels_f: Vec<&str> = filter.split('/').collect();
        let levels_n: Vec<&str> = name.split('/').collect();
        // [MQTT-4.7.2-1] applied on top of the plain level rules.
        let dollar_blocked = name.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#'));
        prop_assert_eq!(matches(f, n), !dollar_blocked && naive_match(&levels_f, &levels_n));
    }

    #[test]
    fn validation_agrees_with_reference(s in "[ab/+#\u{0}$é]{0,40}") {
        prop_assert_eq!(validate_filter(&s).is_ok(), naive_filter_ok(&s));
        let name_ok = !s.is_empty() && !s.contains(['+', '#', '\0']);
        prop_assert_eq!(validate_name(&s).is_ok(), name_ok);
    }

    #[test]
    fn long_names_validate_like_reference(prefix in "[a/]{0,100}", bad in prop::option::of("[+#\u{0}]"), suffix in "[a/é]{0,100}") {
        // Exercises the 32-byte block scan at every alignment, with and without a bad byte.
        let s = format!("{prefix}{}{suffix}", bad.clone().unwrap_or_default());
        let err = validate_name(&s).err();
        match bad {
            None if s.is_empty() => prop_assert_eq!(err, Some(mqtt_topic::Error::Empty)),
            None => prop_assert_eq!(err, None),
            Some(b) => {
                let at = prefix.len();
                let want = if b == "\0" {
                    mqtt_topic::Error::NullCharacter { at }
                } else {
                    mqtt_topic::Error::WildcardInName { at }
                };
                prop_assert_eq!(err, Some(want));
            }
        }
    }
}
