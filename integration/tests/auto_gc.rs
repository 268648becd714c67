//! Issue #7, acceptance 3 (the short variant of the soak) and 4 (kill -9 during GC).
//!
//! A physical follower of a source running pgbench at a fixed rate, with a one-minute
//! history window and no manual `gc`: once the window has filled, the store stops
//! growing — its physical size stays within a bound of what the heads and retained
//! points need (measured at the end by a full `pgbranch gc`) — and the daemon's memory
//! stays flat. And a daemon killed with SIGKILL at several moments of a collection
//! comes back with every byte of every branch, `verify` clean, and collects again.

use std::fs::File;
use std::time::{Duration, Instant};

use pgbranch_integration::*;

const MIB: u64 = 1 << 20;

/// How long the load runs, and the window.
const RUN: Duration = Duration::from_secs(210);
const WINDOW_SECS: u64 = 60;

struct Sample {
    at: Duration,
    physical: u64,
    rss: u64,
    collections: u64,
}

#[test]
fn a_following_store_with_history_stays_flat_without_manual_gc() {
    let source = SourceDb::start("auto-gc", &[]);
    source.server.pgbench(&["-i", "-q", "-s", "10", "postgres"]).unwrap();
    let store = TestStore::new("auto-gc");
    std::fs::create_dir_all(&store.dir).unwrap();
    std::fs::write(store.dir.join("pgbranch.toml"), format!("history = \"{WINDOW_SECS}s\"\n")).unwrap();
    store.ok(&["clone", "stream", "--source-url", &source.url()]);
    let st = store.json(&["status"]);
    assert_eq!(st["gc"]["mode"], "auto", "{st}");
    assert_eq!(st["history_secs"], WINDOW_SECS, "{st}");

    let load = pgbench_background(&source.server, &["-n", "-c", "2", "-R", "200", "-T", &RUN.as_secs().to_string(), "postgres"]);
    let started = Instant::now();
    let mut samples = Vec::new();
    while started.elapsed() < RUN {
        std::thread::sleep(Duration::from_secs(5));
        let st = store.json(&["status"]);
        samples.push(Sample {
            at: started.elapsed(),
            physical: st["physical_bytes"].as_u64().unwrap(),
            rss: st["rss_bytes"].as_u64().unwrap(),
            collections: st["gc"]["collections"].as_u64().unwrap_or(0),
        });
    }
    let out = load.wait();
    assert!(out.status.success(), "pgbench: {}", String::from_utf8_lossy(&out.stderr));
    let st = store.json(&["status"]);
    let log = store.json(&["branch", "log", "main"]);
    let points = log["points"].as_array().unwrap();
    let span = points.last().unwrap()["at_unix_micros"].as_u64().unwrap() - points[0]["at_unix_micros"].as_u64().unwrap();
    assert!(span <= (WINDOW_SECS + 10) * 1_000_000, "points older than the window were dropped: {span} µs of history");
    assert!(span >= (WINDOW_SECS - 15) * 1_000_000, "the window filled: {span} µs of history");

    // What the heads and retained points need now: a full collection (pgbranch gc).
    let before_full = st["physical_bytes"].as_u64().unwrap();
    store.ok(&["gc"]);
    let needed = store.json(&["status"])["physical_bytes"].as_u64().unwrap();

    let table: Vec<String> =
        samples.iter().map(|s| format!("{:>4}s {:>6.1} MiB rss {:>5.1} MiB gc#{}", s.at.as_secs(), s.physical as f64 / MIB as f64, s.rss as f64 / MIB as f64, s.collections)).collect();
    let report = format!("needed {:.1} MiB, at the end {:.1} MiB\n{}", needed as f64 / MIB as f64, before_full as f64 / MIB as f64, table.join("\n"));
    eprintln!("{report}");

    // After the window has filled (and a collection has had time to run).
    let filled = Duration::from_secs(WINDOW_SECS + 45);
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.at >= filled).collect();
    assert!(steady.len() >= 10, "{report}");
    let collections = steady.last().unwrap().collections;
    assert!(collections >= 2, "the automatic GC collected ({collections} collections)\n{report}");
    let (first, second) = steady.split_at(steady.len() / 2);
    let peak = |s: &[&Sample], f: fn(&Sample) -> u64| s.iter().map(|x| f(x)).max().unwrap();
    let (p1, p2) = (peak(first, |s| s.physical), peak(second, |s| s.physical));
    assert!(p2 <= p1 + p1 / 10, "the store keeps growing once the window is full: peak {p1} then {p2}\n{report}");
    let worst = peak(&steady, |s| s.physical);
    assert!(worst <= needed * 3 / 2 + 16 * MIB, "the store stays within 1.5x of what it needs (+ one commit's slack): {worst} vs {needed}\n{report}");
    let (r1, r2) = (peak(first, |s| s.rss), peak(second, |s| s.rss));
    assert!(r2 <= r1 + r1 / 4 + 16 * MIB, "daemon memory stays flat: peak {r1} then {r2}\n{report}");

    // Main is whole: a branch of it passes the pgbench invariant, the store verifies.
    let b = store.cut_and_start("b", "main");
    assert_pgbench_invariant(&b, "a branch of main after automatic collections");
    amcheck(&b).unwrap();
    store.ok(&["verify"]);
}

fn write_synced(path: &std::path::Path, data: &[u8]) {
    std::fs::write(path, data).unwrap();
    File::open(path).unwrap().sync_all().unwrap();
}

#[test]
fn a_daemon_killed_during_gc_loses_nothing() {
    let store = TestStore::new("gc-kill");
    std::fs::create_dir_all(&store.dir).unwrap();
    std::fs::write(store.dir.join("pgbranch.toml"), "gc = \"manual\"\n").unwrap();
    store.ok(&["branch", "create", "a", "--empty"]);
    let keep = noise(96 << 20, 1);
    write_synced(&store.path("a").join("keep.bin"), &keep);
    let mut expected: Vec<(String, &str, Vec<u8>)> = vec![("a".into(), "keep.bin", keep)];
    let mut interrupted = 0;
    for round in 0..3u64 {
        // Garbage to collect: snapshots of a churned file, then deleted; and a kept
        // branch that shares part of it (its pack gets rewritten, not deleted).
        for i in 0..4u64 {
            write_synced(&store.path("a").join("churn.bin"), &noise(16 << 20, 100 * round + i));
            store.ok(&["snapshot", "create", &format!("s{round}-{i}"), "--from", "a"]);
        }
        let name = format!("k{round}");
        store.ok(&["branch", "create", &name, "--from", "a"]);
        let own = noise(4 << 20, 1000 + round);
        write_synced(&store.path(&name).join("own.bin"), &own);
        let churned = std::fs::read(store.path(&name).join("churn.bin")).unwrap();
        for i in 0..4u64 {
            store.ok(&["snapshot", "delete", &format!("s{round}-{i}")]);
        }
        let pid = store.daemon_pid().expect("the daemon runs");
        let gc = Background::spawn({
            let mut c = store.command();
            c.arg("gc");
            c
        });
        // Kill it at a different moment of each collection: marking, copying, late.
        std::thread::sleep(Duration::from_millis([100, 400, 900][round as usize]));
        store.kill_daemon();
        assert!(wait_gone(pid, Duration::from_secs(10)));
        if !gc.wait().status.success() {
            interrupted += 1;
        }
        expected.push((name.clone(), "own.bin", own));
        expected.push((name, "churn.bin", churned));
        // The restarted daemon serves every byte that was synced.
        for (branch, file, data) in &expected {
            let got = std::fs::read(store.path(branch).join(file)).unwrap();
            assert!(got == *data, "{branch}/{file} differs after a kill during gc (round {round})");
        }
        let verify = store.json(&["verify"]);
        assert_eq!(verify["damaged"].as_array().map(Vec::len), Some(0), "{verify}");
    }
    assert!(interrupted > 0, "at least one kill landed while gc was running");
    let done = store.json(&["gc"]);
    let du = store.json(&["du"]);
    let needed = du["stored_block_bytes"].as_u64().unwrap() + du["tree_node_bytes"].as_u64().unwrap();
    let after = done["bytes_after"].as_u64().unwrap();
    assert!(after <= needed + needed / 10 + (4 << 20), "a collection after the kills reclaims the garbage: {done} vs {du}");
    for (branch, file, data) in &expected {
        assert!(std::fs::read(store.path(branch).join(file)).unwrap() == *data, "{branch}/{file} after the last gc");
    }
    store.ok(&["verify"]);
}
