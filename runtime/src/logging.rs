//! Logging set-up: `tracing` to stderr, filtered by `RUST_LOG`.
//!
//! Servers call [`init`] with the format from their config (`--log-format text|json`); the CLI
//! calls [`init_cli`], which stays quiet (warnings only) so its own output is what the user
//! reads. Both are idempotent: a second call (or a test harness that set a subscriber first)
//! leaves the existing subscriber in place.

use std::fmt;
use std::str::FromStr;

use serde::Deserialize;
use tracing_subscriber::EnvFilter;

/// How server logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line, for log collectors.
    Json,
}

impl LogFormat {
    /// Every accepted spelling, for help texts.
    pub const VARIANTS: &'static [&'static str] = &["text", "json"];
}

impl fmt::Display for LogFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            LogFormat::Text => "text",
            LogFormat::Json => "json",
        })
    }
}

/// An unknown log format name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown log format {0:?} (expected \"text\" or \"json\")")]
pub struct ParseLogFormatError(String);

impl FromStr for LogFormat {
    type Err = ParseLogFormatError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(ParseLogFormatError(s.to_owned())),
        }
    }
}

/// Builds the filter: `RUST_LOG` if set and valid, else `default_directives` (e.g. `"info"` or
/// `"natkit_stun=debug,info"`), else `"info"`. Returns the filter and, if `RUST_LOG` or the
/// default was rejected, why (to be logged once the subscriber exists).
fn filter(default_directives: &str) -> (EnvFilter, Option<String>) {
    let env = std::env::var(EnvFilter::DEFAULT_ENV).ok();
    filter_from(env.as_deref(), default_directives)
}

fn filter_from(env: Option<&str>, default_directives: &str) -> (EnvFilter, Option<String>) {
    let mut complaint = None;
    if let Some(env) = env.filter(|e| !e.trim().is_empty()) {
        match EnvFilter::try_new(env) {
            Ok(f) => return (f, None),
            Err(e) => complaint = Some(format!("ignoring invalid RUST_LOG {env:?}: {e}")),
        }
    }
    match EnvFilter::try_new(default_directives) {
        Ok(f) => (f, complaint),
        Err(e) => (
            EnvFilter::new("info"),
            Some(format!(
                "ignoring invalid default log filter {default_directives:?}: {e}"
            )),
        ),
    }
}

/// Whether log lines on stderr may carry ANSI colour codes: only when stderr is a terminal and
/// `NO_COLOR` is unset or empty (<https://no-color.org>). A log file, a pipe or a journal gets
/// plain text.
pub fn colour() -> bool {
    use std::io::IsTerminal;
    colour_for(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    )
}

fn colour_for(terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    terminal && no_color.map_or(true, |v| v.is_empty())
}

/// Installs the global subscriber for a server: `format` to stderr, filtered by `RUST_LOG` or
/// else `default_directives` (`"info"` is the usual choice).
///
/// Returns `true` if this call installed it, `false` if a subscriber was already set.
pub fn init(format: LogFormat, default_directives: &str) -> bool {
    let (filter, complaint) = filter(default_directives);
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
        .with_writer(std::io::stderr);
    let installed = match format {
        LogFormat::Text => builder.try_init().is_ok(),
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .try_init()
            .is_ok(),
    };
    if let (true, Some(c)) = (installed, complaint) {
        tracing::warn!("{c}");
    }
    installed
}

/// Installs the global subscriber for the CLI: compact lines on stderr without timestamps,
/// warnings and errors only unless `RUST_LOG` asks for more.
///
/// Returns `true` if this call installed it, `false` if a subscriber was already set.
pub fn init_cli() -> bool {
    let (filter, complaint) = filter("warn");
    let installed = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(colour())
        .with_writer(std::io::stderr)
        .compact()
        .without_time()
        .with_target(false)
        .try_init()
        .is_ok();
    if let (true, Some(c)) = (installed, complaint) {
        tracing::warn!("{c}");
    }
    installed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for f in [LogFormat::Text, LogFormat::Json] {
            assert_eq!(f.to_string().parse::<LogFormat>(), Ok(f));
        }
        assert_eq!(" JSON ".parse::<LogFormat>(), Ok(LogFormat::Json));
        let err = "yaml".parse::<LogFormat>().unwrap_err();
        assert!(err.to_string().contains("\"yaml\""), "{err}");
        assert_eq!(LogFormat::default(), LogFormat::Text);
        assert_eq!(LogFormat::VARIANTS.len(), 2);
    }

    #[test]
    fn deserializes_from_toml() {
        #[derive(Deserialize)]
        struct C {
            log_format: LogFormat,
        }
        let c: C = toml::from_str("log_format = \"json\"").unwrap();
        assert_eq!(c.log_format, LogFormat::Json);
        assert!(toml::from_str::<C>("log_format = \"xml\"").is_err());
    }

    #[test]
    fn filter_precedence() {
        let (f, c) = filter_from(Some("natkit=trace"), "debug");
        assert_eq!((f.to_string(), c), ("natkit=trace".to_owned(), None));
        let (f, c) = filter_from(None, "debug");
        assert_eq!((f.to_string(), c), ("debug".to_owned(), None));
        let (f, c) = filter_from(Some("  "), "warn");
        assert_eq!((f.to_string(), c), ("warn".to_owned(), None));
        let (f, c) = filter_from(Some("natkit=["), "warn");
        assert_eq!(f.to_string(), "warn");
        assert!(c.unwrap().contains("RUST_LOG"));
        let (f, c) = filter_from(None, "natkit=[");
        assert_eq!(f.to_string(), "info");
        assert!(c.unwrap().contains("default log filter"));
    }

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        use std::ffi::OsStr;
        assert!(colour_for(true, None));
        assert!(colour_for(true, Some(OsStr::new(""))));
        assert!(!colour_for(true, Some(OsStr::new("1"))));
        assert!(!colour_for(false, None));
    }

    #[test]
    fn init_is_idempotent() {
        // Whichever runs first in this process installs; every later call reports false
        // instead of panicking.
        init(LogFormat::Json, "info");
        assert!(!init(LogFormat::Text, "info"));
        assert!(!init_cli());
    }
}
