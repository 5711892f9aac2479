use alloc::boxed::Box;
use core::fmt;
use core::mem::size_of;

use crate::trie::{Idx, Payload, Stack, Trie, NONE, ROOT};
use crate::{TopicFilter, TopicName};

/// Frames kept inline before a lookup allocates.
const INLINE_FRAMES: usize = 32;

/// A `pos` value meaning "everything below this node matches" (the rest of the filter is `#`).
/// Real positions are at most 65,536.
const ALL: usize = usize::MAX;

/// A step of [`RetainedStore::for_each_match`]'s walk.
#[derive(Clone, Copy)]
enum Frame<'t> {
    Visit(Idx, usize),
    Children {
        idx: Idx,
        next_pos: usize,
        after: Option<&'t str>,
        skip_dollar: bool,
    },
}

impl Default for Frame<'_> {
    fn default() -> Self {
        Frame::Visit(ROOT, 0)
    }
}

/// Retained messages (or anything else) keyed by topic name, with the reverse lookup a broker
/// needs on SUBSCRIBE: every stored name a filter matches.
///
/// Names are stored level by level like the filters of a
/// [`SubscriptionTree`](crate::SubscriptionTree), so `a/+/c` only walks the children of `a`
/// and then one node per child, rather than every stored name; only `#` visits a whole
/// subtree, because everything in it matches. The full name is kept beside the value so that
/// a lookup can hand it out without rebuilding it.
///
/// ```
/// use mqtt_topic::{RetainedStore, TopicFilter, TopicName};
///
/// let mut store = RetainedStore::new();
/// store.insert(TopicName::new("sport/tennis/score")?, "6-4");
/// store.insert(TopicName::new("sport/golf/score")?, "-3");
/// store.insert(TopicName::new("$SYS/uptime")?, "12s");
///
/// let mut hits = Vec::new();
/// store.for_each_match(TopicFilter::new("sport/+/score")?, |name, value| {
///     hits.push((name.as_str(), *value))
/// });
/// hits.sort();
/// assert_eq!(hits, [("sport/golf/score", "-3"), ("sport/tennis/score", "6-4")]);
///
/// // [MQTT-4.7.2-1] "#" does not reveal "$SYS/uptime".
/// let mut all = 0;
/// store.for_each_match(TopicFilter::new("#")?, |_, _| all += 1);
/// assert_eq!(all, 2);
///
/// // An empty retained payload deletes the retained message: the broker calls `remove`.
/// assert_eq!(store.remove(TopicName::new("sport/golf/score")?), Some("-3"));
/// # Ok::<(), mqtt_topic::Error>(())
/// ```
pub struct RetainedStore<V> {
    trie: Trie<Option<Box<Entry<V>>>>,
    len: usize,
}

/// Boxed so that the many interior nodes without a message pay one pointer, not a name and a
/// `V`.
struct Entry<V> {
    name: Box<str>,
    value: V,
}

impl<V> Payload for Option<Box<Entry<V>>> {
    fn is_empty(&self) -> bool {
        self.is_none()
    }

    fn heap_bytes(&self) -> usize {
        self.as_ref()
            .map_or(0, |e| size_of::<Entry<V>>() + e.name.len())
    }
}

impl<V> Default for RetainedStore<V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: fmt::Debug> fmt::Debug for RetainedStore<V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RetainedStore")
            .field("len", &self.len)
            .field("nodes", &self.trie.node_count())
            .finish_non_exhaustive()
    }
}

impl<V> RetainedStore<V> {
    /// An empty store.
    pub fn new() -> Self {
        Self {
            trie: Trie::new(),
            len: 0,
        }
    }

    /// Stores `value` under `name`; returns the value it replaced.
    ///
    /// # Panics
    ///
    /// Only if the store would exceed `u32::MAX - 1` nodes, which needs hundreds of GiB.
    pub fn insert(&mut self, name: TopicName<'_>, value: V) -> Option<V> {
        let idx = self.trie.find_or_create(name.levels());
        let slot = &mut self.trie.node_mut(idx).payload;
        match slot {
            Some(entry) => Some(core::mem::replace(&mut entry.value, value)),
            None => {
                *slot = Some(Box::new(Entry {
                    name: name.as_str().into(),
                    value,
                }));
                self.len += 1;
                None
            }
        }
    }

    /// Removes the value stored under `name`; prunes nodes left empty.
    pub fn remove(&mut self, name: TopicName<'_>) -> Option<V> {
        let idx = self.trie.find(name.levels())?;
        let entry = self.trie.node_mut(idx).payload.take()?;
        self.len -= 1;
        self.trie.prune(idx, name.as_str());
        Some(entry.value)
    }

    /// The value stored under `name`.
    pub fn get(&self, name: TopicName<'_>) -> Option<&V> {
        let idx = self.trie.find(name.levels())?;
        self.trie.node(idx).payload.as_ref().map(|e| &e.value)
    }

    /// The value stored under `name`, mutably.
    pub fn get_mut(&mut self, name: TopicName<'_>) -> Option<&mut V> {
        let idx = self.trie.find(name.levels())?;
        self.trie
            .node_mut(idx)
            .payload
            .as_mut()
            .map(|e| &mut e.value)
    }

    /// Calls `f` with every stored name that `filter` matches, and its value, by the rules of
    /// [`matches()`](crate::matches) (including [MQTT-4.7.2-1]: a filter starting with a
    /// wildcard skips names starting with `$`). The order is unspecified.
    ///
    /// For a shared subscription pass its inner filter; MQTT 5 says retained messages are not
    /// sent for shared subscriptions when they are established, which is the broker's call.
    pub fn for_each_match<'t, F>(&'t self, filter: TopicFilter<'_>, mut f: F)
    where
        F: FnMut(TopicName<'t>, &'t V),
    {
        let filter = filter.as_str();
        let len = filter.len();
        let mut emit = |idx: Idx| {
            if let Some(e) = &self.trie.node(idx).payload {
                f(TopicName::new_prevalidated(&e.name), &e.value);
            }
        };
        // Frames: `Visit` is a node reached with the filter levels before byte `pos` consumed,
        // or with `pos == ALL` when the rest of the filter is `#` and the whole subtree
        // matches. `Children` is a cursor over one node's exact children (for `+` and `#`),
        // advanced one child at a time so the stack grows with the depth of the tree, never
        // with its width: wide levels do not allocate.
        let mut stack: Stack<Frame<'t>, INLINE_FRAMES> = Stack::new();
        stack.push(Frame::Visit(ROOT, 0));
        while let Some(frame) = stack.pop() {
            let (idx, pos) = match frame {
                Frame::Visit(idx, pos) => (idx, pos),
                Frame::Children {
                    idx,
                    next_pos,
                    after,
                    skip_dollar,
                } => {
                    let node = self.trie.node(idx);
                    if let Some((label, child)) = node.next_exact_after(after) {
                        stack.push(Frame::Children {
                            idx,
                            next_pos,
                            after: Some(label),
                            skip_dollar,
                        });
                        // [MQTT-4.7.2-1] a wildcard first level skips names starting with '$'
                        if !(skip_dollar && label.starts_with('$')) {
                            stack.push(Frame::Visit(child, next_pos));
                        }
                    }
                    continue;
                }
            };
            let node = self.trie.node(idx);
            let children = |next_pos, skip_dollar| Frame::Children {
                idx,
                next_pos,
                after: None,
                skip_dollar,
            };
            if pos == ALL {
                emit(idx);
                stack.push(children(ALL, false));
                continue;
            }
            if pos > len {
                emit(idx);
                continue;
            }
            let end = filter[pos..].find('/').map_or(len, |i| pos + i);
            let skip_dollar = idx == ROOT;
            match &filter[pos..end] {
                "#" => {
                    // `prefix/#` matches `prefix` itself (the root is never a name).
                    emit(idx);
                    stack.push(children(ALL, skip_dollar));
                }
                "+" => stack.push(children(end + 1, skip_dollar)),
                level => {
                    let child = node.exact(level);
                    if child != NONE {
                        stack.push(Frame::Visit(child, end + 1));
                    }
                }
            }
        }
    }

    /// The number of stored names.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the store is empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Nodes in use, the root included.
    pub fn node_count(&self) -> usize {
        self.trie.node_count()
    }

    /// Approximate heap bytes owned by the store, as for
    /// [`SubscriptionTree::memory_usage`](crate::SubscriptionTree::memory_usage) (the heap
    /// data owned by each `V` is not counted).
    pub fn memory_usage(&self) -> usize {
        self.trie.heap_bytes()
    }

    /// Removes everything.
    pub fn clear(&mut self) {
        self.trie.clear();
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::string::String;
    use alloc::vec::Vec;

    fn store(names: &[&str]) -> RetainedStore<usize> {
        let mut s = RetainedStore::new();
        for (i, n) in names.iter().enumerate() {
            s.insert(TopicName::new(n).unwrap(), i);
        }
        s
    }

    fn lookup(s: &RetainedStore<usize>, filter: &str) -> Vec<String> {
        let mut out = Vec::new();
        s.for_each_match(TopicFilter::new(filter).unwrap(), |n, _| {
            out.push(n.as_str().into())
        });
        out.sort();
        out
    }

    const NAMES: &[&str] = &[
        "sport",
        "sport/tennis",
        "sport/tennis/player1",
        "sport/golf/player1",
        "sport/",
        "/sport",
        "$SYS/uptime",
        "$SYS",
        "a/$b",
    ];

    #[test]
    fn mqtt_4_7_1_1_hash_lookup_includes_parent() {
        let s = store(NAMES);
        assert_eq!(
            lookup(&s, "sport/#"),
            [
                "sport",
                "sport/",
                "sport/golf/player1",
                "sport/tennis",
                "sport/tennis/player1"
            ]
        );
        assert_eq!(
            lookup(&s, "sport/tennis/#"),
            ["sport/tennis", "sport/tennis/player1"]
        );
    }

    #[test]
    fn mqtt_4_7_1_2_plus_lookup_one_level_including_empty() {
        let s = store(NAMES);
        assert_eq!(lookup(&s, "sport/+"), ["sport/", "sport/tennis"]);
        assert_eq!(
            lookup(&s, "+/+/player1"),
            ["sport/golf/player1", "sport/tennis/player1"]
        );
        assert_eq!(lookup(&s, "+/sport"), ["/sport"]);
        assert_eq!(lookup(&s, "+/$b"), ["a/$b"]);
    }

    #[test]
    fn mqtt_4_7_2_1_dollar_names_hidden_from_leading_wildcards() {
        let s = store(NAMES);
        let all = lookup(&s, "#");
        assert_eq!(all.len(), NAMES.len() - 2);
        assert!(all.iter().all(|n| !n.starts_with('$')));
        assert_eq!(lookup(&s, "+"), ["sport"]);
        assert_eq!(lookup(&s, "+/uptime"), Vec::<String>::new());
        assert_eq!(lookup(&s, "$SYS/#"), ["$SYS", "$SYS/uptime"]);
        assert_eq!(lookup(&s, "$SYS/+"), ["$SYS/uptime"]);
        assert_eq!(
            lookup(&s, "a/#"),
            ["a/$b"],
            "'$' below the first level is ordinary"
        );
    }

    #[test]
    fn mqtt_4_7_3_4_lookup_without_normalisation() {
        let s = store(NAMES);
        assert!(lookup(&s, "Sport").is_empty());
        assert!(lookup(&s, "sport/tennis/").is_empty());
        assert_eq!(lookup(&s, "sport/tennis"), ["sport/tennis"]);
    }

    #[test]
    fn insert_replace_get_remove_and_prune() {
        let mut s = store(NAMES);
        assert_eq!(s.len(), NAMES.len());
        let n = |x| TopicName::new(x).unwrap();
        assert_eq!(s.insert(n("sport"), 100), Some(0));
        assert_eq!(s.len(), NAMES.len());
        assert_eq!(s.get(n("sport")), Some(&100));
        *s.get_mut(n("sport")).unwrap() += 1;
        assert_eq!(s.get(n("sport")), Some(&101));
        assert_eq!(s.get(n("sport/golf")), None, "interior node holds no value");
        assert_eq!(s.remove(n("sport/golf")), None);
        assert_eq!(s.get(n("nope")), None);
        let nodes = s.node_count();
        assert_eq!(s.remove(n("sport/golf/player1")), Some(3));
        assert_eq!(s.node_count(), nodes - 2, "golf and player1 pruned");
        for name in NAMES {
            s.remove(n(name));
        }
        assert!(s.is_empty());
        assert_eq!(s.node_count(), 1);
        s.insert(n("x"), 1);
        assert!(s.memory_usage() > 0);
        s.clear();
        assert_eq!((s.len(), s.node_count()), (0, 1));
    }

    #[test]
    fn wide_level_lookup() {
        // Enough children to use the B-tree representation.
        let names: Vec<String> = (0..500).map(|i| alloc::format!("d/{i}/t")).collect();
        let mut s = RetainedStore::new();
        for (i, name) in names.iter().enumerate() {
            s.insert(TopicName::new(name).unwrap(), i);
        }
        let mut count = 0;
        s.for_each_match(TopicFilter::new("d/+/t").unwrap(), |_, _| count += 1);
        assert_eq!(count, 500);
        assert_eq!(lookup(&s, "d/42/+"), ["d/42/t"]);
    }
}
