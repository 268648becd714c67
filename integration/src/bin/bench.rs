//! The pgbranch benchmark: every figure measured in the same run as its baseline.
//!
//! 1. pgbench TPS on a branch vs on a plain ext4 PGDATA (read-write and select-only),
//!    runs interleaved native, branch, native, branch; medians.
//! 2. Snapshot creation time of a ~0.3 GB and a ~3 GB branch, each served by a running
//!    postgres under a light write load: CLI wall time and daemon `create_micros`.
//! 3. Storage: one database vs that database plus ten branches each updating 1% of
//!    pgbench_accounts; and the store's bytes vs `du -sb` of a copy on ext4.
//! 4. The daemon's peak RSS over the whole run.
//!
//! Execution order is 3, 1, 2, 4 (storage first, in a store holding nothing else), one
//! daemon for the whole run. Prints a JSON report and a markdown table, and writes both
//! to bench/latest.json and bench/latest.md.
//!
//! Usage: bench [--quick] [--rounds N] [--secs N] [--sections 1,2,3,4] [--extra|--no-extra] [--out DIR]

use std::collections::BTreeMap;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use pgbranch::api::Request;
use pgbranch::layout::Layout;
use pgbranch_integration::native::Native;
use pgbranch_integration::*;
use serde_json::{json, Value};

// ---------------------------------------------------------------- configuration

#[derive(Clone, Debug)]
struct Cfg {
    quick: bool,
    tps_scale: u32,
    tps_secs: u32,
    tps_rounds: u32,
    tps_clients: u32,
    snap_large_scale: u32,
    snaps: usize,
    snap_load_rate: u32,
    storage_scale: u32,
    storage_branches: usize,
    extra: bool,
    sections: Vec<u32>,
    out_dir: PathBuf,
}

impl Cfg {
    fn parse() -> Result<Cfg> {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let quick = args.iter().any(|a| a == "--quick");
        let mut cfg = if quick {
            Cfg {
                quick,
                tps_scale: 5,
                tps_secs: 5,
                tps_rounds: 1,
                tps_clients: 4,
                snap_large_scale: 40,
                snaps: 20,
                snap_load_rate: 20,
                storage_scale: 5,
                storage_branches: 3,
                extra: false,
                sections: vec![1, 2, 3, 4],
                out_dir: default_out_dir(),
            }
        } else {
            Cfg {
                quick,
                tps_scale: 20,
                tps_secs: 30,
                tps_rounds: 3,
                tps_clients: 4,
                snap_large_scale: 200,
                snaps: 20,
                snap_load_rate: 20,
                storage_scale: 50,
                storage_branches: 10,
                extra: true,
                sections: vec![1, 2, 3, 4],
                out_dir: default_out_dir(),
            }
        };
        let mut it = args.iter();
        while let Some(a) = it.next() {
            let mut val = |name: &str| -> Result<String> { it.next().cloned().with_context(|| format!("{name} needs a value")) };
            match a.as_str() {
                "--quick" => {}
                "--rounds" => cfg.tps_rounds = val("--rounds")?.parse()?,
                "--secs" => cfg.tps_secs = val("--secs")?.parse()?,
                "--large-scale" => cfg.snap_large_scale = val("--large-scale")?.parse()?,
                "--storage-scale" => cfg.storage_scale = val("--storage-scale")?.parse()?,
                "--storage-branches" => cfg.storage_branches = val("--storage-branches")?.parse()?,
                "--extra" => cfg.extra = true,
                "--no-extra" => cfg.extra = false,
                "--sections" => cfg.sections = val("--sections")?.split(',').map(|s| s.trim().parse()).collect::<Result<_, _>>()?,
                "--out" => cfg.out_dir = PathBuf::from(val("--out")?),
                "-h" | "--help" => {
                    println!(
                        "usage: bench [--quick] [--rounds N] [--secs N] [--large-scale S] [--storage-scale S] \
                         [--storage-branches N] [--sections 1,2,3,4] [--extra|--no-extra] [--out DIR]"
                    );
                    std::process::exit(0);
                }
                other => bail!("unknown argument {other} (try --help)"),
            }
        }
        Ok(cfg)
    }

    fn to_json(&self) -> Value {
        json!({
            "quick": self.quick,
            "tps_scale": self.tps_scale,
            "tps_secs": self.tps_secs,
            "tps_rounds": self.tps_rounds,
            "tps_clients": self.tps_clients,
            "tps_threads": 2,
            "snapshot_small_scale": self.tps_scale,
            "snapshot_large_scale": self.snap_large_scale,
            "snapshots_per_series": self.snaps,
            "snapshot_write_load_tps": self.snap_load_rate,
            "storage_scale": self.storage_scale,
            "storage_branches": self.storage_branches,
            "extra_contiguous_variant": self.extra,
            "sections": self.sections,
        })
    }
}

fn default_out_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("bench")
}

// ---------------------------------------------------------------- small helpers

static INTERRUPTED: AtomicBool = AtomicBool::new(false);
static T0: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Panics (unwinding through every guard, which stops servers and unmounts) once
/// SIGINT/SIGTERM has arrived.
fn check_interrupt() {
    if INTERRUPTED.load(Ordering::SeqCst) {
        panic!("interrupted");
    }
}

fn sleep(d: Duration) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        check_interrupt();
        std::thread::sleep((end - Instant::now()).min(Duration::from_millis(100)));
    }
}

macro_rules! log {
    ($($t:tt)*) => {{
        let t = T0.get().map(|t| t.elapsed().as_secs_f64()).unwrap_or(0.0);
        eprintln!("[bench {:>7.1}s] {}", t, format!($($t)*));
    }};
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let n = s.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

/// Nearest-rank percentile.
fn percentile(v: &[f64], p: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if s.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * s.len() as f64).ceil().max(1.0) as usize;
    s[rank.min(s.len()) - 1]
}

fn r2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}
fn r3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn parse_tps(out: &str) -> Result<f64> {
    for line in out.lines() {
        if let Some(rest) = line.trim().strip_prefix("tps = ") {
            let num = rest.split_whitespace().next().unwrap_or("");
            return num.parse().with_context(|| format!("parsing tps from {line:?}"));
        }
    }
    bail!("no 'tps = ' line in pgbench output:\n{out}")
}

fn pgbench_line(out: &str, prefix: &str) -> Option<String> {
    out.lines().find(|l| l.trim_start().starts_with(prefix)).map(|l| l.trim().to_string())
}

/// (utime + stime) of a process, in seconds.
fn proc_cpu_secs(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    let hz = pgbranch_integration::sys::clock_ticks_per_sec();
    // After ")": state(0) ppid(1) ... utime is field 14 overall -> index 11 here.
    (ticks(11) + ticks(12)) / hz
}

/// (busy, total) seconds of CPU of the whole machine (busy excludes idle, iowait, steal).
fn machine_cpu() -> (f64, f64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let line = stat.lines().next().unwrap_or("");
    let v: Vec<f64> = line.split_whitespace().skip(1).filter_map(|x| x.parse().ok()).collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0.0);
    let hz = pgbranch_integration::sys::clock_ticks_per_sec();
    let busy = g(0) + g(1) + g(2) + g(5) + g(6);
    let total: f64 = v.iter().take(8).sum();
    (busy / hz, total / hz)
}

/// CPU seconds of a postmaster and every backend it has (self, live children, reaped children).
fn postmaster_cpu_secs(pid: i32) -> f64 {
    let hz = pgbranch_integration::sys::clock_ticks_per_sec();
    let fields = |p: i32| -> Vec<f64> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
        let rest = stat.rsplit(')').next().unwrap_or("").to_string();
        rest.split_whitespace().map(|x| x.parse::<f64>().unwrap_or(0.0)).collect()
    };
    let f = fields(pid);
    let g = |f: &Vec<f64>, i: usize| f.get(i).copied().unwrap_or(0.0);
    // After ")": state(0) ppid(1) ... utime(11) stime(12) cutime(13) cstime(14)
    let mut total = g(&f, 11) + g(&f, 12) + g(&f, 13) + g(&f, 14);
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let c = fields(p);
            if g(&c, 1) as i32 == pid {
                total += g(&c, 11) + g(&c, 12);
            }
        }
    }
    total / hz
}

/// CPU of the children this process has waited for (pgbench, psql).
fn waited_children_cpu_secs() -> f64 {
    pgbranch_integration::sys::waited_children_cpu_secs()
}

/// Where the machine's CPU went during one measured run.
#[derive(Clone, Copy)]
struct CpuSnap {
    machine_busy: f64,
    machine_total: f64,
    daemon: f64,
    postgres: f64,
    clients: f64,
}

fn cpu_snap(daemon: Option<i32>, postmasters: &[i32]) -> CpuSnap {
    let (machine_busy, machine_total) = machine_cpu();
    CpuSnap {
        machine_busy,
        machine_total,
        daemon: daemon.map(proc_cpu_secs).unwrap_or(0.0),
        postgres: postmasters.iter().map(|p| postmaster_cpu_secs(*p)).sum(),
        clients: waited_children_cpu_secs(),
    }
}

fn cpu_delta(a: CpuSnap, b: CpuSnap) -> Value {
    let wall_cpus = b.machine_total - a.machine_total;
    let busy = b.machine_busy - a.machine_busy;
    let daemon = b.daemon - a.daemon;
    let postgres = b.postgres - a.postgres;
    let clients = b.clients - a.clients;
    let other = (busy - daemon - postgres - clients).max(0.0);
    json!({
        "machine_busy_share": if wall_cpus > 0.0 { r3(busy / wall_cpus) } else { 0.0 },
        "daemon_cpu_secs": r2(daemon),
        "postgres_cpu_secs": r2(postgres),
        "pgbench_cpu_secs": r2(clients),
        "other_cpu_secs": r2(other),
        "other_cpu_share": if wall_cpus > 0.0 { r3(other / wall_cpus) } else { 0.0 },
    })
}

fn du_bytes(path: &Path, apparent: bool) -> Result<u64> {
    let mut c = Command::new("du");
    c.arg("-s");
    c.arg(if apparent { "-b" } else { "-B1" });
    let out = c.arg(path).output().context("running du")?;
    if !out.status.success() {
        bail!("du {} failed: {}", path.display(), String::from_utf8_lossy(&out.stderr));
    }
    let s = String::from_utf8_lossy(&out.stdout);
    Ok(s.split_whitespace().next().unwrap_or("0").parse()?)
}

/// fdatasync latency of an 8 KiB overwrite on the disk under `dir`, right now: how busy
/// the disk is (other users of this machine share it). Returns (p50, p95) in µs.
fn fsync_probe(dir: &Path) -> (f64, f64) {
    use std::os::unix::fs::FileExt;
    let path = dir.join(format!(".bench-fsync-probe-{}", std::process::id()));
    let n = 50;
    let mut v = Vec::with_capacity(n);
    if let Ok(f) = std::fs::OpenOptions::new().create(true).truncate(true).read(true).write(true).open(&path) {
        let buf = vec![7u8; 8192];
        let ok = (0..n).all(|i| f.write_all_at(&buf, (i * 8192) as u64).is_ok()) && f.sync_all().is_ok();
        if ok {
            for i in 0..n {
                let t = Instant::now();
                if f.write_all_at(&buf, (i * 8192) as u64).is_err() || f.sync_data().is_err() {
                    break;
                }
                v.push(t.elapsed().as_secs_f64() * 1e6);
            }
        }
    }
    let _ = std::fs::remove_file(&path);
    (r2(median(&v)), r2(percentile(&v, 95.0)))
}

fn checkpoint(s: &Server) -> Result<()> {
    s.psql("postgres", "CHECKPOINT")?;
    Ok(())
}

/// A scratch directory on the same disk, removed on drop.
struct Scratch(PathBuf);
impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

// ---------------------------------------------------------------- the report

#[derive(Default)]
struct Report {
    rows: Vec<Value>,
    details: BTreeMap<String, Value>,
    errors: Vec<String>,
    notes: Vec<String>,
}

enum Target {
    /// ratio pgbranch/baseline >= x
    RatioAtLeast(f64),
    /// ratio pgbranch/baseline <= x
    RatioAtMost(f64),
    /// absolute pgbranch value <= x (in the row's unit)
    AtMost(f64),
    Info,
}

impl Report {
    fn row(&mut self, metric: &str, unit: &str, value: f64, baseline: Option<f64>, target: Target, note: &str) {
        let ratio = baseline.map(|b| value / b);
        let (target_s, pass) = match target {
            Target::RatioAtLeast(x) => (format!("≥ {x:.2}x"), ratio.map(|r| r >= x)),
            Target::RatioAtMost(x) => (format!("≤ {x:.2}x"), ratio.map(|r| r <= x)),
            Target::AtMost(x) => (format!("≤ {} {unit}", fmt_num(x)), Some(value <= x)),
            Target::Info => ("—".to_string(), None),
        };
        let result = match pass {
            Some(true) => "PASS",
            Some(false) => "MISS",
            None => "INFO",
        };
        self.rows.push(json!({
            "metric": metric,
            "unit": unit,
            "pgbranch": r3(value),
            "baseline": baseline.map(r3),
            "ratio": ratio.map(r3),
            "target": target_s,
            "result": result,
            "note": note,
        }));
    }

    fn markdown(&self, meta: &Value) -> String {
        let mut s = String::new();
        s.push_str("# pgbranch benchmark\n\n");
        s.push_str(&format!(
            "Mode: **{}** · finished {} · took {:.1} min · pgbranch binary `{}` · {} CPUs · kernel {}\n\n",
            if meta["config"]["quick"].as_bool().unwrap_or(false) { "quick (smoke test; small sizes)" } else { "full" },
            meta["finished_utc"].as_str().unwrap_or(""),
            meta["duration_secs"].as_f64().unwrap_or(0.0) / 60.0,
            meta["pgbranch_bin"].as_str().unwrap_or(""),
            meta["host"]["cpus"],
            meta["host"]["kernel"].as_str().unwrap_or(""),
        ));
        s.push_str("| metric | pgbranch | baseline | ratio | target | result |\n");
        s.push_str("|---|---:|---:|---:|---|---|\n");
        for r in &self.rows {
            let unit = r["unit"].as_str().unwrap_or("");
            let v = |x: &Value| match x.as_f64() {
                Some(f) => format!("{} {unit}", fmt_num(f)),
                None => "—".to_string(),
            };
            let ratio = match r["ratio"].as_f64() {
                Some(f) => format!("{f:.2}x"),
                None => "—".to_string(),
            };
            s.push_str(&format!(
                "| {} | {} | {} | {} | {} | {} |\n",
                r["metric"].as_str().unwrap_or(""),
                v(&r["pgbranch"]),
                v(&r["baseline"]),
                ratio,
                r["target"].as_str().unwrap_or(""),
                match r["result"].as_str().unwrap_or("") {
                    "PASS" => "PASS",
                    "MISS" => "**MISS**",
                    x => x,
                }
            ));
        }
        let notes: Vec<String> = self
            .rows
            .iter()
            .filter(|r| !r["note"].as_str().unwrap_or("").is_empty())
            .map(|r| format!("- *{}*: {}", r["metric"].as_str().unwrap_or(""), r["note"].as_str().unwrap_or("")))
            .chain(self.notes.iter().map(|n| format!("- {n}")))
            .collect();
        if !notes.is_empty() {
            s.push_str("\nNotes:\n\n");
            for n in notes {
                s.push_str(&n);
                s.push('\n');
            }
        }
        if !self.errors.is_empty() {
            s.push_str("\nErrors (sections that did not complete):\n\n");
            for e in &self.errors {
                s.push_str(&format!("- {}\n", e.replace('\n', " ")));
            }
        }
        s.push_str("\nRaw figures: bench/latest.json (`details`).\n");
        s
    }
}

fn fmt_num(x: f64) -> String {
    if x.abs() >= 1000.0 {
        format!("{:.0}", x)
    } else if x.abs() >= 100.0 {
        format!("{:.1}", x)
    } else {
        format!("{:.2}", x)
    }
}

// ---------------------------------------------------------------- daemon probes

struct Ctx {
    cfg: Cfg,
    store: TestStore,
    layout: Layout,
    rss_marks: Vec<Value>,
}

impl Ctx {
    fn status(&self) -> Result<Value> {
        let out = self.store.run(&["status", "--json"]);
        if !out.status.success() {
            bail!("pgbranch status failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    fn daemon_pid(&self) -> Option<i32> {
        self.store.daemon_pid()
    }

    fn mark_rss(&mut self, phase: &str) {
        if let Ok(st) = self.status() {
            let rss = st["rss_bytes"].as_u64().unwrap_or(0);
            let peak = st["peak_rss_bytes"].as_u64().unwrap_or(0);
            log!("daemon rss after {phase}: {:.1} MiB (peak so far {:.1} MiB)", mib(rss), mib(peak));
            self.rss_marks.push(json!({ "after": phase, "rss_bytes": rss, "peak_rss_bytes": peak }));
        }
    }

    /// One request on the control socket, never starting a daemon (this binary is not one).
    fn call(&self, req: &Request) -> Result<Value> {
        let conn = pgbranch::client::try_connect(&self.layout).context("the daemon is not answering")?;
        pgbranch::client::call_on(conn, req)
    }

    fn gc(&self) -> Result<Value> {
        self.call(&Request::Gc)
    }

    fn physical_bytes(&self) -> Result<u64> {
        self.status()?["physical_bytes"].as_u64().context("physical_bytes in status")
    }
}

// ---------------------------------------------------------------- 1. pgbench TPS

struct RunStat {
    tps: f64,
    cpu: Value,
    latency: Option<String>,
    txns: f64,
}

/// Runs pgbench on `server`, accounting the machine's CPU: ours (daemon, both postmasters
/// and their backends, pgbench) and everything else (other users, kernel threads).
fn timed_pgbench(ctx: &Ctx, server: &Server, postmasters: &[i32], args: &[&str]) -> Result<RunStat> {
    check_interrupt();
    let dpid = ctx.daemon_pid();
    let a = cpu_snap(dpid, postmasters);
    let out = server.pgbench(args)?;
    let b = cpu_snap(dpid, postmasters);
    let txns = pgbench_line(&out, "number of transactions actually processed")
        .and_then(|l| l.split(':').nth(1).and_then(|v| v.split('/').next()).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(0.0);
    Ok(RunStat { tps: parse_tps(&out)?, cpu: cpu_delta(a, b), latency: pgbench_line(&out, "latency average"), txns })
}

fn section_tps(ctx: &mut Ctx, rep: &mut Report) -> Result<Server> {
    let cfg = ctx.cfg.clone();
    let scale = cfg.tps_scale.to_string();
    log!("1. pgbench: initialising native and branch clusters at scale {scale}");
    let native = Native::init("tps")?;
    let t = Instant::now();
    native.server().pgbench(&["-i", "-q", "-s", &scale, "postgres"])?;
    let native_init = t.elapsed().as_secs_f64();
    let branch = ctx.store.new_cluster("tps");
    let t = Instant::now();
    branch.pgbench(&["-i", "-q", "-s", &scale, "postgres"])?;
    let branch_init = t.elapsed().as_secs_f64();
    log!("   pgbench -i: native {native_init:.1}s, branch {branch_init:.1}s");

    let secs = cfg.tps_secs.to_string();
    let clients = cfg.tps_clients.to_string();
    let postmasters: Vec<i32> = [native.server().pid, branch.pid].into_iter().flatten().collect();
    let mut details = serde_json::Map::new();
    details.insert("init_secs".into(), json!({ "native": r2(native_init), "branch": r2(branch_init) }));
    for (mode, extra) in [("read-write", None), ("select-only", Some("-S"))] {
        let mut args: Vec<&str> = vec!["-c", &clients, "-j", "2", "-T", &secs];
        if let Some(e) = extra {
            args.push(e);
        }
        args.push("postgres");
        let mut runs = Vec::new();
        let (mut nat, mut br) = (Vec::new(), Vec::new());
        for round in 0..cfg.tps_rounds {
            for (side, server) in [("native", native.server()), ("branch", &branch)] {
                checkpoint(native.server())?;
                checkpoint(&branch)?;
                sleep(Duration::from_secs(2));
                let probe = fsync_probe(&std::env::temp_dir());
                let st = timed_pgbench(ctx, server, &postmasters, &args)?;
                let c = &st.cpu;
                log!(
                    "   {mode} round {round} {side}: {:.0} tps (cpu s: daemon {}, postgres {}, pgbench {}, other {}; machine busy {:.0}%)",
                    st.tps,
                    c["daemon_cpu_secs"],
                    c["postgres_cpu_secs"],
                    c["pgbench_cpu_secs"],
                    c["other_cpu_secs"],
                    c["machine_busy_share"].as_f64().unwrap_or(0.0) * 100.0
                );
                if side == "native" {
                    nat.push(st.tps)
                } else {
                    br.push(st.tps)
                }
                let per_txn = |k: &str| if st.txns > 0.0 { r2(c[k].as_f64().unwrap_or(0.0) * 1e6 / st.txns) } else { 0.0 };
                runs.push(json!({
                    "round": round, "side": side, "tps": r2(st.tps), "transactions": st.txns,
                    "cpu": st.cpu,
                    "cpu_us_per_txn": { "daemon": per_txn("daemon_cpu_secs"), "postgres": per_txn("postgres_cpu_secs"), "pgbench": per_txn("pgbench_cpu_secs") },
                    "latency": st.latency,
                    "disk_fdatasync_us_before": { "p50": probe.0, "p95": probe.1 },
                }));
            }
        }
        let (mn, mb) = (median(&nat), median(&br));
        // CPU our processes spend per transaction (daemon + postgres + pgbench): less
        // sensitive to other users of the machine than tps.
        let cpu_per_txn = |side: &str| -> Vec<f64> {
            runs.iter()
                .filter(|r| r["side"] == side)
                .map(|r| {
                    let c = &r["cpu_us_per_txn"];
                    c["daemon"].as_f64().unwrap_or(0.0) + c["postgres"].as_f64().unwrap_or(0.0) + c["pgbench"].as_f64().unwrap_or(0.0)
                })
                .collect()
        };
        let (cn, cb) = (median(&cpu_per_txn("native")), median(&cpu_per_txn("branch")));
        let shares: Vec<String> = runs
            .iter()
            .map(|r| {
                format!(
                    "{} {:.0} tps (other {:.0}%)",
                    r["side"].as_str().unwrap_or(""),
                    r["tps"].as_f64().unwrap_or(0.0),
                    r["cpu"]["other_cpu_share"].as_f64().unwrap_or(0.0) * 100.0
                )
            })
            .collect();
        rep.notes.push(format!(
            "{mode} runs in order: {} — 'other' is the share of the machine's CPU used by processes that are not this benchmark's (other users, kernel threads).",
            shares.join(", ")
        ));
        details.insert(mode.into(), json!({ "runs": runs, "median_native_tps": r2(mn), "median_branch_tps": r2(mb) }));
        let target = if mode == "read-write" { 0.8 } else { 0.95 };
        rep.row(
            &format!("pgbench {mode} tps (scale {scale}, {clients} clients, -j 2, -T {secs}, median of {})", cfg.tps_rounds),
            "tps",
            mb,
            Some(mn),
            Target::RatioAtLeast(target),
            "baseline: same postgres initdb'd on ext4 in the same run; runs interleaved native, branch, …",
        );
        rep.row(&format!("CPU per {mode} transaction, daemon + postgres + pgbench (median)"), "µs", cb, Some(cn), Target::Info, "");
    }
    rep.details.insert("tps".into(), Value::Object(details));
    drop(native);
    Ok(branch)
}

// ---------------------------------------------------------------- 2. snapshots

fn snapshot_series(ctx: &Ctx, server: &Server, branch: &str, label: &str) -> Result<Value> {
    let cfg = &ctx.cfg;
    let size = du_bytes(&ctx.store.path(branch), true)?;
    log!("2. snapshots of '{branch}' ({:.2} GB) under pgbench -R {} write load", size as f64 / 1e9, cfg.snap_load_rate);
    // Settle first: whatever the load step left dirty is checkpointed and committed.
    checkpoint(server)?;
    ctx.call(&Request::Commit)?;
    sleep(Duration::from_secs(5));
    let rate = cfg.snap_load_rate.to_string();
    let load = pgbench_background(server, &["-n", "-c", "1", "-R", &rate, "-T", "100000", "postgres"]);
    sleep(Duration::from_secs(3));
    let (mut cli, mut api_wall, mut create) = (Vec::new(), Vec::new(), Vec::new());
    let mut dirty = Vec::new();
    let mut names = Vec::new();
    let postmasters: Vec<i32> = server.pid.into_iter().collect();
    let probe = fsync_probe(&std::env::temp_dir());
    let cpu0 = cpu_snap(ctx.daemon_pid(), &postmasters);
    let dirty_of = |ctx: &Ctx| -> u64 {
        ctx.call(&Request::List)
            .ok()
            .and_then(|l| l.as_array().and_then(|a| a.iter().find(|b| b["name"] == branch).map(|b| b["dirty_bytes"].as_u64().unwrap_or(0))))
            .unwrap_or(0)
    };
    for i in 0..cfg.snaps {
        check_interrupt();
        dirty.push(dirty_of(ctx));
        let name = format!("{label}-cli-{i}");
        let t = Instant::now();
        let out = ctx.store.run(&["snapshot", "create", &name, "--from", branch]);
        let wall = t.elapsed().as_secs_f64() * 1e3;
        if !out.status.success() {
            bail!("snapshot create {name}: {}", String::from_utf8_lossy(&out.stderr));
        }
        names.push(name);
        cli.push(wall);
        sleep(Duration::from_millis(250));

        let name = format!("{label}-api-{i}");
        dirty.push(dirty_of(ctx));
        let t = Instant::now();
        let data = ctx.call(&Request::CreateSnapshot { name: name.clone(), from: branch.to_string() })?;
        api_wall.push(t.elapsed().as_secs_f64() * 1e3);
        create.push(data["create_micros"].as_f64().context("create_micros in the answer")? / 1e3);
        names.push(name);
        sleep(Duration::from_millis(250));
    }
    let cpu = cpu_delta(cpu0, cpu_snap(ctx.daemon_pid(), &postmasters));
    let load_out = load.wait_killed();
    let mut del = Vec::new();
    for name in &names {
        let t = Instant::now();
        ctx.store.ok(&["snapshot", "delete", name]);
        del.push(t.elapsed().as_secs_f64() * 1e3);
    }
    let stats = |v: &[f64]| json!({ "p50": r3(median(v)), "p95": r3(percentile(v, 95.0)), "max": r3(percentile(v, 100.0)), "all": v.iter().map(|x| r3(*x)).collect::<Vec<_>>() });
    log!(
        "   {label}: cli wall p50 {:.2} ms p95 {:.2} ms; daemon create p50 {:.2} ms p95 {:.2} ms; api round trip p50 {:.2} ms",
        median(&cli),
        percentile(&cli, 95.0),
        median(&create),
        percentile(&create, 95.0),
        median(&api_wall)
    );
    Ok(json!({
        "branch": branch,
        "logical_bytes": size,
        "write_load": format!("pgbench -n -c 1 -R {} (running postgres)", cfg.snap_load_rate),
        "write_load_tail": load_out,
        "cli_wall_ms": stats(&cli),
        "daemon_create_ms": stats(&create),
        "api_round_trip_ms": stats(&api_wall),
        "delete_ms": stats(&del),
        "source_dirty_bytes_before_each": dirty,
        "cpu_during_series": cpu,
        "disk_fdatasync_us_before": { "p50": probe.0, "p95": probe.1 },
    }))
}

trait WaitKilled {
    fn wait_killed(self) -> String;
}
impl WaitKilled for Background {
    fn wait_killed(mut self) -> String {
        if let Some(c) = self.child.as_mut() {
            let _ = pgbranch_integration::sys::kill(c.id() as i32, libc::SIGINT);
        }
        let out = self.wait();
        let s = String::from_utf8_lossy(&out.stdout).to_string();
        pgbench_line(&s, "number of transactions actually processed").unwrap_or_default()
    }
}

fn section_snapshots(ctx: &mut Ctx, rep: &mut Report, small: Option<Server>) -> Result<()> {
    let cfg = ctx.cfg.clone();
    let small = match small {
        Some(s) => s,
        None => {
            log!("2. (section 1 skipped) creating the small branch at scale {}", cfg.tps_scale);
            let s = ctx.store.new_cluster("tps");
            s.pgbench(&["-i", "-q", "-s", &cfg.tps_scale.to_string(), "postgres"])?;
            s
        }
    };
    let small_res = snapshot_series(ctx, &small, "tps", "snap-small")?;
    drop(small);
    ctx.mark_rss("snapshots of the small branch");

    log!("2. loading the large branch: pgbench -i -s {} (this takes a while)", cfg.snap_large_scale);
    let large = ctx.store.new_cluster("large");
    let t = Instant::now();
    large.pgbench(&["-i", "-q", "-s", &cfg.snap_large_scale.to_string(), "postgres"])?;
    let load_secs = t.elapsed().as_secs_f64();
    log!("   loaded in {load_secs:.0}s");
    ctx.mark_rss("loading the large branch");
    let mut large_res = snapshot_series(ctx, &large, "large", "snap-large")?;
    large_res["pgbench_init_secs"] = json!(r2(load_secs));
    drop(large);
    ctx.mark_rss("snapshots of the large branch");

    let gb = |v: &Value| v["logical_bytes"].as_f64().unwrap_or(0.0) / 1e9;
    let (sgb, lgb) = (gb(&small_res), gb(&large_res));
    let p = |v: &Value, k: &str, q: &str| v[k][q].as_f64().unwrap_or(f64::NAN);
    let small_label = format!("{sgb:.2} GB branch (scale {})", cfg.tps_scale);
    let large_label = format!("{lgb:.2} GB branch (scale {}{})", cfg.snap_large_scale, if cfg.quick { ", --quick: not 3 GB" } else { "" });
    let cond = format!(
        "postgres running with a pgbench -n -c 1 -R {} write load (started after a CHECKPOINT, a commit and 5 s to settle); {} snapshots via the CLI and {} via the control socket, 250 ms apart",
        cfg.snap_load_rate, cfg.snaps, cfg.snaps
    );
    for (label, res) in [(&small_label, &small_res), (&large_label, &large_res)] {
        rep.row(&format!("snapshot create p50, CLI wall, {label}"), "ms", p(res, "cli_wall_ms", "p50"), None, Target::AtMost(10.0), &cond);
        rep.row(&format!("snapshot create p95, CLI wall, {label}"), "ms", p(res, "cli_wall_ms", "p95"), None, Target::Info, "");
        rep.row(
            &format!("snapshot create p50, daemon create_micros, {label}"),
            "ms",
            p(res, "daemon_create_ms", "p50"),
            None,
            Target::AtMost(10.0),
            "",
        );
        rep.row(
            &format!("snapshot create p95, daemon create_micros, {label}"),
            "ms",
            p(res, "daemon_create_ms", "p95"),
            None,
            Target::Info,
            "",
        );
    }
    rep.row(
        "snapshot create p50 large vs small, CLI wall",
        "ms",
        p(&large_res, "cli_wall_ms", "p50"),
        Some(p(&small_res, "cli_wall_ms", "p50")),
        Target::RatioAtMost(1.5),
        "baseline: the small branch's p50",
    );
    rep.row(
        "snapshot create p50 large vs small, daemon create_micros",
        "ms",
        p(&large_res, "daemon_create_ms", "p50"),
        Some(p(&small_res, "daemon_create_ms", "p50")),
        Target::RatioAtMost(1.5),
        "",
    );
    rep.details.insert("snapshots".into(), json!({ "small": small_res, "large": large_res }));
    Ok(())
}

// ---------------------------------------------------------------- 3. storage

/// Cuts branch `name` from `from` without the daemon starting a server on it (the
/// benchmark starts its own, as the harness does); older CLIs have no --no-start.
fn create_branch_from(ctx: &Ctx, name: &str, from: &str) -> Result<()> {
    let out = ctx.store.run(&["branch", "create", name, "--from", from, "--no-start"]);
    if out.status.success() {
        return Ok(());
    }
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    if err.contains("--no-start") {
        ctx.store.ok(&["branch", "create", name, "--from", from]);
        return Ok(());
    }
    bail!("pgbranch branch create {name} --from {from} --no-start failed: {err}")
}

fn branch_round(ctx: &Ctx, base: &str, name: &str, sql: &str) -> Result<Value> {
    check_interrupt();
    let t = Instant::now();
    create_branch_from(ctx, name, base)?;
    let create = t.elapsed().as_secs_f64();
    pg::prepare_cut(&ctx.store.path(name))?;
    let t = Instant::now();
    let mut s = ctx.store.start(name);
    let start = t.elapsed().as_secs_f64();
    let t = Instant::now();
    s.psql("postgres", sql)?;
    let update = t.elapsed().as_secs_f64();
    let t = Instant::now();
    checkpoint(&s)?;
    let ckpt = t.elapsed().as_secs_f64();
    let t = Instant::now();
    s.stop()?;
    let stop = t.elapsed().as_secs_f64();
    let wal = du_bytes(&ctx.store.path(name).join("pg_wal"), true).unwrap_or(0);
    log!(
        "   {name}: create {create:.2}s start {start:.1}s update {update:.1}s checkpoint {ckpt:.1}s stop {stop:.1}s; pg_wal {:.0} MiB",
        mib(wal)
    );
    Ok(json!({
        "name": name, "sql": sql, "create_secs": r3(create), "start_secs": r2(start), "update_secs": r2(update),
        "checkpoint_secs": r2(ckpt), "stop_secs": r2(stop), "pg_wal_bytes": wal,
    }))
}

fn unique_bytes(du: &Value) -> BTreeMap<String, u64> {
    du["branches"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|b| (b["name"].as_str().unwrap_or("").to_string(), b["unique_bytes"].as_u64().unwrap_or(0)))
        .collect()
}

fn section_storage(ctx: &mut Ctx, rep: &mut Report) -> Result<()> {
    let cfg = ctx.cfg.clone();
    let scale = cfg.storage_scale;
    let n = cfg.storage_branches;
    log!("3. storage: pgbench -i -s {scale} on branch 'base'");
    let mut base = ctx.store.new_cluster("base");
    let t = Instant::now();
    base.pgbench(&["-i", "-q", "-s", &scale.to_string(), "postgres"])?;
    let init_secs = t.elapsed().as_secs_f64();
    let accounts: u64 = base.psql("postgres", "SELECT count(*) FROM pgbench_accounts")?.parse()?;
    let heap_pages: u64 = base.psql("postgres", "SELECT relpages FROM pg_class WHERE relname = 'pgbench_accounts'")?.parse()?;
    checkpoint(&base)?;
    base.stop()?;
    drop(base);
    let gc1 = ctx.gc()?;
    let p1 = ctx.physical_bytes()?;
    let du1 = ctx.call(&Request::Du)?;
    log!("   one database: store {:.1} MiB after gc (loaded in {init_secs:.0}s)", mib(p1));

    // The same PGDATA copied to ext4.
    let scratch = Scratch(std::env::temp_dir().join(format!("pgbranch-bench-copy-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&scratch.0);
    let t = Instant::now();
    let out = Command::new("cp").arg("-a").arg(ctx.store.path("base")).arg(&scratch.0).output()?;
    if !out.status.success() {
        bail!("cp -a failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    let cp_secs = t.elapsed().as_secs_f64();
    let ext4_apparent = du_bytes(&scratch.0, true)?;
    let ext4_blocks = du_bytes(&scratch.0, false)?;
    drop(scratch);
    log!("   cp -a to ext4: {:.1} MiB (du -sb) in {cp_secs:.1}s", mib(ext4_apparent));

    // Ten branches, each updating 1% of the accounts (every 100th aid: scattered rows).
    let mut rounds = Vec::new();
    for i in 0..n {
        let sql = format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = {i}");
        rounds.push(branch_round(ctx, "base", &format!("b{i}"), &sql)?);
    }
    let gc11 = ctx.gc()?;
    let p11 = ctx.physical_bytes()?;
    let du11 = ctx.call(&Request::Du)?;
    log!("   {} databases: store {:.1} MiB after gc ({:.2}x)", n + 1, mib(p11), p11 as f64 / p1 as f64);
    ctx.mark_rss("storage: scattered 1% updates");

    rep.row(
        &format!("store bytes, {} branches (each UPDATE 1% rows, aid % 100 = i) vs 1 (scale {scale})", n + 1),
        "MiB",
        mib(p11),
        Some(mib(p1)),
        Target::RatioAtMost(1.1),
        "status physical_bytes after pgbranch gc; each branch started as its own postgres, CHECKPOINT, stopped",
    );
    rep.row(
        &format!("store bytes of one database vs du -sb of a cp -a copy on ext4 (scale {scale})"),
        "MiB",
        mib(p1),
        Some(mib(ext4_apparent)),
        Target::RatioAtMost(0.7),
        "",
    );

    let mut extra = Value::Null;
    if cfg.extra {
        // Extra, not in the brief: the same 1% of rows, but contiguous (aid ranges), to
        // separate the store's own overhead from the workload's page spread.
        log!("3. extra: {n} branches updating a contiguous 1% of aids each");
        for i in 0..n {
            ctx.store.ok(&["branch", "delete", &format!("b{i}")]);
        }
        ctx.gc()?;
        let p1b = ctx.physical_bytes()?;
        let mut rounds_c = Vec::new();
        let span = accounts / 100;
        for i in 0..n as u64 {
            let sql = format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid > {} AND aid <= {}", i * span, (i + 1) * span);
            rounds_c.push(branch_round(ctx, "base", &format!("c{i}"), &sql)?);
        }
        ctx.gc()?;
        let p11c = ctx.physical_bytes()?;
        let du11c = ctx.call(&Request::Du)?;
        // physical_bytes cannot go back to the one-database figure once the index has
        // grown (redb keeps its pages), so compare live stored block bytes instead.
        let live = |du: &Value| du["stored_block_bytes"].as_u64().unwrap_or(0);
        log!(
            "   contiguous: physical {:.1} MiB (was {:.1} MiB after deleting b*); live block bytes {:.1} MiB vs {:.1} MiB ({:.2}x)",
            mib(p11c),
            mib(p1b),
            mib(live(&du11c)),
            mib(live(&du1)),
            live(&du11c) as f64 / live(&du1) as f64
        );
        rep.row(
            &format!("live stored block bytes, {} branches (each UPDATE 1% rows, aid % 100 = i) vs 1", n + 1),
            "MiB",
            mib(live(&du11)),
            Some(mib(live(&du1))),
            Target::Info,
            "du --json stored_block_bytes: compressed file blocks only (no index, no tree nodes, no garbage)",
        );
        rep.row(
            &format!("live stored block bytes, {} branches (each UPDATE a contiguous 1% of aids) vs 1 — extra", n + 1),
            "MiB",
            mib(live(&du11c)),
            Some(mib(live(&du1))),
            Target::Info,
            "not in the brief: the same number of rows per branch, but ~1% of the heap pages",
        );
        extra = json!({ "physical_bytes_1_after_deleting_scattered": p1b, "physical_bytes_n": p11c, "stored_block_bytes_1": live(&du1), "stored_block_bytes_n": live(&du11c), "rounds": rounds_c, "unique_bytes": unique_bytes(&du11c) });
        for i in 0..n {
            ctx.store.ok(&["branch", "delete", &format!("c{i}")]);
        }
    } else {
        for i in 0..n {
            ctx.store.ok(&["branch", "delete", &format!("b{i}")]);
        }
    }
    ctx.store.ok(&["branch", "delete", "base"]);
    ctx.gc()?;

    rep.details.insert(
        "storage".into(),
        json!({
            "scale": scale,
            "accounts_rows": accounts,
            "accounts_heap_pages": heap_pages,
            "pgbench_init_secs": r2(init_secs),
            "physical_bytes_1": p1,
            "physical_bytes_n": p11,
            "branches": n,
            "gc_1": gc1,
            "gc_n": gc11,
            "du_1": du1,
            "unique_bytes_n": unique_bytes(&du11),
            "compression_ratio_n": du11["compression_ratio"],
            "stored_block_bytes_n": du11["stored_block_bytes"],
            "tree_node_bytes_n": du11["tree_node_bytes"],
            "ext4_copy": { "du_sb": ext4_apparent, "du_B1": ext4_blocks, "cp_secs": r2(cp_secs),
                           "cp_mib_per_sec": r2(mib(ext4_apparent) / cp_secs) },
            "rounds": rounds,
            "extra_contiguous": extra,
        }),
    );
    Ok(())
}

// ---------------------------------------------------------------- main

fn host() -> Value {
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string();
    let cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem = std::fs::read_to_string("/proc/meminfo").unwrap_or_default().lines().next().unwrap_or("").to_string();
    json!({ "kernel": kernel, "cpus": cpus, "mem": mem })
}

fn utc_now() -> String {
    let out = Command::new("date").args(["-u", "+%Y-%m-%dT%H:%M:%SZ"]).output();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string()).unwrap_or_default()
}

fn run_section<T>(rep: &mut Report, what: &str, f: impl FnOnce(&mut Report) -> Result<T>) -> Option<T> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        rep.errors.push(format!("{what}: skipped (interrupted)"));
        return None;
    }
    let r = std::panic::catch_unwind(AssertUnwindSafe(|| f(rep)));
    let err = match r {
        Ok(Ok(v)) => return Some(v),
        Ok(Err(e)) => format!("{e:#}"),
        Err(p) => p
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "panic".into()),
    };
    log!("section '{what}' failed: {err}");
    rep.errors.push(format!("{what}: {err}"));
    None
}

fn main() -> Result<()> {
    T0.get_or_init(Instant::now);
    let cfg = Cfg::parse()?;
    pgbranch_integration::sys::on_interrupt(on_signal);
    let started_unix = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let started = Instant::now();
    let bin = pgbranch_bin();
    log!("pgbranch benchmark ({}), binary {}", if cfg.quick { "quick" } else { "full" }, bin.display());
    let store = TestStore::new("bench");
    let layout = Layout { root: store.dir.clone() };
    let mut ctx = Ctx { cfg: cfg.clone(), store, layout, rss_marks: Vec::new() };
    let mut rep = Report::default();
    // Start the daemon (any verb does).
    ctx.status()?;
    ctx.mark_rss("start");

    let want = |s: u32| cfg.sections.contains(&s);
    if want(3) {
        run_section(&mut rep, "3. storage", |rep| section_storage(&mut ctx, rep));
    }
    let mut small = None;
    if want(1) {
        small = run_section(&mut rep, "1. pgbench tps", |rep| section_tps(&mut ctx, rep));
        ctx.mark_rss("pgbench tps");
    }
    if want(2) {
        run_section(&mut rep, "2. snapshots", |rep| section_snapshots(&mut ctx, rep, small.take()));
    }
    drop(small);

    // 4. Peak RSS over the whole run: VmHWM of the one daemon that served everything.
    if want(4) {
        let st = ctx.status();
        match st {
            Ok(st) => {
                let peak = st["peak_rss_bytes"].as_u64().unwrap_or(0);
                ctx.mark_rss("end");
                rep.row(
                    "daemon peak RSS (VmHWM) over the whole run",
                    "MiB",
                    mib(peak),
                    Some(300.0),
                    Target::RatioAtMost(1.0),
                    "baseline: the 300 MB budget + configured block cache (none: 0); one daemon served every section",
                );
            }
            Err(e) => rep.errors.push(format!("4. peak rss: {e:#}")),
        }
    }
    rep.details.insert("daemon_rss".into(), Value::Array(ctx.rss_marks.clone()));
    let interrupted = INTERRUPTED.load(Ordering::SeqCst);
    drop(ctx); // stops the daemon, detaches mounts, removes the store

    let meta = json!({
        "benchmark": "pgbranch",
        "started_unix": started_unix,
        "finished_utc": utc_now(),
        "duration_secs": r2(started.elapsed().as_secs_f64()),
        "pgbranch_bin": bin,
        "host": host(),
        "config": cfg.to_json(),
        "interrupted": interrupted,
    });
    let md = rep.markdown(&meta);
    let mut report = meta.clone();
    report["results"] = Value::Array(rep.rows.clone());
    report["details"] = json!(rep.details);
    report["errors"] = json!(rep.errors);
    let json_text = serde_json::to_string_pretty(&report)?;
    println!("{json_text}");
    println!();
    println!("{md}");
    if !interrupted {
        std::fs::create_dir_all(&cfg.out_dir)?;
        std::fs::write(cfg.out_dir.join("latest.json"), format!("{json_text}\n"))?;
        std::fs::write(cfg.out_dir.join("latest.md"), &md)?;
        log!("wrote {} and {}", cfg.out_dir.join("latest.json").display(), cfg.out_dir.join("latest.md").display());
    }
    if !rep.errors.is_empty() {
        std::process::exit(2);
    }
    Ok(())
}
