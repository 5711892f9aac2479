//! Deadlines of every connection and offline session in one binary heap, so that finding
//! the next one and running what is due cost a logarithm, not a scan.
//!
//! Invalidation is lazy: an entry is never removed when its deadline moves. Each owner
//! keeps the deadline it last armed (`armed`); an entry whose deadline is not its owner's
//! armed one is stale and skipped when it comes up. A deadline that moves later (keep
//! alive, after every packet) leaves the earlier entry in place: when it comes up, the
//! owner finds nothing due and arms its real deadline. Only a deadline that moves earlier
//! pushes an entry, so the heap holds about one entry per owner.

use alloc::collections::BinaryHeap;
use alloc::vec::Vec;
use core::cmp::Reverse;

use mqtt_state::Instant;

use crate::ConnectionId;

/// The deadline an owner holds when it has no entry armed.
pub(crate) const NOT_ARMED: Instant = Instant::from_millis(u64::MAX);

/// Whose deadline an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TimerKey {
    /// A connection's machine: CONNECT timeout, keep alive.
    Conn(ConnectionId),
    /// An offline session: its expiry or its delayed will.
    Session(u32),
}

/// 16 bytes: deadline, then the owner (the top bit of `index` says session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    at: Instant,
    index: u32,
    generation: u32,
}

const SESSION_BIT: u32 = 1 << 31;

/// Min-heap of deadlines.
#[derive(Default)]
pub(crate) struct TimerQueue {
    heap: BinaryHeap<Reverse<Entry>>,
}

impl TimerQueue {
    pub(crate) fn push(&mut self, at: Instant, key: TimerKey) {
        let (index, generation) = match key {
            TimerKey::Conn(id) => (id.index, id.generation),
            TimerKey::Session(s) => (s | SESSION_BIT, 0),
        };
        self.heap.push(Reverse(Entry {
            at,
            index,
            generation,
        }));
    }

    /// The earliest deadline (possibly a stale entry's: never later than the real one).
    pub(crate) fn peek(&self) -> Option<Instant> {
        self.heap.peek().map(|e| e.0.at)
    }

    /// Takes the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, TimerKey)> {
        if self.peek()? > now {
            return None;
        }
        let Reverse(e) = self.heap.pop()?;
        let key = if e.index & SESSION_BIT != 0 {
            TimerKey::Session(e.index & !SESSION_BIT)
        } else {
            TimerKey::Conn(ConnectionId {
                index: e.index,
                generation: e.generation,
            })
        };
        Some((e.at, key))
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keeps only the entries `valid` says are armed: for when stale entries pile up
    /// (deadlines that keep moving earlier), so that the heap stays proportional to its
    /// owners.
    pub(crate) fn retain(&mut self, mut valid: impl FnMut(Instant, TimerKey) -> bool) {
        let entries: Vec<Reverse<Entry>> = core::mem::take(&mut self.heap).into_vec();
        let kept: Vec<Reverse<Entry>> = entries
            .into_iter()
            .filter(|Reverse(e)| {
                let key = if e.index & SESSION_BIT != 0 {
                    TimerKey::Session(e.index & !SESSION_BIT)
                } else {
                    TimerKey::Conn(ConnectionId {
                        index: e.index,
                        generation: e.generation,
                    })
                };
                valid(e.at, key)
            })
            .collect();
        self.heap = BinaryHeap::from(kept);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_out_in_deadline_order_only_when_due() {
        let mut q = TimerQueue::default();
        let c = |i| {
            TimerKey::Conn(ConnectionId {
                index: i,
                generation: 7,
            })
        };
        q.push(Instant::from_millis(30), c(1));
        q.push(Instant::from_millis(10), TimerKey::Session(5));
        q.push(Instant::from_millis(20), c(2));
        assert_eq!(q.peek(), Some(Instant::from_millis(10)));
        assert_eq!(q.pop_due(Instant::from_millis(9)), None);
        let now = Instant::from_millis(25);
        assert_eq!(
            q.pop_due(now),
            Some((Instant::from_millis(10), TimerKey::Session(5)))
        );
        assert_eq!(q.pop_due(now), Some((Instant::from_millis(20), c(2))));
        assert_eq!(q.pop_due(now), None);
        q.retain(|_, k| k != c(1));
        assert_eq!(q.len(), 0);
    }
}
