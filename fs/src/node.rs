//! The persisted Merkle-tree node formats.
//!
//! A branch head is the hash of a [`TreeRoot`], which lists the hashes of
//! [`InodeLeaf`] nodes, each holding up to [`INODE_LEAF_SPAN`] consecutive inode numbers.
//! A regular file's record names the root of its block map ([`MapRoot`]), whose
//! [`MapLeaf`] nodes list the block hashes of [`MAP_LEAF_BLOCKS`] consecutive blocks.
//! Unchanged nodes keep their hashes, so a commit writes only the paths it changed and
//! every branch shares every node it has not changed.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::block::Hash;
use crate::format::node::{decode_node, encode_node, NodeFormat};
use crate::store::{ObjectStore, StoreError};

/// Blocks per block-map leaf: 512 x 8 KiB = 4 MiB of file per leaf.
pub const MAP_LEAF_BLOCKS: usize = 512;
/// Inode numbers per inode-table leaf.
pub const INODE_LEAF_SPAN: u64 = 128;

pub const ROOT_INO: u64 = 1;

/// Seconds and nanoseconds since the epoch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Time {
    pub secs: i64,
    pub nanos: u32,
}

impl Time {
    pub fn now() -> Time {
        let d = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Time { secs: d.as_secs() as i64, nanos: d.subsec_nanos() }
    }
}

/// POSIX attributes of an inode. `mode` includes the file-type bits.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attr {
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub rdev: u32,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
}

/// What an inode holds, as persisted (tags in `format::tags`).
#[derive(Clone, Debug)]
pub enum StoredContent {
    File {
        size: u64,
        map: Option<Hash>,
    },
    Dir {
        parent: u64,
        entries: BTreeMap<Vec<u8>, u64>,
    },
    Symlink {
        target: Vec<u8>,
    },
    /// fifo, socket or device node: everything is in the attributes.
    Special,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct InodeRecord {
    pub attr: Attr,
    pub content: StoredContent,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct InodeLeaf {
    pub inodes: Vec<(u64, InodeRecord)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct TreeRoot {
    pub format: u32,
    pub next_ino: u64,
    pub leaves: Vec<(u64, Hash)>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MapRoot {
    pub leaves: Vec<Option<Hash>>,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct MapLeaf {
    /// (block index within the leaf, block hash); absent indices are holes.
    pub blocks: Vec<(u16, Hash)>,
}

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("tree node {0} cannot be parsed: {1}")]
    Malformed(Hash, String),
}

/// Encodes a node (`format::node`) and puts it in the store, returning its hash.
pub fn put_node<T: NodeFormat>(store: &dyn ObjectStore, node: &T) -> Result<Hash, StoreError> {
    let bytes = encode_node(node)?;
    let hash = Hash::of(&bytes);
    store.put(&hash, &bytes)?;
    Ok(hash)
}

/// Reads a node and checks its kind tag, version and body.
pub fn get_node<T: NodeFormat>(store: &dyn ObjectStore, hash: &Hash) -> Result<T, NodeError> {
    let bytes = store.get(hash)?;
    decode_node(&bytes).map_err(|e| NodeError::Malformed(*hash, e.to_string()))
}
