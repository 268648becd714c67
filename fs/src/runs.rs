//! Sorted runs: an external sort for sets of fixed-size records too large to hold in
//! memory (GC's live set, `du`'s who-references-what).
//!
//! Records are buffered; each full buffer is sorted, deduplicated and written out as a
//! run file. Reading merges the runs in ascending order, yielding each distinct record
//! once, so a reader holds one buffer and one cursor per run — a few megabytes however
//! many records there are. Runs are scratch files: they are removed with the set, and
//! a builder empties its directory first (a crashed process may have left runs there).

use std::fs::File;
use std::io::{BufReader, BufWriter, Read, Write};
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use crate::block::Hash;
use crate::store::StoreError;

/// Bytes of records buffered before a run is written.
const RUN_BUFFER_BYTES: usize = 8 << 20;

/// A record that runs hold: ordered, with a fixed-size encoding.
pub trait RunRecord: Copy + Ord {
    const LEN: usize;
    fn encode(&self, out: &mut Vec<u8>);
    fn decode(bytes: &[u8]) -> Self;
}

impl RunRecord for Hash {
    const LEN: usize = 32;
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&self.0);
    }
    fn decode(bytes: &[u8]) -> Hash {
        let mut h = [0u8; 32];
        h.copy_from_slice(&bytes[..32]);
        Hash(h)
    }
}

/// A hash with a tag (e.g. which branch reaches it): sorted by hash, then tag.
impl RunRecord for (Hash, u32) {
    const LEN: usize = 36;
    fn encode(&self, out: &mut Vec<u8>) {
        self.0.encode(out);
        // Big-endian, so that byte order is the tag's order (not that reading needs it).
        out.extend_from_slice(&self.1.to_be_bytes());
    }
    fn decode(bytes: &[u8]) -> (Hash, u32) {
        let mut tag = [0u8; 4];
        tag.copy_from_slice(&bytes[32..36]);
        (Hash::decode(bytes), u32::from_be_bytes(tag))
    }
}

/// Collects records; [`RunsBuilder::finish`] gives the sorted [`Runs`].
pub struct RunsBuilder<R: RunRecord> {
    spill_dir: Option<PathBuf>,
    buffer: Vec<R>,
    runs: Vec<PathBuf>,
    run_limit: usize,
}

impl<R: RunRecord> RunsBuilder<R> {
    /// A builder that writes runs into `spill_dir` (created if absent, emptied of old
    /// runs); with `None` everything stays in memory (tests, the in-memory store).
    pub fn new(spill_dir: Option<&Path>) -> Result<RunsBuilder<R>, StoreError> {
        if let Some(dir) = spill_dir {
            if dir.exists() {
                std::fs::remove_dir_all(dir)?;
            }
            std::fs::create_dir_all(dir)?;
        }
        Ok(RunsBuilder {
            spill_dir: spill_dir.map(Path::to_path_buf),
            buffer: Vec::new(),
            runs: Vec::new(),
            run_limit: RUN_BUFFER_BYTES / R::LEN,
        })
    }

    /// The same with a smaller buffer, so tests can make many runs.
    pub fn with_run_limit(mut self, records: usize) -> RunsBuilder<R> {
        self.run_limit = records.max(1);
        self
    }

    pub fn insert(&mut self, record: R) -> Result<(), StoreError> {
        self.buffer.push(record);
        if self.buffer.len() >= self.run_limit && self.spill_dir.is_some() {
            self.spill()?;
        }
        Ok(())
    }

    fn spill(&mut self) -> Result<(), StoreError> {
        let Some(dir) = &self.spill_dir else { return Ok(()) };
        self.buffer.sort_unstable();
        self.buffer.dedup();
        let path = dir.join(format!("run-{:05}", self.runs.len()));
        let mut out = BufWriter::new(File::create(&path)?);
        let mut bytes = Vec::with_capacity(R::LEN);
        for r in &self.buffer {
            bytes.clear();
            r.encode(&mut bytes);
            out.write_all(&bytes)?;
        }
        out.flush()?;
        self.runs.push(path);
        self.buffer.clear();
        Ok(())
    }

    pub fn finish(mut self) -> Runs<R> {
        self.buffer.sort_unstable();
        self.buffer.dedup();
        Runs { memory: std::mem::take(&mut self.buffer), runs: std::mem::take(&mut self.runs), spill_dir: self.spill_dir.take() }
    }
}

/// Records as sorted runs (on disk, plus the last one in memory).
pub struct Runs<R: RunRecord> {
    memory: Vec<R>,
    runs: Vec<PathBuf>,
    spill_dir: Option<PathBuf>,
}

impl<R: RunRecord> Runs<R> {
    /// Runs held in memory (tests and small stores).
    pub fn from_records(records: impl IntoIterator<Item = R>) -> Runs<R> {
        let mut memory: Vec<R> = records.into_iter().collect();
        memory.sort_unstable();
        memory.dedup();
        Runs { memory, runs: Vec::new(), spill_dir: None }
    }

    /// Run files on disk (tests).
    pub fn files(&self) -> usize {
        self.runs.len()
    }

    /// A fresh reader over every distinct record, in ascending order.
    pub fn merged(&self) -> Result<Merged<'_, R>, StoreError> {
        let mut sources = vec![Source::Memory { records: &self.memory, next: 0 }];
        for path in &self.runs {
            sources.push(Source::File(BufReader::with_capacity(64 << 10, File::open(path)?), PhantomData));
        }
        let mut heads = Vec::with_capacity(sources.len());
        for s in &mut sources {
            heads.push(s.next()?);
        }
        Ok(Merged { sources, heads })
    }
}

impl<R: RunRecord> Drop for Runs<R> {
    fn drop(&mut self) {
        if let Some(dir) = &self.spill_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

enum Source<'a, R> {
    Memory { records: &'a [R], next: usize },
    File(BufReader<File>, PhantomData<R>),
}

impl<R: RunRecord> Source<'_, R> {
    fn next(&mut self) -> Result<Option<R>, StoreError> {
        match self {
            Source::Memory { records, next } => {
                let r = records.get(*next).copied();
                *next += 1;
                Ok(r)
            }
            Source::File(reader, _) => {
                let mut bytes = [0u8; 64];
                let bytes = &mut bytes[..R::LEN];
                match reader.read_exact(bytes) {
                    Ok(()) => Ok(Some(R::decode(bytes))),
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }
}

/// Every distinct record of a [`Runs`], in ascending order.
pub struct Merged<'a, R: RunRecord> {
    sources: Vec<Source<'a, R>>,
    heads: Vec<Option<R>>,
}

impl<R: RunRecord> Merged<'_, R> {
    /// The smallest record not yet consumed, across all runs.
    pub fn peek(&self) -> Option<R> {
        self.heads.iter().flatten().min().copied()
    }

    /// The smallest record not yet consumed, consumed from every run whose head it is.
    pub fn next_record(&mut self) -> Result<Option<R>, StoreError> {
        let Some(r) = self.peek() else { return Ok(None) };
        for (i, head) in self.heads.iter_mut().enumerate() {
            if *head == Some(r) {
                *head = self.sources[i].next()?;
            }
        }
        Ok(Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(i: u32) -> Hash {
        Hash::of(&i.to_le_bytes())
    }

    #[test]
    fn tagged_records_come_back_sorted_and_distinct_from_many_runs() {
        let dir = tempfile::tempdir().unwrap();
        let spill = dir.path().join("runs");
        let mut b = RunsBuilder::<(Hash, u32)>::new(Some(&spill)).unwrap().with_run_limit(5);
        let mut want = Vec::new();
        for i in (0..60u32).rev() {
            for tag in [i % 3, 7, i % 3] {
                b.insert((h(i % 20), tag)).unwrap();
                want.push((h(i % 20), tag));
            }
        }
        want.sort_unstable();
        want.dedup();
        let runs = b.finish();
        assert!(runs.files() > 10, "{} runs", runs.files());
        let mut merged = runs.merged().unwrap();
        let mut got = Vec::new();
        while let Some(r) = merged.next_record().unwrap() {
            got.push(r);
        }
        assert_eq!(got, want);
        drop(merged);
        drop(runs);
        assert!(!spill.exists(), "the runs are removed with the set");
    }
}
