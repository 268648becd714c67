//! Large writes below FUSE: their whole blocks go straight to the store and the intent
//! log holds only hashes; a sync makes both durable; a replay that meets a block the
//! store lost (never flushed, so never acknowledged) ends the log there and keeps what
//! is written after; GC keeps blocks that only an uncommitted tree names.

mod common;

use common::{contents, create_file, noise};
use pgbranch_fs::branch::BULK_MIN_BLOCKS;
use pgbranch_fs::intent_log;
use pgbranch_fs::node::ROOT_INO;
use pgbranch_fs::op::Op;
use pgbranch_fs::repo::Repository;

use common::BLOCK;

fn read(repo: &Repository, branch: &str, name: &str) -> Vec<u8> {
    let b = repo.get(branch).unwrap();
    let ino = b.tree().lookup(ROOT_INO, name.as_bytes()).unwrap();
    b.with_tree_mut(|t| contents(t, ino))
}

fn log_ops(repo: &Repository, dir: &std::path::Path, branch: &str) -> Vec<Op> {
    let id = repo.get(branch).unwrap().id;
    intent_log::read_ops(&dir.join("logs").join(id.to_string()), 0).unwrap()
}

fn write(repo: &Repository, branch: &str, ino: u64, offset: u64, data: &[u8]) {
    repo.get(branch).unwrap().write(ino, offset, data, |_| Ok(())).unwrap();
}

/// The file's bytes after `data` was written at `offset` of an empty file.
fn written(offset: u64, data: &[u8]) -> Vec<u8> {
    let mut want = vec![0u8; offset as usize];
    want.extend_from_slice(data);
    want
}

/// An unaligned write: a 5000-byte head, 39 whole blocks (one of zeros), a tail.
fn bulk_data(seed: u64) -> (u64, Vec<u8>) {
    let mut data = noise(seed, 40 * BLOCK + 3000);
    data[5000 + 10 * BLOCK..5000 + 11 * BLOCK].fill(0);
    (BLOCK as u64 * 3 - 5000, data)
}

#[test]
fn a_large_write_logs_hashes_and_survives_a_reopen_after_sync() {
    let dir = tempfile::tempdir().unwrap();
    let (offset, data) = bulk_data(1);
    {
        let repo = Repository::open(dir.path()).unwrap();
        repo.create_empty("a", 0, 0).unwrap();
        let ino = create_file(&repo, "a", "f");
        write(&repo, "a", ino, offset, &data);
        // A small write is logged whole, as before.
        write(&repo, "a", ino, 100, b"small");
        repo.get("a").unwrap().sync().unwrap();
        let ops = log_ops(&repo, dir.path(), "a");
        let Some(Op::WriteBlocks { head, blocks, tail, .. }) = ops.iter().find(|op| matches!(op, Op::WriteBlocks { .. })) else {
            panic!("no write-blocks op in the log: {ops:?}")
        };
        assert_eq!((head.len(), blocks.len(), tail.len()), (5000, 39, 40 * BLOCK + 3000 - 5000 - 39 * BLOCK));
        assert!(blocks.len() >= BULK_MIN_BLOCKS);
        assert_eq!(blocks.iter().filter(|b| b.is_none()).count(), 1, "the zero block is a hole, not stored");
        assert!(ops.iter().any(|op| matches!(op, Op::Write { data, .. } if data == b"small")));
        // Only the small write's block and the partial head and tail blocks are in memory.
        assert_eq!(repo.get("a").unwrap().dirty_blocks(), 3);
    }
    let repo = Repository::open(dir.path()).unwrap();
    let mut want = written(offset, &data);
    want[100..105].copy_from_slice(b"small");
    assert_eq!(read(&repo, "a", "f"), want);
    repo.commit_all().unwrap();
    drop(repo);
    let repo = Repository::open(dir.path()).unwrap();
    assert_eq!(read(&repo, "a", "f"), want);
    assert!(repo.verify().unwrap().damaged.is_empty());
}

/// Every pack file of the store in `dir`, with its length.
fn pack_sizes(dir: &std::path::Path) -> Vec<(std::path::PathBuf, u64)> {
    std::fs::read_dir(dir.join("packs")).unwrap().map(|e| e.unwrap().path()).map(|p| (p.clone(), p.metadata().unwrap().len())).collect()
}

#[test]
fn a_replay_that_meets_a_lost_block_ends_the_log_there_and_keeps_later_writes() {
    let dir = tempfile::tempdir().unwrap();
    let (offset, data) = bulk_data(2);
    {
        let repo = Repository::open(dir.path()).unwrap();
        repo.create_empty("a", 0, 0).unwrap();
        let ino = create_file(&repo, "a", "f");
        write(&repo, "a", ino, 0, b"before");
        repo.get("a").unwrap().sync().unwrap();
        let synced = pack_sizes(dir.path());
        // Never synced: the log's record is in the (still cached) segment file, and
        // the packs are cut back below to what the last sync made durable, as after a
        // crash in which the log's pages reached the disk and the pack's did not.
        write(&repo, "a", ino, offset, &data);
        write(&repo, "a", ino, 6, b" and after, unsynced");
        drop(repo);
        for (path, _) in pack_sizes(dir.path()) {
            let keep = synced.iter().find(|(p, _)| *p == path).map_or(0, |(_, l)| *l);
            std::fs::OpenOptions::new().write(true).open(&path).unwrap().set_len(keep).unwrap();
        }
    }
    {
        let repo = Repository::open(dir.path()).unwrap();
        assert_eq!(read(&repo, "a", "f"), b"before");
        let ino = repo.get("a").unwrap().tree().lookup(ROOT_INO, b"f").unwrap();
        write(&repo, "a", ino, 6, b", then this");
        repo.get("a").unwrap().sync().unwrap();
    }
    // Without the cut, this replay would stop again at the lost block and drop the
    // acknowledged write made after the first reopen.
    let repo = Repository::open(dir.path()).unwrap();
    assert_eq!(read(&repo, "a", "f"), b"before, then this");
}

#[test]
fn gc_keeps_blocks_that_only_an_uncommitted_large_write_names() {
    let dir = tempfile::tempdir().unwrap();
    let (offset, data) = bulk_data(3);
    let repo = Repository::open(dir.path()).unwrap();
    repo.create_empty("a", 0, 0).unwrap();
    let ino = create_file(&repo, "a", "f");
    write(&repo, "a", ino, offset, &data);
    repo.get("a").unwrap().sync().unwrap();
    // Collects without committing first: the blocks are in sealed packs and no head
    // reaches them.
    let report = repo.auto_gc().unwrap().expect("the first automatic pass collects");
    assert_eq!(report.objects_removed, 0, "{report:?}");
    let want = written(offset, &data);
    assert_eq!(read(&repo, "a", "f"), want);
    repo.commit_all().unwrap();
    repo.gc().unwrap();
    drop(repo);
    let repo = Repository::open(dir.path()).unwrap();
    assert_eq!(read(&repo, "a", "f"), want);
    assert!(repo.verify().unwrap().damaged.is_empty());
}
