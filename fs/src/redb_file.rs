//! The file under each redb database (the object index, the catalog), and opening one.
//!
//! redb grows its file with `set_len` and then, at commit, writes a header whose layout
//! names the new length, and fsyncs once. On ext4 an fsync first writes the file's
//! dirty pages (the header among them, an overwrite in place) and only then commits
//! the journal transaction that holds the new file size: a power cut in between leaves
//! a header naming more pages than the file has, which redb 2.6 cannot open (it
//! asserts `file length >= layout length` and panics; later versions refuse it as
//! corrupted). [`DurableGrowFile`] closes that window: a grow is fsynced before
//! `set_len` returns, so every header redb can write afterwards finds its pages.
//! Shrinking needs no sync: redb shrinks only after the smaller header is durable, and
//! a file longer than its header is something redb repairs.
//!
//! [`open`] opens a database on such a file and turns a panic inside redb (its
//! recovery asserts on some damaged files) into an error naming the file.
//!
//! redb refuses every later read and write of a database once one I/O operation on
//! its file has failed ("a previous I/O error occurred; close and re-open"): one
//! ENOSPC during a commit, or one EIO on a read, would otherwise make every branch
//! unreadable until the daemon restarts. [`Db`] is the handle the store and catalog
//! use instead of a bare `Database`: after an I/O failure it drops the database and
//! reopens it (redb then recovers to its last durable commit, which is every commit
//! that returned Ok) before the next operation, and keeps trying on each operation
//! until the file can be opened again.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use parking_lot::RwLock;
use redb::{Database, StorageBackend};

/// A redb storage backend on one file, whose growth is durable before it is used.
#[derive(Debug)]
pub struct DurableGrowFile {
    file: File,
}

impl DurableGrowFile {
    /// Opens (creating) `path` and takes the same exclusive lock redb's own file
    /// backend takes, so a second opener of the same file is refused.
    pub fn open(path: &Path) -> io::Result<DurableGrowFile> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(path)?;
        if !crate::sys::try_lock_exclusive(&file)? {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                format!("{} is locked: another open of this store (a daemon or a verb) holds it", path.display()),
            ));
        }
        Ok(DurableGrowFile { file })
    }
}

impl StorageBackend for DurableGrowFile {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.file.metadata()?.len())
    }

    fn read(&self, offset: u64, len: usize) -> Result<Vec<u8>, io::Error> {
        let mut buf = vec![0; len];
        self.file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let grows = len > self.file.metadata()?.len();
        self.file.set_len(len)?;
        if grows {
            // fsync, not fdatasync: the point is the inode's size.
            self.file.sync_all()?;
        }
        Ok(())
    }

    fn sync_data(&self, _eventual: bool) -> Result<(), io::Error> {
        self.file.sync_data()
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        self.file.write_all_at(data, offset)
    }
}

impl Drop for DurableGrowFile {
    fn drop(&mut self) {
        let _ = crate::sys::unlock(&self.file);
    }
}

/// A failed operation on a [`Db`]: the file it was on, and what redb said.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{}: {source}", path.display())]
    Redb { path: PathBuf, source: Box<redb::Error> },
    /// The file could not be (re)opened; the message names it.
    #[error("{0}")]
    Open(String),
}

/// A redb database that reopens itself after an I/O failure (see the module doc).
pub(crate) struct Db {
    path: PathBuf,
    cache_bytes: usize,
    /// `None` only while a reopen after a failure has not yet succeeded.
    db: RwLock<Option<Database>>,
    /// Set when an operation failed with an I/O error: the next one reopens first.
    failed: AtomicBool,
}

impl Db {
    /// Opens (creating) the database at `path` with `cache_bytes` of page cache.
    pub fn open(path: &Path, cache_bytes: usize) -> Result<Db, DbError> {
        let db = open(path, cache_bytes).map_err(DbError::Open)?;
        Ok(Db { path: path.to_path_buf(), cache_bytes, db: RwLock::new(Some(db)), failed: AtomicBool::new(false) })
    }

    /// Runs `f` on the database. An I/O error from `f` marks the database for reopening;
    /// if `f` met the poison of an earlier failure, the database is reopened and `f`
    /// runs once more (so `f` must be safe to repeat: a whole transaction).
    // redb's own error type is large (one variant holds a read transaction); the
    // closures return it as redb made it, and `DbError` boxes it.
    #[allow(clippy::result_large_err)]
    pub fn run<T>(&self, f: impl Fn(&Database) -> Result<T, redb::Error>) -> Result<T, DbError> {
        match self.run_once(&f) {
            Err(DbError::Redb { source, .. }) if matches!(*source, redb::Error::PreviousIo) => self.run_once(f),
            other => other,
        }
    }

    /// [`Db::run`] without the retry, for an `f` with effects outside the database
    /// (a callback per entry) that must not see entries twice.
    pub fn run_once<T>(&self, mut f: impl FnMut(&Database) -> Result<T, redb::Error>) -> Result<T, DbError> {
        if self.failed.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let guard = self.db.read();
        let Some(db) = guard.as_ref() else {
            // Another thread's reopen failed between our check and the lock.
            self.failed.store(true, Ordering::Release);
            return Err(DbError::Open(format!("{} is not open (reopening it after an I/O error failed)", self.path.display())));
        };
        f(db).map_err(|e| {
            if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
                self.failed.store(true, Ordering::Release);
            }
            DbError::Redb { path: self.path.clone(), source: Box::new(e) }
        })
    }

    /// Compacts the file (returns freed pages to the file system); needs every
    /// transaction to have ended, so it waits for the handle's exclusive lock.
    pub fn compact(&self) -> Result<bool, DbError> {
        if self.failed.load(Ordering::Acquire) {
            self.reopen()?;
        }
        let mut guard = self.db.write();
        let Some(db) = guard.as_mut() else {
            return Err(DbError::Open(format!("{} is not open (an earlier reopen failed)", self.path.display())));
        };
        db.compact().map_err(|e| {
            let e = redb::Error::from(e);
            if matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo) {
                self.failed.store(true, Ordering::Release);
            }
            DbError::Redb { path: self.path.clone(), source: Box::new(e) }
        })
    }

    fn reopen(&self) -> Result<(), DbError> {
        let mut guard = self.db.write();
        if !self.failed.load(Ordering::Acquire) {
            return Ok(()); // another thread reopened it while we waited
        }
        // Drop first: the old handle holds the file's lock.
        *guard = None;
        let db = open(&self.path, self.cache_bytes).map_err(DbError::Open)?;
        tracing::info!("reopened {} after an I/O error", self.path.display());
        *guard = Some(db);
        self.failed.store(false, Ordering::Release);
        Ok(())
    }
}

/// Opens (creating) the redb database at `path` with `cache_bytes` of page cache.
/// A panic inside redb while it opens or recovers the file becomes an error.
fn open(path: &Path, cache_bytes: usize) -> Result<Database, String> {
    let named = |e: &dyn std::fmt::Display| format!("opening {}: {e}", path.display());
    let backend = DurableGrowFile::open(path).map_err(|e| named(&e))?;
    let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        redb::Builder::new().set_cache_size(cache_bytes).create_with_backend(backend)
    }));
    match opened {
        Ok(db) => db.map_err(|e| named(&e)),
        Err(panic) => {
            let why = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".into());
            Err(format!(
                "opening {}: the file is damaged (redb failed while recovering it: {why}); restore the store from a backup or a copy of this file",
                path.display()
            ))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::TableDefinition;

    const T: TableDefinition<u64, &[u8]> = TableDefinition::new("t");

    fn fill(db: &Database, from: u64, n: u64) {
        let txn = db.begin_write().unwrap();
        {
            let mut t = txn.open_table(T).unwrap();
            for k in from..from + n {
                t.insert(k, [7u8; 1000].as_slice()).unwrap();
            }
        }
        txn.commit().unwrap();
    }

    /// The state a power cut left before this backend existed: a header naming more
    /// pages than the file holds (the grow's size never reached the journal). Opening
    /// it is an error naming the file, not a panic.
    #[test]
    fn a_file_shorter_than_its_header_is_refused_not_a_panic() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        let db = open(&path, 1 << 20).unwrap();
        fill(&db, 0, 10);
        let small = std::fs::metadata(&path).unwrap().len();
        fill(&db, 10, 2000);
        drop(db);
        let grown = std::fs::metadata(&path).unwrap().len();
        assert!(grown > small, "the second commit grew the file ({small} -> {grown})");
        File::options().write(true).open(&path).unwrap().set_len(small).unwrap();
        let Err(err) = open(&path, 1 << 20) else { panic!("a truncated database must not open") };
        assert!(err.contains(&path.display().to_string()) && err.contains("damaged"), "{err}");
    }

    #[test]
    fn a_second_opener_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.redb");
        let _db = open(&path, 1 << 20).unwrap();
        let Err(err) = open(&path, 1 << 20) else { panic!("the file is locked") };
        assert!(err.contains("locked"), "{err}");
    }
}
