//! An in-memory [`ObjectStore`] (and [`GcStore`]), for tests below FUSE: the same
//! pack framing as [`super::LocalStore`] (`format::pack`), held in byte vectors, with an
//! index map instead of redb. Nothing is durable; `flush` only indexes what was put.

use std::collections::{BTreeMap, HashMap, HashSet};

use parking_lot::{Mutex, RwLock};

use super::{ObjectStore, StoreError, SweepStats};
use crate::block::{self, Hash};
use crate::format::pack::{self as wire, RECORD_HEADER};
use crate::gc::{self, GcStore};
use crate::pack::Location;

#[derive(Default)]
struct Inner {
    packs: BTreeMap<u32, Vec<u8>>,
    active: u32,
    index: HashMap<Hash, Location>,
    pending: HashMap<Hash, Location>,
}

impl Inner {
    fn locate(&self, hash: &Hash) -> Option<Location> {
        self.pending.get(hash).or_else(|| self.index.get(hash)).copied()
    }

    fn payload(&self, loc: Location) -> Result<Vec<u8>, StoreError> {
        let missing = || StoreError::Index(format!("pack {} has no record at {}", loc.pack, loc.offset));
        let pack = self.packs.get(&loc.pack).ok_or_else(missing)?;
        let start = loc.offset as usize;
        pack.get(start..start + loc.len as usize).map(<[u8]>::to_vec).ok_or_else(missing)
    }

    fn append(&mut self, hash: &Hash, payload: &[u8]) -> Location {
        let number = self.active;
        let pack = self.packs.entry(number).or_insert_with(wire::pack_header);
        pack.extend_from_slice(&wire::record_header(hash, payload.len() as u32));
        let offset = pack.len() as u64;
        pack.extend_from_slice(payload);
        Location { pack: number, offset, len: payload.len() as u32 }
    }

    fn start_pack(&mut self) -> u32 {
        self.active += 1;
        self.packs.insert(self.active, wire::pack_header());
        self.active
    }
}

/// Objects in memory, framed in packs as on disk.
pub struct MemStore {
    inner: Mutex<Inner>,
    /// As in `LocalStore`: puts hold it for reading, GC's index updates for writing.
    revivals: RwLock<Option<(u32, HashSet<Hash>)>>,
}

impl Default for MemStore {
    fn default() -> MemStore {
        let mut inner = Inner::default();
        inner.start_pack();
        MemStore { inner: Mutex::new(inner), revivals: RwLock::new(None) }
    }
}

impl MemStore {
    pub fn new() -> MemStore {
        MemStore::default()
    }
}

impl ObjectStore for MemStore {
    fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        let inner = self.inner.lock();
        let loc = inner.locate(hash).ok_or(StoreError::Missing(*hash))?;
        Ok(block::decode(hash, &inner.payload(loc)?)?)
    }

    fn put(&self, hash: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        let mut revivals = self.revivals.write();
        let mut inner = self.inner.lock();
        match inner.locate(hash) {
            Some(loc) => {
                if let Some((_, hashes)) = revivals.as_mut().filter(|(sealed, _)| loc.pack < *sealed) {
                    hashes.insert(*hash);
                }
            }
            None => {
                let loc = inner.append(hash, &block::encode(bytes));
                inner.pending.insert(*hash, loc);
            }
        }
        Ok(())
    }

    fn flush(&self) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        let pending = std::mem::take(&mut inner.pending);
        inner.index.extend(pending);
        Ok(())
    }

    fn stored_size(&self, hash: &Hash) -> Result<Option<u64>, StoreError> {
        Ok(self.inner.lock().locate(hash).map(|l| l.len as u64 + RECORD_HEADER))
    }

    fn physical_bytes(&self) -> Result<u64, StoreError> {
        Ok(self.inner.lock().packs.values().map(|p| p.len() as u64).sum())
    }

    fn object_count(&self) -> Result<u64, StoreError> {
        let inner = self.inner.lock();
        Ok((inner.index.len() + inner.pending.len()) as u64)
    }

    fn sweep(&self, live: &HashSet<Hash>) -> Result<SweepStats, StoreError> {
        gc::collect(self, &gc::LiveSet::from_hashes(live.iter().copied()), gc::KEEP_PACK_LIVE_PERCENT)
    }

    fn all_objects(&self) -> Result<Vec<Hash>, StoreError> {
        self.flush()?;
        Ok(self.inner.lock().index.keys().copied().collect())
    }
}

impl GcStore for MemStore {
    fn seal(&self) -> Result<u32, StoreError> {
        self.flush()?;
        Ok(self.inner.lock().start_pack())
    }

    fn pack_numbers(&self) -> Result<Vec<u32>, StoreError> {
        Ok(self.inner.lock().packs.keys().copied().collect())
    }

    fn pack_size(&self, pack: u32) -> Result<u64, StoreError> {
        let inner = self.inner.lock();
        inner.packs.get(&pack).map(|p| p.len() as u64).ok_or_else(|| StoreError::Index(format!("no pack {pack}")))
    }

    fn for_each_index_entry(&self, f: &mut dyn FnMut(Hash, Location) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let mut entries: Vec<(Hash, Location)> = self.inner.lock().index.iter().map(|(h, l)| (*h, *l)).collect();
        entries.sort_unstable_by_key(|(h, _)| *h);
        entries.into_iter().try_for_each(|(h, l)| f(h, l))
    }

    fn copy_records(&self, records: &[(Hash, Location)]) -> Result<Vec<(Hash, Location)>, StoreError> {
        let mut inner = self.inner.lock();
        let mut moved = Vec::with_capacity(records.len());
        for (h, loc) in records {
            let payload = inner.payload(*loc)?;
            block::decode(h, &payload)?;
            moved.push((*h, inner.append(h, &payload)));
        }
        Ok(moved)
    }

    fn update_index(&self, insert: &[(Hash, Location)], remove: &[Hash]) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        inner.index.extend(insert.iter().copied());
        for h in remove {
            inner.index.remove(h);
        }
        Ok(())
    }

    fn remove_pack(&self, pack: u32) -> Result<(), StoreError> {
        let mut inner = self.inner.lock();
        if pack >= inner.active {
            return Err(StoreError::Index(format!("gc may not remove pack {pack}: it is not sealed")));
        }
        inner.packs.remove(&pack);
        Ok(())
    }

    fn finish_gc(&self) -> Result<(), StoreError> {
        Ok(())
    }

    fn track_revivals(&self, sealed_below: Option<u32>) {
        *self.revivals.write() = sealed_below.map(|s| (s, HashSet::new()));
    }

    fn with_puts_held(&self, f: &mut dyn FnMut(&HashSet<Hash>) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let revivals = self.revivals.write();
        let empty = HashSet::new();
        f(revivals.as_ref().map_or(&empty, |(_, h)| h))
    }
}
