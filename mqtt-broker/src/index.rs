//! Sessions by client identifier: an open-addressing hash table of session indices, the
//! identifiers themselves read from the session records.
//!
//! Each slot is one `u64`: the low 32 bits of the identifier's hash (its tag, which also
//! gives its home slot) and the session's index. Linear probing keeps a probe within a
//! cache line or two, and the tag settles nearly every mismatch without reading a record,
//! so a lookup costs about one cache miss in the table and one in the record it finds, and
//! removing a session (whose index is known) one miss in the table alone: at a million
//! sessions those misses are what a CONNECT or a session's end costs beyond its cost at a
//! thousand (`cargo bench -p mqtt-broker --bench scale`). About 11-21 bytes per session
//! (load factor 3/8 to 3/4); the `BTreeMap<Arc<str>, u32>` before took about 31 and compared
//! identifiers on some twenty nodes' worth of heap per lookup, and hashbrown's table of
//! `u32` (control bytes apart from the entries) cost a miss more per operation.
//!
//! Client identifiers are chosen by clients, so the hash is keyed
//! ([`crate::BrokerConfig::hash_seed`]): without the seed, identifiers that collide
//! cannot be computed ahead, and a client cannot grow one probe run on purpose.

use alloc::vec;
use alloc::vec::Vec;
use core::hash::BuildHasher;

use foldhash::fast::FixedState;

use crate::registry::SessionRecord;
use crate::slots::Slots;

pub(crate) type Sessions = Slots<Option<SessionRecord>>;

/// An empty slot.
const EMPTY: u64 = 0;

pub(crate) struct ClientIndex {
    /// `tag << 32 | (session + 1)`, or [`EMPTY`]; the length is a power of two (or 0).
    slots: Vec<u64>,
    len: usize,
    hasher: FixedState,
}

fn client_id(sessions: &Sessions, s: u32) -> &str {
    sessions
        .get(s as usize)
        .and_then(Option::as_ref)
        .map_or("", |r| &r.client_id)
}

fn tag(slot: u64) -> u32 {
    (slot >> 32) as u32
}

fn session(slot: u64) -> u32 {
    (slot as u32).wrapping_sub(1)
}

impl ClientIndex {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            slots: Vec::new(),
            len: 0,
            hasher: FixedState::with_seed(seed),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    fn tag_of(&self, id: &str) -> u32 {
        self.hasher.hash_one(id) as u32
    }

    fn mask(&self) -> usize {
        self.slots.len().wrapping_sub(1)
    }

    pub(crate) fn get(&self, sessions: &Sessions, id: &str) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let tag = self.tag_of(id);
        let mask = self.mask();
        let mut i = tag as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot == EMPTY {
                return None;
            }
            if self::tag(slot) == tag && client_id(sessions, session(slot)) == id {
                return Some(session(slot));
            }
            i = (i + 1) & mask;
        }
    }

    /// Adds session `s`, whose identifier `id` no other session has.
    pub(crate) fn insert(&mut self, id: &str, s: u32) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            self.grow();
        }
        let tag = self.tag_of(id);
        self.place(u64::from(tag) << 32 | u64::from(s.wrapping_add(1)));
        self.len += 1;
    }

    fn place(&mut self, entry: u64) {
        let mask = self.mask();
        let mut i = tag(entry) as usize & mask;
        while self.slots[i] != EMPTY {
            i = (i + 1) & mask;
        }
        self.slots[i] = entry;
    }

    fn grow(&mut self) {
        let size = (self.slots.len() * 2).max(16);
        let old = core::mem::replace(&mut self.slots, vec![EMPTY; size]);
        for entry in old.into_iter().filter(|&e| e != EMPTY) {
            self.place(entry);
        }
    }

    /// Removes session `s`, whose identifier is `id`: found by its index, no record read.
    pub(crate) fn remove(&mut self, id: &str, s: u32) {
        if self.slots.is_empty() {
            return;
        }
        let mask = self.mask();
        let mut i = self.tag_of(id) as usize & mask;
        loop {
            let slot = self.slots[i];
            if slot == EMPTY {
                return;
            }
            if session(slot) == s {
                break;
            }
            i = (i + 1) & mask;
        }
        // Backward shift: entries after the hole that may move into it (their home is
        // not within the hole's run after it) do, so that no probe meets a gap early and
        // no tombstones pile up.
        let mut j = i;
        loop {
            j = (j + 1) & mask;
            let slot = self.slots[j];
            if slot == EMPTY {
                break;
            }
            let home = tag(slot) as usize & mask;
            // Whether `home` lies cyclically in (i, j]: then the entry stays.
            let stays = if i <= j {
                i < home && home <= j
            } else {
                i < home || home <= j
            };
            if !stays {
                self.slots[i] = slot;
                i = j;
            }
        }
        self.slots[i] = EMPTY;
        self.len -= 1;
    }
}

#[cfg(test)]
mod tests {
    use alloc::format;
    use alloc::vec::Vec;

    use super::*;

    fn record(id: &str) -> Option<SessionRecord> {
        Some(SessionRecord {
            client_id: id.into(),
            filters: Vec::new(),
            conn: None,
            expiry: 0,
            offline: None,
        })
    }

    /// Through growth (rehashing reads the records) and removals that leave holes.
    #[test]
    fn finds_each_session_by_its_identifier() {
        let mut sessions = Sessions::new();
        let mut index = ClientIndex::new(7);
        for i in 0..5000u32 {
            let id = format!("client-{i}");
            let s = sessions.push(record(&id)) as u32;
            index.insert(&id, s);
        }
        for i in (0..5000u32).step_by(3) {
            let id = format!("client-{i}");
            assert_eq!(index.get(&sessions, &id), Some(i));
            index.remove(&id, i);
            sessions[i as usize] = None;
        }
        for i in 0..5000u32 {
            let id = format!("client-{i}");
            let want = (i % 3 != 0).then_some(i);
            assert_eq!(index.get(&sessions, &id), want, "{id}");
        }
        assert_eq!(index.get(&sessions, ""), None);
        assert_eq!(index.get(&sessions, "client-5000"), None);
        assert_eq!(index.len(), 5000 - 1667);
    }

    /// Against a model (a `BTreeMap`), through growth, with random inserts and removals
    /// and identifiers that share their tag's home slot (a tiny seed space is not
    /// needed: probing runs form on their own at load 3/4).
    #[test]
    fn agrees_with_a_model() {
        let mut sessions = Sessions::new();
        let mut index = ClientIndex::new(99);
        let mut model = std::collections::BTreeMap::new();
        let mut free: Vec<u32> = Vec::new();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut rand = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..60_000 {
            let id = format!("c{}", rand() % 3000);
            match model.get(&id) {
                Some(&s) if rand() % 2 == 0 => {
                    index.remove(&id, s);
                    sessions[s as usize] = None;
                    free.push(s);
                    model.remove(&id);
                }
                Some(_) => {}
                None => {
                    let s = match free.pop() {
                        Some(s) => {
                            sessions[s as usize] = record(&id);
                            s
                        }
                        None => sessions.push(record(&id)) as u32,
                    };
                    index.insert(&id, s);
                    model.insert(id, s);
                }
            }
            let probe = format!("c{}", rand() % 3000);
            assert_eq!(index.get(&sessions, &probe), model.get(&probe).copied());
            assert_eq!(index.len(), model.len());
        }
        for (id, &s) in &model {
            assert_eq!(index.get(&sessions, id), Some(s));
        }
    }
}
