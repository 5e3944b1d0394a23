//! A server's configuration: one definition per key, four sources.
//!
//! Each key is declared once, in a [`settings!`](crate::settings) table: its doc comment, its
//! type, the name of its values and its default. From that come the flag (`--max-channels`),
//! the environment variable (`NATKIT_TURN_MAX_CHANNELS`: the server's prefix and the flag in
//! upper case), the TOML key (`max-channels`), the `--help` line and the row of the reference
//! table in the README ([`Schema::reference`]; each server has a test that compares them).
//! The keys both servers have are [`Common`], declared here.
//!
//! Precedence, per key: **flag > environment variable > TOML file (`--config`) > default.** A
//! list given as a flag or environment variable replaces the file's list whole.
//!
//! Errors say what to fix: an unknown key in the file names the key, its line and the closest
//! known key; a bad value names the key, the value (never a secret), where it was set (the
//! flag, the environment variable, or the file and line) and what was expected. They keep
//! their cause as [`std::error::Error::source`] and do not repeat it in their own message:
//! binaries print the whole chain once with anyhow's `{:#}` ("invalid config file X: TOML
//! parse error at line 3 ...").
//!
//! A server reads the command line once ([`Schema::parse`]) and resolves from it: at start-up
//! and again on SIGHUP, when [`CommandLine::sources`] reads the file again.
//!
//! [`load_tls`] loads the files of the `cert` and `key` keys, so `--check-config` can refuse
//! what the server would fail on at start-up, naming the key at fault.

mod common;
mod schema;
mod sources;
mod tls_files;
mod value;

use std::path::PathBuf;

pub use common::{Common, MAX_THREADS};
pub use schema::{Key, KeyDefault, Schema, Settings};
pub use sources::{CommandLine, Source, Sources};
pub use tls_files::{load_tls, start_tls, StartTlsError, TlsKey, TlsKeyError};
pub use value::{expected, toml_type, Invalid, Setting, Shape, Value};

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The config file is not valid TOML. The message from `toml` carries the line, column
    /// and a snippet.
    #[error("invalid config file {}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parse error.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// The config file has a key the server does not know.
    #[error("unknown key `{key}` ({at}){}", suggestion.as_ref().map(|s| format!("; did you mean `{s}`?")).unwrap_or_default())]
    UnknownKey {
        /// The unknown key.
        key: String,
        /// Where it is.
        at: Source,
        /// The known key closest to it, if one is close.
        suggestion: Option<String>,
    },
    /// A value is not of the key's type.
    #[error("{key}: invalid value{} ({from}): {reason}", value.as_ref().map(|v| format!(" {v}")).unwrap_or_default())]
    Invalid {
        /// The key as named in the source (the flag's name for flags and environment variables).
        key: String,
        /// Where the value was set.
        from: Source,
        /// The value as given; `None` for secrets.
        value: Option<String>,
        /// What was expected.
        reason: String,
    },
    /// A value breaks a rule of its key (a range, a relation with another key).
    #[error("{key}: {reason}{}", from.as_ref().map(|f| format!(" ({f})")).unwrap_or_default())]
    Rule {
        /// The key.
        key: String,
        /// Where the value was set; `None` for a default.
        from: Option<Source>,
        /// What is wrong.
        reason: String,
    },
    /// A key without a default is set nowhere.
    #[error("{key}: required (give {flag} or `{key}` in the config file)")]
    Missing {
        /// The key.
        key: String,
        /// Its flag.
        flag: String,
    },
}

#[cfg(test)]
mod tests;
