//! Human-readable output of each verb; `--json` prints the daemon's data as is.

use anyhow::Result;
use serde_json::Value;

pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn json_out(v: &Value) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn created(data: &Value) {
    println!("{}", data["path"].as_str().unwrap_or_default());
    if let Some(url) = data["url"].as_str() {
        println!("{url}");
    }
}

pub fn list(data: &Value, json: bool) -> Result<()> {
    if json {
        return json_out(data);
    }
    println!("{:<24} {:<9} {:<16} PATH", "NAME", "KIND", "PARENT");
    for b in data.as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<9} {:<16} {}",
            b["name"].as_str().unwrap_or(""),
            b["kind"].as_str().unwrap_or(""),
            b["parent"].as_str().unwrap_or("-"),
            b["path"].as_str().unwrap_or(""),
        );
    }
    Ok(())
}

pub fn du(data: &Value, json: bool) -> Result<()> {
    if json {
        return json_out(data);
    }
    println!("{:<24} {:<9} {:>12} {:>12} {:>12}", "NAME", "KIND", "LOGICAL", "UNIQUE", "SHARED");
    for b in data["branches"].as_array().into_iter().flatten() {
        println!(
            "{:<24} {:<9} {:>12} {:>12} {:>12}",
            b["name"].as_str().unwrap_or(""),
            b["kind"].as_str().unwrap_or(""),
            bytes(b["logical_bytes"].as_u64().unwrap_or(0)),
            bytes(b["unique_bytes"].as_u64().unwrap_or(0)),
            bytes(b["shared_bytes"].as_u64().unwrap_or(0)),
        );
    }
    println!();
    println!("store physical size: {}", bytes(data["physical_bytes"].as_u64().unwrap_or(0)));
    println!("compression ratio:   {:.2}x", data["compression_ratio"].as_f64().unwrap_or(1.0));
    println!("dedup ratio:         {:.2}x", data["dedup_ratio"].as_f64().unwrap_or(1.0));
    Ok(())
}

pub fn gc(data: &Value, json: bool) -> Result<()> {
    if json {
        return json_out(data);
    }
    println!(
        "removed {} objects, rewrote {} packs; store {} -> {}",
        data["objects_removed"],
        data["packs_rewritten"],
        bytes(data["bytes_before"].as_u64().unwrap_or(0)),
        bytes(data["bytes_after"].as_u64().unwrap_or(0)),
    );
    Ok(())
}

pub fn verify(data: &Value, json: bool) -> Result<()> {
    let damaged = data["damaged"].as_array().cloned().unwrap_or_default();
    if json {
        json_out(data)?;
    } else {
        println!("checked {} objects", data["objects_checked"]);
        for d in &damaged {
            let offset = d["offset"].as_u64().map(|o| format!(" at offset {o}")).unwrap_or_default();
            println!(
                "DAMAGED: branch {} file {}{offset}: {}",
                d["branch"].as_str().unwrap_or(""),
                d["path"].as_str().unwrap_or(""),
                d["error"].as_str().unwrap_or("")
            );
        }
        if damaged.is_empty() {
            println!("no damage found");
        }
    }
    if !damaged.is_empty() {
        anyhow::bail!("{} damaged block(s) found", damaged.len());
    }
    Ok(())
}

pub fn status(data: &Value, json: bool) -> Result<()> {
    if json {
        return json_out(data);
    }
    println!("daemon:    pid {}, up {}s", data["pid"], data["uptime_secs"]);
    println!("store:     {}", data["store"].as_str().unwrap_or(""));
    println!("size:      {} in {} objects", bytes(data["physical_bytes"].as_u64().unwrap_or(0)), data["objects"]);
    println!(
        "memory:    {} (peak {})",
        bytes(data["rss_bytes"].as_u64().unwrap_or(0)),
        bytes(data["peak_rss_bytes"].as_u64().unwrap_or(0))
    );
    space(&data["space"]);
    let f = &data["follower"];
    if f.is_null() {
        println!("follower:  none (see `pgbranch clone stream`)");
    } else {
        println!(
            "follower:  {} from {} (slot {})",
            f["state"].as_str().unwrap_or("?"),
            f["source"].as_str().unwrap_or(""),
            f["slot"].as_str().unwrap_or("")
        );
        if f["mode"] == "logical" {
            println!(
                "masking:   {} ({} validation); {} rows in {} transactions applied, {:.0} rows/s",
                f["config"].as_str().unwrap_or("?"),
                if f["strict"] == false { "relaxed" } else { "strict" },
                f["rows_applied"].as_u64().unwrap_or(0),
                f["transactions_applied"].as_u64().unwrap_or(0),
                f["rows_per_sec"].as_f64().unwrap_or(0.0)
            );
            if let Some(e) = f["stream_error"].as_str() {
                println!("stream:    {e}");
            }
        }
        if let Some(lag) = f["lag_bytes"].as_u64() {
            println!(
                "lag:       {} ({:.2} s); source at {}, main replayed {}",
                bytes(lag),
                f["lag_seconds"].as_f64().unwrap_or(0.0),
                f["source_lsn"].as_str().unwrap_or(""),
                f["replay_lsn"].as_str().unwrap_or("")
            );
        }
        if let Some(e) = f["error"].as_str() {
            println!("lag:       unknown ({e})");
        }
        for r in f["settings_raised"].as_array().into_iter().flatten() {
            println!(
                "settings:  raised {} {} -> {} on main at {} (the source raised it; main restarted)",
                r["name"].as_str().unwrap_or("?"),
                r["from"],
                r["to"],
                unix_time(r["at_unix"].as_i64().unwrap_or(0))
            );
        }
        if let Some(n) = f["standby_restarts"].as_u64().filter(|n| *n > 0) {
            println!("standby:   exited by itself {n} time(s) and was started again (see its log in STORE/run/main/postgres.log)");
        }
    }
    let branches = data["branches"].as_array().cloned().unwrap_or_default();
    println!("branches:  {}", branches.len());
    for b in branches {
        let server = match (b["running"].as_bool(), b["port"].as_u64()) {
            (Some(true), Some(p)) => format!("postgres on :{p}"),
            _ => "-".to_string(),
        };
        println!(
            "  {:<22} {:<9} {:<18} {}",
            b["name"].as_str().unwrap_or(""),
            b["kind"].as_str().unwrap_or(""),
            server,
            b["path"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

/// A unix time as UTC `YYYY-MM-DD HH:MM:SS`.
fn unix_time(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86400), t.rem_euclid(86400));
    let date = pgbranch_replicator::civil_date::civil_date(days);
    format!("{date} {:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// The store's space lines of `status`: free bytes, the full flag, what holds the space.
fn space(s: &Value) {
    if let Some(e) = s["error"].as_str() {
        println!("disk:      unknown ({e})");
        return;
    }
    let n = |k: &str| s[k].as_u64().unwrap_or(0);
    println!(
        "disk:      {} free of {}{}",
        bytes(n("fs_free_bytes")),
        bytes(n("fs_total_bytes")),
        if s["full"] == true {
            format!(
                " -- FULL (under {}): commits fail, changes wait in intent logs; free space with `pgbranch branch delete` + `pgbranch gc`",
                bytes(n("full_margin_bytes"))
            )
        } else {
            String::new()
        }
    );
    let logs: Vec<String> = s["intent_logs"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|l| format!("{} {}", l["branch"].as_str().unwrap_or("?"), bytes(l["bytes"].as_u64().unwrap_or(0))))
        .collect();
    println!(
        "held by:   packs {}, index {}, catalog {}, other {}; intent logs: {}",
        bytes(n("packs_bytes")),
        bytes(n("index_bytes")),
        bytes(n("catalog_bytes")),
        bytes(n("other_bytes")),
        if logs.is_empty() { "none".to_string() } else { logs.join(", ") }
    );
}
