//! `pgbranch`: instant, writable, isolated copies of a PostgreSQL database.
//!
//! The binary is both the CLI and the daemon (`pgbranch daemon`). Every other verb is a
//! request to the daemon, which the CLI starts in the background when needed.


use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

use pgbranch::api::Request;
use pgbranch::layout::Layout;
use pgbranch::{client, daemon, demo, output};

#[derive(Parser)]
#[command(name = "pgbranch", version, about = "Instant, writable, copy-on-write branches of PostgreSQL data directories")]
struct Cli {
    /// Store directory (default: $PGBRANCH_HOME, else ~/.local/share/pgbranch).
    #[arg(long, global = true, value_name = "DIR")]
    store: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon in the foreground (other commands start it in the background).
    Daemon,
    /// Create, list, locate and delete branches.
    #[command(subcommand)]
    Branch(BranchCmd),
    /// Create and delete read-only snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Storage per branch: logical, unique and shared bytes; store size and ratios.
    Du {
        #[arg(long)]
        json: bool,
    },
    /// Delete every stored object no branch or snapshot uses.
    Gc {
        #[arg(long)]
        json: bool,
    },
    /// Read and check every stored object; name every damaged file and offset.
    Verify {
        #[arg(long)]
        json: bool,
    },
    /// Daemon and store status.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Stop the daemon: commit everything, unmount every branch.
    Stop,
    /// Make a database on a branch, fill it with pgbench data, branch it, change the
    /// branch and show that both hold what they should.
    Demo {
        /// pgbench scale factor for the demo database.
        #[arg(long, default_value_t = 10)]
        scale: u32,
        /// Directory holding postgres binaries (initdb, postgres, pgbench, psql).
        #[arg(long, value_name = "DIR")]
        pg_bin: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BranchCmd {
    /// Create a branch: empty, or from the current state of another branch or snapshot.
    Create {
        name: String,
        /// Start from an empty directory.
        #[arg(long, conflicts_with = "from")]
        empty: bool,
        /// Branch or snapshot to start from (atomic, even while it is written to).
        #[arg(long, value_name = "BRANCH")]
        from: Option<String>,
    },
    /// List branches and snapshots.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Print the directory of a branch (a PGDATA directory usable by any tool).
    Path { name: String },
    /// Delete a branch (refused while anything uses its directory).
    Delete { name: String },
}

#[derive(Subcommand)]
enum SnapshotCmd {
    /// Snapshot a branch: read-only, O(1), listed and mounted like a branch.
    Create {
        name: String,
        #[arg(long, value_name = "BRANCH")]
        from: String,
    },
    /// Delete a snapshot.
    Delete { name: String },
}

fn main() {
    let cli = Cli::parse();
    let is_daemon = matches!(cli.command, Command::Daemon);
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PGBRANCH_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(if is_daemon { "info" } else { "warn" })),
        )
        .with_writer(std::io::stderr)
        .with_ansi(!is_daemon)
        .init();
    if let Err(e) = run(cli) {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let layout = Layout::resolve(cli.store)?;
    match cli.command {
        Command::Daemon => daemon::run(layout),
        Command::Branch(cmd) => match cmd {
            BranchCmd::Create { name, empty, from } => {
                if !empty && from.is_none() {
                    anyhow::bail!("say where the branch starts: --empty, or --from BRANCH");
                }
                let data = client::call(&layout, &Request::CreateBranch { name, from })?;
                output::created(&data);
                Ok(())
            }
            BranchCmd::List { json } => output::list(&client::call(&layout, &Request::List)?, json),
            BranchCmd::Path { name } => {
                let data = client::call(&layout, &Request::Path { name })?;
                println!("{}", data["path"].as_str().unwrap_or_default());
                Ok(())
            }
            BranchCmd::Delete { name } => {
                client::call(&layout, &Request::Delete { name: name.clone(), snapshot: false })?;
                println!("deleted branch {name}");
                Ok(())
            }
        },
        Command::Snapshot(cmd) => match cmd {
            SnapshotCmd::Create { name, from } => {
                let data = client::call(&layout, &Request::CreateSnapshot { name, from })?;
                output::created(&data);
                Ok(())
            }
            SnapshotCmd::Delete { name } => {
                client::call(&layout, &Request::Delete { name: name.clone(), snapshot: true })?;
                println!("deleted snapshot {name}");
                Ok(())
            }
        },
        Command::Du { json } => output::du(&client::call(&layout, &Request::Du)?, json),
        Command::Gc { json } => output::gc(&client::call(&layout, &Request::Gc)?, json),
        Command::Verify { json } => output::verify(&client::call(&layout, &Request::Verify)?, json),
        Command::Status { json } => output::status(&client::call(&layout, &Request::Status)?, json),
        Command::Stop => {
            match client::try_connect(&layout) {
                Some(conn) => {
                    client::call_on(conn, &Request::Shutdown)?;
                    println!("daemon stopped");
                }
                None => println!("no daemon is running for {}", layout.root.display()),
            }
            Ok(())
        }
        Command::Demo { scale, pg_bin } => demo::run(&layout, scale, pg_bin),
    }
}
