//! What a [`SourceTls`] means to rustls (ring provider): the roots (`sslrootcert`, a
//! PEM file or the OS trust store), how far the server's certificate is checked
//! (nothing, the chain, the chain and the host name), the client certificate, and the
//! `tls-server-end-point` channel binding of SCRAM-SHA-256-PLUS.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::{CertificateError, ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use sha2::{Digest, Sha256, Sha384, Sha512};

use super::{RootCert, SourceTls, TlsError, Verify};

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_err(param: &'static str, path: &std::path::Path, reason: impl std::fmt::Display) -> TlsError {
    TlsError::File { param, path: path.display().to_string(), reason: reason.to_string() }
}

fn roots(root: &RootCert) -> Result<RootCertStore, TlsError> {
    let mut store = RootCertStore::empty();
    match root {
        RootCert::File(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| file_err("sslrootcert", path, e))?;
            if certs.is_empty() {
                return Err(file_err("sslrootcert", path, "it holds no PEM certificate"));
            }
            for c in certs {
                store.add(c).map_err(|e| file_err("sslrootcert", path, e))?;
            }
        }
        RootCert::System => {
            let found = rustls_native_certs::load_native_certs();
            let (added, _) = store.add_parsable_certificates(found.certs);
            if added == 0 {
                let why = found.errors.first().map_or("no CA certificates found".to_string(), |e| e.to_string());
                return Err(TlsError::File { param: "sslrootcert", path: "system".into(), reason: format!("the OS trust store: {why}") });
            }
        }
    }
    Ok(store)
}

/// Checks the server's certificate as far as the mode asks; handshake signatures are
/// always checked.
#[derive(Debug)]
struct Verifier {
    chain: Option<Arc<WebPkiServerVerifier>>,
    check_host: bool,
    provider: Arc<CryptoProvider>,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        // webpki checks the chain first, the name last: a name error means the chain is good.
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp, now) {
            Err(rustls::Error::InvalidCertificate(CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }))
                if !self.check_host =>
            {
                Ok(ServerCertVerified::assertion())
            }
            r => r,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

impl SourceTls {
    /// The rustls client config of these settings (reads the certificate files).
    pub fn client_config(&self) -> Result<Arc<ClientConfig>, TlsError> {
        let provider = provider();
        let verify = self.verify();
        let chain = match (verify, &self.root_cert) {
            (Verify::Nothing, _) => None,
            (_, None) => return Err(TlsError::BadParam(format!("sslmode={} needs sslrootcert", self.mode.name()))),
            (_, Some(root)) => Some(
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots(root)?), provider.clone())
                    .build()
                    .map_err(|e| TlsError::BadParam(format!("sslrootcert: {e}")))?,
            ),
        };
        let verifier = Verifier { chain, check_host: verify == Verify::ChainAndHost, provider: provider.clone() };
        let builder = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Handshake(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier));
        let config = match (&self.cert, &self.key) {
            (Some(cert), Some(key)) => {
                let certs = CertificateDer::pem_file_iter(cert)
                    .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                    .map_err(|e| file_err("sslcert", cert, e))?;
                if certs.is_empty() {
                    return Err(file_err("sslcert", cert, "it holds no PEM certificate"));
                }
                let private = PrivateKeyDer::from_pem_file(key).map_err(|e| file_err("sslkey", key, e))?;
                builder
                    .with_client_auth_cert(certs, private)
                    .map_err(|e| file_err("sslkey", key, format!("it does not fit sslcert={}: {e}", cert.display())))?
            }
            _ => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }

    /// A `MakeTlsConnect` for the `postgres` crate with these settings.
    pub fn make_connect(&self) -> Result<tokio_postgres_rustls::MakeRustlsConnect, TlsError> {
        Ok(tokio_postgres_rustls::MakeRustlsConnect::new((*self.client_config()?).clone()))
    }
}

/// The server name a certificate is checked against: `host` as given (a DNS name or
/// an IP address).
pub fn server_name(host: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(host.to_string())
        .map_err(|e| TlsError::BadParam(format!("host {host} cannot be checked against a certificate: {e}")))
}

/// `tls-server-end-point` channel binding data (RFC 5929): the hash of the server's
/// certificate with its signature's hash (SHA-256 for MD5 and SHA-1); None for
/// signatures without one (Ed25519), which cannot be bound.
pub fn tls_server_end_point(cert_der: &[u8]) -> Option<Vec<u8>> {
    use x509_cert::der::oid::db::rfc5912::{
        ECDSA_WITH_SHA_256, ECDSA_WITH_SHA_384, ECDSA_WITH_SHA_512, ID_SHA_1, ID_SHA_256, ID_SHA_384, ID_SHA_512, MD_5_WITH_RSA_ENCRYPTION,
        SHA_1_WITH_RSA_ENCRYPTION, SHA_256_WITH_RSA_ENCRYPTION, SHA_384_WITH_RSA_ENCRYPTION, SHA_512_WITH_RSA_ENCRYPTION,
    };
    use x509_cert::der::Decode;
    let cert = x509_cert::Certificate::from_der(cert_der).ok()?;
    let oid = cert.signature_algorithm.oid;
    if [ID_SHA_1, ID_SHA_256, MD_5_WITH_RSA_ENCRYPTION, SHA_1_WITH_RSA_ENCRYPTION, SHA_256_WITH_RSA_ENCRYPTION, ECDSA_WITH_SHA_256]
        .contains(&oid)
    {
        Some(Sha256::digest(cert_der).to_vec())
    } else if [ID_SHA_384, SHA_384_WITH_RSA_ENCRYPTION, ECDSA_WITH_SHA_384].contains(&oid) {
        Some(Sha384::digest(cert_der).to_vec())
    } else if [ID_SHA_512, SHA_512_WITH_RSA_ENCRYPTION, ECDSA_WITH_SHA_512].contains(&oid) {
        Some(Sha512::digest(cert_der).to_vec())
    } else {
        None
    }
}
