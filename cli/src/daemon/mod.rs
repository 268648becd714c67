//! The daemon: owns the repository and every mount, commits in the background, and
//! answers the CLI over the control socket.

mod collector;
mod committer;
mod follower;
mod handlers;
mod history;
mod servers;
mod space;
mod standby;

pub use handlers::MAIN;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use parking_lot::Mutex;
use pgbranch_fs::commit_signal::CommitSignal;
use pgbranch_fs::fuse::{self, Mounted};
use pgbranch_fs::repo::Repository;
use pgbranch_fs::space::SpaceGuard;
use serde_json::Value;

use crate::api::{FollowerMode, Request, Response};
use crate::layout::Layout;
use crate::sys;

/// Commit every few seconds even without pressure: bounds intent-log replay time.
const COMMIT_INTERVAL: Duration = Duration::from_secs(5);
/// Dirty blocks per branch that trigger an early commit (16 MiB); writers wait at 4x.
/// Low enough that uncommitted data stays a small part of the daemon's memory.
const DIRTY_SOFT_LIMIT: u64 = 2048;

pub(crate) struct Daemon {
    pub(crate) layout: Layout,
    pub(crate) repo: Arc<Repository>,
    pub(crate) mounts: Mutex<BTreeMap<String, Mounted>>,
    pub(crate) signal: Arc<CommitSignal>,
    /// The disk under the store, shared by every mount: growth is refused below
    /// [`space::FULL_MARGIN`].
    pub(crate) space: Arc<SpaceGuard>,
    /// Who collects garbage (`pgbranch.toml`).
    gc_mode: crate::store_config::GcMode,
    pub(crate) started: Instant,
    pub(crate) owner: (u32, u32),
    pub(crate) servers: servers::Servers,
    /// The masked follower's stream thread, when one runs.
    logical: Mutex<Option<follower::LogicalRunner>>,
    stopping: AtomicBool,
    _lock: std::fs::File,
}

/// The uid/gid that will own new branch directories: the `postgres` user when the
/// daemon runs as root (postgres refuses to run as root), else the daemon's own user.
fn branch_owner() -> Result<(u32, u32)> {
    if !sys::is_root() {
        return Ok(sys::effective_ids());
    }
    sys::user_ids("postgres").context(
        "running as root, branches are owned by the 'postgres' OS user, but there is none; install postgresql or run pgbranch as a non-root user",
    )
}

/// Takes the store's lock (one daemon per store) and writes this daemon's pid into the
/// lock file through the locked descriptor: written over the old pid at offset 0, then
/// cut to length, so a daemon refused at any moment reads a whole pid (old or new).
fn take_lock(layout: &Layout) -> Result<std::fs::File> {
    let path = layout.lock();
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening the store's lock file {}", path.display()))?;
    if !pgbranch_fs::sys::try_lock_exclusive(&file).with_context(|| format!("locking {}", path.display()))? {
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        let holder = text.lines().next().map(str::trim).filter(|p| !p.is_empty()).unwrap_or("unknown");
        bail!(
            "another pgbranch daemon (pid {holder}) is already serving store {}; use it, or stop it with `pgbranch --store {} stop`",
            layout.root.display(),
            layout.root.display()
        );
    }
    let pid = format!("{}\n", std::process::id());
    file.write_all_at(pid.as_bytes(), 0)
        .and_then(|()| file.set_len(pid.len() as u64))
        .with_context(|| format!("writing this daemon's pid into {}", path.display()))?;
    Ok(file)
}

impl Daemon {
    pub(crate) fn start(layout: Layout) -> Result<Arc<Daemon>> {
        layout.prepare()?;
        let lock = take_lock(&layout)?;
        let owner = branch_owner()?;
        if let Err(e) = crate::source_tls::publish(&layout, owner) {
            tracing::warn!("laying out the source's TLS files for postgres: {e:#}");
        }
        let config = crate::store_config::load(&layout.root)?;
        let repo = Arc::new(Repository::open(&layout.data()).with_context(|| format!("opening the store in {}", layout.root.display()))?);
        repo.set_default_retention(config.history_secs);
        let servers = servers::Servers::open(&layout.data(), &layout.run_dir())?;
        let space = Arc::new(SpaceGuard::new(&layout.data(), space::FULL_MARGIN));
        let daemon = Arc::new(Daemon {
            servers,
            layout,
            repo,
            mounts: Mutex::new(BTreeMap::new()),
            signal: Arc::new(CommitSignal::new(DIRTY_SOFT_LIMIT)),
            space,
            gc_mode: config.gc,
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

    /// Brings back the servers the user wants running (as the last daemon left them
    /// recorded, whether it stopped or died).
    pub(crate) fn restore_servers(self: &Arc<Self>) {
        let d = self.clone();
        let spawned = std::thread::Builder::new().name("restore-servers".into()).spawn(move || {
            d.restore_servers_now();
            // The masked follower's stream resumes once main's server is back.
            if let Some(f) = d.servers.follower().filter(|f| f.mode == FollowerMode::Logical && !f.stopped) {
                if let Err(e) = d.start_logical(&f) {
                    tracing::error!(
                        "could not resume the masked follower: {e:#}; run `pgbranch clone reload --config FILE` to start it again"
                    );
                }
            }
        });
        if let Err(e) = spawned {
            tracing::error!("cannot start the thread that restores branch servers: {e}; start them with `pgbranch branch start NAME`");
        }
    }

    fn restore_servers_now(&self) {
        let (wanted, recorded) = self.servers.wanted_and_recorded();
        // Orphans first, all at once (each may take a moment to die): every server a
        // dead daemon left running, wanted or not (a wanted one may have no pid yet).
        let mut orphans = Vec::new();
        let suspects: std::collections::BTreeSet<&String> = recorded.iter().chain(&wanted).collect();
        for name in suspects {
            let pids = self.servers.signal_orphan(name, &self.layout.mount_point(name));
            if let Some(pid) = pids.last() {
                tracing::warn!("stopped postgres {pid} of branch {name}, orphaned by a previous daemon");
            }
            orphans.extend(pids);
        }
        servers::Servers::wait_dead(&orphans);
        for name in &recorded {
            if let Err(e) = self.servers.halt(name) {
                tracing::warn!("{e:#}");
            }
        }
        for name in wanted {
            if self.repo.get(&name).is_err() {
                // Deleted by a daemon that died before it forgot the server.
                if let Err(e) = self.servers.forget(&name) {
                    tracing::warn!("forgetting the server of deleted branch {name}: {e:#}");
                }
                continue;
            }
            if let Err(e) = self.servers.start(&name, &self.layout.mount_point(&name)) {
                tracing::error!("could not restart postgres on branch {name}: {e:#}; see `pgbranch branch start {name}`");
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

    pub(crate) fn mount(&self, name: &str) -> Result<()> {
        let branch = self.repo.get(name)?;
        let path = self.layout.mount_point(name);
        fuse::clear_stale(&path).ok();
        std::fs::create_dir_all(&path).with_context(|| format!("creating mount point {}", path.display()))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o700))?;
        let mounted = fuse::mount(branch, &path, self.signal.clone(), self.space.clone())
            .with_context(|| format!("mounting branch {name} at {}", path.display()))?;
        self.mounts.lock().insert(name.to_string(), mounted);
        Ok(())
    }

    /// Unmounts a branch; refuses while anything uses it.
    pub(crate) fn unmount(&self, name: &str) -> Result<()> {
        let Some(m) = self.mounts.lock().remove(name) else { return Ok(()) };
        let path = m.path().to_path_buf();
        // A plain unmount: it fails with EBUSY while anything is inside.
        if let Err(err) = pgbranch_fs::sys::unmount(&path, false) {
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

    pub(crate) fn serve(self: &Arc<Self>) -> Result<()> {
        let sock = self.layout.socket();
        if sock.exists() {
            std::fs::remove_file(&sock).with_context(|| format!("removing stale socket {}", sock.display()))?;
        }
        let listener = sys::with_umask(0o077, || UnixListener::bind(&sock)).with_context(|| format!("binding {}", sock.display()))?;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600))?;
        tracing::info!("pgbranch daemon serving {} (pid {})", self.layout.root.display(), std::process::id());
        for conn in listener.incoming() {
            if self.stopping.load(Ordering::Relaxed) {
                break;
            }
            let Ok(conn) = conn else { continue };
            let d = self.clone();
            let spawned = std::thread::Builder::new().name("request".into()).spawn(move || {
                if let Err(e) = d.handle_conn(conn) {
                    tracing::warn!("control connection: {e}");
                }
            });
            if let Err(e) = spawned {
                tracing::error!("cannot start a thread for a control connection: {e}; the client sees its connection closed");
            }
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
                let r = guarded(req.op(), || self.handle(req));
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
    pub(crate) fn shutdown(&self) {
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
        if let Err(e) = self.repo.close() {
            tracing::warn!("merging the object index at shutdown: {e}; the next start indexes the newest records from their packs");
        }
        let _ = std::fs::remove_file(self.layout.socket());
    }
}

/// The message a panic carried (a `&str` or a `String`), for the log and the client.
pub(crate) fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into())
}

/// Runs one request's handler. A panic in it (a bug) neither kills the daemon nor
/// leaves the client without an answer: it is caught here, after unwinding has dropped
/// every guard the handler held, logged, and answered as an error naming the request.
fn guarded(op: &str, handler: impl FnOnce() -> Result<Value>) -> Response {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(handler)) {
        Ok(Ok(data)) => Response::ok(data),
        Ok(Err(e)) => Response::err(format!("{e:#}")),
        Err(panic) => {
            let what = panic_message(panic.as_ref());
            tracing::error!("request {op} panicked: {what}; the daemon keeps serving");
            Response::err(format!(
                "the daemon failed on request {op}: it panicked ({what}); it keeps serving, but this is a bug in pgbranch: report it with the daemon's log"
            ))
        }
    }
}

/// Runs the daemon in the foreground until SIGTERM/SIGINT or a shutdown request.
pub fn run(layout: Layout) -> Result<()> {
    sys::tune_malloc();
    let daemon = Daemon::start(layout)?;
    daemon.spawn_committer().context("spawning the committer")?;
    daemon.spawn_collector().context("spawning the garbage collector")?;
    daemon.keep_reserve();
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panicking_handler_is_answered_with_an_error_naming_the_request() {
        let r = guarded("branch_reset", || panic!("index out of bounds"));
        assert!(!r.ok);
        let e = r.error.unwrap_or_default();
        assert!(e.contains("branch_reset") && e.contains("index out of bounds"), "{e}");
        let r = guarded("status", || Ok(serde_json::json!({ "pid": 1 })));
        assert!(r.ok && r.data["pid"] == 1);
        let r = guarded("gc", || bail!("the store is busy"));
        assert_eq!(r.error.as_deref(), Some("the store is busy"));
    }

    #[test]
    fn the_lock_file_names_the_daemon_that_holds_it() {
        let root = std::env::temp_dir().join(format!("pgbranch-lock-{}", std::process::id()));
        std::fs::create_dir_all(&root).unwrap();
        let layout = Layout { root: root.clone() };
        // A longer stale pid from a dead daemon: replaced whole, no digits left over.
        std::fs::write(layout.lock(), "1234567890\n").unwrap();
        let held = take_lock(&layout).unwrap();
        let me = std::process::id();
        assert_eq!(std::fs::read_to_string(layout.lock()).unwrap(), format!("{me}\n"));
        let e = format!("{:#}", take_lock(&layout).unwrap_err());
        assert!(e.contains(&format!("another pgbranch daemon (pid {me})")), "{e}");
        drop(held);
        drop(take_lock(&layout).unwrap());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
