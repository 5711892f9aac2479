use crate::{TopicFilter, TopicName};

/// A fixed-capacity set of up to `N` filters with a value each, for small devices without an
/// allocator that subscribe to a handful of filters and route incoming PUBLISH packets.
///
/// Matching is a linear scan with [`matches()`](crate::matches): for a few dozen filters that is
/// as fast as a tree and needs no heap. Filters are borrowed (typically `&'static str`
/// constants or strings in the device's configuration).
///
/// ```
/// use mqtt_topic::{FilterSet, TopicFilter, TopicName};
///
/// #[derive(Debug, PartialEq)]
/// enum Handler { Config, Command }
///
/// let mut set: FilterSet<'static, Handler, 4> = FilterSet::new();
/// set.insert(TopicFilter::new("dev/42/config/#")?, Handler::Config).ok();
/// set.insert(TopicFilter::new("dev/+/cmd")?, Handler::Command).ok();
///
/// let mut hit = None;
/// set.for_each_match(TopicName::new("dev/42/cmd")?, |_, h| hit = Some(h));
/// assert_eq!(hit, Some(&Handler::Command));
/// # Ok::<(), mqtt_topic::Error>(())
/// ```
pub struct FilterSet<'a, V, const N: usize> {
    entries: heapless::Vec<(TopicFilter<'a>, V), N>,
}

impl<V, const N: usize> Default for FilterSet<'_, V, N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<V: core::fmt::Debug, const N: usize> core::fmt::Debug for FilterSet<'_, V, N> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_map()
            .entries(self.entries.iter().map(|(k, v)| (k, v)))
            .finish()
    }
}

impl<'a, V, const N: usize> FilterSet<'a, V, N> {
    /// An empty set.
    pub const fn new() -> Self {
        Self {
            entries: heapless::Vec::new(),
        }
    }

    /// Adds `filter` with `value`, or replaces the value of an equal filter and returns the old
    /// one. When the set is full and `filter` is new, gives `value` back as `Err`.
    pub fn insert(&mut self, filter: TopicFilter<'a>, value: V) -> Result<Option<V>, V> {
        if let Some((_, v)) = self.entries.iter_mut().find(|(f, _)| *f == filter) {
            return Ok(Some(core::mem::replace(v, value)));
        }
        self.entries.push((filter, value)).map_err(|(_, v)| v)?;
        Ok(None)
    }

    /// Removes `filter` and returns its value.
    pub fn remove(&mut self, filter: TopicFilter<'_>) -> Option<V> {
        let i = self
            .entries
            .iter()
            .position(|(f, _)| f.as_str() == filter.as_str())?;
        Some(self.entries.swap_remove(i).1)
    }

    /// The value of `filter`.
    pub fn get(&self, filter: TopicFilter<'_>) -> Option<&V> {
        self.entries
            .iter()
            .find(|(f, _)| f.as_str() == filter.as_str())
            .map(|(_, v)| v)
    }

    /// Calls `f` with every filter that matches `name`, and its value.
    pub fn for_each_match<'s>(
        &'s self,
        name: TopicName<'_>,
        mut f: impl FnMut(TopicFilter<'a>, &'s V),
    ) {
        for (filter, value) in &self.entries {
            if filter.matches(name) {
                f(*filter, value);
            }
        }
    }

    /// The filters that match `name`, with their values.
    pub fn matching<'s>(
        &'s self,
        name: TopicName<'s>,
    ) -> impl Iterator<Item = (TopicFilter<'a>, &'s V)> + 's {
        self.entries
            .iter()
            .filter(move |(f, _)| f.matches(name))
            .map(|(f, v)| (*f, v))
    }

    /// All filters and values.
    pub fn iter(&self) -> impl Iterator<Item = (TopicFilter<'a>, &V)> {
        self.entries.iter().map(|(f, v)| (*f, v))
    }

    /// The number of filters.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The capacity `N`.
    pub fn capacity(&self) -> usize {
        N
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(s: &str) -> TopicFilter<'_> {
        TopicFilter::new(s).unwrap()
    }

    #[test]
    fn insert_replace_full_remove() {
        let mut set: FilterSet<'_, u8, 2> = FilterSet::new();
        assert_eq!(set.insert(f("a/+"), 1), Ok(None));
        assert_eq!(set.insert(f("a/+"), 2), Ok(Some(1)));
        assert_eq!(set.insert(f("#"), 3), Ok(None));
        assert_eq!(set.insert(f("b"), 4), Err(4), "full");
        assert_eq!((set.len(), set.capacity()), (2, 2));
        assert_eq!(set.get(f("a/+")), Some(&2));
        assert_eq!(set.remove(f("a/+")), Some(2));
        assert_eq!(set.remove(f("a/+")), None);
        assert_eq!(set.insert(f("b"), 4), Ok(None));
        assert_eq!(set.iter().count(), 2);
    }

    #[test]
    fn mqtt_4_7_2_1_filter_set_applies_dollar_rule() {
        let mut set: FilterSet<'_, u8, 4> = FilterSet::new();
        set.insert(f("#"), 1).unwrap();
        set.insert(f("$SYS/#"), 2).unwrap();
        set.insert(f("+/+"), 3).unwrap();
        let name = TopicName::new("$SYS/x").unwrap();
        let mut hits: heapless::Vec<u8, 4> = heapless::Vec::new();
        set.for_each_match(name, |_, v| hits.push(*v).unwrap());
        assert_eq!(hits.as_slice(), [2]);
        let name = TopicName::new("a/b").unwrap();
        let got: heapless::Vec<u8, 4> = set.matching(name).map(|(_, v)| *v).collect();
        assert_eq!(got.as_slice(), [1, 3]);
    }
}
