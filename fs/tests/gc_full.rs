//! The store's packs on a full filesystem (a tiny tmpfs mounted on `packs/`; the index
//! stays on the normal disk): a pack append that fails part way is cut back, so later
//! objects land where the index says; and GC on a full disk frees the wholly-dead
//! packs first, then rewrites the packs with most garbage, and when a rewrite finally
//! gets ENOSPC what it freed stays freed and the error says so.

mod common;

use std::collections::HashSet;

use common::noise;
use common::tinyfs::TinyFs;
use pgbranch_fs::block::Hash;
use pgbranch_fs::gc::{self, GcStore, LiveSet, PackAction};
use pgbranch_fs::store::{LocalStore, ObjectStore, StoreError};

const BLOCK: usize = 8192;

fn put(store: &LocalStore, seed: u64) -> Result<Hash, StoreError> {
    let data = noise(seed, BLOCK);
    let h = Hash::of(&data);
    store.put(&h, &data).map(|()| h)
}

fn is_enospc(e: &StoreError) -> bool {
    matches!(e, StoreError::Io(io) if io.raw_os_error() == Some(libc::ENOSPC) || io.kind() == std::io::ErrorKind::StorageFull)
}

#[test]
fn a_pack_append_cut_short_by_a_full_disk_leaves_later_objects_readable() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tiny) = TinyFs::mount_at(&dir.path().join("packs"), 256 << 10) else { return };
    std::fs::write(tiny.path().join("ballast"), vec![1u8; 64 << 10]).unwrap();
    let store = LocalStore::open(dir.path()).unwrap();
    let mut stored = Vec::new();
    let mut seed = 0;
    loop {
        seed += 1;
        match put(&store, seed) {
            Ok(h) => stored.push(h),
            Err(e) => {
                assert!(is_enospc(&e), "a full pack disk answers ENOSPC: {e}");
                break;
            }
        }
        assert!(seed < 1000, "the 256 KiB disk never filled");
    }
    std::fs::remove_file(tiny.path().join("ballast")).unwrap();
    for _ in 0..4 {
        seed += 1;
        stored.push(put(&store, seed).unwrap());
    }
    store.flush().unwrap();
    drop(store);
    let store = LocalStore::open(dir.path()).unwrap();
    for (i, h) in stored.iter().enumerate() {
        store.get(h).unwrap_or_else(|e| panic!("object {i} of {}: {e}", stored.len()));
    }
}

#[test]
fn gc_on_a_full_disk_frees_dead_packs_first_and_keeps_what_it_freed() {
    let dir = tempfile::tempdir().unwrap();
    let Some(tiny) = TinyFs::mount_at(&dir.path().join("packs"), 4 << 20) else { return };
    let store = LocalStore::open(dir.path()).unwrap();
    let (mut live, mut dead) = (Vec::new(), Vec::new());
    // Pack 1: mostly live (80 of 94), its rewrite copies ~650 KiB.
    for i in 0..94 {
        let h = put(&store, 1000 + i).unwrap();
        if i % 7 == 0 {
            dead.push(h)
        } else {
            live.push(h)
        }
    }
    let pack1 = store.seal().unwrap() - 1;
    // Pack 2: all dead.
    let pack2_dead: Vec<Hash> = (0..30).map(|i| put(&store, 2000 + i).unwrap()).collect();
    dead.extend(&pack2_dead);
    let pack2 = store.seal().unwrap() - 1;
    // Pack 3: mostly dead (5 live of 25).
    for i in 0..25 {
        let h = put(&store, 3000 + i).unwrap();
        if i < 5 {
            live.push(h)
        } else {
            dead.push(h)
        }
    }
    let pack3 = store.seal().unwrap() - 1;
    store.flush().unwrap();
    tiny.fill("ballast");
    let live_set: HashSet<Hash> = live.iter().copied().collect();
    let set = LiveSet::from_hashes(live.iter().copied());

    let active = store.seal().unwrap();
    let plan = gc::plan(&store, active, &set, gc::KEEP_PACK_LIVE_PERCENT).unwrap();
    let order: Vec<(u32, bool)> = plan.packs.iter().map(|a| (a.pack(), matches!(a, PackAction::Delete { .. }))).collect();
    // The empty pack the test's own seal left (pack3 + 1) holds no record: dead too.
    assert_eq!(order, vec![(pack2, true), (pack3 + 1, true), (pack3, false), (pack1, false)], "dead packs first, then most garbage first");
    let err = gc::execute(&store, plan, &set).expect_err("rewriting pack 1 needs more space than the disk has");
    let msg = err.to_string();
    assert!(msg.contains("gc freed") && msg.contains("(3 packs)") && msg.contains("run `pgbranch gc` again"), "{msg}");
    let packs = store.pack_numbers().unwrap();
    assert!(!packs.contains(&pack2) && !packs.contains(&pack3) && packs.contains(&pack1), "{packs:?}");

    // What was freed stays freed and nothing live was lost, also after a reopen.
    drop(store);
    let store = LocalStore::open(dir.path()).unwrap();
    for h in &live {
        store.get(h).expect("live objects survive a GC stopped by a full disk");
    }
    for h in &pack2_dead {
        assert!(matches!(store.get(h), Err(StoreError::Missing(_))));
    }

    // With room again, the next GC finishes the job.
    std::fs::remove_file(tiny.path().join("ballast")).unwrap();
    let active = store.seal().unwrap();
    let plan = gc::plan(&store, active, &set, gc::KEEP_PACK_LIVE_PERCENT).unwrap();
    gc::execute(&store, plan, &set).unwrap();
    let remaining: HashSet<Hash> = store.all_objects().unwrap().into_iter().collect();
    assert_eq!(remaining, live_set);
    for h in &live {
        store.get(h).unwrap();
    }
}
