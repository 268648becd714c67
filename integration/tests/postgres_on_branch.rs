//! Acceptance 1: stock postgres on an empty branch — initdb with checksums, pgbench
//! load and run; pg_amcheck clean while it runs; pg_checksums clean after a stop.

use pgbranch_integration::*;

#[test]
fn initdb_pgbench_amcheck_checksums_on_a_branch() {
    let store = TestStore::new("pg");
    let mut server = store.new_cluster("a");
    server.pgbench(&["-i", "-q", "-s", "10", "postgres"]).unwrap();

    let load = pgbench_background(&server, &["-c", "4", "-j", "2", "-T", "20", "postgres"]);
    std::thread::sleep(std::time::Duration::from_secs(3));
    amcheck(&server).expect("pg_amcheck is clean while pgbench runs");
    let out = load.wait();
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "pgbench run failed: {report}{}", String::from_utf8_lossy(&out.stderr));
    assert!(report.contains("tps = "), "{report}");
    assert_pgbench_invariant(&server, "after the run");

    server.stop().unwrap();
    let (bin, owner) = pg_env();
    let mut check = owner.command(bin.tool("pg_checksums"));
    check.arg("--check").arg("-D").arg(store.path("a"));
    let out = owner.run(&mut check, "pg_checksums --check").expect("pg_checksums --check is clean");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Bad checksums:  0"), "{text}");
}
