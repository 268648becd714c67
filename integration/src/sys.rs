//! The libc calls the test harness and the benchmark make, each behind a safe
//! function: every `unsafe` block of the crate is here.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

/// Sends `signal` to `pid` (signal 0: only checks that it exists).
pub use pgbranch_replicator::sys::kill;

/// Clock ticks per second, the unit of CPU times in /proc/PID/stat.
pub fn clock_ticks_per_sec() -> f64 {
    // SAFETY: sysconf takes a plain integer and touches no memory of ours.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// CPU seconds (user + system) of the children this process has waited for.
pub fn waited_children_cpu_secs() -> f64 {
    // SAFETY: all-zero is a valid rusage (plain integers).
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a writable rusage that outlives the call.
    if unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) } != 0 {
        return 0.0;
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Installs `handler` for SIGINT and SIGTERM.
pub fn on_interrupt(handler: extern "C" fn(libc::c_int)) {
    // SAFETY: the handler only stores to an atomic (async-signal-safe); installed once
    // at the start of main.
    unsafe {
        libc::signal(libc::SIGINT, handler as *const () as usize);
        libc::signal(libc::SIGTERM, handler as *const () as usize);
    }
}

/// fallocate(2) on `f`.
pub fn fallocate(f: &File, mode: i32, off: u64, len: u64) -> io::Result<()> {
    // SAFETY: fallocate on an open descriptor with plain integer arguments.
    if unsafe { libc::fallocate(f.as_raw_fd(), mode, off as libc::off_t, len as libc::off_t) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Maps `len` bytes of `f` from offset 0 shared and writable, runs `with` on them,
/// then msyncs (MS_SYNC) and unmaps. The msync's error is returned.
pub fn with_shared_mmap(f: &File, len: usize, with: impl FnOnce(&mut [u8])) -> io::Result<()> {
    if len == 0 {
        with(&mut []);
        return Ok(());
    }
    // SAFETY: a fresh shared mapping of an open file, len > 0.
    let p = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, f.as_raw_fd(), 0) };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: p is a valid mapping of len bytes that nothing else aliases until munmap.
    let bytes = unsafe { std::slice::from_raw_parts_mut(p as *mut u8, len) };
    with(bytes);
    // SAFETY: p/len are exactly the mapping made above; `bytes` is no longer used.
    let synced = if unsafe { libc::msync(p, len, libc::MS_SYNC) } == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
    // SAFETY: as above.
    unsafe { libc::munmap(p, len) };
    synced
}

/// Whether this process may set up an io_uring instance (kernel, sysctl and seccomp allowing).
pub fn io_uring_available() -> io::Result<()> {
    let mut params = [0u8; 120]; // struct io_uring_params, zeroed
                                 // SAFETY: io_uring_setup with 4 entries and a zeroed, writable params struct of the
                                 // kernel's size; the returned descriptor is closed at once.
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: closing the descriptor io_uring_setup just returned to us.
    unsafe { libc::close(fd as i32) };
    Ok(())
}
