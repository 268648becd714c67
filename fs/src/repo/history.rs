//! The repository's side of history (`crate::history`): retention windows, the points a
//! branch keeps, and branches made from one of them.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::collect::Pin;
use super::{RepoError, Repository};
use crate::block::BLOCK_SIZE;
use crate::branch::Branch;
use crate::catalog::{BranchRecord, Kind};
use crate::history::{self, Point};
use crate::node::ROOT_INO;
use crate::tree::{BlockSource, Content, Tree};

/// `branch create --at` named a time no retained point covers.
#[derive(Debug, thiserror::Error)]
#[error("{}", describe(.branch, .at_unix_micros, .oldest_unix_micros, .newest_unix_micros))]
pub struct OutsideHistory {
    pub branch: String,
    pub at_unix_micros: u64,
    /// The window kept, when there is one.
    pub oldest_unix_micros: Option<u64>,
    pub newest_unix_micros: Option<u64>,
}

fn describe(branch: &str, at: &u64, oldest: &Option<u64>, newest: &Option<u64>) -> String {
    let t = |us: u64| history::format_utc(us);
    match (oldest, newest) {
        (Some(o), Some(n)) => format!(
            "branch {branch} has no retained point at or before {}: its history covers {} to {} (see `pgbranch branch log {branch}`)",
            t(*at),
            t(*o),
            t(*n)
        ),
        _ => format!(
            "branch {branch} keeps no history yet, so there is no point at {}: give it a window with `pgbranch branch set {branch} --history 24h`",
            t(*at)
        ),
    }
}

impl Repository {
    /// The window of branches that have none of their own (0: no history).
    pub fn set_default_retention(&self, window_secs: u64) {
        self.default_retention_secs.store(window_secs, Ordering::Relaxed);
    }

    pub fn default_retention(&self) -> u64 {
        self.default_retention_secs.load(Ordering::Relaxed)
    }

    /// The window in force for `rec`: its own, else the store's default; snapshots
    /// never change, so they keep none.
    pub(super) fn retention_of(&self, rec: &BranchRecord) -> Result<u64, RepoError> {
        if rec.kind == Kind::Snapshot {
            return Ok(0);
        }
        Ok(self.catalog.retention(rec.id)?.unwrap_or_else(|| self.default_retention()))
    }

    /// The window in force for branch `name`, and whether it is the branch's own.
    pub fn retention(&self, name: &str) -> Result<(u64, bool), RepoError> {
        let rec = self.record(name)?;
        let own = self.catalog.retention(rec.id)?;
        Ok((self.retention_of(&rec)?, own.is_some()))
    }

    /// Gives branch `name` its own window (None: back to the store's default). Points
    /// beyond a shorter window go at its next commit.
    pub fn set_retention(&self, name: &str, window_secs: Option<u64>) -> Result<(), RepoError> {
        let rec = self.record(name)?;
        if rec.kind == Kind::Snapshot {
            return Err(RepoError::InvalidName(name.to_string(), "is a snapshot: it never changes, so it has no history"));
        }
        Ok(self.catalog.set_retention(rec.id, window_secs)?)
    }

    /// Records what the program on branch `name` reported about its point at `at`
    /// (false: the point is no longer retained).
    pub fn annotate_point(&self, name: &str, at_unix_micros: u64, app: history::AppPosition) -> Result<bool, RepoError> {
        let rec = self.record(name)?;
        Ok(self.catalog.annotate_point(rec.id, at_unix_micros, app)?)
    }

    /// The retained points of `name`, oldest first.
    pub fn history(&self, name: &str) -> Result<Vec<Point>, RepoError> {
        let rec = self.record(name)?;
        Ok(self.catalog.history(rec.id)?)
    }

    /// The newest retained point of `name`, if it keeps any.
    pub fn newest_point(&self, name: &str) -> Result<Option<Point>, RepoError> {
        let rec = self.record(name)?;
        Ok(self.catalog.newest_point(rec.id)?)
    }

    /// A new branch holding `source` as its newest retained point at or before
    /// `at_unix_micros` showed it.
    pub fn create_at(&self, name: &str, source: &str, at_unix_micros: u64) -> Result<(Arc<Branch>, Point), RepoError> {
        self.check_new_name(name)?;
        let rec = self.record(source)?;
        // Held until the catalog names the new head: GC could otherwise free the
        // point's objects once thinning has dropped it.
        let _no_gc = self.gc_lock.read();
        let points = self.catalog.history(rec.id)?;
        let Some(point) = history::point_at(&points, at_unix_micros).cloned() else {
            return Err(OutsideHistory {
                branch: source.to_string(),
                at_unix_micros,
                oldest_unix_micros: points.first().map(|p| p.at_unix_micros),
                newest_unix_micros: points.last().map(|p| p.at_unix_micros),
            }
            .into());
        };
        let branch = self.add(name, Kind::Branch, point.root, Some(source.to_string()))?;
        Ok((branch, point))
    }

    /// A new branch holding `source`'s retained point cut at `at_unix_micros` exactly
    /// (one the caller chose from [`Repository::history`]); an error if thinning has
    /// dropped it since.
    pub fn create_from_point(&self, name: &str, source: &str, at_unix_micros: u64) -> Result<(Arc<Branch>, Point), RepoError> {
        self.check_new_name(name)?;
        let rec = self.record(source)?;
        let _no_gc = self.gc_lock.read();
        let points = self.catalog.history(rec.id)?;
        let Some(point) = points.into_iter().find(|p| p.at_unix_micros == at_unix_micros) else {
            return Err(RepoError::Store(crate::store::StoreError::Index(format!(
                "the retained point {} of {source} has been dropped from its history meanwhile; try again",
                history::format_utc(at_unix_micros)
            ))));
        };
        let branch = self.add(name, Kind::Branch, point.root, Some(source.to_string()))?;
        Ok((branch, point))
    }
}

/// Read access to the files of one retained point, for callers that need what a later
/// point held (e.g. log files to replay up to an instant). Its root stays marked live
/// while it lives, even once thinning drops the point.
pub struct PointFiles<'a> {
    tree: Tree,
    _pin: Pin<'a>,
}

impl Repository {
    pub fn point_files(&self, point: &Point) -> Result<PointFiles<'_>, RepoError> {
        let pin = {
            // Pinned where no collection is reading the roots, and only while the
            // catalog still names the point (or a head holds it): marked either way.
            let _no_gc = self.gc_lock.read();
            let rec_points = self.catalog.history_roots()?;
            let named = rec_points.contains(&point.root) || self.catalog.list()?.iter().any(|r| r.root == point.root);
            if !named {
                return Err(RepoError::Store(crate::store::StoreError::Index(format!(
                    "the retained point {} has been dropped from history meanwhile",
                    history::format_utc(point.at_unix_micros)
                ))));
            }
            self.pin(point.root)
        };
        let tree = Tree::load(self.store.clone(), &point.root).map_err(|e| {
            RepoError::Store(crate::store::StoreError::Index(format!(
                "loading the retained point {}: {e}",
                history::format_utc(point.at_unix_micros)
            )))
        })?;
        Ok(PointFiles { tree, _pin: pin })
    }
}

impl PointFiles<'_> {
    fn resolve(&self, path: &str) -> Option<u64> {
        path.split('/').filter(|c| !c.is_empty()).try_fold(ROOT_INO, |ino, name| self.tree.lookup(ino, name.as_bytes()).ok())
    }

    /// The names in directory `dir` (relative to the root); empty when it does not exist.
    pub fn list(&self, dir: &str) -> Vec<String> {
        let Some(ino) = self.resolve(dir) else { return Vec::new() };
        match self.tree.inode(ino).map(|i| &i.content) {
            Ok(Content::Dir { entries, .. }) => entries.keys().map(|n| String::from_utf8_lossy(n).into_owned()).collect(),
            _ => Vec::new(),
        }
    }

    /// The whole content of file `path`; None when it does not exist.
    pub fn read(&mut self, path: &str) -> Result<Option<Vec<u8>>, RepoError> {
        let Some(ino) = self.resolve(path) else { return Ok(None) };
        let failed = |e: crate::tree::Errno| RepoError::Io {
            context: format!("reading {path} of a retained point"),
            source: std::io::Error::from_raw_os_error(e.0),
        };
        self.tree.load_map(ino).map_err(failed)?;
        let size = self.tree.inode(ino).map_err(failed)?.size();
        let mut out = Vec::with_capacity(size as usize);
        let mut offset = 0u64;
        while offset < size {
            let chunk = (size - offset).min(64 << 20) as u32;
            let (_, plan) = self.tree.read_plan(ino, offset, chunk).map_err(failed)?;
            for source in plan {
                match source {
                    BlockSource::Hole => out.extend_from_slice(&[0u8; BLOCK_SIZE]),
                    BlockSource::Dirty(d) => out.extend_from_slice(&d),
                    BlockSource::Stored(h) => out.extend_from_slice(&self.tree.store().get(&h)?),
                }
            }
            offset += u64::from(chunk);
        }
        out.truncate(size as usize);
        Ok(Some(out))
    }
}
