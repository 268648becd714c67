//! The replication client (`logical::wire`) and the pgoutput decoder against a real
//! PostgreSQL: authentication, slot creation with an exported snapshot, the decoded
//! change stream, flush confirmation and restart, keepalives and timeouts, and how the
//! stream ends.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pgbranch_replicator::logical::pgoutput::{decode, Datum, LogicalMsg, OldTuple};
use pgbranch_replicator::logical::wire::{Lsn, ReplicationConn, StreamMsg, WireError};
use pgbranch_replicator::pg::{free_port, Owner, PgBin, Server};
use pgbranch_replicator::tls::SourceTls;

const PASSWORD: &str = "wire-secret";
static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A throwaway postgres (scram on 127.0.0.1, trust on its socket); stopped by pid and
/// its directory removed on drop, also when a test panics.
struct Db {
    server: Option<Server>,
    dir: PathBuf,
}

impl Db {
    fn start(tag: &str, settings: &[&str]) -> Db {
        let bin = PgBin::find(None).expect("postgres binaries");
        let owner = Owner::for_branches().expect("postgres OS user");
        let dir =
            std::env::temp_dir().join(format!("pgbranch-wire-{tag}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let mut db = Db { server: None, dir: dir.clone() };
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let data = dir.join("data");
        owner.private_dir(&data).unwrap();
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, PASSWORD).unwrap();
        let mut initdb = owner.command(bin.tool("initdb"));
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"]);
        initdb.arg(format!("--pwfile={}", pwfile.display()));
        owner.run(&mut initdb, "initdb").unwrap();
        let mut conf = std::fs::OpenOptions::new().append(true).open(data.join("postgresql.conf")).unwrap();
        std::io::Write::write_all(&mut conf, format!("\nwal_level = logical\n{}\n", settings.join("\n")).as_bytes()).unwrap();
        db.server = Some(Server::start(&bin, &owner, &data, &dir.join("run"), free_port().unwrap()).unwrap());
        db
    }

    fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }

    fn psql(&self, sql: &str) -> String {
        self.server().psql("postgres", sql).unwrap()
    }

    fn tcp_config(&self, user: &str, password: &str) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host("127.0.0.1").port(self.server().port).user(user).password(password).dbname("postgres");
        c
    }

    fn socket_config(&self) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host_path(&self.server().socket_dir).port(self.server().port).user("postgres").dbname("postgres");
        c
    }

    fn repl(&self) -> ReplicationConn {
        ReplicationConn::connect(&self.tcp_config("postgres", PASSWORD), &SourceTls::default()).unwrap()
    }

    fn client(&self) -> postgres::Client {
        self.tcp_config("postgres", PASSWORD).connect(postgres::NoTls).unwrap()
    }

    fn confirmed_flush(&self, slot: &str) -> Lsn {
        self.psql(&format!("SELECT confirmed_flush_lsn FROM pg_replication_slots WHERE slot_name = '{slot}'")).parse().unwrap()
    }

    /// Starts streaming on a new connection, retrying while the slot is still held by
    /// the walsender of a connection that was just closed (SQLSTATE 55006).
    fn start_stream(&self, slot: &str, start: Lsn) -> ReplicationConn {
        let t = Instant::now();
        loop {
            let mut conn = self.repl();
            match conn.start_logical(slot, start, "pub") {
                Ok(()) => return conn,
                Err(e) if e.code() == Some("55006") && t.elapsed() < Duration::from_secs(10) => {
                    std::thread::sleep(Duration::from_millis(50))
                }
                Err(e) => panic!("start_logical: {e}"),
            }
        }
    }

    fn drop_slot(&self, slot: &str) {
        let mut conn = self.repl();
        conn.simple_query(&format!("DROP_REPLICATION_SLOT \"{slot}\" WAIT")).unwrap();
        assert_eq!(self.psql("SELECT count(*) FROM pg_replication_slots"), "0");
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        if let Some(mut s) = self.server.take() {
            let _ = s.stop();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Incompressible-ish text of `len` characters, reproducible from `seed`.
fn noise_text(len: usize, mut seed: u64) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    (0..len)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            ALPHABET[(seed % 64) as usize] as char
        })
        .collect()
}

fn text(s: &str) -> Datum {
    Datum::Text(s.to_string())
}

/// Decoded messages until `commits` transactions have arrived (keepalives skipped),
/// with the `wal_start` of each.
fn recv_transactions(conn: &mut ReplicationConn, commits: usize) -> Vec<(Lsn, LogicalMsg)> {
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut out = Vec::new();
    let mut seen = 0;
    while seen < commits {
        assert!(Instant::now() < deadline, "only {seen} of {commits} transactions arrived: {out:#?}");
        match conn.recv(Duration::from_secs(1)).unwrap() {
            Some(StreamMsg::XLogData { wal_start, data, .. }) => {
                let msg = decode(&data).unwrap();
                seen += usize::from(matches!(msg, LogicalMsg::Commit { .. }));
                out.push((wal_start, msg));
            }
            Some(StreamMsg::Keepalive { .. }) | None => {}
        }
    }
    out
}

/// No further change arrives within `wait` (keepalives are fine).
fn assert_quiet(conn: &mut ReplicationConn, wait: Duration) {
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        if let Some(StreamMsg::XLogData { data, .. }) = conn.recv(Duration::from_millis(200)).unwrap() {
            panic!("unexpected change: {:?}", decode(&data));
        }
    }
}

#[test]
fn connects_with_each_auth_method_and_reports_server_errors() {
    let db = Db::start("auth", &[]);
    db.psql(
        "SET password_encryption = 'md5'; CREATE ROLE md5user LOGIN REPLICATION PASSWORD 'md5-pw';
         RESET password_encryption; CREATE ROLE plainuser LOGIN REPLICATION PASSWORD 'plain-pw';
         CREATE ROLE norepl LOGIN PASSWORD 'norepl-pw'",
    );
    let hba = db.server().data.join("pg_hba.conf");
    let old = std::fs::read_to_string(&hba).unwrap();
    std::fs::write(&hba, format!("host all md5user 127.0.0.1/32 md5\nhost all plainuser 127.0.0.1/32 password\n{old}")).unwrap();
    db.psql("SELECT pg_reload_conf()");

    // SCRAM over TCP: ordinary SQL and replication commands both work.
    let mut conn = db.repl();
    assert!(conn.server_version().unwrap().starts_with("15"), "{:?}", conn.server_version());
    let rows = conn.simple_query("SELECT current_user, 1 + 1, NULL::text; SET application_name = 'x'").unwrap();
    assert_eq!(rows, vec![vec![Some("postgres".to_string()), Some("2".to_string()), None]]);
    let sys = conn.identify_system().unwrap();
    assert_eq!((sys.timeline, sys.dbname.as_deref()), (1, Some("postgres")));
    assert!(sys.xlog_pos > Lsn(0));
    let rows = db.psql("SELECT usename, backend_type FROM pg_stat_activity WHERE backend_type = 'walsender'");
    assert_eq!(rows, "postgres|walsender");
    drop(conn);

    // Trust over the unix socket.
    let mut conn = ReplicationConn::connect(&db.socket_config(), &SourceTls::default()).unwrap();
    let rows = conn.simple_query("SELECT inet_server_addr() IS NULL").unwrap();
    assert_eq!(rows, vec![vec![Some("t".to_string())]]);
    assert!(format!("{conn:?}").contains(".s.PGSQL."));

    // md5 and cleartext password exchanges.
    for (user, pw) in [("md5user", "md5-pw"), ("plainuser", "plain-pw")] {
        let mut conn = ReplicationConn::connect(&db.tcp_config(user, pw), &SourceTls::default()).unwrap_or_else(|e| panic!("{user}: {e}"));
        assert_eq!(conn.simple_query("SELECT current_user").unwrap(), vec![vec![Some(user.to_string())]]);
        let e = ReplicationConn::connect(&db.tcp_config(user, "nope"), &SourceTls::default()).unwrap_err();
        assert_eq!(e.code(), Some("28P01"), "{user}: {e}");
    }

    // A wrong SCRAM password: the server's error, and no secret in any message.
    let e = ReplicationConn::connect(&db.tcp_config("postgres", "wrong-password-123"), &SourceTls::default()).unwrap_err();
    assert!(matches!(&e, WireError::Server { code, .. } if code == "28P01"), "{e:?}");
    assert!(e.to_string().contains("password authentication failed"), "{e}");
    for shown in [e.to_string(), format!("{e:?}"), format!("{:?}", db.repl())] {
        assert!(!shown.contains("wrong-password-123") && !shown.contains(PASSWORD), "{shown}");
    }
    let mut c = postgres::Config::new();
    c.host("127.0.0.1").port(db.server().port).user("postgres").dbname("postgres");
    let e = ReplicationConn::connect(&c, &SourceTls::default()).unwrap_err();
    assert!(matches!(e, WireError::Auth(_)), "no password given: {e:?}");

    // A role without REPLICATION, a missing database, nobody listening.
    let e = ReplicationConn::connect(&db.tcp_config("norepl", "norepl-pw"), &SourceTls::default()).unwrap_err();
    assert_eq!(e.code(), Some("42501"), "{e}");
    let mut c = db.tcp_config("postgres", PASSWORD);
    c.dbname("missing");
    assert_eq!(ReplicationConn::connect(&c, &SourceTls::default()).unwrap_err().code(), Some("3D000"));
    let port = free_port().unwrap();
    let mut c = postgres::Config::new();
    c.host("127.0.0.1").port(port).user("postgres").password(PASSWORD);
    let e = ReplicationConn::connect(&c, &SourceTls::default()).unwrap_err();
    assert!(matches!(&e, WireError::Io(_)) && e.to_string().contains(&format!("127.0.0.1:{port}")), "{e}");

    // A failed command leaves the connection usable.
    let mut conn = db.repl();
    let e = conn.simple_query("SELECT * FROM no_such_table").unwrap_err();
    assert_eq!(e.code(), Some("42P01"));
    assert_eq!(conn.simple_query("SELECT 7").unwrap(), vec![vec![Some("7".to_string())]]);
}

#[test]
fn slot_snapshot_stream_confirm_and_restart() {
    let db = Db::start("stream", &[]);
    let mut client = db.client();
    let big1 = noise_text(100_000, 1);
    let big2 = noise_text(100_000, 2);
    client
        .batch_execute(
            "CREATE TABLE t (id int PRIMARY KEY, name text NOT NULL, big text, note int);
             CREATE PUBLICATION pub FOR ALL TABLES;",
        )
        .unwrap();
    client.execute("INSERT INTO t VALUES (1, 'one', $1, 7)", &[&big1]).unwrap();
    let toasted: i64 =
        client.query_one("SELECT pg_total_relation_size(reltoastrelid) FROM pg_class WHERE relname = 't'", &[]).unwrap().get(0);
    assert!(toasted > 90_000, "the big value is stored out of line, uncompressed: toast size {toasted}");
    let rel: u32 = client.query_one("SELECT 't'::regclass::oid", &[]).unwrap().get(0);

    // The slot's snapshot shows exactly what was committed before it.
    let mut repl = db.repl();
    let slot = repl.create_logical_slot("s1").unwrap();
    assert_eq!(slot.slot, "s1");
    assert!(slot.consistent_point > Lsn(0) && !slot.snapshot_name.is_empty(), "{slot:?}");
    client.execute("INSERT INTO t VALUES (2, 'two', $1, NULL)", &[&big2]).unwrap();
    let mut reader = db.client();
    reader.batch_execute(&format!("BEGIN ISOLATION LEVEL REPEATABLE READ; SET TRANSACTION SNAPSHOT '{}'", slot.snapshot_name)).unwrap();
    let rows = reader.query("SELECT id, md5(big) = md5($1) FROM t ORDER BY id", &[&big1]).unwrap();
    assert_eq!(rows.iter().map(|r| (r.get::<_, i32>(0), r.get::<_, bool>(1))).collect::<Vec<_>>(), vec![(1, true)]);
    reader.batch_execute("COMMIT").unwrap();
    assert_eq!(client.query_one("SELECT count(*) FROM t", &[]).unwrap().get::<_, i64>(0), 2);

    // Every kind of change after the slot, and one that never commits.
    client.batch_execute("UPDATE t SET name = 'two-b' WHERE id = 2").unwrap();
    client.batch_execute("UPDATE t SET id = 3 WHERE id = 2").unwrap();
    client.batch_execute("BEGIN; INSERT INTO t VALUES (99, 'rolled back', NULL, NULL); ROLLBACK").unwrap();
    client.batch_execute("DELETE FROM t WHERE id = 3").unwrap();
    client.batch_execute("TRUNCATE t").unwrap();

    repl.start_logical("s1", slot.consistent_point, "pub").unwrap();
    let got = recv_transactions(&mut repl, 5);

    // Relation comes before the first row of the table (and again after TRUNCATE
    // invalidated the server's cache); rows refer to it by oid.
    let first_relation = got.iter().position(|(_, m)| matches!(m, LogicalMsg::Relation(_))).expect("a Relation message");
    let first_row = got.iter().position(|(_, m)| matches!(m, LogicalMsg::Insert { .. })).unwrap();
    assert!(first_relation < first_row, "{got:#?}");
    let LogicalMsg::Relation(r) = &got[first_relation].1 else { unreachable!() };
    assert_eq!((r.id, r.schema.as_str(), r.name.as_str(), r.replica_identity), (rel, "public", "t", b'd'));
    let cols: Vec<_> = r.columns.iter().map(|c| (c.key, c.name.as_str(), c.type_oid, c.type_mod)).collect();
    assert_eq!(cols, vec![(true, "id", 23, -1), (false, "name", 25, -1), (false, "big", 25, -1), (false, "note", 23, -1)]);

    // The changes, exactly; the rolled-back insert is absent.
    let changes: Vec<LogicalMsg> = got
        .iter()
        .map(|(_, m)| m.clone())
        .filter(|m| !matches!(m, LogicalMsg::Relation(_) | LogicalMsg::Begin { .. } | LogicalMsg::Commit { .. }))
        .collect();
    let key = |id: &str| OldTuple::Key(vec![text(id), Datum::Null, Datum::Null, Datum::Null]);
    assert_eq!(
        changes,
        vec![
            LogicalMsg::Insert { rel, new: vec![text("2"), text("two"), text(&big2), Datum::Null] },
            LogicalMsg::Update { rel, old: None, new: vec![text("2"), text("two-b"), Datum::UnchangedToast, Datum::Null] },
            LogicalMsg::Update { rel, old: Some(key("2")), new: vec![text("3"), text("two-b"), Datum::UnchangedToast, Datum::Null] },
            LogicalMsg::Delete { rel, old: key("3") },
            LogicalMsg::Truncate { cascade: false, restart_identity: false, rels: vec![rel] },
        ]
    );

    // Begin and Commit pair up, around each change, in commit order.
    let txns = transactions(&got);
    assert_eq!(txns.len(), 5);
    assert!(txns.iter().all(|t| t.changes == 1), "{txns:#?}");
    let now_us = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_micros() as i64) - 946_684_800_000_000;
    for (i, t) in txns.iter().enumerate() {
        assert_eq!(t.commit_lsn, t.final_lsn, "transaction {i}");
        assert!(t.end_lsn > t.commit_lsn && t.commit_lsn > slot.consistent_point, "transaction {i}: {t:?}");
        assert!((now_us - t.commit_time_us).abs() < 600_000_000, "commit time {} vs now {now_us}", t.commit_time_us);
        if i > 0 {
            assert!(t.commit_lsn > txns[i - 1].end_lsn && t.xid > txns[i - 1].xid);
        }
    }

    // Confirming the end of the second transaction moves the slot there...
    let confirmed = txns[1].end_lsn;
    repl.send_status(confirmed, confirmed, confirmed, false).unwrap();
    let t = Instant::now();
    while db.confirmed_flush("s1") != confirmed {
        assert!(t.elapsed() < Duration::from_secs(10), "confirmed_flush_lsn {} != {confirmed}", db.confirmed_flush("s1"));
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(repl);

    // ...so a new stream from there starts with the third transaction.
    let mut repl = db.start_stream("s1", confirmed);
    let again = transactions(&recv_transactions(&mut repl, 3));
    assert_eq!(again, txns[2..]);
    assert_quiet(&mut repl, Duration::from_millis(500));

    // Asking for an older position than the slot has confirmed starts at the slot.
    let confirmed = txns[2].end_lsn;
    repl.send_status(confirmed, confirmed, confirmed, false).unwrap();
    while db.confirmed_flush("s1") != confirmed {
        assert!(t.elapsed() < Duration::from_secs(20), "confirmed_flush_lsn {} != {confirmed}", db.confirmed_flush("s1"));
        std::thread::sleep(Duration::from_millis(20));
    }
    drop(repl);
    let mut repl = db.start_stream("s1", Lsn(0));
    let again = transactions(&recv_transactions(&mut repl, 2));
    assert_eq!(again, txns[3..]);
    drop(repl);
    db.drop_slot("s1");
}

#[derive(Clone, Debug, PartialEq, Eq)]
struct Txn {
    xid: u32,
    final_lsn: Lsn,
    commit_lsn: Lsn,
    end_lsn: Lsn,
    commit_time_us: i64,
    changes: usize,
}

/// Pairs each Begin with its Commit; a Begin inside a transaction or a change outside
/// one fails the test.
fn transactions(msgs: &[(Lsn, LogicalMsg)]) -> Vec<Txn> {
    let mut out = Vec::new();
    let mut open: Option<Txn> = None;
    for (_, m) in msgs {
        match m {
            LogicalMsg::Begin { final_lsn, commit_time_us, xid } => {
                assert!(open.is_none(), "Begin inside a transaction: {msgs:#?}");
                open = Some(Txn {
                    xid: *xid,
                    final_lsn: *final_lsn,
                    commit_lsn: Lsn(0),
                    end_lsn: Lsn(0),
                    commit_time_us: *commit_time_us,
                    changes: 0,
                });
            }
            LogicalMsg::Commit { commit_lsn, end_lsn, commit_time_us, .. } => {
                let mut t = open.take().expect("Commit without Begin");
                assert_eq!(t.commit_time_us, *commit_time_us);
                t.commit_lsn = *commit_lsn;
                t.end_lsn = *end_lsn;
                out.push(t);
            }
            LogicalMsg::Relation(_) | LogicalMsg::Type { .. } | LogicalMsg::Origin { .. } => {}
            _ => open.as_mut().expect("a change outside a transaction").changes += 1,
        }
    }
    assert!(open.is_none(), "unfinished transaction at the end");
    out
}

/// The next keepalive that asks for a reply, skipping anything else.
fn wait_reply_request(conn: &mut ReplicationConn, within: Duration) -> Lsn {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Some(StreamMsg::Keepalive { wal_end, reply_requested: true }) = conn.recv(Duration::from_millis(100)).unwrap() {
            return wal_end;
        }
    }
    panic!("no keepalive asked for a reply within {within:?}");
}

/// Reads until the stream fails, skipping messages; returns the error.
fn recv_until_error(conn: &mut ReplicationConn, within: Duration, answer: bool) -> WireError {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        match conn.recv(Duration::from_millis(100)) {
            Ok(Some(StreamMsg::Keepalive { wal_end, reply_requested: true })) if answer => {
                conn.send_status(wal_end, wal_end, wal_end, false).unwrap()
            }
            Ok(_) => {}
            Err(e) => return e,
        }
    }
    panic!("the stream did not end within {within:?}");
}

#[test]
fn idle_stream_keepalives_timeouts_and_endings() {
    let mut db = Db::start("idle", &["wal_sender_timeout = '2s'"]);
    let mut client = db.client();
    client.batch_execute("CREATE TABLE k (id int PRIMARY KEY, v text); CREATE PUBLICATION pub FOR ALL TABLES").unwrap();
    let mut repl = db.repl();
    let slot = repl.create_logical_slot("idle").unwrap();
    repl.start_logical("idle", slot.consistent_point, "pub").unwrap();

    // Nothing happens: recv waits its timeout and returns None.
    let t = Instant::now();
    loop {
        match repl.recv(Duration::from_millis(300)).unwrap() {
            None => break,
            Some(StreamMsg::Keepalive { .. }) => assert!(t.elapsed() < Duration::from_secs(30), "never idle"),
            Some(m) => panic!("unexpected {m:?}"),
        }
    }

    // Answered keepalives keep the stream alive past wal_sender_timeout (2 s here).
    let t = Instant::now();
    while t.elapsed() < Duration::from_secs(5) {
        let wal_end = wait_reply_request(&mut repl, Duration::from_secs(3));
        repl.send_status(wal_end, wal_end, wal_end, false).unwrap();
    }
    // A large row arrives whole even when read with timeouts shorter than its transfer.
    let big = noise_text(300_000, 3);
    client.execute("INSERT INTO k VALUES (1, $1)", &[&big]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut msgs = Vec::new();
    while !matches!(msgs.last(), Some(LogicalMsg::Commit { .. })) {
        assert!(Instant::now() < deadline, "{msgs:?}");
        match repl.recv(Duration::from_millis(1)).unwrap() {
            Some(StreamMsg::XLogData { data, .. }) => msgs.push(decode(&data).unwrap()),
            Some(StreamMsg::Keepalive { .. }) | None => {}
        }
    }
    let inserts: Vec<_> = msgs.iter().filter(|m| matches!(m, LogicalMsg::Insert { .. })).collect();
    assert!(matches!(inserts[..], [LogicalMsg::Insert { new, .. }] if new == &vec![text("1"), text(&big)]));

    // Unanswered, the server drops the connection after wal_sender_timeout, silently.
    let t = Instant::now();
    let e = recv_until_error(&mut repl, Duration::from_secs(60), false);
    assert!(matches!(e, WireError::StreamEnded(_)), "{e:?}");
    eprintln!("the server dropped the unanswered stream after {:?}", t.elapsed());
    assert!(repl.recv(Duration::from_millis(1)).is_err() && repl.send_status(Lsn(1), Lsn(1), Lsn(1), false).is_err());
    drop(repl);

    // A terminated walsender: the server's FATAL error, SQLSTATE 57P01.
    let mut repl = db.start_stream("idle", Lsn(0));
    let pid = db.psql("SELECT active_pid FROM pg_replication_slots WHERE slot_name = 'idle'");
    assert_eq!(db.psql(&format!("SELECT pg_terminate_backend({pid})")), "t");
    let e = recv_until_error(&mut repl, Duration::from_secs(60), false);
    assert_eq!(e.code(), Some("57P01"), "{e:?}");
    drop(repl);
    db.drop_slot("idle");

    // A server shutdown waits for the client to confirm what was sent, then ends the
    // stream with CommandComplete (a temporary slot goes away with its session).
    let mut repl = db.repl();
    repl.simple_query("CREATE_REPLICATION_SLOT \"tmp\" TEMPORARY LOGICAL pgoutput").unwrap();
    repl.start_logical("tmp", Lsn(0), "pub").unwrap();
    let server = db.server.as_mut().unwrap();
    let e = std::thread::scope(|s| {
        let stopper = s.spawn(|| server.stop());
        let e = recv_until_error(&mut repl, Duration::from_secs(30), true);
        stopper.join().unwrap().unwrap();
        e
    });
    assert!(matches!(&e, WireError::StreamEnded(m) if m.contains("COPY 0")), "{e:?}");
}
