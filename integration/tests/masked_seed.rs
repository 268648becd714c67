//! Acceptance 1 of the masked follower: the seed's transform file, unchanged, on a
//! `users` table masks as it says — emails keep their domain and length, names their
//! length, addresses are replaced — and masking is deterministic: one email gives one
//! output in two tables, and a re-sync into another store with the same key gives the
//! same data.

use std::time::Duration;

use pgbranch_integration::masked::{clone_masked, logical_source, wait_until, write_config};
use pgbranch_integration::{psql_url, TestStore};

/// The seed's transform file, verbatim.
const SEED: &str = include_str!("../../replicator/tests/fixtures/seed-transform.yaml");

/// The seed plus a second table holding the same emails.
fn seed_with_orders() -> String {
    format!(
        "{SEED}    - schema: public
      table: orders
      column_transformers:
        id: {{name: keep}}
        email:
          name: neosync_email
          parameters:
            preserve_length: true
            preserve_domain: true
        amount: {{name: keep}}
"
    )
}

fn rows(url: &str, sql: &str) -> Vec<Vec<String>> {
    psql_url(url, sql).unwrap().lines().map(|l| l.split('|').map(str::to_string).collect()).collect()
}

#[test]
fn the_seed_config_masks_as_it_says_and_deterministically() {
    let source = logical_source("seed");
    // Exactly the seed's columns: email is the key (unique), as in many users tables.
    source
        .server
        .psql(
            "postgres",
            "CREATE TABLE users (email text PRIMARY KEY, full_name text NOT NULL, address text);
             CREATE TABLE orders (id serial PRIMARY KEY, email text NOT NULL, amount int);
             INSERT INTO users SELECT 'person' || g || '@acme-corp.io', 'First' || g || ' Last', g || ' Real Street, Boston' FROM generate_series(1, 500) g;
             INSERT INTO orders (email, amount) SELECT 'person' || (g % 500 + 1) || '@acme-corp.io', g FROM generate_series(1, 2000) g;",
        )
        .unwrap();
    let store = TestStore::new("seed");
    let dir = store.dir.with_extension("configs");
    let seed_only = write_config(&dir, "seed.yaml", SEED);

    // The seed file alone names every column of users but not orders: strict refuses,
    // listing what is uncovered, and creates nothing.
    let url = source.url();
    let err = store.fail(&["clone", "stream", "--source-url", &url, "--config", seed_only.to_str().unwrap()]);
    assert!(err.contains("public.orders.id") && err.contains("public.orders.email"), "{err}");
    assert_eq!(source.slots(), "");

    let both = write_config(&dir, "seed-orders.yaml", &seed_with_orders());
    let main = clone_masked(&store, &source, &both, &[]);

    let src_users = rows(&source.url(), "SELECT email, full_name, address FROM users ORDER BY full_name");
    let main_users = rows(&main, "SELECT email, full_name, address FROM users ORDER BY email");
    assert_eq!(main_users.len(), 500);
    let src_emails: std::collections::HashSet<&str> = src_users.iter().map(|r| r[0].as_str()).collect();
    for r in &main_users {
        let (email, name, address) = (&r[0], &r[1], &r[2]);
        assert!(!src_emails.contains(email.as_str()), "raw email on main: {email}");
        assert!(email.ends_with("@acme-corp.io"), "domain kept: {email}");
        assert!(!email.starts_with("person"), "local part masked: {email}");
        assert!(!name.starts_with("First"), "name masked: {name}");
        assert!(!address.contains("Real Street"), "address masked: {address}");
    }
    // Lengths kept: the multiset of email and name lengths is the source's.
    let lengths = |rs: &[Vec<String>], i: usize| {
        let mut v: Vec<usize> = rs.iter().map(|r| r[i].chars().count()).collect();
        v.sort();
        v
    };
    assert_eq!(lengths(&main_users, 0), lengths(&src_users, 0), "email lengths kept");
    assert_eq!(lengths(&main_users, 1), lengths(&src_users, 1), "name lengths kept");

    // One email, one output, in two tables: every order joins its user on main.
    let joined = psql_url(&main, "SELECT count(*) FROM orders o JOIN users u USING (email)").unwrap();
    assert_eq!(joined, "2000", "masked emails in orders match masked emails in users");

    // Live changes mask the same way.
    source
        .server
        .psql("postgres", "INSERT INTO users VALUES ('late.comer@acme-corp.io', 'Late Comer', '1 New Road'); INSERT INTO orders (email, amount) VALUES ('late.comer@acme-corp.io', 7);")
        .unwrap();
    assert!(
        wait_until(Duration::from_secs(20), || psql_url(
            &main,
            "SELECT count(*) FROM orders o JOIN users u USING (email) WHERE amount = 7"
        )
        .unwrap()
            == "2"),
        "the live order did not arrive joined to its masked user"
    );

    // A re-sync into another store with the same key gives the same data.
    let again = TestStore::new("seed-resync");
    std::fs::create_dir_all(again.dir.join("data")).unwrap();
    std::fs::copy(store.dir.join("data/mask.key"), again.dir.join("data/mask.key")).unwrap();
    let main2 = clone_masked(&again, &source, &both, &["--slot", "resync", "--publication", "resync"]);
    let q = "SELECT u.email, u.full_name, u.address, string_agg(o.amount::text, ',' ORDER BY o.amount) FROM users u LEFT JOIN orders o USING (email) GROUP BY 1, 2, 3 ORDER BY 1";
    assert_eq!(rows(&main2, q), rows(&main, q), "a re-sync with the same key gives identical masked data");

    // Another key gives other values.
    let other = TestStore::new("seed-otherkey");
    let main3 = clone_masked(&other, &source, &both, &["--slot", "otherkey", "--publication", "otherkey"]);
    assert_ne!(rows(&main3, q), rows(&main, q));
    drop(other);
    drop(again);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
