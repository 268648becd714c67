//! The automatic garbage collector: a thread that asks the repository, every few
//! seconds, whether the store has grown past its bound since the last collection
//! (`Repository::auto_gc`), and collects alongside commits when it has. `gc = "manual"`
//! in `pgbranch.toml` turns it off; `pgbranch gc` collects at once either way.
//!
//! Collections (automatic or asked for), `du` and `verify` run at nice
//! [`MAINTENANCE_NICE`]: on a busy host they take the CPU the branches' postgres leave,
//! instead of half of it (a collection is CPU-bound: decoding trees, merging runs).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use pgbranch_fs::repo::Repository;

use super::Daemon;
use crate::api::{self, GcStatus};
use crate::store_config::GcMode;

/// How often the collector checks the store's size.
const CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// The nice value of threads doing maintenance (see the module doc): 10 gives such a
/// thread about a tenth of the CPU share of a postgres backend it competes with.
pub(super) const MAINTENANCE_NICE: i32 = 10;

/// Lowers the calling thread's CPU priority to [`MAINTENANCE_NICE`].
pub(super) fn run_as_maintenance() {
    if let Err(e) = pgbranch_fs::sys::set_thread_nice(MAINTENANCE_NICE) {
        tracing::warn!("cannot lower the priority of a maintenance thread: {e}; it competes with branches at full priority");
    }
}

impl Daemon {
    pub fn spawn_collector(self: &Arc<Self>) -> std::io::Result<()> {
        if self.gc_mode == GcMode::Manual {
            tracing::info!("automatic gc is off (gc = \"manual\" in pgbranch.toml); run `pgbranch gc`");
            return Ok(());
        }
        let d = self.clone();
        std::thread::Builder::new().name("collector".into()).spawn(move || d.run_collector())?;
        Ok(())
    }

    fn run_collector(&self) {
        run_as_maintenance();
        let mut failing = false;
        while !self.stopping.load(Ordering::Relaxed) {
            std::thread::sleep(CHECK_INTERVAL);
            if self.stopping.load(Ordering::Relaxed) || self.space.growth_refused() {
                // On a full disk a rewrite needs room it does not have: `pgbranch gc`
                // (after `branch delete`) frees the wholly-dead packs first.
                continue;
            }
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| self.repo.auto_gc()));
            match outcome {
                Ok(Ok(Some(r))) => {
                    failing = false;
                    tracing::info!(
                        "automatic gc: removed {} objects ({} revived), {} -> {} bytes",
                        r.objects_removed,
                        r.objects_revived,
                        r.bytes_before,
                        r.bytes_after
                    );
                }
                Ok(Ok(None)) => {}
                Ok(Err(e)) if !failing => {
                    failing = true;
                    tracing::error!("automatic gc failed: {e}; retrying every {}s, logged again once it works", CHECK_INTERVAL.as_secs());
                }
                Ok(Err(_)) => {}
                Err(panic) => tracing::error!("automatic gc panicked: {}", super::panic_message(panic.as_ref())),
            }
        }
    }

    pub(super) fn gc_status(&self) -> GcStatus {
        let a = self.repo.gc_activity();
        let expired = self.repo.expired_since_gc();
        let next_at_bytes = (self.gc_mode == GcMode::Auto)
            .then(|| a.last_report.as_ref().map(|r| (r.bytes_after + Repository::auto_gc_threshold(a.live_bytes)).saturating_sub(expired)))
            .flatten();
        GcStatus {
            mode: match self.gc_mode {
                GcMode::Auto => api::GcMode::Auto,
                GcMode::Manual => api::GcMode::Manual,
            },
            running: a.running,
            collections: a.collections,
            last_finished_unix_micros: a.last_finished_unix_micros,
            last: a.last_report.map(super::handlers::gc_done),
            live_bytes: a.live_bytes,
            last_duration_millis: a.last_duration_millis,
            next_at_bytes,
            bytes_freed_total: a.bytes_freed_total,
            objects_removed_total: a.objects_removed_total,
            last_error: a.last_error,
        }
    }
}
