//! `data/FORMAT`: the store's format version, the first thing `Repository::open` reads.
//!
//! 16 bytes: `"PGBRANCH" | version u32 LE | crc32 u32 LE` (crc of the 12 bytes before
//! it). Written atomically (temporary file, fsync, rename, directory fsync) when a
//! store is created, before anything else in it. A store with a catalog but no FORMAT
//! was made before formats were versioned and is refused: there is no migration.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use super::{decode_header_in, encode_header, FormatError};

pub const STORE_MAGIC: &[u8; 8] = b"PGBRANCH";
/// The newest store format this build reads (and the one it writes). Format 2 added
/// the index's indexed-up-to position (`format::index`): a format-1 build opening a
/// format-2 store would miss the records indexed only by their packs, so it must refuse.
pub const STORE_FORMAT_VERSION: u32 = 2;
/// The oldest store format this build reads: format 1 differs only in lacking the
/// indexed-up-to row, and `Repository::open` upgrades it in place.
pub const OLDEST_STORE_FORMAT_VERSION: u32 = 1;
pub const FORMAT_FILE: &str = "FORMAT";
/// The file whose presence means the store exists (see [`check_or_create`]).
const CATALOG_FILE: &str = "catalog.redb";

#[derive(Debug, thiserror::Error)]
pub enum StoreFormatError {
    #[error("store format {found} at {path}; this pgbranch reads up to {supported}: upgrade pgbranch")]
    TooNew { path: PathBuf, found: u32, supported: u32 },
    #[error(
        "the store at {dir} predates format versioning (it has a catalog but no {FORMAT_FILE} file) and this pgbranch cannot \
         open it; pre-versioning stores are not migrated: move that directory aside and create a new store with `pgbranch clone`"
    )]
    Unversioned { dir: PathBuf },
    #[error("store format file {path}: {source}; if the store is otherwise intact, restore the file from a copy of the store")]
    Damaged { path: PathBuf, source: FormatError },
    #[error("store format file {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
}

/// Checks the store's format file, or writes one if the store is new (no catalog yet).
/// Returns the format the store has.
pub fn check_or_create(dir: &Path) -> Result<u32, StoreFormatError> {
    let path = dir.join(FORMAT_FILE);
    let io = |source| StoreFormatError::Io { path: path.clone(), source };
    match std::fs::read(&path) {
        Ok(bytes) => check(&path, &bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if dir.join(CATALOG_FILE).exists() {
                return Err(StoreFormatError::Unversioned { dir: dir.to_path_buf() });
            }
            write_format_file(dir, STORE_FORMAT_VERSION).map_err(io)?;
            Ok(STORE_FORMAT_VERSION)
        }
        Err(e) => Err(io(e)),
    }
}

fn check(path: &Path, bytes: &[u8]) -> Result<u32, StoreFormatError> {
    match decode_header_in(bytes, STORE_MAGIC, OLDEST_STORE_FORMAT_VERSION, STORE_FORMAT_VERSION, "store") {
        Ok((version, _)) if bytes.len() == 16 => Ok(version),
        Ok(_) => Err(StoreFormatError::Damaged { path: path.to_path_buf(), source: FormatError::malformed("store", "wrong length") }),
        Err(FormatError::TooNew { found, supported, .. }) => Err(StoreFormatError::TooNew { path: path.to_path_buf(), found, supported }),
        Err(source) => Err(StoreFormatError::Damaged { path: path.to_path_buf(), source }),
    }
}

/// Writes `dir/FORMAT` naming `version`, atomically. Tests use it to fake a newer store.
pub fn write_format_file(dir: &Path, version: u32) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("{FORMAT_FILE}.tmp"));
    let mut f = File::create(&tmp)?;
    f.write_all(&encode_header(STORE_MAGIC, version, &[]))?;
    f.sync_all()?;
    drop(f);
    std::fs::rename(&tmp, dir.join(FORMAT_FILE))?;
    File::open(dir)?.sync_all()
}
