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
use crate::format::catalog::{decode_point, decode_record, encode_point, encode_record, BRANCHES, HISTORY, META, META_NEXT_ID, RETENTION};
use crate::history::{self, AppPosition, Point};
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
            txn.open_table(HISTORY)?;
            txn.open_table(RETENTION)?;
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
        self.put_head(rec, None).map(|_| ())
    }

    /// Writes `rec` (a new head) and, when `point` is given, records it in the branch's
    /// history and thins that history for a window of `window_secs`: one transaction,
    /// so a crash leaves the old head and history or the new ones. Returns an estimate
    /// of the bytes the thinning made garbage: dropping a point frees the blocks of its
    /// that the point after it replaced, so each dropped point counts the bytes its
    /// surviving successor changed.
    pub fn put_head(&self, rec: &BranchRecord, point: Option<(&Point, u64)>) -> Result<u64, CatalogError> {
        let bytes = encode_record(rec).map_err(|e| CatalogError(format!("encoding the record of '{}': {e}", rec.name)))?;
        let point = point
            .map(|(p, window)| encode_point(p).map(|b| (p.at_unix_micros, b, window)))
            .transpose()
            .map_err(|e| CatalogError(format!("encoding a history point of '{}': {e}", rec.name)))?;
        Ok(self.db.run(|db| {
            let txn = db.begin_write()?;
            let mut freed = 0u64;
            txn.open_table(BRANCHES)?.insert(rec.name.as_str(), bytes.as_slice())?;
            if let Some((at, value, window)) = &point {
                let mut table = txn.open_table(HISTORY)?;
                table.insert((rec.id, *at), value.as_slice())?;
                let mut times = Vec::new();
                for item in table.range((rec.id, 0)..=(rec.id, u64::MAX))? {
                    times.push(item?.0.value().1);
                }
                let dropped = history::to_drop(&times, *at, *window);
                for t in &dropped {
                    table.remove((rec.id, *t))?;
                }
                for t in &dropped {
                    let successor = table.range((rec.id, *t)..=(rec.id, u64::MAX))?.next().transpose()?;
                    if let Some((k, v)) = successor {
                        freed += decode_point(k.value().1, v.value()).map_or(0, |p| p.changed_bytes);
                    }
                }
            }
            txn.commit()?;
            Ok(freed)
        })?)
    }

    /// Records what the program on branch `id` reported about its point at `at`; a
    /// point thinned away meanwhile is left alone (false).
    pub fn annotate_point(&self, id: u64, at: u64, app: AppPosition) -> Result<bool, CatalogError> {
        let what = |e: crate::format::FormatError| CatalogError(format!("a history point of branch id {id}: {e}"));
        let found = self.db.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(HISTORY)?;
            Ok(table.get((id, at))?.map(|v| v.value().to_vec()))
        })?;
        let Some(bytes) = found else { return Ok(false) };
        let mut point = decode_point(at, &bytes).map_err(what)?;
        point.app = Some(app);
        let value = encode_point(&point).map_err(what)?;
        Ok(self.db.run(|db| {
            let txn = db.begin_write()?;
            let kept = {
                let mut table = txn.open_table(HISTORY)?;
                // Written only where the point still is: thinning may have run between.
                let present = table.get((id, at))?.is_some();
                if present {
                    table.insert((id, at), value.as_slice())?;
                }
                present
            };
            txn.commit()?;
            Ok(kept)
        })?)
    }

    /// The retained points of branch `id`, oldest first.
    pub fn history(&self, id: u64) -> Result<Vec<Point>, CatalogError> {
        let raw = self.db.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(HISTORY)?;
            let mut out = Vec::new();
            for item in table.range((id, 0)..=(id, u64::MAX))? {
                let (k, v) = item?;
                out.push((k.value().1, v.value().to_vec()));
            }
            Ok(out)
        })?;
        raw.iter()
            .map(|(at, bytes)| {
                decode_point(*at, bytes).map_err(|e| CatalogError(format!("a history point of branch id {id} in catalog.redb: {e}")))
            })
            .collect()
    }

    /// The newest retained point of branch `id`, read alone (the committer asks after
    /// every commit; a month of history is thousands of points).
    pub fn newest_point(&self, id: u64) -> Result<Option<Point>, CatalogError> {
        let raw = self.db.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(HISTORY)?;
            let newest = table.range((id, 0)..=(id, u64::MAX))?.next_back().transpose()?;
            Ok(newest.map(|(k, v)| (k.value().1, v.value().to_vec())))
        })?;
        raw.map(|(at, bytes)| {
            decode_point(at, &bytes).map_err(|e| CatalogError(format!("a history point of branch id {id} in catalog.redb: {e}")))
        })
        .transpose()
    }

    /// Every retained root of every branch (GC marks from them).
    pub fn history_roots(&self) -> Result<Vec<Hash>, CatalogError> {
        let raw = self.db.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(HISTORY)?;
            let mut out = Vec::new();
            for item in table.iter()? {
                let (k, v) = item?;
                out.push((k.value(), v.value().to_vec()));
            }
            Ok(out)
        })?;
        raw.iter()
            .map(|((id, at), bytes)| {
                decode_point(*at, bytes).map(|p| p.root).map_err(|e| CatalogError(format!("a history point of branch id {id}: {e}")))
            })
            .collect()
    }

    /// The retention window of branch `id` if one was set for it.
    pub fn retention(&self, id: u64) -> Result<Option<u64>, CatalogError> {
        Ok(self.db.run(|db| {
            let txn = db.begin_read()?;
            let table = txn.open_table(RETENTION)?;
            let found = table.get(id)?.map(|v| v.value());
            Ok(found)
        })?)
    }

    /// Sets (or, with None, clears back to the store's default) the window of `id`.
    pub fn set_retention(&self, id: u64, window_secs: Option<u64>) -> Result<(), CatalogError> {
        Ok(self.db.run(|db| {
            let txn = db.begin_write()?;
            {
                let mut table = txn.open_table(RETENTION)?;
                match window_secs {
                    Some(w) => table.insert(id, w).map(|_| ())?,
                    None => table.remove(id).map(|_| ())?,
                }
            }
            Ok(txn.commit()?)
        })?)
    }

    /// Forgets branch `name` (id `id`) with its history and retention, in one transaction.
    pub fn remove(&self, name: &str, id: u64) -> Result<(), CatalogError> {
        Ok(self.db.run(|db| {
            let txn = db.begin_write()?;
            txn.open_table(BRANCHES)?.remove(name)?;
            forget_history(&txn, id)?;
            Ok(txn.commit()?)
        })?)
    }

    /// Replaces a branch's record by `rec` (a new id, as `branch reset` makes) and
    /// drops the history of `old_id`, keeping its retention setting: one transaction.
    pub fn replace(&self, rec: &BranchRecord, old_id: u64) -> Result<(), CatalogError> {
        let bytes = encode_record(rec).map_err(|e| CatalogError(format!("encoding the record of '{}': {e}", rec.name)))?;
        Ok(self.db.run(|db| {
            let txn = db.begin_write()?;
            txn.open_table(BRANCHES)?.insert(rec.name.as_str(), bytes.as_slice())?;
            let window = txn.open_table(RETENTION)?.get(old_id)?.map(|v| v.value());
            forget_history(&txn, old_id)?;
            if let Some(w) = window {
                txn.open_table(RETENTION)?.insert(rec.id, w)?;
            }
            Ok(txn.commit()?)
        })?)
    }
}

fn forget_history(txn: &redb::WriteTransaction, id: u64) -> Result<(), redb::Error> {
    let mut table = txn.open_table(HISTORY)?;
    let mut times = Vec::new();
    for item in table.range((id, 0)..=(id, u64::MAX))? {
        times.push(item?.0.value().1);
    }
    for t in times {
        table.remove((id, t))?;
    }
    txn.open_table(RETENTION)?.remove(id)?;
    Ok(())
}
