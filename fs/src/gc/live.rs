//! The set of live objects GC marks, held in bounded memory.
//!
//! Marking finds millions of live blocks in a large store; a hash set of them all would
//! cost the daemon tens of megabytes per million objects at every GC. Instead hashes
//! are buffered, and each full buffer is sorted, deduplicated and written out as a run
//! file; membership is then answered by merging the runs in hash order — the order in
//! which the index is scanned — so GC holds one buffer and one cursor per run.

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::block::Hash;
use crate::store::StoreError;

/// Hashes buffered before a run is written: 8 MiB of memory.
const RUN_HASHES: usize = 256 * 1024;

/// Collects live hashes; [`LiveSetBuilder::finish`] gives the [`LiveSet`].
pub struct LiveSetBuilder {
    spill_dir: Option<PathBuf>,
    buffer: Vec<Hash>,
    runs: Vec<PathBuf>,
    run_limit: usize,
}

impl LiveSetBuilder {
    /// A builder that writes runs into `spill_dir` (created if absent, emptied of old
    /// runs); with `None` everything stays in memory (tests, the in-memory store).
    pub fn new(spill_dir: Option<&Path>) -> Result<LiveSetBuilder, StoreError> {
        if let Some(dir) = spill_dir {
            if dir.exists() {
                std::fs::remove_dir_all(dir)?;
            }
            std::fs::create_dir_all(dir)?;
        }
        Ok(LiveSetBuilder { spill_dir: spill_dir.map(Path::to_path_buf), buffer: Vec::new(), runs: Vec::new(), run_limit: RUN_HASHES })
    }

    /// The same with a smaller buffer, so tests can make many runs.
    pub fn with_run_limit(mut self, hashes: usize) -> LiveSetBuilder {
        self.run_limit = hashes.max(1);
        self
    }

    pub fn insert(&mut self, hash: Hash) -> Result<(), StoreError> {
        self.buffer.push(hash);
        if self.buffer.len() >= self.run_limit && self.spill_dir.is_some() {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<(), StoreError> {
        let Some(dir) = &self.spill_dir else { return Ok(()) };
        self.buffer.sort_unstable();
        self.buffer.dedup();
        let path = dir.join(format!("live-{:05}.run", self.runs.len()));
        let mut out = BufWriter::new(File::create(&path)?);
        for h in &self.buffer {
            out.write_all(&h.0)?;
        }
        out.flush()?;
        self.runs.push(path);
        self.buffer.clear();
        Ok(())
    }

    pub fn finish(mut self) -> LiveSet {
        self.buffer.sort_unstable();
        self.buffer.dedup();
        LiveSet { memory: std::mem::take(&mut self.buffer), runs: std::mem::take(&mut self.runs), spill_dir: self.spill_dir.take() }
    }
}

/// Live hashes as sorted runs (on disk, plus the last one in memory).
pub struct LiveSet {
    memory: Vec<Hash>,
    runs: Vec<PathBuf>,
    spill_dir: Option<PathBuf>,
}

impl LiveSet {
    /// A set held in memory (tests and small stores).
    pub fn from_hashes(hashes: impl IntoIterator<Item = Hash>) -> LiveSet {
        let mut memory: Vec<Hash> = hashes.into_iter().collect();
        memory.sort_unstable();
        memory.dedup();
        LiveSet { memory, runs: Vec::new(), spill_dir: None }
    }

    /// A fresh cursor over the set, for one scan in ascending hash order.
    pub fn cursor(&self) -> Result<LiveCursor<'_>, StoreError> {
        let mut sources = vec![RunSource::Memory { hashes: &self.memory, next: 0 }];
        for path in &self.runs {
            sources.push(RunSource::File(BufReader::with_capacity(64 << 10, File::open(path)?)));
        }
        let mut heads = Vec::with_capacity(sources.len());
        for s in &mut sources {
            heads.push(s.next()?);
        }
        Ok(LiveCursor { sources, heads, skipped: 0 })
    }
}

impl Drop for LiveSet {
    fn drop(&mut self) {
        if let Some(dir) = &self.spill_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

enum RunSource<'a> {
    Memory { hashes: &'a [Hash], next: usize },
    File(BufReader<File>),
}

impl RunSource<'_> {
    fn next(&mut self) -> Result<Option<Hash>, StoreError> {
        match self {
            RunSource::Memory { hashes, next } => {
                let h = hashes.get(*next).copied();
                *next += 1;
                Ok(h)
            }
            RunSource::File(r) => {
                let mut h = [0u8; 32];
                match r.read_exact(&mut h) {
                    Ok(()) => Ok(Some(Hash(h))),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

/// Answers "is this hash live?" for hashes asked in ascending order, merging the runs.
pub struct LiveCursor<'a> {
    sources: Vec<RunSource<'a>>,
    heads: Vec<Option<Hash>>,
    /// Distinct live hashes passed over without being asked for: live objects the
    /// scanned index does not hold.
    skipped: u64,
}

impl LiveCursor<'_> {
    /// The smallest hash not yet consumed, across all runs.
    fn peek(&self) -> Option<Hash> {
        self.heads.iter().flatten().min().copied()
    }

    /// Consumes `h` from every run whose head it is.
    fn consume(&mut self, h: Hash) -> Result<(), StoreError> {
        for (i, head) in self.heads.iter_mut().enumerate() {
            if *head == Some(h) {
                *head = self.sources[i].next()?;
            }
        }
        Ok(())
    }

    /// Whether `h` is live. Calls must come in ascending hash order.
    pub fn contains(&mut self, h: &Hash) -> Result<bool, StoreError> {
        while let Some(next) = self.peek() {
            if next > *h {
                return Ok(false);
            }
            self.consume(next)?;
            if next == *h {
                return Ok(true);
            }
            self.skipped += 1;
        }
        Ok(false)
    }

    /// Live hashes never asked for (call after the scan): objects missing from the index.
    pub fn missing(mut self) -> Result<u64, StoreError> {
        while let Some(next) = self.peek() {
            self.consume(next)?;
            self.skipped += 1;
        }
        Ok(self.skipped)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u32) -> Hash {
        Hash::of(&i.to_le_bytes())
    }

    #[test]
    fn runs_on_disk_answer_like_a_set() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("gc");
        let mut b = LiveSetBuilder::new(Some(&spill)).unwrap().with_run_limit(7);
        // Every even number, some twice, in no order.
        for i in (0..200u32).rev().filter(|i| i % 2 == 0).chain((0..50).map(|i| i * 2)) {
            b.insert(h(i)).unwrap();
        }
        let live = b.finish();
        assert!(live.runs.len() > 10, "{} runs", live.runs.len());
        let mut all: Vec<(Hash, bool)> = (0..200u32).map(|i| (h(i), i % 2 == 0)).collect();
        all.sort_unstable();
        let mut cursor = live.cursor().unwrap();
        for (hash, expected) in &all {
            assert_eq!(cursor.contains(hash).unwrap(), *expected);
        }
        assert_eq!(cursor.missing().unwrap(), 0);
        // Asking about half of them: the others are reported missing.
        let mut cursor = live.cursor().unwrap();
        for (hash, _) in all.iter().step_by(4) {
            cursor.contains(hash).unwrap();
        }
        let asked_live = all.iter().step_by(4).filter(|(_, l)| *l).count() as u64;
        assert_eq!(cursor.missing().unwrap(), 100 - asked_live);
        drop(live);
        assert!(!spill.exists(), "the runs are removed with the set");
    }
}
