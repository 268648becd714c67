//! Roles and schema from the source into main, with the stock tools: roles by
//! `pg_dumpall --roles-only --no-role-passwords`; the schema by `pg_dump -Fc
//! --schema-only`, restored in two sections as `pg_restore` does it: tables before the
//! copy (`pre-data`), indexes, constraints and triggers after it (`post-data`, in
//! parallel), so they are built once over the copied rows. No row data ever passes
//! through here.

use std::io::Read;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crate::pg::{Owner, PgBin};
use crate::source::Source;

#[derive(Debug, thiserror::Error)]
pub enum SchemaError {
    #[error("{what} failed: {message}")]
    Tool { what: String, message: String },
}

/// Where main's server listens (its private socket), and the database to fill.
#[derive(Clone, Debug)]
pub struct Target {
    pub bin: PgBin,
    pub owner: Owner,
    pub socket_dir: PathBuf,
    pub port: u16,
    pub dbname: String,
}

impl Target {
    /// psql on main as the superuser `postgres`, over the private socket.
    fn psql(&self, db: &str, stop_on_error: bool) -> Command {
        let mut cmd = self.owner.command(self.bin.tool("psql"));
        cmd.args(["-X", "-q", "-U", "postgres", "-h"])
            .arg(&self.socket_dir)
            .arg("-p")
            .arg(self.port.to_string())
            .args(["-d", db, "-v"])
            .arg(format!("ON_ERROR_STOP={}", u8::from(stop_on_error)));
        cmd
    }

    /// A postgres::Config for main's socket as `postgres`.
    pub fn config(&self) -> postgres::Config {
        let mut c = postgres::Config::new();
        c.host_path(&self.socket_dir).port(self.port).user("postgres").dbname(&self.dbname);
        c
    }
}

/// libpq connection parameters of the source, TLS settings included, without its
/// password (which goes in PGPASSWORD, never on a command line that `ps` shows).
fn source_env(cmd: &mut Command, source: &Source) -> String {
    let c = &source.config;
    let host = match c.get_hosts().first() {
        Some(postgres::config::Host::Tcp(h)) => h.clone(),
        Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
        None => "localhost".into(),
    };
    let port = c.get_ports().first().copied().unwrap_or(5432);
    if let Some(p) = source.password() {
        cmd.env("PGPASSWORD", p);
    }
    let q = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
    let mut conn = format!("host={} port={port} user={} dbname={}", q(&host), q(&source.user), q(&source.dbname));
    for (k, v) in source.tls.libpq_params() {
        conn.push_str(&format!(" {k}={}", q(&v)));
    }
    conn
}

/// Runs `dump | restore`; returns the ERROR lines restore printed (when it goes on
/// after errors), or fails with what went wrong.
fn pipe(mut dump: Command, mut restore: Command, what: &str) -> Result<Vec<String>, SchemaError> {
    let fail = |message: String| SchemaError::Tool { what: what.to_string(), message };
    let mut d = dump.stdout(Stdio::piped()).stderr(Stdio::piped()).stdin(Stdio::null()).spawn().map_err(|e| fail(e.to_string()))?;
    let out = d.stdout.take().unwrap();
    let r = restore.stdin(out).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().map_err(|e| fail(e.to_string()))?;
    let mut dump_err = String::new();
    d.stderr.take().unwrap().read_to_string(&mut dump_err).ok();
    let dump_status = d.wait().map_err(|e| fail(e.to_string()))?;
    let restored = r.wait_with_output().map_err(|e| fail(e.to_string()))?;
    let restore_err = String::from_utf8_lossy(&restored.stderr).to_string();
    if !dump_status.success() {
        return Err(fail(format!("on the source: {}", dump_err.trim())));
    }
    if !restored.status.success() {
        return Err(fail(format!("on main: {}", restore_err.trim())));
    }
    Ok(restore_err.lines().filter(|l| l.contains("ERROR")).map(str::to_string).collect())
}

/// Creates the source's roles on main (without passwords); the ones main already has
/// (its superuser) are updated instead.
pub fn load_roles(source: &Source, target: &Target) -> Result<(), SchemaError> {
    let mut dump = Command::new(target.bin.tool("pg_dumpall"));
    let conn = source_env(&mut dump, source);
    dump.args(["--roles-only", "--no-role-passwords", "-d"]).arg(conn);
    let errors = pipe(dump, target.psql("postgres", false), "copying roles (pg_dumpall --roles-only)")?;
    for e in errors.iter().filter(|e| !e.contains("already exists")) {
        tracing::warn!("copying roles: {e}");
    }
    Ok(())
}

/// Creates main's database when the source's is not `postgres`, owned like the source's.
pub fn create_database(target: &Target, owner: &str) -> Result<(), SchemaError> {
    let ident = |s: &str| format!("\"{}\"", s.replace('"', "\"\""));
    let sql = if target.dbname == "postgres" {
        format!("ALTER DATABASE postgres OWNER TO {}", ident(owner))
    } else {
        format!("CREATE DATABASE {} OWNER {}", ident(&target.dbname), ident(owner))
    };
    let mut cmd = target.psql("postgres", true);
    cmd.arg("-c").arg(sql);
    let out = cmd.output().map_err(|e| SchemaError::Tool { what: "creating the database on main".into(), message: e.to_string() })?;
    if !out.status.success() {
        return Err(SchemaError::Tool {
            what: "creating the database on main".into(),
            message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(())
}

/// The source's schema (no rows) as a `pg_dump -Fc --schema-only` archive in main's
/// private socket directory, readable by the user main runs as; restored in two
/// sections around the copy, the second with parallel jobs like `pg_restore -j`.
pub struct SchemaArchive {
    path: PathBuf,
}

impl SchemaArchive {
    pub fn dump(source: &Source, target: &Target) -> Result<SchemaArchive, SchemaError> {
        let path = target.socket_dir.join("schema.dump");
        let mut dump = Command::new(target.bin.tool("pg_dump"));
        let conn = source_env(&mut dump, source);
        dump.args(["-Fc", "--schema-only", "--no-publications", "--no-subscriptions", "--no-tablespaces", "--no-security-labels", "-f"])
            .arg(&path)
            .arg("-d")
            .arg(conn);
        let out = dump.output().map_err(|e| SchemaError::Tool { what: "pg_dump --schema-only".into(), message: e.to_string() })?;
        if !out.status.success() {
            return Err(SchemaError::Tool {
                what: "dumping the schema of the source (pg_dump --schema-only)".into(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        std::os::unix::fs::chown(&path, Some(target.owner.uid), Some(target.owner.gid)).map_err(|e| SchemaError::Tool {
            what: format!("giving the schema dump {} to the target's owner", path.display()),
            message: e.to_string(),
        })?;
        Ok(SchemaArchive { path })
    }

    /// Types, tables, sequences, functions, views: everything the rows need. Stops at
    /// the first error.
    pub fn restore_pre_data(&self, target: &Target) -> Result<(), SchemaError> {
        self.restore(target, "pre-data", 1, true).map(|_| ())
    }

    /// Indexes, constraints, triggers, rules, over the copied rows, `jobs` at a time.
    /// Goes on after an error (e.g. a foreign key that masking broke) and returns them.
    pub fn restore_post_data(&self, target: &Target, jobs: usize) -> Result<Vec<String>, SchemaError> {
        self.restore(target, "post-data", jobs, false)
    }

    fn restore(&self, target: &Target, section: &str, jobs: usize, exit_on_error: bool) -> Result<Vec<String>, SchemaError> {
        let what = format!("restoring the schema on main (pg_restore --section={section})");
        let mut cmd = target.owner.command(target.bin.tool("pg_restore"));
        cmd.arg(format!("--section={section}"))
            .arg(format!("--jobs={}", jobs.max(1)))
            .args(["-U", "postgres", "-h"])
            .arg(&target.socket_dir)
            .arg("-p")
            .arg(target.port.to_string())
            .args(["-d", &target.dbname]);
        if exit_on_error {
            cmd.arg("--exit-on-error");
        }
        cmd.arg(&self.path);
        let out = cmd.output().map_err(|e| SchemaError::Tool { what: what.clone(), message: e.to_string() })?;
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        let errors: Vec<String> =
            stderr.lines().filter(|l| l.contains("error:") && !l.contains("errors ignored on restore")).map(str::to_string).collect();
        if exit_on_error && !out.status.success() {
            return Err(SchemaError::Tool { what, message: stderr.trim().to_string() });
        }
        Ok(errors)
    }
}

impl Drop for SchemaArchive {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}
