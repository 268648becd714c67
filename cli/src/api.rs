//! The control protocol between `pgbranch` and its daemon: one JSON request per line,
//! one JSON response per line, over the store's owner-only Unix socket.

use std::path::PathBuf;

use pgbranch_fs::catalog::Kind;
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
        /// Start from `from`'s newest retained point at or before this instant.
        #[serde(default)]
        at_unix_micros: Option<u64>,
        /// Or at or before this WAL position (a postgres branch).
        #[serde(default)]
        at_lsn: Option<u64>,
        /// The new branch's own retention window.
        #[serde(default)]
        history_secs: Option<u64>,
    },
    /// The retained points of a branch and the window in force.
    BranchLog {
        name: String,
    },
    /// Sets a branch's retention window.
    BranchSetHistory {
        name: String,
        history: HistorySetting,
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

impl Request {
    /// The request's name on the wire (its `op`), for messages.
    pub fn op(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::List => "list",
            Request::Path { .. } => "path",
            Request::CreateBranch { .. } => "create_branch",
            Request::BranchLog { .. } => "branch_log",
            Request::BranchSetHistory { .. } => "branch_set_history",
            Request::BranchStart { .. } => "branch_start",
            Request::BranchStop { .. } => "branch_stop",
            Request::BranchUrl { .. } => "branch_url",
            Request::BranchReset { .. } => "branch_reset",
            Request::Protect { .. } => "protect",
            Request::FollowRegister { .. } => "follow_register",
            Request::FollowStop { .. } => "follow_stop",
            Request::LogicalMainStart { .. } => "logical_main_start",
            Request::FollowRegisterLogical(_) => "follow_register_logical",
            Request::FollowSourceUrl => "follow_source_url",
            Request::FollowReload { .. } => "follow_reload",
            Request::CreateSnapshot { .. } => "create_snapshot",
            Request::Delete { .. } => "delete",
            Request::Du => "du",
            Request::Gc => "gc",
            Request::Verify => "verify",
            Request::Commit => "commit",
            Request::Shutdown => "shutdown",
        }
    }
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
    pub path: PathBuf,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub create_micros: Option<u64>,
    /// For `--at`: the retained point the branch was made from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from_point: Option<PointInfo>,
}

/// A branch's retention window: its own, or the store's default.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum HistorySetting {
    /// Back to the store's default (`history` in pgbranch.toml).
    StoreDefault,
    Window {
        secs: u64,
    },
}

/// One retained point of a branch.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PointInfo {
    /// RFC 3339, UTC.
    pub at: String,
    pub at_unix_micros: u64,
    pub root: String,
    /// Bytes of file blocks its commit stored.
    pub changed_bytes: u64,
    /// For a postgres branch: how far its WAL went when the point was committed (an
    /// upper bound of what the point holds).
    #[serde(default)]
    pub lsn: Option<String>,
    /// For a standby: its last replayed commit's time then.
    #[serde(default)]
    pub last_commit_unix_micros: Option<u64>,
}

/// The answer to `BranchLog` and `BranchSetHistory`.
#[derive(Debug, Serialize, Deserialize)]
pub struct BranchLog {
    pub name: String,
    /// The window in force (0: no history kept).
    pub history_secs: u64,
    /// Whether the window is the branch's own (else the store's default).
    pub own_window: bool,
    /// Oldest first.
    pub points: Vec<PointInfo>,
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
    pub socket_dir: PathBuf,
    pub port: u16,
    pub password: Option<String>,
}

/// Whether a catalog entry is a writable branch or a read-only snapshot; serialized as
/// `"branch"` / `"snapshot"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BranchKind {
    Branch,
    Snapshot,
}

impl From<Kind> for BranchKind {
    fn from(k: Kind) -> BranchKind {
        match k {
            Kind::Branch => BranchKind::Branch,
            Kind::Snapshot => BranchKind::Snapshot,
        }
    }
}

impl BranchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BranchKind::Branch => "branch",
            BranchKind::Snapshot => "snapshot",
        }
    }
}

/// How the follower keeps `main` in sync; serialized as `"physical"` / `"logical"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowerMode {
    /// `main` is a hot standby of the source.
    Physical,
    /// `main` is a read-write server the masked change stream fills.
    Logical,
}

/// What the follower is doing now, as `status` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FollowerState {
    /// Waiting for main's server or the stream's first connection.
    Starting,
    Streaming,
    /// The stream failed transiently and is retried with backoff.
    Reconnecting,
    /// The stream stopped on an error that needs the user (see `stream_error`).
    Error,
    /// `clone stop` stopped it.
    Stopped,
}

impl FollowerState {
    /// The state named by the stream thread's status text (`StreamStatus::state`).
    pub fn from_stream(text: &str) -> Option<FollowerState> {
        Some(match text {
            "starting" => FollowerState::Starting,
            "streaming" => FollowerState::Streaming,
            "reconnecting" => FollowerState::Reconnecting,
            "error" => FollowerState::Error,
            "stopped" => FollowerState::Stopped,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FollowerState::Starting => "starting",
            FollowerState::Streaming => "streaming",
            FollowerState::Reconnecting => "reconnecting",
            FollowerState::Error => "error",
            FollowerState::Stopped => "stopped",
        }
    }
}

/// One hot-standby setting raised on main to match the source.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RaisedSetting {
    pub name: String,
    pub from: i64,
    pub to: i64,
    pub at_unix: i64,
}

/// One entry of `List` (and of `Status.branches`).
#[derive(Debug, Serialize, Deserialize)]
pub struct BranchInfo {
    pub name: String,
    pub kind: BranchKind,
    pub path: PathBuf,
    pub mounted: bool,
    pub read_only: bool,
    pub parent: Option<String>,
    pub created_unix: i64,
    pub head: String,
    pub open_handles: u64,
    pub dirty_bytes: u64,
    pub running: bool,
    pub port: Option<u16>,
    pub expires_unix: Option<i64>,
    pub protected: bool,
}

/// The follower's part of `Status`. The mode-specific fields are absent when they do
/// not apply (physical: `settings_raised`, `standby_restarts`, lag; logical: config,
/// stream counters, lag); `error` says why the lag could not be measured.
#[derive(Debug, Serialize, Deserialize)]
pub struct FollowerStatus {
    /// The source URL without its password.
    pub source: String,
    pub slot: String,
    pub mode: FollowerMode,
    pub state: FollowerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publication: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strict: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub replay_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_applied: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transactions_applied: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows_per_sec: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_lsn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settings_raised: Option<Vec<RaisedSetting>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub standby_restarts: Option<u64>,
}

impl FollowerStatus {
    /// A follower's status with only what every mode reports.
    pub fn new(source: String, slot: String, mode: FollowerMode, state: FollowerState) -> FollowerStatus {
        FollowerStatus {
            source,
            slot,
            mode,
            state,
            publication: None,
            config: None,
            strict: None,
            applied_lsn: None,
            replay_lsn: None,
            rows_applied: None,
            transactions_applied: None,
            rows_per_sec: None,
            stream_error: None,
            source_lsn: None,
            lag_bytes: None,
            lag_seconds: None,
            error: None,
            settings_raised: None,
            standby_restarts: None,
        }
    }
}

/// The answer to `Status`. New facts go in as new fields (clients ignore fields they
/// do not know).
#[derive(Debug, Serialize, Deserialize)]
pub struct Status {
    pub pid: u32,
    pub store: PathBuf,
    pub uptime_secs: u64,
    pub branch_owner_uid: u32,
    pub rss_bytes: u64,
    pub peak_rss_bytes: u64,
    pub physical_bytes: u64,
    pub objects: u64,
    pub follower: Option<FollowerStatus>,
    /// What holds the store's space (measured even on a full disk).
    pub space: Space,
    pub branches: Vec<BranchInfo>,
    /// What garbage collection has done, and who runs it.
    #[serde(default)]
    pub gc: Option<GcStatus>,
    /// The store's default retention window (seconds; 0: no history).
    #[serde(default)]
    pub history_secs: u64,
}

/// Who collects garbage (`pgbranch.toml`'s `gc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GcMode {
    Auto,
    Manual,
}

/// The garbage collector's part of `Status` (`repo::GcActivity`).
#[derive(Debug, Serialize, Deserialize)]
pub struct GcStatus {
    pub mode: GcMode,
    pub running: bool,
    /// Collections finished since the daemon started, manual and automatic.
    pub collections: u64,
    pub last_finished_unix_micros: Option<u64>,
    pub last: Option<GcDone>,
    /// Bytes the heads and retained points needed at the last collection.
    pub live_bytes: u64,
    /// How long the last collection took.
    #[serde(default)]
    pub last_duration_millis: u64,
    /// The automatic GC starts once the store passes this size (absent before the first
    /// collection, or in manual mode).
    pub next_at_bytes: Option<u64>,
    pub bytes_freed_total: u64,
    pub objects_removed_total: u64,
    pub last_error: Option<String>,
}

/// The store's space in `Status`: measured, or why it could not be.
#[derive(Debug, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Space {
    Measured(StoreSpace),
    Unknown { error: String },
}

/// What holds the store's space (`daemon::space::measure`).
#[derive(Debug, Serialize, Deserialize)]
pub struct StoreSpace {
    /// Size of the filesystem holding the store's data.
    pub fs_total_bytes: u64,
    /// Free bytes on it, as an unprivileged user may use them.
    pub fs_free_bytes: u64,
    /// Free bytes below `full_margin_bytes`: commits may fail.
    pub full: bool,
    pub full_margin_bytes: u64,
    /// Bytes allocated on disk (not apparent sizes) to each part of the store.
    pub packs_bytes: u64,
    pub index_bytes: u64,
    pub catalog_bytes: u64,
    pub intent_logs: Vec<LogSpace>,
    /// The emergency reserve (`data/reserve`), kept while there is room and given back
    /// when the disk is full so that `branch delete` and `gc` can run; 0 while given back.
    #[serde(default)]
    pub reserve_bytes: u64,
    /// Everything else under `data/` (servers.json, keys, stale files).
    pub other_bytes: u64,
}

/// One intent log's space in [`StoreSpace`].
#[derive(Debug, Serialize, Deserialize)]
pub struct LogSpace {
    /// The branch owning the log, or `(none: id N)` for a log no branch names.
    pub branch: String,
    pub bytes: u64,
}

/// The answer to `Path`.
#[derive(Debug, Serialize, Deserialize)]
pub struct BranchPath {
    pub path: PathBuf,
}

/// The answer to `BranchStop`: the branch whose server stopped.
#[derive(Debug, Serialize, Deserialize)]
pub struct ServerStopped {
    pub stopped: String,
}

/// The answer to `BranchReset`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ResetDone {
    pub name: String,
    pub parent: String,
    /// The branch server's URL (same port and password), when it has one.
    pub url: Option<String>,
}

/// The answer to `Protect`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Protected {
    pub name: String,
    pub protected: bool,
}

/// The answer to `Delete`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Deleted {
    pub deleted: String,
}

/// The answer to `FollowStop`.
#[derive(Debug, Serialize, Deserialize)]
pub struct FollowStopped {
    pub stopped: bool,
    pub slot_dropped: bool,
}

/// The answer to `FollowSourceUrl`.
#[derive(Debug, Serialize, Deserialize)]
pub struct SourceUrl {
    pub source_url: String,
}

/// The answer to `FollowReload`.
#[derive(Debug, Serialize, Deserialize)]
pub struct Reloaded {
    pub reloaded: bool,
}

/// The answer to `Commit`: everything dirty is committed.
#[derive(Debug, Serialize, Deserialize)]
pub struct Committed {}

/// The answer to `Shutdown`, sent once the daemon committed and unmounted everything.
#[derive(Debug, Serialize, Deserialize)]
pub struct Stopping {
    /// The daemon's pid: it exits right after answering.
    pub stopping: u32,
}

/// One branch's storage in `Du`.
#[derive(Debug, Serialize, Deserialize)]
pub struct BranchUsage {
    pub name: String,
    pub kind: BranchKind,
    pub logical_bytes: u64,
    pub unique_bytes: u64,
    pub shared_bytes: u64,
    /// Dirty blocks not yet in a commit (counted when a commit before `du` failed).
    pub uncommitted_bytes: u64,
    /// Stored bytes its retained points hold that no head does.
    #[serde(default)]
    pub history_bytes: u64,
    #[serde(default)]
    pub history_points: u64,
}

/// The answer to `Du` (`repo::Usage`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Usage {
    pub branches: Vec<BranchUsage>,
    pub physical_bytes: u64,
    pub distinct_bytes: u64,
    pub stored_block_bytes: u64,
    pub tree_node_bytes: u64,
    /// Stored bytes no head and no retained point reaches (what `gc` would reclaim,
    /// less blocks of large writes not yet committed).
    #[serde(default)]
    pub unreferenced_bytes: u64,
    pub compression_ratio: f64,
    pub dedup_ratio: f64,
    /// Why a branch could not be committed first (e.g. a full disk), if one could not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub commit_error: Option<String>,
}

/// The answer to `Gc` (`gc::GcReport`).
#[derive(Debug, Serialize, Deserialize)]
pub struct GcDone {
    pub objects_removed: u64,
    pub packs_rewritten: u64,
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// Objects found dead that a commit named again while GC ran (kept).
    #[serde(default)]
    pub objects_revived: u64,
}

/// One damaged object `Verify` found: which branch, file and offset it belongs to.
#[derive(Debug, Serialize, Deserialize)]
pub struct Damage {
    pub branch: String,
    pub path: String,
    pub offset: Option<u64>,
    pub object: String,
    pub error: String,
}

/// The answer to `Verify` (`repo::VerifyReport`).
#[derive(Debug, Serialize, Deserialize)]
pub struct Verified {
    pub objects_checked: u64,
    pub damaged: Vec<Damage>,
}
