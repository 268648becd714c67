//! The room left on the store's disk, and what a branch may still do when it runs low.
//!
//! On ext4 a full disk refuses only writes that need new blocks: overwriting bytes a
//! file already has (a recycled WAL segment, a heap page) still works, so a postgres
//! that only reads and checkpoints carries on. In a copy-on-write store every write
//! needs new space (a record in the intent log, later a block in a pack), so a disk
//! filled to its last byte would refuse every write of every branch, and a read-mostly
//! postgres would PANIC at its next WAL fsync. The store therefore keeps a margin:
//! below it, writes that *grow* a file (past its end, or fallocate beyond it) get
//! ENOSPC, while writes inside a file's size go on using the margin, and commits have
//! room to fold intent logs into packs. `statfs` reports the margin as used, so `df`
//! on a branch shows it full when growth is refused.
//!
//! The free space is read with statvfs at most every [`RECHECK_FAR`] while the disk is
//! far from the margin and every [`RECHECK_NEAR`] close to it: a syscall per write
//! would cost more than the write's own bookkeeping.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// How stale the free-space figure may be while more than twice the margin is free.
const RECHECK_FAR: Duration = Duration::from_millis(50);
/// ... and within twice the margin.
const RECHECK_NEAR: Duration = Duration::from_millis(2);

/// The free space of the filesystem under the store, as the writers of every branch
/// see it.
#[derive(Debug)]
pub struct SpaceGuard {
    path: PathBuf,
    margin: u64,
    started: Instant,
    /// Microseconds after `started` of the last statvfs (`u64::MAX`: never).
    checked_at_us: AtomicU64,
    /// Bytes available to unprivileged writers at that statvfs.
    available: AtomicU64,
}

impl SpaceGuard {
    /// Guards the filesystem holding `path`; growth is refused below `margin` free bytes
    /// (0: never refused by the guard, only by the disk itself).
    pub fn new(path: &Path, margin: u64) -> SpaceGuard {
        SpaceGuard {
            path: path.to_path_buf(),
            margin,
            started: Instant::now(),
            checked_at_us: AtomicU64::new(u64::MAX),
            available: AtomicU64::new(u64::MAX),
        }
    }

    /// The directory whose filesystem this guards.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn margin(&self) -> u64 {
        self.margin
    }

    /// Bytes available to writers now (at most [`RECHECK_NEAR`] / [`RECHECK_FAR`] old);
    /// `None` if statvfs fails.
    pub fn available_bytes(&self) -> Option<u64> {
        let now_us = self.started.elapsed().as_micros() as u64;
        let last = self.checked_at_us.load(Ordering::Relaxed);
        let available = self.available.load(Ordering::Relaxed);
        let max_age = if available < self.margin.saturating_mul(2) { RECHECK_NEAR } else { RECHECK_FAR };
        if last != u64::MAX && now_us.saturating_sub(last) < max_age.as_micros() as u64 {
            return Some(available);
        }
        let fresh = crate::sys::statvfs(&self.path).ok()?.available_bytes;
        self.available.store(fresh, Ordering::Relaxed);
        self.checked_at_us.store(now_us, Ordering::Relaxed);
        Some(fresh)
    }

    /// Whether writes that grow a file are refused now. A failing statvfs refuses
    /// nothing: the write then meets the disk's own answer.
    pub fn growth_refused(&self) -> bool {
        self.margin > 0 && self.available_bytes().is_some_and(|a| a < self.margin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_margin_larger_than_the_disk_refuses_growth_and_zero_never_does() {
        let dir = std::env::temp_dir();
        let free = crate::sys::statvfs(&dir).unwrap().available_bytes;
        assert!(SpaceGuard::new(&dir, free.saturating_mul(4).max(1 << 40)).growth_refused());
        assert!(!SpaceGuard::new(&dir, 0).growth_refused());
        assert!(!SpaceGuard::new(&dir, 1).growth_refused(), "{free} bytes are free");
        assert!(!SpaceGuard::new(Path::new("/no/such/dir"), 1 << 40).growth_refused(), "statvfs failing refuses nothing");
    }
}
