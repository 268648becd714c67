//! `pgbranch clone stream` without a transform config: the physical follower, from the
//! CLI's side. The CLI checks the source, makes the initial copy with a progress bar,
//! and hands the running follower to the daemon, which keeps it streaming.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use pgbranch_replicator::basebackup;
use pgbranch_replicator::pg::{Owner, PgBin};
use pgbranch_replicator::pgconf::{self, ServerConf, SourceSettings};
use pgbranch_replicator::source::Source;
use pgbranch_replicator::tablespace::{self, Tablespace};

use crate::api::{BranchUrl, Created, Request};
use crate::client;
use crate::daemon::MAIN;
use crate::layout::Layout;

/// Checks the source, copies it into `main` and starts following it. Returns main's URL.
pub fn stream(layout: &Layout, source_url: &str, slot: &str, pg_bin: Option<PathBuf>, quiet: bool) -> Result<String> {
    let source = Source::parse(source_url)?;
    let info = source.check_physical(slot)?;
    let bin = PgBin::for_major(pg_bin, info.major)?;
    if !quiet {
        eprintln!("main: PostgreSQL {} like the source ({})", info.version, bin.0.display());
    }
    let owner = Owner::for_branches()?;
    let (settings, tablespaces) = {
        let mut c = source.connect()?;
        (pgconf::read_source_settings(&mut c)?, tablespace::list(&mut c)?)
    };
    if client::call(layout, &Request::Path { name: MAIN.into() }).is_ok() {
        bail!("branch main already exists; a store follows one source: run `pgbranch clone stop` and `pgbranch branch delete main` first, or use another --store");
    }
    // pg_basebackup, the standby and the daemon read the store's copies of the TLS files.
    let source_url = &crate::source_tls::install(layout, &owner, &source)?;
    let source = Source::parse(source_url)?;
    let created: Created = super::create_empty_main(layout)?;
    let path = created.path;

    let bar = if quiet { ProgressBar::hidden() } else { ProgressBar::new(0) };
    bar.set_style(
        ProgressStyle::with_template("copying {bar:32} {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    let t = std::time::Instant::now();
    let mut total = 0;
    let mappings = tablespace::mapping_args(&path, &tablespaces);
    let copied = basebackup::run(&bin, &owner, &source, &path, slot, &mappings, |p| {
        total = p.total_bytes;
        bar.set_length(p.total_bytes);
        bar.set_position(p.done_bytes);
    })
    .map_err(anyhow::Error::from)
    .and_then(|()| {
        bar.finish_and_clear();
        if !quiet {
            let secs = t.elapsed().as_secs_f64();
            eprintln!(
                "copied {} in {secs:.1}s ({}/s)",
                crate::output::bytes(total),
                crate::output::bytes((total as f64 / secs.max(0.001)) as u64)
            );
        }
        configure_main(&bin, &owner, &path, settings, &tablespaces, quiet)
    });
    if let Err(e) = copied {
        bar.abandon();
        // Leave neither a slot on the source nor a half-made main.
        let _ = source.drop_slot(slot);
        let _ = client::call(layout, &Request::Delete { name: MAIN.into(), snapshot: false });
        return Err(e.context("initial copy of the source failed; nothing was left behind"));
    }
    let started: Result<BranchUrl> = client::call_as(
        layout,
        &Request::FollowRegister { source_url: source_url.into(), slot: slot.into(), pg_bin: bin.0.display().to_string() },
    );
    match started {
        Ok(v) => Ok(v.url),
        Err(e) => {
            let _ = source.drop_slot(slot);
            Err(e).context("starting the standby on main failed")
        }
    }
}

/// Gives the fresh copy in `path` its own configuration and in-place tablespaces.
fn configure_main(
    bin: &PgBin,
    owner: &Owner,
    path: &std::path::Path,
    settings: SourceSettings,
    tablespaces: &[Tablespace],
    quiet: bool,
) -> Result<()> {
    tablespace::make_in_place(path, tablespaces)?;
    let mut minimums = pgconf::from_controldata(bin, owner, path)?;
    minimums.merge(&settings.minimums);
    let (libraries, missing) = pgconf::available_libraries(bin, &settings.preload_libraries);
    if !missing.is_empty() {
        eprintln!(
            "warning: the source preloads {}, which the local PostgreSQL binaries in {} do not have; main runs without {}",
            missing.join(", "),
            bin.0.display(),
            if missing.len() == 1 { "it" } else { "them" }
        );
    }
    let carried = settings.carried.len();
    let in_place_tablespaces = !tablespaces.is_empty() && bin.major()? >= 15;
    pgconf::write(
        path,
        owner,
        &ServerConf { carried: settings.carried, minimums: minimums.clone(), preload_libraries: libraries, in_place_tablespaces },
    )?;
    if !quiet {
        let m: Vec<String> = minimums.0.iter().map(|(n, v)| format!("{n}={v}")).collect();
        eprintln!("main: own postgresql.conf ({carried} settings carried from the source; {})", m.join(", "));
        for t in tablespaces {
            eprintln!("main: tablespace {} ({} on the source) copied into the branch", t.name, t.location);
        }
    }
    Ok(())
}
