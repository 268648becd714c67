//! Pack files: append-only files holding stored objects back to back.
//!
//! A pack starts with a header (magic, version) and holds records `hash (32) | payload
//! length (u32 LE) | payload` (layout in `format::pack`), so a pack can be scanned
//! without its index (for verify and for compaction). Packs are never modified in place:
//! GC copies the live records of a mostly-dead pack into the active one and deletes it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::block::Hash;
use crate::format::pack::{self as wire, PACK_HEADER_LEN};
use crate::format::FormatError;

pub use crate::format::pack::RECORD_HEADER;

/// Why a pack could not be opened or scanned.
#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("pack {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("pack {path} is damaged: {source}; run `pgbranch verify` to see which branches use it")]
    Format { path: PathBuf, source: FormatError },
}

/// Where one object lives: pack number, offset of its payload, payload length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub offset: u64,
    pub len: u32,
}

pub(crate) fn pack_path(dir: &Path, pack: u32) -> PathBuf {
    dir.join(format!("pack-{pack:08}.pk"))
}

/// Lists the pack numbers present in `dir`, ascending.
pub(crate) fn list_packs(dir: &Path) -> io::Result<Vec<u32>> {
    let mut packs = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(num) = name.strip_prefix("pack-").and_then(|n| n.strip_suffix(".pk")) {
            if let Ok(n) = num.parse() {
                packs.push(n);
            }
        }
    }
    packs.sort_unstable();
    Ok(packs)
}

/// The pack currently being appended to.
pub(crate) struct ActivePack {
    pub number: u32,
    /// Shared with a [`SyncTicket`] while a flush syncs it outside the store's lock.
    file: Arc<File>,
    len: u64,
    /// A failed append may have left part of a record past `len`, and the file is
    /// opened for appending (pwrite then writes at its end, not at `len`): it must be
    /// cut back to `len` before the next append.
    torn: bool,
    /// An fsync of this pack failed. Linux reports a writeback error once and may have
    /// dropped the pages it could not write, so a later fsync that succeeds proves
    /// nothing about what came before: this pack is never synced again (the store
    /// starts a new one and rewrites what was not yet durable there).
    sync_failed: bool,
}

impl ActivePack {
    /// Opens pack `number` for appending: a new pack gets its header with its first
    /// record; an existing one must have a valid header.
    pub fn open(dir: &Path, number: u32) -> Result<ActivePack, PackError> {
        let path = pack_path(dir, number);
        let io = |source| PackError::Io { path: path.clone(), source };
        let file = OpenOptions::new().create(true).read(true).write(true).truncate(false).open(&path).map_err(io)?;
        let mut len = file.metadata().map_err(io)?.len();
        if len < PACK_HEADER_LEN {
            // New, or created by a crashed run before its header reached the disk. The
            // header is written with the first record, so opening a pack needs no free
            // space (GC seals the active pack on a full disk).
            if len > 0 {
                file.set_len(0).map_err(io)?;
            }
            len = 0;
        } else {
            check_header(&file, &path)?;
        }
        Ok(ActivePack { number, file: Arc::new(file), len, torn: false, sync_failed: false })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn append(&mut self, hash: &Hash, payload: &[u8]) -> io::Result<Location> {
        let mut record = Vec::with_capacity(PACK_HEADER_LEN as usize + RECORD_HEADER as usize + payload.len());
        if self.len == 0 {
            record.extend_from_slice(&wire::pack_header());
        }
        let start = self.len + (record.len() as u64);
        record.extend_from_slice(&wire::record_header(hash, payload.len() as u32));
        record.extend_from_slice(payload);
        if self.torn {
            self.file.set_len(self.len)?;
            self.torn = false;
        }
        if let Err(e) = self.file.write_all_at(&record, self.len) {
            // Shrinking needs no free space; if even that fails, retry before the next append.
            self.torn = self.file.set_len(self.len).is_err();
            return Err(e);
        }
        let loc = Location { pack: self.number, offset: start + RECORD_HEADER, len: payload.len() as u32 };
        self.len += record.len() as u64;
        Ok(loc)
    }

    /// Makes every record appended so far durable (the store syncs by ticket, outside
    /// its lock). Once a sync has failed, every later one fails too (see `sync_failed`).
    #[cfg(test)]
    pub fn sync(&mut self) -> io::Result<()> {
        let ticket = self.sync_ticket()?;
        let synced = ticket.run();
        self.sync_done(&ticket, &synced);
        synced
    }

    /// A sync of every record appended so far that can run without this pack's lock
    /// (appends go on meanwhile; they are not covered). Refused once a sync has failed.
    pub fn sync_ticket(&self) -> io::Result<SyncTicket> {
        if self.sync_failed {
            return Err(io::Error::other(format!(
                "an earlier fsync of pack {} failed; its records are rewritten to a new pack",
                self.number
            )));
        }
        Ok(SyncTicket { pack: self.number, file: self.file.clone() })
    }

    /// Records how a ticket's sync went: a failure marks this pack, if it is still the
    /// one synced, as never to be synced again.
    pub fn sync_done(&mut self, ticket: &SyncTicket, result: &io::Result<()>) {
        if result.is_err() && ticket.pack == self.number {
            self.sync_failed = true;
        }
    }

    /// True once a sync of this pack has failed: it takes no more records.
    pub fn sync_failed(&self) -> bool {
        self.sync_failed
    }

    /// What a failed fsync leaves, for the store's tests.
    #[cfg(test)]
    pub fn fail_sync_for_test(&mut self) {
        self.sync_failed = true;
    }
}

/// An fdatasync of the active pack taken out of the store's lock (see
/// [`ActivePack::sync_ticket`]).
pub(crate) struct SyncTicket {
    pack: u32,
    file: Arc<File>,
}

impl SyncTicket {
    pub fn run(&self) -> io::Result<()> {
        self.file.sync_data()
    }
}

/// Checks the header of an open pack file. A file shorter than a header has no
/// records (a crash right after creating it) and passes.
pub(crate) fn check_header(file: &File, path: &Path) -> Result<(), PackError> {
    let io = |source| PackError::Io { path: path.to_path_buf(), source };
    if file.metadata().map_err(io)?.len() < PACK_HEADER_LEN {
        return Ok(());
    }
    let mut header = [0u8; PACK_HEADER_LEN as usize];
    file.read_exact_at(&mut header, 0).map_err(io)?;
    wire::check_pack_header(&header).map_err(|source| PackError::Format { path: path.to_path_buf(), source })
}

/// Opens a pack for reading and checks its header.
pub(crate) fn open_for_read(dir: &Path, pack: u32) -> Result<File, PackError> {
    let path = pack_path(dir, pack);
    let file = File::open(&path).map_err(|source| PackError::Io { path: path.clone(), source })?;
    check_header(&file, &path)?;
    Ok(file)
}

/// Reads the records of a pack from byte `from` on (from its first record if `from`
/// is inside the header), payloads included, in order, until `f` returns false or the
/// pack ends (a torn tail is where it ends). Checks the header.
pub(crate) fn scan_from(dir: &Path, pack: u32, from: u64, f: &mut dyn FnMut(Hash, Location, &[u8]) -> bool) -> Result<(), PackError> {
    use std::io::{BufReader, Read, Seek, SeekFrom};
    let path = pack_path(dir, pack);
    let io = |source| PackError::Io { path: path.clone(), source };
    let file = open_for_read(dir, pack)?;
    let size = file.metadata().map_err(io)?.len();
    let mut pos = from.max(PACK_HEADER_LEN);
    let mut reader = BufReader::with_capacity(1 << 20, file);
    reader.seek(SeekFrom::Start(pos)).map_err(io)?;
    let mut header = [0u8; RECORD_HEADER as usize];
    let mut payload = Vec::new();
    while pos + RECORD_HEADER <= size {
        reader.read_exact(&mut header).map_err(io)?;
        let (hash, len) = wire::parse_record_header(&header);
        if pos + RECORD_HEADER + len as u64 > size {
            break;
        }
        payload.resize(len as usize, 0);
        reader.read_exact(&mut payload).map_err(io)?;
        if !f(hash, Location { pack, offset: pos + RECORD_HEADER, len }, &payload) {
            break;
        }
        pos += RECORD_HEADER + len as u64;
    }
    Ok(())
}

/// Reads every record of a pack: (hash, location). Checks the header; stops at a torn tail.
pub fn scan(dir: &Path, pack: u32) -> Result<Vec<(Hash, Location)>, PackError> {
    let path = pack_path(dir, pack);
    let io = |source| PackError::Io { path: path.clone(), source };
    let file = open_for_read(dir, pack)?;
    let size = file.metadata().map_err(io)?.len();
    let mut out = Vec::new();
    let mut pos = PACK_HEADER_LEN;
    let mut header = [0u8; RECORD_HEADER as usize];
    while pos + RECORD_HEADER <= size {
        file.read_exact_at(&mut header, pos).map_err(io)?;
        let (hash, len) = wire::parse_record_header(&header);
        if pos + RECORD_HEADER + len as u64 > size {
            break;
        }
        out.push((hash, Location { pack, offset: pos + RECORD_HEADER, len }));
        pos += RECORD_HEADER + len as u64;
    }
    Ok(out)
}
