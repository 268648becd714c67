//! Acceptance 5: kill -9 the daemon while pgbench runs on a branch and a client records
//! every commit postgres acknowledged; restart; postgres recovers and every
//! acknowledged commit is there. Five cycles.

use std::time::Duration;

use pgbranch_integration::ackwriter::{self, AckWriter};
use pgbranch_integration::*;

const CYCLES: u32 = 5;

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
    server.psql("postgres", ackwriter::CREATE_ACKS).unwrap();
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
        let acked = writer.acked();
        assert!(!acked.is_empty(), "cycle {cycle}: no commit was acknowledged before the crash");
        next_id = acked.iter().max().unwrap() + 1_000_000;
        eprintln!("cycle {cycle}: {} commits acknowledged before the kill", acked.len());
        all_acked.extend(acked);

        store.ok(&["status"]); // restarts the daemon: replays intent logs, remounts
        let s = store.start("a");
        let lost = ackwriter::lost_ids(&s, &all_acked);
        assert!(lost.is_empty(), "cycle {cycle}: {} acknowledged commits lost, e.g. {:?}", lost.len(), &lost[..lost.len().min(10)]);
        assert_pgbench_invariant(&s, &format!("after crash {cycle}"));
        server = Some(s);
    }
    let s = server.unwrap();
    amcheck(&s).expect("pg_amcheck clean after all crashes");
}
