//! Sessions by client identifier: a hash table of session indices, the identifiers
//! themselves read from the session records.
//!
//! A table of `u32` takes about 10 bytes per session at a million (the identifiers are
//! the records' own); a `BTreeMap<Arc<str>, u32>` took about 31, and each lookup compared
//! against identifiers on some twenty nodes' worth of heap, so that a CONNECT and the end
//! of a session cost twice as much at a million sessions as at a thousand
//! (`cargo bench -p mqtt-broker --bench scale`). Here a lookup touches one group of
//! control bytes, one bucket and the one record it finds.
//!
//! Client identifiers are chosen by clients, so the hash is keyed
//! ([`crate::BrokerConfig::hash_seed`]): without the seed, identifiers that collide
//! cannot be computed ahead, and a client cannot flood one bucket chain.

use core::hash::BuildHasher;

use foldhash::fast::FixedState;
use hashbrown::HashTable;

use crate::registry::SessionRecord;
use crate::slots::Slots;

pub(crate) type Sessions = Slots<Option<SessionRecord>>;

pub(crate) struct ClientIndex {
    table: HashTable<u32>,
    hasher: FixedState,
}

fn client_id(sessions: &Sessions, s: u32) -> &str {
    sessions
        .get(s as usize)
        .and_then(Option::as_ref)
        .map_or("", |r| &r.client_id)
}

impl ClientIndex {
    pub(crate) fn new(seed: u64) -> Self {
        Self {
            table: HashTable::new(),
            hasher: FixedState::with_seed(seed),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.table.len()
    }

    pub(crate) fn get(&self, sessions: &Sessions, id: &str) -> Option<u32> {
        let hash = self.hasher.hash_one(id);
        self.table
            .find(hash, |&s| client_id(sessions, s) == id)
            .copied()
    }

    /// Adds session `s`, whose record (in `sessions` already) holds `id`, which no other
    /// session has.
    pub(crate) fn insert(&mut self, sessions: &Sessions, id: &str, s: u32) {
        let hasher = &self.hasher;
        self.table.insert_unique(hasher.hash_one(id), s, |&t| {
            hasher.hash_one(client_id(sessions, t))
        });
    }

    /// Removes session `s`, whose identifier is `id`.
    pub(crate) fn remove(&mut self, id: &str, s: u32) {
        if let Ok(entry) = self.table.find_entry(self.hasher.hash_one(id), |&t| t == s) {
            entry.remove();
        }
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
            index.insert(&sessions, &id, s);
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
}
