//! What holds the store's space: the free bytes of the filesystem under `data/`
//! (statvfs), whether that is too little for the committer to write a commit, and the
//! bytes allocated to packs, the index, the catalog and each branch's intent log.
//! Cheap (a statvfs and a directory walk, no pack reads), so `status` can always show
//! it, on a full disk above all.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use pgbranch_fs::block::BLOCK_SIZE;
use pgbranch_fs::catalog::BranchRecord;

use crate::api::{LogSpace, StoreSpace};

/// Below this many free bytes the store counts as full: a branch at the writers' dirty
/// limit (4 x the soft limit) could not be committed into a new pack.
pub const FULL_MARGIN: u64 = super::DIRTY_SOFT_LIMIT * 4 * BLOCK_SIZE as u64;

/// Bytes allocated to a file, or to everything below a directory.
fn allocated(path: &Path) -> u64 {
    let Ok(meta) = std::fs::symlink_metadata(path) else { return 0 };
    if !meta.is_dir() {
        return meta.blocks() * 512;
    }
    let Ok(entries) = std::fs::read_dir(path) else { return 0 };
    entries.flatten().map(|e| allocated(&e.path())).sum()
}

/// Measures the store whose data directory is `data`, naming logs after `records`.
pub fn measure(data: &Path, records: &[BranchRecord]) -> std::io::Result<StoreSpace> {
    let (fs_total_bytes, fs_free_bytes) = crate::sys::statvfs(data)?;
    let names: HashMap<String, &str> = records.iter().map(|r| (r.id.to_string(), r.name.as_str())).collect();
    let mut intent_logs: Vec<LogSpace> = std::fs::read_dir(data.join("logs"))
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| {
            let id = e.file_name().to_string_lossy().to_string();
            let branch = names.get(&id).map_or_else(|| format!("(none: id {id})"), |n| n.to_string());
            LogSpace { branch, bytes: allocated(&e.path()) }
        })
        .collect();
    intent_logs.sort_by(|a, b| b.bytes.cmp(&a.bytes).then_with(|| a.branch.cmp(&b.branch)));
    let packs_bytes = allocated(&data.join("packs"));
    let index_bytes = allocated(&data.join("index.redb"));
    let catalog_bytes = allocated(&data.join("catalog.redb"));
    let logs_bytes: u64 = intent_logs.iter().map(|l| l.bytes).sum();
    let other_bytes = allocated(data).saturating_sub(packs_bytes + index_bytes + catalog_bytes + logs_bytes);
    Ok(StoreSpace {
        fs_total_bytes,
        fs_free_bytes,
        full: fs_free_bytes < FULL_MARGIN,
        full_margin_bytes: FULL_MARGIN,
        packs_bytes,
        index_bytes,
        catalog_bytes,
        intent_logs,
        other_bytes,
    })
}
