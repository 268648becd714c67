//! The source's TLS files (`sslrootcert`, `sslcert`, `sslkey`) in the store. The files
//! a user names may be unreadable by the user postgres runs as (pg_basebackup, main's
//! standby), and libpq wants a client key private to its reader; so `clone stream`
//! copies them into the store — kept with the data (`data/source-tls/`, for the
//! daemon to lay out again after a reboot) and laid out for postgres
//! (`source-tls/`, owned by its user, 0700, files 0600) — and the follower's stored
//! URL names those copies, so pg_basebackup, the standby and the daemon read the same
//! files after any restart.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use pgbranch_replicator::pg::Owner;
use pgbranch_replicator::source::Source;
use pgbranch_replicator::tls::{set_params, RootCert};

use crate::layout::Layout;

/// (URL parameter, the file the user gave, its name in the store).
fn files(source: &Source) -> Vec<(&'static str, PathBuf, &'static str)> {
    let t = &source.tls;
    let mut out = Vec::new();
    if let Some(RootCert::File(p)) = &t.root_cert {
        out.push(("sslrootcert", p.clone(), "root.crt"));
    }
    if let Some(p) = &t.cert {
        out.push(("sslcert", p.clone(), "client.crt"));
    }
    if let Some(p) = &t.key {
        out.push(("sslkey", p.clone(), "client.key"));
    }
    out
}

fn private_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).with_context(|| format!("setting the mode of {}", dir.display()))
}

fn chown(path: &Path, (uid, gid): (u32, u32)) -> Result<()> {
    std::os::unix::fs::chown(path, Some(uid), Some(gid)).with_context(|| format!("giving {} to uid {uid}", path.display()))
}

/// Writes `bytes` to `path`, mode 0600, replacing what was there.
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::files::write_atomic(path, bytes, 0o600)
}

/// Copies the source's TLS files into the store; returns the source URL naming the
/// copies (the URL unchanged when it names no files).
pub(crate) fn install(layout: &Layout, owner: &Owner, source: &Source) -> Result<String> {
    let files = files(source);
    let saved = layout.source_tls_saved();
    let _ = std::fs::remove_dir_all(&saved);
    let _ = std::fs::remove_dir_all(layout.source_tls());
    if files.is_empty() {
        return Ok(source.url.clone());
    }
    // Read everything first: the URL may already name the store's copies.
    let mut contents = Vec::new();
    for (param, path, name) in &files {
        let bytes = std::fs::read(path).with_context(|| format!("reading {param}={}", path.display()))?;
        contents.push((*param, bytes, *name));
    }
    private_dir(&saved)?;
    for (_, bytes, name) in &contents {
        write_private(&saved.join(name), bytes)?;
    }
    publish(layout, (owner.uid, owner.gid))?;
    let params: Vec<(&str, String)> =
        contents.iter().map(|(param, _, name)| (*param, layout.source_tls().join(name).display().to_string())).collect();
    Ok(set_params(&source.url, &params)?)
}

/// Lays the saved TLS files out for postgres' user, `owner` (uid, gid): again at each
/// daemon start, e.g. after a reboot emptied /run; nothing when the source names none.
pub(crate) fn publish(layout: &Layout, owner: (u32, u32)) -> Result<()> {
    let saved = layout.source_tls_saved();
    let Ok(entries) = std::fs::read_dir(&saved) else {
        return Ok(());
    };
    let live = layout.source_tls();
    private_dir(&live)?;
    chown(&live, owner)?;
    for e in entries {
        let e = e.with_context(|| format!("listing {}", saved.display()))?;
        let bytes = std::fs::read(e.path()).with_context(|| format!("reading {}", e.path().display()))?;
        let to = live.join(e.file_name());
        write_private(&to, &bytes)?;
        chown(&to, owner)?;
    }
    Ok(())
}
