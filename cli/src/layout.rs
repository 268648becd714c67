//! Where a store keeps things: the repository, the mount points, the daemon's socket.
//!
//! ```text
//! STORE/            0711  (others may traverse to a mount, not list the store)
//!   data/           0700  packs, index, catalog, intent logs
//!   data/mask.key   0600  the masking key (deterministic transforms; copy it to
//!                         another store to get the same masked values there)
//!   data/transform.yaml   the masked follower's transform config
//!   data/source-tls/ 0700 the source's TLS files as given to `clone stream`
//!                         (root.crt, client.crt, client.key; 0600)
//!   source-tls/     0700  the same, owned by the postgres user, for pg_basebackup,
//!                         main's standby and the daemon (the follower's URL names them)
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
        if !crate::sys::is_root() || others_can_reach(&self.root) {
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

    /// The secret key of the masking transformers, made on first use (32 random bytes,
    /// hex, mode 0600). One key gives one output per input everywhere, so joins on
    /// masked values match and a re-sync gives the same data.
    pub fn mask_key(&self) -> Result<[u8; 32]> {
        use std::io::Read;
        let path = self.data().join("mask.key");
        if !path.exists() {
            let mut bytes = [0u8; 32];
            std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).context("reading /dev/urandom")?;
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            // Two processes that both found no key: one key wins, both read it.
            crate::files::create_atomic(&path, format!("{hex}\n").as_bytes(), 0o600).context("creating the masking key")?;
        }
        let text = std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let text = text.trim();
        let mut key = [0u8; 32];
        if text.len() != 64 {
            bail!("{} must hold 64 hex digits (a 32-byte key)", path.display());
        }
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).with_context(|| format!("{} must hold 64 hex digits", path.display()))?;
        }
        Ok(key)
    }

    /// The source's TLS files, kept with the data.
    pub fn source_tls_saved(&self) -> PathBuf {
        self.data().join("source-tls")
    }
    /// The source's TLS files where postgres' user reads them (under the runtime
    /// directory, which it can reach).
    pub fn source_tls(&self) -> PathBuf {
        self.runtime().join("source-tls")
    }

    /// The stored copy of the masked follower's transform config.
    pub fn transform_config(&self) -> PathBuf {
        self.data().join("transform.yaml")
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
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create store directory {}; {hint}", dir.display()))?;
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
                .with_context(|| format!("cannot set permissions on {}; {hint}", dir.display()))?;
        }
        match self.probe_writable() {
            Err(e) if is_out_of_space(&e) => {
                // A full store is still this store: every verb must work on it, and
                // some (`branch delete`, `gc`) are how space comes back.
                eprintln!(
                    "warning: store {} is out of space ({e}); commits fail until space is freed (see `pgbranch status`; `pgbranch branch delete` + `pgbranch gc` free it)",
                    self.root.display()
                );
                Ok(())
            }
            Err(e) => Err(e).with_context(|| format!("store {} is not writable; {hint}", self.root.display())),
            Ok(()) => Ok(()),
        }
    }

    fn probe_writable(&self) -> std::io::Result<()> {
        let probe = self.data().join(".write-probe");
        let written = std::fs::write(&probe, b"probe");
        std::fs::remove_file(&probe).ok();
        written
    }
}

/// Whether an error means the filesystem (or the user's quota) is full, as opposed to
/// not writable at all (EACCES, EROFS, ...).
pub(crate) fn is_out_of_space(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT))
}
