//! A small ext4 filesystem of its own for a test store: an image file, attached to a
//! loop device and mounted. Disk-full and fault tests put the store on one so that
//! ENOSPC and I/O errors come from a real kernel filesystem, not from a mock.
//!
//! Everything is undone on drop (unmount, lazily if busy; loop device detached;
//! image removed), and [`LoopDisk::create`] first detaches what a killed test run left.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// Where every loop disk of a test run lives: `$TMPDIR/pgbranch-loop-<pid>-<n>/`.
const PREFIX: &str = "pgbranch-loop-";

pub struct LoopDisk {
    /// The directory holding the image and the mount point.
    pub dir: PathBuf,
    /// The image file backing the loop device.
    pub image: PathBuf,
    /// Where the filesystem is mounted.
    pub mountpoint: PathBuf,
    /// `/dev/loopN`.
    pub device: String,
    /// Whether drop removes the image (false when the image belongs to the caller).
    owns_image: bool,
}

fn run(cmd: &mut Command, what: &str) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

impl LoopDisk {
    /// A fresh `size_mib` MiB ext4 (no blocks reserved for root: the daemon runs as
    /// root and would otherwise see a different "full" than postgres), mounted.
    pub fn create(tag: &str, size_mib: u64) -> LoopDisk {
        clear_stale();
        let dir = std::env::temp_dir().join(format!("{PREFIX}{}-{}-{tag}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let image = dir.join("disk.img");
        let f = std::fs::File::create(&image).unwrap();
        f.set_len(size_mib << 20).unwrap();
        drop(f);
        format_ext4(&image);
        let mut disk = LoopDisk::attach(&image, &dir.join("mnt"));
        disk.dir = dir;
        disk.owns_image = true;
        disk
    }

    /// Attaches an existing ext4 image (e.g. one served by a fault-injecting layer)
    /// to a loop device and mounts it at `mountpoint`. The image is left in place on drop.
    pub fn attach(image: &Path, mountpoint: &Path) -> LoopDisk {
        std::fs::create_dir_all(mountpoint).unwrap();
        let device = run(Command::new("losetup").args(["--find", "--show"]).arg(image), "losetup --find --show");
        let disk = LoopDisk {
            dir: mountpoint.parent().unwrap_or(mountpoint).to_path_buf(),
            image: image.to_path_buf(),
            mountpoint: mountpoint.to_path_buf(),
            device,
            owns_image: false,
        };
        run(Command::new("mount").args(["-t", "ext4", "-o", "errors=continue"]).arg(&disk.device).arg(&disk.mountpoint), "mount");
        disk
    }

    /// Bytes free on the filesystem, as `statvfs` reports to an unprivileged user.
    pub fn available_bytes(&self) -> u64 {
        pgbranch_fs::sys::statvfs(&self.mountpoint).unwrap_or_else(|e| panic!("statvfs {}: {e}", self.mountpoint.display())).available_bytes
    }

    /// Unmounts and detaches now (drop does the same, quietly).
    pub fn detach(&mut self) {
        if self.device.is_empty() {
            return;
        }
        if pgbranch_fs::sys::unmount(&self.mountpoint, false).is_err() {
            // A lazy unmount detaches a busy mount.
            let _ = pgbranch_fs::sys::unmount(&self.mountpoint, true);
        }
        let _ = Command::new("losetup").arg("-d").arg(&self.device).output();
        self.device.clear();
    }
}

impl Drop for LoopDisk {
    fn drop(&mut self) {
        self.detach();
        if self.owns_image && std::env::var_os("PGBRANCH_KEEP_TEST_STORE").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// `mkfs.ext4` on an image file with 4 KiB blocks, as on a real disk (mke2fs would pick
/// 1 KiB for an image under 512 MiB, its "small" type); no reserved blocks; the journal and inode tables initialised now, not lazily in
/// the background (which would write while a fault test runs).
pub fn format_ext4(image: &Path) {
    run(
        Command::new("mkfs.ext4").args(["-q", "-F", "-b", "4096", "-m", "0", "-E", "lazy_itable_init=0,lazy_journal_init=0"]).arg(image),
        "mkfs.ext4",
    );
}

/// Unmounts and detaches the loop disks of test runs whose process is gone.
fn clear_stale() {
    let tmp = std::env::temp_dir();
    let Ok(entries) = std::fs::read_dir(&tmp) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().to_string();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<i32>().ok()) else { continue };
        if crate::pid_alive(pid) {
            continue;
        }
        let dir = e.path();
        crate::detach_mounts_under(&dir);
        let image = dir.join("disk.img");
        let out = Command::new("losetup").arg("-j").arg(&image).output();
        if let Ok(out) = out {
            for line in String::from_utf8_lossy(&out.stdout).lines() {
                if let Some(dev) = line.split(':').next() {
                    let _ = Command::new("losetup").arg("-d").arg(dev).output();
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
