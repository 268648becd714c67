//! Wall-clock time as the daemon records it (branch expiry, raised settings).

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(crate) fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}
