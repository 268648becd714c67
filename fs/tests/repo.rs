//! The repository without FUSE: commits survive a reopen, the intent log replays
//! uncommitted changes, snapshots are isolated, GC frees what deleted branches held.

mod common;

use common::{create_file, write};
use pgbranch_fs::catalog::Kind;
use pgbranch_fs::node::ROOT_INO;
use pgbranch_fs::repo::Repository;
use pgbranch_fs::tree::BlockSource;

const BLOCK: usize = 8192;

fn read(repo: &Repository, branch: &str, name: &str, len: u32) -> Vec<u8> {
    let b = repo.get(branch).unwrap();
    let ino = b.tree().lookup(ROOT_INO, name.as_bytes()).unwrap();
    b.with_tree_mut(|t| t.load_map(ino)).unwrap();
    let tree = b.tree();
    let (n, plan) = tree.read_plan(ino, 0, len).unwrap();
    let mut out = Vec::new();
    for src in plan {
        match src {
            BlockSource::Hole => out.extend_from_slice(&[0u8; BLOCK]),
            BlockSource::Dirty(d) => out.extend_from_slice(&d),
            BlockSource::Stored(h) => out.extend_from_slice(&tree.store().get(&h).unwrap()),
        }
    }
    out.truncate(n as usize);
    out
}

fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)).collect()
}

#[test]
fn committed_and_logged_changes_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    {
        let repo = Repository::open(dir.path()).unwrap();
        repo.create_empty("a", 0, 0).unwrap();
        let ino = create_file(&repo, "a", "f");
        write(&repo, "a", ino, 0, &pattern(1, 3 * BLOCK));
        repo.commit_all().unwrap();
        // Not committed, only logged and synced: the intent log must bring it back.
        write(&repo, "a", ino, BLOCK as u64 + 100, &pattern(2, 500));
        repo.get("a").unwrap().sync().unwrap();
    }
    let repo = Repository::open(dir.path()).unwrap();
    let mut want = pattern(1, 3 * BLOCK);
    want[BLOCK + 100..BLOCK + 600].copy_from_slice(&pattern(2, 500));
    assert_eq!(read(&repo, "a", "f", (3 * BLOCK) as u32), want);
}

#[test]
fn snapshots_do_not_see_later_writes_and_gc_frees_deleted_data() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    repo.create_empty("a", 0, 0).unwrap();
    let ino = create_file(&repo, "a", "f");
    write(&repo, "a", ino, 0, &pattern(3, 64 * BLOCK));
    repo.create_from("snap", "a", Kind::Snapshot).unwrap();
    write(&repo, "a", ino, 0, &pattern(4, 64 * BLOCK));
    assert_eq!(read(&repo, "snap", "f", (64 * BLOCK) as u32), pattern(3, 64 * BLOCK));
    assert_eq!(read(&repo, "a", "f", (64 * BLOCK) as u32), pattern(4, 64 * BLOCK));

    let usage = repo.usage().unwrap();
    let with_snapshot = usage.stored_block_bytes;
    repo.delete("snap").unwrap();
    let stats = repo.gc().unwrap();
    assert!(stats.objects_removed > 0, "the snapshot's own blocks are garbage");
    let after = repo.usage().unwrap().stored_block_bytes;
    assert!(after < with_snapshot, "{after} < {with_snapshot}");
    assert_eq!(read(&repo, "a", "f", (64 * BLOCK) as u32), pattern(4, 64 * BLOCK));
    assert!(repo.verify().unwrap().damaged.is_empty());
}

#[test]
fn zero_blocks_are_holes() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    repo.create_empty("a", 0, 0).unwrap();
    let ino = create_file(&repo, "a", "sparse");
    write(&repo, "a", ino, 100 * BLOCK as u64, &pattern(5, BLOCK));
    write(&repo, "a", ino, 0, &vec![0u8; 10 * BLOCK]);
    repo.commit_all().unwrap();
    let usage = repo.usage().unwrap();
    assert_eq!(usage.branches[0].logical_bytes, BLOCK as u64, "only the one non-zero block is stored");
}

#[test]
fn reset_takes_the_parent_and_never_replays_the_old_log() {
    let dir = tempfile::tempdir().unwrap();
    {
        let repo = Repository::open(dir.path()).unwrap();
        repo.create_empty("main", 0, 0).unwrap();
        let ino = create_file(&repo, "main", "f");
        write(&repo, "main", ino, 0, &pattern(5, 4 * BLOCK));
        repo.create_from("dev", "main", Kind::Branch).unwrap();
        // dev's own changes: one committed, one only logged (fsynced).
        write(&repo, "dev", ino, 0, &pattern(6, BLOCK));
        repo.commit_all().unwrap();
        write(&repo, "dev", ino, 2 * BLOCK as u64, &pattern(7, BLOCK));
        repo.get("dev").unwrap().sync().unwrap();
        let old_id = repo.record("dev").unwrap().id;
        let new = repo.reset("dev").unwrap();
        assert_ne!(new.id, old_id, "a reset branch has a new id, so a new intent log");
        assert!(!dir.path().join("logs").join(old_id.to_string()).exists(), "the old intent log is gone");
        assert_eq!(read(&repo, "dev", "f", (4 * BLOCK) as u32), pattern(5, 4 * BLOCK));
        assert_eq!(repo.record("dev").unwrap().parent.as_deref(), Some("main"));
        // A log no record names (as a crash between the catalog switch and the removal
        // of the old log would leave) is removed at the next open, never replayed.
        std::fs::create_dir_all(dir.path().join("logs").join("999999")).unwrap();
    }
    let repo = Repository::open(dir.path()).unwrap();
    assert_eq!(read(&repo, "dev", "f", (4 * BLOCK) as u32), pattern(5, 4 * BLOCK));
    assert!(!dir.path().join("logs/999999").exists(), "an orphaned intent log is removed on open");
    assert!(repo.reset("main").is_err(), "a branch without a parent cannot be reset");
    assert!(repo.verify().unwrap().damaged.is_empty());
}
