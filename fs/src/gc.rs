//! Garbage collection as a plan, then its execution (as rustic_core's prune builds a
//! `PrunePlan` and then runs it).
//!
//! [`plan`] only reads: it streams the index once, scans the packs, and decides which
//! packs to rewrite or delete and which index entries to drop. Any error while planning
//! aborts GC with nothing deleted; a failed read is never taken to mean "not live".
//! [`execute`] then carries the plan out, one pack at a time, in the order that keeps
//! the store consistent after a crash at any point:
//!
//! 1. the pack's live records are appended to the active pack, which is fsynced;
//! 2. one index transaction points those objects at their new copies and drops the
//!    pack's dead entries, so the index never names a record in a removed pack;
//! 3. the old pack file is removed.
//!
//! Wholly-dead packs go first (their entries dropped in one transaction, then the
//! files), so a full disk gets space back before GC needs any; then the rewrites, the
//! packs with most garbage first.
//!
//! Dead entries in packs that are kept are dropped at the end, then the packs directory
//! is fsynced and the index compacted. The caller (`Repository::gc`) holds the GC lock
//! from before marking until after execution, so no commit lands between plan and
//! execute: a commit could otherwise skip storing a block whose dead copy is indexed
//! (puts deduplicate by index lookup) just before that copy is removed.

use std::collections::{HashMap, HashSet};

use crate::block::Hash;
use crate::format::pack::PACK_HEADER_LEN;
use crate::pack::{Location, RECORD_HEADER};
use crate::store::{ObjectStore, StoreError};

/// Keep a pack whose live records fill at least this percentage of it.
const KEEP_PACK_LIVE_PERCENT: u64 = 97;

/// What GC did; `pgbranch gc` prints it.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    pub objects_removed: u64,
    pub packs_rewritten: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
}

/// The pack-level operations GC plans and executes with, on top of [`ObjectStore`].
pub trait GcStore: ObjectStore {
    /// Makes every put durable and indexed and starts a new active pack; returns its
    /// number. Packs numbered below it are immutable from then on.
    fn seal(&self) -> Result<u32, StoreError>;
    /// Pack numbers present, ascending.
    fn pack_numbers(&self) -> Result<Vec<u32>, StoreError>;
    /// Size of a pack file in bytes.
    fn pack_size(&self, pack: u32) -> Result<u64, StoreError>;
    /// Every record of a pack, read from the pack itself.
    fn pack_records(&self, pack: u32) -> Result<Vec<(Hash, Location)>, StoreError>;
    /// Calls `f` for every index entry, from one consistent read of the index.
    fn for_each_index_entry(&self, f: &mut dyn FnMut(Hash, Location) -> Result<(), StoreError>) -> Result<(), StoreError>;
    /// Appends copies of these records to the active pack and fsyncs it; returns the
    /// new locations, in order.
    fn copy_records(&self, records: &[(Hash, Location)]) -> Result<Vec<(Hash, Location)>, StoreError>;
    /// One durable index transaction: insert (or re-point) `insert`, remove `remove`.
    fn update_index(&self, insert: &[(Hash, Location)], remove: &[Hash]) -> Result<(), StoreError>;
    /// Removes a pack file (whose records the index no longer names).
    fn remove_pack(&self, pack: u32) -> Result<(), StoreError>;
    /// Makes pack removals durable and returns the index's free space to the file system.
    fn finish_gc(&self) -> Result<(), StoreError>;
}

/// What to do with one pack.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PackAction {
    /// Copy `live` into the active pack, drop `dead` from the index, remove the pack.
    Rewrite { pack: u32, size: u64, live: Vec<(Hash, Location)>, dead: Vec<Hash> },
    /// Nothing in the pack is live: drop `dead` from the index, remove the pack.
    Delete { pack: u32, size: u64, dead: Vec<Hash> },
}

impl PackAction {
    pub fn pack(&self) -> u32 {
        match self {
            PackAction::Rewrite { pack, .. } | PackAction::Delete { pack, .. } => *pack,
        }
    }
}

/// Everything GC will do, decided before anything is deleted.
#[derive(Debug, Clone, Default)]
pub struct GcPlan {
    /// Objects marked live (reachable from a branch or snapshot head).
    pub live_objects: u64,
    /// Live objects the index does not hold (damage GC cannot make worse).
    pub live_missing: u64,
    /// The active pack at planning time; it and later packs are left alone.
    pub active_pack: u32,
    /// Packs to delete (largest first), then packs to rewrite (most garbage first).
    pub packs: Vec<PackAction>,
    /// Index entries of dead objects in packs that are kept.
    pub drop_entries: Vec<Hash>,
    /// Index entries dropped in all: the objects GC removes.
    pub objects_removed: u64,
    /// Bytes the store occupied when planned.
    pub bytes_before: u64,
    /// Bytes of the packs that will be rewritten or deleted.
    pub pack_bytes_freed: u64,
    /// Bytes copied into the active pack by rewrites.
    pub bytes_copied: u64,
}

impl GcPlan {
    /// Pack bytes expected after execution (index compaction not counted).
    pub fn estimated_bytes_after(&self) -> u64 {
        (self.bytes_before + self.bytes_copied).saturating_sub(self.pack_bytes_freed)
    }
}

/// The error of a GC that stopped part way, saying what it had already freed (which
/// stays freed: every finished step is complete in the index and on disk).
fn stopped(e: StoreError, freed: u64, packs: u64) -> StoreError {
    if packs == 0 {
        return e;
    }
    let kind = if let StoreError::Io(io) = &e { io.kind() } else { std::io::ErrorKind::Other };
    StoreError::Io(std::io::Error::new(
        kind,
        format!("gc freed {freed} bytes ({packs} packs) and then stopped: {e}; run `pgbranch gc` again once more space is free"),
    ))
}

/// Decides what GC will do, given every object reachable from a head. Reads only; any
/// error aborts with nothing deleted.
pub fn plan(store: &dyn GcStore, live: &HashSet<Hash>) -> Result<GcPlan, StoreError> {
    let active_pack = store.seal()?;
    let bytes_before = store.physical_bytes()?;
    // The indexed location of each live object, and every dead entry by pack.
    let mut live_at: HashMap<Hash, Location> = HashMap::with_capacity(live.len());
    let mut dead_by_pack: HashMap<u32, Vec<Hash>> = HashMap::new();
    let mut objects_removed = 0u64;
    store.for_each_index_entry(&mut |h, loc| {
        if live.contains(&h) {
            live_at.insert(h, loc);
        } else {
            dead_by_pack.entry(loc.pack).or_default().push(h);
            objects_removed += 1;
        }
        Ok(())
    })?;
    let live_missing = live.len().saturating_sub(live_at.len()) as u64;
    if live_missing > 0 {
        tracing::warn!("gc: {live_missing} live objects are not in the index (run `pgbranch verify`)");
    }

    // How many live objects the index places in each pack: a scan must find them all.
    let mut live_per_pack: HashMap<u32, usize> = HashMap::new();
    for loc in live_at.values() {
        *live_per_pack.entry(loc.pack).or_default() += 1;
    }

    let mut plan =
        GcPlan { live_objects: live.len() as u64, live_missing, active_pack, bytes_before, objects_removed, ..Default::default() };
    for pack in store.pack_numbers()? {
        if pack >= active_pack {
            continue;
        }
        let size = store.pack_size(pack)?;
        // A record is live only if it is the indexed copy of a live object.
        let live_records: Vec<(Hash, Location)> =
            store.pack_records(pack)?.into_iter().filter(|(h, loc)| live_at.get(h) == Some(loc)).collect();
        let indexed = live_per_pack.get(&pack).copied().unwrap_or(0);
        if live_records.len() != indexed {
            // A damaged record header ended the scan early: rewriting or deleting this
            // pack would lose the live records past it.
            return Err(StoreError::Index(format!(
                "pack {pack}: the index places {indexed} live objects in it but a scan of the pack finds {}; \
                 gc aborted with nothing deleted (run `pgbranch verify`)",
                live_records.len()
            )));
        }
        let live_bytes: u64 = live_records.iter().map(|(_, l)| l.len as u64 + RECORD_HEADER).sum();
        let dead = dead_by_pack.remove(&pack).unwrap_or_default();
        // The pack header is neither live nor dead; a pack with no live record goes.
        let records_size = size.saturating_sub(PACK_HEADER_LEN);
        if !live_records.is_empty() && live_bytes * 100 >= records_size * KEEP_PACK_LIVE_PERCENT {
            plan.drop_entries.extend(dead);
            continue;
        }
        plan.pack_bytes_freed += size;
        plan.bytes_copied += live_bytes;
        plan.packs.push(if live_records.is_empty() {
            PackAction::Delete { pack, size, dead }
        } else {
            PackAction::Rewrite { pack, size, live: live_records, dead }
        });
    }
    // Wholly-dead packs first (they free space and need none), then the rewrites with
    // the most garbage: each frees more than it copies.
    let garbage = |a: &PackAction| match a {
        PackAction::Delete { size, .. } => (0, u64::MAX - size),
        PackAction::Rewrite { size, live, .. } => {
            (1, u64::MAX - size.saturating_sub(live.iter().map(|(_, l)| l.len as u64 + RECORD_HEADER).sum()))
        }
    };
    plan.packs.sort_by_key(|a| (garbage(a), a.pack()));
    // Dead entries naming packs that are gone (or not yet scanned) are dropped too.
    let mut rest: Vec<_> = dead_by_pack.into_iter().collect();
    rest.sort_unstable_by_key(|(p, _)| *p);
    plan.drop_entries.extend(rest.into_iter().flat_map(|(_, d)| d));
    Ok(plan)
}

/// Carries out a plan made by [`plan`] on the same store, under the same GC lock.
///
/// Space is freed before any is needed: the wholly-dead packs go first (one index
/// transaction, then their files), then the rewrites, most garbage first, each freeing
/// more than it copies. If a step fails (a full disk: the copy gets ENOSPC), what was
/// freed stays freed and the error says how much.
pub fn execute(store: &dyn GcStore, plan: GcPlan) -> Result<GcReport, StoreError> {
    let mut report = GcReport { objects_removed: plan.objects_removed, bytes_before: plan.bytes_before, ..Default::default() };
    let (deletes, rewrites): (Vec<PackAction>, Vec<PackAction>) =
        plan.packs.into_iter().partition(|a| matches!(a, PackAction::Delete { .. }));
    let mut freed = 0u64;
    let dead: Vec<Hash> =
        deletes.iter().flat_map(|a| if let PackAction::Delete { dead, .. } = a { dead.clone() } else { Vec::new() }).collect();
    if !deletes.is_empty() {
        store.update_index(&[], &dead)?;
    }
    for action in &deletes {
        if let PackAction::Delete { pack, size, .. } = action {
            store.remove_pack(*pack).map_err(|e| stopped(e, freed, report.packs_rewritten))?;
            freed += size;
            report.packs_rewritten += 1;
        }
    }
    for action in rewrites {
        if let PackAction::Rewrite { pack, size, live, dead } = action {
            let step = || -> Result<(), StoreError> {
                let moved = store.copy_records(&live)?;
                store.update_index(&moved, &dead)?;
                store.remove_pack(pack)
            };
            step().map_err(|e| stopped(e, freed, report.packs_rewritten))?;
            freed = (freed + size).saturating_sub(live.iter().map(|(_, l)| l.len as u64 + RECORD_HEADER).sum());
            report.packs_rewritten += 1;
        }
    }
    if !plan.drop_entries.is_empty() {
        store.update_index(&[], &plan.drop_entries)?;
    }
    store.finish_gc()?;
    report.bytes_after = store.physical_bytes()?;
    Ok(report)
}
