//! The initial copy: stock `pg_basebackup` from the source into a directory, creating
//! the physical slot the follower will stream from, with progress reported as it goes.

use std::io::Read;
use std::path::Path;
use std::process::Stdio;

use crate::pg::{Owner, PgBin};
use crate::source::Source;

#[derive(Clone, Copy, Debug, Default)]
pub struct Progress {
    pub done_bytes: u64,
    pub total_bytes: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum BasebackupError {
    #[error("cannot run pg_basebackup: {0}")]
    Spawn(std::io::Error),
    #[error("pg_basebackup failed: {0}")]
    Failed(String),
}

/// Parses one pg_basebackup -P line: "  1234/56789 kB (2%), 0/1 tablespace ...".
fn parse_progress(line: &str) -> Option<Progress> {
    let (nums, _) = line.trim().split_once(" kB")?;
    let (done, total) = nums.trim().split_once('/')?;
    Some(Progress { done_bytes: done.trim().parse::<u64>().ok()? * 1024, total_bytes: total.trim().parse::<u64>().ok()? * 1024 })
}

/// Copies the source into `dest` (empty, owned by `owner`) and creates `slot`.
/// `-R` leaves standby.signal and primary_conninfo, so a postgres started on `dest`
/// follows the source from the slot. `extra_args` go to pg_basebackup as they are
/// (e.g. tablespace mappings).
pub fn run(
    bin: &PgBin,
    owner: &Owner,
    source: &Source,
    dest: &Path,
    slot: &str,
    extra_args: &[String],
    mut on_progress: impl FnMut(Progress),
) -> Result<(), BasebackupError> {
    let mut cmd = owner.command(bin.tool("pg_basebackup"));
    cmd.arg("-d").arg(source.libpq_url()).arg("-D").arg(dest);
    cmd.args(["-X", "stream", "-C", "-S", slot, "-R", "-P", "-c", "fast", "-w"]);
    cmd.args(extra_args);
    cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(BasebackupError::Spawn)?;
    let mut stderr = child.stderr.take().unwrap();
    let mut pending = String::new();
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = stderr.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        pending.push_str(&String::from_utf8_lossy(&buf[..n]));
        while let Some(pos) = pending.find(['\r', '\n']) {
            let line: String = pending.drain(..=pos).collect();
            match parse_progress(&line) {
                Some(p) => on_progress(p),
                None if !line.trim().is_empty() => messages.push(line.trim().to_string()),
                None => {}
            }
        }
    }
    let status = child.wait().map_err(BasebackupError::Spawn)?;
    if !status.success() {
        return Err(BasebackupError::Failed(messages.join("; ")));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn progress_lines() {
        let p = super::parse_progress("  31250/312507 kB (10%), 0/1 tablespace (...data/base/5/16398)").unwrap();
        assert_eq!((p.done_bytes, p.total_bytes), (31250 * 1024, 312507 * 1024));
        assert!(super::parse_progress("pg_basebackup: error: connection refused").is_none());
    }
}
