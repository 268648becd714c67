//! What the daemon does for each control request.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use pgbranch_fs::catalog::Kind;
use pgbranch_replicator::follower;
use pgbranch_replicator::pg::{self, PgBin};
use pgbranch_replicator::pgconf;
use pgbranch_replicator::source::Source;
use serde::Serialize;
use serde_json::Value;

use super::history::PastTarget;
use super::servers::{new_spec, FollowerConfig, Policy};
use super::Daemon;
use crate::api::{
    self, BranchInfo, BranchPath, BranchUrl, Committed, Created, Deleted, FollowStopped, FollowerMode, FollowerState, FollowerStatus,
    LogicalFollow, MainServer, Protected, Reloaded, Request, ResetDone, ServerStopped, SourceUrl, Status, Stopping,
};
use crate::procs;

/// The branch a follower keeps in sync, and the default parent of new branches.
pub const MAIN: &str = "main";

impl Daemon {
    fn list(&self) -> Result<Vec<BranchInfo>> {
        let mounts = self.mounts.lock();
        let ports = self.servers.running_ports();
        let (policies, ports_configured) = self.servers.read(|st| {
            (st.policies.clone(), st.servers.iter().map(|(n, s)| (n.clone(), s.port)).collect::<std::collections::BTreeMap<_, _>>())
        });
        let mut out = Vec::new();
        for rec in self.repo.records()? {
            let branch = self.repo.get(&rec.name)?;
            let policy = policies.get(&rec.name).cloned().unwrap_or_default();
            out.push(BranchInfo {
                kind: rec.kind.into(),
                path: self.layout.mount_point(&rec.name),
                mounted: mounts.contains_key(&rec.name),
                read_only: rec.kind == Kind::Snapshot,
                created_unix: rec.created_unix,
                head: rec.root.to_hex().to_string(),
                open_handles: branch.open_handles(),
                dirty_bytes: branch.dirty_blocks() * 8192,
                running: ports.contains_key(&rec.name),
                port: ports_configured.get(&rec.name).copied(),
                expires_unix: policy.expires_unix,
                protected: policy.protected,
                parent: rec.parent,
                name: rec.name,
            });
        }
        Ok(out)
    }

    fn follower_status(&self) -> Option<FollowerStatus> {
        let f = self.servers.follower()?;
        let state = if f.stopped {
            FollowerState::Stopped
        } else if self.servers.is_running(MAIN) {
            FollowerState::Streaming
        } else {
            FollowerState::Starting
        };
        let mut v = FollowerStatus::new(crate::pii::redact(&f.source_url), f.slot.clone(), f.mode, state);
        if f.mode == FollowerMode::Logical {
            v.publication = f.publication.clone();
            v.config = f.config_name.clone();
            v.strict = Some(f.strict);
            if !f.stopped {
                self.logical_status(&f, &mut v);
            }
            return Some(v);
        }
        v.settings_raised = Some(f.settings_raised.clone());
        v.standby_restarts = Some(f.standby_restarts);
        if let (false, Some(server), Ok(source)) = (f.stopped, self.servers.server(MAIN), Source::parse(&f.source_url)) {
            match follower::measure(&source, &server) {
                Ok(lag) => {
                    v.source_lsn = Some(lag.source_lsn);
                    v.replay_lsn = Some(lag.replay_lsn);
                    v.lag_bytes = Some(lag.bytes);
                    v.lag_seconds = Some(lag.seconds);
                }
                Err(e) => v.error = Some(e.to_string()),
            }
        }
        Some(v)
    }

    fn status(&self) -> Result<Status> {
        let store = self.repo.store();
        Ok(Status {
            pid: std::process::id(),
            store: self.layout.root.clone(),
            uptime_secs: self.started.elapsed().as_secs(),
            branch_owner_uid: self.owner.0,
            rss_bytes: procs::status_bytes("VmRSS:"),
            peak_rss_bytes: procs::status_bytes("VmHWM:"),
            physical_bytes: pgbranch_fs::store::ObjectStore::physical_bytes(store.as_ref())?,
            objects: pgbranch_fs::store::ObjectStore::object_count(store.as_ref())?,
            follower: self.follower_status(),
            space: match super::space::measure(&self.layout.data(), &self.repo.records()?) {
                Ok(s) => api::Space::Measured(s),
                Err(e) => api::Space::Unknown { error: format!("measuring the store's space: {e}") },
            },
            branches: self.list()?,
            gc: Some(self.gc_status()),
            history_secs: self.repo.default_retention(),
        })
    }

    /// Where a new server's role, database and binaries come from: its parent's server,
    /// else the follower's source, else the local defaults.
    fn server_defaults(&self, parent: Option<&str>) -> Result<(String, String, PgBin)> {
        if let Some(spec) = parent.and_then(|p| self.servers.spec(p)) {
            return Ok((spec.user, spec.dbname, PgBin(spec.pg_bin)));
        }
        if let Some(f) = self.servers.follower() {
            return Ok((f.user, f.dbname, PgBin(f.pg_bin)));
        }
        Ok(("postgres".into(), "postgres".into(), PgBin::find(None)?))
    }

    /// Starts postgres on a cut branch as an independent primary with its own password.
    fn start_independent(&self, name: &str, parent: Option<&str>) -> Result<()> {
        let path = self.layout.mount_point(name);
        if !path.join("PG_VERSION").exists() {
            bail!("branch {name} holds no postgres data directory (no PG_VERSION); initdb it first");
        }
        pg::configure_independent(&path).with_context(|| format!("preparing branch {name}"))?;
        if self.servers.spec(name).is_none() {
            let (user, dbname, bin) = self.server_defaults(parent)?;
            let spec = new_spec(&user, &dbname, &bin, false)?;
            self.servers.update(|st| st.servers.insert(name.to_string(), spec))?;
        }
        if path.join("standby.signal").exists() || path.join("recovery.signal").exists() {
            // A cut of a standby, or a branch recovering to an instant, starts in
            // recovery, which needs the hot-standby limits at least as high as its
            // control file records.
            let spec = self.servers.spec(name).with_context(|| format!("branch {name} has no server configured"))?;
            for (setting, from, to) in pgconf::raise_to_controldata(&PgBin(spec.pg_bin), &self.servers.owner, &path)? {
                tracing::info!("branch {name}: raised {setting} from {from} to {to}, as its control file records");
            }
        }
        let recovering = path.join("recovery.signal").exists();
        self.servers.start(name, &path)?;
        let server = self.servers.server(name).context("the branch's server is not running after its start")?;
        if path.join("standby.signal").exists() {
            server.promote().with_context(|| format!("promoting branch {name}"))?;
        }
        let spec = self.servers.spec(name).with_context(|| format!("branch {name} has no server configured"))?;
        if recovering {
            // Hot standby lets pg_ctl return before the target is reached; the branch is
            // ready once postgres has promoted itself.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(600);
            while server.psql_as(&spec.user, &spec.dbname, "SELECT pg_is_in_recovery()").map(|r| r.trim() == "t").unwrap_or(true) {
                if std::time::Instant::now() > deadline {
                    bail!(
                        "branch {name} did not finish recovering to the instant asked for within 10 minutes (see {})",
                        self.servers.socket_dir(name).join("postgres.log").display()
                    );
                }
                let postmaster_alive = self.servers.postmaster_pid(name).is_some_and(crate::procs::is_running);
                if !postmaster_alive {
                    bail!(
                        "branch {name}'s postgres stopped while recovering (see {})",
                        self.servers.socket_dir(name).join("postgres.log").display()
                    );
                }
                std::thread::sleep(std::time::Duration::from_millis(200));
            }
            let archive = path.join(pg::RECOVERY_ARCHIVE);
            if archive.exists() {
                std::fs::remove_dir_all(&archive).with_context(|| format!("removing {} after the recovery", archive.display()))?;
            }
        }
        if let Some(password) = &spec.password {
            // As the bootstrap superuser: a role without it cannot change its own
            // password when it has REPLICATION (a physical follower's role may).
            let set = || -> Result<()> {
                let admin = server.psql_as(&spec.user, &spec.dbname, "SELECT rolname FROM pg_roles WHERE oid = 10")?;
                let sql = format!(
                    "ALTER ROLE {} PASSWORD '{}'",
                    pgbranch_replicator::catalog::quote_ident(&spec.user),
                    password.replace('\'', "''")
                );
                server.psql_as(&admin, &spec.dbname, &sql)?;
                Ok(())
            };
            set().with_context(|| format!("setting the password of role {} on branch {name}", spec.user))?;
        }
        Ok(())
    }

    /// [`Daemon::start_independent`]; for a branch recovering to an instant, when its WAL
    /// ends before any commit after the instant (postgres then refuses: "recovery ended
    /// before configured recovery target was reached"), the end of that WAL *is* the
    /// state at the instant: it starts again recovering to the end.
    fn start_recovering(&self, name: &str, parent: Option<&str>, to_instant: bool) -> Result<()> {
        let first = self.start_independent(name, parent);
        let log = self.servers.socket_dir(name).join("postgres.log");
        let short =
            || std::fs::read_to_string(&log).is_ok_and(|l| l.contains("recovery ended before configured recovery target was reached"));
        match first {
            Err(_) if to_instant && short() => {
                tracing::info!("branch {name}: no commit after the instant in the WAL kept; recovering to its end");
                let _ = self.servers.stop(name);
                pg::clear_recovery_target(&self.layout.mount_point(name))?;
                self.start_independent(name, parent)
            }
            other => other,
        }
    }

    fn create_branch(&self, name: &str, from: Option<String>, how: NewBranch) -> Result<Created> {
        let NewBranch { start, ttl, protect, at_unix_micros, at_lsn, history_secs } = how;
        let target = match (at_unix_micros, at_lsn) {
            (Some(_), Some(_)) => bail!("give --at or --at-lsn, not both"),
            (Some(t), None) => Some(PastTarget::Time(t)),
            (None, Some(l)) => Some(PastTarget::Lsn(l)),
            (None, None) => None,
        };
        let mut from_point = None;
        let mut recover_to = None;
        match (&from, target) {
            (Some(src), Some(target)) => {
                let point = self.create_in_past(name, src, target)?;
                from_point = Some(super::history::point_info(&point));
                recover_to = Some((src.clone(), point, target));
            }
            (Some(src), None) => {
                self.repo.create_from(name, src, Kind::Branch)?;
            }
            (None, Some(_)) => bail!("--at and --at-lsn need --from BRANCH: the branch whose history to start from"),
            (None, None) => {
                self.repo.create_empty(name, self.owner.0, self.owner.1)?;
            }
        };
        if let Some(secs) = history_secs {
            if let Err(e) = self.repo.set_retention(name, Some(secs)) {
                self.repo.delete(name).ok();
                return Err(e.into());
            }
        }
        if let Err(e) = self.mount(name) {
            self.repo.delete(name).ok();
            return Err(e);
        }
        if let Some((src, point, at)) = &recover_to {
            // A postgres branch from the past replays its source's later WAL up to the
            // instant asked for: exact to the transaction, not only to the point.
            if self.layout.mount_point(name).join("PG_VERSION").exists() {
                if let Err(e) = self.stage_recovery_to(name, src, point, *at) {
                    let _ = self.unmount(name);
                    let _ = self.repo.delete(name);
                    return Err(e.context(format!("preparing branch {name} to recover to the instant asked for")));
                }
            }
        }
        let policy = Policy { expires_unix: ttl.map(|t| crate::clock::now_unix() + t as i64), protected: protect };
        self.servers.update(|st| st.policies.insert(name.to_string(), policy))?;
        let mut out = Created { name: name.to_string(), path: self.layout.mount_point(name), url: None, create_micros: None, from_point };
        // Only a branch holding a postgres data directory gets a server.
        if start && from.is_some() && self.layout.mount_point(name).join("PG_VERSION").exists() {
            if let Err(e) = self.start_recovering(name, from.as_deref(), recover_to.is_some()) {
                // Leave nothing half-made behind.
                let _ = self.servers.forget(name);
                let _ = self.unmount(name);
                let _ = self.repo.delete(name);
                return Err(e);
            }
            out.url = Some(self.servers.url(name)?);
        }
        Ok(out)
    }

    pub(super) fn delete_branch(&self, name: &str, snapshot: bool) -> Result<Deleted> {
        let rec = self.repo.record(name)?;
        match (rec.kind, snapshot) {
            (Kind::Snapshot, false) => bail!("'{name}' is a snapshot; delete it with `pgbranch snapshot delete {name}`"),
            (Kind::Branch, true) => bail!("'{name}' is a branch; delete it with `pgbranch branch delete {name}`"),
            _ => {}
        }
        if self.servers.read(|st| st.policies.get(name).is_some_and(|p| p.protected)) {
            bail!("branch {name} is protected; run `pgbranch branch unprotect {name}` first");
        }
        if name == MAIN && self.servers.follower().is_some_and(|f| !f.stopped) {
            bail!("branch main is kept in sync by the follower; run `pgbranch clone stop` first");
        }
        // Halted, not stopped: until the catalog forgets the branch (the commit point)
        // a crash leaves the old branch, its server still wanted.
        self.servers.halt(name)?;
        self.unmount(name)?;
        self.repo.delete(name).with_context(|| format!("deleting {name}"))?;
        self.servers.forget(name)?;
        Ok(Deleted { deleted: name.to_string() })
    }

    fn reset_branch(&self, name: &str) -> Result<ResetDone> {
        let rec = self.repo.record(name)?;
        let parent = rec.parent.clone().with_context(|| format!("branch {name} has no parent to reset from"))?;
        if rec.kind != Kind::Branch {
            bail!("'{name}' is a snapshot; only branches can be reset");
        }
        // A branch with a server gets it back after the reset: recorded as wanted
        // before it is halted, so a crash at any later point brings it back too.
        let restart = self.servers.spec(name).is_some();
        if restart {
            self.servers.want_running(name)?;
        }
        self.servers.halt(name)?;
        self.unmount(name)?;
        // One catalog transaction: after a crash the branch is the old one or the new one.
        self.repo.reset(name)?;
        self.mount(name)?;
        if restart {
            self.start_independent(name, Some(&parent))?;
        }
        Ok(ResetDone { name: name.to_string(), url: self.servers.url(name).ok(), parent })
    }

    fn follow_register(&self, source_url: String, slot: String, pg_bin: String) -> Result<BranchUrl> {
        let source = Source::parse(&source_url)?;
        let bin = PgBin(PathBuf::from(&pg_bin));
        let path = self.layout.mount_point(MAIN);
        pg::configure_access(&path)?;
        let spec = new_spec(&source.user, &source.dbname, &bin, true)?;
        self.servers.update(|st| {
            st.servers.insert(MAIN.to_string(), spec);
            st.follower = Some(FollowerConfig {
                source_url,
                slot,
                pg_bin: pg_bin.into(),
                user: source.user.clone(),
                dbname: source.dbname.clone(),
                stopped: false,
                mode: FollowerMode::Physical,
                publication: None,
                config_name: None,
                strict: true,
                publication_created: false,
                settings_raised: Vec::new(),
                standby_restarts: 0,
            });
        })?;
        self.servers.start(MAIN, &path)?;
        Ok(BranchUrl { url: self.servers.url(MAIN)?, running: None })
    }

    /// Starts main as an ordinary read-write server for the masked follower to fill.
    fn logical_main_start(&self, user: String, dbname: String, pg_bin: String) -> Result<MainServer> {
        let path = self.layout.mount_point(MAIN);
        pg::configure_access(&path)?;
        let spec = new_spec(&user, &dbname, &PgBin(PathBuf::from(pg_bin)), false)?;
        let password = spec.password.clone();
        let port = spec.port;
        self.servers.update(|st| st.servers.insert(MAIN.to_string(), spec))?;
        self.servers.start(MAIN, &path)?;
        Ok(MainServer { socket_dir: self.servers.socket_dir(MAIN), port, password })
    }

    fn follow_register_logical(&self, l: LogicalFollow) -> Result<BranchUrl> {
        let source = Source::parse(&l.source_url)?;
        self.write_transform_config(&l.config_text)?;
        let f = FollowerConfig {
            source_url: l.source_url,
            slot: l.slot,
            pg_bin: l.pg_bin.into(),
            user: source.user.clone(),
            dbname: source.dbname.clone(),
            stopped: false,
            mode: FollowerMode::Logical,
            publication: Some(l.publication),
            config_name: Some(l.config_name),
            strict: l.strict,
            publication_created: l.publication_created,
            settings_raised: Vec::new(),
            standby_restarts: 0,
        };
        self.servers.update(|st| st.follower = Some(f.clone()))?;
        self.start_logical(&f)?;
        Ok(BranchUrl { url: self.servers.url(MAIN)?, running: None })
    }

    /// Keeps the transform config in the store (0600 in the 0700 data directory), so
    /// the stream resumes with it after any restart.
    fn write_transform_config(&self, text: &str) -> Result<()> {
        crate::files::write_atomic(&self.layout.transform_config(), text.as_bytes(), 0o600)
            .context("keeping the masked follower's transform config in the store")
    }

    fn follow_reload(&self, config_name: String, config_text: String) -> Result<Reloaded> {
        let Some(mut f) = self.servers.follower().filter(|f| f.mode == FollowerMode::Logical) else {
            bail!("no masked follower is configured (see `pgbranch clone stream --config`)")
        };
        pgbranch_replicator::transform::TransformConfig::parse(&config_name, &config_text)?;
        self.stop_logical();
        self.write_transform_config(&config_text)?;
        f.config_name = Some(config_name);
        f.stopped = false;
        self.servers.update(|st| st.follower = Some(f.clone()))?;
        self.start_logical(&f)?;
        Ok(Reloaded { reloaded: true })
    }

    fn follow_stop(&self, drop_slot: bool) -> Result<FollowStopped> {
        let Some(f) = self.servers.follower() else { bail!("no follower is configured (see `pgbranch clone stream`)") };
        let mut dropped = false;
        if f.mode == FollowerMode::Logical {
            // main stays up as an ordinary server; only the stream stops.
            self.stop_logical();
            if drop_slot {
                let source = Source::parse(&f.source_url)?;
                dropped = source.drop_slot(&f.slot)?;
                if f.publication_created {
                    source.drop_publication(f.publication.as_deref().unwrap_or(&f.slot))?;
                }
            }
        } else {
            self.servers.stop(MAIN)?;
            if drop_slot {
                dropped = Source::parse(&f.source_url)?.drop_slot(&f.slot)?;
            }
        }
        self.servers.update(|st| {
            if let Some(f) = st.follower.as_mut() {
                f.stopped = true;
            }
        })?;
        Ok(FollowStopped { stopped: true, slot_dropped: dropped })
    }

    /// Deletes branches whose --ttl has passed (protected ones are kept, with a warning).
    pub(super) fn expire_branches(&self) {
        let now = crate::clock::now_unix();
        let due: Vec<String> = self.servers.read(|st| {
            st.policies.iter().filter(|(_, p)| p.expires_unix.is_some_and(|t| t <= now) && !p.protected).map(|(n, _)| n.clone()).collect()
        });
        for name in due {
            match self.delete_branch(&name, false) {
                Ok(_) => tracing::info!("branch {name} expired and was deleted"),
                Err(e) => tracing::warn!("branch {name} expired but could not be deleted: {e:#}"),
            }
        }
    }

    pub(super) fn handle(&self, req: Request) -> Result<Value> {
        match req {
            Request::Status => answer(self.status()?),
            Request::List => answer(self.list()?),
            Request::Path { name } => {
                self.repo.get(&name)?;
                answer(BranchPath { path: self.layout.mount_point(&name) })
            }
            Request::CreateBranch { name, from, start, ttl_secs, protect, at_unix_micros, at_lsn, history_secs } => {
                let how = NewBranch { start, ttl: ttl_secs, protect, at_unix_micros, at_lsn, history_secs };
                answer(self.create_branch(&name, from, how)?)
            }
            Request::BranchLog { name } => answer(self.branch_log(&name)?),
            Request::BranchSetHistory { name, history } => answer(self.branch_set_history(&name, history)?),
            Request::CreateSnapshot { name, from } => answer(self.create_snapshot(name, &from)?),
            Request::Delete { name, snapshot } => {
                self.release_reserve_if_full();
                answer(self.delete_branch(&name, snapshot)?)
            }
            Request::BranchStart { name } => answer(self.branch_start(&name)?),
            Request::BranchStop { name } => {
                self.repo.get(&name)?;
                self.servers.stop(&name)?;
                answer(ServerStopped { stopped: name })
            }
            Request::BranchUrl { name } => {
                self.repo.get(&name)?;
                answer(BranchUrl { url: self.servers.url(&name)?, running: Some(self.servers.is_running(&name)) })
            }
            Request::BranchReset { name } => answer(self.reset_branch(&name)?),
            Request::Protect { name, protect } => {
                self.repo.get(&name)?;
                self.servers.update(|st| st.policies.entry(name.clone()).or_default().protected = protect)?;
                answer(Protected { name, protected: protect })
            }
            Request::FollowRegister { source_url, slot, pg_bin } => answer(self.follow_register(source_url, slot, pg_bin)?),
            Request::FollowStop { drop_slot } => answer(self.follow_stop(drop_slot)?),
            Request::LogicalMainStart { user, dbname, pg_bin } => answer(self.logical_main_start(user, dbname, pg_bin)?),
            Request::FollowRegisterLogical(l) => answer(self.follow_register_logical(l)?),
            Request::FollowReload { config_name, config_text } => answer(self.follow_reload(config_name, config_text)?),
            Request::FollowSourceUrl => {
                let f = self.servers.follower().context("no follower is configured (see `pgbranch clone stream`)")?;
                answer(SourceUrl { source_url: f.source_url })
            }
            Request::Du => {
                super::collector::run_as_maintenance();
                answer(usage(self.repo.usage()?)?)
            }
            Request::Gc => {
                // This connection's thread ends with the request: no need to restore.
                super::collector::run_as_maintenance();
                self.release_reserve_if_full();
                let done = self.repo.gc();
                self.keep_reserve();
                answer(gc_done(done?))
            }
            Request::Verify => {
                super::collector::run_as_maintenance();
                answer(verified(self.repo.verify()?))
            }
            Request::Commit => {
                self.repo.commit_all()?;
                answer(Committed {})
            }
            Request::Shutdown => answer(Stopping { stopping: std::process::id() }),
        }
    }

    /// Gives back the emergency reserve when the disk is full (see `space`), so that a
    /// verb that frees space has room for its own writes.
    fn release_reserve_if_full(&self) {
        match super::space::release_reserve_if_full(&self.layout.data()) {
            Ok(true) => tracing::warn!(
                "the store's disk is full: gave back the {} MiB emergency reserve so that delete and gc can run",
                super::space::RESERVE_BYTES >> 20
            ),
            Ok(false) => {}
            Err(e) => tracing::warn!("giving back the emergency reserve: {e}"),
        }
    }

    /// Takes the emergency reserve again once the disk has room for it.
    pub(super) fn keep_reserve(&self) {
        match super::space::keep_reserve(&self.layout.data()) {
            Ok(true) => tracing::info!("kept a {} MiB emergency reserve for a full disk", super::space::RESERVE_BYTES >> 20),
            Ok(false) => {}
            Err(e) => tracing::warn!("keeping the emergency reserve: {e}"),
        }
    }

    fn create_snapshot(&self, name: String, from: &str) -> Result<Created> {
        let started = std::time::Instant::now();
        self.repo.create_from(&name, from, Kind::Snapshot)?;
        let took = started.elapsed();
        if let Err(e) = self.mount(&name) {
            self.repo.delete(&name).ok();
            return Err(e);
        }
        let path = self.layout.mount_point(&name);
        Ok(Created { name, path, url: None, create_micros: Some(took.as_micros() as u64), from_point: None })
    }

    fn branch_start(&self, name: &str) -> Result<BranchUrl> {
        self.repo.get(name)?;
        if name == MAIN && self.servers.follower().is_some() {
            self.servers.start(MAIN, &self.layout.mount_point(MAIN))?;
        } else {
            let parent = self.repo.record(name)?.parent;
            self.start_independent(name, parent.as_deref())?;
        }
        Ok(BranchUrl { url: self.servers.url(name)?, running: None })
    }
}

/// A handler's typed answer as the response's `data`.
/// How `branch create` makes a branch, besides its name and source.
struct NewBranch {
    start: bool,
    ttl: Option<u64>,
    protect: bool,
    at_unix_micros: Option<u64>,
    at_lsn: Option<u64>,
    history_secs: Option<u64>,
}

fn answer(data: impl Serialize) -> Result<Value> {
    Ok(serde_json::to_value(data)?)
}

// The conversions below destructure the store's reports field by field: a field the
// store adds is a compile error here until the answer carries it too.

fn usage(u: pgbranch_fs::repo::Usage) -> Result<api::Usage> {
    let pgbranch_fs::repo::Usage {
        branches,
        physical_bytes,
        distinct_bytes,
        stored_block_bytes,
        tree_node_bytes,
        unreferenced_bytes,
        compression_ratio,
        dedup_ratio,
        commit_error,
    } = u;
    let branches = branches
        .into_iter()
        .map(|b| {
            let pgbranch_fs::repo::BranchUsage {
                name,
                kind,
                logical_bytes,
                unique_bytes,
                shared_bytes,
                uncommitted_bytes,
                history_bytes,
                history_points,
            } = b;
            let kind = match kind {
                "branch" => api::BranchKind::Branch,
                "snapshot" => api::BranchKind::Snapshot,
                other => bail!("branch {name} has an unknown kind {other:?} in the store's usage report"),
            };
            Ok(api::BranchUsage { name, kind, logical_bytes, unique_bytes, shared_bytes, uncommitted_bytes, history_bytes, history_points })
        })
        .collect::<Result<_>>()?;
    Ok(api::Usage {
        branches,
        physical_bytes,
        distinct_bytes,
        stored_block_bytes,
        tree_node_bytes,
        unreferenced_bytes,
        compression_ratio,
        dedup_ratio,
        commit_error,
    })
}

pub(super) fn gc_done(r: pgbranch_fs::gc::GcReport) -> api::GcDone {
    let pgbranch_fs::gc::GcReport { objects_removed, packs_rewritten, bytes_before, bytes_after, objects_revived } = r;
    api::GcDone { objects_removed, packs_rewritten, bytes_before, bytes_after, objects_revived }
}

fn verified(r: pgbranch_fs::repo::VerifyReport) -> api::Verified {
    let pgbranch_fs::repo::VerifyReport { objects_checked, damaged } = r;
    let damaged = damaged
        .into_iter()
        .map(|d| {
            let pgbranch_fs::repo::Damage { branch, path, offset, object, error } = d;
            api::Damage { branch, path, offset, object, error }
        })
        .collect();
    api::Verified { objects_checked, damaged }
}
