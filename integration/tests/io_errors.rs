//! I/O errors under the store: the store on an ext4 on a loop device on the fault
//! layer ([`faultdisk`]), whose switches make the block device fail reads, writes or
//! flushes with EIO.
//!
//! The round with postgres (`io_errors_reach_postgres_as_errors_and_lose_nothing`): a
//! branch with a data-checksummed cluster, a large table `big` committed and the daemon
//! restarted (cold caches), an acknowledged-commit writer running. Then
//! 1. reads fail (and the page cache is dropped): reads of the table file through the
//!    mount are EIO or the exact bytes written, a query over `big` fails or returns
//!    only rows that match what was written; the daemon stays up;
//! 2. writes and flushes fail: postgres' WAL fsync returns EIO, postgres PANICs, no
//!    commit is acknowledged while the disk fails; the daemon stays up;
//! 3. the disk heals: postgres is recovered (by itself, or by the restart a user does,
//!    with fsck if ext4 gave up), every acknowledged commit is there, `verify` and
//!    pg_amcheck are clean, `big` reads back whole, and no "panicked" in daemon.log.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use pgbranch_integration::ackwriter::{self, AckWriter};
use pgbranch_integration::faultdisk::{make_base_image, FaultDisk, Faults};
use pgbranch_integration::loopdisk::LoopDisk;
use pgbranch_integration::*;

fn root(tag: &str) -> std::path::PathBuf {
    let root = std::env::temp_dir().join(format!("pgbranch-loop-{}-0-{tag}", std::process::id()));
    pgbranch_integration::detach_mounts_under(&root);
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(&root).unwrap();
    root
}

/// The layer under the loop device sees its writes and flushes, and a failed flush
/// reaches the fsync of a file on the ext4 above it: the ground the other tests stand on.
#[test]
fn the_loop_device_writes_and_flushes_through_the_fault_layer() {
    let root = root("layer");
    let base = root.join("base.img");
    make_base_image(&base, 64);
    let mut disk = FaultDisk::start(&root.join("d"), &base);
    let before = disk.journal().counts;
    let file = disk.mountpoint().join("f");
    let mut f = std::fs::File::create(&file).unwrap();
    f.write_all(&vec![7u8; 1 << 20]).unwrap();
    f.sync_all().unwrap();
    let after = disk.journal().counts;
    println!("layer: {before:?} -> {after:?}");
    assert!(after.writes > before.writes, "the loop device's writes reach the layer");
    assert!(after.fsyncs > before.fsyncs, "an fsync on the ext4 flushes the loop device into the layer");
    assert!(disk.journal().unsynced.is_empty(), "nothing unsynced after an fsync");
    disk.set_faults(Faults { fsyncs: true, ..Faults::default() });
    f.write_all(&vec![8u8; 1 << 20]).unwrap();
    let r = f.sync_all();
    println!("fsync with failing flushes: {r:?}");
    assert!(r.is_err(), "a failed flush of the device fails the fsync above it");
    disk.set_faults(Faults::default());
    drop(f);
    std::thread::sleep(Duration::from_millis(10));
    disk.detach();
    let _ = std::fs::remove_dir_all(&root);
}

/// Rows of `big`: id 1..=BIG_ROWS, payload a function of the id (so any row returned
/// can be checked), ~300 bytes each: ~60 MB, far more than shared_buffers below.
const BIG_ROWS: u64 = 200_000;
const PAYLOAD: &str = "repeat(md5(id::text), 8)";
const BLOCK: usize = 8192;

/// Waits for `cond` with a generous deadline; panics with `what` if it never holds.
fn wait_for(what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
    let t = Instant::now();
    while !cond() {
        assert!(t.elapsed() < timeout, "{what}: not within {} s", timeout.as_secs());
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "3").expect("dropping the page cache (needs root)");
}

/// Starts postgres on the branch at `data`, its socket and log in `run` (off the
/// faulty disk, so its log survives the faults).
fn start_postgres(data: &Path, run: &Path) -> Server {
    let (bin, owner) = pg_env();
    Server::start_with(&bin, &owner, data, run, pg::free_port().unwrap(), "-c shared_buffers=16MB -c restart_after_crash=on")
        .expect("starting postgres on the branch")
}

/// Reads every block of `file` through the mount: (blocks equal to `want`, blocks
/// failing with EIO). Any other bytes or any other error fails the test.
fn read_blocks(file: &Path, want: &[u8], what: &str) -> (usize, usize) {
    let f = File::open(file).unwrap_or_else(|e| panic!("{what}: opening {}: {e}", file.display()));
    let (mut same, mut eio) = (0, 0);
    let mut buf = vec![0u8; BLOCK];
    for (i, expect) in want.chunks(BLOCK).enumerate() {
        match f.read_exact_at(&mut buf[..expect.len()], (i * BLOCK) as u64) {
            Ok(()) => {
                assert!(&buf[..expect.len()] == expect, "{what}: block {i} of {} read other bytes than were written", file.display());
                same += 1;
            }
            Err(e) if e.raw_os_error() == Some(libc::EIO) => eio += 1,
            Err(e) => panic!("{what}: block {i} of {}: {e} (expected EIO or the bytes)", file.display()),
        }
    }
    (same, eio)
}

/// The pack numbers of the store in `store`, ascending.
fn packs(store: &Path) -> Vec<u32> {
    let mut out: Vec<u32> = std::fs::read_dir(store.join("data/packs"))
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("pack-")?.strip_suffix(".pk")?.parse().ok())
        .collect();
    out.sort_unstable();
    out
}

/// The bytes of the disk image holding these packs (their extents, from FIEMAP via
/// `filefrag`; the loop device maps ext4 block n to byte n * 4096 of the image).
fn disk_range(store: &Path, packs: &[u32]) -> std::ops::Range<u64> {
    let (mut lo, mut hi) = (u64::MAX, 0u64);
    for p in packs {
        let file = store.join(format!("data/packs/pack-{p:08}.pk"));
        let out = Command::new("filefrag").args(["-v", "-b4096"]).arg(&file).output().expect("filefrag");
        let text = String::from_utf8_lossy(&out.stdout);
        // "   0:        0..   32767:      34816..     67583:  32768: ..."
        for line in text.lines() {
            let cols: Vec<&str> = line.split(':').map(str::trim).collect();
            if cols.len() < 4 || cols[0].parse::<u32>().is_err() {
                continue;
            }
            let phys: Vec<u64> = cols[2].split("..").filter_map(|v| v.trim().parse().ok()).collect();
            if let [a, b] = phys[..] {
                lo = lo.min(a * 4096);
                hi = hi.max((b + 1) * 4096);
            }
        }
    }
    assert!(lo < hi, "no extents found for packs {packs:?}");
    lo..hi
}

/// Counts rows of `big` and the ones whose payload is not what was written.
fn check_big(server: &Server) -> Result<(u64, u64), String> {
    let q = format!("SELECT count(*), count(*) FILTER (WHERE payload <> {PAYLOAD}) FROM big");
    let out = server.psql("postgres", &q).map_err(|e| format!("{e:#}"))?;
    let v: Vec<u64> = out.split('|').map(|x| x.trim().parse().unwrap()).collect();
    Ok((v[0], v[1]))
}

fn postgres_log(run: &Path) -> String {
    std::fs::read_to_string(run.join("postgres.log")).unwrap_or_default()
}

/// Whether a file can be created on the ext4 (false once ext4 aborted its journal).
fn ext4_writable(mnt: &Path) -> Result<(), String> {
    let probe = mnt.join("probe");
    let r = File::create(&probe).and_then(|mut f| f.write_all(b"x").and_then(|_| f.sync_all()));
    let _ = std::fs::remove_file(&probe);
    r.map_err(|e| e.to_string())
}

/// Seconds since boot: the clock of the kernel's log.
fn uptime() -> f64 {
    let s = std::fs::read_to_string("/proc/uptime").unwrap_or_default();
    s.split_whitespace().next().and_then(|v| v.parse().ok()).unwrap_or(0.0)
}

/// The kernel's lines about `device` (what ext4 and the loop driver said) since `since`.
fn kernel_lines(device: &str, since: f64) -> Vec<String> {
    let dev = format!("{}:", device.trim_start_matches("/dev/"));
    let ext4 = format!("({})", device.trim_start_matches("/dev/"));
    let out = Command::new("dmesg").output().map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default();
    let at = |l: &str| l.strip_prefix('[').and_then(|r| r.split(']').next()).and_then(|t| t.trim().parse::<f64>().ok());
    out.lines().filter(|l| (l.contains(&dev) || l.contains(&ext4)) && at(l).is_some_and(|t| t >= since)).map(|l| l.to_string()).collect()
}

#[test]
fn io_errors_reach_postgres_as_errors_and_lose_nothing() {
    let root = root("ioerr");
    let base = root.join("base.img");
    make_base_image(&base, 1024);
    let mut disk = FaultDisk::start(&root.join("d"), &base);
    let device = disk.ext4.as_ref().map(|e| e.device.clone()).unwrap_or_default();
    let since = uptime();
    let store = TestStore::at(&disk.mountpoint().join("store"));
    // The test places big's packs on a bad region of the disk: an automatic collection
    // moving records behind its back (and ext4 reusing the freed extents for WAL blocks)
    // would move the bad region under postgres' WAL. It runs gc itself.
    std::fs::create_dir_all(&store.dir).unwrap();
    std::fs::write(store.dir.join("pgbranch.toml"), "gc = \"manual\"\n").unwrap();
    let run = root.join("run");
    let (bin, owner) = pg_env();

    // A cluster with data checksums on the branch, `big` committed to the store.
    store.ok(&["branch", "create", "pg", "--empty"]);
    let data = store.path("pg");
    let mut initdb = owner.command(bin.tool("initdb"));
    initdb.arg("-D").arg(&data).args(["--data-checksums", "-U", "postgres", "--auth=trust", "--no-instructions", "-E", "UTF8"]);
    owner.run(&mut initdb, "initdb").unwrap();
    let mut server = start_postgres(&data, &run);
    server.psql("postgres", ackwriter::CREATE_ACKS).unwrap();
    // big's blocks go to packs of their own: gc seals the active pack before and after.
    store.ok(&["gc"]);
    let first_big_pack = packs(&store.dir).last().copied().expect("an active pack");
    server
        .psql(
            "postgres",
            &format!(
                "CREATE TABLE big (id bigint PRIMARY KEY, payload text) WITH (autovacuum_enabled = off); \
                 INSERT INTO big SELECT id, {PAYLOAD} FROM generate_series(1, {BIG_ROWS}) id"
            ),
        )
        .unwrap();
    server.psql("postgres", "VACUUM FREEZE big").unwrap();
    server.psql("postgres", "CHECKPOINT").unwrap();
    // Not an assertion: blocks committed later land outside big's packs, read fine.
    let t = Instant::now();
    let clean = || store.json(&["branch", "list"]).as_array().into_iter().flatten().all(|b| b["dirty_bytes"].as_u64() == Some(0));
    while !clean() && t.elapsed() < Duration::from_secs(60) {
        std::thread::sleep(Duration::from_millis(200));
    }
    store.ok(&["gc"]);
    let rel = server.psql("postgres", "SELECT pg_relation_filepath('big')").unwrap();
    let big_file = data.join(&rel);
    let big_bytes = std::fs::read(&big_file).expect("reading big's file through the mount");
    println!("big: {} rows, {} MiB in {rel}", BIG_ROWS, big_bytes.len() >> 20);
    assert!(big_bytes.len() > 32 << 20, "big must be far larger than every cache in front of the disk");
    // Cold caches: postgres stopped, the daemon stopped (it commits everything), both
    // started again; the daemon reads big's blocks from the packs from now on.
    server.stop().unwrap();
    store.ok(&["stop"]);
    let data = store.path("pg");
    let big_file = data.join(&rel);
    let mut server = start_postgres(&data, &run);
    let daemon = store.daemon_pid().expect("the daemon runs");
    // big's packs: made since the first gc (that one's rewrite may have moved big into
    // the one sealed by the second), all but the new daemon's empty active pack.
    let big_packs: Vec<u32> = packs(&store.dir).into_iter().filter(|&p| p >= first_big_pack).collect();
    let writer = AckWriter::start(&server, 1);
    wait_for("a first acknowledged commit", Duration::from_secs(120), || !writer.acked().is_empty());

    // 1. Reads fail where big's packs lie on the disk (a bad region of the medium).
    // Every other MiB of them: some of big's blocks read back, some fail.
    let bad = disk_range(&store.dir, &big_packs[..big_packs.len().saturating_sub(1)]);
    // One read loads big's block map into the daemon (the map nodes may lie in a bad
    // patch too, which would fail every read of the file); drop_caches below empties
    // the kernel's caches of its blocks again.
    let mut first = vec![0u8; BLOCK];
    File::open(&big_file).and_then(|f| f.read_exact_at(&mut first, 0)).expect("reading big's first block");
    println!("reads fail in every other MiB of bytes {bad:?} of the disk (packs {big_packs:?} but the last, active one)");
    disk.set_faults(Faults { reads: true, range: Some(bad), stripe: Some(1 << 20), ..Faults::default() });
    drop_caches();
    let (same, eio) = read_blocks(&big_file, &big_bytes, "reads failing");
    let query = check_big(&server);
    let failed_reads = disk.journal().counts.failed_reads;
    println!("reads failing: {same} blocks read back exact, {eio} EIO; query over big: {query:?}; {failed_reads} disk reads failed");
    assert!(failed_reads > 0, "the disk was asked for blocks while reads failed (caches were not cold)");
    assert!(eio > 0, "with the disk failing reads, reads of uncached blocks fail with EIO");
    assert!(same > 0, "blocks outside the bad region read back (the check that no other bytes come back ran)");
    match &query {
        Ok((rows, bad)) => assert!(*bad == 0 && *rows == BIG_ROWS, "a query over big returned {rows} rows, {bad} of them not as written"),
        Err(e) => assert!(
            e.contains("could not read block") || e.contains("Input/output error"),
            "a query over big failed with another error than an I/O error: {e}"
        ),
    }
    assert!(pid_alive(daemon), "the daemon died while reads failed");
    disk.set_faults(Faults::default());
    drop_caches();
    let healed_reads = (read_blocks(&big_file, &big_bytes, "reads healed"), check_big(&server));
    println!("reads healed, same daemon: (blocks exact, EIO) and query = {healed_reads:?}");
    assert_eq!(
        healed_reads,
        ((big_bytes.len().div_ceil(BLOCK), 0), Ok((BIG_ROWS, 0))),
        "once reads work again, the same daemon serves big whole"
    );

    // 2. Writes and flushes fail.
    let acked_before = writer.acked().len();
    disk.set_faults(Faults { writes: true, fsyncs: true, ..Faults::default() });
    let failing_since = Instant::now();
    wait_for("postgres PANIC after a failed fsync", Duration::from_secs(180), || postgres_log(&run).contains("PANIC"));
    let panic_after = failing_since.elapsed();
    // Commits tried while the disk fails are never acknowledged.
    let mut refused = Vec::new();
    for i in 0..5u64 {
        let r = server.psql("postgres", &format!("INSERT INTO acks VALUES ({})", 900_000_000 + i));
        assert!(r.is_err(), "a commit was acknowledged while the disk failed writes and flushes (attempt {i})");
        refused.push(format!("{:#}", r.unwrap_err()).lines().last().unwrap_or("").to_string());
        std::thread::sleep(Duration::from_millis(500));
    }
    let acked_failing = writer.acked().len() - acked_before;
    let counts = disk.journal().counts;
    let ext4_state = ext4_writable(&disk.mountpoint());
    assert!(pid_alive(daemon), "the daemon died while writes and flushes failed");
    let log = postgres_log(&run);
    let panic_line = log.lines().find(|l| l.contains("PANIC")).unwrap_or("").to_string();
    println!("writes failing: postgres PANIC after {:.1} s: {panic_line}", panic_after.as_secs_f64());
    println!(
        "writes failing: {acked_failing} acks arrived after the switch (in flight before it), commits tried after the PANIC: {refused:?}"
    );
    println!("writes failing: disk {counts:?}; ext4 writable: {ext4_state:?}");

    // 3. The disk heals.
    disk.set_faults(Faults::default());
    let all_acked = writer.acked();
    drop(writer);
    let by_itself = {
        let t = Instant::now();
        let mut ok = false;
        while t.elapsed() < Duration::from_secs(60) && !ok {
            ok = server.psql("postgres", "INSERT INTO acks VALUES (999999999)").is_ok();
            std::thread::sleep(Duration::from_millis(500));
        }
        ok
    };
    println!("healed: postgres commits again by itself: {by_itself}; ext4 writable: {:?}", ext4_writable(&disk.mountpoint()));
    let kernel = kernel_lines(&device, since);
    println!("kernel said ({} lines):\n{}", kernel.len(), kernel.iter().take(20).cloned().collect::<Vec<_>>().join("\n"));
    if !by_itself {
        // The recovery a user does: stop postgres and the daemon, fsck, start again.
        if let Some(pid) = server.pid.take() {
            kill_tree(pid);
            assert!(wait_gone(pid, Duration::from_secs(30)), "postmaster {pid} survived SIGKILL");
        }
        let stop = store.run(&["stop"]);
        println!("pgbranch stop: {} {}", stop.status, String::from_utf8_lossy(&stop.stderr).trim());
        if pid_alive(daemon) {
            kill_tree(daemon);
            assert!(wait_gone(daemon, Duration::from_secs(30)), "daemon {daemon} survived SIGKILL");
        }
        detach_mounts_under(&store.dir);
        if let Some(mut e) = disk.ext4.take() {
            e.detach();
        }
        let fsck = Command::new("fsck.ext4").args(["-f", "-y"]).arg(disk.image()).output().expect("fsck.ext4");
        let code = fsck.status.code().unwrap_or(8);
        println!("fsck.ext4 -f -y: exit {code}");
        assert!(
            code & !3 == 0,
            "fsck could not repair the ext4 after the faults (exit {code}):\n{}",
            String::from_utf8_lossy(&fsck.stdout)
        );
        disk.ext4 = Some(LoopDisk::attach(&disk.image(), &disk.mountpoint()));
        server = start_postgres(&store.path("pg"), &run);
    }
    let lost = ackwriter::lost_ids(&server, &all_acked);
    assert!(lost.is_empty(), "{} acknowledged commits lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
    let extra: Vec<u64> = ackwriter::present_ids(&server).into_iter().filter(|id| (900_000_000..900_000_005).contains(id)).collect();
    assert!(extra.is_empty(), "commits refused while the disk failed are there after all: {extra:?}");
    assert_eq!(check_big(&server), Ok((BIG_ROWS, 0)), "big after the heal");
    drop_caches();
    let (same, eio) = read_blocks(&store.path("pg").join(&rel), &big_bytes, "after the heal");
    assert_eq!((same, eio), (big_bytes.len().div_ceil(BLOCK), 0), "big's file after the heal");
    amcheck(&server).expect("pg_amcheck clean after the faults");
    server.stop().unwrap();
    store.ok(&["verify"]);
    let daemon_log = std::fs::read_to_string(store.dir.join("daemon.log")).unwrap_or_default();
    assert!(!daemon_log.contains("panicked"), "the daemon panicked:\n{daemon_log}");
    println!(
        "io_errors: {} acknowledged commits checked, lost: 0; recovered {}; verify and pg_amcheck clean",
        all_acked.len(),
        if by_itself { "by postgres itself" } else { "by stop, fsck, start" }
    );
    store.ok(&["stop"]);
    drop(store);
    disk.detach();
    let _ = std::fs::remove_dir_all(&root);
}
