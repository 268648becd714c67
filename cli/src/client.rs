//! Talking to the daemon: connect to its socket, starting it in the background first
//! when nothing answers (and clearing a stale socket a dead daemon left).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::api::{Request, Response, Stopping};
use crate::layout::Layout;

/// How long to wait for a freshly started daemon: it replays intent logs first.
const START_TIMEOUT: Duration = Duration::from_secs(120);
/// How long to wait for another daemon's socket after ours exited (it lost the lock race).
const LOST_RACE_WAIT: Duration = Duration::from_secs(5);
/// How long `pgbranch stop` waits for the daemon's process to end after it answered.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

pub fn try_connect(layout: &Layout) -> Option<UnixStream> {
    UnixStream::connect(layout.socket()).ok()
}

fn start_daemon(layout: &Layout) -> Result<()> {
    layout.prepare()?;
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(layout.log())
        .with_context(|| format!("opening daemon log {}", layout.log().display()))?;
    let exe = std::env::current_exe().context("locating the pgbranch binary")?;
    let mut child = Command::new(exe)
        .arg("--store")
        .arg(&layout.root)
        .arg("daemon")
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .spawn()
        .context("starting the pgbranch daemon")?;
    let started = Instant::now();
    // Our daemon may exit because another verb's daemon won the store lock: keep
    // waiting for that one's socket for a while before reporting our daemon's exit.
    let mut exited: Option<(std::process::ExitStatus, Instant)> = None;
    while started.elapsed() < START_TIMEOUT {
        if try_connect(layout).is_some() {
            return Ok(());
        }
        if exited.is_none() {
            exited = child.try_wait()?.map(|status| (status, Instant::now()));
        }
        if let Some((status, at)) = exited {
            if at.elapsed() >= LOST_RACE_WAIT {
                let log = std::fs::read_to_string(layout.log()).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(5).collect();
                let tail: Vec<&str> = tail.into_iter().rev().collect();
                bail!("the pgbranch daemon exited ({status}) while starting:\n{}", tail.join("\n"));
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the pgbranch daemon did not answer within {}s; see {}", START_TIMEOUT.as_secs(), layout.log().display())
}

/// Sends one request, starting the daemon if needed; returns the response's data.
pub fn call(layout: &Layout, req: &Request) -> Result<serde_json::Value> {
    let conn = match try_connect(layout) {
        Some(c) => c,
        None => {
            start_daemon(layout)?;
            try_connect(layout).context("connecting to the daemon")?
        }
    };
    call_on(conn, req)
}

/// [`call`], with the answer read as the typed response `T` of that request: a
/// mismatch is an error naming the expected answer, never a silent default.
pub fn call_as<T: serde::de::DeserializeOwned>(layout: &Layout, req: &Request) -> Result<T> {
    typed(call(layout, req)?)
}

/// Asks the daemon serving `layout` to stop (it commits and unmounts everything
/// first) and waits until its process is gone, so the store can be opened; its pid,
/// or None when no daemon was running.
pub fn stop_daemon(layout: &Layout) -> Result<Option<u32>> {
    let Some(conn) = try_connect(layout) else { return Ok(None) };
    let data = call_on(conn, &Request::Shutdown)?;
    let stopping: Stopping = typed(data)?;
    let pid = stopping.stopping as i32;
    let t = Instant::now();
    while crate::sys::kill(pid, 0).is_ok() && crate::procs::is_running(pid) {
        if t.elapsed() > STOP_TIMEOUT {
            bail!(
                "the pgbranch daemon (pid {pid}) answered the stop but is still running after {}s; see {}",
                STOP_TIMEOUT.as_secs(),
                layout.log().display()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(Some(stopping.stopping))
}

/// The daemon's answer read as the typed response `T`: a mismatch is an error naming
/// the expected answer, never a silent default.
fn typed<T: serde::de::DeserializeOwned>(data: serde_json::Value) -> Result<T> {
    serde_json::from_value(data).with_context(|| {
        format!(
            "the daemon's answer is not the {} this pgbranch expects (a daemon of another version? run `pgbranch stop`)",
            std::any::type_name::<T>().rsplit("::").next().unwrap_or("answer")
        )
    })
}

pub fn call_on(mut conn: UnixStream, req: &Request) -> Result<serde_json::Value> {
    writeln!(conn, "{}", serde_json::to_string(req)?)?;
    let mut line = String::new();
    BufReader::new(&conn).read_line(&mut line).context("reading the daemon's answer")?;
    if line.is_empty() {
        bail!("the daemon closed the connection without answering (did it crash? see its log)");
    }
    let resp: Response = serde_json::from_str(&line).context("parsing the daemon's answer")?;
    if !resp.ok {
        bail!("{}", resp.error.unwrap_or_else(|| "unknown error".into()));
    }
    Ok(resp.data)
}
