//! Running stock PostgreSQL on a branch: finding binaries, running them as the user
//! that owns the branch, starting and stopping servers, and preparing a cut branch
//! for its first start.

use std::net::TcpListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use anyhow::{bail, Context, Result};

/// A directory of postgres binaries (initdb, postgres, pg_ctl, psql, pgbench).
#[derive(Clone, Debug)]
pub struct PgBin(pub PathBuf);

impl PgBin {
    /// `--pg-bin`, else `$PG_CONFIG --bindir`, else the newest /usr/lib/postgresql/N/bin.
    pub fn find(flag: Option<PathBuf>) -> Result<PgBin> {
        if let Some(dir) = flag {
            if !dir.join("postgres").exists() {
                bail!("--pg-bin {}: no postgres binary there", dir.display());
            }
            return Ok(PgBin(dir));
        }
        if let Some(pg_config) = std::env::var_os("PG_CONFIG") {
            let out = Command::new(&pg_config).arg("--bindir").output().context("running $PG_CONFIG --bindir")?;
            let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
            if dir.join("postgres").exists() {
                return Ok(PgBin(dir));
            }
        }
        let mut versions: Vec<u32> = std::fs::read_dir("/usr/lib/postgresql")
            .map(|rd| rd.flatten().filter_map(|e| e.file_name().to_string_lossy().parse().ok()).collect())
            .unwrap_or_default();
        versions.sort_unstable();
        for v in versions.into_iter().rev() {
            let dir = PathBuf::from(format!("/usr/lib/postgresql/{v}/bin"));
            if dir.join("postgres").exists() {
                return Ok(PgBin(dir));
            }
        }
        bail!("no PostgreSQL server binaries found: install postgresql (e.g. apt-get install postgresql-15), or pass --pg-bin DIR")
    }

    pub fn tool(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// The major version of these binaries (`postgres --version`).
    pub fn major(&self) -> Result<u32> {
        let out = Command::new(self.tool("postgres")).arg("--version").output().context("running postgres --version")?;
        let text = String::from_utf8_lossy(&out.stdout);
        text.split_whitespace()
            .find_map(|w| w.split('.').next().and_then(|m| m.parse().ok()).filter(|_| w.contains('.')))
            .with_context(|| format!("cannot read a version from `postgres --version`: {text}"))
    }

    /// Binaries of exactly major version `major` (a standby runs its source's major):
    /// `--pg-bin` when given, else the first complete set of `$PG_CONFIG --bindir`,
    /// /usr/lib/postgresql/N/bin, /usr/pgsql-N/bin, Homebrew's postgresql@N,
    /// /usr/local/pgsql/bin and pgbranch's cache ([`crate::pg_find`]). A miss names the
    /// major needed, every place looked with what was there, and how to get them.
    pub fn for_major(flag: Option<PathBuf>, major: u32) -> Result<PgBin> {
        let found = crate::pg_find::locate(&crate::pg_find::Env::current(), flag.as_deref(), major, false)?;
        Ok(PgBin(found.dir))
    }

    /// Binaries for a server that loads a dump of a `major` source (the masked
    /// follower's main): `major` when found, else the newest major above it (pg_dump
    /// must be at least the source's version).
    pub fn for_major_or_newer(flag: Option<PathBuf>, major: u32) -> Result<(PgBin, crate::pg_find::Located)> {
        let found = crate::pg_find::locate(&crate::pg_find::Env::current(), flag.as_deref(), major, true)?;
        Ok((PgBin(found.dir.clone()), found))
    }
}

/// The OS user postgres runs as: `postgres` when we are root, else ourselves.
#[derive(Clone, Debug)]
pub struct Owner {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: PathBuf,
}

impl Owner {
    pub fn for_branches() -> Result<Owner> {
        let euid = crate::sys::effective_uid();
        let pw = if euid == 0 { crate::sys::user_by_name("postgres") } else { crate::sys::user_by_uid(euid) };
        let Some(pw) = pw else {
            bail!("cannot find the OS user to run postgres as (running as root needs a 'postgres' user)");
        };
        Ok(Owner { uid: pw.uid, gid: pw.gid, name: pw.name, home: pw.home })
    }

    /// A command that runs as this user (postgres refuses to run as root).
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        if crate::sys::effective_uid() != self.uid {
            cmd.uid(self.uid).gid(self.gid);
        }
        cmd.env("HOME", &self.home).env("USER", &self.name).current_dir("/");
        cmd
    }

    pub fn run(&self, cmd: &mut Command, what: &str) -> Result<Output> {
        let out = cmd.output().with_context(|| format!("running {what}"))?;
        if !out.status.success() {
            bail!("{what} failed ({}):\n{}{}", out.status, String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        }
        Ok(out)
    }

    /// A directory this user owns, mode 0700, for sockets and logs.
    pub fn private_dir(&self, path: &Path) -> Result<()> {
        std::fs::create_dir_all(path).with_context(|| format!("creating {}", path.display()))?;
        std::os::unix::fs::chown(path, Some(self.uid), Some(self.gid))
            .with_context(|| format!("giving {} to user {}", path.display(), self.name))?;
        std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("making {} private (mode 0700)", path.display()))?;
        Ok(())
    }
}

pub fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// A postgres server we started, on loopback and a private socket directory.
pub struct Server {
    pub bin: PgBin,
    pub owner: Owner,
    pub data: PathBuf,
    pub port: u16,
    pub socket_dir: PathBuf,
    pub pid: Option<i32>,
}

impl Server {
    pub fn start(bin: &PgBin, owner: &Owner, data: &Path, socket_dir: &Path, port: u16) -> Result<Server> {
        Server::start_with(bin, owner, data, socket_dir, port, "")
    }

    /// [`Server::start`] with more postgres command-line options (`-c name=value ...`).
    pub fn start_with(bin: &PgBin, owner: &Owner, data: &Path, socket_dir: &Path, port: u16, extra: &str) -> Result<Server> {
        owner.private_dir(socket_dir)?;
        let log = socket_dir.join("postgres.log");
        let opts = format!("-p {port} -k {} -c listen_addresses=127.0.0.1 {extra}", socket_dir.display());
        let mut cmd = owner.command(bin.tool("pg_ctl"));
        cmd.arg("start").arg("-w").arg("-t").arg("120").arg("-D").arg(data).arg("-l").arg(&log).arg("-o").arg(&opts);
        if let Err(e) = owner.run(&mut cmd, "pg_ctl start") {
            let tail = std::fs::read_to_string(&log).unwrap_or_default();
            bail!("{e:#}\npostgres log:\n{tail}");
        }
        let pid =
            std::fs::read_to_string(data.join("postmaster.pid")).ok().and_then(|s| s.lines().next().and_then(|l| l.trim().parse().ok()));
        Ok(Server { bin: bin.clone(), owner: owner.clone(), data: data.to_path_buf(), port, socket_dir: socket_dir.to_path_buf(), pid })
    }

    pub fn psql(&self, db: &str, sql: &str) -> Result<String> {
        self.psql_as("", db, sql)
    }

    /// Runs SQL over the private socket as role `user` (empty: the OS user's name).
    pub fn psql_as(&self, user: &str, db: &str, sql: &str) -> Result<String> {
        let mut cmd = self.owner.command(self.bin.tool("psql"));
        if !user.is_empty() {
            cmd.args(["-U", user]);
        }
        cmd.args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-d", db, "-c", sql]);
        let out = self.owner.run(&mut cmd, "psql")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    pub fn pgbench(&self, args: &[&str]) -> Result<String> {
        let mut cmd = self.owner.command(self.bin.tool("pgbench"));
        cmd.arg("-h").arg(&self.socket_dir).arg("-p").arg(self.port.to_string()).args(args);
        let out = self.owner.run(&mut cmd, "pgbench")?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr))
    }

    /// A server we started earlier (pid known), to stop or query it.
    pub fn adopt(bin: &PgBin, owner: &Owner, data: &Path, socket_dir: &Path, port: u16, pid: Option<i32>) -> Server {
        Server { bin: bin.clone(), owner: owner.clone(), data: data.to_path_buf(), port, socket_dir: socket_dir.to_path_buf(), pid }
    }

    /// Ends recovery (a cut of a standby) and waits until the server accepts writes.
    pub fn promote(&self) -> Result<()> {
        let mut cmd = self.owner.command(self.bin.tool("pg_ctl"));
        cmd.arg("promote").arg("-w").arg("-t").arg("60").arg("-D").arg(&self.data);
        self.owner.run(&mut cmd, "pg_ctl promote")?;
        Ok(())
    }

    /// Forgets the server without stopping it.
    pub fn detach(mut self) -> Option<i32> {
        self.pid.take()
    }

    /// Fast shutdown, then make sure the postmaster pid is gone.
    pub fn stop(&mut self) -> Result<()> {
        let Some(pid) = self.pid.take() else { return Ok(()) };
        let mut cmd = self.owner.command(self.bin.tool("pg_ctl"));
        cmd.arg("stop").arg("-w").arg("-m").arg("fast").arg("-D").arg(&self.data);
        if self.owner.run(&mut cmd, "pg_ctl stop").is_err() {
            let _ = crate::sys::kill(pid, libc::SIGQUIT);
        }
        for _ in 0..200 {
            if crate::sys::kill(pid, 0).is_err() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = crate::sys::kill(pid, libc::SIGKILL);
        Ok(())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Settings every branch server gets, after whatever the source had: its own
/// loopback listener and socket (given on the command line), no replication or
/// archiving towards the source, and cheap WAL file handling on copy-on-write storage.
const BRANCH_SETTINGS: &str = "
# --- pgbranch: this copy is an independent server ---
primary_conninfo = ''
primary_slot_name = ''
restore_command = ''
archive_command = ''
archive_mode = off
recovery_target = ''
recovery_target_lsn = ''
recovery_target_time = ''
recovery_target_xid = ''
recovery_target_name = ''
wal_init_zero = off
wal_recycle = off
hot_standby = on
";

/// Client authentication of a branch: trust on its private (0700) socket directory,
/// scram passwords on loopback, nothing else.
const BRANCH_HBA: &str = "# pgbranch: private socket dir (owner-only) and loopback with a password
local all all trust
local replication all trust
host all all 127.0.0.1/32 scram-sha-256
";

/// Turns a cut of a running cluster (primary or standby) into an independent server.
pub fn configure_independent(data: &Path) -> Result<()> {
    prepare_cut(data)?;
    let auto = data.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).unwrap_or_default();
    if !text.contains("# --- pgbranch: this copy is an independent server ---") {
        text.push_str(BRANCH_SETTINGS);
        std::fs::write(&auto, text).with_context(|| format!("writing {}", auto.display()))?;
    }
    configure_access(data)
}

/// The directory in a data directory that holds the WAL [`configure_recovery_to`]
/// replays (removed once the server has promoted).
pub const RECOVERY_ARCHIVE: &str = "pgbranch_recovery_wal";

const RECOVERY_MARK: &str = "# --- pgbranch: recover to the point in time asked for ---";

/// Where recovery stops (inclusive): the commits at or before it are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RecoveryTarget {
    /// A timestamptz literal.
    Time(String),
    /// A WAL position, `X/Y`.
    Lsn(String),
}

impl RecoveryTarget {
    fn setting(&self) -> (&'static str, &str) {
        match self {
            RecoveryTarget::Time(t) => ("recovery_target_time", t),
            RecoveryTarget::Lsn(l) => ("recovery_target_lsn", l),
        }
    }
}

/// Makes an independent copy (see [`configure_independent`]) recover to `target` on
/// its next start and then promote, replaying the WAL in its [`RECOVERY_ARCHIVE`]
/// directory after its own pg_wal.
pub fn configure_recovery_to(data: &Path, target: &RecoveryTarget) -> Result<()> {
    configure_independent(data)?;
    let standby = data.join("standby.signal");
    if standby.exists() {
        std::fs::remove_file(&standby).with_context(|| format!("removing {}", standby.display()))?;
    }
    let auto = data.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).with_context(|| format!("reading {}", auto.display()))?;
    let (setting, value) = target.setting();
    text.push_str(&format!(
        "\n{RECOVERY_MARK}\nrestore_command = 'cp {RECOVERY_ARCHIVE}/%f %p'\n{setting} = '{}'\nrecovery_target_inclusive = on\nrecovery_target_action = 'promote'\n",
        value.replace('\'', "''")
    ));
    std::fs::write(&auto, text).with_context(|| format!("writing {}", auto.display()))?;
    let signal = data.join("recovery.signal");
    std::fs::write(&signal, b"").with_context(|| format!("writing {}", signal.display()))
}

/// Drops the target set by [`configure_recovery_to`]: the next start recovers to the end
/// of the WAL it has (for when that WAL ends before the target: no commit after it).
pub fn clear_recovery_target(data: &Path) -> Result<()> {
    let auto = data.join("postgresql.auto.conf");
    let mut text = std::fs::read_to_string(&auto).with_context(|| format!("reading {}", auto.display()))?;
    text.push_str("recovery_target_time = ''\nrecovery_target_lsn = ''\n");
    std::fs::write(&auto, text).with_context(|| format!("writing {}", auto.display()))
}

/// Restricts a server's client authentication to its socket and loopback passwords.
pub fn configure_access(data: &Path) -> Result<()> {
    let hba = data.join("pg_hba.conf");
    std::fs::write(&hba, BRANCH_HBA).with_context(|| format!("writing {}", hba.display()))
}

/// A random password for a branch's role.
pub fn generate_password() -> String {
    use std::io::Read;
    let mut bytes = [0u8; 18];
    std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes)).expect("reading /dev/urandom");
    const ALPHABET: &[u8] = b"ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz23456789";
    bytes.iter().map(|b| ALPHABET[*b as usize % ALPHABET.len()] as char).collect()
}

/// Makes a crash-consistent copy of a running cluster startable as its own server:
/// the copied postmaster.pid names the source's live postmaster and would block it.
pub fn prepare_cut(data: &Path) -> Result<()> {
    for f in ["postmaster.pid", "postmaster.opts"] {
        let p = data.join(f);
        if p.exists() {
            std::fs::remove_file(&p).with_context(|| format!("removing {}", p.display()))?;
        }
    }
    let slots = data.join("pg_replslot");
    if let Ok(rd) = std::fs::read_dir(&slots) {
        for e in rd.flatten() {
            std::fs::remove_dir_all(e.path()).ok();
        }
    }
    Ok(())
}
