//! Test harness: a throwaway store served by the real `pgbranch` binary, and stock
//! postgres servers on its branches. Everything started here is stopped by pid and
//! every mount is detached when the values are dropped, on success and on panic.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub use pgbranch::pg::{self, Owner, PgBin, Server};
use serde_json::Value;

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// The `pgbranch` binary under test: $PGBRANCH_BIN, else the release build, else debug.
pub fn pgbranch_bin() -> PathBuf {
    if let Some(p) = std::env::var_os("PGBRANCH_BIN") {
        return PathBuf::from(p);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().join("target");
    for profile in ["release", "debug"] {
        let p = root.join(profile).join("pgbranch");
        if p.exists() {
            return p;
        }
    }
    panic!("pgbranch binary not built: run `cargo build --release -p pgbranch` (or set PGBRANCH_BIN)");
}

/// Detaches every mount below `dir` (left by a killed daemon or a failed test).
pub fn detach_mounts_under(dir: &Path) {
    let prefix = dir.to_string_lossy().to_string();
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    for line in mounts.lines() {
        if let Some(mp) = line.split(' ').nth(1) {
            if mp.starts_with(&prefix) {
                let _ = pgbranch_fs::sys::unmount(Path::new(&mp.replace("\\040", " ")), true);
            }
        }
    }
}

/// Every process on the machine with its command line (argv), read from /proc.
pub fn processes() -> Vec<(i32, Vec<String>)> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let args = cmdline.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        out.push((pid, args));
    }
    out
}

pub fn pid_alive(pid: i32) -> bool {
    let exists = sys::kill(pid, 0).is_ok();
    exists && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| s.contains(") Z "))
}

/// Waits until `pid` is dead and reaped: postgres treats a zombie postmaster named in
/// postmaster.pid as still running.
pub fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let t = Instant::now();
    while t.elapsed() < timeout {
        if !Path::new(&format!("/proc/{pid}")).exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Kills a process and every descendant of it, by pid.
pub fn kill_tree(pid: i32) {
    let mut children = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|v| v.parse::<i32>().ok());
            if ppid == Some(pid) {
                children.push(p);
            }
        }
    }
    let _ = sys::kill(pid, libc::SIGKILL);
    for c in children {
        kill_tree(c);
    }
}

pub struct TestStore {
    pub dir: PathBuf,
    bin: PathBuf,
}

impl TestStore {
    pub fn new(tag: &str) -> TestStore {
        let dir =
            std::env::temp_dir().join(format!("pgbranch-test-{tag}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
        detach_mounts_under(&dir);
        let _ = std::fs::remove_dir_all(&dir);
        TestStore { dir, bin: pgbranch_bin() }
    }

    /// A store in `dir` (e.g. on a [`loopdisk::LoopDisk`]); `dir` must not exist yet.
    pub fn at(dir: &Path) -> TestStore {
        detach_mounts_under(dir);
        TestStore { dir: dir.to_path_buf(), bin: pgbranch_bin() }
    }

    pub fn command(&self) -> Command {
        let mut c = Command::new(&self.bin);
        c.arg("--store").arg(&self.dir).stdin(Stdio::null());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.command().args(args).output().expect("running pgbranch")
    }

    /// Runs a verb that must succeed; returns its stdout.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "pgbranch {args:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Runs a verb that must fail; returns its stderr.
    pub fn fail(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(!out.status.success(), "pgbranch {args:?} should have failed:\n{}", String::from_utf8_lossy(&out.stdout));
        String::from_utf8_lossy(&out.stderr).into_owned()
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut a = args.to_vec();
        a.push("--json");
        serde_json::from_str(&self.ok(&a)).expect("--json output parses")
    }

    pub fn path(&self, name: &str) -> PathBuf {
        PathBuf::from(self.ok(&["branch", "path", name]).trim())
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(self.dir.join("daemon.lock")).ok()?.trim().parse().ok()?;
        pid_alive(pid).then_some(pid)
    }

    /// kill -9 the daemon, as a crash would.
    pub fn kill_daemon(&self) {
        if let Some(pid) = self.daemon_pid() {
            let _ = sys::kill(pid, libc::SIGKILL);
            assert!(wait_gone(pid, Duration::from_secs(10)), "daemon {pid} did not die");
        }
    }

    /// A socket directory for a server on branch `name`, owned by the postgres user.
    pub fn socket_dir(&self, name: &str) -> PathBuf {
        self.dir.join("run").join(name)
    }

    /// Creates an empty branch, runs initdb --data-checksums on it and starts postgres.
    pub fn new_cluster(&self, name: &str) -> Server {
        self.ok(&["branch", "create", name, "--empty"]);
        let path = self.path(name);
        let (bin, owner) = pg_env();
        let mut initdb = owner.command(bin.tool("initdb"));
        initdb.arg("-D").arg(&path).args(["--data-checksums", "-U", "postgres", "--auth=trust", "--no-instructions", "-E", "UTF8"]);
        owner.run(&mut initdb, "initdb").unwrap();
        self.start(name)
    }

    /// Starts postgres on an existing branch (cut branches are prepared first).
    pub fn start(&self, name: &str) -> Server {
        let path = self.path(name);
        let (bin, owner) = pg_env();
        std::fs::create_dir_all(self.dir.join("run")).unwrap();
        Server::start(&bin, &owner, &path, &self.socket_dir(name), pg::free_port().unwrap()).unwrap()
    }

    /// The server the daemon runs on branch `name`, reached through its private socket.
    pub fn branch_server(&self, name: &str) -> Server {
        let list = self.json(&["branch", "list"]);
        let b = list.as_array().unwrap().iter().find(|b| b["name"] == name).expect("branch listed").clone();
        let port = b["port"].as_u64().expect("the branch has a server") as u16;
        let (bin, owner) = pg_env();
        Server::adopt(&bin, &owner, &self.path(name), &self.socket_dir(name), port, None)
    }

    /// Cuts branch `name` from `from` without the daemon's server, and starts it here.
    pub fn cut_and_start(&self, name: &str, from: &str) -> Server {
        self.ok(&["branch", "create", name, "--from", from, "--no-start"]);
        pg::prepare_cut(&self.path(name)).unwrap();
        self.start(name)
    }
}

impl Drop for TestStore {
    fn drop(&mut self) {
        let _ = self.command().arg("stop").output();
        if let Some(pid) = self.daemon_pid() {
            let _ = sys::kill(pid, libc::SIGKILL);
            wait_gone(pid, Duration::from_secs(10));
        }
        detach_mounts_under(&self.dir);
        if std::env::var_os("PGBRANCH_KEEP_TEST_STORE").is_none() {
            let _ = std::fs::remove_dir_all(&self.dir);
            // The transform configs tests write beside the store.
            let _ = std::fs::remove_dir_all(self.dir.with_extension("configs"));
        }
    }
}

pub fn pg_env() -> (PgBin, Owner) {
    (PgBin::find(None).expect("postgres binaries"), Owner::for_branches().expect("postgres OS user"))
}

/// Binaries of PostgreSQL `major` as `pgbranch` finds them (`PgBin::for_major`); a miss
/// fails the test with the lookup's message, which says how to install them.
pub fn pg_env_for(major: u32) -> (PgBin, Owner) {
    let bin = PgBin::for_major(None, major).unwrap_or_else(|e| panic!("PostgreSQL {major} binaries: {e:#}"));
    (bin, Owner::for_branches().expect("postgres OS user"))
}

impl TestStore {
    /// [`TestStore::branch_server`] with the client tools of `bin` (e.g. the branch's major).
    pub fn branch_server_with(&self, name: &str, bin: &PgBin) -> Server {
        let mut s = self.branch_server(name);
        s.bin = bin.clone();
        s
    }
}

/// [`psql_url`] with the psql of `bin`.
pub fn psql_url_with(bin: &PgBin, url: &str, sql: &str) -> Result<String, String> {
    let out = Command::new(bin.tool("psql"))
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).trim().to_string())
    }
}

/// A client process (pgbench, psql) running in the background, killed on drop.
pub struct Background {
    pub child: Option<Child>,
}

impl Background {
    pub fn spawn(mut cmd: Command) -> Background {
        cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        Background { child: Some(cmd.spawn().expect("spawning a background client")) }
    }

    pub fn wait(mut self) -> Output {
        self.child.take().unwrap().wait_with_output().unwrap()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// pgbench against `server` in the background.
pub fn pgbench_background(server: &Server, args: &[&str]) -> Background {
    let mut cmd = server.owner.command(server.bin.tool("pgbench"));
    cmd.arg("-h").arg(&server.socket_dir).arg("-p").arg(server.port.to_string()).args(args);
    Background::spawn(cmd)
}

/// pg_amcheck over every database, heap and indexes; returns its report (empty = clean).
pub fn amcheck(server: &Server) -> Result<(), String> {
    let mut cmd = server.owner.command(server.bin.tool("pg_amcheck"));
    cmd.arg("-h").arg(&server.socket_dir).arg("-p").arg(server.port.to_string()).args([
        "--all",
        "--heapallindexed",
        "--install-missing",
        "-U",
        "postgres",
    ]);
    // pg_amcheck 16+ passes on the server's NOTICE that amcheck is already installed.
    cmd.env("PGOPTIONS", "-c client_min_messages=warning");
    let out = cmd.output().map_err(|e| e.to_string())?;
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    if out.status.success() && report.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("pg_amcheck ({}): {report}", out.status))
    }
}

/// The pgbench invariant: every balance change is recorded exactly once everywhere.
pub fn pgbench_sums(server: &Server) -> [i64; 4] {
    let q = "SELECT (SELECT sum(abalance) FROM pgbench_accounts), (SELECT sum(bbalance) FROM pgbench_branches), \
             (SELECT sum(tbalance) FROM pgbench_tellers), (SELECT coalesce(sum(delta),0) FROM pgbench_history)";
    let row = server.psql("postgres", q).unwrap();
    let v: Vec<i64> = row.split('|').map(|x| x.trim().parse().unwrap()).collect();
    [v[0], v[1], v[2], v[3]]
}

pub fn assert_pgbench_invariant(server: &Server, what: &str) {
    let s = pgbench_sums(server);
    assert!(
        s[0] == s[1] && s[1] == s[2] && s[2] == s[3],
        "{what}: pgbench balances disagree: accounts, branches, tellers, history = {s:?}"
    );
}

/// A source database for follower tests: a plain postgres on local disk, listening on
/// loopback with scram passwords, stopped and removed on drop.
pub struct SourceDb {
    pub server: Server,
    pub dir: PathBuf,
    pub password: String,
    /// Where postgresql.conf, pg_hba.conf and pg_ident.conf live: the data directory,
    /// or `dir/etc` for the packaged layout.
    pub conf_dir: PathBuf,
}

/// How a test source is made. `Default` is a PostgreSQL of the default binaries with
/// its configuration in PGDATA, as initdb leaves it.
#[derive(Default, Clone)]
pub struct SourceOptions {
    /// Binaries of the source's version (default: [`pg_env`]'s).
    pub bin: Option<PgBin>,
    /// Extra `name = value` lines for postgresql.conf.
    pub settings: Vec<String>,
    /// Lines put first in pg_hba.conf (e.g. `hostssl all all 127.0.0.1/32 scram-sha-256`);
    /// with `hba_only`, pg_hba.conf holds just these (plus local trust).
    pub hba: Vec<String>,
    pub hba_only: bool,
    /// The packaged (Debian/Ubuntu) layout: postgresql.conf, pg_hba.conf and
    /// pg_ident.conf in a directory outside PGDATA, which the server is started with
    /// (`-c config_file=...`), none of them in PGDATA.
    pub conf_outside_pgdata: bool,
    /// Files to put into the configuration directory before the start (name, bytes,
    /// mode), e.g. TLS certificates.
    pub files: Vec<(String, Vec<u8>, u32)>,
}

impl SourceDb {
    /// `settings` are extra `name = value` lines for postgresql.conf.
    pub fn start(tag: &str, settings: &[&str]) -> SourceDb {
        SourceDb::start_with(tag, SourceOptions { settings: settings.iter().map(|s| s.to_string()).collect(), ..Default::default() })
    }

    pub fn start_with(tag: &str, opts: SourceOptions) -> SourceDb {
        let (default_bin, owner) = pg_env();
        let bin = opts.bin.clone().unwrap_or(default_bin);
        let dir =
            std::env::temp_dir().join(format!("pgbranch-source-{tag}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let data = dir.join("data");
        owner.private_dir(&data).unwrap();
        let password = "source-secret".to_string();
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, &password).unwrap();
        let mut initdb = owner.command(bin.tool("initdb"));
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"]);
        initdb.arg(format!("--pwfile={}", pwfile.display()));
        owner.run(&mut initdb, "initdb of a source").unwrap();
        let conf_dir = if opts.conf_outside_pgdata { dir.join("etc") } else { data.clone() };
        if opts.conf_outside_pgdata {
            owner.private_dir(&conf_dir).unwrap();
            for f in ["postgresql.conf", "pg_hba.conf", "pg_ident.conf"] {
                std::fs::rename(data.join(f), conf_dir.join(f)).unwrap();
            }
            let lines = [
                format!("data_directory = '{}'", data.display()),
                format!("hba_file = '{}'", conf_dir.join("pg_hba.conf").display()),
                format!("ident_file = '{}'", conf_dir.join("pg_ident.conf").display()),
            ];
            append_lines(&conf_dir.join("postgresql.conf"), &lines);
        }
        append_lines(&conf_dir.join("postgresql.conf"), &opts.settings);
        if !opts.hba.is_empty() {
            let hba = conf_dir.join("pg_hba.conf");
            let old = if opts.hba_only {
                "local all all trust\nlocal replication all trust\n".to_string()
            } else {
                std::fs::read_to_string(&hba).unwrap()
            };
            std::fs::write(&hba, format!("{}\n{old}", opts.hba.join("\n"))).unwrap();
        }
        for (name, bytes, mode) in &opts.files {
            let path = conf_dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            std::os::unix::fs::chown(&path, Some(owner.uid), Some(owner.gid)).unwrap();
            std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(*mode)).unwrap();
        }
        let extra =
            if opts.conf_outside_pgdata { format!("-c config_file={}", conf_dir.join("postgresql.conf").display()) } else { String::new() };
        let server = Server::start_with(&bin, &owner, &data, &dir.join("run"), pg::free_port().unwrap(), &extra).unwrap();
        SourceDb { server, dir, password, conf_dir }
    }

    /// Changes settings and restarts the source (same port, same data).
    pub fn restart_with(&mut self, settings: &[&str]) {
        append_lines(&self.conf_dir.join("postgresql.conf"), &settings.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        let (bin, owner, data, socket, port) = (
            self.server.bin.clone(),
            self.server.owner.clone(),
            self.server.data.clone(),
            self.server.socket_dir.clone(),
            self.server.port,
        );
        self.server.stop().unwrap();
        let extra = if self.conf_dir != data {
            format!("-c config_file={}", self.conf_dir.join("postgresql.conf").display())
        } else {
            String::new()
        };
        self.server = Server::start_with(&bin, &owner, &data, &socket, port, &extra).expect("restarting the source");
    }

    pub fn url_as(&self, user: &str, password: &str) -> String {
        format!("postgresql://{user}:{password}@127.0.0.1:{}/postgres", self.server.port)
    }

    pub fn url(&self) -> String {
        self.url_as("postgres", &self.password)
    }

    pub fn slots(&self) -> String {
        self.server.psql("postgres", "SELECT coalesce(string_agg(slot_name, ','), '') FROM pg_replication_slots").unwrap()
    }
}

/// Appends `name = value` lines to a configuration file.
pub fn append_lines(path: &Path, lines: &[String]) {
    if lines.is_empty() {
        return;
    }
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(path).unwrap();
    std::io::Write::write_all(&mut f, format!("\n{}\n", lines.join("\n")).as_bytes()).unwrap();
}

impl Drop for SourceDb {
    fn drop(&mut self) {
        let _ = self.server.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// psql with a URL, as root (or any user): the way a developer uses a branch URL.
pub fn psql_url(url: &str, sql: &str) -> Result<String, String> {
    psql_url_with(&pg_env().0, url, sql)
}

/// Incompressible pseudo-random bytes (xorshift), reproducible from `seed`.
/// Writes `data` to `path` and fsyncs it: once this returns, the store must keep it.
pub fn write_synced(path: &Path, data: &[u8]) {
    std::fs::write(path, data).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
    std::fs::File::open(path).and_then(|f| f.sync_all()).unwrap_or_else(|e| panic!("fsyncing {}: {e}", path.display()));
}

pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        out.extend_from_slice(&seed.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The value after `--name` on a benchmark's command line, parsed.
pub fn bench_arg<T: std::str::FromStr>(name: &str) -> Option<T> {
    let args: Vec<String> = std::env::args().collect();
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
}

/// Writes a benchmark's report as `bench/STEM.json` and `bench/STEM.md`.
pub fn write_bench_report(stem: &str, report: &Value, md: &str) {
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("../bench");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join(format!("{stem}.json")), serde_json::to_string_pretty(report).unwrap()).unwrap();
    std::fs::write(out.join(format!("{stem}.md")), md).unwrap();
}

/// The rows of a benchmark's markdown table (`metric | pgbranch | baseline | ratio |
/// target | result`) from its JSON rows; `pass` true/false/absent = PASS/MISS/INFO.
pub fn bench_table_rows(rows: &[Value]) -> String {
    let mut md = String::new();
    for r in rows {
        let ratio = r["ratio"].as_f64().map_or("—".to_string(), |x| format!("{x:.2}x"));
        let result = match r["pass"].as_bool() {
            Some(true) => "PASS",
            Some(false) => "**MISS**",
            None => "INFO",
        };
        let cell = |k: &str| r[k].as_str().unwrap_or("").replace('|', "\\|");
        md.push_str(&format!(
            "| {} | {} | {} | {ratio} | {} | {result} |\n",
            cell("metric"),
            cell("pgbranch"),
            cell("baseline"),
            cell("target")
        ));
    }
    md
}

pub mod ackwriter;
pub mod faultdisk;
pub mod loopdisk;
pub mod masked;
pub mod native;
pub mod packaged;
pub mod seeded;
pub mod sys;
pub mod tls;
