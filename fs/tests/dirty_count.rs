//! The dirty block count of a branch is exactly what its block maps hold, after every
//! kind of change (write, truncate, unlink, rename over, replay), and a change that
//! fails reading the store changes nothing, the count included.

mod common;

use std::sync::Arc;

use common::*;
use pgbranch_fs::node::ROOT_INO;
use pgbranch_fs::repo::Repository;
use pgbranch_fs::store::ObjectStore;
use pgbranch_fs::tree::Errno;

const MIB: usize = 1 << 20;

fn update(repo: &Repository, op: pgbranch_fs::op::Op) {
    repo.get("a").unwrap().update(|_| Ok((op, ()))).unwrap();
}

fn branch_counts(repo: &Repository) -> (u64, u64) {
    let b = repo.get("a").unwrap();
    let t = b.tree();
    (t.dirty_blocks(), t.dirty_blocks_in_maps())
}

/// Issue 9: 50 x (write 1 MiB, truncate to 0) left ~22 MiB counted dirty for good.
#[test]
fn write_then_truncate_fifty_times_leaves_nothing_dirty() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    repo.create_empty("a", 0, 0).unwrap();
    let ino = repo
        .get("a")
        .unwrap()
        .update(|t| {
            let ino = t.next_ino();
            let op = pgbranch_fs::op::Op::Create {
                parent: ROOT_INO,
                name: b"f".to_vec(),
                ino,
                kind: pgbranch_fs::op::NewKind::File,
                mode: libc::S_IFREG | 0o600,
                uid: 0,
                gid: 0,
                rdev: 0,
                now: NOW,
            };
            Ok((op, ino))
        })
        .unwrap();
    for round in 0..50u64 {
        update(&repo, write_op(ino, 0, &pattern(round, MIB)));
        assert_eq!(branch_counts(&repo), ((MIB / BLOCK) as u64, (MIB / BLOCK) as u64));
        if round % 7 == 3 {
            // Commit while the file is full: the truncate then drops stored blocks.
            repo.commit_all().unwrap();
            assert_eq!(branch_counts(&repo), (0, 0));
        }
        update(&repo, truncate_op(ino, 0));
        assert_eq!(branch_counts(&repo), (0, 0), "round {round}");
    }
    repo.commit_all().unwrap();
    assert_eq!(branch_counts(&repo), (0, 0));
    assert_eq!(repo.get("a").unwrap().dirty_blocks(), 0);
}

#[test]
fn truncate_into_a_block_counts_the_partial_block_once() {
    let store: Arc<dyn ObjectStore> = FaultyStore::temp();
    let mut t = empty_tree(store);
    let ino = create(&mut t, "f");
    t.apply(&write_op(ino, 0, &pattern(1, 10 * BLOCK))).unwrap();
    assert_count(&t, 10);
    t.apply(&truncate_op(ino, 3 * BLOCK as u64 + 5)).unwrap();
    assert_count(&t, 4);
    t.commit().unwrap();
    assert_count(&t, 0);
    // A stored block cut in part becomes dirty again, once.
    t.apply(&truncate_op(ino, 2 * BLOCK as u64 + 9)).unwrap();
    assert_count(&t, 1);
    t.apply(&truncate_op(ino, 6 * BLOCK as u64)).unwrap();
    assert_count(&t, 1);
    let mut want = pattern(1, 10 * BLOCK);
    want.truncate(2 * BLOCK + 9);
    want.resize(6 * BLOCK, 0);
    assert_eq!(contents(&mut t, ino), want);
    t.commit().unwrap();
    assert_count(&t, 0);
    assert_eq!(contents(&mut t, ino), want);
}

#[test]
fn unlink_drops_the_count_now_or_at_last_close() {
    let store: Arc<dyn ObjectStore> = FaultyStore::temp();
    let mut t = empty_tree(store);
    let a = create(&mut t, "a");
    let b = create(&mut t, "b");
    t.apply(&write_op(a, 0, &pattern(1, 3 * BLOCK))).unwrap();
    t.apply(&write_op(b, 100, &pattern(2, 2 * BLOCK))).unwrap();
    assert_count(&t, 6);
    t.apply(&unlink_op("a")).unwrap();
    assert_count(&t, 3);
    // Unlinked while open: its blocks stay (readable through the handle) until closed.
    t.open(b);
    t.apply(&unlink_op("b")).unwrap();
    assert_count(&t, 3);
    t.apply(&write_op(b, 0, &pattern(3, BLOCK))).unwrap();
    assert_count(&t, 3);
    t.commit().unwrap();
    assert_count(&t, 0);
    t.apply(&write_op(b, 0, &pattern(4, 2 * BLOCK))).unwrap();
    assert_count(&t, 2);
    t.release(b);
    assert_count(&t, 0);
    t.commit().unwrap();
    assert_count(&t, 0);
}

#[test]
fn rename_over_a_dirty_file_drops_its_count() {
    let store: Arc<dyn ObjectStore> = FaultyStore::temp();
    let mut t = empty_tree(store);
    let a = create(&mut t, "a");
    let b = create(&mut t, "b");
    let c = create(&mut t, "c");
    t.apply(&write_op(a, 0, &pattern(1, 2 * BLOCK))).unwrap();
    t.apply(&write_op(b, 0, &pattern(2, 5 * BLOCK))).unwrap();
    t.apply(&write_op(c, 0, &pattern(3, 4 * BLOCK))).unwrap();
    assert_count(&t, 11);
    t.apply(&rename_op("a", "b")).unwrap();
    assert_count(&t, 6);
    assert_eq!(t.lookup(ROOT_INO, b"b").unwrap(), a);
    // Over an open file: counted until its last handle closes.
    t.open(c);
    t.apply(&rename_op("b", "c")).unwrap();
    assert_count(&t, 6);
    t.release(c);
    assert_count(&t, 2);
    t.commit().unwrap();
    assert_count(&t, 0);
    assert_eq!(contents(&mut t, a), pattern(1, 2 * BLOCK));
}

#[test]
fn replaying_ops_on_the_committed_root_gives_the_same_count() {
    let store: Arc<dyn ObjectStore> = FaultyStore::temp();
    let mut t = empty_tree(store.clone());
    let a = create(&mut t, "a");
    t.apply(&write_op(a, 0, &pattern(1, 4 * BLOCK))).unwrap();
    let root = t.commit().unwrap();
    let ops = [
        write_op(a, BLOCK as u64 / 2, &pattern(2, 2 * BLOCK)),
        truncate_op(a, BLOCK as u64 + 1),
        write_op(a, 9 * BLOCK as u64, &pattern(3, 10)),
    ];
    for op in &ops {
        t.apply(op).unwrap();
    }
    let mut replayed = pgbranch_fs::tree::Tree::load(store, &root).unwrap();
    for op in &ops {
        replayed.apply(op).unwrap();
    }
    assert_count(&t, 3);
    assert_count(&replayed, 3);
    assert_eq!(contents(&mut replayed, a), contents(&mut t, a));
}

/// Fixture for the failure cases: a committed 3-block file whose last block cannot be
/// read, with block 0 already dirty.
fn tree_with_unreadable_block() -> (Arc<FaultyStore>, pgbranch_fs::tree::Tree, u64, Vec<u8>) {
    let faulty = FaultyStore::temp();
    let store: Arc<dyn ObjectStore> = faulty.clone();
    let mut t = empty_tree(store);
    let ino = create(&mut t, "f");
    t.apply(&write_op(ino, 0, &pattern(1, 3 * BLOCK))).unwrap();
    t.commit().unwrap();
    t.apply(&write_op(ino, 10, b"dirty")).unwrap();
    let mut want = pattern(1, 3 * BLOCK);
    want[10..15].copy_from_slice(b"dirty");
    let bad = stored_hash(&mut t, ino, 2);
    faulty.fail_get(bad);
    assert_count(&t, 1);
    (faulty, t, ino, want)
}

#[test]
fn a_write_failing_on_a_later_partial_block_changes_nothing() {
    let (faulty, mut t, ino, want) = tree_with_unreadable_block();
    // Partial in block 0 (dirty), whole block 1 (stored), partial in block 2 (unreadable).
    let op = write_op(ino, 100, &pattern(9, 2 * BLOCK));
    assert_eq!(t.apply(&op), Err(Errno(libc::EIO)));
    assert_count(&t, 1);
    // Stored block 1 and the dirty block 0 keep their bytes.
    faulty.heal();
    assert_eq!(contents(&mut t, ino), want);
    t.commit().unwrap();
    assert_count(&t, 0);
    assert_eq!(contents(&mut t, ino), want);
    // And once the store reads again the same write goes through whole.
    t.apply(&op).unwrap();
    assert_count(&t, 3);
    let mut after = want.clone();
    after[100..100 + 2 * BLOCK].copy_from_slice(&pattern(9, 2 * BLOCK));
    assert_eq!(contents(&mut t, ino), after);
}

#[test]
fn a_truncate_or_zero_range_failing_on_its_partial_block_changes_nothing() {
    let (faulty, mut t, ino, want) = tree_with_unreadable_block();
    assert_eq!(t.apply(&truncate_op(ino, 2 * BLOCK as u64 + 7)), Err(Errno(libc::EIO)));
    assert_count(&t, 1);
    let zero = pgbranch_fs::op::Op::Fallocate { ino, offset: 50, len: 2 * BLOCK as u64 + 50, mode: libc::FALLOC_FL_ZERO_RANGE, now: NOW };
    assert_eq!(t.apply(&zero), Err(Errno(libc::EIO)));
    assert_count(&t, 1);
    assert_eq!(t.inode(ino).unwrap().size(), 3 * BLOCK as u64);
    faulty.heal();
    assert_eq!(contents(&mut t, ino), want);
    t.apply(&zero).unwrap();
    assert_count(&t, 2);
    let mut after = want.clone();
    after[50..2 * BLOCK + 100].fill(0);
    assert_eq!(contents(&mut t, ino), after);
    t.commit().unwrap();
    assert_count(&t, 0);
}
