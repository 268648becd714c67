//! The few process-level settings the CLI makes through libc.

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
