//! The set of live objects GC marks, held in bounded memory.
//!
//! Marking finds millions of live blocks in a large store; a hash set of them all would
//! cost the daemon tens of megabytes per million objects at every GC. Instead hashes
//! are buffered, and each full buffer is sorted, deduplicated and written out as a run
//! file; membership is then answered by merging the runs in hash order — the order in
//! which the index is scanned — so GC holds one buffer and one cursor per run.

use std::path::Path;

use crate::block::Hash;
use crate::runs::{Merged, Runs, RunsBuilder};
use crate::store::StoreError;

/// Collects live hashes; [`LiveSetBuilder::finish`] gives the [`LiveSet`].
pub struct LiveSetBuilder(RunsBuilder<Hash>);

impl LiveSetBuilder {
    /// A builder that writes runs into `spill_dir` (created if absent, emptied of old
    /// runs); with `None` everything stays in memory (tests, the in-memory store).
    pub fn new(spill_dir: Option<&Path>) -> Result<LiveSetBuilder, StoreError> {
        Ok(LiveSetBuilder(RunsBuilder::new(spill_dir)?))
    }

    /// The same with a smaller buffer, so tests can make many runs.
    pub fn with_run_limit(self, hashes: usize) -> LiveSetBuilder {
        LiveSetBuilder(self.0.with_run_limit(hashes))
    }

    pub fn insert(&mut self, hash: Hash) -> Result<(), StoreError> {
        self.0.insert(hash)
    }

    pub fn finish(self) -> LiveSet {
        LiveSet(self.0.finish())
    }
}

/// Live hashes as sorted runs (on disk, plus the last one in memory).
pub struct LiveSet(Runs<Hash>);

impl LiveSet {
    /// A set held in memory (tests and small stores).
    pub fn from_hashes(hashes: impl IntoIterator<Item = Hash>) -> LiveSet {
        LiveSet(Runs::from_records(hashes))
    }

    /// A fresh cursor over the set, for one scan in ascending hash order.
    pub fn cursor(&self) -> Result<LiveCursor<'_>, StoreError> {
        Ok(LiveCursor { merged: self.0.merged()?, skipped: 0 })
    }
}

/// Answers "is this hash live?" for hashes asked in ascending order, merging the runs.
pub struct LiveCursor<'a> {
    merged: Merged<'a, Hash>,
    /// Distinct live hashes passed over without being asked for: live objects the
    /// scanned index does not hold.
    skipped: u64,
}

impl LiveCursor<'_> {
    /// Whether `h` is live. Calls must come in ascending hash order.
    pub fn contains(&mut self, h: &Hash) -> Result<bool, StoreError> {
        while let Some(next) = self.merged.peek() {
            if next > *h {
                return Ok(false);
            }
            self.merged.next_record()?;
            if next == *h {
                return Ok(true);
            }
            self.skipped += 1;
        }
        Ok(false)
    }

    /// Live hashes never asked for (call after the scan): objects missing from the index.
    pub fn missing(mut self) -> Result<u64, StoreError> {
        while self.merged.next_record()?.is_some() {
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
        assert!(live.0.files() > 10, "{} runs", live.0.files());
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
