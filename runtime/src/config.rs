//! Loading a server's TOML configuration file.
//!
//! The pattern (DEVELOPERS.md): one TOML schema per server, every key also a flag and an env var.
//! The binary reads the file with [`load_toml`] into a struct whose fields are all optional and
//! which carries `#[serde(deny_unknown_fields)]` (so a misspelt key is an error, not silently
//! ignored), then lets flags and env vars (clap's `env`) override it field by field.
//!
//! Errors keep their cause as [`std::error::Error::source`] and do not repeat it in their own
//! message: binaries print the whole chain once with anyhow's `{:#}` ("invalid config file X:
//! TOML parse error at line 3 ...").
//!
//! [`load_tls`] loads the files of a server's `cert` and `key` keys, so `--check-config` can
//! refuse what the server would fail on at start-up, naming the key at fault.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::de::DeserializeOwned;

use crate::tls::{self, TlsError, TlsFile};

/// Why a configuration file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema. The message from `toml`
    /// carries the line, column, offending key and a snippet.
    #[error("invalid config file {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse or schema error.
        #[source]
        source: Box<toml::de::Error>,
    },
}

impl ConfigError {
    /// The file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            ConfigError::Read { path, .. } | ConfigError::Parse { path, .. } => path,
        }
    }
}

/// Reads and parses the TOML file at `path` into `T`.
pub fn load_toml<T: DeserializeOwned>(path: impl AsRef<Path>) -> Result<T, ConfigError> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    toml::from_str(&text).map_err(|source| ConfigError::Parse {
        path: path.to_owned(),
        source: Box::new(source),
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::net::SocketAddr;

    /// The error and its causes, as anyhow's `{:#}` prints them.
    fn chain(e: &dyn std::error::Error) -> String {
        let mut s = e.to_string();
        let mut cur = e.source();
        while let Some(c) = cur {
            s.push_str(": ");
            s.push_str(&c.to_string());
            cur = c.source();
        }
        s
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Server {
        listen: Option<Vec<SocketAddr>>,
        metrics: Option<SocketAddr>,
        tcp: Option<Tcp>,
    }

    #[derive(Debug, Deserialize, PartialEq)]
    #[serde(deny_unknown_fields)]
    struct Tcp {
        idle_timeout_secs: u64,
    }

    fn write(name: &str, text: &str) -> PathBuf {
        let p = std::env::temp_dir().join(format!(
            "natkit-runtime-config-{}-{name}.toml",
            std::process::id()
        ));
        std::fs::write(&p, text).unwrap();
        p
    }

    #[test]
    fn loads_a_valid_file() {
        let p = write(
            "ok",
            "listen = [\"127.0.0.1:3478\", \"[::1]:3478\"]\n[tcp]\nidle_timeout_secs = 30\n",
        );
        let s: Server = load_toml(&p).unwrap();
        let _ = std::fs::remove_file(&p);
        assert_eq!(
            s,
            Server {
                listen: Some(vec![
                    "127.0.0.1:3478".parse().unwrap(),
                    "[::1]:3478".parse().unwrap()
                ]),
                metrics: None,
                tcp: Some(Tcp {
                    idle_timeout_secs: 30
                }),
            }
        );
    }

    #[test]
    fn missing_file_names_the_file() {
        let p = std::env::temp_dir().join("natkit-runtime-config-does-not-exist.toml");
        let e = load_toml::<Server>(&p).unwrap_err();
        assert!(matches!(e, ConfigError::Read { .. }));
        assert_eq!(e.path(), p);
        assert!(e.to_string().contains("does-not-exist.toml"), "{e}");
    }

    #[test]
    fn unknown_key_names_file_key_and_line() {
        let p = write("unknown", "listen = []\n[tcp]\nidle_timeout = 30\n");
        let e = load_toml::<Server>(&p).unwrap_err();
        let _ = std::fs::remove_file(&p);
        let msg = chain(&e);
        assert!(msg.contains("natkit-runtime-config-"), "{msg}");
        assert!(msg.contains("idle_timeout"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn bad_value_names_key_and_reason() {
        let p = write("badvalue", "metrics = \"not an address\"\n");
        let e = load_toml::<Server>(&p).unwrap_err();
        let _ = std::fs::remove_file(&p);
        let msg = chain(&e);
        assert!(matches!(e, ConfigError::Parse { .. }));
        assert!(msg.contains("metrics"), "{msg}");
        assert!(msg.contains("invalid socket address"), "{msg}");
        assert!(msg.contains("line 1"), "{msg}");
    }

    #[test]
    fn syntax_error_has_position() {
        let p = write("syntax", "listen = [\n");
        let e = load_toml::<Server>(&p).unwrap_err();
        let _ = std::fs::remove_file(&p);
        let msg = chain(&e);
        assert!(msg.contains("line 1") || msg.contains("line 2"), "{msg}");
    }

    /// Each piece of the chain appears once: the file name in the error, the TOML
    /// message (with its position) in the source.
    #[test]
    fn the_chain_names_file_and_cause_once() {
        let p = write("once", "listen = [\n");
        let e = load_toml::<Server>(&p).unwrap_err();
        let _ = std::fs::remove_file(&p);
        let msg = chain(&e);
        let name = p.file_name().unwrap().to_str().unwrap();
        assert_eq!(msg.matches(name).count(), 1, "{msg}");
        assert_eq!(msg.matches("TOML parse error").count(), 1, "{msg}");
        let e = load_toml::<Server>("/nonexistent/natkit-runtime.toml").unwrap_err();
        let msg = chain(&e);
        assert_eq!(msg.matches("natkit-runtime.toml").count(), 1, "{msg}");
        assert_eq!(msg.matches("No such file").count(), 1, "{msg}");
    }

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
