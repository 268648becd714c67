//! The masked follower inside the daemon: one thread runs the change stream into
//! `main`, retrying after the source or main goes away, stopping (with the reason in
//! `status`) when the stream needs the user. Also what `status` shows of it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use parking_lot::Mutex;
use pgbranch_replicator::logical::stream::{self, StreamError, StreamSetup, StreamStatus};
use pgbranch_replicator::source::Source;
use pgbranch_replicator::transform::TransformConfig;

use super::servers::FollowerConfig;
use super::{Daemon, MAIN};
use crate::api::{FollowerState, FollowerStatus};

/// A running stream thread.
pub(crate) struct LogicalRunner {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub(crate) status: Arc<Mutex<StreamStatus>>,
}

impl LogicalRunner {
    pub(crate) fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Daemon {
    /// Starts the stream thread of the configured masked follower.
    pub(super) fn start_logical(&self, f: &FollowerConfig) -> Result<()> {
        let text = std::fs::read_to_string(self.layout.transform_config())
            .with_context(|| format!("reading {}", self.layout.transform_config().display()))?;
        let config = TransformConfig::parse(f.config_name.as_deref().unwrap_or("transform.yaml"), &text)?;
        let spec = self.servers.spec(MAIN).context("branch main has no server configured")?;
        let mut main = postgres::Config::new();
        main.host_path(self.servers.socket_dir(MAIN)).port(spec.port).user("postgres").dbname(&spec.dbname);
        main.connect_timeout(Duration::from_secs(10));
        let setup = StreamSetup {
            source: Source::parse(&f.source_url)?,
            slot: f.slot.clone(),
            publication: f.publication.clone().unwrap_or_else(|| f.slot.clone()),
            main,
            config: Arc::new(config),
            key: self.layout.mask_key()?,
            strict: f.strict,
        };
        let stop = Arc::new(AtomicBool::new(false));
        let status = Arc::new(Mutex::new(StreamStatus::default()));
        status.lock().state = FollowerState::Starting.as_str().into();
        let (s, st) = (stop.clone(), status.clone());
        let thread = std::thread::Builder::new().name("follower".into()).spawn(move || run(&setup, &st, &s))?;
        if let Some(old) = self.logical.lock().replace(LogicalRunner { stop, thread: Some(thread), status }) {
            old.stop();
        }
        Ok(())
    }

    pub(super) fn stop_logical(&self) {
        let runner = self.logical.lock().take();
        if let Some(r) = runner {
            r.stop();
        }
    }

    /// The masked follower's part of `status`.
    pub(super) fn logical_status(&self, f: &FollowerConfig, v: &mut FollowerStatus) {
        let Some(status) = self.logical.lock().as_ref().map(|r| r.status.lock().clone()) else {
            // Not started yet: the daemon brings main's server back first.
            v.state = FollowerState::Starting;
            return;
        };
        v.state = FollowerState::from_stream(&status.state).unwrap_or_else(|| {
            tracing::warn!("the masked follower's stream reports an unknown state {:?}; shown as \"error\"", status.state);
            FollowerState::Error
        });
        v.applied_lsn = Some(status.applied_lsn.to_string());
        v.replay_lsn = Some(status.applied_lsn.to_string());
        v.rows_applied = Some(status.rows_applied);
        v.transactions_applied = Some(status.transactions_applied);
        v.rows_per_sec = Some(status.rows_per_sec());
        v.stream_error = status.error.clone();
        if let Ok(source) = Source::parse(&f.source_url) {
            match source.current_lsn() {
                Ok((text, pos)) => {
                    let lag = pos.saturating_sub(status.confirmed_lsn.0);
                    v.source_lsn = Some(text);
                    v.lag_bytes = Some(lag);
                    v.lag_seconds = Some(if lag == 0 { 0.0 } else { status.apply_delay_secs });
                }
                Err(e) => v.error = Some(e.to_string()),
            }
        }
    }
}

/// The stream thread: runs the stream, retrying with backoff after transient failures.
fn run(setup: &StreamSetup, status: &Mutex<StreamStatus>, stop: &AtomicBool) {
    let mut backoff = Duration::from_millis(500);
    while !stop.load(Ordering::Relaxed) {
        let began = std::time::Instant::now();
        let result = stream::run(setup, status, stop);
        if began.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(500);
        }
        match result {
            Ok(()) => break,
            Err(StreamError::Fatal(e)) => {
                tracing::error!("masked follower stopped: {e}");
                let mut s = status.lock();
                s.state = FollowerState::Error.as_str().into();
                s.error = Some(e);
                return;
            }
            Err(StreamError::Transient(e)) => {
                tracing::warn!("masked follower: {e}; retrying in {:.1}s", backoff.as_secs_f64());
                {
                    let mut s = status.lock();
                    s.state = FollowerState::Reconnecting.as_str().into();
                    s.error = Some(e);
                }
                let until = std::time::Instant::now() + backoff;
                while std::time::Instant::now() < until && !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(50));
                }
                backoff = (backoff * 2).min(Duration::from_secs(5));
            }
        }
    }
    status.lock().state = FollowerState::Stopped.as_str().into();
}
