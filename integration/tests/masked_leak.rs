//! Issue 4, acceptance: a source seeded with 10,000 known PII values in covered columns
//! is streamed by the masked follower (initial copy, then live inserts, updates and
//! deletes); afterwards not one of those values occurs anywhere in the store — every
//! object decompressed, every file's raw bytes (packs, index, catalog, intent logs,
//! daemon.log, the branch servers' logs, the config copy) — while the very same scan,
//! over a second store following the same source with those columns marked `keep`,
//! finds the values that are still live: the scan can see them when they are there.
//!
//! The values are long, random and unmistakable; the large `bio` column is stored
//! uncompressed out of line (`SET STORAGE EXTERNAL`, which main inherits with the
//! schema), so postgres' own compression cannot hide a value from the scan either.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use aho_corasick::AhoCorasick;
use pgbranch_fs::store::{LocalStore, ObjectStore};
use pgbranch_integration::masked::{self, clone_masked, copy_rows, masked_rows, wait_until, write_config};
use pgbranch_integration::*;
use pgbranch_replicator::transform::TransformConfig;

const PII_VALUES: usize = 10_000;
const CUSTOMER_COLS: &[&str] = &["id", "email", "full_name", "phone", "address", "tax_id", "note", "bio"];
const ORDER_COLS: &[&str] = &["id", "customer_email", "shipping_address", "gift_message", "amount"];

const MASKED_CONFIG: &str = r#"transformations:
  table_transformers:
    - schema: public
      table: customers
      column_transformers:
        id: {name: keep}
        email: {name: email}
        full_name: {name: full_name}
        phone: {name: phone}
        address: {name: address}
        tax_id: {name: string}
        note: {name: keep}
        bio:
          name: regex_replace
          parameters:
            pattern: 'bio\.[0-9a-f]+\.[0-9]+@pii-test\.example'
            replacement: '[redacted]'
    - schema: public
      table: orders
      column_transformers:
        id: {name: keep}
        customer_email: {name: email}
        shipping_address: {name: address}
        gift_message: {name: hash, parameters: {length: 32}}
        amount: {name: keep}
"#;

const CONTROL_CONFIG: &str = r#"transformations:
  table_transformers:
    - schema: public
      table: customers
      column_transformers:
        id: {name: keep}
        email: {name: keep}
        full_name: {name: keep}
        phone: {name: keep}
        address: {name: keep}
        tax_id: {name: keep}
        note: {name: keep}
        bio: {name: keep}
    - schema: public
      table: orders
      column_transformers:
        id: {name: keep}
        customer_email: {name: keep}
        shipping_address: {name: keep}
        gift_message: {name: keep}
        amount: {name: keep}
"#;

/// Generates distinct, unmistakable PII values and remembers each one; also the kept,
/// non-PII notes (the positive control inside the masked store).
struct Gen {
    pool: Vec<u8>,
    at: usize,
    seed: u64,
    pii: Vec<String>,
    notes: Vec<String>,
    run: String,
}

impl Gen {
    fn new() -> Gen {
        let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64;
        let seed = t ^ ((std::process::id() as u64) << 32) | 1;
        let mut g = Gen { pool: Vec::new(), at: 0, seed, pii: Vec::new(), notes: Vec::new(), run: String::new() };
        g.run = g.hex(4);
        g
    }
    fn byte(&mut self) -> u8 {
        if self.at == self.pool.len() {
            self.seed = self.seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407) | 1;
            self.pool = noise(1 << 16, self.seed);
            self.at = 0;
        }
        self.at += 1;
        self.pool[self.at - 1]
    }
    fn hex(&mut self, bytes: usize) -> String {
        (0..bytes).map(|_| format!("{:02x}", self.byte())).collect()
    }
    fn digits(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b'0' + self.byte() % 10)).collect()
    }
    fn letters(&mut self, n: usize) -> String {
        (0..n).map(|_| char::from(b'a' + self.byte() % 26)).collect()
    }
    fn keep(&mut self, s: String) -> String {
        self.pii.push(s.clone());
        s
    }
    fn email(&mut self) -> String {
        let (n, h) = (self.pii.len(), self.hex(3));
        self.keep(format!("leak.{h}.{n}@pii-test.example"))
    }
    fn full_name(&mut self) -> String {
        let (a, b) = (self.letters(7), self.letters(7));
        self.keep(format!("Zq{a} Xv{b}"))
    }
    fn phone(&mut self) -> String {
        let (n, a, b) = (self.pii.len(), self.digits(4), self.digits(4));
        self.keep(format!("+1-555-{a}-{b}-{n:05}"))
    }
    fn address(&mut self) -> String {
        let (n, h) = (self.pii.len(), self.hex(3));
        self.keep(format!("{n} Leakwood {h} Lane, Piiville"))
    }
    fn tax_id(&mut self) -> String {
        let (n, h) = (self.pii.len(), self.hex(4).to_uppercase());
        self.keep(format!("TAX-{h}-{n:05}"))
    }
    fn gift(&mut self) -> String {
        let (n, w) = (self.pii.len(), self.letters(8));
        self.keep(format!("gift for {w} no. {n}"))
    }
    fn note(&mut self, id: i32) -> String {
        let h = self.hex(3);
        let s = format!("note-keep-{}-{id}-{h}", self.run);
        self.notes.push(s.clone());
        s
    }
    /// ~200 KB of incompressible hex with 4 PII values (emails) in it.
    fn bio(&mut self) -> String {
        let hex: String = noise(100_000, self.seed ^ self.pii.len() as u64 | 1).iter().map(|b| format!("{b:02x}")).collect();
        let mut out = String::new();
        for i in 0..5 {
            out.push_str(&hex[i * 40_000..(i + 1) * 40_000]);
            if i < 4 {
                let (n, h) = (self.pii.len(), self.hex(3));
                let v = self.keep(format!("bio.{h}.{n}@pii-test.example"));
                out.push_str(&format!(" {v} "));
            }
        }
        out
    }
}

fn insert_customers(
    tx: &mut postgres::Transaction,
    g: &mut Gen,
    ids: std::ops::RangeInclusive<i32>,
    with_bio: &[i32],
    emails: &mut HashMap<i32, String>,
) {
    let st = tx
        .prepare("INSERT INTO customers (id, email, full_name, phone, address, tax_id, note, bio) VALUES ($1,$2,$3,$4,$5,$6,$7,$8)")
        .unwrap();
    for id in ids {
        let (email, name, phone, addr, tax, note) = (g.email(), g.full_name(), g.phone(), g.address(), g.tax_id(), g.note(id));
        let bio = with_bio.contains(&id).then(|| g.bio());
        tx.execute(&st, &[&id, &email, &name, &phone, &addr, &tax, &note, &bio]).unwrap();
        emails.insert(id, email);
    }
}

fn insert_orders(tx: &mut postgres::Transaction, g: &mut Gen, ids: std::ops::RangeInclusive<i32>, emails: &HashMap<i32, String>) {
    let st = tx
        .prepare("INSERT INTO orders (id, customer_email, shipping_address, gift_message, amount) VALUES ($1,$2,$3,$4,$5::int * 0.01)")
        .unwrap();
    for id in ids {
        let (addr, gift) = (g.address(), g.gift());
        tx.execute(&st, &[&id, &emails[&id], &addr, &gift, &(id * 137 % 100_000)]).unwrap();
    }
}

/// What one scan saw: per pattern, how often and where first.
#[derive(Default)]
struct Scan {
    counts: HashMap<usize, u64>,
    first: HashMap<usize, String>,
    /// Patterns seen in raw file bytes (as opposed to decompressed objects).
    in_files: HashSet<usize>,
    objects: u64,
    files: u64,
    bytes: u64,
}

impl Scan {
    fn feed(&mut self, ac: &AhoCorasick, data: &[u8], place: &dyn Fn(usize) -> String) {
        self.bytes += data.len() as u64;
        for m in ac.find_iter(data) {
            let p = m.pattern().as_usize();
            *self.counts.entry(p).or_default() += 1;
            self.first.entry(p).or_insert_with(|| place(m.start()));
        }
    }
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        let md = std::fs::symlink_metadata(&p).unwrap();
        if md.is_dir() {
            walk(&p, out);
        } else if md.is_file() {
            out.push(p);
        }
    }
}

/// Scans a stopped store: the raw bytes of every regular file under it (and under the
/// branch servers' run directory when that lies elsewhere), then every stored object,
/// decompressed.
fn scan_store(store: &TestStore, ac: &AhoCorasick) -> Scan {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap();
    let prefix = store.dir.to_string_lossy().to_string();
    assert!(!mounts.lines().any(|l| l.split(' ').nth(1).is_some_and(|m| m.starts_with(&prefix))), "a mount is left under {prefix}");
    let mut files = Vec::new();
    walk(&store.dir, &mut files);
    let run = pgbranch::layout::Layout { root: store.dir.clone() }.run_dir();
    if !run.starts_with(&store.dir) {
        walk(&run, &mut files);
    }
    assert!(files.iter().any(|f| f.ends_with("daemon.log")), "daemon.log is scanned");
    assert!(files.iter().any(|f| f.ends_with("postgres.log")), "main's server log is scanned: {files:?}");
    assert!(files.iter().any(|f| f.starts_with(store.dir.join("data/logs"))), "intent logs are scanned: {files:?}");
    let mut scan = Scan::default();
    for f in &files {
        let data = std::fs::read(f).unwrap_or_else(|e| panic!("reading {}: {e}", f.display()));
        scan.feed(ac, &data, &|off| format!("file {} at byte {off}", f.display()));
        scan.files += 1;
        scan.in_files.extend(ac.find_iter(&data).map(|m| m.pattern().as_usize()));
    }
    let objects = LocalStore::open(&store.dir.join("data")).expect("opening the stopped store");
    for h in objects.all_objects().unwrap() {
        let data = objects.get(&h).unwrap_or_else(|e| panic!("object {h}: {e}"));
        scan.feed(ac, &data, &|off| format!("object {h} at byte {off}"));
        scan.objects += 1;
    }
    scan
}

/// `pgbranch stop`, then waits for the daemon to be gone (it commits and unmounts first).
fn stop(store: &TestStore) {
    let pid = store.daemon_pid().expect("the daemon runs");
    store.ok(&["stop"]);
    assert!(wait_gone(pid, Duration::from_secs(60)), "the daemon did not exit after stop");
}

/// Polls main until `select` there returns `expected`.
fn wait_for(url: &str, select: &str, expected: &[String], what: &str) {
    let mut main = postgres::Client::connect(url, postgres::NoTls).expect("connecting to main");
    let mut last = Vec::new();
    let ok = wait_until(Duration::from_secs(90), || {
        last = copy_rows(&mut main, select);
        last == expected
    });
    if !ok {
        let diff = expected.iter().zip(&last).position(|(a, b)| a != b);
        panic!("{what}: main did not catch up: {} rows vs {} expected; first difference at row {diff:?}", last.len(), expected.len());
    }
}

#[test]
fn no_pii_value_reaches_the_store_or_its_logs() {
    let started = Instant::now();
    let source = masked::logical_source("leak");
    let masked_store = TestStore::new("leak-masked");
    let control_store = TestStore::new("leak-control");
    let cfg_dir = source.dir.join("configs");
    let masked_cfg = write_config(&cfg_dir, "masked.yaml", MASKED_CONFIG);
    let control_cfg = write_config(&cfg_dir, "control.yaml", CONTROL_CONFIG);

    let mut src = source.client();
    src.batch_execute(
        "CREATE TABLE customers (id int PRIMARY KEY, email text NOT NULL UNIQUE, full_name text, phone text, address text, \
                                 tax_id text, note text, bio text);
         ALTER TABLE customers ALTER COLUMN bio SET STORAGE EXTERNAL;
         CREATE TABLE orders (id int PRIMARY KEY, customer_email text, shipping_address text, gift_message text, amount numeric(10,2));",
    )
    .unwrap();

    // Phase 1, before the clone: 700 customers (5 values each), 5 bios (4 each), 700 orders (2 each).
    let mut g = Gen::new();
    let mut emails = HashMap::new();
    let mut tx = src.transaction().unwrap();
    insert_customers(&mut tx, &mut g, 1..=700, &[1, 2, 3, 4, 5], &mut emails);
    insert_orders(&mut tx, &mut g, 1..=700, &emails);
    tx.commit().unwrap();
    let phase1 = g.pii.len();
    assert_eq!(phase1, 700 * 5 + 5 * 4 + 700 * 2);

    let masked_url = clone_masked(&masked_store, &source, &masked_cfg, &["--slot", "masked", "--publication", "masked"]);
    let control_url = clone_masked(&control_store, &source, &control_cfg, &["--slot", "control", "--publication", "control"]);
    eprintln!("phase 1: {phase1} values loaded, both clones made ({:.1}s)", started.elapsed().as_secs_f64());

    // Phase 2, live: inserts, updates that set new values, deletes.
    let mut tx = src.transaction().unwrap();
    insert_customers(&mut tx, &mut g, 701..=1300, &[701, 702, 703], &mut emails);
    tx.commit().unwrap();
    let mut tx = src.transaction().unwrap();
    insert_orders(&mut tx, &mut g, 701..=1200, &emails);
    let st = tx.prepare("UPDATE customers SET email = $2, phone = $3 WHERE id = $1").unwrap();
    for id in 101..=400 {
        let (e, p) = (g.email(), g.phone());
        tx.execute(&st, &[&id, &e, &p]).unwrap();
    }
    tx.commit().unwrap();
    let mut tx = src.transaction().unwrap();
    let st = tx.prepare("UPDATE orders SET shipping_address = $2, gift_message = $3 WHERE id = $1").unwrap();
    for id in 1..=230 {
        let (a, m) = (g.address(), g.gift());
        tx.execute(&st, &[&id, &a, &m]).unwrap();
    }
    for id in [1i32, 2] {
        let bio = g.bio();
        tx.execute("UPDATE customers SET bio = $2 WHERE id = $1", &[&id, &bio]).unwrap();
    }
    // bio unchanged: the stream carries it as an unchanged TOAST value.
    tx.execute("UPDATE customers SET note = 'note-updated' WHERE id = 3", &[]).unwrap();
    tx.commit().unwrap();
    src.batch_execute("DELETE FROM customers WHERE id BETWEEN 651 AND 700 OR id = 4; DELETE FROM orders WHERE id BETWEEN 651 AND 700;")
        .unwrap();
    assert_eq!(g.pii.len(), PII_VALUES, "the test seeds exactly {PII_VALUES} PII values");
    assert_eq!(g.pii.iter().collect::<HashSet<_>>().len(), PII_VALUES, "the PII values are distinct");
    assert!(g.pii.iter().all(|v| v.len() >= 12));

    // Both followers catch up: main holds exactly the source's rows through each config.
    let cust_sql = format!("SELECT {} FROM customers ORDER BY id", CUSTOMER_COLS.join(", "));
    let order_sql = format!("SELECT {} FROM orders ORDER BY id", ORDER_COLS.join(", "));
    let config = TransformConfig::parse("masked.yaml", MASKED_CONFIG).unwrap();
    let key = masked::mask_key(&masked_store);
    let want_c = masked_rows(&mut src, &cust_sql, &config, "public.customers", CUSTOMER_COLS, &key);
    let want_o = masked_rows(&mut src, &order_sql, &config, "public.orders", ORDER_COLS, &key);
    assert_eq!(want_c.len(), 1300 - 51);
    wait_for(&masked_url, &cust_sql, &want_c, "masked customers");
    wait_for(&masked_url, &order_sql, &want_o, "masked orders");
    wait_for(&control_url, &cust_sql, &copy_rows(&mut src, &cust_sql), "control customers");
    wait_for(&control_url, &order_sql, &copy_rows(&mut src, &order_sql), "control orders");
    eprintln!("phase 2: {} values in all, both mains caught up ({:.1}s)", g.pii.len(), started.elapsed().as_secs_f64());

    // A sample, checked by shape against the source.
    let mut main = postgres::Client::connect(&masked_url, postgres::NoTls).unwrap();
    let q = "SELECT email, full_name, phone, address, tax_id, note, bio FROM customers WHERE id = 1";
    let (s, m) = (src.query_one(q, &[]).unwrap(), main.query_one(q, &[]).unwrap());
    let col = |r: &postgres::Row, i: usize| r.get::<_, String>(i);
    let email = col(&m, 0);
    let (local, domain) = email.split_once('@').unwrap();
    assert!(local.len() == 20 && ["example.com", "example.net", "example.org"].contains(&domain), "email masked fully: {email}");
    assert!(!col(&m, 1).starts_with("Zq") && col(&m, 1).contains(' '), "full name from the word lists: {}", col(&m, 1));
    let (sp, mp) = (col(&s, 2), col(&m, 2));
    assert!(
        sp != mp && sp.len() == mp.len() && sp.chars().zip(mp.chars()).all(|(a, b)| a.is_ascii_digit() == b.is_ascii_digit()),
        "phone digits masked, format kept: {sp} -> {mp}"
    );
    assert!(!col(&m, 3).contains("Leakwood"), "address masked: {}", col(&m, 3));
    assert!(col(&m, 4).len() == col(&s, 4).len() && col(&m, 4).chars().all(|c| c.is_ascii_alphanumeric()), "tax id masked by string");
    assert_eq!(col(&m, 5), col(&s, 5), "note kept");
    let (sb, mb) = (col(&s, 6), col(&m, 6));
    assert_eq!(mb.matches("[redacted]").count(), 4, "the 4 values in bio redacted");
    assert_eq!(&mb[..40_000], &sb[..40_000], "bio's other text kept");
    let join = "SELECT count(*) FROM orders o JOIN customers c ON c.email = o.customer_email";
    let (sj, mj): (i64, i64) = (src.query_one(join, &[]).unwrap().get(0), main.query_one(join, &[]).unwrap().get(0));
    assert!(sj > 0 && sj == mj, "masking is deterministic across tables: joins on email match ({sj} on the source, {mj} on main)");
    drop(main);

    // Which values are live at the end (a scan of the source's current rows).
    let mut patterns: Vec<&str> = g.pii.iter().map(String::as_str).collect();
    patterns.extend(g.notes.iter().map(String::as_str));
    let ac = AhoCorasick::new(&patterns).unwrap();
    let mut live = HashSet::new();
    for line in copy_rows(&mut src, &cust_sql).into_iter().chain(copy_rows(&mut src, &order_sql)) {
        live.extend(ac.find_iter(&line).map(|m| m.pattern().as_usize()));
    }
    let live_pii: HashSet<usize> = live.iter().copied().filter(|&p| p < PII_VALUES).collect();
    let live_notes: HashSet<usize> = live.iter().copied().filter(|&p| p >= PII_VALUES).collect();
    drop(src);

    stop(&masked_store);
    stop(&control_store);
    let t = Instant::now();
    let masked = scan_store(&masked_store, &ac);
    let control = scan_store(&control_store, &ac);
    eprintln!(
        "scanned {} files + {} objects ({:.1} MiB) and {} files + {} objects ({:.1} MiB) in {:.1}s",
        masked.files,
        masked.objects,
        masked.bytes as f64 / 1048576.0,
        control.files,
        control.objects,
        control.bytes as f64 / 1048576.0,
        t.elapsed().as_secs_f64()
    );

    // The masked store: not one PII value, anywhere.
    let mut leaks: Vec<(usize, &String)> = masked.first.iter().filter(|(p, _)| **p < PII_VALUES).map(|(p, w)| (*p, w)).collect();
    leaks.sort();
    let report: Vec<String> =
        leaks.iter().take(20).map(|(p, w)| format!("  {:?} ({} times) in {w}", patterns[*p], masked.counts[p])).collect();
    assert!(leaks.is_empty(), "{} of {PII_VALUES} PII values found in the masked store:\n{}", leaks.len(), report.join("\n"));
    // ...while its kept, non-PII notes are there: the scan sees the masked store's data.
    let notes_seen = live_notes.iter().filter(|p| masked.counts.contains_key(p)).count();
    assert!(
        notes_seen * 10 >= live_notes.len() * 9 && notes_seen > 0,
        "the masked store's kept notes: {notes_seen} of {} found",
        live_notes.len()
    );

    // The control store (columns kept): the same scan finds the live values.
    let found = live_pii.iter().filter(|p| control.counts.contains_key(p)).count();
    let found_any = (0..PII_VALUES).filter(|p| control.counts.contains_key(p)).count();
    let in_files = (0..PII_VALUES).filter(|p| control.in_files.contains(p)).count();
    eprintln!(
        "control: {found} of {} live PII values found ({found_any} of all {PII_VALUES} incl. deleted/overwritten; {in_files} in raw file bytes); \
         masked: 0 of {PII_VALUES}, {notes_seen} of {} notes",
        live_pii.len(),
        live_notes.len()
    );
    assert!(live_pii.len() > 8000, "most values are live at the end: {}", live_pii.len());
    assert!(found > 0 && found * 10 >= live_pii.len() * 9, "the scan finds the unmasked values: {found} of {} live", live_pii.len());
    eprintln!("total {:.1}s", started.elapsed().as_secs_f64());
    drop(control_store);
    drop(masked_store);
    drop(source);
}
