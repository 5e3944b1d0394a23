//! TLS server configuration from PEM files (STUN over TLS, RFC 8489 §6.2.3).
//!
//! rustls with the *ring* provider chosen explicitly, so the binary never depends on which
//! provider happens to be the process default. Errors name the file and say what is wrong with
//! it, since an operator reads them at start-up.
//!
//! [`ReloadableAcceptor`] is the acceptor both servers serve TLS with: SIGHUP reloads the same
//! files into it, and a pair that fails to load leaves the running one in place.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use rustls::crypto::ring;
use rustls::server::ClientHello;
use rustls::ServerConfig;
use rustls_pki_types::pem::{self, PemObject};
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

/// Which of the two PEM files an error is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsFile {
    /// The certificate chain.
    Certificate,
    /// The private key.
    PrivateKey,
}

impl fmt::Display for TlsFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            TlsFile::Certificate => "certificate",
            TlsFile::PrivateKey => "private key",
        })
    }
}

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file could not be opened or read.
    #[error("cannot read {what} file {}: {source}", path.display())]
    Read {
        /// Which file.
        what: TlsFile,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid PEM.
    #[error("{what} file {} is not valid PEM: {source}", path.display())]
    Pem {
        /// Which file.
        what: TlsFile,
        /// The file.
        path: PathBuf,
        /// The PEM error.
        #[source]
        source: pem::Error,
    },
    /// The certificate file holds no `CERTIFICATE` section.
    #[error("no certificate found in {} (expected a PEM \"BEGIN CERTIFICATE\" section)", path.display())]
    NoCertificate {
        /// The file.
        path: PathBuf,
    },
    /// The key file holds no private key section.
    #[error("no private key found in {} (expected PEM \"BEGIN PRIVATE KEY\", \"BEGIN RSA PRIVATE KEY\" or \"BEGIN EC PRIVATE KEY\")", path.display())]
    NoKey {
        /// The file.
        path: PathBuf,
    },
    /// The key does not belong to the certificate.
    #[error("private key {} does not match the certificate in {}", key.display(), cert.display())]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The key is not usable (unsupported algorithm, malformed DER).
    #[error("private key {} is not usable: {source}", path.display())]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// What rustls reported.
        #[source]
        source: rustls::Error,
    },
    /// Any other rustls failure while building the configuration.
    #[error("building the TLS configuration failed: {0}")]
    Rustls(#[from] rustls::Error),
}

impl TlsError {
    /// The file at fault, when the error is about one file; `None` for
    /// [`TlsError::Rustls`], which is about neither in particular.
    pub fn file(&self) -> Option<TlsFile> {
        match self {
            TlsError::Read { what, .. } | TlsError::Pem { what, .. } => Some(*what),
            TlsError::NoCertificate { .. } => Some(TlsFile::Certificate),
            // A key that does not match the certificate: the key is what an operator replaces.
            TlsError::NoKey { .. } | TlsError::KeyMismatch { .. } | TlsError::BadKey { .. } => {
                Some(TlsFile::PrivateKey)
            }
            TlsError::Rustls(_) => None,
        }
    }
}

fn pem_error(what: TlsFile, path: &Path, e: pem::Error) -> TlsError {
    match e {
        pem::Error::Io(source) => TlsError::Read {
            what,
            path: path.to_owned(),
            source,
        },
        source => TlsError::Pem {
            what,
            path: path.to_owned(),
            source,
        },
    }
}

/// Reads every certificate in `path` (leaf first, then intermediates).
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| pem_error(TlsFile::Certificate, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| pem_error(TlsFile::Certificate, path, e))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_owned(),
        });
    }
    Ok(certs)
}

/// Reads the first private key (PKCS#8, PKCS#1 or SEC1) in `path`.
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| match e {
        pem::Error::NoItemsFound => TlsError::NoKey {
            path: path.to_owned(),
        },
        e => pem_error(TlsFile::PrivateKey, path, e),
    })
}

/// Builds a TLS server configuration (TLS 1.2 and 1.3, ring provider, no client
/// authentication) from a PEM certificate chain and a PEM private key.
pub fn server_config(
    cert_pem_path: impl AsRef<Path>,
    key_pem_path: impl AsRef<Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_path = cert_pem_path.as_ref();
    let key_path = key_pem_path.as_ref();
    let certs = load_certs(cert_path)?;
    let key = load_key(key_path)?;
    let config = ServerConfig::builder_with_provider(Arc::new(ring::default_provider()))
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => TlsError::KeyMismatch {
                cert: cert_path.to_owned(),
                key: key_path.to_owned(),
            },
            source => TlsError::BadKey {
                path: key_path.to_owned(),
                source,
            },
        })?;
    Ok(Arc::new(config))
}

/// ALPN protocol ID of the ACME tls-alpn-01 challenge (RFC 8737 §6.2).
pub const ACME_TLS_ALPN: &[u8] = b"acme-tls/1";

/// The tls-alpn-01 challenges (RFC 8737 §3) pending on the TLS listeners, by domain: while
/// one is pending, a ClientHello that offers `acme-tls/1` for that domain gets the challenge
/// certificate instead of the served one. Clones share the same set.
#[derive(Clone, Default)]
pub struct AlpnChallenges(Arc<RwLock<HashMap<String, Arc<ServerConfig>>>>);

impl AlpnChallenges {
    /// Answers validation handshakes for `domain` with `cert` and `key` (the RFC 8737 §3
    /// self-signed certificate carrying the acmeIdentifier extension) until
    /// [`remove`](Self::remove).
    pub fn insert(
        &self,
        domain: &str,
        cert: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    ) -> Result<(), TlsError> {
        let provider = Arc::new(ring::default_provider());
        let signing = provider.key_provider.load_private_key(key)?;
        // Not `with_single_cert`: it parses the certificate with webpki, which refuses the
        // critical acmeIdentifier extension the validator needs (RFC 8737 §3).
        let certified = rustls::sign::CertifiedKey::new(vec![cert], signing);
        let mut config = ServerConfig::builder_with_provider(provider)
            // RFC 8737 §4: the validation handshake is TLS 1.2 or later.
            .with_safe_default_protocol_versions()?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(rustls::sign::SingleCertAndKey::from(certified)));
        // RFC 8737 §3: the server MUST negotiate acme-tls/1, and only it.
        config.alpn_protocols = vec![ACME_TLS_ALPN.to_vec()];
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(domain.to_ascii_lowercase(), Arc::new(config));
        Ok(())
    }

    /// Stops answering for `domain`.
    pub fn remove(&self, domain: &str) {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&domain.to_ascii_lowercase());
    }

    /// The challenge configuration for `hello`: it offers `acme-tls/1` (RFC 8737 §3: the
    /// validator offers only that) and names (SNI) a domain with a pending challenge.
    fn for_hello(&self, hello: &ClientHello<'_>) -> Option<Arc<ServerConfig>> {
        let mut alpn = hello.alpn()?;
        if !alpn.any(|p| p == ACME_TLS_ALPN) {
            return None;
        }
        let name = hello
            .server_name()?
            .trim_end_matches('.')
            .to_ascii_lowercase();
        self.0
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(&name)
            .cloned()
    }
}

/// What one accepted TLS connection is served with: the configuration current when it was
/// accepted, and the pending tls-alpn-01 challenges.
#[derive(Clone)]
pub struct CurrentTls {
    /// The served configuration (certificate and key).
    pub config: Arc<ServerConfig>,
    challenges: AlpnChallenges,
}

impl CurrentTls {
    /// The configuration to answer `hello` with, and whether it is a tls-alpn-01 validation
    /// (RFC 8737 §3: the handshake is the whole exchange; the connection is closed after it).
    pub fn config_for(&self, hello: &ClientHello<'_>) -> (Arc<ServerConfig>, bool) {
        match self.challenges.for_hello(hello) {
            Some(c) => (c, true),
            None => (self.config.clone(), false),
        }
    }
}

/// A TLS acceptor whose certificate and key can be replaced while the server runs (SIGHUP,
/// a changed file, an ACME renewal): each connection takes the configuration current when it
/// is accepted, so open connections keep the pair they started with. Clones share the same
/// acceptor.
#[derive(Clone)]
pub struct ReloadableAcceptor {
    config: Arc<RwLock<Arc<ServerConfig>>>,
    challenges: AlpnChallenges,
}

impl ReloadableAcceptor {
    /// Serves with `config` until the first successful [`reload`](Self::reload).
    pub fn new(config: Arc<ServerConfig>) -> Self {
        Self {
            config: Arc::new(RwLock::new(config)),
            challenges: AlpnChallenges::default(),
        }
    }

    /// What to serve a connection accepted now with.
    pub fn current(&self) -> CurrentTls {
        // A poisoned lock only means a writer panicked between two whole assignments: the
        // value inside is still a complete configuration.
        CurrentTls {
            config: self
                .config
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
            challenges: self.challenges.clone(),
        }
    }

    /// The tls-alpn-01 challenges answered on this acceptor's listeners.
    pub fn challenges(&self) -> &AlpnChallenges {
        &self.challenges
    }

    /// Serves new connections with `config`.
    pub fn replace(&self, config: Arc<ServerConfig>) {
        *self.config.write().unwrap_or_else(|e| e.into_inner()) = config;
    }

    /// Loads the certificate chain and key again with [`server_config`] and serves new
    /// connections with them. On error the running pair stays.
    pub fn reload(
        &self,
        cert_pem_path: impl AsRef<Path>,
        key_pem_path: impl AsRef<Path>,
    ) -> Result<(), TlsError> {
        self.replace(server_config(cert_pem_path, key_pem_path)?);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rustls::pki_types::ServerName;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A scratch directory under the system temp dir, removed on drop.
    struct TempDir(PathBuf);

    impl TempDir {
        fn new(name: &str) -> Self {
            let p = std::env::temp_dir()
                .join(format!("natkit-runtime-tls-{}-{name}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            std::fs::create_dir_all(&p).unwrap();
            Self(p)
        }

        fn write(&self, file: &str, contents: &str) -> PathBuf {
            let p = self.0.join(file);
            std::fs::write(&p, contents).unwrap();
            p
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// (certificate PEM, key PEM, certificate DER) for `localhost`.
    fn self_signed() -> (String, String, CertificateDer<'static>) {
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        (
            c.cert.pem(),
            c.key_pair.serialize_pem(),
            c.cert.der().clone(),
        )
    }

    #[test]
    fn loads_a_matching_pair() {
        let dir = TempDir::new("ok");
        let (cert, key, _) = self_signed();
        let cfg = server_config(dir.write("c.pem", &cert), dir.write("k.pem", &key)).unwrap();
        assert!(cfg.alpn_protocols.is_empty());
    }

    #[test]
    fn errors_name_the_file_and_reason() {
        let dir = TempDir::new("errors");
        let (cert, key, _) = self_signed();
        let (_, other_key, _) = self_signed();
        let cert_p = dir.write("cert.pem", &cert);
        let key_p = dir.write("key.pem", &key);
        let other_p = dir.write("other-key.pem", &other_key);
        let junk_p = dir.write("junk.pem", "-----BEGIN CERTIFICATE-----\n%%%\n");
        let missing = dir.0.join("missing.pem");

        let e = server_config(&missing, &key_p).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Read {
                    what: TlsFile::Certificate,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("missing.pem"), "{e}");

        let e = server_config(&cert_p, &missing).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Read {
                    what: TlsFile::PrivateKey,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("missing.pem"), "{e}");

        // A key file given as the certificate: it holds no certificate.
        let e = server_config(&key_p, &key_p).unwrap_err();
        assert!(matches!(e, TlsError::NoCertificate { .. }), "{e:?}");
        assert!(e.to_string().contains("key.pem"), "{e}");

        // A certificate file given as the key: it holds no key.
        let e = server_config(&cert_p, &cert_p).unwrap_err();
        assert!(matches!(e, TlsError::NoKey { .. }), "{e:?}");
        assert!(e.to_string().contains("cert.pem"), "{e}");

        let e = server_config(&cert_p, &other_p).unwrap_err();
        assert!(matches!(e, TlsError::KeyMismatch { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains("other-key.pem") && msg.contains("cert.pem"),
            "{msg}"
        );

        let e = server_config(&junk_p, &key_p).unwrap_err();
        assert!(
            matches!(
                e,
                TlsError::Pem {
                    what: TlsFile::Certificate,
                    ..
                }
            ),
            "{e:?}"
        );
        assert!(e.to_string().contains("junk.pem"), "{e}");
    }

    /// Serves one TLS connection on loopback with `acceptor` and has a client that trusts
    /// only `trust` send four bytes through it; returns what came back, or the client's error.
    async fn echo_once(
        acceptor: CurrentTls,
        trust: CertificateDer<'static>,
    ) -> std::io::Result<[u8; 4]> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(acceptor.config);
        let server = tokio::spawn(async move {
            let (tcp, _) = listener.accept().await.unwrap();
            // A client that refuses the certificate ends the handshake: nothing to echo.
            let Ok(mut tls) = acceptor.accept(tcp).await else {
                return;
            };
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await.unwrap();
            tls.write_all(&buf).await.unwrap();
            tls.shutdown().await.unwrap();
        });

        let mut roots = rustls::RootCertStore::empty();
        roots.add(trust).unwrap();
        let client_cfg =
            rustls::ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth();
        let connector = tokio_rustls::TlsConnector::from(Arc::new(client_cfg));
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = ServerName::try_from("localhost").unwrap();
        let fut = async {
            let mut tls = connector.connect(name, tcp).await?;
            tls.write_all(b"ping").await?;
            let mut buf = [0u8; 4];
            tls.read_exact(&mut buf).await?;
            Ok(buf)
        };
        let echoed = tokio::time::timeout(Duration::from_secs(5), fut)
            .await
            .expect("handshake in time");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("server task ends in time")
            .unwrap();
        echoed
    }

    /// The configuration really serves TLS: a rustls client that trusts the certificate
    /// completes a handshake over loopback and exchanges bytes.
    #[tokio::test]
    async fn handshake_on_loopback() {
        let dir = TempDir::new("handshake");
        let (cert, key, der) = self_signed();
        let config = server_config(dir.write("c.pem", &cert), dir.write("k.pem", &key)).unwrap();
        let acceptor = ReloadableAcceptor::new(config).current();
        let echoed = echo_once(acceptor, der).await.unwrap();
        assert_eq!(&echoed, b"ping");
    }

    /// A reload serves new connections with the new pair; a failed reload keeps the running
    /// pair and says which file is wrong.
    #[tokio::test]
    async fn reload_replaces_the_pair_and_keeps_it_on_error() {
        let dir = TempDir::new("reload");
        let (cert1, key1, der1) = self_signed();
        let (cert2, key2, der2) = self_signed();
        let config =
            server_config(dir.write("c1.pem", &cert1), dir.write("k1.pem", &key1)).unwrap();
        let acceptor = ReloadableAcceptor::new(config);
        // A client trusting only the second certificate refuses the first.
        assert!(echo_once(acceptor.current(), der2.clone()).await.is_err());

        let missing = dir.0.join("missing.pem");
        let e = acceptor
            .reload(&missing, dir.write("k2.pem", &key2))
            .unwrap_err();
        assert_eq!(e.file(), Some(TlsFile::Certificate), "{e:?}");
        assert_eq!(echo_once(acceptor.current(), der1).await.unwrap(), *b"ping");

        acceptor
            .reload(dir.write("c2.pem", &cert2), dir.0.join("k2.pem"))
            .unwrap();
        assert_eq!(echo_once(acceptor.current(), der2).await.unwrap(), *b"ping");
    }
}
