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
use serde::Serialize;

/// Below this many free bytes the store counts as full: a branch at the writers' dirty
/// limit (4 x the soft limit) could not be committed into a new pack.
pub const FULL_MARGIN: u64 = super::DIRTY_SOFT_LIMIT * 4 * BLOCK_SIZE as u64;

#[derive(Debug, Serialize)]
pub struct StoreSpace {
    /// Size of the filesystem holding the store's data.
    pub fs_total_bytes: u64,
    /// Free bytes on it, as an unprivileged user may use them.
    pub fs_free_bytes: u64,
    /// Free bytes below [`FULL_MARGIN`]: commits may fail.
    pub full: bool,
    pub full_margin_bytes: u64,
    /// Bytes allocated on disk (not apparent sizes) to each part of the store.
    pub packs_bytes: u64,
    pub index_bytes: u64,
    pub catalog_bytes: u64,
    pub intent_logs: Vec<LogSpace>,
    /// Everything else under `data/` (servers.json, keys, stale files).
    pub other_bytes: u64,
}

#[derive(Debug, Serialize)]
pub struct LogSpace {
    /// The branch owning the log, or `(none: id N)` for a log no branch names.
    pub branch: String,
    pub bytes: u64,
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

/// statvfs of `path`: (total, available to unprivileged users) in bytes.
fn statvfs(path: &Path) -> std::io::Result<(u64, u64)> {
    let c =
        std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: all-zero is a valid statvfs (plain integers).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs that outlives the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok((st.f_blocks * st.f_frsize, st.f_bavail * st.f_frsize))
}

/// Measures the store whose data directory is `data`, naming logs after `records`.
pub fn measure(data: &Path, records: &[BranchRecord]) -> std::io::Result<StoreSpace> {
    let (fs_total_bytes, fs_free_bytes) = statvfs(data)?;
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
