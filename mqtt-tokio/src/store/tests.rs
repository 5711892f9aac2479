use super::*;

fn put(table: Table, key: &[u8], value: &[u8]) -> StoreOp {
    StoreOp::Put {
        table,
        key: key.to_vec(),
        value: value.to_vec(),
    }
}

type Entries = Vec<(Table, Vec<u8>, Vec<u8>)>;

/// Everything `store` holds, in the order `load` visits it, and the load's result.
fn dump(store: &mut dyn Store) -> (Entries, Loaded) {
    let mut out = Vec::new();
    let loaded = store
        .load(&mut |_, t, k, v| {
            out.push((t, k.to_vec(), v.to_vec()));
            Ok(())
        })
        .unwrap();
    (out, loaded)
}

fn e(t: Table, k: &[u8], v: &[u8]) -> (Table, Vec<u8>, Vec<u8>) {
    (t, k.to_vec(), v.to_vec())
}

/// A scratch directory, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let p = std::env::temp_dir().join(format!(
            "mqtt-tokio-store-{name}-{}-{}",
            std::process::id(),
            unix_millis()
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The same scenario on any store; `reopen` gives the store as a restart finds it.
fn round_trip(mut reopen: impl FnMut() -> Box<dyn Store>) {
    let mut s = reopen();
    let (entries, loaded) = dump(&mut *s);
    assert!(entries.is_empty());
    assert_eq!(loaded.resume_at, Instant::ZERO);
    s.commit(
        &[
            put(Table::Retained, b"a/b", b"r1"),
            put(Table::Sessions, b"c1", b"s1"),
            put(Table::Sessions, b"c2", b"s2"),
            // The same key in another table is another entry.
            put(Table::Messages, b"c1", b"m-not-a-session"),
            put(Table::Messages, b"c1\x00\x01", b"m1"),
            put(Table::Messages, b"c1\x00\x02", b"m2"),
            put(Table::Messages, b"c1\xff", b"m3"),
            put(Table::Messages, b"c2\x00\x01", b"n1"),
            put(Table::Progress, b"c1\x00\x01", b"p1"),
            put(Table::Incoming, b"c1", b"i1"),
            put(Table::Sessions, b"c2", b"s2-changed"),
        ],
        Instant::from_millis(5_000),
    )
    .unwrap();
    drop(s);
    let mut s = reopen();
    let (entries, loaded) = dump(&mut *s);
    // Table::ALL order: sessions, progress, messages, incoming, retained.
    assert_eq!(
        entries,
        vec![
            e(Table::Sessions, b"c1", b"s1"),
            e(Table::Sessions, b"c2", b"s2-changed"),
            e(Table::Progress, b"c1\x00\x01", b"p1"),
            e(Table::Messages, b"c1", b"m-not-a-session"),
            e(Table::Messages, b"c1\x00\x01", b"m1"),
            e(Table::Messages, b"c1\x00\x02", b"m2"),
            e(Table::Messages, b"c1\xff", b"m3"),
            e(Table::Messages, b"c2\x00\x01", b"n1"),
            e(Table::Incoming, b"c1", b"i1"),
            e(Table::Retained, b"a/b", b"r1"),
        ]
    );
    assert_eq!(loaded.entries, 10);
    // The clock goes on from the last commit (plus the wall-clock time since).
    assert!(loaded.resume_at >= Instant::from_millis(5_000));
    assert!(loaded.resume_at < Instant::from_millis(5_000 + 60_000));

    s.commit(
        &[
            // Every key starting with "c1\0", not "c1" itself nor "c1\xff", nor another
            // table's.
            StoreOp::DeletePrefix {
                table: Table::Messages,
                prefix: b"c1\x00".to_vec(),
            },
            StoreOp::Delete {
                table: Table::Sessions,
                key: b"c2".to_vec(),
            },
            StoreOp::Delete {
                table: Table::Sessions,
                key: b"never-there".to_vec(),
            },
        ],
        Instant::from_millis(9_000),
    )
    .unwrap();
    drop(s);
    let mut s = reopen();
    let (entries, loaded) = dump(&mut *s);
    assert_eq!(
        entries,
        vec![
            e(Table::Sessions, b"c1", b"s1"),
            e(Table::Progress, b"c1\x00\x01", b"p1"),
            e(Table::Messages, b"c1", b"m-not-a-session"),
            e(Table::Messages, b"c1\xff", b"m3"),
            e(Table::Messages, b"c2\x00\x01", b"n1"),
            e(Table::Incoming, b"c1", b"i1"),
            e(Table::Retained, b"a/b", b"r1"),
        ]
    );
    assert!(loaded.resume_at >= Instant::from_millis(9_000));

    // A prefix of 0xFF bytes runs to the end; an empty prefix is the whole table.
    s.commit(
        &[
            StoreOp::DeletePrefix {
                table: Table::Messages,
                prefix: b"c1\xff".to_vec(),
            },
            StoreOp::DeletePrefix {
                table: Table::Retained,
                prefix: Vec::new(),
            },
        ],
        Instant::from_millis(9_001),
    )
    .unwrap();
    drop(s);
    let mut s = reopen();
    let (entries, _) = dump(&mut *s);
    assert_eq!(
        entries,
        vec![
            e(Table::Sessions, b"c1", b"s1"),
            e(Table::Progress, b"c1\x00\x01", b"p1"),
            e(Table::Messages, b"c1", b"m-not-a-session"),
            e(Table::Messages, b"c2\x00\x01", b"n1"),
            e(Table::Incoming, b"c1", b"i1"),
        ]
    );
}

#[test]
fn memory_round_trip() {
    let store = MemoryStore::new();
    round_trip(|| Box::new(store.clone()));
    assert_eq!(store.commits(), 3);
}

#[test]
fn redb_round_trip() {
    let dir = TempDir::new("round-trip");
    let path = dir.0.clone();
    round_trip(|| Box::new(RedbStore::open(&path).unwrap()));
    assert!(dir.0.join(FILE_NAME).is_file());
}

#[test]
fn redb_file_path() {
    let dir = TempDir::new("file");
    let file = dir.0.join("my.db");
    let mut s = RedbStore::open(&file).unwrap();
    assert_eq!(s.path(), file);
    s.commit(&[put(Table::Retained, b"t", b"v")], Instant::from_millis(1))
        .unwrap();
    drop(s);
    let mut s = RedbStore::open(&file).unwrap();
    assert_eq!(dump(&mut s).0, vec![e(Table::Retained, b"t", b"v")]);
}

#[test]
fn prefix_successor() {
    assert_eq!(prefix_end(b"ab"), Some(b"ac".to_vec()));
    assert_eq!(prefix_end(b"a\xff"), Some(b"b".to_vec()));
    assert_eq!(prefix_end(b"\xff\xff"), None);
    assert_eq!(prefix_end(b""), None);
}

#[test]
fn clock_counts_the_downtime() {
    assert_eq!(resume_at(None, 1_000_000), Instant::ZERO);
    // Stopped at 5 s on its clock, at wall 1,000,000; back at wall 1,060,000: 65 s.
    assert_eq!(
        resume_at(Some((5_000, 1_000_000)), 1_060_000),
        Instant::from_millis(65_000)
    );
    // The wall clock went back: no time passed, never backwards.
    assert_eq!(
        resume_at(Some((5_000, 1_000_000)), 900_000),
        Instant::from_millis(5_000)
    );
}

#[test]
fn visitor_error_stops_the_load() {
    let mut store = MemoryStore::new();
    store
        .commit(
            &[
                put(Table::Sessions, b"a", b"1"),
                put(Table::Sessions, b"b", b"2"),
            ],
            Instant::ZERO,
        )
        .unwrap();
    let mut seen = 0;
    let err = store
        .load(&mut |_, t, _, _| {
            seen += 1;
            Err(mqtt_broker::Error::Corrupt {
                table: t,
                reason: "test",
            })
        })
        .unwrap_err();
    assert!(matches!(err, Error::StoreDamaged(_)), "{err}");
    assert_eq!(seen, 1);
}

/// A store with some entries, closed; its file.
fn filled(dir: &TempDir) -> PathBuf {
    let mut s = RedbStore::open(&dir.0).unwrap();
    for i in 0..200u32 {
        let ops: Vec<_> = (0..50u32)
            .map(|j| {
                put(
                    Table::Messages,
                    format!("client/{i:05}/{j:05}").as_bytes(),
                    &[i as u8; 200],
                )
            })
            .collect();
        s.commit(&ops, Instant::from_millis(u64::from(i))).unwrap();
    }
    s.path().to_path_buf()
}

/// Opening and loading `file` fails with a damaged-store error, without a panic.
fn assert_damaged(file: &Path) {
    let result = RedbStore::open(file).and_then(|mut s| s.load(&mut |_, _, _, _| Ok(())));
    match result {
        Err(Error::StoreDamaged(why)) => assert!(why.contains(&file.display().to_string())),
        other => panic!("expected StoreDamaged, got {other:?}"),
    }
    if let Err(e) = RedbStore::open(file) {
        eprintln!("DAMAGED: {e}");
    }
}

#[test]
fn redb_truncated() {
    let dir = TempDir::new("truncated");
    let file = filled(&dir);
    let len = std::fs::metadata(&file).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&file).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    assert_damaged(&file);
}

#[test]
fn redb_overwritten_in_the_middle() {
    let dir = TempDir::new("overwritten");
    let file = filled(&dir);
    let mut bytes = std::fs::read(&file).unwrap();
    let mid = bytes.len() / 2;
    for b in &mut bytes[mid..mid + 4096] {
        *b ^= 0x5A;
    }
    std::fs::write(&file, &bytes).unwrap();
    assert_damaged(&file);
}

#[test]
fn redb_random_bytes() {
    let dir = TempDir::new("random");
    let file = dir.0.join("random.redb");
    // A fixed xorshift sequence: the same "random" file on every run.
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let bytes: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect();
    std::fs::write(&file, bytes).unwrap();
    assert_damaged(&file);
}

#[test]
fn redb_newer_version() {
    let dir = TempDir::new("version");
    let s = RedbStore::open(&dir.0).unwrap();
    s.set_format(99);
    drop(s);
    match RedbStore::open(&dir.0) {
        Err(Error::StoreVersion {
            found, supported, ..
        }) => {
            assert_eq!(found, 99);
            assert_eq!(supported, FORMAT_VERSION);
        }
        other => panic!("expected StoreVersion, got {other:?}"),
    }
}

#[test]
fn redb_in_use() {
    let dir = TempDir::new("in-use");
    let _first = RedbStore::open(&dir.0).unwrap();
    match RedbStore::open(&dir.0) {
        Err(Error::StoreInUse(_)) => {}
        other => panic!("expected StoreInUse, got {other:?}"),
    }
}

#[test]
fn redb_foreign_file() {
    let dir = TempDir::new("foreign");
    let file = dir.0.join("other.redb");
    let db = redb::Database::create(&file).unwrap();
    let tx = db.begin_write().unwrap();
    {
        let def: redb::TableDefinition<'_, u64, u64> = redb::TableDefinition::new("accounts");
        tx.open_table(def).unwrap().insert(1, 2).unwrap();
    }
    tx.commit().unwrap();
    drop(db);
    assert_damaged(&file);
}

/// A broker restored from a store another one committed to, through the helpers; an
/// entry the core cannot read stops the restore.
#[test]
fn restore_and_flush() {
    use mqtt_broker::{BrokerConfig, Persistence};
    let config = || BrokerConfig {
        persistence: Persistence::Sync,
        ..BrokerConfig::default()
    };
    let mut store = MemoryStore::new();
    let mut first = Broker::new(config(), Instant::ZERO);
    let mut ops = Vec::new();
    // Nothing changed: nothing written.
    assert_eq!(
        flush(&mut first, &mut store, Instant::ZERO, &mut ops).unwrap(),
        None
    );
    assert_eq!(store.commits(), 0);
    let topic = mqtt_state::TopicBuf::try_from("kept/1".to_owned()).unwrap();
    let mut m = mqtt_state::Message::new(topic, b"v".to_vec(), mqtt_state::codec::QoS::AtLeastOnce);
    m.retain = true;
    first.publish(Instant::from_millis(7), m);
    assert!(
        flush(&mut first, &mut store, Instant::from_millis(7), &mut ops)
            .unwrap()
            .is_some()
    );
    assert_eq!(store.commits(), 1);
    assert_eq!(store.entries(Table::Retained).len(), 1);
    drop(first);

    let mut second = Broker::new(config(), Instant::ZERO);
    let loaded = restore(&mut second, &mut store).unwrap();
    assert!(loaded.resume_at >= Instant::from_millis(7));
    assert_eq!(loaded.entries, 1);
    assert_eq!(second.stats().retained, 1);

    // Bytes the core cannot read.
    store
        .commit(
            &[put(Table::Retained, b"x", b"not an entry")],
            Instant::from_millis(8),
        )
        .unwrap();
    let mut third = Broker::new(config(), Instant::ZERO);
    match restore(&mut third, &mut store) {
        Err(Error::StoreDamaged(_)) => {}
        other => panic!("expected StoreDamaged, got {other:?}"),
    }
}

/// RedbStore writes a batch's net effect; it must leave what applying the batch in order
/// leaves (MemoryStore does that): random batches of puts, deletes and prefix deletions
/// over a few short keys, so that they overlap.
#[test]
fn redb_net_effect_matches_in_order() {
    let dir = TempDir::new("net");
    let mut redb = RedbStore::open(&dir.0).unwrap();
    let mut memory = MemoryStore::new();
    let mut x: u64 = 0x2545_F491_4F6C_DD1D;
    let mut next = move |n: u64| {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x % n
    };
    for batch in 0..60 {
        let mut ops = Vec::new();
        for _ in 0..(1 + next(25)) {
            let table = [Table::Messages, Table::Progress][next(2) as usize];
            let len = next(4) as usize;
            let key: Vec<u8> = (0..len)
                .map(|_| [b'a', b'b', 0xFF][next(3) as usize])
                .collect();
            ops.push(match next(5) {
                0 | 1 => StoreOp::Put {
                    table,
                    key,
                    value: vec![batch as u8, next(256) as u8],
                },
                2 | 3 => StoreOp::Delete { table, key },
                _ => StoreOp::DeletePrefix { table, prefix: key },
            });
        }
        let now = Instant::from_millis(batch);
        redb.commit(&ops, now).unwrap();
        memory.commit(&ops, now).unwrap();
        assert_eq!(
            dump(&mut redb).0,
            dump(&mut memory).0,
            "after batch {batch}: {ops:?}"
        );
    }
}
