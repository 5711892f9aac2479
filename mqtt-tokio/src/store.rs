//! Durable storage for a broker core: where the [`StoreOp`]s of
//! [`Broker::poll_store`] go, and where a restart finds them again.
//!
//! The core decides what must be stored and encodes it; a [`Store`] is a dumb ordered map
//! per [`Table`] that applies a batch atomically and reads everything back after a
//! restart. Two are here:
//!
//! - [`RedbStore`]: one file on disk, [redb](https://docs.rs/redb) 2 (pure Rust, ACID,
//!   crash-safe, no server; redb 3 needs Rust 1.89, this workspace supports 1.88). Every
//!   [`Store::commit`] is one write transaction with `Durability::Immediate` and
//!   two-phase commit (two `fsync`s before it returns: the data, then the header that
//!   points to it), so one batch — everything one turn of the event loop changed — costs
//!   one commit however many messages it holds: group commit. The file carries a format
//!   version; a file from a newer version, or a damaged or truncated one, is an error
//!   ([`Error::StoreVersion`], [`Error::StoreDamaged`]), never a panic and never a
//!   partial state (the whole file is checked against its checksums at open).
//! - [`MemoryStore`]: a map behind a cloneable handle, for tests: drop a broker, restore
//!   another one from the same store.
//!
//! [`Server::store`](crate::server::Server::store) runs a server on one; an event loop of
//! your own uses [`restore`] at start and [`flush`] after every turn (see its docs for the
//! order that keeps [`Persistence::Sync`]'s promise).
//!
//! # Time
//!
//! The core stores instants on its own clock. Each commit also records that clock and the
//! wall clock (Unix milliseconds); [`Store::load`] resumes the clock at the stored instant
//! plus the wall-clock time since (never less), [`Loaded::resume_at`], so that session and
//! message expiry count the time the broker was down. An adapter starts its clock there
//! ([`crate::Clock::resuming_at`]).
//!
//! [`Broker::poll_store`]: mqtt_broker::Broker::poll_store
//! [`Persistence::Sync`]: mqtt_broker::Persistence::Sync

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use mqtt_broker::{Batch, Broker, Hooks, StoreOp, Table};
use mqtt_state::Instant;
use redb::{ReadableTable, ReadableTableMetadata, TableHandle};

use crate::Error;

/// What [`Store::load`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct Loaded {
    /// Where the broker's clock resumes: the instant of the last commit plus the wall-clock
    /// time since (never negative); [`Instant::ZERO`] for a new store.
    pub resume_at: Instant,
    /// How many entries were visited.
    pub entries: u64,
}

/// The visitor [`Store::load`] calls for every stored entry: the instant the clock
/// resumes at ([`Loaded::resume_at`]), the table, the key and the value — the arguments of
/// [`Broker::restore`].
pub type Visit<'a> = dyn FnMut(Instant, Table, &[u8], &[u8]) -> Result<(), mqtt_broker::Error> + 'a;

/// An ordered key/value map per [`Table`] that applies batches of [`StoreOp`]s atomically.
///
/// Object safe: a server holds a `Box<dyn Store>`. Calls block (a disk store waits for
/// the disk); an async adapter runs them where blocking is allowed.
pub trait Store: Send + 'static {
    /// Visits every stored entry, table by table in [`Table::ALL`] order (keys in byte
    /// order within a table). A visitor error ([`mqtt_broker::Error::Corrupt`]) stops the
    /// load with [`Error::StoreDamaged`]: nothing is served from a partial state.
    fn load(&mut self, visit: &mut Visit<'_>) -> Result<Loaded, Error>;

    /// Applies `ops` in order, atomically, and records `clock` (the broker's clock at the
    /// commit) with the wall clock; returns once they are durable.
    fn commit(&mut self, ops: &[StoreOp], clock: Instant) -> Result<(), Error>;
}

impl Store for Box<dyn Store> {
    fn load(&mut self, visit: &mut Visit<'_>) -> Result<Loaded, Error> {
        (**self).load(visit)
    }

    fn commit(&mut self, ops: &[StoreOp], clock: Instant) -> Result<(), Error> {
        (**self).commit(ops, clock)
    }
}

/// Rebuilds `broker` (new, not serving yet) from `store`: every entry to
/// [`Broker::restore`], then [`Broker::finish_restore`]. Start the adapter's clock at the
/// returned [`Loaded::resume_at`]. On an error, drop the broker: it holds a partial state.
pub fn restore<H: Hooks>(broker: &mut Broker<H>, store: &mut dyn Store) -> Result<Loaded, Error> {
    let loaded =
        store.load(&mut |now, table, key, value| broker.restore(now, table, key, value))?;
    broker.finish_restore(loaded.resume_at);
    Ok(loaded)
}

/// Writes what the core has for the store, if anything, and tells the core it is durable:
/// [`Broker::poll_store`], [`Store::commit`], [`Broker::handle_durable`]. `ops` is a
/// scratch buffer (left empty). The batch written, if any.
///
/// With [`mqtt_broker::Persistence::Sync`], call it after feeding the core its input, each
/// turn of the loop, and only then drain [`Broker::poll_transmit`]: output waits for it.
/// An error means the promises can no longer be kept: stop serving.
pub fn flush<H: Hooks>(
    broker: &mut Broker<H>,
    store: &mut dyn Store,
    now: Instant,
    ops: &mut Vec<StoreOp>,
) -> Result<Option<Batch>, Error> {
    ops.clear();
    let Some(batch) = broker.poll_store(ops) else {
        return Ok(None);
    };
    let result = store.commit(ops, now);
    ops.clear();
    result?;
    broker.handle_durable(now, batch);
    Ok(Some(batch))
}

/// The wall clock in Unix milliseconds (0 before 1970).
fn unix_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Where the clock resumes: the stored instant plus the wall-clock time since it was
/// stored (none if the wall clock went back).
fn resume_at(stored: Option<(u64, u64)>, now_unix: u64) -> Instant {
    match stored {
        None => Instant::ZERO,
        Some((instant, unix)) => {
            Instant::from_millis(instant.saturating_add(now_unix.saturating_sub(unix)))
        }
    }
}

/// The index of `table` in per-table arrays.
fn index(table: Table) -> usize {
    match table {
        Table::Sessions => 0,
        Table::Messages => 1,
        Table::Progress => 2,
        Table::Incoming => 3,
        Table::Retained => 4,
    }
}

/// The smallest key above every key starting with `prefix`; `None` if there is none (the
/// prefix is empty or all 0xFF): the range to the end.
fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// MemoryStore

#[derive(Debug, Default)]
struct Memory {
    tables: [BTreeMap<Vec<u8>, Vec<u8>>; 5],
    /// (broker instant, Unix milliseconds) of the last commit.
    clock: Option<(u64, u64)>,
    commits: u64,
}

/// A store in memory behind a cloneable handle: clones share the same maps, so a test can
/// drop a broker and restore another from what the first one committed.
#[derive(Debug, Clone, Default)]
pub struct MemoryStore {
    inner: Arc<Mutex<Memory>>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Memory> {
        // A panic elsewhere while holding it left whole maps (every op is one insert or
        // remove): go on.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The entries of `table`, in key order.
    pub fn entries(&self, table: Table) -> Vec<(Vec<u8>, Vec<u8>)> {
        self.lock().tables[index(table)]
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Commits so far (one per non-empty batch written).
    pub fn commits(&self) -> u64 {
        self.lock().commits
    }
}

impl Store for MemoryStore {
    fn load(&mut self, visit: &mut Visit<'_>) -> Result<Loaded, Error> {
        let inner = self.lock();
        let resume = resume_at(inner.clock, unix_millis());
        let mut entries = 0;
        for table in Table::ALL {
            for (k, v) in &inner.tables[index(table)] {
                visit(resume, table, k, v).map_err(damaged_entry)?;
                entries += 1;
            }
        }
        Ok(Loaded {
            resume_at: resume,
            entries,
        })
    }

    fn commit(&mut self, ops: &[StoreOp], clock: Instant) -> Result<(), Error> {
        let mut inner = self.lock();
        for op in ops {
            match op {
                StoreOp::Put { table, key, value } => {
                    inner.tables[index(*table)].insert(key.clone(), value.clone());
                }
                StoreOp::Delete { table, key } => {
                    inner.tables[index(*table)].remove(key);
                }
                StoreOp::DeletePrefix { table, prefix } => {
                    let map = &mut inner.tables[index(*table)];
                    let doomed: Vec<Vec<u8>> = map
                        .range(prefix.clone()..)
                        .map(|(k, _)| k)
                        .take_while(|k| k.starts_with(prefix))
                        .cloned()
                        .collect();
                    for k in doomed {
                        map.remove(&k);
                    }
                }
            }
        }
        inner.clock = Some((clock.as_millis(), unix_millis()));
        inner.commits += 1;
        Ok(())
    }
}

fn damaged_entry(e: mqtt_broker::Error) -> Error {
    Error::StoreDamaged(e.to_string())
}

// ---------------------------------------------------------------------------------------
// RedbStore

/// The format this version writes and reads. Bump it when the layout of the file changes
/// (the core versions its own keys and values).
pub const FORMAT_VERSION: u64 = 1;
/// The file [`RedbStore::open`] uses in a directory.
pub const FILE_NAME: &str = "broker.redb";

type Data = redb::TableDefinition<'static, &'static [u8], &'static [u8]>;
const META: redb::TableDefinition<'static, &'static str, u64> = redb::TableDefinition::new("meta");
const META_FORMAT: &str = "format";
const META_CLOCK: &str = "clock";
const META_WALL: &str = "wall";

fn data(table: Table) -> Data {
    redb::TableDefinition::new(table.name())
}

/// A store in one redb file: atomic, crash-safe batches, durable when
/// [`Store::commit`] returns. See the [module docs](self).
pub struct RedbStore {
    db: redb::Database,
    path: PathBuf,
}

impl std::fmt::Debug for RedbStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedbStore")
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl RedbStore {
    /// Opens the store at `path`, creating it if missing: `path` itself, or
    /// [`FILE_NAME`] in it if it is a directory. Checks the whole file (every page's
    /// checksum) and its format version:
    ///
    /// - [`Error::StoreVersion`]: written by a newer version;
    /// - [`Error::StoreDamaged`]: damaged, truncated, or not a store;
    /// - [`Error::StoreInUse`]: another process (or store) has it open;
    /// - [`Error::Store`]: the file cannot be read or created.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, Error> {
        let mut path = path.as_ref().to_path_buf();
        if path.is_dir() {
            path.push(FILE_NAME);
        }
        let at = |e: redb::Error| redb_error(&path, e);
        // An existing file of no bytes is a store truncated to nothing, not a new one
        // (`Database::create` would take it for one, and serve an empty state). A new
        // store is never empty once created: its header is written and synced first.
        if std::fs::metadata(&path).is_ok_and(|m| m.is_file() && m.len() == 0) {
            return Err(Error::StoreDamaged(format!(
                "{}: empty file (truncated to nothing); remove it to start with an empty store",
                path.display()
            )));
        }
        // redb answers most damage with an error, but asserts on some (a truncated file):
        // that is a damaged file too, not a crash of the caller, and not a panic message.
        let opened = quietly(|| -> Result<redb::Database, Error> {
            let mut db = redb::Database::create(&path).map_err(|e| at(e.into()))?;
            // Every page against its checksum: a damaged file is caught here, not served
            // in part. `false` means it failed and redb rolled it back to an earlier
            // commit, which may have been acknowledged: damaged all the same.
            if !db.check_integrity().map_err(|e| at(e.into()))? {
                return Err(at(redb::Error::Corrupted(
                    "integrity check failed (pages do not match their checksums)".into(),
                )));
            }
            Ok(db)
        });
        let db = match opened {
            Ok(r) => r?,
            Err(_) => {
                return Err(Error::StoreDamaged(format!(
                    "{}: truncated or damaged (the store library could not read it)",
                    path.display()
                )))
            }
        };
        let store = Self { db, path };
        store.init()?;
        Ok(store)
    }

    /// The file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn err(&self, e: impl Into<redb::Error>) -> Error {
        redb_error(&self.path, e.into())
    }

    /// Checks the format version; writes it (and creates the tables) in a new file.
    fn init(&self) -> Result<(), Error> {
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        tx.set_two_phase_commit(true);
        {
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            let found = meta
                .get(META_FORMAT)
                .map_err(|e| self.err(e))?
                .map(|v| v.value());
            match found {
                Some(FORMAT_VERSION) => {}
                Some(found) => {
                    return Err(Error::StoreVersion {
                        path: self.path.display().to_string(),
                        found,
                        supported: FORMAT_VERSION,
                    })
                }
                None => {
                    // A new file, or a redb file that is not a broker's store.
                    let tables = tx.list_tables().map_err(|e| self.err(e))?;
                    let foreign = tables
                        .map(|t| t.name().to_owned())
                        .find(|n| n != "meta" && !Table::ALL.iter().any(|t| t.name() == n));
                    let ours = Table::ALL.iter().any(|&t| {
                        tx.open_table(data(t))
                            .ok()
                            .and_then(|t| t.len().ok())
                            .is_some_and(|n| n > 0)
                    });
                    if foreign.is_some() || ours {
                        return Err(Error::StoreDamaged(format!(
                            "{}: no format version (not a broker store?)",
                            self.path.display()
                        )));
                    }
                    meta.insert(META_FORMAT, FORMAT_VERSION)
                        .map_err(|e| self.err(e))?;
                }
            }
            for t in Table::ALL {
                tx.open_table(data(t)).map_err(|e| self.err(e))?;
            }
        }
        tx.commit().map_err(|e| self.err(e))
    }

    /// Sets the stored format version (tests of a file from another version).
    #[cfg(test)]
    fn set_format(&self, version: u64) {
        let tx = self.db.begin_write().unwrap();
        tx.open_table(META)
            .unwrap()
            .insert(META_FORMAT, version)
            .unwrap();
        tx.commit().unwrap();
    }
}

impl Store for RedbStore {
    fn load(&mut self, visit: &mut Visit<'_>) -> Result<Loaded, Error> {
        let tx = self.db.begin_read().map_err(|e| self.err(e))?;
        let meta = tx.open_table(META).map_err(|e| self.err(e))?;
        let get = |k| -> Result<Option<u64>, Error> {
            Ok(meta.get(k).map_err(|e| self.err(e))?.map(|v| v.value()))
        };
        let stored = match (get(META_CLOCK)?, get(META_WALL)?) {
            (Some(c), Some(w)) => Some((c, w)),
            _ => None,
        };
        let resume = resume_at(stored, unix_millis());
        let mut entries = 0;
        for table in Table::ALL {
            let t = tx.open_table(data(table)).map_err(|e| self.err(e))?;
            for entry in t.iter().map_err(|e| self.err(e))? {
                let (k, v) = entry.map_err(|e| self.err(e))?;
                visit(resume, table, k.value(), v.value()).map_err(damaged_entry)?;
                entries += 1;
            }
        }
        Ok(Loaded {
            resume_at: resume,
            entries,
        })
    }

    fn commit(&mut self, ops: &[StoreOp], clock: Instant) -> Result<(), Error> {
        if ops.is_empty() {
            // Every message of the batch was acknowledged before it left: nothing to
            // write, and nothing to sync.
            return Ok(());
        }
        let mut tx = self.db.begin_write().map_err(|e| self.err(e))?;
        // The default, said out loud: the commit returns once it is on disk.
        tx.set_durability(redb::Durability::Immediate);
        // Two fsyncs instead of one: the data, then the header that points to it. With
        // one, redb takes a last commit that fails its checksums for one torn by a crash
        // and silently rolls back to the one before, which may have been acknowledged
        // (or, for a new file, to an empty store). With two, a last commit that fails its
        // checksums was damaged after it was written: an error, not a rollback.
        tx.set_two_phase_commit(true);
        {
            let mut tables = Vec::with_capacity(Table::ALL.len());
            for t in [
                Table::Sessions,
                Table::Messages,
                Table::Progress,
                Table::Incoming,
                Table::Retained,
            ] {
                tables.push(tx.open_table(data(t)).map_err(|e| self.err(e))?);
            }
            // The batch's net effect: a message queued and acknowledged within one batch
            // (common with `Persistence::Eventual`, whose batches span many turns) never
            // touches the file, and the rest is written in key order.
            let net = Net::of(ops);
            for (table, prefix, _) in net.prefixes {
                let t = &mut tables[table];
                let result = match prefix_end(prefix) {
                    Some(end) => t.retain_in(prefix..end.as_slice(), |_, _| false),
                    None => t.retain_in(prefix.., |_, _| false),
                };
                result.map_err(|e| self.err(e))?;
            }
            // Each key once, so the order between keys changes nothing but redb's work:
            // deletions from the highest key down (a queue's head goes from the end of each
            // page, where redb moves no other entry), then puts from the lowest up (a
            // queue's tail is appended to the end of its page).
            for &(table, key, value) in net.keys.iter().rev() {
                if value.is_none() {
                    drop(tables[table].remove(key).map_err(|e| self.err(e))?);
                }
            }
            for &(table, key, value) in &net.keys {
                if let Some(value) = value {
                    drop(tables[table].insert(key, value).map_err(|e| self.err(e))?);
                }
            }
            let mut meta = tx.open_table(META).map_err(|e| self.err(e))?;
            meta.insert(META_CLOCK, clock.as_millis())
                .map_err(|e| self.err(e))?;
            meta.insert(META_WALL, unix_millis())
                .map_err(|e| self.err(e))?;
        }
        tx.commit().map_err(|e| self.err(e))
    }
}

/// Runs `f`, catching a panic; the panic hook is not called for a panic of this thread
/// meanwhile (other threads' panics are reported as before).
fn quietly<R>(f: impl FnOnce() -> R) -> std::thread::Result<R> {
    let me = std::thread::current().id();
    let previous: Arc<dyn Fn(&std::panic::PanicHookInfo<'_>) + Send + Sync> =
        Arc::from(std::panic::take_hook());
    let p = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        if std::thread::current().id() != me {
            p(info);
        }
    }));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    drop(std::panic::take_hook());
    std::panic::set_hook(Box::new(move |info| previous(info)));
    result
}

/// The net effect of a batch: prefix deletions first, in order, then the last write of
/// each key written after the last deletion of a prefix covering it, in key order.
/// Applying it leaves the same state as applying the batch in order.
///
/// One sorted vector rather than a map: a batch holds a thousand operations under load,
/// and this runs on the store's thread for every commit, which is what limits a durable
/// broker's throughput (two allocations for the whole batch instead of a tree's nodes).
struct Net<'a> {
    /// Table, prefix, and its place in the batch.
    prefixes: Vec<(usize, &'a [u8], usize)>,
    /// By (table, key), each key once: `Some(value)` a put, `None` a delete.
    keys: Vec<Entry<'a>>,
}

/// A key's last write: table, key, value (`None`: a delete).
type Entry<'a> = (usize, &'a [u8], Option<&'a [u8]>);

/// A write of a batch: table, key, its place in the batch, the value (`None`: a delete).
type Write<'a> = (usize, &'a [u8], usize, Option<&'a [u8]>);

impl<'a> Net<'a> {
    fn of(ops: &'a [StoreOp]) -> Self {
        let mut prefixes = Vec::new();
        let mut writes: Vec<Write<'a>> = Vec::with_capacity(ops.len());
        for (at, op) in ops.iter().enumerate() {
            match op {
                StoreOp::Put { table, key, value } => {
                    writes.push((index(*table), key, at, Some(value)));
                }
                StoreOp::Delete { table, key } => writes.push((index(*table), key, at, None)),
                StoreOp::DeletePrefix { table, prefix } => {
                    prefixes.push((index(*table), prefix.as_slice(), at));
                }
            }
        }
        // Key order, and within a key the order of the batch: the last write wins.
        writes.sort_unstable_by(|a, b| (a.0, a.1, a.2).cmp(&(b.0, b.1, b.2)));
        let mut keys: Vec<Entry<'a>> = Vec::with_capacity(writes.len());
        // The place of each kept key's last write, for the prefix deletions below.
        let mut last: Vec<usize> = Vec::with_capacity(writes.len());
        for &(t, key, at, value) in &writes {
            match keys.last_mut() {
                Some(k) if k.0 == t && k.1 == key => {
                    k.2 = value;
                    if let Some(l) = last.last_mut() {
                        *l = at;
                    }
                }
                _ => {
                    keys.push((t, key, value));
                    last.push(at);
                }
            }
        }
        if !prefixes.is_empty() {
            // A write before a deletion of a prefix covering it: the deletion covers it.
            let mut void = vec![false; keys.len()];
            for &(t, prefix, at) in &prefixes {
                let from = keys.partition_point(|k| (k.0, k.1) < (t, prefix));
                for (i, k) in keys.iter().enumerate().skip(from) {
                    if k.0 != t || !k.1.starts_with(prefix) {
                        break;
                    }
                    if last[i] < at {
                        void[i] = true;
                    }
                }
            }
            let mut i = 0;
            keys.retain(|_| {
                i += 1;
                !void[i - 1]
            });
        }
        Net { prefixes, keys }
    }
}

/// A redb error as the crate's, with the file it concerns.
fn redb_error(path: &Path, e: redb::Error) -> Error {
    let p = path.display();
    match e {
        redb::Error::DatabaseAlreadyOpen => Error::StoreInUse(p.to_string()),
        redb::Error::Corrupted(why) => Error::StoreDamaged(format!("{p}: {why}")),
        redb::Error::UpgradeRequired(v) => {
            Error::Store(format!("{p}: written in redb's old file format {v}"))
        }
        redb::Error::Io(io)
            if matches!(
                io.kind(),
                std::io::ErrorKind::UnexpectedEof | std::io::ErrorKind::InvalidData
            ) =>
        {
            Error::StoreDamaged(format!("{p}: {io}"))
        }
        // Tables of the wrong type: another program's redb file.
        e @ (redb::Error::TableTypeMismatch { .. }
        | redb::Error::TableIsMultimap(_)
        | redb::Error::TypeDefinitionChanged { .. }) => {
            Error::StoreDamaged(format!("{p}: not a broker store ({e})"))
        }
        e => Error::Store(format!("{p}: {e}")),
    }
}

#[cfg(test)]
mod tests;
