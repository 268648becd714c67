//! Acceptance 8: bad input gets a clear message and a non-zero exit and changes
//! nothing; a daemon that died leaves nothing a user has to clean up by hand.

use std::fs::File;
use std::io::Write;
use std::process::Command;
use std::time::Duration;

use pgbranch_integration::*;

fn names(store: &TestStore) -> Vec<String> {
    store.json(&["branch", "list"]).as_array().unwrap().iter().map(|b| b["name"].as_str().unwrap().to_string()).collect()
}

#[test]
fn unknown_branch() {
    let store = TestStore::new("err-unknown");
    store.ok(&["branch", "create", "a", "--empty"]);
    for args in [
        vec!["branch", "path", "nope"],
        vec!["branch", "delete", "nope"],
        vec!["branch", "create", "x", "--from", "nope"],
        vec!["snapshot", "create", "s", "--from", "nope"],
        vec!["snapshot", "delete", "nope"],
    ] {
        let err = store.fail(&args);
        assert!(err.contains("no branch or snapshot named 'nope'"), "{args:?}: {err}");
    }
    assert_eq!(names(&store), ["a"]);
}

#[test]
fn duplicate_and_invalid_names() {
    let store = TestStore::new("err-names");
    store.ok(&["branch", "create", "a", "--empty"]);
    std::fs::write(store.path("a").join("keep"), b"data").unwrap();
    assert!(store.fail(&["branch", "create", "a", "--empty"]).contains("'a' already exists"));
    assert!(store.fail(&["snapshot", "create", "a", "--from", "a"]).contains("'a' already exists"));
    let long = "x".repeat(64);
    for bad in ["", "../x", "a/b", ".hidden", "spa ce", long.as_str()] {
        let err = store.fail(&["branch", "create", bad, "--empty"]);
        assert!(err.contains("invalid name"), "{bad:?}: {err}");
    }
    assert!(store.fail(&["branch", "create", "b"]).contains("no branch 'main' to branch from"));
    assert_eq!(names(&store), ["a"]);
    assert_eq!(std::fs::read(store.path("a").join("keep")).unwrap(), b"data");
}

#[test]
fn deleting_a_branch_in_use_is_refused() {
    let store = TestStore::new("err-busy");
    store.ok(&["branch", "create", "a", "--empty"]);
    let dir = store.path("a");
    std::fs::write(dir.join("precious"), b"still here").unwrap();

    // A shell-like process whose working directory is inside the branch.
    let mut sleeper = Command::new("sleep").arg("60").current_dir(&dir).spawn().unwrap();
    let err = store.fail(&["branch", "delete", "a"]);
    assert!(err.contains("branch a is in use"), "{err}");
    sleeper.kill().unwrap();
    sleeper.wait().unwrap();

    // An open file.
    let open = File::open(dir.join("precious")).unwrap();
    assert!(store.fail(&["branch", "delete", "a"]).contains("in use"));
    assert_eq!(std::fs::read(store.path("a").join("precious")).unwrap(), b"still here");
    drop(open);

    store.ok(&["branch", "delete", "a"]);
    assert!(names(&store).is_empty());
}

#[test]
fn branch_and_snapshot_verbs_do_not_mix() {
    let store = TestStore::new("err-kinds");
    store.ok(&["branch", "create", "a", "--empty"]);
    store.ok(&["snapshot", "create", "s", "--from", "a"]);
    assert!(store.fail(&["branch", "delete", "s"]).contains("'s' is a snapshot"));
    assert!(store.fail(&["snapshot", "delete", "a"]).contains("'a' is a branch"));
    let err = std::fs::write(store.path("s").join("f"), b"x").expect_err("snapshots are read-only");
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    assert_eq!(names(&store), ["a", "s"]);
}

#[test]
fn unwritable_store() {
    let out = Command::new(pgbranch_bin()).args(["--store", "/etc/hostname/store", "branch", "list"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("/etc/hostname/store") && err.contains("--store"), "{err}");

    // A store directory its user cannot write (root bypasses modes, so run as nobody).
    let root_owned = std::env::temp_dir().join(format!("pgbranch-ro-{}", std::process::id()));
    std::fs::create_dir_all(&root_owned).unwrap();
    let store_dir = root_owned.join("store");
    let out = Command::new("runuser")
        .args(["-u", "nobody", "--"])
        .arg(pgbranch_bin())
        .arg("--store")
        .arg(&store_dir)
        .args(["branch", "list"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    std::fs::remove_dir_all(&root_owned).ok();
    assert!(!out.status.success());
    assert!(err.contains("cannot create store directory") && err.contains("Permission denied"), "{err}");
    assert!(!store_dir.exists(), "nothing was created");
}

#[test]
fn dead_daemon_leaves_nothing_to_clean_by_hand() {
    let store = TestStore::new("err-stale");
    store.ok(&["branch", "create", "a", "--empty"]);
    store.ok(&["snapshot", "create", "s", "--from", "a"]);
    let file = store.path("a").join("synced");
    let mut f = File::create(&file).unwrap();
    f.write_all(b"fsynced before the crash").unwrap();
    f.sync_all().unwrap();
    drop(f);

    store.kill_daemon();
    assert!(store.dir.join("daemon.sock").exists(), "the dead daemon's socket is left behind");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let mount_point = store.dir.join("mnt/a").to_string_lossy().to_string();
    assert!(mounts.contains(&mount_point), "the dead daemon's mount is left behind");
    assert!(std::fs::read(&file).is_err(), "a dead mount cannot be read");

    // The next command recovers: stale socket replaced, stale mounts detached, remounted.
    assert_eq!(names(&store), ["a", "s"]);
    assert_eq!(std::fs::read(&file).unwrap(), b"fsynced before the crash");
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    assert_eq!(mounts.lines().filter(|l| l.split(' ').nth(1) == Some(mount_point.as_str())).count(), 1);
}

#[test]
fn second_daemon_is_refused() {
    let store = TestStore::new("err-twice");
    store.ok(&["status"]);
    let pid = store.daemon_pid().unwrap();
    let mut second = store.command().arg("daemon").stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut waited = 0;
    let status = loop {
        if let Some(s) = second.try_wait().unwrap() {
            break s;
        }
        assert!(waited < 100, "a second daemon kept running");
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut second.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success());
    assert!(err.contains("already serving") && err.contains(&pid.to_string()), "{err}");
    assert_eq!(store.daemon_pid(), Some(pid), "the first daemon is untouched");
}

#[test]
fn a_closed_stdout_ends_a_verb_quietly() {
    let store = TestStore::new("err-pipe");
    store.ok(&["branch", "create", "a", "--empty"]);
    for verb in [&["branch", "list", "--json"][..], &["status"], &["du"]] {
        // The reader is gone before the verb writes (as after `| head -1` read its line).
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        let out = store.command().args(verb).stdout(writer).stderr(std::process::Stdio::piped()).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.is_empty(), "pgbranch {verb:?} into a closed pipe said: {err}");
        use std::os::unix::process::ExitStatusExt;
        assert!(out.status.success() || out.status.signal() == Some(libc::SIGPIPE), "{verb:?}: {:?}", out.status);
    }
}
