//! Human-readable output of each verb; `--json` prints the daemon's typed answer as
//! JSON (the same fields the daemon sent).

use anyhow::Result;
use serde::Serialize;

use crate::api::{BranchInfo, BranchLog, Created, FollowerMode, FollowerStatus, GcDone, Space, Status, Usage, Verified};

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

fn json_out(v: &impl Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(v)?);
    Ok(())
}

pub fn created(c: &Created) {
    println!("{}", c.path.display());
    if let Some(url) = &c.url {
        println!("{url}");
    }
}

/// A retention window for people: "none", "90 s", "15 min", "2 h", "7 d".
pub fn window(secs: u64) -> String {
    match secs {
        0 => "none".into(),
        s if s % 86_400 == 0 => format!("{} d", s / 86_400),
        s if s % 3600 == 0 => format!("{} h", s / 3600),
        s if s % 60 == 0 => format!("{} min", s / 60),
        s => format!("{s} s"),
    }
}

pub fn branch_log(log: &BranchLog, json: bool) -> Result<()> {
    if json {
        return json_out(log);
    }
    let whose = if log.own_window { "its own" } else { "the store's default" };
    println!("branch {}: history {} ({whose}), {} retained points", log.name, window(log.history_secs), log.points.len());
    if log.points.is_empty() {
        return Ok(());
    }
    println!("{:<22} {:>12}  {:<18} {:<22} ROOT", "AT (UTC)", "CHANGED", "WAL UP TO", "LAST COMMIT (UTC)");
    for p in log.points.iter().rev() {
        let last = p.last_commit_unix_micros.map_or_else(|| "-".to_string(), pgbranch_fs::history::format_utc);
        println!("{:<22} {:>12}  {:<18} {:<22} {}", p.at, bytes(p.changed_bytes), p.lsn.as_deref().unwrap_or("-"), last, &p.root[..16]);
    }
    Ok(())
}

pub fn list(branches: &[BranchInfo], json: bool) -> Result<()> {
    if json {
        return json_out(&branches);
    }
    println!("{:<24} {:<9} {:<16} PATH", "NAME", "KIND", "PARENT");
    for b in branches {
        println!("{:<24} {:<9} {:<16} {}", b.name, b.kind.as_str(), b.parent.as_deref().unwrap_or("-"), b.path.display());
    }
    Ok(())
}

pub fn du(u: &Usage, json: bool) -> Result<()> {
    if json {
        return json_out(u);
    }
    println!(
        "{:<24} {:<9} {:>12} {:>12} {:>12} {:>12} {:>18}",
        "NAME", "KIND", "LOGICAL", "UNIQUE", "SHARED", "UNCOMMITTED", "HISTORY (POINTS)"
    );
    for b in &u.branches {
        let history = if b.history_points == 0 { "-".to_string() } else { format!("{} ({})", bytes(b.history_bytes), b.history_points) };
        println!(
            "{:<24} {:<9} {:>12} {:>12} {:>12} {:>12} {:>18}",
            b.name,
            b.kind.as_str(),
            bytes(b.logical_bytes),
            bytes(b.unique_bytes),
            bytes(b.shared_bytes),
            bytes(b.uncommitted_bytes),
            history,
        );
    }
    if let Some(e) = &u.commit_error {
        println!(
            "\nnot everything could be committed ({e}): the figures count each branch's last commit; see `pgbranch status` for the disk"
        );
    }
    println!();
    println!("store physical size: {}", bytes(u.physical_bytes));
    println!(
        "unreferenced:        {} (reached by no branch, snapshot or retained point: `pgbranch gc` removes it)",
        bytes(u.unreferenced_bytes)
    );
    println!("compression ratio:   {:.2}x", u.compression_ratio);
    println!("dedup ratio:         {:.2}x", u.dedup_ratio);
    Ok(())
}

pub fn gc(g: &GcDone, json: bool) -> Result<()> {
    if json {
        return json_out(g);
    }
    println!(
        "removed {} objects, rewrote {} packs; store {} -> {}",
        g.objects_removed,
        g.packs_rewritten,
        bytes(g.bytes_before),
        bytes(g.bytes_after),
    );
    Ok(())
}

pub fn verify(v: &Verified, json: bool) -> Result<()> {
    if json {
        json_out(v)?;
    } else {
        println!("checked {} objects", v.objects_checked);
        for d in &v.damaged {
            let offset = d.offset.map(|o| format!(" at offset {o}")).unwrap_or_default();
            println!("DAMAGED: branch {} file {}{offset}: {}", d.branch, d.path, d.error);
        }
        if v.damaged.is_empty() {
            println!("no damage found");
        }
    }
    if !v.damaged.is_empty() {
        anyhow::bail!("{} damaged block(s) found", v.damaged.len());
    }
    Ok(())
}

pub fn status(s: &Status, json: bool) -> Result<()> {
    if json {
        return json_out(s);
    }
    println!("daemon:    pid {}, up {}s", s.pid, s.uptime_secs);
    println!("store:     {}", s.store.display());
    println!("size:      {} in {} objects", bytes(s.physical_bytes), s.objects);
    println!("memory:    {} (peak {})", bytes(s.rss_bytes), bytes(s.peak_rss_bytes));
    space(&s.space);
    if let Some(g) = &s.gc {
        gc_status(g);
    }
    println!(
        "history:   {}",
        if s.history_secs == 0 {
            "none by default (see `pgbranch branch set NAME --history`)".to_string()
        } else {
            format!("{} by default", window(s.history_secs))
        }
    );
    match &s.follower {
        None => println!("follower:  none (see `pgbranch clone stream`)"),
        Some(f) => follower(f),
    }
    println!("branches:  {}", s.branches.len());
    for b in &s.branches {
        let server = match (b.running, b.port) {
            (true, Some(p)) => format!("postgres on :{p}"),
            _ => "-".to_string(),
        };
        println!("  {:<22} {:<9} {:<18} {}", b.name, b.kind.as_str(), server, b.path.display());
    }
    Ok(())
}

/// The garbage collector's line of `status`.
fn gc_status(g: &crate::api::GcStatus) {
    let mode = match g.mode {
        crate::api::GcMode::Auto => "automatic",
        crate::api::GcMode::Manual => "manual (`pgbranch gc`)",
    };
    let state = if g.running { ", collecting now" } else { "" };
    let last = match (&g.last, g.last_finished_unix_micros) {
        (Some(r), Some(at)) => format!(
            "; last at {} ({} ms): {} -> {}, {} objects removed",
            pgbranch_fs::history::format_utc(at),
            g.last_duration_millis,
            bytes(r.bytes_before),
            bytes(r.bytes_after),
            r.objects_removed
        ),
        _ => "; no collection yet".to_string(),
    };
    println!("gc:        {mode}{state}, {} collections, {} freed{last}", g.collections, bytes(g.bytes_freed_total));
    if let Some(next) = g.next_at_bytes {
        println!("           live {}; next collection when the store passes {}", bytes(g.live_bytes), bytes(next));
    }
    if let Some(e) = &g.last_error {
        println!("           last error: {e}");
    }
}

/// The follower's lines of `status`.
fn follower(f: &FollowerStatus) {
    println!("follower:  {} from {} (slot {})", f.state.as_str(), f.source, f.slot);
    if f.mode == FollowerMode::Logical {
        println!(
            "masking:   {} ({} validation); {} rows in {} transactions applied, {:.0} rows/s",
            f.config.as_deref().unwrap_or("?"),
            if f.strict == Some(false) { "relaxed" } else { "strict" },
            f.rows_applied.unwrap_or(0),
            f.transactions_applied.unwrap_or(0),
            f.rows_per_sec.unwrap_or(0.0)
        );
        if let Some(e) = &f.stream_error {
            println!("stream:    {e}");
        }
    }
    if let Some(lag) = f.lag_bytes {
        println!(
            "lag:       {} ({:.2} s); source at {}, main replayed {}",
            bytes(lag),
            f.lag_seconds.unwrap_or(0.0),
            f.source_lsn.as_deref().unwrap_or(""),
            f.replay_lsn.as_deref().unwrap_or("")
        );
    }
    if let Some(e) = &f.error {
        println!("lag:       unknown ({e})");
    }
    for r in f.settings_raised.iter().flatten() {
        println!(
            "settings:  raised {} {} -> {} on main at {} (the source raised it; main restarted)",
            r.name,
            r.from,
            r.to,
            unix_time(r.at_unix)
        );
    }
    if let Some(n) = f.standby_restarts.filter(|n| *n > 0) {
        println!("standby:   exited by itself {n} time(s) and was started again (see its log in STORE/run/main/postgres.log)");
    }
}

/// A unix time as UTC `YYYY-MM-DD HH:MM:SS`.
fn unix_time(t: i64) -> String {
    let (days, secs) = (t.div_euclid(86400), t.rem_euclid(86400));
    let date = pgbranch_replicator::civil_date::civil_date(days);
    format!("{date} {:02}:{:02}:{:02}Z", secs / 3600, secs % 3600 / 60, secs % 60)
}

/// The store's space lines of `status`: free bytes, the full flag, what holds the space.
fn space(space: &Space) {
    let s = match space {
        Space::Unknown { error } => {
            println!("disk:      unknown ({error})");
            return;
        }
        Space::Measured(s) => s,
    };
    println!(
        "disk:      {} free of {}{}",
        bytes(s.fs_free_bytes),
        bytes(s.fs_total_bytes),
        if s.full {
            format!(
                " -- FULL (under {}): commits fail, changes wait in intent logs; free space with `pgbranch branch delete` + `pgbranch gc`",
                bytes(s.full_margin_bytes)
            )
        } else {
            String::new()
        }
    );
    let logs: Vec<String> = s.intent_logs.iter().map(|l| format!("{} {}", l.branch, bytes(l.bytes))).collect();
    println!(
        "held by:   packs {}, index {}, catalog {}, reserve {}, other {}; intent logs: {}",
        bytes(s.packs_bytes),
        bytes(s.index_bytes),
        bytes(s.catalog_bytes),
        bytes(s.reserve_bytes),
        bytes(s.other_bytes),
        if logs.is_empty() { "none".to_string() } else { logs.join(", ") }
    );
}
