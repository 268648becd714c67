//! Reading and rewriting the TLS parameters of a connection string, in both of libpq's
//! forms: a URL (`postgresql://...?sslmode=verify-full&sslrootcert=/ca.pem`, values
//! percent-encoded) and keyword/value (`host=h sslmode='verify-full'`).

use std::path::PathBuf;

use super::{ChannelBinding, RootCert, SourceTls, SslMode, TlsError};

/// The parameters taken out of the string: what tokio-postgres' parser refuses.
const TLS_KEYS: [&str; 6] = ["sslmode", "sslrootcert", "sslcert", "sslkey", "channel_binding", "ssl"];
/// libpq parameters that are refused rather than silently dropped.
const UNSUPPORTED: [&str; 4] = ["sslpassword", "sslcrl", "sslcrldir", "sslkeylogfile"];

fn is_url(s: &str) -> bool {
    s.starts_with("postgresql://") || s.starts_with("postgres://")
}

/// Splits a source connection string into one tokio-postgres accepts (the TLS
/// parameters removed; `sslmode` is set on its Config by the caller) and the TLS
/// settings, checked as libpq checks them.
pub fn split(conn: &str) -> Result<(String, SourceTls), TlsError> {
    let (rest, pairs) = if is_url(conn) { split_url(conn) } else { split_keywords(conn)? };
    let mut mode = None;
    let (mut root_cert, mut cert, mut key) = (None, None, None);
    let mut channel_binding = ChannelBinding::Prefer;
    let path = |v: &str| (!v.is_empty()).then(|| PathBuf::from(v));
    for (k, v) in pairs {
        match k.as_str() {
            "sslmode" => {
                mode = Some(SslMode::parse(&v).ok_or_else(|| {
                    TlsError::BadParam(format!("sslmode={v} is not a mode; use disable, allow, prefer, require, verify-ca or verify-full"))
                })?)
            }
            // libpq's compatibility spelling of sslmode=require.
            "ssl" if v == "true" => mode = mode.or(Some(SslMode::Require)),
            "ssl" => return Err(TlsError::BadParam(format!("ssl={v}: only ssl=true is understood (use sslmode=...)"))),
            "sslrootcert" if v == "system" => root_cert = Some(RootCert::System),
            "sslrootcert" => root_cert = path(&v).map(RootCert::File),
            "sslcert" => cert = path(&v),
            "sslkey" => key = path(&v),
            "channel_binding" => {
                channel_binding = match v.as_str() {
                    "disable" => ChannelBinding::Disable,
                    "prefer" => ChannelBinding::Prefer,
                    "require" => ChannelBinding::Require,
                    _ => return Err(TlsError::BadParam(format!("channel_binding={v}: use disable, prefer or require"))),
                }
            }
            other => {
                return Err(TlsError::BadParam(format!(
                    "{other} is not supported (an encrypted sslkey, CRLs and key logs are not); remove it from the URL"
                )))
            }
        }
    }
    Ok((rest, SourceTls::new(mode, root_cert, cert, key, channel_binding)?))
}

fn wanted(key: &str) -> bool {
    TLS_KEYS.contains(&key) || UNSUPPORTED.contains(&key)
}

/// The URL without the TLS parameters, and those parameters (decoded).
fn split_url(url: &str) -> (String, Vec<(String, String)>) {
    let Some((base, query)) = url.split_once('?') else {
        return (url.to_string(), Vec::new());
    };
    let (mut kept, mut taken) = (Vec::new(), Vec::new());
    for part in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        let k = decode(k);
        if wanted(&k) {
            taken.push((k, decode(v)));
        } else {
            kept.push(part);
        }
    }
    let rest = if kept.is_empty() { base.to_string() } else { format!("{base}?{}", kept.join("&")) };
    (rest, taken)
}

fn decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        match (b[i], b.get(i + 1).and_then(|&c| hex(c)), b.get(i + 2).and_then(|&c| hex(c))) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// One `key = value` of a keyword/value string, value unquoted.
fn keywords(s: &str) -> Result<Vec<(String, String)>, TlsError> {
    let bad = |why: &str| TlsError::BadParam(format!("cannot read the connection string: {why}"));
    let mut out = Vec::new();
    let mut it = s.chars().peekable();
    loop {
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.peek().is_none() {
            return Ok(out);
        }
        let mut key = String::new();
        while let Some(c) = it.next_if(|c| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        if it.next() != Some('=') {
            return Err(bad(&format!("'{key}' has no '='")));
        }
        while it.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if it.next_if_eq(&'\'').is_some() {
            loop {
                match it.next() {
                    Some('\\') => value.push(it.next().ok_or_else(|| bad("unterminated quoted string"))?),
                    Some('\'') => break,
                    Some(c) => value.push(c),
                    None => return Err(bad("unterminated quoted string")),
                }
            }
        } else {
            while let Some(c) = it.next_if(|c| !c.is_whitespace()) {
                value.push(if c == '\\' { it.next().unwrap_or('\\') } else { c });
            }
        }
        out.push((key, value));
    }
}

fn quote(v: &str) -> String {
    format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn split_keywords(s: &str) -> Result<(String, Vec<(String, String)>), TlsError> {
    let (taken, kept): (Vec<_>, Vec<_>) = keywords(s)?.into_iter().partition(|(k, _)| wanted(k));
    let rest = kept.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect::<Vec<_>>().join(" ");
    Ok((rest, taken))
}

/// `conn` with each `(key, value)` set (replacing the key where it is, else added).
pub fn set_params(conn: &str, params: &[(&str, String)]) -> Result<String, TlsError> {
    if !is_url(conn) {
        let mut pairs = keywords(conn)?;
        for (k, v) in params {
            match pairs.iter_mut().find(|(pk, _)| pk == k) {
                Some(p) => p.1 = v.clone(),
                None => pairs.push((k.to_string(), v.clone())),
            }
        }
        return Ok(pairs.iter().map(|(k, v)| format!("{k}={}", quote(v))).collect::<Vec<_>>().join(" "));
    }
    let (base, query) = conn.split_once('?').unwrap_or((conn, ""));
    let mut parts: Vec<String> = query.split('&').filter(|p| !p.is_empty()).map(str::to_string).collect();
    for (k, v) in params {
        let new = format!("{k}={}", encode(v));
        match parts.iter_mut().find(|p| decode(p.split_once('=').map_or(p.as_str(), |(pk, _)| pk)) == *k) {
            Some(p) => *p = new,
            None => parts.push(new),
        }
    }
    Ok(if parts.is_empty() { base.to_string() } else { format!("{base}?{}", parts.join("&")) })
}
