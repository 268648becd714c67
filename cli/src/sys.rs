//! The process-level calls the CLI and daemon make through libc, each behind a safe
//! function: every `unsafe` block of the crate is here. Filesystem calls (statvfs,
//! unmount, flock) are `pgbranch_fs::sys`.

use std::ffi::CString;

/// Restores the default action of SIGPIPE, so that a verb whose reader went away
/// (`pgbranch branch list --json | head -1`) ends quietly, as Unix tools do, instead of
/// failing on the write. Only for the CLI's own verbs: the daemon keeps Rust's default
/// (ignored), so a client that hangs up never kills it.
pub fn default_sigpipe() {
    // SAFETY: signal(2) with SIG_DFL installs no handler code; it is called once at the
    // start of main, before any thread is spawned.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
}

/// The effective uid and gid of this process.
pub(crate) fn effective_ids() -> (u32, u32) {
    // SAFETY: geteuid/getegid take no arguments, cannot fail and touch no memory.
    unsafe { (libc::geteuid(), libc::getegid()) }
}

/// Whether this process runs as root.
pub(crate) fn is_root() -> bool {
    effective_ids().0 == 0
}

/// The uid and gid of the OS user `name`, if there is one.
pub(crate) fn user_ids(name: &str) -> Option<(u32, u32)> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` is a valid NUL-terminated string that outlives the call; the returned
    // record (static storage, or null) is read at once, before any other getpw* call
    // of this function could overwrite it (the daemon calls it once, at start).
    unsafe {
        let pw = libc::getpwnam(c.as_ptr());
        if pw.is_null() {
            None
        } else {
            Some(((*pw).pw_uid, (*pw).pw_gid))
        }
    }
}

/// Runs `f` with the process umask set to `mask` (then restores it): for a socket
/// that must never exist with wider permissions, even for an instant.
pub(crate) fn with_umask<T>(mask: u32, f: impl FnOnce() -> T) -> T {
    // SAFETY: umask(2) only swaps the process' file-creation mask; it cannot fail.
    let old = unsafe { libc::umask(mask as libc::mode_t) };
    let out = f();
    // SAFETY: as above, restoring the previous mask.
    unsafe { libc::umask(old) };
    out
}

/// Sends `signal` to `pid` (signal 0: only checks that it exists).
pub(crate) use pgbranch_replicator::sys::kill;

/// Each FUSE worker thread allocates a 16 MiB request buffer. glibc's adaptive mmap
/// threshold would serve later ones from recycled heap memory that calloc must zero,
/// making all of it resident; a fixed threshold keeps them lazily-zeroed fresh maps,
/// resident only as far as requests fill them. Fewer arenas also bound fragmentation.
pub(crate) fn tune_malloc() {
    // SAFETY: mallopt only changes allocator parameters; it is called at the daemon's
    // start, before other threads allocate.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
        libc::mallopt(libc::M_ARENA_MAX, 4);
    }
}

/// Hands free heap memory back to the OS (after a commit freed many blocks that FUSE
/// threads allocated in their own malloc arenas).
pub(crate) fn trim_malloc() {
    // SAFETY: malloc_trim only releases free heap memory; no live pointer changes.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signal_zero_finds_this_process() {
        assert!(kill(std::process::id() as i32, 0).is_ok());
    }
}
