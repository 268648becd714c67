//! What holds the store's space: the free bytes of the filesystem under `data/`
//! (statvfs), whether that is too little for the committer to write a commit, and the
//! bytes allocated to packs, the index, the catalog and each branch's intent log.
//! Cheap (a statvfs and a directory walk, no pack reads), so `status` can always show
//! it, on a full disk above all.
//!
//! It also owns the emergency reserve: `data/reserve`, a file of [`RESERVE_BYTES`] the
//! store keeps while there is room and gives back when the disk is full, so that the
//! verbs that free space (`branch delete`, `gc`) have room for their own small writes
//! (the servers' state file, a catalog transaction, GC's index transaction) on a disk
//! that postgres filled to the last byte. CockroachDB keeps an "emergency ballast" file
//! for the same reason.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use pgbranch_fs::block::BLOCK_SIZE;
use pgbranch_fs::catalog::BranchRecord;
use pgbranch_fs::sys::statvfs;

use crate::api::{LogSpace, StoreSpace};

/// Below this many free bytes the store counts as full: a branch at the writers' dirty
/// limit (4 x the soft limit) could not be committed into a new pack. Below it, writes
/// that grow a file get ENOSPC, writes inside a file's size go on
/// ([`pgbranch_fs::space`]).
pub const FULL_MARGIN: u64 = super::DIRTY_SOFT_LIMIT * 4 * BLOCK_SIZE as u64;

/// The size of the emergency reserve.
pub const RESERVE_BYTES: u64 = 32 << 20;

fn reserve_path(data: &Path) -> PathBuf {
    data.join("reserve")
}

/// Creates the reserve if it is missing and the disk has room for it and still is not
/// full afterwards. Returns whether it created it.
pub fn keep_reserve(data: &Path) -> std::io::Result<bool> {
    let path = reserve_path(data);
    if path.exists() {
        return Ok(false);
    }
    let free = statvfs(data)?.available_bytes;
    if free < FULL_MARGIN + 2 * RESERVE_BYTES {
        return Ok(false);
    }
    // Written (not fallocated, not sparse) under a temporary name, then renamed: a
    // crash leaves either no reserve or a whole one, and a leftover temporary is
    // replaced next time.
    let tmp = data.join("reserve.tmp");
    let written = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        let zeros = vec![0u8; 1 << 20];
        for _ in 0..RESERVE_BYTES / zeros.len() as u64 {
            f.write_all(&zeros)?;
        }
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map(|()| true)
}

/// Gives the reserve back to the filesystem if the disk is full. Returns whether it did.
pub fn release_reserve_if_full(data: &Path) -> std::io::Result<bool> {
    let path = reserve_path(data);
    if !path.exists() || statvfs(data)?.available_bytes >= FULL_MARGIN {
        return Ok(false);
    }
    std::fs::remove_file(&path)?;
    Ok(true)
}

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
    let fs = statvfs(data)?;
    let (fs_total_bytes, fs_free_bytes) = (fs.total_bytes, fs.available_bytes);
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
    let reserve_bytes = allocated(&reserve_path(data));
    let logs_bytes: u64 = intent_logs.iter().map(|l| l.bytes).sum();
    let other_bytes = allocated(data).saturating_sub(packs_bytes + index_bytes + catalog_bytes + logs_bytes + reserve_bytes);
    Ok(StoreSpace {
        fs_total_bytes,
        fs_free_bytes,
        full: fs_free_bytes < FULL_MARGIN,
        full_margin_bytes: FULL_MARGIN,
        packs_bytes,
        index_bytes,
        catalog_bytes,
        intent_logs,
        reserve_bytes,
        other_bytes,
    })
}
