//! The process-level calls the replicator makes through libc (who we run as, whom
//! postgres runs as, signals to a postmaster), each behind a safe function: every
//! `unsafe` block of the crate is here.

use std::ffi::{CStr, CString};
use std::io;
use std::path::PathBuf;

/// The effective uid of this process.
pub fn effective_uid() -> u32 {
    // SAFETY: geteuid takes no arguments, cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// An OS user's passwd entry.
#[derive(Debug, Clone)]
pub struct Passwd {
    pub uid: u32,
    pub gid: u32,
    pub name: String,
    pub home: PathBuf,
}

/// # Safety
/// `pw` must be null or point to a valid passwd record whose strings are NUL-terminated.
unsafe fn copy_passwd(pw: *const libc::passwd) -> Option<Passwd> {
    if pw.is_null() {
        return None;
    }
    // SAFETY: non-null, valid by the caller's contract; its strings are copied at once.
    let pw = unsafe { &*pw };
    // SAFETY: passwd strings are valid NUL-terminated C strings (or null, checked).
    let text =
        |p: *const libc::c_char| if p.is_null() { String::new() } else { unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned() };
    Some(Passwd { uid: pw.pw_uid, gid: pw.pw_gid, name: text(pw.pw_name), home: PathBuf::from(text(pw.pw_dir)) })
}

/// The passwd entry of user `name`, if there is one.
pub fn user_by_name(name: &str) -> Option<Passwd> {
    let c = CString::new(name).ok()?;
    // SAFETY: `c` outlives the call; the returned record (static storage, or null) is
    // copied before this thread makes another getpw* call.
    unsafe { copy_passwd(libc::getpwnam(c.as_ptr())) }
}

/// The passwd entry of uid `uid`, if there is one.
pub fn user_by_uid(uid: u32) -> Option<Passwd> {
    // SAFETY: as for `user_by_name`.
    unsafe { copy_passwd(libc::getpwuid(uid)) }
}

/// Sends `signal` to `pid` (signal 0: only checks that it exists).
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_and_root_are_found() {
        assert!(kill(std::process::id() as i32, 0).is_ok());
        assert_eq!(user_by_uid(0).map(|p| p.name), Some("root".to_string()));
        assert_eq!(user_by_name("root").map(|p| p.uid), Some(0));
        assert!(user_by_name("no-such-user-pgbranch").is_none());
    }
}
