//! TLS material for tests, made with the `openssl` CLI: a throwaway CA, a server
//! certificate for `localhost` and `127.0.0.1`, a client certificate for the user
//! `postgres`, and a second CA that signed none of them; and a source that accepts
//! only TLS connections with them.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::{SourceDb, SourceOptions};

static COUNTER: AtomicUsize = AtomicUsize::new(0);

const OPENSSL_CONF: &str = "[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[ca]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[server]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
[client]
basicConstraints = CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = clientAuth
";

/// Certificate files in a directory only root can read (mode 0700), removed on drop:
/// what a user hands pgbranch, which postgres' own user could not read.
pub struct Certs {
    pub dir: PathBuf,
    /// The CA that signed the server and client certificates.
    pub ca: PathBuf,
    /// A CA that signed neither.
    pub other_ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    /// For the user `postgres`; its key is 0644, which libpq would refuse as it is.
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl").args(args).current_dir(dir).output().expect("running openssl");
    assert!(out.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

const EC: [&str; 4] = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1"];

fn make_ca(dir: &Path, name: &str, cn: &str) {
    let (key, crt, subj) = (format!("{name}.key"), format!("{name}.crt"), format!("/CN={cn}"));
    let mut args = vec!["req", "-x509", "-new", "-nodes", "-days", "30", "-config", "openssl.cnf", "-extensions", "ca"];
    args.extend(EC);
    args.extend(["-keyout", &key, "-out", &crt, "-subj", &subj]);
    openssl(dir, &args);
}

fn make_leaf(dir: &Path, name: &str, cn: &str, extensions: &str) {
    let (key, csr, crt, subj) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"), format!("/CN={cn}"));
    let mut args = vec!["req", "-new", "-nodes", "-config", "openssl.cnf"];
    args.extend(EC);
    args.extend(["-keyout", &key, "-out", &csr, "-subj", &subj]);
    openssl(dir, &args);
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "30",
            "-extfile",
            "openssl.cnf",
            "-extensions",
            extensions,
            "-out",
            &crt,
        ],
    );
}

fn chmod(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

impl Certs {
    pub fn make(tag: &str) -> Certs {
        let dir =
            std::env::temp_dir().join(format!("pgbranch-certs-{tag}-{}-{}", std::process::id(), COUNTER.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        chmod(&dir, 0o700);
        std::fs::write(dir.join("openssl.cnf"), OPENSSL_CONF).unwrap();
        make_ca(&dir, "ca", "pgbranch test CA");
        make_ca(&dir, "other-ca", "some other CA");
        make_leaf(&dir, "server", "localhost", "server");
        make_leaf(&dir, "client", "postgres", "client");
        chmod(&dir.join("client.key"), 0o644);
        Certs {
            ca: dir.join("ca.crt"),
            other_ca: dir.join("other-ca.crt"),
            server_cert: dir.join("server.crt"),
            server_key: dir.join("server.key"),
            client_cert: dir.join("client.crt"),
            client_key: dir.join("client.key"),
            dir,
        }
    }

    /// A source that accepts only TLS on loopback, authenticating with `method`
    /// (`scram-sha-256`, or `cert` for client certificates) for sessions and
    /// replication alike. `settings` are extra postgresql.conf lines.
    pub fn source(&self, tag: &str, method: &str, settings: &[&str]) -> SourceDb {
        let read = |p: &Path| std::fs::read(p).unwrap();
        let mut all: Vec<String> = ["ssl = on", "ssl_cert_file = 'server.crt'", "ssl_key_file = 'server.key'", "ssl_ca_file = 'root.crt'"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        all.extend(settings.iter().map(|s| s.to_string()));
        SourceDb::start_with(
            tag,
            SourceOptions {
                settings: all,
                hba: vec![format!("hostssl all all 127.0.0.1/32 {method}"), format!("hostssl replication all 127.0.0.1/32 {method}")],
                hba_only: true,
                files: vec![
                    ("server.crt".into(), read(&self.server_cert), 0o644),
                    ("server.key".into(), read(&self.server_key), 0o600),
                    ("root.crt".into(), read(&self.ca), 0o644),
                ],
                ..Default::default()
            },
        )
    }
}

impl Drop for Certs {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// `postgresql://postgres[:password]@HOST:PORT/postgres?PARAMS`.
pub fn url(source: &SourceDb, host: &str, password: bool, params: &str) -> String {
    let auth = if password { format!("postgres:{}", source.password) } else { "postgres".into() };
    format!("postgresql://{auth}@{host}:{}/postgres?{params}", source.server.port)
}
