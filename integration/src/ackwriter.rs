//! The acknowledged-commit client of the crash tests: a psql session that inserts ids
//! into a table `acks (id bigint PRIMARY KEY)`, one transaction each, and records an id
//! only after postgres acknowledged its COMMIT. The record lives in the test process,
//! outside the store, so a crash of the store cannot take it along.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Background, Server};

/// The table the writer inserts into; create it once with this statement.
pub const CREATE_ACKS: &str = "CREATE TABLE acks (id bigint PRIMARY KEY)";

/// Inserts ids `first, first+1, ...` through psql until dropped (or until psql dies with
/// its server); [`AckWriter::acked`] is every id whose commit returned OK.
pub struct AckWriter {
    acked: Arc<Mutex<Vec<u64>>>,
    _proc: Background,
}

impl AckWriter {
    pub fn start(server: &Server, first: u64) -> AckWriter {
        let mut cmd = server.owner.command(server.bin.tool("psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&server.socket_dir)
            .arg("-p")
            .arg(server.port.to_string())
            .args(["-d", "postgres"]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().expect("spawning psql for the ack writer");
        let mut stdin = child.stdin.take().expect("psql's stdin is piped");
        let stdout = child.stdout.take().expect("psql's stdout is piped");
        let acked = Arc::new(Mutex::new(Vec::new()));
        let sink = acked.clone();
        std::thread::spawn(move || {
            // psql prints the marker only after the INSERT (autocommit) returned OK.
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if let Some(id) = line.strip_prefix("ack ").and_then(|v| v.parse().ok()) {
                    sink.lock().unwrap().push(id);
                }
            }
        });
        std::thread::spawn(move || {
            for id in first.. {
                let stmt = format!("INSERT INTO acks VALUES ({id});\n\\echo ack {id}\n");
                if stdin.write_all(stmt.as_bytes()).is_err() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(2));
            }
        });
        AckWriter { acked, _proc: Background { child: Some(child) } }
    }

    /// The ids acknowledged so far.
    pub fn acked(&self) -> Vec<u64> {
        self.acked.lock().unwrap().clone()
    }
}

/// The ids in `acks` on `server`.
pub fn present_ids(server: &Server) -> HashSet<u64> {
    let out = server.psql("postgres", "SELECT id FROM acks").expect("reading the acks table");
    out.lines().map(|l| l.trim().parse().expect("an id in acks")).collect()
}

/// The acknowledged ids of `all_acked` missing on `server` (empty = nothing lost).
pub fn lost_ids(server: &Server, all_acked: &[u64]) -> Vec<u64> {
    let present = present_ids(server);
    all_acked.iter().filter(|id| !present.contains(id)).copied().collect()
}
