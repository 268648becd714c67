//! Helpers for masked-follower tests: a logical source, `clone stream --config`, and
//! what main should hold: the source's rows passed through the same transformers with
//! the store's key, computed here independently of the follower's code path.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgbranch_replicator::logical::copy::{decode_row, encode_row};
use pgbranch_replicator::transform::{TransformConfig, Value};

use crate::{SourceDb, TestStore};

const LOGICAL_SETTINGS: [&str; 3] = ["wal_level = logical", "max_wal_senders = 10", "max_replication_slots = 10"];

/// A source with `wal_level = logical`.
pub fn logical_source(tag: &str) -> SourceDb {
    SourceDb::start(tag, &LOGICAL_SETTINGS)
}

/// A source with `wal_level = logical` running the binaries `bin`.
pub fn logical_source_with(tag: &str, bin: &crate::PgBin) -> SourceDb {
    let settings = LOGICAL_SETTINGS.map(String::from).to_vec();
    SourceDb::start_with(tag, crate::SourceOptions { bin: Some(bin.clone()), settings, ..Default::default() })
}

/// The seed transform config's `users` table on `source`, with `n` people
/// (`personN@acme-corp.io`, `FirstN Last`, `N Real Street, Boston`).
pub fn seed_users(source: &SourceDb, n: u32) {
    source
        .server
        .psql(
            "postgres",
            &format!(
                "CREATE TABLE users (email text PRIMARY KEY, full_name text NOT NULL, address text); \
                 INSERT INTO users SELECT 'person' || g || '@acme-corp.io', 'First' || g || ' Last', g || ' Real Street, Boston' FROM generate_series(1, {n}) g"
            ),
        )
        .expect("creating the seed's users table on the source");
}

impl SourceDb {
    /// A client over loopback with the password, as the follower connects.
    pub fn client(&self) -> postgres::Client {
        postgres::Client::connect(&self.url(), postgres::NoTls).expect("connecting to the source")
    }

    pub fn publications(&self) -> String {
        self.server.psql("postgres", "SELECT coalesce(string_agg(pubname, ','), '') FROM pg_publication").unwrap()
    }
}

/// Writes a transform config file into `dir`.
pub fn write_config(dir: &Path, name: &str, yaml: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    let p = dir.join(name);
    std::fs::write(&p, yaml).unwrap();
    p
}

/// `pgbranch clone stream --source-url URL --config FILE [extra]`; returns main's URL.
pub fn clone_masked(store: &TestStore, source: &SourceDb, config: &Path, extra: &[&str]) -> String {
    let url = source.url();
    let mut args = vec!["clone", "stream", "--source-url", url.as_str(), "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let out = store.ok(&args);
    out.lines().last().expect("clone stream prints main's URL").trim().to_string()
}

/// The store's masking key.
pub fn mask_key(store: &TestStore) -> [u8; 32] {
    let text = std::fs::read_to_string(store.dir.join("data/mask.key")).expect("reading the mask key");
    let text = text.trim();
    let mut key = [0u8; 32];
    for (i, k) in key.iter_mut().enumerate() {
        *k = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).unwrap();
    }
    key
}

/// Rows of `select` (a full SELECT, ordered) as COPY text lines.
pub fn copy_rows(client: &mut postgres::Client, select: &str) -> Vec<String> {
    use std::io::Read;
    let mut out = String::new();
    client.copy_out(&format!("COPY ({select}) TO STDOUT")).unwrap().read_to_string(&mut out).unwrap();
    out.lines().map(str::to_string).collect()
}

/// What main should hold for `select` on the source: every row masked with the
/// config's transformers for `table` (schema.table) and `key`. `columns` names the
/// selected columns in order.
pub fn masked_rows(
    source: &mut postgres::Client,
    select: &str,
    config: &TransformConfig,
    table: &str,
    columns: &[&str],
    key: &[u8; 32],
) -> Vec<String> {
    let plan = config.plan(table, &columns.iter().map(|c| c.to_string()).collect::<Vec<_>>());
    let mut values: Vec<Value> = Vec::new();
    copy_rows(source, select)
        .into_iter()
        .map(|line| {
            decode_row(line.as_bytes(), &mut values).unwrap();
            plan.apply(key, &mut values);
            let mut out = Vec::new();
            encode_row(&values, &mut out);
            String::from_utf8(out).unwrap().trim_end_matches('\n').to_string()
        })
        .collect()
}

/// Polls `check` until it returns true or `timeout` passes; returns whether it did.
pub fn wait_until(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if check() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    check()
}

/// The follower's status object.
pub fn follower_status(store: &TestStore) -> serde_json::Value {
    store.json(&["status"])["follower"].clone()
}
