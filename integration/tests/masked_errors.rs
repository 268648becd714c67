//! Issue 4, acceptance: a bad transform config — an uncovered column, an unknown
//! transformer, a bad parameter, an unknown table or column, malformed YAML, a unique
//! column under a transformer that can merge values, a missing file — and a source that
//! cannot be followed logically (a table without a key, wal_level=replica) each get
//! their own message (with the file's line where one applies), a non-zero exit, and
//! leave nothing behind: no slot, no publication on the source, no branch `main`.
//! `--validation relaxed` copies an uncovered column with a loud warning naming it.
//! A column added on the source later stops a strict stream before its raw value
//! reaches main, with the reason in `status`; `clone reload` with the column covered
//! resumes it and the row arrives masked.

use std::path::Path;
use std::time::Duration;

use pgbranch_fs::store::{LocalStore, ObjectStore};
use pgbranch_integration::masked::{self, clone_masked, masked_rows, wait_until, write_config};
use pgbranch_integration::*;
use pgbranch_replicator::transform::TransformConfig;

const GOOD: &str = r#"transformations:
  table_transformers:
    - schema: public
      table: users
      column_transformers:
        id: {name: keep}
        email: {name: email}
        name: {name: full_name}
        city: {name: keep}
    - schema: public
      table: events
      column_transformers:
        id: {name: keep}
        user_id: {name: keep}
        kind: {name: keep}
"#;

/// The 1-based line of the only line of `yaml` containing `needle`.
fn line(yaml: &str, needle: &str) -> usize {
    let hits: Vec<usize> = yaml.lines().enumerate().filter(|(_, l)| l.contains(needle)).map(|(i, _)| i + 1).collect();
    assert_eq!(hits.len(), 1, "{needle:?} occurs once in the config");
    hits[0]
}

/// `GOOD` with one line replaced (or removed, when `with` is empty).
fn edit(from: &str, with: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} in GOOD");
    let out = GOOD.replacen(from, with, 1);
    out.lines().filter(|l| !l.trim().is_empty()).map(|l| format!("{l}\n")).collect()
}

fn assert_nothing_created(store: &TestStore, source: &SourceDb, what: &str) {
    assert_eq!(source.slots(), "", "{what}: a replication slot was left on the source");
    assert_eq!(source.publications(), "", "{what}: a publication was left on the source");
    let list = store.json(&["branch", "list"]);
    assert!(!list.as_array().unwrap().iter().any(|b| b["name"] == "main"), "{what}: a branch main was left: {list}");
}

/// Runs `clone stream --config` that must fail; checks the message and that nothing
/// was created; returns stderr.
fn refused(store: &TestStore, source: &SourceDb, config: &Path, extra: &[&str], expect: &[String]) -> String {
    let url = source.url();
    let mut args = vec!["clone", "stream", "--source-url", url.as_str(), "--config", config.to_str().unwrap()];
    args.extend_from_slice(extra);
    let err = store.fail(&args);
    eprintln!("{}", err.trim());
    for e in expect {
        assert!(err.contains(e.as_str()), "{}: expected {e:?} in:\n{err}", config.display());
    }
    assert!(err.lines().count() <= 3, "one clear message, not a dump:\n{err}");
    assert_nothing_created(store, source, &config.display().to_string());
    err
}

/// Checks that `err` names `file:LINE:` for one of `lines`; records it otherwise.
fn at_line(err: &str, file: &str, lines: &[usize], wrong: &mut Vec<String>) {
    if !lines.iter().any(|l| err.contains(&format!("{file}:{l}:"))) {
        wrong.push(format!("expected {file}:{lines:?}: in: {}", err.trim()));
    }
}

fn s(v: &str) -> String {
    v.to_string()
}

#[test]
fn bad_configs_and_sources_are_refused_before_anything_is_created() {
    let source = masked::logical_source("mask-errors");
    source
        .client()
        .batch_execute(
            "CREATE TABLE users (id int PRIMARY KEY, email text NOT NULL UNIQUE, name text, city text);
             CREATE TABLE events (id bigint PRIMARY KEY, user_id int, kind text);
             INSERT INTO users SELECT i, 'user' || i || '@corp.example', 'Person ' || i, 'City ' || (i % 7) FROM generate_series(1, 50) i;
             INSERT INTO events SELECT i, i % 50 + 1, 'kind' || (i % 3) FROM generate_series(1, 200) i;",
        )
        .unwrap();
    let store = TestStore::new("mask-errors");
    // Errors at a wrong line are collected and reported at the end, after every other check.
    let mut wrong_lines: Vec<String> = Vec::new();
    let dir = source.dir.join("configs");
    let path = |name: &str| dir.join(name).display().to_string();

    // Strict validation: every uncovered column is listed, schema-qualified.
    let cfg = write_config(&dir, "uncovered.yaml", &edit("        city: {name: keep}\n", "").replace("        kind: {name: keep}\n", ""));
    refused(&store, &source, &cfg, &[], &[s("strict validation"), s("public.users.city"), s("public.events.kind"), path("uncovered.yaml")]);

    // An unknown transformer, at its line.
    let yaml = edit("name: {name: full_name}", "name: {name: fullname_x}");
    let cfg = write_config(&dir, "unknown.yaml", &yaml);
    let err = refused(&store, &source, &cfg, &[], &[s("public.users.name"), s("unknown transformer 'fullname_x'"), s("known: keep")]);
    at_line(&err, &path("unknown.yaml"), &[line(&yaml, "fullname_x")], &mut wrong_lines);
    // The same in block style, where `name:` is also the key of every transformer.
    let yaml = edit(
        "        email: {name: email}\n        name: {name: full_name}\n",
        "        email:\n          name: email\n        name:\n          name: fullname_x\n",
    );
    let cfg = write_config(&dir, "unknown-block.yaml", &yaml);
    let err = refused(&store, &source, &cfg, &[], &[s("public.users.name"), s("unknown transformer 'fullname_x'")]);
    let key = yaml.lines().position(|l| l == "        name:").unwrap() + 1;
    at_line(&err, &path("unknown-block.yaml"), &[key, key + 1], &mut wrong_lines);

    // A bad parameter, at its line — in the second table, on a column name the first
    // table has too.
    let yaml = edit("        id: {name: keep}\n        user_id", "        id: {name: hash, parameters: {length: 4}}\n        user_id");
    let cfg = write_config(&dir, "param.yaml", &yaml);
    let err = refused(&store, &source, &cfg, &[], &[s("public.events.id"), s("'hash'"), s("'length' must be between 8 and 64")]);
    at_line(&err, &path("param.yaml"), &[line(&yaml, "length: 4")], &mut wrong_lines);

    // A parameter of the wrong type.
    let yaml = edit("email: {name: email}", "email: {name: email, parameters: {preserve_domain: maybe}}");
    let cfg = write_config(&dir, "param-type.yaml", &yaml);
    let err = refused(&store, &source, &cfg, &[], &[s("public.users.email"), s("'preserve_domain' must be true or false")]);
    at_line(&err, &path("param-type.yaml"), &[line(&yaml, "maybe")], &mut wrong_lines);

    // The same with list entries written `- table: x` (schema defaulting to public).
    let yaml = GOOD
        .replace("    - schema: public\n      table:", "    - table:")
        .replace("        id: {name: keep}\n        user_id", "        id: {name: hash, parameters: {length: 4}}\n        user_id");
    let cfg = write_config(&dir, "param-short.yaml", &yaml);
    let err = refused(&store, &source, &cfg, &[], &[s("public.events.id"), s("'length' must be between 8 and 64")]);
    at_line(&err, &path("param-short.yaml"), &[line(&yaml, "length: 4")], &mut wrong_lines);

    // An unknown table, an unknown column.
    let cfg = write_config(
        &dir,
        "table.yaml",
        &format!("{GOOD}    - schema: public\n      table: ghosts\n      column_transformers:\n        id: {{name: keep}}\n"),
    );
    refused(
        &store,
        &source,
        &cfg,
        &[],
        &[s("table public.ghosts is in the config but not replicated from the source"), path("table.yaml")],
    );
    let cfg = write_config(
        &dir,
        "column.yaml",
        &edit("        city: {name: keep}\n", "        city: {name: keep}\n        nickname: {name: keep}\n"),
    );
    refused(&store, &source, &cfg, &[], &[s("column public.users.nickname is in the config but not in the source table")]);

    // Malformed YAML, with its line.
    let yaml = edit("email: {name: email}", "email: name: email");
    let cfg = write_config(&dir, "broken.yaml", &yaml);
    let at = format!("malformed YAML at line {}", line(&yaml, "email: name: email"));
    refused(&store, &source, &cfg, &[], &[path("broken.yaml"), at]);

    // A unique column under a transformer that can map two values to one.
    // (a short hash: 8 hex digits collide; email, even length-preserving, does not).
    let yaml = edit("email: {name: email}", "email: {name: hash, parameters: {length: 8}}");
    let cfg = write_config(&dir, "unique.yaml", &yaml);
    let err = refused(
        &store,
        &source,
        &cfg,
        &[],
        &[s("public.users.email has a unique index"), s("'hash' can map two values to one"), s("length >= 16")],
    );
    at_line(&err, &path("unique.yaml"), &[line(&yaml, "length: 8")], &mut wrong_lines);

    // No config file at all.
    let missing = dir.join("nope.yaml");
    refused(&store, &source, &missing, &[], &[format!("reading the transform config {}", missing.display()), s("No such file")]);

    // A table without a primary key or replica identity.
    source.server.psql("postgres", "CREATE TABLE audit (at timestamptz, msg text)").unwrap();
    let yaml = format!("{GOOD}    - schema: public\n      table: audit\n      column_transformers:\n        at: {{name: keep}}\n        msg: {{name: keep}}\n");
    let cfg = write_config(&dir, "nokey.yaml", &yaml);
    refused(
        &store,
        &source,
        &cfg,
        &[],
        &[s("public.audit"), s("no primary key or replica identity"), s("REPLICA IDENTITY FULL"), s("nothing was created")],
    );
    source.server.psql("postgres", "DROP TABLE audit").unwrap();

    // A source with wal_level=replica (the default).
    let good = write_config(&dir, "good.yaml", GOOD);
    let replica = SourceDb::start("mask-errors-replica", &[]);
    refused(&store, &replica, &good, &[], &[s("wal_level=replica"), s("wal_level=logical")]);
    drop(replica);

    // Relaxed validation: the uncovered column is copied as is, with a loud warning.
    let relaxed_store = TestStore::new("mask-relaxed");
    let cfg = write_config(&dir, "relaxed.yaml", &edit("        city: {name: keep}\n", ""));
    let url = source.url();
    let out = relaxed_store.run(&["clone", "stream", "--source-url", &url, "--config", cfg.to_str().unwrap(), "--validation", "relaxed"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "relaxed clone failed:\n{err}");
    assert!(
        err.contains("WARNING") && err.contains("public.users.city") && err.contains("UNMASKED"),
        "a loud warning naming the column:\n{err}"
    );
    assert!(!err.contains("public.users.email") && !err.contains("public.events"), "only uncovered columns are named:\n{err}");
    let main_url = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_string();
    let q = "SELECT city, email FROM users WHERE id = 7";
    let (src_row, main_row) = (psql_url(&url, q).unwrap(), psql_url(&main_url, q).unwrap());
    assert_eq!(src_row.split('|').next(), main_row.split('|').next(), "the uncovered column is copied unmasked");
    assert_ne!(src_row.split('|').nth(1), main_row.split('|').nth(1), "the covered email is masked");
    relaxed_store.ok(&["clone", "stop", "--drop-slot"]);
    assert_eq!((source.slots(), source.publications()), (s(""), s("")), "clone stop --drop-slot drops slot and publication");
    drop(relaxed_store);

    // Strict, on a fresh store, then a column is added on the source: the stream stops
    // before its raw value reaches main, and says why.
    drop(store);
    let store = TestStore::new("mask-addcol");
    let main_url = clone_masked(&store, &source, &good, &[]);
    source.server.psql("postgres", "INSERT INTO users VALUES (51, 'late@corp.example', 'Late Person', 'City 1')").unwrap();
    assert!(
        wait_until(Duration::from_secs(30), || psql_url(&main_url, "SELECT count(*) FROM users").as_deref() == Ok("51")),
        "main streams"
    );
    source
        .server
        .psql("postgres", "ALTER TABLE users ADD COLUMN ssn text; INSERT INTO users VALUES (52, 'new@corp.example', 'New Person', 'City 2', 'SSN-RAW-734-11-9052')")
        .unwrap();
    let mut status = serde_json::Value::Null;
    let stopped = wait_until(Duration::from_secs(30), || {
        status = masked::follower_status(&store);
        status["state"] == "error"
    });
    assert!(stopped, "the stream stops on the uncovered column: {status}");
    let reason = status["stream_error"].as_str().unwrap_or_default();
    assert!(reason.contains("public.users.ssn") && reason.contains("clone reload"), "the reason names the column and the fix: {reason}");
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(masked::follower_status(&store)["state"], "error", "it stays stopped (not retried into main)");
    assert_eq!(psql_url(&main_url, "SELECT count(*) FROM users WHERE id = 52").unwrap(), "0", "the row did not reach main");
    let cols = psql_url(
        &main_url,
        "SELECT string_agg(column_name, ',' ORDER BY column_name) FROM information_schema.columns WHERE table_name = 'users'",
    )
    .unwrap();
    assert_eq!(cols, "city,email,id,name", "main has no ssn column yet");

    // A reload that still leaves it uncovered is refused; one that covers it resumes.
    let still = store.fail(&["clone", "reload", "--config", good.to_str().unwrap()]);
    assert!(still.contains("public.users.ssn"), "reload checks the config against the source first: {still}");
    let fixed_yaml =
        GOOD.replace("        city: {name: keep}\n", "        city: {name: keep}\n        ssn: {name: hash, parameters: {length: 16}}\n");
    let fixed = write_config(&dir, "fixed.yaml", &fixed_yaml);
    store.ok(&["clone", "reload", "--config", fixed.to_str().unwrap()]);
    source
        .server
        .psql("postgres", "INSERT INTO users VALUES (53, 'newer@corp.example', 'Newer Person', 'City 3', 'SSN-RAW-734-11-9053')")
        .unwrap();
    let select = "SELECT id, email, name, city, ssn FROM users ORDER BY id";
    let config = TransformConfig::parse("fixed.yaml", &fixed_yaml).unwrap();
    let want = masked_rows(
        &mut source.client(),
        select,
        &config,
        "public.users",
        &["id", "email", "name", "city", "ssn"],
        &masked::mask_key(&store),
    );
    let mut main = postgres::Client::connect(&main_url, postgres::NoTls).unwrap();
    let caught_up =
        wait_until(Duration::from_secs(30), || main.query("SELECT 1 FROM users WHERE id = 53", &[]).is_ok_and(|r| r.len() == 1));
    assert!(caught_up, "the stream resumes after the reload: {}", masked::follower_status(&store));
    assert_eq!(masked::copy_rows(&mut main, select), want, "main holds the rows, ssn masked as fixed.yaml says");
    let ssn: String = main.query_one("SELECT ssn FROM users WHERE id = 52", &[]).unwrap().get(0);
    assert!(ssn.len() == 16 && !ssn.contains("SSN-RAW"), "ssn hashed: {ssn}");
    let f = masked::follower_status(&store);
    assert!(f["state"] == "streaming" && f.get("stream_error").is_none_or(|e| e.is_null()), "streaming again: {f}");
    drop(main);

    // Nowhere in that store, not even before the reload, did the raw value land.
    let pid = store.daemon_pid().unwrap();
    store.ok(&["stop"]);
    assert!(wait_gone(pid, Duration::from_secs(60)), "the daemon exits after stop");
    // Pattern 0 is the raw value; pattern 1, its masked form, proves the scan sees main's rows.
    let raw = aho_corasick::AhoCorasick::new(["SSN-RAW-734-11-905", ssn.as_str()]).unwrap();
    let mut masked_seen = false;
    let mut files = Vec::new();
    let mut dirs = vec![store.dir.clone()];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let md = std::fs::symlink_metadata(e.path()).unwrap();
            if md.is_dir() {
                dirs.push(e.path());
            } else if md.is_file() {
                files.push(e.path());
            }
        }
    }
    for f in &files {
        let data = std::fs::read(f).unwrap();
        assert!(raw.find_iter(&data).all(|m| m.pattern().as_usize() == 1), "the raw ssn is in {}", f.display());
    }
    let objects = LocalStore::open(&store.dir.join("data")).unwrap();
    for h in objects.all_objects().unwrap() {
        let data = objects.get(&h).unwrap();
        for m in raw.find_iter(&data) {
            assert_eq!(m.pattern().as_usize(), 1, "the raw ssn is in object {h}");
            masked_seen = true;
        }
    }
    assert!(masked_seen, "the scan finds the masked ssn in the store");
    drop(objects);
    drop(store);
    drop(source);
    assert!(wrong_lines.is_empty(), "errors pointing at the wrong line of the config:\n{}", wrong_lines.join("\n"));
}
