//! QUIC's TLS without a CA: each session makes a self-signed certificate,
//! signals its SHA-256 fingerprint with its candidates, and accepts exactly
//! the certificate whose fingerprint the peer signalled (the scheme of
//! WebRTC's DTLS fingerprints, RFC 8122 §5, applied to QUIC's TLS 1.3).
//!
//! Both directions are pinned: the QUIC client checks the server's
//! certificate, and the server requires a client certificate and checks it
//! the same way. Handshake signatures are still verified with the pinned
//! certificate's key, so presenting a copied certificate is not enough.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls13_signature, CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

pub use crate::fingerprint::Fingerprint;

/// The ALPN protocol both ends speak; another application's QUIC client
/// cannot reach a natkit session by accident.
pub const ALPN: &[u8] = b"natkit/1";

/// TLS alert `access_denied` (RFC 8446 §6.2): what a pinned verifier
/// sends when the certificate is not the announced one.
pub const ALERT_ACCESS_DENIED: u8 = 49;

/// The name in the certificates and the client's SNI: only the fingerprint
/// matters, but TLS needs a name.
pub const SERVER_NAME: &str = "natkit.invalid";

/// A session's own certificate and key.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    fingerprint: Fingerprint,
}

impl fmt::Debug for Identity {
    // The key stays out of logs and debug output.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// Certificate generation failed (the crypto backend refused).
#[derive(Debug, thiserror::Error)]
#[error("could not make a self-signed certificate: {0}")]
pub struct IdentityError(String);

impl Identity {
    /// A fresh self-signed certificate (ECDSA P-256).
    pub fn generate() -> Result<Identity, IdentityError> {
        let ck = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
            .map_err(|e| IdentityError(e.to_string()))?;
        let cert = ck.cert.der().clone();
        let key = PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der());
        Ok(Identity {
            fingerprint: Fingerprint::of(&cert),
            cert,
            key,
        })
    }

    /// The fingerprint to signal.
    pub fn fingerprint(&self) -> Fingerprint {
        self.fingerprint
    }

    fn chain(&self) -> Vec<CertificateDer<'static>> {
        vec![self.cert.clone()]
    }

    fn key(&self) -> PrivateKeyDer<'static> {
        PrivateKeyDer::Pkcs8(self.key.clone_key())
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Remembers whether the peer presented a certificate other than the
/// pinned one, so the driver can tell a fingerprint mismatch from other
/// handshake failures.
#[derive(Debug, Default)]
pub struct MismatchFlag(AtomicBool);

impl MismatchFlag {
    /// Whether a mismatch was seen.
    pub fn seen(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// The fingerprint a QUIC server accepts from its client, known only once
/// the peer's description arrives. The server configuration exists from
/// the start so that a client's Initial that arrives first (ICE answers
/// checks before it has the peer's description, RFC 8445 §7.3) waits in
/// quinn's accept queue instead of being refused and retransmitted a
/// second later.
#[derive(Debug, Default)]
pub struct PeerPin(Mutex<Option<Fingerprint>>);

impl PeerPin {
    /// Accept exactly this certificate from now on.
    pub fn set(&self, f: Fingerprint) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    fn get(&self) -> Option<Fingerprint> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[derive(Debug)]
enum Expected {
    Fixed(Fingerprint),
    Later(Arc<PeerPin>),
}

#[derive(Debug)]
struct Pinned {
    expected: Expected,
    algorithms: WebPkiSupportedAlgorithms,
    mismatch: Arc<MismatchFlag>,
}

impl Pinned {
    fn check(&self, cert: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        let expected = match &self.expected {
            Expected::Fixed(f) => *f,
            Expected::Later(pin) => pin
                .get()
                .ok_or_else(|| rustls::Error::General("no description from the peer yet".into()))?,
        };
        if Fingerprint::of(cert) == expected {
            Ok(())
        } else {
            self.mismatch.0.store(true, Ordering::Relaxed);
            tracing::debug!(
                presented = %Fingerprint::of(cert),
                %expected,
                "the peer's certificate does not match its description's fingerprint"
            );
            // Sent as the access_denied alert (RFC 8446 §6.2), which tells
            // the peer its certificate was refused, not that TLS broke.
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algorithms)
    }
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // QUIC is TLS 1.3 only (RFC 9001 §4.2).
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

impl ClientCertVerifier for Pinned {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// TLS setup failed (should not happen with the ring provider).
#[derive(Debug, thiserror::Error)]
#[error("TLS setup failed: {0}")]
pub struct TlsSetupError(String);

fn pinned(expected: Expected, mismatch: Arc<MismatchFlag>) -> Arc<Pinned> {
    Arc::new(Pinned {
        expected,
        algorithms: provider().signature_verification_algorithms,
        mismatch,
    })
}

/// The QUIC client configuration: present `me`, accept only a server whose
/// certificate has fingerprint `peer`.
pub fn client_config(
    me: &Identity,
    peer: Fingerprint,
    mismatch: Arc<MismatchFlag>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ClientConfig, TlsSetupError> {
    let err = |e: &dyn fmt::Display| TlsSetupError(e.to_string());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&e))?
        .dangerous()
        .with_custom_certificate_verifier(pinned(Expected::Fixed(peer), mismatch))
        .with_client_auth_cert(me.chain(), me.key())
        .map_err(|e| err(&e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| err(&e))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(quic));
    cfg.transport_config(transport);
    Ok(cfg)
}

/// The QUIC server configuration: present `me`, require a client
/// certificate with the fingerprint `peer` holds when the client presents
/// it.
pub fn server_config(
    me: &Identity,
    peer: Arc<PeerPin>,
    mismatch: Arc<MismatchFlag>,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::ServerConfig, TlsSetupError> {
    let err = |e: &dyn fmt::Display| TlsSetupError(e.to_string());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| err(&e))?
        .with_client_cert_verifier(pinned(Expected::Later(peer), mismatch))
        .with_single_cert(me.chain(), me.key())
        .map_err(|e| err(&e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0;
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| err(&e))?;
    let mut cfg = quinn::ServerConfig::with_crypto(Arc::new(quic));
    cfg.transport_config(transport);
    // One peer per session: no address validation round trip (Retry) is
    // needed, ICE already proved the path both ways.
    Ok(cfg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_text_round_trips_and_rejects_garbage() {
        let id = Identity::generate().unwrap();
        let f = id.fingerprint();
        let s = f.to_string();
        assert_eq!(s.len(), 32 * 3 - 1);
        assert_eq!(s.parse::<Fingerprint>().unwrap(), f);
        assert_eq!(s.to_lowercase().parse::<Fingerprint>().unwrap(), f);
        for bad in [
            "",
            "AB",
            &s[..s.len() - 3],
            &format!("{s}:00"),
            &s.replace(':', "-"),
        ] {
            assert!(bad.parse::<Fingerprint>().is_err(), "{bad:?} parsed");
        }
        assert!(!format!("{id:?}").contains("key:"));
    }

    #[test]
    fn two_identities_differ() {
        let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }
}
