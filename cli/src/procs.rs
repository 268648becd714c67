//! What the CLI and daemon read about processes from `/proc`: children, liveness,
//! whether a pid is a postgres, the daemon's own memory.

/// The pids of `pid`'s children.
pub(crate) fn children(pid: i32) -> Vec<i32> {
    let Ok(rd) = std::fs::read_dir("/proc") else { return Vec::new() };
    rd.flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<i32>().ok())
        .filter(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap_or_default();
            // The command name (in parentheses) may hold spaces: fields after it.
            stat.rsplit(')').next().and_then(|r| r.split_whitespace().nth(1)).and_then(|v| v.parse::<i32>().ok()) == Some(pid)
        })
        .collect()
}

/// Whether `pid` exists and is not a zombie.
pub(crate) fn is_running(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

/// Whether `pid` is a live postgres process (not reused by something else).
pub(crate) fn is_postgres(pid: i32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|c| String::from_utf8_lossy(&c).contains("postgres"))
}

/// A `kB` field of `/proc/self/status` (`VmRSS:`, `VmHWM:`) in bytes; 0 if absent.
pub(crate) fn status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_a_child_and_sees_it_die() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(children(std::process::id() as i32).contains(&pid));
        assert!(is_running(pid));
        assert!(!is_postgres(pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(!is_running(pid));
        assert!(status_bytes("VmRSS:") > 0);
    }
}
