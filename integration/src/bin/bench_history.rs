//! History benchmark (issue #7): bulk loads, GC under load and memory at a million
//! objects, each figure against a baseline measured in the same run, one daemon for all.
//!
//! 1. `pgbench -i -s 50` on a branch vs in a plain PGDATA on the same disk (≥ 0.9x).
//! 2. GC under load: pgbench on two branches at once, total tps while `pgbranch gc`
//!    runs back to back vs without it, rounds interleaved (≥ 0.9x).
//! 3. A million objects: a branch writes that many distinct blocks (half noise, so
//!    stored at about half size, like table pages), a snapshot keeps them, half are
//!    overwritten; then `du` and, with the snapshot deleted, `gc`. The daemon's peak
//!    RSS (VmHWM) over the whole run, gc and du included, must stay ≤ 200 MiB.
//!
//! The initial copy against pg_basebackup at 3 GB is `scripts/bench-follow`; the
//! 30-minute soak is the `auto_gc` test with `PGBRANCH_SOAK_SECS=1800`.
//! Writes bench/history.{json,md}.
//!
//!   scripts/bench-history [--quick] [--scale N] [--objects N] [--only load|gc|objects]
//!
//! `--only` runs one part (`gc` runs `load` first, which it needs) and prints its
//! table without writing bench/history.*.

use std::io::Write;
use std::time::Instant;

use pgbranch_integration::native::Native;
use pgbranch_integration::*;
use serde_json::{json, Value};

const BLOCK: usize = 8192;
/// Blocks per write(2) of the object writer: 1 MiB, as a bulk load writes.
const WRITE_BLOCKS: usize = 128;

fn log(msg: &str) {
    eprintln!("[bench-history] {msg}");
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn tps(out: &str) -> f64 {
    out.lines()
        .find_map(|l| l.trim().strip_prefix("tps = "))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no tps in pgbench output:\n{out}"))
}

fn peak_rss(store: &TestStore, phase: &str, marks: &mut Vec<Value>) -> u64 {
    let st = store.json(&["status"]);
    let (rss, peak, objects) = (st["rss_bytes"].as_u64().unwrap(), st["peak_rss_bytes"].as_u64().unwrap(), st["objects"].as_u64().unwrap());
    log(&format!("after {phase}: rss {:.1} MiB, peak {:.1} MiB, {objects} objects", mib(rss), mib(peak)));
    marks.push(json!({"after": phase, "rss_bytes": rss, "peak_rss_bytes": peak, "objects": objects}));
    peak
}

/// Seconds `pgbench -i -s scale` takes against `server`.
fn pgbench_init(server: &pgbranch_integration::Server, scale: u32) -> f64 {
    let t = Instant::now();
    server.pgbench(&["-i", "-q", "-s", &scale.to_string(), "postgres"]).unwrap();
    server.psql("postgres", "CHECKPOINT").unwrap();
    t.elapsed().as_secs_f64()
}

/// Total tps of pgbench on both servers at once for `secs`.
fn two_branch_tps(servers: &[pgbranch_integration::Server], secs: u32) -> f64 {
    let runs: Vec<Background> =
        servers.iter().map(|s| pgbench_background(s, &["-n", "-c", "2", "-j", "1", "-T", &secs.to_string(), "postgres"])).collect();
    runs.into_iter()
        .map(|b| {
            let out = b.wait();
            assert!(out.status.success(), "pgbench: {}", String::from_utf8_lossy(&out.stderr));
            tps(&String::from_utf8_lossy(&out.stdout))
        })
        .sum()
}

/// Writes `count` distinct, compressible blocks into `path`, 1 MiB per write.
fn write_distinct_blocks(path: &std::path::Path, first: u64, count: u64) {
    let f = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).unwrap();
    let mut buf = vec![0u8; WRITE_BLOCKS * BLOCK];
    let mut n = 0;
    while n < count {
        let blocks = (count - n).min(WRITE_BLOCKS as u64) as usize;
        for (i, b) in buf.chunks_mut(BLOCK).take(blocks).enumerate() {
            // Half noise, half zeros: stored at about half size, like table pages.
            let mut x = (first + n + i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            for word in b[..BLOCK / 2].chunks_mut(8) {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                word.copy_from_slice(&x.to_le_bytes());
            }
        }
        use std::os::unix::fs::FileExt;
        f.write_all_at(&buf[..blocks * BLOCK], n * BLOCK as u64).unwrap();
        n += blocks as u64;
    }
    f.sync_all().unwrap();
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let scale = bench_arg("--scale").unwrap_or(if quick { 10 } else { 50 });
    let objects = bench_arg("--objects").unwrap_or(if quick { 100_000 } else { 1_100_000 });
    let gc_secs = if quick { 10 } else { 30 };
    let gc_rounds = if quick { 1 } else { 2 };
    let only = bench_arg::<String>("--only");
    if let Some(part) = only.as_deref().filter(|p| !["load", "gc", "objects"].contains(p)) {
        panic!("--only {part}: the parts are load, gc and objects");
    }
    let runs = |part: &str| only.as_deref().is_none_or(|o| o == part || (part == "load" && o == "gc"));
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut details = serde_json::Map::new();
    let mut marks = Vec::new();
    let store = TestStore::new("bench-history");

    // 1. pgbench -i on a branch vs native, interleaved native first.
    if runs("load") {
        log(&format!("pgbench -i -s {scale}: native, then on a branch"));
        let native = Native::init("history").unwrap();
        let native_secs = pgbench_init(native.server(), scale);
        drop(native);
        let branch = store.new_cluster("load");
        let branch_secs = pgbench_init(&branch, scale);
        let ratio = native_secs / branch_secs;
        rows.push(json!({"metric": format!("pgbench -i -s {scale} on a branch (time, CHECKPOINT included)"),
        "pgbranch": format!("{branch_secs:.1} s"), "baseline": format!("{native_secs:.1} s"),
        "ratio": ratio, "target": "≥ 0.90x", "pass": ratio >= 0.9}));
        peak_rss(&store, "pgbench -i", &mut marks);
        drop(branch);
    }

    // 2. GC under load on two branches of it.
    if runs("gc") {
        log("GC under load: pgbench on two branches, without and with gc back to back");
        let mut servers = Vec::new();
        for name in ["w1", "w2"] {
            store.ok(&["branch", "create", name, "--from", "load"]);
            servers.push(store.branch_server(name));
        }
        let (mut without, mut with, mut collections) = (Vec::new(), Vec::new(), 0u64);
        let mut removed = 0u64;
        for round in 0..gc_rounds {
            without.push(two_branch_tps(&servers, gc_secs));
            let stop = std::sync::atomic::AtomicBool::new(false);
            let got = std::thread::scope(|s| {
                let collector = s.spawn(|| {
                    let (mut n, mut objects) = (0u64, 0u64);
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let g = store.json(&["gc"]);
                        objects += g["objects_removed"].as_u64().unwrap_or(0);
                        n += 1;
                    }
                    (n, objects)
                });
                let t = two_branch_tps(&servers, gc_secs);
                stop.store(true, std::sync::atomic::Ordering::Relaxed);
                (t, collector.join().unwrap())
            });
            with.push(got.0);
            collections += got.1 .0;
            removed += got.1 .1;
            log(&format!("round {round}: {:.0} tps without gc, {:.0} with", without[round], with[round]));
        }
        let ratio = median(with.clone()) / median(without.clone());
        rows.push(json!({"metric": format!("pgbench tps on two branches while gc runs back to back ({collections} collections, {removed} objects removed)"),
        "pgbranch": format!("{:.0} tps", median(with.clone())), "baseline": format!("{:.0} tps", median(without.clone())),
        "ratio": ratio, "target": "≥ 0.90x", "pass": ratio >= 0.9}));
        details.insert("gc_under_load".into(), json!({"without_tps": without, "with_tps": with, "collections": collections}));
        peak_rss(&store, "gc under load", &mut marks);
        drop(servers);
        for name in ["w1", "w2"] {
            store.ok(&["branch", "delete", name]);
        }
    }

    // 3. A million objects: write, snapshot, overwrite half, du, gc.
    if runs("objects") {
        log(&format!("{objects} distinct blocks on branch objs"));
        store.ok(&["branch", "create", "objs", "--empty"]);
        let file = store.path("objs").join("blocks");
        let t = Instant::now();
        write_distinct_blocks(&file, 0, objects);
        let write_secs = t.elapsed().as_secs_f64();
        store.ok(&["snapshot", "create", "objs-before", "--from", "objs"]);
        write_distinct_blocks(&file, objects, objects / 2);
        peak_rss(&store, "writing the objects", &mut marks);
        let t = Instant::now();
        let du = store.json(&["du"]);
        let du_secs = t.elapsed().as_secs_f64();
        peak_rss(&store, "du", &mut marks);
        store.ok(&["snapshot", "delete", "objs-before"]);
        let t = Instant::now();
        let gc = store.json(&["gc"]);
        let gc_secs = t.elapsed().as_secs_f64();
        let peak = peak_rss(&store, "gc", &mut marks);
        let st = store.json(&["status"]);
        let most_objects = marks.iter().filter_map(|m| m["objects"].as_u64()).max().unwrap_or(0);
        rows.push(json!({"metric": format!("daemon peak RSS over the whole run ({most_objects} objects at most; du {du_secs:.1} s, gc {gc_secs:.1} s)"),
        "pgbranch": format!("{:.1} MiB", mib(peak)), "baseline": "—", "ratio": null, "target": "≤ 200 MiB with ≥ 1M objects",
        "pass": peak <= 200 << 20 && most_objects >= 1_000_000}));
        rows.push(json!({"metric": format!("writing {objects} distinct blocks through FUSE ({:.1} GiB, 1 MiB writes)", (objects as f64 * BLOCK as f64) / (1u64 << 30) as f64),
        "pgbranch": format!("{:.0} MB/s", objects as f64 * BLOCK as f64 / 1e6 / write_secs), "baseline": "—", "ratio": null, "target": "—", "pass": null}));
        details.insert("rss".into(), json!(marks));
        details.insert("du".into(), du);
        details.insert("gc".into(), gc);
        details.insert("status_at_end".into(), json!({"objects": st["objects"], "physical_bytes": st["physical_bytes"]}));
    }

    let mut md = format!(
        "# pgbranch history benchmark (issue #7)\n\nMode: **{}** · took {:.1} min · 2 CPUs shared\n\n| metric | pgbranch | baseline | ratio | target | result |\n|---|---:|---:|---:|---|---|\n",
        if quick { "quick" } else { "full" },
        started.elapsed().as_secs_f64() / 60.0
    );
    md.push_str(&bench_table_rows(&rows));
    let report = json!({"rows": rows, "details": details, "quick": quick});
    if only.is_none() {
        write_bench_report("history", &report, &md);
    }
    let mut stdout = std::io::stdout();
    let _ = writeln!(stdout, "{md}");
}
