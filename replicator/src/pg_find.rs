//! Finding PostgreSQL binaries of a given major version (see [`crate::pg::PgBin::for_major`]):
//! `--pg-bin`, else `$PG_CONFIG --bindir`, the packaged locations of Debian/Ubuntu,
//! RHEL (PGDG) and Homebrew, a source build's /usr/local/pgsql, then pgbranch's own
//! cache (what `scripts/install-postgres` fills). A miss is a [`NotFound`] that names
//! the major needed, every place looked with what was there, and how to get them.

use std::ffi::OsString;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The programs pgbranch runs from a binary directory; a directory lacking one of
/// them is reported, not used.
pub const TOOLS: &[&str] =
    &["postgres", "pg_ctl", "initdb", "psql", "pg_basebackup", "pg_dump", "pg_dumpall", "pg_restore", "pg_controldata"];

/// Where `scripts/install-postgres` puts major N (as N/bin) unless `$PGBRANCH_PG_CACHE` says otherwise.
pub const DEFAULT_CACHE: &str = "/var/cache/pgbranch/postgresql";

/// What the lookup depends on besides the file system: the environment, and a root
/// that every fixed path hangs from (`/`, or a test's directory).
#[derive(Clone, Debug)]
pub struct Env {
    pub root: PathBuf,
    pub pg_config: Option<OsString>,
    pub cache: Option<PathBuf>,
    pub home: Option<PathBuf>,
    /// The uid and gid postgres runs as when that is another user than ours (root runs
    /// it as `postgres`): binaries that user cannot reach are reported, not used.
    pub runner: Option<(u32, u32)>,
}

impl Env {
    /// This process's environment, on the real root.
    pub fn current() -> Env {
        Env {
            root: PathBuf::from("/"),
            pg_config: std::env::var_os("PG_CONFIG").filter(|v| !v.is_empty()),
            cache: std::env::var_os("PGBRANCH_PG_CACHE").filter(|v| !v.is_empty()).map(PathBuf::from),
            home: std::env::var_os("HOME").filter(|v| !v.is_empty()).map(PathBuf::from),
            runner: postgres_user_if_root(),
        }
    }

    /// [`probe`], and whether the user postgres runs as can reach what it found.
    pub fn probe(&self, dir: &Path) -> Found {
        let found = probe(dir);
        match (&found, self.runner) {
            (Found::Version { version, .. }, Some((uid, gid))) => match unreachable_part(&dir.join("postgres"), uid, gid) {
                Some(blocked) => Found::Unreachable { version: version.clone(), blocked },
                None => found,
            },
            _ => found,
        }
    }

    fn fixed(&self, path: &str) -> PathBuf {
        self.root.join(path.trim_start_matches('/'))
    }

    /// The cache root `scripts/install-postgres` uses.
    pub fn cache_root(&self) -> PathBuf {
        self.cache.clone().unwrap_or_else(|| self.fixed(DEFAULT_CACHE))
    }

    fn home_cache(&self) -> Option<PathBuf> {
        self.home.as_ref().map(|h| h.join(".cache/pgbranch/postgresql"))
    }

    /// Every place binaries of `major` may be, in lookup order (`$PG_CONFIG` and
    /// /usr/local/pgsql hold whatever version was installed there).
    pub fn places(&self, major: u32) -> Vec<Place> {
        let mut v = Vec::new();
        match &self.pg_config {
            Some(pc) => {
                let what = format!("$PG_CONFIG ({}) --bindir", Path::new(pc).display());
                match Command::new(pc).arg("--bindir").output() {
                    Ok(out) if out.status.success() => {
                        v.push(Place { what, dir: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()) })
                    }
                    Ok(out) => v.push(Place { what: format!("{what}: failed ({})", out.status), dir: PathBuf::new() }),
                    Err(e) => v.push(Place { what: format!("{what}: cannot run it ({e})"), dir: PathBuf::new() }),
                }
            }
            None => v.push(Place { what: "$PG_CONFIG: not set".into(), dir: PathBuf::new() }),
        }
        let fixed = [
            (format!("/usr/lib/postgresql/{major}/bin"), "Debian/Ubuntu"),
            (format!("/usr/pgsql-{major}/bin"), "RHEL/PGDG"),
            (format!("/opt/homebrew/opt/postgresql@{major}/bin"), "Homebrew"),
            (format!("/usr/local/opt/postgresql@{major}/bin"), "Homebrew, Intel"),
            ("/usr/local/pgsql/bin".to_string(), "source build"),
        ];
        for (dir, what) in fixed {
            v.push(Place { what: what.into(), dir: self.fixed(&dir) });
        }
        let what = if self.cache.is_some() { "pgbranch cache, $PGBRANCH_PG_CACHE" } else { "pgbranch cache" };
        v.push(Place { what: what.into(), dir: self.cache_root().join(major.to_string()).join("bin") });
        if let Some(h) = self.home_cache() {
            v.push(Place { what: "pgbranch cache, per user".into(), dir: h.join(major.to_string()).join("bin") });
        }
        v
    }

    /// Majors named by the versioned places (e.g. /usr/lib/postgresql/17, the cache's 18).
    fn installed_majors(&self) -> Vec<u32> {
        let mut majors = Vec::new();
        let mut scan = |dir: PathBuf, prefix: &str| {
            if let Ok(rd) = std::fs::read_dir(dir) {
                for e in rd.flatten() {
                    let name = e.file_name().to_string_lossy().into_owned();
                    if let Some(m) = name.strip_prefix(prefix).and_then(|n| n.parse::<u32>().ok()) {
                        majors.push(m);
                    }
                }
            }
        };
        scan(self.fixed("/usr/lib/postgresql"), "");
        scan(self.fixed("/usr"), "pgsql-");
        scan(self.fixed("/opt/homebrew/opt"), "postgresql@");
        scan(self.fixed("/usr/local/opt"), "postgresql@");
        scan(self.cache_root(), "");
        if let Some(h) = self.home_cache() {
            scan(h, "");
        }
        majors.sort_unstable();
        majors.dedup();
        majors
    }
}

/// One place looked at.
#[derive(Clone, Debug, PartialEq)]
pub struct Place {
    /// What it is ("Debian/Ubuntu", "--pg-bin", ...).
    pub what: String,
    /// The directory (empty when there was none to look at, e.g. `$PG_CONFIG` unset).
    pub dir: PathBuf,
}

/// What a place held.
#[derive(Clone, Debug, PartialEq)]
pub enum Found {
    NotThere,
    NoPostgres,
    Unreadable(String),
    /// A PostgreSQL `version` that the user postgres runs as cannot execute (`blocked`
    /// is the first folder or file on the way it may not search or run).
    Unreachable {
        version: String,
        blocked: PathBuf,
    },
    /// A PostgreSQL of `major` (`version` in full), lacking the tools named.
    Version {
        major: u32,
        version: String,
        lacks: Vec<&'static str>,
    },
}

impl fmt::Display for Found {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Found::NotThere => write!(f, "not there"),
            Found::NoPostgres => write!(f, "no postgres binary"),
            Found::Unreadable(e) => write!(f, "{e}"),
            Found::Unreachable { version, blocked } => {
                write!(f, "PostgreSQL {version}, but the postgres OS user cannot reach it ({} is closed to it)", blocked.display())
            }
            Found::Version { version, lacks, .. } if lacks.is_empty() => write!(f, "PostgreSQL {version}"),
            Found::Version { version, lacks, .. } => write!(f, "PostgreSQL {version}, but without {}", lacks.join(", ")),
        }
    }
}

/// Looks at one directory.
pub fn probe(dir: &Path) -> Found {
    if dir.as_os_str().is_empty() || !dir.is_dir() {
        return Found::NotThere;
    }
    let postgres = dir.join("postgres");
    if !postgres.exists() {
        return Found::NoPostgres;
    }
    let out = match Command::new(&postgres).arg("--version").output() {
        Ok(o) if o.status.success() => o,
        Ok(o) => {
            let err = String::from_utf8_lossy(&o.stderr).trim().to_string();
            return Found::Unreadable(format!("postgres --version failed ({}): {err}", o.status));
        }
        Err(e) => return Found::Unreadable(format!("cannot run postgres --version: {e}")),
    };
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let Some((major, version)) = parse_version(&text) else {
        return Found::Unreadable(format!("cannot read a version from `postgres --version`: {}", text.trim()));
    };
    let lacks = TOOLS.iter().copied().filter(|t| !dir.join(t).exists()).collect();
    Found::Version { major, version, lacks }
}

/// The `postgres` OS user's uid and gid when we run as root (postgres refuses root).
fn postgres_user_if_root() -> Option<(u32, u32)> {
    if crate::sys::effective_uid() != 0 {
        return None;
    }
    crate::sys::user_by_name("postgres").map(|pw| (pw.uid, pw.gid))
}

/// The first folder on the way to `file` (or `file` itself) that `uid`/`gid` may not
/// search (execute), by the permission bits; None when the way is open.
fn unreachable_part(file: &Path, uid: u32, gid: u32) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let real = std::fs::canonicalize(file).ok()?;
    let mut parts: Vec<&Path> = real.ancestors().collect();
    parts.reverse();
    parts
        .into_iter()
        .find(|p| {
            let Ok(m) = std::fs::metadata(p) else { return true };
            let bit = if m.uid() == uid {
                0o100
            } else if m.gid() == gid {
                0o010
            } else {
                0o001
            };
            m.mode() & bit == 0
        })
        .map(Path::to_path_buf)
}

/// "postgres (PostgreSQL) 17.11 (Debian 17.11-1)" -> (17, "17.11").
pub fn parse_version(text: &str) -> Option<(u32, String)> {
    let word = text.split_whitespace().find(|w| w.contains('.') && w.starts_with(|c: char| c.is_ascii_digit()))?;
    let major = word.split('.').next()?.parse().ok()?;
    Some((major, word.to_string()))
}

/// Binaries found: their directory, major and full version.
#[derive(Clone, Debug, PartialEq)]
pub struct Located {
    pub dir: PathBuf,
    pub major: u32,
    pub version: String,
}

/// No usable binaries: the message says what is needed, where we looked and how to get them.
#[derive(Debug, thiserror::Error)]
pub struct NotFound {
    /// The source's major.
    pub major: u32,
    /// A newer major would do (the masked follower).
    pub or_newer: bool,
    pub looked: Vec<(Place, Found)>,
    pub cache_root: PathBuf,
}

impl fmt::Display for NotFound {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.major;
        if self.or_newer {
            write!(f, "the source runs PostgreSQL {m}: main needs PostgreSQL {m} binaries here, or a newer major (pg_dump must be at least the source's version), and none were found")?;
        } else {
            write!(f, "the source runs PostgreSQL {m}: following it needs PostgreSQL {m} binaries here (a standby runs the source's major), and none were found")?;
        }
        write!(f, ".\nLooked in:")?;
        for (place, found) in &self.looked {
            if place.dir.as_os_str().is_empty() {
                write!(f, "\n  {}", place.what)?;
            } else {
                write!(f, "\n  {} ({}): {found}", place.dir.display(), place.what)?;
            }
        }
        write!(
            f,
            "\nGet them with one of:\n  scripts/install-postgres {m}   (in a pgbranch checkout; installs into {}/{m})\
             \n  the distro package: apt-get install postgresql-{m} (Debian/Ubuntu; PGDG's apt repository for other majors), \
             dnf install postgresql{m}-server (RHEL, PGDG), brew install postgresql@{m}\
             \n  --pg-bin DIR   (a directory holding PostgreSQL {m}'s {})",
            self.cache_root.display(),
            TOOLS.join(", ")
        )
    }
}

/// Finds binaries of exactly `major`, or (`or_newer`) of `major` if any, else of the
/// newest major above it. `flag` (`--pg-bin`) is the only place looked at when given.
pub fn locate(env: &Env, flag: Option<&Path>, major: u32, or_newer: bool) -> Result<Located, NotFound> {
    // The binaries at `place` if they are complete and of `want` (or newer, when allowed).
    let usable = |place: &Place, found: &Found, want: u32, newer: bool| match found {
        Found::Version { major: m, version, lacks } if lacks.is_empty() && (*m == want || (newer && *m > want)) => {
            Some(Located { dir: place.dir.clone(), major: *m, version: version.clone() })
        }
        _ => None,
    };
    let not_found = |looked| NotFound { major, or_newer, looked, cache_root: env.cache_root() };
    if let Some(dir) = flag {
        let place = Place { what: "--pg-bin".into(), dir: dir.to_path_buf() };
        let found = env.probe(dir);
        return usable(&place, &found, major, or_newer).ok_or_else(|| not_found(vec![(place, found)]));
    }
    let mut looked: Vec<(Place, Found)> = Vec::new();
    for place in env.places(major) {
        let found = env.probe(&place.dir);
        if let Some(l) = usable(&place, &found, major, false) {
            return Ok(l);
        }
        looked.push((place, found));
    }
    if or_newer {
        // The newest major above the source's, wherever it is.
        let mut best: Option<Located> = looked.iter().filter_map(|(p, f)| usable(p, f, major, true)).max_by_key(|l| l.major);
        for m in env.installed_majors().into_iter().filter(|m| *m > major).rev() {
            if best.as_ref().is_some_and(|b| b.major >= m) {
                break;
            }
            let fresh: Vec<Place> = env.places(m).into_iter().filter(|p| !looked.iter().any(|(l, _)| l.dir == p.dir)).collect();
            for place in fresh {
                let found = env.probe(&place.dir);
                if let Some(l) = usable(&place, &found, m, false) {
                    best = Some(l);
                    break;
                }
                if matches!(found, Found::Version { .. }) {
                    looked.push((place, found));
                }
            }
        }
        if let Some(b) = best {
            return Ok(b);
        }
    }
    Err(not_found(looked))
}

#[cfg(test)]
#[path = "pg_find_tests.rs"]
mod tests;
