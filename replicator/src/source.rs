//! The source database: checks that it can be followed, before anything changes, each
//! failure with its own message; its replication slot; and the lag of a standby.

use std::time::Duration;

use postgres::{Client, Config, NoTls};

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
    #[error("user '{user}' has no REPLICATION privilege on the source; run ALTER ROLE \"{user}\" REPLICATION there, or use a user that has it")]
    NoReplicationPrivilege { user: String },
    #[error("the source has no free WAL sender (max_wal_senders = {max}, {used} in use); raise max_wal_senders on the source")]
    NoWalSender { max: i64, used: i64 },
    #[error("the source has no free replication slot (max_replication_slots = {max}, {used} in use); raise max_replication_slots")]
    NoSlotFree { max: i64, used: i64 },
    #[error("replication slot '{0}' already exists on the source; pick another with --slot, or drop it there: SELECT pg_drop_replication_slot('{0}')")]
    SlotExists(String),
    #[error("the source has wal_level={0}; a masked (logical) follower needs wal_level=logical: run ALTER SYSTEM SET wal_level = logical on the source and restart it")]
    WalLevelNotLogical(String),
    #[error("user '{user}' is not a superuser on the source; a masked follower publishes every table (CREATE PUBLICATION ... FOR ALL TABLES), which needs one")]
    NotSuperuser { user: String },
    #[error("publication '{0}' already exists on the source; pick another with --publication, or drop it there: DROP PUBLICATION \"{0}\"")]
    PublicationExists(String),
    #[error("the source database uses encoding {0}; the masked follower needs UTF8")]
    NotUtf8(String),
    #[error("query on the source failed: {0}")]
    Query(String),
}

/// A parsed source URL and what was learned by checking it.
#[derive(Clone, Debug)]
pub struct Source {
    pub url: String,
    pub config: Config,
    pub user: String,
    pub dbname: String,
}

#[derive(Clone, Debug)]
pub struct SourceInfo {
    pub major: u32,
    pub version: String,
    pub wal_level: String,
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
    Ok(SourceInfo { major: num / 10000, version, wal_level })
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
        let mut config: Config = url.parse().map_err(|e: postgres::Error| SourceError::BadUrl(e.to_string()))?;
        config.connect_timeout(Duration::from_secs(5));
        let user = config.get_user().map(str::to_string).unwrap_or_else(|| std::env::var("USER").unwrap_or_else(|_| "postgres".into()));
        if config.get_user().is_none() {
            config.user(&user);
        }
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        Ok(Source { url: url.to_string(), config, user, dbname })
    }

    pub fn password(&self) -> Option<String> {
        self.config.get_password().map(|p| String::from_utf8_lossy(p).into_owned())
    }

    pub fn connect(&self) -> Result<Client, SourceError> {
        self.config.connect(NoTls).map_err(|e| self.classify(e))
    }

    fn classify(&self, e: postgres::Error) -> SourceError {
        if let Some(db) = e.as_db_error() {
            let code = db.code().code();
            return match code {
                "28P01" => SourceError::BadPassword { user: self.user.clone() },
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
        let can_replicate =
            query_text(&mut c, "SELECT (rolreplication OR rolsuper)::text FROM pg_roles WHERE rolname = current_user")?;
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
        if !superuser {
            return Err(SourceError::NotSuperuser { user: self.user.clone() });
        }
        let encoding = query_text(&mut c, "SELECT pg_encoding_to_char(encoding)::text FROM pg_database WHERE datname = current_database()")?;
        if encoding != "UTF8" {
            return Err(SourceError::NotUtf8(encoding));
        }
        check_sender_and_slot(&mut c, slot, 1)?;
        let publication_exists = c
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&publication])
            .map_err(|e| SourceError::Query(e.to_string()))?
            .is_some();
        if publication_exists {
            return Err(SourceError::PublicationExists(publication.to_string()));
        }
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
