//! Garbage collection as a plan, then its execution (as rustic_core's prune builds a
//! `PrunePlan` and then runs it), concurrent with commits.
//!
//! [`plan`] only reads: it scans the index once in hash order, merged with the marked
//! [`LiveSet`], and decides from per-pack counts which packs to delete, rewrite or trim.
//! Any error while planning aborts GC with nothing deleted; a failed read is never taken
//! to mean "not live". [`execute`] then carries the plan out a batch of packs at a time
//! (one more index scan per batch collects just those packs' entries, so memory stays
//! bounded), in the order that keeps the store consistent after a crash at any point:
//!
//! 1. the pack's live records are appended to the active pack, which is fsynced;
//! 2. index transactions (bounded in size) point those objects at their new copies and drop the
//!    pack's dead entries, so the index never names a record in a removed pack;
//! 3. the old pack file is removed.
//!
//! Wholly-dead packs go first, so a full disk gets space back before GC needs any;
//! then the rewrites, the packs with most garbage first; then the dead entries of kept
//! packs. Finally the packs directory is fsynced and the index compacted.
//!
//! Commits go on meanwhile. Everything they store lands in packs at or after the one
//! GC sealed, which GC leaves alone; but a put deduplicates against the index, so a
//! commit may name an object GC marked dead (the same bytes written again). The store
//! records such revivals from before marking until GC ends ([`GcStore::track_revivals`]),
//! and step 2 runs with puts held off ([`GcStore::with_puts_held`]) for the few
//! milliseconds of one pack's index transactions: a revived object is copied like a live one.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::block::Hash;
use crate::format::pack::PACK_HEADER_LEN;
use crate::pack::{Location, RECORD_HEADER};
use crate::store::{ObjectStore, StoreError};

pub mod live;
pub mod mark;
pub use live::{LiveCursor, LiveSet, LiveSetBuilder};
pub use mark::Marker;

/// `pgbranch gc` keeps a pack whose live records fill at least this share of it.
pub const KEEP_PACK_LIVE_PERCENT: u64 = 97;

/// Index entries one execution batch collects in memory at most (~12 MiB).
const BATCH_ENTRIES: u64 = 256 * 1024;

/// What GC did; `pgbranch gc` prints it.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct GcReport {
    pub objects_removed: u64,
    pub packs_rewritten: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Objects GC had found dead that a commit stored again while it ran (kept).
    #[serde(default)]
    pub objects_revived: u64,
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
    /// Calls `f` for every index entry, in ascending hash order, from one consistent
    /// read of the index.
    fn for_each_index_entry(&self, f: &mut dyn FnMut(Hash, Location) -> Result<(), StoreError>) -> Result<(), StoreError>;
    /// Appends copies of these records to the active pack, each verified against its
    /// hash, and fsyncs it; returns the new locations, in order.
    fn copy_records(&self, records: &[(Hash, Location)]) -> Result<Vec<(Hash, Location)>, StoreError>;
    /// Durable index transactions (several of bounded size for a large batch): insert
    /// (or re-point) `insert`, remove `remove`. The caller removes a pack only after.
    fn update_index(&self, insert: &[(Hash, Location)], remove: &[Hash]) -> Result<(), StoreError>;
    /// Removes a pack file (whose records the index no longer names).
    fn remove_pack(&self, pack: u32) -> Result<(), StoreError>;
    /// Makes pack removals durable and returns the index's free space to the file system.
    fn finish_gc(&self) -> Result<(), StoreError>;
    /// From now on (`Some(sealed)`), remember every put that finds its object already
    /// stored in a pack below `sealed`; `None` stops and forgets.
    fn track_revivals(&self, sealed_below: Option<u32>);
    /// Runs `f` with puts held off, giving it the objects revived so far.
    fn with_puts_held(&self, f: &mut dyn FnMut(&HashSet<Hash>) -> Result<(), StoreError>) -> Result<(), StoreError>;
}

/// What to do with one pack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PackAction {
    /// Nothing in the pack is live: drop its entries from the index, remove the pack.
    Delete { pack: u32, size: u64, dead: u64 },
    /// Copy the live records into the active pack, drop the dead entries, remove the pack.
    Rewrite { pack: u32, size: u64, live: u64, live_bytes: u64, dead: u64 },
    /// The pack is kept (mostly live, or already gone): drop only its dead entries.
    Trim { pack: u32, dead: u64 },
}

impl PackAction {
    pub fn pack(&self) -> u32 {
        match self {
            PackAction::Delete { pack, .. } | PackAction::Rewrite { pack, .. } | PackAction::Trim { pack, .. } => *pack,
        }
    }

    fn entries(&self) -> u64 {
        match self {
            PackAction::Delete { dead, .. } | PackAction::Trim { dead, .. } => *dead,
            PackAction::Rewrite { live, dead, .. } => live + dead,
        }
    }

    fn removes_pack(&self) -> bool {
        !matches!(self, PackAction::Trim { .. })
    }
}

/// Everything GC will do, decided before anything is deleted.
#[derive(Debug, Clone, Default)]
pub struct GcPlan {
    /// Live objects found in the index.
    pub live_objects: u64,
    /// Live objects the index does not hold (damage GC cannot make worse).
    pub live_missing: u64,
    /// The active pack at planning time; it and later packs are left alone.
    pub active_pack: u32,
    /// Deletes (largest first), then rewrites (most garbage first), then trims.
    pub packs: Vec<PackAction>,
    /// Index entries dropped in all: the objects GC removes.
    pub objects_removed: u64,
    /// Bytes the store occupied when planned.
    pub bytes_before: u64,
    /// Bytes of the packs that will be rewritten or deleted.
    pub pack_bytes_freed: u64,
    /// Bytes copied into the active pack by rewrites.
    pub bytes_copied: u64,
    /// Bytes of live records in sealed packs: what the heads and history need.
    pub live_bytes: u64,
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

#[derive(Default, Clone, Copy)]
struct PackCount {
    live: u64,
    live_bytes: u64,
    dead: u64,
}

/// Decides what GC will do with the packs sealed below `active_pack`, given every
/// object reachable from a head or a retained point. A pack whose live records fill at
/// least `keep_percent` of it is kept. Reads only; any error aborts with nothing deleted.
pub fn plan(store: &dyn GcStore, active_pack: u32, live: &LiveSet, keep_percent: u64) -> Result<GcPlan, StoreError> {
    let bytes_before = store.physical_bytes()?;
    let mut counts: BTreeMap<u32, PackCount> = BTreeMap::new();
    let mut cursor = live.cursor()?;
    let mut live_objects = 0u64;
    store.for_each_index_entry(&mut |h, loc| {
        // Ask about every entry, so the cursor counts live objects the index lacks.
        let is_live = cursor.contains(&h)?;
        if loc.pack >= active_pack {
            return Ok(());
        }
        let c = counts.entry(loc.pack).or_default();
        if is_live {
            live_objects += 1;
            c.live += 1;
            c.live_bytes += loc.len as u64 + RECORD_HEADER;
        } else {
            c.dead += 1;
        }
        Ok(())
    })?;
    let live_missing = cursor.missing()?;
    if live_missing > 0 {
        tracing::warn!("gc: {live_missing} live objects are not in the index (run `pgbranch verify`)");
    }

    let mut plan = GcPlan { live_objects, live_missing, active_pack, bytes_before, ..Default::default() };
    let present: HashSet<u32> = store.pack_numbers()?.into_iter().collect();
    let mut trims = Vec::new();
    for &pack in present.iter().filter(|p| **p < active_pack) {
        counts.entry(pack).or_default();
    }
    for (pack, c) in counts {
        plan.live_bytes += c.live_bytes;
        if !present.contains(&pack) {
            // Entries naming a pack that is gone: nothing to read them from.
            if c.dead > 0 {
                trims.push(PackAction::Trim { pack, dead: c.dead });
            }
            continue;
        }
        let size = store.pack_size(pack)?;
        // The pack header is neither live nor dead; a pack with no live record goes.
        let records_size = size.saturating_sub(PACK_HEADER_LEN);
        if c.live > 0 && c.live_bytes * 100 >= records_size * keep_percent {
            if c.dead > 0 {
                trims.push(PackAction::Trim { pack, dead: c.dead });
            }
            continue;
        }
        plan.pack_bytes_freed += size;
        plan.bytes_copied += c.live_bytes;
        plan.packs.push(if c.live == 0 {
            PackAction::Delete { pack, size, dead: c.dead }
        } else {
            PackAction::Rewrite { pack, size, live: c.live, live_bytes: c.live_bytes, dead: c.dead }
        });
    }
    // Wholly-dead packs first (they free space and need none), then the rewrites with
    // the most garbage: each frees more than it copies.
    let garbage = |a: &PackAction| match a {
        PackAction::Delete { size, .. } => (0, u64::MAX - size),
        PackAction::Rewrite { size, live_bytes, .. } => (1, u64::MAX - size.saturating_sub(*live_bytes)),
        PackAction::Trim { .. } => (2, 0),
    };
    plan.packs.sort_by_key(|a| (garbage(a), a.pack()));
    plan.packs.extend(trims);
    plan.objects_removed = plan.packs.iter().map(|a| a.entries() - if let PackAction::Rewrite { live, .. } = a { *live } else { 0 }).sum();
    Ok(plan)
}

/// The entries of the packs in one batch, collected by one index scan.
#[derive(Default)]
struct PackEntries {
    live: Vec<(Hash, Location)>,
    dead: Vec<(Hash, Location)>,
}

fn collect_batch(
    store: &dyn GcStore,
    live: &LiveSet,
    packs: &HashSet<u32>,
    trims: &HashSet<u32>,
) -> Result<HashMap<u32, PackEntries>, StoreError> {
    let mut out: HashMap<u32, PackEntries> = packs.iter().map(|p| (*p, PackEntries::default())).collect();
    let mut cursor = live.cursor()?;
    store.for_each_index_entry(&mut |h, loc| {
        let is_live = cursor.contains(&h)?;
        if let Some(e) = out.get_mut(&loc.pack) {
            if is_live {
                // A trimmed pack's live records stay where they are.
                if !trims.contains(&loc.pack) {
                    e.live.push((h, loc));
                }
            } else {
                e.dead.push((h, loc));
            }
        }
        Ok(())
    })?;
    Ok(out)
}

/// Carries out a plan made by [`plan`] with the same live set, on the same store,
/// while the store tracks revivals (see the module doc).
///
/// Space is freed before any is needed: the wholly-dead packs go first, then the
/// rewrites, most garbage first, each freeing more than it copies. If a step fails (a
/// full disk: the copy gets ENOSPC), what was freed stays freed and the error says how
/// much.
pub fn execute(store: &dyn GcStore, plan: GcPlan, live: &LiveSet) -> Result<GcReport, StoreError> {
    let mut report = GcReport { bytes_before: plan.bytes_before, ..Default::default() };
    let mut freed = 0u64;
    let mut actions = plan.packs.as_slice();
    while !actions.is_empty() {
        // A batch: as many actions as fit in BATCH_ENTRIES (at least one).
        let mut n = 0;
        let mut entries = 0;
        while n < actions.len() && (n == 0 || entries + actions[n].entries() <= BATCH_ENTRIES) {
            entries += actions[n].entries();
            n += 1;
        }
        let (batch, rest) = actions.split_at(n);
        actions = rest;
        let packs: HashSet<u32> = batch.iter().map(PackAction::pack).collect();
        let trims: HashSet<u32> = batch.iter().filter(|a| !a.removes_pack()).map(PackAction::pack).collect();
        let mut collected = collect_batch(store, live, &packs, &trims).map_err(|e| stopped(e, freed, report.packs_rewritten))?;
        for action in batch {
            let e = collected.remove(&action.pack()).unwrap_or_default();
            let step = || -> Result<(u64, u64), StoreError> {
                // A trimmed pack stays: its live records stay where they are.
                let mut moved = if action.removes_pack() { store.copy_records(&e.live)? } else { Vec::new() };
                let mut revived = 0u64;
                let mut removed = 0u64;
                store.with_puts_held(&mut |revivals| {
                    let (back, gone): (Vec<_>, Vec<_>) = e.dead.iter().partition(|(h, _)| revivals.contains(h));
                    if !back.is_empty() && action.removes_pack() {
                        moved.extend(store.copy_records(&back)?);
                    }
                    let gone: Vec<Hash> = gone.into_iter().map(|(h, _)| h).collect();
                    store.update_index(&moved, &gone)?;
                    revived = back.len() as u64;
                    removed = gone.len() as u64;
                    Ok(())
                })?;
                if action.removes_pack() {
                    store.remove_pack(action.pack())?;
                }
                Ok((removed, revived))
            };
            let (removed, revived) = step().map_err(|err| stopped(err, freed, report.packs_rewritten))?;
            report.objects_removed += removed;
            report.objects_revived += revived;
            match action {
                PackAction::Delete { size, .. } => freed += size,
                PackAction::Rewrite { size, live_bytes, .. } => freed = (freed + size).saturating_sub(*live_bytes),
                PackAction::Trim { .. } => continue,
            }
            report.packs_rewritten += 1;
        }
    }
    store.finish_gc()?;
    report.bytes_after = store.physical_bytes()?;
    Ok(report)
}

/// Seals, plans and executes in one go, tracking revivals throughout: for a store used
/// directly (`ObjectStore::sweep`), where the caller's `live` is the whole truth.
pub fn collect(store: &dyn GcStore, live: &LiveSet, keep_percent: u64) -> Result<GcReport, StoreError> {
    let active = store.seal()?;
    store.track_revivals(Some(active));
    let result = plan(store, active, live, keep_percent).and_then(|p| execute(store, p, live));
    store.track_revivals(None);
    result
}
