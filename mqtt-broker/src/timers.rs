//! Deadlines of every connection and offline session in one hierarchical timer wheel, so
//! that arming a deadline costs the same at a million connections as at ten, and running
//! what is due costs a few steps per deadline, nothing per connection that has none.
//!
//! Eleven levels of 64 slots: a slot of level `l` spans `64^l` ms, so level 0 holds the
//! deadlines of the current 64 ms, level 1 those of the current 4 s, and so on up to the
//! whole `u64` range. A deadline goes into the lowest level whose span separates it from
//! the wheel's time (`elapsed`): one shift, one `Vec::push`. A binary or 4-ary heap pays
//! a logarithm per arming instead, and at a million entries each of its levels is a cache
//! miss: every CONNECT (whose first deadline is the latest in the heap and sifts to the
//! root) cost twice what it cost at a thousand connections. When a slot of level `l > 0`
//! comes due, its entries move down to the levels below (at most ten moves over a
//! deadline's life, each a sequential append); a level-0 slot holds one millisecond, so
//! its entries are due together. Each slot keeps the earliest deadline it holds, so
//! [`TimerQueue::peek`] is exact, as the heap's was: [`crate::Broker::poll_timeout`] never
//! wakes an adapter early for a slot that holds nothing due.
//!
//! Invalidation is lazy: an entry is never removed when its deadline moves. Each owner
//! keeps the deadline it last armed (`armed`); an entry whose deadline is not its owner's
//! armed one is stale and skipped when it comes up. A deadline that moves later (keep
//! alive, after every packet) leaves the earlier entry in place: when it comes up, the
//! owner finds nothing due and arms its real deadline. Only a deadline that moves earlier
//! pushes an entry, so the wheel holds about one entry per owner.

use alloc::boxed::Box;
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
    /// A bridge: its next dial, its remote leg's keep alive.
    Bridge(u32),
}

/// 16 bytes: deadline, then the owner (the top bit of `index` says session).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    at: u64,
    index: u32,
    generation: u32,
}

const SESSION_BIT: u32 = 1 << 31;
/// With `SESSION_BIT`: a bridge (session numbers stay below it).
const BRIDGE_TIMER_BIT: u32 = 1 << 30;

/// Bits of time per level: 64 slots, one `u64` of occupancy.
const BITS: u32 = 6;
const SLOTS: usize = 1 << BITS;
/// Enough levels for every `u64` deadline (`6 * 11 >= 64`).
const LEVELS: usize = 11;
/// A slot's buffer is kept for reuse after it empties up to this many entries; a larger
/// one (a burst of connections) is freed, so that a wheel does not hold on to its peak.
const KEEP_CAPACITY: usize = 32;

#[derive(Default)]
struct Slot {
    /// The earliest deadline in `entries` (`u64::MAX` when empty).
    min: u64,
    entries: Vec<Entry>,
}

/// The wheel. Invariant: every entry of level `l` agrees with `elapsed` on the bits above
/// level `l`'s and is at or after it, so that every entry of a lower level is earlier than
/// every entry of a higher one, and within a level slot order is time order. `elapsed`
/// moves only to the start of the earliest occupied slot, which keeps that true.
pub(crate) struct TimerQueue {
    /// The wheel's time, in ms: never later than the `now` of the last `pop_due`.
    elapsed: u64,
    /// Bit `s` of `occupied[l]`: slot `s` of level `l` has entries.
    occupied: [u64; LEVELS],
    /// `LEVELS * SLOTS` slots, level-major.
    slots: Box<[Slot]>,
    /// Deadlines armed in the wheel's past (before `elapsed`): rare, due at once.
    overdue: BinaryHeap<Reverse<Entry>>,
    len: usize,
}

impl Entry {
    fn key(&self) -> TimerKey {
        if self.index & (SESSION_BIT | BRIDGE_TIMER_BIT) == SESSION_BIT | BRIDGE_TIMER_BIT {
            TimerKey::Bridge(self.index & !(SESSION_BIT | BRIDGE_TIMER_BIT))
        } else if self.index & SESSION_BIT != 0 {
            TimerKey::Session(self.index & !SESSION_BIT)
        } else {
            TimerKey::Conn(ConnectionId {
                index: self.index,
                generation: self.generation,
            })
        }
    }
}

/// The level an entry at `at` belongs to, seen from `elapsed <= at`: that of the highest
/// bit in which they differ (level 0 when they differ only within one slot span).
fn level_of(elapsed: u64, at: u64) -> usize {
    let differ = (elapsed ^ at) | (SLOTS as u64 - 1);
    ((63 - differ.leading_zeros()) / BITS) as usize
}

impl TimerQueue {
    /// An empty wheel whose time starts at `now`.
    pub(crate) fn new(now: Instant) -> Self {
        Self {
            elapsed: now.as_millis(),
            occupied: [0; LEVELS],
            slots: (0..LEVELS * SLOTS)
                .map(|_| Slot {
                    min: u64::MAX,
                    entries: Vec::new(),
                })
                .collect(),
            overdue: BinaryHeap::new(),
            len: 0,
        }
    }

    pub(crate) fn push(&mut self, at: Instant, key: TimerKey) {
        let (index, generation) = match key {
            TimerKey::Conn(id) => (id.index, id.generation),
            TimerKey::Session(s) => (s | SESSION_BIT, 0),
            TimerKey::Bridge(b) => (b | SESSION_BIT | BRIDGE_TIMER_BIT, 0),
        };
        let e = Entry {
            at: at.as_millis(),
            index,
            generation,
        };
        self.len += 1;
        if e.at < self.elapsed {
            self.overdue.push(Reverse(e));
        } else {
            self.insert(e);
        }
    }

    fn insert(&mut self, e: Entry) {
        let level = level_of(self.elapsed, e.at);
        let s = ((e.at >> (BITS * level as u32)) as usize) & (SLOTS - 1);
        let slot = &mut self.slots[level * SLOTS + s];
        slot.min = slot.min.min(e.at);
        slot.entries.push(e);
        self.occupied[level] |= 1 << s;
    }

    /// The earliest occupied slot: `(level, slot)`.
    fn next_slot(&self) -> Option<(usize, usize)> {
        self.occupied
            .iter()
            .position(|&o| o != 0)
            .map(|l| (l, self.occupied[l].trailing_zeros() as usize))
    }

    /// When slot `s` of level `l` begins, on the wheel's current turn.
    fn slot_start(&self, l: usize, s: usize) -> u64 {
        let span = BITS * (l as u32 + 1);
        let base = if span >= 64 {
            0
        } else {
            self.elapsed & !((1u64 << span) - 1)
        };
        base | ((s as u64) << (BITS * l as u32))
    }

    /// The earliest deadline (possibly a stale entry's: never later than the real one).
    pub(crate) fn peek(&self) -> Option<Instant> {
        let wheel = self.next_slot().map(|(l, s)| self.slots[l * SLOTS + s].min);
        let overdue = self.overdue.peek().map(|e| e.0.at);
        match (wheel, overdue) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
        .map(Instant::from_millis)
    }

    /// Takes an entry that is due at `now`, if any. Entries come out in deadline order
    /// across calls, except that those armed in the wheel's past come first.
    pub(crate) fn pop_due(&mut self, now: Instant) -> Option<(Instant, TimerKey)> {
        let now = now.as_millis();
        if self.overdue.peek().is_some_and(|e| e.0.at <= now) {
            let e = self.overdue.pop()?.0;
            self.len -= 1;
            return Some((Instant::from_millis(e.at), e.key()));
        }
        loop {
            let (l, s) = self.next_slot()?;
            let i = l * SLOTS + s;
            if self.slots[i].min > now {
                return None;
            }
            // Never backwards: a `now` older than the wheel's time finds nothing here.
            self.elapsed = self.slot_start(l, s).max(self.elapsed);
            let slot = &mut self.slots[i];
            if l == 0 {
                // One millisecond: every entry of the slot is due.
                let e = slot.entries.pop()?;
                if slot.entries.is_empty() {
                    self.empty_slot(l, s, None);
                }
                self.len -= 1;
                return Some((Instant::from_millis(e.at), e.key()));
            }
            // Move the slot's entries down: each lands on a lower level, as it is at or
            // after the slot's start, the wheel's time now.
            let mut entries = core::mem::take(&mut slot.entries);
            self.empty_slot(l, s, None);
            for e in entries.drain(..) {
                // Never in the wheel's past (the slot starts at or after it); kept safe
                // anyway, as a past entry re-inserted here could land in this slot again.
                if e.at < self.elapsed {
                    self.overdue.push(Reverse(e));
                } else {
                    self.insert(e);
                }
            }
            self.empty_slot(l, s, Some(entries));
        }
    }

    /// Marks slot `s` of level `l` empty, keeping `buffer` (already empty) for its next
    /// entries if it is small.
    fn empty_slot(&mut self, l: usize, s: usize, buffer: Option<Vec<Entry>>) {
        self.occupied[l] &= !(1 << s);
        let slot = &mut self.slots[l * SLOTS + s];
        slot.min = u64::MAX;
        if let Some(buffer) = buffer {
            slot.entries = buffer;
        }
        if slot.entries.capacity() > KEEP_CAPACITY {
            slot.entries = Vec::new();
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Keeps only the entries `valid` says are armed: for when stale entries pile up
    /// (deadlines that keep moving earlier), so that the wheel stays proportional to its
    /// owners.
    pub(crate) fn retain(&mut self, mut valid: impl FnMut(Instant, TimerKey) -> bool) {
        let mut keep = |e: &Entry| valid(Instant::from_millis(e.at), e.key());
        let mut len = 0;
        for l in 0..LEVELS {
            let mut occupied = self.occupied[l];
            while occupied != 0 {
                let s = occupied.trailing_zeros() as usize;
                occupied &= occupied - 1;
                let slot = &mut self.slots[l * SLOTS + s];
                slot.entries.retain(&mut keep);
                slot.min = slot.entries.iter().map(|e| e.at).min().unwrap_or(u64::MAX);
                len += slot.entries.len();
                if slot.entries.is_empty() {
                    self.empty_slot(l, s, None);
                }
            }
        }
        self.overdue.retain(|e| keep(&e.0));
        self.len = len + self.overdue.len();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn session(s: u32) -> TimerKey {
        TimerKey::Session(s)
    }

    #[test]
    fn entries_come_out_in_deadline_order_only_when_due() {
        let mut q = TimerQueue::new(Instant::ZERO);
        let c = |i| {
            TimerKey::Conn(ConnectionId {
                index: i,
                generation: 7,
            })
        };
        q.push(Instant::from_millis(30), c(1));
        q.push(Instant::from_millis(10), session(5));
        q.push(Instant::from_millis(20), c(2));
        assert_eq!(q.peek(), Some(Instant::from_millis(10)));
        assert_eq!(q.pop_due(Instant::from_millis(9)), None);
        let now = Instant::from_millis(25);
        assert_eq!(q.pop_due(now), Some((Instant::from_millis(10), session(5))));
        assert_eq!(q.pop_due(now), Some((Instant::from_millis(20), c(2))));
        assert_eq!(q.pop_due(now), None);
        q.retain(|_, k| k != c(1));
        assert_eq!(q.len(), 0);
        assert_eq!(q.peek(), None);
    }

    /// A deadline far out is exact through every level it moves down, and one armed in
    /// the wheel's past (a `now` that ran ahead of it) is due at once.
    #[test]
    fn far_and_past_deadlines() {
        let start = 1_700_000_000_000;
        let mut q = TimerQueue::new(Instant::from_millis(start));
        let far = [start + 98_302_500, start + (1 << 40) + 3, u64::MAX - 1];
        for (i, &at) in far.iter().enumerate() {
            q.push(Instant::from_millis(at), session(i as u32));
        }
        for (i, &at) in far.iter().enumerate() {
            assert_eq!(q.peek(), Some(Instant::from_millis(at)));
            assert_eq!(q.pop_due(Instant::from_millis(at - 1)), None, "not early");
            assert_eq!(q.peek(), Some(Instant::from_millis(at)), "still exact");
            q.push(Instant::from_millis(at - 5), session(100 + i as u32));
            assert_eq!(
                q.pop_due(Instant::from_millis(at)),
                Some((Instant::from_millis(at - 5), session(100 + i as u32)))
            );
            assert_eq!(
                q.pop_due(Instant::from_millis(at)),
                Some((Instant::from_millis(at), session(i as u32)))
            );
            assert_eq!(q.pop_due(Instant::from_millis(at)), None);
        }
        assert_eq!(q.len(), 0);
    }

    /// Against a sorted model: pushes at every scale (same millisecond to months out),
    /// some in the wheel's past, pops at moving times, `retain` now and then, duplicate
    /// deadlines. Within one millisecond the order is free; across milliseconds entries
    /// come out in deadline order.
    #[test]
    fn pops_in_order_against_a_model() {
        let mut q = TimerQueue::new(Instant::from_millis(5));
        let mut model: Vec<(u64, u32)> = Vec::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut now = 5;
        let mut next_id = 0u32;
        // Ids armed in the wheel's past, which come out before the rest.
        let mut overdue = alloc::collections::BTreeSet::new();
        for round in 0..5_000u32 {
            for _ in 0..rand() % 5 {
                let scale = [1, 64, 5_000, 300_000, 1 << 33][(rand() % 5) as usize];
                // Some land in the wheel's past, a few others just before `now`.
                let at = if rand() % 16 == 0 {
                    q.elapsed.saturating_sub(rand() % 200)
                } else {
                    (now + rand() % scale).saturating_sub(rand() % 4)
                };
                let id = next_id;
                next_id += 1;
                if at < q.elapsed {
                    overdue.insert(id);
                }
                q.push(Instant::from_millis(at), session(id));
                model.push((at, id));
            }
            if round % 1250 == 1249 {
                q.retain(|_, k| matches!(k, TimerKey::Session(s) if s % 3 != 0));
                model.retain(|&(_, s)| s % 3 != 0);
            }
            now += [0, 1, 63, 700, 70_000][(rand() % 5) as usize];
            if round == 3_750 {
                now += 1 << 33; // everything at once
            }
            model.sort_unstable();
            let due = model.iter().take_while(|&&(at, _)| at <= now).count();
            let mut popped = Vec::new();
            while let Some((at, k)) = q.pop_due(Instant::from_millis(now)) {
                let TimerKey::Session(s) = k else { panic!() };
                popped.push((at.as_millis(), s));
            }
            let first_timely = popped
                .iter()
                .position(|(_, s)| !overdue.contains(s))
                .unwrap_or(popped.len());
            assert!(popped[first_timely..]
                .iter()
                .all(|(_, s)| !overdue.contains(s)));
            assert!(popped[first_timely..].windows(2).all(|w| w[0].0 <= w[1].0));
            popped.sort_unstable();
            assert_eq!(popped, model.drain(..due).collect::<Vec<_>>());
            assert_eq!(
                q.peek(),
                model.first().map(|&(at, _)| Instant::from_millis(at))
            );
            assert_eq!(q.len(), model.len());
        }
        assert!(overdue.len() > 100, "the wheel's past was exercised");
    }
}
