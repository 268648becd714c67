//! The object index (`index.redb`): hash → where the object's payload is, and how far
//! into the packs the index is complete.
//!
//! `objects` — key: the 32 hash bytes. Value: redb's fixed-width tuple `(pack u32,
//! payload offset u64, payload length u32)`, 16 bytes, each little-endian. The offset
//! is absolute in the pack file (past its header and the record's 36-byte header).
//!
//! `indexed_upto` (store format 2) — one row, key [`INDEXED_UPTO_KEY`]: `(pack u32,
//! offset u64)`. Every record a flush made durable before that position is in
//! `objects`; records at or past it are found by scanning the packs on open (see
//! `store::index`). A store of format 1 has no row: it indexed at every flush.

use redb::TableDefinition;

pub const OBJECTS: TableDefinition<[u8; 32], (u32, u64, u32)> = TableDefinition::new("objects");
pub const INDEXED_UPTO: TableDefinition<u8, (u32, u64)> = TableDefinition::new("indexed_upto");
pub const INDEXED_UPTO_KEY: u8 = 0;
