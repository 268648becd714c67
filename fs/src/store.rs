//! The object store: content-addressed, compressed, verified objects.
//!
//! [`ObjectStore`] is the interface the rest of the filesystem uses; [`LocalStore`]
//! implements it with append-only pack files and a persistent redb index
//! (hash -> pack, offset, length). Objects are immutable and named by hash, so an
//! S3-compatible backend can implement the same trait later.

// The closures given to `Db::run` return redb's own (large) error; `DbError` boxes it.
#![allow(clippy::result_large_err)]

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use redb::{ReadableTable, ReadableTableMetadata};

pub mod mem;
pub use mem::MemStore;

use crate::block::{self, DecodeError, Hash};
use crate::format::index::OBJECTS;
use crate::format::FormatError;
use crate::gc::{self, GcReport, GcStore};
use crate::pack::{self, ActivePack, Location, PackError};
use crate::redb_file::{Db, DbError};

/// Memory redb may use to cache index pages.
const INDEX_CACHE_BYTES: usize = 32 << 20;

/// Records GC copies per hold of the active pack's lock.
const COPY_CHUNK_RECORDS: usize = 64;
/// Entries inserted and removed by one of GC's index transactions at most.
const INDEX_TXN_ENTRIES: usize = 32 * 1024;

/// Start a new pack once the active one passes this size.
const PACK_TARGET_BYTES: u64 = 256 << 20;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {0} is not in the store")]
    Missing(Hash),
    #[error(transparent)]
    Damaged(#[from] DecodeError),
    #[error("store I/O error: {0}")]
    Io(#[from] std::io::Error),
    #[error("store index error: {0}")]
    Index(String),
    #[error("store index error: {0}")]
    Db(#[from] DbError),
    #[error(transparent)]
    Pack(#[from] PackError),
    #[error("encoding an object: {0}")]
    Format(#[from] FormatError),
}

/// What GC did (the name `pgbranch gc`'s report had before [`GcReport`]).
pub type SweepStats = GcReport;

/// The interface between the filesystem and wherever objects live.
pub trait ObjectStore: Send + Sync {
    /// Returns the decoded object, verified against its hash.
    fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError>;
    /// Stores an object unless already present. Not durable until [`ObjectStore::flush`].
    fn put(&self, hash: &Hash, bytes: &[u8]) -> Result<(), StoreError>;
    /// Makes every object put so far durable.
    fn flush(&self) -> Result<(), StoreError>;
    /// Stored (compressed) size of an object, if present.
    fn stored_size(&self, hash: &Hash) -> Result<Option<u64>, StoreError>;
    /// Bytes the store occupies on its medium.
    fn physical_bytes(&self) -> Result<u64, StoreError>;
    /// Number of objects in the store.
    fn object_count(&self) -> Result<u64, StoreError>;
    /// Deletes every object not in `live` and reclaims its space. For a [`GcStore`] this
    /// is [`gc::collect`]; `Repository::gc` marks into a bounded-memory [`gc::LiveSet`]
    /// and runs [`gc::plan`] and [`gc::execute`] itself, alongside commits.
    fn sweep(&self, live: &HashSet<Hash>) -> Result<SweepStats, StoreError>;
    /// Every object's hash, for verification.
    fn all_objects(&self) -> Result<Vec<Hash>, StoreError>;
    /// Bytes put and not yet made durable by [`ObjectStore::flush`] (kept in memory
    /// until then): writers that store directly flush once this grows large.
    fn unflushed_bytes(&self) -> u64 {
        0
    }
}

/// An object put since the last successful flush.
struct Pending {
    loc: Location,
    payload: Arc<Vec<u8>>,
}

/// Pack files plus a redb index, in one local directory.
pub struct LocalStore {
    dir: PathBuf,
    index_path: PathBuf,
    index: Db,
    active: Mutex<ActivePack>,
    /// Objects appended since the last flush: visible to readers, not yet indexed. Each
    /// keeps its payload until it is durable, so that after a failed fsync it can be
    /// written again to a new pack (the failed pack's pages may be gone).
    pending: RwLock<HashMap<Hash, Pending>>,
    /// Payload bytes in `pending`.
    pending_bytes: std::sync::atomic::AtomicU64,
    readers: RwLock<HashMap<u32, Arc<File>>>,
    /// While GC runs: puts that found their object already stored in a sealed pack.
    /// Puts hold this for reading across lookup and record; GC's index updates hold it
    /// for writing (`GcStore::with_puts_held`).
    revivals: RwLock<Option<Revivals>>,
}

/// Objects GC may have planned as dead that a put has since named again.
struct Revivals {
    sealed_below: u32,
    hashes: Mutex<HashSet<Hash>>,
}

impl LocalStore {
    pub fn open(dir: &Path) -> Result<LocalStore, StoreError> {
        let packs_dir = dir.join("packs");
        std::fs::create_dir_all(&packs_dir)?;
        // redb caches up to 1 GiB by default; the index is hot only in small part.
        let index = Db::open(&dir.join("index.redb"), INDEX_CACHE_BYTES)?;
        index.run(|db| {
            let txn = db.begin_write()?;
            txn.open_table(OBJECTS)?;
            Ok(txn.commit()?)
        })?;

        let last = pack::list_packs(&packs_dir)?.last().copied().unwrap_or(0);
        // Always start a fresh pack: anything past the last flush in the previous one is
        // unindexed garbage from a crash, reclaimed by the next GC.
        let active = ActivePack::open(&packs_dir, last + 1)?;
        Ok(LocalStore {
            dir: packs_dir,
            index_path: dir.join("index.redb"),
            index,
            active: Mutex::new(active),
            pending: RwLock::new(HashMap::new()),
            pending_bytes: std::sync::atomic::AtomicU64::new(0),
            readers: RwLock::new(HashMap::new()),
            revivals: RwLock::new(None),
        })
    }

    fn locate(&self, hash: &Hash) -> Result<Option<Location>, StoreError> {
        if let Some(p) = self.pending.read().get(hash) {
            return Ok(Some(p.loc));
        }
        self.indexed_location(hash)
    }

    /// Where the index says `hash` is (not looking at pending objects).
    fn indexed_location(&self, hash: &Hash) -> Result<Option<Location>, StoreError> {
        Ok(self.index.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(OBJECTS)?;
            let found = table.get(hash.0)?;
            Ok(found.map(|v| {
                let (pack, offset, len) = v.value();
                Location { pack, offset, len }
            }))
        })?)
    }

    fn reader(&self, pack: u32) -> Result<Arc<File>, StoreError> {
        if let Some(f) = self.readers.read().get(&pack) {
            return Ok(f.clone());
        }
        let f = Arc::new(pack::open_for_read(&self.dir, pack)?);
        self.readers.write().insert(pack, f.clone());
        Ok(f)
    }

    fn read_payload(&self, loc: Location) -> Result<Vec<u8>, StoreError> {
        let file = self.reader(loc.pack)?;
        let mut buf = vec![0u8; loc.len as usize];
        file.read_exact_at(&mut buf, loc.offset)?;
        Ok(buf)
    }

    /// Starts a new pack in place of one whose fsync failed.
    fn replace_failed_pack(&self, active: &mut ActivePack) -> Result<(), StoreError> {
        if active.sync_failed() {
            let next = active.number + 1;
            *active = ActivePack::open(&self.dir, next)?;
            tracing::warn!("pack {} had a failed fsync; writing to pack {next} from now on", next - 1);
        }
        Ok(())
    }

    fn index_pending(&self, entries: &[(Hash, Location)], removed: &[Hash]) -> Result<(), StoreError> {
        Ok(self.index.run(|db| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(OBJECTS)?;
                for (h, loc) in entries {
                    table.insert(h.0, (loc.pack, loc.offset, loc.len))?;
                }
                for h in removed {
                    table.remove(h.0)?;
                }
            }
            Ok(txn.commit()?)
        })?)
    }
}

impl ObjectStore for LocalStore {
    fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        // A pending object is read from memory (its pack may be one whose fsync failed).
        if let Some(payload) = self.pending.read().get(hash).map(|p| p.payload.clone()) {
            return Ok(block::decode(hash, &payload)?);
        }
        let mut loc = self.indexed_location(hash)?.ok_or(StoreError::Missing(*hash))?;
        loop {
            match self.read_payload(loc) {
                Ok(payload) => return Ok(block::decode(hash, &payload)?),
                Err(e) => {
                    // GC may have moved the object and removed its pack since the lookup:
                    // follow the index while it keeps pointing somewhere new.
                    match self.indexed_location(hash)? {
                        Some(moved) if moved != loc => loc = moved,
                        _ => return Err(e),
                    }
                }
            }
        }
    }

    fn put(&self, hash: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        {
            let revivals = self.revivals.read();
            if let Some(loc) = self.locate(hash)? {
                if let Some(r) = revivals.as_ref().filter(|r| loc.pack < r.sealed_below) {
                    r.hashes.lock().insert(*hash);
                }
                return Ok(());
            }
        }
        let payload = Arc::new(block::encode(bytes));
        let mut active = self.active.lock();
        // Re-check under the lock: another thread may have stored it meanwhile.
        if self.pending.read().contains_key(hash) {
            return Ok(());
        }
        self.replace_failed_pack(&mut active)?;
        let loc = active.append(hash, &payload)?;
        self.pending_bytes.fetch_add(payload.len() as u64, std::sync::atomic::Ordering::Relaxed);
        self.pending.write().insert(*hash, Pending { loc, payload });
        Ok(())
    }

    /// Makes every pending object durable, then indexes it. After a failed fsync the
    /// pack is replaced and the next flush writes the pending objects again, into the
    /// new pack, from the payloads kept in memory: a retry never trusts a pack whose
    /// fsync once failed (Linux may have dropped its unwritten pages, and reports that
    /// only once).
    fn flush(&self) -> Result<(), StoreError> {
        let mut active = self.active.lock();
        if self.pending.read().is_empty() {
            return Ok(());
        }
        self.replace_failed_pack(&mut active)?;
        // Objects put into an earlier pack (one that failed its fsync, or that GC sealed
        // after the last flush) are written again here: only this pack gets synced.
        let number = active.number;
        {
            let mut pending = self.pending.write();
            for (h, p) in pending.iter_mut().filter(|(_, p)| p.loc.pack != number) {
                p.loc = active.append(h, &p.payload)?;
            }
        }
        active.sync()?;
        let mut entries: Vec<(Hash, Location)> = self.pending.read().iter().map(|(h, p)| (*h, p.loc)).collect();
        // In key order, consecutive inserts land in the same leaf pages: redb then
        // copies each page once per transaction and finds it hot, instead of a random
        // walk over the whole tree for every entry.
        entries.sort_unstable_by_key(|(h, _)| *h);
        self.index_pending(&entries, &[])?;
        let mut pending = self.pending.write();
        for (h, _) in &entries {
            if let Some(p) = pending.remove(h) {
                self.pending_bytes.fetch_sub(p.payload.len() as u64, std::sync::atomic::Ordering::Relaxed);
            }
        }
        if active.len() > PACK_TARGET_BYTES {
            let next = active.number + 1;
            *active = ActivePack::open(&self.dir, next)?;
            std::fs::File::open(&self.dir)?.sync_all()?;
        }
        Ok(())
    }

    fn stored_size(&self, hash: &Hash) -> Result<Option<u64>, StoreError> {
        Ok(self.locate(hash)?.map(|l| l.len as u64 + pack::RECORD_HEADER))
    }

    fn physical_bytes(&self) -> Result<u64, StoreError> {
        let mut total = std::fs::metadata(&self.index_path)?.len();
        for p in pack::list_packs(&self.dir)? {
            total += std::fs::metadata(pack::pack_path(&self.dir, p))?.len();
        }
        Ok(total)
    }

    fn object_count(&self) -> Result<u64, StoreError> {
        let indexed = self.index.run(|db| Ok(db.begin_read()?.open_table(OBJECTS)?.len()?))?;
        Ok(indexed + self.pending.read().len() as u64)
    }

    fn all_objects(&self) -> Result<Vec<Hash>, StoreError> {
        self.flush()?;
        Ok(self.index.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(OBJECTS)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                out.push(Hash(item?.0.value()));
            }
            Ok(out)
        })?)
    }

    fn unflushed_bytes(&self) -> u64 {
        self.pending_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn sweep(&self, live: &HashSet<Hash>) -> Result<SweepStats, StoreError> {
        gc::collect(self, &gc::LiveSet::from_hashes(live.iter().copied()), gc::KEEP_PACK_LIVE_PERCENT)
    }
}

impl GcStore for LocalStore {
    fn seal(&self) -> Result<u32, StoreError> {
        self.flush()?;
        let mut active = self.active.lock();
        let next = active.number + 1;
        *active = ActivePack::open(&self.dir, next)?;
        Ok(next)
    }

    fn pack_numbers(&self) -> Result<Vec<u32>, StoreError> {
        Ok(pack::list_packs(&self.dir)?)
    }

    fn pack_size(&self, pack_no: u32) -> Result<u64, StoreError> {
        Ok(std::fs::metadata(pack::pack_path(&self.dir, pack_no))?.len())
    }

    fn for_each_index_entry(&self, f: &mut dyn FnMut(Hash, Location) -> Result<(), StoreError>) -> Result<(), StoreError> {
        // Stream the index rather than load it: a large store has millions of entries.
        let mut stopped = None;
        self.index.run_once(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(OBJECTS)?;
            for item in table.iter()? {
                let (k, v) = item?;
                let (pack, offset, len) = v.value();
                if let Err(e) = f(Hash(k.value()), Location { pack, offset, len }) {
                    stopped = Some(e);
                    break;
                }
            }
            Ok(())
        })?;
        stopped.map_or(Ok(()), Err)
    }

    fn copy_records(&self, records: &[(Hash, Location)]) -> Result<Vec<(Hash, Location)>, StoreError> {
        // Read and verify outside the active pack's lock, append in small chunks: puts
        // (commits) wait for one chunk at most.
        let mut moved = Vec::with_capacity(records.len());
        for chunk in records.chunks(COPY_CHUNK_RECORDS) {
            let mut payloads = Vec::with_capacity(chunk.len());
            for (h, loc) in chunk {
                let payload = self.read_payload(*loc)?;
                block::decode(h, &payload)?;
                payloads.push(payload);
            }
            let mut active = self.active.lock();
            self.replace_failed_pack(&mut active)?;
            for ((h, _), payload) in chunk.iter().zip(&payloads) {
                moved.push((*h, active.append(h, payload)?));
            }
        }
        let mut active = self.active.lock();
        self.replace_failed_pack(&mut active)?;
        // A copy that landed in a pack since replaced (its fsync failed) is made again
        // here; one in a pack rotated by a flush was synced by it, and is copied again
        // all the same: only the active pack's sync below vouches for a copy.
        let number = active.number;
        for (i, (h, loc)) in records.iter().enumerate() {
            if moved[i].1.pack != number {
                moved[i] = (*h, active.append(h, &self.read_payload(*loc)?)?);
            }
        }
        active.sync()?;
        Ok(moved)
    }

    fn update_index(&self, insert: &[(Hash, Location)], remove: &[Hash]) -> Result<(), StoreError> {
        // In transactions of bounded size: one transaction holds a private copy of every
        // page it dirties, and the dead entries of one pack of small records can be a
        // million scattered over the whole index. A crash between two leaves entries
        // that still name the pack, which GC removes only after the last one.
        let (mut insert, mut remove) = (insert, remove);
        while !insert.is_empty() || !remove.is_empty() {
            let (i, r) = (insert.len().min(INDEX_TXN_ENTRIES), remove.len().min(INDEX_TXN_ENTRIES));
            self.index_pending(&insert[..i], &remove[..r])?;
            (insert, remove) = (&insert[i..], &remove[r..]);
        }
        Ok(())
    }

    fn remove_pack(&self, pack_no: u32) -> Result<(), StoreError> {
        if pack_no >= self.active.lock().number {
            return Err(StoreError::Index(format!("gc may not remove pack {pack_no}: it is not sealed")));
        }
        self.readers.write().remove(&pack_no);
        std::fs::remove_file(pack::pack_path(&self.dir, pack_no))?;
        Ok(())
    }

    fn track_revivals(&self, sealed_below: Option<u32>) {
        *self.revivals.write() = sealed_below.map(|sealed_below| Revivals { sealed_below, hashes: Mutex::new(HashSet::new()) });
    }

    fn with_puts_held(&self, f: &mut dyn FnMut(&HashSet<Hash>) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let revivals = self.revivals.write();
        let empty = HashSet::new();
        match revivals.as_ref() {
            Some(r) => f(&r.hashes.lock()),
            None => f(&empty),
        }
    }

    fn finish_gc(&self) -> Result<(), StoreError> {
        std::fs::File::open(&self.dir)?.sync_all()?;
        // redb keeps freed pages for reuse; compaction returns them to the file system.
        // A read that began before we took the lock makes compaction wait its turn.
        for attempt in 0..50 {
            match self.index.compact() {
                Ok(_) => break,
                Err(e) if attempt == 49 => tracing::warn!("index compaction skipped: {e}"),
                Err(_) => std::thread::sleep(std::time::Duration::from_millis(10)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn object(i: u32) -> (Hash, Vec<u8>) {
        let data: Vec<u8> = (0..8192u32).map(|j| (j.wrapping_mul(i + 7) >> 3) as u8).collect();
        (Hash::of(&data), data)
    }

    /// fsyncgate: after a pack's fsync failed, a retried flush must not sync the same
    /// pack again and call it durable. The failure is set on the pack (a real failing
    /// fsync needs a disk that fails while ext4 stays writable; `io_errors` drives the
    /// daemon through real EIOs); what is tested is where the retry puts the objects.
    #[test]
    fn a_flush_after_a_failed_pack_fsync_rewrites_pending_objects_to_a_new_pack() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let durable: Vec<_> = (0..10).map(object).collect();
        for (h, d) in &durable {
            store.put(h, d).unwrap();
        }
        store.flush().unwrap();
        let failed_pack = store.active.lock().number;
        let later: Vec<_> = (10..20).map(object).collect();
        for (h, d) in &later {
            store.put(h, d).unwrap();
        }
        store.active.lock().fail_sync_for_test();

        let err = store.active.lock().sync().unwrap_err();
        assert!(err.to_string().contains("earlier fsync"), "{err}");
        store.flush().unwrap();
        for (h, _) in &later {
            let loc = store.locate(h).unwrap().unwrap();
            assert!(loc.pack > failed_pack, "object {h} was indexed in pack {} whose fsync failed", loc.pack);
        }
        for (h, _) in &durable {
            assert_eq!(store.locate(h).unwrap().unwrap().pack, failed_pack, "durable objects stay where they were");
        }
        drop(store);
        let store = LocalStore::open(dir.path()).unwrap();
        for (h, d) in durable.iter().chain(&later) {
            assert_eq!(&store.get(h).unwrap(), d);
        }
    }

    /// Objects put after GC sealed a pack (between its flush and the seal) are written
    /// again into the pack that the next flush syncs.
    #[test]
    fn objects_put_into_a_pack_sealed_before_their_flush_are_made_durable_in_the_active_pack() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let (h, d) = object(1);
        store.put(&h, &d).unwrap();
        let sealed = store.active.lock().number;
        {
            let mut active = store.active.lock();
            *active = ActivePack::open(&store.dir, sealed + 1).unwrap();
        }
        store.flush().unwrap();
        assert_eq!(store.locate(&h).unwrap().unwrap().pack, sealed + 1);
        assert_eq!(store.get(&h).unwrap(), d);
    }
}
