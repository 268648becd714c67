//! History end to end (issue #7, first part): postgres on branch `a` with a one-hour
//! window; after each of three inserts the test waits for the background commit that
//! follows it (a new point in `branch log`). A branch created `--at` each point's time
//! starts as its own postgres and holds exactly the rows committed before that point —
//! none later — also after `gc` has removed everything no retained point needs. A time
//! before the history is refused with the window named, and `branch log --json`
//! lists the points with the bytes each changed. And exact to the transaction: inserts
//! a few hundred milliseconds apart, all inside one commit interval; a branch `--at`
//! the instant after each insert replays the source's later WAL up to that instant and
//! holds exactly the rows committed by then.

use std::time::{Duration, Instant};

use pgbranch_integration::*;
use pgbranch_replicator::pg;

/// Waits for a point newer than `after` (µs) in a's log; returns its time.
fn next_point(store: &TestStore, after: u64) -> u64 {
    let t = Instant::now();
    loop {
        let log = store.json(&["branch", "log", "a"]);
        let newest = log["points"].as_array().and_then(|p| p.last()).and_then(|p| p["at_unix_micros"].as_u64()).unwrap_or(0);
        if newest > after {
            return newest;
        }
        assert!(t.elapsed() < Duration::from_secs(120), "no commit of branch a after {after} within 120 s: {log}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn rfc3339(us: u64) -> String {
    pgbranch_fs::history::format_utc(us).replace('Z', "") + &format!(".{:06}Z", us % 1_000_000)
}

fn ids_on(store: &TestStore, name: &str, at: u64) -> String {
    store.ok(&["branch", "create", name, "--from", "a", "--at", &rfc3339(at), "--no-start"]);
    pg::prepare_cut(&store.path(name)).unwrap();
    let mut s = store.start(name);
    // Started by hand, a postgres branch from the past recovers to the instant asked for
    // and then promotes itself (read-only until then).
    let t = Instant::now();
    while s.psql("postgres", "SELECT pg_is_in_recovery()").map(|r| r.trim() == "t").unwrap_or(true) {
        assert!(t.elapsed() < Duration::from_secs(120), "branch {name} still recovering after 120 s");
        std::thread::sleep(Duration::from_millis(200));
    }
    let ids = s.psql("postgres", "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM t").unwrap();
    amcheck(&s).expect("pg_amcheck clean on a branch from the past");
    s.stop().unwrap();
    ids
}

#[test]
fn a_branch_at_a_past_point_holds_exactly_what_was_committed_before_it() {
    let store = TestStore::new("history");
    let a = store.new_cluster("a");
    let set = store.ok(&["branch", "set", "a", "--history", "1h"]);
    assert!(set.contains("keeps 1 h of history"), "{set}");
    a.psql("postgres", "CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())").unwrap();
    let mut points = Vec::new();
    let mut last = pgbranch_fs::history::now_unix_micros();
    for id in 1..=3 {
        a.psql("postgres", &format!("INSERT INTO t (id) VALUES ({id})")).unwrap();
        let acked = pgbranch_fs::history::now_unix_micros();
        last = next_point(&store, acked.max(last));
        points.push(last);
    }
    a.psql("postgres", "INSERT INTO t (id) VALUES (4)").unwrap();

    let log = store.json(&["branch", "log", "a"]);
    assert_eq!(log["history_secs"], 3600, "{log}");
    assert_eq!(log["own_window"], true, "{log}");
    let listed = log["points"].as_array().unwrap();
    assert!(listed.len() >= 3, "{log}");
    assert!(listed.iter().any(|p| p["changed_bytes"].as_u64().unwrap_or(0) > 0), "points say what they changed: {log}");
    assert!(store.ok(&["branch", "log", "a"]).contains("retained points"));

    let want = ["1", "1,2", "1,2,3"];
    for (i, at) in points.iter().enumerate() {
        assert_eq!(ids_on(&store, &format!("p{i}"), *at), want[i], "the branch at point {i}");
    }
    store.ok(&["gc"]);
    assert_eq!(ids_on(&store, "p0-after-gc", points[0]), "1", "gc keeps what a retained point needs");
    store.ok(&["verify"]);

    let err = store.fail(&["branch", "create", "early", "--from", "a", "--at", "2001-01-01T00:00:00Z"]);
    assert!(err.contains("no retained point at or before 2001-01-01T00:00:00Z") && err.contains("its history covers"), "{err}");
    let err = store.fail(&["branch", "create", "bad", "--from", "a", "--at", "yesterday"]);
    assert!(err.contains("invalid time 'yesterday'"), "{err}");
    let list = store.json(&["branch", "list"]);
    assert!(!list.to_string().contains("\"early\"") && !list.to_string().contains("\"bad\""), "refused creates made nothing: {list}");
    drop(a);
}

fn ids_via_daemon(store: &TestStore, name: &str, at: u64) -> String {
    let out = store.ok(&["branch", "create", name, "--from", "a", "--at", &rfc3339(at)]);
    let url = out.lines().find(|l| l.starts_with("postgresql://")).unwrap_or_else(|| panic!("no URL printed: {out}")).to_string();
    let ids = psql_url(&url, "SELECT coalesce(string_agg(id::text, ',' ORDER BY id), '') FROM t").unwrap();
    let in_recovery = psql_url(&url, "SELECT pg_is_in_recovery()").unwrap();
    assert_eq!(in_recovery.trim(), "f", "branch {name} has promoted and takes writes");
    psql_url(&url, "INSERT INTO t (id) VALUES (1000)").expect("the branch from the past takes writes");
    ids.trim().to_string()
}

#[test]
fn a_postgres_branch_at_an_instant_holds_exactly_the_transactions_committed_by_then() {
    let store = TestStore::new("history-exact");
    let a = store.new_cluster("a");
    store.ok(&["branch", "set", "a", "--history", "1h"]);
    a.psql("postgres", "CREATE TABLE t (id int PRIMARY KEY, at timestamptz DEFAULT clock_timestamp())").unwrap();
    next_point(&store, pgbranch_fs::history::now_unix_micros());
    let mut acked = Vec::new();
    for id in 1..=6 {
        a.psql("postgres", &format!("INSERT INTO t (id) VALUES ({id})")).unwrap();
        acked.push(pgbranch_fs::history::now_unix_micros());
        std::thread::sleep(Duration::from_millis(300));
    }
    // Instants inside the commit interval (WAL from a later point), and the last one
    // after every commit (WAL that ends before any commit after the instant).
    next_point(&store, *acked.last().unwrap());
    for i in [0usize, 2, 4, 5] {
        let want: Vec<String> = (1..=i + 1).map(|n| n.to_string()).collect();
        assert_eq!(ids_via_daemon(&store, &format!("x{i}"), acked[i]), want.join(","), "the branch at the instant after insert {}", i + 1);
    }
    // The source is untouched by the branches' writes.
    assert_eq!(a.psql("postgres", "SELECT count(*) FROM t").unwrap().trim(), "6");
    store.ok(&["verify"]);
    drop(a);
}
