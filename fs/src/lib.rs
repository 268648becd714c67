//! pgbranch-fs: a content-addressed, copy-on-write branch filesystem served over FUSE.
//!
//! Layers, bottom up: [`block`] (hashing, compression), [`pack`] and [`store`] (where
//! objects live), [`node`] (the Merkle tree formats), [`filemap`] and [`tree`] (a
//! branch's live state), [`op`] and [`intent_log`] (durability between commits),
//! [`branch`] and [`catalog`] (branches and their heads), [`redb_file`] (the file
//! under the index and the catalog, durable when it grows), [`repo`] (the whole store:
//! create, snapshot, GC, verify, usage), [`space`] (the margin kept on a nearly full
//! disk), [`sys`] (the libc calls, the crate's only `unsafe`), [`runs`] (external sorting in bounded
//! memory), [`gc`] (GC's plan and its execution) and
//! [`fuse`] (the kernel-facing filesystem).
//! Nothing here knows about postgres.

pub mod block;
pub mod branch;
pub mod catalog;
pub mod commit_signal;
pub(crate) mod filemap;
pub mod format;
pub mod fuse;
pub mod gc;
pub mod history;
pub mod intent_log;
pub mod node;
pub mod op;
pub mod pack;
pub(crate) mod redb_file;
pub mod repo;
pub mod runs;
pub mod space;
pub mod store;
pub mod sys;
pub mod tree;
pub mod walk;
