//! Sources set up the way production servers are: Debian's packaged layout (the
//! configuration in /etc/postgresql/N/NAME, none in PGDATA) with raised limits,
//! archiving and hot_standby_feedback on; the source raising a limit while main
//! follows; tablespaces outside PGDATA; a non-superuser replication role.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use pgbranch_integration::packaged::PackagedCluster;
use pgbranch_integration::*;

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn show(server: &Server, setting: &str) -> String {
    server.psql("postgres", &format!("SHOW {setting}")).unwrap_or_default()
}

#[test]
fn packaged_layout_with_raised_settings_follows_and_catches_up_after_a_raise() {
    let archive = tempfile::tempdir().unwrap();
    let (_, owner) = pg_env();
    std::os::unix::fs::chown(archive.path(), Some(owner.uid), Some(owner.gid)).unwrap();
    let archive_command = format!("archive_command = 'cp %p {}/%f'", archive.path().display());
    let mut source = PackagedCluster::start(
        "layout",
        &[
            "max_connections = 150",
            "max_wal_senders = 20",
            "max_worker_processes = 12",
            "max_locks_per_transaction = 128",
            "max_prepared_transactions = 10",
            "hot_standby_feedback = on",
            "archive_mode = on",
            &archive_command,
            "timezone = 'Pacific/Auckland'",
            "work_mem = '16MB'",
        ],
    );
    source.server.pgbench(&["-i", "-q", "-s", "5", "postgres"]).expect("pgbench -i on the source");

    let store = TestStore::new("layout");
    let out = store.command().args(["clone", "stream", "--source-url", &source.url()]).output().unwrap();
    assert!(out.status.success(), "clone stream of a packaged source: {}", String::from_utf8_lossy(&out.stderr));
    let main_path = store.path("main");
    assert!(main_path.join("postgresql.conf").exists(), "main has a configuration of its own");
    let main = store.branch_server("main");
    // The limits are at least the source's, the source's session settings came along,
    // and nothing of the source's host (archiving) did.
    for (name, value) in [
        ("max_connections", "150"),
        ("max_wal_senders", "20"),
        ("max_worker_processes", "12"),
        ("max_locks_per_transaction", "128"),
        ("max_prepared_transactions", "10"),
        ("timezone", "Pacific/Auckland"),
        ("work_mem", "16MB"),
        ("archive_mode", "off"),
    ] {
        assert_eq!(show(&main, name), value, "main's {name}");
    }

    // A branch cut while pgbench writes on the source is consistent.
    let load = pgbench_background(&source.server, &["-c", "4", "-T", "600", "postgres"]);
    std::thread::sleep(Duration::from_secs(3));
    let created = store.ok(&["branch", "create", "dev"]);
    assert!(created.contains("postgresql://"), "{created}");
    let dev = store.branch_server("dev");
    assert_pgbench_invariant(&dev, "branch dev cut under load from a packaged source");
    amcheck(&dev).expect("dev is amcheck-clean");
    drop(load);

    // The source raises two limits and restarts; main catches up without help.
    source.raise(&["max_connections = 180", "max_worker_processes = 16"]);
    source.server.psql("postgres", "CREATE TABLE after_raise AS SELECT 42 AS answer").unwrap();
    wait_for("main to replay past the raise", Duration::from_secs(60), || {
        let main = store.branch_server("main");
        main.psql("postgres", "SELECT answer FROM after_raise").is_ok_and(|v| v == "42")
    });
    let main = store.branch_server("main");
    assert_eq!(show(&main, "max_connections"), "180");
    assert_eq!(show(&main, "max_worker_processes"), "16");
    let status = store.json(&["status"]);
    let raised = status["follower"]["settings_raised"].as_array().cloned().unwrap_or_default();
    assert!(raised.iter().any(|r| r["name"] == "max_connections" && r["to"] == 180), "status says what was raised: {status}");
    let text = store.ok(&["status"]);
    assert!(text.contains("raised max_connections 150 -> 180"), "{text}");
    // A branch cut after the raise starts with the raised limits.
    store.ok(&["branch", "create", "after"]);
    assert_eq!(show(&store.branch_server("after"), "max_connections"), "180");
    // A cut whose configuration predates the raise (taken between the source's raise and
    // main's) still starts: its limits are raised to what its control file records.
    store.ok(&["branch", "create", "early", "--no-start"]);
    let conf = store.path("early").join("postgresql.conf");
    let text = std::fs::read_to_string(&conf).unwrap().replace("max_connections = 180", "max_connections = 150");
    std::fs::write(&conf, text).unwrap();
    store.ok(&["branch", "start", "early"]);
    assert_eq!(show(&store.branch_server("early"), "max_connections"), "180");
}

/// Every file below `dir`, with its size and modification time.
fn listing(dir: &Path) -> Vec<(PathBuf, u64, std::time::SystemTime)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let m = e.metadata().unwrap();
            if m.is_dir() {
                stack.push(e.path());
            } else {
                out.push((e.path(), m.len(), m.modified().unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn tablespaces_are_copied_into_each_branch() {
    let source = SourceDb::start("tblspc", &["autovacuum = off"]);
    let (_, owner) = pg_env();
    let spaces = [source.dir.join("fast-disk"), source.dir.join("archive-disk")];
    for (i, dir) in spaces.iter().enumerate() {
        owner.private_dir(dir).unwrap();
        source.server.psql("postgres", &format!("CREATE TABLESPACE ts{i} LOCATION '{}'", dir.display())).unwrap();
    }
    source
        .server
        .psql(
            "postgres",
            "CREATE TABLE hot (id int PRIMARY KEY USING INDEX TABLESPACE ts1, v text) TABLESPACE ts0; \
             INSERT INTO hot SELECT g, 'row ' || g FROM generate_series(1, 5000) g; \
             CREATE TABLE cold (id int, v text) TABLESPACE ts1; \
             INSERT INTO cold SELECT g, 'old ' || g FROM generate_series(1, 3000) g; CHECKPOINT",
        )
        .unwrap();
    let before: Vec<_> = spaces.iter().map(|d| listing(d)).collect();

    let store = TestStore::new("tblspc");
    store.ok(&["clone", "stream", "--source-url", &source.url()]);
    store.ok(&["branch", "create", "a"]);
    store.ok(&["branch", "create", "b"]);
    for name in ["main", "a", "b"] {
        let tblspc = store.path(name).join("pg_tblspc");
        let entries: Vec<_> = std::fs::read_dir(&tblspc).unwrap().flatten().collect();
        assert_eq!(entries.len(), 2, "{name} has both tablespaces");
        for e in entries {
            let m = std::fs::symlink_metadata(e.path()).unwrap();
            assert!(m.is_dir() && !m.file_type().is_symlink(), "{name}: {} is a directory inside the branch", e.path().display());
        }
    }
    let a = store.branch_server("a");
    let b = store.branch_server("b");
    a.psql(
        "postgres",
        "INSERT INTO hot SELECT g, 'branch a' FROM generate_series(5001, 9000) g; UPDATE cold SET v = 'a was here'; CHECKPOINT",
    )
    .unwrap();
    b.psql("postgres", "DELETE FROM hot WHERE id > 2500; CHECKPOINT").unwrap();
    let count = |s: &Server, sql: &str| s.psql("postgres", sql).unwrap();
    assert_eq!(count(&a, "SELECT count(*) FROM hot"), "9000");
    assert_eq!(count(&a, "SELECT count(*) FROM cold WHERE v = 'a was here'"), "3000");
    assert_eq!(count(&b, "SELECT count(*) FROM hot"), "2500");
    assert_eq!(count(&b, "SELECT count(*) FROM cold WHERE v = 'a was here'"), "0");
    let main = store.branch_server("main");
    assert_eq!(count(&main, "SELECT count(*) FROM hot"), "5000");
    assert_eq!(count(&source.server, "SELECT count(*) FROM hot"), "5000");
    assert_eq!(count(&source.server, "SELECT count(*) FROM cold WHERE v = 'a was here'"), "0");
    amcheck(&a).expect("branch a is amcheck-clean");
    // Nothing was written to the source's tablespace directories by main or a branch.
    let after: Vec<_> = spaces.iter().map(|d| listing(d)).collect();
    assert_eq!(before, after, "the source's tablespace directories are untouched");
}

#[test]
fn a_replication_role_without_superuser_follows() {
    let source = SourceDb::start("role", &[]);
    source
        .server
        .psql(
            "postgres",
            "CREATE ROLE follower LOGIN REPLICATION PASSWORD 'follow-me'; \
             CREATE TABLE shared_data AS SELECT g AS id FROM generate_series(1, 100) g; \
             GRANT SELECT ON shared_data TO follower",
        )
        .unwrap();
    let store = TestStore::new("role");
    store.ok(&["clone", "stream", "--source-url", &source.url_as("follower", "follow-me")]);
    source.server.psql("postgres", "INSERT INTO shared_data VALUES (101)").unwrap();
    wait_for("the new row on main", Duration::from_secs(30), || {
        store.branch_server("main").psql("postgres", "SELECT count(*) FROM shared_data").is_ok_and(|v| v == "101")
    });
    let url = store.ok(&["branch", "create", "dev"]).lines().find(|l| l.starts_with("postgresql://")).unwrap().to_string();
    assert_eq!(psql_url(&url, "SELECT current_user, count(*) FROM shared_data").unwrap(), "follower|101");
    // `branch reset`: back to main's latest state, same URL, the branch's own writes gone.
    store.branch_server("dev").psql("postgres", "INSERT INTO shared_data VALUES (-1)").unwrap();
    source.server.psql("postgres", "INSERT INTO shared_data VALUES (102)").unwrap();
    wait_for("row 102 on main", Duration::from_secs(30), || {
        store.branch_server("main").psql("postgres", "SELECT count(*) FROM shared_data WHERE id = 102").is_ok_and(|v| v == "1")
    });
    let reset = store.ok(&["branch", "reset", "dev"]);
    assert!(reset.contains(&url), "reset keeps the URL: {reset}");
    assert_eq!(psql_url(&url, "SELECT count(*) FILTER (WHERE id = -1), count(*) FILTER (WHERE id = 102) FROM shared_data").unwrap(), "0|1");

    // A role without REPLICATION is told what to grant.
    source.server.psql("postgres", "CREATE ROLE reader LOGIN PASSWORD 'read-only'").unwrap();
    let store2 = TestStore::new("role-denied");
    let err = store2.fail(&["clone", "stream", "--source-url", &source.url_as("reader", "read-only")]);
    assert!(err.contains("ALTER ROLE \"reader\" REPLICATION"), "{err}");
}

/// The seed's transform file, verbatim.
const SEED: &str = include_str!("../../replicator/tests/fixtures/seed-transform.yaml");

#[test]
fn a_masked_follower_needs_only_replication_select_and_a_publication() {
    use pgbranch_integration::masked::{logical_source, seed_users, wait_until, write_config};
    let source = logical_source("masked-role");
    seed_users(&source, 200);
    source.server.psql("postgres", "CREATE ROLE masker LOGIN REPLICATION PASSWORD 'mask-me'").unwrap();
    let url = source.url_as("masker", "mask-me");
    let store = TestStore::new("masked-role");
    let config = write_config(&store.dir.with_extension("configs"), "seed.yaml", SEED);
    let clone = |store: &TestStore| store.run(&["clone", "stream", "--source-url", &url, "--config", config.to_str().unwrap()]);
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).into_owned();

    // No publication, not a superuser: told what a superuser must run; nothing made.
    let out = clone(&store);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("CREATE PUBLICATION \"pgbranch\" FOR ALL TABLES"), "{}", stderr(&out));
    assert_eq!((source.slots(), source.publications()), (String::new(), String::new()));
    // A publication, but the role cannot read the table: told what to grant.
    source.server.psql("postgres", "CREATE PUBLICATION pgbranch FOR ALL TABLES WITH (publish_via_partition_root = true)").unwrap();
    let out = clone(&store);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("public.users") && stderr(&out).contains("GRANT SELECT"), "{}", stderr(&out));
    assert_eq!(source.slots(), "");
    // With SELECT granted it follows, masked, and leaves the publication it did not make.
    source.server.psql("postgres", "GRANT SELECT ON ALL TABLES IN SCHEMA public TO masker").unwrap();
    let out = clone(&store);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("using the existing publication pgbranch"), "{}", stderr(&out));
    let main_url = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_string();
    assert_eq!(psql_url(&main_url, "SELECT count(*) FROM users WHERE email LIKE 'person%'").unwrap(), "0", "emails are masked");
    source.server.psql("postgres", "INSERT INTO users VALUES ('late@acme-corp.io', 'Late Comer', '1 New Road')").unwrap();
    assert!(wait_until(Duration::from_secs(30), || psql_url(&main_url, "SELECT count(*) FROM users").is_ok_and(|c| c == "201")));
    store.ok(&["clone", "stop", "--drop-slot"]);
    assert_eq!((source.slots(), source.publications()), (String::new(), "pgbranch".to_string()));
}
