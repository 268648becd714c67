//! The filesystem-level calls the store makes through libc, each behind a safe
//! function: every `unsafe` block of the crate is here. The CLI uses them too (one
//! unmount, one lock, one statvfs for the whole program).

use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

fn c_path(path: &Path) -> io::Result<CString> {
    CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{}: a path with a NUL byte", path.display())))
}

/// A libc return code as a Result: 0 is success, anything else the thread's errno.
fn rc_to_result(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// What statvfs says of the filesystem holding a path, in bytes and inodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsSpace {
    pub total_bytes: u64,
    pub free_bytes: u64,
    /// Free to unprivileged users (free minus the root reserve): what writes can use.
    pub available_bytes: u64,
    pub total_inodes: u64,
    pub free_inodes: u64,
}

/// statvfs of `path`.
pub fn statvfs(path: &Path) -> io::Result<FsSpace> {
    let c = c_path(path)?;
    // SAFETY: all-zero is a valid statvfs (plain integers).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a NUL-terminated path and `st` a writable statvfs; both outlive the call.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let unit = st.f_frsize.max(1);
    Ok(FsSpace {
        total_bytes: st.f_blocks * unit,
        free_bytes: st.f_bfree * unit,
        available_bytes: st.f_bavail * unit,
        total_inodes: st.f_files,
        free_inodes: st.f_ffree,
    })
}

/// Unmounts `path`: a plain unmount (fails with EBUSY while anything uses it), or a
/// lazy one (detached now, released when the last user goes).
pub fn unmount(path: &Path, lazy: bool) -> io::Result<()> {
    let c = c_path(path)?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: `c` is a valid NUL-terminated path that outlives the call.
    rc_to_result(unsafe { libc::umount2(c.as_ptr(), flags) })
}

/// Takes an exclusive `flock` on `file` without waiting; false if another process
/// holds it. Released by [`unlock`] or when the file is closed.
pub fn try_lock_exclusive(file: &std::fs::File) -> io::Result<bool> {
    // SAFETY: the descriptor is owned by `file`, open for the duration of the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(err)
    }
}

/// Releases a lock taken by [`try_lock_exclusive`].
pub fn unlock(file: &std::fs::File) -> io::Result<()> {
    // SAFETY: the descriptor is owned by `file`, open for the duration of the call.
    rc_to_result(unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_UN) })
}

/// Sets the calling thread's nice value (Linux keeps one per thread; threads it then
/// starts inherit it). Raising it needs no privilege; lowering it again does.
pub fn set_thread_nice(nice: i32) -> io::Result<()> {
    // SAFETY: gettid takes no arguments and cannot fail.
    let tid = unsafe { libc::gettid() };
    // SAFETY: plain integer arguments; PRIO_PROCESS with a thread id names that thread.
    rc_to_result(unsafe { libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, nice) })
}

/// The calling thread's nice value.
pub fn thread_nice() -> io::Result<i32> {
    // SAFETY: as in `set_thread_nice`.
    let tid = unsafe { libc::gettid() };
    // getpriority may return -1 as a value: errno tells them apart.
    // SAFETY: errno is this thread's; resetting it before the call is how getpriority is used.
    unsafe { *libc::__errno_location() = 0 };
    // SAFETY: plain integer arguments.
    let nice = unsafe { libc::getpriority(libc::PRIO_PROCESS, tid as libc::id_t) };
    match io::Error::last_os_error() {
        e if nice == -1 && e.raw_os_error() != Some(0) => Err(e),
        _ => Ok(nice),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_can_raise_its_own_nice_value_without_changing_others() {
        let before = thread_nice().unwrap();
        let inside = std::thread::spawn(|| {
            set_thread_nice(15).unwrap();
            thread_nice().unwrap()
        })
        .join()
        .unwrap();
        assert_eq!(inside, 15);
        assert_eq!(thread_nice().unwrap(), before, "only the thread that asked was changed");
    }

    #[test]
    fn a_second_exclusive_lock_is_refused_until_the_first_is_released() {
        let path = std::env::temp_dir().join(format!("pgbranch-fs-sys-lock-{}", std::process::id()));
        let a = std::fs::File::create(&path).unwrap();
        let b = std::fs::File::open(&path).unwrap();
        assert!(try_lock_exclusive(&a).unwrap());
        assert!(!try_lock_exclusive(&b).unwrap());
        unlock(&a).unwrap();
        assert!(try_lock_exclusive(&b).unwrap());
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn unmounting_what_is_not_a_mount_fails() {
        assert!(unmount(&std::env::temp_dir(), false).is_err());
    }

    #[test]
    fn statvfs_sees_a_real_filesystem() {
        let s = statvfs(&std::env::temp_dir()).unwrap();
        assert!(s.total_bytes > 0 && s.available_bytes <= s.free_bytes && s.free_bytes <= s.total_bytes, "{s:?}");
        assert!(statvfs(Path::new("/no/such/dir")).is_err());
    }
}
