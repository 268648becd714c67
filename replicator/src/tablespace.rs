//! The source's tablespaces in a copy. A base backup writes each tablespace at the
//! source's absolute path by default: on the source's host that collides with the
//! source, elsewhere it writes outside the store. pgbranch maps each one into the copy
//! instead and leaves it there as an *in-place* tablespace — a directory at
//! `pg_tblspc/OID` rather than a symbolic link — so every branch cut from the copy has
//! its own copy-on-write tablespaces, with no link pointing out of the branch.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum TablespaceError {
    #[error("listing the source's tablespaces: {0}")]
    List(String),
    #[error("tablespace {name} (oid {oid}): {what} {path}: {source}")]
    Io { name: String, oid: u32, what: &'static str, path: PathBuf, source: std::io::Error },
}

/// A tablespace of the source outside its data directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tablespace {
    pub oid: u32,
    pub name: String,
    /// Its directory on the source's host.
    pub location: String,
}

/// The source's tablespaces that live outside its data directory (not pg_default,
/// pg_global or in-place ones).
pub fn list(client: &mut postgres::Client) -> Result<Vec<Tablespace>, TablespaceError> {
    let rows = client
        .query(
            "SELECT oid::int8, spcname::text, pg_tablespace_location(oid) FROM pg_tablespace \
             WHERE pg_tablespace_location(oid) LIKE '/%' ORDER BY oid",
            &[],
        )
        .map_err(|e| TablespaceError::List(e.to_string()))?;
    Ok(rows.iter().map(|r| Tablespace { oid: r.get::<_, i64>(0) as u32, name: r.get(1), location: r.get(2) }).collect())
}

/// Where the base backup writes a tablespace inside the copy (`--tablespace-mapping`
/// needs an absolute path; [`make_in_place`] then moves it to `pg_tblspc/OID`).
pub fn staging_dir(data: &Path, t: &Tablespace) -> PathBuf {
    data.join(format!("pgbranch_tablespace_{}", t.oid))
}

/// `--tablespace-mapping` arguments for pg_basebackup (`=` in a path is escaped).
pub fn mapping_args(data: &Path, tablespaces: &[Tablespace]) -> Vec<String> {
    let esc = |s: &str| s.replace('=', "\\=");
    tablespaces
        .iter()
        .map(|t| format!("--tablespace-mapping={}={}", esc(&t.location), esc(&staging_dir(data, t).display().to_string())))
        .collect()
}

/// Replaces each `pg_tblspc/OID` link the base backup made with the tablespace's
/// directory itself.
pub fn make_in_place(data: &Path, tablespaces: &[Tablespace]) -> Result<(), TablespaceError> {
    for t in tablespaces {
        let err = |what: &'static str, path: &Path| {
            let (name, oid, path) = (t.name.clone(), t.oid, path.to_path_buf());
            move |source| TablespaceError::Io { name, oid, what, path, source }
        };
        let link = data.join("pg_tblspc").join(t.oid.to_string());
        let staged = staging_dir(data, t);
        if std::fs::symlink_metadata(&link).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&link).map_err(err("removing the link", &link))?;
        }
        std::fs::rename(&staged, &link).map_err(err("moving into place", &staged))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mapping_arguments_escape_equals() {
        let t = Tablespace { oid: 16384, name: "fast".into(), location: "/srv/a=b".into() };
        assert_eq!(
            mapping_args(Path::new("/store/mnt/main"), &[t]),
            vec!["--tablespace-mapping=/srv/a\\=b=/store/mnt/main/pgbranch_tablespace_16384".to_string()]
        );
    }

    #[test]
    fn links_become_directories() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        let t = Tablespace { oid: 16390, name: "ts".into(), location: "/elsewhere".into() };
        std::fs::create_dir_all(data.join("pg_tblspc")).unwrap();
        std::fs::create_dir_all(staging_dir(data, &t).join("PG_15_x")).unwrap();
        std::os::unix::fs::symlink(staging_dir(data, &t), data.join("pg_tblspc/16390")).unwrap();
        make_in_place(data, std::slice::from_ref(&t)).unwrap();
        let meta = std::fs::symlink_metadata(data.join("pg_tblspc/16390")).unwrap();
        assert!(meta.is_dir());
        assert!(data.join("pg_tblspc/16390/PG_15_x").is_dir());
        assert!(!staging_dir(data, &t).exists());
    }
}
