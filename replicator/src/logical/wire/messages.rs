//! Small pieces of the protocol: decoding ErrorResponse fields and DataRows, the
//! server's clock, and the TCP connection itself.

use std::fmt;
use std::io;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Buf;

use super::{Result, WireError};

/// Microseconds since 2000-01-01 (the server's clock epoch).
pub(super) fn now_pg_micros() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_micros() as i64 - 946_684_800_000_000
}

pub(super) fn parse_error_fields(body: &[u8]) -> WireError {
    let (mut code, mut message, mut detail, mut severity) = (String::new(), String::new(), None, String::new());
    let mut rest = body;
    while let Some((&kind, tail)) = rest.split_first() {
        if kind == 0 {
            break;
        }
        let end = tail.iter().position(|&b| b == 0).unwrap_or(tail.len());
        let value = String::from_utf8_lossy(&tail[..end]).into_owned();
        rest = tail.get(end + 1..).unwrap_or(&[]);
        match kind {
            b'C' => code = value,
            b'M' => message = value,
            b'D' => detail = Some(value),
            b'V' => severity = value,
            _ => {}
        }
    }
    if !severity.is_empty() {
        message = format!("{severity}: {message}");
    }
    WireError::Server { code, message, detail }
}

pub(super) fn proto(e: impl fmt::Display) -> WireError {
    WireError::Protocol(e.to_string())
}

pub(super) fn be_u64(b: &[u8]) -> u64 {
    u64::from_be_bytes(b[..8].try_into().unwrap())
}

pub(super) fn connect_tcp(host: &str, port: u16, timeout: Duration) -> io::Result<TcpStream> {
    let mut last = io::Error::new(io::ErrorKind::NotFound, "the host name resolves to no address");
    for addr in (host, port).to_socket_addrs()? {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(s) => {
                s.set_nodelay(true)?;
                return Ok(s);
            }
            Err(e) => last = e,
        }
    }
    Err(last)
}

pub(super) fn parse_data_row(body: &[u8]) -> Result<Vec<Option<String>>> {
    let bad = || proto("malformed DataRow");
    let mut b = body;
    let n = if b.len() >= 2 {
        b.get_u16()
    } else {
        return Err(bad());
    };
    let mut row = Vec::with_capacity(n as usize);
    for _ in 0..n {
        let len = if b.len() >= 4 {
            b.get_i32()
        } else {
            return Err(bad());
        };
        let Ok(len) = usize::try_from(len) else {
            row.push(None);
            continue;
        };
        let value = b.get(..len).ok_or_else(bad)?;
        row.push(Some(String::from_utf8(value.to_vec()).map_err(|_| proto("a value in a query result is not UTF-8"))?));
        b.advance(len);
    }
    Ok(row)
}

/// Checks that a command returned one row; gives its non-NULL columns by index.
pub(super) fn one_row<'a>(
    rows: &'a [Vec<Option<String>>],
    min_cols: usize,
    what: &'a str,
) -> Result<impl Fn(usize) -> Result<String> + 'a> {
    match rows {
        [row] if row.len() >= min_cols => {
            Ok(move |i: usize| row[i].clone().ok_or_else(|| WireError::Protocol(format!("{what}: column {i} is NULL"))))
        }
        _ => Err(WireError::Protocol(format!("{what}: expected one row of at least {min_cols} columns, got {rows:?}"))),
    }
}
