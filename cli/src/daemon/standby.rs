//! The physical follower's watch over main's hot standby. A standby stops replaying
//! when its primary raises one of the settings a hot standby needs at least as high
//! (max_connections, max_wal_senders, ...): it pauses recovery, or aborts it when it
//! starts, with "NAME = N is a lower setting than on the primary server, where its
//! value was M". The watch reads main's server log for that message, raises the
//! setting in main's own postgresql.conf (to the source's current values, at least M)
//! and restarts the standby; it also restarts a standby that exited by itself. Both
//! are recorded in the follower's state, so `status` says so.

use std::io::{Read, Seek, SeekFrom};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use pgbranch_replicator::pgconf::{self, StandbyMinimums};
use pgbranch_replicator::source::Source;

use super::{Daemon, MAIN};
use crate::api::{FollowerMode, RaisedSetting};
use crate::clock::now_unix;

const WATCH_INTERVAL: Duration = Duration::from_secs(1);
/// How much of an existing log the first look reads (older messages were acted on).
const FIRST_LOOK_BYTES: u64 = 256 * 1024;

/// The part of main's server log not read yet.
struct LogCursor {
    offset: Option<u64>,
}

impl LogCursor {
    fn read_new(&mut self, path: &Path) -> String {
        let Ok(mut f) = std::fs::File::open(path) else { return String::new() };
        let len = f.metadata().map_or(0, |m| m.len());
        let start = match self.offset {
            Some(o) if o <= len => o,
            _ => len.saturating_sub(FIRST_LOOK_BYTES),
        };
        let mut buf = Vec::new();
        if f.seek(SeekFrom::Start(start)).is_ok() && f.read_to_end(&mut buf).is_ok() {
            self.offset = Some(start + buf.len() as u64);
        }
        String::from_utf8_lossy(&buf).into_owned()
    }
}

impl Daemon {
    pub(super) fn spawn_standby_watch(self: &Arc<Self>) {
        let d = self.clone();
        let spawned = std::thread::Builder::new().name("standby-watch".into()).spawn(move || {
            let mut cursor = LogCursor { offset: None };
            while !d.stopping.load(Ordering::Relaxed) {
                std::thread::sleep(WATCH_INTERVAL);
                if let Err(e) = d.watch_standby(&mut cursor) {
                    tracing::warn!("watching main's standby: {e:#}");
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the standby watch: {e}");
        }
    }

    fn watch_standby(&self, cursor: &mut LogCursor) -> Result<()> {
        let Some(f) = self.servers.follower().filter(|f| f.mode == FollowerMode::Physical && !f.stopped) else { return Ok(()) };
        if !self.servers.spec(MAIN).is_some_and(|s| s.wanted) || self.stopping.load(Ordering::Relaxed) {
            return Ok(());
        }
        let data = self.layout.mount_point(MAIN);
        let log = self.servers.socket_dir(MAIN).join("postgres.log");
        let current = pgconf::read_minimums(&data);
        let needed = pgconf::parse_insufficient(&cursor.read_new(&log)).filter(|i| current.get(&i.name).is_none_or(|v| v < i.primary));
        if let Some(needed) = needed {
            // Raise every setting the source has higher now, not just the one the
            // standby named first: one restart instead of one per setting.
            let mut wanted = StandbyMinimums::default();
            wanted.0.insert(needed.name.clone(), needed.primary);
            match Source::parse(&f.source_url).map_err(anyhow::Error::from).and_then(|s| {
                let mut c = s.connect()?;
                Ok(pgconf::read_source_settings(&mut c)?)
            }) {
                Ok(settings) => wanted.merge(&settings.minimums),
                Err(e) => tracing::warn!("reading the source's settings: {e:#}; raising {} only", needed.name),
            }
            let mut raised = Vec::new();
            for (name, to) in &wanted.0 {
                let from = current.get(name).unwrap_or(0);
                if *to > from {
                    pgconf::set_minimum(&data, &self.servers.owner, name, *to).with_context(|| format!("raising {name} on main"))?;
                    tracing::warn!("the source raised {name} to {to}; raised it on main (was {from}) and restarting main's standby");
                    raised.push(RaisedSetting { name: name.clone(), from, to: *to, at_unix: now_unix() });
                }
            }
            self.servers.update(|st| {
                if let Some(f) = st.follower.as_mut() {
                    f.settings_raised.extend(raised);
                }
            })?;
            return self.servers.restart(MAIN, &data).context("restarting main's standby with the raised settings");
        }
        if self.servers.exited(MAIN) {
            tracing::warn!("main's standby exited by itself; starting it again (see {})", log.display());
            self.servers.update(|st| {
                if let Some(f) = st.follower.as_mut() {
                    f.standby_restarts += 1;
                }
            })?;
            self.servers.restart(MAIN, &data).context("restarting main's standby")?;
        }
        Ok(())
    }
}
