//! What the daemon does for each control request.

use anyhow::{bail, Context, Result};
use pgbranch_fs::catalog::Kind;
use serde_json::{json, Value};

use super::Daemon;
use crate::api::Request;

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn peak_rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

impl Daemon {
    fn list(&self) -> Result<Value> {
        let mounts = self.mounts.lock();
        let mut out = Vec::new();
        for rec in self.repo.records()? {
            let branch = self.repo.get(&rec.name)?;
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
            }));
        }
        Ok(Value::Array(out))
    }

    pub(super) fn handle(&self, req: Request) -> Result<Value> {
        match req {
            Request::Status => Ok(json!({
                "pid": std::process::id(),
                "store": self.layout.root,
                "uptime_secs": self.started.elapsed().as_secs(),
                "branch_owner_uid": self.owner.0,
                "rss_bytes": rss_bytes(),
                "peak_rss_bytes": peak_rss_bytes(),
                "physical_bytes": pgbranch_fs::store::ObjectStore::physical_bytes(self.repo.store().as_ref())?,
                "objects": pgbranch_fs::store::ObjectStore::object_count(self.repo.store().as_ref())?,
                "branches": self.list()?,
            })),
            Request::List => self.list(),
            Request::Path { name } => {
                self.repo.get(&name)?;
                Ok(json!({ "path": self.layout.mount_point(&name) }))
            }
            Request::CreateBranch { name, from } => {
                match from {
                    Some(src) => self.repo.create_from(&name, &src, Kind::Branch)?,
                    None => self.repo.create_empty(&name, self.owner.0, self.owner.1)?,
                };
                if let Err(e) = self.mount(&name) {
                    self.repo.delete(&name).ok();
                    return Err(e);
                }
                Ok(json!({ "name": name, "path": self.layout.mount_point(&name) }))
            }
            Request::CreateSnapshot { name, from } => {
                let started = std::time::Instant::now();
                self.repo.create_from(&name, &from, Kind::Snapshot)?;
                let took = started.elapsed();
                if let Err(e) = self.mount(&name) {
                    self.repo.delete(&name).ok();
                    return Err(e);
                }
                Ok(json!({ "name": name, "path": self.layout.mount_point(&name), "create_micros": took.as_micros() as u64 }))
            }
            Request::Delete { name, snapshot } => {
                let rec = self.repo.record(&name)?;
                match (rec.kind, snapshot) {
                    (Kind::Snapshot, false) => bail!("'{name}' is a snapshot; delete it with `pgbranch snapshot delete {name}`"),
                    (Kind::Branch, true) => bail!("'{name}' is a branch; delete it with `pgbranch branch delete {name}`"),
                    _ => {}
                }
                self.unmount(&name)?;
                self.repo.delete(&name).with_context(|| format!("deleting {name}"))?;
                Ok(json!({ "deleted": name }))
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
