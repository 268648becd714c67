//! Replacing a small file in the store so that a crash leaves the old or the new
//! contents, never a mix: write a temporary file beside it, fsync it, rename it over
//! the target, fsync the directory (which makes the rename itself durable).

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use anyhow::{Context, Result};

/// Writes `bytes` to `path` atomically and durably, with permission bits `mode` (less
/// the umask). The temporary file, made with `mode` from the start, is named after the
/// target, this process and a counter, so concurrent writers never share one.
pub(crate) fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    put_atomic(path, bytes, mode, Put::Replace).map(|_| ())
}

/// Like [`write_atomic`], but only if `path` does not exist yet: of two processes that
/// race to create it, exactly one wins and the other's bytes are discarded (the file is
/// linked into place, which fails if the name exists, where a rename would replace it).
/// Returns whether this call created it.
pub(crate) fn create_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<bool> {
    put_atomic(path, bytes, mode, Put::CreateNew)
}

enum Put {
    Replace,
    CreateNew,
}

fn put_atomic(path: &Path, bytes: &[u8], mode: u32, how: Put) -> Result<bool> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().with_context(|| format!("{} is not a file name", path.display()))?;
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let tmp = path.with_file_name(format!(".{}.tmp-{}-{n}", name.to_string_lossy(), std::process::id()));
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()
    };
    write()
        .inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })
        .with_context(|| format!("writing {}", tmp.display()))?;
    let created = match how {
        Put::Replace => std::fs::rename(&tmp, path)
            .inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })
            .map(|()| true)
            .with_context(|| format!("replacing {} with {}", path.display(), tmp.display()))?,
        Put::CreateNew => {
            let linked = std::fs::hard_link(&tmp, path);
            let _ = std::fs::remove_file(&tmp);
            match linked {
                Ok(()) => true,
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
                Err(e) => return Err(e).with_context(|| format!("creating {} from {}", path.display(), tmp.display())),
            }
        }
    };
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .with_context(|| format!("syncing directory {} after writing {}", dir.display(), path.display()))?;
    Ok(created)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn replaces_the_file_with_the_mode_and_leaves_no_temporary() {
        let dir = std::env::temp_dir().join(format!("pgbranch-files-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("state.json");
        std::fs::write(&path, "old").unwrap();
        write_atomic(&path, b"new", 0o600).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new");
        assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn of_many_racing_creators_exactly_one_wins_and_all_see_its_bytes() {
        let dir = std::env::temp_dir().join(format!("pgbranch-files-race-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("mask.key");
        let won: Vec<bool> = std::thread::scope(|s| {
            let racers: Vec<_> = (0..8)
                .map(|i| {
                    let path = path.clone();
                    s.spawn(move || create_atomic(&path, format!("key {i}").as_bytes(), 0o600).unwrap())
                })
                .collect();
            racers.into_iter().map(|r| r.join().unwrap()).collect()
        });
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "exactly one creator wins: {won:?}");
        let winner = won.iter().position(|w| *w).unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), format!("key {winner}"));
        assert!(!create_atomic(&path, b"late", 0o600).unwrap(), "an existing file is kept");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1, "no temporary file is left");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
