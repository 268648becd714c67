//! The daemon's history verbs: `branch log`, `branch set --history`, `branch create
//! --at`, and the store-wide default window read from `pgbranch.toml`.

use anyhow::{Context, Result};
use pgbranch_fs::history::{format_utc, Point};

use super::Daemon;
use crate::api::{BranchLog, HistorySetting, PointInfo};

pub(crate) fn point_info(p: &Point) -> PointInfo {
    PointInfo { at: format_utc(p.at_unix_micros), at_unix_micros: p.at_unix_micros, root: p.root.to_hex(), changed_bytes: p.changed_bytes }
}

impl Daemon {
    pub(super) fn branch_log(&self, name: &str) -> Result<BranchLog> {
        let points = self.repo.history(name)?;
        let (history_secs, own_window) = self.repo.retention(name)?;
        Ok(BranchLog { name: name.to_string(), history_secs, own_window, points: points.iter().map(point_info).collect() })
    }

    pub(super) fn branch_set_history(&self, name: &str, history: HistorySetting) -> Result<BranchLog> {
        let window = match history {
            HistorySetting::StoreDefault => None,
            HistorySetting::Window { secs } => Some(secs),
        };
        self.repo.set_retention(name, window).with_context(|| format!("setting the history window of {name}"))?;
        self.branch_log(name)
    }
}

/// A WAL segment file name: 24 hex digits (timeline, log, segment).
fn is_wal_segment(name: &str) -> bool {
    name.len() == 24 && name.bytes().all(|b| b.is_ascii_hexdigit())
}

impl Daemon {
    /// Prepares branch `name`, made from `src`'s point `from` for the instant `at`, to
    /// recover exactly to `at`: the WAL segments `src` wrote after that point (from its
    /// later retained points, and from its live state when no point follows `at`) go
    /// into an archive directory in the branch, and postgres is told to replay them up
    /// to `at` (restore_command copies from there) and promote.
    /// Returns how many segments were staged.
    pub(super) fn stage_recovery_to(&self, name: &str, src: &str, from: &Point, at: u64) -> Result<usize> {
        let wal = self.layout.mount_point(name).join("pg_wal");
        let have: Vec<String> = std::fs::read_dir(&wal)
            .with_context(|| format!("reading {}", wal.display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_wal_segment(n))
            .collect();
        // Segments before the newest one the point holds are complete in it already.
        let first_needed = have.iter().max().cloned().unwrap_or_default();
        let later: Vec<Point> = self.repo.history(src)?.into_iter().filter(|p| p.at_unix_micros > from.at_unix_micros).collect();
        let upto = later.iter().position(|p| p.at_unix_micros > at);
        let sources = match upto {
            Some(i) => &later[..=i],
            None => &later[..],
        };
        let mut staged = std::collections::BTreeMap::new();
        for p in sources {
            let mut files = self.repo.point_files(p)?;
            for seg in files.list("pg_wal").into_iter().filter(|n| is_wal_segment(n) && *n >= first_needed) {
                if let Some(bytes) = files.read(&format!("pg_wal/{seg}"))? {
                    staged.insert(seg, bytes); // later points hold more of a segment
                }
            }
        }
        if upto.is_none() {
            // No point after `at` yet: the rest is in the source's live state.
            let live = self.layout.mount_point(src).join("pg_wal");
            for e in std::fs::read_dir(&live).with_context(|| format!("reading {}", live.display()))?.flatten() {
                let seg = e.file_name().to_string_lossy().into_owned();
                if is_wal_segment(&seg) && seg >= first_needed {
                    staged.insert(seg, std::fs::read(e.path()).with_context(|| format!("reading {}", e.path().display()))?);
                }
            }
        }
        // Not into pg_wal: postgres first replays all of pg_wal as crash recovery and
        // counts the copy consistent only at its end, which must stay the point's cut.
        let archive = self.layout.mount_point(name).join(pgbranch_replicator::pg::RECOVERY_ARCHIVE);
        std::fs::create_dir_all(&archive).with_context(|| format!("creating {}", archive.display()))?;
        let (uid, gid) = self.owner;
        std::os::unix::fs::chown(&archive, Some(uid), Some(gid)).with_context(|| format!("giving {} to postgres", archive.display()))?;
        for (seg, bytes) in &staged {
            let path = archive.join(seg);
            std::fs::write(&path, bytes).with_context(|| format!("staging WAL segment {seg} into branch {name}"))?;
            std::os::unix::fs::chown(&path, Some(uid), Some(gid)).with_context(|| format!("giving {} to postgres", path.display()))?;
        }
        let target = format!("{}+00", format_utc_micros(at));
        pgbranch_replicator::pg::configure_recovery_to(&self.layout.mount_point(name), &target)?;
        Ok(staged.len())
    }
}

/// `us` as `YYYY-MM-DD HH:MM:SS.ffffff` (UTC), a timestamptz postgres reads exactly.
fn format_utc_micros(us: u64) -> String {
    let secs = format_utc(us - us % 1_000_000);
    format!("{}.{:06}", secs.trim_end_matches('Z').replace('T', " "), us % 1_000_000)
}
