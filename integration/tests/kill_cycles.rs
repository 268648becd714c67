//! Issue 9, kill -9: the daemon is killed at random moments, over and over, while
//! postgres commits on branch `w` (every acknowledged id recorded in this process), a
//! driver runs daemon verbs in a loop (`snapshot create/delete`, `branch create x --from
//! w` with and without its server, `branch reset x`, `branch delete x`, `gc`, `du`) and
//! files are written and fsynced on a plain branch `f`. Some cycles aim the kill at a
//! verb: it is started, and the daemon dies 0–50 ms later. After each kill (and of every
//! postgres on the store, by pid) the next verb restarts the daemon and the test checks
//! what a user would: every acknowledged row and file is there with its bytes; every
//! branch and snapshot that existed is still there (a reset one is the old or the new
//! one, never missing), `branch list` parses and each listed entry mounts and reads;
//! `pgbranch verify` is clean every few cycles and at the end; pg_amcheck at the end.
//!
//! `PGBRANCH_KILL_CYCLES` (default 50) and `PGBRANCH_KILL_SEED` (default: from the
//! clock, printed) reproduce or lengthen a run.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgbranch_integration::ackwriter::{self, AckWriter};
use pgbranch_integration::seeded::{env_u64, Rng};
use pgbranch_integration::*;

const VERIFY_EVERY: u64 = 10;
const MAX_SNAPSHOTS: usize = 3;
const MARKER: &str = "pgbranch-marker";

/// What the marker file of branch `x` holds, as far as the test knows.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Marker {
    Absent,
    Gen(u64),
    /// A reset was cut by the crash: the old branch (with this marker) or the new one.
    GenOrAbsent(u64),
    /// A marker write was cut by the crash.
    Unknown,
}

/// What the store holds, as the verbs that returned OK left it. `None` = a verb on it
/// was cut by the crash, so either outcome is allowed (but nothing else).
struct Model {
    x: Option<bool>,
    /// A reset of x was cut by the crash: x must still be there.
    x_reset_cut: bool,
    marker: Marker,
    snapshots: BTreeSet<String>,
    snapshots_cut: BTreeSet<String>,
    /// Acknowledged files on branch f: name, noise seed, length.
    files: Vec<(String, u64, usize)>,
    next: u64,
    ops: BTreeMap<&'static str, u64>,
    cut: BTreeMap<&'static str, u64>,
    /// Verbs that failed with no crash in sight (reported at the end).
    unexpected: Vec<String>,
}

#[derive(Clone, Debug)]
enum Op {
    Du,
    Gc,
    SnapshotCreate(String),
    SnapshotDelete(String),
    CreateX { start: bool },
    ResetX,
    DeleteX,
    MarkX(u64),
    WriteFile(String, u64, usize),
}

impl Op {
    fn name(&self) -> &'static str {
        match self {
            Op::Du => "du",
            Op::Gc => "gc",
            Op::SnapshotCreate(_) => "snapshot create",
            Op::SnapshotDelete(_) => "snapshot delete",
            Op::CreateX { start: true } => "branch create (server)",
            Op::CreateX { start: false } => "branch create",
            Op::ResetX => "branch reset",
            Op::DeleteX => "branch delete",
            Op::MarkX(_) => "marker write",
            Op::WriteFile(..) => "file write",
        }
    }

    /// The pgbranch verb, for the ops that are one.
    fn args(&self) -> Option<Vec<String>> {
        let v = |a: &[&str]| Some(a.iter().map(|s| s.to_string()).collect());
        match self {
            Op::Du => v(&["du"]),
            Op::Gc => v(&["gc"]),
            Op::SnapshotCreate(s) => v(&["snapshot", "create", s, "--from", "w"]),
            Op::SnapshotDelete(s) => v(&["snapshot", "delete", s]),
            Op::CreateX { start: true } => v(&["branch", "create", "x", "--from", "w"]),
            Op::CreateX { start: false } => v(&["branch", "create", "x", "--from", "w", "--no-start"]),
            Op::ResetX => v(&["branch", "reset", "x"]),
            Op::DeleteX => v(&["branch", "delete", "x"]),
            Op::MarkX(_) | Op::WriteFile(..) => None,
        }
    }
}

impl Model {
    fn pick(&mut self, rng: &mut Rng) -> Op {
        self.next += 1;
        let n = self.next;
        loop {
            let op = match rng.below(12) {
                0 => Op::Du,
                1 | 2 => Op::Gc,
                3 if self.snapshots.len() + self.snapshots_cut.len() < MAX_SNAPSHOTS => Op::SnapshotCreate(format!("s{n}")),
                3 | 4 => match self.snapshots.iter().next() {
                    Some(s) => Op::SnapshotDelete(s.clone()),
                    None => continue,
                },
                5 | 6 => match self.x {
                    Some(false) => Op::CreateX { start: rng.below(2) == 0 },
                    Some(true) => Op::ResetX,
                    None => continue,
                },
                7 => match self.x {
                    Some(true) => Op::DeleteX,
                    _ => continue,
                },
                8 => match self.x {
                    Some(true) => Op::MarkX(n),
                    _ => continue,
                },
                _ => Op::WriteFile(format!("file-{n}"), n, 1 + rng.below(64 << 10) as usize),
            };
            return op;
        }
    }

    /// Records an op's outcome; `crashed` = the daemon was killed while it ran.
    fn apply(&mut self, op: &Op, ok: bool, crashed: bool, detail: &str) {
        *self.ops.entry(op.name()).or_default() += 1;
        if !ok && !crashed {
            self.unexpected.push(format!("{} failed with no crash: {detail}", op.name()));
        }
        if !ok {
            *self.cut.entry(op.name()).or_default() += 1;
        }
        match (op, ok) {
            (Op::Du | Op::Gc, _) => {}
            (Op::SnapshotCreate(s), true) => {
                self.snapshots.insert(s.clone());
            }
            (Op::SnapshotDelete(s), true) => {
                self.snapshots.remove(s);
            }
            (Op::SnapshotCreate(s) | Op::SnapshotDelete(s), false) => {
                self.snapshots.remove(s);
                self.snapshots_cut.insert(s.clone());
            }
            (Op::CreateX { .. }, true) => {
                self.x = Some(true);
                self.marker = Marker::Absent;
            }
            (Op::DeleteX, true) => self.x = Some(false),
            (Op::CreateX { .. } | Op::DeleteX, false) => {
                self.x = None;
                if matches!(op, Op::CreateX { .. }) {
                    self.marker = Marker::Absent;
                }
            }
            (Op::ResetX, true) => self.marker = Marker::Absent,
            (Op::ResetX, false) => {
                self.x_reset_cut = true;
                if let Marker::Gen(g) = self.marker {
                    self.marker = Marker::GenOrAbsent(g);
                }
            }
            (Op::MarkX(g), true) => self.marker = Marker::Gen(*g),
            (Op::MarkX(_), false) => self.marker = Marker::Unknown,
            (Op::WriteFile(name, seed, len), true) => self.files.push((name.clone(), *seed, *len)),
            (Op::WriteFile(..), false) => {}
        }
    }
}

fn marker_bytes(g: u64) -> Vec<u8> {
    format!("marker generation {g}\n").into_bytes()
}

fn write_synced(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Everything the verbs and the kill share.
struct World {
    store: TestStore,
    mnt: PathBuf,
    model: Mutex<Model>,
    /// Held while a verb is being spawned and while the daemon is being killed.
    gate: Mutex<()>,
    stop: AtomicBool,
    crashed: AtomicBool,
}

impl World {
    /// Runs one op to the end and records it. A verb runs as its own process.
    fn run(&self, op: &Op, spawned: Option<Child>) {
        let (ok, detail) = match (op, op.args(), spawned) {
            (_, Some(_), Some(child)) => output_result(child.wait_with_output()),
            (_, Some(args), None) => {
                let child = {
                    let _g = self.gate.lock().unwrap();
                    if self.stop.load(Ordering::SeqCst) {
                        return;
                    }
                    self.store.command().args(&args).stdout(std::process::Stdio::piped()).stderr(std::process::Stdio::piped()).spawn()
                };
                output_result(child.and_then(|c| c.wait_with_output()))
            }
            (Op::MarkX(g), None, _) => io_result(write_synced(&self.mnt.join("x").join(MARKER), &marker_bytes(*g))),
            (Op::WriteFile(name, seed, len), None, _) => io_result(write_synced(&self.mnt.join("f").join(name), &noise(*len, *seed))),
            _ => unreachable!("every op is a verb or a file write"),
        };
        let crashed = self.crashed.load(Ordering::SeqCst);
        self.model.lock().unwrap().apply(op, ok, crashed, &detail);
    }

    /// kill -9 the daemon and every postgres serving from the store, by pid; returns
    /// the pids to wait for.
    fn crash(&self) -> Vec<i32> {
        let _g = self.gate.lock().unwrap();
        self.stop.store(true, Ordering::SeqCst);
        self.crashed.store(true, Ordering::SeqCst);
        let mut pids = postmasters_of(&self.store.dir);
        if let Some(pid) = self.store.daemon_pid() {
            kill_tree(pid);
            pids.push(pid);
        }
        for &pid in &pids {
            kill_tree(pid);
        }
        pids
    }
}

fn output_result(out: std::io::Result<Output>) -> (bool, String) {
    match out {
        Ok(o) => (o.status.success(), String::from_utf8_lossy(&o.stderr).trim().to_string()),
        Err(e) => (false, e.to_string()),
    }
}

fn io_result(r: std::io::Result<()>) -> (bool, String) {
    match r {
        Ok(()) => (true, String::new()),
        Err(e) => (false, e.to_string()),
    }
}

/// Postmasters whose data directory lies in `store` (the test's and the daemon's).
fn postmasters_of(store: &Path) -> Vec<i32> {
    let prefix = store.to_string_lossy().to_string();
    let is_postgres = |args: &[String]| args.first().is_some_and(|a| a.ends_with("/postgres"));
    let in_store = |args: &[String]| args.windows(2).any(|w| w[0] == "-D" && w[1].starts_with(&prefix));
    processes().into_iter().filter(|(_, args)| is_postgres(args) && in_store(args)).map(|(pid, _)| pid).collect()
}

fn wait_all_gone(pids: &[i32]) {
    for &pid in pids {
        // Reaped, not only dead: postgres takes a zombie postmaster for a live one.
        assert!(wait_gone(pid, Duration::from_secs(60)), "process {pid} survived SIGKILL");
    }
}

/// The store after a restart: everything acknowledged is there, every entry reads.
fn check(world: &World, cycle: u64) -> (usize, usize) {
    let store = &world.store;
    let list = store.json(&["branch", "list"]);
    let entries = list.as_array().unwrap_or_else(|| panic!("cycle {cycle}: branch list is not an array: {list}"));
    let listed: BTreeMap<String, String> =
        entries.iter().map(|b| (b["name"].as_str().unwrap().to_string(), b["kind"].as_str().unwrap().to_string())).collect();
    let mut m = world.model.lock().unwrap();
    for name in ["w", "f"] {
        assert!(listed.contains_key(name), "cycle {cycle}: branch {name} is missing after the crash: {listed:?}");
    }
    // Every listed entry mounts and reads.
    for (name, kind) in &listed {
        let path = store.path(name);
        std::fs::read_dir(&path).unwrap_or_else(|e| panic!("cycle {cycle}: {kind} {name} does not read at {}: {e}", path.display()));
        if name != "f" {
            let v = std::fs::read_to_string(path.join("PG_VERSION"))
                .unwrap_or_else(|e| panic!("cycle {cycle}: {kind} {name} has no readable PG_VERSION (half-made?): {e}"));
            assert!(!v.trim().is_empty(), "cycle {cycle}: {name}: empty PG_VERSION");
        }
    }
    // x: there exactly when the model says so; a cut reset leaves the old or the new one.
    let has_x = listed.contains_key("x");
    if let Some(want) = m.x {
        assert_eq!(has_x, want, "cycle {cycle}: branch x {} after the crash", if want { "is missing" } else { "came back" });
    }
    if m.x_reset_cut {
        assert!(has_x, "cycle {cycle}: a `branch reset x` cut by the crash lost the branch");
    }
    if has_x {
        let marker = std::fs::read(store.path("x").join(MARKER)).ok();
        let ok = match (m.marker, &marker) {
            (Marker::Unknown, _) => true,
            (Marker::Absent, None) => true,
            (Marker::Gen(g) | Marker::GenOrAbsent(g), Some(b)) => *b == marker_bytes(g),
            (Marker::GenOrAbsent(_), None) => true,
            _ => false,
        };
        assert!(ok, "cycle {cycle}: branch x is neither the old nor the new one: marker {:?}, expected {:?}", marker, m.marker);
        m.marker = match marker {
            None => Marker::Absent,
            Some(b) => match (1..=m.next).rev().find(|g| marker_bytes(*g) == b) {
                Some(g) => Marker::Gen(g),
                None => {
                    // A marker write the crash cut: unacknowledged, so anything goes; start over.
                    std::fs::remove_file(store.path("x").join(MARKER)).expect("removing a torn marker");
                    Marker::Absent
                }
            },
        };
    }
    m.x = Some(has_x);
    m.x_reset_cut = false;
    // Snapshots: every acknowledged one is there; no others but those a crash cut.
    let snaps: BTreeSet<String> = listed.iter().filter(|(_, k)| k.as_str() == "snapshot").map(|(n, _)| n.clone()).collect();
    for s in &m.snapshots {
        assert!(snaps.contains(s), "cycle {cycle}: snapshot {s} is missing after the crash");
    }
    for s in &snaps {
        assert!(m.snapshots.contains(s) || m.snapshots_cut.contains(s), "cycle {cycle}: snapshot {s} appeared from nowhere");
    }
    m.snapshots = snaps;
    m.snapshots_cut.clear();
    // Every acknowledged file, byte for byte.
    let f = store.path("f");
    for (name, seed, len) in &m.files {
        let got = std::fs::read(f.join(name)).unwrap_or_else(|e| panic!("cycle {cycle}: acknowledged file {name} lost: {e}"));
        assert!(got == noise(*len, *seed), "cycle {cycle}: acknowledged file {name} has other bytes ({} of {len})", got.len());
    }
    (m.files.len(), listed.len())
}

/// Waits (generously) for servers the restarted daemon brings back, so verbs on x do
/// not race its start; not an assertion.
fn settle_servers(store: &TestStore) {
    let t = std::time::Instant::now();
    while t.elapsed() < Duration::from_secs(90) {
        let list = store.json(&["branch", "list"]);
        let pending = list.as_array().into_iter().flatten().any(|b| b["name"] != "w" && b["port"].is_u64() && b["running"] != true);
        if !pending {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn acknowledged_work_survives_kill_9_at_random_moments() {
    let cycles = env_u64("PGBRANCH_KILL_CYCLES", 50);
    let seed = env_u64("PGBRANCH_KILL_SEED", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs());
    println!("kill cycles: seed {seed} (PGBRANCH_KILL_SEED={seed} reproduces the schedule), {cycles} cycles");
    let mut rng = Rng::seeded(seed);

    let store = TestStore::new("kill");
    let server = store.new_cluster("w");
    server.psql("postgres", ackwriter::CREATE_ACKS).unwrap();
    server.psql("postgres", "CREATE TABLE filler AS SELECT g AS id, md5(g::text) AS t FROM generate_series(1, 20000) g").unwrap();
    store.ok(&["branch", "create", "f", "--empty"]);
    let mnt = store.path("f").parent().unwrap().to_path_buf();
    let world = Arc::new(World {
        store,
        mnt,
        model: Mutex::new(Model {
            x: Some(false),
            x_reset_cut: false,
            marker: Marker::Absent,
            snapshots: BTreeSet::new(),
            snapshots_cut: BTreeSet::new(),
            files: Vec::new(),
            next: 0,
            ops: BTreeMap::new(),
            cut: BTreeMap::new(),
            unexpected: Vec::new(),
        }),
        gate: Mutex::new(()),
        stop: AtomicBool::new(false),
        crashed: AtomicBool::new(false),
    });

    let mut server = Some(server);
    let mut all_acked: Vec<u64> = Vec::new();
    let mut next_id = 1u64;
    let mut aimed = 0u64;
    let mut files_checked = 0usize;
    for cycle in 1..=cycles {
        world.stop.store(false, Ordering::SeqCst);
        world.crashed.store(false, Ordering::SeqCst);
        let mut s = server.take().unwrap();
        let writer = AckWriter::start(&s, next_id);
        let t = std::time::Instant::now();
        while writer.acked().is_empty() {
            assert!(t.elapsed() < Duration::from_secs(120), "cycle {cycle}: no commit acknowledged on w within 120 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let driver = {
            let w = world.clone();
            let mut drng = Rng(rng.next_u64() | 1);
            std::thread::spawn(move || {
                while !w.stop.load(Ordering::SeqCst) {
                    let op = w.model.lock().unwrap().pick(&mut drng);
                    w.run(&op, None);
                }
            })
        };
        std::thread::sleep(Duration::from_millis(200 + rng.below(2800)));
        // Every third cycle, aim the kill at a verb: start it, kill 0-50 ms later.
        let pids = if cycle % 3 == 0 {
            world.stop.store(true, Ordering::SeqCst);
            driver.join().expect("the driver thread");
            let op = {
                let mut m = world.model.lock().unwrap();
                m.next += 1;
                let n = m.next;
                match (rng.below(4), m.x) {
                    (0, _) => Op::Gc,
                    (1, Some(true)) => Op::ResetX,
                    (2, Some(true)) => Op::DeleteX,
                    (_, Some(false)) => Op::CreateX { start: rng.below(2) == 0 },
                    _ => Op::SnapshotCreate(format!("s{n}")),
                }
            };
            let args = op.args().expect("an aimed op is a verb");
            let child = world
                .store
                .command()
                .args(&args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .expect("spawning an aimed verb");
            std::thread::sleep(Duration::from_millis(rng.below(51)));
            let pids = world.crash();
            world.run(&op, Some(child));
            aimed += 1;
            pids
        } else {
            let pids = world.crash();
            driver.join().expect("the driver thread");
            pids
        };
        s.pid = None; // killed above with the rest
        drop(s);
        wait_all_gone(&pids);
        let acked = writer.acked();
        drop(writer);
        // Ids past the last acknowledged one may have committed unacknowledged.
        next_id = acked.iter().max().expect("acks were awaited") + 1_000_000;
        all_acked.extend(acked);

        // The next verb starts a daemon: it replays the intent logs and remounts.
        let (files, entries) = check(&world, cycle);
        files_checked = files;
        let s = world.store.start("w");
        let lost = ackwriter::lost_ids(&s, &all_acked);
        assert!(lost.is_empty(), "cycle {cycle}: {} acknowledged commits lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
        println!(
            "cycle {cycle}: {} rows and {files} files acknowledged so far, all there; {entries} branches/snapshots read",
            all_acked.len()
        );
        if cycle % VERIFY_EVERY == 0 || cycle == cycles {
            world.store.ok(&["verify"]);
        }
        settle_servers(&world.store);
        server = Some(s);
    }
    let s = server.unwrap();
    amcheck(&s).expect("pg_amcheck clean after all the kills");
    let m = world.model.lock().unwrap();
    println!(
        "kill cycles: {cycles} cycles ({aimed} aimed at a verb), {} acknowledged rows and {files_checked} acknowledged files checked, lost: 0; verify and pg_amcheck clean",
        all_acked.len()
    );
    println!("ops run: {:?}", m.ops);
    println!("ops cut by a kill: {:?}", m.cut);
    assert!(m.unexpected.is_empty(), "verbs failed with no crash in sight:\n{}", m.unexpected.join("\n"));
}
