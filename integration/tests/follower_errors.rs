//! Issue 3, acceptance 5: a source that cannot be followed gets its own message and a
//! non-zero exit, and leaves no slot on the source and no half-made main.

use std::os::unix::fs::PermissionsExt;

use pgbranch_integration::*;

fn refused(store: &TestStore, url: &str, extra: &[&str], expect: &[&str]) {
    let mut args = vec!["clone", "stream", "--source-url", url];
    args.extend_from_slice(extra);
    let err = store.fail(&args);
    for e in expect {
        assert!(err.contains(e), "expected {e:?} in: {err}");
    }
    assert!(store.run(&["branch", "path", "main"]).status.code() != Some(0), "a half-made main was left: {err}");
}

#[test]
fn sources_that_cannot_be_followed() {
    let store = TestStore::new("follow-errors");

    // Unreachable: nothing listens on this port.
    let port = pg::free_port().unwrap();
    refused(&store, &format!("postgresql://postgres:x@127.0.0.1:{port}/postgres"), &[], &["cannot reach the source", "Connection refused"]);

    let source = SourceDb::start("errors", &[]);
    // Wrong password.
    refused(&store, &source.url_as("postgres", "wrong"), &[], &["rejected the password", "postgres"]);

    // No replication privilege.
    source.server.psql("postgres", "CREATE ROLE plain LOGIN PASSWORD 'plainpw'").unwrap();
    refused(&store, &source.url_as("plain", "plainpw"), &[], &["no REPLICATION privilege", "ALTER ROLE \"plain\" REPLICATION"]);

    // No local binaries of the source's major version.
    let fake = std::env::temp_dir().join(format!("pgbranch-fake-bin-{}", std::process::id()));
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::write(fake.join("postgres"), "#!/bin/sh\necho 'postgres (PostgreSQL) 99.1'\n").unwrap();
    std::fs::set_permissions(fake.join("postgres"), std::fs::Permissions::from_mode(0o755)).unwrap();
    refused(&store, &source.url(), &["--pg-bin", fake.to_str().unwrap()], &["PostgreSQL 15", "PostgreSQL 99", "--pg-bin"]);
    std::fs::remove_dir_all(&fake).ok();

    // A slot of that name already exists.
    source.server.psql("postgres", "SELECT pg_create_physical_replication_slot('taken')").unwrap();
    refused(&store, &source.url(), &["--slot", "taken"], &["slot 'taken' already exists"]);
    source.server.psql("postgres", "SELECT pg_drop_replication_slot('taken')").unwrap();
    assert_eq!(source.slots(), "", "no slot left on the source");

    // wal_level=minimal.
    let minimal = SourceDb::start("minimal", &["wal_level = minimal", "max_wal_senders = 0"]);
    refused(&store, &minimal.url(), &[], &["wal_level=minimal"]);
    assert_eq!(minimal.slots(), "");

    // And after all that, a good source still works.
    store.ok(&["clone", "stream", "--source-url", &source.url()]);
    assert_eq!(source.slots(), "pgbranch");
    store.ok(&["clone", "stop", "--drop-slot"]);
    assert_eq!(source.slots(), "", "clone stop --drop-slot drops the slot");
}
