//! Branch servers: the stock postgres the daemon runs on a branch — its port, its
//! generated password, whether it should be running — kept in `data/servers.json` so
//! that running branches come back after a daemon restart. Also the follower's
//! configuration (source, slot, binaries).

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use parking_lot::Mutex;
use pgbranch_replicator::pg::{self, Owner, PgBin, Server};
use serde::{Deserialize, Serialize};

/// What a branch's server needs to be started again the same way.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ServerSpec {
    pub port: u16,
    /// Role the URL logs in as, and its generated password (None: the source's own
    /// password, for the follower's hot standby).
    pub user: String,
    pub password: Option<String>,
    pub dbname: String,
    pub pg_bin: PathBuf,
    pub running: bool,
    pub pid: Option<i32>,
    /// The follower's standby: started as a standby, never promoted.
    #[serde(default)]
    pub standby: bool,
}

/// Per-branch policy set at creation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Policy {
    pub expires_unix: Option<i64>,
    pub protected: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FollowerConfig {
    pub source_url: String,
    pub slot: String,
    pub pg_bin: PathBuf,
    pub user: String,
    pub dbname: String,
    pub stopped: bool,
    /// "physical" (a hot standby) or "logical" (masked, into a read-write main).
    #[serde(default = "physical")]
    pub mode: String,
    #[serde(default)]
    pub publication: Option<String>,
    /// The transform config's name as the user gave it (for messages); its text is
    /// in the store (`data/transform.yaml`).
    #[serde(default)]
    pub config_name: Option<String>,
    #[serde(default = "yes")]
    pub strict: bool,
    /// Whether pgbranch created the publication (and so may drop it).
    #[serde(default = "yes")]
    pub publication_created: bool,
    /// Hot-standby settings pgbranch raised on main after the source raised them.
    #[serde(default)]
    pub settings_raised: Vec<RaisedSetting>,
    /// Times main's standby exited on its own and was started again.
    #[serde(default)]
    pub standby_restarts: u64,
}

/// One hot-standby setting raised on main to match the source.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RaisedSetting {
    pub name: String,
    pub from: i64,
    pub to: i64,
    pub at_unix: i64,
}

fn physical() -> String {
    "physical".into()
}

fn yes() -> bool {
    true
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub struct RuntimeState {
    pub servers: BTreeMap<String, ServerSpec>,
    pub policies: BTreeMap<String, Policy>,
    pub follower: Option<FollowerConfig>,
}

pub struct Servers {
    path: PathBuf,
    run_dir: PathBuf,
    pub owner: Owner,
    pub state: Mutex<RuntimeState>,
    live: Mutex<BTreeMap<String, Server>>,
}

/// The pids of `pid`'s children.
fn children(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            let ppid = stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|v| v.parse::<i32>().ok());
            if ppid == Some(pid) {
                out.push(p);
            }
        }
    }
    out
}

/// Whether `pid` exists and is not a zombie.
fn is_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Removes a postmaster.pid whose postmaster is dead. Postgres itself treats a zombie
/// postmaster as alive and would refuse to start.
fn clear_dead_lock_file(lock: &Path) {
    let pid = std::fs::read_to_string(lock).ok().and_then(|s| s.lines().next()?.trim().parse::<i32>().ok());
    if let Some(pid) = pid {
        if !is_running(pid) {
            let _ = std::fs::remove_file(lock);
        }
    }
}

/// Whether `pid` is a live postgres process (not reused by something else).
fn is_postgres(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("postgres"))
}

impl Servers {
    pub fn open(data_dir: &Path, run_dir: &Path) -> Result<Servers> {
        let path = data_dir.join("servers.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).with_context(|| format!("parsing {}", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => RuntimeState::default(),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        std::fs::create_dir_all(run_dir)?;
        std::fs::set_permissions(run_dir, std::fs::Permissions::from_mode(0o711))?;
        Ok(Servers {
            path,
            run_dir: run_dir.to_path_buf(),
            owner: Owner::for_branches()?,
            state: Mutex::new(state),
            live: Mutex::new(BTreeMap::new()),
        })
    }

    /// Writes the state atomically (temp file, fsync, rename).
    pub fn save(&self) -> Result<()> {
        let state = self.state.lock();
        let tmp = self.path.with_extension("json.tmp");
        {
            use std::io::Write;
            let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
            f.write_all(&serde_json::to_vec_pretty(&*state)?)?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path).with_context(|| format!("writing {}", self.path.display()))?;
        Ok(())
    }

    pub fn socket_dir(&self, name: &str) -> PathBuf {
        self.run_dir.join(name)
    }

    pub fn spec(&self, name: &str) -> Option<ServerSpec> {
        self.state.lock().servers.get(name).cloned()
    }

    pub fn is_running(&self, name: &str) -> bool {
        self.live.lock().contains_key(name)
    }

    pub fn running_ports(&self) -> BTreeMap<String, u16> {
        self.live.lock().iter().map(|(n, s)| (n.clone(), s.port)).collect()
    }

    /// Starts the server of branch `name` at `data` per its spec; records its pid.
    pub fn start(&self, name: &str, data: &Path) -> Result<()> {
        if self.is_running(name) {
            return Ok(());
        }
        let spec = self.spec(name).with_context(|| format!("branch {name} has no server configured"))?;
        clear_dead_lock_file(&data.join("postmaster.pid"));
        clear_dead_lock_file(&self.socket_dir(name).join(format!(".s.PGSQL.{}.lock", spec.port)));
        let bin = PgBin(spec.pg_bin.clone());
        let server = Server::start(&bin, &self.owner, data, &self.socket_dir(name), spec.port)
            .with_context(|| format!("starting postgres on branch {name}"))?;
        {
            let mut st = self.state.lock();
            // Forgotten while it started (a delete): record nothing; dropping the
            // server stops it.
            let Some(s) = st.servers.get_mut(name) else { bail!("branch {name} was deleted while its server started") };
            s.pid = server.pid;
            s.running = true;
        }
        self.live.lock().insert(name.to_string(), server);
        self.save()
    }

    /// Whether the server of `name`, started by this daemon, has since exited by itself.
    pub fn exited(&self, name: &str) -> bool {
        self.live.lock().get(name).and_then(|s| s.pid).is_some_and(|p| !is_running(p))
    }

    /// Stops the server of `name` if it still runs (or forgets it if it exited; its pid
    /// may belong to another process by now) and starts it again.
    pub fn restart(&self, name: &str, data: &Path) -> Result<()> {
        let old = self.live.lock().remove(name);
        if let Some(mut server) = old {
            if server.pid.is_some_and(is_running) {
                server.stop().with_context(|| format!("stopping postgres on branch {name}"))?;
            } else {
                server.detach();
            }
        }
        self.start(name, data)
    }

    /// Stops the server of branch `name` (fast shutdown); `keep_running` records
    /// whether it should come back after a daemon restart.
    pub fn stop(&self, name: &str, keep_running: bool) -> Result<()> {
        if let Some(mut server) = self.live.lock().remove(name) {
            server.stop().with_context(|| format!("stopping postgres on branch {name}"))?;
        }
        if let Some(s) = self.state.lock().servers.get_mut(name) {
            s.pid = None;
            s.running = keep_running && s.running;
        }
        self.save()
    }

    /// Sends SIGKILL to a server left by a daemon that died, and to its backends (they
    /// hold its shared memory, which would keep a new postmaster from starting).
    pub fn signal_orphan(&self, name: &str) -> Vec<i32> {
        let pid = self.state.lock().servers.get(name).and_then(|s| s.pid);
        let Some(pid) = pid.filter(|p| is_postgres(*p)) else { return Vec::new() };
        let mut all = children(pid);
        all.push(pid);
        for p in &all {
            unsafe { libc::kill(*p, libc::SIGKILL) };
        }
        all
    }

    /// Waits for killed processes to die (zombies count as dead: their parent may
    /// never reap them).
    pub fn wait_dead(pids: &[i32]) {
        for &pid in pids {
            for _ in 0..400 {
                if !is_running(pid) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
        }
    }

    pub fn server(&self, name: &str) -> Option<Server> {
        let live = self.live.lock();
        let s = live.get(name)?;
        Some(Server::adopt(&s.bin, &s.owner, &s.data, &s.socket_dir, s.port, None))
    }

    /// Forgets everything about a deleted branch.
    pub fn forget(&self, name: &str) -> Result<()> {
        self.stop(name, false)?;
        let mut st = self.state.lock();
        st.servers.remove(name);
        st.policies.remove(name);
        drop(st);
        self.save()
    }

    /// The URL of a branch's server.
    pub fn url(&self, name: &str) -> Result<String> {
        let Some(spec) = self.spec(name) else {
            bail!("branch {name} has no postgres server (created --empty or --no-start?); start one with `pgbranch branch start {name}`")
        };
        let password = match &spec.password {
            Some(p) => p.clone(),
            None => {
                let f = self.state.lock().follower.clone();
                f.and_then(|f| pgbranch_replicator::source::Source::parse(&f.source_url).ok()?.password()).unwrap_or_default()
            }
        };
        Ok(format!("postgresql://{}:{}@127.0.0.1:{}/{}", encode(&spec.user), encode(&password), spec.port, encode(&spec.dbname)))
    }

    /// Stops every server (daemon shutdown); they come back on the next start.
    pub fn stop_all(&self) {
        let names: Vec<String> = self.live.lock().keys().cloned().collect();
        for name in names {
            if let Err(e) = self.stop(&name, true) {
                tracing::error!("{e:#}");
            }
        }
    }
}

/// Percent-encodes what cannot appear as-is in a URL's user, password or path.
fn encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn new_spec(user: &str, dbname: &str, pg_bin: &PgBin, standby: bool) -> Result<ServerSpec> {
    Ok(ServerSpec {
        port: pg::free_port()?,
        user: user.to_string(),
        password: if standby { None } else { Some(pg::generate_password()) },
        dbname: dbname.to_string(),
        pg_bin: pg_bin.0.clone(),
        running: false,
        pid: None,
        standby,
    })
}

use std::os::unix::fs::OpenOptionsExt;
