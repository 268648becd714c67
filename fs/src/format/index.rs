//! The object index (`index.redb`): one table, hash → where the object's payload is.
//!
//! Key: the 32 hash bytes. Value: redb's fixed-width tuple `(pack u32, payload offset
//! u64, payload length u32)`, 16 bytes, each little-endian. The offset is absolute in
//! the pack file (past its header and the record's 36-byte header).

use redb::TableDefinition;

pub const OBJECTS: TableDefinition<[u8; 32], (u32, u64, u32)> = TableDefinition::new("objects");
