//! Issue 8, acceptance 2: TLS on every connection to the source, against a real
//! TLS-only source (`hostssl` lines only) with certificates made by openssl. Both
//! followers follow with `sslmode=verify-full`; a client certificate replaces the
//! password; `channel_binding=require` holds; a wrong CA, a wrong host name and a
//! plaintext URL are refused with their own message before anything is made.

use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

use pgbranch_integration::masked::{wait_until, write_config};
use pgbranch_integration::tls::{url, Certs};
use pgbranch_integration::{psql_url, SourceDb, TestStore};

const SEED: &str = include_str!("../../replicator/tests/fixtures/seed-transform.yaml");
const LOGICAL: [&str; 3] = ["wal_level = logical", "max_wal_senders = 10", "max_replication_slots = 10"];
const USERS: &str = "CREATE TABLE users (email text PRIMARY KEY, full_name text NOT NULL, address text);
     INSERT INTO users SELECT 'person' || g || '@acme-corp.io', 'First' || g || ' Last', g || ' Real Street' FROM generate_series(1, 200) g;";

fn last_line(s: &str) -> String {
    s.lines().last().unwrap_or_default().trim().to_string()
}

fn verify_full(certs: &Certs) -> String {
    format!("sslmode=verify-full&sslrootcert={}", certs.ca.display())
}

/// A row inserted on the source shows up on main (`on_main` runs a query there).
fn marker_reaches_main(source: &SourceDb, on_main: impl Fn(&str) -> Result<String, String>, value: i32) {
    source.server.psql("postgres", &format!("CREATE TABLE IF NOT EXISTS marker (x int); INSERT INTO marker VALUES ({value})")).unwrap();
    let want = value.to_string();
    let seen = wait_until(Duration::from_secs(120), || on_main(&format!("SELECT x FROM marker WHERE x = {value}")).as_deref() == Ok(&want));
    assert!(seen, "a row committed on the source did not reach main");
}

/// Every session of the follower on the source (the walsender included) uses TLS.
fn only_tls_sessions(source: &SourceDb) {
    let plain = source
        .server
        .psql(
            "postgres",
            "SELECT count(*) FROM pg_stat_activity a JOIN pg_stat_ssl s USING (pid) WHERE a.client_addr IS NOT NULL AND NOT s.ssl",
        )
        .unwrap();
    assert_eq!(plain, "0", "a connection to the source without TLS");
    let tls =
        source.server.psql("postgres", "SELECT count(*) FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid) WHERE s.ssl").unwrap();
    assert_eq!(tls, "1", "the replication connection uses TLS");
}

/// The file a libpq parameter in main's primary_conninfo names: the store's copy,
/// owned by postgres' user, mode 0600.
fn conninfo_file(store: &TestStore, param: &str, original: &Path) -> String {
    let auto = std::fs::read_to_string(store.path("main").join("postgresql.auto.conf")).unwrap();
    let conninfo = auto.lines().rev().find(|l| l.starts_with("primary_conninfo")).expect("primary_conninfo").to_string();
    let start = conninfo.find(&format!("{param}=")).unwrap_or_else(|| panic!("{param} in {conninfo}")) + param.len() + 1;
    let path: String = conninfo[start..].trim_start_matches('\'').chars().take_while(|c| *c != '\'' && *c != ' ').collect();
    assert_ne!(Path::new(&path), original, "main reads the user's file, not the store's copy");
    let meta = std::fs::metadata(&path).unwrap();
    let (_, owner) = pgbranch_integration::pg_env();
    assert_eq!((meta.uid(), meta.mode() & 0o777), (owner.uid, 0o600), "{path}");
    conninfo
}

fn nothing_made(store: &TestStore, source: &SourceDb) {
    assert_eq!(source.slots(), "", "a slot was left on the source");
    assert_eq!(source.server.psql("postgres", "SELECT count(*) FROM pg_publication").unwrap(), "0", "a publication was left");
    assert!(!store.run(&["branch", "path", "main"]).status.success(), "branch main was made");
}

#[test]
fn physical_follower_with_verify_full_and_channel_binding() {
    let certs = Certs::make("phys");
    let source = certs.source("tls-phys", "scram-sha-256", &[]);
    let store = TestStore::new("tls-phys");
    let src = url(&source, "localhost", true, &format!("{}&channel_binding=require", verify_full(&certs)));
    store.ok(&["clone", "stream", "--source-url", &src]);
    assert_eq!(source.slots(), "pgbranch");
    let main_url = store.ok(&["branch", "url", "main"]).trim().to_string();
    marker_reaches_main(&source, |q| psql_url(&main_url, q), 42);
    only_tls_sessions(&source);
    let conninfo = conninfo_file(&store, "sslrootcert", &certs.ca);
    assert!(conninfo.contains("sslmode=''verify-full''") && conninfo.contains("channel_binding=require"), "{conninfo}");

    // The daemon's own queries (lag) go over TLS too; the password stays hidden.
    let status = store.json(&["status"]);
    assert_eq!(status["follower"]["state"], "streaming", "{status}");
    assert!(status["follower"]["lag_bytes"].is_u64(), "{status}");
    assert!(!status.to_string().contains(&source.password), "{status}");

    let dev = last_line(&store.ok(&["branch", "create", "dev"]));
    psql_url(&dev, "INSERT INTO marker VALUES (7)").unwrap();
    assert_eq!(psql_url(&dev, "SELECT string_agg(x::text, ',' ORDER BY x) FROM marker").unwrap(), "7,42");
    marker_reaches_main(&source, |q| psql_url(&main_url, q), 43);
}

#[test]
fn masked_follower_with_verify_full() {
    let certs = Certs::make("masked");
    let source = certs.source("tls-masked", "scram-sha-256", &LOGICAL);
    source.server.psql("postgres", USERS).unwrap();
    let store = TestStore::new("tls-masked");
    let config = write_config(&store.dir.with_extension("configs"), "seed.yaml", SEED);
    let src = url(&source, "localhost", true, &verify_full(&certs));
    let main = last_line(&store.ok(&["clone", "stream", "--source-url", &src, "--config", config.to_str().unwrap()]));
    assert_eq!(psql_url(&main, "SELECT count(*) FROM users WHERE email LIKE 'person%'").unwrap(), "0", "raw emails on main");
    assert_eq!(psql_url(&main, "SELECT count(*) FROM users").unwrap(), "200");

    source.server.psql("postgres", "INSERT INTO users VALUES ('newcomer@acme-corp.io', 'New Comer', '1 Real Street')").unwrap();
    let arrived = wait_until(Duration::from_secs(120), || psql_url(&main, "SELECT count(*) FROM users").as_deref() == Ok("201"));
    assert!(arrived, "a row inserted on the source did not reach main");
    assert_eq!(psql_url(&main, "SELECT count(*) FROM users WHERE email LIKE 'newcomer%'").unwrap(), "0");
    only_tls_sessions(&source);
    let status = store.json(&["status"]);
    assert_eq!(status["follower"]["state"], "streaming", "{status}");
    assert!(status["follower"]["lag_bytes"].is_u64(), "the daemon's lag query over TLS: {status}");

    let dev = last_line(&store.ok(&["branch", "create", "dev"]));
    assert_eq!(psql_url(&dev, "SELECT count(*) FROM users").unwrap(), "201");
}

#[test]
fn client_certificate_instead_of_a_password() {
    let certs = Certs::make("cert");
    let source = certs.source("tls-cert", "cert", &[]);
    let store = TestStore::new("tls-cert");
    let with_cert = format!("{}&sslcert={}&sslkey={}", verify_full(&certs), certs.client_cert.display(), certs.client_key.display());

    // Certificate authentication has no SCRAM to bind: channel_binding=require refuses it.
    let bound = url(&source, "localhost", false, &format!("{with_cert}&channel_binding=require"));
    let err = store.fail(&["clone", "stream", "--source-url", &bound]);
    assert!(err.contains("channel_binding=require, but the source authenticated without it"), "{err}");
    nothing_made(&store, &source);
    // No certificate: the source says so.
    let err = store.fail(&["clone", "stream", "--source-url", &url(&source, "localhost", false, &verify_full(&certs))]);
    assert!(err.contains("certificate"), "{err}");
    nothing_made(&store, &source);

    // The user's key is 0644 in a directory postgres cannot read: the store's copies work.
    store.ok(&["clone", "stream", "--source-url", &url(&source, "localhost", false, &with_cert)]);
    // main's URL would carry the source's password, and there is none: ask main over its socket.
    let main = store.branch_server("main");
    marker_reaches_main(&source, |q| main.psql("postgres", q).map_err(|e| e.to_string()), 1);
    only_tls_sessions(&source);
    conninfo_file(&store, "sslkey", &certs.client_key);
    conninfo_file(&store, "sslcert", &certs.client_cert);
    assert_eq!(store.json(&["status"])["follower"]["state"], "streaming");

    // A daemon crash, and the copies laid out for postgres gone (as a reboot empties
    // /run): the restarted daemon lays them out again and main follows with them.
    store.kill_daemon();
    std::fs::remove_dir_all(store.dir.join("source-tls")).unwrap();
    store.ok(&["status"]);
    let back = wait_until(Duration::from_secs(120), || {
        let st = store.json(&["status"]);
        let main_running = st["branches"].as_array().unwrap().iter().any(|b| b["name"] == "main" && b["running"] == true);
        st["follower"]["state"] == "streaming" && main_running
    });
    assert!(back, "main did not come back after the daemon restarted");
    let main = store.branch_server("main");
    marker_reaches_main(&source, |q| main.psql("postgres", q).map_err(|e| e.to_string()), 2);
    conninfo_file(&store, "sslkey", &certs.client_key);
}

#[test]
fn wrong_ca_wrong_host_and_plaintext_are_refused_before_anything_is_made() {
    let certs = Certs::make("refuse");
    let source = certs.source("tls-refuse", "scram-sha-256", &LOGICAL);
    source.server.psql("postgres", USERS).unwrap();
    let store = TestStore::new("tls-refuse");
    let config = write_config(&store.dir.with_extension("configs"), "seed.yaml", SEED);
    let config = config.to_str().unwrap();
    let port = source.server.port;

    // A CA that did not sign the source's certificate: physical and masked.
    let wrong_ca = url(&source, "localhost", true, &format!("sslmode=verify-full&sslrootcert={}", certs.other_ca.display()));
    let want = format!("the source's TLS certificate is not signed by the CA in sslrootcert={}", certs.other_ca.display());
    let err = store.fail(&["clone", "stream", "--source-url", &wrong_ca]);
    assert!(err.contains(&want), "{err}");
    nothing_made(&store, &source);
    let err = store.fail(&["clone", "stream", "--source-url", &wrong_ca, "--config", config]);
    assert!(err.contains(&want), "{err}");
    nothing_made(&store, &source);
    // libpq: sslmode=require with a root certificate file verifies like verify-ca.
    let require = url(&source, "127.0.0.1", true, &format!("sslmode=require&sslrootcert={}", certs.other_ca.display()));
    let err = store.fail(&["pii", "scan", "--source-url", &require]);
    assert!(err.contains(&want), "{err}");

    // A host name the certificate does not name (reached at 127.0.0.1 through hostaddr).
    let name = "db.example.internal";
    let wrong_host = format!(
        "postgresql://postgres:{}@{name}:{port}/postgres?hostaddr=127.0.0.1&sslmode=verify-full&sslrootcert={}",
        source.password,
        certs.ca.display()
    );
    let err = store.fail(&["clone", "stream", "--source-url", &wrong_host]);
    assert!(err.contains(&format!("the source's certificate is for localhost, 127.0.0.1, not for {name} (sslmode=verify-full)")), "{err}");
    nothing_made(&store, &source);
    let err = store.fail(&["clone", "stream", "--source-url", &wrong_host, "--config", config]);
    assert!(err.contains(&format!("not for {name}")), "{err}");
    nothing_made(&store, &source);
    // verify-ca checks the chain only: the same URL reads the source.
    let out = store.run(&["pii", "scan", "--source-url", &wrong_host.replace("verify-full", "verify-ca")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    // Plaintext against a TLS-only source.
    let err = store.fail(&["clone", "stream", "--source-url", &url(&source, "127.0.0.1", true, "sslmode=disable")]);
    assert!(err.contains("the source accepts only TLS connections from here") && err.contains("sslmode=disable"), "{err}");
    nothing_made(&store, &source);
    // allow: plain first, then TLS, as libpq does.
    let out = store.run(&["pii", "scan", "--source-url", &url(&source, "127.0.0.1", true, "sslmode=allow")]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn masked_follower_with_a_client_certificate() {
    let certs = Certs::make("masked-cert");
    let source = certs.source("tls-masked-cert", "cert", &LOGICAL);
    source.server.psql("postgres", USERS).unwrap();
    let store = TestStore::new("tls-masked-cert");
    let config = write_config(&store.dir.with_extension("configs"), "seed.yaml", SEED);
    let with_cert = format!("{}&sslcert={}&sslkey={}", verify_full(&certs), certs.client_cert.display(), certs.client_key.display());
    // pg_dump, pg_dumpall, the copy and the stream all log in with the certificate.
    let main = last_line(&store.ok(&[
        "clone",
        "stream",
        "--source-url",
        &url(&source, "localhost", false, &with_cert),
        "--config",
        config.to_str().unwrap(),
    ]));
    assert_eq!(psql_url(&main, "SELECT count(*) FROM users WHERE email LIKE 'person%'").unwrap(), "0", "raw emails on main");
    assert_eq!(psql_url(&main, "SELECT count(*) FROM users").unwrap(), "200");
    source.server.psql("postgres", "INSERT INTO users VALUES ('newcomer@acme-corp.io', 'New Comer', '1 Real Street')").unwrap();
    let arrived = wait_until(Duration::from_secs(120), || psql_url(&main, "SELECT count(*) FROM users").as_deref() == Ok("201"));
    assert!(arrived, "a row inserted on the source did not reach main");
    only_tls_sessions(&source);
}
