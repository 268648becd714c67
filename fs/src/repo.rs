//! The repository: one object store, its catalog, and every open branch.
//!
//! Creating a branch or snapshot commits its source and records the source's root
//! under the new name: O(1) in the size of the data. GC (`collect`) marks from every
//! head and retained point and sweeps the rest, alongside commits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use serde::Serialize;

use crate::block::{Hash, BLOCK_SIZE};
use crate::branch::{Branch, BranchError};
use crate::catalog::{BranchRecord, Catalog, CatalogError, Kind};
use crate::format::store_file::{self, StoreFormatError};
use crate::history::Point;
use crate::store::{LocalStore, ObjectStore, StoreError};
use crate::tree::Tree;
use crate::walk;

mod collect;
mod history;
mod usage;
pub use collect::{GcActivity, PlannedGc, AUTO_GROWTH_MIN_BYTES, AUTO_GROWTH_PERCENT, AUTO_KEEP_PACK_LIVE_PERCENT};
pub use history::{OutsideHistory, PointFiles};
pub use usage::{BranchUsage, Usage};

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("no branch or snapshot named '{0}' (see `pgbranch branch list`)")]
    NotFound(String),
    #[error("a branch or snapshot named '{0}' already exists")]
    Exists(String),
    #[error("branch {0} has no parent to reset from")]
    NoParent(String),
    #[error("invalid name '{0}': {1}")]
    InvalidName(String, &'static str),
    #[error(transparent)]
    Branch(#[from] BranchError),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("{context}: {source}")]
    Io { context: String, source: std::io::Error },
    #[error(transparent)]
    Format(#[from] StoreFormatError),
    #[error(transparent)]
    OutsideHistory(#[from] OutsideHistory),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> RepoError {
    let context = context.into();
    move |source| RepoError::Io { context, source }
}

/// Branch names: what is safe as a directory name and in a URL.
pub(crate) fn validate_name(name: &str) -> Result<(), RepoError> {
    let bad = |why| Err(RepoError::InvalidName(name.to_string(), why));
    if name.is_empty() || name.len() > 63 {
        return bad("names are 1 to 63 characters long");
    }
    if !name.chars().next().unwrap().is_ascii_alphanumeric() {
        return bad("names start with a letter or digit");
    }
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return bad("names use only letters, digits, '-', '_' and '.'");
    }
    Ok(())
}

pub struct Repository {
    dir: PathBuf,
    store: Arc<LocalStore>,
    catalog: Catalog,
    branches: RwLock<BTreeMap<String, Arc<Branch>>>,
    gc_lock: RwLock<()>,
    /// The retention window (seconds) of branches without their own; 0: no history.
    default_retention_secs: std::sync::atomic::AtomicU64,
    /// Roots in use outside the catalog (a retained point being read): GC marks them.
    pinned: parking_lot::Mutex<HashMap<Hash, usize>>,
    /// One GC at a time, manual or automatic.
    gc_running: parking_lot::Mutex<()>,
    /// One `du` at a time: they share a spill directory.
    du_running: parking_lot::Mutex<()>,
    /// What GC has done, for `status`.
    gc_activity: parking_lot::Mutex<collect::GcActivity>,
    /// Branches whose last commit failed: it may have stored blocks that their live
    /// tree now names but no head reaches yet, so no collection starts until it works.
    failed_commits: parking_lot::Mutex<HashSet<String>>,
    /// Estimated bytes history thinning has made garbage since the daemon started
    /// (`Catalog::put_head`): the automatic GC's second trigger, besides growth.
    expired_bytes: std::sync::atomic::AtomicU64,
}

#[derive(Debug, Serialize)]
pub struct Damage {
    pub branch: String,
    pub path: String,
    pub offset: Option<u64>,
    pub object: String,
    pub error: String,
}

#[derive(Debug, Serialize)]
pub struct VerifyReport {
    pub objects_checked: u64,
    pub damaged: Vec<Damage>,
}

impl Repository {
    /// Opens (or creates) the store in `dir`: its format file first, then the index,
    /// the catalog, and every branch (replaying its intent log).
    pub fn open(dir: &Path) -> Result<Repository, RepoError> {
        let format = store_file::check_or_create(dir)?;
        std::fs::create_dir_all(dir.join("logs")).map_err(io_err(format!("creating {}", dir.display())))?;
        let store = Arc::new(LocalStore::open(dir)?);
        if format < store_file::STORE_FORMAT_VERSION {
            // Opening the index wrote what the newer format adds.
            store_file::write_format_file(dir, store_file::STORE_FORMAT_VERSION)
                .map_err(io_err(format!("upgrading the store format file in {}", dir.display())))?;
            tracing::info!("store {} upgraded from format {format} to {}", dir.display(), store_file::STORE_FORMAT_VERSION);
        }
        let catalog = Catalog::open(&dir.join("catalog.redb"))?;
        let repo = Repository {
            dir: dir.to_path_buf(),
            store,
            catalog,
            branches: RwLock::new(BTreeMap::new()),
            gc_lock: RwLock::new(()),
            default_retention_secs: std::sync::atomic::AtomicU64::new(0),
            pinned: parking_lot::Mutex::new(HashMap::new()),
            gc_running: parking_lot::Mutex::new(()),
            du_running: parking_lot::Mutex::new(()),
            gc_activity: parking_lot::Mutex::new(collect::GcActivity::default()),
            failed_commits: parking_lot::Mutex::new(HashSet::new()),
            expired_bytes: std::sync::atomic::AtomicU64::new(0),
        };
        let records = repo.catalog.list()?;
        for rec in &records {
            let branch = Branch::open(repo.store.clone(), rec, &repo.log_dir(rec.id))?;
            repo.branches.write().insert(rec.name.clone(), Arc::new(branch));
        }
        repo.remove_orphan_logs(&records);
        Ok(repo)
    }

    /// Prepares a clean stop, after the last commit: every object durable and the
    /// object index wholly in `index.redb` (see `LocalStore::close_index`).
    pub fn close(&self) -> Result<(), RepoError> {
        Ok(self.store.close_index()?)
    }

    /// Removes intent logs no catalog record names (left by a crash inside `reset`,
    /// `add` or `delete`): nothing will ever replay them.
    fn remove_orphan_logs(&self, records: &[BranchRecord]) {
        let Ok(entries) = std::fs::read_dir(self.dir.join("logs")) else { return };
        for e in entries.flatten() {
            let named = e.file_name().to_str().and_then(|n| n.parse::<u64>().ok()).is_some_and(|id| records.iter().any(|r| r.id == id));
            if !named {
                if let Err(err) = std::fs::remove_dir_all(e.path()) {
                    tracing::warn!("removing the orphaned intent log {}: {err}", e.path().display());
                }
            }
        }
    }

    fn log_dir(&self, id: u64) -> PathBuf {
        self.dir.join("logs").join(id.to_string())
    }

    pub fn store(&self) -> &Arc<LocalStore> {
        &self.store
    }

    pub fn get(&self, name: &str) -> Result<Arc<Branch>, RepoError> {
        self.branches.read().get(name).cloned().ok_or_else(|| RepoError::NotFound(name.to_string()))
    }

    pub fn record(&self, name: &str) -> Result<BranchRecord, RepoError> {
        self.catalog.get(name)?.ok_or_else(|| RepoError::NotFound(name.to_string()))
    }

    pub fn records(&self) -> Result<Vec<BranchRecord>, RepoError> {
        Ok(self.catalog.list()?)
    }

    pub fn branches(&self) -> Vec<Arc<Branch>> {
        self.branches.read().values().cloned().collect()
    }

    fn check_new_name(&self, name: &str) -> Result<(), RepoError> {
        validate_name(name)?;
        if self.branches.read().contains_key(name) {
            return Err(RepoError::Exists(name.to_string()));
        }
        Ok(())
    }

    fn add(&self, name: &str, kind: Kind, root: Hash, parent: Option<String>) -> Result<Arc<Branch>, RepoError> {
        let id = self.catalog.next_id()?;
        let log_dir = self.log_dir(id);
        if log_dir.exists() {
            std::fs::remove_dir_all(&log_dir).map_err(io_err("clearing a stale intent log"))?;
        }
        let created_unix = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let rec = BranchRecord { name: name.to_string(), id, kind, root, log_seq: 0, parent, created_unix };
        let branch = Arc::new(Branch::open(self.store.clone(), &rec, &log_dir)?);
        self.catalog.put(&rec)?;
        let mut branches = self.branches.write();
        if branches.contains_key(name) {
            self.catalog.remove(name, id).ok();
            return Err(RepoError::Exists(name.to_string()));
        }
        branches.insert(name.to_string(), branch.clone());
        Ok(branch)
    }

    /// A new branch holding an empty root directory owned by `uid:gid`, mode 0700.
    pub fn create_empty(&self, name: &str, uid: u32, gid: u32) -> Result<Arc<Branch>, RepoError> {
        self.check_new_name(name)?;
        // Until the catalog names the new root, GC would see its objects as dead.
        let _no_gc = self.gc_lock.read();
        let mut tree = Tree::empty(self.store.clone(), 0o700, uid, gid);
        let root = tree.commit()?;
        self.store.flush()?;
        self.add(name, Kind::Branch, root, None)
    }

    /// A new branch or snapshot at the current state of `source`, which may be running.
    pub fn create_from(&self, name: &str, source: &str, kind: Kind) -> Result<Arc<Branch>, RepoError> {
        self.check_new_name(name)?;
        let src = self.get(source)?;
        // Held until the catalog names the new head: a later commit of the source would
        // otherwise leave `root` unnamed, and a GC in between would free what it holds.
        let _no_gc = self.gc_lock.read();
        let root = self.commit_locked(&src)?;
        self.add(name, kind, root, Some(source.to_string()))
    }

    /// Commits one branch and records its new head.
    pub fn commit_branch(&self, branch: &Branch) -> Result<Hash, RepoError> {
        let _no_gc = self.gc_lock.read();
        self.commit_locked(branch)
    }

    /// [`Repository::commit_branch`] for a caller that holds the GC lock for reading.
    fn commit_locked(&self, branch: &Branch) -> Result<Hash, RepoError> {
        let committed = self.commit_unrecorded(branch);
        let mut failed = self.failed_commits.lock();
        match &committed {
            Ok(_) => failed.remove(&branch.name),
            Err(_) => failed.insert(branch.name.clone()),
        };
        committed
    }

    fn commit_unrecorded(&self, branch: &Branch) -> Result<Hash, RepoError> {
        Ok(branch.commit(self.store.as_ref(), |c| {
            let mut rec = self.catalog.get(&branch.name).map_err(|e| e.to_string())?.ok_or("branch was deleted")?;
            rec.root = c.root;
            rec.log_seq = c.log_seq;
            let window = self.retention_of(&rec).map_err(|e| e.to_string())?;
            let point = Point { at_unix_micros: c.cut_unix_micros, root: c.root, changed_bytes: c.changed_bytes, app: None };
            let freed = self.catalog.put_head(&rec, (window > 0).then_some((&point, window))).map_err(|e| e.to_string())?;
            self.expired_bytes.fetch_add(freed, std::sync::atomic::Ordering::Relaxed);
            Ok(())
        })?)
    }

    pub fn commit_all(&self) -> Result<(), RepoError> {
        for b in self.branches() {
            self.commit_branch(&b)?;
        }
        Ok(())
    }

    /// Points branch `name` at a fresh commit of its parent, dropping its own changes, in
    /// one catalog transaction: the new head comes with a new id and so a new, empty
    /// intent log. A crash before that transaction leaves the old branch (its head and
    /// its log), after it the new one; the old log is never replayed onto the new head.
    /// The caller has made sure nothing uses the branch.
    pub fn reset(&self, name: &str) -> Result<Arc<Branch>, RepoError> {
        let old = self.record(name)?;
        let parent = old.parent.clone().ok_or_else(|| RepoError::NoParent(name.to_string()))?;
        let src = self.get(&parent)?;
        let _no_gc = self.gc_lock.read();
        let root = self.commit_locked(&src)?;
        let id = self.catalog.next_id()?;
        let log_dir = self.log_dir(id);
        if log_dir.exists() {
            std::fs::remove_dir_all(&log_dir).map_err(io_err("clearing a stale intent log"))?;
        }
        let rec = BranchRecord { id, root, log_seq: 0, ..old.clone() };
        let branch = Arc::new(Branch::open(self.store.clone(), &rec, &log_dir)?);
        self.catalog.replace(&rec, old.id)?;
        self.branches.write().insert(name.to_string(), branch.clone());
        let old_log = self.log_dir(old.id);
        if old_log.exists() {
            std::fs::remove_dir_all(&old_log).map_err(io_err(format!("removing the old intent log of {name}")))?;
        }
        Ok(branch)
    }

    /// Forgets a branch; the caller has made sure nothing uses it.
    pub fn delete(&self, name: &str) -> Result<(), RepoError> {
        let branch = self.branches.write().remove(name).ok_or_else(|| RepoError::NotFound(name.to_string()))?;
        self.failed_commits.lock().remove(name);
        self.catalog.remove(name, branch.id)?;
        let dir = self.log_dir(branch.id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(io_err(format!("removing the intent log of {name}")))?;
        }
        Ok(())
    }

    /// Reads and checks every object every branch and snapshot reaches.
    pub fn verify(&self) -> Result<VerifyReport, RepoError> {
        self.commit_all()?;
        let mut checked: HashMap<Hash, Option<String>> = HashMap::new();
        let mut damaged = Vec::new();
        for rec in self.catalog.list()? {
            let listing = walk::list(self.store.as_ref(), &rec.root, None);
            for b in listing.broken {
                checked.insert(b.hash, Some(b.error.clone()));
                damaged.push(Damage { branch: rec.name.clone(), path: b.path, offset: b.offset, object: b.hash.to_hex(), error: b.error });
            }
            for h in listing.nodes {
                checked.entry(h).or_insert(None);
            }
            for f in listing.files {
                for (idx, h) in f.blocks {
                    let result = checked.entry(h).or_insert_with(|| self.store.get(&h).err().map(|e| e.to_string())).clone();
                    if let Some(error) = result {
                        damaged.push(Damage {
                            branch: rec.name.clone(),
                            path: f.path.clone(),
                            offset: Some(idx * BLOCK_SIZE as u64),
                            object: h.to_hex(),
                            error,
                        });
                    }
                }
            }
        }
        Ok(VerifyReport { objects_checked: checked.len() as u64, damaged })
    }
}
