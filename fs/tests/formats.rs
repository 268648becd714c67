//! Opening a store checks its formats: a newer or unversioned store, a pack with a bad
//! magic, an intent-log record whose crc holds but whose body does not decode, a bad
//! segment header and a catalog record of an unknown version are each refused with a
//! message naming what and where, never silently read as something else.

mod common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use common::{create_file, pattern, write};
use pgbranch_fs::format::store_file::{write_format_file, FORMAT_FILE, STORE_FORMAT_VERSION};
use pgbranch_fs::repo::Repository;

const BLOCK: usize = 8192;

/// A store with branch `a` holding committed data in pack 1 and, when `logged`, one
/// synced write in its intent log.
fn store(logged: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    repo.create_empty("a", 0, 0).unwrap();
    let ino = create_file(&repo, "a", "f");
    write(&repo, "a", ino, 0, &pattern(1, 2 * BLOCK));
    repo.commit_all().unwrap();
    if logged {
        write(&repo, "a", ino, 0, &pattern(2, 100));
        repo.get("a").unwrap().sync().unwrap();
    }
    dir
}

fn open_err(dir: &Path) -> String {
    match Repository::open(dir) {
        Ok(_) => panic!("opening {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

/// The intent-log segment of branch `a` that holds records, and its number.
fn live_segment(dir: &Path) -> (PathBuf, u64) {
    let logs = dir.join("logs");
    let branch_dir = std::fs::read_dir(&logs).unwrap().next().unwrap().unwrap().path();
    let mut segs: Vec<(PathBuf, u64)> = std::fs::read_dir(&branch_dir)
        .unwrap()
        .filter_map(|e| {
            let p = e.unwrap().path();
            let seq = p.file_name()?.to_str()?.strip_suffix(".log")?.parse().ok()?;
            Some((p, seq))
        })
        .collect();
    segs.sort_by_key(|(_, s)| *s);
    segs.pop().unwrap()
}

#[test]
fn a_store_of_a_newer_format_is_refused() {
    let dir = store(false);
    write_format_file(dir.path(), STORE_FORMAT_VERSION + 1).unwrap();
    let err = open_err(dir.path());
    let want = format!(
        "store format {} at {}; this pgbranch reads up to {}: upgrade pgbranch",
        STORE_FORMAT_VERSION + 1,
        dir.path().join(FORMAT_FILE).display(),
        STORE_FORMAT_VERSION
    );
    assert_eq!(err, want);
}

/// A format-1 store (its index without the indexed-up-to row) opens, keeps its data,
/// and is upgraded to the current format.
#[test]
fn a_store_of_format_1_is_upgraded_on_open() {
    let dir = store(false);
    let index = redb::Database::open(dir.path().join("index.redb")).unwrap();
    let txn = index.begin_write().unwrap();
    assert!(txn.delete_table(redb::TableDefinition::<u8, (u32, u64)>::new("indexed_upto")).unwrap());
    txn.commit().unwrap();
    drop(index);
    write_format_file(dir.path(), 1).unwrap();

    let repo = Repository::open(dir.path()).unwrap();
    let data = repo.get("a").unwrap().with_tree_mut(|t| {
        let ino = t.lookup(pgbranch_fs::node::ROOT_INO, b"f").unwrap();
        common::contents(t, ino)
    });
    assert_eq!(data, pattern(1, 2 * BLOCK));
    drop(repo);
    let bytes = std::fs::read(dir.path().join(FORMAT_FILE)).unwrap();
    assert_eq!(u32::from_le_bytes(bytes[8..12].try_into().unwrap()), STORE_FORMAT_VERSION);
}

#[test]
fn a_store_made_before_format_versioning_is_refused() {
    let dir = store(false);
    std::fs::remove_file(dir.path().join(FORMAT_FILE)).unwrap();
    let err = open_err(dir.path());
    assert!(err.contains("predates format versioning") && err.contains("pgbranch clone"), "{err}");
    // Refusing writes nothing: the store stays as it was.
    assert!(!dir.path().join(FORMAT_FILE).exists());
}

#[test]
fn a_damaged_format_file_is_refused() {
    let dir = store(false);
    let path = dir.path().join(FORMAT_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[9] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let err = open_err(dir.path());
    assert!(err.contains(&path.display().to_string()) && err.contains("checksum"), "{err}");
}

#[test]
fn a_pack_with_a_bad_magic_is_refused() {
    let dir = store(false);
    let pack = dir.path().join("packs/pack-00000001.pk");
    OpenOptions::new().write(true).open(&pack).unwrap().write_all_at(b"X", 0).unwrap();
    let err = open_err(dir.path());
    assert!(err.contains(&pack.display().to_string()) && err.contains("bad magic"), "{err}");
}

#[test]
fn a_log_record_with_a_valid_crc_that_does_not_decode_names_file_and_offset() {
    let dir = store(true);
    let (path, seq) = live_segment(dir.path());
    let offset = std::fs::metadata(&path).unwrap().len();
    // A well-framed record (its crc holds) whose op tag no pgbranch has written.
    let body = [0x7fu8, 1, 2, 3];
    let durable = 0u64;
    let mut crc = crc32fast::Hasher::new();
    crc.update(&seq.to_le_bytes());
    crc.update(&durable.to_le_bytes());
    crc.update(&body);
    let mut record = (body.len() as u32).to_le_bytes().to_vec();
    record.extend_from_slice(&crc.finalize().to_le_bytes());
    record.extend_from_slice(&durable.to_le_bytes());
    record.extend_from_slice(&body);
    OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&record, offset).unwrap();
    let err = open_err(dir.path());
    let want = format!("intent log {} is damaged at byte {offset}: op is malformed: unknown op tag 127", path.display());
    assert!(err.contains(&want) && err.contains("cannot open branch a"), "{err}");
}

#[test]
fn a_damaged_log_record_that_had_been_fsynced_is_refused_not_dropped_with_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    {
        let repo = Repository::open(dir.path()).unwrap();
        let b = repo.create_empty("a", 0, 0).unwrap();
        repo.commit_all().unwrap();
        let ino = create_file(&repo, "a", "f");
        write(&repo, "a", ino, 0, &pattern(2, 100));
        b.sync().unwrap();
        // A write after the first one's fsync returned: its record says so.
        write(&repo, "a", ino, BLOCK as u64, &pattern(3, 100));
        b.sync().unwrap();
    }
    let (path, _) = live_segment(dir.path());
    let first = pgbranch_fs::format::log::SEGMENT_HEADER_LEN;
    // Bit rot in the first record's body (the create op's name).
    OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&[0xee], first + 20).unwrap();
    let err = open_err(dir.path());
    assert!(err.contains(&format!("intent log {} is damaged at byte {first}", path.display())), "{err}");
    assert!(err.contains("appended after this one was durable"), "{err}");
}

#[test]
fn a_torn_log_tail_is_a_normal_end() {
    let dir = store(true);
    let (path, _) = live_segment(dir.path());
    let offset = std::fs::metadata(&path).unwrap().len();
    // A record cut short by a crash: its length runs past the end of the file.
    OpenOptions::new().write(true).open(&path).unwrap().write_all_at(&[200, 0, 0, 0, 1, 2], offset).unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    let b = repo.get("a").unwrap();
    let ino = b.tree().lookup(pgbranch_fs::node::ROOT_INO, b"f").unwrap();
    let got = b.with_tree_mut(|t| common::contents(t, ino));
    assert_eq!(got[..100], pattern(2, 100)[..], "the synced write before the torn record replays");
}

#[test]
fn a_damaged_segment_header_names_file_and_offset() {
    let dir = store(true);
    let (path, _) = live_segment(dir.path());
    OpenOptions::new().write(true).open(&path).unwrap().write_all_at(b"Z", 0).unwrap();
    let err = open_err(dir.path());
    assert!(err.contains(&format!("intent log {} is damaged at byte 0", path.display())), "{err}");
}

#[test]
fn a_catalog_record_of_an_unknown_version_is_an_error() {
    use pgbranch_fs::format::catalog::BRANCHES;
    use redb::ReadableTable;
    let dir = store(false);
    {
        let db = redb::Database::open(dir.path().join("catalog.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut table = txn.open_table(BRANCHES).unwrap();
            let mut bytes = table.get("a").unwrap().unwrap().value().to_vec();
            bytes[0] = 2;
            table.insert("a", bytes.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let err = open_err(dir.path());
    assert!(err.contains("the record of 'a' in catalog.redb: catalog record format version 2; this pgbranch reads up to 1"), "{err}");
}
