//! Issue #7, acceptance 3 (the short variant of the soak) and 4 (kill -9 during GC).
//!
//! A physical follower of a source running pgbench at a fixed rate, with a 45-second
//! history window and no manual `gc`: once the window has filled, the store stops
//! growing — its physical size stays within a bound of what the heads and retained
//! points need (measured at the end by a full `pgbranch gc`) — and the daemon's memory
//! stays flat. And a daemon killed with SIGKILL at several moments of a collection
//! comes back with every byte of every branch, `verify` clean, and collects again.

use std::time::{Duration, Instant};

use pgbranch_integration::*;

const MIB: u64 = 1 << 20;

/// How long the load runs, and the window: 180 s and 45 s in CI; the soak of the
/// issue (30 min, 10 min) with `PGBRANCH_SOAK_SECS=1800 PGBRANCH_SOAK_WINDOW_SECS=600`.
fn env_secs(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Sample {
    at: Duration,
    physical: u64,
    rss: u64,
    /// `index.redb`'s share of `physical`.
    index: u64,
    collections: u64,
}

/// One automatic collection, as `status` reported it: the store's size when it began
/// and the live bytes (heads, retained points) it found.
struct Collection {
    at: Duration,
    bytes_before: u64,
    bytes_after: u64,
    live: u64,
    millis: u64,
}

#[test]
fn a_following_store_with_history_stays_flat_without_manual_gc() {
    let run = Duration::from_secs(env_secs("PGBRANCH_SOAK_SECS", 180));
    let window_secs = env_secs("PGBRANCH_SOAK_WINDOW_SECS", 45);
    // Checkpoints (and the standby's restartpoints) often enough that main's pg_wal
    // recycles within the run: otherwise what main needs grows with every segment.
    let source = SourceDb::start("auto-gc", &["checkpoint_timeout = 30s", "max_wal_size = 64MB", "min_wal_size = 32MB"]);
    source.server.pgbench(&["-i", "-q", "-s", "10", "postgres"]).unwrap();
    let store = TestStore::new("auto-gc");
    std::fs::create_dir_all(&store.dir).unwrap();
    std::fs::write(store.dir.join("pgbranch.toml"), format!("history = \"{window_secs}s\"\n")).unwrap();
    store.ok(&["clone", "stream", "--source-url", &source.url()]);
    let st = store.json(&["status"]);
    assert_eq!(st["gc"]["mode"], "auto", "{st}");
    assert_eq!(st["history_secs"], window_secs, "{st}");

    let load = pgbench_background(&source.server, &["-n", "-c", "2", "-R", "200", "-T", &run.as_secs().to_string(), "postgres"]);
    let started = Instant::now();
    let mut samples = Vec::new();
    let mut collections: Vec<Collection> = Vec::new();
    while started.elapsed() < run {
        std::thread::sleep(Duration::from_secs(1));
        let st = store.json(&["status"]);
        let n = st["gc"]["collections"].as_u64().unwrap_or(0);
        if n > samples.last().map_or(0, |s: &Sample| s.collections) {
            let last = &st["gc"]["last"];
            collections.push(Collection {
                at: started.elapsed(),
                bytes_before: last["bytes_before"].as_u64().unwrap(),
                bytes_after: last["bytes_after"].as_u64().unwrap(),
                live: st["gc"]["live_bytes"].as_u64().unwrap(),
                millis: st["gc"]["last_duration_millis"].as_u64().unwrap_or(0),
            });
        }
        samples.push(Sample {
            at: started.elapsed(),
            physical: st["physical_bytes"].as_u64().unwrap(),
            rss: st["rss_bytes"].as_u64().unwrap(),
            index: st["space"]["index_bytes"].as_u64().unwrap_or(0),
            collections: n,
        });
    }
    let out = load.wait();
    assert!(out.status.success(), "pgbench: {}", String::from_utf8_lossy(&out.stderr));
    let st = store.json(&["status"]);
    let log = store.json(&["branch", "log", "main"]);
    let points = log["points"].as_array().unwrap();
    let span = points.last().unwrap()["at_unix_micros"].as_u64().unwrap() - points[0]["at_unix_micros"].as_u64().unwrap();
    assert!(span <= (window_secs + 10) * 1_000_000, "points older than the window were dropped: {span} µs of history");
    assert!(span >= (window_secs - 15) * 1_000_000, "the window filled: {span} µs of history");
    assert!(points.iter().any(|p| p["lsn"].is_string()), "main's points carry the standby's WAL position: {log}");

    // What the heads and retained points need now: a full collection (pgbranch gc).
    let at_end = st["physical_bytes"].as_u64().unwrap();
    store.ok(&["gc"]);
    let needed = store.json(&["status"])["physical_bytes"].as_u64().unwrap();

    let mib = |b: u64| b as f64 / MIB as f64;
    let mut report = format!("needed at the end {:.1} MiB, before that gc {:.1} MiB\ncollections:\n", mib(needed), mib(at_end));
    for c in &collections {
        report += &format!(
            "{:>4}s {:>6.1} -> {:>6.1} MiB, live {:>6.1} MiB, {} ms\n",
            c.at.as_secs(),
            mib(c.bytes_before),
            mib(c.bytes_after),
            mib(c.live),
            c.millis
        );
    }
    report += "samples:\n";
    for s in samples.iter().step_by(5) {
        report += &format!(
            "{:>4}s {:>6.1} MiB (index {:>5.1}) rss {:>5.1} MiB gc#{}\n",
            s.at.as_secs(),
            mib(s.physical),
            mib(s.index),
            mib(s.rss),
            s.collections
        );
    }
    eprintln!("{report}");

    // After the window has filled (and a collection has had time to run).
    let filled = Duration::from_secs(window_secs + 30);
    let steady: Vec<&Sample> = samples.iter().filter(|s| s.at >= filled).collect();
    let steady_collections: Vec<&Collection> = collections.iter().filter(|c| c.at >= filled).collect();
    assert!(steady_collections.len() >= 2, "the automatic GC kept collecting once the window was full\n{report}");
    // Each collection leaves the sealed packs at least 80 % live (the index and the
    // pack being filled are not live records: 16 MiB of slack)...
    for c in &steady_collections {
        assert!(
            c.bytes_after <= c.live * 5 / 4 + 16 * MIB,
            "at {}s a collection left {:.1} MiB for {:.1} MiB live: past 1.25x\n{report}",
            c.at.as_secs(),
            mib(c.bytes_after),
            mib(c.live)
        );
    }
    // ...and between two collections the store stays within 1.5x of what was live at
    // either end (what is needed can drop at once, when history leaves the window).
    for w in steady_collections.windows(2) {
        let need = w[0].live.max(w[1].live);
        for s in steady.iter().filter(|s| s.at > w[0].at && s.at < w[1].at) {
            assert!(
                s.physical <= need * 3 / 2 + 16 * MIB,
                "at {}s the store held {:.1} MiB with {:.1} MiB live around it: past 1.5x\n{report}",
                s.at.as_secs(),
                mib(s.physical),
                mib(need)
            );
        }
    }
    assert!(at_end <= needed * 3 / 2 + 16 * MIB, "at the end {at_end} vs {needed} needed\n{report}");
    let (first, second) = steady.split_at(steady.len() / 2);
    let peak = |s: &[&Sample], f: fn(&Sample) -> u64| s.iter().map(|x| f(x)).max().unwrap();
    let (p1, p2) = (peak(first, |s| s.physical), peak(second, |s| s.physical));
    assert!(p2 <= p1 + p1 / 4, "the store keeps growing once the window is full: peak {p1} then {p2}\n{report}");
    if run >= Duration::from_secs(1200) {
        // The long soak: at most 5 % growth over the last 10 minutes.
        let last = run - Duration::from_secs(600);
        let (before, after): (Vec<&Sample>, Vec<&Sample>) = steady.iter().partition(|s| s.at < last);
        let (b, a) = (peak(&before, |s| s.physical), peak(&after, |s| s.physical));
        assert!(a <= b + b / 20, "the store grew more than 5 % over the last 10 minutes: peak {b} then {a}\n{report}");
    }
    let (r1, r2) = (peak(first, |s| s.rss), peak(second, |s| s.rss));
    assert!(r2 <= r1 + r1 / 4 + 16 * MIB, "daemon memory stays flat: peak {r1} then {r2}\n{report}");

    // Main is whole: a branch of it passes the pgbench invariant, the store verifies.
    store.ok(&["branch", "create", "b"]);
    let b = store.branch_server("b");
    assert_pgbench_invariant(&b, "a branch of main after automatic collections");
    amcheck(&b).unwrap();
    store.ok(&["verify"]);
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
