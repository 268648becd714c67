//! Reading the TIME of `branch create --at TIME`: RFC 3339 (`2026-11-30T14:02:00Z`,
//! an offset or `Z` required, so a time is never read in the machine's zone by
//! accident), or relative to now (`-15m`, `2h`: that long ago).

use anyhow::{bail, Result};

/// TIME as µs since the Unix epoch.
pub fn parse_at(text: &str, now_unix_micros: u64) -> Result<u64> {
    let text = text.trim();
    if text.contains('T') || text.contains(':') {
        let Ok(t) = humantime::parse_rfc3339(text) else {
            bail!("invalid time '{text}': give RFC 3339 in UTC or with an offset, e.g. 2026-11-30T14:02:00Z, or a time ago such as -15m or 2h")
        };
        let Ok(since) = t.duration_since(std::time::UNIX_EPOCH) else { bail!("invalid time '{text}': before 1970") };
        return Ok(since.as_micros() as u64);
    }
    let ago = crate::clone::parse_duration(text.strip_prefix('-').unwrap_or(text))
        .map_err(|_| anyhow::anyhow!("invalid time '{text}': give RFC 3339 (2026-11-30T14:02:00Z) or a time ago such as -15m, 2h or 1d"))?;
    Ok(now_unix_micros.saturating_sub(ago.saturating_mul(1_000_000)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_and_times_ago() {
        let now = 1_800_000_000_000_000;
        assert_eq!(parse_at("2026-11-30T14:02:00Z", now).unwrap(), 1_796_047_320_000_000);
        assert_eq!(parse_at("-15m", now).unwrap(), now - 900_000_000);
        assert_eq!(parse_at("2h", now).unwrap(), now - 7_200_000_000);
        for bad in ["2026-11-30 14:02", "yesterday", "-15x", "2026-11-30T14:02:00"] {
            let err = parse_at(bad, now).unwrap_err().to_string();
            assert!(err.contains("invalid time") && err.contains(bad), "{bad}: {err}");
        }
    }
}
