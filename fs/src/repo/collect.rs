//! The repository's GC: what is live (every head, every retained point, every pinned
//! root, every block a large write stored ahead of its commit), a collection alongside commits, and the automatic policy that keeps the store
//! within a bound of what it needs.
//!
//! A collection (`gc::plan`, `gc::execute`) runs while branches commit. It excludes
//! commits only for the moment it takes to seal, start tracking revivals and read the
//! roots (the GC lock, taken for writing, waits for commits in flight); everything a
//! later commit stores lands in newer packs or is recorded as revived. Marking, the
//! index scans and pack copies then run with commits going on.

use std::path::PathBuf;
use std::sync::atomic::Ordering;

use parking_lot::MutexGuard;
use serde::Serialize;

use super::{RepoError, Repository};
use crate::block::Hash;
use crate::gc::{self, GcPlan, GcReport, GcStore, LiveSet, LiveSetBuilder, Marker};
use crate::history;
use crate::store::{LocalStore, ObjectStore};

/// The automatic GC's rewrite threshold: a sealed pack less than this full of live
/// records is rewritten, so after a collection the sealed packs hold at most 1/0.8 =
/// 1.25x what is live.
pub const AUTO_KEEP_PACK_LIVE_PERCENT: u64 = 80;

/// The automatic GC starts a collection once the garbage made since the last one (the
/// store's growth since it ended, plus what history thinning has expired) reaches this
/// share of what it found live...
pub const AUTO_GROWTH_PERCENT: u64 = 25;
/// ...or by this many bytes, whichever is more (small stores would otherwise collect
/// at every commit).
pub const AUTO_GROWTH_MIN_BYTES: u64 = 16 << 20;

/// What GC has done, for `status`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct GcActivity {
    pub running: bool,
    /// Collections finished since the daemon started (manual and automatic).
    pub collections: u64,
    pub last_finished_unix_micros: Option<u64>,
    pub last_report: Option<GcReport>,
    /// Live bytes (heads, retained points) the last collection found.
    pub live_bytes: u64,
    /// How long the last collection took, marking included.
    pub last_duration_millis: u64,
    /// `Repository::expired_bytes` when the last collection began.
    #[serde(skip)]
    expired_at_last: u64,
    pub last_error: Option<String>,
    pub bytes_freed_total: u64,
    pub objects_removed_total: u64,
}

/// Stops revival tracking when a collection ends, whichever way it ends.
struct Tracking<'a>(&'a LocalStore);

impl Drop for Tracking<'_> {
    fn drop(&mut self) {
        self.0.track_revivals(None);
    }
}

/// A planned collection, ready to execute. Commits may go on; revivals are tracked
/// until it is executed or dropped.
pub struct PlannedGc<'a> {
    plan: GcPlan,
    started: std::time::Instant,
    /// `Repository::expired_bytes` when it began.
    expired: u64,
    live: LiveSet,
    _tracking: Tracking<'a>,
    _one_at_a_time: MutexGuard<'a, ()>,
}

impl PlannedGc<'_> {
    pub fn plan(&self) -> &GcPlan {
        &self.plan
    }
}

/// Keeps a root marked while a caller outside the catalog reads it.
pub(super) struct Pin<'a> {
    repo: &'a Repository,
    root: Hash,
}

impl Drop for Pin<'_> {
    fn drop(&mut self) {
        let mut pinned = self.repo.pinned.lock();
        if let Some(n) = pinned.get_mut(&self.root) {
            *n -= 1;
            if *n == 0 {
                pinned.remove(&self.root);
            }
        }
    }
}

impl Repository {
    /// Pins `root` (the caller holds the GC lock for reading, so no collection is
    /// reading the roots at this moment).
    pub(super) fn pin(&self, root: Hash) -> Pin<'_> {
        *self.pinned.lock().entry(root).or_default() += 1;
        Pin { repo: self, root }
    }

    fn gc_spill_dir(&self) -> PathBuf {
        self.dir.join("gc")
    }

    /// Deletes every object no branch, snapshot or retained point reaches, now:
    /// commits every branch, then [`Repository::plan_gc`] and [`Repository::execute_gc`].
    pub fn gc(&self) -> Result<GcReport, RepoError> {
        let planned = self.plan_gc()?;
        self.execute_gc(planned)
    }

    /// Commits every branch, marks from every root and plans the sweep. Deletes
    /// nothing; commits may go on until (and while) it is executed.
    pub fn plan_gc(&self) -> Result<PlannedGc<'_>, RepoError> {
        self.commit_all()?;
        self.plan_collection(gc::KEEP_PACK_LIVE_PERCENT, self.gc_running.lock())
    }

    fn plan_collection<'a>(&'a self, keep_percent: u64, one: MutexGuard<'a, ()>) -> Result<PlannedGc<'a>, RepoError> {
        self.gc_activity.lock().running = true;
        let planned = self.mark_and_plan(keep_percent, one);
        if let Err(e) = &planned {
            let mut a = self.gc_activity.lock();
            a.running = false;
            a.last_error = Some(e.to_string());
        }
        planned
    }

    fn mark_and_plan<'a>(&'a self, keep_percent: u64, one: MutexGuard<'a, ()>) -> Result<PlannedGc<'a>, RepoError> {
        let store = self.store.as_ref();
        let started = std::time::Instant::now();
        let expired = self.expired_bytes.load(Ordering::Relaxed);
        let started_at_bytes = store.physical_bytes()?;
        let active = store.seal()?;
        let (tracking, roots, written) = {
            // Waits for commits in flight: a commit's objects are either reachable from
            // a root read here, or stored (or revived) after tracking began.
            let _no_commits = self.gc_lock.write();
            // A failed commit may have stored blocks its branch's tree now names and
            // no head reaches; collecting now could free them. (A commit failing from
            // here on stores into newer packs or revives: safe.)
            if let Some(name) = self.failed_commits.lock().iter().next() {
                return Err(RepoError::Store(crate::store::StoreError::Index(format!(
                    "the last commit of branch {name} failed; gc waits until it commits again (see `pgbranch status`)"
                ))));
            }
            store.track_revivals(Some(active));
            let tracking = Tracking(store);
            let mut roots: Vec<(String, Hash)> = Vec::new();
            for rec in self.catalog.list()? {
                roots.push((format!("branch {}", rec.name), rec.root));
            }
            for root in self.catalog.history_roots()? {
                roots.push(("a retained point".to_string(), root));
            }
            for root in self.pinned.lock().keys() {
                roots.push(("a point being read".to_string(), *root));
            }
            // Blocks large writes stored that only a live tree and its intent log name.
            let written: Vec<Hash> = self.branches().iter().flat_map(|b| b.bulk_pins()).collect();
            (tracking, roots, written)
        };
        let mut marker = Marker::new(store, LiveSetBuilder::new(Some(&self.gc_spill_dir()))?);
        for (what, root) in &roots {
            marker.mark(what, root)?;
        }
        for hash in written {
            marker.mark_object(hash)?;
        }
        let live = marker.finish();
        let mut plan = gc::plan(store, active, &live, keep_percent)?;
        // The report's "before" is the size when the collection began, not after marking.
        plan.bytes_before = started_at_bytes;
        Ok(PlannedGc { plan, started, expired, live, _tracking: tracking, _one_at_a_time: one })
    }

    /// Carries out a plan from [`Repository::plan_gc`].
    pub fn execute_gc(&self, planned: PlannedGc<'_>) -> Result<GcReport, RepoError> {
        let PlannedGc { plan, started, expired, live, _tracking, _one_at_a_time } = planned;
        let live_bytes = plan.live_bytes;
        let result = gc::execute(self.store.as_ref(), plan, &live);
        drop((_tracking, live, _one_at_a_time));
        let mut a = self.gc_activity.lock();
        a.running = false;
        match &result {
            Ok(r) => {
                a.collections += 1;
                a.last_finished_unix_micros = Some(history::now_unix_micros());
                a.live_bytes = live_bytes;
                a.last_duration_millis = started.elapsed().as_millis() as u64;
                a.expired_at_last = expired;
                a.bytes_freed_total += r.bytes_before.saturating_sub(r.bytes_after);
                a.objects_removed_total += r.objects_removed;
                a.last_report = Some(r.clone());
                a.last_error = None;
            }
            Err(e) => a.last_error = Some(e.to_string()),
        }
        Ok(result?)
    }

    /// One step of the automatic GC: collects (without committing first) when the
    /// store has grown past the bound since the last collection, unless a collection
    /// is already running. Returns what it did, if it ran.
    pub fn auto_gc(&self) -> Result<Option<GcReport>, RepoError> {
        let Some(one) = self.gc_running.try_lock() else { return Ok(None) };
        let physical = self.store.physical_bytes()?;
        let (after, live, expired_at_last) = {
            let a = self.gc_activity.lock();
            (a.last_report.as_ref().map(|r| r.bytes_after), a.live_bytes, a.expired_at_last)
        };
        if let Some(after) = after {
            // Garbage comes from growth (replaced blocks no point keeps) and from points
            // leaving the window (what they held that later points replaced).
            let expired = self.expired_bytes.load(Ordering::Relaxed).saturating_sub(expired_at_last);
            let garbage = physical.saturating_sub(after) + expired;
            if garbage < Self::auto_gc_threshold(live) {
                return Ok(None);
            }
        }
        let planned = self.plan_collection(AUTO_KEEP_PACK_LIVE_PERCENT, one)?;
        self.execute_gc(planned).map(Some)
    }

    /// The estimated garbage at which the automatic GC collects, given the live bytes
    /// the last collection found.
    pub fn auto_gc_threshold(live_bytes: u64) -> u64 {
        (live_bytes * AUTO_GROWTH_PERCENT / 100).max(AUTO_GROWTH_MIN_BYTES)
    }

    /// Estimated bytes history thinning has made garbage since the last collection.
    pub fn expired_since_gc(&self) -> u64 {
        let at_last = self.gc_activity.lock().expired_at_last;
        self.expired_bytes.load(Ordering::Relaxed).saturating_sub(at_last)
    }

    /// What GC has done so far.
    pub fn gc_activity(&self) -> GcActivity {
        self.gc_activity.lock().clone()
    }
}
