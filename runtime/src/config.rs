//! Loading a server's TOML configuration file.
//!
//! The pattern (DEVELOPERS.md): one TOML schema per server, every key also a flag and an env var.
//! The binary reads the file with [`load_toml`] into a struct whose fields are all optional and
//! which carries `#[serde(deny_unknown_fields)]` (so a misspelt key is an error, not silently
//! ignored), then lets flags and env vars (clap's `env`) override it field by field.

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

/// Why a configuration file could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not match the schema. The message from `toml`
    /// carries the line, column, offending key and a snippet.
    #[error("invalid config file {}: {source}", path.display())]
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;
    use std::net::SocketAddr;

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
        let msg = e.to_string();
        assert!(msg.contains("natkit-runtime-config-"), "{msg}");
        assert!(msg.contains("idle_timeout"), "{msg}");
        assert!(msg.contains("line 3"), "{msg}");
    }

    #[test]
    fn bad_value_names_key_and_reason() {
        let p = write("badvalue", "metrics = \"not an address\"\n");
        let e = load_toml::<Server>(&p).unwrap_err();
        let _ = std::fs::remove_file(&p);
        let msg = e.to_string();
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
        assert!(
            e.to_string().contains("line 1") || e.to_string().contains("line 2"),
            "{e}"
        );
    }
}
