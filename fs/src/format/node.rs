//! Tree node encoding: `kind tag (u8) | version (u8) | postcard body`.
//!
//! The tag names the node's type (so a map leaf can never be read as an inode leaf),
//! the version its layout. A [`TreeRoot`] also carries the tree format in its body,
//! which is read and checked. Node hashes are blake3 of these bytes, tag included.

use serde::de::{DeserializeOwned, SeqAccess};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::tags::*;
use super::{check_version, postcard_after, postcard_exact, tagged, FormatError};
use crate::block::Hash;
use crate::node::{InodeLeaf, MapLeaf, MapRoot, StoredContent, TreeRoot};

/// The tree format a [`TreeRoot`] names in its `format` field.
pub const TREE_FORMAT: u32 = 1;

/// A persisted tree node type: its tag and the newest layout version this build reads.
pub trait NodeFormat: Serialize + DeserializeOwned {
    const TAG: u8;
    const VERSION: u8;
    const NAME: &'static str;
    /// Checks made after the body decodes.
    fn check(&self) -> Result<(), FormatError> {
        Ok(())
    }
}

impl NodeFormat for TreeRoot {
    const TAG: u8 = NODE_TREE_ROOT;
    const VERSION: u8 = 1;
    const NAME: &'static str = "tree root";
    fn check(&self) -> Result<(), FormatError> {
        check_version("tree", self.format, TREE_FORMAT)
    }
}

impl NodeFormat for InodeLeaf {
    const TAG: u8 = NODE_INODE_LEAF;
    const VERSION: u8 = 1;
    const NAME: &'static str = "inode leaf";
}

impl NodeFormat for MapRoot {
    const TAG: u8 = NODE_MAP_ROOT;
    const VERSION: u8 = 1;
    const NAME: &'static str = "block map root";
}

impl NodeFormat for MapLeaf {
    const TAG: u8 = NODE_MAP_LEAF;
    const VERSION: u8 = 1;
    const NAME: &'static str = "block map leaf";
}

fn kind_name(tag: u8) -> &'static str {
    match tag {
        NODE_TREE_ROOT => TreeRoot::NAME,
        NODE_INODE_LEAF => InodeLeaf::NAME,
        NODE_MAP_ROOT => MapRoot::NAME,
        NODE_MAP_LEAF => MapLeaf::NAME,
        _ => "unknown node kind",
    }
}

pub fn encode_node<T: NodeFormat>(node: &T) -> Result<Vec<u8>, FormatError> {
    postcard_after(vec![T::TAG, T::VERSION], node, T::NAME)
}

pub fn decode_node<T: NodeFormat>(bytes: &[u8]) -> Result<T, FormatError> {
    match bytes {
        [tag, version, body @ ..] if *tag == T::TAG => {
            check_version(T::NAME, u32::from(*version), u32::from(T::VERSION))?;
            let node: T = postcard_exact(body, T::NAME)?;
            node.check()?;
            Ok(node)
        }
        [tag, ..] => Err(FormatError::malformed(T::NAME, format!("found node tag {tag} ({}), expected {}", kind_name(*tag), T::TAG))),
        [] => Err(FormatError::malformed(T::NAME, "empty object")),
    }
}

impl Serialize for StoredContent {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            StoredContent::File { size, map } => tagged::serialize(s, CONTENT_FILE, &(size, map)),
            StoredContent::Dir { parent, entries } => tagged::serialize(s, CONTENT_DIR, &(parent, entries)),
            StoredContent::Symlink { target } => tagged::serialize(s, CONTENT_SYMLINK, target),
            StoredContent::Special => tagged::serialize(s, CONTENT_SPECIAL, &()),
        }
    }
}

impl tagged::TaggedEnum for StoredContent {
    const NAME: &'static str = "inode content";
    fn decode_variant<'de, A: SeqAccess<'de>>(tag: u8, seq: &mut A) -> Result<Self, A::Error> {
        Ok(match tag {
            CONTENT_FILE => {
                let (size, map): (u64, Option<Hash>) = tagged::payload(seq)?;
                StoredContent::File { size, map }
            }
            CONTENT_DIR => {
                let (parent, entries) = tagged::payload(seq)?;
                StoredContent::Dir { parent, entries }
            }
            CONTENT_SYMLINK => StoredContent::Symlink { target: tagged::payload(seq)? },
            CONTENT_SPECIAL => {
                let () = tagged::payload(seq)?;
                StoredContent::Special
            }
            _ => return Err(tagged::unknown(Self::NAME, tag)),
        })
    }
}

impl<'de> Deserialize<'de> for StoredContent {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        tagged::deserialize(d)
    }
}
