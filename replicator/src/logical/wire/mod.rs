//! The client side of PostgreSQL's streaming replication protocol, for logical
//! replication: a `replication=database` connection (startup, password/md5/SCRAM
//! authentication, simple queries and replication commands) and the CopyBoth stream
//! of `START_REPLICATION ... LOGICAL`. Blocking I/O over TCP (TLS as the URL's
//! `sslmode` says, with rustls; SCRAM-SHA-256-PLUS channel binding) or a unix socket.
//! Framing and authentication primitives come from `postgres-protocol`.

use std::fmt;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use postgres::config::{ChannelBinding, Host};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{self, ScramSha256};
use postgres_protocol::message::{backend::Header, frontend};

use crate::catalog::quote_ident;
use crate::tls::{self, SourceTls, SslMode, TlsError};
use messages::{be_u64, connect_tcp, now_pg_micros, one_row, parse_data_row, parse_error_fields, proto};
use tls_conn::{start_tls, TlsInfo};

pub use super::lsn::{Lsn, ParseLsnError};

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The socket failed; the message names the server address.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// An ErrorResponse from the server.
    #[error("server error {code}: {message}{}", .detail.as_deref().map(|d| format!(" (detail: {d})")).unwrap_or_default())]
    Server { code: String, message: String, detail: Option<String> },
    #[error("authentication: {0}")]
    Auth(String),
    #[error("replication protocol: {0}")]
    Protocol(String),
    /// The connection settings cannot be used (no host or user, TLS required, ...).
    #[error("replication connection settings: {0}")]
    Config(String),
    /// The server ended the replication stream (CopyDone, end of streaming at
    /// shutdown, or the connection closed without an error message).
    #[error("replication stream ended: {0}")]
    StreamEnded(String),
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl WireError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            WireError::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

type Result<T, E = WireError> = std::result::Result<T, E>;

/// What `CREATE_REPLICATION_SLOT ... EXPORT_SNAPSHOT` returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreatedSlot {
    pub slot: String,
    /// Changes committed after this point are streamed; everything before is in the snapshot.
    pub consistent_point: Lsn,
    /// For `SET TRANSACTION SNAPSHOT`, valid until the next command on the connection.
    pub snapshot_name: String,
}

/// What `IDENTIFY_SYSTEM` returned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SystemInfo {
    pub system_id: String,
    pub timeline: u32,
    /// The current WAL flush position of the server.
    pub xlog_pos: Lsn,
    pub dbname: Option<String>,
}

/// One message of the replication stream.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StreamMsg {
    /// `data` is one pgoutput message (see [`super::pgoutput::decode`]).
    XLogData { wal_start: Lsn, wal_end: Lsn, data: Vec<u8> },
    /// With `reply_requested`, answer with [`ReplicationConn::send_status`] soon, or
    /// the server drops the connection after `wal_sender_timeout`.
    Keepalive { wal_end: Lsn, reply_requested: bool },
}

/// A TCP or unix socket: reads, writes and their timeouts are all this needs.
trait Socket: Read + Write + Send {
    fn read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

macro_rules! socket {
    ($t:ty) => {
        impl Socket for $t {
            fn read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
                self.set_read_timeout(t)
            }
            fn write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
                self.set_write_timeout(t)
            }
        }
    };
}
socket!(TcpStream);
socket!(UnixStream);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Idle,
    Streaming,
    /// After a fatal error or the end of the stream: nothing more can be done.
    Broken,
}

/// A `replication=database` connection. Holds no password.
pub struct ReplicationConn {
    stream: Box<dyn Socket>,
    peer: String,
    rbuf: BytesMut,
    wbuf: BytesMut,
    scratch: Vec<u8>,
    read_timeout: Option<Duration>,
    state: State,
    server_version: Option<String>,
    tls: Option<TlsInfo>,
}

impl fmt::Debug for ReplicationConn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplicationConn")
            .field("peer", &self.peer)
            .field("state", &self.state)
            .field("server_version", &self.server_version)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

/// A complete backend message: its tag and its body (without the length word).
struct Frame {
    tag: u8,
    body: BytesMut,
}

impl ReplicationConn {
    /// Connects with `replication=database` to the host/port/user/password/dbname of
    /// `config` (first host; a unix socket directory means `<dir>/.s.PGSQL.<port>`),
    /// connect timeout from the config or 10 s, TLS over TCP as `tls` says (unix
    /// sockets stay plain). Auth: trust, cleartext, md5, SCRAM-SHA-256, and
    /// SCRAM-SHA-256-PLUS (channel binding, per `tls.channel_binding`) over TLS.
    pub fn connect(config: &postgres::Config, tls: &SourceTls) -> Result<Self> {
        match tls.mode {
            SslMode::Disable => Self::connect_with(config, tls, false),
            // libpq's allow: plain first, TLS when the plain connection is refused.
            SslMode::Allow => Self::connect_with(config, tls, false).or_else(|_| Self::connect_with(config, tls, true)),
            _ => Self::connect_with(config, tls, true),
        }
    }

    fn connect_with(config: &postgres::Config, settings: &SourceTls, use_tls: bool) -> Result<Self> {
        let user = config.get_user().ok_or_else(|| WireError::Config("no user given".into()))?;
        let dbname = config.get_dbname().unwrap_or(user);
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let timeout = config.get_connect_timeout().copied().unwrap_or(Duration::from_secs(10));
        let (stream, peer, tls) = match (config.get_hosts().first(), config.get_hostaddrs().first()) {
            (Some(Host::Unix(dir)), _) => {
                let path = dir.join(format!(".s.PGSQL.{port}"));
                let peer = path.display().to_string();
                let s =
                    UnixStream::connect(&path).map_err(|e| io::Error::new(e.kind(), format!("connecting to postgres at {peer}: {e}")))?;
                (Box::new(s) as Box<dyn Socket>, peer, None)
            }
            (host, addr) => {
                let name = match (host, addr) {
                    (_, Some(ip)) => ip.to_string(),
                    (Some(Host::Tcp(h)), None) => h.clone(),
                    _ => return Err(WireError::Config("no host given".into())),
                };
                let peer = if name.contains(':') { format!("[{name}]:{port}") } else { format!("{name}:{port}") };
                let s = connect_tcp(&name, port, timeout)
                    .map_err(|e| io::Error::new(e.kind(), format!("connecting to postgres at {peer}: {e}")))?;
                // The certificate names the host as given, not the address (hostaddr).
                let host = match host {
                    Some(Host::Tcp(h)) => h.clone(),
                    _ => name.clone(),
                };
                match use_tls {
                    true => start_tls(s, settings, host, timeout, &peer)?,
                    false => (Box::new(s) as Box<dyn Socket>, peer, None),
                }
            }
        };
        let mut conn = ReplicationConn::new(stream, peer);
        conn.tls = tls;
        conn.stream.write_timeout(Some(timeout)).map_err(|e| conn.io_err(e))?;
        let deadline = Instant::now() + timeout;
        conn.startup(config, user, dbname, deadline)?;
        // Replication commands may wait a long time (e.g. for running transactions
        // before a slot is consistent), so only the startup is bounded by the timeout.
        conn.stream.write_timeout(None).map_err(|e| conn.io_err(e))?;
        Ok(conn)
    }

    fn new(stream: Box<dyn Socket>, peer: String) -> ReplicationConn {
        ReplicationConn {
            stream,
            peer,
            rbuf: BytesMut::with_capacity(64 * 1024),
            wbuf: BytesMut::with_capacity(1024),
            scratch: vec![0; 64 * 1024],
            read_timeout: None,
            state: State::Idle,
            server_version: None,
            tls: None,
        }
    }

    /// The server's `server_version` parameter, as reported at startup.
    pub fn server_version(&self) -> Option<&str> {
        self.server_version.as_deref()
    }

    /// An I/O error, or what TLS says went wrong (e.g. the source refused our client
    /// certificate, which TLS 1.3 reports at the first read).
    fn io_err(&self, e: io::Error) -> WireError {
        if let Some(t) = self.tls.as_ref().and_then(|t| tls::explain(&e, &t.settings, &t.host)) {
            return WireError::Tls(t);
        }
        WireError::Io(io::Error::new(e.kind(), format!("postgres at {}: {e}", self.peer)))
    }

    fn startup(&mut self, config: &postgres::Config, user: &str, dbname: &str, deadline: Instant) -> Result<()> {
        let mut params = vec![
            ("user", user),
            ("database", dbname),
            ("replication", "database"),
            ("client_encoding", "UTF8"),
            ("application_name", config.get_application_name().unwrap_or("pgbranch")),
        ];
        if let Some(options) = config.get_options() {
            params.push(("options", options));
        }
        frontend::startup_message(params, &mut self.wbuf).map_err(|e| WireError::Config(format!("startup parameters: {e}")))?;
        self.flush()?;
        let password = config.get_password();
        let need_password = || WireError::Auth("the server asks for a password, but none was given".into());
        let mut scram: Option<ScramSha256> = None;
        let policy = config.get_channel_binding();
        let mut bound = false;
        // Checked before any password is sent: channel_binding=require accepts only SCRAM-SHA-256-PLUS.
        let unbound = |what: &str| -> WireError { TlsError::ChannelBinding(format!("the source {what}")).into() };
        loop {
            let frame = self.startup_frame(deadline)?;
            match frame.tag {
                b'R' => {}
                b'E' => return Err(self.fatal(parse_error_fields(&frame.body))),
                b'N' | b'v' => continue,
                t => return Err(WireError::Protocol(format!("unexpected message {:?} during authentication", t as char))),
            }
            let mut body = &frame.body[..];
            if body.len() < 4 {
                return Err(WireError::Protocol("short authentication message".into()));
            }
            let kind = body.get_i32();
            if policy == ChannelBinding::Require && !bound && kind != 10 && kind != 11 && kind != 12 {
                let how = if self.tls.is_none() {
                    "connection is not over TLS"
                } else {
                    "authenticated without SCRAM-SHA-256 (its pg_hba.conf method for this connection is not scram-sha-256)"
                };
                return Err(self.fatal(unbound(&format!("{how}; channel binding needs scram-sha-256 over TLS"))));
            }
            match kind {
                0 => break,
                3 => frontend::password_message(password.ok_or_else(need_password)?, &mut self.wbuf)
                    .map_err(|_| WireError::Auth("the password contains a NUL byte".into()))?,
                5 => {
                    let salt: [u8; 4] =
                        body.get(..4).and_then(|s| s.try_into().ok()).ok_or_else(|| WireError::Protocol("short md5 salt".into()))?;
                    let hash = md5_hash(user.as_bytes(), password.ok_or_else(need_password)?, salt);
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf).map_err(proto)?;
                }
                10 => {
                    let mechanisms: Vec<&[u8]> = body.split(|&b| b == 0).filter(|m| !m.is_empty()).collect();
                    let offers = |m: &str| mechanisms.contains(&m.as_bytes());
                    let end_point = match policy {
                        ChannelBinding::Disable => None,
                        _ => self.tls.as_ref().and_then(|t| t.end_point.clone()),
                    };
                    let (mechanism, binding) = match end_point {
                        Some(data) if offers(sasl::SCRAM_SHA_256_PLUS) => {
                            bound = true;
                            (sasl::SCRAM_SHA_256_PLUS, sasl::ChannelBinding::tls_server_end_point(data))
                        }
                        _ if policy == ChannelBinding::Require => {
                            let why = if self.tls.is_none() {
                                "connection is not over TLS"
                            } else {
                                "does not offer SCRAM-SHA-256-PLUS on this connection"
                            };
                            return Err(self.fatal(unbound(why)));
                        }
                        // We could bind, but the server did not offer it ('y'): lets it detect a downgrade.
                        Some(_) => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unrequested()),
                        None => (sasl::SCRAM_SHA_256, sasl::ChannelBinding::unsupported()),
                    };
                    if !offers(mechanism) {
                        let names: Vec<_> = mechanisms.iter().map(|m| String::from_utf8_lossy(m)).collect();
                        return Err(WireError::Auth(format!("no supported SASL mechanism offered (server offers {})", names.join(", "))));
                    }
                    let s = ScramSha256::new(password.ok_or_else(need_password)?, binding);
                    frontend::sasl_initial_response(mechanism, s.message(), &mut self.wbuf).map_err(proto)?;
                    scram = Some(s);
                }
                11 => {
                    let s = scram.as_mut().ok_or_else(|| WireError::Protocol("SASL continue without a SASL start".into()))?;
                    s.update(body).map_err(|e| WireError::Auth(format!("SCRAM-SHA-256: {e}")))?;
                    frontend::sasl_response(s.message(), &mut self.wbuf).map_err(proto)?;
                }
                12 => {
                    let s = scram.as_mut().ok_or_else(|| WireError::Protocol("SASL final without a SASL start".into()))?;
                    s.finish(body).map_err(|e| WireError::Auth(format!("SCRAM-SHA-256: {e}")))?;
                    continue;
                }
                other => {
                    let name = match other {
                        2 => "Kerberos V5",
                        7 | 8 => "GSSAPI",
                        9 => "SSPI",
                        _ => "unknown",
                    };
                    return Err(WireError::Auth(format!("{name} authentication (request {other}) is not supported")));
                }
            }
            self.flush()?;
        }
        loop {
            let frame = self.startup_frame(deadline)?;
            match frame.tag {
                b'Z' => return Ok(()),
                b'S' => {
                    let mut parts = frame.body[..].split(|&b| b == 0);
                    if parts.next() == Some(&b"server_version"[..]) {
                        self.server_version = parts.next().map(|v| String::from_utf8_lossy(v).into_owned());
                    }
                }
                b'K' | b'N' => {}
                b'E' => return Err(self.fatal(parse_error_fields(&frame.body))),
                t => return Err(WireError::Protocol(format!("unexpected message {:?} after authentication", t as char))),
            }
        }
    }

    fn startup_frame(&mut self, deadline: Instant) -> Result<Frame> {
        match self.read_frame(Some(deadline))? {
            Some(f) => Ok(f),
            None => Err(self.io_err(io::Error::new(io::ErrorKind::TimedOut, "no answer to the connection startup in time"))),
        }
    }

    fn fatal(&mut self, e: WireError) -> WireError {
        self.state = State::Broken;
        e
    }

    fn flush(&mut self) -> Result<()> {
        let r = self.stream.write_all(&self.wbuf).and_then(|_| self.stream.flush());
        self.wbuf.clear();
        r.map_err(|e| {
            self.state = State::Broken;
            self.io_err(e)
        })
    }

    /// The next complete message, reading as needed until `deadline` (None: forever).
    /// Partial messages stay in the buffer, so a timeout loses nothing.
    fn read_frame(&mut self, deadline: Option<Instant>) -> Result<Option<Frame>> {
        loop {
            if let Some(header) = Header::parse(&self.rbuf).map_err(|e| self.fatal(WireError::Protocol(e.to_string())))? {
                let total = header.len() as usize + 1;
                if self.rbuf.len() >= total {
                    let mut frame = self.rbuf.split_to(total);
                    frame.advance(5);
                    return Ok(Some(Frame { tag: header.tag(), body: frame }));
                }
            }
            let timeout = match deadline {
                None => None,
                Some(d) => {
                    let now = Instant::now();
                    if now >= d {
                        return Ok(None);
                    }
                    Some((d - now).max(Duration::from_millis(1)))
                }
            };
            if timeout != self.read_timeout {
                self.stream.read_timeout(timeout).map_err(|e| self.io_err(e))?;
                self.read_timeout = timeout;
            }
            match self.stream.read(&mut self.scratch) {
                Ok(0) => {
                    let partial = if self.rbuf.is_empty() { "" } else { " in the middle of a message" };
                    let e = WireError::StreamEnded(format!("postgres at {} closed the connection{partial}", self.peer));
                    return Err(self.fatal(e));
                }
                Ok(n) => self.rbuf.extend_from_slice(&self.scratch[..n]),
                Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                    if deadline.is_some_and(|d| Instant::now() >= d) {
                        return Ok(None);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    self.state = State::Broken;
                    return Err(self.io_err(e));
                }
            }
        }
    }

    fn require(&self, want: State, what: &str) -> Result<()> {
        if self.state == want {
            return Ok(());
        }
        Err(WireError::Protocol(match self.state {
            State::Broken => format!("{what}: the connection is no longer usable after an earlier error"),
            State::Streaming => format!("{what}: the connection is streaming"),
            State::Idle => format!("{what}: the connection is not streaming (call start_logical first)"),
        }))
    }

    /// Simple query; returns the rows of the last result set as text (None = NULL).
    /// Statements without rows (`SET`, ...) do not replace earlier rows.
    pub fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>> {
        self.run(sql, false)
    }

    /// Sends a query and reads its results up to ReadyForQuery, or (if `stream`) up to
    /// the CopyBothResponse that starts a replication stream.
    fn run(&mut self, sql: &str, stream: bool) -> Result<Vec<Vec<Option<String>>>> {
        self.require(State::Idle, if stream { "START_REPLICATION" } else { "simple query" })?;
        frontend::query(sql, &mut self.wbuf).map_err(|_| WireError::Protocol("the query contains a NUL byte".into()))?;
        self.flush()?;
        let (mut rows, mut error) = (Vec::new(), None);
        loop {
            let frame = self.read_frame(None)?.expect("no deadline");
            match frame.tag {
                b'T' => rows.clear(),
                b'D' => match parse_data_row(&frame.body) {
                    Ok(row) => rows.push(row),
                    Err(e) => error = error.or(Some(e)),
                },
                b'C' | b'I' | b'N' | b'S' => {}
                b'E' => error = Some(parse_error_fields(&frame.body)),
                b'Z' if stream => return Err(error.unwrap_or_else(|| proto("START_REPLICATION finished without streaming"))),
                b'Z' => return error.map_or(Ok(rows), Err),
                b'W' if stream && error.is_none() => {
                    self.state = State::Streaming;
                    return Ok(rows);
                }
                b'G' | b'H' | b'W' => return Err(self.fatal(proto("simple_query cannot run COPY or START_REPLICATION"))),
                t => return Err(self.fatal(proto(format!("unexpected message {:?} in a query result", t as char)))),
            }
        }
    }

    /// `IDENTIFY_SYSTEM`: system id, timeline, current WAL flush position, database.
    pub fn identify_system(&mut self) -> Result<SystemInfo> {
        let rows = self.simple_query("IDENTIFY_SYSTEM")?;
        let text = one_row(&rows, 4, "IDENTIFY_SYSTEM")?;
        Ok(SystemInfo {
            system_id: text(0)?,
            timeline: text(1)?.parse().map_err(|_| WireError::Protocol("IDENTIFY_SYSTEM: bad timeline".into()))?,
            xlog_pos: text(2)?.parse().map_err(proto)?,
            dbname: rows[0][3].clone(),
        })
    }

    /// `CREATE_REPLICATION_SLOT "<slot>" LOGICAL pgoutput EXPORT_SNAPSHOT` (the legacy
    /// syntax, accepted by PostgreSQL 10 to 17). The exported snapshot stays valid until
    /// the next command on this connection.
    pub fn create_logical_slot(&mut self, slot: &str) -> Result<CreatedSlot> {
        let rows = self.simple_query(&format!("CREATE_REPLICATION_SLOT {} LOGICAL pgoutput EXPORT_SNAPSHOT", quote_ident(slot)))?;
        let text = one_row(&rows, 3, "CREATE_REPLICATION_SLOT")?;
        Ok(CreatedSlot { slot: text(0)?, consistent_point: text(1)?.parse().map_err(proto)?, snapshot_name: text(2)? })
    }

    /// `START_REPLICATION SLOT "<slot>" LOGICAL <start> (proto_version '1',
    /// publication_names '"<publication>"')`; returns once the server switched to
    /// CopyBoth. Transactions whose commit ends at or before `start` (or before the
    /// slot's confirmed flush position, if later) are not sent.
    pub fn start_logical(&mut self, slot: &str, start: Lsn, publication: &str) -> Result<()> {
        let publications = quote_ident(publication).replace('\'', "''");
        let slot = quote_ident(slot);
        self.run(&format!("START_REPLICATION SLOT {slot} LOGICAL {start} (proto_version '1', publication_names '{publications}')"), true)?;
        Ok(())
    }

    /// The next message of the stream; `Ok(None)` if none arrived within `timeout`
    /// (a partly received message is kept for the next call). An ErrorResponse becomes
    /// `WireError::Server`; the end of the stream (CopyDone, the end of streaming at
    /// server shutdown, the connection closing) becomes `WireError::StreamEnded`.
    pub fn recv(&mut self, timeout: Duration) -> Result<Option<StreamMsg>> {
        self.require(State::Streaming, "recv")?;
        let deadline = Instant::now() + timeout;
        loop {
            let Some(frame) = self.read_frame(Some(deadline))? else { return Ok(None) };
            let body = &frame.body[..];
            match frame.tag {
                b'd' => match body.first() {
                    Some(b'w') if body.len() >= 25 => {
                        return Ok(Some(StreamMsg::XLogData {
                            wal_start: Lsn(be_u64(&body[1..])),
                            wal_end: Lsn(be_u64(&body[9..])),
                            data: body[25..].to_vec(),
                        }))
                    }
                    Some(b'k') if body.len() >= 18 => {
                        return Ok(Some(StreamMsg::Keepalive { wal_end: Lsn(be_u64(&body[1..])), reply_requested: body[17] != 0 }))
                    }
                    other => {
                        let what = other.map_or("an empty".to_string(), |t| format!("a {:?}", *t as char));
                        return Err(
                            self.fatal(WireError::Protocol(format!("{what} CopyData message of {} bytes in the stream", body.len())))
                        );
                    }
                },
                b'N' | b'S' => {}
                b'E' => return Err(self.fatal(parse_error_fields(body))),
                b'c' => return Err(self.fatal(WireError::StreamEnded("the server sent CopyDone".into()))),
                b'C' => {
                    let tag = String::from_utf8_lossy(body.strip_suffix(b"\0").unwrap_or(body)).into_owned();
                    return Err(self.fatal(WireError::StreamEnded(format!("the server finished streaming ({tag}), e.g. at shutdown"))));
                }
                t => return Err(self.fatal(WireError::Protocol(format!("unexpected message {:?} in the stream", t as char)))),
            }
        }
    }

    /// Standby status update: the positions written, flushed (durably applied; the
    /// slot's `confirmed_flush_lsn` follows it) and applied, the client clock, and
    /// whether the server should answer with a keepalive at once.
    pub fn send_status(&mut self, written: Lsn, flushed: Lsn, applied: Lsn, reply_requested: bool) -> Result<()> {
        self.require(State::Streaming, "send_status")?;
        let mut msg = Vec::with_capacity(34);
        msg.push(b'r');
        for lsn in [written, flushed, applied] {
            msg.extend_from_slice(&lsn.0.to_be_bytes());
        }
        msg.extend_from_slice(&now_pg_micros().to_be_bytes());
        msg.push(u8::from(reply_requested));
        frontend::CopyData::new(&msg[..]).map_err(proto)?.write(&mut self.wbuf);
        self.flush()
    }
}

impl Drop for ReplicationConn {
    /// Says goodbye, so the server ends the session (and releases the slot) at once.
    fn drop(&mut self) {
        if self.state == State::Broken {
            return;
        }
        let _ = self.stream.write_timeout(Some(Duration::from_secs(1)));
        self.wbuf.clear();
        frontend::terminate(&mut self.wbuf);
        let _ = self.stream.write_all(&self.wbuf);
    }
}

mod messages;
mod tls_conn;

#[cfg(test)]
mod tests;
