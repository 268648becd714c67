//! Where a store keeps things: the repository, the mount points, the daemon's socket.
//!
//! ```text
//! STORE/            0711  (others may traverse to a mount, not list the store)
//!   data/           0700  packs, index, catalog, intent logs
//!   mnt/NAME        0711  one FUSE mount per branch or snapshot (its root is 0700)
//!   daemon.sock     0600  control socket
//!   daemon.lock           held by the running daemon
//!   daemon.log            the daemon's log
//! ```

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

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
    pub fn mounts(&self) -> PathBuf {
        self.root.join("mnt")
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
        for (dir, mode) in [(&self.root, 0o711), (&self.data(), 0o700), (&self.mounts(), 0o711)] {
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

