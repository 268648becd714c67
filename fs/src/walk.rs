//! Walking a committed tree: every node and block a root reaches, with file paths.
//!
//! [`list`] keeps paths, for `du` (who references what) and `verify` (what is damaged,
//! and which file at which offset that damage hits); [`visit_new`] only names objects,
//! once per shared node, for GC's marking and the history figures of `du`.

use std::collections::{BTreeMap, HashMap, HashSet};

use crate::block::{Hash, BLOCK_SIZE};
use crate::node::{self, InodeLeaf, MapLeaf, MapRoot, NodeError, StoredContent, TreeRoot, MAP_LEAF_BLOCKS, ROOT_INO};
use crate::store::ObjectStore;

pub struct FileBlocks {
    pub ino: u64,
    pub path: String,
    pub size: u64,
    pub blocks: Vec<(u64, Hash)>,
}

/// A node that could not be read, and what it would have described.
pub struct BrokenNode {
    pub hash: Hash,
    pub path: String,
    pub offset: Option<u64>,
    pub error: String,
}

#[derive(Default)]
pub struct Listing {
    pub nodes: Vec<Hash>,
    pub files: Vec<FileBlocks>,
    pub broken: Vec<BrokenNode>,
}

/// Why [`visit_new`] stopped.
#[derive(Debug)]
pub enum VisitError<E> {
    /// A tree node could not be read or decoded.
    Node(NodeError),
    /// The visitor returned an error.
    Visitor(E),
}

/// What [`visit_new`] hands the visitor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ObjectKind {
    /// The tree's root or an inode leaf.
    Node,
    /// A file's block map (a node), new: its leaves follow.
    Map,
    /// A leaf of a block map (a node), new: its blocks follow.
    MapLeaf,
    /// A file's block map, or a leaf of the map being visited, already in `seen`, so
    /// nothing below it is visited again. Not a new object: reported so that a caller
    /// can count each file's blocks (see `du`'s logical bytes).
    SeenMap,
    SeenMapLeaf,
    Block,
}

/// Calls `f` once for every object `root` reaches that is not below a node in `seen`
/// (which gains every node visited): walking many roots that share most of their
/// nodes (heads and retained points) reads each shared node once. Blocks are named,
/// not read; a block under two unseen map leaves is visited twice. A block map or map
/// leaf met again is named too, as [`ObjectKind::SeenMap`] / `SeenMapLeaf`: callers
/// that collect objects skip those.
pub fn visit_new<E>(
    store: &dyn ObjectStore,
    root: &Hash,
    seen: &mut HashSet<Hash>,
    f: &mut dyn FnMut(Hash, ObjectKind) -> Result<(), E>,
) -> Result<(), VisitError<E>> {
    // Whether `h` is new (then `new` was reported), else `old` was (if any).
    let node = |h: &Hash, seen: &mut HashSet<Hash>, f: &mut dyn FnMut(Hash, ObjectKind) -> Result<(), E>, new, old: Option<ObjectKind>| {
        if !seen.insert(*h) {
            if let Some(old) = old {
                f(*h, old).map_err(VisitError::Visitor)?;
            }
            return Ok(false);
        }
        f(*h, new).map_err(VisitError::Visitor)?;
        Ok(true)
    };
    if !node(root, seen, f, ObjectKind::Node, None)? {
        return Ok(());
    }
    let tree: TreeRoot = node::get_node(store, root).map_err(VisitError::Node)?;
    for (_, leaf_hash) in &tree.leaves {
        if !node(leaf_hash, seen, f, ObjectKind::Node, None)? {
            continue;
        }
        let leaf: InodeLeaf = node::get_node(store, leaf_hash).map_err(VisitError::Node)?;
        for (_, record) in &leaf.inodes {
            let StoredContent::File { map: Some(map_root), .. } = &record.content else { continue };
            if !node(map_root, seen, f, ObjectKind::Map, Some(ObjectKind::SeenMap))? {
                continue;
            }
            let map: MapRoot = node::get_node(store, map_root).map_err(VisitError::Node)?;
            for map_leaf in map.leaves.iter().flatten() {
                if !node(map_leaf, seen, f, ObjectKind::MapLeaf, Some(ObjectKind::SeenMapLeaf))? {
                    continue;
                }
                let blocks: MapLeaf = node::get_node(store, map_leaf).map_err(VisitError::Node)?;
                for (_, h) in blocks.blocks {
                    f(h, ObjectKind::Block).map_err(VisitError::Visitor)?;
                }
            }
        }
    }
    Ok(())
}

/// Lists everything reachable from `root`. Block maps whose root is in `skip` are not
/// descended into (GC passes what earlier branches already marked).
pub fn list(store: &dyn ObjectStore, root: &Hash, skip: Option<&HashSet<Hash>>) -> Listing {
    let mut out = Listing::default();
    out.nodes.push(*root);
    let tree: TreeRoot = match node::get_node(store, root) {
        Ok(t) => t,
        Err(e) => {
            out.broken.push(BrokenNode { hash: *root, path: "/".into(), offset: None, error: e.to_string() });
            return out;
        }
    };
    let mut records = HashMap::new();
    for (leaf_no, leaf_hash) in &tree.leaves {
        out.nodes.push(*leaf_hash);
        match node::get_node::<InodeLeaf>(store, leaf_hash) {
            Ok(leaf) => records.extend(leaf.inodes),
            Err(e) => out.broken.push(BrokenNode {
                hash: *leaf_hash,
                path: format!("<inodes {}..{}>", leaf_no * node::INODE_LEAF_SPAN, (leaf_no + 1) * node::INODE_LEAF_SPAN),
                offset: None,
                error: e.to_string(),
            }),
        }
    }
    let paths = paths(&records);
    let mut inos: Vec<_> = records.keys().copied().collect();
    inos.sort_unstable();
    for ino in inos {
        let StoredContent::File { size, map: Some(map_root) } = &records[&ino].content else { continue };
        let path = paths.get(&ino).cloned().unwrap_or_else(|| format!("<inode {ino}>"));
        if skip.is_some_and(|s| s.contains(map_root)) {
            continue;
        }
        let mut file = FileBlocks { ino, path, size: *size, blocks: Vec::new() };
        list_map(store, map_root, &mut file, &mut out);
        out.files.push(file);
    }
    out
}

fn list_map(store: &dyn ObjectStore, map_root: &Hash, file: &mut FileBlocks, out: &mut Listing) {
    out.nodes.push(*map_root);
    let broken = |hash: Hash, offset: Option<u64>, e: NodeError| BrokenNode { hash, path: file.path.clone(), offset, error: e.to_string() };
    let map: MapRoot = match node::get_node(store, map_root) {
        Ok(m) => m,
        Err(e) => return out.broken.push(broken(*map_root, None, e)),
    };
    for (leaf_no, leaf_hash) in map.leaves.iter().enumerate() {
        let Some(leaf_hash) = leaf_hash else { continue };
        out.nodes.push(*leaf_hash);
        match node::get_node::<MapLeaf>(store, leaf_hash) {
            Ok(leaf) => file.blocks.extend(leaf.blocks.into_iter().map(|(i, h)| ((leaf_no * MAP_LEAF_BLOCKS) as u64 + i as u64, h))),
            Err(e) => {
                let offset = (leaf_no * MAP_LEAF_BLOCKS * BLOCK_SIZE) as u64;
                out.broken.push(broken(*leaf_hash, Some(offset), e))
            }
        }
    }
}

/// Path of every inode reachable from the root directory (first name found for links).
fn paths(records: &HashMap<u64, node::InodeRecord>) -> BTreeMap<u64, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![(ROOT_INO, String::new())];
    while let Some((ino, path)) = stack.pop() {
        if out.contains_key(&ino) {
            continue;
        }
        out.insert(ino, if path.is_empty() { "/".to_string() } else { path.clone() });
        if let Some(StoredContent::Dir { entries, .. }) = records.get(&ino).map(|r| &r.content) {
            for (name, child) in entries {
                stack.push((*child, format!("{path}/{}", String::from_utf8_lossy(name))));
            }
        }
    }
    out
}
