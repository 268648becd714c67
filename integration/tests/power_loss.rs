//! Power loss under the store, in the style of redb's `tests/crash_consistency.rs`:
//! the store on an ext4 on a loop device on the fault layer ([`faultdisk`]); a writer
//! acknowledges files on a branch once their fsync returned, while snapshots, branch
//! create/reset/delete and gc run around it; at a random moment the disk freezes, the
//! daemon is killed -9, and the disk is rebuilt as after a power loss (synced state
//! plus a random subset of unsynced writes, some torn). Then fsck, mount, a daemon on
//! the store: `verify` clean and every acknowledged write there with its exact bytes.
//!
//! A failed cycle keeps its evidence (the disk as the power loss left it, the disk
//! after the recovery attempt, daemon.log) in a directory under /tmp it prints.
//! This found a daemon panic on start: redb's header named a file size whose fsync
//! had not reached the journal (fixed in `fs/src/redb_file.rs`).
//!
//! `PGBRANCH_POWER_LOSS_CYCLES` (default 16, about 12 a minute on a quiet 2-core
//! machine) sets the number of crash points; `PGBRANCH_POWER_LOSS_SEED` the seed
//! (printed either way); the postgres round below has its own cycle count.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use pgbranch_integration::ackwriter::{self, AckWriter};
use pgbranch_integration::faultdisk::{make_base_image, FaultDisk};
use pgbranch_integration::loopdisk::LoopDisk;
use pgbranch_integration::seeded::{env_u64, Rng};
use pgbranch_integration::{amcheck, kill_tree, noise, processes, TestStore};

/// An acknowledged file: name, length, content seed.
type Ack = (String, usize, u64);

/// Writes `name` on `dir`, fsyncs it and the directory: Ok means acknowledged.
fn write_acked(dir: &Path, name: &str, data: &[u8]) -> std::io::Result<()> {
    let mut f = std::fs::File::create(dir.join(name))?;
    f.write_all(data)?;
    f.sync_all()?;
    std::fs::File::open(dir)?.sync_all()
}

/// What the workload did: verbs that succeeded, by kind, and acknowledged writes.
#[derive(Default, Debug)]
struct Done {
    snapshots: u64,
    creates: u64,
    resets: u64,
    deletes: u64,
    gcs: u64,
    failed_verbs: u64,
}

/// The workload until `stop`: acked writes on branch `a`, store operations around them.
fn workload(store: &TestStore, a: &Path, mut rng: Rng, stop: &AtomicBool, acks: &Mutex<Vec<Ack>>) -> Done {
    let mut done = Done::default();
    let mut n = 0u64;
    while !stop.load(Ordering::SeqCst) {
        n += 1;
        let b = format!("b{}", n % 3);
        let verb = |args: &[&str], count: &mut u64, failed: &mut u64| {
            if store.run(args).status.success() {
                *count += 1;
            } else {
                // Refused before the crash (e.g. reset of a branch not there) or
                // failed after it: both fine, the check is on what was acknowledged.
                *failed += 1;
            }
        };
        match rng.below(12) {
            0 => verb(&["snapshot", "create", &format!("s{n}"), "--from", "a"], &mut done.snapshots, &mut done.failed_verbs),
            1 => verb(&["branch", "create", &b, "--from", "a", "--no-start"], &mut done.creates, &mut done.failed_verbs),
            2 => verb(&["branch", "reset", &b], &mut done.resets, &mut done.failed_verbs),
            3 => verb(&["branch", "delete", &b], &mut done.deletes, &mut done.failed_verbs),
            4 => verb(&["gc"], &mut done.gcs, &mut done.failed_verbs),
            _ => {
                let name = format!("w{n}");
                let len = 4096 * (1 + rng.below(24) as usize) + rng.below(4096) as usize;
                let seed = rng.next_u64();
                if write_acked(a, &name, &noise(len, seed)).is_ok() {
                    acks.lock().unwrap().push((name, len, seed));
                }
            }
        }
    }
    done
}

/// Where one cycle's crash came from, to name in the evidence.
struct CrashPoint {
    seed: u64,
    cycle: u64,
    crash_at: u64,
    /// The seed [`pgbranch_integration::faultdisk::Journal::power_loss_image`] built the recovered disk with.
    image_seed: u64,
}

/// Keeps what a failed cycle leaves: the daemon's log (its tail printed), the disk as
/// the power loss left it (rebuilt from the journal, before fsck), the disk after fsck
/// and the daemon's attempt, and the acknowledged writes. Returns the directory.
fn keep_evidence(
    at: &CrashPoint,
    disk: &FaultDisk,
    store_dir: &Path,
    recovered: Option<TestStore>,
    ext4: Option<LoopDisk>,
    acked: &[String],
) -> PathBuf {
    let kept = std::env::temp_dir().join(format!("pgbranch-power-loss-evidence-{}-c{}-{}", at.seed, at.cycle, std::process::id()));
    let _ = std::fs::remove_dir_all(&kept);
    std::fs::create_dir_all(&kept).expect("creating the evidence directory");
    match std::fs::read_to_string(store_dir.join("daemon.log")) {
        Ok(log) => {
            let lines: Vec<&str> = log.lines().collect();
            eprintln!("--- daemon.log, last lines ---\n{}\n---", lines[lines.len().saturating_sub(80)..].join("\n"));
            let _ = std::fs::write(kept.join("daemon.log"), &log);
        }
        Err(e) => eprintln!("no daemon.log to keep: {e}"),
    }
    let mut notes = format!(
        "seed {} cycle {}: crash at disk write {}, power-loss image seed {}\n{} acknowledged:\n",
        at.seed,
        at.cycle,
        at.crash_at,
        at.image_seed,
        acked.len()
    );
    for a in acked {
        notes += a;
        notes.push('\n');
    }
    let _ = std::fs::write(kept.join("cycle.txt"), notes);
    // Stop the daemon without `stop` or TestStore's drop (which removes the store).
    if let Some(store) = recovered {
        if let Some(pid) = store.daemon_pid() {
            let _ = pgbranch_integration::sys::kill(pid, libc::SIGKILL);
            pgbranch_integration::wait_gone(pid, Duration::from_secs(30));
        }
        pgbranch_integration::detach_mounts_under(store_dir);
        std::mem::forget(store);
    }
    drop(ext4);
    let after = disk.dir.join("after.img");
    let copied = Command::new("cp").arg("--sparse=always").arg(&after).arg(kept.join("after-recovery.img")).status();
    if !copied.is_ok_and(|s| s.success()) {
        eprintln!("could not copy {}", after.display());
    }
    if let Err(e) = disk.journal().power_loss_image(&kept.join("power-loss.img"), at.image_seed) {
        eprintln!("could not rebuild the power-loss image: {e}");
    }
    kept
}

fn fsck(image: &Path) -> String {
    let out = Command::new("fsck.ext4").args(["-f", "-y"]).arg(image).output().expect("fsck.ext4");
    let code = out.status.code().unwrap_or(8);
    assert!(code & !3 == 0, "fsck.ext4 could not repair the power-loss image (exit {code}):\n{}", String::from_utf8_lossy(&out.stdout));
    format!("exit {code}")
}

#[test]
fn power_loss_keeps_every_fsynced_write() {
    let cycles = env_u64("PGBRANCH_POWER_LOSS_CYCLES", 16);
    let seed =
        env_u64("PGBRANCH_POWER_LOSS_SEED", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    println!("power_loss: seed {seed} (PGBRANCH_POWER_LOSS_SEED), {cycles} cycles");
    // The daemons the verbs start inherit it: a panic in daemon.log comes with its backtrace.
    std::env::set_var("RUST_BACKTRACE", "1");
    let mut rng = Rng(seed | 1);
    let root = std::env::temp_dir().join(format!("pgbranch-loop-{}-0-power", std::process::id()));
    pgbranch_integration::detach_mounts_under(&root);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let base = root.join("base.img");
    make_base_image(&base, 192);
    let writes_per_cycle = env_u64("PGBRANCH_POWER_LOSS_WRITES", 3000);
    let mut verbs = Done::default();
    let (mut checked, mut unsynced_total, mut torn_total, mut dropped_total) = (0usize, 0usize, 0usize, 0usize);
    for cycle in 0..cycles {
        let dir = root.join(format!("c{cycle}"));
        let mut disk = FaultDisk::start(&dir, &base);
        let store_dir = disk.mountpoint().join("store");
        let store = TestStore::at(&store_dir);
        store.ok(&["branch", "create", "a", "--empty"]);
        let a = store.path("a");
        let daemon = store.daemon_pid().expect("the daemon runs");
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let worker_rng = Rng(rng.next_u64() | 1);
        // The crash point: the disk freezes at a random write from now (a random
        // moment of whatever the workload is doing), or after a while if the
        // workload writes less than that.
        let crash_at = 1 + rng.below(writes_per_cycle);
        disk.freeze_after_writes(crash_at);
        let store = Arc::new(store);
        let w = {
            let (store, stop, acks, a) = (store.clone(), stop.clone(), acks.clone(), a.clone());
            std::thread::spawn(move || workload(&store, &a, worker_rng, &stop, &acks))
        };
        let t = Instant::now();
        while !disk.frozen() && t.elapsed() < Duration::from_secs(20) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let by_write = disk.frozen();
        disk.freeze();
        let writes_seen = disk.journal().counts.writes;
        stop.store(true, Ordering::SeqCst);
        let _ = pgbranch_integration::sys::kill(daemon, libc::SIGKILL);
        assert!(pgbranch_integration::wait_gone(daemon, Duration::from_secs(30)), "daemon {daemon} did not die");
        let done = w.join().expect("workload thread");
        // Every acknowledgement counts, also one taken after the freeze: an fsync
        // can only return OK once its bytes reached the disk before the power went.
        let acked: Vec<Ack> = acks.lock().unwrap().clone();
        // A verb in flight at the kill may have started another daemon: kill it too.
        if let Some(pid) = store.daemon_pid() {
            let _ = pgbranch_integration::sys::kill(pid, libc::SIGKILL);
            pgbranch_integration::wait_gone(pid, Duration::from_secs(30));
        }
        let store = Arc::try_unwrap(store).ok().expect("workload done");
        std::mem::forget(store); // its drop would run verbs on the dead disk
        pgbranch_integration::detach_mounts_under(&store_dir);
        let after = dir.join("after.img");
        let image_seed = rng.next_u64();
        let (whole, torn, dropped) = {
            let j = disk.journal();
            j.power_loss_image(&after, image_seed).expect("building the power-loss image")
        };
        disk.detach();
        unsynced_total += whole + torn + dropped;
        torn_total += torn;
        dropped_total += dropped;
        // The checks run under catch_unwind: a failure keeps the evidence first.
        let mut ext4 = None;
        let mut recovered = None;
        let checked_here = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let fsck_said = fsck(&after);
            ext4 = Some(LoopDisk::attach(&after, &disk.mountpoint()));
            let store = recovered.insert(TestStore::at(&store_dir));
            let verify = store.run(&["verify"]);
            assert!(
                verify.status.success(),
                "cycle {cycle}: verify after power loss failed:\n{}{}",
                String::from_utf8_lossy(&verify.stdout),
                String::from_utf8_lossy(&verify.stderr)
            );
            let a = store.path("a");
            for (name, len, s) in &acked {
                let got = std::fs::read(a.join(name)).unwrap_or_else(|e| panic!("cycle {cycle}: acknowledged {name} lost: {e}"));
                assert!(
                    got.len() == *len && got == noise(*len, *s),
                    "cycle {cycle}: acknowledged {name} has other bytes ({} of {len})",
                    got.len()
                );
            }
            fsck_said
        }));
        let fsck_said = match checked_here {
            Ok(said) => said,
            Err(panic) => {
                let at = CrashPoint { seed, cycle, crash_at, image_seed };
                let acked: Vec<String> = acked.iter().map(|(name, len, s)| format!("file {name}, {len} bytes, noise seed {s}")).collect();
                let kept = keep_evidence(&at, &disk, &store_dir, recovered.take(), ext4.take(), &acked);
                eprintln!("power_loss: cycle {cycle} of seed {seed} failed; evidence kept in {}", kept.display());
                std::panic::resume_unwind(panic);
            }
        };
        let store = recovered.take().expect("the recovered store");
        checked += acked.len();
        println!(
            "cycle {cycle}: crash at disk write {crash_at}{} ({writes_seen} writes to the disk), {} acked writes there; unsynced disk writes {} (whole {whole}, torn {torn}, dropped {dropped}); fsck {fsck_said}; verbs {done:?}",
            if by_write { "" } else { " (not reached: frozen after 20 s)" },
            acked.len(),
            whole + torn + dropped
        );
        verbs.snapshots += done.snapshots;
        verbs.creates += done.creates;
        verbs.resets += done.resets;
        verbs.deletes += done.deletes;
        verbs.gcs += done.gcs;
        verbs.failed_verbs += done.failed_verbs;
        drop(store);
        drop(ext4);
        drop(disk);
        let _ = std::fs::remove_dir_all(&dir);
    }
    println!(
        "power_loss: {cycles} crash points, {checked} acknowledged writes checked, 0 lost; {unsynced_total} unsynced disk writes at the crashes ({torn_total} torn, {dropped_total} dropped); verbs done before the crashes {verbs:?}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

/// Postmasters whose data directory lies under `dir`.
fn postmasters_under(dir: &Path) -> Vec<i32> {
    let prefix = dir.to_string_lossy().to_string();
    let is_postgres = |args: &[String]| args.first().is_some_and(|a| a.ends_with("/postgres"));
    let in_dir = |args: &[String]| args.windows(2).any(|w| w[0] == "-D" && w[1].starts_with(&prefix));
    processes().into_iter().filter(|(_, args)| is_postgres(args) && in_dir(args)).map(|(pid, _)| pid).collect()
}

/// The same power cut under postgres: a server on branch `w` of the store on the fault
/// layer, an [`AckWriter`] committing rows one transaction each; at a random disk
/// write the power goes (postgres and the daemon killed -9), the disk is rebuilt as
/// after a power loss, and postgres recovers on it: every acknowledged row is there,
/// pg_amcheck and `verify` are clean. Each cycle starts from the disk the previous
/// recovery left (shut down cleanly), so initdb runs once.
///
/// `PGBRANCH_POWER_LOSS_PG_CYCLES` (default 3) sets the number of crash points.
#[test]
fn power_loss_keeps_every_acknowledged_postgres_commit() {
    let cycles = env_u64("PGBRANCH_POWER_LOSS_PG_CYCLES", 3);
    let seed =
        env_u64("PGBRANCH_POWER_LOSS_SEED", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64);
    println!("power_loss postgres: seed {seed} (PGBRANCH_POWER_LOSS_SEED), {cycles} cycles");
    std::env::set_var("RUST_BACKTRACE", "1");
    let mut rng = Rng(seed | 1);
    let root = std::env::temp_dir().join(format!("pgbranch-loop-{}-0-powerpg", std::process::id()));
    pgbranch_integration::detach_mounts_under(&root);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    let mut base = root.join("base.img");
    make_base_image(&base, 384);
    let writes_per_cycle = env_u64("PGBRANCH_POWER_LOSS_PG_WRITES", 3000);
    let mut all_acked: Vec<u64> = Vec::new();
    let mut next_id = 1u64;
    let mut unsynced_total = 0usize;
    for cycle in 0..cycles {
        let dir = root.join(format!("c{cycle}"));
        let mut disk = FaultDisk::start(&dir, &base);
        if cycle > 0 {
            // FaultDisk::start copied it: the previous cycle's disk is no longer needed.
            let _ = std::fs::remove_dir_all(base.parent().unwrap());
        }
        let store_dir = disk.mountpoint().join("store");
        let store = TestStore::at(&store_dir);
        let mut server = if cycle == 0 {
            let s = store.new_cluster("w");
            s.psql("postgres", ackwriter::CREATE_ACKS).unwrap();
            s
        } else {
            store.start("w")
        };
        let writer = AckWriter::start(&server, next_id);
        let t = Instant::now();
        while writer.acked().is_empty() {
            assert!(t.elapsed() < Duration::from_secs(120), "cycle {cycle}: no commit acknowledged within 120 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let crash_at = 1 + rng.below(writes_per_cycle);
        disk.freeze_after_writes(crash_at);
        let t = Instant::now();
        while !disk.frozen() && t.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
        let by_write = disk.frozen();
        disk.freeze();
        let mut pids = postmasters_under(&store_dir);
        pids.extend(store.daemon_pid());
        for &pid in &pids {
            kill_tree(pid);
        }
        for &pid in &pids {
            assert!(pgbranch_integration::wait_gone(pid, Duration::from_secs(60)), "process {pid} survived SIGKILL");
        }
        server.pid = None; // killed above
        drop(server);
        // An acknowledgement taken after the freeze counts too: its fsync returned OK.
        let acked = writer.acked();
        drop(writer);
        next_id = acked.iter().max().expect("acks were awaited") + 1_000_000;
        let acked_here = acked.len();
        all_acked.extend(acked);
        std::mem::forget(store); // its drop would run verbs on the dead disk
        pgbranch_integration::detach_mounts_under(&store_dir);
        let after = dir.join("after.img");
        let image_seed = rng.next_u64();
        let (whole, torn, dropped) = disk.journal().power_loss_image(&after, image_seed).expect("building the power-loss image");
        disk.detach();
        unsynced_total += whole + torn + dropped;
        let mut ext4 = None;
        let mut recovered = None;
        let checked_here = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let fsck_said = fsck(&after);
            ext4 = Some(LoopDisk::attach(&after, &disk.mountpoint()));
            let store = recovered.insert(TestStore::at(&store_dir));
            let s = store.start("w");
            let lost = ackwriter::lost_ids(&s, &all_acked);
            assert!(lost.is_empty(), "cycle {cycle}: {} acknowledged commits lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
            amcheck(&s).unwrap_or_else(|e| panic!("cycle {cycle}: pg_amcheck after power loss: {e}"));
            drop(s);
            store.ok(&["verify"]);
            fsck_said
        }));
        let fsck_said = match checked_here {
            Ok(said) => said,
            Err(panic) => {
                let at = CrashPoint { seed, cycle, crash_at, image_seed };
                let ids: Vec<String> = all_acked.iter().map(|id| format!("row {id}")).collect();
                let kept = keep_evidence(&at, &disk, &store_dir, recovered.take(), ext4.take(), &ids);
                eprintln!("power_loss postgres: cycle {cycle} of seed {seed} failed; evidence kept in {}", kept.display());
                std::panic::resume_unwind(panic);
            }
        };
        println!(
            "cycle {cycle}: crash at disk write {crash_at}{}, {acked_here} commits acked in it; unsynced disk writes {} (whole {whole}, torn {torn}, dropped {dropped}); fsck {fsck_said}; all {} acked rows there, pg_amcheck and verify clean",
            if by_write { "" } else { " (not reached: frozen after 30 s)" },
            whole + torn + dropped,
            all_acked.len()
        );
        // Shut the recovered store down cleanly: its disk is the next cycle's.
        let store = recovered.take().expect("the recovered store");
        let daemon = store.daemon_pid();
        store.ok(&["stop"]);
        if let Some(pid) = daemon {
            assert!(pgbranch_integration::wait_gone(pid, Duration::from_secs(60)), "daemon {pid} did not stop");
        }
        pgbranch_integration::detach_mounts_under(&store_dir);
        std::mem::forget(store); // its drop would remove the store
        let mut ext4 = ext4.take().expect("the recovered disk");
        ext4.detach();
        drop(disk);
        base = after;
    }
    println!(
        "power_loss postgres: {cycles} crash points, {} acknowledged commits checked, 0 lost; {unsynced_total} unsynced disk writes at the crashes; pg_amcheck and verify clean after each",
        all_acked.len()
    );
    let _ = std::fs::remove_dir_all(&root);
}
