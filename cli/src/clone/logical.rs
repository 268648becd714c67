//! `pgbranch clone stream --config transform.yaml`: the masked (logical) follower, from
//! the CLI's side. Everything is checked before anything is created on the source;
//! then main gets the source's roles and schema, a publication and a pgoutput slot are
//! made, every table is copied under the slot's snapshot with each configured value
//! masked in memory, and the daemon takes over the change stream.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use indicatif::{ProgressBar, ProgressStyle};
use pgbranch_replicator::catalog::SourceSchema;
use pgbranch_replicator::logical::copy::{copy_tables, CopyTable, Masking};
use pgbranch_replicator::logical::schema::{self, SchemaArchive, Target};
use pgbranch_replicator::logical::stream;
use pgbranch_replicator::logical::wire::ReplicationConn;
use pgbranch_replicator::pg::{Owner, PgBin};
use pgbranch_replicator::source::Source;
use pgbranch_replicator::transform::TransformConfig;

use crate::api::{BranchUrl, Created, FollowerMode, LogicalFollow, MainServer, Reloaded, Request, SourceUrl, Status};
use crate::client;
use crate::daemon::MAIN;
use crate::layout::Layout;

pub struct Options {
    pub source_url: String,
    pub config: PathBuf,
    pub slot: String,
    pub publication: String,
    pub pg_bin: Option<PathBuf>,
    pub strict: bool,
    pub quiet: bool,
}

/// Reads and parses a transform config file (errors name the file and line).
pub(crate) fn read_config(path: &Path) -> Result<(String, String, TransformConfig)> {
    let name = path.display().to_string();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading the transform config {name}"))?;
    let config = TransformConfig::parse(&name, &text)?;
    Ok((name, text, config))
}

/// Checks `config` against the source's schema: unknown tables and columns, unique
/// columns, and (strict) uncovered columns are errors; relaxed mode warns loudly.
/// Tables that cannot be followed (no replica identity) are errors too.
pub(crate) fn check_against_source(config: &TransformConfig, schema: &SourceSchema, strict: bool) -> Result<()> {
    let (columns, unique) = schema.validation_inputs();
    config.validate(&columns, &unique, strict)?;
    let no_identity: Vec<String> =
        schema.tables.iter().filter(|t| t.key.is_empty() && t.replica_identity != 'f').map(|t| t.qualified()).collect();
    if !no_identity.is_empty() {
        bail!(
            "these tables have no primary key or replica identity: {}; once published, UPDATE and DELETE on them would fail on the source. \
             Add a primary key, or run ALTER TABLE ... REPLICA IDENTITY FULL on the source; nothing was created",
            no_identity.join(", ")
        );
    }
    if !strict {
        let uncovered: Vec<String> = schema
            .tables
            .iter()
            .flat_map(|t| t.columns.iter().map(move |c| (t.qualified(), c.name.clone())))
            .filter(|(t, c)| !config.covers(t, c))
            .map(|(t, c)| format!("{t}.{c}"))
            .collect();
        if !uncovered.is_empty() {
            eprintln!(
                "WARNING: --validation relaxed: {} column(s) have no transformer and will be copied UNMASKED, as they are on the source: {}",
                uncovered.len(),
                uncovered.join(", ")
            );
        }
    }
    Ok(())
}

/// Undoes what a failed clone made: main, the slot, the publication.
struct Cleanup<'a> {
    layout: &'a Layout,
    source: &'a Source,
    slot: Option<String>,
    publication: Option<String>,
    main: bool,
}

impl Drop for Cleanup<'_> {
    fn drop(&mut self) {
        if self.main {
            let _ = client::call(self.layout, &Request::BranchStop { name: MAIN.into() });
            let _ = client::call(self.layout, &Request::Delete { name: MAIN.into(), snapshot: false });
        }
        if let Some(slot) = &self.slot {
            let _ = self.source.drop_slot(slot);
        }
        if let Some(p) = &self.publication {
            let _ = self.source.drop_publication(p);
        }
    }
}

/// initdb of main with the source database's locale (C.UTF-8 when this machine lacks it).
fn initdb(bin: &PgBin, major: u32, owner: &Owner, path: &Path, locale: &str) -> Result<()> {
    let run = |locale: &str| {
        let mut cmd = owner.command(bin.tool("initdb"));
        cmd.arg("-D").arg(path).args(["-U", "postgres", "--auth=trust", "--no-instructions", "--data-checksums", "-E", "UTF8"]);
        cmd.arg(format!("--locale={locale}"));
        owner.run(&mut cmd, "initdb of main")
    };
    if run(locale).is_err() {
        // A failed initdb leaves files behind; empty the directory and use a locale every system has.
        if let Ok(rd) = std::fs::read_dir(path) {
            for e in rd.flatten() {
                let p = e.path();
                let _ = if p.is_dir() { std::fs::remove_dir_all(&p) } else { std::fs::remove_file(&p) };
            }
        }
        tracing::warn!("locale {locale} is not available here; main uses C.UTF-8");
        run("C.UTF-8")?;
    }
    // Cheap WAL file handling on copy-on-write storage.
    let auto = path.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    // wal_level=minimal: the initial copy loads each table in the transaction that
    // truncated it, so its rows need no WAL (main serves no replicas).
    // Bigger index builds after the copy; compressed full-page images when the
    // binaries have lz4 (fewer bytes through FUSE while the stream applies).
    text.push_str(
        "\n# --- pgbranch: masked follower main ---\nwal_level = minimal\nmax_wal_senders = 0\nwal_init_zero = off\nwal_recycle = off\nmax_wal_size = '2GB'\nmaintenance_work_mem = '256MB'\n",
    );
    // (wal_compression is a boolean before PostgreSQL 15.)
    if major >= 15 && has_lz4(bin) {
        text.push_str("wal_compression = lz4\n");
    }
    std::fs::write(&auto, text).with_context(|| format!("writing {}", auto.display()))?;
    Ok(())
}

/// Whether these postgres binaries were built with lz4.
fn has_lz4(bin: &PgBin) -> bool {
    std::process::Command::new(bin.tool("pg_config"))
        .arg("--configure")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("--with-lz4"))
}

/// Runs the whole masked clone; returns main's URL.
pub fn stream(layout: &Layout, opts: Options) -> Result<String> {
    let (config_name, config_text, config) = read_config(&opts.config)?;
    let source = Source::parse(&opts.source_url)?;
    let info = source.check_logical(&opts.slot, &opts.publication)?;
    let (bin, found) = PgBin::for_major_or_newer(opts.pg_bin.clone(), info.major)?;
    let owner = Owner::for_branches()?;
    let mut src = source.connect()?;
    let schema = SourceSchema::read(&mut src).context("reading the source's tables")?;
    check_against_source(&config, &schema, opts.strict)?;
    if client::call(layout, &Request::Path { name: MAIN.into() }).is_ok() {
        bail!("branch main already exists; a store follows one source: run `pgbranch clone stop` and `pgbranch branch delete main` first, or use another --store");
    }
    // The daemon's stream reads the store's copies of the TLS files.
    let source_url = crate::source_tls::install(layout, &owner, &source)?;
    let source = Source::parse(&source_url)?;
    let key = layout.mask_key()?;
    let db = src
        .query_one("SELECT datcollate::text, pg_get_userbyid(datdba)::text FROM pg_database WHERE datname = current_database()", &[])
        .context("reading the source database's locale")?;
    let (locale, db_owner): (String, String) = (db.get(0), db.get(1));
    drop(src);

    let say = |s: &str| {
        if !opts.quiet {
            eprintln!("{s}");
        }
    };
    if found.major == info.major {
        say(&format!("main: PostgreSQL {} like the source ({})", found.version, bin.0.display()));
    } else {
        say(&format!(
            "main: PostgreSQL {} ({}), newer than the source's {}: no PostgreSQL {} binaries here (pg_dump must be at least the source's version)",
            found.version,
            bin.0.display(),
            info.version,
            info.major
        ));
    }
    let started = Instant::now();
    let mut cleanup = Cleanup { layout, source: &source, slot: None, publication: None, main: false };
    let created: Created = super::create_empty_main(layout)?;
    cleanup.main = true;
    let path = created.path;
    initdb(&bin, found.major, &owner, &path, &locale)?;
    let server: MainServer = client::call_as(
        layout,
        &Request::LogicalMainStart { user: source.user.clone(), dbname: source.dbname.clone(), pg_bin: bin.0.display().to_string() },
    )?;
    let target = Target {
        bin: bin.clone(),
        owner: owner.clone(),
        socket_dir: server.socket_dir.clone(),
        port: server.port,
        dbname: source.dbname.clone(),
    };
    schema::load_roles(&source, &target)?;
    schema::create_database(&target, &db_owner)?;
    let archive = SchemaArchive::dump(&source, &target)?;
    archive.restore_pre_data(&target)?;
    say(&format!("main: schema and roles of {} tables copied ({:.1}s)", schema.tables.len(), started.elapsed().as_secs_f64()));

    if info.publication_exists {
        say(&format!("using the existing publication {} on the source (it is left in place)", opts.publication));
    } else {
        let mut src = source.connect()?;
        src.batch_execute(&format!(
            "CREATE PUBLICATION {} FOR ALL TABLES WITH (publish_via_partition_root = true)",
            pgbranch_replicator::catalog::quote_ident(&opts.publication)
        ))
        .with_context(|| format!("creating publication {} on the source", opts.publication))?;
        cleanup.publication = Some(opts.publication.clone());
    }
    let mut repl = ReplicationConn::connect(&source.config, &source.tls).context("opening a replication connection to the source")?;
    let slot = repl.create_logical_slot(&opts.slot).with_context(|| format!("creating logical slot {} on the source", opts.slot))?;
    cleanup.slot = Some(opts.slot.clone());

    let tables: Vec<CopyTable> = schema
        .tables
        .iter()
        .map(|t| CopyTable {
            qualified: t.qualified(),
            quoted: t.quoted(),
            columns: t.columns.iter().map(|c| c.name.clone()).collect(),
            bytes: t.bytes,
        })
        .collect();
    let total: u64 = schema.tables.iter().map(|t| t.estimated_rows.max(0) as u64).sum();
    let rows = AtomicU64::new(0);
    let done = AtomicBool::new(false);
    let bar = if opts.quiet { ProgressBar::hidden() } else { ProgressBar::new(total.max(1)) };
    bar.set_style(
        ProgressStyle::with_template("copying {bar:32} {human_pos}/{human_len} rows {per_sec} ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let copy_started = Instant::now();
    let workers = std::env::var("PGBRANCH_COPY_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or(4);
    let copied = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::Relaxed) {
                let n = rows.load(Ordering::Relaxed);
                if n > bar.length().unwrap_or(0) {
                    bar.set_length(n);
                }
                bar.set_position(n);
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        let r =
            copy_tables(&source, &slot.snapshot_name, &target.config(), &tables, Masking { config: &config, key: &key }, workers, &rows);
        done.store(true, Ordering::Relaxed);
        r
    });
    bar.finish_and_clear();
    let stats = copied.context("initial copy failed; nothing was left behind")?;
    let copy_secs = copy_started.elapsed().as_secs_f64();

    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    for e in archive.restore_post_data(&target, cpus)? {
        eprintln!("warning: main: {e}");
    }
    let mut main = target.config().connect(postgres::NoTls).context("connecting to main")?;
    let mut src = source.connect()?;
    stream::sync_sequences(&mut src, &mut main).context("copying sequence positions")?;
    stream::init_origin(&mut main, slot.consistent_point).context("recording the copy's position on main")?;
    let password = server.password.as_deref().context("the daemon gave main no password")?;
    main.batch_execute(&format!(
        "ALTER ROLE {} PASSWORD '{}'; CHECKPOINT",
        pgbranch_replicator::catalog::quote_ident(&source.user),
        password.replace('\'', "''")
    ))
    .context("setting main's password")?;
    drop(repl); // ends the exported snapshot

    let registered: BranchUrl = client::call_as(
        layout,
        &Request::FollowRegisterLogical(LogicalFollow {
            source_url,
            slot: opts.slot.clone(),
            publication: opts.publication.clone(),
            pg_bin: bin.0.display().to_string(),
            config_name,
            config_text,
            strict: opts.strict,
            publication_created: !info.publication_exists,
        }),
    )?;
    cleanup.main = false;
    cleanup.slot = None;
    cleanup.publication = None;
    say(&format!(
        "copied {} rows of {} tables in {copy_secs:.1}s ({:.0} rows/s), masked in flight; total {:.1}s",
        stats.rows,
        tables.len(),
        stats.rows as f64 / copy_secs.max(0.001),
        started.elapsed().as_secs_f64()
    ));
    Ok(registered.url)
}

/// `pgbranch clone reload --config FILE`: checks the new config against the source and
/// hands it to the daemon, which restarts the stream with it.
pub fn reload(layout: &Layout, config_path: &Path) -> Result<()> {
    let (config_name, config_text, config) = read_config(config_path)?;
    let status: Status = client::call_as(layout, &Request::Status)?;
    let Some(f) = status.follower.filter(|f| f.mode == FollowerMode::Logical) else {
        bail!("no masked follower is configured (see `pgbranch clone stream --config`)");
    };
    let strict = f.strict.context("the daemon's status of the masked follower does not say whether it is strict")?;
    let url: SourceUrl = client::call_as(layout, &Request::FollowSourceUrl)?;
    let source = Source::parse(&url.source_url)?;
    let mut src = source.connect()?;
    let schema = SourceSchema::read(&mut src).context("reading the source's tables")?;
    check_against_source(&config, &schema, strict)?;
    let _: Reloaded = client::call_as(layout, &Request::FollowReload { config_name, config_text })?;
    Ok(())
}
