//! The object store: content-addressed, compressed, verified objects.
//!
//! [`ObjectStore`] is the interface the rest of the filesystem uses; [`LocalStore`]
//! implements it with append-only pack files and a persistent redb index
//! (hash -> pack, offset, length). Objects are immutable and named by hash, so an
//! S3-compatible backend can implement the same trait later.

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
    /// is [`gc::plan`] then [`gc::execute`]; `Repository::gc` calls those itself, under
    /// its lock.
    fn sweep(&self, live: &HashSet<Hash>) -> Result<SweepStats, StoreError>;
    /// Every object's hash, for verification.
    fn all_objects(&self) -> Result<Vec<Hash>, StoreError>;
}

/// Pack files plus a redb index, in one local directory.
pub struct LocalStore {
    dir: PathBuf,
    index_path: PathBuf,
    index: Db,
    active: Mutex<ActivePack>,
    /// Objects appended since the last flush: visible to readers, not yet indexed.
    pending: RwLock<HashMap<Hash, Location>>,
    readers: RwLock<HashMap<u32, Arc<File>>>,
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
            readers: RwLock::new(HashMap::new()),
        })
    }

    fn locate(&self, hash: &Hash) -> Result<Option<Location>, StoreError> {
        if let Some(loc) = self.pending.read().get(hash) {
            return Ok(Some(*loc));
        }
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
        let loc = self.locate(hash)?.ok_or(StoreError::Missing(*hash))?;
        let payload = self.read_payload(loc)?;
        Ok(block::decode(hash, &payload)?)
    }

    fn put(&self, hash: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        if self.locate(hash)?.is_some() {
            return Ok(());
        }
        let payload = block::encode(bytes);
        let mut active = self.active.lock();
        // Re-check under the lock: another thread may have stored it meanwhile.
        if self.pending.read().contains_key(hash) {
            return Ok(());
        }
        let loc = active.append(hash, &payload)?;
        self.pending.write().insert(*hash, loc);
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut active = self.active.lock();
        let entries: Vec<(Hash, Location)> = self.pending.read().iter().map(|(h, l)| (*h, *l)).collect();
        if entries.is_empty() {
            return Ok(());
        }
        active.sync()?;
        self.index_pending(&entries, &[])?;
        let mut pending = self.pending.write();
        for (h, _) in &entries {
            pending.remove(h);
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

    fn sweep(&self, live: &HashSet<Hash>) -> Result<SweepStats, StoreError> {
        let plan = gc::plan(self, live)?;
        gc::execute(self, plan)
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

    fn pack_records(&self, pack_no: u32) -> Result<Vec<(Hash, Location)>, StoreError> {
        Ok(pack::scan(&self.dir, pack_no)?)
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
        let mut active = self.active.lock();
        let mut moved = Vec::with_capacity(records.len());
        for (h, loc) in records {
            let payload = self.read_payload(*loc)?;
            moved.push((*h, active.append(h, &payload)?));
        }
        active.sync()?;
        Ok(moved)
    }

    fn update_index(&self, insert: &[(Hash, Location)], remove: &[Hash]) -> Result<(), StoreError> {
        self.index_pending(insert, remove)
    }

    fn remove_pack(&self, pack_no: u32) -> Result<(), StoreError> {
        if pack_no >= self.active.lock().number {
            return Err(StoreError::Index(format!("gc may not remove pack {pack_no}: it is not sealed")));
        }
        self.readers.write().remove(&pack_no);
        std::fs::remove_file(pack::pack_path(&self.dir, pack_no))?;
        Ok(())
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
