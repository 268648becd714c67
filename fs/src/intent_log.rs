//! The intent log: every change to a branch since its last commit, durable on fsync.
//!
//! Records are appended to numbered segment files, one directory per branch. A record
//! is `length (u32 LE) | crc32 (u32 LE) | op`; replay stops at the first torn or
//! damaged record, which can only be the tail of the segment being written at a crash.
//! A commit starts a new segment; once the commit's root is durable, older segments
//! are deleted. fsync calls that arrive together share one fdatasync (group commit).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::Mutex;

use crate::op::Op;

struct Segment {
    seq: u64,
    file: Arc<File>,
    len: u64,
}

pub struct IntentLog {
    dir: PathBuf,
    current: Mutex<Segment>,
    /// Bytes appended over the log's life; the group-commit clock.
    appended: Mutex<u64>,
    /// (bytes known durable) — held while an fdatasync runs, so waiters queue behind it.
    synced: Mutex<u64>,
}

fn segment_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("{seq:016}.log"))
}

/// Segment numbers present in `dir`, ascending.
pub fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(rd) => {
            for e in rd {
                let name = e?.file_name();
                if let Some(n) = name.to_string_lossy().strip_suffix(".log").and_then(|s| s.parse().ok()) {
                    out.push(n);
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort_unstable();
    Ok(out)
}

/// Reads the ops of every segment numbered `from` or later, in order.
pub fn read_ops(dir: &Path, from: u64) -> io::Result<Vec<Op>> {
    let mut ops = Vec::new();
    for seq in list_segments(dir)?.into_iter().filter(|&s| s >= from) {
        let bytes = std::fs::read(segment_path(dir, seq))?;
        let mut pos = 0usize;
        while pos + 8 <= bytes.len() {
            let len = u32::from_le_bytes(bytes[pos..pos + 4].try_into().unwrap()) as usize;
            let crc = u32::from_le_bytes(bytes[pos + 4..pos + 8].try_into().unwrap());
            let Some(body) = bytes.get(pos + 8..pos + 8 + len) else { break };
            if crc32fast::hash(body) != crc {
                break;
            }
            match Op::decode(body) {
                Some(op) => ops.push(op),
                None => break,
            }
            pos += 8 + len;
        }
    }
    Ok(ops)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl IntentLog {
    /// Opens the log for appending, in a new segment after every existing one.
    pub fn open(dir: &Path) -> io::Result<IntentLog> {
        std::fs::create_dir_all(dir)?;
        let seq = list_segments(dir)?.last().map_or(1, |s| s + 1);
        let segment = Self::new_segment(dir, seq)?;
        Ok(IntentLog {
            dir: dir.to_path_buf(),
            current: Mutex::new(segment),
            appended: Mutex::new(0),
            synced: Mutex::new(0),
        })
    }

    fn new_segment(dir: &Path, seq: u64) -> io::Result<Segment> {
        let file = OpenOptions::new().create(true).write(true).truncate(true).open(segment_path(dir, seq))?;
        sync_dir(dir)?;
        Ok(Segment { seq, file: Arc::new(file), len: 0 })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Appends one op. Callers hold the branch lock, so log order is apply order.
    pub fn append(&self, op: &Op) -> io::Result<()> {
        let body = op.encode();
        let mut record = Vec::with_capacity(8 + body.len());
        record.extend_from_slice(&(body.len() as u32).to_le_bytes());
        record.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        record.extend_from_slice(&body);
        let mut seg = self.current.lock();
        seg.file.write_all_at(&record, seg.len)?;
        seg.len += record.len() as u64;
        *self.appended.lock() += record.len() as u64;
        Ok(())
    }

    /// Makes every op appended before this call durable.
    pub fn sync(&self) -> io::Result<()> {
        let target = *self.appended.lock();
        let mut synced = self.synced.lock();
        if *synced >= target {
            return Ok(());
        }
        let (file, upto) = {
            let seg = self.current.lock();
            (seg.file.clone(), *self.appended.lock())
        };
        file.sync_data()?;
        *synced = upto;
        Ok(())
    }

    /// Starts a new segment (syncing the old one) and returns its number: every op
    /// appended before this call is in an older segment.
    pub fn rotate(&self) -> io::Result<u64> {
        let mut synced = self.synced.lock();
        let mut seg = self.current.lock();
        seg.file.sync_data()?;
        *synced = *self.appended.lock();
        *seg = Self::new_segment(&self.dir, seg.seq + 1)?;
        Ok(seg.seq)
    }

    /// Deletes segments older than `seq` (their ops are in a durable commit).
    pub fn trim_before(&self, seq: u64) -> io::Result<()> {
        for s in list_segments(&self.dir)?.into_iter().filter(|&s| s < seq) {
            std::fs::remove_file(segment_path(&self.dir, s))?;
        }
        Ok(())
    }

    pub fn current_seq(&self) -> u64 {
        self.current.lock().seq
    }

    pub fn bytes_since_commit(&self) -> u64 {
        self.current.lock().len
    }
}
