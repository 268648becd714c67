//! How each [`Op`] changes a tree: the POSIX semantics of create, link, unlink,
//! rename, setattr, write, fallocate and xattrs, each all-or-nothing.

use std::collections::BTreeMap;

use super::{err, Content, FsResult, Inode, MapState, Tree, S_IFMT};
use crate::filemap::FileMap;
use crate::node::{Attr, Time};
use crate::op::{NewKind, Op, SetAttr};
use crate::store::{ObjectStore, StoreError};

impl Tree {
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
                let len = data.len() as u64;
                self.write_range(*ino, *offset, Some(len), *now, |store, map| map.write(store, *offset, data))
            }
            Op::WriteBlocks { ino, offset, head, blocks, tail, now } => {
                let len = (blocks.len() as u64)
                    .checked_mul(crate::block::BLOCK_SIZE as u64)
                    .and_then(|n| n.checked_add(head.len() as u64 + tail.len() as u64));
                self.write_range(*ino, *offset, len, *now, |store, map| map.write_blocks(store, *offset, head, blocks, tail))
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
            self.with_map(ino, |store, cur, map| {
                if size < *cur {
                    map.truncate(store, size)?;
                }
                *cur = size;
                Ok(())
            })?;
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
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        if mode & !(libc::FALLOC_FL_KEEP_SIZE | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 || (punch && !keep_size) {
            return Err(err(libc::EOPNOTSUPP));
        }
        let end = offset.checked_add(len).ok_or(err(libc::EFBIG))?;
        self.with_map(ino, |store, size, map| {
            if punch || zero {
                map.zero_range(store, offset, end)?;
            }
            if !keep_size {
                *size = (*size).max(end);
            }
            Ok(())
        })?;
        if punch || zero || !keep_size {
            let a = self.attr_mut(ino)?;
            a.mtime = now;
            a.ctime = now;
        }
        Ok(())
    }
}

impl Tree {
    /// A write of `len` bytes at `offset` (None: the length overflowed): `write` changes
    /// the map, then the size grows to cover the range and mtime/ctime move to `now`.
    fn write_range(
        &mut self,
        ino: u64,
        offset: u64,
        len: Option<u64>,
        now: Time,
        write: impl FnOnce(&dyn ObjectStore, &mut FileMap) -> Result<(), StoreError>,
    ) -> FsResult<()> {
        let end = len.and_then(|len| offset.checked_add(len)).ok_or(err(libc::EFBIG))?;
        self.with_map(ino, |store, size, map| {
            write(store, map)?;
            *size = (*size).max(end);
            Ok(())
        })?;
        let a = self.attr_mut(ino)?;
        a.mtime = now;
        a.ctime = now;
        Ok(())
    }
}
