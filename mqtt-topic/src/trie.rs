//! The level-by-level tree shared by [`SubscriptionTree`](crate::SubscriptionTree) and
//! [`RetainedStore`](crate::RetainedStore).
//!
//! Nodes live in one `Vec` and refer to each other by `u32` index: half the size of a pointer,
//! one allocation for all nodes instead of one per node, and freed slots are reused through a
//! free list. A node stands for a filter (or name) prefix; its label is stored once, as the key
//! in its parent's child map. `+` and `#` children get their own slots so matching never
//! compares them as strings.

use alloc::boxed::Box;
use alloc::collections::BTreeMap;
use alloc::vec::Vec;
use core::mem::size_of;

/// Index of a node in the arena.
pub(crate) type Idx = u32;
/// "No such child".
pub(crate) const NONE: Idx = Idx::MAX;
/// The root stands for the empty prefix; it is never freed.
pub(crate) const ROOT: Idx = 0;

/// Above this many children a node switches from a sorted `Vec` to a `BTreeMap`, so that
/// inserting into a very wide node (100,000 device ids under one parent) is not a quadratic
/// `memmove`. Below [`NARROW`] it switches back; the gap avoids flapping.
const WIDE: usize = 64;
const NARROW: usize = 16;

/// What a node carries besides its children.
pub(crate) trait Payload: Default {
    /// An empty payload on a childless node lets the node be pruned.
    fn is_empty(&self) -> bool;
    /// Heap bytes owned by the payload (for `memory_usage`).
    fn heap_bytes(&self) -> usize;
}

/// Exact-label children, looked up by the level string.
enum Children {
    /// Sorted by label; binary search. Most nodes have a handful of children.
    Small(Vec<(Box<str>, Idx)>),
    /// Wide nodes.
    Wide(BTreeMap<Box<str>, Idx>),
}

impl Children {
    fn get(&self, label: &str) -> Option<Idx> {
        match self {
            Self::Small(v) => v
                .binary_search_by(|(l, _)| (**l).cmp(label))
                .ok()
                .map(|i| v[i].1),
            Self::Wide(m) => m.get(label).copied(),
        }
    }

    fn insert(&mut self, label: &str, idx: Idx) {
        match self {
            Self::Small(v) => {
                if let Err(i) = v.binary_search_by(|(l, _)| (**l).cmp(label)) {
                    if v.capacity() == 0 {
                        // Most nodes that get a child get only one (a device's own level
                        // above its leaf): room for one, not the four `Vec` would reserve.
                        v.reserve_exact(1);
                    }
                    v.insert(i, (label.into(), idx));
                    if v.len() > WIDE {
                        *self = Self::Wide(core::mem::take(v).into_iter().collect());
                    }
                }
            }
            Self::Wide(m) => {
                m.insert(label.into(), idx);
            }
        }
    }

    fn remove(&mut self, label: &str) {
        match self {
            Self::Small(v) => {
                if let Ok(i) = v.binary_search_by(|(l, _)| (**l).cmp(label)) {
                    v.remove(i);
                    if v.is_empty() {
                        // An emptied Vec still owns its buffer; leaf-to-be nodes are common.
                        *v = Vec::new();
                    }
                }
            }
            Self::Wide(m) => {
                m.remove(label);
                if m.len() < NARROW {
                    *self = Self::Small(core::mem::take(m).into_iter().collect());
                }
            }
        }
    }

    fn is_empty(&self) -> bool {
        match self {
            Self::Small(v) => v.is_empty(),
            Self::Wide(m) => m.is_empty(),
        }
    }

    /// The first child whose label sorts after `after` (the first child for `None`), so a
    /// walk can keep one cursor per level instead of pushing every child at once.
    fn next_after(&self, after: Option<&str>) -> Option<(&str, Idx)> {
        match self {
            Self::Small(v) => {
                let i = match after {
                    None => 0,
                    Some(a) => match v.binary_search_by(|(l, _)| (**l).cmp(a)) {
                        Ok(i) => i + 1,
                        Err(i) => i,
                    },
                };
                v.get(i).map(|(l, idx)| (&**l, *idx))
            }
            Self::Wide(m) => {
                use core::ops::Bound::{Excluded, Unbounded};
                let mut range = match after {
                    None => m.range::<str, _>((Unbounded, Unbounded)),
                    Some(a) => m.range::<str, _>((Excluded(a), Unbounded)),
                };
                range.next().map(|(l, idx)| (&**l, *idx))
            }
        }
    }

    fn heap_bytes(&self) -> usize {
        let entry = size_of::<(Box<str>, Idx)>();
        match self {
            Self::Small(v) => v.capacity() * entry + v.iter().map(|(l, _)| l.len()).sum::<usize>(),
            // B-tree nodes hold up to 11 entries and are on average about 2/3 full; plus the
            // per-node header. An estimate: the exact layout is private to `alloc`.
            Self::Wide(m) => m.len() * entry * 3 / 2 + m.keys().map(|l| l.len()).sum::<usize>(),
        }
    }
}

/// One level of a filter or name.
pub(crate) struct Node<P> {
    /// Needed to prune upwards on remove without keeping the path.
    parent: Idx,
    plus: Idx,
    hash: Idx,
    children: Children,
    pub(crate) payload: P,
}

impl<P: Payload> Node<P> {
    fn new(parent: Idx) -> Self {
        Self {
            parent,
            plus: NONE,
            hash: NONE,
            children: Children::Small(Vec::new()),
            payload: P::default(),
        }
    }

    /// The child for one level of a filter: `+` and `#` have dedicated slots.
    pub(crate) fn child(&self, level: &str) -> Idx {
        match level {
            "+" => self.plus,
            "#" => self.hash,
            _ => self.children.get(level).unwrap_or(NONE),
        }
    }

    /// The exact-label child, for walking by a topic name (where `+` and `#` are literal
    /// bytes that cannot occur).
    #[inline]
    pub(crate) fn exact(&self, label: &str) -> Idx {
        self.children.get(label).unwrap_or(NONE)
    }

    pub(crate) fn plus(&self) -> Idx {
        self.plus
    }

    pub(crate) fn hash(&self) -> Idx {
        self.hash
    }

    /// The exact-label child after `after` in label order; see `Children::next_after`.
    #[inline]
    pub(crate) fn next_exact_after(&self, after: Option<&str>) -> Option<(&str, Idx)> {
        self.children.next_after(after)
    }

    fn is_prunable(&self) -> bool {
        self.plus == NONE
            && self.hash == NONE
            && self.children.is_empty()
            && self.payload.is_empty()
    }
}

/// The arena.
pub(crate) struct Trie<P> {
    nodes: Vec<Node<P>>,
    free: Vec<Idx>,
}

impl<P: Payload> Trie<P> {
    pub(crate) fn new() -> Self {
        Self {
            nodes: alloc::vec![Node::new(NONE)],
            free: Vec::new(),
        }
    }

    #[inline]
    pub(crate) fn node(&self, idx: Idx) -> &Node<P> {
        &self.nodes[idx as usize]
    }

    #[inline]
    pub(crate) fn node_mut(&mut self, idx: Idx) -> &mut Node<P> {
        &mut self.nodes[idx as usize]
    }

    /// The node for the path `levels`, if it exists.
    pub(crate) fn find<'s>(&self, levels: impl Iterator<Item = &'s str>) -> Option<Idx> {
        let mut cur = ROOT;
        for level in levels {
            cur = self.node(cur).child(level);
            if cur == NONE {
                return None;
            }
        }
        Some(cur)
    }

    /// The node for the path `levels`, created (with its missing ancestors) if needed.
    ///
    /// # Panics
    ///
    /// If the tree would hold more than `u32::MAX - 1` nodes (hundreds of GiB), like
    /// `Vec::push` panics when its capacity overflows.
    pub(crate) fn find_or_create<'s>(&mut self, levels: impl Iterator<Item = &'s str>) -> Idx {
        let mut cur = ROOT;
        for level in levels {
            let next = self.node(cur).child(level);
            cur = if next == NONE {
                let new = self.alloc(cur);
                let parent = self.node_mut(cur);
                match level {
                    "+" => parent.plus = new,
                    "#" => parent.hash = new,
                    _ => parent.children.insert(level, new),
                }
                new
            } else {
                next
            };
        }
        cur
    }

    fn alloc(&mut self, parent: Idx) -> Idx {
        if let Some(idx) = self.free.pop() {
            self.nodes[idx as usize] = Node::new(parent);
            return idx;
        }
        let idx = Idx::try_from(self.nodes.len())
            .ok()
            .filter(|&i| i != NONE)
            .expect("subscription tree exceeds u32::MAX nodes");
        self.nodes.push(Node::new(parent));
        idx
    }

    /// Frees `idx` and then its ancestors for as long as they are empty. `path` is the filter
    /// or name that leads to `idx`: its levels, read backwards, are the labels to detach.
    pub(crate) fn prune(&mut self, mut idx: Idx, path: &str) {
        let mut labels = path.rsplit('/');
        while idx != ROOT && self.node(idx).is_prunable() {
            let Some(label) = labels.next() else { return };
            let parent_idx = self.node(idx).parent;
            let parent = self.node_mut(parent_idx);
            match label {
                "+" => parent.plus = NONE,
                "#" => parent.hash = NONE,
                _ => parent.children.remove(label),
            }
            // Drop the node's buffers now; the slot itself is reused by a later insert.
            self.nodes[idx as usize] = Node::new(NONE);
            self.free.push(idx);
            idx = parent_idx;
        }
    }

    /// Nodes in use, root included.
    pub(crate) fn node_count(&self) -> usize {
        self.nodes.len() - self.free.len()
    }

    /// Approximate heap bytes: the arena, the child maps and labels, and the payloads.
    pub(crate) fn heap_bytes(&self) -> usize {
        let arena = self.nodes.capacity() * size_of::<Node<P>>();
        let free = self.free.capacity() * size_of::<Idx>();
        let per_node: usize = self
            .nodes
            .iter()
            .map(|n| n.children.heap_bytes() + n.payload.heap_bytes())
            .sum();
        arena + free + per_node
    }

    pub(crate) fn clear(&mut self) {
        *self = Self::new();
    }
}

/// A LIFO stack that lives on the call stack until it holds more than `N` items, and only then
/// allocates. Matching uses it so that a match against a normal-depth tree allocates nothing,
/// while a topic with thousands of levels cannot overflow the call stack (no recursion).
pub(crate) struct Stack<T, const N: usize> {
    inline: [T; N],
    len: usize,
    spill: Vec<T>,
}

impl<T: Copy + Default, const N: usize> Stack<T, N> {
    pub(crate) fn new() -> Self {
        Self {
            inline: [T::default(); N],
            len: 0,
            spill: Vec::new(),
        }
    }

    #[inline]
    pub(crate) fn push(&mut self, item: T) {
        // The inline part stays full while anything is spilled, so pops stay LIFO.
        if self.len < N {
            self.inline[self.len] = item;
            self.len += 1;
        } else {
            self.spill.push(item);
        }
    }

    #[inline]
    pub(crate) fn pop(&mut self) -> Option<T> {
        if let Some(item) = self.spill.pop() {
            return Some(item);
        }
        self.len = self.len.checked_sub(1)?;
        Some(self.inline[self.len])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl Payload for bool {
        fn is_empty(&self) -> bool {
            !*self
        }
        fn heap_bytes(&self) -> usize {
            0
        }
    }

    #[test]
    fn stack_is_lifo_across_spill() {
        let mut s: Stack<u32, 4> = Stack::new();
        for i in 0..10 {
            s.push(i);
        }
        assert_eq!(s.pop(), Some(9));
        s.push(100);
        let rest: Vec<u32> = core::iter::from_fn(|| s.pop()).collect();
        assert_eq!(rest, [100, 8, 7, 6, 5, 4, 3, 2, 1, 0]);
        assert_eq!(s.pop(), None);
    }

    #[test]
    fn wide_nodes_switch_representation_and_back() {
        let mut t: Trie<bool> = Trie::new();
        let labels: Vec<alloc::string::String> = (0..200).map(|i| alloc::format!("d{i}")).collect();
        for l in &labels {
            let idx = t.find_or_create(core::iter::once(l.as_str()));
            t.node_mut(idx).payload = true;
        }
        assert!(matches!(t.node(ROOT).children, Children::Wide(_)));
        for l in &labels {
            assert!(t.find(core::iter::once(l.as_str())).is_some());
        }
        for l in &labels[..195] {
            let idx = t.find(core::iter::once(l.as_str())).unwrap();
            t.node_mut(idx).payload = false;
            t.prune(idx, l);
        }
        assert!(matches!(t.node(ROOT).children, Children::Small(_)));
        assert_eq!(t.node_count(), 6);
        for l in &labels[195..] {
            assert!(t.find(core::iter::once(l.as_str())).is_some());
        }
    }

    #[test]
    fn prune_stops_at_non_empty_ancestor_and_reuses_slots() {
        let mut t: Trie<bool> = Trie::new();
        let ab = t.find_or_create("a/b".split('/'));
        t.node_mut(ab).payload = true;
        let abcd = t.find_or_create("a/b/+/#".split('/'));
        t.node_mut(abcd).payload = true;
        assert_eq!(t.node_count(), 5);
        t.node_mut(abcd).payload = false;
        t.prune(abcd, "a/b/+/#");
        assert_eq!(t.node_count(), 3, "a/b keeps its payload");
        assert_eq!(t.find("a/b/+".split('/')), None);
        let again = t.find_or_create("a/x".split('/'));
        assert!(again < 5, "freed slot reused");
    }
}
