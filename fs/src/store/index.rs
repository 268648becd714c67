//! The object index: where each stored object's payload is, in two tiers.
//!
//! - **Merged** entries live in `index.redb` (redb's B-tree, `format::index`).
//! - **Recent** entries, made durable by a pack fsync since the last merge, live only in
//!   memory. They need no index write of their own: packs carry each record's hash, so
//!   after a crash they are found again by scanning the packs from the *indexed-up-to*
//!   position that the last merge stored in `index.redb` (each record past it verified
//!   against its hash; one that does not verify — a tail that never became durable,
//!   or damage — is left out, see [`rescan`]).
//!
//! Why: an index transaction per flush inserted a few thousand random hashes into a
//! tree of millions, copying a leaf page per entry, and was a third of the daemon's
//! CPU in a bulk load. A merge inserts [`MERGE_ENTRIES`] sorted entries at once, so
//! each leaf page it touches is copied once for many entries, and commits (fsyncs)
//! once per merge instead of once per flush.
//!
//! Readers look in recent entries first, then in redb. A merge writes its snapshot of
//! the recent entries (and the new indexed-up-to position, in the same transaction as
//! the last of them) before it drops them from memory, so an entry is always in one
//! tier or both, never in neither.

// The closures given to `Db::run` return redb's own (large) error; `DbError` boxes it.
#![allow(clippy::result_large_err)]

use std::collections::HashMap;
use std::path::Path;

use parking_lot::{Mutex, RwLock};
use redb::{ReadableTable, ReadableTableMetadata};

use super::StoreError;
use crate::block::{self, Hash};
use crate::format::index::{INDEXED_UPTO, INDEXED_UPTO_KEY, OBJECTS};
use crate::pack::{self, Location};
use crate::redb_file::Db;

/// Recent entries that make a flush merge them into redb.
pub(super) const MERGE_ENTRIES: usize = 64 * 1024;
/// Entries inserted and removed by one of GC's index transactions at most: one
/// transaction holds a private copy of every page it dirties.
pub(super) const INDEX_TXN_ENTRIES: usize = 32 * 1024;
/// Entries one transaction of a merge inserts at most: all of one merge. Random hashes
/// spread over the whole tree, so a transaction of a few thousand already copies most
/// leaf pages; while a reader (GC's or `du`'s index scan) holds an older version none
/// of the pages replaced can be reused, and every transaction grows the file by up to
/// a copy of the tree. One transaction per merge copies each page once. (A 30-minute
/// soak with 8 Ki per transaction saw the store jump 110 MiB for moments.)
const MERGE_TXN_ENTRIES: usize = MERGE_ENTRIES;
/// Recent entries past which a flush merges even while an index scan runs (see
/// [`ObjectIndex::merge_due`]).
const MERGE_ENTRIES_DURING_SCAN: usize = 4 * MERGE_ENTRIES;

/// A position in the packs: pack number and byte offset in it. Every record before it
/// (in an earlier pack, or earlier in this one) that a flush made durable is in redb.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct PackPosition {
    pub pack: u32,
    pub offset: u64,
}

#[derive(Default)]
struct Recent {
    entries: HashMap<Hash, Location>,
    /// Where the newest flush's fsync reached: the indexed-up-to position once every
    /// entry above is merged.
    synced_upto: Option<PackPosition>,
}

/// Both tiers (see the module doc).
pub(super) struct ObjectIndex {
    db: Db,
    recent: RwLock<Recent>,
    /// Held by a merge from its snapshot until it has dropped what it wrote.
    merging: Mutex<()>,
    /// Index scans ([`ObjectIndex::for_each`]) running now.
    scans: std::sync::atomic::AtomicUsize,
}

impl ObjectIndex {
    /// Opens `index.redb` and indexes every record that packs in `packs_dir` hold past
    /// the indexed-up-to position (a crash came before their merge). `last_pack` is the
    /// newest pack present. A store from before the position was kept (format 1)
    /// indexed at every flush: it is wholly indexed.
    pub fn open(path: &Path, cache_bytes: usize, packs_dir: &Path, last_pack: u32) -> Result<ObjectIndex, StoreError> {
        let db = Db::open(path, cache_bytes)?;
        let stored = db.run(|db| {
            let txn = db.begin_write()?;
            txn.open_table(OBJECTS)?;
            let upto = txn.open_table(INDEXED_UPTO)?.get(INDEXED_UPTO_KEY)?.map(|v| v.value());
            txn.commit()?;
            Ok(upto)
        })?;
        let index = ObjectIndex { db, recent: RwLock::new(Recent::default()), merging: Mutex::new(()), scans: Default::default() };
        let after_all = PackPosition { pack: last_pack + 1, offset: 0 };
        let entries = match stored {
            Some((pack, offset)) => rescan(packs_dir, PackPosition { pack, offset }, last_pack)?,
            None => Vec::new(),
        };
        if !entries.is_empty() {
            tracing::info!("index: {} records written since the last index merge were indexed from their packs", entries.len());
        }
        index.write(&entries, &[], Some(after_all), MERGE_TXN_ENTRIES)?;
        Ok(index)
    }

    /// Where the index says `hash` is.
    pub fn get(&self, hash: &Hash) -> Result<Option<Location>, StoreError> {
        if let Some(loc) = self.recent.read().entries.get(hash) {
            return Ok(Some(*loc));
        }
        Ok(self.db.run(|db| {
            let txn = db.begin_read()?;
            let found = txn.open_table(OBJECTS)?.get(hash.0)?;
            Ok(found.map(|v| {
                let (pack, offset, len) = v.value();
                Location { pack, offset, len }
            }))
        })?)
    }

    /// Records objects a flush made durable; `synced_upto` is where its fsync reached.
    /// Returns whether a merge is due.
    pub fn add_flushed(&self, entries: impl IntoIterator<Item = (Hash, Location)>, synced_upto: PackPosition) -> bool {
        let mut recent = self.recent.write();
        recent.entries.extend(entries);
        recent.synced_upto = Some(recent.synced_upto.map_or(synced_upto, |p| p.max(synced_upto)));
        self.merge_due(recent.entries.len())
    }

    /// A merge is due at [`MERGE_ENTRIES`] recent entries, but waits while an index
    /// scan holds its read transaction (up to [`MERGE_ENTRIES_DURING_SCAN`]): redb
    /// cannot reuse the pages a merge replaces while a reader may still need them.
    fn merge_due(&self, recent: usize) -> bool {
        let scanning = self.scans.load(std::sync::atomic::Ordering::Relaxed) > 0;
        recent >= if scanning { MERGE_ENTRIES_DURING_SCAN } else { MERGE_ENTRIES }
    }

    /// The lowest pack a recent entry names.
    #[cfg(test)]
    pub fn oldest_recent_pack(&self) -> Option<u32> {
        self.recent.read().entries.values().map(|l| l.pack).min()
    }

    /// Number of recent entries (not yet merged into redb).
    pub fn recent_len(&self) -> usize {
        self.recent.read().entries.len()
    }

    /// Writes every recent entry into redb, with the indexed-up-to position of the
    /// newest flush they came from. With `wait` false, returns at once if another
    /// merge is running (it will do the work).
    pub fn merge(&self, wait: bool) -> Result<(), StoreError> {
        let _merging = if wait {
            self.merging.lock()
        } else {
            match self.merging.try_lock() {
                Some(g) => g,
                None => return Ok(()),
            }
        };
        let (mut snapshot, upto) = {
            let recent = self.recent.read();
            (recent.entries.iter().map(|(h, l)| (*h, *l)).collect::<Vec<_>>(), recent.synced_upto)
        };
        if snapshot.is_empty() {
            return Ok(());
        }
        // In key order, consecutive inserts land in the same leaf pages: redb copies
        // each page once per transaction and finds it hot.
        snapshot.sort_unstable_by_key(|(h, _)| *h);
        self.write(&snapshot, &[], upto, MERGE_TXN_ENTRIES)?;
        let mut recent = self.recent.write();
        for (h, loc) in &snapshot {
            if recent.entries.get(h) == Some(loc) {
                recent.entries.remove(h);
            }
        }
        Ok(())
    }

    /// GC's changes: inserts (copies it fsynced itself) and removals (entries naming
    /// packs sealed and merged before it planned), written to redb directly. Serialized
    /// with merges, so a merge's snapshot never writes back an entry GC just changed.
    pub fn update(&self, insert: &[(Hash, Location)], remove: &[Hash]) -> Result<(), StoreError> {
        let _merging = self.merging.lock();
        self.write(insert, remove, None, INDEX_TXN_ENTRIES)
    }

    /// Inserts and removes entries in redb, in transactions of at most `txn_entries`
    /// of each. The last one also stores `upto`, if given.
    fn write(
        &self,
        insert: &[(Hash, Location)],
        remove: &[Hash],
        upto: Option<PackPosition>,
        txn_entries: usize,
    ) -> Result<(), StoreError> {
        let (mut insert, mut remove) = (insert, remove);
        loop {
            let (i, r) = (insert.len().min(txn_entries), remove.len().min(txn_entries));
            let last = i == insert.len() && r == remove.len();
            let upto = upto.filter(|_| last);
            if i > 0 || r > 0 || upto.is_some() {
                self.write_txn(&insert[..i], &remove[..r], upto)?;
            }
            (insert, remove) = (&insert[i..], &remove[r..]);
            if last {
                return Ok(());
            }
        }
    }

    fn write_txn(&self, insert: &[(Hash, Location)], remove: &[Hash], upto: Option<PackPosition>) -> Result<(), StoreError> {
        Ok(self.db.run(|db| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(OBJECTS)?;
                for (h, loc) in insert {
                    table.insert(h.0, (loc.pack, loc.offset, loc.len))?;
                }
                for h in remove {
                    table.remove(h.0)?;
                }
            }
            if let Some(p) = upto {
                txn.open_table(INDEXED_UPTO)?.insert(INDEXED_UPTO_KEY, (p.pack, p.offset))?;
            }
            Ok(txn.commit()?)
        })?)
    }

    /// Every entry in hash order, each hash once: redb's, merged with a sorted snapshot
    /// of the recent entries. Streams redb rather than loading it.
    pub fn for_each(&self, f: &mut dyn FnMut(Hash, Location) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let _scan = ScanGuard::new(&self.scans);
        let mut recent: Vec<(Hash, Location)> = self.recent.read().entries.iter().map(|(h, l)| (*h, *l)).collect();
        recent.sort_unstable_by_key(|(h, _)| *h);
        let mut recent = recent.into_iter().peekable();
        let mut stopped = None;
        self.db.run_once(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(OBJECTS)?;
            let mut emit = |h: Hash, loc: Location| match f(h, loc) {
                Ok(()) => true,
                Err(e) => {
                    stopped = Some(e);
                    false
                }
            };
            for item in table.iter()? {
                let (k, v) = item?;
                let hash = Hash(k.value());
                while let Some((h, loc)) = recent.next_if(|(h, _)| *h <= hash) {
                    if h != hash && !emit(h, loc) {
                        return Ok(());
                    }
                }
                let (pack, offset, len) = v.value();
                if !emit(hash, Location { pack, offset, len }) {
                    return Ok(());
                }
            }
            for (h, loc) in recent.by_ref() {
                if !emit(h, loc) {
                    return Ok(());
                }
            }
            Ok(())
        })?;
        stopped.map_or(Ok(()), Err)
    }

    /// Number of entries in redb plus recent ones (a hash is in one tier except
    /// briefly during a merge).
    pub fn len(&self) -> Result<u64, StoreError> {
        let merged = self.db.run(|db| Ok(db.begin_read()?.open_table(OBJECTS)?.len()?))?;
        Ok(merged + self.recent_len() as u64)
    }

    /// Returns freed pages to the file system (see `Db::compact`).
    pub fn compact(&self) -> Result<bool, StoreError> {
        Ok(self.db.compact()?)
    }
}

/// Counts an index scan for as long as it lives.
struct ScanGuard<'a>(&'a std::sync::atomic::AtomicUsize);

impl<'a> ScanGuard<'a> {
    fn new(scans: &'a std::sync::atomic::AtomicUsize) -> ScanGuard<'a> {
        scans.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        ScanGuard(scans)
    }
}

impl Drop for ScanGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Reads every record at or past `from` in packs `from.pack..=last_pack`, verifying
/// each against its hash. A record that does not verify is left out and the scan goes
/// on past it (its header is within the file): it is either part of a tail that never
/// became durable (garbage, and whatever follows it verifies or not on its own) or a
/// durable record damaged since, and the records after it were acknowledged. Indexing
/// it would make a later put of the same bytes dedup against a record that cannot be
/// read; left out, that put stores them again. A torn header ends the pack.
fn rescan(packs_dir: &Path, from: PackPosition, last_pack: u32) -> Result<Vec<(Hash, Location)>, StoreError> {
    let mut out = Vec::new();
    for p in pack::list_packs(packs_dir)?.into_iter().filter(|p| (from.pack..=last_pack).contains(p)) {
        let start = if p == from.pack { from.offset } else { 0 };
        let mut bad = Vec::new();
        pack::scan_from(packs_dir, p, start, &mut |hash, loc, payload| {
            match block::decode(&hash, payload) {
                Ok(_) => out.push((hash, loc)),
                Err(_) => bad.push(loc.offset),
            }
            true
        })?;
        if let Some(first) = bad.first() {
            tracing::warn!(
                "pack {p}: {} records (the first at offset {first}) do not match their hash: not yet durable when the store last stopped, or damaged since; left unindexed (run `pgbranch verify`)",
                bad.len()
            );
        }
    }
    out.sort_unstable_by_key(|(h, _)| *h);
    Ok(out)
}
