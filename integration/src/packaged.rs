//! A source set up the way Debian and Ubuntu package PostgreSQL: a cluster made by
//! `pg_createcluster` (postgresql-common), whose postgresql.conf, pg_hba.conf,
//! pg_ident.conf and conf.d/ live in /etc/postgresql/VERSION/NAME, outside PGDATA,
//! started by `pg_ctlcluster`. Its data directory and socket are under the test's own
//! temporary directory; the cluster (and its /etc directory) is dropped on drop.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::{pg, pg_env, Server};

pub struct PackagedCluster {
    pub version: u32,
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    pub password: String,
    /// psql/pgbench against it over its socket (not stopped on drop: the cluster is).
    pub server: Server,
}

fn run(cmd: &mut Command, what: &str) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(out.status.success(), "{what} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
}

impl PackagedCluster {
    /// Creates and starts a cluster of Debian's PostgreSQL with `settings` in
    /// conf.d/tuned.conf (as an administrator would add them), the `postgres` role with
    /// a password, reachable on 127.0.0.1 with the package's own pg_hba.conf.
    pub fn start(tag: &str, settings: &[&str]) -> PackagedCluster {
        let (bin, owner) = pg_env();
        let version = bin.major().expect("postgres --version");
        let name = format!("pgb-{tag}-{}", std::process::id());
        let dir = std::env::temp_dir().join(format!("pgbranch-packaged-{name}"));
        // Clusters a killed run of this test left behind (drop runs only on unwinding).
        let stale_prefix = format!("pgb-{tag}-");
        for e in std::fs::read_dir(Self::conf_dir_of(version, "")).into_iter().flatten().flatten() {
            let stale = e.file_name().to_string_lossy().into_owned();
            // Only a cluster whose test process is gone: another run may be going on.
            let owner_pid = stale.strip_prefix(&stale_prefix).and_then(|p| p.parse::<i32>().ok());
            if owner_pid.is_some_and(|p| p == std::process::id() as i32 || !crate::pid_alive(p)) {
                let _ = Command::new("pg_dropcluster").args(["--stop", &version.to_string(), &stale]).output();
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        owner.private_dir(&dir.join("run")).unwrap();
        let port = pg::free_port().unwrap();
        let data = dir.join("data");
        run(
            Command::new("pg_createcluster")
                .arg("--quiet")
                .arg(version.to_string())
                .arg(&name)
                .arg("-d")
                .arg(&data)
                .arg("-s")
                .arg(dir.join("run"))
                .arg("-l")
                .arg(dir.join("postgres.log"))
                .arg("-p")
                .arg(port.to_string())
                .args(["--start-conf=manual", "--", "--data-checksums"]),
            "pg_createcluster",
        );
        let conf_dir = Self::conf_dir_of(version, &name);
        assert!(
            conf_dir.join("postgresql.conf").exists() && !data.join("postgresql.conf").exists(),
            "a packaged layout keeps its configuration outside PGDATA"
        );
        crate::append_lines(&conf_dir.join("conf.d").join("tuned.conf"), &settings.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        std::os::unix::fs::chown(conf_dir.join("conf.d").join("tuned.conf"), Some(owner.uid), Some(owner.gid)).ok();
        let mut c = PackagedCluster {
            version,
            name,
            dir: dir.clone(),
            port,
            password: "packaged-secret".into(),
            server: Server::adopt(&bin, &owner, &data, &dir.join("run"), port, None),
        };
        c.ctl("start");
        let sql = format!("ALTER ROLE postgres PASSWORD '{}'", c.password);
        c.server.psql("postgres", &sql).expect("setting the source's password");
        c
    }

    fn conf_dir_of(version: u32, name: &str) -> PathBuf {
        Path::new("/etc/postgresql").join(version.to_string()).join(name)
    }

    pub fn conf_dir(&self) -> PathBuf {
        Self::conf_dir_of(self.version, &self.name)
    }

    /// `pg_ctlcluster VERSION NAME ACTION` (start, stop, restart: fast mode).
    pub fn ctl(&mut self, action: &str) {
        run(
            Command::new("pg_ctlcluster").args(["-m", "fast", &self.version.to_string(), &self.name, action]),
            &format!("pg_ctlcluster {action}"),
        );
        if action != "stop" {
            // The socket answers once the server accepts connections.
            let t = std::time::Instant::now();
            while self.server.psql("postgres", "SELECT 1").is_err() {
                assert!(t.elapsed() < Duration::from_secs(60), "the packaged cluster did not come up after {action}");
                std::thread::sleep(Duration::from_millis(200));
            }
        }
    }

    /// Adds settings to conf.d (a file read after tuned.conf) and restarts the cluster.
    pub fn raise(&mut self, settings: &[&str]) {
        crate::append_lines(
            &self.conf_dir().join("conf.d").join("zz-raised.conf"),
            &settings.iter().map(|s| s.to_string()).collect::<Vec<_>>(),
        );
        self.ctl("restart");
    }

    pub fn url(&self) -> String {
        format!("postgresql://postgres:{}@127.0.0.1:{}/postgres", self.password, self.port)
    }
}

impl Drop for PackagedCluster {
    fn drop(&mut self) {
        let _ = Command::new("pg_dropcluster").args(["--stop", &self.version.to_string(), &self.name]).output();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
