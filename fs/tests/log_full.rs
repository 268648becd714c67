//! A branch whose intent log is on a full filesystem: a write gets ENOSPC and changes
//! nothing (not the tree, not the log), the branch keeps working once space is freed,
//! an op that fails to apply is taken back out of the log, and a reopen replays
//! exactly what the writers were told succeeded.
//!
//! The full filesystem is a real one: a tiny tmpfs mounted for the test (root only;
//! without root the test says so and passes vacuously).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use common::tinyfs::TinyFs;
use common::*;
use pgbranch_fs::branch::Branch;
use pgbranch_fs::catalog::{BranchRecord, Kind};
use pgbranch_fs::intent_log;
use pgbranch_fs::node::{Time, ROOT_INO};
use pgbranch_fs::op::{NewKind, Op};
use pgbranch_fs::store::{LocalStore, ObjectStore};
use pgbranch_fs::tree::Errno;

fn open_branch(store: &Arc<LocalStore>, root: pgbranch_fs::block::Hash, log_dir: &Path) -> Branch {
    let record = BranchRecord { name: "a".into(), id: 1, kind: Kind::Branch, root, log_seq: 1, parent: None, created_unix: 0 };
    Branch::open(store.clone() as Arc<dyn ObjectStore>, &record, log_dir).unwrap()
}

fn log_segment(dir: &Path) -> PathBuf {
    let segs = intent_log::list_segments(dir).unwrap();
    assert_eq!(segs.len(), 1, "one segment: {segs:?}");
    dir.join(format!("{:016}.log", segs[0]))
}

/// Bytes a segment holding these ops takes: its header, then each record.
fn record_bytes(ops: &[Op]) -> u64 {
    pgbranch_fs::format::log::SEGMENT_HEADER_LEN
        + ops.iter().map(|op| pgbranch_fs::format::log::encode_record(1, 0, op).unwrap().len() as u64).sum::<u64>()
}

#[test]
fn a_full_log_disk_refuses_the_write_with_enospc_and_changes_nothing() {
    let Some(tiny) = TinyFs::mount(512 << 10) else { return };
    let log_dir = tiny.path().join("log");
    let store_dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalStore::open(store_dir.path()).unwrap());
    let root = empty_tree(store.clone()).commit().unwrap();
    store.flush().unwrap();
    // Space to free later, so the disk can stop being full.
    std::fs::write(tiny.path().join("ballast"), vec![7u8; 64 << 10]).unwrap();

    let branch = open_branch(&store, root, &log_dir);
    let ino = branch
        .update(|t| {
            let ino = t.next_ino();
            let kind = NewKind::File;
            Ok((
                Op::Create {
                    parent: ROOT_INO,
                    name: b"f".to_vec(),
                    ino,
                    kind,
                    mode: libc::S_IFREG | 0o600,
                    uid: 0,
                    gid: 0,
                    rdev: 0,
                    now: NOW,
                },
                ino,
            ))
        })
        .unwrap();
    let mut model: Vec<u8> = Vec::new();
    let failed_at = loop {
        let block = pattern(model.len() as u64, BLOCK);
        let offset = model.len() as u64;
        match branch.update(|_| Ok((write_op(ino, offset, &block), ()))) {
            Ok(()) => model.extend_from_slice(&block),
            Err(e) => {
                assert_eq!(e, Errno(libc::ENOSPC), "a full log disk answers ENOSPC, not {e:?}");
                break offset;
            }
        }
        assert!(model.len() < 1 << 20, "the 512 KiB log disk never filled");
    };
    assert!(failed_at > 0, "some writes fit before the disk filled");
    // The failed write changed nothing: not the file, not the log (no torn tail).
    assert_eq!(branch.tree().inode(ino).unwrap().size(), model.len() as u64);
    branch.with_tree_mut(|t| assert_eq!(contents(t, ino), model));
    let ops = intent_log::read_ops(&log_dir, 1).unwrap();
    assert_eq!(ops.len(), 1 + model.len() / BLOCK, "the log holds the create and each acknowledged write");
    assert_eq!(std::fs::metadata(log_segment(&log_dir)).unwrap().len(), record_bytes(&ops), "the failed append was cut back");

    // Space freed: the same branch takes the write again (it did not turn read-only).
    std::fs::remove_file(tiny.path().join("ballast")).unwrap();
    let block = pattern(failed_at, BLOCK);
    branch.update(|_| Ok((write_op(ino, failed_at, &block), ()))).unwrap();
    model.extend_from_slice(&block);
    branch.sync().unwrap();

    // An op that fails to apply is not left in the log.
    let missing = Op::Unlink { parent: ROOT_INO, name: b"missing".to_vec(), dir: false, now: Time::now() };
    assert_eq!(branch.update(|_| Ok((missing, ()))), Err(Errno(libc::ENOENT)));
    let tail = pattern(1, 100);
    let offset = model.len() as u64;
    branch.update(|_| Ok((write_op(ino, offset, &tail), ()))).unwrap();
    model.extend_from_slice(&tail);
    branch.sync().unwrap();
    let ops = intent_log::read_ops(&log_dir, 1).unwrap();
    assert!(ops.iter().all(|op| !matches!(op, Op::Unlink { .. })), "the failed unlink was taken back");
    assert_eq!(ops.len(), 1 + model.len().div_ceil(BLOCK));

    // A reopen replays exactly what succeeded.
    drop(branch);
    let branch = open_branch(&store, root, &log_dir);
    branch.with_tree_mut(|t| assert_eq!(contents(t, ino), model));
}
