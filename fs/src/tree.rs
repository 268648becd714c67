//! The live tree of one branch: its inode table and block maps in memory, on top of
//! the committed Merkle tree in the store.
//!
//! [`Tree::apply`] is the only way the tree changes, and it is deterministic in the
//! [`Op`] it is given; [`Tree::commit`] folds the changes since the last commit into a
//! new root, writing only the nodes on changed paths.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::block::{Hash, BLOCK_SIZE};
use crate::filemap::{self, FileMap, Slot};
use crate::node::{self, Attr, InodeLeaf, InodeRecord, NodeError, StoredContent, Time, TreeRoot, INODE_LEAF_SPAN, ROOT_INO};
use crate::op::{NewKind, Op, SetAttr};
use crate::store::{ObjectStore, StoreError};

/// A POSIX error number, as returned to the kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

pub type FsResult<T> = Result<T, Errno>;

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

    pub fn dirty_blocks(&self) -> u64 {
        self.dirty_blocks
    }

    pub fn has_changes(&self) -> bool {
        !self.dirty_leaves.is_empty() || !self.dirty_files.is_empty()
    }

    pub fn inode(&self, ino: u64) -> FsResult<&Inode> {
        self.inodes.get(&ino).ok_or(err(libc::ENOENT))
    }

    pub fn inodes(&self) -> impl Iterator<Item = (&u64, &Inode)> {
        self.inodes.iter()
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

    pub fn is_open(&self, ino: u64) -> bool {
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
                self.dirty_blocks -= m.dirty_block_list().len() as u64;
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

    pub fn map_loaded(&self, ino: u64) -> bool {
        !matches!(self.inodes.get(&ino).map(|i| &i.content), Some(Content::File { map: MapState::Unloaded(_), .. }))
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

    fn file_map_mut(&mut self, ino: u64) -> FsResult<(&mut u64, &mut FileMap)> {
        self.load_map(ino)?;
        self.dirty_files.insert(ino);
        self.mark(ino);
        match &mut self.inodes.get_mut(&ino).ok_or(err(libc::ENOENT))?.content {
            Content::File { size, map: MapState::Loaded(m) } => Ok((size, m)),
            Content::Dir { .. } => Err(err(libc::EISDIR)),
            _ => Err(err(libc::EINVAL)),
        }
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

    /// Applies one mutation. Either it fails and changes nothing, or it succeeds whole.
    pub fn apply(&mut self, op: &Op) -> FsResult<()> {
        match op {
            Op::Create { parent, name, ino, kind, mode, uid, gid, rdev, now } => {
                if self.dir_entries_mut(*parent)?.contains_key(name) {
                    return Err(err(libc::EEXIST));
                }
                if self.inodes.contains_key(ino) {
                    return Err(err(libc::EIO));
                }
                let (content, nlink) = match kind {
                    NewKind::File => (Content::File { size: 0, map: MapState::Loaded(FileMap::default()) }, 1),
                    NewKind::Dir => (Content::Dir { parent: *parent, entries: BTreeMap::new() }, 2),
                    NewKind::Symlink(t) => (Content::Symlink { target: t.clone() }, 1),
                    NewKind::Special => (Content::Special, 1),
                };
                let attr = Attr { mode: *mode, uid: *uid, gid: *gid, nlink, rdev: *rdev, atime: *now, mtime: *now, ctime: *now };
                self.inodes.insert(*ino, Inode { attr, content, xattrs: BTreeMap::new() });
                self.next_ino = self.next_ino.max(ino + 1);
                self.mark(*ino);
                self.dir_entries_mut(*parent)?.insert(name.clone(), *ino);
                if matches!(kind, NewKind::Dir) {
                    self.attr_mut(*parent)?.nlink += 1;
                }
                self.touch_dir(*parent, *now)
            }
            Op::Link { ino, parent, name, now } => {
                self.inode(*ino)?;
                let entries = self.dir_entries_mut(*parent)?;
                if entries.contains_key(name) {
                    return Err(err(libc::EEXIST));
                }
                entries.insert(name.clone(), *ino);
                let a = self.attr_mut(*ino)?;
                a.nlink += 1;
                a.ctime = *now;
                self.touch_dir(*parent, *now)
            }
            Op::Unlink { parent, name, dir, now } => {
                let target = self.lookup(*parent, name)?;
                let is_dir = self.inode(target)?.is_dir();
                if *dir && !is_dir {
                    return Err(err(libc::ENOTDIR));
                }
                if !*dir && is_dir {
                    return Err(err(libc::EISDIR));
                }
                if is_dir && !self.is_empty_dir(target)? {
                    return Err(err(libc::ENOTEMPTY));
                }
                self.dir_entries_mut(*parent)?.remove(name);
                if is_dir {
                    self.attr_mut(*parent)?.nlink -= 1;
                }
                self.touch_dir(*parent, *now)?;
                self.unlink_inode(target, *now)
            }
            Op::Rename { parent, name, new_parent, new_name, flags, now } => {
                self.rename(*parent, name, *new_parent, new_name, *flags, *now)
            }
            Op::SetAttr { ino, attr, now } => self.set_attr(*ino, attr, *now),
            Op::Write { ino, offset, data, now } => {
                let store = self.store.clone();
                let (size, map) = self.file_map_mut(*ino)?;
                let bs = BLOCK_SIZE as u64;
                let end = offset + data.len() as u64;
                let mut pos = *offset;
                let mut added = 0;
                while pos < end {
                    let idx = pos / bs;
                    let within = (pos % bs) as usize;
                    let n = (bs - within as u64).min(end - pos) as usize;
                    let from = (pos - offset) as usize;
                    added += map.write_in_block(store.as_ref(), idx, within, &data[from..from + n])?;
                    pos += n as u64;
                }
                *size = (*size).max(end);
                self.dirty_blocks += added;
                let a = self.attr_mut(*ino)?;
                a.mtime = *now;
                a.ctime = *now;
                Ok(())
            }
            Op::Fallocate { ino, offset, len, mode, now } => self.fallocate(*ino, *offset, *len, *mode, *now),
            Op::SetXattr { ino, name, value, flags, now } => {
                self.mark(*ino);
                let inode = self.inodes.get_mut(ino).ok_or(err(libc::ENOENT))?;
                let exists = inode.xattrs.contains_key(name);
                if *flags & libc::XATTR_CREATE != 0 && exists {
                    return Err(err(libc::EEXIST));
                }
                if *flags & libc::XATTR_REPLACE != 0 && !exists {
                    return Err(err(libc::ENODATA));
                }
                inode.xattrs.insert(name.clone(), value.clone());
                inode.attr.ctime = *now;
                Ok(())
            }
            Op::RemoveXattr { ino, name, now } => {
                self.mark(*ino);
                let inode = self.inodes.get_mut(ino).ok_or(err(libc::ENOENT))?;
                inode.xattrs.remove(name).ok_or(err(libc::ENODATA))?;
                inode.attr.ctime = *now;
                Ok(())
            }
        }
    }

    fn rename(&mut self, parent: u64, name: &[u8], new_parent: u64, new_name: &[u8], flags: u32, now: Time) -> FsResult<()> {
        let src = self.lookup(parent, name)?;
        self.dir_entries_mut(new_parent)?;
        let dst = self.dir_entries_mut(new_parent)?.get(new_name).copied();
        let src_dir = self.inode(src)?.is_dir();
        if src_dir && self.is_ancestor(src, new_parent) {
            return Err(err(libc::EINVAL));
        }
        if flags & libc::RENAME_EXCHANGE != 0 {
            let dst = dst.ok_or(err(libc::ENOENT))?;
            let dst_dir = self.inode(dst)?.is_dir();
            if dst_dir && self.is_ancestor(dst, parent) {
                return Err(err(libc::EINVAL));
            }
            self.dir_entries_mut(parent)?.insert(name.to_vec(), dst);
            self.dir_entries_mut(new_parent)?.insert(new_name.to_vec(), src);
            if parent != new_parent && src_dir != dst_dir {
                let (from, to) = if src_dir { (parent, new_parent) } else { (new_parent, parent) };
                self.attr_mut(from)?.nlink -= 1;
                self.attr_mut(to)?.nlink += 1;
            }
            if src_dir {
                self.set_dir_parent(src, new_parent);
            }
            if dst_dir {
                self.set_dir_parent(dst, parent);
            }
            self.attr_mut(src)?.ctime = now;
            self.attr_mut(dst)?.ctime = now;
            self.touch_dir(parent, now)?;
            return self.touch_dir(new_parent, now);
        }
        if let Some(dst) = dst {
            if flags & libc::RENAME_NOREPLACE != 0 {
                return Err(err(libc::EEXIST));
            }
            if dst == src {
                return Ok(());
            }
            let dst_dir = self.inode(dst)?.is_dir();
            if src_dir && !dst_dir {
                return Err(err(libc::ENOTDIR));
            }
            if !src_dir && dst_dir {
                return Err(err(libc::EISDIR));
            }
            if dst_dir && !self.is_empty_dir(dst)? {
                return Err(err(libc::ENOTEMPTY));
            }
            self.dir_entries_mut(new_parent)?.remove(new_name);
            if dst_dir {
                self.attr_mut(new_parent)?.nlink -= 1;
            }
            self.unlink_inode(dst, now)?;
        }
        self.dir_entries_mut(parent)?.remove(name);
        self.dir_entries_mut(new_parent)?.insert(new_name.to_vec(), src);
        if src_dir && parent != new_parent {
            self.attr_mut(parent)?.nlink -= 1;
            self.attr_mut(new_parent)?.nlink += 1;
            self.set_dir_parent(src, new_parent);
        }
        self.attr_mut(src)?.ctime = now;
        self.touch_dir(parent, now)?;
        self.touch_dir(new_parent, now)
    }

    /// True when `dir` is `ino` or lies beneath it.
    fn is_ancestor(&self, ino: u64, mut dir: u64) -> bool {
        loop {
            if dir == ino {
                return true;
            }
            match self.inodes.get(&dir).map(|i| &i.content) {
                Some(Content::Dir { parent, .. }) if *parent != dir => dir = *parent,
                _ => return false,
            }
        }
    }

    fn set_attr(&mut self, ino: u64, set: &SetAttr, now: Time) -> FsResult<()> {
        self.inode(ino)?;
        if let Some(size) = set.size {
            let store = self.store.clone();
            let (cur, map) = self.file_map_mut(ino)?;
            let added = if size < *cur { map.truncate(store.as_ref(), size)? } else { 0 };
            *cur = size;
            self.dirty_blocks += added;
        }
        let a = self.attr_mut(ino)?;
        if let Some(mode) = set.mode {
            a.mode = (a.mode & S_IFMT) | (mode & 0o7777);
        }
        if let Some(uid) = set.uid {
            a.uid = uid;
        }
        if let Some(gid) = set.gid {
            a.gid = gid;
        }
        if let Some(t) = set.atime {
            a.atime = t;
        }
        if let Some(t) = set.mtime {
            a.mtime = t;
        } else if set.size.is_some() {
            a.mtime = now;
        }
        a.ctime = set.ctime.unwrap_or(now);
        Ok(())
    }

    fn fallocate(&mut self, ino: u64, offset: u64, len: u64, mode: i32, now: Time) -> FsResult<()> {
        let store = self.store.clone();
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        if mode & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0
            || (punch && !keep_size)
        {
            return Err(err(libc::EOPNOTSUPP));
        }
        let (size, map) = self.file_map_mut(ino)?;
        let mut added = 0;
        if punch || zero {
            added = map.zero_range(store.as_ref(), offset, offset + len)?;
        }
        if !keep_size {
            *size = (*size).max(offset + len);
        }
        self.dirty_blocks += added;
        if punch || zero || !keep_size {
            let a = self.attr_mut(ino)?;
            a.mtime = now;
            a.ctime = now;
        }
        Ok(())
    }

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
    pub fn settle_blocks(&mut self, stored: &[(u64, u64, Arc<Vec<u8>>, Option<Hash>)]) {
        for (ino, idx, data, hash) in stored {
            if let Some(Inode { content: Content::File { map: MapState::Loaded(m), .. }, .. }) = self.inodes.get_mut(ino) {
                if m.settle(*idx, data, *hash) {
                    self.dirty_blocks -= 1;
                }
            }
        }
    }

    /// Stores everything changed since the last commit and returns the new root hash.
    pub fn commit(&mut self) -> Result<Hash, StoreError> {
        let store = self.store.clone();
        let files = std::mem::take(&mut self.dirty_files);
        for ino in files {
            if let Some(Inode { content: Content::File { map: MapState::Loaded(m), .. }, .. }) = self.inodes.get_mut(&ino) {
                let (_, settled) = m.commit(store.as_ref())?;
                self.dirty_blocks -= settled;
            }
        }
        for leaf in std::mem::take(&mut self.dirty_leaves) {
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
        }
        let root = TreeRoot {
            format: node::TREE_FORMAT,
            next_ino: self.next_ino,
            leaves: self.leaf_hashes.iter().map(|(k, v)| (*k, *v)).collect(),
        };
        node::put_node(store.as_ref(), &root)
    }
}

impl Inode {
    fn from_record(rec: InodeRecord) -> Inode {
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
