//! The certificate and key files of a server's `cert` and `key` keys: loaded with
//! [`load_tls`] so `--check-config` refuses what the server would fail on at start-up, naming
//! the key at fault.

use std::path::PathBuf;
use std::sync::Arc;

use crate::tls::{self, TlsError, TlsFile};

/// The config key a TLS error is charged to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsKey {
    /// `cert`: the certificate chain file.
    Cert,
    /// `key`: the private key file.
    Key,
    /// `cert/key`: rustls rejects the pair for a reason that is about neither file alone.
    Pair,
}

impl std::fmt::Display for TlsKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TlsKey::Cert => "cert",
            TlsKey::Key => "key",
            TlsKey::Pair => "cert/key",
        })
    }
}

impl From<Option<TlsFile>> for TlsKey {
    fn from(file: Option<TlsFile>) -> Self {
        match file {
            Some(TlsFile::Certificate) => TlsKey::Cert,
            Some(TlsFile::PrivateKey) => TlsKey::Key,
            None => TlsKey::Pair,
        }
    }
}

/// The TLS files of a server's `cert` and `key` keys could not be loaded.
///
/// Displays as `KEY: REASON`, where the reason is the [`TlsError`] message (which already names
/// the file and its cause). It deliberately has no `source()`: the reason is in the message, and
/// a chain printed with `{:#}` would repeat it.
#[derive(Debug, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct TlsKeyError {
    /// The config key at fault.
    pub key: TlsKey,
    /// What is wrong, naming the file.
    pub reason: TlsError,
}

impl From<TlsError> for TlsKeyError {
    fn from(reason: TlsError) -> Self {
        TlsKeyError {
            key: reason.file().into(),
            reason,
        }
    }
}

/// Loads and checks the PEM certificate chain and private key named by a server's `cert` and
/// `key` keys (with [`tls::server_config`], the loader the servers serve with), naming the
/// key at fault on error. `None` (no TLS configured) loads nothing.
///
/// Both servers call it before `--check-config` answers and before serving, so a file the
/// server could not serve with is refused at start-up.
pub fn load_tls(
    tls: Option<&(PathBuf, PathBuf)>,
) -> Result<Option<Arc<rustls::ServerConfig>>, TlsKeyError> {
    tls.map(|(cert, key)| tls::server_config(cert, key).map_err(TlsKeyError::from))
        .transpose()
}

/// The TLS listeners' starting configuration could not be had.
#[derive(Debug, thiserror::Error)]
pub enum StartTlsError {
    /// The `cert` or `key` file.
    #[error(transparent)]
    Files(#[from] TlsKeyError),
    /// The ACME state directory.
    #[error("acme-state-dir: {0}")]
    Acme(#[from] crate::acme::AcmeError),
}

/// What a server's TLS listeners start with: with `acme-domain`, the stored ACME certificate
/// (or a self-signed stand-in until the first one is issued, see [`crate::acme`]); otherwise
/// the `cert` and `key` files, as [`load_tls`]. `None`: no TLS.
pub fn start_tls(
    common: &super::Common,
    files: Option<&(PathBuf, PathBuf)>,
) -> Result<Option<Arc<rustls::ServerConfig>>, StartTlsError> {
    match common.acme() {
        Some(a) => Ok(Some(crate::acme::initial_config(&a)?)),
        None => Ok(load_tls(files)?),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn load_tls_names_the_key_at_fault() {
        let dir =
            std::env::temp_dir().join(format!("natkit-runtime-config-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let c = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let other = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let cert = dir.join("cert.pem");
        let key = dir.join("key.pem");
        let other_key = dir.join("other-key.pem");
        let junk = dir.join("junk.pem");
        std::fs::write(&cert, c.cert.pem()).unwrap();
        std::fs::write(&key, c.key_pair.serialize_pem()).unwrap();
        std::fs::write(&other_key, other.key_pair.serialize_pem()).unwrap();
        std::fs::write(&junk, "not PEM at all\n").unwrap();
        let missing = dir.join("missing.pem");
        let ok = load_tls(Some(&(cert.clone(), key.clone())));
        let none = load_tls(None);
        let cases = [
            (&missing, &key, TlsKey::Cert, "cert", "missing.pem"),
            (&junk, &key, TlsKey::Cert, "cert", "junk.pem"),
            (&cert, &missing, TlsKey::Key, "key", "missing.pem"),
            (&cert, &junk, TlsKey::Key, "key", "junk.pem"),
            (&cert, &other_key, TlsKey::Key, "key", "other-key.pem"),
        ];
        let errs: Vec<_> = cases
            .iter()
            .map(|(c, k, _, _, _)| {
                load_tls(Some(&((*c).clone(), (*k).clone())))
                    .map(|_| ())
                    .unwrap_err()
            })
            .collect();
        let _ = std::fs::remove_dir_all(&dir);
        assert!(matches!(ok, Ok(Some(_))));
        assert!(matches!(none, Ok(None)));
        for (e, (_, _, want_key, label, file)) in errs.iter().zip(cases) {
            assert_eq!(e.key, want_key, "{e}");
            let msg = e.to_string();
            // The printed form operators (and the servers' tests) see: `cert: …` / `key: …`.
            assert!(msg.starts_with(&format!("{label}: ")), "{msg}");
            assert!(msg.contains(file), "{msg}");
            assert!(std::error::Error::source(e).is_none());
        }
    }
}
