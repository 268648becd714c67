//! A branch: a live [`Tree`] guarded by one lock, plus its intent log.
//!
//! Every mutation is appended to the log and then applied under the same write lock, so
//! the log replays in exactly the order the tree saw. Reads share the lock and fetch
//! block bytes after releasing it. A snapshot is a branch without a log: read-only.
//!
//! Large writes skip the log's copy of their bytes: their whole blocks are stored
//! first and only their hashes are logged (`Op::WriteBlocks`), so an initial copy or a
//! bulk load writes each byte once. Those blocks are named by no head until the next
//! commit: the branch pins them for GC (`bulk_pins`), and a sync flushes the store
//! before the log, so an acknowledged fsync never names a block that is not durable.

use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::block::{self, Hash, BLOCK_SIZE};
use crate::catalog::{BranchRecord, Kind};
use crate::filemap::store_block;
use crate::intent_log::{self, IntentLog};
use crate::node::{NodeError, Time};
use crate::op::Op;
use crate::store::{ObjectStore, StoreError};
use crate::tree::{Errno, FsResult, Tree};

#[derive(Debug, thiserror::Error)]
pub enum BranchError {
    #[error("cannot load the tree of {name}: {source}")]
    Load { name: String, source: NodeError },
    #[error("intent log of {name}: {source}")]
    Log { name: String, source: std::io::Error },
    #[error("cannot open branch {name}: {source}")]
    Replay { name: String, source: intent_log::LogError },
    #[error("recording the new head of {name}: {message}")]
    Persist { name: String, message: String },
    #[error("commit of {name}: {source}")]
    Store { name: String, source: StoreError },
}

pub struct Branch {
    pub name: String,
    pub id: u64,
    pub kind: Kind,
    tree: RwLock<Tree>,
    log: Option<IntentLog>,
    commit_lock: Mutex<()>,
    /// The last durable root.
    head: Mutex<Hash>,
    /// Set when the intent log may hold what the tree does not: the branch refuses writes.
    broken: Mutex<bool>,
    /// Failed fdatasyncs of the log so far, and how many of them a commit has since made
    /// moot. After a failed fdatasync Linux reports the error once and may drop the
    /// unwritten pages, so a retry could "succeed" over a hole: every sync fails until a
    /// commit has put the tree (which still holds those writes) into fsynced packs.
    sync_failures: AtomicU64,
    sync_failures_cleared: AtomicU64,
    store: Arc<dyn ObjectStore>,
    /// Blocks large writes stored that no durable head names yet.
    bulk_pins: Mutex<BulkPins>,
    /// Large writes that stored blocks so far, and how many of them a store flush has
    /// made durable: a sync flushes the store first when they differ.
    bulk_writes: AtomicU64,
    bulk_writes_flushed: AtomicU64,
}

/// A write with at least this many whole blocks stores them directly (with the writeback
/// cache on, the kernel hands over contiguous dirty pages in writes of up to 1 MiB, so
/// a sequential stream arrives as such writes while scattered page writes stay small).
pub const BULK_MIN_BLOCKS: usize = 16;

/// Unflushed store bytes past which a large write flushes the store itself: bounds the
/// memory the store holds for objects not yet durable.
const BULK_UNFLUSHED_LIMIT: u64 = 32 << 20;

/// Blocks stored by large writes and named by no durable head yet; GC marks them all.
#[derive(Default)]
struct BulkPins {
    next_write: u64,
    /// Writes that have stored blocks and are not yet applied to the tree.
    in_flight: HashMap<u64, Vec<Hash>>,
    /// Blocks of writes applied to the tree since the last durable commit, in order.
    applied: Vec<Hash>,
    /// Bytes of those blocks (zeros excluded): part of what the next commit changed.
    applied_bytes: u64,
    /// Blocks those writes covered, zeros included: they count towards the next commit
    /// as much as dirty blocks do (see [`Branch::uncommitted_blocks`]).
    applied_blocks: u64,
}

/// How a write splits into a partial head block, whole blocks and a partial tail.
struct BulkSplit {
    head: usize,
    blocks: usize,
}

impl BulkSplit {
    /// The split of `len` bytes at `offset`, if they hold enough whole blocks.
    fn of(offset: u64, len: usize) -> Option<BulkSplit> {
        let bs = BLOCK_SIZE as u64;
        let head = ((bs - offset % bs) % bs) as usize;
        let blocks = len.checked_sub(head)? / BLOCK_SIZE;
        (blocks >= BULK_MIN_BLOCKS).then_some(BulkSplit { head, blocks })
    }
}

/// The errno a writer sees for a failed log write: ENOSPC for a full disk or quota
/// (EDQUOT), EIO for anything else.
fn log_errno(e: &std::io::Error) -> Errno {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => Errno(libc::ENOSPC),
        _ => Errno(libc::EIO),
    }
}

/// The errno a writer sees for a store that could not take its blocks.
fn store_errno(e: &StoreError) -> Errno {
    match e {
        StoreError::Io(io) => log_errno(io),
        _ => Errno(libc::EIO),
    }
}

/// What a commit produced, for the caller to persist as the new head.
pub struct Committed {
    pub root: Hash,
    pub log_seq: u64,
    /// When the cut was made (µs since the Unix epoch): the instant `root` shows.
    pub cut_unix_micros: u64,
    /// Bytes of file blocks this commit stored (what changed since the last one).
    pub changed_bytes: u64,
}

impl Branch {
    /// Opens a branch at its committed root and replays its intent log.
    pub fn open(store: Arc<dyn ObjectStore>, record: &BranchRecord, log_dir: &Path) -> Result<Branch, BranchError> {
        let name = record.name.clone();
        let mut tree = Tree::load(store.clone(), &record.root).map_err(|source| BranchError::Load { name: name.clone(), source })?;
        let mut pins = BulkPins::default();
        let log = if record.kind == Kind::Branch {
            let ops =
                intent_log::read_logged(log_dir, record.log_seq).map_err(|source| BranchError::Replay { name: name.clone(), source })?;
            if !ops.is_empty() {
                tracing::info!(branch = %name, ops = ops.len(), "replaying intent log");
            }
            for (i, (at, op)) in ops.iter().enumerate() {
                if let Some(missing) =
                    missing_block(store.as_ref(), op).map_err(|source| BranchError::Store { name: name.clone(), source })?
                {
                    // The store is flushed before every log sync, so no fsync covering
                    // this op (or any later one) returned: the log ends here.
                    tracing::warn!(branch = %name, "intent log: a large write names block {missing}, which the store lost in a crash before it was flushed; it and the {} ops after it were never acknowledged and are dropped", ops.len() - i - 1);
                    intent_log::cut(log_dir, *at).map_err(|source| BranchError::Log { name: name.clone(), source })?;
                    break;
                }
                match tree.apply(op) {
                    Ok(()) => pins.note_applied(op),
                    // Only ops on files unlinked while open can fail here; they have no
                    // effect on what survives a crash.
                    Err(e) => tracing::debug!(branch = %name, ?e, "replayed op skipped"),
                }
            }
            Some(IntentLog::open(log_dir).map_err(|source| BranchError::Log { name: name.clone(), source })?)
        } else {
            None
        };
        Ok(Branch {
            name,
            id: record.id,
            kind: record.kind,
            tree: RwLock::new(tree),
            log,
            commit_lock: Mutex::new(()),
            head: Mutex::new(record.root),
            broken: Mutex::new(false),
            sync_failures: AtomicU64::new(0),
            sync_failures_cleared: AtomicU64::new(0),
            store,
            bulk_pins: Mutex::new(pins),
            bulk_writes: AtomicU64::new(0),
            bulk_writes_flushed: AtomicU64::new(0),
        })
    }

    pub fn read_only(&self) -> bool {
        self.log.is_none()
    }

    pub fn tree(&self) -> RwLockReadGuard<'_, Tree> {
        self.tree.read()
    }

    /// Runs `f` with the tree locked for writing, without logging (open counts, map loads).
    pub fn with_tree_mut<R>(&self, f: impl FnOnce(&mut Tree) -> R) -> R {
        f(&mut self.tree.write())
    }

    /// Builds an op from the current tree, logs it and applies it, atomically: either
    /// the op is in the log and applied, or neither. The op is logged first, so a full
    /// disk (the append fails) is an error the writer sees — ENOSPC, or EIO for other
    /// I/O errors — and changes nothing; if applying then fails, the record is taken
    /// back. Only a failure that leaves the log in an unknown state (the cut back or the
    /// take-back failed too) breaks the branch: it refuses writes until reopened.
    pub fn update<R>(&self, build: impl FnOnce(&Tree) -> FsResult<(Op, R)>) -> FsResult<R> {
        self.update_with(build, |_| {})
    }

    /// [`Branch::update`], calling `applied` with the op while the tree is still locked.
    fn update_with<R>(&self, build: impl FnOnce(&Tree) -> FsResult<(Op, R)>, applied: impl FnOnce(&Op)) -> FsResult<R> {
        let Some(log) = &self.log else { return Err(Errno(libc::EROFS)) };
        if *self.broken.lock() {
            return Err(Errno(libc::EIO));
        }
        let mut tree = self.tree.write();
        let (op, out) = build(&tree)?;
        let appended = match log.append(&op) {
            Ok(a) => a,
            Err(failed) => {
                if failed.log_intact {
                    tracing::debug!(branch = %self.name, "intent log append failed: {}; the write is refused", failed.error);
                } else {
                    tracing::error!(branch = %self.name, "intent log append failed ({}) and could not be cut back; branch is now read-only until the daemon restarts", failed.error);
                    *self.broken.lock() = true;
                }
                return Err(log_errno(&failed.error));
            }
        };
        if let Err(e) = tree.apply(&op) {
            if let Err(re) = log.retract(appended) {
                tracing::error!(branch = %self.name, "an op that failed to apply ({e:?}) could not be taken back from the intent log: {re}; branch is now read-only until the daemon restarts");
                *self.broken.lock() = true;
            }
            return Err(e);
        }
        applied(&op);
        Ok(out)
    }

    /// Writes `data` at `offset` of file `ino`, after `check` accepts it on the tree
    /// (it refuses with an errno: growth on a full disk). A write with enough whole
    /// blocks stores them first and logs only their hashes; a smaller one is logged
    /// whole. Either way it is all or nothing.
    pub fn write(&self, ino: u64, offset: u64, data: &[u8], check: impl Fn(&Tree) -> FsResult<()>) -> FsResult<()> {
        let now = Time::now();
        let Some(split) = BulkSplit::of(offset, data.len()).filter(|_| self.log.is_some()) else {
            return self.update(|tree| {
                check(tree)?;
                Ok((Op::Write { ino, offset, data: data.to_vec(), now }, ()))
            });
        };
        if *self.broken.lock() {
            return Err(Errno(libc::EIO));
        }
        check(&self.tree.read())?;
        let body = &data[split.head..split.head + split.blocks * BLOCK_SIZE];
        let hashes: Vec<Option<Hash>> = body.chunks(BLOCK_SIZE).map(|b| (!block::is_zero(b)).then(|| Hash::of(b))).collect();
        // Pinned before they are stored: a GC reading the roots now or later marks
        // them; one that read them earlier sealed its packs first, so these land in
        // newer packs (or are recorded as revived).
        let id = self.bulk_pins.lock().start(&hashes);
        if let Err(e) = self.store_blocks(body, &hashes) {
            self.bulk_pins.lock().in_flight.remove(&id);
            tracing::debug!(branch = %self.name, "a large write could not store its blocks: {e}; the write is refused");
            return Err(store_errno(&e));
        }
        self.bulk_writes.fetch_add(1, Ordering::SeqCst);
        let op = Op::WriteBlocks {
            ino,
            offset,
            head: data[..split.head].to_vec(),
            blocks: hashes,
            tail: data[split.head + split.blocks * BLOCK_SIZE..].to_vec(),
            now,
        };
        let result = self.update_with(
            |tree| {
                check(tree)?;
                Ok((op, ()))
            },
            |op| self.bulk_pins.lock().finish(id, op),
        );
        if result.is_err() {
            self.bulk_pins.lock().in_flight.remove(&id);
        }
        result
    }

    /// Stores the whole blocks of a large write, flushing the store if it holds too
    /// much that is not yet durable.
    fn store_blocks(&self, body: &[u8], hashes: &[Option<Hash>]) -> Result<(), StoreError> {
        for (bytes, hash) in body.chunks(BLOCK_SIZE).zip(hashes) {
            if let Some(hash) = hash {
                self.store.put(hash, bytes)?;
            }
        }
        if self.store.unflushed_bytes() > BULK_UNFLUSHED_LIMIT {
            self.store.flush()?;
        }
        Ok(())
    }

    /// Blocks large writes stored that no durable head names yet: GC marks them.
    pub fn bulk_pins(&self) -> Vec<Hash> {
        let pins = self.bulk_pins.lock();
        pins.in_flight.values().flatten().chain(&pins.applied).copied().collect()
    }

    /// Makes every change made so far durable. A full disk answers ENOSPC, any other
    /// failure EIO (postgres then PANICs and recovers, as it must after a failed fsync).
    ///
    /// A failed fdatasync keeps failing every later sync until a commit has made the
    /// branch durable by other means (see `sync_failures`), never a retry that
    /// "succeeds" over writes the kernel dropped.
    pub fn sync(&self) -> FsResult<()> {
        let Some(log) = &self.log else { return Ok(()) };
        if self.sync_failures.load(Ordering::SeqCst) > self.sync_failures_cleared.load(Ordering::SeqCst) {
            return Err(Errno(libc::EIO));
        }
        // Blocks of large writes first: the log must never be durable naming a block
        // that is not. (A failed flush keeps their bytes to write again: retry is safe.)
        let bulk = self.bulk_writes.load(Ordering::SeqCst);
        if self.bulk_writes_flushed.load(Ordering::SeqCst) < bulk {
            self.store.flush().map_err(|e| {
                tracing::error!(branch = %self.name, "flushing the blocks of large writes failed: {e}");
                store_errno(&e)
            })?;
            self.bulk_writes_flushed.fetch_max(bulk, Ordering::SeqCst);
        }
        log.sync().map_err(|e| {
            tracing::error!(branch = %self.name, "intent log fdatasync failed: {e}; syncs of this branch fail until its next commit succeeds");
            self.sync_failures.fetch_add(1, Ordering::SeqCst);
            log_errno(&e)
        })
    }

    pub fn dirty_blocks(&self) -> u64 {
        self.tree.read().dirty_blocks()
    }

    /// Blocks written since the last commit: dirty ones held in memory plus those large
    /// writes stored directly. A commit is due once they pass the soft limit, however
    /// they were written, so a follower's history keeps a point every 16 MiB of WAL (a
    /// restartpoint can recycle segments written between two points).
    pub fn uncommitted_blocks(&self) -> u64 {
        self.dirty_blocks() + self.bulk_pins.lock().applied_blocks
    }

    pub fn open_handles(&self) -> u64 {
        self.tree.read().open_handles()
    }

    /// The last durable root.
    pub fn head(&self) -> Hash {
        *self.head.lock()
    }

    /// Folds every change so far into a new root, has `persist` make it the durable
    /// head, then drops the log segments it covers; returns the head. Blocks are stored
    /// outside the tree lock so writers keep going; only the cut (rotating the log,
    /// writing nodes) holds it.
    pub fn commit(&self, store: &dyn ObjectStore, persist: impl FnOnce(&Committed) -> Result<(), String>) -> Result<Hash, BranchError> {
        let _one_at_a_time = self.commit_lock.lock();
        let err = |source| BranchError::Store { name: self.name.clone(), source };
        let Some(log) = &self.log else { return Ok(self.head()) };
        let pending = self.tree.read().dirty_block_list();
        let mut stored = Vec::with_capacity(pending.len());
        for (ino, idx, data) in pending {
            let hash = store_block(store, &data).map_err(err)?;
            stored.push((ino, idx, data, hash));
        }
        let mut tree = self.tree.write();
        tree.settle_blocks(&stored);
        if !tree.has_changes() && log.bytes_since_commit() == 0 {
            return Ok(self.head());
        }
        // Failed syncs up to here concern records this commit covers.
        let failures_covered = self.sync_failures.load(Ordering::SeqCst);
        let log_seq = log.rotate().map_err(|source| BranchError::Log { name: self.name.clone(), source })?;
        let cut_unix_micros = crate::history::now_unix_micros();
        let root = tree.commit().map_err(err)?;
        // Large writes applied so far are in `root`; later ones are not.
        let (pins_covered, bulk_bytes, bulk_blocks) = {
            let pins = self.bulk_pins.lock();
            (pins.applied.len(), pins.applied_bytes, pins.applied_blocks)
        };
        drop(tree);
        store.flush().map_err(err)?;
        let stored_bytes = stored.iter().filter(|s| s.3.is_some()).count() as u64 * BLOCK_SIZE as u64;
        let changed_bytes = stored_bytes + bulk_bytes;
        let committed = Committed { root, log_seq, cut_unix_micros, changed_bytes };
        persist(&committed).map_err(|e| BranchError::Persist { name: self.name.clone(), message: e })?;
        *self.head.lock() = root;
        self.bulk_pins.lock().release(pins_covered, bulk_bytes, bulk_blocks);
        self.sync_failures_cleared.fetch_max(failures_covered, Ordering::SeqCst);
        self.trim_log(log_seq)?;
        Ok(root)
    }

    pub(crate) fn trim_log(&self, log_seq: u64) -> Result<(), BranchError> {
        if let Some(log) = &self.log {
            log.trim_before(log_seq).map_err(|source| BranchError::Log { name: self.name.clone(), source })?;
        }
        Ok(())
    }
}

impl BulkPins {
    /// Pins the blocks of a large write about to be stored; returns its id.
    fn start(&mut self, hashes: &[Option<Hash>]) -> u64 {
        let id = self.next_write;
        self.next_write += 1;
        self.in_flight.insert(id, hashes.iter().flatten().copied().collect());
        id
    }

    /// The write `id` is applied (the tree lock is held): its pins move to `applied`.
    fn finish(&mut self, id: u64, op: &Op) {
        self.in_flight.remove(&id);
        self.note_applied(op);
    }

    fn note_applied(&mut self, op: &Op) {
        if let Op::WriteBlocks { blocks, .. } = op {
            let before = self.applied.len();
            self.applied.extend(blocks.iter().flatten());
            self.applied_bytes += (self.applied.len() - before) as u64 * BLOCK_SIZE as u64;
            self.applied_blocks += blocks.len() as u64;
        }
    }

    /// A commit holding the first `covered` applied pins (`bytes` of blocks, `blocks`
    /// counting zeros) is durable.
    fn release(&mut self, covered: usize, bytes: u64, blocks: u64) {
        self.applied.drain(..covered.min(self.applied.len()));
        self.applied_bytes = self.applied_bytes.saturating_sub(bytes);
        self.applied_blocks = self.applied_blocks.saturating_sub(blocks);
    }
}

/// The first block a replayed large write names that the store does not hold.
fn missing_block(store: &dyn ObjectStore, op: &Op) -> Result<Option<Hash>, StoreError> {
    if let Op::WriteBlocks { blocks, .. } = op {
        for hash in blocks.iter().flatten() {
            if store.stored_size(hash)?.is_none() {
                return Ok(Some(*hash));
            }
        }
    }
    Ok(None)
}
