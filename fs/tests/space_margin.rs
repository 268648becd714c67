//! The margin a nearly full disk keeps (`pgbranch_fs::space`), through a real FUSE
//! mount of a branch whose store sits on a small tmpfs: below the margin, a write that
//! grows a file fails with ENOSPC and changes nothing, while overwriting bytes the file
//! already has still works and is durable; `statfs` on the branch reports the margin as
//! used; once space is freed, files grow again.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::tinyfs::TinyFs;
use pgbranch_fs::commit_signal::CommitSignal;
use pgbranch_fs::repo::Repository;
use pgbranch_fs::space::SpaceGuard;

const MIB: u64 = 1 << 20;
const MARGIN: u64 = 16 * MIB;

/// Writes `data` at `offset` and fsyncs: the errno of whichever step failed.
fn write_durably(path: &std::path::Path, offset: u64, data: &[u8]) -> Result<(), i32> {
    let f = OpenOptions::new().write(true).open(path).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    f.write_all_at(data, offset).map_err(|e| e.raw_os_error().unwrap_or(-1))?;
    f.sync_all().map_err(|e| e.raw_os_error().unwrap_or(-1))
}

#[test]
fn below_the_margin_files_cannot_grow_but_can_be_overwritten() {
    let Some(disk) = TinyFs::mount(96 * MIB) else { return };
    let data_dir = disk.path().join("data");
    let repo = Repository::open(&data_dir).unwrap();
    let branch = repo.create_empty("b", 0, 0).unwrap();
    let mnt = tempfile::tempdir().unwrap();
    let space = Arc::new(SpaceGuard::new(&data_dir, MARGIN));
    let mounted = pgbranch_fs::fuse::mount(branch.clone(), mnt.path(), Arc::new(CommitSignal::new(2048)), space.clone()).unwrap();
    let file = mnt.path().join("wal");
    std::fs::write(&file, common::noise(1, 2 * MIB as usize)).unwrap();
    std::fs::File::open(&file).unwrap().sync_all().unwrap();

    // Leave less than the margin free.
    let free = pgbranch_fs::sys::statvfs(disk.path()).unwrap().available_bytes;
    let filler = disk.path().join("filler");
    std::fs::write(&filler, vec![0x5a; (free - MARGIN / 2) as usize]).unwrap();
    let t = Instant::now();
    while !space.growth_refused() {
        assert!(t.elapsed() < Duration::from_secs(30), "the guard never saw the disk below its margin");
        std::thread::sleep(Duration::from_millis(10));
    }

    let before = common::noise(1, 2 * MIB as usize);
    let grown = write_durably(&file, 2 * MIB, &common::noise(2, 64 << 10));
    assert_eq!(grown, Err(libc::ENOSPC), "a write past the end below the margin");
    let fallocated =
        std::process::Command::new("fallocate").args(["-o", &(2 * MIB).to_string(), "-l", &MIB.to_string()]).arg(&file).output().unwrap();
    let said = String::from_utf8_lossy(&fallocated.stderr);
    assert!(!fallocated.status.success() && said.contains("No space left"), "fallocate beyond the end below the margin: {said}");
    // The kernel's writeback cache keeps the size it thought it wrote (as after any
    // failed writeback, the cached pages are unspecified); the branch, what a commit
    // keeps, did not grow.
    let ino = branch.tree().lookup(pgbranch_fs::node::ROOT_INO, b"wal").unwrap();
    assert_eq!(branch.tree().inode(ino).unwrap().size(), 2 * MIB, "the refused growth changed nothing on the branch");

    let patch = common::noise(3, 256 << 10);
    write_durably(&file, 512 << 10, &patch).expect("an overwrite inside the file's size below the margin");
    let mut want = before;
    want[512 << 10..(512 << 10) + patch.len()].copy_from_slice(&patch);
    assert!(std::fs::read(&file).unwrap()[..want.len()] == want[..], "the overwrite reads back");

    let df = pgbranch_fs::sys::statvfs(mnt.path()).unwrap();
    assert_eq!(df.available_bytes, 0, "df on the branch shows it full while growth is refused: {df:?}");

    // Free space: files grow again, and a commit puts everything in packs.
    std::fs::remove_file(&filler).unwrap();
    let t = Instant::now();
    while space.growth_refused() {
        assert!(t.elapsed() < Duration::from_secs(30), "the guard never saw the space come back");
        std::thread::sleep(Duration::from_millis(10));
    }
    let tail = common::noise(4, 64 << 10);
    write_durably(&file, 2 * MIB, &tail).expect("growth once space is back");
    want.extend_from_slice(&tail);
    assert!(std::fs::read(&file).unwrap() == want);
    mounted.unmount().unwrap();
    repo.commit_all().unwrap();
    assert!(repo.verify().unwrap().damaged.is_empty());
    drop((repo, branch));
    let repo = Repository::open(&data_dir).unwrap();
    let b = repo.get("b").unwrap();
    assert!(b.with_tree_mut(|t| common::contents(t, ino)) == want, "reopened, the branch holds the overwrite and the later growth");
}
