//! A branch's history: the points (commits) it keeps for its retention window, and
//! the rule that thins them as they age.
//!
//! Every commit of a branch with a retention window is a point: the root it made, the
//! instant of its cut, and the bytes it changed. Points are kept in the catalog
//! (`format::catalog::HISTORY`) next to the head, written in the same transaction, so
//! a crash never leaves a head without its point or a point without its objects. GC
//! marks from every retained root. Thinning keeps every point of the last hour, the
//! newest of each minute for a day, the newest of each hour beyond, and nothing older
//! than the window. History costs only what differs between retained points: they
//! share every unchanged block and tree node.

use std::time::{SystemTime, UNIX_EPOCH};

use crate::block::Hash;

const MINUTE: u64 = 60_000_000;
const HOUR: u64 = 60 * MINUTE;
const DAY: u64 = 24 * HOUR;

/// One retained commit of a branch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Point {
    /// When its cut was made, µs since the Unix epoch.
    pub at_unix_micros: u64,
    pub root: Hash,
    /// Bytes of file blocks its commit stored.
    pub changed_bytes: u64,
    /// What the program writing the branch reported about the point, once its commit
    /// had landed (absent when nothing runs on the branch).
    pub app: Option<AppPosition>,
}

/// A position in the log of the program that writes a branch, as that program reports
/// it right after a commit: so the point holds that log up to at most `position`
/// (for postgres, an LSN: what the point holds is replayed up to no further than it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AppPosition {
    /// An upper bound of the log the point holds; grows from point to point.
    pub position: u64,
    /// The newest transaction the program had committed (or replayed) by then.
    pub last_commit_unix_micros: Option<u64>,
}

pub fn now_unix_micros() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// `us` (µs since the Unix epoch) as RFC 3339 UTC, to the second.
pub fn format_utc(us: u64) -> String {
    // RFC 3339 ends with the year 9999.
    const LAST: u64 = 253_402_300_799_000_000;
    if us > LAST {
        return format!("{us} µs after 1970");
    }
    humantime::format_rfc3339_seconds(UNIX_EPOCH + std::time::Duration::from_micros(us)).to_string()
}

/// The times (of `points_at`, ascending) to drop at `now` for a window of `window_secs`:
/// those older than the window, and all but the newest of each minute (ages 1 h – 1 d)
/// or hour (beyond a day).
pub fn to_drop(points_at: &[u64], now: u64, window_secs: u64) -> Vec<u64> {
    let window = window_secs.saturating_mul(1_000_000);
    let bucket = |at: u64| {
        let age = now.saturating_sub(at);
        if age <= HOUR {
            None // every point kept
        } else if age <= DAY {
            Some((1u8, at / MINUTE))
        } else {
            Some((2u8, at / HOUR))
        }
    };
    let mut drop = Vec::new();
    for (i, &at) in points_at.iter().enumerate() {
        if now.saturating_sub(at) > window {
            drop.push(at);
            continue;
        }
        // A point is superseded when the next one falls in the same bucket.
        if let (Some(b), Some(&next)) = (bucket(at), points_at.get(i + 1)) {
            if bucket(next) == Some(b) {
                drop.push(at);
            }
        }
    }
    drop
}

/// The newest point at or before `at`, or why there is none.
pub fn point_at(points: &[Point], at: u64) -> Option<&Point> {
    points.iter().filter(|p| p.at_unix_micros <= at).max_by_key(|p| p.at_unix_micros)
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: u64 = 1_800_000_000 * 1_000_000;

    #[test]
    fn the_last_hour_keeps_every_point_and_the_window_bounds_all() {
        let at: Vec<u64> = (0..100).map(|i| NOW - 3_600_000_000 + i * 5_000_000).collect();
        assert!(to_drop(&at, NOW, 7200).is_empty());
        // A 30-minute window drops what is older than 30 minutes.
        let dropped = to_drop(&at, NOW, 1800);
        assert!(dropped.iter().all(|&t| NOW - t > 1800 * 1_000_000));
        assert_eq!(dropped.len(), at.iter().filter(|&&t| NOW - t > 1800 * 1_000_000).count());
    }

    #[test]
    fn older_points_thin_to_the_newest_of_each_minute_then_each_hour() {
        // A point every 10 s from 3 days ago until now.
        let at: Vec<u64> = (0..(3 * 86_400 / 10)).map(|i| NOW - 3 * DAY + i * 10_000_000).collect();
        let dropped: std::collections::HashSet<u64> = to_drop(&at, NOW, 7 * 86_400).into_iter().collect();
        let kept: Vec<u64> = at.iter().copied().filter(|t| !dropped.contains(t)).collect();
        let in_hour = kept.iter().filter(|&&t| NOW - t <= HOUR).count();
        let in_day = kept.iter().filter(|&&t| NOW - t > HOUR && NOW - t <= DAY).count();
        let beyond = kept.iter().filter(|&&t| NOW - t > DAY).count();
        assert_eq!(in_hour, 360, "every point of the last hour");
        assert!((23 * 60 - 1..=23 * 60 + 1).contains(&in_day), "one a minute for the rest of the day: {in_day}");
        assert!((47..=49).contains(&beyond), "one an hour beyond: {beyond}");
        // Thinning again changes nothing: it is stable.
        assert!(to_drop(&kept, NOW, 7 * 86_400).is_empty());
    }

    #[test]
    fn the_point_at_a_time_is_the_newest_not_after_it() {
        let p = |s: u64| Point { at_unix_micros: s, root: Hash([s as u8; 32]), changed_bytes: 0, app: None };
        let points = vec![p(10), p(20), p(30)];
        assert_eq!(point_at(&points, 25).map(|p| p.at_unix_micros), Some(20));
        assert_eq!(point_at(&points, 30).map(|p| p.at_unix_micros), Some(30));
        assert_eq!(point_at(&points, 9), None);
    }
}
