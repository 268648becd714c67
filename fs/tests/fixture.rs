//! A store made by format version 1, committed under `fs/tests/fixtures/store-v1/`:
//! every later pgbranch must still open it, verify it clean and read the same bytes.
//!
//! The fixture holds branch `main` (a directory, a multi-block file, a file with a
//! hole, a symlink, and changes only in its intent log, not yet folded into its root)
//! and snapshot `snap` (main before those changes). Regenerate it only when the
//! format version changes (then keep the old fixture too):
//! `cargo test --release -p pgbranch-fs --test fixture -- --ignored generate`.

mod common;

use std::path::{Path, PathBuf};

use common::{contents, pattern, NOW};
use pgbranch_fs::catalog::Kind;
use pgbranch_fs::node::ROOT_INO;
use pgbranch_fs::op::{NewKind, Op};
use pgbranch_fs::repo::Repository;
use pgbranch_fs::tree::Content;

const BLOCK: usize = 8192;

fn fixture_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/store-v1")
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else if let Some(name) = e.file_name().to_str().and_then(|n| n.strip_suffix(".lz4")) {
            let bytes = lz4_flex::block::decompress_size_prepended(&std::fs::read(e.path()).unwrap()).unwrap();
            std::fs::write(to.join(name), bytes).unwrap();
        } else {
            std::fs::copy(e.path(), target).unwrap();
        }
    }
}

/// What the fixture's files hold, by value.
fn big_committed() -> Vec<u8> {
    pattern(1, 3 * BLOCK + 1000)
}
fn big_logged() -> Vec<u8> {
    let mut v = big_committed();
    v[100..BLOCK + 100].copy_from_slice(&pattern(9, BLOCK));
    v
}
fn sparse() -> Vec<u8> {
    let mut v = vec![0u8; 3 * BLOCK];
    v[..BLOCK].copy_from_slice(&pattern(2, BLOCK));
    v[2 * BLOCK..].copy_from_slice(&pattern(3, BLOCK));
    v
}
fn later() -> Vec<u8> {
    pattern(4, 5000)
}

fn make(b: &pgbranch_fs::branch::Branch, parent: u64, name: &str, kind: NewKind, mode: u32) -> u64 {
    b.update(|t| {
        let ino = t.next_ino();
        Ok((Op::Create { parent, name: name.into(), ino, kind, mode, uid: 0, gid: 0, rdev: 0, now: NOW }, ino))
    })
    .unwrap()
}

fn write(b: &pgbranch_fs::branch::Branch, ino: u64, offset: u64, data: Vec<u8>) {
    b.update(|_| Ok((Op::Write { ino, offset, data, now: NOW }, ()))).unwrap();
}

#[test]
#[ignore = "regenerates the committed fixture; run only when adding a format version"]
fn generate_store_v1_fixture() {
    let dir = fixture_dir();
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap();
    }
    let repo = Repository::open(&dir).unwrap();
    let main = repo.create_empty("main", 0, 0).unwrap();
    let d = make(&main, ROOT_INO, "d", NewKind::Dir, libc::S_IFDIR | 0o755);
    let big = make(&main, d, "big", NewKind::File, libc::S_IFREG | 0o644);
    write(&main, big, 0, big_committed());
    let sp = make(&main, ROOT_INO, "sparse", NewKind::File, libc::S_IFREG | 0o600);
    write(&main, sp, 0, sparse()[..BLOCK].to_vec());
    write(&main, sp, 2 * BLOCK as u64, sparse()[2 * BLOCK..].to_vec());
    make(&main, ROOT_INO, "link", NewKind::Symlink(b"d/big".to_vec()), libc::S_IFLNK | 0o777);
    repo.create_from("snap", "main", Kind::Snapshot).unwrap();
    // Logged and synced, never committed: opening the fixture must replay these.
    write(&main, big, 100, pattern(9, BLOCK));
    let l = make(&main, ROOT_INO, "later", NewKind::File, libc::S_IFREG | 0o600);
    write(&main, l, 0, later());
    main.sync().unwrap();
    drop((main, repo));
    // redb preallocates megabytes of zeros: the fixture keeps its files compacted and
    // lz4-compressed (a few KiB each); `copy_dir` restores them.
    for db in ["index.redb", "catalog.redb"] {
        let path = dir.join(db);
        redb::Database::open(&path).unwrap().compact().unwrap();
        let packed = lz4_flex::block::compress_prepend_size(&std::fs::read(&path).unwrap());
        std::fs::write(dir.join(format!("{db}.lz4")), packed).unwrap();
        std::fs::remove_file(path).unwrap();
    }
}

fn file(repo: &Repository, branch: &str, path: &[&str]) -> Vec<u8> {
    let b = repo.get(branch).unwrap();
    let mut ino = ROOT_INO;
    for name in path {
        ino = b.tree().lookup(ino, name.as_bytes()).unwrap_or_else(|e| panic!("{branch}: {path:?}: {e:?}"));
    }
    b.with_tree_mut(|t| contents(t, ino))
}

#[test]
fn the_v1_fixture_opens_verifies_and_reads_back() {
    let copy = tempfile::tempdir().unwrap();
    copy_dir(&fixture_dir(), copy.path());
    let repo = Repository::open(copy.path()).unwrap();

    let kinds: Vec<(String, Kind)> = repo.records().unwrap().into_iter().map(|r| (r.name, r.kind)).collect();
    assert_eq!(kinds, vec![("main".to_string(), Kind::Branch), ("snap".to_string(), Kind::Snapshot)]);
    assert_eq!(repo.record("snap").unwrap().parent.as_deref(), Some("main"));

    // main: its committed root plus the replayed intent log.
    assert_eq!(file(&repo, "main", &["d", "big"]), big_logged());
    assert_eq!(file(&repo, "main", &["sparse"]), sparse());
    assert_eq!(file(&repo, "main", &["later"]), later());
    // snap: main as it was when the snapshot was taken.
    assert_eq!(file(&repo, "snap", &["d", "big"]), big_committed());
    assert_eq!(file(&repo, "snap", &["sparse"]), sparse());
    assert!(repo.get("snap").unwrap().tree().lookup(ROOT_INO, b"later").is_err());

    for branch in ["main", "snap"] {
        let b = repo.get(branch).unwrap();
        let tree = b.tree();
        let link = tree.lookup(ROOT_INO, b"link").unwrap();
        assert!(matches!(&tree.inode(link).unwrap().content, Content::Symlink { target } if target == b"d/big"));
        let d = tree.lookup(ROOT_INO, b"d").unwrap();
        assert!(tree.inode(d).unwrap().is_dir());
        let sp = tree.lookup(ROOT_INO, b"sparse").unwrap();
        drop(tree);
        // The hole is not stored: two of the three blocks are.
        b.with_tree_mut(|t| t.load_map(sp)).unwrap();
        assert_eq!(b.tree().inode(sp).unwrap().stored_blocks(), 2, "{branch}");
    }

    let report = repo.verify().unwrap();
    assert!(report.damaged.is_empty(), "{:?}", report.damaged);
    assert!(report.objects_checked > 10, "{}", report.objects_checked);
    // verify committed main's logged changes; they read back the same afterwards.
    drop(repo);
    let repo = Repository::open(copy.path()).unwrap();
    assert_eq!(file(&repo, "main", &["d", "big"]), big_logged());
    assert_eq!(file(&repo, "main", &["later"]), later());
}
