//! `du`: what each branch references, shares and keeps as history, in bounded memory.
//!
//! Every head is walked on its own and every object it reaches is written as a
//! (hash, tag) record into sorted runs on disk ([`crate::runs`]): the tag says which
//! branch reached it and whether as a block or a tree node. Retained points are walked
//! once more, below nodes no head reaches, and tagged as the history of their branch.
//! The merged runs then come back in hash order, each hash with all its tags together,
//! and are merged with a scan of the store's index (also in hash order) for the stored
//! sizes. Memory holds one run buffer, the tree nodes of one head at a time (a few per
//! thousand blocks), and the block counts of block maps — never a set of every object.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::collect::Pin;
use super::{RepoError, Repository};
use crate::block::{Hash, BLOCK_SIZE};
use crate::catalog::BranchRecord;
use crate::gc::GcStore;
use crate::pack;
use crate::runs::{Merged, RunsBuilder};
use crate::store::{ObjectStore, StoreError};
use crate::walk::{self, ObjectKind, VisitError};

#[derive(Debug, Serialize)]
pub struct BranchUsage {
    pub name: String,
    pub kind: &'static str,
    /// Bytes of data the branch references (uncompressed, holes excluded).
    pub logical_bytes: u64,
    /// Stored bytes referenced by this branch and no other.
    pub unique_bytes: u64,
    /// Stored bytes this branch shares with at least one other.
    pub shared_bytes: u64,
    /// Bytes written to the branch and not yet in a commit (its dirty blocks), which
    /// the other figures do not count.
    pub uncommitted_bytes: u64,
    /// Stored bytes its retained points hold that no head does (an object kept by two
    /// branches' histories is counted for the first): what its history costs.
    pub history_bytes: u64,
    /// Its retained points.
    pub history_points: u64,
}

#[derive(Debug, Serialize)]
pub struct Usage {
    pub branches: Vec<BranchUsage>,
    pub physical_bytes: u64,
    /// Uncompressed bytes of distinct blocks.
    pub distinct_bytes: u64,
    /// Stored bytes of distinct blocks.
    pub stored_block_bytes: u64,
    /// Stored bytes of distinct tree nodes (block maps, inode tables, roots).
    pub tree_node_bytes: u64,
    /// Stored bytes of objects no head and no retained point reaches: what a `gc` now
    /// would reclaim, less the blocks of large writes not yet committed.
    #[serde(default)]
    pub unreferenced_bytes: u64,
    pub compression_ratio: f64,
    pub dedup_ratio: f64,
    /// Why a branch could not be committed first (e.g. the disk is full): the figures
    /// then count each branch's last commit, plus its `uncommitted_bytes`.
    pub commit_error: Option<String>,
}

/// What a tag says besides the branch (the record's index in the catalog listing):
/// sorted so that a hash's head tags come before its history tags.
const HEAD_BLOCK: u32 = 0;
const HEAD_NODE: u32 = 1 << 30;
const HISTORY: u32 = 2 << 30;
const KIND_MASK: u32 = 3 << 30;

/// One hash's tags, gathered from the merged runs.
#[derive(Default)]
struct Reach {
    /// Branches whose head reaches it as a block.
    head_blocks: Vec<usize>,
    head_node: bool,
    /// The first branch whose retained points reach it.
    history: Option<usize>,
}

/// The figures, summed as the merged records and the index go by.
struct Totals {
    unique: Vec<u64>,
    shared: Vec<u64>,
    history: Vec<u64>,
    distinct_blocks: u64,
    stored_block_bytes: u64,
    tree_node_bytes: u64,
    unreferenced_bytes: u64,
}

impl Totals {
    fn new(branches: usize) -> Totals {
        Totals {
            unique: vec![0; branches],
            shared: vec![0; branches],
            history: vec![0; branches],
            distinct_blocks: 0,
            stored_block_bytes: 0,
            tree_node_bytes: 0,
            unreferenced_bytes: 0,
        }
    }

    /// Counts one referenced hash of `size` stored bytes (0 if the store lacks it).
    fn count(&mut self, reach: &Reach, size: u64) {
        if !reach.head_blocks.is_empty() {
            self.distinct_blocks += 1;
            self.stored_block_bytes += size;
            if let [only] = reach.head_blocks[..] {
                self.unique[only] += size;
            } else {
                for &b in &reach.head_blocks {
                    self.shared[b] += size;
                }
            }
        }
        if reach.head_node {
            self.tree_node_bytes += size;
        }
        if let (true, false, Some(b)) = (reach.head_blocks.is_empty(), reach.head_node, reach.history) {
            self.history[b] += size;
        }
    }
}

/// Reads the merged (hash, tag) records one hash at a time.
struct Reaches<'a> {
    merged: Merged<'a, (Hash, u32)>,
}

impl Reaches<'_> {
    fn peek(&self) -> Option<Hash> {
        self.merged.peek().map(|(h, _)| h)
    }

    /// The next hash and all its tags.
    fn next(&mut self) -> Result<Option<(Hash, Reach)>, StoreError> {
        let Some(hash) = self.peek() else { return Ok(None) };
        let mut reach = Reach::default();
        while let Some((h, tag)) = self.merged.peek() {
            if h != hash {
                break;
            }
            self.merged.next_record()?;
            let branch = (tag & !KIND_MASK) as usize;
            match tag & KIND_MASK {
                HEAD_BLOCK => reach.head_blocks.push(branch),
                HEAD_NODE => reach.head_node = true,
                _ => {
                    reach.history.get_or_insert(branch);
                }
            }
        }
        Ok(Some((hash, reach)))
    }
}

/// Blocks below each block map and map leaf met so far (content-addressed, so valid
/// for every branch): a file whose map, or a leaf, was already walked still counts.
#[derive(Default)]
struct BlockCounts {
    below: HashMap<Hash, u64>,
    map: Option<Hash>,
    leaf: Option<Hash>,
}

impl BlockCounts {
    /// Logical blocks `kind` adds to the branch being walked.
    fn visit(&mut self, h: Hash, kind: ObjectKind) -> u64 {
        match kind {
            ObjectKind::Map => {
                (self.map, self.leaf) = (Some(h), None);
                self.below.insert(h, 0);
                0
            }
            ObjectKind::MapLeaf => {
                self.leaf = Some(h);
                self.below.insert(h, 0);
                0
            }
            ObjectKind::SeenMap => {
                (self.map, self.leaf) = (None, None);
                self.below.get(&h).copied().unwrap_or(0)
            }
            ObjectKind::SeenMapLeaf => {
                self.leaf = None;
                let n = self.below.get(&h).copied().unwrap_or(0);
                self.add_to_map(n);
                n
            }
            ObjectKind::Block => {
                if let Some(leaf) = self.leaf {
                    *self.below.entry(leaf).or_default() += 1;
                }
                self.add_to_map(1);
                1
            }
            ObjectKind::Node => 0,
        }
    }

    fn add_to_map(&mut self, n: u64) {
        if let Some(map) = self.map {
            *self.below.entry(map).or_default() += n;
        }
    }
}

impl Repository {
    fn du_spill_dir(&self) -> std::path::PathBuf {
        self.dir.join("du")
    }

    /// Per-branch logical, unique, shared and history bytes, and the store's ratios.
    /// Commits every branch first; a branch that cannot be committed (a full disk) is
    /// counted at its last commit plus its dirty blocks, and the error is reported, not
    /// raised, so `du` works when it is needed most.
    pub fn usage(&self) -> Result<Usage, RepoError> {
        let mut commit_error = None;
        for b in self.branches() {
            if let Err(e) = self.commit_branch(&b) {
                tracing::warn!(branch = %b.name, "du counts the last commit of {}: {e}", b.name);
                commit_error.get_or_insert_with(|| e.to_string());
            }
        }
        let dirty: HashMap<String, u64> = self.branches().iter().map(|b| (b.name.clone(), b.dirty_blocks())).collect();
        let _one = self.du_running.lock();
        let (records, points, _pins) = self.pinned_roots()?;
        let store = self.store.as_ref();
        let mut runs = RunsBuilder::<(Hash, u32)>::new(Some(&self.du_spill_dir()))?;
        let mut counts = BlockCounts::default();
        let mut head_nodes: HashSet<Hash> = HashSet::new();
        let mut logical = vec![0u64; records.len()];
        for (i, rec) in records.iter().enumerate() {
            let mut seen = HashSet::new();
            let walked = walk::visit_new(store, &rec.root, &mut seen, &mut |h, kind| -> Result<(), StoreError> {
                logical[i] += counts.visit(h, kind) * BLOCK_SIZE as u64;
                match kind {
                    ObjectKind::Block => runs.insert((h, HEAD_BLOCK | i as u32)),
                    ObjectKind::Node | ObjectKind::Map | ObjectKind::MapLeaf => runs.insert((h, HEAD_NODE | i as u32)),
                    ObjectKind::SeenMap | ObjectKind::SeenMapLeaf => Ok(()),
                }
            });
            note_damage(walked, &rec.name, "its head")?;
            head_nodes.extend(seen);
        }
        // History: what retained points reach below nodes no head reaches.
        let mut seen = head_nodes;
        for (i, (rec, roots)) in records.iter().zip(&points).enumerate() {
            for root in roots {
                let walked = walk::visit_new(store, root, &mut seen, &mut |h, kind| match kind {
                    ObjectKind::SeenMap | ObjectKind::SeenMapLeaf => Ok(()),
                    _ => runs.insert((h, HISTORY | i as u32)),
                });
                note_damage(walked, &rec.name, "a retained point")?;
            }
        }
        drop(seen);
        let runs = runs.finish();
        let totals = sum_with_index(store, Reaches { merged: runs.merged()? }, records.len())?;

        let distinct_bytes = totals.distinct_blocks * BLOCK_SIZE as u64;
        let total_logical: u64 = logical.iter().sum();
        let branches = records
            .iter()
            .enumerate()
            .map(|(i, rec)| BranchUsage {
                name: rec.name.clone(),
                kind: rec.kind.as_str(),
                logical_bytes: logical[i],
                unique_bytes: totals.unique[i],
                shared_bytes: totals.shared[i],
                uncommitted_bytes: dirty.get(&rec.name).copied().unwrap_or(0) * BLOCK_SIZE as u64,
                history_bytes: totals.history[i],
                history_points: points[i].len() as u64,
            })
            .collect();
        let ratio = |a: u64, b: u64| if b == 0 { 1.0 } else { a as f64 / b as f64 };
        Ok(Usage {
            branches,
            physical_bytes: store.physical_bytes()?,
            distinct_bytes,
            stored_block_bytes: totals.stored_block_bytes,
            tree_node_bytes: totals.tree_node_bytes,
            unreferenced_bytes: totals.unreferenced_bytes,
            compression_ratio: ratio(distinct_bytes, totals.stored_block_bytes),
            dedup_ratio: ratio(total_logical, distinct_bytes),
            commit_error,
        })
    }

    /// Every branch and snapshot with the roots of its retained points, all pinned so
    /// that a collection running meanwhile keeps what du is about to read.
    #[allow(clippy::type_complexity)]
    fn pinned_roots(&self) -> Result<(Vec<BranchRecord>, Vec<Vec<Hash>>, Vec<Pin<'_>>), RepoError> {
        let _no_gc = self.gc_lock.read();
        let records = self.catalog.list()?;
        let mut points = Vec::with_capacity(records.len());
        for rec in &records {
            points.push(self.catalog.history(rec.id)?.into_iter().map(|p| p.root).collect::<Vec<_>>());
        }
        let pins = records.iter().map(|r| r.root).chain(points.iter().flatten().copied()).map(|root| self.pin(root)).collect();
        Ok((records, points, pins))
    }
}

/// A damaged node leaves that tree's figures short (with a warning); `verify` names it.
fn note_damage(walked: Result<(), VisitError<StoreError>>, branch: &str, what: &str) -> Result<(), RepoError> {
    match walked {
        Ok(()) => Ok(()),
        Err(VisitError::Visitor(e)) => Err(e.into()),
        Err(VisitError::Node(e)) => {
            tracing::warn!(branch, "du: {what} of {branch} has a damaged node: {e}; its figures are short (see `pgbranch verify`)");
            Ok(())
        }
    }
}

/// Merges the tagged hashes with the index, both in hash order, into the totals.
fn sum_with_index(store: &dyn GcStore, mut reaches: Reaches<'_>, branches: usize) -> Result<Totals, StoreError> {
    let mut totals = Totals::new(branches);
    store.for_each_index_entry(&mut |hash, loc| {
        let size = loc.len as u64 + pack::RECORD_HEADER;
        // Referenced hashes below this one are not in the store: they count 0 bytes.
        while reaches.peek().is_some_and(|h| h < hash) {
            if let Some((_, reach)) = reaches.next()? {
                totals.count(&reach, 0);
            }
        }
        if reaches.peek() == Some(hash) {
            if let Some((_, reach)) = reaches.next()? {
                totals.count(&reach, size);
            }
        } else {
            totals.unreferenced_bytes += size;
        }
        Ok(())
    })?;
    while let Some((_, reach)) = reaches.next()? {
        totals.count(&reach, 0);
    }
    Ok(totals)
}
