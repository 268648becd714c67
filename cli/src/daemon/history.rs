//! The daemon's history verbs: `branch log`, `branch set --history`, `branch create
//! --at`, and the store-wide default window read from `pgbranch.toml`.

use anyhow::{bail, Context, Result};
use pgbranch_fs::history::{format_utc, AppPosition, Point};
use pgbranch_replicator::logical::lsn::Lsn;
use pgbranch_replicator::pg::RecoveryTarget;

use super::Daemon;
use crate::api::{BranchLog, HistorySetting, PointInfo};

pub(crate) fn point_info(p: &Point) -> PointInfo {
    PointInfo {
        at: format_utc(p.at_unix_micros),
        at_unix_micros: p.at_unix_micros,
        root: p.root.to_hex(),
        changed_bytes: p.changed_bytes,
        lsn: p.app.map(|a| Lsn(a.position).to_string()),
        last_commit_unix_micros: p.app.and_then(|a| a.last_commit_unix_micros),
    }
}

/// What `branch create --at` / `--at-lsn` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PastTarget {
    /// An instant, µs since the Unix epoch.
    Time(u64),
    /// A WAL position of a postgres branch.
    Lsn(u64),
}

/// Asks postgres on a branch, right after a commit, how far its WAL went: an upper
/// bound of the WAL the commit's point holds (a standby: what it has received and
/// replayed; a primary: where WAL insertion is), and its last replayed commit.
const POSITION_SQL: &str = "SELECT CASE WHEN pg_is_in_recovery() \
     THEN greatest(pg_last_wal_receive_lsn(), pg_last_wal_replay_lsn()) \
     ELSE pg_current_wal_insert_lsn() END - '0/0'::pg_lsn, \
     CASE WHEN pg_is_in_recovery() THEN (extract(epoch from pg_last_xact_replay_timestamp()) * 1000000)::bigint END";

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
    /// After a commit of branch `name`: when postgres runs on it and it keeps history,
    /// records postgres' WAL position on the point the commit made (for `branch log`
    /// and `--at-lsn`). Best effort: a point without one is skipped by `--at-lsn`.
    pub(super) fn note_position(&self, name: &str) {
        if !self.servers.is_running(name) || self.repo.retention(name).is_ok_and(|(secs, _)| secs == 0) {
            return;
        }
        let Ok(Some(newest)) = self.repo.newest_point(name) else { return };
        if newest.app.is_some() {
            return; // nothing new was committed
        }
        let (Some(server), Some(spec)) = (self.servers.server(name), self.servers.spec(name)) else { return };
        let row = match server.psql_as(&spec.user, &spec.dbname, POSITION_SQL) {
            Ok(r) => r,
            Err(e) => return tracing::debug!("branch {name}: reading the WAL position for its point: {e:#}"),
        };
        let mut parts = row.trim().split('|');
        let Some(position) = parts.next().and_then(|p| p.parse::<u64>().ok()) else { return };
        let last_commit_unix_micros = parts.next().and_then(|p| p.parse::<u64>().ok());
        if let Err(e) = self.repo.annotate_point(name, newest.at_unix_micros, AppPosition { position, last_commit_unix_micros }) {
            tracing::warn!("branch {name}: recording the WAL position of its point: {e}");
        }
    }

    /// Makes branch `name` from `src` as it was at `target`: the newest retained point
    /// at or before an instant, or the newest whose WAL ends at or before an LSN.
    pub(super) fn create_in_past(&self, name: &str, src: &str, target: PastTarget) -> Result<Point> {
        let at = match target {
            PastTarget::Time(at) => return Ok(self.repo.create_at(name, src, at)?.1),
            PastTarget::Lsn(at) => at,
        };
        let points = self.repo.history(src)?;
        let known: Vec<(u64, &Point)> = points.iter().filter_map(|p| p.app.map(|a| (a.position, p))).collect();
        let Some((_, point)) = known.iter().rev().find(|(pos, _)| *pos <= at) else {
            match (known.first(), known.last()) {
                (Some((first, _)), Some((last, _))) => bail!(
                    "branch {src} has no retained point at or before LSN {}: its points cover LSN {} to {} (see `pgbranch branch log {src}`)",
                    Lsn(at),
                    Lsn(*first),
                    Lsn(*last)
                ),
                _ => bail!(
                    "branch {src} has no retained point with a WAL position: --at-lsn needs postgres running on it while it keeps history (see `pgbranch branch log {src}`)"
                ),
            }
        };
        Ok(self.repo.create_from_point(name, src, point.at_unix_micros)?.1)
    }

    /// Prepares branch `name`, made from `src`'s point `from` for `target`, to recover
    /// exactly to it: the WAL segments `src` wrote after that point (from its later
    /// retained points, and from its live state when no point is known to hold the
    /// target's WAL) go into an archive directory in the branch, and postgres is told
    /// to replay them up to the target (restore_command copies from there) and promote.
    /// Returns how many segments were staged.
    pub(super) fn stage_recovery_to(&self, name: &str, src: &str, from: &Point, target: PastTarget) -> Result<usize> {
        let wal = self.layout.mount_point(name).join("pg_wal");
        let have: Vec<String> = std::fs::read_dir(&wal)
            .with_context(|| format!("reading {}", wal.display()))?
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| is_wal_segment(n))
            .collect();
        // Segments before the one the point was writing are complete in it already. That
        // one is the newest whose first page says it is itself: postgres recycles old
        // segments under future names, their pages still addressed as before.
        let mut have = have;
        have.sort_unstable();
        let first_needed = have.iter().rev().find(|n| holds_its_own_wal(&wal.join(n), n)).or(have.first()).cloned().unwrap_or_default();
        let later: Vec<Point> = self.repo.history(src)?.into_iter().filter(|p| p.at_unix_micros > from.at_unix_micros).collect();
        let upto = match target {
            // The first point cut after the instant holds the WAL up to it.
            PastTarget::Time(at) => later.iter().position(|p| p.at_unix_micros > at),
            // A point's position is an upper bound of its WAL, sampled after its cut: the
            // point after the first one past the LSN was cut once that WAL was written.
            PastTarget::Lsn(at) => {
                later.iter().position(|p| p.app.is_some_and(|a| a.position >= at)).map(|i| i + 1).filter(|i| *i < later.len())
            }
        };
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
            // No point known to hold the target yet: the rest is in the source's live state.
            let live = self.layout.mount_point(src).join("pg_wal");
            for e in std::fs::read_dir(&live).with_context(|| format!("reading {}", live.display()))?.flatten() {
                let seg = e.file_name().to_string_lossy().into_owned();
                if is_wal_segment(&seg) && seg >= first_needed {
                    staged.insert(seg, std::fs::read(e.path()).with_context(|| format!("reading {}", e.path().display()))?);
                }
            }
        }
        if let Some((from_seg, to_seg)) = wal_gap(&first_needed, &staged) {
            bail!(
                "cannot make branch {name} exact to the target: WAL segments {from_seg} to {to_seg}, written by {src} after its point of {}, \
                 are in no retained point (a checkpoint recycled them between two commits), so recovery would stop short of the target; \
                 nothing was made (see `pgbranch branch log {src}` for the retained points)",
                format_utc(from.at_unix_micros)
            );
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
        let target = match target {
            PastTarget::Time(at) => RecoveryTarget::Time(format!("{}+00", format_utc_micros(at))),
            PastTarget::Lsn(at) => RecoveryTarget::Lsn(Lsn(at).to_string()),
        };
        pgbranch_replicator::pg::configure_recovery_to(&self.layout.mount_point(name), &target)?;
        Ok(staged.len())
    }
}

/// A WAL segment's timeline and its number in the WAL (log id × segments per log id +
/// segment), for segments of `seg_bytes`.
fn segment_number(name: &str, seg_bytes: u64) -> Option<(u32, u64)> {
    if !is_wal_segment(name) || seg_bytes == 0 {
        return None;
    }
    let part = |r: std::ops::Range<usize>| u64::from_str_radix(&name[r], 16).ok();
    let per_log = (1u64 << 32) / seg_bytes;
    Some((part(0..8)? as u32, part(8..16)? * per_log + part(16..24)?))
}

/// Whether the WAL segment file at `path` (named `name`) holds WAL of its own position:
/// its first page's `xlp_pageaddr` is the segment's start. A recycled segment, renamed
/// ahead for reuse, still carries the addresses of the WAL it held before.
fn holds_its_own_wal(path: &std::path::Path, name: &str) -> bool {
    use std::io::Read;
    let Ok(mut f) = std::fs::File::open(path) else { return false };
    let seg_bytes = f.metadata().map(|m| m.len()).unwrap_or(0);
    let mut header = [0u8; 16];
    if f.read_exact(&mut header).is_err() {
        return false;
    }
    let page_addr = u64::from_le_bytes(header[8..16].try_into().unwrap_or_default());
    segment_number(name, seg_bytes).is_some_and(|(_, n)| n * seg_bytes == page_addr)
}

/// The first missing run of segments between `first` (held by the point itself) and the
/// newest staged one, on `first`'s timeline: WAL recovery cannot cross a gap.
fn wal_gap(first: &str, staged: &std::collections::BTreeMap<String, Vec<u8>>) -> Option<(String, String)> {
    let seg_bytes = staged.values().map(|b| b.len() as u64).max().filter(|l| l.is_power_of_two()).unwrap_or(16 << 20);
    let (tli, start) = segment_number(first, seg_bytes)?;
    let mut have: Vec<u64> =
        staged.keys().filter_map(|n| segment_number(n, seg_bytes)).filter(|(t, _)| *t == tli).map(|(_, n)| n).collect();
    have.push(start);
    have.sort_unstable();
    have.dedup();
    let name = |n: u64| {
        let per_log = (1u64 << 32) / seg_bytes;
        format!("{tli:08X}{:08X}{:08X}", n / per_log, n % per_log)
    };
    have.windows(2).find(|w| w[1] > w[0] + 1).map(|w| (name(w[0] + 1), name(w[1] - 1)))
}

/// `us` as `YYYY-MM-DD HH:MM:SS.ffffff` (UTC), a timestamptz postgres reads exactly.
fn format_utc_micros(us: u64) -> String {
    let secs = format_utc(us - us % 1_000_000);
    format!("{}.{:06}", secs.trim_end_matches('Z').replace('T', " "), us % 1_000_000)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn staged(names: &[&str]) -> BTreeMap<String, Vec<u8>> {
        names.iter().map(|n| (n.to_string(), vec![0u8; 16 << 20])).collect()
    }

    #[test]
    fn a_gap_in_the_staged_wal_is_found_also_across_a_log_id() {
        let first = "0000000100000000000000FE";
        assert_eq!(wal_gap(first, &staged(&["0000000100000000000000FE", "0000000100000000000000FF", "000000010000000100000000"])), None);
        assert_eq!(
            wal_gap(first, &staged(&["0000000100000000000000FF", "000000010000000100000002"])),
            Some(("000000010000000100000000".into(), "000000010000000100000001".into()))
        );
        assert_eq!(wal_gap(first, &staged(&[])), None, "nothing staged: the point's own WAL");
        // A later timeline's segments (after a promotion) are not this one's gap.
        assert_eq!(wal_gap(first, &staged(&["0000000100000000000000FF", "000000020000000100000005"])), None);
    }
}
