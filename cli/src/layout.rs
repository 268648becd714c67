//! Where a store keeps things: the repository, the mount points, the daemon's socket.
//!
//! ```text
//! STORE/            0711  (others may traverse to a mount, not list the store)
//!   data/           0700  packs, index, catalog, intent logs
//!   mnt/NAME        0711  one FUSE mount per branch or snapshot (its root is 0700)
//!   daemon.sock     0600  control socket
//!   daemon.lock           held by the running daemon
//!   daemon.log            the daemon's log
//!   run/NAME        0700  a branch server's socket directory (owned by the postgres user)
//! ```
//!
//! When the daemon runs as root, postgres runs as the `postgres` user, which must be
//! able to reach the mounts and sockets. If the store lies below a directory it cannot
//! traverse (root's default store under /root, mode 0700), `mnt/` and `run/` move to
//! `/run/pgbranch/<id>/` instead; the data stays in the store.

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

/// Whether every ancestor of `path` lets other users traverse it.
fn others_can_reach(path: &std::path::Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    path.ancestors().skip(1).all(|dir| std::fs::metadata(dir).map_or(true, |m| m.mode() & 0o001 != 0))
}

#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    /// `--store`, else `$PGBRANCH_HOME`, else `~/.local/share/pgbranch`.
    pub fn resolve(flag: Option<PathBuf>) -> Result<Layout> {
        let root = match flag.or_else(|| std::env::var_os("PGBRANCH_HOME").map(PathBuf::from)) {
            Some(p) => p,
            None => {
                let home = std::env::var_os("HOME").context("HOME is not set; pass --store DIR")?;
                PathBuf::from(home).join(".local/share/pgbranch")
            }
        };
        let root = if root.is_absolute() { root } else { std::env::current_dir()?.join(root) };
        Ok(Layout { root })
    }

    pub fn data(&self) -> PathBuf {
        self.root.join("data")
    }
    /// Where mounts and server sockets live: the store, unless the postgres user could
    /// not reach it there.
    pub fn runtime(&self) -> PathBuf {
        if unsafe { libc::geteuid() } != 0 || others_can_reach(&self.root) {
            return self.root.clone();
        }
        let id = blake3::hash(self.root.as_os_str().as_encoded_bytes()).to_hex();
        PathBuf::from("/run/pgbranch").join(&id[..16])
    }
    pub fn mounts(&self) -> PathBuf {
        self.runtime().join("mnt")
    }
    pub fn run_dir(&self) -> PathBuf {
        self.runtime().join("run")
    }
    pub fn mount_point(&self, name: &str) -> PathBuf {
        self.mounts().join(name)
    }
    pub fn socket(&self) -> PathBuf {
        self.root.join("daemon.sock")
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join("daemon.lock")
    }
    pub fn log(&self) -> PathBuf {
        self.root.join("daemon.log")
    }

    /// Creates the store's directories with their modes, and proves the store writable,
    /// before anything else touches it.
    pub fn prepare(&self) -> Result<()> {
        let hint = "choose another directory with --store or PGBRANCH_HOME, or fix its permissions";
        let runtime = self.runtime();
        for (dir, mode) in [(&self.root, 0o711), (&self.data(), 0o700), (&runtime, 0o711), (&self.mounts(), 0o711)] {
            if dir.exists() && !dir.is_dir() {
                bail!("store path {} exists and is not a directory; {hint}", dir.display());
            }
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create store directory {}; {hint}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot set permissions on {}; {hint}", dir.display()))?;
        }
        let probe = self.data().join(".write-probe");
        std::fs::write(&probe, b"probe").with_context(|| format!("store {} is not writable; {hint}", self.root.display()))?;
        std::fs::remove_file(&probe).ok();
        Ok(())
    }
}

