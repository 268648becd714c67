//! The control protocol between `pgbranch` and its daemon: one JSON request per line,
//! one JSON response per line, over the store's owner-only Unix socket.

use serde::{Deserialize, Serialize};

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    Status,
    List,
    Path {
        name: String,
    },
    CreateBranch {
        name: String,
        from: Option<String>,
        #[serde(default)]
        start: bool,
        #[serde(default)]
        ttl_secs: Option<u64>,
        #[serde(default)]
        protect: bool,
    },
    BranchStart {
        name: String,
    },
    BranchStop {
        name: String,
    },
    BranchUrl {
        name: String,
    },
    BranchReset {
        name: String,
    },
    Protect {
        name: String,
        protect: bool,
    },
    /// Records the follower after the CLI base-backed-up into `main`, and starts it.
    FollowRegister {
        source_url: String,
        slot: String,
        pg_bin: String,
    },
    FollowStop {
        drop_slot: bool,
    },
    /// Starts an ordinary read-write server on `main` for the masked follower to fill.
    LogicalMainStart {
        user: String,
        dbname: String,
        pg_bin: String,
    },
    /// Records the masked follower once main holds the initial copy; starts its stream.
    FollowRegisterLogical(LogicalFollow),
    /// The follower's source URL, password included (the socket is owner-only).
    FollowSourceUrl,
    /// Replaces the masked follower's transform config and restarts its stream.
    FollowReload {
        config_name: String,
        config_text: String,
    },
    CreateSnapshot {
        name: String,
        from: String,
    },
    Delete {
        name: String,
        snapshot: bool,
    },
    Du,
    Gc,
    Verify,
    Commit,
    Shutdown,
}

/// A masked follower, as `clone stream --config` hands it to the daemon.
#[derive(Debug, Serialize, Deserialize)]
pub struct LogicalFollow {
    pub source_url: String,
    pub slot: String,
    pub publication: String,
    pub pg_bin: String,
    /// The config file's name as the user gave it (for messages), and its text.
    pub config_name: String,
    pub config_text: String,
    pub strict: bool,
    /// pgbranch created the publication (else a superuser made it for a role that is
    /// not one): `clone stop --drop-slot` drops only what pgbranch created.
    pub publication_created: bool,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default)]
    pub data: serde_json::Value,
}

impl Response {
    pub fn ok(data: serde_json::Value) -> Response {
        Response { ok: true, error: None, data }
    }
    pub fn err(e: impl std::fmt::Display) -> Response {
        Response { ok: false, error: Some(e.to_string()), data: serde_json::Value::Null }
    }
}

/// The answer to `CreateBranch` and `CreateSnapshot`: where the new branch or snapshot
/// is mounted; its server's URL when one was started; how long the O(1) cut took.
#[derive(Debug, Serialize, Deserialize)]
pub struct Created {
    pub name: String,
    pub path: std::path::PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_micros: Option<u64>,
}

/// The answer to `BranchUrl`, `BranchStart` and the follower registrations: a branch
/// server's URL (and, for `BranchUrl`, whether it runs).
#[derive(Debug, Serialize, Deserialize)]
pub struct BranchUrl {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub running: Option<bool>,
}

/// The answer to `LogicalMainStart`: how the masked clone reaches main's new server.
#[derive(Debug, Serialize, Deserialize)]
pub struct MainServer {
    pub socket_dir: std::path::PathBuf,
    pub port: u16,
    pub password: Option<String>,
}
