//! TLS to the source, as libpq defines it in a connection string: the parameters
//! (`sslmode`, `sslrootcert`, `sslcert`, `sslkey`, `channel_binding`) taken out of the
//! URL into a [`SourceTls`] (tokio-postgres' parser refuses most of them), what each
//! mode means (a rustls client config, see [`config`]), the same parameters written
//! back for libpq's tools, and the errors of a refused handshake in plain words.

pub mod config;
mod params;
#[cfg(test)]
mod tests;

use std::path::PathBuf;

pub use postgres::config::ChannelBinding;

pub use params::{set_params, split};

/// libpq's `sslmode`. Unset means `prefer` (or `verify-full` with `sslrootcert=system`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    /// Plain first; TLS only when the plain connection is refused.
    Allow,
    /// TLS when the server offers it, else plain.
    Prefer,
    /// TLS; the certificate is checked only when `sslrootcert` names a file (then as
    /// `verify-ca`).
    Require,
    /// TLS, and the server's certificate must be signed by `sslrootcert`.
    VerifyCa,
    /// As `verify-ca`, and the certificate must name the host connected to.
    VerifyFull,
}

impl SslMode {
    pub fn name(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    fn parse(v: &str) -> Option<SslMode> {
        Some(match v {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            _ => return None,
        })
    }
}

/// `sslrootcert`: a PEM file of CA certificates, or `system` (the OS trust store).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootCert {
    File(PathBuf),
    System,
}

/// How much of the server's certificate is checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verify {
    Nothing,
    /// Signed by a root in `sslrootcert`.
    Chain,
    /// Signed, and naming the host.
    ChainAndHost,
}

/// The TLS settings of a source URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SourceTls {
    pub mode: SslMode,
    pub root_cert: Option<RootCert>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    pub channel_binding: ChannelBinding,
}

impl Default for SourceTls {
    fn default() -> Self {
        SourceTls { mode: SslMode::Prefer, root_cert: None, cert: None, key: None, channel_binding: ChannelBinding::Prefer }
    }
}

/// Why the source's TLS could not be used; each names what to change.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("TLS settings in --source-url: {0}")]
    BadParam(String),
    #[error("cannot read {param}={path}: {reason}")]
    File { param: &'static str, path: String, reason: String },
    #[error(
        "the source's TLS certificate is not signed by {roots} ({detail}); check sslrootcert, or that the URL reaches the server you mean"
    )]
    UnknownCa { roots: String, detail: String },
    #[error("the source's certificate is for {presented}, not for {host} (sslmode=verify-full); connect with a host name the certificate names (host= in the URL), or use sslmode=verify-ca")]
    WrongHost { host: String, presented: String },
    #[error("the source's TLS certificate is not valid: {0}")]
    BadCertificate(String),
    #[error("the source does not accept TLS connections (ssl = off there?), but sslmode={mode} requires TLS; turn ssl on at the source, or use sslmode=prefer")]
    NotOffered { mode: &'static str },
    #[error("the source asks for a client certificate and none was given; add sslcert=FILE&sslkey=FILE to --source-url")]
    ClientCertRequired,
    #[error("the source refused the client certificate sslcert={cert} ({detail}); it must be signed by a CA in the source's ssl_ca_file")]
    ClientCertRejected { cert: String, detail: String },
    #[error("channel_binding=require, but {0}")]
    ChannelBinding(String),
    #[error("TLS handshake with the source failed: {0}")]
    Handshake(String),
}

impl SourceTls {
    /// Checks the parameters as libpq does. `mode` is None when the URL gave none.
    pub fn new(
        mode: Option<SslMode>,
        root_cert: Option<RootCert>,
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
        channel_binding: ChannelBinding,
    ) -> Result<SourceTls, TlsError> {
        let bad = |s: String| Err(TlsError::BadParam(s));
        let mode = match (mode, &root_cert) {
            (None, Some(RootCert::System)) => SslMode::VerifyFull,
            (Some(m), Some(RootCert::System)) if m != SslMode::VerifyFull => {
                return bad(format!("weak sslmode={} may not be used with sslrootcert=system (use sslmode=verify-full)", m.name()))
            }
            (m, _) => m.unwrap_or(SslMode::Prefer),
        };
        if matches!(mode, SslMode::VerifyCa | SslMode::VerifyFull) && root_cert.is_none() {
            return bad(format!(
                "sslmode={} needs sslrootcert: the CA certificate file that signed the source's certificate, or sslrootcert=system for the OS trust store",
                mode.name()
            ));
        }
        if key.is_some() && cert.is_none() {
            return bad("sslkey is given without sslcert".into());
        }
        if cert.is_some() && key.is_none() {
            return bad("sslcert is given without sslkey (the client certificate's private key)".into());
        }
        if channel_binding == ChannelBinding::Require && mode == SslMode::Disable {
            return bad("channel_binding=require needs TLS, but sslmode=disable".into());
        }
        Ok(SourceTls { mode, root_cert, cert, key, channel_binding })
    }

    pub fn verify(&self) -> Verify {
        match (self.mode, &self.root_cert) {
            (SslMode::VerifyFull, _) => Verify::ChainAndHost,
            (SslMode::VerifyCa, _) => Verify::Chain,
            // libpq: with a root certificate file, the weaker modes verify like verify-ca.
            (_, Some(RootCert::File(_))) => Verify::Chain,
            _ => Verify::Nothing,
        }
    }

    /// The roots in words, for messages.
    pub fn roots_text(&self) -> String {
        match &self.root_cert {
            Some(RootCert::File(p)) => format!("the CA in sslrootcert={}", p.display()),
            Some(RootCert::System) => "a CA of the OS trust store (sslrootcert=system)".into(),
            None => "a trusted CA".into(),
        }
    }

    /// The parameters as libpq's tools take them (`key`, `value`). `sslrootcert=system`
    /// becomes the OS bundle file, which libpq before 16 needs.
    pub fn libpq_params(&self) -> Vec<(&'static str, String)> {
        let mut out = vec![("sslmode", self.mode.name().to_string())];
        match &self.root_cert {
            Some(RootCert::File(p)) => out.push(("sslrootcert", p.display().to_string())),
            Some(RootCert::System) => out.push(("sslrootcert", system_bundle().unwrap_or_else(|| "system".into()))),
            None => {}
        }
        if let Some(p) = &self.cert {
            out.push(("sslcert", p.display().to_string()));
        }
        if let Some(p) = &self.key {
            out.push(("sslkey", p.display().to_string()));
        }
        let cb = match self.channel_binding {
            ChannelBinding::Disable => "disable",
            ChannelBinding::Require => "require",
            _ => "prefer",
        };
        out.push(("channel_binding", cb.into()));
        out
    }
}

/// The OS bundle of trusted CA certificates, where libpq can read it.
fn system_bundle() -> Option<String> {
    ["/etc/ssl/certs/ca-certificates.crt", "/etc/pki/tls/certs/ca-bundle.crt", "/etc/ssl/cert.pem"]
        .into_iter()
        .find(|p| std::path::Path::new(p).is_file())
        .map(str::to_string)
}

/// Explains a failed connection in TLS terms, when TLS is why it failed: looks for a
/// rustls error in `err`'s chain (io::Errors wrap it), or tokio-postgres' "server does
/// not support TLS". `host` is the name the certificate was checked against.
pub fn explain(err: &(dyn std::error::Error + 'static), tls: &SourceTls, host: &str) -> Option<TlsError> {
    let mut next = Some(err);
    while let Some(e) = next {
        if let Some(r) = find_rustls(e) {
            return Some(from_rustls(r, tls, host));
        }
        if e.to_string().contains("server does not support TLS") {
            return Some(TlsError::NotOffered { mode: tls.mode.name() });
        }
        next = e.source();
    }
    None
}

fn find_rustls<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    if let Some(r) = e.downcast_ref::<rustls::Error>() {
        return Some(r);
    }
    let io = e.downcast_ref::<std::io::Error>()?;
    io.get_ref()?.downcast_ref::<rustls::Error>()
}

/// A rustls error in the words of the source's TLS settings.
pub fn from_rustls(e: &rustls::Error, tls: &SourceTls, host: &str) -> TlsError {
    use rustls::{AlertDescription as A, CertificateError as C};
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            C::UnknownIssuer | C::BadSignature => TlsError::UnknownCa { roots: tls.roots_text(), detail: e.to_string() },
            C::NotValidForNameContext { presented, .. } => {
                let names: Vec<String> = presented.iter().map(|n| pretty_name(n)).collect();
                let presented = if names.is_empty() { "no host name at all".to_string() } else { names.join(", ") };
                TlsError::WrongHost { host: host.to_string(), presented }
            }
            C::NotValidForName => TlsError::WrongHost { host: host.to_string(), presented: "other names".into() },
            _ => TlsError::BadCertificate(e.to_string()),
        },
        rustls::Error::AlertReceived(a) => match (a, &tls.cert) {
            (A::CertificateRequired, _) | (A::HandshakeFailure, None) => TlsError::ClientCertRequired,
            (A::UnknownCA | A::BadCertificate | A::CertificateUnknown | A::AccessDenied | A::DecryptError, Some(cert)) => {
                TlsError::ClientCertRejected { cert: cert.display().to_string(), detail: format!("the source sent TLS alert {a:?}") }
            }
            _ => TlsError::Handshake(e.to_string()),
        },
        _ => TlsError::Handshake(e.to_string()),
    }
}

/// webpki's `DnsName("db.example")` / `IpAddress(10.0.0.1)` as `db.example` / `10.0.0.1`.
fn pretty_name(n: &str) -> String {
    let inner = n.strip_prefix("DnsName(").or_else(|| n.strip_prefix("IpAddress(")).and_then(|r| r.strip_suffix(')'));
    inner.map_or(n, |i| i.trim_matches('"')).to_string()
}
