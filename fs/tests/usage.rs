//! `du`'s figures, counted in bounded memory from sorted runs, equal the ones a plain
//! in-memory count of the same trees gives: per branch logical, unique, shared and
//! history bytes, and the store's distinct, stored, tree-node and unreferenced bytes.
//! The store has what makes counting tricky: a file copied whole (one block map for
//! two files), a file whose map leaves repeat, blocks shared across branches, history
//! that two branches hold, and garbage.

mod common;

use std::collections::{HashMap, HashSet};

use common::{create_file, noise, write};
use pgbranch_fs::block::Hash;
use pgbranch_fs::catalog::Kind;
use pgbranch_fs::repo::Repository;
use pgbranch_fs::store::ObjectStore;
use pgbranch_fs::walk;

const BLOCK: usize = 8192;

/// The figures, counted the plain way: every branch's blocks in a hash set.
#[derive(Debug, PartialEq, Default)]
struct Figures {
    branches: Vec<(String, u64, u64, u64, u64, u64)>,
    distinct_bytes: u64,
    stored_block_bytes: u64,
    tree_node_bytes: u64,
    unreferenced_bytes: u64,
}

fn counted_in_memory(repo: &Repository) -> Figures {
    let store = repo.store().as_ref();
    let size = |h: &Hash| store.stored_size(h).unwrap().unwrap_or(0);
    let records = repo.records().unwrap();
    let mut blocks_of = Vec::new();
    let mut logical = Vec::new();
    let mut nodes = HashSet::new();
    let mut refs: HashMap<Hash, u32> = HashMap::new();
    for rec in &records {
        let listing = walk::list(store, &rec.root, None);
        assert!(listing.broken.is_empty());
        nodes.extend(listing.nodes.iter().copied());
        let blocks: HashSet<Hash> = listing.files.iter().flat_map(|f| f.blocks.iter().map(|(_, h)| *h)).collect();
        logical.push(listing.files.iter().map(|f| f.blocks.len() as u64 * BLOCK as u64).sum::<u64>());
        for h in &blocks {
            *refs.entry(*h).or_default() += 1;
        }
        blocks_of.push(blocks);
    }
    let mut reached: HashSet<Hash> = nodes.iter().chain(refs.keys()).copied().collect();
    let mut figures = Figures::default();
    for (i, rec) in records.iter().enumerate() {
        let unique = blocks_of[i].iter().filter(|h| refs[*h] == 1).map(size).sum();
        let shared = blocks_of[i].iter().filter(|h| refs[*h] > 1).map(size).sum();
        let points = repo.history(&rec.name).unwrap();
        let mut history = 0;
        for p in &points {
            let listing = walk::list(store, &p.root, None);
            let objects = listing.nodes.iter().copied().chain(listing.files.iter().flat_map(|f| f.blocks.iter().map(|(_, h)| *h)));
            for h in objects {
                if reached.insert(h) {
                    history += size(&h);
                }
            }
        }
        figures.branches.push((rec.name.clone(), logical[i], unique, shared, history, points.len() as u64));
    }
    figures.distinct_bytes = refs.len() as u64 * BLOCK as u64;
    figures.stored_block_bytes = refs.keys().map(size).sum();
    figures.tree_node_bytes = nodes.iter().map(size).sum();
    figures.unreferenced_bytes = store.all_objects().unwrap().iter().filter(|h| !reached.contains(h)).map(size).sum();
    figures
}

fn counted_by_du(repo: &Repository) -> Figures {
    let u = repo.usage().unwrap();
    assert!(u.commit_error.is_none());
    Figures {
        branches: u
            .branches
            .iter()
            .map(|b| (b.name.clone(), b.logical_bytes, b.unique_bytes, b.shared_bytes, b.history_bytes, b.history_points))
            .collect(),
        distinct_bytes: u.distinct_bytes,
        stored_block_bytes: u.stored_block_bytes,
        tree_node_bytes: u.tree_node_bytes,
        unreferenced_bytes: u.unreferenced_bytes,
    }
}

fn commit(repo: &Repository, name: &str) {
    repo.commit_branch(&repo.get(name).unwrap()).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2));
}

#[test]
fn du_counts_exactly_what_a_plain_count_of_every_tree_does() {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repository::open(dir.path()).unwrap();
    repo.set_default_retention(3600);
    repo.create_empty("a", 0, 0).unwrap();
    let f1 = create_file(&repo, "a", "f1");
    let f2 = create_file(&repo, "a", "f2");
    let f3 = create_file(&repo, "a", "f3");
    let copied = noise(1, 40 * BLOCK);
    write(&repo, "a", f1, 0, &copied);
    write(&repo, "a", f2, 0, &copied); // the same block map as f1
    let one_block = noise(2, BLOCK);
    let repeated: Vec<u8> = (0..1100).flat_map(|_| one_block.iter().copied()).collect();
    write(&repo, "a", f3, 0, &repeated); // two identical map leaves, 1100 blocks, 1 distinct
    commit(&repo, "a");
    write(&repo, "a", f1, 0, &noise(3, 5 * BLOCK));
    commit(&repo, "a");
    write(&repo, "a", f3, 0, &noise(4, 1100 * BLOCK));
    // Kept to the end: a second copy of f2 and a file of one block repeated.
    let f4 = create_file(&repo, "a", "f4");
    write(&repo, "a", f4, 0, &copied);
    let f5 = create_file(&repo, "a", "f5");
    write(&repo, "a", f5, 0, &repeated);
    commit(&repo, "a");

    repo.create_from("s", "a", Kind::Snapshot).unwrap();
    repo.create_from("b", "a", Kind::Branch).unwrap();
    let g = create_file(&repo, "b", "g");
    write(&repo, "b", g, 0, &noise(5, 20 * BLOCK));
    write(&repo, "b", f2, 10 * BLOCK as u64, &noise(6, 3 * BLOCK));
    commit(&repo, "b");
    write(&repo, "b", g, 0, &noise(7, 2 * BLOCK));
    commit(&repo, "b"); // b's history now holds blocks a's history holds too
                        // Garbage: a branch's own blocks, once it is deleted.
    repo.create_from("tmp", "a", Kind::Branch).unwrap();
    let t = create_file(&repo, "tmp", "t");
    write(&repo, "tmp", t, 0, &noise(8, 30 * BLOCK));
    commit(&repo, "tmp");
    repo.delete("tmp").unwrap();

    let want = counted_in_memory(&repo);
    assert_eq!(counted_by_du(&repo), want);
    // The figures say what was built, not just the same as the plain count.
    let a = &want.branches.iter().find(|b| b.0 == "a").unwrap();
    assert_eq!(a.1, (40 + 40 + 1100 + 40 + 1100) as u64 * BLOCK as u64, "a's logical bytes count the copy and every repeat");
    assert!(a.4 > 0 && a.5 == 3, "a's history holds what it overwrote: {a:?}");
    assert!(want.unreferenced_bytes > 30 * BLOCK as u64 / 4, "tmp's blocks are garbage: {want:?}");

    // After GC nothing is unreferenced, and du still agrees.
    repo.gc().unwrap();
    let want = counted_in_memory(&repo);
    assert_eq!(counted_by_du(&repo), want);
    assert_eq!(want.unreferenced_bytes, 0, "{want:?}");
}
