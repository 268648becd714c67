//! `pgbranch demo`: the main job on embedded defaults. Without --source-url it starts a
//! throwaway source postgres with pgbench data; then it follows the source into `main`,
//! cuts a branch, writes to it, queries both, and prints the branch's URL.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use pgbranch_replicator::pg::{self, Owner, PgBin, Server};

use crate::api::Request;
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
fn start_source(layout: &Layout, bin: &PgBin, owner: &Owner, scale: u32) -> Result<(Server, String)> {
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
    let c = std::ffi::CString::new(pwfile.as_os_str().as_encoded_bytes()).unwrap();
    unsafe { libc::chown(c.as_ptr(), owner.uid, owner.gid) };
    let mut initdb = owner.command(bin.tool("initdb"));
    initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"]);
    initdb.arg(format!("--pwfile={}", pwfile.display()));
    owner.run(&mut initdb, "initdb of the demo source")?;
    std::fs::remove_file(&pwfile).ok();
    let server = Server::start(bin, owner, &data, &run, pg::free_port()?)?;
    server.pgbench(&["-i", "-q", "-s", &scale.to_string(), "postgres"])?;
    let url = format!("postgresql://postgres:{SOURCE_PASSWORD}@127.0.0.1:{}/postgres", server.port);
    Ok((server, url))
}

fn stop_old_source(data: &Path) {
    let pid = std::fs::read_to_string(data.join("postmaster.pid")).ok().and_then(|s| s.lines().next()?.trim().parse::<i32>().ok());
    if let Some(pid) = pid {
        if std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("postgres")) {
            unsafe { libc::kill(pid, libc::SIGINT) };
            for _ in 0..200 {
                if !Path::new(&format!("/proc/{pid}")).exists() {
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

pub fn run(layout: &Layout, source_url: Option<String>, scale: u32, pg_bin: Option<PathBuf>) -> Result<()> {
    let owner = Owner::for_branches()?;
    clean_previous(layout);
    let (source, url, throwaway) = match source_url {
        Some(url) => (None, url, false),
        None => {
            let bin = PgBin::find(pg_bin.clone())?;
            step(&format!("starting a throwaway source postgres with pgbench data (scale {scale})"));
            let (server, url) = start_source(layout, &bin, &owner, scale)?;
            println!("    source: postgresql://postgres:***@127.0.0.1:{}/postgres", server.port);
            (Some(server), url, true)
        }
    };

    step("pgbranch clone stream --source-url ...");
    let t = Instant::now();
    clone::stream(layout, &url, clone::DEFAULT_SLOT, pg_bin, false)?;
    println!("    main is streaming from the source ({:.1}s)", t.elapsed().as_secs_f64());

    step(&format!("pgbranch branch create {DEV}        (from main, while it streams)"));
    let t = Instant::now();
    let created = client::call(
        layout,
        &Request::CreateBranch { name: DEV.into(), from: Some(MAIN.into()), start: true, ttl_secs: None, protect: false },
    )?;
    let dev_url = created["url"].as_str().unwrap_or_default().to_string();
    println!("    ready for writes in {:.2}s: {dev_url}", t.elapsed().as_secs_f64());

    step(&format!("a query on {DEV}"));
    let psql = |url: &str, sql: &str| -> Result<String> {
        let bin = PgBin::find(None)?;
        let out = std::process::Command::new(bin.tool("psql"))
            .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
            .output()
            .context("running psql")?;
        if !out.status.success() {
            anyhow::bail!("psql: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    psql(&dev_url, "UPDATE pgbench_accounts SET abalance = abalance + 100 WHERE aid <= 1000")?;
    let q = "SELECT count(*) || ' accounts, sum(abalance) = ' || sum(abalance) FROM pgbench_accounts";
    println!("    {DEV}:    {}", psql(&dev_url, q)?);
    let main_url = client::call(layout, &Request::BranchUrl { name: MAIN.into() })?["url"].as_str().unwrap_or_default().to_string();
    println!("    main:   {}   (the branch's write stays on the branch)", psql(&main_url, q)?);

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
