//! Pack files: append-only files holding stored objects back to back.
//!
//! A record is `hash (32) | payload length (u32 LE) | payload`, so a pack can be scanned
//! without its index (for verify and for compaction). Packs are never modified in place:
//! GC copies the live records of a mostly-dead pack into the active one and deletes it.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::block::Hash;

pub const RECORD_HEADER: u64 = 36;

/// Where one object lives: pack number, offset of its payload, payload length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub pack: u32,
    pub offset: u64,
    pub len: u32,
}

pub fn pack_path(dir: &Path, pack: u32) -> PathBuf {
    dir.join(format!("pack-{pack:08}.pk"))
}

/// Lists the pack numbers present in `dir`, ascending.
pub fn list_packs(dir: &Path) -> io::Result<Vec<u32>> {
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
pub struct ActivePack {
    pub number: u32,
    file: File,
    len: u64,
}

impl ActivePack {
    pub fn open(dir: &Path, number: u32) -> io::Result<ActivePack> {
        let file = OpenOptions::new().create(true).read(true).append(true).open(pack_path(dir, number))?;
        let len = file.metadata()?.len();
        Ok(ActivePack { number, file, len })
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn append(&mut self, hash: &Hash, payload: &[u8]) -> io::Result<Location> {
        let mut record = Vec::with_capacity(RECORD_HEADER as usize + payload.len());
        record.extend_from_slice(&hash.0);
        record.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        record.extend_from_slice(payload);
        self.file.write_all_at(&record, self.len)?;
        let loc = Location { pack: self.number, offset: self.len + RECORD_HEADER, len: payload.len() as u32 };
        self.len += record.len() as u64;
        Ok(loc)
    }

    pub fn sync(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    pub fn file(&self) -> &File {
        &self.file
    }
}

/// Reads every record of a pack: (hash, location). Stops at a torn tail.
pub fn scan(dir: &Path, pack: u32) -> io::Result<Vec<(Hash, Location)>> {
    let file = File::open(pack_path(dir, pack))?;
    let size = file.metadata()?.len();
    let mut out = Vec::new();
    let mut pos = 0u64;
    let mut header = [0u8; RECORD_HEADER as usize];
    while pos + RECORD_HEADER <= size {
        file.read_exact_at(&mut header, pos)?;
        let mut h = [0u8; 32];
        h.copy_from_slice(&header[..32]);
        let len = u32::from_le_bytes(header[32..36].try_into().unwrap());
        if pos + RECORD_HEADER + len as u64 > size {
            break;
        }
        out.push((Hash(h), Location { pack, offset: pos + RECORD_HEADER, len }));
        pos += RECORD_HEADER + len as u64;
    }
    Ok(out)
}
