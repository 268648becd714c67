//! The live tree of one branch: its inode table and block maps in memory, on top of
//! the committed Merkle tree in the store.
//!
//! [`Tree::apply`] is the only way the tree changes, and it is deterministic in the
//! [`Op`] it is given; [`Tree::commit`] folds the changes since the last commit into a
//! new root, writing only the nodes on changed paths.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::block::{Hash, BLOCK_SIZE};

mod apply;
mod commit;
use crate::filemap::{self, FileMap, Slot};
use crate::node::{self, Attr, InodeLeaf, NodeError, Time, TreeRoot, INODE_LEAF_SPAN, ROOT_INO};
use crate::store::{ObjectStore, StoreError};

/// A POSIX error number, as returned to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

pub(crate) type FsResult<T> = Result<T, Errno>;

impl From<StoreError> for Errno {
    fn from(e: StoreError) -> Errno {
        tracing::error!("store error: {e}");
        Errno(libc::EIO)
    }
}

impl From<NodeError> for Errno {
    fn from(e: NodeError) -> Errno {
        tracing::error!("tree error: {e}");
        Errno(libc::EIO)
    }
}

const S_IFMT: u32 = libc::S_IFMT;
const S_IFDIR: u32 = libc::S_IFDIR;

#[derive(Clone, Debug)]
pub enum MapState {
    Unloaded(Option<Hash>),
    Loaded(FileMap),
}

#[derive(Clone, Debug)]
pub enum Content {
    File { size: u64, map: MapState },
    Dir { parent: u64, entries: BTreeMap<Vec<u8>, u64> },
    Symlink { target: Vec<u8> },
    Special,
}

#[derive(Clone, Debug)]
pub struct Inode {
    pub attr: Attr,
    pub content: Content,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

impl Inode {
    pub fn is_dir(&self) -> bool {
        self.attr.mode & S_IFMT == S_IFDIR
    }

    pub fn size(&self) -> u64 {
        match &self.content {
            Content::File { size, .. } => *size,
            Content::Dir { entries, .. } => entries.len() as u64 * 32 + 64,
            Content::Symlink { target } => target.len() as u64,
            Content::Special => 0,
        }
    }

    /// Blocks in use, for `stat`'s st_blocks (512-byte units), when the map is loaded.
    pub fn stored_blocks(&self) -> u64 {
        match &self.content {
            Content::File { map: MapState::Loaded(m), .. } => m.stored_blocks(),
            Content::File { size, .. } => filemap::blocks_for(*size),
            _ => 0,
        }
    }
}

/// Where the bytes of one block come from, for a read done outside the branch lock.
pub enum BlockSource {
    Hole,
    Stored(Hash),
    Dirty(Arc<Vec<u8>>),
}

pub struct Tree {
    store: Arc<dyn ObjectStore>,
    inodes: HashMap<u64, Inode>,
    next_ino: u64,
    leaf_hashes: BTreeMap<u64, Hash>,
    dirty_leaves: BTreeSet<u64>,
    dirty_files: BTreeSet<u64>,
    /// The sum of [`FileMap::dirty_count`] over every loaded map, kept in step by
    /// [`Tree::count_change`] wherever a map changes; [`Tree::dirty_blocks_in_maps`]
    /// recomputes it from the maps.
    dirty_blocks: u64,
    open_counts: HashMap<u64, u32>,
}

fn leaf_of(ino: u64) -> u64 {
    ino / INODE_LEAF_SPAN
}

fn err(code: i32) -> Errno {
    Errno(code)
}

impl Tree {
    /// A tree holding only an empty root directory.
    pub fn empty(store: Arc<dyn ObjectStore>, mode: u32, uid: u32, gid: u32) -> Tree {
        let now = Time::now();
        let root = Inode {
            attr: Attr { mode: S_IFDIR | (mode & 0o7777), uid, gid, nlink: 2, rdev: 0, atime: now, mtime: now, ctime: now },
            content: Content::Dir { parent: ROOT_INO, entries: BTreeMap::new() },
            xattrs: BTreeMap::new(),
        };
        let mut tree = Tree {
            store,
            inodes: HashMap::from([(ROOT_INO, root)]),
            next_ino: ROOT_INO + 1,
            leaf_hashes: BTreeMap::new(),
            dirty_leaves: BTreeSet::new(),
            dirty_files: BTreeSet::new(),
            dirty_blocks: 0,
            open_counts: HashMap::new(),
        };
        tree.mark(ROOT_INO);
        tree
    }

    /// Loads the inode table of a committed root; block maps load on first use.
    pub fn load(store: Arc<dyn ObjectStore>, root: &Hash) -> Result<Tree, NodeError> {
        let root_node: TreeRoot = node::get_node(store.as_ref(), root)?;
        let mut inodes = HashMap::new();
        for (_, leaf_hash) in &root_node.leaves {
            let leaf: InodeLeaf = node::get_node(store.as_ref(), leaf_hash)?;
            for (ino, rec) in leaf.inodes {
                inodes.insert(ino, Inode::from_record(rec));
            }
        }
        Ok(Tree {
            store,
            inodes,
            next_ino: root_node.next_ino,
            leaf_hashes: root_node.leaves.into_iter().collect(),
            dirty_leaves: BTreeSet::new(),
            dirty_files: BTreeSet::new(),
            dirty_blocks: 0,
            open_counts: HashMap::new(),
        })
    }

    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    pub fn next_ino(&self) -> u64 {
        self.next_ino
    }

    /// Blocks held in memory and not yet stored, over every file of the tree.
    pub fn dirty_blocks(&self) -> u64 {
        self.dirty_blocks
    }

    /// The dirty block count recomputed from the maps themselves: what
    /// [`Tree::dirty_blocks`] must always equal.
    pub fn dirty_blocks_in_maps(&self) -> u64 {
        self.inodes
            .values()
            .map(|i| match &i.content {
                Content::File { map: MapState::Loaded(m), .. } => m.dirty_count(),
                _ => 0,
            })
            .sum()
    }

    /// Records that one map's dirty count went from `before` to `after`. The count can
    /// only go below zero through a bug; it is then recomputed from the maps rather
    /// than wrapped (a wrapped count would throttle every later write).
    fn count_change(&mut self, before: u64, after: u64) {
        match self.dirty_blocks.checked_sub(before) {
            Some(rest) => self.dirty_blocks = rest + after,
            None => {
                let recount = self.dirty_blocks_in_maps();
                tracing::error!(
                    count = self.dirty_blocks,
                    before,
                    after,
                    recount,
                    "dirty block count would go below zero; using the count the maps hold"
                );
                debug_assert!(false, "dirty block count underflow: {} - {before}", self.dirty_blocks);
                self.dirty_blocks = recount;
            }
        }
    }

    pub(crate) fn has_changes(&self) -> bool {
        !self.dirty_leaves.is_empty() || !self.dirty_files.is_empty()
    }

    pub fn inode(&self, ino: u64) -> FsResult<&Inode> {
        self.inodes.get(&ino).ok_or(err(libc::ENOENT))
    }

    pub fn lookup(&self, parent: u64, name: &[u8]) -> FsResult<u64> {
        match &self.inode(parent)?.content {
            Content::Dir { entries, parent: up } => match name {
                b"." => Ok(parent),
                b".." => Ok(*up),
                _ => entries.get(name).copied().ok_or(err(libc::ENOENT)),
            },
            _ => Err(err(libc::ENOTDIR)),
        }
    }

    fn mark(&mut self, ino: u64) {
        self.dirty_leaves.insert(leaf_of(ino));
    }

    pub fn open(&mut self, ino: u64) {
        *self.open_counts.entry(ino).or_default() += 1;
    }

    pub(crate) fn is_open(&self, ino: u64) -> bool {
        self.open_counts.contains_key(&ino)
    }

    pub fn open_handles(&self) -> u64 {
        self.open_counts.values().map(|&c| c as u64).sum()
    }

    /// Closes one handle; an unlinked inode goes away with its last handle.
    pub fn release(&mut self, ino: u64) {
        if let Some(c) = self.open_counts.get_mut(&ino) {
            *c -= 1;
            if *c == 0 {
                self.open_counts.remove(&ino);
                if self.inodes.get(&ino).is_some_and(|i| i.attr.nlink == 0) {
                    self.drop_inode(ino);
                }
            }
        }
    }

    fn drop_inode(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.remove(&ino) {
            if let Content::File { map: MapState::Loaded(m), .. } = &inode.content {
                self.count_change(m.dirty_count(), 0);
            }
        }
        self.dirty_files.remove(&ino);
        self.mark(ino);
    }

    /// Makes sure a file's block map is in memory.
    pub fn load_map(&mut self, ino: u64) -> FsResult<()> {
        let store = self.store.clone();
        let inode = self.inodes.get_mut(&ino).ok_or(err(libc::ENOENT))?;
        if let Content::File { size, map } = &mut inode.content {
            if let MapState::Unloaded(root) = map {
                *map = MapState::Loaded(FileMap::load(store.as_ref(), *root, *size)?);
            }
        }
        Ok(())
    }

    /// Where each block of [offset, offset+len) comes from; needs the map loaded.
    pub fn read_plan(&self, ino: u64, offset: u64, len: u32) -> FsResult<(u64, Vec<BlockSource>)> {
        let inode = self.inode(ino)?;
        let (size, map) = match &inode.content {
            Content::File { size, map: MapState::Loaded(m) } => (*size, m),
            Content::File { .. } => return Err(err(libc::EAGAIN)),
            Content::Dir { .. } => return Err(err(libc::EISDIR)),
            _ => return Err(err(libc::EINVAL)),
        };
        if offset >= size {
            return Ok((0, Vec::new()));
        }
        let end = size.min(offset + len as u64);
        let bs = BLOCK_SIZE as u64;
        let plan = (offset / bs..end.div_ceil(bs))
            .map(|idx| match map.slot(idx) {
                Slot::Hole => BlockSource::Hole,
                Slot::Stored(h) => BlockSource::Stored(*h),
                Slot::Dirty(a) => BlockSource::Dirty(a.clone()),
            })
            .collect();
        Ok((end - offset, plan))
    }

    /// Changes a file's size and block map through `change`, keeping the dirty count in
    /// step with the map. `change` must leave the map as it was when it fails.
    fn with_map<R>(
        &mut self,
        ino: u64,
        change: impl FnOnce(&dyn ObjectStore, &mut u64, &mut FileMap) -> Result<R, StoreError>,
    ) -> FsResult<R> {
        self.load_map(ino)?;
        let (size, map) = match &mut self.inodes.get_mut(&ino).ok_or(err(libc::ENOENT))?.content {
            Content::File { size, map: MapState::Loaded(m) } => (size, m),
            Content::Dir { .. } => return Err(err(libc::EISDIR)),
            _ => return Err(err(libc::EINVAL)),
        };
        let before = map.dirty_count();
        let out = change(self.store.as_ref(), size, map);
        let after = map.dirty_count();
        self.count_change(before, after);
        let out = out?;
        self.dirty_files.insert(ino);
        self.mark(ino);
        Ok(out)
    }

    fn dir_entries_mut(&mut self, ino: u64) -> FsResult<&mut BTreeMap<Vec<u8>, u64>> {
        match &mut self.inodes.get_mut(&ino).ok_or(err(libc::ENOENT))?.content {
            Content::Dir { entries, .. } => Ok(entries),
            _ => Err(err(libc::ENOTDIR)),
        }
    }

    fn attr_mut(&mut self, ino: u64) -> FsResult<&mut Attr> {
        self.mark(ino);
        Ok(&mut self.inodes.get_mut(&ino).ok_or(err(libc::ENOENT))?.attr)
    }

    fn touch_dir(&mut self, ino: u64, now: Time) -> FsResult<()> {
        let a = self.attr_mut(ino)?;
        a.mtime = now;
        a.ctime = now;
        Ok(())
    }

    fn is_empty_dir(&self, ino: u64) -> FsResult<bool> {
        match &self.inode(ino)?.content {
            Content::Dir { entries, .. } => Ok(entries.is_empty()),
            _ => Err(err(libc::ENOTDIR)),
        }
    }

    /// Removes one link to `ino`; the inode itself goes when unlinked and not open.
    fn unlink_inode(&mut self, ino: u64, now: Time) -> FsResult<()> {
        let is_dir = self.inode(ino)?.is_dir();
        let a = self.attr_mut(ino)?;
        a.nlink = if is_dir { 0 } else { a.nlink.saturating_sub(1) };
        a.ctime = now;
        if a.nlink == 0 && !self.is_open(ino) {
            self.drop_inode(ino);
        }
        Ok(())
    }

    fn set_dir_parent(&mut self, ino: u64, new_parent: u64) {
        if let Some(Inode { content: Content::Dir { parent, .. }, .. }) = self.inodes.get_mut(&ino) {
            *parent = new_parent;
        }
    }
}
