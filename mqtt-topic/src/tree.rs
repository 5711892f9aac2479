use alloc::boxed::Box;
use alloc::vec::Vec;
use core::fmt;
use core::mem::size_of;

use crate::trie::{Idx, Payload, Stack, Trie, NONE, ROOT};
use crate::{Subscription, TopicName};

/// Stack frames kept inline by a match before it allocates: enough for names of up to 31
/// levels, far beyond what real topics use.
const INLINE_FRAMES: usize = 32;

/// The subscriptions of a broker, level by level, for matching a PUBLISH topic against all of
/// them at once.
///
/// `K` identifies a subscriber (a client id, or a session handle such as `usize`); `V` is what
/// the broker keeps per subscription (granted QoS, No Local, subscription identifier...). Each
/// subscriber holds at most one subscription per filter, as MQTT requires: subscribing again
/// replaces the options ([`insert`](Self::insert) returns the old ones).
///
/// Shared subscriptions (`$share/{group}/{filter}`) are stored per filter and group, and a
/// match reports the whole group once ([`Match::Shared`]) so the broker can pick one member.
/// A client may hold a plain and a shared subscription with the same filter: they are
/// separate entries.
///
/// Matching visits one path per topic level (plus the `+` branches), not every filter: its
/// cost grows with the number of *matching* filters and the depth of the topic, and hardly
/// with the size of the tree. It never recurses and allocates nothing unless the topic has
/// more than 31 levels.
///
/// ```
/// use mqtt_topic::{Match, Subscription, SubscriptionTree, TopicName};
///
/// let mut tree = SubscriptionTree::new();
/// tree.insert(Subscription::parse("sport/+/player1")?, "alice", 1u8);
/// tree.insert(Subscription::parse("sport/#")?, "bob", 0);
/// tree.insert(Subscription::parse("$share/stats/sport/#")?, "worker-1", 1);
/// tree.insert(Subscription::parse("$share/stats/sport/#")?, "worker-2", 1);
/// // Re-subscribing replaces the options and returns the old ones.
/// assert_eq!(tree.insert(Subscription::parse("sport/#")?, "bob", 2), Some(0));
///
/// let mut plain = Vec::new();
/// let mut groups = Vec::new();
/// tree.for_each_match(TopicName::new("sport/tennis/player1")?, |m| match m {
///     Match::Plain { key, value } => plain.push((*key, *value)),
///     Match::Shared(group) => groups.push((group.name(), group.len())),
/// });
/// plain.sort();
/// assert_eq!(plain, [("alice", 1), ("bob", 2)]);
/// assert_eq!(groups, [("stats", 2)]);
///
/// assert_eq!(tree.remove(Subscription::parse("sport/+/player1")?, &"alice"), Some(1));
/// assert_eq!(tree.len(), 3);
/// # Ok::<(), mqtt_topic::Error>(())
/// ```
pub struct SubscriptionTree<K, V> {
    trie: Trie<Subscribers<K, V>>,
    len: usize,
}

/// Everything subscribed with one filter.
struct Subscribers<K, V> {
    /// Sorted by key: re-subscribe and unsubscribe are a binary search, and a filter with a
    /// single subscriber (the common case) costs one small allocation.
    plain: Vec<(K, V)>,
    /// Groups are few per filter, so a linear scan by name.
    shared: Vec<Group<K, V>>,
}

struct Group<K, V> {
    name: Box<str>,
    /// Sorted by key.
    members: Vec<(K, V)>,
}

impl<K, V> Default for Subscribers<K, V> {
    fn default() -> Self {
        Self {
            plain: Vec::new(),
            shared: Vec::new(),
        }
    }
}

impl<K, V> Payload for Subscribers<K, V> {
    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.shared.is_empty()
    }

    fn heap_bytes(&self) -> usize {
        let groups: usize = self
            .shared
            .iter()
            .map(|g| g.name.len() + g.members.capacity() * size_of::<(K, V)>())
            .sum();
        self.plain.capacity() * size_of::<(K, V)>()
            + self.shared.capacity() * size_of::<Group<K, V>>()
            + groups
    }
}

/// A subscription that matched a topic name, passed to the callback of
/// [`SubscriptionTree::for_each_match`].
#[derive(Debug)]
pub enum Match<'t, K, V> {
    /// A plain subscription: deliver to this subscriber.
    Plain {
        /// The subscriber.
        key: &'t K,
        /// The subscription's options.
        value: &'t V,
    },
    /// A shared-subscription group whose filter matched: deliver to one of its members.
    Shared(SharedGroup<'t, K, V>),
}

impl<K, V> Clone for Match<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for Match<'_, K, V> {}

/// The members of a shared-subscription group (never empty), sorted by key.
///
/// The same group name under two different filters is two groups: `$share/g/a/#` and
/// `$share/g/a/+` are separate shared subscriptions, and a topic matching both reports both.
pub struct SharedGroup<'t, K, V> {
    name: &'t str,
    members: &'t [(K, V)],
}

impl<K, V> Clone for SharedGroup<'_, K, V> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<K, V> Copy for SharedGroup<'_, K, V> {}

impl<K: fmt::Debug, V: fmt::Debug> fmt::Debug for SharedGroup<'_, K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SharedGroup")
            .field("name", &self.name)
            .field("members", &self.members)
            .finish()
    }
}

impl<'t, K, V> SharedGroup<'t, K, V> {
    /// The ShareName.
    pub fn name(&self) -> &'t str {
        self.name
    }
    /// The number of members (at least one).
    pub fn len(&self) -> usize {
        self.members.len()
    }
    /// Always `false`: empty groups are removed. Present for symmetry with [`len`](Self::len).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
    /// The member at `index`, e.g. `hash(publish) % len()` or a round-robin counter.
    pub fn get(&self, index: usize) -> Option<(&'t K, &'t V)> {
        self.members.get(index).map(|(k, v)| (k, v))
    }
    /// The members, sorted by key.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = (&'t K, &'t V)> + 't {
        self.members.iter().map(|(k, v)| (k, v))
    }
}

impl<K: Ord, V> Default for SubscriptionTree<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Ord + fmt::Debug, V: fmt::Debug> fmt::Debug for SubscriptionTree<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SubscriptionTree")
            .field("len", &self.len)
            .field("nodes", &self.trie.node_count())
            .finish_non_exhaustive()
    }
}

impl<K: Ord, V> SubscriptionTree<K, V> {
    /// An empty tree.
    pub fn new() -> Self {
        Self {
            trie: Trie::new(),
            len: 0,
        }
    }

    /// Adds `key`'s subscription, or replaces its options if `key` already holds this exact
    /// subscription; returns the options it replaced.
    ///
    /// # Panics
    ///
    /// Only if the tree would exceed `u32::MAX - 1` nodes, which needs hundreds of GiB.
    pub fn insert(&mut self, subscription: Subscription<'_>, key: K, value: V) -> Option<V> {
        let filter = subscription.filter().as_str();
        let idx = self.trie.find_or_create(filter.split('/'));
        let subs = &mut self.trie.node_mut(idx).payload;
        let list = match subscription.group() {
            None => &mut subs.plain,
            Some(group) => match subs.shared.iter().position(|g| &*g.name == group) {
                Some(i) => &mut subs.shared[i].members,
                None => {
                    subs.shared.push(Group {
                        name: group.into(),
                        members: Vec::new(),
                    });
                    let last = subs.shared.len() - 1;
                    &mut subs.shared[last].members
                }
            },
        };
        match list.binary_search_by(|(k, _)| k.cmp(&key)) {
            // Re-subscribe replaces the options (MQTT 3.1.1 section 3.8.4, MQTT 5 section
            // 3.8.4): one subscription per client and filter.
            Ok(i) => Some(core::mem::replace(&mut list[i].1, value)),
            Err(i) => {
                if list.capacity() == 0 {
                    // Most filters have one subscriber (a device's own topic): room for one,
                    // not the four `Vec` would reserve.
                    list.reserve_exact(1);
                }
                list.insert(i, (key, value));
                self.len += 1;
                None
            }
        }
    }

    /// Removes `key`'s subscription and returns its options; prunes nodes left empty.
    pub fn remove(&mut self, subscription: Subscription<'_>, key: &K) -> Option<V> {
        let filter = subscription.filter().as_str();
        let idx = self.trie.find(filter.split('/'))?;
        let subs = &mut self.trie.node_mut(idx).payload;
        let value = match subscription.group() {
            None => remove_sorted(&mut subs.plain, key)?,
            Some(group) => {
                let g = subs.shared.iter().position(|g| &*g.name == group)?;
                let value = remove_sorted(&mut subs.shared[g].members, key)?;
                if subs.shared[g].members.is_empty() {
                    subs.shared.swap_remove(g);
                    if subs.shared.is_empty() {
                        subs.shared = Vec::new();
                    }
                }
                value
            }
        };
        self.len -= 1;
        self.trie.prune(idx, filter);
        Some(value)
    }

    /// The options of `key`'s subscription.
    pub fn get(&self, subscription: Subscription<'_>, key: &K) -> Option<&V> {
        let idx = self.trie.find(subscription.filter().levels())?;
        let subs = &self.trie.node(idx).payload;
        let list = match subscription.group() {
            None => &subs.plain,
            Some(group) => &subs.shared.iter().find(|g| &*g.name == group)?.members,
        };
        let i = list.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        Some(&list[i].1)
    }

    /// The options of `key`'s subscription, mutably.
    pub fn get_mut(&mut self, subscription: Subscription<'_>, key: &K) -> Option<&mut V> {
        let idx = self.trie.find(subscription.filter().levels())?;
        let subs = &mut self.trie.node_mut(idx).payload;
        let list = match subscription.group() {
            None => &mut subs.plain,
            Some(group) => &mut subs.shared.iter_mut().find(|g| &*g.name == group)?.members,
        };
        let i = list.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
        Some(&mut list[i].1)
    }

    /// Calls `f` once for every plain subscription whose filter matches `name`, and once for
    /// every shared group whose filter matches, by the rules of [`matches()`](crate::matches).
    ///
    /// The order of the calls is unspecified. A subscriber whose several filters match is
    /// reported once per filter: MQTT 5 lets the server deliver once with the highest QoS,
    /// which the broker decides.
    pub fn for_each_match<'t, F>(&'t self, name: TopicName<'_>, mut f: F)
    where
        F: FnMut(Match<'t, K, V>),
    {
        let name = name.as_str();
        let len = name.len();
        // [MQTT-4.7.2-1] the root's `+` and `#` children (filters starting with a wildcard)
        // are skipped for names starting with '$'.
        let dollar = name.starts_with('$');
        // A frame is a node reached with the levels before byte `pos` consumed; `pos > len`
        // means all levels are consumed. Each node is reached at most once: it stands for a
        // filter prefix with a fixed number of levels.
        let mut stack: Stack<(Idx, usize), INLINE_FRAMES> = Stack::new();
        stack.push((ROOT, 0));
        while let Some((idx, pos)) = stack.pop() {
            let node = self.trie.node(idx);
            let wildcards_allowed = !(dollar && idx == ROOT);
            // `prefix/#` matches the prefix itself and everything below it.
            if node.hash() != NONE && wildcards_allowed {
                emit(&self.trie.node(node.hash()).payload, &mut f);
            }
            if pos > len {
                emit(&node.payload, &mut f);
                continue;
            }
            let end = name[pos..].find('/').map_or(len, |i| pos + i);
            if node.plus() != NONE && wildcards_allowed {
                stack.push((node.plus(), end + 1));
            }
            let exact = node.exact(&name[pos..end]);
            if exact != NONE {
                stack.push((exact, end + 1));
            }
        }
    }

    /// The number of subscriptions (plain ones plus shared-group members).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the tree holds no subscription.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Nodes in use, the root included: one per distinct filter prefix.
    pub fn node_count(&self) -> usize {
        self.trie.node_count()
    }

    /// Approximate heap bytes owned by the tree: the node arena, child maps, labels and
    /// subscriber lists, counted by capacity. It counts `size_of::<K>()` and
    /// `size_of::<V>()` but not what `K` or `V` own on the heap, nor the allocator's own
    /// overhead per allocation.
    pub fn memory_usage(&self) -> usize {
        self.trie.heap_bytes()
    }

    /// Removes every subscription and frees the nodes.
    pub fn clear(&mut self) {
        self.trie.clear();
        self.len = 0;
    }
}

fn emit<'t, K, V>(subs: &'t Subscribers<K, V>, f: &mut impl FnMut(Match<'t, K, V>)) {
    for (key, value) in &subs.plain {
        f(Match::Plain { key, value });
    }
    for group in &subs.shared {
        f(Match::Shared(SharedGroup {
            name: &group.name,
            members: &group.members,
        }));
    }
}

fn remove_sorted<K: Ord, V>(list: &mut Vec<(K, V)>, key: &K) -> Option<V> {
    let i = list.binary_search_by(|(k, _)| k.cmp(key)).ok()?;
    let (_, value) = list.remove(i);
    if list.is_empty() {
        // Give the buffer back: an unsubscribed filter may keep its node for its children.
        *list = Vec::new();
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec;

    fn sub(s: &str) -> Subscription<'_> {
        Subscription::parse(s).unwrap()
    }

    /// Sorted `(filter-or-group, key)` list of matches for `name`.
    fn matched(tree: &SubscriptionTree<u32, &'static str>, name: &str) -> Vec<String> {
        let mut out = Vec::new();
        tree.for_each_match(TopicName::new(name).unwrap(), |m| match m {
            Match::Plain { key, value } => out.push(alloc::format!("{value}:{key}")),
            Match::Shared(g) => {
                let keys: Vec<String> = g.iter().map(|(k, _)| alloc::format!("{k}")).collect();
                out.push(alloc::format!("{}:[{}]", g.name(), keys.join(",")));
            }
        });
        out.sort();
        out
    }

    fn tree_of(filters: &[(&'static str, u32)]) -> SubscriptionTree<u32, &'static str> {
        let mut t = SubscriptionTree::new();
        for &(f, k) in filters {
            t.insert(sub(f), k, f);
        }
        t
    }

    #[test]
    fn mqtt_4_7_1_1_hash_matches_parent_level() {
        let t = tree_of(&[("sport/#", 1), ("sport/tennis/#", 2)]);
        assert_eq!(matched(&t, "sport"), ["sport/#:1"]);
        assert_eq!(
            matched(&t, "sport/tennis"),
            ["sport/#:1", "sport/tennis/#:2"]
        );
        assert_eq!(
            matched(&t, "sport/tennis/x/y"),
            ["sport/#:1", "sport/tennis/#:2"]
        );
        assert!(matched(&t, "sports").is_empty());
    }

    #[test]
    fn mqtt_4_7_1_2_plus_fills_level_including_empty() {
        let t = tree_of(&[("a/+/c", 1), ("+", 2), ("+/+", 3)]);
        assert_eq!(matched(&t, "a//c"), ["a/+/c:1"]);
        assert_eq!(matched(&t, "a/b/c"), ["a/+/c:1"]);
        assert_eq!(matched(&t, "x"), ["+:2"]);
        assert_eq!(matched(&t, "/"), ["+/+:3"]);
        assert!(matched(&t, "a/b/c/d").is_empty());
    }

    #[test]
    fn mqtt_4_7_2_1_dollar_not_matched_by_wildcard() {
        let t = tree_of(&[
            ("#", 1),
            ("+/x", 2),
            ("$SYS/#", 3),
            ("$SYS/+", 4),
            ("+/#", 5),
            ("$share/g/#", 6),
        ]);
        assert_eq!(matched(&t, "$SYS/x"), ["$SYS/#:3", "$SYS/+:4"]);
        assert_eq!(matched(&t, "$SYS"), ["$SYS/#:3"]);
        assert_eq!(matched(&t, "a/x"), ["#:1", "+/#:5", "+/x:2", "g:[6]"]);
    }

    #[test]
    fn mqtt_4_7_3_4_no_normalisation_in_tree() {
        let t = tree_of(&[("Sport", 1), ("a/b", 2), ("caf\u{e9}", 3)]);
        assert!(matched(&t, "sport").is_empty());
        assert!(matched(&t, "a/b/").is_empty());
        assert!(matched(&t, "a//b").is_empty());
        assert!(matched(&t, "cafe\u{301}").is_empty());
        assert_eq!(matched(&t, "caf\u{e9}"), ["caf\u{e9}:3"]);
    }

    #[test]
    fn mqtt_4_8_2_2_shared_group_reported_once_with_all_members() {
        let mut t = SubscriptionTree::new();
        for k in [3, 1, 2] {
            t.insert(sub("$share/g/a/+"), k, "a/+");
        }
        t.insert(sub("$share/h/a/+"), 9, "a/+");
        t.insert(sub("$share/g/a/#"), 4, "a/#");
        t.insert(sub("a/+"), 1, "a/+");
        assert_eq!(matched(&t, "a/b"), ["a/+:1", "g:[1,2,3]", "g:[4]", "h:[9]"]);
        let mut groups = 0;
        t.for_each_match(TopicName::new("a/b").unwrap(), |m| {
            if let Match::Shared(g) = m {
                groups += 1;
                assert!(!g.is_empty());
                assert_eq!(g.get(g.len()), None);
                assert!(g.get(0).is_some());
            }
        });
        assert_eq!(groups, 3);
        assert_eq!(t.len(), 6);
        assert_eq!(t.remove(sub("$share/g/a/+"), &2), Some("a/+"));
        assert_eq!(matched(&t, "a/b"), ["a/+:1", "g:[1,3]", "g:[4]", "h:[9]"]);
        assert_eq!(t.remove(sub("$share/h/a/+"), &9), Some("a/+"));
        assert_eq!(t.remove(sub("$share/h/a/+"), &9), None);
        assert_eq!(matched(&t, "a/b"), ["a/+:1", "g:[1,3]", "g:[4]"]);
    }

    #[test]
    fn resubscribe_replaces_and_returns_old_options() {
        let mut t: SubscriptionTree<&str, u8> = SubscriptionTree::new();
        assert_eq!(t.insert(sub("a/b"), "c1", 0), None);
        assert_eq!(t.insert(sub("a/b"), "c1", 2), Some(0));
        assert_eq!(t.len(), 1);
        assert_eq!(t.get(sub("a/b"), &"c1"), Some(&2));
        *t.get_mut(sub("a/b"), &"c1").unwrap() = 1;
        assert_eq!(t.get(sub("a/b"), &"c1"), Some(&1));
        // A shared subscription to the same filter is a different subscription.
        assert_eq!(t.insert(sub("$share/g/a/b"), "c1", 0), None);
        assert_eq!(t.len(), 2);
        assert_eq!(t.get(sub("$share/g/a/b"), &"c1"), Some(&0));
        assert_eq!(t.get(sub("$share/x/a/b"), &"c1"), None);
        assert_eq!(t.get(sub("a/c"), &"c1"), None);
    }

    #[test]
    fn remove_prunes_empty_nodes_and_keeps_shared_prefixes() {
        let mut t: SubscriptionTree<u32, ()> = SubscriptionTree::new();
        assert_eq!(t.node_count(), 1);
        let empty = t.memory_usage();
        t.insert(sub("a/b/c/d"), 1, ());
        t.insert(sub("a/b/+/#"), 1, ());
        t.insert(sub("$share/g/a/b"), 1, ());
        assert_eq!(t.node_count(), 7);
        assert!(t.memory_usage() > empty);
        assert_eq!(
            t.remove(sub("a/b/c/d"), &2),
            None,
            "wrong key removes nothing"
        );
        assert_eq!(
            t.remove(sub("a/b/c/e"), &1),
            None,
            "absent filter removes nothing"
        );
        assert_eq!(t.node_count(), 7);
        assert_eq!(t.remove(sub("a/b/c/d"), &1), Some(()));
        assert_eq!(t.node_count(), 5);
        assert_eq!(t.remove(sub("a/b/+/#"), &1), Some(()));
        assert_eq!(t.node_count(), 3, "a/b still holds the shared group");
        assert_eq!(t.remove(sub("$share/g/a/b"), &1), Some(()));
        assert_eq!(t.node_count(), 1);
        assert!(t.is_empty());
        t.insert(sub("x"), 1, ());
        t.clear();
        assert_eq!((t.len(), t.node_count()), (0, 1));
    }

    #[test]
    fn deep_topics_do_not_recurse_or_overflow() {
        // 30,000 levels: far past the inline stack; must neither recurse nor misbehave.
        let deep = "/".repeat(30_000);
        let mut t: SubscriptionTree<u32, ()> = SubscriptionTree::new();
        t.insert(sub(&deep), 1, ());
        let plus_deep = vec!["+"; 30_001].join("/");
        t.insert(sub(&plus_deep), 2, ());
        t.insert(sub("#"), 3, ());
        let mut keys = Vec::new();
        t.for_each_match(TopicName::new(&deep).unwrap(), |m| {
            if let Match::Plain { key, .. } = m {
                keys.push(*key)
            }
        });
        keys.sort();
        assert_eq!(keys, [1, 2, 3]);
        assert_eq!(t.remove(sub(&deep), &1), Some(()));
        assert_eq!(t.remove(sub(&plus_deep), &2), Some(()));
        assert_eq!(t.node_count(), 2);
    }

    #[test]
    fn literal_share_filter_for_mqtt_3_1_1() {
        // A 3.1.1 server wraps the filter as Plain: "$share/g/a" is then a literal filter.
        let mut t: SubscriptionTree<u32, ()> = SubscriptionTree::new();
        let f = crate::TopicFilter::new("$share/g/a").unwrap();
        t.insert(Subscription::Plain(f), 1, ());
        let mut n = 0;
        t.for_each_match(TopicName::new("$share/g/a").unwrap(), |_| n += 1);
        t.for_each_match(TopicName::new("a").unwrap(), |_| n += 10);
        assert_eq!(n, 1);
    }
}
