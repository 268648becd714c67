//! Issue 9, two daemons on one store: the store's lock lets exactly one daemon serve
//! it. A second one is refused with a clear message while the first keeps serving; a
//! lock, socket and pid file left by a daemon that died (kill -9) block nothing; verbs
//! started at once on a store with no daemon all succeed, with exactly one daemon
//! running afterwards.

use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use pgbranch_integration::*;

/// Live `pgbranch daemon` processes whose command line names `store`.
fn daemons_of(store: &Path) -> Vec<i32> {
    let want = store.to_string_lossy().to_string();
    let names_store = |args: &[String]| args.windows(2).any(|w| w[0] == "--store" && w[1].trim_end_matches('/') == want);
    let is_daemon = |args: &[String]| args.iter().any(|a| a == "daemon");
    processes().into_iter().filter(|(pid, args)| names_store(args) && is_daemon(args) && pid_alive(*pid)).map(|(pid, _)| pid).collect()
}

fn lock_pid(store: &TestStore) -> Option<i32> {
    std::fs::read_to_string(store.dir.join("daemon.lock")).ok()?.trim().parse().ok()
}

/// Runs `pgbranch daemon` on `store_arg` in the foreground and waits for it to give up.
fn second_daemon(store_arg: &Path) -> (std::process::ExitStatus, String) {
    let mut second = Command::new(pgbranch_bin())
        .arg("--store")
        .arg(store_arg)
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawning a second daemon");
    let t = Instant::now();
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        if t.elapsed() > Duration::from_secs(60) {
            kill_tree(second.id() as i32);
            let _ = second.wait();
            panic!("a second daemon on {} kept running", store_arg.display());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    (status, err)
}

/// Waits until no daemon serves `store` (after `pgbranch stop`).
fn wait_no_daemon(store: &TestStore) {
    let t = Instant::now();
    while !daemons_of(&store.dir).is_empty() {
        assert!(t.elapsed() < Duration::from_secs(60), "the daemon did not exit after `pgbranch stop`");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_second_daemon_is_refused_and_the_first_keeps_serving() {
    let store = TestStore::new("two-refused");
    store.ok(&["branch", "create", "a", "--empty"]);
    let a = store.path("a");
    write_synced(&a.join("before"), b"written before the second daemon");
    let first = store.daemon_pid().expect("a daemon serves the store");

    // The same store, spelled directly and through a symlink: one lock, so refused.
    let link = store.dir.with_extension("link");
    let _ = std::fs::remove_file(&link);
    std::os::unix::fs::symlink(&store.dir, &link).unwrap();
    for spelling in [store.dir.clone(), link.clone()] {
        let (status, err) = second_daemon(&spelling);
        assert!(!status.success(), "a second daemon on {} did not fail", spelling.display());
        assert!(
            err.contains("already serving") && err.contains(&first.to_string()),
            "the refusal names the daemon that serves the store: {err}"
        );
    }
    std::fs::remove_file(&link).unwrap();

    // The first daemon is untouched: same pid in the lock file, its socket answers,
    // its branches still read and write, and new verbs work.
    assert_eq!(store.daemon_pid(), Some(first));
    assert_eq!(daemons_of(&store.dir), vec![first], "exactly the first daemon runs");
    assert!(UnixStream::connect(store.dir.join("daemon.sock")).is_ok(), "the first daemon's socket answers");
    assert_eq!(std::fs::read(a.join("before")).unwrap(), b"written before the second daemon");
    write_synced(&a.join("after"), b"written after the refusal");
    assert_eq!(std::fs::read(a.join("after")).unwrap(), b"written after the refusal");
    store.ok(&["snapshot", "create", "s", "--from", "a"]);
    assert_eq!(std::fs::read(store.path("s").join("after")).unwrap(), b"written after the refusal");
    store.ok(&["branch", "create", "b", "--from", "a"]);
    assert_eq!(std::fs::read(store.path("b").join("before")).unwrap(), b"written before the second daemon");
    assert_eq!(store.daemon_pid(), Some(first), "all of it served by the first daemon");

    // After a clean stop the lock is free: a daemon starts and everything is there.
    store.ok(&["stop"]);
    wait_no_daemon(&store);
    assert_eq!(std::fs::read(store.path("a").join("after")).unwrap(), b"written after the refusal");
    assert_ne!(store.daemon_pid(), Some(first));
}

#[test]
fn a_lock_left_by_a_killed_daemon_blocks_nothing() {
    let store = TestStore::new("two-stale");
    store.ok(&["branch", "create", "a", "--empty"]);
    write_synced(&store.path("a").join("synced"), b"fsynced before the kill");
    let dead = store.daemon_pid().expect("a daemon serves the store");
    store.kill_daemon();

    // What the dead daemon left: its lock file naming it, its socket file.
    assert_eq!(lock_pid(&store), Some(dead), "the lock file still names the dead daemon");
    let sock = store.dir.join("daemon.sock");
    assert!(sock.exists(), "the dead daemon's socket file is left behind");
    assert!(UnixStream::connect(&sock).is_err(), "nothing answers on the dead daemon's socket");

    // The next verb starts a daemon, which takes over; nothing is lost.
    let list = store.json(&["branch", "list"]);
    assert_eq!(list.as_array().map(|a| a.len()), Some(1), "{list}");
    let new = store.daemon_pid().expect("the verb started a daemon");
    assert_ne!(new, dead);
    assert_eq!(lock_pid(&store), Some(new), "the lock file names the new daemon");
    assert_eq!(daemons_of(&store.dir), vec![new], "exactly one daemon runs");
    assert!(UnixStream::connect(&sock).is_ok(), "the socket answers again");
    assert_eq!(std::fs::read(store.path("a").join("synced")).unwrap(), b"fsynced before the kill");
    write_synced(&store.path("a").join("later"), b"written under the new daemon");

    // A second daemon is refused by the new one too.
    let (status, err) = second_daemon(&store.dir);
    assert!(!status.success() && err.contains("already serving") && err.contains(&new.to_string()), "{err}");
    assert_eq!(std::fs::read(store.path("a").join("later")).unwrap(), b"written under the new daemon");
}

#[test]
fn stale_socket_and_pid_file_are_cleaned_up() {
    let store = TestStore::new("two-files");
    store.ok(&["branch", "create", "a", "--empty"]);
    write_synced(&store.path("a").join("f"), b"kept");
    store.ok(&["stop"]);
    wait_no_daemon(&store);
    let sock = store.dir.join("daemon.sock");
    assert!(!sock.exists(), "a clean stop removes the socket");

    // A pid file naming a live process that is not a daemon (pid reuse: init), and a
    // socket file nobody listens on, as a crash could leave them.
    std::fs::write(store.dir.join("daemon.lock"), "1\n").unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(sock.exists() && UnixStream::connect(&sock).is_err());

    let status = store.ok(&["status"]);
    let pid = lock_pid(&store).expect("the lock file names a pid");
    assert_ne!(pid, 1, "the stale pid was replaced");
    assert_eq!(daemons_of(&store.dir), vec![pid], "the daemon named by the lock file is the one running");
    assert!(status.contains(&pid.to_string()), "status names the running daemon {pid}: {status}");
    assert!(UnixStream::connect(&sock).is_ok(), "the stale socket was replaced by a live one");
    assert_eq!(std::fs::read(store.path("a").join("f")).unwrap(), b"kept");
}

/// Rounds of `VERBS` verbs started at once on `store` with no daemon (stopped cleanly
/// or killed, alternately); after each, exactly one daemon runs and it is the one the
/// lock file names. Returns the verbs that failed.
fn autostart_race(store: &TestStore, rounds: usize) -> Vec<String> {
    const VERBS: usize = 4;
    let mut failures = Vec::new();
    for round in 1..=rounds {
        if round % 2 == 0 {
            store.kill_daemon(); // a dead daemon's lock and socket this time
        } else {
            store.ok(&["stop"]);
        }
        wait_no_daemon(store);
        let verbs: [&[&str]; VERBS] = [&["branch", "list", "--json"], &["status"], &["du"], &["branch", "path", "a"]];
        let children: Vec<_> = verbs
            .iter()
            .map(|args| store.command().args(*args).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawning a verb"))
            .collect();
        for (args, child) in verbs.iter().zip(children) {
            let out = child.wait_with_output().unwrap();
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr);
                failures.push(format!("round {round}: pgbranch {args:?} failed: {}", err.lines().take(2).collect::<Vec<_>>().join(" / ")));
            }
        }
        // Losers of the race exit; wait for exactly one daemon to remain.
        let t = Instant::now();
        let mut running = daemons_of(&store.dir);
        while running.len() > 1 && t.elapsed() < Duration::from_secs(60) {
            std::thread::sleep(Duration::from_millis(50));
            running = daemons_of(&store.dir);
        }
        if running.is_empty() {
            // Every verb failed: the next one must still start a daemon.
            store.ok(&["status"]);
            running = daemons_of(&store.dir);
        }
        assert_eq!(running.len(), 1, "round {round}: daemons running on the store: {running:?}");
        assert_eq!(lock_pid(store), Some(running[0]), "round {round}: the lock file names the daemon that runs");
        assert_eq!(std::fs::read(store.path("a").join("f")).unwrap(), b"kept");
    }
    failures
}

/// Each verb that loses the auto-start race (its daemon finds the lock taken) waits for
/// the winner instead of failing; `autostart_race` checks one daemon after each round.
#[test]
fn verbs_started_at_once_all_succeed_with_one_daemon() {
    let store = TestStore::new("two-race");
    store.ok(&["branch", "create", "a", "--empty"]);
    write_synced(&store.path("a").join("f"), b"kept");
    let failures = autostart_race(&store, 6);
    assert!(failures.is_empty(), "verbs started at once on a store with no daemon failed:\n{}", failures.join("\n"));
}
