//! `pgbranch.toml` in the store directory: the store-wide settings a user may edit.
//!
//! ```toml
//! # How long each branch keeps its history (retained commits) unless it has its own
//! # window (`branch create --history`, `branch set --history`): e.g. "30m", "24h",
//! # "7d"; "0" keeps none (the default).
//! history = "24h"
//!
//! # "auto" (the default): the daemon collects garbage in the background, alongside
//! # commits, whenever the store has grown past its bound; "manual": only `pgbranch gc`.
//! gc = "auto"
//! ```
//!
//! A missing file means the defaults; a file that does not parse, or an unknown key, is
//! an error naming the file, so a typo never silently means "no history".

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::Deserialize;

pub const FILE: &str = "pgbranch.toml";

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    history: Option<String>,
    gc: Option<GcMode>,
}

/// Who collects garbage.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum GcMode {
    /// The daemon, in the background.
    #[default]
    Auto,
    /// Only `pgbranch gc`.
    Manual,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The default retention window in seconds (0: no history).
    pub history_secs: u64,
    pub gc: GcMode,
}

pub fn path(store: &Path) -> PathBuf {
    store.join(FILE)
}

/// Reads `pgbranch.toml` of the store at `store` (the defaults when there is none).
pub fn load(store: &Path) -> Result<StoreConfig> {
    let path = path(store);
    let text = match std::fs::read_to_string(&path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(StoreConfig::default()),
        Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
    };
    let raw: Raw = toml::from_str(&text).with_context(|| format!("{} is not valid: fix or remove it", path.display()))?;
    let history_secs = raw
        .history
        .as_deref()
        .map(crate::clone::parse_duration)
        .transpose()
        .with_context(|| format!("{}: history", path.display()))?
        .unwrap_or(0);
    Ok(StoreConfig { history_secs, gc: raw.gc.unwrap_or_default() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_means_defaults_and_bad_input_names_the_file() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()).unwrap(), StoreConfig::default());
        std::fs::write(path(dir.path()), "history = \"2h\"\n").unwrap();
        assert_eq!(load(dir.path()).unwrap().history_secs, 7200);
        std::fs::write(path(dir.path()), "histroy = \"2h\"\n").unwrap();
        let err = format!("{:#}", load(dir.path()).unwrap_err());
        assert!(err.contains("pgbranch.toml is not valid") && err.contains("histroy"), "{err}");
        std::fs::write(path(dir.path()), "gc = \"manual\"\n").unwrap();
        assert_eq!(load(dir.path()).unwrap().gc, GcMode::Manual);
        std::fs::write(path(dir.path()), "gc = \"sometimes\"\n").unwrap();
        let err = format!("{:#}", load(dir.path()).unwrap_err());
        assert!(err.contains("sometimes") && err.contains("auto"), "{err}");
        std::fs::write(path(dir.path()), "history = \"2 weeks\"\n").unwrap();
        let err = format!("{:#}", load(dir.path()).unwrap_err());
        assert!(err.contains("history") && err.contains("invalid duration"), "{err}");
    }
}
