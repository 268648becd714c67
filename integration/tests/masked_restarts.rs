//! Issue 4, masked follower exactly-once: kill -9 the daemon, and restart the source,
//! while a writer commits many small transactions: no change is lost or doubled. The
//! source is the truth at the end (a transaction whose commit was not acknowledged may
//! or may not have happened); main must equal it masked, row for row, with no duplicate
//! in an append-only table without unique constraints (REPLICA IDENTITY FULL), and
//! every acknowledged transaction present.
//!
//! A second test checks the invariant behind exactly-once directly: the follower never
//! confirms to the source's slot a transaction that main has not committed (after such
//! a confirmation a crash loses the transaction for good).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use pgbranch_integration::masked::*;
use pgbranch_integration::*;
use pgbranch_replicator::transform::TransformConfig;

const CONFIG: &str = "
transformations:
  table_transformers:
    - table: events
      column_transformers:
        id: {name: keep}
        payload: {name: keep}
        email: {name: email}
    - table: counters
      column_transformers:
        id: {name: keep}
        n: {name: keep}
    - table: ledger
      column_transformers:
        seq: {name: keep}
        note: {name: hash, parameters: {length: 16}}
";

/// What the writer did.
struct Written {
    /// Transactions whose COMMIT returned success.
    acked: Vec<i64>,
    attempted: i64,
    failed: i64,
}

/// The writer thread; stopped (and joined) on drop, so a failing test does not leave
/// it reconnecting forever.
struct Writer {
    stop: Arc<AtomicBool>,
    /// The last acknowledged transaction.
    last_acked: Arc<AtomicI64>,
    thread: Option<JoinHandle<Written>>,
}

impl Writer {
    fn start(url: String) -> Writer {
        let stop = Arc::new(AtomicBool::new(false));
        let last_acked = Arc::new(AtomicI64::new(0));
        let (s, l) = (stop.clone(), last_acked.clone());
        let thread = std::thread::spawn(move || write_loop(&url, &s, &l));
        Writer { stop, last_acked, thread: Some(thread) }
    }

    fn finish(mut self) -> Written {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().expect("the writer thread panicked")
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// One small transaction `i`: two events (ids 2i, 2i+1), the counter, a ledger line;
/// now and then an update and a delete of older events.
fn one_txn(c: &mut postgres::Client, i: i64) -> Result<(), postgres::Error> {
    let mut tx = c.transaction()?;
    tx.execute(
        "INSERT INTO events VALUES ($1, $2, $3), ($4, $5, $6)",
        &[
            &(2 * i),
            &format!("payload {i} it's \\ \t"),
            &format!("w{i}@writer.example"),
            &(2 * i + 1),
            &"second",
            &format!("x{i}@writer.example"),
        ],
    )?;
    tx.execute("UPDATE counters SET n = n + 1 WHERE id = 1", &[])?;
    tx.execute("INSERT INTO ledger VALUES ($1, $2)", &[&i, &format!("note {i}")])?;
    if i % 10 == 0 {
        tx.execute("UPDATE events SET payload = payload || '+' WHERE id = $1", &[&(i - 5)])?;
    }
    if i % 25 == 0 {
        tx.execute("DELETE FROM events WHERE id = $1", &[&(2 * (i - 20) + 1)])?;
    }
    tx.commit()
}

fn write_loop(url: &str, stop: &AtomicBool, last_acked: &AtomicI64) -> Written {
    let mut w = Written { acked: Vec::new(), attempted: 0, failed: 0 };
    let mut client: Option<postgres::Client> = None;
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = client.as_mut() else {
            client = postgres::Client::connect(url, postgres::NoTls).ok();
            if client.is_none() {
                std::thread::sleep(Duration::from_millis(100));
            }
            continue;
        };
        // A fresh number for every attempt: a failed one may still have committed.
        i += 1;
        w.attempted += 1;
        match one_txn(c, i) {
            Ok(()) => {
                w.acked.push(i);
                last_acked.store(i, Ordering::Relaxed);
            }
            Err(_) => {
                w.failed += 1;
                client = None;
            }
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    w
}

fn count(url: &str, sql: &str) -> Option<i64> {
    let mut c = postgres::Client::connect(url, postgres::NoTls).ok()?;
    c.query_one(sql, &[]).ok()?.try_get::<_, Option<i64>>(0).ok()?
}

/// Waits until main holds a transaction acknowledged after now: the stream resumed.
fn wait_resumed(store: &TestStore, main_url: &str, writer: &Writer, what: &str) {
    let t = Instant::now();
    let after = writer.last_acked.load(Ordering::Relaxed) + 1;
    // The writer may itself still be reconnecting to a restarted source.
    let resumed = wait_until(Duration::from_secs(60), || {
        count(main_url, &format!("SELECT count(*) FROM ledger WHERE seq >= {after}")).unwrap_or(0) > 0
            && writer.last_acked.load(Ordering::Relaxed) >= after
    });
    assert!(resumed, "{what}: main got nothing newer than transaction {after} within 60 s: {}", follower_status(store));
    println!("{what}: the stream resumed in {:.1}s", t.elapsed().as_secs_f64());
}

/// Stops the source's postgres and starts it again on the same data, socket and port.
/// The new server replaces the old one inside `source`, whose drop stops it by pid.
fn restart_source(source: &mut SourceDb, down: Duration) {
    source.server.stop().unwrap();
    std::thread::sleep(down);
    let s = &source.server;
    let (bin, owner, data, socket, port) = (s.bin.clone(), s.owner.clone(), s.data.clone(), s.socket_dir.clone(), s.port);
    source.server = Server::start(&bin, &owner, &data, &socket, port).expect("restarting the source");
}

#[test]
fn no_change_lost_or_doubled_across_daemon_kills_and_source_restarts() {
    let started = Instant::now();
    let mut source = logical_source("mrestart");
    let store = TestStore::new("mrestart");
    let mut src = source.client();
    src.batch_execute(
        "CREATE TABLE events (id bigint PRIMARY KEY, payload text, email text);
         CREATE TABLE counters (id int PRIMARY KEY, n bigint);
         CREATE TABLE ledger (seq bigint, note text);
         ALTER TABLE ledger REPLICA IDENTITY FULL;
         INSERT INTO counters VALUES (1, 0), (2, 42);
         INSERT INTO events SELECT -g, 'before', 'pre' || g || '@x.example' FROM generate_series(1, 100) g;
         INSERT INTO ledger SELECT -g, 'before' FROM generate_series(1, 100) g",
    )
    .unwrap();
    drop(src);
    let config_path = write_config(&store.dir.join("cfg"), "transform.yaml", CONFIG);
    let config = TransformConfig::parse("transform.yaml", CONFIG).unwrap();
    let main_url = clone_masked(&store, &source, &config_path, &[]);
    let key = mask_key(&store);

    let writer = Writer::start(source.url());
    std::thread::sleep(Duration::from_secs(3));
    for round in 0..2 {
        store.kill_daemon();
        std::thread::sleep(Duration::from_secs(1)); // the source keeps committing meanwhile
        store.ok(&["status"]); // a new daemon; it must resume the stream by itself
        wait_resumed(&store, &main_url, &writer, &format!("round {round}: daemon killed"));
        std::thread::sleep(Duration::from_secs(2));

        restart_source(&mut source, Duration::from_millis(500));
        wait_resumed(&store, &main_url, &writer, &format!("round {round}: source restarted"));
        std::thread::sleep(Duration::from_secs(2));
    }
    // Both at once: the daemon dies while the source is down.
    source.server.stop().unwrap();
    store.kill_daemon();
    store.ok(&["status"]);
    std::thread::sleep(Duration::from_secs(1));
    restart_source(&mut source, Duration::ZERO);
    wait_resumed(&store, &main_url, &writer, "daemon killed while the source was down");
    std::thread::sleep(Duration::from_secs(2));
    let written = writer.finish();
    println!(
        "writer: {} transactions attempted, {} acknowledged, {} failed ({:.1}s)",
        written.attempted,
        written.acked.len(),
        written.failed,
        started.elapsed().as_secs_f64()
    );
    assert!(written.acked.len() > 1000, "the writer made progress");

    // Main catches up with the (now quiet) source.
    let mut src = source.client();
    let probe =
        "SELECT ((SELECT count(*) FROM events) * 1000003 + (SELECT coalesce(sum(seq), 0) FROM ledger) * 7 + (SELECT count(*) FROM ledger) \
                 + (SELECT n FROM counters WHERE id = 1) * 13)::bigint";
    let want: i64 = src.query_one(probe, &[]).unwrap().get(0);
    let t = Instant::now();
    let caught_up = wait_until(Duration::from_secs(60), || count(&main_url, probe) == Some(want));
    println!("main caught up {:.1}s after the writer stopped (caught up: {caught_up})", t.elapsed().as_secs_f64());
    let mut main = postgres::Client::connect(&main_url, postgres::NoTls).expect("connecting to main");

    // No ledger line doubled, none lost.
    let doubled = copy_rows(&mut main, "SELECT seq, count(*) FROM ledger GROUP BY seq HAVING count(*) > 1 ORDER BY seq");
    assert!(doubled.is_empty(), "ledger lines applied more than once on main (seq, count): {:?}", &doubled[..doubled.len().min(20)]);
    let ledger = "SELECT seq, note FROM ledger ORDER BY seq";
    let (want_ledger, got_ledger) =
        (masked_rows(&mut src, ledger, &config, "public.ledger", &["seq", "note"], &key), copy_rows(&mut main, ledger));
    if want_ledger != got_ledger {
        let missing: Vec<&String> = want_ledger.iter().filter(|l| !got_ledger.contains(l)).take(10).collect();
        panic!("ledger: {} lines on the source, {} on main; missing on main (first 10): {missing:?}", want_ledger.len(), got_ledger.len());
    }
    // Events, masked, row for row.
    let events = "SELECT id, payload, email FROM events ORDER BY id";
    let (want_events, got_events) =
        (masked_rows(&mut src, events, &config, "public.events", &["id", "payload", "email"], &key), copy_rows(&mut main, events));
    if want_events != got_events {
        let i = want_events.iter().zip(&got_events).position(|(a, b)| a != b).unwrap_or(want_events.len().min(got_events.len()));
        panic!(
            "events: {} rows on the source, {} on main; first difference at row {i}: expected {:?}, on main {:?}",
            want_events.len(),
            got_events.len(),
            want_events.get(i),
            got_events.get(i)
        );
    }
    let counters = "SELECT id, n FROM counters ORDER BY id";
    assert_eq!(copy_rows(&mut main, counters), copy_rows(&mut src, counters), "counters");
    assert!(caught_up, "the probe agrees only after the checks above; {}", follower_status(&store));

    // Every acknowledged transaction is on the source and on main.
    let on_main: std::collections::BTreeSet<i64> =
        main.query("SELECT seq FROM ledger WHERE seq > 0", &[]).unwrap().iter().map(|r| r.get(0)).collect();
    let lost: Vec<&i64> = written.acked.iter().filter(|i| !on_main.contains(i)).take(10).collect();
    assert!(lost.is_empty(), "acknowledged transactions missing on main: {lost:?}");
    let even_events: i64 = main.query_one("SELECT count(*) FROM events WHERE id > 0 AND id % 2 = 0", &[]).unwrap().get(0);
    assert!(even_events >= written.acked.len() as i64, "every acknowledged transaction's first event is on main");
    let unacked_committed = on_main.len() - written.acked.len();
    println!("{unacked_committed} unacknowledged transactions had committed on the source (and are on main)");

    let status = follower_status(&store);
    assert_eq!(status["state"], "streaming", "{status}");
    assert!(status.get("stream_error").is_none(), "{status}");
    assert_eq!(source.slots(), "pgbranch", "the follower kept its slot");
    println!("total {:.1}s", started.elapsed().as_secs_f64());
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap();
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// Transactions whose SQL exceeds the follower's 4 MiB send chunk but which hold few
/// rows, on a source whose walsender pings often (wal_sender_timeout = 2s): after
/// each commit on the source, whenever the slot's confirmed position (read first)
/// covers the commit while main (read after) lacks its rows, the follower confirmed
/// what main has not committed. A kill -9 then loses the transaction for good, which
/// the test shows before failing.
#[test]
fn confirmation_never_runs_ahead_of_main() {
    let source = SourceDb::start(
        "mconfirm",
        &["wal_level = logical", "max_wal_senders = 10", "max_replication_slots = 10", "wal_sender_timeout = 2s"],
    );
    let store = TestStore::new("mconfirm");
    let config_text = "transformations:\n  table_transformers:\n    - table: blobs\n      column_transformers:\n        id: {name: keep}\n        body: {name: keep}\n";
    let mut src = source.client();
    src.batch_execute("CREATE TABLE blobs (id int PRIMARY KEY, body text)").unwrap();
    let config_path = write_config(&store.dir.join("cfg"), "transform.yaml", config_text);
    let main_url = clone_masked(&store, &source, &config_path, &[]);
    let mut main = postgres::Client::connect(&main_url, postgres::NoTls).unwrap();
    let mut monitor = source.client();
    let slot_confirmed = |m: &mut postgres::Client| -> u64 {
        let text: String =
            m.query_one("SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = 'pgbranch'", &[]).unwrap().get(0);
        lsn(&text)
    };
    for round in 0..20i32 {
        std::thread::sleep(Duration::from_millis(150 + (97 * round as u64) % 1000));
        // Five rows of 900 KB: the last one fills the chunk, which is sent before COMMIT.
        let body: String = noise(450_000, round as u64 + 1).iter().map(|b| format!("{b:02x}")).collect();
        let mut tx = src.transaction().unwrap();
        for i in 0..5 {
            tx.execute("INSERT INTO blobs VALUES ($1, $2)", &[&(round * 100 + i), &body]).unwrap();
        }
        tx.commit().unwrap();
        let committed: String = monitor.query_one("SELECT pg_current_wal_lsn()::text", &[]).unwrap().get(0);
        let committed = lsn(&committed);
        let rows_q = format!("SELECT count(*) FROM blobs WHERE id BETWEEN {} AND {}", round * 100, round * 100 + 99);
        let t = Instant::now();
        loop {
            assert!(t.elapsed() < Duration::from_secs(30), "round {round}: main did not get the rows in 30 s: {}", follower_status(&store));
            let confirmed = slot_confirmed(&mut monitor);
            let on_main: i64 = main.query_one(&rows_q, &[]).unwrap().get(0);
            if on_main == 5 {
                break;
            }
            if confirmed >= committed {
                // Show the consequence: a crash now, and the transaction never arrives.
                store.kill_daemon();
                store.ok(&["status"]);
                src.execute("INSERT INTO blobs VALUES (-1, 'marker')", &[]).unwrap();
                let marker =
                    wait_until(Duration::from_secs(60), || count(&main_url, "SELECT count(*) FROM blobs WHERE id = -1") == Some(1));
                panic!(
                    "round {round}: the slot was confirmed at {confirmed:X}, past the transaction committed by {committed:X}, while main held \
                     {on_main} of its 5 rows; after kill -9 and a restart (marker applied: {marker}) main holds {:?} of them",
                    count(&main_url, &rows_q)
                );
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}
