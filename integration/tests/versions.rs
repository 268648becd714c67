//! Issue 8, acceptance 3: PostgreSQL 14, 15, 16, 17 and 18, one test each. For every
//! major: a source of that major; physical `clone stream` while pgbench writes on it; a
//! branch cut under that load starts, keeps the pgbench invariant and is amcheck-clean;
//! kill -9 of the daemon while the branch's postgres holds unflushed work, after which
//! the restarted daemon brings the branch back through crash recovery with every
//! committed row; and the masked follower with the seed's transform config. On 18,
//! main and the branch run with io_method=worker, and again with io_uring: with these
//! binaries if they have liburing, else with the liburing build that
//! scripts/build-postgres-io-uring makes; skipped (saying why) only when the kernel
//! refuses io_uring.
//!
//! Binaries come from `PgBin::for_major`, as `pgbranch` finds them; 14, 16, 17 and 18
//! from `scripts/install-postgres` (which `scripts/install-test-deps` runs). A missing
//! major fails its test with the lookup's message and install hint.

use std::time::{Duration, Instant};

use pgbranch_integration::masked::{logical_source_with, seed_users, wait_until, write_config};
use pgbranch_integration::*;

/// The seed's transform file, verbatim (it covers every column of `users`).
const SEED: &str = include_str!("../../replicator/tests/fixtures/seed-transform.yaml");

/// A directory removed when dropped, on success and on panic.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or_default().trim().to_string()
}

fn elapsed(t: Instant) -> String {
    format!("{:.1}s", t.elapsed().as_secs_f64())
}

/// The major of the server behind `url`.
fn server_major(bin: &PgBin, url: &str) -> u32 {
    let num: u32 = psql_url_with(bin, url, "SHOW server_version_num").unwrap().parse().unwrap();
    num / 10000
}

/// Waits until the daemon reports the follower streaming and branch `name` running.
fn wait_running(store: &TestStore, name: &str, timeout: Duration) {
    let ok = wait_until(timeout, || {
        let st = store.json(&["status"]);
        let running = st["branches"].as_array().is_some_and(|bs| bs.iter().any(|b| b["name"] == name && b["running"] == true));
        st["follower"]["state"] == "streaming" && running
    });
    assert!(ok, "the follower and branch {name} did not come back: {}", store.json(&["status"]));
}

fn check_major(major: u32) {
    let t = Instant::now();
    let (bin, _) = pg_env_for(major);
    eprintln!("PostgreSQL {major}: binaries in {}", bin.0.display());
    if major >= 18 {
        physical(major, &bin, "worker", false);
        match io_uring_build(&bin) {
            Ok(uring) => {
                eprintln!("PostgreSQL {major}: io_method=io_uring with the binaries in {}", uring.0.display());
                let other_build = uring.0 != bin.0;
                physical(major, &uring, "io_uring", other_build);
            }
            Err(why) => eprintln!("PostgreSQL {major}: io_method=io_uring SKIPPED: {why}"),
        }
    } else {
        physical(major, &bin, "", false);
    }
    masked(major, &bin);
    if major == 14 {
        masked_on_a_newer_major(&bin);
    }
    eprintln!("PostgreSQL {major}: all checks passed in {}", elapsed(t));
}

/// Physical follower, branch under load, daemon crash. `io_method` (18+) is set on the
/// source, whose configuration main and the branch inherit.
/// `pass_bin`: give `clone stream` these binaries with `--pg-bin` (another build of the
/// major than the one it would find).
fn physical(major: u32, bin: &PgBin, io_method: &str, pass_bin: bool) {
    let t = Instant::now();
    let tag = format!("v{major}{io_method}");
    let mut settings = vec!["max_wal_senders = 10".to_string()];
    if !io_method.is_empty() {
        settings.push(format!("io_method = {io_method}"));
    }
    let source = SourceDb::start_with(&tag, SourceOptions { bin: Some(bin.clone()), settings, ..Default::default() });
    assert_eq!(server_major(bin, &source.url()), major, "the source runs the major under test");
    source.server.pgbench(&["-i", "-q", "-s", "5", "postgres"]).unwrap();
    source.server.psql("postgres", "CREATE TABLE marks (id int PRIMARY KEY)").unwrap();
    let load = pgbench_background(&source.server, &["-n", "-c", "2", "-T", "600", "postgres"]);

    // The initial copy and the standby, while pgbench writes on the source.
    let store = TestStore::new(&tag);
    let (url, bin_dir) = (source.url(), bin.0.display().to_string());
    let mut args = vec!["clone", "stream", "--source-url", url.as_str()];
    if pass_bin {
        args.extend(["--pg-bin", bin_dir.as_str()]);
    }
    let main_url = last_line(&store.ok(&args));
    assert_eq!(server_major(bin, &main_url), major, "main runs the source's major");
    wait_running(&store, "main", Duration::from_secs(60));
    // main receives WAL (its walreceiver connects with these binaries' libpq).
    source.server.psql("postgres", "INSERT INTO marks VALUES (0)").unwrap();
    let arrived = wait_until(Duration::from_secs(60), || psql_url_with(bin, &main_url, "SELECT count(*) FROM marks").as_deref() == Ok("1"));
    assert!(arrived, "PostgreSQL {major}: a row committed on the source did not reach main: {}", store.json(&["status"]));
    eprintln!("PostgreSQL {major}{io_method}: main streams ({})", elapsed(t));

    // A branch cut under load starts, keeps the invariant and is amcheck-clean.
    std::thread::sleep(Duration::from_secs(2));
    store.ok(&["branch", "create", "b"]);
    let b = store.branch_server_with("b", bin);
    assert_pgbench_invariant(&b, "the branch cut under load");
    amcheck(&b).unwrap_or_else(|e| panic!("PostgreSQL {major}: the branch cut under load: {e}"));
    if major >= 18 {
        let main = store.branch_server_with("main", bin);
        for (name, s) in [("main", &main), ("b", &b)] {
            assert_eq!(s.psql("postgres", "SHOW io_method").unwrap(), io_method, "{name}'s io_method");
            assert_eq!(s.psql("postgres", "SHOW data_checksums").unwrap(), "on", "{name}: 18 checksums by default");
        }
    }
    b.pgbench(&["-n", "-c", "2", "-t", "200", "postgres"]).unwrap();
    assert_pgbench_invariant(&b, "the branch after its own writes");
    eprintln!("PostgreSQL {major}{io_method}: branch cut under load, checked ({})", elapsed(t));

    // Unflushed work on the branch: committed rows in dirty buffers (no checkpoint yet),
    // an extension of the table by bulk insert, and a transaction left open.
    b.psql(
        "postgres",
        "CREATE TABLE crash_rows (id int PRIMARY KEY, pad text);
         INSERT INTO crash_rows SELECT g, repeat('x', 300) FROM generate_series(1, 20000) g;
         UPDATE pgbench_accounts SET abalance = abalance WHERE aid % 7 = 0;",
    )
    .unwrap();
    let mut open = b.owner.command(bin.tool("psql"));
    open.args(["-X", "-h"]).arg(&b.socket_dir).args(["-p", &b.port.to_string(), "-d", "postgres"]);
    open.args(["-c", "BEGIN", "-c", "INSERT INTO crash_rows VALUES (-1, 'uncommitted')", "-c", "SELECT pg_sleep(600)"]);
    let open = Background::spawn(open);
    assert!(
        wait_until(Duration::from_secs(30), || b
            .psql("postgres", "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(600)'")
            .is_ok_and(|n| n == "1")),
        "the open transaction did not start"
    );
    source.server.psql("postgres", "INSERT INTO marks VALUES (1)").unwrap(); // before the crash
    store.kill_daemon();
    drop(open);
    std::thread::sleep(Duration::from_secs(1));
    store.ok(&["status"]); // restarts the daemon
    wait_running(&store, "b", Duration::from_secs(120));
    let b = store.branch_server_with("b", bin);
    assert_eq!(
        b.psql("postgres", "SELECT count(*), count(*) FILTER (WHERE id < 0) FROM crash_rows").unwrap(),
        "20000|0",
        "PostgreSQL {major}: after the crash the branch holds its committed rows and not the open transaction's"
    );
    assert_pgbench_invariant(&b, "the branch after crash recovery");
    amcheck(&b).unwrap_or_else(|e| panic!("PostgreSQL {major}: the branch after crash recovery: {e}"));
    // main streams again: a row committed on the source before the crash arrives.
    let arrived = wait_until(Duration::from_secs(60), || psql_url_with(bin, &main_url, "SELECT count(*) FROM marks").as_deref() == Ok("2"));
    assert!(
        arrived,
        "PostgreSQL {major}: main did not resume streaming after the daemon restart: {:?}; {}",
        psql_url_with(bin, &main_url, "SELECT count(*) FROM marks"),
        store.json(&["status"])
    );
    drop(load);
    eprintln!("PostgreSQL {major}{io_method}: daemon kill -9, branch recovered ({})", elapsed(t));
    drop(store);
}

/// Binaries of 18 that run with io_method=io_uring: `bin` if it was built with liburing,
/// else the liburing build `scripts/build-postgres-io-uring` makes (the PyPI build has
/// none). Err (a skip, with the reason) only when the kernel refuses io_uring; a kernel
/// that allows it without such binaries fails the test with the install hint.
fn io_uring_build(bin: &PgBin) -> Result<PgBin, String> {
    let first = match io_uring_support(bin) {
        Ok(()) => return Ok(bin.clone()),
        Err(why) => why,
    };
    if pgbranch_integration::sys::io_uring_available().is_err() {
        return Err(first);
    }
    let cache = std::env::var_os("PGBRANCH_PG_CACHE").map_or_else(|| "/var/cache/pgbranch/postgresql".into(), std::path::PathBuf::from);
    let uring = PgBin(cache.join("18-io_uring").join("bin"));
    assert!(
        uring.tool("postgres").exists(),
        "the kernel allows io_uring but {} was built without liburing ({first}), and there is no liburing build in {}: run scripts/build-postgres-io-uring (scripts/test does)",
        bin.0.display(),
        uring.0.display()
    );
    if let Err(why) = io_uring_support(&uring) {
        panic!("the liburing build in {} refused io_method=io_uring: {why}", uring.0.display());
    }
    Ok(uring)
}

/// Whether postgres of `bin` starts with io_method=io_uring here: Err says why not (the
/// build lacks liburing, or the kernel refuses io_uring).
fn io_uring_support(bin: &PgBin) -> Result<(), String> {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/io_uring_disabled").map(|s| s.trim().to_string());
    let owner = Owner::for_branches().map_err(|e| e.to_string())?;
    let dir = std::env::temp_dir().join(format!("pgbranch-iouring-probe-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    owner.private_dir(&dir.join("data")).map_err(|e| e.to_string())?;
    let mut initdb = owner.command(bin.tool("initdb"));
    initdb.arg("-D").arg(dir.join("data")).args(["-U", "postgres", "--auth=trust", "--no-instructions"]);
    let result = owner.run(&mut initdb, "initdb of a throwaway server").map_err(|e| e.to_string()).and_then(|_| {
        let port = pg::free_port().map_err(|e| e.to_string())?;
        Server::start_with(bin, &owner, &dir.join("data"), &dir.join("run"), port, "-c io_method=io_uring").map(drop).map_err(|e| {
            let text = format!("{e:#}");
            let fatal = text.lines().find(|l| l.contains("FATAL") || l.contains("LOG:  io_uring")).unwrap_or("the server did not start");
            fatal.split_once("FATAL:").map_or(fatal, |(_, m)| m).trim().to_string()
        })
    });
    let _ = std::fs::remove_dir_all(&dir);
    result.map_err(|why| {
        let sysctl = match kernel {
            Ok(v) => format!("kernel.io_uring_disabled = {v}"),
            Err(_) => "no kernel.io_uring_disabled".into(),
        };
        let kernel = match pgbranch_integration::sys::io_uring_available() {
            Ok(()) => format!("the kernel itself allows io_uring (io_uring_setup works here; {sysctl})"),
            Err(e) => format!("the kernel refuses io_uring too (io_uring_setup: {e}; {sysctl})"),
        };
        let hint = if why.contains("invalid value") { " (these binaries were built without liburing)" } else { "" };
        format!("a throwaway server refused io_method=io_uring: {why}{hint}; {kernel}")
    })
}

/// The masked follower with the seed's config on a source of `major`; main runs the
/// same major (found here), and says so.
fn masked(major: u32, bin: &PgBin) {
    let t = Instant::now();
    let source = logical_source_with(&format!("m{major}"), bin);
    seed_users(&source, 500);
    // Declared before the store: dropped after it, on panic too.
    let configs = TempDir(std::env::temp_dir().join(format!("pgbranch-versions-configs-{major}-{}", std::process::id())));
    let store = TestStore::new(&format!("m{major}"));
    let config = write_config(&configs.0, "seed.yaml", SEED);
    let out = store.run(&["clone", "stream", "--source-url", &source.url(), "--config", config.to_str().unwrap()]);
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "PostgreSQL {major}: masked clone failed:\n{stdout}{stderr}");
    assert!(
        stderr.contains(&format!("main: PostgreSQL {major}.")) && stderr.contains("like the source"),
        "says which postgres main runs: {stderr}"
    );
    let main = last_line(&stdout);
    assert_eq!(server_major(bin, &main), major);

    let masked = psql_url_with(bin, &main, "SELECT email, full_name, address FROM users").unwrap();
    let rows: Vec<Vec<&str>> = masked.lines().map(|l| l.split('|').collect()).collect();
    assert_eq!(rows.len(), 500);
    for r in &rows {
        assert!(r[0].ends_with("@acme-corp.io") && !r[0].starts_with("person"), "email masked, domain kept: {r:?}");
        assert!(!r[1].starts_with("First") && !r[2].contains("Real Street"), "name and address masked: {r:?}");
    }
    // Live changes arrive masked.
    source.server.psql("postgres", "INSERT INTO users VALUES ('late.comer@acme-corp.io', 'Late Comer', '1 New Road')").unwrap();
    let arrived = wait_until(Duration::from_secs(30), || psql_url_with(bin, &main, "SELECT count(*) FROM users").as_deref() == Ok("501"));
    assert!(arrived, "PostgreSQL {major}: a live insert did not reach the masked main");
    let raw = psql_url_with(bin, &main, "SELECT count(*) FROM users WHERE email LIKE 'late.comer%' OR full_name = 'Late Comer'").unwrap();
    assert_eq!(raw, "0", "the live row arrived masked");
    // A branch of the masked main runs on the same binaries.
    store.ok(&["branch", "create", "dev"]);
    let dev = store.branch_server_with("dev", bin);
    assert_eq!(dev.psql("postgres", "SELECT count(*) FROM users").unwrap(), "501");
    amcheck(&dev).unwrap_or_else(|e| panic!("PostgreSQL {major}: a branch of the masked main: {e}"));
    store.ok(&["clone", "stop", "--drop-slot"]);
    eprintln!("PostgreSQL {major}: masked follower with the seed config ({})", elapsed(t));
    drop(store);
}

/// The masked follower of a 14 source where no 14 binaries are found: main runs the
/// newest major above it (here a cache holding only 16 and 18), and says so.
fn masked_on_a_newer_major(bin14: &PgBin) {
    let t = Instant::now();
    let (bin16, bin18) = (pg_env_for(16).0, pg_env_for(18).0);
    let source = logical_source_with("m14up", bin14);
    seed_users(&source, 100);
    // Declared before the store: dropped after it (its servers run from the cache), on panic too.
    let cache = TempDir(std::env::temp_dir().join(format!("pgbranch-versions-pgcache-{}", std::process::id())));
    let configs = TempDir(std::env::temp_dir().join(format!("pgbranch-versions-configs-14up-{}", std::process::id())));
    let store = TestStore::new("m14up");
    std::fs::create_dir_all(&cache.0).unwrap();
    for (major, bin) in [(16, &bin16), (18, &bin18)] {
        std::os::unix::fs::symlink(bin.0.parent().unwrap(), cache.0.join(major.to_string())).unwrap();
    }
    let config = write_config(&configs.0, "seed.yaml", SEED);
    let out = store
        .command()
        .env("PGBRANCH_PG_CACHE", &cache.0)
        .args(["clone", "stream", "--source-url", &source.url(), "--config", config.to_str().unwrap()])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "masked clone of 14 onto a newer major failed:\n{stdout}{stderr}");
    assert!(
        stderr.contains("main: PostgreSQL 18.") && stderr.contains("newer than the source's 14."),
        "says which postgres main runs: {stderr}"
    );
    let main = last_line(&stdout);
    assert_eq!(server_major(&bin18, &main), 18);
    assert_eq!(psql_url_with(&bin18, &main, "SELECT count(*) FROM users WHERE email LIKE 'person%'").unwrap(), "0");
    source.server.psql("postgres", "INSERT INTO users VALUES ('late.comer@acme-corp.io', 'Late Comer', '1 New Road')").unwrap();
    let arrived =
        wait_until(Duration::from_secs(30), || psql_url_with(&bin18, &main, "SELECT count(*) FROM users").as_deref() == Ok("101"));
    assert!(arrived, "a live insert on the 14 source did not reach the 18 main");
    store.ok(&["clone", "stop", "--drop-slot"]);
    eprintln!("PostgreSQL 14: masked follower onto an 18 main (no 14 binaries in its cache) ({})", elapsed(t));
    drop(store);
}

#[test]
fn postgres_14() {
    check_major(14);
}

#[test]
fn postgres_15() {
    check_major(15);
}

#[test]
fn postgres_16() {
    check_major(16);
}

#[test]
fn postgres_17() {
    check_major(17);
}

#[test]
fn postgres_18() {
    check_major(18);
}
