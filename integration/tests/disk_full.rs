//! Issue 9, "Disk full", end to end: the store on its own small ext4 (a loop device),
//! postgres on branch `big` fills it with incompressible rows until writes get ENOSPC
//! (postgres errors or PANICs, as on ext4), while branch `a` runs an acknowledged-commit
//! writer and branch `r` serves reads. Below the store's margin only writes that grow a
//! file are refused (`pgbranch_fs::space`), so on the full disk `r`'s postgres, which
//! only overwrites (WAL, pg_control), never PANICs, and commits still have room. The
//! daemon stays up, logs commit failures (if any) a bounded number of times, `r` still
//! answers, and `status` (text and --json), `du` and `branch list` work, `status`
//! saying full. Then `branch delete big`
//! and `gc` free the space (the store's 32 MiB emergency reserve, given back when they
//! start on a full disk, gives them room for their own writes), `a`'s postgres works again (restarted if it had to give up),
//! every acknowledged commit is there, and `verify` and pg_amcheck are clean.

use std::time::{Duration, Instant};

use pgbranch_integration::ackwriter::{self, AckWriter};
use pgbranch_integration::loopdisk::LoopDisk;
use pgbranch_integration::*;

/// Small enough to fill quickly, big enough for three initdb'd branches.
const DISK_MIB: u64 = 384;

/// Rows of ~1 KiB of random hex per INSERT (lz4 cannot shrink them much).
const ROWS_PER_FILL: u64 = 20_000;

/// How long the test watches the store while it is full.
const FULL_PERIOD: Duration = Duration::from_secs(25);

const FILL_SQL: &str = "INSERT INTO fill SELECT g, (SELECT string_agg(md5(random()::text || g || i), '') FROM generate_series(1, 32) i) \
                        FROM generate_series(1, ROWS) g";

fn commit_failure_lines(store: &TestStore) -> usize {
    let log = std::fs::read_to_string(store.dir.join("daemon.log")).unwrap_or_default();
    log.lines().filter(|l| l.contains("background commit of") && l.contains("failed")).count()
}

/// Waits until `f` is true, or panics saying `what` after `timeout`.
fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_full_store_disk_keeps_the_daemon_up_and_loses_nothing() {
    let disk = LoopDisk::create("full", DISK_MIB);
    let store = TestStore::at(&disk.mountpoint.join("store"));
    let mut a = store.new_cluster("a");
    a.psql("postgres", ackwriter::CREATE_ACKS).unwrap();
    // What `r` serves: written, frozen and checkpointed on `a` first, so reading it on
    // `r` sets no hint bits and writes no WAL.
    a.psql("postgres", "CREATE TABLE facts AS SELECT g AS id, md5(g::text) AS v FROM generate_series(1, 10000) g").unwrap();
    a.psql("postgres", "VACUUM (FREEZE) facts").unwrap();
    a.psql("postgres", "CHECKPOINT").unwrap();
    let facts_sum = a.psql("postgres", "SELECT sum(id), md5(string_agg(v, ',' ORDER BY id)) FROM facts").unwrap();
    let r = store.cut_and_start("r", "a");
    // A first connection writes the relcache init file; later ones only read it.
    assert_eq!(r.psql("postgres", "SELECT sum(id), md5(string_agg(v, ',' ORDER BY id)) FROM facts").unwrap(), facts_sum);
    let mut big = store.cut_and_start("big", "a");
    big.psql("postgres", "CREATE TABLE fill (id int, pad text)").unwrap();
    let daemon = store.daemon_pid().expect("the daemon runs");
    let writer = AckWriter::start(&a, 1);

    // Fill the disk through postgres on `big` until a write gets ENOSPC.
    let started = Instant::now();
    let sql = FILL_SQL.replace("ROWS", &ROWS_PER_FILL.to_string());
    let mut fills = 0;
    let fill_error = loop {
        match big.psql("postgres", &sql) {
            Ok(_) => fills += 1,
            Err(e) => break format!("{e:#}"),
        }
        assert!(fills < 100, "{fills} fills of {ROWS_PER_FILL} rows did not fill a {DISK_MIB} MiB disk");
    };
    eprintln!(
        "disk full after {fills} fills ({:.0?}): postgres said: {}",
        started.elapsed(),
        fill_error.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
    );
    assert!(
        fill_error.contains("No space left on device") || fill_error.contains("server closed the connection"),
        "the fill failed for another reason than a full disk: {fill_error}"
    );
    let failures_at_full = commit_failure_lines(&store);

    // The full period: everything a user checks keeps working.
    let full_since = Instant::now();
    let mut checks = 0;
    while full_since.elapsed() < FULL_PERIOD || checks < 3 {
        assert_eq!(store.daemon_pid(), Some(daemon), "the daemon stays up on a full disk");
        let status = store.json(&["status"]);
        assert_eq!(status["space"]["full"], true, "status --json says the store is full: {}", status["space"]);
        assert_eq!(
            status["space"]["reserve_bytes"],
            32 << 20,
            "the emergency reserve is held until delete or gc needs it: {}",
            status["space"]
        );
        let text = store.ok(&["status"]);
        assert!(text.contains("FULL"), "status says the store is full:\n{text}");
        let du = store.json(&["du"]);
        assert!(du["branches"].as_array().is_some_and(|b| b.len() == 3), "du lists the branches: {du}");
        store.ok(&["du"]);
        let list = store.json(&["branch", "list"]);
        assert_eq!(list.as_array().map(|l| l.len()), Some(3), "branch list: {list}");
        assert_eq!(r.psql("postgres", "SELECT sum(id), md5(string_agg(v, ',' ORDER BY id)) FROM facts").unwrap(), facts_sum, "r reads");
        checks += 1;
        std::thread::sleep(Duration::from_secs(2));
    }
    let failures = commit_failure_lines(&store);
    eprintln!(
        "full for {:.0?}: {checks} rounds of status/du/branch list/reads on r; daemon.log has {failures} commit-failure lines ({failures_at_full} when the disk filled); status: {}",
        full_since.elapsed(),
        store.json(&["status"])["space"]
    );
    assert!(failures < 20, "daemon.log holds {failures} commit-failure lines: one per failing branch, not one per retry");
    let r_log = store.dir.join("run").join("r").join("postgres.log");
    let r_said = std::fs::read_to_string(&r_log).unwrap_or_else(|e| panic!("reading r's server log {}: {e}", r_log.display()));
    let panics: Vec<&str> = r_said.lines().filter(|l| l.contains("PANIC")).collect();
    assert!(panics.is_empty(), "r's postgres, which only overwrites, PANICked on the full disk: {panics:?}");

    // Free the space: stop big's postgres, delete the branch, gc.
    let acked = writer.acked();
    drop(writer);
    big.stop().unwrap();
    store.ok(&["branch", "delete", "big"]);
    let gc = store.ok(&["gc"]);
    eprintln!("gc: {}", gc.trim());
    let space = store.json(&["status"])["space"].clone();
    assert_eq!(space["full"], false, "gc freed the space: {space}");
    assert!(disk.available_bytes() > 128 << 20, "gc freed the space: {} bytes free", disk.available_bytes());
    assert_eq!(space["reserve_bytes"], 32 << 20, "gc took the emergency reserve again: {space}");

    // a's postgres works again: still up (it recovered from a PANIC itself), or started.
    let a_works =
        |s: &pgbranch_integration::Server| s.psql("postgres", "INSERT INTO acks VALUES (0); DELETE FROM acks WHERE id = 0").is_ok();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !a_works(&a) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    if !a_works(&a) {
        eprintln!("a's postgres gave up on the full disk; starting it again");
        a.stop().unwrap();
        a = store.start("a");
        wait_for("a's postgres to accept writes", Duration::from_secs(120), || a_works(&a));
    }
    let lost = ackwriter::lost_ids(&a, &acked);
    eprintln!("{} commits acknowledged on a before and during the full disk; lost: {}", acked.len(), lost.len());
    assert!(!acked.is_empty(), "the ack writer got commits acknowledged");
    assert!(lost.is_empty(), "{} acknowledged commits lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
    store.ok(&["verify"]); // fails on any damaged object
    amcheck(&a).expect("pg_amcheck clean on a");
    assert_eq!(r.psql("postgres", "SELECT sum(id), md5(string_agg(v, ',' ORDER BY id)) FROM facts").unwrap(), facts_sum);
}
