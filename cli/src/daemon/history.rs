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
