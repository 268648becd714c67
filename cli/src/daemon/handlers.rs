//! What the daemon does for each control request.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use pgbranch_fs::catalog::Kind;
use pgbranch_replicator::follower;
use pgbranch_replicator::pg::{self, PgBin};
use pgbranch_replicator::pgconf;
use pgbranch_replicator::source::Source;
use serde_json::{json, Value};

use super::servers::{new_spec, FollowerConfig, Policy};
use super::Daemon;
use crate::api::{BranchUrl, Created, LogicalFollow, MainServer, Request};

/// The branch a follower keeps in sync, and the default parent of new branches.
pub const MAIN: &str = "main";

fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// Seconds since the Unix epoch (0 if the clock is before it).
pub(super) fn now_unix() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

impl Daemon {
    fn list(&self) -> Result<Value> {
        let mounts = self.mounts.lock();
        let ports = self.servers.running_ports();
        let state = self.servers.state.lock();
        let mut out = Vec::new();
        for rec in self.repo.records()? {
            let branch = self.repo.get(&rec.name)?;
            let policy = state.policies.get(&rec.name).cloned().unwrap_or_default();
            out.push(json!({
                "name": rec.name,
                "kind": rec.kind.as_str(),
                "path": self.layout.mount_point(&rec.name),
                "mounted": mounts.contains_key(&rec.name),
                "read_only": rec.kind == Kind::Snapshot,
                "parent": rec.parent,
                "created_unix": rec.created_unix,
                "head": rec.root.to_hex(),
                "open_handles": branch.open_handles(),
                "dirty_bytes": branch.dirty_blocks() * 8192,
                "running": ports.contains_key(&rec.name),
                "port": state.servers.get(&rec.name).map(|s| s.port),
                "expires_unix": policy.expires_unix,
                "protected": policy.protected,
            }));
        }
        Ok(Value::Array(out))
    }

    fn follower_status(&self) -> Value {
        let Some(f) = self.servers.state.lock().follower.clone() else { return Value::Null };
        let mut v = json!({
            "source": crate::pii::redact(&f.source_url),
            "slot": f.slot,
            "mode": f.mode,
            "state": if f.stopped { "stopped" } else if self.servers.is_running(MAIN) { "streaming" } else { "starting" },
        });
        if f.mode == "logical" {
            v["publication"] = json!(f.publication);
            v["config"] = json!(f.config_name);
            v["strict"] = json!(f.strict);
            if !f.stopped {
                self.logical_status(&f, &mut v);
            }
            return v;
        }
        v["settings_raised"] = json!(f.settings_raised);
        v["standby_restarts"] = json!(f.standby_restarts);
        if let (false, Some(server), Ok(source)) = (f.stopped, self.servers.server(MAIN), Source::parse(&f.source_url)) {
            match follower::measure(&source, &server) {
                Ok(lag) => {
                    v["source_lsn"] = json!(lag.source_lsn);
                    v["replay_lsn"] = json!(lag.replay_lsn);
                    v["lag_bytes"] = json!(lag.bytes);
                    v["lag_seconds"] = json!(lag.seconds);
                }
                Err(e) => v["error"] = json!(e.to_string()),
            }
        }
        v
    }

    /// Where a new server's role, database and binaries come from: its parent's server,
    /// else the follower's source, else the local defaults.
    fn server_defaults(&self, parent: Option<&str>) -> Result<(String, String, PgBin)> {
        if let Some(spec) = parent.and_then(|p| self.servers.spec(p)) {
            return Ok((spec.user, spec.dbname, PgBin(spec.pg_bin)));
        }
        if let Some(f) = self.servers.state.lock().follower.clone() {
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
            self.servers.state.lock().servers.insert(name.to_string(), spec);
        }
        if path.join("standby.signal").exists() {
            // A cut of a standby starts in recovery, which needs the hot-standby limits
            // at least as high as its control file records.
            let spec = self.servers.spec(name).with_context(|| format!("branch {name} has no server configured"))?;
            for (setting, from, to) in pgconf::raise_to_controldata(&PgBin(spec.pg_bin), &self.servers.owner, &path)? {
                tracing::info!("branch {name}: raised {setting} from {from} to {to}, as its control file records");
            }
        }
        self.servers.start(name, &path)?;
        let server = self.servers.server(name).context("the branch's server is not running after its start")?;
        if path.join("standby.signal").exists() {
            server.promote().with_context(|| format!("promoting branch {name}"))?;
        }
        let spec = self.servers.spec(name).with_context(|| format!("branch {name} has no server configured"))?;
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

    fn create_branch(&self, name: &str, from: Option<String>, start: bool, ttl: Option<u64>, protect: bool) -> Result<Value> {
        match &from {
            Some(src) => self.repo.create_from(name, src, Kind::Branch)?,
            None => self.repo.create_empty(name, self.owner.0, self.owner.1)?,
        };
        if let Err(e) = self.mount(name) {
            self.repo.delete(name).ok();
            return Err(e);
        }
        let policy = Policy { expires_unix: ttl.map(|t| now_unix() + t as i64), protected: protect };
        self.servers.state.lock().policies.insert(name.to_string(), policy);
        self.servers.save()?;
        let mut out = Created { name: name.to_string(), path: self.layout.mount_point(name), url: None, create_micros: None };
        // Only a branch holding a postgres data directory gets a server.
        if start && from.is_some() && self.layout.mount_point(name).join("PG_VERSION").exists() {
            if let Err(e) = self.start_independent(name, from.as_deref()) {
                // Leave nothing half-made behind.
                let _ = self.servers.forget(name);
                let _ = self.unmount(name);
                let _ = self.repo.delete(name);
                return Err(e);
            }
            out.url = Some(self.servers.url(name)?);
        }
        Ok(serde_json::to_value(out)?)
    }

    pub(super) fn delete_branch(&self, name: &str, snapshot: bool) -> Result<Value> {
        let rec = self.repo.record(name)?;
        match (rec.kind, snapshot) {
            (Kind::Snapshot, false) => bail!("'{name}' is a snapshot; delete it with `pgbranch snapshot delete {name}`"),
            (Kind::Branch, true) => bail!("'{name}' is a branch; delete it with `pgbranch branch delete {name}`"),
            _ => {}
        }
        if self.servers.state.lock().policies.get(name).is_some_and(|p| p.protected) {
            bail!("branch {name} is protected; run `pgbranch branch unprotect {name}` first");
        }
        if name == MAIN && self.servers.state.lock().follower.as_ref().is_some_and(|f| !f.stopped) {
            bail!("branch main is kept in sync by the follower; run `pgbranch clone stop` first");
        }
        self.servers.stop(name, false)?;
        self.unmount(name)?;
        self.repo.delete(name).with_context(|| format!("deleting {name}"))?;
        self.servers.forget(name)?;
        Ok(json!({ "deleted": name }))
    }

    fn reset_branch(&self, name: &str) -> Result<Value> {
        let rec = self.repo.record(name)?;
        let parent = rec.parent.clone().with_context(|| format!("branch {name} has no parent to reset from"))?;
        if rec.kind != Kind::Branch {
            bail!("'{name}' is a snapshot; only branches can be reset");
        }
        let was_running = self.servers.is_running(name);
        self.servers.stop(name, false)?;
        self.unmount(name)?;
        // One catalog transaction: after a crash the branch is the old one or the new one.
        self.repo.reset(name)?;
        self.mount(name)?;
        if was_running || self.servers.spec(name).is_some() {
            self.start_independent(name, Some(&parent))?;
        }
        Ok(json!({ "name": name, "parent": parent, "url": self.servers.url(name).ok() }))
    }

    fn follow_register(&self, source_url: String, slot: String, pg_bin: String) -> Result<Value> {
        let source = Source::parse(&source_url)?;
        let bin = PgBin(PathBuf::from(&pg_bin));
        let path = self.layout.mount_point(MAIN);
        pg::configure_access(&path)?;
        let spec = new_spec(&source.user, &source.dbname, &bin, true)?;
        {
            let mut st = self.servers.state.lock();
            st.servers.insert(MAIN.to_string(), spec);
            st.follower = Some(FollowerConfig {
                source_url,
                slot,
                pg_bin: pg_bin.into(),
                user: source.user.clone(),
                dbname: source.dbname.clone(),
                stopped: false,
                mode: "physical".into(),
                publication: None,
                config_name: None,
                strict: true,
                publication_created: false,
                settings_raised: Vec::new(),
                standby_restarts: 0,
            });
        }
        self.servers.save()?;
        self.servers.start(MAIN, &path)?;
        Ok(serde_json::to_value(BranchUrl { url: self.servers.url(MAIN)?, running: None })?)
    }

    /// Starts main as an ordinary read-write server for the masked follower to fill.
    fn logical_main_start(&self, user: String, dbname: String, pg_bin: String) -> Result<Value> {
        let path = self.layout.mount_point(MAIN);
        pg::configure_access(&path)?;
        let spec = new_spec(&user, &dbname, &PgBin(PathBuf::from(pg_bin)), false)?;
        let password = spec.password.clone();
        let port = spec.port;
        self.servers.state.lock().servers.insert(MAIN.to_string(), spec);
        self.servers.save()?;
        self.servers.start(MAIN, &path)?;
        Ok(serde_json::to_value(MainServer { socket_dir: self.servers.socket_dir(MAIN), port, password })?)
    }

    fn follow_register_logical(&self, l: LogicalFollow) -> Result<Value> {
        let source = Source::parse(&l.source_url)?;
        self.write_transform_config(&l.config_text)?;
        let f = FollowerConfig {
            source_url: l.source_url,
            slot: l.slot,
            pg_bin: l.pg_bin.into(),
            user: source.user.clone(),
            dbname: source.dbname.clone(),
            stopped: false,
            mode: "logical".into(),
            publication: Some(l.publication),
            config_name: Some(l.config_name),
            strict: l.strict,
            publication_created: l.publication_created,
            settings_raised: Vec::new(),
            standby_restarts: 0,
        };
        self.servers.state.lock().follower = Some(f.clone());
        self.servers.save()?;
        self.start_logical(&f)?;
        Ok(serde_json::to_value(BranchUrl { url: self.servers.url(MAIN)?, running: None })?)
    }

    /// Keeps the transform config in the store (0600 in the 0700 data directory), so
    /// the stream resumes with it after any restart.
    fn write_transform_config(&self, text: &str) -> Result<()> {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let path = self.layout.transform_config();
        let tmp = path.with_extension("yaml.tmp");
        let mut f = std::fs::OpenOptions::new().create(true).write(true).truncate(true).mode(0o600).open(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path).with_context(|| format!("writing {}", path.display()))
    }

    fn follow_reload(&self, config_name: String, config_text: String) -> Result<Value> {
        let Some(mut f) = self.servers.state.lock().follower.clone().filter(|f| f.mode == "logical") else {
            bail!("no masked follower is configured (see `pgbranch clone stream --config`)")
        };
        pgbranch_replicator::transform::TransformConfig::parse(&config_name, &config_text)?;
        self.stop_logical();
        self.write_transform_config(&config_text)?;
        f.config_name = Some(config_name);
        f.stopped = false;
        self.servers.state.lock().follower = Some(f.clone());
        self.servers.save()?;
        self.start_logical(&f)?;
        Ok(json!({ "reloaded": true }))
    }

    fn follow_stop(&self, drop_slot: bool) -> Result<Value> {
        let Some(f) = self.servers.state.lock().follower.clone() else { bail!("no follower is configured (see `pgbranch clone stream`)") };
        let mut dropped = false;
        if f.mode == "logical" {
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
            self.servers.stop(MAIN, false)?;
            if drop_slot {
                dropped = Source::parse(&f.source_url)?.drop_slot(&f.slot)?;
            }
        }
        if let Some(f) = self.servers.state.lock().follower.as_mut() {
            f.stopped = true;
        }
        self.servers.save()?;
        Ok(json!({ "stopped": true, "slot_dropped": dropped }))
    }

    /// Deletes branches whose --ttl has passed (protected ones are kept, with a warning).
    pub(super) fn expire_branches(&self) {
        let now = now_unix();
        let due: Vec<String> = self
            .servers
            .state
            .lock()
            .policies
            .iter()
            .filter(|(_, p)| p.expires_unix.is_some_and(|t| t <= now) && !p.protected)
            .map(|(n, _)| n.clone())
            .collect();
        for name in due {
            match self.delete_branch(&name, false) {
                Ok(_) => tracing::info!("branch {name} expired and was deleted"),
                Err(e) => tracing::warn!("branch {name} expired but could not be deleted: {e:#}"),
            }
        }
    }

    pub(super) fn handle(&self, req: Request) -> Result<Value> {
        match req {
            Request::Status => Ok(json!({
                "pid": std::process::id(),
                "store": self.layout.root,
                "uptime_secs": self.started.elapsed().as_secs(),
                "branch_owner_uid": self.owner.0,
                "rss_bytes": proc_status_bytes("VmRSS:"),
                "peak_rss_bytes": proc_status_bytes("VmHWM:"),
                "physical_bytes": pgbranch_fs::store::ObjectStore::physical_bytes(self.repo.store().as_ref())?,
                "objects": pgbranch_fs::store::ObjectStore::object_count(self.repo.store().as_ref())?,
                "follower": self.follower_status(),
                "space": super::space::measure(&self.layout.data(), &self.repo.records()?)
                    .map_or_else(|e| json!({ "error": format!("measuring the store's space: {e}") }), |s| json!(s)),
                "branches": self.list()?,
            })),
            Request::List => self.list(),
            Request::Path { name } => {
                self.repo.get(&name)?;
                Ok(json!({ "path": self.layout.mount_point(&name) }))
            }
            Request::CreateBranch { name, from, start, ttl_secs, protect } => self.create_branch(&name, from, start, ttl_secs, protect),
            Request::CreateSnapshot { name, from } => {
                let started = std::time::Instant::now();
                self.repo.create_from(&name, &from, Kind::Snapshot)?;
                let took = started.elapsed();
                if let Err(e) = self.mount(&name) {
                    self.repo.delete(&name).ok();
                    return Err(e);
                }
                let path = self.layout.mount_point(&name);
                Ok(serde_json::to_value(Created { name, path, url: None, create_micros: Some(took.as_micros() as u64) })?)
            }
            Request::Delete { name, snapshot } => self.delete_branch(&name, snapshot),
            Request::BranchStart { name } => {
                self.repo.get(&name)?;
                if name == MAIN && self.servers.state.lock().follower.is_some() {
                    self.servers.start(MAIN, &self.layout.mount_point(MAIN))?;
                } else {
                    let parent = self.repo.record(&name)?.parent;
                    self.start_independent(&name, parent.as_deref())?;
                }
                Ok(serde_json::to_value(BranchUrl { url: self.servers.url(&name)?, running: None })?)
            }
            Request::BranchStop { name } => {
                self.repo.get(&name)?;
                self.servers.stop(&name, false)?;
                Ok(json!({ "stopped": name }))
            }
            Request::BranchUrl { name } => {
                self.repo.get(&name)?;
                Ok(serde_json::to_value(BranchUrl { url: self.servers.url(&name)?, running: Some(self.servers.is_running(&name)) })?)
            }
            Request::BranchReset { name } => self.reset_branch(&name),
            Request::Protect { name, protect } => {
                self.repo.get(&name)?;
                self.servers.state.lock().policies.entry(name.clone()).or_default().protected = protect;
                self.servers.save()?;
                Ok(json!({ "name": name, "protected": protect }))
            }
            Request::FollowRegister { source_url, slot, pg_bin } => self.follow_register(source_url, slot, pg_bin),
            Request::FollowStop { drop_slot } => self.follow_stop(drop_slot),
            Request::LogicalMainStart { user, dbname, pg_bin } => self.logical_main_start(user, dbname, pg_bin),
            Request::FollowRegisterLogical(l) => self.follow_register_logical(l),
            Request::FollowReload { config_name, config_text } => self.follow_reload(config_name, config_text),
            Request::FollowSourceUrl => {
                let f = self.servers.state.lock().follower.clone();
                let f = f.context("no follower is configured (see `pgbranch clone stream`)")?;
                Ok(json!({ "source_url": f.source_url }))
            }
            Request::Du => Ok(serde_json::to_value(self.repo.usage()?)?),
            Request::Gc => Ok(serde_json::to_value(self.repo.gc()?)?),
            Request::Verify => Ok(serde_json::to_value(self.repo.verify()?)?),
            Request::Commit => {
                self.repo.commit_all()?;
                Ok(json!({}))
            }
            Request::Shutdown => Ok(json!({ "stopping": std::process::id() })),
        }
    }
}
