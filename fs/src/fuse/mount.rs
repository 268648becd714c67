//! Mounting a branch, unmounting it (refusing while in use), and clearing stale mounts.

use std::io;
use std::path::Path;
use std::sync::Arc;

use fuser::{BackgroundSession, Config, MountOption, SessionACL};

use super::BranchFs;
use crate::branch::Branch;
use crate::commit_signal::CommitSignal;
use crate::space::SpaceGuard;
use crate::sys::unmount as umount;

/// A mounted branch; dropping it unmounts lazily.
pub struct Mounted {
    session: Option<BackgroundSession>,
    path: std::path::PathBuf,
}

/// FUSE worker threads per writable mount: one more than the CPUs (so a request is
/// served while another thread waits on an fsync), at most 8. More threads than that
/// only add context switches: on 2 cores, 3 threads gave ~0.9x native pgbench
/// read-write tps where 8 gave ~0.8x. Each thread owns a request buffer as large as
/// the biggest write it receives. `PGBRANCH_FUSE_THREADS` overrides.
fn threads_per_mount() -> usize {
    if let Some(n) = std::env::var("PGBRANCH_FUSE_THREADS").ok().and_then(|v| v.parse().ok()) {
        return n;
    }
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    (cpus + 1).clamp(2, 8)
}
/// Read-only snapshots are read rarely and never wait on fsync.
const THREADS_PER_SNAPSHOT: usize = 2;

pub fn mount(branch: Arc<Branch>, path: &Path, signal: Arc<CommitSignal>, space: Arc<SpaceGuard>) -> io::Result<Mounted> {
    let read_only = branch.read_only();
    let mut options = vec![
        MountOption::FSName(format!("pgbranch:{}", branch.name)),
        MountOption::Subtype("pgbranch".into()),
        MountOption::DefaultPermissions,
        MountOption::NoAtime,
        MountOption::Dev,
        MountOption::Suid,
    ];
    options.push(if read_only { MountOption::RO } else { MountOption::RW });
    let mut config = Config::default();
    config.mount_options = options;
    config.acl = SessionACL::All;
    config.n_threads = Some(if read_only { THREADS_PER_SNAPSHOT } else { threads_per_mount() });
    config.clone_fd = true;
    let fs = BranchFs::new(branch, signal, space);
    let session = fuser::Session::new(fs, path, &config)?.spawn()?;
    Ok(Mounted { session: Some(session), path: path.to_path_buf() })
}

impl Mounted {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Unmounts; fails with EBUSY while any process has a file or cwd inside.
    pub fn unmount(mut self) -> io::Result<()> {
        umount(&self.path, false)?;
        if let Some(s) = self.session.take() {
            let _ = s.join();
        }
        Ok(())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        if let Some(s) = self.session.take() {
            let _ = umount(&self.path, true);
            drop(s);
        }
    }
}

/// True if `path` is a mount point according to /proc/self/mounts.
pub(crate) fn is_mounted(path: &Path) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") else { return false };
    let want = path.to_string_lossy();
    mounts.lines().any(|l| l.split(' ').nth(1).map(|p| p.replace("\\040", " ")).as_deref() == Some(&*want))
}

/// Detaches a mount left behind by a daemon that died, so the path can be reused.
pub fn clear_stale(path: &Path) -> io::Result<bool> {
    if is_mounted(path) {
        umount(path, true)?;
        return Ok(true);
    }
    Ok(false)
}
