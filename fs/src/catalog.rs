//! The catalog: the durable list of branches and snapshots and their head roots.
//!
//! One redb table maps a name to its [`BranchRecord`] (tables and record encoding in
//! `format::catalog`). Updating a head is one redb transaction, so after a crash every
//! head is either its old or its new root.

// The closures given to `Db::run` return redb's own (large) error; `DbError` boxes it.
#![allow(clippy::result_large_err)]

use std::path::Path;

use redb::ReadableTable;
use serde::{Deserialize, Serialize};

use crate::block::Hash;
use crate::format::catalog::{decode_record, encode_record, BRANCHES, META, META_NEXT_ID};
use crate::redb_file::{Db, DbError};

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

impl From<DbError> for CatalogError {
    fn from(e: DbError) -> CatalogError {
        CatalogError(e.to_string())
    }
}

fn decode(name: &str, bytes: &[u8]) -> Result<BranchRecord, CatalogError> {
    decode_record(bytes).map_err(|e| CatalogError(format!("the record of '{name}' in catalog.redb: {e}")))
}

pub(crate) struct Catalog {
    db: Db,
}

impl Catalog {
    pub fn open(path: &Path) -> Result<Catalog, CatalogError> {
        let db = Db::open(path, 4 << 20)?;
        db.run(|db| {
            let txn = db.begin_write()?;
            txn.open_table(BRANCHES)?;
            txn.open_table(META)?;
            Ok(txn.commit()?)
        })?;
        Ok(Catalog { db })
    }

    pub fn list(&self) -> Result<Vec<BranchRecord>, CatalogError> {
        let raw = self.db.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(BRANCHES)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                out.push((k.value().to_string(), v.value().to_vec()));
            }
            Ok(out)
        })?;
        raw.iter().map(|(name, bytes)| decode(name, bytes)).collect()
    }

    pub fn get(&self, name: &str) -> Result<Option<BranchRecord>, CatalogError> {
        let raw = self.db.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(BRANCHES)?;
            let found = table.get(name)?;
            Ok(found.map(|v| v.value().to_vec()))
        })?;
        raw.map(|bytes| decode(name, &bytes)).transpose()
    }

    /// Allocates an id for a new branch.
    pub fn next_id(&self) -> Result<u64, CatalogError> {
        Ok(self.db.run(|db| {
            let txn = db.begin_write()?;
            let id = {
                let mut meta = txn.open_table(META)?;
                let id = meta.get(META_NEXT_ID)?.map_or(1, |v| v.value());
                meta.insert(META_NEXT_ID, id + 1)?;
                id
            };
            txn.commit()?;
            Ok(id)
        })?)
    }

    pub fn put(&self, rec: &BranchRecord) -> Result<(), CatalogError> {
        let bytes = encode_record(rec).map_err(|e| CatalogError(format!("encoding the record of '{}': {e}", rec.name)))?;
        Ok(self.db.run(|db| {
            let txn = db.begin_write()?;
            txn.open_table(BRANCHES)?.insert(rec.name.as_str(), bytes.as_slice())?;
            Ok(txn.commit()?)
        })?)
    }

    pub fn remove(&self, name: &str) -> Result<(), CatalogError> {
        Ok(self.db.run(|db| {
            let txn = db.begin_write()?;
            txn.open_table(BRANCHES)?.remove(name)?;
            Ok(txn.commit()?)
        })?)
    }
}
