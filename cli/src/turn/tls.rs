//! rustls client configuration for TURN over TLS (RFC 8656 §3.1,
//! RFC 8489 §6.2.3): which certificates to trust.
//!
//! Trust comes from `--ca FILE` (a private CA or the server's self-signed
//! certificate), else from the system's CA bundle (Debian's
//! `ca-certificates`, found the way OpenSSL finds it), so no root list is
//! compiled into the binary. `--insecure` skips verification of the
//! certificate but still checks the handshake signatures.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::{self, ring, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};

/// Where distributions keep their CA bundle, most common first (the same
/// list OpenSSL-based tools and `rustls-native-certs` look at).
const SYSTEM_BUNDLES: &[&str] = &[
    "/etc/ssl/certs/ca-certificates.crt",
    "/etc/pki/tls/certs/ca-bundle.crt",
    "/etc/ssl/ca-bundle.pem",
    "/etc/ssl/cert.pem",
    "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
];

/// How to verify the server.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Certificates from this PEM file only.
    CaFile(PathBuf),
    /// The system's CA bundle.
    System,
    /// No verification of the certificate (handshake signatures still).
    Insecure,
}

/// The client configuration, with the *ring* provider chosen explicitly.
pub fn client_config(trust: &Trust) -> anyhow::Result<Arc<ClientConfig>> {
    let provider = Arc::new(ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .context("TLS setup")?;
    let config = match trust {
        Trust::Insecure => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoCertificateCheck(provider)))
            .with_no_client_auth(),
        Trust::CaFile(path) => {
            let (roots, pinned) = roots_from(path, true)?;
            let webpki =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                    .build()
                    .with_context(|| format!("no usable CA certificate in {}", path.display()))?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(CaOrPinned { webpki, pinned }))
                .with_no_client_auth()
        }
        Trust::System => builder
            .with_root_certificates(system_roots()?)
            .with_no_client_auth(),
    };
    Ok(Arc::new(config))
}

/// The name the certificate must carry: `--tls-name`, else the host as
/// given (a DNS name or an IP address).
pub fn server_name(host: &str) -> anyhow::Result<ServerName<'static>> {
    ServerName::try_from(host.to_string())
        .with_context(|| format!("{host:?} is not a valid TLS server name"))
}

fn system_roots() -> anyhow::Result<RootCertStore> {
    // SSL_CERT_FILE is OpenSSL's override; honour it like curl does.
    let from_env = std::env::var_os("SSL_CERT_FILE").map(PathBuf::from);
    let candidates = from_env
        .iter()
        .map(PathBuf::as_path)
        .chain(SYSTEM_BUNDLES.iter().map(Path::new));
    for path in candidates {
        if path.is_file() {
            let (roots, _) = roots_from(path, false)?;
            if !roots.is_empty() {
                return Ok(roots);
            }
        }
    }
    bail!(
        "no system CA certificates found (looked at SSL_CERT_FILE and {}): \
         install ca-certificates, or use --ca FILE to trust the server's CA or certificate",
        SYSTEM_BUNDLES.join(", ")
    )
}

/// Certificates of a PEM file. `strict`: every certificate must be usable
/// (a file the user named); otherwise unusable entries of a system bundle
/// are skipped.
fn roots_from(
    path: &Path,
    strict: bool,
) -> anyhow::Result<(RootCertStore, Vec<CertificateDer<'static>>)> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .with_context(|| format!("cannot read CA file {}", path.display()))?
        .collect::<Result<_, _>>()
        .with_context(|| format!("CA file {} is not valid PEM", path.display()))?;
    if certs.is_empty() {
        bail!(
            "no certificate in {} (expected a PEM \"BEGIN CERTIFICATE\" section)",
            path.display()
        );
    }
    let mut roots = RootCertStore::empty();
    if strict {
        for c in &certs {
            roots
                .add(c.clone())
                .with_context(|| format!("unusable certificate in {}", path.display()))?;
        }
    } else {
        roots.add_parsable_certificates(certs.iter().cloned());
    }
    Ok((roots, certs))
}

/// `--ca FILE`: a chain to one of the file's certificates (checked by
/// webpki, name included), or exactly one of them presented by the server.
/// The second case is a self-signed certificate made with `openssl req
/// -x509`, which marks it as a CA, and webpki refuses a CA certificate as
/// the server's own (`CaUsedAsEndEntity`); the user named that very
/// certificate, so it is pinned. Handshake signatures are always checked.
#[derive(Debug)]
struct CaOrPinned {
    webpki: Arc<WebPkiServerVerifier>,
    pinned: Vec<CertificateDer<'static>>,
}

impl ServerCertVerifier for CaOrPinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self.webpki.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        ) {
            Ok(v) => Ok(v),
            Err(_)
                if self
                    .pinned
                    .iter()
                    .any(|p| p.as_ref() == end_entity.as_ref()) =>
            {
                Ok(ServerCertVerified::assertion())
            }
            Err(e) => Err(e),
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.webpki.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.webpki.supported_verify_schemes()
    }
}

/// `--insecure`: any certificate is accepted, but the server must still
/// prove it holds the certificate's key, so the handshake is sound apart
/// from the identity.
#[derive(Debug)]
struct NoCertificateCheck(Arc<CryptoProvider>);

impl ServerCertVerifier for NoCertificateCheck {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ca_file_errors_name_the_file() {
        let dir = std::env::temp_dir().join(format!("natkit-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let e = client_config(&Trust::CaFile(empty.clone())).unwrap_err();
        assert!(format!("{e:#}").contains("no certificate in"), "{e:#}");
        assert!(format!("{e:#}").contains("empty.pem"), "{e:#}");
        let missing = dir.join("missing.pem");
        let e = client_config(&Trust::CaFile(missing)).unwrap_err();
        assert!(format!("{e:#}").contains("cannot read CA file"), "{e:#}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn server_names_accept_hosts_and_addresses() {
        assert!(matches!(
            server_name("127.0.0.1").unwrap(),
            ServerName::IpAddress(_)
        ));
        assert!(matches!(
            server_name("turn.example.org").unwrap(),
            ServerName::DnsName(_)
        ));
        assert!(server_name("bad name!").is_err());
    }
}
