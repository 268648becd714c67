//! The object index on a full filesystem (`index.redb` on a tiny tmpfs; the packs on the
//! normal disk, through a symlink): redb refuses every later operation on a database
//! once one write to its file has failed, so without a reopen one ENOSPC during an
//! index commit would leave the store unreadable until the daemon restarted. Flushes
//! write only packs (their entries wait in memory for a merge), so here the merge that
//! GC's seal makes is what fails: an error that changes nothing, while reads and
//! flushes keep working, and once space is freed the same store (not reopened) merges
//! and reads every object.

mod common;

use common::noise;
use common::tinyfs::TinyFs;
use pgbranch_fs::block::Hash;
use pgbranch_fs::gc::GcStore;
use pgbranch_fs::store::{LocalStore, ObjectStore};

#[test]
fn a_full_index_disk_fails_a_flush_and_the_store_recovers_once_space_is_freed() {
    let packs = tempfile::tempdir().unwrap();
    let Some(tiny) = TinyFs::mount(4 << 20) else { return };
    std::os::unix::fs::symlink(packs.path(), tiny.path().join("packs")).unwrap();
    let store = LocalStore::open(tiny.path()).unwrap();

    // Flush and merge (seal) small batches until an index commit runs out of space.
    let mut stored: Vec<(Hash, Vec<u8>)> = Vec::new();
    let mut seed = 0;
    let error = loop {
        for _ in 0..50 {
            seed += 1;
            let data = noise(seed, 256);
            let h = Hash::of(&data);
            store.put(&h, &data).unwrap();
            stored.push((h, data));
        }
        store.flush().expect("a flush writes only the packs, which have room");
        if let Err(e) = store.seal() {
            break e;
        }
        if seed == 50 {
            // After the first commit, take the rest of the disk but for a little.
            tiny.fill("ballast");
            std::fs::OpenOptions::new().write(true).open(tiny.path().join("ballast")).unwrap().set_len(0).ok();
            tiny.fill("ballast");
            let len = std::fs::metadata(tiny.path().join("ballast")).unwrap().len();
            std::fs::OpenOptions::new().write(true).open(tiny.path().join("ballast")).unwrap().set_len(len - (64 << 10)).unwrap();
        }
        assert!(seed < 200_000, "the index never filled its 4 MiB disk");
    };
    let message = error.to_string();
    assert!(message.contains("index.redb"), "the error names the file: {message}");

    // Still full: every object stays readable (the failed commit lost nothing), and
    // flushes still succeed.
    let unmerged = noise(u64::MAX - 1, 256);
    store.put(&Hash::of(&unmerged), &unmerged).unwrap();
    store.flush().expect("a flush while the index's disk is full");
    stored.push((Hash::of(&unmerged), unmerged));
    for (h, data) in &stored {
        assert_eq!(&store.get(h).unwrap(), data, "object {h} read while the index disk is full");
    }

    // Space back: the same store flushes and reads everything, without a restart.
    std::fs::remove_file(tiny.path().join("ballast")).unwrap();
    store.seal().expect("a merge after space was freed");
    for (h, data) in &stored {
        assert_eq!(&store.get(h).unwrap(), data, "object {h} after space was freed");
    }
    let more = noise(u64::MAX, 256);
    store.put(&Hash::of(&more), &more).unwrap();
    store.flush().unwrap();
    let count = store.object_count().unwrap();
    assert_eq!(count, stored.len() as u64 + 1);
    drop(store);

    // And a reopened store has them all, indexed.
    let store = LocalStore::open(tiny.path()).unwrap();
    assert_eq!(store.object_count().unwrap(), count);
    for (h, data) in &stored {
        assert_eq!(&store.get(h).unwrap(), data);
    }
}
