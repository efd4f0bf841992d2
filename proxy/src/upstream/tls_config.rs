//! TLS client configuration for upstreams: CA roots (system, or a CA file), name
//! verification, SPKI pinning (RFC 7858 section 4.2) and certificate-expiry tracking.
//! Verification is never switched off: without CA checks a pin must match.

use std::path::Path;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;

use base64::Engine;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
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
    #[error("TLS setup: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("{0}")]
    Setup(String),
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

/// Verifies the server's certificate: CA chain and name (unless turned off with pins),
/// then pins, and records the end-entity certificate's expiry time.
///
/// A pin counts only for a key that provably vouches for the leaf: the leaf's own key, or
/// the key of a certificate on a chain from the leaf whose every signature verifies. With
/// `verify_ca`, that is the chain webpki built to a trusted root (every chain it can build
/// is tried, so a cross-signed path through the pinned key is found). Without it, the
/// presented certificates whose keys are pinned become the only trust anchors (each must be
/// a CA, within its validity period) and webpki builds the chain from the leaf to one of
/// them, checking signatures, validity, CA basic constraints and the name. A certificate
/// that is merely sent along (anyone can download a public CA's certificate) vouches for
/// nothing.
#[derive(Debug)]
pub struct UpstreamVerifier {
    /// Trusted roots; `None` for pin-only authentication (`verify_ca: false`).
    roots: Option<Arc<RootCertStore>>,
    pins: Vec<[u8; 32]>,
    provider: Arc<CryptoProvider>,
    /// Unix time the last verified certificate expires (0 = none seen yet).
    pub cert_not_after: Arc<AtomicI64>,
}

/// A certificate error for a chain on which no key is pinned.
fn unpinned() -> rustls::Error {
    rustls::Error::InvalidCertificate(rustls::CertificateError::ApplicationVerificationFailure)
}

/// webpki's verdict as rustls's (the mapping rustls's own verifier makes, for the cases
/// that matter in logs).
fn pki_error(e: webpki::Error) -> rustls::Error {
    use rustls::CertificateError as C;
    use webpki::Error as W;
    let c = match e {
        W::BadDer | W::BadDerTime | W::TrailingData(_) => C::BadEncoding,
        W::CertExpired { .. } | W::InvalidCertValidity => C::Expired,
        W::CertNotValidYet { .. } => C::NotValidYet,
        W::UnknownIssuer => C::UnknownIssuer,
        W::CertNotValidForName(_) => C::NotValidForName,
        W::CertRevoked => C::Revoked,
        W::InvalidSignatureForPublicKey => C::BadSignature,
        other => C::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(c)
}

/// SHA-256 of a DER SubjectPublicKeyInfo given without its outer SEQUENCE header (as
/// webpki keeps a trust anchor's).
fn spki_contents_sha256(contents: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update([0x30]);
    let n = contents.len();
    if n < 0x80 {
        h.update([n as u8]);
    } else {
        let bytes = n.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        h.update([0x80 | (bytes.len() - skip) as u8]);
        h.update(&bytes[skip..]);
    }
    h.update(contents);
    h.finalize().into()
}

/// The leaf's key, each intermediate's and the anchor's: every key on a verified path.
fn path_is_pinned(path: &webpki::VerifiedPath<'_>, pins: &[[u8; 32]]) -> bool {
    let leaf: [u8; 32] = Sha256::digest(path.end_entity().subject_public_key_info()).into();
    pins.contains(&leaf)
        || path.intermediate_certificates().any(|c| {
            let d: [u8; 32] = Sha256::digest(c.subject_public_key_info()).into();
            pins.contains(&d)
        })
        || pins.contains(&spki_contents_sha256(
            &path.anchor().subject_public_key_info,
        ))
}

/// Whether a certificate may act as a pinned trust anchor without CA verification: a CA
/// (basic constraints cA) within its validity period.
fn usable_pinned_ca(cert_der: &[u8], now: UnixTime) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(cert_der) else {
        return false;
    };
    let t = now.as_secs() as i64;
    let v = cert.validity();
    let is_ca = matches!(cert.basic_constraints(), Ok(Some(bc)) if bc.value.ca);
    is_ca && v.not_before.timestamp() <= t && t <= v.not_after.timestamp()
}

impl UpstreamVerifier {
    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        now: UnixTime,
    ) -> Result<(), rustls::Error> {
        let algs = self.provider.signature_verification_algorithms.all;
        let ee = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        let usage = webpki::KeyUsage::server_auth();
        match &self.roots {
            Some(roots) => {
                // Every path webpki can build is offered to the pin check; a path without a
                // pinned key is refused and the next one tried.
                let unpinned_path = std::cell::Cell::new(false);
                let pinned = |path: &webpki::VerifiedPath<'_>| {
                    if self.pins.is_empty() || path_is_pinned(path, &self.pins) {
                        Ok(())
                    } else {
                        unpinned_path.set(true);
                        Err(webpki::Error::UnknownIssuer)
                    }
                };
                ee.verify_for_usage(
                    algs,
                    &roots.roots,
                    intermediates,
                    now,
                    usage,
                    None,
                    Some(&pinned),
                )
                .map_err(|e| {
                    if unpinned_path.get() {
                        unpinned()
                    } else {
                        pki_error(e)
                    }
                })?;
                ee.verify_is_valid_for_subject_name(server_name)
                    .map_err(pki_error)?;
            }
            None => {
                let leaf: [u8; 32] = Sha256::digest(ee.subject_public_key_info()).into();
                if self.pins.contains(&leaf) {
                    // The pinned key is the leaf's own: its holder proves possession in
                    // the handshake. Only its validity period is checked.
                    check_validity(end_entity, now)?;
                    return Ok(());
                }
                let anchors: Vec<_> = intermediates
                    .iter()
                    .filter(|c| spki_sha256(c).is_some_and(|d| self.pins.contains(&d)))
                    .filter(|c| usable_pinned_ca(c, now))
                    .filter_map(|c| webpki::anchor_from_trusted_cert(c).ok())
                    .collect();
                if anchors.is_empty() {
                    return Err(unpinned());
                }
                ee.verify_for_usage(algs, &anchors, intermediates, now, usage, None, None)
                    .map_err(pki_error)?;
                // A CA vouches for the names in the leaf, so the name must match.
                ee.verify_is_valid_for_subject_name(server_name)
                    .map_err(pki_error)?;
            }
        }
        Ok(())
    }
}

/// The leaf's validity period (pin-only mode with the leaf's own key pinned).
fn check_validity(cert_der: &[u8], now: UnixTime) -> Result<(), rustls::Error> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert_der)
        .map_err(|_| rustls::Error::InvalidCertificate(rustls::CertificateError::BadEncoding))?;
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
    Ok(())
}

impl ServerCertVerifier for UpstreamVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        _ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity, intermediates, server_name, now)?;
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
    let pins: Vec<[u8; 32]> = server.spki_pins.iter().map(|p| *p.sha256()).collect();
    let roots = if server.verify_ca || pins.is_empty() {
        Some(Arc::new(load_roots(
            server.ca_file.as_deref().or(default_ca),
        )?))
    } else {
        None
    };
    let cert_not_after = Arc::new(AtomicI64::new(0));
    let verifier = UpstreamVerifier {
        roots,
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
    // ALPN: `h2` for DNS over HTTPS (RFC 8484 §5.2: HTTP/2), `doq` for DNS over QUIC
    // (RFC 9250 §4.1); none for DNS over TLS, as RFC 7858 servers expect. Early data stays
    // off (rustls's default): a replayed query is not worth a round trip.
    config.alpn_protocols = match server.protocol {
        crate::config::Protocol::Https => vec![b"h2".to_vec()],
        crate::config::Protocol::Quic => vec![b"doq".to_vec()],
        _ => Vec::new(),
    };
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

#[cfg(test)]
mod tests {
    use super::*;

    type Issuer = rcgen::Issuer<'static, rcgen::KeyPair>;

    struct Ca {
        der: CertificateDer<'static>,
        issuer: Issuer,
    }

    fn params(cn: &str, ca: bool) -> rcgen::CertificateParams {
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        if ca {
            p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        }
        p
    }

    fn root(cn: &str) -> Ca {
        let key = rcgen::KeyPair::generate().expect("key");
        let p = params(cn, true);
        let cert = p.self_signed(&key).expect("root");
        Ca {
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    fn sub(cn: &str, by: &Ca, ca: bool, expired: bool) -> Ca {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = params(cn, ca);
        if expired {
            p.not_before = rcgen::date_time_ymd(2019, 1, 1);
            p.not_after = rcgen::date_time_ymd(2020, 1, 1);
        }
        let cert = p.signed_by(&key, &by.issuer).expect("sub");
        Ca {
            der: cert.der().clone(),
            issuer: rcgen::Issuer::new(p, key),
        }
    }

    fn leaf(name: &str, by: &Ca) -> CertificateDer<'static> {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).expect("params");
        p.distinguished_name.push(rcgen::DnType::CommonName, name);
        p.signed_by(&key, &by.issuer).expect("leaf").der().clone()
    }

    fn pin(c: &CertificateDer<'_>) -> [u8; 32] {
        spki_sha256(c).expect("spki")
    }

    fn verifier(roots: Option<&[&Ca]>, pins: &[&CertificateDer<'_>]) -> UpstreamVerifier {
        let roots = roots.map(|cas| {
            let mut store = RootCertStore::empty();
            for ca in cas {
                store.add(ca.der.clone()).expect("root");
            }
            Arc::new(store)
        });
        UpstreamVerifier {
            roots,
            pins: pins.iter().map(|c| pin(c)).collect(),
            provider: provider(),
            cert_not_after: Arc::new(AtomicI64::new(0)),
        }
    }

    fn verify(
        v: &UpstreamVerifier,
        leaf: &CertificateDer<'_>,
        chain: &[&CertificateDer<'static>],
    ) -> Result<(), rustls::Error> {
        let inter: Vec<CertificateDer<'static>> = chain.iter().map(|c| (*c).clone()).collect();
        let name = ServerName::try_from("upstream.test").expect("name");
        v.verify_server_cert(leaf, &inter, &name, &[], UnixTime::now())
            .map(|_| ())
    }

    /// Root R -> intermediate I -> leaf L, and an unrelated CA X with a rogue leaf for the
    /// same name.
    struct World {
        r: Ca,
        i: Ca,
        l: CertificateDer<'static>,
        x: Ca,
        rogue: CertificateDer<'static>,
    }

    fn world() -> World {
        let r = root("Pinned Root");
        let i = sub("Pinned Intermediate", &r, true, false);
        let l = leaf("upstream.test", &i);
        let x = root("Unrelated CA");
        let rogue = leaf("upstream.test", &x);
        World { r, i, l, x, rogue }
    }

    #[test]
    fn pin_only_accepts_keys_on_a_verified_chain() {
        let w = world();
        // The leaf's own key.
        assert!(verify(&verifier(None, &[&w.l]), &w.l, &[]).is_ok());
        // The intermediate that signed it.
        assert!(verify(&verifier(None, &[&w.i.der]), &w.l, &[&w.i.der]).is_ok());
        // The root, when the server sends it along.
        let v = verifier(None, &[&w.r.der]);
        assert!(verify(&v, &w.l, &[&w.i.der, &w.r.der]).is_ok());
        // A root that is pinned but not sent cannot be checked: its key is unknown.
        assert!(verify(&v, &w.l, &[&w.i.der]).is_err());
        // Two pins (rotation): either key is enough.
        let v = verifier(None, &[&w.x.der, &w.i.der]);
        assert!(verify(&v, &w.l, &[&w.i.der]).is_ok());
    }

    #[test]
    fn pin_only_refuses_a_pinned_certificate_merely_sent_along() {
        let w = world();
        // A leaf signed by an unrelated CA, with a copy of the pinned intermediate or root.
        let v = verifier(None, &[&w.i.der]);
        assert!(verify(&v, &w.rogue, &[&w.i.der]).is_err());
        assert!(verify(&v, &w.rogue, &[&w.i.der, &w.x.der]).is_err());
        let v = verifier(None, &[&w.r.der]);
        assert!(verify(&v, &w.rogue, &[&w.i.der, &w.r.der]).is_err());
        assert!(verify(&v, &w.rogue, &[&w.r.der, &w.x.der]).is_err());
        // Nothing pinned on the chain at all.
        let v = verifier(None, &[&w.x.der]);
        assert!(verify(&v, &w.l, &[&w.i.der]).is_err());
    }

    #[test]
    fn pin_only_checks_name_ca_constraints_and_validity_of_the_chain() {
        let w = world();
        let v = verifier(None, &[&w.i.der]);
        // A CA pin vouches only for the name asked for.
        let other = leaf("other.test", &w.i);
        assert!(verify(&v, &other, &[&w.i.der]).is_err());
        // A pinned certificate that is not a CA cannot vouch for another.
        let not_ca = sub("Not a CA", &w.r, false, false);
        let under = leaf("upstream.test", &not_ca);
        let v = verifier(None, &[&not_ca.der]);
        assert!(verify(&v, &under, &[&not_ca.der]).is_err());
        // An expired pinned intermediate, or an expired one between the leaf and the pin.
        let old = sub("Expired Intermediate", &w.r, true, true);
        let under = leaf("upstream.test", &old);
        let v = verifier(None, &[&old.der]);
        assert!(verify(&v, &under, &[&old.der]).is_err());
        let v = verifier(None, &[&w.r.der]);
        assert!(verify(&v, &under, &[&old.der, &w.r.der]).is_err());
    }

    #[test]
    fn with_ca_verification_a_pin_counts_only_on_the_chain_built() {
        let w = world();
        // Both CAs are trusted (a system store holds many); the pin names one path.
        let roots = [&w.r, &w.x];
        let v = verifier(Some(&roots), &[&w.i.der]);
        assert!(verify(&v, &w.l, &[&w.i.der]).is_ok());
        // The rogue leaf chains to X, a trusted root, and carries the pinned certificate.
        assert!(verify(&v, &w.rogue, &[&w.i.der]).is_err());
        // A root pin.
        let v = verifier(Some(&roots), &[&w.r.der]);
        assert!(verify(&v, &w.l, &[&w.i.der]).is_ok());
        assert!(verify(&v, &w.rogue, &[&w.i.der, &w.r.der]).is_err());
        // Leaf pin; no pins (CA and name only); a pin of nothing on the path.
        assert!(verify(&verifier(Some(&roots), &[&w.l]), &w.l, &[&w.i.der]).is_ok());
        assert!(verify(&verifier(Some(&roots), &[]), &w.l, &[&w.i.der]).is_ok());
        assert!(verify(&verifier(Some(&roots), &[&w.x.der]), &w.l, &[&w.i.der]).is_err());
        // CA checks still hold: an untrusted root, a wrong name.
        assert!(verify(&verifier(Some(&[&w.x]), &[&w.i.der]), &w.l, &[&w.i.der]).is_err());
        let other = leaf("other.test", &w.i);
        assert!(verify(&verifier(Some(&roots), &[]), &other, &[&w.i.der]).is_err());
    }

    #[test]
    fn anchor_spki_digest_matches_the_certificate_pin() {
        let w = world();
        for c in [&w.r.der, &w.i.der, &w.x.der] {
            let anchor = webpki::anchor_from_trusted_cert(c).expect("anchor");
            assert_eq!(
                spki_contents_sha256(&anchor.subject_public_key_info),
                pin(c)
            );
        }
    }
}
