//! GC below FUSE: planning reads only and aborts on any error with nothing deleted;
//! execution removes exactly the dead objects; nothing reachable from a branch or
//! snapshot head is ever removed, also when a commit lands between plan and execute
//! and names objects the plan found dead (they are revived, not removed).

mod common;

use common::{create_file, noise, write};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

use pgbranch_fs::block::Hash;
use pgbranch_fs::catalog::Kind;
use pgbranch_fs::gc::{self, GcPlan, GcStore, LiveSet, PackAction};
use pgbranch_fs::pack::Location;
use pgbranch_fs::repo::Repository;
use pgbranch_fs::store::{LocalStore, MemStore, ObjectStore, StoreError, SweepStats};
use pgbranch_fs::walk;

const BLOCK: usize = 8192;

/// A [`LocalStore`] (or the in-memory store) whose chosen calls fail with an I/O error.
struct FaultyStore<S = LocalStore> {
    inner: S,
    /// Fail the index scan after this many entries.
    index_fails_after: Option<usize>,
    /// Fail copying records into the active pack (execution).
    copy_fails: AtomicBool,
    /// Packs removed, to check nothing was deleted.
    removed: AtomicUsize,
}

impl<S: GcStore> FaultyStore<S> {
    fn new(inner: S) -> FaultyStore<S> {
        FaultyStore { inner, index_fails_after: None, copy_fails: AtomicBool::new(false), removed: AtomicUsize::new(0) }
    }
}

fn injected(what: &str) -> StoreError {
    StoreError::Io(std::io::Error::other(format!("injected fault: {what}")))
}

impl<S: GcStore> ObjectStore for FaultyStore<S> {
    fn get(&self, hash: &Hash) -> Result<Vec<u8>, StoreError> {
        self.inner.get(hash)
    }
    fn put(&self, hash: &Hash, bytes: &[u8]) -> Result<(), StoreError> {
        self.inner.put(hash, bytes)
    }
    fn flush(&self) -> Result<(), StoreError> {
        self.inner.flush()
    }
    fn stored_size(&self, hash: &Hash) -> Result<Option<u64>, StoreError> {
        self.inner.stored_size(hash)
    }
    fn physical_bytes(&self) -> Result<u64, StoreError> {
        self.inner.physical_bytes()
    }
    fn object_count(&self) -> Result<u64, StoreError> {
        self.inner.object_count()
    }
    fn all_objects(&self) -> Result<Vec<Hash>, StoreError> {
        self.inner.all_objects()
    }
    fn sweep(&self, live: &HashSet<Hash>) -> Result<SweepStats, StoreError> {
        gc::collect(self, &LiveSet::from_hashes(live.iter().copied()), gc::KEEP_PACK_LIVE_PERCENT)
    }
}

impl<S: GcStore> GcStore for FaultyStore<S> {
    fn seal(&self) -> Result<u32, StoreError> {
        self.inner.seal()
    }
    fn pack_numbers(&self) -> Result<Vec<u32>, StoreError> {
        self.inner.pack_numbers()
    }
    fn pack_size(&self, pack: u32) -> Result<u64, StoreError> {
        self.inner.pack_size(pack)
    }
    fn for_each_index_entry(&self, f: &mut dyn FnMut(Hash, Location) -> Result<(), StoreError>) -> Result<(), StoreError> {
        let mut seen = 0;
        self.inner.for_each_index_entry(&mut |h, loc| {
            if self.index_fails_after == Some(seen) {
                return Err(injected("index read"));
            }
            seen += 1;
            f(h, loc)
        })
    }
    fn copy_records(&self, records: &[(Hash, Location)]) -> Result<Vec<(Hash, Location)>, StoreError> {
        if self.copy_fails.load(Ordering::SeqCst) {
            return Err(injected("pack append"));
        }
        self.inner.copy_records(records)
    }
    fn update_index(&self, insert: &[(Hash, Location)], remove: &[Hash]) -> Result<(), StoreError> {
        self.inner.update_index(insert, remove)
    }
    fn remove_pack(&self, pack: u32) -> Result<(), StoreError> {
        self.removed.fetch_add(1, Ordering::SeqCst);
        self.inner.remove_pack(pack)
    }
    fn finish_gc(&self) -> Result<(), StoreError> {
        self.inner.finish_gc()
    }
    fn track_revivals(&self, sealed_below: Option<u32>) {
        self.inner.track_revivals(sealed_below)
    }
    fn with_puts_held(&self, f: &mut dyn FnMut(&HashSet<Hash>) -> Result<(), StoreError>) -> Result<(), StoreError> {
        self.inner.with_puts_held(f)
    }
}

/// Seals and plans, as a collection does: (plan, live set).
fn plan_of(store: &dyn GcStore, live: &[Hash]) -> Result<(GcPlan, LiveSet), StoreError> {
    let set = LiveSet::from_hashes(live.iter().copied());
    let active = store.seal()?;
    Ok((gc::plan(store, active, &set, gc::KEEP_PACK_LIVE_PERCENT)?, set))
}

fn put(store: &dyn ObjectStore, data: &[u8]) -> Hash {
    let h = Hash::of(data);
    store.put(&h, data).unwrap();
    h
}

/// Three sealed packs: 1 all dead, 2 mostly dead (rewritten), 3 almost all live (kept,
/// its one dead entry dropped from the index). Returns (live, dead).
fn populate<S: GcStore>(store: &S) -> (Vec<Hash>, Vec<Hash>) {
    let (mut live, mut dead) = (Vec::new(), Vec::new());
    for i in 0..4 {
        dead.push(put(store, &noise(100 + i, BLOCK)));
    }
    store.seal().unwrap();
    live.push(put(store, &noise(200, BLOCK)));
    for i in 0..5 {
        dead.push(put(store, &noise(300 + i, BLOCK)));
    }
    store.seal().unwrap();
    for i in 0..20 {
        live.push(put(store, &noise(400 + i, BLOCK)));
    }
    dead.push(put(store, &noise(500, 64)));
    store.flush().unwrap();
    (live, dead)
}

fn pack_files<S: GcStore>(store: &S) -> Vec<u32> {
    store.pack_numbers().unwrap()
}

#[test]
fn index_read_error_while_planning_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = FaultyStore::new(LocalStore::open(dir.path()).unwrap());
    let (live, dead) = populate(&store.inner);
    store.index_fails_after = Some(3);
    let before = pack_files(&store.inner);

    let err = plan_of(&store, &live).err().expect("an index read error must abort planning");
    assert!(err.to_string().contains("injected fault: index read"), "{err}");

    assert_eq!(store.removed.load(Ordering::SeqCst), 0);
    let after = pack_files(&store.inner);
    assert!(before.iter().all(|p| after.contains(p)), "no pack removed: {before:?} -> {after:?}");
    for h in live.iter().chain(&dead) {
        store.get(h).expect("every object, live or dead, is still there");
    }
    assert_eq!(store.object_count().unwrap(), (live.len() + dead.len()) as u64);
}

/// A live record whose bytes are damaged is never copied as if whole: its pack's
/// rewrite stops, the pack stays, and what GC freed before stays freed.
#[test]
fn a_damaged_live_record_stops_its_packs_rewrite_and_the_pack_stays() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let store = FaultyStore::new(LocalStore::open(dir.path()).unwrap());
    let (live, _) = populate(&store.inner);
    // Pack 2 starts (after its 16-byte header) with the live record: hash (32), length
    // (4), then its payload.
    let pack2 = dir.path().join("packs/pack-00000002.pk");
    std::fs::OpenOptions::new().write(true).open(&pack2).unwrap().write_all_at(b"damage", 16 + 36 + 8).unwrap();
    let (plan, set) = plan_of(&store, &live).unwrap();
    let err = gc::execute(&store, plan, &set).expect_err("the rewrite of pack 2 must stop");
    assert!(err.to_string().contains("gc freed") && err.to_string().contains("(1 packs)"), "{err}");
    assert!(pack2.exists(), "the pack holding the damaged live record is kept");
    assert!(!dir.path().join("packs/pack-00000001.pk").exists(), "the wholly-dead pack went first");
    for h in &live[1..] {
        store.get(h).expect("the other live objects are untouched");
    }
}

#[test]
fn a_plan_removes_exactly_the_dead_objects() {
    let dir = tempfile::tempdir().unwrap();
    let live = plan_and_execute_remove_exactly_the_dead(FaultyStore::new(LocalStore::open(dir.path()).unwrap()));
    // And after a reopen.
    let store = LocalStore::open(dir.path()).unwrap();
    for h in &live {
        store.get(h).unwrap();
    }
    assert_eq!(store.object_count().unwrap(), live.len() as u64);
}

/// The same plan against the in-memory store (the same pack framing, no disk).
#[test]
fn a_plan_against_the_in_memory_store_removes_exactly_the_dead_objects() {
    plan_and_execute_remove_exactly_the_dead(FaultyStore::new(MemStore::new()));
}

#[test]
fn an_index_read_error_while_planning_in_memory_deletes_nothing() {
    let mut store = FaultyStore::new(MemStore::new());
    let (live, dead) = populate(&store.inner);
    store.index_fails_after = Some(5);
    let before = pack_files(&store.inner);
    assert!(plan_of(&store, &live).is_err());
    assert_eq!(store.removed.load(Ordering::SeqCst), 0);
    let after = pack_files(&store.inner);
    assert!(before.iter().all(|p| after.contains(p)), "no pack removed: {before:?} -> {after:?}");
    for h in live.iter().chain(&dead) {
        store.get(h).unwrap();
    }
}

/// Plans and executes GC over [`populate`]d packs; returns the live objects.
fn plan_and_execute_remove_exactly_the_dead<S: GcStore>(store: FaultyStore<S>) -> Vec<Hash> {
    let (live, dead) = populate(&store.inner);
    let live_set: HashSet<Hash> = live.iter().copied().collect();

    let (plan, set) = plan_of(&store, &live).unwrap();
    assert_eq!(plan.objects_removed, dead.len() as u64);
    assert_eq!(plan.live_missing, 0);
    assert_eq!(plan.live_objects, live.len() as u64);
    assert!(
        matches!(
            &plan.packs[..],
            [PackAction::Delete { pack: 1, .. }, PackAction::Rewrite { pack: 2, live: 1, .. }, PackAction::Trim { pack: 3, dead: 1 }]
        ),
        "pack 3 is kept, its one dead entry dropped: {:?}",
        plan.packs
    );
    assert_eq!(store.removed.load(Ordering::SeqCst), 0, "planning deletes nothing");
    assert!(plan.estimated_bytes_after() < plan.bytes_before);

    let report = gc::execute(&store, plan, &set).unwrap();
    assert_eq!(report.objects_removed, dead.len() as u64);
    assert_eq!(report.packs_rewritten, 2);
    assert!(report.bytes_after < report.bytes_before, "{report:?}");
    for h in &live {
        store.get(h).expect("live objects survive");
    }
    for h in &dead {
        assert!(matches!(store.get(h), Err(StoreError::Missing(_))), "dead object {h:?} removed");
    }
    let remaining: HashSet<Hash> = store.all_objects().unwrap().into_iter().collect();
    assert_eq!(remaining, live_set);
    live
}

#[test]
fn a_failure_while_executing_loses_no_live_object() {
    let dir = tempfile::tempdir().unwrap();
    let store = FaultyStore::new(LocalStore::open(dir.path()).unwrap());
    let (live, _) = populate(&store.inner);
    let live_set: HashSet<Hash> = live.iter().copied().collect();
    let (plan, set) = plan_of(&store, &live).unwrap();
    store.copy_fails.store(true, Ordering::SeqCst);
    assert!(gc::execute(&store, plan, &set).is_err(), "the rewrite of pack 2 fails");
    drop(store);
    let store = LocalStore::open(dir.path()).unwrap();
    for h in &live {
        store.get(h).expect("live objects survive a failed execution");
    }
    // The next GC finishes the job.
    let (plan, set) = plan_of(&store, &live).unwrap();
    gc::execute(&store, plan, &set).unwrap();
    let remaining: HashSet<Hash> = store.all_objects().unwrap().into_iter().collect();
    assert_eq!(remaining, live_set);
}

/// Reads every node and block every head reaches.
fn assert_heads_whole(repo: &Repository) {
    repo.commit_all().unwrap();
    for rec in repo.records().unwrap() {
        let listing = walk::list(repo.store().as_ref(), &rec.root, None);
        assert!(listing.broken.is_empty(), "{} has broken nodes", rec.name);
        for h in &listing.nodes {
            repo.store().get(h).unwrap_or_else(|e| panic!("{}: node {h:?}: {e}", rec.name));
        }
        for f in &listing.files {
            for (idx, h) in &f.blocks {
                repo.store().get(h).unwrap_or_else(|e| panic!("{}: {} block {idx}: {e}", rec.name, f.path));
            }
        }
    }
    assert!(repo.verify().unwrap().damaged.is_empty());
}

#[test]
fn gc_never_removes_what_a_branch_or_snapshot_head_reaches() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    repo.create_empty("a", 0, 0).unwrap();
    let ino = create_file(&repo, "a", "f");
    write(&repo, "a", ino, 0, &noise(1, 32 * BLOCK));
    repo.create_from("snap", "a", Kind::Snapshot).unwrap();
    write(&repo, "a", ino, 0, &noise(2, 16 * BLOCK));
    repo.create_from("b", "a", Kind::Branch).unwrap();
    write(&repo, "b", ino, 8 * BLOCK as u64, &noise(3, 16 * BLOCK));
    write(&repo, "a", ino, 0, &noise(4, 8 * BLOCK));
    repo.create_from("gone", "a", Kind::Branch).unwrap();
    let gone_ino = create_file(&repo, "gone", "g");
    write(&repo, "gone", gone_ino, 0, &noise(5, 8 * BLOCK));
    repo.commit_all().unwrap();
    repo.delete("gone").unwrap();

    let report = repo.gc().unwrap();
    assert!(report.objects_removed > 0, "the deleted branch's blocks and old roots are garbage");
    assert_heads_whole(&repo);
    let again = repo.gc().unwrap();
    assert_eq!(again.objects_removed, 0, "{again:?}");
    assert_heads_whole(&repo);
}

/// Between plan and execute a commit stores bytes the plan found dead: the put finds
/// the doomed copies in the index and skips storing them, so GC must keep them.
#[test]
fn a_commit_between_plan_and_execute_revives_what_it_names() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(Repository::open(dir.path()).unwrap());
    repo.create_empty("a", 0, 0).unwrap();
    let ino = create_file(&repo, "a", "f");
    let old = noise(7, 16 * BLOCK);
    write(&repo, "a", ino, 0, &old);
    repo.create_from("snap", "a", Kind::Snapshot).unwrap();
    write(&repo, "a", ino, 0, &noise(8, 16 * BLOCK));
    repo.delete("snap").unwrap();

    let planned = repo.plan_gc().unwrap();
    let doomed = planned.plan().objects_removed;
    assert!(doomed >= 16, "the snapshot's blocks are planned for removal ({doomed})");

    // The commit does not wait for GC.
    let committer = {
        let (repo, old) = (repo.clone(), old.clone());
        std::thread::spawn(move || {
            write(&repo, "a", ino, 0, &old);
            let b = repo.get("a").unwrap();
            repo.commit_branch(&b).unwrap();
        })
    };
    committer.join().unwrap();
    let report = repo.execute_gc(planned).unwrap();
    assert!(report.objects_revived >= 16, "{report:?}");
    assert_eq!(report.objects_removed + report.objects_revived, doomed, "{report:?}");
    assert_heads_whole(&repo);
    for i in 0..16 {
        let h = Hash::of(&old[i * BLOCK..(i + 1) * BLOCK]);
        repo.store().get(&h).expect("the recommitted block survives");
    }
    drop(repo);
    let repo = Repository::open(dir.path()).unwrap();
    assert_heads_whole(&repo);
}

/// Commits run in a loop on one thread while GC collects again and again on another:
/// every head stays whole, and the garbage goes.
#[test]
fn collections_alongside_a_stream_of_commits_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Arc::new(Repository::open(dir.path()).unwrap());
    repo.create_empty("a", 0, 0).unwrap();
    let ino = create_file(&repo, "a", "f");
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (repo, stop) = (repo.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut round = 0u64;
            while !stop.load(Ordering::SeqCst) || round < 40 {
                // Old contents come back now and then: revivals.
                write(&repo, "a", ino, (round % 8) * 4 * BLOCK as u64, &noise(1000 + round % 13, 4 * BLOCK));
                repo.commit_branch(&repo.get("a").unwrap()).unwrap();
                round += 1;
            }
            round
        })
    };
    let mut removed = 0;
    for _ in 0..15 {
        removed += repo.gc().unwrap().objects_removed;
    }
    stop.store(true, Ordering::SeqCst);
    let rounds = writer.join().unwrap();
    assert!(rounds >= 40 && removed > 0, "{rounds} commits, {removed} objects removed");
    assert_heads_whole(&repo);
    repo.gc().unwrap();
    assert_heads_whole(&repo);
}
