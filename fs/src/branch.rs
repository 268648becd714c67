//! A branch: a live [`Tree`] guarded by one lock, plus its intent log.
//!
//! Every mutation is appended to the log and then applied under the same write lock, so
//! the log replays in exactly the order the tree saw. Reads share the lock and fetch
//! block bytes after releasing it. A snapshot is a branch without a log: read-only.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::block::Hash;
use crate::catalog::{BranchRecord, Kind};
use crate::filemap::store_block;
use crate::intent_log::{self, IntentLog};
use crate::node::NodeError;
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
}

/// The errno a writer sees for a failed log write: ENOSPC for a full disk or quota
/// (EDQUOT), EIO for anything else.
fn log_errno(e: &std::io::Error) -> Errno {
    match e.raw_os_error() {
        Some(libc::ENOSPC | libc::EDQUOT) => Errno(libc::ENOSPC),
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
        let mut tree = Tree::load(store, &record.root).map_err(|source| BranchError::Load { name: name.clone(), source })?;
        let log = if record.kind == Kind::Branch {
            let ops = intent_log::read_ops(log_dir, record.log_seq).map_err(|source| BranchError::Replay { name: name.clone(), source })?;
            if !ops.is_empty() {
                tracing::info!(branch = %name, ops = ops.len(), "replaying intent log");
            }
            for op in &ops {
                if let Err(e) = tree.apply(op) {
                    // Only ops on files unlinked while open can fail here; they have no
                    // effect on what survives a crash.
                    tracing::debug!(branch = %name, ?e, "replayed op skipped");
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
        Ok(out)
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
        log.sync().map_err(|e| {
            tracing::error!(branch = %self.name, "intent log fdatasync failed: {e}; syncs of this branch fail until its next commit succeeds");
            self.sync_failures.fetch_add(1, Ordering::SeqCst);
            log_errno(&e)
        })
    }

    pub fn dirty_blocks(&self) -> u64 {
        self.tree.read().dirty_blocks()
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
        drop(tree);
        store.flush().map_err(err)?;
        let changed_bytes = stored.len() as u64 * crate::block::BLOCK_SIZE as u64;
        let committed = Committed { root, log_seq, cut_unix_micros, changed_bytes };
        persist(&committed).map_err(|e| BranchError::Persist { name: self.name.clone(), message: e })?;
        *self.head.lock() = root;
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
