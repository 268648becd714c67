//! Folding a tree's changes into the store: dirty blocks first (outside the branch
//! lock), then the changed block-map and inode-table nodes and a new root.

use std::sync::Arc;

use super::{Content, Inode, MapState, Tree};
use crate::block::Hash;
use crate::node::{self, InodeLeaf, InodeRecord, StoredContent, TreeRoot, INODE_LEAF_SPAN, ROOT_INO};
use crate::store::StoreError;

/// A block a commit stored outside the lock: inode, block index, the bytes it stored
/// and their hash (None for a block of zeros).
pub type StoredBlock = (u64, u64, Arc<Vec<u8>>, Option<Hash>);

impl Tree {
    /// The dirty blocks of every file, for a commit to store outside the lock.
    pub fn dirty_block_list(&self) -> Vec<(u64, u64, Arc<Vec<u8>>)> {
        let mut out = Vec::new();
        for ino in &self.dirty_files {
            if let Some(Inode { content: Content::File { map: MapState::Loaded(m), .. }, .. }) = self.inodes.get(ino) {
                out.extend(m.dirty_block_list().into_iter().map(|(idx, a)| (*ino, idx, a)));
            }
        }
        out
    }

    /// Records that blocks were stored while the lock was released.
    pub fn settle_blocks(&mut self, stored: &[StoredBlock]) {
        for (ino, idx, data, hash) in stored {
            if let Some(Inode { content: Content::File { map: MapState::Loaded(m), .. }, .. }) = self.inodes.get_mut(ino) {
                let before = m.dirty_count();
                m.settle(*idx, data, *hash);
                let after = m.dirty_count();
                self.count_change(before, after);
            }
        }
    }

    /// Stores everything changed since the last commit and returns the new root hash.
    /// A file or leaf stays marked changed until it is stored, so a failed commit
    /// leaves the rest for the next one.
    pub fn commit(&mut self) -> Result<Hash, StoreError> {
        let store = self.store.clone();
        let files: Vec<u64> = self.dirty_files.iter().copied().collect();
        for ino in files {
            if let Some(Inode { content: Content::File { map: MapState::Loaded(m), .. }, .. }) = self.inodes.get_mut(&ino) {
                let before = m.dirty_count();
                let result = m.commit(store.as_ref());
                let after = m.dirty_count();
                self.count_change(before, after);
                result?;
            }
            self.dirty_files.remove(&ino);
        }
        debug_assert_eq!(self.dirty_blocks, self.dirty_blocks_in_maps());
        let leaves: Vec<u64> = self.dirty_leaves.iter().copied().collect();
        for leaf in leaves {
            let start = leaf * INODE_LEAF_SPAN;
            let inodes: Vec<(u64, InodeRecord)> = (start..start + INODE_LEAF_SPAN)
                .filter_map(|ino| self.inodes.get(&ino).map(|i| (ino, i)))
                .filter(|(ino, i)| i.attr.nlink > 0 || *ino == ROOT_INO)
                .map(|(ino, i)| (ino, i.to_record()))
                .collect();
            if inodes.is_empty() {
                self.leaf_hashes.remove(&leaf);
            } else {
                self.leaf_hashes.insert(leaf, node::put_node(store.as_ref(), &InodeLeaf { inodes })?);
            }
            self.dirty_leaves.remove(&leaf);
        }
        let root = TreeRoot {
            format: crate::format::node::TREE_FORMAT,
            next_ino: self.next_ino,
            leaves: self.leaf_hashes.iter().map(|(k, v)| (*k, *v)).collect(),
        };
        node::put_node(store.as_ref(), &root)
    }
}

impl Inode {
    pub(super) fn from_record(rec: InodeRecord) -> Inode {
        let content = match rec.content {
            StoredContent::File { size, map } => Content::File { size, map: MapState::Unloaded(map) },
            StoredContent::Dir { parent, entries } => Content::Dir { parent, entries },
            StoredContent::Symlink { target } => Content::Symlink { target },
            StoredContent::Special => Content::Special,
        };
        Inode { attr: rec.attr, content, xattrs: rec.xattrs }
    }

    /// The persisted form; a loaded block map must have been committed first.
    fn to_record(&self) -> InodeRecord {
        let content = match &self.content {
            Content::File { size, map: MapState::Unloaded(root) } => StoredContent::File { size: *size, map: *root },
            Content::File { size, map: MapState::Loaded(m) } => {
                debug_assert!(!m.is_dirty());
                StoredContent::File { size: *size, map: m.committed_root() }
            }
            Content::Dir { parent, entries } => StoredContent::Dir { parent: *parent, entries: entries.clone() },
            Content::Symlink { target } => StoredContent::Symlink { target: target.clone() },
            Content::Special => StoredContent::Special,
        };
        InodeRecord { attr: self.attr.clone(), content, xattrs: self.xattrs.clone() }
    }
}
