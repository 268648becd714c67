//! The source database: checks that it can be followed, before anything changes, each
//! failure with its own message; its replication slot; and the lag of a standby. Every
//! connection to it uses the URL's TLS settings ([`crate::tls`]).

use std::time::Duration;

use postgres::config::SslMode as PgSslMode;
use postgres::{Client, Config, NoTls};

use crate::tls::{self, SourceTls, SslMode, TlsError};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("--source-url is not a valid postgres URL: {0}")]
    BadUrl(String),
    #[error("cannot reach the source database at {target}: {reason}; check the host and port, and that it is running")]
    Unreachable { target: String, reason: String },
    #[error("the source rejected the password for user '{user}' (password authentication failed); check the password in --source-url")]
    BadPassword { user: String },
    #[error("the source refused the connection for user '{user}': {reason}")]
    Refused { user: String, reason: String },
    #[error("the source has wal_level=minimal, which cannot be streamed; set wal_level=replica (or logical) on the source and restart it")]
    WalLevelMinimal,
    #[error(
        "user '{user}' has no REPLICATION privilege on the source; run ALTER ROLE \"{user}\" REPLICATION there, or use a user that has it"
    )]
    NoReplicationPrivilege { user: String },
    #[error("the source has no free WAL sender (max_wal_senders = {max}, {used} in use); raise max_wal_senders on the source")]
    NoWalSender { max: i64, used: i64 },
    #[error("the source has no free replication slot (max_replication_slots = {max}, {used} in use); raise max_replication_slots")]
    NoSlotFree { max: i64, used: i64 },
    #[error("replication slot '{0}' already exists on the source; pick another with --slot, or drop it there: SELECT pg_drop_replication_slot('{0}')")]
    SlotExists(String),
    #[error("the source has wal_level={0}; a masked (logical) follower needs wal_level=logical: run ALTER SYSTEM SET wal_level = logical on the source and restart it")]
    WalLevelNotLogical(String),
    #[error("user '{user}' is not a superuser on the source, and only a superuser can create a publication of every table; ask one to run there: CREATE PUBLICATION \"{publication}\" FOR ALL TABLES WITH (publish_via_partition_root = true); then clone again (pgbranch uses an existing publication of all tables, and leaves it in place)")]
    NeedsPublication { user: String, publication: String },
    #[error("publication '{0}' already exists on the source but does not publish every table; pick another name with --publication, or have a superuser drop it there: DROP PUBLICATION \"{0}\"")]
    PublicationNotAllTables(String),
    #[error("user '{user}' cannot read {count} table(s) or sequence(s) on the source ({names}); grant it there: GRANT SELECT ON ALL TABLES IN SCHEMA <schema> TO \"{user}\" (tables and sequences of each schema; and USAGE on the schema), or GRANT pg_read_all_data TO \"{user}\"")]
    CannotRead { user: String, count: usize, names: String },
    #[error("the source database uses encoding {0}; the masked follower needs UTF8")]
    NotUtf8(String),
    #[error("query on the source failed: {0}")]
    Query(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("the source accepts only TLS connections from here ({reason}), but --source-url says sslmode={mode}; use sslmode=verify-full with sslrootcert=CA-FILE (or sslmode=require)")]
    TlsOnly { mode: &'static str, reason: String },
}

/// A parsed source URL and what was learned by checking it.
#[derive(Clone, Debug)]
pub struct Source {
    /// The URL as given, TLS parameters included (libpq's tools read it as is).
    pub url: String,
    /// The URL without its TLS parameters, as tokio-postgres takes it; `sslmode` is
    /// set per connection from `tls`.
    pub config: Config,
    pub tls: SourceTls,
    pub user: String,
    pub dbname: String,
}

#[derive(Clone, Debug)]
pub struct SourceInfo {
    pub major: u32,
    pub version: String,
    pub wal_level: String,
    /// For a masked follower: the publication to stream exists already (made by a
    /// superuser for a role that is not one), so pgbranch neither creates nor drops it.
    pub publication_exists: bool,
}

fn target(config: &Config) -> String {
    let host = match config.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        #[cfg(unix)]
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}")
}

fn query_text(c: &mut Client, sql: &str) -> Result<String, SourceError> {
    let row = c.query_one(sql, &[]).map_err(|e| SourceError::Query(e.to_string()))?;
    Ok(row.get::<_, String>(0))
}

/// Version and wal_level of the server.
fn server_info(c: &mut Client) -> Result<SourceInfo, SourceError> {
    let num: u32 = query_text(c, "SELECT current_setting('server_version_num')")?.parse().unwrap_or(0);
    let version = query_text(c, "SELECT current_setting('server_version')")?;
    let wal_level = query_text(c, "SELECT current_setting('wal_level')")?;
    Ok(SourceInfo { major: num / 10000, version, wal_level, publication_exists: false })
}

/// A free WAL sender (`senders` of them), a free replication slot, and `slot` unused.
fn check_sender_and_slot(c: &mut Client, slot: &str, senders: i64) -> Result<(), SourceError> {
    let max: i64 = query_text(c, "SELECT current_setting('max_wal_senders')")?.parse().unwrap_or(0);
    let used: i64 = query_text(c, "SELECT count(*)::text FROM pg_stat_replication")?.parse().unwrap_or(0);
    if max - used < senders {
        return Err(SourceError::NoWalSender { max, used });
    }
    let max_slots: i64 = query_text(c, "SELECT current_setting('max_replication_slots')")?.parse().unwrap_or(0);
    let used_slots: i64 = query_text(c, "SELECT count(*)::text FROM pg_replication_slots")?.parse().unwrap_or(0);
    let exists = c
        .query_opt("SELECT 1 FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
        .map_err(|e| SourceError::Query(e.to_string()))?
        .is_some();
    if exists {
        return Err(SourceError::SlotExists(slot.to_string()));
    }
    if max_slots - used_slots < 1 {
        return Err(SourceError::NoSlotFree { max: max_slots, used: used_slots });
    }
    Ok(())
}

impl Source {
    pub fn parse(url: &str) -> Result<Source, SourceError> {
        let (rest, tls) = tls::split(url)?;
        let mut config: Config = rest.parse().map_err(|e: postgres::Error| SourceError::BadUrl(e.to_string()))?;
        config.connect_timeout(Duration::from_secs(5));
        config.ssl_mode(match tls.mode {
            SslMode::Disable | SslMode::Allow => PgSslMode::Disable,
            SslMode::Prefer => PgSslMode::Prefer,
            _ => PgSslMode::Require,
        });
        config.channel_binding(tls.channel_binding);
        let user = config.get_user().map(str::to_string).unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "postgres".into()));
        if config.get_user().is_none() {
            config.user(&user);
        }
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        Ok(Source { url: url.to_string(), config, tls, user, dbname })
    }

    /// The URL for libpq's tools (pg_basebackup, and so the standby's primary_conninfo):
    /// the TLS parameters as libpq reads them (`sslrootcert=system` as the OS bundle file).
    pub fn libpq_url(&self) -> String {
        if self.tls.root_cert != Some(tls::RootCert::System) {
            return self.url.clone();
        }
        tls::set_params(&self.url, &self.tls.libpq_params()).unwrap_or_else(|_| self.url.clone())
    }

    /// The host name the server's certificate is checked against.
    pub fn tls_host(&self) -> String {
        match self.config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            _ => self.config.get_hostaddrs().first().map_or_else(|| "localhost".into(), |a| a.to_string()),
        }
    }

    pub fn password(&self) -> Option<String> {
        self.config.get_password().map(|p| String::from_utf8_lossy(p).into_owned())
    }

    /// A connection with the URL's TLS settings (`allow`: plain first, then TLS).
    pub fn connect(&self) -> Result<Client, SourceError> {
        match self.tls.mode {
            SslMode::Disable => self.config.connect(NoTls).map_err(|e| self.classify(e)),
            SslMode::Allow => self.config.connect(NoTls).or_else(|_| {
                let mut c = self.config.clone();
                c.ssl_mode(PgSslMode::Require);
                c.connect(self.tls.make_connect()?).map_err(|e| self.classify(e))
            }),
            _ => self.config.connect(self.tls.make_connect()?).map_err(|e| self.classify(e)),
        }
    }

    fn classify(&self, e: postgres::Error) -> SourceError {
        if let Some(t) = tls::explain(&e, &self.tls, &self.tls_host()) {
            return SourceError::Tls(t);
        }
        let chain = format!("{e} {}", std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default());
        if self.tls.channel_binding == postgres::config::ChannelBinding::Require && chain.contains("channel binding") {
            return SourceError::Tls(TlsError::ChannelBinding(
                "the source authenticated without it: its pg_hba.conf method for this connection must be scram-sha-256, over TLS".into(),
            ));
        }
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            return match code {
                "28P01" => SourceError::BadPassword { user: self.user.clone() },
                "28000" if db.message().contains("no encryption") && matches!(self.tls.mode, SslMode::Disable | SslMode::Allow) => {
                    SourceError::TlsOnly { mode: self.tls.mode.name(), reason: db.message().to_string() }
                }
                _ => SourceError::Refused { user: self.user.clone(), reason: db.message().to_string() },
            };
        }
        let text = e.to_string();
        if text.contains("password") && text.contains("authentication") {
            return SourceError::BadPassword { user: self.user.clone() };
        }
        let reason = std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or(text);
        SourceError::Unreachable { target: target(&self.config), reason }
    }

    /// Everything a physical follower needs from the source, checked in order.
    pub fn check_physical(&self, slot: &str) -> Result<SourceInfo, SourceError> {
        let mut c = self.connect()?;
        let info = server_info(&mut c)?;
        let wal_level = info.wal_level.clone();
        if wal_level == "minimal" {
            return Err(SourceError::WalLevelMinimal);
        }
        let can_replicate = query_text(&mut c, "SELECT (rolreplication OR rolsuper)::text FROM pg_roles WHERE rolname = current_user")?;
        if can_replicate != "true" {
            return Err(SourceError::NoReplicationPrivilege { user: self.user.clone() });
        }
        // pg_basebackup -X stream needs two senders while it copies.
        check_sender_and_slot(&mut c, slot, 2)?;
        Ok(info)
    }

    /// Everything a logical (masked) follower needs from the source, checked in order
    /// before anything is created there.
    pub fn check_logical(&self, slot: &str, publication: &str) -> Result<SourceInfo, SourceError> {
        let mut c = self.connect()?;
        let info = server_info(&mut c)?;
        if info.wal_level != "logical" {
            return Err(SourceError::WalLevelNotLogical(info.wal_level));
        }
        let (replication, superuser) = {
            let row = c
                .query_one("SELECT rolreplication OR rolsuper, rolsuper FROM pg_roles WHERE rolname = current_user", &[])
                .map_err(|e| SourceError::Query(e.to_string()))?;
            (row.get::<_, bool>(0), row.get::<_, bool>(1))
        };
        if !replication {
            return Err(SourceError::NoReplicationPrivilege { user: self.user.clone() });
        }
        let mut info = info;
        let all_tables: Option<bool> = c
            .query_opt("SELECT puballtables FROM pg_publication WHERE pubname = $1", &[&publication])
            .map_err(|e| SourceError::Query(e.to_string()))?
            .map(|r| r.get(0));
        match (all_tables, superuser) {
            (Some(false), _) => return Err(SourceError::PublicationNotAllTables(publication.to_string())),
            (Some(true), _) => info.publication_exists = true,
            (None, false) => return Err(SourceError::NeedsPublication { user: self.user.clone(), publication: publication.to_string() }),
            (None, true) => {}
        }
        if !superuser {
            // pg_dump and the copy read every table and sequence.
            let unreadable: Vec<String> = c
                .query(
                    "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE c.relkind IN ('r', 'p', 'S') AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' \
                     AND NOT (has_schema_privilege(n.oid, 'USAGE') AND has_table_privilege(c.oid, 'SELECT')) ORDER BY 1",
                    &[],
                )
                .map_err(|e| SourceError::Query(e.to_string()))?
                .iter()
                .map(|r| r.get(0))
                .collect();
            if !unreadable.is_empty() {
                let mut names = unreadable.iter().take(5).cloned().collect::<Vec<_>>().join(", ");
                if unreadable.len() > 5 {
                    names.push_str(", ...");
                }
                return Err(SourceError::CannotRead { user: self.user.clone(), count: unreadable.len(), names });
            }
        }
        let encoding =
            query_text(&mut c, "SELECT pg_encoding_to_char(encoding)::text FROM pg_database WHERE datname = current_database()")?;
        if encoding != "UTF8" {
            return Err(SourceError::NotUtf8(encoding));
        }
        check_sender_and_slot(&mut c, slot, 1)?;
        Ok(info)
    }

    /// Drops a publication if it exists.
    pub fn drop_publication(&self, publication: &str) -> Result<(), SourceError> {
        let mut c = self.connect()?;
        c.batch_execute(&format!("DROP PUBLICATION IF EXISTS \"{}\"", publication.replace('"', "\"\"")))
            .map_err(|e| SourceError::Query(e.to_string()))
    }

    /// Drops a replication slot if it exists (waiting briefly for its sender to go).
    pub fn drop_slot(&self, slot: &str) -> Result<bool, SourceError> {
        let mut c = self.connect()?;
        for _ in 0..50 {
            let row = c
                .query_opt("SELECT active FROM pg_replication_slots WHERE slot_name = $1", &[&slot])
                .map_err(|e| SourceError::Query(e.to_string()))?;
            match row {
                None => return Ok(false),
                Some(r) if !r.get::<_, bool>(0) => {
                    c.execute("SELECT pg_drop_replication_slot($1)", &[&slot]).map_err(|e| SourceError::Query(e.to_string()))?;
                    return Ok(true);
                }
                Some(_) => std::thread::sleep(Duration::from_millis(100)),
            }
        }
        Err(SourceError::Query(format!("slot '{slot}' is still in use; stop the follower first")))
    }

    pub fn current_lsn(&self) -> Result<(String, u64), SourceError> {
        let mut c = self.connect()?;
        let row = c
            .query_one("SELECT pg_current_wal_lsn()::text, (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint", &[])
            .map_err(|e| SourceError::Query(e.to_string()))?;
        Ok((row.get(0), row.get::<_, i64>(1) as u64))
    }
}
