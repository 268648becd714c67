//! Mutations of a branch: the vocabulary of the intent log.
//!
//! Every change the filesystem makes to a branch is first expressed as an [`Op`] that
//! carries every value it needs (inode numbers, timestamps, owners), so that applying
//! the same ops to the same committed tree always yields the same state: that is what
//! makes replaying the intent log after a crash exact.

use serde::{Deserialize, Serialize};

use crate::block::Hash;
use crate::node::Time;

/// Persisted in Create ops; tags in `format::tags`, encoding in `format::log`.
#[derive(Clone, Debug)]
pub enum NewKind {
    File,
    Dir,
    Symlink(Vec<u8>),
    /// fifo, socket or device node: the type is in `mode`.
    Special,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub atime: Option<Time>,
    pub mtime: Option<Time>,
    pub ctime: Option<Time>,
}

/// Persisted in the intent log; tags in `format::tags`, encoding in `format::log`.
#[derive(Clone, Debug)]
pub enum Op {
    Create {
        parent: u64,
        name: Vec<u8>,
        ino: u64,
        kind: NewKind,
        mode: u32,
        uid: u32,
        gid: u32,
        rdev: u32,
        now: Time,
    },
    Link {
        ino: u64,
        parent: u64,
        name: Vec<u8>,
        now: Time,
    },
    Unlink {
        parent: u64,
        name: Vec<u8>,
        dir: bool,
        now: Time,
    },
    Rename {
        parent: u64,
        name: Vec<u8>,
        new_parent: u64,
        new_name: Vec<u8>,
        flags: u32,
        now: Time,
    },
    SetAttr {
        ino: u64,
        attr: SetAttr,
        now: Time,
    },
    Write {
        ino: u64,
        offset: u64,
        data: Vec<u8>,
        now: Time,
    },
    /// A large write whose whole blocks were stored before it was logged: `head`
    /// bytes at `offset`, then one block per entry of `blocks` (its hash; None for a
    /// block of zeros) starting at the block boundary `offset + head.len()`, then
    /// `tail` bytes. Only the hashes are in the log, so each byte is written once; the
    /// blocks are durable in the store before any fsync covering this op returns.
    WriteBlocks {
        ino: u64,
        offset: u64,
        head: Vec<u8>,
        blocks: Vec<Option<Hash>>,
        tail: Vec<u8>,
        now: Time,
    },
    Fallocate {
        ino: u64,
        offset: u64,
        len: u64,
        mode: i32,
        now: Time,
    },
    SetXattr {
        ino: u64,
        name: Vec<u8>,
        value: Vec<u8>,
        flags: i32,
        now: Time,
    },
    RemoveXattr {
        ino: u64,
        name: Vec<u8>,
        now: Time,
    },
}
