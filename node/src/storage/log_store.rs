//! The Raft log and vote in RocksDB, with the durability contract openraft relies on.
//!
//! - `save_vote`, `truncate_after` and `purge` are one WriteBatch each, written with `sync`:
//!   durable before they return.
//! - `append` writes its entries as one WriteBatch without `sync`, so they are readable at once,
//!   and hands the openraft callback to the flusher thread. The flusher syncs the WAL once for
//!   every append queued behind it (group commit) and only then fires their callbacks. openraft
//!   treats an entry as accepted (votes for it, acknowledges it to a leader) only after its
//!   callback, so nothing is acknowledged before it is on disk.
//! - Vote and log share one RocksDB instance and so one WAL: a synced write also makes every
//!   earlier write durable, in order.
//!
//! Keys in the `log` column family are big-endian indexes, so iteration order is log order.
//! Values are a format byte followed by the MessagePack (named fields) of the openraft entry.

use std::io;
use std::ops::RangeBounds;
use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::Instant;

use openraft::storage::{LogState, RaftLogReader, RaftLogStorage};
use rocksdb::{
    ColumnFamilyDescriptor, DB, Direction, IteratorMode, Options, WriteBatch, WriteOptions,
};

use crate::faults::{self, Broken};
use crate::metrics;
use crate::raft::types::{Entry, IoFlushed, LogId, TypeConfig, Vote};

const CF_LOG: &str = "log";
const CF_META: &str = "meta";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_LAST_PURGED: &[u8] = b"last_purged";
/// Version byte of stored entries and metadata values.
const FORMAT_V1: u8 = 1;

/// The RocksDB-backed log store. Cheap to clone: clones share the database and the flusher.
#[derive(Clone)]
pub struct LogStore {
    db: Arc<Db>,
    flusher: Arc<Flusher>,
}

/// The open database, closed when the last holder (store clones, the flusher thread) lets go; it
/// says so to [`LogStore::closed`] only once RocksDB has released the folder.
struct Db {
    inner: Option<DB>,
    closed: tokio::sync::watch::Sender<bool>,
}

impl std::ops::Deref for Db {
    type Target = DB;

    fn deref(&self) -> &DB {
        self.inner.as_ref().expect("open until dropped")
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        drop(self.inner.take());
        self.closed.send_replace(true);
    }
}

/// The flusher thread. When the last store clone goes, it stops the thread and waits for it, so
/// the database is closed (its lock released) by the time the store is gone: a node restarted in
/// the same process can reopen it at once.
struct Flusher {
    queue: Option<mpsc::Sender<IoFlushed>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for Flusher {
    fn drop(&mut self) {
        self.queue.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl LogStore {
    /// Opens (or creates) the log database in `dir`.
    pub fn open(dir: &Path) -> Result<Self, String> {
        // RocksDB syncs its own folder but not the entry for it in the one above.
        super::durable::create_dir_all(dir)
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        // What a power cut leaves at the end of the WAL (a record cut short, zeros) was never
        // synced, so never acknowledged: replay stops before it and the node starts. Damage to a
        // whole record (a checksum mismatch), which may be inside the synced part, stops the
        // node instead. See "Durability" in ARCHITECTURE.md for why this mode and not the others.
        opts.set_wal_recovery_mode(rocksdb::DBRecoveryMode::TolerateCorruptedTailRecords);
        opts.set_paranoid_checks(true);
        let cfs =
            [CF_LOG, CF_META].map(|name| ColumnFamilyDescriptor::new(name, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir, cfs).map_err(|e| open_error(dir, &e))?;
        Ok(Self::with_db(db, sync_wal))
    }

    /// `sync` is what makes appended entries durable; tests substitute a gated one to prove
    /// that no callback fires before it returns.
    fn with_db(db: DB, sync: fn(&DB) -> Result<(), rocksdb::Error>) -> Self {
        let db = Arc::new(Db {
            inner: Some(db),
            closed: tokio::sync::watch::Sender::new(false),
        });
        let (tx, rx) = mpsc::channel::<IoFlushed>();
        let flusher_db = db.clone();
        let thread = std::thread::Builder::new()
            .name("raft-log-flusher".into())
            .spawn(move || run_flusher(&flusher_db, &rx, sync))
            .expect("spawn the raft log flusher thread");
        let flusher = Flusher {
            queue: Some(tx),
            thread: Some(thread),
        };
        Self {
            db,
            flusher: Arc::new(flusher),
        }
    }

    /// Resolves when every clone of this store is gone and the database is closed (its lock
    /// released, so the folder can be opened again).
    pub fn closed(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut closed = self.db.closed.subscribe();
        async move {
            // An error means the sender is gone, which happens only after the close too.
            let _ = closed.wait_for(|closed| *closed).await;
        }
    }

    fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family exists: created at open")
    }

    fn get_meta<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self
            .db
            .get_pinned_cf(self.cf(CF_META), key)
            .map_err(io_err)?
        {
            None => Ok(None),
            Some(bytes) => decode(&bytes).map(Some),
        }
    }

    fn write_synced(&self, batch: WriteBatch) -> io::Result<()> {
        let started = Instant::now();
        let mut opts = WriteOptions::default();
        opts.set_sync(true);
        let result = self.db.write_opt(batch, &opts).map_err(io_err);
        metrics::storage_sync(started.elapsed());
        result
    }

    fn last_log_id(&self) -> io::Result<Option<LogId>> {
        let mut iter = self.db.iterator_cf(self.cf(CF_LOG), IteratorMode::End);
        match iter.next() {
            None => Ok(None),
            Some(item) => {
                let (_, value) = item.map_err(io_err)?;
                let entry: Entry = decode(&value)?;
                Ok(Some(entry.log_id))
            }
        }
    }
}

/// Why the log did not open, and what the operator does about it.
fn open_error(dir: &Path, error: &rocksdb::Error) -> String {
    let dir = dir.display();
    match error.kind() {
        rocksdb::ErrorKind::Corruption => format!(
            "the raft log in {dir} is damaged inside its synced part ({error}): entries this node \
             acknowledged could be lost, so it will not start. If the other members are healthy, \
             remove this node (`baton cluster remove ID`), move the data dir aside, and add the \
             machine back under a new id; if this is the last copy, run `batond recover` on the \
             best survivor (docs/OPERATIONS.md, \"Damaged raft log\")"
        ),
        _ if is_disk_full(error.as_ref()) => format!(
            "cannot open the raft log in {dir}: its disk is full ({error}); free space there and \
             start the node again (docs/OPERATIONS.md, \"Full disk\")"
        ),
        _ => format!("cannot open the raft log at {dir}: {error}"),
    }
}

/// Whether a storage error says the disk is full (RocksDB reports ENOSPC in its message).
pub fn is_disk_full(message: &str) -> bool {
    message.contains("No space left on device") || message.contains("NoSpace")
}

fn sync_wal(db: &DB) -> Result<(), rocksdb::Error> {
    db.flush_wal(true)
}

/// Waits for appended batches; syncs the WAL once for all that are queued; fires their callbacks.
fn run_flusher(
    db: &DB,
    rx: &mpsc::Receiver<IoFlushed>,
    sync: fn(&DB) -> Result<(), rocksdb::Error>,
) {
    while let Ok(first) = rx.recv() {
        let mut waiting = vec![first];
        waiting.extend(rx.try_iter());
        let started = Instant::now();
        let result = sync(db);
        metrics::storage_sync(started.elapsed());
        metrics::storage_group_commit(waiting.len());
        for callback in waiting {
            callback.io_completed(result.clone().map_err(io_err));
        }
    }
}

fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

fn encode<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = vec![FORMAT_V1];
    rmp_serde::encode::write_named(&mut out, value).expect("raft record encodes");
    out
}

fn decode<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    match bytes.split_first() {
        Some((&FORMAT_V1, body)) => rmp_serde::from_slice(body).map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("corrupt raft record: {e}"),
            )
        }),
        Some((v, _)) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("raft record format {v} is not supported by this batond"),
        )),
        None => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "empty raft record",
        )),
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + std::fmt::Debug + Send>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        use std::ops::Bound;
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let key = index_key(start);
        let iter = self.db.iterator_cf(
            self.cf(CF_LOG),
            IteratorMode::From(&key, Direction::Forward),
        );
        let mut entries = Vec::new();
        for item in iter {
            let (k, v) = item.map_err(io_err)?;
            let index =
                u64::from_be_bytes(k.as_ref().try_into().map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidData, "corrupt raft log key")
                })?);
            if !range.contains(&index) {
                break;
            }
            entries.push(decode(&v)?);
        }
        Ok(entries)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_meta(KEY_VOTE)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_meta(KEY_LAST_PURGED)?;
        let last_log_id = self.last_log_id()?.or(last_purged_log_id);
        Ok(LogState {
            last_purged_log_id,
            last_log_id,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), KEY_VOTE, encode(vote));
        self.write_synced(batch)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        // Not synced: a lost commit index only means re-learning it from the leader. The WAL is
        // sequential, so a committed index that survives a crash has its entries behind it.
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), KEY_COMMITTED, encode(&committed));
        self.db.write(batch).map_err(io_err)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        Ok(self.get_meta::<Option<LogId>>(KEY_COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IoFlushed) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let mut batch = WriteBatch::default();
        let cf = self.cf(CF_LOG);
        let mut count = 0;
        for entry in entries {
            batch.put_cf(cf, index_key(entry.log_id.index), encode(&entry));
            count += 1;
        }
        metrics::storage_append(count);
        let started = Instant::now();
        self.db.write(batch).map_err(io_err)?;
        metrics::storage_write(started.elapsed());
        if faults::active(Broken::AckBeforeSync) {
            // Broken build: written to the WAL file (the page cache), never synced for it.
            callback.io_completed(Ok(()));
            return Ok(());
        }
        self.flusher
            .queue
            .as_ref()
            .expect("the queue lives as long as the store")
            .send(callback)
            .map_err(|_| io::Error::other("the raft log flusher has stopped"))
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = last_log_id.map_or(0, |id| id.index + 1);
        let mut batch = WriteBatch::default();
        batch.delete_range_cf(self.cf(CF_LOG), index_key(from), index_key(u64::MAX));
        // delete_range's end is exclusive; u64::MAX is never a real index.
        self.write_synced(batch)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        let mut batch = WriteBatch::default();
        batch.put_cf(self.cf(CF_META), KEY_LAST_PURGED, encode(&log_id));
        batch.delete_range_cf(self.cf(CF_LOG), index_key(0), index_key(log_id.index + 1));
        self.write_synced(batch)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use openraft::testing::log::{StoreBuilder, Suite};
    use openraft::type_config::TypeConfigExt;

    use super::*;
    use crate::storage::StateMachineStore;

    struct Builder;

    impl StoreBuilder<TypeConfig, LogStore, StateMachineStore, tempfile::TempDir> for Builder {
        async fn build(
            &self,
        ) -> Result<
            (tempfile::TempDir, LogStore, StateMachineStore),
            openraft::StorageError<TypeConfig>,
        > {
            let dir = tempfile::tempdir().expect("temp dir");
            let log = LogStore::open(&dir.path().join("log")).expect("open log");
            let sm = StateMachineStore::open(&dir.path().join("snapshots")).expect("open sm");
            Ok((dir, log, sm))
        }
    }

    /// openraft's storage conformance suite, against the real RocksDB store.
    #[test]
    fn openraft_storage_suite() {
        TypeConfig::run(async {
            Suite::test_all(Builder)
                .await
                .expect("storage suite passes");
        });
    }

    static SYNC_OPEN: AtomicBool = AtomicBool::new(false);
    static SYNCED: AtomicBool = AtomicBool::new(false);

    /// Stands in for the WAL sync: blocks until the test opens the gate, then records that a
    /// sync really happened.
    fn gated_sync(db: &DB) -> Result<(), rocksdb::Error> {
        while !SYNC_OPEN.load(Ordering::SeqCst) {
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        let result = db.flush_wal(true);
        SYNCED.store(true, Ordering::SeqCst);
        result
    }

    /// The contract that some Raft stores broke: an append is acknowledged to openraft only after
    /// the WAL sync that makes it durable, never on return from `append`.
    #[tokio::test]
    async fn append_callback_fires_only_after_the_sync() {
        let dir = tempfile::tempdir().unwrap();
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        let cfs = [CF_LOG, CF_META].map(|n| ColumnFamilyDescriptor::new(n, Options::default()));
        let db = DB::open_cf_descriptors(&opts, dir.path(), cfs).unwrap();
        let mut store = LogStore::with_db(db, gated_sync);

        let (tx, rx) = TypeConfig::oneshot();
        let mut rx = Box::pin(rx);
        let entries = vec![openraft::testing::blank_ent::<TypeConfig>(1, 1, 1)];
        store.append(entries, IoFlushed::signal(tx)).await.unwrap();

        // Readable as soon as append returns...
        let read = store.try_get_log_entries(1..2).await.unwrap();
        assert_eq!(read.len(), 1);
        // ...but not acknowledged: the sync is held closed, so the callback must not have fired.
        // Give the flusher thread every chance to (wrongly) fire while the gate is closed.
        for _ in 0..50 {
            tokio::task::yield_now().await;
            std::thread::sleep(std::time::Duration::from_millis(1));
            assert!(
                futures::poll!(rx.as_mut()).is_pending(),
                "callback fired before the WAL sync"
            );
        }
        assert!(!SYNCED.load(Ordering::SeqCst));

        SYNC_OPEN.store(true, Ordering::SeqCst);
        let flushed = rx.await.expect("callback fires once synced");
        assert!(flushed.is_ok());
        assert!(
            SYNCED.load(Ordering::SeqCst),
            "callback fired without a sync"
        );
    }

    #[tokio::test]
    async fn the_log_survives_reopening_and_purge_is_remembered() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut store = LogStore::open(dir.path()).unwrap();
            let entries: Vec<_> = (1..=5)
                .map(|i| openraft::testing::blank_ent::<TypeConfig>(1, 1, i))
                .collect();
            let (tx, rx) = TypeConfig::oneshot();
            store.append(entries, IoFlushed::signal(tx)).await.unwrap();
            rx.await.unwrap().unwrap();
            store.save_vote(&Vote::new_committed(3, 2)).await.unwrap();
            store
                .purge(openraft::testing::log_id::<TypeConfig>(1, 1, 2))
                .await
                .unwrap();
        }
        let mut store = LogStore::open(dir.path()).unwrap();
        assert_eq!(
            store.read_vote().await.unwrap(),
            Some(Vote::new_committed(3, 2))
        );
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|l| l.index), Some(2));
        assert_eq!(state.last_log_id.map(|l| l.index), Some(5));
        let entries = store.try_get_log_entries(0..10).await.unwrap();
        assert_eq!(
            entries.iter().map(|e| e.log_id.index).collect::<Vec<_>>(),
            [3, 4, 5]
        );
    }

    /// Appends entries 1..=count, one synced append each (so one WAL record each), and closes
    /// the store. Closing does not flush the memtable: the entries stay in the WAL only.
    async fn appended_one_by_one(dir: &Path, count: u64) {
        let mut store = LogStore::open(dir).unwrap();
        for index in 1..=count {
            let (tx, rx) = TypeConfig::oneshot();
            let entry = openraft::testing::blank_ent::<TypeConfig>(1, 1, index);
            store.append([entry], IoFlushed::signal(tx)).await.unwrap();
            rx.await.unwrap().unwrap();
        }
    }

    /// The newest WAL file in a closed store's folder.
    fn wal_file(dir: &Path) -> std::path::PathBuf {
        let mut logs: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        logs.sort();
        let wal = logs.pop().expect("a WAL file");
        assert!(
            std::fs::metadata(&wal).unwrap().len() > 0,
            "{wal:?} is empty"
        );
        wal
    }

    async fn indexes(dir: &Path) -> Vec<u64> {
        let mut store = LogStore::open(dir).expect("the log opens");
        let entries = store.try_get_log_entries(0..100).await.unwrap();
        entries.iter().map(|e| e.log_id.index).collect()
    }

    /// What a power cut leaves at the end of the WAL (the last record cut short, or zeros where
    /// the file was extended) was never synced, so never acknowledged: the node starts with
    /// every record before it. RocksDB's stricter `AbsoluteConsistency` refused all three.
    #[tokio::test]
    async fn a_torn_wal_tail_is_dropped_and_the_log_opens() {
        for (tear, kept) in [
            ("the last record cut short", 4),
            ("the last record's header cut short", 4),
            ("zeros after the last record", 5),
        ] {
            let dir = tempfile::tempdir().unwrap();
            appended_one_by_one(dir.path(), 5).await;
            let wal = wal_file(dir.path());
            let len = std::fs::metadata(&wal).unwrap().len();
            let file = std::fs::OpenOptions::new().write(true).open(&wal).unwrap();
            match tear {
                "the last record cut short" => file.set_len(len - 3).unwrap(),
                "the last record's header cut short" => {
                    // A record's header is 7 bytes: keep 3 of the last one's.
                    let last_record = record_len().await;
                    file.set_len(len - last_record + 3).unwrap();
                }
                _ => file.set_len(len + 4096).unwrap(),
            }
            drop(file);
            assert_eq!(
                indexes(dir.path()).await,
                (1..=kept).collect::<Vec<_>>(),
                "{tear}"
            );
        }
    }

    /// The length of one blank entry's WAL record: the WAL of two appends minus that of one.
    async fn record_len() -> u64 {
        let mut sizes = Vec::new();
        for count in [1, 2] {
            let dir = tempfile::tempdir().unwrap();
            appended_one_by_one(dir.path(), count).await;
            sizes.push(std::fs::metadata(wal_file(dir.path())).unwrap().len());
        }
        sizes[1] - sizes[0]
    }

    /// Damage to a whole record may be inside the synced part: the log refuses to open, and says
    /// what is damaged and what to do, rather than start without entries it acknowledged.
    #[tokio::test]
    async fn damage_inside_the_synced_log_refuses_to_start() {
        let dir = tempfile::tempdir().unwrap();
        appended_one_by_one(dir.path(), 20).await;
        let wal = wal_file(dir.path());
        let mut bytes = std::fs::read(&wal).unwrap();
        let middle = bytes.len() / 3;
        bytes[middle] ^= 0x40;
        std::fs::write(&wal, &bytes).unwrap();
        let err = LogStore::open(dir.path()).err().expect("refused");
        assert!(err.contains("damaged inside its synced part"), "{err}");
        assert!(err.contains("batond recover"), "{err}");
        assert!(err.contains("baton cluster remove"), "{err}");
    }

    #[test]
    fn a_foreign_record_is_an_error_not_a_panic() {
        assert!(decode::<Vote>(&[]).is_err());
        assert!(decode::<Vote>(&[7, 1, 2]).is_err());
        assert!(decode::<Vote>(&[FORMAT_V1, 0xc1]).is_err());
    }
}
