//! The block map of one regular file: which block holds which 8 KiB of the file.
//!
//! A slot is a hole (never stored), a committed block (named by hash), or a dirty block
//! (bytes in memory, not yet in the store). Dirty blocks are shared with an in-flight
//! commit through `Arc`, so a write during a commit copies the block instead of
//! changing what the commit is storing.

use std::collections::BTreeSet;
use std::sync::Arc;

use crate::block::{self, Hash, BLOCK_SIZE};
use crate::node::{self, MapLeaf, MapRoot, NodeError, MAP_LEAF_BLOCKS};
use crate::store::{ObjectStore, StoreError};

#[derive(Clone, Debug)]
pub enum Slot {
    Hole,
    Stored(Hash),
    Dirty(Arc<Vec<u8>>),
}

#[derive(Clone, Debug, Default)]
pub struct FileMap {
    slots: Vec<Slot>,
    /// Hashes of committed leaves; valid for every leaf not in `dirty_leaves`.
    leaf_hashes: Vec<Option<Hash>>,
    dirty_leaves: BTreeSet<usize>,
    dirty_blocks: BTreeSet<u64>,
    /// Root hash as of the last commit (None: all holes).
    root: Option<Hash>,
}

pub fn blocks_for(size: u64) -> u64 {
    size.div_ceil(BLOCK_SIZE as u64)
}

impl FileMap {
    pub fn load(store: &dyn ObjectStore, root: Option<Hash>, size: u64) -> Result<FileMap, NodeError> {
        let mut map = FileMap { root, ..Default::default() };
        let Some(root_hash) = root else { return Ok(map) };
        let root_node: MapRoot = node::get_node(store, &root_hash)?;
        map.slots = vec![Slot::Hole; blocks_for(size) as usize];
        for (leaf_no, leaf_hash) in root_node.leaves.iter().enumerate() {
            let Some(h) = leaf_hash else { continue };
            let leaf: MapLeaf = node::get_node(store, h)?;
            for (i, block) in leaf.blocks {
                let idx = leaf_no * MAP_LEAF_BLOCKS + i as usize;
                if idx >= map.slots.len() {
                    map.slots.resize(idx + 1, Slot::Hole);
                }
                map.slots[idx] = Slot::Stored(block);
            }
        }
        map.leaf_hashes = root_node.leaves;
        Ok(map)
    }

    pub fn slot(&self, idx: u64) -> &Slot {
        self.slots.get(idx as usize).unwrap_or(&Slot::Hole)
    }

    pub fn stored_blocks(&self) -> u64 {
        self.slots.iter().filter(|s| !matches!(s, Slot::Hole)).count() as u64
    }

    /// Replaces a slot, keeping the set of dirty blocks in step.
    pub fn set(&mut self, idx: u64, slot: Slot) {
        let i = idx as usize;
        if i >= self.slots.len() {
            if matches!(slot, Slot::Hole) {
                return;
            }
            self.slots.resize(i + 1, Slot::Hole);
        }
        let now_dirty = matches!(slot, Slot::Dirty(_));
        self.slots[i] = slot;
        self.dirty_leaves.insert(i / MAP_LEAF_BLOCKS);
        if now_dirty {
            self.dirty_blocks.insert(idx);
        } else {
            self.dirty_blocks.remove(&idx);
        }
    }

    /// How many blocks hold bytes not yet in the store: what the branch's dirty count sums.
    pub fn dirty_count(&self) -> u64 {
        self.dirty_blocks.len() as u64
    }

    /// Reads, before anything changes, every stored block that a change of bytes
    /// [start, end) covers only in part (at most the first and the last), so that the
    /// change itself cannot fail half way.
    fn fetch_partial(&self, store: &dyn ObjectStore, start: u64, end: u64) -> Result<Vec<(u64, Vec<u8>)>, StoreError> {
        let bs = BLOCK_SIZE as u64;
        if start >= end {
            return Ok(Vec::new());
        }
        let (first, last) = (start / bs, (end - 1) / bs);
        let mut out = Vec::new();
        for idx in if first == last { vec![first] } else { vec![first, last] } {
            let partial = start > idx * bs || end < (idx + 1) * bs;
            if let (true, Slot::Stored(h)) = (partial, self.slot(idx)) {
                out.push((idx, store.get(h)?));
            }
        }
        Ok(out)
    }

    /// Turns fetched stored blocks into dirty ones holding the same bytes: infallible.
    fn install(&mut self, fetched: Vec<(u64, Vec<u8>)>) {
        for (idx, bytes) in fetched {
            self.set(idx, Slot::Dirty(Arc::new(bytes)));
        }
    }

    /// Writes `data` at byte `pos` within block `idx`. A partly written stored block
    /// must have been fetched first (see [`FileMap::fetch_partial`]).
    fn write_in_block(&mut self, idx: u64, pos: usize, data: &[u8]) {
        if pos == 0 && data.len() == BLOCK_SIZE {
            self.set(idx, Slot::Dirty(Arc::new(data.to_vec())));
            return;
        }
        if let Some(Slot::Dirty(arc)) = self.slots.get_mut(idx as usize) {
            // Copies only when a commit is holding the same bytes.
            Arc::make_mut(arc)[pos..pos + data.len()].copy_from_slice(data);
            return;
        }
        debug_assert!(matches!(self.slot(idx), Slot::Hole), "stored block {idx} written in part without its bytes");
        let mut bytes = vec![0u8; BLOCK_SIZE];
        bytes[pos..pos + data.len()].copy_from_slice(data);
        self.set(idx, Slot::Dirty(Arc::new(bytes)));
    }

    /// Writes `data` at byte `offset` of the file. Either it fails (reading a partly
    /// overwritten block) and changes nothing, or it succeeds whole.
    pub fn write(&mut self, store: &dyn ObjectStore, offset: u64, data: &[u8]) -> Result<(), StoreError> {
        let bs = BLOCK_SIZE as u64;
        let end = offset + data.len() as u64;
        let fetched = self.fetch_partial(store, offset, end)?;
        self.install(fetched);
        let mut pos = offset;
        while pos < end {
            let within = (pos % bs) as usize;
            let n = (bs - within as u64).min(end - pos) as usize;
            let from = (pos - offset) as usize;
            self.write_in_block(pos / bs, within, &data[from..from + n]);
            pos += n as u64;
        }
        Ok(())
    }

    /// Writes `head` at byte `offset`, then the stored `blocks` (None: zeros) from the
    /// block boundary `offset + head.len()`, then `tail`: one write whose whole blocks
    /// are already in the store. Either it fails (reading a partly overwritten block)
    /// and changes nothing, or it succeeds whole.
    pub fn write_blocks(
        &mut self,
        store: &dyn ObjectStore,
        offset: u64,
        head: &[u8],
        blocks: &[Option<Hash>],
        tail: &[u8],
    ) -> Result<(), StoreError> {
        let bs = BLOCK_SIZE as u64;
        let first = offset + head.len() as u64;
        let end = first + blocks.len() as u64 * bs + tail.len() as u64;
        if !first.is_multiple_of(bs) || head.len() >= BLOCK_SIZE || tail.len() >= BLOCK_SIZE {
            return Err(StoreError::Index(format!(
                "write-blocks op at byte {offset}: a {}-byte head and a {}-byte tail do not frame whole blocks",
                head.len(),
                tail.len()
            )));
        }
        // The head's block and the tail's block are the only ones written in part.
        let fetched = self.fetch_partial(store, offset, end)?;
        self.install(fetched);
        if !head.is_empty() {
            self.write_in_block(offset / bs, (offset % bs) as usize, head);
        }
        for (i, hash) in blocks.iter().enumerate() {
            self.set(first / bs + i as u64, hash.map_or(Slot::Hole, Slot::Stored));
        }
        if !tail.is_empty() {
            self.write_in_block(end / bs, 0, tail);
        }
        Ok(())
    }

    /// Makes bytes [start, end) of the file read as zeros, turning whole blocks into
    /// holes. Either it fails and changes nothing, or it succeeds whole.
    pub fn zero_range(&mut self, store: &dyn ObjectStore, start: u64, end: u64) -> Result<(), StoreError> {
        let bs = BLOCK_SIZE as u64;
        let end = end.min(self.slots.len() as u64 * bs);
        let fetched = self.fetch_partial(store, start, end)?;
        self.install(fetched);
        self.zero_fetched(start, end);
        Ok(())
    }

    /// [`FileMap::zero_range`] once its partial blocks are fetched: infallible.
    fn zero_fetched(&mut self, start: u64, end: u64) {
        let bs = BLOCK_SIZE as u64;
        let mut pos = start;
        while pos < end {
            let idx = pos / bs;
            let within = (pos % bs) as usize;
            let n = (bs - within as u64).min(end - pos) as usize;
            if matches!(self.slot(idx), Slot::Hole) {
            } else if n == BLOCK_SIZE {
                self.set(idx, Slot::Hole);
            } else {
                self.write_in_block(idx, within, &vec![0u8; n]);
            }
            pos += n as u64;
        }
    }

    /// Drops every block past `size` and zeroes the tail of the last partial block.
    /// Either it fails (reading that block) and changes nothing, or it succeeds whole.
    pub fn truncate(&mut self, store: &dyn ObjectStore, size: u64) -> Result<(), StoreError> {
        let bs = BLOCK_SIZE as u64;
        let keep = blocks_for(size) as usize;
        let tail_end = (keep as u64 * bs).min(self.slots.len() as u64 * bs);
        let fetched = self.fetch_partial(store, size, tail_end)?;
        if keep < self.slots.len() {
            for i in keep..self.slots.len() {
                self.dirty_blocks.remove(&(i as u64));
                self.dirty_leaves.insert(i / MAP_LEAF_BLOCKS);
            }
            self.slots.truncate(keep);
        }
        self.install(fetched);
        self.zero_fetched(size, tail_end);
        Ok(())
    }

    pub fn is_dirty(&self) -> bool {
        !self.dirty_leaves.is_empty() || !self.dirty_blocks.is_empty()
    }

    /// The dirty blocks, shared, for a commit to store outside the branch lock.
    pub fn dirty_block_list(&self) -> Vec<(u64, Arc<Vec<u8>>)> {
        self.dirty_blocks
            .iter()
            .filter_map(|&i| match &self.slots[i as usize] {
                Slot::Dirty(a) => Some((i, a.clone())),
                _ => None,
            })
            .collect()
    }

    /// Marks a dirty block stored, if it still holds exactly the bytes that were stored.
    pub fn settle(&mut self, idx: u64, stored: &Arc<Vec<u8>>, hash: Option<Hash>) -> bool {
        match self.slots.get(idx as usize) {
            Some(Slot::Dirty(cur)) if Arc::ptr_eq(cur, stored) => {
                self.set(idx, hash.map_or(Slot::Hole, Slot::Stored));
                true
            }
            _ => false,
        }
    }

    /// Stores remaining dirty blocks and changed leaves; returns the new map root.
    pub fn commit(&mut self, store: &dyn ObjectStore) -> Result<Option<Hash>, StoreError> {
        for (idx, data) in self.dirty_block_list() {
            let hash = store_block(store, &data)?;
            self.settle(idx, &data, hash);
        }
        if self.dirty_leaves.is_empty() {
            return Ok(self.root);
        }
        let nleaves = self.slots.len().div_ceil(MAP_LEAF_BLOCKS);
        self.leaf_hashes.resize(nleaves, None);
        for &leaf_no in &self.dirty_leaves {
            if leaf_no >= nleaves {
                continue;
            }
            let start = leaf_no * MAP_LEAF_BLOCKS;
            let end = (start + MAP_LEAF_BLOCKS).min(self.slots.len());
            let blocks: Vec<(u16, Hash)> = self.slots[start..end]
                .iter()
                .enumerate()
                .filter_map(|(i, s)| match s {
                    Slot::Stored(h) => Some((i as u16, *h)),
                    _ => None,
                })
                .collect();
            self.leaf_hashes[leaf_no] = if blocks.is_empty() { None } else { Some(node::put_node(store, &MapLeaf { blocks })?) };
        }
        self.dirty_leaves.clear();
        while self.leaf_hashes.last() == Some(&None) {
            self.leaf_hashes.pop();
        }
        self.root =
            if self.leaf_hashes.is_empty() { None } else { Some(node::put_node(store, &MapRoot { leaves: self.leaf_hashes.clone() })?) };
        Ok(self.root)
    }
}

/// Stores one block unless it is all zeros; returns its hash (None for a hole).
pub fn store_block(store: &dyn ObjectStore, data: &[u8]) -> Result<Option<Hash>, StoreError> {
    if block::is_zero(data) {
        return Ok(None);
    }
    let hash = Hash::of(data);
    store.put(&hash, data)?;
    Ok(Some(hash))
}

impl FileMap {
    /// The root hash as of the last commit.
    pub fn committed_root(&self) -> Option<Hash> {
        self.root
    }
}
