//! TLS client configuration for upstreams: CA roots (system, or a CA file), name
//! verification, SPKI pinning (RFC 7858 section 4.2) and certificate-expiry tracking.
//! Verification is never switched off: without CA checks a pin must match.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use sha2::{Digest, Sha256};

use crate::config::UpstreamServer;

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("cannot load CA file {path}: {message}")]
    CaFile { path: String, message: String },
    #[error("no usable root certificates")]
    NoRoots,
    #[error("invalid TLS name {0:?}")]
    Name(String),
    #[error("invalid SPKI pin: {0}")]
    Pin(String),
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Decodes a base64 SHA-256 SPKI pin; the error names what is wrong.
pub fn decode_pin(pin: &str) -> Result<[u8; 32], String> {
    let raw = base64::engine::general_purpose::STANDARD
        .decode(pin.trim())
        .map_err(|e| format!("not valid base64: {e}"))?;
    raw.as_slice()
        .try_into()
        .map_err(|_| format!("decodes to {} bytes; a SHA-256 pin has 32", raw.len()))
}

/// Base64 SHA-256 of a certificate's SubjectPublicKeyInfo.
pub fn spki_pin_of(cert_der: &[u8]) -> Option<String> {
    let digest = spki_sha256(cert_der)?;
    Some(base64::engine::general_purpose::STANDARD.encode(digest))
}

fn spki_sha256(cert_der: &[u8]) -> Option<[u8; 32]> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(Sha256::digest(cert.tbs_certificate.subject_pki.raw).into())
}

fn not_after(cert_der: &[u8]) -> Option<i64> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der).ok()?;
    Some(cert.validity().not_after.timestamp())
}

pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Loads the roots: a CA file when given, otherwise the system store, otherwise the
/// bundled Mozilla roots (for minimal images without a CA bundle).
pub fn load_roots(ca_file: Option<&Path>) -> Result<RootCertStore, TlsConfigError> {
    use rustls::pki_types::pem::PemObject;
    let mut roots = RootCertStore::empty();
    if let Some(path) = ca_file {
        let err = |m: String| TlsConfigError::CaFile {
            path: path.display().to_string(),
            message: m,
        };
        let certs = CertificateDer::pem_file_iter(path).map_err(|e| err(e.to_string()))?;
        for c in certs {
            let c = c.map_err(|e| err(e.to_string()))?;
            roots.add(c).map_err(|e| err(e.to_string()))?;
        }
        if roots.is_empty() {
            return Err(err("no certificates in file".into()));
        }
        return Ok(roots);
    }
    let native = rustls_native_certs::load_native_certs();
    let (added, _) = roots.add_parsable_certificates(native.certs);
    if added == 0 {
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    }
    if roots.is_empty() {
        return Err(TlsConfigError::NoRoots);
    }
    Ok(roots)
}

/// Verifies CA chain and name (unless turned off with pins), then pins, and records the
/// end-entity certificate's expiry time.
#[derive(Debug)]
pub struct UpstreamVerifier {
    webpki: Option<Arc<WebPkiServerVerifier>>,
    pins: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
    /// Unix time the last verified certificate expires (0 = none seen yet).
    pub cert_not_after: Arc<AtomicI64>,
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if let Some(v) = &self.webpki {
            v.verify_server_cert(end_entity, intermediates, server_name, ocsp, now)?;
        } else {
            // Pin-only: still refuse an expired or not-yet-valid leaf.
            let (_, cert) = x509_parser::parse_x509_certificate(end_entity).map_err(|_| {
                rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding)
            })?;
            let t = now.as_secs() as i64;
            if t > cert.validity().not_after.timestamp() {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::Expired,
                ));
            }
            if t < cert.validity().not_before.timestamp() {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::NotValidYet,
                ));
            }
        }
        if !self.pins.is_empty() {
            let matched = std::iter::once(end_entity)
                .chain(intermediates.iter())
                .filter_map(|c| spki_sha256(c))
                .any(|d| self.pins.contains(&d));
            if !matched {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        if let Some(t) = not_after(end_entity) {
            self.cert_not_after.store(t, Ordering::Relaxed);
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a TLS upstream connects with.
pub struct TlsSetup {
    pub config: Arc<ClientConfig>,
    pub server_name: ServerName<'static>,
    pub cert_not_after: Arc<AtomicI64>,
}

/// Builds the client config for one server. `default_ca` is the global `tls.ca_file`.
pub fn build(
    server: &UpstreamServer,
    default_ca: Option<&Path>,
) -> Result<TlsSetup, TlsConfigError> {
    let provider = provider();
    let pins = server
        .spki_pins
        .iter()
        .map(|p| decode_pin(p).map_err(TlsConfigError::Pin))
        .collect::<Result<Vec<_>, _>>()?;
    let webpki = if server.verify_ca || pins.is_empty() {
        let roots = load_roots(server.ca_file.as_deref().or(default_ca))?;
        Some(
            WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .map_err(|e| TlsConfigError::Rustls(rustls::Error::General(e.to_string())))?,
        )
    } else {
        None
    };
    let cert_not_after = Arc::new(AtomicI64::new(0));
    let verifier = UpstreamVerifier {
        webpki,
        pins,
        provider: provider.clone(),
        cert_not_after: cert_not_after.clone(),
    };
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth();
    config.resumption = rustls::client::Resumption::in_memory_sessions(64);
    let name = server
        .tls_name
        .clone()
        .unwrap_or_else(|| server.address.ip().to_string());
    let server_name = ServerName::try_from(name.clone()).map_err(|_| TlsConfigError::Name(name))?;
    Ok(TlsSetup {
        config: Arc::new(config),
        server_name,
        cert_not_after,
    })
}
