//! Deadlines of every connection and offline session in one 4-ary min-heap, so that finding
//! the next one and running what is due cost a logarithm, not a scan. Four children per
//! node halve the depth of a binary heap, and the four sit in one 64-byte cache line: at a
//! million connections, popping a due deadline misses the cache half as often
//! (`cargo bench -p mqtt-broker --bench scale -- handle_timeout_one_due`).
//!
//! Invalidation is lazy: an entry is never removed when its deadline moves. Each owner
//! keeps the deadline it last armed (`armed`); an entry whose deadline is not its owner's
//! armed one is stale and skipped when it comes up. A deadline that moves later (keep
//! alive, after every packet) leaves the earlier entry in place: when it comes up, the
//! owner finds nothing due and arms its real deadline. Only a deadline that moves earlier
//! pushes an entry, so the heap holds about one entry per owner.

use alloc::vec::Vec;

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

/// Children per node.
const ARITY: usize = 4;

/// Min-heap of deadlines: `heap[0]` is the earliest; the children of `i` are
/// `ARITY * i + 1 ..= ARITY * i + ARITY`.
#[derive(Default)]
pub(crate) struct TimerQueue {
    heap: Vec<Entry>,
}

impl Entry {
    fn key(&self) -> TimerKey {
        if self.index & SESSION_BIT != 0 {
            TimerKey::Session(self.index & !SESSION_BIT)
        } else {
            TimerKey::Conn(ConnectionId {
                index: self.index,
                generation: self.generation,
            })
        }
    }
}

impl TimerQueue {
    pub(crate) fn push(&mut self, at: Instant, key: TimerKey) {
        let (index, generation) = match key {
            TimerKey::Conn(id) => (id.index, id.generation),
            TimerKey::Session(s) => (s | SESSION_BIT, 0),
        };
        self.heap.push(Entry {
            at,
            index,
            generation,
        });
        self.sift_up(self.heap.len() - 1);
    }

    /// The earliest deadline (possibly a stale entry's: never later than the real one).
    pub(crate) fn peek(&self) -> Option<Instant> {
        self.heap.first().map(|e| e.at)
    }

    /// Takes the earliest entry if it is due at `now`.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, TimerKey)> {
        if self.peek()? > now {
            return None;
        }
        let last = self.heap.pop()?;
        let e = if self.heap.is_empty() {
            last
        } else {
            let top = core::mem::replace(&mut self.heap[0], last);
            self.sift_down(0);
            top
        };
        Some((e.at, e.key()))
    }

    /// Moves the entry at `i` up to its place (a hole moves instead of swapping).
    fn sift_up(&mut self, mut i: usize) {
        let e = self.heap[i];
        while i > 0 {
            let parent = (i - 1) / ARITY;
            if self.heap[parent] <= e {
                break;
            }
            self.heap[i] = self.heap[parent];
            i = parent;
        }
        self.heap[i] = e;
    }

    /// Moves the entry at `i` down to its place.
    fn sift_down(&mut self, mut i: usize) {
        let n = self.heap.len();
        let e = self.heap[i];
        loop {
            let first = ARITY * i + 1;
            if first >= n {
                break;
            }
            let end = (first + ARITY).min(n);
            let mut min = first;
            for c in first + 1..end {
                if self.heap[c] < self.heap[min] {
                    min = c;
                }
            }
            if self.heap[min] >= e {
                break;
            }
            self.heap[i] = self.heap[min];
            i = min;
        }
        self.heap[i] = e;
    }

    pub(crate) fn len(&self) -> usize {
        self.heap.len()
    }

    /// Keeps only the entries `valid` says are armed: for when stale entries pile up
    /// (deadlines that keep moving earlier), so that the heap stays proportional to its
    /// owners.
    pub(crate) fn retain(&mut self, mut valid: impl FnMut(Instant, TimerKey) -> bool) {
        self.heap.retain(|e| valid(e.at, e.key()));
        // Heapify, bottom up: every node with children, last first.
        if self.heap.len() > 1 {
            for i in (0..=(self.heap.len() - 2) / ARITY).rev() {
                self.sift_down(i);
            }
        }
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

    /// Against a sorted model: pushes, pops at moving times and a `retain` in between, with
    /// duplicate deadlines.
    #[test]
    fn pops_in_order_against_a_model() {
        let mut q = TimerQueue::default();
        let mut model: Vec<(u64, u32)> = Vec::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut now = 0;
        for round in 0..2000u32 {
            for _ in 0..rand() % 5 {
                let at = now + rand() % 1000;
                let s = round * 8 + (rand() % 8) as u32;
                q.push(Instant::from_millis(at), TimerKey::Session(s));
                model.push((at, s));
            }
            if round == 1000 {
                q.retain(|_, k| matches!(k, TimerKey::Session(s) if s % 3 != 0));
                model.retain(|&(_, s)| s % 3 != 0);
            }
            now += rand() % 300;
            model.sort_unstable();
            let due = model.iter().take_while(|&&(at, _)| at <= now).count();
            for (at, s) in model.drain(..due) {
                assert_eq!(
                    q.pop_due(Instant::from_millis(now)),
                    Some((Instant::from_millis(at), TimerKey::Session(s)))
                );
            }
            assert_eq!(q.pop_due(Instant::from_millis(now)), None);
            assert_eq!(
                q.peek(),
                model.first().map(|&(at, _)| Instant::from_millis(at))
            );
            assert_eq!(q.len(), model.len());
        }
    }
}
