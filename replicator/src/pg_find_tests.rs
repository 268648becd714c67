//! Tests of the binary lookup on a fake root holding fake installs (a `postgres` that
//! prints a version, the other tools as empty executables).

use super::*;
use std::os::unix::fs::PermissionsExt;
use std::sync::atomic::{AtomicU32, Ordering};

static N: AtomicU32 = AtomicU32::new(0);

struct Root(PathBuf);

impl Root {
    fn new() -> Root {
        let dir = std::env::temp_dir().join(format!("pg-find-test-{}-{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Root(dir)
    }

    fn env(&self) -> Env {
        Env { root: self.0.clone(), pg_config: None, cache: None, home: Some(self.0.join("home")), runner: None }
    }

    /// A fake install of `version` at `rel` (below the root), without the tools in `skip`.
    fn install(&self, rel: &str, version: &str, skip: &[&str]) -> PathBuf {
        let dir = self.0.join(rel.trim_start_matches('/'));
        std::fs::create_dir_all(&dir).unwrap();
        for tool in TOOLS.iter().filter(|t| !skip.contains(t)) {
            let p = dir.join(tool);
            let body = if *tool == "postgres" { format!("#!/bin/sh\necho 'postgres (PostgreSQL) {version}'\n") } else { String::new() };
            std::fs::write(&p, body).unwrap();
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
        dir
    }
}

impl Drop for Root {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn versions_parse_from_postgres_version_output() {
    assert_eq!(parse_version("postgres (PostgreSQL) 17.11\n"), Some((17, "17.11".into())));
    assert_eq!(parse_version("postgres (PostgreSQL) 15.14 (Debian 15.14-0+deb12u1)"), Some((15, "15.14".into())));
    assert_eq!(parse_version("postgres (PostgreSQL) 18beta1"), None);
}

#[test]
fn the_packaged_place_comes_before_the_cache() {
    let root = Root::new();
    let cache = root.install("var/cache/pgbranch/postgresql/17/bin", "17.11", &[]);
    assert_eq!(locate(&root.env(), None, 17, false).unwrap().dir, cache);
    let debian = root.install("usr/lib/postgresql/17/bin", "17.2", &[]);
    let got = locate(&root.env(), None, 17, false).unwrap();
    assert_eq!((got.dir, got.major, got.version.as_str()), (debian, 17, "17.2"));
}

#[test]
fn pgbranch_pg_cache_and_the_home_cache_are_looked_at() {
    let root = Root::new();
    let home = root.install("home/.cache/pgbranch/postgresql/16/bin", "16.15", &[]);
    assert_eq!(locate(&root.env(), None, 16, false).unwrap().dir, home);
    let custom = root.install("elsewhere/16/bin", "16.15", &[]);
    let env = Env { cache: Some(root.0.join("elsewhere")), ..root.env() };
    assert_eq!(locate(&env, None, 16, false).unwrap().dir, custom);
}

#[test]
fn a_miss_names_the_major_every_place_and_the_ways_to_get_it() {
    let root = Root::new();
    root.install("usr/local/pgsql/bin", "16.4", &[]);
    root.install("usr/pgsql-17/bin", "17.1", &["pg_dump"]);
    std::fs::create_dir_all(root.0.join("usr/lib/postgresql/17/bin")).unwrap();
    let err = locate(&root.env(), None, 17, false).unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("the source runs PostgreSQL 17: following it needs PostgreSQL 17 binaries"), "{text}");
    for line in [
        "$PG_CONFIG: not set",
        "usr/lib/postgresql/17/bin (Debian/Ubuntu): no postgres binary",
        "usr/pgsql-17/bin (RHEL/PGDG): PostgreSQL 17.1, but without pg_dump",
        "opt/homebrew/opt/postgresql@17/bin (Homebrew): not there",
        "usr/local/opt/postgresql@17/bin (Homebrew, Intel): not there",
        "usr/local/pgsql/bin (source build): PostgreSQL 16.4",
        "var/cache/pgbranch/postgresql/17/bin (pgbranch cache): not there",
        "home/.cache/pgbranch/postgresql/17/bin (pgbranch cache, per user): not there",
        "scripts/install-postgres 17",
        "apt-get install postgresql-17",
        "--pg-bin DIR",
    ] {
        assert!(text.contains(line), "missing {line:?} in:\n{text}");
    }
    assert_eq!(err.looked.len(), 8);
}

#[test]
fn pg_bin_overrides_and_a_mismatch_there_is_refused() {
    let root = Root::new();
    root.install("usr/lib/postgresql/15/bin", "15.14", &[]);
    let mine = root.install("mine", "16.2", &[]);
    assert_eq!(locate(&root.env(), Some(&mine), 16, false).unwrap().dir, mine);
    let text = locate(&root.env(), Some(&mine), 15, false).unwrap_err().to_string();
    assert!(text.contains("mine (--pg-bin): PostgreSQL 16.2") && text.contains("needs PostgreSQL 15 binaries"), "{text}");
    assert!(!text.contains("(Debian/Ubuntu):"), "--pg-bin is the only place looked at: {text}");
    // A newer --pg-bin does for the masked follower.
    assert_eq!(locate(&root.env(), Some(&mine), 15, true).unwrap().major, 16);
}

#[test]
fn or_newer_prefers_the_source_major_else_the_newest_above_it() {
    let root = Root::new();
    root.install("usr/lib/postgresql/15/bin", "15.14", &[]);
    root.install("var/cache/pgbranch/postgresql/17/bin", "17.11", &[]);
    root.install("var/cache/pgbranch/postgresql/18/bin", "18.6", &["pg_restore"]);
    root.install("usr/pgsql-18/bin", "18.1", &[]);
    // The source's own major when there.
    assert_eq!(locate(&root.env(), None, 15, true).unwrap().major, 15);
    // Else the newest complete one above it, wherever it is.
    let got = locate(&root.env(), None, 16, true).unwrap();
    assert_eq!((got.major, got.dir), (18, root.0.join("usr/pgsql-18/bin")));
    // Nothing older will do.
    let err = locate(&root.env(), None, 19, true).unwrap_err().to_string();
    assert!(err.contains("PostgreSQL 19 binaries here, or a newer major"), "{err}");
    // Exact lookups never take another major.
    assert!(locate(&root.env(), None, 16, false).is_err());
}

#[test]
fn binaries_the_postgres_user_cannot_reach_are_reported_not_used() {
    let root = Root::new();
    let home = root.install("home/.cache/pgbranch/postgresql/17/bin", "17.11", &[]);
    std::fs::set_permissions(root.0.join("home"), std::fs::Permissions::from_mode(0o700)).unwrap();
    // postgres runs as another user (uid and gid nobody owns here).
    let env = Env { runner: Some((54321, 54321)), ..root.env() };
    let text = locate(&env, None, 17, false).unwrap_err().to_string();
    assert!(text.contains("PostgreSQL 17.11, but the postgres OS user cannot reach it"), "{text}");
    assert!(text.contains(&format!("{} is closed to it", std::fs::canonicalize(root.0.join("home")).unwrap().display())), "{text}");
    std::fs::set_permissions(root.0.join("home"), std::fs::Permissions::from_mode(0o755)).unwrap();
    assert_eq!(locate(&env, None, 17, false).unwrap().dir, home);
}
