//! The numeric tag of every variant of every persisted enum, and of every tree node
//! kind. These values are on disk: never change or reuse one; add new ones.

// Tree node kinds: the first byte of every tree node object (`format::node`).
pub const NODE_TREE_ROOT: u8 = 1;
pub const NODE_INODE_LEAF: u8 = 2;
pub const NODE_MAP_ROOT: u8 = 3;
pub const NODE_MAP_LEAF: u8 = 4;

// `node::StoredContent`, inside an inode record.
pub const CONTENT_FILE: u8 = 0;
pub const CONTENT_DIR: u8 = 1;
pub const CONTENT_SYMLINK: u8 = 2;
pub const CONTENT_SPECIAL: u8 = 3;

// `op::Op`: the first byte of every intent-log record body.
pub const OP_WRITE: u8 = 1;
pub const OP_CREATE: u8 = 2;
pub const OP_LINK: u8 = 3;
pub const OP_UNLINK: u8 = 4;
pub const OP_RENAME: u8 = 5;
pub const OP_SET_ATTR: u8 = 6;
pub const OP_FALLOCATE: u8 = 7;
pub const OP_SET_XATTR: u8 = 8;
pub const OP_REMOVE_XATTR: u8 = 9;
pub const OP_WRITE_BLOCKS: u8 = 10;

// `op::NewKind`, inside a Create op.
pub const NEW_FILE: u8 = 0;
pub const NEW_DIR: u8 = 1;
pub const NEW_SYMLINK: u8 = 2;
pub const NEW_SPECIAL: u8 = 3;

// `catalog::Kind`, inside a catalog record.
pub const KIND_BRANCH: u8 = 0;
pub const KIND_SNAPSHOT: u8 = 1;

// Object payload codecs: the first byte of every stored payload (`block::encode`).
pub const CODEC_RAW: u8 = 0;
pub const CODEC_LZ4: u8 = 1;
