//! A copy's own server configuration. pgbranch writes main's `postgresql.conf` itself,
//! whatever the source's layout (in PGDATA, or in /etc/postgresql/N/main as Debian and
//! Ubuntu package it, where a base backup carries no configuration at all):
//! - the source's settings that shape what sessions see (time zone, locale, planner,
//!   statement behaviour, extension settings), read from the source's `pg_settings`;
//! - the settings a hot standby needs at least as high as its primary's
//!   ([`HOT_STANDBY_SETTINGS`]), from the copy's control file and the source;
//! - nothing of the source host: no paths, certificates, archiving, replication
//!   targets, synchronous standbys, log collector or memory sizing.
//!
//! While main follows, the source may raise one of the hot-standby settings; the
//! standby then stops replaying with a message this module recognises
//! ([`parse_insufficient`]), and [`set_minimum`] raises it in the file.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::pg::{Owner, PgBin};

/// Settings a hot standby must have at least as high as the primary's, with the label
/// `pg_controldata` prints for the primary's value.
pub const HOT_STANDBY_SETTINGS: [(&str, &str); 5] = [
    ("max_connections", "max_connections setting"),
    ("max_worker_processes", "max_worker_processes setting"),
    ("max_wal_senders", "max_wal_senders setting"),
    ("max_prepared_transactions", "max_prepared_xacts setting"),
    ("max_locks_per_transaction", "max_locks_per_xact setting"),
];

/// The first line of every configuration file pgbranch writes, with its format version.
const HEADER: &str = "# pgbranch-conf 1: written by pgbranch; main's own configuration";
const MINIMUMS_MARK: &str = "# --- at least the source's";

#[derive(Debug, thiserror::Error)]
pub enum ConfError {
    #[error("running pg_controldata on {dir}: {message}")]
    Controldata { dir: PathBuf, message: String },
    #[error("reading the source's settings: {0}")]
    SourceSettings(String),
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{0} is not one of the settings a hot standby must keep at least as high as its primary's")]
    NotAMinimum(String),
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ConfError + 'a {
    move |source| ConfError::Io { what, path: path.to_path_buf(), source }
}

/// The hot-standby settings' values, by name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StandbyMinimums(pub BTreeMap<String, i64>);

impl StandbyMinimums {
    /// Takes the larger value of each setting.
    pub fn merge(&mut self, other: &StandbyMinimums) {
        for (name, v) in &other.0 {
            let e = self.0.entry(name.clone()).or_insert(*v);
            *e = (*e).max(*v);
        }
    }

    pub fn get(&self, name: &str) -> Option<i64> {
        self.0.get(name).copied()
    }
}

/// The primary's hot-standby settings as `pg_controldata` output records them.
pub fn parse_controldata(text: &str) -> StandbyMinimums {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((label, value)) = line.split_once(':') else { continue };
        if let Some((name, _)) = HOT_STANDBY_SETTINGS.iter().find(|(_, l)| *l == label.trim()) {
            if let Ok(v) = value.trim().parse() {
                out.insert(name.to_string(), v);
            }
        }
    }
    StandbyMinimums(out)
}

/// Reads the hot-standby settings recorded in a copy's control file.
pub fn from_controldata(bin: &PgBin, owner: &Owner, data: &Path) -> Result<StandbyMinimums, ConfError> {
    let mut cmd = owner.command(bin.tool("pg_controldata"));
    cmd.arg("-D").arg(data).env("LC_ALL", "C");
    let err = |message: String| ConfError::Controldata { dir: data.to_path_buf(), message };
    let out = cmd.output().map_err(|e| err(e.to_string()))?;
    if !out.status.success() {
        return Err(err(String::from_utf8_lossy(&out.stderr).trim().to_string()));
    }
    Ok(parse_controldata(&String::from_utf8_lossy(&out.stdout)))
}

/// Whether a setting belongs to the source's host rather than to the data: paths,
/// addresses, certificates, archiving and replication targets, logging destinations,
/// memory sized for that machine. These are never carried into a copy.
pub fn is_host_specific(name: &str) -> bool {
    const EXACT: &[&str] = &[
        "data_directory",
        "config_file",
        "hba_file",
        "ident_file",
        "external_pid_file",
        "listen_addresses",
        "port",
        "unix_socket_directories",
        "unix_socket_group",
        "unix_socket_permissions",
        "krb_server_keyfile",
        "archive_mode",
        "archive_command",
        "archive_library",
        "archive_timeout",
        "archive_cleanup_command",
        "restore_command",
        "recovery_end_command",
        "primary_conninfo",
        "primary_slot_name",
        "promote_trigger_file",
        "synchronous_standby_names",
        "synchronized_standby_slots",
        "hot_standby",
        "logging_collector",
        "log_directory",
        "log_filename",
        "log_destination",
        "stats_temp_directory",
        "shared_buffers",
        "huge_pages",
        "huge_page_size",
        "min_dynamic_shared_memory",
        "cluster_name",
        "event_source",
        "bonjour_name",
        "shared_preload_libraries",
        "session_preload_libraries",
        "local_preload_libraries",
    ];
    EXACT.contains(&name)
        || name.starts_with("ssl")
        || name.starts_with("recovery_target")
        || name.starts_with("syslog_")
        || HOT_STANDBY_SETTINGS.iter().any(|(n, _)| *n == name)
}

/// What the source says about its settings: those it was configured with (files or
/// ALTER SYSTEM) that a copy should keep, its hot-standby settings, and its preload
/// libraries.
#[derive(Clone, Debug, Default)]
pub struct SourceSettings {
    pub carried: Vec<(String, String)>,
    pub minimums: StandbyMinimums,
    pub preload_libraries: Vec<String>,
}

/// Reads [`SourceSettings`] over a connection to the source. Any role can: superuser-
/// only settings are simply not listed for others.
pub fn read_source_settings(client: &mut postgres::Client) -> Result<SourceSettings, ConfError> {
    let err = |e: postgres::Error| ConfError::SourceSettings(e.to_string());
    let mut out = SourceSettings::default();
    let rows = client
        .query("SELECT name, setting, source FROM pg_settings WHERE source IN ('configuration file', 'command line') OR name = ANY($1) ORDER BY name", &[
            &HOT_STANDBY_SETTINGS.iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>(),
        ])
        .map_err(err)?;
    for row in rows {
        let (name, value): (String, String) = (row.get(0), row.get(1));
        if HOT_STANDBY_SETTINGS.iter().any(|(n, _)| *n == name) {
            if let Ok(v) = value.parse() {
                out.minimums.0.insert(name, v);
            }
        } else if name == "shared_preload_libraries" {
            out.preload_libraries = value.split(',').map(|l| l.trim().trim_matches('"').to_string()).filter(|l| !l.is_empty()).collect();
        } else if !is_host_specific(&name) {
            out.carried.push((name, value));
        }
    }
    Ok(out)
}

/// The directory holding the server's loadable modules (`$libdir`).
fn pkglibdir(bin: &PgBin) -> Option<PathBuf> {
    if let Ok(out) = std::process::Command::new(bin.tool("pg_config")).arg("--pkglibdir").output() {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && dir.is_dir() {
            return Some(dir);
        }
    }
    let parent = bin.0.parent()?;
    [parent.join("lib/postgresql"), parent.join("lib")].into_iter().find(|d| d.join("plpgsql.so").exists())
}

/// Splits preload libraries into those these binaries have and those they lack.
pub fn available_libraries(bin: &PgBin, libraries: &[String]) -> (Vec<String>, Vec<String>) {
    let dir = pkglibdir(bin);
    libraries.iter().cloned().partition(|lib| {
        let file = lib.trim_start_matches("$libdir/");
        let file = if file.ends_with(".so") { file.to_string() } else { format!("{file}.so") };
        dir.as_ref().is_some_and(|d| d.join(&file).exists())
    })
}

/// Everything main's configuration is made of.
#[derive(Clone, Debug, Default)]
pub struct ServerConf {
    pub carried: Vec<(String, String)>,
    pub minimums: StandbyMinimums,
    pub preload_libraries: Vec<String>,
    /// The copy holds in-place tablespaces (directories in pg_tblspc; see
    /// [`crate::tablespace`]), which recovery accepts only with this on (PostgreSQL 15+).
    pub in_place_tablespaces: bool,
}

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

impl ServerConf {
    /// The text of postgresql.conf.
    pub fn render(&self) -> String {
        let mut t = format!("{HEADER}\n# (the source's own files, when it had them in PGDATA, are kept beside this as *.source)\n\n");
        t.push_str("# --- the source's settings that shape what sessions see\n");
        for (name, value) in &self.carried {
            t.push_str(&format!("{name} = {}\n", quote(value)));
        }
        if !self.preload_libraries.is_empty() {
            t.push_str(&format!("shared_preload_libraries = {}\n", quote(&self.preload_libraries.join(","))));
        }
        t.push_str(&format!("\n{MINIMUMS_MARK} (a hot standby replays its WAL only with these at least as high; raised by pgbranch when the source raises them)\n"));
        for (name, _) in HOT_STANDBY_SETTINGS {
            if let Some(v) = self.minimums.get(name) {
                t.push_str(&format!("{name} = {v}\n"));
            }
        }
        t.push_str("\n# --- this host (listen address, port and socket are given on the command line)\n");
        t.push_str("hot_standby = on\nlogging_collector = off\narchive_mode = off\n");
        if self.in_place_tablespaces {
            t.push_str("allow_in_place_tablespaces = on\n");
        }
        t
    }
}

/// Writes `dir/name` owned by `owner`, mode 0600.
fn write_owned(owner: &Owner, path: &Path, text: &str) -> Result<(), ConfError> {
    std::fs::write(path, text).map_err(io("writing", path))?;
    std::os::unix::fs::chown(path, Some(owner.uid), Some(owner.gid)).map_err(io("changing the owner of", path))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(io("changing the mode of", path))
}

/// The lines of postgresql.auto.conf that point a copy at its primary (`pg_basebackup
/// -R` writes them): the only ones main keeps; the source's ALTER SYSTEM settings are
/// carried through [`SourceSettings`] like any other.
fn standby_lines(auto_conf: &str) -> String {
    auto_conf
        .lines()
        .filter(|l| {
            let name = l.split('=').next().unwrap_or("").trim();
            name == "primary_conninfo" || name == "primary_slot_name"
        })
        .map(|l| format!("{l}\n"))
        .collect()
}

/// Gives a fresh copy of the source at `data` its own configuration: postgresql.conf
/// from `conf`, an empty pg_ident.conf when the copy has none, postgresql.auto.conf
/// reduced to what points it at the primary. The source's own files are kept as
/// `*.source` beside them, for reference.
pub fn write(data: &Path, owner: &Owner, conf: &ServerConf) -> Result<(), ConfError> {
    for f in ["postgresql.conf", "postgresql.auto.conf"] {
        let p = data.join(f);
        if p.exists() {
            let kept = data.join(format!("{f}.source"));
            std::fs::rename(&p, &kept).map_err(io("keeping the source's", &p))?;
        }
    }
    write_owned(owner, &data.join("postgresql.conf"), &conf.render())?;
    let auto_source = std::fs::read_to_string(data.join("postgresql.auto.conf.source")).unwrap_or_default();
    write_owned(
        owner,
        &data.join("postgresql.auto.conf"),
        &format!(
            "# Do not edit this file manually!\n# It will be overwritten by the ALTER SYSTEM command.\n{}",
            standby_lines(&auto_source)
        ),
    )?;
    let ident = data.join("pg_ident.conf");
    if !ident.exists() {
        write_owned(owner, &ident, "# pgbranch: no user name maps\n")?;
    }
    Ok(())
}

/// The hot-standby settings in force in a copy's postgresql.conf.
pub fn read_minimums(data: &Path) -> StandbyMinimums {
    let text = std::fs::read_to_string(data.join("postgresql.conf")).unwrap_or_default();
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let Some((name, value)) = line.split_once('=') else { continue };
        let name = name.trim();
        if HOT_STANDBY_SETTINGS.iter().any(|(n, _)| *n == name) {
            if let Ok(v) = value.trim().trim_matches('\'').parse() {
                out.insert(name.to_string(), v);
            }
        }
    }
    StandbyMinimums(out)
}

/// Sets one hot-standby setting in a copy's postgresql.conf (the file's later lines win,
/// so the value replaces the existing line, or is appended).
pub fn set_minimum(data: &Path, owner: &Owner, name: &str, value: i64) -> Result<(), ConfError> {
    if !HOT_STANDBY_SETTINGS.iter().any(|(n, _)| *n == name) {
        return Err(ConfError::NotAMinimum(name.to_string()));
    }
    let path = data.join("postgresql.conf");
    let text = std::fs::read_to_string(&path).map_err(io("reading", &path))?;
    let mut replaced = false;
    let mut out: Vec<String> = text
        .lines()
        .map(|l| {
            if l.split('=').next().is_some_and(|n| n.trim() == name) {
                replaced = true;
                format!("{name} = {value}")
            } else {
                l.to_string()
            }
        })
        .collect();
    if !replaced {
        out.push(format!("{name} = {value}"));
    }
    let tmp = data.join("postgresql.conf.pgbranch-tmp");
    write_owned(owner, &tmp, &(out.join("\n") + "\n"))?;
    std::fs::rename(&tmp, &path).map_err(io("replacing", &path))
}

/// PostgreSQL's defaults of the hot-standby settings (what a file without them gets).
fn default_of(name: &str) -> i64 {
    match name {
        "max_connections" => 100,
        "max_worker_processes" => 8,
        "max_wal_senders" => 10,
        "max_locks_per_transaction" => 64,
        _ => 0,
    }
}

/// Raises the hot-standby settings in a copy's postgresql.conf to what its control file
/// records, so that the copy can start recovery (a cut of main taken while the source
/// had just raised one). Returns what was raised: (name, from, to).
pub fn raise_to_controldata(bin: &PgBin, owner: &Owner, data: &Path) -> Result<Vec<(String, i64, i64)>, ConfError> {
    let recorded = from_controldata(bin, owner, data)?;
    let have = read_minimums(data);
    let mut raised = Vec::new();
    for (name, to) in recorded.0 {
        let from = have.get(&name).unwrap_or_else(|| default_of(&name));
        if from < to {
            set_minimum(data, owner, &name, to)?;
            raised.push((name, from, to));
        }
    }
    Ok(raised)
}

/// A hot-standby setting too low for the primary's WAL, as the server logged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Insufficient {
    pub name: String,
    pub have: i64,
    pub primary: i64,
}

/// The last "NAME = N is a lower setting than on the primary server, where its value
/// was M" in a chunk of a server log (postgres logs it when it pauses or aborts recovery).
pub fn parse_insufficient(log: &str) -> Option<Insufficient> {
    const MIDDLE: &str = " is a lower setting than on the primary server, where its value was ";
    log.lines().rev().find_map(|line| {
        let (left, right) = line.split_once(MIDDLE)?;
        let primary = right.trim().trim_end_matches('.').parse().ok()?;
        let (name_part, have) = left.rsplit_once(" = ")?;
        let name = name_part.rsplit(|c: char| c.is_whitespace() || c == ':').next()?.to_string();
        Some(Insufficient { name, have: have.trim().parse().ok()?, primary })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn controldata_values() {
        let text = "pg_control version number:            1300\nmax_connections setting:              150\nmax_worker_processes setting:         12\nmax_wal_senders setting:              20\nmax_prepared_xacts setting:           10\nmax_locks_per_xact setting:           128\ntrack_commit_timestamp setting:       off\n";
        let m = parse_controldata(text);
        assert_eq!(m.get("max_connections"), Some(150));
        assert_eq!(m.get("max_prepared_transactions"), Some(10));
        assert_eq!(m.get("max_locks_per_transaction"), Some(128));
        assert_eq!(m.0.len(), 5);
    }

    #[test]
    fn insufficient_message() {
        let log = "2026-11-30 15:00:00 UTC [12] WARNING:  hot standby is not possible because of insufficient parameter settings\n\
                   2026-11-30 15:00:00 UTC [12] DETAIL:  max_wal_senders = 10 is a lower setting than on the primary server, where its value was 20.\n";
        assert_eq!(parse_insufficient(log), Some(Insufficient { name: "max_wal_senders".into(), have: 10, primary: 20 }));
        assert_eq!(parse_insufficient("LOG:  database system is ready\n"), None);
    }

    #[test]
    fn host_settings_are_not_carried() {
        for n in ["data_directory", "ssl_cert_file", "archive_command", "synchronous_standby_names", "max_wal_senders", "shared_buffers"] {
            assert!(is_host_specific(n), "{n}");
        }
        for n in ["timezone", "work_mem", "default_text_search_config", "pg_stat_statements.max"] {
            assert!(!is_host_specific(n), "{n}");
        }
    }

    #[test]
    fn render_then_raise() {
        let mut minimums = StandbyMinimums::default();
        minimums.0.insert("max_wal_senders".into(), 20);
        let conf = ServerConf {
            carried: vec![("timezone".into(), "Pacific/Auckland".into()), ("search_path".into(), "\"$user\", public".into())],
            minimums,
            preload_libraries: vec![],
            in_place_tablespaces: false,
        };
        let text = conf.render();
        assert!(text.starts_with(HEADER));
        assert!(text.contains("timezone = 'Pacific/Auckland'\n"));
        assert!(text.contains("max_wal_senders = 20\n"));
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("postgresql.conf"), &text).unwrap();
        let meta = std::fs::metadata(dir.path()).unwrap(); // a directory this process just made
        let me = Owner { uid: meta.uid(), gid: meta.gid(), name: "me".into(), home: "/".into() };
        set_minimum(dir.path(), &me, "max_wal_senders", 25).unwrap();
        set_minimum(dir.path(), &me, "max_connections", 300).unwrap();
        let m = read_minimums(dir.path());
        assert_eq!(m.get("max_wal_senders"), Some(25));
        assert_eq!(m.get("max_connections"), Some(300));
        assert!(set_minimum(dir.path(), &me, "work_mem", 1).is_err());
    }

    #[test]
    fn auto_conf_keeps_only_the_primary() {
        let auto = "# Do not edit\nwork_mem = '64MB'\nprimary_conninfo = 'host=x'\nprimary_slot_name = 'pgbranch'\n";
        assert_eq!(standby_lines(auto), "primary_conninfo = 'host=x'\nprimary_slot_name = 'pgbranch'\n");
    }
}
