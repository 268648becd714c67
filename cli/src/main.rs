//! `pgbranch`: instant, writable, isolated copies of a PostgreSQL database.
//!
//! The binary is both the CLI and the daemon (`pgbranch daemon`). Every other verb is a
//! request to the daemon, which the CLI starts in the background when needed.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

use pgbranch::api::{self, BranchUrl, Request};
use pgbranch::layout::Layout;
use pgbranch::{client, daemon, demo, output};

#[derive(Parser)]
#[command(name = "pgbranch", version, about = "Instant, writable, copy-on-write branches of PostgreSQL data directories")]
struct Cli {
    /// Store directory (default: $PGBRANCH_HOME, else ~/.local/share/pgbranch).
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (other commands start it in the background).
    Daemon,
    /// Create, list, locate and delete branches.
    #[command(subcommand)]
    Branch(BranchCmd),
    /// Create and delete read-only snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Follow a source database into `main`: physical replication, or logical with
    /// PII masked in flight (`--config`).
    #[command(subcommand)]
    Clone(CloneCmd),
    /// Storage per branch: logical, unique and shared bytes; store size and ratios.
    Du {
        #[arg(long)]
        json: bool,
    },
    /// Delete every stored object no branch or snapshot uses.
    Gc {
        #[arg(long)]
        json: bool,
    },
    /// Read and check every stored object; name every damaged file and offset.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Daemon and store status.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon: commit everything, unmount every branch.
    Stop,
    /// Find likely PII in a source database (no daemon needed).
    #[command(subcommand)]
    Pii(PiiCmd),
    /// The main job: follow a source (a throwaway local one with pgbench data when no
    /// --source-url is given), cut a branch, query it, print its URL.
    Demo {
        /// Follow this source instead of a throwaway one.
        #[arg(long, value_name = "URL")]
        source_url: Option<String>,
        /// pgbench scale factor for the throwaway source.
        #[arg(long, default_value_t = 10)]
        scale: u32,
        /// Directory holding postgres binaries (initdb, postgres, pgbench, psql).
        #[arg(long, value_name = "DIR")]
        pg_bin: Option<PathBuf>,
        /// Follow with PII masked in flight: `pii scan` writes the transform config,
        /// `clone stream --config` uses it (the throwaway source gets fake customers).
        #[arg(long)]
        masked: bool,
    },
}

#[derive(Subcommand)]
enum BranchCmd {
    /// Create a branch from `main` (default), another branch or snapshot, or empty; a
    /// branch cut from a database starts as its own read-write postgres.
    Create {
        name: String,
        /// Start from an empty directory (no postgres is started).
        #[arg(long, conflicts_with = "from")]
        empty: bool,
        /// Branch or snapshot to start from (atomic, even while it is written to).
        #[arg(long, value_name = "BRANCH")]
        from: Option<String>,
        /// Do not start postgres on the new branch.
        #[arg(long)]
        no_start: bool,
        /// Delete the branch when this time is up (e.g. 30m, 8h, 2d).
        #[arg(long, value_name = "DURATION")]
        ttl: Option<String>,
        /// Refuse deletion until `branch unprotect`.
        #[arg(long)]
        protect: bool,
        /// Start from the newest retained point of --from at or before TIME: RFC 3339
        /// (2026-11-30T14:02:00Z) or a time ago (-15m, 2h). See `branch log`.
        #[arg(long, value_name = "TIME", requires = "from", conflicts_with = "at_lsn")]
        at: Option<String>,
        /// For a postgres branch: start from --from as it was at WAL position LSN
        /// (e.g. 0/3000148, from `pg_current_wal_lsn()` on the source), exact to the
        /// transaction. See `branch log` for the positions of its retained points.
        #[arg(long, value_name = "LSN", requires = "from")]
        at_lsn: Option<String>,
        /// Keep this branch's history (its commits) for DURATION (e.g. 1h, 7d; 0: none)
        /// instead of the store's default (`history` in pgbranch.toml).
        #[arg(long, value_name = "DURATION")]
        history: Option<String>,
    },
    /// The retained points of a branch: when, and what each changed.
    Log {
        name: String,
        #[arg(long)]
        json: bool,
    },
    /// Change a branch's settings.
    Set {
        name: String,
        /// Keep the branch's history for DURATION (e.g. 24h; 0: none), or `default`
        /// for the store's default.
        #[arg(long, value_name = "DURATION|default")]
        history: String,
    },
    /// List branches and snapshots.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print the directory of a branch (a PGDATA directory usable by any tool).
    Path { name: String },
    /// Print a postgresql:// URL for the branch's server (loopback, its own password).
    Url { name: String },
    /// Start postgres on a branch.
    Start { name: String },
    /// Stop postgres on a branch.
    Stop { name: String },
    /// Repoint a branch at a fresh snapshot of its parent; same port and password.
    Reset { name: String },
    /// Delete a branch (stops its postgres; refused while anything else uses it).
    Delete { name: String },
    /// Refuse deletion of a branch until `branch unprotect`.
    Protect { name: String },
    /// Allow deletion again.
    Unprotect { name: String },
}

#[derive(Subcommand)]
enum CloneCmd {
    /// Follow a source postgres: check it, copy it into `main`, keep main streaming.
    Stream {
        /// postgresql:// URL of the source (a user with REPLICATION).
        #[arg(long, value_name = "URL")]
        source_url: String,
        /// Replication slot to create on the source.
        #[arg(long, default_value = pgbranch::clone::DEFAULT_SLOT)]
        slot: String,
        /// Directory of postgres binaries of the source's major version (the masked
        /// follower also takes a newer one). Default: the first found of $PG_CONFIG,
        /// /usr/lib/postgresql/N/bin, /usr/pgsql-N/bin, Homebrew's postgresql@N,
        /// /usr/local/pgsql/bin and pgbranch's cache ($PGBRANCH_PG_CACHE or
        /// /var/cache/pgbranch/postgresql/N/bin, ~/.cache/pgbranch/postgresql/N/bin).
        #[arg(long, value_name = "DIR")]
        pg_bin: Option<PathBuf>,
        /// Transform config (YAML): follow logically, masking PII in flight; main is a
        /// read-write postgres holding only masked data.
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
        /// strict: every column of every table must be named in the config (a
        /// transformer or `keep`); relaxed: unnamed columns are copied unmasked.
        #[arg(long, value_enum, default_value_t = Validation::Strict, requires = "config")]
        validation: Validation,
        /// Publication to create on the source (masked follower).
        #[arg(long, default_value = pgbranch::clone::DEFAULT_SLOT, requires = "config")]
        publication: String,
        /// Keep main's history (its commits) for DURATION (e.g. 1h, 7d) instead of the
        /// store's default, so `branch create --at` can reach back that far. Set once
        /// the first copy is in: the copy itself is not history.
        #[arg(long, value_name = "DURATION")]
        history: Option<String>,
    },
    /// Replace the masked follower's transform config (checked against the source
    /// first) and restart its stream, e.g. after a column was added on the source.
    Reload {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Stop following: stop main's standby; optionally drop the slot on the source.
    Stop {
        #[arg(long)]
        drop_slot: bool,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum Validation {
    Strict,
    Relaxed,
}

#[derive(Subcommand)]
enum PiiCmd {
    /// Guess PII columns by name and sampled values; write a transform config that
    /// covers every column (guesses marked for review) to --write FILE or stdout.
    Scan {
        /// postgresql:// URL of the source (any user that can read its tables).
        #[arg(long, value_name = "URL")]
        source_url: String,
        /// Write the config to FILE (refused if FILE exists, unless --force).
        #[arg(long, value_name = "FILE")]
        write: Option<PathBuf>,
        /// Non-null values to sample per column (0: judge by names and types only).
        #[arg(long, value_name = "N", default_value_t = pgbranch::pii::DEFAULT_SAMPLE)]
        sample: usize,
        /// Overwrite FILE if it exists.
        #[arg(long, requires = "write")]
        force: bool,
    },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Snapshot a branch: read-only, O(1), listed and mounted like a branch.
    Create {
        name: String,
        #[arg(long, value_name = "BRANCH")]
        from: String,
    },
    /// Delete a snapshot.
    Delete { name: String },
}

fn main() {
    let cli = Cli::parse();
    let is_daemon = matches!(cli.command, Command::Daemon);
    if !is_daemon {
        pgbranch::sys::default_sigpipe();
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGBRANCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if is_daemon { "info" } else { "warn" })),
        )
        .with_writer(pgbranch::log_writer::StderrLog)
        .log_internal_errors(false)
        .with_ansi(!is_daemon)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

/// `clone stream --history`: main's own window, once the first copy is in.
fn set_main_history(layout: &Layout, secs: Option<u64>) -> Result<()> {
    let Some(secs) = secs else { return Ok(()) };
    let req = Request::BranchSetHistory { name: daemon::MAIN.into(), history: api::HistorySetting::Window { secs } };
    let log: api::BranchLog = client::call_as(layout, &req).context("giving main its history window")?;
    println!("main keeps {} of history", output::window(log.history_secs));
    Ok(())
}

fn run(cli: Cli) -> Result<()> {
    let layout = Layout::resolve(cli.store)?;
    match cli.command {
        Command::Daemon => daemon::run(layout),
        Command::Branch(cmd) => match cmd {
            BranchCmd::Create { name, empty, from, no_start, ttl, protect, at, at_lsn, history } => {
                if !empty && from.is_none() && client::call(&layout, &Request::Path { name: daemon::MAIN.into() }).is_err() {
                    anyhow::bail!(
                        "there is no branch 'main' to branch from: follow a source with `pgbranch clone stream`, or pass --from BRANCH or --empty"
                    );
                }
                let from = if empty { None } else { Some(from.unwrap_or_else(|| daemon::MAIN.to_string())) };
                let ttl_secs = ttl.as_deref().map(pgbranch::clone::parse_duration).transpose()?;
                let now = pgbranch_fs::history::now_unix_micros();
                let at_unix_micros = at.as_deref().map(|t| pgbranch::point_in_time::parse_at(t, now)).transpose()?;
                let at_lsn = at_lsn
                    .as_deref()
                    .map(|l| l.parse::<pgbranch_replicator::logical::lsn::Lsn>().map(|l| l.0).context("--at-lsn"))
                    .transpose()?;
                let history_secs = history.as_deref().map(pgbranch::clone::parse_duration).transpose()?;
                let req = Request::CreateBranch { name, from, start: !no_start, ttl_secs, protect, at_unix_micros, at_lsn, history_secs };
                let created = client::call_as::<api::Created>(&layout, &req)?;
                if let Some(p) = &created.from_point {
                    eprintln!("from the point of {} ({} changed in it)", p.at, output::bytes(p.changed_bytes));
                }
                output::created(&created);
                Ok(())
            }
            BranchCmd::List { json } => output::list(&client::call_as::<Vec<api::BranchInfo>>(&layout, &Request::List)?, json),
            BranchCmd::Path { name } => {
                println!("{}", client::call_as::<api::BranchPath>(&layout, &Request::Path { name })?.path.display());
                Ok(())
            }
            BranchCmd::Url { name } => {
                println!("{}", client::call_as::<BranchUrl>(&layout, &Request::BranchUrl { name })?.url);
                Ok(())
            }
            BranchCmd::Start { name } => {
                println!("{}", client::call_as::<BranchUrl>(&layout, &Request::BranchStart { name })?.url);
                Ok(())
            }
            BranchCmd::Stop { name } => {
                let stopped: api::ServerStopped = client::call_as(&layout, &Request::BranchStop { name })?;
                println!("stopped postgres on {}", stopped.stopped);
                Ok(())
            }
            BranchCmd::Reset { name } => {
                let reset: api::ResetDone = client::call_as(&layout, &Request::BranchReset { name })?;
                println!("reset {} to a fresh snapshot of {}", reset.name, reset.parent);
                if let Some(url) = reset.url {
                    println!("{url}");
                }
                Ok(())
            }
            BranchCmd::Log { name, json } => {
                output::branch_log(&client::call_as::<api::BranchLog>(&layout, &Request::BranchLog { name })?, json)
            }
            BranchCmd::Set { name, history } => {
                let history = match history.as_str() {
                    "default" => api::HistorySetting::StoreDefault,
                    d => api::HistorySetting::Window { secs: pgbranch::clone::parse_duration(d)? },
                };
                let log: api::BranchLog = client::call_as(&layout, &Request::BranchSetHistory { name, history })?;
                println!(
                    "branch {} keeps {} of history{}",
                    log.name,
                    output::window(log.history_secs),
                    if log.own_window { "" } else { " (the store's default)" }
                );
                Ok(())
            }
            BranchCmd::Protect { name } => {
                let p: api::Protected = client::call_as(&layout, &Request::Protect { name, protect: true })?;
                println!("branch {} is protected", p.name);
                Ok(())
            }
            BranchCmd::Unprotect { name } => {
                let p: api::Protected = client::call_as(&layout, &Request::Protect { name, protect: false })?;
                println!("branch {} is no longer protected", p.name);
                Ok(())
            }
            BranchCmd::Delete { name } => {
                let d: api::Deleted = client::call_as(&layout, &Request::Delete { name, snapshot: false })?;
                println!("deleted branch {}", d.deleted);
                Ok(())
            }
        },
        Command::Snapshot(cmd) => match cmd {
            SnapshotCmd::Create { name, from } => {
                output::created(&client::call_as::<api::Created>(&layout, &Request::CreateSnapshot { name, from })?);
                Ok(())
            }
            SnapshotCmd::Delete { name } => {
                let d: api::Deleted = client::call_as(&layout, &Request::Delete { name, snapshot: true })?;
                println!("deleted snapshot {}", d.deleted);
                Ok(())
            }
        },
        Command::Clone(cmd) => match cmd {
            CloneCmd::Stream { source_url, slot, pg_bin, config: Some(config), validation, publication, history } => {
                let history_secs = history.as_deref().map(pgbranch::clone::parse_duration).transpose()?;
                let opts = pgbranch::clone::logical::Options {
                    source_url,
                    config,
                    slot: slot.clone(),
                    publication,
                    pg_bin,
                    strict: matches!(validation, Validation::Strict),
                    quiet: false,
                };
                let url = pgbranch::clone::logical::stream(&layout, opts)?;
                set_main_history(&layout, history_secs)?;
                println!("main holds the source with every configured column masked; streaming changes from slot '{slot}'");
                println!("{url}");
                Ok(())
            }
            CloneCmd::Stream { source_url, slot, pg_bin, config: None, history, .. } => {
                let history_secs = history.as_deref().map(pgbranch::clone::parse_duration).transpose()?;
                let url = pgbranch::clone::stream(&layout, &source_url, &slot, pg_bin, false)?;
                set_main_history(&layout, history_secs)?;
                println!("main is a hot standby of the source, streaming from slot '{slot}'");
                println!("{url}");
                Ok(())
            }
            CloneCmd::Reload { config } => {
                pgbranch::clone::logical::reload(&layout, &config)?;
                println!("the masked follower restarted with {}", config.display());
                Ok(())
            }
            CloneCmd::Stop { drop_slot } => {
                let stopped: api::FollowStopped = client::call_as(&layout, &Request::FollowStop { drop_slot })?;
                println!("follower stopped{}", if stopped.slot_dropped { "; slot dropped on the source" } else { "" });
                Ok(())
            }
        },
        Command::Pii(PiiCmd::Scan { source_url, write, sample, force }) => {
            pgbranch::pii::scan(&source_url, write.as_deref(), sample, force)
        }
        Command::Du { json } => output::du(&client::call_as(&layout, &Request::Du)?, json),
        Command::Gc { json } => output::gc(&client::call_as(&layout, &Request::Gc)?, json),
        Command::Verify { json } => output::verify(&client::call_as(&layout, &Request::Verify)?, json),
        Command::Status { json } => output::status(&client::call_as(&layout, &Request::Status)?, json),
        Command::Stop => {
            match client::stop_daemon(&layout)? {
                Some(_) => println!("daemon stopped"),
                None => println!("no daemon is running for {}", layout.root.display()),
            }
            Ok(())
        }
        Command::Demo { source_url, scale, pg_bin, masked } => demo::run(&layout, source_url, scale, pg_bin, masked),
    }
}
