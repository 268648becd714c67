//! TLS under the replication connection: the SSLRequest, the rustls handshake over
//! the blocking TCP stream, and what SCRAM-SHA-256-PLUS binds to.

use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use bytes::BytesMut;
use postgres_protocol::message::frontend;

use super::{Result, Socket, WireError};
use crate::tls::{self, SourceTls, SslMode, TlsError};

type TlsStream = rustls::StreamOwned<rustls::ClientConnection, TcpStream>;

impl Socket for TlsStream {
    fn read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_read_timeout(t)
    }
    fn write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        self.sock.set_write_timeout(t)
    }
}

/// A TLS session's settings and server, to explain its errors and bind SCRAM to it.
pub(super) struct TlsInfo {
    pub(super) settings: SourceTls,
    pub(super) host: String,
    /// `tls-server-end-point` data; None when the certificate's signature has no hash.
    pub(super) end_point: Option<Vec<u8>>,
}

/// SSLRequest, then the TLS handshake (or plain, if the server declines and the mode
/// is `prefer`). Returns the stream, its peer, and the session's details.
pub(super) fn start_tls(
    mut s: TcpStream,
    settings: &SourceTls,
    host: String,
    timeout: Duration,
    peer: &str,
) -> Result<(Box<dyn Socket>, String, Option<TlsInfo>)> {
    let io_err = |e: io::Error| WireError::Io(io::Error::new(e.kind(), format!("postgres at {peer}: {e}")));
    s.set_read_timeout(Some(timeout)).map_err(io_err)?;
    s.set_write_timeout(Some(timeout)).map_err(io_err)?;
    let mut request = BytesMut::new();
    frontend::ssl_request(&mut request);
    s.write_all(&request).map_err(io_err)?;
    let mut answer = [0u8; 1];
    s.read_exact(&mut answer).map_err(io_err)?;
    match answer[0] {
        b'S' => {}
        b'N' if settings.mode == SslMode::Prefer => return Ok((Box::new(s), peer.to_string(), None)),
        _ => return Err(TlsError::NotOffered { mode: settings.mode.name() }.into()),
    }
    let conn = rustls::ClientConnection::new(settings.client_config()?, tls::config::server_name(&host)?)
        .map_err(|e| TlsError::Handshake(e.to_string()))?;
    let mut stream = rustls::StreamOwned::new(conn, s);
    while stream.conn.is_handshaking() {
        if let Err(e) = stream.conn.complete_io(&mut stream.sock) {
            return Err(tls::explain(&e, settings, &host).map_or_else(|| io_err(e), WireError::Tls));
        }
    }
    let end_point = stream.conn.peer_certificates().and_then(|c| c.first()).and_then(|c| tls::config::tls_server_end_point(c));
    let info = TlsInfo { settings: settings.clone(), host, end_point };
    Ok((Box::new(stream), peer.to_string(), Some(info)))
}
