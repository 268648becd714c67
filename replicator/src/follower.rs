//! A physical follower: a stock postgres hot standby streaming from the source through
//! a replication slot. This module measures how far behind it is.

use crate::pg::Server;
use crate::source::{Source, SourceError};

#[derive(Clone, Debug, Default)]
pub struct Lag {
    pub source_lsn: String,
    pub replay_lsn: String,
    pub bytes: u64,
    /// Age of the last replayed transaction while WAL is pending; 0 when caught up.
    pub seconds: f64,
}

/// Compares the source's current WAL position with what the standby has replayed.
pub fn measure(source: &Source, standby: &Server) -> Result<Lag, SourceError> {
    let (source_lsn, source_pos) = source.current_lsn()?;
    let row = standby
        .psql_as(
            &source.user,
            &source.dbname,
            "SELECT pg_last_wal_replay_lsn()::text, (pg_last_wal_replay_lsn() - '0/0'::pg_lsn)::bigint, \
             coalesce(extract(epoch from now() - pg_last_xact_replay_timestamp()), 0)",
        )
        .map_err(|e| SourceError::Query(format!("on the standby: {e:#}")))?;
    let parts: Vec<&str> = row.split('|').collect();
    let replay_pos: u64 = parts.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    let bytes = source_pos.saturating_sub(replay_pos);
    let age: f64 = parts.get(2).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    Ok(Lag {
        source_lsn,
        replay_lsn: parts.first().unwrap_or(&"").to_string(),
        bytes,
        seconds: if bytes == 0 { 0.0 } else { age.max(0.0) },
    })
}
