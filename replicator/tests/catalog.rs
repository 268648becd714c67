//! `SourceSchema::read` against a real postgres: keys, replica identities, unique and
//! generated columns, partitioned tables, and what is left out.

use std::path::PathBuf;

use pgbranch_replicator::catalog::{quote_ident, SourceSchema};
use pgbranch_replicator::pg::{free_port, Owner, PgBin, Server};

/// A throwaway postgres on loopback with a password; stopped by pid and removed on drop
/// (also when a test panics).
struct Db {
    server: Server,
    dir: PathBuf,
}

impl Db {
    fn start(tag: &str) -> Db {
        let bin = PgBin::find(None).expect("postgres binaries");
        let owner = Owner::for_branches().expect("postgres OS user");
        let dir = std::env::temp_dir().join(format!("pgbranch-catalog-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::set_permissions(&dir, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        let data = dir.join("data");
        owner.private_dir(&data).unwrap();
        let pwfile = dir.join("pw");
        std::fs::write(&pwfile, "catalog-secret").unwrap();
        let mut initdb = owner.command(bin.tool("initdb"));
        initdb.arg("-D").arg(&data).args(["-U", "postgres", "--auth-local=trust", "--auth-host=scram-sha-256", "--no-instructions"]);
        initdb.arg(format!("--pwfile={}", pwfile.display()));
        owner.run(&mut initdb, "initdb").unwrap();
        let server = Server::start(&bin, &owner, &data, &dir.join("run"), free_port().unwrap()).unwrap();
        Db { server, dir }
    }

    fn client(&self) -> postgres::Client {
        let url = format!("postgresql://postgres:catalog-secret@127.0.0.1:{}/postgres", self.server.port);
        postgres::Client::connect(&url, postgres::NoTls).unwrap()
    }
}

impl Drop for Db {
    fn drop(&mut self) {
        let _ = self.server.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

const SEED: &str = r#"
CREATE TABLE with_pk (
    id bigserial PRIMARY KEY,
    email text UNIQUE,
    name varchar(40) NOT NULL,
    a int, b int,
    gone int,
    shout text GENERATED ALWAYS AS (upper(name)) STORED,
    UNIQUE (a, b)
);
ALTER TABLE with_pk DROP COLUMN gone;
INSERT INTO with_pk (email, name, a, b) SELECT 'u' || g || '@x.io', 'n' || g, g, g FROM generate_series(1, 500) g;

CREATE TABLE full_ident (id int PRIMARY KEY, y text);
ALTER TABLE full_ident REPLICA IDENTITY FULL;

CREATE TABLE no_key (note text, amount numeric(10,2));

CREATE TABLE nothing (id int PRIMARY KEY);
ALTER TABLE nothing REPLICA IDENTITY NOTHING;

CREATE TABLE by_index (k1 int NOT NULL, k2 text NOT NULL, v text, w text, p text);
CREATE UNIQUE INDEX by_index_k ON by_index (k2, k1) INCLUDE (v);
ALTER TABLE by_index REPLICA IDENTITY USING INDEX by_index_k;
CREATE UNIQUE INDEX by_index_lower_w ON by_index (lower(w));

CREATE TABLE events (id int, at date, payload text, PRIMARY KEY (id, at)) PARTITION BY RANGE (at);
CREATE TABLE events_2024 PARTITION OF events FOR VALUES FROM ('2024-01-01') TO ('2025-01-01');
CREATE TABLE events_2025 PARTITION OF events FOR VALUES FROM ('2025-01-01') TO ('2026-01-01') PARTITION BY RANGE (id);
CREATE TABLE events_2025_low PARTITION OF events_2025 FOR VALUES FROM (0) TO (1000000);
CREATE UNIQUE INDEX ON events_2024 (payload, id, at);
INSERT INTO events SELECT g, date '2024-06-01' + (g % 400), 'p' || g FROM generate_series(1, 1000) g;

CREATE SCHEMA "Odd ""Schema""";
CREATE TABLE "Odd ""Schema"""."T" ("c""1" int);

CREATE UNLOGGED TABLE unlogged_skipped (x int);
ANALYZE;
"#;

#[test]
fn reads_the_replicated_schema() {
    let db = Db::start("read");
    let mut c = db.client();
    c.batch_execute(SEED).unwrap();
    // A temporary table of this very session must not be listed either.
    c.batch_execute("CREATE TEMP TABLE temp_skipped (x int)").unwrap();
    let schema = SourceSchema::read(&mut c).unwrap();

    let names: Vec<String> = schema.tables.iter().map(|t| t.qualified()).collect();
    assert_eq!(
        names,
        ["Odd \"Schema\".T", "public.by_index", "public.events", "public.full_ident", "public.no_key", "public.nothing", "public.with_pk"],
        "ordered by schema and name; no partitions, unlogged, temporary or system tables"
    );

    let t = schema.table("public.with_pk").unwrap();
    let cols: Vec<(&str, &str, bool)> = t.columns.iter().map(|c| (c.name.as_str(), c.type_name.as_str(), c.not_null)).collect();
    assert_eq!(
        cols,
        [
            ("id", "bigint", true),
            ("email", "text", false),
            ("name", "character varying(40)", true),
            ("a", "integer", false),
            ("b", "integer", false)
        ],
        "attnum order, dropped and generated columns left out"
    );
    assert_eq!(t.columns[0].type_oid, 20);
    assert_eq!(t.generated, ["shout"]);
    assert_eq!(t.key, ["id"]);
    assert_eq!(t.replica_identity, 'd');
    assert_eq!(t.unique_columns.iter().map(String::as_str).collect::<Vec<_>>(), ["a", "b", "email", "id"]);
    assert!(t.estimated_rows >= 400 && t.estimated_rows <= 600, "reltuples after ANALYZE: {}", t.estimated_rows);
    assert!(t.bytes > 0);
    assert_eq!(t.quoted(), "\"public\".\"with_pk\"");

    let t = schema.table("public.full_ident").unwrap();
    assert_eq!((t.replica_identity, t.key.clone()), ('f', vec!["id".to_string()]), "FULL keeps the primary key as key");

    let t = schema.table("public.no_key").unwrap();
    assert_eq!((t.replica_identity, t.key.len(), t.unique_columns.len()), ('d', 0, 0));
    assert_eq!(t.columns[1].type_name, "numeric(10,2)");
    assert_eq!(t.estimated_rows, 0);

    let t = schema.table("public.nothing").unwrap();
    assert_eq!((t.replica_identity, t.key.len()), ('n', 0));
    assert!(t.unique_columns.contains("id"));

    let t = schema.table("public.by_index").unwrap();
    assert_eq!(t.replica_identity, 'i');
    assert_eq!(t.key, ["k2", "k1"], "the index's key columns in index order");
    assert_eq!(
        t.unique_columns.iter().map(String::as_str).collect::<Vec<_>>(),
        ["k1", "k2", "w"],
        "INCLUDE columns are not unique; an expression index's columns are"
    );

    let t = schema.table("public.events").unwrap();
    assert_eq!(t.columns.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), ["id", "at", "payload"]);
    assert_eq!(t.key, ["id", "at"]);
    assert_eq!(
        t.unique_columns.iter().map(String::as_str).collect::<Vec<_>>(),
        ["at", "id", "payload"],
        "a unique index on one partition counts for the parent"
    );
    assert!(t.estimated_rows >= 900 && t.estimated_rows <= 1100, "summed over the leaf partitions: {}", t.estimated_rows);
    assert!(t.bytes > 0, "summed over the partitions");

    let t = schema.table("Odd \"Schema\".T").unwrap();
    assert_eq!(t.quoted(), "\"Odd \"\"Schema\"\"\".\"T\"");
    assert_eq!(t.columns[0].name, "c\"1");
    // The quoting is what postgres accepts.
    c.batch_execute(&format!("INSERT INTO {} ({}) VALUES (1)", t.quoted(), quote_ident(&t.columns[0].name))).unwrap();

    let (columns, unique) = schema.validation_inputs();
    assert_eq!(columns["public.with_pk"], ["id", "email", "name", "a", "b"]);
    assert!(unique.contains(&("public.with_pk".to_string(), "email".to_string())));
    assert!(!unique.contains(&("public.with_pk".to_string(), "name".to_string())));
    assert!(unique.contains(&("public.events".to_string(), "payload".to_string())));
    assert_eq!(columns.len(), schema.tables.len());
}

#[test]
fn an_empty_database_has_no_tables() {
    let db = Db::start("empty");
    let schema = SourceSchema::read(&mut db.client()).unwrap();
    assert!(schema.tables.is_empty(), "{:?}", schema.tables);
}
