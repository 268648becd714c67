//! The daemon: owns the repository and every mount, commits in the background, and
//! answers the CLI over the control socket.

mod committer;
mod follower;
mod handlers;
pub mod servers;
mod space;
mod standby;

pub use handlers::MAIN;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use parking_lot::Mutex;
use pgbranch_fs::commit_signal::CommitSignal;
use pgbranch_fs::fuse::{self, Mounted};
use pgbranch_fs::repo::Repository;

use crate::api::{Request, Response};
use crate::layout::Layout;

/// Commit every few seconds even without pressure: bounds intent-log replay time.
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);
/// Dirty blocks per branch that trigger an early commit (16 MiB); writers wait at 4x.
/// Low enough that uncommitted data stays a small part of the daemon's memory.
const DIRTY_SOFT_LIMIT: u64 = 2048;

pub struct Daemon {
    pub layout: Layout,
    pub repo: Arc<Repository>,
    pub mounts: Mutex<BTreeMap<String, Mounted>>,
    pub signal: Arc<CommitSignal>,
    pub started: Instant,
    pub owner: (u32, u32),
    pub servers: servers::Servers,
    /// The masked follower's stream thread, when one runs.
    logical: Mutex<Option<follower::LogicalRunner>>,
    stopping: AtomicBool,
    _lock: std::fs::File,
}

/// The uid/gid that will own new branch directories: the `postgres` user when the
/// daemon runs as root (postgres refuses to run as root), else the daemon's own user.
fn branch_owner() -> Result<(u32, u32)> {
    let uid = unsafe { libc::geteuid() };
    if uid != 0 {
        return Ok((uid, unsafe { libc::getegid() }));
    }
    let name = std::ffi::CString::new("postgres").unwrap();
    let pw = unsafe { libc::getpwnam(name.as_ptr()) };
    if pw.is_null() {
        bail!("running as root, branches are owned by the 'postgres' OS user, but there is none; install postgresql or run pgbranch as a non-root user");
    }
    Ok(unsafe { ((*pw).pw_uid, (*pw).pw_gid) })
}

fn take_lock(layout: &Layout) -> Result<std::fs::File> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(layout.lock())
        .with_context(|| format!("opening {}", layout.lock().display()))?;
    use std::os::fd::AsRawFd;
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let pid = std::fs::read_to_string(layout.lock()).unwrap_or_default();
        bail!("another pgbranch daemon (pid {}) is already serving store {}", pid.trim(), layout.root.display());
    }
    file.set_len(0)?;
    std::fs::write(layout.lock(), format!("{}\n", std::process::id()))?;
    Ok(file)
}

impl Daemon {
    pub fn start(layout: Layout) -> Result<Arc<Daemon>> {
        layout.prepare()?;
        let lock = take_lock(&layout)?;
        let owner = branch_owner()?;
        if let Err(e) = crate::source_tls::publish(&layout, owner) {
            tracing::warn!("laying out the source's TLS files for postgres: {e:#}");
        }
        let repo = Arc::new(Repository::open(&layout.data()).with_context(|| format!("opening the store in {}", layout.root.display()))?);
        let servers = servers::Servers::open(&layout.data(), &layout.run_dir())?;
        let daemon = Arc::new(Daemon {
            servers,
            layout,
            repo,
            mounts: Mutex::new(BTreeMap::new()),
            signal: Arc::new(CommitSignal::new(DIRTY_SOFT_LIMIT)),
            started: Instant::now(),
            owner,
            logical: Mutex::new(None),
            stopping: AtomicBool::new(false),
            _lock: lock,
        });
        daemon.clear_stale_mounts()?;
        for branch in daemon.repo.branches() {
            daemon.mount(&branch.name)?;
        }
        Ok(daemon)
    }

    /// Brings back the servers that were running when the last daemon stopped or died.
    pub fn restore_servers(self: &Arc<Self>) {
        let d = self.clone();
        std::thread::spawn(move || {
            d.restore_servers_now();
            // The masked follower's stream resumes once main's server is back.
            let follower = d.servers.state.lock().follower.clone();
            if let Some(f) = follower.filter(|f| f.mode == "logical" && !f.stopped) {
                if let Err(e) = d.start_logical(&f) {
                    tracing::error!("could not resume the masked follower: {e:#}");
                }
            }
        });
    }

    fn restore_servers_now(&self) {
        let d = self;
        {
            let wanted: Vec<String> = d.servers.state.lock().servers.iter().filter(|(_, s)| s.running).map(|(n, _)| n.clone()).collect();
            // Orphans first, all at once: each may take a moment to die.
            let mut orphans = Vec::new();
            for name in &wanted {
                let pids = d.servers.signal_orphan(name);
                if let Some(pid) = pids.last() {
                    tracing::warn!("stopped postgres {pid} of branch {name}, orphaned by a previous daemon");
                }
                orphans.extend(pids);
            }
            servers::Servers::wait_dead(&orphans);
            for name in wanted {
                if d.repo.get(&name).is_err() {
                    continue;
                }
                if let Err(e) = d.servers.start(&name, &d.layout.mount_point(&name)) {
                    tracing::error!("could not restart postgres on branch {name}: {e:#}");
                }
            }
        }
    }

    /// Detaches mounts a dead daemon left behind (they would answer ENOTCONN forever).
    fn clear_stale_mounts(&self) -> Result<()> {
        let Ok(entries) = std::fs::read_dir(self.layout.mounts()) else { return Ok(()) };
        for e in entries.flatten() {
            let path = e.path();
            if fuse::clear_stale(&path).with_context(|| format!("detaching stale mount {}", path.display()))? {
                tracing::warn!("detached a stale mount at {}", path.display());
            }
            if self.repo.get(&e.file_name().to_string_lossy()).is_err() {
                let _ = std::fs::remove_dir(&path);
            }
        }
        Ok(())
    }

    pub fn mount(&self, name: &str) -> Result<()> {
        let branch = self.repo.get(name)?;
        let path = self.layout.mount_point(name);
        fuse::clear_stale(&path).ok();
        std::fs::create_dir_all(&path).with_context(|| format!("creating mount point {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        let mounted = fuse::mount(branch, &path, self.signal.clone(), &self.layout.data())
            .with_context(|| format!("mounting branch {name} at {}", path.display()))?;
        self.mounts.lock().insert(name.to_string(), mounted);
        Ok(())
    }

    /// Unmounts a branch; refuses while anything uses it.
    pub fn unmount(&self, name: &str) -> Result<()> {
        let Some(m) = self.mounts.lock().remove(name) else { return Ok(()) };
        let path = m.path().to_path_buf();
        // Try a plain unmount first: it fails with EBUSY while anything is inside.
        let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
        if unsafe { libc::umount2(c.as_ptr(), 0) } != 0 {
            let err = std::io::Error::last_os_error();
            self.mounts.lock().insert(name.to_string(), m);
            if err.raw_os_error() == Some(libc::EBUSY) {
                bail!(
                    "branch {name} is in use: a process has a file open or its working directory in {} (stop its postgres first); nothing was changed",
                    path.display()
                );
            }
            bail!("cannot unmount {}: {err}", path.display());
        }
        drop(m);
        let _ = std::fs::remove_dir(&path);
        Ok(())
    }

    pub fn serve(self: &Arc<Self>) -> Result<()> {
        let sock = self.layout.socket();
        if sock.exists() {
            std::fs::remove_file(&sock).with_context(|| format!("removing stale socket {}", sock.display()))?;
        }
        let old = unsafe { libc::umask(0o077) };
        let listener = UnixListener::bind(&sock).with_context(|| format!("binding {}", sock.display()));
        unsafe { libc::umask(old) };
        let listener = listener?;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
        tracing::info!("pgbranch daemon serving {} (pid {})", self.layout.root.display(), std::process::id());
        for conn in listener.incoming() {
            if self.stopping.load(Ordering::Relaxed) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let d = self.clone();
            std::thread::spawn(move || {
                if let Err(e) = d.handle_conn(conn) {
                    tracing::warn!("control connection: {e}");
                }
            });
        }
        Ok(())
    }

    fn handle_conn(self: &Arc<Self>, conn: UnixStream) -> Result<()> {
        let mut line = String::new();
        if BufReader::new(&conn).read_line(&mut line)? == 0 {
            return Ok(()); // a liveness probe: connected and left
        }
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(req) => {
                let shutdown = matches!(req, Request::Shutdown);
                let r = match self.handle(req) {
                    Ok(data) => Response::ok(data),
                    Err(e) => Response::err(format!("{e:#}")),
                };
                if shutdown {
                    // Answer only once everything is committed and unmounted.
                    self.shutdown();
                    let mut w = &conn;
                    writeln!(w, "{}", serde_json::to_string(&r)?)?;
                    std::process::exit(0);
                }
                r
            }
            Err(e) => Response::err(format!("malformed request: {e}")),
        };
        let mut w = &conn;
        writeln!(w, "{}", serde_json::to_string(&response)?)?;
        Ok(())
    }

    /// Commits everything and unmounts (lazily, so a stuck client cannot hang us).
    pub fn shutdown(&self) {
        self.stop_logical();
        // The committer keeps running while the servers stop: their shutdown
        // checkpoints can write more than the dirty limit, and writers past it wait
        // for a commit.
        self.servers.stop_all();
        self.stopping.store(true, Ordering::Relaxed);
        self.signal.nudge();
        if let Err(e) = self.repo.commit_all() {
            tracing::error!("final commit failed: {e}; the intent logs still hold every change");
        }
        let mounts = std::mem::take(&mut *self.mounts.lock());
        for (name, m) in mounts {
            let path = m.path().to_path_buf();
            drop(m);
            tracing::info!("unmounted {name}");
            let _ = std::fs::remove_dir(&path);
        }
        let _ = std::fs::remove_file(self.layout.socket());
    }
}

/// Each FUSE worker thread allocates a 16 MiB request buffer. glibc's adaptive mmap
/// threshold would serve later ones from recycled heap memory that calloc must zero,
/// making all of it resident; a fixed threshold keeps them lazily-zeroed fresh maps,
/// resident only as far as requests fill them. Fewer arenas also bound fragmentation.
fn tune_malloc() {
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

/// Runs the daemon in the foreground until SIGTERM/SIGINT or a shutdown request.
pub fn run(layout: Layout) -> Result<()> {
    tune_malloc();
    let daemon = Daemon::start(layout)?;
    daemon.spawn_committer().context("spawning the committer")?;
    daemon.restore_servers();
    daemon.spawn_standby_watch();
    let d = daemon.clone();
    let mut signals = signal_hook::iterator::Signals::new([signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT])?;
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            tracing::info!("signal received, shutting down");
            d.shutdown();
            std::process::exit(0);
        }
    });
    daemon.serve()
}
