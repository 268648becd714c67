//! Branch servers: the stock postgres the daemon runs on a branch — its port, its
//! generated password, whether the user wants it running — kept in `data/servers.json`
//! so that running branches come back after a daemon restart. Also the follower's
//! configuration (source, slot, binaries).
//!
//! Two states are kept apart: whether the user wants a server running (persisted, the
//! `running` key of servers.json: set by a start, cleared only by `branch stop`,
//! `clone stop` and the branch's removal) and whether it runs now (in memory: the live
//! [`Server`]s). The daemon stops servers for its own reasons (reset, restart, its own
//! shutdown) without touching the first, so a crash at any point leaves it right.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use parking_lot::Mutex;
use pgbranch_replicator::pg::{self, Owner, PgBin, Server};
use serde::{Deserialize, Serialize};

use crate::api::{FollowerMode, RaisedSetting};
use crate::procs::{children, is_postgres, is_postgres_of, is_running};

/// What a branch's server needs to be started again the same way.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ServerSpec {
    pub(crate) port: u16,
    /// Role the URL logs in as, and its generated password (None: the source's own
    /// password, for the follower's hot standby).
    pub(crate) user: String,
    pub(crate) password: Option<String>,
    pub(crate) dbname: String,
    pub(crate) pg_bin: PathBuf,
    /// The user wants this server running: the next daemon starts it. Not whether it
    /// runs now (see [`Servers::is_running`]).
    #[serde(rename = "running")]
    pub(crate) wanted: bool,
    /// The postmaster's pid while one runs (a daemon killed -9 leaves it: the next one
    /// stops that orphan before starting its own).
    pub(crate) pid: Option<i32>,
    /// The follower's standby: started as a standby, never promoted.
    #[serde(default)]
    pub(crate) standby: bool,
}

/// Per-branch policy set at creation.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub(crate) struct Policy {
    pub(crate) expires_unix: Option<i64>,
    pub(crate) protected: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct FollowerConfig {
    pub(crate) source_url: String,
    pub(crate) slot: String,
    pub(crate) pg_bin: PathBuf,
    pub(crate) user: String,
    pub(crate) dbname: String,
    pub(crate) stopped: bool,
    /// A hot standby, or masked into a read-write main.
    #[serde(default = "physical")]
    pub(crate) mode: FollowerMode,
    #[serde(default)]
    pub(crate) publication: Option<String>,
    /// The transform config's name as the user gave it (for messages); its text is
    /// in the store (`data/transform.yaml`).
    #[serde(default)]
    pub(crate) config_name: Option<String>,
    #[serde(default = "yes")]
    pub(crate) strict: bool,
    /// Whether pgbranch created the publication (and so may drop it).
    #[serde(default = "yes")]
    pub(crate) publication_created: bool,
    /// Hot-standby settings pgbranch raised on main after the source raised them.
    #[serde(default)]
    pub(crate) settings_raised: Vec<RaisedSetting>,
    /// Times main's standby exited on its own and was started again.
    #[serde(default)]
    pub(crate) standby_restarts: u64,
}

fn physical() -> FollowerMode {
    FollowerMode::Physical
}

fn yes() -> bool {
    true
}

/// The layout of `servers.json` this pgbranch writes; it reads this one and older.
pub(crate) const FORMAT: u32 = 1;

/// Files written before the `format` field are format 1 (the same layout).
fn format_one() -> u32 {
    1
}

#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct RuntimeState {
    #[serde(default = "format_one")]
    pub(crate) format: u32,
    #[serde(default)]
    pub(crate) servers: BTreeMap<String, ServerSpec>,
    #[serde(default)]
    pub(crate) policies: BTreeMap<String, Policy>,
    #[serde(default)]
    pub(crate) follower: Option<FollowerConfig>,
}

impl Default for RuntimeState {
    fn default() -> RuntimeState {
        RuntimeState { format: FORMAT, servers: BTreeMap::new(), policies: BTreeMap::new(), follower: None }
    }
}

impl RuntimeState {
    /// Reads `servers.json`; a file of a newer format is refused, not half-read.
    fn parse(bytes: &[u8], path: &Path) -> Result<RuntimeState> {
        #[derive(Deserialize)]
        struct Format {
            #[serde(default = "format_one")]
            format: u32,
        }
        let format: Format = serde_json::from_slice(bytes).with_context(|| format!("parsing {}", path.display()))?;
        if format.format > FORMAT {
            bail!(
                "{} is format {}, written by a newer pgbranch; this one reads format {FORMAT} and older: run the newer pgbranch (or restore the file it replaced)",
                path.display(),
                format.format
            );
        }
        let mut state: RuntimeState = serde_json::from_slice(bytes).with_context(|| format!("parsing {}", path.display()))?;
        state.format = FORMAT;
        Ok(state)
    }
}

/// Branch servers and the runtime state that brings them back. The state is only
/// reachable through [`Servers::read`] and [`Servers::update`]; `update` saves
/// `servers.json` before it returns, so no change is ever left unsaved.
pub(crate) struct Servers {
    path: PathBuf,
    run_dir: PathBuf,
    pub(crate) owner: Owner,
    state: Mutex<RuntimeState>,
    live: Mutex<BTreeMap<String, Server>>,
}

/// The pid on the first line of a postgres lock file (`postmaster.pid`, a socket's
/// `.lock`).
fn lock_file_pid(lock: &Path) -> Option<i32> {
    std::fs::read_to_string(lock).ok().and_then(|s| s.lines().next()?.trim().parse::<i32>().ok())
}

/// Removes a postmaster.pid whose postmaster is dead. Postgres itself treats a zombie
/// postmaster as alive and would refuse to start.
fn clear_dead_lock_file(lock: &Path) {
    if let Some(pid) = lock_file_pid(lock) {
        if !is_running(pid) {
            let _ = std::fs::remove_file(lock);
        }
    }
}

impl Servers {
    pub(crate) fn open(data_dir: &Path, run_dir: &Path) -> Result<Servers> {
        let path = data_dir.join("servers.json");
        let state = match std::fs::read(&path) {
            Ok(bytes) => RuntimeState::parse(&bytes, &path)?,
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

    /// Reads the runtime state under its lock.
    pub(crate) fn read<R>(&self, f: impl FnOnce(&RuntimeState) -> R) -> R {
        f(&self.state.lock())
    }

    /// Changes the runtime state and saves it: takes the lock, applies `f`, writes
    /// `servers.json` atomically and durably, then releases the lock (so saves happen
    /// in the order of the changes). If the write fails the change stays in memory
    /// and the error says so; the next successful update saves it too.
    pub(crate) fn update<R>(&self, f: impl FnOnce(&mut RuntimeState) -> R) -> Result<R> {
        let mut state = self.state.lock();
        let out = f(&mut state);
        let bytes = serde_json::to_vec_pretty(&*state).context("encoding the servers state")?;
        crate::files::write_atomic(&self.path, &bytes, 0o600)
            .context("saving the branch servers' state; the change is in effect until the daemon restarts")?;
        Ok(out)
    }

    /// The follower's configuration, if one was registered.
    pub(crate) fn follower(&self) -> Option<FollowerConfig> {
        self.read(|s| s.follower.clone())
    }

    pub(crate) fn socket_dir(&self, name: &str) -> PathBuf {
        self.run_dir.join(name)
    }

    pub(crate) fn spec(&self, name: &str) -> Option<ServerSpec> {
        self.state.lock().servers.get(name).cloned()
    }

    pub(crate) fn is_running(&self, name: &str) -> bool {
        self.live.lock().contains_key(name)
    }

    pub(crate) fn running_ports(&self) -> BTreeMap<String, u16> {
        self.live.lock().iter().map(|(n, s)| (n.clone(), s.port)).collect()
    }

    /// Starts the server of branch `name` at `data` per its spec; records its pid.
    pub(crate) fn start(&self, name: &str, data: &Path) -> Result<()> {
        if self.is_running(name) {
            return Ok(());
        }
        let spec = self.spec(name).with_context(|| format!("branch {name} has no server configured"))?;
        if !spec.wanted {
            // Wanted from the request on: a crash while it starts still brings it back.
            self.want_running(name)?;
        }
        clear_dead_lock_file(&data.join("postmaster.pid"));
        clear_dead_lock_file(&self.socket_dir(name).join(format!(".s.PGSQL.{}.lock", spec.port)));
        let bin = PgBin(spec.pg_bin.clone());
        let server = Server::start(&bin, &self.owner, data, &self.socket_dir(name), spec.port)
            .with_context(|| format!("starting postgres on branch {name}"))?;
        let recorded = self.update(|st| {
            // Forgotten while it started (a delete): record nothing; dropping the
            // server stops it.
            let s = st.servers.get_mut(name)?;
            s.pid = server.pid;
            Some(())
        })?;
        if recorded.is_none() {
            bail!("branch {name} was deleted while its server started");
        }
        self.live.lock().insert(name.to_string(), server);
        Ok(())
    }

    /// Whether the server of `name`, started by this daemon, has since exited by itself.
    pub(crate) fn exited(&self, name: &str) -> bool {
        self.live.lock().get(name).and_then(|s| s.pid).is_some_and(|p| !is_running(p))
    }

    /// Stops the server of `name` if it still runs (or forgets it if it exited; its pid
    /// may belong to another process by now) and starts it again.
    pub(crate) fn restart(&self, name: &str, data: &Path) -> Result<()> {
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

    /// The user's stop (`branch stop`, `clone stop`): records first that the server is
    /// no longer wanted (a crash after that leaves it stopped), then stops it.
    pub(crate) fn stop(&self, name: &str) -> Result<()> {
        self.update(|st| {
            if let Some(s) = st.servers.get_mut(name) {
                s.wanted = false;
            }
        })?;
        self.halt(name)
    }

    /// Stops the server of `name` (fast shutdown) for the daemon's own reasons (a
    /// reset, a delete, its shutdown): whether the user wants it running is unchanged.
    pub(crate) fn halt(&self, name: &str) -> Result<()> {
        let live = self.live.lock().remove(name);
        if let Some(mut server) = live {
            server.stop().with_context(|| format!("stopping postgres on branch {name}"))?;
        }
        self.update(|st| {
            if let Some(s) = st.servers.get_mut(name) {
                s.pid = None;
            }
        })
    }

    /// Records that the user wants the server of `name` running (before the daemon
    /// stops it to start it again, so a crash in between still brings it back).
    pub(crate) fn want_running(&self, name: &str) -> Result<()> {
        self.update(|st| {
            if let Some(s) = st.servers.get_mut(name) {
                s.wanted = true;
            }
        })
    }

    /// The servers the user wants running, and every server with a recorded pid (a
    /// daemon that died may have left it running).
    pub(crate) fn wanted_and_recorded(&self) -> (Vec<String>, Vec<String>) {
        self.read(|st| {
            let wanted = st.servers.iter().filter(|(_, s)| s.wanted).map(|(n, _)| n.clone()).collect();
            let recorded = st.servers.iter().filter(|(_, s)| s.pid.is_some()).map(|(n, _)| n.clone()).collect();
            (wanted, recorded)
        })
    }

    /// Sends SIGKILL to a server left by a daemon that died, and to its backends (they
    /// hold its shared memory, which would keep a new postmaster from starting).
    /// The postmaster is the recorded pid, or, when the daemon died before recording
    /// it (while `pg_ctl start` waited), the one `data/postmaster.pid` names if its
    /// command line runs on `data`.
    pub(crate) fn signal_orphan(&self, name: &str, data: &Path) -> Vec<i32> {
        let recorded = self.read(|st| st.servers.get(name).and_then(|s| s.pid)).filter(|p| is_postgres(*p));
        let pid = recorded.or_else(|| lock_file_pid(&data.join("postmaster.pid")).filter(|p| is_postgres_of(*p, data)));
        let Some(pid) = pid else { return Vec::new() };
        let mut all = children(pid);
        all.push(pid);
        for p in &all {
            let _ = crate::sys::kill(*p, libc::SIGKILL);
        }
        all
    }

    /// Waits for killed processes to die (zombies count as dead: their parent may
    /// never reap them).
    pub(crate) fn wait_dead(pids: &[i32]) {
        for &pid in pids {
            for _ in 0..400 {
                if !is_running(pid) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(25));
            }
        }
    }

    /// The pid of branch `name`'s running postmaster, as started.
    pub(crate) fn postmaster_pid(&self, name: &str) -> Option<i32> {
        self.live.lock().get(name).and_then(|s| s.pid)
    }

    pub(crate) fn server(&self, name: &str) -> Option<Server> {
        let live = self.live.lock();
        let s = live.get(name)?;
        Some(Server::adopt(&s.bin, &s.owner, &s.data, &s.socket_dir, s.port, None))
    }

    /// Forgets everything about a deleted branch.
    pub(crate) fn forget(&self, name: &str) -> Result<()> {
        self.halt(name)?;
        self.update(|st| {
            st.servers.remove(name);
            st.policies.remove(name);
        })
    }

    /// The URL of a branch's server.
    pub(crate) fn url(&self, name: &str) -> Result<String> {
        let Some(spec) = self.spec(name) else {
            bail!("branch {name} has no postgres server (created --empty or --no-start?); start one with `pgbranch branch start {name}`")
        };
        let password = match &spec.password {
            Some(p) => p.clone(),
            None => {
                self.follower().and_then(|f| pgbranch_replicator::source::Source::parse(&f.source_url).ok()?.password()).unwrap_or_default()
            }
        };
        Ok(format!("postgresql://{}:{}@127.0.0.1:{}/{}", encode(&spec.user), encode(&password), spec.port, encode(&spec.dbname)))
    }

    /// Stops every server (daemon shutdown); they come back on the next start.
    pub(crate) fn stop_all(&self) {
        let names: Vec<String> = self.live.lock().keys().cloned().collect();
        for name in names {
            if let Err(e) = self.halt(&name) {
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

/// A new server's spec, made to be started at once (so wanted from the start).
pub(crate) fn new_spec(user: &str, dbname: &str, pg_bin: &PgBin, standby: bool) -> Result<ServerSpec> {
    Ok(ServerSpec {
        port: pg::free_port()?,
        user: user.to_string(),
        password: if standby { None } else { Some(pg::generate_password()) },
        dbname: dbname.to_string(),
        pg_bin: pg_bin.0.clone(),
        wanted: true,
        pid: None,
        standby,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_json_format_is_checked_on_load() {
        let path = Path::new("/store/data/servers.json");
        // Written before the format field: format 1, same layout; `running` is the
        // wanted flag.
        let old = br#"{"servers":{"x":{"port":5433,"user":"u","password":"p","dbname":"d","pg_bin":"/bin","running":true,"pid":7}}}"#;
        let st = RuntimeState::parse(old, path).unwrap();
        assert_eq!(st.format, 1);
        assert!(st.servers["x"].wanted && st.servers["x"].pid == Some(7) && !st.servers["x"].standby);
        let again = serde_json::to_value(&st).unwrap();
        assert_eq!(again["format"], 1);
        assert_eq!(again["servers"]["x"]["running"], true, "the key stays `running`");
        let newer = br#"{"format":2,"servers":{}}"#;
        let e = format!("{:#}", RuntimeState::parse(newer, path).unwrap_err());
        assert!(e.contains("format 2") && e.contains("newer pgbranch") && e.contains("servers.json"), "{e}");
        let e = format!("{:#}", RuntimeState::parse(b"{not json", path).unwrap_err());
        assert!(e.contains("parsing /store/data/servers.json"), "{e}");
    }
}
