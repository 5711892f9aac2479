//! Durability: what the core must have stored before it keeps a promise.
//!
//! A QoS 1/2 acknowledgement, a SUBACK and an UNSUBACK are promises. With
//! [`Persistence::Sync`] the core keeps them only once what they promise is on disk:
//! every state change that must survive a crash comes out of [`Broker::poll_store`] as
//! [`StoreOp`]s, grouped in a batch, and each PUBACK, PUBREC, SUBACK and UNSUBACK waits
//! for the batch that holds what it promises, until the adapter has written it and said
//! so with [`Broker::handle_durable`]. One batch holds everything the event loop changed
//! since the last one: one write (one `fsync`) however many messages it carried — group
//! commit. The adapter may go on feeding input while a batch is being written.
//!
//! Deliveries at QoS 0 and 1 do not wait: a crash can only make a QoS 1 message come
//! again, which QoS 1 allows, and a message delivered and acknowledged before its batch
//! is written is put and deleted in the same batch, which a store applies as nothing.
//! What a QoS 2 exchange depends on does wait, and with it all output, until stored: the
//! publisher's packet identifier (or after a crash it would send the PUBLISH again to a
//! broker that no longer knows it, and a subscriber could get it twice), the PUBREC a
//! subscriber sent (or a restart would publish again what it completed), a PUBREL
//! received (or its PUBCOMP could free an identifier the store still holds).
//!
//! The operations are key/value writes into a few [`Table`]s; the core encodes keys and
//! values itself (a versioned binary format, messages as MQTT 5.0 PUBLISH packets), so a
//! store is a dumb ordered map with atomic batches: an embedded database, a file, a
//! replicated log. After a restart the adapter feeds every stored entry back, table by
//! table in [`Table::ALL`] order, to [`Broker::restore`], then calls
//! [`Broker::finish_restore`]; anything it cannot decode is an error, never a partial
//! state served as if whole.
//!
//! What is stored:
//!
//! - sessions that outlive their connection (Session Expiry Interval above 0, or 3.1.1
//!   Clean Session 0), with their subscriptions, and any session with a will (so that a
//!   crash is an abnormal close that publishes it, [MQTT-3.1.2-8]);
//! - the QoS 1/2 messages queued or in flight to those sessions, and how far each got
//!   (packet identifier, PUBREC received), so that a restart resends them as a reconnect
//!   does ([MQTT-4.4.0-1]), PUBREL where PUBREL was due;
//! - the QoS 2 packet identifiers those sessions received and have not seen PUBREL for,
//!   so that a PUBLISH resent after the restart is not delivered twice ([MQTT-4.3.3-10]);
//! - retained messages ([MQTT-3.3.1-5]).
//!
//! Time: instants are stored as the broker's [`Instant`]s. An adapter that restores must
//! keep its clock running across the restart (start the new run's clock where the old one
//! stopped, plus the time the broker was down), so that expiry intervals count the
//! downtime.
//!
//! [`Broker::poll_store`]: crate::Broker::poll_store
//! [`Broker::poll_transmit`]: crate::Broker::poll_transmit
//! [`Broker::poll_event`]: crate::Broker::poll_event
//! [`Broker::handle_durable`]: crate::Broker::handle_durable
//! [`Broker::restore`]: crate::Broker::restore
//! [`Broker::finish_restore`]: crate::Broker::finish_restore
//! [`Instant`]: mqtt_state::Instant

use alloc::boxed::Box;
use alloc::collections::{BTreeMap, VecDeque};
use alloc::vec::Vec;

use bytes::Bytes;
use mqtt_codec::{PacketId, ProtocolVersion, QoS, ReasonCode, SubscriptionId};
use mqtt_state::{
    Diagnostics, Duration, Inflight, Instant, Message, Outgoing, SessionState, Stage,
    SubscriptionIdList,
};

use crate::registry::Offline;
use crate::routing::SubOpts;
use crate::subscriptions::parse_subscription;
use crate::{Broker, BrokerEvent, ConnectionId, Error, Hooks};

/// How much the core asks of storage.
///
/// With `Sync`, each PUBACK, PUBREC, SUBACK and UNSUBACK waits for the batch of
/// [`StoreOp`]s that holds what it promises. Deliveries at QoS 0 and 1 do not wait: a
/// crash can only make a QoS 1 message come again, which QoS 1 allows, and a message
/// delivered and acknowledged before its batch is written is put and deleted in the same
/// batch, which a store applies as nothing. What a QoS 2 exchange depends on does wait,
/// and with it all output, until stored: the publisher's packet identifier (or after a
/// crash it would send the PUBLISH again to a broker that no longer knows it, and a
/// subscriber could get it twice), the packet identifier of a QoS 2 message to a
/// subscriber (which would hold it, and take the next message a restarted broker sends
/// under it for a repeat), the PUBREC a subscriber sent (or a restart would publish again
/// what it completed), a PUBREL received (or its PUBCOMP could free an identifier the
/// store still holds). CONNACK waits for a session that is stored: its will is the
/// session's from then on, and a crash must publish it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Persistence {
    /// Nothing is stored: a restart loses every session and retained message.
    #[default]
    Off,
    /// Every change comes out of [`crate::Broker::poll_store`], but output is not held:
    /// the adapter writes batches when it likes (say every 100 ms), and a crash loses
    /// what was acknowledged since the last write. Faster; a promise kept within a bound.
    Eventual,
    /// Every change comes out of [`crate::Broker::poll_store`], and what promises it
    /// (PUBACK, PUBREC, SUBACK, UNSUBACK, and the steps of QoS 2 exchanges, see
    /// [`Persistence`]) waits for [`crate::Broker::handle_durable`]:
    /// acknowledged means stored.
    Sync,
}

/// The tables a store keeps, in the order a restore reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Sessions by client identifier: expiry, subscriptions, will, whether connected.
    Sessions,
    /// Messages queued or in flight to a session, by session and sequence number.
    Messages,
    /// How far an in-flight message got (its packet identifier and QoS 2 stage), by the
    /// same key as the message; read before `Messages`.
    Progress,
    /// QoS 2 packet identifiers received and not yet released, by session.
    Incoming,
    /// Retained messages by topic.
    Retained,
}

impl Table {
    /// The client identifier a key (or a [`StoreOp::DeletePrefix`] prefix) of this table
    /// belongs to, and the rest of it; `None` for `Retained` (no session's) or a key that
    /// cannot be read. For a store that keeps each session's entries together (a cluster's,
    /// where any node may resume a session).
    ///
    /// ```
    /// use mqtt_broker::Table;
    /// assert_eq!(Table::Sessions.session_key(b"dev-1"), Some(("dev-1", &b""[..])));
    /// assert_eq!(Table::Retained.session_key(b"a/b"), None);
    /// ```
    pub fn session_key(self, key: &[u8]) -> Option<(&str, &[u8])> {
        match self {
            Table::Sessions => core::str::from_utf8(key).ok().map(|c| (c, &key[..0])),
            Table::Retained => None,
            _ => split_key(self, key).ok(),
        }
    }

    /// Every table, in the order [`crate::Broker::restore`] must be given their entries.
    pub const ALL: [Table; 5] = [
        Table::Sessions,
        Table::Progress,
        Table::Messages,
        Table::Incoming,
        Table::Retained,
    ];

    /// A name for the table, stable across versions (a store's table or file name).
    pub const fn name(self) -> &'static str {
        match self {
            Table::Sessions => "sessions",
            Table::Messages => "messages",
            Table::Progress => "progress",
            Table::Incoming => "incoming",
            Table::Retained => "retained",
        }
    }
}

/// One change to the store. A batch is applied atomically, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreOp {
    /// Sets `key` to `value` in `table`.
    Put {
        /// The table.
        table: Table,
        /// The key (compared as bytes, lexicographically).
        key: Vec<u8>,
        /// The value.
        value: Vec<u8>,
    },
    /// Removes `key` from `table`, if there.
    Delete {
        /// The table.
        table: Table,
        /// The key.
        key: Vec<u8>,
    },
    /// Removes every key of `table` that starts with `prefix` (a session's messages when
    /// it ends).
    DeletePrefix {
        /// The table.
        table: Table,
        /// The prefix.
        prefix: Vec<u8>,
    },
}

impl StoreOp {
    /// Whether this is a deletion that a store may apply after it reports the batch
    /// durable: that of a delivered QoS 1 message, which a crash before it is applied only
    /// sends again (QoS 1 allows it). A store whose deletions cost a round trip each (a
    /// remote one) can take them off the commit's path. Anything QoS 2 depends on, and
    /// every put, is not.
    pub fn delete_may_lag(&self) -> bool {
        match self {
            // A message's key ends with its tag, whose low bit is set for QoS 2.
            StoreOp::Delete {
                table: Table::Messages,
                key,
            } => key.last().is_some_and(|b| b & 1 == 0),
            _ => false,
        }
    }

    /// Applies the operation to `map` (keys by table, then bytes), as a store applies it:
    /// the whole of a store for tests, tools and simulations.
    ///
    /// ```
    /// use std::collections::BTreeMap;
    /// use mqtt_broker::{StoreOp, Table};
    /// let mut map = BTreeMap::new();
    /// for op in [
    ///     StoreOp::Put { table: Table::Messages, key: b"\0\x01a1".to_vec(), value: vec![1] },
    ///     StoreOp::Put { table: Table::Messages, key: b"\0\x01b1".to_vec(), value: vec![2] },
    ///     StoreOp::DeletePrefix { table: Table::Messages, prefix: b"\0\x01a".to_vec() },
    /// ] {
    ///     op.apply(&mut map);
    /// }
    /// assert_eq!(map.len(), 1);
    /// ```
    pub fn apply(&self, map: &mut BTreeMap<(Table, Vec<u8>), Vec<u8>>) {
        match self {
            StoreOp::Put { table, key, value } => {
                map.insert((*table, key.clone()), value.clone());
            }
            StoreOp::Delete { table, key } => {
                map.remove(&(*table, key.clone()));
            }
            StoreOp::DeletePrefix { table, prefix } => {
                // The prefix's range only, not the whole map.
                let covered: Vec<(Table, Vec<u8>)> = map
                    .range((*table, prefix.clone())..)
                    .map(|(k, _)| k)
                    .take_while(|(t, k)| t == table && k.starts_with(prefix))
                    .cloned()
                    .collect();
                for k in covered {
                    map.remove(&k);
                }
            }
        }
    }
}

/// The number of a batch of [`StoreOp`]s, as [`crate::Broker::poll_store`] hands it out;
/// batches are numbered 1, 2, 3, ... in order.
pub type Batch = u64;

impl<H: Hooks> Broker<H> {
    /// Moves the store operations of everything since the last call into `ops` (appended)
    /// and returns their batch number; `None` when nothing changed. A batch may hold no
    /// operation at all (its messages were put and acknowledged before it left, so the core
    /// dropped both): it needs no write, but goes through the store in order like the
    /// others, since what waits for it must not be released before the batches ahead. Write the batch
    /// atomically, then call [`Broker::handle_durable`] with its number. Only with
    /// [`Persistence::Eventual`] or [`Persistence::Sync`]; always `None` with `Off`.
    pub fn poll_store(&mut self, ops: &mut Vec<StoreOp>) -> Option<Batch> {
        if self.store.ops.is_empty() {
            return None;
        }
        if self.store.dead > 0 {
            self.store.ops.retain(|op| !is_tombstone(op));
            self.store.dead = 0;
        }
        self.store.fresh.clear();
        ops.append(&mut self.store.ops);
        self.store.batch += 1;
        if core::mem::take(&mut self.store.hazard) {
            self.store.hazard_batch = self.store.batch;
        }
        Some(self.store.batch)
    }

    /// The batch that will hold the changes made so far: the last one handed out, or the
    /// next if changes wait. Something that must not happen before those changes are
    /// stored waits until [`Broker::durable_batch`] reaches it (a cluster node that let a
    /// session go answers then, so that the new owner reads its last state).
    pub fn store_position(&self) -> Batch {
        self.store.batch + Batch::from(!self.store.ops.is_empty())
    }

    /// The last batch reported durable ([`Broker::handle_durable`]).
    pub fn durable_batch(&self) -> Batch {
        self.store.durable
    }

    /// Whether [`Broker::poll_store`] has operations to hand out. An adapter that writes
    /// one batch at a time polls only when the last one is written: operations stay in the
    /// core meanwhile, where a message put and acknowledged before the batch leaves is
    /// dropped from it (it never reaches the store), across as many turns as the write
    /// takes.
    pub fn has_store_ops(&self) -> bool {
        !self.store.ops.is_empty()
    }

    /// Batch `batch` (and every batch before it) is durable: with [`Persistence::Sync`],
    /// the acknowledgements that waited for it go out, and output held for a QoS 2
    /// exchange ([`BrokerEvent::Transmit`], [`BrokerEvent::Close`] come out of
    /// [`Broker::poll_event`] again).
    pub fn handle_durable(&mut self, now: Instant, batch: Batch) {
        if batch > self.store.durable {
            self.store.durable = batch.min(self.store.batch);
        }
        // The promises whose operations are now stored are kept, in the order made.
        while self
            .store
            .deferred
            .front()
            .is_some_and(|(b, _)| *b <= self.store.durable)
        {
            let Some((_, d)) = self.store.deferred.pop_front() else {
                break;
            };
            self.keep(now, d);
        }
        if !self.holding() && !self.store.held.is_empty() {
            let held = core::mem::take(&mut self.store.held);
            for e in held.into_iter().rev() {
                self.events.push_front(e);
            }
        }
    }

    /// Takes one stored entry back after a restart. Give every entry of every table, table
    /// by table in [`Table::ALL`] order (keys in any order within a table), to a broker
    /// that has served no connection yet, then call [`Broker::finish_restore`]. An entry
    /// that cannot be read is [`Error::Corrupt`]: stop, and serve nothing from a partial
    /// state.
    pub fn restore(
        &mut self,
        now: Instant,
        table: Table,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), Error> {
        self.restore_entry(now, table, key, value)
    }

    /// Ends a restore: sessions whose expiry passed while the broker was down end, wills
    /// of clients that were connected at the crash go out as after an abnormal close
    /// ([MQTT-3.1.2-8]), and the deadlines of the rest are armed.
    pub fn finish_restore(&mut self, now: Instant) {
        self.restore_finish(now);
    }

    /// Whether output waits for the store: [`Persistence::Sync`] with changes not yet
    /// durable.
    ///
    /// Acknowledgements wait one by one ([`Broker::after_store`]); the whole output waits
    /// only for what a QoS 2 exchange depends on, where a packet sent before its state is
    /// stored could make a restart deliver a message twice.
    pub(crate) fn holding(&self) -> bool {
        self.config.persistence == Persistence::Sync
            && (self.store.hazard || self.store.durable < self.store.hazard_batch)
    }

    /// The batch a promise made now depends on, when it must wait for one: with
    /// [`Persistence::Sync`], the batch the operations not yet handed out will be.
    pub(crate) fn after_store(&self) -> Option<Batch> {
        (self.config.persistence == Persistence::Sync && !self.store.ops.is_empty())
            .then_some(self.store.batch + 1)
    }

    /// Keeps `promise` now, or once batch `after` is durable.
    pub(crate) fn promise(&mut self, now: Instant, after: Option<Batch>, promise: Promise) {
        match after {
            Some(batch) => self.store.deferred.push_back((batch, promise)),
            None => self.keep(now, promise),
        }
    }

    fn keep(&mut self, now: Instant, promise: Promise) {
        let id = match promise {
            Promise::Ack {
                conn,
                packet_id,
                reason,
            } => {
                if let Some(c) = self.conn_mut(conn) {
                    c.session.ack(now, packet_id, reason);
                }
                conn
            }
            Promise::SubAck {
                conn,
                packet_id,
                reasons,
                diagnostics,
            } => {
                if let Some(c) = self.conn_mut(conn) {
                    if diagnostics.is_empty() {
                        let _ = c.session.suback(now, packet_id, reasons);
                    } else {
                        let _ = c.session.suback_with(now, packet_id, reasons, diagnostics);
                    }
                }
                conn
            }
            Promise::UnsubAck {
                conn,
                packet_id,
                reasons,
            } => {
                if let Some(c) = self.conn_mut(conn) {
                    let _ = c.session.unsuback(now, packet_id, reasons);
                }
                conn
            }
        };
        self.wake(id);
        self.rearm(id);
    }
}

/// An answer that promises what must be stored first.
#[derive(Debug)]
pub(crate) enum Promise {
    /// PUBACK / PUBREC: the message is the broker's.
    Ack {
        conn: ConnectionId,
        packet_id: PacketId,
        reason: ReasonCode,
    },
    /// SUBACK: the subscriptions hold.
    SubAck {
        conn: ConnectionId,
        packet_id: PacketId,
        reasons: Vec<ReasonCode>,
        diagnostics: Diagnostics,
    },
    /// UNSUBACK: the subscriptions are gone.
    UnsubAck {
        conn: ConnectionId,
        packet_id: PacketId,
        reasons: Vec<ReasonCode>,
    },
}

/// The core's side of durability.
#[derive(Debug, Default)]
pub(crate) struct StoreState {
    /// Operations not yet handed out.
    pub(crate) ops: Vec<StoreOp>,
    /// The last batch handed out.
    pub(crate) batch: Batch,
    /// The last batch the adapter reported durable.
    pub(crate) durable: Batch,
    /// Transmit and Close events held until the store catches up, in order.
    pub(crate) held: Vec<BrokerEvent>,
    /// The last message sequence number given (0 is "not stored").
    pub(crate) last_tag: u64,
    /// The operations not yet handed out include one a QoS 2 exchange depends on.
    pub(crate) hazard: bool,
    /// The last batch that did.
    pub(crate) hazard_batch: Batch,
    /// Answers waiting for their batch, in the order they were made.
    pub(crate) deferred: VecDeque<(Batch, Promise)>,
    /// Messages put in the operations not yet handed out, by tag: where their put (and
    /// the put of their progress, if any) is, so that a message finished before its batch
    /// leaves costs the batch nothing.
    pub(crate) fresh: Fresh,
    /// Operations made void since the last batch.
    pub(crate) dead: usize,
    /// While restoring: what is read before the messages it belongs to, and the sessions
    /// whose client was connected when the broker stopped.
    pub(crate) restoring: Option<Box<Restoring>>,
}

/// Messages put in the open batch, by tag: where their put and the put of their progress
/// ([`NO_OP`] if none) are. Tags are handed out in increasing order, so a vector in tag
/// order found by binary search does the work of a map without an allocation per message
/// (it is kept with every message of a durable broker); a finished message is marked, not
/// removed, and the whole is emptied when the batch leaves.
#[derive(Debug, Default)]
pub(crate) struct Fresh {
    /// (tag, put, progress) in tag order; `put` is [`NO_OP`] once finished.
    entries: Vec<(u64, usize, usize)>,
}

impl Fresh {
    fn clear(&mut self) {
        self.entries.clear();
    }

    fn insert(&mut self, tag: u64, put: usize, progress: usize) {
        match self.entries.last() {
            Some(last) if last.0 >= tag => {
                // Not in order (no caller does this): still found, at the cost of a move.
                let at = self.entries.partition_point(|e| e.0 < tag);
                if self.entries.get(at).is_some_and(|e| e.0 == tag) {
                    self.entries[at] = (tag, put, progress);
                } else {
                    self.entries.insert(at, (tag, put, progress));
                }
            }
            _ => self.entries.push((tag, put, progress)),
        }
    }

    fn find(&mut self, tag: u64) -> Option<&mut (u64, usize, usize)> {
        let at = self.entries.binary_search_by_key(&tag, |e| e.0).ok()?;
        Some(&mut self.entries[at]).filter(|e| e.1 != NO_OP)
    }

    /// Sets where the progress of message `tag` is put, if the message is fresh.
    fn set_progress(&mut self, tag: u64, progress: usize) {
        if let Some(e) = self.find(tag) {
            e.2 = progress;
        }
    }

    /// Where the put and the progress of message `tag` are, if it is fresh; it is not
    /// from then on.
    fn remove(&mut self, tag: u64) -> Option<(usize, usize)> {
        let e = self.find(tag)?;
        let found = (e.1, e.2);
        e.1 = NO_OP;
        Some(found)
    }
}

#[derive(Debug, Default)]
pub(crate) struct Restoring {
    /// Progress entries by message key: packet identifier and stage.
    progress: BTreeMap<Vec<u8>, (PacketId, Stage)>,
    /// Sessions that had a connection, with the will it would leave (and its delay).
    connected: Vec<(usize, Option<(Message, u32)>)>,
    /// Importing one session from the cluster's store while the broker serves: its
    /// number, and its stored messages, kept apart from what was queued to it here since
    /// it was made (they go first: they are older).
    pub(crate) import: Option<(usize, SessionState)>,
}

impl Restoring {
    /// For [`Broker::cluster_import`]: one session's entries, while the broker serves.
    pub(crate) fn importing() -> Box<Self> {
        Box::new(Self {
            import: Some((usize::MAX, SessionState::default())),
            ..Self::default()
        })
    }
}

/// The first byte of every stored value: the format it is in. A reader refuses a value of
/// a newer format rather than misread it.
const FORMAT: u8 = 1;

const CONNECTED: u8 = 1;
const HAS_WILL: u8 = 1 << 1;
/// `expires_at` of a session that never expires.
const NEVER: u64 = u64::MAX;

/// A session's key prefix in `Messages`, `Progress` and `Incoming`: the client identifier,
/// length first, so that no identifier's prefix is another's.
fn session_prefix(client_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(2 + client_id.len() + 8);
    // Client identifiers are UTF-8 strings of at most 65,535 bytes.
    k.extend_from_slice(&(client_id.len() as u16).to_be_bytes());
    k.extend_from_slice(client_id.as_bytes());
    k
}

/// A stored message's key: its session, then its sequence number, so that a session's
/// messages read back in the order they were queued ([MQTT-4.6.0-1]).
fn message_key(client_id: &str, tag: u64) -> Vec<u8> {
    let mut k = session_prefix(client_id);
    k.extend_from_slice(&tag.to_be_bytes());
    k
}

fn incoming_key(client_id: &str, packet_id: PacketId) -> Vec<u8> {
    let mut k = session_prefix(client_id);
    k.extend_from_slice(&packet_id.get().to_be_bytes());
    k
}

/// The client identifier and what follows it in a key made by [`session_prefix`].
pub(crate) fn split_key(table: Table, key: &[u8]) -> Result<(&str, &[u8]), Error> {
    let corrupt = |reason| Error::Corrupt { table, reason };
    let (len, rest) = key
        .split_first_chunk::<2>()
        .ok_or(corrupt("key too short"))?;
    let len = usize::from(u16::from_be_bytes(*len));
    if rest.len() < len {
        return Err(corrupt("key too short"));
    }
    let (id, rest) = rest.split_at(len);
    let id = core::str::from_utf8(id).map_err(|_| corrupt("client identifier not UTF-8"))?;
    Ok((id, rest))
}

/// Reads a stored value, every read checked: a damaged value is an error, not a panic.
struct Reader<'a> {
    buf: &'a [u8],
    table: Table,
}

impl<'a> Reader<'a> {
    /// A value of `table`, after its format byte.
    fn new(table: Table, buf: &'a [u8]) -> Result<Self, Error> {
        let mut r = Self { buf, table };
        match r.u8()? {
            FORMAT => Ok(r),
            0 => Err(r.corrupt("format 0")),
            _ => Err(r.corrupt("written by a newer version")),
        }
    }

    fn corrupt(&self, reason: &'static str) -> Error {
        Error::Corrupt {
            table: self.table,
            reason,
        }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], Error> {
        if self.buf.len() < n {
            return Err(self.corrupt("truncated"));
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }

    fn u8(&mut self) -> Result<u8, Error> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16, Error> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }

    fn u32(&mut self) -> Result<u32, Error> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, Error> {
        let mut a = [0; 8];
        a.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(a))
    }

    fn message(&mut self) -> Result<Message, Error> {
        let len = self.u32()? as usize;
        let bytes = Bytes::copy_from_slice(self.take(len)?);
        Message::from_stored(&bytes).map_err(|_| self.corrupt("damaged message"))
    }

    fn end(&self) -> Result<(), Error> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(self.corrupt("bytes after the value"))
        }
    }
}

/// Appends `message` length first.
fn put_message(out: &mut Vec<u8>, message: &Message) {
    let at = out.len();
    out.extend_from_slice(&[0; 4]);
    // A message the broker accepted always encodes (it was decoded or built checked);
    // should one not, it is stored empty and refused as damaged on restore rather than
    // stop the broker now.
    let _ = message.to_stored(out);
    let len = (out.len() - at - 4) as u32;
    out[at..at + 4].copy_from_slice(&len.to_be_bytes());
}

/// No operation in `fresh`.
const NO_OP: usize = usize::MAX;

/// What a void operation becomes until the batch leaves: a delete of the empty key, which
/// no entry has, so that even one that leaked would change nothing.
fn tombstone() -> StoreOp {
    StoreOp::Delete {
        table: Table::Messages,
        key: Vec::new(),
    }
}

fn is_tombstone(op: &StoreOp) -> bool {
    matches!(op, StoreOp::Delete { table: Table::Messages, key } if key.is_empty())
}

fn instant_ms(at: Instant) -> u64 {
    at.as_millis()
}

// ---- What the core stores, as it happens ------------------------------------------------

impl<H: Hooks> Broker<H> {
    /// Whether changes are stored at all.
    #[inline]
    pub(crate) fn persisting(&self) -> bool {
        self.config.persistence != Persistence::Off
    }

    fn put(&mut self, table: Table, key: Vec<u8>, value: Vec<u8>) {
        self.store.ops.push(StoreOp::Put { table, key, value });
    }

    fn delete(&mut self, table: Table, key: Vec<u8>) {
        self.store.ops.push(StoreOp::Delete { table, key });
    }

    /// Whether session `s` is kept in the store: it outlives its connection, or its client
    /// left a will that a crash must publish.
    pub(crate) fn session_is_stored(&self, s: usize) -> bool {
        let Some(rec) = self.sessions.get(s).and_then(Option::as_ref) else {
            return false;
        };
        if rec.expiry > 0 {
            return true;
        }
        match rec.conn {
            Some(id) => self
                .conn(id)
                .and_then(|c| c.extra.as_ref())
                .is_some_and(|e| e.will.is_some()),
            None => rec
                .offline
                .as_ref()
                .is_some_and(|o| o.pending_will.is_some()),
        }
    }

    /// Writes session `s`'s record (expiry, subscriptions, will, whether connected) if it
    /// is one the store keeps.
    pub(crate) fn store_session(&mut self, s: usize) {
        if !self.persisting() || !self.session_is_stored(s) {
            return;
        }
        let Some(rec) = self.sessions.get(s).and_then(Option::as_ref) else {
            return;
        };
        let mut v = Vec::with_capacity(64);
        v.push(FORMAT);
        let mut flags = 0;
        let mut will: Option<(&Message, u64)> = None;
        let mut expires_at = NEVER;
        match rec.conn {
            Some(id) => {
                flags |= CONNECTED;
                if let Some(w) = self
                    .conn(id)
                    .and_then(|c| c.extra.as_ref())
                    .and_then(|e| e.will.as_deref())
                {
                    // Connected: the delay, counted from the (abnormal) close.
                    will = Some((&w.0, u64::from(w.1)));
                }
            }
            None => {
                if let Some(o) = rec.offline.as_deref() {
                    expires_at = o.expires_at.map_or(NEVER, instant_ms);
                    // Offline: when it is due.
                    will = o.pending_will.as_ref().map(|(m, at)| (m, instant_ms(*at)));
                }
            }
        }
        if will.is_some() {
            flags |= HAS_WILL;
        }
        v.push(flags);
        v.extend_from_slice(&rec.expiry.to_be_bytes());
        v.extend_from_slice(&expires_at.to_be_bytes());
        if let Some((m, at)) = will {
            v.extend_from_slice(&at.to_be_bytes());
            put_message(&mut v, m);
        }
        v.extend_from_slice(&(rec.filters.len() as u32).to_be_bytes());
        for (filter, version) in &rec.filters {
            let opts = parse_subscription(filter, *version)
                .and_then(|sub| self.tree.get(sub, &(s as u32)));
            let Some(o) = opts else { continue };
            v.extend_from_slice(&(filter.len() as u16).to_be_bytes());
            v.extend_from_slice(filter.as_bytes());
            v.push(*version as u8);
            v.push(o.qos as u8 | u8::from(o.no_local) << 2 | u8::from(o.retain_as_published) << 3);
            v.extend_from_slice(&o.id.map_or(0, SubscriptionId::get).to_be_bytes());
        }
        let key = rec.client_id.as_bytes().to_vec();
        self.put(Table::Sessions, key, v);
    }

    /// Removes everything stored for the session of `client_id`.
    pub(crate) fn forget_session(&mut self, client_id: &str) {
        if !self.persisting() {
            return;
        }
        self.delete(Table::Sessions, client_id.as_bytes().to_vec());
        let prefix = session_prefix(client_id);
        for table in [Table::Messages, Table::Progress, Table::Incoming] {
            self.store.ops.push(StoreOp::DeletePrefix {
                table,
                prefix: prefix.clone(),
            });
        }
    }

    /// The tag a QoS 1/2 message for session `s` is queued with: a new one when the
    /// session's messages are stored, else 0. A sequence number with the QoS in its low
    /// bit (1 for QoS 2): only a QoS 2 message ever has a progress entry to delete, and a
    /// session's tags still sort in the order its messages were queued.
    pub(crate) fn message_tag(&mut self, s: usize, message: &Message) -> u64 {
        let stored = self.persisting()
            && message.qos != QoS::AtMostOnce
            && self
                .sessions
                .get(s)
                .and_then(Option::as_ref)
                .is_some_and(|r| r.expiry > 0);
        if !stored {
            return 0;
        }
        self.store.last_tag += 1;
        self.store.last_tag << 1 | u64::from(message.qos == QoS::ExactlyOnce)
    }

    /// Stores a message queued for session `s` with `tag`.
    pub(crate) fn store_message(
        &mut self,
        now: Instant,
        s: usize,
        tag: u64,
        packet_id: Option<PacketId>,
        message: &Message,
        ids: &[SubscriptionId],
    ) {
        let Some(rec) = self.sessions.get(s).and_then(Option::as_ref) else {
            return;
        };
        let key = message_key(&rec.client_id, tag);
        if message.qos == QoS::ExactlyOnce && packet_id.is_some() {
            // A QoS 2 PUBLISH must not leave under an identifier a restart forgets: the
            // receiver would hold it, and take the next message under it for a repeat.
            self.store.hazard = true;
        }
        let mut v = Vec::with_capacity(32 + message.topic.as_str().len() + message.payload.len());
        v.push(FORMAT);
        v.extend_from_slice(&instant_ms(now).to_be_bytes());
        v.extend_from_slice(&packet_id.map_or(0, PacketId::get).to_be_bytes());
        v.push(ids.len().min(255) as u8);
        for id in ids.iter().take(255) {
            v.extend_from_slice(&id.get().to_be_bytes());
        }
        put_message(&mut v, message);
        self.put(Table::Messages, key, v);
        let at = self.store.ops.len() - 1;
        self.store.fresh.insert(tag, at, NO_OP);
    }

    /// What a connection's machine reported about stored state (`owner` its session).
    pub(crate) fn on_stored_event(&mut self, owner: usize, event: StoredEvent) {
        if !self.persisting() {
            return;
        }
        let Some(rec) = self.sessions.get(owner).and_then(Option::as_ref) else {
            return;
        };
        if rec.expiry == 0 {
            return;
        }
        let client_id = &rec.client_id;
        match event {
            StoredEvent::Released { tag, packet_id } => {
                self.store.hazard = true;
                let key = message_key(client_id, tag);
                let v = [&[FORMAT][..], &packet_id.get().to_be_bytes(), &[1]].concat();
                self.put(Table::Progress, key, v);
                let at = self.store.ops.len() - 1;
                self.store.fresh.set_progress(tag, at);
            }
            StoredEvent::Finished { tag } => {
                if let Some((put, progress)) = self.store.fresh.remove(tag) {
                    // Put in the batch still open: it never reaches the store.
                    for at in [put, progress] {
                        if let Some(op) = self.store.ops.get_mut(at) {
                            *op = tombstone();
                            self.store.dead += 1;
                        }
                    }
                    return;
                }
                let key = message_key(client_id, tag);
                if tag & 1 == 1 {
                    // QoS 2: it may have a progress entry.
                    self.delete(Table::Progress, key.clone());
                }
                self.delete(Table::Messages, key);
            }
            StoredEvent::Received { packet_id } => {
                self.store.hazard = true;
                let key = incoming_key(client_id, packet_id);
                self.put(Table::Incoming, key, alloc::vec![FORMAT]);
            }
            StoredEvent::IncomingReleased { packet_id } => {
                self.store.hazard = true;
                let key = incoming_key(client_id, packet_id);
                self.delete(Table::Incoming, key);
            }
        }
    }

    /// A resumed session's queued messages took packet identifiers (`lacked[i]`: the
    /// `i`th had none before): stored, so that a restart resends them under the same
    /// identifiers.
    pub(crate) fn store_assigned_ids(&mut self, s: usize, lacked: &[bool]) {
        let Some(rec) = self.sessions.get(s).and_then(Option::as_ref) else {
            return;
        };
        let Some(c) = rec.conn.and_then(|id| self.conn(id)) else {
            return;
        };
        let mut ops = Vec::new();
        let mut hazard = false;
        for (q, _) in c
            .session
            .session()
            .queue
            .iter()
            .zip(lacked)
            .filter(|(_, lacked)| **lacked)
        {
            // QoS 2 only: a QoS 1 message may go again under another identifier (a
            // receiver does not tell QoS 1 repeats by it), and its progress entry would
            // cost every message a delete.
            if q.message.qos != QoS::ExactlyOnce {
                continue;
            }
            if let (Some(pid), true) = (q.packet_id, q.tag != 0) {
                // A QoS 2 message must not go out under an identifier a restart forgets.
                hazard = true;
                let v = [&[FORMAT][..], &pid.get().to_be_bytes(), &[0]].concat();
                ops.push(StoreOp::Put {
                    table: Table::Progress,
                    key: message_key(&rec.client_id, q.tag),
                    value: v,
                });
            }
        }
        self.store.ops.append(&mut ops);
        self.store.hazard |= hazard;
    }

    /// A retained message set (`Some`) or cleared on `topic`.
    pub(crate) fn store_retained(&mut self, now: Instant, topic: &str, message: Option<&Message>) {
        if !self.persisting() {
            return;
        }
        let key = topic.as_bytes().to_vec();
        match message {
            Some(m) => {
                let mut v = Vec::with_capacity(16 + topic.len() + m.payload.len());
                v.push(FORMAT);
                v.extend_from_slice(&instant_ms(now).to_be_bytes());
                put_message(&mut v, m);
                self.put(Table::Retained, key, v);
            }
            None => self.delete(Table::Retained, key),
        }
    }
}

/// What a machine reported that changes stored state.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StoredEvent {
    Released { tag: u64, packet_id: PacketId },
    Finished { tag: u64 },
    Received { packet_id: PacketId },
    IncomingReleased { packet_id: PacketId },
}

// ---- Restore ------------------------------------------------------------------------------

impl<H: Hooks> Broker<H> {
    fn restore_entry(
        &mut self,
        now: Instant,
        table: Table,
        key: &[u8],
        value: &[u8],
    ) -> Result<(), Error> {
        let restoring = self.store.restoring.get_or_insert_with(Box::default);
        let _ = restoring;
        match table {
            Table::Sessions => self.restore_session(now, key, value),
            Table::Progress => {
                let mut r = Reader::new(table, value)?;
                let pid = PacketId::new(r.u16()?).ok_or(r.corrupt("packet identifier 0"))?;
                let stage = match r.u8()? {
                    0 => Stage::Published,
                    1 => Stage::Released,
                    _ => return Err(r.corrupt("unknown stage")),
                };
                r.end()?;
                split_key(table, key)?;
                if let Some(rs) = self.store.restoring.as_mut() {
                    rs.progress.insert(key.to_vec(), (pid, stage));
                }
                Ok(())
            }
            Table::Messages => self.restore_message(key, value),
            Table::Incoming => {
                let (client_id, rest) = split_key(table, key)?;
                let corrupt = |reason| Error::Corrupt { table, reason };
                let pid = <[u8; 2]>::try_from(rest)
                    .ok()
                    .and_then(|b| PacketId::new(u16::from_be_bytes(b)))
                    .ok_or(corrupt("bad packet identifier"))?;
                Reader::new(table, value)?.end()?;
                let s = self
                    .session_of(client_id)
                    .ok_or(corrupt("for a session not stored"))?;
                let o = self.offline_mut(s);
                if let Err(at) = o.state.incoming_qos2.binary_search(&pid.get()) {
                    o.state.incoming_qos2.insert(at, pid.get());
                }
                Ok(())
            }
            Table::Retained => {
                let corrupt = |reason| Error::Corrupt { table, reason };
                let topic = core::str::from_utf8(key).map_err(|_| corrupt("topic not UTF-8"))?;
                let mut r = Reader::new(table, value)?;
                let stored = Instant::from_millis(r.u64()?);
                let m = r.message()?;
                r.end()?;
                if m.topic.as_str() != topic || !m.retain {
                    return Err(corrupt("key and message disagree"));
                }
                let expired = m.properties().message_expiry_interval.is_some_and(|e| {
                    now.saturating_since(stored) >= Duration::from_secs(u64::from(e))
                });
                if expired {
                    self.delete(Table::Retained, key.to_vec());
                } else {
                    let name = m.topic.clone();
                    self.retained.insert(name.as_topic_name(), (m, stored));
                }
                Ok(())
            }
        }
    }

    /// The offline record of session `s`, made if it has none.
    fn offline_mut(&mut self, s: usize) -> &mut Offline {
        let rec = self.sessions[s].as_mut().expect("restored session");
        rec.offline.get_or_insert_with(Box::default)
    }

    fn restore_session(&mut self, _now: Instant, key: &[u8], value: &[u8]) -> Result<(), Error> {
        let table = Table::Sessions;
        let corrupt = |reason| Error::Corrupt { table, reason };
        let client_id =
            core::str::from_utf8(key).map_err(|_| corrupt("client identifier not UTF-8"))?;
        let importing = self
            .store
            .restoring
            .as_ref()
            .and_then(|rs| rs.import.as_ref())
            .map(|(s, _)| *s);
        let existing = self.session_of(client_id);
        // An import reads the record again once the previous owner let go: the later one
        // replaces the first.
        let update = existing.filter(|s| importing == Some(*s));
        if existing.is_some() && update.is_none() {
            return Err(corrupt("session stored twice"));
        }
        let mut r = Reader::new(table, value)?;
        let flags = r.u8()?;
        let expiry = r.u32()?;
        let expires_at = r.u64()?;
        let will = if flags & HAS_WILL != 0 {
            let at = r.u64()?;
            Some((r.message()?, at))
        } else {
            None
        };
        let n = r.u32()?;
        let mut filters = Vec::new();
        for _ in 0..n {
            let len = usize::from(r.u16()?);
            let filter =
                core::str::from_utf8(r.take(len)?).map_err(|_| corrupt("filter not UTF-8"))?;
            let version = ProtocolVersion::try_from(r.u8()?)
                .map_err(|_| corrupt("unknown protocol level"))?;
            let o = r.u8()?;
            let qos = QoS::try_from(o & 3).map_err(|_| corrupt("bad QoS"))?;
            let id = SubscriptionId::new(r.u32()?);
            let opts = SubOpts {
                qos,
                no_local: o & 4 != 0,
                retain_as_published: o & 8 != 0,
                id,
            };
            if parse_subscription(filter, version).is_none() {
                return Err(corrupt("invalid filter"));
            }
            filters.push((Box::<str>::from(filter), version, opts));
        }
        r.end()?;
        let s = match update {
            Some(s) => {
                // Filters gone since the first read leave; those still there stay in the
                // tree (their interest on the bus never lapses).
                let old = self.sessions[s]
                    .as_mut()
                    .map(|r| core::mem::take(&mut r.filters))
                    .unwrap_or_default();
                for (filter, version) in old {
                    if filters
                        .iter()
                        .any(|(f, v, _)| *f == filter && *v == version)
                    {
                        continue;
                    }
                    if let Some(sub) = parse_subscription(&filter, version) {
                        self.tree_remove(sub, s as u32);
                    }
                }
                if let Some(rs) = self.store.restoring.as_mut() {
                    rs.connected.retain(|(c, _)| *c != s);
                }
                s
            }
            None => self.new_session(client_id.into()),
        };
        if let Some((slot, _)) = self
            .store
            .restoring
            .as_mut()
            .and_then(|rs| rs.import.as_mut())
        {
            *slot = s;
        }
        for (filter, version, opts) in filters {
            if let Some(sub) = parse_subscription(&filter, version) {
                self.tree_insert(sub, s as u32, opts);
            }
            if let Some(rec) = self.sessions[s].as_mut() {
                rec.filters.push((filter, version));
            }
        }
        let connected = flags & CONNECTED != 0;
        if let Some(rec) = self.sessions[s].as_mut() {
            rec.expiry = expiry;
        }
        let o = self.offline_mut(s);
        if connected {
            // Its client was connected when the broker stopped: handled as an abnormal
            // close when the restore ends, the will with its delay.
            let will = will.map(|(m, delay)| (m, u32::try_from(delay).unwrap_or(u32::MAX)));
            if let Some(rs) = self.store.restoring.as_mut() {
                rs.connected.push((s, will));
            }
        } else {
            o.expires_at = (expires_at != NEVER).then(|| Instant::from_millis(expires_at));
            o.pending_will = will.map(|(m, at)| (m, Instant::from_millis(at)));
        }
        Ok(())
    }

    fn restore_message(&mut self, key: &[u8], value: &[u8]) -> Result<(), Error> {
        let table = Table::Messages;
        let corrupt = |reason| Error::Corrupt { table, reason };
        let (client_id, rest) = split_key(table, key)?;
        let tag = <[u8; 8]>::try_from(rest)
            .map(u64::from_be_bytes)
            .map_err(|_| corrupt("bad sequence number"))?;
        if tag == 0 {
            return Err(corrupt("sequence number 0"));
        }
        let mut r = Reader::new(table, value)?;
        let queued_at = Instant::from_millis(r.u64()?);
        let pid = PacketId::new(r.u16()?);
        let n = r.u8()?;
        let mut ids = SubscriptionIdList::new();
        for _ in 0..n {
            ids.push(SubscriptionId::new(r.u32()?).ok_or(corrupt("subscription identifier 0"))?);
        }
        let message = r.message()?;
        r.end()?;
        if message.qos == QoS::AtMostOnce {
            return Err(corrupt("a stored message is QoS 1 or 2"));
        }
        let s = self
            .session_of(client_id)
            .ok_or(corrupt("for a session not stored"))?;
        let progress = self
            .store
            .restoring
            .as_mut()
            .and_then(|rs| rs.progress.remove(key));
        self.store.last_tag = self.store.last_tag.max(tag >> 1);
        let (pid, stage) = match progress {
            Some((pid, stage)) => (Some(pid), stage),
            None => (pid, Stage::Published),
        };
        let outgoing = Outgoing {
            message,
            queued_at,
            subscription_ids: ids,
            packet_id: pid,
            tag,
        };
        let window = usize::from(self.config.server.max_inflight);
        let staged = self
            .store
            .restoring
            .as_mut()
            .and_then(|rs| rs.import.as_mut())
            .filter(|(i, _)| *i == s);
        let state = match staged {
            Some((_, state)) => state,
            None => &mut self.offline_mut(s).state,
        };
        place(state, window, outgoing, pid, stage);
        Ok(())
    }

    fn restore_finish(&mut self, now: Instant) {
        let Some(mut rs) = self.store.restoring.take() else {
            return;
        };
        let mut import = rs.import.take();
        if let Some((s, staged)) = import.as_mut() {
            // The stored messages first, then what was queued here since the session came.
            if self.sessions.get(*s).is_some_and(Option::is_some) {
                let o = self.offline_mut(*s);
                let mut state = core::mem::take(staged);
                state.inflight.extend(o.state.inflight.drain(..));
                state.queue.extend(o.state.queue.drain(..));
                for p in o.state.incoming_qos2.drain(..) {
                    if let Err(at) = state.incoming_qos2.binary_search(&p) {
                        state.incoming_qos2.insert(at, p);
                    }
                }
                o.state = state;
            }
        }
        // Progress without its message: the message finished in the same batch.
        for key in rs.progress.into_keys() {
            self.delete(Table::Progress, key);
        }
        for (s, will) in rs.connected {
            let expiry = self.sessions[s].as_ref().map_or(0, |r| r.expiry);
            // [MQTT-3.1.2-8] the broker stopping is an abnormal close: the will goes,
            // after its delay, or now with a session that ends now.
            let mut pending = None;
            if let Some((w, delay)) = will {
                if delay == 0 || expiry == 0 {
                    self.route(now, Some(s), None, w);
                } else {
                    pending = Some((w, now + Duration::from_secs(u64::from(delay))));
                }
            }
            if expiry == 0 {
                self.end_session(s);
                continue;
            }
            let o = self.offline_mut(s);
            o.expires_at =
                (expiry != u32::MAX).then(|| now + Duration::from_secs(u64::from(expiry)));
            o.pending_will = pending;
            self.store_session(s);
        }
        // Deadlines passed while the broker was down come up at once.
        match import {
            // One session, while serving: only its own.
            Some((s, _)) => {
                if self.sessions.get(s).is_some_and(Option::is_some) {
                    self.rearm_session(s);
                }
            }
            None => {
                for s in 0..self.sessions.len() {
                    if self.sessions[s].is_some() {
                        self.rearm_session(s);
                    }
                }
            }
        }
        self.handle_timeout(now);
    }
}

/// Puts a stored message back into a session's state.
fn place(
    o: &mut SessionState,
    window: usize,
    outgoing: Outgoing,
    pid: Option<PacketId>,
    stage: Stage,
) {
    match (stage, pid) {
        // [MQTT-4.3.3-6] PUBREC was received: PUBREL is what goes again.
        (Stage::Released, Some(pid)) => {
            o.inflight
                .push_back(Inflight::resumed(pid, outgoing, Stage::Released))
        }
        // A session sends in order, at most its window at a time: of the messages
        // with an identifier, only the first `max_inflight` can have been sent. They
        // go again with DUP ([MQTT-3.3.1-1]: it may be a re-delivery) under their
        // identifier, which a QoS 2 receiver knows them by ([MQTT-4.3.3-10]), within
        // the client's quota ([MQTT-4.9.0-2]); the rest go as the first time.
        (Stage::Published, Some(pid)) if o.inflight.len() < window && o.queue.is_empty() => o
            .inflight
            .push_back(Inflight::resumed(pid, outgoing, Stage::Published)),
        _ => o.queue.push_back(outgoing),
    }
}
