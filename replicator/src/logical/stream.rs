//! The change stream: pgoutput changes from the slot, masked, applied on main.
//!
//! Exactly once: main tracks how far it has applied in a replication origin
//! (`pgbranch`), set in the same transaction as the changes it covers, so the position
//! and the data become durable together. A restart resumes from that position and skips
//! any transaction at or before it; the slot is confirmed only up to what main has
//! durably committed. Several source transactions are applied as one transaction on
//! main (they commit together or not at all).

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use postgres::{Client, NoTls};

use super::apply::{SqlBatch, TableState};
use super::pgoutput::{self, LogicalMsg, Relation};
use super::wire::{Lsn, ReplicationConn, StreamMsg};
use crate::catalog::quote_ident;
use crate::source::Source;
use crate::transform::TransformConfig;

/// The replication origin on main that records the applied position.
pub const ORIGIN: &str = "pgbranch";

/// Apply a batch once it holds this many rows, or is this old.
const BATCH_ROWS: u64 = 20_000;
const BATCH_AGE: Duration = Duration::from_millis(200);
/// Send SQL to main in pieces of this size while a large transaction streams in.
const SQL_CHUNK: usize = 4 << 20;
const SEQUENCE_SYNC: Duration = Duration::from_secs(5);
const STATUS_INTERVAL: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The source or main went away: try again.
    #[error("{0}")]
    Transient(String),
    /// Needs the user (an uncovered column, a change main refuses): the stream stops.
    #[error("{0}")]
    Fatal(String),
}

/// Everything the stream needs.
pub struct StreamSetup {
    pub source: Source,
    pub slot: String,
    pub publication: String,
    pub main: postgres::Config,
    pub config: Arc<TransformConfig>,
    pub key: [u8; 32],
    pub strict: bool,
}

/// What `status` shows, updated as the stream goes.
#[derive(Clone, Debug, Default)]
pub struct StreamStatus {
    pub state: String,
    pub error: Option<String>,
    /// Durably applied on main (the origin's position).
    pub applied_lsn: Lsn,
    /// Everything up to here is applied or irrelevant (idle keepalives).
    pub confirmed_lsn: Lsn,
    pub rows_applied: u64,
    pub transactions_applied: u64,
    /// Commit on main minus commit on the source, for the last applied transaction.
    pub apply_delay_secs: f64,
    samples: VecDeque<(Instant, u64)>,
}

impl StreamStatus {
    /// Rows applied per second over the last ~10 s.
    pub fn rows_per_sec(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0).as_secs_f64(),
            _ => 0.0,
        }
    }

    fn sample(&mut self) {
        let now = Instant::now();
        self.samples.push_back((now, self.rows_applied));
        while self.samples.len() > 2 && now.duration_since(self.samples[0].0) > Duration::from_secs(10) {
            self.samples.pop_front();
        }
    }
}

fn transient(what: &str) -> impl Fn(postgres::Error) -> StreamError + '_ {
    move |e| StreamError::Transient(format!("{what}: {e}"))
}

/// Microseconds since 2000-01-01 (postgres' epoch) -> seconds since 1970.
fn unix_secs(pg_us: i64) -> f64 {
    pg_us as f64 / 1e6 + 946_684_800.0
}

fn now_unix() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0.0, |d| d.as_secs_f64())
}

/// Connects to main as the apply session: replica role (no triggers, no FK checks:
/// the source checked them), the origin set up. Returns the applied position.
pub fn open_main(config: &postgres::Config) -> Result<(Client, Lsn), StreamError> {
    let mut main = config.connect(NoTls).map_err(transient("connecting to main"))?;
    main.batch_execute("SET session_replication_role = replica; SET standard_conforming_strings = on; SET synchronous_commit = on")
        .map_err(transient("setting up the apply session on main"))?;
    main.query_one("SELECT pg_replication_origin_session_setup($1)", &[&ORIGIN])
        .map_err(transient("setting up the replication origin on main"))?;
    let row = main
        .query_one("SELECT coalesce(pg_replication_origin_progress($1, true), '0/0')::text", &[&ORIGIN])
        .map_err(transient("reading the applied position on main"))?;
    let lsn: Lsn = row.get::<_, String>(0).parse().map_err(|e| StreamError::Fatal(format!("main's origin position: {e}")))?;
    Ok((main, lsn))
}

/// Records on main that everything up to `lsn` (the initial copy's consistent point)
/// is there.
pub fn init_origin(main: &mut Client, lsn: Lsn) -> Result<(), postgres::Error> {
    main.execute(
        "SELECT pg_replication_origin_create($1) WHERE NOT EXISTS (SELECT 1 FROM pg_replication_origin WHERE roname = $1)",
        &[&ORIGIN],
    )?;
    main.execute("SELECT pg_replication_origin_advance($1, $2::text::pg_lsn)", &[&ORIGIN, &lsn.to_string()])?;
    Ok(())
}

/// Copies the source's sequence positions onto main (they are not in the change stream).
pub fn sync_sequences(source: &mut Client, main: &mut Client) -> Result<usize, postgres::Error> {
    let q = "SELECT format('%I.%I', schemaname, sequencename), last_value FROM pg_sequences WHERE last_value IS NOT NULL";
    let on_main: BTreeSet<String> =
        main.query("SELECT format('%I.%I', schemaname, sequencename) FROM pg_sequences", &[])?.iter().map(|r| r.get(0)).collect();
    let mut sql = String::new();
    for row in source.query(q, &[])? {
        let name: String = row.get(0);
        let value: i64 = row.get(1);
        if on_main.contains(&name) {
            sql.push_str(&format!("SELECT setval('{}', {value}, true);", name.replace('\'', "''")));
        }
    }
    if !sql.is_empty() {
        main.batch_execute(&sql)?;
    }
    Ok(on_main.len())
}

struct Stream<'a> {
    setup: &'a StreamSetup,
    status: &'a Mutex<StreamStatus>,
    main: Client,
    source: Client,
    repl: ReplicationConn,
    /// Columns of each table main has.
    main_tables: BTreeMap<String, BTreeSet<String>>,
    tables: BTreeMap<u32, TableState>,
    applied: Lsn,
    /// The furthest position the source has sent (reported as written: a source that
    /// shuts down waits until its client has received everything).
    received: Lsn,
    batch: SqlBatch,
    batch_started: Option<Instant>,
    batch_end: Option<(Lsn, i64)>,
    batch_txns: u64,
    main_txn_open: bool,
    in_txn: bool,
    skip_txn: bool,
}

/// Runs the stream until `stop` is set (Ok) or something fails (Err).
pub fn run(setup: &StreamSetup, status: &Mutex<StreamStatus>, stop: &AtomicBool) -> Result<(), StreamError> {
    let (mut main, applied) = open_main(&setup.main)?;
    let source = setup.source.connect().map_err(|e| StreamError::Transient(e.to_string()))?;
    let main_tables = main_tables(&mut main).map_err(transient("reading main's tables"))?;
    let mut repl = ReplicationConn::connect(&setup.source.config, &setup.source.tls)
        .map_err(|e| StreamError::Transient(format!("replication connection to the source: {e}")))?;
    repl.start_logical(&setup.slot, applied, &setup.publication).map_err(|e| match e.code() {
        Some("42704") => StreamError::Fatal(format!("replication slot '{}' no longer exists on the source: {e}", setup.slot)),
        _ => StreamError::Transient(format!("starting replication from slot '{}': {e}", setup.slot)),
    })?;
    {
        let mut s = status.lock();
        s.state = "streaming".into();
        s.error = None;
        s.applied_lsn = applied;
        s.confirmed_lsn = s.confirmed_lsn.max(applied);
    }
    tracing::info!("logical follower streaming from slot {} at {applied}", setup.slot);
    let mut stream = Stream {
        setup,
        status,
        main,
        source,
        repl,
        main_tables,
        tables: BTreeMap::new(),
        applied,
        received: applied,
        batch: SqlBatch::default(),
        batch_started: None,
        batch_end: None,
        batch_txns: 0,
        main_txn_open: false,
        in_txn: false,
        skip_txn: false,
    };
    let result = stream.pump(stop);
    if result.is_err() && stream.main_txn_open {
        let _ = stream.main.batch_execute("ROLLBACK");
    }
    result
}

fn main_tables(main: &mut Client) -> Result<BTreeMap<String, BTreeSet<String>>, postgres::Error> {
    let rows = main.query(
        "SELECT n.nspname || '.' || c.relname, a.attname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
         JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum > 0 AND NOT a.attisdropped \
         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%'",
        &[],
    )?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for r in rows {
        out.entry(r.get(0)).or_default().insert(r.get(1));
    }
    Ok(out)
}

impl Stream<'_> {
    fn pump(&mut self, stop: &AtomicBool) -> Result<(), StreamError> {
        let mut last_status = Instant::now();
        let mut last_sequences = Instant::now() - SEQUENCE_SYNC;
        loop {
            if stop.load(Ordering::Relaxed) {
                if !self.in_txn {
                    self.commit_batch()?;
                }
                return Ok(());
            }
            let busy = !self.batch.is_empty() || self.in_txn || self.batch_end.is_some() || self.main_txn_open;
            let timeout = if busy { Duration::from_millis(1) } else { Duration::from_millis(250) };
            let msg = self
                .repl
                .recv(timeout)
                .map_err(|e| StreamError::Transient(format!("the replication stream from the source ended: {e}")))?;
            match msg {
                None => {
                    if !self.in_txn {
                        self.commit_batch()?;
                        if last_sequences.elapsed() >= SEQUENCE_SYNC {
                            sync_sequences(&mut self.source, &mut self.main).map_err(transient("copying sequence positions"))?;
                            last_sequences = Instant::now();
                        }
                    }
                }
                Some(StreamMsg::Keepalive { wal_end, reply_requested }) => {
                    self.received = self.received.max(wal_end);
                    // Idle only when nothing received is waiting for main: SQL already
                    // sent in pieces leaves the batch empty while main's transaction is
                    // still open, and confirming past it could lose it in a crash.
                    let idle = !self.in_txn && self.batch.is_empty() && self.batch_end.is_none() && !self.main_txn_open;
                    if idle {
                        let mut s = self.status.lock();
                        s.confirmed_lsn = s.confirmed_lsn.max(wal_end);
                    }
                    if reply_requested || last_status.elapsed() >= STATUS_INTERVAL {
                        let flushed = if idle { wal_end.max(self.applied) } else { self.applied };
                        self.send_status(flushed)?;
                        last_status = Instant::now();
                    }
                }
                Some(StreamMsg::XLogData { data, wal_end, .. }) => {
                    self.received = self.received.max(wal_end);
                    let msg = pgoutput::decode(&data).map_err(|e| StreamError::Fatal(format!("decoding a change from the source: {e}")))?;
                    self.handle(msg)?;
                }
            }
            {
                let mut s = self.status.lock();
                s.sample();
            }
        }
    }

    /// Confirms `flushed` (durable on main); reports everything received as written.
    fn send_status(&mut self, flushed: Lsn) -> Result<(), StreamError> {
        let written = self.received.max(flushed);
        self.repl
            .send_status(written, flushed, flushed, false)
            .map_err(|e| StreamError::Transient(format!("confirming to the source: {e}")))
    }

    fn table(&self, rel: u32) -> Result<&TableState, StreamError> {
        self.tables.get(&rel).ok_or_else(|| StreamError::Fatal(format!("a change for relation {rel} arrived before its description")))
    }

    fn handle(&mut self, msg: LogicalMsg) -> Result<(), StreamError> {
        let key = &self.setup.key;
        match msg {
            LogicalMsg::Begin { final_lsn, .. } => {
                self.in_txn = true;
                // Applied before a restart: its commit lies before the origin's position.
                self.skip_txn = final_lsn < self.applied;
                self.batch_started.get_or_insert_with(Instant::now);
            }
            LogicalMsg::Commit { end_lsn, commit_time_us, .. } => {
                self.in_txn = false;
                if !self.skip_txn {
                    self.batch_end = Some((end_lsn, commit_time_us));
                    self.batch_txns += 1;
                }
                let old = self.batch_started.is_some_and(|t| t.elapsed() >= BATCH_AGE);
                if self.batch.rows >= BATCH_ROWS || old {
                    self.commit_batch()?;
                }
            }
            LogicalMsg::Relation(rel) => self.relation(rel)?,
            LogicalMsg::Insert { rel, new } if !self.skip_txn => {
                let t = self.table(rel)?.clone();
                self.batch.insert(&t, key, new);
            }
            LogicalMsg::Update { rel, old, new } if !self.skip_txn => {
                let t = self.table(rel)?.clone();
                self.batch.update(&t, key, old, new);
            }
            LogicalMsg::Delete { rel, old } if !self.skip_txn => {
                let t = self.table(rel)?.clone();
                self.batch.delete(&t, key, old);
            }
            LogicalMsg::Truncate { cascade, restart_identity, rels } if !self.skip_txn => {
                let ts: Vec<TableState> = rels.iter().map(|r| self.table(*r).cloned()).collect::<Result<_, _>>()?;
                self.batch.truncate(&ts.iter().collect::<Vec<_>>(), cascade, restart_identity);
            }
            _ => {}
        }
        if self.batch.len() >= SQL_CHUNK {
            self.send_chunk()?;
        }
        Ok(())
    }

    /// A table's description: checked against the config (strict: every column must be
    /// named), and created or extended on main when the source has more than main.
    fn relation(&mut self, rel: Relation) -> Result<(), StreamError> {
        let qualified = format!("{}.{}", rel.schema, rel.name);
        let cfg = &self.setup.config;
        if self.setup.strict {
            let uncovered: Vec<String> =
                rel.columns.iter().filter(|c| !cfg.covers(&qualified, &c.name)).map(|c| format!("{qualified}.{}", c.name)).collect();
            if !uncovered.is_empty() {
                return Err(StreamError::Fatal(format!(
                    "the source has columns the transform config {} does not cover: {}; the stream stopped before applying anything of them. \
                     Name each in the config (a transformer or `keep`), then run `pgbranch clone reload --config FILE`",
                    cfg.file,
                    uncovered.join(", ")
                )));
            }
        }
        let quoted = format!("{}.{}", quote_ident(&rel.schema), quote_ident(&rel.name));
        let known = self.main_tables.get(&qualified).cloned();
        let missing: Vec<&pgoutput::RelColumn> =
            rel.columns.iter().filter(|c| known.as_ref().is_none_or(|k| !k.contains(&c.name))).collect();
        if !missing.is_empty() {
            let mut defs = Vec::new();
            for c in &missing {
                let row = self
                    .source
                    .query_one("SELECT format_type($1, $2)", &[&c.type_oid, &c.type_mod])
                    .map_err(transient("reading a column type on the source"))?;
                defs.push((quote_ident(&c.name), row.get::<_, String>(0)));
            }
            let ddl = match &known {
                None => {
                    let keys: Vec<String> = rel.columns.iter().filter(|c| c.key).map(|c| quote_ident(&c.name)).collect();
                    let mut cols: Vec<String> = defs.iter().map(|(n, t)| format!("{n} {t}")).collect();
                    if !keys.is_empty() && rel.replica_identity == b'd' {
                        cols.push(format!("PRIMARY KEY ({})", keys.join(", ")));
                    }
                    tracing::info!("table {qualified} appeared on the source; creating it on main");
                    format!("CREATE SCHEMA IF NOT EXISTS {}; CREATE TABLE {quoted} ({});\n", quote_ident(&rel.schema), cols.join(", "))
                }
                Some(_) => {
                    tracing::info!("table {qualified} gained columns on the source; adding them on main");
                    let adds: Vec<String> = defs.iter().map(|(n, t)| format!("ADD COLUMN {n} {t}")).collect();
                    format!("ALTER TABLE {quoted} {};\n", adds.join(", "))
                }
            };
            self.batch.push_ddl(&ddl);
            self.main_tables.entry(qualified.clone()).or_default().extend(rel.columns.iter().map(|c| c.name.clone()));
        }
        let cols: Vec<String> = rel.columns.iter().map(|c| c.name.clone()).collect();
        let plan = cfg.plan(&qualified, &cols);
        let oids: Vec<u32> = rel.columns.iter().map(|c| c.type_oid).collect();
        let type_names: Vec<String> = self
            .source
            .query("SELECT format_type(t, NULL) FROM unnest($1::oid[]) WITH ORDINALITY AS u(t, n) ORDER BY n", &[&oids])
            .map_err(transient("reading column types on the source"))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        self.tables.insert(rel.id, TableState::new(&rel, plan, type_names));
        Ok(())
    }

    fn send_chunk(&mut self) -> Result<(), StreamError> {
        let mut sql = self.batch.take_sql();
        if !self.main_txn_open {
            sql.insert_str(0, "BEGIN;\n");
            self.main_txn_open = true;
        }
        self.main.batch_execute(&sql).map_err(apply_error)
    }

    /// Commits what the batch holds on main, with the origin's new position, then
    /// confirms that position to the source.
    fn commit_batch(&mut self) -> Result<(), StreamError> {
        // Nothing complete to commit yet (or only transactions applied before).
        let Some((end_lsn, commit_us)) = self.batch_end else { return Ok(()) };
        let rows = self.batch.rows;
        let mut sql = self.batch.take_sql();
        if !self.main_txn_open {
            sql.insert_str(0, "BEGIN;\n");
        }
        sql.push_str(&format!("SELECT pg_replication_origin_xact_setup('{end_lsn}', to_timestamp({:.6}));\nCOMMIT;", unix_secs(commit_us)));
        self.main_txn_open = true;
        self.main.batch_execute(&sql).map_err(apply_error)?;
        self.main_txn_open = false;
        self.applied = end_lsn;
        self.batch.rows = 0;
        self.batch_end = None;
        self.batch_started = None;
        let txns = std::mem::take(&mut self.batch_txns);
        {
            let mut s = self.status.lock();
            s.applied_lsn = end_lsn;
            s.confirmed_lsn = s.confirmed_lsn.max(end_lsn);
            s.rows_applied += rows;
            s.transactions_applied += txns;
            s.apply_delay_secs = (now_unix() - unix_secs(commit_us)).max(0.0);
        }
        self.send_status(end_lsn)
    }
}

/// An apply failure: main refusing the change is for the user; a lost connection is not.
fn apply_error(e: postgres::Error) -> StreamError {
    match e.code() {
        Some(code) if !code.code().starts_with("08") && !code.code().starts_with("57") => {
            StreamError::Fatal(format!("main refused a change from the source: {e}"))
        }
        _ => StreamError::Transient(format!("applying on main: {e}")),
    }
}
