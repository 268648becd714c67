//! `pgbranch demo`: the main job on embedded defaults. Without --source-url it starts a
//! throwaway source postgres with pgbench data; then it follows the source into `main`,
//! cuts a branch, writes to it, queries both, and prints the branch's URL. `--masked`
//! does the same with customer data masked in flight: the source gets fake customers,
//! `pii scan` writes the transform config, and main holds only masked values.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use pgbranch_replicator::pg::{self, Owner, PgBin, Server};

use crate::api::{BranchUrl, Created, Request};
use crate::client;
use crate::clone;
use crate::daemon::MAIN;
use crate::layout::Layout;

const DEV: &str = "dev";
const SOURCE_PASSWORD: &str = "demo-source-password";

fn step(msg: &str) {
    println!("==> {msg}");
}

/// A throwaway source: a plain postgres in STORE/demo-source (or the runtime directory
/// when the postgres user cannot reach the store), loopback only.
fn start_source(layout: &Layout, bin: &PgBin, owner: &Owner, scale: u32, masked: bool) -> Result<(Server, String)> {
    let data = layout.runtime().join("demo-source");
    let run = layout.run_dir().join("demo-source");
    stop_old_source(&data);
    if data.exists() {
        std::fs::remove_dir_all(&data).with_context(|| format!("removing {}", data.display()))?;
    }
    owner.private_dir(&data)?;
    let pwfile = layout.run_dir().join("demo-source.pw");
    std::fs::create_dir_all(layout.run_dir())?;
    std::fs::write(&pwfile, SOURCE_PASSWORD)?;
    std::os::unix::fs::chown(&pwfile, Some(owner.uid), Some(owner.gid))
        .with_context(|| format!("giving {} to the postgres user", pwfile.display()))?;
    let mut initdb = owner.command(bin.tool("initdb"));
    initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"]);
    initdb.arg(format!("--pwfile={}", pwfile.display()));
    owner.run(&mut initdb, "initdb of the demo source")?;
    std::fs::remove_file(&pwfile).ok();
    if masked {
        let conf = data.join("postgresql.conf");
        let mut text = std::fs::read_to_string(&conf)?;
        text.push_str("\nwal_level = logical\n");
        std::fs::write(&conf, text)?;
    }
    let server = Server::start(bin, owner, &data, &run, pg::free_port()?)?;
    if masked {
        server.psql("postgres", &customers_sql(scale))?;
    } else {
        server.pgbench(&["-i", "-q", "-s", &scale.to_string(), "postgres"])?;
    }
    let url = format!("postgresql://postgres:{SOURCE_PASSWORD}@127.0.0.1:{}/postgres", server.port);
    Ok((server, url))
}

/// Fake customers and their orders (10,000 customers per unit of scale).
fn customers_sql(scale: u32) -> String {
    let n = 10_000 * scale.max(1);
    format!(
        "CREATE TABLE customers (id serial PRIMARY KEY, email text UNIQUE NOT NULL, full_name text NOT NULL, \
           phone text, address text, plan text NOT NULL, created_at timestamptz NOT NULL DEFAULT now());
         CREATE TABLE orders (id serial PRIMARY KEY, customer_id int NOT NULL REFERENCES customers, \
           amount numeric(10,2) NOT NULL, shipping_address text, created_at timestamptz NOT NULL DEFAULT now());
         INSERT INTO customers (email, full_name, phone, address, plan)
           SELECT lower(f) || '.' || lower(l) || g || '@mail-example.com', f || ' ' || l,
                  '+1 (555) ' || lpad((g % 1000)::text, 3, '0') || '-' || lpad((g % 10000)::text, 4, '0'),
                  (g % 900 + 100) || ' ' || st || ' Street, Springfield', (ARRAY['free', 'pro', 'team'])[g % 3 + 1]
           FROM generate_series(1, {n}) g,
                LATERAL (SELECT (ARRAY['Alice', 'Bruno', 'Chiara', 'Dmitri', 'Emma', 'Farid', 'Grace', 'Hiro'])[g % 8 + 1] AS f,
                                (ARRAY['Smith', 'Rossi', 'Kowalski', 'Nguyen', 'Garcia', 'Okafor', 'Tanaka'])[g % 7 + 1] AS l,
                                (ARRAY['Oak', 'Maple', 'Elm', 'Cedar'])[g % 4 + 1] AS st) names;
         INSERT INTO orders (customer_id, amount, shipping_address)
           SELECT g % {n} + 1, (g % 500) + 0.99, (g % 900 + 100) || ' Elm Street, Springfield' FROM generate_series(1, {}) g;",
        n * 3
    )
}

fn stop_old_source(data: &Path) {
    let pid = std::fs::read_to_string(data.join("postmaster.pid")).ok().and_then(|s| s.lines().next()?.trim().parse::<i32>().ok());
    if let Some(pid) = pid {
        if crate::procs::is_postgres(pid) {
            let _ = crate::sys::kill(pid, libc::SIGINT);
            for _ in 0..200 {
                if !crate::procs::is_running(pid) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        }
    }
}

/// Removes what an earlier demo left: its branches and its follower.
fn clean_previous(layout: &Layout) {
    let _ = client::call(layout, &Request::FollowStop { drop_slot: true });
    for name in [DEV, MAIN] {
        if client::call(layout, &Request::Path { name: name.into() }).is_ok() {
            let _ = client::call(layout, &Request::Protect { name: name.into(), protect: false });
            let _ = client::call(layout, &Request::Delete { name: name.into(), snapshot: false });
        }
    }
}

pub fn run(layout: &Layout, source_url: Option<String>, scale: u32, pg_bin: Option<PathBuf>, masked: bool) -> Result<()> {
    let owner = Owner::for_branches()?;
    clean_previous(layout);
    let (source, url, throwaway) = match source_url {
        Some(url) => (None, url, false),
        None => {
            let bin = PgBin::find(pg_bin.clone())?;
            if masked {
                step(&format!("starting a throwaway source postgres with {} fake customers", 10_000 * scale.max(1)));
            } else {
                step(&format!("starting a throwaway source postgres with pgbench data (scale {scale})"));
            }
            let (server, url) = start_source(layout, &bin, &owner, scale, masked)?;
            println!("    source: postgresql://postgres:***@127.0.0.1:{}/postgres", server.port);
            (Some(server), url, true)
        }
    };

    if masked {
        follow_masked(layout, &url, pg_bin)?;
        return finish(layout, source, throwaway, "SELECT id, email, full_name, phone FROM customers ORDER BY id LIMIT 2", None);
    }
    step("pgbranch clone stream --source-url ...");
    let t = Instant::now();
    clone::stream(layout, &url, clone::DEFAULT_SLOT, pg_bin, false)?;
    println!("    main is streaming from the source ({:.1}s)", t.elapsed().as_secs_f64());
    let q = "SELECT count(*) || ' accounts, sum(abalance) = ' || sum(abalance) FROM pgbench_accounts";
    finish(layout, source, throwaway, q, Some("UPDATE pgbench_accounts SET abalance = abalance + 100 WHERE aid <= 1000"))
}

/// `pii scan` writes the config, then `clone stream --config` follows with masking;
/// shows a raw row of the source next to the same row on main.
fn follow_masked(layout: &Layout, url: &str, pg_bin: Option<PathBuf>) -> Result<()> {
    let config = layout.root.join("demo-transform.yaml");
    step(&format!("pgbranch pii scan --source-url ... --write {}", config.display()));
    crate::pii::scan(url, Some(&config), crate::pii::DEFAULT_SAMPLE, true)?;
    step("pgbranch clone stream --source-url ... --config demo-transform.yaml");
    let t = Instant::now();
    let opts = clone::logical::Options {
        source_url: url.to_string(),
        config: config.clone(),
        slot: clone::DEFAULT_SLOT.into(),
        publication: clone::DEFAULT_SLOT.into(),
        pg_bin,
        strict: true,
        quiet: false,
    };
    let main_url = clone::logical::stream(layout, opts)?;
    println!("    main holds the masked copy and streams changes ({:.1}s)", t.elapsed().as_secs_f64());
    let q = "SELECT email || ' | ' || full_name || ' | ' || phone FROM customers WHERE id = 1";
    println!("    source: {}", psql(url, q)?);
    println!("    main:   {}", psql(&main_url, q)?);
    Ok(())
}

fn psql(url: &str, sql: &str) -> Result<String> {
    let bin = PgBin::find(None)?;
    let out = std::process::Command::new(bin.tool("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .context("running psql")?;
    if !out.status.success() {
        anyhow::bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Cuts `dev` from main, changes it with `write` (if any), shows `query` on both.
fn finish(layout: &Layout, source: Option<Server>, throwaway: bool, query: &str, write: Option<&str>) -> Result<()> {
    step(&format!("pgbranch branch create {DEV}        (from main, while it streams)"));
    let t = Instant::now();
    let created: Created = client::call_as(
        layout,
        &Request::CreateBranch {
            name: DEV.into(),
            from: Some(MAIN.into()),
            start: true,
            ttl_secs: None,
            protect: false,
            at_unix_micros: None,
            at_lsn: None,
            history_secs: None,
        },
    )?;
    let dev_url = created.url.context("branch dev was created without a server")?;
    println!("    ready for writes in {:.2}s: {dev_url}", t.elapsed().as_secs_f64());

    step(&format!("a query on {DEV}"));
    if let Some(w) = write {
        psql(&dev_url, w)?;
    }
    let indent = |text: String| text.lines().collect::<Vec<_>>().join("\n            ");
    println!("    {DEV}:    {}", indent(psql(&dev_url, query)?));
    if write.is_some() {
        let main_url = client::call_as::<BranchUrl>(layout, &Request::BranchUrl { name: MAIN.into() })?.url;
        println!("    main:   {}   (the branch's write stays on the branch)", psql(&main_url, query)?);
    }

    println!();
    println!("Your branch: {dev_url}");
    println!("Try next:");
    println!("  psql '{dev_url}'");
    println!("  pgbranch status                      # follower lag, running branches");
    println!("  pgbranch branch create mine --ttl 8h # another copy, deleted in 8 hours");
    println!("  pgbranch branch reset {DEV}           # back to the latest state of main, same URL");
    println!("  pgbranch du                          # what each branch costs");
    if throwaway {
        println!("The throwaway source keeps running for main to follow; `pgbranch demo` again replaces it.");
    }
    if let Some(s) = source {
        s.detach();
    }
    Ok(())
}
