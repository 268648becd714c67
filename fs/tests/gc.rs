//! GC below FUSE: planning reads only and aborts on any error with nothing deleted;
//! execution removes exactly the dead objects; nothing reachable from a branch or
//! snapshot head is ever removed, also when a commit is attempted between plan and
//! execute (the GC lock makes it wait until the plan is executed).

mod common;

use common::{create_file, noise, write};
use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{mpsc, Arc};

use pgbranch_fs::block::Hash;
use pgbranch_fs::catalog::Kind;
use pgbranch_fs::gc::{self, GcStore, PackAction};
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
    /// Fail reading this pack's records.
    scan_fails_on: Option<u32>,
    /// Fail copying records into the active pack (execution).
    copy_fails: AtomicBool,
    /// Packs removed, to check nothing was deleted.
    removed: AtomicUsize,
}

impl<S: GcStore> FaultyStore<S> {
    fn new(inner: S) -> FaultyStore<S> {
        FaultyStore {
            inner,
            index_fails_after: None,
            scan_fails_on: None,
            copy_fails: AtomicBool::new(false),
            removed: AtomicUsize::new(0),
        }
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
        let plan = gc::plan(self, live)?;
        gc::execute(self, plan)
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
    fn pack_records(&self, pack: u32) -> Result<Vec<(Hash, Location)>, StoreError> {
        if self.scan_fails_on == Some(pack) {
            return Err(injected("pack scan"));
        }
        self.inner.pack_records(pack)
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
    let live_set: HashSet<Hash> = live.iter().copied().collect();
    let before = pack_files(&store.inner);

    let err = gc::plan(&store, &live_set).expect_err("an index read error must abort planning");
    assert!(err.to_string().contains("injected fault: index read"), "{err}");

    assert_eq!(store.removed.load(Ordering::SeqCst), 0);
    let after = pack_files(&store.inner);
    assert!(before.iter().all(|p| after.contains(p)), "no pack removed: {before:?} -> {after:?}");
    for h in live.iter().chain(&dead) {
        store.get(h).expect("every object, live or dead, is still there");
    }
    assert_eq!(store.object_count().unwrap(), (live.len() + dead.len()) as u64);
}

#[test]
fn pack_scan_error_while_planning_deletes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut store = FaultyStore::new(LocalStore::open(dir.path()).unwrap());
    let (live, dead) = populate(&store.inner);
    // Pack 1 (all dead) scans fine; the failure comes after a delete was already decided.
    store.scan_fails_on = Some(2);
    let live_set: HashSet<Hash> = live.iter().copied().collect();
    assert!(gc::plan(&store, &live_set).is_err());
    assert_eq!(store.removed.load(Ordering::SeqCst), 0);
    for h in live.iter().chain(&dead) {
        store.get(h).unwrap();
    }
}

/// A damaged record length ends a pack's scan early: the live record past it must not
/// be taken for dead (the pack would be deleted with it).
#[test]
fn a_pack_whose_scan_misses_a_live_record_aborts_planning() {
    use std::os::unix::fs::FileExt;
    let dir = tempfile::tempdir().unwrap();
    let store = FaultyStore::new(LocalStore::open(dir.path()).unwrap());
    let (live, dead) = populate(&store.inner);
    // Pack 2 starts (after its 16-byte header) with the live record; its length field
    // is at 16 + 32.
    let pack2 = dir.path().join("packs/pack-00000002.pk");
    std::fs::OpenOptions::new().write(true).open(&pack2).unwrap().write_all_at(&u32::MAX.to_le_bytes(), 48).unwrap();
    let err = gc::plan(&store, &live.iter().copied().collect()).expect_err("planning must stop");
    assert!(err.to_string().contains("pack 2: the index places 1 live objects in it but a scan of the pack finds 0"), "{err}");
    assert_eq!(store.removed.load(Ordering::SeqCst), 0);
    for h in live.iter().chain(&dead) {
        store.get(h).expect("nothing was deleted");
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
    assert!(gc::plan(&store, &live.iter().copied().collect()).is_err());
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

    let plan = gc::plan(&store, &live_set).unwrap();
    assert_eq!(plan.objects_removed, dead.len() as u64);
    assert_eq!(plan.live_missing, 0);
    assert!(
        matches!(&plan.packs[..], [PackAction::Delete { pack: 1, .. }, PackAction::Rewrite { pack: 2, live, .. }] if live.len() == 1),
        "{:?}",
        plan.packs
    );
    assert_eq!(plan.drop_entries, vec![dead[dead.len() - 1]], "pack 3 is kept; its one dead entry is dropped");
    assert_eq!(store.removed.load(Ordering::SeqCst), 0, "planning deletes nothing");
    assert!(plan.estimated_bytes_after() < plan.bytes_before);

    let report = gc::execute(&store, plan).unwrap();
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
    let plan = gc::plan(&store, &live_set).unwrap();
    store.copy_fails.store(true, Ordering::SeqCst);
    assert!(gc::execute(&store, plan).is_err(), "the rewrite of pack 2 fails");
    drop(store);
    let store = LocalStore::open(dir.path()).unwrap();
    for h in &live {
        store.get(h).expect("live objects survive a failed execution");
    }
    // The next GC finishes the job.
    let plan = gc::plan(&store, &live_set).unwrap();
    gc::execute(&store, plan).unwrap();
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

#[test]
fn a_commit_waits_for_the_planned_gc_and_its_blocks_survive() {
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

    // The same bytes again: a put would find the doomed copies in the index and skip
    // storing them; the lock makes the commit wait until they are gone.
    let (started, started_rx) = mpsc::channel();
    let done = Arc::new(AtomicBool::new(false));
    let committer = {
        let (repo, done, old) = (repo.clone(), done.clone(), old.clone());
        std::thread::spawn(move || {
            write(&repo, "a", ino, 0, &old);
            started.send(()).unwrap();
            let b = repo.get("a").unwrap();
            repo.commit_branch(&b).unwrap();
            done.store(true, Ordering::SeqCst);
        })
    };
    started_rx.recv().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(200));
    assert!(!done.load(Ordering::SeqCst), "a commit may not land between plan and execute");
    let report = repo.execute_gc(planned).unwrap();
    assert_eq!(report.objects_removed, doomed);
    committer.join().unwrap();
    assert!(done.load(Ordering::SeqCst));
    assert_heads_whole(&repo);
    for i in 0..16 {
        let h = Hash::of(&old[i * BLOCK..(i + 1) * BLOCK]);
        repo.store().get(&h).expect("the recommitted block is stored anew");
    }
}
