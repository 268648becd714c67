//! Acceptance 4: branches cut from a branch while pgbench writes to it. `branch create`
//! prepares each cut and starts it as its own postgres; each passes pg_amcheck, keeps
//! the pgbench invariant, and is isolated from its parent in both directions.

use std::time::Duration;

use pgbranch_integration::*;

const CUTS: usize = 10;

#[test]
fn ten_branches_cut_under_pgbench_load() {
    let store = TestStore::new("load");
    let a = store.new_cluster("a");
    a.pgbench(&["-i", "-q", "-s", "5", "postgres"]).unwrap();
    a.psql("postgres", "CREATE TABLE marks (label text PRIMARY KEY)").unwrap();

    let load = pgbench_background(&a, &["-c", "4", "-j", "2", "-T", "600", "postgres"]);
    std::thread::sleep(Duration::from_secs(2));

    for i in 0..CUTS {
        let name = format!("b{i}");
        a.psql("postgres", &format!("INSERT INTO marks VALUES ('before-{i}')")).unwrap();
        store.ok(&["branch", "create", &name, "--from", "a"]);
        a.psql("postgres", &format!("INSERT INTO marks VALUES ('after-{i}')")).unwrap();

        let b = store.branch_server(&name);
        amcheck(&b).unwrap_or_else(|e| panic!("branch {name}: {e}"));
        assert_pgbench_invariant(&b, &name);

        let marks = b.psql("postgres", "SELECT string_agg(label, ',' ORDER BY label) FROM marks").unwrap();
        assert!(marks.contains(&format!("before-{i}")), "{name} lacks a row committed before its cut: {marks}");
        assert!(!marks.contains(&format!("after-{i}")), "{name} shows a row committed on a after its cut: {marks}");

        b.psql("postgres", &format!("INSERT INTO marks VALUES ('only-in-{name}')")).unwrap();
        b.pgbench(&["-n", "-c", "2", "-t", "200", "postgres"]).unwrap();
        assert_pgbench_invariant(&b, &format!("{name} after its own writes"));
        let in_a = a.psql("postgres", &format!("SELECT count(*) FROM marks WHERE label = 'only-in-{name}'")).unwrap();
        assert_eq!(in_a, "0", "a write to {name} shows in its parent");
        store.ok(&["branch", "stop", &name]);
    }

    drop(load);
    assert_pgbench_invariant(&a, "a");
    amcheck(&a).expect("parent still clean");
    let list = store.json(&["branch", "list"]);
    assert_eq!(list.as_array().unwrap().len(), CUTS + 1);
}
