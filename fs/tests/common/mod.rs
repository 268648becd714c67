//! Helpers for the tests below FUSE: ops built with fixed times, a reader of whole
//! files, and a fault-injecting [`ObjectStore`] over the in-memory store.

#![allow(dead_code)]

pub mod tinyfs;

use std::collections::HashSet;
use std::sync::Arc;

use parking_lot::Mutex;
use pgbranch_fs::block::Hash;
use pgbranch_fs::node::{Time, ROOT_INO};
use pgbranch_fs::op::{NewKind, Op, SetAttr};
use pgbranch_fs::store::{MemStore, ObjectStore, StoreError, SweepStats};
use pgbranch_fs::tree::{BlockSource, Tree};

pub const BLOCK: usize = 8192;
pub const NOW: Time = Time { secs: 1_700_000_000, nanos: 0 };

/// A store that fails `get` for chosen objects, as a disk with a bad sector would.
pub struct FaultyStore {
    inner: MemStore,
    failing: Mutex<HashSet<Hash>>,
}

impl FaultyStore {
    /// A fresh, empty in-memory store.
    pub fn temp() -> Arc<FaultyStore> {
        Arc::new(FaultyStore { inner: MemStore::new(), failing: Mutex::new(HashSet::new()) })
    }

    pub fn fail_get(&self, hash: Hash) {
        self.failing.lock().insert(hash);
    }

    pub fn heal(&self) {
        self.failing.lock().clear();
    }
}

impl ObjectStore for FaultyStore {
    fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        if self.failing.lock().contains(hash) {
            return Err(StoreError::Io(std::io::Error::from_raw_os_error(libc::EIO)));
        }
        self.inner.get(hash)
    }
    fn put(&self, hash: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        self.inner.put(hash, bytes)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn stored_size(&self, hash: &Hash) -> Result<Option<u64>, StoreError> {
        self.inner.stored_size(hash)
    }
    fn physical_bytes(&self) -> Result<u64, StoreError> {
        self.inner.physical_bytes()
    }
    fn object_count(&self) -> Result<u64, StoreError> {
        self.inner.object_count()
    }
    fn sweep(&self, live: &HashSet<Hash>) -> Result<SweepStats, StoreError> {
        self.inner.sweep(live)
    }
    fn all_objects(&self) -> Result<Vec<Hash>, StoreError> {
        self.inner.all_objects()
    }
}

pub fn empty_tree(store: Arc<dyn ObjectStore>) -> Tree {
    Tree::empty(store, 0o755, 0, 0)
}

pub fn create(t: &mut Tree, name: &str) -> u64 {
    let ino = t.next_ino();
    let op = Op::Create {
        parent: ROOT_INO,
        name: name.into(),
        ino,
        kind: NewKind::File,
        mode: libc::S_IFREG | 0o600,
        uid: 0,
        gid: 0,
        rdev: 0,
        now: NOW,
    };
    t.apply(&op).unwrap();
    ino
}

pub fn write_op(ino: u64, offset: u64, data: &[u8]) -> Op {
    Op::Write { ino, offset, data: data.to_vec(), now: NOW }
}

pub fn truncate_op(ino: u64, size: u64) -> Op {
    Op::SetAttr { ino, attr: SetAttr { size: Some(size), ..Default::default() }, now: NOW }
}

pub fn unlink_op(name: &str) -> Op {
    Op::Unlink { parent: ROOT_INO, name: name.into(), dir: false, now: NOW }
}

pub fn rename_op(from: &str, to: &str) -> Op {
    Op::Rename { parent: ROOT_INO, name: from.into(), new_parent: ROOT_INO, new_name: to.into(), flags: 0, now: NOW }
}

/// The whole content of a file, read the way FUSE reads it.
pub fn contents(t: &mut Tree, ino: u64) -> Vec<u8> {
    t.load_map(ino).unwrap();
    let size = t.inode(ino).unwrap().size();
    let (n, plan) = t.read_plan(ino, 0, size as u32).unwrap();
    let mut out = Vec::new();
    for src in plan {
        match src {
            BlockSource::Hole => out.extend_from_slice(&[0u8; BLOCK]),
            BlockSource::Dirty(d) => out.extend_from_slice(&d),
            BlockSource::Stored(h) => out.extend_from_slice(&t.store().get(&h).unwrap()),
        }
    }
    out.truncate(n as usize);
    out
}

/// The hash of a committed block of a file.
pub fn stored_hash(t: &mut Tree, ino: u64, idx: u64) -> Hash {
    t.load_map(ino).unwrap();
    let (_, plan) = t.read_plan(ino, idx * BLOCK as u64, 1).unwrap();
    match plan.first() {
        Some(BlockSource::Stored(h)) => *h,
        _ => panic!("block {idx} of {ino} is not stored"),
    }
}

/// Incompressible bytes, distinct per seed (xorshift), for tests that need stored
/// sizes close to logical sizes.
pub fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

pub fn pattern(seed: u64, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u64).wrapping_mul(31).wrapping_add(seed) as u8 | 1).collect()
}

/// The count a tree reports and the one its maps hold must agree.
#[track_caller]
pub fn assert_count(t: &Tree, want: u64) {
    assert_eq!(t.dirty_blocks(), t.dirty_blocks_in_maps(), "the count and the maps disagree");
    assert_eq!(t.dirty_blocks(), want);
}

/// Creates file `name` in the root directory of `branch` (a repository's branch).
pub fn create_file(repo: &pgbranch_fs::repo::Repository, branch: &str, name: &str) -> u64 {
    let b = repo.get(branch).unwrap();
    b.update(|t| {
        let ino = t.next_ino();
        let op = Op::Create {
            parent: ROOT_INO,
            name: name.as_bytes().to_vec(),
            ino,
            kind: NewKind::File,
            mode: libc::S_IFREG | 0o600,
            uid: 0,
            gid: 0,
            rdev: 0,
            now: Time::now(),
        };
        Ok((op, ino))
    })
    .unwrap()
}

/// Writes `data` at `offset` of file `ino` on `branch`.
pub fn write(repo: &pgbranch_fs::repo::Repository, branch: &str, ino: u64, offset: u64, data: &[u8]) {
    repo.get(branch).unwrap().update(|_| Ok((Op::Write { ino, offset, data: data.to_vec(), now: Time::now() }, ()))).unwrap();
}
