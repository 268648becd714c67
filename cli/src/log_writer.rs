//! Where the process's log lines go: stderr, which for the daemon is `daemon.log` in the
//! store. That file sits on the store's disk, so when the disk is full a log write
//! fails; `eprintln!` (which tracing-subscriber uses to report a failed write) panics
//! on a failed write, and the panic would take down whichever thread logged: a request
//! thread then closes its connection without an answer. [`StderrLog`] never fails a
//! write: a line that cannot be written is dropped and counted, and the next line
//! that can be written is preceded by how many were lost.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::fmt::MakeWriter;

static DROPPED: AtomicU64 = AtomicU64::new(0);

/// A [`MakeWriter`] for stderr that drops, and counts, the lines it cannot write.
#[derive(Clone, Copy, Debug, Default)]
pub struct StderrLog;

impl<'a> MakeWriter<'a> for StderrLog {
    type Writer = LineWriter;
    fn make_writer(&'a self) -> LineWriter {
        LineWriter
    }
}

/// One log line's writer (tracing-subscriber writes each event with one `write_all`).
pub struct LineWriter;

impl Write for LineWriter {
    fn write(&mut self, line: &[u8]) -> io::Result<usize> {
        let mut err = io::stderr().lock();
        let dropped = DROPPED.load(Ordering::Relaxed);
        if dropped > 0 {
            let note = format!("[pgbranch] {dropped} log lines were dropped: they could not be written (is the disk full?)\n");
            if err.write_all(note.as_bytes()).is_ok() {
                DROPPED.fetch_sub(dropped, Ordering::Relaxed);
            }
        }
        if err.write_all(line).is_err() {
            DROPPED.fetch_add(1, Ordering::Relaxed);
        }
        Ok(line.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}
