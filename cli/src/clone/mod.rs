//! `pgbranch clone`: following a source into `main`, from the CLI's side. Physically
//! (a byte-identical hot standby) by default; logically with every configured column
//! masked in flight when a transform config is given.

pub mod logical;
pub mod physical;

use anyhow::{bail, Context, Result};

pub use physical::stream;

/// The replication slot (and, for the masked follower, publication) made on the source.
pub const DEFAULT_SLOT: &str = "pgbranch";

/// "8h", "30m", "45s", "2d" -> seconds.
pub fn parse_duration(text: &str) -> Result<u64> {
    let text = text.trim();
    let (num, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let n: u64 = num.parse().with_context(|| format!("invalid duration '{text}': use e.g. 30m, 8h, 2d"))?;
    let mult = match unit {
        "s" | "" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => bail!("invalid duration '{text}': the unit is s, m, h or d"),
    };
    Ok(n * mult)
}

/// Creates the empty `main` a follower fills (no server: the follower starts its own).
fn create_empty_main(layout: &crate::layout::Layout) -> Result<crate::api::Created> {
    let req = crate::api::Request::CreateBranch {
        name: crate::daemon::MAIN.into(),
        from: None,
        start: false,
        ttl_secs: None,
        protect: false,
        at_unix_micros: None,
        at_lsn: None,
        history_secs: None,
    };
    crate::client::call_as(layout, &req)
}
