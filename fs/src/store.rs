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

use parking_lot::{Mutex, MutexGuard, RwLock};

mod index;
pub mod mem;
pub use mem::MemStore;

use crate::block::{self, DecodeError, Hash};
use crate::format::FormatError;
use crate::gc::{self, GcReport, GcStore};
use crate::pack::{self, ActivePack, Location, PackError};
use crate::redb_file::DbError;
use index::{ObjectIndex, PackPosition};

/// Memory redb may use to cache index pages.
const INDEX_CACHE_BYTES: usize = 32 << 20;

/// Records GC copies per hold of the active pack's lock.
const COPY_CHUNK_RECORDS: usize = 64;

/// Start a new pack once the active one passes this size. GC rewrites a pack by
/// copying its live records before deleting it, so a pack's size is also the most a
/// rewrite adds to the store for a moment (and bounds the entries GC holds per pack):
/// 256 MiB made the store of a 400 MiB follower swing by half its size.
const PACK_TARGET_BYTES: u64 = 64 << 20;

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
    index: ObjectIndex,
    active: Mutex<ActivePack>,
    /// Held by a flush from start to end (and by GC's seal up to its rotation): the
    /// fdatasync runs outside `active`'s lock, so puts go on meanwhile, and flushes
    /// must still add their entries to the index in pack order.
    flush_serial: Mutex<()>,
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
    /// False only in tests that close the store the way a crash would.
    merge_on_close: bool,
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
        let last = pack::list_packs(&packs_dir)?.last().copied().unwrap_or(0);
        // redb caches up to 1 GiB by default; the index is hot only in small part.
        let index = ObjectIndex::open(&dir.join("index.redb"), INDEX_CACHE_BYTES, &packs_dir, last)?;
        // Always start a fresh pack: opening the index indexed every record of the
        // previous one that verifies (what was durable); the rest is garbage for GC.
        let active = ActivePack::open(&packs_dir, last + 1)?;
        Ok(LocalStore {
            dir: packs_dir,
            index_path: dir.join("index.redb"),
            index,
            active: Mutex::new(active),
            flush_serial: Mutex::new(()),
            pending: RwLock::new(HashMap::new()),
            pending_bytes: std::sync::atomic::AtomicU64::new(0),
            readers: RwLock::new(HashMap::new()),
            revivals: RwLock::new(None),
            merge_on_close: true,
        })
    }

    fn locate(&self, hash: &Hash) -> Result<Option<Location>, StoreError> {
        if let Some(p) = self.pending.read().get(hash) {
            return Ok(Some(p.loc));
        }
        self.indexed_location(hash)
    }

    /// Makes every object durable and merges the whole index into `index.redb`, so
    /// that the next open has no pack to scan: what a clean stop does (also on drop,
    /// but a process that exits does not drop).
    pub fn close_index(&self) -> Result<(), StoreError> {
        self.flush()?;
        self.index.merge(true)
    }

    /// Where the index says `hash` is (not looking at pending objects).
    fn indexed_location(&self, hash: &Hash) -> Result<Option<Location>, StoreError> {
        self.index.get(hash)
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

    /// [`ObjectStore::flush`], for a caller holding `flush_serial`: makes every pending
    /// object durable, then indexes it. After a failed fsync the pack is replaced and
    /// the next flush writes the pending objects again, into the new pack, from the
    /// payloads kept in memory: a retry never trusts a pack whose fsync once failed
    /// (Linux may have dropped its unwritten pages, and reports that only once).
    fn flush_serialized(&self, _serial: &MutexGuard<'_, ()>) -> Result<(), StoreError> {
        let (ticket, entries, synced_upto) = {
            let mut active = self.active.lock();
            if self.pending.read().is_empty() {
                return Ok(());
            }
            self.replace_failed_pack(&mut active)?;
            // Objects put into an earlier pack (one that failed its fsync, or that GC
            // sealed after the last flush) are written again here: only this pack gets
            // synced.
            let number = active.number;
            let mut pending = self.pending.write();
            for (h, p) in pending.iter_mut().filter(|(_, p)| p.loc.pack != number) {
                p.loc = active.append(h, &p.payload)?;
            }
            // Every pending object is in this pack before `synced_upto`, and every
            // record there before it is pending or was flushed already: puts append
            // under this lock.
            let entries: Vec<(Hash, Location)> = pending.iter().map(|(h, p)| (*h, p.loc)).collect();
            (active.sync_ticket()?, entries, PackPosition { pack: number, offset: active.len() })
        };
        // Outside the lock: puts go on appending while the disk syncs (what they append
        // is not covered, and stays pending for the next flush).
        let synced = ticket.run();
        let merge_due = {
            let mut active = self.active.lock();
            active.sync_done(&ticket, &synced);
            synced?;
            // Durable now, and found again by the pack scan on open until merged into
            // redb. Flushes add in pack order (`flush_serial`), so every record before
            // `synced_upto` is in these entries or in earlier ones (see `store::index`).
            let merge_due = self.index.add_flushed(entries.iter().copied(), synced_upto);
            let mut pending = self.pending.write();
            for (h, _) in &entries {
                if let Some(p) = pending.remove(h) {
                    self.pending_bytes.fetch_sub(p.payload.len() as u64, std::sync::atomic::Ordering::Relaxed);
                }
            }
            drop(pending);
            if active.len() > PACK_TARGET_BYTES {
                // Records appended during the sync stay pending: the next flush writes
                // them again, to the new pack.
                let next = active.number + 1;
                *active = ActivePack::open(&self.dir, next)?;
                std::fs::File::open(&self.dir)?.sync_all()?;
            }
            merge_due
        };
        // Outside the lock: puts go on while the merge writes redb. The objects are
        // durable already (a crash finds them in their pack), so a merge that fails
        // (a full disk under the index) does not fail the flush: the next one retries,
        // and GC's seal, which needs the merge, reports the error.
        if merge_due {
            if let Err(e) = self.index.merge(false) {
                tracing::warn!("merging {} recent entries into the object index: {e}; retried at the next flush", self.index.recent_len());
            }
        }
        Ok(())
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

    fn flush(&self) -> Result<(), StoreError> {
        let serial = self.flush_serial.lock();
        self.flush_serialized(&serial)
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
        Ok(self.index.len()? + self.pending.read().len() as u64)
    }

    fn all_objects(&self) -> Result<Vec<Hash>, StoreError> {
        self.flush()?;
        let mut out = Vec::new();
        self.index.for_each(&mut |h, _| {
            out.push(h);
            Ok(())
        })?;
        Ok(out)
    }

    fn unflushed_bytes(&self) -> u64 {
        self.pending_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn sweep(&self, live: &HashSet<Hash>) -> Result<SweepStats, StoreError> {
        gc::collect(self, &gc::LiveSet::from_hashes(live.iter().copied()), gc::KEEP_PACK_LIVE_PERCENT)
    }
}

impl Drop for LocalStore {
    /// A clean close merges the recent index entries, so the next open has no packs
    /// to scan. (After a crash the scan finds them.)
    fn drop(&mut self) {
        if !self.merge_on_close {
            return;
        }
        if let Err(e) = self.index.merge(true) {
            tracing::warn!("merging the object index on close: {e}; the next open indexes those records from their packs");
        }
    }
}

impl GcStore for LocalStore {
    fn seal(&self) -> Result<u32, StoreError> {
        // No flush may be syncing the pack being sealed across the rotation: one that
        // finished after it would add entries naming a sealed pack after the merge below.
        let next = {
            let serial = self.flush_serial.lock();
            self.flush_serialized(&serial)?;
            let mut active = self.active.lock();
            let next = active.number + 1;
            *active = ActivePack::open(&self.dir, next)?;
            next
        };
        // Every recent entry naming a sealed pack was added before the rotation: after
        // this merge GC finds all of them in redb, where its index updates go.
        self.index.merge(true)?;
        Ok(next)
    }

    fn pack_numbers(&self) -> Result<Vec<u32>, StoreError> {
        Ok(pack::list_packs(&self.dir)?)
    }

    fn pack_size(&self, pack_no: u32) -> Result<u64, StoreError> {
        Ok(std::fs::metadata(pack::pack_path(&self.dir, pack_no))?.len())
    }

    fn for_each_index_entry(&self, f: &mut dyn FnMut(Hash, Location) -> Result<(), StoreError>) -> Result<(), StoreError> {
        self.index.for_each(f)
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
        let ticket = active.sync_ticket()?;
        drop(active);
        // Outside the lock, as a flush syncs: commits' puts are not held up by it.
        let synced = ticket.run();
        self.active.lock().sync_done(&ticket, &synced);
        synced?;
        Ok(moved)
    }

    fn update_index(&self, insert: &[(Hash, Location)], remove: &[Hash]) -> Result<(), StoreError> {
        // In transactions of bounded size: the dead entries of one pack of small records
        // can be a million scattered over the whole index. A crash between two leaves
        // entries that still name the pack, which GC removes only after the last one.
        self.index.update(insert, remove)
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

    fn small_object(i: u32) -> (Hash, Vec<u8>) {
        let data = format!("object {i}").into_bytes();
        (Hash::of(&data), data)
    }

    /// Closes the store the way a crash does: without merging the recent entries.
    fn crash(mut store: LocalStore) {
        store.merge_on_close = false;
    }

    /// Flushed objects are indexed only in memory until a merge; after a crash, opening
    /// the store finds them again in the packs past the indexed-up-to position.
    #[test]
    fn objects_flushed_but_not_merged_are_indexed_again_from_their_packs_after_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let merged: Vec<_> = (0..10).map(object).collect();
        for (h, d) in &merged {
            store.put(h, d).unwrap();
        }
        store.flush().unwrap();
        store.index.merge(true).unwrap();
        let recent: Vec<_> = (10..30).map(object).collect();
        for (h, d) in &recent {
            store.put(h, d).unwrap();
        }
        store.flush().unwrap();
        assert_eq!(store.index.recent_len(), recent.len(), "a small flush is not merged");
        let (lost, _) = object(99);
        store.put(&lost, &object(99).1).unwrap();
        crash(store);

        let store = LocalStore::open(dir.path()).unwrap();
        assert_eq!(store.index.recent_len(), 0, "opening merges what it found");
        for (h, d) in merged.iter().chain(&recent) {
            assert_eq!(&store.get(h).unwrap(), d);
        }
        assert_eq!(store.object_count().unwrap(), 31, "the unflushed object's record was written and verifies, so it is indexed too");
        let mut seen = Vec::new();
        store
            .for_each_index_entry(&mut |h, _| {
                seen.push(h);
                Ok(())
            })
            .unwrap();
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "entries in hash order, each once");
        assert_eq!(seen.len(), 31);
        // A crash right after that open finds nothing more to index.
        crash(store);
        let store = LocalStore::open(dir.path()).unwrap();
        assert_eq!(store.object_count().unwrap(), 31);
    }

    /// The scan leaves out a record that does not match its hash (a write that never
    /// became durable, or damage) and keeps every record before and after it.
    #[test]
    fn the_scan_on_open_leaves_out_a_record_that_does_not_verify() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let good: Vec<_> = (0..5).map(object).collect();
        for (h, d) in &good {
            store.put(h, d).unwrap();
        }
        store.flush().unwrap();
        let (torn, torn_data) = object(5);
        store.put(&torn, &torn_data).unwrap();
        let (after, after_data) = object(6);
        store.put(&after, &after_data).unwrap();
        let torn_loc = store.locate(&torn).unwrap().unwrap();
        let pack = pack::pack_path(&store.dir, torn_loc.pack);
        crash(store);
        // Zeros where the payload should be: what a crash can leave past an fsync.
        let f = std::fs::OpenOptions::new().write(true).open(&pack).unwrap();
        f.write_all_at(&vec![0u8; torn_loc.len as usize], torn_loc.offset).unwrap();

        let store = LocalStore::open(dir.path()).unwrap();
        for (h, d) in &good {
            assert_eq!(&store.get(h).unwrap(), d);
        }
        assert!(matches!(store.get(&torn), Err(StoreError::Missing(_))));
        assert_eq!(store.get(&after).unwrap(), after_data, "a record after the bad one verifies on its own");
        // Putting them again stores them anew.
        store.put(&torn, &torn_data).unwrap();
        store.flush().unwrap();
        assert_eq!(store.get(&torn).unwrap(), torn_data);
    }

    /// A flush that brings the recent entries to the threshold merges them, and GC's
    /// seal merges whatever is recent, so GC finds every entry of a sealed pack in redb.
    #[test]
    fn recent_entries_are_merged_at_the_threshold_and_at_seal() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        for i in 0..index::MERGE_ENTRIES as u32 - 1 {
            let (h, d) = small_object(i);
            store.put(&h, &d).unwrap();
        }
        store.flush().unwrap();
        assert_eq!(store.index.recent_len(), index::MERGE_ENTRIES - 1);
        let (h, d) = small_object(u32::MAX);
        store.put(&h, &d).unwrap();
        store.flush().unwrap();
        assert_eq!(store.index.recent_len(), 0, "the flush reaching the threshold merged");
        let (h2, d2) = small_object(u32::MAX - 1);
        store.put(&h2, &d2).unwrap();
        store.flush().unwrap();
        assert_eq!(store.index.recent_len(), 1);
        store.seal().unwrap();
        assert_eq!(store.index.recent_len(), 0, "seal merged");
        crash(store);
        let store = LocalStore::open(dir.path()).unwrap();
        assert_eq!(store.object_count().unwrap(), index::MERGE_ENTRIES as u64 + 1);
        assert_eq!(store.get(&h2).unwrap(), d2);
    }

    /// Flushes sync outside the active pack's lock, so puts on other threads go on
    /// meanwhile; a seal racing them must still leave no recent entry naming a sealed
    /// pack (GC looks for a sealed pack's entries in redb only), and after a crash every
    /// flushed object is found.
    #[test]
    fn puts_flushes_and_seals_on_several_threads_lose_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalStore::open(dir.path()).unwrap());
        let writers: Vec<_> = (0..3u32)
            .map(|t| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for i in 0..400 {
                        let (h, d) = object(t * 1000 + i);
                        store.put(&h, &d).unwrap();
                        if i % 8 == 7 {
                            store.flush().unwrap();
                        }
                    }
                    store.flush().unwrap();
                })
            })
            .collect();
        let mut seals = 0;
        while !writers.iter().all(|w| w.is_finished()) {
            let next = store.seal().unwrap();
            seals += 1;
            if let Some(oldest) = store.index.oldest_recent_pack() {
                assert!(oldest >= next, "after sealing below pack {next}, a recent entry names pack {oldest}");
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        for w in writers {
            w.join().unwrap();
        }
        assert!(seals > 1, "the seals ran alongside the writers");
        let store = Arc::try_unwrap(store).ok().unwrap();
        crash(store);
        let store = LocalStore::open(dir.path()).unwrap();
        for t in 0..3u32 {
            for i in 0..400 {
                let (h, d) = object(t * 1000 + i);
                assert_eq!(store.get(&h).unwrap(), d, "object {i} of writer {t}");
            }
        }
        let distinct: HashSet<Hash> = (0..3u32).flat_map(|t| (0..400).map(move |i| object(t * 1000 + i).0)).collect();
        assert_eq!(store.object_count().unwrap(), distinct.len() as u64, "each object indexed once");
    }
}
