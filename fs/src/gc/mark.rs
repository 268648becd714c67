//! Marking: every object a committed tree reaches, fed into a [`LiveSetBuilder`].
//!
//! Unlike `walk::list` (which keeps paths, for `du` and `verify`), marking keeps only
//! the tree nodes it has visited: a retained point shares all but a few nodes with the
//! heads and the points beside it, and each shared node (inode leaf, block map, map
//! leaf) is read once across every root. Blocks are never read, only named.

use std::collections::HashSet;

use super::LiveSetBuilder;
use crate::block::Hash;
use crate::node::{self, InodeLeaf, MapLeaf, MapRoot, StoredContent, TreeRoot};
use crate::store::{ObjectStore, StoreError};

/// Marks from roots, remembering the nodes it has read.
pub struct Marker<'a> {
    store: &'a dyn ObjectStore,
    seen: HashSet<Hash>,
    live: LiveSetBuilder,
}

impl<'a> Marker<'a> {
    pub fn new(store: &'a dyn ObjectStore, live: LiveSetBuilder) -> Marker<'a> {
        Marker { store, seen: HashSet::new(), live }
    }

    /// Marks what `root` reaches; `what` names the root in the error. A node that
    /// cannot be read stops marking: freeing from a damaged tree could free blocks it
    /// still uses.
    pub fn mark(&mut self, what: &str, root: &Hash) -> Result<(), StoreError> {
        if !self.visit(root)? {
            return Ok(());
        }
        let damaged = |e: node::NodeError| {
            StoreError::Index(format!("{what} has a damaged tree node ({e}); run `pgbranch verify` before gc"))
        };
        let tree: TreeRoot = node::get_node(self.store, root).map_err(damaged)?;
        for (_, leaf_hash) in &tree.leaves {
            if !self.visit(leaf_hash)? {
                continue;
            }
            let leaf: InodeLeaf = node::get_node(self.store, leaf_hash).map_err(damaged)?;
            for (_, record) in &leaf.inodes {
                let StoredContent::File { map: Some(map_root), .. } = &record.content else { continue };
                if !self.visit(map_root)? {
                    continue;
                }
                let map: MapRoot = node::get_node(self.store, map_root).map_err(damaged)?;
                for map_leaf in map.leaves.iter().flatten() {
                    if !self.visit(map_leaf)? {
                        continue;
                    }
                    let blocks: MapLeaf = node::get_node(self.store, map_leaf).map_err(damaged)?;
                    for (_, h) in blocks.blocks {
                        self.live.insert(h)?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Marks a node live; false when it was already visited.
    fn visit(&mut self, h: &Hash) -> Result<bool, StoreError> {
        if !self.seen.insert(*h) {
            return Ok(false);
        }
        self.live.insert(*h)?;
        Ok(true)
    }

    pub fn finish(self) -> super::LiveSet {
        self.live.finish()
    }
}
