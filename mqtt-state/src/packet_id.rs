use alloc::vec::Vec;

use mqtt_codec::PacketId;

/// Hands out packet identifiers for PUBLISH, SUBSCRIBE and UNSUBSCRIBE, never one still in
/// flight.
///
/// Identifiers are tried in order from where the last one was taken, so a free one is found
/// after skipping only those in use: O(1) amortised. The set in use is a sorted vector sized
/// for the connection's in-flight limit, so it never reallocates in steady state and costs a
/// few bytes per in-flight packet rather than an 8 KiB bitmap per connection. It is reserved
/// when the first identifier is taken, so a connection that never sends a QoS 1/2 message
/// holds none of it.
///
/// ```
/// use mqtt_state::PacketIdAllocator;
/// let mut ids = PacketIdAllocator::with_capacity(2);
/// let a = ids.allocate().unwrap();
/// let b = ids.allocate().unwrap();
/// assert_ne!(a, b);
/// ids.release(a);
/// assert!(!ids.is_in_use(a));
/// ```
#[derive(Debug, Clone)]
pub struct PacketIdAllocator {
    /// The next identifier to try.
    next: u16,
    /// How many identifiers to reserve room for at the first one.
    capacity: u16,
    /// Identifiers in use, sorted.
    in_use: Vec<u16>,
}

// The reservation is not part of the value, as a `Vec`'s capacity is not.
impl PartialEq for PacketIdAllocator {
    fn eq(&self, other: &Self) -> bool {
        self.next == other.next && self.in_use == other.in_use
    }
}

impl Eq for PacketIdAllocator {}

impl Default for PacketIdAllocator {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl PacketIdAllocator {
    /// An allocator that can hold `capacity` identifiers without reallocating (room for
    /// them is reserved when the first one is taken).
    pub fn with_capacity(capacity: usize) -> Self {
        Self {
            next: 1,
            capacity: u16::try_from(capacity).unwrap_or(u16::MAX),
            in_use: Vec::new(),
        }
    }

    /// Holds nothing and reserves nothing: what a connection without QoS 1/2 traffic reads.
    pub(crate) const EMPTY: Self = Self {
        next: 1,
        capacity: 0,
        in_use: Vec::new(),
    };

    /// The identifier `allocate` tries first.
    pub(crate) fn next_to_try(&self) -> u16 {
        self.next
    }

    /// Continues the sequence of an allocator this one replaces, so that dropping an idle
    /// connection's allocator does not change which identifiers it hands out.
    pub(crate) fn resume_at(&mut self, next: u16) {
        self.next = next.max(1);
    }

    fn insert(&mut self, pos: usize, id: u16) {
        if self.in_use.capacity() == 0 {
            self.in_use.reserve_exact(usize::from(self.capacity));
        }
        self.in_use.insert(pos, id);
    }

    /// A free identifier, marked in use; `None` when all 65,535 are in flight, which the
    /// caller reports as back-pressure.
    pub fn allocate(&mut self) -> Option<PacketId> {
        if self.in_use.len() >= usize::from(u16::MAX) {
            return None;
        }
        // Sequential ids usually land past the end of the sorted set, so the common case is
        // a push; after a wrap the search skips the few long-lived ones.
        loop {
            let id = self.next;
            self.next = if id == u16::MAX { 1 } else { id + 1 };
            if let Err(pos) = self.in_use.binary_search(&id) {
                self.insert(pos, id);
                return PacketId::new(id);
            }
        }
    }

    /// Marks `id` in use (restoring a session); `false` if it already was.
    pub fn claim(&mut self, id: PacketId) -> bool {
        match self.in_use.binary_search(&id.get()) {
            Ok(_) => false,
            Err(pos) => {
                self.insert(pos, id.get());
                true
            }
        }
    }

    /// Frees `id`; `false` if it was not in use.
    pub fn release(&mut self, id: PacketId) -> bool {
        match self.in_use.binary_search(&id.get()) {
            Ok(pos) => {
                self.in_use.remove(pos);
                true
            }
            Err(_) => false,
        }
    }

    /// Whether `id` is in flight.
    pub fn is_in_use(&self, id: PacketId) -> bool {
        self.in_use.binary_search(&id.get()).is_ok()
    }

    /// How many identifiers are in flight.
    pub fn in_use(&self) -> usize {
        self.in_use.len()
    }

    /// Frees every identifier.
    pub fn clear(&mut self) {
        self.in_use.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_hands_out_an_id_in_flight() {
        let mut ids = PacketIdAllocator::with_capacity(4);
        let held = ids.allocate().unwrap();
        // Walk all the way round: the held id is skipped every time.
        for _ in 0..3 * 65_535 {
            let id = ids.allocate().unwrap();
            assert_ne!(id, held);
            assert!(ids.release(id));
        }
        assert!(ids.is_in_use(held));
    }

    #[test]
    fn exhaustion_is_reported_not_spun_on() {
        let mut ids = PacketIdAllocator::default();
        for _ in 0..65_535 {
            assert!(ids.allocate().is_some());
        }
        assert_eq!(ids.allocate(), None);
        let id = PacketId::new(777).unwrap();
        assert!(ids.release(id));
        assert_eq!(ids.allocate(), Some(id));
    }

    #[test]
    fn claim_and_release_report_their_effect() {
        let mut ids = PacketIdAllocator::default();
        let id = PacketId::new(5).unwrap();
        assert!(ids.claim(id));
        assert!(!ids.claim(id));
        assert!(ids.release(id));
        assert!(!ids.release(id));
    }

    #[test]
    fn steady_state_does_not_grow() {
        let mut ids = PacketIdAllocator::with_capacity(8);
        assert_eq!(ids.in_use.capacity(), 0, "reserved before use");
        let id = ids.allocate().unwrap();
        ids.release(id);
        let cap = ids.in_use.capacity();
        assert!(cap >= 8);
        for _ in 0..100_000 {
            let a = ids.allocate().unwrap();
            let b = ids.allocate().unwrap();
            ids.release(a);
            ids.release(b);
        }
        assert_eq!(ids.in_use.capacity(), cap);
    }
}
