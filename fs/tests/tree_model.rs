//! A seeded random-operation test of a branch's tree against a model of file contents:
//! writes, truncates, unlinks (some while open), renames over, commits and replays of
//! the ops since the last commit onto a reloaded tree (what reopening a branch does).
//! After every commit the contents must match the model and the dirty count must be 0
//! and equal to what the maps hold; after every op the count must equal the maps'.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use common::*;
use pgbranch_fs::block::Hash;
use pgbranch_fs::node::ROOT_INO;
use pgbranch_fs::op::Op;
use pgbranch_fs::store::ObjectStore;
use pgbranch_fs::tree::Tree;

const NAMES: [&str; 4] = ["a", "b", "c", "d"];
const MAX_SIZE: u64 = 12 * BLOCK as u64;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A file offset that is often on a block boundary, often not.
fn offset(rng: &mut XorShift) -> u64 {
    let block = rng.below(MAX_SIZE / BLOCK as u64);
    match rng.below(3) {
        0 => block * BLOCK as u64,
        _ => block * BLOCK as u64 + rng.below(BLOCK as u64),
    }
}

fn check(t: &mut Tree, model: &BTreeMap<String, Vec<u8>>, context: &str) {
    assert_eq!(t.dirty_blocks(), t.dirty_blocks_in_maps(), "{context}: the count and the maps disagree");
    for (name, want) in model {
        let ino = t.lookup(ROOT_INO, name.as_bytes()).unwrap_or_else(|e| panic!("{context}: {name}: {e:?}"));
        assert!(contents(t, ino) == *want, "{context}: contents of {name} differ");
    }
    for name in NAMES {
        if !model.contains_key(name) {
            assert!(t.lookup(ROOT_INO, name.as_bytes()).is_err(), "{context}: {name} should not exist");
        }
    }
}

fn run(seed: u64, steps: usize) {
    let store: Arc<dyn ObjectStore> = FaultyStore::temp();
    let mut rng = XorShift(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1);
    let mut t = empty_tree(store.clone());
    let mut model: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    let mut root: Hash = t.commit().unwrap();
    let mut since_commit: Vec<Op> = Vec::new();
    let mut open: Vec<u64> = Vec::new();
    for step in 0..steps {
        let context = format!("seed {seed} step {step}");
        let name = NAMES[rng.below(NAMES.len() as u64) as usize];
        let op = match rng.below(10) {
            0..=3 => {
                let ino = match t.lookup(ROOT_INO, name.as_bytes()) {
                    Ok(ino) => ino,
                    Err(_) => {
                        let before = t.next_ino();
                        let ino = create(&mut t, name);
                        since_commit.push(create_op(name, before));
                        model.insert(name.to_string(), Vec::new());
                        ino
                    }
                };
                let at = offset(&mut rng);
                let len = (rng.below(2 * BLOCK as u64) + 1).min(MAX_SIZE - at) as usize;
                let data = pattern(rng.next(), len);
                let file = model.get_mut(name).unwrap();
                if file.len() < at as usize + len {
                    file.resize(at as usize + len, 0);
                }
                file[at as usize..at as usize + len].copy_from_slice(&data);
                write_op(ino, at, &data)
            }
            4 | 5 => {
                let Ok(ino) = t.lookup(ROOT_INO, name.as_bytes()) else { continue };
                let size = if rng.below(3) == 0 { 0 } else { offset(&mut rng) };
                model.get_mut(name).unwrap().resize(size as usize, 0);
                truncate_op(ino, size)
            }
            6 => {
                let Ok(ino) = t.lookup(ROOT_INO, name.as_bytes()) else { continue };
                if rng.below(2) == 0 {
                    t.open(ino);
                    open.push(ino);
                }
                model.remove(name);
                unlink_op(name)
            }
            7 => {
                let to = NAMES[rng.below(NAMES.len() as u64) as usize];
                if to == name || !model.contains_key(name) {
                    continue;
                }
                let file = model.remove(name).unwrap();
                model.insert(to.to_string(), file);
                rename_op(name, to)
            }
            8 => {
                if let Some(ino) = open.pop() {
                    t.release(ino);
                }
                continue;
            }
            _ => {
                // Reopen: reload the last committed root and replay what came since.
                if rng.below(3) == 0 {
                    let mut replayed = Tree::load(store.clone(), &root).unwrap();
                    for op in &since_commit {
                        // Ops on files unlinked while open may fail, as in Branch::open.
                        let _ = replayed.apply(op);
                    }
                    check(&mut replayed, &model, &format!("{context} (replayed)"));
                }
                root = t.commit().unwrap();
                since_commit.clear();
                assert_eq!(t.dirty_blocks(), 0, "{context}: dirty after commit");
                check(&mut t, &model, &context);
                let mut reloaded = Tree::load(store.clone(), &root).unwrap();
                check(&mut reloaded, &model, &format!("{context} (reloaded)"));
                continue;
            }
        };
        t.apply(&op).unwrap_or_else(|e| panic!("{context}: {op:?}: {e:?}"));
        since_commit.push(op);
        assert_eq!(t.dirty_blocks(), t.dirty_blocks_in_maps(), "{context}: the count and the maps disagree");
    }
    for ino in open.drain(..) {
        t.release(ino);
    }
    t.commit().unwrap();
    assert_eq!(t.dirty_blocks(), 0);
    check(&mut t, &model, &format!("seed {seed} end"));
}

fn create_op(name: &str, ino: u64) -> Op {
    Op::Create {
        parent: ROOT_INO,
        name: name.into(),
        ino,
        kind: pgbranch_fs::op::NewKind::File,
        mode: libc::S_IFREG | 0o600,
        uid: 0,
        gid: 0,
        rdev: 0,
        now: NOW,
    }
}

#[test]
fn random_operations_match_the_model_and_the_count_matches_the_maps() {
    for seed in 1..=24 {
        run(seed, 400);
    }
}
