//! A native baseline: postgres initdb'd in a plain directory on the same disk as the
//! store, with the settings the benchmarks give a branch, to measure ratios against.

use std::path::PathBuf;

use anyhow::Result;

use crate::{pg, pg_env, Server};

/// A postgres initdb'd in a plain directory on the same disk, same settings.
pub struct Native {
    server: Option<Server>,
    dir: PathBuf,
}

impl Native {
    pub fn init(tag: &str) -> Result<Native> {
        let (bin, owner) = pg_env();
        let dir = std::env::temp_dir().join(format!("pgbranch-bench-native-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        owner.private_dir(&dir)?;
        let data = dir.join("data");
        let mut initdb = owner.command(bin.tool("initdb"));
        initdb.arg("-D").arg(&data).args(["--data-checksums", "-U", "postgres", "--auth=trust", "--no-instructions", "-E", "UTF8"]);
        owner.run(&mut initdb, "initdb (native)")?;
        let server = Server::start(&bin, &owner, &data, &dir.join("run"), pg::free_port()?)?;
        Ok(Native { server: Some(server), dir })
    }

    pub fn server(&self) -> &Server {
        self.server.as_ref().unwrap()
    }
}

impl Drop for Native {
    fn drop(&mut self) {
        drop(self.server.take());
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
