//! A tiny real filesystem for tests of what a full disk does: a tmpfs of a few hundred
//! KiB mounted for the test (needs root; without it the caller skips), unmounted on drop.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct TinyFs {
    path: PathBuf,
    _dir: Option<tempfile::TempDir>,
}

impl TinyFs {
    /// A tmpfs of `size` bytes on a fresh temporary directory.
    pub fn mount(size: u64) -> Option<TinyFs> {
        let dir = tempfile::tempdir().unwrap();
        let mut fs = TinyFs::mount_at(dir.path(), size)?;
        fs._dir = Some(dir);
        Some(fs)
    }

    /// A tmpfs of `size` bytes on `path` (created if missing).
    pub fn mount_at(path: &Path, size: u64) -> Option<TinyFs> {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount").args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"]).arg(path).output().ok()?;
        if !out.status.success() {
            eprintln!("skipped: cannot mount a tmpfs (needs root): {}", String::from_utf8_lossy(&out.stderr).trim());
            return None;
        }
        Some(TinyFs { path: path.to_path_buf(), _dir: None })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Fills what is left with a file `name` until the filesystem says ENOSPC.
    pub fn fill(&self, name: &str) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.path.join(name)).unwrap();
        loop {
            match f.write(&[0x5a; 4096]) {
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.path.display()),
            }
        }
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).output();
    }
}
