//! Issue #7, acceptance 1 and 2: branches of a physical follower's `main` from the past,
//! exact to the transaction, by time and by LSN, also across a kill -9 of the daemon.
//!
//! The source runs pgbench while the test inserts numbered marks one at a time, noting
//! after each commit the instant and the source's WAL position. Half-way the daemon is
//! killed with SIGKILL and restarted (the source keeps going; the follower resumes from
//! its slot). Then for instants before and after the kill, `branch create --at T` and
//! `--at-lsn L` each start as their own postgres holding exactly the marks committed at
//! or before T (or L) — none later, none missing — with the pgbench invariant and
//! pg_amcheck clean. Early on, main's restartpoint recycles WAL segments under future
//! names, so the later points hold stale segments named after the one being written.

use std::time::{Duration, Instant};

use pgbranch_integration::*;

const MARKS: usize = 36;
const KILL_AFTER: usize = 18;
/// After this mark the source switches WAL segments and both checkpoint, so main's
/// restartpoint recycles old segments under future names: later points hold them.
const RECYCLE_AFTER: usize = 6;

/// Main's pg_wal holds a segment named after the one it is replaying: a recycled one.
fn recycled_segments(store: &TestStore) -> Vec<String> {
    let main = store.branch_server("main");
    let lsn = main.psql("postgres", "SELECT pg_last_wal_replay_lsn() - '0/0'::pg_lsn").unwrap().trim().parse::<u64>().unwrap();
    let current = format!("{:08X}{:08X}{:08X}", 1, lsn >> 32, (lsn & 0xffff_ffff) / (16 << 20));
    let mut names: Vec<String> = std::fs::read_dir(store.path("main").join("pg_wal"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.len() == 24 && n.as_str() > current.as_str())
        .collect();
    names.sort();
    names
}

fn rfc3339(us: u64) -> String {
    pgbranch_fs::history::format_utc(us).replace('Z', "") + &format!(".{:06}Z", us % 1_000_000)
}

fn wait_caught_up(store: &TestStore) {
    let t = Instant::now();
    loop {
        let st = store.json(&["status"]);
        if st["follower"]["state"] == "streaming" && st["follower"]["lag_bytes"].as_u64() == Some(0) {
            return;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "main did not catch up: {st}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The marks on a new branch made with `how` (e.g. `--at T`), checked whole.
fn marks_on(store: &TestStore, name: &str, how: &[&str]) -> (i64, i64) {
    let mut args = vec!["branch", "create", name, "--from", "main"];
    args.extend_from_slice(how);
    let out = store.ok(&args);
    assert!(out.lines().any(|l| l.starts_with("postgresql://")), "no URL printed: {out}");
    let server = store.branch_server(name);
    assert_eq!(server.psql("postgres", "SELECT pg_is_in_recovery()").unwrap().trim(), "f", "{name} promoted");
    let row = server.psql("postgres", "SELECT count(*), coalesce(max(id), 0) FROM marks").unwrap();
    let v: Vec<i64> = row.trim().split('|').map(|x| x.parse().unwrap()).collect();
    assert_pgbench_invariant(&server, &format!("branch {name} ({how:?})"));
    amcheck(&server).unwrap_or_else(|e| panic!("branch {name}: {e}"));
    store.ok(&["branch", "delete", name]);
    (v[0], v[1])
}

#[test]
fn branches_of_a_followers_past_hold_exactly_what_was_committed_by_then() {
    let source = SourceDb::start("pitr", &[]);
    source.server.pgbench(&["-i", "-q", "-s", "5", "postgres"]).unwrap();
    source.server.psql("postgres", "CREATE TABLE marks (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())").unwrap();
    let store = TestStore::new("pitr");
    let out = store.ok(&["clone", "stream", "--source-url", &source.url(), "--history", "1h"]);
    assert!(out.contains("main keeps 1 h of history"), "{out}");
    wait_caught_up(&store);

    let load = pgbench_background(&source.server, &["-n", "-c", "2", "-R", "100", "-T", "120", "postgres"]);
    let mut acked = Vec::new();
    let mut lsns = Vec::new();
    for id in 1..=MARKS {
        source.server.psql("postgres", &format!("INSERT INTO marks (id) VALUES ({id})")).unwrap();
        acked.push(pgbranch_fs::history::now_unix_micros());
        lsns.push(source.server.psql("postgres", "SELECT pg_current_wal_lsn()").unwrap().trim().to_string());
        std::thread::sleep(Duration::from_millis(700));
        if id == RECYCLE_AFTER {
            for _ in 0..4 {
                source.server.psql("postgres", "SELECT pg_switch_wal(); CREATE TEMP TABLE w AS SELECT 1; SELECT pg_switch_wal()").unwrap();
            }
            source.server.psql("postgres", "CHECKPOINT").unwrap();
            wait_caught_up(&store);
            store.branch_server("main").psql("postgres", "CHECKPOINT").unwrap();
            let recycled = recycled_segments(&store);
            assert!(!recycled.is_empty(), "main's restartpoint recycled segments ahead of its replay position");
        }
        if id == KILL_AFTER {
            store.kill_daemon();
            std::thread::sleep(Duration::from_secs(1));
            store.ok(&["status"]); // restarts it
        }
    }
    drop(load);
    wait_caught_up(&store);

    // Commits come every 5 s (sooner with 16 MiB of small writes; large writes go
    // straight to packs and do not hasten them), so wait for one after the last mark.
    let last_mark = acked[MARKS - 1];
    let t = Instant::now();
    let log = loop {
        let log = store.json(&["branch", "log", "main"]);
        let newest = log["points"].as_array().and_then(|p| p.last()).and_then(|p| p["at_unix_micros"].as_u64());
        if newest.is_some_and(|at| at > last_mark) {
            break log;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "main made no point after the last mark: {log}");
        std::thread::sleep(Duration::from_millis(250));
    };
    let points = log["points"].as_array().unwrap();
    let during = points.iter().filter(|p| p["at_unix_micros"].as_u64().is_some_and(|at| at > acked[0] && at < last_mark)).count();
    assert!(points.len() >= 4 && during >= 2, "main kept its commits as points, {during} of them while marks were added: {log}");
    assert!(points.iter().filter(|p| p["lsn"].is_string()).count() >= 4, "points carry the standby's WAL position: {log}");
    assert!(store.ok(&["branch", "log", "main"]).contains("WAL UP TO"));

    // Five instants spread over the run, before and after the kill.
    for i in [2usize, 9, 17, 24, 33] {
        let want = (i as i64 + 1, i as i64 + 1);
        assert_eq!(marks_on(&store, &format!("t{i}"), &["--at", &rfc3339(acked[i])]), want, "--at the instant after mark {}", i + 1);
        assert_eq!(marks_on(&store, &format!("l{i}"), &["--at-lsn", &lsns[i]]), want, "--at-lsn after mark {} ({})", i + 1, lsns[i]);
    }

    let err = store.fail(&["branch", "create", "early", "--from", "main", "--at-lsn", "0/10"]);
    assert!(err.contains("no retained point at or before LSN 0/10") && err.contains("its points cover LSN"), "{err}");
    let err = store.fail(&["branch", "create", "bad", "--from", "main", "--at-lsn", "16/zz"]);
    assert!(err.contains("invalid LSN"), "{err}");
    // Main itself still follows, untouched by the branches.
    let main = store.branch_server("main");
    assert_eq!(main.psql("postgres", "SELECT count(*) FROM marks").unwrap().trim(), MARKS.to_string());
    store.ok(&["verify"]);
}
