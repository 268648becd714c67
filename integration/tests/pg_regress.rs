//! Acceptance 2: PostgreSQL's own regression suite (parallel_schedule of the installed
//! 15.x) passes in full against a server whose PGDATA is a branch.

use std::path::Path;
use std::process::Command;

use pgbranch_integration::*;

#[test]
fn postgres_regression_suite_passes_on_a_branch() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/run-pg-regress");
    let store = TestStore::new("regress");
    let server = store.new_cluster("regress");
    let out = Command::new(&script)
        .arg("--host")
        .arg(&server.socket_dir)
        .arg("--port")
        .arg(server.port.to_string())
        .output()
        .expect("running scripts/run-pg-regress");
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{report}");
    assert!(out.status.success(), "pg_regress failed on a branch:\n{report}");
    assert!(report.contains("tests passed"), "no pg_regress summary:\n{report}");
    amcheck(&server).expect("pg_amcheck clean after the regression suite");
}
