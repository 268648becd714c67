//! The catalog: the durable list of branches and snapshots and their head roots.
//!
//! One redb table maps a name to its [`BranchRecord`] (tables and record encoding in
//! `format::catalog`). Updating a head is one redb transaction, so after a crash every
//! head is either its old or its new root.

use std::path::Path;

use redb::{Database, ReadableTable};
use serde::{Deserialize, Serialize};

use crate::block::Hash;
use crate::format::catalog::{decode_record, encode_record, BRANCHES, META, META_NEXT_ID};

/// Persisted in catalog records; tags in `format::tags`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Branch,
    Snapshot,
}

impl Kind {
    pub fn as_str(&self) -> &'static str {
        match self {
            Kind::Branch => "branch",
            Kind::Snapshot => "snapshot",
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BranchRecord {
    pub name: String,
    /// Stable identity (names its intent-log directory).
    pub id: u64,
    pub kind: Kind,
    pub root: Hash,
    /// First intent-log segment not folded into `root`.
    pub log_seq: u64,
    pub parent: Option<String>,
    pub created_unix: i64,
}

#[derive(Debug, thiserror::Error)]
#[error("catalog error: {0}")]
pub struct CatalogError(String);

fn cerr(e: impl std::fmt::Display) -> CatalogError {
    CatalogError(e.to_string())
}

fn decode(name: &str, bytes: &[u8]) -> Result<BranchRecord, CatalogError> {
    decode_record(bytes).map_err(|e| CatalogError(format!("the record of '{name}' in catalog.redb: {e}")))
}

pub struct Catalog {
    db: Database,
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let db = redb::Builder::new().set_cache_size(4 << 20).create(path).map_err(cerr)?;
        let txn = db.begin_write().map_err(cerr)?;
        txn.open_table(BRANCHES).map_err(cerr)?;
        txn.open_table(META).map_err(cerr)?;
        txn.commit().map_err(cerr)?;
        Ok(Catalog { db })
    }

    pub fn list(&self) -> Result<Vec<BranchRecord>, CatalogError> {
        let txn = self.db.begin_read().map_err(cerr)?;
        let table = txn.open_table(BRANCHES).map_err(cerr)?;
        let mut out = Vec::new();
        for item in table.iter().map_err(cerr)? {
            let (k, v) = item.map_err(cerr)?;
            out.push(decode(k.value(), v.value())?);
        }
        Ok(out)
    }

    pub fn get(&self, name: &str) -> Result<Option<BranchRecord>, CatalogError> {
        let txn = self.db.begin_read().map_err(cerr)?;
        let table = txn.open_table(BRANCHES).map_err(cerr)?;
        let found = table.get(name).map_err(cerr)?;
        found.map(|v| decode(name, v.value())).transpose()
    }

    /// Allocates an id for a new branch.
    pub fn next_id(&self) -> Result<u64, CatalogError> {
        let txn = self.db.begin_write().map_err(cerr)?;
        let id = {
            let mut meta = txn.open_table(META).map_err(cerr)?;
            let id = meta.get(META_NEXT_ID).map_err(cerr)?.map_or(1, |v| v.value());
            meta.insert(META_NEXT_ID, id + 1).map_err(cerr)?;
            id
        };
        txn.commit().map_err(cerr)?;
        Ok(id)
    }

    pub fn put(&self, rec: &BranchRecord) -> Result<(), CatalogError> {
        let bytes = encode_record(rec).map_err(cerr)?;
        let txn = self.db.begin_write().map_err(cerr)?;
        txn.open_table(BRANCHES).map_err(cerr)?.insert(rec.name.as_str(), bytes.as_slice()).map_err(cerr)?;
        txn.commit().map_err(cerr)
    }

    pub fn remove(&self, name: &str) -> Result<(), CatalogError> {
        let txn = self.db.begin_write().map_err(cerr)?;
        txn.open_table(BRANCHES).map_err(cerr)?.remove(name).map_err(cerr)?;
        txn.commit().map_err(cerr)
    }
}
