//! Masked follower benchmark (issue #4, acceptance 6): initial copy and change apply in
//! rows/s with masking on, against `pg_dump | pg_restore` of the same data in the same
//! run. Writes bench/mask.json and bench/mask.md.
//!
//! The source is production-shaped: `users` (unique email, names, phones, addresses)
//! and `orders` (a foreign key to users) with their indexes, every column covered by
//! the transform config (strict). Measured:
//! - baseline: `pg_dump -Fc | pg_restore` (one job, the usual pipe) into an empty
//!   database of a fresh postgres on local ext4; also `pg_dump -Fd -j 2` +
//!   `pg_restore -j 2` (INFO). Wall clock of schema + data + indexes.
//! - pgbranch: wall clock of the whole `clone stream --config` on a fresh store
//!   (checks, roles and schema, masked COPY, indexes, handoff to the daemon); the copy
//!   phase alone from the clone's own summary line (INFO).
//! - apply: a workload of inserts, updates and deletes in transactions of 1000 rows,
//!   (a) live: from the workload's start until main has applied all of it, and
//!   (b) backlog: the same workload run with the stream stopped (`clone stop`, the slot
//!   keeps the changes), then `clone reload` and the time to drain it. The source's own
//!   execution time of the workload is the baseline column.
//!
//!   scripts/bench-mask [--quick] [--users N] [--orders N] [--inserts N] [--updates N] [--deletes N]

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use pgbranch_integration::masked::{logical_source, write_config};
use pgbranch_integration::*;
use serde_json::{json, Value};

/// Rows per transaction of the change workload.
const TXN: u64 = 1000;

fn say(s: &str) {
    eprintln!("[bench-mask] {s}");
}

// ---------------------------------------------------------------------------------
// CPU accounting from /proc, to say where the time goes.

const TICK: f64 = 0.01; // sysconf(_SC_CLK_TCK) = 100 on Linux

/// (comm, ppid, own utime+stime, reaped children's cutime+cstime) of a pid or a task.
fn stat_of(path: &str) -> Option<(String, i32, u64, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let comm = s[s.find('(')? + 1..s.rfind(')')?].to_string();
    let f: Vec<&str> = s[s.rfind(')')? + 1..].split_whitespace().collect();
    let n = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    Some((comm, f.get(1)?.parse().ok()?, n(11) + n(12), n(13) + n(14)))
}

/// CPU ticks of `root` and all its live descendants, plus what its reaped children used.
fn tree_ticks(root: i32) -> u64 {
    let mut parent: BTreeMap<i32, (i32, u64)> = BTreeMap::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        if let Some((_, ppid, own, _)) = stat_of(&format!("/proc/{pid}/stat")) {
            parent.insert(pid, (ppid, own));
        }
    }
    let Some(&(_, root_own)) = parent.get(&root) else { return 0 };
    let reaped = stat_of(&format!("/proc/{root}/stat")).map_or(0, |s| s.3);
    let mut total = root_own + reaped;
    for (&pid, &(_, own)) in &parent {
        let mut p = pid;
        let mut depth = 0;
        while let Some(&(pp, _)) = parent.get(&p) {
            if pp == root {
                total += own;
                break;
            }
            p = pp;
            depth += 1;
            if pp <= 1 || depth > 16 {
                break;
            }
        }
    }
    total
}

/// CPU ticks of each thread of `pid`, by thread name.
fn thread_ticks(pid: i32) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        if let Some((comm, _, own, _)) = stat_of(&format!("{}/stat", e.path().display())) {
            *out.entry(comm).or_insert(0) += own;
        }
    }
    out
}

/// CPU of this process's reaped children (the clone CLI, pg_dump, pg_restore, psql).
fn children_ticks() -> u64 {
    stat_of("/proc/self/stat").map_or(0, |s| s.3)
}

fn postmaster_pid(data: &Path) -> Option<i32> {
    std::fs::read_to_string(data.join("postmaster.pid")).ok()?.lines().next()?.trim().parse().ok()
}

/// A CPU snapshot of the processes in play; `cpu_since` turns two into seconds.
#[derive(Clone, Default)]
struct Cpu {
    source: u64,
    target: u64,
    clients: u64,
    daemon: u64,
    daemon_threads: BTreeMap<String, u64>,
    /// Busy ticks of the whole machine (all CPUs), to show what else ran.
    machine: u64,
}

fn machine_busy() -> u64 {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let f: Vec<u64> = s.lines().next().unwrap_or_default().split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal
    [0, 1, 2, 5, 6, 7].iter().filter_map(|&i| f.get(i)).sum()
}

fn cpu_now(source: i32, target: Option<i32>, daemon: Option<i32>) -> Cpu {
    Cpu {
        source: tree_ticks(source),
        target: target.map_or(0, tree_ticks),
        clients: children_ticks(),
        daemon: daemon.and_then(|d| stat_of(&format!("/proc/{d}/stat"))).map_or(0, |s| s.2),
        daemon_threads: daemon.map(thread_ticks).unwrap_or_default(),
        machine: machine_busy(),
    }
}

fn cpu_since(a: &Cpu, b: &Cpu, target_name: &str, clients_name: &str) -> Value {
    let d = |x: u64, y: u64| (y.saturating_sub(x)) as f64 * TICK;
    let mut v = serde_json::Map::new();
    v.insert("source postgres".into(), json!(d(a.source, b.source)));
    v.insert(target_name.into(), json!(d(a.target, b.target)));
    v.insert(clients_name.into(), json!(d(a.clients, b.clients)));
    let ours = d(a.source, b.source) + d(a.target, b.target) + d(a.clients, b.clients) + d(a.daemon, b.daemon);
    if a.machine > 0 {
        v.insert("everything else on the machine".into(), json!((d(a.machine, b.machine) - ours).max(0.0)));
    }
    if b.daemon > 0 {
        v.insert("pgbranch daemon (all threads)".into(), json!(d(a.daemon, b.daemon)));
        // Group FUSE workers and other numbered threads by their name's stem.
        let mut threads: BTreeMap<String, f64> = BTreeMap::new();
        for (name, t) in &b.daemon_threads {
            let stem = name.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_').to_string();
            *threads.entry(stem).or_insert(0.0) += d(a.daemon_threads.get(name).copied().unwrap_or(0), *t);
        }
        threads.retain(|_, s| *s >= 0.05);
        v.insert("daemon threads".into(), json!(threads));
    }
    Value::Object(v)
}

fn cpu_summary(v: &Value) -> String {
    let mut parts = Vec::new();
    for (k, x) in v.as_object().into_iter().flatten() {
        if let Some(s) = x.as_f64() {
            parts.push(format!("{k} {s:.1}s"));
        } else if let Some(o) = x.as_object() {
            let t: Vec<String> = o.iter().map(|(n, s)| format!("{n} {:.1}s", s.as_f64().unwrap_or(0.0))).collect();
            parts.push(format!("{k}: {}", t.join(", ")));
        }
    }
    parts.join("; ")
}

/// (on-CPU ns, waiting-for-a-CPU ns) of a task, from /proc/.../schedstat.
fn schedstat(path: &str) -> Option<(u64, u64)> {
    let s = std::fs::read_to_string(path).ok()?;
    let mut f = s.split_whitespace().map(|v| v.parse::<u64>().ok());
    Some((f.next()??, f.next()??))
}

/// Samples, every 20 ms until `stop`, what the apply pipeline is doing: main's client
/// sessions and the source's walsender (pg_stat_activity state / wait event, "CPU" when
/// active without a wait event) and the daemon's follower thread (running or not).
/// Returns the share of samples of each, in percent, and per role the seconds spent on
/// a CPU and waiting in the run queue for one (CPU starvation).
fn sample_pipeline(main_url: &str, source_url: &str, daemon: Option<i32>, stop: &AtomicBool) -> Value {
    let q = |kind: &str| {
        format!(
            "SELECT pid, coalesce(state, '?') || ' / ' || coalesce(wait_event, CASE WHEN state = 'active' THEN 'CPU' ELSE '-' END) \
             FROM pg_stat_activity WHERE backend_type = '{kind}' AND pid <> pg_backend_pid()"
        )
    };
    let (main_q, source_q) = (q("client backend"), q("walsender"));
    let mut main = postgres::Client::connect(main_url, postgres::NoTls).ok();
    let mut source = postgres::Client::connect(source_url, postgres::NoTls).ok();
    let mut counts: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
    // (role, /proc path) -> (first, last) schedstat
    type Span = ((u64, u64), (u64, u64));
    let mut sched: BTreeMap<(String, String), Span> = BTreeMap::new();
    let mut seen = |role: String, path: String| {
        if let Some(v) = schedstat(&path) {
            sched.entry((role, path)).and_modify(|e| e.1 = v).or_insert((v, v));
        }
    };
    let mut n = 0u64;
    let mut bump = |group: &str, what: String| *counts.entry(group.into()).or_default().entry(what).or_insert(0) += 1;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        for (group, client, sql) in [("main session", &mut main, &main_q), ("source walsender", &mut source, &source_q)] {
            if let Some(rows) = client.as_mut().and_then(|c| c.query(sql.as_str(), &[]).ok()) {
                for r in rows {
                    let pid: i32 = r.get(0);
                    seen(group.to_string(), format!("/proc/{pid}/schedstat"));
                    bump(group, r.get(1));
                }
            }
        }
        if let Some(d) = daemon {
            let mut state = "absent".to_string();
            for e in std::fs::read_dir(format!("/proc/{d}/task")).into_iter().flatten().flatten() {
                let text = std::fs::read_to_string(e.path().join("stat")).unwrap_or_default();
                let comm = text.split('(').nth(1).and_then(|r| r.split(')').next()).unwrap_or("").to_string();
                let stem = comm.trim_end_matches(|c: char| c.is_ascii_digit() || c == '-' || c == '_');
                seen(format!("daemon {stem}"), format!("{}/schedstat", e.path().display()));
                if comm == "follower" {
                    let st = text.rsplit(')').next().and_then(|r| r.split_whitespace().next()).unwrap_or("?");
                    state = if st == "R" { "running".into() } else { format!("waiting ({st})") };
                }
            }
            bump("daemon follower thread", state);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let pct: BTreeMap<String, BTreeMap<String, f64>> = counts
        .into_iter()
        .map(|(g, m)| (g, m.into_iter().map(|(k, c)| (k, (c as f64 * 1000.0 / n.max(1) as f64).round() / 10.0)).collect()))
        .collect();
    let mut by_role: BTreeMap<String, (f64, f64)> = BTreeMap::new();
    for ((role, _), (first, last)) in sched {
        let e = by_role.entry(role).or_insert((0.0, 0.0));
        e.0 += last.0.saturating_sub(first.0) as f64 / 1e9;
        e.1 += last.1.saturating_sub(first.1) as f64 / 1e9;
    }
    let sched: BTreeMap<String, Value> = by_role
        .into_iter()
        .filter(|(_, (cpu, wait))| cpu + wait >= 0.05)
        .map(|(r, (cpu, wait))| (r, json!({"on_cpu_secs": cpu, "runqueue_wait_secs": wait})))
        .collect();
    json!({"samples": n, "percent": pct, "scheduler": sched})
}

fn sched_summary(v: &Value) -> String {
    let t: Vec<String> = v["scheduler"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(r, x)| {
            format!(
                "{r} {:.1}s on CPU / {:.1}s waiting for one",
                x["on_cpu_secs"].as_f64().unwrap_or(0.0),
                x["runqueue_wait_secs"].as_f64().unwrap_or(0.0)
            )
        })
        .collect();
    t.join("; ")
}

fn pipeline_summary(v: &Value) -> String {
    let mut parts = Vec::new();
    for (g, m) in v["percent"].as_object().into_iter().flatten() {
        let mut items: Vec<(String, f64)> =
            m.as_object().into_iter().flatten().map(|(k, x)| (k.clone(), x.as_f64().unwrap_or(0.0))).collect();
        items.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap());
        let t: Vec<String> = items.iter().filter(|(_, p)| *p >= 1.0).map(|(k, p)| format!("{k} {p:.0}%")).collect();
        parts.push(format!("{g}: {}", t.join(", ")));
    }
    parts.join("; ")
}

/// Samples, every 50 ms until `stop`, the process titles of the postgres serving
/// `data` (found by its command line): how long its backends spent in each command
/// (COPY, CREATE INDEX, ALTER TABLE, CHECKPOINT...), in seconds of backend time.
fn sample_commands(data: &Path, stop: &AtomicBool) -> Value {
    let needle = format!("-D\0{}\0", data.display());
    let mut postmaster: Option<i32> = None;
    let mut secs: BTreeMap<String, f64> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let mut procs: Vec<(i32, i32, String)> = Vec::new();
        for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let Some((_, ppid, _, _)) = stat_of(&format!("/proc/{pid}/stat")) else { continue };
            let cmd = String::from_utf8_lossy(&std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default()).to_string();
            procs.push((pid, ppid, cmd));
        }
        if postmaster.is_none_or(|pm| !procs.iter().any(|p| p.0 == pm)) {
            postmaster = procs.iter().find(|p| p.2.contains(&needle)).map(|p| p.0);
        }
        if let Some(pm) = postmaster {
            for (_, _, title) in procs.iter().filter(|p| p.1 == pm) {
                let title = title.trim_end_matches('\0').trim();
                if !title.starts_with("postgres: ") {
                    continue; // just forked, no title yet
                }
                let what = if let Some(i) = title.find("[local] ").or_else(|| title.find(") ")) {
                    let rest = &title[i..];
                    rest[rest.find(' ').map_or(0, |j| j + 1)..].trim().to_string()
                } else {
                    title.trim_start_matches("postgres: ").to_string()
                };
                let what = if what.starts_with("parallel worker") { "parallel worker".to_string() } else { what };
                if what.starts_with("idle") || what.is_empty() {
                    continue;
                }
                // Background processes are always there; count only what works.
                if ["checkpointer", "background writer", "walwriter", "autovacuum launcher", "logical replication launcher"]
                    .contains(&what.as_str())
                {
                    continue;
                }
                *secs.entry(what).or_insert(0.0) += 0.05;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    secs.retain(|_, v| *v >= 0.1);
    json!(secs)
}

// ---------------------------------------------------------------------------------
// The source's data and workload.

const SCHEMA: &str = "
CREATE TABLE users (
    id bigserial,
    email text NOT NULL,
    full_name text NOT NULL,
    phone text,
    address text,
    created_at timestamptz NOT NULL DEFAULT now(),
    plan text NOT NULL DEFAULT 'free',
    balance numeric(12,2) NOT NULL DEFAULT 0
);
CREATE TABLE orders (
    id bigserial,
    user_id bigint NOT NULL,
    email text NOT NULL,
    amount numeric(12,2) NOT NULL,
    quantity integer NOT NULL,
    note text,
    created_at timestamptz NOT NULL DEFAULT now()
);";

fn email_of(v: &str) -> String {
    format!(
        "'user' || {v} || '.' || substr(md5({v}::text), 1, 8) || '@' || (ARRAY['gmail.com','yahoo.com','outlook.com','corp-mail.example'])[1 + {v} % 4]"
    )
}

fn users_insert(n: u64) -> String {
    format!(
        "INSERT INTO users (email, full_name, phone, address, created_at, plan, balance)
         SELECT {email},
                (ARRAY['Alice','Bob','Carol','David','Erin','Frank','Grace','Heidi','Ivan','Judy'])[1 + i % 10] || ' ' ||
                (ARRAY['Smith','Jones','Garcia','Miller','Davis','Lopez','Wilson','Anderson','Taylor','Moore','Martin'])[1 + (i / 10) % 11],
                '+1 (' || lpad((200 + (i * 7919) % 800)::text, 3, '0') || ') 555-' || lpad((i % 10000)::text, 4, '0'),
                (1 + i % 9999) || ' ' || (ARRAY['Main','Oak','Pine','Maple','Cedar','Elm','Lake','Hill'])[1 + i % 8] || ' ' ||
                (ARRAY['St','Ave','Rd','Blvd'])[1 + (i / 8) % 4] || ', ' || (ARRAY['Springfield','Portland','Austin','Denver','Boston','Madison'])[1 + i % 6],
                timestamptz '2019-01-01 00:00:00+00' + (i % 2000) * interval '1 day' + ((i * 7) % 86400) * interval '1 second',
                (ARRAY['free','free','pro','team','enterprise'])[1 + (i * 31) % 5],
                ((i * 37) % 1000000) / 100.0
         FROM generate_series(1::bigint, {n}) i",
        email = email_of("i")
    )
}

fn orders_insert(n: u64, users: u64) -> String {
    format!(
        "INSERT INTO orders (user_id, email, amount, quantity, note, created_at)
         SELECT u, {email}, ((i * 13) % 50000) / 100.0, 1 + i % 9,
                CASE WHEN i % 3 = 0 THEN NULL ELSE 'order ' || i || ': ' || (ARRAY['gift wrap please','leave at the door','call on arrival','fragile, handle with care'])[1 + i % 4] END,
                timestamptz '2020-06-01 00:00:00+00' + (i % 1500) * interval '1 day' + ((i * 11) % 86400) * interval '1 second'
         FROM (SELECT i, 1 + (i * 7919) % {users} AS u FROM generate_series(1::bigint, {n}) i) s",
        email = email_of("u")
    )
}

const CONFIG: &str = "transformations:
  table_transformers:
    - schema: public
      table: users
      column_transformers:
        id: {name: keep}
        email: {name: neosync_email, parameters: {preserve_domain: false, preserve_length: false}}
        full_name: {name: neosync_fullname, parameters: {preserve_length: false}}
        phone: {name: phone}
        address: {name: address}
        created_at: {name: date_noise, parameters: {days: 30}}
        plan: {name: keep}
        balance: {name: keep}
    - schema: public
      table: orders
      column_transformers:
        id: {name: keep}
        user_id: {name: keep}
        email: {name: neosync_email, parameters: {preserve_domain: false, preserve_length: false}}
        amount: {name: keep}
        quantity: {name: int_noise, parameters: {min: 0, max: 2}}
        note: {name: string}
        created_at: {name: keep}
";

#[derive(Clone, Copy)]
struct Sizes {
    users: u64,
    orders: u64,
    inserts: u64,
    updates: u64,
    deletes: u64,
}

impl Sizes {
    fn txns(n: u64) -> u64 {
        n.div_ceil(TXN)
    }
    /// Row changes one round of the workload makes (whole transactions of TXN rows).
    fn changes(&self) -> u64 {
        (Self::txns(self.inserts) + Self::txns(self.updates) + Self::txns(self.deletes)) * TXN
    }
    /// Transactions of each kind on users (even ones) and orders (odd ones).
    fn split(n: u64) -> (u64, u64) {
        let t = Self::txns(n);
        (t.div_ceil(2), t / 2)
    }
}

/// One round of the change workload: inserts, updates and deletes in transactions of
/// TXN rows, interleaved. Rounds touch disjoint rows.
fn workload(s: &Sizes, round: u64) -> String {
    let (u_ins, o_ins) = Sizes::split(s.inserts);
    let (u_upd, o_upd) = Sizes::split(s.updates);
    let del = Sizes::txns(s.deletes);
    let mut ins = Vec::new();
    for j in 0..u_ins.max(o_ins) {
        let (a, b) = (j * TXN + 1, (j + 1) * TXN);
        if j < u_ins {
            ins.push(format!(
                "BEGIN; INSERT INTO users (email, full_name, phone, address, created_at, plan, balance) \
                 SELECT 'new{round}.' || i || '.' || substr(md5(i::text), 1, 6) || '@fastmail.example', 'New Customer ' || i, \
                 '+1 (415) 555-' || lpad((i % 10000)::text, 4, '0'), i || ' Market St, San Francisco', now(), 'free', 0 \
                 FROM generate_series({a}::bigint, {b}) i; COMMIT;"
            ));
        }
        if j < o_ins {
            ins.push(format!(
                "BEGIN; INSERT INTO orders (user_id, email, amount, quantity, note, created_at) \
                 SELECT 1 + (i * 104729) % {users}, 'buyer' || i || '@fastmail.example', (i % 50000) / 100.0, 1 + i % 5, 'reorder ' || i, now() \
                 FROM generate_series({a}::bigint, {b}) i; COMMIT;",
                users = s.users
            ));
        }
    }
    let mut upd = Vec::new();
    for j in 0..u_upd.max(o_upd) {
        if j < u_upd {
            let a = (round * u_upd + j) * TXN + 1;
            upd.push(format!(
                "BEGIN; UPDATE users SET balance = balance + 1.50, plan = 'pro', phone = '+1 (212) 555-0199' WHERE id BETWEEN {a} AND {}; COMMIT;",
                a + TXN - 1
            ));
        }
        if j < o_upd {
            let a = (round * o_upd + j) * TXN + 1;
            upd.push(format!(
                "BEGIN; UPDATE orders SET amount = amount + 1, note = 'updated: refunded shipping' WHERE id BETWEEN {a} AND {}; COMMIT;",
                a + TXN - 1
            ));
        }
    }
    let mut dels = Vec::new();
    for j in 0..del {
        let top = s.orders - (round * del + j) * TXN;
        dels.push(format!("BEGIN; DELETE FROM orders WHERE id BETWEEN {} AND {top}; COMMIT;", top - TXN + 1));
    }
    let mut out = String::new();
    for k in 0..ins.len().max(upd.len()).max(dels.len()) {
        for list in [&ins, &upd, &dels] {
            if let Some(stmt) = list.get(k) {
                out.push_str(stmt);
                out.push('\n');
            }
        }
    }
    out
}

/// Runs a SQL file on `server` with psql as the postgres user; returns its wall time.
fn run_sql_file(server: &Server, file: &Path) -> f64 {
    let mut cmd = server.owner.command(server.bin.tool("psql"));
    cmd.args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
        .arg(&server.socket_dir)
        .arg("-p")
        .arg(server.port.to_string())
        .args(["-d", "postgres", "-f"])
        .arg(file)
        .stdout(Stdio::null());
    let t = Instant::now();
    server.owner.run(&mut cmd, "psql -f workload").unwrap();
    t.elapsed().as_secs_f64()
}

fn count(server: &Server, sql: &str) -> u64 {
    server.psql("postgres", sql).unwrap().trim().parse().unwrap()
}

/// Builds the source's tables, rows and indexes; returns its database size in bytes.
fn fill_source(source: &Server, s: &Sizes) -> u64 {
    source.psql("postgres", SCHEMA).unwrap();
    std::thread::scope(|sc| {
        sc.spawn(|| source.psql("postgres", &users_insert(s.users)).unwrap());
        sc.spawn(|| source.psql("postgres", &orders_insert(s.orders, s.users)).unwrap());
    });
    std::thread::scope(|sc| {
        sc.spawn(|| {
            source
                .psql(
                    "postgres",
                    "ALTER TABLE users ADD PRIMARY KEY (id); ALTER TABLE users ADD CONSTRAINT users_email_key UNIQUE (email); \
                     CREATE INDEX users_created_at_idx ON users (created_at)",
                )
                .unwrap()
        });
        sc.spawn(|| {
            source
                .psql(
                    "postgres",
                    "ALTER TABLE orders ADD PRIMARY KEY (id); CREATE INDEX orders_user_id_idx ON orders (user_id); \
                     CREATE INDEX orders_created_at_idx ON orders (created_at)",
                )
                .unwrap()
        });
    });
    source.psql("postgres", "ALTER TABLE orders ADD CONSTRAINT orders_user_id_fkey FOREIGN KEY (user_id) REFERENCES users (id)").unwrap();
    source.psql("postgres", "VACUUM (ANALYZE, FREEZE)").unwrap();
    source.psql("postgres", "CHECKPOINT").unwrap();
    source.psql("postgres", "SELECT pg_database_size('postgres')").unwrap().parse().unwrap()
}

// ---------------------------------------------------------------------------------
// Baseline: pg_dump | pg_restore into a fresh local postgres.

fn conn_args(cmd: &mut Command, server: &Server, db: &str) {
    cmd.arg("-h").arg(&server.socket_dir).arg("-p").arg(server.port.to_string()).args(["-U", "postgres", "-d", db]);
}

/// `pg_dump -Fc | pg_restore` (one job, streamed); returns the wall time.
fn dump_pipe_restore(source: &Server, target: &Server, db: &str) -> f64 {
    let mut dump = source.owner.command(source.bin.tool("pg_dump"));
    dump.arg("-Fc");
    conn_args(&mut dump, source, "postgres");
    let mut restore = target.owner.command(target.bin.tool("pg_restore"));
    restore.arg("--exit-on-error");
    conn_args(&mut restore, target, db);
    let t = Instant::now();
    let mut d = dump.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let r = restore.stdin(d.stdout.take().unwrap()).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let restored = r.wait_with_output().unwrap();
    let dumped = d.wait_with_output().unwrap();
    let secs = t.elapsed().as_secs_f64();
    assert!(dumped.status.success(), "pg_dump failed: {}", String::from_utf8_lossy(&dumped.stderr));
    assert!(restored.status.success(), "pg_restore failed: {}", String::from_utf8_lossy(&restored.stderr));
    secs
}

/// `pg_dump -Fd -j 2` to a directory, then `pg_restore -j 2`; returns (dump, restore) wall times.
fn dump_dir_restore(source: &Server, target: &Server, work: &Path, db: &str) -> (f64, f64) {
    let dir = work.join("dumps");
    source.owner.private_dir(&dir).unwrap();
    let out = dir.join("fd");
    let mut dump = source.owner.command(source.bin.tool("pg_dump"));
    dump.args(["-Fd", "-j", "2", "-f"]).arg(&out);
    conn_args(&mut dump, source, "postgres");
    let t = Instant::now();
    source.owner.run(&mut dump, "pg_dump -Fd -j 2").unwrap();
    let dumped = t.elapsed().as_secs_f64();
    let mut restore = target.owner.command(target.bin.tool("pg_restore"));
    restore.args(["-j", "2", "--exit-on-error"]);
    conn_args(&mut restore, target, db);
    restore.arg(&out);
    let t = Instant::now();
    target.owner.run(&mut restore, "pg_restore -j 2").unwrap();
    let restored = t.elapsed().as_secs_f64();
    let _ = std::fs::remove_dir_all(&dir);
    (dumped, restored)
}

// ---------------------------------------------------------------------------------

/// Seconds parsed from `{prefix}<number>s` in `line`.
fn secs_after(line: &str, prefix: &str) -> Option<f64> {
    let rest = &line[line.find(prefix)? + prefix.len()..];
    let num: String = rest.chars().take_while(|c| c.is_ascii_digit() || *c == '.').collect();
    num.parse().ok()
}

fn follower(store: &TestStore) -> Value {
    store.json(&["status"])["follower"].clone()
}

/// Polls the follower until it has applied `rows` rows; returns when, or None on
/// error/timeout. Also returns the peak rows/s the daemon reported.
fn wait_applied(store: &TestStore, rows: u64, timeout: Duration) -> (Option<Instant>, f64, Value) {
    let t = Instant::now();
    let mut peak: f64 = 0.0;
    loop {
        let f = follower(store);
        peak = peak.max(f["rows_per_sec"].as_f64().unwrap_or(0.0));
        if f["rows_applied"].as_u64().unwrap_or(0) >= rows {
            return (Some(Instant::now()), peak, f);
        }
        if f["state"] == "error" || t.elapsed() > timeout {
            return (None, peak, f);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Stops main's postgres through the daemon before the store is dropped: `pgbranch stop`
/// stops the background committer before the servers, and a shutdown checkpoint of many
/// dirty buffers then waits on the write throttle (5 s per write) for a very long time.
struct StopMainFirst<'a>(&'a TestStore);

impl Drop for StopMainFirst<'_> {
    fn drop(&mut self) {
        let _ = self.0.run(&["branch", "stop", "main"]);
    }
}

/// pg_wal_lsn_diff(b, a) on `server`-side text LSNs, computed here.
fn lsn_bytes(a: &str, b: &str) -> u64 {
    let p = |s: &str| {
        let (hi, lo) = s.trim().split_once('/').unwrap_or(("0", "0"));
        (u64::from_str_radix(hi, 16).unwrap_or(0) << 32) | u64::from_str_radix(lo, 16).unwrap_or(0)
    };
    p(b).saturating_sub(p(a))
}

fn rate(rows: u64, secs: f64) -> String {
    format!("{:.0} rows/s", rows as f64 / secs)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let d = |full: u64| if quick { full / 10 } else { full };
    let s = Sizes {
        users: bench_arg("--users").unwrap_or(d(1_000_000)),
        orders: bench_arg("--orders").unwrap_or(d(2_000_000)),
        inserts: bench_arg("--inserts").unwrap_or(d(200_000)),
        updates: bench_arg("--updates").unwrap_or(d(100_000)),
        deletes: bench_arg("--deletes").unwrap_or(d(50_000)),
    };
    let (u_upd, o_upd) = Sizes::split(s.updates);
    assert!(2 * u_upd * TXN <= s.users, "--updates too large for --users (two rounds touch disjoint rows)");
    assert!(2 * (o_upd + Sizes::txns(s.deletes)) * TXN <= s.orders, "--updates/--deletes too large for --orders");
    let mut rows = Vec::new();
    let mut details = serde_json::Map::new();
    let started = Instant::now();
    let total_rows = s.users + s.orders;

    // The source.
    say(&format!("source: {} users + {} orders", s.users, s.orders));
    let source = logical_source("bm");
    let t = Instant::now();
    let size = fill_source(&source.server, &s);
    let gb = size as f64 / 1e9;
    say(&format!("source filled: {gb:.2} GB in {:.1}s", t.elapsed().as_secs_f64()));
    details.insert(
        "source".into(),
        json!({"users": s.users, "orders": s.orders, "database_bytes": size, "fill_secs": t.elapsed().as_secs_f64()}),
    );
    let source_pm = source.server.pid.unwrap();

    // Baseline: a fresh postgres on local ext4, default settings but main's max_wal_size
    // (main also gets data checksums and wal_level=minimal).
    say("baseline: pg_dump -Fc | pg_restore into a fresh local postgres");
    let (one_job, fd_dump, fd_restore, baseline_cpu) = {
        let target = SourceDb::start("bm-restore", &["max_wal_size = '2GB'"]);
        target.server.psql("postgres", "CREATE DATABASE restored TEMPLATE template0").unwrap();
        target.server.psql("postgres", "CREATE DATABASE restored_j2 TEMPLATE template0").unwrap();
        let target_pm = target.server.pid;
        let c0 = cpu_now(source_pm, target_pm, None);
        let one_job = dump_pipe_restore(&source.server, &target.server, "restored");
        let c1 = cpu_now(source_pm, target_pm, None);
        let got = target.server.psql("restored", "SELECT (SELECT count(*) FROM users) + (SELECT count(*) FROM orders)").unwrap();
        assert_eq!(got.parse::<u64>().unwrap(), total_rows, "pg_restore restored every row");
        say(&format!("  {one_job:.1}s; now pg_dump -Fd -j 2 + pg_restore -j 2"));
        target.server.psql("postgres", "DROP DATABASE restored").unwrap();
        target.server.psql("postgres", "CHECKPOINT").unwrap();
        let (fd_dump, fd_restore) = dump_dir_restore(&source.server, &target.server, &target.dir, "restored_j2");
        say(&format!("  {:.1}s ({fd_dump:.1}s dump + {fd_restore:.1}s restore)", fd_dump + fd_restore));
        (one_job, fd_dump, fd_restore, cpu_since(&c0, &c1, "restore target postgres", "pg_dump + pg_restore"))
    };
    details.insert(
        "baseline".into(),
        json!({"pg_dump_Fc_pipe_pg_restore_secs": one_job, "pg_dump_Fd_j2_secs": fd_dump, "pg_restore_j2_secs": fd_restore, "cpu_secs_one_job": baseline_cpu}),
    );

    // pgbranch: the whole masked clone on a fresh store.
    say("pgbranch: clone stream --config (masked)");
    let store = TestStore::new("bm");
    let _stop_main = StopMainFirst(&store);
    let config = write_config(&source.dir, "transform.yaml", CONFIG);
    let url = source.url();
    let c0 = cpu_now(source_pm, None, None);
    let t = Instant::now();
    let sampling = AtomicBool::new(false);
    let main_data = store.dir.join("mnt").join("main");
    let (out, clone_wall, clone_commands) = std::thread::scope(|sc| {
        let p = sc.spawn(|| sample_commands(&main_data, &sampling));
        let out = store.run(&["clone", "stream", "--source-url", &url, "--config", config.to_str().unwrap()]);
        let wall = t.elapsed().as_secs_f64();
        sampling.store(true, Ordering::Relaxed);
        (out, wall, p.join().unwrap())
    });
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "clone stream failed:\n{}{stderr}", String::from_utf8_lossy(&out.stdout));
    let main_url = String::from_utf8_lossy(&out.stdout).lines().last().unwrap().trim().to_string();
    let daemon = store.daemon_pid();
    let main_pm = postmaster_pid(&store.path("main"));
    let c1 = cpu_now(source_pm, main_pm, daemon);
    let clone_cpu = cpu_since(
        &Cpu { source: c0.source, clients: c0.clients, machine: c0.machine, ..Cpu::default() },
        &c1,
        "main postgres",
        "clone CLI (copy + masking) and its pg_dump/psql",
    );
    let summary = stderr.lines().find(|l| l.starts_with("copied ")).unwrap_or_default().to_string();
    let schema_line = stderr.lines().find(|l| l.starts_with("main: schema")).unwrap_or_default();
    let copy_secs = secs_after(&summary, " in ").unwrap_or(f64::NAN);
    let clone_total = secs_after(&summary, "total ").unwrap_or(f64::NAN);
    let schema_secs = secs_after(schema_line, "copied (").unwrap_or(f64::NAN);
    say(&format!("  {clone_wall:.1}s: {summary}"));
    let copy_rows: u64 = summary.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(total_rows);
    details.insert(
        "clone".into(),
        json!({"wall_secs": clone_wall, "summary": summary, "phases_secs": {
            "checks_and_daemon_start": clone_wall - clone_total,
            "initdb_roles_pre_data_schema": schema_secs,
            "masked_copy": copy_secs,
            // The summary's copy time covers the COPY only; after it: post-data, sequences, checkpoint, handoff.
            "publication_slot_post_data_indexes_handoff": clone_total - schema_secs - copy_secs,
        }, "cpu_secs": clone_cpu, "main_backend_secs_by_command": clone_commands}),
    );

    let ratio = one_job / clone_wall;
    rows.push(json!({"metric": format!("initial copy, {total_rows} rows ({gb:.2} GB): whole `clone stream --config` (masked) vs `pg_dump -Fc | pg_restore` to ext4"),
        "pgbranch": rate(total_rows, clone_wall), "baseline": rate(total_rows, one_job), "ratio": ratio, "target": "≥ 1.00x", "pass": ratio >= 1.0}));
    rows.push(
        json!({"metric": format!("same, copy phase only (masked COPY, {copy_secs:.1}s of {clone_wall:.1}s; no schema, indexes, handoff)"),
        "pgbranch": rate(copy_rows, copy_secs), "baseline": "—", "ratio": null, "target": "—", "pass": null}),
    );
    let fd = fd_dump + fd_restore;
    rows.push(json!({"metric": format!("same, vs `pg_dump -Fd -j 2` + `pg_restore -j 2` ({fd_dump:.1}s + {fd_restore:.1}s)"),
        "pgbranch": rate(total_rows, clone_wall), "baseline": rate(total_rows, fd), "ratio": fd / clone_wall, "target": "—", "pass": null}));

    // Apply, live: the workload runs while the stream applies.
    let changes = s.changes();
    let what = format!(
        "{} inserts, {} updates, {} deletes in transactions of {TXN}",
        Sizes::txns(s.inserts) * TXN,
        Sizes::txns(s.updates) * TXN,
        Sizes::txns(s.deletes) * TXN
    );
    let timeout = Duration::from_secs(900);
    let live_file = source.dir.join("workload-0.sql");
    std::fs::write(&live_file, workload(&s, 0)).unwrap();
    let before = follower(&store)["rows_applied"].as_u64().unwrap_or(0);
    say(&format!("apply, live: {changes} changes ({what}) while the stream runs"));
    let c0 = cpu_now(source_pm, main_pm, daemon);
    let t = Instant::now();
    let sampling = AtomicBool::new(false);
    let (live_src, (live_done, live_peak, live_f), live_pipe) = std::thread::scope(|sc| {
        let p = sc.spawn(|| sample_pipeline(&main_url, &url, daemon, &sampling));
        let h = sc.spawn(|| run_sql_file(&source.server, &live_file));
        let w = wait_applied(&store, before + changes, timeout);
        sampling.store(true, Ordering::Relaxed);
        (h.join().unwrap(), w, p.join().unwrap())
    });
    let c1 = cpu_now(source_pm, main_pm, daemon);
    let live = live_done.map(|x| x.duration_since(t).as_secs_f64());
    say(&format!("  source ran it in {live_src:.1}s; applied on main after {live:?} s"));
    let live_cpu = cpu_since(&c0, &c1, "main postgres", "psql workload + status polls");
    details.insert("apply_live".into(), json!({"changes": changes, "source_secs": live_src, "applied_secs": live, "daemon_peak_rows_per_sec": live_peak, "follower": live_f, "cpu_secs": live_cpu, "pipeline_states": live_pipe}));
    rows.push(json!({"metric": format!("change apply, live: {changes} changes ({what}), workload start → all applied on main; baseline: the source running it"),
        "pgbranch": live.map_or("timeout".into(), |x| rate(changes, x)), "baseline": rate(changes, live_src),
        "ratio": live.map(|x| live_src / x), "target": "—", "pass": null}));

    // Apply, backlog: the same workload with the stream stopped, then drained.
    say("apply, backlog: clone stop, workload on the source, clone reload, drain");
    store.ok(&["clone", "stop"]);
    let drain_file = source.dir.join("workload-1.sql");
    std::fs::write(&drain_file, workload(&s, 1)).unwrap();
    let src_lsn0 = source.server.psql("postgres", "SELECT pg_current_wal_lsn()").unwrap();
    let drain_src = run_sql_file(&source.server, &drain_file);
    let src_wal = lsn_bytes(&src_lsn0, &source.server.psql("postgres", "SELECT pg_current_wal_lsn()").unwrap());
    let main_lsn0 = psql_url(&main_url, "SELECT pg_current_wal_lsn()").unwrap();
    source.server.psql("postgres", "CHECKPOINT").unwrap();
    let c0 = cpu_now(source_pm, main_pm, daemon);
    let t = Instant::now();
    let sampling = AtomicBool::new(false);
    let (reload_secs, (drain_done, drain_peak, drain_f), drain_pipe) = std::thread::scope(|sc| {
        let p = sc.spawn(|| sample_pipeline(&main_url, &url, daemon, &sampling));
        store.ok(&["clone", "reload", "--config", config.to_str().unwrap()]);
        let reload_secs = t.elapsed().as_secs_f64();
        let w = wait_applied(&store, changes, timeout);
        sampling.store(true, Ordering::Relaxed);
        (reload_secs, w, p.join().unwrap())
    });
    let c1 = cpu_now(source_pm, main_pm, daemon);
    let drain = drain_done.map(|x| x.duration_since(t).as_secs_f64());
    let main_wal = lsn_bytes(&main_lsn0, &psql_url(&main_url, "SELECT pg_current_wal_lsn()").unwrap());
    say(&format!("  source ran it in {drain_src:.1}s; drained in {drain:?} s (reload command {reload_secs:.2}s)"));
    let drain_cpu = cpu_since(&c0, &c1, "main postgres", "clone reload CLI + status polls");
    details.insert(
        "apply_backlog".into(),
        json!({"changes": changes, "source_secs": drain_src, "drain_secs": drain, "reload_command_secs": reload_secs,
               "daemon_peak_rows_per_sec": drain_peak, "follower": drain_f, "source_wal_bytes": src_wal, "main_wal_bytes": main_wal, "cpu_secs": drain_cpu, "pipeline_states": drain_pipe}),
    );
    let drain_rate = drain.map_or(0.0, |x| changes as f64 / x);
    rows.push(json!({"metric": format!("change apply, backlog drain: same workload queued in the slot, `clone reload` → all applied; baseline: the source running it"),
        "pgbranch": drain.map_or("timeout".into(), |x| rate(changes, x)), "baseline": rate(changes, drain_src),
        "ratio": drain.map(|x| drain_src / x), "target": "≥ 20000 rows/s", "pass": drain_rate >= 20_000.0}));

    // Main holds the source's rows, masked.
    let (u_ins, o_ins) = Sizes::split(s.inserts);
    let expect_users = s.users + 2 * u_ins * TXN;
    let expect_orders = s.orders + 2 * o_ins * TXN - 2 * Sizes::txns(s.deletes) * TXN;
    let src_counts = (count(&source.server, "SELECT count(*) FROM users"), count(&source.server, "SELECT count(*) FROM orders"));
    let q = |sql: &str| psql_url(&main_url, sql).unwrap().parse::<u64>().unwrap();
    let main_counts = (q("SELECT count(*) FROM users"), q("SELECT count(*) FROM orders"));
    let unmasked = q("SELECT (SELECT count(*) FROM users WHERE email !~ '@example\\.(com|net|org)$') + (SELECT count(*) FROM orders WHERE email !~ '@example\\.(com|net|org)$')");
    let consistent = src_counts == (expect_users, expect_orders) && main_counts == src_counts && unmasked == 0;
    say(&format!("check: source {src_counts:?}, main {main_counts:?}, expected ({expect_users}, {expect_orders}), unmasked emails on main: {unmasked}"));
    details.insert(
        "check".into(),
        json!({"source_counts": [src_counts.0, src_counts.1], "main_counts": [main_counts.0, main_counts.1],
        "expected": [expect_users, expect_orders], "unmasked_emails_on_main": unmasked, "ok": consistent}),
    );
    store.ok(&["clone", "stop", "--drop-slot"]);

    let mut md = format!(
        "# pgbranch masked follower benchmark\n\nMode: **{}** · took {:.1} min · 2 CPUs shared · source {} users + {} orders ({gb:.2} GB), every column masked or kept (strict)\n\n| metric | pgbranch | baseline | ratio | target | result |\n|---|---:|---:|---:|---|---|\n",
        if quick { "quick" } else { "full" },
        started.elapsed().as_secs_f64() / 60.0,
        s.users,
        s.orders,
    );
    md.push_str(&pgbranch_integration::bench_table_rows(&rows));
    let ph = &details["clone"]["phases_secs"];
    md.push_str(&format!(
        "\nClone phases: checks + daemon start {:.1}s, initdb + roles + pre-data schema {:.1}s, masked COPY {:.1}s, slot + post-data (indexes, FK) + handoff {:.1}s.\n",
        ph["checks_and_daemon_start"].as_f64().unwrap_or(f64::NAN),
        ph["initdb_roles_pre_data_schema"].as_f64().unwrap_or(f64::NAN),
        ph["masked_copy"].as_f64().unwrap_or(f64::NAN),
        ph["publication_slot_post_data_indexes_handoff"].as_f64().unwrap_or(f64::NAN),
    ));
    let cmds: Vec<String> = details["clone"]["main_backend_secs_by_command"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(k, v)| format!("{k} {:.1}s", v.as_f64().unwrap_or(0.0)))
        .collect();
    md.push_str(&format!(
        "Main's backends during the clone, seconds by command (sampled; parallel backends add up): {}.\n",
        cmds.join(", ")
    ));
    md.push_str(&format!("\nCPU seconds (2 cores = 2 CPU-s per wall second):\n- pg_dump | pg_restore: {}\n- clone stream: {}\n- apply, live: {}\n- apply, backlog drain: {}\n",
        cpu_summary(&details["baseline"]["cpu_secs_one_job"]), cpu_summary(&details["clone"]["cpu_secs"]), cpu_summary(&details["apply_live"]["cpu_secs"]), cpu_summary(&details["apply_backlog"]["cpu_secs"])));
    md.push_str(&format!(
        "\nApply pipeline, share of 20 ms samples (main session: idle = waiting for the follower; walsender: WalSenderWriteData = waiting for the follower to read):\n- live: {}\n- backlog drain: {}\n",
        pipeline_summary(&details["apply_live"]["pipeline_states"]),
        pipeline_summary(&details["apply_backlog"]["pipeline_states"])
    ));
    md.push_str(&format!(
        "\nWAL for the backlog workload: source {:.0} MB, main {:.0} MB (every main block write, WAL included, goes through FUSE and is hashed and compressed by the daemon's committer).\n",
        src_wal as f64 / 1e6,
        main_wal as f64 / 1e6
    ));
    md.push_str(&format!(
        "\nScheduler time of the pipeline's tasks (run-queue wait = runnable but no free CPU):\n- live: {}\n- backlog drain: {}\n",
        sched_summary(&details["apply_live"]["pipeline_states"]),
        sched_summary(&details["apply_backlog"]["pipeline_states"])
    ));
    md.push_str(&format!(
        "\nCheck after the apply: main has the source's row counts (users {}, orders {}) and no unmasked email: **{}**.\n",
        main_counts.0,
        main_counts.1,
        if consistent { "yes" } else { "NO" }
    ));
    let report = json!({"rows": rows, "details": details, "quick": quick});
    write_bench_report("mask", &report, &md);
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    println!("{md}");
    drop(_stop_main);
    drop(store);
    drop(source);
}
