//! `pgbranch demo`: the main job on embedded defaults. Makes a database on a branch,
//! fills it with pgbench data, cuts a branch from it while it runs, changes the branch
//! and shows that each holds what it should, and what the two cost in storage.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};

use crate::api::Request;
use crate::client;
use crate::layout::Layout;
use crate::output;
use crate::pg::{self, Owner, PgBin, Server};

const MAIN: &str = "demo-main";
const DEV: &str = "demo-dev";

fn step(msg: &str) {
    println!("==> {msg}");
}

pub fn run(layout: &Layout, scale: u32, pg_bin: Option<PathBuf>) -> Result<()> {
    let bin = PgBin::find(pg_bin)?;
    let owner = Owner::for_branches()?;
    let run_dir = layout.root.join("run");
    std::fs::create_dir_all(&run_dir)?;

    // A rerun starts from scratch: drop what an earlier demo left.
    for name in [DEV, MAIN] {
        if client::call(layout, &Request::Path { name: name.into() }).is_ok() {
            client::call(layout, &Request::Delete { name: name.into(), snapshot: false })
                .with_context(|| format!("removing the previous demo's branch {name}"))?;
        }
    }

    step(&format!("pgbranch branch create {MAIN} --empty"));
    let main_path = PathBuf::from(
        client::call(layout, &Request::CreateBranch { name: MAIN.into(), from: None })?["path"].as_str().unwrap_or_default(),
    );
    println!("    {}", main_path.display());

    step("initdb --data-checksums on the branch");
    let mut initdb = owner.command(bin.tool("initdb"));
    initdb.arg("-D").arg(&main_path).args(["--data-checksums", "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-instructions"]);
    owner.run(&mut initdb, "initdb")?;

    let mut main = Server::start(&bin, &owner, &main_path, &run_dir.join(MAIN), pg::free_port()?)?;
    println!("    postgres running on {MAIN}, port {}", main.port);

    step(&format!("pgbench -i -s {scale}"));
    let t = Instant::now();
    main.pgbench(&["-i", "-q", "-s", &scale.to_string(), "postgres"])?;
    println!("    loaded {} accounts in {:.1}s", scale * 100_000, t.elapsed().as_secs_f64());

    step(&format!("pgbranch branch create {DEV} --from {MAIN}   (while {MAIN} is running)"));
    let t = Instant::now();
    let dev_path = PathBuf::from(
        client::call(layout, &Request::CreateBranch { name: DEV.into(), from: Some(MAIN.into()) })?["path"]
            .as_str()
            .unwrap_or_default(),
    );
    println!("    branched in {:.0} ms: {}", t.elapsed().as_secs_f64() * 1000.0, dev_path.display());

    pg::prepare_cut(&dev_path)?;
    let mut dev = Server::start(&bin, &owner, &dev_path, &run_dir.join(DEV), pg::free_port()?)?;
    println!("    postgres running on {DEV}, port {} (recovered from the crash-consistent cut)", dev.port);

    step(&format!("change {DEV}: UPDATE 1% of pgbench_accounts, DROP pgbench_history"));
    let n = scale * 1000;
    dev.psql("postgres", &format!("UPDATE pgbench_accounts SET abalance = abalance + 100 WHERE aid <= {n}"))?;
    dev.psql("postgres", "DROP TABLE pgbench_history")?;
    dev.psql("postgres", "CHECKPOINT")?;

    step("compare");
    let q = "SELECT sum(abalance) FROM pgbench_accounts";
    let tables = "SELECT string_agg(relname, ',' ORDER BY relname) FROM pg_stat_user_tables";
    println!("    {MAIN}: sum(abalance) = {:>10}   tables: {}", main.psql("postgres", q)?, main.psql("postgres", tables)?);
    println!("    {DEV}:  sum(abalance) = {:>10}   tables: {}", dev.psql("postgres", q)?, dev.psql("postgres", tables)?);

    main.stop()?;
    dev.stop()?;

    step("pgbranch du");
    output::du(&client::call(layout, &Request::Du)?, false)?;

    println!();
    println!("Both branches stay in the store. Try next:");
    println!("  pgbranch branch list");
    println!("  pgbranch branch path {DEV}        # a PGDATA directory: pg_ctl -D \"$(pgbranch branch path {DEV})\" start");
    println!("  pgbranch snapshot create before-migration --from {DEV}");
    println!("  pgbranch branch delete {DEV} && pgbranch gc");
    Ok(())
}
