//! The lab's error type.

use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// What can go wrong while building, using or tearing down a lab.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command could not be started at all (missing tool, bad path).
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        /// The command line.
        command: String,
        /// Why it did not start.
        source: std::io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// What it wrote to stderr (trimmed).
        stderr: String,
    },
    /// A file or other I/O step failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
    /// A server or peer did not become ready in time.
    #[error("{0}")]
    Timeout(String),
    /// A process the lab started did not become ready in time.
    #[error("{name} was not ready after {waited:?}: {last}; its log ends:\n{log}")]
    NotReady {
        /// The process's name (`natkit-stun`, `miniupnpd-<site>`, `wire-s<n>`).
        name: String,
        /// How long the lab waited.
        waited: Duration,
        /// What the last readiness probe found.
        last: String,
        /// The end of its log.
        log: String,
    },
    /// A process the lab started exited while the lab waited for it to
    /// become ready.
    #[error("{name} exited ({status}) before it was ready; its log ends:\n{log}")]
    Exited {
        /// The process's name.
        name: String,
        /// How it exited.
        status: ExitStatus,
        /// The end of its log (stdout and stderr).
        log: String,
    },
    /// The topology asked for is not valid (too many sites, unknown name).
    #[error("bad topology: {0}")]
    Topology(String),
    /// A binary the lab needs is missing and could not be built.
    #[error("binary {name} not found in {dir} and `cargo build` did not provide it: {why}")]
    MissingBinary {
        /// The binary's name.
        name: String,
        /// Where it was looked for.
        dir: PathBuf,
        /// Why the build did not help.
        why: String,
    },
    /// A system program the lab runs (miniupnpd, upnpc...) is not
    /// installed.
    #[error("{name} not found in PATH, /usr/sbin, /sbin or /usr/bin: install Debian package {package} (scripts/deps/lab.sh does)")]
    MissingTool {
        /// The program.
        name: String,
        /// The Debian package that has it.
        package: String,
    },
    /// Anything else, with a message.
    #[error("{0}")]
    Other(String),
}

impl LabError {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        LabError::Io {
            what: what.into(),
            source,
        }
    }
}

/// The lab's result type.
pub type Result<T, E = LabError> = std::result::Result<T, E>;
