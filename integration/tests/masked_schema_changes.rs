//! Schema changes the stream reveals: a table created on the source after the clone
//! stops a strict stream (none of its rows reach main) until `clone reload` covers it;
//! then the stream creates the table on main and applies its rows, masked, including
//! the row written before the reload. (A new column: `masked_errors.rs`.)

use std::time::Duration;

use pgbranch_integration::masked::{self, clone_masked, logical_source, masked_rows, wait_until, write_config};
use pgbranch_integration::{psql_url, TestStore};
use pgbranch_replicator::transform::TransformConfig;

const BASE: &str = "transformations:
  table_transformers:
    - table: users
      column_transformers:
        id: {name: keep}
        email: {name: email}
";

const WITH_INVOICES: &str = "    - table: invoices
      column_transformers:
        id: {name: keep}
        user_id: {name: keep}
        billing_email: {name: email, parameters: {preserve_domain: true}}
        total: {name: keep}
";

#[test]
fn a_new_table_waits_for_the_config_then_arrives_masked() {
    let source = logical_source("schema");
    source
        .server
        .psql(
            "postgres",
            "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL); INSERT INTO users VALUES (1, 'a.person@corp.example');",
        )
        .unwrap();
    let store = TestStore::new("schema");
    let dir = store.dir.with_extension("configs");
    let base = write_config(&dir, "base.yaml", BASE);
    let main = clone_masked(&store, &source, &base, &[]);

    // A new table, not in the config: the stream stops before any of its rows.
    source
        .server
        .psql(
            "postgres",
            "CREATE TABLE invoices (id int PRIMARY KEY, user_id int, billing_email text, total numeric);
             INSERT INTO invoices VALUES (10, 1, 'billing.raw@corp.example', 99.5);",
        )
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || masked::follower_status(&store)["state"] == "error"),
        "the stream should stop on the uncovered table: {}",
        masked::follower_status(&store)
    );
    let reason = masked::follower_status(&store)["stream_error"].as_str().unwrap_or_default().to_string();
    assert!(reason.contains("public.invoices.billing_email"), "{reason}");
    assert!(psql_url(&main, "SELECT to_regclass('public.invoices') IS NULL").unwrap() == "t", "no table on main yet");

    // Covered: main gets the table and the row written before the reload, masked.
    let with_invoices = write_config(&dir, "invoices.yaml", &format!("{BASE}{WITH_INVOICES}"));
    store.ok(&["clone", "reload", "--config", with_invoices.to_str().unwrap()]);
    source.server.psql("postgres", "INSERT INTO invoices VALUES (11, 1, 'second.raw@corp.example', 5)").unwrap();
    let text = std::fs::read_to_string(&with_invoices).unwrap();
    let config = TransformConfig::parse("invoices.yaml", &text).unwrap();
    let key = masked::mask_key(&store);
    let select = "SELECT id, user_id, billing_email, total FROM invoices ORDER BY id";
    let cols = ["id", "user_id", "billing_email", "total"];
    let mut src = source.client();
    let expect = masked_rows(&mut src, select, &config, "public.invoices", &cols, &key);
    assert!(
        wait_until(Duration::from_secs(30), || {
            postgres::Client::connect(&main, postgres::NoTls).is_ok_and(|mut m| {
                m.query_opt("SELECT to_regclass('public.invoices')::text", &[])
                    .ok()
                    .flatten()
                    .and_then(|r| r.get::<_, Option<String>>(0))
                    .is_some()
                    && masked::copy_rows(&mut m, select) == expect
            })
        }),
        "main should hold the new table's rows, masked: {}",
        masked::follower_status(&store)
    );
    assert_eq!(masked::follower_status(&store)["state"], "streaming");
    let emails = psql_url(&main, "SELECT string_agg(billing_email, ',') FROM invoices").unwrap();
    assert!(!emails.contains(".raw@") && emails.contains("@corp.example"), "masked, domain kept: {emails}");

    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
