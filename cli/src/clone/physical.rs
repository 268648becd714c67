//! `pgbranch clone stream` without a transform config: the physical follower, from the
//! CLI's side. The CLI checks the source, makes the initial copy with a progress bar,
//! and hands the running follower to the daemon, which keeps it streaming.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use pgbranch_replicator::basebackup;
use pgbranch_replicator::pg::{Owner, PgBin};
use pgbranch_replicator::source::Source;

use crate::api::Request;
use crate::client;
use crate::daemon::MAIN;
use crate::layout::Layout;

/// Checks the source, copies it into `main` and starts following it. Returns main's URL.
pub fn stream(layout: &Layout, source_url: &str, slot: &str, pg_bin: Option<PathBuf>, quiet: bool) -> Result<String> {
    let source = Source::parse(source_url)?;
    let info = source.check_physical(slot)?;
    let bin = PgBin::for_major(pg_bin, info.major)?;
    let owner = Owner::for_branches()?;
    if client::call(layout, &Request::Path { name: MAIN.into() }).is_ok() {
        bail!("branch main already exists; a store follows one source: run `pgbranch clone stop` and `pgbranch branch delete main` first, or use another --store");
    }
    // pg_basebackup, the standby and the daemon read the store's copies of the TLS files.
    let source_url = &crate::source_tls::install(layout, &owner, &source)?;
    let source = Source::parse(source_url)?;
    let created = client::call(
        layout,
        &Request::CreateBranch { name: MAIN.into(), from: None, start: false, ttl_secs: None, protect: false },
    )?;
    let path = PathBuf::from(created["path"].as_str().unwrap_or_default());

    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("copying {bar:32} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let t = std::time::Instant::now();
    let mut total = 0;
    let copied = basebackup::run(&bin, &owner, &source, &path, slot, |p| {
        total = p.total_bytes;
        bar.set_length(p.total_bytes);
        bar.set_position(p.done_bytes);
    });
    if let Err(e) = copied {
        bar.abandon();
        // Leave neither a slot on the source nor a half-made main.
        let _ = source.drop_slot(slot);
        let _ = client::call(layout, &Request::Delete { name: MAIN.into(), snapshot: false });
        return Err(e).context("initial copy of the source failed; nothing was left behind");
    }
    bar.finish_and_clear();
    if !quiet {
        let secs = t.elapsed().as_secs_f64();
        eprintln!(
            "copied {} in {secs:.1}s ({}/s)",
            crate::output::bytes(total),
            crate::output::bytes((total as f64 / secs.max(0.001)) as u64)
        );
    }
    let started = client::call(
        layout,
        &Request::FollowRegister { source_url: source_url.into(), slot: slot.into(), pg_bin: bin.0.display().to_string() },
    );
    match started {
        Ok(v) => Ok(v["url"].as_str().unwrap_or_default().to_string()),
        Err(e) => {
            let _ = source.drop_slot(slot);
            Err(e).context("starting the standby on main failed")
        }
    }
}
