//! Issue 3, acceptance 4: kill -9 the daemon while it streams and branches run; after a
//! restart the follower resumes from its slot with no gap, and the branches come back
//! with their data.

use std::process::Command;
use std::time::{Duration, Instant};

use pgbranch_integration::*;

fn dump(url: &str) -> String {
    let (bin, _) = pg_env();
    let out = Command::new(bin.tool("pg_dump"))
        .args(["--data-only", "--no-owner", "-t", "pgbench_*", "-t", "marks", "-d", url])
        .output()
        .unwrap();
    assert!(out.status.success(), "pg_dump: {}", String::from_utf8_lossy(&out.stderr));
    // Row order in a dump follows physical order, which replay preserves exactly. The
    // \restrict lines carry a random key per dump.
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

#[test]
fn follower_and_branches_survive_daemon_kill() {
    let source = SourceDb::start("crash", &[]);
    source.server.pgbench(&["-i", "-q", "-s", "5", "postgres"]).unwrap();
    source.server.psql("postgres", "CREATE TABLE marks (id int PRIMARY KEY)").unwrap();
    let store = TestStore::new("follow-crash");
    store.ok(&["clone", "stream", "--source-url", &source.url()]);
    let b_url = store.ok(&["branch", "create", "b"]).lines().last().unwrap().to_string();
    psql_url(&b_url, "CREATE TABLE mine AS SELECT 7 AS v").unwrap();

    let load = pgbench_background(&source.server, &["-n", "-c", "2", "-T", "120", "postgres"]);
    for round in 0..2 {
        std::thread::sleep(Duration::from_secs(3));
        source.server.psql("postgres", &format!("INSERT INTO marks VALUES ({round})")).unwrap();
        store.kill_daemon();
        std::thread::sleep(Duration::from_secs(2)); // the source keeps writing meanwhile
        store.ok(&["status"]); // restart
        let t = Instant::now();
        loop {
            let st = store.json(&["status"]);
            let running = st["branches"].as_array().unwrap().iter().filter(|b| b["running"] == true).count();
            if st["follower"]["state"] == "streaming" && running == 2 {
                break;
            }
            assert!(t.elapsed() < Duration::from_secs(60), "servers did not come back: {st}");
            std::thread::sleep(Duration::from_millis(200));
        }
        assert_eq!(psql_url(&b_url, "SELECT v FROM mine").unwrap(), "7", "the branch came back with its data");
    }
    drop(load);

    // Once the source is quiet, main must hold exactly what the source holds.
    let main_url = store.ok(&["branch", "url", "main"]).trim().to_string();
    let t = Instant::now();
    loop {
        let st = store.json(&["status"]);
        if st["follower"]["lag_bytes"].as_u64() == Some(0) {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "main did not catch up: {st}");
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(psql_url(&main_url, "SELECT count(*) FROM marks").unwrap(), "2");
    let on_source = dump(&source.url());
    let on_main = dump(&main_url);
    if on_source != on_main {
        std::fs::write("/tmp/dump-source.sql", &on_source).unwrap();
        std::fs::write("/tmp/dump-main.sql", &on_main).unwrap();
    }
    assert!(on_source == on_main, "pg_dump of the pgbench tables differs between source and main (see /tmp/dump-*.sql)");
    assert_eq!(source.slots(), "pgbranch", "the follower kept using its slot");
}
