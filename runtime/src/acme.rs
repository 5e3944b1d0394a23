//! Automatic certificates for the TLS listeners (ACME, RFC 8555), validated with tls-alpn-01
//! (RFC 8737) on the TLS listeners themselves: a server that owns port 443 needs no second
//! port and no web server.
//!
//! The state directory keeps the ACME account (`account.json`, its key inside) and the served
//! pair (`cert.pem`, `key.pem`, the key readable by the owner only). At start a stored
//! certificate that is valid and names every configured domain is served at once; otherwise
//! a self-signed stand-in is served (clients refuse it) until the first certificate arrives.
//! A certificate is renewed at two thirds of its lifetime (30 days before the end of a 90-day
//! one, as the CA/Browser Forum's shorter lifetimes come, proportionally earlier) and swapped
//! in through [`ReloadableAcceptor::reload`], the path SIGHUP takes: open connections keep
//! theirs. A failed attempt is logged and retried with backoff while the old certificate
//! keeps serving.
//!
//! What to do when is decided by [`next_attempt`], without I/O; [`spawn`] runs it.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use instant_acme::{
    Account, AccountCredentials, AuthorizationStatus, ChallengeType, Identifier, NewAccount,
    NewOrder, OrderStatus, RetryPolicy,
};
use prometheus::{IntCounter, IntGauge, Registry};
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tracing::{error, info, warn};

use crate::shutdown::Shutdown;
use crate::tls::{self, AlpnChallenges, ReloadableAcceptor, TlsError};

/// Let's Encrypt's production directory, the default.
pub const LETS_ENCRYPT: &str = "https://acme-v02.api.letsencrypt.org/directory";
/// First wait after a failed attempt; doubled per failure up to [`MAX_BACKOFF`].
pub const MIN_BACKOFF: Duration = Duration::from_secs(10);
/// Longest wait between failed attempts.
pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

/// What the `acme-*` config keys say.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AcmeSettings {
    /// The DNS names the certificate is for (the first is its subject).
    pub domains: Vec<String>,
    /// The ACME server's directory URL.
    pub directory: String,
    /// Contact addresses (`mailto:` added when missing).
    pub contact: Vec<String>,
    /// Where the account and the certificate are kept.
    pub state_dir: PathBuf,
    /// PEM root to trust for the ACME server's HTTPS (a test CA); `None`: the system's.
    pub ca_file: Option<PathBuf>,
}

impl AcmeSettings {
    /// The served certificate chain.
    pub fn cert_path(&self) -> PathBuf {
        self.state_dir.join("cert.pem")
    }

    /// The served private key.
    pub fn key_path(&self) -> PathBuf {
        self.state_dir.join("key.pem")
    }

    fn account_path(&self) -> PathBuf {
        self.state_dir.join("account.json")
    }
}

/// Why an ACME attempt failed.
#[derive(Debug, thiserror::Error)]
pub enum AcmeError {
    /// A file of the state directory could not be read or written.
    #[error("{what} {}: {source}", path.display())]
    Io {
        /// What was being done.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The ACME server refused or could not be reached.
    #[error("ACME server: {0}")]
    Acme(#[from] instant_acme::Error),
    /// A key, CSR or challenge certificate could not be made.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// What the server issued (or a challenge certificate) is not usable by rustls.
    #[error("{0}")]
    Tls(#[from] TlsError),
    /// The server's answers do not let the order go on.
    #[error("{0}")]
    Order(String),
}

fn io_error<'p>(
    what: &'static str,
    path: &'p Path,
) -> impl FnOnce(std::io::Error) -> AcmeError + 'p {
    move |source| AcmeError::Io {
        what,
        path: path.to_owned(),
        source,
    }
}

/// The validity of a certificate, as read from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// notBefore.
    pub not_before: SystemTime,
    /// notAfter.
    pub not_after: SystemTime,
}

impl Validity {
    /// When to renew: at two thirds of the lifetime.
    pub fn renew_at(&self) -> SystemTime {
        let life = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or_default();
        self.not_before + life * 2 / 3
    }
}

/// When the next attempt is due, `now` being the time of the decision: at once without a
/// usable certificate, at [`Validity::renew_at`] with one; after `failures` failed attempts
/// in a row, not before the backoff (10 s doubled per failure, at most an hour) has passed.
/// Returns how long to wait.
pub fn next_attempt(now: SystemTime, current: Option<Validity>, failures: u32) -> Duration {
    let due = current
        .map(|v| v.renew_at().duration_since(now).unwrap_or_default())
        .unwrap_or_default();
    if failures == 0 {
        return due;
    }
    let backoff = MIN_BACKOFF
        .saturating_mul(1 << (failures - 1).min(16))
        .min(MAX_BACKOFF);
    due.max(backoff)
}

/// The validity of the leaf of `chain` and whether it names every one of `domains`.
fn inspect(chain: &[CertificateDer<'_>], domains: &[String]) -> Option<(Validity, bool)> {
    let (_, cert) = x509_parser::parse_x509_certificate(chain.first()?).ok()?;
    let v = cert.validity();
    let at = |t: &x509_parser::time::ASN1Time| {
        UNIX_EPOCH + Duration::from_secs(u64::try_from(t.timestamp()).unwrap_or(0))
    };
    let names: Vec<String> = cert
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => {
                        Some(d.to_ascii_lowercase())
                    }
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let covers = domains
        .iter()
        .all(|d| names.contains(&d.to_ascii_lowercase()));
    Some((
        Validity {
            not_before: at(&v.not_before),
            not_after: at(&v.not_after),
        },
        covers,
    ))
}

/// The stored certificate, when it can be served now: it loads, has not expired and names
/// every domain.
fn stored(s: &AcmeSettings) -> Option<(Arc<ServerConfig>, Validity)> {
    let (cert, key) = (s.cert_path(), s.key_path());
    if !cert.exists() {
        return None;
    }
    let config = match tls::server_config(&cert, &key) {
        Ok(c) => c,
        Err(e) => {
            warn!("ACME: the stored certificate is not usable, getting a new one: {e}");
            return None;
        }
    };
    let chain = CertificateDer::pem_file_iter(&cert)
        .ok()?
        .collect::<Result<Vec<_>, _>>()
        .ok()?;
    let (validity, covers) = inspect(&chain, &s.domains)?;
    if !covers {
        info!("ACME: the stored certificate does not name every domain, getting a new one");
        return None;
    }
    if validity.not_after <= SystemTime::now() {
        info!("ACME: the stored certificate has expired, getting a new one");
        return None;
    }
    Some((config, validity))
}

/// A self-signed certificate for `names`: what the TLS listeners serve before the first
/// certificate is issued (and what tls-alpn-01 validation needs them listening with).
fn stand_in(names: &[String]) -> Result<Arc<ServerConfig>, AcmeError> {
    let ck = rcgen::generate_simple_self_signed(names.to_vec())?;
    let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(ck.key_pair.serialize_der()));
    let config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(TlsError::from)?
            .with_no_client_auth()
            .with_single_cert(vec![ck.cert.der().clone()], key)
            .map_err(TlsError::from)?;
    Ok(Arc::new(config))
}

/// What the TLS listeners start with: the stored certificate when it can be served,
/// otherwise a self-signed stand-in until the first issuance.
pub fn initial_config(s: &AcmeSettings) -> Result<Arc<ServerConfig>, AcmeError> {
    match stored(s) {
        Some((config, v)) => {
            info!(
                not_after = %crate::time::rfc3339(unix(v.not_after)),
                "ACME: serving the stored certificate"
            );
            Ok(config)
        }
        None => stand_in(&s.domains),
    }
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()
}

/// The ACME metrics of a server, registered under `prefix`.
#[derive(Clone)]
pub struct AcmeMetrics {
    /// Certificates obtained and swapped in.
    pub issued: IntCounter,
    /// Failed attempts.
    pub failures: IntCounter,
    /// notAfter of the served ACME certificate, Unix seconds (0: none yet).
    pub not_after: IntGauge,
}

impl AcmeMetrics {
    /// Creates and registers the metrics (`<prefix>_acme_*`).
    pub fn new(registry: &Registry, prefix: &str) -> prometheus::Result<Self> {
        let issued = IntCounter::new(
            format!("{prefix}_acme_certificates_issued_total"),
            "Certificates obtained from the ACME server and served",
        )?;
        let failures = IntCounter::new(
            format!("{prefix}_acme_failures_total"),
            "Failed attempts to obtain a certificate from the ACME server (retried with backoff)",
        )?;
        let not_after = IntGauge::new(
            format!("{prefix}_acme_certificate_not_after_seconds"),
            "notAfter of the served ACME certificate, Unix time (0: none issued yet)",
        )?;
        registry.register(Box::new(issued.clone()))?;
        registry.register(Box::new(failures.clone()))?;
        registry.register(Box::new(not_after.clone()))?;
        Ok(Self {
            issued,
            failures,
            not_after,
        })
    }

    fn served(&self, v: Validity) {
        self.not_after
            .set(i64::try_from(unix(v.not_after)).unwrap_or(i64::MAX));
    }
}

/// Runs the certificate's life on `acceptor` until shutdown: obtain when there is none that
/// can be served, renew at two thirds of its lifetime, retry failures with backoff.
pub fn spawn(
    settings: AcmeSettings,
    acceptor: ReloadableAcceptor,
    metrics: AcmeMetrics,
    shutdown: Shutdown,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut failures = 0u32;
        loop {
            let current = stored(&settings).map(|(_, v)| v);
            if let Some(v) = current {
                metrics.served(v);
            }
            let wait = next_attempt(SystemTime::now(), current, failures);
            if !wait.is_zero() {
                info!(
                    in_secs = wait.as_secs(),
                    "ACME: next certificate attempt scheduled"
                );
            }
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.wait() => return,
            }
            let attempt = tokio::select! {
                r = obtain(&settings, acceptor.challenges()) => r,
                _ = shutdown.wait() => return,
            };
            match attempt.and_then(|v| {
                acceptor.reload(settings.cert_path(), settings.key_path())?;
                Ok(v)
            }) {
                Ok(v) => {
                    failures = 0;
                    metrics.issued.inc();
                    metrics.served(v);
                    info!(
                        domains = ?settings.domains,
                        not_after = %crate::time::rfc3339(unix(v.not_after)),
                        "ACME: new certificate obtained and served"
                    );
                }
                Err(e) => {
                    failures = failures.saturating_add(1);
                    metrics.failures.inc();
                    let retry = next_attempt(SystemTime::now(), None, failures);
                    error!(
                        directory = %settings.directory,
                        retry_in_secs = retry.as_secs(),
                        "ACME: could not obtain a certificate, the current one keeps serving: {e}"
                    );
                }
            }
        }
    })
}

/// The account of the state directory, created (and stored) on first use.
async fn account(s: &AcmeSettings) -> Result<Account, AcmeError> {
    let builder = || match &s.ca_file {
        Some(ca) => Account::builder_with_root(ca),
        None => Account::builder(),
    };
    let path = s.account_path();
    if let Ok(text) = std::fs::read_to_string(&path) {
        match serde_json::from_str::<AccountCredentials>(&text) {
            Ok(creds) => return Ok(builder()?.from_credentials(creds).await?),
            Err(e) => {
                warn!(file = %path.display(), "ACME: stored account unreadable ({e}), creating a new one")
            }
        }
    }
    let contact: Vec<String> = s
        .contact
        .iter()
        .map(|c| {
            if c.contains(':') {
                c.clone()
            } else {
                format!("mailto:{c}")
            }
        })
        .collect();
    let contact: Vec<&str> = contact.iter().map(String::as_str).collect();
    let (account, creds) = builder()?
        .create(
            &NewAccount {
                contact: &contact,
                // RFC 8555 §7.3: the operator agrees to the CA's terms by configuring it.
                terms_of_service_agreed: true,
                only_return_existing: false,
            },
            s.directory.clone(),
            None,
        )
        .await?;
    let json = serde_json::to_string(&creds).map_err(|e| AcmeError::Order(e.to_string()))?;
    write_private(&path, json.as_bytes())?;
    info!(id = account.id(), "ACME: account created");
    Ok(account)
}

/// Writes `data` to `path` readable by the owner only, replacing it whole (a reader sees the
/// old file or the new one).
fn write_private(path: &Path, data: &[u8]) -> Result<(), AcmeError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let tmp = path.with_extension("tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_error("cannot write", &tmp))?;
    f.write_all(data)
        .and_then(|()| f.sync_all())
        .map_err(io_error("cannot write", &tmp))?;
    std::fs::rename(&tmp, path).map_err(io_error("cannot replace", path))
}

/// The RFC 8737 §3 challenge certificate for `domain`: self-signed, naming only it, with the
/// critical acmeIdentifier extension holding the SHA-256 digest of the key authorization.
fn challenge_cert(
    domain: &str,
    digest: &[u8],
) -> Result<(CertificateDer<'static>, PrivateKeyDer<'static>), AcmeError> {
    let mut params = rcgen::CertificateParams::new(vec![domain.to_owned()])?;
    params
        .custom_extensions
        .push(rcgen::CustomExtension::new_acme_identifier(digest));
    let key = rcgen::KeyPair::generate()?;
    let cert = params.self_signed(&key)?;
    Ok((
        cert.der().clone(),
        PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
    ))
}

/// Removes the challenges it holds when dropped, also when the attempt fails half-way.
struct Pending<'a>(&'a AlpnChallenges, Vec<String>);

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        for d in &self.1 {
            self.0.remove(d);
        }
    }
}

/// One issuance (RFC 8555 §7.4): order, answer tls-alpn-01 on the listeners, finalize with a
/// fresh key's CSR, store the chain and key. Returns the new certificate's validity.
async fn obtain(s: &AcmeSettings, challenges: &AlpnChallenges) -> Result<Validity, AcmeError> {
    std::fs::create_dir_all(&s.state_dir).map_err(io_error("cannot create", &s.state_dir))?;
    let account = account(s).await?;
    let ids: Vec<Identifier> = s
        .domains
        .iter()
        .map(|d| Identifier::Dns(d.clone()))
        .collect();
    let mut order = account.new_order(&NewOrder::new(&ids)).await?;
    let mut pending = Pending(challenges, Vec::new());
    let mut authorizations = order.authorizations();
    while let Some(a) = authorizations.next().await {
        let mut a = a?;
        match a.status {
            AuthorizationStatus::Pending => {}
            // Still valid from an earlier order (RFC 8555 §7.1.4): nothing to prove.
            AuthorizationStatus::Valid => continue,
            other => return Err(AcmeError::Order(format!("authorization is {other:?}"))),
        }
        let mut ch = a.challenge(ChallengeType::TlsAlpn01).ok_or_else(|| {
            AcmeError::Order("the ACME server offers no tls-alpn-01 challenge".into())
        })?;
        let domain = ch.identifier().to_string();
        let (cert, key) = challenge_cert(&domain, ch.key_authorization().digest().as_ref())?;
        challenges.insert(&domain, cert, key)?;
        pending.1.push(domain);
        ch.set_ready().await?;
    }
    // Validation takes the CA a few handshakes; a minute bounds a slow one.
    let retry = RetryPolicy::new().timeout(Duration::from_secs(60));
    let status = order.poll_ready(&retry).await?;
    drop(pending);
    if status != OrderStatus::Ready {
        return Err(AcmeError::Order(format!(
            "order is {status:?}, not ready: the CA could not validate tls-alpn-01 on the TLS listeners (port 443 reachable from the internet for every domain?)"
        )));
    }
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(s.domains.clone())?;
    params.distinguished_name = rcgen::DistinguishedName::new();
    let csr = params.serialize_request(&key)?;
    order.finalize_csr(csr.der()).await?;
    let chain_pem = order.poll_certificate(&retry).await?;

    let chain = CertificateDer::pem_slice_iter(chain_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| AcmeError::Order(format!("the issued chain is not PEM: {e}")))?;
    let (validity, _) = inspect(&chain, &s.domains)
        .ok_or_else(|| AcmeError::Order("the issued certificate cannot be parsed".into()))?;
    // The key first: a crash between the two leaves a pair that does not load, which the next
    // start replaces, never a new certificate with no key.
    write_private(&s.key_path(), key.serialize_pem().as_bytes())?;
    write_private(&s.cert_path(), chain_pem.as_bytes())?;
    Ok(validity)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn renewal_is_due_at_two_thirds_and_failures_back_off() {
        // 90 days: renewed 30 days before the end.
        let day = 86_400;
        let v = Validity {
            not_before: at(1_000),
            not_after: at(1_000 + 90 * day),
        };
        assert_eq!(v.renew_at(), at(1_000 + 60 * day));
        assert_eq!(
            next_attempt(at(1_000), Some(v), 0),
            Duration::from_secs(60 * day)
        );
        // Past due, or no certificate: at once.
        assert_eq!(
            next_attempt(at(1_000 + 61 * day), Some(v), 0),
            Duration::ZERO
        );
        assert_eq!(next_attempt(at(5), None, 0), Duration::ZERO);
        // Failures: 10 s, 20 s, 40 s ... capped at an hour, never spinning.
        let b: Vec<_> = (1..=12).map(|f| next_attempt(at(5), None, f)).collect();
        assert_eq!(b[0], MIN_BACKOFF);
        assert_eq!(b[1], MIN_BACKOFF * 2);
        assert_eq!(b[2], MIN_BACKOFF * 4);
        assert!(b.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(*b.last().unwrap(), MAX_BACKOFF);
        assert_eq!(next_attempt(at(5), None, u32::MAX), MAX_BACKOFF);
        // A failure long before renewal is due does not pull the attempt earlier.
        assert_eq!(
            next_attempt(at(1_000), Some(v), 1),
            Duration::from_secs(60 * day)
        );
    }

    #[test]
    fn the_challenge_certificate_carries_the_digest_and_only_the_domain() {
        let digest = [7u8; 32];
        let (cert, _) = challenge_cert("turn.example.test", &digest).unwrap();
        let (_, c) = x509_parser::parse_x509_certificate(&cert).unwrap();
        // RFC 8737 §3: id-pe-acmeIdentifier, critical, an OCTET STRING of the digest.
        let ext = c
            .extensions()
            .iter()
            .find(|e| e.oid.to_id_string() == "1.3.6.1.5.5.7.1.31")
            .expect("acmeIdentifier extension");
        assert!(ext.critical);
        assert_eq!(ext.value, [&[0x04, 32][..], &digest].concat());
        let (v, covers) =
            inspect(std::slice::from_ref(&cert), &["turn.example.test".into()]).unwrap();
        assert!(covers);
        assert!(v.not_after > v.not_before);
        assert!(!inspect(&[cert], &["other.example.test".into()]).unwrap().1);
    }
}
