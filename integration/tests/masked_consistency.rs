//! Issue 4, masked follower consistency: after a mixed workload on the source (multi-row
//! inserts, updates of rows whose TOASTed value stays unchanged, updates of the TOASTed
//! value itself, primary-key updates (with cascading foreign keys), deletes by key and
//! on a REPLICA IDENTITY FULL table, a TRUNCATE followed by new inserts, rolled-back
//! transactions and savepoints, a transaction mixing tables and one 100k-row
//! transaction), main equals the source with the transformers applied, row for row.
//! The expectation is computed here from the source's rows with the store's key,
//! independently of the follower. A branch cut from main holds the same rows and is
//! writable. A second test: a template over a TOASTed column stays right when an
//! update of another column leaves that value out of the stream ('unchanged toast').

use std::time::{Duration, Instant};

use pgbranch_integration::masked::*;
use pgbranch_integration::*;
use pgbranch_replicator::transform::TransformConfig;

const CONFIG: &str = r#"
transformations:
  table_transformers:
    - table: customers
      column_transformers:
        id: {name: keep}
        email: {name: email, parameters: {preserve_domain: true, preserve_length: true}}
        full_name: {name: full_name}
        phone: {name: phone}
        ssn: {name: hash, parameters: {length: 16}}
        nickname: {name: string}
        score: {name: int_noise, parameters: {min: -5, max: 5}}
        birthday: {name: date_noise, parameters: {days: 30}}
        prefs: {name: json, parameters: {set: {marketing: false}, delete: [secret]}}
        label: {name: template, parameters: {template: "{full_name} <{email}>"}}
        notes: {name: "null"}
        tier: {name: literal, parameters: {value: standard}}
        balance: {name: keep}
        avatar: {name: keep}
        created_at: {name: keep}
    - table: orders
      column_transformers:
        customer_id: {name: keep}
        order_no: {name: keep}
        amount: {name: keep}
        ship_email: {name: email, parameters: {preserve_domain: true}}
        note: {name: keep}
        placed_on: {name: date_noise, parameters: {days: 10}}
    - table: audit
      column_transformers:
        actor: {name: email}
        action: {name: keep}
        amount: {name: keep}
        at: {name: keep}
        meta: {name: json, parameters: {delete: [ip]}}
    - table: docs
      column_transformers:
        id: {name: keep}
        title: {name: string}
        owner_email: {name: email, parameters: {preserve_length: true}}
        body: {name: keep}
        rev: {name: keep}
        summary: {name: template, parameters: {template: "{title}#{rev}"}}
    - table: bulk
      column_transformers:
        id: {name: keep}
        email: {name: email, parameters: {preserve_domain: true}}
        v: {name: int_noise}
"#;

const SCHEMA: &str = "
CREATE TABLE customers (
    id bigint PRIMARY KEY, email text, full_name text, phone text, ssn text, nickname text, score int,
    birthday date, prefs json, label text, notes text, tier text, balance numeric(12,2), avatar bytea,
    created_at timestamptz);
CREATE TABLE orders (
    customer_id bigint REFERENCES customers(id) ON UPDATE CASCADE ON DELETE CASCADE, order_no int,
    amount numeric, ship_email text, note text, placed_on date, PRIMARY KEY (customer_id, order_no));
CREATE TABLE audit (actor text, action text, amount numeric, at timestamptz, meta json);
ALTER TABLE audit REPLICA IDENTITY FULL;
CREATE TABLE docs (id int PRIMARY KEY, title text, owner_email text, body text, rev int, summary text);
ALTER TABLE docs ALTER COLUMN body SET STORAGE EXTERNAL;
CREATE TABLE bulk (id bigint PRIMARY KEY, email text, v int);
";

/// (table, select, columns in the select's order): what is compared.
const TABLES: &[(&str, &str, &[&str])] = &[
    (
        "customers",
        "SELECT id, email, full_name, phone, ssn, nickname, score, birthday, prefs, label, notes, tier, balance, avatar, created_at FROM customers ORDER BY id",
        &["id", "email", "full_name", "phone", "ssn", "nickname", "score", "birthday", "prefs", "label", "notes", "tier", "balance", "avatar", "created_at"],
    ),
    (
        "orders",
        "SELECT customer_id, order_no, amount, ship_email, note, placed_on FROM orders ORDER BY customer_id, order_no",
        &["customer_id", "order_no", "amount", "ship_email", "note", "placed_on"],
    ),
    // No key: compared as a multiset (the lines are sorted below).
    ("audit", "SELECT actor, action, amount, at, meta FROM audit", &["actor", "action", "amount", "at", "meta"]),
    // `body` is `keep`: its md5 stands for it on both sides; length(body) is unmasked too.
    (
        "docs",
        "SELECT id, title, owner_email, md5(body), rev, summary, length(body) FROM docs ORDER BY id",
        &["id", "title", "owner_email", "body", "rev", "summary", "body_length"],
    ),
    ("bulk", "SELECT id, email, v FROM bulk ORDER BY id", &["id", "email", "v"]),
];

/// An awkward value for SQL literals and COPY: quotes, backslashes, tab, newline, unicode.
const AWKWARD: &str = "it's a \\ back\tslash\nnew line, ünïcødé €";

/// ~100 KB of incompressible text: the hex of `noise`, stored out of line.
fn big_body(seed: u64) -> String {
    noise(50_000, seed).iter().map(|b| format!("{b:02x}")).collect()
}

fn customers_sql(ids: std::ops::Range<i64>) -> String {
    let rows: Vec<String> = ids
        .map(|i| {
            let notes = if i % 7 == 0 { format!("'note {i}'") } else { "NULL".into() };
            let birthday = if i % 5 == 0 { "NULL".to_string() } else { format!("date '1980-01-01' + {i} * 37") };
            format!(
                "({i}, 'user{i}.name@corp{}.example', 'First{i} Last{i}', '+1 (555) {:03}-{:04}', '{:03}-{:02}-{:04}', 'nick{i}', {}, {birthday}, \
                 '{{\"secret\": \"s{i}\", \"lang\": \"en\", \"n\": {i}}}', 'label {i}', {notes}, 'gold', {}.{:02}, \
                 decode(md5('{i}'), 'hex') || '\\x00ff'::bytea, timestamptz '2024-03-01 12:00:00+00' + interval '{i} hours')",
                i % 3,
                i % 1000,
                i * 7 % 10000,
                i % 900,
                i % 99,
                i * 13 % 10000,
                i * 3 - 50,
                i * 11,
                i % 100
            )
        })
        .collect();
    format!(
        "INSERT INTO customers (id, email, full_name, phone, ssn, nickname, score, birthday, prefs, label, notes, tier, balance, avatar, created_at) VALUES {}",
        rows.join(",\n")
    )
}

fn orders_sql(customers: std::ops::Range<i64>, per: i32) -> String {
    let mut rows = Vec::new();
    for c in customers {
        for o in 1..=per {
            let note = if (c + o as i64) % 4 == 0 { format!("'{}'", AWKWARD.replace('\'', "''")) } else { "NULL".into() };
            rows.push(format!("({c}, {o}, {}.5, 'ship{c}x{o}@mail.example', {note}, date '2023-06-01' + {o})", c * 10 + o as i64));
        }
    }
    format!("INSERT INTO orders VALUES {}", rows.join(", "))
}

fn audit_sql(range: std::ops::Range<i64>) -> String {
    let rows: Vec<String> = range
        .map(|i| {
            // Every fifth actor NULL; rows 0 and 1 of every ten are identical twins.
            let k = if i % 10 == 1 { i - 1 } else { i };
            let actor = if k % 5 == 4 { "NULL".to_string() } else { format!("'actor{}@corp.example'", k % 17) };
            format!(
                "({actor}, 'action {k}', {k}.25, timestamptz '2024-01-01 00:00:00+00' + interval '{k} minutes', '{{\"ip\": \"10.0.0.{}\", \"k\": {k}}}')",
                k % 250
            )
        })
        .collect();
    format!("INSERT INTO audit VALUES {}", rows.join(", "))
}

fn insert_doc(c: &mut postgres::Client, id: i32, seed: u64) {
    c.execute(
        "INSERT INTO docs VALUES ($1, $2, $3, $4, 1, 'sum')",
        &[&id, &format!("Title {id}"), &format!("owner{id}@docs.example"), &big_body(seed)],
    )
    .unwrap();
}

/// Main's rows and the expected (masked source) rows of every table; the first
/// difference, or None.
fn difference(source: &mut postgres::Client, main: &mut postgres::Client, config: &TransformConfig, key: &[u8; 32]) -> Option<String> {
    for (table, select, cols) in TABLES {
        let mut want = masked_rows(source, select, config, &format!("public.{table}"), cols, key);
        let mut got = copy_rows(main, select);
        if *table == "audit" {
            want.sort();
            got.sort();
        }
        if want != got {
            let i = want.iter().zip(&got).position(|(a, b)| a != b).unwrap_or(want.len().min(got.len()));
            let clip = |s: Option<&String>| s.map_or("(none)".to_string(), |s| s.chars().take(400).collect());
            return Some(format!(
                "table {table}: {} rows expected, {} on main; first difference at row {i}:\n  expected: {}\n  on main:  {}",
                want.len(),
                got.len(),
                clip(want.get(i)),
                clip(got.get(i))
            ));
        }
    }
    None
}

#[test]
fn masked_main_equals_masked_source_after_mixed_workload() {
    let started = Instant::now();
    let source = logical_source("mconsist");
    let store = TestStore::new("mconsist");
    let mut src = source.client();
    src.batch_execute(SCHEMA).unwrap();
    // Rows before the clone: the initial copy.
    src.batch_execute(&customers_sql(1..101)).unwrap();
    src.batch_execute(&orders_sql(1..51, 2)).unwrap();
    src.batch_execute(&audit_sql(0..50)).unwrap();
    for id in 1..=6 {
        insert_doc(&mut src, id, id as u64);
    }
    src.batch_execute("INSERT INTO bulk SELECT g, 'bulk' || g || '@b.example', g % 1000 FROM generate_series(1, 1000) g").unwrap();
    let toasted: i64 =
        src.query_one("SELECT count(*) FROM docs WHERE pg_column_size(body) = length(body) AND length(body) > 90000", &[]).unwrap().get(0);
    assert_eq!(toasted, 6, "docs.body is stored out of line, uncompressed");

    let config_path = write_config(&store.dir.join("cfg"), "transform.yaml", CONFIG);
    let config = TransformConfig::parse("transform.yaml", CONFIG).unwrap();
    let main_url = clone_masked(&store, &source, &config_path, &[]);
    let key = mask_key(&store);
    let mut main = postgres::Client::connect(&main_url, postgres::NoTls).expect("connecting to main");
    println!("cloned in {:.1}s", started.elapsed().as_secs_f64());
    if let Some(d) = difference(&mut src, &mut main, &config, &key) {
        panic!("after the initial copy: {d}");
    }

    // The workload, while main streams.
    // Multi-row inserts, and a transaction mixing tables.
    src.batch_execute(&customers_sql(101..201)).unwrap();
    src.batch_execute(&format!(
        "BEGIN; {}; {}; {}; UPDATE docs SET rev = rev + 10 WHERE id = 1; COMMIT",
        customers_sql(201..211),
        orders_sql(101..131, 3),
        audit_sql(50..80)
    ))
    .unwrap();
    for id in 7..=10 {
        insert_doc(&mut src, id, 100 + id as u64);
    }
    // Updates of other columns of rows with TOASTed values: pgoutput sends 'unchanged toast'.
    src.batch_execute("UPDATE docs SET rev = rev + 1, title = title || ' v2' WHERE id IN (1, 2, 3, 7)").unwrap();
    src.batch_execute("UPDATE docs SET owner_email = 'new.owner@docs.example' WHERE id = 8").unwrap();
    // Updates of the TOASTed column itself, alone and with other columns.
    src.execute("UPDATE docs SET body = $1 WHERE id = 4", &[&big_body(1004)]).unwrap();
    src.execute("UPDATE docs SET body = $1, rev = rev + 1, title = 'rewritten' WHERE id = 5", &[&big_body(1005)]).unwrap();
    src.execute("UPDATE docs SET body = body || $1 WHERE id = 9", &[&"tail"]).unwrap();
    // Primary key changes: a TOAST row (its body unchanged), a composite key, and a
    // referenced key whose new value cascades to orders on the source.
    src.batch_execute("UPDATE docs SET id = 1006 WHERE id = 6").unwrap();
    src.batch_execute("UPDATE docs SET id = 1010, rev = 99 WHERE id = 10").unwrap();
    src.batch_execute("UPDATE orders SET order_no = order_no + 100 WHERE customer_id BETWEEN 101 AND 105").unwrap();
    src.batch_execute("UPDATE customers SET id = id + 5000 WHERE id IN (3, 4, 120)").unwrap();
    // Updates of masked non-key columns, to values and to NULL.
    src.batch_execute(
        "UPDATE customers SET email = 'changed' || id || '@other.example', phone = '555-0000', score = score * 2, \
         prefs = '{\"secret\": 1, \"lang\": \"fr\"}' WHERE id % 9 = 0;
         UPDATE customers SET birthday = NULL, full_name = NULL, avatar = NULL WHERE id IN (11, 12);
         UPDATE customers SET notes = 'now set', balance = balance + 0.01 WHERE id BETWEEN 20 AND 30;
         UPDATE orders SET note = NULL, amount = amount * 2 WHERE customer_id = 7",
    )
    .unwrap();
    // REPLICA IDENTITY FULL: updates and deletes find rows by every (masked) value,
    // NULLs included; deleting one of two identical rows leaves the other.
    src.batch_execute(
        "UPDATE audit SET amount = amount + 1000 WHERE action IN ('action 2', 'action 4', 'action 14');
         UPDATE audit SET meta = '{\"ip\": \"1.1.1.1\", \"k\": -1}' WHERE action = 'action 7';
         DELETE FROM audit WHERE action IN ('action 3', 'action 9');
         DELETE FROM audit WHERE ctid = (SELECT ctid FROM audit WHERE action = 'action 20' LIMIT 1);
         UPDATE audit SET action = 'twin changed' WHERE ctid = (SELECT ctid FROM audit WHERE action = 'action 30' LIMIT 1)",
    )
    .unwrap();
    // Deletes by key, one cascading to orders on the source.
    src.batch_execute(
        "DELETE FROM orders WHERE customer_id = 2 AND order_no = 1;
         DELETE FROM customers WHERE id IN (1, 150, 151);
         DELETE FROM docs WHERE id = 2;
         DELETE FROM bulk WHERE id % 100 = 0",
    )
    .unwrap();
    // Rolled back: whole transactions, and a savepoint inside a committed one.
    src.batch_execute(&format!("BEGIN; {}; UPDATE docs SET rev = -1; DELETE FROM audit; TRUNCATE bulk; ROLLBACK", customers_sql(900..950)))
        .unwrap();
    {
        let mut tx = src.transaction().unwrap();
        tx.batch_execute("INSERT INTO bulk VALUES (-1, 'kept@b.example', 1)").unwrap();
        tx.batch_execute(
            "SAVEPOINT s; INSERT INTO bulk VALUES (-2, 'gone@b.example', 2); DELETE FROM customers WHERE id = 5; ROLLBACK TO SAVEPOINT s",
        )
        .unwrap();
        tx.execute("UPDATE docs SET body = $1 WHERE id = 3", &[&big_body(7777)]).unwrap();
        tx.rollback().unwrap();
    }
    src.batch_execute(
        "BEGIN; INSERT INTO bulk VALUES (-3, 'kept@b.example', 3); SAVEPOINT s; UPDATE bulk SET v = 0; ROLLBACK TO s; COMMIT",
    )
    .unwrap();
    // TRUNCATE of a table, then new rows in it.
    src.batch_execute(&format!("TRUNCATE orders; {}", orders_sql(40..60, 2))).unwrap();
    // One big transaction: 100k rows (over 4 MiB of SQL), sent to main in pieces.
    src.batch_execute(
        "BEGIN; INSERT INTO bulk SELECT g, 'big' || g || '@b.example', g % 777 FROM generate_series(100001, 200000) g; \
         UPDATE bulk SET v = v + 1 WHERE id BETWEEN 100001 AND 100100; COMMIT",
    )
    .unwrap();
    // Last change: its arrival means everything before it was applied.
    src.batch_execute("INSERT INTO docs VALUES (2000, 'last', 'last@docs.example', 'short body', 1, 'x')").unwrap();
    println!("workload done at {:.1}s", started.elapsed().as_secs_f64());

    let t = Instant::now();
    let mut last = None;
    let equal = wait_until(Duration::from_secs(60), || {
        last = difference(&mut src, &mut main, &config, &key);
        last.is_none()
    });
    if !equal {
        panic!("main does not equal the masked source after 60 s ({}): {}", follower_status(&store), last.unwrap_or_default());
    }
    println!("main caught up {:.1}s after the workload", t.elapsed().as_secs_f64());

    // Sanity: the masking did mask, and rolled-back rows left no trace.
    let on_main = |m: &mut postgres::Client, q: &str| -> i64 { m.query_one(q, &[]).unwrap().get(0) };
    assert_eq!(on_main(&mut main, "SELECT count(*) FROM customers WHERE id >= 900 AND id < 950"), 0);
    assert_eq!(on_main(&mut main, "SELECT count(*) FROM bulk WHERE id IN (-1, -2)"), 0);
    assert_eq!(on_main(&mut main, "SELECT count(*) FROM bulk WHERE id = -3"), 1);
    assert_eq!(on_main(&mut main, "SELECT count(*) FROM customers WHERE email LIKE 'user%' OR ssn LIKE '%-%' OR tier <> 'standard'"), 0);
    assert_eq!(on_main(&mut main, "SELECT count(*) FROM audit WHERE meta::text LIKE '%\"ip\"%'"), 0);
    assert_eq!(on_main(&mut main, "SELECT count(*) FROM bulk WHERE id > 100000"), 100_000);

    let status = follower_status(&store);
    assert_eq!(status["state"], "streaming", "{status}");
    assert!(status["rows_applied"].as_u64().unwrap_or(0) > 100_000, "rows_applied counts the stream: {status}");
    assert!(status.get("stream_error").is_none(), "{status}");

    // A branch cut from main: the same masked rows, and writable.
    let dev_url = store.ok(&["branch", "create", "dev"]).lines().last().unwrap().trim().to_string();
    let mut dev = postgres::Client::connect(&dev_url, postgres::NoTls).expect("connecting to the branch");
    for (table, select, _) in TABLES {
        let (mut a, mut b) = (copy_rows(&mut main, select), copy_rows(&mut dev, select));
        a.sort();
        b.sort();
        assert!(a == b, "branch dev differs from main in {table} ({} vs {} rows)", b.len(), a.len());
    }
    dev.batch_execute("INSERT INTO customers (id, email) VALUES (777777, 'dev@dev'); UPDATE docs SET rev = 0; DELETE FROM bulk").unwrap();
    assert_eq!(on_main(&mut dev, "SELECT count(*) FROM bulk"), 0);
    assert_eq!(on_main(&mut main, "SELECT count(*) FROM customers WHERE id = 777777"), 0, "a write on the branch leaked to main");
    assert!(on_main(&mut main, "SELECT count(*) FROM bulk") > 100_000);
    if let Some(d) = difference(&mut src, &mut main, &config, &key) {
        panic!("main changed after the branch was cut: {d}");
    }
    println!("total {:.1}s", started.elapsed().as_secs_f64());
}

/// A template over a TOASTed column: an update of another column does not resend the
/// TOASTed value ('unchanged toast'), yet the template must still see it.
#[test]
fn template_over_a_toasted_column_survives_updates_of_other_columns() {
    let source = logical_source("mtoasttpl");
    let store = TestStore::new("mtoasttpl");
    let config_text = "
transformations:
  table_transformers:
    - table: profiles
      column_transformers:
        id: {name: keep}
        bio: {name: hash, parameters: {length: 16}}
        n: {name: keep}
        card: {name: template, parameters: {template: \"{id}/{bio}\"}}
";
    let mut src = source.client();
    src.batch_execute(
        "CREATE TABLE profiles (id int PRIMARY KEY, bio text, n int, card text); ALTER TABLE profiles ALTER bio SET STORAGE EXTERNAL",
    )
    .unwrap();
    for id in 1..=3 {
        src.execute("INSERT INTO profiles VALUES ($1, $2, 0, 'c')", &[&id, &big_body(id as u64)]).unwrap();
    }
    let config_path = write_config(&store.dir.join("cfg"), "transform.yaml", config_text);
    let config = TransformConfig::parse("transform.yaml", config_text).unwrap();
    let main_url = clone_masked(&store, &source, &config_path, &[]);
    let key = mask_key(&store);
    let mut main = postgres::Client::connect(&main_url, postgres::NoTls).unwrap();
    // New rows carry bio; then updates of other columns leave it out of the stream.
    src.execute("INSERT INTO profiles VALUES (4, $1, 0, 'c')", &[&big_body(4)]).unwrap();
    src.batch_execute("UPDATE profiles SET n = n + 1 WHERE id IN (1, 4); UPDATE profiles SET card = 'other' WHERE id = 2").unwrap();
    src.batch_execute("INSERT INTO profiles VALUES (100, 'last', 0, 'c')").unwrap();
    let select = "SELECT id, bio, n, card FROM profiles ORDER BY id";
    let cols = ["id", "bio", "n", "card"];
    let mut want = Vec::new();
    let mut got = Vec::new();
    let equal = wait_until(Duration::from_secs(15), || {
        want = masked_rows(&mut src, select, &config, "public.profiles", &cols, &key);
        got = copy_rows(&mut main, select);
        want == got
    });
    assert!(equal, "main differs from the masked source:\n  expected: {want:#?}\n  on main:  {got:#?}");
}
