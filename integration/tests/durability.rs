//! Acceptance 5: kill -9 the daemon while pgbench runs on a branch and a client records
//! every commit postgres acknowledged; restart; postgres recovers and every
//! acknowledged commit is there. Five cycles.

use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use pgbranch_integration::*;

const CYCLES: u32 = 5;

/// Inserts ids one transaction at a time through psql; records each id whose commit
/// postgres acknowledged (psql prints the marker only after the INSERT returned).
struct AckWriter {
    acked: Arc<Mutex<Vec<u64>>>,
    _proc: Background,
}

impl AckWriter {
    fn start(server: &Server, first: u64) -> AckWriter {
        let mut cmd = server.owner.command(server.bin.tool("psql"));
        cmd.args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&server.socket_dir)
            .arg("-p")
            .arg(server.port.to_string())
            .args(["-d", "postgres"]);
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null());
        let mut child = cmd.spawn().expect("psql");
        let mut stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let acked = Arc::new(Mutex::new(Vec::new()));
        let sink = acked.clone();
        std::thread::spawn(move || {
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
}

fn crash(store: &TestStore, mut server: Server) {
    store.kill_daemon();
    if let Some(pid) = server.pid.take() {
        kill_tree(pid);
        assert!(wait_gone(pid, Duration::from_secs(20)), "postmaster {pid} survived SIGKILL");
    }
}

#[test]
fn acknowledged_commits_survive_daemon_kill() {
    let store = TestStore::new("durable");
    let server = store.new_cluster("a");
    server.pgbench(&["-i", "-q", "-s", "2", "postgres"]).unwrap();
    server.psql("postgres", "CREATE TABLE acks (id bigint PRIMARY KEY)").unwrap();
    let mut server = Some(server);
    let mut all_acked: Vec<u64> = Vec::new();
    let mut next_id = 1u64;

    for cycle in 0..CYCLES {
        let s = server.take().unwrap();
        let load = pgbench_background(&s, &["-n", "-c", "3", "-j", "2", "-T", "120", "postgres"]);
        let writer = AckWriter::start(&s, next_id);
        std::thread::sleep(Duration::from_millis(2500 + 700 * cycle as u64));
        crash(&store, s);
        drop(load);
        let acked = writer.acked.lock().unwrap().clone();
        assert!(!acked.is_empty(), "cycle {cycle}: no commit was acknowledged before the crash");
        next_id = acked.iter().max().unwrap() + 1_000_000;
        eprintln!("cycle {cycle}: {} commits acknowledged before the kill", acked.len());
        all_acked.extend(acked);

        store.ok(&["status"]); // restarts the daemon: replays intent logs, remounts
        let s = store.start("a");
        let present: std::collections::HashSet<u64> =
            s.psql("postgres", "SELECT id FROM acks").unwrap().lines().map(|l| l.trim().parse().unwrap()).collect();
        let lost: Vec<u64> = all_acked.iter().filter(|id| !present.contains(id)).copied().collect();
        assert!(lost.is_empty(), "cycle {cycle}: {} acknowledged commits lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
        assert_pgbench_invariant(&s, &format!("after crash {cycle}"));
        server = Some(s);
    }
    let s = server.unwrap();
    amcheck(&s).expect("pg_amcheck clean after all crashes");
}
