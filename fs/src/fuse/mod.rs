//! The FUSE filesystem: serves one branch as a POSIX directory tree.
//!
//! Each kernel request becomes a read of the branch's tree or an [`Op`] applied
//! through [`Branch::update`] (applied and logged atomically). fsync and fsyncdir make
//! the intent log durable, which covers every change to the branch, so postgres' fsync
//! of a file or of a directory after a rename is honoured exactly.

mod attr;
pub mod mount;

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, Errno as FErrno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags, KernelConfig, LockOwner, OpenFlags,
    RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr,
    Request, TimeOrNow, WriteFlags,
};
use parking_lot::Mutex;

use crate::block::BLOCK_SIZE;
use crate::branch::Branch;
use crate::commit_signal::CommitSignal;
use crate::node::Time;
use crate::op::{NewKind, Op, SetAttr};
use crate::space::SpaceGuard;
use crate::tree::{BlockSource, Content, Errno, FsResult, Tree};

pub use mount::{clear_stale, mount, Mounted};

/// How long the kernel may cache names and attributes. This mount is the only writer
/// of its branch, so the cache can only go stale through our own replies.
const TTL: Duration = Duration::from_secs(1);

type DirListing = Arc<Vec<(Vec<u8>, u64, u32)>>;

pub(crate) struct BranchFs {
    branch: Arc<Branch>,
    signal: Arc<CommitSignal>,
    next_fh: AtomicU64,
    dirs: Mutex<HashMap<u64, DirListing>>,
    /// The disk under the store: statfs, and the margin kept when it runs low.
    space: Arc<SpaceGuard>,
}

fn ferr(e: Errno) -> FErrno {
    FErrno::from_i32(e.0)
}

fn name_bytes(name: &OsStr) -> FsResult<Vec<u8>> {
    if name.len() > 255 {
        return Err(Errno(libc::ENAMETOOLONG));
    }
    Ok(name.as_bytes().to_vec())
}

impl BranchFs {
    pub fn new(branch: Arc<Branch>, signal: Arc<CommitSignal>, space: Arc<SpaceGuard>) -> BranchFs {
        BranchFs { branch, signal, next_fh: AtomicU64::new(1), dirs: Mutex::new(HashMap::new()), space }
    }

    fn attr_of(&self, ino: u64) -> FsResult<fuser::FileAttr> {
        let tree = self.branch.tree();
        Ok(attr::file_attr(ino, tree.inode(ino)?))
    }

    fn reply_entry(&self, ino: FsResult<u64>, reply: ReplyEntry) {
        match ino.and_then(|ino| self.attr_of(ino)) {
            Ok(a) => reply.entry(&TTL, &a, Generation(0)),
            Err(e) => reply.error(ferr(e)),
        }
    }

    /// Creates an inode of any kind, with owner and group as POSIX wants them
    /// (a set-group-id directory passes its group, and the bit to subdirectories).
    fn create_node(&self, req: &Request, parent: u64, name: &OsStr, mode: u32, rdev: u32, kind: NewKind) -> FsResult<u64> {
        let name = name_bytes(name)?;
        self.branch.update(|tree| {
            let p = tree.inode(parent)?;
            let mut mode = mode;
            let mut gid = req.gid();
            if p.attr.mode & libc::S_ISGID != 0 {
                gid = p.attr.gid;
                if matches!(kind, NewKind::Dir) {
                    mode |= libc::S_ISGID;
                }
            }
            let ino = tree.next_ino();
            let op = Op::Create { parent, name, ino, kind, mode, uid: req.uid(), gid, rdev, now: Time::now() };
            Ok((op, ino))
        })
    }

    fn read_bytes(&self, ino: u64, offset: u64, size: u32) -> FsResult<Vec<u8>> {
        let plan = {
            let tree = self.branch.tree();
            match tree.read_plan(ino, offset, size) {
                Err(Errno(libc::EAGAIN)) => None,
                other => Some(other?),
            }
        };
        let (len, sources) = match plan {
            Some(p) => p,
            None => {
                self.branch.with_tree_mut(|t| t.load_map(ino))?;
                self.branch.tree().read_plan(ino, offset, size)?
            }
        };
        let store = self.branch.tree().store().clone();
        let mut out = Vec::with_capacity(len as usize);
        let bs = BLOCK_SIZE as u64;
        let mut pos = offset;
        let end = offset + len;
        for src in sources {
            let within = (pos % bs) as usize;
            let n = (bs - within as u64).min(end - pos) as usize;
            match src {
                BlockSource::Hole => out.resize(out.len() + n, 0),
                BlockSource::Dirty(d) => out.extend_from_slice(&d[within..within + n]),
                BlockSource::Stored(h) => match store.get(&h) {
                    Ok(d) => out.extend_from_slice(&d[within..within + n]),
                    Err(e) => {
                        tracing::error!(branch = %self.branch.name, ino, offset = pos, "read failed: {e}");
                        return Err(Errno(libc::EIO));
                    }
                },
            }
            pos += n as u64;
        }
        Ok(out)
    }

    fn throttle_writes(&self) {
        if self.branch.uncommitted_blocks() >= self.signal.soft_limit {
            self.signal.nudge();
            let mut waited = 0;
            while self.branch.dirty_blocks() >= self.signal.hard_limit && waited < 5000 {
                std::thread::sleep(Duration::from_millis(2));
                waited += 2;
            }
        }
    }

    /// Changing a regular file's owner or group clears its set-user-id bit, and its
    /// set-group-id bit when group-executable (as Linux does, root included).
    fn mode_after_chown(&self, ino: u64, uid: Option<u32>, gid: Option<u32>) -> Option<u32> {
        if uid.is_none() && gid.is_none() {
            return None;
        }
        let tree = self.branch.tree();
        let a = &tree.inode(ino).ok()?.attr;
        if a.mode & libc::S_IFMT != libc::S_IFREG {
            return None;
        }
        let mut mode = a.mode & 0o7777;
        mode &= !libc::S_ISUID;
        if mode & libc::S_IXGRP != 0 {
            mode &= !libc::S_ISGID;
        }
        (mode != a.mode & 0o7777).then_some(mode)
    }

    fn listing(&self, ino: u64) -> FsResult<DirListing> {
        let tree = self.branch.tree();
        let Content::Dir { parent, entries } = &tree.inode(ino)?.content else { return Err(Errno(libc::ENOTDIR)) };
        let mut out = Vec::with_capacity(entries.len() + 2);
        out.push((b".".to_vec(), ino, libc::S_IFDIR));
        out.push((b"..".to_vec(), *parent, libc::S_IFDIR));
        for (name, child) in entries {
            let mode = tree.inode(*child).map(|i| i.attr.mode).unwrap_or(libc::S_IFREG);
            out.push((name.clone(), *child, mode));
        }
        Ok(Arc::new(out))
    }
}

fn setattr_op(tree: &Tree, ino: u64, set: SetAttr) -> FsResult<(Op, ())> {
    tree.inode(ino)?;
    Ok((Op::SetAttr { ino, attr: set, now: Time::now() }, ()))
}

impl Filesystem for BranchFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // HANDLE_KILLPRIV_V2 makes us clear set-id bits on write/chown (we do), and lets
        // the kernel mark the superblock NOSEC: otherwise every write() syscall costs a
        // getxattr("security.capability") round trip.
        let wanted = InitFlags::FUSE_WRITEBACK_CACHE
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_BIG_WRITES
            | InitFlags::FUSE_ASYNC_READ
            | InitFlags::FUSE_CACHE_SYMLINKS;
        let supported = wanted & config.capabilities();
        let _ = config.add_capabilities(supported);
        let _ = config.set_max_write(1 << 20);
        let _ = config.set_max_readahead(1 << 20);
        let _ = config.set_max_background(64);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = name_bytes(name).and_then(|name| self.branch.tree().lookup(parent.0, &name));
        self.reply_entry(ino, reply);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.attr_of(ino.0) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let now = Time::now();
        let mode = mode.or_else(|| self.mode_after_chown(ino.0, uid, gid));
        let set = SetAttr {
            mode,
            uid,
            gid,
            size,
            atime: atime.map(|t| attr::from_time_or_now(t, now)),
            mtime: mtime.map(|t| attr::from_time_or_now(t, now)),
            ctime: ctime.map(attr::from_system_time),
        };
        if size.is_some() {
            self.throttle_writes();
        }
        let result = self.branch.update(|tree| setattr_op(tree, ino.0, set)).and_then(|_| self.attr_of(ino.0));
        match result {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let tree = self.branch.tree();
        match tree.inode(ino.0).map(|i| &i.content) {
            Ok(Content::Symlink { target }) => reply.data(target),
            Ok(_) => reply.error(FErrno::EINVAL),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn mknod(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, rdev: u32, reply: ReplyEntry) {
        let kind = if mode & libc::S_IFMT == libc::S_IFREG || mode & libc::S_IFMT == 0 { NewKind::File } else { NewKind::Special };
        let mode = if mode & libc::S_IFMT == 0 { mode | libc::S_IFREG } else { mode };
        let ino = self.create_node(req, parent.0, name, mode, rdev, kind);
        self.reply_entry(ino, reply);
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, reply: ReplyEntry) {
        let ino = self.create_node(req, parent.0, name, libc::S_IFDIR | (mode & 0o7777), 0, NewKind::Dir);
        self.reply_entry(ino, reply);
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = name_bytes(name)
            .and_then(|name| self.branch.update(|_| Ok((Op::Unlink { parent: parent.0, name, dir: false, now: Time::now() }, ()))));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = name_bytes(name)
            .and_then(|name| self.branch.update(|_| Ok((Op::Unlink { parent: parent.0, name, dir: true, now: Time::now() }, ()))));
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn symlink(&self, req: &Request, parent: INodeNo, link_name: &OsStr, target: &Path, reply: ReplyEntry) {
        let target = target.as_os_str().as_bytes().to_vec();
        let ino = self.create_node(req, parent.0, link_name, libc::S_IFLNK | 0o777, 0, NewKind::Symlink(target));
        self.reply_entry(ino, reply);
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        if flags.contains(RenameFlags::RENAME_WHITEOUT) {
            return reply.error(FErrno::EINVAL);
        }
        let r = name_bytes(name).and_then(|name| {
            let new_name = name_bytes(newname)?;
            self.branch.update(|_| {
                let op = Op::Rename { parent: parent.0, name, new_parent: newparent.0, new_name, flags: flags.bits(), now: Time::now() };
                Ok((op, ()))
            })
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        let r = name_bytes(newname).and_then(|name| {
            self.branch.update(|tree| {
                if tree.inode(ino.0)?.is_dir() {
                    return Err(Errno(libc::EPERM));
                }
                Ok((Op::Link { ino: ino.0, parent: newparent.0, name, now: Time::now() }, ino.0))
            })
        });
        self.reply_entry(r, reply);
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
        let ok = self.branch.with_tree_mut(|t| {
            t.inode(ino.0)?;
            t.open(ino.0);
            Ok(())
        });
        match ok {
            Ok(()) => reply.opened(FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match self.read_bytes(ino.0, offset, size) {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        self.throttle_writes();
        if write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID) {
            let _ = self.branch.update(|tree| {
                let mode = tree.inode(ino.0)?.attr.mode;
                if mode & (libc::S_ISUID | libc::S_ISGID) == 0 {
                    return Err(Errno(0));
                }
                setattr_op(tree, ino.0, SetAttr { mode: Some(mode & !(libc::S_ISUID | libc::S_ISGID)), ..Default::default() })
            });
        }
        let growth_refused = self.space.growth_refused();
        let r = self.branch.write(ino.0, offset, data, |tree| {
            let size = tree.inode(ino.0)?.size();
            if growth_refused && offset.saturating_add(data.len() as u64) > size {
                return Err(Errno(libc::ENOSPC));
            }
            Ok(())
        });
        match r {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.branch.with_tree_mut(|t| t.release(ino.0));
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.branch.sync() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.listing(ino.0) {
            Ok(list) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.dirs.lock().insert(fh, list);
                self.branch.with_tree_mut(|t| t.open(ino.0));
                reply.opened(FileHandle(fh), FopenFlags::empty())
            }
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        // The listing is taken at opendir (and again on rewind), so entries added or
        // removed while a reader iterates never make it skip or repeat others.
        let list = if offset == 0 {
            match self.listing(ino.0) {
                Ok(l) => {
                    self.dirs.lock().insert(fh.0, l.clone());
                    l
                }
                Err(e) => return reply.error(ferr(e)),
            }
        } else {
            match self.dirs.lock().get(&fh.0) {
                Some(l) => l.clone(),
                None => return reply.error(FErrno::EBADF),
            }
        };
        for (i, (name, child, mode)) in list.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*child), (i + 1) as u64, attr::file_type(*mode), OsStr::from_bytes(name)) {
                break;
            }
        }
        reply.ok();
    }

    fn releasedir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        self.dirs.lock().remove(&fh.0);
        self.branch.with_tree_mut(|t| t.release(ino.0));
        reply.ok();
    }

    fn fsyncdir(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match self.branch.sync() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        // Report the space of the disk under the store (that is what writes consume),
        // less the margin kept for overwrites and commits: `df` shows a branch full
        // when growth is refused.
        let Ok(st) = crate::sys::statvfs(self.space.path()) else {
            return reply.statfs(1 << 30, 1 << 29, 1 << 29, 1 << 30, 1 << 29, BLOCK_SIZE as u32, 255, BLOCK_SIZE as u32);
        };
        let margin = self.space.margin();
        let to_blocks = |n: u64| n / BLOCK_SIZE as u64;
        reply.statfs(
            to_blocks(st.total_bytes),
            to_blocks(st.free_bytes.saturating_sub(margin)),
            to_blocks(st.available_bytes.saturating_sub(margin)),
            st.total_inodes.max(1 << 20),
            st.free_inodes.max(1 << 19),
            BLOCK_SIZE as u32,
            255,
            BLOCK_SIZE as u32,
        );
    }

    fn setxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, value: &[u8], flags: i32, _position: u32, reply: ReplyEmpty) {
        let r = self.branch.update(|tree| {
            tree.inode(ino.0)?;
            Ok((Op::SetXattr { ino: ino.0, name: name.as_bytes().to_vec(), value: value.to_vec(), flags, now: Time::now() }, ()))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let tree = self.branch.tree();
        let value = match tree.inode(ino.0) {
            Ok(i) => i.xattrs.get(name.as_bytes()).cloned(),
            Err(e) => return reply.error(ferr(e)),
        };
        match value {
            None => reply.error(FErrno::from_i32(libc::ENODATA)),
            Some(v) if size == 0 => reply.size(v.len() as u32),
            Some(v) if v.len() > size as usize => reply.error(FErrno::ERANGE),
            Some(v) => reply.data(&v),
        }
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let tree = self.branch.tree();
        let mut names = Vec::new();
        match tree.inode(ino.0) {
            Ok(i) => {
                for k in i.xattrs.keys() {
                    names.extend_from_slice(k);
                    names.push(0);
                }
            }
            Err(e) => return reply.error(ferr(e)),
        }
        if size == 0 {
            reply.size(names.len() as u32)
        } else if names.len() > size as usize {
            reply.error(FErrno::ERANGE)
        } else {
            reply.data(&names)
        }
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let r = self.branch.update(|tree| {
            tree.inode(ino.0)?;
            Ok((Op::RemoveXattr { ino: ino.0, name: name.as_bytes().to_vec(), now: Time::now() }, ()))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn access(&self, _req: &Request, _ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        reply.ok();
    }

    fn create(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, _umask: u32, _flags: i32, reply: ReplyCreate) {
        let mode = libc::S_IFREG | (mode & 0o7777);
        let result = self.create_node(req, parent.0, name, mode, 0, NewKind::File).and_then(|ino| {
            self.branch.with_tree_mut(|t| t.open(ino));
            self.attr_of(ino)
        });
        match result {
            Ok(a) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                reply.created(&TTL, &a, Generation(0), FileHandle(fh), FopenFlags::FOPEN_KEEP_CACHE)
            }
            Err(e) => reply.error(ferr(e)),
        }
    }

    fn fallocate(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, length: u64, mode: i32, reply: ReplyEmpty) {
        let growth_refused = self.space.growth_refused() && mode & libc::FALLOC_FL_PUNCH_HOLE == 0;
        let r = self.branch.update(|tree| {
            let size = tree.inode(ino.0)?.size();
            if growth_refused && offset.saturating_add(length) > size {
                return Err(Errno(libc::ENOSPC));
            }
            Ok((Op::Fallocate { ino: ino.0, offset, len: length, mode, now: Time::now() }, ()))
        });
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(ferr(e)),
        }
    }
}
