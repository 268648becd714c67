//! A disk that fails and loses power on command: a one-file FUSE filesystem served
//! by the test process, whose file `disk.img` is attached to a loop device, formatted
//! ext4 and mounted, with the store on it. The kernel's ext4 and the daemon above it
//! then see real EIOs from a real block device (this kernel has no device-mapper,
//! NBD or fault injection, so this layer stands in for dm `error`/`flakey`).
//!
//! What the layer guarantees:
//! - every read and write the loop device issues reaches it (the file is opened
//!   `direct_io`, so the FUSE page cache holds nothing); with the fault switch off a
//!   read returns exactly the bytes last written to that range;
//! - with the switch on ([`Faults`]), a read / write / fsync that touches the chosen
//!   byte range (or any, with no range) fails with EIO and changes nothing;
//! - once [`FaultDisk::freeze`] is called every request fails with EIO and nothing
//!   more is recorded: the disk is "off".
//!
//! What it models for power loss: a volatile write cache of unbounded size. Every
//! write since the last successful fsync (loop turns a flush/FUA into an fsync of its
//! backing file) is kept in order in [`Journal::unsynced`]; `durable.img` holds the
//! state as of that fsync. [`Journal::power_loss_image`] builds what the disk holds
//! after the power went: the durable state plus a seeded random subset of the
//! unsynced writes, applied in their order, each either whole, dropped, or torn (a
//! prefix of its 512-byte sectors). It does not model reordering within a write
//! beyond sector prefixes, nor corruption of sectors that were synced.

use crate::seeded::Rng;
use std::ffi::OsStr;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, LockOwner, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request, SessionACL, WriteFlags,
};

/// The sector a torn write keeps a prefix of.
pub const SECTOR: usize = 512;

/// Which requests fail with EIO, and where.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Faults {
    pub reads: bool,
    pub writes: bool,
    pub fsyncs: bool,
    /// Only requests touching these bytes of `disk.img` fail; `None`: all.
    pub range: Option<Range<u64>>,
    /// With a range: only every other `stripe` bytes of it fail, from its start (a disk
    /// with bad patches spread over a region); `None`: the whole range.
    pub stripe: Option<u64>,
}

impl Faults {
    fn hits(&self, on: bool, off: u64, len: u64) -> bool {
        let end = off + len.max(1);
        let bad_stripe = |r: &Range<u64>, s: u64| {
            let (first, last) = (off.max(r.start), end.min(r.end));
            first < last && ((first - r.start) / s..=(last - 1 - r.start) / s).any(|k| k % 2 == 0)
        };
        on && self.range.as_ref().is_none_or(|r| match self.stripe {
            Some(s) if s > 0 => bad_stripe(r, s),
            _ => off < r.end && end > r.start,
        })
    }
}

/// Counters a test prints and asserts on.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counts {
    pub reads: u64,
    pub writes: u64,
    pub fsyncs: u64,
    pub failed_reads: u64,
    pub failed_writes: u64,
    pub failed_fsyncs: u64,
}

/// The recorded state of the disk: where durable bytes live and what is unsynced.
pub struct Journal {
    /// What the device currently returns (synced and unsynced writes).
    live: File,
    /// The disk as of the last successful fsync.
    durable: File,
    /// Writes since the last successful fsync, in order: (offset, bytes).
    pub unsynced: Vec<(u64, Vec<u8>)>,
    pub faults: Faults,
    pub frozen: bool,
    /// A crash point: the disk freezes when this many writes have reached it (the
    /// write with this number and everything after it fail).
    pub freeze_at_write: Option<u64>,
    pub counts: Counts,
}

impl Journal {
    /// A journal over `live` and `durable`, which must hold the same bytes.
    pub fn new(live: File, durable: File) -> Journal {
        Journal {
            live,
            durable,
            unsynced: Vec::new(),
            faults: Faults::default(),
            frozen: false,
            freeze_at_write: None,
            counts: Counts::default(),
        }
    }

    fn len(&self) -> u64 {
        self.live.metadata().map(|m| m.len()).unwrap_or(0)
    }

    pub fn read(&mut self, off: u64, len: usize) -> Result<Vec<u8>, Errno> {
        self.counts.reads += 1;
        if self.frozen || self.faults.hits(self.faults.reads, off, len as u64) {
            self.counts.failed_reads += 1;
            return Err(Errno::EIO);
        }
        let end = (off + len as u64).min(self.len());
        let mut buf = vec![0u8; end.saturating_sub(off) as usize];
        self.live.read_exact_at(&mut buf, off).map_err(|_| Errno::EIO)?;
        Ok(buf)
    }

    pub fn write(&mut self, off: u64, data: &[u8]) -> Result<(), Errno> {
        self.counts.writes += 1;
        if self.freeze_at_write.is_some_and(|n| self.counts.writes >= n) {
            self.frozen = true;
        }
        if self.frozen || self.faults.hits(self.faults.writes, off, data.len() as u64) {
            self.counts.failed_writes += 1;
            return Err(Errno::EIO);
        }
        self.live.write_all_at(data, off).map_err(|_| Errno::EIO)?;
        self.unsynced.push((off, data.to_vec()));
        Ok(())
    }

    /// Makes every recorded write durable (writes them to `durable.img` and syncs it).
    pub fn fsync(&mut self) -> Result<(), Errno> {
        self.counts.fsyncs += 1;
        if self.frozen || self.faults.hits(self.faults.fsyncs, 0, u64::MAX / 2) && self.fsync_range_hit() {
            self.counts.failed_fsyncs += 1;
            return Err(Errno::EIO);
        }
        for (off, data) in &self.unsynced {
            self.durable.write_all_at(data, *off).map_err(|_| Errno::EIO)?;
        }
        self.durable.sync_data().map_err(|_| Errno::EIO)?;
        self.unsynced.clear();
        Ok(())
    }

    /// With a range set, an fsync fails only if an unsynced write touches it (a
    /// flakey sector range); without one, every fsync fails.
    fn fsync_range_hit(&self) -> bool {
        match &self.faults.range {
            None => true,
            Some(r) => self.unsynced.iter().any(|(o, d)| *o < r.end && o + d.len() as u64 > r.start),
        }
    }

    /// Writes the after-power-loss disk to `out`: durable bytes, then each unsynced
    /// write kept whole, dropped, or torn to a prefix of its sectors, chosen by `seed`.
    /// Returns (kept whole, torn, dropped).
    pub fn power_loss_image(&self, out: &Path, seed: u64) -> std::io::Result<(usize, usize, usize)> {
        let len = self.durable.metadata()?.len();
        let mut src = self.durable.try_clone()?;
        let mut dst = File::create(out)?;
        use std::io::Seek;
        src.seek(std::io::SeekFrom::Start(0))?;
        std::io::copy(&mut src, &mut dst)?;
        dst.set_len(len)?;
        let mut rng = Rng(seed | 1);
        let (mut whole, mut torn, mut dropped) = (0, 0, 0);
        for (off, data) in &self.unsynced {
            match rng.next_u64() % 3 {
                0 => {
                    dst.write_all_at(data, *off)?;
                    whole += 1;
                }
                1 => {
                    let sectors = data.len().div_ceil(SECTOR);
                    let keep = (rng.next_u64() as usize % sectors.max(1)) * SECTOR;
                    dst.write_all_at(&data[..keep.min(data.len())], *off)?;
                    torn += 1;
                }
                _ => dropped += 1,
            }
        }
        dst.sync_all()?;
        Ok((whole, torn, dropped))
    }
}

const ROOT: u64 = 1;
const DISK: u64 = 2;
const NAME: &str = "disk.img";
const TTL: Duration = Duration::from_secs(1);

struct DiskFs {
    journal: Arc<Mutex<Journal>>,
}

fn lock(j: &Mutex<Journal>) -> MutexGuard<'_, Journal> {
    j.lock().unwrap_or_else(|p| p.into_inner())
}

impl DiskFs {
    fn attr(&self, ino: u64) -> FileAttr {
        let (kind, perm, size, nlink) =
            if ino == ROOT { (FileType::Directory, 0o755, 0, 2) } else { (FileType::RegularFile, 0o644, lock(&self.journal).len(), 1) };
        FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: size.div_ceil(512),
            atime: SystemTime::UNIX_EPOCH,
            mtime: SystemTime::UNIX_EPOCH,
            ctime: SystemTime::UNIX_EPOCH,
            crtime: SystemTime::UNIX_EPOCH,
            kind,
            perm,
            nlink,
            uid: 0,
            gid: 0,
            rdev: 0,
            blksize: 4096,
            flags: 0,
        }
    }
}

impl Filesystem for DiskFs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent.0 == ROOT && name == NAME {
            reply.entry(&TTL, &self.attr(DISK), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino.0 {
            ROOT | DISK => reply.attr(&TTL, &self.attr(ino.0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino.0 == DISK {
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        } else {
            reply.error(Errno::EISDIR);
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        match lock(&self.journal).read(offset, size as usize) {
            Ok(b) => reply.data(&b),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match lock(&self.journal).write(offset, data) {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        // close(): not a durability point (loop closes its file only at detach).
        reply.ok();
    }

    fn fsync(&self, _req: &Request, _ino: INodeNo, _fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        match lock(&self.journal).fsync() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, _fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        if ino.0 != ROOT {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [(ROOT, FileType::Directory, "."), (ROOT, FileType::Directory, ".."), (DISK, FileType::RegularFile, NAME)];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(INodeNo(*ino), (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// The fault layer mounted at `dir/fuse`, `dir/fuse/disk.img` formatted ext4, on a
/// loop device, mounted at `dir/mnt`.
pub struct FaultDisk {
    pub dir: PathBuf,
    pub journal: Arc<Mutex<Journal>>,
    pub fuse_dir: PathBuf,
    /// The ext4 on top, once attached.
    pub ext4: Option<crate::loopdisk::LoopDisk>,
    session: Option<BackgroundSession>,
}

impl FaultDisk {
    /// Serves `dir/live.img` (a copy of `base`, an ext4 image) through the fault layer
    /// and mounts the ext4 on it at `dir/mnt`.
    pub fn start(dir: &Path, base: &Path) -> FaultDisk {
        crate::detach_mounts_under(dir);
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let live = dir.join("live.img");
        let durable = dir.join("durable.img");
        std::fs::copy(base, &live).unwrap();
        std::fs::copy(base, &durable).unwrap();
        let open = |p: &Path| std::fs::OpenOptions::new().read(true).write(true).open(p).unwrap();
        let journal = Arc::new(Mutex::new(Journal::new(open(&live), open(&durable))));
        let fuse_dir = dir.join("fuse");
        std::fs::create_dir_all(&fuse_dir).unwrap();
        let mut config = Config::default();
        config.mount_options = vec![MountOption::FSName("pgbranch-faultdisk".into()), MountOption::RW];
        config.acl = SessionACL::All;
        config.n_threads = Some(2);
        let fs = DiskFs { journal: journal.clone() };
        let session = fuser::Session::new(fs, &fuse_dir, &config).and_then(|s| s.spawn()).expect("mounting the fault layer");
        let mut disk = FaultDisk { dir: dir.to_path_buf(), journal, fuse_dir, ext4: None, session: Some(session) };
        disk.ext4 = Some(crate::loopdisk::LoopDisk::attach(&disk.image(), &dir.join("mnt")));
        disk
    }

    /// The file the loop device reads and writes.
    pub fn image(&self) -> PathBuf {
        self.fuse_dir.join(NAME)
    }

    pub fn mountpoint(&self) -> PathBuf {
        self.dir.join("mnt")
    }

    pub fn journal(&self) -> MutexGuard<'_, Journal> {
        lock(&self.journal)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.journal().faults = faults;
    }

    /// The power goes: every request fails from now on, nothing more is recorded.
    pub fn freeze(&self) {
        self.journal().frozen = true;
    }

    /// A crash point `n` writes from now: the disk freezes at that write.
    pub fn freeze_after_writes(&self, n: u64) {
        let mut j = self.journal();
        j.freeze_at_write = Some(j.counts.writes + n.max(1));
    }

    pub fn frozen(&self) -> bool {
        self.journal().frozen
    }

    /// Unmounts the ext4 (lazily), detaches the loop device and the fault layer.
    pub fn detach(&mut self) {
        if let Some(mut e) = self.ext4.take() {
            e.detach();
        }
        if let Some(s) = self.session.take() {
            // A lazy unmount never blocks.
            let _ = pgbranch_fs::sys::unmount(&self.fuse_dir, true);
            drop(s);
        }
    }
}

impl Drop for FaultDisk {
    fn drop(&mut self) {
        self.detach();
    }
}

/// A fresh ext4 image of `size_mib` MiB at `path` (to copy for each cycle).
pub fn make_base_image(path: &Path, size_mib: u64) {
    let f = File::create(path).unwrap();
    f.set_len(size_mib << 20).unwrap();
    drop(f);
    crate::loopdisk::format_ext4(path);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal(dir: &Path, bytes: &[u8]) -> Journal {
        std::fs::write(dir.join("l"), bytes).unwrap();
        std::fs::write(dir.join("d"), bytes).unwrap();
        let open = |p: PathBuf| std::fs::OpenOptions::new().read(true).write(true).open(p).unwrap();
        Journal::new(open(dir.join("l")), open(dir.join("d")))
    }

    /// The layer keeps exactly the synced writes and, of the unsynced ones, only
    /// whole, dropped or sector-prefix-torn versions; reads see every write.
    #[test]
    fn power_loss_keeps_synced_and_drops_or_tears_only_unsynced() {
        let tmp = tempfile::tempdir().unwrap();
        let size = 64 * SECTOR;
        let mut j = journal(tmp.path(), &vec![0u8; size]);
        j.write(0, &vec![1u8; 4 * SECTOR]).unwrap();
        j.fsync().unwrap();
        let unsynced = [(8 * SECTOR, 4 * SECTOR, 2u8), (20 * SECTOR, 8 * SECTOR, 3u8), (40 * SECTOR, SECTOR, 4u8)];
        for (off, len, b) in unsynced {
            j.write(off as u64, &vec![b; len]).unwrap();
        }
        assert_eq!(j.read(20 * SECTOR as u64, SECTOR).unwrap(), vec![3u8; SECTOR], "reads see unsynced writes");
        let (mut saw_whole, mut saw_torn, mut saw_dropped) = (false, false, false);
        for seed in 0..64 {
            let out = tmp.path().join("out");
            let (w, t, d) = j.power_loss_image(&out, seed).unwrap();
            assert_eq!(w + t + d, unsynced.len());
            saw_whole |= w > 0;
            saw_torn |= t > 0;
            saw_dropped |= d > 0;
            let img = std::fs::read(&out).unwrap();
            assert_eq!(img.len(), size);
            assert!(img[..4 * SECTOR].iter().all(|&b| b == 1), "seed {seed}: a synced write is lost");
            for (off, len, b) in unsynced {
                let region = &img[off..off + len];
                let kept = region.iter().take_while(|&&x| x == b).count();
                assert_eq!(kept % SECTOR, 0, "seed {seed}: a write torn inside a sector");
                assert!(region[kept..].iter().all(|&x| x == 0), "seed {seed}: bytes after a tear are not the old ones");
            }
            let untouched: Vec<usize> =
                (0..size).filter(|i| !(*i < 4 * SECTOR || unsynced.iter().any(|(o, l, _)| (*o..o + l).contains(i)))).collect();
            assert!(untouched.iter().all(|&i| img[i] == 0), "seed {seed}: bytes nobody wrote changed");
        }
        assert!(saw_whole && saw_torn && saw_dropped, "64 seeds cover whole, torn and dropped writes");
        j.fsync().unwrap();
        assert!(j.unsynced.is_empty());
        let (w, t, d) = j.power_loss_image(&tmp.path().join("out"), 7).unwrap();
        assert_eq!((w, t, d), (0, 0, 0));
        let img = std::fs::read(tmp.path().join("out")).unwrap();
        assert_eq!(&img[20 * SECTOR..28 * SECTOR], &vec![3u8; 8 * SECTOR][..], "after fsync every write is durable");
    }

    #[test]
    fn faults_fail_with_eio_and_change_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let mut j = journal(tmp.path(), &vec![0u8; 16 * SECTOR]);
        j.faults = Faults { reads: true, writes: true, fsyncs: false, range: Some(4096..8192), stripe: None };
        assert_eq!(j.write(4096, &[9u8; 512]), Err(Errno::EIO));
        assert_eq!(j.read(4000, 200), Err(Errno::EIO));
        assert!(j.read(0, 512).is_ok(), "outside the range reads work");
        j.faults = Faults { reads: true, range: Some(4096..8192), stripe: Some(1024), ..Faults::default() };
        assert_eq!(j.read(4096 + 512, 512), Err(Errno::EIO), "the first stripe of the range fails");
        assert!(j.read(4096 + 1024, 1024).is_ok(), "the second stripe reads");
        assert_eq!(j.read(4096 + 1024, 1025), Err(Errno::EIO), "a read reaching into the third stripe fails");
        j.faults = Faults { reads: true, writes: true, fsyncs: false, range: Some(4096..8192), ..Faults::default() };
        j.write(0, &[5u8; 512]).unwrap();
        j.faults = Faults { fsyncs: true, ..Faults::default() };
        assert_eq!(j.fsync(), Err(Errno::EIO));
        assert_eq!(j.unsynced.len(), 1, "a failed fsync makes nothing durable");
        j.faults = Faults::default();
        assert_eq!(j.read(4096, 512).unwrap(), vec![0u8; 512], "a failed write changed nothing");
        j.freeze_at_write = Some(j.counts.writes + 2);
        j.write(512, &[6u8; 512]).unwrap();
        assert_eq!(j.write(1024, &[6u8; 512]), Err(Errno::EIO), "the crash-point write fails");
        assert!(j.frozen);
        assert_eq!(j.unsynced.len(), 2, "the write at the crash point is not recorded");
        assert_eq!(j.read(0, 1), Err(Errno::EIO));
        assert_eq!(j.fsync(), Err(Errno::EIO), "a frozen disk syncs nothing");
    }
}
