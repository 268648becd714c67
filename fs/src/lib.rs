//! pgbranch-fs: a content-addressed, copy-on-write branch filesystem served over FUSE.
//!
//! Layers, bottom up: [`block`] (hashing, compression), [`pack`] and [`store`] (where
//! objects live), [`node`] (the Merkle tree formats), [`filemap`] and [`tree`] (a
//! branch's live state), [`op`] and [`intent_log`] (durability between commits),
//! [`branch`] and [`catalog`] (branches and their heads), [`repo`] (the whole store:
//! create, snapshot, GC, verify, usage), [`gc`] (GC's plan and its execution) and
//! [`fuse`] (the kernel-facing filesystem).
//! Nothing here knows about postgres.

pub mod block;
pub mod branch;
pub mod catalog;
pub mod commit_signal;
pub mod filemap;
pub mod format;
pub mod fuse;
pub mod gc;
pub mod intent_log;
pub mod node;
pub mod op;
pub mod pack;
pub mod repo;
pub mod store;
pub mod tree;
pub mod walk;
