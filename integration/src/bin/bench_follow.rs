//! Follower benchmark (issue #3): branch-create-to-first-query time for a small and a
//! large source, initial copy throughput of `clone stream` against `pg_basebackup` into
//! a plain directory in the same run, and replay lag while pgbench writes on the source.
//! Writes bench/follow.json and bench/follow.md.
//!
//!   scripts/bench-follow [--quick] [--small SCALE] [--large SCALE]

use std::process::Command;
use std::time::{Duration, Instant};

use pgbranch_integration::*;
use serde_json::json;

fn percentile(v: &mut [f64], p: f64) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    if v.is_empty() {
        return f64::NAN;
    }
    v[((v.len() - 1) as f64 * p).round() as usize]
}

/// Time from `branch create` to the first successful query through its URL.
fn branch_to_query(store: &TestStore, tag: &str, n: usize) -> Vec<f64> {
    let mut out = Vec::new();
    for i in 0..n {
        let name = format!("{tag}{i}");
        let t = Instant::now();
        let url = store.ok(&["branch", "create", &name]).lines().last().unwrap().to_string();
        while psql_url(&url, "SELECT 1").is_err() {
            std::thread::sleep(Duration::from_millis(5));
        }
        out.push(t.elapsed().as_secs_f64());
        store.ok(&["branch", "delete", &name]);
    }
    out
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let small: u32 = bench_arg("--small").unwrap_or(if quick { 5 } else { 20 });
    let large: u32 = bench_arg("--large").unwrap_or(if quick { 20 } else { 200 });
    let mut rows = Vec::new();
    let mut details = serde_json::Map::new();
    let started = Instant::now();

    let mut p50s = Vec::new();
    for (label, scale) in [("small", small), ("large", large)] {
        eprintln!("[bench-follow] {label}: source at pgbench scale {scale}");
        let source = SourceDb::start(&format!("bf-{label}"), &[]);
        source.server.pgbench(&["-i", "-q", "-s", &scale.to_string(), "postgres"]).unwrap();
        source.server.psql("postgres", "CHECKPOINT").unwrap();
        let size: u64 = source.server.psql("postgres", "SELECT pg_database_size('postgres')").unwrap().parse().unwrap();

        // Initial copy: pg_basebackup into a plain directory vs clone stream, same source.
        let (bin, owner) = pg_env();
        let plain = source.dir.join("plain-copy");
        owner.private_dir(&plain).unwrap();
        let mut bb = owner.command(bin.tool("pg_basebackup"));
        bb.arg("-d").arg(source.url()).arg("-D").arg(&plain).args(["-X", "stream", "-c", "fast", "-w"]);
        let t = Instant::now();
        owner.run(&mut bb, "pg_basebackup").unwrap();
        let native = t.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&plain);
        let store = TestStore::new(&format!("bf-{label}"));
        let t = Instant::now();
        store.ok(&["clone", "stream", "--source-url", &source.url()]);
        let ours = t.elapsed().as_secs_f64();
        let mb = size as f64 / 1e6;
        rows.push(json!({"metric": format!("initial copy throughput, {label} source ({:.2} GB, scale {scale})", size as f64 / 1e9),
            "pgbranch": format!("{:.1} MB/s", mb / ours), "baseline": format!("{:.1} MB/s", mb / native),
            "ratio": native / ours, "target": "≥ 0.80x", "pass": native / ours >= 0.8}));

        // Branch create -> first query, with light write load on the source.
        let load = pgbench_background(&source.server, &["-n", "-c", "1", "-R", "20", "-T", "600", "postgres"]);
        std::thread::sleep(Duration::from_secs(2));
        let mut times = branch_to_query(&store, "q", if quick { 5 } else { 10 });
        drop(load);
        let p50 = percentile(&mut times, 0.5);
        let p95 = percentile(&mut times, 0.95);
        p50s.push(p50);
        rows.push(json!({"metric": format!("branch create → first query p50, {label} source (scale {scale})"),
            "pgbranch": format!("{:.0} ms", p50 * 1000.0), "baseline": "—", "ratio": null, "target": "≤ 1 s", "pass": p50 <= 1.0}));
        rows.push(json!({"metric": format!("branch create → first query p95, {label} source (scale {scale})"),
            "pgbranch": format!("{:.0} ms", p95 * 1000.0), "baseline": "—", "ratio": null, "target": "—", "pass": null}));
        details.insert(format!("branch_to_query_{label}_secs"), json!(times));

        if label == "small" {
            // Replay lag while pgbench writes on the source.
            let load = pgbench_background(&source.server, &["-n", "-c", "4", "-j", "2", "-T", if quick { "15" } else { "40" }, "postgres"]);
            std::thread::sleep(Duration::from_secs(2));
            let mut lag = Vec::new();
            let mut lag_bytes = Vec::new();
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(if quick { 10 } else { 35 }) {
                let st = store.json(&["status"]);
                if let Some(s) = st["follower"]["lag_seconds"].as_f64() {
                    lag.push(s);
                    lag_bytes.push(st["follower"]["lag_bytes"].as_u64().unwrap_or(0) as f64);
                }
                std::thread::sleep(Duration::from_millis(250));
            }
            drop(load);
            let p99 = percentile(&mut lag, 0.99);
            let p50l = percentile(&mut lag, 0.5);
            rows.push(json!({"metric": format!("replay lag p99 while pgbench -c 4 writes (scale {scale}); p50 {:.3} s", p50l),
                "pgbranch": format!("{:.3} s", p99), "baseline": "—", "ratio": null, "target": "≤ 1 s", "pass": p99 <= 1.0}));
            details.insert("lag_seconds_samples".into(), json!(lag));
            details.insert("lag_bytes_p99".into(), json!(percentile(&mut lag_bytes, 0.99)));
        }
        store.ok(&["clone", "stop", "--drop-slot"]);
    }
    let ratio = p50s[1] / p50s[0];
    rows.push(json!({"metric": "branch create → first query p50, large vs small", "pgbranch": format!("{:.0} ms", p50s[1] * 1000.0),
        "baseline": format!("{:.0} ms", p50s[0] * 1000.0), "ratio": ratio, "target": "≤ 1.50x", "pass": ratio <= 1.5}));

    let mut md = format!(
        "# pgbranch follower benchmark\n\nMode: **{}** · took {:.1} min · 2 CPUs shared\n\n| metric | pgbranch | baseline | ratio | target | result |\n|---|---:|---:|---:|---|---|\n",
        if quick { "quick" } else { "full" },
        started.elapsed().as_secs_f64() / 60.0
    );
    md.push_str(&pgbranch_integration::bench_table_rows(&rows));
    let report = json!({"rows": rows, "details": details, "quick": quick});
    write_bench_report("follow", &report, &md);
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    println!("{md}");
    let _ = Command::new("true").status();
}
